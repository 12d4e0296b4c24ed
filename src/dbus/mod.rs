//! The D-Bus surface: objects of DESIGN.md §5.1 over a message bus, or peer-to-peer on a unix
//! socket when no bus is reachable. Thin adapters over [`Control`]; every change made anywhere
//! reaches clients as `PropertiesChanged`, `InterfacesAdded/Removed` and the session signals.
//!
//! Not real-time: runs on tokio.

pub mod client;
mod interfaces;

use std::path::{Path, PathBuf};

use std::borrow::Cow;
use std::collections::HashMap;
use tokio::sync::broadcast::error::RecvError;

use zbus::fdo::{ObjectManager, Properties, RequestNameFlags, RequestNameReply};
use zbus::object_server::SignalEmitter;
use zbus::{connection, Connection, OwnedObjectPath, Variant};

pub use interfaces::{metrics_dict, session_path, track_path, OverdubError, ROOT_PATH};
use interfaces::{Manager, Session, Track};

use crate::control::{Control, Event, TrackField};

/// The well-known bus name.
pub const BUS_NAME: &str = "org.overdub.Overdub1";

/// Which bus to serve on.
#[derive(Clone, Debug)]
pub enum BusChoice {
    /// The session bus (default).
    Session,
    /// The system bus (`--system`).
    System,
    /// An explicit address (`--bus-address`).
    Address(String),
}

/// Why the D-Bus surface could not start.
#[derive(Debug)]
pub enum DbusError {
    /// Another daemon owns the name on this bus.
    NameTaken,
    /// Another daemon serves the peer-to-peer socket.
    SocketTaken(PathBuf),
    /// Anything else.
    Other(String),
}

impl std::fmt::Display for DbusError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DbusError::NameTaken => write!(
                f,
                "another overdub daemon already owns {BUS_NAME} on this bus; stop it first"
            ),
            DbusError::SocketTaken(path) => write!(
                f,
                "another overdub daemon already serves {}; stop it first",
                path.display()
            ),
            DbusError::Other(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for DbusError {}

impl From<zbus::Error> for DbusError {
    fn from(error: zbus::Error) -> Self {
        DbusError::Other(format!("D-Bus: {error}"))
    }
}

/// What the daemon ended up serving.
pub enum Served {
    /// A bus connection owning [`BUS_NAME`].
    Bus(Connection),
    /// A peer-to-peer socket at this path.
    PeerToPeer(PathBuf),
}

/// Connects to `choice`, exports every object, then takes the well-known name (objects first,
/// so a client that sees the name finds them). `Ok(None)` when the bus is unreachable.
pub async fn serve_on_bus(
    choice: &BusChoice,
    control: &Control,
) -> Result<Option<Connection>, DbusError> {
    let builder = match choice {
        BusChoice::Session => {
            if std::env::var_os("DBUS_SESSION_BUS_ADDRESS").is_none_or(|a| a.is_empty()) {
                return Ok(None);
            }
            connection::Builder::session()
        }
        BusChoice::System => connection::Builder::system(),
        BusChoice::Address(address) => connection::Builder::address(address.as_str()),
    };
    let connection = match builder.build().await {
        Ok(connection) => connection,
        Err(e) => {
            if matches!(choice, BusChoice::Session) {
                tracing::info!("session bus unreachable ({e})");
                return Ok(None);
            }
            return Err(e.into());
        }
    };
    export_all(&connection, control).await?;
    let reply = match connection
        .request_name_with_flags(BUS_NAME, RequestNameFlags::DO_NOT_QUEUE)
        .await
    {
        Err(zbus::Error::NameTaken) => return Err(DbusError::NameTaken),
        other => other?,
    };
    if !matches!(
        reply,
        RequestNameReply::PrimaryOwner | RequestNameReply::AlreadyOwner
    ) {
        return Err(DbusError::NameTaken);
    }
    tokio::spawn(relay_events(connection.clone(), control.clone()));
    Ok(Some(connection))
}

/// Serves the objects peer-to-peer on `socket` (no bus needed): one D-Bus connection per
/// client. Refuses when another daemon answers there; removes a stale socket.
pub async fn serve_peer_to_peer(socket: &Path, control: &Control) -> Result<(), DbusError> {
    if socket.exists() {
        if std::os::unix::net::UnixStream::connect(socket).is_ok() {
            return Err(DbusError::SocketTaken(socket.to_path_buf()));
        }
        std::fs::remove_file(socket).map_err(|e| {
            DbusError::Other(format!("cannot remove stale {}: {e}", socket.display()))
        })?;
    }
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| DbusError::Other(format!("cannot create {}: {e}", dir.display())))?;
    }
    let listener = tokio::net::UnixListener::bind(socket)
        .map_err(|e| DbusError::Other(format!("cannot listen on {}: {e}", socket.display())))?;
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600));
    let control = control.clone();
    tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!("peer-to-peer accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let control = control.clone();
            tokio::spawn(async move {
                if let Err(e) = serve_peer(stream, control).await {
                    tracing::debug!("peer-to-peer client: {e}");
                }
            });
        }
    });
    Ok(())
}

/// One peer-to-peer client. Every object is registered on the builder, so it exists before
/// the connection reads the client's first message (a call that arrived before the object
/// server was set up would otherwise never be dispatched).
async fn serve_peer(stream: tokio::net::UnixStream, control: Control) -> Result<(), DbusError> {
    let stream = stream
        .into_std()
        .map_err(|e| DbusError::Other(e.to_string()))?;
    let mut builder = connection::Builder::unix_stream(stream)
        .server(zbus::Guid::generate())
        .p2p()
        .serve_at(ROOT_PATH, ObjectManager)
        .serve_at(
            ROOT_PATH,
            Manager {
                control: control.clone(),
            },
        );
    for id in control.active_sessions().await {
        let Ok(info) = control.session(&id).await else {
            continue;
        };
        builder = builder.serve_at(
            session_path(&id),
            Session {
                control: control.clone(),
                id: id.clone(),
            },
        );
        for track in info.tracks {
            builder = builder.serve_at(
                track_path(&id, track.index),
                Track {
                    control: control.clone(),
                    id: id.clone(),
                    index: track.index,
                },
            );
        }
    }
    let connection = builder.build().await?;
    tokio::spawn(relay_events(connection, control));
    Ok(())
}

/// Exports the manager, the object manager and every active session on `connection`.
async fn export_all(connection: &Connection, control: &Control) -> Result<(), DbusError> {
    let server = connection.object_server();
    server.at(ROOT_PATH, ObjectManager).await?;
    server
        .at(
            ROOT_PATH,
            Manager {
                control: control.clone(),
            },
        )
        .await?;
    for id in control.active_sessions().await {
        export_session(connection, control, &id).await?;
    }
    Ok(())
}

/// Exports a session and its tracks (idempotent).
pub(crate) async fn export_session(
    connection: &Connection,
    control: &Control,
    id: &str,
) -> zbus::Result<()> {
    let Ok(info) = control.session(id).await else {
        return Ok(());
    };
    connection
        .object_server()
        .at(
            session_path(id),
            Session {
                control: control.clone(),
                id: id.to_string(),
            },
        )
        .await?;
    for track in info.tracks {
        export_track(connection, control, id, track.index).await?;
    }
    Ok(())
}

/// Exports one track (idempotent).
pub(crate) async fn export_track(
    connection: &Connection,
    control: &Control,
    id: &str,
    index: u32,
) -> zbus::Result<()> {
    connection
        .object_server()
        .at(
            track_path(id, index),
            Track {
                control: control.clone(),
                id: id.to_string(),
                index,
            },
        )
        .await?;
    Ok(())
}

async fn unexport_session(
    connection: &Connection,
    control: &Control,
    id: &str,
) -> zbus::Result<()> {
    let server = connection.object_server();
    // The session's tracks are gone from control by now: remove every index it could have had.
    for index in 1..=control.config().engine.max_tracks {
        let _ = server.remove::<Track, _>(track_path(id, index)).await;
    }
    server.remove::<Session, _>(session_path(id)).await?;
    Ok(())
}

/// Turns control events into signals on `connection` until it closes (a peer-to-peer client
/// that disconnects takes its relay with it, so connections never accumulate).
async fn relay_events(connection: Connection, control: Control) {
    let mut events = control.subscribe();
    loop {
        let received = tokio::select! {
            received = events.recv() => received,
            () = connection.closed() => return,
        };
        let event = match received {
            Ok(event) => event,
            Err(RecvError::Lagged(missed)) => {
                tracing::warn!(missed, "D-Bus relay fell behind; re-exporting objects");
                let _ = export_all(&connection, &control).await;
                continue;
            }
            Err(RecvError::Closed) => return,
        };
        if let Err(e) = relay(&connection, &control, event).await {
            tracing::debug!("D-Bus relay: {e}");
        }
    }
}

/// Emits `PropertiesChanged` for interface `I` at `path` with the values the event carried
/// (no getter is called, so the relay never waits on a session).
async fn properties_changed<I: zbus::object_server::Interface>(
    connection: &Connection,
    path: OwnedObjectPath,
    changed: HashMap<&str, Variant<'_>>,
) -> zbus::Result<()> {
    let emitter = SignalEmitter::new(connection, path)?;
    Properties::properties_changed(&emitter, I::name(), changed, Cow::Borrowed(&[])).await
}

/// Emits the session's new `Tracks` list.
async fn announce_tracks(
    connection: &Connection,
    session: &str,
    tracks: &[u32],
) -> zbus::Result<()> {
    let paths: Vec<OwnedObjectPath> = tracks.iter().map(|i| track_path(session, *i)).collect();
    let changed = HashMap::from([("Tracks", Variant::from(paths))]);
    properties_changed::<Session>(connection, session_path(session), changed).await
}

async fn relay(connection: &Connection, control: &Control, event: Event) -> zbus::Result<()> {
    let server = connection.object_server();
    match event {
        Event::SessionAdded { session } => export_session(connection, control, &session).await?,
        Event::SessionRemoved { session } => {
            unexport_session(connection, control, &session).await?
        }
        Event::State { session, state, .. } => {
            let changed = HashMap::from([("State", Variant::from(state.as_str()))]);
            properties_changed::<Session>(connection, session_path(&session), changed).await?;
        }
        Event::TrackAdded {
            session,
            index,
            tracks,
        } => {
            export_track(connection, control, &session, index).await?;
            announce_tracks(connection, &session, &tracks).await?;
        }
        Event::TrackRemoved {
            session,
            index,
            tracks,
        } => {
            server
                .remove::<Track, _>(track_path(&session, index))
                .await?;
            announce_tracks(connection, &session, &tracks).await?;
        }
        Event::TrackChanged {
            session,
            fields,
            track,
        } => {
            let changed = fields
                .iter()
                .map(|field| match field {
                    TrackField::Name => ("Name", Variant::from(track.name.as_str())),
                    TrackField::Armed => ("Armed", Variant::from(track.armed)),
                    TrackField::InputGain => ("InputGain", Variant::from(track.input_gain)),
                    TrackField::Level => ("Level", Variant::from(track.level)),
                    TrackField::Pan => ("Pan", Variant::from(track.pan)),
                    TrackField::Muted => ("Muted", Variant::from(track.muted)),
                    TrackField::Soloed => ("Soloed", Variant::from(track.soloed)),
                    TrackField::Input => ("Input", Variant::from(track.input.as_str())),
                    TrackField::Monitoring => {
                        ("Monitoring", Variant::from(track.monitoring.as_str()))
                    }
                })
                .collect();
            properties_changed::<Track>(connection, track_path(&session, track.index), changed)
                .await?;
        }
        Event::TakeFinished {
            session,
            track,
            path,
            frames,
            ..
        } => {
            let iface = server
                .interface::<_, Session>(session_path(&session))
                .await?;
            let track = track_path(&session, track);
            Session::take_finished(iface.signal_emitter(), track.as_ref(), &path, frames).await?;
        }
        Event::Error {
            session: Some(session),
            code,
            message,
        } => {
            let iface = server
                .interface::<_, Session>(session_path(&session))
                .await?;
            Session::error(iface.signal_emitter(), code.as_str(), &message).await?;
        }
        Event::Error { session: None, .. } => {}
    }
    Ok(())
}

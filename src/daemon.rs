//! The daemon's life: start-up in order (config → data dir lock → store → control → D-Bus →
//! READY), signals, the systemd watchdog, and one ordered shutdown path (release the bus name
//! or socket → refuse new sessions → stop capture → finalize takes → flush the store → exit 0).

use std::fs::File;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::signal::unix::{signal, SignalKind};
use tracing_subscriber::{reload, EnvFilter};

use crate::bridge;
use crate::config::{default_data_dir, p2p_socket_path, Config};
use crate::control::Control;
use crate::dbus::{self, BusChoice};
use crate::store::Store;

/// What `overdub daemon` was asked for on its command line.
#[derive(Clone, Debug, Default)]
pub struct DaemonOptions {
    /// `--config`
    pub config: Option<PathBuf>,
    /// `--backend`
    pub backend: Option<String>,
    /// `--data-dir`
    pub data_dir: Option<PathBuf>,
    /// `--system` / `--bus-address` (None = session bus)
    pub bus: Option<BusChoice>,
    /// `--listen` (None = `http.listen`)
    pub listen: Option<String>,
}

/// A start-up failure, printed as one clear line before exiting non-zero.
#[derive(Debug)]
pub struct DaemonError(pub String);

impl std::fmt::Display for DaemonError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DaemonError {}

fn fail(message: impl std::fmt::Display) -> DaemonError {
    DaemonError(message.to_string())
}

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn run(options: DaemonOptions) -> Result<(), DaemonError> {
    let started = Instant::now();
    let (mut config, config_path) = Config::load(options.config.as_deref()).map_err(fail)?;
    if let Some(backend) = &options.backend {
        config.audio.backend = backend.clone();
        config.validate().map_err(fail)?;
    }
    let log = init_logging(&config.daemon.log_level);
    // Installed first, so a signal during start-up is handled, never fatal.
    let mut terminate = signal(SignalKind::terminate()).map_err(fail)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(fail)?;
    let mut hangup = signal(SignalKind::hangup()).map_err(fail)?;
    let data_dir = default_data_dir(options.data_dir.as_deref(), &config).map_err(fail)?;
    std::fs::create_dir_all(&data_dir).map_err(|e| {
        fail(format!(
            "cannot create data directory {}: {e}",
            data_dir.display()
        ))
    })?;
    let _lock = lock_data_dir(&data_dir)?;
    if config.engine.lock_memory {
        lock_memory();
    }
    let http = config.http.clone();
    let listener = bridge::bind(&http, options.listen.as_deref())
        .await
        .map_err(fail)?;
    let store = Store::open(&data_dir.join("overdub.db")).map_err(fail)?;
    let control = Control::start(config, data_dir.clone(), store.clone())
        .await
        .map_err(fail)?;

    let bus = options.bus.clone().unwrap_or(BusChoice::Session);
    let explicit_bus = options.bus.is_some();
    let mut p2p_socket = None;
    let connection = match dbus::serve_on_bus(&bus, &control).await {
        Ok(Some(connection)) => Some(connection),
        Ok(None) if !explicit_bus => {
            let socket = p2p_socket_path(&data_dir);
            dbus::serve_peer_to_peer(&socket, &control)
                .await
                .map_err(fail)?;
            tracing::info!(socket = %socket.display(), "no bus reachable: serving D-Bus peer-to-peer");
            p2p_socket = Some(socket);
            None
        }
        Ok(None) => return Err(fail("the requested bus is not reachable")),
        Err(e) => return Err(fail(e)),
    };
    let (stop_bridge, bridge_stopped) = tokio::sync::oneshot::channel::<()>();
    let bridge_addr = listener.local_addr().map_err(fail)?;
    let state = bridge::AppState::new(control.clone(), http);
    let bridge_task = tokio::spawn(bridge::serve(listener, state, async move {
        let _ = bridge_stopped.await;
    }));
    tracing::info!(addr = %bridge_addr, "HTTP and WebSocket bridge listening");
    tracing::info!(
        data_dir = %data_dir.display(),
        ready_ms = started.elapsed().as_millis() as u64,
        "overdub {} ready",
        env!("CARGO_PKG_VERSION")
    );
    notify("READY=1\nSTATUS=recording daemon ready");
    spawn_watchdog();

    loop {
        tokio::select! {
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
            _ = hangup.recv() => reload(&control, options.config.as_deref(), config_path.as_deref(), &log).await,
        }
    }

    tracing::info!("shutting down: finalizing takes");
    notify("STOPPING=1");
    if let Some(connection) = &connection {
        let _ = connection.release_name(dbus::BUS_NAME).await;
    }
    if let Some(socket) = &p2p_socket {
        let _ = std::fs::remove_file(socket);
    }
    let _ = stop_bridge.send(());
    if tokio::time::timeout(Duration::from_secs(2), bridge_task)
        .await
        .is_err()
    {
        tracing::warn!("the HTTP bridge did not close its connections in 2 s");
    }
    control.shutdown().await;
    store.close();
    tracing::info!("stopped");
    Ok(())
}

type LogHandle = reload::Handle<EnvFilter, tracing_subscriber::Registry>;

/// Locks the process's memory as it is touched (`mlockall` with `MCL_ONFAULT`: no pre-faulting,
/// so resident memory does not grow), where the memlock limit allows it; logs either way.
fn lock_memory() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into `limit`, a valid rlimit that outlives the call.
    let got = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) } == 0;
    // SAFETY: geteuid has no preconditions.
    let privileged = unsafe { libc::geteuid() } == 0;
    let unlimited = got && limit.rlim_cur == libc::RLIM_INFINITY;
    if !(privileged || unlimited) {
        tracing::warn!(
            limit_kb = limit.rlim_cur / 1024,
            "memory not locked: the memlock limit is too low (LimitMEMLOCK=infinity in the unit, or \"@audio - memlock unlimited\" in limits.conf, allows it)"
        );
        return;
    }
    // SAFETY: mlockall only changes how the kernel pages this process's memory.
    let rc = unsafe { libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE | libc::MCL_ONFAULT) };
    if rc == 0 {
        tracing::info!("memory locked as it is touched");
    } else {
        tracing::warn!(
            error = %std::io::Error::last_os_error(),
            "memory not locked: mlockall refused"
        );
    }
}

/// A log filter from a spec. libjack's own messages (target `jack::logging`) are left out unless
/// the spec names them: overdub logs what matters itself, and libjack repeats "cannot connect"
/// on every look for a lost server.
fn log_filter(spec: &str) -> Option<EnvFilter> {
    let filter = EnvFilter::try_new(spec).ok()?;
    if spec.contains("jack::logging") {
        return Some(filter);
    }
    Some(filter.add_directive("jack::logging=off".parse().ok()?))
}

/// Logs to stderr (journald picks it up under systemd). `OVERDUB_LOG` or `RUST_LOG` override
/// the configured level.
fn init_logging(level: &str) -> LogHandle {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = std::env::var("OVERDUB_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .ok()
        .and_then(|f| log_filter(&f))
        .or_else(|| log_filter(level))
        .unwrap_or_else(|| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
        )
        .try_init();
    handle
}

/// SIGHUP: re-reads the config file and applies what can change live.
async fn reload(
    control: &Control,
    explicit: Option<&Path>,
    loaded: Option<&Path>,
    log: &LogHandle,
) {
    notify("RELOADING=1");
    let result = match explicit.or(loaded) {
        Some(path) => Config::from_file(path).map(|c| (c, Some(path.to_path_buf()))),
        None => Config::load(None),
    };
    match result {
        Ok((config, _)) => {
            if let Some(filter) = log_filter(&config.daemon.log_level) {
                let _ = log.modify(|f| *f = filter);
            }
            control.reload(config).await;
            tracing::info!("configuration reloaded");
        }
        Err(e) => tracing::error!("configuration not reloaded: {e}"),
    }
    notify("READY=1");
}

/// Takes an exclusive lock on `<data dir>/overdub.lock` so two daemons never share a data
/// directory (and so never write the same takes or database).
fn lock_data_dir(data_dir: &Path) -> Result<File, DaemonError> {
    let path = data_dir.join("overdub.lock");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| {
            fail(format!(
                "cannot write in data directory {}: {e}",
                data_dir.display()
            ))
        })?;
    // SAFETY: flock on a file descriptor we own and keep open for the daemon's lifetime.
    let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
    if !locked {
        return Err(fail(format!(
            "another overdub daemon is using the data directory {}; stop it first",
            data_dir.display()
        )));
    }
    Ok(file)
}

/// Sends a state line to systemd when run as a `Type=notify` service (no-op otherwise).
fn notify(state: &str) {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let socket = socket.to_string_lossy().into_owned();
    let sender = match std::os::unix::net::UnixDatagram::unbound() {
        Ok(sender) => sender,
        Err(e) => {
            tracing::warn!("sd_notify: {e}");
            return;
        }
    };
    let result = if let Some(abstract_name) = socket.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(abstract_name.as_bytes())
            .and_then(|addr| sender.send_to_addr(state.as_bytes(), &addr))
    } else {
        sender.send_to(state.as_bytes(), &socket)
    };
    if let Err(e) = result {
        tracing::warn!("sd_notify to {socket}: {e}");
    }
}

/// Pings the systemd watchdog at half its interval when `WATCHDOG_USEC` asks for it.
fn spawn_watchdog() {
    let Some(usec) = std::env::var("WATCHDOG_USEC")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|v| *v > 0)
    else {
        return;
    };
    let pid_matches = std::env::var("WATCHDOG_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        .is_none_or(|pid| pid == std::process::id());
    if !pid_matches {
        return;
    }
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_micros(usec / 2));
        loop {
            tick.tick().await;
            notify("WATCHDOG=1");
        }
    });
}

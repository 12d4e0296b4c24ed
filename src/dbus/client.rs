//! The client side used by the `overdub` CLI: finds the daemon on the chosen bus, or on its
//! peer-to-peer socket when it is not there, and calls its objects.

use std::collections::HashMap;
use std::path::Path;

use serde::de::DeserializeOwned;
use zbus::{connection, Connection, Proxy};
use zbus::{DynamicType, OwnedObjectPath, OwnedVariant};

use super::{BusChoice, BUS_NAME, ROOT_PATH};
use crate::control::ErrorCode;

/// Interface names.
pub const MANAGER: &str = "org.overdub.Overdub1.Manager";
/// Session interface.
pub const SESSION: &str = "org.overdub.Overdub1.Session";
/// Track interface.
pub const TRACK: &str = "org.overdub.Overdub1.Track";

/// A failed client call: the daemon's error code where it sent one, and its message.
#[derive(Debug)]
pub struct ClientError {
    /// The daemon's error code, if the daemon answered with one of ours.
    pub code: Option<ErrorCode>,
    /// What went wrong.
    pub message: String,
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.code {
            Some(code) => write!(f, "{}: {}", code.as_str(), self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for ClientError {}

impl From<zbus::fdo::Error> for ClientError {
    fn from(error: zbus::fdo::Error) -> Self {
        match error {
            zbus::fdo::Error::ZBus(inner) => ClientError::from(inner),
            other => ClientError {
                code: None,
                message: other.to_string(),
            },
        }
    }
}

impl From<zbus::Error> for ClientError {
    fn from(error: zbus::Error) -> Self {
        if let zbus::Error::MethodError(name, message, _) = &error {
            if let Some(code) = name
                .as_str()
                .strip_prefix("org.overdub.Overdub1.Error.")
                .and_then(ErrorCode::from_camel_case)
            {
                return ClientError {
                    code: Some(code),
                    message: message.clone().unwrap_or_default(),
                };
            }
        }
        if let zbus::Error::FDO(fdo) = &error {
            return ClientError {
                code: None,
                message: fdo.to_string(),
            };
        }
        ClientError {
            code: None,
            message: error.to_string(),
        }
    }
}

/// A connection to the daemon.
pub struct Client {
    connection: Connection,
}

impl Client {
    /// Connects: an explicit bus if given; else the session bus when the daemon owns its name
    /// there; else the daemon's peer-to-peer socket.
    pub async fn connect(choice: &BusChoice, socket: &Path) -> Result<Client, ClientError> {
        let explicit = !matches!(choice, BusChoice::Session);
        let bus = match choice {
            BusChoice::Session
                if std::env::var_os("DBUS_SESSION_BUS_ADDRESS").is_none_or(|a| a.is_empty()) =>
            {
                None
            }
            BusChoice::Session => connection::Builder::session().build().await.ok(),
            BusChoice::System => Some(connection::Builder::system().build().await?),
            BusChoice::Address(address) => Some(
                connection::Builder::address(address.as_str())
                    .build()
                    .await?,
            ),
        };
        if let Some(connection) = bus {
            let dbus = zbus::fdo::DBusProxy::new(&connection).await?;
            let owned = dbus
                .name_has_owner(BUS_NAME.try_into().expect("valid name"))
                .await?;
            if owned || explicit {
                if !owned {
                    return Err(ClientError {
                        code: None,
                        message: format!("no overdub daemon owns {BUS_NAME} on that bus"),
                    });
                }
                return Ok(Client { connection });
            }
        }
        let stream = std::os::unix::net::UnixStream::connect(socket).map_err(|e| ClientError {
            code: None,
            message: format!(
                "no overdub daemon found: not on the session bus, and {}: {e}. Start one with `overdub daemon` (or `make run`)",
                socket.display()
            ),
        })?;
        let connection = connection::Builder::unix_stream(stream)
            .p2p()
            .build()
            .await?;
        Ok(Client { connection })
    }

    /// A proxy for `interface` at `path`.
    pub async fn proxy(&self, path: &str, interface: &str) -> Result<Proxy<'static>, ClientError> {
        let builder = zbus::proxy::Builder::<Proxy<'static>>::new(&self.connection)
            .path(path.to_string())
            .interface(interface.to_string())
            .cache_properties(zbus::proxy::CacheProperties::No)
            .destination(BUS_NAME);
        Ok(builder.build().await?)
    }

    /// Calls `method` on the manager.
    pub async fn manager<B, R>(&self, method: &str, body: &B) -> Result<R, ClientError>
    where
        B: serde::Serialize + DynamicType,
        R: DeserializeOwned + zbus::Type,
    {
        self.call(ROOT_PATH, MANAGER, method, body).await
    }

    /// Calls `method` of `interface` at `path`.
    pub async fn call<B, R>(
        &self,
        path: &str,
        interface: &str,
        method: &str,
        body: &B,
    ) -> Result<R, ClientError>
    where
        B: serde::Serialize + DynamicType,
        R: DeserializeOwned + zbus::Type,
    {
        let proxy = self.proxy(path, interface).await?;
        Ok(proxy.call(method, body).await?)
    }

    /// Reads a property.
    pub async fn get<T>(&self, path: &str, interface: &str, name: &str) -> Result<T, ClientError>
    where
        T: DeserializeOwned + zbus::Type,
    {
        let proxy = self.proxy(path, interface).await?;
        Ok(proxy.get_property(name).await?)
    }

    /// Object paths of the active sessions.
    pub async fn active_sessions(&self) -> Result<Vec<OwnedObjectPath>, ClientError> {
        self.manager("ListSessions", &()).await
    }

    /// Every stored session as a dictionary.
    pub async fn stored_sessions(&self) -> Result<Vec<HashMap<String, OwnedVariant>>, ClientError> {
        self.manager("ListStoredSessions", &()).await
    }
}

//! gRPC over unix sockets: each daemon binds one socket with [`bind`] and runs its services
//! with [`serve`]; clients get a [`Channel`] from [`connect`].

use std::fs::{self, DirBuilder, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use tokio::net::{UnixListener, UnixStream};
use tokio_stream::wrappers::UnixListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Router;
use tonic::transport::{Channel, Endpoint, Uri};

/// Mode of a bound socket: only the owner (root for the daemons) may connect.
const SOCKET_MODE: u32 = 0o600;
/// Mode of a socket directory this module creates.
const DIR_MODE: u32 = 0o755;

/// A failed socket operation, naming the socket path.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("create socket directory {path}")]
    CreateDir { path: PathBuf, source: io::Error },
    #[error("inspect {path}")]
    Inspect { path: PathBuf, source: io::Error },
    #[error("{path} exists and is not a socket")]
    NotASocket { path: PathBuf },
    #[error("probe socket {path}")]
    Probe { path: PathBuf, source: io::Error },
    #[error("socket {path} is held by a running server")]
    InUse { path: PathBuf },
    #[error("remove stale socket {path}")]
    RemoveStale { path: PathBuf, source: io::Error },
    #[error("bind {path}")]
    Bind { path: PathBuf, source: io::Error },
    #[error("set mode of {path}")]
    SetMode { path: PathBuf, source: io::Error },
    #[error("connect to {path}")]
    Connect {
        path: PathBuf,
        source: tonic::transport::Error,
    },
    #[error("serve on {path}")]
    Serve {
        path: PathBuf,
        source: tonic::transport::Error,
    },
}

/// A listening socket bound by [`bind`], with the path clients connect to.
#[derive(Debug)]
pub struct SocketListener {
    listener: UnixListener,
    path: PathBuf,
}

impl SocketListener {
    /// The path clients connect to.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Binds a listening socket at `path` with mode 0600, creating the parent directory.
///
/// A socket file left by a server that is gone is replaced. A socket that still accepts
/// connections is refused with [`SocketError::InUse`], so a second daemon cannot silently take
/// over the first one's clients; anything that is not a socket is refused and left alone.
/// Must be called inside a tokio runtime.
pub async fn bind(path: impl AsRef<Path>) -> Result<SocketListener, SocketError> {
    let path = path.as_ref();
    if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(dir)
            .map_err(|source| SocketError::CreateDir {
                path: dir.to_owned(),
                source,
            })?;
    }
    remove_stale(path).await?;
    // bind() leaves the mode to the umask: bind a private name, narrow its mode, then rename
    // it into place, so no client ever sees the socket with a wider mode.
    let file_name = path.file_name().unwrap_or_default().to_string_lossy();
    let staging = path.with_file_name(format!(".{file_name}.{}.binding", std::process::id()));
    let _ = fs::remove_file(&staging);
    let listener = UnixListener::bind(&staging).map_err(|source| SocketError::Bind {
        path: path.to_owned(),
        source,
    })?;
    let placed = fs::set_permissions(&staging, Permissions::from_mode(SOCKET_MODE))
        .map_err(|source| SocketError::SetMode {
            path: path.to_owned(),
            source,
        })
        .and_then(|()| {
            fs::rename(&staging, path).map_err(|source| SocketError::Bind {
                path: path.to_owned(),
                source,
            })
        });
    if let Err(e) = placed {
        let _ = fs::remove_file(&staging);
        return Err(e);
    }
    Ok(SocketListener {
        listener,
        path: path.to_owned(),
    })
}

/// Removes `path` if it is a socket nobody accepts on.
async fn remove_stale(path: &Path) -> Result<(), SocketError> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(SocketError::Inspect {
                path: path.to_owned(),
                source,
            });
        }
    };
    if !meta.file_type().is_socket() {
        return Err(SocketError::NotASocket {
            path: path.to_owned(),
        });
    }
    match UnixStream::connect(path).await {
        Ok(_) => {
            return Err(SocketError::InUse {
                path: path.to_owned(),
            });
        }
        // A full backlog means a live server that is slow to accept.
        Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
            return Err(SocketError::InUse {
                path: path.to_owned(),
            });
        }
        Err(err) if err.kind() == io::ErrorKind::ConnectionRefused => {}
        // Removed between the stat and the probe: nothing left to clean up.
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(SocketError::Probe {
                path: path.to_owned(),
                source,
            });
        }
    }
    match fs::remove_file(path) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => Err(SocketError::RemoveStale {
            path: path.to_owned(),
            source: err,
        }),
        _ => Ok(()),
    }
}

/// Opens a gRPC channel to the server listening on the unix socket at `path`.
///
/// Fails if nothing accepts there now. Later connection losses are healed by the channel,
/// which reconnects to the same path on the next call.
pub async fn connect(path: impl AsRef<Path>) -> Result<Channel, SocketError> {
    let path = path.as_ref().to_owned();
    // The URI only fills the HTTP/2 `:authority`; the connector below ignores it.
    let endpoint = Endpoint::from_static("http://localhost");
    let socket = path.clone();
    endpoint
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move { Ok::<_, io::Error>(TokioIo::new(UnixStream::connect(socket).await?)) }
        }))
        .await
        .map_err(|source| SocketError::Connect { path, source })
}

/// Runs `router` on `listener` until `shutdown` is cancelled, then stops accepting and waits
/// for open calls to finish.
///
/// Long-lived server streams keep their connection open, so their implementations should end
/// on the same token; otherwise this waits for the clients to hang up. The socket file stays:
/// the next [`bind`] replaces it as stale.
pub async fn serve(
    router: Router,
    listener: SocketListener,
    shutdown: CancellationToken,
) -> Result<(), SocketError> {
    let SocketListener { listener, path } = listener;
    router
        .serve_with_incoming_shutdown(
            UnixListenerStream::new(listener),
            shutdown.cancelled_owned(),
        )
        .await
        .map_err(|source| SocketError::Serve { path, source })
}

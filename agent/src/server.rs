//! The API server: gRPC (with reflection, v1 and v1alpha) on a Unix socket
//! or TLS TCP, stopped gracefully on request.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, anyhow};
use netdb_api::netdb_server::NetdbServer;
use netdb_dataplane::Kernel;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;

use crate::accept::{self, AcceptStats};
use crate::api::Api;
use crate::config::Settings;
use crate::endpoint::Endpoint;
use crate::reflection;

/// A running API server.
pub(crate) struct Server {
    task: JoinHandle<()>,
    stop: watch::Sender<bool>,
    accepted: Arc<AcceptStats>,
}

impl Server {
    /// Starts the API server (with gRPC reflection) on `s.api`.
    pub(crate) async fn start<K: Kernel>(s: &Settings, api: Api<K>) -> anyhow::Result<Server> {
        let (stop, mut stopped) = watch::channel(false);
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = &s.api_tls {
            builder = builder.tls_config(tls.config()?).context("TLS for the API")?;
        }
        // The Unix socket's accept path (`accept`) assumes tonic's HTTP/2
        // defaults (frame and header list sizes, header table size): change
        // `accept::Limits` with any of them.
        let router = builder
            .add_service(NetdbServer::new(api))
            .add_service(reflection::v1())
            .add_service(reflection::v1alpha());
        let accepted = Arc::new(AcceptStats::default());
        let shutdown = async move {
            let _ = stopped.wait_for(|s| *s).await;
        };
        let task = match &s.api {
            Endpoint::Unix(path) => {
                let listener = bind_unix(path)?;
                let incoming = accept::unix_incoming(listener, accepted.clone());
                tokio::spawn(async move {
                    if let Err(e) = router.serve_with_incoming_shutdown(incoming, shutdown).await {
                        tracing::error!(error = %e, "API server stopped");
                    }
                })
            }
            Endpoint::Tcp(addr) => {
                let listener =
                    TcpListener::bind(addr).await.map_err(|e| bind_error("API TCP", *addr, e))?;
                tokio::spawn(async move {
                    if let Err(e) = router
                        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
                        .await
                    {
                        tracing::error!(error = %e, "API server stopped");
                    }
                })
            }
        };
        Ok(Server { task, stop, accepted })
    }

    /// Stops accepting, and waits up to 2 s for the calls under way.
    pub(crate) async fn stop(self) {
        let _ = self.stop.send(true);
        let (connections, replaced, refused) = self.accepted.totals();
        tracing::debug!(
            connections,
            authorities_replaced = replaced,
            refused,
            "API Unix socket connections"
        );
        if tokio::time::timeout(std::time::Duration::from_secs(2), self.task).await.is_err() {
            tracing::warn!("API clients did not disconnect in 2 s; exiting anyway");
        }
    }
}

/// Binds the API's Unix socket, owner-only (it accepts every command).
fn bind_unix(path: &Path) -> anyhow::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            anyhow::bail!("another agent serves the API at {}; use --api", path.display());
        }
        std::fs::remove_file(path)
            .with_context(|| format!("cannot remove stale socket {}", path.display()))?;
    }
    let listener = UnixListener::bind(path)
        .with_context(|| format!("cannot bind API socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// A bind failure, with what to do about it.
pub(crate) fn bind_error(proto: &str, addr: SocketAddr, e: io::Error) -> anyhow::Error {
    let hint = match e.kind() {
        io::ErrorKind::AddrInUse => "address in use; is another agent running? use --bind",
        io::ErrorKind::AddrNotAvailable => {
            "no such local address; use --bind with an address of this host"
        }
        io::ErrorKind::PermissionDenied => {
            "permission denied; use a port above 1023 or run as root"
        }
        _ => "use --bind",
    };
    anyhow!("cannot bind {proto} {addr}: {e}; {hint}")
}

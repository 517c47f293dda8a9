//! The admin API endpoint: `unix:/path` or `IP:PORT`, for the server (agent)
//! and the client (CLI).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, bail};
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint as TonicEndpoint};

use crate::tls::ClientFiles;

pub(crate) const DEFAULT: &str = "unix:/run/netdb/netdb.sock";

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Endpoint {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "unix:{}", p.display()),
            Endpoint::Tcp(a) => write!(f, "{a}"),
        }
    }
}

impl std::str::FromStr for Endpoint {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err("empty unix socket path; write unix:/run/netdb/netdb.sock".into());
            }
            return Ok(Endpoint::Unix(PathBuf::from(path)));
        }
        s.parse()
            .map(Endpoint::Tcp)
            .map_err(|_| format!("bad API endpoint {s:?}: write unix:/path/to.sock or IP:PORT"))
    }
}

/// serde helper for the `api` key of the TOML config.
pub(crate) fn de_opt<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Endpoint>, D::Error> {
    let s: Option<String> = serde::Deserialize::deserialize(d)?;
    s.map(|s| s.parse().map_err(serde::de::Error::custom)).transpose()
}

/// Connects the CLI to an agent, with an error that says what to do.
pub(crate) async fn connect(ep: &Endpoint, tls: &ClientFiles) -> anyhow::Result<Channel> {
    let hint = || {
        format!("cannot reach the netdb agent at {ep}; is `netdb agent` running there? (use --api)")
    };
    match ep {
        Endpoint::Tcp(addr) if tls.is_set() => {
            TonicEndpoint::from_shared(format!("https://{addr}"))?
                .tls_config(tls.config(&addr.ip().to_string())?)?
                .connect()
                .await
                .with_context(|| {
                    format!(
                        "{}; or the TLS handshake failed (check --tls-ca, --tls-cert, --tls-key)",
                        hint()
                    )
                })
        }
        Endpoint::Tcp(addr) if !addr.ip().is_loopback() => bail!(
            "the API at {addr} is not on loopback: give --tls-ca, --tls-cert and --tls-key (agents serve TCP APIs over TLS only)"
        ),
        Endpoint::Tcp(addr) => {
            TonicEndpoint::from_shared(format!("http://{addr}"))?.connect().await.with_context(hint)
        }
        Endpoint::Unix(path) => {
            let path = path.clone();
            if !path.exists() {
                bail!("{}: {} does not exist", hint(), path.display());
            }
            // The URI is a placeholder: the connector below ignores it.
            TonicEndpoint::try_from("http://[::]:50051")?
                .connect_with_connector(tower::service_fn(move |_| {
                    let path = path.clone();
                    async move {
                        Ok::<_, std::io::Error>(TokioIo::new(
                            tokio::net::UnixStream::connect(path).await?,
                        ))
                    }
                }))
                .await
                .with_context(hint)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_forms_and_rejects_others() {
        assert_eq!("unix:/tmp/a.sock".parse(), Ok(Endpoint::Unix("/tmp/a.sock".into())));
        assert_eq!("127.0.0.1:5000".parse(), Ok(Endpoint::Tcp("127.0.0.1:5000".parse().unwrap())));
        assert!("unix:".parse::<Endpoint>().is_err());
        assert!("localhost".parse::<Endpoint>().is_err());
        assert_eq!(DEFAULT.parse::<Endpoint>().unwrap().to_string(), DEFAULT);
    }
}

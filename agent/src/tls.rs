//! TLS for the TCP admin API: the agent presents its certificate and
//! accepts only clients with a certificate from the configured CA; the CLI
//! checks the agent's certificate against a CA and presents its own.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

fn read(what: &str, path: &Path) -> anyhow::Result<Vec<u8>> {
    let pem =
        std::fs::read(path).with_context(|| format!("cannot read {what} {}", path.display()))?;
    if !String::from_utf8_lossy(&pem).contains("-----BEGIN") {
        bail!("{what} {} is not PEM", path.display());
    }
    Ok(pem)
}

/// The agent's side: its certificate and key, and the CA that signs
/// client certificates.
#[derive(Debug, Clone)]
pub(crate) struct ServerFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: PathBuf,
}

impl ServerFiles {
    pub(crate) fn config(&self) -> anyhow::Result<ServerTlsConfig> {
        let identity =
            Identity::from_pem(read("certificate", &self.cert)?, read("private key", &self.key)?);
        Ok(ServerTlsConfig::new()
            .identity(identity)
            .client_ca_root(Certificate::from_pem(read("client CA", &self.client_ca)?))
            .client_auth_optional(false))
    }
}

/// The CLI's side.
#[derive(Debug, Clone, Default)]
pub(crate) struct ClientFiles {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub server_name: Option<String>,
}

impl ClientFiles {
    pub(crate) fn is_set(&self) -> bool {
        self.ca.is_some() || self.cert.is_some() || self.key.is_some()
    }

    pub(crate) fn config(&self, host: &str) -> anyhow::Result<ClientTlsConfig> {
        let (Some(ca), Some(cert), Some(key)) = (&self.ca, &self.cert, &self.key) else {
            bail!("TLS to the agent needs --tls-ca, --tls-cert and --tls-key together");
        };
        Ok(ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read("CA", ca)?))
            .identity(Identity::from_pem(read("certificate", cert)?, read("private key", key)?))
            .domain_name(self.server_name.clone().unwrap_or_else(|| host.to_string())))
    }
}

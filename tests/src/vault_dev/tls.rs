//! Dev TLS material: a throw-away CA and a server certificate for `localhost`, `127.0.0.1` and
//! `::1`, made with the project's own [`approle_shared::tls::Ca`]. Clients trust the CA PEM
//! (`VAULT_CACERT`).

use std::sync::Arc;
use std::time::Duration;

pub use approle_shared::tls::TlsError;
use approle_shared::tls::{Ca, Usage, server_config};

/// A dev server's certificates outlive any test run.
const VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Generated PEMs.
#[derive(Clone)]
pub struct TlsMaterial {
    /// The CA certificate (PEM).
    pub ca_pem: String,
    /// The server certificate (PEM).
    pub cert_pem: String,
    key_pem: String,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsMaterial").finish_non_exhaustive()
    }
}

impl TlsMaterial {
    /// A fresh CA and server certificate.
    pub fn generate() -> Result<Self, TlsError> {
        let ca = Ca::generate("vault-dev CA", VALIDITY)?;
        let sans = ["localhost", "127.0.0.1", "::1"].map(String::from);
        let leaf = ca.issue("vault-dev", &sans, Usage::Server, VALIDITY)?;
        Ok(TlsMaterial {
            ca_pem: ca.cert_pem().to_owned(),
            cert_pem: leaf.cert_pem,
            key_pem: leaf.key_pem,
        })
    }

    /// A rustls server config (ring provider, HTTP/1.1).
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        server_config(&self.cert_pem, &self.key_pem).map(Arc::new)
    }
}

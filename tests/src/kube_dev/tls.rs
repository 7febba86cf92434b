//! kube-dev's own PKI: a CA generated at start (rcgen, ring), a serving certificate for
//! `127.0.0.1`, `localhost` and `::1`, and the kubeconfig that trusts the CA and carries the
//! admin bearer token.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub use approle_shared::tls::TlsError;
use approle_shared::tls::{Ca, Usage, server_config};
use base64::Engine as _;

/// A dev server's certificates outlive any test run.
const VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// The generated CA and serving configuration.
#[derive(Debug)]
pub struct Pki {
    /// CA certificate (PEM), for clients.
    pub ca_pem: String,
    /// rustls server configuration with the serving certificate.
    pub server_config: Arc<rustls::ServerConfig>,
}

/// Generates the CA and the serving certificate (sent with the CA as its chain).
pub fn generate() -> Result<Pki, TlsError> {
    let ca = Ca::generate("kube-dev-ca", VALIDITY)?;
    let sans = ["127.0.0.1", "localhost", "::1", "kubernetes.default.svc"].map(String::from);
    let leaf = ca.issue("kube-apiserver", &sans, Usage::Server, VALIDITY)?;
    let chain = format!("{}{}", leaf.cert_pem, ca.cert_pem());
    Ok(Pki {
        ca_pem: ca.cert_pem().to_owned(),
        server_config: Arc::new(server_config(&chain, &leaf.key_pem)?),
    })
}

/// A kubeconfig (YAML) for `server` trusting `ca_pem`, authenticating with `token`,
/// default namespace `default`.
pub fn kubeconfig(server: &str, ca_pem: &str, token: &str) -> String {
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: kube-dev
  cluster:
    server: {server}
    certificate-authority-data: {ca}
contexts:
- name: kube-dev
  context:
    cluster: kube-dev
    namespace: default
    user: kube-dev-admin
current-context: kube-dev
preferences: {{}}
users:
- name: kube-dev-admin
  user:
    token: {token}
"
    )
}

/// Writes a file readable only by its owner (it holds the admin token).
pub fn write_private(path: &Path, content: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(content.as_bytes())
}

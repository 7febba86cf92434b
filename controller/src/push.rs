//! The controller's side of the push: `POST https://<podIP>:<port>/v1/secret-id` with the
//! controller's client certificate (see `approle_shared::tls` for the trust model). The
//! certificate can be swapped at run time ([`PushClient::reload`]) when it is renewed.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use approle_shared::push::{PushError, PushRequest, PushResponse, SECRET_ID_PATH};
use approle_shared::tls;

/// Why a push did not deliver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushFailure {
    /// Nothing listens yet (connection refused or connect timeout): retry the same push.
    NotListening(String),
    /// The request went out but the answer did not come back (timeout, reset): the outcome is
    /// unknown, so retrying the same push is the safe move — the init container answers 409 or 503
    /// to a duplicate.
    Interrupted(String),
    /// The init container answered with an error status.
    Refused {
        /// HTTP status.
        status: u16,
        /// Its `error` text.
        message: String,
    },
}

impl std::fmt::Display for PushFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PushFailure::NotListening(e) => write!(f, "init container not reachable: {e}"),
            PushFailure::Interrupted(e) => write!(f, "push interrupted: {e}"),
            PushFailure::Refused { status, message } => {
                write!(f, "init container refused the push ({status}): {message}")
            }
        }
    }
}

/// HTTPS client that presents the controller's certificate. Clones share the certificate.
#[derive(Debug, Clone)]
pub struct PushClient {
    http: Arc<RwLock<reqwest::Client>>,
    timeout: Duration,
}

impl PushClient {
    /// Builds the client from PEM texts.
    pub fn new(cert_pem: &str, key_pem: &str, timeout: Duration) -> Result<Self, String> {
        Ok(Self {
            http: Arc::new(RwLock::new(build(cert_pem, key_pem, timeout)?)),
            timeout,
        })
    }

    /// Presents a new certificate from now on; pushes in flight finish with the old one.
    pub fn reload(&self, cert_pem: &str, key_pem: &str) -> Result<(), String> {
        let http = build(cert_pem, key_pem, self.timeout)?;
        *self.http.write().unwrap_or_else(|p| p.into_inner()) = http;
        Ok(())
    }

    fn client(&self) -> reqwest::Client {
        // A panic elsewhere cannot leave a half-written client behind: the swap is one store.
        self.http.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Pushes `req` to the pod.
    pub async fn push(
        &self,
        pod_ip: IpAddr,
        port: u16,
        req: &PushRequest,
    ) -> Result<PushResponse, PushFailure> {
        let url = format!("https://{}{SECRET_ID_PATH}", SocketAddr::new(pod_ip, port));
        let resp = self
            .client()
            .post(url)
            .json(req)
            .send()
            .await
            .map_err(|e| classify(&e))?;
        let status = resp.status().as_u16();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| PushFailure::Interrupted(error_chain(&e)))?;
        if status == 200 {
            serde_json::from_slice::<PushResponse>(&bytes).map_err(|e| PushFailure::Refused {
                status,
                message: format!("unreadable 200 answer: {e}"),
            })
        } else {
            let message = serde_json::from_slice::<PushError>(&bytes)
                .map(|b| b.error)
                .unwrap_or_else(|_| format!("{} bytes of non-JSON body", bytes.len()));
            Err(PushFailure::Refused { status, message })
        }
    }
}

fn build(cert_pem: &str, key_pem: &str, timeout: Duration) -> Result<reqwest::Client, String> {
    let config = tls::push_client_config(cert_pem, key_pem).map_err(|e| e.to_string())?;
    reqwest::Client::builder()
        .tls_backend_preconfigured(config)
        .http1_only()
        // Each init container takes exactly one push: there is no connection worth keeping.
        .pool_max_idle_per_host(0)
        // A pod that is not listening yet refuses at once; one that is unreachable should not
        // hold a delivery slot for long.
        .connect_timeout(Duration::from_secs(2))
        .timeout(timeout)
        .build()
        .map_err(|e| format!("push client: {e}"))
}

fn classify(e: &reqwest::Error) -> PushFailure {
    if e.is_connect() {
        PushFailure::NotListening(error_chain(e))
    } else {
        PushFailure::Interrupted(error_chain(e))
    }
}

fn error_chain(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

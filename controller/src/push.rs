//! The controller's side of the push: one mutual-TLS connection to `https://<podIP>:<port>` that
//! carries `GET /v1/identity` and then `POST /v1/secret-id` (HTTP/1.1 keep-alive, one TLS session),
//! with the controller's client certificate (see `approle_shared::tls` for the trust model).
//!
//! ```text
//!   PushClient::connect ─▶ TCP (≤ CONNECT_TIMEOUT) ─▶ TLS (client cert) ─▶ Session
//!   Session::identity   ─▶ GET /v1/identity   ─▶ the pod's projected token   (crate::identity checks it)
//!   Session::push       ─▶ POST /v1/secret-id ─▶ PushResponse                 (same connection)
//! ```
//!
//! A [`Session`] is one connection, so the pod whose identity was checked is the pod that gets the
//! push. The certificate can be swapped at run time ([`PushClient::reload`]) when it is renewed.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use approle_shared::push::{
    IDENTITY_PATH, IdentityResponse, PushError, PushRequest, PushResponse, SECRET_ID_PATH,
};
use approle_shared::secret::IdentityToken;
use approle_shared::tls;
use bytes::Bytes;
use http::{Method, Request, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_rustls::TlsConnector;

/// A pod that is not listening yet refuses at once; one that is unreachable should not hold a
/// delivery slot for long. Covers the TCP connect and, separately, the TLS handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest answer we read: the init container's answers are a few hundred bytes (an identity
/// token about one kilobyte); anything bigger is not ours.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// Why a push (or the identity request before it) did not succeed.
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

/// Opens push connections with the controller's certificate. Clones share the certificate.
#[derive(Debug, Clone)]
pub struct PushClient {
    tls: Arc<RwLock<Arc<rustls::ClientConfig>>>,
    timeout: Duration,
}

impl PushClient {
    /// Builds the client from PEM texts; `timeout` bounds each request on a connection.
    pub fn new(cert_pem: &str, key_pem: &str, timeout: Duration) -> Result<Self, String> {
        Ok(Self {
            tls: Arc::new(RwLock::new(build(cert_pem, key_pem)?)),
            timeout,
        })
    }

    /// Presents a new certificate from now on; connections already open keep the old one.
    pub fn reload(&self, cert_pem: &str, key_pem: &str) -> Result<(), String> {
        let config = build(cert_pem, key_pem)?;
        *self.tls.write().unwrap_or_else(|p| p.into_inner()) = config;
        Ok(())
    }

    fn config(&self) -> Arc<rustls::ClientConfig> {
        // A panic elsewhere cannot leave a half-written config behind: the swap is one store.
        self.tls.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Opens one mutual-TLS connection to the pod.
    pub async fn connect(&self, pod_ip: IpAddr, port: u16) -> Result<Session, PushFailure> {
        let addr = SocketAddr::new(pod_ip, port);
        let tcp = timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| PushFailure::NotListening(format!("connect to {addr} timed out")))?
            .map_err(|e| PushFailure::NotListening(format!("connect to {addr}: {e}")))?;
        // Small requests and answers: send each at once.
        let _ = tcp.set_nodelay(true);
        let connector = TlsConnector::from(self.config());
        let tls = timeout(
            CONNECT_TIMEOUT,
            connector.connect(ServerName::IpAddress(pod_ip.into()), tcp),
        )
        .await
        .map_err(|_| PushFailure::NotListening(format!("TLS handshake with {addr} timed out")))?
        .map_err(|e| PushFailure::NotListening(format!("TLS handshake with {addr}: {e}")))?;
        let (sender, conn) = http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| PushFailure::Interrupted(error_chain(&e)))?;
        // The connection is driven by its own task; dropping the session ends it.
        let driver = tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Session {
            sender,
            driver,
            addr,
            timeout: self.timeout,
        })
    }
}

/// One connection to one pod's init container.
#[derive(Debug)]
pub struct Session {
    sender: SendRequest<Full<Bytes>>,
    driver: JoinHandle<()>,
    addr: SocketAddr,
    timeout: Duration,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

impl Session {
    /// `GET /v1/identity`: the pod's projected service-account token. Any answer but a 200 with
    /// a token is `Refused` (an older approle-init answers 404).
    pub async fn identity(&mut self) -> Result<IdentityToken, PushFailure> {
        let (status, bytes) = self
            .exchange(Method::GET, IDENTITY_PATH, Bytes::new())
            .await?;
        if status != 200 {
            return Err(refusal(status, &bytes));
        }
        // The error text of serde never quotes a string value: it cannot carry the token.
        serde_json::from_slice::<IdentityResponse>(&bytes)
            .map(|r| r.token)
            .map_err(|e| PushFailure::Refused {
                status,
                message: format!("unreadable identity answer: {e}"),
            })
    }

    /// `POST /v1/secret-id` with `req`, on this connection.
    pub async fn push(&mut self, req: &PushRequest) -> Result<PushResponse, PushFailure> {
        // Serializing four strings cannot fail.
        let body = serde_json::to_vec(req).expect("a push request always serializes");
        let (status, bytes) = self
            .exchange(Method::POST, SECRET_ID_PATH, Bytes::from(body))
            .await?;
        if status == 200 {
            serde_json::from_slice::<PushResponse>(&bytes).map_err(|e| PushFailure::Refused {
                status,
                message: format!("unreadable 200 answer: {e}"),
            })
        } else {
            Err(refusal(status, &bytes))
        }
    }

    async fn exchange(
        &mut self,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> Result<(u16, Bytes), PushFailure> {
        let mut builder = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, self.addr.to_string());
        if !body.is_empty() {
            builder = builder.header(header::CONTENT_TYPE, "application/json");
        }
        let req = builder
            .body(Full::new(body))
            .map_err(|e| PushFailure::Interrupted(format!("building the request: {e}")))?;
        let sender = &mut self.sender;
        let exchange = async move {
            sender
                .ready()
                .await
                .map_err(|e| PushFailure::Interrupted(error_chain(&e)))?;
            let resp = sender
                .send_request(req)
                .await
                .map_err(|e| PushFailure::Interrupted(error_chain(&e)))?;
            let status = resp.status().as_u16();
            let bytes = Limited::new(resp.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|e| PushFailure::Interrupted(format!("reading the answer: {e}")))?
                .to_bytes();
            Ok((status, bytes))
        };
        timeout(self.timeout, exchange).await.map_err(|_| {
            PushFailure::Interrupted(format!(
                "no answer from {} within {}",
                self.addr,
                humantime::format_duration(self.timeout)
            ))
        })?
    }
}

fn refusal(status: u16, bytes: &[u8]) -> PushFailure {
    let message = serde_json::from_slice::<PushError>(bytes)
        .map(|b| b.error)
        .unwrap_or_else(|_| format!("{} bytes of non-JSON body", bytes.len()));
    PushFailure::Refused { status, message }
}

fn build(cert_pem: &str, key_pem: &str) -> Result<Arc<rustls::ClientConfig>, String> {
    tls::push_client_config(cert_pem, key_pem)
        .map(Arc::new)
        .map_err(|e| format!("push client: {e}"))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

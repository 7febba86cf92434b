//! A stand-in for whatever might listen on a pod's IP and push port instead of its init container.
//!
//! ```text
//!   controller ──mTLS──▶ Impostor (the init container's TLS settings: injector-CA client certs)
//!        GET /v1/identity  ─▶ Answer::{Garbage, NotFound, Token(t)}
//!        POST /v1/secret-id ─▶ 500, or no answer at all with `hold_pushes`
//!        every request is recorded as "METHOD path"
//! ```
//!
//! It trusts the injector CA like the real receiver, so it sees the controller's requests; whether
//! it gets anything depends on the token it can show. With the pod's own token it stands for a
//! compromised pod, and with `hold_pushes` it keeps a push in flight for as long as a test needs.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use approle_shared::push::{IDENTITY_PATH, SECRET_ID_PATH};
use approle_shared::tls;
use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

/// What the impostor answers on `GET /v1/identity`.
#[derive(Debug, Clone)]
pub enum Answer {
    /// A 200 that is not JSON.
    Garbage,
    /// 404, like an approle-init older than the identity check.
    NotFound,
    /// 200 with this token.
    Token(String),
}

/// A running impostor; stops when dropped.
#[derive(Debug)]
pub struct Impostor {
    seen: Arc<Mutex<Vec<String>>>,
    task: JoinHandle<()>,
}

impl Drop for Impostor {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Impostor {
    /// Listens on `addr` (a pod's IP and push port). With `hold_pushes`, a push is never
    /// answered; otherwise it gets a 500.
    pub async fn start(
        addr: SocketAddr,
        injector_ca_pem: &str,
        answer: Answer,
        hold_pushes: bool,
    ) -> anyhow::Result<Self> {
        let config = tls::receiver_server_config(injector_ca_pem)?;
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind(addr).await?;
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let record = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, record, answer) = (acceptor.clone(), record.clone(), answer.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let path = req.uri().path().to_owned();
                        lock(&record).push(format!("{} {path}", req.method()));
                        let (status, body) = match (path.as_str(), &answer) {
                            (IDENTITY_PATH, Answer::Garbage) => (200, "<html>hi</html>".to_owned()),
                            (IDENTITY_PATH, Answer::NotFound) => {
                                (404, json!({"error": "no such path"}).to_string())
                            }
                            (IDENTITY_PATH, Answer::Token(t)) => {
                                (200, json!({"token": t}).to_string())
                            }
                            _ => (500, json!({"error": "impostor"}).to_string()),
                        };
                        let hold = hold_pushes && path == SECRET_ID_PATH;
                        async move {
                            if hold {
                                std::future::pending::<()>().await;
                            }
                            hyper::Response::builder()
                                .status(status)
                                .header("content-type", "application/json")
                                .body(Full::new(Bytes::from(body)))
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Ok(Self { seen, task })
    }

    /// Every request so far, as `METHOD path`.
    pub fn requests(&self) -> Vec<String> {
        lock(&self.seen).clone()
    }
}

fn lock(m: &Mutex<Vec<String>>) -> std::sync::MutexGuard<'_, Vec<String>> {
    // Single pushes of strings: a poisoned lock still holds a consistent list.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

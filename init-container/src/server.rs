//! The push receiver: a mutual-TLS accept loop serving the identity check and one push.
//!
//! ```text
//!   TcpListener ─accept─▶ TLS handshake (client cert from the injector CA, ≤ HANDSHAKE_TIMEOUT)
//!                           │ refused → logged, connection dropped, loop goes on
//!                           ▼
//!                  hyper http1 (headers ≤ HEADER_READ_TIMEOUT, also while idle)
//!                           ▼
//!   GET /v1/identity ─▶ 200 {"token": <projected SA token, read now>}; the connection stays open
//!   POST /v1/secret-id ─▶ phase (409 delivered / 503 finishing) ─▶ body (413, 408) ─▶ JSON (400)
//!         ─▶ validate (400 / 403) ─▶ phase Waiting→InFlight (503 busy) ─▶ deliver (spawned task)
//!   anything else ─▶ 404 / 405            (every answer but a shown identity closes the connection)
//!                           │
//!   delivery outcome ──▶ per-connection channel ──▶ after the response is flushed ──▶ Server::run
//! ```
//!
//! The controller asks for the identity and pushes on the same connection, so the pod it
//! verified with TokenReview is the pod it pushes to. Only clients that passed the mutual-TLS
//! handshake reach either route; the identity token is never logged.
//!
//! Every bad request is answered and the server goes on waiting. Only a delivery ends the loop —
//! successfully or with a security, login or write failure — and only once its response has
//! reached the client (or [`FLUSH_TIMEOUT`] passed). The delivery runs in its own task so that a
//! client hanging up cannot cancel it half-way, after the single-use wrapping token is spent.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use approle_shared::exit::ExitCode;
use approle_shared::push::{
    IDENTITY_PATH, IdentityResponse, MAX_BODY_BYTES, PushRequest, PushResponse, Refusal,
    SECRET_ID_PATH,
};
use approle_shared::secret::IdentityToken;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::timeout;
use tokio_rustls::TlsAcceptor;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::deliver::Deliverer;

/// A client gets this long for the TLS handshake: an honest controller needs milliseconds, and a
/// peer that connects and stalls must not hold a connection slot.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Request line and headers must arrive within this (hyper's `header_read_timeout`), against
/// slowloris-style clients that trickle headers. The clock also runs while a kept-alive
/// connection is idle, so the controller has this long between the identity answer and its push.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Once a delivery has ended the process, its response gets this long to reach the client before
/// we exit anyway: a client that stops reading must not keep a finished init container alive.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);
/// After refusing a request early (too large, wrong path), we read and discard up to
/// [`DRAIN_MAX_BYTES`] of its body for at most this long before closing. Closing a socket with
/// unread data makes the kernel send a reset, and the client would see "connection reset" instead
/// of our answer.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
/// How much of a refused body we are willing to read and discard.
pub const DRAIN_MAX_BYTES: usize = 4 * MAX_BODY_BYTES;
/// At most this many connections are served at once; more wait in the listen backlog. A push is
/// one connection; the margin is for probes and refused clients.
pub const MAX_CONNECTIONS: usize = 32;
/// Pause after a failed `accept` (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// How the receiver ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finish {
    /// The process exit code.
    pub exit: ExitCode,
    /// Accessor of the delivered token, on success.
    pub accessor: Option<String>,
}

/// Where the receiver stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// No delivery yet: a valid push is welcome.
    Waiting,
    /// A delivery is talking to Vault.
    InFlight,
    /// A delivery ended the process with this code.
    Finished(ExitCode),
}

impl Phase {
    /// Refusal for a push arriving in this phase, if any. `InFlight` is decided later, by
    /// [`Phase::begin`], so that a malformed push gets its own answer.
    fn refuse_early(self) -> Result<(), Refusal> {
        match self {
            Phase::Finished(ExitCode::Delivered) => Err(Refusal::AlreadyDelivered(
                "a token was already delivered to this pod".into(),
            )),
            Phase::Finished(_) => Err(Refusal::Busy(
                "this init container is exiting after a failed delivery".into(),
            )),
            Phase::Waiting | Phase::InFlight => Ok(()),
        }
    }

    /// The phase after a valid push starts a delivery, or why it cannot.
    fn begin(self) -> Result<Phase, Refusal> {
        self.refuse_early()?;
        match self {
            Phase::Waiting => Ok(Phase::InFlight),
            _ => Err(Refusal::Busy("another push is being delivered".into())),
        }
    }
}

struct State {
    /// A watch channel rather than a mutex so that `main` can see whether a delivery is in
    /// flight when the overall timeout strikes (see [`Server::phase`]).
    phase: watch::Sender<Phase>,
    deliverer: Deliverer,
    body_read_timeout: Duration,
    identity_token_file: Option<PathBuf>,
}

impl State {
    fn phase(&self) -> Phase {
        *self.phase.borrow()
    }

    fn begin(&self) -> Result<(), Refusal> {
        let mut outcome = Ok(());
        self.phase.send_if_modified(|phase| match phase.begin() {
            Ok(next) => {
                *phase = next;
                true
            }
            Err(refusal) => {
                outcome = Err(refusal);
                false
            }
        });
        outcome
    }

    fn set(&self, next: Phase) {
        self.phase.send_replace(next);
    }
}

/// The bound receiver.
pub struct Server {
    listener: TcpListener,
    acceptor: TlsAcceptor,
    state: Arc<State>,
    local_addr: SocketAddr,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Binds `listen` and logs `listening on <addr>` with the real bound address.
    pub async fn bind(
        listen: SocketAddr,
        tls: Arc<rustls::ServerConfig>,
        deliverer: Deliverer,
        body_read_timeout: Duration,
        identity_token_file: Option<PathBuf>,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(listen).await?;
        let local_addr = listener.local_addr()?;
        info!(addr = %local_addr, "listening on {local_addr}");
        Ok(Self {
            listener,
            acceptor: TlsAcceptor::from(tls),
            state: Arc::new(State {
                phase: watch::channel(Phase::Waiting).0,
                deliverer,
                body_read_timeout,
                identity_token_file,
            }),
            local_addr,
        })
    }

    /// Follows the phase: `main` uses it to let a delivery that is already talking to Vault
    /// finish when the overall timeout strikes, instead of abandoning a spent wrapping token.
    pub fn phase(&self) -> watch::Receiver<Phase> {
        self.state.phase.subscribe()
    }

    /// Serves until a delivery ends the process.
    pub async fn run(self) -> Finish {
        let (finish_tx, mut finish_rx) = mpsc::channel::<Finish>(1);
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        loop {
            let permit = tokio::select! {
                biased;
                Some(finish) = finish_rx.recv() => return self.finished(finish),
                permit = slots.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            };
            tokio::select! {
                biased;
                Some(finish) = finish_rx.recv() => return self.finished(finish),
                accepted = self.listener.accept() => match accepted {
                    Ok((tcp, peer)) => {
                        // Answers go out at once, not after the peer's delayed ACK (Nagle).
                        let _ = tcp.set_nodelay(true);
                        let (acceptor, state, finish_tx) =
                            (self.acceptor.clone(), self.state.clone(), finish_tx.clone());
                        tokio::spawn(
                            async move {
                                serve_connection(tcp, acceptor, state, finish_tx).await;
                                drop(permit);
                            }
                            .instrument(info_span!("connection", %peer)),
                        );
                    }
                    Err(error) => {
                        warn!(%error, "accept failed");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                    }
                },
            }
        }
    }

    fn finished(&self, finish: Finish) -> Finish {
        let d = &self.state.deliverer;
        if let Some(accessor) = &finish.accessor {
            info!(
                %accessor, role = %d.role, pod_uid = %d.pod_uid,
                "delivered token accessor={accessor} role={} pod_uid={}", d.role, d.pod_uid
            );
        }
        finish
    }
}

/// One connection: handshake, one request, then hand a delivery's outcome to [`Server::run`]
/// once the response is out.
async fn serve_connection(
    tcp: tokio::net::TcpStream,
    acceptor: TlsAcceptor,
    state: Arc<State>,
    finish_tx: mpsc::Sender<Finish>,
) {
    let tls = match timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(error)) => {
            info!(%error, "TLS handshake refused (a client needs a certificate from the injector CA)");
            return;
        }
        Err(_) => {
            info!(timeout = ?HANDSHAKE_TIMEOUT, "TLS handshake timed out");
            return;
        }
    };
    // Delivery tasks report through this channel; it closes when the service and every delivery
    // task started on this connection are gone.
    let (outcome_tx, mut outcome_rx) = mpsc::unbounded_channel::<Finish>();
    let service = service_fn(move |req| handle(state.clone(), outcome_tx.clone(), req));
    let mut conn = Box::pin(
        http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            // For the push that follows a shown identity; every other answer closes (see `handle`).
            .keep_alive(true)
            .serve_connection(TokioIo::new(tls), service),
    );
    let mut finish = None;
    let result = tokio::select! {
        result = &mut conn => Some(result),
        Some(f) = outcome_rx.recv() => {
            finish = Some(f);
            timeout(FLUSH_TIMEOUT, &mut conn).await.ok()
        }
    };
    match result {
        Some(Ok(())) => {}
        Some(Err(error)) => debug!(%error, "connection ended with an error"),
        None => warn!("the client did not take the response in time; going on without it"),
    }
    drop(conn);
    if finish.is_none() {
        // A delivery may still be running if the client hung up; it finishes on its own.
        finish = outcome_rx.recv().await;
    }
    if let Some(finish) = finish {
        // The receiver is only gone if the process is already ending.
        let _ = finish_tx.send(finish).await;
    }
}

#[tracing::instrument(skip_all, fields(method = %req.method(), path = %req.uri().path()))]
async fn handle(
    state: Arc<State>,
    outcome_tx: mpsc::UnboundedSender<Finish>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.uri().path() == IDENTITY_PATH {
        match identity(&state, req).await {
            // The push follows on this connection: keep it open.
            Ok(shown) => return Ok(shown),
            Err(refusal) => return Ok(refused(&refusal, "identity refused")),
        }
    }
    Ok(match route(state, outcome_tx, req).await {
        Ok(delivered) => close(json(StatusCode::OK, &delivered)),
        Err(refusal) => refused(&refusal, "push refused"),
    })
}

/// The refusal as a JSON answer that closes the connection.
fn refused(refusal: &Refusal, what: &'static str) -> Response<Full<Bytes>> {
    info!(status = refusal.status(), reason = %refusal, "{what}");
    let status =
        StatusCode::from_u16(refusal.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    close(json(status, &refusal.body()))
}

/// One push per connection, as before keep-alive existed for the identity check.
fn close(mut resp: Response<Full<Bytes>>) -> Response<Full<Bytes>> {
    resp.headers_mut().insert(
        header::CONNECTION,
        header::HeaderValue::from_static("close"),
    );
    resp
}

/// `GET /v1/identity`: the projected service-account token, read from its file now (the kubelet
/// rotates it). Served in every phase, so that a controller that lost track of a delivery still
/// verifies this pod and then learns from the push's 409 that it is done.
async fn identity(state: &State, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Refusal> {
    let (parts, mut body) = req.into_parts();
    drain(&mut body).await;
    if parts.method != Method::GET {
        return Err(Refusal::MethodNotAllowed(format!(
            "{IDENTITY_PATH} accepts only GET"
        )));
    }
    let Some(path) = &state.identity_token_file else {
        return Err(Refusal::NotFound(format!(
            "{IDENTITY_PATH}: this init container has no identity token (--identity-token-file is not set)"
        )));
    };
    let token = read_identity(path)?;
    debug!("identity token shown");
    let mut resp = json(StatusCode::OK, &IdentityResponse { token });
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    Ok(resp)
}

/// Reads the token file. Errors name the path and the I/O error, never the content.
///
/// Read in place: a small file on a projected volume, where `tokio::fs` would start a blocking
/// thread for one read.
fn read_identity(path: &Path) -> Result<IdentityToken, Refusal> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Refusal::Internal(format!(
            "reading the identity token file {}: {e}",
            path.display()
        ))
    })?;
    let token = IdentityToken::new(text.trim());
    if token.is_empty() {
        return Err(Refusal::Internal(format!(
            "the identity token file {} is empty",
            path.display()
        )));
    }
    Ok(token)
}

async fn route(
    state: Arc<State>,
    outcome_tx: mpsc::UnboundedSender<Finish>,
    req: Request<Incoming>,
) -> Result<PushResponse, Refusal> {
    let (parts, mut body) = req.into_parts();
    let refused = match (parts.uri.path(), &parts.method) {
        (SECRET_ID_PATH, &Method::POST) => state.phase().refuse_early().err(),
        (SECRET_ID_PATH, _) => Some(Refusal::MethodNotAllowed(format!(
            "{SECRET_ID_PATH} accepts only POST"
        ))),
        (path, _) => Some(Refusal::NotFound(format!("no such path {path:?}"))),
    };
    let declared_too_large = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|len| len > MAX_BODY_BYTES as u64);
    let refused = refused.or_else(|| declared_too_large.then(too_large));
    if let Some(refusal) = refused {
        drain(&mut body).await;
        return Err(refusal);
    }

    let bytes = read_body(&mut body, state.body_read_timeout).await?;
    let push: PushRequest = serde_json::from_slice(&bytes).map_err(|e| {
        Refusal::BadRequest(match e.classify() {
            // Data errors name a field ("unknown field `x`", "missing field `role`"); every field
            // is a string, so no value of one can appear in the text.
            serde_json::error::Category::Data => format!("invalid push: {e}"),
            _ => format!(
                "body is not valid JSON (line {}, column {})",
                e.line(),
                e.column()
            ),
        })
    })?;
    let d = &state.deliverer;
    push.validate(&d.pod_uid, d.role.as_str())?;
    state.begin()?;
    info!("valid push received; delivering");

    // Its own task: a client that hangs up must not cancel a delivery after the token is spent.
    let task_state = state.clone();
    let delivery = tokio::spawn(
        async move {
            let result = task_state.deliverer.deliver(&push).await;
            let (next, finish) = match &result {
                Ok(delivered) => (
                    Phase::Finished(ExitCode::Delivered),
                    Some(Finish {
                        exit: ExitCode::Delivered,
                        accessor: Some(delivered.token_accessor.clone()),
                    }),
                ),
                Err(error) => match error.exit_code() {
                    Some(exit) => {
                        warn!(%error, exit = exit.code(), "delivery failed; exiting after the answer");
                        (Phase::Finished(exit), Some(Finish { exit, accessor: None }))
                    }
                    None => {
                        warn!(%error, "delivery failed; waiting for another push");
                        (Phase::Waiting, None)
                    }
                },
            };
            task_state.set(next);
            if let Some(finish) = finish {
                // The connection task holds the receiver until every delivery task is done.
                let _ = outcome_tx.send(finish);
            }
            result.map_err(|e| e.refusal())
        }
        .in_current_span(),
    );
    delivery
        .await
        .unwrap_or_else(|e| Err(Refusal::Internal(format!("delivery task failed: {e}"))))
}

fn too_large() -> Refusal {
    Refusal::TooLarge(format!("the body exceeds {MAX_BODY_BYTES} bytes"))
}

/// Reads the whole body: at most [`MAX_BODY_BYTES`] (413 beyond), within `within` (408 after).
async fn read_body(body: &mut Incoming, within: Duration) -> Result<Bytes, Refusal> {
    match timeout(within, Limited::new(&mut *body, MAX_BODY_BYTES).collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
            drain(body).await;
            Err(too_large())
        }
        Ok(Err(e)) => Err(Refusal::BadRequest(format!("reading the body: {e}"))),
        Err(_) => Err(Refusal::RequestTimeout(format!(
            "the body did not arrive within {}",
            humantime::format_duration(within)
        ))),
    }
}

/// Reads and discards what is left of a refused body, within [`DRAIN_TIMEOUT`] and
/// [`DRAIN_MAX_BYTES`], so that closing the connection does not reset it under the answer.
async fn drain(body: &mut Incoming) {
    let discard = async {
        let mut seen = 0usize;
        while let Some(Ok(frame)) = body.frame().await {
            seen += frame.data_ref().map_or(0, Bytes::len);
            if seen > DRAIN_MAX_BYTES {
                break;
            }
        }
    };
    let _ = timeout(DRAIN_TIMEOUT, discard).await;
}

fn json(status: StatusCode, body: &impl serde::Serialize) -> Response<Full<Bytes>> {
    let bytes = serde_json::to_vec(body).expect("push protocol types always serialize");
    let mut resp = Response::new(Full::new(Bytes::from(bytes)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_push_starts_a_delivery_only_while_waiting() {
        let cases = [
            (Phase::Waiting, Ok(Phase::InFlight)),
            (Phase::InFlight, Err(503)),
            (Phase::Finished(ExitCode::Delivered), Err(409)),
            (Phase::Finished(ExitCode::Security), Err(503)),
        ];
        for (phase, expected) in cases {
            assert_eq!(phase.begin().map_err(|r| r.status()), expected, "{phase:?}");
        }
    }

    #[test]
    fn after_a_delivery_every_push_is_refused_before_its_body_is_read() {
        assert_eq!(
            Phase::Finished(ExitCode::Delivered)
                .refuse_early()
                .map_err(|r| r.status()),
            Err(409)
        );
        assert_eq!(Phase::InFlight.refuse_early(), Ok(()));
        assert_eq!(Phase::Waiting.refuse_early(), Ok(()));
    }

    #[test]
    fn refusals_are_json_with_their_status() {
        let resp = json(
            StatusCode::FORBIDDEN,
            &Refusal::Forbidden("no".into()).body(),
        );
        assert_eq!(resp.status(), StatusCode::FORBIDDEN);
        assert_eq!(
            resp.headers()
                .get(header::CONTENT_TYPE)
                .map(|v| v.as_bytes()),
            Some(&b"application/json"[..])
        );
    }
}

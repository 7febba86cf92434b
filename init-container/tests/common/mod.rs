//! Test fixtures: the real `approle-init` binary as a child process, a fake Vault (axum on
//! loopback, plain HTTP) that records calls, and mutual-TLS push clients.
//!
//! Everything listens on 127.0.0.0/8 only. Waiting is done on conditions (a log line, a recorded
//! Vault call, the process exit) with deadlines, never with sleeps.

#![allow(dead_code)] // each test binary uses a different part of this module

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use approle_shared::tls::{Ca, IssuedCert, Usage};
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::sync::{Semaphore, watch};

/// How long any single wait in a test may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// Installs the one crypto provider; every test calls it first.
pub fn init_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A string no other test run produces, for secrets and names.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .subsec_nanos();
    format!(
        "{prefix}-{}-{}-{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

// ───────────────────────────── the approle-init process ─────────────────────────────

/// A running `approle-init` with its output captured.
pub struct Init {
    child: tokio::process::Child,
    output: watch::Receiver<String>,
    /// The address from the `listening on` line, once seen.
    pub addr: Option<SocketAddr>,
}

impl Init {
    /// Starts the binary with `args` and `env` (nothing inherited from APPROLE_INIT_* of the
    /// test environment).
    pub fn spawn(args: &[String], env: &[(&str, String)]) -> Init {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_approle-init"));
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (key, _) in std::env::vars() {
            if key.starts_with("APPROLE_INIT_") || key.starts_with("VAULT_") {
                cmd.env_remove(key);
            }
        }
        for (key, value) in env {
            cmd.env(key, value);
        }
        let mut child = cmd.spawn().expect("spawn approle-init");
        let (tx, rx) = watch::channel(String::new());
        let tx = Arc::new(tx);
        collect(child.stdout.take().expect("stdout piped"), tx.clone());
        collect(child.stderr.take().expect("stderr piped"), tx);
        Init {
            child,
            output: rx,
            addr: None,
        }
    }

    /// Waits for the `listening on <addr>` line (plain or JSON) and returns the address.
    pub async fn listening(&mut self) -> SocketAddr {
        let line = self
            .wait_for_output(|out| out.lines().any(|l| l.contains("listening on ")))
            .await;
        let addr = line
            .lines()
            .find_map(|l| l.split("listening on ").nth(1))
            // Plain lines go on with whitespace, JSON lines with the closing quote.
            .and_then(|rest| rest.split(|c: char| c.is_whitespace() || c == '"').next())
            .expect("address after 'listening on'")
            .parse()
            .expect("a socket address");
        self.addr = Some(addr);
        addr
    }

    /// Waits until the captured output satisfies `pred`; returns the output.
    pub async fn wait_for_output(&mut self, pred: impl Fn(&str) -> bool) -> String {
        let mut rx = self.output.clone();
        match tokio::time::timeout(DEADLINE, rx.wait_for(|s| pred(s))).await {
            Ok(Ok(out)) => out.clone(),
            _ => panic!(
                "expected output did not appear; output so far:\n{}",
                self.output()
            ),
        }
    }

    /// Everything printed so far (stdout and stderr interleaved by line).
    pub fn output(&self) -> String {
        self.output.borrow().clone()
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// Waits for the exit and returns the code and the complete output.
    pub async fn exit(&mut self) -> (i32, String) {
        let status = match tokio::time::timeout(DEADLINE, self.child.wait()).await {
            Ok(status) => status.expect("wait"),
            Err(_) => panic!("approle-init did not exit; output:\n{}", self.output()),
        };
        // The pipes close at exit; wait until both readers saw EOF so no line is missing.
        let mut rx = self.output.clone();
        let _ = tokio::time::timeout(DEADLINE, async { while rx.changed().await.is_ok() {} }).await;
        let code = status.code().expect("exited, not killed by a signal");
        (code, self.output())
    }

    /// Sends SIGTERM with `kill -TERM <pid>`.
    pub fn sigterm(&self) {
        let pid = self.child.id().expect("still running");
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM {pid}");
    }
}

fn collect(stream: impl AsyncRead + Unpin + Send + 'static, tx: Arc<watch::Sender<String>>) {
    tokio::spawn(async move {
        let mut lines = BufReader::new(stream).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            tx.send_modify(|out| {
                out.push_str(&line);
                out.push('\n');
            });
        }
        // Dropping the last sender lets `Init::exit` see that both streams are done.
    });
}

/// Asserts that none of `secrets` appears in `output`.
pub fn assert_no_secrets(output: &str, secrets: &[String]) {
    assert!(!secrets.is_empty(), "the test should check some secrets");
    for secret in secrets {
        assert!(
            !output.contains(secret.as_str()),
            "secret {secret:?} leaked into the output:\n{output}"
        );
    }
}

// ───────────────────────────── TLS material and clients ─────────────────────────────

/// The injector CA and a controller client certificate it issued.
pub struct Pki {
    /// The CA.
    pub ca: Ca,
    /// The controller's client certificate.
    pub client: IssuedCert,
}

impl Pki {
    /// Generates a fresh CA and client certificate.
    pub fn new(name: &str) -> Pki {
        let ca = Ca::generate(name, Duration::from_secs(3600)).expect("CA");
        let client = ca
            .issue("controller", &[], Usage::Client, Duration::from_secs(3600))
            .expect("client cert");
        Pki { ca, client }
    }

    /// A reqwest client presenting this client certificate, as the controller does.
    pub fn push_client(&self) -> reqwest::Client {
        let tls =
            approle_shared::tls::push_client_config(&self.client.cert_pem, &self.client.key_pem)
                .expect("client TLS config");
        reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .timeout(DEADLINE)
            .build()
            .expect("reqwest client")
    }

    /// A tokio-rustls connector with the same identity, for hand-written requests.
    pub fn raw_connector(&self) -> tokio_rustls::TlsConnector {
        let tls =
            approle_shared::tls::push_client_config(&self.client.cert_pem, &self.client.key_pem)
                .expect("client TLS config");
        tokio_rustls::TlsConnector::from(Arc::new(tls))
    }
}

/// A client that presents no certificate at all (and accepts any server certificate).
pub fn client_without_certificate() -> reqwest::Client {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)))
        .with_no_client_auth();
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(DEADLINE)
        .build()
        .expect("reqwest client")
}

#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Sends `request` (raw HTTP/1.1 bytes) over mutual TLS and returns the status code of the answer.
pub async fn raw_request(pki: &Pki, addr: SocketAddr, request: &[u8]) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
    let mut tls = pki
        .raw_connector()
        .connect(name, tcp)
        .await
        .expect("handshake");
    tls.write_all(request).await.expect("write request");
    tls.flush().await.expect("flush");
    let mut answer = Vec::new();
    // The server closes the connection after its answer (no keep-alive); a missing close_notify
    // is fine, the status line is what we need.
    let _ = tokio::time::timeout(DEADLINE, tls.read_to_end(&mut answer))
        .await
        .expect("answer within the deadline");
    let text = String::from_utf8_lossy(&answer);
    text.strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {text:?}"))
}

// ───────────────────────────── the fake Vault ─────────────────────────────

/// One Vault call as the fake saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// Path below `/v1/`.
    pub path: String,
    /// The client's IP address.
    pub peer: IpAddr,
}

#[derive(Debug)]
struct Wrapped {
    creation_path: String,
    secret_id: String,
    used: bool,
}

#[derive(Debug, Default)]
struct VaultState {
    role_id: String,
    wrapped: HashMap<String, Wrapped>,
    /// secret_id → used
    secret_ids: HashMap<String, bool>,
    /// Issued client tokens with their accessors.
    tokens: Vec<(String, String)>,
    /// Answer this many lookups with 500 first.
    failing_lookups: u32,
    /// Refuse every login.
    refuse_logins: bool,
    /// Use up each wrapping token right after its lookup, as an interceptor racing us would.
    steal_after_lookup: bool,
    calls: Vec<Call>,
}

/// A small Vault stand-in for the three calls the init container makes.
#[derive(Clone)]
pub struct FakeVault {
    state: Arc<Mutex<VaultState>>,
    /// When set, each lookup waits for a permit (to hold a delivery in flight).
    lookup_gate: Arc<Mutex<Option<Arc<Semaphore>>>>,
    calls_changed: Arc<watch::Sender<usize>>,
    /// `http://127.0.0.1:<port>`.
    pub addr: String,
}

impl FakeVault {
    /// Starts the fake on 127.0.0.1 with the given role_id.
    pub async fn start(role_id: &str) -> FakeVault {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake Vault");
        let addr = format!("http://{}", listener.local_addr().expect("addr"));
        let (calls_changed, _) = watch::channel(0);
        let vault = FakeVault {
            state: Arc::new(Mutex::new(VaultState {
                role_id: role_id.to_owned(),
                ..VaultState::default()
            })),
            lookup_gate: Arc::new(Mutex::new(None)),
            calls_changed: Arc::new(calls_changed),
            addr,
        };
        let app = Router::new()
            .route("/v1/sys/wrapping/lookup", post(lookup))
            .route("/v1/sys/wrapping/unwrap", post(unwrap))
            .route("/v1/auth/approle/login", post(login))
            .with_state(vault.clone());
        tokio::spawn(async move {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await
            .expect("fake Vault serves");
        });
        vault
    }

    /// Mints a secret_id and a wrapping token whose `creation_path` is `creation_path`; returns
    /// the wrapping token.
    pub fn wrap_secret_id(&self, creation_path: &str) -> String {
        let token = unique("hvs.wrapping");
        let secret_id = unique("secret-id");
        let mut s = self.state.lock().expect("lock");
        s.secret_ids.insert(secret_id.clone(), false);
        s.wrapped.insert(
            token.clone(),
            Wrapped {
                creation_path: creation_path.to_owned(),
                secret_id,
                used: false,
            },
        );
        token
    }

    /// Marks a wrapping token as used, as if someone unwrapped it first.
    pub fn use_up(&self, token: &str) {
        self.state
            .lock()
            .expect("lock")
            .wrapped
            .get_mut(token)
            .expect("known token")
            .used = true;
    }

    /// Makes the next `n` lookups fail with 500.
    pub fn fail_lookups(&self, n: u32) {
        self.state.lock().expect("lock").failing_lookups = n;
    }

    /// Makes every wrapping token used up right after a successful lookup.
    pub fn steal_after_lookup(&self) {
        self.state.lock().expect("lock").steal_after_lookup = true;
    }

    /// Makes every login fail with 400 `invalid role or secret ID`.
    pub fn refuse_logins(&self) {
        self.state.lock().expect("lock").refuse_logins = true;
    }

    /// Holds every lookup until [`FakeVault::release_lookups`].
    pub fn hold_lookups(&self) {
        *self.lookup_gate.lock().expect("lock") = Some(Arc::new(Semaphore::new(0)));
    }

    /// Lets held lookups (and all later ones) through.
    pub fn release_lookups(&self) {
        if let Some(gate) = self.lookup_gate.lock().expect("lock").as_ref() {
            gate.add_permits(Semaphore::MAX_PERMITS / 2);
        }
    }

    /// Every call so far.
    pub fn calls(&self) -> Vec<Call> {
        self.state.lock().expect("lock").calls.clone()
    }

    /// The paths called so far, in order.
    pub fn call_paths(&self) -> Vec<String> {
        self.calls().into_iter().map(|c| c.path).collect()
    }

    /// Waits until at least `n` calls were recorded.
    pub async fn wait_for_calls(&self, n: usize) {
        let mut rx = self.calls_changed.subscribe();
        tokio::time::timeout(DEADLINE, rx.wait_for(|&count| count >= n))
            .await
            .expect("Vault calls within the deadline")
            .expect("fake Vault alive");
    }

    /// Every credential this fake handed out: wrapping tokens, secret_ids, client tokens.
    pub fn secrets(&self) -> Vec<String> {
        let s = self.state.lock().expect("lock");
        s.wrapped
            .iter()
            .flat_map(|(token, w)| [token.clone(), w.secret_id.clone()])
            .chain(s.tokens.iter().map(|(token, _)| token.clone()))
            .collect()
    }

    /// The client token issued under `accessor`.
    pub fn token_for(&self, accessor: &str) -> Option<String> {
        let s = self.state.lock().expect("lock");
        s.tokens
            .iter()
            .find(|(_, a)| a == accessor)
            .map(|(t, _)| t.clone())
    }

    fn record(&self, path: &str, peer: SocketAddr) {
        let count = {
            let mut s = self.state.lock().expect("lock");
            s.calls.push(Call {
                path: path.to_owned(),
                peer: peer.ip(),
            });
            s.calls.len()
        };
        self.calls_changed.send_replace(count);
    }
}

fn envelope(data: Value, auth: Value) -> Value {
    json!({
        "request_id": unique("req"), "lease_id": "", "renewable": false, "lease_duration": 0,
        "data": data, "wrap_info": null, "warnings": null, "auth": auth, "mount_type": ""
    })
}

fn vault_error(status: StatusCode, message: &str) -> (StatusCode, Json<Value>) {
    (status, Json(json!({ "errors": [message] })))
}

const INVALID_WRAPPING: &str = "wrapping token is not valid or does not exist";

async fn lookup(
    State(vault): State<FakeVault>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: axum::body::Bytes,
) -> (StatusCode, Json<Value>) {
    vault.record("sys/wrapping/lookup", peer);
    let body: Value = serde_json::from_slice(&body).unwrap_or_default();
    let gate = vault.lookup_gate.lock().expect("lock").clone();
    if let Some(gate) = gate {
        let _permit = gate.acquire().await.expect("gate open");
    }
    let mut s = vault.state.lock().expect("lock");
    if s.failing_lookups > 0 {
        s.failing_lookups -= 1;
        return vault_error(StatusCode::INTERNAL_SERVER_ERROR, "internal error");
    }
    let token = body["token"].as_str().unwrap_or_default();
    let steal = s.steal_after_lookup;
    match s.wrapped.get_mut(token) {
        Some(w) if !w.used => {
            w.used = steal;
            (
                StatusCode::OK,
                Json(envelope(
                    json!({
                        "creation_path": w.creation_path,
                        "creation_time": "2026-03-04T10:11:12.345678901Z",
                        "creation_ttl": 60
                    }),
                    Value::Null,
                )),
            )
        }
        _ => vault_error(StatusCode::BAD_REQUEST, INVALID_WRAPPING),
    }
}

async fn unwrap(
    State(vault): State<FakeVault>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> (StatusCode, Json<Value>) {
    vault.record("sys/wrapping/unwrap", peer);
    let token = headers
        .get("x-vault-token")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let mut s = vault.state.lock().expect("lock");
    match s.wrapped.get_mut(token) {
        Some(w) if !w.used => {
            w.used = true;
            (
                StatusCode::OK,
                Json(envelope(
                    json!({
                        "secret_id": w.secret_id,
                        "secret_id_accessor": unique("sid-accessor"),
                        "secret_id_num_uses": 1,
                        "secret_id_ttl": 120
                    }),
                    Value::Null,
                )),
            )
        }
        _ => vault_error(StatusCode::BAD_REQUEST, INVALID_WRAPPING),
    }
}

async fn login(
    State(vault): State<FakeVault>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: axum::body::Bytes,
) -> (StatusCode, Json<Value>) {
    vault.record("auth/approle/login", peer);
    let body: Value = serde_json::from_slice(&body).unwrap_or_default();
    let mut s = vault.state.lock().expect("lock");
    let role_id = body["role_id"].as_str().unwrap_or_default();
    let secret_id = body["secret_id"].as_str().unwrap_or_default();
    let role_ok = role_id == s.role_id;
    let refuse = s.refuse_logins;
    let unused = s.secret_ids.get_mut(secret_id).filter(|used| !**used);
    match unused {
        Some(used) if role_ok && !refuse => {
            *used = true;
            let token = unique("hvs.client");
            let accessor = unique("accessor");
            s.tokens.push((token.clone(), accessor.clone()));
            (
                StatusCode::OK,
                Json(envelope(
                    Value::Null,
                    json!({
                        "client_token": token, "accessor": accessor,
                        "policies": ["default", "web"], "token_policies": ["default", "web"],
                        "metadata": {"role_name": "web"}, "lease_duration": 3600,
                        "renewable": true, "entity_id": "", "token_type": "service",
                        "orphan": true
                    }),
                )),
            )
        }
        _ => vault_error(StatusCode::BAD_REQUEST, "invalid role or secret ID"),
    }
}

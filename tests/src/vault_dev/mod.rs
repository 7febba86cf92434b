//! vault-dev: an in-memory server that behaves like HashiCorp Vault CE (≥ 1.17) on the wire for the
//! endpoints approle-injector uses (see the project's `vault-api.md`).
//!
//! ```text
//!  client ──HTTP(S)──▶ http::serve ──Req──▶ core::Core::handle_async ──▶ sys / token / approle /
//!                                               │                      kubernetes / kv
//!                                               │   (one Mutex<State>, never held across .await;
//!                                               │    a Kubernetes login's TokenReview runs unlocked)
//!                                               └──▶ audit (memory + optional JSON-lines file)
//! ```
//!
//! In-process use (what the tests and the sandbox do):
//!
//! ```no_run
//! # async fn demo() -> Result<(), approle_testkit::vault_dev::Error> {
//! use approle_testkit::vault_dev::{Config, VaultDev};
//! let running = VaultDev::start(Config::new("root")).await?;
//! println!("{}", running.url); // http://127.0.0.1:<port>
//! running.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! Implemented: sys/health, seal-status, seal/unseal, auth and secret mounts, ACL policies with
//! enforcement, AppRole (roles, role-id, secret-id generate/lookup/destroy/list, login with CIDR
//! checks and use counts), Kubernetes auth (config, roles, login validated by a real TokenReview
//! against the configured `kubernetes_host`, e.g. kube-dev), response wrapping of any response (lookup/unwrap/rewrap/wrap), the
//! token store (create/lookup/renew/revoke by token, self and accessor) and KV v1/v2.
//!
//! Known deviations from real Vault (deliberate or not yet needed):
//! * no auth methods besides AppRole, Kubernetes and tokens; no namespaces
//!   (`X-Vault-Namespace` is echoed and ignored, as CE does), no cubbyhole/identity endpoints;
//! * expired secret IDs are refused at expiry (real Vault refuses them once tidied, ~60 s later,
//!   with the same `400 invalid role or secret ID`);
//! * tokens are random `hvs.`/`hvb.` strings, not server-side-consistent protobuf blobs; batch
//!   tokens are stored server side;
//! * timestamps are UTC (`Z`); bad-JSON error texts approximate Go's decoder messages;
//! * `token_period`, `explicit_max_ttl`, CIDR checks, use counts and the 5-failure AppRole lockout
//!   are modelled; leases, tidy, per-field role endpoints, token roles and `sys/leases` are not;
//! * Kubernetes auth: every rejection after the role lookup (bad or garbage JWT, issuer, audience,
//!   service account name/namespace not bound, TokenReview refusal, CIDR) is `403 permission
//!   denied` as vault-api.md §8 states (the current plugin words some of them differently, e.g.
//!   `service account name not authorized`); `pem_keys` are stored but signatures are only checked
//!   by the TokenReview; no namespace selectors, alias metadata from annotations or local
//!   in-pod CA/JWT defaults (vault-dev never runs in a pod).

mod approle;
mod audit;
mod core;
mod http;
mod kubernetes;
mod kv;
mod policy;
mod state;
mod sys;
mod tls;
mod token;
mod util;
mod wire;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use base64::Engine;
use jiff::Timestamp;
use tokio::task::JoinHandle;

pub use audit::AuditEntry;

use self::core::Core;
use self::state::State;

/// How often expired tokens and secret IDs are swept from memory.
const SWEEP_EVERY: Duration = Duration::from_secs(5);
/// How long in-flight requests get to finish at shutdown.
const DRAIN: Duration = Duration::from_secs(2);

/// TLS choice.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Tls {
    /// Plain HTTP.
    #[default]
    Off,
    /// HTTPS; the CA PEM goes to a temporary directory removed at shutdown.
    TempDir,
    /// HTTPS; the CA PEM (`ca.pem`) and server cert (`server.pem`) go to this directory.
    Dir(PathBuf),
}

/// Server configuration.
#[derive(Clone)]
pub struct Config {
    /// Address to listen on (`127.0.0.1:0` picks a free port).
    pub listen: SocketAddr,
    /// The root token clients use for setup.
    pub root_token: String,
    /// TLS mode.
    pub tls: Tls,
    /// Append the audit log as JSON lines to this file.
    pub audit_log: Option<PathBuf>,
    /// Failed AppRole logins per role_id within 15 minutes before the role_id is locked out
    /// (`403 permission denied`), as Vault's user lockout does. Default 5; 0 disables.
    pub lockout_threshold: u32,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("root_token", &"<redacted>")
            .field("tls", &self.tls)
            .field("audit_log", &self.audit_log)
            .field("lockout_threshold", &self.lockout_threshold)
            .finish()
    }
}

impl Config {
    /// Plain HTTP on `127.0.0.1:0` with the given root token.
    pub fn new(root_token: impl Into<String>) -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            root_token: root_token.into(),
            tls: Tls::Off,
            audit_log: None,
            lockout_threshold: 5,
        }
    }
}

/// Errors starting the server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The listen address could not be bound.
    #[error("binding {addr}: {source}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// TLS material could not be generated.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// Writing the CA file or opening the audit log failed.
    #[error("{what}: {source}")]
    Io {
        /// What we were doing.
        what: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The root token is empty.
    #[error("the root token must not be empty")]
    EmptyRootToken,
}

/// Entry point.
#[derive(Debug)]
pub struct VaultDev;

impl VaultDev {
    /// Bind, spawn the server on the current tokio runtime and return once it accepts connections.
    pub async fn start(config: Config) -> Result<Running, Error> {
        if config.root_token.is_empty() {
            return Err(Error::EmptyRootToken);
        }
        let key_bytes: [u8; 32] = rand::random();
        let unseal_key = base64::engine::general_purpose::STANDARD.encode(key_bytes);
        let mut state = State::new(&config.root_token, &unseal_key);
        state.lockout_threshold = config.lockout_threshold;
        let audit = audit::Audit::new(config.audit_log.as_deref()).map_err(|source| Error::Io {
            what: "opening the audit log".into(),
            source,
        })?;
        let core = Arc::new(Core::new(state, audit));

        let listener =
            std::net::TcpListener::bind(config.listen).map_err(|source| Error::Bind {
                addr: config.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| Error::Bind {
            addr: config.listen,
            source,
        })?;
        let app = Router::new()
            .fallback(http::serve)
            .with_state(core.clone())
            .into_make_service_with_connect_info::<SocketAddr>();
        let handle = axum_server::Handle::<SocketAddr>::new();

        let mut tempdir = None;
        let (scheme, ca_pem, ca_path, task) = match &config.tls {
            Tls::Off => {
                // TCP_NODELAY, like Go's net package under the real Vault.
                let server = axum_server::from_tcp(listener)
                    .map_err(|source| Error::Bind {
                        addr: config.listen,
                        source,
                    })?
                    .acceptor(axum_server::accept::NoDelayAcceptor::new())
                    .handle(handle.clone());
                let task = tokio::spawn(async move { server.serve(app).await });
                ("http", None, None, task)
            }
            Tls::TempDir | Tls::Dir(_) => {
                let material = tls::TlsMaterial::generate()?;
                let dir = match &config.tls {
                    Tls::Dir(d) => d.clone(),
                    _ => {
                        let t = tempfile::Builder::new()
                            .prefix("vault-dev-tls-")
                            .tempdir()
                            .map_err(|source| Error::Io {
                                what: "creating a temporary directory".into(),
                                source,
                            })?;
                        let p = t.path().to_path_buf();
                        tempdir = Some(t);
                        p
                    }
                };
                let io = |what: &str| {
                    let what = what.to_string();
                    move |source| Error::Io { what, source }
                };
                std::fs::create_dir_all(&dir).map_err(io("creating the TLS directory"))?;
                let ca_path = dir.join("ca.pem");
                std::fs::write(&ca_path, &material.ca_pem).map_err(io("writing ca.pem"))?;
                std::fs::write(dir.join("server.pem"), &material.cert_pem)
                    .map_err(io("writing server.pem"))?;
                let rustls =
                    axum_server::tls_rustls::RustlsConfig::from_config(material.server_config()?);
                let server = axum_server::tls_rustls::from_tcp_rustls(listener, rustls)
                    .map_err(|source| Error::Bind {
                        addr: config.listen,
                        source,
                    })?
                    .map(|tls| tls.acceptor(axum_server::accept::NoDelayAcceptor::new()))
                    .handle(handle.clone());
                let task = tokio::spawn(async move { server.serve(app).await });
                ("https", Some(material.ca_pem.clone()), Some(ca_path), task)
            }
        };
        // The socket is already bound and listening, but wait until the accept loop runs.
        let _ = handle.listening().await;

        let sweeper = {
            let core = core.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(SWEEP_EVERY);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    let now = Timestamp::now();
                    let mut st = core.lock();
                    st.tokens.sweep(now);
                    for m in st.auth_mounts.values_mut() {
                        m.approle.sweep(now);
                    }
                }
            })
        };

        let host = match addr {
            SocketAddr::V4(a) => a.ip().to_string(),
            SocketAddr::V6(a) => format!("[{}]", a.ip()),
        };
        Ok(Running {
            addr,
            url: format!("{scheme}://{host}:{}", addr.port()),
            root_token: config.root_token,
            ca_pem,
            ca_path,
            unseal_key,
            core,
            handle,
            task: Some(task),
            sweeper,
            _tempdir: tempdir,
        })
    }
}

/// A running server. Dropping it stops the server (without waiting).
pub struct Running {
    /// The bound address.
    pub addr: SocketAddr,
    /// `http://127.0.0.1:<port>` or `https://...`.
    pub url: String,
    /// The root token.
    pub root_token: String,
    /// CA certificate PEM when serving TLS.
    pub ca_pem: Option<String>,
    /// Path of the CA PEM file when serving TLS.
    pub ca_path: Option<PathBuf>,
    /// The dev unseal key for `PUT sys/unseal {"key": ...}`.
    pub unseal_key: String,
    core: Arc<Core>,
    handle: axum_server::Handle<SocketAddr>,
    task: Option<JoinHandle<std::io::Result<()>>>,
    sweeper: JoinHandle<()>,
    _tempdir: Option<tempfile::TempDir>,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("addr", &self.addr)
            .field("url", &self.url)
            .field("ca_path", &self.ca_path)
            .finish_non_exhaustive()
    }
}

impl Running {
    /// The single line the binary prints when ready:
    /// `vault-dev ready: addr=<url> [cacert=<path>] unseal_key=<key>`.
    pub fn ready_line(&self) -> String {
        let mut line = format!("vault-dev ready: addr={}", self.url);
        if let Some(p) = &self.ca_path {
            line.push_str(&format!(" cacert={}", p.display()));
        }
        line.push_str(&format!(" unseal_key={}", self.unseal_key));
        line
    }

    /// The audited requests so far (the most recent 262144 are kept in memory; the audit file,
    /// when configured, has all of them).
    pub fn audit_entries(&self) -> Vec<AuditEntry> {
        self.core.audit().entries()
    }

    /// How many requests were audited since start.
    pub fn audit_total(&self) -> u64 {
        self.core.audit().total()
    }

    /// Seal (every endpoint but health/seal-status/unseal answers 503).
    pub fn seal(&self) {
        self.core.lock().sealed = true;
    }

    /// Unseal; state is kept.
    pub fn unseal(&self) {
        self.core.lock().sealed = false;
    }

    /// Whether sealed.
    pub fn is_sealed(&self) -> bool {
        self.core.lock().sealed
    }

    /// Number of tokens currently stored (live or not yet swept), for leak checks.
    pub fn token_count(&self) -> usize {
        self.core.lock().tokens.len()
    }

    /// Stop accepting, let in-flight requests finish briefly, flush the audit file.
    pub async fn shutdown(mut self) {
        self.handle.graceful_shutdown(Some(DRAIN));
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        self.sweeper.abort();
        self.core.audit().close();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.handle.shutdown();
        self.sweeper.abort();
        if let Some(task) = &self.task {
            task.abort();
        }
        self.core.audit().close();
    }
}

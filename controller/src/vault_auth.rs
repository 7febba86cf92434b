//! The controller's own Vault login: one token source that every reconcile and the revocation
//! watcher ask for a token, instead of each reading a file.
//!
//! ```text
//!   --vault-auth kubernetes  POST auth/<mount>/login {role, jwt}   jwt re-read at every login
//!               token-file   read the file, GET auth/token/lookup-self; re-read when it changes
//!               approle      POST auth/<mount>/login {role_id, secret_id}, both from files
//!
//!   run():  no token ──login──▶ held ──2/3 of the lease──▶ renew-self ─┐
//!              ▲  (backoff 1 s doubling to 30 s)  │  ◀─────────────────┘ (renewed, not capped)
//!              │                                  ├─ renewal capped (near max TTL) or not
//!              │                                  │  renewable ─▶ log in again
//!              └──── expired / 403 on lookup ─────┘  renewal failed ─▶ log in again
//!
//!   with_token(f): f(token); on 403 → lookup-self: 403 too ⇒ the token is dead: log in once and
//!                  run f once more; lookup-self fine ⇒ a policy denial: return the 403 as it is.
//! ```
//!
//! Vault being unreachable does not make a held token invalid: `/readyz` reports "Vault login
//! valid" as long as a token is held that has not expired and that Vault has not refused. While
//! calls fail with transport errors or 5xx, a cheap `lookup-self` probes Vault every
//! [`PROBE_INTERVAL`]; the first answer after an outage is announced on [`VaultAuth::recoveries`],
//! which re-queues every pod, so pods that failed during the outage are delivered at once instead
//! of after their backoff.
//!
//! Tokens, JWTs, role_ids and secret_ids never reach a log line or an error message: the Vault
//! layer scrubs them from Vault's answers, and this module logs accessors only.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use approle_shared::secret::{ClientToken, SecretId};
use approle_shared::vault::{Login, Vault, VaultError};
use futures::Stream;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use secrecy::SecretString;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::admin::Admin;
use crate::args::Args;

/// First pause after a failed login; doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_secs(1);
/// Longest pause between login attempts: a recovered Vault is used within 30 s.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How often the token file is compared with the held token, and the longest the maintenance
/// loop sleeps (it keeps the TTL gauge and readiness current).
const TICK: Duration = Duration::from_secs(1);
/// While Vault is failing, how often a `lookup-self` checks whether it answers again.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(2);

/// `--vault-auth`: how the controller logs in to Vault. (Plain comments on the variants keep
/// `--help` to one line of possible values.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AuthKind {
    // Kubernetes auth with the controller's (projected) service-account token.
    Kubernetes,
    // A token in a file, written by someone else (e.g. Vault Agent); re-read when it changes.
    TokenFile,
    // AppRole with role_id and secret_id from files.
    Approle,
}

/// A login method with its settings, checked as a set from the flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Method {
    /// `POST auth/<mount>/login {role, jwt}`.
    Kubernetes {
        /// Auth mount path.
        mount: String,
        /// Vault role.
        role: String,
        /// Service-account token file (kubelet rotates it: re-read at every login).
        jwt_file: PathBuf,
    },
    /// A token file.
    TokenFile {
        /// The file.
        path: PathBuf,
    },
    /// `POST auth/<mount>/login {role_id, secret_id}`.
    AppRole {
        /// Auth mount path.
        mount: String,
        /// File holding the role_id.
        role_id_file: PathBuf,
        /// File holding the secret_id.
        secret_id_file: PathBuf,
    },
}

impl Method {
    /// The method the flags ask for. `--vault-auth` defaults to `kubernetes`, or to `token-file`
    /// when only `--vault-token-file` is given (so a deployment from before `--vault-auth`
    /// existed keeps working); flags of another method are refused rather than ignored.
    pub fn from_args(args: &Args) -> Result<Self, String> {
        let approle_files = args.vault_approle_role_id_file.is_some()
            || args.vault_approle_secret_id_file.is_some();
        let kind = match args.vault_auth {
            Some(kind) => kind,
            None if args.vault_token_file.is_some() => AuthKind::TokenFile,
            None if approle_files => {
                return Err(
                    "--vault-approle-role-id-file and --vault-approle-secret-id-file need \
                     --vault-auth approle"
                        .into(),
                );
            }
            None => AuthKind::Kubernetes,
        };
        if kind != AuthKind::TokenFile && args.vault_token_file.is_some() {
            return Err(format!(
                "--vault-token-file is used only with --vault-auth token-file, not {}",
                kind.name()
            ));
        }
        if kind != AuthKind::Approle && approle_files {
            return Err(format!(
                "--vault-approle-role-id-file and --vault-approle-secret-id-file are used only \
                 with --vault-auth approle, not {}",
                kind.name()
            ));
        }
        Ok(match kind {
            AuthKind::Kubernetes => Method::Kubernetes {
                mount: args.vault_k8s_mount.clone(),
                role: args.vault_k8s_role.clone(),
                jwt_file: args.vault_k8s_token_file.clone(),
            },
            AuthKind::TokenFile => Method::TokenFile {
                path: args.vault_token_file.clone().ok_or(
                    "--vault-auth token-file needs --vault-token-file (APPROLE_CONTROLLER_VAULT_TOKEN_FILE)",
                )?,
            },
            AuthKind::Approle => match (
                &args.vault_approle_role_id_file,
                &args.vault_approle_secret_id_file,
            ) {
                (Some(r), Some(s)) => Method::AppRole {
                    mount: args.vault_approle_mount.clone(),
                    role_id_file: r.clone(),
                    secret_id_file: s.clone(),
                },
                _ => {
                    return Err("--vault-auth approle needs --vault-approle-role-id-file and \
                                --vault-approle-secret-id-file"
                        .into());
                }
            },
        })
    }

    fn kind(&self) -> AuthKind {
        match self {
            Method::Kubernetes { .. } => AuthKind::Kubernetes,
            Method::TokenFile { .. } => AuthKind::TokenFile,
            Method::AppRole { .. } => AuthKind::Approle,
        }
    }

    /// Whether the controller can get a new token by itself (not with a token file).
    fn can_log_in(&self) -> bool {
        !matches!(self, Method::TokenFile { .. })
    }
}

impl AuthKind {
    /// The flag value.
    pub fn name(self) -> &'static str {
        match self {
            AuthKind::Kubernetes => "kubernetes",
            AuthKind::TokenFile => "token-file",
            AuthKind::Approle => "approle",
        }
    }
}

/// `result` label of the login and renewal counters.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// `success` or `failure`.
    pub result: &'static str,
}

/// Metrics of the controller's own Vault login.
#[derive(Debug, Clone, Default)]
pub struct AuthMetrics {
    /// Login attempts by result (with a token file: loading the file and checking it).
    pub logins: Family<ResultLabel, Counter>,
    /// `renew-self` calls by result.
    pub renewals: Family<ResultLabel, Counter>,
    /// Seconds the held token has left; 0 without a valid token, -1 for a token that never
    /// expires.
    pub token_ttl: Gauge,
}

impl AuthMetrics {
    /// Registers the metrics (names get the registry's `approle_` prefix).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "vault_logins",
            "The controller's own Vault logins, by result",
            self.logins.clone(),
        );
        registry.register(
            "vault_token_renewals",
            "Renewals of the controller's own Vault token, by result",
            self.renewals.clone(),
        );
        registry.register(
            "vault_token_ttl_seconds",
            "Seconds the controller's Vault token has left (0: none valid, -1: never expires)",
            self.token_ttl.clone(),
        );
    }

    fn count(family: &Family<ResultLabel, Counter>, ok: bool) {
        let result = if ok { "success" } else { "failure" };
        family.get_or_create(&ResultLabel { result }).inc();
    }
}

/// Why a Vault call could not be made or failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The controller holds no valid Vault token: login failing or not done yet.
    #[error("no valid Vault login ({0})")]
    NoLogin(String),
    /// Vault refused or could not be reached.
    #[error(transparent)]
    Vault(#[from] VaultError),
}

/// A failed login attempt.
#[derive(Debug, thiserror::Error)]
enum LoginError {
    /// A credential file could not be read.
    #[error("cannot read {what} {}: {source}", path.display())]
    Read {
        /// What the file holds.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A credential file is empty.
    #[error("{what} {} is empty", path.display())]
    Empty {
        /// What the file holds.
        what: &'static str,
        /// The file.
        path: PathBuf,
    },
    /// Vault refused or could not be reached.
    #[error("{vault}{hint}", vault = .0, hint = tls_hint(.0))]
    Vault(#[from] VaultError),
}

/// A hint for the error people meet first with an HTTPS Vault: its CA is not trusted.
fn tls_hint(e: &VaultError) -> &'static str {
    match e {
        VaultError::Unreachable { detail, .. }
            if detail.contains("certificate") || detail.contains("UnknownIssuer") =>
        {
            " (Vault's TLS certificate is not trusted: give --vault-cacert with the CA that \
             issued it)"
        }
        _ => "",
    }
}

/// The token held now.
#[derive(Clone)]
struct Held {
    token: ClientToken,
    accessor: String,
    /// Bumped at every login: tells a stale 403 from one about the current token.
    generation: u64,
    /// When the lease below started (login or last renewal).
    since: Instant,
    /// TTL at `since`; zero for a token that never expires.
    lease: Duration,
    /// Longest lease seen: a renewal that returns less was capped by the max TTL.
    full_lease: Duration,
    renewable: bool,
    /// A renewal was capped: the next refresh is a new login.
    near_max: bool,
}

impl Held {
    fn expires(&self) -> Option<Instant> {
        (!self.lease.is_zero()).then(|| self.since + self.lease)
    }

    fn expired(&self, now: Instant) -> bool {
        self.expires().is_some_and(|e| now >= e)
    }

    /// When to renew or log in again: two thirds into the lease.
    fn refresh_at(&self, can_log_in: bool) -> Option<Instant> {
        if self.lease.is_zero() || !(can_log_in || (self.renewable && !self.near_max)) {
            return None;
        }
        Some(self.since + self.lease * 2 / 3)
    }
}

/// The token source. Create with [`VaultAuth::new`], spawn [`VaultAuth::run`].
pub struct VaultAuth {
    method: Method,
    vault: Vault,
    admin: Arc<Admin>,
    held: watch::Sender<Option<Held>>,
    generation: AtomicU64,
    /// The last login failure, for callers that get no token.
    last_error: Mutex<String>,
    /// True from a failed login until the next successful one: callers do not wait then.
    login_failing: AtomicBool,
    /// Serialises logins, so that a burst of 403s logs in once.
    login: tokio::sync::Mutex<()>,
    /// Wakes the maintenance loop early.
    wake: Notify,
    /// Set by transport errors and 5xx; cleared (and announced) by the next answer.
    degraded: AtomicBool,
    recovered: watch::Sender<u64>,
    /// How long a caller waits for a login in progress (the first one at start-up).
    wait_for_login: Duration,
}

impl std::fmt::Debug for VaultAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultAuth")
            .field("method", &self.method)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Only a String is behind it; a panic cannot leave it half-written.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl VaultAuth {
    /// A token source that holds no token yet. `wait_for_login` bounds how long a caller waits
    /// for a login in progress (use the Vault request timeout).
    pub fn new(
        method: Method,
        vault: Vault,
        admin: Arc<Admin>,
        wait_for_login: Duration,
    ) -> Arc<Self> {
        Arc::new(Self {
            method,
            vault,
            admin,
            held: watch::Sender::new(None),
            generation: AtomicU64::new(0),
            last_error: Mutex::new("not logged in yet".into()),
            login_failing: AtomicBool::new(false),
            login: tokio::sync::Mutex::new(()),
            wake: Notify::new(),
            degraded: AtomicBool::new(false),
            recovered: watch::Sender::new(0),
            wait_for_login,
        })
    }

    /// One item each time Vault answers again after calls failed for transport errors or 5xx
    /// (for `Controller::reconcile_all_on`).
    pub fn recoveries(&self) -> impl Stream<Item = ()> + Send + 'static {
        let rx = self.recovered.subscribe();
        futures::stream::unfold(rx, |mut rx| async move {
            rx.changed().await.ok()?;
            Some(((), rx))
        })
    }

    /// True while Vault calls fail with transport errors or 5xx (until Vault answers again).
    pub fn is_degraded(&self) -> bool {
        self.degraded.load(Ordering::Relaxed)
    }

    /// Runs `f` with the current token. If Vault answers 403 and `lookup-self` shows the token
    /// itself is dead (revoked, expired), logs in again once and runs `f` once more; a 403 for a
    /// working token (a policy denial) is returned as it is.
    pub async fn with_token<T, F, Fut>(&self, f: F) -> Result<T, CallError>
    where
        F: Fn(ClientToken) -> Fut,
        Fut: Future<Output = Result<T, VaultError>>,
    {
        let held = self.current().await?;
        let err = match f(held.token.clone()).await {
            Ok(v) => {
                self.answered();
                return Ok(v);
            }
            Err(e) => e,
        };
        self.observe(&err);
        if err.status() != Some(403) {
            return Err(err.into());
        }
        match self.recover(&held).await? {
            Some(fresh) => {
                let result = f(fresh.token).await;
                match &result {
                    Ok(_) => self.answered(),
                    Err(e) => self.observe(e),
                }
                Ok(result?)
            }
            None => Err(err.into()),
        }
    }

    /// The held token; waits up to `wait_for_login` while a login is under way, but not while
    /// logins are failing (the caller fails at once and backs off).
    async fn current(&self) -> Result<Held, CallError> {
        let valid = |h: &Option<Held>| h.as_ref().is_some_and(|h| !h.expired(Instant::now()));
        if let Some(h) = self
            .held
            .borrow()
            .as_ref()
            .filter(|h| !h.expired(Instant::now()))
        {
            return Ok(h.clone());
        }
        if !self.login_failing.load(Ordering::Relaxed) {
            let mut rx = self.held.subscribe();
            if let Ok(Ok(h)) = tokio::time::timeout(self.wait_for_login, rx.wait_for(valid)).await
                && let Some(h) = h.as_ref()
            {
                return Ok(h.clone());
            }
        }
        Err(CallError::NoLogin(lock(&self.last_error).clone()))
    }

    /// After a 403 with `held`: a token of a newer login if there is one, else `lookup-self`
    /// decides whether the token is dead (then one login) or only denied.
    async fn recover(&self, held: &Held) -> Result<Option<Held>, CallError> {
        let _one_at_a_time = self.login.lock().await;
        if let Some(h) = self.held.borrow().as_ref()
            && h.generation != held.generation
            && !h.expired(Instant::now())
        {
            return Ok(Some(h.clone()));
        }
        match self.vault.lookup_self(&held.token).await {
            Ok(_) => return Ok(None),
            Err(e) if e.status() == Some(403) => {}
            Err(e) => return Err(e.into()),
        }
        warn!(token_accessor = %held.accessor, method = self.method.kind().name(),
            "Vault refused the controller's token (revoked or expired); logging in again");
        self.drop_token(held.generation);
        match self.login_once().await {
            Ok(h) => Ok(Some(h)),
            Err(e) => {
                // The maintenance loop goes on trying, with backoff.
                self.wake.notify_one();
                Err(CallError::NoLogin(e.to_string()))
            }
        }
    }

    /// Vault answered (anything but a transport error or 5xx).
    fn answered(&self) {
        if self.degraded.swap(false, Ordering::Relaxed) {
            info!("Vault answers again; re-queueing every pod");
            self.recovered.send_modify(|n| *n += 1);
        }
    }

    /// Notes how Vault failed: transport errors and 5xx mean it is degraded.
    fn observe(&self, e: &VaultError) {
        if e.is_transient() {
            self.degraded.store(true, Ordering::Relaxed);
        } else {
            self.answered();
        }
    }

    fn drop_token(&self, generation: u64) {
        self.held.send_if_modified(|h| {
            let stale = h.as_ref().is_some_and(|h| h.generation == generation);
            if stale {
                *h = None;
            }
            stale
        });
        self.publish_state();
    }

    /// One login attempt; on success the new token is held.
    async fn login_once(&self) -> Result<Held, LoginError> {
        let result = self.log_in().await;
        AuthMetrics::count(&self.admin.metrics.vault_auth.logins, result.is_ok());
        match result {
            Ok(mut held) => {
                held.generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
                info!(
                    method = self.method.kind().name(),
                    token_accessor = %held.accessor,
                    ttl_seconds = held.lease.as_secs(),
                    renewable = held.renewable,
                    "logged in to Vault"
                );
                self.login_failing.store(false, Ordering::Relaxed);
                self.held.send_replace(Some(held.clone()));
                self.answered();
                self.publish_state();
                Ok(held)
            }
            Err(e) => {
                if let LoginError::Vault(v) = &e {
                    self.observe(v);
                }
                *lock(&self.last_error) = e.to_string();
                self.login_failing.store(true, Ordering::Relaxed);
                self.publish_state();
                Err(e)
            }
        }
    }

    async fn log_in(&self) -> Result<Held, LoginError> {
        let fresh = |l: Login| {
            let lease = Duration::from_secs(l.lease_duration);
            Held {
                token: l.client_token,
                accessor: l.accessor,
                generation: 0,
                since: Instant::now(),
                lease,
                full_lease: lease,
                renewable: l.renewable,
                near_max: false,
            }
        };
        match &self.method {
            Method::Kubernetes {
                mount,
                role,
                jwt_file,
            } => {
                let jwt = read_secret(jwt_file, "the service-account token file").await?;
                let login = self
                    .vault
                    .kubernetes_login(mount, role, &SecretString::from(jwt))
                    .await?;
                Ok(fresh(login))
            }
            Method::AppRole {
                mount,
                role_id_file,
                secret_id_file,
            } => {
                let role_id = read_secret(role_id_file, "the AppRole role_id file").await?;
                let secret_id = read_secret(secret_id_file, "the AppRole secret_id file").await?;
                let login = self
                    .vault
                    .approle_login(mount, &role_id, &SecretId::new(secret_id))
                    .await?;
                Ok(fresh(login))
            }
            Method::TokenFile { path } => {
                let token = ClientToken::new(read_secret(path, "the Vault token file").await?);
                let info = self.vault.lookup_self(&token).await?;
                Ok(fresh(Login {
                    client_token: token,
                    accessor: info.accessor,
                    policies: Vec::new(),
                    lease_duration: info.ttl,
                    renewable: info.renewable,
                }))
            }
        }
    }

    /// Renews the held token, or logs in again when it cannot be renewed (any more).
    async fn refresh(&self, held: &Held) -> Result<(), LoginError> {
        if !held.renewable || held.near_max {
            return self.login_once().await.map(drop);
        }
        match self.vault.renew_self(&held.token).await {
            Ok(renewed) => {
                AuthMetrics::count(&self.admin.metrics.vault_auth.renewals, true);
                self.answered();
                let lease = Duration::from_secs(renewed.lease_duration);
                let near_max = lease < held.full_lease;
                debug!(token_accessor = %held.accessor, ttl_seconds = lease.as_secs(), near_max, "renewed the controller's Vault token");
                self.held.send_if_modified(|h| match h {
                    Some(h) if h.generation == held.generation => {
                        h.since = Instant::now();
                        h.lease = lease;
                        h.full_lease = h.full_lease.max(lease);
                        h.near_max = near_max;
                        true
                    }
                    _ => false,
                });
                self.publish_state();
                Ok(())
            }
            Err(e) => {
                AuthMetrics::count(&self.admin.metrics.vault_auth.renewals, false);
                self.observe(&e);
                warn!(token_accessor = %held.accessor, error = %e, "renewing the controller's Vault token failed; logging in again");
                if e.status() == Some(403) {
                    self.drop_token(held.generation);
                }
                self.login_once().await.map(drop)
            }
        }
    }

    /// Readiness and the TTL gauge from the held token.
    fn publish_state(&self) {
        let now = Instant::now();
        let held = self.held.borrow();
        let valid = held.as_ref().filter(|h| !h.expired(now));
        self.admin
            .ready
            .vault_login
            .store(valid.is_some(), Ordering::Relaxed);
        let ttl = match valid.map(Held::expires) {
            None => 0,
            Some(None) => -1,
            Some(Some(e)) => {
                i64::try_from(e.saturating_duration_since(now).as_secs()).unwrap_or(i64::MAX)
            }
        };
        self.admin.metrics.vault_auth.token_ttl.set(ttl);
    }

    /// Keeps a valid token: logs in (with backoff), renews, follows the token file, probes
    /// Vault while it fails. Never returns.
    pub async fn run(self: Arc<Self>) {
        let mut backoff = MIN_BACKOFF;
        let mut retry_at: Option<Instant> = None;
        let mut probe_at = Instant::now();
        loop {
            let now = Instant::now();
            let held = self.held.borrow().clone();
            let due = retry_at.is_none_or(|t| now >= t);
            let attempt: Option<Result<(), LoginError>> = match held {
                Some(h) if h.expired(now) => {
                    warn!(token_accessor = %h.accessor, "the controller's Vault token expired");
                    self.drop_token(h.generation);
                    continue;
                }
                None if due => {
                    let _one = self.login.lock().await;
                    // Someone else (a 403 recovery) may have logged in meanwhile.
                    if self.held.borrow().is_some() {
                        None
                    } else {
                        Some(self.login_once().await.map(drop))
                    }
                }
                None => None,
                Some(h) => {
                    if due && self.token_file_changed(&h).await {
                        info!("the Vault token file changed; loading it");
                        let _one = self.login.lock().await;
                        Some(self.login_once().await.map(drop))
                    } else if due
                        && h.refresh_at(self.method.can_log_in())
                            .is_some_and(|t| now >= t)
                    {
                        let _one = self.login.lock().await;
                        Some(self.refresh(&h).await)
                    } else if self.degraded.load(Ordering::Relaxed) && now >= probe_at {
                        probe_at = now + PROBE_INTERVAL;
                        match self.vault.lookup_self(&h.token).await {
                            Ok(_) => self.answered(),
                            Err(e) if e.status() == Some(403) => self.drop_token(h.generation),
                            Err(e) => self.observe(&e),
                        }
                        None
                    } else {
                        None
                    }
                }
            };
            match attempt {
                Some(Ok(())) => {
                    backoff = MIN_BACKOFF;
                    retry_at = None;
                }
                Some(Err(e)) => {
                    warn!(method = self.method.kind().name(), error = %e, retry_in = ?backoff, "Vault login failed");
                    retry_at = Some(Instant::now() + backoff);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                None => {}
            }
            self.publish_state();
            let mut next = Instant::now() + TICK;
            if let Some(h) = self.held.borrow().as_ref() {
                if let Some(t) = h.refresh_at(self.method.can_log_in()) {
                    next = next.min(t.max(retry_at.unwrap_or(t)));
                }
                if let Some(e) = h.expires() {
                    next = next.min(e);
                }
            } else if let Some(t) = retry_at {
                next = next.min(t);
            }
            tokio::select! {
                _ = tokio::time::sleep_until(next) => {}
                _ = self.wake.notified() => {}
            }
        }
    }

    /// With a token file: true when the file now holds another (non-empty) token.
    async fn token_file_changed(&self, held: &Held) -> bool {
        let Method::TokenFile { path } = &self.method else {
            return false;
        };
        match tokio::fs::read_to_string(path).await {
            Ok(text) => {
                let text = text.trim();
                !text.is_empty() && text != held.token.expose()
            }
            Err(_) => false,
        }
    }
}

/// Reads a credential file, trimmed; empty is an error.
async fn read_secret(path: &PathBuf, what: &'static str) -> Result<String, LoginError> {
    let text = tokio::fs::read_to_string(path)
        .await
        .map_err(|source| LoginError::Read {
            what,
            path: path.clone(),
            source,
        })?;
    let text = text.trim();
    if text.is_empty() {
        return Err(LoginError::Empty {
            what,
            path: path.clone(),
        });
    }
    Ok(text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn args(extra: &[&str]) -> Args {
        let base = [
            "approle-controller",
            "--vault-addr",
            "http://127.0.0.1:8200",
        ];
        Args::try_parse_from(base.iter().chain(extra.iter())).expect("parses")
    }

    #[test]
    fn kubernetes_auth_is_the_default_with_the_service_account_token() {
        assert_eq!(
            Method::from_args(&args(&[])),
            Ok(Method::Kubernetes {
                mount: "kubernetes".into(),
                role: "approle-controller".into(),
                jwt_file: "/var/run/secrets/kubernetes.io/serviceaccount/token".into(),
            })
        );
    }

    #[test]
    fn a_token_file_alone_means_token_file_auth() {
        assert_eq!(
            Method::from_args(&args(&["--vault-token-file", "/t"])),
            Ok(Method::TokenFile { path: "/t".into() })
        );
    }

    #[test]
    fn approle_auth_needs_both_files() {
        let ok = args(&[
            "--vault-auth",
            "approle",
            "--vault-approle-role-id-file",
            "/r",
            "--vault-approle-secret-id-file",
            "/s",
        ]);
        assert!(matches!(Method::from_args(&ok), Ok(Method::AppRole { .. })));
        let err = Method::from_args(&args(&[
            "--vault-auth",
            "approle",
            "--vault-approle-role-id-file",
            "/r",
        ]))
        .expect_err("secret_id file missing");
        assert!(err.contains("--vault-approle-secret-id-file"), "{err}");
    }

    #[test]
    fn flags_of_another_method_are_refused_not_ignored() {
        let err = Method::from_args(&args(&[
            "--vault-auth",
            "kubernetes",
            "--vault-token-file",
            "/t",
        ]))
        .expect_err("conflict");
        assert!(
            err.contains("--vault-token-file is used only with"),
            "{err}"
        );
        let err = Method::from_args(&args(&["--vault-approle-role-id-file", "/r"]))
            .expect_err("no method");
        assert!(err.contains("--vault-auth approle"), "{err}");
        let err = Method::from_args(&args(&["--vault-auth", "token-file"])).expect_err("no file");
        assert!(err.contains("--vault-token-file"), "{err}");
    }

    fn held(lease: u64, renewable: bool) -> Held {
        Held {
            token: ClientToken::new("t"),
            accessor: "a".into(),
            generation: 1,
            since: Instant::now(),
            lease: Duration::from_secs(lease),
            full_lease: Duration::from_secs(lease),
            renewable,
            near_max: false,
        }
    }

    #[test]
    fn tokens_are_refreshed_two_thirds_into_their_lease() {
        let h = held(30, true);
        assert_eq!(h.refresh_at(true), Some(h.since + Duration::from_secs(20)));
        assert_eq!(h.expires(), Some(h.since + Duration::from_secs(30)));
        // A token that never expires (a root token in a file) is never refreshed.
        let forever = held(0, false);
        assert_eq!((forever.refresh_at(true), forever.expires()), (None, None));
        // A token file's token that cannot be renewed waits for the file to change.
        assert_eq!(held(30, false).refresh_at(false), None);
        let mut capped = held(30, true);
        capped.near_max = true;
        assert_eq!(capped.refresh_at(false), None);
        assert!(capped.refresh_at(true).is_some());
    }

    #[test]
    fn untrusted_vault_certificates_get_a_hint() {
        let e = VaultError::Unreachable {
            op: "Kubernetes login".into(),
            detail: "invalid peer certificate: UnknownIssuer".into(),
        };
        let text = LoginError::Vault(e).to_string();
        assert!(text.contains("give --vault-cacert"), "{text}");
    }
}

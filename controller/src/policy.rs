//! Authorization policy: which AppRoles which namespaces (and optionally service accounts) may
//! use. Default deny: a role no rule binds is refused at admission and never minted.
//!
//! ```text
//!  policy.yaml (ConfigMap mount) ──poll every --policy-reload-interval, compare content──┐
//!        │ parse strictly (unknown field = error naming it), validate patterns            │
//!        ├─ ok    ─▶ swap in, approle_policy_reloads_total{result="ok"}, loaded=1, /readyz ok
//!        └─ error ─▶ keep the last good policy, warn, approle_policy_reloads_total{result="error"}
//!
//!  Authorizer::check(role, namespace, service_account)
//!        ├─ webhook: deny the pod with the message (403)
//!        └─ reconcile, before any Vault call: RoleDenied Event, status `denied`, requeue with
//!           backoff; every successful reload re-checks every pod at once
//! ```
//!
//! The file:
//!
//! ```yaml
//! rules:
//!   - roles: ["payments-api"]        # exact names or globs (`*`, `?`)
//!     namespaces: ["payments", "payments-*"]
//!     serviceAccounts: ["api"]       # optional; absent = any service account
//!   - roles: ["{namespace}-*"]       # {namespace} and {serviceAccount} are the pod's
//!     namespaces: ["team-*"]
//! ```
//!
//! A pod may use a role when one rule lists a namespace pattern matching the pod's namespace, a
//! role pattern matching the role, and (if the rule has `serviceAccounts`) a service-account
//! pattern matching the pod's `spec.serviceAccountName` (`default` when unset). ConfigMap mounts
//! change by a symlink swap, so the file is polled by content, not watched with inotify.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::pod::Pod;
use approle_shared::annotations::{InjectionSpec, STATUS};
use futures::Stream;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::admin::Admin;
use crate::deliver::{Context, publish};

/// Event reason of a pod whose role the policy does not allow.
pub const ROLE_DENIED: &str = "RoleDenied";
/// Status annotation value of a pod refused by the policy.
pub const STATUS_DENIED: &str = "denied";
/// The service account of a pod without `spec.serviceAccountName`.
pub const DEFAULT_SERVICE_ACCOUNT: &str = "default";
/// Requeue of a denied pod: first delay, doubled per denial up to [`DENIED_REQUEUE_MAX`]. A
/// successful reload re-checks every pod at once anyway.
pub const DENIED_REQUEUE: Duration = Duration::from_secs(5);
/// Cap of the denied pod's requeue delay.
pub const DENIED_REQUEUE_MAX: Duration = Duration::from_secs(300);
/// While no policy has loaded, pods are checked again this often (and at once when one loads).
pub const NOT_LOADED_REQUEUE: Duration = Duration::from_secs(10);

/// A policy file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The file could not be read.
    #[error("cannot read policy file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a valid policy.
    #[error("policy file {path} is invalid: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong, with its place in the file.
        message: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    rules: Vec<RuleFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RuleFile {
    roles: Vec<String>,
    namespaces: Vec<String>,
    #[serde(default)]
    service_accounts: Option<Vec<String>>,
}

/// One piece of a compiled pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Char(char),
    /// `*`: any run of characters, also none.
    Any,
    /// `?`: exactly one character.
    One,
    /// `{namespace}`: the pod's namespace, literally.
    Namespace,
    /// `{serviceAccount}`: the pod's service account, literally.
    ServiceAccount,
}

/// A glob (`*`, `?`), in roles also with `{namespace}` and `{serviceAccount}`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pattern {
    text: String,
    pieces: Vec<Piece>,
}

impl Pattern {
    fn parse(text: &str, templates: bool) -> Result<Self, String> {
        if text.is_empty() {
            return Err("an empty pattern matches nothing; remove it or write \"*\"".into());
        }
        let mut pieces = Vec::new();
        let mut rest = text;
        while let Some(c) = rest.chars().next() {
            if c == '{' {
                let end = rest
                    .find('}')
                    .ok_or_else(|| format!("{text:?}: '{{' without a closing '}}'"))?;
                let name = &rest[1..end];
                pieces.push(match (name, templates) {
                    ("namespace", true) => Piece::Namespace,
                    ("serviceAccount", true) => Piece::ServiceAccount,
                    (_, false) => {
                        return Err(format!(
                            "{text:?}: placeholders like {{{name}}} are allowed in roles only"
                        ));
                    }
                    _ => {
                        return Err(format!(
                            "{text:?}: unknown placeholder {{{name}}}; use {{namespace}} or {{serviceAccount}}"
                        ));
                    }
                });
                rest = &rest[end + 1..];
                continue;
            }
            pieces.push(match c {
                '*' => Piece::Any,
                '?' => Piece::One,
                '}' => return Err(format!("{text:?}: '}}' without an opening '{{'")),
                c => Piece::Char(c),
            });
            rest = &rest[c.len_utf8()..];
        }
        Ok(Self {
            text: text.to_owned(),
            pieces,
        })
    }

    /// Glob match with the placeholders filled in (as literal text, never as globs).
    fn matches(&self, s: &str, namespace: &str, service_account: &str) -> bool {
        enum G {
            C(char),
            Any,
            One,
        }
        let mut glob = Vec::with_capacity(self.pieces.len());
        for p in &self.pieces {
            match p {
                Piece::Char(c) => glob.push(G::C(*c)),
                Piece::Any => glob.push(G::Any),
                Piece::One => glob.push(G::One),
                Piece::Namespace => glob.extend(namespace.chars().map(G::C)),
                Piece::ServiceAccount => glob.extend(service_account.chars().map(G::C)),
            }
        }
        let s: Vec<char> = s.chars().collect();
        // Iterative wildcard matching: on a mismatch, let the last `*` take one more character.
        let (mut gi, mut si) = (0, 0);
        let mut star: Option<(usize, usize)> = None;
        while si < s.len() {
            match glob.get(gi) {
                Some(G::C(c)) if *c == s[si] => (gi, si) = (gi + 1, si + 1),
                Some(G::One) => (gi, si) = (gi + 1, si + 1),
                Some(G::Any) => {
                    star = Some((gi, si));
                    gi += 1;
                }
                _ => match star {
                    Some((g, st)) => {
                        star = Some((g, st + 1));
                        (gi, si) = (g + 1, st + 1);
                    }
                    None => return false,
                },
            }
        }
        glob[gi..].iter().all(|g| matches!(g, G::Any))
    }
}

#[derive(Debug, Clone)]
struct Rule {
    roles: Vec<Pattern>,
    namespaces: Vec<Pattern>,
    service_accounts: Option<Vec<Pattern>>,
}

/// A parsed, validated policy.
#[derive(Debug, Clone)]
pub struct Policy {
    source: String,
    rules: Vec<Rule>,
}

/// Why a pod may not use a role; renders as a message a person can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// No policy has loaded yet.
    #[error("no authorization policy loaded yet ({reason}); every role is refused until one loads")]
    NotLoaded {
        /// Why (the load error, or that none was tried yet).
        reason: String,
    },
    /// No rule binds the role in the namespace.
    #[error(
        "role {role:?} is not allowed in namespace {namespace:?} (no rule of policy {source_file} binds it)"
    )]
    NoRule {
        /// The role asked for.
        role: String,
        /// The pod's namespace.
        namespace: String,
        /// The policy file.
        source_file: String,
    },
    /// Rules bind the role in the namespace, but for other service accounts.
    #[error(
        "role {role:?} is allowed in namespace {namespace:?} only for service accounts [{}]; pod runs as {service_account:?} (policy {source_file})",
        .allowed.join(", ")
    )]
    ServiceAccount {
        /// The role asked for.
        role: String,
        /// The pod's namespace.
        namespace: String,
        /// The pod's service account.
        service_account: String,
        /// Service-account patterns of the rules that bind the role there.
        allowed: Vec<String>,
        /// The policy file.
        source_file: String,
    },
}

impl Policy {
    /// Parses and validates a policy; `source` names it in messages (the file path).
    pub fn parse(text: &str, source: &str) -> Result<Self, PolicyError> {
        let invalid = |message: String| PolicyError::Invalid {
            path: source.to_owned(),
            message,
        };
        let value: serde_yaml_ng::Value =
            serde_yaml_ng::from_str(text).map_err(|e| invalid(e.to_string()))?;
        if value.is_null() {
            return Err(invalid(
                "the file is empty; write `rules: []` to refuse every role explicitly".into(),
            ));
        }
        let file: PolicyFile = serde_yaml_ng::from_str(text).map_err(|e| invalid(e.to_string()))?;
        let mut rules = Vec::with_capacity(file.rules.len());
        for (i, r) in file.rules.into_iter().enumerate() {
            let list = |field: &str, items: Vec<String>, templates: bool| {
                if items.is_empty() {
                    return Err(invalid(format!(
                        "rules[{i}].{field}: must not be empty (it would match nothing)"
                    )));
                }
                items
                    .iter()
                    .enumerate()
                    .map(|(j, p)| {
                        Pattern::parse(p, templates)
                            .map_err(|e| invalid(format!("rules[{i}].{field}[{j}]: {e}")))
                    })
                    .collect::<Result<Vec<_>, _>>()
            };
            rules.push(Rule {
                roles: list("roles", r.roles, true)?,
                namespaces: list("namespaces", r.namespaces, false)?,
                service_accounts: match r.service_accounts {
                    Some(sa) => Some(list("serviceAccounts", sa, false)?),
                    None => None,
                },
            });
        }
        Ok(Self {
            source: source.to_owned(),
            rules,
        })
    }

    /// Number of rules.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// Whether `role` may be used by a pod in `namespace` running as `service_account`.
    pub fn check(&self, role: &str, namespace: &str, service_account: &str) -> Result<(), Denied> {
        let mut allowed_accounts: Vec<String> = Vec::new();
        for rule in &self.rules {
            let binds = rule
                .namespaces
                .iter()
                .any(|p| p.matches(namespace, namespace, service_account))
                && rule
                    .roles
                    .iter()
                    .any(|p| p.matches(role, namespace, service_account));
            if !binds {
                continue;
            }
            match &rule.service_accounts {
                None => return Ok(()),
                Some(accounts) => {
                    if accounts
                        .iter()
                        .any(|p| p.matches(service_account, namespace, service_account))
                    {
                        return Ok(());
                    }
                    for a in accounts {
                        if !allowed_accounts.contains(&a.text) {
                            allowed_accounts.push(a.text.clone());
                        }
                    }
                }
            }
        }
        if allowed_accounts.is_empty() {
            Err(Denied::NoRule {
                role: role.to_owned(),
                namespace: namespace.to_owned(),
                source_file: self.source.clone(),
            })
        } else {
            Err(Denied::ServiceAccount {
                role: role.to_owned(),
                namespace: namespace.to_owned(),
                service_account: service_account.to_owned(),
                allowed: allowed_accounts,
                source_file: self.source.clone(),
            })
        }
    }
}

/// The service account a pod runs as, from its `spec.serviceAccountName`: `default` when that is
/// absent or empty (the API server's own default).
pub fn service_account(service_account_name: Option<&str>) -> &str {
    service_account_name
        .filter(|s| !s.is_empty())
        .unwrap_or(DEFAULT_SERVICE_ACCOUNT)
}

/// The policy in force, shared by the webhook and the reconciler.
#[derive(Debug, Clone)]
pub struct Authorizer {
    current: watch::Receiver<Option<Arc<Policy>>>,
    /// Why no policy is in force (shown while none has loaded).
    not_loaded: Arc<Mutex<String>>,
    /// Denials per pod UID, for the requeue backoff.
    denials: Arc<Mutex<HashMap<String, u32>>>,
    /// Where denials are counted (absent in unit tests).
    admin: Option<Arc<Admin>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every critical section is a single read or write: a poisoned lock holds consistent data.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Authorizer {
    /// An authorizer with this policy and nothing to reload it (tests, and the webhook's unit
    /// tests); `None` refuses everything as not loaded.
    pub fn fixed(policy: Option<Policy>) -> Self {
        let (_tx, rx) = watch::channel(policy.map(Arc::new));
        Self {
            current: rx,
            not_loaded: Arc::new(Mutex::new("none was given".into())),
            denials: Arc::default(),
            admin: None,
        }
    }

    /// The policy in force, if one has loaded.
    pub fn current(&self) -> Option<Arc<Policy>> {
        self.current.borrow().clone()
    }

    /// Checks a role for a pod's namespace and service account against the policy in force.
    pub fn check(&self, role: &str, namespace: &str, service_account: &str) -> Result<(), Denied> {
        match self.current() {
            Some(policy) => policy.check(role, namespace, service_account),
            None => Err(Denied::NotLoaded {
                reason: lock(&self.not_loaded).clone(),
            }),
        }
    }

    /// Counts a denial (`admission` or `reconcile`) in `approle_policy_denials_total`.
    pub fn count_denial(&self, stage: &'static str) {
        if let Some(admin) = &self.admin {
            admin.metrics.policy.denied(stage);
        }
    }

    /// Yields once every time a new policy is swapped in (for `reconcile_all_on`).
    pub fn changes(&self) -> impl Stream<Item = ()> + Send + 'static {
        let mut rx = self.current.clone();
        rx.mark_unchanged();
        futures::stream::unfold(rx, |mut rx| async move {
            rx.changed().await.ok()?;
            Some(((), rx))
        })
    }
}

/// Result label of a policy reload.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadResult {
    /// `ok` or `error`.
    pub result: &'static str,
}

/// Stage label of a policy denial.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Stage {
    /// `admission` or `reconcile`.
    pub stage: &'static str,
}

/// Metrics of the policy: reloads, whether one is loaded, denials.
#[derive(Debug, Default)]
pub struct PolicyMetrics {
    /// Reloads by result (`ok`, `error`).
    pub reloads: Family<ReloadResult, Counter>,
    /// 1 once a good policy is in force.
    pub loaded: Gauge,
    /// Pods refused by the policy, by stage (`admission`, `reconcile`).
    pub denials: Family<Stage, Counter>,
}

impl PolicyMetrics {
    /// Registers `approle_policy_reloads_total`, `approle_policy_loaded`,
    /// `approle_policy_denials_total`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "policy_reloads",
            "Authorization policy (re)loads by result",
            self.reloads.clone(),
        );
        registry.register(
            "policy_loaded",
            "1 once a good authorization policy is in force",
            self.loaded.clone(),
        );
        registry.register(
            "policy_denials",
            "Pods refused by the authorization policy, by stage",
            self.denials.clone(),
        );
    }

    /// Counts a denial.
    pub fn denied(&self, stage: &'static str) {
        self.denials.get_or_create(&Stage { stage }).inc();
    }
}

/// Loads the policy file and reloads it when its content changes.
#[derive(Debug)]
pub struct Loader {
    path: PathBuf,
    tx: watch::Sender<Option<Arc<Policy>>>,
    not_loaded: Arc<Mutex<String>>,
    admin: Arc<Admin>,
    /// What the last poll saw: the content read, or the read error.
    last: Option<Result<Vec<u8>, String>>,
}

impl Loader {
    /// A loader for `path` and the authorizer it feeds; nothing is loaded until [`Loader::poll`].
    pub fn new(path: PathBuf, admin: Arc<Admin>) -> (Self, Authorizer) {
        let (tx, rx) = watch::channel(None);
        let not_loaded = Arc::new(Mutex::new(format!(
            "policy file {} not read yet",
            path.display()
        )));
        admin.ready.policy.set(Some(lock(&not_loaded).clone()));
        let authorizer = Authorizer {
            current: rx,
            not_loaded: not_loaded.clone(),
            denials: Arc::default(),
            admin: Some(admin.clone()),
        };
        (
            Self {
                path,
                tx,
                not_loaded,
                admin,
                last: None,
            },
            authorizer,
        )
    }

    /// Reads the file; when its content (or read error) changed since the last poll, parses it and
    /// swaps it in, or keeps the last good policy and reports the error.
    pub fn poll(&mut self) {
        let read = std::fs::read(&self.path);
        let seen = match &read {
            Ok(bytes) => Ok(bytes.clone()),
            Err(e) => Err(e.to_string()),
        };
        if self.last.as_ref() == Some(&seen) {
            return;
        }
        let file = self.path.display().to_string();
        let parsed = match read {
            Ok(bytes) => match std::str::from_utf8(&bytes) {
                Ok(text) => Policy::parse(text, &file),
                Err(e) => Err(PolicyError::Invalid {
                    path: file.clone(),
                    message: format!("not UTF-8: {e}"),
                }),
            },
            Err(source) => Err(PolicyError::Read {
                path: file.clone(),
                source,
            }),
        };
        self.last = Some(seen);
        let metrics = &self.admin.metrics.policy;
        match parsed {
            Ok(policy) => {
                info!(policy = %file, rules = policy.len(), "authorization policy loaded");
                metrics
                    .reloads
                    .get_or_create(&ReloadResult { result: "ok" })
                    .inc();
                metrics.loaded.set(1);
                self.admin.ready.policy.set(None);
                self.tx.send_replace(Some(Arc::new(policy)));
            }
            Err(e) => {
                metrics
                    .reloads
                    .get_or_create(&ReloadResult { result: "error" })
                    .inc();
                if self.tx.borrow().is_some() {
                    warn!(error = %e, "authorization policy not reloaded; the last good one stays in force");
                } else {
                    warn!(error = %e, "no authorization policy loaded: every role is refused and the controller is not ready");
                    *lock(&self.not_loaded) = e.to_string();
                    self.admin.ready.policy.set(Some(e.to_string()));
                }
            }
        }
    }

    /// Polls every `interval`, forever.
    pub async fn run(mut self, interval: Duration) {
        let mut tick = tokio::time::interval(interval.max(Duration::from_millis(10)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.poll();
        }
    }
}

/// The reconcile's check, before any Vault call. `None`: allowed, go on. `Some(action)`: denied
/// (Event, status annotation, requeue with backoff) or no policy yet (requeue).
pub async fn gate(ctx: &Context, pod: &Pod, spec: &InjectionSpec) -> Option<Action> {
    let authz = &ctx.authorizer;
    let namespace = pod.namespace().unwrap_or_default();
    let uid = pod.uid().unwrap_or_default();
    let status = pod.annotations().get(STATUS).cloned();
    match authz.check(spec.role.as_str(), &namespace, pod.service_account()) {
        Ok(()) => {
            lock(&authz.denials).remove(&uid);
            if status.as_deref() == Some(STATUS_DENIED) {
                // Allowed now (the policy changed): the pod is no longer refused.
                set_status(ctx, pod, approle_shared::annotations::STATUS_INJECTED).await;
            }
            None
        }
        Err(why @ Denied::NotLoaded { .. }) => {
            debug!(%why, "waiting for an authorization policy");
            Some(Action::requeue(NOT_LOADED_REQUEUE))
        }
        Err(why) => {
            authz.count_denial("reconcile");
            let n = {
                let mut denials = lock(&authz.denials);
                if denials.len() > 4096 {
                    // Pods deleted while denied leave entries behind: drop those no longer cached.
                    let live: std::collections::HashSet<String> =
                        ctx.store.state().iter().filter_map(|p| p.uid()).collect();
                    denials.retain(|uid, _| live.contains(uid));
                }
                let n = denials.entry(uid).or_insert(0);
                *n = n.saturating_add(1);
                *n
            };
            let retry = DENIED_REQUEUE
                .saturating_mul(1u32 << (n - 1).min(10))
                .min(DENIED_REQUEUE_MAX);
            warn!(%why, retry_in = ?retry, "role denied by the authorization policy; nothing minted");
            publish(
                ctx,
                pod,
                EventType::Warning,
                ROLE_DENIED,
                "Authorize",
                format!(
                    "{why}; checking again in {}s or when the policy changes",
                    retry.as_secs()
                ),
            )
            .await;
            if status.as_deref() != Some(STATUS_DENIED) {
                set_status(ctx, pod, STATUS_DENIED).await;
            }
            Some(Action::requeue(retry))
        }
    }
}

async fn set_status(ctx: &Context, pod: &Pod, value: &str) {
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &pod.namespace().unwrap_or_default());
    let patch = json!({"metadata": {"annotations": {STATUS: value}}});
    if let Err(e) = api
        .patch(
            &pod.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        warn!(error = %e, status = value, "could not write the status annotation");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: &str = "/etc/approle-controller/policy.yaml";

    fn policy(yaml: &str) -> Policy {
        Policy::parse(yaml, SRC).expect("valid policy")
    }

    fn invalid(yaml: &str) -> String {
        Policy::parse(yaml, SRC).expect_err("invalid").to_string()
    }

    #[test]
    fn globs_match_like_shell_patterns() {
        let cases = [
            ("web", "web", true),
            ("web", "web2", false),
            ("web*", "web", true),
            ("web*", "web-api", true),
            ("*-api", "payments-api", true),
            ("*-api", "payments-apix", false),
            ("w?b", "wab", true),
            ("w?b", "wb", false),
            ("*", "", true),
            ("a*b*c", "aXbYbZc", true),
            ("a*b*c", "aXbYbZ", false),
            ("**", "x", true),
        ];
        for (pattern, s, want) in cases {
            let p = Pattern::parse(pattern, false).expect("pattern");
            assert_eq!(p.matches(s, "ns", "sa"), want, "{pattern} vs {s}");
        }
    }

    #[test]
    fn default_deny_and_exact_and_glob_bindings() {
        let p = policy(
            r#"
rules:
  - roles: ["payments-api"]
    namespaces: ["payments", "payments-*"]
  - roles: ["reports-*"]
    namespaces: ["analytics"]
"#,
        );
        assert_eq!(p.check("payments-api", "payments", "default"), Ok(()));
        assert_eq!(p.check("payments-api", "payments-eu", "x"), Ok(()));
        assert_eq!(p.check("reports-daily", "analytics", "default"), Ok(()));
        let denied = p
            .check("payments-api", "analytics", "default")
            .expect_err("other namespace");
        assert_eq!(
            denied.to_string(),
            format!(
                "role \"payments-api\" is not allowed in namespace \"analytics\" (no rule of policy {SRC} binds it)"
            )
        );
        assert!(p.check("web", "payments", "default").is_err());
        // An empty rule list refuses everything.
        assert!(
            policy("rules: []")
                .check("web", "default", "default")
                .is_err()
        );
    }

    #[test]
    fn templates_fill_in_the_pods_namespace_and_service_account_literally() {
        let p = policy(
            r#"
rules:
  - roles: ["{namespace}-*"]
    namespaces: ["team-*"]
  - roles: ["sa-{serviceAccount}"]
    namespaces: ["*"]
"#,
        );
        assert_eq!(p.check("team-a-db", "team-a", "default"), Ok(()));
        assert!(p.check("team-b-db", "team-a", "default").is_err());
        assert!(p.check("team-a-db", "other", "default").is_err());
        assert_eq!(p.check("sa-builder", "ci", "builder"), Ok(()));
        assert!(p.check("sa-builder", "ci", "deployer").is_err());
    }

    #[test]
    fn service_account_lists_restrict_and_say_who_may() {
        let p = policy(
            r#"
rules:
  - roles: ["payments-api"]
    namespaces: ["payments"]
    serviceAccounts: ["api", "worker-*"]
  - roles: ["payments-*"]
    namespaces: ["payments"]
    serviceAccounts: ["batch"]
"#,
        );
        assert_eq!(p.check("payments-api", "payments", "api"), Ok(()));
        assert_eq!(p.check("payments-api", "payments", "worker-1"), Ok(()));
        assert_eq!(p.check("payments-api", "payments", "batch"), Ok(()));
        let denied = p
            .check("payments-api", "payments", "default")
            .expect_err("wrong service account");
        assert_eq!(
            denied.to_string(),
            format!(
                "role \"payments-api\" is allowed in namespace \"payments\" only for service accounts [api, worker-*, batch]; pod runs as \"default\" (policy {SRC})"
            )
        );
    }

    #[test]
    fn malformed_files_are_errors_that_say_where() {
        let cases = [
            (
                "rules:\n  - roles: [web]\n    namespace: [default]\n",
                &["unknown field `namespace`", "namespaces", SRC][..],
            ),
            ("rule: []\n", &["unknown field `rule`"][..]),
            (
                "rules:\n  - roles: [web]\n",
                &["missing field `namespaces`"][..],
            ),
            (
                "rules:\n  - roles: []\n    namespaces: [a]\n",
                &["rules[0].roles: must not be empty"][..],
            ),
            (
                "rules:\n  - roles: [\"{ns}-*\"]\n    namespaces: [a]\n",
                &["rules[0].roles[0]", "unknown placeholder {ns}"][..],
            ),
            (
                "rules:\n  - roles: [web]\n    namespaces: [\"{namespace}\"]\n",
                &["rules[0].namespaces[0]", "allowed in roles only"][..],
            ),
            (
                "rules:\n  - roles: [web]\n    namespaces: [a]\n    serviceAccounts: []\n",
                &["rules[0].serviceAccounts: must not be empty"][..],
            ),
            ("rules: [\n", &[SRC][..]),
            ("# nothing yet\n", &["the file is empty", "rules: []"][..]),
            (
                "rules:\n  - roles: web\n    namespaces: [a]\n",
                &["roles"][..],
            ),
        ];
        for (yaml, needles) in cases {
            let msg = invalid(yaml);
            for n in needles {
                assert!(msg.contains(n), "{yaml:?}: {msg:?} lacks {n:?}");
            }
        }
    }

    #[test]
    fn reloads_keep_the_last_good_policy_and_count_results() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("policy.yaml");
        let admin = Arc::new(Admin::default());
        let (mut loader, authz) = Loader::new(path.clone(), admin.clone());
        // Missing file: not loaded, not ready, refused with the reason.
        loader.poll();
        let refused = authz
            .check("web", "default", "default")
            .expect_err("no policy");
        assert!(
            matches!(&refused, Denied::NotLoaded { reason } if reason.contains("cannot read policy file")),
            "{refused}"
        );
        assert!(admin.ready.policy.get().is_some());

        std::fs::write(&path, "rules: [{roles: [web], namespaces: [default]}]\n").expect("write");
        loader.poll();
        assert_eq!(authz.check("web", "default", "default"), Ok(()));
        assert_eq!(admin.ready.policy.get(), None);
        // The same content again: no reload counted.
        loader.poll();

        std::fs::write(&path, "rules: [{roles: [web], namespace: [default]}]\n").expect("write");
        loader.poll();
        assert_eq!(
            authz.check("web", "default", "default"),
            Ok(()),
            "a malformed file keeps the last good policy"
        );
        let text = admin.metrics.render();
        assert!(
            text.contains("approle_policy_reloads_total{result=\"ok\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("approle_policy_reloads_total{result=\"error\"} 2"),
            "{text}"
        );
        assert!(text.contains("approle_policy_loaded 1"), "{text}");
    }

    #[test]
    fn service_account_defaults_to_default() {
        let pod: Pod =
            serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": {"containers": []}}))
                .expect("pod");
        assert_eq!(pod.service_account(), "default");
        let pod: Pod = serde_json::from_value(
            json!({"metadata": {"name": "p"}, "spec": {"containers": [], "serviceAccountName": "api"}}),
        )
        .expect("pod");
        assert_eq!(pod.service_account(), "api");
        assert_eq!(service_account(Some("")), "default");
    }
}

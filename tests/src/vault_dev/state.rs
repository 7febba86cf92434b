//! In-memory server state: tokens (with an accessor index), mounts, policies, identity entities and
//! login lockout counters.
//!
//! All of it lives behind one `std::sync::Mutex` in [`super::core::Core`], taken once per request and
//! never held across an `.await`. Token lookups are O(1) by id or accessor; expired tokens are
//! dropped lazily when touched and by a periodic sweep.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use jiff::{SignedDuration, Timestamp};

use super::approle::AppRoleBackend;
use super::kubernetes::KubernetesBackend;
use super::kv::KvBackend;
use super::policy::{self, Policy};
use super::util;
use super::wire::AuthOut;

/// `num_uses` of a token whose last use was charged by the request in flight; it is revoked
/// when that request finishes (Vault's `tokenRevocationPending`).
pub const REVOCATION_PENDING: i64 = -1;

/// Vault's default lease TTL and system max TTL (768h).
pub const SYS_DEFAULT_TTL: i64 = 2_764_800;
/// System maximum TTL (768h).
pub const SYS_MAX_TTL: i64 = 2_764_800;

/// A response kept for a wrapping token.
#[derive(Debug)]
pub struct Wrapped {
    /// The original response JSON (compact, no trailing newline).
    pub response: String,
    /// When the wrapping token was created.
    pub creation_time: Timestamp,
    /// Wrap TTL in seconds.
    pub creation_ttl: i64,
    /// The wrapped request's path.
    pub creation_path: String,
    /// The wrapped accessor, if any.
    pub wrapped_accessor: Option<String>,
}

/// A token entry.
#[derive(Debug, Clone)]
pub struct Token {
    /// The token itself.
    pub id: String,
    /// Its accessor (`""` for batch tokens).
    pub accessor: String,
    /// Token policies (sanitised).
    pub policies: Vec<String>,
    /// Metadata.
    pub meta: Option<BTreeMap<String, String>>,
    /// Display name.
    pub display_name: String,
    /// Creation path.
    pub path: String,
    /// Creation time.
    pub creation: Timestamp,
    /// Creation TTL in seconds (0 = never expires).
    pub ttl: i64,
    /// Expiry (None = never).
    pub expire: Option<Timestamp>,
    /// Hard upper bound for renewals (None = none).
    pub max_expire: Option<Timestamp>,
    /// Explicit max TTL seconds.
    pub explicit_max_ttl: i64,
    /// Period seconds.
    pub period: i64,
    /// Remaining uses (0 = unlimited).
    pub num_uses: i64,
    /// Parent token id.
    pub parent: Option<String>,
    /// Whether renewable.
    pub renewable: bool,
    /// Batch token.
    pub batch: bool,
    /// Identity entity id.
    pub entity_id: String,
    /// CIDRs the token may be used from.
    pub bound_cidrs: Vec<String>,
    /// Auth mount (path with slash) and role (AppRole or Kubernetes) that issued it, for
    /// renewals.
    pub login_role: Option<(String, String)>,
    /// Response stored for a wrapping token.
    pub wrap: Option<Arc<Wrapped>>,
    /// Last renewal.
    pub last_renewal: Option<Timestamp>,
}

impl Token {
    /// Whether the token has expired at `now`.
    pub fn expired(&self, now: Timestamp) -> bool {
        self.expire.is_some_and(|e| now >= e)
    }

    /// Remaining TTL in whole seconds.
    pub fn remaining(&self, now: Timestamp) -> i64 {
        self.expire
            .map_or(0, |e| (e.as_second() - now.as_second()).max(0))
    }

    /// Whether the token carries the root policy.
    pub fn is_root(&self) -> bool {
        self.policies.iter().any(|p| p == "root")
    }

    /// The `auth` block for this token.
    pub fn auth_out(&self, now: Timestamp, lease_duration: Option<i64>) -> AuthOut {
        AuthOut {
            client_token: self.id.clone(),
            accessor: self.accessor.clone(),
            policies: self.policies.clone(),
            token_policies: self.policies.clone(),
            metadata: self.meta.clone(),
            lease_duration: lease_duration.unwrap_or_else(|| self.remaining(now)),
            renewable: self.renewable,
            entity_id: self.entity_id.clone(),
            token_type: if self.batch { "batch" } else { "service" }.into(),
            orphan: self.parent.is_none(),
            num_uses: self.num_uses,
        }
    }
}

/// What a new token should look like.
#[derive(Debug, Clone, Default)]
pub struct TokenParams {
    /// Custom id.
    pub id: Option<String>,
    /// Requested policies (before sanitising).
    pub policies: Vec<String>,
    /// Do not add `default`.
    pub no_default_policy: bool,
    /// Metadata.
    pub meta: Option<BTreeMap<String, String>>,
    /// Display name.
    pub display_name: String,
    /// Creation path.
    pub path: String,
    /// Requested TTL (0 = default).
    pub ttl: i64,
    /// Max TTL cap (0 = system max).
    pub max_ttl: i64,
    /// Explicit max TTL (0 = none).
    pub explicit_max_ttl: i64,
    /// Period (0 = none).
    pub period: i64,
    /// Use limit.
    pub num_uses: i64,
    /// Parent token id.
    pub parent: Option<String>,
    /// Renewable.
    pub renewable: bool,
    /// Batch token.
    pub batch: bool,
    /// Entity id.
    pub entity_id: String,
    /// Bound CIDRs.
    pub bound_cidrs: Vec<String>,
    /// Issuing auth mount and role.
    pub login_role: Option<(String, String)>,
}

/// Token store with an accessor index.
#[derive(Debug, Default)]
pub struct Tokens {
    by_id: HashMap<String, Token>,
    by_accessor: HashMap<String, String>,
}

impl Tokens {
    /// Insert a token.
    pub fn insert(&mut self, t: Token) {
        if !t.accessor.is_empty() {
            self.by_accessor.insert(t.accessor.clone(), t.id.clone());
        }
        self.by_id.insert(t.id.clone(), t);
    }

    /// Remove a token.
    pub fn remove(&mut self, id: &str) -> Option<Token> {
        let t = self.by_id.remove(id)?;
        if !t.accessor.is_empty() {
            self.by_accessor.remove(&t.accessor);
        }
        Some(t)
    }

    /// Whether `id` exists, is unexpired and all its parents are alive; dead tokens are removed.
    pub fn check(&mut self, id: &str, now: Timestamp) -> bool {
        let mut cur = id.to_string();
        for _ in 0..64 {
            match self.by_id.get(&cur) {
                None => break,
                Some(t) if t.expired(now) => break,
                Some(t) => match &t.parent {
                    None => return true,
                    Some(p) => cur = p.clone(),
                },
            }
        }
        self.remove(id);
        false
    }

    /// A live token that is not pending revocation (its last use already charged).
    pub fn live(&mut self, id: &str, now: Timestamp) -> Option<&mut Token> {
        self.live_tainted(id, now)
            .filter(|t| t.num_uses != REVOCATION_PENDING)
    }

    /// A live token, including one pending revocation (Vault's "tainted" lookup, used by
    /// lookup(-self) and first-party unwrap during the request that spent the last use).
    pub fn live_tainted(&mut self, id: &str, now: Timestamp) -> Option<&mut Token> {
        if self.check(id, now) {
            self.by_id.get_mut(id)
        } else {
            None
        }
    }

    /// Remove a token but let its children live on as orphans (O(n) over all tokens).
    pub fn revoke_orphan(&mut self, id: &str) {
        if self.remove(id).is_some() {
            for t in self.by_id.values_mut() {
                if t.parent.as_deref() == Some(id) {
                    t.parent = None;
                }
            }
        }
    }

    /// Remove every token created under a path prefix (a disabled auth mount).
    pub fn revoke_path_prefix(&mut self, prefix: &str) {
        let ids: Vec<String> = self
            .by_id
            .values()
            .filter(|t| t.path.starts_with(prefix))
            .map(|t| t.id.clone())
            .collect();
        for id in ids {
            self.remove(&id);
        }
    }

    /// The token id for a live accessor.
    pub fn id_for_accessor(&mut self, accessor: &str, now: Timestamp) -> Option<String> {
        let id = self.by_accessor.get(accessor)?.clone();
        self.check(&id, now).then_some(id)
    }

    /// All accessors (for `auth/token/accessors`).
    pub fn accessors(&self) -> Vec<String> {
        self.by_accessor.keys().cloned().collect()
    }

    /// Drop every expired token, then (repeatedly) every token whose parent is gone.
    pub fn sweep(&mut self, now: Timestamp) {
        let mut dead: Vec<String> = self
            .by_id
            .values()
            .filter(|t| t.expired(now))
            .map(|t| t.id.clone())
            .collect();
        while !dead.is_empty() {
            for id in &dead {
                self.remove(id);
            }
            dead = self
                .by_id
                .values()
                .filter(|t| {
                    t.parent
                        .as_ref()
                        .is_some_and(|p| !self.by_id.contains_key(p))
                })
                .map(|t| t.id.clone())
                .collect();
        }
    }

    /// Number of stored tokens.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Create and store a token; returns a copy.
    pub fn create(&mut self, p: TokenParams, now: Timestamp) -> Token {
        let policies = util::sanitize_policies(&p.policies, !p.no_default_policy);
        let is_root = policies.iter().any(|x| x == "root");
        let mut max = if p.max_ttl > 0 {
            p.max_ttl.min(SYS_MAX_TTL)
        } else {
            SYS_MAX_TTL
        };
        if p.explicit_max_ttl > 0 {
            max = max.min(p.explicit_max_ttl);
        }
        let (ttl, expire, max_expire) = if is_root && p.ttl == 0 && p.period == 0 {
            (0, None, None)
        } else if p.period > 0 {
            let ttl = if p.explicit_max_ttl > 0 {
                p.period.min(p.explicit_max_ttl)
            } else {
                p.period
            };
            let max_expire = (p.explicit_max_ttl > 0).then(|| add(now, p.explicit_max_ttl));
            (ttl, Some(add(now, ttl)), max_expire)
        } else {
            let want = if p.ttl > 0 { p.ttl } else { SYS_DEFAULT_TTL };
            let ttl = want.min(max);
            (ttl, Some(add(now, ttl)), Some(add(now, max)))
        };
        let id = p.id.unwrap_or_else(|| {
            if p.batch {
                util::batch_token()
            } else {
                util::service_token()
            }
        });
        let t = Token {
            id,
            accessor: if p.batch {
                String::new()
            } else {
                util::accessor()
            },
            policies,
            meta: p.meta,
            display_name: p.display_name,
            path: p.path,
            creation: now,
            ttl,
            expire,
            max_expire,
            explicit_max_ttl: p.explicit_max_ttl,
            period: p.period,
            num_uses: p.num_uses,
            parent: p.parent,
            renewable: p.renewable && !p.batch && expire.is_some(),
            batch: p.batch,
            entity_id: p.entity_id,
            bound_cidrs: p.bound_cidrs,
            login_role: p.login_role,
            wrap: None,
            last_renewal: None,
        };
        self.insert(t.clone());
        t
    }
}

/// `now + secs`.
pub fn add(now: Timestamp, secs: i64) -> Timestamp {
    now.checked_add(SignedDuration::from_secs(secs))
        .unwrap_or(now)
}

/// Mount table entry shared by auth and secret mounts.
#[derive(Debug, Clone)]
pub struct MountInfo {
    /// Mount type (`approle`, `kv`, `token`, `system`, …).
    pub kind: String,
    /// Description.
    pub description: String,
    /// Mount accessor (`auth_approle_1a2b3c4d`).
    pub accessor: String,
    /// Mount UUID.
    pub uuid: String,
    /// Options (`version` for kv).
    pub options: Option<BTreeMap<String, String>>,
}

/// Auth mounts: the token store is implicit. `info.kind` says which backend serves the mount
/// (`approle` or `kubernetes`); the other one stays empty.
#[derive(Debug)]
pub struct AuthMount {
    /// Mount table info.
    pub info: MountInfo,
    /// The AppRole backend.
    pub approle: AppRoleBackend,
    /// The Kubernetes backend.
    pub kubernetes: KubernetesBackend,
}

/// Secret mounts.
#[derive(Debug)]
pub struct SecretMount {
    /// Mount table info.
    pub info: MountInfo,
    /// The KV backend.
    pub kv: KvBackend,
}

/// Everything the server knows.
#[derive(Debug)]
pub struct State {
    /// Whether sealed.
    pub sealed: bool,
    /// The dev unseal key (base64).
    pub unseal_key: String,
    /// Tokens.
    pub tokens: Tokens,
    /// Auth mounts keyed by path with trailing slash (`approle/`).
    pub auth_mounts: BTreeMap<String, AuthMount>,
    /// Secret mounts keyed by path with trailing slash (`secret/`).
    pub secret_mounts: BTreeMap<String, SecretMount>,
    /// ACL policies by name (includes `default` and the hidden `response-wrapping`).
    pub policies: HashMap<String, Policy>,
    /// Entity ids by alias key (`mount accessor` + alias name).
    pub entities: HashMap<String, String>,
    /// Failed-login counters by alias key: (count, last failure).
    pub lockouts: HashMap<String, (u32, Timestamp)>,
    /// Failed logins per role_id before `permission denied` (0 = lockout disabled).
    pub lockout_threshold: u32,
    /// Accessor of the token store mount.
    pub token_mount_accessor: String,
    /// Cluster name for health.
    pub cluster_name: String,
    /// Cluster id for health.
    pub cluster_id: String,
}

impl State {
    /// Fresh state with the root token installed.
    pub fn new(root_token: &str, unseal_key: &str) -> Self {
        let mut policies = HashMap::new();
        for (name, text) in [
            ("default", policy::DEFAULT_POLICY),
            ("response-wrapping", policy::RESPONSE_WRAPPING_POLICY),
        ] {
            let p = policy::parse(name, text).expect("built-in policies parse");
            policies.insert(name.to_string(), p);
        }
        let mut tokens = Tokens::default();
        let now = Timestamp::now();
        tokens.insert(Token {
            id: root_token.to_string(),
            accessor: util::accessor(),
            policies: vec!["root".into()],
            meta: None,
            display_name: "root".into(),
            path: "auth/token/root".into(),
            creation: now,
            ttl: 0,
            expire: None,
            max_expire: None,
            explicit_max_ttl: 0,
            period: 0,
            num_uses: 0,
            parent: None,
            renewable: false,
            batch: false,
            entity_id: String::new(),
            bound_cidrs: Vec::new(),
            login_role: None,
            wrap: None,
            last_renewal: None,
        });
        State {
            sealed: false,
            unseal_key: unseal_key.to_string(),
            tokens,
            auth_mounts: BTreeMap::new(),
            secret_mounts: BTreeMap::new(),
            policies,
            entities: HashMap::new(),
            lockouts: HashMap::new(),
            lockout_threshold: 5,
            token_mount_accessor: format!("auth_token_{}", &util::uuid()[..8]),
            cluster_name: format!("vault-cluster-{}", &util::uuid()[..8]),
            cluster_id: util::uuid(),
        }
    }

    /// Stable entity id for an alias.
    pub fn entity_for(&mut self, mount_accessor: &str, alias: &str) -> String {
        self.entities
            .entry(format!("{mount_accessor}/{alias}"))
            .or_insert_with(util::uuid)
            .clone()
    }
}

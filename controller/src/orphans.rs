//! Secret_ids minted by requests the controller gave up on, found and destroyed.
//!
//! A mint that times out (Vault hung, a network partition) may still be carried out: the request
//! sits in Vault's socket and runs when Vault resumes. Its answer, with the wrapping token and the
//! secret_id accessor, goes nowhere, so nobody can ever use that secret_id — but it stays live in
//! Vault until its TTL ends, and the design promises no live secret_id left over.
//!
//! ```text
//!   deliver ── mint (shared gate) ──▶ answered: accessor noted as recent (a delivery uses it)
//!                                 └─▶ no answer: (role, pod_uid) becomes a suspect
//!   run(): every SWEEP_INTERVAL, with suspects and Vault answering:
//!          exclusive gate (no mint in flight) ─▶ LIST role/<role>/secret-id
//!          ─▶ each accessor not recent: secret-id-accessor/lookup; metadata pod_uid a suspect
//!          ─▶ secret-id-accessor/destroy
//!          each suspect is swept SWEEPS times, then dropped
//! ```
//!
//! Only secret_ids whose metadata names a suspect pod are touched, never one minted by someone
//! else for the same role, and never one a delivery in progress holds (those are recent).
//! The controller's Vault policy needs `list` on `auth/<mount>/role/+/secret-id` and `update`
//! on `auth/<mount>/role/+/secret-id-accessor/lookup` for this.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use approle_shared::vault::{Destroyed, Vault, VaultError, WrappedSecretId};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::admin::Admin;
use crate::vault_auth::{CallError, VaultAuth};

/// How often suspects are swept while Vault answers.
const SWEEP_INTERVAL: Duration = Duration::from_secs(3);
/// Sweeps per suspect after Vault answers again: a request held up in Vault runs within
/// moments of its resuming, so three sweeps over ~9 s find it.
const SWEEPS: u32 = 3;

/// The suspects and the recent mints.
#[derive(Debug)]
pub struct Orphans {
    /// Mints hold it shared; a sweep holds it exclusively, so no mint answer is in flight while
    /// the sweep lists (an answered mint is always noted as recent before the sweep looks).
    gate: tokio::sync::RwLock<()>,
    /// Accessors of answered mints, with when: a delivery may still push them.
    recent: Mutex<HashMap<String, Instant>>,
    /// (role, pod UID) of unanswered mints → sweeps left.
    suspects: Mutex<HashMap<(String, String), u32>>,
    /// How long an answered mint may still be in use (wrap TTL + push + Vault calls).
    keep_recent: Duration,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Single inserts and removes: a panic cannot leave the maps inconsistent.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Orphans {
    /// `keep_recent`: how long a minted secret_id may still be pushed and used.
    pub fn new(keep_recent: Duration) -> Arc<Self> {
        Arc::new(Self {
            gate: tokio::sync::RwLock::new(()),
            recent: Mutex::default(),
            suspects: Mutex::default(),
            keep_recent,
        })
    }

    /// Runs one mint for `pod_uid`: notes its accessor when answered, or the pod as a suspect
    /// when the request may have reached Vault without an answer.
    pub async fn mint(
        &self,
        role: &str,
        pod_uid: &str,
        mint: impl Future<Output = Result<WrappedSecretId, CallError>>,
    ) -> Result<WrappedSecretId, CallError> {
        let _shared = self.gate.read().await;
        let result = mint.await;
        match &result {
            Ok(w) => {
                lock(&self.recent).insert(w.secret_id_accessor.clone(), Instant::now());
            }
            Err(CallError::Vault(VaultError::Unreachable { .. })) => {
                lock(&self.suspects).insert((role.to_owned(), pod_uid.to_owned()), SWEEPS);
            }
            Err(_) => {}
        }
        result
    }

    /// Sweeps every [`SWEEP_INTERVAL`] while there are suspects and Vault answers. Never
    /// returns.
    pub async fn run(
        self: Arc<Self>,
        auth: Arc<VaultAuth>,
        vault: Vault,
        mount: String,
        admin: Arc<Admin>,
    ) {
        loop {
            tokio::time::sleep(SWEEP_INTERVAL).await;
            if lock(&self.suspects).is_empty() || auth.is_degraded() {
                continue;
            }
            if let Err(e) = self.sweep(&auth, &vault, &mount, &admin).await {
                warn!(error = %e, "looking for secret_ids of timed-out mints failed (the controller's policy needs list on auth/<mount>/role/+/secret-id/ and update on …/secret-id-accessor/lookup)");
            }
        }
    }

    /// One sweep over the suspects of now; each of them has one sweep less afterwards, whether
    /// it worked or not (a policy without `list` must not make this warn forever).
    async fn sweep(
        &self,
        auth: &VaultAuth,
        vault: &Vault,
        mount: &str,
        admin: &Admin,
    ) -> Result<(), CallError> {
        let _exclusive = self.gate.write().await;
        let suspects: Vec<(String, String)> = lock(&self.suspects).keys().cloned().collect();
        let result = self.sweep_once(&suspects, auth, vault, mount, admin).await;
        let mut left = lock(&self.suspects);
        for key in suspects {
            if let Some(n) = left.get_mut(&key) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    debug!(role = %key.0, pod.uid = %key.1, "done looking for orphaned secret_ids");
                    left.remove(&key);
                }
            }
        }
        result
    }

    async fn sweep_once(
        &self,
        suspects: &[(String, String)],
        auth: &VaultAuth,
        vault: &Vault,
        mount: &str,
        admin: &Admin,
    ) -> Result<(), CallError> {
        let recent: HashSet<String> = {
            let mut recent = lock(&self.recent);
            recent.retain(|_, at| at.elapsed() < self.keep_recent);
            recent.keys().cloned().collect()
        };
        let mut by_role: HashMap<&str, HashSet<&str>> = HashMap::new();
        for (role, uid) in suspects {
            by_role.entry(role).or_default().insert(uid);
        }
        for (role, uids) in by_role {
            let destroyed = destroy_secret_ids_of(auth, vault, mount, role, &uids, &recent).await?;
            if destroyed > 0 {
                admin.metrics.destroyed_n("orphaned", destroyed);
                info!(
                    role,
                    destroyed, "destroyed secret_ids minted by requests that timed out"
                );
            }
        }
        Ok(())
    }
}

/// Destroys the live secret_ids of `role` whose metadata names one of `uids` (`pod_uid`), except
/// the accessors in `keep` (deliveries still holding them). One piece of code for both sweeps: the
/// secret_ids of mints that timed out ([`Orphans`]) and those a dead leader left behind
/// (`crate::term`, before a new leader's first delivery). Returns how many were destroyed.
pub async fn destroy_secret_ids_of(
    auth: &VaultAuth,
    vault: &Vault,
    mount: &str,
    role: &str,
    uids: &HashSet<&str>,
    keep: &HashSet<String>,
) -> Result<usize, CallError> {
    let accessors = auth
        .with_token(|t| async move { vault.list_secret_id_accessors(&t, mount, role).await })
        .await?;
    let mut destroyed = 0;
    for accessor in accessors.iter().filter(|a| !keep.contains(*a)) {
        let metadata = auth
            .with_token(
                |t| async move { vault.secret_id_metadata(&t, mount, role, accessor).await },
            )
            .await?;
        let Some(uid) = metadata.as_ref().and_then(|m| m.get("pod_uid")) else {
            continue;
        };
        if !uids.contains(uid.as_str()) {
            continue;
        }
        let gone = auth
            .with_token(|t| async move {
                vault
                    .destroy_secret_id_by_accessor(&t, mount, role, accessor)
                    .await
            })
            .await?;
        if gone == Destroyed::Destroyed {
            debug!(role, pod.uid = %uid, secret_id_accessor = %accessor, "destroyed an orphaned secret_id");
            destroyed += 1;
        }
    }
    Ok(destroyed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use approle_shared::secret::WrappingToken;

    fn wrapped(accessor: &str) -> WrappedSecretId {
        WrappedSecretId {
            token: WrappingToken::new("w"),
            accessor: "wa".into(),
            secret_id_accessor: accessor.into(),
            ttl: 60,
            creation_path: "auth/approle/role/web/secret-id".into(),
        }
    }

    #[tokio::test]
    async fn an_unanswered_mint_makes_its_pod_a_suspect_and_an_answered_one_is_kept_out() {
        let o = Orphans::new(Duration::from_secs(60));
        let ok = o.mint("web", "uid-1", async { Ok(wrapped("acc-1")) }).await;
        assert!(ok.is_ok());
        assert!(lock(&o.recent).contains_key("acc-1"));
        assert!(lock(&o.suspects).is_empty());

        let timed_out = VaultError::Unreachable {
            op: "generate secret-id".into(),
            detail: "operation timed out".into(),
        };
        let err = o
            .mint("web", "uid-2", async { Err(timed_out.into()) })
            .await;
        assert!(err.is_err());
        assert_eq!(
            lock(&o.suspects).get(&("web".to_owned(), "uid-2".to_owned())),
            Some(&SWEEPS)
        );

        // Vault answered with a refusal: nothing was minted, nothing to look for.
        let refused = VaultError::Api {
            op: "generate secret-id".into(),
            status: 403,
            errors: vec!["permission denied".into()],
        };
        let _ = o.mint("web", "uid-3", async { Err(refused.into()) }).await;
        assert_eq!(lock(&o.suspects).len(), 1);
    }
}

//! Leadership terms: while this replica leads, it runs the delivery controller; when leadership is
//! lost (or the process stops) it ends gracefully and the replica waits to lead again. The
//! webhook, the admin port and the revocation watch ([`crate::revoke`]) run outside terms, on
//! every replica.
//!
//! ```text
//!   wait until leading ─▶ sweep orphaned secret_ids ─▶ Controller
//!          ▲                                              │ lost / stop: no new work,
//!          └────────────── (not stopping) ◀───────────────┘ in-flight deliveries end
//! ```
//!
//! Each term starts its own watch, so a new leader begins from a fresh list of the pods.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::pod::{self, Pod};
use approle_shared::annotations::{ROLE, RoleName};
use approle_shared::vault::Vault;
use futures::{FutureExt, StreamExt};
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use kube::runtime::controller::{Config, Controller};
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use tokio::sync::{oneshot, watch};
use tracing::{info, warn};

use crate::admin::Admin;
use crate::leader::Leadership;
use crate::policy::Authorizer;
use crate::vault_auth::VaultAuth;
use crate::{deliver, orphans};

/// What a term needs; `context` builds the delivery context around the term's pod cache.
pub struct Delivery<F> {
    /// Where the pods are watched.
    pub pods: Api<Pod>,
    /// Vault, for the orphan sweep.
    pub vault: Vault,
    /// The controller's Vault login.
    pub auth: Arc<VaultAuth>,
    /// AppRole mount.
    pub mount: String,
    /// Metrics and readiness.
    pub admin: Arc<Admin>,
    /// The authorization policy: a new one re-checks every pod.
    pub authorizer: Authorizer,
    /// Builds the delivery context for a term's pod cache.
    pub context: F,
}

/// Runs a term each time this replica leads, until `stop` fires.
pub async fn run<F>(delivery: Delivery<F>, leadership: Leadership, mut stop: watch::Receiver<bool>)
where
    F: Fn(Store<Pod>) -> deliver::Context,
{
    while leadership.acquired(&mut stop).await {
        one(&delivery, &leadership, &stop).await;
        if *stop.borrow() {
            return;
        }
    }
}

async fn one<F>(d: &Delivery<F>, leadership: &Leadership, stop: &watch::Receiver<bool>)
where
    F: Fn(Store<Pod>) -> deliver::Context,
{
    // A one-shot signal for the end of the term (the controller needs a Send + Sync future).
    let (end_controller, controller_ended) = oneshot::channel::<()>();
    let watcher_task = {
        let (leadership, mut stop) = (leadership.clone(), stop.clone());
        tokio::spawn(async move {
            tokio::select! {
                () = leadership.lost() => {}
                _ = stop.wait_for(|s| *s) => {}
            }
            let _ = end_controller.send(());
        })
    };
    sweep(d).await;
    let watch = watcher::Config::default().labels(&pod::managed_selector());
    // The cache holds the controller's own small `Pod` (pod.rs), decoded straight from the watch.
    let controller = Controller::new(d.pods.clone(), watch)
        // No limit here: the reconciles that deliver wait for a slot in order (deliver.rs).
        .with_config(Config::default().concurrency(0))
        // A new policy re-checks every pod at once (denied ones may be allowed now).
        .reconcile_all_on(d.authorizer.changes())
        // Vault answers again after an outage: pods that failed meanwhile go now, not after
        // their backoff.
        .reconcile_all_on(d.auth.recoveries())
        .graceful_shutdown_on(controller_ended.map(|_| ()));
    let synced = tokio::spawn(mark_synced(controller.store(), d.admin.clone()));
    let ctx = Arc::new(
        (d.context)(controller.store()).with_leadership(leadership.until_stopped(stop.clone())),
    );
    controller
        .run(deliver::reconcile, deliver::error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                warn!(error = %e, "controller");
            }
        })
        .await;
    synced.abort();
    watcher_task.abort();
    info!("delivery stopped: in-flight deliveries ended");
}

/// Marks the pod watch synced once the term's cache has listed.
async fn mark_synced(store: Store<Pod>, admin: Arc<Admin>) {
    // kube's store readiness is a oneshot that wakes only its most recent waiter, and the
    // controller's own applier waits on it too: poll again each second instead of waiting once
    // (a fresh wait returns at once after the first full list).
    loop {
        match tokio::time::timeout(Duration::from_secs(1), store.wait_until_ready()).await {
            Ok(Ok(())) => {
                info!("pod watch synced");
                admin.ready.watch_synced.store(true, Ordering::Relaxed);
                return;
            }
            Ok(Err(e)) => {
                warn!(error = %e, "pod watch never synced");
                return;
            }
            Err(_) => continue,
        }
    }
}

/// Destroys what a previous leader minted and never delivered, before delivering anything.
async fn sweep<F>(d: &Delivery<F>) {
    let listed = d
        .pods
        .list(&ListParams::default().labels(&pod::managed_selector()))
        .await;
    let pods = match listed {
        Ok(list) if list.items.is_empty() => return,
        Ok(list) => list.items,
        Err(e) => {
            warn!(error = %e, "listing pods for the orphan sweep failed; orphans expire by their TTL");
            return;
        }
    };
    // Secret_ids are single-use and consumed within moments of a push: one still alive for a
    // managed pod now belongs to a push the previous leader never finished. Pods not in the list
    // (gone: their secret_ids are bound to a dead IP) are left to the TTL.
    let mut by_role: BTreeMap<String, HashSet<&str>> = BTreeMap::new();
    for pod in &pods {
        if let (Some(role), Some(uid)) = (pod.annotations().get(ROLE), pod.metadata.uid.as_deref())
            && RoleName::parse(role).is_ok()
        {
            by_role.entry(role.clone()).or_default().insert(uid);
        }
    }
    for (role, uids) in &by_role {
        match orphans::destroy_secret_ids_of(
            &d.auth,
            &d.vault,
            &d.mount,
            role,
            uids,
            &HashSet::new(),
        )
        .await
        {
            Ok(0) => {}
            Ok(n) => {
                d.admin.metrics.destroyed_n("orphaned", n);
                info!(
                    role,
                    destroyed = n,
                    "destroyed secret_ids a previous leader minted and never delivered"
                );
            }
            Err(e) => warn!(role, error = %e, "orphan sweep failed; orphans expire by their TTL"),
        }
    }
}

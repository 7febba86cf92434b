//! Revocation on pod deletion: when a managed pod is deleted, the token it received is revoked by
//! the accessor recorded on it (`vault-approle.io/token-accessor`), so a credential never outlives
//! its pod. The same revocation ends a token that a newer one replaced: when a restarted init
//! container (a new run, after a lost pod sandbox) gets its own token, [`crate::deliver`] revokes
//! the previous run's once the new accessor is recorded.
//!
//! A separate watch of managed pods feeds this, not a finalizer: a finalizer would block every pod
//! deletion while the controller is down. What this cannot see (a pod deleted while no controller
//! runs) still ends by the token's own TTL. The watch asks for metadata only
//! (`PartialObjectMetadata`): name, namespace and the accessor annotation are all it reads, so the
//! API server sends, and the controller decodes, a fraction of each pod change.

use std::sync::Arc;
use std::time::Duration;

use crate::pod::Pod;
use approle_shared::annotations::TOKEN_ACCESSOR;
use approle_shared::vault::{Destroyed, Vault};
use futures::{Stream, StreamExt};
use kube::ResourceExt;
use kube::core::PartialObjectMeta;
use kube::runtime::watcher;
use tracing::{info, warn};

use crate::admin::Admin;
use crate::vault_auth::VaultAuth;

/// Consumes watch events and revokes the token of every deleted pod that has one.
pub async fn run(
    events: impl Stream<Item = Result<watcher::Event<PartialObjectMeta<Pod>>, watcher::Error>>,
    vault: Vault,
    auth: Arc<VaultAuth>,
    admin: Arc<Admin>,
) {
    let mut events = std::pin::pin!(events);
    while let Some(event) = events.next().await {
        let pod = match event {
            Ok(watcher::Event::Delete(pod)) => pod,
            Ok(_) => continue,
            Err(e) => {
                warn!(error = %e, "revocation watch");
                continue;
            }
        };
        let Some(accessor) = pod.annotations().get(TOKEN_ACCESSOR).cloned() else {
            continue;
        };
        revoke(
            &Owner::of(&pod),
            &accessor,
            Why::PodDeleted,
            &vault,
            &auth,
            &admin,
        )
        .await;
    }
}

/// The pod a token was delivered to.
#[derive(Debug, Clone)]
pub struct Owner {
    namespace: String,
    name: String,
    /// What the token's metadata must name (`pod_uid`, from the secret_id's).
    uid: String,
}

impl Owner {
    /// The pod as the cache or the metadata watch has it.
    pub fn of(pod: &impl ResourceExt) -> Self {
        Self {
            namespace: pod.namespace().unwrap_or_default(),
            name: pod.name_any(),
            uid: pod.uid().unwrap_or_default(),
        }
    }
}

/// Why a token is revoked: said in the log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// Its pod was deleted.
    PodDeleted,
    /// A newer run of the pod's init container got a token of its own.
    Replaced,
}

impl Why {
    fn what(self) -> &'static str {
        match self {
            Why::PodDeleted => "the token of a deleted pod",
            Why::Replaced => "the token of the init container's previous run",
        }
    }
}

/// Revokes the token with this accessor if it was delivered to `owner`, with a few quick
/// attempts; after that the token's TTL ends it anyway.
///
/// The accessor comes from an annotation, which whoever may edit the pod could have set to
/// another token's: the token's own metadata (an AppRole login copies the secret_id's, where the
/// controller wrote the pod's UID) must name this pod, or it is left alone.
pub async fn revoke(
    owner: &Owner,
    accessor: &str,
    why: Why,
    vault: &Vault,
    auth: &VaultAuth,
    admin: &Admin,
) {
    let (ns, name) = (owner.namespace.as_str(), owner.name.as_str());
    for attempt in 1..=3u32 {
        // `Some(outcome)` once revoked or already gone; `None` for a token not this pod's.
        let revoked = auth
            .with_token(|token| async move {
                match vault.token_metadata_by_accessor(&token, accessor).await? {
                    None => Ok(Some(Destroyed::AlreadyGone)),
                    Some(meta) if meta.get("pod_uid") != Some(&owner.uid) => Ok(None),
                    Some(_) => vault
                        .revoke_token_by_accessor(&token, accessor)
                        .await
                        .map(Some),
                }
            })
            .await;
        match revoked {
            Ok(Some(outcome)) => {
                admin.metrics.tokens_revoked.inc();
                info!(
                    pod.namespace = ns,
                    pod.name = name,
                    token_accessor = accessor,
                    already_gone = outcome == Destroyed::AlreadyGone,
                    "revoked {}",
                    why.what()
                );
                return;
            }
            Ok(None) => {
                warn!(
                    pod.namespace = ns,
                    pod.name = name,
                    token_accessor = accessor,
                    "not revoking {}: the accessor recorded on the pod is of a token that was not delivered to it (was the annotation edited?)",
                    why.what()
                );
                return;
            }
            Err(e) => {
                admin.metrics.vault_errors.inc();
                warn!(pod.namespace = ns, pod.name = name, token_accessor = accessor, attempt, error = %e, "revoking {} failed", why.what());
                tokio::time::sleep(Duration::from_secs(u64::from(attempt))).await;
            }
        }
    }
}

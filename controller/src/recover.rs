//! Picking up after another replica: what a new leader needs to finish its predecessor's work
//! without delivering twice.
//!
//! ```text
//!  old leader: mint ─▶ push ─200─▶ Event ─▶ annotate        (killed anywhere in this line)
//!                          │
//!  init container: login, write files, termination message {"status":"delivered","token_accessor"}
//!                          ▼ exits 0
//!  new leader: InitContainerEnded, no status annotation
//!      ─▶ accessor from the termination message ─▶ Event (only if none exists) ─▶ annotate
//! ```
//!
//! A secret_id minted by a leader that died before its push landed is destroyed by the orphan
//! sweep the new leader runs before its first delivery (see [`sweep_orphans`]).

use std::collections::BTreeSet;

use approle_shared::INIT_CONTAINER_NAME;
use approle_shared::annotations::{ROLE, RoleName};
use approle_shared::push::TerminationMessage;
use approle_shared::secret::ClientToken;
use approle_shared::vault::{Destroyed, Vault, VaultError};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::events::v1::Event;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use tracing::{debug, info, warn};

/// `Some` when the pod's init container ended successfully (it holds a delivery), with the
/// accessor its termination message reported, if any (an older init container leaves none).
pub fn delivered(pod: &Pod) -> Option<Option<String>> {
    let terminated = pod
        .status
        .as_ref()?
        .init_container_statuses
        .as_ref()?
        .iter()
        .find(|c| c.name == INIT_CONTAINER_NAME)?
        .state
        .as_ref()?
        .terminated
        .as_ref()?;
    if terminated.exit_code != 0 {
        return None;
    }
    Some(
        terminated
            .message
            .as_deref()
            .and_then(TerminationMessage::parse)
            .map(|m| m.token_accessor),
    )
}

/// How many Events with `reason` the pod has (events.k8s.io, by the pod's UID).
pub async fn delivered_events(
    client: &kube::Client,
    pod: &Pod,
    reason: &str,
) -> Result<usize, kube::Error> {
    let api: Api<Event> = Api::namespaced(client.clone(), &pod.namespace().unwrap_or_default());
    let selector = format!(
        "regarding.uid={},reason={reason}",
        pod.uid().unwrap_or_default()
    );
    let list = api.list(&ListParams::default().fields(&selector)).await?;
    Ok(list.items.len())
}

/// Destroys every live secret_id that this controller minted for one of `pods` (its metadata
/// names the pod's UID). Run by a new leader before its first delivery: secret_ids are single-use
/// and consumed by the init container's login within moments of the push, so one still alive then
/// belongs to a push its predecessor never finished. Secret_ids of pods not in the list (another
/// installation's, or of pods already gone: bound to a dead IP) are left to their TTL. Returns how
/// many were destroyed.
pub async fn sweep_orphans(
    vault: &Vault,
    token: &ClientToken,
    mount: &str,
    pods: &[Pod],
) -> Result<usize, VaultError> {
    let uids: BTreeSet<String> = pods.iter().filter_map(|p| p.uid()).collect();
    let roles: BTreeSet<String> = pods
        .iter()
        .filter_map(|p| p.annotations().get(ROLE).cloned())
        .filter(|r| RoleName::parse(r).is_ok())
        .collect();
    let mut destroyed = 0;
    for role in &roles {
        for accessor in vault.list_secret_id_accessors(token, mount, role).await? {
            let metadata = match vault
                .lookup_secret_id_accessor(token, mount, role, &accessor)
                .await
            {
                Ok(Some(m)) => m,
                // Used or expired between the list and the lookup.
                Ok(None) => continue,
                Err(e) => {
                    warn!(%role, secret_id_accessor = %accessor, error = %e, "looking up a secret_id failed");
                    continue;
                }
            };
            if !metadata.get("pod_uid").is_some_and(|u| uids.contains(u)) {
                continue;
            }
            match vault
                .destroy_secret_id_by_accessor(token, mount, role, &accessor)
                .await
            {
                Ok(Destroyed::Destroyed) => {
                    info!(%role, secret_id_accessor = %accessor, "destroyed a secret_id a previous leader minted and never delivered");
                    destroyed += 1;
                }
                Ok(Destroyed::AlreadyGone) => {
                    debug!(secret_id_accessor = %accessor, "already gone")
                }
                Err(e) => {
                    warn!(%role, secret_id_accessor = %accessor, error = %e, "destroying an orphaned secret_id failed")
                }
            }
        }
    }
    Ok(destroyed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(state: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "web-0", "namespace": "ns1", "uid": "u1"},
            "spec": {"containers": [{"name": "app", "image": "app"}]},
            "status": {"initContainerStatuses": [{
                "name": INIT_CONTAINER_NAME, "image": "approle-init", "imageID": "",
                "ready": false, "restartCount": 0, "state": state}]},
        }))
        .expect("pod")
    }

    #[test]
    fn only_a_successful_init_container_counts_and_its_message_gives_the_accessor() {
        let message = r#"{"status":"delivered","token_accessor":"acc-1"}"#;
        let empty = r#"{"status":"delivered","token_accessor":""}"#;
        let exit = |code: i32, message: Option<&str>| json!({"terminated": {"exitCode": code, "message": message}});
        let cases = [
            (
                "exit 0 with message",
                exit(0, Some(message)),
                Some(Some("acc-1")),
            ),
            ("exit 0 without message", exit(0, None), Some(None)),
            ("failed", exit(5, Some(message)), None),
            ("other message", exit(0, Some("bye")), Some(None)),
            ("empty accessor", exit(0, Some(empty)), Some(None)),
            ("running", json!({"running": {}}), None),
        ];
        for (name, state, want) in cases {
            let got = delivered(&pod(state));
            assert_eq!(got.as_ref().map(Option::as_deref), want, "{name}");
        }
    }
}

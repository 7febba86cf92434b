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
//! sweep the new leader runs before its first delivery (`crate::term`, with
//! [`crate::orphans::destroy_secret_ids_of`]).

use crate::pod::Pod;
use approle_shared::INIT_CONTAINER_NAME;
use approle_shared::push::TerminationMessage;
use k8s_openapi::api::events::v1::Event;
use kube::ResourceExt;
use kube::api::{Api, ListParams};

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

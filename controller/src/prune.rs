//! What the controller keeps of a watched pod.
//!
//! The pod cache holds every managed pod of the cluster, so it keeps only what a delivery reads:
//! identity (name, namespace, UID, resourceVersion), our annotations and labels, the deletion
//! timestamp, the service account and node, and of the status the pod IP, the phase and the
//! init container's own status. A full pod is 10–20 KiB (managed fields, container specs, the
//! injected env with the CA PEM, `kubectl.kubernetes.io/last-applied-configuration`); what is left
//! is well under 1 KiB.
//!
//! ```text
//!   watch event ──▶ prune (here) ──▶ reflector store ──▶ reconcile
//! ```

use approle_shared::INIT_CONTAINER_NAME;
use k8s_openapi::api::core::v1::{Pod, PodSpec, PodStatus};

/// Annotation kubectl writes with the whole last-applied object: never read, often the biggest.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Strips `pod` down to what [`crate::decide`] and the delivery read.
pub fn prune(pod: &mut Pod) {
    let meta = &mut pod.metadata;
    meta.managed_fields = None;
    meta.owner_references = None;
    meta.finalizers = None;
    meta.generate_name = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove(LAST_APPLIED);
    }
    if let Some(spec) = pod.spec.take() {
        pod.spec = Some(PodSpec {
            service_account_name: spec.service_account_name,
            node_name: spec.node_name,
            ..PodSpec::default()
        });
    }
    if let Some(status) = pod.status.take() {
        pod.status = Some(PodStatus {
            phase: status.phase,
            pod_ip: status.pod_ip,
            init_container_statuses: status.init_container_statuses.map(|all| {
                all.into_iter()
                    .filter(|c| c.name == INIT_CONTAINER_NAME)
                    .map(|mut c| {
                        c.image = String::new();
                        c.image_id = String::new();
                        c.last_state = None;
                        c.volume_mounts = None;
                        c.resources = None;
                        c.allocated_resources = None;
                        c
                    })
                    .collect()
            }),
            ..PodStatus::default()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::{Decision, decide};
    use serde_json::json;

    fn full_pod() -> Pod {
        let ca = format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----",
            "A".repeat(900)
        );
        let mut pod: Pod = serde_json::from_value(json!({
            "metadata": {
                "name": "web-0", "namespace": "ns1", "uid": "u1", "resourceVersion": "42",
                "generateName": "web-",
                "annotations": {
                    "vault-approle.io/role": "web",
                    LAST_APPLIED: "x".repeat(4000),
                },
                "labels": {"app": "web"},
                "managedFields": [{"manager": "kubectl", "operation": "Update", "fieldsType": "FieldsV1",
                                   "fieldsV1": {"f:metadata": {"f:labels": {"f:app": {}}}}}],
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-1", "uid": "r1"}],
            },
            "spec": {
                "serviceAccountName": "api", "nodeName": "node-1",
                "initContainers": [{"name": INIT_CONTAINER_NAME, "image": "approle-init",
                    "env": [{"name": "APPROLE_INIT_CLIENT_CA_PEM", "value": ca}]}],
                "containers": [{"name": "app", "image": "app", "env": [{"name": "A", "value": "b".repeat(2000)}]}],
                "volumes": [{"name": "vault-approle", "emptyDir": {"medium": "Memory"}}],
            },
        }))
        .expect("pod");
        let status = json!({
            "phase": "Pending", "podIP": "127.0.0.5",
            "conditions": [{"type": "Initialized", "status": "False"}],
            "containerStatuses": [{"name": "app", "image": "app", "imageID": "", "ready": false, "restartCount": 0}],
            "initContainerStatuses": [{
                "name": INIT_CONTAINER_NAME, "image": "approle-init", "imageID": "sha256:0", "ready": false,
                "restartCount": 2, "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}}],
        });
        pod.status = Some(serde_json::from_value(status).expect("status"));
        pod
    }

    #[test]
    fn pruned_pod_decides_the_same_and_is_small() {
        let full = full_pod();
        let mut pruned = full.clone();
        prune(&mut pruned);
        assert_eq!(decide(&pruned), decide(&full));
        assert!(matches!(decide(&pruned), Decision::Deliver { .. }));
        let size = |p: &Pod| serde_json::to_vec(p).expect("json").len();
        assert!(size(&full) > 7 * 1024, "full pod {} bytes", size(&full));
        assert!(size(&pruned) < 1024, "pruned pod {} bytes", size(&pruned));

        let spec = pruned.spec.as_ref().expect("spec");
        assert_eq!(spec.service_account_name.as_deref(), Some("api"));
        assert_eq!(spec.node_name.as_deref(), Some("node-1"));
        assert_eq!(pruned.metadata.uid.as_deref(), Some("u1"));
        assert_eq!(pruned.metadata.resource_version.as_deref(), Some("42"));
        let init = &pruned
            .status
            .as_ref()
            .expect("status")
            .init_container_statuses;
        assert_eq!(init.as_ref().map(|c| c[0].restart_count), Some(2));
    }
}

//! The controller's own view of a pod: only the fields it reads.
//!
//! The pod cache holds every managed pod of the cluster. A `k8s_openapi` `Pod` costs about
//! 3.5 KiB in memory even when pruned (its structs have dozens of `Option` fields, empty or not),
//! and a full one arrives at 10–20 KiB of JSON (managed fields, container specs, the injected env
//! with the CA PEM, `kubectl.kubernetes.io/last-applied-configuration`). So the watch decodes
//! straight into [`Pod`] here, which keeps:
//!
//! - identity: name, namespace, UID, resourceVersion (Events and patches need them);
//! - the annotations, but not kubectl's last-applied copy of the whole object;
//! - the deletion timestamp;
//! - of the spec, the service account and the node;
//! - of the status, the pod IP and the status of our init container only.
//!
//! Everything else is skipped while parsing, so it is never allocated.
//!
//! ```text
//!   watch event JSON ──▶ Pod (here, fields above) ──▶ reflector store ──▶ reconcile
//! ```
//!
//! The type is a Kubernetes resource (`v1` `Pod`) for kube: `Api<Pod>` lists, watches and
//! patches pods with it. The admission webhook, which must see whole pods, uses `k8s_openapi`'s.

use std::collections::BTreeMap;

use approle_shared::{INIT_CONTAINER_NAME, MANAGED_LABEL};
use k8s_openapi::api::core::v1::ContainerState;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use serde::{Deserialize, Deserializer, Serialize};

/// The label selector of managed pods, which the controller's watches and lists ask for.
pub fn managed_selector() -> String {
    format!("{MANAGED_LABEL}=true")
}

/// Annotation kubectl writes with the whole last-applied object: never read, often the biggest.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// A pod, as much of it as a delivery reads.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Pod {
    /// Name, namespace, UID, resourceVersion, annotations, deletion timestamp; nothing else.
    #[serde(default, deserialize_with = "kept_metadata")]
    pub metadata: ObjectMeta,
    /// The service account and the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<PodSpec>,
    /// The pod IP and the init container's status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<PodStatus>,
}

/// What the controller reads of a pod's spec.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSpec {
    /// `spec.serviceAccountName` (absent means `default`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    /// `spec.nodeName`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
}

/// What the controller reads of a pod's status.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStatus {
    /// `status.podIP`.
    #[serde(default, rename = "podIP", skip_serializing_if = "Option::is_none")]
    pub pod_ip: Option<String>,
    /// The status of [`INIT_CONTAINER_NAME`] only; other init containers are dropped.
    #[serde(
        default,
        deserialize_with = "ours_only",
        skip_serializing_if = "Option::is_none"
    )]
    pub init_container_statuses: Option<Vec<ContainerStatus>>,
}

/// What the controller reads of a container's status.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerStatus {
    /// The container's name.
    pub name: String,
    /// The runtime's ID of the current run (changes on every restart).
    #[serde(
        default,
        rename = "containerID",
        skip_serializing_if = "Option::is_none"
    )]
    pub container_id: Option<String>,
    /// Restarts so far.
    #[serde(default)]
    pub restart_count: i32,
    /// Waiting, running or terminated (with the termination message).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<ContainerState>,
}

impl Pod {
    /// The service account the pod runs as (`default` when it names none).
    pub fn service_account(&self) -> &str {
        crate::policy::service_account(
            self.spec
                .as_ref()
                .and_then(|s| s.service_account_name.as_deref()),
        )
    }
}

impl k8s_openapi::Resource for Pod {
    const API_VERSION: &'static str =
        <k8s_openapi::api::core::v1::Pod as k8s_openapi::Resource>::API_VERSION;
    const GROUP: &'static str = <k8s_openapi::api::core::v1::Pod as k8s_openapi::Resource>::GROUP;
    const KIND: &'static str = <k8s_openapi::api::core::v1::Pod as k8s_openapi::Resource>::KIND;
    const VERSION: &'static str =
        <k8s_openapi::api::core::v1::Pod as k8s_openapi::Resource>::VERSION;
    const URL_PATH_SEGMENT: &'static str =
        <k8s_openapi::api::core::v1::Pod as k8s_openapi::Resource>::URL_PATH_SEGMENT;
    type Scope = k8s_openapi::NamespaceResourceScope;
}

impl k8s_openapi::Metadata for Pod {
    type Ty = ObjectMeta;

    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// Decodes `metadata`, keeping only what [`Pod`] documents.
fn kept_metadata<'de, D: Deserializer<'de>>(d: D) -> Result<ObjectMeta, D::Error> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Kept {
        name: Option<String>,
        namespace: Option<String>,
        uid: Option<String>,
        resource_version: Option<String>,
        annotations: Option<BTreeMap<String, String>>,
        deletion_timestamp: Option<Time>,
    }
    let Kept {
        name,
        namespace,
        uid,
        resource_version,
        mut annotations,
        deletion_timestamp,
    } = Kept::deserialize(d)?;
    if let Some(a) = annotations.as_mut() {
        a.remove(LAST_APPLIED);
    }
    Ok(ObjectMeta {
        name,
        namespace,
        uid,
        resource_version,
        annotations,
        deletion_timestamp,
        ..ObjectMeta::default()
    })
}

/// Decodes `initContainerStatuses`, keeping only ours.
fn ours_only<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<ContainerStatus>>, D::Error> {
    let all = Option::<Vec<ContainerStatus>>::deserialize(d)?;
    Ok(all.map(|all| {
        all.into_iter()
            .filter(|c| c.name == INIT_CONTAINER_NAME)
            .collect()
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::{Decision, decide};
    use serde_json::json;

    /// A pod as the API server sends it: managed fields, specs, a big env, last-applied.
    fn full_pod() -> serde_json::Value {
        let ca = format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----",
            "A".repeat(900)
        );
        let mut pod = json!({
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
        });
        pod["status"] = json!({
            "phase": "Pending", "podIP": "127.0.0.5",
            "conditions": [{"type": "Initialized", "status": "False"}],
            "containerStatuses": [{"name": "app", "image": "app", "imageID": "", "ready": false, "restartCount": 0}],
            "initContainerStatuses": [{
                "name": INIT_CONTAINER_NAME, "image": "approle-init", "imageID": "sha256:0", "ready": false,
                "restartCount": 2, "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}}],
        });
        pod
    }

    #[test]
    fn a_full_pod_decodes_to_what_a_delivery_reads_and_nothing_else() {
        let mut full = full_pod();
        full["status"]["initContainerStatuses"]
            .as_array_mut()
            .expect("statuses")
            .insert(
                0,
                json!({"name": "migrate", "image": "m", "imageID": "", "ready": false,
                       "restartCount": 7, "state": {"terminated": {"exitCode": 0}}}),
            );
        let pod: Pod = serde_json::from_value(full.clone()).expect("decodes");

        match decide(&pod) {
            Decision::Deliver { spec, pod_ip } => {
                assert_eq!(spec.role.as_str(), "web");
                assert_eq!(pod_ip.to_string(), "127.0.0.5");
            }
            other => panic!("expected Deliver, got {other:?}"),
        }
        let meta = &pod.metadata;
        assert_eq!(meta.name.as_deref(), Some("web-0"));
        assert_eq!(meta.namespace.as_deref(), Some("ns1"));
        assert_eq!(meta.uid.as_deref(), Some("u1"));
        assert_eq!(meta.resource_version.as_deref(), Some("42"));
        let annotations = meta.annotations.as_ref().expect("annotations");
        assert_eq!(
            annotations.keys().collect::<Vec<_>>(),
            ["vault-approle.io/role"]
        );
        assert!(meta.labels.is_none() && meta.managed_fields.is_none());
        assert!(meta.owner_references.is_none() && meta.generate_name.is_none());
        let spec = pod.spec.as_ref().expect("spec");
        assert_eq!(spec.service_account_name.as_deref(), Some("api"));
        assert_eq!(spec.node_name.as_deref(), Some("node-1"));
        let init = pod
            .status
            .as_ref()
            .and_then(|s| s.init_container_statuses.as_deref())
            .expect("init statuses");
        assert_eq!(init.len(), 1, "only ours: {init:?}");
        assert_eq!(
            (init[0].name.as_str(), init[0].restart_count),
            (INIT_CONTAINER_NAME, 2)
        );

        let size = |v: &serde_json::Value| serde_json::to_vec(v).expect("json").len();
        let kept = serde_json::to_value(&pod).expect("encodes");
        assert!(size(&full) > 7 * 1024, "full pod {} bytes", size(&full));
        assert!(size(&kept) < 512, "kept {} bytes: {kept}", size(&kept));
    }

    #[test]
    fn it_is_the_v1_pod_resource_for_kube() {
        use kube::Resource as _;
        assert_eq!(Pod::kind(&()), "Pod");
        assert_eq!(Pod::api_version(&()), "v1");
        assert_eq!(
            Pod::url_path(&(), Some("ns1")),
            "/api/v1/namespaces/ns1/pods"
        );
        // What kube's Api<Pod> gets back from a patch or a watch: k8s_openapi's encoding.
        let typed: k8s_openapi::api::core::v1::Pod =
            serde_json::from_value(full_pod()).expect("k8s pod");
        let pod: Pod = serde_json::from_value(serde_json::to_value(&typed).expect("encodes"))
            .expect("decodes");
        assert_eq!(
            pod,
            serde_json::from_value::<Pod>(full_pod()).expect("decodes")
        );
    }
}

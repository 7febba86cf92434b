//! What to do with one pod: a pure function of the pod, so every case is a table row.

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::pod::Pod;
use approle_shared::INIT_CONTAINER_NAME;
use approle_shared::annotations::{AnnotationErrors, InjectionSpec, STATUS};

/// Value of the status annotation once a pod holds its token.
pub const STATUS_DELIVERED: &str = "delivered";

/// The decision for one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// No `vault-approle.io/role`: not ours.
    NotOptedIn,
    /// Annotations are malformed: an Event, no Vault call.
    Invalid(AnnotationErrors),
    /// The pod already holds its token (status annotation).
    Delivered,
    /// Being deleted.
    Terminating,
    /// Waiting for the pod IP or for the init container to run.
    Wait(&'static str),
    /// The init container ran and ended without our delivery: nothing to push to.
    InitContainerEnded,
    /// Push now.
    Deliver {
        /// What the pod asked for.
        spec: InjectionSpec,
        /// Where to push.
        pod_ip: IpAddr,
    },
}

/// Decides what to do with `pod`.
pub fn decide(pod: &Pod) -> Decision {
    let empty = BTreeMap::new();
    let annotations = pod.metadata.annotations.as_ref().unwrap_or(&empty);
    let spec = match InjectionSpec::from_annotations(annotations) {
        Ok(None) => return Decision::NotOptedIn,
        Ok(Some(spec)) => spec,
        Err(errors) => return Decision::Invalid(errors),
    };
    if annotations.get(STATUS).map(String::as_str) == Some(STATUS_DELIVERED)
        // A restarted init container (a new run) asks again: see the crash-loop backoff.
        && !crate::redeliver::restarted_since_delivery(pod)
    {
        return Decision::Delivered;
    }
    if pod.metadata.deletion_timestamp.is_some() {
        return Decision::Terminating;
    }
    let status = pod.status.as_ref();
    let init = status
        .and_then(|s| s.init_container_statuses.as_ref())
        .and_then(|all| all.iter().find(|c| c.name == INIT_CONTAINER_NAME));
    let Some(init) = init else {
        return Decision::Wait("init container has no status yet");
    };
    let state = init.state.as_ref();
    if state.and_then(|s| s.terminated.as_ref()).is_some() {
        return Decision::InitContainerEnded;
    }
    if state.and_then(|s| s.running.as_ref()).is_none() {
        return Decision::Wait("init container is not running yet");
    }
    let ip = status
        .and_then(|s| s.pod_ip.as_deref())
        .filter(|ip| !ip.is_empty());
    let Some(ip) = ip else {
        return Decision::Wait("pod has no IP yet");
    };
    match ip.parse() {
        Ok(pod_ip) => Decision::Deliver { spec, pod_ip },
        Err(_) => Decision::Wait("pod IP is not an IP address"),
    }
}

/// True when the pod (still) runs the init container and waits for a push: used to stop retrying
/// for pods that went away or moved on.
pub fn still_wants_delivery(pod: &Pod) -> bool {
    matches!(decide(pod), Decision::Deliver { .. })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(annotations: serde_json::Value, status: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "web-0", "namespace": "ns1", "uid": "u1", "annotations": annotations},
            "spec": {"containers": [{"name": "app", "image": "app"}]},
            "status": status,
        }))
        .expect("pod")
    }

    fn running(ip: &str) -> serde_json::Value {
        json!({"podIP": ip, "initContainerStatuses": [{
            "name": INIT_CONTAINER_NAME, "image": "approle-init", "imageID": "", "ready": false,
            "restartCount": 0, "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}}]})
    }

    type Check = fn(&Decision) -> bool;

    #[test]
    fn decisions_follow_the_pod() {
        let role = json!({"vault-approle.io/role": "web"});
        let cases: Vec<(&str, Pod, Check)> = vec![
            (
                "no annotations",
                pod(json!({}), running("127.0.0.5")),
                |d| *d == Decision::NotOptedIn,
            ),
            (
                "misspelled key",
                pod(json!({"vault-approle.io/rol": "web"}), running("127.0.0.5")),
                |d| matches!(d, Decision::Invalid(_)),
            ),
            (
                "bad role",
                pod(
                    json!({"vault-approle.io/role": "a/b"}),
                    running("127.0.0.5"),
                ),
                |d| matches!(d, Decision::Invalid(_)),
            ),
            (
                "already delivered",
                pod(
                    json!({"vault-approle.io/role": "web", "vault-approle.io/status": "delivered"}),
                    running("127.0.0.5"),
                ),
                |d| *d == Decision::Delivered,
            ),
            (
                "delivered, and the same init-container run still running",
                pod(
                    json!({"vault-approle.io/role": "web", "vault-approle.io/status": "delivered",
                           "vault-approle.io/deliveries": "1",
                           "vault-approle.io/last-delivery": "2026-01-01T00:00:00Z restart-0"}),
                    running("127.0.0.5"),
                ),
                |d| *d == Decision::Delivered,
            ),
            (
                "delivered, then the init container runs again (restarted sandbox)",
                pod(
                    json!({"vault-approle.io/role": "web", "vault-approle.io/status": "delivered",
                           "vault-approle.io/deliveries": "1",
                           "vault-approle.io/last-delivery": "2026-01-01T00:00:00Z containerd://old"}),
                    running("127.0.0.5"),
                ),
                |d| matches!(d, Decision::Deliver { .. }),
            ),
            ("no status", pod(role.clone(), json!({})), |d| {
                matches!(d, Decision::Wait(_))
            }),
            (
                "init waiting",
                pod(
                    role.clone(),
                    json!({"podIP": "127.0.0.5", "initContainerStatuses": [{
                        "name": INIT_CONTAINER_NAME, "image": "i", "imageID": "", "ready": false,
                        "restartCount": 0, "state": {"waiting": {"reason": "PodInitializing"}}}]}),
                ),
                |d| matches!(d, Decision::Wait(_)),
            ),
            ("running without IP", pod(role.clone(), running("")), |d| {
                matches!(d, Decision::Wait(_))
            }),
            (
                "init ended",
                pod(
                    role.clone(),
                    json!({"podIP": "127.0.0.5", "initContainerStatuses": [{
                        "name": INIT_CONTAINER_NAME, "image": "i", "imageID": "", "ready": false,
                        "restartCount": 0, "state": {"terminated": {"exitCode": 0}}}]}),
                ),
                |d| *d == Decision::InitContainerEnded,
            ),
            (
                "running with IP",
                pod(role.clone(), running("127.0.0.5")),
                |d| matches!(d, Decision::Deliver { pod_ip, .. } if pod_ip.to_string() == "127.0.0.5"),
            ),
        ];
        for (name, pod, check) in cases {
            let d = decide(&pod);
            assert!(check(&d), "{name}: got {d:?}");
        }
    }

    #[test]
    fn terminating_pods_are_not_delivered() {
        let mut p = pod(
            json!({"vault-approle.io/role": "web"}),
            running("127.0.0.5"),
        );
        p.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
        ));
        assert_eq!(decide(&p), Decision::Terminating);
        assert!(!still_wants_delivery(&p));
    }
}

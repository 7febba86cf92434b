//! What injection adds to a pod: the `vault-approle-init` init container (first among init
//! containers), a tmpfs `emptyDir` volume, read-only mounts of it in the selected containers, and
//! the managed label. A pure function of the pod, the parsed annotations and the injector settings,
//! so the admission webhook and the test harness build exactly the same pod.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, Container, EmptyDirVolumeSource, EnvVar, EnvVarSource, ObjectFieldSelector, Pod,
    ResourceRequirements, SeccompProfile, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::annotations::InjectionSpec;
use crate::{INIT_CONTAINER_NAME, MANAGED_LABEL};

/// Name of the credential volume.
pub const VOLUME_NAME: &str = "vault-approle";

/// Injector settings (from the controller's configuration).
#[derive(Debug, Clone)]
pub struct InjectConfig {
    /// Image of the init container.
    pub image: String,
    /// Vault address as seen from pods.
    pub vault_addr: String,
    /// PEM the init container trusts for Vault, if not the system roots.
    pub vault_ca_pem: Option<String>,
    /// PEM of the injector CA (the init container accepts pushes only from its certificates).
    pub injector_ca_pem: String,
    /// AppRole mount.
    pub approle_mount: String,
    /// How long the init container waits for a push, e.g. `5m`.
    pub timeout: String,
    /// CPU/memory requests and limits of the init container.
    pub resources: ResourceRequirements,
}

/// Small requests and limits: the init container is a ~5 MiB static binary doing four HTTPS calls.
pub fn default_resources() -> ResourceRequirements {
    let q = |s: &str| Quantity(s.to_owned());
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".into(), q("10m")),
            ("memory".into(), q("16Mi")),
        ])),
        limits: Some(BTreeMap::from([
            ("cpu".into(), q("100m")),
            ("memory".into(), q("32Mi")),
        ])),
        ..Default::default()
    }
}

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        value_from: None,
    }
}

/// The init container for `spec`.
pub fn init_container(spec: &InjectionSpec, cfg: &InjectConfig) -> Container {
    let mut env_vars = vec![
        EnvVar {
            name: "APPROLE_INIT_POD_UID".into(),
            value: None,
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    api_version: Some("v1".into()),
                    field_path: "metadata.uid".into(),
                }),
                ..Default::default()
            }),
        },
        env("APPROLE_INIT_ROLE", spec.role.as_str()),
        env("APPROLE_INIT_APPROLE_MOUNT", &cfg.approle_mount),
        env("APPROLE_INIT_VAULT_ADDR", &cfg.vault_addr),
        env("APPROLE_INIT_CLIENT_CA_PEM", &cfg.injector_ca_pem),
        env("APPROLE_INIT_LISTEN", format!("0.0.0.0:{}", spec.port)),
        env("APPROLE_INIT_OUT_DIR", &spec.mount_path),
        env("APPROLE_INIT_TIMEOUT", &cfg.timeout),
    ];
    if let Some(pem) = &cfg.vault_ca_pem {
        env_vars.push(env("APPROLE_INIT_VAULT_CACERT_PEM", pem));
    }
    Container {
        name: INIT_CONTAINER_NAME.into(),
        image: Some(cfg.image.clone()),
        env: Some(env_vars),
        ports: Some(vec![k8s_openapi::api::core::v1::ContainerPort {
            name: Some("approle-push".into()),
            container_port: i32::from(spec.port),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        resources: Some(cfg.resources.clone()),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: None,
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                localhost_profile: None,
            }),
            ..Default::default()
        }),
        volume_mounts: Some(vec![VolumeMount {
            name: VOLUME_NAME.into(),
            mount_path: spec.mount_path.clone(),
            ..Default::default()
        }]),
        ..Default::default()
    }
}

/// The tmpfs volume: memory-backed so the token never touches a disk.
pub fn volume() -> Volume {
    Volume {
        name: VOLUME_NAME.into(),
        empty_dir: Some(EmptyDirVolumeSource {
            medium: Some("Memory".into()),
            size_limit: Some(Quantity("1Mi".into())),
        }),
        ..Default::default()
    }
}

/// Adds everything to `pod` in place. A pod that already has the init container is left as it is.
pub fn inject(pod: &mut Pod, spec: &InjectionSpec, cfg: &InjectConfig) {
    let labels = pod.metadata.labels.get_or_insert_with(BTreeMap::new);
    labels.insert(MANAGED_LABEL.into(), "true".into());
    let Some(pod_spec) = pod.spec.as_mut() else {
        return;
    };
    let inits = pod_spec.init_containers.get_or_insert_with(Vec::new);
    if inits.iter().any(|c| c.name == INIT_CONTAINER_NAME) {
        return;
    }
    inits.insert(0, init_container(spec, cfg));
    pod_spec.volumes.get_or_insert_with(Vec::new).push(volume());
    for c in pod_spec.containers.iter_mut() {
        let selected = spec
            .containers
            .as_ref()
            .is_none_or(|names| names.contains(&c.name));
        if selected {
            c.volume_mounts
                .get_or_insert_with(Vec::new)
                .push(VolumeMount {
                    name: VOLUME_NAME.into(),
                    mount_path: spec.mount_path.clone(),
                    read_only: Some(true),
                    ..Default::default()
                });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cfg() -> InjectConfig {
        InjectConfig {
            image: "approle-init:dev".into(),
            vault_addr: "https://vault:8200".into(),
            vault_ca_pem: None,
            injector_ca_pem: "CA".into(),
            approle_mount: "approle".into(),
            timeout: "5m".into(),
            resources: default_resources(),
        }
    }

    fn pod(annotations: serde_json::Value) -> (Pod, InjectionSpec) {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "annotations": annotations},
            "spec": {"initContainers": [{"name": "migrate", "image": "m"}],
                     "containers": [{"name": "app", "image": "a"}, {"name": "proxy", "image": "p"}]}
        }))
        .expect("pod");
        let spec = InjectionSpec::from_annotations(pod.metadata.annotations.as_ref().expect("a"))
            .expect("valid")
            .expect("opted in");
        (pod, spec)
    }

    #[test]
    fn init_container_goes_first_and_volume_is_tmpfs() {
        let (mut p, spec) = pod(json!({"vault-approle.io/role": "web"}));
        inject(&mut p, &spec, &cfg());
        let s = p.spec.as_ref().expect("spec");
        let inits = s.init_containers.as_ref().expect("inits");
        assert_eq!(inits[0].name, INIT_CONTAINER_NAME);
        assert_eq!(inits[1].name, "migrate");
        let vol = &s.volumes.as_ref().expect("volumes")[0];
        assert_eq!(
            vol.empty_dir.as_ref().and_then(|e| e.medium.as_deref()),
            Some("Memory")
        );
        for c in &s.containers {
            let m = &c.volume_mounts.as_ref().expect("mounts")[0];
            assert_eq!(m.read_only, Some(true));
            assert_eq!(m.mount_path, "/var/run/secrets/vault-approle");
        }
        assert_eq!(
            p.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(MANAGED_LABEL))
                .map(String::as_str),
            Some("true")
        );
    }

    #[test]
    fn only_selected_containers_get_the_mount() {
        let (mut p, spec) =
            pod(json!({"vault-approle.io/role": "web", "vault-approle.io/containers": "app"}));
        inject(&mut p, &spec, &cfg());
        let s = p.spec.as_ref().expect("spec");
        assert!(s.containers[0].volume_mounts.is_some());
        assert!(s.containers[1].volume_mounts.is_none());
    }

    #[test]
    fn injecting_twice_changes_nothing() {
        let (mut p, spec) = pod(json!({"vault-approle.io/role": "web"}));
        inject(&mut p, &spec, &cfg());
        let once = serde_json::to_value(&p).expect("json");
        inject(&mut p, &spec, &cfg());
        assert_eq!(serde_json::to_value(&p).expect("json"), once);
    }

    #[test]
    fn env_carries_role_port_and_pod_uid_from_the_downward_api() {
        let (mut p, spec) =
            pod(json!({"vault-approle.io/role": "web", "vault-approle.io/port": "9443"}));
        inject(&mut p, &spec, &cfg());
        let c = &p
            .spec
            .as_ref()
            .expect("spec")
            .init_containers
            .as_ref()
            .expect("inits")[0];
        let v = serde_json::to_value(c).expect("json");
        let env = v["env"].as_array().expect("env");
        let get = |n: &str| env.iter().find(|e| e["name"] == n).cloned().expect(n);
        assert_eq!(get("APPROLE_INIT_ROLE")["value"], "web");
        assert_eq!(get("APPROLE_INIT_LISTEN")["value"], "0.0.0.0:9443");
        assert_eq!(
            get("APPROLE_INIT_POD_UID")["valueFrom"]["fieldRef"]["fieldPath"],
            "metadata.uid"
        );
        assert_eq!(v["securityContext"]["readOnlyRootFilesystem"], true);
        assert_eq!(v["securityContext"]["capabilities"]["drop"][0], "ALL");
    }
}

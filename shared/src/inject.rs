//! What injection adds to a pod: the `vault-approle-init` init container (first among init
//! containers), a tmpfs `emptyDir` volume, read-only mounts of it in the selected containers, the
//! managed label and the status annotation. The init container alone also gets a projected
//! service-account token (audience `vault-approle`, [`IDENTITY_TOKEN_EXPIRATION_SECONDS`]) that it
//! shows to the controller on `GET /v1/identity`; the app containers never see it.
//!
//! ```text
//!   patch(&Pod, &InjectionSpec, &InjectConfig) ──▶ Vec<PatchOperation>   (the admission webhook)
//!        │  the only place that decides what changes
//!        ▼
//!   inject(&mut Pod, ..) = apply patch(..) to the pod's JSON            (tests, tools)
//! ```
//!
//! Both are pure functions of the pod, the parsed annotations and the injector settings, so the
//! admission webhook and anything else that injects build exactly the same pod. A pod that already
//! runs the init container is left as it is (empty patch). Problems only the pod can show — a
//! container named in `vault-approle.io/containers` that the pod does not have, a volume or mount
//! path already taken — are [`InjectError`]s with a message a person can act on.

use std::collections::BTreeMap;

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, PatchOperation, RemoveOperation};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, EmptyDirVolumeSource, EnvVar, EnvVarSource, ObjectFieldSelector, Pod,
    ProjectedVolumeSource, ResourceRequirements, SeccompProfile, SecurityContext,
    ServiceAccountTokenProjection, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::annotations::{
    CONTAINERS, DELIVERIES, InjectionSpec, LAST_DELIVERY, MOUNT_PATH, STATUS, STATUS_INJECTED,
    TOKEN_ACCESSOR, nearest,
};
use crate::push::IDENTITY_AUDIENCE;
use crate::{INIT_CONTAINER_NAME, MANAGED_LABEL};

/// Name of the credential volume.
pub const VOLUME_NAME: &str = "vault-approle";
/// Name of the projected volume with the init container's identity token.
pub const IDENTITY_VOLUME_NAME: &str = "vault-approle-identity";
/// Where the identity volume is mounted in the init container (read-only).
pub const IDENTITY_MOUNT_PATH: &str = "/var/run/secrets/vault-approle-identity";
/// File name of the token inside the identity volume.
pub const IDENTITY_TOKEN_FILE: &str = "token";
/// Lifetime of the identity token: the API's minimum (10 minutes). The kubelet renews it at 80 %,
/// and the init container reads the file at every request, so it is never stale.
pub const IDENTITY_TOKEN_EXPIRATION_SECONDS: i64 = 600;

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

/// Default CPU request of the init container. Small on purpose: it is a ~5 MiB static binary
/// doing four HTTPS calls.
pub const DEFAULT_CPU_REQUEST: &str = "10m";
/// Default CPU limit of the init container.
pub const DEFAULT_CPU_LIMIT: &str = "100m";
/// Default memory request of the init container.
pub const DEFAULT_MEMORY_REQUEST: &str = "16Mi";
/// Default memory limit of the init container.
pub const DEFAULT_MEMORY_LIMIT: &str = "32Mi";

/// Requests and limits of the init container.
pub fn resources(
    cpu_request: &str,
    cpu_limit: &str,
    memory_request: &str,
    memory_limit: &str,
) -> ResourceRequirements {
    let q = |s: &str| Quantity(s.to_owned());
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".into(), q(cpu_request)),
            ("memory".into(), q(memory_request)),
        ])),
        limits: Some(BTreeMap::from([
            ("cpu".into(), q(cpu_limit)),
            ("memory".into(), q(memory_limit)),
        ])),
        ..Default::default()
    }
}

/// The default requests and limits.
pub fn default_resources() -> ResourceRequirements {
    resources(
        DEFAULT_CPU_REQUEST,
        DEFAULT_CPU_LIMIT,
        DEFAULT_MEMORY_REQUEST,
        DEFAULT_MEMORY_LIMIT,
    )
}

/// Why a pod cannot be injected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InjectError {
    /// The pod has no `spec`.
    #[error("the pod has no spec")]
    NoSpec,
    /// `vault-approle.io/containers` names containers the pod does not have.
    #[error("annotation \"{CONTAINERS}\" names {}, which this pod does not have; its containers are {}", describe_unknown(.unknown, .known), .known.join(", "))]
    UnknownContainers {
        /// The names that do not exist.
        unknown: Vec<String>,
        /// The pod's container names.
        known: Vec<String>,
    },
    /// The pod already has a volume with the injector's name.
    #[error(
        "the pod already has a volume named \"{0}\", which the injector needs for the credential; rename that volume"
    )]
    VolumeNameTaken(&'static str),
    /// The annotated mount path is the one reserved for the init container's identity token.
    #[error(
        "annotation \"{MOUNT_PATH}\" may not be {IDENTITY_MOUNT_PATH}, which the injector uses for the init container's identity token; choose another directory"
    )]
    MountPathReserved,
    /// A selected container already mounts something at the mount path.
    #[error(
        "container {container:?} already mounts a volume at {path:?}; set annotation \"{MOUNT_PATH}\" to another directory"
    )]
    MountPathTaken {
        /// The container.
        container: String,
        /// The mount path.
        path: String,
    },
    /// Applying our own patch failed: a bug, reported rather than panicking.
    #[error("internal error applying the injection patch: {0}")]
    Apply(String),
}

fn describe_unknown(unknown: &[String], known: &[String]) -> String {
    unknown
        .iter()
        .map(|u| match nearest(u, known.iter().map(String::as_str)) {
            Some(k) => format!("{u:?} (did you mean {k:?}?)"),
            None => format!("{u:?}"),
        })
        .collect::<Vec<_>>()
        .join(", ")
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
        env(
            "APPROLE_INIT_IDENTITY_TOKEN_FILE",
            format!("{IDENTITY_MOUNT_PATH}/{IDENTITY_TOKEN_FILE}"),
        ),
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
        volume_mounts: Some(vec![
            VolumeMount {
                name: VOLUME_NAME.into(),
                mount_path: spec.mount_path.clone(),
                ..Default::default()
            },
            VolumeMount {
                name: IDENTITY_VOLUME_NAME.into(),
                mount_path: IDENTITY_MOUNT_PATH.into(),
                read_only: Some(true),
                ..Default::default()
            },
        ]),
        ..Default::default()
    }
}

/// The projected volume with the pod's service-account token for audience `vault-approle`:
/// bound to this pod (its name and UID are in the token), so TokenReview can tell the controller
/// which pod shows it.
pub fn identity_volume() -> Volume {
    Volume {
        name: IDENTITY_VOLUME_NAME.into(),
        projected: Some(ProjectedVolumeSource {
            sources: Some(vec![VolumeProjection {
                service_account_token: Some(ServiceAccountTokenProjection {
                    audience: Some(IDENTITY_AUDIENCE.into()),
                    expiration_seconds: Some(IDENTITY_TOKEN_EXPIRATION_SECONDS),
                    path: IDENTITY_TOKEN_FILE.into(),
                }),
                ..Default::default()
            }]),
            default_mode: None,
        }),
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

/// True when the pod already runs the injector's init container.
pub fn is_injected(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.init_containers.as_ref())
        .is_some_and(|inits| inits.iter().any(|c| c.name == INIT_CONTAINER_NAME))
}

/// The read-only mount of the credential volume in an app container.
fn app_mount(spec: &InjectionSpec) -> VolumeMount {
    VolumeMount {
        name: VOLUME_NAME.into(),
        mount_path: spec.mount_path.clone(),
        read_only: Some(true),
        ..Default::default()
    }
}

/// The JSONPatch (RFC 6902) that injects `pod`; empty when it is injected already. Map keys are
/// escaped as JSON pointers require (`vault-approle.io/managed` → `vault-approle.io~1managed`).
pub fn patch(
    pod: &Pod,
    spec: &InjectionSpec,
    cfg: &InjectConfig,
) -> Result<Vec<PatchOperation>, InjectError> {
    let pod_spec = pod.spec.as_ref().ok_or(InjectError::NoSpec)?;
    if is_injected(pod) {
        return Ok(Vec::new());
    }
    let known: Vec<String> = pod_spec.containers.iter().map(|c| c.name.clone()).collect();
    if let Some(names) = &spec.containers {
        let unknown: Vec<String> = names
            .iter()
            .filter(|n| !known.contains(n))
            .cloned()
            .collect();
        if !unknown.is_empty() {
            return Err(InjectError::UnknownContainers { unknown, known });
        }
    }
    for name in [VOLUME_NAME, IDENTITY_VOLUME_NAME] {
        if pod_spec.volumes.iter().flatten().any(|v| v.name == name) {
            return Err(InjectError::VolumeNameTaken(name));
        }
    }
    if spec.mount_path == IDENTITY_MOUNT_PATH {
        return Err(InjectError::MountPathReserved);
    }
    let selected: Vec<(usize, &Container)> = pod_spec
        .containers
        .iter()
        .enumerate()
        .filter(|(_, c)| {
            spec.containers
                .as_ref()
                .is_none_or(|names| names.contains(&c.name))
        })
        .collect();
    if let Some((_, c)) = selected.iter().find(|(_, c)| {
        c.volume_mounts
            .iter()
            .flatten()
            .any(|m| m.mount_path.trim_end_matches('/') == spec.mount_path)
    }) {
        return Err(InjectError::MountPathTaken {
            container: c.name.clone(),
            path: spec.mount_path.clone(),
        });
    }

    let mut ops = Vec::new();
    let meta = &pod.metadata;
    put_entry(
        &mut ops,
        "labels",
        meta.labels.is_some(),
        MANAGED_LABEL,
        "true",
    );
    put_entry(
        &mut ops,
        "annotations",
        meta.annotations.is_some(),
        STATUS,
        STATUS_INJECTED,
    );
    // A pod created from a copy of an injected pod's YAML must not look delivered already.
    for key in [TOKEN_ACCESSOR, DELIVERIES, LAST_DELIVERY] {
        if meta
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(key))
        {
            ops.push(PatchOperation::Remove(RemoveOperation {
                path: pointer(&["metadata", "annotations", key]),
            }));
        }
    }
    let init = to_value(&init_container(spec, cfg))?;
    ops.push(match &pod_spec.init_containers {
        None => add(
            &["spec", "initContainers"],
            serde_json::Value::Array(vec![init]),
        ),
        // First: it must run before any init container that might want the credential.
        Some(_) => add(&["spec", "initContainers", "0"], init),
    });
    push_items(
        &mut ops,
        &["spec", "volumes"],
        pod_spec.volumes.is_some(),
        vec![to_value(&volume())?, to_value(&identity_volume())?],
    );
    let mount = to_value(&app_mount(spec))?;
    for (i, c) in selected {
        let i = i.to_string();
        push_item(
            &mut ops,
            &["spec", "containers", &i, "volumeMounts"],
            c.volume_mounts.is_some(),
            mount.clone(),
        );
    }
    Ok(ops)
}

/// Adds everything to `pod` in place by applying [`patch`], so the two can never disagree. A pod
/// that already has the init container is left as it is.
pub fn inject(pod: &mut Pod, spec: &InjectionSpec, cfg: &InjectConfig) -> Result<(), InjectError> {
    let ops = patch(pod, spec, cfg)?;
    if ops.is_empty() {
        return Ok(());
    }
    let mut doc = to_value(&*pod)?;
    json_patch::patch(&mut doc, &ops).map_err(|e| InjectError::Apply(e.to_string()))?;
    *pod = serde_json::from_value(doc).map_err(|e| InjectError::Apply(e.to_string()))?;
    Ok(())
}

fn to_value(v: &impl serde::Serialize) -> Result<serde_json::Value, InjectError> {
    serde_json::to_value(v).map_err(|e| InjectError::Apply(e.to_string()))
}

fn pointer(tokens: &[&str]) -> PointerBuf {
    PointerBuf::from_tokens(tokens.iter().copied())
}

fn add(tokens: &[&str], value: serde_json::Value) -> PatchOperation {
    PatchOperation::Add(AddOperation {
        path: pointer(tokens),
        value,
    })
}

/// Sets `metadata.<map>[key]`, creating the map when the pod has none.
fn put_entry(ops: &mut Vec<PatchOperation>, map: &str, exists: bool, key: &str, value: &str) {
    ops.push(if exists {
        add(&["metadata", map, key], value.into())
    } else {
        add(&["metadata", map], serde_json::json!({ key: value }))
    });
}

/// Appends to the array at `tokens`, creating it when absent.
fn push_item(
    ops: &mut Vec<PatchOperation>,
    tokens: &[&str],
    exists: bool,
    value: serde_json::Value,
) {
    push_items(ops, tokens, exists, vec![value]);
}

/// Appends `values` in order to the array at `tokens`, creating it (in one operation) when absent.
fn push_items(
    ops: &mut Vec<PatchOperation>,
    tokens: &[&str],
    exists: bool,
    values: Vec<serde_json::Value>,
) {
    if exists {
        let mut path = tokens.to_vec();
        path.push("-");
        ops.extend(values.into_iter().map(|v| add(&path, v)));
    } else {
        ops.push(add(tokens, serde_json::Value::Array(values)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

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

    fn spec_of(pod: &Pod) -> InjectionSpec {
        InjectionSpec::from_annotations(pod.metadata.annotations.as_ref().expect("annotations"))
            .expect("valid")
            .expect("opted in")
    }

    fn pod(annotations: Value) -> (Pod, InjectionSpec) {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "annotations": annotations},
            "spec": {"initContainers": [{"name": "migrate", "image": "m"}],
                     "containers": [{"name": "app", "image": "a"}, {"name": "proxy", "image": "p"}]}
        }))
        .expect("pod");
        let spec = spec_of(&pod);
        (pod, spec)
    }

    fn injected(annotations: Value) -> Pod {
        let (mut p, spec) = pod(annotations);
        inject(&mut p, &spec, &cfg()).expect("inject");
        p
    }

    /// (op, path) of every operation, for compact expectations.
    fn shape(ops: &[PatchOperation]) -> Vec<(String, String)> {
        ops.iter()
            .map(|op| {
                let v = serde_json::to_value(op).expect("json");
                (
                    v["op"].as_str().unwrap_or_default().to_owned(),
                    v["path"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    }

    #[test]
    fn patch_operations_follow_the_shape_of_the_pod() {
        let role = json!({"vault-approle.io/role": "web"});
        // (name, pod, expected (op, path) list)
        type Case = (&'static str, Value, Vec<(&'static str, &'static str)>);
        let cases: Vec<Case> = vec![
            (
                "bare pod: every list and map is created",
                json!({"metadata": {"annotations": role},
                       "spec": {"containers": [{"name": "app", "image": "a"}]}}),
                vec![
                    ("add", "/metadata/labels"),
                    ("add", "/metadata/annotations/vault-approle.io~1status"),
                    ("add", "/spec/initContainers"),
                    ("add", "/spec/volumes"),
                    ("add", "/spec/containers/0/volumeMounts"),
                ],
            ),
            (
                "existing lists and maps are appended to, init container goes first",
                json!({"metadata": {"labels": {"app": "web"}, "annotations": role},
                       "spec": {"initContainers": [{"name": "migrate", "image": "m"}],
                                "volumes": [{"name": "data", "emptyDir": {}}],
                                "containers": [
                                    {"name": "app", "image": "a",
                                     "volumeMounts": [{"name": "data", "mountPath": "/data"}]},
                                    {"name": "proxy", "image": "p"}]}}),
                vec![
                    ("add", "/metadata/labels/vault-approle.io~1managed"),
                    ("add", "/metadata/annotations/vault-approle.io~1status"),
                    ("add", "/spec/initContainers/0"),
                    ("add", "/spec/volumes/-"),
                    ("add", "/spec/volumes/-"),
                    ("add", "/spec/containers/0/volumeMounts/-"),
                    ("add", "/spec/containers/1/volumeMounts"),
                ],
            ),
            (
                "only the selected containers get a mount",
                json!({"metadata": {"annotations": {"vault-approle.io/role": "web",
                                                    "vault-approle.io/containers": "proxy"}},
                       "spec": {"containers": [{"name": "app", "image": "a"},
                                               {"name": "proxy", "image": "p"}]}}),
                vec![
                    ("add", "/metadata/labels"),
                    ("add", "/metadata/annotations/vault-approle.io~1status"),
                    ("add", "/spec/initContainers"),
                    ("add", "/spec/volumes"),
                    ("add", "/spec/containers/1/volumeMounts"),
                ],
            ),
            (
                "a copied token-accessor annotation is removed",
                json!({"metadata": {"annotations": {"vault-approle.io/role": "web",
                                                    "vault-approle.io/status": "delivered",
                                                    "vault-approle.io/token-accessor": "abc"}},
                       "spec": {"containers": [{"name": "app", "image": "a"}]}}),
                vec![
                    ("add", "/metadata/labels"),
                    ("add", "/metadata/annotations/vault-approle.io~1status"),
                    (
                        "remove",
                        "/metadata/annotations/vault-approle.io~1token-accessor",
                    ),
                    ("add", "/spec/initContainers"),
                    ("add", "/spec/volumes"),
                    ("add", "/spec/containers/0/volumeMounts"),
                ],
            ),
            (
                "an injected pod is left as it is",
                json!({"metadata": {"annotations": role},
                       "spec": {"initContainers": [{"name": INIT_CONTAINER_NAME, "image": "i"}],
                                "containers": [{"name": "app", "image": "a"}]}}),
                vec![],
            ),
        ];
        for (name, pod, want) in cases {
            let pod: Pod = serde_json::from_value(pod).expect(name);
            let ops = patch(&pod, &spec_of(&pod), &cfg()).expect(name);
            let want: Vec<(String, String)> = want
                .iter()
                .map(|(o, p)| ((*o).to_owned(), (*p).to_owned()))
                .collect();
            assert_eq!(shape(&ops), want, "{name}");

            // Applied to the pod's JSON as the API server does, the patch gives exactly what
            // `inject` gives, and the result is a valid pod.
            let mut doc = serde_json::to_value(&pod).expect("json");
            json_patch::patch(&mut doc, &ops).expect(name);
            let mut by_inject = pod.clone();
            inject(&mut by_inject, &spec_of(&pod), &cfg()).expect(name);
            assert_eq!(
                doc,
                serde_json::to_value(&by_inject).expect("json"),
                "{name}"
            );
            let patched: Pod = serde_json::from_value(doc).expect(name);
            assert!(is_injected(&patched), "{name}");
        }
    }

    #[test]
    fn pods_that_cannot_be_injected_say_why() {
        let cases: Vec<(&str, Value, &[&str])> = vec![
            (
                "unknown container, near miss",
                json!({"metadata": {"annotations": {"vault-approle.io/role": "web",
                                                    "vault-approle.io/containers": "app,proxi"}},
                       "spec": {"containers": [{"name": "app", "image": "a"},
                                               {"name": "proxy", "image": "p"}]}}),
                &[
                    "vault-approle.io/containers",
                    "\"proxi\"",
                    "did you mean \"proxy\"",
                    "app, proxy",
                ],
            ),
            (
                "unknown container, far off",
                json!({"metadata": {"annotations": {"vault-approle.io/role": "web",
                                                    "vault-approle.io/containers": "database"}},
                       "spec": {"containers": [{"name": "app", "image": "a"}]}}),
                &["\"database\"", "its containers are app"],
            ),
            (
                "volume name taken",
                json!({"metadata": {"annotations": {"vault-approle.io/role": "web"}},
                       "spec": {"volumes": [{"name": VOLUME_NAME, "emptyDir": {}}],
                                "containers": [{"name": "app", "image": "a"}]}}),
                &["volume named \"vault-approle\""],
            ),
            (
                "identity volume name taken",
                json!({"metadata": {"annotations": {"vault-approle.io/role": "web"}},
                       "spec": {"volumes": [{"name": IDENTITY_VOLUME_NAME, "emptyDir": {}}],
                                "containers": [{"name": "app", "image": "a"}]}}),
                &["volume named \"vault-approle-identity\""],
            ),
            (
                "mount path of the identity token",
                json!({"metadata": {"annotations": {"vault-approle.io/role": "web",
                                                    "vault-approle.io/mount-path": IDENTITY_MOUNT_PATH}},
                       "spec": {"containers": [{"name": "app", "image": "a"}]}}),
                &[
                    "vault-approle.io/mount-path",
                    IDENTITY_MOUNT_PATH,
                    "identity token",
                ],
            ),
            (
                "mount path taken",
                json!({"metadata": {"annotations": {"vault-approle.io/role": "web",
                                                    "vault-approle.io/mount-path": "/secrets"}},
                       "spec": {"volumes": [{"name": "s", "emptyDir": {}}],
                                "containers": [{"name": "app", "image": "a",
                                    "volumeMounts": [{"name": "s", "mountPath": "/secrets/"}]}]}}),
                &["\"app\"", "\"/secrets\"", "vault-approle.io/mount-path"],
            ),
            (
                "no spec",
                json!({"metadata": {"annotations": {"vault-approle.io/role": "web"}}}),
                &["no spec"],
            ),
        ];
        for (name, pod, needles) in cases {
            let pod: Pod = serde_json::from_value(pod).expect(name);
            let err = patch(&pod, &spec_of(&pod), &cfg()).expect_err(name);
            let msg = err.to_string();
            for n in needles {
                assert!(msg.contains(n), "{name}: {msg:?} lacks {n:?}");
            }
            let mut p = pod.clone();
            assert_eq!(inject(&mut p, &spec_of(&pod), &cfg()), Err(err), "{name}");
        }
    }

    #[test]
    fn init_container_goes_first_and_volume_is_tmpfs() {
        let p = injected(json!({"vault-approle.io/role": "web"}));
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
        let label = p
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(MANAGED_LABEL));
        assert_eq!(label.map(String::as_str), Some("true"));
        let status = p.metadata.annotations.as_ref().and_then(|a| a.get(STATUS));
        assert_eq!(status.map(String::as_str), Some(STATUS_INJECTED));
    }

    #[test]
    fn only_the_init_container_gets_the_identity_token() {
        let p = injected(json!({"vault-approle.io/role": "web"}));
        let v = serde_json::to_value(&p).expect("json");
        let volume = v["spec"]["volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .find(|v| v["name"] == IDENTITY_VOLUME_NAME)
            .cloned()
            .expect("identity volume");
        assert_eq!(
            volume["projected"]["sources"],
            json!([{"serviceAccountToken": {
                "audience": "vault-approle", "expirationSeconds": 600, "path": "token"}}])
        );
        let mounts_identity = |c: &Value| {
            c["volumeMounts"]
                .as_array()
                .is_some_and(|ms| ms.iter().any(|m| m["name"] == IDENTITY_VOLUME_NAME))
        };
        let init = &v["spec"]["initContainers"][0];
        assert_eq!(init["name"], INIT_CONTAINER_NAME);
        let mount = init["volumeMounts"]
            .as_array()
            .expect("mounts")
            .iter()
            .find(|m| m["name"] == IDENTITY_VOLUME_NAME)
            .cloned()
            .expect("identity mount");
        assert_eq!(mount["mountPath"], IDENTITY_MOUNT_PATH);
        assert_eq!(mount["readOnly"], true);
        let env = init["env"].as_array().expect("env");
        let file = env
            .iter()
            .find(|e| e["name"] == "APPROLE_INIT_IDENTITY_TOKEN_FILE")
            .expect("identity env");
        assert_eq!(
            file["value"],
            "/var/run/secrets/vault-approle-identity/token"
        );
        // Neither the app containers nor the pod's own init containers see it.
        assert!(!mounts_identity(&v["spec"]["initContainers"][1]));
        for c in v["spec"]["containers"].as_array().expect("containers") {
            assert!(!mounts_identity(c), "{}", c["name"]);
        }
    }

    #[test]
    fn injecting_twice_changes_nothing() {
        let mut p = injected(json!({"vault-approle.io/role": "web"}));
        let once = serde_json::to_value(&p).expect("json");
        let spec = spec_of(&p);
        assert!(patch(&p, &spec, &cfg()).expect("patch").is_empty());
        inject(&mut p, &spec, &cfg()).expect("inject");
        assert_eq!(serde_json::to_value(&p).expect("json"), once);
    }

    #[test]
    fn env_security_context_and_resources_are_what_the_design_says() {
        let mut c = cfg();
        c.vault_ca_pem = Some("VAULT CA".into());
        c.resources = resources("1m", "2m", "3Mi", "4Mi");
        let (mut p, spec) =
            pod(json!({"vault-approle.io/role": "web", "vault-approle.io/port": "9443"}));
        inject(&mut p, &spec, &c).expect("inject");
        let init = &p
            .spec
            .as_ref()
            .expect("spec")
            .init_containers
            .as_ref()
            .expect("inits")[0];
        let v = serde_json::to_value(init).expect("json");
        let env = v["env"].as_array().expect("env");
        let get = |n: &str| env.iter().find(|e| e["name"] == n).cloned().expect(n);
        assert_eq!(get("APPROLE_INIT_ROLE")["value"], "web");
        assert_eq!(get("APPROLE_INIT_LISTEN")["value"], "0.0.0.0:9443");
        assert_eq!(get("APPROLE_INIT_APPROLE_MOUNT")["value"], "approle");
        assert_eq!(
            get("APPROLE_INIT_VAULT_ADDR")["value"],
            "https://vault:8200"
        );
        assert_eq!(get("APPROLE_INIT_VAULT_CACERT_PEM")["value"], "VAULT CA");
        assert_eq!(get("APPROLE_INIT_CLIENT_CA_PEM")["value"], "CA");
        assert_eq!(
            get("APPROLE_INIT_OUT_DIR")["value"],
            crate::annotations::DEFAULT_MOUNT_PATH
        );
        assert_eq!(get("APPROLE_INIT_TIMEOUT")["value"], "5m");
        assert_eq!(
            get("APPROLE_INIT_POD_UID")["valueFrom"]["fieldRef"]["fieldPath"],
            "metadata.uid"
        );
        let sc = &v["securityContext"];
        assert_eq!(sc["runAsNonRoot"], true);
        assert_eq!(sc["readOnlyRootFilesystem"], true);
        assert_eq!(sc["allowPrivilegeEscalation"], false);
        assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
        assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
        assert_eq!(
            v["resources"],
            json!({"requests": {"cpu": "1m", "memory": "3Mi"}, "limits": {"cpu": "2m", "memory": "4Mi"}})
        );
    }
}

//! What a container process sees: its environment (literal values, downward API `fieldRef`,
//! Secret/ConfigMap references, `envFrom`, `$(VAR)` expansion exactly as the kubelet does it)
//! and its arguments, with paths under a volume mount rewritten to the host directory that backs
//! the volume (pods share this host's filesystem and network namespace in kube-dev).

use std::collections::BTreeMap;
use std::path::PathBuf;

use base64::Engine as _;
use serde_json::Value;

use super::store::Store;
use super::util::{namespace_of, str_at};

/// Pod facts the downward API can expose that are not in the pod spec.
#[derive(Debug, Clone)]
pub struct PodFacts {
    /// status.podIP.
    pub pod_ip: String,
    /// status.hostIP.
    pub host_ip: String,
    /// KUBERNETES_SERVICE_HOST.
    pub api_host: String,
    /// KUBERNETES_SERVICE_PORT.
    pub api_port: u16,
}

/// One volume mount of a container, resolved to the host.
#[derive(Debug, Clone, PartialEq)]
pub struct HostMount {
    /// Volume name.
    pub name: String,
    /// Path inside the container.
    pub mount_path: String,
    /// Host directory (or file, with subPath) that backs it.
    pub host_path: PathBuf,
    /// `readOnly` of the mount.
    pub read_only: bool,
}

/// `k8s.io/kubernetes/third_party/forked/golang/expansion.Expand`: `$(VAR)` becomes the value
/// of VAR if defined, `$$` becomes `$`, anything else stays as written.
pub fn expand(input: &str, vars: &dyn Fn(&str) -> Option<String>) -> String {
    let b = input.as_bytes();
    let mut out = String::with_capacity(input.len());
    let mut i = 0;
    let mut last = 0;
    while i < b.len() {
        if b[i] == b'$' && i + 1 < b.len() {
            out.push_str(&input[last..i]);
            match b[i + 1] {
                b'$' => {
                    out.push('$');
                    i += 2;
                }
                b'(' => match input[i + 2..].find(')') {
                    Some(end) => {
                        let name = &input[i + 2..i + 2 + end];
                        match vars(name) {
                            Some(v) => out.push_str(&v),
                            None => out.push_str(&input[i..i + 3 + end]),
                        }
                        i += 3 + end;
                    }
                    None => {
                        out.push_str(&input[i..]);
                        i = b.len();
                    }
                },
                _ => {
                    out.push('$');
                    i += 1;
                }
            }
            last = i;
        } else {
            i += 1;
        }
    }
    if last < b.len() {
        out.push_str(&input[last..]);
    }
    out
}

/// Resolves a downward API `fieldPath`.
pub fn field_ref(pod: &Value, facts: &PodFacts, path: &str) -> Result<String, String> {
    let simple = |p: &[&str]| Ok(str_at(pod, p).to_string());
    match path {
        "metadata.name" => simple(&["metadata", "name"]),
        "metadata.namespace" => simple(&["metadata", "namespace"]),
        "metadata.uid" => simple(&["metadata", "uid"]),
        "spec.nodeName" => simple(&["spec", "nodeName"]),
        "spec.serviceAccountName" => simple(&["spec", "serviceAccountName"]),
        "status.podIP" | "status.podIPs" => Ok(facts.pod_ip.clone()),
        "status.hostIP" | "status.hostIPs" => Ok(facts.host_ip.clone()),
        p => {
            for (prefix, field) in [
                ("metadata.labels['", "labels"),
                ("metadata.annotations['", "annotations"),
            ] {
                if let Some(key) = p.strip_prefix(prefix).and_then(|k| k.strip_suffix("']")) {
                    return Ok(pod
                        .get("metadata")
                        .and_then(|m| m.get(field))
                        .and_then(|m| m.get(key))
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string());
                }
            }
            Err(format!("unsupported fieldPath: {p}"))
        }
    }
}

fn source_data(
    store: &Store,
    ns: &str,
    kind: &str,
    name: &str,
) -> Option<BTreeMap<String, String>> {
    let storage = if kind == "secret" {
        "secrets"
    } else {
        "configmaps"
    };
    let obj = store.get(storage, ns, name)?;
    let mut out = BTreeMap::new();
    if let Some(d) = obj.get("data").and_then(Value::as_object) {
        for (k, v) in d {
            let s = v.as_str().unwrap_or("");
            let val = if kind == "secret" {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(s)
                    .unwrap_or_default();
                String::from_utf8_lossy(&bytes).into_owned()
            } else {
                s.to_string()
            };
            out.insert(k.clone(), val);
        }
    }
    Some(out)
}

/// The container's environment in kubelet order: service variables, `envFrom`, then `env` (each
/// entry expanded against the ones before it). Errors read like the kubelet's
/// `CreateContainerConfigError` messages.
pub fn container_env(
    store: &Store,
    pod: &Value,
    container: &Value,
    facts: &PodFacts,
) -> Result<Vec<(String, String)>, String> {
    let ns = namespace_of(pod).to_string();
    let mut vars: Vec<(String, String)> = vec![
        ("KUBERNETES_SERVICE_HOST".into(), facts.api_host.clone()),
        ("KUBERNETES_SERVICE_PORT".into(), facts.api_port.to_string()),
        (
            "KUBERNETES_SERVICE_PORT_HTTPS".into(),
            facts.api_port.to_string(),
        ),
    ];
    fn set(vars: &mut Vec<(String, String)>, k: String, v: String) {
        if let Some(e) = vars.iter_mut().find(|(n, _)| *n == k) {
            e.1 = v;
        } else {
            vars.push((k, v));
        }
    }
    if let Some(from) = container.get("envFrom").and_then(Value::as_array) {
        for f in from {
            let prefix = str_at(f, &["prefix"]).to_string();
            for (kind, field) in [("configmap", "configMapRef"), ("secret", "secretRef")] {
                let Some(r) = f.get(field) else { continue };
                let name = str_at(r, &["name"]);
                let optional = r.get("optional").and_then(Value::as_bool) == Some(true);
                match source_data(store, &ns, kind, name) {
                    Some(data) => {
                        for (k, v) in data {
                            set(&mut vars, format!("{prefix}{k}"), v);
                        }
                    }
                    None if optional => {}
                    None => return Err(format!("{kind} \"{name}\" not found")),
                }
            }
        }
    }
    if let Some(env) = container.get("env").and_then(Value::as_array) {
        for e in env {
            let name = str_at(e, &["name"]).to_string();
            let value = if let Some(vf) = e.get("valueFrom") {
                if let Some(fr) = vf.get("fieldRef") {
                    field_ref(pod, facts, str_at(fr, &["fieldPath"]))?
                } else if let Some(r) = vf.get("resourceFieldRef") {
                    // No resource accounting: report what a node without limits would.
                    match str_at(r, &["resource"]) {
                        "limits.cpu" | "requests.cpu" => "1".to_string(),
                        _ => "0".to_string(),
                    }
                } else {
                    let (kind, r) = match (vf.get("secretKeyRef"), vf.get("configMapKeyRef")) {
                        (Some(r), _) => ("secret", r),
                        (_, Some(r)) => ("configmap", r),
                        _ => return Err(format!("unsupported valueFrom in env {name}")),
                    };
                    let src = str_at(r, &["name"]);
                    let key = str_at(r, &["key"]);
                    let optional = r.get("optional").and_then(Value::as_bool) == Some(true);
                    match source_data(store, &ns, kind, src).map(|d| d.get(key).cloned()) {
                        Some(Some(v)) => v,
                        _ if optional => continue,
                        Some(None) => {
                            return Err(format!(
                                "couldn't find key {key} in {} {ns}/{src}",
                                if kind == "secret" {
                                    "Secret"
                                } else {
                                    "ConfigMap"
                                }
                            ));
                        }
                        None => return Err(format!("{kind} \"{src}\" not found")),
                    }
                }
            } else {
                let raw = str_at(e, &["value"]).to_string();
                let snapshot = vars.clone();
                expand(&raw, &|k| {
                    snapshot
                        .iter()
                        .find(|(n, _)| n == k)
                        .map(|(_, v)| v.clone())
                })
            };
            set(&mut vars, name, value);
        }
    }
    Ok(vars)
}

/// The container's `args` with `$(VAR)` expanded against its final environment.
pub fn container_args(container: &Value, env: &[(String, String)]) -> Vec<String> {
    container
        .get("args")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|v| {
                    expand(v.as_str().unwrap_or(""), &|k| {
                        env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Rewrites a path inside the container to the host path backing it (longest mount wins);
/// other values are returned unchanged. `--flag=/path` rewrites the part after `=`.
pub fn rewrite_path(value: &str, mounts: &[HostMount]) -> String {
    if let Some((flag, rest)) = value.split_once('=')
        && flag.starts_with("--")
    {
        return format!("{flag}={}", rewrite_path(rest, mounts));
    }
    let best = mounts
        .iter()
        .filter(|m| {
            let mp = m.mount_path.trim_end_matches('/');
            value == mp || value.strip_prefix(mp).is_some_and(|r| r.starts_with('/'))
        })
        .max_by_key(|m| m.mount_path.len());
    match best {
        Some(m) => {
            let rest = &value[m.mount_path.trim_end_matches('/').len()..];
            format!("{}{rest}", m.host_path.display())
        }
        None => value.to_string(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (house rule)
mod tests {
    use super::*;
    use serde_json::json;

    fn vars(k: &str) -> Option<String> {
        match k {
            "A" => Some("1".into()),
            "B" => Some("two".into()),
            _ => None,
        }
    }

    #[test]
    fn expansion_follows_the_kubelet_rules() {
        let cases = [
            ("$(A)", "1"),
            ("x-$(A)-$(B)", "x-1-two"),
            ("$(C)", "$(C)"),
            ("$$(A)", "$(A)"),
            ("$$", "$"),
            ("a$b", "a$b"),
            ("$(A", "$(A"),
            ("end$", "end$"),
            ("", ""),
        ];
        for (input, want) in cases {
            assert_eq!(expand(input, &vars), want, "{input}");
        }
    }

    #[test]
    fn env_resolves_fields_and_earlier_vars() {
        let store = Store::new(10);
        let pod = json!({"metadata": {"name": "web-0", "namespace": "ns", "uid": "u-1",
                                      "labels": {"app": "web"}},
                         "spec": {"nodeName": "n", "serviceAccountName": "sa"}});
        let container = json!({"env": [
            {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
            {"name": "URL", "value": "https://$(IP):8643/$(POD)/$(NOPE)"},
        ]});
        let facts = PodFacts {
            pod_ip: "127.1.0.1".into(),
            host_ip: "127.0.0.1".into(),
            api_host: "127.0.0.1".into(),
            api_port: 6443,
        };
        let env = container_env(&store, &pod, &container, &facts).unwrap();
        let get = |k: &str| env.iter().find(|(n, _)| n == k).unwrap().1.clone();
        assert_eq!(get("POD"), "web-0");
        assert_eq!(get("APP"), "web");
        assert_eq!(get("URL"), "https://127.1.0.1:8643/web-0/$(NOPE)");
        assert_eq!(get("KUBERNETES_SERVICE_PORT"), "6443");
        let missing = json!({"env": [{"name": "S", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]});
        assert_eq!(
            container_env(&store, &pod, &missing, &facts).unwrap_err(),
            "secret \"s\" not found"
        );
    }

    #[test]
    fn paths_under_mounts_are_rewritten() {
        let mounts = vec![
            HostMount {
                name: "a".into(),
                mount_path: "/var/run/secrets/vault-approle".into(),
                host_path: "/h/a".into(),
                read_only: false,
            },
            HostMount {
                name: "b".into(),
                mount_path: "/var/run/secrets".into(),
                host_path: "/h/b".into(),
                read_only: true,
            },
        ];
        let cases = [
            ("/var/run/secrets/vault-approle", "/h/a"),
            ("/var/run/secrets/vault-approle/token", "/h/a/token"),
            ("/var/run/secrets/other", "/h/b/other"),
            ("/var/run/secrets-x", "/var/run/secrets-x"),
            ("--out-dir=/var/run/secrets/vault-approle", "--out-dir=/h/a"),
            ("plain", "plain"),
        ];
        for (input, want) in cases {
            assert_eq!(rewrite_path(input, &mounts), want, "{input}");
        }
    }
}

//! Per-kind create defaults, validation and update rules (the parts of the real API server's
//! registry strategies that clients can observe).

use serde_json::{Value, json};

use super::status::{ApiError, Cause};
use super::util::{name_of, str_at, validate_dns_label, validate_dns_subdomain};

fn cause(reason: &'static str, field: impl Into<String>, message: impl Into<String>) -> Cause {
    Cause {
        reason,
        field: field.into(),
        message: message.into(),
    }
}

/// Validates `metadata.name` for a kind (namespaces use DNS labels, the rest DNS subdomains).
pub fn validate_name(kind: &str, name: &str) -> Vec<Cause> {
    if name.is_empty() {
        return vec![cause(
            "FieldValueRequired",
            "metadata.name",
            "Required value: name or generateName is required",
        )];
    }
    let check = if kind == "Namespace" {
        validate_dns_label(name)
    } else {
        validate_dns_subdomain(name)
    };
    match check {
        Ok(()) => Vec::new(),
        Err(msg) => vec![cause(
            "FieldValueInvalid",
            "metadata.name",
            format!("Invalid value: \"{name}\": {msg}"),
        )],
    }
}

/// Image without tag or digest (`ghcr.io/x/approle-init:1.0` → `ghcr.io/x/approle-init`).
pub fn image_repository(image: &str) -> &str {
    let no_digest = image.split('@').next().unwrap_or(image);
    match no_digest.rfind(':') {
        Some(i) if !no_digest[i..].contains('/') => &no_digest[..i],
        _ => no_digest,
    }
}

fn default_container(c: &mut Value) {
    let image = str_at(c, &["image"]).to_string();
    let tagged = image_repository(&image) != image && !image.ends_with(":latest");
    let defaults = [
        (
            "imagePullPolicy",
            json!(if tagged { "IfNotPresent" } else { "Always" }),
        ),
        ("terminationMessagePath", json!("/dev/termination-log")),
        ("terminationMessagePolicy", json!("File")),
        ("resources", json!({})),
    ];
    if let Some(m) = c.as_object_mut() {
        for (k, v) in defaults {
            m.entry(k).or_insert(v);
        }
        if let Some(ports) = m.get_mut("ports").and_then(Value::as_array_mut) {
            for p in ports {
                if let Some(pm) = p.as_object_mut() {
                    pm.entry("protocol").or_insert(json!("TCP"));
                }
            }
        }
    }
}

/// Pod defaults applied on create (a subset of `pkg/apis/core/v1/defaults.go`) and the status
/// reset of the pod strategy.
pub fn default_pod(pod: &mut Value) {
    let spec = super::util::object_field_mut(pod, "spec");
    let defaults = [
        ("restartPolicy", json!("Always")),
        ("terminationGracePeriodSeconds", json!(30)),
        ("dnsPolicy", json!("ClusterFirst")),
        ("securityContext", json!({})),
        ("schedulerName", json!("default-scheduler")),
        ("enableServiceLinks", json!(true)),
        ("priority", json!(0)),
        ("preemptionPolicy", json!("PreemptLowerPriority")),
    ];
    for (k, v) in defaults {
        spec.entry(k).or_insert(v);
    }
    let sa = spec
        .get("serviceAccountName")
        .and_then(Value::as_str)
        .or_else(|| spec.get("serviceAccount").and_then(Value::as_str))
        .unwrap_or("default")
        .to_string();
    spec.insert("serviceAccountName".into(), json!(sa));
    spec.insert("serviceAccount".into(), json!(sa));
    for list in ["initContainers", "containers"] {
        if let Some(cs) = spec.get_mut(list).and_then(Value::as_array_mut) {
            cs.iter_mut().for_each(default_container);
        }
    }
    if let Some(vols) = spec.get_mut("volumes").and_then(Value::as_array_mut) {
        for v in vols {
            if let Some(ed) = v.get_mut("emptyDir")
                && ed.is_null()
            {
                *ed = json!({});
            }
        }
    }
    if let Some(m) = pod.as_object_mut() {
        m.insert(
            "status".into(),
            json!({"phase": "Pending", "qosClass": "BestEffort"}),
        );
    }
}

/// Pod validation on create (the checks clients are likely to hit).
pub fn validate_pod(pod: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    let spec = pod.get("spec");
    let containers = spec
        .and_then(|s| s.get("containers"))
        .and_then(Value::as_array);
    if containers.is_none_or(|c| c.is_empty()) {
        causes.push(cause(
            "FieldValueRequired",
            "spec.containers",
            "Required value",
        ));
    }
    let mut seen = Vec::new();
    for list in ["initContainers", "containers"] {
        let items = spec
            .and_then(|s| s.get(list))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for (i, c) in items.iter().enumerate() {
            let name = str_at(c, &["name"]);
            let field = format!("spec.{list}[{i}].name");
            if name.is_empty() {
                causes.push(cause("FieldValueRequired", field, "Required value"));
            } else if let Err(msg) = validate_dns_label(name) {
                causes.push(cause(
                    "FieldValueInvalid",
                    field,
                    format!("Invalid value: \"{name}\": {msg}"),
                ));
            } else if seen.contains(&name.to_string()) {
                causes.push(cause(
                    "FieldValueDuplicate",
                    field,
                    format!("Duplicate value: \"{name}\""),
                ));
            } else {
                seen.push(name.to_string());
            }
            if str_at(c, &["image"]).is_empty() {
                causes.push(cause(
                    "FieldValueRequired",
                    format!("spec.{list}[{i}].image"),
                    "Required value",
                ));
            }
            let vols: Vec<&str> = spec
                .and_then(|s| s.get("volumes"))
                .and_then(Value::as_array)
                .map(|v| v.iter().map(|v| str_at(v, &["name"])).collect())
                .unwrap_or_default();
            if let Some(mounts) = c.get("volumeMounts").and_then(Value::as_array) {
                let mut paths = Vec::new();
                for (j, m) in mounts.iter().enumerate() {
                    let vn = str_at(m, &["name"]);
                    if !vols.contains(&vn) {
                        causes.push(cause(
                            "FieldValueNotFound",
                            format!("spec.{list}[{i}].volumeMounts[{j}].name"),
                            format!("Not found: \"{vn}\""),
                        ));
                    }
                    let mp = str_at(m, &["mountPath"]);
                    if paths.contains(&mp) {
                        causes.push(cause(
                            "FieldValueInvalid",
                            format!("spec.{list}[{i}].volumeMounts[{j}].mountPath"),
                            format!("Invalid value: \"{mp}\": must be unique"),
                        ));
                    }
                    paths.push(mp);
                }
            }
        }
    }
    causes.extend(validate_projected_tokens(spec));
    causes
}

/// `serviceAccountToken` projections: a path, and an expiry between 10 minutes and 2^32 seconds
/// (the API server's messages).
fn validate_projected_tokens(spec: Option<&Value>) -> Vec<Cause> {
    let mut causes = Vec::new();
    let vols = spec
        .and_then(|s| s.get("volumes"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for (i, v) in vols.iter().enumerate() {
        let sources = v
            .pointer("/projected/sources")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for (j, src) in sources.iter().enumerate() {
            let Some(t) = src.get("serviceAccountToken") else {
                continue;
            };
            let field = format!("spec.volumes[{i}].projected.sources[{j}].serviceAccountToken");
            if let Some(exp) = t.get("expirationSeconds").and_then(Value::as_i64) {
                if exp < 600 {
                    causes.push(cause(
                        "FieldValueInvalid",
                        format!("{field}.expirationSeconds"),
                        format!(
                            "Invalid value: {exp}: may not specify a duration less than 10 minutes"
                        ),
                    ));
                } else if exp > 1 << 32 {
                    causes.push(cause(
                        "FieldValueInvalid",
                        format!("{field}.expirationSeconds"),
                        format!("Invalid value: {exp}: may not specify a duration larger than 2^32 seconds"),
                    ));
                }
            }
            if str_at(t, &["path"]).is_empty() {
                causes.push(cause(
                    "FieldValueRequired",
                    format!("{field}.path"),
                    "Required value",
                ));
            }
        }
    }
    causes
}

/// The pod spec update rule: only images, activeDeadlineSeconds, tolerations (additions) and
/// terminationGracePeriodSeconds may change.
pub fn check_pod_spec_update(old: &Value, new: &Value) -> Result<(), ApiError> {
    // Most updates (status, labels, annotations) leave the spec as it was.
    if old.get("spec") == new.get("spec") {
        return Ok(());
    }
    let mut relaxed = old.get("spec").cloned().unwrap_or(json!({}));
    let new_spec = new.get("spec").cloned().unwrap_or(json!({}));
    for list in ["containers", "initContainers"] {
        if let (Some(r), Some(n)) = (
            relaxed.get_mut(list).and_then(Value::as_array_mut),
            new_spec.get(list).and_then(Value::as_array),
        ) && r.len() == n.len()
        {
            for (rc, nc) in r.iter_mut().zip(n) {
                if let Some(img) = nc.get("image") {
                    rc["image"] = img.clone();
                }
            }
        }
    }
    for k in [
        "activeDeadlineSeconds",
        "tolerations",
        "terminationGracePeriodSeconds",
    ] {
        match new_spec.get(k) {
            Some(v) => relaxed[k] = v.clone(),
            None => {
                if let Some(m) = relaxed.as_object_mut() {
                    m.remove(k);
                }
            }
        }
    }
    if relaxed == new_spec {
        return Ok(());
    }
    Err(ApiError::invalid(
        super::resources::pods().target(),
        name_of(new),
        vec![cause(
            "FieldValueForbidden",
            "spec",
            "Forbidden: pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)",
        )],
    ))
}

/// events.k8s.io/v1 Event validation on create (what the Recorder must satisfy).
pub fn validate_event(ev: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    for (field, max) in [
        ("eventTime", None),
        ("reportingController", None),
        ("reportingInstance", Some(128)),
        ("action", Some(128)),
        ("reason", Some(128)),
    ] {
        let v = str_at(ev, &[field]);
        if v.is_empty() {
            causes.push(cause("FieldValueRequired", field, "Required value"));
        } else if let Some(max) = max
            && v.len() > max
        {
            causes.push(cause(
                "FieldValueTooLong",
                field,
                format!("Too long: may not be more than {max} bytes"),
            ));
        }
    }
    let ty = str_at(ev, &["type"]);
    if ty != "Normal" && ty != "Warning" {
        causes.push(cause(
            "FieldValueNotSupported",
            "type",
            format!("Unsupported value: \"{ty}\": supported values: \"Normal\", \"Warning\""),
        ));
    }
    if str_at(ev, &["note"]).len() > 1024 {
        causes.push(cause(
            "FieldValueTooLong",
            "note",
            "Too long: may not be more than 1024 bytes",
        ));
    }
    causes
}

/// Namespace create defaults: the name label, finalizer and Active phase.
pub fn default_namespace(ns: &mut Value) {
    let name = name_of(ns).to_string();
    let labels = super::util::object_field_mut(
        ns.get_mut("metadata")
            .expect("metadata set before defaulting"),
        "labels",
    );
    labels.insert("kubernetes.io/metadata.name".into(), json!(name));
    ns["spec"] = json!({"finalizers": ["kubernetes"]});
    ns["status"] = json!({"phase": "Active"});
}

/// Secret create defaults: `type: Opaque`, `stringData` folded into base64 `data`.
pub fn default_secret(secret: &mut Value) {
    use base64::Engine as _;
    let Some(m) = secret.as_object_mut() else {
        return;
    };
    m.entry("type").or_insert(json!("Opaque"));
    if let Some(Value::Object(sd)) = m.remove("stringData") {
        let data = m.entry("data").or_insert(json!({}));
        for (k, v) in sd {
            let s = v.as_str().unwrap_or("").to_string();
            data[k] = json!(base64::engine::general_purpose::STANDARD.encode(s));
        }
    }
}

/// MutatingWebhookConfiguration create/update defaults (`admissionregistration/v1` defaults).
pub fn default_mutating_webhooks(cfg: &mut Value) {
    if let Some(hooks) = cfg.get_mut("webhooks").and_then(Value::as_array_mut) {
        for h in hooks {
            let Some(m) = h.as_object_mut() else { continue };
            m.entry("failurePolicy").or_insert(json!("Fail"));
            m.entry("matchPolicy").or_insert(json!("Equivalent"));
            m.entry("namespaceSelector").or_insert(json!({}));
            m.entry("objectSelector").or_insert(json!({}));
            m.entry("timeoutSeconds").or_insert(json!(10));
            m.entry("reinvocationPolicy").or_insert(json!("Never"));
            if let Some(rules) = m.get_mut("rules").and_then(Value::as_array_mut) {
                for r in rules {
                    if let Some(rm) = r.as_object_mut() {
                        rm.entry("scope").or_insert(json!("*"));
                    }
                }
            }
            if let Some(svc) = m
                .get_mut("clientConfig")
                .and_then(|c| c.get_mut("service"))
                .and_then(Value::as_object_mut)
            {
                svc.entry("port").or_insert(json!(443));
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (house rule)
mod tests {
    use super::*;

    #[test]
    fn image_repositories_drop_tag_and_digest() {
        let cases = [
            ("approle-init", "approle-init"),
            ("approle-init:1.0", "approle-init"),
            ("ghcr.io/x/approle-init:1.0", "ghcr.io/x/approle-init"),
            ("localhost:5000/approle-init", "localhost:5000/approle-init"),
            ("r/approle-init@sha256:abc", "r/approle-init"),
            ("r/approle-init:1@sha256:abc", "r/approle-init"),
        ];
        for (image, want) in cases {
            assert_eq!(image_repository(image), want, "{image}");
        }
    }

    #[test]
    fn pod_defaults_fill_the_spec_and_reset_status() {
        let mut pod = json!({"metadata": {"name": "p"},
            "spec": {"containers": [{"name": "a", "image": "busybox"}]},
            "status": {"phase": "Running"}});
        default_pod(&mut pod);
        assert_eq!(pod["spec"]["restartPolicy"], "Always");
        assert_eq!(pod["spec"]["serviceAccountName"], "default");
        assert_eq!(pod["spec"]["containers"][0]["imagePullPolicy"], "Always");
        assert_eq!(pod["status"]["phase"], "Pending");
    }

    #[test]
    fn pod_validation_reports_missing_containers_and_bad_mounts() {
        let causes = validate_pod(&json!({"spec": {}}));
        assert_eq!(causes[0].field, "spec.containers");
        let causes = validate_pod(&json!({"spec": {"containers": [
            {"name": "a", "image": "i", "volumeMounts": [{"name": "v", "mountPath": "/v"}]}]}}));
        assert_eq!(causes[0].field, "spec.containers[0].volumeMounts[0].name");
        let causes = validate_pod(&json!({"spec": {
            "containers": [{"name": "a", "image": "i", "volumeMounts": [
                {"name": "v", "mountPath": "/v"}, {"name": "t", "mountPath": "/v"}]}],
            "volumes": [{"name": "v", "emptyDir": {}}, {"name": "t", "emptyDir": {}}]}}));
        assert_eq!(causes.len(), 1, "{causes:?}");
        assert_eq!(
            causes[0].field,
            "spec.containers[0].volumeMounts[1].mountPath"
        );
    }

    #[test]
    fn projected_token_expiry_is_at_least_ten_minutes() {
        let pod = |exp: i64| {
            json!({"spec": {
                "containers": [{"name": "a", "image": "i"}],
                "volumes": [{"name": "t", "projected": {"sources": [
                    {"serviceAccountToken": {"audience": "x", "expirationSeconds": exp, "path": "token"}}]}}]}})
        };
        assert!(validate_pod(&pod(600)).is_empty());
        let causes = validate_pod(&pod(599));
        assert_eq!(
            causes[0].field,
            "spec.volumes[0].projected.sources[0].serviceAccountToken.expirationSeconds"
        );
        assert!(
            causes[0].message.contains("less than 10 minutes"),
            "{causes:?}"
        );
    }

    #[test]
    fn pod_spec_updates_are_limited_to_images() {
        let old = json!({"spec": {"containers": [{"name": "a", "image": "x:1"}]}});
        let new_image = json!({"spec": {"containers": [{"name": "a", "image": "x:2"}]}});
        assert!(check_pod_spec_update(&old, &new_image).is_ok());
        let new_env = json!({"metadata": {"name": "p"}, "spec": {"containers": [
            {"name": "a", "image": "x:1", "env": [{"name": "E", "value": "1"}]}]}});
        assert_eq!(check_pod_spec_update(&old, &new_env).unwrap_err().code, 422);
    }
}

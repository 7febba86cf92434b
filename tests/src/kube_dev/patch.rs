//! The three PATCH flavours the API server accepts for built-in kinds:
//!
//! * `application/merge-patch+json` — RFC 7386 (`json_patch::merge`).
//! * `application/json-patch+json` — RFC 6902 (`json_patch::patch`).
//! * `application/strategic-merge-patch+json` — like a merge patch, except that lists with a
//!   known merge key (containers by `name`, volumeMounts by `mountPath`, ...) are merged element
//!   by element, and the `$patch`, `$retainKeys`, `$deleteFromPrimitiveList/…` and
//!   `$setElementOrder/…` directives are honoured. The merge keys are those of the core/v1 types
//!   kubectl and our controller touch (pods, webhook configurations); lists without one are
//!   replaced, as for the real types without `patchStrategy`.
//! * `application/apply-patch+yaml` (server-side apply) is approximated by a merge patch that may
//!   create the object; field ownership and apply conflicts are not modelled.

use serde_json::{Map, Value};

use super::status::ApiError;

/// The PATCH flavour, from the request's `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchKind {
    /// RFC 7386.
    Merge,
    /// RFC 6902.
    Json,
    /// Kubernetes strategic merge patch.
    Strategic,
    /// Server-side apply (approximated).
    Apply,
}

impl PatchKind {
    /// Parses a `Content-Type` header value.
    pub fn from_content_type(ct: &str) -> Result<Self, ApiError> {
        let base = ct.split(';').next().unwrap_or("").trim();
        match base {
            "application/merge-patch+json" => Ok(Self::Merge),
            "application/json-patch+json" => Ok(Self::Json),
            "application/strategic-merge-patch+json" => Ok(Self::Strategic),
            "application/apply-patch+yaml" | "application/apply-patch+cbor" => Ok(Self::Apply),
            _ => Err(ApiError::unsupported_media_type(ct)),
        }
    }
}

/// Applies `body` of the given kind to `target`.
pub fn apply(kind: PatchKind, target: &mut Value, body: &[u8]) -> Result<(), ApiError> {
    match kind {
        PatchKind::Merge | PatchKind::Apply => {
            let p: Value = parse_body(body)?;
            json_patch::merge(target, &p);
            Ok(())
        }
        PatchKind::Json => {
            let p: json_patch::Patch = serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
            json_patch::patch(target, &p).map_err(|e| {
                ApiError::internal(format!("jsonpatch error: {e}")).with_code_reason(422, "Invalid")
            })
        }
        PatchKind::Strategic => {
            let p: Value = parse_body(body)?;
            strategic_merge(target, &p);
            Ok(())
        }
    }
}

fn parse_body(body: &[u8]) -> Result<Value, ApiError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!(
            "error decoding patch: {e} (YAML bodies are not supported by kube-dev; send JSON)"
        ))
    })?;
    if !v.is_object() {
        return Err(ApiError::bad_request(
            "json: cannot unmarshal patch into Go value of type map[string]interface {}",
        ));
    }
    Ok(v)
}

impl ApiError {
    /// The same error with another code and reason (used where the real server wraps errors).
    pub fn with_code_reason(mut self, code: u16, reason: &'static str) -> Self {
        self.code = code;
        self.reason = reason;
        self
    }
}

/// The merge key of a list field, by field name (core/v1 and admissionregistration/v1).
fn merge_key(field: &str) -> Option<&'static str> {
    Some(match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "volumes"
        | "env"
        | "imagePullSecrets"
        | "containerStatuses"
        | "initContainerStatuses"
        | "ephemeralContainerStatuses"
        | "webhooks"
        | "resourceClaims" => "name",
        "volumeMounts" => "mountPath",
        "volumeDevices" => "devicePath",
        "ports" => "containerPort",
        "conditions" => "type",
        "podIPs" | "hostIPs" | "hostAliases" => "ip",
        "ownerReferences" => "uid",
        _ => return None,
    })
}

/// Lists of scalars merged as sets.
fn is_primitive_merge_list(field: &str) -> bool {
    matches!(field, "finalizers")
}

/// Applies a strategic merge patch.
pub fn strategic_merge(target: &mut Value, patch: &Value) {
    match (target.as_object_mut(), patch.as_object()) {
        (Some(t), Some(p)) => merge_map(t, p),
        _ => *target = strip_directives(patch),
    }
}

fn strip_directives(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (k.clone(), strip_directives(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(
            a.iter()
                .filter(|e| e.get("$patch").is_none())
                .map(strip_directives)
                .collect(),
        ),
        other => other.clone(),
    }
}

fn merge_map(target: &mut Map<String, Value>, patch: &Map<String, Value>) {
    if patch.get("$patch").and_then(Value::as_str) == Some("replace") {
        *target = match strip_directives(&Value::Object(patch.clone())) {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        return;
    }
    for (k, v) in patch {
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(list)), Some(remove)) = (target.get_mut(field), v.as_array())
            {
                list.retain(|x| !remove.contains(x));
            }
            continue;
        }
        if k.starts_with('$') {
            continue;
        }
        match v {
            Value::Null => {
                target.remove(k);
            }
            Value::Object(pm) => {
                if pm.get("$patch").and_then(Value::as_str) == Some("delete") {
                    target.remove(k);
                    continue;
                }
                match target.get_mut(k) {
                    Some(Value::Object(tm)) => merge_map(tm, pm),
                    _ => {
                        target.insert(k.clone(), strip_directives(v));
                    }
                }
            }
            Value::Array(pl) => {
                let merged = match (merge_key(k), target.get_mut(k)) {
                    (Some(key), Some(Value::Array(tl))) if pl.iter().all(Value::is_object) => {
                        merge_list(tl, pl, key);
                        true
                    }
                    (_, Some(Value::Array(tl))) if is_primitive_merge_list(k) => {
                        for x in pl {
                            if !tl.contains(x) {
                                tl.push(x.clone());
                            }
                        }
                        true
                    }
                    _ => false,
                };
                if !merged {
                    target.insert(k.clone(), strip_directives(v));
                }
            }
            other => {
                target.insert(k.clone(), other.clone());
            }
        }
    }
    if let Some(keep) = patch.get("$retainKeys").and_then(Value::as_array) {
        let keep: Vec<&str> = keep.iter().filter_map(Value::as_str).collect();
        target.retain(|k, _| keep.contains(&k.as_str()));
    }
}

fn merge_list(target: &mut Vec<Value>, patch: &[Value], key: &str) {
    if patch
        .iter()
        .any(|e| e.get("$patch").and_then(Value::as_str) == Some("replace"))
    {
        *target = patch
            .iter()
            .filter(|e| e.get("$patch").is_none())
            .map(strip_directives)
            .collect();
        return;
    }
    for p in patch {
        let pkey = p.get(key);
        let pos = pkey.and_then(|pk| target.iter().position(|t| t.get(key) == Some(pk)));
        if p.get("$patch").and_then(Value::as_str) == Some("delete") {
            if let Some(pk) = pkey {
                target.retain(|t| t.get(key) != Some(pk));
            }
            continue;
        }
        match (pos, p.as_object()) {
            (Some(i), Some(pm)) => {
                if let Some(tm) = target[i].as_object_mut() {
                    merge_map(tm, pm);
                }
            }
            _ => target.push(strip_directives(p)),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (house rule)
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strategic_merge_merges_containers_by_name() {
        let mut pod = json!({"spec": {"containers": [
            {"name": "a", "image": "x:1", "env": [{"name": "E", "value": "1"}]},
            {"name": "b", "image": "y:1"}
        ]}});
        strategic_merge(
            &mut pod,
            &json!({"spec": {"containers": [
                {"name": "a", "image": "x:2", "env": [{"name": "F", "value": "2"}]},
                {"name": "c", "image": "z:1"}
            ]}}),
        );
        let c = pod["spec"]["containers"].as_array().unwrap();
        assert_eq!(c.len(), 3);
        assert_eq!(c[0]["image"], "x:2");
        assert_eq!(c[0]["env"].as_array().unwrap().len(), 2);
        assert_eq!(c[1]["image"], "y:1");
        assert_eq!(c[2]["name"], "c");
    }

    #[test]
    fn strategic_merge_honours_directives() {
        let mut obj = json!({"metadata": {"labels": {"a": "1", "b": "2"}, "finalizers": ["x", "y"]},
            "spec": {"containers": [{"name": "a"}, {"name": "b"}], "tolerations": [{"key": "t"}]}});
        strategic_merge(
            &mut obj,
            &json!({
                "metadata": {"labels": {"a": null, "c": "3"},
                             "$deleteFromPrimitiveList/finalizers": ["x"]},
                "spec": {"containers": [{"name": "b", "$patch": "delete"}],
                         "$setElementOrder/containers": [{"name": "a"}],
                         "tolerations": [{"key": "u"}]}
            }),
        );
        assert_eq!(obj["metadata"]["labels"], json!({"b": "2", "c": "3"}));
        assert_eq!(obj["metadata"]["finalizers"], json!(["y"]));
        assert_eq!(obj["spec"]["containers"], json!([{"name": "a"}]));
        assert_eq!(obj["spec"]["tolerations"], json!([{"key": "u"}]));
    }

    #[test]
    fn merge_and_json_patches_apply() {
        let mut obj = json!({"metadata": {"annotations": {"a": "1"}}});
        apply(
            PatchKind::Merge,
            &mut obj,
            br#"{"metadata":{"annotations":{"b":"2"}}}"#,
        )
        .unwrap();
        assert_eq!(obj["metadata"]["annotations"], json!({"a": "1", "b": "2"}));
        apply(
            PatchKind::Json,
            &mut obj,
            br#"[{"op":"remove","path":"/metadata/annotations/a"}]"#,
        )
        .unwrap();
        assert_eq!(obj["metadata"]["annotations"], json!({"b": "2"}));
        let e = apply(
            PatchKind::Json,
            &mut obj,
            br#"[{"op":"remove","path":"/nope"}]"#,
        );
        assert!(e.is_err());
    }

    #[test]
    fn content_types_map_to_kinds() {
        assert_eq!(
            PatchKind::from_content_type("application/strategic-merge-patch+json").unwrap(),
            PatchKind::Strategic
        );
        assert_eq!(
            PatchKind::from_content_type("text/plain").unwrap_err().code,
            415
        );
    }
}

//! Label and field selectors, parsed like `k8s.io/apimachinery/pkg/labels` and `.../fields`.
//!
//! Labels: `a=b`, `a==b`, `a!=b`, `a in (x,y)`, `a notin (x)`, `a`, `!a`, `a>1`, `a<1`,
//! comma-separated (commas inside parentheses belong to the set). Fields: `f=v`, `f==v`, `f!=v`
//! on the fields each resource supports; an unsupported field is a 400 like the real server's.

use std::collections::BTreeSet;

use serde_json::Value;

use super::status::ApiError;
use super::util::str_at;

/// One parsed label requirement.
#[derive(Debug, Clone, PartialEq)]
enum LabelReq {
    Eq(String, String),
    NotEq(String, String),
    In(String, BTreeSet<String>),
    NotIn(String, BTreeSet<String>),
    Exists(String),
    NotExists(String),
    Gt(String, i64),
    Lt(String, i64),
}

/// A parsed label selector (all requirements must hold).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LabelSelector(Vec<LabelReq>);

fn split_top_level(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn parse_set(rest: &str, whole: &str) -> Result<BTreeSet<String>, ApiError> {
    let rest = rest.trim();
    let inner = rest
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "unable to parse requirement: found '{rest}', expected: '('"
            ))
        })?;
    let _ = whole;
    Ok(inner
        .split(',')
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect())
}

impl LabelSelector {
    /// Parses `labelSelector`.
    pub fn parse(s: &str) -> Result<Self, ApiError> {
        let mut reqs = Vec::new();
        if s.trim().is_empty() {
            return Ok(Self(reqs));
        }
        for part in split_top_level(s) {
            let p = part.trim();
            if p.is_empty() {
                return Err(ApiError::bad_request(format!(
                    "unable to parse requirement: found '', expected: identifier (selector {s:?})"
                )));
            }
            let req = if let Some(k) = p.strip_prefix('!') {
                LabelReq::NotExists(k.trim().to_string())
            } else if let Some((k, v)) = p.split_once("!=") {
                LabelReq::NotEq(k.trim().to_string(), v.trim().to_string())
            } else if let Some((k, v)) = p.split_once("==") {
                LabelReq::Eq(k.trim().to_string(), v.trim().to_string())
            } else if let Some((k, v)) = p.split_once('=') {
                LabelReq::Eq(k.trim().to_string(), v.trim().to_string())
            } else if let Some(idx) = p.find(" notin ") {
                LabelReq::NotIn(p[..idx].trim().to_string(), parse_set(&p[idx + 7..], s)?)
            } else if let Some(idx) = p.find(" in ") {
                LabelReq::In(p[..idx].trim().to_string(), parse_set(&p[idx + 4..], s)?)
            } else if let Some((k, v)) = p.split_once('>') {
                let n = v.trim().parse().map_err(|_| {
                    ApiError::bad_request(format!("unable to parse requirement: for 'Gt', 'Lt' operators, the value must be an integer (got {v:?})"))
                })?;
                LabelReq::Gt(k.trim().to_string(), n)
            } else if let Some((k, v)) = p.split_once('<') {
                let n = v.trim().parse().map_err(|_| {
                    ApiError::bad_request(format!("unable to parse requirement: for 'Gt', 'Lt' operators, the value must be an integer (got {v:?})"))
                })?;
                LabelReq::Lt(k.trim().to_string(), n)
            } else if p.contains(' ') || p.contains('(') {
                return Err(ApiError::bad_request(format!(
                    "unable to parse requirement: found '{p}', expected: in, notin, =, ==, !=, gt, lt"
                )));
            } else {
                LabelReq::Exists(p.to_string())
            };
            reqs.push(req);
        }
        Ok(Self(reqs))
    }

    /// Builds a selector from a `metav1.LabelSelector` object (`matchLabels`, `matchExpressions`).
    pub fn from_object(sel: &Value) -> Result<Self, ApiError> {
        let mut reqs = Vec::new();
        if let Some(m) = sel.get("matchLabels").and_then(Value::as_object) {
            for (k, v) in m {
                reqs.push(LabelReq::Eq(
                    k.clone(),
                    v.as_str().unwrap_or("").to_string(),
                ));
            }
        }
        if let Some(exprs) = sel.get("matchExpressions").and_then(Value::as_array) {
            for e in exprs {
                let key = str_at(e, &["key"]).to_string();
                let values: BTreeSet<String> = e
                    .get("values")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(|v| v.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default();
                reqs.push(match str_at(e, &["operator"]) {
                    "In" => LabelReq::In(key, values),
                    "NotIn" => LabelReq::NotIn(key, values),
                    "Exists" => LabelReq::Exists(key),
                    "DoesNotExist" => LabelReq::NotExists(key),
                    op => {
                        return Err(ApiError::bad_request(format!(
                            "{op:?} is not a valid label selector operator"
                        )));
                    }
                });
            }
        }
        Ok(Self(reqs))
    }

    /// Whether the labels of `obj` satisfy every requirement.
    pub fn matches(&self, obj: &Value) -> bool {
        let labels = obj.get("metadata").and_then(|m| m.get("labels"));
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.0.iter().all(|r| match r {
            LabelReq::Eq(k, v) => get(k) == Some(v.as_str()),
            LabelReq::NotEq(k, v) => get(k) != Some(v.as_str()),
            LabelReq::In(k, set) => get(k).is_some_and(|x| set.contains(x)),
            LabelReq::NotIn(k, set) => get(k).is_none_or(|x| !set.contains(x)),
            LabelReq::Exists(k) => get(k).is_some(),
            LabelReq::NotExists(k) => get(k).is_none(),
            LabelReq::Gt(k, n) => get(k)
                .and_then(|x| x.parse::<i64>().ok())
                .is_some_and(|x| x > *n),
            LabelReq::Lt(k, n) => get(k)
                .and_then(|x| x.parse::<i64>().ok())
                .is_some_and(|x| x < *n),
        })
    }

    /// Whether the selector has no requirements.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A parsed field selector.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FieldSelector(Vec<(Vec<String>, bool, String)>);

/// The fields a resource supports in field selectors, as JSON paths in the served shape.
fn supported_fields(storage: &str, core_shape: bool) -> &'static [&'static str] {
    match (storage, core_shape) {
        ("pods", _) => &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ],
        ("events", true) => &[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        ],
        ("events", false) => &[
            "regarding.kind",
            "regarding.namespace",
            "regarding.name",
            "regarding.uid",
            "regarding.apiVersion",
            "regarding.resourceVersion",
            "regarding.fieldPath",
            "reason",
            "reportingController",
            "type",
        ],
        ("secrets", _) => &["type"],
        ("namespaces", _) => &["status.phase"],
        _ => &[],
    }
}

impl FieldSelector {
    /// Parses `fieldSelector` for a resource (`core_shape`: served as core/v1, for events).
    pub fn parse(s: &str, storage: &str, core_shape: bool) -> Result<Self, ApiError> {
        let mut reqs = Vec::new();
        if s.trim().is_empty() {
            return Ok(Self(reqs));
        }
        for part in s.split(',') {
            let p = part.trim();
            let (field, negate, value) = if let Some((f, v)) = p.split_once("!=") {
                (f, true, v)
            } else if let Some((f, v)) = p.split_once("==") {
                (f, false, v)
            } else if let Some((f, v)) = p.split_once('=') {
                (f, false, v)
            } else {
                return Err(ApiError::bad_request(format!(
                    "invalid selector: '{s}'; can't understand '{p}'"
                )));
            };
            let field = field.trim();
            let ok = field == "metadata.name"
                || field == "metadata.namespace"
                || supported_fields(storage, core_shape).contains(&field);
            if !ok {
                return Err(ApiError::bad_request(format!(
                    "field label not supported: {field}"
                )));
            }
            reqs.push((
                field.split('.').map(str::to_string).collect(),
                negate,
                value.trim().to_string(),
            ));
        }
        Ok(Self(reqs))
    }

    /// Whether `obj` (in the served shape) satisfies every requirement.
    pub fn matches(&self, obj: &Value) -> bool {
        self.0.iter().all(|(path, negate, want)| {
            let mut cur = Some(obj);
            for p in path {
                cur = cur.and_then(|c| c.get(p));
            }
            let have = match cur {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Bool(b)) => b.to_string(),
                Some(Value::Number(n)) => n.to_string(),
                // `source` on core events is an object; the real selector matches its component.
                Some(Value::Object(o)) => o
                    .get("component")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                _ if path.len() == 2 && path[0] == "spec" && path[1] == "hostNetwork" => {
                    "false".to_string()
                }
                _ => String::new(),
            };
            (have == *want) != *negate
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (house rule)
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(labels: Value) -> Value {
        json!({"metadata": {"name": "p", "namespace": "ns", "labels": labels},
               "spec": {"nodeName": "n1"}, "status": {"phase": "Running", "podIP": "127.0.1.1"}})
    }

    #[test]
    fn label_selector_case_table() {
        let p = pod(json!({"a": "b", "e": "x", "g": "1"}));
        let cases = [
            ("a=b", true),
            ("a==b", true),
            ("a=c", false),
            ("c!=d", true),
            ("a!=b", false),
            ("e in (x, y)", true),
            ("e in (y)", false),
            ("e notin (y)", true),
            ("!f", true),
            ("!a", false),
            ("g", true),
            ("h", false),
            ("a=b,c!=d,e in (x,y),!f,g", true),
            ("g>0", true),
            ("g<1", false),
            ("", true),
        ];
        for (sel, want) in cases {
            assert_eq!(
                LabelSelector::parse(sel).unwrap().matches(&p),
                want,
                "selector {sel:?}"
            );
        }
    }

    #[test]
    fn bad_label_selectors_are_rejected() {
        assert!(LabelSelector::parse("a in x").is_err());
        assert!(LabelSelector::parse("a,,b").is_err());
    }

    #[test]
    fn pod_field_selectors_match_and_unknown_fields_are_refused() {
        let p = pod(json!({}));
        let ok = |s: &str| FieldSelector::parse(s, "pods", true).unwrap().matches(&p);
        assert!(ok("metadata.name=p"));
        assert!(ok("metadata.namespace==ns,spec.nodeName=n1"));
        assert!(ok("status.podIP=127.0.1.1"));
        assert!(!ok("status.phase!=Running"));
        assert!(ok("spec.hostNetwork=false"));
        let e = FieldSelector::parse("metadata.labels=x", "pods", true).unwrap_err();
        assert_eq!(e.message, "field label not supported: metadata.labels");
    }

    #[test]
    fn label_selector_objects_convert() {
        let s = LabelSelector::from_object(&json!({
            "matchLabels": {"a": "b"},
            "matchExpressions": [{"key": "e", "operator": "In", "values": ["x"]}]
        }))
        .unwrap();
        assert!(s.matches(&pod(json!({"a": "b", "e": "x"}))));
        assert!(!s.matches(&pod(json!({"a": "b"}))));
    }
}

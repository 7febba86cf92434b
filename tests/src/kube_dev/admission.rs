//! Mutating admission on pod CREATE, like the real API server's `MutatingAdmissionWebhook`
//! plugin:
//!
//! ```text
//!  for each MutatingWebhookConfiguration (by name), each webhook (in order):
//!    rules (CREATE, "" / v1 / pods) ─▶ namespaceSelector (namespace labels)
//!    ─▶ objectSelector (pod labels) ─▶ matchConditions (CEL: object, oldObject, request,
//!       namespaceObject) ─▶ POST AdmissionReview v1 over HTTPS (caBundle-verified,
//!       timeoutSeconds) ─▶ allowed? apply base64 JSONPatch : deny
//!    a failed call honours failurePolicy (Fail = reject, Ignore = skip)
//! ```
//!
//! A `clientConfig.service` reference is mapped to a loopback address from
//! [`Admission::services`] (`namespace/name`); the TLS name checked is `<name>.<namespace>.svc`,
//! as the real API server checks it. Warnings are passed back to the client as `Warning`
//! headers. Reinvocation is not modelled.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};

use super::selector::LabelSelector;
use super::status::ApiError;
use super::store::Store;
use super::util::{namespace_of, new_uid, str_at};

/// Admission settings.
#[derive(Debug, Clone, Default)]
pub struct Admission {
    /// `namespace/name` of a webhook Service → the loopback address that serves it. Shared so
    /// that a webhook started after kube-dev (it needs the kubeconfig first) can be added.
    pub services: Arc<RwLock<HashMap<String, SocketAddr>>>,
    /// One HTTP client per webhook connection setting (address, CA bundle, timeout), kept with
    /// its open connections, as the API server keeps its webhook clients: not a TLS handshake
    /// per admission call.
    clients: Arc<std::sync::Mutex<HashMap<String, reqwest::Client>>>,
    /// matchCondition expressions compiled once, as the API server compiles them when the
    /// configuration is loaded, not on every admission call.
    programs: Programs,
}

/// Compiled CEL programs by expression text.
type Programs = Arc<std::sync::Mutex<HashMap<String, Arc<cel::Program>>>>;

/// CEL's standard library, built once: `cel::Context::default()` builds it anew for every
/// evaluation (registering each function), which cost as much as evaluating the expression.
static CEL_STDLIB: std::sync::LazyLock<Arc<cel::Env>> =
    std::sync::LazyLock::new(|| Arc::new(cel::Env::stdlib()));

/// The result of admission.
#[derive(Debug, Default)]
pub struct AdmitOutcome {
    /// The pod after webhook patches, if any webhook patched it.
    pub patched: Option<Value>,
    /// Webhook warnings.
    pub warnings: Vec<String>,
}

/// Why a webhook call failed (before any answer could be used).
#[derive(Debug, thiserror::Error)]
enum CallError {
    #[error("failed to call webhook: {0}")]
    Transport(String),
    #[error("{0}")]
    Response(String),
}

fn rule_matches(rule: &Value) -> bool {
    let has = |field: &str, want: &[&str]| {
        rule.get(field).and_then(Value::as_array).is_some_and(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .any(|v| want.contains(&v))
        })
    };
    let scope = str_at(rule, &["scope"]);
    has("operations", &["CREATE", "*"])
        && has("apiGroups", &["", "*"])
        && has("apiVersions", &["v1", "*"])
        && has("resources", &["pods", "*", "*/*"])
        && (scope.is_empty() || scope == "*" || scope == "Namespaced")
}

/// Evaluates `matchConditions`: all must be true; an evaluation error is a call error.
fn match_conditions(
    programs: &Programs,
    hook: &Value,
    vars: &[(&str, &Value)],
) -> Result<bool, String> {
    let Some(conds) = hook.get("matchConditions").and_then(Value::as_array) else {
        return Ok(true);
    };
    for c in conds {
        let name = str_at(c, &["name"]);
        let expr = str_at(c, &["expression"]);
        let cached = programs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(expr)
            .cloned();
        let program = match cached {
            Some(p) => p,
            None => {
                let p =
                    Arc::new(cel::Program::compile(expr).map_err(|e| {
                        format!("compilation failed for matchCondition {name:?}: {e}")
                    })?);
                programs
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(expr.to_owned(), p.clone());
                p
            }
        };
        let mut ctx = cel::Context::with_env(CEL_STDLIB.clone());
        // Only what the expression reads: converting the pod into CEL values, and the request
        // that holds it again, was most of an evaluation.
        let references = program.references();
        for (k, v) in vars.iter().filter(|(k, _)| references.has_variable(k)) {
            ctx.add_variable(*k, *v)
                .map_err(|e| format!("matchCondition {name:?}: {e}"))?;
        }
        match program.execute(&ctx) {
            Ok(cel::Value::Bool(true)) => {}
            Ok(cel::Value::Bool(false)) => return Ok(false),
            Ok(other) => {
                return Err(format!(
                    "matchCondition {name:?} evaluated to a non-boolean: {other:?}"
                ));
            }
            Err(e) => return Err(format!("matchCondition {name:?} failed: {e}")),
        }
    }
    Ok(true)
}

impl Admission {
    /// Admission with these webhook Service addresses (`namespace/name` → address).
    pub fn new(services: HashMap<String, SocketAddr>) -> Self {
        Self {
            services: Arc::new(RwLock::new(services)),
            ..Self::default()
        }
    }

    /// Runs the matching mutating webhooks for a pod being created.
    pub async fn admit_pod_create(
        &self,
        store: &Store,
        pod: &Value,
    ) -> Result<AdmitOutcome, ApiError> {
        let (configs, _) = store.list("mutatingwebhookconfigurations", None);
        let mut out = AdmitOutcome::default();
        if configs.is_empty() {
            return Ok(out);
        }
        let ns_name = namespace_of(pod).to_string();
        let ns_obj = store
            .get("namespaces", "", &ns_name)
            .unwrap_or_else(|| Arc::new(json!({"metadata": {"name": ns_name}})));
        let mut current = pod.clone();
        for cfg in &configs {
            for hook in cfg
                .get("webhooks")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
            {
                let name = str_at(&hook, &["name"]).to_string();
                let rules = hook.get("rules").and_then(Value::as_array);
                if !rules.is_some_and(|r| r.iter().any(rule_matches)) {
                    continue;
                }
                let ns_sel = LabelSelector::from_object(
                    hook.get("namespaceSelector").unwrap_or(&json!({})),
                )?;
                if !ns_sel.matches(&ns_obj) {
                    continue;
                }
                let obj_sel =
                    LabelSelector::from_object(hook.get("objectSelector").unwrap_or(&json!({})))?;
                if !obj_sel.matches(&current) {
                    continue;
                }
                let request = review_request(&current);
                let fail_open = str_at(&hook, &["failurePolicy"]) == "Ignore";
                let call_failed = |msg: String| {
                    ApiError::internal(format!("failed calling webhook \"{name}\": {msg}"))
                };
                match match_conditions(
                    &self.programs,
                    &hook,
                    &[
                        ("object", &current),
                        ("oldObject", &Value::Null),
                        ("request", &request["request"]),
                        ("namespaceObject", &ns_obj),
                    ],
                ) {
                    Ok(true) => {}
                    Ok(false) => continue,
                    Err(e) if fail_open => {
                        tracing::warn!(webhook = %name, error = %e, "matchCondition error ignored");
                        continue;
                    }
                    Err(e) => return Err(call_failed(e)),
                }
                let response = match self.call(&hook, &request).await {
                    Ok(r) => r,
                    Err(e) if fail_open => {
                        tracing::warn!(webhook = %name, error = %e, "webhook call failed, failurePolicy Ignore");
                        continue;
                    }
                    Err(e) => return Err(call_failed(e.to_string())),
                };
                let resp = &response["response"];
                if str_at(resp, &["uid"]) != str_at(&request, &["request", "uid"]) {
                    let e = format!(
                        "expected response.uid=\"{}\", got \"{}\"",
                        str_at(&request, &["request", "uid"]),
                        str_at(resp, &["uid"])
                    );
                    if fail_open {
                        continue;
                    }
                    return Err(call_failed(e));
                }
                if let Some(ws) = resp.get("warnings").and_then(Value::as_array) {
                    out.warnings
                        .extend(ws.iter().filter_map(|w| w.as_str().map(str::to_string)));
                }
                if resp.get("allowed").and_then(Value::as_bool) != Some(true) {
                    return Err(denied(&name, resp.get("status")));
                }
                if let Some(p) = resp.get("patch").filter(|p| !p.is_null()) {
                    let bytes = patch_bytes(p).map_err(&call_failed)?;
                    let ops: json_patch::Patch = serde_json::from_slice(&bytes)
                        .map_err(|e| call_failed(format!("decoding JSONPatch: {e}")))?;
                    json_patch::patch(&mut current, &ops).map_err(|e| {
                        ApiError::internal(format!(
                            "admission webhook \"{name}\" returned an invalid patch: {e}"
                        ))
                    })?;
                    out.patched = Some(current.clone());
                }
            }
        }
        Ok(out)
    }

    async fn call(&self, hook: &Value, review: &Value) -> Result<Value, CallError> {
        let cc = hook.get("clientConfig").cloned().unwrap_or(json!({}));
        let timeout = hook
            .get("timeoutSeconds")
            .and_then(Value::as_u64)
            .unwrap_or(10)
            .clamp(1, 30);
        let ca = str_at(&cc, &["caBundle"]);
        let (url, resolve) = if let Some(u) = cc.get("url").and_then(Value::as_str) {
            (u.to_string(), None)
        } else if let Some(svc) = cc.get("service") {
            let (ns, name) = (str_at(svc, &["namespace"]), str_at(svc, &["name"]));
            let key = format!("{ns}/{name}");
            let addr = self
                .services
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .get(&key)
                .copied();
            let addr = addr.ok_or_else(|| {
                CallError::Transport(format!(
                    "service \"{key}\" has no address in kube-dev (configure service_addresses / --service-address)"
                ))
            })?;
            let host = format!("{name}.{ns}.svc");
            let path = str_at(svc, &["path"]);
            let url = format!("https://{host}:{}{path}", addr.port());
            (url, Some((host, addr)))
        } else {
            return Err(CallError::Transport(
                "clientConfig has neither url nor service".into(),
            ));
        };
        let key = format!("{timeout} {resolve:?} {url} {ca}");
        let cached = self
            .clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .cloned();
        let client = match cached {
            Some(client) => client,
            None => {
                let mut builder = reqwest::Client::builder()
                    .timeout(Duration::from_secs(timeout))
                    .no_proxy();
                if !ca.is_empty() {
                    let pem = base64::engine::general_purpose::STANDARD
                        .decode(ca)
                        .map_err(|e| CallError::Transport(format!("invalid caBundle: {e}")))?;
                    let certs = reqwest::Certificate::from_pem_bundle(&pem)
                        .map_err(|e| CallError::Transport(format!("invalid caBundle: {e}")))?;
                    builder = builder.tls_certs_only(certs);
                }
                if let Some((host, addr)) = &resolve {
                    builder = builder.resolve(host, *addr);
                }
                let client = builder
                    .build()
                    .map_err(|e| CallError::Transport(e.to_string()))?;
                self.clients
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(key, client.clone());
                client
            }
        };
        let resp =
            client.post(&url).json(review).send().await.map_err(|e| {
                CallError::Transport(format!("Post \"{url}\": {}", error_chain(&e)))
            })?;
        let status = resp.status();
        let body = resp
            .bytes()
            .await
            .map_err(|e| CallError::Transport(e.to_string()))?;
        if !status.is_success() {
            return Err(CallError::Response(format!(
                "received invalid webhook response: HTTP {status}"
            )));
        }
        serde_json::from_slice(&body)
            .map_err(|e| CallError::Response(format!("received invalid webhook response: {e}")))
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// `patch` is base64 per the API; kube-core sends a JSON array of bytes, which Go decodes too.
fn patch_bytes(p: &Value) -> Result<Vec<u8>, String> {
    match p {
        Value::String(s) => base64::engine::general_purpose::STANDARD
            .decode(s)
            .map_err(|e| format!("decoding patch: {e}")),
        Value::Array(a) => a
            .iter()
            .map(|b| {
                b.as_u64()
                    .and_then(|n| u8::try_from(n).ok())
                    .ok_or_else(|| "decoding patch: not a byte".to_string())
            })
            .collect(),
        _ => Err("decoding patch: unexpected type".into()),
    }
}

/// `admission webhook "x" denied the request: <message>` with the webhook's code (≥ 400).
fn denied(name: &str, status: Option<&Value>) -> ApiError {
    let status = status.cloned().unwrap_or(json!({}));
    let code = status
        .get("code")
        .and_then(Value::as_u64)
        .and_then(|c| u16::try_from(c).ok())
        .filter(|c| *c >= 400)
        .unwrap_or(400);
    let by = format!("admission webhook \"{name}\" denied the request");
    let message = match (str_at(&status, &["message"]), str_at(&status, &["reason"])) {
        (m, _) if !m.is_empty() => format!("{by}: {m}"),
        (_, r) if !r.is_empty() => format!("{by}: {r}"),
        _ => format!("{by} without explanation"),
    };
    let mut e = ApiError::bad_request(message);
    e.code = code;
    e.reason = match code {
        403 => "Forbidden",
        422 => "Invalid",
        _ => "BadRequest",
    };
    e
}

fn review_request(pod: &Value) -> Value {
    let gvk = json!({"group": "", "version": "v1", "kind": "Pod"});
    let gvr = json!({"group": "", "version": "v1", "resource": "pods"});
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": new_uid(),
            "kind": gvk,
            "resource": gvr,
            "requestKind": gvk,
            "requestResource": gvr,
            "name": str_at(pod, &["metadata", "name"]),
            "namespace": namespace_of(pod),
            "operation": "CREATE",
            "userInfo": {"username": "kube-dev-admin", "groups": ["system:masters", "system:authenticated"]},
            "object": pod,
            "oldObject": null,
            "dryRun": false,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        }
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (house rule)
mod tests {
    use super::*;

    #[test]
    fn rules_match_pod_creation_only() {
        let r = json!({"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]});
        assert!(rule_matches(&r));
        let upd = json!({"operations": ["UPDATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]});
        assert!(!rule_matches(&upd));
        let any = json!({"operations": ["*"], "apiGroups": ["*"], "apiVersions": ["*"], "resources": ["*/*"]});
        assert!(rule_matches(&any));
    }

    #[test]
    fn match_conditions_evaluate_cel_on_the_object() {
        let hook = json!({"matchConditions": [{"name": "annotated",
            "expression": "has(object.metadata.annotations) && 'vault-approle.io/role' in object.metadata.annotations"}]});
        let yes = json!({"metadata": {"annotations": {"vault-approle.io/role": "web"}}});
        let no = json!({"metadata": {"labels": {"a": "b"}}});
        let programs = Programs::default();
        assert_eq!(
            match_conditions(&programs, &hook, &[("object", &yes)]),
            Ok(true)
        );
        assert_eq!(
            match_conditions(&programs, &hook, &[("object", &no)]),
            Ok(false)
        );
        // Compiled once, used again.
        assert_eq!(programs.lock().expect("lock").len(), 1);
        let bad = json!({"matchConditions": [{"name": "x", "expression": "1 +"}]});
        assert!(match_conditions(&programs, &bad, &[("object", &yes)]).is_err());
        // Each variable an expression reads is there, whichever of them it reads.
        let others = json!({"matchConditions": [{"name": "create-in-team",
            "expression": "request.operation == 'CREATE' && namespaceObject.metadata.name == 'team'"}]});
        let in_namespace = |ns: &str| {
            let request = json!({"operation": "CREATE"});
            let namespace = json!({"metadata": {"name": ns}});
            let vars = [
                ("object", &yes),
                ("request", &request),
                ("namespaceObject", &namespace),
            ];
            match_conditions(&programs, &others, &vars)
        };
        assert_eq!(in_namespace("team"), Ok(true));
        assert_eq!(in_namespace("other"), Ok(false));
    }

    #[test]
    fn patches_decode_from_base64_and_byte_arrays() {
        let raw = br#"[{"op":"add","path":"/a","value":1}]"#;
        let b64 = json!(base64::engine::general_purpose::STANDARD.encode(raw));
        assert_eq!(patch_bytes(&b64).unwrap(), raw);
        let arr = json!(raw.iter().map(|b| *b as u64).collect::<Vec<_>>());
        assert_eq!(patch_bytes(&arr).unwrap(), raw);
    }

    #[test]
    fn denials_read_like_the_api_server() {
        let e = denied(
            "inject.vault-approle.io",
            Some(&json!({"code": 403, "message": "role not allowed"})),
        );
        assert_eq!(e.code, 403);
        assert_eq!(
            e.message,
            "admission webhook \"inject.vault-approle.io\" denied the request: role not allowed"
        );
        assert_eq!(denied("w", None).code, 400);
    }
}

//! The mutating admission webhook: annotate, and that is all.
//!
//! ```text
//!  POST /mutate  AdmissionReview v1
//!     │  unreadable JSON, or no `request` ─────────────────────────────▶ HTTP 400
//!     ▼
//!  review(request)                                          (pure: every case is a table row)
//!     Pod CREATE:  should inject? ── own namespace / kube-system / injected already ─▶ allowed as is
//!                     │
//!                  parse + validate annotations ── unknown key, bad value ─▶ denied, key named
//!                     │                         └─ not opted in ─▶ allowed as is
//!                     │
//!                  authorization policy ── role not allowed for namespace / service account,
//!                     │                     or no policy loaded yet ─▶ denied (403), rule named
//!                     │
//!                  inject::patch ── unknown container, volume or path taken ─▶ denied
//!                     ▼
//!                  allowed + base64 JSONPatch
//!     Deployment / StatefulSet / DaemonSet / Job / CronJob: allowed, with `warnings` when our
//!                  annotations sit on the workload instead of its pod template, or the template's
//!                  would be refused
//!     anything else: allowed as is
//! ```
//!
//! The response JSON is built here rather than by kube-core's `AdmissionResponse`, which
//! serialises `patch` as an array of numbers where the API specifies base64 (kube-rs/kube#1781).
//! The handler never panics and never logs pod contents: pod specs may carry other people's
//! secrets in env values.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use approle_shared::annotations::{InjectionSpec, PREFIX};
use approle_shared::inject::{self, InjectConfig};
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum_server::Handle;
use axum_server::tls_rustls::RustlsConfig;
use base64::Engine as _;
use json_patch::PatchOperation;
use k8s_openapi::api::core::v1::Pod;
use kube::core::admission::{AdmissionRequest, AdmissionReview, Operation};
use kube::core::{DynamicObject, TypeMeta};
use serde_json::{Value, json};
use tokio::sync::watch;
use tracing::{debug, info, instrument, warn};

use crate::policy::{Authorizer, service_account};

/// Path the API server posts reviews to.
pub const MUTATE_PATH: &str = "/mutate";
/// Namespace whose pods are never mutated, besides the controller's own.
pub const KUBE_SYSTEM: &str = "kube-system";

/// What the webhook needs besides the request.
#[derive(Debug, Clone)]
pub struct WebhookState {
    /// The controller's own namespace: never mutated (its pods must start even when the webhook
    /// is down).
    pub self_namespace: String,
    /// Current injector settings; the injector CA in it changes when the CA does.
    pub inject: watch::Receiver<InjectConfig>,
    /// The authorization policy in force.
    pub authorizer: Authorizer,
}

/// The outcome of one review.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Admit, applying `patch` (may be empty), and show `warnings` to the client.
    Allow {
        /// JSONPatch operations.
        patch: Vec<PatchOperation>,
        /// Warnings for the user (kubectl prints them).
        warnings: Vec<String>,
    },
    /// Refuse with a message a person can act on.
    Deny {
        /// HTTP-style status code (400: the object is invalid).
        code: u16,
        /// Why.
        message: String,
    },
}

impl Verdict {
    fn allow() -> Self {
        Verdict::Allow {
            patch: Vec::new(),
            warnings: Vec::new(),
        }
    }

    fn warn(warnings: Vec<String>) -> Self {
        Verdict::Allow {
            patch: Vec::new(),
            warnings,
        }
    }

    fn invalid(message: impl Into<String>) -> Self {
        Verdict::Deny {
            code: 400,
            message: message.into(),
        }
    }
}

/// Decides one admission request.
pub fn review(
    req: &AdmissionRequest<DynamicObject>,
    self_namespace: &str,
    cfg: &InjectConfig,
    authz: &Authorizer,
) -> Verdict {
    if !matches!(req.operation, Operation::Create | Operation::Update) {
        return Verdict::allow();
    }
    let Some(object) = &req.object else {
        return Verdict::allow();
    };
    match (req.kind.group.as_str(), req.kind.kind.as_str()) {
        ("", "Pod") if req.operation == Operation::Create => {
            review_pod(req, object, self_namespace, cfg, authz)
        }
        ("apps", "Deployment" | "StatefulSet" | "DaemonSet") | ("batch", "Job") => {
            Verdict::warn(workload_warnings(&req.kind.kind, object, "/spec/template"))
        }
        ("batch", "CronJob") => Verdict::warn(workload_warnings(
            "CronJob",
            object,
            "/spec/jobTemplate/spec/template",
        )),
        _ => Verdict::allow(),
    }
}

/// should-inject → parse and validate → authorize → patch.
fn review_pod(
    req: &AdmissionRequest<DynamicObject>,
    object: &DynamicObject,
    self_namespace: &str,
    cfg: &InjectConfig,
    authz: &Authorizer,
) -> Verdict {
    let pod: Pod = match object.clone().try_parse() {
        Ok(pod) => pod,
        Err(e) => return Verdict::invalid(format!("cannot read the pod: {e}")),
    };
    let annotations = pod.metadata.annotations.clone().unwrap_or_default();
    let namespace = req
        .namespace
        .as_deref()
        .or(pod.metadata.namespace.as_deref())
        .unwrap_or("default");
    if namespace == self_namespace || namespace == KUBE_SYSTEM {
        let opted_in = matches!(InjectionSpec::from_annotations(&annotations), Ok(Some(_)));
        return Verdict::warn(if opted_in {
            vec![format!(
                "pods in namespace {namespace} never get a Vault token from the injector; \
                 this pod is created without one"
            )]
        } else {
            Vec::new()
        });
    }
    if inject::is_injected(&pod) {
        // Left as it is (a reinvocation, or a copy of an injected pod); the controller still
        // reports bad annotations on it as an Event.
        return Verdict::allow();
    }
    let spec = match InjectionSpec::from_annotations(&annotations) {
        Ok(None) => return Verdict::allow(),
        Ok(Some(spec)) => spec,
        Err(errors) => return Verdict::invalid(errors.to_string()),
    };
    let sa = service_account(
        pod.spec
            .as_ref()
            .and_then(|s| s.service_account_name.as_deref()),
    );
    if let Err(denied) = authz.check(spec.role.as_str(), namespace, sa) {
        return Verdict::Deny {
            code: 403,
            message: denied.to_string(),
        };
    }
    match inject::patch(&pod, &spec, cfg) {
        Ok(patch) => Verdict::Allow {
            patch,
            warnings: Vec::new(),
        },
        Err(e) => Verdict::invalid(e.to_string()),
    }
}

/// Warnings for a workload whose `vault-approle.io/` annotations will not reach its pods.
fn workload_warnings(kind: &str, object: &DynamicObject, template: &str) -> Vec<String> {
    let name = object.metadata.name.as_deref().unwrap_or("");
    let own: Vec<&str> = object
        .metadata
        .annotations
        .iter()
        .flatten()
        .map(|(k, _)| k.as_str())
        .filter(|k| k.starts_with(PREFIX))
        .collect();
    let template_annotations: BTreeMap<String, String> = object
        .data
        .pointer(&format!("{template}/metadata/annotations"))
        .and_then(|v| serde_json::from_value(v.clone()).ok())
        .unwrap_or_default();
    let template_has_ours = template_annotations.keys().any(|k| k.starts_with(PREFIX));
    let mut warnings = Vec::new();
    if !own.is_empty() && !template_has_ours {
        let field = template.trim_start_matches('/').replace('/', ".");
        warnings.push(format!(
            "{kind} {name}: annotation(s) {} are on the {kind} itself, where they have no \
             effect; put them under {field}.metadata.annotations so its pods get a Vault token",
            own.join(", ")
        ));
    }
    if let Err(errors) = InjectionSpec::from_annotations(&template_annotations) {
        warnings.push(format!("{kind} {name}: its pods will be refused: {errors}"));
    }
    warnings
}

/// The AdmissionReview answer as the API specifies it (`patch` base64).
pub fn response_json(types: &TypeMeta, uid: &str, verdict: &Verdict) -> Value {
    let mut response = json!({"uid": uid});
    match verdict {
        Verdict::Allow { patch, warnings } => {
            response["allowed"] = json!(true);
            if !patch.is_empty() {
                // Serialising a Vec of plain JSON values cannot fail.
                let bytes = serde_json::to_vec(patch).unwrap_or_default();
                response["patchType"] = json!("JSONPatch");
                response["patch"] = json!(base64::engine::general_purpose::STANDARD.encode(bytes));
            }
            if !warnings.is_empty() {
                response["warnings"] = json!(warnings);
            }
        }
        Verdict::Deny { code, message } => {
            response["allowed"] = json!(false);
            response["status"] = json!({
                "status": "Failure",
                "code": code,
                "reason": if *code == 400 { "BadRequest" } else { "Forbidden" },
                "message": message,
            });
        }
    }
    let api_version = if types.api_version.is_empty() {
        "admission.k8s.io/v1"
    } else {
        types.api_version.as_str()
    };
    json!({"apiVersion": api_version, "kind": "AdmissionReview", "response": response})
}

/// The webhook's routes.
pub fn router(state: WebhookState) -> Router {
    Router::new()
        .route(MUTATE_PATH, post(mutate))
        .with_state(state)
}

#[instrument(skip_all, fields(uid, kind, namespace, name))]
async fn mutate(State(state): State<WebhookState>, body: Bytes) -> Response {
    let admission: AdmissionReview<DynamicObject> = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            warn!(error = %e, "malformed AdmissionReview");
            return (
                StatusCode::BAD_REQUEST,
                format!("malformed AdmissionReview: {e}"),
            )
                .into_response();
        }
    };
    let types = admission.types.clone();
    let req: AdmissionRequest<DynamicObject> = match admission.try_into() {
        Ok(r) => r,
        Err(_) => {
            warn!("AdmissionReview without a request");
            return (StatusCode::BAD_REQUEST, "AdmissionReview has no request").into_response();
        }
    };
    let span = tracing::Span::current();
    span.record("uid", req.uid.as_str());
    span.record("kind", req.kind.kind.as_str());
    span.record("namespace", req.namespace.as_deref().unwrap_or(""));
    span.record("name", req.name.as_str());
    let verdict = review(
        &req,
        &state.self_namespace,
        &state.inject.borrow(),
        &state.authorizer,
    );
    if let Verdict::Deny { code: 403, .. } = &verdict {
        state.authorizer.count_denial("admission");
    }
    match &verdict {
        Verdict::Allow { patch, .. } if !patch.is_empty() => info!("injected"),
        Verdict::Allow { warnings, .. } if !warnings.is_empty() => {
            info!(warnings = warnings.len(), "allowed with warnings")
        }
        Verdict::Allow { .. } => debug!("allowed unchanged"),
        Verdict::Deny { message, .. } => info!(reason = %message, "denied"),
    }
    axum::Json(response_json(&types, &req.uid, &verdict)).into_response()
}

/// Serves the webhook over TLS on `listener` until `handle` shuts it down. `tls` can be reloaded
/// at any time (renewal) without dropping the listener.
pub async fn serve(
    listener: std::net::TcpListener,
    tls: RustlsConfig,
    state: WebhookState,
    handle: Handle<SocketAddr>,
) -> std::io::Result<()> {
    listener.set_nonblocking(true)?;
    axum_server::from_tcp_rustls(listener, tls)?
        // Small responses go out at once, not after the API server's delayed ACK (Nagle).
        .map(|tls| tls.acceptor(axum_server::accept::NoDelayAcceptor::new()))
        .handle(handle)
        .serve(router(state).into_make_service())
        .await
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use approle_shared::inject::default_resources;
    use approle_shared::tls::{Ca, Usage};

    use crate::policy::Policy;

    const SELF_NS: &str = "approle-system";

    fn cfg() -> InjectConfig {
        InjectConfig {
            image: "approle-init:dev".into(),
            vault_addr: "https://vault:8200".into(),
            vault_ca_pem: None,
            injector_ca_pem: "INJECTOR CA".into(),
            approle_mount: "approle".into(),
            timeout: "5m".into(),
            resources: default_resources(),
        }
    }

    /// An AdmissionReview v1 as the API server sends it (kube-notes §6).
    fn admission(group: &str, kind: &str, ns: &str, op: &str, object: Value) -> Value {
        let resource = format!("{}s", kind.to_lowercase());
        let version = "v1";
        json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {
                "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
                "kind": {"group": group, "version": version, "kind": kind},
                "resource": {"group": group, "version": version, "resource": resource},
                "requestKind": {"group": group, "version": version, "kind": kind},
                "requestResource": {"group": group, "version": version, "resource": resource},
                "name": "", "namespace": ns, "operation": op,
                "userInfo": {"username": "alice", "uid": "u", "groups": ["system:authenticated"], "extra": {}},
                "object": object, "oldObject": null, "dryRun": false,
                "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}
            }
        })
    }

    fn pod(annotations: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"generateName": "web-", "annotations": annotations},
               "spec": {"containers": [{"name": "app", "image": "example/app:1"}]}})
    }

    fn pod_review(ns: &str, op: &str, annotations: Value) -> Value {
        admission("", "Pod", ns, op, pod(annotations))
    }

    fn deployment(own: Value, template: Value) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
               "metadata": {"name": "web", "annotations": own},
               "spec": {"selector": {"matchLabels": {"app": "web"}},
                        "template": {"metadata": {"labels": {"app": "web"}, "annotations": template},
                                     "spec": {"containers": [{"name": "app", "image": "a"}]}}}})
    }

    fn verdict_of(review_json: Value) -> Verdict {
        let r: AdmissionReview<DynamicObject> =
            serde_json::from_value(review_json).expect("review");
        let req: AdmissionRequest<DynamicObject> = r.try_into().expect("request");
        review(&req, SELF_NS, &cfg(), &allow_all())
    }

    fn allow_all() -> Authorizer {
        Authorizer::fixed(Some(
            Policy::parse("rules: [{roles: ['*'], namespaces: ['*']}]", "test").expect("policy"),
        ))
    }

    fn patched(v: &Verdict) -> bool {
        matches!(v, Verdict::Allow { patch, .. } if !patch.is_empty())
    }

    fn unchanged(v: &Verdict) -> bool {
        matches!(v, Verdict::Allow { patch, warnings } if patch.is_empty() && warnings.is_empty())
    }

    fn denied_with<'a>(needles: &'a [&'a str]) -> impl Fn(&Verdict) -> bool + 'a {
        move |v| matches!(v, Verdict::Deny { code: 400, message } if needles.iter().all(|n| message.contains(n)))
    }

    fn warned_with<'a>(needles: &'a [&'a str]) -> impl Fn(&Verdict) -> bool + 'a {
        move |v| {
            matches!(v, Verdict::Allow { patch, warnings } if patch.is_empty()
                && needles.iter().all(|n| warnings.iter().any(|w| w.contains(n))))
        }
    }

    #[test]
    fn admission_decisions() {
        let role = json!({"vault-approle.io/role": "web"});
        type Check = Box<dyn Fn(&Verdict) -> bool>;
        let cases: Vec<(&str, Value, Check)> = vec![
            (
                "annotated pod is injected",
                pod_review("default", "CREATE", role.clone()),
                Box::new(patched),
            ),
            (
                "pod without annotations is left alone",
                pod_review("default", "CREATE", json!({"app": "x"})),
                Box::new(unchanged),
            ),
            (
                "misspelled key is denied naming the key meant",
                pod_review("default", "CREATE", json!({"vault-approle.io/rol": "web"})),
                Box::new(denied_with(&[
                    "\"vault-approle.io/rol\"",
                    "did you mean \"vault-approle.io/role\"",
                ])),
            ),
            (
                "bad role name is denied",
                pod_review(
                    "default",
                    "CREATE",
                    json!({"vault-approle.io/role": "../root"}),
                ),
                Box::new(denied_with(&["vault-approle.io/role", "invalid role name"])),
            ),
            (
                "bad port is denied",
                pod_review(
                    "default",
                    "CREATE",
                    json!({"vault-approle.io/role": "web", "vault-approle.io/port": "99999"}),
                ),
                Box::new(denied_with(&["vault-approle.io/port", "1 to 65535"])),
            ),
            (
                "bad path is denied",
                pod_review(
                    "default",
                    "CREATE",
                    json!({"vault-approle.io/role": "web", "vault-approle.io/mount-path": "tokens"}),
                ),
                Box::new(denied_with(&["vault-approle.io/mount-path", "absolute"])),
            ),
            (
                "unknown container is denied",
                pod_review(
                    "default",
                    "CREATE",
                    json!({"vault-approle.io/role": "web", "vault-approle.io/containers": "ap"}),
                ),
                Box::new(denied_with(&[
                    "\"ap\"",
                    "did you mean \"app\"",
                    "its containers are app",
                ])),
            ),
            (
                "kube-system is never mutated",
                pod_review("kube-system", "CREATE", role.clone()),
                Box::new(warned_with(&["namespace kube-system"])),
            ),
            (
                "the controller's own namespace is never mutated, even with bad annotations",
                pod_review(SELF_NS, "CREATE", json!({"vault-approle.io/rol": "x"})),
                Box::new(unchanged),
            ),
            (
                "an injected pod is left as it is",
                admission(
                    "",
                    "Pod",
                    "default",
                    "CREATE",
                    json!({
                    "apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": "copy", "annotations": {"vault-approle.io/role": "web"}},
                    "spec": {"initContainers": [{"name": approle_shared::INIT_CONTAINER_NAME, "image": "i"}],
                             "containers": [{"name": "app", "image": "a"}]}}),
                ),
                Box::new(unchanged),
            ),
            (
                "pod updates are left alone",
                pod_review("default", "UPDATE", json!({"vault-approle.io/rol": "x"})),
                Box::new(unchanged),
            ),
            (
                "annotations on a Deployment's own metadata get a warning",
                admission(
                    "apps",
                    "Deployment",
                    "default",
                    "CREATE",
                    deployment(role.clone(), json!({})),
                ),
                Box::new(warned_with(&[
                    "Deployment web",
                    "vault-approle.io/role",
                    "spec.template.metadata.annotations",
                ])),
            ),
            (
                "annotations on the pod template are where they belong",
                admission(
                    "apps",
                    "Deployment",
                    "default",
                    "CREATE",
                    deployment(json!({}), role.clone()),
                ),
                Box::new(unchanged),
            ),
            (
                "a template that pods would be refused for gets a warning",
                admission(
                    "apps",
                    "StatefulSet",
                    "default",
                    "UPDATE",
                    deployment(json!({}), json!({"vault-approle.io/rol": "web"})),
                ),
                Box::new(warned_with(&["will be refused", "vault-approle.io/role"])),
            ),
            (
                "CronJobs look into their job template",
                admission(
                    "batch",
                    "CronJob",
                    "default",
                    "CREATE",
                    json!({
                    "apiVersion": "batch/v1", "kind": "CronJob",
                    "metadata": {"name": "nightly", "annotations": role.clone()},
                    "spec": {"schedule": "@daily", "jobTemplate": {"spec": {"template": {"spec": {}}}}}}),
                ),
                Box::new(warned_with(&[
                    "CronJob nightly",
                    "spec.jobTemplate.spec.template.metadata.annotations",
                ])),
            ),
            (
                "other kinds pass",
                admission(
                    "",
                    "ConfigMap",
                    "default",
                    "CREATE",
                    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "annotations": role.clone()}}),
                ),
                Box::new(unchanged),
            ),
        ];
        for (name, review_json, check) in cases {
            let v = verdict_of(review_json);
            assert!(check(&v), "{name}: got {v:?}");
        }
    }

    #[test]
    fn the_policy_is_checked_at_admission() {
        let review_with = |ns: &str, pod_json: Value, authz: &Authorizer| {
            let r: AdmissionReview<DynamicObject> =
                serde_json::from_value(admission("", "Pod", ns, "CREATE", pod_json))
                    .expect("review");
            let req: AdmissionRequest<DynamicObject> = r.try_into().expect("request");
            review(&req, SELF_NS, &cfg(), authz)
        };
        let policy = Authorizer::fixed(Some(
            Policy::parse(
                "rules:\n- roles: [web]\n  namespaces: [shop]\n  serviceAccounts: [api]\n",
                "/p.yaml",
            )
            .expect("policy"),
        ));
        let web = json!({"vault-approle.io/role": "web"});
        let denied = |v: &Verdict, needles: &[&str]| matches!(v, Verdict::Deny { code: 403, message } if needles.iter().all(|n| message.contains(n)));
        let v = review_with("default", pod(web.clone()), &policy);
        assert!(
            denied(
                &v,
                &[
                    "role \"web\" is not allowed in namespace \"default\"",
                    "/p.yaml"
                ]
            ),
            "{v:?}"
        );
        let v = review_with("shop", pod(web.clone()), &policy);
        assert!(
            denied(
                &v,
                &["only for service accounts [api]", "pod runs as \"default\""]
            ),
            "{v:?}"
        );
        let mut with_sa = pod(web.clone());
        with_sa["spec"]["serviceAccountName"] = json!("api");
        assert!(patched(&review_with("shop", with_sa, &policy)));
        // No policy yet: annotated pods are refused, others are not touched.
        let none = Authorizer::fixed(None);
        let v = review_with("shop", pod(web), &none);
        assert!(denied(&v, &["no authorization policy loaded yet"]), "{v:?}");
        assert!(unchanged(&review_with("shop", pod(json!({})), &none)));
        // Annotation errors still come first, as 400.
        let v = review_with(
            "default",
            pod(json!({"vault-approle.io/rol": "web"})),
            &none,
        );
        assert!(matches!(v, Verdict::Deny { code: 400, .. }), "{v:?}");
    }

    /// The real server on loopback with a certificate from a fresh CA, and a client trusting it.
    async fn serve_for_test() -> (String, reqwest::Client, RustlsConfig) {
        approle_shared::tls::install_crypto_provider();
        let ca = Ca::generate("test CA", Duration::from_secs(600)).expect("ca");
        let cert = ca
            .issue(
                "127.0.0.1",
                &["127.0.0.1".into()],
                Usage::Server,
                Duration::from_secs(600),
            )
            .expect("cert");
        let tls = RustlsConfig::from_pem(cert.cert_pem.into_bytes(), cert.key_pem.into_bytes())
            .await
            .expect("tls");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (_tx, rx) = watch::channel(cfg());
        let state = WebhookState {
            self_namespace: SELF_NS.into(),
            inject: rx,
            authorizer: allow_all(),
        };
        // The sender may drop: the receiver keeps the last value.
        tokio::spawn(serve(listener, tls.clone(), state, Handle::new()));
        (format!("https://{addr}{MUTATE_PATH}"), trusting(&ca), tls)
    }

    fn trusting(ca: &Ca) -> reqwest::Client {
        reqwest::Client::builder()
            .tls_certs_only(
                [reqwest::Certificate::from_pem(ca.cert_pem().as_bytes()).expect("pem")],
            )
            .build()
            .expect("client")
    }

    async fn post(client: &reqwest::Client, url: &str, body: Vec<u8>) -> (u16, Value) {
        let resp = client
            .post(url)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("send");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("body");
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    #[tokio::test]
    async fn handler_answers_real_admission_reviews() {
        let (url, client, _) = serve_for_test().await;
        let send = |v: Value| post(&client, &url, serde_json::to_vec(&v).expect("json"));

        // Injected: the base64 patch decodes to the ops, with escaped pointers.
        let (status, body) = send(pod_review(
            "default",
            "CREATE",
            json!({"vault-approle.io/role": "web"}),
        ))
        .await;
        assert_eq!(status, 200);
        assert_eq!(body["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(body["kind"], "AdmissionReview");
        let resp = &body["response"];
        assert_eq!(resp["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
        assert_eq!(resp["allowed"], true);
        assert_eq!(resp["patchType"], "JSONPatch");
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(resp["patch"].as_str().expect("patch is a base64 string"))
            .expect("base64");
        let ops: Vec<Value> = serde_json::from_slice(&bytes).expect("ops");
        let paths: Vec<&str> = ops.iter().filter_map(|o| o["path"].as_str()).collect();
        assert_eq!(
            paths,
            [
                "/metadata/labels",
                "/metadata/annotations/vault-approle.io~1status",
                "/spec/initContainers",
                "/spec/volumes",
                "/spec/containers/0/volumeMounts"
            ]
        );
        assert_eq!(ops[0]["value"], json!({"vault-approle.io/managed": "true"}));
        let init = &ops[2]["value"][0];
        assert_eq!(init["name"], approle_shared::INIT_CONTAINER_NAME);
        let env = init["env"].as_array().expect("env");
        assert!(
            env.iter()
                .any(|e| e["name"] == "APPROLE_INIT_CLIENT_CA_PEM" && e["value"] == "INJECTOR CA")
        );
        assert_eq!(ops[3]["value"][0]["emptyDir"]["medium"], "Memory");

        // Denied, with a message a person can act on.
        let (status, body) = send(pod_review(
            "default",
            "CREATE",
            json!({"vault-approle.io/rol": "web"}),
        ))
        .await;
        assert_eq!(status, 200);
        assert_eq!(body["response"]["allowed"], false);
        assert_eq!(body["response"]["status"]["code"], 400);
        let msg = body["response"]["status"]["message"]
            .as_str()
            .expect("message");
        assert!(msg.contains("vault-approle.io/role"), "{msg}");
        assert!(body["response"].get("patch").is_none());

        // kube-system: untouched.
        let (_, body) = send(pod_review(
            "kube-system",
            "CREATE",
            json!({"vault-approle.io/role": "web"}),
        ))
        .await;
        assert_eq!(body["response"]["allowed"], true);
        assert!(
            body["response"].get("patch").is_none() && body["response"].get("patchType").is_none()
        );

        // A workload with the annotations in the wrong place: allowed, with a warning.
        let (_, body) = send(admission(
            "apps",
            "Deployment",
            "default",
            "CREATE",
            deployment(json!({"vault-approle.io/role": "web"}), json!({})),
        ))
        .await;
        assert_eq!(body["response"]["allowed"], true);
        let warning = body["response"]["warnings"][0].as_str().expect("warning");
        assert!(
            warning.contains("spec.template.metadata.annotations"),
            "{warning}"
        );
    }

    #[tokio::test]
    async fn malformed_reviews_get_400_and_the_server_keeps_serving() {
        let (url, client, _) = serve_for_test().await;
        for body in [
            b"not json".to_vec(),
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#.to_vec(),
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":3}}"#
                .to_vec(),
        ] {
            let (status, _) = post(&client, &url, body).await;
            assert_eq!(status, 400);
        }
        // A pod that is not a pod: denied by the review, not a crash.
        let (status, body) = post(
            &client,
            &url,
            serde_json::to_vec(&admission("", "Pod", "default", "CREATE",
                json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}, "spec": {"containers": "nope"}})))
            .expect("json"),
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(body["response"]["allowed"], false, "{body}");
        let (status, _) = post(
            &client,
            &url,
            serde_json::to_vec(&pod_review("default", "CREATE", json!({}))).expect("json"),
        )
        .await;
        assert_eq!(status, 200);
    }

    #[tokio::test]
    async fn serving_certificate_reloads_without_a_restart() {
        let (url, old_client, tls) = serve_for_test().await;
        let ca = Ca::generate("renewed CA", Duration::from_secs(600)).expect("ca");
        let cert = ca
            .issue(
                "127.0.0.1",
                &["127.0.0.1".into()],
                Usage::Server,
                Duration::from_secs(600),
            )
            .expect("cert");
        tls.reload_from_pem(cert.cert_pem.into_bytes(), cert.key_pem.into_bytes())
            .await
            .expect("reload");
        let body = serde_json::to_vec(&pod_review("default", "CREATE", json!({}))).expect("json");
        let (status, _) = post(&trusting(&ca), &url, body).await;
        assert_eq!(status, 200);
        assert!(
            old_client.post(&url).send().await.is_err(),
            "old CA must no longer verify"
        );
    }
}

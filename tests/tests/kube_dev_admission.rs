//! Mutating admission on pod CREATE against a real HTTPS webhook (axum-server, own CA): service
//! references mapped to loopback, caBundle verification, objectSelector, namespaceSelector,
//! CEL matchConditions, kube-rs `AdmissionResponse` patches, denials, failurePolicy,
//! timeoutSeconds and warnings.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::routing::post;
use base64::Engine as _;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt as _;
use kube::api::{Api, PostParams};
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
use serde_json::{Value, json};

use approle_testkit::kube_dev::{Config, KubeDev, Running};

struct Webhook {
    addr: SocketAddr,
    ca_pem: String,
    _handle: axum_server::Handle<SocketAddr>,
}

async fn mutate_with_kube(
    Json(review): Json<AdmissionReview<DynamicObject>>,
) -> Json<AdmissionReview<DynamicObject>> {
    let req: AdmissionRequest<DynamicObject> = review.try_into().expect("request");
    let ops: json_patch::Patch = serde_json::from_value(json!([
        {"op": "add", "path": "/metadata/labels/injected", "value": "true"},
        {"op": "add", "path": "/spec/initContainers", "value": [
            {"name": "approle-init", "image": "registry.example/approle-init:0.1.0"}
        ]}
    ]))
    .expect("patch");
    let mut resp = AdmissionResponse::from(&req)
        .with_patch(ops)
        .expect("with patch");
    resp.warnings = Some(vec!["injected by test webhook".into()]);
    Json(resp.into_review())
}

async fn mutate_base64(Json(review): Json<Value>) -> Json<Value> {
    let patch = json!([{"op": "add", "path": "/metadata/annotations", "value": {"b64": "yes"}}]);
    Json(json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "response": {"uid": review["request"]["uid"], "allowed": true, "patchType": "JSONPatch",
                     "patch": base64::engine::general_purpose::STANDARD.encode(patch.to_string())}
    }))
}

async fn deny(Json(review): Json<Value>) -> Json<Value> {
    Json(json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "response": {"uid": review["request"]["uid"], "allowed": false,
                     "status": {"code": 403, "message": "role \"web\" is not allowed in namespace default"}}
    }))
}

async fn slow(Json(review): Json<Value>) -> Json<Value> {
    // Longer than the webhook's timeoutSeconds: the API server must give up first.
    tokio::time::sleep(Duration::from_secs(10)).await;
    Json(
        json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                "response": {"uid": review["request"]["uid"], "allowed": true}}),
    )
}

async fn start_webhook() -> Webhook {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca =
        rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().expect("key"))
            .expect("ca");
    let leaf = rcgen::CertificateParams::new(vec![
        "inject.approle-system.svc".to_string(),
        "127.0.0.1".to_string(),
    ])
    .expect("leaf params");
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = leaf.signed_by(&key, &ca).expect("cert");
    let tls = axum_server::tls_rustls::RustlsConfig::from_pem(
        cert.pem().into_bytes(),
        key.serialize_pem().into_bytes(),
    )
    .await
    .expect("tls config");
    let app = Router::new()
        .route("/mutate-kube", post(mutate_with_kube))
        .route("/mutate-base64", post(mutate_base64))
        .route("/deny", post(deny))
        .route("/slow", post(slow));
    let handle: axum_server::Handle<SocketAddr> = axum_server::Handle::new();
    let server =
        axum_server::bind_rustls(SocketAddr::from(([127, 0, 0, 1], 0)), tls).handle(handle.clone());
    tokio::spawn(server.serve(app.into_make_service()));
    let addr = handle.listening().await.expect("webhook listening");
    Webhook {
        addr,
        ca_pem: ca.pem(),
        _handle: handle,
    }
}

async fn start(webhook: &Webhook) -> (Running, kube::Client) {
    let kd = KubeDev::start(Config {
        service_addresses: HashMap::from([("approle-system/inject".to_string(), webhook.addr)]),
        ..Config::default()
    })
    .await
    .expect("kube-dev starts");
    let client = kd.client().await.expect("client");
    (kd, client)
}

fn ca_bundle(pem: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(pem)
}

async fn configure(client: &kube::Client, webhooks: Value) {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let cfg: MutatingWebhookConfiguration = serde_json::from_value(json!({
        "metadata": {"name": "approle-injector"},
        "webhooks": webhooks,
    }))
    .expect("webhook configuration");
    api.create(&PostParams::default(), &cfg)
        .await
        .expect("create webhook configuration");
}

fn hook(name: &str, client_config: Value, extra: Value) -> Value {
    let mut h = json!({
        "name": name,
        "admissionReviewVersions": ["v1"],
        "sideEffects": "None",
        "clientConfig": client_config,
        "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}],
    });
    for (k, v) in extra.as_object().expect("object") {
        h[k] = v.clone();
    }
    h
}

fn pod(name: &str, labels: Value, annotations: Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels, "annotations": annotations},
        "spec": {"containers": [{"name": "app", "image": "nginx"}]}
    }))
    .expect("pod")
}

fn init_names(p: &Pod) -> Vec<String> {
    p.spec
        .as_ref()
        .and_then(|s| s.init_containers.as_ref())
        .map(|c| c.iter().map(|c| c.name.clone()).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn service_webhook_patches_only_selected_pods() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let wh = start_webhook().await;
    // The webhook's address may only be known after kube-dev started: map it at runtime.
    let kd = KubeDev::start(Config::default())
        .await
        .expect("kube-dev starts");
    kd.set_service_address("approle-system/inject", wh.addr);
    let client = kd.client().await.expect("client");
    configure(
        &client,
        json!([hook(
            "inject.vault-approle.io",
            json!({"service": {"namespace": "approle-system", "name": "inject", "path": "/mutate-kube"},
                   "caBundle": ca_bundle(&wh.ca_pem)}),
            json!({
                "objectSelector": {"matchLabels": {"inject": "yes"}},
                "namespaceSelector": {"matchExpressions": [
                    {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["kube-system"]}]},
                "matchConditions": [{"name": "has-role",
                    "expression": "has(object.metadata.annotations) && 'vault-approle.io/role' in object.metadata.annotations"}],
                "failurePolicy": "Fail"
            })
        )]),
    )
    .await;
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let role = json!({"vault-approle.io/role": "web"});

    let injected = pods
        .create(
            &PostParams::default(),
            &pod("web-0", json!({"inject": "yes"}), role.clone()),
        )
        .await
        .expect("admitted");
    assert_eq!(
        injected.labels().get("injected").map(String::as_str),
        Some("true")
    );
    assert_eq!(init_names(&injected), vec!["approle-init"]);
    let init = &injected
        .spec
        .as_ref()
        .expect("spec")
        .init_containers
        .as_ref()
        .expect("init")[0];
    assert_eq!(
        init.image_pull_policy.as_deref(),
        Some("IfNotPresent"),
        "patched containers are defaulted"
    );

    let no_label = pods
        .create(
            &PostParams::default(),
            &pod("web-1", json!({}), role.clone()),
        )
        .await
        .expect("created");
    assert!(
        init_names(&no_label).is_empty(),
        "objectSelector excludes it"
    );

    let no_annotation = pods
        .create(
            &PostParams::default(),
            &pod("web-2", json!({"inject": "yes"}), json!({})),
        )
        .await
        .expect("created");
    assert!(
        init_names(&no_annotation).is_empty(),
        "matchConditions exclude it"
    );

    let system: Api<Pod> = Api::namespaced(client.clone(), "kube-system");
    let in_system = system
        .create(
            &PostParams::default(),
            &pod("web-3", json!({"inject": "yes"}), role),
        )
        .await
        .expect("created");
    assert!(
        init_names(&in_system).is_empty(),
        "namespaceSelector excludes it"
    );
}

#[tokio::test]
async fn url_webhooks_deny_patch_base64_and_send_warnings() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let wh = start_webhook().await;
    let (kd, client) = start(&wh).await;
    configure(
        &client,
        json!([
            hook("b64.example.io",
                 json!({"url": format!("https://127.0.0.1:{}/mutate-base64", wh.addr.port()), "caBundle": ca_bundle(&wh.ca_pem)}),
                 json!({})),
            hook("inject.vault-approle.io",
                 json!({"url": format!("https://127.0.0.1:{}/mutate-kube", wh.addr.port()), "caBundle": ca_bundle(&wh.ca_pem)}),
                 json!({"objectSelector": {"matchLabels": {"inject": "yes"}}})),
            hook("deny.example.io",
                 json!({"url": format!("https://127.0.0.1:{}/deny", wh.addr.port()), "caBundle": ca_bundle(&wh.ca_pem)}),
                 json!({"objectSelector": {"matchLabels": {"deny": "yes"}}})),
        ]),
    )
    .await;
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let p = pods
        .create(
            &PostParams::default(),
            &pod("plain-0", json!({}), json!({})),
        )
        .await
        .expect("created");
    assert_eq!(
        p.annotations().get("b64").map(String::as_str),
        Some("yes"),
        "base64 patch applied"
    );

    let e = pods
        .create(
            &PostParams::default(),
            &pod("denied-0", json!({"deny": "yes"}), json!({})),
        )
        .await
        .expect_err("denied");
    let kube::Error::Api(s) = e else {
        panic!("api error")
    };
    assert_eq!(s.code, 403);
    assert_eq!(
        s.message,
        "admission webhook \"deny.example.io\" denied the request: role \"web\" is not allowed in namespace default"
    );

    // Warnings come back as HTTP Warning headers (raw client: kube-rs does not expose them).
    let http = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(kd.ca_pem.as_bytes()).expect("ca")])
        .build()
        .expect("client");
    let resp = http
        .post(format!("{}/api/v1/namespaces/default/pods", kd.url))
        .bearer_auth(kd.bearer_token())
        .json(&pod("warned-0", json!({"inject": "yes"}), json!({})))
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), 201);
    let warnings: Vec<String> = resp
        .headers()
        .get_all("warning")
        .iter()
        .map(|v| v.to_str().expect("ascii").to_string())
        .collect();
    assert_eq!(
        warnings,
        vec!["299 - \"injected by test webhook\"".to_string()]
    );
}

#[tokio::test]
async fn failure_policy_decides_when_the_webhook_cannot_be_used() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let wh = start_webhook().await;
    let (_kd, client) = start(&wh).await;
    let other_ca = {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        rcgen::CertifiedIssuer::self_signed(p, rcgen::KeyPair::generate().expect("key"))
            .expect("ca")
            .pem()
    };
    let url = |path: &str| format!("https://127.0.0.1:{}{path}", wh.addr.port());
    configure(
        &client,
        json!([
            hook("untrusted.example.io",
                 json!({"url": url("/mutate-kube"), "caBundle": ca_bundle(&other_ca)}),
                 json!({"objectSelector": {"matchLabels": {"case": "untrusted"}}, "failurePolicy": "Fail"})),
            hook("untrusted-ignored.example.io",
                 json!({"url": url("/mutate-kube"), "caBundle": ca_bundle(&other_ca)}),
                 json!({"objectSelector": {"matchLabels": {"case": "ignored"}}, "failurePolicy": "Ignore"})),
            hook("slow.example.io",
                 json!({"url": url("/slow"), "caBundle": ca_bundle(&wh.ca_pem)}),
                 json!({"objectSelector": {"matchLabels": {"case": "slow"}}, "timeoutSeconds": 1})),
            hook("unmapped.example.io",
                 json!({"service": {"namespace": "nowhere", "name": "nothing"}, "caBundle": ca_bundle(&wh.ca_pem)}),
                 json!({"objectSelector": {"matchLabels": {"case": "unmapped"}}})),
        ]),
    )
    .await;
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    for case in ["untrusted", "slow", "unmapped"] {
        let e = pods
            .create(
                &PostParams::default(),
                &pod(&format!("{case}-0"), json!({"case": case}), json!({})),
            )
            .await
            .expect_err("failurePolicy Fail rejects");
        let kube::Error::Api(s) = e else {
            panic!("api error")
        };
        assert_eq!(s.code, 500, "{case}: {s:?}");
        assert!(
            s.message
                .starts_with("Internal error occurred: failed calling webhook"),
            "{case}: {}",
            s.message
        );
    }
    let ignored = pods
        .create(
            &PostParams::default(),
            &pod("ignored-0", json!({"case": "ignored"}), json!({})),
        )
        .await
        .expect("failurePolicy Ignore admits");
    assert!(init_names(&ignored).is_empty());
}

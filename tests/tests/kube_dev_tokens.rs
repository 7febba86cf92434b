//! Service accounts: TokenRequest (audience, expiry, pod binding), TokenReview of the tokens
//! kube-dev signs, projected `serviceAccountToken` volumes written by the kubelet, Secret and
//! ConfigMap volumes, and the ServiceAccount admission check.

use std::time::Duration;

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenReview};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, ServiceAccount};
use kube::ResourceExt as _;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use serde_json::{Value, json};

use approle_testkit::kube_dev::{Config, KubeDev, Running};

const DEADLINE: Duration = Duration::from_secs(30);

async fn start() -> (Running, kube::Client) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let kd = KubeDev::start(Config::default())
        .await
        .expect("kube-dev starts");
    let client = kd.client().await.expect("client");
    (kd, client)
}

async fn review(client: &kube::Client, token: &str, audiences: &[&str]) -> Value {
    let reviews: Api<TokenReview> = Api::all(client.clone());
    let r: TokenReview = serde_json::from_value(json!({
        "spec": {"token": token, "audiences": audiences}
    }))
    .expect("review");
    let out = reviews
        .create(&PostParams::default(), &r)
        .await
        .expect("tokenreview");
    serde_json::to_value(out.status).expect("status json")
}

/// The claims of a JWT (no verification: kube-dev's TokenReview does that).
fn jwt_claims(token: &str) -> Value {
    use base64::Engine as _;
    let payload = token.split('.').nth(1).expect("a JWT");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url");
    serde_json::from_slice(&bytes).expect("claims JSON")
}

/// The API's refusal of creating `pod`.
async fn refused(pods: &Api<Pod>, pod: &Pod) -> kube::core::Status {
    match pods.create(&PostParams::default(), pod).await {
        Err(kube::Error::Api(s)) => *s,
        other => panic!("an API error expected, got {other:?}"),
    }
}

async fn running_pod(pods: &Api<Pod>, name: &str) -> Pod {
    let cond = await_condition(pods.clone(), name, |p: Option<&Pod>| {
        p.and_then(|p| p.status.as_ref())
            .and_then(|s| s.phase.as_deref())
            == Some("Running")
    });
    tokio::time::timeout(DEADLINE, cond)
        .await
        .expect("running in time")
        .expect("watch")
        .expect("pod")
}

#[tokio::test]
async fn token_requests_bound_to_a_pod_review_until_the_pod_is_gone() {
    let (_kd, client) = start().await;
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "web-0"},
        "spec": {"containers": [{"name": "app", "image": "nginx"}]}
    }))
    .expect("pod");
    let p = pods
        .create(&PostParams::default(), &pod)
        .await
        .expect("create");
    let uid = p.uid().expect("uid");

    let sas: Api<ServiceAccount> = Api::default_namespaced(client.clone());
    let req: TokenRequest = serde_json::from_value(json!({
        "spec": {"audiences": ["vault-approle"], "expirationSeconds": 600,
                 "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": "web-0", "uid": uid}}
    }))
    .expect("token request");
    let tr = sas
        .create_token_request("default", &PostParams::default(), &req)
        .await
        .expect("token request");
    let status = tr.status.expect("status");
    assert!(status.token.split('.').count() == 3, "a JWT");

    let ok = review(&client, &status.token, &["vault-approle"]).await;
    assert_eq!(ok["authenticated"], true, "{ok}");
    assert_eq!(
        ok["user"]["username"],
        "system:serviceaccount:default:default"
    );
    assert_eq!(
        ok["user"]["extra"]["authentication.kubernetes.io/pod-name"],
        json!(["web-0"])
    );
    assert_eq!(
        ok["user"]["extra"]["authentication.kubernetes.io/pod-uid"],
        json!([uid])
    );
    assert_eq!(ok["audiences"], json!(["vault-approle"]));

    let wrong_aud = review(&client, &status.token, &["something-else"]).await;
    assert_ne!(wrong_aud["authenticated"], true);
    assert!(
        wrong_aud["error"]
            .as_str()
            .expect("error")
            .contains("audiences")
    );

    // A token bound to another UID is refused at issue time.
    let stale: TokenRequest = serde_json::from_value(json!({
        "spec": {"audiences": ["vault-approle"],
                 "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": "web-0", "uid": "not-it"}}
    }))
    .expect("request");
    let e = sas
        .create_token_request("default", &PostParams::default(), &stale)
        .await
        .expect_err("uid mismatch");
    assert!(matches!(e, kube::Error::Api(s) if s.code == 409));
    let short: TokenRequest =
        serde_json::from_value(json!({"spec": {"audiences": ["a"], "expirationSeconds": 60}}))
            .expect("request");
    let e = sas
        .create_token_request("default", &PostParams::default(), &short)
        .await
        .expect_err("too short");
    assert!(matches!(e, kube::Error::Api(s) if s.code == 422));

    pods.delete("web-0", &DeleteParams::default().grace_period(0))
        .await
        .expect("delete");
    let gone = await_condition(pods.clone(), "web-0", conditions::is_deleted(&uid));
    tokio::time::timeout(DEADLINE, gone)
        .await
        .expect("gone")
        .expect("watch");
    let after = review(&client, &status.token, &["vault-approle"]).await;
    assert_ne!(after["authenticated"], true);
    assert!(
        after["error"]
            .as_str()
            .expect("error")
            .contains("not found"),
        "{after}"
    );
}

#[tokio::test]
async fn projected_tokens_secrets_and_configmaps_are_written_where_the_pod_mounts_them() {
    let (kd, client) = start().await;
    let secrets: Api<Secret> = Api::default_namespaced(client.clone());
    let secret: Secret = serde_json::from_value(
        json!({"metadata": {"name": "db"}, "stringData": {"password": "hunter2"}}),
    )
    .expect("secret");
    let s = secrets
        .create(&PostParams::default(), &secret)
        .await
        .expect("create secret");
    assert_eq!(s.type_.as_deref(), Some("Opaque"));
    assert!(s.data.expect("data folded").contains_key("password"));
    let cms: Api<ConfigMap> = Api::default_namespaced(client.clone());
    let cm: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "cfg"}, "data": {"mode": "fast"}}))
            .expect("cm");
    cms.create(&PostParams::default(), &cm)
        .await
        .expect("create cm");

    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "web-0"},
        "spec": {
            "containers": [{"name": "app", "image": "nginx", "volumeMounts": [
                {"name": "vault-token", "mountPath": "/var/run/secrets/tokens", "readOnly": true},
                {"name": "db", "mountPath": "/etc/db", "readOnly": true},
                {"name": "cfg", "mountPath": "/etc/cfg"}
            ]}],
            "volumes": [
                {"name": "vault-token", "projected": {"sources": [
                    {"serviceAccountToken": {"audience": "vault-approle", "expirationSeconds": 600, "path": "token"}}
                ]}},
                {"name": "db", "secret": {"secretName": "db", "defaultMode": 256}},
                {"name": "cfg", "configMap": {"name": "cfg"}}
            ]
        }
    }))
    .expect("pod");
    pods.create(&PostParams::default(), &pod)
        .await
        .expect("create");
    let p = running_pod(&pods, "web-0").await;
    let uid = p.uid().expect("uid");

    let token = std::fs::read_to_string(kd.pod_projected_dir(&uid, "vault-token").join("token"))
        .expect("projected token");
    // Written with the requested audience and lifetime, bound to the pod, like the kubelet's.
    let claims = jwt_claims(&token);
    assert_eq!(claims["aud"], json!(["vault-approle"]));
    assert_eq!(
        claims["exp"].as_i64().expect("exp") - claims["iat"].as_i64().expect("iat"),
        600
    );
    assert_eq!(claims["kubernetes.io"]["pod"]["name"], "web-0");
    assert_eq!(claims["kubernetes.io"]["pod"]["uid"], json!(uid));
    assert_eq!(claims["sub"], "system:serviceaccount:default:default");
    let r = review(&client, &token, &["vault-approle"]).await;
    assert_eq!(r["authenticated"], true, "{r}");
    assert_eq!(r["audiences"], json!(["vault-approle"]));
    assert_eq!(
        r["user"]["username"],
        "system:serviceaccount:default:default"
    );
    assert_eq!(
        r["user"]["extra"]["authentication.kubernetes.io/pod-name"],
        json!(["web-0"])
    );
    assert_eq!(
        r["user"]["extra"]["authentication.kubernetes.io/pod-uid"],
        json!([uid])
    );
    // The API's own audience, or none given (which means the API's), does not accept it.
    for audiences in [
        &[][..],
        &["https://kubernetes.default.svc.cluster.local"][..],
    ] {
        let r = review(&client, &token, audiences).await;
        assert_ne!(r["authenticated"], true, "{audiences:?}: {r}");
    }

    let record: Value =
        serde_json::from_slice(&std::fs::read(kd.app_record(&uid, "app")).expect("record"))
            .expect("json");
    let files = |mount: &str| -> Vec<(String, String)> {
        record["mounts"]
            .as_array()
            .expect("mounts")
            .iter()
            .find(|m| m["mountPath"] == mount)
            .unwrap_or_else(|| panic!("{mount} recorded"))["files"]
            .as_array()
            .expect("files")
            .iter()
            .map(|f| {
                (
                    f["path"].as_str().expect("path").to_string(),
                    f["mode"].as_str().expect("mode").to_string(),
                )
            })
            .collect()
    };
    assert_eq!(
        files("/var/run/secrets/tokens"),
        vec![("token".to_string(), "0644".to_string())]
    );
    assert_eq!(
        files("/etc/db"),
        vec![("password".to_string(), "0400".to_string())]
    );
    assert_eq!(
        files("/etc/cfg"),
        vec![("mode".to_string(), "0644".to_string())]
    );
}

#[tokio::test]
async fn projected_tokens_shorter_than_ten_minutes_are_refused_at_creation() {
    let (_kd, client) = start().await;
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "web-0"},
        "spec": {
            "containers": [{"name": "app", "image": "nginx"}],
            "volumes": [{"name": "t", "projected": {"sources": [
                {"serviceAccountToken": {"audience": "vault-approle", "expirationSeconds": 60, "path": "token"}}
            ]}}]
        }
    }))
    .expect("pod");
    let s = refused(&pods, &pod).await;
    assert_eq!(s.code, 422);
    assert!(
        s.message.contains(
            "spec.volumes[0].projected.sources[0].serviceAccountToken.expirationSeconds: Invalid value: 60: may not specify a duration less than 10 minutes"
        ),
        "{}",
        s.message
    );
}

#[tokio::test]
async fn pods_need_an_existing_service_account() {
    let (_kd, client) = start().await;
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "web-0"},
        "spec": {"serviceAccountName": "app", "containers": [{"name": "app", "image": "nginx"}]}
    }))
    .expect("pod");
    let s = refused(&pods, &pod).await;
    assert_eq!(s.code, 403);
    assert_eq!(
        s.message,
        "pods \"web-0\" is forbidden: error looking up service account default/app: serviceaccount \"app\" not found"
    );
    let sas: Api<ServiceAccount> = Api::default_namespaced(client.clone());
    sas.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "app"}})).expect("sa"),
    )
    .await
    .expect("create sa");
    pods.create(&PostParams::default(), &pod)
        .await
        .expect("now it is admitted");
}

//! Pod identity before the push, end to end: vault-dev, kube-dev and the real controller.
//!
//! An impostor serves on a pod's IP and push port. It passes the TLS handshake (it trusts the
//! injector CA, as the real init container does, so it sees the controller's requests) but it does
//! not hold the pod's own projected token. It answers `GET /v1/identity` with garbage, 404 (like
//! an older approle-init), another pod's valid token, or a token of the right pod for another
//! audience. The real init container of each such pod is moved to another port, so only the
//! impostor answers where the controller pushes.
//!
//! Expected: no impostor ever receives `POST /v1/secret-id`, each pod gets a `PossibleInterception`
//! Event naming what failed (never the token), `approle_identity_failures_total` counts them, and
//! Vault's audit log shows no secret-id mint at all for their role (identity is checked first).
//! A normal pod in the same cluster is delivered as usual.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use approle_shared::INIT_CONTAINER_NAME;
use approle_testkit::harness::{self, ROLE, Stack, StackOptions, delivered, wait_for};
use approle_testkit::impostor::{Answer, Impostor};
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::api::{Api, PostParams};
use serde_json::json;

/// The role only impostor pods ask for: any mint of it would be a failure of the check.
const TARGET_ROLE: &str = "impostor-target";
/// Where the controller pushes for the impostor pods (their annotation).
const PUSH_PORT: u16 = 9443;
/// Where their real init containers listen instead.
const MOVED: &str = "0.0.0.0:9444";
const WAIT: Duration = Duration::from_secs(30);

fn pod_ip(p: &Pod) -> Option<IpAddr> {
    p.status.as_ref()?.pod_ip.as_deref()?.parse().ok()
}

fn init_running(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.init_container_statuses.as_ref())
        .and_then(|all| all.iter().find(|c| c.name == INIT_CONTAINER_NAME))
        .and_then(|c| c.state.as_ref())
        .is_some_and(|s| s.running.is_some())
}

/// Creates an injected pod for [`TARGET_ROLE`] whose real init container listens on [`MOVED`];
/// returns it once the init container runs and the pod has its IP.
async fn impostor_pod(stack: &Stack, name: &str) -> Pod {
    let annotations = json!({"vault-approle.io/role": TARGET_ROLE, "vault-approle.io/port": PUSH_PORT.to_string()});
    let pod = stack
        .injected_pod_listening_on(name, annotations, MOVED)
        .await
        .expect("injected pod");
    stack.create(&pod).await.expect("create");
    stack
        .wait_pod(name, "init container running with an IP", WAIT, |p| {
            init_running(p) && pod_ip(p).is_some()
        })
        .await
        .expect("running")
}

/// A token bound to `pod` but for another audience (TokenRequest, as anyone allowed to create
/// tokens for the pod's service account could get).
async fn wrong_audience_token(stack: &Stack, pod: &Pod) -> String {
    let sas: Api<ServiceAccount> = Api::namespaced(stack.kube_client(), "default");
    let req: TokenRequest = serde_json::from_value(json!({"spec": {
        "audiences": ["some-other-audience"], "expirationSeconds": 600,
        "boundObjectRef": {"apiVersion": "v1", "kind": "Pod",
                           "name": pod.metadata.name, "uid": pod.metadata.uid}}}))
    .expect("token request");
    sas.create_token_request("default", &PostParams::default(), &req)
        .await
        .expect("token request")
        .status
        .expect("status")
        .token
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_impostor_on_the_pods_ip_without_the_pods_token_receives_nothing() {
    let _one = harness::exclusive().await;
    let stack = Stack::start(StackOptions::default()).await.expect("stack");
    stack.create_role(TARGET_ROLE).await.expect("role");
    let ca = stack.injector_ca_pem().await.expect("injector CA");

    // A normal pod: delivered through the identity check. Its projected token is the "another
    // pod's valid token" an impostor might have got hold of.
    stack
        .create(
            &stack
                .pod("honest", json!({"vault-approle.io/role": ROLE}))
                .expect("pod"),
        )
        .await
        .expect("create");
    let honest = stack
        .wait_pod("honest", "token delivered", WAIT, delivered)
        .await
        .expect("delivered");
    let honest_vault_token = stack.working_token(&honest).await.expect("working token");
    let honest_identity =
        std::fs::read_to_string(stack.identity_token_path(&honest)).expect("identity token");

    // (pod, what the impostor shows, what the Event must name)
    let mut cases: Vec<(&str, Answer, &str)> = vec![
        ("garbage", Answer::Garbage, "unreadable identity answer"),
        (
            "old-init",
            Answer::NotFound,
            "showed no identity token (404",
        ),
        (
            "stolen",
            Answer::Token(honest_identity.clone()),
            "bound to pod \"honest\"",
        ),
    ];
    let mut pods = Vec::new();
    for (name, _, _) in &cases {
        pods.push(impostor_pod(&stack, name).await);
    }
    let wrong_pod = impostor_pod(&stack, "wrong-audience").await;
    let wrong_audience = wrong_audience_token(&stack, &wrong_pod).await;
    cases.push((
        "wrong-audience",
        Answer::Token(wrong_audience.clone()),
        "did not authenticate",
    ));
    pods.push(wrong_pod);

    let mut impostors = Vec::new();
    for ((_, answer, _), pod) in cases.iter().zip(&pods) {
        let addr = SocketAddr::new(pod_ip(pod).expect("IP"), PUSH_PORT);
        let impostor = Impostor::start(addr, &ca, answer.clone(), false)
            .await
            .expect("impostor on the pod's IP");
        impostors.push(impostor);
    }

    for ((name, _, needle), impostor) in cases.iter().zip(&impostors) {
        let note = stack
            .wait_event(name, "PossibleInterception", WAIT)
            .await
            .expect("PossibleInterception Event");
        assert!(note.contains(needle), "{name}: {note}");
        assert!(note.contains("nothing was pushed"), "{name}: {note}");
        for token in [honest_identity.trim(), wrong_audience.as_str()] {
            assert!(!note.contains(token), "{name}: a token in the Event");
        }
        let requests = impostor.requests();
        assert!(
            requests.iter().any(|r| r == "GET /v1/identity"),
            "{name}: {requests:?}"
        );
        assert!(
            requests.iter().all(|r| r == "GET /v1/identity"),
            "{name}: the impostor received more than the identity request: {requests:?}"
        );
        let events = stack.events_for(name).await.expect("events");
        assert!(
            events
                .iter()
                .all(|(reason, _)| reason != "SecretIdDelivered"),
            "{name}: {events:?}"
        );
    }

    // Identity is checked before the mint: Vault never minted for the impostors' role.
    assert_eq!(stack.secret_id_mints(TARGET_ROLE), 0);
    assert!(
        stack
            .live_secret_ids(TARGET_ROLE)
            .await
            .expect("list")
            .is_empty()
    );
    // The failures are counted by reason.
    let admin = stack.admin_url(0).expect("admin port");
    let metrics = wait_for("identity failure metrics", WAIT, || async {
        let text = stack
            .http
            .get(format!("{admin}/metrics"))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        [
            "approle_identity_failures_total{reason=\"not_shown\"}",
            "approle_identity_failures_total{reason=\"wrong_pod\"}",
            "approle_identity_failures_total{reason=\"unauthenticated\"}",
        ]
        .iter()
        .all(|m| text.contains(m))
        .then_some(text)
    })
    .await
    .expect("metrics");
    assert!(
        !metrics.contains("approle_identity_failures_total{reason=\"review_failed\"}"),
        "{metrics}"
    );

    // The impostors still got nothing, after all the retries the controller made meanwhile.
    for ((name, _, _), impostor) in cases.iter().zip(&impostors) {
        let requests = impostor.requests();
        assert!(
            requests.iter().all(|r| r == "GET /v1/identity"),
            "{name}: {requests:?}"
        );
    }
    stack.assert_no_secrets(&[
        honest_identity.trim(),
        &wrong_audience,
        &honest_vault_token.token,
    ]);
}

//! End to end: the controller's authorization policy (default deny, checked at admission and
//! again before minting, reloaded live, not ready without one) and the crash-loop backoff of
//! re-deliveries to restarted init containers. vault-dev's audit log is the witness that a refused
//! or held-back pod costs no secret_id.

use std::time::Duration;

use approle_testkit::harness::{self, ROLE, Stack, StackOptions, delivered};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::api::{Api, PostParams};
use serde_json::json;

const DELIVERY: Duration = Duration::from_secs(60);

/// `web` only in namespace `payments` (the tests' pods live in `default`), `other-*` in `default`.
const PAYMENTS_ONLY: &str = r#"
rules:
  - roles: ["web"]
    namespaces: ["payments"]
  - roles: ["other-*"]
    namespaces: ["default"]
"#;

/// `web` in `default`, for the service account `api` only.
const WEB_FOR_API: &str = r#"
rules:
  - roles: ["{namespace}-web", "web"]
    namespaces: ["default"]
    serviceAccounts: ["api"]
"#;

fn refusal(result: anyhow::Result<Pod>) -> String {
    match result {
        Ok(p) => panic!("pod {:?} was created but must be refused", p.metadata.name),
        Err(e) => format!("{e:#}"),
    }
}

fn with_service_account(mut pod: Pod, sa: &str) -> Pod {
    if let Some(spec) = pod.spec.as_mut() {
        spec.service_account_name = Some(sa.into());
    }
    pod
}

async fn metrics(stack: &Stack) -> String {
    stack
        .admin_get(0, "/metrics")
        .await
        .map(|(_, t)| t)
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_role_is_refused_at_admission_and_before_minting_until_the_policy_allows_it() {
    let _one = harness::exclusive().await;
    let stack = Stack::start(StackOptions {
        policy: Some(PAYMENTS_ONLY.into()),
        ..Default::default()
    })
    .await
    .expect("stack");

    // (1) Admission: refused, naming the role, the namespace and the policy file.
    let pod = stack
        .pod("denied-0", json!({"vault-approle.io/role": ROLE}))
        .expect("pod");
    let msg = refusal(stack.create(&pod).await);
    assert!(
        msg.contains("role \"web\" is not allowed in namespace \"default\"")
            && msg.contains("policy.yaml"),
        "{msg}"
    );

    // (2) A pod that bypasses admission (already injected): RoleDenied, status `denied`, no mint.
    let pod = stack
        .injected_pod("bypass-0", json!({"vault-approle.io/role": ROLE}))
        .await
        .expect("pod");
    stack.create(&pod).await.expect("create");
    let note = stack
        .wait_event("bypass-0", "RoleDenied", DELIVERY)
        .await
        .expect("RoleDenied event");
    assert!(
        note.contains("role \"web\" is not allowed in namespace \"default\""),
        "{note}"
    );
    stack
        .wait_pod("bypass-0", "status denied", DELIVERY, |p| {
            harness::annotation(p, "vault-approle.io/status").as_deref() == Some("denied")
        })
        .await
        .expect("status annotation");
    assert_eq!(
        stack.secret_id_mints(ROLE),
        0,
        "no secret_id may be minted for a denied role"
    );
    let text = metrics(&stack).await;
    assert!(
        text.contains("approle_policy_denials_total{stage=\"admission\"} 1")
            && text.contains("approle_policy_denials_total{stage=\"reconcile\"}"),
        "{text}"
    );

    // A service-account rule: the message says who may, and a pod running as `api` may.
    stack.write_policy(WEB_FOR_API).expect("policy");
    harness::wait_for("the new policy to load", DELIVERY, || async {
        metrics(&stack)
            .await
            .contains("approle_policy_reloads_total{result=\"ok\"} 2")
            .then_some(())
    })
    .await
    .expect("reloaded");
    let pod = stack
        .pod("sa-0", json!({"vault-approle.io/role": ROLE}))
        .expect("pod");
    let msg = refusal(stack.create(&pod).await);
    assert!(
        msg.contains("only for service accounts [api]") && msg.contains("pod runs as \"default\""),
        "{msg}"
    );
    // The bypassing pod runs as `default`: still refused after the reload.
    assert_eq!(stack.secret_id_mints(ROLE), 0);

    // Allowed: the pod that bypassed admission is delivered without being recreated (the reload
    // re-checks every pod at once), and a pod running as `api` is admitted and delivered.
    stack
        .write_policy("rules: [{roles: [web], namespaces: [default]}]\n")
        .expect("policy");
    let bypass = stack
        .wait_pod(
            "bypass-0",
            "delivered after the policy allowed it",
            DELIVERY,
            delivered,
        )
        .await
        .expect("delivered");
    let accounts: Api<ServiceAccount> = Api::namespaced(stack.kube_client(), "default");
    let sa: ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": "api"}})).expect("service account");
    accounts
        .create(&PostParams::default(), &sa)
        .await
        .expect("service account api");
    let api = with_service_account(
        stack
            .pod("api-0", json!({"vault-approle.io/role": ROLE}))
            .expect("pod"),
        "api",
    );
    stack.create(&api).await.expect("admitted");
    let api = stack
        .wait_pod("api-0", "delivered", DELIVERY, delivered)
        .await
        .expect("delivered");
    assert_eq!(stack.secret_id_mints(ROLE), 2);
    let t1 = stack.working_token(&bypass).await.expect("token").token;
    let t2 = stack.working_token(&api).await.expect("token").token;
    stack.assert_no_secrets(&[&t1, &t2, &stack.controller_token, harness::ROOT_TOKEN]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_policy_written_live_keeps_the_last_good_one() {
    let _one = harness::exclusive().await;
    let stack = Stack::start(StackOptions {
        policy: Some("rules: [{roles: [web], namespaces: [default]}]\n".into()),
        ..Default::default()
    })
    .await
    .expect("stack");
    // A typo (`namespace`) would open nothing and close nothing silently: it is an error.
    stack
        .write_policy("rules: [{roles: ['*'], namespace: ['*']}]\n")
        .expect("policy");
    let text = harness::wait_for("the reload error to be counted", DELIVERY, || async {
        let t = metrics(&stack).await;
        t.contains("approle_policy_reloads_total{result=\"error\"} 1")
            .then_some(t)
    })
    .await
    .expect("reload error");
    assert!(text.contains("approle_policy_loaded 1"), "{text}");
    let log = stack.controllers[0].output();
    assert!(
        log.contains("unknown field `namespace`") && log.contains("last good one"),
        "the controller must log why the policy was not reloaded"
    );
    // Still ready (once the watch has synced), and the old policy still admits and delivers.
    stack
        .wait_ready(0, DELIVERY)
        .await
        .expect("ready with the last good policy");
    let pod = stack
        .pod("kept-0", json!({"vault-approle.io/role": ROLE}))
        .expect("pod");
    stack
        .create(&pod)
        .await
        .expect("admitted by the old policy");
    let pod = stack
        .wait_pod("kept-0", "delivered", DELIVERY, delivered)
        .await
        .expect("delivered");
    let token = stack.working_token(&pod).await.expect("token").token;
    stack.assert_no_secrets(&[&token, &stack.controller_token, harness::ROOT_TOKEN]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_without_a_good_policy_starts_but_is_not_ready_and_refuses() {
    let _one = harness::exclusive().await;
    let stack = Stack::start(StackOptions {
        policy: Some("rules:\n  - roles: [web]\n    namespaces: default\n".into()),
        ..Default::default()
    })
    .await
    .expect("the controller starts (webhook and admin port) without a good policy");
    let (status, body) = harness::wait_for("/readyz to answer", DELIVERY, || async {
        stack.admin_get(0, "/readyz").await.ok()
    })
    .await
    .expect("readyz");
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("authorization policy not loaded") && body.contains("namespaces"),
        "/readyz must say why: {body}"
    );
    let pod = stack
        .pod("early-0", json!({"vault-approle.io/role": ROLE}))
        .expect("pod");
    let msg = refusal(stack.create(&pod).await);
    assert!(msg.contains("no authorization policy loaded yet"), "{msg}");
    assert!(metrics(&stack).await.contains("approle_policy_loaded 0"));

    // Fixed: ready, and pods are admitted and delivered.
    stack
        .write_policy(harness::ALLOW_ALL_POLICY)
        .expect("policy");
    stack.wait_ready(0, DELIVERY).await.expect("ready");
    stack.create(&pod).await.expect("admitted");
    stack
        .wait_pod("early-0", "delivered", DELIVERY, delivered)
        .await
        .expect("delivered");
}

/// Sets an env var of the injected init container.
fn set_init_env(pod: &mut Pod, name: &str, value: &str) {
    let init = pod
        .spec
        .as_mut()
        .and_then(|s| s.init_containers.as_mut())
        .and_then(|c| c.first_mut())
        .expect("injected init container");
    let env = init.env.get_or_insert_with(Vec::new);
    match env.iter_mut().find(|e| e.name == name) {
        Some(e) => e.value = Some(value.into()),
        None => {
            env.push(serde_json::from_value(json!({"name": name, "value": value})).expect("env"))
        }
    }
}

fn init_restarts(p: &Pod) -> i32 {
    p.status
        .as_ref()
        .and_then(|s| s.init_container_statuses.as_ref())
        .and_then(|c| c.first())
        .map_or(0, |c| c.restart_count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_looping_init_container_gets_redeliveries_only_with_backoff() {
    let _one = harness::exclusive().await;
    // A pause long enough that no timing matters: after the first re-delivery, nothing more.
    let stack = Stack::start(StackOptions {
        controller_args: [
            "--redelivery-backoff",
            "1h",
            "--redelivery-backoff-max",
            "1h",
        ]
        .map(String::from)
        .to_vec(),
        ..Default::default()
    })
    .await
    .expect("stack");
    // Every run of this init container refuses what it is handed and exits 4 (it expects another
    // AppRole mount, so the creation_path check fails), and a run that gets nothing gives up
    // after 2 s (exit 3): kubelet restarts it each time.
    let mut pod = stack
        .injected_pod("crashloop-0", json!({"vault-approle.io/role": ROLE}))
        .await
        .expect("pod");
    set_init_env(&mut pod, "APPROLE_INIT_APPROLE_MOUNT", "approle-elsewhere");
    set_init_env(&mut pod, "APPROLE_INIT_TIMEOUT", "2s");
    stack.create(&pod).await.expect("create");

    let restarted = stack
        .wait_pod("crashloop-0", "4 init container restarts", DELIVERY, |p| {
            init_restarts(p) >= 4
        })
        .await
        .expect("crash loop");
    // Runs 1 and 2 were handed a credential (the first re-delivery has no pause); runs 3, 4, 5
    // were held back.
    assert_eq!(
        stack.secret_id_mints(ROLE),
        2,
        "{} restarts may cost at most 2 secret_ids",
        init_restarts(&restarted)
    );
    assert_eq!(stack.approle_logins(), 0);
    assert_eq!(
        harness::annotation(&restarted, "vault-approle.io/deliveries").as_deref(),
        Some("2")
    );
    let note = stack
        .wait_event("crashloop-0", "RedeliveryBackoff", DELIVERY)
        .await
        .expect("RedeliveryBackoff event");
    assert!(
        note.contains("after 2 deliveries") && note.contains("crash-loop backoff"),
        "{note}"
    );
    let text = metrics(&stack).await;
    assert!(
        text.contains("approle_redeliveries_total{decision=\"now\"} 1")
            && text.contains("approle_redeliveries_total{decision=\"backoff\"}"),
        "{text}"
    );
    // Both refused secret_ids were destroyed.
    harness::wait_for("no live secret_id", DELIVERY, || async {
        stack
            .live_secret_ids(ROLE)
            .await
            .ok()
            .filter(|l| l.is_empty())
    })
    .await
    .expect("destroyed");
    stack.assert_no_secrets(&[&stack.controller_token, harness::ROOT_TOKEN]);
}

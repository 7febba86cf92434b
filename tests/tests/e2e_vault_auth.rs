//! The controller's own Vault login, end to end with vault-dev, kube-dev and the real binaries:
//! Kubernetes auth with renewal and re-login at the max TTL, AppRole auth, a token revoked behind
//! the controller's back, a token file rotated under it, Vault hanging for 30 s, and Vault TLS with
//! and without verification.

use std::time::Duration;

use approle_testkit::harness::{
    self, ControllerAuth, ROLE, Stack, StackOptions, delivered, ready_field,
};
use serde_json::json;

const DELIVERY: Duration = Duration::from_secs(60);

fn kubernetes(token_ttl: &str, token_max_ttl: &str) -> ControllerAuth {
    ControllerAuth::Kubernetes {
        token_ttl: token_ttl.into(),
        token_max_ttl: token_max_ttl.into(),
    }
}

/// Creates `name` and waits until it holds a working token.
async fn deliver(stack: &Stack, name: &str) -> String {
    let pod = stack
        .pod(name, json!({"vault-approle.io/role": ROLE}))
        .expect("pod");
    stack.create(&pod).await.expect("create");
    let pod = stack
        .wait_pod(name, "token delivered", DELIVERY, delivered)
        .await
        .expect("delivered");
    stack
        .working_token(&pod)
        .await
        .expect("working token")
        .token
}

/// Waits until controller 0's metric `series` reaches `at_least`.
async fn metric_at_least(stack: &Stack, series: &str, at_least: f64) -> f64 {
    harness::wait_for(&format!("{series} >= {at_least}"), DELIVERY, || async {
        stack.metric(0, series).await.filter(|v| *v >= at_least)
    })
    .await
    .expect("metric")
}

/// Accessors of the controller's logins, in order, from its log.
fn login_accessors(stack: &Stack) -> Vec<String> {
    stack.controllers[0]
        .output()
        .lines()
        .filter(|l| l.contains("logged in to Vault"))
        .filter_map(|l| ready_field(l, "token_accessor"))
        .collect()
}

async fn wait_ready(stack: &Stack) {
    stack.wait_ready(0, DELIVERY).await.expect("ready");
}

const LOGINS_OK: &str = "approle_vault_logins_total{result=\"success\"}";
const RENEWALS_OK: &str = "approle_vault_token_renewals_total{result=\"success\"}";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_auth_delivers_renews_and_logs_in_again_at_the_max_ttl() {
    let _one = harness::exclusive().await;
    let stack = Stack::start(StackOptions {
        controller_auth: kubernetes("3s", "12s"),
        ..Default::default()
    })
    .await
    .expect("stack");
    wait_ready(&stack).await;
    let first = deliver(&stack, "k8s-0").await;

    // 3 s tokens are renewed at 2 s; renewals are capped near the 12 s max TTL, and then the
    // controller logs in again with its service-account token.
    metric_at_least(&stack, RENEWALS_OK, 2.0).await;
    metric_at_least(&stack, LOGINS_OK, 2.0).await;
    let accessors = login_accessors(&stack);
    assert!(accessors.len() >= 2, "{accessors:?}");
    assert_ne!(accessors[0], accessors[1], "a new login is a new token");
    let second = deliver(&stack, "k8s-1").await;

    let logins = stack
        .audit()
        .iter()
        .filter(|e| e["path"] == "auth/kubernetes/login" && e["status"] == 200)
        .count();
    assert!(
        logins >= 2,
        "the audit log shows {logins} Kubernetes logins"
    );
    let ttl = stack
        .metric(0, "approle_vault_token_ttl_seconds")
        .await
        .expect("TTL gauge");
    assert!((0.0..=3.0).contains(&ttl), "TTL gauge {ttl}");
    let jwt = std::fs::read_to_string(stack.dir.path().join("controller-sa-token")).expect("jwt");
    stack.assert_no_secrets(&[&first, &second, &jwt, harness::ROOT_TOKEN]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approle_auth_delivers() {
    let _one = harness::exclusive().await;
    let stack = Stack::start(StackOptions {
        controller_auth: ControllerAuth::AppRole,
        ..Default::default()
    })
    .await
    .expect("stack");
    wait_ready(&stack).await;
    let token = deliver(&stack, "approle-0").await;
    assert_eq!(stack.metric(0, LOGINS_OK).await, Some(1.0));
    let login = stack
        .audit()
        .into_iter()
        .find(|e| e["path"] == "auth/approle/login" && e["status"] == 200)
        .expect("the controller's AppRole login is audited");
    assert_eq!(login["remote_address"], "127.0.0.1", "{login}");
    let secret_id =
        std::fs::read_to_string(stack.dir.path().join("controller-secret-id")).expect("file");
    stack.assert_no_secrets(&[&token, &secret_id, harness::ROOT_TOKEN]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_revoked_behind_the_controllers_back_is_replaced_by_a_new_login() {
    let _one = harness::exclusive().await;
    let stack = Stack::start(StackOptions {
        controller_auth: kubernetes("20m", "1h"),
        ..Default::default()
    })
    .await
    .expect("stack");
    wait_ready(&stack).await;
    deliver(&stack, "revoked-0").await;
    let accessor = login_accessors(&stack).pop().expect("logged in");
    let (status, body) = stack
        .vault(
            "POST",
            "auth/token/revoke-accessor",
            Some(json!({"accessor": accessor})),
        )
        .await
        .expect("revoke");
    assert_eq!(status, 204, "{body}");

    // The next delivery meets 403, logs in once more and goes through.
    deliver(&stack, "revoked-1").await;
    assert_eq!(stack.metric(0, LOGINS_OK).await, Some(2.0));
    let log = stack.controllers[0].output();
    assert!(
        log.contains("Vault refused the controller's token"),
        "the re-login is logged"
    );
    let events = stack.events_for("revoked-1").await.expect("events");
    assert!(
        events.iter().all(|(reason, _)| reason != "DeliveryFailed"),
        "the 403 is absorbed by one re-login: {events:?}"
    );
    wait_ready(&stack).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_token_file_is_picked_up_without_a_restart() {
    let _one = harness::exclusive().await;
    let stack = Stack::start(StackOptions::default()).await.expect("stack");
    wait_ready(&stack).await;
    deliver(&stack, "file-0").await;
    assert_eq!(stack.metric(0, LOGINS_OK).await, Some(1.0));

    // An agent writes a new token (atomically, by rename), then the old one is revoked.
    let (_, created) = stack
        .vault(
            "POST",
            "auth/token/create",
            Some(json!({"policies": ["approle-controller"], "ttl": "1h"})),
        )
        .await
        .expect("token");
    let fresh = created["auth"]["client_token"].as_str().expect("token");
    let file = stack.dir.path().join("controller-token");
    let tmp = stack.dir.path().join("controller-token.new");
    std::fs::write(&tmp, fresh).expect("write");
    std::fs::rename(&tmp, &file).expect("rename");
    metric_at_least(&stack, LOGINS_OK, 2.0).await;
    let (status, _) = stack
        .vault(
            "POST",
            "auth/token/revoke",
            Some(json!({"token": stack.controller_token})),
        )
        .await
        .expect("revoke");
    assert_eq!(status, 204);

    deliver(&stack, "file-1").await;
    let events = stack.events_for("file-1").await.expect("events");
    assert!(
        events.iter().all(|(reason, _)| reason != "DeliveryFailed"),
        "{events:?}"
    );
    stack.assert_no_secrets(&[fresh, &stack.controller_token, harness::ROOT_TOKEN]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_created_while_vault_hangs_for_30_seconds_are_delivered_when_it_is_back() {
    let _one = harness::exclusive().await;
    let mut stack = Stack::start(StackOptions {
        controller_auth: kubernetes("20m", "1h"),
        // Calls to a hung Vault give up after 2 s (default 10 s), so the outage is seen quickly.
        controller_args: vec!["--vault-timeout".into(), "2s".into()],
        ..Default::default()
    })
    .await
    .expect("stack");
    wait_ready(&stack).await;
    deliver(&stack, "before-0").await;

    // SIGSTOP: vault-dev keeps its sockets (and its in-memory state) but answers nothing; every
    // request hangs until the client's timeout, like a Vault whose storage stalled.
    stack.vault.signal("STOP");
    let outage = tokio::time::Instant::now();
    const PODS: usize = 4;
    for i in 0..PODS {
        let pod = stack
            .pod(
                &format!("outage-{i}"),
                json!({"vault-approle.io/role": ROLE}),
            )
            .expect("pod");
        stack.create(&pod).await.expect("create");
    }
    stack
        .wait_event("outage-0", "DeliveryFailed", DELIVERY)
        .await
        .expect("a delivery fails while Vault hangs");
    metric_at_least(&stack, "approle_vault_errors_total", 1.0).await;
    // The outage itself is what is tested: it lasts 30 s, whatever the controller does.
    tokio::time::sleep_until(outage + Duration::from_secs(30)).await;
    assert!(
        stack.controllers[0].is_running(),
        "the controller survives the outage"
    );
    stack.vault.signal("CONT");

    for i in 0..PODS {
        let name = format!("outage-{i}");
        let pod = stack
            .wait_pod(&name, "token delivered", DELIVERY, delivered)
            .await
            .expect("delivered after the outage");
        stack.working_token(&pod).await.expect("working token");
    }
    assert!(stack.controllers[0].is_running());
    let errors = stack
        .metric(0, "approle_vault_errors_total")
        .await
        .expect("vault errors counted");
    assert!(errors >= 1.0, "{errors}");
    // Requests that timed out during the outage may still be carried out by Vault when it
    // resumes; the controller finds the secret_ids they minted and destroys them.
    stack
        .wait_no_live_secret_ids(ROLE, DELIVERY)
        .await
        .expect("no live secret_id");
    wait_ready(&stack).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_tls_is_verified_unless_explicitly_skipped() {
    let _one = harness::exclusive().await;
    let mut stack = Stack::start(StackOptions {
        vault_tls: true,
        controller_trusts_vault_ca: false,
        ..Default::default()
    })
    .await
    .expect("stack");
    assert!(
        stack.vault_url.starts_with("https://"),
        "{}",
        stack.vault_url
    );

    // Without the CA and without the flag: never ready, and the log says what to do.
    let log = harness::wait_for("the login failure", DELIVERY, || async {
        let log = stack.controllers[0].output();
        log.contains("Vault login failed").then_some(log)
    })
    .await
    .expect("login fails");
    assert!(log.contains("give --vault-cacert"), "{log}");
    let (status, body) = stack.admin_get(0, "/readyz").await.expect("readyz");
    assert_eq!(status, 503);
    assert!(body.contains("Vault login not valid"), "{body}");
    assert!(!log.contains("Vault TLS verification is disabled"));
    let mut unverified = stack.controllers.remove(0);
    unverified.stop_blocking(Duration::from_secs(5));

    // With --vault-tls-skip-verify: it logs in, is ready, and warns about it.
    stack.options_mut().controller_args = vec!["--vault-tls-skip-verify".into()];
    stack.start_controller().await.expect("controller");
    wait_ready(&stack).await;
    assert_eq!(stack.metric(0, LOGINS_OK).await, Some(1.0));
    let log = stack.controllers[0].output();
    assert!(
        log.contains("Vault TLS verification is disabled"),
        "the start-up warning is logged"
    );
}

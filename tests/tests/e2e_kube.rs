//! The controller as a Kubernetes client: several replicas against the same API, each seeing every
//! pod, with every pod delivered once and nothing left alive in Vault.

use std::time::Duration;

use approle_testkit::harness::{self, ROLE, Stack, StackOptions, annotation, delivered};
use serde_json::json;

const DELIVERY: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_controller_sees_the_same_pods_and_nothing_is_delivered_twice() {
    let _one = harness::exclusive().await;
    // Without leader election both replicas race for every pod: the init container's 409 and the
    // destroy-on-give-up paths must still keep it to one delivery (e2e_ha covers the election).
    let mut stack = Stack::start(StackOptions {
        controller_args: vec!["--leader-elect=false".into()],
        ..StackOptions::default()
    })
    .await
    .expect("stack");
    stack.start_controller().await.expect("second controller");
    let names: Vec<String> = (0..4).map(|i| format!("twin-{i}")).collect();
    stack.create_role_pods(&names).await.expect("create");
    for n in &names {
        let pod = stack
            .wait_pod(n, "delivered", DELIVERY, delivered)
            .await
            .expect("delivered");
        // The recorded accessor belongs to the token the pod holds: one delivery, recorded once.
        let proven = stack.working_token(&pod).await.expect("a working token");
        if let Some(recorded) = annotation(&pod, "vault-approle.io/token-accessor") {
            assert_eq!(proven.accessor, recorded, "{n}");
        }
    }
    // Both replicas saw every pod (each logs its reconciles with the pod's name).
    for c in &stack.controllers {
        let out = c.output();
        for n in &names {
            assert!(
                out.contains(&format!("pod.name={n}"))
                    || out.contains(&format!("pod.name=\"{n}\"")),
                "{} never saw {n}:\n{out}",
                c.name
            );
        }
    }
    // Whatever the losing replica minted was destroyed.
    stack
        .wait_no_live_secret_ids(ROLE, Duration::from_secs(30))
        .await
        .expect("no leftovers");
    stack.assert_no_secrets(&[&stack.controller_token, harness::ROOT_TOKEN]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_that_falls_behind_gets_410_and_the_controller_relists_without_missing_a_pod_or_a_deletion()
 {
    let _one = harness::exclusive().await;
    let kube_args = [
        "--watch-history",
        "5",
        "--max-watch-duration",
        "1s",
        "--bookmark-interval",
        "1h",
    ];
    let stack = Stack::start(StackOptions {
        kube_args: kube_args.iter().map(|s| (*s).to_owned()).collect(),
        ..Default::default()
    })
    .await
    .expect("stack");
    let early = stack
        .pod("early-0", json!({"vault-approle.io/role": ROLE}))
        .expect("pod");
    stack.create(&early).await.expect("create");
    let early = stack
        .wait_pod("early-0", "delivered", DELIVERY, delivered)
        .await
        .expect("delivered");
    let early_token = stack.working_token(&early).await.expect("a working token");

    // Freeze the controller; kube-dev ends its pod watch within a second (--max-watch-duration).
    let kube = stack.kube.as_ref().expect("kube-dev");
    let closed = |out: &str| {
        out.lines()
            .filter(|l| l.contains("watch closed by the server") && l.contains("pods"))
            .count()
    };
    let before = closed(&kube.output());
    let controller = stack.controllers.first().expect("controller");
    controller.signal("STOP");
    // If the watch had already closed before the freeze, no further closure comes: the timeout
    // is then expected and the state is the same (no open watch).
    let _ = harness::wait_for(
        "the frozen controller's watch to be closed",
        Duration::from_secs(5),
        || async { (closed(&kube.output()) > before).then_some(()) },
    )
    .await;

    // A delivered pod deleted meanwhile: its Delete event falls out of the history window too,
    // so only the re-list can tell the controller that it is gone.
    stack
        .delete_and_wait_gone("early-0", DELIVERY)
        .await
        .expect("early-0 deleted");
    // More changes than the history window holds, then the pod the controller must not miss.
    let cms: kube::Api<k8s_openapi::api::core::v1::ConfigMap> =
        kube::Api::namespaced(stack.kube_client(), "default");
    for i in 0..12 {
        let cm = serde_json::from_value(json!({"metadata": {"name": format!("churn-{i}")}}))
            .expect("cm");
        cms.create(&Default::default(), &cm).await.expect("churn");
    }
    // Injected here: the frozen controller cannot answer admission, and injected pods are not
    // sent to the webhook.
    let late = stack
        .injected_pod("late-0", json!({"vault-approle.io/role": ROLE}))
        .await
        .expect("pod");
    stack.create(&late).await.expect("create");
    controller.signal("CONT");

    stack
        .wait_pod("late-0", "delivered after the re-list", DELIVERY, delivered)
        .await
        .expect("delivered");
    let out = kube.output();
    assert!(
        out.lines()
            .any(|l| l.contains("410 Expired") && l.contains("pods")),
        "the controller's resumed watch must have been answered 410:\n{out}"
    );
    // No Delete event ever reached the controller for early-0, yet its token is revoked: the pod
    // is missing from the re-list.
    let ip = early_token.ip.parse().expect("pod IP");
    stack
        .wait_token_revoked(
            "the token of the pod deleted during the gap to be revoked",
            &early_token.token,
            ip,
            DELIVERY,
        )
        .await
        .expect("revoked");
    stack.assert_no_secrets(&[
        &early_token.token,
        &stack.controller_token,
        harness::ROOT_TOKEN,
    ]);
}

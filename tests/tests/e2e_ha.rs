//! High availability: two controller replicas elect a leader through a Lease; only the leader
//! delivers. Killing the leader in the middle of a burst loses no pod and delivers none twice;
//! stopping it gracefully hands the lease over at once, without waiting for init containers that
//! do not answer; a pod deleted between two leaders still has its token revoked.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use approle_testkit::harness::{self, ROLE, Stack, StackOptions, annotation, delivered};
use k8s_openapi::api::core::v1::Pod;
use serde_json::json;

const DELIVERY: Duration = Duration::from_secs(90);
/// Short election timings, so a killed leader is replaced within seconds.
const FAST_ELECTION: [&str; 3] = [
    "--leader-lease-duration=3s",
    "--leader-renew-deadline=2s",
    "--leader-retry-period=500ms",
];
const BURST: usize = 50;

async fn two_replicas(args: &[&str]) -> Stack {
    let mut stack = Stack::start(StackOptions {
        controller_args: args.iter().map(|a| a.to_string()).collect(),
        ..StackOptions::default()
    })
    .await
    .expect("stack");
    stack.start_controller().await.expect("second replica");
    stack
}

async fn delivered_pods(stack: &Stack) -> Vec<Pod> {
    stack
        .pods()
        .list(&Default::default())
        .await
        .map(|l| l.items.into_iter().filter(delivered).collect())
        .unwrap_or_default()
}

/// Waits for a leader, then creates `name` and waits until it is delivered: the leader's index,
/// the lease holder and the delivered pod.
async fn leader_delivers(stack: &Stack, name: &str) -> (usize, String, Pod) {
    let leader = stack
        .wait_leader(Duration::from_secs(10))
        .await
        .expect("a leader");
    let holder = stack.lease_holder().await.expect("lease");
    let pod = stack
        .pod(name, json!({"vault-approle.io/role": ROLE}))
        .expect("pod");
    stack.create(&pod).await.expect("create");
    let pod = stack
        .wait_pod(name, "delivered", DELIVERY, delivered)
        .await
        .expect("delivered by the first leader");
    (leader, holder, pod)
}

/// Waits (up to `timeout`) until the Lease names a holder other than `old`, and returns it.
async fn next_holder(stack: &Stack, what: &str, old: &str, timeout: Duration) -> String {
    harness::wait_for(what, timeout, || async {
        stack
            .lease_holder()
            .await
            .filter(|h| h != old && !h.is_empty())
    })
    .await
    .expect(what)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_mid_burst_delivers_every_pod_exactly_once() {
    let _one = harness::exclusive().await;
    let mut stack = two_replicas(&FAST_ELECTION).await;
    let leader = stack
        .wait_leader(Duration::from_secs(10))
        .await
        .expect("a leader");
    let first_holder = stack.lease_holder().await.expect("lease");

    let names: Vec<String> = (0..BURST).map(|i| format!("burst-{i}")).collect();
    let creates = names.iter().map(|n| {
        let pod = stack
            .pod(n, json!({"vault-approle.io/role": ROLE}))
            .expect("pod");
        let stack = &stack;
        async move { stack.create(&pod).await.expect("create") }
    });
    futures::future::join_all(creates).await;
    let at_kill = harness::wait_for("10 pods delivered", DELIVERY, || async {
        let n = delivered_pods(&stack).await.len();
        (n >= 10).then_some(n)
    })
    .await
    .expect("some delivered");
    stack.controllers[leader].kill().await;
    eprintln!("killed the leader with {at_kill}/{BURST} pods delivered");

    // The other replica takes over once the lease expires, and delivers the rest.
    let new_holder = next_holder(
        &stack,
        "a new leader",
        &first_holder,
        Duration::from_secs(20),
    )
    .await;
    assert_ne!(stack.controller_index(&new_holder), Some(leader));
    harness::wait_for("every pod delivered", DELIVERY, || async {
        (delivered_pods(&stack).await.len() == BURST).then_some(())
    })
    .await
    .expect("all delivered");

    // Exactly once: the recorded accessor is the token's, one login per pod IP, one Event.
    let logins: HashMap<String, usize> = stack
        .audit()
        .iter()
        .filter(|e| e["path"] == "auth/approle/login" && e["status"] == 200)
        .fold(HashMap::new(), |mut m, e| {
            let ip = e["remote_address"].as_str().unwrap_or_default().to_owned();
            *m.entry(ip).or_default() += 1;
            m
        });
    for pod in delivered_pods(&stack).await {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let token = stack.working_token(&pod).await.expect("a working token");
        assert_eq!(
            annotation(&pod, "vault-approle.io/token-accessor").as_deref(),
            Some(token.accessor.as_str()),
            "{name}: recorded accessor"
        );
        assert_eq!(
            logins.get(&token.ip),
            Some(&1),
            "{name}: logins from {}",
            token.ip
        );
        let events = stack.events_for(&name).await.expect("events");
        let delivered_events = events
            .iter()
            .filter(|(r, _)| r == "SecretIdDelivered")
            .count();
        assert_eq!(delivered_events, 1, "{name}: {events:?}");
    }
    stack
        .wait_no_live_secret_ids(ROLE, Duration::from_secs(30))
        .await
        .expect("no leftovers");
    let survivor = stack
        .controller_index(&new_holder)
        .expect("the new leader is one of ours");
    let metrics = reqwest::get(format!(
        "{}/metrics",
        stack.admin_url(survivor).expect("admin")
    ))
    .await
    .expect("metrics")
    .text()
    .await
    .expect("text");
    assert!(metrics.contains("approle_leader 1"), "{metrics}");
    assert!(
        metrics.contains("approle_leader_transitions_total{transition=\"acquired\"} 1"),
        "{metrics}"
    );
    stack.assert_no_secrets(&[&stack.controller_token, harness::ROOT_TOKEN]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_stopped_gracefully_hands_over_at_once() {
    let _one = harness::exclusive().await;
    // Default timings: a lease that merely expired would keep the successor waiting 15 s.
    let mut stack = two_replicas(&[]).await;
    let (leader, first_holder, before) = leader_delivers(&stack, "before-0").await;
    // What a leader that died between minting and pushing leaves behind: a live secret_id whose
    // metadata names one of our pods. And one of somebody else's, which must survive.
    let mint = |pod_uid: String| {
        let stack = &stack;
        async move {
            let metadata = json!({ "pod_uid": pod_uid }).to_string();
            let (status, body) = stack
                .vault(
                    "POST",
                    &format!("auth/approle/role/{ROLE}/secret-id"),
                    Some(json!({ "metadata": metadata })),
                )
                .await
                .expect("mint");
            assert_eq!(status, 200, "{body}");
            body["data"]["secret_id_accessor"]
                .as_str()
                .expect("accessor")
                .to_owned()
        }
    };
    let orphan = mint(before.metadata.uid.clone().expect("uid")).await;
    let foreign = mint("not-one-of-our-pods".into()).await;

    let mut old = stack.controllers.remove(leader);
    old.terminate();
    old.wait(Duration::from_secs(15)).await.expect("stops");
    assert!(old.output().contains("lease released"), "{}", old.output());
    // Released: the standby's next attempt (every ~2–4 s) takes it, well within the 15 s lease.
    let started = std::time::Instant::now();
    let holder = next_holder(
        &stack,
        "the standby to lead",
        &first_holder,
        Duration::from_secs(8),
    )
    .await;
    eprintln!("handover after {:?}", started.elapsed());
    let survivor = stack.controller_index(&holder).expect("one of ours");
    // Admission goes to the surviving replica (every replica serves the webhook).
    let addr = stack.controllers[survivor]
        .logged_addr("webhook listening")
        .expect("webhook address");
    stack
        .register_webhook(&format!("https://{addr}/mutate"))
        .await
        .expect("webhook moved");

    // The new leader swept before delivering: our orphan is gone, the foreign one is not.
    let live = harness::wait_for("the orphan swept", Duration::from_secs(10), || async {
        stack
            .live_secret_ids(ROLE)
            .await
            .ok()
            .filter(|l| !l.contains(&orphan))
    })
    .await
    .expect("orphan destroyed");
    assert!(
        live.contains(&foreign),
        "foreign secret_id destroyed: {live:?}"
    );

    let pod = stack
        .pod("after-0", json!({"vault-approle.io/role": ROLE}))
        .expect("pod");
    stack.create(&pod).await.expect("create");
    let pod = stack
        .wait_pod(
            "after-0",
            "delivered by the new leader",
            DELIVERY,
            delivered,
        )
        .await
        .expect("delivered");
    stack.working_token(&pod).await.expect("works");
}

/// An init container that runs but never listens keeps its delivery retrying for up to a wrapping
/// token's lifetime (here 60 s, less a margin). A graceful stop hands it to the next leader instead
/// of waiting, and mints nothing for it: the pod's identity is checked before the mint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_does_not_wait_for_an_init_container_that_never_answers() {
    let _one = harness::exclusive().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let silent = dir.path().join("silent-init");
    std::fs::write(&silent, "#!/bin/sh\nexec sleep 600\n").expect("script");
    std::fs::set_permissions(&silent, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let mut stack = Stack::start(StackOptions {
        init_binary: Some(silent),
        controller_args: vec![
            "--log-level=info,approle_controller=debug".into(),
            "--wrap-ttl=60s".into(),
        ],
        ..StackOptions::default()
    })
    .await
    .expect("stack");
    let pod = stack
        .pod("silent-0", json!({"vault-approle.io/role": ROLE}))
        .expect("pod");
    stack.create(&pod).await.expect("create");
    stack.controllers[0]
        .wait_line(
            &["init container not answering yet"],
            Duration::from_secs(30),
        )
        .await
        .expect("waiting");

    let mut controller = stack.controllers.remove(0);
    controller.terminate();
    controller
        .wait(Duration::from_secs(15))
        .await
        .expect("stopped without waiting out the wrapping token");
    let output = controller.output();
    assert!(output.contains("the next leader delivers"), "{output}");
    assert!(output.contains("approle-controller stopped"), "{output}");
    let live = stack.live_secret_ids(ROLE).await.expect("list");
    assert!(live.is_empty(), "minted for a pod never verified: {live:?}");
    stack.assert_no_secrets(&[&stack.controller_token, harness::ROOT_TOKEN]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_deleted_while_no_replica_leads_has_its_token_revoked_by_the_next_leader() {
    let _one = harness::exclusive().await;
    let mut stack = two_replicas(&FAST_ELECTION).await;
    let (leader, dead_holder, pod) = leader_delivers(&stack, "gap-0").await;
    let token = stack.working_token(&pod).await.expect("a working token");

    // The leader dies; the pod is deleted before the standby may take the lease over.
    stack.controllers[leader].kill().await;
    stack
        .delete_and_wait_gone("gap-0", Duration::from_secs(30))
        .await
        .expect("deleted");
    assert_eq!(
        stack.lease_holder().await.as_deref(),
        Some(dead_holder.as_str()),
        "the deletion must fall in the gap between the leaders"
    );
    let new_holder = next_holder(
        &stack,
        "a new leader",
        &dead_holder,
        Duration::from_secs(20),
    )
    .await;
    stack
        .wait_token_revoked(
            "the new leader to revoke the token of the pod deleted in the gap",
            &token.token,
            token.ip.parse().expect("pod IP"),
            DELIVERY,
        )
        .await
        .expect("revoked");
    let survivor = stack
        .controller_index(&new_holder)
        .expect("the new leader is one of ours");
    let out = stack.controllers[survivor].output();
    assert!(
        out.contains("revoked the token of a pod deleted while another replica led"),
        "{out}"
    );
    stack.assert_no_secrets(&[&token.token, &stack.controller_token, harness::ROOT_TOKEN]);
}

//! End to end through Kubernetes: vault-dev, kube-dev (whose kubelet runs the real approle-init as
//! a process on the pod's own 127.x.y.z address) and the real approle-controller binary.

use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use approle_testkit::harness::{self, ROLE, Stack, StackOptions, delivered};
use approle_testkit::impostor::{Answer, Impostor};
use k8s_openapi::api::core::v1::Pod;
use serde_json::json;

const ACCESSOR: &str = "vault-approle.io/token-accessor";
const DELIVERY: Duration = Duration::from_secs(60);

fn pod_ip(p: &Pod) -> IpAddr {
    p.status
        .as_ref()
        .and_then(|s| s.pod_ip.as_deref())
        .expect("pod IP")
        .parse()
        .expect("IP")
}

/// GET `path` on Vault with `token`, from `source` as local address.
async fn vault_get(
    stack: &Stack,
    path: &str,
    token: &str,
    source: IpAddr,
) -> (u16, serde_json::Value) {
    stack.vault_get(path, token, source).await.expect("request")
}

/// Creates an annotated pod in `default` and waits until it is delivered.
async fn delivered_pod(stack: &Stack, name: &str) -> Pod {
    let pod = stack
        .pod(name, json!({"vault-approle.io/role": ROLE}))
        .expect("pod");
    stack.create(&pod).await.expect("create");
    stack
        .wait_pod(name, "token delivered", DELIVERY, delivered)
        .await
        .expect("delivered")
}

/// Waits until Vault refuses `token` (used from `ip`) as revoked.
async fn wait_revoked(stack: &Stack, what: &str, token: &str, ip: IpAddr) {
    stack
        .wait_token_revoked(what, token, ip, DELIVERY)
        .await
        .expect("revoked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn annotated_pod_gets_a_working_token_bound_to_its_own_address() {
    let _one = harness::exclusive().await;
    let stack = Stack::start(StackOptions::default()).await.expect("stack");
    let pod = delivered_pod(&stack, "web-0").await;
    let ip = pod_ip(&pod);
    let token = stack.pod_token(&pod).expect("token file");
    let accessor = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ACCESSOR))
        .cloned();

    // The token works from the pod's own address...
    let (status, body) = vault_get(&stack, "auth/token/lookup-self", &token, ip).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        Some(
            body["data"]["accessor"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        ),
        accessor
    );
    assert_eq!(body["data"]["meta"]["pod"], "web-0");
    assert_eq!(body["data"]["meta"]["role_name"], ROLE);
    let (status, body) = vault_get(&stack, "secret/data/web/config", &token, ip).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["data"]["greeting"], "hello");
    // ...and from no other.
    let other: IpAddr = "127.0.0.1".parse().expect("ip");
    let (status, _) = vault_get(&stack, "auth/token/lookup-self", &token, other).await;
    assert_eq!(
        status, 403,
        "a token bound to the pod IP must be refused elsewhere"
    );

    // Files: token (no newline) and token.json, mode 0440.
    let dir = stack.volume_dir(&pod);
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("token.json")).expect("token.json"))
            .expect("json");
    assert_eq!(json["client_token"], token.as_str());
    assert_eq!(json["role"], ROLE);
    assert_eq!(
        json["pod_uid"],
        pod.metadata.uid.clone().unwrap_or_default()
    );
    for f in ["token", "token.json"] {
        let mode = std::fs::metadata(dir.join(f))
            .expect("meta")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o440, "{f}");
    }

    // Exactly one secret_id was minted, none is left alive, and the Event says what happened.
    assert_eq!(stack.secret_id_mints(ROLE), 1);
    assert!(stack.live_secret_ids(ROLE).await.expect("list").is_empty());
    let note = stack
        .wait_event("web-0", "SecretIdDelivered", Duration::from_secs(10))
        .await
        .expect("event");
    assert!(note.contains(accessor.as_deref().unwrap_or("?")), "{note}");

    // The init container ended with 0 and the app started.
    let pod = stack
        .wait_pod("web-0", "running", Duration::from_secs(30), |p| {
            p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
        })
        .await
        .expect("running");
    let init = &pod
        .status
        .as_ref()
        .and_then(|s| s.init_container_statuses.clone())
        .expect("statuses")[0];
    let exit = init
        .state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .map(|t| t.exit_code);
    assert_eq!(exit, Some(0));

    stack.assert_no_secrets(&[&token, &stack.controller_token, harness::ROOT_TOKEN]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_annotation_gets_an_event_and_no_vault_call() {
    let _one = harness::exclusive().await;
    let stack = Stack::start(StackOptions::default()).await.expect("stack");
    // Injected for a valid spec, then the user's typo added: what a stale webhook would let
    // through (the webhook leaves injected pods as they are).
    let mut pod = stack
        .injected_pod("typo-0", json!({"vault-approle.io/role": ROLE}))
        .await
        .expect("pod");
    pod.metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert("vault-approle.io/prot".into(), "8643".into());
    stack.create(&pod).await.expect("create");
    let note = stack
        .wait_event("typo-0", "InvalidAnnotation", DELIVERY)
        .await
        .expect("InvalidAnnotation event");
    assert!(
        note.contains("vault-approle.io/prot") && note.contains("vault-approle.io/port"),
        "{note}"
    );
    assert_eq!(
        stack.secret_id_mints(ROLE),
        0,
        "no secret_id may be minted for an invalid pod"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_role_fails_with_an_event_then_delivers_once_the_role_exists() {
    let _one = harness::exclusive().await;
    let stack = Stack::start(StackOptions::default()).await.expect("stack");
    let pod = stack
        .pod("late-0", json!({"vault-approle.io/role": "late"}))
        .expect("pod");
    stack.create(&pod).await.expect("create");
    let note = stack
        .wait_event("late-0", "DeliveryFailed", DELIVERY)
        .await
        .expect("DeliveryFailed event");
    assert!(note.contains("late"), "{note}");
    stack.create_role("late").await.expect("create role");
    stack
        .wait_pod(
            "late-0",
            "delivered after the role appeared",
            DELIVERY,
            delivered,
        )
        .await
        .expect("delivered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_outage_gets_backoff_and_delivery_when_it_returns() {
    let _one = harness::exclusive().await;
    let mut stack = Stack::start(StackOptions::default()).await.expect("stack");
    let (status, _) = stack.vault("PUT", "sys/seal", None).await.expect("seal");
    assert_eq!(status, 204);
    let pod = stack
        .pod("outage-0", json!({"vault-approle.io/role": ROLE}))
        .expect("pod");
    stack.create(&pod).await.expect("create");
    let note = stack
        .wait_event("outage-0", "DeliveryFailed", DELIVERY)
        .await
        .expect("DeliveryFailed while sealed");
    assert!(note.contains("503") || note.contains("sealed"), "{note}");
    let key = stack.unseal_key.clone();
    let (status, body) = stack
        .vault("PUT", "sys/unseal", Some(json!({"key": key})))
        .await
        .expect("unseal");
    assert_eq!(status, 200, "{body}");
    stack
        .wait_pod("outage-0", "delivered after unseal", DELIVERY, delivered)
        .await
        .expect("delivered");
    let controller = stack.controllers.first_mut().expect("controller");
    assert!(
        controller.is_running(),
        "the controller must survive the outage"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_deleted_during_delivery_gets_its_secret_id_destroyed() {
    let _one = harness::exclusive().await;
    let stack = Stack::start(StackOptions {
        // A push that is never answered is given up (and retried) quickly.
        controller_args: vec!["--push-timeout".into(), "2s".into()],
        ..Default::default()
    })
    .await
    .expect("stack");
    // The init container listens on another port than the annotation says. Where the controller
    // pushes, a stand-in shows the pod's own identity token (so a secret_id is minted) and never
    // answers the push: the delivery stays in flight until the pod is deleted. (Not port 8643:
    // every kube-dev's first pod is 127.1.0.1, and other test runs may have an init container there.)
    let pod = stack
        .injected_pod_listening_on(
            "gone-0",
            json!({"vault-approle.io/role": ROLE, "vault-approle.io/port": "9997"}),
            "0.0.0.0:9998",
        )
        .await
        .expect("pod");
    stack.create(&pod).await.expect("create");
    let pod = stack
        .wait_pod("gone-0", "an IP", DELIVERY, |p| {
            p.status.as_ref().and_then(|s| s.pod_ip.as_ref()).is_some()
        })
        .await
        .expect("IP");
    let token = harness::wait_for("the pod's identity token", DELIVERY, || async {
        std::fs::read_to_string(stack.identity_token_path(&pod)).ok()
    })
    .await
    .expect("identity token");
    let _stand_in = Impostor::start(
        SocketAddr::new(pod_ip(&pod), 9997),
        &stack.injector_ca_pem().await.expect("CA"),
        Answer::Token(token),
        true,
    )
    .await
    .expect("stand-in");
    harness::wait_for("a live secret_id for the pod", DELIVERY, || async {
        stack
            .live_secret_ids(ROLE)
            .await
            .ok()
            .filter(|l| !l.is_empty())
    })
    .await
    .expect("minted");
    stack.delete("gone-0").await.expect("delete");
    stack
        .wait_no_live_secret_ids(ROLE, DELIVERY)
        .await
        .expect("destroyed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_port_reports_readiness_and_counts_deliveries_and_failures() {
    let _one = harness::exclusive().await;
    let stack = Stack::start(StackOptions::default()).await.expect("stack");
    let admin = stack.admin_url(0).expect("admin port logged");
    let http = reqwest::Client::new();
    let get = |path: &'static str| {
        let http = http.clone();
        let url = format!("{admin}{path}");
        async move {
            let resp = http.get(url).send().await.ok()?;
            Some((resp.status().as_u16(), resp.text().await.ok()?))
        }
    };
    assert_eq!(get("/healthz").await.map(|r| r.0), Some(200));
    harness::wait_for("/readyz to answer 200", DELIVERY, || async {
        get("/readyz").await.filter(|(s, _)| *s == 200)
    })
    .await
    .expect("ready");

    let good = stack
        .pod("metrics-0", json!({"vault-approle.io/role": ROLE}))
        .expect("pod");
    stack.create(&good).await.expect("create");
    let bad = stack
        .pod("metrics-1", json!({"vault-approle.io/role": "nosuch"}))
        .expect("pod");
    stack.create(&bad).await.expect("create");
    let pod = stack
        .wait_pod("metrics-0", "token delivered", DELIVERY, delivered)
        .await
        .expect("delivered");
    stack
        .wait_event("metrics-1", "DeliveryFailed", DELIVERY)
        .await
        .expect("DeliveryFailed");
    let (status, text) = harness::wait_for("metrics to count both outcomes", DELIVERY, || async {
        get("/metrics").await.filter(|(_, t)| {
            t.contains("approle_deliveries_total{outcome=\"delivered\"} 1")
                && t.contains("approle_deliveries_total{outcome=\"failed\"}")
        })
    })
    .await
    .expect("metrics");
    assert_eq!(status, 200);
    assert!(text.contains("approle_secret_ids_minted_total 1"), "{text}");
    assert!(
        text.contains("approle_delivery_duration_seconds_count 1"),
        "{text}"
    );
    let token = stack.pod_token(&pod).expect("token");
    assert!(!text.contains(&token), "metrics must never carry a token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_pods_revokes_their_tokens() {
    let _one = harness::exclusive().await;
    let stack = Stack::start(StackOptions::default()).await.expect("stack");
    // More pods than the controller revokes at once (8), deleted together.
    let names: Vec<String> = (0..12).map(|i| format!("bye-{i}")).collect();
    stack.create_role_pods(&names).await.expect("create");
    let mut tokens = Vec::new();
    for n in &names {
        let pod = stack
            .wait_pod(n, "token delivered", DELIVERY, delivered)
            .await
            .expect("delivered");
        let ip = pod_ip(&pod);
        let token = stack.pod_token(&pod).expect("token");
        let (status, _) = vault_get(&stack, "auth/token/lookup-self", &token, ip).await;
        assert_eq!(status, 200, "{n}: the token works while the pod lives");
        tokens.push((token, ip));
    }

    // One token is gone before its pod: its holder revoked it (as one that expired, Vault
    // answers 400 "invalid accessor" when the controller looks it up).
    let (gone, gone_ip) = &tokens[0];
    let status = reqwest::Client::builder()
        .local_address(*gone_ip)
        .tls_certs_only(Vec::new())
        .build()
        .expect("client")
        .post(format!("{}/v1/auth/token/revoke-self", stack.vault_url))
        .header("X-Vault-Token", gone)
        .send()
        .await
        .expect("revoke-self")
        .status();
    assert_eq!(status, 204, "the pod's token revokes itself");

    futures::future::try_join_all(names.iter().map(|n| stack.delete(n)))
        .await
        .expect("delete");
    for (token, ip) in &tokens {
        wait_revoked(&stack, "the token to be revoked", token, *ip).await;
    }
    // The gone token is one INFO line, not an error: no ERROR line at all (vaultrs logged two
    // per such pod, the raw Vault answer among them).
    let controller = &stack.controllers[0];
    controller
        .wait_line(&["already_gone=true", "bye-0"], DELIVERY)
        .await
        .expect("already gone");
    let out = controller.output();
    let errors: Vec<&str> = out.lines().filter(|l| l.contains("ERROR")).collect();
    assert!(errors.is_empty(), "{errors:#?}");
    let mut secrets: Vec<&str> = tokens.iter().map(|(t, _)| t.as_str()).collect();
    secrets.extend([stack.controller_token.as_str(), harness::ROOT_TOKEN]);
    stack.assert_no_secrets(&secrets);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_pod_that_loses_its_managed_label_keeps_its_token() {
    let _one = harness::exclusive().await;
    let stack = Stack::start(StackOptions::default()).await.expect("stack");
    let pod = delivered_pod(&stack, "relabel-0").await;
    let ip = pod_ip(&pod);
    let token = stack.pod_token(&pod).expect("token");
    // The controller's watches select on the label: to them the pod is gone, exactly as if
    // deleted (the watch sends a Delete of the pod as it was). It is still running.
    let unlabel = json!({"metadata": {"labels": {"vault-approle.io/managed": null}}});
    stack
        .merge_patch("relabel-0", &unlabel)
        .await
        .expect("remove the label");
    wait_logged(
        &stack,
        "not revoking the token of a pod that left the managed selection",
    )
    .await;
    let (status, body) = vault_get(&stack, "auth/token/lookup-self", &token, ip).await;
    assert_eq!(status, 200, "the running pod's token still works: {body}");
    stack.assert_no_secrets(&[&token, &stack.controller_token, harness::ROOT_TOKEN]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_init_container_gets_a_new_token_and_the_old_one_is_revoked() {
    let _one = harness::exclusive().await;
    let stack = Stack::start(StackOptions::default()).await.expect("stack");
    let first = delivered_pod(&stack, "again-0").await;
    let ip = pod_ip(&first);
    let old = stack.pod_token(&first).expect("token");
    let old_accessor = harness::annotation(&first, ACCESSOR).expect("accessor");
    let (status, _) = vault_get(&stack, "auth/token/lookup-self", &old, ip).await;
    assert_eq!(status, 200, "the first run's token works");

    // A lost sandbox: the kubelet runs the init container again, which asks for a credential.
    stack.restart_sandbox("again-0").await.expect("restart");
    let second = stack
        .wait_pod("again-0", "the second run's token", DELIVERY, |p| {
            delivered(p) && harness::annotation(p, ACCESSOR).is_some_and(|a| a != old_accessor)
        })
        .await
        .expect("redelivered");
    let restarts = second
        .status
        .as_ref()
        .and_then(|s| s.init_container_statuses.as_ref())
        .and_then(|c| c.first())
        .map(|c| c.restart_count);
    assert_eq!(restarts, Some(1), "the init container ran a second time");
    assert_eq!(
        harness::annotation(&second, "vault-approle.io/deliveries").as_deref(),
        Some("2")
    );
    let new = stack.pod_token(&second).expect("token");
    assert_ne!(new, old);
    // The new sandbox has a new address, and the new token is bound to it.
    let new_ip = pod_ip(&second);
    assert_ne!(new_ip, ip);
    let (status, body) = vault_get(&stack, "auth/token/lookup-self", &new, new_ip).await;
    assert_eq!(status, 200, "the second run's token works: {body}");
    assert_eq!(
        body["data"]["accessor"].as_str(),
        harness::annotation(&second, ACCESSOR).as_deref()
    );
    // One live credential per pod: the replaced token is revoked.
    wait_revoked(&stack, "the first run's token to be revoked", &old, ip).await;
    let (status, _) = vault_get(&stack, "auth/token/lookup-self", &new, new_ip).await;
    assert_eq!(status, 200, "the second run's token still works");
    stack.assert_no_secrets(&[&old, &new, &stack.controller_token, harness::ROOT_TOKEN]);
}

/// Waits until some process of the stack has logged `text`.
async fn wait_logged(stack: &Stack, text: &str) {
    harness::wait_for(&format!("{text:?} in a log"), DELIVERY, || async {
        stack.all_output().contains(text).then_some(())
    })
    .await
    .expect("logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_accessor_annotation_gets_no_other_token_revoked_and_keeps_none_of_its_own() {
    let _one = harness::exclusive().await;
    let stack = Stack::start(StackOptions::default()).await.expect("stack");
    // Another workload's token, whose accessor the pod's author knows.
    let (status, created) = stack
        .vault(
            "POST",
            "auth/token/create",
            Some(json!({"policies": ["default"], "ttl": "1h"})),
        )
        .await
        .expect("token");
    assert_eq!(status, 200, "{created}");
    let victim = created["auth"]["client_token"]
        .as_str()
        .expect("token")
        .to_owned();
    let victim_accessor = created["auth"]["accessor"]
        .as_str()
        .expect("accessor")
        .to_owned();
    let victim_alive = || async {
        let (status, _) = stack
            .vault(
                "POST",
                "auth/token/lookup-accessor",
                Some(json!({"accessor": victim_accessor})),
            )
            .await
            .expect("lookup");
        status == 200
    };

    // (The webhook drops a token-accessor annotation a pod is created with.) Edited after the
    // delivery, it is what the next run's delivery replaces: the controller finds that token not
    // delivered to this pod and leaves it alone.
    let first = delivered_pod(&stack, "tamper-0").await;
    let first_token = stack.pod_token(&first).expect("token");
    let edit = json!({"metadata": {"annotations": {ACCESSOR: victim_accessor}}});
    let edit_annotation = || async {
        stack
            .merge_patch("tamper-0", &edit)
            .await
            .expect("edit the annotation");
    };
    edit_annotation().await;
    stack.restart_sandbox("tamper-0").await.expect("restart");
    let second = stack
        .wait_pod("tamper-0", "the second run's token", DELIVERY, |p| {
            delivered(p) && harness::annotation(p, ACCESSOR).is_some_and(|a| a != victim_accessor)
        })
        .await
        .expect("redelivered");
    let own = stack.pod_token(&second).expect("token");
    wait_logged(
        &stack,
        "not revoking the token of the init container's previous run",
    )
    .await;
    assert!(
        victim_alive().await,
        "the other token survives the re-delivery"
    );

    // Edited again, then deleted: the deletion's revocation is refused too.
    edit_annotation().await;
    stack.delete("tamper-0").await.expect("delete");
    wait_logged(&stack, "not revoking the token of a deleted pod").await;
    assert!(
        victim_alive().await,
        "the other token survives the deletion"
    );
    // The edits did not make the controller forget what it recorded: both tokens this pod
    // received end with it.
    // Each is checked from the address it is bound to (the second run had a new sandbox).
    let (first_ip, second_ip) = (pod_ip(&first), pod_ip(&second));
    wait_revoked(
        &stack,
        "the second run's token to be revoked",
        &own,
        second_ip,
    )
    .await;
    wait_revoked(
        &stack,
        "the first run's token to be revoked",
        &first_token,
        first_ip,
    )
    .await;
    assert!(victim_alive().await, "and the other token still lives");
    stack.assert_no_secrets(&[
        &victim,
        &first_token,
        &own,
        &stack.controller_token,
        harness::ROOT_TOKEN,
    ]);
}

/// The init container of `p` is running.
fn init_running(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.init_container_statuses.as_ref())
        .and_then(|c| c.first())
        .and_then(|c| c.state.as_ref())
        .is_some_and(|s| s.running.is_some())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_nothing_answers_for_gives_up_its_delivery_slot_with_an_event() {
    let _one = harness::exclusive().await;
    let stack = Stack::start(StackOptions {
        controller_args: vec![
            "--concurrency=1".into(),
            "--log-level=info,approle_controller=debug".into(),
        ],
        ..Default::default()
    })
    .await
    .expect("stack");
    // The only slot goes to a pod whose init container listens on another port than the
    // annotation says: the controller retries it, holding the slot, for REACH_TIMEOUT (10 s).
    let stuck = stack
        .injected_pod_listening_on(
            "stuck-0",
            json!({"vault-approle.io/role": ROLE, "vault-approle.io/port": "9997"}),
            "0.0.0.0:9998",
        )
        .await
        .expect("pod");
    stack.create(&stuck).await.expect("create");
    let controller = &stack.controllers[0];
    controller
        .wait_line(&["stuck-0", "not answering yet"], DELIVERY)
        .await
        .expect("retrying");

    let names: Vec<String> = (0..4).map(|i| format!("queued-{i}")).collect();
    stack.create_role_pods(&names).await.expect("create");
    for n in &names {
        let pod = stack
            .wait_pod(n, "init container running", DELIVERY, init_running)
            .await
            .expect("running");
        assert!(
            !delivered(&pod),
            "{n} was delivered while the only slot was taken"
        );
    }
    let gauges = || async {
        (
            stack.metric(0, "approle_deliveries_in_flight").await,
            stack.metric(0, "approle_deliveries_waiting").await,
        )
    };
    harness::wait_for(
        "four pods waiting behind one in flight",
        DELIVERY,
        || async { (gauges().await == (Some(1.0), Some(4.0))).then_some(()) },
    )
    .await
    .expect("gauges while queued");
    // The stuck pod gives up, says why, and hands the slot on: the queue moves.
    let note = stack
        .wait_event("stuck-0", "DeliveryFailed", DELIVERY)
        .await
        .expect("DeliveryFailed");
    assert!(
        note.contains("no answer within 10s") && note.contains(":9997"),
        "{note}"
    );
    for n in &names {
        stack
            .wait_pod(n, "token delivered", DELIVERY, delivered)
            .await
            .expect("delivered");
    }
    // Once the stuck pod is gone too (it was retried after its backoff), no slot is held.
    stack.delete("stuck-0").await.expect("delete");
    harness::wait_for("no delivery in flight or waiting", DELIVERY, || async {
        (gauges().await == (Some(0.0), Some(0.0))).then_some(())
    })
    .await
    .expect("gauges at rest");
}

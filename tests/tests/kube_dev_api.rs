//! kube-dev against the unmodified kube-rs client: CRUD, selectors, patches, optimistic
//! concurrency, watches (raw and `kube::runtime::watcher`), the events Recorder, and the
//! Status errors of the real API server.

use std::time::Duration;

use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Event as CoreEvent, Namespace, Pod};
use k8s_openapi::api::events::v1::Event;
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::core::PartialObjectMeta;
use kube::runtime::events::{Event as RecorderEvent, EventType, Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Resource as _, ResourceExt as _};
use serde_json::json;

use approle_testkit::kube_dev::{Config, KubeDev, Running};

const DEADLINE: Duration = Duration::from_secs(20);

async fn start() -> (Running, kube::Client) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let running = KubeDev::start(Config::default())
        .await
        .expect("kube-dev starts");
    let client = running.client().await.expect("client from kubeconfig");
    (running, client)
}

fn pod(name: &str, labels: serde_json::Value) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {"containers": [{"name": "app", "image": "nginx:1.27"}]}
    }))
    .expect("valid pod")
}

/// Waits (watching, with [`DEADLINE`]) until the object `name` with `uid` is gone.
async fn wait_deleted<K>(api: &Api<K>, name: &str, uid: &str, what: &str)
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
{
    let gone = kube::runtime::wait::await_condition(
        api.clone(),
        name,
        kube::runtime::wait::conditions::is_deleted(uid),
    );
    tokio::time::timeout(DEADLINE, gone)
        .await
        .expect(what)
        .expect("watch");
}

fn api_error(e: kube::Error) -> kube::core::Status {
    match e {
        kube::Error::Api(s) => *s,
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test]
async fn pods_support_create_get_list_patch_and_status_errors() {
    let (_kd, client) = start().await;
    let pods: Api<Pod> = Api::default_namespaced(client.clone());

    let mut generated = pod("", json!({"app": "web", "tier": "front"}));
    generated.metadata.name = None;
    generated.metadata.generate_name = Some("web-".into());
    let created = pods
        .create(&PostParams::default(), &generated)
        .await
        .expect("create");
    let name = created.name_any();
    assert!(name.starts_with("web-") && name.len() == 9, "{name}");
    assert_eq!(created.namespace().as_deref(), Some("default"));
    assert!(created.uid().is_some());
    assert!(created.metadata.creation_timestamp.is_some());
    let rv1: u64 = created
        .resource_version()
        .expect("rv")
        .parse()
        .expect("numeric rv");
    assert_eq!(
        created.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Pending")
    );

    pods.create(&PostParams::default(), &pod("db-0", json!({"app": "db"})))
        .await
        .expect("create db-0");
    let dup = api_error(
        pods.create(&PostParams::default(), &pod("db-0", json!({})))
            .await
            .expect_err("duplicate"),
    );
    assert_eq!(dup.code, 409);
    assert_eq!(dup.reason, "AlreadyExists");
    assert_eq!(dup.message, "pods \"db-0\" already exists");

    let missing = api_error(pods.get("web-0").await.expect_err("missing"));
    assert_eq!(missing.code, 404);
    assert_eq!(missing.reason, "NotFound");
    assert_eq!(missing.message, "pods \"web-0\" not found");

    let got = pods.get(&name).await.expect("get");
    assert_eq!(got.uid(), created.uid());

    let names = |l: Vec<Pod>| {
        let mut n: Vec<String> = l.iter().map(|p| p.name_any()).collect();
        n.sort();
        n
    };
    let by_label = pods
        .list(&ListParams::default().labels("app=web,tier!=back,app in (web,x),!missing,tier"))
        .await
        .expect("list");
    assert_eq!(names(by_label.items), vec![name.clone()]);
    let by_field = pods
        .list(&ListParams::default().fields("metadata.name=db-0"))
        .await
        .expect("list by field");
    assert_eq!(names(by_field.items), vec!["db-0".to_string()]);
    // On the wire, as the API server lists: the list's kind and version, its resourceVersion,
    // and items without their own `apiVersion` and `kind`.
    let raw: serde_json::Value = client
        .request(
            http::Request::get("/api/v1/namespaces/default/pods?labelSelector=app%3Dweb")
                .body(Vec::new())
                .expect("request"),
        )
        .await
        .expect("raw list");
    assert_eq!(raw["kind"], "PodList", "{raw}");
    assert_eq!(raw["apiVersion"], "v1", "{raw}");
    assert!(raw["metadata"]["resourceVersion"].is_string(), "{raw}");
    let items = raw["items"].as_array().expect("items");
    assert_eq!(items.len(), 1, "{raw}");
    assert_eq!(items[0]["metadata"]["name"], name.as_str(), "{raw}");
    assert!(items[0]["spec"]["containers"].is_array(), "{raw}");
    assert!(
        items[0].get("apiVersion").is_none() && items[0].get("kind").is_none(),
        "{raw}"
    );
    let bad = api_error(
        pods.list(&ListParams::default().fields("metadata.labels=x"))
            .await
            .expect_err("unsupported field"),
    );
    assert_eq!(bad.code, 400);
    assert_eq!(bad.message, "field label not supported: metadata.labels");
    let all = pods.list(&ListParams::default()).await.expect("list all");
    let list_rv: u64 = all
        .metadata
        .resource_version
        .expect("list rv")
        .parse()
        .expect("n");
    assert!(list_rv > rv1);

    let merged = pods
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"a": "1"}}})),
        )
        .await
        .expect("merge patch");
    assert_eq!(merged.annotations().get("a").map(String::as_str), Some("1"));
    let strategic = pods
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Strategic(
                json!({"spec": {"containers": [{"name": "app", "image": "nginx:1.28"}]}}),
            ),
        )
        .await
        .expect("strategic patch");
    let containers = &strategic.spec.as_ref().expect("spec").containers;
    assert_eq!(containers.len(), 1);
    assert_eq!(containers[0].image.as_deref(), Some("nginx:1.28"));
    let json_patched = pods
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Json::<()>(
                serde_json::from_value(
                    json!([{"op": "add", "path": "/metadata/labels/extra", "value": "yes"}]),
                )
                .expect("patch"),
            ),
        )
        .await
        .expect("json patch");
    assert_eq!(
        json_patched.labels().get("extra").map(String::as_str),
        Some("yes")
    );

    // Pod spec fields other than images are immutable.
    let forbidden = api_error(
        pods.patch(
            &name,
            &PatchParams::default(),
            &Patch::Strategic(json!({"spec": {"containers": [{"name": "app", "args": ["x"]}]}})),
        )
        .await
        .expect_err("spec change"),
    );
    assert_eq!(forbidden.code, 422);
    assert_eq!(forbidden.reason, "Invalid");

    let invalid = api_error(
        pods.create(
            &PostParams::default(),
            &serde_json::from_value(
                json!({"metadata": {"name": "empty"}, "spec": {"containers": []}}),
            )
            .expect("pod"),
        )
        .await
        .expect_err("no containers"),
    );
    assert_eq!(invalid.code, 422);
    assert_eq!(
        invalid.message,
        "Pod \"empty\" is invalid: spec.containers: Required value"
    );
}

#[tokio::test]
async fn stale_updates_conflict_for_pods_and_leases() {
    let (_kd, client) = start().await;
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    // Bound to another node so that the kubelet does not update it concurrently.
    let mut parked = pod("web-0", json!({}));
    parked.spec.as_mut().expect("spec").node_name = Some("elsewhere".into());
    let p = pods
        .create(&PostParams::default(), &parked)
        .await
        .expect("create");
    let mut fresh = p.clone();
    fresh.labels_mut().insert("a".into(), "1".into());
    pods.replace("web-0", &PostParams::default(), &fresh)
        .await
        .expect("first update");
    let mut stale = p.clone();
    stale.labels_mut().insert("a".into(), "2".into());
    let conflict = api_error(
        pods.replace("web-0", &PostParams::default(), &stale)
            .await
            .expect_err("stale"),
    );
    assert_eq!(conflict.code, 409);
    assert_eq!(conflict.reason, "Conflict");
    assert_eq!(
        conflict.message,
        "Operation cannot be fulfilled on pods \"web-0\": the object has been modified; please apply your changes to the latest version and try again"
    );

    let leases: Api<Lease> = Api::namespaced(client, "kube-system");
    let lease: Lease = serde_json::from_value(json!({
        "metadata": {"name": "approle-controller"},
        "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15}
    }))
    .expect("lease");
    let l1 = leases
        .create(&PostParams::default(), &lease)
        .await
        .expect("create lease");
    let mut by_b = l1.clone();
    by_b.spec.as_mut().expect("spec").holder_identity = Some("b".into());
    leases
        .replace("approle-controller", &PostParams::default(), &by_b)
        .await
        .expect("b takes over");
    let mut by_c = l1.clone();
    by_c.spec.as_mut().expect("spec").holder_identity = Some("c".into());
    let lost = api_error(
        leases
            .replace("approle-controller", &PostParams::default(), &by_c)
            .await
            .expect_err("c lost the race"),
    );
    assert_eq!(lost.code, 409);
    assert!(
        lost.message
            .contains("leases.coordination.k8s.io \"approle-controller\"")
    );
    let now = leases.get("approle-controller").await.expect("get lease");
    assert_eq!(
        now.spec.and_then(|s| s.holder_identity).as_deref(),
        Some("b")
    );
}

#[tokio::test]
async fn leases_behave_like_the_api_server_for_leader_election() {
    let (_kd, client) = start().await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-system");
    let lease: Lease = serde_json::from_value(json!({
        "metadata": {"name": "elect"},
        "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15, "leaseTransitions": 0,
                 "acquireTime": "2026-01-01T00:00:00.000000Z",
                 "renewTime": "2026-01-01T00:00:01.123456Z"}
    }))
    .expect("lease");
    leases
        .create(&PostParams::default(), &lease)
        .await
        .expect("create lease");
    // Two candidates creating at once: the second gets 409 AlreadyExists (not Conflict).
    let exists = api_error(
        leases
            .create(&PostParams::default(), &lease)
            .await
            .expect_err("exists"),
    );
    assert_eq!(
        (exists.code, exists.reason.as_str()),
        (409, "AlreadyExists")
    );
    assert_eq!(
        exists.message,
        "leases.coordination.k8s.io \"elect\" already exists"
    );
    // MicroTime comes back as written: RFC 3339, six fractional digits, Z.
    let raw: serde_json::Value = client
        .request(
            http::Request::get("/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/elect")
                .body(Vec::new())
                .expect("request"),
        )
        .await
        .expect("raw get");
    assert_eq!(raw["spec"]["renewTime"], "2026-01-01T00:00:01.123456Z");
    assert_eq!(raw["spec"]["acquireTime"], "2026-01-01T00:00:00.000000Z");
    // A release (holder cleared) keeps the object; the next candidate replaces it.
    let mut released = leases.get("elect").await.expect("get");
    let spec = released.spec.as_mut().expect("spec");
    spec.holder_identity = None;
    spec.lease_duration_seconds = Some(1);
    let released = leases
        .replace("elect", &PostParams::default(), &released)
        .await
        .expect("release");
    assert_eq!(released.spec.and_then(|s| s.holder_identity), None);
}

#[tokio::test]
async fn raw_watch_reports_added_modified_deleted_in_order() {
    let (_kd, client) = start().await;
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let list = pods.list(&ListParams::default()).await.expect("list");
    let rv = list.metadata.resource_version.expect("rv");
    let stream = pods
        .watch(
            &WatchParams::default().labels("app=watched").timeout(30),
            &rv,
        )
        .await
        .expect("watch");
    let mut stream = stream.boxed();

    pods.create(
        &PostParams::default(),
        &pod("w-0", json!({"app": "watched"})),
    )
    .await
    .expect("create");
    pods.create(
        &PostParams::default(),
        &pod("other", json!({"app": "other"})),
    )
    .await
    .expect("create other");

    // The kubelet's updates come before the delete: wait for one, so the order is not a race.
    let mut seen = Vec::new();
    let mut next = async || -> String {
        loop {
            let ev = tokio::time::timeout(DEADLINE, stream.try_next())
                .await
                .expect("watch event in time")
                .expect("watch stream")
                .expect("watch open");
            match ev {
                WatchEvent::Added(p) => return format!("ADDED {}", p.name_any()),
                WatchEvent::Modified(p) => return format!("MODIFIED {}", p.name_any()),
                WatchEvent::Deleted(p) => return format!("DELETED {}", p.name_any()),
                WatchEvent::Bookmark(_) => {}
                WatchEvent::Error(e) => panic!("watch error {e:?}"),
            }
        }
    };
    while !seen.iter().any(|s: &String| s.starts_with("MODIFIED")) {
        seen.push(next().await);
    }
    pods.delete("w-0", &DeleteParams::default().grace_period(0))
        .await
        .expect("delete");
    while !seen.iter().any(|s| s.starts_with("DELETED")) {
        seen.push(next().await);
    }
    seen.dedup();
    assert_eq!(seen.first().map(String::as_str), Some("ADDED w-0"));
    assert_eq!(seen.last().map(String::as_str), Some("DELETED w-0"));
    assert!(seen.iter().all(|s| s.ends_with("w-0")), "{seen:?}");
}

/// Reads a `kube::runtime::watcher` stream up to the end of its initial list.
async fn init_done<K>(
    events: &mut (impl futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Unpin),
) {
    tokio::time::timeout(DEADLINE, async {
        while let Some(ev) = events.try_next().await.expect("watcher") {
            if matches!(ev, watcher::Event::InitDone) {
                break;
            }
        }
    })
    .await
    .expect("init done");
}

#[tokio::test]
async fn runtime_watcher_sees_apply_and_delete() {
    let (_kd, client) = start().await;
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let mut events = watcher(pods.clone(), watcher::Config::default()).boxed();
    // The initial list completes before anything is created.
    init_done(&mut events).await;
    pods.create(&PostParams::default(), &pod("seen-0", json!({})))
        .await
        .expect("create");
    let mut applied = false;
    let mut deleted = false;
    let mut deleted_once = false;
    tokio::time::timeout(DEADLINE, async {
        while let Some(ev) = events.try_next().await.expect("watcher") {
            match ev {
                watcher::Event::Apply(p) if p.name_any() == "seen-0" => {
                    let running =
                        p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
                    if !applied || running {
                        applied = true;
                    }
                    if running && !deleted_once {
                        deleted_once = true;
                        pods.delete("seen-0", &DeleteParams::default())
                            .await
                            .expect("delete");
                    }
                }
                watcher::Event::Delete(p) if p.name_any() == "seen-0" => {
                    deleted = true;
                    break;
                }
                _ => {}
            }
        }
    })
    .await
    .expect("watcher sees the pod come and go");
    assert!(applied && deleted);
}

#[tokio::test]
async fn metadata_clients_get_list_and_watch_partial_object_metadata() {
    let (_kd, client) = start().await;
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let metas: Api<PartialObjectMeta<Pod>> = Api::default_namespaced(client.clone());
    let mut events = watcher(metas.clone(), watcher::Config::default().labels("app=meta")).boxed();
    init_done(&mut events).await;
    let mut p = pod("meta-0", json!({"app": "meta"}));
    p.annotations_mut().insert("note".into(), "kept".into());
    pods.create(&PostParams::default(), &p)
        .await
        .expect("create");

    // GET and LIST answer metadata only, in the meta.k8s.io/v1 kinds.
    let got = metas.get("meta-0").await.expect("get metadata");
    assert_eq!(
        got.annotations().get("note").map(String::as_str),
        Some("kept")
    );
    let types = got.types.clone().expect("kind and apiVersion");
    assert_eq!(
        (types.kind.as_str(), types.api_version.as_str()),
        ("PartialObjectMetadata", "meta.k8s.io/v1")
    );
    let raw: serde_json::Value = client
        .request(
            http::Request::get("/api/v1/namespaces/default/pods/meta-0")
                .header(
                    "accept",
                    "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1",
                )
                .body(Vec::new())
                .expect("request"),
        )
        .await
        .expect("raw get");
    assert!(
        raw.get("spec").is_none() && raw.get("status").is_none(),
        "{raw}"
    );
    let listed = metas
        .list_metadata(&ListParams::default().labels("app=meta"))
        .await
        .expect("list metadata");
    assert_eq!(listed.items.len(), 1);
    assert_eq!(listed.items[0].name_any(), "meta-0");

    // The watch sees the pod's metadata come and go.
    pods.delete("meta-0", &DeleteParams::default())
        .await
        .expect("delete");
    let mut seen = Vec::new();
    tokio::time::timeout(DEADLINE, async {
        while let Some(ev) = events.try_next().await.expect("watcher") {
            match ev {
                watcher::Event::Apply(m) => seen.push(format!("apply {}", m.name_any())),
                watcher::Event::Delete(m) => {
                    assert_eq!(
                        m.annotations().get("note").map(String::as_str),
                        Some("kept")
                    );
                    seen.push(format!("delete {}", m.name_any()));
                    break;
                }
                _ => {}
            }
        }
    })
    .await
    .expect("the watch sees the deletion");
    assert_eq!(seen.first().map(String::as_str), Some("apply meta-0"));
    assert_eq!(seen.last().map(String::as_str), Some("delete meta-0"));
}

#[tokio::test]
async fn recorder_publishes_events_visible_in_both_event_apis() {
    let (_kd, client) = start().await;
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let p = pods
        .create(&PostParams::default(), &pod("web-0", json!({})))
        .await
        .expect("create");
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "approle-controller".into(),
            instance: Some("approle-controller-0".into()),
        },
    );
    let reference = p.object_ref(&());
    let ev = RecorderEvent {
        type_: EventType::Normal,
        reason: "SecretIdDelivered".into(),
        note: Some("delivered to web-0".into()),
        action: "Deliver".into(),
        secondary: None,
    };
    recorder
        .publish(&ev, &reference)
        .await
        .expect("first publish");
    // The same event again is a series: the Recorder PATCHes the existing Event.
    recorder
        .publish(&ev, &reference)
        .await
        .expect("second publish");

    let new_api: Api<Event> = Api::default_namespaced(client.clone());
    let list = new_api
        .list(&ListParams::default().fields("regarding.name=web-0"))
        .await
        .expect("events.k8s.io list");
    assert_eq!(list.items.len(), 1);
    let e = &list.items[0];
    assert_eq!(e.reason.as_deref(), Some("SecretIdDelivered"));
    assert_eq!(
        e.reporting_controller.as_deref(),
        Some("approle-controller")
    );
    assert_eq!(e.series.as_ref().map(|s| s.count), Some(2));

    let core: Api<CoreEvent> = Api::default_namespaced(client.clone());
    let core_list = core
        .list(&ListParams::default().fields(&format!(
            "involvedObject.name=web-0,involvedObject.namespace=default,involvedObject.uid={}",
            p.uid().expect("uid")
        )))
        .await
        .expect("core events list");
    assert_eq!(core_list.items.len(), 1);
    assert_eq!(
        core_list.items[0].message.as_deref(),
        Some("delivered to web-0")
    );
    assert_eq!(
        core_list.items[0].involved_object.name.as_deref(),
        Some("web-0")
    );
}

#[tokio::test]
async fn namespaces_gate_creation_and_graceful_delete_removes_the_pod() {
    let (_kd, client) = start().await;
    let in_missing: Api<Pod> = Api::namespaced(client.clone(), "nope");
    let e = api_error(
        in_missing
            .create(&PostParams::default(), &pod("p", json!({})))
            .await
            .expect_err("namespace missing"),
    );
    assert_eq!(e.code, 404);
    assert_eq!(e.message, "namespaces \"nope\" not found");

    let nss: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace =
        serde_json::from_value(json!({"metadata": {"name": "team-a"}})).expect("ns");
    let created = nss
        .create(&PostParams::default(), &ns)
        .await
        .expect("create ns");
    assert_eq!(
        created
            .labels()
            .get("kubernetes.io/metadata.name")
            .map(String::as_str),
        Some("team-a")
    );
    let pods: Api<Pod> = Api::namespaced(client.clone(), "team-a");
    pods.create(&PostParams::default(), &pod("p", json!({})))
        .await
        .expect("create in team-a");
    let running = kube::runtime::wait::await_condition(pods.clone(), "p", |p: Option<&Pod>| {
        p.and_then(|p| p.status.as_ref())
            .and_then(|s| s.phase.as_deref())
            == Some("Running")
    });
    tokio::time::timeout(DEADLINE, running)
        .await
        .expect("running in time")
        .expect("watch");
    let resp = pods
        .delete("p", &DeleteParams::default())
        .await
        .expect("delete");
    let terminating = resp.left().expect("graceful delete returns the pod");
    assert!(terminating.metadata.deletion_timestamp.is_some());
    let uid = terminating.uid().expect("uid");
    wait_deleted(&pods, "p", &uid, "deleted in time").await;
}

#[tokio::test]
async fn status_subresource_changes_only_status() {
    let (_kd, client) = start().await;
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let mut parked = pod("st-0", json!({"a": "1"}));
    parked.spec.as_mut().expect("spec").node_name = Some("elsewhere".into());
    pods.create(&PostParams::default(), &parked)
        .await
        .expect("create");
    let patched = pods
        .patch_status(
            "st-0",
            &PatchParams::default(),
            &Patch::Merge(json!({
                "metadata": {"labels": {"a": "2"}},
                "status": {"phase": "Running", "podIP": "127.9.9.9"}
            })),
        )
        .await
        .expect("patch status");
    assert_eq!(phase_of(&patched), Some("Running"));
    assert_eq!(
        patched.labels().get("a").map(String::as_str),
        Some("1"),
        "metadata is not changed through status"
    );
    let got = pods.get_status("st-0").await.expect("get status");
    assert_eq!(
        got.status.and_then(|s| s.pod_ip).as_deref(),
        Some("127.9.9.9")
    );
    // The main resource ignores status changes.
    let main = pods
        .patch(
            "st-0",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Failed"}})),
        )
        .await
        .expect("patch main");
    assert_eq!(phase_of(&main), Some("Running"));
    let by_ip = pods
        .list(&ListParams::default().fields("status.podIP=127.9.9.9,status.phase=Running"))
        .await
        .expect("list");
    assert_eq!(by_ip.items.len(), 1);
}

fn phase_of(p: &Pod) -> Option<&str> {
    p.status.as_ref().and_then(|s| s.phase.as_deref())
}

#[tokio::test]
async fn events_are_validated_and_server_side_apply_creates() {
    let (_kd, client) = start().await;
    let events: Api<Event> = Api::default_namespaced(client.clone());
    let bad: Event = serde_json::from_value(json!({
        "metadata": {"name": "e1"}, "reason": "R", "action": "A", "type": "Normal",
        "reportingController": "c", "reportingInstance": "i"
    }))
    .expect("event");
    let e = api_error(
        events
            .create(&PostParams::default(), &bad)
            .await
            .expect_err("eventTime missing"),
    );
    assert_eq!(e.code, 422);
    assert_eq!(
        e.message,
        "Event \"e1\" is invalid: eventTime: Required value"
    );

    let cms: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::default_namespaced(client.clone());
    let applied = cms
        .patch(
            "settings",
            &PatchParams::apply("approle-controller"),
            &Patch::Apply(json!({"apiVersion": "v1", "kind": "ConfigMap",
                                 "metadata": {"name": "settings"}, "data": {"a": "1"}})),
        )
        .await
        .expect("apply creates");
    assert_eq!(
        applied.data.and_then(|d| d.get("a").cloned()).as_deref(),
        Some("1")
    );
    let removed = cms
        .delete_collection(&DeleteParams::default(), &ListParams::default())
        .await
        .expect("delete collection");
    assert!(removed.left().is_some_and(|l| l.items.len() == 1));
}

#[tokio::test]
async fn deleting_a_namespace_removes_its_pods_then_itself() {
    let (_kd, client) = start().await;
    let nss: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace =
        serde_json::from_value(json!({"metadata": {"name": "team-b"}})).expect("ns");
    nss.create(&PostParams::default(), &ns)
        .await
        .expect("create ns");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "team-b");
    let p = pods
        .create(&PostParams::default(), &pod("p", json!({})))
        .await
        .expect("create pod");
    // A finalizer holds this pod, and so the namespace, in Terminating until the test lets go:
    // without it the namespace may be gone before the next request, as on a real cluster.
    let mut held = pod("held", json!({}));
    held.metadata.finalizers = Some(vec!["example.com/hold".into()]);
    let held = pods
        .create(&PostParams::default(), &held)
        .await
        .expect("create held pod");
    // Any object's finalizer holds the namespace, not only a pod's.
    let cms: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(client.clone(), "team-b");
    let cm = serde_json::from_value(json!({
        "metadata": {"name": "held-cm", "finalizers": ["example.com/hold"]}
    }))
    .expect("configmap");
    cms.create(&PostParams::default(), &cm)
        .await
        .expect("create held configmap");
    let terminating = nss
        .delete("team-b", &DeleteParams::default())
        .await
        .expect("delete ns")
        .left()
        .expect("namespace object");
    assert_eq!(
        terminating.status.and_then(|s| s.phase).as_deref(),
        Some("Terminating")
    );
    let still_terminating = async || {
        let ns = nss.get("team-b").await.expect("namespace stays");
        assert_eq!(
            ns.status.and_then(|s| s.phase).as_deref(),
            Some("Terminating")
        );
    };
    let e = api_error(
        pods.create(&PostParams::default(), &pod("late", json!({})))
            .await
            .expect_err("terminating namespace"),
    );
    assert_eq!(e.code, 403);
    assert_eq!(e.reason, "Forbidden");
    let pod_uid = p.uid().expect("uid");
    wait_deleted(&pods, "p", &pod_uid, "pod deleted").await;
    let still = pods.get("held").await.expect("held pod stays");
    assert!(still.metadata.deletion_timestamp.is_some());
    still_terminating().await;
    pods.patch(
        "held",
        &PatchParams::default(),
        &Patch::Json::<()>(
            serde_json::from_value(json!([{"op": "remove", "path": "/metadata/finalizers"}]))
                .expect("json patch"),
        ),
    )
    .await
    .expect("remove finalizer");
    let held_uid = held.uid().expect("uid");
    wait_deleted(&pods, "held", &held_uid, "held pod deleted").await;
    let cm_now = cms.get("held-cm").await.expect("held configmap stays");
    assert!(cm_now.metadata.deletion_timestamp.is_some());
    still_terminating().await;
    cms.patch(
        "held-cm",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .expect("remove configmap finalizer");
    let ns_uid = terminating.metadata.uid.expect("uid");
    wait_deleted(&nss, "team-b", &ns_uid, "namespace deleted").await;
}

#[tokio::test]
async fn server_side_apply_conflicts_on_fields_owned_by_another_manager() {
    let (_kd, client) = start().await;
    let leases: Api<Lease> = Api::namespaced(client, "kube-system");
    let empty: Lease =
        serde_json::from_value(json!({"metadata": {"name": "leader"}, "spec": {}})).expect("lease");
    leases
        .create(&PostParams::default(), &empty)
        .await
        .expect("create");
    let claim = |holder: &str| {
        json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
               "metadata": {"name": "leader"},
               "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15}})
    };
    let a = leases
        .patch(
            "leader",
            &PatchParams::apply("candidate-a"),
            &Patch::Apply(claim("a")),
        )
        .await
        .expect("a claims the free lease");
    assert_eq!(a.spec.and_then(|s| s.holder_identity).as_deref(), Some("a"));
    let lost = api_error(
        leases
            .patch(
                "leader",
                &PatchParams::apply("candidate-b"),
                &Patch::Apply(claim("b")),
            )
            .await
            .expect_err("b conflicts with a"),
    );
    assert_eq!(lost.code, 409);
    assert_eq!(lost.reason, "Conflict");
    assert_eq!(
        lost.message,
        "Apply failed with 1 conflict: conflict with \"candidate-a\": .spec.holderIdentity"
    );
    // A renews with a strategic patch (an Update); forcing takes the lease over.
    leases
        .patch(
            "leader",
            &PatchParams::default(),
            &Patch::Strategic(json!({"spec": {"leaseDurationSeconds": 20}})),
        )
        .await
        .expect("renew");
    let b = leases
        .patch(
            "leader",
            &PatchParams::apply("candidate-b").force(),
            &Patch::Apply(claim("b")),
        )
        .await
        .expect("forced");
    assert_eq!(
        b.spec.as_ref().and_then(|s| s.holder_identity.as_deref()),
        Some("b")
    );
    let managers: Vec<String> = b
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .filter_map(|m| m.manager)
        .collect();
    assert!(
        managers.contains(&"candidate-b".to_string()),
        "{managers:?}"
    );
}

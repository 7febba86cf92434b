//! Watch semantics: the history window and the in-stream 410 `too old resource version`,
//! kube's watcher re-listing after it without missing a pod, streaming lists
//! (`sendInitialEvents` + the initial-events-end BOOKMARK), and periodic bookmarks.

use std::collections::BTreeSet;
use std::time::Duration;

use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::ResourceExt as _;
use kube::api::{Api, ListParams, PostParams, WatchEvent, WatchParams};
use kube::runtime::{WatchStreamExt as _, watcher};
use serde_json::json;

use approle_testkit::kube_dev::{Config, KubeDev, Running};

const DEADLINE: Duration = Duration::from_secs(30);

async fn start(cfg: Config) -> (Running, kube::Client) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let kd = KubeDev::start(cfg).await.expect("kube-dev starts");
    let client = kd.client().await.expect("client");
    (kd, client)
}

/// A pod bound to another node: the kubelet leaves it alone, so it changes only when we say.
fn parked_pod(name: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": "watched"}},
        "spec": {"nodeName": "elsewhere", "containers": [{"name": "app", "image": "nginx"}]}
    }))
    .expect("pod")
}

/// The collection's resourceVersion now: a watch from it sees only what comes next.
async fn current_rv(pods: &Api<Pod>) -> String {
    pods.list(&ListParams::default())
        .await
        .expect("list")
        .metadata
        .resource_version
        .expect("rv")
}

async fn churn(client: &kube::Client, prefix: &str, n: usize) {
    let cms: Api<ConfigMap> = Api::default_namespaced(client.clone());
    for i in 0..n {
        let cm: ConfigMap = serde_json::from_value(json!({
            "metadata": {"name": format!("{prefix}-{i}")}, "data": {"i": i.to_string()}
        }))
        .expect("cm");
        cms.create(&PostParams::default(), &cm)
            .await
            .expect("create cm");
    }
}

#[tokio::test]
async fn resuming_from_a_version_older_than_the_window_gets_410_in_stream() {
    let (_kd, client) = start(Config {
        watch_history: 5,
        ..Config::default()
    })
    .await;
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let first = pods
        .create(&PostParams::default(), &parked_pod("old-0"))
        .await
        .expect("create");
    let old_rv = first.resource_version().expect("rv");
    churn(&client, "c", 10).await;
    let mut stream = pods
        .watch(&WatchParams::default(), &old_rv)
        .await
        .expect("the watch itself starts (HTTP 200)")
        .boxed();
    let ev = tokio::time::timeout(DEADLINE, stream.try_next())
        .await
        .expect("first event in time")
        .expect("stream")
        .expect("an event");
    let WatchEvent::Error(status) = ev else {
        panic!("expected an ERROR event, got {ev:?}");
    };
    assert_eq!(status.code, 410);
    assert_eq!(status.reason, "Expired");
    assert!(
        status
            .message
            .starts_with(&format!("too old resource version: {old_rv} (")),
        "{}",
        status.message
    );

    // A version inside the window replays what happened after it.
    let rv = current_rv(&pods).await;
    pods.create(&PostParams::default(), &parked_pod("new-0"))
        .await
        .expect("create");
    let mut stream = pods
        .watch(&WatchParams::default(), &rv)
        .await
        .expect("watch")
        .boxed();
    let ev = tokio::time::timeout(DEADLINE, stream.try_next())
        .await
        .expect("in time")
        .expect("stream")
        .expect("event");
    assert!(matches!(ev, WatchEvent::Added(p) if p.name_any() == "new-0"));
}

#[tokio::test]
async fn kube_watcher_relists_after_410_and_misses_no_pod() {
    let (_kd, client) = start(Config {
        watch_history: 5,
        // No bookmarks: the watcher's resume version stays behind while unrelated objects churn.
        bookmark_interval: Duration::from_secs(3600),
        ..Config::default()
    })
    .await;
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    // Each watch request ends after a second, so the watcher resumes from its last version.
    let cfg = watcher::Config::default().labels("app=watched").timeout(1);
    let mut stream = watcher(pods.clone(), cfg).default_backoff().boxed();
    let mut t = Tracker::default();
    // The watcher is lazy: its first list happens when polled past `Init`.
    while t.init_done == 0 {
        t.step(&mut stream).await;
    }
    let mut created: BTreeSet<String> = BTreeSet::new();
    for round in 0..2 {
        let name = format!("p-{round}");
        pods.create(&PostParams::default(), &parked_pod(&name))
            .await
            .expect("create");
        created.insert(name);
        churn(&client, &format!("r{round}"), 10).await;
        // Resuming after the churn gets 410; the watcher re-lists and finds the pod again.
        let want = round + 2;
        while t.init_done < want || !created.is_subset(&t.seen) {
            t.step(&mut stream).await;
        }
    }
    let Tracker { expired, seen, .. } = t;
    assert!(
        expired >= 2,
        "each resume after churn hit 410 (saw {expired})"
    );
    assert_eq!(seen, created);
}

#[derive(Default)]
struct Tracker {
    inits: usize,
    init_done: usize,
    expired: usize,
    seen: BTreeSet<String>,
    log: Vec<String>,
}

impl Tracker {
    async fn step(
        &mut self,
        stream: &mut futures::stream::BoxStream<'_, Result<watcher::Event<Pod>, watcher::Error>>,
    ) {
        let item = tokio::time::timeout(DEADLINE, stream.next())
            .await
            .unwrap_or_else(|_| panic!("no watcher event in time; so far: {:?}", self.log));
        match item {
            Some(Ok(watcher::Event::Init)) => {
                self.inits += 1;
                self.log.push("Init".into());
            }
            Some(Ok(watcher::Event::InitApply(p) | watcher::Event::Apply(p))) => {
                self.log.push(format!("Apply {}", p.name_any()));
                self.seen.insert(p.name_any());
            }
            Some(Ok(watcher::Event::InitDone)) => {
                self.init_done += 1;
                self.log.push("InitDone".into());
            }
            Some(Ok(_)) => {}
            Some(Err(watcher::Error::WatchError(s))) if s.code == 410 => {
                self.log.push("410".into());
                self.expired += 1;
            }
            Some(Err(e)) => panic!("watcher error {e:?}"),
            None => panic!("watcher ended"),
        }
    }
}

#[tokio::test]
async fn streaming_list_watchers_get_initial_events_and_the_end_bookmark() {
    let (_kd, client) = start(Config::default()).await;
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    pods.create(&PostParams::default(), &parked_pod("a-0"))
        .await
        .expect("create");
    pods.create(&PostParams::default(), &parked_pod("b-0"))
        .await
        .expect("create");
    let mut stream = watcher(pods.clone(), watcher::Config::default().streaming_lists()).boxed();
    let mut initial = BTreeSet::new();
    tokio::time::timeout(DEADLINE, async {
        while let Some(ev) = stream.try_next().await.expect("watcher") {
            match ev {
                watcher::Event::InitApply(p) => {
                    initial.insert(p.name_any());
                }
                watcher::Event::InitDone => break,
                _ => {}
            }
        }
    })
    .await
    .expect("initial events end with a bookmark");
    assert_eq!(
        initial,
        BTreeSet::from(["a-0".to_string(), "b-0".to_string()])
    );
}

#[tokio::test]
async fn bookmarks_carry_the_current_resource_version() {
    let (_kd, client) = start(Config {
        bookmark_interval: Duration::from_millis(200),
        ..Config::default()
    })
    .await;
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let rv = current_rv(&pods).await;
    churn(&client, "b", 3).await;
    let mut stream = pods
        .watch(&WatchParams::default(), &rv)
        .await
        .expect("watch")
        .boxed();
    let bookmark = tokio::time::timeout(DEADLINE, async {
        // Only configmaps changed since `rv`: the first event is a bookmark.
        match stream.try_next().await.expect("stream").expect("event") {
            WatchEvent::Bookmark(b) => b,
            other => panic!("only bookmarks expected, got {other:?}"),
        }
    })
    .await
    .expect("a bookmark in time");
    let bookmark_rv: u64 = bookmark.metadata.resource_version.parse().expect("numeric");
    assert!(bookmark_rv >= rv.parse::<u64>().expect("numeric") + 3);
}

#[tokio::test]
async fn relabelling_moves_objects_into_and_out_of_a_selected_watch() {
    let (_kd, client) = start(Config::default()).await;
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let rv = current_rv(&pods).await;
    let mut stream = pods
        .watch(&WatchParams::default().labels("app=watched"), &rv)
        .await
        .expect("watch")
        .boxed();
    let mut out = parked_pod("mover");
    out.metadata.labels = Some([("app".to_string(), "other".to_string())].into());
    pods.create(&PostParams::default(), &out)
        .await
        .expect("create");
    let label = |v: &str| {
        kube::api::Patch::Merge(
            json!({"metadata": {"labels": {"app": v}, "annotations": {"step": v}}}),
        )
    };
    let pp = kube::api::PatchParams::default();
    let entered = pods
        .patch("mover", &pp, &label("watched"))
        .await
        .expect("into the selection");
    let left = pods
        .patch("mover", &pp, &label("elsewhere"))
        .await
        .expect("out of the selection");
    let mut next = async || loop {
        match tokio::time::timeout(DEADLINE, stream.try_next())
            .await
            .expect("event in time")
            .expect("stream")
            .expect("watch open")
        {
            WatchEvent::Bookmark(_) => {}
            ev => return ev,
        }
    };
    let WatchEvent::Added(added) = next().await else {
        panic!("entering the selection is ADDED");
    };
    assert_eq!(added.resource_version(), entered.resource_version());
    // Leaving it is DELETED, with the object as it was (still matching) and the new version.
    let WatchEvent::Deleted(deleted) = next().await else {
        panic!("leaving the selection is DELETED");
    };
    assert_eq!(
        deleted.labels().get("app").map(String::as_str),
        Some("watched")
    );
    assert_eq!(
        deleted.annotations().get("step").map(String::as_str),
        Some("watched")
    );
    assert_eq!(deleted.resource_version(), left.resource_version());
    pods.get("mover").await.expect("the pod itself stays");
}

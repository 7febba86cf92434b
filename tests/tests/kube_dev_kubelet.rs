//! The kubelet simulator with a stand-in init binary (a `/bin/sh` script written here that
//! records its environment and arguments into its output dir): scheduling, unique pod IPs, env /
//! downward API / `$(VAR)` / path rewriting, init container states in order, restart with
//! backoff, `restartPolicy: Never`, a restarted pod sandbox, the app container record, and
//! deletion killing the process and removing the pod's directories.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use kube::ResourceExt as _;
use kube::api::{Api, DeleteParams, ListParams, PostParams, WatchEvent, WatchParams};
use kube::runtime::wait::{await_condition, conditions};
use serde_json::{Value, json};

use approle_testkit::kube_dev::{Config, KubeDev, Running};

const DEADLINE: Duration = Duration::from_secs(30);

const STAND_IN: &str = r#"#!/bin/sh
# Stand-in for approle-init: records what it was given, then behaves as MODE says.
out="$APPROLE_INIT_OUT_DIR"
mkdir -p "$out"
env | sort > "$out/env.txt"
for a in "$@"; do printf '%s\n' "$a"; done > "$out/args.txt"
n=$(cat "$out/runs" 2>/dev/null || echo 0)
n=$((n + 1))
echo "$n" > "$out/runs"
echo "stand-in run $n"
case "$MODE" in
  fail-first) if [ "$n" = 1 ]; then echo "failing on purpose" >&2; exit 1; fi ;;
  fail) echo "always failing" >&2; exit 3 ;;
  sleep) echo $$ > "$out/pid"; exec sleep 300 ;;
esac
echo secret-material-written > "$out/token"
chmod 0440 "$out/token"
exit 0
"#;

struct Env {
    kd: Running,
    client: kube::Client,
    _bin_dir: tempfile::TempDir,
}

async fn start() -> Env {
    start_with(Config::default().kubelet_threads).await
}

async fn start_with(kubelet_threads: usize) -> Env {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let bin_dir = tempfile::tempdir().expect("tempdir");
    let script = bin_dir.path().join("approle-init-stand-in");
    std::fs::write(&script, STAND_IN).expect("write script");
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let kd = KubeDev::start(Config {
        init_binary: Some(script),
        backoff_base: Duration::from_millis(50),
        backoff_max: Duration::from_millis(400),
        kubelet_threads,
        ..Config::default()
    })
    .await
    .expect("kube-dev starts");
    let client = kd.client().await.expect("client");
    Env {
        kd,
        client,
        _bin_dir: bin_dir,
    }
}

fn injected_pod(name: &str, mode: &str, restart_policy: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": "web"}},
        "spec": {
            "restartPolicy": restart_policy,
            "serviceAccountName": "default",
            "terminationGracePeriodSeconds": 2,
            "initContainers": [
                {"name": "prepare", "image": "busybox:1.36"},
                {"name": "approle-init", "image": "registry.example/approle-init:0.1.0",
                 "args": ["--out-dir=/var/run/secrets/vault-approle", "--pod=$(POD_NAME)",
                          "/var/run/secrets/vault-approle/token", "$$(POD_NAME)"],
                 "env": [
                    {"name": "MODE", "value": mode},
                    {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                    {"name": "APPROLE_INIT_POD_UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}},
                    {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                    {"name": "SA", "valueFrom": {"fieldRef": {"fieldPath": "spec.serviceAccountName"}}},
                    {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                    {"name": "COMPOSED", "value": "$(POD_NAME).$(POD_NAMESPACE):$(UNDEFINED)"},
                    {"name": "APPROLE_INIT_LISTEN", "value": "0.0.0.0:9443"},
                    {"name": "APPROLE_INIT_OUT_DIR", "value": "/var/run/secrets/vault-approle"}
                 ],
                 "volumeMounts": [{"name": "vault-approle", "mountPath": "/var/run/secrets/vault-approle"}]}
            ],
            "containers": [
                {"name": "app", "image": "nginx:1.27",
                 "volumeMounts": [{"name": "vault-approle", "mountPath": "/var/run/secrets/vault-approle", "readOnly": true}]},
                {"name": "sidecar", "image": "busybox:1.36"}
            ],
            "volumes": [{"name": "vault-approle", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}}]
        }
    }))
    .expect("valid pod")
}

fn phase(p: &Pod) -> Option<&str> {
    p.status.as_ref().and_then(|s| s.phase.as_deref())
}

/// The status of the pod's `i`-th init container, once reported.
fn init_status(p: &Pod, i: usize) -> Option<ContainerStatus> {
    p.status
        .as_ref()
        .and_then(|s| s.init_container_statuses.as_ref())
        .and_then(|c| c.get(i).cloned())
}

async fn wait_phase(pods: &Api<Pod>, name: &str, want: &'static str) -> Pod {
    let cond = await_condition(pods.clone(), name, move |p: Option<&Pod>| {
        p.and_then(phase) == Some(want)
    });
    tokio::time::timeout(DEADLINE, cond)
        .await
        .unwrap_or_else(|_| panic!("{name} did not reach {want} in time"))
        .expect("watch")
        .expect("pod exists")
}

fn kv_file(path: &Path) -> BTreeMap<String, String> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
        .lines()
        .filter_map(|l| {
            l.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect()
}

/// The distinct states one init container went through, as seen by a watch.
fn state_label(p: &Pod, container: &str) -> Option<String> {
    let s = p
        .status
        .as_ref()?
        .init_container_statuses
        .as_ref()?
        .iter()
        .find(|s| s.name == container)?;
    let st = s.state.as_ref()?;
    Some(if let Some(w) = &st.waiting {
        format!("waiting:{}", w.reason.clone().unwrap_or_default())
    } else if st.running.is_some() {
        format!("running#{}", s.restart_count)
    } else if let Some(t) = &st.terminated {
        format!(
            "terminated:{}:{}",
            t.reason.clone().unwrap_or_default(),
            t.exit_code
        )
    } else {
        "none".into()
    })
}

async fn collect_states(
    pods: &Api<Pod>,
    name: &str,
    container: &str,
    create: impl std::future::Future<Output = ()>,
    until: &str,
) -> Vec<String> {
    let rv = pods
        .list(&ListParams::default())
        .await
        .expect("list")
        .metadata
        .resource_version
        .expect("rv");
    let mut stream = pods
        .watch(
            &WatchParams::default()
                .fields(&format!("metadata.name={name}"))
                .timeout(60),
            &rv,
        )
        .await
        .expect("watch")
        .boxed();
    create.await;
    let mut states: Vec<String> = Vec::new();
    tokio::time::timeout(DEADLINE, async {
        while let Some(ev) = stream.try_next().await.expect("stream") {
            if let WatchEvent::Added(p) | WatchEvent::Modified(p) = ev {
                if let Some(s) = state_label(&p, container)
                    && states.last() != Some(&s)
                {
                    states.push(s);
                }
                if phase(&p) == Some(until) {
                    break;
                }
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{name} did not reach {until}; states so far: {states:?}"));
    states
}

#[tokio::test]
async fn init_process_gets_downward_api_env_expanded_args_and_host_paths() {
    let env = start().await;
    let pods: Api<Pod> = Api::default_namespaced(env.client.clone());
    let states = collect_states(
        &pods,
        "web-0",
        "approle-init",
        async {
            pods.create(
                &PostParams::default(),
                &injected_pod("web-0", "ok", "Always"),
            )
            .await
            .expect("create");
        },
        "Running",
    )
    .await;
    assert_eq!(
        states,
        vec![
            "waiting:PodInitializing",
            "running#0",
            "terminated:Completed:0"
        ]
    );

    let p = pods.get("web-0").await.expect("get");
    let uid = p.uid().expect("uid");
    let status = p.status.clone().expect("status");
    let ip = status.pod_ip.clone().expect("pod ip");
    assert!(ip.starts_with("127.") && ip != "127.0.0.1", "{ip}");
    assert_eq!(
        p.spec.as_ref().and_then(|s| s.node_name.as_deref()),
        Some("kube-dev-node")
    );
    let conds: BTreeMap<String, String> = status
        .conditions
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|c| (c.type_, c.status))
        .collect();
    assert_eq!(conds.get("Initialized").map(String::as_str), Some("True"));
    assert_eq!(conds.get("Ready").map(String::as_str), Some("True"));

    let host_dir = env.kd.pod_volume_dir(&uid, "vault-approle");
    let vars = kv_file(&host_dir.join("env.txt"));
    let get = |k: &str| {
        vars.get(k)
            .cloned()
            .unwrap_or_else(|| panic!("{k} missing: {vars:?}"))
    };
    assert_eq!(get("APPROLE_INIT_LISTEN"), format!("{ip}:9443"));
    assert_eq!(get("APPROLE_INIT_SOURCE_ADDRESS"), ip);
    assert_eq!(get("POD_NAME"), "web-0");
    assert_eq!(get("POD_NAMESPACE"), "default");
    assert_eq!(get("APPROLE_INIT_POD_UID"), uid);
    assert_eq!(get("POD_IP"), ip);
    assert_eq!(get("SA"), "default");
    assert_eq!(get("NODE"), "kube-dev-node");
    assert_eq!(get("COMPOSED"), "web-0.default:$(UNDEFINED)");
    assert_eq!(get("APPROLE_INIT_OUT_DIR"), host_dir.display().to_string());

    let args: Vec<String> = std::fs::read_to_string(host_dir.join("args.txt"))
        .expect("args")
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(
        args,
        vec![
            format!("--out-dir={}", host_dir.display()),
            "--pod=web-0".to_string(),
            format!("{}/token", host_dir.display()),
            "$(POD_NAME)".to_string(),
        ]
    );

    // The simulated app container saw the token file through its read-only mount.
    let record: Value =
        serde_json::from_slice(&std::fs::read(env.kd.app_record(&uid, "app")).expect("app record"))
            .expect("json");
    let mount = &record["mounts"][0];
    assert_eq!(mount["mountPath"], "/var/run/secrets/vault-approle");
    assert_eq!(mount["readOnly"], true);
    let token = mount["files"]
        .as_array()
        .expect("files")
        .iter()
        .find(|f| f["path"] == "token")
        .expect("token file seen by app");
    assert_eq!(token["mode"], "0440");
    assert_eq!(token["size"], 24);

    let log = std::fs::read_to_string(env.kd.container_log(&uid, "approle-init")).expect("log");
    assert!(log.contains("stand-in run 1"), "{log}");
    assert!(
        env.kd
            .log_files()
            .contains(&env.kd.container_log(&uid, "app"))
    );
}

#[tokio::test]
async fn failed_init_container_restarts_with_backoff_and_never_policy_fails_the_pod() {
    let env = start().await;
    let pods: Api<Pod> = Api::default_namespaced(env.client.clone());
    let states = collect_states(
        &pods,
        "flaky-0",
        "approle-init",
        async {
            pods.create(
                &PostParams::default(),
                &injected_pod("flaky-0", "fail-first", "Always"),
            )
            .await
            .expect("create");
        },
        "Running",
    )
    .await;
    assert_eq!(
        states,
        vec![
            "waiting:PodInitializing",
            "running#0",
            "terminated:Error:1",
            "waiting:CrashLoopBackOff",
            "running#1",
            "terminated:Completed:0",
        ]
    );
    let p = pods.get("flaky-0").await.expect("get");
    let init = init_status(&p, 1).expect("init status");
    assert_eq!(init.restart_count, 1);
    let last = init
        .last_state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .expect("last state");
    assert_eq!(last.exit_code, 1);

    pods.create(
        &PostParams::default(),
        &injected_pod("never-0", "fail", "Never"),
    )
    .await
    .expect("create never-0");
    let failed = wait_phase(&pods, "never-0", "Failed").await;
    let init = init_status(&failed, 1).expect("init status");
    let t = init
        .state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .expect("terminated");
    assert_eq!(t.exit_code, 3);
    assert_eq!(t.reason.as_deref(), Some("Error"));
    assert_eq!(init.restart_count, 0);
    let log = std::fs::read_to_string(
        env.kd
            .container_log(&failed.uid().expect("uid"), "approle-init"),
    )
    .expect("log");
    assert!(log.contains("always failing"), "stderr is captured: {log}");
}

#[tokio::test]
async fn a_restarted_sandbox_runs_the_init_containers_again_on_a_new_ip_and_keeps_volumes() {
    let env = start().await;
    let pods: Api<Pod> = Api::default_namespaced(env.client.clone());
    pods.create(
        &PostParams::default(),
        &injected_pod("again-0", "ok", "Always"),
    )
    .await
    .expect("create");
    let first = wait_phase(&pods, "again-0", "Running").await;
    let ip = first.status.as_ref().and_then(|s| s.pod_ip.clone());
    let uid = first.uid().expect("uid");

    let patch = json!({"metadata": {"annotations": {
        approle_testkit::kube_dev::kubelet::RESTART_SANDBOX_ANNOTATION: "1",
    }}});
    pods.patch(
        "again-0",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(&patch),
    )
    .await
    .expect("annotate");
    let restarted = await_condition(pods.clone(), "again-0", move |p: Option<&Pod>| {
        p.is_some_and(|p| {
            phase(p) == Some("Running") && init_status(p, 1).is_some_and(|c| c.restart_count == 1)
        })
    });
    let second = tokio::time::timeout(DEADLINE, restarted)
        .await
        .expect("the pod runs again in time")
        .expect("watch")
        .expect("pod exists");
    assert_eq!(second.uid().as_deref(), Some(uid.as_str()));
    let new_ip = second.status.as_ref().and_then(|s| s.pod_ip.clone());
    assert!(
        new_ip.is_some() && ip.is_some() && new_ip != ip,
        "a new sandbox, a new address: {ip:?} → {new_ip:?}"
    );
    for i in 0..2 {
        let c = init_status(&second, i).expect("init status");
        assert_eq!(c.restart_count, 1, "{}", c.name);
        let done = |s: Option<&k8s_openapi::api::core::v1::ContainerState>| {
            s.and_then(|s| s.terminated.as_ref())
                .map(|t| (t.exit_code, t.reason.clone()))
        };
        assert_eq!(done(c.state.as_ref()), Some((0, Some("Completed".into()))));
        assert_eq!(
            done(c.last_state.as_ref()),
            Some((0, Some("Completed".into())))
        );
    }
    let app = &second
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.clone())
        .expect("app statuses")[0];
    assert_eq!(app.restart_count, 1);
    assert!(app.state.as_ref().is_some_and(|s| s.running.is_some()));
    assert!(
        app.last_state
            .as_ref()
            .is_some_and(|s| s.terminated.is_some())
    );
    // The stand-in counts its runs in the pod's emptyDir, which the restart kept.
    let runs = std::fs::read_to_string(env.kd.pod_volume_dir(&uid, "vault-approle").join("runs"))
        .expect("runs");
    assert_eq!(runs.trim(), "2");
}

#[tokio::test]
async fn pod_ips_are_unique_and_deletion_kills_the_process_and_removes_dirs() {
    ips_and_deletion(start().await).await;
}

/// The kubelet on the API server's runtime (`--kubelet-threads 0`) behaves the same.
#[tokio::test]
async fn the_kubelet_on_the_api_servers_runtime_runs_and_deletes_pods_alike() {
    ips_and_deletion(start_with(0).await).await;
}

/// And on a runtime of several threads.
#[tokio::test]
async fn the_kubelet_on_two_threads_runs_and_deletes_pods_alike() {
    ips_and_deletion(start_with(2).await).await;
}

async fn ips_and_deletion(env: Env) {
    let pods: Api<Pod> = Api::default_namespaced(env.client.clone());
    for i in 0..3 {
        pods.create(
            &PostParams::default(),
            &injected_pod(&format!("ok-{i}"), "ok", "Always"),
        )
        .await
        .expect("create");
    }
    let mut ips = Vec::new();
    for i in 0..3 {
        let p = wait_phase(&pods, &format!("ok-{i}"), "Running").await;
        ips.push(p.status.and_then(|s| s.pod_ip).expect("ip"));
    }
    let mut unique = ips.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 3, "{ips:?}");

    // A long-running init process: deleting the pod must kill it.
    pods.create(
        &PostParams::default(),
        &injected_pod("sleeper-0", "sleep", "Always"),
    )
    .await
    .expect("create sleeper");
    let running_init = await_condition(pods.clone(), "sleeper-0", |p: Option<&Pod>| {
        p.and_then(|p| state_label(p, "approle-init"))
            .is_some_and(|s| s.starts_with("running"))
    });
    let p = tokio::time::timeout(DEADLINE, running_init)
        .await
        .expect("init running in time")
        .expect("watch")
        .expect("pod");
    let uid = p.uid().expect("uid");
    let out = env.kd.pod_volume_dir(&uid, "vault-approle");
    let pid_file = out.join("pid");
    let pid = poll(|| {
        std::fs::read_to_string(&pid_file)
            .ok()
            .filter(|s| !s.trim().is_empty())
    })
    .await
    .trim()
    .to_string();
    assert!(process_alive(&pid), "stand-in {pid} is running");

    // `logs -f`: the output so far, then the stream stays open while the container runs.
    let follow = pods
        .log_stream(
            "sleeper-0",
            &kube::api::LogParams {
                follow: true,
                container: Some("approle-init".into()),
                ..Default::default()
            },
        )
        .await
        .expect("log stream");
    let mut follow = futures::AsyncBufReadExt::lines(follow);
    let first = tokio::time::timeout(DEADLINE, follow.next())
        .await
        .expect("a log line in time")
        .expect("line")
        .expect("utf-8");
    assert_eq!(first, "stand-in run 1");

    pods.delete("sleeper-0", &DeleteParams::default())
        .await
        .expect("delete");
    // The stream ends once the container has stopped.
    tokio::time::timeout(DEADLINE, async {
        while let Some(line) = follow.next().await {
            line.expect("line");
        }
    })
    .await
    .expect("log stream ends after the pod stops");
    let gone = await_condition(pods.clone(), "sleeper-0", conditions::is_deleted(&uid));
    tokio::time::timeout(DEADLINE, gone)
        .await
        .expect("deleted in time")
        .expect("watch");
    assert!(!process_alive(&pid), "process {pid} was killed");
    let pod_dir: PathBuf = env.kd.root_dir.join("pods").join(&uid);
    assert!(!pod_dir.exists(), "{} removed", pod_dir.display());
    // Its output is kept for leak scanning.
    assert!(
        env.kd
            .log_files()
            .iter()
            .any(|f| f.to_string_lossy().contains(&uid) && f.ends_with("approle-init.log")),
        "archived log listed"
    );

    // The freed IP is reused by the next pod.
    let sleeper_ip = p.status.and_then(|s| s.pod_ip).expect("ip");
    pods.create(
        &PostParams::default(),
        &injected_pod("next-0", "ok", "Always"),
    )
    .await
    .expect("create next");
    let next = wait_phase(&pods, "next-0", "Running").await;
    assert_eq!(next.status.and_then(|s| s.pod_ip), Some(sleeper_ip));
}

fn process_alive(pid: &str) -> bool {
    // `kill -0` only checks; a zombie would still count, but the kubelet reaps its children.
    std::process::Command::new("kill")
        .args(["-0", pid])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

async fn poll<T>(mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met in time"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn native_sidecar_init_container_keeps_running_next_to_the_app() {
    let env = start().await;
    let pods: Api<Pod> = Api::default_namespaced(env.client.clone());
    let mut pod = injected_pod("side-0", "sleep", "Always");
    {
        let spec = pod.spec.as_mut().expect("spec");
        let inits = spec.init_containers.as_mut().expect("init containers");
        inits[1].restart_policy = Some("Always".into());
    }
    pods.create(&PostParams::default(), &pod)
        .await
        .expect("create");
    let p = wait_phase(&pods, "side-0", "Running").await;
    assert_eq!(
        state_label(&p, "approle-init").as_deref(),
        Some("running#0"),
        "the sidecar is still running while the pod runs"
    );
    let sidecar = init_status(&p, 1).expect("init status");
    assert!(sidecar.ready && sidecar.started == Some(true));
    let uid = p.uid().expect("uid");
    let pid_file = env.kd.pod_volume_dir(&uid, "vault-approle").join("pid");
    let pid = poll(|| {
        std::fs::read_to_string(&pid_file)
            .ok()
            .filter(|s| !s.trim().is_empty())
    })
    .await
    .trim()
    .to_string();
    assert!(process_alive(&pid));
    pods.delete("side-0", &DeleteParams::default())
        .await
        .expect("delete");
    let gone = await_condition(pods.clone(), "side-0", conditions::is_deleted(&uid));
    tokio::time::timeout(DEADLINE, gone)
        .await
        .expect("deleted in time")
        .expect("watch");
    assert!(!process_alive(&pid), "sidecar {pid} was stopped");
}

//! The kubelet simulator: runs the pods of the single node `kube-dev-node`.
//!
//! ```text
//!  store ──(pod changes, in order)──▶ kubelet loop ──spawn──▶ pod task (one per pod UID)
//!                                                             │ schedule: spec.nodeName
//!                                                             │ IP 127.x.y.z, volumes dirs
//!                                                             │ init containers, in order:
//!                                                             │   *approle-init → real process
//!                                                             │   other images  → succeed
//!                                                             │   failure → backoff + restart
//!                                                             │ app containers (simulated):
//!                                                             │   record volume mounts
//!                                                             ▼ deletion: SIGTERM, grace,
//!                                                               SIGKILL, archive logs, rm dirs,
//!                                                               final delete
//! ```
//!
//! Every state change is written to the pod's status as the real kubelet reports it. Like the
//! kubelet's status manager, which writes a pod's latest status and so folds together changes
//! made faster than it syncs, changes made back to back go out as one write: the new sandbox
//! (phase, IP, conditions) with its first container running, and an init container's successful
//! exit with the start of whatever comes next. Watchers see each init container `running`, then
//! `terminated`; `waiting` shows while one cannot start or backs off after a failure, and on the
//! app containers until the init containers are done.
//! Processes run in their own process group so that everything a container started is
//! signalled; every group is remembered so shutdown can kill what is left.
//!
//! The loop and the pod tasks run on a runtime of their own (one thread by default,
//! `--kubelet-threads`), apart from the API server's, as a real kubelet is a process of its own:
//! on the API server's runtime, pod start-ups queued ahead of API requests. One thread starts
//! pods one after another, about 300 a second here (a real node, with its container runtime,
//! starts far fewer).
//!
//! A lost pod sandbox (a node reboot, a dead pause container: what makes a real kubelet run a
//! pod's init containers again) is simulated by setting or changing the annotation
//! [`RESTART_SANDBOX_ANNOTATION`] on a running pod (`kubectl annotate --overwrite pod web-0
//! kube-dev.approle-injector.io/restart-sandbox=1`): its containers stop, and it starts again
//! from its first init container, each container's `restartCount` one higher, with a new pod IP
//! (a new sandbox gets its address from the network plugin again); UID and volumes stay.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustix::io::Errno;
use rustix::process::{Pid, Signal, kill_process_group};
use serde_json::{Value, json};
use tokio::process::{Child, Command};
use tokio::sync::{Notify, watch};

use super::env::{self, HostMount, PodFacts};
use super::kinds::image_repository;
use super::logs::log_path;
use super::store::{ChangeKind, Store, Update};
use super::tokens::TokenIssuer;
use super::util::{metadata_mut, name_of, namespace_of, now_time, random_hex, str_at, uid_of};

/// Environment variable through which a real init process learns where its termination message
/// goes (`APPROLE_INIT_TERMINATION_MESSAGE_PATH`): kube-dev points it at a host file instead of
/// bind-mounting one at `terminationMessagePath`.
pub const TERMINATION_MESSAGE_ENV: &str = "APPROLE_INIT_TERMINATION_MESSAGE_PATH";
/// Setting or changing this annotation on a running pod restarts its sandbox (see above).
pub const RESTART_SANDBOX_ANNOTATION: &str = "kube-dev.approle-injector.io/restart-sandbox";
/// The kubelet keeps at most this much of a termination message (Kubernetes' 4 KiB limit).
pub const TERMINATION_MESSAGE_MAX: usize = 4096;

fn termination_message_file(root: &Path, uid: &str, container: &str) -> PathBuf {
    pod_dir(root, uid).join(format!("termination-{container}"))
}

/// The message a container left, cut to [`TERMINATION_MESSAGE_MAX`] bytes; none if empty.
fn read_termination_message(path: &Path) -> Option<String> {
    let mut bytes = std::fs::read(path).ok()?;
    bytes.truncate(TERMINATION_MESSAGE_MAX);
    let text = String::from_utf8_lossy(&bytes).into_owned();
    (!text.is_empty()).then_some(text)
}

/// Image repository suffix of init containers run as real processes.
pub const INIT_IMAGE_SUFFIX: &str = "approle-init";
/// Default push port of the init container (`APPROLE_INIT_LISTEN`).
pub const DEFAULT_INIT_PORT: u16 = 8643;

/// Kubelet settings.
#[derive(Debug, Clone)]
pub struct KubeletConfig {
    /// The node name written to `spec.nodeName`.
    pub node_name: String,
    /// Root of pod dirs (`<root>/pods/<uid>/...`).
    pub root_dir: PathBuf,
    /// The binary run for `*approle-init` init containers.
    pub init_binary: Option<PathBuf>,
    /// Extra environment for those processes (e.g. `RUST_LOG`), applied before the pod's.
    pub init_env: Vec<(String, String)>,
    /// First restart delay of a failed container.
    pub backoff_base: Duration,
    /// Restart delay cap.
    pub backoff_max: Duration,
    /// API server address, for `KUBERNETES_SERVICE_HOST/PORT`.
    pub api_host: String,
    /// API server port.
    pub api_port: u16,
    /// Worker threads of the kubelet's own runtime; 0 runs it on the caller's (the API
    /// server's). See [`Kubelet::start`].
    pub threads: usize,
}

/// Handle to the running kubelet.
#[derive(Debug, Clone)]
pub struct Kubelet {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    cfg: KubeletConfig,
    store: Arc<Store>,
    tokens: Arc<TokenIssuer>,
    ips: Mutex<BTreeSet<u32>>,
    pods: Mutex<HashMap<String, PodHandle>>,
    finished: Mutex<HashSet<String>>,
    groups: Mutex<HashSet<u32>>,
    /// Ends the kubelet loop (kube-dev stopping).
    stopped: Notify,
}

/// What the kubelet loop holds of a running pod task.
#[derive(Debug)]
struct PodHandle {
    /// `Some(grace)` once the pod is to stop.
    stop: watch::Sender<Option<i64>>,
    /// Wakes the task to restart the pod's sandbox.
    restart: Arc<Notify>,
    /// The [`RESTART_SANDBOX_ANNOTATION`] value last seen.
    restart_mark: String,
}

/// `<root>/pods/<uid>`.
pub fn pod_dir(root: &Path, uid: &str) -> PathBuf {
    root.join("pods").join(uid)
}

/// `<root>/pods/<uid>/volumes/kubernetes.io~empty-dir/<name>`.
pub fn empty_dir_path(root: &Path, uid: &str, volume: &str) -> PathBuf {
    pod_dir(root, uid)
        .join("volumes")
        .join("kubernetes.io~empty-dir")
        .join(volume)
}

/// `<root>/pods/<uid>/app/<container>.json`: what a simulated app container saw.
pub fn app_record_path(root: &Path, uid: &str, container: &str) -> PathBuf {
    pod_dir(root, uid)
        .join("app")
        .join(format!("{container}.json"))
}

/// Where logs and app records of deleted pods are kept (`<root>/archive/<ns>_<name>_<uid>`).
pub fn archive_dir(root: &Path) -> PathBuf {
    root.join("archive")
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Kubelet {
    /// Starts the kubelet loop. With `cfg.threads` > 0 it runs on a runtime of its own, on
    /// threads named `kubelet`: a real kubelet is a process apart from the API server, and
    /// sharing the API server's task queue made API requests (a TokenReview, a watch event)
    /// wait behind pod start-ups. With 0 it runs on the current runtime.
    pub fn start(
        cfg: KubeletConfig,
        store: Arc<Store>,
        tokens: Arc<TokenIssuer>,
    ) -> std::io::Result<Self> {
        let mut rx = store.observe("pods");
        let threads = cfg.threads;
        let inner = Arc::new(Inner {
            cfg,
            store,
            tokens,
            ips: Mutex::new(BTreeSet::new()),
            pods: Mutex::new(HashMap::new()),
            finished: Mutex::new(HashSet::new()),
            groups: Mutex::new(HashSet::new()),
            stopped: Notify::new(),
        });
        let k = inner.clone();
        let run = async move {
            loop {
                tokio::select! {
                    change = rx.recv() => match change {
                        Some(c) => k.on_change(c.kind, &c.object),
                        None => return,
                    },
                    () = k.stopped.notified() => return,
                }
            }
        };
        if threads == 0 {
            tokio::spawn(run);
        } else {
            let mut builder = if threads == 1 {
                tokio::runtime::Builder::new_current_thread()
            } else {
                let mut b = tokio::runtime::Builder::new_multi_thread();
                b.worker_threads(threads);
                b
            };
            let runtime = builder.enable_all().thread_name("kubelet").build()?;
            // The loop drives the runtime; when it ends (kube-dev stopping), the runtime and
            // whatever pod tasks are left go with it (their processes are killed on drop).
            std::thread::Builder::new()
                .name("kubelet".into())
                .spawn(move || runtime.block_on(run))?;
        }
        Ok(Self { inner })
    }

    /// Kills every process group still running (SIGKILL), synchronously, and ends the kubelet
    /// loop. For shutdown and drop.
    pub fn kill_all(&self) {
        let groups: Vec<u32> = lock(&self.inner.groups).drain().collect();
        for g in groups {
            signal_group(g, Signal::KILL);
        }
        self.inner.stopped.notify_one();
    }

    /// Stops every pod (SIGTERM, then SIGKILL after `grace`) and waits for them to clean up.
    pub async fn stop_all(&self, grace: Duration) {
        let senders: Vec<watch::Sender<Option<i64>>> = lock(&self.inner.pods)
            .values()
            .map(|h| h.stop.clone())
            .collect();
        let secs = i64::try_from(grace.as_secs()).unwrap_or(0);
        for s in &senders {
            let _ = s.send(Some(secs));
        }
        for s in &senders {
            // Each pod task drops its receiver when done.
            s.closed().await;
        }
        self.kill_all();
    }
}

impl Inner {
    fn on_change(self: &Arc<Self>, kind: ChangeKind, pod: &Arc<Value>) {
        let uid = uid_of(pod).to_string();
        let signal = |grace: i64| {
            if let Some(h) = lock(&self.pods).get(&uid) {
                let _ = h.stop.send(Some(grace));
            }
        };
        if kind == ChangeKind::Deleted {
            signal(0);
            return;
        }
        let node = str_at(pod, &["spec", "nodeName"]);
        if !node.is_empty() && node != self.cfg.node_name {
            return;
        }
        let terminating = !str_at(pod, &["metadata", "deletionTimestamp"]).is_empty();
        let restart_mark = restart_mark(pod);
        let known = match lock(&self.pods).get_mut(&uid) {
            Some(h) => {
                if !terminating && h.restart_mark != restart_mark {
                    h.restart_mark = restart_mark.to_owned();
                    h.restart.notify_one();
                }
                true
            }
            None => false,
        };
        if known {
            if terminating {
                let grace = pod
                    .pointer("/metadata/deletionGracePeriodSeconds")
                    .and_then(Value::as_i64)
                    .unwrap_or(0);
                signal(grace);
            }
            return;
        }
        if lock(&self.finished).contains(&uid) {
            return;
        }
        let (tx, rx) = watch::channel(None);
        if terminating {
            let _ = tx.send(Some(0));
        }
        let restart = Arc::new(Notify::new());
        lock(&self.pods).insert(
            uid.clone(),
            PodHandle {
                stop: tx,
                restart: restart.clone(),
                restart_mark: restart_mark.to_owned(),
            },
        );
        let k = self.clone();
        let pod = pod.clone();
        tokio::spawn(async move {
            let task = PodTask::new(k.clone(), pod, rx, restart);
            task.run().await;
            lock(&k.finished).insert(uid.clone());
            lock(&k.pods).remove(&uid);
        });
    }

    fn alloc_ip(&self) -> Ipv4Addr {
        let mut used = lock(&self.ips);
        // 127.1.0.1 upwards, skipping .0 and .255 host bytes; never 127.0.0.1.
        let mut n: u32 = u32::from(Ipv4Addr::new(127, 1, 0, 1));
        loop {
            let last = n & 0xff;
            if last != 0 && last != 255 && !used.contains(&n) {
                used.insert(n);
                return Ipv4Addr::from(n);
            }
            n += 1;
        }
    }

    fn release_ip(&self, ip: Ipv4Addr) {
        lock(&self.ips).remove(&u32::from(ip));
    }

    fn backoff(&self, restarts: u32) -> Duration {
        let factor = 2u32.saturating_pow(restarts.min(20));
        self.cfg
            .backoff_base
            .saturating_mul(factor)
            .min(self.cfg.backoff_max)
    }
}

/// The kubelet's view of one pod's status.
#[derive(Debug, Clone, Default)]
struct Runtime {
    phase: &'static str,
    pod_ip: String,
    start_time: String,
    init: Vec<Value>,
    app: Vec<Value>,
    conditions: BTreeMap<&'static str, (bool, String, Option<&'static str>)>,
}

impl Runtime {
    fn set_condition(&mut self, ty: &'static str, ok: bool, reason: Option<&'static str>) {
        let changed = self.conditions.get(ty).is_none_or(|(s, _, _)| *s != ok);
        if changed {
            self.conditions.insert(ty, (ok, now_time(), reason));
        }
    }

    fn status(&self, cur: &Value) -> Value {
        let mut s = cur.get("status").cloned().unwrap_or(json!({}));
        let order = [
            "PodReadyToStartContainers",
            "Initialized",
            "Ready",
            "ContainersReady",
            "PodScheduled",
        ];
        let conds: Vec<Value> = order
            .iter()
            .filter_map(|t| self.conditions.get(t).map(|c| (t, c)))
            .map(|(t, (ok, at, reason))| {
                let mut c = json!({"type": t, "status": if *ok {"True"} else {"False"},
                                   "lastProbeTime": null, "lastTransitionTime": at});
                if let Some(r) = reason {
                    c["reason"] = json!(r);
                }
                c
            })
            .collect();
        s["phase"] = json!(self.phase);
        s["conditions"] = Value::Array(conds);
        s["hostIP"] = json!("127.0.0.1");
        s["hostIPs"] = json!([{"ip": "127.0.0.1"}]);
        if !self.pod_ip.is_empty() {
            s["podIP"] = json!(self.pod_ip);
            s["podIPs"] = json!([{"ip": self.pod_ip}]);
        }
        s["startTime"] = json!(self.start_time);
        if !self.init.is_empty() {
            s["initContainerStatuses"] = Value::Array(self.init.clone());
        }
        s["containerStatuses"] = Value::Array(self.app.clone());
        s
    }
}

fn container_status(c: &Value, state: Value, ready: bool, restarts: u32, cid: &str) -> Value {
    let started = state.get("running").is_some();
    let image = str_at(c, &["image"]);
    let mut s = json!({
        "name": str_at(c, &["name"]),
        "image": image,
        "imageID": if cid.is_empty() { String::new() } else { format!("{}@sha256:{}", image_repository(image), "0".repeat(64)) },
        "ready": ready,
        "restartCount": restarts,
        "started": started,
        "state": state,
        "lastState": {},
    });
    if !cid.is_empty() {
        s["containerID"] = json!(format!("containerd://{cid}"));
    }
    s
}

/// The state a running container ends in when the kubelet stops it; `None` if it is not running.
fn stopped(status: &Value) -> Option<Value> {
    let started = status.pointer("/state/running")?.get("startedAt").cloned();
    Some(json!({"terminated": {"exitCode": 0, "reason": "Completed",
        "startedAt": started.unwrap_or(Value::Null), "finishedAt": now_time()}}))
}

fn restart_count(status: &Value) -> u32 {
    status["restartCount"]
        .as_u64()
        .and_then(|n| u32::try_from(n).ok())
        .unwrap_or(0)
}

/// The pod's [`RESTART_SANDBOX_ANNOTATION`] value ("" without one).
fn restart_mark(pod: &Value) -> &str {
    pod.pointer("/metadata/annotations")
        .and_then(|a| a.get(RESTART_SANDBOX_ANNOTATION))
        .and_then(Value::as_str)
        .unwrap_or("")
}

fn waiting(reason: &str, message: Option<String>) -> Value {
    let mut w = json!({"reason": reason});
    if let Some(m) = message {
        w["message"] = json!(m);
    }
    json!({"waiting": w})
}

/// How a container run ended.
#[derive(Debug)]
enum Exit {
    /// The process exited with this code.
    Code(i32),
    /// The pod is being stopped.
    Stopped,
}

/// Outcome of the init phase.
enum InitOutcome {
    Done,
    Failed,
    Stopped,
}

struct PodTask {
    k: Arc<Inner>,
    pod: Arc<Value>,
    uid: String,
    ns: String,
    name: String,
    stop: watch::Receiver<Option<i64>>,
    restart: Arc<Notify>,
    rt: Arc<Mutex<Runtime>>,
    ip: Option<Ipv4Addr>,
    volumes: HashMap<String, PathBuf>,
    sidecars: Vec<tokio::task::JoinHandle<()>>,
}

impl PodTask {
    fn new(
        k: Arc<Inner>,
        pod: Arc<Value>,
        stop: watch::Receiver<Option<i64>>,
        restart: Arc<Notify>,
    ) -> Self {
        Self {
            uid: uid_of(&pod).to_string(),
            ns: namespace_of(&pod).to_string(),
            name: name_of(&pod).to_string(),
            k,
            pod,
            stop,
            restart,
            rt: Arc::new(Mutex::new(Runtime::default())),
            ip: None,
            volumes: HashMap::new(),
            sidecars: Vec::new(),
        }
    }

    fn stopping(&self) -> bool {
        self.stop.borrow().is_some()
    }

    fn root(&self) -> &Path {
        &self.k.cfg.root_dir
    }

    /// Writes the runtime's status to the pod; false if the pod is gone.
    fn publish(&self) -> bool {
        publish(&self.k.store, &self.ns, &self.name, &self.uid, &self.rt)
    }

    async fn run(mut self) {
        if !self.stopping() && self.schedule() {
            self.start().await;
            let restart = self.restart.clone();
            loop {
                let restarted = tokio::select! {
                    _ = stop_requested(&mut self.stop) => false,
                    () = restart.notified() => true,
                };
                if !restarted {
                    break;
                }
                self.restart_sandbox().await;
            }
        }
        // Wait for deletion (a dropped sender means the kubelet is shutting down).
        let grace = stop_requested(&mut self.stop).await;
        for h in self.sidecars.drain(..) {
            let _ = h.await;
        }
        let _ = grace;
        self.finish().await;
    }

    /// Binds the pod to this node (what the scheduler does via `pods/binding`).
    fn schedule(&mut self) -> bool {
        let node = self.k.cfg.node_name.clone();
        let uid = self.uid.clone();
        let res = self
            .k
            .store
            .update("pods", &self.ns, &self.name, false, |cur| {
                if uid_of(cur) != uid {
                    return Err(());
                }
                let mut p = cur.clone();
                if str_at(&p, &["spec", "nodeName"]).is_empty() {
                    p["spec"]["nodeName"] = json!(node);
                }
                Ok(Update::Put(p))
            });
        match res {
            Ok(Some((p, _))) => {
                self.pod = p;
                true
            }
            _ => false,
        }
    }

    async fn start(&mut self) {
        let ip = self.k.alloc_ip();
        self.ip = Some(ip);
        {
            let mut rt = lock(&self.rt);
            rt.phase = "Pending";
            rt.pod_ip = ip.to_string();
            rt.start_time = now_time();
            rt.set_condition("PodScheduled", true, None);
            rt.set_condition("PodReadyToStartContainers", true, None);
            let has_init = !self.init_containers().is_empty();
            rt.set_condition(
                "Initialized",
                !has_init,
                has_init.then_some("ContainersNotInitialized"),
            );
            rt.set_condition("Ready", false, Some("ContainersNotReady"));
            rt.set_condition("ContainersReady", false, Some("ContainersNotReady"));
            rt.init = self
                .init_containers()
                .iter()
                .map(|c| container_status(c, waiting("PodInitializing", None), false, 0, ""))
                .collect();
            rt.app = self
                .app_containers()
                .iter()
                .map(|c| container_status(c, waiting("PodInitializing", None), false, 0, ""))
                .collect();
        }
        if let Err(e) = self.prepare_volumes() {
            tracing::warn!(pod.namespace = %self.ns, pod.name = %self.name, error = %e, "volume setup failed");
        }
        self.rotate_projected_tokens();
        // Not published yet: the first container starts at once, and its status write carries
        // the sandbox's (see the module docs). A pod deleted meanwhile fails that write.
        self.run_containers().await;
    }

    /// The init containers in order, then the app containers.
    async fn run_containers(&mut self) {
        match self.run_init_containers().await {
            InitOutcome::Done => self.start_app_containers(),
            InitOutcome::Failed => {
                lock(&self.rt).phase = "Failed";
                self.publish();
            }
            InitOutcome::Stopped => {}
        }
    }

    /// The pod's sandbox is gone: its containers stopped, it starts again from its first init
    /// container, each container's restart counted, on a new IP. (Native sidecars are not
    /// restarted.)
    async fn restart_sandbox(&mut self) {
        tracing::info!(pod.namespace = %self.ns, pod.name = %self.name, "restarting the pod sandbox");
        // The new address is taken before the old one is given back: it always differs.
        let ip = self.k.alloc_ip();
        if let Some(old) = self.ip.replace(ip) {
            self.k.release_ip(old);
        }
        {
            let mut guard = lock(&self.rt);
            let rt = &mut *guard;
            rt.phase = "Pending";
            rt.pod_ip = ip.to_string();
            rt.set_condition("Initialized", false, Some("ContainersNotInitialized"));
            rt.set_condition("Ready", false, Some("ContainersNotReady"));
            rt.set_condition("ContainersReady", false, Some("ContainersNotReady"));
            for s in rt.init.iter_mut().chain(rt.app.iter_mut()) {
                let restarts = restart_count(s) + 1;
                s["lastState"] = stopped(s).unwrap_or_else(|| s["state"].clone());
                s["state"] = waiting("PodInitializing", None);
                s["ready"] = json!(false);
                s["started"] = json!(false);
                s["restartCount"] = json!(restarts);
            }
        }
        // Published with the first container's start, as in `start`.
        self.run_containers().await;
    }

    fn init_containers(&self) -> Vec<Value> {
        self.pod
            .pointer("/spec/initContainers")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    }

    fn app_containers(&self) -> Vec<Value> {
        self.pod
            .pointer("/spec/containers")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    }

    fn prepare_volumes(&mut self) -> std::io::Result<()> {
        let root = self.root().to_path_buf();
        let base = pod_dir(&root, &self.uid);
        std::fs::create_dir_all(base.join("logs"))?;
        let vols = self
            .pod
            .pointer("/spec/volumes")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for v in &vols {
            let name = str_at(v, &["name"]).to_string();
            let dir = if v.get("emptyDir").is_some() {
                let d = empty_dir_path(&root, &self.uid, &name);
                std::fs::create_dir_all(&d)?;
                set_mode(&d, 0o777)?;
                d
            } else if let Some(hp) = v.get("hostPath") {
                PathBuf::from(str_at(hp, &["path"]))
            } else if let Some((plugin, files)) = self.volume_files(v) {
                let d = base.join("volumes").join(plugin).join(&name);
                std::fs::create_dir_all(&d)?;
                for (rel, content, mode) in files {
                    let p = d.join(&rel);
                    if let Some(parent) = p.parent() {
                        std::fs::create_dir_all(parent)?;
                    }
                    std::fs::write(&p, content)?;
                    set_mode(&p, mode)?;
                }
                d
            } else {
                continue;
            };
            self.volumes.insert(name, dir);
        }
        Ok(())
    }

    /// Keeps projected `serviceAccountToken` files fresh as the kubelet does: each is rewritten
    /// (atomically) once [`token_refresh_after`] of its lifetime has passed, until the pod stops.
    fn rotate_projected_tokens(&mut self) {
        let mut tokens = Vec::new();
        for v in self
            .pod
            .pointer("/spec/volumes")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let Some(dir) = self.volumes.get(str_at(v, &["name"])) else {
                continue;
            };
            for src in v
                .pointer("/projected/sources")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Some(t) = src.get("serviceAccountToken") {
                    let (audience, expiry) = token_projection(t);
                    tokens.push((dir.join(str_at(t, &["path"])), audience.to_string(), expiry));
                }
            }
        }
        for (path, audience, expiry) in tokens {
            let (k, pod, mut stop) = (self.k.clone(), self.pod.clone(), self.stop.clone());
            self.sidecars.push(tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(token_refresh_after(expiry)) => {}
                        _ = stop_requested(&mut stop) => return,
                    }
                    let Ok(token) = k.tokens.issue_for_pod(&k.store, &pod, &audience, expiry)
                    else {
                        continue;
                    };
                    // Same mode as the file it replaces, swapped in by a rename.
                    let tmp = path.with_extension("rotating");
                    let written = std::fs::write(&tmp, token).and_then(|()| {
                        let mode = std::fs::metadata(&path)?.permissions();
                        std::fs::set_permissions(&tmp, mode)?;
                        std::fs::rename(&tmp, &path)
                    });
                    if written.is_err() {
                        let _ = std::fs::remove_file(&tmp);
                    }
                }
            }));
        }
    }

    /// Files of configMap, secret, downwardAPI and projected volumes: (path, bytes, mode).
    #[allow(clippy::type_complexity)]
    fn volume_files(&self, v: &Value) -> Option<(&'static str, Vec<(String, Vec<u8>, u32)>)> {
        let default_mode = |src: &Value| {
            src.get("defaultMode")
                .and_then(Value::as_u64)
                .and_then(|m| u32::try_from(m).ok())
                .unwrap_or(0o644)
        };
        if let Some(src) = v.get("configMap") {
            let mode = default_mode(src);
            return Some((
                "kubernetes.io~configmap",
                self.source_files(src, "configmaps", mode),
            ));
        }
        if let Some(src) = v.get("secret") {
            let mode = default_mode(src);
            let mut s = src.clone();
            s["name"] = json!(str_at(src, &["secretName"]));
            return Some((
                "kubernetes.io~secret",
                self.source_files(&s, "secrets", mode),
            ));
        }
        if let Some(src) = v.get("projected") {
            let mode = default_mode(src);
            let mut files = Vec::new();
            for s in src
                .get("sources")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
            {
                if let Some(t) = s.get("serviceAccountToken") {
                    let (audience, expiry) = token_projection(t);
                    if let Ok(token) =
                        self.k
                            .tokens
                            .issue_for_pod(&self.k.store, &self.pod, audience, expiry)
                    {
                        files.push((str_at(t, &["path"]).to_string(), token.into_bytes(), mode));
                    }
                } else if let Some(c) = s.get("configMap") {
                    files.extend(self.source_files(c, "configmaps", mode));
                } else if let Some(c) = s.get("secret") {
                    files.extend(self.source_files(c, "secrets", mode));
                } else if let Some(d) = s.get("downwardAPI") {
                    files.extend(self.downward_files(d, mode));
                }
            }
            return Some(("kubernetes.io~projected", files));
        }
        if let Some(d) = v.get("downwardAPI") {
            let mode = default_mode(d);
            return Some(("kubernetes.io~downward-api", self.downward_files(d, mode)));
        }
        None
    }

    fn source_files(&self, src: &Value, storage: &str, mode: u32) -> Vec<(String, Vec<u8>, u32)> {
        use base64::Engine as _;
        let Some(obj) = self.k.store.get(storage, &self.ns, str_at(src, &["name"])) else {
            return Vec::new();
        };
        let mut data: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        for field in ["data", "binaryData"] {
            if let Some(m) = obj.get(field).and_then(Value::as_object) {
                for (k, v) in m {
                    let s = v.as_str().unwrap_or("");
                    let bytes = if storage == "secrets" || field == "binaryData" {
                        base64::engine::general_purpose::STANDARD
                            .decode(s)
                            .unwrap_or_default()
                    } else {
                        s.as_bytes().to_vec()
                    };
                    data.insert(k.clone(), bytes);
                }
            }
        }
        match src.get("items").and_then(Value::as_array) {
            Some(items) => items
                .iter()
                .filter_map(|i| {
                    let key = str_at(i, &["key"]);
                    let m = i
                        .get("mode")
                        .and_then(Value::as_u64)
                        .and_then(|m| u32::try_from(m).ok())
                        .unwrap_or(mode);
                    data.get(key)
                        .map(|b| (str_at(i, &["path"]).to_string(), b.clone(), m))
                })
                .collect(),
            None => data.into_iter().map(|(k, b)| (k, b, mode)).collect(),
        }
    }

    fn downward_files(&self, d: &Value, mode: u32) -> Vec<(String, Vec<u8>, u32)> {
        let facts = self.facts();
        d.get("items")
            .and_then(Value::as_array)
            .map(|items| {
                items
                    .iter()
                    .filter_map(|i| {
                        let fp = str_at(i, &["fieldRef", "fieldPath"]);
                        env::field_ref(&self.pod, &facts, fp)
                            .ok()
                            .map(|v| (str_at(i, &["path"]).to_string(), v.into_bytes(), mode))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    fn facts(&self) -> PodFacts {
        PodFacts {
            pod_ip: self.ip.map(|i| i.to_string()).unwrap_or_default(),
            host_ip: "127.0.0.1".into(),
            api_host: self.k.cfg.api_host.clone(),
            api_port: self.k.cfg.api_port,
        }
    }

    fn mounts(&self, c: &Value) -> Vec<HostMount> {
        c.get("volumeMounts")
            .and_then(Value::as_array)
            .map(|ms| {
                ms.iter()
                    .filter_map(|m| {
                        let name = str_at(m, &["name"]);
                        let dir = self.volumes.get(name)?;
                        let sub = str_at(m, &["subPath"]);
                        Some(HostMount {
                            name: name.to_string(),
                            mount_path: str_at(m, &["mountPath"]).to_string(),
                            host_path: if sub.is_empty() {
                                dir.clone()
                            } else {
                                dir.join(sub)
                            },
                            read_only: m.get("readOnly").and_then(Value::as_bool) == Some(true),
                        })
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    fn restart_policy(&self) -> String {
        let p = str_at(&self.pod, &["spec", "restartPolicy"]);
        if p.is_empty() {
            "Always".into()
        } else {
            p.to_string()
        }
    }

    async fn run_init_containers(&mut self) -> InitOutcome {
        let inits = self.init_containers();
        for (i, c) in inits.iter().enumerate() {
            let sidecar = str_at(c, &["restartPolicy"]) == "Always";
            if sidecar {
                match self.start_sidecar(i, c).await {
                    true => continue,
                    false => return InitOutcome::Stopped,
                }
            }
            // 0 at first; one more for each run a restarted sandbox asked for.
            let mut restarts = restart_count(&lock(&self.rt).init[i]);
            loop {
                if self.stopping() {
                    return InitOutcome::Stopped;
                }
                let exit = match self
                    .run_once(
                        c,
                        |rt: &mut Runtime, mut status: Value| {
                            // A restart keeps reporting how the previous run ended.
                            status["lastState"] = rt.init[i]["lastState"].clone();
                            rt.init[i] = status;
                        },
                        restarts,
                    )
                    .await
                {
                    Ok(exit) => exit,
                    Err(config_error) => {
                        let mut s = lock(&self.rt).init[i].clone();
                        s["state"] = waiting("CreateContainerConfigError", Some(config_error));
                        lock(&self.rt).init[i] = s;
                        if !self.publish() || !self.sleep(self.k.backoff(restarts)).await {
                            return InitOutcome::Stopped;
                        }
                        continue;
                    }
                };
                match exit {
                    Exit::Stopped => return InitOutcome::Stopped,
                    Exit::Code(0) => break,
                    Exit::Code(_) if self.restart_policy() == "Never" => {
                        return InitOutcome::Failed;
                    }
                    Exit::Code(_) => {
                        let delay = self.k.backoff(restarts);
                        {
                            let mut rt = lock(&self.rt);
                            let prev = rt.init[i].clone();
                            let mut s = prev.clone();
                            s["lastState"] = prev["state"].clone();
                            s["state"] = waiting(
                                "CrashLoopBackOff",
                                Some(format!(
                                    "back-off {} restarting failed container={} pod={}_{}({})",
                                    humantime::format_duration(delay),
                                    str_at(c, &["name"]),
                                    self.name,
                                    self.ns,
                                    self.uid
                                )),
                            );
                            s["ready"] = json!(false);
                            s["started"] = json!(false);
                            rt.init[i] = s;
                        }
                        if !self.publish() || !self.sleep(delay).await {
                            return InitOutcome::Stopped;
                        }
                        restarts += 1;
                    }
                }
            }
        }
        {
            let mut rt = lock(&self.rt);
            rt.set_condition("Initialized", true, None);
        }
        InitOutcome::Done
    }

    /// Sleeps unless the pod is stopped first; false if stopped.
    async fn sleep(&mut self, d: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(d) => true,
            _ = stop_requested(&mut self.stop) => false,
        }
    }

    /// Runs one container to completion: running → terminated, published in that order.
    /// `Err` is a configuration error (the container never started).
    async fn run_once(
        &mut self,
        c: &Value,
        set: impl Fn(&mut Runtime, Value),
        restarts: u32,
    ) -> Result<Exit, String> {
        let cid = random_hex(32);
        let started_at = now_time();
        let real = image_repository(str_at(c, &["image"])).ends_with(INIT_IMAGE_SUFFIX);
        let message_file = termination_message_file(self.root(), &self.uid, str_at(c, &["name"]));
        // A restarted container starts without its predecessor's message.
        let _ = std::fs::remove_file(&message_file);
        let mut child = if real { Some(self.spawn(c)?) } else { None };
        set(
            &mut lock(&self.rt),
            container_status(
                c,
                json!({"running": {"startedAt": started_at}}),
                false,
                restarts,
                &cid,
            ),
        );
        if !self.publish() {
            if let Some(ch) = child.as_mut() {
                terminate(&self.k, ch, 0).await;
            }
            return Ok(Exit::Stopped);
        }
        let exit = match child.as_mut() {
            Some(ch) => wait_or_stop(&self.k, ch, &mut self.stop).await,
            None => Exit::Code(0),
        };
        let Exit::Code(code) = exit else {
            return Ok(Exit::Stopped);
        };
        let mut term = json!({"terminated": {
            "exitCode": code,
            "reason": if code == 0 { "Completed" } else { "Error" },
            "startedAt": started_at,
            "finishedAt": now_time(),
            "containerID": format!("containerd://{cid}"),
        }});
        if let Some(message) = read_termination_message(&message_file) {
            term["terminated"]["message"] = json!(message);
        }
        set(
            &mut lock(&self.rt),
            container_status(c, term, code == 0, restarts, &cid),
        );
        // A success is published with whatever starts next (the next init container or the app
        // containers, at once); a failure now, before the back-off.
        if code != 0 && !self.publish() {
            return Ok(Exit::Stopped);
        }
        Ok(Exit::Code(code))
    }

    /// Starts a native sidecar (init container with `restartPolicy: Always`) and supervises it
    /// in the background. False if the pod is gone.
    async fn start_sidecar(&mut self, i: usize, c: &Value) -> bool {
        let real = image_repository(str_at(c, &["image"])).ends_with(INIT_IMAGE_SUFFIX);
        let cid = random_hex(32);
        let running = |restarts| {
            container_status(
                c,
                json!({"running": {"startedAt": now_time()}}),
                true,
                restarts,
                &cid,
            )
        };
        if !real {
            lock(&self.rt).init[i] = running(0);
            return self.publish();
        }
        let spawned = self.spawn(c);
        let mut child = match spawned {
            Ok(ch) => ch,
            Err(e) => {
                let mut s = lock(&self.rt).init[i].clone();
                s["state"] = waiting("CreateContainerConfigError", Some(e));
                lock(&self.rt).init[i] = s;
                return self.publish();
            }
        };
        lock(&self.rt).init[i] = running(0);
        if !self.publish() {
            terminate(&self.k, &mut child, 0).await;
            return false;
        }
        let k = self.k.clone();
        let mut stop = self.stop.clone();
        let rt = self.rt.clone();
        let (ns, name, uid) = (self.ns.clone(), self.name.clone(), self.uid.clone());
        let container = c.clone();
        let cmd = self.command(c);
        self.sidecars.push(tokio::spawn(async move {
            let mut restarts = 0u32;
            loop {
                let Exit::Code(code) = wait_or_stop(&k, &mut child, &mut stop).await else {
                    return;
                };
                let delay = k.backoff(restarts);
                {
                    let mut r = lock(&rt);
                    let mut s = r.init[i].clone();
                    s["lastState"] = json!({"terminated": {"exitCode": code,
                        "reason": if code == 0 {"Completed"} else {"Error"}, "finishedAt": now_time()}});
                    s["state"] = waiting("CrashLoopBackOff", None);
                    s["ready"] = json!(false);
                    r.init[i] = s;
                }
                publish(&k.store, &ns, &name, &uid, &rt);
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stop_requested(&mut stop) => return,
                }
                restarts += 1;
                let Ok(cmd) = &cmd else { return };
                match spawn_command(&k, cmd) {
                    Ok(ch) => child = ch,
                    Err(_) => return,
                }
                lock(&rt).init[i] = container_status(
                    &container,
                    json!({"running": {"startedAt": now_time()}}),
                    true,
                    restarts,
                    &random_hex(32),
                );
                publish(&k.store, &ns, &name, &uid, &rt);
            }
        }));
        true
    }

    /// The process to run for a container: binary, args, env, log file, working dir.
    fn command(&self, c: &Value) -> Result<ProcSpec, String> {
        let binary = self.k.cfg.init_binary.clone().ok_or_else(|| {
            "kube-dev has no init binary configured (--init-binary) to run this image".to_string()
        })?;
        let facts = self.facts();
        let mounts = self.mounts(c);
        let env = env::container_env(&self.k.store, &self.pod, c, &facts)?;
        let args: Vec<String> = env::container_args(c, &env)
            .iter()
            .map(|a| env::rewrite_path(a, &mounts))
            .collect();
        let mut final_env: Vec<(String, String)> = self.k.cfg.init_env.clone();
        let mut listen_port = DEFAULT_INIT_PORT.to_string();
        for (k, v) in env {
            if k == "APPROLE_INIT_LISTEN"
                && let Some((_, port)) = v.rsplit_once(':')
            {
                listen_port = port.to_string();
            }
            final_env.push((k, env::rewrite_path(&v, &mounts)));
        }
        final_env.retain(|(k, _)| k != "APPROLE_INIT_LISTEN" && k != "APPROLE_INIT_SOURCE_ADDRESS");
        final_env.push((
            "APPROLE_INIT_LISTEN".into(),
            format!("{}:{listen_port}", facts.pod_ip),
        ));
        final_env.push(("APPROLE_INIT_SOURCE_ADDRESS".into(), facts.pod_ip.clone()));
        // The container's terminationMessagePath, as a host file the kubelet reads after exit.
        final_env.retain(|(k, _)| k != TERMINATION_MESSAGE_ENV);
        final_env.push((
            TERMINATION_MESSAGE_ENV.into(),
            termination_message_file(self.root(), &self.uid, str_at(c, &["name"]))
                .to_string_lossy()
                .into_owned(),
        ));
        final_env.push(("HOSTNAME".into(), self.name.clone()));
        if let Ok(path) = std::env::var("PATH")
            && !final_env.iter().any(|(k, _)| k == "PATH")
        {
            final_env.push(("PATH".into(), path));
        }
        Ok(ProcSpec {
            binary,
            args,
            env: final_env,
            log: log_path(self.root(), &self.uid, str_at(c, &["name"])),
            cwd: pod_dir(self.root(), &self.uid),
        })
    }

    fn spawn(&self, c: &Value) -> Result<Child, String> {
        let spec = self.command(c)?;
        spawn_command(&self.k, &spec)
    }

    fn start_app_containers(&mut self) {
        let apps = self.app_containers();
        for (i, c) in apps.iter().enumerate() {
            let name = str_at(c, &["name"]).to_string();
            let record = self.record_mounts(c);
            let _ = write_app_record(self.root(), &self.uid, &name, &record);
            let mut rt = lock(&self.rt);
            let before = &rt.app[i];
            let mut status = container_status(
                c,
                json!({"running": {"startedAt": now_time()}}),
                true,
                restart_count(before),
                &random_hex(32),
            );
            status["lastState"] = before["lastState"].clone();
            rt.app[i] = status;
        }
        {
            let mut rt = lock(&self.rt);
            rt.phase = "Running";
            rt.set_condition("ContainersReady", true, None);
            rt.set_condition("Ready", true, None);
        }
        self.publish();
    }

    fn record_mounts(&self, c: &Value) -> Value {
        let mounts: Vec<Value> = self
            .mounts(c)
            .iter()
            .map(|m| {
                let mut files = Vec::new();
                collect_files(&m.host_path, &m.host_path, &mut files);
                json!({
                    "name": m.name,
                    "mountPath": m.mount_path,
                    "hostPath": m.host_path,
                    "readOnly": m.read_only,
                    "files": files,
                })
            })
            .collect();
        json!({
            "pod": self.name,
            "namespace": self.ns,
            "podUID": self.uid,
            "container": str_at(c, &["name"]),
            "recordedAt": now_time(),
            "mounts": mounts,
        })
    }

    /// Deletion: final container states, archive logs, remove dirs, release the IP, and the
    /// final delete (grace 0, UID precondition), as the kubelet does.
    async fn finish(mut self) {
        {
            let mut guard = lock(&self.rt);
            let rt = &mut *guard;
            for s in rt.init.iter_mut().chain(rt.app.iter_mut()) {
                if let Some(state) = stopped(s) {
                    s["state"] = state;
                    s["ready"] = json!(false);
                    s["started"] = json!(false);
                }
            }
            rt.set_condition("Ready", false, Some("PodCompleted"));
            rt.set_condition("ContainersReady", false, Some("PodCompleted"));
        }
        if self.ip.is_some() {
            self.publish();
        }
        let root = self.root().to_path_buf();
        let dir = pod_dir(&root, &self.uid);
        if dir.exists() {
            let archive =
                archive_dir(&root).join(format!("{}_{}_{}", self.ns, self.name, self.uid));
            for sub in ["logs", "app"] {
                let from = dir.join(sub);
                if from.exists() {
                    let _ = std::fs::create_dir_all(&archive);
                    let _ = std::fs::rename(&from, archive.join(sub));
                }
            }
            // In place: a few small files on tmpfs. Through `tokio::fs` a burst of deletions
            // started dozens of blocking threads, each with an allocator heap of its own.
            let _ = std::fs::remove_dir_all(&dir);
        }
        if let Some(ip) = self.ip.take() {
            self.k.release_ip(ip);
        }
        let uid = self.uid.clone();
        let _ = self
            .k
            .store
            .update("pods", &self.ns, &self.name, false, |cur| {
                if uid_of(cur) != uid {
                    return Err(());
                }
                let finalizers = cur
                    .pointer("/metadata/finalizers")
                    .and_then(Value::as_array)
                    .is_some_and(|f| !f.is_empty());
                if finalizers {
                    let mut p = cur.clone();
                    let meta = metadata_mut(&mut p);
                    meta.insert("deletionGracePeriodSeconds".into(), json!(0));
                    meta.entry("deletionTimestamp").or_insert(json!(now_time()));
                    return Ok(Update::Put(p));
                }
                Ok(Update::Delete(cur.clone()))
            });
    }
}

fn publish(store: &Store, ns: &str, name: &str, uid: &str, rt: &Mutex<Runtime>) -> bool {
    let res = store.update("pods", ns, name, false, |cur| {
        if uid_of(cur) != uid {
            return Err(());
        }
        // The pod with its new status: the old status is not copied only to be replaced.
        let mut p: serde_json::Map<String, Value> = cur
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(k, _)| *k != "status")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        p.insert("status".into(), lock(rt).status(cur));
        Ok(Update::Put(Value::Object(p)))
    });
    matches!(res, Ok(Some(_)))
}

/// A process to start.
#[derive(Debug, Clone)]
struct ProcSpec {
    binary: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    log: PathBuf,
    cwd: PathBuf,
}

fn spawn_command(k: &Inner, spec: &ProcSpec) -> Result<Child, String> {
    if let Some(parent) = spec.log.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("log dir: {e}"))?;
    }
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&spec.log)
        .map_err(|e| format!("log file: {e}"))?;
    let err = out.try_clone().map_err(|e| format!("log file: {e}"))?;
    let child = Command::new(&spec.binary)
        .args(&spec.args)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&spec.cwd)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("failed to start {}: {e}", spec.binary.display()))?;
    if let Some(pid) = child.id() {
        lock(&k.groups).insert(pid);
    }
    Ok(child)
}

/// Resolves with the grace period once the pod is to stop (0 if the kubelet is going away).
async fn stop_requested(stop: &mut watch::Receiver<Option<i64>>) -> i64 {
    match stop.wait_for(Option::is_some).await {
        Ok(g) => g.unwrap_or(0),
        Err(_) => 0,
    }
}

/// Waits for the process to exit, or terminates it when the pod is stopped.
async fn wait_or_stop(
    k: &Inner,
    child: &mut Child,
    stop: &mut watch::Receiver<Option<i64>>,
) -> Exit {
    let pgid = child.id();
    tokio::select! {
        status = child.wait() => {
            // Whatever the container left behind in its group goes with it.
            if let Some(g) = pgid {
                signal_group(g, Signal::KILL);
                lock(&k.groups).remove(&g);
            }
            let code = status.ok().and_then(|s| {
                use std::os::unix::process::ExitStatusExt as _;
                s.code().or_else(|| s.signal().map(|sig| 128 + sig))
            }).unwrap_or(1);
            Exit::Code(code)
        }
        grace = stop_requested(stop) => {
            terminate(k, child, grace).await;
            Exit::Stopped
        }
    }
}

/// SIGTERM to the process group, SIGKILL after the grace period.
async fn terminate(k: &Inner, child: &mut Child, grace_secs: i64) {
    let Some(pgid) = child.id() else {
        return;
    };
    signal_group(pgid, Signal::TERM);
    let grace = Duration::from_secs(u64::try_from(grace_secs).unwrap_or(0));
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        let _ = child.start_kill();
        let _ = child.wait().await;
    }
    signal_group(pgid, Signal::KILL);
    lock(&k.groups).remove(&pgid);
}

/// `kill(-pgid, sig)`: signals every process of a container's group. A group that is already
/// gone (ESRCH) is fine: there is nothing left to stop. Never signals group 0 or 1 (those would
/// mean "our own group" and "every process we may signal").
fn signal_group(pgid: u32, sig: Signal) {
    let Some(pid) = i32::try_from(pgid)
        .ok()
        .filter(|&p| p > 1)
        .and_then(Pid::from_raw)
    else {
        return;
    };
    if let Err(e) = kill_process_group(pid, sig)
        && e != Errno::SRCH
    {
        tracing::debug!(pgid, error = %e, "signalling a container's process group failed");
    }
}

/// Audience and lifetime of a `serviceAccountToken` projection. A missing lifetime is taken as
/// 3607 s (the API server defaults it to 3600; its own `kube-api-access` volume asks for 3607).
fn token_projection(t: &Value) -> (&str, i64) {
    let expiry = t
        .get("expirationSeconds")
        .and_then(Value::as_i64)
        .unwrap_or(3607);
    (str_at(t, &["audience"]), expiry)
}

/// When the kubelet renews a projected token: after 80 % of its lifetime (at most 24 h), as
/// the real kubelet's token manager does.
pub fn token_refresh_after(expiration_seconds: i64) -> Duration {
    let secs = u64::try_from(expiration_seconds.max(600)).unwrap_or(600);
    Duration::from_secs((secs * 4 / 5).min(24 * 3600))
}

fn set_mode(p: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
}

fn collect_files(base: &Path, dir: &Path, out: &mut Vec<Value>) {
    use std::os::unix::fs::PermissionsExt as _;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = entries.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let p = e.path();
        let Ok(meta) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        let rel = p.strip_prefix(base).unwrap_or(&p).display().to_string();
        if meta.is_dir() {
            collect_files(base, &p, out);
        } else {
            out.push(json!({
                "path": rel,
                "mode": format!("{:04o}", meta.permissions().mode() & 0o7777),
                "size": meta.len(),
            }));
        }
    }
}

fn write_app_record(
    root: &Path,
    uid: &str,
    container: &str,
    record: &Value,
) -> std::io::Result<()> {
    let path = app_record_path(root, uid, container);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&path, serde_json::to_vec_pretty(record).unwrap_or_default())?;
    // The app's "output": what it found, never file contents.
    let mut log = format!("kube-dev: simulated container {container:?} started\n");
    for m in record["mounts"].as_array().into_iter().flatten() {
        log.push_str(&format!(
            "mount {} ({}){}\n",
            str_at(m, &["mountPath"]),
            str_at(m, &["name"]),
            if m["readOnly"] == json!(true) {
                " read-only"
            } else {
                ""
            }
        ));
        for f in m["files"].as_array().into_iter().flatten() {
            log.push_str(&format!(
                "  {} mode={} size={}\n",
                str_at(f, &["path"]),
                str_at(f, &["mode"]),
                f["size"]
            ));
        }
    }
    let lp = log_path(root, uid, container);
    if let Some(parent) = lp.parent() {
        std::fs::create_dir_all(parent)?;
    }
    use std::io::Write as _;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(lp)?
        .write_all(log.as_bytes())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (house rule)
mod tests {
    use super::*;

    #[test]
    fn termination_messages_are_read_like_the_kubelet_does() {
        let dir = tempfile::tempdir().unwrap();
        let file = termination_message_file(dir.path(), "uid-1", "vault-approle-init");
        assert!(file.starts_with(pod_dir(dir.path(), "uid-1")));
        assert_eq!(read_termination_message(&file), None, "no file");
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, "").unwrap();
        assert_eq!(read_termination_message(&file), None, "empty");
        std::fs::write(&file, r#"{"status":"delivered"}"#).unwrap();
        assert_eq!(
            read_termination_message(&file).as_deref(),
            Some(r#"{"status":"delivered"}"#)
        );
        std::fs::write(&file, "x".repeat(TERMINATION_MESSAGE_MAX + 10)).unwrap();
        assert_eq!(
            read_termination_message(&file).map(|m| m.len()),
            Some(TERMINATION_MESSAGE_MAX)
        );
    }

    #[test]
    fn projected_tokens_are_renewed_at_four_fifths_of_their_lifetime() {
        assert_eq!(token_refresh_after(600), Duration::from_secs(480));
        assert_eq!(token_refresh_after(3607), Duration::from_secs(2885));
        assert_eq!(
            token_refresh_after(60),
            Duration::from_secs(480),
            "600 s at least"
        );
        assert_eq!(
            token_refresh_after(7 * 24 * 3600),
            Duration::from_secs(24 * 3600)
        );
    }
}

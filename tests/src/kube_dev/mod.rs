//! kube-dev: a local Kubernetes API server with a kubelet simulator, so that the unmodified
//! controller (kube-rs `Client`, `watcher`, `Recorder`, `Api::patch`) and real `kubectl` can be
//! exercised on one machine without a cluster.
//!
//! ```text
//!   kube-rs / kubectl ──HTTPS (own CA, bearer token)──▶ api (routing, verbs, Status errors)
//!                                                        │        │
//!                                    admission webhooks ◀┘        ▼
//!                                                      store (Value objects, one rv counter,
//!                                                        │     watch history window)
//!                                                        ▼ pod changes
//!                                                      kubelet (node kube-dev-node): pod IPs
//!                                                      127.x.y.z, volumes under root_dir,
//!                                                      approle-init as a real process, app
//!                                                      containers simulated; on a runtime of
//!                                                      its own (`kubelet_threads`, default 1)
//! ```
//!
//! Start it in-process with [`KubeDev::start`] (the `kube-dev` binary does the same), use
//! [`Running::client`] or the kubeconfig it wrote, and inspect what pods saw through
//! [`Running::pod_volume_dir`], [`Running::container_log`], [`Running::app_record`] and
//! [`Running::log_files`].
//!
//! ```text
//! let kd = KubeDev::start(Config {
//!     init_binary: Some(approle_init_path),            // runs for images ending in approle-init
//!     backoff_base: Duration::from_millis(50),         // init container restart backoff
//!     ..Config::default()
//! }).await?;
//! kd.set_service_address("approle-system/approle-controller", webhook_addr);
//! let client = kd.client().await?;                     // or KUBECONFIG=kd.kubeconfig_path
//! // ... create pods, watch them ...
//! let token = std::fs::read(kd.pod_volume_dir(&uid, "vault-approle").join("token"))?;
//! for log in kd.log_files() { /* scan for leaked secrets */ }
//! kd.shutdown(Duration::from_secs(2)).await;
//! ```
//!
//! Layout under `root_dir` (like the kubelet's `/var/lib/kubelet`):
//! `pods/<uid>/volumes/kubernetes.io~empty-dir/<name>`, `pods/<uid>/volumes/kubernetes.io~projected/<name>`,
//! `pods/<uid>/logs/<container>.log`, `pods/<uid>/app/<container>.json`, and
//! `archive/<ns>_<name>_<uid>/{logs,app}` for pods that were deleted.
//!
//! ## Where kube-dev differs from a real cluster (on purpose, or not yet modelled)
//!
//! * One node, no scheduler: every pod is bound to `kube-dev-node` at once; no resources,
//!   probes, images or networking. App containers are simulated (they record what they see);
//!   only init containers whose image repository ends in `approle-init` run, as the configured
//!   binary (their `command` is ignored), sharing this host's network and filesystem (pod IPs
//!   are 127.x.y.z; paths under volume mounts are rewritten to the host dirs).
//! * Authentication: the admin bearer token (all powerful) and the service-account tokens it
//!   signs; no RBAC, no client certificates.
//! * Lists are one page (`limit`/`continue` ignored); `resourceVersion`/`resourceVersionMatch`
//!   on GET and LIST serve the latest state; a watch from a future version starts now.
//! * `fieldValidation` is accepted but unknown fields are kept, not rejected; bodies are JSON
//!   only (no YAML, protobuf or CBOR); server-side apply treats lists as atomic.
//! * No garbage collector (ownerReferences are stored, not acted on), no `pods/binding`,
//!   `pods/exec`, `pods/eviction` or `pods/portforward`; no Services, Endpoints or Nodes.
//! * Webhooks: mutating only, pod CREATE only, no reinvocation; `service` references resolve
//!   through [`Config::service_addresses`] / [`Running::set_service_address`].
//! * A lost pod sandbox happens only on request: setting or changing the annotation
//!   `kube-dev.approle-injector.io/restart-sandbox` on a running pod (see [`kubelet`]); the new
//!   sandbox always gets a new IP (a real network plugin usually, not always, gives another).
//!   Native sidecars are not restarted with it.

pub mod admission;
pub mod api;
pub mod env;
pub mod events;
pub mod kinds;
pub mod kubelet;
pub mod logs;
pub mod managed;
pub mod openapi;
pub mod patch;
pub mod resources;
pub mod selector;
pub mod status;
pub mod store;
pub mod table;
pub mod tls;
pub mod tokens;
pub mod util;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use self::kubelet::{Kubelet, KubeletConfig};
use self::store::Store;
use self::tokens::TokenIssuer;

/// The node every pod is scheduled to.
pub const NODE_NAME: &str = "kube-dev-node";

/// Namespaces that exist from the start (each with a `default` ServiceAccount).
pub const INITIAL_NAMESPACES: &[&str] =
    &["default", "kube-system", "kube-public", "kube-node-lease"];

/// kube-dev settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to listen on (loopback; port 0 picks one).
    pub listen: SocketAddr,
    /// Root of the kubelet's pod dirs; `None` = a temporary dir removed on drop.
    pub root_dir: Option<PathBuf>,
    /// Where to write the kubeconfig; `None` = `<root_dir>/kubeconfig`.
    pub kubeconfig_out: Option<PathBuf>,
    /// Binary run for init containers whose image repository ends in `approle-init`.
    pub init_binary: Option<PathBuf>,
    /// Extra environment for those processes (e.g. `RUST_LOG`); the pod's env wins.
    pub init_env: Vec<(String, String)>,
    /// How many changes the watch history keeps (older resourceVersions get 410 Expired).
    pub watch_history: usize,
    /// BOOKMARK interval for watches that allow them.
    pub bookmark_interval: Duration,
    /// Server-side cap on every watch's lifetime (the real server ends watches after its
    /// request timeout too); `None` = only the client's `timeoutSeconds`.
    pub max_watch_duration: Option<Duration>,
    /// First restart delay of a failed init container (doubles per restart).
    pub backoff_base: Duration,
    /// Restart delay cap.
    pub backoff_max: Duration,
    /// Webhook `service` references (`namespace/name`) → loopback address serving them.
    pub service_addresses: HashMap<String, SocketAddr>,
    /// Worker threads of the kubelet simulator's own runtime; 0 runs it on the API server's.
    pub kubelet_threads: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            root_dir: None,
            kubeconfig_out: None,
            init_binary: None,
            init_env: Vec::new(),
            watch_history: 10_000,
            bookmark_interval: Duration::from_secs(10),
            max_watch_duration: None,
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            service_addresses: HashMap::new(),
            kubelet_threads: 1,
        }
    }
}

/// Why kube-dev could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Binding the listener or writing files failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Generating the PKI failed.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// Generating the token signing key failed.
    #[error("token signing key generation failed")]
    Crypto,
    /// Building a client from the kubeconfig failed.
    #[error("kube client: {0}")]
    Client(String),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// Entry point.
#[derive(Debug)]
pub struct KubeDev;

/// A running kube-dev. Dropping it stops the server and kills every process it started;
/// [`Running::shutdown`] does so gracefully.
#[derive(Debug)]
pub struct Running {
    /// `https://127.0.0.1:PORT`.
    pub url: String,
    /// The bound address.
    pub addr: SocketAddr,
    /// The kubeconfig written at start.
    pub kubeconfig_path: PathBuf,
    /// The CA certificate (PEM) clients must trust.
    pub ca_pem: String,
    /// Root of pod dirs and logs.
    pub root_dir: PathBuf,
    admin_token: String,
    admission: admission::Admission,
    store: Arc<Store>,
    kubelet: Kubelet,
    tokens: Arc<TokenIssuer>,
    handle: axum_server::Handle<SocketAddr>,
    server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    _tmp: Option<tempfile::TempDir>,
}

fn random_token() -> String {
    use rand::Rng as _;
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    let s: String = (0..32)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect();
    format!("kube-dev-admin.{s}")
}

/// Creates a namespace and its `default` ServiceAccount directly in the store.
pub(crate) fn seed_namespace(store: &Store, name: &str) {
    let mut ns = json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": name, "uid": util::new_uid(), "creationTimestamp": util::now_time()}});
    kinds::default_namespace(&mut ns);
    let _ = store.create("namespaces", ns, false);
    seed_service_account(store, name);
}

/// Creates the `default` ServiceAccount of a namespace (what the serviceaccount controller does).
pub(crate) fn seed_service_account(store: &Store, ns: &str) {
    let sa = json!({"apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"name": "default", "namespace": ns, "uid": util::new_uid(),
                     "creationTimestamp": util::now_time()}});
    let _ = store.create("serviceaccounts", sa, false);
}

impl KubeDev {
    /// Starts the API server on the current tokio runtime, and the kubelet on a runtime of its
    /// own unless [`Config::kubelet_threads`] is 0.
    pub async fn start(cfg: Config) -> Result<Running, Error> {
        let (root_dir, tmp) = match &cfg.root_dir {
            Some(d) => {
                std::fs::create_dir_all(d).map_err(io_err(format!("create {}", d.display())))?;
                (d.clone(), None)
            }
            None => {
                let t = tempfile::Builder::new()
                    .prefix("kube-dev-")
                    .tempdir()
                    .map_err(io_err("create temp root dir"))?;
                (t.path().to_path_buf(), Some(t))
            }
        };
        let listener = std::net::TcpListener::bind(cfg.listen)
            .map_err(io_err(format!("bind {}", cfg.listen)))?;
        listener
            .set_nonblocking(true)
            .map_err(io_err("set_nonblocking"))?;
        let addr = listener.local_addr().map_err(io_err("local_addr"))?;
        let url = format!("https://{addr}");
        let pki = tls::generate()?;
        let admin_token = random_token();
        let kubeconfig_path = cfg
            .kubeconfig_out
            .clone()
            .unwrap_or_else(|| root_dir.join("kubeconfig"));
        tls::write_private(
            &kubeconfig_path,
            &tls::kubeconfig(&url, &pki.ca_pem, &admin_token),
        )
        .map_err(io_err(format!("write {}", kubeconfig_path.display())))?;

        let store = Arc::new(Store::new(cfg.watch_history));
        for ns in INITIAL_NAMESPACES {
            seed_namespace(&store, ns);
        }
        let tokens = Arc::new(TokenIssuer::new(NODE_NAME).map_err(|_| Error::Crypto)?);
        let kubelet = Kubelet::start(
            KubeletConfig {
                node_name: NODE_NAME.to_string(),
                root_dir: root_dir.clone(),
                init_binary: cfg.init_binary.clone(),
                init_env: cfg.init_env.clone(),
                backoff_base: cfg.backoff_base,
                backoff_max: cfg.backoff_max,
                api_host: addr.ip().to_string(),
                api_port: addr.port(),
                threads: cfg.kubelet_threads,
            },
            store.clone(),
            tokens.clone(),
        )
        .map_err(io_err("start the kubelet's runtime"))?;
        let admission = admission::Admission::new(cfg.service_addresses.clone());
        let state = Arc::new(api::ApiState {
            store: store.clone(),
            admin_token: admin_token.clone(),
            server_address: addr.to_string(),
            bookmark_interval: cfg.bookmark_interval,
            max_watch_duration: cfg.max_watch_duration,
            root_dir: root_dir.clone(),
            tokens: tokens.clone(),
            admission: admission.clone(),
        });
        let handle: axum_server::Handle<SocketAddr> = axum_server::Handle::new();
        let server = axum_server::from_tcp_rustls(
            listener,
            axum_server::tls_rustls::RustlsConfig::from_config(pki.server_config.clone()),
        )
        .map_err(io_err("serve"))?
        // TCP_NODELAY, as Go's net package sets on every connection of the real API server:
        // watch events are small writes, and Nagle's algorithm held one back until the client's
        // delayed ACK (up to 40 ms) whenever the one before was still unacknowledged.
        .map(|tls| tls.acceptor(axum_server::accept::NoDelayAcceptor::new()))
        .handle(handle.clone());
        let app = api::router(state);
        let task = tokio::spawn(server.serve(app.into_make_service()));
        Ok(Running {
            url,
            addr,
            kubeconfig_path,
            ca_pem: pki.ca_pem,
            root_dir,
            admin_token,
            admission,
            store,
            kubelet,
            tokens,
            handle,
            server: Some(task),
            _tmp: tmp,
        })
    }
}

impl Running {
    /// A kube-rs client from the kubeconfig kube-dev wrote (as the controller builds it).
    pub async fn client(&self) -> Result<kube::Client, Error> {
        let kc = kube::config::Kubeconfig::read_from(&self.kubeconfig_path)
            .map_err(|e| Error::Client(e.to_string()))?;
        let config =
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| Error::Client(e.to_string()))?;
        kube::Client::try_from(config).map_err(|e| Error::Client(e.to_string()))
    }

    /// The admin bearer token (also in the kubeconfig), for raw HTTP clients in tests.
    pub fn bearer_token(&self) -> &str {
        &self.admin_token
    }

    /// Host dir of a pod's emptyDir volume.
    pub fn pod_volume_dir(&self, uid: &str, volume: &str) -> PathBuf {
        kubelet::empty_dir_path(&self.root_dir, uid, volume)
    }

    /// Host dir of a pod's projected volume.
    pub fn pod_projected_dir(&self, uid: &str, volume: &str) -> PathBuf {
        kubelet::pod_dir(&self.root_dir, uid)
            .join("volumes")
            .join("kubernetes.io~projected")
            .join(volume)
    }

    /// The log file of a container of a live pod (stdout and stderr, all restarts).
    pub fn container_log(&self, uid: &str, container: &str) -> PathBuf {
        logs::log_path(&self.root_dir, uid, container)
    }

    /// What a simulated app container found in its volume mounts (JSON).
    pub fn app_record(&self, uid: &str, container: &str) -> PathBuf {
        kubelet::app_record_path(&self.root_dir, uid, container)
    }

    /// Every container log file, of live pods and of deleted ones (archived).
    pub fn log_files(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for base in [
            self.root_dir.join("pods"),
            kubelet::archive_dir(&self.root_dir),
        ] {
            let Ok(entries) = std::fs::read_dir(&base) else {
                continue;
            };
            for e in entries.flatten() {
                collect_logs(&e.path().join("logs"), &mut out);
            }
        }
        out.sort();
        out
    }

    /// Maps a webhook `service` reference (`namespace/name`) to a loopback address, e.g. once
    /// the controller serving it has bound its port. Replaces an earlier mapping.
    pub fn set_service_address(&self, service: &str, addr: SocketAddr) {
        self.admission
            .services
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(service.to_string(), addr);
    }

    /// The object store (for assertions that bypass HTTP).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The service-account token issuer.
    pub fn token_issuer(&self) -> &TokenIssuer {
        &self.tokens
    }

    /// Stops every pod (SIGTERM, SIGKILL after `grace`), then the server.
    pub async fn shutdown(mut self, grace: Duration) {
        self.kubelet.stop_all(grace).await;
        self.handle.graceful_shutdown(Some(Duration::from_secs(1)));
        if let Some(task) = self.server.take() {
            let _ = task.await;
        }
    }
}

fn collect_logs(dir: &Path, out: &mut Vec<PathBuf>) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        out.extend(
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "log")),
        );
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.kubelet.kill_all();
        self.handle.shutdown();
    }
}

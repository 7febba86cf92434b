//! Process harness shared by the end-to-end tests and the sandbox.
//!
//! ```text
//!  Stack::start ─▶ vault-dev (process) ─┐
//!               ─▶ kube-dev  (process) ─┼─▶ configure Vault (approle mount, policies, role,
//!                                       │   controller token) and the injector CA
//!               ─▶ approle-controller (process, plain kubeconfig, webhook on 127.0.0.1:<port>)
//!                    └▶ MutatingWebhookConfiguration approle-injector → https://127.0.0.1:<port>/mutate
//!                       (the controller fills in its caBundle from the CA Secret it manages)
//!  Tests create plain annotated pods; kube-dev calls the webhook, which injects them.
//!  kube-dev's kubelet runs approle-init as a process per pod, on the pod's own 127.x.y.z address.
//! ```
//!
//! Every process writes its stdout and stderr to a file in the stack's directory (kube-dev keeps
//! container logs under its root dir), so a test can scan all captured output for secrets.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use approle_shared::annotations::InjectionSpec;
use approle_shared::inject::{self, InjectConfig};
use approle_shared::tls::Ca;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::Instant;

/// Root token of every vault-dev the harness starts.
pub const ROOT_TOKEN: &str = "root-token-for-tests";
/// The AppRole the harness configures.
pub const ROLE: &str = "web";
/// Policy the role's tokens get.
pub const ROLE_POLICY: &str = "web-kv";
/// The controller's own namespace (its pods are never mutated; its CA Secret lives there).
pub const CONTROLLER_NAMESPACE: &str = "approle-system";
/// The MutatingWebhookConfiguration the harness registers and the controller keeps current.
pub const WEBHOOK_CONFIG: &str = "approle-injector";
/// The controller's CA Secret (its default name).
pub const CA_SECRET: &str = "approle-injector-ca";
/// The controllers' leader-election Lease (in [`CONTROLLER_NAMESPACE`], the default name).
pub const LEADER_LEASE: &str = "approle-controller";
/// Init container image: kube-dev runs approle-init for images ending in `approle-init`.
pub const INIT_IMAGE: &str = "ghcr.io/approle-injector/approle-init:dev";
/// The authorization policy a stack gets unless [`StackOptions::policy`] says otherwise: every
/// role in every namespace.
pub const ALLOW_ALL_POLICY: &str = "rules:\n  - roles: [\"*\"]\n    namespaces: [\"*\"]\n";
/// The controller's service account (Kubernetes auth) in [`CONTROLLER_NAMESPACE`].
pub const CONTROLLER_SERVICE_ACCOUNT: &str = "approle-controller";
/// The Vault role the controller logs in as (Kubernetes and AppRole auth) and its policy.
pub const CONTROLLER_ROLE: &str = "approle-controller";

/// Installs the ring provider (idempotent).
pub fn install_crypto() {
    approle_shared::tls::install_crypto_provider();
}

/// Path of a binary built from this workspace, next to the running test or sandbox binary.
pub fn bin_path(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the current executable")?;
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    if !path.is_file() {
        bail!(
            "{} is not built; run `cargo build --workspace --bins` (same profile) first",
            path.display()
        );
    }
    Ok(path)
}

/// A child process whose output goes to a log file. Killed when dropped.
#[derive(Debug)]
pub struct Proc {
    /// Short name (also the log file's stem).
    pub name: String,
    /// Log file with stdout and stderr.
    pub log: PathBuf,
    child: Child,
    /// The tasks copying stdout and stderr into the log: they end at EOF, after the process.
    pumps: Vec<tokio::task::JoinHandle<()>>,
}

impl Proc {
    /// Starts `cmd`, logging to `<dir>/<name>.log`, and waits (until `deadline`) for a stdout line
    /// starting with `ready_prefix` if given; returns that line too.
    pub async fn spawn(
        name: &str,
        mut cmd: Command,
        dir: &Path,
        ready_prefix: Option<&str>,
        timeout: Duration,
    ) -> anyhow::Result<(Self, Option<String>)> {
        let log = dir.join(format!("{name}.log"));
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let mut child = cmd.spawn().with_context(|| format!("starting {name}"))?;
        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .await
            .with_context(|| format!("opening {}", log.display()))?;
        let file = std::sync::Arc::new(tokio::sync::Mutex::new(file));
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<String>();
        let mut pumps = Vec::new();
        if let Some(out) = child.stdout.take() {
            let ready = ready_prefix.map(|p| (p.to_owned(), ready_tx));
            pumps.push(tokio::spawn(pump(out, file.clone(), ready)));
        }
        if let Some(err) = child.stderr.take() {
            pumps.push(tokio::spawn(pump(err, file.clone(), None)));
        }
        let mut proc = Proc {
            name: name.to_owned(),
            log,
            child,
            pumps,
        };
        if ready_prefix.is_none() {
            return Ok((proc, None));
        }
        match tokio::time::timeout(timeout, ready_rx).await {
            Ok(Ok(line)) => Ok((proc, Some(line))),
            _ => {
                let status = proc.child.try_wait().ok().flatten();
                let log = tokio::fs::read_to_string(&proc.log)
                    .await
                    .unwrap_or_default();
                Err(anyhow!(
                    "{name} did not become ready (exit: {status:?}); its output:\n{log}"
                ))
            }
        }
    }

    /// Process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Sends SIGTERM (through `kill`, as `unsafe` is not allowed here).
    pub fn terminate(&self) {
        self.signal("TERM");
    }

    /// Sends a signal by name (`STOP`, `CONT`, `TERM`, …) through `kill`.
    pub fn signal(&self, name: &str) {
        if let Some(pid) = self.pid() {
            let _ = std::process::Command::new("kill")
                .args([&format!("-{name}"), &pid.to_string()])
                .status();
        }
    }

    /// Waits for exit until `timeout`.
    /// Once it has exited, its whole output is in the log (the copying tasks have reached EOF,
    /// unless a child process of its own still holds the pipes open).
    pub async fn wait(&mut self, timeout: Duration) -> anyhow::Result<std::process::ExitStatus> {
        let status = tokio::time::timeout(timeout, self.child.wait())
            .await
            .map_err(|_| anyhow!("{} did not exit within {timeout:?}", self.name))?
            .with_context(|| format!("waiting for {}", self.name))?;
        for pump in std::mem::take(&mut self.pumps) {
            let _ = tokio::time::timeout(Duration::from_secs(5), pump).await;
        }
        Ok(status)
    }

    /// Sends SIGTERM and waits (blocking, for use in `Drop`) until the process exits or `timeout`
    /// passes; then kills it.
    pub fn stop_blocking(&mut self, timeout: Duration) {
        self.terminate();
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.start_kill();
    }

    /// The `addr=` of the last output line containing `marker` (servers log where they listen).
    pub fn logged_addr(&self, marker: &str) -> Option<String> {
        self.output()
            .lines()
            .rfind(|l| l.contains(marker))
            .and_then(|l| ready_field(l, "addr"))
    }

    /// True while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Kills the process now.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    /// The output captured so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until an output line contains every one of `parts`.
    pub async fn wait_line(&self, parts: &[&str], timeout: Duration) -> anyhow::Result<()> {
        let what = format!("a line with {parts:?} in {}", self.log.display());
        wait_for(&what, timeout, || async {
            self.output()
                .lines()
                .any(|l| parts.iter().all(|p| l.contains(p)))
                .then_some(())
        })
        .await
    }
}

/// Copies a child's output into its log file line by line; with `ready`, sends the first line
/// starting with the prefix.
async fn pump(
    stream: impl tokio::io::AsyncRead + Unpin,
    file: std::sync::Arc<tokio::sync::Mutex<tokio::fs::File>>,
    mut ready: Option<(String, tokio::sync::oneshot::Sender<String>)>,
) {
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        // tokio's File writes in the background: flush, so a reader of the log sees the line.
        let mut file = file.lock().await;
        let _ = file.write_all(format!("{line}\n").as_bytes()).await;
        let _ = file.flush().await;
        drop(file);
        if ready
            .as_ref()
            .is_some_and(|(p, _)| line.starts_with(p.as_str()))
            && let Some((_, tx)) = ready.take()
        {
            let _ = tx.send(line);
        }
    }
}

/// Value of `key=` in a ready line (`... key=value ...`).
pub fn ready_field(line: &str, key: &str) -> Option<String> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")).map(str::to_owned))
}

/// Polls `check` until it returns `Some` or `timeout` passes.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    let mut delay = Duration::from_millis(10);
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(200));
    }
}

/// Value of a pod annotation.
pub fn annotation(p: &Pod, key: &str) -> Option<String> {
    p.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .cloned()
}

/// True once the controller recorded the pod's delivery.
pub fn delivered(p: &Pod) -> bool {
    annotation(p, approle_shared::annotations::STATUS).as_deref() == Some("delivered")
}

/// A token a pod received, proven to work.
#[derive(Debug)]
pub struct PodToken {
    /// The pod's IP, where Vault accepts the token from.
    pub ip: String,
    /// The token.
    pub token: String,
    /// Its accessor, as Vault reports it.
    pub accessor: String,
}

/// The repository's `manifests/` directory.
pub fn manifests_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests")
}

/// The pod webhook (`inject.vault-approle.io`) of `manifests/base/mutatingwebhook.yaml`, calling
/// `url` instead of the in-cluster Service.
pub fn manifest_pod_webhook(url: &str) -> anyhow::Result<Value> {
    let path = manifests_dir().join("base/mutatingwebhook.yaml");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let config: Value =
        serde_yaml_ng::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let mut hook = config["webhooks"]
        .as_array()
        .and_then(|hooks| {
            hooks
                .iter()
                .find(|h| h["name"] == "inject.vault-approle.io")
        })
        .cloned()
        .ok_or_else(|| anyhow!("{}: no webhook inject.vault-approle.io", path.display()))?;
    hook["clientConfig"] = json!({"url": url});
    Ok(hook)
}

/// How the harness's controller logs in to Vault.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ControllerAuth {
    /// A token created by root, in a file (`--vault-token-file`): the default.
    #[default]
    TokenFile,
    /// Kubernetes auth: vault-dev's `auth/kubernetes` reviews tokens with kube-dev, and the
    /// controller logs in with a TokenRequest token of service account
    /// [`CONTROLLER_SERVICE_ACCOUNT`] written to a file (its "projected" token).
    Kubernetes {
        /// `token_ttl` of the Vault role, e.g. `3s`.
        token_ttl: String,
        /// `token_max_ttl` of the Vault role, e.g. `30s`.
        token_max_ttl: String,
    },
    /// AppRole auth with role [`CONTROLLER_ROLE`]: role_id and secret_id files.
    AppRole,
}

/// Options of a [`Stack`].
#[derive(Debug, Clone)]
pub struct StackOptions {
    /// Start kube-dev (needed by the controller).
    pub kube: bool,
    /// Start the controller too.
    pub controller: bool,
    /// Extra kube-dev arguments.
    pub kube_args: Vec<String>,
    /// Extra controller arguments.
    pub controller_args: Vec<String>,
    /// How long the init container waits for a push.
    pub init_timeout: String,
    /// The controller's authorization policy file (YAML, written as is); `None`:
    /// [`ALLOW_ALL_POLICY`].
    pub policy: Option<String>,
    /// How the controller logs in to Vault.
    pub controller_auth: ControllerAuth,
    /// Run vault-dev with TLS (its own CA; the harness's Vault client trusts it).
    pub vault_tls: bool,
    /// With `vault_tls`: give the controller vault-dev's CA (`--vault-cacert`).
    pub controller_trusts_vault_ca: bool,
    /// What kube-dev's kubelet runs for the init container image; `None`: approle-init. A test
    /// gives a stand-in to make an init container behave as approle-init cannot be made to.
    pub init_binary: Option<PathBuf>,
    /// Keep the stack's directory (logs, the kubelet's pod directories) on tmpfs (`/dev/shm`)
    /// when there is one: the bench, so that the simulator's thousands of pod directories do not
    /// cost filesystem time that a figure would charge to the product.
    pub tmpfs: bool,
}

impl Default for StackOptions {
    fn default() -> Self {
        Self {
            kube: true,
            controller: true,
            kube_args: Vec::new(),
            controller_args: Vec::new(),
            init_timeout: "60s".into(),
            policy: None,
            controller_auth: ControllerAuth::TokenFile,
            vault_tls: false,
            controller_trusts_vault_ca: true,
            init_binary: None,
            tmpfs: false,
        }
    }
}

/// vault-dev + kube-dev (+ the controller), configured like a small real installation.
pub struct Stack {
    /// Directory with logs, kubeconfig, certificates.
    pub dir: tempfile::TempDir,
    /// vault-dev.
    pub vault: Proc,
    /// Its URL.
    pub vault_url: String,
    /// Its unseal key.
    pub unseal_key: String,
    /// kube-dev, when started.
    pub kube: Option<Proc>,
    /// kubeconfig written by kube-dev.
    pub kubeconfig: PathBuf,
    /// kube-dev's kubelet root dir (pod volumes and container logs).
    pub kube_root: PathBuf,
    /// The controllers started, in order (the webhook configuration calls the last one).
    pub controllers: Vec<Proc>,
    /// URL of the last controller's webhook.
    pub webhook_url: Option<String>,
    /// A CA of the harness's own, for tests that run approle-init without the controller (the
    /// controller manages its own: [`Stack::injector_ca_pem`]).
    pub ca: Ca,
    /// Client for Vault administration (root token).
    pub http: reqwest::Client,
    /// The controller's Vault token (token-file auth).
    pub controller_token: String,
    /// vault-dev's CA certificate file, when it serves TLS.
    pub vault_cacert: Option<PathBuf>,
    /// Kubernetes client (same kubeconfig as the controller), when kube-dev runs.
    pub kube_client: Option<kube::Client>,
    options: StackOptions,
}

impl std::fmt::Debug for Stack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stack")
            .field("dir", &self.dir.path())
            .finish_non_exhaustive()
    }
}

/// One stack at a time per process: every kube-dev hands out pod IPs from the same range.
static STACK_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Holds the stack lock for a test's duration.
pub async fn exclusive() -> tokio::sync::MutexGuard<'static, ()> {
    STACK_LOCK.lock().await
}

impl Stack {
    /// Starts everything.
    pub async fn start(options: StackOptions) -> anyhow::Result<Self> {
        install_crypto();
        let mut dir = tempfile::Builder::new();
        dir.prefix("approle-stack.");
        let shm = Path::new("/dev/shm");
        let dir = if options.tmpfs && shm.is_dir() {
            dir.tempdir_in(shm)?
        } else {
            dir.tempdir()?
        };
        let ready = Duration::from_secs(30);

        let mut vcmd = Command::new(bin_path("vault-dev")?);
        vcmd.args(["--listen", "127.0.0.1:0", "--root-token", ROOT_TOKEN])
            .arg("--audit-log")
            .arg(dir.path().join("vault-audit.log"));
        if options.vault_tls {
            vcmd.arg("--tls-cert-out").arg(dir.path().join("vault-tls"));
        }
        let kube_root = dir.path().join("kubelet");
        let kubeconfig = dir.path().join("kubeconfig");
        let mut kcmd = Command::new(bin_path("kube-dev")?);
        kcmd.args(["--listen", "127.0.0.1:0"])
            .arg("--kubeconfig-out")
            .arg(&kubeconfig)
            .arg("--root-dir")
            .arg(&kube_root)
            .arg("--init-binary")
            .arg(match &options.init_binary {
                Some(binary) => binary.clone(),
                None => bin_path("approle-init")?,
            })
            .args(&options.kube_args)
            // kube-dev's allocator (mimalloc) keeps freed pages instead of handing them back
            // to the OS and faulting them in again a moment later (a tenth of its CPU).
            .env("MIMALLOC_PURGE_DELAY", "-1");
        let vault_start = Proc::spawn(
            "vault-dev",
            vcmd,
            dir.path(),
            Some("vault-dev ready:"),
            ready,
        );
        let (v, kube) = if options.kube {
            let (v, k) = tokio::join!(
                vault_start,
                Proc::spawn("kube-dev", kcmd, dir.path(), Some("kube-dev ready:"), ready),
            );
            (v, Some(k?.0))
        } else {
            (vault_start.await, None)
        };
        let (vault, vline) = v?;
        let vline = vline.unwrap_or_default();
        let vault_url = ready_field(&vline, "addr").context("vault-dev ready line has no addr")?;
        let unseal_key = ready_field(&vline, "unseal_key").unwrap_or_default();
        let vault_cacert = ready_field(&vline, "cacert").map(PathBuf::from);

        let vault_roots = match &vault_cacert {
            Some(path) => reqwest::Certificate::from_pem_bundle(&std::fs::read(path)?)?,
            None => Vec::new(),
        };
        let http = reqwest::Client::builder()
            .tls_certs_only(vault_roots)
            .build()?;
        let ca = Ca::generate("approle-injector test CA", Duration::from_secs(24 * 3600))?;
        let kube_client = match &kube {
            Some(_) => {
                let config = kube::Config::from_custom_kubeconfig(
                    kube::config::Kubeconfig::read_from(&kubeconfig)?,
                    &Default::default(),
                )
                .await?;
                Some(kube::Client::try_from(config)?)
            }
            None => None,
        };
        let mut stack = Stack {
            dir,
            vault,
            vault_url,
            unseal_key,
            kube,
            kubeconfig,
            kube_root,
            controllers: Vec::new(),
            webhook_url: None,
            ca,
            http,
            controller_token: String::new(),
            vault_cacert,
            kube_client,
            options,
        };
        stack.configure_vault().await?;
        let policy = stack
            .options
            .policy
            .clone()
            .unwrap_or_else(|| ALLOW_ALL_POLICY.to_owned());
        stack.write_policy(&policy)?;
        if stack.kube_client.is_some() {
            let namespaces: Api<Namespace> = Api::all(stack.kube_client());
            let ns = serde_json::from_value(json!({"metadata": {"name": CONTROLLER_NAMESPACE}}))?;
            match namespaces.create(&PostParams::default(), &ns).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.is_already_exists() => {}
                Err(e) => return Err(e).context("creating the controller's namespace"),
            }
        }
        stack.configure_controller_auth().await?;
        if stack.options.controller {
            stack.start_controller().await?;
        }
        Ok(stack)
    }

    /// A Vault call with the root token; returns status and JSON body (`Null` for 204).
    pub async fn vault(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<(u16, Value)> {
        let method = reqwest::Method::from_bytes(method.as_bytes())?;
        let mut req = self
            .http
            .request(method, format!("{}/v1/{path}", self.vault_url))
            .header("X-Vault-Token", ROOT_TOKEN);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await?;
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)?
        };
        Ok((status, value))
    }

    async fn vault_ok(&self, method: &str, path: &str, body: Value) -> anyhow::Result<Value> {
        let (status, value) = self.vault(method, path, Some(body)).await?;
        if !(200..300).contains(&status) {
            bail!("{method} {path}: {status} {value}");
        }
        Ok(value)
    }

    async fn configure_vault(&mut self) -> anyhow::Result<()> {
        self.vault_ok("POST", "sys/auth/approle", json!({"type": "approle"}))
            .await?;
        self.vault_ok(
            "POST",
            "sys/mounts/secret",
            json!({"type": "kv", "options": {"version": "2"}}),
        )
        .await?;
        self.vault_ok(
            "PUT",
            "sys/policies/acl/approle-controller",
            json!({"policy": r#"
path "auth/approle/role/+/role-id" { capabilities = ["read"] }
path "auth/approle/role/+/secret-id" { capabilities = ["update"] }
path "auth/approle/role/+/secret-id/" { capabilities = ["list"] }
path "auth/approle/role/+/secret-id-accessor/destroy" { capabilities = ["update"] }
path "auth/approle/role/+/secret-id-accessor/lookup" { capabilities = ["update"] }
path "auth/token/lookup-accessor" { capabilities = ["update"] }
path "auth/token/revoke-accessor" { capabilities = ["update"] }
path "auth/token/renew-self" { capabilities = ["update"] }
path "auth/token/lookup-self" { capabilities = ["read"] }
"#}),
        )
        .await?;
        self.vault_ok(
            "PUT",
            &format!("sys/policies/acl/{ROLE_POLICY}"),
            json!({"policy": r#"path "secret/data/web/*" { capabilities = ["read"] }"#}),
        )
        .await?;
        self.create_role(ROLE).await?;
        self.vault_ok(
            "POST",
            "secret/data/web/config",
            json!({"data": {"greeting": "hello"}}),
        )
        .await?;
        let created = self
            .vault_ok(
                "POST",
                "auth/token/create",
                json!({"policies": ["approle-controller"], "ttl": "1h", "display_name": "approle-controller"}),
            )
            .await?;
        self.controller_token = created["auth"]["client_token"]
            .as_str()
            .context("token/create returned no client_token")?
            .to_owned();
        std::fs::write(
            self.dir.path().join("controller-token"),
            &self.controller_token,
        )?;
        Ok(())
    }

    /// Sets up the controller's login for [`StackOptions::controller_auth`] (the token-file token
    /// is made by `configure_vault`): files under the stack's directory, read by the controller.
    async fn configure_controller_auth(&mut self) -> anyhow::Result<()> {
        match self.options.controller_auth.clone() {
            ControllerAuth::TokenFile => Ok(()),
            ControllerAuth::Kubernetes {
                token_ttl,
                token_max_ttl,
            } => {
                let kubeconfig = kube::config::Kubeconfig::read_from(&self.kubeconfig)?;
                let cluster = kubeconfig
                    .clusters
                    .first()
                    .and_then(|c| c.cluster.clone())
                    .context("kube-dev's kubeconfig has no cluster")?;
                use base64::Engine as _;
                let ca_pem = base64::engine::general_purpose::STANDARD.decode(
                    cluster
                        .certificate_authority_data
                        .context("kube-dev's kubeconfig has no CA")?,
                )?;
                let sas: Api<k8s_openapi::api::core::v1::ServiceAccount> =
                    Api::namespaced(self.kube_client(), CONTROLLER_NAMESPACE);
                for name in [CONTROLLER_SERVICE_ACCOUNT, "vault-token-reviewer"] {
                    let sa = serde_json::from_value(json!({"metadata": {"name": name}}))?;
                    match sas.create(&PostParams::default(), &sa).await {
                        Ok(_) => {}
                        Err(kube::Error::Api(s)) if s.is_already_exists() => {}
                        Err(e) => return Err(e).context("creating a service account"),
                    }
                }
                let reviewer = self.service_account_token("vault-token-reviewer").await?;
                self.vault_ok("POST", "sys/auth/kubernetes", json!({"type": "kubernetes"}))
                    .await?;
                self.vault_ok(
                    "POST",
                    "auth/kubernetes/config",
                    json!({"kubernetes_host": cluster.server,
                           "kubernetes_ca_cert": String::from_utf8(ca_pem)?,
                           "token_reviewer_jwt": reviewer}),
                )
                .await?;
                self.vault_ok(
                    "POST",
                    &format!("auth/kubernetes/role/{CONTROLLER_ROLE}"),
                    json!({"bound_service_account_names": [CONTROLLER_SERVICE_ACCOUNT],
                           "bound_service_account_namespaces": [CONTROLLER_NAMESPACE],
                           "token_policies": [CONTROLLER_ROLE],
                           "token_ttl": token_ttl, "token_max_ttl": token_max_ttl}),
                )
                .await?;
                let jwt = self
                    .service_account_token(CONTROLLER_SERVICE_ACCOUNT)
                    .await?;
                std::fs::write(self.dir.path().join("controller-sa-token"), jwt)?;
                Ok(())
            }
            ControllerAuth::AppRole => {
                self.vault_ok(
                    "POST",
                    &format!("auth/approle/role/{CONTROLLER_ROLE}"),
                    json!({"token_policies": [CONTROLLER_ROLE], "token_ttl": "20m",
                           "token_max_ttl": "1h"}),
                )
                .await?;
                let (_, id) = self
                    .vault(
                        "GET",
                        &format!("auth/approle/role/{CONTROLLER_ROLE}/role-id"),
                        None,
                    )
                    .await?;
                let secret = self
                    .vault_ok(
                        "POST",
                        &format!("auth/approle/role/{CONTROLLER_ROLE}/secret-id"),
                        json!({}),
                    )
                    .await?;
                let dir = self.dir.path();
                std::fs::write(
                    dir.join("controller-role-id"),
                    id["data"]["role_id"].as_str().context("no role_id")?,
                )?;
                std::fs::write(
                    dir.join("controller-secret-id"),
                    secret["data"]["secret_id"]
                        .as_str()
                        .context("no secret_id")?,
                )?;
                Ok(())
            }
        }
    }

    /// A TokenRequest token (default audience, 1 h) of a service account in
    /// [`CONTROLLER_NAMESPACE`].
    pub async fn service_account_token(&self, name: &str) -> anyhow::Result<String> {
        let sas: Api<k8s_openapi::api::core::v1::ServiceAccount> =
            Api::namespaced(self.kube_client(), CONTROLLER_NAMESPACE);
        let req: k8s_openapi::api::authentication::v1::TokenRequest =
            serde_json::from_value(json!({"spec": {"audiences": [], "expirationSeconds": 3600}}))?;
        Ok(sas
            .create_token_request(name, &PostParams::default(), &req)
            .await
            .with_context(|| format!("TokenRequest for {CONTROLLER_NAMESPACE}/{name}"))?
            .status
            .context("TokenRequest has no status")?
            .token)
    }

    /// Options, to start further controllers differently.
    pub fn options_mut(&mut self) -> &mut StackOptions {
        &mut self.options
    }

    /// Creates (or updates) an AppRole with the harness's token settings.
    pub async fn create_role(&self, role: &str) -> anyhow::Result<()> {
        self.vault_ok(
            "POST",
            &format!("auth/approle/role/{role}"),
            json!({"token_policies": [ROLE_POLICY], "token_ttl": "20m", "token_max_ttl": "1h",
                   "secret_id_ttl": "10m", "secret_id_num_uses": 1}),
        )
        .await?;
        Ok(())
    }

    /// Starts one more controller with the stack's kubeconfig, then points the
    /// MutatingWebhookConfiguration [`WEBHOOK_CONFIG`] at its webhook and waits until the
    /// controller has put its CA into the caBundle: from then on, pods are injected.
    pub async fn start_controller(&mut self) -> anyhow::Result<()> {
        let mut cmd = Command::new(bin_path("approle-controller")?);
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("KUBECONFIG", &self.kubeconfig)
            .env("APPROLE_CONTROLLER_VAULT_ADDR", &self.vault_url)
            .env("APPROLE_CONTROLLER_POD_NAMESPACE", CONTROLLER_NAMESPACE)
            // Port 0: the webhook's address is read from the controller's log.
            .env("APPROLE_CONTROLLER_WEBHOOK_LISTEN", "127.0.0.1:0")
            .env("APPROLE_CONTROLLER_ADMIN_LISTEN", "127.0.0.1:0")
            .env("APPROLE_CONTROLLER_WEBHOOK_EXTRA_SAN", "127.0.0.1")
            .env("APPROLE_CONTROLLER_WEBHOOK_CONFIG_NAME", WEBHOOK_CONFIG)
            .env("APPROLE_CONTROLLER_INIT_IMAGE", INIT_IMAGE)
            .env(
                "APPROLE_CONTROLLER_INIT_TIMEOUT",
                &self.options.init_timeout,
            )
            // The caBundle is put in place within a fraction of a second of registration.
            .env("APPROLE_CONTROLLER_CERT_CHECK_INTERVAL", "200ms")
            .env("APPROLE_CONTROLLER_POLICY_FILE", self.policy_path())
            .env("APPROLE_CONTROLLER_POLICY_RELOAD_INTERVAL", "200ms")
            .env(
                "APPROLE_CONTROLLER_LOG_LEVEL",
                "info,approle_controller=debug",
            )
            .args(&self.options.controller_args);
        let dir = self.dir.path();
        match &self.options.controller_auth {
            ControllerAuth::TokenFile => {
                cmd.env("APPROLE_CONTROLLER_VAULT_AUTH", "token-file").env(
                    "APPROLE_CONTROLLER_VAULT_TOKEN_FILE",
                    dir.join("controller-token"),
                )
            }
            ControllerAuth::Kubernetes { .. } => cmd
                .env("APPROLE_CONTROLLER_VAULT_AUTH", "kubernetes")
                .env("APPROLE_CONTROLLER_VAULT_K8S_ROLE", CONTROLLER_ROLE)
                .env(
                    "APPROLE_CONTROLLER_VAULT_K8S_TOKEN_FILE",
                    dir.join("controller-sa-token"),
                ),
            ControllerAuth::AppRole => cmd
                .env("APPROLE_CONTROLLER_VAULT_AUTH", "approle")
                .env(
                    "APPROLE_CONTROLLER_VAULT_APPROLE_ROLE_ID_FILE",
                    dir.join("controller-role-id"),
                )
                .env(
                    "APPROLE_CONTROLLER_VAULT_APPROLE_SECRET_ID_FILE",
                    dir.join("controller-secret-id"),
                ),
        };
        if let Some(ca) = &self.vault_cacert
            && self.options.controller_trusts_vault_ca
        {
            cmd.env("APPROLE_CONTROLLER_VAULT_CACERT", ca);
        }
        // Each start gets its own log file, also after a test took a controller out of the list.
        let n = std::fs::read_dir(self.dir.path())?
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("controller-"))
            .count();
        // The instance name is the log's name, so a Lease holder maps back to its process.
        cmd.env("APPROLE_CONTROLLER_INSTANCE", format!("controller-{n}"));
        let (proc, _) = Proc::spawn(
            &format!("controller-{n}"),
            cmd,
            self.dir.path(),
            None,
            Duration::from_secs(5),
        )
        .await?;
        let listening = wait_for("the controller's webhook", Duration::from_secs(30), || {
            let addr = proc.logged_addr("webhook listening");
            async move { addr }
        })
        .await
        .with_context(|| format!("controller output:\n{}", proc.output()));
        self.controllers.push(proc);
        let url = format!("https://{}/mutate", listening?);
        self.register_webhook(&url).await?;
        let ca = self.injector_ca_pem().await?;
        let configs: Api<MutatingWebhookConfiguration> = Api::all(self.kube_client());
        wait_for(
            "the controller to set the caBundle",
            Duration::from_secs(30),
            || {
                let configs = configs.clone();
                let ca = ca.clone();
                async move {
                    let config = configs.get(WEBHOOK_CONFIG).await.ok()?;
                    let hook = config.webhooks?.into_iter().next()?;
                    (hook.client_config.ca_bundle?.0 == ca.as_bytes()).then_some(())
                }
            },
        )
        .await?;
        self.webhook_url = Some(url);
        Ok(())
    }

    /// The controller's authorization policy file.
    pub fn policy_path(&self) -> PathBuf {
        self.dir.path().join("policy.yaml")
    }

    /// Replaces the policy file atomically (a new file renamed over it, as a ConfigMap mount
    /// swaps its symlink); the controller reloads it within its reload interval (200 ms here).
    pub fn write_policy(&self, yaml: &str) -> anyhow::Result<()> {
        let tmp = self.dir.path().join(".policy.yaml.new");
        std::fs::write(&tmp, yaml).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, self.policy_path()).context("replacing the policy file")?;
        Ok(())
    }

    /// Body of `GET <path>` on controller `i`'s admin port (`/metrics`, `/readyz`), with status.
    pub async fn admin_get(&self, i: usize, path: &str) -> anyhow::Result<(u16, String)> {
        let base = self
            .admin_url(i)
            .context("the controller has not logged its admin port")?;
        let resp = reqwest::get(format!("{base}{path}")).await?;
        Ok((resp.status().as_u16(), resp.text().await?))
    }

    /// Creates [`WEBHOOK_CONFIG`] calling `url`, or points the existing one at it. The webhook is
    /// the pod webhook of `manifests/base/mutatingwebhook.yaml` (what a real cluster installs),
    /// with its service reference replaced by `url`. The caBundle is left to the controller.
    /// Only pods with a `vault-approle.io/` annotation and not injected yet are sent
    /// (matchConditions), and never those of the controller's namespace or kube-system, so with
    /// the webhook down (failurePolicy Fail) only opted-in pods are refused.
    pub async fn register_webhook(&self, url: &str) -> anyhow::Result<()> {
        let api: Api<MutatingWebhookConfiguration> = Api::all(self.kube_client());
        let hook = manifest_pod_webhook(url)?;
        let config: MutatingWebhookConfiguration = serde_json::from_value(json!({
            "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": WEBHOOK_CONFIG}, "webhooks": [hook]
        }))?;
        match api.create(&PostParams::default(), &config).await {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(s)) if s.is_already_exists() => {}
            Err(e) => return Err(e.into()),
        }
        // A restarted controller listens elsewhere: move the URL, keeping the caBundle (a JSON
        // patch of one field, so the controller's own caBundle patches cannot conflict with it).
        let patch =
            json!([{"op": "replace", "path": "/webhooks/0/clientConfig/url", "value": url}]);
        let patch: json_patch::Patch = serde_json::from_value(patch)?;
        api.patch(
            WEBHOOK_CONFIG,
            &PatchParams::default(),
            &Patch::Json::<()>(patch),
        )
        .await?;
        Ok(())
    }

    /// The injector CA the controller keeps in its Secret.
    pub async fn injector_ca_pem(&self) -> anyhow::Result<String> {
        let secrets: Api<Secret> = Api::namespaced(self.kube_client(), CONTROLLER_NAMESPACE);
        let secret = secrets
            .get(CA_SECRET)
            .await
            .with_context(|| format!("reading Secret {CONTROLLER_NAMESPACE}/{CA_SECRET}"))?;
        let pem = secret
            .data
            .and_then(|d| d.get("ca.crt").cloned())
            .context("the CA Secret has no ca.crt")?;
        Ok(String::from_utf8(pem.0)?)
    }

    /// Injector settings as the controller's webhook uses them.
    pub async fn inject_config(&self) -> anyhow::Result<InjectConfig> {
        Ok(InjectConfig {
            image: INIT_IMAGE.into(),
            vault_addr: self.vault_url.clone(),
            vault_ca_pem: None,
            injector_ca_pem: self.injector_ca_pem().await?,
            approle_mount: "approle".into(),
            timeout: self.options.init_timeout.clone(),
            resources: inject::default_resources(),
        })
    }

    /// A plain app pod with `annotations`: the webhook injects it at creation when they opt in.
    pub fn pod(&self, name: &str, annotations: Value) -> anyhow::Result<Pod> {
        Ok(serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "annotations": annotations, "labels": {"app": "web"}},
            "spec": {"containers": [{"name": "app", "image": "example/app:1"}], "restartPolicy": "Always"}
        }))?)
    }

    /// An app pod injected here, exactly as the webhook would (the webhook leaves injected pods
    /// as they are): for tests that change the injected pod before creating it.
    pub async fn injected_pod(&self, name: &str, annotations: Value) -> anyhow::Result<Pod> {
        let mut pod = self.pod(name, annotations)?;
        let spec = InjectionSpec::from_annotations(
            pod.metadata
                .annotations
                .as_ref()
                .unwrap_or(&Default::default()),
        )?
        .context("the annotations do not opt in")?;
        inject::inject(&mut pod, &spec, &self.inject_config().await?)?;
        Ok(pod)
    }

    /// Like [`Stack::injected_pod`], with the init container listening on `listen` instead of the
    /// port the annotations name: nothing of the pod answers where the controller pushes (room
    /// for an [`Impostor`](crate::impostor::Impostor)).
    pub async fn injected_pod_listening_on(
        &self,
        name: &str,
        annotations: Value,
        listen: &str,
    ) -> anyhow::Result<Pod> {
        let mut pod = self.injected_pod(name, annotations).await?;
        let init = pod
            .spec
            .as_mut()
            .and_then(|s| s.init_containers.as_mut())
            .and_then(|all| {
                all.iter_mut()
                    .find(|c| c.name == approle_shared::INIT_CONTAINER_NAME)
            })
            .context("the injected pod has no init container")?;
        for e in init.env.iter_mut().flatten() {
            if e.name == "APPROLE_INIT_LISTEN" {
                e.value = Some(listen.to_owned());
            }
        }
        Ok(pod)
    }

    /// Creates a pod in `default`.
    pub async fn create(&self, pod: &Pod) -> anyhow::Result<Pod> {
        Ok(self.pods().create(&PostParams::default(), pod).await?)
    }

    /// Creates a pod annotated with [`ROLE`] for each name, one after the other.
    pub async fn create_role_pods(&self, names: &[String]) -> anyhow::Result<()> {
        for name in names {
            let pod = self.pod(name, json!({"vault-approle.io/role": ROLE}))?;
            self.create(&pod).await?;
        }
        Ok(())
    }

    /// The Kubernetes client; panics when the stack runs without kube-dev (a test bug).
    pub fn kube_client(&self) -> kube::Client {
        self.kube_client
            .clone()
            .expect("this stack was started without kube-dev")
    }

    /// Base URL of controller `i`'s admin port (metrics, health, readiness).
    pub fn admin_url(&self, i: usize) -> Option<String> {
        let addr = self
            .controllers
            .get(i)?
            .logged_addr("admin port listening")?;
        Some(format!("http://{addr}"))
    }

    /// The `holderIdentity` of the controllers' leader-election Lease (empty when released),
    /// `None` while there is no Lease.
    pub async fn lease_holder(&self) -> Option<String> {
        let leases: Api<Lease> = Api::namespaced(self.kube_client(), CONTROLLER_NAMESPACE);
        let lease = leases.get_opt(LEADER_LEASE).await.ok().flatten()?;
        Some(lease.spec?.holder_identity.unwrap_or_default())
    }

    /// Index in [`Stack::controllers`] of the controller whose election identity is `identity`
    /// (`<instance>_<suffix>`, the instance being the log name).
    pub fn controller_index(&self, identity: &str) -> Option<usize> {
        let instance = identity.rsplit_once('_').map_or(identity, |(i, _)| i);
        self.controllers.iter().position(|c| c.name == instance)
    }

    /// Waits for a leader among the controllers; returns its index in [`Stack::controllers`].
    pub async fn wait_leader(&self, timeout: Duration) -> anyhow::Result<usize> {
        wait_for("a controller to lead", timeout, || async {
            let holder = self.lease_holder().await?;
            self.controller_index(&holder)
        })
        .await
    }

    /// Waits until controller `i`'s `/readyz` answers 200.
    pub async fn wait_ready(&self, i: usize, timeout: Duration) -> anyhow::Result<()> {
        wait_for("/readyz to answer 200", timeout, || async {
            self.admin_get(i, "/readyz")
                .await
                .ok()
                .filter(|(status, _)| *status == 200)
                .map(|_| ())
        })
        .await
    }

    /// Value of one series of controller `i`'s `/metrics`, named exactly as exposed (with its
    /// labels, e.g. `approle_vault_logins_total{result="success"}`); `None` when absent.
    pub async fn metric(&self, i: usize, series: &str) -> Option<f64> {
        let (_, text) = self.admin_get(i, "/metrics").await.ok()?;
        text.lines().find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
    }

    /// Pods in `default`.
    pub fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.kube_client(), "default")
    }

    /// Deletes a pod in `default`.
    pub async fn delete(&self, name: &str) -> anyhow::Result<()> {
        self.pods().delete(name, &DeleteParams::default()).await?;
        Ok(())
    }

    /// Deletes a pod in `default` and waits until the API no longer has it (the kubelet ends its
    /// containers first).
    pub async fn delete_and_wait_gone(&self, name: &str, timeout: Duration) -> anyhow::Result<()> {
        self.delete(name).await?;
        wait_for(&format!("pod {name} to be gone"), timeout, || async {
            matches!(self.pods().get_opt(name).await, Ok(None)).then_some(())
        })
        .await
    }

    /// Restarts the sandbox of a running pod in `default` (kube-dev's kubelet then runs its init
    /// containers again, as after a node reboot): sets kube-dev's
    /// [`crate::kube_dev::kubelet::RESTART_SANDBOX_ANNOTATION`] to a new value.
    pub async fn restart_sandbox(&self, name: &str) -> anyhow::Result<()> {
        let mark = jiff::Timestamp::now().to_string();
        let patch = json!({"metadata": {"annotations": {
            crate::kube_dev::kubelet::RESTART_SANDBOX_ANNOTATION: mark,
        }}});
        self.merge_patch(name, &patch)
            .await
            .with_context(|| format!("restarting the sandbox of {name}"))
    }

    /// Applies a JSON merge patch to a pod in `default` (`null` removes a key).
    pub async fn merge_patch(&self, name: &str, patch: &Value) -> anyhow::Result<()> {
        self.pods()
            .patch(name, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .with_context(|| format!("patching pod {name}"))?;
        Ok(())
    }

    /// Waits until `check` accepts the pod.
    pub async fn wait_pod(
        &self,
        name: &str,
        what: &str,
        timeout: Duration,
        check: impl Fn(&Pod) -> bool,
    ) -> anyhow::Result<Pod> {
        let api = self.pods();
        let check = &check;
        wait_for(&format!("pod {name}: {what}"), timeout, || {
            let api = api.clone();
            async move { api.get_opt(name).await.ok().flatten().filter(|p| check(p)) }
        })
        .await
    }

    /// Host directory of a pod's volume, as kube-dev's kubelet lays it out.
    fn pod_volume_dir(&self, pod: &Pod, plugin: &str, volume: &str) -> PathBuf {
        self.kube_root
            .join("pods")
            .join(pod.metadata.uid.as_deref().unwrap_or_default())
            .join("volumes")
            .join(plugin)
            .join(volume)
    }

    /// Host directory of a pod's credential volume.
    pub fn volume_dir(&self, pod: &Pod) -> PathBuf {
        self.pod_volume_dir(pod, "kubernetes.io~empty-dir", inject::VOLUME_NAME)
    }

    /// The log of a pod's init container as kube-dev's kubelet wrote it, while the pod exists.
    pub fn init_log(&self, pod: &Pod) -> Option<String> {
        let log = self
            .kube_root
            .join("pods")
            .join(pod.metadata.uid.as_deref()?)
            .join("logs")
            .join(format!("{}.log", approle_shared::INIT_CONTAINER_NAME));
        std::fs::read_to_string(log).ok()
    }

    /// Host path of a pod's identity token (the projected volume only its init container mounts).
    pub fn identity_token_path(&self, pod: &Pod) -> PathBuf {
        self.pod_volume_dir(pod, "kubernetes.io~projected", inject::IDENTITY_VOLUME_NAME)
            .join(inject::IDENTITY_TOKEN_FILE)
    }

    /// Reads the token a pod received.
    pub fn pod_token(&self, pod: &Pod) -> anyhow::Result<String> {
        let path = self
            .volume_dir(pod)
            .join(approle_shared::tokenfile::TOKEN_FILE);
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
    }

    /// GET `path` on Vault with `token`, from `source` as the local address (Vault binds pod
    /// tokens to the pod's IP): the status and the JSON body (`null` if none).
    pub async fn vault_get(
        &self,
        path: &str,
        token: &str,
        source: std::net::IpAddr,
    ) -> anyhow::Result<(u16, Value)> {
        let client = reqwest::Client::builder()
            .local_address(source)
            .tls_certs_only(Vec::new())
            .build()?;
        let resp = client
            .get(format!("{}/v1/{path}", self.vault_url))
            .header("X-Vault-Token", token)
            .send()
            .await?;
        let status = resp.status().as_u16();
        Ok((status, resp.json().await.unwrap_or(Value::Null)))
    }

    /// Waits until Vault refuses `token` (used from `source`, its pod's IP) as revoked.
    pub async fn wait_token_revoked(
        &self,
        what: &str,
        token: &str,
        source: std::net::IpAddr,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        wait_for(what, timeout, || async {
            let status = self
                .vault_get("auth/token/lookup-self", token, source)
                .await;
            matches!(status, Ok((403, _))).then_some(())
        })
        .await
    }

    /// Reads the token a pod received and proves it works from the pod's own address (Vault
    /// binds it there) with `auth/token/lookup-self`.
    pub async fn working_token(&self, pod: &Pod) -> anyhow::Result<PodToken> {
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        let ip = pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.clone())
            .with_context(|| format!("pod {name} has no IP"))?;
        let token = self.pod_token(pod)?;
        let (status, body) = self
            .vault_get("auth/token/lookup-self", &token, ip.parse()?)
            .await?;
        if status != 200 {
            bail!("pod {name}: its token does not work from {ip}: {status}");
        }
        let accessor = body["data"]["accessor"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        Ok(PodToken {
            ip,
            token,
            accessor,
        })
    }

    /// Events (events.k8s.io/v1) about a pod, as (reason, note) pairs.
    pub async fn events_for(&self, pod_name: &str) -> anyhow::Result<Vec<(String, String)>> {
        let api: Api<k8s_openapi::api::events::v1::Event> =
            Api::namespaced(self.kube_client(), "default");
        let list = api.list(&Default::default()).await?;
        Ok(list
            .items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(pod_name))
            .map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
            .collect())
    }

    /// Waits for an Event with `reason` on a pod; returns its note.
    pub async fn wait_event(
        &self,
        pod_name: &str,
        reason: &str,
        timeout: Duration,
    ) -> anyhow::Result<String> {
        wait_for(
            &format!("event {reason} on {pod_name}"),
            timeout,
            || async {
                self.events_for(pod_name)
                    .await
                    .ok()?
                    .into_iter()
                    .find(|(r, _)| r == reason)
                    .map(|(_, note)| note)
            },
        )
        .await
    }

    /// vault-dev's audit log as JSON values.
    pub fn audit(&self) -> Vec<Value> {
        std::fs::read_to_string(self.dir.path().join("vault-audit.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Number of secret-id generations for `role` in the audit log.
    pub fn secret_id_mints(&self, role: &str) -> usize {
        let path = format!("auth/approle/role/{role}/secret-id");
        self.audit()
            .iter()
            .filter(|e| e["path"].as_str() == Some(path.as_str()))
            .count()
    }

    /// Number of AppRole logins in the audit log (every role).
    pub fn approle_logins(&self) -> usize {
        self.audit()
            .iter()
            .filter(|e| e["path"].as_str() == Some("auth/approle/login"))
            .count()
    }

    /// Accessors of live secret_ids of `role` (`LIST auth/approle/role/<role>/secret-id`).
    pub async fn live_secret_ids(&self, role: &str) -> anyhow::Result<Vec<String>> {
        let (status, body) = self
            .vault("LIST", &format!("auth/approle/role/{role}/secret-id"), None)
            .await?;
        match status {
            404 => Ok(Vec::new()),
            200 => Ok(body["data"]["keys"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default()),
            other => bail!("listing secret-ids: {other} {body}"),
        }
    }

    /// Waits until `role` has no live secret_id left.
    pub async fn wait_no_live_secret_ids(
        &self,
        role: &str,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        wait_for(
            &format!("no live secret_id of role {role}"),
            timeout,
            || async {
                self.live_secret_ids(role)
                    .await
                    .ok()
                    .filter(|l| l.is_empty())
                    .map(drop)
            },
        )
        .await
    }

    /// Every captured output: the stack's own logs and every container log under kube-dev.
    pub fn all_output(&self) -> String {
        let mut out = String::new();
        let mut stack = vec![self.dir.path().to_path_buf()];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.flatten() {
                let p = e.path();
                if p.is_dir() {
                    // Pod volumes hold the delivered tokens themselves: not output.
                    if !p.ends_with("volumes") {
                        stack.push(p);
                    }
                } else if p.extension().is_some_and(|x| x == "log") {
                    out.push_str(&std::fs::read_to_string(&p).unwrap_or_default());
                }
            }
        }
        out
    }

    /// Fails if any `secret` appears in any captured output.
    pub fn assert_no_secrets(&self, secrets: &[&str]) {
        let out = self.all_output();
        assert!(!out.is_empty(), "no output was captured at all");
        for s in secrets.iter().filter(|s| s.len() >= 8) {
            assert!(
                !out.contains(s),
                "a secret ({}…) leaked into captured output",
                &s[..4]
            );
        }
    }
}

impl Drop for Stack {
    /// When a test fails, keep the stack's directory and print the tail of every log, so the
    /// failure can be understood from CI output alone.
    fn drop(&mut self) {
        // Stop the controller first so it does not push during teardown, then kube-dev with SIGTERM:
        // it stops the approle-init processes its kubelet started, which a SIGKILL would orphan
        // (still bound to pod IPs the next stack hands out again).
        for c in self.controllers.iter_mut() {
            c.stop_blocking(Duration::from_secs(5));
        }
        if let Some(k) = self.kube.as_mut() {
            k.stop_blocking(Duration::from_secs(10));
        }
        if !std::thread::panicking() {
            return;
        }
        let out = self.all_output();
        let tail: Vec<&str> = out.lines().rev().take(150).collect();
        eprintln!(
            "---- stack logs kept in {} (last {} lines of all logs) ----",
            self.dir.path().display(),
            tail.len()
        );
        for line in tail.iter().rev() {
            eprintln!("{line}");
        }
        self.dir.disable_cleanup(true);
    }
}

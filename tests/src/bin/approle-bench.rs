//! `approle-bench`: delivery throughput, latency and footprint of approle-injector, each time figure
//! beside the floor for the same work measured in the same run.
//!
//! ```text
//!  Stack (vault-dev + kube-dev + approle-controller, release builds, loopback only)
//!   1. controller idle RSS (no pods), one warm-up delivery
//!   2. floor: a minimal client doing one delivery's work — mint wrapped secret_id, one mutual-TLS
//!      handshake with the init container's TLS configuration, lookup, unwrap, login — alone
//!      (sequential samples) and in bursts of the same size and concurrency as the controller's
//!   3. per burst (10, 100, 1000 annotated pods): deliveries/s, init running → token written
//!      p50/p95/p99, CPU per process, controller peak RSS, the tasks waiting for or on the cores
//!      (`/proc/stat` `procs_running`), Vault requests per delivery, and the
//!      exactly-once checks (status annotation, one token per pod, one login per pod IP in the
//!      audit log, one SecretIdDelivered Event per pod, init exit 0, no live secret_id left);
//!      with the controller at `approle_controller=debug`, listening → token split into stages
//!      at its log lines (seen running, slot taken, identity shown, identity verified, minted, token written)
//!   4. approle-init run directly: start-to-listening, peak RSS (`/usr/bin/time -f %M`), stripped size,
//!      static or dynamic linking (the image's is static: `cargo release-init`)
//!   5. controller RSS with N managed pods cached (bound to a node the kubelet ignores), each
//!      injected and annotated as a delivered pod is (status, token accessor, deliveries, last
//!      delivery) — a final sentinel pod delivered after them proves the watch has applied them all
//! ```
//!
//! Prints a table and, with `--json-out`, writes the figures as JSON. Every wait is bounded, so the
//! bench stops by itself. Secrets never reach its output: only accessors and counts are printed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::{Context, anyhow, bail};
use approle_shared::tls::{self, Usage};
use approle_testkit::harness::{self, ROLE, Stack, StackOptions, bin_path, wait_for};
use clap::Parser;
use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, ListParams};
use kube::core::PartialObjectMeta;
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

/// Measures delivery throughput, latency and footprint against vault-dev and kube-dev.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Burst sizes (annotated pods created at once), comma separated. A size given more than
    /// once (`100,100,100`) is judged against its target by its median run.
    #[arg(long, value_delimiter = ',')]
    bursts: Option<Vec<usize>>,
    /// Write the figures as JSON to this file.
    #[arg(long)]
    json_out: Option<PathBuf>,
    /// Small bursts and samples: a smoke run of every phase (bursts 3,10; 200 cached pods).
    #[arg(long)]
    quick: bool,
    /// Managed pods held in the controller's cache for the RSS figure.
    #[arg(long)]
    cached_pods: Option<usize>,
    /// Direct runs of approle-init (each for timing and again for peak RSS).
    #[arg(long)]
    init_runs: Option<usize>,
    /// Sequential floor samples.
    #[arg(long)]
    floor_samples: Option<usize>,
    /// Concurrency of the floor bursts (the controller's default `--concurrency`).
    #[arg(long, default_value_t = 64)]
    floor_concurrency: usize,
    /// The controller's `--log-level`. With `approle_controller=debug` (e.g.
    /// `info,approle_controller=debug`) each burst's listening → token is split into stages at the
    /// controller's debug lines (its logging then costs CPU too).
    #[arg(long, default_value = "info")]
    controller_log_level: String,
    /// More flags for the controller, each a separate `--controller-arg` (e.g.
    /// `--controller-arg=--concurrency=128`).
    #[arg(long, allow_hyphen_values = true)]
    controller_arg: Vec<String>,
    /// More flags for kube-dev, each a separate `--kube-dev-arg` (e.g.
    /// `--kube-dev-arg=--kubelet-threads=0` runs the kubelet simulator on the API server's
    /// runtime, as before it had one of its own).
    #[arg(long, allow_hyphen_values = true)]
    kube_dev_arg: Vec<String>,
    /// Keep the stack's directory (all logs, the audit log) and print where it is.
    #[arg(long)]
    keep_logs: bool,
    /// Upper bound for each burst to be delivered.
    #[arg(long, default_value = "300s", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

/// Node name the kubelet simulator ignores: pods bound to it are cached but never run.
const ELSEWHERE_NODE: &str = "bench-elsewhere-node";
/// Pods created at once against the API.
const CREATE_CONCURRENCY: usize = 32;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    harness::install_crypto();
    let args = Args::parse();
    let bursts = args.bursts.clone().unwrap_or_else(|| {
        if args.quick {
            vec![3, 10]
        } else {
            vec![10, 100, 1000]
        }
    });
    let cached = args
        .cached_pods
        .unwrap_or(if args.quick { 200 } else { 10_000 });
    let init_runs = args
        .init_runs
        .unwrap_or(if args.quick { 3 } else { 15 })
        .max(1);
    let floor_samples = args
        .floor_samples
        .unwrap_or(if args.quick { 20 } else { 200 })
        .max(1);

    let init_bin = bin_path("approle-init")?;
    let linkage = Linkage::of(&init_bin);
    if linkage == Linkage::Dynamic {
        eprintln!(
            "approle-bench: {} is dynamically linked; the image's is a static PIE: \
             `cargo release-init` builds it (every start and delivery costs more without)",
            init_bin.display()
        );
    }
    eprintln!("approle-bench: starting vault-dev, kube-dev and approle-controller…");
    let stack = Stack::start(StackOptions {
        init_timeout: "120s".into(),
        // Info, not the harness's debug level: what a deployment would run.
        controller_args: ["--log-level".to_owned(), args.controller_log_level.clone()]
            .into_iter()
            .chain(args.controller_arg.iter().cloned())
            .collect(),
        kube_args: args.kube_dev_arg.clone(),
        tmpfs: true,
        ..Default::default()
    })
    .await
    .context("starting the stack")?;
    // SIGINT/SIGTERM end the run early but still tear the stack down (its processes and the
    // approle-init processes kube-dev started), which killing the bench outright would orphan.
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let result = tokio::select! {
        r = run(&stack, &args, &bursts, cached, init_runs, floor_samples, linkage) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted (SIGINT)")),
        _ = sigterm.recv() => Err(anyhow!("interrupted (SIGTERM)")),
    };
    if args.keep_logs && result.is_ok() {
        let mut stack = stack;
        stack.dir.disable_cleanup(true);
        eprintln!(
            "approle-bench: logs are kept in {}",
            stack.dir.path().display()
        );
        return Ok(());
    }
    if let Err(e) = &result {
        let mut stack = stack;
        stack.dir.disable_cleanup(true);
        eprintln!(
            "approle-bench: {e:#}\nlogs are kept in {}",
            stack.dir.path().display()
        );
        bail!("benchmark failed");
    }
    Ok(())
}

async fn run(
    stack: &Stack,
    args: &Args,
    bursts: &[usize],
    cached: usize,
    init_runs: usize,
    floor_samples: usize,
    linkage: Linkage,
) -> anyhow::Result<()> {
    let pids = Pids {
        controller: stack.controllers[0]
            .pid()
            .context("controller has no pid")?,
        vault: stack.vault.pid().context("vault-dev has no pid")?,
        kube: stack
            .kube
            .as_ref()
            .and_then(|k| k.pid())
            .context("kube-dev has no pid")?,
    };
    let tick = clk_tck();
    let root_accessor =
        stack.vault("GET", "auth/token/lookup-self", None).await?.1["data"]["accessor"]
            .as_str()
            .unwrap_or_default()
            .to_owned();

    // 1. Idle controller, then a warm-up delivery proving the pipeline works.
    let idle_rss = stable_rss(pids.controller, Duration::from_secs(15)).await;
    eprintln!(
        "approle-bench: controller idle RSS {:.1} MiB; warm-up delivery…",
        mib(idle_rss)
    );
    let warm = stack.pod("warmup-0", json!({"vault-approle.io/role": ROLE}))?;
    stack.create(&warm).await?;
    stack
        .wait_pod("warmup-0", "delivered", Duration::from_secs(60), |p| {
            delivered(&p.metadata)
        })
        .await?;
    delete_and_wait(stack, "", Some("warmup-0")).await?;

    // 2. The floor.
    let floor = Floor::start(stack).await?;
    let mut alone = Vec::with_capacity(floor_samples);
    for _ in 0..floor_samples {
        alone.push(floor.one().await?);
    }
    let floor_alone = Percentiles::of(&mut alone);
    eprintln!(
        "approle-bench: floor (one delivery's work, alone) p50 {:.2} ms",
        floor_alone.p50
    );

    // 3. Bursts.
    let mut burst_results = Vec::new();
    for (i, &n) in bursts.iter().enumerate() {
        eprintln!("approle-bench: burst of {n} pods…");
        let r = run_burst(
            stack,
            &pids,
            tick,
            &root_accessor,
            n,
            &format!("b{i}-{n}"),
            args.timeout,
        )
        .await
        .with_context(|| format!("burst of {n}"))?;
        let (floor_wall, mut floor_lat) = floor.burst(n, args.floor_concurrency).await?;
        let fb = FloorBurst {
            deliveries_per_s: n as f64 / floor_wall.as_secs_f64(),
            latency: Percentiles::of(&mut floor_lat),
        };
        eprintln!(
            "approle-bench:   {}/{} delivered, {:.0}/s (floor {:.0}/s), p99 {:.1} ms, exactly once: {}",
            r.delivered,
            n,
            r.deliveries_per_s,
            fb.deliveries_per_s,
            r.latency.p99,
            r.exactly_once()
        );
        burst_results.push((r, fb));
    }
    let idle_after = stable_rss(pids.controller, Duration::from_secs(15)).await;

    // 4. approle-init alone.
    eprintln!("approle-bench: approle-init, {init_runs} direct runs…");
    let init = init_phase(stack, &floor, init_runs, linkage).await?;

    // 5. Managed pods in the cache. Last: deleting them sets the controller revoking their
    // (made-up) tokens in the background.
    eprintln!("approle-bench: {cached} managed pods cached…");
    let cache = cache_phase(stack, &pids, cached).await?;

    let report = Report {
        bursts: burst_results,
        floor_alone,
        idle_rss,
        idle_after,
        cache,
        init,
        cached,
    };
    report.print();
    if let Some(path) = &args.json_out {
        std::fs::write(path, serde_json::to_string_pretty(&report.json())?)
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("approle-bench: figures written to {}", path.display());
    }
    let failed: Vec<String> = report
        .bursts
        .iter()
        .filter(|(r, _)| !r.exactly_once())
        .map(|(r, _)| format!("burst of {}", r.pods))
        .collect();
    if !failed.is_empty() {
        bail!("not delivered exactly once: {}", failed.join(", "));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// /proc figures

#[derive(Debug, Clone, Copy)]
struct Pids {
    controller: u32,
    vault: u32,
    kube: u32,
}

/// A `Vm*` line of `/proc/<pid>/status`, in KiB.
fn status_kib(pid: u32, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    stat_sum(pid, 11)
}

/// cutime + cstime: the CPU of a process's reaped children (kube-dev's approle-init processes).
fn children_cpu_ticks(pid: u32) -> Option<u64> {
    stat_sum(pid, 13)
}

/// Sum of two consecutive `/proc/<pid>/stat` fields, counted from the one after the command name
/// (which may hold spaces): index 11 is utime (field 14), 13 is cutime (field 16).
fn stat_sum(pid: u32, index: usize) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let a: u64 = fields.get(index)?.parse().ok()?;
    let b: u64 = fields.get(index + 1)?.parse().ok()?;
    Some(a + b)
}

/// Resets a process's peak RSS (`VmHWM`) to its current RSS (Linux ≥ 4.0, same user).
fn reset_peak(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

fn clk_tck() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// VmRSS once it has not moved by more than 64 KiB for a second (or when `limit` passes).
async fn stable_rss(pid: u32, limit: Duration) -> u64 {
    let deadline = Instant::now() + limit;
    let mut last = status_kib(pid, "VmRSS").unwrap_or(0);
    let mut steady = 0;
    while Instant::now() < deadline && steady < 10 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = status_kib(pid, "VmRSS").unwrap_or(0);
        if now.abs_diff(last) <= 64 {
            steady += 1;
        } else {
            steady = 0;
        }
        last = now;
    }
    last
}

/// Samples a process's RSS until stopped; returns the highest sample (a fallback for `VmHWM`).
struct RssSampler {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<(u64, Vec<u32>)>,
}

impl RssSampler {
    /// Every 10 ms until finished: the process's RSS (the peak is kept), and how many tasks are
    /// runnable machine-wide (`procs_running` in `/proc/stat`, less the sampler itself): the
    /// queue in which each step of a delivery waits for a core.
    fn start(pid: u32) -> Self {
        let (stop, mut rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let (mut max, mut runnable) = (0, Vec::new());
            loop {
                max = max.max(status_kib(pid, "VmRSS").unwrap_or(0));
                runnable.extend(procs_running().map(|n| n.saturating_sub(1)));
                tokio::select! {
                    _ = &mut rx => return (max, runnable),
                    () = tokio::time::sleep(Duration::from_millis(10)) => {}
                }
            }
        });
        Self { stop, task }
    }

    /// The peak RSS in KiB and the runnable-task samples.
    async fn finish(self) -> (u64, Vec<u32>) {
        let _ = self.stop.send(());
        self.task.await.unwrap_or_default()
    }
}

/// Tasks running or waiting for a core right now, machine-wide.
fn procs_running() -> Option<u32> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    stat.lines()
        .find_map(|l| l.strip_prefix("procs_running "))?
        .trim()
        .parse()
        .ok()
}

/// The runnable-task samples of a burst: how long the queue for the cores was.
#[derive(Debug, Default, Clone, Copy)]
struct RunQueue {
    mean: f64,
    p50: u32,
    p95: u32,
    max: u32,
    samples: usize,
}

impl RunQueue {
    fn of(samples: &mut [u32]) -> Self {
        samples.sort_unstable();
        let at = |p: f64| nearest_rank(samples, p).unwrap_or(0);
        Self {
            mean: samples.iter().map(|&n| f64::from(n)).sum::<f64>() / samples.len().max(1) as f64,
            p50: at(50.0),
            p95: at(95.0),
            max: samples.last().copied().unwrap_or(0),
            samples: samples.len(),
        }
    }

    fn json(&self) -> Value {
        json!({"mean": round(self.mean), "p50": self.p50, "p95": self.p95, "max": self.max,
               "samples": self.samples, "cores": cores()})
    }
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[derive(Debug, Clone, Copy, Default)]
struct Cpu {
    controller: u64,
    vault: u64,
    kube: u64,
    init: u64,
    /// This process: creating the pods and watching them (its share of the same 2 cores).
    bench: u64,
}

impl Cpu {
    fn now(p: &Pids) -> Self {
        Self {
            controller: cpu_ticks(p.controller).unwrap_or(0),
            vault: cpu_ticks(p.vault).unwrap_or(0),
            kube: cpu_ticks(p.kube).unwrap_or(0),
            init: children_cpu_ticks(p.kube).unwrap_or(0),
            bench: cpu_ticks(std::process::id()).unwrap_or(0),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Percentiles

#[derive(Debug, Clone, Copy, Default)]
struct Percentiles {
    p50: f64,
    p95: f64,
    p99: f64,
    max: f64,
    n: usize,
}

/// The `p`-th percentile of sorted samples by nearest rank; `None` if there are none.
fn nearest_rank<T: Copy>(sorted: &[T], p: f64) -> Option<T> {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len().max(1)) - 1).copied()
}

impl Percentiles {
    /// Nearest-rank percentiles of durations, in milliseconds.
    fn of(samples: &mut [Duration]) -> Self {
        samples.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let at = |p: f64| nearest_rank(samples, p).map(ms).unwrap_or(0.0);
        Self {
            p50: at(50.0),
            p95: at(95.0),
            p99: at(99.0),
            max: samples.last().copied().map(ms).unwrap_or(0.0),
            n: samples.len(),
        }
    }

    fn json(&self) -> Value {
        json!({"p50": round(self.p50), "p95": round(self.p95), "p99": round(self.p99),
               "max": round(self.max), "samples": self.n})
    }
}

fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn ratio(value: f64, floor: f64) -> f64 {
    if floor > 0.0 {
        round(value / floor)
    } else {
        0.0
    }
}

// ---------------------------------------------------------------------------------------------
// The floor: a minimal client doing one delivery's work.

/// One delivery's work with nothing else: the Vault calls (mint wrapped secret_id, wrapping lookup,
/// unwrap, AppRole login) over one kept-alive HTTP client, and one mutual-TLS handshake against a
/// server with the init container's TLS configuration.
struct Floor {
    http: reqwest::Client,
    vault: String,
    controller_token: String,
    role_id: String,
    ca_pem: String,
    push_tls: Arc<rustls::ClientConfig>,
    connector: tokio_rustls::TlsConnector,
    server: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Floor {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Floor {
    async fn start(stack: &Stack) -> anyhow::Result<Self> {
        let (status, body) = stack
            .vault("GET", &format!("auth/approle/role/{ROLE}/role-id"), None)
            .await?;
        if status != 200 {
            bail!("reading role-id: {status}");
        }
        let role_id = body["data"]["role_id"]
            .as_str()
            .context("no role_id")?
            .to_owned();
        let client = stack.ca.issue(
            "approle-bench-floor",
            &[],
            Usage::Client,
            Duration::from_secs(3600),
        )?;
        let push_tls = Arc::new(tls::push_client_config(&client.cert_pem, &client.key_pem)?);
        let server_tls = Arc::new(tls::receiver_server_config(stack.ca.cert_pem())?);
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let server = listener.local_addr()?;
        let acceptor = tokio_rustls::TlsAcceptor::from(server_tls);
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    // The byte tells the client that the server verified its certificate.
                    if let Ok(mut s) = acceptor.accept(tcp).await {
                        let _ = s.write_all(b"k").await;
                        let _ = s.shutdown().await;
                    }
                });
            }
        });
        Ok(Self {
            http: reqwest::Client::builder()
                .tls_certs_only(Vec::new())
                .build()?,
            vault: stack.vault_url.clone(),
            controller_token: stack.controller_token.clone(),
            role_id,
            ca_pem: stack.ca.cert_pem().to_owned(),
            connector: tokio_rustls::TlsConnector::from(push_tls.clone()),
            push_tls,
            server,
            task,
        })
    }

    async fn call(
        &self,
        path: &str,
        token: Option<&str>,
        wrap: bool,
        body: Value,
    ) -> anyhow::Result<Value> {
        let mut req = self
            .http
            .post(format!("{}/v1/{path}", self.vault))
            .json(&body);
        if let Some(t) = token {
            req = req.header("X-Vault-Token", t);
        }
        if wrap {
            req = req.header("X-Vault-Wrap-TTL", "60");
        }
        let resp = req.send().await?;
        let status = resp.status();
        if !status.is_success() {
            // No body: it could echo what we sent.
            bail!("floor: {path} answered {status}");
        }
        Ok(resp.json().await?)
    }

    /// A wrapped secret_id for `cidr`, as the controller mints it; returns the wrapping token.
    async fn mint(&self, cidr: &str, pod: &str) -> anyhow::Result<String> {
        let metadata = json!({"namespace": "default", "pod": pod, "pod_uid": pod,
                              "service_account": "default", "node": "kube-dev-node"})
        .to_string();
        let v = self
            .call(
                &format!("auth/approle/role/{ROLE}/secret-id"),
                Some(&self.controller_token),
                true,
                json!({"metadata": metadata, "cidr_list": [cidr], "token_bound_cidrs": [cidr],
                       "num_uses": 1, "ttl": 120}),
            )
            .await?;
        Ok(v["wrap_info"]["token"]
            .as_str()
            .context("floor: mint was not wrapped")?
            .to_owned())
    }

    async fn handshake(&self) -> anyhow::Result<()> {
        let tcp = TcpStream::connect(self.server).await?;
        tcp.set_nodelay(true)?;
        let name = rustls::pki_types::ServerName::try_from("vault-approle-init")?;
        let mut s = self.connector.connect(name, tcp).await?;
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await?;
        Ok(())
    }

    /// One delivery's work; returns how long it took.
    async fn one(&self) -> anyhow::Result<Duration> {
        let t = Instant::now();
        let wrapping = self.mint("127.0.0.1/32", "floor").await?;
        self.handshake().await?;
        let lookup = self
            .call(
                "sys/wrapping/lookup",
                None,
                false,
                json!({"token": wrapping}),
            )
            .await?;
        if lookup["data"]["creation_path"].as_str().is_none() {
            bail!("floor: lookup has no creation_path");
        }
        let unwrapped = self
            .call("sys/wrapping/unwrap", Some(&wrapping), false, json!({}))
            .await?;
        let secret_id = unwrapped["data"]["secret_id"]
            .as_str()
            .context("floor: unwrap has no secret_id")?
            .to_owned();
        let login = self
            .call(
                "auth/approle/login",
                None,
                false,
                json!({"role_id": self.role_id, "secret_id": secret_id}),
            )
            .await?;
        if login["auth"]["client_token"].as_str().is_none() {
            bail!("floor: login has no client_token");
        }
        Ok(t.elapsed())
    }

    /// `n` deliveries' work, `concurrency` at a time: wall time and each one's duration.
    async fn burst(
        &self,
        n: usize,
        concurrency: usize,
    ) -> anyhow::Result<(Duration, Vec<Duration>)> {
        let t = Instant::now();
        let lat: Vec<Duration> = stream::iter(0..n)
            .map(|_| self.one())
            .buffer_unordered(concurrency.max(1))
            .try_collect()
            .await?;
        Ok((t.elapsed(), lat))
    }

    /// The floor of starting a listening init container: spawning a trivial process, plus making
    /// the receiver's TLS configuration (ephemeral key and certificate) and binding a socket.
    async fn start_to_listening(&self, runs: usize) -> anyhow::Result<Percentiles> {
        let mut samples = Vec::new();
        for _ in 0..runs {
            let t = Instant::now();
            let status = tokio::process::Command::new("true")
                .stdin(Stdio::null())
                .status()
                .await?;
            if !status.success() {
                bail!("`true` failed");
            }
            let _config = tls::receiver_server_config(&self.ca_pem)?;
            let _listener = TcpListener::bind("127.0.0.1:0").await?;
            samples.push(t.elapsed());
        }
        Ok(Percentiles::of(&mut samples))
    }
}

// ---------------------------------------------------------------------------------------------
// Bursts

fn delivered(meta: &ObjectMeta) -> bool {
    annotation(meta, "vault-approle.io/status").as_deref() == Some("delivered")
}

fn annotation(meta: &ObjectMeta, key: &str) -> Option<String> {
    meta.annotations.as_ref().and_then(|a| a.get(key)).cloned()
}

/// What one burst measured.
#[derive(Debug, Default)]
struct BurstResult {
    pods: usize,
    delivered: usize,
    create_s: f64,
    wall_s: f64,
    deliveries_per_s: f64,
    latency: Percentiles,
    start_to_listening: Percentiles,
    listening_to_token: Percentiles,
    /// `listening → token` split at the controller's stage lines; empty without its debug lines.
    stages: Vec<(&'static str, Percentiles)>,
    latency_missing: usize,
    controller_cpu_s: f64,
    vault_cpu_s: f64,
    kube_cpu_s: f64,
    init_cpu_s: f64,
    bench_cpu_s: f64,
    controller_peak_rss_kib: u64,
    controller_rss_after_kib: u64,
    /// Runnable tasks machine-wide, sampled from the first create to the last delivery.
    run_queue: RunQueue,
    tokens: usize,
    token_json_matches: usize,
    logins_per_pod: BTreeMap<usize, usize>,
    mints: usize,
    vault_requests: usize,
    vault_requests_by_path: BTreeMap<String, usize>,
    delivered_events_per_pod: BTreeMap<usize, usize>,
    init_exit_codes: BTreeMap<i32, usize>,
    live_secret_ids: usize,
}

impl BurstResult {
    fn exactly_once(&self) -> bool {
        let n = self.pods;
        self.delivered == n
            && self.tokens == n
            && self.token_json_matches == n
            && self.logins_per_pod.len() == 1
            && self.logins_per_pod.get(&1) == Some(&n)
            && self.delivered_events_per_pod.len() == 1
            && self.delivered_events_per_pod.get(&1) == Some(&n)
            && self.init_exit_codes.len() == 1
            && self.init_exit_codes.get(&0) == Some(&n)
            && self.live_secret_ids == 0
    }

    fn requests_per_delivery(&self) -> f64 {
        if self.delivered == 0 {
            0.0
        } else {
            self.vault_requests as f64 / self.delivered as f64
        }
    }
}

async fn run_burst(
    stack: &Stack,
    pids: &Pids,
    tick: u64,
    root_accessor: &str,
    n: usize,
    tag: &str,
    timeout: Duration,
) -> anyhow::Result<BurstResult> {
    let api = stack.pods();
    let selector = format!("bench-burst={tag}");
    let audit_start = stack.audit().len();
    let cpu0 = Cpu::now(pids);
    let peak_reset = reset_peak(pids.controller);
    let sampler = RssSampler::start(pids.controller);

    // Watch the burst's pods; remember when each was first seen delivered.
    let seen: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let (count_tx, mut count_rx) = tokio::sync::watch::channel(0usize);
    let watch_task = {
        let seen = seen.clone();
        // Metadata only (`PartialObjectMetadata`): the status annotation is all the watch reads,
        // and decoding a thousand whole pods' every update cost CPU the measured processes share.
        let metas: Api<PartialObjectMeta<Pod>> = Api::namespaced(stack.kube_client(), "default");
        let stream = watcher(metas, watcher::Config::default().labels(&selector))
            .default_backoff()
            .applied_objects();
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(ev) = stream.next().await {
                let Ok(pod) = ev else { continue };
                if delivered(&pod.metadata) {
                    let now = Instant::now();
                    let count = {
                        let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
                        seen.entry(pod.metadata.name.clone().unwrap_or_default())
                            .or_insert(now);
                        seen.len()
                    };
                    let _ = count_tx.send(count);
                }
            }
        })
    };

    let t0 = Instant::now();
    stream::iter(0..n)
        .map(|i| {
            let name = format!("{tag}-{i}");
            async move {
                let mut pod = stack.pod(&name, json!({"vault-approle.io/role": ROLE}))?;
                pod.metadata
                    .labels
                    .get_or_insert_with(Default::default)
                    .insert("bench-burst".into(), tag.to_owned());
                stack
                    .create(&pod)
                    .await
                    .with_context(|| format!("creating {name}"))
            }
        })
        .buffer_unordered(CREATE_CONCURRENCY)
        .try_collect::<Vec<_>>()
        .await?;
    let create_s = t0.elapsed().as_secs_f64();

    // Only whether it happened: the watch's `Ref` must not be held (it blocks the sender).
    let waited = tokio::time::timeout(timeout, count_rx.wait_for(|c| *c >= n))
        .await
        .map(|r| r.is_ok());
    watch_task.abort();
    let cpu1 = Cpu::now(pids);
    let (sampled_peak, mut runnable) = sampler.finish().await;
    let hwm = status_kib(pids.controller, "VmHWM").unwrap_or(0);
    let controller_peak_rss_kib = if peak_reset { hwm } else { sampled_peak };
    let times = seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
    if !matches!(waited, Ok(true)) {
        eprintln!(
            "approle-bench:   only {} of {n} delivered within {timeout:?}",
            times.len()
        );
    }
    let last = times.values().max().copied().unwrap_or(t0);
    let wall = last.duration_since(t0);
    let secs = |ticks: u64| ticks as f64 / tick as f64;

    let mut r = BurstResult {
        pods: n,
        delivered: times.len(),
        create_s,
        wall_s: wall.as_secs_f64(),
        deliveries_per_s: if wall.is_zero() {
            0.0
        } else {
            times.len() as f64 / wall.as_secs_f64()
        },
        controller_cpu_s: secs(cpu1.controller.saturating_sub(cpu0.controller)),
        vault_cpu_s: secs(cpu1.vault.saturating_sub(cpu0.vault)),
        kube_cpu_s: secs(cpu1.kube.saturating_sub(cpu0.kube)),
        init_cpu_s: secs(cpu1.init.saturating_sub(cpu0.init)),
        bench_cpu_s: secs(cpu1.bench.saturating_sub(cpu0.bench)),
        controller_peak_rss_kib,
        run_queue: RunQueue::of(&mut runnable),
        ..Default::default()
    };

    // Init containers end once the token is written: wait for all to be terminated.
    let lp = ListParams::default().labels(&selector);
    let pods = wait_for("init containers to end", Duration::from_secs(60), || {
        let (api, lp) = (api.clone(), lp.clone());
        async move {
            let list = api.list(&lp).await.ok()?;
            list.items
                .iter()
                .all(|p| init_exit(p).is_some())
                .then_some(list.items)
        }
    })
    .await
    .or_else(|_| -> anyhow::Result<Vec<Pod>> {
        eprintln!("approle-bench:   not every init container ended within 60s");
        Ok(Vec::new())
    })?;
    let pods = if pods.is_empty() {
        api.list(&lp).await?.items
    } else {
        pods
    };

    // Every init process has been reaped by now: their CPU is all in kube-dev's cutime/cstime.
    r.init_cpu_s = secs(
        children_cpu_ticks(pids.kube)
            .unwrap_or(0)
            .saturating_sub(cpu0.init),
    );
    let mut latencies = Vec::new();
    let (mut to_listen, mut listen_to_token) = (Vec::new(), Vec::new());
    let marks = stack
        .controllers
        .first()
        .map(|c| controller_marks(&c.output()))
        .unwrap_or_default();
    let mut stages: Vec<Vec<Duration>> = vec![Vec::new(); STAGES.len()];
    let mut ips = HashSet::new();
    for p in &pods {
        *r.init_exit_codes
            .entry(init_exit(p).unwrap_or(-1))
            .or_default() += 1;
        if let Some(ip) = p.status.as_ref().and_then(|s| s.pod_ip.clone()) {
            ips.insert(ip);
        }
        let dir = stack.volume_dir(p);
        if std::fs::metadata(dir.join("token")).is_ok_and(|m| m.len() > 0) {
            r.tokens += 1;
        }
        let accessor = annotation(&p.metadata, "vault-approle.io/token-accessor");
        let json_accessor = std::fs::read_to_string(dir.join("token.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .and_then(|v| v["accessor"].as_str().map(str::to_owned));
        if accessor.is_some() && accessor == json_accessor {
            r.token_json_matches += 1;
        }
        let Some(init) = init_times(stack, p) else {
            r.latency_missing += 1;
            continue;
        };
        latencies.push(since(init.started, init.written));
        if let Some(listening) = init.listening {
            to_listen.push(since(init.started, listening));
            listen_to_token.push(since(listening, init.written));
            let name = p.metadata.name.as_deref().unwrap_or_default();
            if let Some(at) = marks.get(name) {
                split_stages(listening, at, init.written, &mut stages);
            }
        }
    }
    r.latency = Percentiles::of(&mut latencies);
    r.start_to_listening = Percentiles::of(&mut to_listen);
    r.listening_to_token = Percentiles::of(&mut listen_to_token);
    if stages.iter().all(|s| !s.is_empty()) {
        r.stages = STAGES
            .iter()
            .zip(&mut stages)
            .map(|((name, _), samples)| (*name, Percentiles::of(samples)))
            .collect();
    }

    // The audit log: one successful login per pod IP; requests per delivery.
    let want = r.delivered;
    let window = wait_for(
        "the burst's logins in the audit log",
        Duration::from_secs(20),
        || {
            let ips = &ips;
            async move {
                let entries: Vec<Value> = stack
                    .audit()
                    .into_iter()
                    .skip(audit_start)
                    .filter(|e| e["accessor"].as_str() != Some(root_accessor))
                    .collect();
                let logins = entries
                    .iter()
                    .filter(|e| {
                        is_login(e)
                            && e["remote_address"]
                                .as_str()
                                .is_some_and(|ip| ips.contains(ip))
                    })
                    .count();
                (logins >= want).then_some(entries)
            }
        },
    )
    .await
    .unwrap_or_default();
    let mut logins: HashMap<&str, usize> = HashMap::new();
    for e in &window {
        let path = e["path"].as_str().unwrap_or_default();
        *r.vault_requests_by_path.entry(path.to_owned()).or_default() += 1;
        if is_login(e)
            && let Some(ip) = e["remote_address"].as_str().filter(|ip| ips.contains(*ip))
        {
            *logins.entry(ip).or_default() += 1;
        }
        if path == format!("auth/approle/role/{ROLE}/secret-id") && e["status"] == 200 {
            r.mints += 1;
        }
    }
    r.vault_requests = window.len();
    for ip in &ips {
        *r.logins_per_pod
            .entry(logins.get(ip.as_str()).copied().unwrap_or(0))
            .or_default() += 1;
    }
    r.live_secret_ids = stack.live_secret_ids(ROLE).await?.len();

    // One SecretIdDelivered Event per pod.
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(stack.kube_client(), "default");
    let mut per_pod: HashMap<String, usize> = HashMap::new();
    for e in events.list(&ListParams::default()).await?.items {
        let name = e
            .regarding
            .as_ref()
            .and_then(|r| r.name.clone())
            .unwrap_or_default();
        if name.starts_with(&format!("{tag}-")) && e.reason.as_deref() == Some("SecretIdDelivered")
        {
            *per_pod.entry(name).or_default() += 1;
        }
    }
    for p in &pods {
        let name = p.metadata.name.clone().unwrap_or_default();
        *r.delivered_events_per_pod
            .entry(per_pod.get(&name).copied().unwrap_or(0))
            .or_default() += 1;
    }

    delete_and_wait(stack, &selector, None).await?;
    r.controller_rss_after_kib = status_kib(pids.controller, "VmRSS").unwrap_or(0);
    Ok(r)
}

fn is_login(e: &Value) -> bool {
    e["path"].as_str() == Some("auth/approle/login") && e["status"] == 200
}

/// Exit code of the terminated init container.
fn init_exit(p: &Pod) -> Option<i32> {
    p.status
        .as_ref()?
        .init_container_statuses
        .as_ref()?
        .iter()
        .find(|c| c.name == approle_shared::INIT_CONTAINER_NAME)?
        .state
        .as_ref()?
        .terminated
        .as_ref()
        .map(|t| t.exit_code)
}

/// When an init container started (its first log line; kube-dev's `startedAt` has whole seconds
/// only), logged `listening on`, and logged `token files written` (right after the rename).
/// All are microsecond timestamps of one clock; the token file's mtime is not used: file times
/// come from the kernel's coarse clock (a tick, 4 ms here, behind), which made fast deliveries
/// look as if written before they started.
struct InitTimes {
    started: SystemTime,
    listening: Option<SystemTime>,
    written: SystemTime,
}

fn init_times(stack: &Stack, pod: &Pod) -> Option<InitTimes> {
    let text = stack.init_log(pod)?;
    let at = |what: &str| text.lines().find(|l| l.contains(what)).and_then(log_stamp);
    let written = at("token files written")?;
    let started = text.lines().find_map(log_stamp)?;
    (written >= started).then(|| InitTimes {
        started,
        listening: at("listening on"),
        written,
    })
}

/// The timestamp that starts a log line (both binaries log RFC 3339, microseconds, UTC).
fn log_stamp(line: &str) -> Option<SystemTime> {
    let stamp = line
        .split_whitespace()
        .next()?
        .parse::<jiff::Timestamp>()
        .ok()?;
    Some(SystemTime::from(stamp))
}

/// `b - a`, zero if `b` came first.
fn since(a: SystemTime, b: SystemTime) -> Duration {
    b.duration_since(a).unwrap_or_default()
}

/// The stages of `listening → token`, each ending at a controller debug line (the text it
/// holds), the last at the init container's `token files written`.
const STAGES: [(&str, Option<&str>); 6] = [
    // kube-dev writes the status, the watch carries it, the controller decides.
    ("seen running", Some("waiting for a delivery slot")),
    ("slot", Some("delivery slot taken")),
    // TCP + mutual TLS to the pod, GET /v1/identity.
    (
        "identity shown",
        Some("identity token received; asking the API server"),
    ),
    // The TokenReview.
    (
        "identity verified",
        Some("init container reached, pod identity verified"),
    ),
    ("minted", Some("minted wrapped secret_id")),
    // The push; the init container's lookup, unwrap, login and write.
    ("token written", None),
];

/// Per pod name, when the controller first logged each stage line of [`STAGES`]. Empty unless
/// the controller logged `approle_controller=debug`.
fn controller_marks(log: &str) -> HashMap<String, [Option<SystemTime>; STAGES.len() - 1]> {
    let mut marks: HashMap<String, [Option<SystemTime>; STAGES.len() - 1]> = HashMap::new();
    for line in log.lines() {
        let Some(stage) = STAGES
            .iter()
            .position(|(_, text)| text.is_some_and(|t| line.contains(t)))
        else {
            continue;
        };
        let name = line
            .split("pod.name=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next());
        if let (Some(name), Some(at)) = (name, log_stamp(line)) {
            marks.entry(name.to_owned()).or_default()[stage].get_or_insert(at);
        }
    }
    marks
}

/// Adds one pod's stage durations; a pod missing a stage line adds none (a stage that began
/// before the previous one ended, such as a status seen before `listening on` was logged,
/// counts zero).
fn split_stages(
    listening: SystemTime,
    marks: &[Option<SystemTime>; STAGES.len() - 1],
    written: SystemTime,
    out: &mut [Vec<Duration>],
) {
    let Some(ends) = marks.iter().copied().collect::<Option<Vec<_>>>() else {
        return;
    };
    let mut from = listening;
    for (stage, end) in ends.into_iter().chain([written]).enumerate() {
        out[stage].push(since(from, end));
        from = from.max(end);
    }
}

/// Deletes the pods matching `selector` (or the one named `name`) at once and waits until they
/// are gone.
async fn delete_and_wait(stack: &Stack, selector: &str, name: Option<&str>) -> anyhow::Result<()> {
    let api = stack.pods();
    let dp = DeleteParams {
        grace_period_seconds: Some(0),
        ..Default::default()
    };
    match name {
        Some(n) => {
            api.delete(n, &dp).await?;
            wait_for(&format!("pod {n} to go"), Duration::from_secs(60), || {
                let api = api.clone();
                async move { matches!(api.get_opt(n).await, Ok(None)).then_some(()) }
            })
            .await
        }
        None => {
            let lp = ListParams::default().labels(selector);
            api.delete_collection(&dp, &lp).await?;
            wait_for(
                &format!("pods {selector} to go"),
                Duration::from_secs(180),
                || {
                    let (api, lp) = (api.clone(), lp.clone());
                    async move {
                        api.list(&lp)
                            .await
                            .ok()
                            .filter(|l| l.items.is_empty())
                            .map(|_| ())
                    }
                },
            )
            .await
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Managed pods in the cache

#[derive(Debug, Default)]
struct CacheResult {
    create_s: f64,
    rss_kib: u64,
    peak_rss_kib: u64,
    controller_cpu_s: f64,
}

async fn cache_phase(stack: &Stack, pids: &Pids, count: usize) -> anyhow::Result<CacheResult> {
    let tick = clk_tck();
    let cpu0 = Cpu::now(pids);
    reset_peak(pids.controller);
    let t0 = Instant::now();
    let label = |pod: &mut Pod| {
        pod.metadata
            .labels
            .get_or_insert_with(Default::default)
            .insert("bench-cache".into(), "yes".into());
    };
    // Each as a pod some time after its delivery looks: injected (what the webhook adds), with
    // the annotations the controller wrote, a token accessor among them, which the controller's
    // pod cache and its revocation tracker both keep.
    let mut template = stack
        .injected_pod("cached", json!({"vault-approle.io/role": ROLE}))
        .await?;
    label(&mut template);
    template.spec.get_or_insert_with(Default::default).node_name = Some(ELSEWHERE_NODE.into());
    let template = &template;
    stream::iter(0..count)
        .map(|i| {
            let name = format!("cached-{i}");
            async move {
                let mut pod = template.clone();
                pod.metadata.name = Some(name.clone());
                pod.metadata
                    .annotations
                    .get_or_insert_with(Default::default)
                    .extend(delivered_annotations(i));
                stack
                    .create(&pod)
                    .await
                    .with_context(|| format!("creating {name}"))
            }
        })
        .buffer_unordered(CREATE_CONCURRENCY)
        .try_collect::<Vec<_>>()
        .await?;
    let create_s = t0.elapsed().as_secs_f64();
    // The controller applies watch events in order: once a pod created after all of them is
    // delivered, its cache holds every one.
    let mut sentinel = stack.pod("cache-sentinel", json!({"vault-approle.io/role": ROLE}))?;
    label(&mut sentinel);
    stack.create(&sentinel).await?;
    stack
        .wait_pod(
            "cache-sentinel",
            "delivered",
            Duration::from_secs(120),
            |p| delivered(&p.metadata),
        )
        .await?;
    let rss_kib = stable_rss(pids.controller, Duration::from_secs(15)).await;
    let peak_rss_kib = status_kib(pids.controller, "VmHWM").unwrap_or(0);
    let cpu1 = Cpu::now(pids);
    delete_and_wait(stack, "bench-cache=yes", None).await?;
    Ok(CacheResult {
        create_s,
        rss_kib,
        peak_rss_kib,
        controller_cpu_s: cpu1.controller.saturating_sub(cpu0.controller) as f64 / tick as f64,
    })
}

/// The annotations the controller leaves on a delivered pod, with a made-up accessor of Vault's
/// shape (24 characters) and a containerd container ID as the run.
fn delivered_annotations(i: usize) -> [(String, String); 4] {
    use approle_shared::annotations::{DELIVERIES, LAST_DELIVERY, STATUS, TOKEN_ACCESSOR};
    [
        (STATUS.into(), "delivered".into()),
        (TOKEN_ACCESSOR.into(), format!("benchcached{i:013}")),
        (DELIVERIES.into(), "1".into()),
        (
            LAST_DELIVERY.into(),
            format!("2026-11-28T09:00:00.000000Z containerd://{i:064x}"),
        ),
    ]
}

// ---------------------------------------------------------------------------------------------
// approle-init alone

#[derive(Debug, Default)]
struct InitResult {
    start_to_listening: Percentiles,
    floor_start: Percentiles,
    peak_rss_kib: Vec<u64>,
    peak_rss_method: &'static str,
    binary_bytes: u64,
    stripped_bytes: Option<u64>,
    linkage: Linkage,
}

/// `linkage`: how the binary is linked, read once at the bench's start (it warns then).
async fn init_phase(
    stack: &Stack,
    floor: &Floor,
    runs: usize,
    linkage: Linkage,
) -> anyhow::Result<InitResult> {
    let bin = bin_path("approle-init")?;
    let time = Path::new("/usr/bin/time");
    let use_time = std::process::Command::new(time)
        .args(["-f", "%M", "true"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let mut listen = Vec::new();
    let mut rss = Vec::new();
    for i in 0..runs {
        // Timing runs: the process itself; RSS runs under GNU time (its %M is the peak RSS).
        let (d, _) = init_once(stack, floor, &bin, &format!("t{i}"), None).await?;
        listen.push(d);
        let out = stack.dir.path().join(format!("init-time-{i}.txt"));
        let (_, hwm) = init_once(
            stack,
            floor,
            &bin,
            &format!("r{i}"),
            use_time.then_some(out.as_path()),
        )
        .await?;
        rss.push(hwm);
    }
    let binary_bytes = std::fs::metadata(&bin)?.len();
    let stripped = stack.dir.path().join("approle-init.stripped");
    let stripped_bytes = std::process::Command::new("strip")
        .arg("-o")
        .arg(&stripped)
        .arg(&bin)
        .status()
        .ok()
        .filter(|s| s.success())
        .and_then(|_| std::fs::metadata(&stripped).ok())
        .map(|m| m.len());
    Ok(InitResult {
        start_to_listening: Percentiles::of(&mut listen),
        floor_start: floor.start_to_listening(runs.max(5)).await?,
        peak_rss_kib: rss,
        peak_rss_method: if use_time {
            "GNU time %M (getrusage maxrss)"
        } else {
            "VmHWM sampled every ms (lower bound)"
        },
        binary_bytes,
        stripped_bytes,
        linkage,
    })
}

/// Runs approle-init on 127.0.0.1, waits for `listening on`, pushes it one real delivery and
/// waits for exit 0. Returns start-to-listening and the peak RSS in KiB.
async fn init_once(
    stack: &Stack,
    floor: &Floor,
    bin: &Path,
    run: &str,
    time_out: Option<&Path>,
) -> anyhow::Result<(Duration, u64)> {
    let out_dir = stack.dir.path().join(format!("init-{run}"));
    std::fs::create_dir_all(&out_dir)?;
    let pod_uid = format!("bench-init-{run}");
    let mut cmd = match time_out {
        Some(path) => {
            let mut c = tokio::process::Command::new("/usr/bin/time");
            c.args(["-f", "%M", "-o"]).arg(path).arg(bin);
            c
        }
        None => tokio::process::Command::new(bin),
    };
    cmd.env_clear()
        .env("APPROLE_INIT_LISTEN", "127.0.0.1:0")
        .env("APPROLE_INIT_ROLE", ROLE)
        .env("APPROLE_INIT_POD_UID", &pod_uid)
        .env("APPROLE_INIT_VAULT_ADDR", &stack.vault_url)
        .env("APPROLE_INIT_CLIENT_CA_PEM", stack.ca.cert_pem())
        .env("APPROLE_INIT_OUT_DIR", &out_dir)
        .env("APPROLE_INIT_TIMEOUT", "30s")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let t0 = Instant::now();
    let mut child = cmd.spawn().context("starting approle-init")?;
    let pid = child.id().unwrap_or(0);
    let stderr = child.stderr.take().context("no stderr")?;
    let mut lines = BufReader::new(stderr).lines();
    let addr = tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(rest) = line.split("listening on ").nth(1) {
                return rest.split_whitespace().next().map(str::to_owned);
            }
        }
        None
    })
    .await
    .ok()
    .flatten()
    .context("approle-init did not log `listening on`")?;
    let listening = t0.elapsed();
    // Keep draining its log so it never blocks on a full pipe.
    let drain = tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    // Without GNU time, sample VmHWM of the init process while it lives (a lower bound).
    let sampler = time_out.is_none().then(|| {
        tokio::spawn(async move {
            let mut max = 0;
            while let Some(v) = status_kib(pid, "VmHWM") {
                max = max.max(v);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            max
        })
    });

    let wrapping = floor.mint("127.0.0.1/32", &pod_uid).await?;
    let http = reqwest::Client::builder()
        .tls_backend_preconfigured((*floor.push_tls).clone())
        .http1_only()
        .timeout(Duration::from_secs(15))
        .build()?;
    let resp = http
        .post(format!(
            "https://{addr}{}",
            approle_shared::push::SECRET_ID_PATH
        ))
        .json(
            &json!({"pod_uid": pod_uid, "role": ROLE, "role_id": floor.role_id,
                      "wrapping_token": wrapping}),
        )
        .send()
        .await?;
    if resp.status() != 200 {
        bail!("approle-init refused the push: {}", resp.status());
    }
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .map_err(|_| anyhow!("approle-init did not exit"))??;
    let _ = drain.await;
    if !status.success() {
        bail!("approle-init exited with {status}");
    }
    let hwm = match (time_out, sampler) {
        (Some(path), _) => std::fs::read_to_string(path)?
            .lines()
            .rev()
            .find_map(|l| l.trim().parse::<u64>().ok())
            .context("GNU time wrote no `%M` line")?,
        (None, Some(s)) => s.await.unwrap_or(0),
        (None, None) => 0,
    };
    Ok((listening, hwm))
}

/// How an approle-init binary is linked: the image's is a static PIE (`cargo release-init`); a
/// plain `cargo build` links glibc dynamically, which costs every start the dynamic loader's work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Linkage {
    /// No `PT_INTERP`: nothing is loaded or bound before `main`.
    Static,
    /// A `PT_INTERP` names the dynamic loader.
    Dynamic,
    /// Not a readable ELF file.
    #[default]
    Unknown,
}

impl Linkage {
    fn of(bin: &Path) -> Self {
        use object::read::elf::{ElfFile64, ProgramHeader};
        let Ok(data) = std::fs::read(bin) else {
            return Linkage::Unknown;
        };
        let Ok(elf) = ElfFile64::<object::Endianness>::parse(data.as_slice()) else {
            return Linkage::Unknown;
        };
        let endian = elf.endian();
        let interp = elf
            .elf_program_headers()
            .iter()
            .any(|h| h.p_type(endian) == object::elf::PT_INTERP);
        if interp {
            Linkage::Dynamic
        } else {
            Linkage::Static
        }
    }

    fn name(self) -> &'static str {
        match self {
            Linkage::Static => "static",
            Linkage::Dynamic => "dynamic",
            Linkage::Unknown => "unknown",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Report

struct FloorBurst {
    deliveries_per_s: f64,
    latency: Percentiles,
}

struct Report {
    bursts: Vec<(BurstResult, FloorBurst)>,
    floor_alone: Percentiles,
    idle_rss: u64,
    idle_after: u64,
    cache: CacheResult,
    init: InitResult,
    cached: usize,
}

/// One target of the issue: name, the figure, the limit and whether lower is better.
struct Target {
    name: String,
    value: f64,
    limit: f64,
    at_least: bool,
    unit: &'static str,
}

impl Target {
    fn met(&self) -> bool {
        if self.at_least {
            self.value >= self.limit
        } else {
            self.value <= self.limit
        }
    }
}

/// `", median of N runs"` for a burst size run more than once.
fn of_runs(runs: usize) -> String {
    if runs > 1 {
        format!(", median of {runs} runs")
    } else {
        String::new()
    }
}

impl Report {
    fn median(v: &[u64]) -> u64 {
        let mut v = v.to_vec();
        v.sort_unstable();
        v.get(v.len() / 2).copied().unwrap_or(0)
    }

    /// The median of `figure` over the bursts of `pods` pods, and how many there were: a size
    /// given more than once (`--bursts 100,100,100`) is judged by its median run, since this
    /// machine's speed drifts between runs.
    fn median_of(&self, pods: usize, figure: impl Fn(&BurstResult) -> f64) -> Option<(f64, usize)> {
        let mut v: Vec<f64> = self
            .bursts
            .iter()
            .filter(|(r, _)| r.pods == pods)
            .map(|(r, _)| figure(r))
            .collect();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).map(|m| (*m, v.len()))
    }

    fn targets(&self) -> Vec<Target> {
        let mut t = Vec::new();
        if let Some(pods) = self.bursts.iter().map(|(r, _)| r.pods).max() {
            let all_once = self
                .bursts
                .iter()
                .filter(|(r, _)| r.pods == pods)
                .all(|(r, _)| r.exactly_once());
            t.push(Target {
                name: format!("burst of {pods}: all delivered exactly once"),
                value: if all_once { 1.0 } else { 0.0 },
                limit: 1.0,
                at_least: true,
                unit: "",
            });
            if let Some((value, runs)) = self.median_of(pods, |r| r.deliveries_per_s) {
                t.push(Target {
                    name: format!("deliveries/s (burst of {pods}{})", of_runs(runs)),
                    value,
                    limit: 200.0,
                    at_least: true,
                    unit: "/s",
                });
            }
        }
        if let Some((value, runs)) = self.median_of(100, |r| r.latency.p99) {
            t.push(Target {
                name: format!("p99 init running → token (burst of 100{})", of_runs(runs)),
                value,
                limit: 100.0,
                at_least: false,
                unit: "ms",
            });
        }
        let max = |v: &[u64]| v.iter().copied().max().unwrap_or(0);
        t.extend([
            Target {
                name: "controller idle RSS".into(),
                value: mib(self.idle_rss),
                limit: 20.0,
                at_least: false,
                unit: "MiB",
            },
            Target {
                name: format!("controller RSS, {} managed pods cached", self.cached),
                value: mib(self.cache.rss_kib),
                limit: 60.0,
                at_least: false,
                unit: "MiB",
            },
            Target {
                name: "approle-init peak RSS (max of runs)".into(),
                value: mib(max(&self.init.peak_rss_kib)),
                limit: 10.0,
                at_least: false,
                unit: "MiB",
            },
            Target {
                name: "approle-init start → listening (median)".into(),
                value: self.init.start_to_listening.p50,
                limit: 20.0,
                at_least: false,
                unit: "ms",
            },
            Target {
                name: "approle-init stripped binary".into(),
                value: self
                    .init
                    .stripped_bytes
                    .map(|b| b as f64 / 1048576.0)
                    .unwrap_or(f64::NAN),
                limit: 8.0,
                at_least: false,
                unit: "MiB",
            },
        ]);
        t
    }

    fn print(&self) {
        println!();
        println!(
            "{:<8} {:>9} {:>10} {:>10} {:>7} {:>9} {:>9} {:>9} {:>8} {:>8} {:>9} {:>6} {:>7}",
            "BURST",
            "DELIVERED",
            "DELIV/S",
            "FLOOR/S",
            "×FLOOR",
            "P50 ms",
            "P95 ms",
            "P99 ms",
            "FLOOR99",
            "×FLOOR",
            "CTL CPU s",
            "RSS MiB",
            "REQ/DEL"
        );
        for (r, f) in &self.bursts {
            println!(
                "{:<8} {:>9} {:>10.1} {:>10.1} {:>7.2} {:>9.1} {:>9.1} {:>9.1} {:>8.2} {:>8.1} {:>9.2} {:>6.1} {:>7.2}",
                r.pods,
                format!(
                    "{}{}",
                    r.delivered,
                    if r.exactly_once() { " ×1" } else { " !!" }
                ),
                r.deliveries_per_s,
                f.deliveries_per_s,
                ratio(f.deliveries_per_s, r.deliveries_per_s),
                r.latency.p50,
                r.latency.p95,
                r.latency.p99,
                f.latency.p99,
                ratio(r.latency.p99, f.latency.p99),
                r.controller_cpu_s,
                mib(r.controller_peak_rss_kib),
                r.requests_per_delivery(),
            );
        }
        println!(
            "(×1 = exactly once: status annotation, one token, one login per pod IP, one \
             SecretIdDelivered Event, init exit 0, no live secret_id; ×FLOOR for DELIV/S = floor/measured)"
        );
        for (r, _) in &self.bursts {
            let per = |cpu: f64| cpu * 1000.0 / r.delivered.max(1) as f64;
            println!(
                "burst {:>5}: init start → listening p50 {:.1} / p99 {:.1} ms, listening → token p50 {:.1} / p99 {:.1} ms; \
                 CPU ms per delivery: approle-init {:.1}, kube-dev {:.1}, controller {:.1}, vault-dev {:.1}, approle-bench {:.1}; \
                 tasks waiting for or on the {} cores: mean {:.1}, p95 {}",
                r.pods,
                r.start_to_listening.p50,
                r.start_to_listening.p99,
                r.listening_to_token.p50,
                r.listening_to_token.p99,
                per(r.init_cpu_s),
                per(r.kube_cpu_s),
                per(r.controller_cpu_s),
                per(r.vault_cpu_s),
                per(r.bench_cpu_s),
                cores(),
                r.run_queue.mean,
                r.run_queue.p95,
            );
            if !r.stages.is_empty() {
                let stages: Vec<String> = r
                    .stages
                    .iter()
                    .map(|(name, p)| format!("→ {name} {:.1} / {:.1}", p.p50, p.p95))
                    .collect();
                println!(
                    "burst {:>5}: listening {} ms (p50 / p95, from the controller's debug lines)",
                    r.pods,
                    stages.join(", "),
                );
            }
        }
        println!(
            "floor, one delivery's work alone (mint + mTLS handshake + lookup + unwrap + login): \
             p50 {:.2} ms, p99 {:.2} ms",
            self.floor_alone.p50, self.floor_alone.p99
        );
        println!(
            "controller RSS: idle {:.1} MiB, idle after bursts {:.1} MiB, {} managed pods cached {:.1} MiB (peak {:.1})",
            mib(self.idle_rss),
            mib(self.idle_after),
            self.cached,
            mib(self.cache.rss_kib),
            mib(self.cache.peak_rss_kib)
        );
        let i = &self.init;
        println!(
            "approle-init ({} linking): start → listening median {:.1} ms, max {:.1} ms (floor {:.1} ms, ×{:.2}); \
             peak RSS median {:.1} MiB, max {:.1} MiB ({}); binary {:.2} MiB, stripped {}",
            i.linkage.name(),
            i.start_to_listening.p50,
            i.start_to_listening.max,
            i.floor_start.p50,
            ratio(i.start_to_listening.p50, i.floor_start.p50),
            mib(Self::median(&i.peak_rss_kib)),
            mib(i.peak_rss_kib.iter().copied().max().unwrap_or(0)),
            i.peak_rss_method,
            i.binary_bytes as f64 / 1048576.0,
            i.stripped_bytes
                .map(|b| format!("{:.2} MiB", b as f64 / 1048576.0))
                .unwrap_or_else(|| "n/a (no strip)".into())
        );
        println!();
        println!("{:<48} {:>12} {:>10}  MET", "TARGET", "VALUE", "LIMIT");
        for t in self.targets() {
            println!(
                "{:<48} {:>12} {:>10}  {}",
                t.name,
                format!("{:.1}{}", t.value, t.unit),
                format!(
                    "{}{}{}",
                    if t.at_least { "≥" } else { "≤" },
                    t.limit,
                    t.unit
                ),
                if t.met() { "yes" } else { "NO" }
            );
        }
    }

    fn json(&self) -> Value {
        let bursts: Vec<Value> = self
            .bursts
            .iter()
            .map(|(r, f)| {
                let keyed = |m: &BTreeMap<usize, usize>| {
                    m.iter()
                        .map(|(k, v)| (k.to_string(), json!(v)))
                        .collect::<serde_json::Map<_, _>>()
                };
                json!({
                    "pods": r.pods,
                    "delivered": r.delivered,
                    "exactly_once": r.exactly_once(),
                    "create_s": round(r.create_s),
                    "wall_s": round(r.wall_s),
                    "deliveries_per_s": round(r.deliveries_per_s),
                    "floor_deliveries_per_s": round(f.deliveries_per_s),
                    "deliveries_per_s_floor_ratio": ratio(f.deliveries_per_s, r.deliveries_per_s),
                    "init_to_token_ms": r.latency.json(),
                    "init_to_token_missing": r.latency_missing,
                    "init_start_to_listening_ms": r.start_to_listening.json(),
                    "init_listening_to_token_ms": r.listening_to_token.json(),
                    "listening_to_token_stages_ms": r
                        .stages
                        .iter()
                        .map(|(name, p)| (name.replace(' ', "_"), p.json()))
                        .collect::<serde_json::Map<_, _>>(),
                    "floor_latency_ms": f.latency.json(),
                    "latency_floor_ratio": {
                        "p50": ratio(r.latency.p50, f.latency.p50),
                        "p95": ratio(r.latency.p95, f.latency.p95),
                        "p99": ratio(r.latency.p99, f.latency.p99),
                    },
                    "controller_cpu_s": round(r.controller_cpu_s),
                    "controller_cpu_ms_per_delivery": round(r.controller_cpu_s * 1000.0 / r.delivered.max(1) as f64),
                    "vault_dev_cpu_s": round(r.vault_cpu_s),
                    "kube_dev_cpu_s": round(r.kube_cpu_s),
                    "approle_init_cpu_s": round(r.init_cpu_s),
                    "approle_bench_cpu_s": round(r.bench_cpu_s),
                    "approle_init_cpu_ms_each": round(r.init_cpu_s * 1000.0 / r.delivered.max(1) as f64),
                    "controller_peak_rss_mib": round(mib(r.controller_peak_rss_kib)),
                    "runnable_tasks": r.run_queue.json(),
                    "controller_rss_after_mib": round(mib(r.controller_rss_after_kib)),
                    "vault_requests": r.vault_requests,
                    "vault_requests_per_delivery": round(r.requests_per_delivery()),
                    "vault_requests_by_path": r.vault_requests_by_path,
                    "secret_id_mints": r.mints,
                    "tokens_written": r.tokens,
                    "token_json_matches_annotation": r.token_json_matches,
                    "pods_by_login_count": keyed(&r.logins_per_pod),
                    "pods_by_delivered_event_count": keyed(&r.delivered_events_per_pod),
                    "init_exit_codes": r.init_exit_codes.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
                    "live_secret_ids_after": r.live_secret_ids,
                })
            })
            .collect();
        let i = &self.init;
        json!({
            "machine": {
                "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
                "profile": if cfg!(debug_assertions) { "debug" } else { "release" },
            },
            "bursts": bursts,
            "floor_alone_ms": self.floor_alone.json(),
            "controller": {
                "idle_rss_mib": round(mib(self.idle_rss)),
                "idle_rss_after_bursts_mib": round(mib(self.idle_after)),
                "cached_pods": self.cached,
                "rss_with_cached_pods_mib": round(mib(self.cache.rss_kib)),
                "peak_rss_while_caching_mib": round(mib(self.cache.peak_rss_kib)),
                "cpu_s_while_caching": round(self.cache.controller_cpu_s),
                "cache_pods_create_s": round(self.cache.create_s),
            },
            "init": {
                "start_to_listening_ms": i.start_to_listening.json(),
                "floor_start_to_listening_ms": i.floor_start.json(),
                "start_to_listening_floor_ratio": ratio(i.start_to_listening.p50, i.floor_start.p50),
                "peak_rss_mib": {
                    "median": round(mib(Self::median(&i.peak_rss_kib))),
                    "max": round(mib(i.peak_rss_kib.iter().copied().max().unwrap_or(0))),
                    "runs": i.peak_rss_kib.len(),
                    "method": i.peak_rss_method,
                },
                "linkage": i.linkage.name(),
                "binary_bytes": i.binary_bytes,
                "stripped_bytes": i.stripped_bytes,
            },
            "targets": self.targets().iter().map(|t| json!({
                "name": t.name, "value": round(t.value), "limit": t.limit,
                "at_least": t.at_least, "unit": t.unit, "met": t.met(),
            })).collect::<Vec<_>>(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> SystemTime {
        log_stamp(s).expect("a timestamp")
    }

    #[test]
    fn stages_split_listening_to_token_at_the_controllers_lines() {
        // As the controller logs them (plain format, debug), other pods and lines in between.
        let span = r#"reconciling object{object.ref=Pod.v1./b0-100-7.default object.reason=object updated}:reconcile{pod.namespace="default" pod.name="b0-100-7"}"#;
        let other = r#"reconcile{pod.namespace="default" pod.name="b0-100-8"}"#;
        let log = [
            format!("2026-11-28T12:00:00.010000Z DEBUG {span}: waiting why=\"init container has no status yet\""),
            format!("2026-11-28T12:00:00.030000Z DEBUG {span}: init container running: waiting for a delivery slot"),
            format!("2026-11-28T12:00:00.031000Z DEBUG {other}: init container running: waiting for a delivery slot"),
            format!("2026-11-28T12:00:00.040000Z DEBUG {span}: delivery slot taken"),
            // A second reconcile of the same pod: the first line counts.
            format!("2026-11-28T12:00:00.041000Z DEBUG {span}: init container running: waiting for a delivery slot"),
            format!("2026-11-28T12:00:00.052000Z DEBUG {span}: identity token received; asking the API server (TokenReview)"),
            format!("2026-11-28T12:00:00.070000Z DEBUG {span}: init container reached, pod identity verified"),
            format!("2026-11-28T12:00:00.075000Z DEBUG {span}: minted wrapped secret_id secret_id_accessor=a"),
        ]
        .join("\n");
        let marks = controller_marks(&log);
        assert_eq!(marks.len(), 2);
        assert!(marks["b0-100-8"][1].is_none());

        let mut out = vec![Vec::new(); STAGES.len()];
        let listening = at("2026-11-28T12:00:00.020000Z");
        let written = at("2026-11-28T12:00:00.090000Z");
        split_stages(listening, &marks["b0-100-7"], written, &mut out);
        let ms: Vec<u128> = out.iter().map(|s| s[0].as_millis()).collect();
        assert_eq!(ms, [10, 10, 12, 18, 5, 15]);

        // Seen running before `listening on` was logged: that stage counts zero, the next
        // starts where it ended.
        let mut out = vec![Vec::new(); STAGES.len()];
        split_stages(
            at("2026-11-28T12:00:00.035000Z"),
            &marks["b0-100-7"],
            written,
            &mut out,
        );
        let ms: Vec<u128> = out.iter().map(|s| s[0].as_millis()).collect();
        assert_eq!(ms, [0, 5, 12, 18, 5, 15]);

        // A pod missing a line adds nothing.
        let mut out = vec![Vec::new(); STAGES.len()];
        split_stages(listening, &marks["b0-100-8"], written, &mut out);
        assert!(out.iter().all(Vec::is_empty));
    }

    #[test]
    fn the_run_queue_summary_is_of_the_samples() {
        let q = RunQueue::of(&mut [4, 1, 3, 2, 20, 2, 3, 1, 2, 2]);
        assert_eq!((q.p50, q.p95, q.max, q.samples), (2, 20, 20, 10));
        assert!((q.mean - 4.0).abs() < 1e-9, "{q:?}");
        let none = RunQueue::of(&mut []);
        assert_eq!((none.p50, none.max, none.samples), (0, 0, 0));
        // This test itself is running.
        assert!(procs_running().is_some_and(|n| n >= 1));
    }
}

//! kube-dev: a local Kubernetes API server with a kubelet simulator.
//!
//! Prints one line when ready — `kube-dev ready: server=https://127.0.0.1:PORT kubeconfig=PATH`
//! — then serves until SIGTERM or SIGINT, when it stops every pod process it started.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use approle_testkit::kube_dev::{Config, KubeDev};

// The simulator clones, encodes and drops JSON objects all day; glibc's malloc took a quarter of
// its CPU in the bench, CPU that the product's processes on the same cores then lack.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use clap::Parser;

/// Local Kubernetes API server + kubelet simulator for approle-injector tests.
#[derive(Debug, Parser)]
#[command(name = "kube-dev", version)]
struct Args {
    /// Address to listen on (loopback only; port 0 picks a free port).
    #[arg(long, env = "KUBE_DEV_LISTEN", default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Where to write the kubeconfig (default: `<root-dir>/kubeconfig`).
    #[arg(long, env = "KUBE_DEV_KUBECONFIG_OUT")]
    kubeconfig_out: Option<PathBuf>,
    /// Kubelet root: pod volumes, logs and app records (default: a temporary dir).
    #[arg(long, env = "KUBE_DEV_ROOT_DIR")]
    root_dir: Option<PathBuf>,
    /// Binary run for init containers whose image repository ends in `approle-init`.
    #[arg(long, env = "KUBE_DEV_INIT_BINARY")]
    init_binary: Option<PathBuf>,
    /// Extra env for init processes, `NAME=VALUE` (repeatable).
    #[arg(long = "init-env", env = "KUBE_DEV_INIT_ENV", value_delimiter = ',')]
    init_env: Vec<String>,
    /// Changes kept for watches; older resourceVersions get 410 Expired.
    #[arg(long, env = "KUBE_DEV_WATCH_HISTORY", default_value_t = 10_000)]
    watch_history: usize,
    /// BOOKMARK interval for watches that allow bookmarks.
    #[arg(long, env = "KUBE_DEV_BOOKMARK_INTERVAL", default_value = "10s", value_parser = humantime::parse_duration)]
    bookmark_interval: Duration,
    /// End every watch after this long, whatever timeoutSeconds the client asked for.
    #[arg(long, env = "KUBE_DEV_MAX_WATCH_DURATION", value_parser = humantime::parse_duration)]
    max_watch_duration: Option<Duration>,
    /// First restart delay of a failed init container (doubles per restart).
    #[arg(long, env = "KUBE_DEV_BACKOFF_BASE", default_value = "100ms", value_parser = humantime::parse_duration)]
    backoff_base: Duration,
    /// Cap of the restart delay.
    #[arg(long, env = "KUBE_DEV_BACKOFF_MAX", default_value = "5s", value_parser = humantime::parse_duration)]
    backoff_max: Duration,
    /// Webhook service mapping `namespace/name=127.0.0.1:PORT` (repeatable).
    #[arg(
        long = "service-address",
        env = "KUBE_DEV_SERVICE_ADDRESS",
        value_delimiter = ','
    )]
    service_address: Vec<String>,
    /// Worker threads of the kubelet simulator's own runtime, apart from the API server's (a real
    /// kubelet is a process of its own); 0 runs the kubelet on the API server's runtime.
    #[arg(long, env = "KUBE_DEV_KUBELET_THREADS", default_value_t = 1)]
    kubelet_threads: usize,
    /// Grace period for pod processes at shutdown.
    #[arg(long, env = "KUBE_DEV_SHUTDOWN_GRACE", default_value = "2s", value_parser = humantime::parse_duration)]
    shutdown_grace: Duration,
    /// Log filter (tracing EnvFilter syntax), logs go to stderr.
    #[arg(long, env = "KUBE_DEV_LOG_LEVEL", default_value = "info")]
    log_level: String,
}

fn parse_pairs(items: &[String], sep: char) -> anyhow::Result<Vec<(String, String)>> {
    items
        .iter()
        .map(|i| {
            i.split_once(sep)
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .with_context(|| format!("expected NAME{sep}VALUE, got {i:?}"))
        })
        .collect()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::new(&args.log_level))
        .init();
    let mut services = HashMap::new();
    for (k, v) in parse_pairs(&args.service_address, '=')? {
        let addr: SocketAddr = v
            .parse()
            .with_context(|| format!("--service-address {k}: bad address {v:?}"))?;
        services.insert(k, addr);
    }
    let cfg = Config {
        listen: args.listen,
        root_dir: args.root_dir,
        kubeconfig_out: args.kubeconfig_out,
        init_binary: args.init_binary,
        init_env: parse_pairs(&args.init_env, '=')?,
        watch_history: args.watch_history,
        bookmark_interval: args.bookmark_interval,
        max_watch_duration: args.max_watch_duration,
        backoff_base: args.backoff_base,
        backoff_max: args.backoff_max,
        service_addresses: services,
        kubelet_threads: args.kubelet_threads,
    };
    let running = KubeDev::start(cfg).await.context("starting kube-dev")?;
    println!(
        "kube-dev ready: server={} kubeconfig={}",
        running.url,
        running.kubeconfig_path.display()
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing SIGTERM handler")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutting down: stopping pods");
    running.shutdown(args.shutdown_grace).await;
    Ok(())
}

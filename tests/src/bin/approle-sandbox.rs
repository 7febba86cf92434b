//! `approle-sandbox`: the whole system on one machine, in one command.
//!
//! Starts vault-dev and kube-dev, configures Vault (AppRole mount, policies, role `web`, the
//! controller's token), runs the real approle-controller, registers a MutatingWebhookConfiguration
//! in kube-dev that calls the controller's webhook (`https://127.0.0.1:<port>/mutate`, caBundle
//! kept by the controller), creates `--pods` plain annotated pods (the webhook injects them), waits until
//! every pod holds a token that works from its own address, prints a table and exits 0. With
//! `--keep` it stays up and prints the `export` lines to explore with kubectl and Vault clients.

use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};
use approle_testkit::harness::{self, ROLE, Stack, StackOptions};
use clap::Parser;
use futures::future::try_join_all;
use k8s_openapi::api::core::v1::Pod;
use serde_json::json;

/// Runs vault-dev + kube-dev + approle-controller and delivers tokens to annotated pods.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// How many annotated pods to create.
    #[arg(long, env = "APPROLE_SANDBOX_PODS", default_value_t = 3)]
    pods: usize,
    /// Stay up after the table and print export lines for kubectl and Vault clients.
    #[arg(long, env = "APPROLE_SANDBOX_KEEP")]
    keep: bool,
    /// How long to wait for every pod's token.
    #[arg(long, env = "APPROLE_SANDBOX_TIMEOUT", default_value = "120s", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

struct Row {
    name: String,
    ip: String,
    accessor: String,
    init_to_token: Option<Duration>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    harness::install_crypto();
    eprintln!("approle-sandbox: starting vault-dev, kube-dev and approle-controller…");
    let stack = Stack::start(StackOptions {
        init_timeout: "5m".into(),
        ..Default::default()
    })
    .await
    .context("starting the sandbox")?;

    let names: Vec<String> = (0..args.pods).map(|i| format!("web-{i}")).collect();
    for name in &names {
        let pod = stack.pod(name, json!({"vault-approle.io/role": ROLE}))?;
        stack
            .create(&pod)
            .await
            .with_context(|| format!("creating pod {name}"))?;
    }
    eprintln!(
        "approle-sandbox: created {} annotated pods; waiting for their tokens…",
        names.len()
    );
    let rows = try_join_all(names.iter().map(|n| verify(&stack, n, args.timeout))).await;
    let rows = match rows {
        Ok(rows) => rows,
        Err(e) => {
            // Keep the logs for a person to read; the processes stop as the stack drops.
            let mut stack = stack;
            stack.dir.disable_cleanup(true);
            eprintln!(
                "approle-sandbox: {e:#}\nlogs are kept in {}",
                stack.dir.path().display()
            );
            bail!("not every pod received a working token");
        }
    };

    println!(
        "{:<10} {:<14} {:<26} INIT START → TOKEN WRITTEN",
        "POD", "POD IP", "TOKEN ACCESSOR"
    );
    for r in &rows {
        let t = r
            .init_to_token
            .map(|d| format!("{:.1} ms", d.as_secs_f64() * 1000.0))
            .unwrap_or_else(|| "n/a".into());
        println!("{:<10} {:<14} {:<26} {}", r.name, r.ip, r.accessor, t);
    }
    println!(
        "{} of {} pods hold a working, pod-bound Vault token.",
        rows.len(),
        names.len()
    );

    if args.keep {
        println!("export KUBECONFIG={}", stack.kubeconfig.display());
        println!("export VAULT_ADDR={}", stack.vault_url);
        println!("export VAULT_TOKEN={}", harness::ROOT_TOKEN);
        eprintln!("approle-sandbox: up; press Ctrl-C to stop");
        tokio::signal::ctrl_c()
            .await
            .context("waiting for Ctrl-C")?;
    }
    Ok(())
}

/// Waits for a pod's delivery and proves its token works from the pod's own address.
async fn verify(stack: &Stack, name: &str, timeout: Duration) -> anyhow::Result<Row> {
    let pod = stack
        .wait_pod(name, "token delivered", timeout, harness::delivered)
        .await?;
    let proven = stack.working_token(&pod).await?;
    Ok(Row {
        name: name.to_owned(),
        ip: proven.ip,
        accessor: proven.accessor,
        init_to_token: init_to_token(stack, &pod),
    })
}

/// From the init container's start (its first log line, microsecond timestamps) to the token
/// file's modification time.
fn init_to_token(stack: &Stack, pod: &Pod) -> Option<Duration> {
    let text = stack.init_log(pod)?;
    let first = text
        .lines()
        .find_map(|l| l.split_whitespace().next()?.parse::<jiff::Timestamp>().ok())?;
    let started = SystemTime::from(first);
    let written = std::fs::metadata(stack.volume_dir(pod).join("token"))
        .ok()?
        .modified()
        .ok()?;
    written.duration_since(started).ok()
}

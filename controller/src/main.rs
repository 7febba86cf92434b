//! approle-controller: watches pods annotated `vault-approle.io/role`, mints a response-wrapped,
//! pod-bound AppRole secret_id for each, and pushes it over mutual TLS to the pod's init container.
//!
//! ```text
//!   watch pods ──▶ decide (annotations, init container running, pod IP)
//!                     └─▶ deliver: role-id ─▶ wrapped secret_id (num_uses 1, podIP/32)
//!                                   ─▶ POST https://<podIP>:<port>/v1/secret-id (client cert)
//!                                   ─▶ annotate pod + Event
//! ```
//!
//! Modules: [`args`] (flags and env), [`decide`] (pure per-pod decision), [`deliver`] (reconcile),
//! [`push`] (the mTLS push client).

#![forbid(unsafe_code)]

mod args;
mod decide;
mod deliver;
mod push;

use std::sync::Arc;

use anyhow::Context as _;
use approle_shared::tls;
use approle_shared::vault::{Vault, VaultConfig};
use clap::Parser;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::controller::{Config, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::watcher;
use tracing::{info, warn};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tls::install_crypto_provider();
    let args = args::Args::parse();
    approle_shared::telemetry::init(&args.log_level, args.log_format)
        .map_err(anyhow::Error::msg)?;

    let ca_pem = match &args.vault_cacert {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("reading Vault CA bundle {}", path.display()))?,
        ),
        None => None,
    };
    let vault = Vault::new(&VaultConfig {
        addr: args.vault_addr.clone(),
        ca_pem,
        timeout: args.vault_timeout,
        source_address: None,
    })?;
    let cert = std::fs::read_to_string(&args.client_cert)
        .with_context(|| format!("reading client certificate {}", args.client_cert.display()))?;
    let key = std::fs::read_to_string(&args.client_key)
        .with_context(|| format!("reading client key {}", args.client_key.display()))?;
    let push = push::PushClient::new(&cert, &key, args.push_timeout).map_err(anyhow::Error::msg)?;

    let client = kube::Client::try_default()
        .await
        .context("connecting to Kubernetes (KUBECONFIG or in-cluster config)")?;
    let pods: Api<Pod> = match &args.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let instance = args
        .instance
        .clone()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "approle-controller".into());
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "approle-controller".into(),
            instance: Some(instance),
        },
    );

    let controller = Controller::new(pods, watcher::Config::default())
        .with_config(Config::default().concurrency(args.concurrency))
        // First SIGTERM/SIGINT: stop taking new work and let in-flight deliveries finish;
        // a second one aborts.
        .shutdown_on_signal();
    let ctx = Arc::new(deliver::Context::new(
        client,
        controller.store(),
        vault,
        push,
        recorder,
        deliver::Settings {
            mount: args.approle_mount.clone(),
            token_file: args.vault_token_file.clone(),
            secret_id_ttl: args.secret_id_ttl,
            wrap_ttl: args.wrap_ttl,
            max_mints: args.max_mints,
        },
    ));
    info!(vault = %args.vault_addr, namespace = args.namespace.as_deref().unwrap_or("<all>"), "approle-controller started");
    controller
        .run(deliver::reconcile, deliver::error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                warn!(error = %e, "controller");
            }
        })
        .await;
    info!("approle-controller stopped");
    Ok(())
}

//! approle-controller: injects annotated pods at admission, then watches them, mints a
//! response-wrapped, pod-bound AppRole secret_id for each, and pushes it over mutual TLS to the
//! pod's init container.
//!
//! ```text
//!   API server ──POST /mutate──▶ webhook: validate annotations, patch in init container + tmpfs
//!   certs: injector CA (Secret) ─▶ webhook serving cert, push client cert, caBundle; renewal
//!   policy file (polled) ─▶ authorizer: webhook and reconcile refuse roles it does not allow
//!   watch pods (label vault-approle.io/managed=true)
//!     ─▶ decide (annotations, init container running, pod IP)
//!     ─▶ authorize (RoleDenied), crash-loop backoff (RedeliveryBackoff)
//!     └─▶ deliver: role-id ─▶ mTLS connection to <podIP>:<port> (client cert)
//!                  ─▶ GET /v1/identity ─▶ TokenReview: bound to this pod's name and UID?
//!                  ─▶ wrapped secret_id (num_uses 1, podIP/32)
//!                  ─▶ POST /v1/secret-id on the same connection
//!                  ─▶ annotate pod + Event
//! ```
//!
//! Every replica serves the webhook and the admin port and watches pod deletions ([`revoke`]);
//! only the leader ([`leader`], a Lease) delivers ([`term`]) and revokes, and a new leader first
//! finishes what its predecessor left ([`recover`], and the deletions it saw while standing by).
//!
//! Modules: [`admin`] (metrics, health, readiness), [`args`] (flags and env), [`certs`] (CA, certificates, caBundle), [`webhook`]
//! (admission), [`decide`] (pure per-pod decision), [`deliver`] (reconcile), [`revoke`] (token revocation on pod deletion or replacement), [`pod`] (the controller's small pod type: what the cache keeps), [`push`] (the mTLS
//! push connection), [`identity`] (pod identity: TokenReview before the push), [`policy`]
//! (authorization policy file, default deny), [`redeliver`] (crash-loop backoff of
//! re-deliveries), [`leader`] (Lease election), [`term`] (delivery while leading), [`recover`]
//! (taking over from a dead leader), [`shutdown`] (signals), [`vault_auth`] (the controller's own
//! Vault login and token renewal), [`orphans`] (destroys secret_ids of mints that timed out).

#![forbid(unsafe_code)]

mod admin;
mod args;
mod certs;
mod decide;
mod deliver;
mod identity;
mod leader;
mod orphans;
mod pod;
mod policy;
mod push;
mod recover;
mod redeliver;
mod revoke;
mod shutdown;
mod term;
mod vault_auth;
mod webhook;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::pod::Pod;
use anyhow::Context as _;
use approle_shared::tls;
use approle_shared::vault::{Vault, VaultConfig};
use clap::Parser;
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::events::Reporter;
use kube::runtime::{WatchStreamExt, watcher};
use tracing::{error, info, warn};

/// jemalloc: 7–10 % less CPU per delivery than glibc's malloc, whose bin management took about a
/// sixth of it, at about the same RSS (idle 15–16 MiB instead of 14; 10 000 cached pods 42–43 MiB
/// instead of 44). README, Benchmark.
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tls::install_crypto_provider();
    let args = args::Args::parse();
    approle_shared::telemetry::init(&args.log_level, args.log_format)
        .map_err(anyhow::Error::msg)?;
    let tls_mode = args.tls_mode().map_err(anyhow::Error::msg)?;
    let auth_method = vault_auth::Method::from_args(&args).map_err(anyhow::Error::msg)?;

    let vault_ca_pem = match &args.vault_cacert {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("reading Vault CA bundle {}", path.display()))?,
        ),
        None => None,
    };
    let vault = Vault::new(&VaultConfig {
        addr: args.vault_addr.clone(),
        ca_pem: vault_ca_pem.clone(),
        timeout: args.vault_timeout,
        source_address: None,
        tls_skip_verify: args.vault_tls_skip_verify,
    })?;
    if args.vault_tls_skip_verify {
        warn!(vault = %args.vault_addr, "Vault TLS verification is disabled (--vault-tls-skip-verify): the controller accepts any certificate from Vault; use this only for testing");
    }
    let client = kube::Client::try_default()
        .await
        .context("connecting to Kubernetes (KUBECONFIG or in-cluster config)")?;
    let self_namespace = args
        .namespace_self
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_owned());

    let source = certs_source(&args, tls_mode, &client, &self_namespace);
    let ca_bundle = match (&source, &args.webhook_config_name) {
        (certs::Source::Secret(_), Some(name)) => Some(certs::CaBundle {
            api: Api::all(client.clone()),
            name: name.clone(),
        }),
        (certs::Source::Files(_), Some(name)) => {
            warn!(config = %name, "certificates come from files: the caBundle is left to whoever issues them (e.g. cert-manager's cainjector)");
            None
        }
        _ => None,
    };
    let started = certs::Certs::start(
        source,
        args.inject_config(vault_ca_pem),
        ca_bundle,
        args.push_timeout,
        args.cert_check_interval,
    )
    .await
    .context("setting up TLS")?;
    tokio::spawn(started.certs.run());
    let admin = Arc::new(admin::Admin::default());
    admin.ready.certificates.store(true, Ordering::Relaxed);
    // The policy is read once before the webhook serves; without one the controller still starts
    // (refusing every role, not ready) and picks it up when it appears.
    let (mut policy_loader, authorizer) =
        policy::Loader::new(args.policy_file.clone(), admin.clone());
    policy_loader.poll();
    tokio::spawn(policy_loader.run(args.policy_reload_interval));
    let auth = vault_auth::VaultAuth::new(
        auth_method,
        vault.clone(),
        admin.clone(),
        args.vault_timeout,
    );
    tokio::spawn(auth.clone().run());
    let admin_listener = tokio::net::TcpListener::bind(args.admin_listen)
        .await
        .with_context(|| format!("binding the admin port to {}", args.admin_listen))?;
    info!(addr = %admin_listener.local_addr()?, "admin port listening (/metrics, /healthz, /readyz)");
    let admin_router = admin::router(admin.clone());
    tokio::spawn(async move {
        if let Err(e) = axum::serve(admin_listener, admin_router).await {
            error!(error = %e, "admin server stopped");
        }
    });

    let listener = std::net::TcpListener::bind(args.webhook_listen)
        .with_context(|| format!("binding the webhook to {}", args.webhook_listen))?;
    let addr = listener.local_addr()?;
    let server = axum_server::Handle::new();
    tokio::spawn(serve_webhook(
        listener,
        started.tls,
        webhook::WebhookState {
            self_namespace: self_namespace.clone(),
            inject: started.inject,
            authorizer: authorizer.clone(),
        },
        server.clone(),
    ));
    info!(%addr, path = webhook::MUTATE_PATH, "webhook listening");

    let (pods, pod_metas): (Api<Pod>, Api<PartialObjectMeta<Pod>>) = match &args.namespace {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
        ),
        None => (Api::all(client.clone()), Api::all(client.clone())),
    };
    let instance = args
        .instance
        .clone()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "approle-controller".into());
    let reporter = Reporter {
        controller: "approle-controller".into(),
        instance: Some(instance.clone()),
    };

    let stop = shutdown::on_signals();
    let (leadership, elector) = leader::start(&args, &client, &self_namespace, &instance, &admin)
        .map_err(anyhow::Error::msg)?;
    // Every replica watches pod deletions for the life of the process: a standby keeps them for
    // when it takes over (revoke.rs).
    tokio::spawn(revoke::run(
        watcher::watcher(
            pod_metas,
            watcher::Config::default().labels(&pod::managed_selector()),
        )
        .default_backoff(),
        client.clone(),
        leadership.clone(),
        vault.clone(),
        auth.clone(),
        admin.clone(),
    ));
    // A minted secret_id is in use for at most its wrap TTL, plus the push and the Vault calls.
    let orphans = orphans::Orphans::new(args.wrap_ttl + args.push_timeout + 2 * args.vault_timeout);
    tokio::spawn(orphans.clone().run(
        auth.clone(),
        vault.clone(),
        args.approle_mount.clone(),
        admin.clone(),
    ));
    let settings = deliver::Settings {
        mount: args.approle_mount.clone(),
        secret_id_ttl: args.secret_id_ttl,
        wrap_ttl: args.wrap_ttl,
        max_mints: args.max_mints,
        concurrency: args.concurrency,
    };
    info!(vault = %args.vault_addr, namespace = args.namespace.as_deref().unwrap_or("<all>"), self_namespace, "approle-controller started");
    let redelivery = redeliver::Settings {
        base: args.redelivery_backoff,
        max: args.redelivery_backoff_max,
    };
    let delivery = term::Delivery {
        pods,
        vault: vault.clone(),
        auth: auth.clone(),
        mount: args.approle_mount.clone(),
        admin: admin.clone(),
        authorizer: authorizer.clone(),
        context: move |store| {
            deliver::Context::new(
                client.clone(),
                store,
                deliver::VaultSide {
                    vault: vault.clone(),
                    auth: auth.clone(),
                    orphans: orphans.clone(),
                },
                started.push.clone(),
                reporter.clone(),
                settings.clone(),
                admin.clone(),
            )
            .with_authorizer(authorizer.clone())
            .with_redelivery(redelivery)
        },
    };
    term::run(delivery, leadership, stop).await;
    // In-flight deliveries have ended: hand the lease to a successor at once.
    elector.release().await;
    // Reviews in flight get a moment to be answered.
    server.graceful_shutdown(Some(Duration::from_secs(5)));
    info!("approle-controller stopped");
    Ok(())
}

fn certs_source(
    args: &args::Args,
    mode: args::TlsMode,
    client: &kube::Client,
    namespace: &str,
) -> certs::Source {
    match mode {
        args::TlsMode::SelfManaged => certs::Source::Secret(Box::new(certs::SecretCa {
            api: Api::namespaced(client.clone(), namespace),
            display: format!("{namespace}/{}", args.ca_secret_name),
            name: args.ca_secret_name.clone(),
            ca_validity: args.ca_validity,
            cert_validity: args.cert_validity,
            serving_sans: certs::Source::serving_sans(
                &args.webhook_service,
                namespace,
                &args.webhook_extra_san,
            ),
        })),
        args::TlsMode::Files {
            injector_ca,
            client,
            serving,
        } => certs::Source::Files(certs::FileCerts {
            injector_ca,
            client,
            serving,
        }),
    }
}

/// Serves the webhook; if the server ever fails, logs it and serves again on the same socket:
/// a webhook failure never takes delivery down with it.
async fn serve_webhook(
    listener: std::net::TcpListener,
    tls: axum_server::tls_rustls::RustlsConfig,
    state: webhook::WebhookState,
    handle: axum_server::Handle<std::net::SocketAddr>,
) {
    loop {
        let socket = match listener.try_clone() {
            Ok(s) => s,
            Err(e) => {
                error!(error = %e, "webhook socket unusable; admission stops working");
                return;
            }
        };
        match webhook::serve(socket, tls.clone(), state.clone(), handle.clone()).await {
            Ok(()) => return,
            Err(e) => error!(error = %e, "webhook server failed; serving again"),
        }
        // Not synchronisation: a pause so a persistent failure does not spin.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

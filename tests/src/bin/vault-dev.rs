//! `vault-dev`: the Vault-compatible dev server as a process.
//!
//! Prints exactly one line on stdout when ready —
//! `vault-dev ready: addr=<url> [cacert=<path>] unseal_key=<key>` — then serves until SIGTERM or
//! SIGINT. Never prints a token.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use approle_testkit::vault_dev::{Config, Tls, VaultDev};
use clap::Parser;

/// A Vault-compatible in-memory dev server for tests.
#[derive(Debug, Parser)]
#[command(name = "vault-dev", version)]
struct Args {
    /// Address to listen on (port 0 picks a free port; the ready line shows the real one).
    #[arg(long, env = "VAULT_DEV_LISTEN", default_value = "127.0.0.1:8200")]
    listen: SocketAddr,
    /// The root token.
    #[arg(
        long,
        env = "VAULT_DEV_ROOT_TOKEN_ID",
        default_value = "root",
        hide_env_values = true
    )]
    root_token: String,
    /// Serve HTTPS with a generated CA; the CA PEM goes to a temporary directory.
    #[arg(long, env = "VAULT_DEV_TLS")]
    tls: bool,
    /// Serve HTTPS and write `ca.pem` and `server.pem` into this directory.
    #[arg(long, env = "VAULT_DEV_TLS_CERT_OUT")]
    tls_cert_out: Option<PathBuf>,
    /// Append the audit log (JSON lines) to this file.
    #[arg(long, env = "VAULT_DEV_AUDIT_LOG")]
    audit_log: Option<PathBuf>,
    /// Failed AppRole logins per role_id before lockout (0 disables).
    #[arg(long, env = "VAULT_DEV_LOCKOUT_THRESHOLD", default_value_t = 5)]
    lockout_threshold: u32,
    /// Log filter for stderr (tracing EnvFilter syntax).
    #[arg(long, env = "VAULT_DEV_LOG_LEVEL", default_value = "warn")]
    log_level: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&args.log_level))
        .with_writer(std::io::stderr)
        .init();

    let tls = match (&args.tls_cert_out, args.tls) {
        (Some(dir), _) => Tls::Dir(dir.clone()),
        (None, true) => Tls::TempDir,
        (None, false) => Tls::Off,
    };
    let mut config = Config::new(args.root_token);
    config.listen = args.listen;
    config.tls = tls;
    config.audit_log = args.audit_log;
    config.lockout_threshold = args.lockout_threshold;
    let running = VaultDev::start(config)
        .await
        .context("starting vault-dev")?;

    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", running.ready_line()).context("writing the ready line")?;
    out.flush().context("flushing stdout")?;
    drop(out);

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
    }
    running.shutdown().await;
    Ok(())
}

//! approle-init: the one-shot init container of approle-injector.
//!
//! ```text
//!   parse flags/env ──bad──▶ exit 2
//!        ▼
//!   logging ─▶ check config (CA PEM, Vault client, out-dir, identity file) ──bad──▶ exit 2
//!        ▼
//!   listen (mTLS; GET /v1/identity, then POST /v1/secret-id)
//!        ── select! ─┬─ server: a delivery ended ──▶ 0 delivered / 4 security / 5 login / 6 write
//!                    ├─ --timeout passed, no valid push ──▶ 3 (a delivery already
//!                    │   talking to Vault is let finish first)
//!                    └─ SIGTERM / SIGINT ──▶ 7
//! ```
//!
//! The modules: [`args`] (configuration), [`server`] (mutual-TLS accept
//! loop and HTTP), [`deliver`] (lookup → unwrap → login → write).

#![forbid(unsafe_code)]

mod args;
mod deliver;
mod server;

use anyhow::Context;
use std::path::Path;

use approle_shared::exit::ExitCode;
use approle_shared::push::TerminationMessage;
use clap::Parser;
use clap::error::ErrorKind;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tracing::{debug, error, info, warn};

use crate::args::{Args, Config};
use crate::deliver::Deliverer;
use crate::server::{Finish, Phase, Server};

fn main() -> std::process::ExitCode {
    approle_shared::tls::install_crypto_provider();
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            let _ = e.print();
            return std::process::ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("approle-init: bad configuration: {}", args::one_line(&e));
            return ExitCode::BadConfig.into();
        }
    };
    if let Err(e) = approle_shared::telemetry::init(&args.log_level, args.log_format) {
        eprintln!("approle-init: bad configuration: --log-level (APPROLE_INIT_LOG_LEVEL): {e}");
        return ExitCode::BadConfig.into();
    }
    let termination_message_path = args.termination_message_path.clone();
    let config = match args.into_config() {
        Ok(config) => config,
        Err(error) => {
            error!("bad configuration: {error}");
            return ExitCode::BadConfig.into();
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the tokio runtime");
    // The runtime is borrowed, not consumed: it must outlive the exit below.
    let outcome = match &runtime {
        Ok(rt) => rt.block_on(run(config, &termination_message_path)),
        Err(error) => Err(anyhow::anyhow!("{error:#}")),
    };
    let code = outcome.unwrap_or_else(|error| {
        error!(error = format!("{error:#}"), "internal error");
        ExitCode::Internal
    });
    info!(
        exit = code.code(),
        "exiting: {} (exit code {})",
        code.meaning(),
        code.code()
    );
    // Everything that matters is done: the token files are renamed into place, the termination
    // message is written, the controller has its answer, and log lines go unbuffered to stderr.
    // Exiting here skips dropping the runtime with its connections and TLS state, which the
    // kernel tears down anyway (about 3 % of a delivery's CPU in this process).
    std::process::exit(code.code().into())
}

async fn run(config: Config, termination_message_path: &Path) -> anyhow::Result<ExitCode> {
    let Config {
        listen,
        role,
        approle_mount,
        pod_uid,
        vault,
        tls,
        out_dir,
        timeout,
        file_mode,
        body_read_timeout,
        identity_token_file,
    } = config;
    info!(
        %role, %pod_uid, vault_addr = vault.addr(), out_dir = %out_dir.display(),
        timeout = %humantime::format_duration(timeout), "starting"
    );
    let deliverer = Deliverer {
        vault,
        mount: approle_mount,
        role,
        pod_uid,
        out_dir,
        file_mode,
    };
    // Handlers go in before the listener opens: once "listening on" is logged, a SIGTERM must
    // already mean exit 7, not the default kill.
    let sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let server = match Server::bind(
        listen,
        tls,
        deliverer,
        body_read_timeout,
        identity_token_file,
    )
    .await
    {
        Ok(server) => server,
        Err(error) => {
            error!("bad configuration: --listen (APPROLE_INIT_LISTEN) {listen}: {error}");
            return Ok(ExitCode::BadConfig);
        }
    };
    let mut phase = server.phase();
    let mut serve = std::pin::pin!(server.run());
    let mut stop = std::pin::pin!(stop_signal(sigterm, sigint));
    tokio::select! {
        biased;
        finish = &mut serve => return Ok(finished(finish, termination_message_path)),
        signal = &mut stop => return Ok(terminated(signal)),
        () = tokio::time::sleep(timeout) => {}
    }
    let waited = humantime::format_duration(timeout);
    if *phase.borrow() != Phase::InFlight {
        error!(timeout = %waited, "no valid push arrived within {waited}; giving up");
        return Ok(ExitCode::Timeout);
    }
    // The wrapping token may already be spent: abandoning the delivery now would waste it. Each
    // Vault call is bounded by --vault-timeout, so this wait is bounded too.
    warn!(timeout = %waited, "the timeout of {waited} passed while a delivery is in flight; letting it finish");
    Ok(tokio::select! {
        biased;
        finish = &mut serve => finished(finish, termination_message_path),
        signal = &mut stop => terminated(signal),
        _ = phase.wait_for(|p| *p == Phase::Waiting) => {
            error!(timeout = %waited, "no valid push was delivered within {waited}; giving up");
            ExitCode::Timeout
        }
    })
}

/// Resolves with the name of the first SIGTERM or SIGINT.
async fn stop_signal(mut sigterm: Signal, mut sigint: Signal) -> &'static str {
    tokio::select! {
        _ = sigterm.recv() => "SIGTERM",
        _ = sigint.recv() => "SIGINT",
    }
}

/// A delivery ended the server: on success, leave the accessor as the termination message.
fn finished(finish: Finish, path: &Path) -> ExitCode {
    if let (ExitCode::Delivered, Some(accessor)) = (finish.exit, finish.accessor.as_deref()) {
        let message = TerminationMessage::delivered(accessor);
        let text = serde_json::to_string(&message).expect("two strings serialize");
        if let Err(error) = std::fs::write(path, text) {
            // Outside Kubernetes there may be no such file; the delivery itself succeeded.
            debug!(path = %path.display(), %error, "no termination message written");
        }
    }
    finish.exit
}

fn terminated(signal: &str) -> ExitCode {
    warn!(signal, "{signal} received before a delivery completed");
    ExitCode::Terminated
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delivery_leaves_its_accessor_as_termination_message_and_nothing_else_does() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("termination-log");
        let failed = Finish {
            exit: ExitCode::VaultLogin,
            accessor: None,
        };
        assert_eq!(finished(failed, &path), ExitCode::VaultLogin);
        assert!(!path.exists());
        let delivered = Finish {
            exit: ExitCode::Delivered,
            accessor: Some("acc-1".into()),
        };
        assert_eq!(finished(delivered.clone(), &path), ExitCode::Delivered);
        let text = std::fs::read_to_string(&path).expect("message");
        assert_eq!(
            TerminationMessage::parse(&text),
            Some(TerminationMessage::delivered("acc-1"))
        );
        // No such directory (not in Kubernetes): the delivery still counts.
        let nowhere = dir.path().join("missing/termination-log");
        assert_eq!(finished(delivered, &nowhere), ExitCode::Delivered);
    }
}

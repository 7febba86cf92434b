//! Process signals: the first SIGTERM or SIGINT asks for a graceful stop (pushes on the wire
//! finish, deliveries still waiting for their init container are left to the next leader, then the
//! lease is released and the webhook drains); a second one exits at once.

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tracing::{error, info, warn};

/// Exit code of a stop forced by a second signal.
const FORCED_EXIT: i32 = 130;

/// A receiver that turns true at the first signal.
pub fn on_signals() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            error!("cannot install signal handlers; stop with SIGKILL");
            return;
        };
        for n in 0.. {
            let name = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            };
            if n == 0 {
                info!(
                    signal = name,
                    "stopping: pushes in flight finish first (signal again to force)"
                );
                tx.send_replace(true);
            } else {
                warn!(signal = name, "forced stop");
                std::process::exit(FORCED_EXIT);
            }
        }
    });
    rx
}

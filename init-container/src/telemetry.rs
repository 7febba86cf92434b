//! Logging: `tracing` to stderr, filtered by `--log-level` (EnvFilter syntax), printed as plain
//! lines or JSON (`--log-format`).
//!
//! Whatever the filter says, `rustify` (the HTTP layer under vaultrs) stays silent: its
//! `#[instrument(err)]` prints Vault's raw error text, before our Vault layer has scrubbed it of the
//! credential the request carried.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::args::LogFormat;

/// Directives appended to every filter; later directives for the same target win.
const FORCED_DIRECTIVES: &[&str] = &["rustify=off"];

/// Why logging could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// `--log-level` is not a valid filter.
    #[error("--log-level (APPROLE_INIT_LOG_LEVEL): {0}")]
    Filter(String),
    /// A global subscriber was already installed.
    #[error("installing the log subscriber: {0}")]
    Install(String),
}

/// Builds the filter: the user's directives plus [`FORCED_DIRECTIVES`].
pub fn filter(level: &str) -> Result<EnvFilter, TelemetryError> {
    let mut filter = EnvFilter::builder()
        .parse(level)
        .map_err(|e| TelemetryError::Filter(e.to_string()))?;
    for directive in FORCED_DIRECTIVES {
        filter = filter.add_directive(directive.parse().expect("forced directives are valid"));
    }
    Ok(filter)
}

/// Installs the global subscriber.
pub fn init(level: &str, format: LogFormat) -> Result<(), TelemetryError> {
    let filter = filter(level)?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Plain => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    }
    .map_err(|e| TelemetryError::Install(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rustify_stays_off_even_when_asked_for() {
        let f = filter("info,rustify=trace").expect("valid");
        let text = f.to_string();
        assert!(text.contains("rustify=off"), "{text}");
        assert!(!text.contains("rustify=trace"), "{text}");
    }

    #[test]
    fn invalid_filter_names_the_flag() {
        let err = filter("approle_init=loud").expect_err("invalid");
        assert!(err.to_string().starts_with("--log-level"), "{err}");
    }
}

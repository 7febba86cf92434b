//! Logging setup shared by both binaries: `--log-level` (EnvFilter syntax) and
//! `--log-format plain|json`, always to stderr so stdout stays free for machine-readable output.
//!
//! Whatever the filter says, `rustify` (the HTTP layer under vaultrs) stays silent: its
//! `#[instrument(err)]` prints Vault's raw error text before our Vault layer has scrubbed it of the
//! credential the request carried. So does `vaultrs` itself: it logs every Vault error response
//! at ERROR level, expected ones too (a token already revoked or expired when its pod is deleted
//! gave two ERROR lines per pod), while our Vault layer reports each failure once, with context.

use std::str::FromStr;

use tracing_subscriber::EnvFilter;

/// Output format of log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Plain,
    /// One JSON object per line.
    Json,
}

impl FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "plain" => Ok(LogFormat::Plain),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("unknown log format {other:?}; use plain or json")),
        }
    }
}

/// Directives appended to every filter; later directives for the same target win.
pub const FORCED_DIRECTIVES: &[&str] = &["rustify=off", "vaultrs=off"];

/// The user's filter plus [`FORCED_DIRECTIVES`].
pub fn filter(level: &str) -> Result<EnvFilter, String> {
    let mut filter = EnvFilter::builder()
        .parse(level)
        .map_err(|e| format!("invalid log level {level:?}: {e}"))?;
    for directive in FORCED_DIRECTIVES {
        filter = filter.add_directive(directive.parse().expect("forced directives are valid"));
    }
    Ok(filter)
}

/// Installs the global subscriber. Fails on a bad filter expression.
pub fn init(level: &str, format: LogFormat) -> Result<(), String> {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter(level)?)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    let result = match format {
        LogFormat::Plain => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    result.map_err(|e| format!("installing the logger: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vault_client_libraries_stay_silent_whatever_the_level() {
        let f = filter("trace").expect("valid").to_string();
        assert!(f.contains("rustify=off"), "{f}");
        assert!(f.contains("vaultrs=off"), "{f}");
        assert!(filter("not a [valid filter").is_err());
    }
}

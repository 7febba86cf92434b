//! Command line and environment: every flag has an `APPROLE_CONTROLLER_*` variable.

use std::path::PathBuf;
use std::time::Duration;

use approle_shared::telemetry::LogFormat;
use clap::Parser;

/// Watches annotated pods and pushes each a fresh, response-wrapped AppRole secret_id over mutual TLS.
///
/// The Kubernetes connection comes from KUBECONFIG or the in-cluster service account.
#[derive(Debug, Clone, Parser)]
#[command(version, about)]
pub struct Args {
    /// Vault address.
    #[arg(long, env = "APPROLE_CONTROLLER_VAULT_ADDR")]
    pub vault_addr: String,

    /// PEM bundle to trust for Vault instead of the system roots.
    #[arg(long, env = "APPROLE_CONTROLLER_VAULT_CACERT")]
    pub vault_cacert: Option<PathBuf>,

    /// File holding the controller's own Vault token (re-read on every mint, so rotation needs no
    /// restart). It needs `update` on auth/<mount>/role/+/secret-id and
    /// secret-id-accessor/destroy, and `read` on role/+/role-id.
    #[arg(long, env = "APPROLE_CONTROLLER_VAULT_TOKEN_FILE")]
    pub vault_token_file: PathBuf,

    /// AppRole mount path.
    #[arg(long, env = "APPROLE_CONTROLLER_APPROLE_MOUNT", default_value = approle_shared::DEFAULT_APPROLE_MOUNT)]
    pub approle_mount: String,

    /// Client certificate (PEM) presented on pushes; issued by the injector CA that init containers trust.
    #[arg(long, env = "APPROLE_CONTROLLER_CLIENT_CERT")]
    pub client_cert: PathBuf,

    /// Key of the client certificate (PEM).
    #[arg(long, env = "APPROLE_CONTROLLER_CLIENT_KEY")]
    pub client_key: PathBuf,

    /// Lifetime of a minted secret_id. Short: it is used seconds after minting, once.
    #[arg(long, env = "APPROLE_CONTROLLER_SECRET_ID_TTL", default_value = "120s", value_parser = humantime::parse_duration)]
    pub secret_id_ttl: Duration,

    /// Lifetime of the wrapping token; when it runs out before a push succeeds, the secret_id is
    /// destroyed and a new one minted.
    #[arg(long, env = "APPROLE_CONTROLLER_WRAP_TTL", default_value = "60s", value_parser = humantime::parse_duration)]
    pub wrap_ttl: Duration,

    /// How long one push may take, including the init container's own Vault calls.
    #[arg(long, env = "APPROLE_CONTROLLER_PUSH_TIMEOUT", default_value = "15s", value_parser = humantime::parse_duration)]
    pub push_timeout: Duration,

    /// Timeout of each Vault request.
    #[arg(long, env = "APPROLE_CONTROLLER_VAULT_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub vault_timeout: Duration,

    /// Mints per pod (each after the previous wrapping token expired unused) before backing off.
    #[arg(long, env = "APPROLE_CONTROLLER_MAX_MINTS", default_value_t = 3)]
    pub max_mints: u32,

    /// Pods delivered at the same time.
    #[arg(long, env = "APPROLE_CONTROLLER_CONCURRENCY", default_value_t = 64)]
    pub concurrency: u16,

    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "APPROLE_CONTROLLER_NAMESPACE")]
    pub namespace: Option<String>,

    /// Name reported in Events (`reportingInstance`); defaults to the host name.
    #[arg(long, env = "APPROLE_CONTROLLER_INSTANCE")]
    pub instance: Option<String>,

    /// Log filter (EnvFilter syntax), e.g. `info` or `approle_controller=debug,kube=info`.
    #[arg(long, env = "APPROLE_CONTROLLER_LOG_LEVEL", default_value = "info")]
    pub log_level: String,

    /// Log format: plain or json.
    #[arg(long, env = "APPROLE_CONTROLLER_LOG_FORMAT", default_value = "plain")]
    pub log_format: LogFormat,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &[&str]) -> Result<Args, clap::Error> {
        let base = [
            "approle-controller",
            "--vault-addr",
            "http://127.0.0.1:8200",
            "--vault-token-file",
            "/t",
            "--client-cert",
            "/c",
            "--client-key",
            "/k",
        ];
        Args::try_parse_from(base.iter().chain(extra.iter()))
    }

    #[test]
    fn defaults_match_the_design() {
        let a = parse(&[]).expect("valid");
        assert_eq!(a.wrap_ttl, Duration::from_secs(60));
        assert_eq!(a.secret_id_ttl, Duration::from_secs(120));
        assert_eq!(a.approle_mount, "approle");
        assert_eq!(a.log_format, LogFormat::Plain);
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(parse(&["--wrap-ttl", "soon"]).is_err());
        assert!(parse(&["--log-format", "xml"]).is_err());
        assert!(Args::try_parse_from(["approle-controller"]).is_err());
    }
}

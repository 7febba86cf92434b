//! Command line and environment: every flag has an `APPROLE_CONTROLLER_*` variable.
//!
//! Three groups: delivery (Vault, push), the admission webhook and what it injects (`--init-*`,
//! `--vault-addr-for-pods`), and TLS. TLS is either self-managed (an injector CA in a Secret, the
//! default) or read from files (`--injector-ca` with `--client-cert`/`--client-key` and
//! `--webhook-cert`/`--webhook-key`, e.g. from cert-manager); [`Args::tls_mode`] checks the set.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use approle_shared::inject::{self, InjectConfig};
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

    /// With --vault-auth token-file: file holding the controller's own Vault token (re-read when
    /// it changes, so rotation by an agent needs no restart). Given alone, it selects
    /// token-file auth. The token needs `update` on auth/<mount>/role/+/secret-id and
    /// secret-id-accessor/destroy, and `read` on role/+/role-id.
    #[arg(long, env = "APPROLE_CONTROLLER_VAULT_TOKEN_FILE")]
    pub vault_token_file: Option<PathBuf>,

    /// AppRole mount path.
    #[arg(long, env = "APPROLE_CONTROLLER_APPROLE_MOUNT", default_value = approle_shared::DEFAULT_APPROLE_MOUNT)]
    pub approle_mount: String,

    /// Client certificate (PEM) presented on pushes, issued by the CA given with --injector-ca.
    /// Without it the controller issues its own from the self-managed injector CA.
    #[arg(long, env = "APPROLE_CONTROLLER_CLIENT_CERT")]
    pub client_cert: Option<PathBuf>,

    /// Key of the client certificate (PEM).
    #[arg(long, env = "APPROLE_CONTROLLER_CLIENT_KEY")]
    pub client_key: Option<PathBuf>,

    /// Injector CA certificate (PEM) from a file, e.g. a cert-manager mount: init containers
    /// trust it for pushes. When given, no CA Secret is managed and --client-cert, --client-key,
    /// --webhook-cert and --webhook-key are required; files are re-read every --cert-check-interval.
    #[arg(long, env = "APPROLE_CONTROLLER_INJECTOR_CA")]
    pub injector_ca: Option<PathBuf>,

    /// Webhook serving certificate (PEM) from a file (with --injector-ca).
    #[arg(long, env = "APPROLE_CONTROLLER_WEBHOOK_CERT")]
    pub webhook_cert: Option<PathBuf>,

    /// Key of the webhook serving certificate (PEM).
    #[arg(long, env = "APPROLE_CONTROLLER_WEBHOOK_KEY")]
    pub webhook_key: Option<PathBuf>,

    /// Secret (in the controller's namespace) holding the self-managed injector CA. Created by the
    /// first replica; every replica and restart uses the same CA.
    #[arg(
        long,
        env = "APPROLE_CONTROLLER_CA_SECRET_NAME",
        default_value = "approle-injector-ca"
    )]
    pub ca_secret_name: String,

    /// Lifetime of a self-managed injector CA.
    #[arg(long, env = "APPROLE_CONTROLLER_CA_VALIDITY", default_value = "10y", value_parser = humantime::parse_duration)]
    pub ca_validity: Duration,

    /// Lifetime of the webhook serving and push client certificates it issues; each is renewed
    /// after two thirds of it, without a restart.
    #[arg(long, env = "APPROLE_CONTROLLER_CERT_VALIDITY", default_value = "30days", value_parser = humantime::parse_duration)]
    pub cert_validity: Duration,

    /// How often the CA Secret (or the certificate files) and the webhook configuration's
    /// caBundle are checked for changes.
    #[arg(long, env = "APPROLE_CONTROLLER_CERT_CHECK_INTERVAL", default_value = "1m", value_parser = humantime::parse_duration)]
    pub cert_check_interval: Duration,

    /// Address the admission webhook serves HTTPS on (`POST /mutate`).
    #[arg(
        long,
        env = "APPROLE_CONTROLLER_WEBHOOK_LISTEN",
        default_value = "0.0.0.0:8443"
    )]
    pub webhook_listen: SocketAddr,

    /// Namespace the controller runs in (set it from the downward API): its CA Secret lives
    /// there, and its pods are never mutated. Default: the kubeconfig's or service account's.
    #[arg(long, env = "APPROLE_CONTROLLER_POD_NAMESPACE")]
    pub namespace_self: Option<String>,

    /// Name of the Service in front of the webhook; the serving certificate is issued for
    /// `<service>.<namespace>.svc` and `<service>.<namespace>.svc.cluster.local`.
    #[arg(
        long,
        env = "APPROLE_CONTROLLER_WEBHOOK_SERVICE",
        default_value = "approle-controller"
    )]
    pub webhook_service: String,

    /// Extra names or IP addresses for the serving certificate (repeatable or comma-separated),
    /// e.g. 127.0.0.1 when the API server calls the webhook by URL.
    #[arg(
        long,
        env = "APPROLE_CONTROLLER_WEBHOOK_EXTRA_SAN",
        value_delimiter = ','
    )]
    pub webhook_extra_san: Vec<String>,

    /// MutatingWebhookConfiguration whose caBundle the controller keeps current (every webhook
    /// in it). Without it, nothing is patched (e.g. cert-manager's cainjector does it).
    #[arg(long, env = "APPROLE_CONTROLLER_WEBHOOK_CONFIG_NAME")]
    pub webhook_config_name: Option<String>,

    /// Image of the injected init container.
    #[arg(long, env = "APPROLE_CONTROLLER_INIT_IMAGE", default_value = concat!("ghcr.io/approle-injector/approle-init:", env!("CARGO_PKG_VERSION")))]
    pub init_image: String,

    /// How long an injected init container waits for its push before it gives up.
    #[arg(long, env = "APPROLE_CONTROLLER_INIT_TIMEOUT", default_value = "5m", value_parser = humantime::parse_duration)]
    pub init_timeout: Duration,

    /// CPU request of the init container.
    #[arg(long, env = "APPROLE_CONTROLLER_INIT_CPU_REQUEST", default_value = inject::DEFAULT_CPU_REQUEST, value_parser = quantity)]
    pub init_cpu_request: String,

    /// CPU limit of the init container.
    #[arg(long, env = "APPROLE_CONTROLLER_INIT_CPU_LIMIT", default_value = inject::DEFAULT_CPU_LIMIT, value_parser = quantity)]
    pub init_cpu_limit: String,

    /// Memory request of the init container.
    #[arg(long, env = "APPROLE_CONTROLLER_INIT_MEMORY_REQUEST", default_value = inject::DEFAULT_MEMORY_REQUEST, value_parser = quantity)]
    pub init_memory_request: String,

    /// Memory limit of the init container.
    #[arg(long, env = "APPROLE_CONTROLLER_INIT_MEMORY_LIMIT", default_value = inject::DEFAULT_MEMORY_LIMIT, value_parser = quantity)]
    pub init_memory_limit: String,

    /// Vault address as pods reach it (default: --vault-addr). --vault-cacert goes to pods too.
    #[arg(long, env = "APPROLE_CONTROLLER_VAULT_ADDR_FOR_PODS")]
    pub vault_addr_for_pods: Option<String>,

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

    /// Pods delivered at the same time (at least 1); more wait their turn, first come first served.
    #[arg(long, env = "APPROLE_CONTROLLER_CONCURRENCY", default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..))]
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

    /// Admin port (plain HTTP): `/metrics` (Prometheus), `/healthz`, `/readyz`.
    #[arg(
        long,
        env = "APPROLE_CONTROLLER_ADMIN_LISTEN",
        default_value = "0.0.0.0:9090"
    )]
    pub admin_listen: std::net::SocketAddr,

    // --- authorization policy ---
    /// Authorization policy (YAML, e.g. mounted from a ConfigMap): which roles which namespaces
    /// and service accounts may use; default deny. Until one good policy has loaded, every role is
    /// refused and /readyz says why; a malformed update keeps the last good policy.
    #[arg(
        long,
        env = "APPROLE_CONTROLLER_POLICY_FILE",
        default_value = "/etc/approle-controller/policy.yaml"
    )]
    pub policy_file: PathBuf,

    /// How often the policy file is read again (a change of content is reloaded).
    #[arg(long, env = "APPROLE_CONTROLLER_POLICY_RELOAD_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
    pub policy_reload_interval: Duration,

    // --- crash-loop backoff ---
    /// Pause before the second re-delivery to a restarted init container (the first has none);
    /// doubled for each further one, up to --redelivery-backoff-max.
    #[arg(long, env = "APPROLE_CONTROLLER_REDELIVERY_BACKOFF", default_value = "10s", value_parser = humantime::parse_duration)]
    pub redelivery_backoff: Duration,

    /// Cap of the re-delivery pause.
    #[arg(long, env = "APPROLE_CONTROLLER_REDELIVERY_BACKOFF_MAX", default_value = "5m", value_parser = humantime::parse_duration)]
    pub redelivery_backoff_max: Duration,
    // --- leader election ---
    /// Elect one leader among the replicas through a Lease: only the leader delivers and revokes;
    /// every replica serves the webhook. `--leader-elect=false` for a single replica that never
    /// waits for a lease (two such replicas would race for every pod).
    #[arg(long, env = "APPROLE_CONTROLLER_LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub leader_elect: bool,

    /// Name of the coordination.k8s.io/v1 Lease the replicas compete for.
    #[arg(
        long,
        env = "APPROLE_CONTROLLER_LEADER_LEASE_NAME",
        default_value = "approle-controller"
    )]
    pub leader_lease_name: String,

    /// Namespace of the Lease (default: the controller's own namespace).
    #[arg(long, env = "APPROLE_CONTROLLER_LEADER_LEASE_NAMESPACE")]
    pub leader_lease_namespace: Option<String>,

    /// How long a lease stays valid after a replica last saw it renewed: how long a dead
    /// leader's pods wait for a successor.
    #[arg(long, env = "APPROLE_CONTROLLER_LEADER_LEASE_DURATION", default_value = "15s", value_parser = humantime::parse_duration)]
    pub leader_lease_duration: Duration,

    /// How long the leader keeps retrying a failed renewal before it stops delivering; shorter
    /// than the lease duration, so it stops before a successor may start.
    #[arg(long, env = "APPROLE_CONTROLLER_LEADER_RENEW_DEADLINE", default_value = "10s", value_parser = humantime::parse_duration)]
    pub leader_renew_deadline: Duration,

    /// Pause between lease attempts, of candidates and of the leader renewing.
    #[arg(long, env = "APPROLE_CONTROLLER_LEADER_RETRY_PERIOD", default_value = "2s", value_parser = humantime::parse_duration)]
    pub leader_retry_period: Duration,

    // --- vaultauth ---
    /// How the controller logs in to Vault: kubernetes (its service-account token), token-file
    /// (--vault-token-file) or approle. Default: kubernetes, or token-file when only
    /// --vault-token-file is given.
    #[arg(long, env = "APPROLE_CONTROLLER_VAULT_AUTH", value_enum)]
    pub vault_auth: Option<crate::vault_auth::AuthKind>,

    /// Kubernetes auth: the Vault role to log in as.
    #[arg(
        long,
        env = "APPROLE_CONTROLLER_VAULT_K8S_ROLE",
        default_value = "approle-controller"
    )]
    pub vault_k8s_role: String,

    /// Kubernetes auth: the auth mount path.
    #[arg(
        long,
        env = "APPROLE_CONTROLLER_VAULT_K8S_MOUNT",
        default_value = "kubernetes"
    )]
    pub vault_k8s_mount: String,

    /// Kubernetes auth: the service-account token (JWT) file, re-read at every login because
    /// the kubelet rotates projected tokens.
    #[arg(
        long,
        env = "APPROLE_CONTROLLER_VAULT_K8S_TOKEN_FILE",
        default_value = "/var/run/secrets/kubernetes.io/serviceaccount/token"
    )]
    pub vault_k8s_token_file: PathBuf,

    /// AppRole auth: the auth mount path of the controller's own AppRole.
    #[arg(
        long,
        env = "APPROLE_CONTROLLER_VAULT_APPROLE_MOUNT",
        default_value = "approle"
    )]
    pub vault_approle_mount: String,

    /// AppRole auth: file holding the controller's role_id (read at every login).
    #[arg(long, env = "APPROLE_CONTROLLER_VAULT_APPROLE_ROLE_ID_FILE")]
    pub vault_approle_role_id_file: Option<PathBuf>,

    /// AppRole auth: file holding the controller's secret_id (read at every login; each login
    /// uses it once, so give it enough uses or rotate the file).
    #[arg(long, env = "APPROLE_CONTROLLER_VAULT_APPROLE_SECRET_ID_FILE")]
    pub vault_approle_secret_id_file: Option<PathBuf>,

    /// Accept any TLS certificate from Vault on the controller's own connections (a warning is
    /// logged at start-up). For testing only; init containers always verify.
    #[arg(long, env = "APPROLE_CONTROLLER_VAULT_TLS_SKIP_VERIFY")]
    pub vault_tls_skip_verify: bool,
}

/// Where the TLS material comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsMode {
    /// Injector CA in a Secret; the controller issues and renews its own certificates.
    SelfManaged,
    /// Everything from files.
    Files {
        /// Injector CA certificate.
        injector_ca: PathBuf,
        /// Push client certificate and key.
        client: (PathBuf, PathBuf),
        /// Webhook serving certificate and key.
        serving: (PathBuf, PathBuf),
    },
}

impl Args {
    /// Checks the TLS flags as a set.
    pub fn tls_mode(&self) -> Result<TlsMode, String> {
        let files = [
            ("--client-cert", &self.client_cert),
            ("--client-key", &self.client_key),
            ("--webhook-cert", &self.webhook_cert),
            ("--webhook-key", &self.webhook_key),
        ];
        let Some(injector_ca) = self.injector_ca.clone() else {
            if let Some((flag, _)) = files.iter().find(|(_, v)| v.is_some()) {
                return Err(format!(
                    "{flag} needs --injector-ca (the CA that issued the certificates, for init \
                     containers to trust); leave all certificate flags out to let the controller \
                     manage its own CA"
                ));
            }
            return Ok(TlsMode::SelfManaged);
        };
        let missing: Vec<&str> = files
            .iter()
            .filter(|(_, v)| v.is_none())
            .map(|(f, _)| *f)
            .collect();
        if !missing.is_empty() {
            return Err(format!("--injector-ca also needs {}", missing.join(", ")));
        }
        let get = |v: &Option<PathBuf>| v.clone().unwrap_or_default();
        Ok(TlsMode::Files {
            injector_ca,
            client: (get(&self.client_cert), get(&self.client_key)),
            serving: (get(&self.webhook_cert), get(&self.webhook_key)),
        })
    }

    /// What the webhook injects, except the injector CA (filled in by the certificate manager).
    pub fn inject_config(&self, vault_ca_pem: Option<String>) -> InjectConfig {
        InjectConfig {
            image: self.init_image.clone(),
            vault_addr: self
                .vault_addr_for_pods
                .clone()
                .unwrap_or_else(|| self.vault_addr.clone()),
            vault_ca_pem,
            injector_ca_pem: String::new(),
            approle_mount: self.approle_mount.clone(),
            timeout: humantime::format_duration(self.init_timeout).to_string(),
            resources: inject::resources(
                &self.init_cpu_request,
                &self.init_cpu_limit,
                &self.init_memory_request,
                &self.init_memory_limit,
            ),
        }
    }
}

/// A Kubernetes quantity as people write them for CPU and memory: `100m`, `0.5`, `32Mi`, `1G`.
fn quantity(s: &str) -> Result<String, String> {
    let number_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(number_end);
    let suffixes = [
        "", "m", "k", "M", "G", "T", "P", "E", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei",
    ];
    if number.parse::<f64>().is_ok() && suffixes.contains(&suffix) {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "{s:?} is not a quantity; write e.g. 100m or 0.5 (CPU), 32Mi or 1G (memory)"
        ))
    }
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
        assert_eq!(a.webhook_listen.to_string(), "0.0.0.0:8443");
        assert_eq!(a.tls_mode(), Ok(TlsMode::SelfManaged));
        let cfg = a.inject_config(None);
        assert_eq!(cfg.timeout, "5m");
        assert_eq!(cfg.vault_addr, "http://127.0.0.1:8200");
        assert_eq!(cfg.resources, inject::default_resources());
        assert_eq!(
            a.policy_file,
            PathBuf::from("/etc/approle-controller/policy.yaml")
        );
        assert_eq!(a.policy_reload_interval, Duration::from_secs(5));
        assert_eq!(a.redelivery_backoff, Duration::from_secs(10));
        assert_eq!(a.redelivery_backoff_max, Duration::from_secs(300));
    }

    #[test]
    fn pods_can_reach_vault_by_another_address() {
        let a = parse(&["--vault-addr-for-pods", "https://vault.vault.svc:8200"]).expect("valid");
        assert_eq!(
            a.inject_config(None).vault_addr,
            "https://vault.vault.svc:8200"
        );
    }

    #[test]
    fn certificate_files_come_as_a_complete_set() {
        let all = [
            "--injector-ca",
            "/ca",
            "--client-cert",
            "/c",
            "--client-key",
            "/k",
            "--webhook-cert",
            "/wc",
            "--webhook-key",
            "/wk",
        ];
        assert!(matches!(
            parse(&all).expect("valid").tls_mode(),
            Ok(TlsMode::Files { .. })
        ));
        let err = parse(&all[..6])
            .expect("parses")
            .tls_mode()
            .expect_err("incomplete");
        assert!(
            err.contains("--webhook-cert") && err.contains("--webhook-key"),
            "{err}"
        );
        let err = parse(&all[2..])
            .expect("parses")
            .tls_mode()
            .expect_err("no CA");
        assert!(err.contains("--client-cert needs --injector-ca"), "{err}");
    }

    #[test]
    fn resource_quantities_are_checked() {
        for ok in ["10m", "0.5", "1", "32Mi", "1G"] {
            assert!(parse(&["--init-cpu-limit", ok]).is_ok(), "{ok}");
        }
        for bad in ["ten", "10mb", "", "-1", "1 Gi"] {
            assert!(parse(&["--init-memory-limit", bad]).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn leader_election_is_on_by_default_with_client_go_timings() {
        let a = parse(&[]).expect("valid");
        assert!(a.leader_elect);
        assert_eq!(a.leader_lease_name, "approle-controller");
        assert_eq!(a.leader_lease_namespace, None);
        assert_eq!(a.leader_lease_duration, Duration::from_secs(15));
        assert_eq!(a.leader_renew_deadline, Duration::from_secs(10));
        assert_eq!(a.leader_retry_period, Duration::from_secs(2));
        assert!(
            !parse(&["--leader-elect=false"])
                .expect("valid")
                .leader_elect
        );
        assert!(parse(&["--leader-elect"]).expect("valid").leader_elect);
    }

    #[test]
    fn vault_tls_verification_is_on_unless_explicitly_skipped() {
        assert!(!parse(&[]).expect("valid").vault_tls_skip_verify);
        assert!(
            parse(&["--vault-tls-skip-verify"])
                .expect("valid")
                .vault_tls_skip_verify
        );
    }

    #[test]
    fn vault_auth_methods_are_named() {
        for ok in ["kubernetes", "token-file", "approle"] {
            assert!(parse(&["--vault-auth", ok]).is_ok(), "{ok}");
        }
        assert!(parse(&["--vault-auth", "ldap"]).is_err());
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(parse(&["--wrap-ttl", "soon"]).is_err());
        assert!(parse(&["--log-format", "xml"]).is_err());
        // No delivery could ever start.
        assert!(parse(&["--concurrency", "0"]).is_err());
        assert_eq!(
            parse(&["--concurrency", "1"]).expect("valid").concurrency,
            1
        );
        assert!(Args::try_parse_from(["approle-controller"]).is_err());
    }
}

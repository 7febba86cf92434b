//! Command line and environment: every flag has an `APPROLE_INIT_*` variable (DESIGN.md
//! "Configuration"), because the injector configures this container through env only.
//!
//! ```text
//!   argv + env ──clap──▶ Args ──Args::into_config──▶ Config   (or ConfigError → exit 2)
//!                                  │
//!                                  ├─ client CA PEM parses into the mTLS server config
//!                                  ├─ Vault client builds (address scheme, CA bundle)
//!                                  ├─ out-dir exists, is a directory, and we can create files in it
//!                                  └─ identity token file (if set) is readable and not empty
//! ```
//!
//! Everything is checked before the listener opens, so a misconfigured pod fails at once with
//! [`ExitCode::BadConfig`](approle_shared::exit::ExitCode::BadConfig) instead of waiting for a push it
//! could never accept.

use std::fs::OpenOptions;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use approle_shared::annotations::{DEFAULT_MOUNT_PATH, RoleName};
use approle_shared::telemetry::LogFormat;
use approle_shared::tls;
use approle_shared::vault::{Vault, VaultConfig};
use clap::Parser;

/// Receives a response-wrapped AppRole secret_id over mutual TLS, unwraps it, logs in to Vault and
/// writes the token to the pod's tmpfs volume. Exit codes: 0 delivered, 2 bad configuration,
/// 3 timeout, 4 security refusal, 5 Vault login failed, 6 write failed, 7 terminated.
#[derive(Debug, Clone, Parser)]
#[command(name = "approle-init", version)]
pub struct Args {
    /// Address and port to serve the push on (port 0 picks a free port; the log says which).
    #[arg(long, env = "APPROLE_INIT_LISTEN", default_value = "0.0.0.0:8643")]
    pub listen: SocketAddr,

    /// The AppRole this pod may receive; checked against the push and the wrapping token's
    /// creation_path.
    #[arg(long, env = "APPROLE_INIT_ROLE", value_parser = parse_role)]
    pub role: RoleName,

    /// AppRole auth mount path in Vault.
    #[arg(long, env = "APPROLE_INIT_APPROLE_MOUNT", default_value = approle_shared::DEFAULT_APPROLE_MOUNT, value_parser = parse_mount)]
    pub approle_mount: String,

    /// This pod's UID (downward API `metadata.uid`); a push for another pod is refused.
    #[arg(long, env = "APPROLE_INIT_POD_UID", value_parser = parse_non_empty)]
    pub pod_uid: String,

    /// Vault address, e.g. https://vault.vault.svc:8200.
    #[arg(long, env = "APPROLE_INIT_VAULT_ADDR")]
    pub vault_addr: String,

    /// PEM bundle to trust for Vault's certificate (PEM text, not a path); default: system roots.
    // PEM text starts with "-----BEGIN", which clap would otherwise take for a flag.
    #[arg(
        long,
        env = "APPROLE_INIT_VAULT_CACERT_PEM",
        allow_hyphen_values = true,
        hide_env_values = true
    )]
    pub vault_cacert_pem: Option<String>,

    /// PEM text of the injector CA: only clients with a certificate it issued may push.
    // Same as above; the values are long PEM blocks, so --help does not echo them.
    #[arg(
        long,
        env = "APPROLE_INIT_CLIENT_CA_PEM",
        allow_hyphen_values = true,
        hide_env_values = true
    )]
    pub client_ca_pem: String,

    /// Directory where `token` and `token.json` are written (must exist and be writable).
    #[arg(long, env = "APPROLE_INIT_OUT_DIR", default_value = DEFAULT_MOUNT_PATH)]
    pub out_dir: PathBuf,

    /// How long to wait for a valid push before giving up (e.g. 90s, 5m).
    #[arg(long, env = "APPROLE_INIT_TIMEOUT", default_value = "5m", value_parser = parse_positive_duration)]
    pub timeout: Duration,

    /// Local IP address for outgoing Vault connections (where pods share the host network, so
    /// that Vault sees the pod IP the secret_id is bound to).
    #[arg(long, env = "APPROLE_INIT_SOURCE_ADDRESS")]
    pub source_address: Option<IpAddr>,

    /// Mode of the token files, octal.
    #[arg(long, env = "APPROLE_INIT_FILE_MODE", default_value = "0440", value_parser = parse_mode)]
    pub file_mode: u32,

    /// Timeout of each Vault request.
    #[arg(long, env = "APPROLE_INIT_VAULT_TIMEOUT", default_value = "10s", value_parser = parse_positive_duration)]
    pub vault_timeout: Duration,

    /// How long a client may take to send a push's body once its headers arrived (→ 408).
    #[arg(long, env = "APPROLE_INIT_BODY_READ_TIMEOUT", default_value = "10s", value_parser = parse_positive_duration)]
    pub body_read_timeout: Duration,

    /// Where the termination message goes after a delivery (the token's accessor, never a
    /// credential): the kubelet shows it in the pod's status, so a controller that lost the push's
    /// answer can still record the delivery. Failure to write it is logged and ignored.
    #[arg(long, env = "APPROLE_INIT_TERMINATION_MESSAGE_PATH", default_value = approle_shared::push::TERMINATION_MESSAGE_PATH)]
    pub termination_message_path: PathBuf,
    /// File with this pod's projected service-account token (audience `vault-approle`), shown on
    /// `GET /v1/identity` to the controller only and re-read at every request (the kubelet
    /// rotates it). Without it, `/v1/identity` answers 404 and the controller pushes nothing.
    #[arg(long, env = "APPROLE_INIT_IDENTITY_TOKEN_FILE")]
    pub identity_token_file: Option<PathBuf>,

    /// Log filter in tracing EnvFilter syntax (e.g. `info`, `approle_init=debug`).
    #[arg(long, env = "APPROLE_INIT_LOG_LEVEL", default_value = "info")]
    pub log_level: String,

    /// Log output format.
    #[arg(long, env = "APPROLE_INIT_LOG_FORMAT", default_value = "plain")]
    pub log_format: LogFormat,
}

/// A configuration the process cannot run with. The text names the flag and its variable.
#[derive(Debug, thiserror::Error)]
#[error("{flag} ({env}): {reason}")]
pub struct ConfigError {
    /// The flag, e.g. `--out-dir`.
    pub flag: &'static str,
    /// Its environment variable.
    pub env: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

impl ConfigError {
    fn new(flag: &'static str, env: &'static str, reason: impl Into<String>) -> Self {
        Self {
            flag,
            env,
            reason: reason.into(),
        }
    }
}

/// A checked configuration, with the expensive parts (TLS config, Vault client) already built.
#[derive(Debug)]
pub struct Config {
    /// Where to listen.
    pub listen: SocketAddr,
    /// This pod's role.
    pub role: RoleName,
    /// AppRole mount, without surrounding slashes.
    pub approle_mount: String,
    /// This pod's UID.
    pub pod_uid: String,
    /// The Vault client.
    pub vault: Vault,
    /// The mTLS server configuration (ephemeral certificate, client certs from the injector CA).
    pub tls: Arc<rustls::ServerConfig>,
    /// Output directory.
    pub out_dir: PathBuf,
    /// Overall wait for a valid push.
    pub timeout: Duration,
    /// Mode of the token files.
    pub file_mode: u32,
    /// Body read timeout.
    pub body_read_timeout: Duration,
    /// The projected service-account token file shown on `GET /v1/identity`.
    pub identity_token_file: Option<PathBuf>,
}

impl Args {
    /// Checks everything that can be checked before listening and builds the clients.
    pub fn into_config(self) -> Result<Config, ConfigError> {
        let tls = tls::receiver_server_config(&self.client_ca_pem).map_err(|e| {
            ConfigError::new(
                "--client-ca-pem",
                "APPROLE_INIT_CLIENT_CA_PEM",
                e.to_string(),
            )
        })?;
        if let Some(pem) = &self.vault_cacert_pem {
            tls::parse_certs(pem, "Vault CA bundle").map_err(|e| {
                ConfigError::new(
                    "--vault-cacert-pem",
                    "APPROLE_INIT_VAULT_CACERT_PEM",
                    e.to_string(),
                )
            })?;
        }
        let vault = Vault::new(&VaultConfig {
            addr: self.vault_addr.clone(),
            ca_pem: self.vault_cacert_pem.clone(),
            timeout: self.vault_timeout,
            source_address: self.source_address,
            // The init container always verifies Vault's certificate.
            tls_skip_verify: false,
        })
        .map_err(|e| ConfigError::new("--vault-addr", "APPROLE_INIT_VAULT_ADDR", e.to_string()))?;
        check_out_dir(&self.out_dir)
            .map_err(|reason| ConfigError::new("--out-dir", "APPROLE_INIT_OUT_DIR", reason))?;
        if let Some(path) = &self.identity_token_file {
            check_identity_file(path).map_err(|reason| {
                ConfigError::new(
                    "--identity-token-file",
                    "APPROLE_INIT_IDENTITY_TOKEN_FILE",
                    reason,
                )
            })?;
        }
        Ok(Config {
            listen: self.listen,
            role: self.role,
            approle_mount: self.approle_mount,
            pod_uid: self.pod_uid,
            vault,
            tls: Arc::new(tls),
            out_dir: self.out_dir,
            timeout: self.timeout,
            file_mode: self.file_mode,
            body_read_timeout: self.body_read_timeout,
            identity_token_file: self.identity_token_file,
        })
    }
}

/// The kubelet writes the projected token before the container starts: a missing or empty file
/// means a broken pod spec, better reported now than as a refused identity later. The error
/// names the path and the I/O error only, never the content.
fn check_identity_file(path: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if text.trim().is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(())
}

/// The directory must exist, be a directory, and accept a new file: finding out at delivery time
/// would waste a single-use credential.
fn check_out_dir(dir: &Path) -> Result<(), String> {
    let meta = std::fs::metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if !meta.is_dir() {
        return Err(format!("{} is not a directory", dir.display()));
    }
    let probe = dir.join(format!(".approle-init-probe.{}", std::process::id()));
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
        .map_err(|e| format!("{} is not writable: {e}", dir.display()))?;
    std::fs::remove_file(&probe)
        .map_err(|e| format!("{}: removing the write probe: {e}", dir.display()))?;
    Ok(())
}

fn parse_role(s: &str) -> Result<RoleName, String> {
    RoleName::parse(s).map_err(|why| format!("role name {why}"))
}

fn parse_mount(s: &str) -> Result<String, String> {
    let mount = s.trim_matches('/');
    if mount.is_empty() {
        return Err("must not be empty".into());
    }
    if mount
        .split('/')
        .any(|seg| seg.is_empty() || seg == "." || seg == "..")
    {
        return Err("must be a path of non-empty segments without '.' or '..'".into());
    }
    Ok(mount.to_owned())
}

fn parse_non_empty(s: &str) -> Result<String, String> {
    if s.trim().is_empty() {
        return Err("must not be empty".into());
    }
    Ok(s.to_owned())
}

fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d.is_zero() {
        return Err("must be greater than zero".into());
    }
    Ok(d)
}

fn parse_mode(s: &str) -> Result<u32, String> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    let mode = u32::from_str_radix(digits, 8)
        .map_err(|_| format!("{s:?} is not an octal file mode such as 0440"))?;
    if mode > 0o777 {
        return Err(format!("{s:?} has bits outside 0777"));
    }
    if mode & 0o400 == 0 {
        return Err(format!("{s:?} does not let the owner read the token"));
    }
    Ok(mode)
}

/// Turns a clap error into one line: the reason and the flags it names, without the usage block.
pub fn one_line(err: &clap::Error) -> String {
    err.render()
        .to_string()
        .lines()
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
        .trim_start_matches("error: ")
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Minimal valid argv (without the program name): role, pod uid, Vault address, client CA.
    fn base(ca_pem: &str) -> Vec<String> {
        [
            "--role",
            "web",
            "--pod-uid",
            "uid-1",
            "--vault-addr",
            "http://127.0.0.1:8200",
            "--client-ca-pem",
            ca_pem,
        ]
        .map(String::from)
        .to_vec()
    }

    /// Parses `base` with `extra` flag/value pairs added, or replacing a base flag's value.
    fn parse(extra: &[&str], ca_pem: &str) -> Result<Args, clap::Error> {
        let mut argv = base(ca_pem);
        for pair in extra.chunks(2) {
            match argv.iter().position(|a| a == pair[0]) {
                Some(i) => argv[i + 1] = pair[1].to_owned(),
                None => argv.extend(pair.iter().map(|s| s.to_string())),
            }
        }
        Args::try_parse_from(std::iter::once("approle-init".to_owned()).chain(argv))
    }

    fn ca() -> String {
        tls::Ca::generate("test CA", Duration::from_secs(600))
            .expect("ca")
            .cert_pem()
            .to_owned()
    }

    #[test]
    fn defaults_match_the_design() {
        let args = parse(&[], "x").expect("parses");
        assert_eq!(args.listen, "0.0.0.0:8643".parse().expect("addr"));
        assert_eq!(args.approle_mount, "approle");
        assert_eq!(
            args.out_dir,
            PathBuf::from("/var/run/secrets/vault-approle")
        );
        assert_eq!(args.timeout, Duration::from_secs(300));
        assert_eq!(args.vault_timeout, Duration::from_secs(10));
        assert_eq!(args.file_mode, 0o440);
        assert_eq!(args.log_format, LogFormat::Plain);
        assert_eq!(args.log_level, "info");
        assert_eq!(args.source_address, None);
        assert_eq!(args.vault_cacert_pem, None);
        assert_eq!(args.identity_token_file, None);
    }

    #[test]
    fn good_flag_values_parse() {
        let cases: &[(&str, &[&str])] = &[
            ("listen with port 0", &["--listen", "127.0.0.5:0"]),
            ("ipv6 listen", &["--listen", "[::1]:8643"]),
            ("nested mount", &["--approle-mount", "/team/approle/"]),
            ("humantime timeout", &["--timeout", "1m30s"]),
            ("source address", &["--source-address", "10.1.2.3"]),
            ("mode with 0o", &["--file-mode", "0o400"]),
            ("mode without 0", &["--file-mode", "640"]),
            ("json logs", &["--log-format", "json"]),
        ];
        for (name, extra) in cases {
            assert!(parse(extra, "x").is_ok(), "{name}: {extra:?}");
        }
        let nested = parse(&["--approle-mount", "/team/approle/"], "x").expect("nested");
        assert_eq!(nested.approle_mount, "team/approle");
        let mode = parse(&["--file-mode", "640"], "x").expect("mode");
        assert_eq!(mode.file_mode, 0o640);
    }

    #[test]
    fn bad_flag_values_are_refused_naming_the_flag() {
        let cases: &[(&str, &[&str], &str)] = &[
            ("role with slash", &["--role", "a/b"], "--role"),
            ("empty role", &["--role", ""], "--role"),
            (
                "listen without port",
                &["--listen", "127.0.0.1"],
                "--listen",
            ),
            ("zero timeout", &["--timeout", "0s"], "--timeout"),
            ("garbage timeout", &["--timeout", "soon"], "--timeout"),
            ("mode not octal", &["--file-mode", "0999"], "--file-mode"),
            ("mode too big", &["--file-mode", "7777"], "--file-mode"),
            ("mode unreadable", &["--file-mode", "0040"], "--file-mode"),
            (
                "mount with ..",
                &["--approle-mount", "a/../b"],
                "--approle-mount",
            ),
            ("empty pod uid", &["--pod-uid", " "], "--pod-uid"),
            (
                "bad source address",
                &["--source-address", "pod"],
                "--source-address",
            ),
            ("bad log format", &["--log-format", "xml"], "--log-format"),
        ];
        for (name, extra, flag) in cases {
            let err = parse(extra, "x").expect_err(name);
            let line = one_line(&err);
            assert!(line.contains(flag), "{name}: {line}");
            assert!(!line.contains('\n'), "{name}: {line}");
        }
    }

    #[test]
    fn missing_required_flags_are_named() {
        let err = Args::try_parse_from(["approle-init"]).expect_err("missing");
        let line = one_line(&err);
        for flag in ["--role", "--pod-uid", "--vault-addr", "--client-ca-pem"] {
            assert!(line.contains(flag), "{flag}: {line}");
        }
    }

    #[test]
    fn config_checks_name_the_flag_at_fault() {
        tls::install_crypto_provider();
        let ca = ca();
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().to_path_buf();
        let file = dir.join("a-file");
        std::fs::write(&file, b"x").expect("file");
        let dir_s = dir.display().to_string();
        let file_s = file.display().to_string();
        let missing = dir.join("missing").display().to_string();
        let empty = tmp.path().join("empty-token");
        std::fs::write(&empty, b"\n").expect("empty file");
        let empty_s = empty.display().to_string();
        let cases: Vec<(&str, Vec<&str>, &str, &str)> = vec![
            (
                "garbage client CA",
                vec!["--out-dir", &dir_s],
                "not a pem",
                "--client-ca-pem",
            ),
            (
                "garbage Vault CA",
                vec!["--out-dir", &dir_s, "--vault-cacert-pem", "nope"],
                &ca,
                "--vault-cacert-pem",
            ),
            (
                "Vault address without scheme",
                vec!["--out-dir", &dir_s, "--vault-addr", "vault:8200"],
                &ca,
                "--vault-addr",
            ),
            (
                "missing out dir",
                vec!["--out-dir", &missing],
                &ca,
                "--out-dir",
            ),
            (
                "out dir is a file",
                vec!["--out-dir", &file_s],
                &ca,
                "--out-dir",
            ),
            (
                "missing identity token file",
                vec!["--out-dir", &dir_s, "--identity-token-file", &missing],
                &ca,
                "--identity-token-file",
            ),
            (
                "empty identity token file",
                vec!["--out-dir", &dir_s, "--identity-token-file", &empty_s],
                &ca,
                "--identity-token-file",
            ),
        ];
        for (name, extra, ca_pem, flag) in cases {
            let err = parse(&extra, ca_pem)
                .expect("clap accepts")
                .into_config()
                .expect_err(name);
            assert_eq!(err.flag, flag, "{name}: {err}");
            assert!(err.to_string().starts_with(flag), "{name}: {err}");
        }
        let ok = parse(&["--out-dir", &dir_s], &ca)
            .expect("clap accepts")
            .into_config()
            .expect("valid config");
        assert_eq!(ok.role.as_str(), "web");
        let left: Vec<_> = std::fs::read_dir(&dir).expect("ls").collect();
        assert_eq!(left.len(), 2, "the write probe is removed");
    }
}

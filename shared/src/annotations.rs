//! The `vault-approle.io/` annotations: keys, parsing into an [`InjectionSpec`], and errors a person
//! can act on.
//!
//! Nothing under the prefix is ever silently ignored: an unknown key is an error that names the key
//! and, for a near miss, the key that was meant. A misspelled prefix (`vault-aprole.io/role`) is
//! caught too, because a pod that silently gets no credential is the failure users hate most.

use std::collections::BTreeMap;
use std::fmt;

/// Every key starts with this.
pub const PREFIX: &str = "vault-approle.io/";
/// AppRole name; its presence opts the pod in.
pub const ROLE: &str = "vault-approle.io/role";
/// Comma list of containers that get the volume (default: all).
pub const CONTAINERS: &str = "vault-approle.io/containers";
/// Where the volume is mounted.
pub const MOUNT_PATH: &str = "vault-approle.io/mount-path";
/// Push port of the init container.
pub const PORT: &str = "vault-approle.io/port";
/// `init` or `sidecar`.
pub const MODE: &str = "vault-approle.io/mode";
/// Prefix of the KV secret annotations (`vault-approle.io/secret-<file>`).
pub const SECRET_PREFIX: &str = "vault-approle.io/secret-";
/// Written by the system: delivery status ([`STATUS_INJECTED`] at admission, then `delivered`).
pub const STATUS: &str = "vault-approle.io/status";
/// Value of [`STATUS`] the webhook writes: injected, no token delivered yet.
pub const STATUS_INJECTED: &str = "injected";
/// Written by the system: accessor of the delivered token.
pub const TOKEN_ACCESSOR: &str = "vault-approle.io/token-accessor";
/// Written by the system: how many init-container runs of the pod were handed a credential
/// (crash-loop backoff counts re-deliveries with it).
pub const DELIVERIES: &str = "vault-approle.io/deliveries";
/// Written by the system: `<RFC 3339 time> <init-container run>` of the last run handed a
/// credential (the run is the container ID, or `restart-<n>` when the runtime reports none).
pub const LAST_DELIVERY: &str = "vault-approle.io/last-delivery";

/// Keys a user may set.
pub const USER_KEYS: [&str; 5] = [ROLE, CONTAINERS, MOUNT_PATH, PORT, MODE];
/// Keys the system writes; accepted when present, never required.
pub const SYSTEM_KEYS: [&str; 4] = [STATUS, TOKEN_ACCESSOR, DELIVERIES, LAST_DELIVERY];

/// Default mount path of the credential volume (and the init container's output dir).
pub const DEFAULT_MOUNT_PATH: &str = "/var/run/secrets/vault-approle";
/// Default push port: 8643 is unprivileged (the init container runs as non-root) and unlikely to
/// collide with an application port.
pub const DEFAULT_PORT: u16 = 8643;

/// How the credential is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// One-shot init container (default).
    Init,
}

/// A validated AppRole name: `^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$`, and no `..`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RoleName(String);

impl RoleName {
    /// Validates a role name.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            return Err("is empty".into());
        }
        if s.len() > 128 {
            return Err(format!("is {} characters long; the limit is 128", s.len()));
        }
        let first = s.as_bytes()[0];
        if !first.is_ascii_alphanumeric() {
            return Err(format!(
                "must start with a letter or digit, not {:?}",
                first as char
            ));
        }
        if let Some(bad) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
        {
            return Err(format!(
                "contains {bad:?}; only letters, digits, '_', '.' and '-' are allowed"
            ));
        }
        if s.contains("..") {
            return Err("contains \"..\"".into());
        }
        Ok(Self(s.to_owned()))
    }

    /// The role name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RoleName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a pod asked for, parsed and validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InjectionSpec {
    /// The AppRole.
    pub role: RoleName,
    /// Containers that get the volume; `None` = all.
    pub containers: Option<Vec<String>>,
    /// Mount path of the credential volume.
    pub mount_path: String,
    /// Push port.
    pub port: u16,
    /// Init or sidecar.
    pub mode: Mode,
}

/// One problem with one annotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnotationError {
    /// The key as written.
    pub key: String,
    /// What is wrong, in words.
    pub problem: String,
}

impl fmt::Display for AnnotationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "annotation {:?} {}", self.key, self.problem)
    }
}

/// All problems found on one pod; never empty.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct AnnotationErrors(pub Vec<AnnotationError>);

impl fmt::Display for AnnotationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl InjectionSpec {
    /// Parses a pod's annotations. `Ok(None)`: the pod did not opt in (no key under the prefix, and
    /// nothing that looks like a misspelling of one).
    pub fn from_annotations(
        annotations: &BTreeMap<String, String>,
    ) -> Result<Option<Self>, AnnotationErrors> {
        let mut errors = Vec::new();
        let mut ours = false;
        for key in annotations.keys() {
            if let Some(problem) = unknown_key_problem(key) {
                errors.push(AnnotationError {
                    key: key.clone(),
                    problem,
                });
            } else if key.starts_with(PREFIX) && !SYSTEM_KEYS.contains(&key.as_str()) {
                ours = true;
            }
        }
        let get = |k: &str| annotations.get(k).map(|v| v.trim());
        let mut fail = |key: &str, problem: String| {
            errors.push(AnnotationError {
                key: key.to_owned(),
                problem,
            })
        };

        let role = match get(ROLE) {
            Some(v) => RoleName::parse(v)
                .map_err(|why| fail(ROLE, format!("has an invalid role name {v:?}: it {why}")))
                .ok(),
            None if ours => {
                fail(
                    ROLE,
                    "is missing; it names the AppRole and is required when other vault-approle.io/ annotations are set".into(),
                );
                None
            }
            None => None,
        };

        let containers = get(CONTAINERS).and_then(|v| {
            let names: Vec<String> = v
                .split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect();
            if names.is_empty() {
                fail(CONTAINERS, "is empty; list container names separated by commas, or leave it out for all containers".into());
                return None;
            }
            for n in &names {
                if !is_dns_label(n) {
                    fail(CONTAINERS, format!("names {n:?}, which is not a valid container name"));
                }
            }
            Some(names)
        });

        let mount_path = match get(MOUNT_PATH) {
            None => DEFAULT_MOUNT_PATH.to_owned(),
            Some(v) => {
                if let Err(why) = check_mount_path(v) {
                    fail(MOUNT_PATH, format!("has {v:?}, which {why}"));
                }
                v.trim_end_matches('/').to_owned()
            }
        };

        let port = match get(PORT) {
            None => DEFAULT_PORT,
            Some(v) => match v.parse::<u16>() {
                Ok(p) if p >= 1 => p,
                _ => {
                    fail(
                        PORT,
                        format!("has {v:?}; a port is a number from 1 to 65535"),
                    );
                    DEFAULT_PORT
                }
            },
        };

        let mode = match get(MODE) {
            None | Some("init") => Mode::Init,
            Some("sidecar") => {
                fail(
                    MODE,
                    "is \"sidecar\", which this version does not support yet; use \"init\"".into(),
                );
                Mode::Init
            }
            Some(v) => {
                fail(
                    MODE,
                    format!("has {v:?}; it must be \"init\" or \"sidecar\""),
                );
                Mode::Init
            }
        };

        if !errors.is_empty() {
            return Err(AnnotationErrors(errors));
        }
        Ok(role.map(|role| InjectionSpec {
            role,
            containers,
            mount_path,
            port,
            mode,
        }))
    }
}

/// `Some(problem)` when `key` is under our prefix but unknown, or looks like a misspelling of one of
/// our keys.
fn unknown_key_problem(key: &str) -> Option<String> {
    if USER_KEYS.contains(&key) || SYSTEM_KEYS.contains(&key) {
        return None;
    }
    if key.starts_with(SECRET_PREFIX) {
        return Some("asks for a KV secret file, which this version does not support yet".into());
    }
    let (domain, name) = key.split_once('/').unwrap_or(("", key));
    let ours = key.starts_with(PREFIX);
    let near_domain =
        !ours && !domain.is_empty() && distance(domain, &PREFIX[..PREFIX.len() - 1]) <= 2;
    if !ours && !near_domain {
        return None;
    }
    let best = USER_KEYS
        .iter()
        .map(|k| (distance(name, &k[PREFIX.len()..]), *k))
        .min()
        .filter(|(d, _)| *d <= 3 || near_domain);
    Some(match best {
        Some((_, meant)) => format!("is not a known annotation; did you mean {meant:?}?"),
        None => format!(
            "is not a known annotation; known keys are {}",
            USER_KEYS.join(", ")
        ),
    })
}

fn check_mount_path(p: &str) -> Result<(), &'static str> {
    if !p.starts_with('/') {
        return Err("is not an absolute path");
    }
    if p == "/" {
        return Err("is the root directory");
    }
    if p.split('/').any(|seg| seg == ".." || seg == ".") {
        return Err("contains '.' or '..'");
    }
    if p.contains("//") || p.chars().any(|c| c.is_control() || c == ':') {
        return Err("contains '//', ':' or control characters");
    }
    Ok(())
}

/// RFC 1123 label, as Kubernetes requires of container names.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// The candidate closest to `name` (edit distance at most 3), for "did you mean" hints.
pub fn nearest<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (distance(name, c), c))
        .min()
        .filter(|(d, _)| *d <= 3)
        .map(|(_, c)| c)
}

/// Levenshtein distance (small strings only).
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(pairs: &[(&str, &str)]) -> Result<Option<InjectionSpec>, AnnotationErrors> {
        let map = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        InjectionSpec::from_annotations(&map)
    }

    #[test]
    fn pod_without_our_annotations_is_not_opted_in() {
        assert_eq!(parse(&[("app", "web"), ("other.io/role", "x")]), Ok(None));
    }

    #[test]
    fn role_alone_gives_the_defaults() {
        let spec = parse(&[(ROLE, "web-app")])
            .expect("valid")
            .expect("opted in");
        assert_eq!(spec.role.as_str(), "web-app");
        assert_eq!(spec.mount_path, DEFAULT_MOUNT_PATH);
        assert_eq!(spec.port, DEFAULT_PORT);
        assert_eq!(spec.containers, None);
        assert_eq!(spec.mode, Mode::Init);
    }

    #[test]
    fn role_names_are_checked() {
        let cases: &[(&str, bool)] = &[
            ("web", true),
            ("Web_App.v2-x", true),
            ("0", true),
            (&"a".repeat(128), true),
            (&"a".repeat(129), false),
            ("", false),
            ("-web", false),
            (".web", false),
            ("a/b", false),
            ("a..b", false),
            ("web app", false),
            ("wéb", false),
        ];
        for (name, ok) in cases {
            assert_eq!(RoleName::parse(name).is_ok(), *ok, "{name:?}");
        }
    }

    #[test]
    fn misspelled_key_names_the_key_that_was_meant() {
        let err = parse(&[("vault-approle.io/rol", "web")]).expect_err("refused");
        let msg = err.to_string();
        assert!(msg.contains("\"vault-approle.io/rol\""), "{msg}");
        assert!(
            msg.contains("did you mean \"vault-approle.io/role\""),
            "{msg}"
        );
    }

    #[test]
    fn misspelled_prefix_is_caught_too() {
        let msg = parse(&[("vault-aprole.io/role", "web")])
            .expect_err("refused")
            .to_string();
        assert!(
            msg.contains("did you mean \"vault-approle.io/role\""),
            "{msg}"
        );
        let msg = parse(&[("vault-approle.io/mountpath", "/x")])
            .expect_err("refused")
            .to_string();
        assert!(msg.contains("vault-approle.io/mount-path"), "{msg}");
    }

    #[test]
    fn bad_values_are_refused_with_the_key_named() {
        let cases: &[(&str, &str, &str)] = &[
            (PORT, "0", "1 to 65535"),
            (PORT, "http", "1 to 65535"),
            (PORT, "70000", "1 to 65535"),
            (MOUNT_PATH, "relative/dir", "absolute"),
            (MOUNT_PATH, "/var/../etc", "'..'"),
            (MOUNT_PATH, "/", "root"),
            (CONTAINERS, "App", "not a valid container name"),
            (CONTAINERS, " , ", "empty"),
            (MODE, "daemon", "\"init\" or \"sidecar\""),
            (MODE, "sidecar", "does not support yet"),
        ];
        for (key, value, needle) in cases {
            let msg = parse(&[(ROLE, "web"), (key, value)])
                .expect_err(&format!("{key}={value} refused"))
                .to_string();
            assert!(msg.contains(key), "{msg}");
            assert!(msg.contains(needle), "{key}={value}: {msg}");
        }
    }

    #[test]
    fn other_keys_without_role_are_an_error() {
        let msg = parse(&[(PORT, "9000")]).expect_err("refused").to_string();
        assert!(msg.contains(ROLE) && msg.contains("missing"), "{msg}");
    }

    #[test]
    fn system_keys_alone_do_not_opt_in_and_are_accepted() {
        assert_eq!(parse(&[(STATUS, "delivered")]), Ok(None));
        assert!(
            parse(&[
                (ROLE, "web"),
                (STATUS, "delivered"),
                (TOKEN_ACCESSOR, "abc")
            ])
            .expect("valid")
            .is_some()
        );
    }

    #[test]
    fn containers_and_mount_path_are_parsed() {
        let spec = parse(&[
            (ROLE, "web"),
            (CONTAINERS, "app, sidecar"),
            (MOUNT_PATH, "/vault/"),
        ])
        .expect("valid")
        .expect("opted in");
        assert_eq!(spec.containers, Some(vec!["app".into(), "sidecar".into()]));
        assert_eq!(spec.mount_path, "/vault");
    }

    #[test]
    fn secret_annotations_are_refused_until_supported() {
        let msg = parse(&[(ROLE, "web"), ("vault-approle.io/secret-db", "kv/db")])
            .expect_err("refused")
            .to_string();
        assert!(msg.contains("vault-approle.io/secret-db"), "{msg}");
    }
}

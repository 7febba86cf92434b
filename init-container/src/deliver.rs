//! The Vault flow of one valid push (DESIGN.md "Push protocol", vault-api.md §3.4–3.5):
//!
//! ```text
//!   sys/wrapping/lookup ──creation_path == auth/<mount>/role/<role>/secret-id ?──┐
//!        │ invalid/used → SECURITY (exit 4)        │ other path → SECURITY (exit 4)
//!        │ unreachable/5xx → 502, keep waiting     ▼
//!   sys/wrapping/unwrap (wrapping token as X-Vault-Token; consumes it) → secret_id
//!        │ invalid/used → SECURITY (exit 4)
//!        │ unreachable/5xx → 502, keep waiting;  anything else → 502, exit 5
//!        ▼
//!   auth/<mount>/login (role_id + secret_id) ── failure → 502, exit 5
//!        ▼
//!   write token + token.json atomically ──────── failure → 500, exit 6
//!        ▼
//!   200 delivered
//! ```
//!
//! The lookup comes first because it is the only call that does not consume the wrapping token:
//! a token minted for another role (or a different mount) is refused before it is used, the way
//! Vault Agent validates `creation_path`. An invalid token at lookup means someone used it before
//! us — possible interception — so it is a security refusal, not a retry.

use std::path::PathBuf;

use approle_shared::annotations::RoleName;
use approle_shared::exit::ExitCode;
use approle_shared::push::{PushRequest, PushResponse, Refusal};
use approle_shared::tokenfile::{TokenFile, WriteError, write_token_files};
use approle_shared::vault::{Vault, VaultError, secret_id_path};
use tracing::{error, info, instrument};

/// Which Vault call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// `sys/wrapping/lookup`.
    Lookup,
    /// `sys/wrapping/unwrap`.
    Unwrap,
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stage::Lookup => "lookup",
            Stage::Unwrap => "unwrap",
        })
    }
}

/// Why a delivery failed. No variant carries a credential; Vault texts are already scrubbed.
#[derive(Debug, thiserror::Error)]
pub enum DeliverError {
    /// The wrapping token was minted on another path: it does not wrap this role's secret_id.
    #[error("wrapping token creation_path {actual:?} is not the expected {expected:?}")]
    WrongCreationPath {
        /// `auth/<mount>/role/<role>/secret-id`.
        expected: String,
        /// What Vault recorded.
        actual: String,
    },
    /// Vault says the wrapping token is used, expired, revoked or unknown.
    #[error("wrapping token is not valid or was already used (at {stage})")]
    InvalidWrappingToken {
        /// Where Vault said so.
        stage: Stage,
    },
    /// Vault could not answer (transport, 5xx) before the token was consumed: a new push may work.
    #[error(transparent)]
    VaultUnavailable(VaultError),
    /// Unwrapping failed in a way that is neither transient nor an invalid token.
    #[error(transparent)]
    Unwrap(VaultError),
    /// The AppRole login failed; the secret_id is spent either way.
    #[error(transparent)]
    Login(VaultError),
    /// The token files could not be written (the token with this accessor is unused).
    #[error("{source} (token accessor {accessor} was not delivered)")]
    Write {
        /// Accessor of the token that could not be written, so it can be revoked.
        accessor: String,
        /// The filesystem error.
        source: WriteError,
    },
}

impl DeliverError {
    /// The answer to the pusher.
    pub fn refusal(&self) -> Refusal {
        let reason = self.to_string();
        match self {
            DeliverError::WrongCreationPath { .. } | DeliverError::InvalidWrappingToken { .. } => {
                Refusal::InvalidWrappingToken(reason)
            }
            DeliverError::VaultUnavailable(_)
            | DeliverError::Unwrap(_)
            | DeliverError::Login(_) => Refusal::VaultFailed(reason),
            DeliverError::Write { .. } => Refusal::Internal(reason),
        }
    }

    /// How the process ends after this failure; `None` = keep waiting for another push.
    pub fn exit_code(&self) -> Option<ExitCode> {
        match self {
            DeliverError::WrongCreationPath { .. } | DeliverError::InvalidWrappingToken { .. } => {
                Some(ExitCode::Security)
            }
            DeliverError::VaultUnavailable(_) => None,
            DeliverError::Unwrap(_) | DeliverError::Login(_) => Some(ExitCode::VaultLogin),
            DeliverError::Write { .. } => Some(ExitCode::WriteFailed),
        }
    }

    fn from_vault(stage: Stage, e: VaultError) -> Self {
        if e.is_invalid_wrapping_token() {
            DeliverError::InvalidWrappingToken { stage }
        } else if e.is_transient() || stage == Stage::Lookup {
            // A failed lookup consumed nothing, whatever the reason: the pusher may try again.
            DeliverError::VaultUnavailable(e)
        } else {
            DeliverError::Unwrap(e)
        }
    }
}

/// Carries out deliveries for this pod.
#[derive(Debug)]
pub struct Deliverer {
    /// Vault client.
    pub vault: Vault,
    /// AppRole mount, without surrounding slashes.
    pub mount: String,
    /// This pod's role.
    pub role: RoleName,
    /// This pod's UID.
    pub pod_uid: String,
    /// Where the token files go.
    pub out_dir: PathBuf,
    /// Their mode.
    pub file_mode: u32,
}

impl Deliverer {
    /// Runs lookup → creation_path check → unwrap → login → write for a push that passed
    /// `PushRequest::validate`.
    #[instrument(skip_all, fields(role = %self.role, pod_uid = %self.pod_uid))]
    pub async fn deliver(&self, push: &PushRequest) -> Result<PushResponse, DeliverError> {
        let result = self.run(push).await;
        if let Err(
            e
            @ (DeliverError::WrongCreationPath { .. } | DeliverError::InvalidWrappingToken { .. }),
        ) = &result
        {
            // Starts with SECURITY: like Vault Agent's line, so alerting can match on it.
            error!(
                security = true,
                expected_creation_path = %self.expected_creation_path(),
                "SECURITY: refusing the wrapping token: {e}; expected creation_path {:?}, \
                 pod_uid={} role={}; possible interception of the credential",
                self.expected_creation_path(),
                self.pod_uid,
                self.role,
            );
        }
        result
    }

    fn expected_creation_path(&self) -> String {
        secret_id_path(&self.mount, self.role.as_str())
    }

    async fn run(&self, push: &PushRequest) -> Result<PushResponse, DeliverError> {
        let expected = self.expected_creation_path();
        let lookup = self
            .vault
            .wrapping_lookup(&push.wrapping_token)
            .await
            .map_err(|e| DeliverError::from_vault(Stage::Lookup, e))?;
        if lookup.creation_path != expected {
            return Err(DeliverError::WrongCreationPath {
                expected,
                actual: lookup.creation_path,
            });
        }
        let secret_id = self
            .vault
            .unwrap_secret_id(&push.wrapping_token)
            .await
            .map_err(|e| DeliverError::from_vault(Stage::Unwrap, e))?;
        let login = self
            .vault
            .approle_login(&self.mount, &push.role_id, &secret_id)
            .await
            .map_err(DeliverError::Login)?;
        let expires_at = expires_at(jiff::Timestamp::now(), login.lease_duration);
        let file = TokenFile {
            client_token: login.client_token,
            accessor: login.accessor.clone(),
            policies: login.policies,
            lease_duration: login.lease_duration,
            renewable: login.renewable,
            expires_at: expires_at.clone(),
            vault_addr: self.vault.addr().to_owned(),
            role: self.role.to_string(),
            pod_uid: self.pod_uid.clone(),
        };
        // Written in place, not on a blocking thread: this one-shot process has nothing else to
        // run meanwhile, and a thread (stack, malloc arena) costs more than the few small writes.
        write_token_files(&self.out_dir, &file, self.file_mode).map_err(|source| {
            DeliverError::Write {
                accessor: login.accessor.clone(),
                source,
            }
        })?;
        info!(accessor = %login.accessor, out_dir = %self.out_dir.display(), "token files written");
        Ok(PushResponse {
            status: "delivered".into(),
            token_accessor: login.accessor,
            lease_duration: login.lease_duration,
            expires_at,
        })
    }
}

/// `now + lease` in RFC 3339, to the second.
fn expires_at(now: jiff::Timestamp, lease_secs: u64) -> String {
    let secs = now
        .as_second()
        .saturating_add(i64::try_from(lease_secs).unwrap_or(i64::MAX));
    jiff::Timestamp::from_second(secs)
        .unwrap_or(jiff::Timestamp::MAX)
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(status: u16, msg: &str) -> VaultError {
        VaultError::Api {
            op: "x".into(),
            status,
            errors: vec![msg.into()],
        }
    }

    #[test]
    fn expires_at_is_rfc3339_seconds_after_now() {
        let now: jiff::Timestamp = "2026-03-04T10:11:12.5Z".parse().expect("ts");
        assert_eq!(expires_at(now, 3600), "2026-03-04T11:11:12Z");
        assert_eq!(expires_at(now, u64::MAX), jiff::Timestamp::MAX.to_string());
    }

    #[test]
    fn each_failure_has_its_status_and_exit_code() {
        let invalid = approle_shared::vault::INVALID_WRAPPING_TOKEN;
        let cases: Vec<(&str, DeliverError, u16, Option<ExitCode>)> = vec![
            (
                "wrong creation_path",
                DeliverError::WrongCreationPath {
                    expected: "a".into(),
                    actual: "b".into(),
                },
                422,
                Some(ExitCode::Security),
            ),
            (
                "used token at lookup",
                DeliverError::from_vault(Stage::Lookup, api(400, invalid)),
                422,
                Some(ExitCode::Security),
            ),
            (
                "used token at unwrap",
                DeliverError::from_vault(Stage::Unwrap, api(400, invalid)),
                422,
                Some(ExitCode::Security),
            ),
            (
                "lookup 500",
                DeliverError::from_vault(Stage::Lookup, api(500, "boom")),
                502,
                None,
            ),
            (
                "lookup 403 consumed nothing",
                DeliverError::from_vault(Stage::Lookup, api(403, "permission denied")),
                502,
                None,
            ),
            (
                "unwrap 503",
                DeliverError::from_vault(Stage::Unwrap, api(503, "sealed")),
                502,
                None,
            ),
            (
                "unwrap 403",
                DeliverError::from_vault(Stage::Unwrap, api(403, "permission denied")),
                502,
                Some(ExitCode::VaultLogin),
            ),
            (
                "login refused",
                DeliverError::Login(api(400, "invalid role or secret ID")),
                502,
                Some(ExitCode::VaultLogin),
            ),
            (
                "write failed",
                DeliverError::Write {
                    accessor: "acc".into(),
                    source: approle_shared::tokenfile::WriteError::Io {
                        file: "token".into(),
                        dir: "/x".into(),
                        source: std::io::Error::other("disk full"),
                    },
                },
                500,
                Some(ExitCode::WriteFailed),
            ),
        ];
        for (name, err, status, exit) in cases {
            assert_eq!(err.refusal().status(), status, "{name}");
            assert_eq!(err.exit_code(), exit, "{name}");
        }
    }
}

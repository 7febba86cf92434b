//! The push protocol between the controller and the init container (DESIGN.md "Push protocol").
//!
//! `POST https://<podIP>:<port>/v1/secret-id` over mutual TLS, a JSON [`PushRequest`] of at most
//! [`MAX_BODY_BYTES`]; the init container answers [`PushResponse`] only after it has logged in and
//! written its files, or a [`PushError`] with one of the status codes documented on [`Refusal`].
//!
//! Pod identity comes first, on the same connection (HTTP/1.1 keep-alive, one TLS session):
//!
//! ```text
//!   controller ──mTLS──▶ GET /v1/identity ──▶ 200 IdentityResponse {"token": <projected SA token>}
//!       │  TokenReview(token, audiences [IDENTITY_AUDIENCE]) bound to this pod's name and UID?
//!       └─ yes ──▶ POST /v1/secret-id (same connection)      no ──▶ nothing is sent
//! ```

use serde::{Deserialize, Serialize};

use crate::annotations::RoleName;
use crate::secret::{IdentityToken, WrappingToken};

/// Path of the push.
pub const SECRET_ID_PATH: &str = "/v1/secret-id";
/// Path of the identity check: the init container shows its projected service-account token.
pub const IDENTITY_PATH: &str = "/v1/identity";
/// Audience of the projected service-account token the init container shows: a token minted for
/// this audience is useless to the Kubernetes API and to anything that checks for its own.
pub const IDENTITY_AUDIENCE: &str = "vault-approle";
/// Largest accepted body: a push is four short strings; anything bigger is not ours.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// Body of a push.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushRequest {
    /// UID of the pod the credential is for.
    pub pod_uid: String,
    /// AppRole name.
    pub role: String,
    /// The role's role_id (not a secret on its own).
    pub role_id: String,
    /// Response-wrapping token that wraps the secret_id.
    pub wrapping_token: WrappingToken,
}

impl PushRequest {
    /// Checks the fields' shape and that the push is for this pod and role. The error is the
    /// refusal to send back.
    pub fn validate(&self, my_pod_uid: &str, my_role: &str) -> Result<(), Refusal> {
        if self.pod_uid.is_empty() || self.role_id.is_empty() || self.wrapping_token.is_empty() {
            return Err(Refusal::BadRequest(
                "pod_uid, role, role_id and wrapping_token must all be non-empty".into(),
            ));
        }
        if let Err(why) = RoleName::parse(&self.role) {
            return Err(Refusal::BadRequest(format!("role {why}")));
        }
        if self.pod_uid != my_pod_uid {
            return Err(Refusal::Forbidden("pod_uid does not match this pod".into()));
        }
        if self.role != my_role {
            return Err(Refusal::Forbidden(format!(
                "role {:?} is not the role of this pod",
                self.role
            )));
        }
        Ok(())
    }
}

/// 200 answer: the token was written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushResponse {
    /// Always `delivered`.
    pub status: String,
    /// Accessor of the delivered token (not a secret: it cannot be used to authenticate).
    pub token_accessor: String,
    /// Token TTL in seconds.
    pub lease_duration: u64,
    /// When the token expires (RFC 3339).
    pub expires_at: String,
}

/// Default path of the container's termination message (Kubernetes' `terminationMessagePath`).
pub const TERMINATION_MESSAGE_PATH: &str = "/dev/termination-log";

/// What the init container leaves as its termination message after a delivery; the kubelet
/// copies it into `status.initContainerStatuses[].state.terminated.message`. It lets a controller
/// that never saw the 200 (its predecessor was killed after the push) record the accessor.
/// Never a credential: an accessor cannot authenticate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TerminationMessage {
    /// Always `delivered`.
    pub status: String,
    /// Accessor of the delivered token.
    pub token_accessor: String,
}

impl TerminationMessage {
    /// The message of a delivery.
    pub fn delivered(token_accessor: &str) -> Self {
        Self {
            status: "delivered".into(),
            token_accessor: token_accessor.to_owned(),
        }
    }

    /// Reads a message back; `None` for anything else (older init containers leave none).
    pub fn parse(message: &str) -> Option<Self> {
        serde_json::from_str::<Self>(message)
            .ok()
            .filter(|m| m.status == "delivered" && !m.token_accessor.is_empty())
    }
}

/// 200 answer to `GET /v1/identity`. Its `Debug` is redacted: the token is a credential.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IdentityResponse {
    /// The pod's projected service-account token (audience [`IDENTITY_AUDIENCE`]).
    pub token: IdentityToken,
}

/// 4xx/5xx answer body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushError {
    /// Why the push was refused (never contains a credential).
    pub error: String,
}

/// Why a push was refused, with the HTTP status of each.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// 400: the body is not a valid push.
    #[error("{0}")]
    BadRequest(String),
    /// 403: the push is for another pod or role.
    #[error("{0}")]
    Forbidden(String),
    /// 404: no such path.
    #[error("{0}")]
    NotFound(String),
    /// 405: wrong method.
    #[error("{0}")]
    MethodNotAllowed(String),
    /// 408: the body did not arrive in time.
    #[error("{0}")]
    RequestTimeout(String),
    /// 409: this init container already holds a delivery.
    #[error("{0}")]
    AlreadyDelivered(String),
    /// 413: the body is larger than [`MAX_BODY_BYTES`].
    #[error("{0}")]
    TooLarge(String),
    /// 415: the body is not JSON.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// 422: the wrapping token is invalid, used, or from the wrong creation_path.
    #[error("{0}")]
    InvalidWrappingToken(String),
    /// 500: the receiver failed on its side (e.g. the token files could not be written).
    #[error("{0}")]
    Internal(String),
    /// 502: Vault failed.
    #[error("{0}")]
    VaultFailed(String),
    /// 503: busy with another push.
    #[error("{0}")]
    Busy(String),
}

impl Refusal {
    /// HTTP status code.
    pub fn status(&self) -> u16 {
        match self {
            Refusal::BadRequest(_) => 400,
            Refusal::Forbidden(_) => 403,
            Refusal::NotFound(_) => 404,
            Refusal::MethodNotAllowed(_) => 405,
            Refusal::RequestTimeout(_) => 408,
            Refusal::AlreadyDelivered(_) => 409,
            Refusal::TooLarge(_) => 413,
            Refusal::UnsupportedMediaType(_) => 415,
            Refusal::InvalidWrappingToken(_) => 422,
            Refusal::Internal(_) => 500,
            Refusal::VaultFailed(_) => 502,
            Refusal::Busy(_) => 503,
        }
    }

    /// The JSON body.
    pub fn body(&self) -> PushError {
        PushError {
            error: self.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push(uid: &str, role: &str) -> PushRequest {
        PushRequest {
            pod_uid: uid.into(),
            role: role.into(),
            role_id: "rid".into(),
            wrapping_token: WrappingToken::new("hvs.w"),
        }
    }

    #[test]
    fn push_for_this_pod_and_role_is_valid() {
        assert_eq!(push("u1", "web").validate("u1", "web"), Ok(()));
    }

    #[test]
    fn push_for_another_pod_or_role_is_forbidden() {
        assert_eq!(
            push("u2", "web")
                .validate("u1", "web")
                .map_err(|r| r.status()),
            Err(403)
        );
        assert_eq!(
            push("u1", "db")
                .validate("u1", "web")
                .map_err(|r| r.status()),
            Err(403)
        );
    }

    #[test]
    fn empty_fields_and_bad_role_are_bad_requests() {
        assert_eq!(
            push("", "web")
                .validate("u1", "web")
                .map_err(|r| r.status()),
            Err(400)
        );
        assert_eq!(
            push("u1", "a/b")
                .validate("u1", "a/b")
                .map_err(|r| r.status()),
            Err(400)
        );
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let body = r#"{"pod_uid":"u","role":"r","role_id":"i","wrapping_token":"w","x":1}"#;
        assert!(serde_json::from_str::<PushRequest>(body).is_err());
    }

    #[test]
    fn identity_response_debug_redacts_the_token() {
        let r: IdentityResponse =
            serde_json::from_str(r#"{"token":"eyJhbGciOi.secret.sig"}"#).expect("json");
        assert_eq!(r.token.expose(), "eyJhbGciOi.secret.sig");
        let s = format!("{r:?}");
        assert!(!s.contains("secret"), "{s}");
    }

    #[test]
    fn request_debug_redacts_the_wrapping_token() {
        let s = format!("{:?}", push("u1", "web"));
        assert!(!s.contains("hvs.w"), "{s}");
    }
}

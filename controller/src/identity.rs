//! Pod identity before the push (DESIGN.md "Push protocol", "Pod identity").
//!
//! ```text
//!   PushClient::connect(podIP:port) ── mTLS ──▶ Session
//!     │ GET /v1/identity ─▶ {"token": projected SA token (audience vault-approle)}
//!     │     not 200 / unreadable ─────────────────────────────▶ NotShown
//!     │ TokenReview {token, audiences: [vault-approle]}
//!     │     API error ────────────────────────────────────────▶ ReviewFailed (not an interception)
//!     │ verify(status, pod): authenticated, audience, username system:serviceaccount:<ns>:<sa>,
//!     │     extra pod-name == pod's name, pod-uid == pod's UID ▶ Unauthenticated / WrongAudience /
//!     │                                                          WrongServiceAccount / WrongPod
//!     ▼
//!   the same Session carries POST /v1/secret-id
//! ```
//!
//! Whoever else listens on the pod's IP does receive our request, but it holds no token bound to
//! this pod's name and UID: the kubelet writes that token into this pod's init container alone,
//! and the init container shows it only to clients with a certificate from the injector CA (so a
//! man in the middle cannot fetch it to replay). The token is a credential: it is never logged,
//! never part of an error or Event, and only sent to the API server's TokenReview.

use std::net::IpAddr;

use crate::pod::Pod;
use approle_shared::push::IDENTITY_AUDIENCE;
use approle_shared::secret::IdentityToken;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use kube::ResourceExt;
use kube::api::{Api, PostParams};
use tracing::debug;

use crate::push::{PushClient, PushFailure, Session};

/// `status.user.extra` key with the name of the pod a token is bound to.
pub const EXTRA_POD_NAME: &str = "authentication.kubernetes.io/pod-name";
/// `status.user.extra` key with the UID of the pod a token is bound to.
pub const EXTRA_POD_UID: &str = "authentication.kubernetes.io/pod-uid";

/// Why the controller will not push to what answered on the pod's IP. Texts name what failed,
/// never the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityFailure {
    /// No identity token was shown: an approle-init older than the identity check answers 404,
    /// and so does anything else that accepts our connection.
    #[error("the init container showed no identity token ({status}: {message})")]
    NotShown {
        /// HTTP status of the answer to `GET /v1/identity`.
        status: u16,
        /// Its error text.
        message: String,
    },
    /// TokenReview did not authenticate the token: not a service-account token, a wrong
    /// audience, expired, or its pod is gone.
    #[error("TokenReview did not authenticate the identity token: {0}")]
    Unauthenticated(String),
    /// Authenticated, but not for our audience.
    #[error("the identity token is not for audience {IDENTITY_AUDIENCE:?} (audiences: {0:?})")]
    WrongAudience(Vec<String>),
    /// The token belongs to another service account than the pod's.
    #[error(
        "the identity token belongs to {found:?}, not to the pod's service account {expected:?}"
    )]
    WrongServiceAccount {
        /// `system:serviceaccount:<ns>:<sa>` of the pod.
        expected: String,
        /// The username TokenReview reported.
        found: String,
    },
    /// The token is bound to another pod (or to none).
    #[error(
        "the identity token is bound to pod {found_name:?} (UID {found_uid:?}), not to this pod {expected_name:?} (UID {expected_uid:?})"
    )]
    WrongPod {
        /// This pod's name.
        expected_name: String,
        /// This pod's UID.
        expected_uid: String,
        /// The pod name in the token (empty if none).
        found_name: String,
        /// The pod UID in the token (empty if none).
        found_uid: String,
    },
    /// The TokenReview call itself failed (API server unreachable, no RBAC to create
    /// tokenreviews): nothing is known about the token.
    #[error("TokenReview failed: {0}")]
    ReviewFailed(String),
}

impl IdentityFailure {
    /// The `reason` label of `approle_identity_failures_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            IdentityFailure::NotShown { .. } => "not_shown",
            IdentityFailure::Unauthenticated(_) => "unauthenticated",
            IdentityFailure::WrongAudience(_) => "wrong_audience",
            IdentityFailure::WrongServiceAccount { .. } => "wrong_service_account",
            IdentityFailure::WrongPod { .. } => "wrong_pod",
            IdentityFailure::ReviewFailed(_) => "review_failed",
        }
    }

    /// True when something on the pod's IP failed the check (a `PossibleInterception`), false
    /// when the check itself could not be made.
    pub fn is_interception(&self) -> bool {
        !matches!(self, IdentityFailure::ReviewFailed(_))
    }
}

/// `system:serviceaccount:<namespace>:<service account>` of the pod (the API server sets
/// `serviceAccountName`, `default` when the pod names none).
pub fn service_account_user(pod: &Pod) -> String {
    format!(
        "system:serviceaccount:{}:{}",
        pod.namespace().unwrap_or_default(),
        pod.service_account()
    )
}

/// Checks a TokenReview status against the pod: authenticated, for [`IDENTITY_AUDIENCE`], of the
/// pod's service account, and bound to exactly this pod's name and UID.
pub fn verify(status: &TokenReviewStatus, pod: &Pod) -> Result<(), IdentityFailure> {
    if status.authenticated != Some(true) {
        let why = status
            .error
            .as_deref()
            .filter(|e| !e.is_empty())
            .unwrap_or("not authenticated");
        // The API server's reasons are short; cap them anyway (Events hold 1 kB).
        return Err(IdentityFailure::Unauthenticated(
            why.chars().take(300).collect(),
        ));
    }
    let audiences = status.audiences.clone().unwrap_or_default();
    if !audiences.iter().any(|a| a == IDENTITY_AUDIENCE) {
        return Err(IdentityFailure::WrongAudience(audiences));
    }
    let user = status.user.as_ref();
    let expected = service_account_user(pod);
    let found = user.and_then(|u| u.username.clone()).unwrap_or_default();
    if found != expected {
        return Err(IdentityFailure::WrongServiceAccount { expected, found });
    }
    let extra = user.and_then(|u| u.extra.as_ref());
    // Exactly one value each: a token is bound to one pod.
    let one = |key: &str| match extra.and_then(|e| e.get(key)).map(Vec::as_slice) {
        Some([v]) => v.clone(),
        _ => String::new(),
    };
    let (found_name, found_uid) = (one(EXTRA_POD_NAME), one(EXTRA_POD_UID));
    let (expected_name, expected_uid) = (pod.name_any(), pod.uid().unwrap_or_default());
    if expected_uid.is_empty() || found_name != expected_name || found_uid != expected_uid {
        return Err(IdentityFailure::WrongPod {
            expected_name,
            expected_uid,
            found_name,
            found_uid,
        });
    }
    Ok(())
}

/// Asks the API server who `token` is (TokenReview, audiences `[vault-approle]`).
pub async fn review(
    client: &kube::Client,
    token: &IdentityToken,
) -> Result<TokenReviewStatus, IdentityFailure> {
    let request = TokenReview {
        spec: TokenReviewSpec {
            audiences: Some(vec![IDENTITY_AUDIENCE.to_owned()]),
            token: Some(token.expose().to_owned()),
        },
        ..Default::default()
    };
    let api: Api<TokenReview> = Api::all(client.clone());
    // kube's error carries the API server's Status message, never the request body.
    let answer = api
        .create(&PostParams::default(), &request)
        .await
        .map_err(|e| IdentityFailure::ReviewFailed(e.to_string()))?;
    answer
        .status
        .ok_or_else(|| IdentityFailure::ReviewFailed("the TokenReview has no status".into()))
}

/// Why no verified connection was opened.
#[derive(Debug)]
pub enum OpenFailure {
    /// The connection failed or broke: retry.
    Transport(PushFailure),
    /// What answered failed the identity check (or the check could not be made).
    Identity(IdentityFailure),
}

/// Opens a connection to the pod's init container and checks its identity on it: the returned
/// session is ready for the push.
pub async fn open_verified(
    push: &PushClient,
    client: &kube::Client,
    pod: &Pod,
    pod_ip: IpAddr,
    port: u16,
) -> Result<Session, OpenFailure> {
    let mut session = push
        .connect(pod_ip, port)
        .await
        .map_err(OpenFailure::Transport)?;
    let token = match session.identity().await {
        Ok(token) => token,
        Err(PushFailure::Refused { status, message }) => {
            return Err(OpenFailure::Identity(IdentityFailure::NotShown {
                status,
                message,
            }));
        }
        Err(other) => return Err(OpenFailure::Transport(other)),
    };
    // With the next line, says whether the init container (TCP, mutual TLS, the identity
    // answer) or the API server (the TokenReview) is what a slow delivery waits for.
    debug!("identity token received; asking the API server (TokenReview)");
    let status = review(client, &token)
        .await
        .map_err(OpenFailure::Identity)?;
    verify(&status, pod).map_err(OpenFailure::Identity)?;
    Ok(session)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn pod() -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "web-0", "namespace": "shop", "uid": "uid-web-0"},
            "spec": {"serviceAccountName": "web", "containers": [{"name": "app", "image": "a"}]},
        }))
        .expect("pod")
    }

    /// What the API server answers for a valid projected token of `web-0`.
    fn good() -> Value {
        json!({
            "authenticated": true,
            "audiences": ["vault-approle"],
            "user": {
                "username": "system:serviceaccount:shop:web",
                "uid": "sa-uid",
                "groups": ["system:serviceaccounts", "system:serviceaccounts:shop", "system:authenticated"],
                "extra": {
                    "authentication.kubernetes.io/credential-id": ["JTI=1"],
                    "authentication.kubernetes.io/node-name": ["node-1"],
                    "authentication.kubernetes.io/node-uid": ["node-uid"],
                    "authentication.kubernetes.io/pod-name": ["web-0"],
                    "authentication.kubernetes.io/pod-uid": ["uid-web-0"],
                },
            },
        })
    }

    fn with(mut v: Value, pointer: &str, value: Value) -> Value {
        *v.pointer_mut(pointer).expect(pointer) = value;
        v
    }

    fn without(mut v: Value, key: &str) -> Value {
        v["user"]["extra"]
            .as_object_mut()
            .expect("extra")
            .remove(key);
        v
    }

    #[test]
    fn only_a_token_bound_to_exactly_this_pod_passes() {
        let extra = "/user/extra/authentication.kubernetes.io~1pod-";
        // (name, TokenReview status, expected metric reason or None for a pass)
        let cases: Vec<(&str, Value, Option<&str>)> = vec![
            ("this pod's token", good(), None),
            (
                "not authenticated (expired, deleted pod, bad signature)",
                json!({"authenticated": false, "user": {},
                       "error": "invalid bearer token, service account token has expired"}),
                Some("unauthenticated"),
            ),
            (
                "authenticated field missing",
                json!({"user": {}}),
                Some("unauthenticated"),
            ),
            (
                "authenticated for other audiences only",
                with(
                    good(),
                    "/audiences",
                    json!(["https://kubernetes.default.svc"]),
                ),
                Some("wrong_audience"),
            ),
            (
                "no audiences reported",
                with(good(), "/audiences", json!([])),
                Some("wrong_audience"),
            ),
            (
                "another service account",
                with(
                    good(),
                    "/user/username",
                    json!("system:serviceaccount:shop:admin"),
                ),
                Some("wrong_service_account"),
            ),
            (
                "same service account name in another namespace",
                with(
                    good(),
                    "/user/username",
                    json!("system:serviceaccount:other:web"),
                ),
                Some("wrong_service_account"),
            ),
            (
                "a user, not a service account",
                with(good(), "/user/username", json!("alice")),
                Some("wrong_service_account"),
            ),
            (
                "another pod's name",
                with(good(), &format!("{extra}name"), json!(["web-1"])),
                Some("wrong_pod"),
            ),
            (
                "same name, a former pod's UID",
                with(
                    good(),
                    &format!("{extra}uid"),
                    json!(["uid-of-deleted-web-0"]),
                ),
                Some("wrong_pod"),
            ),
            (
                "not bound to a pod (TokenRequest without boundObjectRef)",
                without(
                    without(good(), "authentication.kubernetes.io/pod-name"),
                    "authentication.kubernetes.io/pod-uid",
                ),
                Some("wrong_pod"),
            ),
            (
                "two pod names",
                with(good(), &format!("{extra}name"), json!(["web-0", "web-1"])),
                Some("wrong_pod"),
            ),
        ];
        let pod = pod();
        for (name, status, want) in cases {
            let status: TokenReviewStatus = serde_json::from_value(status).expect(name);
            let got = verify(&status, &pod);
            assert_eq!(
                got.as_ref().err().map(IdentityFailure::reason),
                want,
                "{name}: {got:?}"
            );
        }
    }

    #[test]
    fn a_pod_without_uid_never_passes() {
        let mut p = pod();
        p.metadata.uid = None;
        let status: TokenReviewStatus = serde_json::from_value(with(
            good(),
            "/user/extra/authentication.kubernetes.io~1pod-uid",
            json!([""]),
        ))
        .expect("status");
        assert!(matches!(
            verify(&status, &p),
            Err(IdentityFailure::WrongPod { .. })
        ));
    }

    #[test]
    fn pods_without_a_service_account_name_use_default() {
        let p: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns"},
            "spec": {"containers": [{"name": "app", "image": "a"}]},
        }))
        .expect("pod");
        assert_eq!(service_account_user(&p), "system:serviceaccount:ns:default");
        assert_eq!(
            service_account_user(&pod()),
            "system:serviceaccount:shop:web"
        );
    }

    #[test]
    fn failures_name_what_failed_and_only_review_errors_are_not_interceptions() {
        let wrong = IdentityFailure::WrongPod {
            expected_name: "web-0".into(),
            expected_uid: "u0".into(),
            found_name: "web-1".into(),
            found_uid: "u1".into(),
        };
        let text = wrong.to_string();
        assert!(text.contains("web-1") && text.contains("web-0"), "{text}");
        assert!(wrong.is_interception());
        assert!(
            IdentityFailure::NotShown {
                status: 404,
                message: "no such path".into()
            }
            .is_interception()
        );
        assert!(!IdentityFailure::ReviewFailed("forbidden".into()).is_interception());
    }
}

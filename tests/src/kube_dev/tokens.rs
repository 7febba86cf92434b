//! Service-account tokens: kube-dev signs bound tokens itself (ES256 JWTs, ring) with the claims
//! the real API server puts in them, and verifies them for TokenReview and for authenticating
//! API requests.
//!
//! * `POST /api/v1/namespaces/<ns>/serviceaccounts/<sa>/token` (TokenRequest: `audiences`,
//!   `expirationSeconds` ≥ 600, `boundObjectRef` to a Pod whose UID must match).
//! * `POST /apis/authentication.k8s.io/v1/tokenreviews` (signature, expiry, audience, and the
//!   bound pod and service account still existing with the same UIDs).
//! * The kubelet writes projected `serviceAccountToken` volumes with [`TokenIssuer::issue_for_pod`]
//!   (requested audience and expiry, bound to the pod) and renews them at 80 % of their lifetime.
//!
//! Tokens are credentials: they are never logged and never part of an error message.

use std::sync::Arc;

use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _,
    UnparsedPublicKey,
};
use serde_json::{Value, json};

use super::resources;
use super::status::{ApiError, Cause};
use super::store::Store;
use super::util::{name_of, new_uid, str_at, uid_of};

/// The issuer and default audience of the API server's tokens.
pub const API_AUDIENCE: &str = "https://kubernetes.default.svc.cluster.local";

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Signs and verifies service-account tokens.
pub struct TokenIssuer {
    key: EcdsaKeyPair,
    rng: SystemRandom,
    kid: String,
    node_name: String,
}

impl std::fmt::Debug for TokenIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenIssuer")
            .field("kid", &self.kid)
            .finish()
    }
}

/// A token that failed verification, with the reason TokenReview reports.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

/// What a valid token says.
#[derive(Debug, Clone)]
pub struct Verified {
    /// The token's claims.
    pub claims: Value,
}

fn now_secs() -> i64 {
    jiff::Timestamp::now().as_second()
}

impl TokenIssuer {
    /// A fresh P-256 signing key.
    pub fn new(node_name: &str) -> Result<Self, ring::error::Unspecified> {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)?;
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .map_err(|_| ring::error::Unspecified)?;
        let digest = ring::digest::digest(&ring::digest::SHA256, key.public_key().as_ref());
        Ok(Self {
            kid: B64.encode(digest.as_ref()),
            key,
            rng,
            node_name: node_name.to_string(),
        })
    }

    /// The JWKS document (`/openid/v1/jwks`).
    pub fn jwks(&self) -> Value {
        let pk = self.key.public_key().as_ref();
        // Uncompressed point: 0x04 || X (32) || Y (32).
        let (x, y) = (&pk[1..33], &pk[33..65]);
        json!({"keys": [{"use": "sig", "kty": "EC", "kid": self.kid, "crv": "P-256",
                         "alg": "ES256", "x": B64.encode(x), "y": B64.encode(y)}]})
    }

    fn sign(&self, claims: &Value) -> Result<String, ApiError> {
        let header = json!({"alg": "ES256", "kid": self.kid});
        let input = format!(
            "{}.{}",
            B64.encode(header.to_string()),
            B64.encode(claims.to_string())
        );
        let sig = self
            .key
            .sign(&self.rng, input.as_bytes())
            .map_err(|_| ApiError::internal("failed to sign token"))?;
        Ok(format!("{input}.{}", B64.encode(sig.as_ref())))
    }

    fn claims(
        &self,
        ns: &str,
        sa: &Value,
        pod: Option<&Value>,
        audiences: &[String],
        expiry: i64,
    ) -> Value {
        let now = now_secs();
        let mut k8s = json!({
            "namespace": ns,
            "serviceaccount": {"name": name_of(sa), "uid": uid_of(sa)},
        });
        if let Some(p) = pod {
            k8s["pod"] = json!({"name": name_of(p), "uid": uid_of(p)});
            k8s["node"] = json!({"name": self.node_name, "uid": new_uid()});
        }
        json!({
            "aud": audiences,
            "exp": now + expiry,
            "iat": now,
            "iss": API_AUDIENCE,
            "jti": new_uid(),
            "kubernetes.io": k8s,
            "nbf": now,
            "sub": format!("system:serviceaccount:{ns}:{}", name_of(sa)),
        })
    }

    /// A token bound to `pod` for its service account (projected volumes).
    pub fn issue_for_pod(
        &self,
        store: &Store,
        pod: &Value,
        audience: &str,
        expiry: i64,
    ) -> Result<String, ApiError> {
        let ns = str_at(pod, &["metadata", "namespace"]);
        let sa_name = str_at(pod, &["spec", "serviceAccountName"]);
        // Admission guarantees the ServiceAccount existed at pod creation; if it is gone since,
        // sign for its name without a UID (TokenReview then skips the ServiceAccount check).
        let sa = store
            .get("serviceaccounts", ns, sa_name)
            .unwrap_or_else(|| Arc::new(json!({"metadata": {"name": sa_name, "uid": ""}})));
        let aud = if audience.is_empty() {
            API_AUDIENCE.to_string()
        } else {
            audience.to_string()
        };
        self.sign(&self.claims(ns, &sa, Some(pod), &[aud], expiry.max(600)))
    }

    /// `POST .../serviceaccounts/<sa>/token`.
    pub fn token_request(
        &self,
        store: &Store,
        ns: &str,
        sa_name: &str,
        body: &[u8],
    ) -> Result<Value, ApiError> {
        let sa_def = resources::find("", "v1", "serviceaccounts").expect("served");
        let sa = store
            .get("serviceaccounts", ns, sa_name)
            .ok_or_else(|| ApiError::not_found(sa_def.target(), sa_name))?;
        let req: Value = if body.is_empty() {
            json!({})
        } else {
            serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("invalid TokenRequest: {e}")))?
        };
        let spec = req.get("spec").cloned().unwrap_or(json!({}));
        let expiry = spec
            .get("expirationSeconds")
            .and_then(Value::as_i64)
            .unwrap_or(3600);
        let tr_target = super::status::Target {
            group: "authentication.k8s.io",
            resource: "tokenrequests",
            kind: "TokenRequest",
        };
        if expiry < 600 {
            return Err(ApiError::invalid(
                tr_target,
                "",
                vec![Cause {
                    reason: "FieldValueInvalid",
                    field: "spec.expirationSeconds".into(),
                    message: format!(
                        "Invalid value: {expiry}: may not specify a duration less than 10 minutes"
                    ),
                }],
            ));
        }
        let audiences: Vec<String> = spec
            .get("audiences")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .filter(|a: &Vec<String>| !a.is_empty())
            .unwrap_or_else(|| vec![API_AUDIENCE.to_string()]);
        let pod = match spec.get("boundObjectRef") {
            Some(r) if !r.is_null() => {
                let kind = str_at(r, &["kind"]);
                if kind != "Pod" {
                    return Err(ApiError::bad_request(format!(
                        "cannot bind token for object of kind {kind:?} (kube-dev binds to Pods only)"
                    )));
                }
                let name = str_at(r, &["name"]);
                let pod = store
                    .get("pods", ns, name)
                    .ok_or_else(|| ApiError::not_found(resources::pods().target(), name))?;
                let want_uid = str_at(r, &["uid"]);
                if !want_uid.is_empty() && want_uid != uid_of(&pod) {
                    return Err(ApiError::conflict_with(
                        resources::pods().target(),
                        name,
                        &format!(
                            "the UID in the bound object reference ({want_uid}) does not match the UID in record. The object might have been deleted and then recreated"
                        ),
                    ));
                }
                Some(pod)
            }
            _ => None,
        };
        let claims = self.claims(ns, &sa, pod.as_deref(), &audiences, expiry);
        let exp = claims["exp"].as_i64().unwrap_or(0);
        let token = self.sign(&claims)?;
        let expiration = jiff::Timestamp::from_second(exp)
            .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
            .unwrap_or_default();
        let mut spec_out = spec.clone();
        spec_out["audiences"] = json!(audiences);
        spec_out["expirationSeconds"] = json!(expiry);
        Ok(json!({
            "kind": "TokenRequest",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"name": sa_name, "namespace": ns, "creationTimestamp": null},
            "spec": spec_out,
            "status": {"token": token, "expirationTimestamp": expiration},
        }))
    }

    /// Verifies signature, time and audience, then that the bound objects still exist.
    pub fn verify(
        &self,
        store: &Store,
        token: &str,
        audiences: &[String],
    ) -> Result<Verified, Invalid> {
        let invalid = |m: &str| Invalid(m.to_string());
        let parts: Vec<&str> = token.split('.').collect();
        let [h, c, s] = parts.as_slice() else {
            return Err(invalid("token is not a JWT"));
        };
        let sig = B64
            .decode(s)
            .map_err(|_| invalid("invalid signature encoding"))?;
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, self.key.public_key().as_ref())
            .verify(format!("{h}.{c}").as_bytes(), &sig)
            .map_err(|_| {
                invalid("invalid bearer token, square/go-jose: error in cryptographic primitive")
            })?;
        let claims: Value = B64
            .decode(c)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| invalid("invalid claims"))?;
        let now = now_secs();
        if claims["exp"].as_i64().unwrap_or(0) < now {
            return Err(invalid(
                "invalid bearer token, service account token has expired",
            ));
        }
        if claims["nbf"].as_i64().unwrap_or(0) > now + 60 {
            return Err(invalid(
                "invalid bearer token, service account token is not valid yet",
            ));
        }
        let token_aud: Vec<&str> = claims["aud"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let want: Vec<String> = if audiences.is_empty() {
            vec![API_AUDIENCE.to_string()]
        } else {
            audiences.to_vec()
        };
        if !want.iter().any(|a| token_aud.contains(&a.as_str())) {
            return Err(invalid("invalid bearer token, token audiences are invalid"));
        }
        let k = &claims["kubernetes.io"];
        let ns = str_at(k, &["namespace"]);
        if let Some(p) = k.get("pod") {
            let name = str_at(p, &["name"]);
            match store.get("pods", ns, name) {
                None => {
                    return Err(Invalid(format!(
                        "invalid bearer token, pods \"{name}\" not found"
                    )));
                }
                Some(pod) if uid_of(&pod) != str_at(p, &["uid"]) => {
                    return Err(Invalid(format!(
                        "invalid bearer token, pod UID ({}) does not match claim ({})",
                        uid_of(&pod),
                        str_at(p, &["uid"])
                    )));
                }
                Some(_) => {}
            }
        }
        let sa_uid = str_at(k, &["serviceaccount", "uid"]);
        if !sa_uid.is_empty() {
            let sa_name = str_at(k, &["serviceaccount", "name"]);
            match store.get("serviceaccounts", ns, sa_name) {
                Some(sa) if uid_of(&sa) == sa_uid => {}
                _ => {
                    return Err(Invalid(format!(
                        "invalid bearer token, serviceaccounts \"{sa_name}\" not found"
                    )));
                }
            }
        }
        Ok(Verified { claims })
    }

    /// The username of a valid token with the API audience, for request authentication.
    pub fn authenticate(&self, store: &Store, token: &str) -> Option<String> {
        self.verify(store, token, &[])
            .ok()
            .map(|v| str_at(&v.claims, &["sub"]).to_string())
    }

    /// `POST /apis/authentication.k8s.io/v1/tokenreviews`.
    pub fn review(&self, store: &Store, body: &[u8]) -> Result<axum::response::Response, ApiError> {
        use axum::response::IntoResponse as _;
        let req: Value = serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("invalid TokenReview: {e}")))?;
        let token = str_at(&req, &["spec", "token"]);
        if token.is_empty() {
            return Err(ApiError::invalid(
                super::status::Target {
                    group: "authentication.k8s.io",
                    resource: "tokenreviews",
                    kind: "TokenReview",
                },
                "",
                vec![Cause {
                    reason: "FieldValueRequired",
                    field: "spec.token".into(),
                    message: "Required value: token must not be empty".into(),
                }],
            ));
        }
        let audiences: Vec<String> = req
            .pointer("/spec/audiences")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let mut spec = req.get("spec").cloned().unwrap_or(json!({}));
        // The response echoes the spec, as the real server does (the caller already holds it).
        spec["token"] = json!(token);
        let status = match self.verify(store, token, &audiences) {
            Ok(v) => {
                let k = &v.claims["kubernetes.io"];
                let ns = str_at(k, &["namespace"]);
                let mut extra = json!({
                    "authentication.kubernetes.io/credential-id": [format!("JTI={}", str_at(&v.claims, &["jti"]))],
                });
                if let Some(p) = k.get("pod") {
                    extra["authentication.kubernetes.io/pod-name"] = json!([str_at(p, &["name"])]);
                    extra["authentication.kubernetes.io/pod-uid"] = json!([str_at(p, &["uid"])]);
                }
                if let Some(n) = k.get("node") {
                    extra["authentication.kubernetes.io/node-name"] = json!([str_at(n, &["name"])]);
                    extra["authentication.kubernetes.io/node-uid"] = json!([str_at(n, &["uid"])]);
                }
                let token_aud = v.claims["aud"].clone();
                let aud = if audiences.is_empty() {
                    token_aud
                } else {
                    json!(
                        audiences
                            .iter()
                            .filter(|a| token_aud.as_array().is_some_and(|t| t.contains(&json!(a))))
                            .collect::<Vec<_>>()
                    )
                };
                json!({
                    "authenticated": true,
                    "user": {
                        "username": str_at(&v.claims, &["sub"]),
                        "uid": str_at(k, &["serviceaccount", "uid"]),
                        "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{ns}"), "system:authenticated"],
                        "extra": extra,
                    },
                    "audiences": aud,
                })
            }
            Err(e) => json!({"user": {}, "error": e.0}),
        };
        let out = json!({
            "kind": "TokenReview",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"creationTimestamp": null},
            "spec": spec,
            "status": status,
        });
        Ok((
            http::StatusCode::CREATED,
            [(http::header::CONTENT_TYPE, "application/json")],
            serde_json::to_vec(&out).unwrap_or_default(),
        )
            .into_response())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (house rule)
mod tests {
    use super::*;

    /// Pod `d/p` with `uid` (service account `default`).
    fn create_pod(store: &Store, uid: &str) -> Arc<Value> {
        store
            .create(
                "pods",
                json!({"metadata": {"name": "p", "namespace": "d", "uid": uid},
                       "spec": {"serviceAccountName": "default"}}),
                false,
            )
            .unwrap()
    }

    #[test]
    fn bound_tokens_verify_until_their_pod_goes_away() {
        let store = Store::new(10);
        let issuer = TokenIssuer::new("n").unwrap();
        let pod = create_pod(&store, "u1");
        let t = issuer
            .issue_for_pod(&store, &pod, "vault-approle", 600)
            .unwrap();
        let v = issuer
            .verify(&store, &t, &["vault-approle".into()])
            .unwrap();
        assert_eq!(v.claims["kubernetes.io"]["pod"]["uid"], "u1");
        assert_eq!(v.claims["sub"], "system:serviceaccount:d:default");
        assert!(issuer.verify(&store, &t, &["other".into()]).is_err());
        let mut tampered = t.clone();
        tampered.push('A');
        assert!(
            issuer
                .verify(&store, &tampered, &["vault-approle".into()])
                .is_err()
        );
        store.delete("pods", "d", "p", None);
        let e = issuer
            .verify(&store, &t, &["vault-approle".into()])
            .unwrap_err();
        assert!(e.0.contains("not found"), "{e}");

        // A new pod of the same name does not revive the old pod's token.
        create_pod(&store, "u2");
        let e = issuer
            .verify(&store, &t, &["vault-approle".into()])
            .unwrap_err();
        assert!(e.0.contains("does not match"), "{e}");
    }

    #[test]
    fn expired_tokens_do_not_verify() {
        let store = Store::new(10);
        let issuer = TokenIssuer::new("n").unwrap();
        let pod = create_pod(&store, "u1");
        let sa = json!({"metadata": {"name": "default", "uid": ""}});
        let aud = vec!["vault-approle".to_string()];
        let expired = issuer
            .sign(&issuer.claims("d", &sa, Some(&pod), &aud, -1))
            .unwrap();
        let e = issuer.verify(&store, &expired, &aud).unwrap_err();
        assert!(e.0.contains("expired"), "{e}");
        let fresh = issuer
            .sign(&issuer.claims("d", &sa, Some(&pod), &aud, 600))
            .unwrap();
        assert!(issuer.verify(&store, &fresh, &aud).is_ok());
    }
}

//! The one Vault client layer of the project (wire formats: `../shared/vault-api.md`).
//!
//! vaultrs does what it models well — role-id reads, secret-id destroy, wrapping lookup and unwrap,
//! AppRole and Kubernetes login, token self-lookup and self-renewal. What vaultrs cannot express is done here with reqwest: minting
//! a secret_id with our own `X-Vault-Wrap-TTL`, `ttl` and `num_uses`, and reading
//! `wrap_info.wrapped_accessor` (vaultrs hard-codes a 10m wrap TTL and drops that field). Both paths
//! share one reqwest client, so the CA bundle, timeouts and source address are configured once.
//!
//! Every error text from Vault is scrubbed of the secrets the request carried before it becomes a
//! [`VaultError`], so even a server that echoes a secret_id in a message cannot leak it to our logs.

use std::net::IpAddr;
use std::time::Duration;

use secrecy::{ExposeSecret as _, SecretString};
use serde::{Deserialize, Serialize};
use vaultrs::api::EndpointMiddleware;
use vaultrs::client::{VaultClient, VaultClientSettingsBuilder};
use vaultrs::error::ClientError;

use crate::secret::{ClientToken, SecretId, WrappingToken};

/// What Vault says about a wrapping token that was used, expired, revoked or never existed.
pub const INVALID_WRAPPING_TOKEN: &str = "wrapping token is not valid or does not exist";

/// Where and how to reach Vault.
#[derive(Debug, Clone)]
pub struct VaultConfig {
    /// Base address, e.g. `https://vault.vault.svc:8200`.
    pub addr: String,
    /// PEM bundle to trust instead of the system roots.
    pub ca_pem: Option<String>,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Local address for outgoing connections (pods that share a host network in tests).
    pub source_address: Option<IpAddr>,
    /// Accept any certificate from Vault (no chain, no name check). Only the controller offers
    /// this, behind an explicit flag that logs a warning; the init container always verifies.
    pub tls_skip_verify: bool,
}

/// A failed Vault call. Never contains a token, secret_id or wrapping token.
#[derive(Debug, Clone, thiserror::Error)]
pub enum VaultError {
    /// No answer: connection refused, TLS failure, timeout.
    #[error("{op}: Vault unreachable: {detail}")]
    Unreachable {
        /// What we were doing.
        op: String,
        /// Transport error text.
        detail: String,
    },
    /// Vault answered with an error status.
    #[error("{op}: Vault answered {status}: {}", if errors.is_empty() { "(no message)".to_owned() } else { errors.join("; ") })]
    Api {
        /// What we were doing.
        op: String,
        /// HTTP status.
        status: u16,
        /// Vault's `errors` array.
        errors: Vec<String>,
    },
    /// Vault answered, but not with what the API promises.
    #[error("{op}: unexpected Vault response: {detail}")]
    Unexpected {
        /// What we were doing.
        op: String,
        /// What was wrong.
        detail: String,
    },
    /// The client could not be built (bad CA bundle, bad address).
    #[error("Vault client configuration: {0}")]
    Config(String),
}

impl VaultError {
    /// HTTP status if Vault answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            VaultError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// True when Vault said the wrapping token is used, expired or unknown.
    pub fn is_invalid_wrapping_token(&self) -> bool {
        matches!(self, VaultError::Api { errors, .. } if errors.iter().any(|e| e.contains(INVALID_WRAPPING_TOKEN)))
    }

    /// True when Vault no longer knows a token accessor (expired, revoked): 400 `invalid accessor`.
    pub fn is_unknown_token_accessor(&self) -> bool {
        matches!(self, VaultError::Api { status: 400, errors, .. } if errors.iter().any(|m| m.contains("invalid accessor")))
    }

    /// True when Vault no longer knows a secret_id accessor (used up, expired, destroyed): it
    /// answers 500 `failed to find accessor entry` (or 400 `invalid secret id accessor`).
    pub fn is_unknown_secret_id_accessor(&self) -> bool {
        matches!(self, VaultError::Api { errors, .. } if errors.iter().any(|m| {
            m.contains("failed to find accessor entry") || m.contains("invalid secret id accessor")
        }))
    }

    /// True for failures worth retrying (transport, 5xx, 429).
    pub fn is_transient(&self) -> bool {
        match self {
            VaultError::Unreachable { .. } => true,
            VaultError::Api { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }
}

/// Parameters of a secret_id.
#[derive(Debug, Clone)]
pub struct SecretIdRequest {
    /// Metadata map (Vault stores it with the secret_id and copies it onto the token).
    pub metadata: std::collections::BTreeMap<String, String>,
    /// Login must come from these CIDRs.
    pub cidr_list: Vec<String>,
    /// The token will be usable only from these CIDRs.
    pub token_bound_cidrs: Vec<String>,
    /// Uses of the secret_id.
    pub num_uses: u32,
    /// Lifetime of the secret_id.
    pub ttl: Duration,
    /// Lifetime of the wrapping token.
    pub wrap_ttl: Duration,
}

/// A freshly minted, wrapped secret_id.
#[derive(Debug, Clone)]
pub struct WrappedSecretId {
    /// The wrapping token.
    pub token: WrappingToken,
    /// The wrapping token's own accessor.
    pub accessor: String,
    /// Accessor of the wrapped secret_id: what destroys it if it is never used.
    pub secret_id_accessor: String,
    /// Wrap TTL in seconds.
    pub ttl: u64,
    /// `creation_path` as Vault recorded it.
    pub creation_path: String,
}

/// What `sys/wrapping/lookup` says about a wrapping token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrapLookup {
    /// Path whose response was wrapped.
    pub creation_path: String,
    /// Wrap TTL in seconds.
    pub creation_ttl: u64,
}

/// Result of an AppRole login.
#[derive(Debug, Clone)]
pub struct Login {
    /// The token.
    pub client_token: ClientToken,
    /// Its accessor.
    pub accessor: String,
    /// Its policies.
    pub policies: Vec<String>,
    /// TTL in seconds.
    pub lease_duration: u64,
    /// Renewable or not.
    pub renewable: bool,
}

/// What `auth/token/lookup-self` says about a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenInfo {
    /// The token's accessor.
    pub accessor: String,
    /// Remaining TTL in seconds (0: the token never expires).
    pub ttl: u64,
    /// Whether `renew-self` can extend it.
    pub renewable: bool,
}

/// Outcome of destroying a secret_id or revoking a token by accessor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destroyed {
    /// It existed and is gone now.
    Destroyed,
    /// It was already gone (used up, expired, destroyed before).
    AlreadyGone,
}

/// The path whose wrapped response carries a secret_id for `role`: the controller mints there and
/// the init container insists on it as `creation_path`.
pub fn secret_id_path(mount: &str, role: &str) -> String {
    format!("auth/{}/role/{role}/secret-id", mount.trim_matches('/'))
}

/// A Vault client. Cheap to clone.
#[derive(Clone)]
pub struct Vault {
    addr: String,
    http: reqwest::Client,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault").field("addr", &self.addr).finish()
    }
}

#[derive(Deserialize)]
struct Envelope {
    wrap_info: Option<WrapInfo>,
}

#[derive(Deserialize)]
struct WrapInfo {
    token: String,
    accessor: String,
    ttl: u64,
    creation_path: String,
    #[serde(default)]
    wrapped_accessor: String,
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    errors: Vec<String>,
}

#[derive(Serialize)]
struct SecretIdBody<'a> {
    metadata: String,
    cidr_list: &'a [String],
    token_bound_cidrs: &'a [String],
    num_uses: u32,
    ttl: u64,
}

#[derive(Deserialize)]
struct UnwrappedSecretId {
    secret_id: SecretId,
}

impl Vault {
    /// Builds a client.
    pub fn new(config: &VaultConfig) -> Result<Self, VaultError> {
        let addr = config.addr.trim_end_matches('/').to_owned();
        if !(addr.starts_with("http://") || addr.starts_with("https://")) {
            return Err(VaultError::Config(format!(
                "address {addr:?} must start with http:// or https://"
            )));
        }
        let mut builder = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout.min(Duration::from_secs(5)))
            .local_address(config.source_address)
            .tls_backend_rustls();
        if let Some(pem) = &config.ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem.as_bytes())
                .map_err(|e| VaultError::Config(format!("Vault CA bundle: {e}")))?;
            if certs.is_empty() {
                return Err(VaultError::Config(
                    "Vault CA bundle holds no certificate".into(),
                ));
            }
            builder = builder.tls_certs_only(certs);
        } else if addr.starts_with("http://") {
            // Plain HTTP needs no roots; loading the platform's would only cost start-up time.
            builder = builder.tls_certs_only(Vec::new());
        }
        if config.tls_skip_verify {
            builder = builder.tls_danger_accept_invalid_certs(true);
        }
        let http = builder
            .build()
            .map_err(|e| VaultError::Config(format!("HTTP client: {e}")))?;
        Ok(Self { addr, http })
    }

    /// The address this client talks to.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// A vaultrs client on our reqwest client, authenticated with `token` (empty = none).
    fn vaultrs(&self, token: &str) -> Result<VaultClient, VaultError> {
        // Every setting is explicit so that VAULT_* environment variables cannot change behaviour.
        let settings = VaultClientSettingsBuilder::default()
            .address(&self.addr)
            .token(token)
            .ca_certs(Vec::new())
            .identity(None)
            .verify(true)
            .namespace(None)
            .build()
            .map_err(|e| VaultError::Config(e.to_string()))?;
        Ok(VaultClient {
            http: rustify::clients::reqwest::Client::new(&self.addr, self.http.clone()),
            middle: EndpointMiddleware {
                token: token.to_owned(),
                version: "v1".into(),
                wrap: None,
                namespace: None,
            },
            settings,
        })
    }

    /// `GET auth/<mount>/role/<role>/role-id`.
    pub async fn read_role_id(
        &self,
        token: &ClientToken,
        mount: &str,
        role: &str,
    ) -> Result<String, VaultError> {
        let op = format!("read role-id of role {role:?}");
        let client = self.vaultrs(token.expose())?;
        vaultrs::auth::approle::role::read_id(&client, mount.trim_matches('/'), role)
            .await
            .map(|r| r.role_id)
            .map_err(|e| from_vaultrs(&op, e, &[token.expose()]))
    }

    /// `POST auth/<mount>/role/<role>/secret-id` with `X-Vault-Wrap-TTL`: a response-wrapped
    /// secret_id with our metadata, CIDR bindings, use count and TTL.
    pub async fn generate_wrapped_secret_id(
        &self,
        token: &ClientToken,
        mount: &str,
        role: &str,
        req: &SecretIdRequest,
    ) -> Result<WrappedSecretId, VaultError> {
        let op = format!("generate secret-id for role {role:?}");
        let path = secret_id_path(mount, role);
        let body = SecretIdBody {
            metadata: serde_json::to_string(&req.metadata).map_err(|e| VaultError::Unexpected {
                op: op.clone(),
                detail: e.to_string(),
            })?,
            cidr_list: &req.cidr_list,
            token_bound_cidrs: &req.token_bound_cidrs,
            num_uses: req.num_uses,
            ttl: req.ttl.as_secs(),
        };
        let resp = self
            .http
            .post(format!("{}/v1/{path}", self.addr))
            .header("X-Vault-Token", token.expose())
            .header("X-Vault-Request", "true")
            .header(
                "X-Vault-Wrap-TTL",
                req.wrap_ttl.as_secs().max(1).to_string(),
            )
            .json(&body)
            .send()
            .await
            .map_err(|e| unreachable(&op, &e))?;
        let env: Envelope = read_json(&op, resp, &[token.expose()]).await?;
        let wrap = env.wrap_info.ok_or_else(|| VaultError::Unexpected {
            op: op.clone(),
            detail: "response was not wrapped".into(),
        })?;
        if wrap.wrapped_accessor.is_empty() {
            return Err(VaultError::Unexpected {
                op,
                detail: "wrap_info has no wrapped_accessor (Vault older than 1.9?)".into(),
            });
        }
        Ok(WrappedSecretId {
            token: WrappingToken::new(wrap.token),
            accessor: wrap.accessor,
            secret_id_accessor: wrap.wrapped_accessor,
            ttl: wrap.ttl,
            creation_path: wrap.creation_path,
        })
    }

    /// `POST auth/<mount>/role/<role>/secret-id-accessor/destroy`. An accessor Vault no longer knows
    /// (used up, expired, destroyed) is [`Destroyed::AlreadyGone`], not an error: Vault answers 500
    /// `failed to find accessor entry` there, which every cleanup path must tolerate.
    pub async fn destroy_secret_id_by_accessor(
        &self,
        token: &ClientToken,
        mount: &str,
        role: &str,
        accessor: &str,
    ) -> Result<Destroyed, VaultError> {
        let op = format!("destroy secret-id of role {role:?} by accessor");
        let client = self.vaultrs(token.expose())?;
        match vaultrs::auth::approle::role::secret::delete_accessor(
            &client,
            mount.trim_matches('/'),
            role,
            accessor,
        )
        .await
        {
            Ok(()) => Ok(Destroyed::Destroyed),
            Err(e) => {
                let err = from_vaultrs(&op, e, &[token.expose()]);
                if err.is_unknown_secret_id_accessor() {
                    Ok(Destroyed::AlreadyGone)
                } else {
                    Err(err)
                }
            }
        }
    }

    /// `LIST auth/<mount>/role/<role>/secret-id`: accessors of the role's live secret_ids.
    pub async fn list_secret_id_accessors(
        &self,
        token: &ClientToken,
        mount: &str,
        role: &str,
    ) -> Result<Vec<String>, VaultError> {
        let op = format!("list secret-id accessors of role {role:?}");
        let client = self.vaultrs(token.expose())?;
        match vaultrs::auth::approle::role::secret::list(&client, mount.trim_matches('/'), role)
            .await
        {
            Ok(list) => Ok(list.keys),
            Err(e) => match from_vaultrs(&op, e, &[token.expose()]) {
                // Vault answers a list with nothing in it with 404.
                VaultError::Api { status: 404, .. } => Ok(Vec::new()),
                other => Err(other),
            },
        }
    }

    /// `POST auth/<mount>/role/<role>/secret-id-accessor/lookup`: the metadata of a live
    /// secret_id, `None` when Vault no longer knows the accessor.
    pub async fn secret_id_metadata(
        &self,
        token: &ClientToken,
        mount: &str,
        role: &str,
        accessor: &str,
    ) -> Result<Option<std::collections::HashMap<String, String>>, VaultError> {
        let op = format!("look up a secret-id of role {role:?} by accessor");
        let client = self.vaultrs(token.expose())?;
        match vaultrs::auth::approle::role::secret::read_accessor(
            &client,
            mount.trim_matches('/'),
            role,
            accessor,
        )
        .await
        {
            Ok(r) => Ok(Some(r.metadata.unwrap_or_default())),
            Err(e) => match from_vaultrs(&op, e, &[token.expose()]) {
                VaultError::Api { status: 404, .. } => Ok(None),
                err if err.is_unknown_secret_id_accessor() => Ok(None),
                err => Err(err),
            },
        }
    }

    /// `POST auth/token/lookup-accessor`: the metadata of the token with this accessor (an AppRole
    /// login copies its secret_id's metadata, so a delivered token names its pod), `None` when
    /// Vault no longer knows the accessor (expired, revoked).
    pub async fn token_metadata_by_accessor(
        &self,
        token: &ClientToken,
        accessor: &str,
    ) -> Result<Option<std::collections::HashMap<String, String>>, VaultError> {
        let op = "look up a delivered token by accessor";
        let client = self.vaultrs(token.expose())?;
        match vaultrs::token::lookup_accessor(&client, accessor).await {
            Ok(r) => Ok(Some(r.meta.unwrap_or_default())),
            Err(e) => match from_vaultrs(op, e, &[token.expose()]) {
                err if err.is_unknown_token_accessor() => Ok(None),
                err => Err(err),
            },
        }
    }

    /// `POST auth/token/revoke-accessor`: revokes a delivered token without knowing it. An accessor
    /// Vault no longer knows (expired, revoked) is [`Destroyed::AlreadyGone`].
    pub async fn revoke_token_by_accessor(
        &self,
        token: &ClientToken,
        accessor: &str,
    ) -> Result<Destroyed, VaultError> {
        let op = "revoke a delivered token by accessor";
        let client = self.vaultrs(token.expose())?;
        match vaultrs::token::revoke_accessor(&client, accessor).await {
            Ok(()) => Ok(Destroyed::Destroyed),
            Err(e) => match from_vaultrs(op, e, &[token.expose()]) {
                err if err.is_unknown_token_accessor() => Ok(Destroyed::AlreadyGone),
                err => Err(err),
            },
        }
    }

    /// `POST sys/wrapping/lookup`: where the wrapping token came from, without consuming it.
    pub async fn wrapping_lookup(
        &self,
        wrapping: &WrappingToken,
    ) -> Result<WrapLookup, VaultError> {
        let op = "look up the wrapping token";
        let client = self.vaultrs("")?;
        vaultrs::sys::wrapping::lookup(&client, wrapping.expose())
            .await
            .map(|r| WrapLookup {
                creation_path: r.creation_path,
                creation_ttl: r.creation_ttl,
            })
            .map_err(|e| from_vaultrs(op, e, &[wrapping.expose()]))
    }

    /// `POST sys/wrapping/unwrap` with the wrapping token as `X-Vault-Token` (first-party unwrap):
    /// consumes the token and returns the secret_id it wrapped.
    pub async fn unwrap_secret_id(&self, wrapping: &WrappingToken) -> Result<SecretId, VaultError> {
        let op = "unwrap the secret-id";
        let client = self.vaultrs(wrapping.expose())?;
        vaultrs::sys::wrapping::unwrap::<UnwrappedSecretId>(&client, None)
            .await
            .map(|d| d.secret_id)
            .map_err(|e| from_vaultrs(op, e, &[wrapping.expose()]))
    }

    /// `POST auth/<mount>/login` with role_id and secret_id.
    pub async fn approle_login(
        &self,
        mount: &str,
        role_id: &str,
        secret_id: &SecretId,
    ) -> Result<Login, VaultError> {
        let op = "AppRole login";
        let client = self.vaultrs("")?;
        vaultrs::auth::approle::login(
            &client,
            mount.trim_matches('/'),
            role_id,
            secret_id.expose(),
        )
        .await
        .map(login_from)
        .map_err(|e| from_vaultrs(op, e, &[secret_id.expose()]))
    }

    /// `GET auth/token/lookup-self`: the token's accessor, remaining TTL and renewability.
    /// Proves a token works.
    pub async fn lookup_self(&self, token: &ClientToken) -> Result<TokenInfo, VaultError> {
        let op = "look up own token";
        let client = self.vaultrs(token.expose())?;
        vaultrs::token::lookup_self(&client)
            .await
            .map(|r| TokenInfo {
                accessor: r.accessor,
                ttl: r.ttl,
                renewable: r.renewable.unwrap_or(false),
            })
            .map_err(|e| from_vaultrs(op, e, &[token.expose()]))
    }

    /// `POST auth/token/renew-self` without an increment: Vault extends the token by its role's
    /// TTL, capped at its max TTL (a capped renewal returns a shorter `lease_duration`).
    pub async fn renew_self(&self, token: &ClientToken) -> Result<Login, VaultError> {
        let op = "renew own token";
        let client = self.vaultrs(token.expose())?;
        vaultrs::token::renew_self(&client, None)
            .await
            .map(login_from)
            .map_err(|e| from_vaultrs(op, e, &[token.expose()]))
    }

    /// `POST auth/<mount>/login` with a Kubernetes service-account JWT (vault-api.md §8).
    pub async fn kubernetes_login(
        &self,
        mount: &str,
        role: &str,
        jwt: &SecretString,
    ) -> Result<Login, VaultError> {
        let op = format!("Kubernetes login as role {role:?}");
        let client = self.vaultrs("")?;
        vaultrs::auth::kubernetes::login(
            &client,
            mount.trim_matches('/'),
            role,
            jwt.expose_secret(),
        )
        .await
        .map(login_from)
        .map_err(|e| from_vaultrs(&op, e, &[jwt.expose_secret()]))
    }
}

/// Our view of a vaultrs login or renewal answer.
fn login_from(a: vaultrs::api::AuthInfo) -> Login {
    Login {
        client_token: ClientToken::new(a.client_token),
        accessor: a.accessor,
        policies: a.policies,
        lease_duration: a.lease_duration,
        renewable: a.renewable,
    }
}

async fn read_json<T: for<'de> Deserialize<'de>>(
    op: &str,
    resp: reqwest::Response,
    secrets: &[&str],
) -> Result<T, VaultError> {
    let status = resp.status();
    let bytes = resp.bytes().await.map_err(|e| unreachable(op, &e))?;
    if !status.is_success() {
        let errors = serde_json::from_slice::<ErrorBody>(&bytes)
            .map(|b| b.errors)
            .unwrap_or_default();
        return Err(VaultError::Api {
            op: op.to_owned(),
            status: status.as_u16(),
            errors: errors.iter().map(|e| scrub(e, secrets)).collect(),
        });
    }
    serde_json::from_slice(&bytes).map_err(|e| VaultError::Unexpected {
        op: op.to_owned(),
        detail: format!("invalid JSON: {e}"),
    })
}

fn unreachable(op: &str, e: &reqwest::Error) -> VaultError {
    let mut detail = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        detail.push_str(": ");
        detail.push_str(&s.to_string());
        source = s.source();
    }
    VaultError::Unreachable {
        op: op.to_owned(),
        detail,
    }
}

fn from_vaultrs(op: &str, e: ClientError, secrets: &[&str]) -> VaultError {
    match e {
        ClientError::APIError { code, errors } => VaultError::Api {
            op: op.to_owned(),
            status: code,
            errors: errors.iter().map(|m| scrub(m, secrets)).collect(),
        },
        ClientError::RestClientError { source } => match source {
            rustify::errors::ClientError::ServerResponseError { code, content } => {
                VaultError::Api {
                    op: op.to_owned(),
                    status: code,
                    errors: content
                        .and_then(|c| serde_json::from_str::<ErrorBody>(&c).ok())
                        .map(|b| b.errors.iter().map(|m| scrub(m, secrets)).collect())
                        .unwrap_or_default(),
                }
            }
            rustify::errors::ClientError::RequestError { source, .. }
            | rustify::errors::ClientError::ResponseError { source } => VaultError::Unreachable {
                op: op.to_owned(),
                detail: scrub(&format!("{source:#}"), secrets),
            },
            other => VaultError::Unexpected {
                op: op.to_owned(),
                detail: scrub(&other.to_string(), secrets),
            },
        },
        other => VaultError::Unexpected {
            op: op.to_owned(),
            detail: scrub(&other.to_string(), secrets),
        },
    }
}

/// Replaces every occurrence of a secret in a message.
fn scrub(message: &str, secrets: &[&str]) -> String {
    secrets
        .iter()
        .filter(|s| !s.is_empty())
        .fold(message.to_owned(), |m, s| m.replace(s, "[REDACTED]"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_id_path_is_what_vault_records_as_creation_path() {
        assert_eq!(
            secret_id_path("approle", "web"),
            "auth/approle/role/web/secret-id"
        );
        assert_eq!(
            secret_id_path("/team/approle/", "web"),
            "auth/team/approle/role/web/secret-id"
        );
    }

    #[test]
    fn scrub_removes_secrets_from_messages() {
        assert_eq!(
            scrub("invalid secret_id \"abc-123\"", &["abc-123", ""]),
            "invalid secret_id \"[REDACTED]\""
        );
    }

    #[test]
    fn invalid_wrapping_token_is_recognised() {
        let e = VaultError::Api {
            op: "x".into(),
            status: 400,
            errors: vec![INVALID_WRAPPING_TOKEN.into()],
        };
        assert!(e.is_invalid_wrapping_token());
        assert!(!e.is_transient());
    }

    #[test]
    fn addresses_without_scheme_are_refused() {
        let cfg = VaultConfig {
            addr: "vault:8200".into(),
            ca_pem: None,
            timeout: Duration::from_secs(1),
            source_address: None,
            tls_skip_verify: false,
        };
        crate::tls::install_crypto_provider();
        assert!(matches!(Vault::new(&cfg), Err(VaultError::Config(_))));
    }
}

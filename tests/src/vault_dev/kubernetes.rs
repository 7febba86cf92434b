//! The Kubernetes auth backend (`auth/<mount>/...` of type `kubernetes`), modelled on
//! vault-plugin-auth-kubernetes (vault-api.md §8).
//!
//! ```text
//! config        write (replaces the whole config, 204), read
//! role          LIST
//! role/:name    create/update (204, or 200 with warnings), read, delete
//! login         unauthenticated {role, jwt} → service token for the role
//! ```
//!
//! Login is the only vault-dev endpoint that makes a network call (a TokenReview POST to
//! `kubernetes_host`, trusting `kubernetes_ca_cert`, with `token_reviewer_jwt` or else the login
//! JWT itself as bearer). The state lock is never held across an `.await`, so login runs in
//! three steps:
//!
//! ```text
//! 1. plan_login   (locked)   role/jwt present, role exists, token_bound_cidrs, config loaded,
//!                            JWT claims parsed (unverified), issuer, audience, bound names and
//!                            namespaces  ─▶ ReviewPlan
//! 2. review       (unlocked) POST /apis/authentication.k8s.io/v1/tokenreviews ─▶ Reviewed
//! 3. login        (locked)   steps of 1 again (the role may have changed), the reviewed
//!                            service account must equal the claims ─▶ token
//! ```
//!
//! [`super::core::Core::handle_async`] runs steps 1 and 2 and hands the outcome to step 3 in
//! [`Req::kube_review`]. Every rejection after the role lookup is `403 permission denied`, as
//! §8 specifies; the reason is logged at debug level (never a JWT).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};

use super::approle::{unknown_params_warning, valid_role_name};
use super::core::{Fail, HResult, Op, Outcome, Req, Resp};
use super::state::{SYS_MAX_TTL, State, TokenParams};
use super::util::{self, Cidr};

/// How long a TokenReview call may take.
const REVIEW_TIMEOUT: Duration = Duration::from_secs(10);

/// Signing algorithms the plugin accepts in service-account JWTs.
const ALLOWED_ALGS: &[&str] = &[
    "RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512",
];

/// `auth/<mount>/config`.
#[derive(Clone)]
pub struct KubeConfig {
    host: String,
    ca_cert: String,
    pem_keys: Vec<String>,
    token_reviewer_jwt: String,
    issuer: String,
    disable_iss_validation: bool,
    disable_local_ca_jwt: bool,
}

impl std::fmt::Debug for KubeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeConfig")
            .field("host", &self.host)
            .field("issuer", &self.issuer)
            .field(
                "token_reviewer_jwt_set",
                &!self.token_reviewer_jwt.is_empty(),
            )
            .finish_non_exhaustive()
    }
}

/// One role.
#[derive(Debug, Clone)]
pub struct KubeRole {
    bound_names: Vec<String>,
    bound_namespaces: Vec<String>,
    audience: String,
    token_ttl: i64,
    token_max_ttl: i64,
    token_policies: Vec<String>,
    token_bound_cidrs: Vec<String>,
    token_num_uses: i64,
    token_period: i64,
    token_explicit_max_ttl: i64,
    token_no_default_policy: bool,
    token_type: String,
}

impl KubeRole {
    fn new() -> Self {
        KubeRole {
            bound_names: Vec::new(),
            bound_namespaces: Vec::new(),
            audience: String::new(),
            token_ttl: 0,
            token_max_ttl: 0,
            token_policies: Vec::new(),
            token_bound_cidrs: Vec::new(),
            token_num_uses: 0,
            token_period: 0,
            token_explicit_max_ttl: 0,
            token_no_default_policy: false,
            token_type: "default".into(),
        }
    }

    fn read_data(&self) -> Value {
        let mut d = json!({
            "alias_metadata": {},
            "alias_name_source": "serviceaccount_uid",
            "bound_service_account_names": self.bound_names,
            "bound_service_account_namespace_selector": "",
            "bound_service_account_namespaces": self.bound_namespaces,
            "token_bound_cidrs": self.token_bound_cidrs,
            "token_explicit_max_ttl": self.token_explicit_max_ttl,
            "token_max_ttl": self.token_max_ttl,
            "token_no_default_policy": self.token_no_default_policy,
            "token_num_uses": self.token_num_uses,
            "token_period": self.token_period,
            "token_policies": self.token_policies,
            "token_ttl": self.token_ttl,
            "token_type": self.token_type,
        });
        if !self.audience.is_empty() {
            d["audience"] = json!(self.audience);
        }
        d
    }
}

/// A Kubernetes auth mount.
#[derive(Debug, Default)]
pub struct KubernetesBackend {
    config: Option<KubeConfig>,
    roles: HashMap<String, KubeRole>,
}

impl KubernetesBackend {
    /// Existence check used to pick `create` vs `update` capability.
    pub fn exists(&self, rest: &str) -> Option<bool> {
        let name = rest.strip_prefix("role/")?;
        if name.contains('/') {
            return None;
        }
        Some(self.roles.contains_key(&name.to_lowercase()))
    }

    /// `(token_ttl, token_max_ttl)` of a role, if it exists (for renewals).
    pub fn role_ttls(&self, role: &str) -> Option<(i64, i64)> {
        self.roles.get(role).map(|r| (r.token_ttl, r.token_max_ttl))
    }
}

/// Everything the TokenReview call needs. Holds credentials: never logged.
#[derive(Clone)]
pub struct ReviewPlan {
    url: String,
    ca_pem: String,
    bearer: String,
    jwt: String,
    audiences: Vec<String>,
}

impl std::fmt::Debug for ReviewPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReviewPlan")
            .field("url", &self.url)
            .field("audiences", &self.audiences)
            .finish_non_exhaustive()
    }
}

/// The service account a successful TokenReview reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reviewed {
    /// Service account name.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// Its UID.
    pub uid: String,
}

/// A TokenReview result, or why the token was not accepted (no secrets in the text).
pub type ReviewOutcome = Result<Reviewed, String>;

/// The service-account claims of a JWT (read without verifying the signature, as the plugin
/// does when no `pem_keys` are configured).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct SaClaims {
    name: String,
    namespace: String,
    uid: String,
    secret_name: String,
    aud: Vec<String>,
    iss: String,
}

fn parse_claims(jwt: &str) -> Result<SaClaims, String> {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let parts: Vec<&str> = jwt.trim().split('.').collect();
    let [h, c, _s] = parts.as_slice() else {
        return Err("compact JWS format must have three parts".into());
    };
    let decode = |seg: &str| -> Result<Value, String> {
        let bytes = b64
            .decode(seg.trim_end_matches('='))
            .map_err(|_| "illegal base64 data in JWT".to_string())?;
        serde_json::from_slice(&bytes).map_err(|_| "invalid JSON in JWT".to_string())
    };
    let header = decode(h)?;
    let alg = header.get("alg").and_then(Value::as_str).unwrap_or("");
    if !ALLOWED_ALGS.contains(&alg) {
        return Err(format!("unexpected signature algorithm {alg:?}"));
    }
    let claims = decode(c)?;
    let s = |v: Option<&Value>| v.and_then(Value::as_str).unwrap_or("").to_string();
    let aud = match claims.get("aud") {
        Some(Value::String(a)) => vec![a.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    };
    let mut out = SaClaims {
        aud,
        iss: s(claims.get("iss")),
        ..Default::default()
    };
    if let Some(k) = claims.get("kubernetes.io").filter(|k| k.is_object()) {
        // Projected / bound tokens.
        out.namespace = s(k.get("namespace"));
        out.name = s(k.pointer("/serviceaccount/name"));
        out.uid = s(k.pointer("/serviceaccount/uid"));
    } else {
        // Legacy secret-based tokens.
        out.namespace = s(claims.get("kubernetes.io/serviceaccount/namespace"));
        out.name = s(claims.get("kubernetes.io/serviceaccount/service-account.name"));
        out.uid = s(claims.get("kubernetes.io/serviceaccount/service-account.uid"));
        out.secret_name = s(claims.get("kubernetes.io/serviceaccount/secret.name"));
    }
    Ok(out)
}

/// `ryanuber/go-glob`: `*` matches any run of characters, everything else literally.
fn glob(pattern: &str, s: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == s;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !s.starts_with(first) {
        return false;
    }
    let mut rest = &s[first.len()..];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

fn any_glob(patterns: &[String], s: &str) -> bool {
    patterns.iter().any(|p| glob(p, s))
}

fn denied() -> Fail {
    Fail::new(403, "permission denied")
}

/// Log why a login was refused (the reason never contains a credential) and refuse it.
fn refuse(reason: &str) -> Fail {
    tracing::debug!(reason, "kubernetes login unauthorized");
    denied()
}

/// Entry point for `auth/<mount>/<rest>` of a kubernetes mount.
pub fn handle(st: &mut State, req: &Req, mount: &str, rest: &str) -> HResult {
    match rest {
        "login" => {
            return match req.op {
                Op::Update => login(st, req, mount),
                _ => Err(Fail::unsupported_op()),
            };
        }
        "config" => {
            let be = backend_mut(st, mount)?;
            return match req.op {
                Op::Update => config_write(be, req),
                Op::Read => match &be.config {
                    Some(c) => Ok(Outcome::Resp(Resp::data(config_read(c)))),
                    None => Err(Fail::empty(404)),
                },
                _ => Err(Fail::unsupported_op()),
            };
        }
        "role" => {
            let be = backend_mut(st, mount)?;
            return match req.op {
                Op::List => {
                    let mut keys: Vec<&String> = be.roles.keys().collect();
                    keys.sort();
                    Ok(Outcome::Resp(Resp::data(json!({ "keys": keys }))))
                }
                _ => Err(Fail::unsupported_op()),
            };
        }
        _ => {}
    }
    let Some(name) = rest.strip_prefix("role/") else {
        return Err(Fail::unsupported_path());
    };
    if !valid_role_name(name) {
        return Err(Fail::unsupported_path());
    }
    let name = name.to_lowercase();
    let be = backend_mut(st, mount)?;
    match req.op {
        Op::Update => role_write(be, req, &name),
        Op::Read => match be.roles.get(&name) {
            Some(r) => Ok(Outcome::Resp(Resp::data(r.read_data()))),
            None => Err(Fail::empty(404)),
        },
        Op::Delete => {
            be.roles.remove(&name);
            Ok(Outcome::NoContent)
        }
        _ => Err(Fail::unsupported_op()),
    }
}

fn backend_mut<'a>(st: &'a mut State, mount: &str) -> Result<&'a mut KubernetesBackend, Fail> {
    st.auth_mounts
        .get_mut(mount)
        .map(|m| &mut m.kubernetes)
        .ok_or_else(Fail::unsupported_path)
}

fn opt_string(req: &Req, field: &str) -> Result<String, Fail> {
    match req.get(field) {
        Some(v) => Ok(util::field_string(field, v)?),
        None => Ok(String::new()),
    }
}

fn config_write(be: &mut KubernetesBackend, req: &Req) -> HResult {
    let host = opt_string(req, "kubernetes_host")?;
    if host.is_empty() {
        return Err(Fail::bad("no host provided"));
    }
    let token_reviewer_jwt = opt_string(req, "token_reviewer_jwt")?;
    if !token_reviewer_jwt.is_empty() && token_reviewer_jwt.split('.').count() != 3 {
        return Err(Fail::multi(
            500,
            "token is malformed: token contains an invalid number of segments",
        ));
    }
    let pem_keys = match req.get("pem_keys") {
        Some(v) => util::field_comma_slice("pem_keys", v)?,
        None => Vec::new(),
    };
    let flag = |k: &str, default: bool| -> Result<bool, Fail> {
        match req.get(k) {
            Some(v) => Ok(util::field_bool(k, v)?),
            None => Ok(default),
        }
    };
    // The whole config is replaced; omitted fields get their defaults, as in the plugin.
    be.config = Some(KubeConfig {
        host,
        ca_cert: opt_string(req, "kubernetes_ca_cert")?,
        pem_keys,
        token_reviewer_jwt,
        issuer: opt_string(req, "issuer")?,
        disable_iss_validation: flag("disable_iss_validation", true)?,
        disable_local_ca_jwt: flag("disable_local_ca_jwt", false)?,
    });
    Ok(Outcome::NoContent)
}

fn config_read(c: &KubeConfig) -> Value {
    json!({
        "disable_iss_validation": c.disable_iss_validation,
        "disable_local_ca_jwt": c.disable_local_ca_jwt,
        "issuer": c.issuer,
        "kubernetes_ca_cert": c.ca_cert,
        "kubernetes_host": c.host,
        "pem_keys": c.pem_keys,
        "token_reviewer_jwt_set": !c.token_reviewer_jwt.is_empty(),
        "use_annotations_as_alias_metadata": false,
    })
}

const ROLE_FIELDS: &[&str] = &[
    "name",
    "bound_service_account_names",
    "bound_service_account_namespaces",
    "bound_service_account_namespace_selector",
    "audience",
    "alias_name_source",
    "policies",
    "num_uses",
    "ttl",
    "max_ttl",
    "period",
    "bound_cidrs",
    "token_ttl",
    "token_max_ttl",
    "token_policies",
    "token_bound_cidrs",
    "token_num_uses",
    "token_period",
    "token_explicit_max_ttl",
    "token_no_default_policy",
    "token_type",
];

/// A field or its deprecated alias (`token_ttl` / `ttl`).
fn either<'a>(req: &'a Req, new: &'a str, old: &'a str) -> Option<(&'a str, &'a Value)> {
    req.get(new)
        .map(|v| (new, v))
        .or_else(|| req.get(old).map(|v| (old, v)))
}

fn role_write(be: &mut KubernetesBackend, req: &Req, name: &str) -> HResult {
    let creating = !be.roles.contains_key(name);
    let mut role = be.roles.get(name).cloned().unwrap_or_else(KubeRole::new);
    let mut warnings = Vec::new();

    // tokenutil.ParseTokenFields (errors are 400 with the message).
    if let Some((f, v)) = either(req, "token_ttl", "ttl") {
        role.token_ttl = util::field_duration(f, v)?;
    }
    if let Some((f, v)) = either(req, "token_max_ttl", "max_ttl") {
        role.token_max_ttl = util::field_duration(f, v)?;
    }
    if let Some((f, v)) = either(req, "token_policies", "policies") {
        role.token_policies = util::sanitize_policies(&util::field_comma_slice(f, v)?, false);
    }
    if let Some((f, v)) = either(req, "token_bound_cidrs", "bound_cidrs") {
        let list = util::field_comma_slice(f, v)?;
        if list.iter().any(|c| Cidr::parse(c, true).is_none()) {
            return Err(Fail::bad(
                "error parsing token_bound_cidrs: invalid address",
            ));
        }
        role.token_bound_cidrs = list;
    }
    if let Some((f, v)) = either(req, "token_num_uses", "num_uses") {
        role.token_num_uses = util::field_int(f, v)?;
    }
    if let Some((f, v)) = either(req, "token_period", "period") {
        role.token_period = util::field_duration(f, v)?;
    }
    if let Some(v) = req.get("token_explicit_max_ttl") {
        role.token_explicit_max_ttl = util::field_duration("token_explicit_max_ttl", v)?;
    }
    if let Some(v) = req.get("token_no_default_policy") {
        role.token_no_default_policy = util::field_bool("token_no_default_policy", v)?;
    }
    if let Some(v) = req.get("token_type") {
        role.token_type = util::field_token_type(v, &mut warnings)?;
    }
    for (what, v) in [
        ("token_ttl", role.token_ttl),
        ("token_max_ttl", role.token_max_ttl),
        ("token_num_uses", role.token_num_uses),
    ] {
        if v < 0 {
            return Err(Fail::bad(format!("'{what}' cannot be negative")));
        }
    }
    util::check_batch_token(&role.token_type, role.token_num_uses, role.token_period)?;
    // The plugin's own checks.
    if role.token_period > SYS_MAX_TTL {
        return Err(Fail::bad(format!(
            "token period of '{}' is greater than the backend's maximum lease TTL of '{}'",
            util::go_quote(&util::go_duration(role.token_period)),
            util::go_quote(&util::go_duration(SYS_MAX_TTL))
        )));
    }
    if role.token_max_ttl > 0 && role.token_ttl > role.token_max_ttl {
        return Err(Fail::bad(
            "token ttl should not be greater than token max ttl",
        ));
    }
    if role.token_max_ttl > SYS_MAX_TTL {
        warnings.push("max_ttl is greater than the system or backend mount's maximum TTL value; issued tokens' max TTL value will be truncated".into());
    }
    if let Some(v) = req.get("bound_service_account_names") {
        role.bound_names = util::field_comma_slice("bound_service_account_names", v)?;
    } else if creating {
        role.bound_names = Vec::new();
    }
    if role.bound_names.is_empty() {
        return Err(Fail::bad(
            "\"bound_service_account_names\" can not be empty",
        ));
    }
    if role.bound_names.len() > 1 && role.bound_names.iter().any(|n| n == "*") {
        return Err(Fail::bad("can not mix \"*\" with values"));
    }
    if let Some(v) = req.get("bound_service_account_namespaces") {
        role.bound_namespaces = util::field_comma_slice("bound_service_account_namespaces", v)?;
    }
    if role.bound_namespaces.is_empty() {
        return Err(Fail::bad(
            "\"bound_service_account_namespaces\" can not be empty if \"bound_service_account_namespace_selector\" is not set",
        ));
    }
    if role.bound_namespaces.len() > 1 && role.bound_namespaces.iter().any(|n| n == "*") {
        return Err(Fail::bad("can not mix \"*\" with values"));
    }
    if let Some(v) = req.get("audience") {
        role.audience = util::field_string("audience", v)?;
    }
    if role.audience.trim().is_empty() {
        warnings.push("This role does not specify an audience. In a future version of Vault, specifying an audience will be required.".into());
    }
    be.roles.insert(name.to_string(), role);
    if warnings.is_empty() {
        return Ok(Outcome::NoContent);
    }
    warnings.extend(unknown_params_warning(req, ROLE_FIELDS));
    Ok(Outcome::Resp(Resp {
        warnings,
        ..Default::default()
    }))
}

/// What step 1 established; step 3 compares the review with it.
struct Checked {
    role_name: String,
    role: KubeRole,
    claims: SaClaims,
    plan: ReviewPlan,
}

/// Steps 1 and 3's checks up to (not including) the TokenReview.
fn check(st: &State, req: &Req, mount: &str) -> Result<Checked, Fail> {
    let role_name = opt_string(req, "role")?;
    if role_name.is_empty() {
        return Err(Fail::bad("missing role"));
    }
    let jwt = opt_string(req, "jwt")?;
    if jwt.is_empty() {
        return Err(Fail::bad("missing jwt"));
    }
    let be = &st
        .auth_mounts
        .get(mount)
        .ok_or_else(Fail::unsupported_path)?
        .kubernetes;
    let role = be
        .roles
        .get(&role_name.to_lowercase())
        .cloned()
        .ok_or_else(|| Fail::bad(format!("invalid role name {}", util::go_quote(&role_name))))?;
    if !role.token_bound_cidrs.is_empty() && !util::ip_in_cidrs(req.remote, &role.token_bound_cidrs)
    {
        return Err(refuse("source address not in the role's token_bound_cidrs"));
    }
    let Some(config) = &be.config else {
        // A login handler's plain error: not wrapped in a multierror.
        return Err(Fail::new(500, "could not load backend configuration"));
    };
    let claims = parse_claims(&jwt).map_err(|e| refuse(&format!("invalid JWT: {e}")))?;
    if !config.disable_iss_validation && !config.issuer.is_empty() && claims.iss != config.issuer {
        return Err(refuse("JWT issuer does not match the configured issuer"));
    }
    let audience = role.audience.trim();
    if !audience.is_empty() && !claims.aud.iter().any(|a| a == audience) {
        return Err(refuse("JWT audience does not match the role's audience"));
    }
    let all_names = role.bound_names.len() == 1 && role.bound_names[0] == "*";
    if !all_names && !any_glob(&role.bound_names, &claims.name) {
        return Err(refuse("service account name not authorized"));
    }
    let ns_ok = role.bound_namespaces.first().is_some_and(|n| n == "*")
        || any_glob(&role.bound_namespaces, &claims.namespace);
    if !ns_ok {
        return Err(refuse("namespace not authorized"));
    }
    let host = config.host.trim_end_matches('/');
    let base = if host.contains("://") {
        host.to_string()
    } else {
        format!("https://{host}")
    };
    let bearer = if config.token_reviewer_jwt.is_empty() {
        jwt.clone()
    } else {
        config.token_reviewer_jwt.clone()
    };
    let audiences = if audience.is_empty() {
        claims.aud.clone()
    } else {
        vec![audience.to_string()]
    };
    Ok(Checked {
        role_name,
        role,
        claims,
        plan: ReviewPlan {
            url: format!("{base}/apis/authentication.k8s.io/v1/tokenreviews"),
            ca_pem: config.ca_cert.clone(),
            bearer,
            jwt,
            audiences,
        },
    })
}

/// Step 1: the TokenReview to make for a login request, if its local checks pass (when they
/// do not, step 3 produces the same error without a network call).
pub fn plan_login(st: &State, req: &Req, mount: &str) -> Option<ReviewPlan> {
    check(st, req, mount).ok().map(|c| c.plan)
}

/// Step 2: POST the TokenReview (no lock held).
pub async fn review(plan: ReviewPlan) -> ReviewOutcome {
    let mut builder = reqwest::Client::builder()
        .timeout(REVIEW_TIMEOUT)
        .no_proxy();
    if !plan.ca_pem.trim().is_empty() {
        let certs = reqwest::Certificate::from_pem_bundle(plan.ca_pem.as_bytes())
            .map_err(|e| format!("invalid kubernetes_ca_cert: {e}"))?;
        builder = builder.tls_certs_only(certs);
    }
    let client = builder
        .build()
        .map_err(|e| format!("building the TokenReview client: {e}"))?;
    let body = json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenReview",
        "spec": {"token": plan.jwt, "audiences": plan.audiences},
    });
    let resp = client
        .post(&plan.url)
        .bearer_auth(&plan.bearer)
        .json(&body)
        .send()
        .await
        .map_err(|e| format!("TokenReview request failed: {e}"))?;
    let status = resp.status();
    if status == reqwest::StatusCode::UNAUTHORIZED {
        return Err(
            "lookup failed: service account unauthorized; this could mean it has been deleted"
                .into(),
        );
    }
    if !status.is_success() {
        return Err(format!("lookup failed: TokenReview answered {status}"));
    }
    let out: Value = resp
        .json()
        .await
        .map_err(|e| format!("lookup failed: unreadable TokenReview: {e}"))?;
    let st = out.get("status").cloned().unwrap_or(Value::Null);
    let error = st.get("error").and_then(Value::as_str).unwrap_or("");
    if !error.is_empty() {
        return Err(format!("lookup failed: {error}"));
    }
    if st.get("authenticated").and_then(Value::as_bool) != Some(true) {
        return Err("lookup failed: service account jwt not valid".into());
    }
    let username = st
        .pointer("/user/username")
        .and_then(Value::as_str)
        .unwrap_or("");
    let parts: Vec<&str> = username.split(':').collect();
    let ["system", "serviceaccount", namespace, name] = parts.as_slice() else {
        return Err("lookup failed: unexpected username format".into());
    };
    Ok(Reviewed {
        name: (*name).to_string(),
        namespace: (*namespace).to_string(),
        uid: st
            .pointer("/user/uid")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
    })
}

/// Step 3: `auth/<mount>/login`.
fn login(st: &mut State, req: &Req, mount: &str) -> HResult {
    let now = req.now;
    let checked = check(st, req, mount)?;
    let reviewed = match &req.kube_review {
        Some(Ok(r)) => r.clone(),
        Some(Err(reason)) => return Err(refuse(reason)),
        None => return Err(refuse("the request was not reviewed")),
    };
    let claims = &checked.claims;
    if reviewed.name != claims.name {
        return Err(refuse("JWT names did not match"));
    }
    if claims.uid.is_empty() {
        return Err(Fail::new(500, "could not parse UID from claims"));
    }
    if reviewed.uid != claims.uid {
        return Err(refuse("JWT UIDs did not match"));
    }
    if reviewed.namespace != claims.namespace {
        return Err(refuse("JWT namepaces did not match"));
    }
    let mount_accessor = st
        .auth_mounts
        .get(mount)
        .map(|m| m.info.accessor.clone())
        .ok_or_else(Fail::unsupported_path)?;
    // Alias name: the service account UID (alias_name_source serviceaccount_uid).
    let entity_id = st.entity_for(&mount_accessor, &claims.uid);
    let meta = BTreeMap::from([
        ("role".to_string(), checked.role_name.clone()),
        ("service_account_name".to_string(), claims.name.clone()),
        (
            "service_account_namespace".to_string(),
            claims.namespace.clone(),
        ),
        (
            "service_account_secret_name".to_string(),
            claims.secret_name.clone(),
        ),
        ("service_account_uid".to_string(), claims.uid.clone()),
    ]);
    // Core prefixes the backend's display name with the mount path (`/` → `-`).
    let source = mount.replace('/', "-");
    let display_name = format!("{source}{}-{}", claims.namespace, claims.name)
        .trim_end_matches('-')
        .to_string();
    let role = &checked.role;
    let tok = st.tokens.create(
        TokenParams {
            policies: role.token_policies.clone(),
            no_default_policy: role.token_no_default_policy,
            meta: Some(meta),
            display_name,
            path: format!("auth/{mount}login"),
            ttl: role.token_ttl,
            max_ttl: role.token_max_ttl,
            explicit_max_ttl: role.token_explicit_max_ttl,
            period: role.token_period,
            num_uses: role.token_num_uses,
            renewable: true,
            batch: role.token_type == "batch",
            entity_id,
            bound_cidrs: role.token_bound_cidrs.clone(),
            login_role: Some((mount.to_string(), checked.role_name.to_lowercase())),
            ..Default::default()
        },
        now,
    );
    let warnings = unknown_params_warning(req, &["role", "jwt"])
        .into_iter()
        .collect();
    Ok(Outcome::Resp(Resp {
        auth: Some(tok.auth_out(now, Some(tok.ttl))),
        warnings,
        ..Default::default()
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(header: &Value, claims: &Value) -> String {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.sig",
            b64.encode(header.to_string()),
            b64.encode(claims.to_string())
        )
    }

    #[test]
    fn globs_match_like_go_glob() {
        for (p, s) in [
            ("*", "anything"),
            ("web-*", "web-1"),
            ("*-system", "vault-system"),
            ("a*c*e", "abcde"),
            ("exact", "exact"),
        ] {
            assert!(glob(p, s), "{p} {s}");
        }
        for (p, s) in [("web-*", "api-1"), ("a*c*e", "abcd"), ("exact", "exact2")] {
            assert!(!glob(p, s), "{p} {s}");
        }
    }

    #[test]
    fn claims_come_from_projected_and_legacy_tokens() {
        let projected = jwt(
            &json!({"alg": "ES256"}),
            &json!({"aud": ["vault"], "iss": "i", "kubernetes.io": {"namespace": "ns",
                     "serviceaccount": {"name": "sa", "uid": "u"}}}),
        );
        let c = parse_claims(&projected).expect("projected");
        assert_eq!(
            (c.name.as_str(), c.namespace.as_str(), c.uid.as_str()),
            ("sa", "ns", "u")
        );
        assert_eq!(c.aud, vec!["vault".to_string()]);
        let legacy = jwt(
            &json!({"alg": "RS256"}),
            &json!({"aud": "x", "kubernetes.io/serviceaccount/namespace": "ns",
                     "kubernetes.io/serviceaccount/service-account.name": "sa",
                     "kubernetes.io/serviceaccount/service-account.uid": "u",
                     "kubernetes.io/serviceaccount/secret.name": "sa-token-x"}),
        );
        let c = parse_claims(&legacy).expect("legacy");
        assert_eq!(c.secret_name, "sa-token-x");
        assert_eq!(c.aud, vec!["x".to_string()]);
        assert!(parse_claims("not-a-jwt").is_err());
        assert!(parse_claims(&jwt(&json!({"alg": "none"}), &json!({}))).is_err());
    }
}

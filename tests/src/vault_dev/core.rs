//! The request pipeline, modelled on Vault's `handleCancelableRequest`:
//!
//! ```text
//! Req ─▶ sealed? (503) ─▶ route to mount ─▶ [authenticated path]
//!          │                                   token lookup (403 permission denied / invalid token)
//!          │                                   bound CIDRs, use-count decrement (even if the request fails)
//!          │                                   ACL: capability for the operation (create vs update by existence)
//!          ▼
//!        backend handler ─▶ Outcome (204 / envelope / raw) or Fail ({"errors":[..]})
//!          ▼
//!        list without keys → 404; X-Vault-Wrap-TTL → store original JSON under a single-use token
//!          ▼
//!        revoke a token whose uses ran out; audit entry (accessor only, never a token)
//! ```

use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use jiff::Timestamp;
use serde_json::{Map, Value};

use super::audit::{Audit, AuditEntry};
use super::policy::{self, cap};
use super::state::{REVOCATION_PENDING, State, TokenParams, Wrapped};
use super::wire::{AuthOut, Envelope, WrapInfo, errors_body, multierror};
use super::{approle, kubernetes, sys, token, util};

/// Logical operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// GET
    Read,
    /// LIST or GET ?list=true
    List,
    /// POST/PUT (create or update)
    Update,
    /// DELETE
    Delete,
    /// PATCH
    Patch,
    /// HEAD
    Header,
}

/// A parsed API request.
#[derive(Debug, Clone)]
pub struct Req {
    /// Fresh request UUID.
    pub request_id: String,
    /// Path relative to `/v1/`, without a trailing slash.
    pub path: String,
    /// Operation.
    pub op: Op,
    /// Body (POST/PUT) or query (GET/DELETE/LIST) parameters.
    pub data: Map<String, Value>,
    /// `X-Vault-Token` or bearer token.
    pub token: Option<String>,
    /// TCP peer address.
    pub remote: IpAddr,
    /// Requested wrap TTL in seconds (>0).
    pub wrap_ttl: Option<i64>,
    /// Request time.
    pub now: Timestamp,
    /// The TokenReview made for a Kubernetes login before the state was locked (see
    /// [`Core::handle_async`]).
    pub kube_review: Option<kubernetes::ReviewOutcome>,
}

impl Req {
    /// A parameter, if present.
    pub fn get(&self, k: &str) -> Option<&Value> {
        self.data.get(k)
    }
}

/// The authenticated caller.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Token id.
    pub token: String,
    /// Token policies.
    pub policies: Vec<String>,
    /// Root policy.
    pub is_root: bool,
}

/// A successful non-empty response.
#[derive(Debug, Clone, Default)]
pub struct Resp {
    /// `data`.
    pub data: Option<Value>,
    /// `auth`.
    pub auth: Option<AuthOut>,
    /// `warnings`.
    pub warnings: Vec<String>,
    /// `lease_duration`.
    pub lease_duration: i64,
}

impl Resp {
    /// A response with only `data`.
    pub fn data(v: Value) -> Self {
        Resp {
            data: Some(v),
            ..Default::default()
        }
    }
}

/// What a handler produced.
// Outcomes live for one request and are moved once; boxing `Resp` would only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Outcome {
    /// 204 No Content.
    NoContent,
    /// 200 with an envelope.
    Resp(Resp),
    /// A pre-encoded body with its status (no trailing newline unless included).
    Raw(u16, String),
}

/// An error response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fail {
    /// HTTP status.
    pub status: u16,
    /// `errors` entries (zero or one).
    pub errors: Vec<String>,
}

impl Fail {
    /// One error with its text as given.
    pub fn new(status: u16, msg: impl Into<String>) -> Self {
        Fail {
            status,
            errors: vec![msg.into()],
        }
    }
    /// 400 with the given text.
    pub fn bad(msg: impl Into<String>) -> Self {
        Self::new(400, msg)
    }
    /// `{"errors":[]}`.
    pub fn empty(status: u16) -> Self {
        Fail {
            status,
            errors: Vec::new(),
        }
    }
    /// A plain Go error wrapped by core in a multierror.
    pub fn multi(status: u16, msg: &str) -> Self {
        Self::new(status, multierror(&[msg]))
    }
    /// ACL denial.
    pub fn denied() -> Self {
        Self::multi(403, "permission denied")
    }
    /// Path inside a mount matched by no pattern.
    pub fn unsupported_path() -> Self {
        Self::multi(404, "unsupported path")
    }
    /// Pattern exists but not for this operation.
    pub fn unsupported_op() -> Self {
        Self::multi(405, "unsupported operation")
    }
    /// A field could not be converted.
    pub fn field(e: util::FieldError) -> Self {
        Self::bad(e.message())
    }
}

impl From<util::FieldError> for Fail {
    fn from(e: util::FieldError) -> Self {
        Fail::field(e)
    }
}

/// Handler result.
pub type HResult = Result<Outcome, Fail>;

/// The HTTP answer.
#[derive(Debug, Clone)]
pub struct HttpOut {
    /// Status code.
    pub status: u16,
    /// Body (may be empty).
    pub body: String,
    /// `Location` for redirects.
    pub location: Option<String>,
}

impl HttpOut {
    /// An error body.
    pub fn fail(f: &Fail) -> Self {
        HttpOut {
            status: f.status,
            body: errors_body(&f.errors),
            location: None,
        }
    }
}

/// Where a path goes.
#[derive(Debug, Clone)]
pub enum Target {
    /// `sys/...` (rest after `sys/`).
    Sys(String),
    /// `auth/token/...`.
    Token(String),
    /// An AppRole mount: (mount key with slash, rest).
    AppRole(String, String),
    /// A Kubernetes auth mount: (mount key with slash, rest).
    Kubernetes(String, String),
    /// A KV mount: (mount key with slash, rest).
    Kv(String, String),
    /// No mount.
    Nothing,
}

impl Target {
    fn mount_type(&self) -> &'static str {
        match self {
            Target::Sys(_) => "system",
            Target::Token(_) => "token",
            Target::AppRole(..) => "approle",
            Target::Kubernetes(..) => "kubernetes",
            Target::Kv(..) => "kv",
            Target::Nothing => "",
        }
    }
}

fn longest_mount<'a, V>(
    mounts: &'a std::collections::BTreeMap<String, V>,
    path: &str,
) -> Option<(&'a String, String)> {
    let with_slash = format!("{path}/");
    mounts
        .keys()
        .filter(|k| with_slash.starts_with(k.as_str()))
        .max_by_key(|k| k.len())
        .map(|k| (k, with_slash[k.len()..].trim_end_matches('/').to_string()))
}

/// Resolve the mount for `path`.
pub fn target(st: &State, path: &str) -> Target {
    if path == "sys" {
        return Target::Sys(String::new());
    }
    if let Some(rest) = path.strip_prefix("sys/") {
        return Target::Sys(rest.to_string());
    }
    if path == "auth/token" {
        return Target::Token(String::new());
    }
    if let Some(rest) = path.strip_prefix("auth/token/") {
        return Target::Token(rest.to_string());
    }
    if let Some(rest) = path.strip_prefix("auth/") {
        return match longest_mount(&st.auth_mounts, rest) {
            Some((k, sub))
                if st
                    .auth_mounts
                    .get(k)
                    .is_some_and(|m| m.info.kind == "kubernetes") =>
            {
                Target::Kubernetes(k.clone(), sub)
            }
            Some((k, sub)) => Target::AppRole(k.clone(), sub),
            None => Target::Nothing,
        };
    }
    match longest_mount(&st.secret_mounts, path) {
        Some((k, sub)) => Target::Kv(k.clone(), sub),
        None => Target::Nothing,
    }
}

fn unauthenticated(t: &Target) -> bool {
    match t {
        Target::Sys(r) => {
            matches!(
                r.as_str(),
                "health" | "seal-status" | "unseal" | "wrapping/lookup" | "leader" | "init"
            ) || r.starts_with("internal/ui/mounts/")
        }
        Target::AppRole(_, r) | Target::Kubernetes(_, r) => r == "login",
        _ => false,
    }
}

/// Paths that need `sudo` (Vault's root-protected paths) that we serve.
fn needs_sudo(path: &str) -> bool {
    path.starts_with("sys/auth/")
        || path == "sys/seal"
        || path == "sys/step-down"
        || path.starts_with("sys/audit")
        || path.starts_with("sys/raw")
        || path == "sys/rotate"
        || path.starts_with("auth/token/accessors")
        || path == "auth/token/revoke-orphan"
}

/// Validate the token a wrapping endpoint is about (body `token`, else the header).
pub fn wrapping_token_of(req: &Req) -> Result<String, Fail> {
    match req.data.get("token") {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(Value::String(_)) => Err(Fail::new(
            403,
            "error validating wrapping token: empty token in request body",
        )),
        Some(_) => Err(Fail::new(
            403,
            "error validating wrapping token: could not decode token in request body",
        )),
        None => match &req.token {
            Some(t) if !t.is_empty() => Ok(t.clone()),
            _ => Err(Fail::new(
                403,
                "error validating wrapping token: token is empty",
            )),
        },
    }
}

/// The stored wrapping data of a live wrapping token.
///
/// `tainted` accepts a token whose last use the current request charged (first-party unwrap).
pub fn live_wrapping(
    st: &mut State,
    tok: &str,
    now: Timestamp,
    tainted: bool,
) -> Result<Arc<Wrapped>, Fail> {
    let t = if tainted {
        st.tokens.live_tainted(tok, now)
    } else {
        st.tokens.live(tok, now)
    };
    t.and_then(|t| t.wrap.clone())
        .ok_or_else(|| Fail::bad("wrapping token is not valid or does not exist"))
}

/// The server core: state, audit sink and seal key.
#[derive(Debug)]
pub struct Core {
    state: Mutex<State>,
    audit: Arc<Audit>,
}

impl Core {
    /// A new core.
    pub fn new(state: State, audit: Arc<Audit>) -> Self {
        Core {
            state: Mutex::new(state),
            audit,
        }
    }

    /// Lock the state (poisoning is ignored: the state stays usable for a test server).
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The audit sink.
    pub fn audit(&self) -> &Audit {
        &self.audit
    }

    /// Serve one request, first making the network calls it needs without holding the lock:
    /// a Kubernetes login whose local checks pass gets its TokenReview here.
    pub async fn handle_async(&self, mut req: Req) -> HttpOut {
        let plan = {
            let st = self.lock();
            match target(&st, &req.path) {
                Target::Kubernetes(m, rest)
                    if !st.sealed && rest == "login" && req.op == Op::Update =>
                {
                    kubernetes::plan_login(&st, &req, &m)
                }
                _ => None,
            }
        };
        if let Some(plan) = plan {
            req.kube_review = Some(kubernetes::review(plan).await);
        }
        self.handle(req)
    }

    /// Serve one request (everything under the lock; a Kubernetes login must come through
    /// [`Core::handle_async`] to be reviewed).
    pub fn handle(&self, req: Req) -> HttpOut {
        let mut accessor = String::new();
        let mut op_name = op_label(req.op);
        let mut wrapped = false;
        let out = {
            let mut st = self.lock();
            self.pipeline(&mut st, &req, &mut accessor, &mut op_name, &mut wrapped)
        };
        let error = match out.status {
            200..=299 | 307 => None,
            _ => audit_error(&out.body),
        };
        self.audit.record(AuditEntry {
            time: util::rfc3339nano(req.now),
            request_id: req.request_id.clone(),
            remote_address: req.remote.to_string(),
            path: req.path.clone(),
            operation: op_name.to_string(),
            accessor,
            status: out.status,
            error,
            wrapped,
        });
        out
    }

    fn pipeline(
        &self,
        st: &mut State,
        req: &Req,
        accessor_out: &mut String,
        op_name: &mut &'static str,
        wrapped_out: &mut bool,
    ) -> HttpOut {
        let now = req.now;
        if st.sealed
            && !matches!(
                req.path.as_str(),
                "sys/health" | "sys/seal-status" | "sys/unseal"
            )
        {
            return HttpOut::fail(&Fail::new(503, "Vault is sealed"));
        }
        let tgt = target(st, &req.path);
        let unauth = unauthenticated(&tgt);
        let mut caller: Option<Caller> = None;
        let mut revoke_after: Option<String> = None;

        if !unauth {
            if req.path == "sys/wrapping/unwrap" && req.op == Op::Update {
                let validated = wrapping_token_of(req)
                    .and_then(|t| live_wrapping(st, &t, now, false).map(|_| ()));
                if let Err(f) = validated {
                    // A presented header token is still charged a use, as core does.
                    if let Some(h) = &req.token
                        && let Some(t) = st.tokens.live(h, now)
                    {
                        *accessor_out = t.accessor.clone();
                        if t.num_uses == 1 {
                            let id = t.id.clone();
                            st.tokens.remove(&id);
                        } else if t.num_uses > 1 {
                            t.num_uses -= 1;
                        }
                    }
                    return HttpOut::fail(&f);
                }
            }
            let Some(tok) = req.token.as_deref().filter(|t| !t.is_empty()) else {
                return HttpOut::fail(&Fail::new(403, "permission denied"));
            };
            let Some(t) = st.tokens.live(tok, now) else {
                return HttpOut::fail(&Fail::new(
                    403,
                    multierror(&["permission denied", "invalid token"]),
                ));
            };
            *accessor_out = t.accessor.clone();
            if !t.bound_cidrs.is_empty() && !util::ip_in_cidrs(req.remote, &t.bound_cidrs) {
                return HttpOut::fail(&Fail::denied());
            }
            // Core charges the use before the outcome is known.
            if t.num_uses > 0 {
                t.num_uses -= 1;
                if t.num_uses == 0 {
                    t.num_uses = REVOCATION_PENDING;
                    revoke_after = Some(t.id.clone());
                }
            }
            let c = Caller {
                token: t.id.clone(),
                policies: t.policies.clone(),
                is_root: t.is_root(),
            };
            let result = self.authorize(st, req, &tgt, &c, op_name);
            if let Err(f) = result {
                if let Some(id) = revoke_after {
                    st.tokens.remove(&id);
                }
                return HttpOut::fail(&f);
            }
            caller = Some(c);
        } else if req.op == Op::Update && exists(st, &tgt) == Some(false) {
            *op_name = "create";
        }

        let result = dispatch(st, req, &tgt, caller.as_ref());
        if let Some(id) = revoke_after {
            st.tokens.remove(&id);
        }
        let mount_type = if unauth { "" } else { tgt.mount_type() };
        match result {
            Err(f) => HttpOut::fail(&f),
            Ok(Outcome::NoContent) => HttpOut {
                status: 204,
                body: String::new(),
                location: None,
            },
            Ok(Outcome::Raw(status, body)) => HttpOut {
                status,
                body,
                location: None,
            },
            Ok(Outcome::Resp(resp)) => {
                if req.op == Op::List {
                    let has_keys = resp
                        .data
                        .as_ref()
                        .and_then(|d| d.get("keys"))
                        .and_then(Value::as_array)
                        .is_some_and(|k| !k.is_empty());
                    if !has_keys {
                        return HttpOut::fail(&Fail::empty(404));
                    }
                }
                let env = Envelope {
                    request_id: req.request_id.clone(),
                    lease_id: String::new(),
                    renewable: false,
                    lease_duration: resp.lease_duration,
                    data: resp.data.clone(),
                    wrap_info: None,
                    warnings: (!resp.warnings.is_empty()).then(|| resp.warnings.clone()),
                    auth: resp.auth.clone(),
                    mount_type: mount_type.to_string(),
                };
                match req.wrap_ttl {
                    Some(ttl) if ttl > 0 => {
                        *wrapped_out = true;
                        let body = wrap_response(st, req, &env, &resp, &tgt, ttl);
                        HttpOut {
                            status: 200,
                            body,
                            location: None,
                        }
                    }
                    _ => HttpOut {
                        status: 200,
                        body: env.encode() + "\n",
                        location: None,
                    },
                }
            }
        }
    }

    fn authorize(
        &self,
        st: &State,
        req: &Req,
        tgt: &Target,
        c: &Caller,
        op_name: &mut &'static str,
    ) -> Result<(), Fail> {
        let mut needed = match req.op {
            Op::Read | Op::Header => cap::READ,
            Op::List => cap::LIST,
            Op::Delete => cap::DELETE,
            Op::Patch => cap::PATCH,
            Op::Update => cap::UPDATE,
        };
        if req.op == Op::Update && exists(st, tgt) == Some(false) {
            needed = cap::CREATE;
            *op_name = "create";
        }
        if c.is_root {
            return Ok(());
        }
        let acl_path = if req.op == Op::List {
            format!("{}/", req.path)
        } else {
            req.path.clone()
        };
        let pols = c.policies.iter().filter_map(|p| st.policies.get(p));
        let caps = policy::capabilities(pols, &acl_path);
        if caps & needed == 0 {
            return Err(Fail::denied());
        }
        if needs_sudo(&req.path) && caps & cap::SUDO == 0 {
            return Err(Fail::denied());
        }
        Ok(())
    }
}

fn op_label(op: Op) -> &'static str {
    match op {
        Op::Read => "read",
        Op::List => "list",
        Op::Update => "update",
        Op::Delete => "delete",
        Op::Patch => "patch",
        Op::Header => "header",
    }
}

fn audit_error(body: &str) -> Option<String> {
    let v: Value = serde_json::from_str(body).ok()?;
    let errs = v.get("errors")?.as_array()?;
    errs.first().and_then(Value::as_str).map(str::to_string)
}

/// Existence check for create-vs-update (None = the path has no existence check).
fn exists(st: &State, tgt: &Target) -> Option<bool> {
    match tgt {
        Target::AppRole(m, rest) => st.auth_mounts.get(m)?.approle.exists(rest),
        Target::Kubernetes(m, rest) => st.auth_mounts.get(m)?.kubernetes.exists(rest),
        Target::Kv(m, rest) => st.secret_mounts.get(m)?.kv.exists(rest),
        _ => None,
    }
}

fn dispatch(st: &mut State, req: &Req, tgt: &Target, caller: Option<&Caller>) -> HResult {
    match tgt {
        Target::Sys(rest) => sys::handle(st, req, rest, caller),
        Target::Token(rest) => token::handle(st, req, rest, caller),
        Target::AppRole(m, rest) => approle::handle(st, req, m, rest),
        Target::Kubernetes(m, rest) => kubernetes::handle(st, req, m, rest),
        Target::Kv(m, rest) => {
            let mount = st
                .secret_mounts
                .get_mut(m)
                .ok_or_else(Fail::unsupported_path)?;
            mount.kv.handle(req, rest)
        }
        Target::Nothing => Err(Fail::new(
            404,
            format!(
                "no handler for route {}. route entry not found.",
                util::go_quote(&req.path)
            ),
        )),
    }
}

/// Store the original response under a new single-use wrapping token; return the wrapped body.
fn wrap_response(
    st: &mut State,
    req: &Req,
    env: &Envelope,
    resp: &Resp,
    tgt: &Target,
    ttl: i64,
) -> String {
    let wrapped_accessor = match (&resp.auth, tgt) {
        (Some(a), _) if !a.accessor.is_empty() => Some(a.accessor.clone()),
        (_, Target::AppRole(..)) => resp
            .data
            .as_ref()
            .and_then(|d| d.get("secret_id_accessor"))
            .and_then(Value::as_str)
            .map(str::to_string),
        _ => None,
    };
    let mut tok = st.tokens.create(
        TokenParams {
            policies: vec!["response-wrapping".into()],
            no_default_policy: true,
            ttl,
            explicit_max_ttl: ttl,
            num_uses: 1,
            renewable: false,
            path: req.path.clone(),
            ..Default::default()
        },
        req.now,
    );
    tok.wrap = Some(Arc::new(Wrapped {
        response: env.encode(),
        creation_time: req.now,
        creation_ttl: ttl,
        creation_path: req.path.clone(),
        wrapped_accessor: wrapped_accessor.clone(),
    }));
    let info = WrapInfo {
        token: tok.id.clone(),
        accessor: tok.accessor.clone(),
        ttl,
        creation_time: util::rfc3339nano(req.now),
        creation_path: req.path.clone(),
        wrapped_accessor,
    };
    st.tokens.insert(tok);
    let out = Envelope {
        wrap_info: Some(info),
        ..Default::default()
    };
    out.encode() + "\n"
}

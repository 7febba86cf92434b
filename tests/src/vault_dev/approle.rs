//! The AppRole auth backend (`auth/<mount>/...`), per vault-api.md §2.
//!
//! ```text
//! role/:name                      create/update (204), read, delete
//! role/:name/role-id              read, update
//! role/:name/secret-id            generate (update), LIST accessors
//! role/:name/custom-secret-id     generate with a given secret_id
//! role/:name/secret-id/{lookup,destroy}
//! role/:name/secret-id-accessor/{lookup,destroy}
//! login                           unauthenticated; use-count decrement happens before CIDR checks
//! ```
//!
//! Secret IDs are kept per role (id → entry, accessor → id). Expired secret IDs are treated as
//! already tidied: login answers `invalid role or secret ID` exactly at expiry.

use std::collections::{BTreeMap, HashMap};

use base64::Engine;
use jiff::{SignedDuration, Timestamp};
use serde_json::{Value, json};

use super::core::{Fail, HResult, Op, Outcome, Req, Resp};
use super::state::{SYS_MAX_TTL, State, TokenParams, add};
use super::util::{self, Cidr};
use super::wire::Envelope;

/// How long a role_id stays locked after too many failed logins, and the counter window.
const LOCKOUT: SignedDuration = SignedDuration::from_secs(15 * 60);

/// One secret ID.
#[derive(Debug, Clone)]
pub struct SecretId {
    accessor: String,
    metadata: BTreeMap<String, String>,
    cidr_list: Vec<String>,
    token_bound_cidrs: Vec<String>,
    num_uses: i64,
    ttl: i64,
    creation: Timestamp,
    expiration: Option<Timestamp>,
    last_updated: Timestamp,
}

impl SecretId {
    fn expired(&self, now: Timestamp) -> bool {
        self.expiration.is_some_and(|e| now >= e)
    }

    fn lookup_data(&self) -> Value {
        json!({
            "cidr_list": self.cidr_list,
            "creation_time": util::rfc3339nano(self.creation),
            "expiration_time": self.expiration.map_or(util::GO_ZERO_TIME.to_string(), util::rfc3339nano),
            "last_updated_time": util::rfc3339nano(self.last_updated),
            "metadata": self.metadata,
            "secret_id_accessor": self.accessor,
            "secret_id_num_uses": self.num_uses,
            "secret_id_ttl": self.ttl,
            "token_bound_cidrs": self.token_bound_cidrs,
        })
    }
}

/// One role.
#[derive(Debug, Clone)]
pub struct Role {
    name: String,
    role_id: String,
    bind_secret_id: bool,
    secret_id_bound_cidrs: Option<Vec<String>>,
    secret_id_num_uses: i64,
    secret_id_ttl: i64,
    local_secret_ids: bool,
    token_ttl: i64,
    token_max_ttl: i64,
    token_policies: Vec<String>,
    token_bound_cidrs: Vec<String>,
    token_num_uses: i64,
    token_period: i64,
    token_explicit_max_ttl: i64,
    token_no_default_policy: bool,
    token_type: String,
    secret_ids: HashMap<String, SecretId>,
    accessors: HashMap<String, String>,
}

impl Role {
    fn new(name: &str) -> Self {
        Role {
            name: name.to_string(),
            role_id: util::uuid(),
            bind_secret_id: true,
            secret_id_bound_cidrs: None,
            secret_id_num_uses: 0,
            secret_id_ttl: 0,
            local_secret_ids: false,
            token_ttl: 0,
            token_max_ttl: 0,
            token_policies: Vec::new(),
            token_bound_cidrs: Vec::new(),
            token_num_uses: 0,
            token_period: 0,
            token_explicit_max_ttl: 0,
            token_no_default_policy: false,
            token_type: "default".into(),
            secret_ids: HashMap::new(),
            accessors: HashMap::new(),
        }
    }

    fn read_data(&self) -> Value {
        json!({
            "alias_metadata": {},
            "bind_secret_id": self.bind_secret_id,
            "local_secret_ids": self.local_secret_ids,
            "secret_id_bound_cidrs": self.secret_id_bound_cidrs,
            "secret_id_num_uses": self.secret_id_num_uses,
            "secret_id_ttl": self.secret_id_ttl,
            "token_bound_cidrs": self.token_bound_cidrs,
            "token_explicit_max_ttl": self.token_explicit_max_ttl,
            "token_max_ttl": self.token_max_ttl,
            "token_no_default_policy": self.token_no_default_policy,
            "token_num_uses": self.token_num_uses,
            "token_period": self.token_period,
            "token_policies": self.token_policies,
            "token_ttl": self.token_ttl,
            "token_type": self.token_type,
        })
    }

    fn remove_secret(&mut self, secret_id: &str) {
        if let Some(e) = self.secret_ids.remove(secret_id) {
            self.accessors.remove(&e.accessor);
        }
    }

    /// A live (unexpired) secret id entry; expired ones are dropped.
    fn live_secret(&mut self, secret_id: &str, now: Timestamp) -> Option<&mut SecretId> {
        if self.secret_ids.get(secret_id)?.expired(now) {
            self.remove_secret(secret_id);
            return None;
        }
        self.secret_ids.get_mut(secret_id)
    }

    fn secret_for_accessor(&mut self, accessor: &str, now: Timestamp) -> Option<String> {
        let id = self.accessors.get(accessor)?.clone();
        self.live_secret(&id, now).map(|_| id.clone())
    }
}

/// An AppRole mount.
#[derive(Debug, Default)]
pub struct AppRoleBackend {
    roles: HashMap<String, Role>,
    role_ids: HashMap<String, String>,
}

impl AppRoleBackend {
    /// Existence check used to pick `create` vs `update` capability.
    pub fn exists(&self, rest: &str) -> Option<bool> {
        let name = rest.strip_prefix("role/")?;
        if name.contains('/') {
            return None;
        }
        Some(self.roles.contains_key(&name.to_lowercase()))
    }

    /// Drop expired secret IDs.
    pub fn sweep(&mut self, now: Timestamp) {
        for role in self.roles.values_mut() {
            let dead: Vec<String> = role
                .secret_ids
                .iter()
                .filter(|(_, e)| e.expired(now))
                .map(|(k, _)| k.clone())
                .collect();
            for id in dead {
                role.remove_secret(&id);
            }
        }
    }

    /// `(token_ttl, token_max_ttl)` of a role, if it exists (for renewals).
    pub fn role_ttls(&self, role: &str) -> Option<(i64, i64)> {
        self.roles.get(role).map(|r| (r.token_ttl, r.token_max_ttl))
    }
}

pub(super) fn valid_role_name(name: &str) -> bool {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let chars: Vec<char> = name.chars().collect();
    match chars.as_slice() {
        [] => false,
        [c] => word(*c),
        [first, mid @ .., last] => {
            word(*first) && word(*last) && mid.iter().all(|c| word(*c) || *c == '-' || *c == '.')
        }
    }
}

fn role_missing(name: &str) -> String {
    format!("role {} does not exist", util::go_quote(name))
}

/// Entry point for `auth/<mount>/<rest>`.
pub fn handle(st: &mut State, req: &Req, mount: &str, rest: &str) -> HResult {
    if rest == "login" {
        return match req.op {
            Op::Update => login(st, req, mount),
            _ => Err(Fail::unsupported_op()),
        };
    }
    if rest == "role" {
        return match req.op {
            Op::List => {
                let be = &st
                    .auth_mounts
                    .get(mount)
                    .ok_or_else(Fail::unsupported_path)?
                    .approle;
                let mut keys: Vec<&String> = be.roles.keys().collect();
                keys.sort();
                Ok(Outcome::Resp(Resp::data(json!({ "keys": keys }))))
            }
            _ => Err(Fail::unsupported_op()),
        };
    }
    let Some(after) = rest.strip_prefix("role/") else {
        return Err(Fail::unsupported_path());
    };
    let (name, sub) = after.split_once('/').unwrap_or((after, ""));
    if !valid_role_name(name) {
        return Err(Fail::unsupported_path());
    }
    let name = name.to_lowercase();
    let be = &mut st
        .auth_mounts
        .get_mut(mount)
        .ok_or_else(Fail::unsupported_path)?
        .approle;
    match (sub, req.op) {
        ("", Op::Update) => role_write(be, req, &name),
        ("", Op::Read) => match be.roles.get(&name) {
            Some(r) => Ok(Outcome::Resp(Resp::data(r.read_data()))),
            None => Err(Fail::empty(404)),
        },
        ("", Op::Delete) => {
            if let Some(r) = be.roles.remove(&name) {
                be.role_ids.remove(&r.role_id);
            }
            Ok(Outcome::NoContent)
        }
        ("role-id", Op::Read) => match be.roles.get(&name) {
            Some(r) => Ok(Outcome::Resp(Resp::data(json!({ "role_id": r.role_id })))),
            None => Err(Fail::empty(404)),
        },
        ("role-id", Op::Update) => {
            let id = match req.get("role_id") {
                Some(v) => util::field_string("role_id", v)?,
                None => String::new(),
            };
            if id.is_empty() {
                return Err(Fail::bad("missing role_id"));
            }
            let Some(role) = be.roles.get(&name) else {
                return Err(Fail::new(404, role_missing(&name)));
            };
            let old = role.role_id.clone();
            if id != old && be.role_ids.contains_key(&id) {
                return Err(Fail::multi(500, "role_id already in use"));
            }
            be.role_ids.remove(&old);
            be.role_ids.insert(id.clone(), name.clone());
            if let Some(role) = be.roles.get_mut(&name) {
                role.role_id = id;
            }
            Ok(Outcome::NoContent)
        }
        ("secret-id", Op::Update) => generate(be, req, &name, None),
        ("custom-secret-id", Op::Update) => {
            let sid = match req.get("secret_id") {
                Some(v) => util::field_string("secret_id", v)?,
                None => String::new(),
            };
            if sid.is_empty() {
                return Err(Fail::bad("missing secret_id"));
            }
            generate(be, req, &name, Some(sid))
        }
        ("secret-id", Op::List) => {
            let Some(role) = be.roles.get_mut(&name) else {
                return Err(Fail::bad(role_missing(&name)));
            };
            let now = req.now;
            let mut keys: Vec<String> = role
                .secret_ids
                .values()
                .filter(|e| !e.expired(now))
                .map(|e| e.accessor.clone())
                .collect();
            keys.sort();
            Ok(Outcome::Resp(Resp::data(json!({ "keys": keys }))))
        }
        ("secret-id/lookup", Op::Update) => {
            let sid = required(req, "secret_id")?;
            let Some(role) = be.roles.get_mut(&name) else {
                return Err(Fail::multi(500, &role_missing(&name)));
            };
            match role.live_secret(&sid, req.now) {
                Some(e) => Ok(Outcome::Resp(Resp::data(e.lookup_data()))),
                None => Ok(Outcome::NoContent),
            }
        }
        ("secret-id/destroy", Op::Update | Op::Delete) => {
            let sid = required(req, "secret_id")?;
            let Some(role) = be.roles.get_mut(&name) else {
                return Err(Fail::multi(500, &role_missing(&name)));
            };
            role.remove_secret(&sid);
            Ok(Outcome::NoContent)
        }
        ("secret-id-accessor/lookup", Op::Update) => {
            let acc = required(req, "secret_id_accessor")?;
            let Some(role) = be.roles.get_mut(&name) else {
                return Err(Fail::multi(500, &role_missing(&name)));
            };
            match role.secret_for_accessor(&acc, req.now) {
                Some(sid) => {
                    let data = role
                        .secret_ids
                        .get(&sid)
                        .map(SecretId::lookup_data)
                        .unwrap_or(Value::Null);
                    Ok(Outcome::Resp(Resp::data(data)))
                }
                None => {
                    let env = Envelope {
                        request_id: req.request_id.clone(),
                        data: Some(json!({
                            "error": format!(
                                "failed to find accessor entry for secret_id_accessor: {}",
                                util::go_quote(&acc)
                            )
                        })),
                        ..Default::default()
                    };
                    Ok(Outcome::Raw(404, env.encode()))
                }
            }
        }
        ("secret-id-accessor/destroy", Op::Update | Op::Delete) => {
            let acc = required(req, "secret_id_accessor")?;
            let Some(role) = be.roles.get_mut(&name) else {
                return Err(Fail::multi(500, &role_missing(&name)));
            };
            match role.secret_for_accessor(&acc, req.now) {
                Some(sid) => {
                    role.remove_secret(&sid);
                    Ok(Outcome::NoContent)
                }
                None => Err(Fail::multi(
                    500,
                    &format!(
                        "failed to find accessor entry for secret_id_accessor: {}",
                        util::go_quote(&acc)
                    ),
                )),
            }
        }
        (
            ""
            | "role-id"
            | "secret-id"
            | "custom-secret-id"
            | "secret-id/lookup"
            | "secret-id/destroy"
            | "secret-id-accessor/lookup"
            | "secret-id-accessor/destroy",
            _,
        ) => Err(Fail::unsupported_op()),
        _ => Err(Fail::unsupported_path()),
    }
}

fn required(req: &Req, field: &str) -> Result<String, Fail> {
    let v = match req.get(field) {
        Some(v) => util::field_string(field, v)?,
        None => String::new(),
    };
    if v.is_empty() {
        return Err(Fail::bad(format!("missing {field}")));
    }
    Ok(v)
}

fn role_write(be: &mut AppRoleBackend, req: &Req, name: &str) -> HResult {
    let existing = be.roles.get(name).cloned();
    let creating = existing.is_none();
    let mut role = existing.unwrap_or_else(|| Role::new(name));
    let mut warnings = Vec::new();
    let d = &req.data;

    if let Some(v) = d.get("bind_secret_id") {
        role.bind_secret_id = util::field_bool("bind_secret_id", v)?;
    }
    let cidr_field = d
        .get("secret_id_bound_cidrs")
        .map(|v| ("secret_id_bound_cidrs", v))
        .or_else(|| d.get("bound_cidr_list").map(|v| ("bound_cidr_list", v)));
    if let Some((f, v)) = cidr_field {
        let list = util::field_comma_slice(f, v)?;
        validate_cidr_list(&list)?;
        role.secret_id_bound_cidrs = Some(list);
    }
    if let Some(v) = d.get("secret_id_num_uses") {
        role.secret_id_num_uses = util::field_int("secret_id_num_uses", v)?;
        if role.secret_id_num_uses < 0 {
            return Err(Fail::bad("secret_id_num_uses cannot be negative"));
        }
    }
    if let Some(v) = d.get("secret_id_ttl") {
        role.secret_id_ttl = util::field_duration("secret_id_ttl", v)?;
    }
    if let Some(v) = d.get("local_secret_ids") {
        let val = util::field_bool("local_secret_ids", v)?;
        if !creating {
            return Err(Fail::bad(
                "local_secret_ids can only be modified during role creation",
            ));
        }
        role.local_secret_ids = val;
    }
    if let Some(v) = d.get("role_id") {
        let id = util::field_string("role_id", v)?;
        if !id.is_empty() {
            role.role_id = id;
        }
    }
    // tokenutil fields
    if let Some(v) = d.get("token_ttl") {
        role.token_ttl = util::field_duration("token_ttl", v)?;
    }
    if let Some(v) = d.get("token_max_ttl") {
        role.token_max_ttl = util::field_duration("token_max_ttl", v)?;
    }
    if let Some((f, v)) = d
        .get("token_policies")
        .map(|v| ("token_policies", v))
        .or_else(|| d.get("policies").map(|v| ("policies", v)))
    {
        role.token_policies = util::sanitize_policies(&util::field_comma_slice(f, v)?, false);
    }
    if let Some(v) = d.get("token_bound_cidrs") {
        let list = util::field_comma_slice("token_bound_cidrs", v)?;
        if list.iter().any(|c| Cidr::parse(c, true).is_none()) {
            return Err(Fail::bad(
                "error parsing token_bound_cidrs: invalid address",
            ));
        }
        role.token_bound_cidrs = list;
    }
    if let Some(v) = d.get("token_num_uses") {
        role.token_num_uses = util::field_int("token_num_uses", v)?;
    }
    if let Some((f, v)) = d
        .get("token_period")
        .map(|v| ("token_period", v))
        .or_else(|| d.get("period").map(|v| ("period", v)))
    {
        role.token_period = util::field_duration(f, v)?;
    }
    if let Some(v) = d.get("token_explicit_max_ttl") {
        role.token_explicit_max_ttl = util::field_duration("token_explicit_max_ttl", v)?;
    }
    if let Some(v) = d.get("token_no_default_policy") {
        role.token_no_default_policy = util::field_bool("token_no_default_policy", v)?;
    }
    if let Some(v) = d.get("token_type") {
        role.token_type = util::field_token_type(v, &mut warnings)?;
    }
    if role.token_ttl < 0 {
        return Err(Fail::bad("'token_ttl' cannot be negative"));
    }
    if role.token_max_ttl < 0 {
        return Err(Fail::bad("'token_max_ttl' cannot be negative"));
    }
    if role.token_num_uses < 0 {
        return Err(Fail::bad("'token_num_uses' cannot be negative"));
    }
    if role.token_max_ttl > 0 && role.token_ttl > role.token_max_ttl {
        return Err(Fail::bad(
            "'token_ttl' cannot be greater than 'token_max_ttl'",
        ));
    }
    util::check_batch_token(&role.token_type, role.token_num_uses, role.token_period)?;
    if role.token_period > SYS_MAX_TTL {
        return Err(Fail::bad(format!(
            "period of {} is greater than the backend's maximum lease TTL of {}",
            util::go_quote(&util::go_duration(role.token_period)),
            util::go_quote(&util::go_duration(SYS_MAX_TTL))
        )));
    }
    if role.token_max_ttl > SYS_MAX_TTL {
        warnings.push("token_max_ttl is greater than the backend mount's maximum TTL value; issued tokens' max TTL value will be truncated".into());
    }
    if !role.bind_secret_id
        && role
            .secret_id_bound_cidrs
            .as_ref()
            .is_none_or(Vec::is_empty)
        && role.token_bound_cidrs.is_empty()
    {
        return Err(Fail::multi(
            500,
            "at least one constraint should be enabled on the role",
        ));
    }
    if let Some(owner) = be.role_ids.get(&role.role_id)
        && owner != name
    {
        return Err(Fail::multi(500, "role_id already in use"));
    }
    if let Some(old) = be.roles.get(name)
        && old.role_id != role.role_id
    {
        let old_id = old.role_id.clone();
        be.role_ids.remove(&old_id);
    }
    be.role_ids.insert(role.role_id.clone(), name.to_string());
    be.roles.insert(name.to_string(), role);
    if warnings.is_empty() {
        Ok(Outcome::NoContent)
    } else {
        Ok(Outcome::Resp(Resp {
            warnings,
            ..Default::default()
        }))
    }
}

fn validate_cidr_list(list: &[String]) -> Result<(), Fail> {
    for c in list {
        if Cidr::parse(c, false).is_none() {
            return Err(Fail::multi(
                500,
                &format!("failed to validate CIDR blocks: invalid CIDR address: {c}"),
            ));
        }
    }
    Ok(())
}

/// `strutil.ParseArbitraryKeyValues(s, out, ",")`.
fn parse_metadata(input: &str) -> Result<BTreeMap<String, String>, Fail> {
    let bad = || {
        Fail::bad("failed to parse metadata: failed to parse the input: invalid <key,value> format")
    };
    let mut s = input.trim().to_string();
    if s.is_empty() {
        return Ok(BTreeMap::new());
    }
    if let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(&s)
        && let Ok(text) = String::from_utf8(bytes)
    {
        s = text;
    }
    if let Ok(map) = serde_json::from_str::<BTreeMap<String, String>>(&s) {
        if map.iter().any(|(k, v)| k.is_empty() || v.is_empty()) {
            return Err(bad());
        }
        return Ok(map);
    }
    let mut out = BTreeMap::new();
    for item in s.split(',') {
        let Some((k, v)) = item.split_once('=') else {
            return Err(bad());
        };
        let (k, v) = (k.trim().to_lowercase(), v.trim().to_lowercase());
        if k.is_empty() || v.is_empty() {
            return Err(bad());
        }
        out.insert(k, v);
    }
    Ok(out)
}

/// The framework's warning about body parameters the endpoint does not know.
pub(super) fn unknown_params_warning(req: &Req, known: &[&str]) -> Option<String> {
    let mut unknown: Vec<&str> = req
        .data
        .keys()
        .map(String::as_str)
        .filter(|k| !known.contains(k))
        .collect();
    if unknown.is_empty() {
        return None;
    }
    unknown.sort();
    Some(format!(
        "Endpoint ignored these unrecognized parameters: [{}]",
        unknown.join(" ")
    ))
}

fn generate(be: &mut AppRoleBackend, req: &Req, name: &str, custom: Option<String>) -> HResult {
    let Some(role) = be.roles.get_mut(name) else {
        return Err(Fail::new(404, role_missing(name)));
    };
    if !role.bind_secret_id {
        return Err(Fail::bad("bind_secret_id is not set on the role"));
    }
    let metadata = match req.get("metadata") {
        Some(v) => parse_metadata(&util::field_string("metadata", v)?)?,
        None => BTreeMap::new(),
    };
    let cidr_list = match req.get("cidr_list") {
        Some(v) => {
            let mut l = util::field_comma_slice("cidr_list", v)?;
            l.dedup();
            l
        }
        None => Vec::new(),
    };
    if !cidr_list.is_empty() {
        validate_cidr_list(&cidr_list)?;
        if let Some(role_cidrs) = role
            .secret_id_bound_cidrs
            .as_ref()
            .filter(|c| !c.is_empty())
            && !util::cidrs_subset(role_cidrs, &cidr_list)
        {
            return Err(subset_error(role_cidrs, &cidr_list));
        }
    }
    let token_bound_cidrs = match req.get("token_bound_cidrs") {
        Some(v) => util::field_comma_slice("token_bound_cidrs", v)?,
        None => Vec::new(),
    };
    if !token_bound_cidrs.is_empty() {
        if token_bound_cidrs
            .iter()
            .any(|c| Cidr::parse(c, true).is_none())
        {
            return Err(Fail::bad("failed to validate token CIDR blocks"));
        }
        if !role.token_bound_cidrs.is_empty()
            && !util::cidrs_subset(&role.token_bound_cidrs, &token_bound_cidrs)
        {
            return Err(subset_error(&role.token_bound_cidrs, &token_bound_cidrs));
        }
    }
    let num_uses = match req.get("num_uses") {
        Some(v) => {
            let n = util::field_int("num_uses", v)?;
            if n < 0 {
                return Err(Fail::bad("num_uses cannot be negative"));
            }
            if role.secret_id_num_uses > 0 && (n == 0 || n > role.secret_id_num_uses) {
                return Err(Fail::bad(
                    "num_uses cannot be higher than the role's secret_id_num_uses",
                ));
            }
            n
        }
        None => role.secret_id_num_uses,
    };
    let mut ttl = match req.get("ttl") {
        Some(v) => {
            let t = util::field_duration("ttl", v)?;
            if role.secret_id_ttl > 0 && (t == 0 || t > role.secret_id_ttl) {
                return Err(Fail::bad(
                    "ttl cannot be longer than the role's secret_id_ttl",
                ));
            }
            t
        }
        None => role.secret_id_ttl,
    };
    if ttl > SYS_MAX_TTL {
        ttl = SYS_MAX_TTL;
    }
    let secret_id = custom.unwrap_or_else(util::uuid);
    if role.secret_ids.contains_key(&secret_id) {
        return Err(Fail::multi(500, "SecretID is already registered"));
    }
    let accessor = util::uuid();
    let now = req.now;
    role.accessors.insert(accessor.clone(), secret_id.clone());
    role.secret_ids.insert(
        secret_id.clone(),
        SecretId {
            accessor: accessor.clone(),
            metadata,
            cidr_list,
            token_bound_cidrs,
            num_uses,
            ttl,
            creation: now,
            expiration: (ttl > 0).then(|| add(now, ttl)),
            last_updated: now,
        },
    );
    let known = [
        "role_name",
        "metadata",
        "cidr_list",
        "token_bound_cidrs",
        "num_uses",
        "ttl",
        "secret_id",
    ];
    Ok(Outcome::Resp(Resp {
        data: Some(json!({
            "secret_id": secret_id,
            "secret_id_accessor": accessor,
            "secret_id_num_uses": num_uses,
            "secret_id_ttl": ttl,
        })),
        warnings: unknown_params_warning(req, &known).into_iter().collect(),
        ..Default::default()
    }))
}

fn subset_error(role: &[String], secret: &[String]) -> Fail {
    Fail::multi(
        500,
        &format!(
            "failed to verify subset relationship between CIDR blocks on the role {} and CIDR blocks on the secret ID {}: %!w(<nil>)",
            util::go_quote_slice(role),
            util::go_quote_slice(secret)
        ),
    )
}

/// What a successful credential check yields.
struct LoginOk {
    role_name: String,
    role_id: String,
    metadata: BTreeMap<String, String>,
    token_bound_cidrs: Vec<String>,
    params: TokenParams,
}

fn login(st: &mut State, req: &Req, mount: &str) -> HResult {
    let now = req.now;
    let role_id = match req.get("role_id") {
        Some(v) => util::field_string("role_id", v)?,
        None => String::new(),
    };
    if role_id.trim().is_empty() {
        return Err(Fail::bad("invalid credentials"));
    }
    let mount_accessor = st
        .auth_mounts
        .get(mount)
        .map(|m| m.info.accessor.clone())
        .ok_or_else(Fail::unsupported_path)?;
    let lock_key = format!("{mount_accessor}/{role_id}");
    let threshold = st.lockout_threshold;
    if threshold > 0
        && let Some((count, last)) = st.lockouts.get(&lock_key).copied()
    {
        if now.duration_since(last) >= LOCKOUT {
            st.lockouts.remove(&lock_key);
        } else if count >= threshold {
            return Err(Fail::new(403, "permission denied"));
        }
    }
    let checked = check_credentials(st, req, mount, &role_id);
    let ok = match checked {
        Ok(ok) => ok,
        Err(f) => {
            if threshold > 0 && f.errors.first().map(String::as_str) == Some(INVALID) {
                let e = st.lockouts.entry(lock_key).or_insert((0, now));
                e.0 += 1;
                e.1 = now;
            }
            return Err(f);
        }
    };
    st.lockouts.remove(&lock_key);
    let entity_id = st.entity_for(&mount_accessor, &ok.role_id);
    let mut meta = ok.metadata;
    meta.insert("role_name".into(), ok.role_name.clone());
    let mut params = ok.params;
    params.meta = Some(meta);
    params.entity_id = entity_id;
    params.bound_cidrs = ok.token_bound_cidrs;
    params.path = format!("auth/{mount}login");
    params.display_name = "approle".into();
    params.login_role = Some((mount.to_string(), ok.role_name));
    let tok = st.tokens.create(params, now);
    let warnings = unknown_params_warning(req, &["role_id", "secret_id"])
        .into_iter()
        .collect();
    Ok(Outcome::Resp(Resp {
        auth: Some(tok.auth_out(now, Some(tok.ttl))),
        warnings,
        ..Default::default()
    }))
}

const INVALID: &str = "invalid role or secret ID";

fn check_credentials(
    st: &mut State,
    req: &Req,
    mount: &str,
    role_id: &str,
) -> Result<LoginOk, Fail> {
    let now = req.now;
    let remote = req.remote;
    let be = &mut st
        .auth_mounts
        .get_mut(mount)
        .ok_or_else(Fail::unsupported_path)?
        .approle;
    let role_name = be
        .role_ids
        .get(role_id)
        .cloned()
        .ok_or_else(|| Fail::bad(INVALID))?;
    let role = be
        .roles
        .get_mut(&role_name)
        .ok_or_else(|| Fail::bad(INVALID))?;
    let mut metadata = BTreeMap::new();
    let mut token_bound_cidrs = Vec::new();
    if role.bind_secret_id {
        let sid = match req.get("secret_id") {
            Some(v) => util::field_string("secret_id", v)?,
            None => String::new(),
        };
        if sid.is_empty() {
            return Err(Fail::bad("missing secret_id"));
        }
        let Some(entry) = role.live_secret(&sid, now) else {
            return Err(Fail::bad(INVALID));
        };
        let entry = entry.clone();
        let addr = util::go_quote(&remote.to_string());
        if entry.num_uses == 0 {
            if !entry.cidr_list.is_empty() && !util::ip_in_cidrs(remote, &entry.cidr_list) {
                return Err(Fail::bad(format!(
                    "source address {addr} unauthorized through CIDR restrictions on the secret ID"
                )));
            }
        } else {
            // The use is charged before the CIDR check, as in Vault.
            if entry.num_uses == 1 {
                role.remove_secret(&sid);
            } else if let Some(e) = role.secret_ids.get_mut(&sid) {
                e.num_uses -= 1;
                e.last_updated = now;
            }
            if !entry.cidr_list.is_empty() && !util::ip_in_cidrs(remote, &entry.cidr_list) {
                return Err(Fail::bad(format!(
                    "source address {addr} unauthorized by CIDR restrictions on the secret ID: %!w(<nil>)"
                )));
            }
        }
        metadata = entry.metadata.clone();
        token_bound_cidrs = entry.token_bound_cidrs.clone();
    }
    if let Some(cidrs) = role
        .secret_id_bound_cidrs
        .as_ref()
        .filter(|c| !c.is_empty())
        && !util::ip_in_cidrs(remote, cidrs)
    {
        return Err(Fail::bad(format!(
            "source address {} unauthorized by CIDR restrictions on the role: %!w(<nil>)",
            util::go_quote(&remote.to_string())
        )));
    }
    if token_bound_cidrs.is_empty() {
        token_bound_cidrs = role.token_bound_cidrs.clone();
    }
    Ok(LoginOk {
        role_name: role.name.clone(),
        role_id: role_id.to_string(),
        metadata,
        token_bound_cidrs,
        params: TokenParams {
            policies: role.token_policies.clone(),
            no_default_policy: role.token_no_default_policy,
            ttl: role.token_ttl,
            max_ttl: role.token_max_ttl,
            explicit_max_ttl: role.token_explicit_max_ttl,
            period: role.token_period,
            num_uses: role.token_num_uses,
            renewable: true,
            batch: role.token_type == "batch",
            ..Default::default()
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_accepts_json_object_strings_and_kv_pairs() {
        let m = parse_metadata("{\"pod\":\"ns1/web-0\"}").expect("json");
        assert_eq!(m.get("pod").map(String::as_str), Some("ns1/web-0"));
        let m = parse_metadata("A=B, c=d").expect("pairs");
        assert_eq!(m.get("a").map(String::as_str), Some("b"));
        assert!(parse_metadata("novalue").is_err());
        assert!(parse_metadata("").expect("empty").is_empty());
    }

    #[test]
    fn role_names_follow_vaults_pattern() {
        for ok in ["web-app", "a", "a.b_c", "A1"] {
            assert!(valid_role_name(ok), "{ok}");
        }
        for bad in ["", "-a", "a-", "a/b", "a b"] {
            assert!(!valid_role_name(bad), "{bad}");
        }
    }
}

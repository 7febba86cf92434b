//! The token store (`auth/token/...`), per vault-api.md §4: create (+orphan), lookup(-self,
//! -accessor), renew(-self, -accessor), revoke(-self, -accessor, -orphan), LIST accessors.

use jiff::Timestamp;
use serde_json::{Map, Value, json};

use super::core::{Caller, Fail, HResult, Op, Outcome, Req, Resp};
use super::state::{SYS_DEFAULT_TTL, State, Token, TokenParams, add};
use super::util;

/// Entry point for `auth/token/<rest>`.
pub fn handle(st: &mut State, req: &Req, rest: &str, caller: Option<&Caller>) -> HResult {
    let caller = caller.ok_or_else(|| Fail::new(403, "permission denied"))?;
    match (rest, req.op) {
        ("create" | "create-orphan", Op::Update) => {
            create(st, req, caller, rest == "create-orphan")
        }
        ("lookup-self", Op::Read | Op::Update) => lookup(st, req, &caller.token, true),
        ("lookup", Op::Read | Op::Update) => {
            let id = opt_string(req, "token")?.unwrap_or_else(|| caller.token.clone());
            if id.is_empty() {
                return Err(Fail::bad("missing token ID"));
            }
            lookup(st, req, &id, true)
        }
        ("lookup-accessor", Op::Update) => {
            let id = by_accessor(st, req)?;
            lookup(st, req, &id, false)
        }
        ("renew-self", Op::Update) => renew(st, req, &caller.token),
        ("renew", Op::Update) => {
            let id = opt_string(req, "token")?.unwrap_or_default();
            if id.is_empty() {
                return Err(Fail::bad("missing token ID"));
            }
            renew(st, req, &id)
        }
        ("renew-accessor", Op::Update) => {
            let id = by_accessor(st, req)?;
            renew(st, req, &id)
        }
        ("revoke-self", Op::Update) => {
            st.tokens.remove(&caller.token);
            Ok(Outcome::NoContent)
        }
        ("revoke" | "revoke-orphan", Op::Update) => {
            let id = opt_string(req, "token")?.unwrap_or_default();
            if id.is_empty() {
                return Err(Fail::bad("missing token ID"));
            }
            if rest == "revoke-orphan" {
                st.tokens.revoke_orphan(&id);
                return Ok(Outcome::NoContent);
            }
            if let Some(t) = st.tokens.live(&id, req.now)
                && t.batch
            {
                return Err(Fail::bad("batch tokens cannot be revoked"));
            }
            st.tokens.remove(&id);
            Ok(Outcome::NoContent)
        }
        ("revoke-accessor", Op::Update) => {
            let id = by_accessor(st, req)?;
            st.tokens.remove(&id);
            Ok(Outcome::NoContent)
        }
        ("accessors", Op::List) => {
            let mut keys = st.tokens.accessors();
            keys.sort();
            Ok(Outcome::Resp(Resp::data(json!({ "keys": keys }))))
        }
        (
            "create" | "create-orphan" | "lookup-self" | "lookup" | "lookup-accessor"
            | "renew-self" | "renew" | "renew-accessor" | "revoke-self" | "revoke"
            | "revoke-orphan" | "revoke-accessor" | "accessors",
            _,
        ) => Err(Fail::unsupported_op()),
        _ => Err(Fail::unsupported_path()),
    }
}

fn opt_string(req: &Req, field: &str) -> Result<Option<String>, Fail> {
    match req.get(field) {
        Some(v) => Ok(Some(util::field_string(field, v)?).filter(|s| !s.is_empty())),
        None => Ok(None),
    }
}

fn by_accessor(st: &mut State, req: &Req) -> Result<String, Fail> {
    let acc = opt_string(req, "accessor")?.ok_or_else(|| Fail::bad("missing accessor"))?;
    st.tokens
        .id_for_accessor(&acc, req.now)
        .ok_or_else(|| Fail::bad("invalid accessor"))
}

fn create(st: &mut State, req: &Req, caller: &Caller, orphan_endpoint: bool) -> HResult {
    let d = &req.data;
    let now = req.now;
    let get_bool = |k: &str, default: bool| -> Result<bool, Fail> {
        d.get(k)
            .map(|v| util::field_bool(k, v))
            .transpose()
            .map(|b| b.unwrap_or(default))
            .map_err(Fail::field)
    };
    let no_parent = get_bool("no_parent", false)?;
    if no_parent && !caller.is_root {
        return Err(Fail::bad(
            "root or sudo privileges required to create orphan token",
        ));
    }
    let mut policies = match d.get("policies") {
        Some(v) => util::field_comma_slice("policies", v)?,
        None => Vec::new(),
    };
    let no_default_policy = get_bool("no_default_policy", false)?;
    if policies.is_empty() {
        policies = caller
            .policies
            .iter()
            .filter(|p| !(no_default_policy && *p == "default"))
            .cloned()
            .collect();
    } else if !caller.is_root {
        let wanted = util::sanitize_policies(&policies, false);
        if wanted
            .iter()
            .any(|p| p != "default" && !caller.policies.contains(p))
        {
            return Err(Fail::bad("child policies must be subset of parent"));
        }
    }
    let meta = match d.get("meta") {
        Some(v) => {
            let m = util::field_string_map("meta", v)?;
            (!m.is_empty()).then_some(m)
        }
        None => None,
    };
    let dur = |k: &str| -> Result<i64, Fail> {
        d.get(k)
            .map(|v| util::field_duration(k, v))
            .transpose()
            .map(|x| x.unwrap_or(0))
            .map_err(Fail::field)
    };
    let ttl = match dur("ttl")? {
        0 => dur("lease")?,
        t => t,
    };
    let explicit_max_ttl = dur("explicit_max_ttl")?;
    let period = dur("period")?;
    let num_uses = match d.get("num_uses") {
        Some(v) => util::field_int("num_uses", v)?,
        None => 0,
    };
    if num_uses < 0 {
        return Err(Fail::bad("number of uses cannot be negative"));
    }
    let batch = match d
        .get("type")
        .map(|v| util::field_string("type", v))
        .transpose()?
    {
        None => false,
        Some(t) => match t.as_str() {
            "" | "service" => false,
            "batch" => true,
            other => {
                return Err(Fail::bad(format!(
                    "invalid 'type' value {}",
                    util::go_quote(other)
                )));
            }
        },
    };
    let id = opt_string(req, "id")?;
    if let Some(id) = &id {
        if !caller.is_root {
            return Err(Fail::bad(
                "root or sudo privileges required to specify token id",
            ));
        }
        if id.contains('.') {
            return Err(Fail::bad("token IDs can not contain a period"));
        }
        if st.tokens.live(id, now).is_some() {
            return Err(Fail::bad("cannot create a token with a duplicate ID"));
        }
    }
    let display_name = match opt_string(req, "display_name")? {
        Some(n) => format!("token-{}", n.to_lowercase()),
        None => "token".into(),
    };
    let orphan = orphan_endpoint || no_parent;
    let tok = st.tokens.create(
        TokenParams {
            id,
            policies,
            no_default_policy,
            meta,
            display_name,
            path: req.path.clone(),
            ttl,
            explicit_max_ttl,
            period,
            num_uses,
            parent: (!orphan).then(|| caller.token.clone()),
            renewable: get_bool("renewable", true)?,
            batch,
            ..Default::default()
        },
        now,
    );
    let ld = tok.ttl;
    Ok(Outcome::Resp(Resp {
        auth: Some(tok.auth_out(now, Some(ld))),
        ..Default::default()
    }))
}

fn lookup_data(t: &Token, now: Timestamp, show_id: bool) -> Value {
    let mut m = Map::new();
    m.insert("accessor".into(), json!(t.accessor));
    m.insert("creation_time".into(), json!(t.creation.as_second()));
    m.insert("creation_ttl".into(), json!(t.ttl));
    m.insert("display_name".into(), json!(t.display_name));
    m.insert("entity_id".into(), json!(t.entity_id));
    m.insert(
        "expire_time".into(),
        t.expire
            .map_or(Value::Null, |e| json!(util::rfc3339nano(e))),
    );
    m.insert("explicit_max_ttl".into(), json!(t.explicit_max_ttl));
    m.insert("id".into(), json!(if show_id { t.id.as_str() } else { "" }));
    m.insert(
        "meta".into(),
        t.meta.as_ref().map_or(Value::Null, |m| json!(m)),
    );
    m.insert("num_uses".into(), json!(t.num_uses.max(0)));
    m.insert("orphan".into(), json!(t.parent.is_none()));
    m.insert("path".into(), json!(t.path));
    m.insert("policies".into(), json!(t.policies));
    m.insert("ttl".into(), json!(t.remaining(now)));
    m.insert(
        "type".into(),
        json!(if t.batch { "batch" } else { "service" }),
    );
    if t.expire.is_some() {
        m.insert("issue_time".into(), json!(util::rfc3339nano(t.creation)));
        m.insert("renewable".into(), json!(t.renewable));
    }
    if !t.bound_cidrs.is_empty() {
        m.insert("bound_cidrs".into(), json!(t.bound_cidrs));
    }
    if t.period > 0 {
        m.insert("period".into(), json!(t.period));
    }
    if let Some(r) = t.last_renewal {
        m.insert("last_renewal_time".into(), json!(r.as_second()));
        m.insert("last_renewal".into(), json!(util::rfc3339nano(r)));
    }
    Value::Object(m)
}

fn lookup(st: &mut State, req: &Req, id: &str, show_id: bool) -> HResult {
    let now = req.now;
    match st.tokens.live_tainted(id, now) {
        Some(t) => Ok(Outcome::Resp(Resp::data(lookup_data(t, now, show_id)))),
        None => Err(Fail::new(403, "bad token")),
    }
}

fn renew(st: &mut State, req: &Req, id: &str) -> HResult {
    let now = req.now;
    let increment = match req.get("increment") {
        Some(v) => util::field_duration("increment", v)?,
        None => 0,
    };
    let login_role = match st.tokens.live(id, now) {
        None => return Err(Fail::bad("token not found")),
        Some(t) if t.batch => return Err(Fail::bad("batch tokens cannot be renewed")),
        Some(t) if t.expire.is_none() || !t.renewable => {
            return Err(Fail::bad("lease is not renewable"));
        }
        Some(t) => t.login_role.clone(),
    };
    let mut base_ttl = None;
    if let Some((mount, role)) = login_role {
        // The issuing backend re-reads the role; its TTL is the renewal's base.
        let m = st.auth_mounts.get(&mount);
        let kubernetes = m.is_some_and(|m| m.info.kind == "kubernetes");
        let ttls = m.and_then(|m| {
            if kubernetes {
                m.kubernetes.role_ttls(&role)
            } else {
                m.approle.role_ttls(&role)
            }
        });
        match ttls {
            Some((ttl, _)) => base_ttl = Some(if ttl > 0 { ttl } else { SYS_DEFAULT_TTL }),
            None => {
                // The Kubernetes plugin formats the name with %s, AppRole with %q.
                let name = if kubernetes {
                    role.clone()
                } else {
                    util::go_quote(&role)
                };
                return Err(Fail::multi(
                    500,
                    &format!("failed to renew entry: role {name} does not exist during renewal"),
                ));
            }
        }
    }
    let t = st
        .tokens
        .live(id, now)
        .ok_or_else(|| Fail::bad("token not found"))?;
    let wanted = if increment > 0 {
        increment
    } else if t.period > 0 {
        t.period
    } else {
        base_ttl.unwrap_or(t.ttl)
    };
    let mut new_expire = add(now, wanted);
    let mut warnings = Vec::new();
    if let Some(max) = t.max_expire
        && new_expire > max
    {
        new_expire = max;
        let left = (max.as_second() - now.as_second()).max(0);
        warnings.push(format!(
            "TTL of {} exceeded the effective max_ttl of {}; TTL value is capped accordingly",
            util::go_quote(&util::go_duration(wanted)),
            util::go_quote(&util::go_duration(left))
        ));
    }
    t.expire = Some(new_expire);
    t.last_renewal = Some(now);
    let ttl = (new_expire.as_second() - now.as_second()).max(0);
    let auth = t.auth_out(now, Some(ttl));
    Ok(Outcome::Resp(Resp {
        auth: Some(auth),
        warnings,
        ..Default::default()
    }))
}

//! The system backend (`sys/...`): health, seal/unseal, auth and secret mounts, ACL policies,
//! response-wrapping endpoints, capabilities-self and the UI mount lookup the Vault CLI uses.

use std::collections::BTreeMap;
use std::sync::Arc;

use base64::Engine;
use serde_json::{Value, json};

use super::approle::AppRoleBackend;
use super::core::{
    Caller, Fail, HResult, Op, Outcome, Req, Resp, live_wrapping, wrapping_token_of,
};
use super::kubernetes::KubernetesBackend;
use super::kv::KvBackend;
use super::policy;
use super::state::{AuthMount, MountInfo, SecretMount, State, TokenParams, Wrapped};
use super::util;
use super::wire::{Envelope, ObjWriter, WrapInfo};

/// The Vault version we report.
pub const VERSION: &str = "1.19.0";

/// Entry point for `sys/<rest>`.
pub fn handle(st: &mut State, req: &Req, rest: &str, caller: Option<&Caller>) -> HResult {
    match rest {
        "health" => return health(st, req),
        "seal-status" => return Ok(Outcome::Raw(200, seal_status(st) + "\n")),
        "unseal" => return unseal(st, req),
        "leader" => {
            return Ok(Outcome::Raw(
                200,
                ObjWriter::new()
                    .bool("ha_enabled", false)
                    .bool("is_self", false)
                    .str("active_time", util::GO_ZERO_TIME)
                    .str("leader_address", "")
                    .str("leader_cluster_address", "")
                    .bool("performance_standby", false)
                    .int("performance_standby_last_remote_wal", 0)
                    .finish()
                    + "\n",
            ));
        }
        "wrapping/lookup" => return wrapping_lookup(st, req),
        _ => {}
    }
    if let Some(path) = rest.strip_prefix("internal/ui/mounts/") {
        return ui_mount(st, path);
    }
    let caller = caller.ok_or_else(|| Fail::new(403, "permission denied"))?;
    match (rest, req.op) {
        ("seal", Op::Update) => {
            st.sealed = true;
            Ok(Outcome::NoContent)
        }
        ("auth", Op::Read) => Ok(Outcome::Resp(Resp::data(list_auth(st)))),
        ("mounts", Op::Read) => Ok(Outcome::Resp(Resp::data(list_mounts(st)))),
        ("policy", Op::Read | Op::List) => {
            let names = policy_names(st);
            Ok(Outcome::Resp(Resp::data(
                json!({ "keys": names, "policies": names }),
            )))
        }
        ("policies/acl", Op::List) => Ok(Outcome::Resp(Resp::data(
            json!({ "keys": policy_names(st) }),
        ))),
        ("wrapping/unwrap", Op::Update) => {
            // First party (no body token): the request's own token, whose single use this
            // request just spent. Third party: the body token must still be fully usable.
            let third_party = req.data.contains_key("token");
            let tok = wrapping_token_of(req)?;
            let w = live_wrapping(st, &tok, req.now, !third_party)?;
            st.tokens.remove(&tok);
            Ok(Outcome::Raw(200, w.response.clone()))
        }
        ("wrapping/wrap", Op::Update) => {
            if req.wrap_ttl.is_none() {
                return Err(Fail::bad("endpoint requires response wrapping to be used"));
            }
            Ok(Outcome::Resp(Resp::data(Value::Object(req.data.clone()))))
        }
        ("wrapping/rewrap", Op::Update) => rewrap(st, req),
        ("capabilities-self", Op::Update) => capabilities_self(st, req, caller),
        _ => {
            if let Some(p) = rest.strip_prefix("auth/") {
                return auth_mount(st, req, p);
            }
            if let Some(p) = rest.strip_prefix("mounts/") {
                return secret_mount(st, req, p);
            }
            if let Some(name) = rest.strip_prefix("policy/") {
                return policy_endpoint(st, req, name, false);
            }
            if let Some(name) = rest.strip_prefix("policies/acl/") {
                return policy_endpoint(st, req, name, true);
            }
            match rest {
                "seal" | "auth" | "mounts" | "policy" | "policies/acl" | "wrapping/unwrap"
                | "wrapping/wrap" | "wrapping/rewrap" | "capabilities-self" => {
                    Err(Fail::unsupported_op())
                }
                _ => Err(Fail::unsupported_path()),
            }
        }
    }
}

fn health(st: &State, req: &Req) -> HResult {
    let code = |name: &str, default: u16| -> Result<u16, Fail> {
        match req.get(name) {
            None => Ok(default),
            Some(v) => v
                .as_str()
                .and_then(|s| s.parse().ok())
                .or_else(|| v.as_u64().and_then(|n| u16::try_from(n).ok()))
                .ok_or_else(|| Fail::empty(400)),
        }
    };
    let status = if st.sealed {
        code("sealedcode", 503)?
    } else {
        code("activecode", 200)?
    };
    let body = ObjWriter::new()
        .bool("initialized", true)
        .bool("sealed", st.sealed)
        .bool("standby", false)
        .bool("performance_standby", false)
        .str("replication_performance_mode", "disabled")
        .str("replication_dr_mode", "disabled")
        .int("server_time_utc", req.now.as_second())
        .str("version", VERSION)
        .bool("enterprise", false)
        .str("cluster_name", &st.cluster_name)
        .str("cluster_id", &st.cluster_id)
        .int("echo_duration_ms", 0)
        .int("clock_skew_ms", 0)
        .int("replication_primary_canary_age_ms", 0)
        .finish();
    Ok(Outcome::Raw(status, body + "\n"))
}

fn seal_status(st: &State) -> String {
    ObjWriter::new()
        .str("type", "shamir")
        .bool("initialized", true)
        .bool("sealed", st.sealed)
        .int("t", 1)
        .int("n", 1)
        .int("progress", 0)
        .str("nonce", "")
        .str("version", VERSION)
        .str("build_date", "2025-03-04T17:49:10Z")
        .bool("migration", false)
        .str("cluster_name", &st.cluster_name)
        .str("cluster_id", &st.cluster_id)
        .bool("recovery_seal", false)
        .str("storage_type", "inmem")
        .finish()
}

fn unseal(st: &mut State, req: &Req) -> HResult {
    if req.op != Op::Update {
        return Err(Fail::unsupported_op());
    }
    let reset = req
        .get("reset")
        .map(|v| util::field_bool("reset", v))
        .transpose()?
        .unwrap_or(false);
    let key = req.get("key").and_then(Value::as_str).unwrap_or_default();
    if !reset && key.is_empty() {
        return Err(Fail::bad(
            "'key' must be specified in request body as JSON, or 'reset' set to true",
        ));
    }
    if !reset {
        if key != st.unseal_key {
            return Err(Fail::bad("Unseal failed, invalid key"));
        }
        st.sealed = false;
    }
    Ok(Outcome::Raw(200, seal_status(st) + "\n"))
}

fn mount_entry(info: &MountInfo, local: bool) -> Value {
    let auth = matches!(info.kind.as_str(), "approle" | "kubernetes" | "token");
    let mut config = json!({
        "default_lease_ttl": 0,
        "force_no_cache": false,
        "max_lease_ttl": 0,
    });
    if auth {
        config["token_type"] = json!("default-service");
    }
    json!({
        "accessor": info.accessor,
        "config": config,
        "description": info.description,
        "external_entropy_access": false,
        "local": local,
        "options": info.options,
        "plugin_version": "",
        "running_plugin_version": format!("v{VERSION}+builtin.vault"),
        "running_sha256": "",
        "seal_wrap": false,
        "type": info.kind,
        "uuid": info.uuid,
    })
}

fn builtin(kind: &str, description: &str, accessor: &str) -> MountInfo {
    MountInfo {
        kind: kind.into(),
        description: description.into(),
        accessor: accessor.into(),
        uuid: util::uuid(),
        options: None,
    }
}

fn list_auth(st: &State) -> Value {
    let mut m = serde_json::Map::new();
    m.insert(
        "token/".into(),
        mount_entry(
            &builtin("token", "token based credentials", &st.token_mount_accessor),
            false,
        ),
    );
    for (k, v) in &st.auth_mounts {
        m.insert(k.clone(), mount_entry(&v.info, false));
    }
    Value::Object(m)
}

fn list_mounts(st: &State) -> Value {
    let mut m = serde_json::Map::new();
    m.insert(
        "sys/".into(),
        mount_entry(
            &builtin(
                "system",
                "system endpoints used for control, policy and debugging",
                "system_00000000",
            ),
            false,
        ),
    );
    m.insert(
        "cubbyhole/".into(),
        mount_entry(
            &builtin(
                "cubbyhole",
                "per-token private secret storage",
                "cubbyhole_00000000",
            ),
            true,
        ),
    );
    m.insert(
        "identity/".into(),
        mount_entry(
            &builtin("identity", "identity store", "identity_00000000"),
            false,
        ),
    );
    for (k, v) in &st.secret_mounts {
        m.insert(k.clone(), mount_entry(&v.info, false));
    }
    Value::Object(m)
}

fn mount_key(path: &str) -> String {
    format!("{}/", path.trim_matches('/'))
}

fn mount_options(req: &Req) -> Result<BTreeMap<String, String>, Fail> {
    match req.get("options") {
        Some(v) => util::field_string_map("options", v).map_err(Fail::field),
        None => Ok(BTreeMap::new()),
    }
}

fn in_use(st: &State, key: &str, auth: bool) -> bool {
    let taken = |k: &str| key.starts_with(k) || k.starts_with(key);
    if auth {
        key == "token/" || st.auth_mounts.keys().any(|k| taken(k))
    } else {
        ["sys/", "cubbyhole/", "identity/", "auth/"]
            .iter()
            .any(|k| taken(k))
            || st.secret_mounts.keys().any(|k| taken(k))
    }
}

fn auth_mount(st: &mut State, req: &Req, path: &str) -> HResult {
    let key = mount_key(path);
    match req.op {
        Op::Update => {
            let kind = match req.get("type") {
                Some(v) => util::field_string("type", v)?,
                None => String::new(),
            };
            if kind.is_empty() {
                return Err(Fail::bad("backend type must be specified as a string"));
            }
            if in_use(st, &key, true) {
                return Err(Fail::bad(format!("path is already in use at {key}")));
            }
            if kind != "approle" && kind != "kubernetes" {
                return Err(Fail::bad(format!(
                    "plugin not found in the catalog: {kind}"
                )));
            }
            let description = match req.get("description") {
                Some(v) => util::field_string("description", v)?,
                None => String::new(),
            };
            let options = mount_options(req)?;
            st.auth_mounts.insert(
                key,
                AuthMount {
                    info: MountInfo {
                        kind: kind.clone(),
                        description,
                        accessor: format!("auth_{kind}_{}", &util::uuid()[..8]),
                        uuid: util::uuid(),
                        options: (!options.is_empty()).then_some(options),
                    },
                    approle: AppRoleBackend::default(),
                    kubernetes: KubernetesBackend::default(),
                },
            );
            Ok(Outcome::NoContent)
        }
        Op::Delete => {
            if st.auth_mounts.remove(&key).is_some() {
                // Tokens issued through the mount are revoked with it.
                st.tokens.revoke_path_prefix(&format!("auth/{key}"));
            }
            Ok(Outcome::NoContent)
        }
        Op::Read => match st.auth_mounts.get(&key) {
            Some(m) => Ok(Outcome::Resp(Resp::data(mount_entry(&m.info, false)))),
            None => Err(Fail::bad(format!("No auth engine at {key}"))),
        },
        _ => Err(Fail::unsupported_op()),
    }
}

fn secret_mount(st: &mut State, req: &Req, path: &str) -> HResult {
    let key = mount_key(path);
    match req.op {
        Op::Update => {
            let kind = match req.get("type") {
                Some(v) => util::field_string("type", v)?,
                None => String::new(),
            };
            if kind.is_empty() {
                return Err(Fail::bad("backend type must be specified as a string"));
            }
            if in_use(st, &key, false) {
                return Err(Fail::bad(format!("path is already in use at {key}")));
            }
            let mut options = mount_options(req)?;
            let version = match kind.as_str() {
                "kv-v2" => 2,
                "kv" => match options.get("version").map(String::as_str) {
                    None | Some("") | Some("1") => 1,
                    Some("2") => 2,
                    Some(other) => {
                        return Err(Fail::bad(format!("invalid version: {other}")));
                    }
                },
                other => {
                    return Err(Fail::bad(format!(
                        "plugin not found in the catalog: {other}"
                    )));
                }
            };
            options.insert("version".into(), version.to_string());
            let description = match req.get("description") {
                Some(v) => util::field_string("description", v)?,
                None => String::new(),
            };
            st.secret_mounts.insert(
                key,
                SecretMount {
                    info: MountInfo {
                        kind: "kv".into(),
                        description,
                        accessor: format!("kv_{}", &util::uuid()[..8]),
                        uuid: util::uuid(),
                        options: Some(options),
                    },
                    kv: KvBackend::new(version),
                },
            );
            Ok(Outcome::NoContent)
        }
        Op::Delete => {
            st.secret_mounts.remove(&key);
            Ok(Outcome::NoContent)
        }
        Op::Read => match st.secret_mounts.get(&key) {
            Some(m) => Ok(Outcome::Resp(Resp::data(mount_entry(&m.info, false)))),
            None => Err(Fail::bad(format!("No secret engine mount at {key}"))),
        },
        _ => Err(Fail::unsupported_op()),
    }
}

fn ui_mount(st: &State, path: &str) -> HResult {
    let full = format!("{path}/");
    if let Some((k, m)) = st
        .secret_mounts
        .iter()
        .filter(|(k, _)| full.starts_with(k.as_str()))
        .max_by_key(|(k, _)| k.len())
    {
        let mut v = mount_entry(&m.info, false);
        if let Value::Object(o) = &mut v {
            o.insert("path".into(), json!(k));
        }
        return Ok(Outcome::Resp(Resp::data(v)));
    }
    Err(Fail::bad(format!(
        "preflight capability check returned 403, please ensure client's policies grant access to path {}",
        util::go_quote(&full)
    )))
}

fn policy_names(st: &State) -> Vec<String> {
    let mut names: Vec<String> = st
        .policies
        .keys()
        .filter(|k| *k != "response-wrapping")
        .cloned()
        .chain(std::iter::once("root".to_string()))
        .collect();
    names.sort();
    names
}

fn policy_endpoint(st: &mut State, req: &Req, name: &str, acl_api: bool) -> HResult {
    let name = name.trim().to_lowercase();
    let text_key = if acl_api { "policy" } else { "rules" };
    match req.op {
        Op::Read => {
            if name == "root" {
                return Ok(Outcome::Resp(Resp::data(
                    json!({ "name": "root", text_key: "" }),
                )));
            }
            match st
                .policies
                .get(&name)
                .filter(|_| name != "response-wrapping")
            {
                Some(p) => Ok(Outcome::Resp(Resp::data(
                    json!({ "name": p.name, text_key: p.raw }),
                ))),
                None => Err(Fail::empty(404)),
            }
        }
        Op::Update => {
            let mut warnings = Vec::new();
            let raw = match (req.get("policy"), req.get("rules")) {
                (Some(v), _) => util::field_string("policy", v)?,
                (None, Some(v)) if !acl_api => {
                    warnings.push("'rules' is deprecated, please use 'policy' instead".to_string());
                    util::field_string("rules", v)?
                }
                _ => String::new(),
            };
            if raw.trim().is_empty() {
                return Err(Fail::bad("'policy' parameter not supplied or empty"));
            }
            if name == "root" || name == "response-wrapping" {
                return Err(Fail::bad(format!(
                    "cannot update {} policy",
                    util::go_quote(&name)
                )));
            }
            let text = match base64::engine::general_purpose::STANDARD.decode(raw.trim()) {
                Ok(bytes) => String::from_utf8(bytes).unwrap_or(raw),
                Err(_) => raw,
            };
            let parsed = policy::parse(&name, &text)
                .map_err(|e| Fail::bad(format!("failed to parse policy: {e}")))?;
            st.policies.insert(name, parsed);
            if warnings.is_empty() {
                Ok(Outcome::NoContent)
            } else {
                Ok(Outcome::Resp(Resp {
                    warnings,
                    ..Default::default()
                }))
            }
        }
        Op::Delete => {
            match name.as_str() {
                "default" => return Err(Fail::bad("cannot delete default policy")),
                "root" => return Err(Fail::bad("cannot delete \"root\" policy")),
                "response-wrapping" => {
                    return Err(Fail::bad("cannot delete \"response-wrapping\" policy"));
                }
                _ => {}
            }
            st.policies.remove(&name);
            Ok(Outcome::NoContent)
        }
        _ => Err(Fail::unsupported_op()),
    }
}

fn wrapping_lookup(st: &mut State, req: &Req) -> HResult {
    if !matches!(req.op, Op::Update | Op::Read) {
        return Err(Fail::unsupported_op());
    }
    let tok = wrapping_token_of(req)?;
    let w = live_wrapping(st, &tok, req.now, false)?;
    Ok(Outcome::Resp(Resp::data(json!({
        "creation_path": w.creation_path,
        "creation_time": util::rfc3339nano(w.creation_time),
        "creation_ttl": w.creation_ttl,
    }))))
}

fn rewrap(st: &mut State, req: &Req) -> HResult {
    let tok = wrapping_token_of(req)?;
    let old = live_wrapping(st, &tok, req.now, false)?;
    st.tokens.remove(&tok);
    let mut t = st.tokens.create(
        TokenParams {
            policies: vec!["response-wrapping".into()],
            no_default_policy: true,
            ttl: old.creation_ttl,
            explicit_max_ttl: old.creation_ttl,
            num_uses: 1,
            path: old.creation_path.clone(),
            ..Default::default()
        },
        req.now,
    );
    t.wrap = Some(Arc::new(Wrapped {
        response: old.response.clone(),
        creation_time: req.now,
        creation_ttl: old.creation_ttl,
        creation_path: old.creation_path.clone(),
        wrapped_accessor: old.wrapped_accessor.clone(),
    }));
    let info = WrapInfo {
        token: t.id.clone(),
        accessor: t.accessor.clone(),
        ttl: old.creation_ttl,
        creation_time: util::rfc3339nano(req.now),
        creation_path: old.creation_path.clone(),
        wrapped_accessor: old.wrapped_accessor.clone(),
    };
    st.tokens.insert(t);
    let env = Envelope {
        wrap_info: Some(info),
        ..Default::default()
    };
    Ok(Outcome::Raw(200, env.encode() + "\n"))
}

fn cap_names(bits: u8, root: bool) -> Vec<&'static str> {
    if root {
        return vec!["root"];
    }
    if bits == 0 {
        return vec!["deny"];
    }
    let mut out = Vec::new();
    for (b, n) in [
        (policy::cap::CREATE, "create"),
        (policy::cap::DELETE, "delete"),
        (policy::cap::LIST, "list"),
        (policy::cap::PATCH, "patch"),
        (policy::cap::READ, "read"),
        (policy::cap::SUDO, "sudo"),
        (policy::cap::UPDATE, "update"),
    ] {
        if bits & b != 0 {
            out.push(n);
        }
    }
    out
}

fn capabilities_self(st: &State, req: &Req, caller: &Caller) -> HResult {
    let mut paths = match req.get("paths") {
        Some(v) => util::field_comma_slice("paths", v)?,
        None => Vec::new(),
    };
    if let Some(v) = req.get("path") {
        paths.extend(util::field_comma_slice("path", v)?);
    }
    if paths.is_empty() {
        return Err(Fail::bad("paths must be supplied"));
    }
    let mut out = serde_json::Map::new();
    let mut all: Vec<&str> = Vec::new();
    for p in &paths {
        let pols = caller.policies.iter().filter_map(|n| st.policies.get(n));
        let caps = cap_names(policy::capabilities(pols, p), caller.is_root);
        all.extend(caps.iter());
        out.insert(p.clone(), json!(caps));
    }
    all.sort();
    all.dedup();
    out.insert("capabilities".into(), json!(all));
    Ok(Outcome::Resp(Resp::data(Value::Object(out))))
}

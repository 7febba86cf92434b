//! KV secrets engine, version 1 and 2 (vault-api.md §5).
//!
//! v1: `<path>` read/write/delete/list; reads put the mount default TTL (or a stored `ttl`/`lease`)
//! into `lease_duration`.
//! v2: `data/<path>` (read `?version=N`, write with `options.cas`, soft delete), `metadata/<path>`
//! (read/list/delete/update), `delete|undelete|destroy/<path>`, `config`. Reading a deleted or
//! destroyed version answers 404 with a full envelope; a v1-style path on a v2 mount answers 404
//! with the "Invalid path for a versioned K/V secrets engine" warning.

use std::collections::{BTreeMap, BTreeSet};

use jiff::Timestamp;
use serde_json::{Map, Value, json};

use super::core::{Fail, HResult, Op, Outcome, Req, Resp};
use super::state::SYS_DEFAULT_TTL;
use super::util;
use super::wire::Envelope;

const DEFAULT_MAX_VERSIONS: u64 = 10;
const V2_PATH_WARNING: &str = "Invalid path for a versioned K/V secrets engine. See the API docs for the appropriate API endpoints to use. If using the Vault CLI, use 'vault kv get' for this operation.";

#[derive(Debug, Clone)]
struct Version {
    data: Map<String, Value>,
    created: Timestamp,
    deletion: Option<Timestamp>,
    destroyed: bool,
}

impl Version {
    fn metadata(&self, n: u64, custom: &Option<BTreeMap<String, String>>) -> Value {
        json!({
            "created_time": util::rfc3339nano(self.created),
            "custom_metadata": custom,
            "deletion_time": self.deletion.map_or(String::new(), util::rfc3339nano),
            "destroyed": self.destroyed,
            "version": n,
        })
    }
    fn gone(&self, now: Timestamp) -> bool {
        self.destroyed || self.deletion.is_some_and(|d| d <= now)
    }
}

#[derive(Debug, Clone)]
struct Secret {
    versions: BTreeMap<u64, Version>,
    current: u64,
    created: Timestamp,
    updated: Timestamp,
    max_versions: u64,
    cas_required: bool,
    custom_metadata: Option<BTreeMap<String, String>>,
}

/// One KV mount.
#[derive(Debug)]
pub struct KvBackend {
    version: u8,
    v1: BTreeMap<String, Map<String, Value>>,
    v2: BTreeMap<String, Secret>,
}

fn list_keys<'a>(keys: impl Iterator<Item = &'a String>, prefix: &str) -> Vec<String> {
    let prefix = if prefix.is_empty() {
        String::new()
    } else {
        format!("{}/", prefix.trim_end_matches('/'))
    };
    let mut out = BTreeSet::new();
    for k in keys {
        if let Some(rest) = k.strip_prefix(&prefix) {
            match rest.split_once('/') {
                Some((dir, _)) => out.insert(format!("{dir}/")),
                None => out.insert(rest.to_string()),
            };
        }
    }
    out.into_iter().collect()
}

impl KvBackend {
    /// A backend of the given version (1 or 2).
    pub fn new(version: u8) -> Self {
        KvBackend {
            version,
            v1: BTreeMap::new(),
            v2: BTreeMap::new(),
        }
    }

    /// Existence check (create vs update).
    pub fn exists(&self, rest: &str) -> Option<bool> {
        if self.version == 1 {
            return Some(self.v1.contains_key(rest));
        }
        let p = rest
            .strip_prefix("data/")
            .or_else(|| rest.strip_prefix("metadata/"))?;
        Some(self.v2.contains_key(p))
    }

    /// Serve `<mount>/<rest>`.
    pub fn handle(&mut self, req: &Req, rest: &str) -> HResult {
        if self.version == 1 {
            self.handle_v1(req, rest)
        } else {
            self.handle_v2(req, rest)
        }
    }

    fn handle_v1(&mut self, req: &Req, rest: &str) -> HResult {
        match req.op {
            Op::Read => {
                let data = self.v1.get(rest).ok_or_else(|| Fail::empty(404))?;
                let ttl = ["ttl", "lease"]
                    .iter()
                    .find_map(|k| data.get(*k))
                    .and_then(|v| util::field_duration("ttl", v).ok())
                    .filter(|t| *t > 0)
                    .unwrap_or(SYS_DEFAULT_TTL);
                Ok(Outcome::Resp(Resp {
                    data: Some(Value::Object(data.clone())),
                    lease_duration: ttl,
                    ..Default::default()
                }))
            }
            Op::List => Ok(Outcome::Resp(Resp::data(
                json!({ "keys": list_keys(self.v1.keys(), rest) }),
            ))),
            Op::Update => {
                if req.data.is_empty() {
                    return Err(Fail::multi(500, "missing data fields"));
                }
                if rest.is_empty() {
                    return Err(Fail::unsupported_path());
                }
                self.v1.insert(rest.to_string(), req.data.clone());
                Ok(Outcome::NoContent)
            }
            Op::Delete => {
                self.v1.remove(rest);
                Ok(Outcome::NoContent)
            }
            _ => Err(Fail::unsupported_op()),
        }
    }

    fn handle_v2(&mut self, req: &Req, rest: &str) -> HResult {
        let now = req.now;
        if rest == "config" {
            return match req.op {
                Op::Read => Ok(Outcome::Resp(Resp::data(json!({
                    "cas_required": false,
                    "delete_version_after": "0s",
                    "max_versions": 0,
                })))),
                Op::Update => Ok(Outcome::NoContent),
                _ => Err(Fail::unsupported_op()),
            };
        }
        let (kind, path) = rest.split_once('/').unwrap_or((rest, ""));
        match (kind, req.op) {
            ("data", Op::Read) => {
                let secret = self.v2.get(path).ok_or_else(|| Fail::empty(404))?;
                let want = match req.get("version") {
                    Some(v) => util::field_int("version", v)? as u64,
                    None => 0,
                };
                let n = if want == 0 { secret.current } else { want };
                let v = secret.versions.get(&n).ok_or_else(|| Fail::empty(404))?;
                let metadata = v.metadata(n, &secret.custom_metadata);
                if v.gone(now) {
                    let env = Envelope {
                        request_id: req.request_id.clone(),
                        data: Some(json!({ "data": null, "metadata": metadata })),
                        ..Default::default()
                    };
                    return Ok(Outcome::Raw(404, env.encode()));
                }
                Ok(Outcome::Resp(Resp::data(json!({
                    "data": v.data,
                    "metadata": metadata,
                }))))
            }
            ("data", Op::Update) => {
                let Some(Value::Object(data)) = req.get("data") else {
                    return Err(Fail::bad("no data provided"));
                };
                let cas = req
                    .get("options")
                    .and_then(|o| o.get("cas"))
                    .map(|v| util::field_int("cas", v))
                    .transpose()?;
                let secret = self.v2.entry(path.to_string()).or_insert_with(|| Secret {
                    versions: BTreeMap::new(),
                    current: 0,
                    created: now,
                    updated: now,
                    max_versions: 0,
                    cas_required: false,
                    custom_metadata: None,
                });
                if secret.cas_required && cas.is_none() {
                    return Err(Fail::bad("check-and-set parameter required for this call"));
                }
                if let Some(cas) = cas
                    && cas as u64 != secret.current
                {
                    return Err(Fail::bad(
                        "check-and-set parameter did not match the current version",
                    ));
                }
                secret.current += 1;
                secret.updated = now;
                let n = secret.current;
                secret.versions.insert(
                    n,
                    Version {
                        data: data.clone(),
                        created: now,
                        deletion: None,
                        destroyed: false,
                    },
                );
                let max = if secret.max_versions == 0 {
                    DEFAULT_MAX_VERSIONS
                } else {
                    secret.max_versions
                };
                while secret.versions.len() as u64 > max {
                    let Some(oldest) = secret.versions.keys().next().copied() else {
                        break;
                    };
                    secret.versions.remove(&oldest);
                }
                let md = secret.versions[&n].metadata(n, &secret.custom_metadata);
                Ok(Outcome::Resp(Resp::data(md)))
            }
            ("data", Op::Delete) => {
                if let Some(s) = self.v2.get_mut(path) {
                    let cur = s.current;
                    if let Some(v) = s.versions.get_mut(&cur)
                        && v.deletion.is_none()
                    {
                        v.deletion = Some(now);
                    }
                }
                Ok(Outcome::NoContent)
            }
            ("delete" | "undelete" | "destroy", Op::Update) => {
                let versions: Vec<u64> = match req.get("versions") {
                    Some(v) => util::field_comma_slice("versions", v)?
                        .iter()
                        .filter_map(|s| s.parse().ok())
                        .collect(),
                    None => Vec::new(),
                };
                if versions.is_empty() {
                    return Err(Fail::bad("no version number provided"));
                }
                if let Some(s) = self.v2.get_mut(path) {
                    for n in versions {
                        if let Some(v) = s.versions.get_mut(&n) {
                            match kind {
                                "delete" => {
                                    if v.deletion.is_none() {
                                        v.deletion = Some(now);
                                    }
                                }
                                "undelete" => {
                                    if !v.destroyed {
                                        v.deletion = None;
                                    }
                                }
                                _ => {
                                    v.destroyed = true;
                                    v.data = Map::new();
                                }
                            }
                        }
                    }
                }
                Ok(Outcome::NoContent)
            }
            ("metadata", Op::Read) => {
                let s = self.v2.get(path).ok_or_else(|| Fail::empty(404))?;
                let versions: Map<String, Value> = s
                    .versions
                    .iter()
                    .map(|(n, v)| {
                        (
                            n.to_string(),
                            json!({
                                "created_time": util::rfc3339nano(v.created),
                                "deletion_time": v.deletion.map_or(String::new(), util::rfc3339nano),
                                "destroyed": v.destroyed,
                            }),
                        )
                    })
                    .collect();
                Ok(Outcome::Resp(Resp::data(json!({
                    "cas_required": s.cas_required,
                    "created_time": util::rfc3339nano(s.created),
                    "current_version": s.current,
                    "custom_metadata": s.custom_metadata,
                    "delete_version_after": "0s",
                    "max_versions": s.max_versions,
                    "oldest_version": s.versions.keys().next().copied().unwrap_or(0),
                    "updated_time": util::rfc3339nano(s.updated),
                    "versions": versions,
                }))))
            }
            ("metadata", Op::List) => Ok(Outcome::Resp(Resp::data(
                json!({ "keys": list_keys(self.v2.keys(), path) }),
            ))),
            ("metadata", Op::Delete) => {
                self.v2.remove(path);
                Ok(Outcome::NoContent)
            }
            ("metadata", Op::Update) => {
                let s = self.v2.entry(path.to_string()).or_insert_with(|| Secret {
                    versions: BTreeMap::new(),
                    current: 0,
                    created: now,
                    updated: now,
                    max_versions: 0,
                    cas_required: false,
                    custom_metadata: None,
                });
                if let Some(v) = req.get("max_versions") {
                    s.max_versions = util::field_int("max_versions", v)?.max(0) as u64;
                }
                if let Some(v) = req.get("cas_required") {
                    s.cas_required = util::field_bool("cas_required", v)?;
                }
                if let Some(v) = req.get("custom_metadata") {
                    s.custom_metadata = Some(util::field_string_map("custom_metadata", v)?);
                }
                s.updated = now;
                Ok(Outcome::NoContent)
            }
            ("data" | "delete" | "undelete" | "destroy" | "metadata", _) => {
                Err(Fail::unsupported_op())
            }
            _ => {
                let env = Envelope {
                    request_id: req.request_id.clone(),
                    warnings: Some(vec![V2_PATH_WARNING.to_string()]),
                    ..Default::default()
                };
                Ok(Outcome::Raw(404, env.encode()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_keys_shows_folders_with_slash() {
        let keys = [
            "a".to_string(),
            "b/c".to_string(),
            "b/d".to_string(),
            "x/y/z".to_string(),
        ];
        assert_eq!(list_keys(keys.iter(), ""), vec!["a", "b/", "x/"]);
        assert_eq!(list_keys(keys.iter(), "b"), vec!["c", "d"]);
        assert_eq!(list_keys(keys.iter(), "x/"), vec!["y/"]);
    }
}

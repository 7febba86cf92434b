//! The wire shapes: Go-compatible JSON encoding and Vault's response envelope.
//!
//! Go's `encoding/json` writes map keys sorted, struct fields in declaration order, and escapes
//! `<`, `>`, `&`, U+2028 and U+2029. We write JSON by hand here so the byte layout does not depend
//! on serde_json feature unification (`preserve_order`) anywhere in the dependency graph:
//! [`write_value`] sorts object keys (Go maps), while [`Envelope`], [`AuthOut`] and [`WrapInfo`]
//! write their keys in Vault's struct order.

use std::collections::BTreeMap;

use serde_json::Value;

/// Append `s` as a Go-escaped JSON string.
pub fn write_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Append any JSON value; object keys sorted as Go does for maps.
pub fn write_value(out: &mut String, v: &Value) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => write_str(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, it) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(out, it);
            }
            out.push(']');
        }
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_str(out, k);
                out.push(':');
                write_value(out, &m[k]);
            }
            out.push('}');
        }
    }
}

/// Writes a JSON object with keys in the order they are added (a Go struct).
#[derive(Debug)]
pub struct ObjWriter {
    buf: String,
    first: bool,
}

impl Default for ObjWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl ObjWriter {
    /// Start an object.
    pub fn new() -> Self {
        Self {
            buf: String::from("{"),
            first: true,
        }
    }

    fn key(&mut self, k: &str) {
        if !self.first {
            self.buf.push(',');
        }
        self.first = false;
        write_str(&mut self.buf, k);
        self.buf.push(':');
    }

    /// A key with a JSON value.
    pub fn val(mut self, k: &str, v: &Value) -> Self {
        self.key(k);
        write_value(&mut self.buf, v);
        self
    }

    /// A key with a string.
    pub fn str(mut self, k: &str, v: &str) -> Self {
        self.key(k);
        write_str(&mut self.buf, v);
        self
    }

    /// A key with pre-encoded JSON.
    pub fn raw(mut self, k: &str, raw: &str) -> Self {
        self.key(k);
        self.buf.push_str(raw);
        self
    }

    /// A key with an integer.
    pub fn int(mut self, k: &str, v: i64) -> Self {
        self.key(k);
        self.buf.push_str(&v.to_string());
        self
    }

    /// A key with a bool.
    pub fn bool(mut self, k: &str, v: bool) -> Self {
        self.key(k);
        self.buf.push_str(if v { "true" } else { "false" });
        self
    }

    /// Close the object.
    pub fn finish(mut self) -> String {
        self.buf.push('}');
        self.buf
    }
}

/// `HTTPAuth`: the `auth` object of a login/token-create/renew response.
#[derive(Debug, Clone, Default)]
pub struct AuthOut {
    /// The token.
    pub client_token: String,
    /// Its accessor (`""` for batch tokens).
    pub accessor: String,
    /// All policies (sanitised).
    pub policies: Vec<String>,
    /// Token policies (omitted when empty, like Go's `omitempty`).
    pub token_policies: Vec<String>,
    /// Token metadata (`null` when absent).
    pub metadata: Option<BTreeMap<String, String>>,
    /// TTL in seconds.
    pub lease_duration: i64,
    /// Whether the token can be renewed.
    pub renewable: bool,
    /// Identity entity id or `""`.
    pub entity_id: String,
    /// `service` or `batch`.
    pub token_type: String,
    /// Whether the token has no parent.
    pub orphan: bool,
    /// Use limit (0 = unlimited).
    pub num_uses: i64,
}

impl AuthOut {
    fn encode(&self) -> String {
        let strs = |v: &[String]| Value::Array(v.iter().cloned().map(Value::String).collect());
        let mut w = ObjWriter::new()
            .str("client_token", &self.client_token)
            .str("accessor", &self.accessor)
            .val("policies", &strs(&self.policies));
        if !self.token_policies.is_empty() {
            w = w.val("token_policies", &strs(&self.token_policies));
        }
        let meta = match &self.metadata {
            Some(m) => Value::Object(
                m.iter()
                    .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                    .collect(),
            ),
            None => Value::Null,
        };
        w.val("metadata", &meta)
            .int("lease_duration", self.lease_duration)
            .bool("renewable", self.renewable)
            .str("entity_id", &self.entity_id)
            .str("token_type", &self.token_type)
            .bool("orphan", self.orphan)
            .raw("mfa_requirement", "null")
            .int("num_uses", self.num_uses)
            .finish()
    }
}

/// `HTTPWrapInfo`.
#[derive(Debug, Clone)]
pub struct WrapInfo {
    /// The wrapping token.
    pub token: String,
    /// The wrapping token's accessor.
    pub accessor: String,
    /// TTL in seconds.
    pub ttl: i64,
    /// RFC3339Nano creation time.
    pub creation_time: String,
    /// Request path relative to `/v1/`.
    pub creation_path: String,
    /// Token accessor or secret-id accessor of the wrapped response (`omitempty`).
    pub wrapped_accessor: Option<String>,
}

impl WrapInfo {
    fn encode(&self) -> String {
        let mut w = ObjWriter::new()
            .str("token", &self.token)
            .str("accessor", &self.accessor)
            .int("ttl", self.ttl)
            .str("creation_time", &self.creation_time)
            .str("creation_path", &self.creation_path);
        if let Some(a) = self.wrapped_accessor.as_deref().filter(|a| !a.is_empty()) {
            w = w.str("wrapped_accessor", a);
        }
        w.finish()
    }
}

/// The nine-key response envelope (`logical.HTTPResponse`).
#[derive(Debug, Clone, Default)]
pub struct Envelope {
    /// Request UUID or `""` for wrapped responses.
    pub request_id: String,
    /// Always `""` here (no leases are registered).
    pub lease_id: String,
    /// Lease renewability.
    pub renewable: bool,
    /// Lease TTL in seconds.
    pub lease_duration: i64,
    /// Response data (`null` when absent).
    pub data: Option<Value>,
    /// Wrapping information.
    pub wrap_info: Option<WrapInfo>,
    /// Warnings (`null` when none).
    pub warnings: Option<Vec<String>>,
    /// Auth block.
    pub auth: Option<AuthOut>,
    /// Mount type or `""`.
    pub mount_type: String,
}

impl Envelope {
    /// Compact JSON without a trailing newline (Go `json.Marshal`).
    pub fn encode(&self) -> String {
        let data = self.data.as_ref().unwrap_or(&Value::Null);
        let warnings = match &self.warnings {
            Some(w) if !w.is_empty() => {
                Value::Array(w.iter().cloned().map(Value::String).collect())
            }
            _ => Value::Null,
        };
        ObjWriter::new()
            .str("request_id", &self.request_id)
            .str("lease_id", &self.lease_id)
            .bool("renewable", self.renewable)
            .int("lease_duration", self.lease_duration)
            .val("data", data)
            .raw(
                "wrap_info",
                &self
                    .wrap_info
                    .as_ref()
                    .map_or("null".into(), WrapInfo::encode),
            )
            .val("warnings", &warnings)
            .raw(
                "auth",
                &self.auth.as_ref().map_or("null".into(), AuthOut::encode),
            )
            .str("mount_type", &self.mount_type)
            .finish()
    }
}

/// `{"errors":[...]}` with the encoder's trailing newline.
pub fn errors_body(errors: &[String]) -> String {
    let mut out = String::from("{\"errors\":[");
    for (i, e) in errors.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_str(&mut out, e);
    }
    out.push_str("]}\n");
    out
}

/// Go `go-multierror` text for one or more errors.
pub fn multierror(msgs: &[&str]) -> String {
    let mut out = if msgs.len() == 1 {
        "1 error occurred:\n".to_string()
    } else {
        format!("{} errors occurred:\n", msgs.len())
    };
    for m in msgs {
        out.push_str("\t* ");
        out.push_str(m);
        out.push('\n');
    }
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn envelope_has_nine_keys_in_vault_order_with_nulls() {
        let env = Envelope {
            request_id: "r".into(),
            ..Default::default()
        };
        assert_eq!(
            env.encode(),
            r#"{"request_id":"r","lease_id":"","renewable":false,"lease_duration":0,"data":null,"wrap_info":null,"warnings":null,"auth":null,"mount_type":""}"#
        );
    }

    #[test]
    fn maps_are_sorted_and_html_is_escaped() {
        let mut out = String::new();
        write_value(
            &mut out,
            &json!({"b": "<x&y>", "a": [1, {"z": 1, "c": null}]}),
        );
        assert_eq!(
            out,
            r#"{"a":[1,{"c":null,"z":1}],"b":"\u003cx\u0026y\u003e"}"#
        );
    }

    #[test]
    fn multierror_text_matches_go_multierror() {
        assert_eq!(
            multierror(&["permission denied", "invalid token"]),
            "2 errors occurred:\n\t* permission denied\n\t* invalid token\n\n"
        );
        assert_eq!(multierror(&["x"]), "1 error occurred:\n\t* x\n\n");
        assert_eq!(errors_body(&[]), "{\"errors\":[]}\n");
    }
}

//! Small helpers that reproduce Go/Vault formats: identifiers, durations, field coercion, CIDRs,
//! timestamps.
//!
//! Everything here is pure and unit-tested at the bottom of the file.

use std::net::IpAddr;

use jiff::Timestamp;
use rand::Rng;
use serde_json::Value;

const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// `hashicorp/go-uuid`: 16 random bytes as lowercase hex `8-4-4-4-12` (no version nibble).
pub fn uuid() -> String {
    let b: [u8; 16] = rand::random();
    let h = |r: std::ops::Range<usize>| b[r].iter().map(|x| format!("{x:02x}")).collect::<String>();
    format!(
        "{}-{}-{}-{}-{}",
        h(0..4),
        h(4..6),
        h(6..8),
        h(8..10),
        h(10..16)
    )
}

/// `n` random base62 characters.
pub fn base62(n: usize) -> String {
    let mut rng = rand::rng();
    (0..n)
        .map(|_| char::from(BASE62[rng.random_range(0..BASE62.len())]))
        .collect()
}

/// A service token: `hvs.` and 90 base62 characters (about the length of an SSC token).
pub fn service_token() -> String {
    format!("hvs.{}", base62(90))
}

/// A batch token: `hvb.` and 120 base62 characters.
pub fn batch_token() -> String {
    format!("hvb.{}", base62(120))
}

/// A token accessor: 24 base62 characters.
pub fn accessor() -> String {
    base62(24)
}

/// Go `time.RFC3339Nano` in UTC (`Z`), fractional seconds with trailing zeros trimmed.
pub fn rfc3339nano(t: Timestamp) -> String {
    t.to_string()
}

/// The zero `time.Time` as Go's JSON encoder writes it.
pub const GO_ZERO_TIME: &str = "0001-01-01T00:00:00Z";

/// Go `strconv.Quote` for the ASCII-ish strings we quote in messages.
pub fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Go `%q` of a `[]string`: `["a" "b"]`.
pub fn go_quote_slice(v: &[String]) -> String {
    let inner: Vec<String> = v.iter().map(|s| go_quote(s)).collect();
    format!("[{}]", inner.join(" "))
}

/// Go `time.Duration.String()` for whole seconds: `1h0m0s`, `20m0s`, `45s`, `0s`.
pub fn go_duration(secs: i64) -> String {
    if secs == 0 {
        return "0s".into();
    }
    let neg = secs < 0;
    let s = secs.unsigned_abs();
    let (h, m, sec) = (s / 3600, (s % 3600) / 60, s % 60);
    let body = if h > 0 {
        format!("{h}h{m}m{sec}s")
    } else if m > 0 {
        format!("{m}m{sec}s")
    } else {
        format!("{sec}s")
    };
    if neg { format!("-{body}") } else { body }
}

/// Go `time.ParseDuration`, returning whole seconds (truncated).
pub fn go_parse_duration(input: &str) -> Result<i64, String> {
    let invalid = || format!("time: invalid duration {}", go_quote(input));
    let mut s = input;
    let mut neg = false;
    if let Some(rest) = s.strip_prefix('-') {
        neg = true;
        s = rest;
    } else if let Some(rest) = s.strip_prefix('+') {
        s = rest;
    }
    if s == "0" {
        return Ok(0);
    }
    if s.is_empty() {
        return Err(invalid());
    }
    let mut total_nanos: f64 = 0.0;
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && (bytes[i].is_ascii_digit() || bytes[i] == b'.') {
            i += 1;
        }
        let num = &s[start..i];
        if num.is_empty() || num == "." {
            return Err(invalid());
        }
        let value: f64 = num.parse().map_err(|_| invalid())?;
        let ustart = i;
        while i < bytes.len() && !(bytes[i].is_ascii_digit() || bytes[i] == b'.') {
            i += 1;
        }
        let unit = &s[ustart..i];
        let mult = match unit {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            "" => {
                return Err(format!(
                    "time: missing unit in duration {}",
                    go_quote(input)
                ));
            }
            other => {
                return Err(format!(
                    "time: unknown unit {} in duration {}",
                    go_quote(other),
                    go_quote(input)
                ));
            }
        };
        total_nanos += value * mult;
    }
    let secs = (total_nanos / 1e9).trunc() as i64;
    Ok(if neg { -secs } else { secs })
}

/// `parseutil.ParseDurationSecond` on a string: digits = seconds, `<n>d` = days, else Go syntax.
pub fn parse_duration_str(s: &str) -> Result<i64, String> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(0);
    }
    if let Ok(n) = s.parse::<i64>() {
        return Ok(n);
    }
    if let Some(days) = s.strip_suffix('d')
        && let Ok(n) = days.parse::<i64>()
    {
        return Ok(n * 86400);
    }
    go_parse_duration(s)
}

/// A request field could not be converted to the schema's type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Field name.
    pub field: String,
    /// Why (Go-flavoured conversion message).
    pub reason: String,
}

impl FieldError {
    fn new(field: &str, reason: impl Into<String>) -> Self {
        Self {
            field: field.to_string(),
            reason: reason.into(),
        }
    }

    /// The framework's 400 text.
    pub fn message(&self) -> String {
        format!(
            "Field validation failed: error converting input for field {}: {}",
            go_quote(&self.field),
            self.reason
        )
    }
}

/// `TypeDurationSecond`.
pub fn field_duration(field: &str, v: &Value) -> Result<i64, FieldError> {
    match v {
        Value::Number(n) => n
            .as_i64()
            .or_else(|| n.as_f64().map(|f| f as i64))
            .ok_or_else(|| FieldError::new(field, "invalid number")),
        Value::String(s) => parse_duration_str(s).map_err(|e| FieldError::new(field, e)),
        Value::Null => Ok(0),
        Value::Bool(_) => Err(FieldError::new(field, "unsupported type: bool")),
        _ => Err(FieldError::new(field, "unsupported type")),
    }
}

/// `TypeInt` (weakly typed).
pub fn field_int(field: &str, v: &Value) -> Result<i64, FieldError> {
    match v {
        Value::Number(n) => n.as_i64().ok_or_else(|| {
            FieldError::new(
                field,
                format!("cannot parse '' as int: {n} is not an integer"),
            )
        }),
        Value::String(s) if s.is_empty() => Ok(0),
        Value::String(s) => s.trim().parse::<i64>().map_err(|_| {
            FieldError::new(
                field,
                format!(
                    "cannot parse '' as int: strconv.ParseInt: parsing {}: invalid syntax",
                    go_quote(s)
                ),
            )
        }),
        Value::Bool(b) => Ok(i64::from(*b)),
        Value::Null => Ok(0),
        _ => Err(FieldError::new(
            field,
            "'' expected type 'int', got unconvertible type",
        )),
    }
}

/// `TypeBool` (weakly typed).
pub fn field_bool(field: &str, v: &Value) -> Result<bool, FieldError> {
    match v {
        Value::Bool(b) => Ok(*b),
        Value::String(s) => match s.as_str() {
            "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
            "0" | "f" | "F" | "false" | "FALSE" | "False" | "" => Ok(false),
            _ => Err(FieldError::new(
                field,
                format!(
                    "cannot parse '' as bool: strconv.ParseBool: parsing {}: invalid syntax",
                    go_quote(s)
                ),
            )),
        },
        Value::Number(n) => Ok(n.as_f64().is_some_and(|f| f != 0.0)),
        Value::Null => Ok(false),
        _ => Err(FieldError::new(
            field,
            "'' expected type 'bool', got unconvertible type",
        )),
    }
}

/// `TypeString`.
pub fn field_string(field: &str, v: &Value) -> Result<String, FieldError> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        Value::Null => Ok(String::new()),
        Value::Array(_) => Err(FieldError::new(
            field,
            "'' expected type 'string', got unconvertible type '[]interface {}'",
        )),
        Value::Object(_) => Err(FieldError::new(
            field,
            "'' expected type 'string', got unconvertible type 'map[string]interface {}'",
        )),
    }
}

/// `TypeCommaStringSlice`: array of strings or one comma-separated string; trimmed, empties dropped.
pub fn field_comma_slice(field: &str, v: &Value) -> Result<Vec<String>, FieldError> {
    let raw: Vec<String> = match v {
        Value::Null => Vec::new(),
        Value::String(s) => s.split(',').map(str::to_string).collect(),
        Value::Array(items) => {
            let mut out = Vec::new();
            for it in items {
                match it {
                    Value::String(s) => out.push(s.clone()),
                    Value::Number(n) => out.push(n.to_string()),
                    Value::Bool(b) => out.push(b.to_string()),
                    _ => {
                        return Err(FieldError::new(
                            field,
                            "'' expected type 'string', got unconvertible type",
                        ));
                    }
                }
            }
            out
        }
        Value::Number(n) => vec![n.to_string()],
        _ => {
            return Err(FieldError::new(
                field,
                "'' expected type 'string', got unconvertible type 'map[string]interface {}'",
            ));
        }
    };
    Ok(raw
        .into_iter()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect())
}

/// `TypeKVPairs` / `map[string]string`.
pub fn field_string_map(
    field: &str,
    v: &Value,
) -> Result<std::collections::BTreeMap<String, String>, FieldError> {
    let mut out = std::collections::BTreeMap::new();
    match v {
        Value::Null => {}
        Value::Object(m) => {
            for (k, v) in m {
                out.insert(k.clone(), field_string(field, v)?);
            }
        }
        Value::String(s) if s.is_empty() => {}
        _ => {
            return Err(FieldError::new(field, "'' expected a map, got 'string'"));
        }
    }
    Ok(out)
}

/// Sorted, deduplicated, lower-cased policy names (Vault's `SanitizePolicies` without `default`).
pub fn sanitize_policies(policies: &[String], add_default: bool) -> Vec<String> {
    let mut out: Vec<String> = policies
        .iter()
        .map(|p| p.trim().to_lowercase())
        .filter(|p| !p.is_empty())
        .collect();
    if add_default && !out.iter().any(|p| p == "root") {
        out.push("default".into());
    }
    out.sort();
    out.dedup();
    out
}

/// A parsed CIDR block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parse `a.b.c.d/n` or `v6/n`. With `allow_bare`, a plain IP is a host block.
    pub fn parse(s: &str, allow_bare: bool) -> Option<Cidr> {
        let s = s.trim();
        let (ip, prefix) = match s.split_once('/') {
            Some((ip, p)) => (ip.parse::<IpAddr>().ok()?, p.parse::<u8>().ok()?),
            None if allow_bare => {
                let ip = s.parse::<IpAddr>().ok()?;
                (ip, if ip.is_ipv4() { 32 } else { 128 })
            }
            None => return None,
        };
        let max = if ip.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return None;
        }
        Some(Cidr {
            net: mask(ip, prefix),
            prefix,
        })
    }

    /// Whether `ip` lies inside the block (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6
                .to_ipv4_mapped()
                .map(IpAddr::V4)
                .unwrap_or(IpAddr::V6(v6)),
            v4 => v4,
        };
        ip.is_ipv4() == self.net.is_ipv4() && mask(ip, self.prefix) == self.net
    }

    /// Whether `other` lies entirely inside `self`.
    pub fn covers(&self, other: &Cidr) -> bool {
        other.prefix >= self.prefix && self.contains(other.net)
    }
}

fn mask(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let m = if prefix == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(prefix))
            };
            IpAddr::V4((bits & m).into())
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let m = if prefix == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(prefix))
            };
            IpAddr::V6((bits & m).into())
        }
    }
}

/// Whether `ip` is in any of `cidrs` (text form; unparsable entries never match).
pub fn ip_in_cidrs(ip: IpAddr, cidrs: &[String]) -> bool {
    cidrs
        .iter()
        .filter_map(|c| Cidr::parse(c, true))
        .any(|c| c.contains(ip))
}

/// Whether every block of `inner` is covered by some block of `outer`.
pub fn cidrs_subset(outer: &[String], inner: &[String]) -> bool {
    let outer: Vec<Cidr> = outer.iter().filter_map(|c| Cidr::parse(c, true)).collect();
    inner.iter().all(|c| match Cidr::parse(c, true) {
        Some(c) => outer.iter().any(|o| o.covers(&c)),
        None => false,
    })
}

/// `token_type` as tokenutil parses it for every auth method's roles: the `default-*` spellings
/// are accepted with a warning.
pub fn field_token_type(
    v: &Value,
    warnings: &mut Vec<String>,
) -> Result<String, super::core::Fail> {
    let t = field_string("token_type", v)?;
    Ok(match t.as_str() {
        "" | "default" => "default".into(),
        "service" | "batch" => t,
        "default-service" => {
            warnings.push("default-service has no useful meaning; adjusting to service".into());
            "service".into()
        }
        "default-batch" => {
            warnings.push("default-batch has no useful meaning; adjusting to batch".into());
            "batch".into()
        }
        other => {
            return Err(super::core::Fail::bad(format!(
                "invalid 'token_type' value {}",
                go_quote(other)
            )));
        }
    })
}

/// tokenutil's batch-token constraints: batch tokens have no use limit and no period.
pub fn check_batch_token(
    token_type: &str,
    num_uses: i64,
    period: i64,
) -> Result<(), super::core::Fail> {
    if token_type == "batch" && num_uses > 0 {
        return Err(super::core::Fail::bad(
            "'token_type' cannot be 'batch' or 'default_batch' when set to generate tokens with limited use count",
        ));
    }
    if token_type == "batch" && period > 0 {
        return Err(super::core::Fail::bad(
            "'token_type' cannot be 'batch' or 'default_batch' when set to generate periodic tokens",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn go_uuid_has_the_8_4_4_4_12_shape() {
        let u = uuid();
        let parts: Vec<usize> = u.split('-').map(str::len).collect();
        assert_eq!(parts, vec![8, 4, 4, 4, 12]);
        assert!(
            u.chars()
                .all(|c| c == '-' || c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
    }

    #[test]
    fn tokens_and_accessors_have_the_vault_shapes() {
        assert!(service_token().starts_with("hvs."));
        assert!(service_token().len() >= 94);
        assert_eq!(accessor().len(), 24);
        assert!(accessor().chars().all(|c| c.is_ascii_alphanumeric()));
    }

    #[test]
    fn durations_parse_like_parse_duration_second() {
        let cases = [
            (json!(300), 300),
            (json!("300"), 300),
            (json!("10m"), 600),
            (json!("1h30m"), 5400),
            (json!("2d"), 172800),
            (json!("90s"), 90),
            (json!("1.5h"), 5400),
            (json!("0"), 0),
        ];
        for (input, want) in cases {
            assert_eq!(field_duration("ttl", &input), Ok(want), "{input}");
        }
        assert_eq!(
            parse_duration_str("abc"),
            Err("time: invalid duration \"abc\"".to_string())
        );
    }

    #[test]
    fn go_duration_strings_match_go() {
        assert_eq!(go_duration(3600), "1h0m0s");
        assert_eq!(go_duration(1200), "20m0s");
        assert_eq!(go_duration(45), "45s");
        assert_eq!(go_duration(0), "0s");
    }

    #[test]
    fn timestamps_trim_trailing_zeros_like_rfc3339nano() {
        let t: Timestamp = "2022-08-22T09:47:27.694436700Z".parse().expect("valid");
        assert_eq!(rfc3339nano(t), "2022-08-22T09:47:27.6944367Z");
        let t: Timestamp = "2022-08-22T09:47:27Z".parse().expect("valid");
        assert_eq!(rfc3339nano(t), "2022-08-22T09:47:27Z");
    }

    #[test]
    fn comma_slices_accept_arrays_and_strings() {
        assert_eq!(
            field_comma_slice("x", &json!("a, b,,c")).expect("ok"),
            vec!["a", "b", "c"]
        );
        assert_eq!(
            field_comma_slice("x", &json!(["a"])).expect("ok"),
            vec!["a"]
        );
    }

    #[test]
    fn cidr_membership_and_subsets() {
        let c = Cidr::parse("127.0.0.5/32", false).expect("valid");
        assert!(c.contains("127.0.0.5".parse().expect("ip")));
        assert!(!c.contains("127.0.0.1".parse().expect("ip")));
        assert!(Cidr::parse("127.0.0.5", false).is_none());
        assert!(cidrs_subset(
            &["10.0.0.0/8".into()],
            &["10.1.0.0/16".into()]
        ));
        assert!(!cidrs_subset(
            &["10.0.0.0/8".into()],
            &["192.168.0.0/16".into()]
        ));
        assert!(ip_in_cidrs(
            "::ffff:127.0.0.1".parse().expect("ip"),
            &["127.0.0.0/8".into()]
        ));
    }
}

//! ACL policies: a small HCL subset parser and Vault's path-matching rules.
//!
//! Supported syntax: `#`, `//` and `/* */` comments, and any number of
//! `path "glob" { capabilities = ["read", ...] }` blocks (the legacy `policy = "read|write|deny|sudo"`
//! attribute too; other attributes such as `allowed_parameters` are parsed and ignored).
//!
//! Matching follows Vault: an exact path wins; otherwise, among glob (`*` suffix) and `+` segment
//! patterns, the highest-priority one applies (first wildcard later in the path, no trailing `*`,
//! fewer `+` segments, longer, lexicographically larger). Capabilities of the same pattern in
//! several policies are merged; `deny` anywhere on the chosen pattern wins.

use std::collections::BTreeMap;

/// Capability bits.
pub mod cap {
    /// `deny`
    pub const DENY: u8 = 1;
    /// `create`
    pub const CREATE: u8 = 2;
    /// `read`
    pub const READ: u8 = 4;
    /// `update`
    pub const UPDATE: u8 = 8;
    /// `delete`
    pub const DELETE: u8 = 16;
    /// `list`
    pub const LIST: u8 = 32;
    /// `sudo`
    pub const SUDO: u8 = 64;
    /// `patch`
    pub const PATCH: u8 = 128;
}

/// One `path` block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The pattern as written.
    pub pattern: String,
    /// Capability bits.
    pub caps: u8,
}

/// A parsed policy.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Name (lower-cased).
    pub name: String,
    /// Original text.
    pub raw: String,
    /// Its rules.
    pub rules: Vec<Rule>,
}

/// The built-in `default` policy (a trimmed version of Vault's).
pub const DEFAULT_POLICY: &str = r#"# Allow tokens to look up their own properties
path "auth/token/lookup-self" {
    capabilities = ["read"]
}

# Allow tokens to renew themselves
path "auth/token/renew-self" {
    capabilities = ["update"]
}

# Allow tokens to revoke themselves
path "auth/token/revoke-self" {
    capabilities = ["update"]
}

# Allow a token to look up its own capabilities on a path
path "sys/capabilities-self" {
    capabilities = ["update"]
}

# Allow a token to look up its resultant ACL from all policies
path "sys/internal/ui/resultant-acl" {
    capabilities = ["read"]
}

# Allow a token to renew a lease via lease_id in the request body
path "sys/renew" {
    capabilities = ["update"]
}
path "sys/leases/renew" {
    capabilities = ["update"]
}

# Allow looking up lease properties
path "sys/leases/lookup" {
    capabilities = ["update"]
}

# Allow a token to manage its own cubbyhole
path "cubbyhole/*" {
    capabilities = ["create", "read", "update", "delete", "list"]
}

# Allow a token to wrap arbitrary values in a response-wrapping token
path "sys/wrapping/wrap" {
    capabilities = ["update"]
}

# Allow a token to look up the creation time and TTL of a given
# response-wrapping token
path "sys/wrapping/lookup" {
    capabilities = ["update"]
}

# Allow a token to unwrap a response-wrapping token
path "sys/wrapping/unwrap" {
    capabilities = ["update"]
}

# Allow general purpose tools
path "sys/tools/hash" {
    capabilities = ["update"]
}
path "sys/tools/hash/*" {
    capabilities = ["update"]
}

# Allow checking the status of a Control Group request if the user has the
# accessor
path "sys/control-group/request" {
    capabilities = ["update"]
}
"#;

/// The policy given to response-wrapping tokens.
pub const RESPONSE_WRAPPING_POLICY: &str = r#"path "cubbyhole/response" {
    capabilities = ["create", "read"]
}
path "sys/wrapping/unwrap" {
    capabilities = ["update"]
}
"#;

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Str(String),
    Ident(String),
    Punct(char),
}

fn tokenize(src: &str) -> Result<Vec<(Tok, usize)>, String> {
    let chars: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let mut line = 1;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '\n' => {
                line += 1;
                i += 1;
            }
            c if c.is_whitespace() => i += 1,
            '#' => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            '/' if chars.get(i + 1) == Some(&'/') => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            '/' if chars.get(i + 1) == Some(&'*') => {
                i += 2;
                while i < chars.len() && !(chars[i] == '*' && chars.get(i + 1) == Some(&'/')) {
                    if chars[i] == '\n' {
                        line += 1;
                    }
                    i += 1;
                }
                if i >= chars.len() {
                    return Err(format!("At {line}:1: comment not terminated"));
                }
                i += 2;
            }
            '"' => {
                let mut s = String::new();
                i += 1;
                loop {
                    match chars.get(i) {
                        None | Some('\n') => {
                            return Err(format!("At {line}:1: literal not terminated"));
                        }
                        Some('"') => {
                            i += 1;
                            break;
                        }
                        Some('\\') => {
                            match chars.get(i + 1) {
                                Some('n') => s.push('\n'),
                                Some('t') => s.push('\t'),
                                Some(other) => s.push(*other),
                                None => return Err(format!("At {line}:1: literal not terminated")),
                            }
                            i += 2;
                        }
                        Some(ch) => {
                            s.push(*ch);
                            i += 1;
                        }
                    }
                }
                out.push((Tok::Str(s), line));
            }
            '{' | '}' | '[' | ']' | '=' | ',' | ':' => {
                out.push((Tok::Punct(c), line));
                i += 1;
            }
            c if c.is_alphanumeric() || c == '_' || c == '-' || c == '.' => {
                let mut s = String::new();
                while i < chars.len()
                    && (chars[i].is_alphanumeric() || matches!(chars[i], '_' | '-' | '.'))
                {
                    s.push(chars[i]);
                    i += 1;
                }
                out.push((Tok::Ident(s), line));
            }
            other => return Err(format!("At {line}:1: illegal char {other:?}")),
        }
    }
    Ok(out)
}

#[derive(Debug)]
enum HclVal {
    Str(String),
    List(Vec<HclVal>),
    Other,
}

struct Parser {
    toks: Vec<(Tok, usize)>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos).map(|t| &t.0)
    }
    fn line(&self) -> usize {
        self.toks
            .get(self.pos)
            .or(self.toks.last())
            .map_or(1, |t| t.1)
    }
    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.pos).map(|t| t.0.clone());
        self.pos += 1;
        t
    }
    fn expect(&mut self, c: char) -> Result<(), String> {
        let line = self.line();
        match self.next() {
            Some(Tok::Punct(p)) if p == c => Ok(()),
            other => Err(format!("At {line}:1: expected '{c}', got {other:?}")),
        }
    }

    fn value(&mut self) -> Result<HclVal, String> {
        let line = self.line();
        match self.next() {
            Some(Tok::Str(s)) => Ok(HclVal::Str(s)),
            Some(Tok::Ident(_)) => Ok(HclVal::Other),
            Some(Tok::Punct('[')) => {
                let mut items = Vec::new();
                loop {
                    if self.peek() == Some(&Tok::Punct(']')) {
                        self.pos += 1;
                        break;
                    }
                    items.push(self.value()?);
                    match self.next() {
                        Some(Tok::Punct(',')) => {}
                        Some(Tok::Punct(']')) => break,
                        other => {
                            return Err(format!("At {line}:1: expected ',' or ']', got {other:?}"));
                        }
                    }
                }
                Ok(HclVal::List(items))
            }
            Some(Tok::Punct('{')) => {
                self.body()?;
                Ok(HclVal::Other)
            }
            other => Err(format!("At {line}:1: unexpected token {other:?}")),
        }
    }

    /// Parse `key = value` / `key { }` items until the closing `}`.
    fn body(&mut self) -> Result<Vec<(String, HclVal)>, String> {
        let mut items = Vec::new();
        loop {
            let line = self.line();
            match self.next() {
                Some(Tok::Punct('}')) => return Ok(items),
                Some(Tok::Ident(k)) | Some(Tok::Str(k)) => {
                    match self.peek() {
                        Some(Tok::Punct('=')) | Some(Tok::Punct(':')) => {
                            self.pos += 1;
                            let v = self.value()?;
                            items.push((k, v));
                        }
                        Some(Tok::Punct('{')) => {
                            self.pos += 1;
                            self.body()?;
                        }
                        other => {
                            return Err(format!(
                                "At {line}:1: expected '=' after {k:?}, got {other:?}"
                            ));
                        }
                    }
                    if self.peek() == Some(&Tok::Punct(',')) {
                        self.pos += 1;
                    }
                }
                None => {
                    return Err(format!(
                        "At {line}:1: expected '}}' but reached end of input"
                    ));
                }
                other => return Err(format!("At {line}:1: unexpected token {other:?}")),
            }
        }
    }
}

fn cap_bit(name: &str) -> Option<u8> {
    Some(match name.to_lowercase().as_str() {
        "deny" => cap::DENY,
        "create" => cap::CREATE,
        "read" => cap::READ,
        "update" => cap::UPDATE,
        "delete" => cap::DELETE,
        "list" => cap::LIST,
        "sudo" => cap::SUDO,
        "patch" => cap::PATCH,
        "subscribe" | "recover" => 0,
        _ => return None,
    })
}

/// Parse policy text into rules. The error is the text after `failed to parse policy: `.
pub fn parse(name: &str, raw: &str) -> Result<Policy, String> {
    let mut p = Parser {
        toks: tokenize(raw)?,
        pos: 0,
    };
    let mut rules = Vec::new();
    while let Some(tok) = p.next() {
        let line = p.line();
        match tok {
            Tok::Ident(kw) if kw == "path" => {
                let pattern = match p.next() {
                    Some(Tok::Str(s)) => s,
                    other => {
                        return Err(format!("At {line}:1: expected path string, got {other:?}"));
                    }
                };
                p.expect('{')?;
                let mut caps = 0u8;
                for (k, v) in p.body()? {
                    match (k.as_str(), v) {
                        ("capabilities", HclVal::List(items)) => {
                            for it in items {
                                let HclVal::Str(s) = it else {
                                    return Err(format!("path {pattern:?}: invalid capabilities"));
                                };
                                let Some(bit) = cap_bit(&s) else {
                                    return Err(format!(
                                        "path {pattern:?}: invalid capability {s:?}"
                                    ));
                                };
                                caps |= bit;
                            }
                        }
                        ("capabilities", _) => {
                            return Err(format!("path {pattern:?}: capabilities must be a list"));
                        }
                        ("policy", HclVal::Str(s)) => {
                            caps |= match s.as_str() {
                                "deny" => cap::DENY,
                                "read" => cap::READ | cap::LIST,
                                "write" => {
                                    cap::CREATE | cap::READ | cap::UPDATE | cap::DELETE | cap::LIST
                                }
                                "sudo" => {
                                    cap::CREATE
                                        | cap::READ
                                        | cap::UPDATE
                                        | cap::DELETE
                                        | cap::LIST
                                        | cap::SUDO
                                }
                                other => {
                                    return Err(format!(
                                        "path {pattern:?}: invalid policy {other:?}"
                                    ));
                                }
                            };
                        }
                        _ => {}
                    }
                }
                let pattern = pattern.trim_start_matches('/').to_string();
                rules.push(Rule { pattern, caps });
            }
            Tok::Ident(kw) if kw == "name" => {
                p.expect('=')?;
                p.value()?;
            }
            Tok::Ident(kw) => {
                // Unknown top-level blocks are an error in Vault.
                return Err(format!("invalid key {kw:?} on line {line}"));
            }
            other => return Err(format!("At {line}:1: unexpected token {other:?}")),
        }
    }
    Ok(Policy {
        name: name.to_lowercase(),
        raw: raw.to_string(),
        rules,
    })
}

fn pattern_matches(pattern: &str, path: &str) -> bool {
    let (pat, glob) = match pattern.strip_suffix('*') {
        Some(p) => (p, true),
        None => (pattern, false),
    };
    if !pat.contains('+') {
        return if glob {
            path.starts_with(pat)
        } else {
            path == pat
        };
    }
    let pat_segs: Vec<&str> = pat.split('/').collect();
    let path_segs: Vec<&str> = path.split('/').collect();
    if glob {
        if path_segs.len() < pat_segs.len() {
            return false;
        }
        let last = pat_segs.len() - 1;
        for (i, ps) in pat_segs.iter().enumerate() {
            let seg = path_segs[i];
            if i == last {
                // The glob applies to the remainder of the path from this segment on.
                let rest = path_segs[i..].join("/");
                if *ps == "+" {
                    return !seg.is_empty() || rest.is_empty();
                }
                return rest.starts_with(ps);
            }
            if *ps != "+" && *ps != seg {
                return false;
            }
        }
        true
    } else {
        pat_segs.len() == path_segs.len()
            && pat_segs
                .iter()
                .zip(&path_segs)
                .all(|(p, s)| *p == "+" || p == s)
    }
}

/// Vault's priority ordering: returns true if `a` has *lower* priority than `b`.
fn lower_priority(a: &str, b: &str) -> bool {
    let first_wild = |p: &str| p.find(['+', '*']).unwrap_or(p.len());
    let (fa, fb) = (first_wild(a), first_wild(b));
    if fa != fb {
        return fa < fb;
    }
    let (ga, gb) = (a.ends_with('*'), b.ends_with('*'));
    if ga != gb {
        return ga;
    }
    let plus = |p: &str| p.matches('+').count();
    let (pa, pb) = (plus(a), plus(b));
    if pa != pb {
        return pa > pb;
    }
    if a.len() != b.len() {
        return a.len() < b.len();
    }
    a < b
}

/// Merged capabilities for `path` under the given policies (deny wins, so the result is 0).
pub fn capabilities<'a>(policies: impl IntoIterator<Item = &'a Policy>, path: &str) -> u8 {
    let mut by_pattern: BTreeMap<&str, u8> = BTreeMap::new();
    for pol in policies {
        for r in &pol.rules {
            if pattern_matches(&r.pattern, path) {
                *by_pattern.entry(r.pattern.as_str()).or_default() |= r.caps;
            }
        }
    }
    // Exact patterns win outright.
    let chosen = if let Some(c) = by_pattern.get(path) {
        Some(*c)
    } else {
        let mut best: Option<(&str, u8)> = None;
        for (pat, caps) in &by_pattern {
            if pat.contains(['*', '+']) {
                best = match best {
                    Some((bp, _)) if !lower_priority(bp, pat) => best,
                    _ => Some((pat, *caps)),
                };
            }
        }
        best.map(|b| b.1)
    };
    match chosen {
        Some(c) if c & cap::DENY != 0 => 0,
        Some(c) => c,
        None => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pol(text: &str) -> Policy {
        parse("p", text).expect("parses")
    }

    #[test]
    fn parses_path_blocks_with_comments() {
        let p = pol(
            "# c\npath \"secret/data/*\" { capabilities = [\"read\", \"list\"] }\n/* x */ path \"a\" {\n capabilities = [\"update\"]\n allowed_parameters = { \"x\" = [] }\n}",
        );
        assert_eq!(p.rules.len(), 2);
        assert_eq!(p.rules[0].caps, cap::READ | cap::LIST);
        assert_eq!(p.rules[1].caps, cap::UPDATE);
    }

    #[test]
    fn default_policy_parses() {
        let p = pol(DEFAULT_POLICY);
        assert_eq!(capabilities([&p], "auth/token/lookup-self"), cap::READ);
        assert_eq!(capabilities([&p], "sys/wrapping/unwrap"), cap::UPDATE);
        assert_eq!(capabilities([&p], "secret/data/x"), 0);
    }

    #[test]
    fn invalid_capability_is_an_error() {
        assert!(parse("p", "path \"a\" { capabilities = [\"fly\"] }").is_err());
        assert!(parse("p", "path \"a\" { capabilities = [\"read\"] ").is_err());
    }

    #[test]
    fn matching_follows_vault_priority() {
        let p = pol("path \"secret/*\" { capabilities = [\"read\"] }\n\
             path \"secret/data/+/config\" { capabilities = [\"update\"] }\n\
             path \"secret/data/deny/*\" { capabilities = [\"deny\"] }\n\
             path \"secret/exact\" { capabilities = [\"list\"] }");
        assert_eq!(capabilities([&p], "secret/data/web/config"), cap::UPDATE);
        assert_eq!(capabilities([&p], "secret/data/web/other"), cap::READ);
        assert_eq!(capabilities([&p], "secret/data/deny/x"), 0);
        assert_eq!(capabilities([&p], "secret/exact"), cap::LIST);
        assert_eq!(capabilities([&p], "other"), 0);
    }

    #[test]
    fn plus_matches_exactly_one_segment() {
        assert!(pattern_matches(
            "auth/+/role/+/secret-id",
            "auth/approle/role/web/secret-id"
        ));
        assert!(!pattern_matches(
            "auth/+/role/+/secret-id",
            "auth/approle/role/web/x/secret-id"
        ));
        assert!(pattern_matches(
            "auth/+/role/*",
            "auth/approle/role/web/secret-id"
        ));
    }
}

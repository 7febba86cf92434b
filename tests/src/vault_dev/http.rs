//! HTTP glue (vault-api.md §1.1): turns an axum request into a [`Req`] and a [`HttpOut`] into a
//! response.
//!
//! * only `/v1/...`; a non-canonical path (`//`, `/./`, `/../`) gets a 307 to the cleaned path;
//! * method → operation (`LIST` and `GET ?list=true` → list; unknown methods → 405);
//! * POST/PUT/PATCH bodies are JSON (or form-encoded); GET/DELETE/LIST use the query string;
//! * the token comes from `X-Vault-Token`, else `Authorization: Bearer`;
//! * every response carries `Content-Type: application/json` and `Cache-Control: no-store`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::body::{Body, to_bytes};
use axum::extract::{ConnectInfo, Request, State};
use axum::response::Response;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use jiff::Timestamp;
use serde_json::{Map, Value};

use super::core::{Core, Fail, HttpOut, Op, Req};
use super::util;

/// Largest request body accepted (Vault's default `max_request_size` is 32 MiB).
const MAX_BODY: usize = 32 << 20;

/// The axum fallback handler serving every request.
pub async fn serve(
    State(core): State<Arc<Core>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    let (parts, body) = request.into_parts();
    let head = parts.method == Method::HEAD;
    let namespace = parts.headers.get("x-vault-namespace").cloned();
    let out = match to_bytes(body, MAX_BODY).await {
        Ok(bytes) => match parse(&parts.method, &parts.uri, &parts.headers, &bytes, peer.ip()) {
            Ok(req) => core.handle_async(req).await,
            Err(out) => out,
        },
        Err(_) => HttpOut::fail(&Fail::new(413, "http: request body too large")),
    };
    respond(out, head, namespace)
}

fn respond(out: HttpOut, head: bool, namespace: Option<HeaderValue>) -> Response {
    let body = if head || out.status == 204 {
        Body::empty()
    } else {
        Body::from(out.body)
    };
    let mut resp = Response::new(body);
    *resp.status_mut() =
        StatusCode::from_u16(out.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(loc) = out.location.and_then(|l| HeaderValue::from_str(&l).ok()) {
        h.insert(header::LOCATION, loc);
    }
    if let Some(ns) = namespace {
        h.insert("x-vault-namespace", ns);
    }
    resp
}

fn percent_decode(s: &str, plus_is_space: bool) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_form(q: &str) -> Map<String, Value> {
    let mut m: Map<String, Value> = Map::new();
    for pair in q.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let (k, v) = (percent_decode(k, true), percent_decode(v, true));
        match m.get_mut(&k) {
            Some(Value::Array(a)) => a.push(Value::String(v)),
            Some(existing) => {
                let first = existing.take();
                *existing = Value::Array(vec![first, Value::String(v)]);
            }
            None => {
                m.insert(k, Value::String(v));
            }
        }
    }
    m
}

/// Go `path.Clean`.
fn clean_path(p: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for seg in p.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            s => parts.push(s),
        }
    }
    format!("/{}", parts.join("/"))
}

fn go_json_error(e: &serde_json::Error, body: &[u8]) -> String {
    use serde_json::error::Category;
    let detail = match e.classify() {
        Category::Eof => "unexpected EOF".to_string(),
        _ => {
            // Find the offending byte (serde reports 1-based line/column).
            let text = String::from_utf8_lossy(body);
            let line = text.lines().nth(e.line().saturating_sub(1)).unwrap_or("");
            let c = line
                .chars()
                .nth(e.column().saturating_sub(1))
                .unwrap_or(' ');
            format!("invalid character '{c}' looking for beginning of value")
        }
    };
    format!("error parsing JSON: failed to parse JSON input: {detail}")
}

/// Build a [`Req`], or the early error answer.
pub fn parse(
    method: &Method,
    uri: &http::Uri,
    headers: &HeaderMap,
    body: &[u8],
    remote: IpAddr,
) -> Result<Req, HttpOut> {
    let raw_path = uri.path();
    let Some(_) = raw_path.strip_prefix("/v1/") else {
        return Err(HttpOut::fail(&Fail::empty(404)));
    };
    let decoded = percent_decode(raw_path, false);
    let mut cleaned = clean_path(&decoded);
    if decoded.ends_with('/') && cleaned != "/" {
        cleaned.push('/');
    }
    if cleaned != decoded {
        let location = match uri.query() {
            Some(q) => format!("{cleaned}?{q}"),
            None => cleaned,
        };
        return Err(HttpOut {
            status: 307,
            body: String::new(),
            location: Some(location),
        });
    }
    let path = decoded["/v1/".len()..].trim_end_matches('/').to_string();
    let query = uri.query().map(parse_form).unwrap_or_default();
    let is_list_query = query
        .get("list")
        .and_then(Value::as_str)
        .is_some_and(|v| util::field_bool("list", &Value::String(v.into())).unwrap_or(false));
    let op = match method.as_str() {
        "GET" if is_list_query => Op::List,
        "GET" => Op::Read,
        "LIST" => Op::List,
        "POST" | "PUT" => Op::Update,
        "DELETE" => Op::Delete,
        "PATCH" => Op::Patch,
        "HEAD" => {
            if path == "sys/health" {
                Op::Read
            } else {
                Op::Header
            }
        }
        _ => return Err(HttpOut::fail(&Fail::empty(405))),
    };
    let data = match op {
        Op::Update | Op::Patch => {
            let trimmed = body.iter().skip_while(|b| b.is_ascii_whitespace()).copied();
            let first = trimmed.clone().next();
            let is_form = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|ct| ct.starts_with("application/x-www-form-urlencoded"));
            if first.is_none() {
                Map::new()
            } else if is_form && !matches!(first, Some(b'{') | Some(b'[')) {
                parse_form(&String::from_utf8_lossy(body))
            } else {
                match serde_json::from_slice::<Value>(body) {
                    Ok(Value::Object(m)) => m,
                    Ok(Value::Null) => Map::new(),
                    Ok(other) => {
                        let kind = match other {
                            Value::Array(_) => "array",
                            Value::String(_) => "string",
                            Value::Number(_) => "number",
                            _ => "bool",
                        };
                        return Err(HttpOut::fail(&Fail::bad(format!(
                            "error parsing JSON: failed to parse JSON input: json: cannot unmarshal {kind} into Go value of type map[string]interface {{}}"
                        ))));
                    }
                    Err(e) => return Err(HttpOut::fail(&Fail::bad(go_json_error(&e, body)))),
                }
            }
        }
        _ => {
            let mut q = query;
            if op == Op::List {
                q.remove("list");
            }
            q
        }
    };
    let header_str = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let token = header_str("x-vault-token")
        .map(str::to_string)
        .or_else(|| {
            header_str("authorization")
                .and_then(|a| a.strip_prefix("Bearer "))
                .map(|t| t.trim().to_string())
        })
        .filter(|t| !t.is_empty());
    let wrap_ttl = match header_str("x-vault-wrap-ttl").map(str::trim) {
        None | Some("") => None,
        Some(v) => match util::parse_duration_str(v) {
            Ok(n) if n < 0 => {
                return Err(HttpOut::fail(&Fail::bad(
                    "error parsing X-Vault-Wrap-TTL header: requested wrap ttl cannot be negative",
                )));
            }
            Ok(0) => None,
            Ok(n) => Some(n),
            Err(e) => {
                return Err(HttpOut::fail(&Fail::bad(format!(
                    "error parsing X-Vault-Wrap-TTL header: {e}"
                ))));
            }
        },
    };
    Ok(Req {
        request_id: util::uuid(),
        path,
        op,
        data,
        token,
        remote,
        wrap_ttl,
        now: Timestamp::now(),
        kube_review: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_path_matches_go() {
        assert_eq!(clean_path("/v1//sys/health"), "/v1/sys/health");
        assert_eq!(clean_path("/v1/./sys/../sys/health"), "/v1/sys/health");
    }

    #[test]
    fn query_parsing_keeps_repeated_values() {
        let m = parse_form("a=1&a=2&b=x%2Fy&c=a+b");
        assert_eq!(m["a"], serde_json::json!(["1", "2"]));
        assert_eq!(m["b"], "x/y");
        assert_eq!(m["c"], "a b");
    }
}

//! vault-dev on the wire with plain reqwest: exact envelopes, status codes and error bodies,
//! wrapping single use and TTL, secret-id use counts and CIDR binding (client bound to 127.0.0.5),
//! token bound CIDRs, ACL denial, seal/unseal and the audit log.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use approle_testkit::vault_dev::{Config, Running, VaultDev};
use reqwest::Method;
use serde_json::{Value, json};

const ROOT: &str = "wire-root";
const MULTI_DENIED: &str = "1 error occurred:\n\t* permission denied\n\n";
const INVALID_TOKEN: &str = "2 errors occurred:\n\t* permission denied\n\t* invalid token\n\n";

/// A response as the test sees it.
#[derive(Debug)]
struct Answer {
    status: u16,
    content_type: String,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
    /// `{"errors":[...]}` as Go's json.Encoder writes it (HTML-escaped, trailing newline).
    fn errors_body(errors: &[&str]) -> String {
        let compact = json!({ "errors": errors })
            .to_string()
            .replace('<', "\\u003c")
            .replace('>', "\\u003e")
            .replace('&', "\\u0026");
        format!("{compact}\n")
    }
}

struct Api {
    url: String,
    http: reqwest::Client,
}

impl Api {
    fn new(server: &Running, local: Option<IpAddr>) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut b = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none());
        if let Some(ip) = local {
            b = b.local_address(ip);
        }
        Api {
            url: server.url.clone(),
            http: b.build().expect("client"),
        }
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Answer {
        let method = Method::from_bytes(method.as_bytes()).expect("method");
        let mut rb = self.http.request(method, format!("{}{}", self.url, path));
        if let Some(t) = token {
            rb = rb.header("X-Vault-Token", t);
        }
        for (k, v) in headers {
            rb = rb.header(*k, *v);
        }
        if let Some(b) = body {
            rb = rb
                .header("Content-Type", "application/json")
                .body(b.to_string());
        }
        let resp = rb.send().await.expect("request reaches vault-dev");
        let status = resp.status().as_u16();
        let content_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let body = resp.text().await.expect("body");
        Answer {
            status,
            content_type,
            body,
        }
    }

    async fn root(&self, method: &str, path: &str, body: Option<Value>) -> Answer {
        let body = body.map(|b| b.to_string());
        self.call(method, path, Some(ROOT), body.as_deref(), &[])
            .await
    }

    async fn ok(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let a = self.root(method, path, body).await;
        assert!(a.status == 200 || a.status == 204, "{method} {path}: {a:?}");
        if a.status == 204 {
            Value::Null
        } else {
            a.json()
        }
    }

    async fn login(&self, role_id: &str, secret_id: &str) -> Answer {
        let body = json!({ "role_id": role_id, "secret_id": secret_id }).to_string();
        self.call("POST", "/v1/auth/approle/login", None, Some(&body), &[])
            .await
    }
}

async fn start(config: Config) -> (Running, Api) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let server = VaultDev::start(config).await.expect("vault-dev starts");
    let api = Api::new(&server, None);
    (server, api)
}

/// approle at approle/, kv2 at secret/, policy web-app-kv, role web-app. Returns the role_id.
async fn setup(api: &Api) -> String {
    api.ok(
        "POST",
        "/v1/sys/auth/approle",
        Some(json!({"type": "approle"})),
    )
    .await;
    api.ok(
        "POST",
        "/v1/sys/mounts/secret",
        Some(json!({"type": "kv", "options": {"version": "2"}})),
    )
    .await;
    api.ok(
        "PUT",
        "/v1/sys/policies/acl/web-app-kv",
        Some(json!({"policy": "path \"secret/data/web-app/*\" { capabilities = [\"read\"] }"})),
    )
    .await;
    api.ok(
        "POST",
        "/v1/auth/approle/role/web-app",
        Some(json!({"token_policies": "web-app-kv", "token_ttl": "20m", "token_max_ttl": "1h"})),
    )
    .await;
    let v = api
        .ok("GET", "/v1/auth/approle/role/web-app/role-id", None)
        .await;
    v["data"]["role_id"].as_str().expect("role_id").to_string()
}

async fn secret_id(api: &Api, body: Value) -> Value {
    api.ok(
        "POST",
        "/v1/auth/approle/role/web-app/secret-id",
        Some(body),
    )
    .await["data"]
        .clone()
}

fn assert_envelope_shape(body: &str, mount_type: &str) {
    let keys = [
        "\"request_id\":",
        ",\"lease_id\":",
        ",\"renewable\":",
        ",\"lease_duration\":",
        ",\"data\":",
        ",\"wrap_info\":",
        ",\"warnings\":",
        ",\"auth\":",
        ",\"mount_type\":",
    ];
    let mut at = 0;
    for k in keys {
        let found = body[at..]
            .find(k)
            .unwrap_or_else(|| panic!("{k} missing or out of order in {body}"));
        at += found + k.len();
    }
    assert!(body.starts_with("{\"request_id\":"), "{body}");
    assert!(
        body.ends_with(&format!(",\"mount_type\":\"{mount_type}\"}}\n")),
        "{body}"
    );
}

fn is_go_uuid(s: &str) -> bool {
    let lens: Vec<usize> = s.split('-').map(str::len).collect();
    lens == [8, 4, 4, 4, 12] && s.chars().all(|c| c == '-' || c.is_ascii_hexdigit())
}

async fn wait_until<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if f().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn envelopes_keep_vaults_key_order_nulls_204s_and_newlines() {
    let (server, api) = start(Config::new(ROOT)).await;
    let role_id = setup(&api).await;
    assert!(is_go_uuid(&role_id));

    let a = api
        .root("GET", "/v1/auth/approle/role/web-app/role-id", None)
        .await;
    assert_eq!(a.status, 200);
    assert_eq!(a.content_type, "application/json");
    assert_envelope_shape(&a.body, "approle");
    assert!(a.body.contains(
        "\"lease_id\":\"\",\"renewable\":false,\"lease_duration\":0,\"data\":{\"role_id\":"
    ));
    assert!(a.body.ends_with(
        "\"wrap_info\":null,\"warnings\":null,\"auth\":null,\"mount_type\":\"approle\"}\n"
    ));
    assert!(is_go_uuid(a.json()["request_id"].as_str().expect("id")));

    // Role writes answer 204 with an empty body but still JSON content type.
    let a = api
        .root(
            "POST",
            "/v1/auth/approle/role/other",
            Some(json!({"token_policies": ["a"]})),
        )
        .await;
    assert_eq!((a.status, a.body.as_str()), (204, ""));
    assert_eq!(a.content_type, "application/json");

    // Role read: data keys sorted like a Go map, empty lists as [] and unset cidrs as null.
    let a = api.root("GET", "/v1/auth/approle/role/web-app", None).await;
    assert_envelope_shape(&a.body, "approle");
    let data = &a.json()["data"];
    assert_eq!(data["token_ttl"], 1200);
    assert_eq!(data["token_max_ttl"], 3600);
    assert_eq!(data["token_bound_cidrs"], json!([]));
    assert_eq!(data["secret_id_bound_cidrs"], Value::Null);
    assert_eq!(data["token_type"], "default");
    let data_text = a.body.split("\"data\":{").nth(1).expect("data");
    let data_text = data_text
        .split(",\"wrap_info\"")
        .next()
        .expect("data object");
    let keys: Vec<&str> = data_text
        .split(',')
        .filter_map(|kv| kv.split_once("\":").map(|(k, _)| k.trim_start_matches('"')))
        .collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted, "data keys are sorted");

    // Secret-id generation: four data keys; login: auth block shape, mount_type "".
    let sid = secret_id(&api, json!({"metadata": "{\"pod\":\"ns1/web-0\"}"})).await;
    assert_eq!(sid["secret_id_num_uses"], 0);
    assert_eq!(sid["secret_id_ttl"], 0);
    let login = api
        .login(&role_id, sid["secret_id"].as_str().expect("sid"))
        .await;
    assert_eq!(login.status, 200, "{login:?}");
    assert_envelope_shape(&login.body, "");
    assert!(login.body.contains(
        "\"data\":null,\"wrap_info\":null,\"warnings\":null,\"auth\":{\"client_token\":\"hvs."
    ));
    assert!(login.body.contains(
        "\"token_type\":\"service\",\"orphan\":true,\"mfa_requirement\":null,\"num_uses\":0}"
    ));
    let auth = &login.json()["auth"];
    let token = auth["client_token"].as_str().expect("token");
    assert!(token.len() >= 94 && token[4..].chars().all(|c| c.is_ascii_alphanumeric()));
    assert_eq!(auth["accessor"].as_str().map(str::len), Some(24));
    assert_eq!(auth["policies"], json!(["default", "web-app-kv"]));
    assert_eq!(auth["token_policies"], json!(["default", "web-app-kv"]));
    assert_eq!(
        auth["metadata"],
        json!({"pod": "ns1/web-0", "role_name": "web-app"})
    );
    assert_eq!(auth["lease_duration"], 1200);
    assert!(is_go_uuid(auth["entity_id"].as_str().expect("entity")));

    // lookup-self with the login token; revoke-self is 204.
    let a = api
        .call("GET", "/v1/auth/token/lookup-self", Some(token), None, &[])
        .await;
    assert_envelope_shape(&a.body, "token");
    let d = a.json()["data"].clone();
    assert_eq!(d["id"], token);
    assert_eq!(d["path"], "auth/approle/login");
    assert_eq!(d["display_name"], "approle");
    assert_eq!(d["meta"]["role_name"], "web-app");
    assert_eq!(d["type"], "service");
    let a = api
        .call("POST", "/v1/auth/token/revoke-self", Some(token), None, &[])
        .await;
    assert_eq!((a.status, a.body.as_str()), (204, ""));

    // Health: GET has the JSON body in struct order, HEAD has none.
    let a = api.call("GET", "/v1/sys/health", None, None, &[]).await;
    assert_eq!(a.status, 200);
    assert!(
        a.body
            .starts_with("{\"initialized\":true,\"sealed\":false,\"standby\":false,")
    );
    let a = api.call("HEAD", "/v1/sys/health", None, None, &[]).await;
    assert_eq!((a.status, a.body.as_str()), (200, ""));

    // KV v2: read, soft delete → 404 with a full envelope, v1-style path → 404 with the warning.
    api.ok(
        "POST",
        "/v1/secret/data/web-app/config",
        Some(json!({"data": {"password": "<s3cr3t&>"}})),
    )
    .await;
    let a = api
        .root("GET", "/v1/secret/data/web-app/config", None)
        .await;
    assert_envelope_shape(&a.body, "kv");
    assert!(a.body.contains("\"data\":{\"data\":{\"password\":\"\\u003cs3cr3t\\u0026\\u003e\"},\"metadata\":{\"created_time\":"));
    assert_eq!(a.json()["data"]["metadata"]["version"], 1);
    assert_eq!(a.json()["data"]["metadata"]["deletion_time"], "");
    let a = api
        .root("DELETE", "/v1/secret/data/web-app/config", None)
        .await;
    assert_eq!(a.status, 204);
    let a = api
        .root("GET", "/v1/secret/data/web-app/config", None)
        .await;
    assert_eq!(a.status, 404);
    assert!(!a.body.ends_with('\n'));
    let v = a.json();
    assert_eq!(v["data"]["data"], Value::Null);
    assert_ne!(v["data"]["metadata"]["deletion_time"], "");
    assert_eq!(v["mount_type"], "");
    let a = api.root("GET", "/v1/secret/web-app/config", None).await;
    assert_eq!(a.status, 404);
    assert!(
        a.json()["warnings"][0]
            .as_str()
            .expect("warning")
            .starts_with("Invalid path for a versioned K/V secrets engine.")
    );
    server.shutdown().await;
}

#[tokio::test]
async fn errors_match_vaults_status_codes_and_texts() {
    let (server, api) = start(Config::new(ROOT)).await;
    let role_id = setup(&api).await;
    api.ok(
        "POST",
        "/v1/auth/approle/role/limited",
        Some(json!({"secret_id_num_uses": 3, "secret_id_ttl": "10m", "secret_id_bound_cidrs": ["10.0.0.0/8"]})),
    )
    .await;
    api.ok(
        "POST",
        "/v1/auth/approle/role/cidr-only",
        Some(json!({"bind_secret_id": false, "secret_id_bound_cidrs": "127.0.0.0/8"})),
    )
    .await;
    let real_sid = secret_id(&api, json!({})).await;
    let real_sid = real_sid["secret_id"].as_str().expect("sid").to_string();

    struct Case {
        name: &'static str,
        method: &'static str,
        path: &'static str,
        token: Option<&'static str>,
        body: Option<String>,
        headers: Vec<(&'static str, &'static str)>,
        status: u16,
        errors: Option<Vec<String>>,
    }
    let case = |name, method, path, token, body: Option<Value>, status, errors: &[&str]| Case {
        name,
        method,
        path,
        token,
        body: body.map(|b| b.to_string()),
        headers: Vec::new(),
        status,
        errors: Some(errors.iter().map(|s| s.to_string()).collect()),
    };
    let root = Some(ROOT);
    let mut cases = vec![
        case(
            "no token",
            "GET",
            "/v1/sys/mounts",
            None,
            None,
            403,
            &["permission denied"],
        ),
        case(
            "unknown token",
            "GET",
            "/v1/sys/mounts",
            Some("hvs.bogus"),
            None,
            403,
            &[INVALID_TOKEN],
        ),
        case(
            "no mount",
            "GET",
            "/v1/nope/x",
            root,
            None,
            404,
            &["no handler for route \"nope/x\". route entry not found."],
        ),
        case(
            "no pattern in mount",
            "GET",
            "/v1/auth/approle/nope",
            root,
            None,
            404,
            &["1 error occurred:\n\t* unsupported path\n\n"],
        ),
        case(
            "unknown role read",
            "GET",
            "/v1/auth/approle/role/nope",
            root,
            None,
            404,
            &[],
        ),
        case(
            "unknown role-id read",
            "GET",
            "/v1/auth/approle/role/nope/role-id",
            root,
            None,
            404,
            &[],
        ),
        case(
            "secret-id unknown role",
            "POST",
            "/v1/auth/approle/role/nope/secret-id",
            root,
            None,
            404,
            &["role \"nope\" does not exist"],
        ),
        case(
            "list secret-id unknown role",
            "LIST",
            "/v1/auth/approle/role/nope/secret-id",
            root,
            None,
            400,
            &["role \"nope\" does not exist"],
        ),
        case(
            "list secret-id none",
            "LIST",
            "/v1/auth/approle/role/limited/secret-id",
            root,
            None,
            404,
            &[],
        ),
        case(
            "lookup unknown role",
            "POST",
            "/v1/auth/approle/role/nope/secret-id/lookup",
            root,
            Some(json!({"secret_id": "x"})),
            500,
            &["1 error occurred:\n\t* role \"nope\" does not exist\n\n"],
        ),
        case(
            "destroy missing field",
            "POST",
            "/v1/auth/approle/role/web-app/secret-id/destroy",
            root,
            Some(json!({})),
            400,
            &["missing secret_id"],
        ),
        case(
            "accessor destroy unknown",
            "POST",
            "/v1/auth/approle/role/web-app/secret-id-accessor/destroy",
            root,
            Some(json!({"secret_id_accessor": "acc-1"})),
            500,
            &[
                "1 error occurred:\n\t* failed to find accessor entry for secret_id_accessor: \"acc-1\"\n\n",
            ],
        ),
        case(
            "login without role_id",
            "POST",
            "/v1/auth/approle/login",
            None,
            Some(json!({"secret_id": "x"})),
            400,
            &["invalid credentials"],
        ),
        case(
            "login unknown role_id",
            "POST",
            "/v1/auth/approle/login",
            None,
            Some(json!({"role_id": "nope", "secret_id": "x"})),
            400,
            &["invalid role or secret ID"],
        ),
        case(
            "login without secret_id",
            "POST",
            "/v1/auth/approle/login",
            None,
            Some(json!({"role_id": role_id})),
            400,
            &["missing secret_id"],
        ),
        case(
            "login wrong secret_id",
            "POST",
            "/v1/auth/approle/login",
            None,
            Some(json!({"role_id": role_id, "secret_id": "wrong"})),
            400,
            &["invalid role or secret ID"],
        ),
        case(
            "negative num_uses",
            "POST",
            "/v1/auth/approle/role/web-app/secret-id",
            root,
            Some(json!({"num_uses": -1})),
            400,
            &["num_uses cannot be negative"],
        ),
        case(
            "num_uses above role",
            "POST",
            "/v1/auth/approle/role/limited/secret-id",
            root,
            Some(json!({"num_uses": 4})),
            400,
            &["num_uses cannot be higher than the role's secret_id_num_uses"],
        ),
        case(
            "num_uses 0 with role limit",
            "POST",
            "/v1/auth/approle/role/limited/secret-id",
            root,
            Some(json!({"num_uses": 0})),
            400,
            &["num_uses cannot be higher than the role's secret_id_num_uses"],
        ),
        case(
            "ttl above role",
            "POST",
            "/v1/auth/approle/role/limited/secret-id",
            root,
            Some(json!({"ttl": "1h"})),
            400,
            &["ttl cannot be longer than the role's secret_id_ttl"],
        ),
        case(
            "bad metadata",
            "POST",
            "/v1/auth/approle/role/web-app/secret-id",
            root,
            Some(json!({"metadata": "novalue"})),
            400,
            &["failed to parse metadata: failed to parse the input: invalid <key,value> format"],
        ),
        case(
            "metadata as object",
            "POST",
            "/v1/auth/approle/role/web-app/secret-id",
            root,
            Some(json!({"metadata": {"a": "b"}})),
            400,
            &[
                "Field validation failed: error converting input for field \"metadata\": '' expected type 'string', got unconvertible type 'map[string]interface {}'",
            ],
        ),
        case(
            "cidr not a subset",
            "POST",
            "/v1/auth/approle/role/limited/secret-id",
            root,
            Some(json!({"cidr_list": "192.168.0.0/16", "num_uses": 1, "ttl": 60})),
            500,
            &[
                "1 error occurred:\n\t* failed to verify subset relationship between CIDR blocks on the role [\"10.0.0.0/8\"] and CIDR blocks on the secret ID [\"192.168.0.0/16\"]: %!w(<nil>)\n\n",
            ],
        ),
        case(
            "no constraint",
            "POST",
            "/v1/auth/approle/role/loose",
            root,
            Some(json!({"bind_secret_id": false})),
            500,
            &["1 error occurred:\n\t* at least one constraint should be enabled on the role\n\n"],
        ),
        case(
            "no bind_secret_id",
            "POST",
            "/v1/auth/approle/role/cidr-only/secret-id",
            root,
            Some(json!({})),
            400,
            &["bind_secret_id is not set on the role"],
        ),
        case(
            "local_secret_ids on update",
            "POST",
            "/v1/auth/approle/role/web-app",
            root,
            Some(json!({"local_secret_ids": true})),
            400,
            &["local_secret_ids can only be modified during role creation"],
        ),
        case(
            "bad token cidr",
            "POST",
            "/v1/auth/approle/role/web-app/secret-id",
            root,
            Some(json!({"token_bound_cidrs": "nope"})),
            400,
            &["failed to validate token CIDR blocks"],
        ),
        case(
            "token_ttl above max",
            "POST",
            "/v1/auth/approle/role/x",
            root,
            Some(json!({"token_ttl": 20, "token_max_ttl": 10})),
            400,
            &["'token_ttl' cannot be greater than 'token_max_ttl'"],
        ),
        case(
            "bad token_type",
            "POST",
            "/v1/auth/approle/role/x",
            root,
            Some(json!({"token_type": "x"})),
            400,
            &["invalid 'token_type' value \"x\""],
        ),
        case(
            "re-enable approle",
            "POST",
            "/v1/sys/auth/approle",
            root,
            Some(json!({"type": "approle"})),
            400,
            &["path is already in use at approle/"],
        ),
        case(
            "empty policy",
            "PUT",
            "/v1/sys/policy/p",
            root,
            Some(json!({"policy": ""})),
            400,
            &["'policy' parameter not supplied or empty"],
        ),
        case(
            "unwrap without any token",
            "POST",
            "/v1/sys/wrapping/unwrap",
            None,
            None,
            403,
            &["error validating wrapping token: token is empty"],
        ),
        case(
            "unwrap non-wrapping token",
            "POST",
            "/v1/sys/wrapping/unwrap",
            root,
            None,
            400,
            &["wrapping token is not valid or does not exist"],
        ),
        case(
            "unwrap empty body token",
            "POST",
            "/v1/sys/wrapping/unwrap",
            root,
            Some(json!({"token": ""})),
            403,
            &["error validating wrapping token: empty token in request body"],
        ),
        case(
            "wrapping lookup unknown",
            "POST",
            "/v1/sys/wrapping/lookup",
            None,
            Some(json!({"token": "hvs.nope"})),
            400,
            &["wrapping token is not valid or does not exist"],
        ),
        case(
            "token lookup unknown",
            "POST",
            "/v1/auth/token/lookup",
            root,
            Some(json!({"token": "hvs.nope"})),
            403,
            &["bad token"],
        ),
        case(
            "unknown method",
            "OPTIONS",
            "/v1/sys/mounts",
            root,
            None,
            405,
            &[],
        ),
        case(
            "wrong operation",
            "DELETE",
            "/v1/auth/approle/login",
            None,
            None,
            405,
            &["1 error occurred:\n\t* unsupported operation\n\n"],
        ),
        case(
            "renew root",
            "POST",
            "/v1/auth/token/renew-self",
            root,
            None,
            400,
            &["lease is not renewable"],
        ),
    ];
    let mut bad_json = case(
        "bad json",
        "POST",
        "/v1/auth/approle/role/x",
        root,
        None,
        400,
        &[],
    );
    bad_json.body = Some("{\"a\":".into());
    bad_json.errors = Some(vec![
        "error parsing JSON: failed to parse JSON input: unexpected EOF".into(),
    ]);
    cases.push(bad_json);
    for (hdr, err) in [
        (
            "abc",
            "error parsing X-Vault-Wrap-TTL header: time: invalid duration \"abc\"",
        ),
        (
            "-5",
            "error parsing X-Vault-Wrap-TTL header: requested wrap ttl cannot be negative",
        ),
    ] {
        let mut c = case(
            "bad wrap ttl",
            "POST",
            "/v1/auth/approle/role/web-app/secret-id",
            root,
            Some(json!({})),
            400,
            &[err],
        );
        c.headers = vec![("X-Vault-Wrap-TTL", hdr)];
        cases.push(c);
    }

    for c in &cases {
        let a = api
            .call(c.method, c.path, c.token, c.body.as_deref(), &c.headers)
            .await;
        assert_eq!(a.status, c.status, "{}: {a:?}", c.name);
        assert_eq!(a.content_type, "application/json", "{}", c.name);
        if let Some(errors) = &c.errors {
            let errs: Vec<&str> = errors.iter().map(String::as_str).collect();
            assert_eq!(a.body, Answer::errors_body(&errs), "{}", c.name);
        }
    }

    // Odd-but-real successes: 204 on lookup/destroy misses, 404 envelope on accessor lookup miss.
    let a = api
        .root(
            "POST",
            "/v1/auth/approle/role/web-app/secret-id/lookup",
            Some(json!({"secret_id": "nope"})),
        )
        .await;
    assert_eq!((a.status, a.body.as_str()), (204, ""));
    let a = api
        .root(
            "POST",
            "/v1/auth/approle/role/web-app/secret-id/destroy",
            Some(json!({"secret_id": "nope"})),
        )
        .await;
    assert_eq!((a.status, a.body.as_str()), (204, ""));
    let a = api
        .root(
            "POST",
            "/v1/auth/approle/role/web-app/secret-id-accessor/lookup",
            Some(json!({"secret_id_accessor": "acc-2"})),
        )
        .await;
    assert_eq!(a.status, 404);
    assert!(a.body.starts_with("{\"request_id\":\""));
    assert!(a.body.ends_with(",\"lease_id\":\"\",\"renewable\":false,\"lease_duration\":0,\"data\":{\"error\":\"failed to find accessor entry for secret_id_accessor: \\\"acc-2\\\"\"},\"wrap_info\":null,\"warnings\":null,\"auth\":null,\"mount_type\":\"\"}"));
    // DELETE destroy takes query parameters.
    let a = api
        .root(
            "DELETE",
            &format!("/v1/auth/approle/role/web-app/secret-id/destroy?secret_id={real_sid}"),
            None,
        )
        .await;
    assert_eq!(a.status, 204);
    assert_eq!(api.login(&role_id, &real_sid).await.status, 400);
    // A non-canonical path is redirected.
    let a = api.call("GET", "/v1//sys/health", None, None, &[]).await;
    assert_eq!(a.status, 307);
    server.shutdown().await;
}

#[tokio::test]
async fn wrapping_is_single_use_lookup_does_not_consume_and_ttl_expires() {
    let (server, api) = start(Config::new(ROOT)).await;
    let role_id = setup(&api).await;

    let body =
        json!({"metadata": "{\"pod\":\"ns1/web-0\"}", "num_uses": 1, "ttl": "10m"}).to_string();
    let a = api
        .call(
            "POST",
            "/v1/auth/approle/role/web-app/secret-id",
            Some(ROOT),
            Some(&body),
            &[("X-Vault-Wrap-TTL", "300")],
        )
        .await;
    assert_eq!(a.status, 200, "{a:?}");
    assert!(a.body.starts_with("{\"request_id\":\"\",\"lease_id\":\"\",\"renewable\":false,\"lease_duration\":0,\"data\":null,\"wrap_info\":{\"token\":\"hvs."));
    assert!(
        a.body
            .ends_with("},\"warnings\":null,\"auth\":null,\"mount_type\":\"\"}\n")
    );
    let info = a.json()["wrap_info"].clone();
    let wrap = info["token"].as_str().expect("token").to_string();
    assert_eq!(info["ttl"], 300);
    assert_eq!(info["creation_path"], "auth/approle/role/web-app/secret-id");
    assert_eq!(info["accessor"].as_str().map(str::len), Some(24));
    let wrapped_accessor = info["wrapped_accessor"]
        .as_str()
        .expect("wrapped accessor")
        .to_string();

    // Lookup three ways; none consumes the token.
    let post = json!({"token": wrap}).to_string();
    let lookups = [
        api.call("POST", "/v1/sys/wrapping/lookup", None, Some(&post), &[])
            .await,
        api.call(
            "GET",
            &format!("/v1/sys/wrapping/lookup?token={wrap}"),
            None,
            None,
            &[],
        )
        .await,
        api.call("GET", "/v1/sys/wrapping/lookup", Some(&wrap), None, &[])
            .await,
    ];
    for a in &lookups {
        assert_eq!(a.status, 200, "{a:?}");
        assert_envelope_shape(&a.body, "");
        let d = a.json()["data"].clone();
        assert_eq!(d["creation_path"], "auth/approle/role/web-app/secret-id");
        assert_eq!(d["creation_ttl"], 300);
        assert_eq!(d["creation_time"], info["creation_time"]);
    }

    // First-party unwrap: the stored response verbatim (no trailing newline, original request_id).
    let a = api
        .call(
            "POST",
            "/v1/sys/wrapping/unwrap",
            Some(&wrap),
            Some("null"),
            &[],
        )
        .await;
    assert_eq!(a.status, 200, "{a:?}");
    assert!(!a.body.ends_with('\n'));
    assert!(a.body.ends_with(
        "},\"wrap_info\":null,\"warnings\":null,\"auth\":null,\"mount_type\":\"approle\"}"
    ));
    let inner = a.json();
    assert!(is_go_uuid(
        inner["request_id"].as_str().expect("request id")
    ));
    assert_eq!(
        inner["data"]["secret_id_accessor"],
        wrapped_accessor.as_str()
    );
    assert_eq!(inner["data"]["secret_id_num_uses"], 1);
    assert_eq!(inner["data"]["secret_id_ttl"], 600);
    let sid = inner["data"]["secret_id"]
        .as_str()
        .expect("sid")
        .to_string();

    let gone = Answer::errors_body(&["wrapping token is not valid or does not exist"]);
    for a in [
        api.call("POST", "/v1/sys/wrapping/unwrap", Some(&wrap), None, &[])
            .await,
        api.call("POST", "/v1/sys/wrapping/lookup", None, Some(&post), &[])
            .await,
    ] {
        assert_eq!((a.status, a.body.as_str()), (400, gone.as_str()));
    }

    // num_uses=1: first login works, the replay is refused.
    assert_eq!(api.login(&role_id, &sid).await.status, 200);
    let a = api.login(&role_id, &sid).await;
    assert_eq!(
        (a.status, a.body),
        (400, Answer::errors_body(&["invalid role or secret ID"]))
    );

    // Third-party unwrap with another token and the wrapping token in the body.
    let a = api
        .call(
            "POST",
            "/v1/auth/approle/role/web-app/secret-id",
            Some(ROOT),
            Some("{}"),
            &[("X-Vault-Wrap-TTL", "5m")],
        )
        .await;
    let w2 = a.json()["wrap_info"]["token"]
        .as_str()
        .expect("w2")
        .to_string();
    let a = api
        .call(
            "POST",
            "/v1/sys/wrapping/unwrap",
            None,
            Some(&json!({"token": w2}).to_string()),
            &[],
        )
        .await;
    assert_eq!(
        (a.status, a.body),
        (403, Answer::errors_body(&["permission denied"]))
    );
    let a = api
        .call(
            "POST",
            "/v1/sys/wrapping/unwrap",
            Some(ROOT),
            Some(&json!({"token": w2}).to_string()),
            &[],
        )
        .await;
    assert_eq!(a.status, 200);
    assert!(a.json()["data"]["secret_id"].is_string());

    // Presenting a wrapping token on any other authenticated request burns it.
    let a = api
        .call(
            "POST",
            "/v1/auth/approle/role/web-app/secret-id",
            Some(ROOT),
            Some("{}"),
            &[("X-Vault-Wrap-TTL", "5m")],
        )
        .await;
    let w3 = a.json()["wrap_info"]["token"]
        .as_str()
        .expect("w3")
        .to_string();
    let a = api
        .call("GET", "/v1/auth/token/lookup-self", Some(&w3), None, &[])
        .await;
    assert_eq!(
        (a.status, a.body),
        (403, Answer::errors_body(&[MULTI_DENIED]))
    );
    let a = api
        .call("POST", "/v1/sys/wrapping/unwrap", Some(&w3), None, &[])
        .await;
    assert_eq!((a.status, a.body.as_str()), (400, gone.as_str()));

    // The same wrapping token in the header and the body is a double use: refused, and burned.
    let a = api
        .call(
            "POST",
            "/v1/auth/approle/role/web-app/secret-id",
            Some(ROOT),
            Some("{}"),
            &[("X-Vault-Wrap-TTL", "5m")],
        )
        .await;
    let w5 = a.json()["wrap_info"]["token"]
        .as_str()
        .expect("w5")
        .to_string();
    let both = json!({"token": w5}).to_string();
    let a = api
        .call(
            "POST",
            "/v1/sys/wrapping/unwrap",
            Some(&w5),
            Some(&both),
            &[],
        )
        .await;
    assert_eq!((a.status, a.body.as_str()), (400, gone.as_str()));
    let a = api
        .call("POST", "/v1/sys/wrapping/lookup", None, Some(&both), &[])
        .await;
    assert_eq!((a.status, a.body.as_str()), (400, gone.as_str()));

    // Wrapped login: wrapped_accessor is the token accessor.
    let sid = secret_id(&api, json!({})).await["secret_id"]
        .as_str()
        .expect("sid")
        .to_string();
    let body = json!({"role_id": role_id, "secret_id": sid}).to_string();
    let a = api
        .call(
            "POST",
            "/v1/auth/approle/login",
            None,
            Some(&body),
            &[("X-Vault-Wrap-TTL", "60")],
        )
        .await;
    let info = a.json()["wrap_info"].clone();
    let w4 = info["token"].as_str().expect("w4").to_string();
    let a = api
        .call("POST", "/v1/sys/wrapping/unwrap", Some(&w4), None, &[])
        .await;
    assert_eq!(a.json()["auth"]["accessor"], info["wrapped_accessor"]);
    assert_eq!(a.json()["mount_type"], "");

    // A short wrap TTL expires: poll lookup until it reports the token invalid.
    let a = api
        .call(
            "POST",
            "/v1/auth/approle/role/web-app/secret-id",
            Some(ROOT),
            Some("{}"),
            &[("X-Vault-Wrap-TTL", "1s")],
        )
        .await;
    let short = a.json()["wrap_info"]["token"]
        .as_str()
        .expect("short")
        .to_string();
    let short_body = json!({"token": short}).to_string();
    wait_until("the 1s wrapping token to expire", || {
        let api = &api;
        let short_body = short_body.clone();
        async move {
            api.call(
                "POST",
                "/v1/sys/wrapping/lookup",
                None,
                Some(&short_body),
                &[],
            )
            .await
            .status
                == 400
        }
    })
    .await;
    let a = api
        .call("POST", "/v1/sys/wrapping/unwrap", Some(&short), None, &[])
        .await;
    assert_eq!((a.status, a.body.as_str()), (400, gone.as_str()));
    server.shutdown().await;
}

#[tokio::test]
async fn secret_id_cidrs_use_the_tcp_peer_and_uses_burn_before_the_check() {
    let (server, api) = start(Config::new(ROOT)).await;
    let role_id = setup(&api).await;
    let from_5 = Api::new(&server, Some("127.0.0.5".parse().expect("ip")));
    let from_1 = Api::new(&server, Some("127.0.0.1".parse().expect("ip")));

    // Unlimited uses: "through CIDR restrictions" wording.
    let sid = secret_id(&api, json!({"cidr_list": "127.0.0.5/32"})).await;
    let sid = sid["secret_id"].as_str().expect("sid").to_string();
    let a = from_1.login(&role_id, &sid).await;
    assert_eq!(
        (a.status, a.body),
        (
            400,
            Answer::errors_body(&[
                "source address \"127.0.0.1\" unauthorized through CIDR restrictions on the secret ID"
            ])
        )
    );
    let a = from_5.login(&role_id, &sid).await;
    assert_eq!(a.status, 200, "{a:?}");

    // Limited uses: "%!w(<nil>)" wording, and the refused login still burned a use.
    let generated = secret_id(&api, json!({"cidr_list": ["127.0.0.5/32"], "num_uses": 2})).await;
    let sid = generated["secret_id"].as_str().expect("sid").to_string();
    let a = from_1.login(&role_id, &sid).await;
    assert_eq!(
        (a.status, a.body),
        (
            400,
            Answer::errors_body(&[
                "source address \"127.0.0.1\" unauthorized by CIDR restrictions on the secret ID: %!w(<nil>)"
            ])
        )
    );
    let look = api
        .ok(
            "POST",
            "/v1/auth/approle/role/web-app/secret-id/lookup",
            Some(json!({"secret_id": sid})),
        )
        .await;
    assert_eq!(look["data"]["secret_id_num_uses"], 1);
    assert_eq!(look["data"]["cidr_list"], json!(["127.0.0.5/32"]));
    assert_eq!(from_5.login(&role_id, &sid).await.status, 200);
    assert_eq!(
        from_5.login(&role_id, &sid).await.status,
        400,
        "both uses are gone"
    );

    // A secret id is refused from the moment its TTL runs out.
    let short = secret_id(&api, json!({"ttl": "1s"})).await;
    assert_eq!(short["secret_id_ttl"], 1);
    let short = short["secret_id"].as_str().expect("sid").to_string();
    let lookup_body = json!({"secret_id": short});
    wait_until("the 1s secret id to expire", || {
        let api = &api;
        let lookup_body = lookup_body.clone();
        async move {
            api.root(
                "POST",
                "/v1/auth/approle/role/web-app/secret-id/lookup",
                Some(lookup_body),
            )
            .await
            .status
                == 204
        }
    })
    .await;
    let a = api.login(&role_id, &short).await;
    assert_eq!(
        (a.status, a.body),
        (400, Answer::errors_body(&["invalid role or secret ID"]))
    );

    // Role-level secret_id_bound_cidrs.
    api.ok(
        "POST",
        "/v1/auth/approle/role/web-app",
        Some(json!({"secret_id_bound_cidrs": "127.0.0.5/32"})),
    )
    .await;
    let sid = secret_id(&api, json!({})).await["secret_id"]
        .as_str()
        .expect("sid")
        .to_string();
    let a = from_1.login(&role_id, &sid).await;
    assert_eq!(
        (a.status, a.body),
        (
            400,
            Answer::errors_body(&[
                "source address \"127.0.0.1\" unauthorized by CIDR restrictions on the role: %!w(<nil>)"
            ])
        )
    );
    assert_eq!(from_5.login(&role_id, &sid).await.status, 200);
    server.shutdown().await;
}

#[tokio::test]
async fn tokens_honour_bound_cidrs_acl_ttl_and_use_limits() {
    let (server, api) = start(Config::new(ROOT)).await;
    let role_id = setup(&api).await;
    let from_5 = Api::new(&server, Some("127.0.0.5".parse().expect("ip")));
    let from_1 = Api::new(&server, Some("127.0.0.1".parse().expect("ip")));

    // token_bound_cidrs from the secret id bind the login token to 127.0.0.5.
    let sid = secret_id(&api, json!({"token_bound_cidrs": ["127.0.0.5/32"]})).await;
    let a = from_5
        .login(&role_id, sid["secret_id"].as_str().expect("sid"))
        .await;
    let token = a.json()["auth"]["client_token"]
        .as_str()
        .expect("token")
        .to_string();
    let a = from_1
        .call("GET", "/v1/auth/token/lookup-self", Some(&token), None, &[])
        .await;
    assert_eq!(
        (a.status, a.body),
        (403, Answer::errors_body(&[MULTI_DENIED]))
    );
    let a = from_5
        .call("GET", "/v1/auth/token/lookup-self", Some(&token), None, &[])
        .await;
    assert_eq!(a.status, 200);
    assert_eq!(a.json()["data"]["bound_cidrs"], json!(["127.0.0.5/32"]));

    // ACL: the default policy allows self endpoints, nothing else.
    let sid = secret_id(&api, json!({})).await;
    let a = api
        .login(&role_id, sid["secret_id"].as_str().expect("sid"))
        .await;
    let token = a.json()["auth"]["client_token"]
        .as_str()
        .expect("token")
        .to_string();
    for (method, path, want) in [
        ("GET", "/v1/auth/token/lookup-self", 200),
        ("GET", "/v1/sys/mounts", 403),
        ("POST", "/v1/auth/approle/role/web-app/secret-id", 403),
        ("GET", "/v1/secret/data/other", 403),
        ("GET", "/v1/secret/data/web-app/missing", 404),
    ] {
        let a = api.call(method, path, Some(&token), None, &[]).await;
        assert_eq!(a.status, want, "{method} {path}: {a:?}");
        if want == 403 {
            assert_eq!(a.body, Answer::errors_body(&[MULTI_DENIED]));
        }
    }
    // A policy granting update on the role's secret-id path lets a token mint secret ids.
    api.ok("PUT", "/v1/sys/policy/issuer", Some(json!({"policy": "path \"auth/approle/role/+/secret-id\" { capabilities = [\"update\"] }"})))
        .await;
    let created = api
        .ok(
            "POST",
            "/v1/auth/token/create",
            Some(json!({"policies": ["issuer"], "ttl": "1h"})),
        )
        .await;
    let issuer = created["auth"]["client_token"]
        .as_str()
        .expect("issuer")
        .to_string();
    assert_eq!(created["auth"]["policies"], json!(["default", "issuer"]));
    assert_eq!(created["auth"]["orphan"], false);
    let a = api
        .call(
            "POST",
            "/v1/auth/approle/role/web-app/secret-id",
            Some(&issuer),
            Some("{}"),
            &[],
        )
        .await;
    assert_eq!(a.status, 200, "{a:?}");

    // TTL expiry: a 1s token becomes invalid.
    let created = api
        .ok(
            "POST",
            "/v1/auth/token/create",
            Some(json!({"ttl": "1s", "policies": ["default"]})),
        )
        .await;
    let short = created["auth"]["client_token"]
        .as_str()
        .expect("short")
        .to_string();
    wait_until("the 1s token to expire", || {
        let api = &api;
        let short = short.clone();
        async move {
            api.call("GET", "/v1/auth/token/lookup-self", Some(&short), None, &[])
                .await
                .status
                == 403
        }
    })
    .await;
    let a = api
        .call("GET", "/v1/auth/token/lookup-self", Some(&short), None, &[])
        .await;
    assert_eq!(a.body, Answer::errors_body(&[INVALID_TOKEN]));

    // num_uses: two uses, then the token is revoked.
    let created = api
        .ok(
            "POST",
            "/v1/auth/token/create",
            Some(json!({"num_uses": 2, "policies": ["default"]})),
        )
        .await;
    let limited = created["auth"]["client_token"]
        .as_str()
        .expect("limited")
        .to_string();
    let accessor = created["auth"]["accessor"]
        .as_str()
        .expect("accessor")
        .to_string();
    for _ in 0..2 {
        let a = api
            .call(
                "GET",
                "/v1/auth/token/lookup-self",
                Some(&limited),
                None,
                &[],
            )
            .await;
        assert_eq!(a.status, 200);
    }
    let a = api
        .call(
            "GET",
            "/v1/auth/token/lookup-self",
            Some(&limited),
            None,
            &[],
        )
        .await;
    assert_eq!(
        (a.status, a.body),
        (403, Answer::errors_body(&[INVALID_TOKEN]))
    );
    let a = api
        .root(
            "POST",
            "/v1/auth/token/lookup-accessor",
            Some(json!({"accessor": accessor})),
        )
        .await;
    assert_eq!(a.status, 400);

    // Batch tokens from a batch role: hvb. prefix, no accessor, not renewable, still usable.
    api.ok(
        "POST",
        "/v1/auth/approle/role/batchy",
        Some(json!({"token_type": "batch", "token_policies": ["web-app-kv"]})),
    )
    .await;
    let batch_role_id = api
        .ok("GET", "/v1/auth/approle/role/batchy/role-id", None)
        .await["data"]["role_id"]
        .as_str()
        .expect("role id")
        .to_string();
    let sid = api
        .ok(
            "POST",
            "/v1/auth/approle/role/batchy/secret-id",
            Some(json!({})),
        )
        .await["data"]["secret_id"]
        .as_str()
        .expect("sid")
        .to_string();
    let auth = api.login(&batch_role_id, &sid).await.json()["auth"].clone();
    assert!(
        auth["client_token"]
            .as_str()
            .expect("t")
            .starts_with("hvb.")
    );
    assert_eq!(auth["accessor"], "");
    assert_eq!(auth["renewable"], false);
    assert_eq!(auth["token_type"], "batch");
    let a = api
        .call(
            "GET",
            "/v1/auth/token/lookup-self",
            auth["client_token"].as_str(),
            None,
            &[],
        )
        .await;
    assert_eq!(a.json()["data"]["type"], "batch");
    let a = api
        .call(
            "POST",
            "/v1/auth/token/renew-self",
            auth["client_token"].as_str(),
            None,
            &[],
        )
        .await;
    assert_eq!(
        (a.status, a.body),
        (
            400,
            Answer::errors_body(&["batch tokens cannot be renewed"])
        )
    );

    // Revoke by accessor.
    let created = api
        .ok("POST", "/v1/auth/token/create", Some(json!({})))
        .await;
    let t = created["auth"]["client_token"]
        .as_str()
        .expect("t")
        .to_string();
    let acc = created["auth"]["accessor"]
        .as_str()
        .expect("acc")
        .to_string();
    let a = api
        .root(
            "POST",
            "/v1/auth/token/lookup-accessor",
            Some(json!({"accessor": acc})),
        )
        .await;
    assert_eq!(a.json()["data"]["id"], "");
    assert_eq!(
        api.root(
            "POST",
            "/v1/auth/token/revoke-accessor",
            Some(json!({"accessor": acc}))
        )
        .await
        .status,
        204
    );
    let a = api
        .call("GET", "/v1/auth/token/lookup-self", Some(&t), None, &[])
        .await;
    assert_eq!(a.status, 403);
    server.shutdown().await;
}

#[tokio::test]
async fn sealing_answers_503_and_unsealing_keeps_state() {
    let (server, api) = start(Config::new(ROOT)).await;
    setup(&api).await;
    assert_eq!(api.root("PUT", "/v1/sys/seal", None).await.status, 204);
    let sealed = Answer::errors_body(&["Vault is sealed"]);
    for path in [
        "/v1/auth/token/lookup-self",
        "/v1/auth/approle/role/web-app",
        "/v1/sys/wrapping/lookup",
    ] {
        let a = api.root("GET", path, None).await;
        assert_eq!(
            (a.status, a.body.as_str()),
            (503, sealed.as_str()),
            "{path}"
        );
    }
    let a = api.call("GET", "/v1/sys/health", None, None, &[]).await;
    assert_eq!(a.status, 503);
    assert_eq!(a.json()["sealed"], true);
    let a = api
        .call("GET", "/v1/sys/health?sealedcode=200", None, None, &[])
        .await;
    assert_eq!(a.status, 200);
    let a = api
        .call(
            "PUT",
            "/v1/sys/unseal",
            None,
            Some(&json!({"key": "wrong"}).to_string()),
            &[],
        )
        .await;
    assert_eq!(a.status, 400);
    let a = api
        .call(
            "PUT",
            "/v1/sys/unseal",
            None,
            Some(&json!({"key": server.unseal_key}).to_string()),
            &[],
        )
        .await;
    assert_eq!(a.status, 200);
    assert_eq!(a.json()["sealed"], false);
    let a = api.root("GET", "/v1/auth/approle/role/web-app", None).await;
    assert_eq!(a.status, 200, "state survives seal/unseal");

    // The library handle can seal too (for outage tests).
    server.seal();
    assert_eq!(
        api.root("GET", "/v1/auth/token/lookup-self", None)
            .await
            .status,
        503
    );
    server.unseal();
    assert_eq!(
        api.root("GET", "/v1/auth/token/lookup-self", None)
            .await
            .status,
        200
    );
    server.shutdown().await;
}

#[tokio::test]
async fn audit_log_counts_requests_and_never_holds_secrets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("audit.jsonl");
    let mut config = Config::new(ROOT);
    config.audit_log = Some(log.clone());
    let (server, api) = start(config).await;
    let role_id = setup(&api).await;

    let mut secrets = vec![ROOT.to_string()];
    for _ in 0..3 {
        let a = api
            .call(
                "POST",
                "/v1/auth/approle/role/web-app/secret-id",
                Some(ROOT),
                Some("{}"),
                &[("X-Vault-Wrap-TTL", "60")],
            )
            .await;
        let w = a.json()["wrap_info"]["token"]
            .as_str()
            .expect("w")
            .to_string();
        let u = api
            .call("POST", "/v1/sys/wrapping/unwrap", Some(&w), None, &[])
            .await;
        let sid = u.json()["data"]["secret_id"]
            .as_str()
            .expect("sid")
            .to_string();
        let l = api.login(&role_id, &sid).await;
        let t = l.json()["auth"]["client_token"]
            .as_str()
            .expect("t")
            .to_string();
        api.call("GET", "/v1/auth/token/lookup-self", Some(&t), None, &[])
            .await;
        api.call(
            "GET",
            &format!("/v1/sys/wrapping/lookup?token={w}"),
            None,
            None,
            &[],
        )
        .await;
        secrets.extend([w, sid, t]);
    }
    let entries = server.audit_entries();
    let generations = entries
        .iter()
        .filter(|e| e.path == "auth/approle/role/web-app/secret-id" && e.operation == "update")
        .count();
    assert_eq!(generations, 3);
    assert!(
        entries
            .iter()
            .filter(|e| e.path == "auth/approle/role/web-app/secret-id")
            .all(|e| e.wrapped)
    );
    let failed = entries
        .iter()
        .filter(|e| e.path == "sys/wrapping/lookup")
        .count();
    assert_eq!(failed, 3);
    assert!(entries.iter().any(|e| e.path == "auth/approle/login"
        && e.status == 200
        && e.remote_address == "127.0.0.1"));
    assert!(
        entries
            .iter()
            .filter(|e| e.path == "auth/token/lookup-self")
            .all(|e| e.accessor.len() == 24)
    );
    server.shutdown().await;

    let file = std::fs::read_to_string(&log).expect("audit file");
    assert_eq!(file.lines().count(), entries.len());
    for line in file.lines() {
        let v: Value = serde_json::from_str(line).expect("json line");
        for key in [
            "time",
            "remote_address",
            "path",
            "operation",
            "accessor",
            "status",
            "error",
            "wrapped",
        ] {
            assert!(v.get(key).is_some(), "{key} missing in {line}");
        }
    }
    let memory = serde_json::to_string(&entries).expect("json");
    for s in &secrets {
        assert!(
            !file.contains(s.as_str()),
            "a secret leaked into the audit file"
        );
        assert!(
            !memory.contains(s.as_str()),
            "a secret leaked into the audit entries"
        );
    }
}

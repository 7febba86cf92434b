//! End-to-end push tests: the real `approle-init` binary, a fake Vault, mutual-TLS clients — all on
//! loopback. Each test listens on its own 127.0.77.N address.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use approle_shared::exit::ExitCode;
use approle_shared::push::{MAX_BODY_BYTES, PushError, PushResponse};
use common::{FakeVault, Init, Pki, assert_no_secrets, init_crypto, raw_request, unique};
use serde_json::{Value, json};

const ROLE: &str = "web";
const CREATION_PATH: &str = "auth/approle/role/web/secret-id";

/// One receiver under test with everything around it.
struct Fixture {
    pki: Pki,
    vault: FakeVault,
    out: tempfile::TempDir,
    init: Init,
    url: String,
    role_id: String,
    pod_uid: String,
}

impl Fixture {
    /// Starts the fake Vault and `approle-init` on `listen_ip` (with `extra` flag/value pairs),
    /// waits for `listening on`.
    async fn start(listen_ip: &str, extra: &[&str]) -> Fixture {
        init_crypto();
        let pki = Pki::new("injector CA");
        let role_id = unique("role-id");
        let pod_uid = unique("pod-uid");
        let vault = FakeVault::start(&role_id).await;
        let out = tempfile::tempdir().expect("out dir");
        let mut args: Vec<String> = [
            "--listen",
            &format!("{listen_ip}:0"),
            "--role",
            ROLE,
            "--pod-uid",
            &pod_uid,
            "--vault-addr",
            &vault.addr,
            "--client-ca-pem",
            pki.ca.cert_pem(),
            "--out-dir",
            &out.path().display().to_string(),
            "--timeout",
            "60s",
            "--vault-timeout",
            "20s",
        ]
        .map(String::from)
        .to_vec();
        // `extra` holds flag/value pairs that replace a base flag's value or add a flag.
        for pair in extra.chunks(2) {
            match args.iter().position(|a| a == pair[0]) {
                Some(i) => args[i + 1] = pair[1].to_owned(),
                None => args.extend(pair.iter().map(|s| s.to_string())),
            }
        }
        let mut init = Init::spawn(&args, &[]);
        let addr = init.listening().await;
        assert_eq!(
            addr.ip().to_string(),
            listen_ip,
            "the real bound address is logged"
        );
        assert_ne!(addr.port(), 0, "the real bound port is logged");
        Fixture {
            pki,
            vault,
            out,
            init,
            url: format!("https://{addr}"),
            role_id,
            pod_uid,
        }
    }

    fn push_body(&self, wrapping_token: &str) -> Value {
        json!({
            "pod_uid": self.pod_uid, "role": ROLE, "role_id": self.role_id,
            "wrapping_token": wrapping_token,
        })
    }

    /// POSTs `body` to /v1/secret-id with the controller's certificate; returns status and body.
    async fn push(&self, body: &Value) -> (u16, Value) {
        self.post_raw("/v1/secret-id", serde_json::to_vec(body).expect("json"))
            .await
    }

    async fn post_raw(&self, path: &str, body: Vec<u8>) -> (u16, Value) {
        let resp = self
            .pki
            .push_client()
            .post(format!("{}{path}", self.url))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("push answered");
        let status = resp.status().as_u16();
        let json = resp.json().await.expect("JSON answer");
        (status, json)
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let resp = self
            .pki
            .push_client()
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .expect("answered");
        (
            resp.status().as_u16(),
            resp.json().await.expect("JSON answer"),
        )
    }

    /// Waits for the exit; checks the code and that no credential reached the output.
    async fn exits_with(&mut self, expected: ExitCode) -> String {
        let (code, output) = self.init.exit().await;
        assert_eq!(
            code,
            i32::from(expected.code()),
            "exit code; output:\n{output}"
        );
        assert_no_secrets(&output, &self.vault.secrets());

        output
    }
}

fn error_of(body: &Value) -> String {
    serde_json::from_value::<PushError>(body.clone())
        .expect("refusal body is {\"error\": …}")
        .error
}

fn mode_of(path: &Path) -> u32 {
    std::fs::metadata(path)
        .expect("file exists")
        .permissions()
        .mode()
        & 0o777
}

#[tokio::test]
async fn refused_pushes_leave_the_receiver_waiting_and_a_valid_push_then_delivers() {
    // Trace level everywhere: even the most verbose logs must not carry a credential.
    let mut f = Fixture::start(
        "127.0.77.1",
        &[
            "--source-address",
            "127.0.78.1",
            "--body-read-timeout",
            "1s",
            "--log-level",
            "trace",
        ],
    )
    .await;
    let token = f.vault.wrap_secret_id(CREATION_PATH);

    // TLS refusals: no client certificate, and one from another CA.
    let anonymous = common::client_without_certificate()
        .post(format!("{}/v1/secret-id", f.url))
        .json(&f.push_body(&token))
        .send()
        .await;
    assert!(
        anonymous.is_err(),
        "a client without certificate is refused"
    );
    let stranger = Pki::new("some other CA")
        .push_client()
        .post(format!("{}/v1/secret-id", f.url))
        .json(&f.push_body(&token))
        .send()
        .await;
    assert!(
        stranger.is_err(),
        "a certificate from another CA is refused"
    );
    f.init
        .wait_for_output(|out| out.matches("TLS handshake refused").count() >= 2)
        .await;
    assert!(f.init.is_running(), "TLS refusals do not stop the receiver");

    // HTTP refusals, each answered while the receiver keeps waiting.
    let (status, body) = f.get("/v1/nope").await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = f.get("/v1/identity").await;
    assert_eq!(
        status, 404,
        "no identity without --identity-token-file: {body}"
    );
    assert!(error_of(&body).contains("--identity-token-file"), "{body}");
    let (status, body) = f.get("/v1/secret-id").await;
    assert_eq!(status, 405, "{body}");
    let (status, body) = f.post_raw("/v1/secret-id", b"hello".to_vec()).await;
    assert_eq!(status, 400, "garbage body: {body}");
    assert!(error_of(&body).contains("not valid JSON"), "{body}");
    let mut extra_field = f.push_body(&token);
    extra_field["ttl"] = json!(60);
    let (status, body) = f.push(&extra_field).await;
    assert_eq!(status, 400, "unknown field: {body}");
    assert!(error_of(&body).contains("ttl"), "names the field: {body}");
    let (status, body) = f
        .post_raw("/v1/secret-id", vec![b' '; MAX_BODY_BYTES + 1])
        .await;
    assert_eq!(status, 413, "oversized by Content-Length: {body}");
    let mut wrong_pod = f.push_body(&token);
    wrong_pod["pod_uid"] = json!("another-pod");
    let (status, body) = f.push(&wrong_pod).await;
    assert_eq!(status, 403, "wrong pod uid: {body}");
    let mut wrong_role = f.push_body(&token);
    wrong_role["role"] = json!("db");
    let (status, body) = f.push(&wrong_role).await;
    assert_eq!(status, 403, "wrong role: {body}");

    // Hand-written requests: a chunked body that grows too large, and one that stalls.
    let addr = f.init.addr.expect("listening");
    let chunk = vec![b'x'; MAX_BODY_BYTES + 1];
    let mut chunked = format!(
        "POST /v1/secret-id HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
         transfer-encoding: chunked\r\n\r\n{:x}\r\n",
        chunk.len()
    )
    .into_bytes();
    chunked.extend_from_slice(&chunk);
    chunked.extend_from_slice(b"\r\n0\r\n\r\n");
    assert_eq!(
        raw_request(&f.pki, addr, &chunked).await,
        413,
        "oversized while reading"
    );
    let stalled = b"POST /v1/secret-id HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
                    content-length: 100\r\n\r\n{\"pod_uid\":";
    assert_eq!(raw_request(&f.pki, addr, stalled).await, 408, "slow body");

    assert!(f.vault.calls().is_empty(), "no refused push reached Vault");
    assert!(
        f.init.is_running(),
        "every refusal left the receiver waiting"
    );

    // Finally the real push.
    let (status, body) = f.push(&f.push_body(&token)).await;
    assert_eq!(status, 200, "{body}");
    let delivered: PushResponse = serde_json::from_value(body).expect("PushResponse");
    assert_eq!(delivered.status, "delivered");
    assert_eq!(delivered.lease_duration, 3600);
    let expires: jiff::Timestamp = delivered.expires_at.parse().expect("RFC 3339 expires_at");
    assert!(
        expires > jiff::Timestamp::now(),
        "{expires} is in the future"
    );
    let client_token = f
        .vault
        .token_for(&delivered.token_accessor)
        .expect("the accessor belongs to the issued token");

    let token_path = f.out.path().join("token");
    let json_path = f.out.path().join("token.json");
    assert_eq!(
        std::fs::read_to_string(&token_path).expect("token"),
        client_token
    );
    let file: Value =
        serde_json::from_slice(&std::fs::read(&json_path).expect("token.json")).expect("JSON");
    assert_eq!(file["client_token"], json!(client_token));
    assert_eq!(file["accessor"], json!(delivered.token_accessor));
    assert_eq!(file["expires_at"], json!(delivered.expires_at));
    assert_eq!(file["role"], json!(ROLE));
    assert_eq!(file["pod_uid"], json!(f.pod_uid));
    assert_eq!(file["vault_addr"], json!(f.vault.addr));
    assert_eq!(file["policies"], json!(["default", "web"]));
    assert_eq!(mode_of(&token_path), 0o440);
    assert_eq!(mode_of(&json_path), 0o440);

    let output = f.exits_with(ExitCode::Delivered).await;
    assert!(
        output.contains(&format!(
            "delivered token accessor={} role={ROLE} pod_uid={}",
            delivered.token_accessor, f.pod_uid
        )),
        "{output}"
    );
    assert_eq!(
        f.vault.call_paths(),
        [
            "sys/wrapping/lookup",
            "sys/wrapping/unwrap",
            "auth/approle/login"
        ],
        "lookup, then unwrap, then login"
    );
    for call in f.vault.calls() {
        assert_eq!(
            call.peer.to_string(),
            "127.0.78.1",
            "--source-address is used"
        );
    }
}

#[tokio::test]
async fn a_push_while_another_is_in_flight_is_busy() {
    let mut f = Fixture::start("127.0.77.2", &[]).await;
    let first = f.vault.wrap_secret_id(CREATION_PATH);
    let second = f.vault.wrap_secret_id(CREATION_PATH);
    f.vault.hold_lookups();
    let client = f.pki.push_client();
    let in_flight = tokio::spawn(
        client
            .post(format!("{}/v1/secret-id", f.url))
            .json(&f.push_body(&first))
            .send(),
    );
    f.vault.wait_for_calls(1).await;

    let (status, body) = f.push(&f.push_body(&second)).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(
        f.vault.calls().len(),
        1,
        "the busy push never reached Vault"
    );

    f.vault.release_lookups();
    let resp = in_flight.await.expect("task").expect("answered");
    assert_eq!(resp.status().as_u16(), 200);
    f.exits_with(ExitCode::Delivered).await;
}

#[tokio::test]
async fn a_delivery_in_flight_when_the_timeout_strikes_is_let_finish() {
    let mut f = Fixture::start("127.0.77.8", &["--timeout", "1s"]).await;
    let token = f.vault.wrap_secret_id(CREATION_PATH);
    f.vault.hold_lookups();
    let client = f.pki.push_client();
    let in_flight = tokio::spawn(
        client
            .post(format!("{}/v1/secret-id", f.url))
            .json(&f.push_body(&token))
            .send(),
    );
    f.vault.wait_for_calls(1).await;
    f.init
        .wait_for_output(|out| out.contains("passed while a delivery is in flight"))
        .await;

    f.vault.release_lookups();
    let resp = in_flight.await.expect("task").expect("answered");
    assert_eq!(resp.status().as_u16(), 200);
    f.exits_with(ExitCode::Delivered).await;
}

#[tokio::test]
async fn vault_unavailable_at_lookup_is_502_and_the_next_push_delivers() {
    let mut f = Fixture::start("127.0.77.3", &[]).await;
    let token = f.vault.wrap_secret_id(CREATION_PATH);
    f.vault.fail_lookups(1);

    let (status, body) = f.push(&f.push_body(&token)).await;
    assert_eq!(status, 502, "{body}");
    assert!(error_of(&body).contains("500"), "{body}");
    assert!(f.init.is_running());

    let (status, body) = f.push(&f.push_body(&token)).await;
    assert_eq!(status, 200, "{body}");
    f.exits_with(ExitCode::Delivered).await;
}

#[tokio::test]
async fn wrapping_token_from_another_path_is_a_security_refusal() {
    let mut f = Fixture::start("127.0.77.4", &[]).await;
    let token = f.vault.wrap_secret_id("auth/approle/role/admin/secret-id");

    let (status, body) = f.push(&f.push_body(&token)).await;
    assert_eq!(status, 422, "{body}");
    assert!(error_of(&body).contains("creation_path"), "{body}");

    let output = f.exits_with(ExitCode::Security).await;
    let line = output
        .lines()
        .find(|l| l.contains("SECURITY:"))
        .unwrap_or_else(|| panic!("a SECURITY: line in\n{output}"));
    for expected in [
        "auth/approle/role/admin/secret-id",
        CREATION_PATH,
        &f.pod_uid,
        "role=web",
    ] {
        assert!(line.contains(expected), "{expected:?} in {line}");
    }
    assert_eq!(
        f.vault.call_paths(),
        ["sys/wrapping/lookup"],
        "the token is never unwrapped"
    );
}

#[tokio::test]
async fn used_wrapping_token_is_a_security_refusal() {
    let mut f = Fixture::start("127.0.77.5", &[]).await;
    let token = f.vault.wrap_secret_id(CREATION_PATH);
    f.vault.use_up(&token);

    let (status, body) = f.push(&f.push_body(&token)).await;
    assert_eq!(status, 422, "{body}");

    let output = f.exits_with(ExitCode::Security).await;
    assert!(output.contains("SECURITY:"), "{output}");
    assert_eq!(f.vault.call_paths(), ["sys/wrapping/lookup"]);
}

#[tokio::test]
async fn wrapping_token_used_between_lookup_and_unwrap_is_a_security_refusal() {
    let mut f = Fixture::start("127.0.77.9", &[]).await;
    let token = f.vault.wrap_secret_id(CREATION_PATH);
    f.vault.steal_after_lookup();

    let (status, body) = f.push(&f.push_body(&token)).await;
    assert_eq!(status, 422, "{body}");
    assert!(error_of(&body).contains("at unwrap"), "{body}");

    let output = f.exits_with(ExitCode::Security).await;
    assert!(output.contains("SECURITY:"), "{output}");
    assert_eq!(
        f.vault.call_paths(),
        ["sys/wrapping/lookup", "sys/wrapping/unwrap"],
        "no login without a secret_id"
    );
}

#[tokio::test]
async fn login_failure_is_502_and_exit_5() {
    let mut f = Fixture::start("127.0.77.6", &[]).await;
    let token = f.vault.wrap_secret_id(CREATION_PATH);
    f.vault.refuse_logins();

    let (status, body) = f.push(&f.push_body(&token)).await;
    assert_eq!(status, 502, "{body}");
    assert!(
        error_of(&body).contains("invalid role or secret ID"),
        "Vault's reason is passed on: {body}"
    );

    f.exits_with(ExitCode::VaultLogin).await;
    assert!(!f.out.path().join("token").exists());
}

#[tokio::test]
async fn unwritable_output_is_500_and_exit_6() {
    let mut f = Fixture::start("127.0.77.7", &[]).await;
    let token = f.vault.wrap_secret_id(CREATION_PATH);
    // The directory was fine at start (checked as configuration) and disappears afterwards.
    std::fs::remove_dir(f.out.path()).expect("remove out dir");

    let (status, body) = f.push(&f.push_body(&token)).await;
    assert_eq!(status, 500, "{body}");
    assert!(error_of(&body).contains("token accessor"), "{body}");

    f.exits_with(ExitCode::WriteFailed).await;
}

/// Reads one HTTP/1.1 response (status line, headers, `content-length` body) from `tls`, leaving
/// the connection open.
async fn read_response(
    tls: &mut (impl tokio::io::AsyncRead + Unpin),
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(common::DEADLINE, tls.read(&mut byte))
            .await
            .expect("answer in time")
            .expect("read");
        assert_eq!(n, 1, "the connection closed before the headers ended");
        buf.push(byte[0]);
    }
    let head = String::from_utf8(buf).expect("ASCII head");
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.strip_prefix("HTTP/1.1 "))
        .and_then(|l| l.get(..3))
        .and_then(|c| c.parse().ok())
        .expect("status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_owned()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .map(|(_, v)| v.parse().expect("length"))
        .expect("content-length");
    let mut body = vec![0u8; len];
    tls.read_exact(&mut body).await.expect("body");
    (status, headers, body)
}

#[tokio::test]
async fn the_identity_token_is_shown_to_the_controller_only_and_the_push_follows_on_the_same_connection()
 {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().expect("dir");
    let identity_file = dir.path().join("token");
    let first = unique("identity-token-one");
    std::fs::write(&identity_file, format!("{first}\n")).expect("token file");
    let identity_arg = identity_file.display().to_string();
    let mut f = Fixture::start(
        "127.0.77.30",
        &[
            "--identity-token-file",
            &identity_arg,
            "--log-level",
            "trace",
        ],
    )
    .await;

    // Without the controller's certificate there is no answer at all.
    let anonymous = common::client_without_certificate()
        .get(format!("{}/v1/identity", f.url))
        .send()
        .await;
    assert!(
        anonymous.is_err(),
        "a client without certificate is refused"
    );
    let (status, body) = f.get("/v1/identity").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"token": first}));
    let (status, body) = f.post_raw("/v1/identity", Vec::new()).await;
    assert_eq!(status, 405, "{body}");

    // Read at every request: the kubelet rotates the file.
    let second = unique("identity-token-two");
    std::fs::write(&identity_file, &second).expect("rotate");

    // One TLS session: identity, then the push, as the controller does it.
    let addr = f.init.addr.expect("listening");
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
    let mut tls = f
        .pki
        .raw_connector()
        .connect(name, tcp)
        .await
        .expect("handshake");
    tls.write_all(b"GET /v1/identity HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("write");
    let (status, headers, body) = read_response(&mut tls).await;
    assert_eq!(status, 200);
    let shown: Value = serde_json::from_slice(&body).expect("JSON");
    assert_eq!(shown["token"], json!(second));
    assert!(
        !headers
            .iter()
            .any(|(k, v)| k == "connection" && v == "close"),
        "the connection stays open for the push: {headers:?}"
    );
    assert!(headers.contains(&("cache-control".into(), "no-store".into())));
    let wrapping = f.vault.wrap_secret_id(CREATION_PATH);
    let push = serde_json::to_vec(&f.push_body(&wrapping)).expect("json");
    let mut request = format!(
        "POST /v1/secret-id HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        push.len()
    )
    .into_bytes();
    request.extend_from_slice(&push);
    tls.write_all(&request).await.expect("write push");
    let (status, headers, body) = read_response(&mut tls).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert!(
        headers.contains(&("connection".into(), "close".into())),
        "one push per connection: {headers:?}"
    );

    let output = f.exits_with(ExitCode::Delivered).await;
    for token in [&first, &second] {
        assert!(
            !output.contains(token.as_str()),
            "the identity token was logged"
        );
    }
}

//! The `vault-dev` binary: start it on port 0, read its single ready line, make a call, SIGTERM it.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::Command;

/// Generous bound for a debug binary to start on a loaded 2-core machine.
const START_DEADLINE: Duration = Duration::from_secs(60);

fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

async fn run(extra: &[&str]) -> (String, String, std::process::ExitStatus) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut child = Command::new(env!("CARGO_BIN_EXE_vault-dev"))
        .args(["--listen", "127.0.0.1:0", "--root-token", "bin-root"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("vault-dev spawns");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let ready = tokio::time::timeout(START_DEADLINE, lines.next_line())
        .await
        .expect("ready line in time")
        .expect("readable stdout")
        .expect("one line");
    assert!(ready.starts_with("vault-dev ready: addr="), "{ready}");
    let addr = field(&ready, "addr").expect("addr").to_string();
    assert!(!addr.ends_with(":0"), "the real port is shown: {ready}");

    let mut builder = reqwest::Client::builder();
    if let Some(ca) = field(&ready, "cacert") {
        let pem = std::fs::read(ca).expect("ca file");
        builder = builder.add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("pem"));
    }
    let http = builder.build().expect("client");
    let resp = http
        .get(format!("{addr}/v1/auth/token/lookup-self"))
        .header("X-Vault-Token", "bin-root")
        .send()
        .await
        .expect("call");
    assert_eq!(resp.status().as_u16(), 200);
    let body: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(body["data"]["policies"], serde_json::json!(["root"]));

    let pid = child.id().expect("pid").to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill runs");
    assert!(killed.success());
    let status = tokio::time::timeout(START_DEADLINE, child.wait())
        .await
        .expect("exits after SIGTERM")
        .expect("wait");
    let mut rest = String::new();
    lines
        .into_inner()
        .read_to_string(&mut rest)
        .await
        .expect("stdout rest");
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        e.read_to_string(&mut stderr).await.expect("stderr");
    }
    assert_eq!(rest, "", "exactly one line on stdout");
    (ready, stderr, status)
}

#[tokio::test]
async fn binary_prints_one_ready_line_serves_and_stops_on_sigterm() {
    let (ready, stderr, status) = run(&[]).await;
    assert!(ready.starts_with("vault-dev ready: addr=http://127.0.0.1:"));
    assert!(field(&ready, "unseal_key").is_some());
    assert!(status.success(), "{status:?} {stderr}");
    assert!(!ready.contains("bin-root") && !stderr.contains("bin-root"));
}

#[tokio::test]
async fn binary_serves_tls_with_the_ca_it_writes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().display().to_string();
    let audit = dir.path().join("audit.log").display().to_string();
    let (ready, stderr, status) = run(&["--tls-cert-out", &out, "--audit-log", &audit]).await;
    assert!(
        ready.starts_with("vault-dev ready: addr=https://127.0.0.1:"),
        "{ready}"
    );
    assert_eq!(
        field(&ready, "cacert"),
        Some(dir.path().join("ca.pem").display().to_string().as_str())
    );
    assert!(status.success(), "{status:?} {stderr}");
    let log = std::fs::read_to_string(&audit).expect("audit log");
    assert!(log.contains("\"path\":\"auth/token/lookup-self\""));
    assert!(!log.contains("bin-root"));
}

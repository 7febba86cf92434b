//! The push protocol against the real approle-init binary and vault-dev, with the test in the
//! controller's place: it mints wrapped secret_ids exactly as the controller does and pushes them.

use std::net::SocketAddr;
use std::time::Duration;

use approle_shared::push::PushRequest;
use approle_shared::secret::{ClientToken, WrappingToken};
use approle_shared::tls::{Ca, Usage, push_client_config};
use approle_shared::vault::{SecretIdRequest, Vault, VaultConfig, secret_id_path};
use approle_testkit::harness::{self, Proc, ROLE, Stack, StackOptions};
use tokio::process::Command;

struct Init {
    proc: Proc,
    addr: SocketAddr,
    uid: String,
}

/// Starts approle-init for a pretend pod at `ip`.
async fn start_init(stack: &Stack, ip: &str, name: &str) -> Init {
    let addr: SocketAddr = format!("{ip}:8643").parse().expect("addr");
    let uid = format!("3f6a1c2e-0000-4000-8000-pod-{name}");
    let out = stack.dir.path().join(format!("out-{name}"));
    std::fs::create_dir_all(&out).expect("out dir");
    let mut cmd = Command::new(harness::bin_path("approle-init").expect("approle-init built"));
    cmd.env_clear()
        .env("APPROLE_INIT_LISTEN", addr.to_string())
        .env("APPROLE_INIT_SOURCE_ADDRESS", ip)
        .env("APPROLE_INIT_ROLE", ROLE)
        .env("APPROLE_INIT_POD_UID", &uid)
        .env("APPROLE_INIT_VAULT_ADDR", &stack.vault_url)
        .env("APPROLE_INIT_CLIENT_CA_PEM", stack.ca.cert_pem())
        .env("APPROLE_INIT_OUT_DIR", &out)
        .env("APPROLE_INIT_TIMEOUT", "60s");
    let (proc, _) = Proc::spawn(
        &format!("init-{name}"),
        cmd,
        stack.dir.path(),
        None,
        Duration::from_secs(5),
    )
    .await
    .expect("spawn");
    harness::wait_for(
        "approle-init to listen",
        Duration::from_secs(10),
        || async { tokio::net::TcpStream::connect(addr).await.ok().map(|_| ()) },
    )
    .await
    .expect("listening");
    Init { proc, addr, uid }
}

fn client(cert: Option<(&str, &str)>) -> reqwest::Client {
    let builder = reqwest::Client::builder().timeout(Duration::from_secs(20));
    let builder = match cert {
        Some((c, k)) => builder.tls_backend_preconfigured(push_client_config(c, k).expect("tls")),
        None => builder
            .tls_danger_accept_invalid_certs(true)
            .tls_certs_only(Vec::new()),
    };
    builder.build().expect("client")
}

async fn push(
    client: &reqwest::Client,
    init: &Init,
    req: &PushRequest,
) -> Result<(u16, serde_json::Value), String> {
    let resp = client
        .post(format!("https://{}/v1/secret-id", init.addr))
        .json(req)
        .send()
        .await
        .map_err(|e| format!("{e:?}"))?;
    let status = resp.status().as_u16();
    Ok((status, resp.json().await.unwrap_or_default()))
}

async fn mint(stack: &Stack, vault: &Vault, ip: &str) -> approle_shared::vault::WrappedSecretId {
    vault
        .generate_wrapped_secret_id(
            &ClientToken::new(stack.controller_token.clone()),
            "approle",
            ROLE,
            &SecretIdRequest {
                metadata: [("pod".to_owned(), "test".to_owned())].into(),
                cidr_list: vec![format!("{ip}/32")],
                token_bound_cidrs: vec![format!("{ip}/32")],
                num_uses: 1,
                ttl: Duration::from_secs(120),
                wrap_ttl: Duration::from_secs(60),
            },
        )
        .await
        .expect("mint")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_are_authenticated_bound_to_the_pod_and_single_use() {
    let _one = harness::exclusive().await;
    let stack = Stack::start(StackOptions {
        kube: false,
        controller: false,
        ..Default::default()
    })
    .await
    .expect("stack");
    let vault = Vault::new(&VaultConfig {
        addr: stack.vault_url.clone(),
        ca_pem: None,
        timeout: Duration::from_secs(10),
        source_address: None,
        tls_skip_verify: false,
    })
    .expect("vault");
    let role_id = vault
        .read_role_id(
            &ClientToken::new(stack.controller_token.clone()),
            "approle",
            ROLE,
        )
        .await
        .expect("role id");
    let ours = stack
        .ca
        .issue(
            "approle-controller",
            &[],
            Usage::Client,
            Duration::from_secs(600),
        )
        .expect("cert");
    let theirs_ca = Ca::generate("someone else", Duration::from_secs(600)).expect("ca");
    let theirs = theirs_ca
        .issue(
            "approle-controller",
            &[],
            Usage::Client,
            Duration::from_secs(600),
        )
        .expect("cert");
    let controller = client(Some((&ours.cert_pem, &ours.key_pem)));

    let ip = "127.0.60.1";
    let mut init = start_init(&stack, ip, "a").await;
    let wrapped = mint(&stack, &vault, ip).await;
    let good = PushRequest {
        pod_uid: init.uid.clone(),
        role: ROLE.into(),
        role_id: role_id.clone(),
        wrapping_token: wrapped.token.clone(),
    };

    // No client certificate, or one from another CA: refused at the TLS handshake.
    assert!(
        push(&client(None), &init, &good).await.is_err(),
        "no client cert must be refused"
    );
    let foreign = client(Some((&theirs.cert_pem, &theirs.key_pem)));
    assert!(
        push(&foreign, &init, &good).await.is_err(),
        "a foreign CA's cert must be refused"
    );
    // Another pod's UID: 403.
    let other_pod = PushRequest {
        pod_uid: "another-pod-uid".into(),
        ..good.clone()
    };
    assert_eq!(
        push(&controller, &init, &other_pod)
            .await
            .expect("answer")
            .0,
        403
    );
    assert!(
        init.proc.is_running(),
        "refusals must not stop the init container"
    );

    // The real push is accepted and the token works from the pod's address only.
    let (status, body) = push(&controller, &init, &good).await.expect("answer");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "delivered");
    let exit = init.proc.wait(Duration::from_secs(10)).await.expect("exit");
    assert_eq!(exit.code(), Some(0));
    let token = std::fs::read_to_string(stack.dir.path().join("out-a/token")).expect("token");

    // The same wrapping token pushed to another pod: already used, so a possible interception —
    // refused with 422, a SECURITY line, and the security exit code.
    let ip_b = "127.0.60.2";
    let mut init_b = start_init(&stack, ip_b, "b").await;
    let replay = PushRequest {
        pod_uid: init_b.uid.clone(),
        ..good.clone()
    };
    let (status, body) = push(&controller, &init_b, &replay).await.expect("answer");
    assert_eq!(status, 422, "{body}");
    let exit = init_b
        .proc
        .wait(Duration::from_secs(10))
        .await
        .expect("exit");
    assert_eq!(exit.code(), Some(4));
    assert!(
        init_b.proc.output().contains("SECURITY:"),
        "{}",
        init_b.proc.output()
    );
    // And Vault agrees: the wrapping token is spent.
    assert!(
        vault
            .unwrap_secret_id(&wrapped.token)
            .await
            .expect_err("spent")
            .is_invalid_wrapping_token()
    );

    // A wrapping token made for another path (here: a wrapped KV read) is refused the same way.
    let ip_c = "127.0.60.3";
    let mut init_c = start_init(&stack, ip_c, "c").await;
    let resp = stack
        .http
        .get(format!("{}/v1/secret/data/web/config", stack.vault_url))
        .header("X-Vault-Token", harness::ROOT_TOKEN)
        .header("X-Vault-Wrap-TTL", "60")
        .send()
        .await
        .expect("wrap");
    let wrapped_kv: serde_json::Value = resp.json().await.expect("json");
    let kv_token = wrapped_kv["wrap_info"]["token"]
        .as_str()
        .expect("token")
        .to_owned();
    assert_ne!(
        wrapped_kv["wrap_info"]["creation_path"],
        secret_id_path("approle", ROLE)
    );
    let wrong_path = PushRequest {
        pod_uid: init_c.uid.clone(),
        wrapping_token: WrappingToken::new(kv_token.clone()),
        ..good.clone()
    };
    let (status, body) = push(&controller, &init_c, &wrong_path)
        .await
        .expect("answer");
    assert_eq!(status, 422, "{body}");
    let exit = init_c
        .proc
        .wait(Duration::from_secs(10))
        .await
        .expect("exit");
    assert_eq!(exit.code(), Some(4));
    assert!(init_c.proc.output().contains("SECURITY:"));

    stack.assert_no_secrets(&[
        &token,
        wrapped.token.expose(),
        &kv_token,
        &stack.controller_token,
        harness::ROOT_TOKEN,
    ]);
}

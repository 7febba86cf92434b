//! vaultrs 0.8 against vault-dev (in process, 127.0.0.1:0): the whole AppRole + wrapping + KV flow
//! the project uses, and that errors surface as `ClientError::APIError` with Vault's codes/texts.

use std::collections::HashMap;

use approle_testkit::vault_dev::{Config, Running, Tls, VaultDev};
use vaultrs::api::ResponseWrapper;
use vaultrs::api::auth::approle::requests::{GenerateNewSecretIDRequest, SetAppRoleRequest};
use vaultrs::api::auth::approle::responses::GenerateNewSecretIDResponse;
use vaultrs::client::{VaultClient, VaultClientSettingsBuilder};
use vaultrs::error::ClientError;
use vaultrs::{auth::approle, kv1, kv2, sys, token};

const ROOT: &str = "vaultrs-root";

fn client(server: &Running, token: &str) -> VaultClient {
    let mut settings = VaultClientSettingsBuilder::default();
    settings.address(&server.url).token(token);
    if let Some(ca) = &server.ca_path {
        settings.ca_certs(vec![ca.display().to_string()]);
    }
    VaultClient::new(settings.build().expect("valid settings")).expect("client builds")
}

fn api_error(e: ClientError) -> (u16, Vec<String>) {
    match e {
        ClientError::APIError { code, errors } => (code, errors),
        other => panic!("expected an APIError, got {other:?}"),
    }
}

async fn start(tls: Tls) -> Running {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut config = Config::new(ROOT);
    config.tls = tls;
    VaultDev::start(config).await.expect("vault-dev starts")
}

/// Enable approle + kv1/kv2, write a policy and a role, seed secrets. Returns the role_id.
async fn setup(root: &VaultClient) -> String {
    sys::auth::enable(root, "approle", "approle", None)
        .await
        .expect("enable approle");
    sys::mount::enable(
        root,
        "secret",
        "kv",
        Some(
            vaultrs::api::sys::requests::EnableEngineRequest::builder()
                .options(HashMap::from([("version".to_string(), "2".to_string())])),
        ),
    )
    .await
    .expect("enable kv2");
    sys::mount::enable(root, "kv1", "kv", None)
        .await
        .expect("enable kv1");
    sys::policy::set(
        root,
        "web-app-kv",
        r#"
        # what the application may read
        path "secret/data/web-app/*" { capabilities = ["read"] }
        path "kv1/web-app" { capabilities = ["read"] }
        "#,
    )
    .await
    .expect("policy set");
    approle::role::set(
        root,
        "approle",
        "web-app",
        Some(
            SetAppRoleRequest::builder()
                .token_policies(vec!["web-app-kv".to_string()])
                .token_ttl("20m")
                .token_max_ttl("1h"),
        ),
    )
    .await
    .expect("role set");
    kv2::set(
        root,
        "secret",
        "web-app/config",
        &HashMap::from([("password", "s3cr3t")]),
    )
    .await
    .expect("kv2 write");
    kv1::set(root, "kv1", "web-app", &HashMap::from([("user", "app")]))
        .await
        .expect("kv1 write");
    approle::role::read_id(root, "approle", "web-app")
        .await
        .expect("role id")
        .role_id
}

#[tokio::test]
async fn vaultrs_runs_the_approle_flow_end_to_end() {
    let server = start(Tls::Off).await;
    let root = client(&server, ROOT);
    let role_id = setup(&root).await;

    let auths = sys::auth::list(&root).await.expect("auth list");
    assert_eq!(auths["approle/"].mount_type, "approle");
    assert_eq!(auths["token/"].mount_type, "token");
    let mounts = sys::mount::list(&root).await.expect("mount list");
    assert_eq!(
        mounts["secret/"]
            .options
            .as_ref()
            .and_then(|o| o.get("version"))
            .map(String::as_str),
        Some("2")
    );
    let policy = sys::policy::read(&root, "web-app-kv")
        .await
        .expect("policy read");
    assert!(policy.rules.contains("secret/data/web-app/*"));
    let health = sys::health(&root).await.expect("health");
    assert!(!health.sealed);

    let role = approle::role::read(&root, "approle", "web-app")
        .await
        .expect("role read");
    assert_eq!(role.token_ttl, 1200);
    assert_eq!(role.token_max_ttl, 3600);
    assert_eq!(role.token_policies, vec!["web-app-kv"]);
    assert_eq!(role.token_type, "default");

    let generated = approle::role::secret::generate(
        &root,
        "approle",
        "web-app",
        Some(GenerateNewSecretIDRequest::builder().metadata(r#"{"pod":"ns1/web-0"}"#)),
    )
    .await
    .expect("secret-id");
    let lookup = approle::role::secret::read(&root, "approle", "web-app", &generated.secret_id)
        .await
        .expect("secret-id lookup");
    assert_eq!(lookup.secret_id_accessor, generated.secret_id_accessor);
    assert_eq!(
        lookup
            .metadata
            .unwrap_or_default()
            .get("pod")
            .map(String::as_str),
        Some("ns1/web-0")
    );

    let anon = client(&server, "");
    let auth = approle::login(&anon, "approle", &role_id, &generated.secret_id)
        .await
        .expect("login");
    assert!(auth.client_token.starts_with("hvs."));
    assert_eq!(auth.accessor.len(), 24);
    assert_eq!(auth.policies, vec!["default", "web-app-kv"]);
    assert_eq!(auth.lease_duration, 1200);
    assert!(auth.renewable && auth.orphan);
    assert_eq!(auth.token_type, "service");
    let meta = auth.metadata.clone().unwrap_or_default();
    assert_eq!(meta.get("role_name").map(String::as_str), Some("web-app"));
    assert_eq!(meta.get("pod").map(String::as_str), Some("ns1/web-0"));

    let app = client(&server, &auth.client_token);
    let me = token::lookup_self(&app).await.expect("lookup-self");
    assert_eq!(me.accessor, auth.accessor);
    assert_eq!(me.path, "auth/approle/login");
    assert_eq!(me.policies, vec!["default", "web-app-kv"]);
    assert!(me.ttl <= 1200 && me.ttl > 1100);

    let secret: HashMap<String, String> = kv2::read(&app, "secret", "web-app/config")
        .await
        .expect("kv2 read");
    assert_eq!(secret["password"], "s3cr3t");
    let v1: HashMap<String, String> = kv1::get(&app, "kv1", "web-app").await.expect("kv1 read");
    assert_eq!(v1["user"], "app");
    let raw = kv1::get_raw(&app, "kv1", "web-app").await.expect("kv1 raw");
    assert_eq!(raw.lease_duration, 2_764_800);

    // The application policy does not allow writes.
    let denied = kv2::set(
        &app,
        "secret",
        "web-app/config",
        &HashMap::from([("x", "y")]),
    )
    .await
    .expect_err("write is denied");
    assert_eq!(
        api_error(denied),
        (
            403,
            vec!["1 error occurred:\n\t* permission denied\n\n".to_string()]
        )
    );

    let renewed = token::renew_self(&app, Some("30m")).await.expect("renew");
    assert_eq!(renewed.lease_duration, 1800);
    token::revoke_self(&app).await.expect("revoke-self");
    let gone = token::lookup_self(&app).await.expect_err("revoked");
    assert_eq!(
        api_error(gone),
        (
            403,
            vec!["2 errors occurred:\n\t* permission denied\n\t* invalid token\n\n".to_string()]
        )
    );
    server.shutdown().await;
}

#[tokio::test]
async fn vaultrs_wrapping_lookup_and_unwrap_are_single_use() {
    let server = start(Tls::Off).await;
    let root = client(&server, ROOT);
    let role_id = setup(&root).await;

    let endpoint = GenerateNewSecretIDRequest::builder()
        .mount("approle")
        .role_name("web-app")
        .build()
        .expect("endpoint");
    let wrapped = endpoint.wrap(&root).await.expect("wrapped secret-id");
    assert_eq!(wrapped.info.ttl, 600);
    assert_eq!(
        wrapped.info.creation_path,
        "auth/approle/role/web-app/secret-id"
    );

    let looked = sys::wrapping::lookup(&root, &wrapped.info.token)
        .await
        .expect("wrapping lookup");
    assert_eq!(looked.creation_path, "auth/approle/role/web-app/secret-id");
    assert_eq!(looked.creation_ttl, 600);

    // First-party unwrap with the wrapping token as the client token.
    let holder = client(&server, &wrapped.info.token);
    let unwrapped: GenerateNewSecretIDResponse =
        sys::wrapping::unwrap(&holder, None).await.expect("unwrap");
    let again = sys::wrapping::unwrap::<GenerateNewSecretIDResponse>(&holder, None)
        .await
        .expect_err("second unwrap");
    assert_eq!(
        api_error(again),
        (
            400,
            vec!["wrapping token is not valid or does not exist".to_string()]
        )
    );

    let anon = client(&server, "");
    approle::login(&anon, "approle", &role_id, &unwrapped.secret_id)
        .await
        .expect("login with the unwrapped secret-id");

    // Errors keep Vault's codes and texts.
    let bad = approle::login(&anon, "approle", &role_id, "not-a-secret-id")
        .await
        .expect_err("bad secret id");
    assert_eq!(
        api_error(bad),
        (400, vec!["invalid role or secret ID".to_string()])
    );
    let missing = approle::role::read(&root, "approle", "nope")
        .await
        .expect_err("unknown role");
    assert_eq!(api_error(missing), (404, vec![]));
    let unknown_role = approle::role::secret::generate(&root, "approle", "nope", None)
        .await
        .expect_err("unknown role");
    assert_eq!(
        api_error(unknown_role),
        (404, vec!["role \"nope\" does not exist".to_string()])
    );
    server.shutdown().await;
}

#[tokio::test]
async fn vaultrs_talks_tls_when_given_the_ca() {
    let server = start(Tls::TempDir).await;
    assert!(server.url.starts_with("https://127.0.0.1:"));
    let ca = server.ca_path.clone().expect("ca path");
    assert!(
        std::fs::read_to_string(&ca)
            .expect("ca file")
            .contains("BEGIN CERTIFICATE")
    );
    let root = client(&server, ROOT);
    let role_id = setup(&root).await;
    assert_eq!(role_id.len(), 36);
    let me = token::lookup_self(&root)
        .await
        .expect("lookup-self over TLS");
    assert_eq!(me.policies, vec!["root"]);
    assert_eq!(me.path, "auth/token/root");
    server.shutdown().await;
    assert!(
        !ca.exists(),
        "the temporary CA directory is removed at shutdown"
    );
}

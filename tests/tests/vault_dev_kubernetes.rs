//! vault-dev's Kubernetes auth method against kube-dev, both in process on 127.0.0.1: the
//! controller's own login (vault-api.md §8). Service-account tokens come from kube-dev's
//! TokenRequest; vault-dev validates them with a real TokenReview over HTTPS trusting kube-dev's
//! CA. Covers vaultrs config/role/login, the login envelope and token (lookup-self, renew-self up
//! to the max TTL), the exact refusals (400 texts, 403 `permission denied` for everything the
//! review or the role's bindings reject), `token_reviewer_jwt`, audiences, globs and a
//! non-default mount path.

use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::{Value, json};
use vaultrs::api::auth::kubernetes::requests::{
    ConfigureKubernetesAuthRequest, CreateKubernetesRoleRequest,
};
use vaultrs::client::{VaultClient, VaultClientSettingsBuilder};
use vaultrs::error::ClientError;
use vaultrs::{auth::kubernetes, sys, token};

use approle_testkit::kube_dev::{self, KubeDev};
use approle_testkit::vault_dev::{self, VaultDev};

const ROOT: &str = "k8s-root";
const NS: &str = "vault-system";
const SA: &str = "vault-controller";
const DENIED: &str = "permission denied";

struct Env {
    kd: kube_dev::Running,
    vault: vault_dev::Running,
    kube: kube::Client,
    root: VaultClient,
    http: reqwest::Client,
}

fn vault_client(vault: &vault_dev::Running, token: &str) -> VaultClient {
    let mut settings = VaultClientSettingsBuilder::default();
    settings.address(&vault.url).token(token);
    VaultClient::new(settings.build().expect("settings")).expect("vault client")
}

fn api_error(e: ClientError) -> (u16, Vec<String>) {
    match e {
        ClientError::APIError { code, errors } => (code, errors),
        other => panic!("expected an APIError, got {other:?}"),
    }
}

impl Env {
    /// kube-dev with namespace `vault-system`, vault-dev with a kubernetes mount at `mount`
    /// (not configured) and a policy `secret-id-issuer`.
    async fn start(mount: &str) -> Env {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let kd = KubeDev::start(kube_dev::Config::default())
            .await
            .expect("kube-dev starts");
        let kube = kd.client().await.expect("kube client");
        let namespaces: Api<Namespace> = Api::all(kube.clone());
        let ns: Namespace =
            serde_json::from_value(json!({"metadata": {"name": NS}})).expect("namespace");
        namespaces
            .create(&PostParams::default(), &ns)
            .await
            .expect("create namespace");
        let vault = VaultDev::start(vault_dev::Config::new(ROOT))
            .await
            .expect("vault-dev starts");
        let root = vault_client(&vault, ROOT);
        sys::auth::enable(&root, mount, "kubernetes", None)
            .await
            .expect("enable kubernetes auth");
        sys::policy::set(
            &root,
            "secret-id-issuer",
            r#"path "auth/approle/role/+/secret-id" { capabilities = ["update"] }"#,
        )
        .await
        .expect("policy");
        Env {
            kd,
            vault,
            kube,
            root,
            http: reqwest::Client::new(),
        }
    }

    /// Configure `mount` through vaultrs: kube-dev's URL and CA, no reviewer JWT (the login JWT
    /// reviews itself).
    async fn configure(&self, mount: &str) {
        kubernetes::configure(
            &self.root,
            mount,
            &self.kd.url,
            Some(
                ConfigureKubernetesAuthRequest::builder()
                    .kubernetes_ca_cert(self.kd.ca_pem.clone()),
            ),
        )
        .await
        .expect("configure");
    }

    async fn service_account(&self, ns: &str, name: &str) {
        let sas: Api<ServiceAccount> = Api::namespaced(self.kube.clone(), ns);
        let sa: ServiceAccount =
            serde_json::from_value(json!({"metadata": {"name": name}})).expect("sa");
        sas.create(&PostParams::default(), &sa)
            .await
            .expect("create service account");
    }

    /// A TokenRequest token for `ns/name` (no audiences = the API server's own).
    async fn sa_token(&self, ns: &str, name: &str, audiences: &[&str]) -> String {
        let sas: Api<ServiceAccount> = Api::namespaced(self.kube.clone(), ns);
        let req: TokenRequest = serde_json::from_value(json!({
            "spec": {"audiences": audiences, "expirationSeconds": 3600}
        }))
        .expect("token request");
        sas.create_token_request(name, &PostParams::default(), &req)
            .await
            .expect("token request")
            .status
            .expect("status")
            .token
    }

    /// A raw call: (status, body text).
    async fn raw(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Value,
    ) -> (u16, String) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut rb = self
            .http
            .request(method, format!("{}/v1/{path}", self.vault.url))
            .header("Content-Type", "application/json")
            .body(body.to_string());
        if let Some(t) = token {
            rb = rb.header("X-Vault-Token", t);
        }
        let resp = rb.send().await.expect("request reaches vault-dev");
        let status = resp.status().as_u16();
        (status, resp.text().await.expect("body"))
    }

    async fn login_raw(&self, mount: &str, role: &str, jwt: &str) -> (u16, String) {
        self.raw(
            "POST",
            &format!("auth/{mount}/login"),
            None,
            json!({"role": role, "jwt": jwt}),
        )
        .await
    }
}

fn errors(body: &str) -> Vec<String> {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    serde_json::from_value(v["errors"].clone()).unwrap_or_else(|e| panic!("{e}: {body}"))
}

#[tokio::test]
async fn controller_logs_in_with_its_service_account_token_and_renews() {
    let env = Env::start("kubernetes").await;
    env.configure("kubernetes").await;
    env.service_account(NS, SA).await;
    kubernetes::role::create(
        &env.root,
        "kubernetes",
        "vault-controller",
        Some(
            CreateKubernetesRoleRequest::builder()
                .bound_service_account_names(vec![SA.to_string()])
                .bound_service_account_namespaces(vec![NS.to_string()])
                .token_policies(vec!["secret-id-issuer".to_string()])
                .token_ttl("20m")
                .token_max_ttl("30m"),
        ),
    )
    .await
    .expect("create role");

    let role = kubernetes::role::read(&env.root, "kubernetes", "vault-controller")
        .await
        .expect("read role");
    assert_eq!(role.bound_service_account_names, vec![SA]);
    assert_eq!(role.bound_service_account_namespaces, vec![NS]);
    assert_eq!(role.token_policies, vec!["secret-id-issuer"]);
    assert_eq!((role.token_ttl, role.token_max_ttl), (1200, 1800));
    let roles = kubernetes::role::list(&env.root, "kubernetes")
        .await
        .expect("list roles");
    assert_eq!(roles.keys, vec!["vault-controller"]);
    let config = kubernetes::read_config(&env.root, "kubernetes")
        .await
        .expect("read config");
    assert_eq!(config.kubernetes_host, env.kd.url);
    assert_eq!(
        config.kubernetes_ca_cert.as_deref(),
        Some(env.kd.ca_pem.as_str())
    );

    let jwt = env.sa_token(NS, SA, &[]).await;
    let uid = {
        let sas: Api<ServiceAccount> = Api::namespaced(env.kube.clone(), NS);
        sas.get(SA).await.expect("sa").metadata.uid.expect("uid")
    };
    let auth = kubernetes::login(&env.vault_anon(), "kubernetes", "vault-controller", &jwt)
        .await
        .expect("login");
    assert!(auth.client_token.starts_with("hvs."));
    assert_eq!(auth.policies, vec!["default", "secret-id-issuer"]);
    assert_eq!(auth.token_policies, vec!["default", "secret-id-issuer"]);
    assert_eq!(auth.lease_duration, 1200);
    assert!(auth.renewable);
    assert!(auth.orphan);
    assert_eq!(auth.token_type, "service");
    assert!(!auth.entity_id.is_empty());
    let meta = auth.metadata.clone().expect("metadata");
    assert_eq!(meta["role"], "vault-controller");
    assert_eq!(meta["service_account_name"], SA);
    assert_eq!(meta["service_account_namespace"], NS);
    assert_eq!(meta["service_account_secret_name"], "");
    assert_eq!(meta["service_account_uid"], uid);

    // The same login on the wire: login envelopes carry mount_type "" and no data.
    let (status, body) = env.login_raw("kubernetes", "vault-controller", &jwt).await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["mount_type"], "");
    assert_eq!(v["data"], Value::Null);
    assert_eq!(v["auth"]["metadata"]["service_account_uid"], uid.as_str());
    assert_eq!(
        v["auth"]["entity_id"],
        auth.entity_id.as_str(),
        "one entity per service account"
    );
    assert!(body.ends_with('\n'));

    let me = vault_client(&env.vault, &auth.client_token);
    let info = token::lookup_self(&me).await.expect("lookup-self");
    assert_eq!(
        info.display_name,
        "kubernetes-vault-system-vault-controller"
    );
    assert_eq!(info.path, "auth/kubernetes/login");
    assert_eq!(info.policies, vec!["default", "secret-id-issuer"]);
    assert_eq!(info.renewable, Some(true));
    assert_eq!(
        info.meta
            .as_ref()
            .and_then(|m| m.get("service_account_name"))
            .map(String::as_str),
        Some(SA)
    );

    // Renewal: the role's TTL is the base, capped by its max TTL.
    let renewed = token::renew_self(&me, None).await.expect("renew-self");
    assert_eq!(renewed.client_token, auth.client_token);
    assert!(
        (1190..=1200).contains(&renewed.lease_duration),
        "{renewed:?}"
    );
    let capped = token::renew_self(&me, Some("1h"))
        .await
        .expect("renew-self 1h");
    assert!(
        capped.lease_duration <= 1800 && capped.lease_duration > 1200,
        "capped by token_max_ttl: {capped:?}"
    );
    let (status, body) = env
        .raw(
            "POST",
            "auth/token/renew-self",
            Some(&auth.client_token),
            json!({"increment": "2h"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("json");
    let warning = v["warnings"][0].as_str().expect("a capping warning");
    assert!(
        warning.contains("exceeded the effective max_ttl"),
        "{warning}"
    );

    // Deleting the role makes renewals fail the way the plugin does.
    kubernetes::role::delete(&env.root, "kubernetes", "vault-controller")
        .await
        .expect("delete role");
    let (code, errs) = api_error(token::renew_self(&me, None).await.expect_err("role gone"));
    assert_eq!(code, 500);
    assert_eq!(
        errs,
        vec![
            "1 error occurred:\n\t* failed to renew entry: role vault-controller does not exist during renewal\n\n"
        ]
    );
    // The token itself still works until it expires.
    token::lookup_self(&me).await.expect("still valid");
    token::revoke_self(&me).await.expect("revoke-self");
    let (code, _) = api_error(token::lookup_self(&me).await.expect_err("revoked"));
    assert_eq!(code, 403);
}

impl Env {
    /// A client without a token (logins are unauthenticated).
    fn vault_anon(&self) -> VaultClient {
        let mut settings = VaultClientSettingsBuilder::default();
        settings.address(&self.vault.url);
        VaultClient::new(settings.build().expect("settings")).expect("vault client")
    }
}

#[tokio::test]
async fn refusals_have_vaults_status_codes_and_texts() {
    let env = Env::start("kubernetes").await;

    // Not configured yet: the plugin's plain error.
    env.service_account(NS, SA).await;
    let role = json!({"bound_service_account_names": SA, "bound_service_account_namespaces": NS,
                      "audience": ""});
    let (s, b) = env
        .raw("POST", "auth/kubernetes/role/ctl", Some(ROOT), role)
        .await;
    assert_eq!(
        s, 200,
        "a role without audience is stored with a warning: {b}"
    );
    let v: Value = serde_json::from_str(&b).expect("json");
    assert!(
        v["warnings"][0]
            .as_str()
            .expect("warning")
            .contains("audience"),
        "{b}"
    );
    let jwt = env.sa_token(NS, SA, &[]).await;
    let (s, b) = env.login_raw("kubernetes", "ctl", &jwt).await;
    assert_eq!(
        (s, errors(&b)),
        (
            500,
            vec!["could not load backend configuration".to_string()]
        )
    );
    env.configure("kubernetes").await;
    let (s, b) = env.login_raw("kubernetes", "ctl", &jwt).await;
    assert_eq!(s, 200, "{b}");

    // Missing fields and unknown roles: 400 with the plugin's texts.
    let (s, b) = env
        .raw("POST", "auth/kubernetes/login", None, json!({"jwt": jwt}))
        .await;
    assert_eq!((s, errors(&b)), (400, vec!["missing role".to_string()]));
    let (s, b) = env
        .raw(
            "POST",
            "auth/kubernetes/login",
            None,
            json!({"role": "ctl"}),
        )
        .await;
    assert_eq!((s, errors(&b)), (400, vec!["missing jwt".to_string()]));
    let (code, errs) = api_error(
        kubernetes::login(&env.vault_anon(), "kubernetes", "nope", &jwt)
            .await
            .expect_err("unknown role"),
    );
    assert_eq!(
        (code, errs),
        (400, vec![r#"invalid role name "nope""#.to_string()])
    );

    // Everything else is 403 permission denied.
    env.service_account("default", SA).await;
    env.service_account(NS, "someone-else").await;
    let wrong_ns = env.sa_token("default", SA, &[]).await;
    let wrong_name = env.sa_token(NS, "someone-else", &[]).await;
    let mut forged = jwt.clone();
    forged.truncate(forged.len() - 4);
    forged.push_str("AAAA");
    for (what, bad) in [
        ("service account from another namespace", wrong_ns.as_str()),
        ("another service account", wrong_name.as_str()),
        ("garbage", "garbage"),
        ("three garbage segments", "a.b.c"),
        (
            "valid claims, bad signature (only the TokenReview notices)",
            forged.as_str(),
        ),
    ] {
        let (s, b) = env.login_raw("kubernetes", "ctl", bad).await;
        assert_eq!(
            (s, errors(&b)),
            (403, vec![DENIED.to_string()]),
            "{what}: {b}"
        );
    }
    let (code, errs) = api_error(
        kubernetes::login(&env.vault_anon(), "kubernetes", "ctl", "garbage")
            .await
            .expect_err("garbage jwt"),
    );
    assert_eq!((code, errs), (403, vec![DENIED.to_string()]));

    // A deleted service account's token no longer passes the TokenReview.
    let sas: Api<ServiceAccount> = Api::namespaced(env.kube.clone(), NS);
    sas.delete(SA, &DeleteParams::default())
        .await
        .expect("delete service account");
    let (s, b) = env.login_raw("kubernetes", "ctl", &jwt).await;
    assert_eq!((s, errors(&b)), (403, vec![DENIED.to_string()]), "{b}");

    // token_bound_cidrs that exclude 127.0.0.1.
    env.service_account(NS, SA).await;
    let fresh = env.sa_token(NS, SA, &[]).await;
    let role = json!({"bound_service_account_names": SA, "bound_service_account_namespaces": NS,
                      "token_bound_cidrs": ["10.0.0.0/8"]});
    let (s, b) = env
        .raw("POST", "auth/kubernetes/role/ctl", Some(ROOT), role)
        .await;
    assert!(s == 200 || s == 204, "{b}");
    let (s, b) = env.login_raw("kubernetes", "ctl", &fresh).await;
    assert_eq!((s, errors(&b)), (403, vec![DENIED.to_string()]), "{b}");

    // Role validation texts.
    let (s, b) = env
        .raw(
            "POST",
            "auth/kubernetes/role/bad",
            Some(ROOT),
            json!({"bound_service_account_namespaces": NS}),
        )
        .await;
    assert_eq!(
        (s, errors(&b)),
        (
            400,
            vec![r#""bound_service_account_names" can not be empty"#.to_string()]
        )
    );
    let (s, b) = env
        .raw("POST", "auth/kubernetes/role/bad", Some(ROOT),
             json!({"bound_service_account_names": ["*", "x"], "bound_service_account_namespaces": NS}))
        .await;
    assert_eq!(
        (s, errors(&b)),
        (400, vec![r#"can not mix "*" with values"#.to_string()])
    );
    let (s, _) = env
        .raw("GET", "auth/kubernetes/role/bad", Some(ROOT), json!({}))
        .await;
    assert_eq!(s, 404);
}

#[tokio::test]
async fn reviewer_jwt_audience_globs_and_another_mount_path() {
    let env = Env::start("k8s").await;
    env.service_account("kube-system", "vault-reviewer").await;
    env.service_account(NS, "web-1").await;
    let reviewer = env.sa_token("kube-system", "vault-reviewer", &[]).await;
    // An audience the API server itself does not accept: this token cannot call the
    // TokenReview API on its own behalf.
    let jwt = env.sa_token(NS, "web-1", &["vault"]).await;

    let config = |reviewer: Option<&str>, issuer: &str| {
        let mut c = json!({"kubernetes_host": env.kd.url, "kubernetes_ca_cert": env.kd.ca_pem,
                           "issuer": issuer, "disable_iss_validation": false});
        if let Some(r) = reviewer {
            c["token_reviewer_jwt"] = json!(r);
        }
        c
    };
    let issuer = "https://kubernetes.default.svc.cluster.local";
    let (s, b) = env
        .raw(
            "POST",
            "auth/k8s/config",
            Some(ROOT),
            config(Some(&reviewer), issuer),
        )
        .await;
    assert_eq!(s, 204, "{b}");
    let (s, b) = env
        .raw("GET", "auth/k8s/config", Some(ROOT), json!({}))
        .await;
    assert_eq!(s, 200, "{b}");
    let read: Value = serde_json::from_str(&b).expect("json");
    assert_eq!(read["data"]["token_reviewer_jwt_set"], true);
    assert!(
        !b.contains(&reviewer),
        "the reviewer JWT is never read back"
    );
    assert_eq!(read["mount_type"], "kubernetes");

    let role = json!({"bound_service_account_names": "web-*", "bound_service_account_namespaces": "*",
                      "audience": "vault", "token_policies": "secret-id-issuer"});
    let (s, b) = env.raw("POST", "auth/k8s/role/web", Some(ROOT), role).await;
    assert_eq!(s, 204, "{b}");
    let (s, b) = env.login_raw("k8s", "web", &jwt).await;
    assert_eq!(s, 200, "{b}");
    let v: Value = serde_json::from_str(&b).expect("json");
    let client_token = v["auth"]["client_token"]
        .as_str()
        .expect("token")
        .to_string();
    let (s, b) = env
        .raw(
            "GET",
            "auth/token/lookup-self",
            Some(&client_token),
            json!({}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let me: Value = serde_json::from_str(&b).expect("json");
    assert_eq!(me["data"]["display_name"], "k8s-vault-system-web-1");
    assert_eq!(me["data"]["path"], "auth/k8s/login");

    // The role's audience must be in the token.
    let role = json!({"audience": "something-else"});
    let (s, b) = env.raw("POST", "auth/k8s/role/web", Some(ROOT), role).await;
    assert_eq!(s, 204, "update keeps the bindings: {b}");
    let (s, b) = env.login_raw("k8s", "web", &jwt).await;
    assert_eq!((s, errors(&b)), (403, vec![DENIED.to_string()]), "{b}");
    let (s, _) = env
        .raw(
            "POST",
            "auth/k8s/role/web",
            Some(ROOT),
            json!({"audience": "vault"}),
        )
        .await;
    assert_eq!(s, 204);

    // A wrong issuer is refused when issuer validation is on.
    let (s, _) = env
        .raw(
            "POST",
            "auth/k8s/config",
            Some(ROOT),
            config(Some(&reviewer), "https://elsewhere"),
        )
        .await;
    assert_eq!(s, 204);
    let (s, b) = env.login_raw("k8s", "web", &jwt).await;
    assert_eq!((s, errors(&b)), (403, vec![DENIED.to_string()]), "{b}");

    // Without a reviewer JWT the login JWT reviews itself, and kube-dev does not accept a
    // token for audience "vault" as API credentials.
    let (s, _) = env
        .raw("POST", "auth/k8s/config", Some(ROOT), config(None, issuer))
        .await;
    assert_eq!(s, 204);
    let (s, b) = env.login_raw("k8s", "web", &jwt).await;
    assert_eq!((s, errors(&b)), (403, vec![DENIED.to_string()]), "{b}");

    // Only the configured mount path serves logins: elsewhere a request without a token is
    // simply not allowed.
    let (s, b) = env.login_raw("kubernetes", "web", &jwt).await;
    assert_eq!((s, errors(&b)), (403, vec![DENIED.to_string()]), "{b}");
}

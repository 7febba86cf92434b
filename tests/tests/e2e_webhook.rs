//! End to end through the admission webhook: kube-dev calls the real approle-controller's
//! `/mutate` (registered by the harness with failurePolicy Fail, only for pods carrying a
//! `vault-approle.io/` annotation), the controller keeps the caBundle and its certificates, and
//! plain annotated pods end up holding a working token.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use approle_testkit::harness::{
    self, CA_SECRET, CONTROLLER_NAMESPACE, ROLE, Stack, StackOptions, delivered,
};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::Api;
use rustls::pki_types::ServerName;
use serde_json::{Value, json};

const DELIVERY: Duration = Duration::from_secs(60);
const KUBECTL: &str = "/usr/bin/kubectl";

/// Proves the pod's token works from the pod's own address; returns the token.
async fn working_token(stack: &Stack, pod: &Pod) -> String {
    stack
        .working_token(pod)
        .await
        .expect("a working token")
        .token
}

fn init_env(pod: &Pod, name: &str) -> Option<String> {
    pod.spec
        .as_ref()?
        .init_containers
        .as_ref()?
        .first()?
        .env
        .as_ref()?
        .iter()
        .find(|e| e.name == name)?
        .value
        .clone()
}

/// The refusal message of a create the API server denied.
fn refusal(result: anyhow::Result<Pod>) -> String {
    match result {
        Ok(p) => panic!("pod {:?} was created but must be refused", p.metadata.name),
        Err(e) => format!("{e:#}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_annotated_pod_applied_with_kubectl_ends_with_a_working_token_in_the_app_mount() {
    let _one = harness::exclusive().await;
    let stack = Stack::start(StackOptions::default()).await.expect("stack");
    let mut kubectl_output = String::new();
    if Path::new(KUBECTL).exists() {
        let manifest = stack.dir.path().join("web-0.yaml");
        std::fs::write(
            &manifest,
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web-0\n  annotations:\n    \
             vault-approle.io/role: web\nspec:\n  containers:\n  - name: app\n    image: example/app:1\n",
        )
        .expect("manifest");
        let cache = tempfile::tempdir().expect("cache dir");
        let out = tokio::process::Command::new(KUBECTL)
            .arg("--kubeconfig")
            .arg(&stack.kubeconfig)
            .arg("--cache-dir")
            .arg(cache.path())
            .arg("apply")
            .arg("-f")
            .arg(&manifest)
            .env_remove("KUBECONFIG")
            .output()
            .await
            .expect("kubectl runs");
        kubectl_output = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "kubectl apply: {kubectl_output}");
    } else {
        println!("NOTICE: {KUBECTL} not found; creating the pod with the kube client instead");
        let pod = stack
            .pod("web-0", json!({"vault-approle.io/role": ROLE}))
            .expect("pod");
        stack.create(&pod).await.expect("create");
    }

    let pod = stack
        .wait_pod("web-0", "token delivered", DELIVERY, delivered)
        .await
        .expect("delivered");
    let token = working_token(&stack, &pod).await;

    // What the webhook added: the init container first, the CA the controller manages, the label.
    let inits = pod
        .spec
        .as_ref()
        .and_then(|s| s.init_containers.as_ref())
        .expect("init containers");
    assert_eq!(inits[0].name, approle_shared::INIT_CONTAINER_NAME);
    assert_eq!(
        init_env(&pod, "APPROLE_INIT_CLIENT_CA_PEM"),
        Some(stack.injector_ca_pem().await.expect("CA"))
    );
    assert_eq!(
        pod.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(approle_shared::MANAGED_LABEL))
            .map(String::as_str),
        Some("true")
    );

    // What the app container saw: the credential volume, read-only, holding the token.
    let uid = pod.metadata.uid.as_deref().expect("uid");
    let record: Value = serde_json::from_slice(
        &std::fs::read(stack.kube_root.join("pods").join(uid).join("app/app.json"))
            .expect("app record"),
    )
    .expect("JSON");
    let mount = record["mounts"]
        .as_array()
        .expect("mounts")
        .iter()
        .find(|m| m["mountPath"] == "/var/run/secrets/vault-approle")
        .expect("credential mount in the app container");
    assert_eq!(mount["readOnly"], true, "{mount}");
    let files: Vec<&str> = mount["files"]
        .as_array()
        .expect("files")
        .iter()
        .filter_map(|f| f["path"].as_str())
        .collect();
    assert!(
        files.iter().any(|f| f.ends_with("token")),
        "app saw {files:?}"
    );

    assert!(
        !kubectl_output.contains(&token),
        "kubectl printed the token"
    );
    stack.assert_no_secrets(&[&token, &stack.controller_token, harness::ROOT_TOKEN]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_annotations_are_refused_at_admission_with_a_message_naming_the_fix() {
    let _one = harness::exclusive().await;
    let stack = Stack::start(StackOptions::default()).await.expect("stack");
    let cases: &[(&str, Value, &[&str])] = &[
        (
            "typo-0",
            json!({"vault-approle.io/rol": ROLE}),
            &[
                "vault-approle.io/rol",
                "did you mean \"vault-approle.io/role\"",
            ],
        ),
        (
            "prefix-0",
            json!({"vault-aprole.io/role": ROLE}),
            &[
                "vault-aprole.io/role",
                "did you mean \"vault-approle.io/role\"",
            ],
        ),
        (
            "port-0",
            json!({"vault-approle.io/role": ROLE, "vault-approle.io/port": "http"}),
            &["vault-approle.io/port", "1 to 65535"],
        ),
        (
            "containers-0",
            json!({"vault-approle.io/role": ROLE, "vault-approle.io/containers": "ap"}),
            &["\"ap\"", "did you mean \"app\""],
        ),
    ];
    for (name, annotations, needles) in cases {
        let pod = stack.pod(name, annotations.clone()).expect("pod");
        let msg = refusal(stack.create(&pod).await);
        for n in *needles {
            assert!(msg.contains(n), "{name}: {msg:?} lacks {n:?}");
        }
        assert!(
            stack.pods().get_opt(name).await.expect("get").is_none(),
            "{name} must not exist"
        );
    }
    assert_eq!(stack.secret_id_mints(ROLE), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_webhook_down_annotated_pods_are_refused_and_other_pods_are_created() {
    let _one = harness::exclusive().await;
    let mut stack = Stack::start(StackOptions::default()).await.expect("stack");
    let mut controller = stack.controllers.pop().expect("controller");
    controller.terminate();
    controller
        .wait(Duration::from_secs(10))
        .await
        .expect("controller stops");

    let annotated = stack
        .pod("down-0", json!({"vault-approle.io/role": ROLE}))
        .expect("pod");
    let msg = refusal(stack.create(&annotated).await);
    assert!(msg.contains("inject.vault-approle.io"), "{msg}");

    let plain = stack.pod("plain-0", json!({})).expect("pod");
    stack
        .create(&plain)
        .await
        .expect("a pod without our annotations is not sent to the webhook");
    let other = stack
        .pod("other-0", json!({"example.com/role": "web"}))
        .expect("pod");
    stack.create(&other).await.expect("other annotations pass");
    let injected = stack
        .injected_pod("injected-0", json!({"vault-approle.io/role": ROLE}))
        .await
        .expect("pod");
    stack
        .create(&injected)
        .await
        .expect("an injected pod is not sent to the webhook");
    // The controller's own namespace is excluded, so it can always start.
    let own: Api<Pod> = Api::namespaced(stack.kube_client(), CONTROLLER_NAMESPACE);
    let mut controller_pod = stack
        .pod(
            "approle-controller-0",
            json!({"vault-approle.io/role": ROLE}),
        )
        .expect("pod");
    controller_pod.metadata.namespace = Some(CONTROLLER_NAMESPACE.into());
    own.create(&Default::default(), &controller_pod)
        .await
        .expect("pods in the controller's namespace never go to the webhook");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_the_controller_keeps_the_ca_that_running_pods_trust() {
    let _one = harness::exclusive().await;
    let mut stack = Stack::start(StackOptions::default()).await.expect("stack");
    let ca = stack.injector_ca_pem().await.expect("CA");

    // Injected now, delivered only by the next controller: Vault is sealed until the restart.
    let (status, _) = stack.vault("PUT", "sys/seal", None).await.expect("seal");
    assert_eq!(status, 204);
    let pod = stack
        .pod("across-0", json!({"vault-approle.io/role": ROLE}))
        .expect("pod");
    let created = stack.create(&pod).await.expect("create");
    assert_eq!(
        init_env(&created, "APPROLE_INIT_CLIENT_CA_PEM").as_deref(),
        Some(ca.as_str())
    );
    stack
        .wait_event("across-0", "DeliveryFailed", DELIVERY)
        .await
        .expect("the first controller tried");
    let mut first = stack.controllers.pop().expect("controller");
    first.terminate();
    first
        .wait(Duration::from_secs(10))
        .await
        .expect("controller stops");
    let key = stack.unseal_key.clone();
    let (status, _) = stack
        .vault("PUT", "sys/unseal", Some(json!({"key": key})))
        .await
        .expect("unseal");
    assert_eq!(status, 200);

    stack.start_controller().await.expect("restart");
    assert_eq!(
        stack.injector_ca_pem().await.expect("CA"),
        ca,
        "a restart must keep the CA"
    );
    let pod = stack
        .wait_pod(
            "across-0",
            "delivered by the restarted controller",
            DELIVERY,
            delivered,
        )
        .await
        .expect("delivered");
    let token = working_token(&stack, &pod).await;

    // New pods are injected by the restarted controller (new port, same caBundle).
    let next = stack
        .pod("after-0", json!({"vault-approle.io/role": ROLE}))
        .expect("pod");
    stack.create(&next).await.expect("create after restart");
    let next = stack
        .wait_pod("after-0", "delivered", DELIVERY, delivered)
        .await
        .expect("delivered");
    let token2 = working_token(&stack, &next).await;

    let secrets: Api<Secret> = Api::namespaced(stack.kube_client(), CONTROLLER_NAMESPACE);
    let ca_key = secrets
        .get(CA_SECRET)
        .await
        .expect("CA Secret")
        .data
        .and_then(|d| d.get("ca.key").cloned())
        .expect("ca.key");
    let ca_key = String::from_utf8(ca_key.0).expect("PEM");
    let key_line = ca_key
        .lines()
        .find(|l| !l.starts_with("-----"))
        .expect("key body");
    stack.assert_no_secrets(&[
        &token,
        &token2,
        key_line,
        &stack.controller_token,
        harness::ROOT_TOKEN,
    ]);
}

/// The certificate the webhook serves now (DER), fetched with a handshake that trusts `ca`.
async fn served_certificate(addr: &str, ca: &str) -> Option<Vec<u8>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in approle_shared::tls::parse_certs(ca, "CA").ok()? {
        roots.add(cert).ok()?;
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
    let name = ServerName::try_from("127.0.0.1").ok()?;
    let tls = connector.connect(name, tcp).await.ok()?;
    let (_, conn) = tls.get_ref();
    Some(conn.peer_certificates()?.first()?.as_ref().to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_are_renewed_without_a_restart() {
    let _one = harness::exclusive().await;
    // Renewed after two thirds of 3 s: several renewals within the test.
    let stack = Stack::start(StackOptions {
        controller_args: vec!["--cert-validity".into(), "3s".into()],
        ..Default::default()
    })
    .await
    .expect("stack");
    let ca = stack.injector_ca_pem().await.expect("CA");
    let addr = stack
        .webhook_url
        .as_deref()
        .and_then(|u| u.strip_prefix("https://"))
        .and_then(|u| u.strip_suffix("/mutate"))
        .expect("webhook address")
        .to_owned();
    let first = served_certificate(&addr, &ca)
        .await
        .expect("webhook serves a certificate from the CA");
    harness::wait_for(
        "a renewed serving certificate",
        Duration::from_secs(30),
        || async { served_certificate(&addr, &ca).await.filter(|c| *c != first) },
    )
    .await
    .expect("renewed");
    let controller = stack.controllers.last().expect("controller");
    assert!(
        controller.output().contains("certificates reloaded"),
        "the controller reports the renewal"
    );

    // Injection (renewed serving certificate) and push (renewed client certificate) still work.
    let pod = stack
        .pod("renewed-0", json!({"vault-approle.io/role": ROLE}))
        .expect("pod");
    stack.create(&pod).await.expect("create");
    let pod = stack
        .wait_pod("renewed-0", "delivered", DELIVERY, delivered)
        .await
        .expect("delivered");
    let token = working_token(&stack, &pod).await;
    stack.assert_no_secrets(&[&token, &stack.controller_token, harness::ROOT_TOKEN]);
}

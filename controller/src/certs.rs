//! TLS material of the controller: the injector CA, the webhook's serving certificate and the
//! push client certificate; their renewal without a restart; and the webhook configuration's
//! caBundle.
//!
//! ```text
//!  Source::Secret (default)                       Source::Files (--injector-ca ..., cert-manager)
//!   GET Secret <ns>/<ca-secret-name>               read the five PEM files
//!     404 ─▶ generate CA ─▶ POST Secret
//!              409 (another replica won) ─▶ GET, use the winner's
//!   issue serving cert (<svc>.<ns>.svc, ...svc.cluster.local, extra SANs) + client cert
//!                    │
//!                    ▼  Material { ca, serving, client }
//!   RustlsConfig::reload_from_pem (webhook) · PushClient::reload · InjectConfig.injector_ca_pem
//!   · caBundle of every webhook in --webhook-config-name (JSON patch, guarded by `test` ops)
//!
//!  every --cert-check-interval: re-read the CA Secret (or files); re-issue when the CA changed
//!  or two thirds of the certificates' lifetime passed; put the caBundle back if it differs
//! ```
//!
//! The CA lives in a Secret so that every replica and every restart uses the same one: pods
//! injected before a restart still trust the controller that pushes to them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use approle_shared::tls::{Ca, IssuedCert, TlsError, Usage};
use axum_server::tls_rustls::RustlsConfig;
use base64::Engine as _;
use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, PatchOperation, TestOperation};
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{info, warn};

use approle_shared::inject::InjectConfig;

use crate::push::PushClient;

/// Key of the CA certificate in the CA Secret.
pub const CA_CERT_KEY: &str = "ca.crt";
/// Key of the CA private key in the CA Secret.
pub const CA_KEY_KEY: &str = "ca.key";

/// Why TLS material could not be had.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The Kubernetes API refused or failed.
    #[error("{what}: {source}")]
    Kube {
        /// What was being done.
        what: String,
        /// The API error.
        source: kube::Error,
    },
    /// The CA Secret exists but does not hold a usable CA.
    #[error(
        "Secret {0} holds no usable injector CA ({1}); it needs keys {CA_CERT_KEY} and {CA_KEY_KEY} \
         in PEM; delete it to let the controller create a new one"
    )]
    BadSecret(String, String),
    /// A certificate file could not be read.
    #[error("reading {what} {path}: {source}")]
    File {
        /// Which flag's file.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Certificates could not be generated or parsed.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The webhook's TLS configuration refused the serving certificate.
    #[error("webhook serving certificate: {0}")]
    Serving(std::io::Error),
    /// The push client refused the client certificate.
    #[error("push client certificate: {0}")]
    Client(String),
}

/// Everything issued from one CA.
#[derive(Clone)]
pub struct Material {
    /// The injector CA certificate (PEM): trusted by init containers and by the API server.
    pub ca_pem: String,
    /// The webhook's serving certificate.
    pub serving: IssuedCert,
    /// The push client certificate.
    pub client: IssuedCert,
}

impl std::fmt::Debug for Material {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Material").finish_non_exhaustive()
    }
}

impl Material {
    fn same_as(&self, other: &Material) -> bool {
        let pems = |m: &Material| {
            [
                m.ca_pem.clone(),
                m.serving.cert_pem.clone(),
                m.serving.key_pem.clone(),
                m.client.cert_pem.clone(),
                m.client.key_pem.clone(),
            ]
        };
        pems(self) == pems(other)
    }
}

/// The self-managed injector CA in a Secret, and what the controller issues from it.
#[derive(Debug, Clone)]
pub struct SecretCa {
    /// Secrets in the controller's namespace.
    pub api: Api<Secret>,
    /// `<namespace>/<name>`, for messages.
    pub display: String,
    /// Secret name.
    pub name: String,
    /// Lifetime of a new CA.
    pub ca_validity: Duration,
    /// Lifetime of issued certificates.
    pub cert_validity: Duration,
    /// Names of the serving certificate.
    pub serving_sans: Vec<String>,
}

impl SecretCa {
    /// Reads the CA, creating it when there is none. Several replicas may race here: the first
    /// create wins, the others get 409 and read the winner's.
    pub async fn load_or_create(&self) -> Result<Ca, Error> {
        if let Some(secret) = self.get().await? {
            return self.parse(&secret);
        }
        let ca = Ca::generate("approle-injector CA", self.ca_validity)?;
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                labels: Some(
                    [(
                        "app.kubernetes.io/managed-by".to_owned(),
                        "approle-controller".to_owned(),
                    )]
                    .into(),
                ),
                ..Default::default()
            },
            data: Some(
                [
                    (CA_CERT_KEY.to_owned(), ByteString(ca.cert_pem().into())),
                    (CA_KEY_KEY.to_owned(), ByteString(ca.key_pem().into())),
                ]
                .into(),
            ),
            type_: Some("Opaque".into()),
            ..Default::default()
        };
        match self.api.create(&PostParams::default(), &secret).await {
            Ok(_) => {
                info!(secret = %self.display, "created the injector CA");
                Ok(ca)
            }
            Err(kube::Error::Api(s)) if s.is_already_exists() => {
                info!(secret = %self.display, "another replica created the injector CA first; using it");
                let secret = self.get().await?.ok_or_else(|| {
                    Error::BadSecret(self.display.clone(), "it vanished after a conflict".into())
                })?;
                self.parse(&secret)
            }
            Err(source) => Err(Error::Kube {
                what: format!("creating Secret {}", self.display),
                source,
            }),
        }
    }

    async fn get(&self) -> Result<Option<Secret>, Error> {
        self.api
            .get_opt(&self.name)
            .await
            .map_err(|source| Error::Kube {
                what: format!("reading Secret {}", self.display),
                source,
            })
    }

    fn parse(&self, secret: &Secret) -> Result<Ca, Error> {
        let field = |key: &str| {
            secret
                .data
                .as_ref()
                .and_then(|d| d.get(key))
                .and_then(|b| String::from_utf8(b.0.clone()).ok())
                .ok_or_else(|| Error::BadSecret(self.display.clone(), format!("no {key}")))
        };
        Ca::from_pem(&field(CA_CERT_KEY)?, &field(CA_KEY_KEY)?)
            .map_err(|e| Error::BadSecret(self.display.clone(), e.to_string()))
    }

    /// Issues, with the time to renew: after two thirds of the lifetime, early enough to survive
    /// a few failed checks.
    fn issue_renewable(&self, ca: &Ca) -> Result<(Material, Option<Instant>), Error> {
        Ok((
            self.issue(ca)?,
            Some(Instant::now() + self.cert_validity * 2 / 3),
        ))
    }

    /// Issues the serving and client certificates.
    pub fn issue(&self, ca: &Ca) -> Result<Material, Error> {
        let cn = self.serving_sans.first().cloned().unwrap_or_default();
        Ok(Material {
            ca_pem: ca.cert_pem().to_owned(),
            serving: ca.issue(&cn, &self.serving_sans, Usage::Server, self.cert_validity)?,
            client: ca.issue("approle-controller", &[], Usage::Client, self.cert_validity)?,
        })
    }
}

/// Certificates from files (e.g. cert-manager mounts).
#[derive(Debug, Clone)]
pub struct FileCerts {
    /// Injector CA certificate.
    pub injector_ca: PathBuf,
    /// Push client certificate and key.
    pub client: (PathBuf, PathBuf),
    /// Webhook serving certificate and key.
    pub serving: (PathBuf, PathBuf),
}

impl FileCerts {
    /// Reads all five files.
    pub async fn read(&self) -> Result<Material, Error> {
        async fn read(what: &'static str, path: &Path) -> Result<String, Error> {
            tokio::fs::read_to_string(path)
                .await
                .map_err(|source| Error::File {
                    what,
                    path: path.to_owned(),
                    source,
                })
        }
        Ok(Material {
            ca_pem: read("injector CA", &self.injector_ca).await?,
            client: IssuedCert {
                cert_pem: read("client certificate", &self.client.0).await?,
                key_pem: read("client key", &self.client.1).await?,
            },
            serving: IssuedCert {
                cert_pem: read("webhook certificate", &self.serving.0).await?,
                key_pem: read("webhook key", &self.serving.1).await?,
            },
        })
    }
}

/// Where the material comes from.
#[derive(Debug, Clone)]
pub enum Source {
    /// Self-managed CA in a Secret.
    Secret(Box<SecretCa>),
    /// Files.
    Files(FileCerts),
}

impl Source {
    /// The serving certificate's names for a Service, plus extras.
    pub fn serving_sans(service: &str, namespace: &str, extra: &[String]) -> Vec<String> {
        let mut sans = vec![
            format!("{service}.{namespace}.svc"),
            format!("{service}.{namespace}.svc.cluster.local"),
        ];
        sans.extend(extra.iter().cloned());
        sans
    }
}

/// Keeps `caBundle` of every webhook in one MutatingWebhookConfiguration equal to the CA.
#[derive(Debug, Clone)]
pub struct CaBundle {
    /// MutatingWebhookConfigurations (cluster-scoped).
    pub api: Api<MutatingWebhookConfiguration>,
    /// Its name.
    pub name: String,
}

impl CaBundle {
    /// Patches the webhooks whose caBundle differs; `Ok(true)` when something was patched.
    pub async fn ensure(&self, ca_pem: &str) -> Result<bool, kube::Error> {
        let config = self.api.get(&self.name).await?;
        let ops = ca_bundle_ops(&config, ca_pem);
        if ops.is_empty() {
            return Ok(false);
        }
        self.api
            .patch(
                &self.name,
                &PatchParams::default(),
                &Patch::Json::<()>(json_patch::Patch(ops)),
            )
            .await?;
        Ok(true)
    }
}

/// `test` the webhook's name (a concurrent reorder makes the patch fail instead of hitting the
/// wrong webhook), then set its caBundle; only for webhooks whose bundle differs.
fn ca_bundle_ops(config: &MutatingWebhookConfiguration, ca_pem: &str) -> Vec<PatchOperation> {
    let want = ca_pem.as_bytes();
    let encoded = base64::engine::general_purpose::STANDARD.encode(want);
    let mut ops = Vec::new();
    for (i, hook) in config.webhooks.iter().flatten().enumerate() {
        if hook
            .client_config
            .ca_bundle
            .as_ref()
            .map(|b| b.0.as_slice())
            == Some(want)
        {
            continue;
        }
        let i = i.to_string();
        ops.push(PatchOperation::Test(TestOperation {
            path: PointerBuf::from_tokens(["webhooks", &i, "name"]),
            value: hook.name.clone().into(),
        }));
        ops.push(PatchOperation::Add(AddOperation {
            path: PointerBuf::from_tokens(["webhooks", &i, "clientConfig", "caBundle"]),
            value: encoded.clone().into(),
        }));
    }
    ops
}

/// Hands the current material to its users and keeps it fresh.
#[derive(Debug)]
pub struct Certs {
    source: Source,
    tls: RustlsConfig,
    push: PushClient,
    inject: watch::Sender<InjectConfig>,
    ca_bundle: Option<CaBundle>,
    current: Material,
    renew_at: Option<Instant>,
    check_interval: Duration,
}

/// What [`Certs::start`] hands out.
#[derive(Debug)]
pub struct Started {
    /// Keep running [`Certs::run`] for renewal.
    pub certs: Certs,
    /// The webhook's TLS configuration (reloaded on renewal).
    pub tls: RustlsConfig,
    /// The push client (its certificate is swapped on renewal).
    pub push: PushClient,
    /// Injector settings with the current CA.
    pub inject: watch::Receiver<InjectConfig>,
}

impl Certs {
    /// Loads or creates the material and builds its users. A caBundle that cannot be patched
    /// yet (configuration not created) is only a warning: [`Certs::run`] retries.
    pub async fn start(
        source: Source,
        mut inject: InjectConfig,
        ca_bundle: Option<CaBundle>,
        push_timeout: Duration,
        check_interval: Duration,
    ) -> Result<Started, Error> {
        let (material, renew_at) = fresh_material(&source).await?;
        let tls = RustlsConfig::from_pem(
            material.serving.cert_pem.clone().into_bytes(),
            material.serving.key_pem.clone().into_bytes(),
        )
        .await
        .map_err(Error::Serving)?;
        let push = PushClient::new(
            &material.client.cert_pem,
            &material.client.key_pem,
            push_timeout,
        )
        .map_err(Error::Client)?;
        inject.injector_ca_pem = material.ca_pem.clone();
        let (tx, rx) = watch::channel(inject);
        let certs = Certs {
            source,
            tls: tls.clone(),
            push: push.clone(),
            inject: tx,
            ca_bundle,
            current: material,
            renew_at,
            check_interval,
        };
        certs.ensure_ca_bundle().await;
        Ok(Started {
            certs,
            tls,
            push,
            inject: rx,
        })
    }

    /// Renews and re-checks forever; failures are logged and retried at the next check.
    pub async fn run(mut self) {
        loop {
            let now = Instant::now();
            let mut next = now + self.check_interval;
            // A renewal that is overdue (it failed) is retried at the check interval, not in a
            // tight loop.
            if let Some(renew_at) = self.renew_at.filter(|at| *at > now) {
                next = next.min(renew_at);
            }
            // A schedule, not synchronisation: the next check of the CA and the certificates.
            tokio::time::sleep_until(next).await;
            if let Err(e) = self.refresh().await {
                warn!(error = %e, "certificate check failed; retrying at the next check");
            }
            self.ensure_ca_bundle().await;
        }
    }

    async fn refresh(&mut self) -> Result<(), Error> {
        let due = self.renew_at.is_some_and(|at| Instant::now() >= at);
        let (material, renew_at) = match &self.source {
            Source::Secret(s) => {
                let ca = s.load_or_create().await?;
                if !due && ca.cert_pem() == self.current.ca_pem {
                    return Ok(());
                }
                s.issue_renewable(&ca)?
            }
            Source::Files(f) => {
                let m = f.read().await?;
                if m.same_as(&self.current) {
                    return Ok(());
                }
                (m, None)
            }
        };
        self.apply(material).await?;
        self.renew_at = renew_at;
        Ok(())
    }

    async fn apply(&mut self, material: Material) -> Result<(), Error> {
        self.tls
            .reload_from_pem(
                material.serving.cert_pem.clone().into_bytes(),
                material.serving.key_pem.clone().into_bytes(),
            )
            .await
            .map_err(Error::Serving)?;
        self.push
            .reload(&material.client.cert_pem, &material.client.key_pem)
            .map_err(Error::Client)?;
        let ca_changed = material.ca_pem != self.current.ca_pem;
        if ca_changed {
            let ca = material.ca_pem.clone();
            self.inject.send_modify(|c| c.injector_ca_pem = ca);
        }
        info!(
            ca_changed,
            "webhook serving and push client certificates reloaded"
        );
        self.current = material;
        Ok(())
    }

    async fn ensure_ca_bundle(&self) {
        let Some(bundle) = &self.ca_bundle else {
            return;
        };
        match bundle.ensure(&self.current.ca_pem).await {
            Ok(true) => {
                info!(config = %bundle.name, "caBundle of the webhook configuration updated")
            }
            Ok(false) => {}
            Err(e) => {
                warn!(config = %bundle.name, error = %e, "could not update the webhook configuration's caBundle; retrying")
            }
        }
    }
}

async fn fresh_material(source: &Source) -> Result<(Material, Option<Instant>), Error> {
    Ok(match source {
        Source::Secret(s) => s.issue_renewable(&s.load_or_create().await?)?,
        Source::Files(f) => (f.read().await?, None),
    })
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use axum::Router;
    use axum::extract::State;
    use axum::http::StatusCode;
    use axum::routing::get;
    use serde_json::{Value, json};

    use super::*;

    /// A fake API server holding one Secret: GET (404 when absent), POST (409 when present).
    /// The first two GETs are answered together, so two replicas both see "absent" and race.
    #[derive(Clone)]
    struct FakeApi {
        secret: Arc<Mutex<Option<Value>>>,
        first_gets: Arc<tokio::sync::Barrier>,
        gets: Arc<Mutex<usize>>,
        conflicts: Arc<Mutex<usize>>,
    }

    fn status(code: u16, reason: &str) -> (StatusCode, axum::Json<Value>) {
        (
            StatusCode::from_u16(code).expect("code"),
            axum::Json(json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
                "status": "Failure", "reason": reason, "code": code, "message": reason})),
        )
    }

    async fn get_secret(State(api): State<FakeApi>) -> axum::response::Response {
        use axum::response::IntoResponse;
        let n = {
            let mut g = api.gets.lock().expect("lock");
            *g += 1;
            *g
        };
        let current = api.secret.lock().expect("lock").clone();
        // Answer the first two only once both have read: both replicas see "absent".
        if n <= 2 {
            api.first_gets.wait().await;
        }
        match current {
            Some(s) => axum::Json(s).into_response(),
            None => status(404, "NotFound").into_response(),
        }
    }

    async fn create_secret(
        State(api): State<FakeApi>,
        axum::Json(body): axum::Json<Value>,
    ) -> axum::response::Response {
        use axum::response::IntoResponse;
        let mut current = api.secret.lock().expect("lock");
        if current.is_some() {
            *api.conflicts.lock().expect("lock") += 1;
            return status(409, "AlreadyExists").into_response();
        }
        *current = Some(body.clone());
        (StatusCode::CREATED, axum::Json(body)).into_response()
    }

    fn secret_ca(client: kube::Client) -> SecretCa {
        SecretCa {
            api: Api::namespaced(client, "approle-system"),
            display: "approle-system/approle-injector-ca".into(),
            name: "approle-injector-ca".into(),
            ca_validity: Duration::from_secs(3600),
            cert_validity: Duration::from_secs(600),
            serving_sans: Source::serving_sans(
                "approle-controller",
                "approle-system",
                &["127.0.0.1".into()],
            ),
        }
    }

    #[tokio::test]
    async fn replicas_racing_to_create_the_ca_all_end_up_with_the_winners() {
        approle_shared::tls::install_crypto_provider();
        let api = FakeApi {
            secret: Arc::default(),
            first_gets: Arc::new(tokio::sync::Barrier::new(2)),
            gets: Arc::default(),
            conflicts: Arc::default(),
        };
        let path = "/api/v1/namespaces/approle-system/secrets";
        let router = Router::new()
            .route(&format!("{path}/approle-injector-ca"), get(get_secret))
            .route(path, axum::routing::post(create_secret))
            .with_state(api.clone());
        let a = secret_ca(kube::Client::new(router.clone(), "approle-system"));
        let b = secret_ca(kube::Client::new(router, "approle-system"));
        let (ca_a, ca_b) = tokio::join!(a.load_or_create(), b.load_or_create());
        let (ca_a, ca_b) = (ca_a.expect("replica a"), ca_b.expect("replica b"));
        assert_eq!(ca_a.cert_pem(), ca_b.cert_pem());
        assert_eq!(
            *api.conflicts.lock().expect("lock"),
            1,
            "one replica lost the race"
        );

        // A restart reads the same CA, and what it issues chains to it.
        let again = a.load_or_create().await.expect("restart");
        assert_eq!(again.cert_pem(), ca_a.cert_pem());
        let material = a.issue(&again).expect("issue");
        assert_eq!(material.ca_pem, ca_a.cert_pem());
        approle_shared::tls::push_client_config(
            &material.client.cert_pem,
            &material.client.key_pem,
        )
        .expect("client cert usable");
    }

    #[tokio::test]
    async fn a_secret_without_a_ca_is_a_clear_error() {
        approle_shared::tls::install_crypto_provider();
        let api = FakeApi {
            secret: Arc::new(Mutex::new(Some(
                json!({"apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "approle-injector-ca", "namespace": "approle-system"},
                "data": {"ca.crt": "bm90IGEgY2VydA=="}}),
            ))),
            first_gets: Arc::new(tokio::sync::Barrier::new(1)),
            gets: Arc::default(),
            conflicts: Arc::default(),
        };
        let router = Router::new()
            .route(
                "/api/v1/namespaces/approle-system/secrets/approle-injector-ca",
                get(get_secret),
            )
            .with_state(api);
        let err = secret_ca(kube::Client::new(router, "approle-system"))
            .load_or_create()
            .await
            .expect_err("refused");
        let msg = err.to_string();
        assert!(
            msg.contains("approle-system/approle-injector-ca") && msg.contains("no ca.key"),
            "{msg}"
        );
        assert!(msg.contains("delete it"), "{msg}");
    }

    #[test]
    fn ca_bundle_patch_touches_only_stale_webhooks_and_checks_their_names() {
        let config: MutatingWebhookConfiguration = serde_json::from_value(json!({
            "metadata": {"name": "approle-injector"},
            "webhooks": [
                {"name": "fresh.vault-approle.io", "sideEffects": "None", "admissionReviewVersions": ["v1"],
                 "clientConfig": {"url": "https://127.0.0.1:1/mutate",
                                  "caBundle": base64::engine::general_purpose::STANDARD.encode("CA")}},
                {"name": "stale.vault-approle.io", "sideEffects": "None", "admissionReviewVersions": ["v1"],
                 "clientConfig": {"url": "https://127.0.0.1:1/mutate"}}
            ]
        }))
        .expect("config");
        let ops = serde_json::to_value(ca_bundle_ops(&config, "CA")).expect("json");
        assert_eq!(
            ops,
            json!([
                {"op": "test", "path": "/webhooks/1/name", "value": "stale.vault-approle.io"},
                {"op": "add", "path": "/webhooks/1/clientConfig/caBundle",
                 "value": base64::engine::general_purpose::STANDARD.encode("CA")}
            ])
        );
        assert!(ca_bundle_ops(&config, "NEW CA").len() == 4);
    }

    #[test]
    fn serving_names_cover_the_service_and_extras() {
        assert_eq!(
            Source::serving_sans("svc", "ns", &["127.0.0.1".into()]),
            ["svc.ns.svc", "svc.ns.svc.cluster.local", "127.0.0.1"]
        );
    }
}

//! Reconcile one pod: decide, then mint → push → record, with every give-up path destroying the
//! secret_id it minted.
//!
//! ```text
//!  decide(pod) ── Deliver ──▶ role-id (cached) ──▶ mint wrapped secret_id (num_uses 1, podIP/32)
//!                                                       │
//!            ┌───── push with backoff until the wrap TTL is nearly spent ◀──┘
//!            │  200 ─▶ annotate pod (status, token-accessor), Event SecretIdDelivered
//!            │  409 ─▶ someone delivered before: destroy ours, annotate
//!            │  4xx/5xx ─▶ destroy, Event DeliveryFailed, requeue with backoff
//!            │  pod gone / init container ended ─▶ destroy, stop
//!            └  wrap TTL spent ─▶ destroy, mint again (at most --max-mints), then back off
//! ```

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use approle_shared::annotations::{InjectionSpec, STATUS, TOKEN_ACCESSOR};
use approle_shared::push::{PushRequest, PushResponse};
use approle_shared::secret::ClientToken;
use approle_shared::vault::{Destroyed, SecretIdRequest, Vault, VaultError};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};
use serde_json::json;
use tokio::time::Instant;
use tracing::{debug, info, instrument, warn};

use crate::admin::Admin;
use crate::decide::{Decision, STATUS_DELIVERED, decide, still_wants_delivery};
use crate::orphans::Orphans;
use crate::push::{PushClient, PushFailure};
use crate::vault_auth::{CallError, VaultAuth};

/// Event reasons (DESIGN.md "What the controller guarantees").
pub mod reason {
    /// The init container accepted the credential.
    pub const DELIVERED: &str = "SecretIdDelivered";
    /// A delivery attempt failed; the controller will retry.
    pub const FAILED: &str = "DeliveryFailed";
    /// The pod's annotations are malformed.
    pub const INVALID_ANNOTATION: &str = "InvalidAnnotation";
}

/// Errors that make the controller requeue a pod (its error policy backs off).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Writing the status annotation failed.
    #[error("annotating pod: {0}")]
    Kube(#[from] kube::Error),
}

/// Settings of a delivery.
#[derive(Debug, Clone)]
pub struct Settings {
    /// AppRole mount.
    pub mount: String,
    /// secret_id TTL.
    pub secret_id_ttl: Duration,
    /// Wrapping token TTL.
    pub wrap_ttl: Duration,
    /// Mints per reconcile before backing off.
    pub max_mints: u32,
}

/// Shared state of all reconciles.
pub struct Context {
    /// Kubernetes client.
    pub client: kube::Client,
    /// The controller's pod cache.
    pub store: Store<Pod>,
    /// Vault.
    pub vault: Vault,
    /// The controller's own Vault token.
    pub auth: Arc<VaultAuth>,
    /// Mints whose answer never came, to find and destroy what they minted.
    pub orphans: Arc<Orphans>,
    /// Push client.
    pub push: PushClient,
    /// Event recorder.
    pub recorder: Recorder,
    /// Settings.
    pub settings: Settings,
    /// Metrics and readiness.
    pub admin: Arc<Admin>,
    role_ids: Mutex<HashMap<String, String>>,
    /// Consecutive failures per pod UID, for backoff.
    failures: Mutex<HashMap<String, u32>>,
    /// Deliveries whose status annotation is not written yet (pod UID → token accessor).
    unrecorded: Mutex<HashMap<String, String>>,
}

/// Everything a delivery needs of Vault.
#[derive(Debug)]
pub struct VaultSide {
    /// The client.
    pub vault: Vault,
    /// The controller's own token.
    pub auth: Arc<VaultAuth>,
    /// Finds what unanswered mints minted.
    pub orphans: Arc<Orphans>,
}

impl Context {
    /// Builds the context.
    pub fn new(
        client: kube::Client,
        store: Store<Pod>,
        VaultSide {
            vault,
            auth,
            orphans,
        }: VaultSide,
        push: PushClient,
        recorder: Recorder,
        settings: Settings,
        admin: Arc<Admin>,
    ) -> Self {
        Self {
            client,
            store,
            vault,
            auth,
            orphans,
            push,
            recorder,
            settings,
            admin,
            role_ids: Mutex::default(),
            failures: Mutex::default(),
            unrecorded: Mutex::default(),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding one of these maps cannot leave it inconsistent (single inserts/removes).
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The reconciler.
#[instrument(skip_all, fields(pod.namespace = pod.namespace().unwrap_or_default(), pod.name = pod.name_any()))]
pub async fn reconcile(pod: Arc<Pod>, ctx: Arc<Context>) -> Result<Action, Error> {
    let uid = pod.uid().unwrap_or_default();
    match decide(&pod) {
        Decision::NotOptedIn | Decision::Terminating => Ok(Action::await_change()),
        Decision::Delivered => {
            lock(&ctx.failures).remove(&uid);
            lock(&ctx.unrecorded).remove(&uid);
            Ok(Action::await_change())
        }
        Decision::Invalid(errors) => {
            warn!(%errors, "invalid annotations; not delivering");
            ctx.admin.metrics.invalid_annotations.inc();
            publish(
                &ctx,
                &pod,
                EventType::Warning,
                reason::INVALID_ANNOTATION,
                "Validate",
                errors.to_string(),
            )
            .await;
            Ok(Action::await_change())
        }
        Decision::Wait(why) => {
            debug!(why, "waiting");
            Ok(Action::await_change())
        }
        Decision::InitContainerEnded => {
            // Delivered, but the annotation write failed last time: write it now.
            let pending = lock(&ctx.unrecorded).get(&uid).cloned();
            if let Some(accessor) = pending {
                record_delivery(&ctx, &pod, Some(&accessor)).await?;
            }
            Ok(Action::await_change())
        }
        Decision::Deliver { spec, pod_ip } => {
            let pending = lock(&ctx.unrecorded).get(&uid).cloned();
            if let Some(accessor) = pending {
                record_delivery(&ctx, &pod, Some(&accessor)).await?;
                return Ok(Action::await_change());
            }
            deliver(&ctx, &pod, &spec, pod_ip).await
        }
    }
}

/// Error policy: requeue soon; the next reconcile starts from the pod's current state.
pub fn error_policy(_pod: Arc<Pod>, error: &Error, _ctx: Arc<Context>) -> Action {
    warn!(%error, "reconcile failed; retrying");
    Action::requeue(Duration::from_secs(5))
}

/// How one minted secret_id ended.
enum PushOutcome {
    Delivered(PushResponse),
    AlreadyDelivered,
    WrapExpired(String),
    PodGone,
    Refused(PushFailure),
}

async fn deliver(
    ctx: &Context,
    pod: &Pod,
    spec: &InjectionSpec,
    pod_ip: IpAddr,
) -> Result<Action, Error> {
    let role = spec.role.as_str();
    let started = Instant::now();
    // A cached role-id asks nothing of Vault, so it must not count as Vault answering.
    let cached = lock(&ctx.role_ids).get(role).cloned();
    let role_id = match cached {
        Some(id) => Ok(id),
        None => {
            ctx.auth
                .with_token(|token| async move { role_id(ctx, &token, role).await })
                .await
        }
    };
    let role_id = match role_id {
        Ok(id) => id,
        Err(e) => {
            ctx.admin.metrics.vault_errors.inc();
            return fail(ctx, pod, describe_vault_error(&e, role)).await;
        }
    };
    let request = secret_id_request(pod, pod_ip, &ctx.settings);
    let mut last_failure = String::new();
    for _ in 0..ctx.settings.max_mints.max(1) {
        let mint = ctx.auth.with_token(|token| {
            let request = &request;
            async move {
                ctx.vault
                    .generate_wrapped_secret_id(&token, &ctx.settings.mount, role, request)
                    .await
            }
        });
        let wrapped = match ctx
            .orphans
            .mint(role, &pod.uid().unwrap_or_default(), mint)
            .await
        {
            Ok(w) => w,
            Err(e) => {
                ctx.admin.metrics.vault_errors.inc();
                return fail(ctx, pod, describe_vault_error(&e, role)).await;
            }
        };
        ctx.admin.metrics.secret_ids_minted.inc();
        debug!(secret_id_accessor = %wrapped.secret_id_accessor, "minted wrapped secret_id");
        let push = PushRequest {
            pod_uid: pod.uid().unwrap_or_default(),
            role: role.to_owned(),
            role_id: role_id.clone(),
            wrapping_token: wrapped.token.clone(),
        };
        // Stop pushing a little before the wrapping token expires, to destroy and re-mint in time.
        let margin = (ctx.settings.wrap_ttl / 4).min(Duration::from_secs(5));
        let deadline = Instant::now() + Duration::from_secs(wrapped.ttl).saturating_sub(margin);
        let outcome = push_until(ctx, pod, pod_ip, spec.port, &push, deadline).await;
        let why = match &outcome {
            PushOutcome::Delivered(_) => None,
            PushOutcome::AlreadyDelivered => Some("already_delivered"),
            PushOutcome::WrapExpired(_) => Some("wrap_expired"),
            PushOutcome::PodGone => Some("pod_gone"),
            PushOutcome::Refused(_) => Some("refused"),
        };
        if let Some(why) = why {
            destroy(ctx, role, &wrapped.secret_id_accessor, why).await;
        }
        match outcome {
            PushOutcome::Delivered(resp) => {
                ctx.admin.metrics.outcome("delivered");
                ctx.admin
                    .metrics
                    .delivery_seconds
                    .observe(started.elapsed().as_secs_f64());
                lock(&ctx.failures).remove(&pod.uid().unwrap_or_default());
                info!(token_accessor = %resp.token_accessor, lease_duration = resp.lease_duration, "delivered");
                lock(&ctx.unrecorded)
                    .insert(pod.uid().unwrap_or_default(), resp.token_accessor.clone());
                publish(
                    ctx,
                    pod,
                    EventType::Normal,
                    reason::DELIVERED,
                    "Deliver",
                    format!(
                        "Vault token for role {role} delivered (accessor {}, expires {})",
                        resp.token_accessor, resp.expires_at
                    ),
                )
                .await;
                record_delivery(ctx, pod, Some(&resp.token_accessor)).await?;
                return Ok(Action::await_change());
            }
            PushOutcome::AlreadyDelivered => {
                ctx.admin.metrics.outcome("already_delivered");
                info!("init container already holds a delivery");
                record_delivery(ctx, pod, None).await?;
                return Ok(Action::await_change());
            }
            PushOutcome::PodGone => {
                ctx.admin.metrics.outcome("pod_gone");
                debug!("pod went away or moved on during delivery");
                return Ok(Action::await_change());
            }
            PushOutcome::Refused(failure) => return fail(ctx, pod, failure.to_string()).await,
            PushOutcome::WrapExpired(last) => last_failure = last,
        }
    }
    fail(
        ctx,
        pod,
        format!(
            "init container took no push within {} wrapping-token lifetimes: {last_failure}",
            ctx.settings.max_mints.max(1)
        ),
    )
    .await
}

async fn push_until(
    ctx: &Context,
    pod: &Pod,
    pod_ip: IpAddr,
    port: u16,
    push: &PushRequest,
    deadline: Instant,
) -> PushOutcome {
    // The init container starts listening milliseconds after kubelet reports it running: poll fast
    // at first, then settle at one attempt a second.
    let mut delay = Duration::from_millis(25);
    let key = ObjectRef::from_obj(pod);
    let uid = pod.uid();
    loop {
        match ctx.push.push(pod_ip, port, push).await {
            Ok(resp) => return PushOutcome::Delivered(resp),
            Err(PushFailure::Refused { status: 409, .. }) => return PushOutcome::AlreadyDelivered,
            Err(f @ PushFailure::Refused { status: 503, .. })
            | Err(f @ PushFailure::NotListening(_))
            | Err(f @ PushFailure::Interrupted(_)) => {
                if Instant::now() + delay >= deadline {
                    return PushOutcome::WrapExpired(f.to_string());
                }
                debug!(failure = %f, "push not accepted yet; retrying");
            }
            Err(f) => return PushOutcome::Refused(f),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(1));
        let current = ctx.store.get(&key);
        let same = current
            .as_ref()
            .is_some_and(|p| p.uid() == uid && still_wants_delivery(p));
        if !same {
            return PushOutcome::PodGone;
        }
    }
}

fn secret_id_request(pod: &Pod, pod_ip: IpAddr, settings: &Settings) -> SecretIdRequest {
    let cidr = format!("{pod_ip}/{}", if pod_ip.is_ipv4() { 32 } else { 128 });
    let spec = pod.spec.as_ref();
    let metadata = BTreeMap::from([
        ("namespace".to_owned(), pod.namespace().unwrap_or_default()),
        ("pod".to_owned(), pod.name_any()),
        ("pod_uid".to_owned(), pod.uid().unwrap_or_default()),
        (
            "service_account".to_owned(),
            spec.and_then(|s| s.service_account_name.clone())
                .unwrap_or_else(|| "default".into()),
        ),
        (
            "node".to_owned(),
            spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        ),
    ])
    .into_iter()
    // Vault refuses metadata keys with empty values.
    .filter(|(_, v)| !v.is_empty())
    .collect();
    SecretIdRequest {
        metadata,
        cidr_list: vec![cidr.clone()],
        token_bound_cidrs: vec![cidr],
        num_uses: 1,
        ttl: settings.secret_id_ttl,
        wrap_ttl: settings.wrap_ttl,
    }
}

async fn role_id(ctx: &Context, token: &ClientToken, role: &str) -> Result<String, VaultError> {
    if let Some(id) = lock(&ctx.role_ids).get(role) {
        return Ok(id.clone());
    }
    let id = ctx
        .vault
        .read_role_id(token, &ctx.settings.mount, role)
        .await?;
    lock(&ctx.role_ids).insert(role.to_owned(), id.clone());
    Ok(id)
}

fn describe_vault_error(e: &CallError, role: &str) -> String {
    let CallError::Vault(e) = e else {
        return e.to_string();
    };
    match e.status() {
        Some(404) | Some(400) if !e.is_transient() => {
            format!("Vault does not know AppRole {role:?} (or refused it): {e}")
        }
        _ => e.to_string(),
    }
}

async fn destroy(ctx: &Context, role: &str, accessor: &str, why: &'static str) {
    ctx.admin.metrics.destroyed(why);
    let destroyed = ctx
        .auth
        .with_token(|token| async move {
            ctx.vault
                .destroy_secret_id_by_accessor(&token, &ctx.settings.mount, role, accessor)
                .await
        })
        .await;
    match destroyed {
        Ok(Destroyed::Destroyed) => {
            debug!(secret_id_accessor = accessor, "destroyed unused secret_id")
        }
        Ok(Destroyed::AlreadyGone) => {
            debug!(secret_id_accessor = accessor, "secret_id already gone")
        }
        // It still expires by its own TTL; nothing else can be done now.
        Err(e) => {
            warn!(secret_id_accessor = accessor, error = %e, "could not destroy unused secret_id")
        }
    }
}

/// A failed attempt: Event, log, and a requeue with exponential backoff (1 s doubling to 5 min).
async fn fail(ctx: &Context, pod: &Pod, message: String) -> Result<Action, Error> {
    ctx.admin.metrics.outcome("failed");
    let uid = pod.uid().unwrap_or_default();
    let n = {
        let mut failures = lock(&ctx.failures);
        let n = failures.entry(uid).or_insert(0);
        *n += 1;
        *n
    };
    let backoff = Duration::from_secs(1u64 << (n - 1).min(8)).min(Duration::from_secs(300));
    warn!(attempt = n, retry_in = ?backoff, error = %message, "delivery failed");
    publish(
        ctx,
        pod,
        EventType::Warning,
        reason::FAILED,
        "Deliver",
        format!(
            "{message} (attempt {n}, retrying in {}s)",
            backoff.as_secs()
        ),
    )
    .await;
    Ok(Action::requeue(backoff))
}

async fn record_delivery(ctx: &Context, pod: &Pod, accessor: Option<&str>) -> Result<(), Error> {
    let mut annotations = serde_json::Map::new();
    annotations.insert(STATUS.into(), json!(STATUS_DELIVERED));
    if let Some(a) = accessor {
        annotations.insert(TOKEN_ACCESSOR.into(), json!(a));
    }
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &pod.namespace().unwrap_or_default());
    let patch = json!({"metadata": {"annotations": annotations}});
    api.patch(
        &pod.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await?;
    lock(&ctx.unrecorded).remove(&pod.uid().unwrap_or_default());
    Ok(())
}

async fn publish(
    ctx: &Context,
    pod: &Pod,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    // Events are limited to 1 kB of note.
    let note: String = note.chars().take(1000).collect();
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: action.into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &pod.object_ref(&())).await {
        warn!(error = %e, reason, "could not publish Event");
    }
}

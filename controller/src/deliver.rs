//! Reconcile one pod: decide, then mint → push → record, with every give-up path destroying the
//! secret_id it minted.
//!
//! ```text
//!  decide(pod) ── Deliver ──▶ a delivery slot (--concurrency; first come, first served)
//!                               ▼ decide again on the cached pod, policy, crash-loop backoff
//!                             role-id (cached) ──▶ connect + pod identity (crate::identity)
//!                       identity fails ─▶ Event PossibleInterception, no mint, backoff │
//!                       no answer within 10 s ─▶ Event DeliveryFailed, no mint, backoff │
//!                                                      mint wrapped secret_id (num_uses 1, podIP/32)
//!                                                       │
//!            ┌───── push on the verified connection; retries reconnect and re-verify ◀──┘
//!            │  200 ─▶ annotate pod (status, token-accessor), Event SecretIdDelivered
//!            │  409 ─▶ someone delivered before: destroy ours; recorded when the init ends
//!            │  leadership lost or stopping ─▶ destroy, stop (the next leader takes the pod over)
//!            │  4xx/5xx ─▶ destroy, Event DeliveryFailed, requeue with backoff
//!            │  identity fails on a reconnect ─▶ destroy, Event PossibleInterception, backoff
//!            │  pod gone / init container ended ─▶ destroy, stop
//!            └  wrap TTL spent ─▶ destroy, mint again (at most --max-mints), then back off
//!
//!  init container ended with 0, pod not annotated (a previous leader died between the push and
//!  the annotation) ─▶ accessor from its termination message ─▶ annotate; SecretIdDelivered
//!  unless the pod already has one
//! ```

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::pod::Pod;
use approle_shared::annotations::{InjectionSpec, STATUS, TOKEN_ACCESSOR};
use approle_shared::push::{PushRequest, PushResponse};
use approle_shared::secret::ClientToken;
use approle_shared::vault::{Destroyed, SecretIdRequest, Vault, VaultError};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};
use prometheus_client::metrics::gauge::Gauge;
use serde_json::json;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tracing::{Instrument as _, debug, info, instrument, warn};

use crate::admin::Admin;
use crate::decide::{Decision, STATUS_DELIVERED, decide, still_wants_delivery};
use crate::identity::{self, IdentityFailure, OpenFailure};
use crate::leader::Leadership;
use crate::orphans::Orphans;
use crate::push::{PushClient, PushFailure, Session};
use crate::recover;
use crate::revoke;
use crate::vault_auth::{CallError, VaultAuth};

/// Event reasons (DESIGN.md "What the controller guarantees").
pub mod reason {
    /// The init container accepted the credential.
    pub const DELIVERED: &str = "SecretIdDelivered";
    /// A delivery attempt failed; the controller will retry.
    pub const FAILED: &str = "DeliveryFailed";
    /// The pod's annotations are malformed.
    pub const INVALID_ANNOTATION: &str = "InvalidAnnotation";
    /// What answered on the pod's IP failed the pod-identity check: nothing was pushed.
    pub const POSSIBLE_INTERCEPTION: &str = "PossibleInterception";
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
    /// Deliveries at the same time (see [`Context::slots`]).
    pub concurrency: u16,
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
    /// Event recorder (it counts an Event that repeats into a series).
    pub recorder: Recorder,
    /// Who reports Events, for the ones published once per pod (see [`publish_delivered`]).
    reporter: Reporter,
    /// Settings.
    pub settings: Settings,
    /// Metrics and readiness.
    pub admin: Arc<Admin>,
    /// The authorization policy in force (default: none, everything refused).
    pub authorizer: crate::policy::Authorizer,
    /// Crash-loop backoff of re-deliveries.
    pub redelivery: crate::redeliver::Tracker,
    role_ids: Mutex<HashMap<String, String>>,
    /// Consecutive failures per pod UID, for backoff.
    failures: Mutex<HashMap<String, u32>>,
    /// Deliveries whose status annotation is not written yet (pod UID → token accessor).
    unrecorded: Mutex<HashMap<String, String>>,
    /// Deliveries this replica annotated whose annotation the cache has not shown yet (pod UIDs):
    /// the init container's exit may be seen first, and needs no recovery then.
    recorded: Mutex<HashSet<String>>,
    /// Whether this replica leads: a replica that lost the lease mints nothing more.
    leadership: Leadership,
    /// One permit per delivery in flight. tokio's semaphore serves its waiters in order, so pods
    /// are delivered in the order they became ready. (kube's controller limits concurrency
    /// itself, but keeps the overflow in a hash set and takes from it in no particular order:
    /// in a 1000-pod burst some pods waited until nearly the end. Its own limit is off, and its
    /// reconciles only decide; the ones that deliver queue here.)
    slots: Arc<Semaphore>,
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
        reporter: Reporter,
        settings: Settings,
        admin: Arc<Admin>,
    ) -> Self {
        Self {
            recorder: Recorder::new(client.clone(), reporter.clone()),
            reporter,
            client,
            store,
            vault,
            auth,
            orphans,
            push,
            admin,
            authorizer: crate::policy::Authorizer::fixed(None),
            redelivery: crate::redeliver::Tracker::default(),
            role_ids: Mutex::default(),
            failures: Mutex::default(),
            unrecorded: Mutex::default(),
            recorded: Mutex::default(),
            leadership: Leadership::always(),
            slots: Arc::new(Semaphore::new(usize::from(settings.concurrency.max(1)))),
            settings,
        }
    }

    /// Delivers only while `leadership` says this replica leads.
    pub fn with_leadership(mut self, leadership: Leadership) -> Self {
        self.leadership = leadership;
        self
    }
}

impl Context {
    /// Uses this authorization policy.
    pub fn with_authorizer(mut self, authorizer: crate::policy::Authorizer) -> Self {
        self.authorizer = authorizer;
        self
    }

    /// Uses these crash-loop backoff pauses.
    pub fn with_redelivery(mut self, settings: crate::redeliver::Settings) -> Self {
        self.redelivery = crate::redeliver::Tracker::new(settings);
        self
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
            lock(&ctx.recorded).remove(&uid);
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
            } else if let Some(accessor) = recover::delivered(&pod)
                && ctx.leadership.is_leader()
                && !lock(&ctx.recorded).contains(&uid)
            {
                // Delivered by a replica that died before annotating (or lost the answer).
                match accessor {
                    Some(accessor) => recover_delivery(&ctx, &pod, &accessor).await?,
                    // An init container that leaves no message: recorded without accessor.
                    None => record_delivery(&ctx, &pod, None).await?,
                }
            }
            Ok(Action::await_change())
        }
        Decision::Deliver { .. } => {
            let pending = lock(&ctx.unrecorded).get(&uid).cloned();
            if let Some(accessor) = pending {
                record_delivery(&ctx, &pod, Some(&accessor)).await?;
                return Ok(Action::await_change());
            }
            // Wait for a delivery slot, then act on the pod as it is now: it may have changed,
            // or gone, while waiting (a change also queues a reconcile of its own, which finds
            // what this one did).
            debug!("init container running: waiting for a delivery slot");
            let Some(slot) = Slot::take(&ctx).await else {
                return Ok(Action::await_change());
            };
            debug!("delivery slot taken");
            if !ctx.leadership.is_leader() {
                // Lost the lease, or stopping, maybe while waiting.
                debug!("not the leader (any more): the leader delivers");
                return Ok(Action::await_change());
            }
            let current = ctx
                .store
                .get(&ObjectRef::from_obj(&*pod))
                .filter(|now| now.uid() == pod.uid());
            let Some((pod, Decision::Deliver { spec, pod_ip })) =
                current.map(|now| (now.clone(), decide(&now)))
            else {
                return Ok(Action::await_change());
            };
            // Authorization, then the crash-loop backoff: both before any Vault call.
            if let Some(action) = crate::policy::gate(&ctx, &pod, &spec).await {
                return Ok(action);
            }
            if let Some(action) = crate::redeliver::gate(&ctx, &pod).await {
                return Ok(action);
            }
            // The delivery runs as a task of its own: kube's controller polls every reconcile
            // on one task, so the TLS handshakes and Vault calls of many deliveries would share
            // one core. The reconcile still waits for it (one reconcile per pod at a time).
            let task = tokio::spawn(
                async move {
                    let _slot = slot;
                    deliver(&ctx, &pod, &spec, pod_ip).await
                }
                .instrument(tracing::Span::current()),
            );
            match task.await {
                Ok(result) => result,
                Err(e) => match e.try_into_panic() {
                    Ok(panic) => std::panic::resume_unwind(panic),
                    // Cancelled: the runtime is shutting down.
                    Err(_) => Ok(Action::await_change()),
                },
            }
        }
    }
}

/// A delivery slot, counted in `approle_deliveries_in_flight` while held; waiting for one is
/// counted in `approle_deliveries_waiting` (until the wait ends, also when it is abandoned).
struct Slot {
    _permit: tokio::sync::OwnedSemaphorePermit,
    _in_flight: Counted,
}

impl Slot {
    /// Waits for a slot, in turn; `None` only if the semaphore is closed (it never is).
    async fn take(ctx: &Context) -> Option<Slot> {
        let metrics = &ctx.admin.metrics;
        let waiting = Counted::new(&metrics.deliveries_waiting);
        let permit = ctx.slots.clone().acquire_owned().await.ok()?;
        drop(waiting);
        Some(Slot {
            _permit: permit,
            _in_flight: Counted::new(&metrics.deliveries_in_flight),
        })
    }
}

/// Holds a gauge one higher for as long as it lives.
struct Counted(Gauge);

impl Counted {
    fn new(gauge: &Gauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.dec();
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
    LostLeadership,
    Intercepted(IdentityFailure),
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
    // Stop pushing a little before the wrapping token expires, to destroy and re-mint in time.
    let margin = (ctx.settings.wrap_ttl / 4).min(Duration::from_secs(5));
    let mut last_failure = String::new();
    for _ in 0..ctx.settings.max_mints.max(1) {
        // Pod identity before the mint: an impostor on the pod's IP causes no mint at all.
        let deadline = Instant::now() + REACH_TIMEOUT;
        let session = match open_until(ctx, pod, pod_ip, spec.port, deadline).await {
            Ok(session) => {
                debug!("init container reached, pod identity verified");
                session
            }
            Err(PushOutcome::WrapExpired(last)) => {
                let within = humantime::format_duration(REACH_TIMEOUT);
                return fail(ctx, pod, format!("no answer within {within}: {last}")).await;
            }
            Err(PushOutcome::Intercepted(failure)) => {
                return identity_failed(ctx, pod, failure).await;
            }
            Err(PushOutcome::LostLeadership) => {
                ctx.admin.metrics.outcome("lost_leadership");
                info!(
                    "no longer leading (lease lost, or stopping) before the mint: the next leader delivers"
                );
                return Ok(Action::await_change());
            }
            Err(_) => {
                ctx.admin.metrics.outcome("pod_gone");
                debug!("pod went away or moved on before delivery");
                return Ok(Action::await_change());
            }
        };
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
        let deadline = Instant::now() + Duration::from_secs(wrapped.ttl).saturating_sub(margin);
        let outcome = push_until(ctx, pod, pod_ip, spec.port, &push, deadline, session).await;
        // The run answered: it was handed a credential (counted for the crash-loop backoff).
        if let PushOutcome::Delivered(_) | PushOutcome::AlreadyDelivered | PushOutcome::Refused(_) =
            &outcome
        {
            let accepted = !matches!(outcome, PushOutcome::Refused(_));
            // 422 and 500 end the init container's run: it takes no other credential.
            let run_ends = accepted
                || matches!(
                    &outcome,
                    PushOutcome::Refused(PushFailure::Refused {
                        status: 422 | 500,
                        ..
                    })
                );
            crate::redeliver::handed(ctx, pod, accepted, run_ends).await;
        }
        let why = match &outcome {
            PushOutcome::Delivered(_) => None,
            PushOutcome::AlreadyDelivered => Some("already_delivered"),
            PushOutcome::WrapExpired(_) => Some("wrap_expired"),
            PushOutcome::PodGone => Some("pod_gone"),
            PushOutcome::Refused(_) => Some("refused"),
            PushOutcome::LostLeadership => Some("lost_leadership"),
            PushOutcome::Intercepted(_) => Some("identity"),
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
                publish_delivered(ctx, pod, role, &resp.token_accessor, Some(&resp.expires_at))
                    .await;
                record_delivery(ctx, pod, Some(&resp.token_accessor)).await?;
                return Ok(Action::await_change());
            }
            PushOutcome::AlreadyDelivered => {
                // Another replica's push landed first (e.g. a leader that died mid-delivery).
                // The init container exits right after it and leaves the accessor as its
                // termination message: the delivery is recorded from that (InitContainerEnded).
                ctx.admin.metrics.outcome("already_delivered");
                info!("init container already holds a delivery; ours was destroyed");
                return Ok(Action::await_change());
            }
            PushOutcome::LostLeadership => {
                ctx.admin.metrics.outcome("lost_leadership");
                info!(
                    "no longer leading (lease lost, or stopping) during delivery; our secret_id was destroyed, the next leader delivers"
                );
                return Ok(Action::await_change());
            }
            PushOutcome::PodGone => {
                ctx.admin.metrics.outcome("pod_gone");
                debug!("pod went away or moved on during delivery");
                return Ok(Action::await_change());
            }
            PushOutcome::Refused(failure) => return fail(ctx, pod, failure.to_string()).await,
            PushOutcome::Intercepted(failure) => return identity_failed(ctx, pod, failure).await,
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

/// A running init container listens within milliseconds of starting. One that has not answered
/// on the pod's IP and port within this long (a wrong `vault-approle.io/port`, a network policy
/// in the way) is given up on before anything is minted: a `DeliveryFailed` Event says why, and
/// the pod is tried again after a backoff, its delivery slot going to the next pod meanwhile.
pub const REACH_TIMEOUT: Duration = Duration::from_secs(10);

/// First wait after an init container did not answer, doubled on every retry up to a second.
/// The kubelet reports it running when the process starts, a millisecond or so before it
/// listens: the controller often connects first. A refused connection on the pod's IP costs
/// little, and a lone pod waited 25 ms for the next try with the old first step.
const FIRST_RETRY: Duration = Duration::from_millis(5);

async fn push_until(
    ctx: &Context,
    pod: &Pod,
    pod_ip: IpAddr,
    port: u16,
    push: &PushRequest,
    deadline: Instant,
    verified: Session,
) -> PushOutcome {
    let mut delay = FIRST_RETRY;
    let mut next = Some(verified);
    loop {
        // The first attempt uses the connection verified before the mint; a retry opens a new one
        // and checks the pod's identity on it again.
        let mut session = match next.take() {
            Some(s) => s,
            None => match open_until(ctx, pod, pod_ip, port, deadline).await {
                Ok(s) => s,
                Err(outcome) => return outcome,
            },
        };
        match session.push(push).await {
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
        drop(session);
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(1));
        if !ctx.leadership.is_leader() {
            return PushOutcome::LostLeadership;
        }
        if !still_same_pod(ctx, pod) {
            return PushOutcome::PodGone;
        }
    }
}

/// Opens a connection to the pod and checks its identity on it, retrying while nothing listens
/// (until `deadline`). Ends in `WrapExpired`, `PodGone` or `Intercepted`.
async fn open_until(
    ctx: &Context,
    pod: &Pod,
    pod_ip: IpAddr,
    port: u16,
    deadline: Instant,
) -> Result<Session, PushOutcome> {
    let mut delay = FIRST_RETRY;
    loop {
        match identity::open_verified(&ctx.push, &ctx.client, pod, pod_ip, port).await {
            Ok(session) => return Ok(session),
            Err(OpenFailure::Identity(failure)) => return Err(PushOutcome::Intercepted(failure)),
            Err(OpenFailure::Transport(f)) => {
                if Instant::now() + delay >= deadline {
                    return Err(PushOutcome::WrapExpired(f.to_string()));
                }
                debug!(failure = %f, "init container not answering yet; retrying");
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(1));
        if !ctx.leadership.is_leader() {
            return Err(PushOutcome::LostLeadership);
        }
        if !still_same_pod(ctx, pod) {
            return Err(PushOutcome::PodGone);
        }
    }
}

/// True while the cache holds the same pod (same UID), still waiting for its delivery.
fn still_same_pod(ctx: &Context, pod: &Pod) -> bool {
    ctx.store
        .get(&ObjectRef::from_obj(pod))
        .is_some_and(|p| p.uid() == pod.uid() && still_wants_delivery(&p))
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
            pod.service_account().to_owned(),
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

/// The pod-identity check failed: nothing was pushed. A `PossibleInterception` Event when what
/// answered failed it, a `DeliveryFailed` one when the check could not be made; backoff either way.
async fn identity_failed(
    ctx: &Context,
    pod: &Pod,
    failure: IdentityFailure,
) -> Result<Action, Error> {
    ctx.admin.metrics.identity_failure(failure.reason());
    if failure.is_interception() {
        warn!(reason = failure.reason(), error = %failure, "SECURITY: pod identity check failed; nothing pushed");
        let message = format!("pod identity check failed, nothing was pushed: {failure}");
        fail_as(ctx, pod, reason::POSSIBLE_INTERCEPTION, message).await
    } else {
        let message = format!("pod identity could not be checked, nothing was pushed: {failure}");
        fail(ctx, pod, message).await
    }
}

/// A failed attempt: Event, log, and a requeue with exponential backoff (1 s doubling to 5 min).
async fn fail(ctx: &Context, pod: &Pod, message: String) -> Result<Action, Error> {
    fail_as(ctx, pod, reason::FAILED, message).await
}

/// [`fail`] with another Event reason.
async fn fail_as(
    ctx: &Context,
    pod: &Pod,
    event_reason: &str,
    message: String,
) -> Result<Action, Error> {
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
        event_reason,
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
    // The token of the run before this one (a lost pod sandbox runs the init container again),
    // revoked once the new one is recorded: one live credential per pod.
    let replaced = pod
        .annotations()
        .get(TOKEN_ACCESSOR)
        .filter(|previous| accessor.is_some_and(|new| new != previous.as_str()))
        .cloned();
    let mut annotations = serde_json::Map::new();
    annotations.insert(STATUS.into(), json!(STATUS_DELIVERED));
    if let Some(a) = accessor {
        annotations.insert(TOKEN_ACCESSOR.into(), json!(a));
    }
    annotations.extend(ctx.redelivery.annotations(pod));
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &pod.namespace().unwrap_or_default());
    let patch = json!({"metadata": {"annotations": annotations}});
    api.patch(
        &pod.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await?;
    lock(&ctx.unrecorded).remove(&pod.uid().unwrap_or_default());
    lock(&ctx.recorded).insert(pod.uid().unwrap_or_default());
    if let Some(previous) = replaced {
        revoke::revoke(
            &revoke::Owner::of(pod),
            &previous,
            revoke::Why::Replaced,
            &ctx.vault,
            &ctx.auth,
            &ctx.admin,
        )
        .await;
    }
    Ok(())
}

/// Records a delivery this replica did not see answered: the annotation, and a SecretIdDelivered
/// Event unless the replica that pushed published one before it died.
async fn recover_delivery(ctx: &Context, pod: &Pod, accessor: &str) -> Result<(), Error> {
    info!(
        token_accessor = accessor,
        "recording a delivery from the init container's termination message"
    );
    let events = recover::delivered_events(&ctx.client, pod, reason::DELIVERED).await;
    match events {
        Ok(0) => {
            let role = pod
                .annotations()
                .get(approle_shared::annotations::ROLE)
                .cloned()
                .unwrap_or_default();
            publish_delivered(ctx, pod, &role, accessor, None).await;
        }
        Ok(_) => debug!("the delivering replica published the Event already"),
        Err(e) => {
            warn!(error = %e, "cannot tell whether the delivery Event exists; not publishing a second one")
        }
    }
    ctx.admin.metrics.outcome("recovered");
    record_delivery(ctx, pod, Some(accessor)).await
}

/// The `SecretIdDelivered` Event: the role, the token's accessor and, when the push answer
/// gave it, the token's expiry.
async fn publish_delivered(
    ctx: &Context,
    pod: &Pod,
    role: &str,
    accessor: &str,
    expires_at: Option<&str>,
) {
    let note = match expires_at {
        Some(expires) => {
            format!(
                "Vault token for role {role} delivered (accessor {accessor}, expires {expires})"
            )
        }
        None => format!("Vault token for role {role} delivered (accessor {accessor})"),
    };
    // One per pod, never repeated: kube's Recorder keeps every Event it publishes for six
    // minutes to count repeats into a series, and scans that cache on each publish. Through the
    // shared one, a burst left thousands of these in the controller's memory.
    let once = Recorder::new(ctx.client.clone(), ctx.reporter.clone());
    publish_with(
        &once,
        pod,
        EventType::Normal,
        reason::DELIVERED,
        "Deliver",
        note,
    )
    .await;
}

/// Publishes an Event about `pod` (notes cut to 1 kB); failures are logged, never fatal.
pub(crate) async fn publish(
    ctx: &Context,
    pod: &Pod,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    publish_with(&ctx.recorder, pod, type_, reason, action, note).await;
}

async fn publish_with(
    recorder: &Recorder,
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
    if let Err(e) = recorder.publish(&event, &pod.object_ref(&())).await {
        warn!(error = %e, reason, "could not publish Event");
    }
}

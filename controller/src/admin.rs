//! The admin port: Prometheus metrics, `/healthz` and `/readyz`.
//!
//! Labels carry only bounded, non-secret values (outcomes and reasons), never a role, pod or
//! credential, so a metric can neither leak a secret nor explode in cardinality.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Outcome label of a delivery attempt.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    /// `delivered`, `already_delivered`, `failed`, `pod_gone`.
    pub outcome: &'static str,
}

/// Reason label of a destroyed secret_id.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    /// Why it was destroyed: `wrap_expired`, `refused`, `pod_gone`, `already_delivered`, `lost_leadership`,
    /// `identity`; `orphaned` (minted by a request that timed out, or left by a dead leader); or
    /// why a pod-identity check failed (see `crate::identity::IdentityFailure`).
    pub reason: &'static str,
}

/// Direction label of a leadership change.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Transition {
    /// `acquired` or `lost`.
    pub transition: &'static str,
}

/// All metrics of the controller.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Delivery attempts by outcome.
    pub deliveries: Family<Outcome, Counter>,
    /// Wrapped secret_ids minted.
    pub secret_ids_minted: Counter,
    /// Unused secret_ids destroyed, by reason.
    pub secret_ids_destroyed: Family<Reason, Counter>,
    /// Pods refused for malformed annotations.
    pub invalid_annotations: Counter,
    /// Failed Vault calls.
    pub vault_errors: Counter,
    /// Tokens revoked because their pod was deleted, or a newer run's token replaced them.
    pub tokens_revoked: Counter,
    /// Seconds from taking a delivery slot until the init container confirmed.
    pub delivery_seconds: Histogram,
    /// Deliveries holding a slot (at most `--concurrency`).
    pub deliveries_in_flight: Gauge,
    /// Pods ready for a delivery and waiting for a slot.
    pub deliveries_waiting: Gauge,
    /// Authorization policy: reloads, loaded, denials.
    pub policy: crate::policy::PolicyMetrics,
    /// Crash-loop backoff: re-deliveries to restarted init containers.
    pub redelivery: crate::redeliver::RedeliveryMetrics,
    /// 1 while this replica is the leader (delivers and revokes), else 0.
    pub leader: Gauge,
    /// Leadership changes of this replica, by direction.
    pub leader_transitions: Family<Transition, Counter>,
    /// Pod-identity checks that failed before a push, by reason.
    pub identity_failures: Family<Reason, Counter>,
    /// The controller's own Vault login: logins, renewals, token TTL.
    pub vault_auth: crate::vault_auth::AuthMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("approle");
        let deliveries = Family::<Outcome, Counter>::default();
        let secret_ids_minted = Counter::default();
        let secret_ids_destroyed = Family::<Reason, Counter>::default();
        let invalid_annotations = Counter::default();
        let vault_errors = Counter::default();
        let tokens_revoked = Counter::default();
        // 1 ms to ~16 s: a delivery is tens of milliseconds when all is well.
        let delivery_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 15));
        let deliveries_in_flight = Gauge::default();
        let deliveries_waiting = Gauge::default();
        let leader = Gauge::default();
        let leader_transitions = Family::<Transition, Counter>::default();
        let identity_failures = Family::<Reason, Counter>::default();
        // Counter names get `_total` appended by the encoder (prometheus-client panics in debug
        // builds if a counter's name already ends in it).
        registry.register(
            "deliveries",
            "Delivery attempts by outcome",
            deliveries.clone(),
        );
        registry.register(
            "secret_ids_minted",
            "Wrapped secret_ids minted",
            secret_ids_minted.clone(),
        );
        registry.register(
            "secret_ids_destroyed",
            "Unused secret_ids destroyed, by reason",
            secret_ids_destroyed.clone(),
        );
        registry.register(
            "invalid_annotations",
            "Pods refused for malformed vault-approle.io annotations",
            invalid_annotations.clone(),
        );
        registry.register("vault_errors", "Failed Vault calls", vault_errors.clone());
        registry.register(
            "tokens_revoked",
            "Tokens revoked because their pod was deleted, or a newer run's token replaced them",
            tokens_revoked.clone(),
        );
        registry.register(
            "delivery_duration_seconds",
            "From taking a delivery slot until the init container confirmed",
            delivery_seconds.clone(),
        );
        registry.register(
            "deliveries_in_flight",
            "Deliveries holding a slot (at most --concurrency)",
            deliveries_in_flight.clone(),
        );
        registry.register(
            "deliveries_waiting",
            "Pods ready for a delivery and waiting for a slot",
            deliveries_waiting.clone(),
        );
        let policy = crate::policy::PolicyMetrics::default();
        policy.register(&mut registry);
        let redelivery = crate::redeliver::RedeliveryMetrics::default();
        redelivery.register(&mut registry);
        registry.register(
            "leader",
            "1 while this replica is the leader (delivers and revokes), else 0",
            leader.clone(),
        );
        registry.register(
            "leader_transitions",
            "Leadership changes of this replica, by direction (acquired, lost)",
            leader_transitions.clone(),
        );
        registry.register(
            "identity_failures",
            "Pod-identity checks that failed before a push (nothing was pushed), by reason",
            identity_failures.clone(),
        );
        let vault_auth = crate::vault_auth::AuthMetrics::default();
        vault_auth.register(&mut registry);
        Self {
            registry,
            deliveries,
            secret_ids_minted,
            secret_ids_destroyed,
            invalid_annotations,
            vault_errors,
            tokens_revoked,
            delivery_seconds,
            deliveries_in_flight,
            deliveries_waiting,
            policy,
            redelivery,
            leader,
            leader_transitions,
            identity_failures,
            vault_auth,
        }
    }
}

impl Metrics {
    /// Counts a delivery outcome.
    pub fn outcome(&self, outcome: &'static str) {
        self.deliveries.get_or_create(&Outcome { outcome }).inc();
    }

    /// Counts a destroyed secret_id.
    pub fn destroyed(&self, reason: &'static str) {
        self.destroyed_n(reason, 1);
    }

    /// Counts `n` destroyed secret_ids.
    pub fn destroyed_n(&self, reason: &'static str, n: usize) {
        self.secret_ids_destroyed
            .get_or_create(&Reason { reason })
            .inc_by(n as u64);
    }

    /// Records that this replica became (true) or stopped being (false) the leader.
    pub fn leader_changed(&self, leading: bool) {
        self.leader.set(i64::from(leading));
        let transition = if leading { "acquired" } else { "lost" };
        self.leader_transitions
            .get_or_create(&Transition { transition })
            .inc();
    }

    /// Counts a failed pod-identity check.
    pub fn identity_failure(&self, reason: &'static str) {
        self.identity_failures
            .get_or_create(&Reason { reason })
            .inc();
    }

    /// The OpenMetrics text of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// What `/readyz` waits for.
#[derive(Debug, Default)]
pub struct Readiness {
    /// The pod watch has listed once.
    pub watch_synced: AtomicBool,
    /// The controller holds a Vault token that has not expired and that Vault has not refused.
    pub vault_login: AtomicBool,
    /// Push (and webhook) certificates are loaded.
    pub certificates: AtomicBool,
    /// Whether an authorization policy is in force (and why not).
    pub policy: PolicyReadiness,
}

/// Readiness of the authorization policy: not ready until one good policy has loaded.
#[derive(Debug)]
pub struct PolicyReadiness(std::sync::Mutex<Option<String>>);

impl Default for PolicyReadiness {
    fn default() -> Self {
        Self(std::sync::Mutex::new(Some("not loaded yet".into())))
    }
}

impl PolicyReadiness {
    /// `None`: a policy is in force; `Some(why)`: none has loaded.
    pub fn set(&self, not_ready: Option<String>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = not_ready;
    }

    /// Why no policy is in force, if none is.
    pub fn get(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Readiness {
    /// Which conditions are not met yet.
    pub fn missing(&self) -> Vec<&'static str> {
        [
            (&self.watch_synced, "pod watch not synced"),
            (&self.vault_login, "Vault login not valid"),
            (&self.certificates, "certificates not loaded"),
        ]
        .into_iter()
        .filter(|(flag, _)| !flag.load(Ordering::Relaxed))
        .map(|(_, what)| what)
        .collect()
    }
}

/// Shared state of the admin server.
#[derive(Debug, Default)]
pub struct Admin {
    /// Metrics.
    pub metrics: Metrics,
    /// Readiness conditions.
    pub ready: Readiness,
}

/// The admin router.
pub fn router(admin: Arc<Admin>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(admin)
}

async fn metrics(State(admin): State<Arc<Admin>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        admin.metrics.render(),
    )
}

async fn readyz(State(admin): State<Arc<Admin>>) -> impl IntoResponse {
    let mut missing: Vec<String> = admin
        .ready
        .missing()
        .into_iter()
        .map(str::to_owned)
        .collect();
    if let Some(why) = admin.ready.policy.get() {
        missing.push(format!("authorization policy not loaded ({why})"));
    }
    if missing.is_empty() {
        (StatusCode::OK, "ready\n".to_owned())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", missing.join(", ")),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_render_counters_with_total_suffix_and_labels() {
        let m = Metrics::default();
        m.outcome("delivered");
        m.outcome("delivered");
        m.destroyed("wrap_expired");
        m.secret_ids_minted.inc();
        let text = m.render();
        assert!(
            text.contains("approle_deliveries_total{outcome=\"delivered\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("approle_secret_ids_destroyed_total{reason=\"wrap_expired\"} 1"),
            "{text}"
        );
        assert!(text.contains("approle_secret_ids_minted_total 1"), "{text}");
        assert!(text.trim_end().ends_with("# EOF"));
    }

    #[test]
    fn leadership_shows_as_a_gauge_and_counted_transitions() {
        let m = Metrics::default();
        assert!(m.render().contains("approle_leader 0"));
        m.leader_changed(true);
        m.leader_changed(false);
        m.leader_changed(true);
        let text = m.render();
        assert!(text.contains("approle_leader 1"), "{text}");
        assert!(
            text.contains("approle_leader_transitions_total{transition=\"acquired\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("approle_leader_transitions_total{transition=\"lost\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn readiness_names_what_is_missing() {
        let r = Readiness::default();
        assert_eq!(r.missing().len(), 3);
        r.watch_synced.store(true, Ordering::Relaxed);
        r.vault_login.store(true, Ordering::Relaxed);
        assert_eq!(r.missing(), vec!["certificates not loaded"]);
        r.certificates.store(true, Ordering::Relaxed);
        assert!(r.missing().is_empty());
    }
}

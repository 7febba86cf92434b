//! Crash-loop backoff: a restarted init container gets a fresh credential, but only after a
//! growing pause, so a pod whose init container keeps failing can never flood Vault with
//! secret_ids and tokens.
//!
//! ```text
//!  push to the init container's run R answered (200, 409, or any refusal)
//!     └─▶ R was handed a credential: vault-approle.io/deliveries += 1 (once per run),
//!         vault-approle.io/last-delivery = "<time> <R>"   (with the status on 200/409, else alone)
//!
//!  init container running as run R' (container ID, or restart count) ≠ last-delivery's R
//!     ├─ deliveries = 0          ─▶ first delivery, no pause
//!     ├─ deliveries = 1          ─▶ first re-delivery, no pause
//!     └─ deliveries = n ≥ 2      ─▶ not before last-delivery + base·2^(n-2) (capped at max):
//!                                   until then a RedeliveryBackoff Event and a requeue
//! ```
//!
//! The count and time live on the pod, so a controller restart or a new leader keeps the pace.
//! This controller also remembers what it wrote, because its pod cache may not show its own patch
//! yet when the next run starts. A pod delivered before (status `delivered`) whose init container
//! runs again — a restarted pod sandbox — gets a re-delivery by the same rule instead of
//! waiting forever.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use crate::pod::Pod;
use approle_shared::INIT_CONTAINER_NAME;
use approle_shared::annotations::{DELIVERIES, LAST_DELIVERY};
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde_json::json;
use tracing::{debug, info, warn};

use crate::deliver::{Context, publish};

/// Event reason of a restarted init container held back by the crash-loop backoff.
pub const REDELIVERY_BACKOFF: &str = "RedeliveryBackoff";

/// Pause settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Pause before the second re-delivery (the first has none); doubled for each further one.
    pub base: Duration,
    /// Cap of the pause.
    pub max: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            base: Duration::from_secs(10),
            max: Duration::from_secs(300),
        }
    }
}

impl Settings {
    /// Pause before handing a credential to a new run when `earlier` runs were handed one.
    pub fn pause(&self, earlier: u32) -> Duration {
        if earlier < 2 {
            return Duration::ZERO;
        }
        self.base
            .saturating_mul(1u32 << (earlier - 2).min(20))
            .min(self.max)
    }
}

/// Earlier deliveries of a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct History {
    /// Init-container runs that were handed a credential.
    pub count: u32,
    /// When the last one was.
    pub at: jiff::Timestamp,
    /// Which run that was.
    pub run: String,
    /// That run will take no other credential: it accepted one (200, 409) or refused one in a way
    /// that ends it (422, 500). Known only to the controller that pushed: its cache may still
    /// show the run waiting.
    pub done: bool,
}

impl History {
    /// Reads the annotations; `None` when absent or unreadable (then the pod counts as new).
    pub fn from_pod(pod: &Pod) -> Option<Self> {
        let a = pod.metadata.annotations.as_ref()?;
        let count = a.get(DELIVERIES)?.trim().parse().ok()?;
        let (at, run) = a.get(LAST_DELIVERY)?.trim().split_once(' ')?;
        Some(Self {
            count,
            at: at.parse().ok()?,
            run: run.trim().to_owned(),
            done: false,
        })
    }

    fn annotations(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut m = serde_json::Map::new();
        m.insert(DELIVERIES.into(), json!(self.count.to_string()));
        m.insert(
            LAST_DELIVERY.into(),
            json!(format!(
                "{} {}",
                self.at.round(jiff::Unit::Second).unwrap_or(self.at),
                self.run
            )),
        );
        m
    }
}

/// The init container's current run, while it runs: its container ID, or `restart-<n>` when the
/// runtime reports none.
pub fn current_run(pod: &Pod) -> Option<String> {
    let status = pod
        .status
        .as_ref()?
        .init_container_statuses
        .as_ref()?
        .iter()
        .find(|c| c.name == INIT_CONTAINER_NAME)?;
    status.state.as_ref()?.running.as_ref()?;
    Some(
        status
            .container_id
            .clone()
            .filter(|id| !id.is_empty())
            .unwrap_or_else(|| format!("restart-{}", status.restart_count)),
    )
}

/// True when the pod's init container runs again after the run that got the recorded delivery
/// (for [`crate::decide`]: such a pod is not "delivered" any more, it asks again).
pub fn restarted_since_delivery(pod: &Pod) -> bool {
    match (current_run(pod), History::from_pod(pod)) {
        (Some(run), Some(h)) => run != h.run,
        _ => false,
    }
}

/// Decision label of a re-delivery.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RedeliveryDecision {
    /// `now` (handed over at once) or `backoff` (held back).
    pub decision: &'static str,
}

/// Metrics of the crash-loop backoff.
#[derive(Debug, Default)]
pub struct RedeliveryMetrics {
    /// Restarted init containers, by decision.
    pub redeliveries: Family<RedeliveryDecision, Counter>,
}

impl RedeliveryMetrics {
    /// Registers `approle_redeliveries_total`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "redeliveries",
            "Restarted init containers asking for a credential again, by decision (now, backoff)",
            self.redeliveries.clone(),
        );
    }

    fn count(&self, decision: &'static str) {
        self.redeliveries
            .get_or_create(&RedeliveryDecision { decision })
            .inc();
    }
}

/// What the controller wrote about each pod (pod UID → history), newer than its cache may be.
#[derive(Debug, Default)]
pub struct Tracker {
    settings: Settings,
    written: Mutex<HashMap<String, History>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Single inserts and reads: a poisoned lock holds consistent data.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What to do with a run that asks for a credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gate {
    /// Deliver now (first run, the same run again, or the pause is over).
    Go,
    /// This very run is done with its credential (accepted, or refused and ending); the cache has
    /// not caught up yet.
    RunDone,
    /// A re-delivery; deliver now.
    Redeliver {
        /// Runs handed a credential before.
        earlier: u32,
    },
    /// Too soon after the last delivery.
    Wait {
        /// Runs handed a credential before.
        earlier: u32,
        /// Until the pause is over.
        remaining: Duration,
        /// The whole pause.
        pause: Duration,
    },
}

impl Tracker {
    /// A tracker with these pauses.
    pub fn new(settings: Settings) -> Self {
        Self {
            settings,
            written: Mutex::default(),
        }
    }

    /// The newest history: the pod's annotations or what this controller wrote, whichever counts
    /// more.
    pub fn history(&self, pod: &Pod) -> Option<History> {
        let annotated = History::from_pod(pod);
        let written = lock(&self.written).get(&pod.uid()?).cloned();
        match (annotated, written) {
            (Some(a), Some(w)) => Some(if a.count > w.count { a } else { w }),
            (a, w) => a.or(w),
        }
    }

    /// Whether the pod's current run may be handed a credential at `now`.
    pub fn gate(&self, pod: &Pod, now: jiff::Timestamp) -> Gate {
        let (Some(run), Some(h)) = (current_run(pod), self.history(pod)) else {
            return Gate::Go;
        };
        if run == h.run && h.done {
            return Gate::RunDone;
        }
        if run == h.run || h.count == 0 {
            return Gate::Go;
        }
        let pause = self.settings.pause(h.count);
        let since: Duration = now
            .duration_since(h.at)
            .try_into()
            .unwrap_or(Duration::ZERO);
        match pause.checked_sub(since) {
            Some(remaining) if !remaining.is_zero() => Gate::Wait {
                earlier: h.count,
                remaining,
                pause,
            },
            _ => Gate::Redeliver { earlier: h.count },
        }
    }

    /// Notes that the pod's current run was handed a credential at `now` (counted once per run),
    /// and whether that ends the run (`done`); returns the annotations to write.
    pub fn handed(
        &self,
        pod: &Pod,
        now: jiff::Timestamp,
        done: bool,
    ) -> Option<serde_json::Map<String, serde_json::Value>> {
        let run = current_run(pod)?;
        let uid = pod.uid()?;
        let mut next = match self.history(pod) {
            Some(h) if h.run == run => h,
            Some(h) => History {
                count: h.count.saturating_add(1),
                at: now,
                run,
                done: false,
            },
            None => History {
                count: 1,
                at: now,
                run,
                done: false,
            },
        };
        next.done |= done;
        let annotations = next.annotations();
        let mut written = lock(&self.written);
        if written.len() > 4096 {
            // Bounded: the annotations are the record; this only bridges a stale cache.
            written.clear();
        }
        written.insert(uid, next);
        Some(annotations)
    }

    /// The annotations last noted for the pod, for the status patch of a delivery.
    pub fn annotations(&self, pod: &Pod) -> serde_json::Map<String, serde_json::Value> {
        pod.uid()
            .and_then(|uid| lock(&self.written).get(&uid).map(History::annotations))
            .unwrap_or_default()
    }
}

/// The reconcile's check, before any Vault call. `None`: go on. `Some(action)`: held back (an
/// Event says until when).
pub async fn gate(ctx: &Context, pod: &Pod) -> Option<Action> {
    match ctx.redelivery.gate(pod, jiff::Timestamp::now()) {
        Gate::Go => None,
        Gate::RunDone => {
            debug!("this init-container run is done with its credential; waiting for the cache");
            Some(Action::await_change())
        }
        Gate::Redeliver { earlier } => {
            ctx.admin.metrics.redelivery.count("now");
            info!(earlier, "init container restarted; delivering again");
            None
        }
        Gate::Wait {
            earlier,
            remaining,
            pause,
        } => {
            ctx.admin.metrics.redelivery.count("backoff");
            // Whole seconds, rounded up: "in 0s" would read as now.
            let secs = remaining.as_secs() + u64::from(remaining.subsec_nanos() > 0);
            warn!(earlier, retry_in = ?remaining, "init container restarted again; crash-loop backoff");
            publish(
                ctx,
                pod,
                EventType::Warning,
                REDELIVERY_BACKOFF,
                "Deliver",
                format!(
                    "init container restarted after {earlier} deliveries to earlier runs; \
                     next delivery in {secs}s (crash-loop backoff: {} after the last delivery)",
                    humantime::format_duration(pause)
                ),
            )
            .await;
            Some(Action::requeue(remaining + Duration::from_millis(100)))
        }
    }
}

/// Records a credential handed to the pod's current run; `run_ends` when its answer ends the run.
/// When the run `accepted` it (200, 409), the delivery's status patch carries the annotations
/// ([`Tracker::annotations`]); otherwise they are patched here.
pub async fn handed(ctx: &Context, pod: &Pod, accepted: bool, run_ends: bool) {
    let Some(annotations) = ctx.redelivery.handed(pod, jiff::Timestamp::now(), run_ends) else {
        return;
    };
    if accepted {
        return;
    }
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &pod.namespace().unwrap_or_default());
    let patch = json!({"metadata": {"annotations": annotations}});
    if let Err(e) = api
        .patch(
            &pod.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        // This controller still remembers it; only a restart before the next write forgets.
        warn!(error = %e, "could not record the delivery count on the pod");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(annotations: serde_json::Value, init_state: serde_json::Value, cid: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u1", "annotations": annotations},
            "spec": {"containers": [{"name": "app", "image": "a"}]},
            "status": {"podIP": "127.1.0.9", "initContainerStatuses": [{
                "name": INIT_CONTAINER_NAME, "image": "i", "imageID": "", "ready": false,
                "restartCount": 2, "containerID": cid, "state": init_state}]},
        }))
        .expect("pod")
    }

    fn running() -> serde_json::Value {
        json!({"running": {"startedAt": "2026-01-01T00:00:00Z"}})
    }

    fn ts(s: &str) -> jiff::Timestamp {
        s.parse().expect("timestamp")
    }

    #[test]
    fn pauses_grow_from_the_second_redelivery_and_are_capped() {
        let s = Settings::default();
        let secs: Vec<u64> = (0..9).map(|n| s.pause(n).as_secs()).collect();
        assert_eq!(secs, [0, 0, 10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(s.pause(u32::MAX), Duration::from_secs(300));
    }

    #[test]
    fn runs_are_container_ids_or_restart_counts() {
        assert_eq!(
            current_run(&pod(json!({}), running(), "containerd://abc")).as_deref(),
            Some("containerd://abc")
        );
        assert_eq!(
            current_run(&pod(json!({}), running(), "")).as_deref(),
            Some("restart-2")
        );
        let ended = json!({"terminated": {"exitCode": 0}});
        assert_eq!(
            current_run(&pod(json!({}), ended, "containerd://abc")),
            None
        );
    }

    #[test]
    fn a_new_run_after_a_delivery_asks_again() {
        let delivered = json!({
            "vault-approle.io/status": "delivered",
            DELIVERIES: "1",
            LAST_DELIVERY: "2026-01-01T00:00:00Z containerd://first",
        });
        assert!(!restarted_since_delivery(&pod(
            delivered.clone(),
            running(),
            "containerd://first"
        )));
        assert!(restarted_since_delivery(&pod(
            delivered.clone(),
            running(),
            "containerd://second"
        )));
        // Delivered by a controller that did not record runs: left as delivered.
        assert!(!restarted_since_delivery(&pod(
            json!({"vault-approle.io/status": "delivered"}),
            running(),
            "containerd://second"
        )));
    }

    #[test]
    fn the_gate_counts_runs_and_holds_back_a_crash_loop() {
        let t = Tracker::new(Settings::default());
        let t0 = ts("2026-01-01T00:00:00Z");
        let run = |cid: &str, a: serde_json::Value| pod(a, running(), cid);
        // First run: go; handed → 1.
        let r1 = run("c://1", json!({}));
        assert_eq!(t.gate(&r1, t0), Gate::Go);
        let a = t.handed(&r1, t0, false).expect("annotations");
        assert_eq!(a[DELIVERIES], "1");
        // The same run again (a retry after a failed push): go, not counted twice.
        assert_eq!(t.gate(&r1, t0), Gate::Go);
        t.handed(&r1, t0, false);
        assert_eq!(t.history(&r1).map(|h| h.count), Some(1));
        // The cache has not caught up (no annotations on the pod): memory counts.
        let r2 = run("c://2", json!({}));
        assert_eq!(t.gate(&r2, t0), Gate::Redeliver { earlier: 1 });
        let a = t.handed(&r2, t0, false).expect("annotations");
        assert_eq!(a[DELIVERIES], "2");
        assert_eq!(a[LAST_DELIVERY], "2026-01-01T00:00:00Z c://2");
        // Third run, 3 s later: 10 s pause, 7 s left.
        let r3 = run("c://3", serde_json::Value::Object(a));
        assert_eq!(
            t.gate(&r3, ts("2026-01-01T00:00:03Z")),
            Gate::Wait {
                earlier: 2,
                remaining: Duration::from_secs(7),
                pause: Duration::from_secs(10)
            }
        );
        assert_eq!(
            t.gate(&r3, ts("2026-01-01T00:00:10Z")),
            Gate::Redeliver { earlier: 2 }
        );
    }

    #[test]
    fn a_run_that_is_done_is_not_pushed_again_while_the_cache_lags() {
        let t = Tracker::new(Settings::default());
        let t0 = ts("2026-01-01T00:00:00Z");
        let p = pod(json!({}), running(), "c://1");
        t.handed(&p, t0, true);
        assert_eq!(t.gate(&p, t0), Gate::RunDone);
        let next = pod(json!({}), running(), "c://2");
        assert_eq!(t.gate(&next, t0), Gate::Redeliver { earlier: 1 });
    }

    #[test]
    fn a_new_controller_keeps_the_pace_from_the_annotations() {
        let t = Tracker::new(Settings::default());
        let p = pod(
            json!({DELIVERIES: "4", LAST_DELIVERY: "2026-01-01T00:00:00Z c://4"}),
            running(),
            "c://5",
        );
        assert!(matches!(
            t.gate(&p, ts("2026-01-01T00:00:30Z")),
            Gate::Wait { earlier: 4, pause, .. } if pause == Duration::from_secs(40)
        ));
        // Unreadable annotations count as no history (never a stuck pod).
        let p = pod(
            json!({DELIVERIES: "many", LAST_DELIVERY: "x"}),
            running(),
            "c://5",
        );
        assert_eq!(t.gate(&p, ts("2026-01-01T00:00:30Z")), Gate::Go);
    }
}

//! Leader election on a `coordination.k8s.io/v1` Lease, with client-go's semantics: only the
//! leader delivers and revokes; every replica serves the webhook and the admin port.
//!
//! ```text
//!  candidate ──every retry period (jittered)──▶ try_acquire_or_renew
//!     ▲            get ─ absent ─▶ create (409 AlreadyExists: someone else was faster)
//!     │                ─ held by another, not expired ─▶ wait
//!     │                  (expired = first seen locally + its leaseDurationSeconds ≤ now)
//!     │                ─ free, expired or ours ─▶ replace with the observed resourceVersion
//!     │                                            (409 Conflict: lost the race)
//!     │                                            takeover: leaseTransitions + 1
//!     │            ▼ acquired
//!     │        leader ──every retry period──▶ renew (retrying until the renew deadline)
//!     └── lost ◀── renew deadline passed, or another holder seen
//!                  shutdown ─▶ release: holderIdentity cleared, leaseDurationSeconds 1
//! ```
//!
//! Expiry is judged by *local observation time*, as client-go does: a record counts from the
//! moment this replica first saw it change, never from the `renewTime` written by another
//! machine's clock, so clock skew between replicas cannot make a live lease look expired. A leader
//! gives up at the renew deadline, which is shorter than the lease duration, so it has stopped
//! before anyone else may take over.
//!
//! [`Leadership`] is what the rest of the controller sees: a watch of "am I the leader".

use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::admin::Admin;
use crate::args::Args;

/// client-go's `JitterFactor`: a candidate waits between 1× and 2.2× the retry period, so
/// replicas started together do not all ask at the same instant.
const JITTER_FACTOR: f64 = 1.2;

/// Election settings (flags `--leader-*`).
#[derive(Debug, Clone)]
pub struct Config {
    /// Lease name.
    pub name: String,
    /// Lease namespace.
    pub namespace: String,
    /// This replica's identity, unique per process (`holderIdentity`).
    pub identity: String,
    /// How long a lease is valid after its last observed change (`leaseDurationSeconds`).
    pub lease_duration: Duration,
    /// How long the leader keeps retrying a failed renewal before it gives up leading.
    pub renew_deadline: Duration,
    /// Pause between attempts, as candidate and as leader.
    pub retry_period: Duration,
}

impl Config {
    /// Checks the durations the way client-go does: the leader must stop (renew deadline) before
    /// others may take over (lease duration), and retry more than once within its deadline.
    pub fn validate(&self) -> Result<(), String> {
        if self.lease_duration <= self.renew_deadline {
            return Err(format!(
                "--leader-lease-duration ({:?}) must be longer than --leader-renew-deadline ({:?})",
                self.lease_duration, self.renew_deadline
            ));
        }
        if self.renew_deadline.as_secs_f64() <= JITTER_FACTOR * self.retry_period.as_secs_f64() {
            return Err(format!(
                "--leader-renew-deadline ({:?}) must be longer than {JITTER_FACTOR} × \
                 --leader-retry-period ({:?})",
                self.renew_deadline, self.retry_period
            ));
        }
        if self.lease_duration < Duration::from_secs(1) {
            return Err("--leader-lease-duration must be at least 1s".into());
        }
        Ok(())
    }

    fn lease_seconds(&self) -> i32 {
        i32::try_from(self.lease_duration.as_secs().max(1)).unwrap_or(i32::MAX)
    }
}

/// A process-unique election identity: the instance name (the pod name in a cluster) plus a
/// random suffix, as client-go's examples do, so a restarted container never mistakes its
/// predecessor's lease for its own.
pub fn identity(instance: &str) -> String {
    format!("{instance}_{:08x}", random_u64() as u32)
}

fn random_u64() -> u64 {
    // The standard library seeds every RandomState from the OS: enough for jitter and a suffix.
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
}

fn jittered(period: Duration) -> Duration {
    let fraction = (random_u64() % 1000) as f64 / 1000.0;
    period.mul_f64(1.0 + JITTER_FACTOR * fraction)
}

/// Whether this replica leads, as the rest of the controller sees it.
#[derive(Debug, Clone)]
pub struct Leadership {
    rx: watch::Receiver<bool>,
    /// Turns true when the process is asked to stop (see [`Leadership::until_stopped`]).
    stop: Option<watch::Receiver<bool>>,
}

impl Leadership {
    /// Always the leader: leader election is off.
    pub fn always() -> Self {
        let (tx, rx) = watch::channel(true);
        // Kept alive forever: the value never changes and receivers never see "closed".
        std::mem::forget(tx);
        Self { rx, stop: None }
    }

    /// The same leadership, as deliveries see it: it also ends when `stop` turns true. A graceful
    /// stop then hands a delivery that is waiting for its init container to the next leader (the
    /// way a lost lease does) instead of holding the process up to a wrapping token's lifetime;
    /// a push already on the wire still completes.
    pub fn until_stopped(&self, stop: watch::Receiver<bool>) -> Self {
        Self {
            rx: self.rx.clone(),
            stop: Some(stop),
        }
    }

    /// True while this replica leads (and, for [`Leadership::until_stopped`], is not stopping).
    pub fn is_leader(&self) -> bool {
        *self.rx.borrow() && !self.stop.as_ref().is_some_and(|s| *s.borrow())
    }

    /// Waits until this replica leads (true) or `stop` fires first (false).
    pub async fn acquired(&self, stop: &mut watch::Receiver<bool>) -> bool {
        let mut rx = self.rx.clone();
        tokio::select! {
            r = rx.wait_for(|leading| *leading) => r.is_ok(),
            _ = stop.wait_for(|s| *s) => false,
        }
    }

    /// Resolves with the new state once leading is no longer `was` (at once if it already
    /// differs). Never resolves if the elector is gone, or for [`Leadership::always`].
    pub async fn changed(&self, was: bool) -> bool {
        let mut rx = self.rx.clone();
        let now = rx.wait_for(|leading| *leading != was).await.map(|now| *now);
        match now {
            Ok(now) => now,
            Err(_) => std::future::pending().await,
        }
    }

    /// Resolves once this replica no longer leads.
    pub async fn lost(&self) {
        let mut rx = self.rx.clone();
        // A closed channel means the elector is gone: no longer leading either.
        let _ = rx.wait_for(|leading| !*leading).await;
    }
}

/// Errors of one election step.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused or failed a Lease call.
    #[error("lease {op}: {source}")]
    Kube {
        /// get, create or replace.
        op: &'static str,
        /// The cause.
        source: kube::Error,
    },
    /// A Lease call took longer than allowed.
    #[error("lease {0}: timed out")]
    Timeout(&'static str),
}

/// What a step found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// The lease is ours (created, taken over or renewed).
    Holding,
    /// Another replica holds a valid lease.
    HeldBy(String),
    /// Our create or replace lost a race (409): someone else wrote first.
    LostRace,
}

/// What to do with the lease record just read: a pure function, so the rules are table tests.
#[derive(Debug, Clone, PartialEq)]
enum Plan {
    /// Leave it: held by another and not expired.
    Wait(String),
    /// Write this spec (renewal or takeover).
    Write(LeaseSpec),
}

/// client-go's rules for an existing record. `observed_for` is how long ago this replica first
/// saw the record in its current form.
fn plan(
    current: &LeaseSpec,
    observed_for: Duration,
    identity: &str,
    lease_seconds: i32,
    now: MicroTime,
) -> Plan {
    let holder = current.holder_identity.as_deref().unwrap_or_default();
    let valid_for = Duration::from_secs(
        u64::try_from(current.lease_duration_seconds.unwrap_or(0)).unwrap_or(0),
    );
    if !holder.is_empty() && holder != identity && observed_for < valid_for {
        return Plan::Wait(holder.to_owned());
    }
    let ours = holder == identity;
    let transitions = current.lease_transitions.unwrap_or(0);
    Plan::Write(LeaseSpec {
        holder_identity: Some(identity.to_owned()),
        lease_duration_seconds: Some(lease_seconds),
        acquire_time: if ours {
            current.acquire_time.clone()
        } else {
            Some(now.clone())
        },
        renew_time: Some(now),
        lease_transitions: Some(if ours {
            transitions
        } else {
            transitions.saturating_add(1)
        }),
        ..LeaseSpec::default()
    })
}

/// The record as last read or written, and when this replica first saw it so.
#[derive(Debug, Clone)]
struct Observed {
    spec: LeaseSpec,
    resource_version: Option<String>,
    at: Instant,
}

/// The election client for one Lease.
pub struct Elector {
    api: Api<Lease>,
    config: Config,
    observed: Option<Observed>,
}

fn now() -> MicroTime {
    MicroTime(jiff::Timestamp::now())
}

impl Elector {
    /// An elector for `config`'s Lease.
    pub fn new(client: kube::Client, config: Config) -> Self {
        Self {
            api: Api::namespaced(client, &config.namespace),
            config,
            observed: None,
        }
    }

    fn observe(&mut self, lease: &Lease) {
        let spec = lease.spec.clone().unwrap_or_default();
        let changed = self.observed.as_ref().is_none_or(|o| o.spec != spec);
        let at = match &self.observed {
            Some(o) if !changed => o.at,
            _ => Instant::now(),
        };
        self.observed = Some(Observed {
            spec,
            resource_version: lease.metadata.resource_version.clone(),
            at,
        });
    }

    fn holds(&self) -> bool {
        self.observed.as_ref().is_some_and(|o| {
            o.spec.holder_identity.as_deref() == Some(self.config.identity.as_str())
        })
    }

    async fn call<T>(
        &self,
        op: &'static str,
        limit: Duration,
        f: impl Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, Error> {
        match tokio::time::timeout(limit, f).await {
            Ok(r) => r.map_err(|source| Error::Kube { op, source }),
            Err(_) => Err(Error::Timeout(op)),
        }
    }

    /// client-go's `tryAcquireOrRenew`: one read-decide-write round. Every call is bounded by
    /// `limit`.
    pub async fn try_acquire_or_renew(&mut self, limit: Duration) -> Result<Step, Error> {
        let seconds = self.config.lease_seconds();
        let name = self.config.name.clone();
        // Fast path of a leader whose lease is still valid: renew from the cached record,
        // without a read (a 409 falls through to the full round).
        if let Some(o) = self.observed.clone()
            && self.holds()
            && o.at.elapsed() < self.config.lease_duration
            && let Plan::Write(spec) = plan(
                &o.spec,
                o.at.elapsed(),
                &self.config.identity,
                seconds,
                now(),
            )
        {
            match self.replace(&name, spec, o.resource_version, limit).await {
                Ok(lease) => {
                    self.observe(&lease);
                    return Ok(Step::Holding);
                }
                Err(Error::Kube { source, .. }) if is_conflict(&source) => {
                    debug!("lease changed under us; reading it again");
                }
                Err(e) => return Err(e),
            }
        }
        let current = self.call("get", limit, self.api.get_opt(&name)).await?;
        let Some(current) = current else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some(self.config.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.config.identity.clone()),
                    lease_duration_seconds: Some(seconds),
                    acquire_time: Some(now()),
                    renew_time: Some(now()),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self
                .call(
                    "create",
                    limit,
                    self.api.create(&PostParams::default(), &lease),
                )
                .await
            {
                Ok(created) => {
                    self.observe(&created);
                    Ok(Step::Holding)
                }
                Err(Error::Kube { source, .. }) if is_conflict(&source) => Ok(Step::LostRace),
                Err(e) => Err(e),
            };
        };
        self.observe(&current);
        let o = self.observed.clone().expect("observe just set it");
        match plan(
            &o.spec,
            o.at.elapsed(),
            &self.config.identity,
            seconds,
            now(),
        ) {
            Plan::Wait(holder) => Ok(Step::HeldBy(holder)),
            Plan::Write(spec) => match self.replace(&name, spec, o.resource_version, limit).await {
                Ok(lease) => {
                    self.observe(&lease);
                    Ok(Step::Holding)
                }
                Err(Error::Kube { source, .. }) if is_conflict(&source) => Ok(Step::LostRace),
                Err(e) => Err(e),
            },
        }
    }

    async fn replace(
        &self,
        name: &str,
        spec: LeaseSpec,
        resource_version: Option<String>,
        limit: Duration,
    ) -> Result<Lease, Error> {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                namespace: Some(self.config.namespace.clone()),
                resource_version,
                ..ObjectMeta::default()
            },
            spec: Some(spec),
        };
        self.call(
            "replace",
            limit,
            self.api.replace(name, &PostParams::default(), &lease),
        )
        .await
    }

    /// Gives the lease up so a successor takes over at once: holder cleared, duration 1 s,
    /// transitions kept (client-go's `release`). Only if we still hold it.
    pub async fn release(&mut self) -> Result<bool, Error> {
        let Some(o) = self.observed.clone().filter(|_| self.holds()) else {
            return Ok(false);
        };
        let t = now();
        let spec = LeaseSpec {
            holder_identity: None,
            lease_duration_seconds: Some(1),
            acquire_time: Some(t.clone()),
            renew_time: Some(t),
            lease_transitions: o.spec.lease_transitions,
            ..LeaseSpec::default()
        };
        let name = self.config.name.clone();
        let lease = self
            .replace(&name, spec, o.resource_version, self.config.renew_deadline)
            .await?;
        self.observe(&lease);
        Ok(true)
    }

    /// Campaigns, and leads while it can, until `stop` fires; then releases the lease if it holds
    /// it. `leading` follows every change. Fire `stop` only after in-flight deliveries ended:
    /// until then the lease is renewed as usual.
    pub async fn run(
        mut self,
        leading: watch::Sender<bool>,
        mut stop: watch::Receiver<bool>,
        admin: Arc<Admin>,
    ) {
        let cfg = self.config.clone();
        info!(lease = %format!("{}/{}", cfg.namespace, cfg.name), identity = %cfg.identity, "leader election: candidate");
        'campaign: loop {
            // Candidate: try at once, then every jittered retry period.
            loop {
                match self.try_acquire_or_renew(cfg.renew_deadline).await {
                    Ok(Step::Holding) => break,
                    Ok(Step::HeldBy(holder)) => {
                        debug!(%holder, "lease held by another replica");
                        // A standby delivers nothing: it is as ready as it will get (the webhook
                        // serves on every replica).
                        admin.ready.watch_synced.store(true, Ordering::Relaxed);
                    }
                    Ok(Step::LostRace) => debug!("another replica wrote the lease first"),
                    Err(e) => warn!(error = %e, "leader election"),
                }
                if !pause(jittered(cfg.retry_period), &mut stop).await {
                    break 'campaign;
                }
            }
            let transitions = self
                .observed
                .as_ref()
                .and_then(|o| o.spec.lease_transitions)
                .unwrap_or(0);
            info!(identity = %cfg.identity, lease_transitions = transitions, "leadership acquired: delivering");
            admin.metrics.leader_changed(true);
            leading.send_replace(true);
            // Leader: renew every retry period; a round that does not succeed within the renew
            // deadline ends the leadership.
            loop {
                if !pause(cfg.retry_period, &mut stop).await {
                    break 'campaign;
                }
                let round = Instant::now();
                let why = loop {
                    let left = cfg.renew_deadline.saturating_sub(round.elapsed());
                    match self.try_acquire_or_renew(left).await {
                        Ok(Step::Holding) => break None,
                        // Someone else holds it now: we are not leading, whatever we thought.
                        Ok(Step::HeldBy(holder)) => {
                            break Some(format!("lease now held by {holder}"));
                        }
                        Ok(Step::LostRace) => debug!("renewal lost a race; retrying"),
                        Err(e) => warn!(error = %e, "renewing the lease failed"),
                    }
                    if round.elapsed() + cfg.retry_period >= cfg.renew_deadline {
                        break Some(format!(
                            "not renewed within the renew deadline ({:?})",
                            cfg.renew_deadline
                        ));
                    }
                    if !pause(cfg.retry_period, &mut stop).await {
                        break 'campaign;
                    }
                };
                if let Some(why) = why {
                    info!(identity = %cfg.identity, reason = %why, "leadership lost: delivery stops; candidate again");
                    admin.metrics.leader_changed(false);
                    leading.send_replace(false);
                    continue 'campaign;
                }
            }
        }
        // Told to stop: the caller did so after its in-flight deliveries ended, so the lease can
        // go to a successor at once.
        let was_leading = *leading.borrow();
        leading.send_replace(false);
        if was_leading {
            admin.metrics.leader_changed(false);
        }
        match self.release().await {
            Ok(true) => {
                info!(identity = %cfg.identity, "lease released: a successor takes over at once")
            }
            Ok(false) => {}
            Err(e) => {
                warn!(error = %e, "releasing the lease failed; a successor waits for it to expire")
            }
        }
    }
}

/// The running election, to be released once delivery has stopped.
pub struct Running {
    release: Option<(watch::Sender<bool>, JoinHandle<()>, Duration)>,
}

impl Running {
    /// Stops campaigning and releases the lease if held (bounded by the renew deadline).
    pub async fn release(self) {
        let Some((tx, task, limit)) = self.release else {
            return;
        };
        tx.send_replace(true);
        if tokio::time::timeout(limit + Duration::from_secs(1), task)
            .await
            .is_err()
        {
            warn!("releasing the lease took too long; a successor waits for it to expire");
        }
    }
}

/// Starts the election the flags ask for, or none (`--leader-elect=false`: always leading).
pub fn start(
    args: &Args,
    client: &kube::Client,
    self_namespace: &str,
    instance: &str,
    admin: &Arc<Admin>,
) -> Result<(Leadership, Running), String> {
    if !args.leader_elect {
        info!("leader election off: this replica delivers on its own");
        admin.metrics.leader.set(1);
        return Ok((Leadership::always(), Running { release: None }));
    }
    let config = Config {
        name: args.leader_lease_name.clone(),
        namespace: args
            .leader_lease_namespace
            .clone()
            .unwrap_or_else(|| self_namespace.to_owned()),
        identity: identity(instance),
        lease_duration: args.leader_lease_duration,
        renew_deadline: args.leader_renew_deadline,
        retry_period: args.leader_retry_period,
    };
    config.validate()?;
    let limit = config.renew_deadline;
    let (leading, rx) = watch::channel(false);
    let (stop, stopped) = watch::channel(false);
    let task =
        tokio::spawn(Elector::new(client.clone(), config).run(leading, stopped, admin.clone()));
    Ok((
        Leadership { rx, stop: None },
        Running {
            release: Some((stop, task, limit)),
        },
    ))
}

/// Sleeps `d` unless `stop` fires first (false then).
async fn pause(d: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    if *stop.borrow() {
        return false;
    }
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = stop.wait_for(|s| *s) => false,
    }
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: &str = "controller-0_aaaa";
    const OTHER: &str = "controller-1_bbbb";

    fn at(s: &str) -> MicroTime {
        MicroTime(s.parse().expect("timestamp"))
    }

    fn record(holder: Option<&str>, seconds: i32, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(str::to_owned),
            lease_duration_seconds: Some(seconds),
            acquire_time: Some(at("2026-01-01T00:00:00Z")),
            renew_time: Some(at("2026-01-01T00:00:05Z")),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn election_follows_client_go() {
        let now = at("2026-01-01T00:01:00Z");
        // (case, record, observed for, expected holder we wait for, or transitions after writing)
        let cases: Vec<(&str, LeaseSpec, Duration, Result<i32, &str>)> = vec![
            (
                "another holder, fresh",
                record(Some(OTHER), 15, 3),
                secs(2),
                Err(OTHER),
            ),
            (
                "another holder, just before expiry",
                record(Some(OTHER), 15, 3),
                secs(14),
                Err(OTHER),
            ),
            (
                "another holder, expired: takeover",
                record(Some(OTHER), 15, 3),
                secs(15),
                Ok(4),
            ),
            (
                "released (no holder): taken at once",
                record(None, 1, 3),
                secs(0),
                Ok(4),
            ),
            (
                "empty holder string: taken at once",
                record(Some(""), 15, 3),
                secs(0),
                Ok(4),
            ),
            (
                "ours: renewed, transitions kept",
                record(Some(ME), 15, 3),
                secs(1),
                Ok(3),
            ),
            (
                "ours even if expired: renewed",
                record(Some(ME), 15, 3),
                secs(60),
                Ok(3),
            ),
            // A short duration written by the holder counts, not ours.
            (
                "another holder's own short duration",
                record(Some(OTHER), 2, 0),
                secs(3),
                Ok(1),
            ),
        ];
        for (name, current, observed_for, want) in cases {
            let got = plan(&current, observed_for, ME, 15, now.clone());
            match (got, want) {
                (Plan::Wait(holder), Err(expected)) => assert_eq!(holder, expected, "{name}"),
                (Plan::Write(spec), Ok(transitions)) => {
                    assert_eq!(spec.holder_identity.as_deref(), Some(ME), "{name}");
                    assert_eq!(spec.lease_transitions, Some(transitions), "{name}");
                    assert_eq!(spec.lease_duration_seconds, Some(15), "{name}");
                    assert_eq!(spec.renew_time, Some(now.clone()), "{name}");
                    let kept = current.holder_identity.as_deref() == Some(ME);
                    let acquire = if kept {
                        current.acquire_time.clone()
                    } else {
                        Some(now.clone())
                    };
                    assert_eq!(spec.acquire_time, acquire, "{name}: acquireTime");
                }
                (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn times_are_written_with_microseconds() {
        let spec = record(Some(ME), 15, 0);
        let json = serde_json::to_value(&spec).expect("json");
        assert_eq!(json["renewTime"], "2026-01-01T00:00:05.000000Z");
        assert_eq!(json["acquireTime"], "2026-01-01T00:00:00.000000Z");
    }

    #[test]
    fn durations_must_leave_the_old_leader_time_to_stop() {
        let ok = Config {
            name: "l".into(),
            namespace: "ns".into(),
            identity: ME.into(),
            lease_duration: secs(15),
            renew_deadline: secs(10),
            retry_period: secs(2),
        };
        assert_eq!(ok.validate(), Ok(()));
        let too_long_deadline = Config {
            renew_deadline: secs(15),
            ..ok.clone()
        };
        assert!(too_long_deadline.validate().is_err());
        let too_slow_retry = Config {
            retry_period: secs(9),
            ..ok.clone()
        };
        assert!(too_slow_retry.validate().is_err());
        let test_timings = Config {
            lease_duration: secs(3),
            renew_deadline: secs(2),
            retry_period: Duration::from_millis(500),
            ..ok
        };
        assert_eq!(test_timings.validate(), Ok(()));
    }

    #[test]
    fn identities_are_unique_per_process_start() {
        let a = identity("controller-0");
        let b = identity("controller-0");
        assert!(a.starts_with("controller-0_"), "{a}");
        assert_ne!(a, b);
    }

    #[test]
    fn jitter_stays_within_client_go_bounds() {
        for _ in 0..100 {
            let d = jittered(secs(2));
            assert!(
                d >= secs(2) && d <= secs(2).mul_f64(1.0 + JITTER_FACTOR),
                "{d:?}"
            );
        }
    }

    #[test]
    fn deliveries_stop_leading_when_the_process_stops() {
        let (lead_tx, rx) = watch::channel(true);
        let leadership = Leadership { rx, stop: None };
        let (stop_tx, stop) = watch::channel(false);
        let deliveries = leadership.until_stopped(stop);
        assert!(deliveries.is_leader());
        stop_tx.send_replace(true);
        assert!(!deliveries.is_leader(), "a stop ends it");
        assert!(
            leadership.is_leader(),
            "the lease itself is held until released"
        );
        stop_tx.send_replace(false);
        lead_tx.send_replace(false);
        assert!(!deliveries.is_leader(), "a lost lease ends it too");
    }

    #[tokio::test]
    async fn always_leading_is_leading_at_once() {
        let l = Leadership::always();
        assert!(l.is_leader());
        let (_tx, mut stop) = watch::channel(false);
        assert!(l.acquired(&mut stop).await);
        assert!(l.is_leader());
    }

    #[tokio::test]
    async fn changed_reports_each_change_of_leading_and_then_waits() {
        let (lead_tx, rx) = watch::channel(false);
        let l = Leadership { rx, stop: None };
        let pending = |l: &Leadership, was| {
            let l = l.clone();
            async move {
                tokio::time::timeout(Duration::from_millis(50), l.changed(was))
                    .await
                    .is_err()
            }
        };
        assert!(pending(&l, false).await, "no change yet");
        assert!(!l.changed(true).await, "differs already: at once");
        lead_tx.send_replace(true);
        assert!(l.changed(false).await);
        lead_tx.send_replace(false);
        assert!(!l.changed(true).await);
        // The elector gone (it leaves `false` behind): no change ever comes, and no busy loop.
        drop(lead_tx);
        assert!(pending(&l, false).await);
        assert!(pending(&Leadership::always(), true).await);
    }
}

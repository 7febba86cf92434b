//! Revocation on pod deletion: when a managed pod is deleted, the token it received is revoked by
//! the accessor recorded on it (`vault-approle.io/token-accessor`), so a credential never outlives
//! its pod. The same revocation ends a token that a newer one replaced: when a restarted init
//! container (a new run, after a lost pod sandbox) gets its own token, [`crate::deliver`] revokes
//! the previous run's once the new accessor is recorded.
//!
//! ```text
//!   metadata watch of managed pods (every replica, whole process life)
//!        │ Apply / InitApply ──▶ Tracker: pod UID → (pod, accessors seen: the first + edits)
//!        │ Delete ─────────────▶ gone
//!        │ Init … InitDone ────▶ gone: tracked pods missing from the new list (a watch that
//!        ▼                        expired with 410 re-lists; deletions in between have no event)
//!   gone ──leading──▶ revoke each accessor whose token's metadata names the pod
//!        └─standby──▶ kept STANDBY_WINDOW ──this replica takes over──▶ revoke (those its
//!                                                 predecessor already revoked are found gone)
//!   gone unmarked (no deletion timestamp, or missing from a re-list) ──▶ GET the pod first:
//!        still there (same UID) ──▶ kept: it only left the selection (managed label removed)
//! ```
//!
//! A label selector's watch reports a pod that stops matching as a Delete of the pod as it was,
//! exactly like a deletion. A pod the kubelet stops is marked (deletion timestamp) before it
//! goes, so only unmarked ones are looked up: a pod whose managed label was removed keeps its
//! token while it runs; the controller no longer sees it, so that token ends by its TTL.
//!
//! A separate watch of managed pods feeds this, not a finalizer: a finalizer would block every pod
//! deletion while the controller is down. What this cannot see (a pod deleted while no replica
//! runs at all) still ends by the token's own TTL. The watch asks for metadata only
//! (`PartialObjectMetadata`): name, namespace, UID and the accessor annotation are all it reads, so
//! the API server sends, and the controller decodes, a fraction of each pod change.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use crate::pod::Pod;
use approle_shared::MANAGED_LABEL;
use approle_shared::annotations::TOKEN_ACCESSOR;
use approle_shared::vault::{Destroyed, Vault};
use futures::{Stream, StreamExt};
use kube::core::PartialObjectMeta;
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::admin::Admin;
use crate::leader::Leadership;
use crate::vault_auth::VaultAuth;

/// How long a replica that does not lead keeps the deletions it sees, to revoke them itself if it
/// takes over: the leader it replaces may have died (or lost its lease) before revoking them.
/// Several lease durations; a takeover re-checks at most this much of the past.
pub const STANDBY_WINDOW: Duration = Duration::from_secs(300);
/// At most this many deletions are kept while standing by (the oldest go first).
const STANDBY_CAP: usize = 10_000;
/// Revocations in flight at once: a mass deletion, a takeover's backlog or a slow Vault does not
/// make them wait for each other (a failing one retries for a few seconds).
const CONCURRENCY: usize = 8;

/// Consumes the watch of managed pods for the life of the process, on every replica: the leader
/// revokes the token of every deleted pod that has one; a standby keeps the deletions of the last
/// [`STANDBY_WINDOW`] and revokes them when it takes over.
pub async fn run(
    events: impl Stream<Item = Result<watcher::Event<PartialObjectMeta<Pod>>, watcher::Error>>,
    client: kube::Client,
    leadership: Leadership,
    vault: Vault,
    auth: Arc<VaultAuth>,
    admin: Arc<Admin>,
) {
    let mut events = std::pin::pin!(events);
    let mut tracker = Tracker::default();
    let mut standby = Standby::default();
    let mut leading = leadership.is_leader();
    let revoker = Revoker {
        permits: Arc::new(Semaphore::new(CONCURRENCY)),
        client,
        vault,
        auth,
        admin,
    };
    loop {
        let gone = tokio::select! {
            event = events.next() => match event {
                None => return,
                Some(Ok(event)) => tracker.event(event),
                Some(Err(e)) => {
                    warn!(error = %e, "revocation watch");
                    continue;
                }
            },
            now_leading = leadership.changed(leading) => {
                leading = now_leading;
                if leading {
                    let backlog = standby.take(Instant::now());
                    if !backlog.is_empty() {
                        info!(
                            pods = backlog.len(),
                            "leading now: revoking the tokens of pods deleted while another replica led (tokens it revoked already are found gone)"
                        );
                    }
                    for r in backlog {
                        revoker.start(r, Why::DeletedBeforeLeading).await;
                    }
                }
                continue;
            }
        };
        for r in gone {
            if leading {
                revoker.start(r, Why::PodDeleted).await;
            } else {
                debug!(
                    pod.namespace = r.owner.namespace,
                    pod.name = r.owner.name,
                    token_accessor = r.accessor,
                    "pod deleted while another replica leads: kept in case this replica takes over"
                );
                standby.push(Instant::now(), r);
            }
        }
    }
}

/// Runs revocations as tasks, [`CONCURRENCY`] at a time.
struct Revoker {
    permits: Arc<Semaphore>,
    client: kube::Client,
    vault: Vault,
    auth: Arc<VaultAuth>,
    admin: Arc<Admin>,
}

impl Revoker {
    /// Starts revoking `r` once a slot is free (the watch waits for it: backpressure).
    async fn start(&self, r: Recorded, why: Why) {
        let Ok(permit) = self.permits.clone().acquire_owned().await else {
            return;
        };
        let (client, vault, auth, admin) = (
            self.client.clone(),
            self.vault.clone(),
            self.auth.clone(),
            self.admin.clone(),
        );
        tokio::spawn(async move {
            if r.confirm && still_there(&client, &r.owner).await {
                info!(
                    pod.namespace = r.owner.namespace,
                    pod.name = r.owner.name,
                    token_accessor = r.accessor,
                    "not revoking the token of a pod that left the managed selection but still runs (was its {MANAGED_LABEL} label removed?): it is not revoked when the pod is deleted either, and ends by its TTL"
                );
            } else {
                revoke(&r.owner, &r.accessor, why, &vault, &auth, &admin).await;
            }
            drop(permit);
        });
    }
}

/// Whether this very pod (by UID) still exists. On an API error, no: the token is revoked, as
/// a credential must not outlive its pod.
async fn still_there(client: &kube::Client, owner: &Owner) -> bool {
    let pods: Api<Pod> = Api::namespaced(client.clone(), &owner.namespace);
    match pods.get_metadata_opt(&owner.name).await {
        Ok(found) => found.is_some_and(|p| p.uid().as_deref() == Some(owner.uid.as_str())),
        Err(e) => {
            warn!(
                pod.namespace = owner.namespace,
                pod.name = owner.name,
                error = %e,
                "could not ask the API server whether a pod that left the watch still exists: revoking its token"
            );
            false
        }
    }
}

/// The token recorded on a managed pod.
#[derive(Debug, PartialEq, Eq)]
pub struct Recorded {
    /// The pod.
    pub owner: Owner,
    /// `vault-approle.io/token-accessor`.
    pub accessor: String,
    /// The watch did not show the pod being deleted (a Delete without a deletion timestamp, or
    /// missing from a re-list): it may only have left the selection, by losing its managed label.
    /// The API server is asked first, and a pod still there keeps its token.
    pub confirm: bool,
}

/// Accessors remembered per pod: the one the controller recorded, and any it was edited to.
const ACCESSORS_PER_POD: usize = 4;

/// The tokens recorded on one pod over time, oldest first.
#[derive(Debug)]
struct Tracked {
    owner: Owner,
    accessors: Vec<String>,
}

impl Tracked {
    fn note(&mut self, accessor: Option<&String>) {
        let Some(accessor) = accessor else { return };
        if self.accessors.contains(accessor) {
            return;
        }
        if self.accessors.len() == ACCESSORS_PER_POD {
            // The first one seen stays (normally the controller's own): edits replace edits.
            self.accessors.remove(1);
        }
        self.accessors.push(accessor.clone());
    }

    fn gone(self, confirm: bool) -> impl Iterator<Item = Recorded> {
        let owner = self.owner;
        self.accessors.into_iter().map(move |accessor| Recorded {
            owner: owner.clone(),
            accessor,
            confirm,
        })
    }
}

/// The managed pods that held a token, by UID, as the watch has shown them: what tells a pod that
/// vanished during a re-list (no Delete event) from one that is still there, and what remembers
/// the accessor the controller recorded even if someone edits or removes the annotation later
/// (each is revoked only if Vault says its token is the pod's).
#[derive(Debug, Default)]
pub struct Tracker {
    pods: HashMap<String, Tracked>,
    /// UIDs listed so far by a re-list in progress (between `Init` and `InitDone`).
    relisted: Option<HashSet<String>>,
}

impl Tracker {
    /// Takes one watch event; returns the tokens whose pods are gone.
    pub fn event(&mut self, event: watcher::Event<PartialObjectMeta<Pod>>) -> Vec<Recorded> {
        match event {
            watcher::Event::Apply(pod) => {
                self.record(&pod);
                Vec::new()
            }
            watcher::Event::Delete(pod) => {
                self.record(&pod);
                let uid = pod.uid().unwrap_or_default();
                // A pod the kubelet stopped was marked first; one that only lost the managed
                // label comes as it was before, unmarked (as does a force-deleted one).
                let confirm = pod.metadata.deletion_timestamp.is_none();
                self.pods
                    .remove(&uid)
                    .map(|t| t.gone(confirm).collect())
                    .unwrap_or_default()
            }
            watcher::Event::Init => {
                self.relisted = Some(HashSet::new());
                Vec::new()
            }
            watcher::Event::InitApply(pod) => {
                if let Some(listed) = &mut self.relisted {
                    listed.insert(pod.uid().unwrap_or_default());
                }
                self.record(&pod);
                Vec::new()
            }
            watcher::Event::InitDone => {
                let Some(listed) = self.relisted.take() else {
                    return Vec::new();
                };
                self.pods
                    .extract_if(|uid, _| !listed.contains(uid))
                    .flat_map(|(_, tracked)| tracked.gone(true))
                    .collect()
            }
        }
    }

    /// Notes the pod's accessor annotation; a pod never seen with one is not tracked.
    fn record(&mut self, pod: &PartialObjectMeta<Pod>) {
        let accessor = pod.annotations().get(TOKEN_ACCESSOR);
        let uid = pod.uid().unwrap_or_default();
        if accessor.is_none() && !self.pods.contains_key(&uid) {
            return;
        }
        self.pods
            .entry(uid)
            .or_insert_with(|| Tracked {
                owner: Owner::of(pod),
                accessors: Vec::new(),
            })
            .note(accessor);
    }
}

/// Deletions seen while another replica leads, newest last.
#[derive(Debug, Default)]
struct Standby(VecDeque<(Instant, Recorded)>);

impl Standby {
    fn push(&mut self, at: Instant, r: Recorded) {
        if self.0.len() == STANDBY_CAP {
            self.0.pop_front();
        }
        self.0.push_back((at, r));
        self.expire(at);
    }

    fn expire(&mut self, now: Instant) {
        while self
            .0
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > STANDBY_WINDOW)
        {
            self.0.pop_front();
        }
    }

    /// The deletions of the last [`STANDBY_WINDOW`], leaving none.
    fn take(&mut self, now: Instant) -> Vec<Recorded> {
        self.expire(now);
        self.0.drain(..).map(|(_, r)| r).collect()
    }
}

/// The pod a token was delivered to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    namespace: String,
    name: String,
    /// What the token's metadata must name (`pod_uid`, from the secret_id's).
    uid: String,
}

impl Owner {
    /// The pod as the cache or the metadata watch has it.
    pub fn of(pod: &impl ResourceExt) -> Self {
        Self {
            namespace: pod.namespace().unwrap_or_default(),
            name: pod.name_any(),
            uid: pod.uid().unwrap_or_default(),
        }
    }
}

/// Why a token is revoked: said in the log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// Its pod was deleted.
    PodDeleted,
    /// A newer run of the pod's init container got a token of its own.
    Replaced,
    /// Its pod was deleted while another replica led (which has most likely revoked it already).
    DeletedBeforeLeading,
}

impl Why {
    fn what(self) -> &'static str {
        match self {
            Why::PodDeleted => "the token of a deleted pod",
            Why::Replaced => "the token of the init container's previous run",
            Why::DeletedBeforeLeading => "the token of a pod deleted while another replica led",
        }
    }
}

/// Revokes the token with this accessor if it was delivered to `owner`, with a few quick
/// attempts; after that the token's TTL ends it anyway.
///
/// The accessor comes from an annotation, which whoever may edit the pod could have set to
/// another token's: the token's own metadata (an AppRole login copies the secret_id's, where the
/// controller wrote the pod's UID) must name this pod, or it is left alone.
pub async fn revoke(
    owner: &Owner,
    accessor: &str,
    why: Why,
    vault: &Vault,
    auth: &VaultAuth,
    admin: &Admin,
) {
    let (ns, name) = (owner.namespace.as_str(), owner.name.as_str());
    for attempt in 1..=3u32 {
        // `Some(outcome)` once revoked or already gone; `None` for a token not this pod's.
        let revoked = auth
            .with_token(|token| async move {
                match vault.token_metadata_by_accessor(&token, accessor).await? {
                    None => Ok(Some(Destroyed::AlreadyGone)),
                    Some(meta) if meta.get("pod_uid") != Some(&owner.uid) => Ok(None),
                    Some(_) => vault
                        .revoke_token_by_accessor(&token, accessor)
                        .await
                        .map(Some),
                }
            })
            .await;
        match revoked {
            // The usual case: the leader of the time revoked it (the takeover's log line says how
            // many pods were checked).
            Ok(Some(Destroyed::AlreadyGone)) if why == Why::DeletedBeforeLeading => return,
            Ok(Some(outcome)) => {
                if outcome == Destroyed::Destroyed {
                    admin.metrics.tokens_revoked.inc();
                }
                info!(
                    pod.namespace = ns,
                    pod.name = name,
                    token_accessor = accessor,
                    already_gone = outcome == Destroyed::AlreadyGone,
                    "revoked {}",
                    why.what()
                );
                return;
            }
            Ok(None) => {
                warn!(
                    pod.namespace = ns,
                    pod.name = name,
                    token_accessor = accessor,
                    "not revoking {}: the accessor recorded on the pod is of a token that was not delivered to it (was the annotation edited?)",
                    why.what()
                );
                return;
            }
            Err(e) => {
                admin.metrics.vault_errors.inc();
                warn!(pod.namespace = ns, pod.name = name, token_accessor = accessor, attempt, error = %e, "revoking {} failed", why.what());
                tokio::time::sleep(Duration::from_secs(u64::from(attempt))).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use kube::core::PartialObjectMetaExt;
    use watcher::Event;

    /// A managed pod as the metadata watch shows it, with a recorded accessor or none.
    fn pod(name: &str, accessor: Option<&str>) -> PartialObjectMeta<Pod> {
        ObjectMeta {
            name: Some(name.into()),
            namespace: Some("default".into()),
            uid: Some(format!("uid-{name}")),
            annotations: accessor.map(|a| [(TOKEN_ACCESSOR.to_string(), a.to_string())].into()),
            ..ObjectMeta::default()
        }
        .into_response_partial()
    }

    /// The same pod as the watch shows it once the kubelet stopped it (marked for deletion).
    fn marked(mut pod: PartialObjectMeta<Pod>) -> PartialObjectMeta<Pod> {
        pod.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ));
        pod
    }

    fn accessors(gone: &[Recorded]) -> Vec<&str> {
        let mut v: Vec<&str> = gone.iter().map(|r| r.accessor.as_str()).collect();
        v.sort_unstable();
        v
    }

    /// A watch's first list, as the watcher emits it.
    fn list(t: &mut Tracker, pods: &[PartialObjectMeta<Pod>]) -> Vec<Recorded> {
        let mut gone = t.event(Event::Init);
        for p in pods {
            gone.extend(t.event(Event::InitApply(p.clone())));
        }
        gone.extend(t.event(Event::InitDone));
        gone
    }

    #[test]
    fn a_deleted_pod_gives_its_token_and_only_then() {
        let mut t = Tracker::default();
        assert!(list(&mut t, &[pod("a", Some("acc-a")), pod("b", None)]).is_empty());
        assert!(t.event(Event::Apply(pod("b", Some("acc-b")))).is_empty());
        let gone = t.event(Event::Delete(marked(pod("a", Some("acc-a")))));
        assert_eq!(
            gone,
            vec![Recorded {
                owner: Owner {
                    namespace: "default".into(),
                    name: "a".into(),
                    uid: "uid-a".into()
                },
                accessor: "acc-a".into(),
                confirm: false,
            }]
        );
        // A pod that never held a token gives nothing.
        assert!(t.event(Event::Delete(pod("c", None))).is_empty());
        // The last accessor seen counts when the deleted object carries none. Unmarked, the
        // pod may only have lost its managed label: the API server is asked first.
        let gone = t.event(Event::Delete(pod("b", None)));
        assert_eq!(accessors(&gone), ["acc-b"]);
        assert!(gone.iter().all(|r| r.confirm));
    }

    #[test]
    fn pods_missing_from_a_relist_are_gone_as_if_deleted() {
        let mut t = Tracker::default();
        list(
            &mut t,
            &[
                pod("stays", Some("acc-1")),
                pod("went", Some("acc-2")),
                pod("also-went", Some("acc-3")),
                pod("no-token", None),
            ],
        );
        // The watch expired (410): the re-list no longer has two of them, and no Delete came.
        let gone = list(
            &mut t,
            &[pod("stays", Some("acc-1")), pod("new", Some("acc-4"))],
        );
        assert_eq!(accessors(&gone), ["acc-2", "acc-3"]);
        assert!(
            gone.iter().all(|r| r.confirm),
            "a pod missing from a re-list may only have lost its label"
        );
        // Nothing is given twice, and the pods of the new list are tracked.
        assert!(
            list(
                &mut t,
                &[pod("stays", Some("acc-1")), pod("new", Some("acc-4"))]
            )
            .is_empty()
        );
        assert_eq!(
            accessors(&t.event(Event::Delete(pod("new", Some("acc-4"))))),
            ["acc-4"]
        );
    }

    #[test]
    fn an_edited_or_removed_annotation_does_not_make_the_recorded_token_forgotten() {
        let mut t = Tracker::default();
        list(&mut t, &[pod("a", Some("acc-a")), pod("b", Some("acc-b"))]);
        // Someone points a's annotation at another token, and removes b's.
        t.event(Event::Apply(pod("a", Some("acc-other"))));
        t.event(Event::Apply(pod("b", None)));
        assert_eq!(
            accessors(&t.event(Event::Delete(pod("a", Some("acc-other"))))),
            ["acc-a", "acc-other"],
            "both are tried; Vault's metadata tells which one is the pod's"
        );
        assert_eq!(accessors(&list(&mut t, &[])), ["acc-b"]);
        // Edits are remembered up to a bound; the first accessor seen is never pushed out.
        list(&mut t, &[pod("c", Some("acc-0"))]);
        for i in 1..10 {
            t.event(Event::Apply(pod("c", Some(&format!("acc-{i}")))));
        }
        assert_eq!(
            accessors(&t.event(Event::Delete(pod("c", None)))),
            ["acc-0", "acc-7", "acc-8", "acc-9"]
        );
    }

    #[test]
    fn a_standby_keeps_the_deletions_of_the_window_and_gives_them_once() {
        let start = Instant::now();
        let mut s = Standby::default();
        let gone = |name: &str| Recorded {
            owner: Owner {
                namespace: "default".into(),
                name: name.into(),
                uid: format!("uid-{name}"),
            },
            accessor: format!("acc-{name}"),
            confirm: false,
        };
        s.push(start, gone("old"));
        s.push(start + Duration::from_secs(10), gone("recent"));
        let taken = s.take(start + STANDBY_WINDOW + Duration::from_secs(5));
        assert_eq!(accessors(&taken), ["acc-recent"]);
        assert!(s.take(start + STANDBY_WINDOW).is_empty());
        for i in 0..STANDBY_CAP + 3 {
            s.push(start, gone(&format!("p{i}")));
        }
        let taken = s.take(start);
        assert_eq!(taken.len(), STANDBY_CAP);
        assert_eq!(taken[0].owner.name, "p3", "the oldest go first");
    }
}

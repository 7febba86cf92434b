//! The object store: every object as `serde_json::Value` (unknown fields kept verbatim), one
//! global `resourceVersion` counter, and a bounded history of changes for watches.
//!
//! Objects are immutable once stored and shared as `Arc<Value>`: the map, the history, the
//! watchers and the observers hold the same allocation, and a write replaces the `Arc` rather
//! than copying the object. Each [`Change`] also caches its encoded watch events, so N watchers
//! that see the same event in the same shape serialise it once (the real server's
//! `cachingObject`).
//!
//! ```text
//!   write (create/update/delete) ──lock──▶ objects + rv += 1 ──▶ history (last N changes)
//!                                                   └─────────▶ broadcast ──▶ watch streams
//!                                                   └─────────▶ observers (kubelet, unbounded)
//! ```
//!
//! A watch from resourceVersion `N` replays the history after `N` and then follows the broadcast;
//! if `N` is older than the history window the watch gets `410 Expired`, as from etcd compaction.
//! The lock is a `std::sync::Mutex` never held across an `.await`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::{broadcast, mpsc};

use super::util::{metadata_mut, name_of, namespace_of, rv_of};

/// What happened to an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// Created.
    Added,
    /// Updated.
    Modified,
    /// Removed.
    Deleted,
}

impl ChangeKind {
    /// The watch event `type`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Added => "ADDED",
            Self::Modified => "MODIFIED",
            Self::Deleted => "DELETED",
        }
    }
}

/// One committed change.
#[derive(Debug)]
pub struct Change {
    /// The resourceVersion it produced.
    pub rv: u64,
    /// Storage key (`pods`, `events`, ...).
    pub storage: &'static str,
    /// Namespace (`""` for cluster-scoped).
    pub namespace: String,
    /// Added, modified or deleted.
    pub kind: ChangeKind,
    /// The object after the change (for deletes: the last state, with the deletion's rv).
    pub object: Arc<Value>,
    /// The object before the change (modifications and deletions).
    pub old: Option<Arc<Value>>,
    /// Watch events already encoded for this change, shared by every watcher that wants the
    /// same shape (see [`Change::encoded`]).
    encoded: Mutex<Vec<(EncodingKey, Bytes)>>,
}

/// What an encoded watch event of a change depends on besides the change itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncodingKey {
    /// API group the object is presented in.
    pub group: &'static str,
    /// API version the object is presented in.
    pub version: &'static str,
    /// Event type as this watcher sees it (a selector can turn MODIFIED into ADDED/DELETED).
    pub event: &'static str,
}

impl Change {
    fn new(
        rv: u64,
        storage: &'static str,
        namespace: String,
        kind: ChangeKind,
        object: Arc<Value>,
        old: Option<Arc<Value>>,
    ) -> Self {
        Self {
            rv,
            storage,
            namespace,
            kind,
            object,
            old,
            encoded: Mutex::new(Vec::new()),
        }
    }

    /// The watch event for `key`: encoded by `encode` for the first watcher that asks, the same
    /// bytes for every later one. The lock is held while encoding so that concurrent watchers
    /// wait for the one encoding instead of each making their own.
    pub fn encoded(&self, key: EncodingKey, encode: impl FnOnce() -> Bytes) -> Bytes {
        let mut cache = self.encoded.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, b)) = cache.iter().find(|(k, _)| *k == key) {
            return b.clone();
        }
        let b = encode();
        cache.push((key, b.clone()));
        b
    }
}

/// Why a watch could not start from the requested resourceVersion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooOld {
    /// The requested resourceVersion.
    pub requested: u64,
    /// The oldest resourceVersion still in the history window.
    pub oldest: u64,
}

/// Where a watch starts.
#[derive(Debug)]
pub struct WatchStart {
    /// Objects that exist now (for "start at most recent" watches), with the rv of that snapshot.
    pub snapshot: Option<(Vec<Arc<Value>>, u64)>,
    /// History replay (for watches from a given rv).
    pub replay: Vec<Arc<Change>>,
    /// Subsequent changes.
    pub rx: broadcast::Receiver<Arc<Change>>,
    /// The rv the stream is known to be current at.
    pub start_rv: u64,
}

type Key = (String, String);

#[derive(Debug)]
struct Inner {
    rv: u64,
    objects: HashMap<&'static str, BTreeMap<Key, Arc<Value>>>,
    history: VecDeque<Arc<Change>>,
    history_cap: usize,
    /// Every change with rv > floor is still in `history`.
    floor: u64,
    observers: Vec<(&'static str, mpsc::UnboundedSender<Arc<Change>>)>,
}

/// The store. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Store {
    inner: Mutex<Inner>,
    tx: broadcast::Sender<Arc<Change>>,
}

/// `create` found an object of that name already.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("an object of that name exists")]
pub struct NameTaken;

/// The outcome of an update closure.
#[derive(Debug)]
pub enum Update {
    /// Store this object (a no-op if equal to the current one).
    Put(Value),
    /// Remove the object (e.g. the last finalizer went away on a terminating object).
    Delete(Value),
}

impl Store {
    /// An empty store keeping the last `history_cap` changes for watches.
    pub fn new(history_cap: usize) -> Self {
        // Watchers that fall this far behind get a 410 and re-list, like a real server whose
        // watch cache overflows; generous so that only the history window test triggers it.
        let (tx, _) = broadcast::channel(8192);
        Self {
            inner: Mutex::new(Inner {
                rv: 0,
                objects: HashMap::new(),
                history: VecDeque::new(),
                history_cap: history_cap.max(1),
                floor: 0,
                observers: Vec::new(),
            }),
            tx,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent data (every write is one insert);
        // keep serving rather than poisoning every later request.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers an observer that receives every change of `storage`, unbounded and in order.
    pub fn observe(&self, storage: &'static str) -> mpsc::UnboundedReceiver<Arc<Change>> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.lock().observers.push((storage, tx));
        rx
    }

    /// The current global resourceVersion.
    pub fn current_rv(&self) -> u64 {
        self.lock().rv
    }

    /// One object (shared with the store: clone it to change it).
    pub fn get(&self, storage: &str, namespace: &str, name: &str) -> Option<Arc<Value>> {
        self.lock()
            .objects
            .get(storage)
            .and_then(|m| m.get(&(namespace.to_string(), name.to_string())))
            .cloned()
    }

    /// All objects of a storage (optionally of one namespace), sorted by namespace and name,
    /// with the rv of this snapshot.
    pub fn list(&self, storage: &str, namespace: Option<&str>) -> (Vec<Arc<Value>>, u64) {
        let inner = self.lock();
        (Self::list_locked(&inner, storage, namespace), inner.rv)
    }

    fn list_locked(inner: &Inner, storage: &str, namespace: Option<&str>) -> Vec<Arc<Value>> {
        inner
            .objects
            .get(storage)
            .map(|m| {
                m.iter()
                    .filter(|((ns, _), _)| namespace.is_none_or(|want| ns == want))
                    .map(|(_, v)| v.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn commit(inner: &mut Inner, tx: &broadcast::Sender<Arc<Change>>, change: Change) {
        let change = Arc::new(change);
        inner.history.push_back(change.clone());
        while inner.history.len() > inner.history_cap {
            if let Some(old) = inner.history.pop_front() {
                inner.floor = old.rv;
            }
        }
        inner.observers.retain(|(storage, otx)| {
            if *storage == change.storage {
                otx.send(change.clone()).is_ok()
            } else {
                true
            }
        });
        // No receivers is fine (nobody watching).
        let _ = tx.send(change);
    }

    fn set_rv(obj: &mut Value, rv: u64) {
        Self::set_rv_str(obj, rv.to_string());
    }

    fn set_rv_str(obj: &mut Value, rv: String) {
        metadata_mut(obj).insert("resourceVersion".into(), Value::String(rv));
    }

    /// Inserts a new object (its rv is assigned here).
    pub fn create(
        &self,
        storage: &'static str,
        mut obj: Value,
        dry_run: bool,
    ) -> Result<Arc<Value>, NameTaken> {
        let mut inner = self.lock();
        let key = (namespace_of(&obj).to_string(), name_of(&obj).to_string());
        if inner
            .objects
            .get(storage)
            .is_some_and(|m| m.contains_key(&key))
        {
            return Err(NameTaken);
        }
        if dry_run {
            return Ok(Arc::new(obj));
        }
        inner.rv += 1;
        let rv = inner.rv;
        Self::set_rv(&mut obj, rv);
        let obj = Arc::new(obj);
        let namespace = key.0.clone();
        inner
            .objects
            .entry(storage)
            .or_default()
            .insert(key, obj.clone());
        Self::commit(
            &mut inner,
            &self.tx,
            Change::new(rv, storage, namespace, ChangeKind::Added, obj.clone(), None),
        );
        Ok(obj)
    }

    /// Read-modify-write of one object under the lock. `f` gets the current object and decides.
    /// Returns `Ok(None)` if the object does not exist, otherwise the stored (or removed) object.
    pub fn update<E>(
        &self,
        storage: &'static str,
        namespace: &str,
        name: &str,
        dry_run: bool,
        f: impl FnOnce(&Value) -> Result<Update, E>,
    ) -> Result<Option<(Arc<Value>, ChangeKind)>, E> {
        let mut inner = self.lock();
        let key = (namespace.to_string(), name.to_string());
        // Another reference to the stored object, not a copy.
        let Some(current) = inner
            .objects
            .get(storage)
            .and_then(|m| m.get(&key))
            .cloned()
        else {
            return Ok(None);
        };
        match f(&current)? {
            Update::Put(mut new) => {
                let current_rv = rv_of(&current).to_string();
                Self::set_rv_str(&mut new, current_rv);
                if new == *current {
                    return Ok(Some((current, ChangeKind::Modified)));
                }
                if dry_run {
                    return Ok(Some((Arc::new(new), ChangeKind::Modified)));
                }
                inner.rv += 1;
                let rv = inner.rv;
                Self::set_rv(&mut new, rv);
                let new = Arc::new(new);
                let namespace = key.0.clone();
                inner
                    .objects
                    .entry(storage)
                    .or_default()
                    .insert(key, new.clone());
                Self::commit(
                    &mut inner,
                    &self.tx,
                    Change::new(
                        rv,
                        storage,
                        namespace,
                        ChangeKind::Modified,
                        new.clone(),
                        Some(current),
                    ),
                );
                Ok(Some((new, ChangeKind::Modified)))
            }
            Update::Delete(last) => {
                if dry_run {
                    return Ok(Some((Arc::new(last), ChangeKind::Deleted)));
                }
                Ok(
                    Self::remove_locked(&mut inner, &self.tx, storage, key, last)
                        .map(|v| (v, ChangeKind::Deleted)),
                )
            }
        }
    }

    fn remove_locked(
        inner: &mut Inner,
        tx: &broadcast::Sender<Arc<Change>>,
        storage: &'static str,
        key: Key,
        mut last: Value,
    ) -> Option<Arc<Value>> {
        let old = inner.objects.get_mut(storage)?.remove(&key)?;
        inner.rv += 1;
        let rv = inner.rv;
        Self::set_rv(&mut last, rv);
        let last = Arc::new(last);
        Self::commit(
            inner,
            tx,
            Change::new(
                rv,
                storage,
                key.0,
                ChangeKind::Deleted,
                last.clone(),
                Some(old),
            ),
        );
        Some(last)
    }

    /// Removes an object if it still exists (and, if `uid` is given, is still that object).
    pub fn delete(
        &self,
        storage: &'static str,
        namespace: &str,
        name: &str,
        uid: Option<&str>,
    ) -> Option<Arc<Value>> {
        let mut inner = self.lock();
        let key = (namespace.to_string(), name.to_string());
        let current = inner.objects.get(storage)?.get(&key)?;
        if let Some(uid) = uid
            && super::util::uid_of(current) != uid
        {
            return None;
        }
        // The last state is the current object with the deletion's rv: one copy, because the
        // stored `Arc` becomes the change's `old`.
        let current = Value::clone(current);
        Self::remove_locked(&mut inner, &self.tx, storage, key, current)
    }

    /// Starts a watch. `from`: `None` = from now with the current objects as a snapshot;
    /// `Some(n)` = replay every change after `n`.
    pub fn watch(&self, storage: &str, from: Option<u64>) -> Result<WatchStart, TooOld> {
        let inner = self.lock();
        let rx = self.tx.subscribe();
        match from {
            None => {
                let items = Self::list_locked(&inner, storage, None);
                Ok(WatchStart {
                    snapshot: Some((items, inner.rv)),
                    replay: Vec::new(),
                    rx,
                    start_rv: inner.rv,
                })
            }
            Some(n) => {
                if n < inner.floor {
                    return Err(TooOld {
                        requested: n,
                        oldest: inner.floor + 1,
                    });
                }
                let replay = inner
                    .history
                    .iter()
                    .filter(|c| c.rv > n && c.storage == storage)
                    .cloned()
                    .collect();
                Ok(WatchStart {
                    snapshot: None,
                    replay,
                    rx,
                    // The replay covers every change up to now, whatever its storage.
                    start_rv: n.max(inner.rv),
                })
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (house rule)
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(ns: &str, name: &str) -> Value {
        json!({"metadata": {"name": name, "namespace": ns}})
    }

    #[test]
    fn writes_bump_one_global_counter() {
        let s = Store::new(10);
        let a = s.create("pods", obj("d", "a"), false).unwrap();
        let b = s.create("leases", obj("d", "b"), false).unwrap();
        assert_eq!(a["metadata"]["resourceVersion"], "1");
        assert_eq!(b["metadata"]["resourceVersion"], "2");
        assert!(s.create("pods", obj("d", "a"), false).is_err());
        let (u, _) = s
            .update::<()>("pods", "d", "a", false, |cur| {
                let mut n = cur.clone();
                n["spec"] = json!({"x": 1});
                Ok(Update::Put(n))
            })
            .unwrap()
            .unwrap();
        assert_eq!(u["metadata"]["resourceVersion"], "3");
        // A no-op update does not bump the counter.
        let (same, _) = s
            .update::<()>("pods", "d", "a", false, |cur| Ok(Update::Put(cur.clone())))
            .unwrap()
            .unwrap();
        assert_eq!(same["metadata"]["resourceVersion"], "3");
        let d = s.delete("pods", "d", "a", None).unwrap();
        assert_eq!(d["metadata"]["resourceVersion"], "4");
        assert_eq!(s.current_rv(), 4);
    }

    #[test]
    fn watchers_share_a_change_and_its_encoding_per_shape() {
        let s = Store::new(10);
        let mut w = s.watch("pods", None).unwrap();
        let created = s.create("pods", obj("d", "a"), false).unwrap();
        let c = w.rx.try_recv().unwrap();
        // The history, the broadcast and the caller hold one object, not copies.
        assert!(Arc::ptr_eq(&c.object, &created));
        let key = |event| EncodingKey {
            group: "",
            version: "v1",
            event,
        };
        let mut made = 0;
        let a = c.encoded(key("ADDED"), || {
            made += 1;
            Bytes::from_static(b"added")
        });
        let b = c.encoded(key("ADDED"), || {
            made += 1;
            Bytes::from_static(b"other")
        });
        assert_eq!(
            (a, b, made),
            (
                Bytes::from_static(b"added"),
                Bytes::from_static(b"added"),
                1
            )
        );
        // Another event type (a selector turned it into something else) is its own encoding.
        let d = c.encoded(key("DELETED"), || Bytes::from_static(b"deleted"));
        assert_eq!(d, Bytes::from_static(b"deleted"));
    }

    #[test]
    fn watches_older_than_the_window_are_too_old() {
        let s = Store::new(2);
        for i in 0..5 {
            s.create("pods", obj("d", &format!("p{i}")), false).unwrap();
        }
        // History holds rv 4 and 5: rv 3 and later can be served, 2 cannot.
        assert!(s.watch("pods", Some(3)).is_ok());
        let e = s.watch("pods", Some(2)).unwrap_err();
        assert_eq!(
            e,
            TooOld {
                requested: 2,
                oldest: 4
            }
        );
        let w = s.watch("pods", Some(3)).unwrap();
        assert_eq!(w.replay.len(), 2);
    }
}

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
//!                                                   ├─────────▶ head rv ──▶ watch streams read
//!                                                   │                       the history after
//!                                                   │                       their own rv
//!                                                   └─────────▶ observers (kubelet, unbounded)
//! ```
//!
//! The history is the watch streams' only buffer, as the real server's watch cache is: a stream
//! is woken with the new head rv and reads the changes after its own. A watch from
//! resourceVersion `N`, or a stream that fell that far behind, gets `410 Expired` once `N` is
//! older than the history window, as from etcd compaction. A change stays as committed until
//! every live stream has read it (each stream's [`Cursor`]), or until [`MAX_HOT`] newer changes
//! came; after that it is kept as JSON, parsed again in the rare case a new watch replays it
//! (a `Value` pod takes about seven times its JSON's size, and a window of ten thousand of them
//! made the store's memory grow by half a megabyte per pod).
//! The lock is a `std::sync::Mutex` never held across an `.await`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::{mpsc, watch};

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
    /// The object's JSON, when a watch event encoded it as stored (a slice of that event).
    verbatim: std::sync::OnceLock<Bytes>,
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
            verbatim: std::sync::OnceLock::new(),
        }
    }

    fn object_key(&self) -> ObjectKey {
        (
            self.storage,
            self.namespace.clone(),
            name_of(&self.object).to_owned(),
        )
    }

    /// Records that `event`, a watch event of type `kind`, holds this change's object exactly as
    /// stored, so that keeping the change as JSON later costs no encoding.
    pub fn encoded_as_stored(&self, kind: &str, event: &Bytes) {
        let prefix = format!(r#"{{"type":"{kind}","object":"#);
        if event.starts_with(prefix.as_bytes()) && event.ends_with(b"}\n") {
            let _ = self
                .verbatim
                .set(event.slice(prefix.len()..event.len() - 2));
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
    /// The head resourceVersion after each commit: read the changes since with [`Store::since`].
    pub rx: watch::Receiver<u64>,
    /// The rv the stream is known to be current at.
    pub start_rv: u64,
    /// How far this stream has read: advance it as changes are sent.
    pub cursor: Cursor,
}

/// How far a live watch stream has read the history. Dropping it ends the stream's claim.
#[derive(Debug)]
pub struct Cursor(Arc<AtomicU64>);

impl Cursor {
    /// Everything up to `rv` has been read.
    pub fn advance(&self, rv: u64) {
        self.0.fetch_max(rv, Ordering::Relaxed);
    }
}

type Key = (String, String);

/// Storage, namespace and name.
type ObjectKey = (&'static str, String, String);

#[derive(Debug)]
struct Inner {
    rv: u64,
    objects: HashMap<&'static str, BTreeMap<Key, Arc<Value>>>,
    history: VecDeque<Past>,
    history_cap: usize,
    /// Every change with rv > floor is still in `history`.
    floor: u64,
    /// The first `cooled` changes of `history` are kept as JSON.
    cooled: usize,
    /// The latest JSON kept of each object (see [`Past::cool`]).
    last_json: HashMap<ObjectKey, (u64, Bytes)>,
    /// Live watch streams' cursors.
    cursors: Vec<Weak<AtomicU64>>,
    observers: Vec<(&'static str, mpsc::UnboundedSender<Arc<Change>>)>,
}

/// The store. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Store {
    inner: Mutex<Inner>,
    head: watch::Sender<u64>,
}

/// At most this many of the newest changes are kept as committed (objects shared, encodings
/// cached), however far behind a live watch stream is.
pub const MAX_HOT: usize = 4096;

/// A change in the history.
#[derive(Debug)]
enum Past {
    Hot(Arc<Change>),
    /// An older change as JSON (see the module docs).
    Cold {
        rv: u64,
        storage: &'static str,
        namespace: String,
        kind: ChangeKind,
        object: Bytes,
        old: Option<Bytes>,
    },
}

impl Past {
    fn rv(&self) -> u64 {
        match self {
            Past::Hot(c) => c.rv,
            Past::Cold { rv, .. } => *rv,
        }
    }

    fn storage(&self) -> &'static str {
        match self {
            Past::Hot(c) => c.storage,
            Past::Cold { storage, .. } => storage,
        }
    }

    /// Keeps the change as JSON. `last` holds each object's latest JSON kept so: the object
    /// before this change is usually there already (same resourceVersion), and is shared.
    fn cool(&mut self, last: &mut HashMap<ObjectKey, (u64, Bytes)>) {
        let Past::Hot(c) = self else { return };
        let json = |v: &Value| Bytes::from(serde_json::to_vec(v).unwrap_or_default());
        let key = c.object_key();
        let old = c.old.as_deref().map(|o| match last.get(&key) {
            Some((rv, b)) if rv_of(o).parse::<u64>() == Ok(*rv) => b.clone(),
            _ => json(o),
        });
        let object = c.verbatim.get().cloned().unwrap_or_else(|| json(&c.object));
        if c.kind == ChangeKind::Deleted {
            last.remove(&key);
        } else {
            last.insert(key, (c.rv, object.clone()));
        }
        *self = Past::Cold {
            rv: c.rv,
            storage: c.storage,
            namespace: c.namespace.clone(),
            kind: c.kind,
            object,
            old,
        };
    }

    fn change(&self) -> Arc<Change> {
        match self {
            Past::Hot(c) => c.clone(),
            Past::Cold {
                rv,
                storage,
                namespace,
                kind,
                object,
                old,
            } => {
                let parse = |b: &Bytes| Arc::new(serde_json::from_slice(b).unwrap_or_default());
                Arc::new(Change::new(
                    *rv,
                    storage,
                    namespace.clone(),
                    *kind,
                    parse(object),
                    old.as_ref().map(parse),
                ))
            }
        }
    }
}

/// `a == b`, `status` first: a write usually changes only that, and the rest of an object
/// (metadata, spec) is most of its size.
fn same_object(a: &Value, b: &Value) -> bool {
    a.get("status") == b.get("status") && a == b
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
        Self {
            inner: Mutex::new(Inner {
                rv: 0,
                objects: HashMap::new(),
                history: VecDeque::new(),
                history_cap: history_cap.max(1),
                floor: 0,
                cooled: 0,
                last_json: HashMap::new(),
                cursors: Vec::new(),
                observers: Vec::new(),
            }),
            head: watch::Sender::new(0),
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

    fn commit(inner: &mut Inner, head: &watch::Sender<u64>, change: Change) {
        let change = Arc::new(change);
        let rv = change.rv;
        inner.history.push_back(Past::Hot(change.clone()));
        while inner.history.len() > inner.history_cap {
            if let Some(old) = inner.history.pop_front() {
                inner.floor = old.rv();
                inner.cooled = inner.cooled.saturating_sub(1);
                // A deletion that leaves before it was kept as JSON ends its object's entry.
                if let Past::Hot(c) = &old
                    && c.kind == ChangeKind::Deleted
                {
                    inner.last_json.remove(&c.object_key());
                }
            }
        }
        Self::cool_read(inner);
        inner.observers.retain(|(storage, otx)| {
            if *storage == change.storage {
                otx.send(change.clone()).is_ok()
            } else {
                true
            }
        });
        // No receivers is fine (nobody watching).
        head.send_replace(rv);
    }

    /// Keeps as JSON the changes every live stream has read, and those beyond [`MAX_HOT`].
    fn cool_read(inner: &mut Inner) {
        inner.cursors.retain(|c| c.strong_count() > 0);
        let read_by_all = inner
            .cursors
            .iter()
            .filter_map(Weak::upgrade)
            .map(|c| c.load(Ordering::Relaxed))
            .min()
            .unwrap_or(u64::MAX);
        let len = inner.history.len();
        while let Some(past) = inner.history.get_mut(inner.cooled) {
            if len - inner.cooled <= MAX_HOT && past.rv() > read_by_all {
                break;
            }
            past.cool(&mut inner.last_json);
            inner.cooled += 1;
        }
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
            &self.head,
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
                if same_object(&new, &current) {
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
                    &self.head,
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
                    Self::remove_locked(&mut inner, &self.head, storage, key, last)
                        .map(|v| (v, ChangeKind::Deleted)),
                )
            }
        }
    }

    fn remove_locked(
        inner: &mut Inner,
        head: &watch::Sender<u64>,
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
            head,
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
        Self::remove_locked(&mut inner, &self.head, storage, key, current)
    }

    /// The changes of `storage` after resourceVersion `after`, oldest first, and the head
    /// resourceVersion they bring a stream up to; `TooOld` once `after` left the history.
    pub fn since(&self, storage: &str, after: u64) -> Result<(Vec<Arc<Change>>, u64), TooOld> {
        let inner = self.lock();
        Ok((Self::since_locked(&inner, storage, after)?, inner.rv))
    }

    fn since_locked(inner: &Inner, storage: &str, after: u64) -> Result<Vec<Arc<Change>>, TooOld> {
        if after < inner.floor {
            return Err(TooOld {
                requested: after,
                oldest: inner.floor + 1,
            });
        }
        // resourceVersions grow along the history.
        let first = inner.history.partition_point(|p| p.rv() <= after);
        Ok(inner
            .history
            .range(first..)
            .filter(|p| p.storage() == storage)
            .map(Past::change)
            .collect())
    }

    /// Starts a watch. `from`: `None` = from now with the current objects as a snapshot;
    /// `Some(n)` = replay every change after `n`.
    pub fn watch(&self, storage: &str, from: Option<u64>) -> Result<WatchStart, TooOld> {
        let mut inner = self.lock();
        let rx = self.head.subscribe();
        let (snapshot, replay) = match from {
            None => (
                Some((Self::list_locked(&inner, storage, None), inner.rv)),
                Vec::new(),
            ),
            Some(n) => (None, Self::since_locked(&inner, storage, n)?),
        };
        // The snapshot or the replay covers every change up to now, whatever its storage.
        let start_rv = from.unwrap_or(0).max(inner.rv);
        let cursor = Arc::new(AtomicU64::new(start_rv));
        inner.cursors.push(Arc::downgrade(&cursor));
        Ok(WatchStart {
            snapshot,
            replay,
            rx,
            start_rv,
            cursor: Cursor(cursor),
        })
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
        // A status-only change is a change.
        let (st, _) = s
            .update::<()>("pods", "d", "a", false, |cur| {
                let mut n = cur.clone();
                n["status"] = json!({"phase": "Running"});
                Ok(Update::Put(n))
            })
            .unwrap()
            .unwrap();
        assert_eq!(st["metadata"]["resourceVersion"], "4");
        let d = s.delete("pods", "d", "a", None).unwrap();
        assert_eq!(d["metadata"]["resourceVersion"], "5");
        assert_eq!(s.current_rv(), 5);
    }

    #[test]
    fn watchers_share_a_change_and_its_encoding_per_shape() {
        let s = Store::new(10);
        let mut w = s.watch("pods", None).unwrap();
        let created = s.create("pods", obj("d", "a"), false).unwrap();
        assert!(w.rx.has_changed().unwrap());
        assert_eq!(*w.rx.borrow_and_update(), 1);
        let (changes, head) = s.since("pods", w.start_rv).unwrap();
        assert_eq!((changes.len(), head), (1, 1));
        let c = &changes[0];
        // The store, the history and the caller hold one object, not copies.
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
        // A stream that fell behind the window gets the same answer.
        assert_eq!(
            s.since("pods", 1).unwrap_err(),
            TooOld {
                requested: 1,
                oldest: 4
            }
        );
    }

    #[test]
    fn changes_every_stream_read_are_kept_as_json_and_replay_the_same() {
        let n = 50u64;
        let s = Store::new(1000);
        s.create("leases", obj("d", "l"), false).unwrap();
        s.create("pods", obj("d", "a"), false).unwrap();
        // A live stream that has read up to rv 2 keeps what came after it as committed.
        let w = s.watch("pods", None).unwrap();
        assert_eq!(w.start_rv, 2);
        for i in 0..n {
            s.update::<()>("pods", "d", "a", false, |cur| {
                let mut p = cur.clone();
                p["spec"] = json!({"step": i});
                Ok(Update::Put(p))
            })
            .unwrap();
        }
        let hot = |s: &Store| {
            s.lock()
                .history
                .iter()
                .filter(|p| matches!(p, Past::Hot(_)))
                .count()
        };
        assert_eq!(hot(&s), n as usize);
        // Once it has read them, the next commit keeps them as JSON; so does its end.
        w.cursor.advance(n + 2);
        s.delete("pods", "d", "a", None).unwrap();
        assert_eq!(hot(&s), 1);
        drop(w);
        s.create("pods", obj("d", "b"), false).unwrap();
        assert_eq!(hot(&s), 0);
        // A watch from rv 1 replays the create, n updates and the delete from their JSON, in
        // order, each with the object it committed and the one before it.
        let (changes, head) = s.since("pods", 1).unwrap();
        assert_eq!(head, n + 4);
        assert_eq!(changes.len() as u64, n + 3);
        assert_eq!(changes[0].kind, ChangeKind::Added);
        assert!(changes[0].old.is_none());
        for (i, c) in changes.iter().enumerate().skip(1).take(n as usize) {
            assert_eq!(c.kind, ChangeKind::Modified);
            assert_eq!(c.rv, i as u64 + 2);
            assert_eq!(c.object["spec"]["step"], json!(i - 1));
            assert_eq!(
                c.object["metadata"]["resourceVersion"],
                json!(c.rv.to_string())
            );
            let before = c.old.as_deref().unwrap();
            assert_eq!(
                before["metadata"]["resourceVersion"],
                json!((c.rv - 1).to_string())
            );
        }
        let deleted = &changes[n as usize + 1];
        assert_eq!(deleted.kind, ChangeKind::Deleted);
        assert_eq!(deleted.object["spec"]["step"], json!(n - 1));
        assert_eq!(changes[n as usize + 2].object["metadata"]["name"], "b");
        // Each update's object before it is the JSON kept for the update before: one copy.
        let inner = s.lock();
        let json = |i: usize| match &inner.history[i] {
            Past::Cold { object, old, .. } => (object.as_ptr(), old.as_ref().map(|b| b.as_ptr())),
            Past::Hot(_) => panic!("change {i} is still as committed"),
        };
        for i in 2..n as usize + 2 {
            assert_eq!(json(i).1, Some(json(i - 1).0), "change {i}");
        }
    }

    #[test]
    fn an_event_that_encoded_the_object_as_stored_is_the_json_kept() {
        let s = Store::new(10);
        let w = s.watch("pods", None).unwrap();
        s.create("pods", obj("d", "a"), false).unwrap();
        let (changes, _) = s.since("pods", 0).unwrap();
        let c = &changes[0];
        let event = Bytes::from(format!(
            "{{\"type\":\"ADDED\",\"object\":{}}}\n",
            serde_json::to_string(&*c.object).unwrap()
        ));
        c.encoded_as_stored("ADDED", &event);
        // Something else is not taken for the object.
        c.encoded_as_stored("MODIFIED", &Bytes::from_static(b"{}\n"));
        drop(w);
        s.create("pods", obj("d", "b"), false).unwrap();
        let inner = s.lock();
        let Past::Cold { object, .. } = &inner.history[0] else {
            panic!("kept as committed")
        };
        assert_eq!(
            serde_json::from_slice::<Value>(object).unwrap(),
            *changes[0].object
        );
        let inside = event.as_ptr_range();
        assert!(
            inside.contains(&object.as_ptr()),
            "a slice of the event, not a copy"
        );
    }

    #[test]
    fn an_object_deleted_before_it_was_kept_as_json_leaves_no_entry() {
        let s = Store::new(2);
        let w = s.watch("pods", None).unwrap();
        s.create("pods", obj("d", "a"), false).unwrap();
        w.cursor.advance(1);
        s.delete("pods", "d", "a", None).unwrap();
        let a = ("pods", "d".to_owned(), "a".to_owned());
        assert!(s.lock().last_json.contains_key(&a));
        // The deletion (still as committed: the stream has not read it) leaves the window.
        s.create("pods", obj("d", "b"), false).unwrap();
        s.create("pods", obj("d", "c"), false).unwrap();
        let inner = s.lock();
        assert_eq!(inner.floor, 2);
        assert!(!inner.last_json.contains_key(&a));
    }

    #[test]
    fn a_stream_far_behind_does_not_keep_every_change_as_committed() {
        let s = Store::new(2 * MAX_HOT);
        let _w = s.watch("pods", None).unwrap();
        for i in 0..MAX_HOT + 10 {
            s.create("pods", obj("d", &format!("p{i}")), false).unwrap();
        }
        let inner = s.lock();
        assert_eq!(inner.history.len() - inner.cooled, MAX_HOT);
        assert!(matches!(inner.history[9], Past::Cold { .. }));
        assert!(matches!(inner.history[10], Past::Hot(_)));
    }
}

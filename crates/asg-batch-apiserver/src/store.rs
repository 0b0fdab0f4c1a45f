//! The object store: every object keyed by storage key (`group/plural`), namespace and
//! name; one global, monotonically increasing resourceVersion; a bounded history of
//! change events for watches; optional persistence through `redb`.
//!
//! Objects are kept as their compact JSON ([`Packed`]), not as parsed `serde_json::Value`s:
//! a parsed object costs about ten times its JSON (every JSON object is a B-tree node of
//! eleven slots), which made 10,000 finished BatchJobs and a history of 10,000 changes
//! hundreds of MiB. Readers parse what they read; a change is parsed once for all the
//! watches it goes to ([`Live`]). The history shares the bytes of the objects (an event's
//! previous object is the earlier event's object) and is bounded by count and by bytes.
//!
//! All writes go through [`Store::write`], which runs a closure under one lock, then
//! persists, records and broadcasts the events it produced in order — so watchers see
//! changes in resourceVersion order without gaps.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use bytes::Bytes;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde_json::Value;
use tokio::sync::broadcast;

use super::error::{ApiError, ApiResult};

/// A stored object, parsed (shared, immutable).
pub type Obj = Arc<Value>;

/// Default bound of the watch history in bytes (see [`Store::with_history_bytes`]).
pub const DEFAULT_HISTORY_BYTES: usize = 64 << 20;

/// redb's page cache: the store reads the database only when it opens (every object is
/// kept in memory), so redb's default of 1 GiB would only hold copies of those pages.
const DB_CACHE_BYTES: usize = 8 << 20;

/// How far a persistent store's resourceVersion counter jumps when it is opened: more than
/// the writes a crash can lose (those of the last second before it; the server writes a
/// few thousand a second), so that none of their numbers is handed out again.
pub const RESTART_GAP: u64 = 1 << 20;

const OBJECTS: TableDefinition<&str, &[u8]> = TableDefinition::new("objects");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// An object as the store keeps it: its compact JSON (cheap to clone: shared bytes).
#[derive(Debug, Clone)]
pub struct Packed(Bytes);

impl Packed {
    /// Serialise an object.
    pub fn pack(v: &Value) -> Packed {
        match serde_json::to_vec(v) {
            // Without the spare capacity the growing buffer left (up to half of it).
            Ok(b) => Packed(Bytes::from(b.into_boxed_slice())),
            Err(e) => {
                // A `Value` always serialises (its keys are strings); kept total anyway.
                tracing::error!(error = %e, "an object did not serialise");
                Packed(Bytes::from_static(b"null"))
            }
        }
    }

    /// Parse the object.
    pub fn unpack(&self) -> Obj {
        match serde_json::from_slice(&self.0) {
            Ok(v) => Arc::new(v),
            Err(e) => {
                // Only the store makes these bytes, from a `Value` (or from the data
                // store, checked when loaded).
                tracing::error!(error = %e, "a stored object did not parse");
                Arc::new(Value::Null)
            }
        }
    }

    /// The JSON.
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }

    /// The JSON, as shared bytes.
    pub fn into_bytes(self) -> Bytes {
        self.0
    }

    /// Length of the JSON in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the JSON is empty (never, for a stored object).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// What the garbage collector needs of an object without parsing it.
#[derive(Debug, Default)]
pub struct GcMeta {
    /// `metadata.uid`.
    pub uid: String,
    /// `metadata.namespace` (`""` for cluster-scoped).
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// The uids of `metadata.ownerReferences`.
    pub owners: Vec<String>,
    /// Whether `metadata.deletionTimestamp` is set.
    pub deleting: bool,
    /// `metadata.finalizers`.
    pub finalizers: Vec<String>,
}

impl GcMeta {
    fn of(v: &Value) -> GcMeta {
        use super::meta::{finalizers_of, is_deleting, name_of, namespace_of, uid_of};
        GcMeta {
            uid: uid_of(v).to_string(),
            namespace: namespace_of(v).to_string(),
            name: name_of(v).to_string(),
            owners: super::meta::meta_field(v, "ownerReferences")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|r| r.get("uid").and_then(Value::as_str).unwrap_or_default())
                .map(str::to_string)
                .collect(),
            deleting: is_deleting(v),
            finalizers: finalizers_of(v),
        }
    }

    /// Whether it has the finalizer `f`.
    pub fn has_finalizer(&self, f: &str) -> bool {
        self.finalizers.iter().any(|x| x == f)
    }
}

/// One stored object: its JSON and its garbage-collection metadata.
#[derive(Debug, Clone)]
pub struct Stored {
    /// The object.
    pub object: Packed,
    /// What the garbage collector reads.
    pub gc: Arc<GcMeta>,
    /// The object parsed, with its resourceVersion, while it is among the
    /// [`HOT_OBJECTS`] last written (the next write of a job usually follows soon).
    hot: Option<(u64, Obj)>,
}

impl Stored {
    fn of(v: &Value) -> Stored {
        Stored {
            object: Packed::pack(v),
            gc: Arc::new(GcMeta::of(v)),
            hot: None,
        }
    }

    /// The object parsed: the kept copy when there is one.
    fn parsed(&self) -> Obj {
        match &self.hot {
            Some((_, o)) => o.clone(),
            None => self.object.unpack(),
        }
    }
}

/// How many of the last written objects the store keeps parsed besides their JSON, so
/// that their next write reads them without parsing (and a watch's previous object is
/// the same value as the last change's object, freed once). A finished BatchJob parsed
/// is about 40 KiB (512 of them added 20 MiB to dev's RSS at 10,000 jobs, for no CPU
/// gain measurable there): 128 of them about 5 MiB.
const HOT_OBJECTS: usize = 128;

/// Type of a change event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// Created.
    Added,
    /// Changed.
    Modified,
    /// Removed.
    Deleted,
}

impl EventType {
    /// The watch event type string.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change to the store, as the history keeps it.
#[derive(Debug)]
pub struct Event {
    /// resourceVersion of the change.
    pub rv: u64,
    /// Storage key of the resource.
    pub key: String,
    /// Namespace (`""` for cluster-scoped).
    pub namespace: String,
    /// Name of the object.
    pub name: String,
    /// Event type.
    pub kind: EventType,
    /// The object after the change (the last state for deletions, with the new rv).
    pub object: Packed,
    /// The object before the change (for MODIFIED), so selector watches can turn a
    /// change out of (into) the selection into DELETED (ADDED).
    pub prev: Option<Packed>,
}

impl Event {
    /// Bytes this event holds (counted against the history's byte bound).
    fn size(&self) -> usize {
        self.object.len() + self.prev.as_ref().map_or(0, Packed::len)
    }
}

/// A change as it is broadcast to the running watches: parsed once for all of them.
#[derive(Debug)]
pub struct Live {
    /// The change.
    pub event: Arc<Event>,
    /// The object after the change, parsed.
    pub object: Obj,
    prev: OnceLock<Option<Obj>>,
    line: OnceLock<Bytes>,
}

/// A watch event's line, `{"type":KIND,"object":OBJECT}` and a newline, from an object
/// already JSON.
pub fn watch_line(kind: &str, object: &[u8]) -> Bytes {
    let mut line = Vec::with_capacity(object.len() + 32);
    line.extend_from_slice(b"{\"type\":\"");
    line.extend_from_slice(kind.as_bytes());
    line.extend_from_slice(b"\",\"object\":");
    line.extend_from_slice(object);
    line.extend_from_slice(b"}\n");
    Bytes::from(line)
}

impl Live {
    /// The change's watch line as stored (its own type, its object's stored JSON), built
    /// once and shared by every watch that sends it so.
    pub fn line(&self) -> Bytes {
        self.line
            .get_or_init(|| watch_line(self.event.kind.as_str(), self.event.object.bytes()))
            .clone()
    }

    /// The object before the change, parsed on first use (only selector watches need it).
    pub fn prev(&self) -> Option<Obj> {
        self.prev
            .get_or_init(|| self.event.prev.as_ref().map(Packed::unpack))
            .clone()
    }
}

/// History replay plus the live event receiver of a watch.
pub type WatchStart = (Vec<Arc<Event>>, broadcast::Receiver<Arc<Live>>);

/// Errors opening the persistent store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened or read.
    #[error("data store {path}: {source}")]
    Db {
        /// Path of the database file.
        path: String,
        /// Underlying error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// The mutable state, accessible inside [`Store::write`] / [`Store::read`].
#[derive(Debug, Default)]
pub struct State {
    rv: u64,
    objects: HashMap<String, BTreeMap<(String, String), Stored>>,
    history: VecDeque<Arc<Event>>,
    /// Sum of [`Event::size`] over `history`.
    history_bytes: usize,
    /// A watch may start at any rv >= this (all later events are retained).
    oldest_rv: u64,
    history_limit: usize,
    history_byte_limit: usize,
    /// Changes made by the running write: the event, its object parsed and, when the
    /// writer had it, the previous object parsed.
    pending: Vec<(Arc<Event>, Obj, Option<Obj>)>,
    /// Set by changes the garbage collector must look at (removals, objects with
    /// ownerReferences or a deletionTimestamp, namespaces and CRDs).
    gc_dirty: bool,
    /// The last writes whose object may still be kept parsed ([`Stored::hot`]), oldest
    /// first; at most [`HOT_OBJECTS`].
    hot: VecDeque<Arc<Event>>,
    /// A persistent store's rows changed since its last flush ([`Store::flush`]), by row
    /// key: the object as stored (shared with the store), `None` when deleted.
    dirty: HashMap<String, Option<Packed>>,
}

impl State {
    /// Current (latest) resourceVersion.
    pub fn rv(&self) -> u64 {
        self.rv
    }
    /// Oldest resourceVersion a watch can start from.
    pub fn oldest_rv(&self) -> u64 {
        self.oldest_rv
    }
    /// Number of events in the watch history.
    pub fn history_len(&self) -> usize {
        self.history.len()
    }
    /// Get one object.
    pub fn get(&self, key: &str, ns: &str, name: &str) -> Option<Obj> {
        self.get_stored(key, ns, name).map(Stored::parsed)
    }
    /// One object's JSON, unparsed.
    pub fn packed(&self, key: &str, ns: &str, name: &str) -> Option<Packed> {
        self.get_stored(key, ns, name).map(|s| s.object.clone())
    }
    /// Whether an object exists.
    pub fn contains(&self, key: &str, ns: &str, name: &str) -> bool {
        self.get_stored(key, ns, name).is_some()
    }
    fn get_stored(&self, key: &str, ns: &str, name: &str) -> Option<&Stored> {
        self.objects
            .get(key)
            .and_then(|m| m.get(&(ns.to_string(), name.to_string())))
    }
    /// Objects of a resource, optionally in one namespace, in (namespace, name) order,
    /// starting strictly after `after` when given (parsed).
    pub fn list(&self, key: &str, ns: Option<&str>, after: Option<&(String, String)>) -> Vec<Obj> {
        self.stored(key, ns, after)
            .into_iter()
            .map(|s| s.parsed())
            .collect()
    }
    /// [`State::list`] unparsed: cheap under the lock; parse after releasing it.
    pub fn list_packed(
        &self,
        key: &str,
        ns: Option<&str>,
        after: Option<&(String, String)>,
    ) -> Vec<Packed> {
        self.stored(key, ns, after)
            .into_iter()
            .map(|s| s.object)
            .collect()
    }
    /// The first `take` objects of [`State::list_packed`] and how many it would return in
    /// all (counted, not copied).
    pub fn page_packed(
        &self,
        key: &str,
        ns: Option<&str>,
        after: Option<&(String, String)>,
        take: usize,
    ) -> (Vec<Packed>, usize) {
        let Some(m) = self.objects.get(key) else {
            return (vec![], 0);
        };
        let iter: Box<dyn Iterator<Item = (&(String, String), &Stored)>> = match after {
            Some(a) => Box::new(m.range((
                std::ops::Bound::Excluded(a.clone()),
                std::ops::Bound::Unbounded,
            ))),
            None => Box::new(m.iter()),
        };
        let mut page = Vec::with_capacity(take.min(m.len()));
        let mut total = 0;
        for (_, o) in iter.filter(|((n, _), _)| ns.is_none_or(|want| want == n)) {
            if total < take {
                page.push(o.object.clone());
            }
            total += 1;
        }
        (page, total)
    }
    /// The stored entries of a resource (objects and their garbage-collection metadata).
    pub fn stored(
        &self,
        key: &str,
        ns: Option<&str>,
        after: Option<&(String, String)>,
    ) -> Vec<Stored> {
        let Some(m) = self.objects.get(key) else {
            return vec![];
        };
        let iter: Box<dyn Iterator<Item = (&(String, String), &Stored)>> = match after {
            Some(a) => Box::new(m.range((
                std::ops::Bound::Excluded(a.clone()),
                std::ops::Bound::Unbounded,
            ))),
            None => Box::new(m.iter()),
        };
        iter.filter(|((n, _), _)| ns.is_none_or(|want| want == n))
            .map(|(_, o)| o.clone())
            .collect()
    }
    /// Every storage key that has objects.
    pub fn keys(&self) -> Vec<String> {
        self.objects
            .iter()
            .filter(|(_, m)| !m.is_empty())
            .map(|(k, _)| k.clone())
            .collect()
    }
    /// Number of stored objects.
    pub fn len(&self) -> usize {
        self.objects.values().map(BTreeMap::len).sum()
    }
    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether a change since the last call needs the garbage collector; resets it.
    pub fn take_gc_dirty(&mut self) -> bool {
        std::mem::take(&mut self.gc_dirty)
    }

    /// Store `obj` (create or replace), assigning the next resourceVersion.
    pub fn put(&mut self, key: &str, obj: Value) -> Obj {
        self.put_over(key, obj, None)
    }

    /// [`State::put`] replacing `old`, the stored object as this write read it (parsed):
    /// watches that need the previous object then take it instead of parsing it again.
    pub fn replace(&mut self, key: &str, obj: Value, old: &Obj) -> Obj {
        self.put_over(key, obj, Some(old.clone()))
    }

    fn put_over(&mut self, key: &str, obj: Value, old: Option<Obj>) -> Obj {
        let mut obj = obj;
        if key.ends_with("/namespaces") || key.ends_with("/customresourcedefinitions") {
            self.gc_dirty = true;
        }
        self.rv += 1;
        let rv = self.rv;
        super::meta::set_meta(&mut obj, "resourceVersion", Value::String(rv.to_string()));
        let ns = super::meta::namespace_of(&obj).to_string();
        let name = super::meta::name_of(&obj).to_string();
        let mut stored = Stored::of(&obj);
        let packed = stored.object.clone();
        let obj = Arc::new(obj);
        stored.hot = Some((rv, obj.clone()));
        let gc = stored.gc.clone();
        let prev = self
            .objects
            .entry(key.to_string())
            .or_default()
            .insert((ns.clone(), name.clone()), stored);
        // The collector acts on deleting objects and on dependents whose owners may be
        // gone or deleting: a new dependent, or one whose ownerReferences changed. A
        // dependent's other writes (status updates of array children) change nothing it
        // would act on, and each sweep reads every object.
        if gc.deleting
            || (!gc.owners.is_empty() && prev.as_ref().is_none_or(|p| p.gc.owners != gc.owners))
        {
            self.gc_dirty = true;
        }
        let kind = if prev.is_some() {
            EventType::Modified
        } else {
            EventType::Added
        };
        let old = old.filter(|_| prev.is_some());
        let event = Arc::new(Event {
            rv,
            key: key.to_string(),
            namespace: ns,
            name,
            kind,
            object: packed,
            prev: prev.map(|p| p.object),
        });
        self.keep_hot(event.clone());
        self.pending.push((event, obj.clone(), old));
        obj
    }

    /// Remember that `event`'s object is kept parsed; drop the parsed copy of the oldest
    /// such write beyond [`HOT_OBJECTS`] (unless its object was written again since).
    fn keep_hot(&mut self, event: Arc<Event>) {
        self.hot.push_back(event);
        while self.hot.len() > HOT_OBJECTS {
            let Some(old) = self.hot.pop_front() else {
                break;
            };
            if let Some(s) = self
                .objects
                .get_mut(&old.key)
                .and_then(|m| m.get_mut(&(old.namespace.clone(), old.name.clone())))
                .filter(|s| s.hot.as_ref().is_some_and(|(rv, _)| *rv == old.rv))
            {
                s.hot = None;
            }
        }
    }

    /// Remove an object; `last` is its final state (stored into the DELETED event with a
    /// new resourceVersion). Returns the deleted object, or `None` if absent.
    pub fn remove(&mut self, key: &str, ns: &str, name: &str, last: Option<Value>) -> Option<Obj> {
        let prev = self
            .objects
            .get_mut(key)?
            .remove(&(ns.to_string(), name.to_string()))?;
        self.gc_dirty = true;
        self.rv += 1;
        let rv = self.rv;
        let mut obj = match last {
            Some(v) => v,
            None => (*prev.parsed()).clone(),
        };
        super::meta::set_meta(&mut obj, "resourceVersion", Value::String(rv.to_string()));
        let packed = Packed::pack(&obj);
        let obj = Arc::new(obj);
        self.pending.push((
            Arc::new(Event {
                rv,
                key: key.to_string(),
                namespace: ns.to_string(),
                name: name.to_string(),
                kind: EventType::Deleted,
                object: packed,
                prev: Some(prev.object),
            }),
            obj.clone(),
            None,
        ));
        Some(obj)
    }

    /// The objects of a resource as they were at resourceVersion `at` (optionally in one
    /// namespace, in (namespace, name) order), rebuilt from the current state by undoing
    /// the retained history; `None` when `at` is older than the history or newer than
    /// the current resourceVersion. (kube-apiserver reads them from etcd, which keeps
    /// every revision until its periodic compaction.)
    pub fn list_at(&self, key: &str, ns: Option<&str>, at: u64) -> Option<Vec<Packed>> {
        if at < self.oldest_rv || at > self.rv {
            return None;
        }
        let mut m: BTreeMap<(String, String), Packed> = self
            .objects
            .get(key)
            .map(|m| {
                m.iter()
                    .map(|(k, s)| (k.clone(), s.object.clone()))
                    .collect()
            })
            .unwrap_or_default();
        for e in self.history.iter().rev().take_while(|e| e.rv > at) {
            if e.key != key {
                continue;
            }
            let id = (e.namespace.clone(), e.name.clone());
            match (&e.kind, &e.prev) {
                (EventType::Added, _) => {
                    m.remove(&id);
                }
                (_, Some(prev)) => {
                    m.insert(id, prev.clone());
                }
                (_, None) => {}
            }
        }
        Some(
            m.into_iter()
                .filter(|((n, _), _)| ns.is_none_or(|want| want == n))
                .map(|(_, o)| o)
                .collect(),
        )
    }

    /// Events with rv > `from` still in history, or `None` if `from` is too old.
    pub fn events_since(&self, from: u64) -> Option<Vec<Arc<Event>>> {
        if from < self.oldest_rv {
            return None;
        }
        // history is sorted by rv; find the first event with rv > from.
        let start = self.history.partition_point(|e| e.rv <= from);
        Some(self.history.iter().skip(start).cloned().collect())
    }

    /// Drop the oldest events while the history holds more than its bounds.
    fn trim_history(&mut self) {
        while self.history.len() > self.history_limit
            || (self.history_bytes > self.history_byte_limit && self.history.len() > 1)
        {
            let Some(old) = self.history.pop_front() else {
                break;
            };
            self.history_bytes = self.history_bytes.saturating_sub(old.size());
            self.oldest_rv = old.rv;
        }
    }
}

/// The store.
#[derive(Debug)]
pub struct Store {
    state: Mutex<State>,
    tx: broadcast::Sender<Arc<Live>>,
    /// Where a persistent store commits.
    disk: Option<Disk>,
}

/// Opens (or creates) a store's database.
type Opener = Box<dyn Fn() -> Result<Database, redb::DatabaseError> + Send + Sync>;

/// A persistent store's database. After an I/O error redb refuses every write ("Previous
/// I/O error occurred. Please close and re-open the database."), so a failed commit drops
/// it and the next flush opens it again (redb repairs the file as it opens it).
struct Disk {
    /// The file, for messages.
    path: std::path::PathBuf,
    open: Opener,
    /// The open database (none after a failed commit); held through a flush, so flushes
    /// commit their snapshots in order.
    db: Mutex<Option<Database>>,
}

impl std::fmt::Debug for Disk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Disk")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn db_err(path: &Path, e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::Db {
        path: path.display().to_string(),
        source: Box::new(e),
    }
}

fn row_key(event: &Event) -> String {
    format!("{}\u{0}{}\u{0}{}", event.key, event.namespace, event.name)
}

/// Changes a running watch may fall behind by before it ends with 410 Expired: as many as
/// the history keeps (a watch further behind could not resume from it either), at least
/// 1,024, at most 65,536. Each holds its parsed object until every watch has taken it.
fn live_capacity(history_limit: usize) -> usize {
    history_limit.clamp(1_024, 65_536)
}

fn state(history_limit: usize) -> State {
    State {
        history_limit: history_limit.max(16),
        history_byte_limit: DEFAULT_HISTORY_BYTES,
        ..State::default()
    }
}

impl Store {
    /// An in-memory store retaining `history_limit` events for watches.
    pub fn in_memory(history_limit: usize) -> Self {
        let (tx, _) = broadcast::channel(live_capacity(history_limit));
        Store {
            state: Mutex::new(state(history_limit)),
            tx,
            disk: None,
        }
    }

    /// Bound the watch history also by bytes (the sum of its events' objects and previous
    /// objects as JSON; default [`DEFAULT_HISTORY_BYTES`]): older events are dropped, and
    /// a watch from before them gets 410 Gone.
    pub fn with_history_bytes(self, bytes: usize) -> Self {
        self.lock().history_byte_limit = bytes;
        self
    }

    /// A store persisted in `dir/store.redb`; loads objects and the counter.
    pub fn open(dir: &Path, history_limit: usize) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| db_err(dir, e))?;
        let path = dir.join("store.redb");
        let file = path.clone();
        let open: Opener = Box::new(move || {
            redb::Builder::new()
                .set_cache_size(DB_CACHE_BYTES)
                .create(&file)
        });
        Self::open_with(path, open, history_limit)
    }

    /// A store persisted in the database `open` opens (`path` names it in messages).
    fn open_with(
        path: std::path::PathBuf,
        open: Opener,
        history_limit: usize,
    ) -> Result<Self, StoreError> {
        let db = open().map_err(|e| db_err(&path, e))?;
        let mut st = state(history_limit);
        {
            let w = db.begin_write().map_err(|e| db_err(&path, e))?;
            w.open_table(OBJECTS).map_err(|e| db_err(&path, e))?;
            w.open_table(META).map_err(|e| db_err(&path, e))?;
            w.commit().map_err(|e| db_err(&path, e))?;
            let r = db.begin_read().map_err(|e| db_err(&path, e))?;
            let meta = r.open_table(META).map_err(|e| db_err(&path, e))?;
            st.rv = meta
                .get("rv")
                .map_err(|e| db_err(&path, e))?
                .map(|g| g.value())
                .unwrap_or(0);
            let objs = r.open_table(OBJECTS).map_err(|e| db_err(&path, e))?;
            for row in objs.iter().map_err(|e| db_err(&path, e))? {
                let (k, v) = row.map_err(|e| db_err(&path, e))?;
                let mut parts = k.value().splitn(3, '\u{0}');
                let (Some(key), Some(ns), Some(name)) = (parts.next(), parts.next(), parts.next())
                else {
                    continue;
                };
                let Ok(obj) = serde_json::from_slice::<Value>(v.value()) else {
                    tracing::warn!(key = k.value(), "skipping unreadable stored object");
                    continue;
                };
                let stored = Stored {
                    object: Packed(Bytes::copy_from_slice(v.value())),
                    gc: Arc::new(GcMeta::of(&obj)),
                    hot: None,
                };
                st.objects
                    .entry(key.to_string())
                    .or_default()
                    .insert((ns.to_string(), name.to_string()), stored);
            }
        }
        // A crash loses the writes since the last flush (at most about a second's), whose
        // resourceVersions were handed out: the counter jumps past any such number (and the
        // jump is committed before anything is served), so that no number names two
        // changes, and a client resuming from one is told to relist (410: older than the
        // start).
        if st.rv > 0 {
            st.rv = st.rv.saturating_add(RESTART_GAP);
            persist(&db, &HashMap::new(), st.rv).map_err(|e| db_err(&path, e))?;
        }
        st.oldest_rv = st.rv;
        st.gc_dirty = true;
        let (tx, _) = broadcast::channel(live_capacity(history_limit));
        Ok(Store {
            state: Mutex::new(st),
            tx,
            disk: Some(Disk {
                path,
                open,
                db: Mutex::new(Some(db)),
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Read the state.
    pub fn read<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        f(&self.lock())
    }

    /// Run `f` under the write lock, then persist, record and broadcast its events.
    /// `f` must do all its checks before changing anything.
    pub fn write<T>(&self, f: impl FnOnce(&mut State) -> ApiResult<T>) -> ApiResult<T> {
        let mut st = self.lock();
        let result = f(&mut st);
        let events = std::mem::take(&mut st.pending);
        if events.is_empty() {
            return result;
        }
        if self.disk.is_some() {
            // Written behind: the next flush (within a second) commits the rows' last state.
            for (e, _, _) in &events {
                let row = match e.kind {
                    EventType::Deleted => None,
                    _ => Some(e.object.clone()),
                };
                st.dirty.insert(row_key(e), row);
            }
        }
        for (event, object, old) in events {
            st.history_bytes += event.size();
            st.history.push_back(event.clone());
            let prev = match old {
                Some(old) => OnceLock::from(Some(old)),
                None => OnceLock::new(),
            };
            // send fails only when nobody listens.
            let _ = self.tx.send(Arc::new(Live {
                event,
                object,
                prev,
                line: OnceLock::new(),
            }));
        }
        st.trim_history();
        result
    }

    /// Subscribe to events after `from` atomically with reading the history.
    /// `Err` when `from` is older than the retained history.
    pub fn watch_from(&self, from: u64) -> Result<WatchStart, u64> {
        let st = self.lock();
        match st.events_since(from) {
            Some(evs) => Ok((evs, self.tx.subscribe())),
            None => Err(st.oldest_rv),
        }
    }

    /// Snapshot the objects of a resource and subscribe to later events atomically.
    pub fn snapshot_and_watch(
        &self,
        key: &str,
        ns: Option<&str>,
    ) -> (Vec<Packed>, u64, broadcast::Receiver<Arc<Live>>) {
        let st = self.lock();
        (st.list_packed(key, ns, None), st.rv, self.tx.subscribe())
    }

    /// Subscribe to all future events.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Live>> {
        self.tx.subscribe()
    }

    /// Make all writes durable: one transaction with every row changed since the last
    /// flush and the resourceVersion counter, committed durably. A persistent store writes
    /// behind: the server flushes every second and at shutdown, so a crash loses at most
    /// the last second of writes (as when each write was committed non-durably: redb
    /// persists such commits only with the next durable one). One transaction a second
    /// instead of one per write: each write's transaction cost CPU, and redb frees the pages
    /// of non-durable commits only at a durable one (dev with `--data-dir` after 10,000
    /// jobs: 18.5 → 14.6 s, RSS 256 → 230 MiB).
    ///
    /// A failed commit keeps its rows for the next flush (rows written again since are
    /// newer: they stay), which opens the database again first.
    pub fn flush(&self) {
        let Some(disk) = &self.disk else {
            return;
        };
        let mut db = disk
            .db
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if db.is_none() {
            match (disk.open)() {
                Ok(d) => {
                    tracing::info!(path = %disk.path.display(), "data store opened again");
                    *db = Some(d);
                }
                Err(e) => {
                    tracing::error!(path = %disk.path.display(), error = %e, "cannot open the data store again; the writes since the last flush are kept in memory for the next");
                    return;
                }
            }
        }
        let Some(d) = db.as_ref() else {
            return;
        };
        let (rows, rv) = {
            let mut st = self.lock();
            (std::mem::take(&mut st.dirty), st.rv)
        };
        match persist(d, &rows, rv) {
            Ok(()) => {
                tracing::debug!(
                    rows = rows.len(),
                    resource_version = rv,
                    "data store flushed"
                );
            }
            Err(e) => {
                tracing::error!(path = %disk.path.display(), error = %e, rows = rows.len(), "persisting to the data store failed; kept for the next flush, which opens the store again");
                // redb refuses every write after an I/O error until it is opened again.
                *db = None;
                let mut st = self.lock();
                for (k, row) in rows {
                    st.dirty.entry(k).or_insert(row);
                }
            }
        }
    }
}

/// Commits `rows` (by row key: the object, or `None` to delete it) and the counter `rv`
/// in one durable transaction.
fn persist(db: &Database, rows: &HashMap<String, Option<Packed>>, rv: u64) -> Result<(), ApiError> {
    let ie = |e: &dyn std::fmt::Display| ApiError::internal(e.to_string());
    let mut w = db.begin_write().map_err(|e| ie(&e))?;
    w.set_durability(redb::Durability::Immediate)
        .map_err(|e| ie(&e))?;
    {
        let mut t = w.open_table(OBJECTS).map_err(|e| ie(&e))?;
        for (k, row) in rows {
            match row {
                None => {
                    t.remove(k.as_str()).map_err(|e| ie(&e))?;
                }
                Some(object) => {
                    t.insert(k.as_str(), object.bytes()).map_err(|e| ie(&e))?;
                }
            }
        }
        let mut m = w.open_table(META).map_err(|e| ie(&e))?;
        m.insert("rv", rv).map_err(|e| ie(&e))?;
    }
    w.commit().map_err(|e| ie(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cm(name: &str, data: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": name, "namespace": "default", "uid": format!("u-{name}")},
               "data": {"v": data}})
    }

    fn put(store: &Store, obj: Value) -> Obj {
        store
            .write(|st| Ok(st.put("core/configmaps", obj)))
            .expect("put")
    }

    #[test]
    fn a_persistent_store_reopens_with_what_its_flushes_committed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let get =
            |store: &Store, name: &str| store.read(|st| st.get("core/configmaps", "default", name));
        let rv = {
            let store = Store::open(dir.path(), 100).expect("open");
            put(&store, cm("kept", "one"));
            put(&store, cm("gone", "one"));
            store.flush();
            // Changed again, deleted, created after the first flush: each row's last
            // state is committed by the next.
            put(&store, cm("kept", "two"));
            put(&store, cm("kept", "three"));
            store
                .write(|st| Ok(st.remove("core/configmaps", "default", "gone", None)))
                .expect("remove");
            put(&store, cm("new", "one"));
            store.flush();
            store.flush();
            store.read(State::rv)
        };
        let store = Store::open(dir.path(), 100).expect("reopen");
        assert_eq!(
            store.read(State::rv),
            rv + RESTART_GAP,
            "the counter, past a crash's"
        );
        let kept = get(&store, "kept").expect("kept");
        assert_eq!(kept["data"]["v"], "three");
        assert!(get(&store, "gone").is_none(), "deleted");
        assert_eq!(get(&store, "new").expect("new")["data"]["v"], "one");
        // Writes go on from the counter: a new object's resourceVersion is above it.
        let later = put(&store, cm("later", "x"));
        let later_rv: u64 = later["metadata"]["resourceVersion"]
            .as_str()
            .and_then(|v| v.parse().ok())
            .expect("resourceVersion");
        assert!(later_rv > rv);
        drop(store);
        // A crash (no flush): `later` is lost, and its number is not handed out again.
        let store = Store::open(dir.path(), 100).expect("reopen after a crash");
        assert!(get(&store, "later").is_none());
        assert!(store.read(State::rv) > later_rv);
    }

    /// A file whose syncs fail while `fail` is set: a durable commit meets an I/O error
    /// (a full or failing disk).
    #[derive(Debug)]
    struct Flaky {
        file: redb::backends::FileBackend,
        fail: Arc<std::sync::atomic::AtomicBool>,
    }

    impl redb::StorageBackend for Flaky {
        fn len(&self) -> Result<u64, std::io::Error> {
            self.file.len()
        }
        fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
            self.file.read(offset, out)
        }
        fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
            self.file.set_len(len)
        }
        fn sync_data(&self) -> Result<(), std::io::Error> {
            if self.fail.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(std::io::Error::other("injected: no space left on device"));
            }
            self.file.sync_data()
        }
        fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
            self.file.write(offset, data)
        }
        fn close(&self) -> Result<(), std::io::Error> {
            self.file.close()
        }
    }

    #[test]
    fn writes_a_failed_flush_kept_are_committed_once_the_disk_works_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("store.redb");
        let fail = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (file, failing) = (path.clone(), fail.clone());
        let open: Opener = Box::new(move || {
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&file)
                .map_err(|e| redb::DatabaseError::Storage(redb::StorageError::Io(e)))?;
            redb::Builder::new().create_with_backend(Flaky {
                file: redb::backends::FileBackend::new(f)?,
                fail: failing.clone(),
            })
        });
        let get =
            |store: &Store, name: &str| store.read(|st| st.get("core/configmaps", "default", name));
        let unflushed = |store: &Store| store.read(|st| st.dirty.len());
        let rv = {
            let store = Store::open_with(path, open, 100).expect("open");
            put(&store, cm("early", "one"));
            put(&store, cm("gone", "one"));
            store.flush();
            assert_eq!(unflushed(&store), 0);
            // The disk fails: the flushes fail, their rows are kept; writes go on.
            fail.store(true, std::sync::atomic::Ordering::SeqCst);
            put(&store, cm("early", "two"));
            put(&store, cm("during", "one"));
            store.flush();
            assert_eq!(unflushed(&store), 2, "a failed flush keeps its rows");
            put(&store, cm("during", "two"));
            store
                .write(|st| Ok(st.remove("core/configmaps", "default", "gone", None)))
                .expect("remove");
            store.flush();
            assert_eq!(unflushed(&store), 3);
            // The disk works again: the next flush commits every kept row, each at its
            // last state.
            fail.store(false, std::sync::atomic::Ordering::SeqCst);
            store.flush();
            assert_eq!(unflushed(&store), 0, "the kept rows are committed");
            put(&store, cm("after", "one"));
            store.flush();
            assert_eq!(unflushed(&store), 0);
            store.read(State::rv)
        };
        let store = Store::open(dir.path(), 100).expect("reopen");
        assert_eq!(store.read(State::rv), rv + RESTART_GAP, "the counter");
        for (name, v) in [("early", "two"), ("during", "two"), ("after", "one")] {
            assert_eq!(get(&store, name).expect(name)["data"]["v"], v, "{name}");
        }
        assert!(get(&store, "gone").is_none(), "deleted");
    }

    #[test]
    fn the_collector_is_woken_by_what_it_acts_on_not_by_every_write_of_a_dependent() {
        let store = Store::in_memory(100);
        let dirty = || store.write(|st| Ok(st.take_gc_dirty())).expect("take");
        put(&store, cm("owner", "x"));
        assert!(!dirty(), "an object without owners");
        let mut child = cm("child", "1");
        child["metadata"]["ownerReferences"] = json!([{"uid": "u-owner", "name": "owner"}]);
        put(&store, child.clone());
        assert!(dirty(), "a new dependent (its owner may be gone)");
        child["data"]["v"] = json!("2");
        put(&store, child.clone());
        assert!(!dirty(), "a dependent's update keeping its owners");
        child["metadata"]["ownerReferences"] = json!([{"uid": "u-other", "name": "other"}]);
        put(&store, child.clone());
        assert!(dirty(), "a dependent whose owners changed");
        child["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        put(&store, child);
        assert!(dirty(), "a deleting object");
        store
            .write(|st| Ok(st.remove("core/configmaps", "default", "owner", None)))
            .expect("remove");
        assert!(dirty(), "a removal (its dependents lose an owner)");
    }

    #[test]
    fn the_last_written_objects_are_read_without_parsing_and_older_ones_from_their_json() {
        let store = Store::in_memory(100);
        let get = |name: &str| {
            store
                .read(|st| st.get("core/configmaps", "default", name))
                .expect("stored")
        };
        let a = put(&store, cm("a", "one"));
        assert!(Arc::ptr_eq(&get("a"), &a), "the written value itself");
        put(&store, cm("b", "one"));
        let b = put(&store, cm("b", "two"));
        for i in 0..HOT_OBJECTS - 1 {
            put(&store, cm(&format!("o{i}"), "x"));
        }
        // a's write and b's first left the window, b's second did not
        let read = get("a");
        assert!(!Arc::ptr_eq(&read, &a), "parsed again");
        assert_eq!(read, a);
        assert!(Arc::ptr_eq(&get("b"), &b), "b's newest copy is kept");
        assert_eq!(get("b")["data"]["v"], "two");
        // a parsed copy is dropped with its object
        store
            .write(|st| Ok(st.remove("core/configmaps", "default", "b", None)))
            .expect("remove");
        assert!(
            store
                .read(|st| st.get("core/configmaps", "default", "b"))
                .is_none()
        );
    }

    #[test]
    fn objects_read_back_as_written_with_their_resource_version() {
        let store = Store::in_memory(100);
        let written = put(&store, cm("a", "one"));
        let read = store
            .read(|st| st.get("core/configmaps", "default", "a"))
            .expect("stored");
        assert_eq!(read, written);
        assert_eq!(read["metadata"]["resourceVersion"], "1");
        assert_eq!(read["data"]["v"], "one");
        let gc = store.read(|st| st.stored("core/configmaps", None, None))[0]
            .gc
            .clone();
        assert_eq!((gc.uid.as_str(), gc.name.as_str()), ("u-a", "a"));
    }

    #[test]
    fn a_watch_gets_the_previous_object_of_a_change_whether_or_not_the_writer_had_it() {
        let store = Store::in_memory(100);
        let first = put(&store, cm("a", "one"));
        let mut rx = store.subscribe();
        // A writer that read the stored object hands it over parsed...
        store
            .write(|st| Ok(st.replace("core/configmaps", cm("a", "two"), &first)))
            .expect("replace");
        // ...one that did not gets it parsed from the history's bytes.
        put(&store, cm("a", "three"));
        let handed = rx.try_recv().expect("the first change");
        let prev = handed.prev().expect("a MODIFIED has its previous object");
        assert!(Arc::ptr_eq(&prev, &first), "handed over, not parsed again");
        assert_eq!(prev["data"]["v"], "one");
        assert_eq!(prev["metadata"]["resourceVersion"], "1");
        let parsed = rx.try_recv().expect("the second change");
        let prev = parsed.prev().expect("a MODIFIED has its previous object");
        assert_eq!(prev["data"]["v"], "two");
        assert_eq!(prev["metadata"]["resourceVersion"], "2");
        assert_eq!(*prev, *handed.object, "the object of the change before it");
    }

    #[test]
    fn a_change_shares_its_previous_object_with_the_change_before_it() {
        let store = Store::in_memory(100);
        put(&store, cm("a", "one"));
        put(&store, cm("a", "two"));
        let events = store.read(|st| st.events_since(0)).expect("history");
        assert_eq!(events.len(), 2);
        let prev = events[1]
            .prev
            .as_ref()
            .expect("a MODIFIED has its previous object");
        // The same bytes, not a copy.
        assert_eq!(prev.bytes().as_ptr(), events[0].object.bytes().as_ptr());
        let parsed = prev.unpack();
        assert_eq!(parsed["data"]["v"], "one");
    }

    #[test]
    fn the_history_is_bounded_by_bytes_and_older_versions_expire() {
        let store = Store::in_memory(10_000).with_history_bytes(20_000);
        let big = "x".repeat(1000);
        for i in 0..100 {
            put(&store, cm(&format!("c{i}"), &big));
        }
        let (len, oldest, rv) = store.read(|st| (st.history_len(), st.oldest_rv(), st.rv()));
        assert!((10..100).contains(&len), "history of {len} events");
        assert!(
            store.read(|st| st.events_since(1)).is_none(),
            "rv 1 was trimmed"
        );
        assert!(store.watch_from(1).is_err());
        let kept = store.read(|st| st.events_since(oldest)).expect("kept");
        assert_eq!(kept.last().map(|e| e.rv), Some(rv));
        assert!(
            store
                .read(|st| st.list_at("core/configmaps", None, rv - 1))
                .is_some()
        );
        assert!(
            store
                .read(|st| st.list_at("core/configmaps", None, 1))
                .is_none()
        );
    }
}

//! In-memory storage: one table per resource, a global resourceVersion
//! counter, and a bounded per-table event history that both resumes
//! watches and feeds live ones.
//!
//! Every write to a table happens under that table's write lock, and takes
//! its resourceVersion from the global counter inside the lock, so within a
//! table events are in resourceVersion order and a reader holding the read
//! lock sees every event up to the counter's current value.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::{Notify, watch};

use crate::resources::{Builtin, ResourceDef};

/// `(namespace, name)`; namespace is "" for cluster-scoped objects.
pub type ObjKey = (String, String);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Added,
    Modified,
    Deleted,
}

/// One change, shared by every watcher; the object's JSON is rendered once.
#[derive(Debug)]
pub struct Event {
    pub kind: EventKind,
    pub rv: u64,
    pub object: Arc<Value>,
    /// The previous state, so selector watches can turn a MODIFIED that
    /// leaves the selection into a DELETED.
    pub old: Option<Arc<Value>>,
    json: OnceLock<Bytes>,
}

impl Event {
    pub fn object_json(&self) -> Bytes {
        self.json
            .get_or_init(|| Bytes::from(serde_json::to_vec(&*self.object).unwrap_or_default()))
            .clone()
    }
}

#[derive(Debug, Default)]
pub struct TableInner {
    pub objects: BTreeMap<ObjKey, Arc<Value>>,
    history: VecDeque<Arc<Event>>,
    /// Events with a resourceVersion at or below this were dropped.
    compacted: u64,
}

#[derive(Debug)]
pub struct Table {
    def: RwLock<Arc<ResourceDef>>,
    inner: RwLock<TableInner>,
    /// Latest resourceVersion written to this table; watchers wait on it.
    notify: watch::Sender<u64>,
    /// Set when the resource stops being served (its CRD was deleted).
    removed: AtomicBool,
    /// Pods and Services: writes wake the endpoints controller.
    feeds_endpoints: bool,
}

/// Why a commit did not happen.
#[derive(Debug, PartialEq, Eq)]
pub enum CommitError {
    /// The object changed (or appeared/disappeared) since it was read.
    Changed,
}

/// What a commit does.
#[derive(Debug)]
pub enum Write {
    /// Store this object.
    Store(Value),
    /// Remove the object; this is its final state (what the DELETED event
    /// shows, e.g. with its last finalizer gone).
    Remove(Value),
}

impl Write {
    pub fn removing_if(remove: bool, object: Value) -> Write {
        if remove {
            Write::Remove(object)
        } else {
            Write::Store(object)
        }
    }
}

/// What the caller read and expects to still be there.
#[derive(Clone, Copy, Debug)]
pub enum Expect {
    Absent,
    Version(u64),
}

pub fn rv_of(object: &Value) -> u64 {
    object
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

pub fn key_of(object: &Value) -> ObjKey {
    let meta = |f: &str| {
        object
            .pointer(&format!("/metadata/{f}"))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    (meta("namespace"), meta("name"))
}

impl Table {
    fn new(def: ResourceDef) -> Self {
        let feeds_endpoints = matches!(def.builtin, Some(Builtin::Pod | Builtin::Service));
        Table {
            feeds_endpoints,
            def: RwLock::new(Arc::new(def)),
            inner: RwLock::new(TableInner::default()),
            notify: watch::channel(0).0,
            removed: AtomicBool::new(false),
        }
    }

    pub fn def(&self) -> Arc<ResourceDef> {
        read(&self.def).clone()
    }

    pub fn set_def(&self, def: ResourceDef) {
        *write(&self.def) = Arc::new(def);
    }

    pub fn is_removed(&self) -> bool {
        self.removed.load(Ordering::Acquire)
    }

    pub fn get(&self, key: &ObjKey) -> Option<Arc<Value>> {
        read(&self.inner).objects.get(key).cloned()
    }

    /// All objects (optionally in one namespace) and the resourceVersion
    /// they are consistent with.
    pub fn list(&self, store: &Store, namespace: Option<&str>) -> (Vec<Arc<Value>>, u64) {
        let inner = read(&self.inner);
        let items = match namespace {
            Some(ns) => inner
                .objects
                .range((ns.to_string(), String::new())..)
                .take_while(|((n, _), _)| n == ns)
                .map(|(_, v)| v.clone())
                .collect(),
            None => inner.objects.values().cloned().collect(),
        };
        (items, store.current_rv())
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.notify.subscribe()
    }

    /// Events after `cursor` (at most `max`), and the resourceVersion up to
    /// which this table has been read when the batch is complete.
    /// `Err(oldest)` when events after `cursor` were already compacted.
    pub fn events_after(
        &self,
        store: &Store,
        cursor: u64,
        max: usize,
    ) -> Result<(Vec<Arc<Event>>, Option<u64>), u64> {
        let inner = read(&self.inner);
        if cursor < inner.compacted {
            return Err(inner.compacted);
        }
        let start = inner.history.partition_point(|e| e.rv <= cursor);
        let batch: Vec<Arc<Event>> = inner.history.range(start..).take(max).cloned().collect();
        let complete = inner.history.len() - start <= max;
        Ok((batch, complete.then(|| store.current_rv())))
    }

    /// Applies `write` if the stored state still matches `expect`. Returns
    /// the stored object (for a removal, the final state carrying the
    /// deletion's resourceVersion).
    pub fn commit(
        &self,
        store: &Store,
        key: &ObjKey,
        expect: Expect,
        change: Write,
    ) -> Result<Arc<Value>, CommitError> {
        let mut inner = write(&self.inner);
        let current = inner.objects.get(key).cloned();
        match (expect, &current) {
            (Expect::Absent, None) => {}
            (Expect::Version(v), Some(cur)) if rv_of(cur) == v => {}
            _ => return Err(CommitError::Changed),
        }
        let rv = store.rv.fetch_add(1, Ordering::SeqCst) + 1;
        // The garbage collector only has work after removals and deletions
        // (its periodic sweep catches the rest).
        let collect = match &change {
            Write::Remove(_) => true,
            Write::Store(n) => n.pointer("/metadata/deletionTimestamp").is_some(),
        };
        let (kind, stored) = match change {
            Write::Store(mut obj) => {
                set_rv(&mut obj, rv);
                let obj = Arc::new(obj);
                inner.objects.insert(key.clone(), obj.clone());
                let kind = if current.is_some() {
                    EventKind::Modified
                } else {
                    EventKind::Added
                };
                (kind, obj)
            }
            Write::Remove(mut last) => {
                if inner.objects.remove(key).is_none() {
                    return Err(CommitError::Changed);
                }
                set_rv(&mut last, rv);
                (EventKind::Deleted, Arc::new(last))
            }
        };
        inner.history.push_back(Arc::new(Event {
            kind,
            rv,
            object: stored.clone(),
            old: current,
            json: OnceLock::new(),
        }));
        while inner.history.len() > store.history_limit {
            if let Some(dropped) = inner.history.pop_front() {
                inner.compacted = dropped.rv;
            }
        }
        drop(inner);
        self.notify.send_replace(rv);
        if collect {
            store.changed.notify_one();
        }
        if self.feeds_endpoints {
            store
                .dirty_namespaces
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(key.0.clone());
            store.workloads_changed.notify_one();
        }
        Ok(stored)
    }

    /// Drops every object without events (the resource stopped being
    /// served); watchers see the table as removed and end.
    pub fn retire(&self) {
        self.removed.store(true, Ordering::Release);
        write(&self.inner).objects.clear();
        self.notify.send_modify(|_| {});
    }
}

fn set_rv(obj: &mut Value, rv: u64) {
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("resourceVersion".into(), Value::String(rv.to_string()));
    }
}

/// Poisoning only happens after a panic in a critical section, which never
/// leaves a table half-written (all mutation is a single insert/remove), so
/// the data is still consistent.
fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|e| e.into_inner())
}

/// Group and plural name.
pub type GroupResource = (String, String);

#[derive(Debug)]
pub struct Store {
    rv: AtomicU64,
    tables: RwLock<HashMap<GroupResource, Arc<Table>>>,
    history_limit: usize,
    /// Poked on removals and deletions; the garbage collector waits on it.
    pub changed: Notify,
    /// Poked on pod and Service writes; the endpoints controller waits on it.
    pub workloads_changed: Notify,
    /// Namespaces with pod or Service writes not yet reconciled.
    dirty_namespaces: Mutex<BTreeSet<String>>,
}

impl Store {
    pub fn new(history_limit: usize) -> Self {
        Store {
            rv: AtomicU64::new(1),
            tables: RwLock::new(HashMap::new()),
            history_limit: history_limit.max(1),
            changed: Notify::new(),
            workloads_changed: Notify::new(),
            dirty_namespaces: Mutex::new(BTreeSet::new()),
        }
    }

    pub fn take_dirty_namespaces(&self) -> BTreeSet<String> {
        std::mem::take(
            &mut *self
                .dirty_namespaces
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        )
    }

    pub fn current_rv(&self) -> u64 {
        self.rv.load(Ordering::SeqCst)
    }

    pub fn table(&self, group: &str, plural: &str) -> Option<Arc<Table>> {
        read(&self.tables)
            .get(&(group.to_string(), plural.to_string()))
            .cloned()
    }

    pub fn tables(&self) -> Vec<Arc<Table>> {
        read(&self.tables).values().cloned().collect()
    }

    /// Registers a resource, or updates the definition of an existing one
    /// (keeping its objects).
    pub fn define(&self, def: ResourceDef) -> Arc<Table> {
        let key = (def.group.clone(), def.plural.clone());
        let mut tables = write(&self.tables);
        if let Some(table) = tables.get(&key) {
            table.set_def(def);
            return table.clone();
        }
        let table = Arc::new(Table::new(def));
        tables.insert(key, table.clone());
        table
    }

    pub fn undefine(&self, group: &str, plural: &str) {
        if let Some(table) = write(&self.tables).remove(&(group.to_string(), plural.to_string())) {
            table.retire();
        }
    }
}

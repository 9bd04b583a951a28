//! The garbage collector and namespace controller: one task that, after
//! every burst of writes (and once a second), scans all objects and
//!
//! * deletes dependents whose owners (by uid) are all gone, and drops
//!   references to gone owners when other owners remain (background);
//! * for owners deleted with `Orphan`, removes their ownerReferences from
//!   dependents, then the `orphan` finalizer;
//! * for owners deleted with `Foreground`, deletes dependents and removes
//!   the `foregroundDeletion` finalizer once no dependent with
//!   `blockOwnerDeletion` remains;
//! * empties terminating namespaces, then removes them;
//! * and keeps PodDisruptionBudget status current ([`crate::disruption`]).
//!
//! Owner existence is checked against live storage, never only against
//! the scan's snapshot, so an owner created during a scan is never missed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::watch;

use crate::api::ApiState;
use crate::delete::{DeleteOptions, delete_object};
use crate::resources::Builtin;
use crate::store::{ObjKey, Table, key_of};
use crate::write::system_update;

const DEBOUNCE: Duration = Duration::from_millis(20);
const PERIOD: Duration = Duration::from_secs(1);

pub async fn run(state: Arc<ApiState>, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = state.store.changed.notified() => {}
            _ = tokio::time::sleep(PERIOD) => {}
            _ = shutdown.changed() => return,
        }
        tokio::time::sleep(DEBOUNCE).await;
        collect(&state);
        crate::disruption::update_statuses(&state);
    }
}

fn deleting(obj: &Value) -> bool {
    obj.pointer("/metadata/deletionTimestamp").is_some()
}

fn has_finalizer(obj: &Value, name: &str) -> bool {
    obj.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .is_some_and(|f| f.iter().any(|x| x == name))
}

fn uid(obj: &Value) -> &str {
    obj.pointer("/metadata/uid")
        .and_then(Value::as_str)
        .unwrap_or("")
}

fn owner_refs(obj: &Value) -> &[Value] {
    obj.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

fn background() -> DeleteOptions {
    DeleteOptions {
        propagation_policy: Some("Background".into()),
        ..DeleteOptions::default()
    }
}

struct Scan {
    objects: Vec<(Arc<Table>, Arc<Value>)>,
    /// (group, kind) → table, to look owners up.
    kinds: HashMap<(String, String), Arc<Table>>,
}

impl Scan {
    fn take(state: &ApiState) -> Scan {
        let mut objects = vec![];
        let mut kinds = HashMap::new();
        for table in state.store.tables() {
            let def = table.def();
            kinds.insert((def.group.clone(), def.kind.clone()), table.clone());
            let (items, _) = table.list(&state.store, None);
            objects.extend(items.into_iter().map(|o| (table.clone(), o)));
        }
        Scan { objects, kinds }
    }

    /// Whether the owner a reference names exists now (unknown kinds count
    /// as existing: never delete on a guess).
    fn owner_exists(&self, dependent: &Value, reference: &Value) -> bool {
        let api_version = reference["apiVersion"].as_str().unwrap_or("");
        let group = api_version.rsplit_once('/').map(|(g, _)| g).unwrap_or("");
        let kind = reference["kind"].as_str().unwrap_or("");
        let Some(table) = self.kinds.get(&(group.to_string(), kind.to_string())) else {
            return true;
        };
        let namespace = if table.def().namespaced {
            dependent["metadata"]["namespace"].as_str().unwrap_or("")
        } else {
            ""
        };
        let name = reference["name"].as_str().unwrap_or("");
        table
            .get(&(namespace.to_string(), name.to_string()))
            .is_some_and(|o| uid(&o) == reference["uid"].as_str().unwrap_or(""))
    }

    fn dependents_of<'a>(
        &'a self,
        owner: &'a Value,
    ) -> impl Iterator<Item = &'a (Arc<Table>, Arc<Value>)> {
        let owner_uid = uid(owner);
        self.objects
            .iter()
            .filter(move |(_, o)| owner_refs(o).iter().any(|r| r["uid"] == owner_uid))
    }
}

fn remove_finalizer(state: &ApiState, table: &Arc<Table>, key: &ObjKey, name: &str) {
    system_update(state, table, key, |obj| {
        let Some(list) = obj
            .pointer_mut("/metadata/finalizers")
            .and_then(Value::as_array_mut)
        else {
            return false;
        };
        let before = list.len();
        list.retain(|f| f != name);
        list.len() != before
    });
}

fn remove_owner_refs(
    state: &ApiState,
    table: &Arc<Table>,
    key: &ObjKey,
    gone: impl Fn(&Value) -> bool,
) {
    system_update(state, table, key, |obj| {
        let Some(refs) = obj
            .pointer_mut("/metadata/ownerReferences")
            .and_then(Value::as_array_mut)
        else {
            return false;
        };
        let before = refs.len();
        refs.retain(|r| !gone(r));
        let changed = refs.len() != before;
        if refs.is_empty()
            && let Some(meta) = obj["metadata"].as_object_mut()
        {
            meta.remove("ownerReferences");
        }
        changed
    });
}

fn delete_quietly(state: &ApiState, table: &Arc<Table>, key: &ObjKey, opts: &DeleteOptions) {
    if let Err(e) = delete_object(state, table, key, opts)
        && e.code != 404
    {
        tracing::warn!(namespace = %key.0, name = %key.1, error = %e, "garbage collector could not delete");
    }
}

pub fn collect(state: &ApiState) {
    let scan = Scan::take(state);
    for (table, obj) in &scan.objects {
        let key = key_of(obj);
        let def = table.def();
        if deleting(obj) {
            if def.builtin == Some(Builtin::Namespace) {
                finalize_namespace(state, &scan, table, obj);
            }
            if has_finalizer(obj, "orphan") {
                let owner_uid = uid(obj).to_string();
                for (dep_table, dep) in scan.dependents_of(obj) {
                    remove_owner_refs(state, dep_table, &key_of(dep), |r| {
                        r["uid"] == owner_uid.as_str()
                    });
                }
                remove_finalizer(state, table, &key, "orphan");
            }
            if has_finalizer(obj, "foregroundDeletion") {
                let owner_uid = uid(obj).to_string();
                let mut blocking = 0;
                for (dep_table, dep) in scan.dependents_of(obj) {
                    let blocks = owner_refs(dep).iter().any(|r| {
                        r["uid"] == owner_uid.as_str()
                            && r["blockOwnerDeletion"] == Value::Bool(true)
                    });
                    if blocks {
                        blocking += 1;
                    }
                    if !deleting(dep) {
                        let opts = DeleteOptions {
                            propagation_policy: Some("Foreground".into()),
                            ..DeleteOptions::default()
                        };
                        delete_quietly(state, dep_table, &key_of(dep), &opts);
                    }
                }
                if blocking == 0 {
                    remove_finalizer(state, table, &key, "foregroundDeletion");
                }
            }
        }
        let refs = owner_refs(obj);
        if refs.is_empty() {
            continue;
        }
        let gone: Vec<&Value> = refs.iter().filter(|r| !scan.owner_exists(obj, r)).collect();
        if gone.is_empty() {
            continue;
        }
        if gone.len() == refs.len() {
            if !deleting(obj) {
                delete_quietly(state, table, &key, &background());
            }
        } else {
            let gone_uids: Vec<Value> = gone.iter().map(|r| r["uid"].clone()).collect();
            remove_owner_refs(state, table, &key, |r| gone_uids.contains(&r["uid"]));
        }
    }
}

fn finalize_namespace(state: &ApiState, scan: &Scan, table: &Arc<Table>, ns: &Value) {
    let name = ns["metadata"]["name"].as_str().unwrap_or("");
    let mut remaining = 0;
    for (t, obj) in &scan.objects {
        if !t.def().namespaced || obj["metadata"]["namespace"].as_str() != Some(name) {
            continue;
        }
        remaining += 1;
        if !deleting(obj) {
            delete_quietly(state, t, &key_of(obj), &background());
        }
    }
    if remaining == 0 {
        system_update(state, table, &key_of(ns), |obj| {
            match obj["spec"]
                .get_mut("finalizers")
                .and_then(Value::as_array_mut)
            {
                Some(list) if !list.is_empty() => {
                    list.clear();
                    true
                }
                _ => false,
            }
        });
    }
}

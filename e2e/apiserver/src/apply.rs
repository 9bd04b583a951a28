//! Server-side apply, approximated.
//!
//! Faithful: the applied configuration is merged into the live object (maps
//! recursively, associative lists by key, sets by value, other lists
//! atomically); each manager's applied fields are recorded in
//! `metadata.managedFields` (operation `Apply`, real `FieldsV1` encoding, one
//! entry per manager and subresource); fields a manager applied before and
//! no longer applies are removed unless another manager still owns them;
//! applying a field another `Apply` manager owns with a different value is a
//! 409 conflict unless `force=true`, which moves ownership; an apply that
//! changes nothing is a no-op.
//!
//! Approximated: list semantics of built-in types come from a table of
//! field names (see [`crate::fields`]) rather than the Go type schemas;
//! non-apply writers (PUT, merge/JSON/strategic patches) are not recorded as
//! `Update` managers — instead a field they change is dropped from every
//! apply manager's set, so it is neither removed later nor a conflict.

use serde_json::{Map, Value, json};

use crate::fields::{self, FieldSet, ListType, PathElement, Shape};
use crate::status::Cause;

/// Which part of the object an apply (or write) may touch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// The whole object (resource has no status subresource).
    Whole,
    /// Everything but `.status` (main resource of a kind with `/status`).
    MainOnly,
    /// Only `.status` (the `/status` subresource).
    StatusOnly,
}

impl Scope {
    fn subresource(self) -> Option<&'static str> {
        (self == Scope::StatusOnly).then_some("status")
    }
}

pub struct ApplyRequest<'a> {
    pub manager: &'a str,
    pub force: bool,
    pub scope: Scope,
    pub shape: Shape<'a>,
    pub api_version: &'a str,
    pub now: &'a str,
}

#[derive(Clone, Debug)]
struct Entry {
    manager: String,
    subresource: Option<String>,
    apply: bool,
    set: FieldSet,
    raw: Value,
}

fn entries(object: &Value) -> Vec<Entry> {
    object
        .pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .map(|raw| Entry {
                    manager: raw["manager"].as_str().unwrap_or("").to_string(),
                    subresource: raw["subresource"].as_str().map(str::to_string),
                    apply: raw["operation"] == "Apply",
                    set: raw
                        .get("fieldsV1")
                        .map(fields::from_fields_v1)
                        .unwrap_or_default(),
                    raw: raw.clone(),
                })
                .collect()
        })
        .unwrap_or_default()
}

fn store_entries(object: &mut Value, entries: Vec<Entry>) {
    let list: Vec<Value> = entries
        .into_iter()
        .filter(|e| !e.set.is_empty())
        .map(|e| e.raw)
        .collect();
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        if list.is_empty() {
            meta.remove("managedFields");
        } else {
            meta.insert("managedFields".into(), Value::Array(list));
        }
    }
}

/// The part of an applied configuration that a scope lets through.
fn scoped(config: &Value, scope: Scope) -> Value {
    let mut out = config.clone();
    if let Value::Object(map) = &mut out {
        match scope {
            Scope::Whole => {}
            Scope::MainOnly => {
                map.remove("status");
            }
            Scope::StatusOnly => {
                map.retain(|k, _| matches!(k.as_str(), "status" | "apiVersion" | "kind"))
            }
        }
    }
    out
}

fn owned_by(set: &FieldSet, path: &[PathElement]) -> bool {
    set.range(path.to_vec()..)
        .next()
        .is_some_and(|p| p.starts_with(path))
}

/// Applies `config` onto `live` (for a create, a skeleton with metadata
/// only). Returns the new object, or the conflicting fields.
pub fn apply(live: &Value, config: &Value, req: &ApplyRequest<'_>) -> Result<Value, Vec<Cause>> {
    let config = scoped(config, req.scope);
    let mut applied = FieldSet::new();
    fields::collect(&config, req.shape, true, &mut vec![], &mut applied);

    let mut all = entries(live);
    let mine = all.iter().position(|e| {
        e.apply && e.manager == req.manager && e.subresource.as_deref() == req.scope.subresource()
    });
    let previous = mine.map(|i| all[i].set.clone()).unwrap_or_default();

    let mut conflicts = vec![];
    for path in &applied {
        if matches!(
            path.last(),
            Some(PathElement::Key(_) | PathElement::Value(_))
        ) {
            continue;
        }
        let wanted = fields::lookup(&config, path);
        if fields::lookup(live, path) == wanted {
            continue;
        }
        for (i, other) in all.iter().enumerate() {
            if Some(i) != mine && other.set.contains(path) {
                conflicts.push((i, path.clone()));
            }
        }
    }
    if !conflicts.is_empty() {
        if !req.force {
            return Err(conflicts
                .into_iter()
                .map(|(i, path)| Cause {
                    reason: "FieldManagerConflict".into(),
                    message: format!("conflict with \"{}\"", all[i].manager),
                    field: fields::display(&path),
                })
                .collect());
        }
        for (i, path) in conflicts {
            all[i].set.remove(&path);
        }
    }

    let others: FieldSet = all
        .iter()
        .enumerate()
        .filter(|(i, _)| Some(*i) != mine)
        .flat_map(|(_, e)| e.set.iter().cloned())
        .collect();
    let mut result = live.clone();
    // Ancestors sort first: a whole list element goes before its fields
    // (whose removal would otherwise drop the element's key first).
    for path in previous.difference(&applied) {
        if !owned_by(&others, path) && !owned_by(&applied, path) {
            fields::remove(&mut result, path);
        }
    }
    merge(&mut result, &config, req.shape, true);

    let changed_set = previous != applied;
    let mut entry = match mine {
        Some(i) => all.remove(i),
        None => Entry {
            manager: req.manager.to_string(),
            subresource: req.scope.subresource().map(str::to_string),
            apply: true,
            set: FieldSet::new(),
            raw: Value::Null,
        },
    };
    let object_changed = strip_managed(&result) != strip_managed(live);
    if changed_set || object_changed || entry.raw.is_null() {
        let mut raw = json!({
            "manager": req.manager,
            "operation": "Apply",
            "apiVersion": req.api_version,
            "time": req.now,
            "fieldsType": "FieldsV1",
            "fieldsV1": fields::to_fields_v1(&applied),
        });
        if let Some(sub) = req.scope.subresource() {
            raw["subresource"] = json!(sub);
        }
        entry.raw = raw;
    }
    entry.set = applied;
    let position = mine.unwrap_or(all.len()).min(all.len());
    all.insert(position, entry);
    for e in &mut all {
        if e.apply {
            e.raw["fieldsV1"] = fields::to_fields_v1(&e.set);
        }
    }
    store_entries(&mut result, all);
    Ok(result)
}

fn strip_managed(object: &Value) -> Value {
    let mut copy = object.clone();
    if let Some(meta) = copy.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("managedFields");
    }
    copy
}

/// After a non-apply write: fields whose value changed are no longer owned
/// by the apply managers that set them.
pub fn release_changed(old: &Value, new: &mut Value) {
    let mut all = entries(new);
    let mut touched = false;
    for e in all.iter_mut().filter(|e| e.apply) {
        let before = e.set.len();
        e.set.retain(|path| {
            let (a, b) = (fields::lookup(old, path), fields::lookup(new, path));
            match path.last() {
                Some(PathElement::Key(_) | PathElement::Value(_)) => a.is_some() == b.is_some(),
                _ => a == b,
            }
        });
        if e.set.len() != before {
            e.raw["fieldsV1"] = fields::to_fields_v1(&e.set);
            touched = true;
        }
    }
    if touched {
        store_entries(new, all);
    }
}

fn merge(live: &mut Value, config: &Value, shape: Shape<'_>, at_root: bool) {
    let (Value::Object(l), Value::Object(c)) = (&mut *live, config) else {
        *live = config.clone();
        return;
    };
    for (key, value) in c {
        if at_root && key == "metadata" {
            merge_metadata(l, value);
            continue;
        }
        if value.is_null() {
            l.remove(key);
            continue;
        }
        let child_shape = shape.field(key, at_root);
        match l.get_mut(key) {
            Some(existing) => merge_value(key, existing, value, child_shape),
            None => {
                l.insert(key.clone(), value.clone());
            }
        }
    }
}

fn merge_metadata(live: &mut Map<String, Value>, config: &Value) {
    let meta = live
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    for key in ["labels", "annotations", "ownerReferences", "finalizers"] {
        let Some(value) = config.get(key) else {
            continue;
        };
        let Some(m) = meta.as_object_mut() else {
            return;
        };
        match m.get_mut(key) {
            Some(existing) if !value.is_null() => merge_value(key, existing, value, Shape::Builtin),
            _ if value.is_null() => {
                m.remove(key);
            }
            _ => {
                m.insert(key.into(), value.clone());
            }
        }
    }
}

fn merge_value(name: &str, live: &mut Value, config: &Value, shape: Shape<'_>) {
    match (&mut *live, config) {
        (Value::Object(_), Value::Object(_)) => merge(live, config, shape, false),
        (Value::Array(l), Value::Array(c)) => match shape.list_type(name, c) {
            ListType::Map(keys) => {
                for element in c {
                    match fields::find_element(l, &fields::element_key(element, &keys)) {
                        Some(i) => merge_value("", &mut l[i], element, shape.items()),
                        None => l.push(element.clone()),
                    }
                }
            }
            ListType::Set => {
                for element in c {
                    if !l.contains(element) {
                        l.push(element.clone());
                    }
                }
            }
            ListType::Atomic => *live = config.clone(),
        },
        _ => *live = config.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req<'a>(manager: &'a str, force: bool) -> ApplyRequest<'a> {
        ApplyRequest {
            manager,
            force,
            scope: Scope::Whole,
            shape: Shape::Builtin,
            api_version: "v1",
            now: "2026-01-01T00:00:00Z",
        }
    }

    #[test]
    fn removes_fields_the_manager_stopped_applying() {
        let live = json!({"metadata": {"name": "x"}});
        let first =
            json!({"metadata": {"labels": {"a": "1", "b": "2"}}, "data": {"k": "v", "j": "w"}});
        let once = apply(&live, &first, &req("m", false)).unwrap();
        assert_eq!(once["data"], json!({"k": "v", "j": "w"}));
        let second = json!({"metadata": {"labels": {"a": "1"}}, "data": {"k": "v"}});
        let twice = apply(&once, &second, &req("m", false)).unwrap();
        assert_eq!(twice["data"], json!({"k": "v"}));
        assert_eq!(twice["metadata"]["labels"], json!({"a": "1"}));
        // Re-applying the same configuration changes nothing.
        assert_eq!(apply(&twice, &second, &req("m", false)).unwrap(), twice);
    }

    #[test]
    fn conflicts_between_managers() {
        let live = json!({"metadata": {"name": "x"}});
        let a = apply(&live, &json!({"data": {"k": "1"}}), &req("a", false)).unwrap();
        let err = apply(&a, &json!({"data": {"k": "2"}}), &req("b", false)).unwrap_err();
        assert_eq!(err[0].field, ".data.k");
        assert_eq!(err[0].message, "conflict with \"a\"");
        // Same value: shared ownership, no conflict.
        let shared = apply(&a, &json!({"data": {"k": "1"}}), &req("b", false)).unwrap();
        // a stops applying k: b still owns it, so it stays.
        let a2 = apply(&shared, &json!({"data": {"other": "x"}}), &req("a", false)).unwrap();
        assert_eq!(a2["data"], json!({"k": "1", "other": "x"}));
        let forced = apply(&a, &json!({"data": {"k": "2"}}), &req("b", true)).unwrap();
        assert_eq!(forced["data"]["k"], "2");
        let managers: Vec<&str> = forced["metadata"]["managedFields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["manager"].as_str().unwrap())
            .collect();
        assert_eq!(managers, vec!["b"]);
    }

    #[test]
    fn containers_merge_by_name() {
        let live = json!({"metadata": {"name": "x"}, "spec": {"containers": [{"name": "a", "image": "1", "imagePullPolicy": "IfNotPresent"}]}});
        let out = apply(&live, &json!({"spec": {"containers": [{"name": "a", "image": "2"}, {"name": "b", "image": "3"}]}}), &req("m", false)).unwrap();
        assert_eq!(
            out["spec"]["containers"],
            json!([{"name": "a", "image": "2", "imagePullPolicy": "IfNotPresent"}, {"name": "b", "image": "3"}])
        );
        let out2 = apply(
            &out,
            &json!({"spec": {"containers": [{"name": "a", "image": "2"}]}}),
            &req("m", false),
        )
        .unwrap();
        assert_eq!(
            out2["spec"]["containers"],
            json!([{"name": "a", "image": "2", "imagePullPolicy": "IfNotPresent"}])
        );
    }
}

//! Field paths and list semantics shared by strategic merge patch and
//! server-side apply.
//!
//! A path element is a field (`f:name`), an element of an associative list
//! identified by its key fields (`k:{"name":"db"}`), or a member of a set
//! (`v:"finalizer"`) — the same vocabulary as `managedFields.fieldsV1`.

use std::collections::BTreeSet;

use serde_json::{Map, Value};

/// How a list merges.
#[derive(Clone, Debug, PartialEq)]
pub enum ListType {
    /// Replaced as a whole.
    Atomic,
    /// A set of scalars, merged by value.
    Set,
    /// Objects merged by these key fields.
    Map(Vec<String>),
}

/// Where list semantics come from: the merge-key table of built-in types,
/// or a CRD's structural schema (`x-kubernetes-list-type`).
#[derive(Clone, Copy, Debug)]
pub enum Shape<'a> {
    Builtin,
    /// `None`: no schema below this point (unknown fields preserved), so
    /// lists are atomic.
    Schema(Option<&'a Value>),
}

impl<'a> Shape<'a> {
    /// The shape of a field. Object metadata always follows the built-in
    /// rules, as ObjectMeta does in a custom resource.
    pub fn field(self, name: &str, at_root: bool) -> Shape<'a> {
        match self {
            Shape::Builtin => Shape::Builtin,
            Shape::Schema(_) if at_root && name == "metadata" => Shape::Builtin,
            Shape::Schema(None) => Shape::Schema(None),
            Shape::Schema(Some(s)) => Shape::Schema(
                s.get("properties")
                    .and_then(|p| p.get(name))
                    .or_else(|| s.get("additionalProperties").filter(|a| a.is_object())),
            ),
        }
    }

    pub fn items(self) -> Shape<'a> {
        match self {
            Shape::Builtin => Shape::Builtin,
            Shape::Schema(s) => Shape::Schema(s.and_then(|s| s.get("items"))),
        }
    }

    /// The list type of field `name` (whose shape is `self`) holding `elements`.
    pub fn list_type(self, name: &str, elements: &[Value]) -> ListType {
        match self {
            Shape::Builtin => builtin_list_type(name, elements),
            Shape::Schema(None) => ListType::Atomic,
            Shape::Schema(Some(s)) => match s.get("x-kubernetes-list-type").and_then(Value::as_str)
            {
                Some("set") => ListType::Set,
                Some("map") => {
                    let keys: Vec<String> = s
                        .get("x-kubernetes-list-map-keys")
                        .and_then(Value::as_array)
                        .map(|ks| {
                            ks.iter()
                                .filter_map(|k| k.as_str().map(str::to_string))
                                .collect()
                        })
                        .unwrap_or_default();
                    if keys.is_empty() || !elements.iter().all(Value::is_object) {
                        ListType::Atomic
                    } else {
                        ListType::Map(keys)
                    }
                }
                _ => ListType::Atomic,
            },
        }
    }
}

/// Merge keys of the built-in types, by field name (the `patchMergeKey` /
/// `listMapKeys` of the Kubernetes Go types that Capstan's objects use).
fn builtin_list_type(name: &str, elements: &[Value]) -> ListType {
    let keys: &[&str] = match name {
        "finalizers" => return ListType::Set,
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "imagePullSecrets"
        | "resourceClaims" => &["name"],
        "volumeMounts" => &["mountPath"],
        "volumeDevices" => &["devicePath"],
        "conditions" => &["type"],
        "ownerReferences" => &["uid"],
        "hostAliases" => &["ip"],
        "topologySpreadConstraints" => &["topologyKey", "whenUnsatisfiable"],
        "ports" => {
            if elements.iter().all(|e| e.get("containerPort").is_some()) {
                &["containerPort"]
            } else {
                &["port"]
            }
        }
        _ => return ListType::Atomic,
    };
    if elements
        .iter()
        .all(|e| e.get(keys[0]).is_some_and(|k| !k.is_null()))
    {
        ListType::Map(keys.iter().map(|k| k.to_string()).collect())
    } else {
        ListType::Atomic
    }
}

/// The canonical key of a list element: its key fields as sorted JSON.
pub fn element_key(element: &Value, keys: &[String]) -> String {
    let mut map = Map::new();
    for k in keys {
        if let Some(v) = element.get(k) {
            map.insert(k.clone(), v.clone());
        }
    }
    Value::Object(map).to_string()
}

/// Index of the element of `list` whose key fields match `key` (canonical JSON).
pub fn find_element(list: &[Value], key: &str) -> Option<usize> {
    let wanted: Map<String, Value> = serde_json::from_str(key).ok()?;
    let keys: Vec<String> = wanted.keys().cloned().collect();
    list.iter()
        .position(|e| e.is_object() && element_key(e, &keys) == key)
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum PathElement {
    Field(String),
    Key(String),
    Value(String),
}

impl PathElement {
    fn encode(&self) -> String {
        match self {
            PathElement::Field(f) => format!("f:{f}"),
            PathElement::Key(k) => format!("k:{k}"),
            PathElement::Value(v) => format!("v:{v}"),
        }
    }

    fn decode(s: &str) -> Option<PathElement> {
        let (tag, rest) = s.split_at_checked(2)?;
        match tag {
            "f:" => Some(PathElement::Field(rest.to_string())),
            "k:" => Some(PathElement::Key(rest.to_string())),
            "v:" => Some(PathElement::Value(rest.to_string())),
            _ => None,
        }
    }
}

pub type Path = Vec<PathElement>;
pub type FieldSet = BTreeSet<Path>;

/// `.spec.containers[name="db"].image`, for conflict messages.
pub fn display(path: &[PathElement]) -> String {
    let mut out = String::new();
    for el in path {
        match el {
            PathElement::Field(f) => {
                out.push('.');
                out.push_str(f);
            }
            PathElement::Key(k) => {
                let map: Map<String, Value> = serde_json::from_str(k).unwrap_or_default();
                let parts: Vec<String> = map.iter().map(|(k, v)| format!("{k}={v}")).collect();
                out.push_str(&format!("[{}]", parts.join(",")));
            }
            PathElement::Value(v) => out.push_str(&format!("[={v}]")),
        }
    }
    out
}

/// The fields an applied configuration sets: its leaves, the elements of
/// its associative lists and the members of its sets.
pub fn collect(
    value: &Value,
    shape: Shape<'_>,
    at_root: bool,
    prefix: &mut Path,
    out: &mut FieldSet,
) {
    let Value::Object(map) = value else {
        out.insert(prefix.clone());
        return;
    };
    for (name, child) in map {
        if at_root && matches!(name.as_str(), "apiVersion" | "kind") {
            continue;
        }
        prefix.push(PathElement::Field(name.clone()));
        let child_shape = shape.field(name, at_root);
        if at_root && name == "metadata" {
            collect_metadata(child, prefix, out);
        } else {
            collect_child(name, child, child_shape, prefix, out);
        }
        prefix.pop();
    }
}

fn collect_metadata(meta: &Value, prefix: &mut Path, out: &mut FieldSet) {
    let Value::Object(map) = meta else { return };
    for name in ["labels", "annotations", "ownerReferences", "finalizers"] {
        if let Some(child) = map.get(name) {
            prefix.push(PathElement::Field(name.to_string()));
            collect_child(name, child, Shape::Builtin, prefix, out);
            prefix.pop();
        }
    }
}

fn collect_child(
    name: &str,
    child: &Value,
    shape: Shape<'_>,
    prefix: &mut Path,
    out: &mut FieldSet,
) {
    match child {
        Value::Object(m) if !m.is_empty() => collect(child, shape, false, prefix, out),
        Value::Array(items) if !items.is_empty() => match shape.list_type(name, items) {
            ListType::Atomic => {
                out.insert(prefix.clone());
            }
            ListType::Set => {
                for item in items {
                    prefix.push(PathElement::Value(item.to_string()));
                    out.insert(prefix.clone());
                    prefix.pop();
                }
            }
            ListType::Map(keys) => {
                for item in items {
                    prefix.push(PathElement::Key(element_key(item, &keys)));
                    out.insert(prefix.clone());
                    collect(item, shape.items(), false, prefix, out);
                    prefix.pop();
                }
            }
        },
        _ => {
            out.insert(prefix.clone());
        }
    }
}

/// The node at `path`, if present.
pub fn lookup<'a>(value: &'a Value, path: &[PathElement]) -> Option<&'a Value> {
    let mut node = value;
    for el in path {
        node = match el {
            PathElement::Field(f) => node.get(f)?,
            PathElement::Key(k) => {
                let list = node.as_array()?;
                &list[find_element(list, k)?]
            }
            PathElement::Value(v) => {
                let wanted: Value = serde_json::from_str(v).ok()?;
                node.as_array()?.iter().find(|x| **x == wanted)?
            }
        };
    }
    Some(node)
}

fn lookup_mut<'a>(value: &'a mut Value, path: &[PathElement]) -> Option<&'a mut Value> {
    let mut node = value;
    for el in path {
        node = match el {
            PathElement::Field(f) => node.get_mut(f)?,
            PathElement::Key(k) => {
                let list = node.as_array_mut()?;
                let i = find_element(list, k)?;
                &mut list[i]
            }
            PathElement::Value(_) => return None,
        };
    }
    Some(node)
}

/// Removes the node at `path`; maps and lists left empty by the removal
/// are removed too (never `metadata` itself).
pub fn remove(value: &mut Value, path: &[PathElement]) {
    let Some((last, parent_path)) = path.split_last() else {
        return;
    };
    let Some(parent) = lookup_mut(value, parent_path) else {
        return;
    };
    let removed = match (last, parent) {
        (PathElement::Field(f), Value::Object(map)) => map.remove(f).is_some(),
        (PathElement::Key(k), Value::Array(list)) => match find_element(list, k) {
            Some(i) => {
                list.remove(i);
                true
            }
            None => false,
        },
        (PathElement::Value(v), Value::Array(list)) => {
            let wanted: Value = serde_json::from_str(v).unwrap_or(Value::Null);
            let before = list.len();
            list.retain(|x| *x != wanted);
            list.len() != before
        }
        _ => false,
    };
    let is_metadata = matches!(parent_path, [PathElement::Field(f)] if f == "metadata");
    if removed
        && !parent_path.is_empty()
        && !is_metadata
        && lookup(value, parent_path).is_some_and(|p| match p {
            Value::Object(m) => m.is_empty(),
            Value::Array(a) => a.is_empty(),
            _ => false,
        })
    {
        remove(value, parent_path);
    }
}

/// `managedFields[].fieldsV1` form of a field set.
pub fn to_fields_v1(set: &FieldSet) -> Value {
    let mut root = Map::new();
    for path in set {
        insert_path(&mut root, path);
    }
    mark_owned(&mut root, &mut vec![], set);
    Value::Object(root)
}

fn insert_path(node: &mut Map<String, Value>, path: &[PathElement]) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    if let Value::Object(child) = node
        .entry(first.encode())
        .or_insert_with(|| Value::Object(Map::new()))
    {
        insert_path(child, rest);
    }
}

/// A node that is owned itself and also has owned children gets a "."
/// entry (an associative list element and its fields, for instance).
fn mark_owned(node: &mut Map<String, Value>, prefix: &mut Path, set: &FieldSet) {
    for (key, child) in node.iter_mut() {
        let (Some(el), Value::Object(children)) = (PathElement::decode(key), child) else {
            continue;
        };
        prefix.push(el);
        if !children.is_empty() {
            mark_owned(children, prefix, set);
            if set.contains(prefix) {
                children.insert(".".into(), Value::Object(Map::new()));
            }
        }
        prefix.pop();
    }
}

/// Parses `fieldsV1` back into a field set.
pub fn from_fields_v1(tree: &Value) -> FieldSet {
    let mut out = FieldSet::new();
    let mut prefix = vec![];
    walk_fields_v1(tree, &mut prefix, &mut out);
    out
}

fn walk_fields_v1(node: &Value, prefix: &mut Path, out: &mut FieldSet) {
    let Some(map) = node.as_object() else { return };
    if (map.is_empty() || map.contains_key(".")) && !prefix.is_empty() {
        out.insert(prefix.clone());
    }
    for (k, child) in map {
        if let Some(el) = PathElement::decode(k) {
            prefix.push(el);
            walk_fields_v1(child, prefix, out);
            prefix.pop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fields_v1_round_trip() {
        let cfg = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "labels": {"a": "b"}, "finalizers": ["x"]},
            "spec": {"containers": [{"name": "db", "image": "pg", "env": [{"name": "A", "value": "1"}]}],
                     "tolerations": [{"key": "k"}]}
        });
        let mut set = FieldSet::new();
        collect(&cfg, Shape::Builtin, true, &mut vec![], &mut set);
        let tree = to_fields_v1(&set);
        assert_eq!(
            tree["f:spec"]["f:containers"]["k:{\"name\":\"db\"}"]["."],
            json!({})
        );
        assert_eq!(tree["f:spec"]["f:tolerations"], json!({}));
        assert_eq!(tree["f:metadata"]["f:finalizers"]["v:\"x\""], json!({}));
        assert!(tree["f:metadata"].get("f:name").is_none());
        assert_eq!(from_fields_v1(&tree), set);
    }

    #[test]
    fn remove_cleans_empty_parents() {
        let mut v = json!({"metadata": {"annotations": {"a": "1"}}, "spec": {"containers": [{"name": "x", "image": "i"}]}});
        remove(
            &mut v,
            &[
                PathElement::Field("metadata".into()),
                PathElement::Field("annotations".into()),
                PathElement::Field("a".into()),
            ],
        );
        assert_eq!(v["metadata"], json!({}));
        remove(
            &mut v,
            &[
                PathElement::Field("spec".into()),
                PathElement::Field("containers".into()),
                PathElement::Key("{\"name\":\"x\"}".into()),
            ],
        );
        assert_eq!(v, json!({"metadata": {}}));
    }
}

//! JSON merge patch, JSON patch and strategic merge patch.

use serde_json::{Map, Value};

use crate::fields::{ListType, Shape, element_key, find_element};
use crate::status::ApiError;

/// RFC 7386 JSON merge patch.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    json_patch::merge(target, patch);
}

/// RFC 6902 JSON patch.
pub fn json_patch(target: &mut Value, patch: &[u8]) -> Result<(), ApiError> {
    let ops: json_patch::Patch = serde_json::from_slice(patch)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON patch: {e}")))?;
    json_patch::patch(target, &ops).map_err(|e| {
        ApiError::new(
            422,
            "Invalid",
            format!("the server rejected our request due to an error in our request: {e}"),
        )
    })
}

/// Strategic merge patch for built-in types: maps merge recursively, lists
/// with a known merge key (containers, env, volumes, conditions,
/// ownerReferences, …, see [`crate::fields`]) merge element by element,
/// `finalizers` merges as a set, other lists are replaced. Honours the
/// directives `$patch: replace|delete` (on maps and list elements),
/// `$retainKeys` and `$deleteFromPrimitiveList/<field>`; drops
/// `$setElementOrder/<field>` (order is kept as stored, new elements last).
pub fn strategic_merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => merge_map(t, p),
        (t, p) => *t = strip_directives(p),
    }
}

fn merge_map(target: &mut Map<String, Value>, patch: &Map<String, Value>) {
    match patch.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            *target = match strip_directives(&Value::Object(patch.clone())) {
                Value::Object(m) => m,
                _ => Map::new(),
            };
            return;
        }
        Some("delete") => {
            target.clear();
            return;
        }
        _ => {}
    }
    if let Some(Value::Array(keep)) = patch.get("$retainKeys") {
        target.retain(|k, _| keep.iter().any(|x| x.as_str() == Some(k)));
    }
    for (key, value) in patch {
        if let Some(field) = key.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(list)), Value::Array(drop)) = (target.get_mut(field), value) {
                list.retain(|x| !drop.contains(x));
            }
            continue;
        }
        if key.starts_with('$') {
            continue;
        }
        if value.is_null() {
            target.remove(key);
            continue;
        }
        match (target.get_mut(key), value) {
            (Some(Value::Object(t)), Value::Object(p)) => {
                if p.get("$patch").and_then(Value::as_str) == Some("delete") {
                    target.remove(key);
                } else {
                    merge_map(t, p);
                }
            }
            (Some(Value::Array(t)), Value::Array(p)) => merge_list(key, t, p),
            _ => {
                target.insert(key.clone(), strip_directives(value));
            }
        }
    }
}

fn merge_list(name: &str, target: &mut Vec<Value>, patch: &[Value]) {
    let elements: Vec<Value> = patch
        .iter()
        .filter(|e| e.get("$patch").and_then(Value::as_str) != Some("replace"))
        .cloned()
        .collect();
    let replace = elements.len() != patch.len();
    match Shape::Builtin.list_type(name, &elements) {
        ListType::Map(keys) if !replace => {
            for element in &elements {
                let found = find_element(target, &element_key(element, &keys));
                match (element.get("$patch").and_then(Value::as_str), found) {
                    (Some("delete"), Some(i)) => {
                        target.remove(i);
                    }
                    (Some("delete"), None) => {}
                    (_, Some(i)) => strategic_merge(&mut target[i], element),
                    (_, None) => target.push(strip_directives(element)),
                }
            }
        }
        ListType::Set if !replace => {
            for element in elements {
                if !target.contains(&element) {
                    target.push(element);
                }
            }
        }
        _ => *target = elements.iter().map(strip_directives).collect(),
    }
}

fn strip_directives(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (k.clone(), strip_directives(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(strip_directives).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strategic_merges_containers_by_name() {
        let mut pod = json!({"spec": {"containers": [
            {"name": "a", "image": "x", "env": [{"name": "E", "value": "1"}]},
            {"name": "b", "image": "y"}
        ], "tolerations": [{"key": "t1"}]}, "metadata": {"finalizers": ["f1"]}});
        let patch = json!({
            "metadata": {"finalizers": ["f2"]},
            "spec": {
                "$setElementOrder/containers": [{"name": "a"}, {"name": "b"}],
                "containers": [
                    {"name": "a", "env": [{"name": "F", "value": "2"}]},
                    {"name": "b", "$patch": "delete"},
                    {"name": "c", "image": "z"}
                ],
                "tolerations": [{"key": "t2"}]
            }
        });
        strategic_merge(&mut pod, &patch);
        assert_eq!(
            pod,
            json!({"spec": {"containers": [
                {"name": "a", "image": "x", "env": [{"name": "E", "value": "1"}, {"name": "F", "value": "2"}]},
                {"name": "c", "image": "z"}
            ], "tolerations": [{"key": "t2"}]}, "metadata": {"finalizers": ["f1", "f2"]}})
        );
    }

    #[test]
    fn strategic_directives() {
        let mut obj =
            json!({"metadata": {"labels": {"a": "1", "b": "2"}, "finalizers": ["x", "y"]}});
        strategic_merge(
            &mut obj,
            &json!({"metadata": {"labels": {"$patch": "replace", "c": "3"}, "$deleteFromPrimitiveList/finalizers": ["x"]}}),
        );
        assert_eq!(
            obj,
            json!({"metadata": {"labels": {"c": "3"}, "finalizers": ["y"]}})
        );
    }
}

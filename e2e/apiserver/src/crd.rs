//! CustomResourceDefinitions: turning a CRD into a served resource, and the
//! admission of custom resources against its structural schema — pruning,
//! defaults, OpenAPI value validation and CEL `x-kubernetes-validations`
//! (evaluated by kube's CEL engine, transition rules included).

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};

use kube::core::cel::{CompiledSchema, Validator, apply_defaults, compile_schema};
use regex::Regex;
use serde_json::{Map, Value};

use crate::resources::{PrinterColumn, ResourceDef};
use crate::status::Cause;

/// The schema of one served version, with its CEL rules compiled.
pub struct VersionSchema {
    pub schema: Value,
    compiled: CompiledSchema,
}

impl std::fmt::Debug for VersionSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VersionSchema").finish_non_exhaustive()
    }
}

#[derive(Debug, Default)]
pub struct CrdSchemas {
    pub versions: HashMap<String, VersionSchema>,
}

fn invalid(field: &str, message: impl Into<String>) -> Cause {
    Cause {
        reason: "FieldValueInvalid".into(),
        message: message.into(),
        field: field.into(),
    }
}

fn required(field: &str) -> Cause {
    Cause {
        reason: "FieldValueRequired".into(),
        message: "Required value".into(),
        field: field.into(),
    }
}

/// The resource a CRD defines. Refuses CRDs a real server would refuse for
/// reasons that matter here: missing names, no served version, no schema,
/// CEL rules that do not compile.
pub fn resource_def(crd: &Value) -> Result<ResourceDef, Vec<Cause>> {
    let spec = &crd["spec"];
    let mut errors = vec![];
    let text = |v: &Value| v.as_str().unwrap_or("").to_string();
    let group = text(&spec["group"]);
    let names = &spec["names"];
    let plural = text(&names["plural"]);
    let kind = text(&names["kind"]);
    if group.is_empty() {
        errors.push(required("spec.group"));
    }
    if plural.is_empty() {
        errors.push(required("spec.names.plural"));
    }
    if kind.is_empty() {
        errors.push(required("spec.names.kind"));
    }
    let expected_name = format!("{plural}.{group}");
    if crd.pointer("/metadata/name").and_then(Value::as_str) != Some(expected_name.as_str()) {
        errors.push(invalid(
            "metadata.name",
            format!(
                "Invalid value: {:?}: must be spec.names.plural+\".\"+spec.group",
                crd.pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or("")
            ),
        ));
    }
    let scope = spec["scope"].as_str().unwrap_or("");
    if !matches!(scope, "Namespaced" | "Cluster") {
        errors.push(Cause {
            reason: "FieldValueNotSupported".into(),
            message: format!(
                "Unsupported value: {scope:?}: supported values: \"Cluster\", \"Namespaced\""
            ),
            field: "spec.scope".into(),
        });
    }
    let mut versions: Vec<(bool, String)> = vec![];
    let mut schemas = CrdSchemas::default();
    let mut status = false;
    let mut printer_columns = vec![];
    for (i, v) in spec["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let name = text(&v["name"]);
        let storage = v["storage"].as_bool().unwrap_or(false);
        if !v["served"].as_bool().unwrap_or(false) {
            continue;
        }
        let Some(schema) = v.pointer("/schema/openAPIV3Schema") else {
            errors.push(required(&format!(
                "spec.versions[{i}].schema.openAPIV3Schema"
            )));
            continue;
        };
        let compiled = compile_schema(schema);
        collect_compile_errors(
            &compiled,
            &format!("spec.versions[{i}].schema.openAPIV3Schema"),
            &mut errors,
        );
        if storage || versions.is_empty() {
            status = v.pointer("/subresources/status").is_some();
            printer_columns = v["additionalPrinterColumns"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| PrinterColumn {
                    name: text(&c["name"]),
                    type_: text(&c["type"]),
                    json_path: text(&c["jsonPath"]),
                })
                .collect();
        }
        versions.push((storage, name.clone()));
        schemas.versions.insert(
            name,
            VersionSchema {
                schema: schema.clone(),
                compiled,
            },
        );
    }
    if versions.is_empty() {
        errors.push(invalid("spec.versions", "Invalid value: must have exactly one version marked as storage version and at least one served"));
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    // The storage version first: it is the preferred version in discovery.
    versions.sort_by_key(|(storage, _)| !*storage);
    let list = |v: &Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(str::to_string))
            .collect()
    };
    Ok(ResourceDef {
        group,
        versions: versions.into_iter().map(|(_, n)| n).collect(),
        singular: names["singular"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| kind.to_ascii_lowercase()),
        kind,
        plural,
        short_names: list(&names["shortNames"]),
        categories: list(&names["categories"]),
        namespaced: scope == "Namespaced",
        status_subresource: status,
        tracks_generation: true,
        builtin: None,
        crd: Some(std::sync::Arc::new(schemas)),
        printer_columns,
    })
}

fn collect_compile_errors(node: &CompiledSchema, path: &str, errors: &mut Vec<Cause>) {
    for e in node.compilation_errors() {
        errors.push(invalid(
            &format!("{path}.x-kubernetes-validations"),
            format!("Invalid value: compilation failed: {e}"),
        ));
    }
    for (name, child) in &node.properties {
        collect_compile_errors(child, &format!("{path}.properties[{name}]"), errors);
    }
    if let Some(items) = &node.items {
        collect_compile_errors(items, &format!("{path}.items"), errors);
    }
    if let Some(additional) = &node.additional_properties {
        collect_compile_errors(additional, &format!("{path}.additionalProperties"), errors);
    }
}

/// `status` the API server reports on an established CRD.
pub fn established_status(crd: &Value, now: &str) -> Value {
    let condition = |t: &str, reason: &str, message: &str| serde_json::json!({"type": t, "status": "True", "lastTransitionTime": now, "reason": reason, "message": message});
    let stored: Vec<Value> = crd["spec"]["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["storage"].as_bool() == Some(true))
        .map(|v| v["name"].clone())
        .collect();
    serde_json::json!({
        "acceptedNames": crd["spec"]["names"],
        "conditions": [
            condition("NamesAccepted", "NoConflicts", "no conflicts found"),
            condition("Established", "InitialNamesAccepted", "the initial names have been accepted"),
        ],
        "storedVersions": stored,
    })
}

const OBJECT_META_FIELDS: &[&str] = &[
    "name",
    "generateName",
    "namespace",
    "selfLink",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "labels",
    "annotations",
    "ownerReferences",
    "finalizers",
    "managedFields",
];

/// Removes fields the schema does not declare (unless it preserves unknown
/// fields), and nulls in fields that are not nullable.
pub fn prune(schema: &Value, value: &mut Value, at_root: bool) {
    match value {
        Value::Object(map) => {
            let props = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties");
            let preserve = schema["x-kubernetes-preserve-unknown-fields"] == Value::Bool(true);
            let embedded = schema["x-kubernetes-embedded-resource"] == Value::Bool(true);
            let keys: Vec<String> = map.keys().cloned().collect();
            for key in keys {
                if (at_root || embedded) && matches!(key.as_str(), "apiVersion" | "kind") {
                    continue;
                }
                if (at_root || embedded) && key == "metadata" {
                    if let Some(Value::Object(meta)) = map.get_mut("metadata") {
                        meta.retain(|k, _| OBJECT_META_FIELDS.contains(&k.as_str()));
                    }
                    continue;
                }
                let child_schema = props
                    .and_then(|p| p.get(&key))
                    .or_else(|| additional.filter(|a| a.is_object()));
                match child_schema {
                    Some(child) => {
                        let nullable = child["nullable"] == Value::Bool(true);
                        if map.get(&key).is_some_and(Value::is_null) && !nullable {
                            map.remove(&key);
                        } else if let Some(v) = map.get_mut(&key) {
                            prune(child, v, false);
                        }
                    }
                    None if preserve || additional == Some(&Value::Bool(true)) => {}
                    None => {
                        map.remove(&key);
                    }
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for item in items {
                    prune(item_schema, item, false);
                }
            }
        }
        _ => {}
    }
}

/// Prunes, defaults and validates a custom resource in place. `old` is the
/// stored object on update (CEL transition rules see it as `oldSelf`).
pub fn admit(
    schema: &VersionSchema,
    validator: &Mutex<Validator>,
    object: &mut Value,
    old: Option<&Value>,
) -> Result<(), Vec<Cause>> {
    prune(&schema.schema, object, true);
    *object = apply_defaults(&schema.schema, object);
    let mut errors = vec![];
    validate_node(&schema.schema, object, "", true, &mut errors);
    if !errors.is_empty() {
        return Err(errors);
    }
    let result = validator
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .validate_compiled(&schema.compiled, object, old);
    match result {
        Ok(()) => Ok(()),
        Err(failures) => Err(failures
            .into_vec()
            .into_iter()
            .map(|f| {
                let reason = f
                    .reason
                    .clone()
                    .unwrap_or_else(|| "FieldValueInvalid".into());
                let message = match reason.as_str() {
                    "FieldValueForbidden" => format!("Forbidden: {}", f.message),
                    "FieldValueRequired" => format!("Required value: {}", f.message),
                    "FieldValueDuplicate" => format!("Duplicate value: {}", f.message),
                    _ => format!(
                        "Invalid value: \"{}\": {}",
                        type_name(value_at(object, &f.field_path)),
                        f.message
                    ),
                };
                Cause {
                    reason,
                    message,
                    field: f.field_path.trim_start_matches('.').to_string(),
                }
            })
            .collect()),
    }
}

/// The node at a `spec.items[2].name` style path.
fn value_at<'a>(object: &'a Value, path: &str) -> Option<&'a Value> {
    let mut node = object;
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (name, index) = match part.split_once('[') {
            Some((n, rest)) => (n, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (part, None),
        };
        if !name.is_empty() {
            node = node.get(name)?;
        }
        if let Some(i) = index {
            node = node.get(i)?;
        }
    }
    Some(node)
}

fn type_name(value: Option<&Value>) -> &'static str {
    match value {
        Some(Value::Object(_)) | None => "object",
        Some(Value::Array(_)) => "array",
        Some(Value::String(_)) => "string",
        Some(Value::Bool(_)) => "boolean",
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => "integer",
        Some(Value::Number(_)) => "number",
        Some(Value::Null) => "null",
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn render(value: &Value) -> String {
    match value {
        Value::Object(_) => "\"object\"".into(),
        Value::Array(_) => "\"array\"".into(),
        other => other.to_string(),
    }
}

fn is_integer(value: &Value) -> bool {
    value.is_i64() || value.is_u64() || value.as_f64().is_some_and(|f| f.fract() == 0.0)
}

fn type_ok(ty: &str, value: &Value) -> bool {
    match ty {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "integer" => is_integer(value),
        "number" => value.is_number(),
        "boolean" => value.is_boolean(),
        _ => true,
    }
}

fn pattern(text: &str) -> Option<Regex> {
    static CACHE: LazyLock<Mutex<HashMap<String, Option<Regex>>>> =
        LazyLock::new(|| Mutex::new(HashMap::new()));
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    cache
        .entry(text.to_string())
        .or_insert_with(|| Regex::new(text).ok())
        .clone()
}

/// OpenAPI v3 value validation of the structural-schema subset.
fn validate_node(
    schema: &Value,
    value: &Value,
    path: &str,
    at_root: bool,
    errors: &mut Vec<Cause>,
) {
    let here = if path.is_empty() { "<root>" } else { path };
    if value.is_null() {
        if schema["nullable"] != Value::Bool(true)
            && let Some(ty) = schema["type"].as_str()
        {
            errors.push(Cause {
                reason: "FieldValueTypeInvalid".into(),
                message: format!(
                    "Invalid value: \"null\": {here} in body must be of type {ty}: \"null\""
                ),
                field: path.into(),
            });
        }
        return;
    }
    if schema["x-kubernetes-int-or-string"] == Value::Bool(true) {
        if !(is_integer(value) || value.is_string()) {
            errors.push(Cause {
                reason: "FieldValueTypeInvalid".into(),
                message: format!(
                    "Invalid value: \"{}\": {here} in body must be of type integer or string: \"{}\"",
                    type_name(Some(value)),
                    type_name(Some(value))
                ),
                field: path.into(),
            });
            return;
        }
    } else if let Some(ty) = schema["type"].as_str()
        && !type_ok(ty, value)
    {
        errors.push(Cause {
            reason: "FieldValueTypeInvalid".into(),
            message: format!(
                "Invalid value: \"{}\": {here} in body must be of type {ty}: \"{}\"",
                type_name(Some(value)),
                type_name(Some(value))
            ),
            field: path.into(),
        });
        return;
    }
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(value)
    {
        let list: Vec<String> = allowed.iter().map(Value::to_string).collect();
        errors.push(Cause {
            reason: "FieldValueNotSupported".into(),
            message: format!(
                "Unsupported value: {}: supported values: {}",
                render(value),
                list.join(", ")
            ),
            field: path.into(),
        });
    }
    let mut bound = |ok: bool, what: String| {
        if !ok {
            errors.push(invalid(
                path,
                format!("Invalid value: {}: {here} in body {what}", render(value)),
            ));
        }
    };
    if let Some(n) = value.as_f64() {
        let exclusive = |k: &str| schema[k] == Value::Bool(true);
        if let Some(max) = schema["maximum"].as_f64() {
            if exclusive("exclusiveMaximum") {
                bound(n < max, format!("should be less than {max}"));
            } else {
                bound(n <= max, format!("should be less than or equal to {max}"));
            }
        }
        if let Some(min) = schema["minimum"].as_f64() {
            if exclusive("exclusiveMinimum") {
                bound(n > min, format!("should be greater than {min}"));
            } else {
                bound(
                    n >= min,
                    format!("should be greater than or equal to {min}"),
                );
            }
        }
        if let Some(m) = schema["multipleOf"].as_f64().filter(|m| *m > 0.0) {
            bound(
                (n / m).fract() == 0.0,
                format!("should be a multiple of {m}"),
            );
        }
    }
    if let Some(s) = value.as_str() {
        let len = s.chars().count() as u64;
        if let Some(max) = schema["maxLength"].as_u64()
            && len > max
        {
            errors.push(Cause {
                reason: "FieldValueTooLong".into(),
                message: format!("Too long: may not be more than {max} bytes"),
                field: path.into(),
            });
        }
        if let Some(min) = schema["minLength"].as_u64()
            && len < min
        {
            errors.push(invalid(
                path,
                format!(
                    "Invalid value: {}: {here} in body should be at least {min} chars long",
                    render(value)
                ),
            ));
        }
        if let Some(p) = schema["pattern"].as_str()
            && pattern(p).is_some_and(|re| !re.is_match(s))
        {
            errors.push(invalid(
                path,
                format!(
                    "Invalid value: {}: {here} in body should match '{p}'",
                    render(value)
                ),
            ));
        }
    }
    if let Some(items) = value.as_array() {
        let n = items.len() as u64;
        if let Some(max) = schema["maxItems"].as_u64()
            && n > max
        {
            errors.push(Cause {
                reason: "FieldValueTooMany".into(),
                message: format!("Too many: {n}: must have at most {max} items"),
                field: path.into(),
            });
        }
        if let Some(min) = schema["minItems"].as_u64()
            && n < min
        {
            errors.push(invalid(
                path,
                format!("Invalid value: {n}: {here} in body should have at least {min} items"),
            ));
        }
        validate_list_uniqueness(schema, items, path, errors);
        if let Some(item_schema) = schema.get("items") {
            for (i, item) in items.iter().enumerate() {
                validate_node(item_schema, item, &format!("{path}[{i}]"), false, errors);
            }
        }
    }
    if let Some(map) = value.as_object() {
        validate_object(schema, map, path, here, at_root, errors);
    }
    validate_combinators(schema, value, path, here, errors);
}

fn validate_object(
    schema: &Value,
    map: &Map<String, Value>,
    path: &str,
    here: &str,
    at_root: bool,
    errors: &mut Vec<Cause>,
) {
    let n = map.len() as u64;
    if let Some(max) = schema["maxProperties"].as_u64()
        && n > max
    {
        errors.push(Cause {
            reason: "FieldValueTooMany".into(),
            message: format!("Too many: {n}: must have at most {max} items"),
            field: path.into(),
        });
    }
    if let Some(min) = schema["minProperties"].as_u64()
        && n < min
    {
        errors.push(invalid(
            path,
            format!("Invalid value: {n}: {here} in body should have at least {min} properties"),
        ));
    }
    for req in schema["required"].as_array().into_iter().flatten() {
        if let Some(name) = req.as_str()
            && !map.contains_key(name)
        {
            errors.push(required(&join(path, name)));
        }
    }
    let props = schema.get("properties").and_then(Value::as_object);
    let additional = schema.get("additionalProperties").filter(|a| a.is_object());
    for (key, child) in map {
        if at_root && matches!(key.as_str(), "apiVersion" | "kind" | "metadata") {
            continue;
        }
        let child_path = join(path, key);
        if let Some(s) = props.and_then(|p| p.get(key)) {
            validate_node(s, child, &child_path, false, errors);
        } else if let Some(s) = additional {
            validate_node(s, child, &child_path, false, errors);
        }
    }
}

fn validate_list_uniqueness(schema: &Value, items: &[Value], path: &str, errors: &mut Vec<Cause>) {
    let list_type = schema["x-kubernetes-list-type"].as_str();
    let keys: Vec<String> = schema["x-kubernetes-list-map-keys"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|k| k.as_str().map(str::to_string))
        .collect();
    let mut seen: Vec<String> = vec![];
    for (i, item) in items.iter().enumerate() {
        let identity = match list_type {
            Some("set") => item.to_string(),
            Some("map") if !keys.is_empty() => crate::fields::element_key(item, &keys),
            _ if schema["uniqueItems"] == Value::Bool(true) => item.to_string(),
            _ => return,
        };
        if seen.contains(&identity) {
            errors.push(Cause {
                reason: "FieldValueDuplicate".into(),
                message: format!("Duplicate value: {identity}"),
                field: format!("{path}[{i}]"),
            });
        } else {
            seen.push(identity);
        }
    }
}

fn validate_combinators(
    schema: &Value,
    value: &Value,
    path: &str,
    here: &str,
    errors: &mut Vec<Cause>,
) {
    let passes = |s: &Value| {
        let mut e = vec![];
        validate_node(s, value, path, false, &mut e);
        e.is_empty()
    };
    for s in schema["allOf"].as_array().into_iter().flatten() {
        validate_node(s, value, path, false, errors);
    }
    if let Some(any) = schema["anyOf"].as_array()
        && !any.iter().any(passes)
    {
        errors.push(invalid(
            path,
            format!(
                "Invalid value: {}: {here} in body must validate at least one schema (anyOf)",
                render(value)
            ),
        ));
    }
    if let Some(one) = schema["oneOf"].as_array()
        && one.iter().filter(|s| passes(s)).count() != 1
    {
        errors.push(invalid(
            path,
            format!(
                "Invalid value: {}: {here} in body must validate one and only one schema (oneOf)",
                render(value)
            ),
        ));
    }
    if let Some(not) = schema.get("not")
        && passes(not)
    {
        errors.push(invalid(
            path,
            format!(
                "Invalid value: {}: {here} in body must not validate the schema (not)",
                render(value)
            ),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Value {
        json!({
            "type": "object",
            "properties": {
                "spec": {
                    "type": "object",
                    "required": ["size"],
                    "properties": {
                        "size": {"type": "integer", "minimum": 1, "maximum": 9},
                        "mode": {"type": "string", "enum": ["A", "B"], "default": "A"},
                        "tags": {"type": "array", "maxItems": 2, "items": {"type": "string", "maxLength": 3}},
                        "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                        "q": {"x-kubernetes-int-or-string": true},
                        "opt": {"type": "string", "nullable": true}
                    },
                    "x-kubernetes-validations": [{"rule": "self.size >= oldSelf.size", "message": "size may not shrink", "reason": "FieldValueForbidden", "fieldPath": ".size"}]
                }
            }
        })
    }

    fn version() -> VersionSchema {
        let schema = schema();
        VersionSchema {
            compiled: compile_schema(&schema),
            schema,
        }
    }

    #[test]
    fn prunes_defaults_and_validates() {
        let validator = Mutex::new(Validator::new());
        let mut obj = json!({"apiVersion": "x/v1", "kind": "K", "metadata": {"name": "a", "bogus": 1},
            "spec": {"size": 3, "unknown": true, "free": {"any": {"thing": 1}}, "q": "50%", "opt": null}, "extra": 1});
        admit(&version(), &validator, &mut obj, None).unwrap();
        assert_eq!(obj["spec"]["mode"], "A");
        assert!(obj["spec"].get("unknown").is_none());
        assert!(obj.get("extra").is_none());
        assert!(obj["metadata"].get("bogus").is_none());
        assert_eq!(obj["spec"]["free"]["any"]["thing"], 1);
        assert_eq!(obj["spec"]["opt"], Value::Null);

        let mut bad =
            json!({"spec": {"size": 10, "mode": "C", "tags": ["a", "b", "long"], "q": true}});
        let errs = admit(&version(), &validator, &mut bad, None).unwrap_err();
        let fields: Vec<&str> = errs.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(
            fields,
            vec![
                "spec.mode",
                "spec.q",
                "spec.size",
                "spec.tags",
                "spec.tags[2]"
            ],
            "{errs:?}"
        );
        assert!(
            errs[2]
                .message
                .contains("should be less than or equal to 9")
        );

        let mut missing = json!({"spec": {}});
        let errs = admit(&version(), &validator, &mut missing, None).unwrap_err();
        assert_eq!(errs[0].field, "spec.size");
        assert_eq!(errs[0].reason, "FieldValueRequired");
    }

    #[test]
    fn transition_rule_sees_old_object() {
        let validator = Mutex::new(Validator::new());
        let old = json!({"spec": {"size": 5}});
        let mut shrink = json!({"spec": {"size": 4}});
        let errs = admit(&version(), &validator, &mut shrink, Some(&old)).unwrap_err();
        assert_eq!(errs[0].field, "spec.size");
        assert_eq!(errs[0].message, "Forbidden: size may not shrink");
        let mut grow = json!({"spec": {"size": 6}});
        admit(&version(), &validator, &mut grow, Some(&old)).unwrap();
        let mut created = json!({"spec": {"size": 1}});
        admit(&version(), &validator, &mut created, None).unwrap();
    }
}

//! Server-side printing (`as=Table`) for `kubectl get`: a Name column, the
//! CRD's additionalPrinterColumns (simple JSONPath: `.a.b`, `[n]`,
//! `[?(@.k=="v")]`), pod phase, and Age.

use std::sync::Arc;

use serde_json::{Value, json};

use crate::meta;
use crate::resources::{Builtin, PrinterColumn, ResourceDef};

pub fn wants_table(accept: &str) -> bool {
    accept.contains("as=Table")
}

fn column(name: &str, type_: &str, format: &str) -> Value {
    json!({"name": name, "type": type_, "format": format, "description": "", "priority": 0})
}

fn age(timestamp: &str) -> String {
    let Some(then) = meta::parse_time(timestamp) else {
        return "<unknown>".into();
    };
    let secs = (jiff::Timestamp::now().as_second() - then).max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

/// Evaluates the JSONPath subset printer columns use.
fn json_path<'a>(object: &'a Value, path: &str) -> Option<&'a Value> {
    let mut node = object;
    let mut rest = path.trim().trim_start_matches('{').trim_end_matches('}');
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix('.') {
            let end = after.find(['.', '[']).unwrap_or(after.len());
            node = node.get(&after[..end])?;
            rest = &after[end..];
        } else if let Some(after) = rest.strip_prefix('[') {
            let end = after.find(']')?;
            let inner = &after[..end];
            rest = &after[end + 1..];
            let list = node.as_array()?;
            if let Some(cond) = inner.strip_prefix("?(@.").and_then(|c| c.strip_suffix(')')) {
                let (field, want) = cond.split_once("==")?;
                let want = want.trim().trim_matches(|c| c == '"' || c == '\'');
                node = list
                    .iter()
                    .find(|e| e.get(field.trim()).and_then(Value::as_str) == Some(want))?;
            } else {
                node = list.get(inner.parse::<usize>().ok()?)?;
            }
        } else {
            return None;
        }
    }
    Some(node)
}

fn cell(object: &Value, col: &PrinterColumn) -> Value {
    match json_path(object, &col.json_path) {
        None | Some(Value::Null) => Value::Null,
        Some(Value::String(s)) if col.type_ == "date" => json!(age(s)),
        Some(v @ (Value::String(_) | Value::Number(_) | Value::Bool(_))) => v.clone(),
        Some(other) => json!(other.to_string()),
    }
}

pub fn render(def: &ResourceDef, items: &[Arc<Value>], rv: &str) -> Value {
    let mut columns = vec![column("Name", "string", "name")];
    let mut custom = def.printer_columns.clone();
    if def.builtin == Some(Builtin::Pod) {
        custom.push(PrinterColumn {
            name: "Status".into(),
            type_: "string".into(),
            json_path: ".status.phase".into(),
        });
    }
    if !custom.iter().any(|c| c.type_ == "date") {
        custom.push(PrinterColumn {
            name: "Age".into(),
            type_: "date".into(),
            json_path: ".metadata.creationTimestamp".into(),
        });
    }
    columns.extend(custom.iter().map(|c| column(&c.name, &c.type_, "")));
    let rows: Vec<Value> = items
        .iter()
        .map(|obj| {
            let mut cells = vec![obj["metadata"]["name"].clone()];
            cells.extend(custom.iter().map(|c| cell(obj, c)));
            json!({
                "cells": cells,
                "object": {
                    "kind": "PartialObjectMetadata",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": obj["metadata"],
                },
            })
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": rv},
        "columnDefinitions": columns,
        "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printer_column_paths() {
        let obj = json!({"status": {"conditions": [{"type": "Ready", "status": "True"}], "items": [1, 2]}});
        assert_eq!(
            json_path(&obj, ".status.conditions[?(@.type==\"Ready\")].status"),
            Some(&json!("True"))
        );
        assert_eq!(json_path(&obj, ".status.items[1]"), Some(&json!(2)));
        assert_eq!(json_path(&obj, ".status.missing"), None);
    }
}

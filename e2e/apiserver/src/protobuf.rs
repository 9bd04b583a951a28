//! Decoding of Kubernetes protobuf request bodies for the few kinds that
//! `kubectl create namespace|configmap|secret|serviceaccount` send that way
//! (client-go's typed clients default to protobuf). Everything else in
//! protobuf gets 415 Unsupported Media Type.

use base64::Engine;
use serde_json::{Map, Value, json};

use crate::resources::Builtin;

/// The `k8s\0` prefix of the protobuf envelope.
const MAGIC: &[u8] = b"k8s\0";

enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

fn varint(buf: &mut &[u8]) -> Result<u64, String> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = buf.split_first().ok_or("truncated varint")?;
        *buf = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err("varint too long".into())
}

fn fields(mut buf: &[u8]) -> Result<Vec<(u64, Field<'_>)>, String> {
    let mut out = vec![];
    while !buf.is_empty() {
        let key = varint(&mut buf)?;
        let field = match key & 7 {
            0 => Field::Varint(varint(&mut buf)?),
            1 | 5 => {
                let len = if key & 7 == 1 { 8 } else { 4 };
                buf = buf.get(len..).ok_or("truncated fixed field")?;
                Field::Fixed
            }
            2 => {
                let len = usize::try_from(varint(&mut buf)?).map_err(|e| e.to_string())?;
                let (bytes, rest) = buf.split_at_checked(len).ok_or("truncated field")?;
                buf = rest;
                Field::Bytes(bytes)
            }
            other => return Err(format!("unsupported wire type {other}")),
        };
        out.push((key >> 3, field));
    }
    Ok(out)
}

fn text(bytes: &[u8]) -> Result<Value, String> {
    Ok(json!(
        std::str::from_utf8(bytes).map_err(|e| e.to_string())?
    ))
}

fn base64(bytes: &[u8]) -> Value {
    json!(base64::engine::general_purpose::STANDARD.encode(bytes))
}

/// One `map<string, V>` entry (key = 1, value = 2).
fn map_entry(bytes: &[u8], value_as_bytes: bool) -> Result<(String, Value), String> {
    let mut key = String::new();
    let mut value = json!("");
    for (n, f) in fields(bytes)? {
        match (n, f) {
            (1, Field::Bytes(b)) => {
                key = String::from_utf8(b.to_vec()).map_err(|e| e.to_string())?
            }
            (2, Field::Bytes(b)) if value_as_bytes => value = base64(b),
            (2, Field::Bytes(b)) => value = text(b)?,
            _ => {}
        }
    }
    Ok((key, value))
}

fn insert_entry(
    obj: &mut Map<String, Value>,
    field: &str,
    bytes: &[u8],
    value_as_bytes: bool,
) -> Result<(), String> {
    let (k, v) = map_entry(bytes, value_as_bytes)?;
    if let Some(map) = obj
        .entry(field)
        .or_insert_with(|| json!({}))
        .as_object_mut()
    {
        map.insert(k, v);
    }
    Ok(())
}

fn push(obj: &mut Map<String, Value>, field: &str, value: Value) {
    if let Some(list) = obj.entry(field).or_insert_with(|| json!([])).as_array_mut() {
        list.push(value);
    }
}

/// ObjectMeta: the fields a client sets on create.
fn object_meta(bytes: &[u8]) -> Result<Value, String> {
    let mut meta = Map::new();
    for (n, f) in fields(bytes)? {
        match (n, f) {
            (1, Field::Bytes(b)) => {
                meta.insert("name".into(), text(b)?);
            }
            (2, Field::Bytes(b)) => {
                meta.insert("generateName".into(), text(b)?);
            }
            (3, Field::Bytes(b)) => {
                meta.insert("namespace".into(), text(b)?);
            }
            (6, Field::Bytes(b)) => {
                meta.insert("resourceVersion".into(), text(b)?);
            }
            (11, Field::Bytes(b)) => insert_entry(&mut meta, "labels", b, false)?,
            (12, Field::Bytes(b)) => insert_entry(&mut meta, "annotations", b, false)?,
            (14, Field::Bytes(b)) => push(&mut meta, "finalizers", text(b)?),
            _ => {}
        }
    }
    Ok(Value::Object(meta))
}

fn string_list(bytes: &[u8]) -> Result<Value, String> {
    let mut out = vec![];
    for (n, f) in fields(bytes)? {
        if let (1, Field::Bytes(b)) = (n, f) {
            out.push(text(b)?);
        }
    }
    Ok(Value::Array(out))
}

fn object(kind: Builtin, raw: &[u8]) -> Result<Value, String> {
    let mut obj = Map::new();
    for (n, f) in fields(raw)? {
        match (kind, n, f) {
            (_, 1, Field::Bytes(b)) => {
                obj.insert("metadata".into(), object_meta(b)?);
            }
            (Builtin::Namespace, 2, Field::Bytes(b)) => {
                obj.insert("spec".into(), json!({"finalizers": string_list(b)?}));
            }
            (Builtin::ConfigMap, 2, Field::Bytes(b)) => insert_entry(&mut obj, "data", b, false)?,
            (Builtin::ConfigMap, 3, Field::Bytes(b)) => {
                insert_entry(&mut obj, "binaryData", b, true)?
            }
            (Builtin::ConfigMap, 4, Field::Varint(v)) | (Builtin::Secret, 5, Field::Varint(v)) => {
                obj.insert("immutable".into(), json!(v != 0));
            }
            (Builtin::Secret, 2, Field::Bytes(b)) => insert_entry(&mut obj, "data", b, true)?,
            (Builtin::Secret, 3, Field::Bytes(b)) => {
                obj.insert("type".into(), text(b)?);
            }
            (Builtin::Secret, 4, Field::Bytes(b)) => {
                insert_entry(&mut obj, "stringData", b, false)?
            }
            (Builtin::ServiceAccount, 4, Field::Varint(v)) => {
                obj.insert("automountServiceAccountToken".into(), json!(v != 0));
            }
            _ => {}
        }
    }
    Ok(Value::Object(obj))
}

/// Decodes a protobuf-encoded object of one of the supported kinds.
pub fn decode(kind: Option<Builtin>, body: &[u8]) -> Result<Value, String> {
    let kind =
        match kind {
            Some(
                k @ (Builtin::Namespace
                | Builtin::ConfigMap
                | Builtin::Secret
                | Builtin::ServiceAccount),
            ) => k,
            _ => return Err(
                "protobuf is only accepted for namespaces, configmaps, secrets and serviceaccounts"
                    .into(),
            ),
        };
    let envelope = body
        .strip_prefix(MAGIC)
        .ok_or("missing the k8s protobuf prefix")?;
    let mut raw = None;
    for (n, f) in fields(envelope)? {
        if let (2, Field::Bytes(b)) = (n, f) {
            raw = Some(b);
        }
    }
    object(kind, raw.ok_or("the protobuf envelope has no object")?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(n: u64, bytes: &[u8]) -> Vec<u8> {
        let mut out = vec![(n << 3 | 2) as u8, bytes.len() as u8];
        out.extend_from_slice(bytes);
        out
    }

    #[test]
    fn decodes_a_secret() {
        let meta = [
            field(1, b"s"),
            field(11, &[field(1, b"app"), field(2, b"db")].concat()),
        ]
        .concat();
        let secret = [
            field(1, &meta),
            field(2, &[field(1, b"password"), field(2, b"hunter2")].concat()),
            field(3, b"Opaque"),
        ]
        .concat();
        let body = [MAGIC, &field(2, &secret)].concat();
        let obj = decode(Some(Builtin::Secret), &body).unwrap();
        assert_eq!(
            obj,
            json!({"metadata": {"name": "s", "labels": {"app": "db"}}, "data": {"password": "aHVudGVyMg=="}, "type": "Opaque"})
        );
        assert!(decode(Some(Builtin::Pod), &body).is_err());
    }
}

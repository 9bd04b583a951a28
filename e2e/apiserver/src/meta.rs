//! Object metadata: timestamps, uids, generated names, and the name and
//! label syntax checks the real server applies to every object.

use rand::Rng;
use serde_json::Value;

use crate::resources::Builtin;
use crate::status::Cause;

pub fn now() -> String {
    format_time(jiff::Timestamp::now())
}

pub fn now_plus(seconds: i64) -> String {
    let now = jiff::Timestamp::now();
    format_time(
        now.checked_add(jiff::SignedDuration::from_secs(seconds))
            .unwrap_or(now),
    )
}

fn format_time(t: jiff::Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Seconds since the epoch of an RFC 3339 timestamp.
pub fn parse_time(text: &str) -> Option<i64> {
    text.parse::<jiff::Timestamp>().ok().map(|t| t.as_second())
}

pub fn new_uid() -> String {
    let b: [u8; 16] = rand::rng().random();
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
        u16::from_be_bytes([b[4], b[5]]),
        u16::from_be_bytes([b[6], b[7]]) & 0x0fff,
        (u16::from_be_bytes([b[8], b[9]]) & 0x3fff) | 0x8000,
        u64::from_be_bytes([0, 0, b[10], b[11], b[12], b[13], b[14], b[15]]),
    )
}

/// The 5-character suffix of `generateName`, from the same alphabet as the
/// real server (no vowels, no look-alike digits).
pub fn name_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    (0..5)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

fn is_dns1035_label(s: &str) -> bool {
    is_dns_label(s) && s.starts_with(|c: char| c.is_ascii_lowercase())
}

/// `metadata.name` syntax per kind.
pub fn validate_name(builtin: Option<Builtin>, name: &str) -> Option<Cause> {
    let (ok, rule) = match builtin {
        Some(Builtin::Namespace) => (
            is_dns_label(name),
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character",
        ),
        Some(Builtin::Service) => (
            is_dns1035_label(name),
            "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character",
        ),
        // Custom resources (None) and RBAC objects only need path-segment names.
        None
        | Some(
            Builtin::Role
            | Builtin::RoleBinding
            | Builtin::ClusterRole
            | Builtin::ClusterRoleBinding,
        ) => (
            !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '%']),
            "may not contain '/' or '%' and may not be '.' or '..'",
        ),
        _ => (
            is_dns_subdomain(name),
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character",
        ),
    };
    (!ok).then(|| Cause {
        reason: "FieldValueInvalid".into(),
        message: format!("Invalid value: {name:?}: {rule}"),
        field: "metadata.name".into(),
    })
}

fn is_label_value(v: &str) -> bool {
    v.is_empty()
        || (v.len() <= 63
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && v.starts_with(|c: char| c.is_ascii_alphanumeric())
            && v.ends_with(|c: char| c.is_ascii_alphanumeric()))
}

fn is_qualified_name(k: &str) -> bool {
    let (prefix, name) = match k.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    prefix.is_none_or(|p| !p.is_empty() && is_dns_subdomain(p))
        && !name.is_empty()
        && is_label_value(name)
}

const MAX_ANNOTATIONS_BYTES: usize = 256 * 1024;
const MAX_DATA_BYTES: usize = 1024 * 1024;

fn too_long(field: &str, max: usize) -> Cause {
    Cause {
        reason: "FieldValueTooLong".into(),
        message: format!("Too long: must have at most {max} bytes"),
        field: field.into(),
    }
}

/// Secret and ConfigMap payloads are limited to 1 MiB.
pub fn validate_data_size(obj: &Value) -> Option<Cause> {
    let size: usize = ["data", "binaryData"]
        .iter()
        .filter_map(|f| obj.get(*f).and_then(Value::as_object))
        .flat_map(|m| m.iter())
        .map(|(k, v)| k.len() + v.as_str().map_or(0, str::len))
        .sum();
    (size > MAX_DATA_BYTES).then(|| too_long("data", MAX_DATA_BYTES))
}

/// Label keys and values, annotation keys and total size, owner references.
pub fn validate_metadata(meta: &Value) -> Vec<Cause> {
    let mut causes = vec![];
    let refs = meta
        .get("ownerReferences")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    for (i, r) in refs.iter().enumerate() {
        for field in ["apiVersion", "kind", "name", "uid"] {
            if r[field].as_str().is_none_or(str::is_empty) {
                causes.push(Cause {
                    reason: "FieldValueInvalid".into(),
                    message: format!("Invalid value: \"\": {field} must not be empty"),
                    field: format!("metadata.ownerReferences[{i}].{field}"),
                });
            }
        }
    }
    if refs
        .iter()
        .filter(|r| r["controller"] == Value::Bool(true))
        .count()
        > 1
    {
        causes.push(Cause {
            reason: "FieldValueInvalid".into(),
            message: "Invalid value: only one reference can have Controller set to true".into(),
            field: "metadata.ownerReferences".into(),
        });
    }
    if let Some(annotations) = meta.get("annotations").and_then(Value::as_object) {
        let size: usize = annotations
            .iter()
            .map(|(k, v)| k.len() + v.as_str().map_or(0, str::len))
            .sum();
        if size > MAX_ANNOTATIONS_BYTES {
            causes.push(too_long("metadata.annotations", MAX_ANNOTATIONS_BYTES));
        }
    }
    if let Some(labels) = meta.get("labels").and_then(Value::as_object) {
        for (k, v) in labels {
            if !is_qualified_name(k) {
                causes.push(Cause {
                    reason: "FieldValueInvalid".into(),
                    message: format!("Invalid value: {k:?}: name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"),
                    field: "metadata.labels".into(),
                });
            }
            let value = v.as_str().unwrap_or("");
            if !v.is_string() || !is_label_value(value) {
                causes.push(Cause {
                    reason: "FieldValueInvalid".into(),
                    message: format!("Invalid value: {v}: a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (at most 63 characters)"),
                    field: format!("metadata.labels.{k}"),
                });
            }
        }
    }
    if let Some(annotations) = meta.get("annotations").and_then(Value::as_object) {
        for (k, v) in annotations {
            if !is_qualified_name(k) || !v.is_string() {
                causes.push(Cause {
                    reason: "FieldValueInvalid".into(),
                    message: format!("Invalid value: {k:?}: annotation keys must be qualified names and values strings"),
                    field: "metadata.annotations".into(),
                });
            }
        }
    }
    causes
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_and_labels() {
        assert!(validate_name(Some(Builtin::Pod), "db-1").is_none());
        assert!(validate_name(Some(Builtin::Pod), "Db").is_some());
        assert!(validate_name(Some(Builtin::Service), "1db").is_some());
        assert!(validate_name(Some(Builtin::ClusterRole), "system:capstan").is_none());
        assert!(validate_name(None, "Any_Name").is_none());
        assert!(validate_name(None, "a/b").is_some());
        let refs = json!({"ownerReferences": [
            {"apiVersion": "v1", "kind": "ConfigMap", "name": "a", "uid": "", "controller": true},
            {"apiVersion": "v1", "kind": "ConfigMap", "name": "b", "uid": "u", "controller": true}]});
        let fields: Vec<String> = validate_metadata(&refs)
            .into_iter()
            .map(|c| c.field)
            .collect();
        assert_eq!(
            fields,
            [
                "metadata.ownerReferences[0].uid",
                "metadata.ownerReferences"
            ]
        );
        assert!(validate_data_size(&json!({"data": {"k": "x".repeat(2 << 20)}})).is_some());
        assert!(
            validate_metadata(&json!({"labels": {"capstan.dev/role": "primary", "a": ""}}))
                .is_empty()
        );
        assert_eq!(validate_metadata(&json!({"labels": {"a": "-x"}})).len(), 1);
        assert_eq!(
            validate_metadata(&json!({"labels": {"a": "x".repeat(64)}})).len(),
            1
        );
        assert_eq!(new_uid().len(), 36);
        assert!(parse_time(&now()).is_some());
    }
}

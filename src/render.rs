//! `capstan render`: every object the operator would create for a spec,
//! offline, with defaults filled in and secret values redacted. The GitOps
//! preview, and what CI validates against the Kubernetes schemas.

use std::path::Path;

use k8s_openapi::api::core::v1::Secret;
use serde::Serialize;

use crate::api::PostgresCluster;
use crate::operator::cluster::plan::{self, Child};
use crate::operator::cluster::validate::{self, SpecError};
use crate::resources::model::Model;
use crate::resources::secrets::{self, CertKind, PasswordSecret};
use crate::resources::{instance, labels, names};
use crate::tls::{CaSet, Issued};

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: document {index} is not valid YAML for a Kubernetes object: {message}")]
    Parse {
        path: String,
        index: usize,
        message: String,
    },
    #[error("{path}: PostgresCluster {name}: {source}")]
    Invalid {
        path: String,
        name: String,
        #[source]
        source: SpecError,
    },
    #[error("{path}: no PostgresCluster found")]
    Empty { path: String },
    #[error("cannot render: {0}")]
    Output(String),
}

/// Placeholder for what the API server assigns.
const ASSIGNED_UID: &str = "00000000-0000-0000-0000-000000000000";

/// Renders every `PostgresCluster` in the YAML file at `path` (other kinds
/// are skipped) as a multi-document YAML stream.
pub fn render_file(path: &Path, operator_image: &str) -> Result<String, RenderError> {
    let display = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| RenderError::Read {
        path: display.clone(),
        source,
    })?;
    render_text(&text, &display, operator_image)
}

pub fn render_text(text: &str, path: &str, operator_image: &str) -> Result<String, RenderError> {
    let docs: Vec<serde_json::Value> =
        serde_saphyr::from_multiple(text).map_err(|e| RenderError::Parse {
            path: path.to_string(),
            index: 0,
            message: e.to_string(),
        })?;
    let mut out = String::new();
    let mut found = false;
    for (index, doc) in docs.into_iter().enumerate() {
        if doc.is_null() || doc.get("kind").and_then(|k| k.as_str()) != Some("PostgresCluster") {
            continue;
        }
        found = true;
        let mut cluster: PostgresCluster =
            serde_json::from_value(doc).map_err(|e| RenderError::Parse {
                path: path.to_string(),
                index,
                message: e.to_string(),
            })?;
        cluster
            .metadata
            .namespace
            .get_or_insert_with(|| "default".into());
        cluster
            .metadata
            .uid
            .get_or_insert_with(|| ASSIGNED_UID.into());
        let name = cluster.metadata.name.clone().unwrap_or_default();
        let validated = validate::validate_offline(&cluster, operator_image).map_err(|source| {
            RenderError::Invalid {
                path: path.to_string(),
                name: name.clone(),
                source,
            }
        })?;
        // The uid is assigned by the API server; don't print ours.
        cluster.metadata.uid = None;
        push(&mut out, &cluster)?;
        for object in objects(&validated.model)? {
            out.push_str(&object);
        }
    }
    if !found {
        return Err(RenderError::Empty {
            path: path.to_string(),
        });
    }
    Ok(out)
}

fn push<T: Serialize>(out: &mut String, object: &T) -> Result<(), RenderError> {
    let yaml = serde_saphyr::to_string(object).map_err(|e| RenderError::Output(e.to_string()))?;
    out.push_str("---\n");
    out.push_str(&yaml);
    Ok(())
}

/// The cluster as it runs once every instance exists: the first instance
/// primary, the others replicas.
fn objects(model: &Model) -> Result<Vec<String>, RenderError> {
    let mut out = String::new();
    let instances: Vec<String> = (1..=model.spec.instances.max(1) as u32)
        .map(|i| names::instance(&model.name, i))
        .collect();
    for secret in redacted_secrets(model) {
        push(&mut out, &secret)?;
    }
    let children = plan::shared_children(model, &instances, &Default::default())
        .map_err(|e| RenderError::Output(e.to_string()))?;
    for child in &children {
        match child {
            Child::ConfigMap(o) => push(&mut out, o)?,
            Child::Service(o) => push(&mut out, o)?,
            Child::ServiceAccount(o) => push(&mut out, o)?,
            Child::Role(o) => push(&mut out, o)?,
            Child::RoleBinding(o) => push(&mut out, o)?,
            Child::Pvc(o) => push(&mut out, o)?,
            Child::Deployment(o) => push(&mut out, o)?,
            Child::Pdb(o) => push(&mut out, o)?,
            Child::Lease(o) => push(&mut out, o)?,
        }
    }
    for (i, name) in instances.iter().enumerate() {
        let role = if i == 0 {
            labels::ROLE_PRIMARY
        } else {
            labels::ROLE_REPLICA
        };
        push(&mut out, &instance::pod(model, name, role))?;
    }
    Ok(vec![out])
}

fn redacted_secrets(model: &Model) -> Vec<Secret> {
    let placeholder = CaSet::new(Issued {
        cert_pem: String::new(),
        key_pem: String::new(),
    });
    let mut all: Vec<Secret> = PasswordSecret::ALL
        .into_iter()
        .map(|k| secrets::password_secret(model, k, ""))
        .collect();
    all.extend(secrets::ca_secrets(model, &placeholder));
    all.extend(
        CertKind::managed(model)
            .into_iter()
            .map(|k| secrets::cert_secret(model, k, &placeholder.signing, &placeholder)),
    );
    for s in &mut all {
        secrets::redact(s);
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
apiVersion: capstan.dev/v1alpha1
kind: PostgresCluster
metadata:
  name: orders
  namespace: shop
spec:
  instances: 3
  postgres:
    version: 17
  storage:
    size: 5Gi
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: unrelated
"#;

    fn docs(yaml: &str) -> Vec<serde_json::Value> {
        serde_saphyr::from_multiple(yaml).unwrap()
    }

    #[test]
    fn renders_the_defaulted_cluster_and_every_child() {
        let out = render_text(EXAMPLE, "example.yaml", "capstan:test").unwrap();
        let objects = docs(&out);
        let kinds: Vec<(String, String)> = objects
            .iter()
            .map(|o| {
                (
                    o["kind"].as_str().unwrap().to_string(),
                    o["metadata"]["name"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        assert_eq!(kinds[0], ("PostgresCluster".into(), "orders".into()));
        // Defaults are visible.
        assert_eq!(objects[0]["spec"]["proxy"]["pgbouncer"]["replicas"], 2);
        assert_eq!(objects[0]["spec"]["bootstrap"]["initdb"]["database"], "app");
        for expected in [
            ("Pod", "orders-1"),
            ("Pod", "orders-3"),
            ("PersistentVolumeClaim", "orders-2"),
            ("Service", "orders-rw"),
            ("Service", "orders-pooler"),
            ("Deployment", "orders-pooler"),
            ("ConfigMap", "orders-config"),
            ("Secret", "orders-app"),
            ("Secret", "orders-server-tls"),
            ("Role", "orders-instance"),
            ("PodDisruptionBudget", "orders-primary"),
        ] {
            assert!(
                kinds.contains(&(expected.0.into(), expected.1.into())),
                "missing {expected:?} in {kinds:?}"
            );
        }
        assert!(
            !kinds.iter().any(|(_, n)| n == "unrelated"),
            "other kinds are not echoed"
        );
        assert!(objects.iter().all(|o| o["metadata"]["namespace"] == "shop"));
    }

    #[test]
    fn secrets_are_redacted() {
        let out = render_text(EXAMPLE, "example.yaml", "capstan:test").unwrap();
        for o in docs(&out).iter().filter(|o| o["kind"] == "Secret") {
            let values: Vec<&serde_json::Value> = o["data"]
                .as_object()
                .into_iter()
                .chain(o["stringData"].as_object())
                .flat_map(|m| m.values())
                .collect();
            assert!(!values.is_empty());
            for v in values {
                let v = v.as_str().unwrap();
                assert!(v == "<redacted>" || v == "PHJlZGFjdGVkPg==", "{v}");
            }
        }
    }

    #[test]
    fn invalid_specs_name_the_field() {
        let bad = EXAMPLE.replace("size: 5Gi", "size: 5Gi\n  walStorage:\n    size: nope");
        let err = render_text(&bad, "bad.yaml", "x").unwrap_err().to_string();
        assert!(err.contains("spec.walStorage.size"), "{err}");
        let err = render_text("kind: ConfigMap\n", "none.yaml", "x")
            .unwrap_err()
            .to_string();
        assert!(err.contains("no PostgresCluster"), "{err}");
    }
}

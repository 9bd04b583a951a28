//! The checked picture of one cluster that every builder works from.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use crate::api::PostgresClusterSpec;

/// Images the children run.
#[derive(Clone, Debug, PartialEq)]
pub struct Images {
    /// Carries the `capstan` binary; the init container of every pod copies it.
    pub operator: String,
    /// Image of the pooler Deployment's binary init container: the one it
    /// has (its agents take new binaries in place), the operator's for a
    /// new Deployment.
    pub pooler_agent: String,
    pub postgres: String,
    pub pgbouncer: String,
}

/// Where a major upgrade stands, as far as the children differ by it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpgradeStage {
    /// Everything still runs the old major (replicas are being stopped).
    Preparing,
    /// The old primary was stopped: its pod comes back with the new image
    /// and the old binaries, and upgrades its data.
    PrimaryStopped,
    /// The primary runs the new major; replicas with old data clone it.
    Recloning,
}

/// A major upgrade the operator carries out.
#[derive(Clone, Debug, PartialEq)]
pub struct MajorUpgrade {
    pub from: i32,
    pub to: i32,
    /// The new major's image.
    pub image: String,
    /// The image the old major ran: its binaries are copied into the
    /// upgrading primary's pod.
    pub old_image: String,
    pub stage: UpgradeStage,
    /// The spec generation asking for it: names its backup.
    pub generation: i64,
}

/// A validated `PostgresCluster` with its defaults applied.
#[derive(Clone, Debug, PartialEq)]
pub struct Model {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub spec: PostgresClusterSpec,
    pub images: Images,
    /// PostgreSQL major the instances run. Equals `spec.postgres.version`
    /// except while a requested major upgrade has not happened yet.
    pub postgres_version: i32,
    /// The major upgrade in progress (`spec.postgres.version` above the
    /// data's, and not failed for this spec).
    pub upgrade: Option<MajorUpgrade>,
    /// A PostgreSQL image the spec names that must be tried first (a new
    /// image of the running major, or a major upgrade's): until it passed,
    /// the instances keep the image they run.
    pub image_check: Option<ImageCandidate>,
}

/// An image and the major it must run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageCandidate {
    pub image: String,
    pub major: i32,
    /// A major upgrade's image: the upgrade is rehearsed on a copy of the
    /// primary too.
    pub upgrade_from: Option<UpgradeFrom>,
}

/// What a major upgrade starts from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpgradeFrom {
    pub major: i32,
    /// The image the instances run: its binaries are copied in.
    pub old_image: String,
}

impl Model {
    /// Owner reference making the cluster the controller of a child, so
    /// deleting the cluster deletes the child and child events wake the
    /// controller.
    pub fn owner_reference(&self) -> OwnerReference {
        OwnerReference {
            api_version: "capstan.dev/v1alpha1".to_string(),
            kind: "PostgresCluster".to_string(),
            name: self.name.clone(),
            uid: self.uid.clone(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }
    }

    /// Metadata for a child named `name` with `labels`, owned by the cluster.
    pub fn child_meta(
        &self,
        name: String,
        labels: std::collections::BTreeMap<String, String>,
    ) -> ObjectMeta {
        ObjectMeta {
            name: Some(name),
            namespace: Some(self.namespace.clone()),
            labels: Some(labels),
            owner_references: Some(vec![self.owner_reference()]),
            ..ObjectMeta::default()
        }
    }

    /// `host:port` of a Service of this cluster, by its namespaced DNS name.
    pub fn service_endpoint(&self, service: &str, port: u16) -> String {
        format!("{service}.{}.svc:{port}", self.namespace)
    }
}

#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;

    /// A 3-instance cluster `db` in `ns` with every default.
    pub fn model() -> Model {
        let spec: PostgresClusterSpec = serde_json::from_value(serde_json::json!({
            "instances": 3,
            "postgres": {"version": 17},
            "storage": {"size": "10Gi"},
        }))
        .expect("valid spec");
        Model {
            name: "db".into(),
            namespace: "ns".into(),
            uid: "uid-1".into(),
            spec,
            images: Images {
                operator: "capstan:test".into(),
                pooler_agent: "capstan:test".into(),
                postgres: "postgres:17".into(),
                pgbouncer: "pgbouncer:1".into(),
            },
            postgres_version: 17,
            upgrade: None,
            image_check: None,
        }
    }
}

//! The primary's Lease. Capstan creates it (so it carries the cluster's
//! labels and goes with the cluster); the instance managers hold and renew
//! it (`spec` is theirs, Capstan never writes it).

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use sha2::{Digest, Sha256};

use super::labels;
use super::model::Model;
use super::names;

pub fn primary_lease(model: &Model) -> Lease {
    Lease {
        metadata: model.child_meta(
            names::primary_lease(&model.name),
            labels::common(&model.name, labels::COMPONENT_DATABASE),
        ),
        spec: None,
    }
}

/// A version of the Lease's fields Capstan writes (labels, owner). Its
/// resourceVersion moves with every renewal, so it cannot tell whether
/// Capstan's part changed.
pub fn metadata_version(meta: &ObjectMeta) -> String {
    let owners: Vec<&str> = meta
        .owner_references
        .iter()
        .flatten()
        .map(|o| o.uid.as_str())
        .collect();
    let json = serde_json::to_vec(&(&meta.labels, owners)).unwrap_or_default();
    Sha256::digest(&json)
        .iter()
        .take(12)
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::model::fixtures::model;

    #[test]
    fn lease_carries_labels_and_no_spec() {
        let l = primary_lease(&model());
        assert_eq!(l.metadata.name.as_deref(), Some("db-primary"));
        assert_eq!(l.metadata.labels.as_ref().unwrap()[labels::CLUSTER], "db");
        assert!(
            l.spec.is_none(),
            "holder and renewals belong to the instance managers"
        );
        let json = serde_json::to_value(&l).unwrap();
        assert!(json.get("spec").is_none());
    }

    #[test]
    fn the_metadata_version_ignores_renewals_but_not_labels_or_owner() {
        let mut lease = primary_lease(&model());
        let base = metadata_version(&lease.metadata);
        lease.metadata.resource_version = Some("42".into());
        lease.spec = Some(Default::default());
        assert_eq!(metadata_version(&lease.metadata), base);
        lease
            .metadata
            .labels
            .get_or_insert_default()
            .insert("x".into(), "y".into());
        assert_ne!(metadata_version(&lease.metadata), base);
        let mut orphan = primary_lease(&model());
        orphan.metadata.owner_references = None;
        assert_ne!(metadata_version(&orphan.metadata), base);
    }
}

//! The primary's Lease. Capstan creates it (so it carries the cluster's
//! labels and goes with the cluster); the instance managers hold and renew
//! it (`spec` is theirs, Capstan never writes it).

use k8s_openapi::api::coordination::v1::Lease;

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
}

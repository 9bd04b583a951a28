//! Identities of the pods: the instance manager may read its own cluster and
//! hold its primary Lease; the pooler gets no API access at all.

use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};

use super::labels;
use super::model::Model;
use super::names;

pub fn service_accounts(model: &Model) -> Vec<ServiceAccount> {
    let cluster = &model.name;
    vec![
        ServiceAccount {
            metadata: model.child_meta(
                names::instance_service_account(cluster),
                labels::common(cluster, labels::COMPONENT_DATABASE),
            ),
            ..ServiceAccount::default()
        },
        ServiceAccount {
            metadata: model.child_meta(
                names::pooler_service_account(cluster),
                labels::common(cluster, labels::COMPONENT_POOLER),
            ),
            automount_service_account_token: Some(false),
            ..ServiceAccount::default()
        },
    ]
}

fn rule(groups: &[&str], resources: &[&str], names: &[String], verbs: &[&str]) -> PolicyRule {
    let strings = |v: &[&str]| Some(v.iter().map(|s| (*s).to_string()).collect());
    PolicyRule {
        api_groups: strings(groups),
        resources: strings(resources),
        resource_names: (!names.is_empty()).then(|| names.to_vec()),
        verbs: verbs.iter().map(|s| (*s).to_string()).collect(),
        non_resource_urls: None,
    }
}

/// Least privilege for the instance manager: read (and watch) only its own
/// `PostgresCluster`, renew only its cluster's primary Lease, read only the
/// `<name>-roles` Secret, and publish Events. The operator creates the Lease, so the instance never needs
/// `create` (which RBAC cannot restrict to one name).
pub fn instance_role(model: &Model) -> Role {
    let cluster = &model.name;
    Role {
        metadata: model.child_meta(
            names::instance_service_account(cluster),
            labels::common(cluster, labels::COMPONENT_DATABASE),
        ),
        rules: Some(vec![
            rule(
                &["capstan.dev"],
                &["postgresclusters"],
                std::slice::from_ref(cluster),
                &["get", "list", "watch"],
            ),
            rule(
                &["coordination.k8s.io"],
                &["leases"],
                &[names::primary_lease(cluster)],
                &["get", "update"],
            ),
            rule(&["events.k8s.io"], &["events"], &[], &["create", "patch"]),
            // The primary reads the `spec.roles` passwords; no other Secret.
            rule(
                &[""],
                &["secrets"],
                &[names::roles_secret(cluster)],
                &["get"],
            ),
        ]),
    }
}

pub fn instance_role_binding(model: &Model) -> RoleBinding {
    let cluster = &model.name;
    let name = names::instance_service_account(cluster);
    RoleBinding {
        metadata: model.child_meta(
            name.clone(),
            labels::common(cluster, labels::COMPONENT_DATABASE),
        ),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "Role".into(),
            name: name.clone(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name,
            namespace: Some(model.namespace.clone()),
            api_group: None,
        }]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::model::fixtures::model;

    #[test]
    fn instance_role_is_scoped_to_its_own_cluster_and_reads_one_secret() {
        let role = instance_role(&model());
        let rules = role.rules.unwrap();
        let pgc = &rules[0];
        assert_eq!(pgc.resource_names.as_deref(), Some(&["db".to_string()][..]));
        assert!(
            !pgc.verbs
                .iter()
                .any(|v| v == "update" || v == "patch" || v == "delete")
        );
        let secrets: Vec<_> = rules
            .iter()
            .filter(|r| r.resources.as_ref().unwrap().iter().any(|x| x == "secrets"))
            .collect();
        assert_eq!(secrets.len(), 1);
        assert_eq!(
            secrets[0].resource_names.as_deref(),
            Some(&["db-roles".to_string()][..]),
            "only the role passwords"
        );
        assert_eq!(secrets[0].verbs, ["get"]);
        let lease = rules
            .iter()
            .find(|r| r.resources.as_deref() == Some(&["leases".to_string()][..]))
            .expect("a rule for the primary Lease");
        assert_eq!(
            lease.resource_names.as_deref(),
            Some(&["db-primary".to_string()][..])
        );
        assert_eq!(lease.verbs, ["get", "update"]);
        let binding = instance_role_binding(&model());
        assert_eq!(binding.role_ref.name, role.metadata.name.unwrap());
    }

    #[test]
    fn pooler_account_has_no_token() {
        let sas = service_accounts(&model());
        assert_eq!(sas[1].automount_service_account_token, Some(false));
    }
}

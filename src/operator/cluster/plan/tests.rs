use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{PodCondition, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::*;
use crate::resources::model::fixtures::model;

fn running(model: &Model, name: &str, role: &str, ready: bool) -> Pod {
    let mut pod = instance::pod(model, name, role);
    pod.status = Some(PodStatus {
        phase: Some("Running".into()),
        conditions: Some(vec![PodCondition {
            type_: "Ready".into(),
            status: if ready { "True" } else { "False" }.into(),
            ..PodCondition::default()
        }]),
        ..PodStatus::default()
    });
    pod
}

fn status(target: &str) -> PostgresClusterStatus {
    PostgresClusterStatus {
        target_primary: Some(target.into()),
        ..PostgresClusterStatus::default()
    }
}

fn all_ready(m: &Model, names: &[&str]) -> Observed {
    Observed {
        pods: names
            .iter()
            .map(|n| running(m, n, if *n == "db-1" { "primary" } else { "replica" }, true))
            .collect(),
        pvcs: names.iter().flat_map(|n| instance::pvcs(m, n)).collect(),
        ..Observed::default()
    }
}

fn pod_names(plan: &Plan) -> Vec<String> {
    plan.create_pods
        .iter()
        .map(|p| p.metadata.name.clone().unwrap())
        .collect()
}

#[test]
fn first_reconcile_creates_only_the_primary_and_every_shared_child() {
    let m = model();
    let plan = plan(&m, &Observed::default(), None).unwrap();
    assert_eq!(plan.target_primary, "db-1");
    assert_eq!(plan.instances, ["db-1", "db-2", "db-3"]);
    assert_eq!(pod_names(&plan), ["db-1"]);
    assert_eq!(
        plan.operation,
        Operation::CreateInstances(vec!["db-1".into()])
    );
    let role = &plan.create_pods[0].metadata.labels.as_ref().unwrap()[labels::ROLE];
    assert_eq!(role, "primary");
    let kinds: Vec<&str> = plan
        .apply
        .iter()
        .map(|c| match c {
            Child::ConfigMap(_) => "cm",
            Child::Service(_) => "svc",
            Child::ServiceAccount(_) => "sa",
            Child::Role(_) => "role",
            Child::RoleBinding(_) => "rb",
            Child::Pvc(_) => "pvc",
            Child::Deployment(_) => "deploy",
            Child::Pdb(_) => "pdb",
            Child::Lease(_) => "lease",
        })
        .collect();
    assert_eq!(kinds.iter().filter(|k| **k == "svc").count(), 4);
    assert_eq!(
        kinds.iter().filter(|k| **k == "pvc").count(),
        3,
        "volumes for every instance"
    );
    assert!(kinds.contains(&"deploy") && kinds.contains(&"cm") && kinds.contains(&"pdb"));
    // Every secret is created on the first pass.
    assert_eq!(
        plan.secrets
            .iter()
            .filter(|a| matches!(a, SecretAction::CreatePassword(_)))
            .count(),
        3
    );
    assert!(plan.secrets.contains(&SecretAction::CreateCa));
    assert_eq!(
        plan.secrets
            .iter()
            .filter(|a| matches!(a, SecretAction::IssueCert(_, CertReason::Missing)))
            .count(),
        5
    );
}

#[test]
fn replicas_wait_for_a_ready_primary_then_come_together() {
    let m = model();
    let mut observed = Observed {
        pods: vec![running(&m, "db-1", "primary", false)],
        ..Observed::default()
    };
    let p = plan(&m, &observed, Some(&status("db-1"))).unwrap();
    assert_eq!(
        p.operation,
        Operation::AwaitInstances {
            instances: vec!["db-1".into()],
            failed: vec![]
        }
    );
    assert!(p.create_pods.is_empty());

    observed.pods = vec![running(&m, "db-1", "primary", true)];
    let p = plan(&m, &observed, Some(&status("db-1"))).unwrap();
    assert_eq!(pod_names(&p), ["db-2", "db-3"]);
    assert!(
        p.create_pods
            .iter()
            .all(|pod| pod.metadata.labels.as_ref().unwrap()[labels::ROLE] == "replica")
    );
}

#[test]
fn a_ready_cluster_is_steady() {
    let m = model();
    let observed = all_ready(&m, &["db-1", "db-2", "db-3"]);
    let p = plan(&m, &observed, Some(&status("db-1"))).unwrap();
    assert_eq!(p.operation, Operation::Idle);
    assert!(p.create_pods.is_empty() && p.delete.is_empty() && p.relabel.is_empty());
}

#[test]
fn scale_down_removes_the_highest_replicas_never_the_primary() {
    let mut m = model();
    m.spec.instances = 1;
    // db-3 is the primary after some failover.
    let mut observed = all_ready(&m, &["db-1", "db-2", "db-3"]);
    observed.pods[0]
        .metadata
        .labels
        .as_mut()
        .unwrap()
        .insert(labels::ROLE.into(), "replica".into());
    let p = plan(&m, &observed, Some(&status("db-3"))).unwrap();
    assert_eq!(p.instances, ["db-3"]);
    assert_eq!(
        p.operation,
        Operation::RemoveInstances(vec!["db-1".into(), "db-2".into()])
    );
    assert!(p.delete.contains(&Deletion::Pod("db-1".into())));
    assert!(p.delete.contains(&Deletion::Pod("db-2".into())));
    assert!(
        p.delete.contains(&Deletion::Pvc("db-1".into())),
        "whenScaled defaults to Delete"
    );
    assert!(!p.delete.contains(&Deletion::Pvc("db-3".into())));
    assert!(!p.delete.contains(&Deletion::Pod("db-3".into())));
}

#[test]
fn scale_down_keeps_volumes_when_asked() {
    let mut m = model();
    m.spec.instances = 2;
    m.spec.storage.retention.when_scaled = RetentionRule::Retain;
    let observed = all_ready(&m, &["db-1", "db-2", "db-3"]);
    let p = plan(&m, &observed, Some(&status("db-1"))).unwrap();
    assert_eq!(
        p.delete,
        vec![Deletion::Pod("db-3".into())],
        "the volume stays"
    );
    // Scaling back up reuses the retained volume's name.
    let mut back = observed.clone();
    back.pods
        .retain(|p| p.metadata.name.as_deref() != Some("db-3"));
    m.spec.instances = 3;
    let p = plan(&m, &back, Some(&status("db-1"))).unwrap();
    assert_eq!(pod_names(&p), ["db-3"]);
}

#[test]
fn the_current_primary_volume_is_never_deleted_even_mid_failover() {
    let mut m = model();
    m.spec.instances = 1;
    let observed = all_ready(&m, &["db-1", "db-2"]);
    let mut st = status("db-2");
    st.current_primary = Some("db-1".into());
    let p = plan(&m, &observed, Some(&st)).unwrap();
    assert!(
        !p.delete.iter().any(
            |d| matches!(d, Deletion::Pvc(n) | Deletion::Pod(n) if n == "db-1" || n == "db-2")
        )
    );
}

#[test]
fn scale_up_uses_the_lowest_free_index() {
    let mut m = model();
    m.spec.instances = 3;
    let observed = all_ready(&m, &["db-1", "db-3"]);
    let p = plan(&m, &observed, Some(&status("db-1"))).unwrap();
    assert_eq!(p.instances, ["db-1", "db-2", "db-3"]);
    assert_eq!(pod_names(&p), ["db-2"]);
}

#[test]
fn terminating_and_failed_pods_are_waited_for_or_replaced() {
    let m = model();
    let mut observed = all_ready(&m, &["db-1", "db-2", "db-3"]);
    observed.pods[2].metadata.deletion_timestamp = Some(Time(jiff::Timestamp::UNIX_EPOCH));
    let p = plan(&m, &observed, Some(&status("db-1"))).unwrap();
    assert_eq!(
        p.operation,
        Operation::AwaitInstances {
            instances: vec!["db-3".into()],
            failed: vec![]
        }
    );
    assert!(p.create_pods.is_empty());

    let mut observed = all_ready(&m, &["db-1", "db-2", "db-3"]);
    observed.pods[1].status.as_mut().unwrap().phase = Some("Failed".into());
    let p = plan(&m, &observed, Some(&status("db-1"))).unwrap();
    assert_eq!(p.delete, vec![Deletion::Pod("db-2".into())]);
}

#[test]
fn role_labels_follow_the_target_primary() {
    let m = model();
    let observed = all_ready(&m, &["db-1", "db-2", "db-3"]);
    let p = plan(&m, &observed, Some(&status("db-2"))).unwrap();
    assert_eq!(
        p.relabel,
        vec![
            ("db-1".into(), "replica".into()),
            ("db-2".into(), "primary".into())
        ]
    );
}

#[test]
fn volumes_grow_but_never_shrink() {
    let mut m = model();
    let mut observed = all_ready(&m, &["db-1"]);
    m.spec.instances = 1;
    m.spec.storage.size.0 = "20Gi".into();
    let size_of = |p: &Plan, name: &str| {
        p.apply.iter().find_map(|c| match c {
            Child::Pvc(claim) if claim.metadata.name.as_deref() == Some(name) => {
                Some(instance::requested_storage(claim).unwrap().0.clone())
            }
            _ => None,
        })
    };
    // A class that cannot expand: left as it is, and said why.
    let p = plan(&m, &observed, Some(&status("db-1"))).unwrap();
    assert_eq!(size_of(&p, "db-1").as_deref(), Some("10Gi"));
    assert!(p.volumes.refused.is_some());
    observed.storage_classes.insert(String::new(), true);
    let p = plan(&m, &observed, Some(&status("db-1"))).unwrap();
    assert_eq!(size_of(&p, "db-1").as_deref(), Some("20Gi"));
    // The volume was grown beyond the spec by hand: keep its size.
    observed.pvcs[0]
        .spec
        .as_mut()
        .unwrap()
        .resources
        .as_mut()
        .unwrap()
        .requests = Some(BTreeMap::from([(
        "storage".into(),
        k8s_openapi::apimachinery::pkg::api::resource::Quantity("30Gi".into()),
    )]));
    let p = plan(&m, &observed, Some(&status("db-1"))).unwrap();
    assert_eq!(size_of(&p, "db-1").as_deref(), Some("30Gi"));
}

#[test]
fn unwanted_budgets_are_deleted() {
    let mut m = model();
    m.spec.instances = 1;
    let mut observed = all_ready(&m, &["db-1"]);
    observed.pdbs = ["db-primary".to_string(), "db-pooler".to_string()].into();
    let p = plan(&m, &observed, Some(&status("db-1"))).unwrap();
    assert_eq!(p.delete, vec![Deletion::Pdb("db-primary".into())]);
}

#[test]
fn a_volume_repository_brings_its_host_and_leaves_its_volume_behind() {
    let mut m = model();
    m.spec.instances = 1;
    m.spec.backup = Some(
        serde_json::from_value(serde_json::json!({
            "repositories": [{"name": "repo1", "volume": {"size": "10Gi"}}]
        }))
        .unwrap(),
    );
    let observed = all_ready(&m, &["db-1"]);
    let p = plan(&m, &observed, Some(&status("db-1"))).unwrap();
    let named = |kind: &str| -> Vec<String> {
        p.apply
            .iter()
            .filter_map(|c| match (kind, c) {
                ("pvc", Child::Pvc(x)) => x.metadata.name.clone(),
                ("service", Child::Service(x)) => x.metadata.name.clone(),
                ("deployment", Child::Deployment(x)) => x.metadata.name.clone(),
                _ => None,
            })
            .collect()
    };
    assert!(named("pvc").contains(&"db-repo1".to_string()));
    assert!(named("service").contains(&"db-repo-host".to_string()));
    assert!(named("deployment").contains(&"db-repo-host".to_string()));
    assert!(p.delete.is_empty(), "{:?}", p.delete);

    // The repository removed: the host goes, its claim is not touched.
    let mut observed = observed;
    observed.repo_host = Some(repo_host::deployment(&m));
    m.spec.backup = None;
    let p = plan(&m, &observed, Some(&status("db-1"))).unwrap();
    // (The instance's pod spec changed too: it rolls.)
    assert!(
        p.delete
            .contains(&Deletion::RepoHost("db-repo-host".into())),
        "{:?}",
        p.delete
    );
    assert!(
        !p.apply
            .iter()
            .any(|c| matches!(c, Child::Pvc(x) if x.metadata.name.as_deref() == Some("db-repo1")))
    );
}

#[test]
fn role_passwords_are_copied_when_their_secrets_change() {
    use super::super::observe::RoleSources;
    use k8s_openapi::ByteString;
    use k8s_openapi::api::core::v1::Secret;
    let mut m = model();
    let observed = all_ready(&m, &["db-1", "db-2", "db-3"]);
    let copies = |p: &Plan| -> Vec<Secret> {
        p.secrets
            .iter()
            .filter_map(|a| match a {
                SecretAction::CopyRolePasswords(c) => Some((*c.0).clone()),
                _ => None,
            })
            .collect()
    };
    let p = plan(&m, &observed, Some(&status("db-1"))).unwrap();
    assert!(copies(&p).is_empty(), "no roles, nothing to copy");

    m.spec.roles = serde_json::from_value(serde_json::json!([
        {"name": "reporting", "passwordSecret": {"name": "pw", "key": "password"}}
    ]))
    .unwrap();
    let source = |value: &str| Secret {
        data: Some(BTreeMap::from([(
            "password".to_string(),
            ByteString(value.as_bytes().to_vec()),
        )])),
        ..Secret::default()
    };
    let mut observed = observed;
    observed.role_sources = RoleSources(BTreeMap::from([("pw".to_string(), source("one"))]));
    let p = plan(&m, &observed, Some(&status("db-1"))).unwrap();
    let copied = copies(&p);
    assert_eq!(copied.len(), 1);
    let digest = copied[0].metadata.annotations.as_ref().unwrap()
        [crate::resources::secrets::CONTENT_ANNOTATION]
        .clone();
    // Copied once: the same content is not written again.
    observed.roles_digest = Some(digest);
    let p = plan(&m, &observed, Some(&status("db-1"))).unwrap();
    assert!(copies(&p).is_empty());
    // A rotated password is.
    observed.role_sources =
        RoleSources(BTreeMap::from([("pw".to_string(), source("Zq9-rotated"))]));
    let p = plan(&m, &observed, Some(&status("db-1"))).unwrap();
    assert_eq!(copies(&p).len(), 1);
    assert!(
        !format!("{:?}", p.secrets).contains("Zq9-rotated")
            && !format!("{observed:?}").contains("Zq9-rotated"),
        "passwords stay out of debug output"
    );
}

//! Plan: from the checked model and what exists, the desired children and at
//! most one operation step (create instances, wait, re-create one pod, …).
//! Pure, so every decision is unit-tested without a cluster.

use std::collections::BTreeSet;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};

use super::observe::Observed;
use super::operation::{self, Operation, is_terminating};
use crate::api::{PostgresClusterStatus, RetentionRule};
use crate::resources::instance;
use crate::resources::model::Model;
use crate::resources::secrets::{CertIdentity, CertKind, PasswordSecret};
use crate::resources::{config, labels, lease, names, pdb, proxy, quantity, rbac, services};

/// A child applied with server-side apply on every reconcile.
#[derive(Clone, Debug, PartialEq)]
pub enum Child {
    ConfigMap(ConfigMap),
    Service(Service),
    ServiceAccount(ServiceAccount),
    Role(Role),
    RoleBinding(RoleBinding),
    Pvc(PersistentVolumeClaim),
    Deployment(Box<Deployment>),
    Pdb(PodDisruptionBudget),
    Lease(Lease),
}

/// Why a certificate is (re-)issued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CertReason {
    Missing,
    Unreadable,
    NewCa,
    NamesChanged,
    Expiring,
}

/// Secrets are created, never overwritten by accident: passwords only when
/// absent, certificates when absent or due.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretAction {
    CreatePassword(PasswordSecret),
    CreateCa,
    /// Re-create the public `<name>-ca` Secret from the CA (managed TLS).
    PublishCa,
    IssueCert(CertKind, CertReason),
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Deletion {
    Pod(String),
    Pvc(String),
    Pdb(String),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub target_primary: String,
    /// Instances the cluster keeps, by index.
    pub instances: Vec<String>,
    pub apply: Vec<Child>,
    pub secrets: Vec<SecretAction>,
    pub create_pods: Vec<Pod>,
    /// Pods whose `capstan.dev/role` label must change: (pod, role).
    pub relabel: Vec<(String, String)>,
    pub delete: Vec<Deletion>,
    /// The one operation this reconcile works on.
    pub operation: Operation,
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("cannot render the settings ConfigMap: {0}")]
    Settings(#[from] serde_json::Error),
}

pub fn plan(
    model: &Model,
    observed: &Observed,
    status: Option<&PostgresClusterStatus>,
) -> Result<Plan, PlanError> {
    let cluster = &model.name;
    let target_primary = status
        .and_then(|s| s.target_primary.clone())
        .unwrap_or_else(|| names::instance(cluster, 1));
    let current_primary = status.and_then(|s| s.current_primary.clone());
    let instances = choose_instances(model, observed, &target_primary);

    let apply = shared_children(model, &instances, observed)?;
    let wanted_budgets: BTreeSet<String> = apply
        .iter()
        .filter_map(|c| match c {
            Child::Pdb(p) => p.metadata.name.clone(),
            _ => None,
        })
        .collect();

    let mut delete: Vec<Deletion> = pdb::possible_names(cluster)
        .into_iter()
        .filter(|n| !wanted_budgets.contains(n) && observed.pdbs.contains(n))
        .map(Deletion::Pdb)
        .collect();

    let protected: BTreeSet<&str> = [Some(target_primary.as_str()), current_primary.as_deref()]
        .into_iter()
        .flatten()
        .collect();
    let removed = removals(model, observed, &instances, &protected, &mut delete);

    let role_of = |name: &str| {
        if name == target_primary {
            labels::ROLE_PRIMARY
        } else {
            labels::ROLE_REPLICA
        }
    };
    let mut relabel = vec![];
    for pod in &observed.pods {
        let Some(name) = pod.metadata.name.as_deref() else {
            continue;
        };
        if !instances.iter().any(|i| i == name) || is_terminating(pod) {
            continue;
        }
        let current = pod
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(labels::ROLE))
            .map(String::as_str);
        if current != Some(role_of(name)) {
            relabel.push((name.to_string(), role_of(name).to_string()));
        }
    }

    let operation = operation::choose(&operation::Input {
        model,
        observed,
        status,
        target_primary: &target_primary,
        instances: &instances,
        removed: &removed,
        switchover_request: observed.switchover_request.as_deref(),
        lease: observed.lease.as_ref(),
    });
    let create_pods = operation::pods_to_create(model, &operation, &target_primary);
    delete.extend(
        operation::pods_to_delete(&operation)
            .into_iter()
            .map(Deletion::Pod),
    );
    delete.sort();
    delete.dedup();

    Ok(Plan {
        secrets: secret_actions(model, observed),
        target_primary,
        instances,
        apply,
        create_pods,
        relabel,
        delete,
        operation,
    })
}

/// Every child applied with server-side apply, for the given instances.
pub fn shared_children(
    model: &Model,
    instances: &[String],
    observed: &Observed,
) -> Result<Vec<Child>, PlanError> {
    let mut apply = vec![Child::ConfigMap(config::config_map(model, instances)?)];
    apply.extend(services::all(model).into_iter().map(Child::Service));
    apply.extend(
        rbac::service_accounts(model)
            .into_iter()
            .map(Child::ServiceAccount),
    );
    apply.push(Child::Lease(lease::primary_lease(model)));
    apply.push(Child::Role(rbac::instance_role(model)));
    apply.push(Child::RoleBinding(rbac::instance_role_binding(model)));
    for name in instances {
        for mut claim in instance::pvcs(model, name) {
            keep_larger_request(&mut claim, observed);
            apply.push(Child::Pvc(claim));
        }
    }
    apply.push(Child::Deployment(Box::new(proxy::deployment(model))));
    apply.extend(pdb::all(model).into_iter().map(Child::Pdb));
    Ok(apply)
}

/// The instances to keep: the primary, then existing pods, then volumes left
/// from earlier instances, then new names, lowest index first.
fn choose_instances(model: &Model, observed: &Observed, target_primary: &str) -> Vec<String> {
    let cluster = &model.name;
    let wanted = usize::try_from(model.spec.instances).unwrap_or(1).max(1);
    let index = |n: &str| names::instance_index(cluster, n);
    let with_pods: BTreeSet<u32> = observed
        .pods
        .iter()
        .filter_map(|p| index(p.metadata.name.as_deref()?))
        .collect();
    let with_volumes: BTreeSet<u32> = observed
        .pvcs
        .iter()
        .filter_map(|c| index(c.metadata.labels.as_ref()?.get(labels::INSTANCE)?))
        .collect();

    let mut keep: Vec<u32> = index(target_primary).into_iter().collect();
    for i in with_pods.iter().chain(with_volumes.difference(&with_pods)) {
        if keep.len() >= wanted {
            break;
        }
        if !keep.contains(i) {
            keep.push(*i);
        }
    }
    let mut next = 1;
    while keep.len() < wanted {
        if !keep.contains(&next) && !with_pods.contains(&next) {
            keep.push(next);
        }
        next += 1;
    }
    keep.sort_unstable();
    keep.into_iter()
        .map(|i| names::instance(cluster, i))
        .collect()
}

/// Never ask a volume to shrink: the API refuses it, and a larger volume
/// (grown by hand or by the storage system) is fine.
fn keep_larger_request(claim: &mut PersistentVolumeClaim, observed: &Observed) {
    let name = claim.metadata.name.as_deref();
    let Some(existing) = observed
        .pvcs
        .iter()
        .find(|c| c.metadata.name.as_deref() == name)
    else {
        return;
    };
    let (Some(have), Some(want)) = (
        instance::requested_storage(existing),
        instance::requested_storage(claim),
    ) else {
        return;
    };
    if let (Ok(h), Ok(w)) = (quantity::to_units(&have.0), quantity::to_units(&want.0))
        && h > w
    {
        let have = have.clone();
        if let Some(requests) = claim
            .spec
            .as_mut()
            .and_then(|s| s.resources.as_mut())
            .and_then(|r| r.requests.as_mut())
        {
            requests.insert("storage".into(), have);
        }
    }
}

/// Pods (and, by policy, volumes) of instances the cluster no longer keeps.
fn removals(
    model: &Model,
    observed: &Observed,
    keep: &[String],
    protected: &BTreeSet<&str>,
    delete: &mut Vec<Deletion>,
) -> Vec<String> {
    let kept = |name: &str| keep.iter().any(|k| k == name) || protected.contains(name);
    let mut removed = vec![];
    for pod in &observed.pods {
        let Some(name) = pod.metadata.name.as_deref() else {
            continue;
        };
        if !kept(name) {
            removed.push(name.to_string());
            if !is_terminating(pod) {
                delete.push(Deletion::Pod(name.to_string()));
            }
        }
    }
    if model.spec.storage.retention.when_scaled == RetentionRule::Delete {
        for claim in &observed.pvcs {
            let owner = claim
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(labels::INSTANCE));
            let (Some(name), Some(owner)) = (claim.metadata.name.as_deref(), owner) else {
                continue;
            };
            if !kept(owner) && claim.metadata.deletion_timestamp.is_none() {
                delete.push(Deletion::Pvc(name.to_string()));
            }
        }
    }
    removed
}

/// Secrets to create: passwords only when absent; the CA when absent;
/// certificates when absent, unreadable, from another CA, naming the wrong
/// hosts, or close to expiry.
fn secret_actions(model: &Model, observed: &Observed) -> Vec<SecretAction> {
    let cluster = &model.name;
    let mut actions: Vec<SecretAction> = PasswordSecret::ALL
        .into_iter()
        .filter(|k| !observed.has_secret(&k.name(cluster)))
        .map(SecretAction::CreatePassword)
        .collect();
    let ca_key = observed.secrets.get(&names::ca_key_secret(cluster));
    let new_ca = ca_key.is_none();
    // A CA Secret without its summary annotation (written by hand or by an
    // older version) is re-published with it, keeping the same key.
    let unannotated = ca_key.is_some_and(|f| f.ca_cert.is_none());
    let public_missing = model.spec.tls.mode == crate::api::TlsMode::Managed
        && !observed.has_secret(&names::ca_secret(cluster));
    if new_ca {
        actions.push(SecretAction::CreateCa);
    } else if unannotated || public_missing {
        actions.push(SecretAction::PublishCa);
    }
    for kind in CertKind::managed(model) {
        let reason = match observed.secrets.get(&kind.secret_name(cluster)) {
            None => Some(CertReason::Missing),
            Some(facts) => match &facts.cert {
                None => Some(CertReason::Unreadable),
                Some(_) if new_ca || !facts.signed_by_cluster_ca => Some(CertReason::NewCa),
                Some(cert) => {
                    let matches = match kind.identity(model) {
                        CertIdentity::Server(dns) => cert.dns_names == dns,
                        CertIdentity::Client(cn) => {
                            cert.common_name.as_deref() == Some(cn.as_str())
                        }
                    };
                    if !matches {
                        Some(CertReason::NamesChanged)
                    } else if cert.expires_soon(observed.now) {
                        Some(CertReason::Expiring)
                    } else {
                        None
                    }
                }
            },
        };
        if let Some(reason) = reason {
            actions.push(SecretAction::IssueCert(kind, reason));
        }
    }
    actions
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::core::v1::{PodCondition, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;
    use crate::operator::cluster::observe::SecretFacts;
    use crate::resources::model::fixtures::model;
    use crate::tls::CertInfo;

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
        assert!(!p.delete.iter().any(
            |d| matches!(d, Deletion::Pvc(n) | Deletion::Pod(n) if n == "db-1" || n == "db-2")
        ));
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

    fn cert(model: &Model, kind: CertKind, not_after: i64) -> SecretFacts {
        let (dns_names, common_name) = match kind.identity(model) {
            CertIdentity::Server(dns) => (dns.clone(), dns.first().cloned()),
            CertIdentity::Client(cn) => (vec![], Some(cn)),
        };
        SecretFacts {
            keys: ["tls.crt", "tls.key", "ca.crt"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            cert: Some(CertInfo {
                common_name,
                dns_names,
                not_after,
            }),
            signed_by_cluster_ca: true,
            ca_cert: None,
        }
    }

    #[test]
    fn existing_secrets_are_never_regenerated_and_certificates_renew_on_time() {
        let m = model();
        let now = 1_800_000_000;
        let year = 365 * 24 * 3600;
        let mut observed = Observed {
            now,
            ..Observed::default()
        };
        for k in PasswordSecret::ALL {
            observed
                .secrets
                .insert(k.name("db"), SecretFacts::default());
        }
        let ca = SecretFacts {
            ca_cert: Some(CertInfo {
                common_name: Some("db CA".into()),
                dns_names: vec![],
                not_after: now + 5 * year,
            }),
            ..SecretFacts::default()
        };
        observed
            .secrets
            .insert(names::ca_key_secret("db"), ca.clone());
        observed.secrets.insert(names::ca_secret("db"), ca);
        for kind in CertKind::managed(&m) {
            observed
                .secrets
                .insert(kind.secret_name("db"), cert(&m, kind, now + year));
        }
        let p = plan(&m, &observed, None).unwrap();
        assert!(p.secrets.is_empty(), "{:?}", p.secrets);
        let mut no_public_ca = observed.clone();
        no_public_ca.secrets.remove(&names::ca_secret("db"));
        assert_eq!(
            plan(&m, &no_public_ca, None).unwrap().secrets,
            vec![SecretAction::PublishCa]
        );
        let mut unannotated = observed.clone();
        unannotated
            .secrets
            .insert(names::ca_key_secret("db"), SecretFacts::default());
        assert_eq!(
            plan(&m, &unannotated, None).unwrap().secrets,
            vec![SecretAction::PublishCa],
            "re-published with its summary, never re-created"
        );

        observed.secrets.insert(
            CertKind::Server.secret_name("db"),
            cert(&m, CertKind::Server, now + 10 * 24 * 3600),
        );
        let mut wrong_names = cert(&m, CertKind::Pooler, now + year);
        wrong_names.cert.as_mut().unwrap().dns_names = vec!["old-name".into()];
        observed
            .secrets
            .insert(CertKind::Pooler.secret_name("db"), wrong_names);
        let mut foreign = cert(&m, CertKind::Agent, now + year);
        foreign.signed_by_cluster_ca = false;
        observed
            .secrets
            .insert(CertKind::Agent.secret_name("db"), foreign);
        let p = plan(&m, &observed, None).unwrap();
        assert_eq!(
            p.secrets,
            vec![
                SecretAction::IssueCert(CertKind::Server, CertReason::Expiring),
                SecretAction::IssueCert(CertKind::Pooler, CertReason::NamesChanged),
                SecretAction::IssueCert(CertKind::Agent, CertReason::NewCa),
            ]
        );
    }
}

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
use super::{certificates, retention, schedule, storage, verify};
use crate::api::pgbackup::PostgresBackup;
use crate::api::{PostgresClusterStatus, RetentionRule};
use crate::resources::instance;
use crate::resources::model::Model;
use crate::resources::secrets::{self, CertKind, PasswordSecret};
use crate::resources::{config, labels, lease, names, pdb, proxy, rbac, repo_host, services};

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
    /// The set of trusted CAs changed: `ca.crt` beside it is rewritten.
    TrustChanged,
    /// A new provided certificate passed its checks (copied, not issued).
    Provided,
}

/// Secrets are created, never overwritten by accident: passwords only when
/// absent, certificates when absent or due.
#[derive(Clone, Debug, PartialEq)]
pub enum SecretAction {
    CreatePassword(PasswordSecret),
    CreateCa,
    /// Re-write the CA Secrets (`<name>-ca-key`'s annotation, the public
    /// `<name>-ca`) from the CAs `<name>-ca-key` holds.
    PublishCa,
    /// One step of replacing the CA.
    Ca(crate::tls::CaStep),
    /// A provided certificate that passed its checks, copied to the
    /// Secret pods mount.
    CopyProvided(CertKind, SecretCopy),
    IssueCert(CertKind, CertReason),
    /// `<name>-roles` out of date with the Secrets `spec.roles` names.
    CopyRolePasswords(SecretCopy),
}

/// A Secret to write whose values never show in logs or test output.
#[derive(Clone, PartialEq)]
pub struct SecretCopy(pub Box<k8s_openapi::api::core::v1::Secret>);

impl std::fmt::Debug for SecretCopy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Secret({:?})",
            self.0.metadata.name.as_deref().unwrap_or("")
        )
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Deletion {
    Pod(String),
    Pvc(String),
    Pdb(String),
    /// The repository host's Deployment and Service, once no volume
    /// repository is left (its volumes stay: they hold backups).
    RepoHost(String),
    /// A `PostgresBackup` whose backup its repository expired.
    ExpiredBackup {
        name: String,
        label: String,
        repository: String,
    },
    /// A schedule's `Failed` `PostgresBackup` beyond the newest few.
    FailedBackup {
        name: String,
        schedule: String,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub target_primary: String,
    /// Instances the cluster keeps, by index.
    pub instances: Vec<String>,
    pub apply: Vec<Child>,
    pub secrets: Vec<SecretAction>,
    /// When a certificate or the CA falls due next (Unix seconds).
    pub certificates_due_at: Option<i64>,
    /// A provided certificate refused by its checks.
    pub tls_refused: Option<super::validate::Blocked>,
    /// The volumes: sizes asked for, growth refused, full ones.
    pub volumes: storage::Decision,
    pub create_pods: Vec<Pod>,
    /// Pods whose `capstan.dev/role` label must change: (pod, role).
    pub relabel: Vec<(String, String)>,
    pub delete: Vec<Deletion>,
    /// The one operation this reconcile works on.
    pub operation: Operation,
    /// `PostgresBackup` objects due schedules create.
    pub create_backups: Vec<PostgresBackup>,
    /// The schedules: what is due, when each runs next.
    pub schedules: schedule::Decision,
    /// Verification by restore, beside the operation (it touches no
    /// instance).
    pub verification: verify::Decision,
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

    let volumes = storage::decide(model, observed);
    let apply = shared_children(model, &instances, &volumes)?;
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
    if observed.repo_host.is_some() && repo_host::pvcs(model).is_empty() {
        delete.push(Deletion::RepoHost(names::repo_host(cluster)));
    }

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
            .chain(super::image_check::orphans(
                model.image_check.as_ref(),
                &observed.check_pods,
            ))
            .map(Deletion::Pod),
    );
    let (mut create_backups, schedules) =
        backup_objects(model, observed, status, &target_primary, &mut delete);
    if let Operation::MajorUpgrade(super::upgrade::Step::TakeBackup(name)) = &operation {
        create_backups.push(super::upgrade::backup_object(model, name));
    }
    delete.sort();
    delete.dedup();
    let verification = verify::decide(&verify::Input {
        model,
        backups: &observed.backups,
        pods: &observed.verify_pods,
        inventory: inventory(observed, &target_primary),
        now: observed.now,
    });

    let (secrets, certificates) = secret_actions(model, observed);
    Ok(Plan {
        volumes,
        secrets,
        certificates_due_at: certificates.due_at,
        tls_refused: certificates.refused,
        target_primary,
        instances,
        apply,
        create_pods,
        relabel,
        delete,
        operation,
        create_backups,
        schedules,
        verification,
    })
}

/// The `PostgresBackup` objects due schedules create, and those retention
/// deletes (added to `delete`).
fn backup_objects(
    model: &Model,
    observed: &Observed,
    status: Option<&PostgresClusterStatus>,
    primary: &str,
    delete: &mut Vec<Deletion>,
) -> (Vec<PostgresBackup>, schedule::Decision) {
    let Some(spec) = &model.spec.backup else {
        return (vec![], schedule::Decision::default());
    };
    let previous = status
        .and_then(|s| s.backup.as_ref())
        .map(|b| b.schedules.as_slice())
        .unwrap_or_default();
    let now = jiff::Timestamp::from_second(observed.now).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    let decision = schedule::decide(&schedule::Input {
        cluster: &model.name,
        schedules: &spec.schedules,
        backups: &observed.backups,
        previous,
        now,
    });
    let create = decision
        .due
        .iter()
        .map(|run| schedule::backup_object(model, &run.schedule, run.at))
        .collect();
    delete.extend(retention::prune(
        &observed.backups,
        inventory(observed, primary),
    ));
    (create, decision)
}

/// What the repositories hold, as the primary last read it.
fn inventory<'a>(
    observed: &'a Observed,
    primary: &str,
) -> &'a [crate::contract::backup::RepositoryInventory] {
    observed
        .reports
        .get(primary)
        .and_then(|r| r.archive.as_ref())
        .map(|a| a.repositories.as_slice())
        .unwrap_or_default()
}

/// Every child applied with server-side apply, for the given instances.
pub fn shared_children(
    model: &Model,
    instances: &[String],
    sizes: &storage::Decision,
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
    // Existing claims ask for what `storage::decide` said: never less
    // than they have, grown when the spec or autoGrow says and the class
    // allows it.
    for name in instances {
        for mut claim in instance::pvcs(model, name) {
            let decided = claim
                .metadata
                .name
                .as_deref()
                .and_then(|n| sizes.request(n))
                .cloned();
            if let (Some(size), Some(requests)) = (
                decided,
                claim
                    .spec
                    .as_mut()
                    .and_then(|s| s.resources.as_mut())
                    .and_then(|r| r.requests.as_mut()),
            ) {
                requests.insert("storage".into(), size);
            }
            apply.push(Child::Pvc(claim));
        }
    }
    apply.push(Child::Deployment(Box::new(proxy::deployment(model))));
    let repo_volumes = repo_host::pvcs(model);
    if !repo_volumes.is_empty() {
        apply.extend(repo_volumes.into_iter().map(Child::Pvc));
        apply.push(Child::Service(repo_host::service(model)));
        apply.push(Child::Deployment(Box::new(repo_host::deployment(model))));
    }
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

/// Passwords only when absent; the CA and certificates as
/// [`certificates::decide`] says.
fn secret_actions(
    model: &Model,
    observed: &Observed,
) -> (Vec<SecretAction>, certificates::Decision) {
    let mut actions: Vec<SecretAction> = PasswordSecret::ALL
        .into_iter()
        .filter(|k| !observed.has_secret(&k.name(&model.name)))
        .map(SecretAction::CreatePassword)
        .collect();
    if let Some(copy) = secrets::roles_secret(model, &observed.role_sources.0) {
        let digest = copy
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(secrets::CONTENT_ANNOTATION));
        if digest != observed.roles_digest.as_ref() {
            actions.push(SecretAction::CopyRolePasswords(SecretCopy(Box::new(copy))));
        }
    }
    let mut certs = certificates::decide(model, observed);
    actions.append(&mut certs.actions);
    (actions, certs)
}

#[cfg(test)]
mod tests;

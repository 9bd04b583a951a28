//! Labels on every object Capstan creates. Selectors use only
//! `capstan.dev/*` keys, which users have no reason to touch.

use std::collections::BTreeMap;

pub const CLUSTER: &str = "capstan.dev/cluster";
pub const INSTANCE: &str = "capstan.dev/instance";
pub const ROLE: &str = "capstan.dev/role";
/// On a `PostgresBackup` a schedule created: the schedule's name.
pub const SCHEDULE: &str = "capstan.dev/schedule";
/// On a `PostgresBackup` a schedule created: the run (RFC 3339) it answers.
pub const SCHEDULED_AT_ANNOTATION: &str = "capstan.dev/scheduled-at";
/// On a PostgresCluster: `<instance>` or `<instance>/<token>` requests a
/// switchover to that instance, carried out once per distinct value (a
/// GitOps re-apply of the same value does nothing; change the token to
/// switch over to the same instance again).
pub const SWITCHOVER_ANNOTATION: &str = "capstan.dev/switchover";
/// On an instance pod: a user's request (`kubectl capstan restart`) to
/// restart that instance the way a changed pod spec would (a replica
/// re-created, the primary after a switchover); the value is when it was
/// asked. The request goes with the pod.
pub const RESTART_ANNOTATION: &str = "capstan.dev/restart";
pub const COMPONENT: &str = "app.kubernetes.io/component";
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const NAME: &str = "app.kubernetes.io/name";
pub const INSTANCE_K8S: &str = "app.kubernetes.io/instance";

pub const MANAGER: &str = "capstan";
pub const ROLE_PRIMARY: &str = "primary";
pub const ROLE_REPLICA: &str = "replica";

/// `app.kubernetes.io/component` values.
pub const COMPONENT_DATABASE: &str = "database";
pub const COMPONENT_POOLER: &str = "pooler";
pub const COMPONENT_CONTROL: &str = "control";
pub const COMPONENT_BACKUP: &str = "backup";
/// The repository host and its volumes.
pub const COMPONENT_REPOSITORY: &str = "repository";
/// A throwaway pod restoring a backup to prove it usable.
pub const COMPONENT_VERIFY: &str = "verify";
/// A throwaway pod checking a PostgreSQL image before instances get it.
pub const COMPONENT_IMAGE_CHECK: &str = "image-check";
/// On an image-check pod: the image and the major it checks.
pub const IMAGE_ANNOTATION: &str = "capstan.dev/image";
pub const MAJOR_ANNOTATION: &str = "capstan.dev/major";
/// On an image-check pod of a major upgrade: the major it upgrades from
/// (the pod rehearses the upgrade on a copy of the primary).
pub const UPGRADE_FROM_ANNOTATION: &str = "capstan.dev/upgrade-from";
/// On a verification pod: the `PostgresBackup` it verifies (an annotation:
/// object names may be longer than a label value).
pub const BACKUP_ANNOTATION: &str = "capstan.dev/backup";

/// Labels every child of `cluster` carries.
pub fn common(cluster: &str, component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (CLUSTER.to_string(), cluster.to_string()),
        (COMPONENT.to_string(), component.to_string()),
        (MANAGED_BY.to_string(), MANAGER.to_string()),
        (NAME.to_string(), "postgresql".to_string()),
        (INSTANCE_K8S.to_string(), cluster.to_string()),
    ])
}

/// Labels of an instance pod (and its volumes, without the role).
pub fn instance(cluster: &str, instance: &str) -> BTreeMap<String, String> {
    let mut labels = common(cluster, COMPONENT_DATABASE);
    labels.insert(INSTANCE.to_string(), instance.to_string());
    labels
}

/// Selector for every instance pod of a cluster.
pub fn instances_selector(cluster: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (CLUSTER.to_string(), cluster.to_string()),
        (COMPONENT.to_string(), COMPONENT_DATABASE.to_string()),
    ])
}

/// Selector for the instance pods in `role`.
pub fn role_selector(cluster: &str, role: &str) -> BTreeMap<String, String> {
    let mut selector = instances_selector(cluster);
    selector.insert(ROLE.to_string(), role.to_string());
    selector
}

/// Selector for the verification pods of a cluster.
pub fn verify_selector(cluster: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (CLUSTER.to_string(), cluster.to_string()),
        (COMPONENT.to_string(), COMPONENT_VERIFY.to_string()),
    ])
}

/// Selector for the image-check pod of a cluster.
pub fn image_check_selector(cluster: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (CLUSTER.to_string(), cluster.to_string()),
        (COMPONENT.to_string(), COMPONENT_IMAGE_CHECK.to_string()),
    ])
}

/// Selector for the repository host's pods and volumes.
pub fn repo_host_selector(cluster: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (CLUSTER.to_string(), cluster.to_string()),
        (COMPONENT.to_string(), COMPONENT_REPOSITORY.to_string()),
    ])
}

/// Selector for the pooler pods of a cluster.
pub fn pooler_selector(cluster: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (CLUSTER.to_string(), cluster.to_string()),
        (COMPONENT.to_string(), COMPONENT_POOLER.to_string()),
    ])
}

/// Label selector string for every child of a cluster.
pub fn children_selector(cluster: &str) -> String {
    format!("{CLUSTER}={cluster},{MANAGED_BY}={MANAGER}")
}

/// Label selector string as a Kubernetes list query parameter.
pub fn to_selector(labels: &BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

//! The `PostgresBackup` custom resource: one object per backup, created by a
//! user (on demand) or by the operator (from `spec.backup.schedules`).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::backup::BackupType;
use super::limits;
use super::rules;

/// One pgBackRest backup of a `PostgresCluster` in the same namespace,
/// created on demand or by one of its `spec.backup.schedules`. Deleting the
/// object never deletes the backup in the repository. The operator deletes
/// a `Completed` object once pgBackRest expired its backup (retention), and
/// keeps the newest 3 `Failed` objects of each schedule; other objects are
/// left to whoever created them.
// Each `printcolumn(...)` repeats `type_ = "string"`; clippy reads the
// repeats as duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "capstan.dev",
    version = "v1alpha1",
    kind = "PostgresBackup",
    plural = "postgresbackups",
    shortname = "pgbackup",
    category = "capstan",
    namespaced,
    status = "PostgresBackupStatus",
    derive = "PartialEq",
    printcolumn(name = "Cluster", type_ = "string", json_path = ".spec.cluster"),
    printcolumn(name = "Type", type_ = "string", json_path = ".spec.type"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Label", type_ = "string", json_path = ".status.label"),
    printcolumn(
        name = "Verified",
        type_ = "string",
        json_path = ".status.verification.phase"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = rules::backup_spec_immutable())]
pub struct PostgresBackupSpec {
    /// The `PostgresCluster` to back up, in this namespace.
    #[schemars(length(min = 1, max = limits::CLUSTER_NAME_MAX))]
    #[x_kube(validation = rules::cluster_reference("spec.cluster"))]
    pub cluster: String,

    /// `full` (default), `differential` or `incremental`. pgBackRest takes
    /// a full backup instead when the repository holds none to base it on.
    #[serde(default, rename = "type")]
    pub type_: BackupType,

    /// `repo1` to `repo4` of the cluster's `spec.backup.repositories`;
    /// default the first one listed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 5, max = 5))]
    #[x_kube(validation = rules::repository_name("spec.repository"))]
    pub repository: Option<String>,

    /// Verify this backup by restoring it; default the cluster's
    /// `spec.backup.verify.enabled` for full backups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<bool>,
}

/// Values of `status.phase` (an enum in the CRD).
pub const BACKUP_PHASES: &[&str] = &["Pending", "Running", "Verifying", "Completed", "Failed"];

/// Values of `status.verification.phase` (an enum in the CRD).
pub const VERIFICATION_PHASES: &[&str] = &["Pending", "Running", "Passed", "Failed", "Skipped"];

/// Written only by Capstan.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PostgresBackupStatus {
    /// `Pending` (waiting for its turn: one backup at a time per cluster),
    /// `Running`, `Verifying` (taken; being restored in a throwaway pod,
    /// which never holds up the next backup), `Completed` (taken; see
    /// `verification` for whether it restored) or `Failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "super::schema::backup_phase")]
    pub phase: Option<String>,

    /// The type pgBackRest actually took (a differential or incremental
    /// backup without a full one to base it on becomes full).
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<BackupType>,

    /// The repository it was written to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,

    /// The instance it was read from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,

    /// pgBackRest's label, e.g. `20250601-010000F`; what
    /// `bootstrap.restore.target.backup` names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,

    /// RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,

    /// RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_at: Option<String>,

    /// From start to stop, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_seconds: Option<i64>,

    /// WAL position where the backup starts, e.g. `0/2000028`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lsn_start: Option<String>,

    /// WAL position where it ends: the earliest point it can be restored to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lsn_stop: Option<String>,

    /// First WAL segment the backup needs, e.g. `000000010000000000000002`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wal_start: Option<String>,

    /// Last WAL segment the backup needs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wal_stop: Option<String>,

    /// Size of the database it copied, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<i64>,

    /// Bytes written to the repository (after compression and, for
    /// differential and incremental backups, only the changed files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository_size: Option<i64>,

    /// The restore that proves the backup usable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification: Option<VerificationStatus>,

    /// What happened, in words; on failure pgBackRest's own message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,

    /// kstatus-compatible conditions; a list-map keyed by `type`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VerificationStatus {
    /// `Pending`, `Running`, `Passed`, `Failed` or `Skipped` (not a full
    /// backup, or verification turned off).
    #[schemars(schema_with = "super::schema::verification_phase")]
    pub phase: String,
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// From start to finish, in seconds (the pod's start included).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_seconds: Option<i64>,
    /// The throwaway pod that restores and checks the backup
    /// (`<backup>-verify`); deleted once its result is recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// `pgbackrest restore` into the scratch volume, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_seconds: Option<f64>,
    /// Recovery to the backup's end, until the copy accepted writes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery_seconds: Option<f64>,
    /// Catalogs, pg_amcheck and the sentinel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checks_seconds: Option<f64>,
    /// `Passed`, `NotAvailable` (the image has no pg_amcheck or amcheck
    /// extension) or `Failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amcheck: Option<String>,
    /// The row the primary wrote just before the backup started was in
    /// the restored copy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sentinel_found: Option<bool>,
    /// What was checked, or what failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

//! `PostgresCluster.status`: written only by Capstan.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::resources::labels;

/// Values of `status.instances[].role` (the CRD lists them as an enum).
pub const INSTANCE_ROLES: &[&str] = &[labels::ROLE_PRIMARY, labels::ROLE_REPLICA];

/// Values the operator writes to `status.failover.phase` (the CRD lists them
/// as an enum: a status write with any other value is refused).
pub const FAILOVER_PHASES: &[&str] = &["Promoting", "Completed", "Blocked", "Recovered"];

/// Values the operator writes to `status.switchover.phase` (an enum in the
/// CRD, like [`FAILOVER_PHASES`]).
pub const SWITCHOVER_PHASES: &[&str] = &[
    "Pending",
    "Pausing",
    "Promoting",
    "Resuming",
    "Completed",
    "Failed",
];

/// Values the operator writes to `status.upgrade.phase` (an enum in the CRD).
pub const UPGRADE_PHASES: &[&str] = &["Upgrading", "Recloning", "Completed", "Failed"];

/// The value of `status.selector` for the cluster named `cluster_name`: the
/// label selector of its instance pods (and no pooler pod), serialized as
/// the `/scale` subresource and the HorizontalPodAutoscaler expect, e.g.
/// `app.kubernetes.io/component=database,capstan.dev/cluster=db`.
pub fn scale_selector(cluster_name: &str) -> String {
    labels::to_selector(&labels::instances_selector(cluster_name))
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PostgresClusterStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// One word summary: Creating, Ready, Degraded, Stalled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,

    /// kstatus-compatible conditions: Ready, Reconciling, Stalled, Degraded.
    /// At most one per `type` (a list-map keyed by `type`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,

    /// The instance currently serving as primary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_primary: Option<String>,

    /// The instance that should be primary. Instance managers follow this:
    /// the named one promotes, every other one follows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_primary: Option<String>,

    /// PostgreSQL major version of the data files. Set when the cluster is
    /// created; only a completed major upgrade changes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres_version: Option<i32>,

    /// Instances that are ready (the `/scale` subresource's
    /// `status.replicas`).
    #[serde(default)]
    pub ready_instances: i32,

    /// Label selector of the instance pods as a string, e.g.
    /// `app.kubernetes.io/component=database,capstan.dev/cluster=db`: the
    /// `/scale` subresource's `status.selector`, which a
    /// HorizontalPodAutoscaler needs.
    // Always `scale_selector(<cluster name>)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,

    /// Every instance, primary first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub instances: Vec<InstanceStatus>,

    /// The proxy tier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<ProxyStatus>,

    /// Where clients and tools connect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoints: Option<Endpoints>,

    /// Certificates in use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsStatus>,

    /// Names of the Secrets holding credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets: Option<SecretNames>,

    /// The last (or running) automatic failover.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failover: Option<FailoverStatus>,

    /// The last (or running) planned switchover.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub switchover: Option<SwitchoverStatus>,

    /// The operation in progress (one at a time), or the last one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<OperationStatus>,

    /// Backups and WAL archiving, when `spec.backup` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<BackupStatus>,

    /// The last (or running) major-version upgrade.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgrade: Option<MajorUpgradeStatus>,
    /// The last PostgreSQL image tried (by a throwaway pod) before the
    /// instances were given it: a new image of the running major, or a
    /// major upgrade's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_check: Option<ImageCheckStatus>,

    /// Each entry of `spec.roles`, as the primary last applied it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub roles: Vec<ManagedObjectStatus>,

    /// Each entry of `spec.databases`, as the primary last applied it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub databases: Vec<ManagedObjectStatus>,
}

/// One role or database of the spec.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ManagedObjectStatus {
    pub name: String,
    /// `Applied` (as the entry says), `Kept` (`ensure: absent` on a
    /// database without `confirmDrop`), `Failed` (see `message`), or
    /// `Pending` (not applied by the primary yet).
    pub state: String,
    /// What was last done, or why it failed (PostgreSQL's words).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageCheckStatus {
    pub image: String,
    /// The PostgreSQL major it had to run.
    pub major: i32,
    pub passed: bool,
    /// The image's `postgres --version`, or why it cannot be used.
    pub message: String,
    /// `metadata.generation` it was checked for: a failed image is tried
    /// again after any change to the spec.
    pub generation: i64,
    /// RFC 3339.
    pub checked_at: String,
    /// A major upgrade from this version was rehearsed on a copy of the
    /// primary (pg_upgrade --check and --link).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgrade_from: Option<i32>,
    /// What the rehearsed `pg_upgrade --link` wrote besides the linked
    /// files: the free space the primary's data volume needs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link_bytes: Option<i64>,
    /// The image passed; the upgrade rehearsed on it failed (`message`
    /// says why, in pg_upgrade's or PostgreSQL's words).
    #[serde(default)]
    pub rehearsal_failed: bool,
}

/// A major-version upgrade, started by raising `spec.postgres.version`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MajorUpgradeStatus {
    /// `Upgrading` (replicas stopped, then the primary upgraded with
    /// pg_upgrade while the poolers hold clients), `Recloning` (the primary
    /// runs the new major; replicas clone it again), `Completed` or
    /// `Failed` (nothing changed: the cluster runs the old major).
    #[schemars(schema_with = "super::schema::upgrade_phase")]
    pub phase: String,
    pub from_version: i32,
    pub to_version: i32,
    /// The new major's image.
    pub image: String,
    /// The image the old major ran (its binaries are copied into the
    /// upgrading primary's pod).
    pub old_image: String,
    /// The `metadata.generation` this attempt was made for: a failed
    /// attempt is tried again once the spec changes.
    pub generation: i64,
    pub message: String,
    /// RFC 3339.
    pub started_at: String,
    /// RFC 3339: the poolers paused and the old primary stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_stopped_at: Option<String>,
    /// RFC 3339: the upgraded primary accepted connections and the
    /// poolers resumed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_started_at: Option<String>,
    /// From PAUSE to RESUME: how long writes waited (or failed, past the
    /// poolers' hold limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<i64>")]
    pub downtime_ms: Option<u64>,
    /// pg_upgrade's own time (check, link and swap).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<i64>")]
    pub pg_upgrade_ms: Option<u64>,
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<String>,
}

/// What the cluster can be restored to, and how archiving goes.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupStatus {
    /// The newest backup that completed (and passed verification when it
    /// was verified).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_successful_backup: Option<BackupReference>,

    /// RFC 3339: the earliest time the cluster can be restored to (the end
    /// of the oldest backup kept in any repository).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_recoverability_point: Option<String>,

    /// The last WAL segment archived.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_archived_wal: Option<ArchivedWal>,

    /// The last failure to archive a segment; kept after archiving
    /// recovers, next to a newer `lastArchivedWal`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_archive_failure: Option<ArchiveFailure>,

    /// The next backup a schedule will take.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_scheduled: Option<ScheduledBackup>,

    /// Each schedule of `spec.backup.schedules`: when it runs next and the
    /// `PostgresBackup` object it created last.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub schedules: Vec<ScheduleStatus>,
}

/// A `PostgresBackup` object and what it holds.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupReference {
    /// The `PostgresBackup` object's name.
    pub name: String,
    /// pgBackRest's label.
    pub label: String,
    /// `full`, `differential` or `incremental`.
    #[serde(rename = "type")]
    pub type_: super::backup::BackupType,
    /// `repo1` to `repo4`.
    pub repository: String,
    /// RFC 3339: when the backup stopped.
    pub completed_at: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ArchivedWal {
    /// Segment name, e.g. `000000010000000000000003`.
    pub wal: String,
    /// RFC 3339.
    pub time: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ArchiveFailure {
    /// Segment that failed.
    pub wal: String,
    /// RFC 3339.
    pub time: String,
    /// pgBackRest's message.
    pub message: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScheduledBackup {
    /// Name of the schedule in `spec.backup.schedules`.
    pub schedule: String,
    /// `full`, `differential` or `incremental`.
    #[serde(rename = "type")]
    pub type_: super::backup::BackupType,
    /// RFC 3339.
    pub time: String,
}

/// One schedule's progress. A run that falls due while the schedule's
/// previous backup is still pending or running waits for it; runs missed
/// while the operator was down become one backup, not one per run.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleStatus {
    /// Name of the schedule in `spec.backup.schedules`.
    pub name: String,
    /// The cron expression `next` was computed from.
    pub schedule: String,
    /// RFC 3339: when it next creates a `PostgresBackup`; in the past while
    /// that run waits for the schedule's previous backup.
    pub next: String,
    /// The `PostgresBackup` object it created last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_backup: Option<String>,
}

/// What the operator is doing, step by step; `kubectl capstan status` and
/// GitOps tools read it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OperationStatus {
    /// The operation: e.g. `CreateInstances`, `RollingUpdate`,
    /// `Switchover`, `Failover`, `ScaleDown`; `None` when idle.
    #[serde(rename = "type")]
    pub type_: String,
    /// Its current step, in words (also in the Reconciling condition).
    pub message: String,
    /// RFC 3339: when this operation started.
    pub started_at: String,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Phase {
    /// Children are being created; not every instance is ready yet.
    Creating,
    /// Every instance and pooler replica is ready.
    Ready,
    /// Running, but something is not ready (see conditions).
    Degraded,
    /// The spec cannot be applied; see the Stalled condition for the fix.
    Stalled,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Creating => "Creating",
            Phase::Ready => "Ready",
            Phase::Degraded => "Degraded",
            Phase::Stalled => "Stalled",
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InstanceStatus {
    pub name: String,
    /// `primary` or `replica`.
    #[schemars(schema_with = "super::schema::instance_role")]
    pub role: String,
    pub ready: bool,
    /// Pod phase as the kubelet reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_phase: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_ip: Option<String>,
    /// Timeline, as the instance manager last reported it.
    // Kubernetes knows no `uint32` format; an unknown one warns on every apply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<i64>")]
    pub timeline: Option<u32>,
    /// WAL position: written (primary) or received (replica).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lsn: Option<String>,
    /// Bytes of WAL a replica has not replayed yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_bytes: Option<i64>,
    /// A replica as its primary last listed it in `pg_stat_replication`:
    /// `sync`, `quorum`, `potential` or `async`. Kept while the primary
    /// cannot be asked, so a failover knows who had every commit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_state: Option<String>,
    /// A changed setting waits for a restart of this instance's
    /// PostgreSQL (`pending_restart`); a rolling restart takes it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pending_restart: bool,
    /// The instance manager binary it runs: the first 12 hex digits of its
    /// SHA-256. After a Capstan upgrade it becomes the operator's, with
    /// PostgreSQL still running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_build: Option<String>,
    /// The instance's volumes: size asked for and provided, use, resize.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<VolumeStatus>,
}

/// One volume of an instance.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeStatus {
    /// `data` or `wal`.
    pub volume: String,
    /// The PersistentVolumeClaim.
    pub claim: String,
    /// What the claim asks for: `storage.size`, or more once `autoGrow`
    /// grew it.
    pub requested: String,
    /// What the storage system provides (the claim's `status.capacity`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<String>,
    /// The file system's size and use, as the instance manager reads them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used_bytes: Option<i64>,
    /// `Resizing` (asked for, not provided yet) or
    /// `FileSystemResizePending` (the file system grows when its pod is
    /// re-created, which a rolling restart does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resize: Option<String>,
}

/// An automatic failover, step by step.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FailoverStatus {
    /// `Promoting`, `Completed`, `Blocked` (no replica may be promoted
    /// safely) or `Recovered` (the primary renewed its Lease again before
    /// anything was promoted).
    #[schemars(schema_with = "super::schema::failover_phase")]
    pub phase: String,
    /// The primary that was lost.
    pub from: String,
    /// The replica chosen (empty while blocked without a candidate).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub to: String,
    /// Why, in words (also sent as an Event).
    pub message: String,
    /// The lost primary's last reported WAL position.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_known_lsn: Option<String>,
    /// The promoted replica's received WAL position when it was chosen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidate_lsn: Option<String>,
    /// RFC 3339.
    pub started_at: String,
    /// RFC 3339, once the new primary accepts writes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<String>,
}

/// A planned switchover, requested with the `capstan.dev/switchover`
/// annotation (or `kubectl capstan switchover`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SwitchoverStatus {
    /// The annotation value this describes; a request is carried out once.
    pub request: String,
    /// `Pending`, `Pausing`, `Promoting`, `Resuming`, `Completed` or `Failed`.
    #[schemars(schema_with = "super::schema::switchover_phase")]
    pub phase: String,
    pub from: String,
    pub to: String,
    pub message: String,
    /// How long the poolers held client queries, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<i64>")]
    pub client_hold_ms: Option<u64>,
    /// RFC 3339.
    pub started_at: String,
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProxyStatus {
    pub replicas: i32,
    pub ready_replicas: i32,
    /// Service clients connect to.
    pub service: String,
    /// The supervisor binary each running pooler pod runs (first 12 hex
    /// digits of its SHA-256), by pod name order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub agent_builds: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Endpoints {
    /// Through PgBouncer (what applications should use), `host:port`.
    pub pooler: String,
    /// The primary, directly.
    pub read_write: String,
    /// Replicas only.
    pub read_only: String,
    /// Any instance.
    pub read: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TlsStatus {
    /// Secret holding the CA certificate clients should trust (`ca.crt`).
    pub ca_secret: String,
    /// Expiry of the CA certificate (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_not_after: Option<String>,
    /// Expiry of the instances' server certificate (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_not_after: Option<String>,
    /// Expiry of the poolers' server certificate (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pooler_not_after: Option<String>,
    /// Capstan's CAs for this cluster (with `Provided` TLS, those of the
    /// agents and the operator): the one signing and, while it is
    /// replaced, the next or the previous one, both trusted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub authorities: Vec<CaStatus>,
}

/// One CA clients trust.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CaStatus {
    /// `Signing`, `Next` (trusted, signs nothing yet) or `Previous`
    /// (replaced, trusted until it expires).
    pub role: String,
    /// SHA-256 of the certificate (DER), first 16 bytes in hex.
    pub fingerprint: String,
    /// RFC 3339.
    pub not_after: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretNames {
    pub superuser: String,
    pub app: String,
    pub replication: String,
    pub pooler: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::cluster::operation::failover_phase as ha;
    use crate::operator::cluster::switchover as so;

    /// A status write with a value the CRD's enum does not list is refused
    /// by the API server as a whole: every value the operator writes must
    /// be listed.
    #[test]
    fn the_schema_enums_list_every_value_the_operator_writes() {
        for phase in [ha::PROMOTING, ha::COMPLETED, ha::BLOCKED, ha::RECOVERED] {
            assert!(FAILOVER_PHASES.contains(&phase), "{phase}");
        }
        for phase in [
            so::PENDING,
            so::PAUSING,
            so::PROMOTING,
            so::RESUMING,
            so::COMPLETED,
            so::FAILED,
        ] {
            assert!(SWITCHOVER_PHASES.contains(&phase), "{phase}");
        }
    }

    #[test]
    fn the_scale_selector_selects_the_instance_pods_only() {
        let selector = scale_selector("db");
        assert_eq!(
            selector,
            "app.kubernetes.io/component=database,capstan.dev/cluster=db"
        );
        let matches = |pod: &std::collections::BTreeMap<String, String>| {
            selector.split(',').all(|term| {
                let (k, v) = term.split_once('=').unwrap();
                pod.get(k).is_some_and(|x| x == v)
            })
        };
        assert!(matches(&labels::instance("db", "db-1")));
        assert!(!matches(&labels::common("db", labels::COMPONENT_POOLER)));
        assert!(!matches(&labels::instance("db2", "db2-1")));
    }
}

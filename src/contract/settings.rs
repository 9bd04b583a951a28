//! The settings documents the operator writes into ConfigMap `<name>-config`
//! and the agents read from [`super::layout::CONFIG_DIR`]. The kubelet
//! refreshes mounted ConfigMaps, so agents watch these files and apply changes
//! (reload where possible) without a pod restart.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `instance.json`: what every instance manager of a cluster needs to know.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct InstanceSettings {
    /// Name of the `PostgresCluster`.
    pub cluster: String,
    pub namespace: String,
    /// PostgreSQL major version the cluster runs.
    pub postgres_version: i32,
    /// User `postgresql.conf` settings (never a managed one; the operator
    /// refuses those, and the instance manager checks again).
    #[serde(default)]
    pub parameters: BTreeMap<String, String>,
    /// User `pg_hba.conf` lines, placed after Capstan's own rules.
    #[serde(default)]
    pub hba: Vec<String>,
    /// How the first primary creates its data.
    pub initdb: InitdbSettings,
    /// Host replicas stream from, clone from and rewind from: the
    /// `<name>-rw` Service, which always selects the current primary.
    pub primary_host: String,
    /// Port on `primary_host` (5432 in pods; tests use their own).
    #[serde(default = "default_postgres_port")]
    pub primary_port: u16,
    /// Every instance (pod name) the cluster should have. The primary keeps a
    /// physical replication slot for each of the others, so a replica that
    /// falls behind never loses WAL it still needs, also after a failover.
    #[serde(default)]
    pub instances: Vec<String>,
    /// Whether `pg_wal` lives on its own volume ([`super::layout::WAL_DIR`]).
    #[serde(default)]
    pub separate_wal: bool,
    /// The primary's Lease and self-fencing; `None`: no lease is held (tests
    /// that do not exercise fencing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fencing: Option<FencingSettings>,
    /// Synchronous replication among the instances.
    #[serde(default)]
    pub synchronous: SynchronousSettings,
    /// WAL archiving and backups with pgBackRest (`spec.backup`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<super::backup::BackupSettings>,
    /// The first primary restores a backup instead of running initdb
    /// (`spec.bootstrap.restore`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore: Option<super::restore::RestoreSettings>,
    /// A major upgrade in progress, from this major to `postgres_version`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub major_upgrade: Option<super::upgrade::MajorUpgradeSettings>,
    /// Roles the primary keeps (`spec.roles`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<super::roles::RoleSettings>,
    /// Databases the primary keeps (`spec.databases`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub databases: Vec<super::roles::DatabaseSettings>,
}

impl InstanceSettings {
    /// Names these settings (SHA-256 of their JSON, first 16 bytes, hex):
    /// an instance reports it, so the operator knows who loaded the
    /// current ones.
    pub fn digest(&self) -> String {
        use sha2::{Digest, Sha256};
        let json = serde_json::to_string(self).unwrap_or_default();
        Sha256::digest(json.as_bytes())
            .iter()
            .take(16)
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

/// The primary holds a `coordination.k8s.io/v1` Lease and renews it; when it
/// cannot renew for `fence_after_ms` it stops accepting writes. The operator
/// promotes another instance only after it has seen no renewal for
/// `lease_duration_ms`, so with `fence_after_ms` + the time fencing takes <
/// `lease_duration_ms` two writable primaries never coexist (see
/// `operator::failover` for the arithmetic).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FencingSettings {
    /// Lease name (`<cluster>-primary`), in the pod's namespace.
    pub lease_name: String,
    /// `leaseDurationSeconds` written into the Lease, in milliseconds.
    pub lease_duration_ms: u64,
    /// How often the primary renews.
    pub renew_interval_ms: u64,
    /// Fence when no renewal succeeded for this long (measured from the start
    /// of the last successful renewal request, on the monotonic clock).
    pub fence_after_ms: u64,
}

/// `synchronous_standby_names` the primary keeps, over the other instances
/// (their `application_name` is their pod name).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SynchronousSettings {
    pub mode: SynchronousMode,
    /// How many standbys must confirm a commit (1 ≤ number ≤ replicas).
    #[serde(default)]
    pub number: u32,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SynchronousMode {
    /// Asynchronous replication.
    #[default]
    Off,
    /// `ANY n (…)`: a commit waits for any n standbys.
    Quorum,
    /// `FIRST n (…)`: a commit waits for the first n standbys in instance order.
    Priority,
}

fn default_postgres_port() -> u16 {
    super::layout::POSTGRES_PORT
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct InitdbSettings {
    pub database: String,
    pub owner: String,
    pub encoding: String,
    pub locale: String,
    pub data_checksums: bool,
}

/// `pooler.json`: what every pooler supervisor of a cluster needs to know.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PoolerSettings {
    /// Name of the `PostgresCluster`.
    pub cluster: String,
    pub namespace: String,
    /// Backend PgBouncer connects to: the `<name>-rw` Service.
    pub backend_host: String,
    pub backend_port: u16,
    /// `session`, `transaction` or `statement`.
    pub pool_mode: String,
    pub max_client_conn: i32,
    pub default_pool_size: i32,
    /// Other `[pgbouncer]` settings from the spec (never a managed one).
    #[serde(default)]
    pub parameters: BTreeMap<String, String>,
}

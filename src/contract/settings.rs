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

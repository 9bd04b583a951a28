//! Every default of the `PostgresCluster` API, in one place.
//!
//! serde fills these when a spec is read, and schemars copies them into the
//! CRD's `default:` fields, so the API server, `capstan render` and the
//! operator all see the same values.

use std::collections::BTreeMap;

use super::backup::{ArchiveSpec, BackupTarget, RetentionSpec, VerifySpec};
use super::cluster::{
    BootstrapSpec, CertificateLifetimes, FailoverSpec, InitdbSpec, PgBouncerSpec, PoolMode,
    ProxySpec, PvcRetentionPolicy, RetentionRule, TlsMode, TlsSpec,
};

pub fn instances() -> i32 {
    1
}

pub fn pooler_replicas() -> i32 {
    2
}

pub fn pool_mode() -> PoolMode {
    PoolMode::Transaction
}

pub fn max_client_conn() -> i32 {
    1000
}

pub fn default_pool_size() -> i32 {
    20
}

pub fn proxy() -> ProxySpec {
    ProxySpec {
        pgbouncer: pgbouncer(),
    }
}

pub fn pgbouncer() -> PgBouncerSpec {
    PgBouncerSpec {
        replicas: pooler_replicas(),
        pool_mode: pool_mode(),
        max_client_conn: max_client_conn(),
        default_pool_size: default_pool_size(),
        parameters: BTreeMap::new(),
        image: None,
        resources: None,
    }
}

pub fn tls_mode() -> TlsMode {
    TlsMode::Managed
}

pub fn tls() -> TlsSpec {
    TlsSpec {
        mode: tls_mode(),
        provided: None,
        certificates: certificates(),
    }
}

/// A year: what public CAs allowed until recently, renewed a month ahead.
pub fn leaf_duration() -> String {
    "8760h".to_string()
}

pub fn leaf_renew_before() -> String {
    "720h".to_string()
}

/// Five years, with the next CA trusted three months ahead: two months
/// for every client to pick up the new `ca.crt` before servers use it.
pub fn ca_duration() -> String {
    "43800h".to_string()
}

pub fn ca_renew_before() -> String {
    "2160h".to_string()
}

pub fn certificates() -> CertificateLifetimes {
    CertificateLifetimes {
        duration: leaf_duration(),
        renew_before: leaf_renew_before(),
        ca_duration: ca_duration(),
        ca_renew_before: ca_renew_before(),
    }
}

pub fn database() -> String {
    "app".to_string()
}

pub fn owner() -> String {
    "app".to_string()
}

pub fn encoding() -> String {
    "UTF8".to_string()
}

pub fn locale() -> String {
    "C.UTF-8".to_string()
}

pub fn data_checksums() -> bool {
    true
}

pub fn initdb() -> InitdbSpec {
    InitdbSpec {
        database: database(),
        owner: owner(),
        encoding: encoding(),
        locale: locale(),
        data_checksums: data_checksums(),
    }
}

pub fn bootstrap() -> BootstrapSpec {
    BootstrapSpec {
        initdb: Some(initdb()),
        restore: None,
    }
}

/// Backups are read from a streaming replica when there is one, so the
/// primary's I/O serves clients; pgBackRest falls back to the primary.
pub fn backup_target() -> BackupTarget {
    BackupTarget::Primary
}

/// A minute of WAL at most is lost with the cluster (when anything was
/// written): the RPO most teams start from.
pub fn archive_timeout() -> String {
    "60s".to_string()
}

/// Asynchronous `archive-push` keeps up with busy primaries.
pub fn archive_async() -> bool {
    true
}

pub fn archive() -> ArchiveSpec {
    ArchiveSpec {
        timeout: archive_timeout(),
        async_: archive_async(),
    }
}

/// Every full backup is proven restorable unless turned off.
pub fn verify_enabled() -> bool {
    true
}

pub fn verify() -> VerifySpec {
    VerifySpec {
        enabled: verify_enabled(),
    }
}

/// Two full backups: while the newest is verified the one before still
/// covers its WAL.
pub fn retention_full() -> i32 {
    2
}

pub fn retention() -> RetentionSpec {
    RetentionSpec {
        full: retention_full(),
        differential: None,
    }
}

pub fn verify_tls() -> bool {
    true
}

/// The key names the AWS tools use.
pub fn access_key_id_key() -> String {
    "AWS_ACCESS_KEY_ID".to_string()
}

pub fn secret_access_key_key() -> String {
    "AWS_SECRET_ACCESS_KEY".to_string()
}

/// Keeping volumes when the cluster is deleted is the safe choice: deleting a
/// `PostgresCluster` by mistake must not delete the data with it.
pub fn when_deleted() -> RetentionRule {
    RetentionRule::Retain
}

/// A scaled-away replica holds only a copy of the primary's data, so its
/// volume can go.
pub fn when_scaled() -> RetentionRule {
    RetentionRule::Delete
}

pub fn pvc_retention() -> PvcRetentionPolicy {
    PvcRetentionPolicy {
        when_deleted: when_deleted(),
        when_scaled: when_scaled(),
    }
}

/// Lease duration: a lost primary is replaced after about this long.
pub fn detection_seconds() -> i32 {
    4
}

/// 16 MiB of WAL: a busy replica's normal distance, far less than a
/// replica that stopped streaming.
pub fn max_lag_bytes() -> i64 {
    16 * 1024 * 1024
}

pub fn failover() -> FailoverSpec {
    FailoverSpec {
        detection_seconds: detection_seconds(),
        max_lag_bytes: max_lag_bytes(),
        allow_data_loss: false,
    }
}

/// Image used when `spec.postgres.image` is empty: the official Debian-based
/// PostgreSQL image of that major version.
pub fn postgres_image(version: i32) -> String {
    format!("docker.io/library/postgres:{version}-bookworm")
}

/// Image used when `spec.proxy.pgbouncer.image` is empty.
pub const PGBOUNCER_IMAGE: &str = "ghcr.io/cloudnative-pg/pgbouncer:1.24.1";

/// Room for a burst of writes while a volume grows.
pub fn auto_grow_threshold() -> i32 {
    80
}

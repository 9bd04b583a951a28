//! What the operator and the instance managers agree on for WAL archiving
//! and backups: the `backup` block of `instance.json`, the `POST /backup`
//! request, and what an instance reports about archiving and its backup
//! job. pgBackRest does the work; these only carry who asks for what.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use crate::backup::command::BackupType;
pub use crate::backup::repository::Repository;

/// `instance.json` → `backup`: present when `spec.backup` is set.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BackupSettings {
    /// pgBackRest stanza: the cluster's name.
    pub stanza: String,
    /// `repo1`, `repo2`, … in order (pgBackRest numbers them by position).
    /// Credentials are files under [`secrets_dir`], mounted from Secrets.
    pub repositories: Vec<Repository>,
    /// `archive_timeout`: the longest a committed change waits to be
    /// archived (the RPO bound on a quiet database).
    pub archive_timeout_seconds: u64,
    /// `archive-async`: WAL is pushed by a background process in batches.
    pub archive_async: bool,
    /// Set with `spec.backup.target: preferReplica`: every instance runs
    /// pgBackRest's TLS server, so a standby taking a backup reaches the
    /// primary's part of it (start/stop backup, the few files only the
    /// primary has).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standby_backups: Option<StandbyBackups>,
}

/// How a standby reaches the primary's pgBackRest TLS server.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct StandbyBackups {
    /// A name that always leads to the primary and that the shared
    /// certificate covers: the `-rw` Service.
    pub primary_host: String,
    /// The primary's server port at that name (the Service's port).
    pub primary_port: u16,
    /// Where this instance's own server listens (on its pod IP).
    pub port: u16,
    /// The primary's data directory, PostgreSQL port and socket directory
    /// as its pgBackRest server is to find them (pgBackRest passes them
    /// from the standby; every pod has the same layout).
    pub primary_pg_path: PathBuf,
    pub primary_pg_port: u16,
    pub primary_socket_path: PathBuf,
    /// Common name of the client certificate the servers accept (pgBackRest
    /// `tls-server-auth`); the shared certificate's own.
    pub client_name: String,
}

/// Where the credentials of repository `n` (1-based) are mounted.
pub fn secrets_dir(n: usize) -> String {
    format!("{}/repo{n}", super::layout::BACKUP_SECRETS_DIR)
}

/// `POST /backup`: take one backup now. At most one runs per instance; a
/// second request while one runs is refused (409) unless it is the same
/// `backup`, which answers with the running job (retries are harmless).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct BackupRequest {
    /// Name of the `PostgresBackup` object.
    pub backup: String,
    #[serde(rename = "type")]
    pub kind: BackupType,
    /// 1-based repository number (`repoN`).
    pub repository: u32,
    /// Taken on this standby (`backup-standby`): the files come from here,
    /// the rest from the primary's pgBackRest server
    /// ([`BackupSettings::standby_backups`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub standby: bool,
}

/// `POST /sentinel` on the primary: write the sentinel row of `backup`
/// (before a standby takes it), which its verification looks for. The
/// answer repeats the request.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SentinelRequest {
    pub backup: String,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobPhase {
    Running,
    Completed,
    Failed,
}

/// The backup an instance runs, or the last one it ran since it started.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct BackupJob {
    pub backup: String,
    #[serde(rename = "type")]
    pub kind: BackupType,
    pub repository: u32,
    pub phase: JobPhase,
    /// RFC 3339.
    pub started_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// What pgBackRest recorded (from `pgbackrest info`), once completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<BackupResult>,
    /// pgBackRest's own error, when failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct BackupResult {
    pub label: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lsn_start: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lsn_stop: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wal_start: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wal_stop: Option<String>,
    /// Database size backed up, bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// Bytes stored in the repository (compressed, this backup only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository_size: Option<u64>,
    /// pgBackRest's start and stop times, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_at: Option<String>,
}

/// WAL archiving on the primary: the stanza and `pg_stat_archiver`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ArchiveReport {
    /// `stanza-create` succeeded for every repository.
    pub stanza_ready: bool,
    /// Why the stanza is not ready (pgBackRest's message).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stanza_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_archived_wal: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_archived_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failed_wal: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failed_at: Option<String>,
    #[serde(default)]
    pub archived_count: u64,
    #[serde(default)]
    pub failed_count: u64,
    /// What each readable repository holds (`pgbackrest info`, read after
    /// each backup and every few minutes); a repository that cannot be
    /// read is left out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub repositories: Vec<RepositoryInventory>,
    /// Why the last `pgbackrest info` failed (pgBackRest's message).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inventory_error: Option<String>,
}

/// The backups one repository holds. pgBackRest expires old ones itself
/// after each backup (`repoN-retention-full` / `-diff`); the operator
/// deletes the `PostgresBackup` objects of the expired ones from this.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RepositoryInventory {
    /// 1-based repository number (`repoN`).
    pub repository: u32,
    /// RFC 3339: when `pgbackrest info` started. A backup that ended after
    /// it may be missing only because it was not written yet.
    pub read_at: String,
    /// Labels of the backups it holds, oldest first.
    pub labels: Vec<String>,
    /// RFC 3339: the end of its oldest backup, the earliest point a
    /// restore from it reaches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_recoverability_point: Option<String>,
    /// RFC 3339: the end of its newest backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_backup_at: Option<String>,
}

impl ArchiveReport {
    /// The last archive attempt failed (a later success clears it).
    pub fn failing(&self) -> bool {
        match (&self.last_failed_at, &self.last_archived_at) {
            (Some(failed), Some(archived)) => failed > archived,
            (Some(_), None) => true,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archiving_is_failing_only_when_the_last_attempt_failed() {
        let at = |f: Option<&str>, a: Option<&str>| ArchiveReport {
            last_failed_at: f.map(str::to_string),
            last_archived_at: a.map(str::to_string),
            ..ArchiveReport::default()
        };
        assert!(!at(None, None).failing());
        assert!(at(Some("2026-12-04T10:00:00Z"), None).failing());
        assert!(at(Some("2026-12-04T10:00:01Z"), Some("2026-12-04T10:00:00Z")).failing());
        assert!(!at(Some("2026-12-04T10:00:00Z"), Some("2026-12-04T10:00:01Z")).failing());
    }

    #[test]
    fn a_request_reads_as_the_operator_writes_it() {
        let r: BackupRequest = serde_json::from_str(
            r#"{"backup":"db-nightly-202612040100","type":"incr","repository":2}"#,
        )
        .unwrap();
        assert_eq!(r.kind, BackupType::Incr);
        assert_eq!(r.repository, 2);
        assert_eq!(serde_json::to_value(&r).unwrap()["type"], "incr");
    }
}

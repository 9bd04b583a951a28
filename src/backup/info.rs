//! `pgbackrest info --output=json`, read into the facts a `PostgresBackup`
//! object and the cluster status report: each backup's label, type, times,
//! WAL and LSN range and sizes, and the archived WAL range.

use serde::Deserialize;

use super::command::BackupType;

#[derive(Debug, thiserror::Error)]
pub enum InfoError {
    #[error("pgbackrest info printed something that is not its JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("pgbackrest info: backup {label} has an unknown type {kind:?}")]
    UnknownType { label: String, kind: String },
    #[error("pgbackrest info: backup {label} has an impossible time {seconds}")]
    BadTime { label: String, seconds: i64 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backup {
    pub label: String,
    pub kind: BackupType,
    pub start: jiff::Timestamp,
    pub stop: jiff::Timestamp,
    pub wal_start: Option<String>,
    pub wal_stop: Option<String>,
    pub lsn_start: Option<String>,
    pub lsn_stop: Option<String>,
    /// Bytes of the database the backup covers.
    pub size: u64,
    /// Bytes this backup stored in the repository (compressed, own files only).
    pub repo_delta: u64,
    /// Bytes needed in the repository to restore it (with what it references).
    pub repo_size: u64,
    /// The backup a diff or incr builds on.
    pub prior: Option<String>,
    pub repo: u32,
    /// pgBackRest found a page checksum error while copying.
    pub error: bool,
}

impl Backup {
    pub fn duration(&self) -> std::time::Duration {
        let seconds = self.stop.as_second().saturating_sub(self.start.as_second());
        std::time::Duration::from_secs(seconds.max(0) as u64)
    }
}

/// The WAL one database history (`17-1`) has in one repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveRange {
    pub id: String,
    pub repo: u32,
    pub min: Option<String>,
    pub max: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StanzaInfo {
    pub name: String,
    /// 0 is ok; pgBackRest's other codes mean missing stanza, no backup, ….
    pub status_code: i64,
    pub status_message: String,
    /// A backup is running.
    pub backup_running: bool,
    /// Oldest first, as pgBackRest lists them.
    pub backups: Vec<Backup>,
    pub archive: Vec<ArchiveRange>,
    /// Each repository's own status: one that cannot be read (unreachable,
    /// refused) lists none of its backups.
    pub repos: Vec<RepoStatus>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoStatus {
    pub key: u32,
    /// 0 is ok, 2 no valid backups; see the stanza's codes.
    pub code: i64,
    pub message: String,
}

impl RepoStatus {
    /// pgBackRest read the repository: what it lists is what it holds.
    pub fn readable(&self) -> bool {
        matches!(self.code, 0 | 2)
    }
}

impl StanzaInfo {
    pub fn backup(&self, label: &str) -> Option<&Backup> {
        self.backups.iter().find(|b| b.label == label)
    }

    pub fn latest(&self) -> Option<&Backup> {
        self.backups.iter().max_by_key(|b| b.stop)
    }

    /// The earliest time a restore can reach: the end of the oldest backup.
    pub fn first_recoverability_point(&self) -> Option<jiff::Timestamp> {
        self.backups.iter().map(|b| b.stop).min()
    }

    /// The newest WAL segment archived in any repository.
    pub fn last_archived_wal(&self) -> Option<&str> {
        // Segment names sort in WAL order (timeline, then position).
        self.archive.iter().filter_map(|a| a.max.as_deref()).max()
    }
}

#[derive(Deserialize)]
struct RawStanza {
    name: String,
    #[serde(default)]
    status: RawStatus,
    #[serde(default)]
    backup: Vec<RawBackup>,
    #[serde(default)]
    archive: Vec<RawArchive>,
    #[serde(default)]
    repo: Vec<RawRepo>,
}

#[derive(Deserialize)]
struct RawRepo {
    key: u32,
    #[serde(default)]
    status: RawStatus,
}

#[derive(Deserialize, Default)]
struct RawStatus {
    #[serde(default)]
    code: i64,
    #[serde(default)]
    message: String,
    #[serde(default)]
    lock: Option<RawLock>,
}

#[derive(Deserialize)]
struct RawLock {
    backup: Option<RawHeld>,
}

#[derive(Deserialize)]
struct RawHeld {
    #[serde(default)]
    held: bool,
}

#[derive(Deserialize)]
struct RawArchive {
    id: String,
    database: Option<RawDatabase>,
    min: Option<String>,
    max: Option<String>,
}

#[derive(Deserialize)]
struct RawDatabase {
    #[serde(rename = "repo-key", default)]
    repo_key: u32,
}

#[derive(Deserialize, Default)]
struct RawPair {
    start: Option<String>,
    stop: Option<String>,
}

#[derive(Deserialize)]
struct RawTimes {
    start: i64,
    stop: i64,
}

#[derive(Deserialize, Default)]
struct RawSizes {
    #[serde(default)]
    size: u64,
    #[serde(default)]
    repository: RawRepoSizes,
}

#[derive(Deserialize, Default)]
struct RawRepoSizes {
    #[serde(default)]
    size: u64,
    #[serde(default)]
    delta: u64,
}

#[derive(Deserialize)]
struct RawBackup {
    label: String,
    #[serde(rename = "type")]
    kind: String,
    timestamp: RawTimes,
    #[serde(default)]
    archive: Option<RawPair>,
    #[serde(default)]
    lsn: Option<RawPair>,
    #[serde(default)]
    info: RawSizes,
    prior: Option<String>,
    database: Option<RawDatabase>,
    #[serde(default)]
    error: Option<bool>,
}

fn time(label: &str, seconds: i64) -> Result<jiff::Timestamp, InfoError> {
    jiff::Timestamp::from_second(seconds).map_err(|_| InfoError::BadTime {
        label: label.to_string(),
        seconds,
    })
}

fn backup(raw: RawBackup) -> Result<Backup, InfoError> {
    let kind = BackupType::parse(&raw.kind).ok_or_else(|| InfoError::UnknownType {
        label: raw.label.clone(),
        kind: raw.kind.clone(),
    })?;
    let archive = raw.archive.unwrap_or_default();
    let lsn = raw.lsn.unwrap_or_default();
    Ok(Backup {
        start: time(&raw.label, raw.timestamp.start)?,
        stop: time(&raw.label, raw.timestamp.stop)?,
        label: raw.label,
        kind,
        wal_start: archive.start,
        wal_stop: archive.stop,
        lsn_start: lsn.start,
        lsn_stop: lsn.stop,
        size: raw.info.size,
        repo_delta: raw.info.repository.delta,
        repo_size: raw.info.repository.size,
        prior: raw.prior,
        repo: raw.database.map(|d| d.repo_key).unwrap_or(1),
        error: raw.error.unwrap_or(false),
    })
}

/// Every stanza in the output (one when `--stanza` was given).
pub fn parse(json: &str) -> Result<Vec<StanzaInfo>, InfoError> {
    let raw: Vec<RawStanza> = serde_json::from_str(json)?;
    raw.into_iter()
        .map(|s| {
            Ok(StanzaInfo {
                name: s.name,
                status_code: s.status.code,
                status_message: s.status.message,
                backup_running: s.status.lock.and_then(|l| l.backup).is_some_and(|b| b.held),
                backups: s.backup.into_iter().map(backup).collect::<Result<_, _>>()?,
                archive: s
                    .archive
                    .into_iter()
                    .map(|a| ArchiveRange {
                        id: a.id,
                        repo: a.database.map(|d| d.repo_key).unwrap_or(1),
                        min: a.min,
                        max: a.max,
                    })
                    .collect(),
                repos: s
                    .repo
                    .into_iter()
                    .map(|r| RepoStatus {
                        key: r.key,
                        code: r.status.code,
                        message: r.status.message,
                    })
                    .collect(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Captured from pgBackRest 2.55.1 on PostgreSQL 17 (posix repository,
    // retention-full=2): full, incr, diff, full.
    const REAL: &str = include_str!("../../tests/fixtures/pgbackrest/info-pg17-posix.json");
    const REAL_SET: &str = include_str!("../../tests/fixtures/pgbackrest/info-pg17-set.json");

    #[test]
    fn parses_a_real_repository() {
        let info = parse(REAL).unwrap();
        assert_eq!(info.len(), 1);
        let s = &info[0];
        assert_eq!(s.name, "main");
        assert_eq!((s.status_code, s.status_message.as_str()), (0, "ok"));
        assert!(!s.backup_running);
        let kinds: Vec<_> = s.backups.iter().map(|b| b.kind).collect();
        assert_eq!(
            kinds,
            [
                BackupType::Full,
                BackupType::Incr,
                BackupType::Diff,
                BackupType::Full
            ]
        );
        let incr = &s.backups[1];
        assert_eq!(incr.label, "20261204-191306F_20261204-191309I");
        assert_eq!(incr.prior.as_deref(), Some("20261204-191306F"));
        assert_eq!(incr.wal_start.as_deref(), Some("000000010000000000000005"));
        assert_eq!(incr.lsn_stop.as_deref(), Some("0/5000120"));
        assert_eq!(incr.size, 22397994);
        assert_eq!((incr.repo_size, incr.repo_delta), (2835809, 163956));
        assert_eq!(incr.start.as_second(), 1796411589);
        assert_eq!(incr.duration(), std::time::Duration::from_secs(2));
        assert_eq!(incr.repo, 1);
        assert!(!incr.error);
        assert_eq!(s.backups[0].prior, None);
        assert_eq!(s.latest().unwrap().label, "20261204-191312F");
        assert_eq!(
            s.first_recoverability_point().unwrap().as_second(),
            1796411589
        );
        assert_eq!(s.archive.len(), 1);
        assert_eq!(s.archive[0].id, "17-1");
        assert_eq!(
            s.archive[0].min.as_deref(),
            Some("000000010000000000000002")
        );
        assert_eq!(s.last_archived_wal(), Some("000000010000000000000009"));
        assert_eq!(
            s.repos,
            [RepoStatus {
                key: 1,
                code: 0,
                message: "ok".into()
            }]
        );
        assert!(s.repos[0].readable());
    }

    #[test]
    fn parses_one_backup_output() {
        let s = &parse(REAL_SET).unwrap()[0];
        assert_eq!(s.backups.len(), 1);
        assert!(s.backup("20261204-191306F").is_some());
        assert!(s.backup("nope").is_none());
    }

    #[test]
    fn a_stanza_without_backups_and_a_running_backup() {
        let json = r#"[{"archive":[],"backup":[],"cipher":"none","db":[],"name":"db",
            "repo":[{"cipher":"none","key":1,"status":{"code":2,"message":"no valid backups"}}],
            "status":{"code":2,"lock":{"backup":{"held":true}},"message":"no valid backups"}}]"#;
        let s = &parse(json).unwrap()[0];
        assert_eq!(s.status_code, 2);
        assert!(s.backup_running);
        assert!(s.latest().is_none());
        assert!(s.first_recoverability_point().is_none());
        assert_eq!(s.last_archived_wal(), None);
        assert_eq!((s.repos[0].key, s.repos[0].code), (1, 2));
        assert!(s.repos[0].readable(), "read, and empty");
    }

    #[test]
    fn rejects_what_is_not_info_json() {
        assert!(matches!(parse("ERROR: [055]"), Err(InfoError::Json(_))));
        let odd = REAL.replace("\"type\":\"incr\"", "\"type\":\"snapshot\"");
        assert_ne!(odd, REAL);
        assert!(matches!(parse(&odd), Err(InfoError::UnknownType { .. })));
    }
}

//! `GET /metrics`: Prometheus text format.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::contract::backup::{ArchiveReport, JobPhase};
use crate::contract::instance::{InstanceReport, Role};

use super::local::Sample;
use crate::postgres::lsn::Lsn;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RoleLabel {
    pub role: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DatabaseLabel {
    pub datname: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RepositoryLabel {
    pub repository: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VolumeLabel {
    pub volume: String,
}

/// A mounted TLS Secret (`server`, `replication`, `agent`, ...).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MountLabel {
    pub mount: String,
}

pub struct Metrics {
    registry: Registry,
    up: Gauge,
    role: Family<RoleLabel, Gauge>,
    lag_bytes: Gauge,
    lag_seconds: Gauge<f64, AtomicU64>,
    wal_receiver: Family<StateLabel, Gauge>,
    timeline: Gauge,
    wal_position: Gauge,
    synchronous_standbys: Gauge,
    synchronous_required: Gauge,
    certificate_expiry: Family<MountLabel, Gauge>,
    pending_restart: Gauge,
    volume_size: Family<VolumeLabel, Gauge>,
    volume_available: Family<VolumeLabel, Gauge>,
    lease_held: Gauge,
    fenced: Gauge,
    connections: Family<StateLabel, Gauge>,
    xid_age: Gauge,
    database_size: Family<DatabaseLabel, Gauge>,
    pub postgres_restarts: Counter,
    pub rewinds: Family<ResultLabel, Counter>,
    pub reclones: Counter,
    pub promotions: Counter,
    archive_failed: Gauge,
    archived: Gauge,
    archive_failing: Gauge,
    archive_age: Gauge<f64, AtomicU64>,
    stanza_ready: Gauge,
    backup_running: Gauge,
    backup_duration: Gauge<f64, AtomicU64>,
    backup_last: Family<ResultLabel, Gauge>,
    backup_finished_at: Gauge,
    backup_age: Family<RepositoryLabel, Gauge<f64, AtomicU64>>,
    backups_held: Family<RepositoryLabel, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("capstan");
        let metrics = Self {
            up: Gauge::default(),
            role: Family::default(),
            lag_bytes: Gauge::default(),
            lag_seconds: Gauge::default(),
            wal_receiver: Family::default(),
            timeline: Gauge::default(),
            wal_position: Gauge::default(),
            synchronous_standbys: Gauge::default(),
            synchronous_required: Gauge::default(),
            certificate_expiry: Family::default(),
            pending_restart: Gauge::default(),
            volume_size: Family::default(),
            volume_available: Family::default(),
            lease_held: Gauge::default(),
            fenced: Gauge::default(),
            connections: Family::default(),
            xid_age: Gauge::default(),
            database_size: Family::default(),
            postgres_restarts: Counter::default(),
            rewinds: Family::default(),
            reclones: Counter::default(),
            promotions: Counter::default(),
            archive_failed: Gauge::default(),
            archived: Gauge::default(),
            archive_failing: Gauge::default(),
            archive_age: Gauge::default(),
            stanza_ready: Gauge::default(),
            backup_running: Gauge::default(),
            backup_duration: Gauge::default(),
            backup_last: Family::default(),
            backup_finished_at: Gauge::default(),
            backup_age: Family::default(),
            backups_held: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "postgres_up",
            "PostgreSQL accepts connections",
            metrics.up.clone(),
        );
        registry.register(
            "postgres_role",
            "1 for the current role (primary, replica, unknown)",
            metrics.role.clone(),
        );
        registry.register(
            "replication_lag_bytes",
            "Replica: WAL bytes behind the primary's last reported position",
            metrics.lag_bytes.clone(),
        );
        registry.register(
            "replication_lag_seconds",
            "Replica: age of the last replayed transaction while behind",
            metrics.lag_seconds.clone(),
        );
        registry.register(
            "wal_receiver_state",
            "Replica: 1 for the WAL receiver's status (streaming, stopped, ...)",
            metrics.wal_receiver.clone(),
        );
        registry.register(
            "postgres_timeline",
            "Timeline the instance writes (primary) or replays (replica)",
            metrics.timeline.clone(),
        );
        registry.register(
            "wal_position_bytes",
            "WAL position as bytes since 0/0: written (primary) or replayed (replica)",
            metrics.wal_position.clone(),
        );
        registry.register(
            "replication_synchronous_standbys",
            "Primary: standbys streaming as synchronous (sync or quorum) candidates",
            metrics.synchronous_standbys.clone(),
        );
        registry.register(
            "replication_synchronous_required",
            "Primary: standbys synchronous_standby_names makes each commit wait for",
            metrics.synchronous_required.clone(),
        );
        registry.register(
            "tls_certificate_expiry_timestamp_seconds",
            "When the certificate of a mounted TLS Secret expires (Unix time)",
            metrics.certificate_expiry.clone(),
        );
        registry.register(
            "postgres_pending_restart",
            "A changed setting waits for a restart",
            metrics.pending_restart.clone(),
        );
        registry.register(
            "volume_size_bytes",
            "Size of the file system of a volume (data, wal)",
            metrics.volume_size.clone(),
        );
        registry.register(
            "volume_available_bytes",
            "Bytes a volume's file system has free for PostgreSQL",
            metrics.volume_available.clone(),
        );
        registry.register(
            "primary_lease_held",
            "This instance holds the primary lease within the fence bound",
            metrics.lease_held.clone(),
        );
        registry.register(
            "fenced",
            "PostgreSQL was stopped because the primary lease could not be renewed or was taken over",
            metrics.fenced.clone(),
        );
        registry.register(
            "postgres_connections",
            "Client connections by state",
            metrics.connections.clone(),
        );
        registry.register(
            "postgres_xid_age",
            "Age of the oldest unfrozen transaction ID over all databases",
            metrics.xid_age.clone(),
        );
        registry.register(
            "database_size_bytes",
            "Size of each database",
            metrics.database_size.clone(),
        );
        registry.register(
            "postgres_restarts",
            "Restarts of postgres after it exited unexpectedly",
            metrics.postgres_restarts.clone(),
        );
        registry.register(
            "rewinds",
            "pg_rewind runs by result",
            metrics.rewinds.clone(),
        );
        registry.register(
            "reclones",
            "Data directories re-cloned from the primary after a failed rewind",
            metrics.reclones.clone(),
        );
        registry.register(
            "promotions",
            "Promotions of this instance",
            metrics.promotions.clone(),
        );
        registry.register(
            "wal_archive_failures",
            "Primary: failed WAL archive attempts (pg_stat_archiver.failed_count)",
            metrics.archive_failed.clone(),
        );
        registry.register(
            "wal_archived",
            "Primary: WAL files archived (pg_stat_archiver.archived_count)",
            metrics.archived.clone(),
        );
        registry.register(
            "wal_archive_failing",
            "Primary: the last WAL archive attempt failed",
            metrics.archive_failing.clone(),
        );
        registry.register(
            "wal_last_archived_age_seconds",
            "Primary: seconds since the last WAL file was archived",
            metrics.archive_age.clone(),
        );
        registry.register(
            "backup_stanza_ready",
            "Primary: the pgBackRest stanza exists in every repository",
            metrics.stanza_ready.clone(),
        );
        registry.register(
            "backup_running",
            "A backup runs on this instance",
            metrics.backup_running.clone(),
        );
        registry.register(
            "backup_last_duration_seconds",
            "Duration of the last backup this instance ran",
            metrics.backup_duration.clone(),
        );
        registry.register(
            "backup_last_result",
            "1 for the result of the last backup this instance ran (completed, failed)",
            metrics.backup_last.clone(),
        );
        registry.register(
            "backup_last_finished_timestamp_seconds",
            "When the last backup this instance ran finished (Unix time)",
            metrics.backup_finished_at.clone(),
        );
        registry.register(
            "backup_last_successful_age_seconds",
            "Primary: seconds since the newest backup the repository holds ended (pgbackrest info)",
            metrics.backup_age.clone(),
        );
        registry.register(
            "backup_repository_backups",
            "Primary: backups the repository holds after retention (pgbackrest info)",
            metrics.backups_held.clone(),
        );
        Self {
            registry,
            ..metrics
        }
    }

    pub fn observe_report(&self, report: &InstanceReport) {
        self.up.set(i64::from(report.running));
        for role in [Role::Primary, Role::Replica, Role::Unknown] {
            self.role
                .get_or_create(&RoleLabel {
                    role: role.as_str().into(),
                })
                .set(i64::from(role == report.role));
        }
        self.lag_bytes
            .set(report.lag_bytes.unwrap_or(0).min(i64::MAX as u64) as i64);
        self.lag_seconds.set(report.lag_seconds.unwrap_or(0.0));
        self.wal_receiver.clear();
        if let Some(state) = &report.wal_receiver {
            self.wal_receiver
                .get_or_create(&StateLabel {
                    state: state.clone(),
                })
                .set(1);
        }
        self.pending_restart.set(i64::from(report.pending_restart));
        let clamp = |n: u64| n.min(i64::MAX as u64) as i64;
        self.timeline.set(report.timeline.map_or(0, i64::from));
        if let Some(lsn) = report
            .current_lsn
            .as_deref()
            .and_then(|l| l.parse::<Lsn>().ok())
        {
            self.wal_position.set(clamp(lsn.0));
        }
        let synchronous = report
            .standbys
            .iter()
            .filter(|s| s.sync_state == "sync" || s.sync_state == "quorum")
            .count();
        self.synchronous_standbys
            .set(i64::try_from(synchronous).unwrap_or(i64::MAX));
        self.certificate_expiry.clear();
        for (mount, tls) in &report.tls {
            if let Some(not_after) = tls.not_after {
                self.certificate_expiry
                    .get_or_create(&MountLabel {
                        mount: mount.clone(),
                    })
                    .set(not_after);
            }
        }
        for (volume, usage) in [("data", report.data_volume), ("wal", report.wal_volume)] {
            let label = VolumeLabel {
                volume: volume.into(),
            };
            match usage {
                Some(u) => {
                    self.volume_size
                        .get_or_create(&label)
                        .set(clamp(u.size_bytes));
                    self.volume_available
                        .get_or_create(&label)
                        .set(clamp(u.available_bytes));
                }
                None => {
                    self.volume_size.remove(&label);
                    self.volume_available.remove(&label);
                }
            }
        }
        let lease = report.lease.as_ref();
        self.lease_held
            .set(i64::from(lease.is_some_and(|l| l.held)));
        self.fenced.set(i64::from(lease.is_some_and(|l| l.fenced)));
        self.observe_backups(report, jiff::Timestamp::now());
    }

    fn observe_backups(&self, report: &InstanceReport, now: jiff::Timestamp) {
        let archive = report.archive.clone().unwrap_or_default();
        let clamp = |n: u64| n.min(i64::MAX as u64) as i64;
        self.archive_failed.set(clamp(archive.failed_count));
        self.archived.set(clamp(archive.archived_count));
        self.archive_failing.set(i64::from(archive.failing()));
        self.stanza_ready.set(i64::from(archive.stanza_ready));
        let age = archive
            .last_archived_at
            .as_deref()
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
            .map(|t| (now.as_millisecond() - t.as_millisecond()).max(0) as f64 / 1000.0);
        self.archive_age.set(age.unwrap_or(0.0));
        self.observe_repositories(&archive, now);
        let Some(job) = &report.backup else {
            return;
        };
        self.backup_running
            .set(i64::from(job.phase == JobPhase::Running));
        let (Some(started), Some(finished)) = (
            job.started_at.parse::<jiff::Timestamp>().ok(),
            job.finished_at
                .as_deref()
                .and_then(|t| t.parse::<jiff::Timestamp>().ok()),
        ) else {
            return;
        };
        self.backup_duration
            .set((finished.as_millisecond() - started.as_millisecond()).max(0) as f64 / 1000.0);
        self.backup_finished_at.set(finished.as_second());
        for (result, phase) in [
            ("completed", JobPhase::Completed),
            ("failed", JobPhase::Failed),
        ] {
            self.backup_last
                .get_or_create(&ResultLabel {
                    result: result.into(),
                })
                .set(i64::from(job.phase == phase));
        }
    }

    /// Per repository, from its last listing: absent for a repository
    /// not read or holding no backup (an alert on absence catches both).
    fn observe_repositories(&self, archive: &ArchiveReport, now: jiff::Timestamp) {
        self.backup_age.clear();
        self.backups_held.clear();
        for r in &archive.repositories {
            let label = RepositoryLabel {
                repository: format!("repo{}", r.repository),
            };
            self.backups_held
                .get_or_create(&label)
                .set(r.labels.len().min(i64::MAX as usize) as i64);
            if let Some(last) = r
                .last_backup_at
                .as_deref()
                .and_then(|t| t.parse::<jiff::Timestamp>().ok())
            {
                let age = (now.as_millisecond() - last.as_millisecond()).max(0) as f64 / 1000.0;
                self.backup_age.get_or_create(&label).set(age);
            }
        }
    }

    pub fn observe_sample(&self, sample: Option<&Sample>) {
        self.connections.clear();
        self.database_size.clear();
        let Some(sample) = sample else {
            return;
        };
        for (state, count) in &sample.connections {
            self.connections
                .get_or_create(&StateLabel {
                    state: state.clone(),
                })
                .set(*count);
        }
        self.xid_age.set(sample.xid_age);
        self.synchronous_required.set(sample.synchronous_required);
        for (datname, size) in &sample.database_sizes {
            self.database_size
                .get_or_create(&DatabaseLabel {
                    datname: datname.clone(),
                })
                .set(*size);
        }
    }

    pub fn rewind_result(&self, ok: bool) {
        self.rewinds
            .get_or_create(&ResultLabel {
                result: if ok { "ok" } else { "failed" }.into(),
            })
            .inc();
    }

    /// Every family with one made-up figure each: the names and help texts
    /// a scrape can show (families without figures are not encoded at all).
    pub fn catalog() -> String {
        use crate::contract::agent::MountedTls;
        use crate::contract::backup::{BackupJob, BackupType, RepositoryInventory};
        use crate::contract::instance::VolumeUsage;
        let metrics = Self::new();
        let volume = VolumeUsage {
            size_bytes: 1,
            available_bytes: 1,
        };
        let at = "2026-01-01T00:00:00Z";
        let report = InstanceReport {
            running: true,
            wal_receiver: Some("streaming".into()),
            data_volume: Some(volume),
            tls: [(
                "server".to_string(),
                MountedTls {
                    not_after: Some(0),
                    ..MountedTls::default()
                },
            )]
            .into(),
            archive: Some(ArchiveReport {
                repositories: vec![RepositoryInventory {
                    repository: 1,
                    last_backup_at: Some(at.into()),
                    ..RepositoryInventory::default()
                }],
                ..ArchiveReport::default()
            }),
            backup: Some(BackupJob {
                backup: String::new(),
                kind: BackupType::Full,
                repository: 1,
                phase: JobPhase::Completed,
                started_at: at.into(),
                finished_at: Some(at.into()),
                result: None,
                message: None,
            }),
            ..crate::instance::state::empty_report("catalog")
        };
        metrics.observe_report(&report);
        metrics.observe_sample(Some(&Sample {
            connections: vec![("active".into(), 0)],
            database_sizes: vec![("postgres".into(), 0)],
            ..Sample::default()
        }));
        metrics.rewind_result(true);
        metrics.encode()
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_report_and_sample() {
        let metrics = Metrics::new();
        let report = InstanceReport {
            role: Role::Replica,
            running: true,
            ready: true,
            timeline: Some(1),
            lag_bytes: Some(42),
            lag_seconds: Some(0.5),
            wal_receiver: Some("streaming".into()),
            current_lsn: Some("1/10".into()),
            data_volume: Some(crate::contract::instance::VolumeUsage {
                size_bytes: 1000,
                available_bytes: 250,
            }),
            tls: [(
                "server".to_string(),
                crate::contract::agent::MountedTls {
                    not_after: Some(1_800_000_000),
                    ..Default::default()
                },
            )]
            .into(),
            ..crate::instance::state::empty_report("db-2")
        };
        metrics.observe_report(&report);
        metrics.observe_sample(Some(&Sample {
            connections: vec![("active".into(), 3)],
            xid_age: 100,
            database_sizes: vec![("app".into(), 8_000_000)],
            synchronous_required: 0,
        }));
        metrics.rewind_result(true);
        metrics.promotions.inc();
        let text = metrics.encode();
        assert!(
            text.contains("capstan_wal_last_archived_age_seconds 0.0"),
            "{text}"
        );
        for line in [
            "capstan_postgres_up 1",
            "capstan_postgres_timeline 1",
            "capstan_wal_position_bytes 4294967312",
            "capstan_replication_synchronous_standbys 0",
            "capstan_replication_synchronous_required 0",
            "capstan_tls_certificate_expiry_timestamp_seconds{mount=\"server\"} 1800000000",
            "capstan_postgres_role{role=\"replica\"} 1",
            "capstan_postgres_role{role=\"primary\"} 0",
            "capstan_replication_lag_bytes 42",
            "capstan_replication_lag_seconds 0.5",
            "capstan_wal_receiver_state{state=\"streaming\"} 1",
            "capstan_postgres_connections{state=\"active\"} 3",
            "capstan_postgres_xid_age 100",
            "capstan_database_size_bytes{datname=\"app\"} 8000000",
            "capstan_rewinds_total{result=\"ok\"} 1",
            "capstan_promotions_total 1",
            "capstan_volume_size_bytes{volume=\"data\"} 1000",
            "capstan_volume_available_bytes{volume=\"data\"} 250",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }

    #[test]
    fn encodes_archiving_and_the_last_backup() {
        use crate::contract::backup::{BackupJob, BackupType, RepositoryInventory};
        let metrics = Metrics::new();
        let report = InstanceReport {
            role: Role::Primary,
            running: true,
            archive: Some(ArchiveReport {
                stanza_ready: true,
                last_archived_at: Some("2026-12-04T10:00:00.000000Z".into()),
                last_failed_at: Some("2026-12-04T10:00:05.000000Z".into()),
                archived_count: 12,
                failed_count: 3,
                repositories: vec![
                    RepositoryInventory {
                        repository: 1,
                        labels: vec!["20261204-010000F".into(), "20261204-095900F".into()],
                        last_backup_at: Some("2026-12-04T09:59:30.000000Z".into()),
                        ..RepositoryInventory::default()
                    },
                    RepositoryInventory {
                        repository: 2,
                        ..RepositoryInventory::default()
                    },
                ],
                ..ArchiveReport::default()
            }),
            backup: Some(BackupJob {
                backup: "db-1".into(),
                kind: BackupType::Full,
                repository: 1,
                phase: JobPhase::Failed,
                started_at: "2026-12-04T10:00:00.000000Z".into(),
                finished_at: Some("2026-12-04T10:00:07.500000Z".into()),
                result: None,
                message: Some("ERROR: [049]: x".into()),
            }),
            ..crate::instance::state::empty_report("db-1")
        };
        let now: jiff::Timestamp = "2026-12-04T10:01:00Z".parse().unwrap();
        metrics.observe_backups(&report, now);
        let text = metrics.encode();
        for line in [
            "capstan_wal_archive_failures 3",
            "capstan_wal_archived 12",
            "capstan_wal_archive_failing 1",
            "capstan_wal_last_archived_age_seconds 60.0",
            "capstan_backup_stanza_ready 1",
            "capstan_backup_running 0",
            "capstan_backup_last_duration_seconds 7.5",
            "capstan_backup_last_result{result=\"failed\"} 1",
            "capstan_backup_last_result{result=\"completed\"} 0",
            "capstan_backup_last_successful_age_seconds{repository=\"repo1\"} 90.0",
            "capstan_backup_repository_backups{repository=\"repo1\"} 2",
            "capstan_backup_repository_backups{repository=\"repo2\"} 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        assert!(
            !text.contains("age_seconds{repository=\"repo2\"}"),
            "no backup, no age: {text}"
        );
    }
}

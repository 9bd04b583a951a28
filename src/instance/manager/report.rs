//! The report `GET /status` serves (and `/readyz` and the metrics follow),
//! built by a pure function from what the loop knows; the loop publishes it
//! after every tick and command.

use crate::contract::backup::{ArchiveReport, BackupJob};
use crate::contract::instance::{InactiveSlot, InstanceReport, LeaseReport, Role, VolumeUsage};
use crate::contract::layout::mounts;
use crate::contract::restore::RestoreReport;
use crate::contract::upgrade::UpgradeReport;
use crate::postgres::lsn::Lsn;

use super::super::authority::Authority;
use super::super::local::Snapshot;
use super::super::state::empty_report;
use super::Manager;

/// What the report is made of.
pub(super) struct Facts<'a> {
    pub pod: &'a str,
    pub target: Option<String>,
    pub lease: Option<LeaseReport>,
    pub restarts: u32,
    pub last_error: Option<String>,
    pub snapshot: Option<&'a Snapshot>,
    /// The furthest WAL position of the primary this replica has heard of.
    pub primary_end: Option<Lsn>,
    pub ready_max_lag: u64,
    /// Primary with backups configured: archiving.
    pub archive: Option<ArchiveReport>,
    pub backup: Option<BackupJob>,
    /// The bootstrap from a backup, on the instance that restores.
    pub restore: Option<RestoreReport>,
    pub upgrade: Option<UpgradeReport>,
}

pub(super) fn report(facts: Facts<'_>) -> InstanceReport {
    let mut report = empty_report(facts.pod);
    report.target_primary = facts.target;
    report.lease = facts.lease;
    report.postgres_restarts = facts.restarts;
    report.last_error = facts.last_error;
    report.archive = facts.archive;
    report.backup = facts.backup;
    report.restore = facts.restore;
    report.upgrade = facts.upgrade;
    if let Some(s) = facts.snapshot {
        report.running = true;
        report.role = if s.in_recovery {
            Role::Replica
        } else {
            Role::Primary
        };
        report.timeline = s.timeline;
        report.system_identifier = Some(s.system_identifier.clone());
        report.current_lsn = s.current_lsn.map(|l| l.to_string());
        report.receive_lsn = s.receive_lsn.map(|l| l.to_string());
        report.replay_lsn = s.replay_lsn.map(|l| l.to_string());
        report.flush_lsn = s.flush_lsn.map(|l| l.to_string());
        report.wal_receiver = s.wal_receiver.clone();
        report.pending_restart = s.pending_restart;
        report.standby_floor_settings = s.standby_floor_settings.clone();
        report.standbys = s.standbys.clone();
        report.inactive_slots = s
            .inactive_slots
            .iter()
            .map(|(name, bytes)| InactiveSlot {
                name: name.clone(),
                retained_bytes: *bytes,
            })
            .collect();
        report.version = Some(s.version.clone());
        report.postgres_uptime_seconds = Some(s.uptime_seconds);
        if s.in_recovery {
            let replayed = s.replay_lsn.unwrap_or_default();
            let known_end = [facts.primary_end, s.receive_lsn]
                .into_iter()
                .flatten()
                .max()
                .unwrap_or(replayed);
            let lag = known_end.bytes_after(replayed);
            report.lag_bytes = Some(lag);
            report.lag_seconds = Some(if lag == 0 {
                0.0
            } else {
                s.replay_delay_seconds.unwrap_or(0.0).max(0.0)
            });
        }
        report.ready = ready(&report, facts.ready_max_lag);
    }
    report
}

fn ready(report: &InstanceReport, max_lag: u64) -> bool {
    match report.role {
        Role::Primary => report.running,
        Role::Replica => {
            report.running
                && report.wal_receiver.as_deref() == Some("streaming")
                && report.lag_bytes.unwrap_or(u64::MAX) <= max_lag
        }
        Role::Unknown => false,
    }
}

/// `statvfs` of the file system holding `path`.
// The field types differ by platform (u32 on some 32-bit ones).
#[allow(clippy::useless_conversion)]
fn volume_usage(path: &std::path::Path) -> Option<VolumeUsage> {
    let st = nix::sys::statvfs::statvfs(path).ok()?;
    let block = u64::from(st.fragment_size());
    Some(VolumeUsage {
        size_bytes: u64::from(st.blocks()).saturating_mul(block),
        available_bytes: u64::from(st.blocks_available()).saturating_mul(block),
    })
}

impl<A: Authority> Manager<A> {
    pub(super) fn publish(&self) {
        let report = report(Facts {
            pod: &self.inputs.pod,
            target: self.target.clone().flatten(),
            lease: self.shared.lease.report(),
            restarts: self.restarts.count(),
            last_error: self.errors.latest(),
            snapshot: self.snapshot.as_ref(),
            primary_end: self.role.primary_end,
            ready_max_lag: self.inputs.ready_max_lag_bytes,
            archive: self
                .settings
                .as_ref()
                .is_some_and(|s| self.archiving(s))
                .then(|| {
                    self.shared
                        .backups
                        .archive_report(self.backup.archiver.as_ref())
                }),
            backup: self.shared.backups.job(),
            restore: self.restore.report.clone(),
            upgrade: self.upgrade.report(),
        });
        let report = InstanceReport {
            parameters_refused: self.upkeep.refused_parameters(),
            managed: self.upkeep.managed.clone(),
            settings_digest: self.settings.as_ref().map(|s| s.digest()),
            data_volume: volume_usage(self.inputs.data_volume()),
            wal_volume: self
                .settings
                .as_ref()
                .filter(|s| s.separate_wal)
                .and_then(|_| volume_usage(self.inputs.wal_dir.parent()?)),
            tls: crate::agents::tls::mounted(&[
                (mounts::SERVER_TLS, self.inputs.server_tls()),
                (mounts::REPLICATION_TLS, self.inputs.replication_tls()),
                (mounts::AGENT_TLS, self.inputs.agent_tls()),
                (mounts::BACKREST_TLS, self.inputs.backrest_tls()),
            ]),
            ..report
        };
        self.shared.publish(report);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_needs_streaming_within_the_lag_bound() {
        let mut r = empty_report("db-2");
        assert!(!ready(&r, 10));
        r.running = true;
        r.role = Role::Primary;
        assert!(ready(&r, 10));
        r.role = Role::Replica;
        r.wal_receiver = Some("streaming".into());
        r.lag_bytes = Some(10);
        assert!(ready(&r, 10));
        r.lag_bytes = Some(11);
        assert!(!ready(&r, 10));
        r.lag_bytes = Some(0);
        r.wal_receiver = Some("waiting".into());
        assert!(!ready(&r, 10));
    }

    fn replica(receive: Option<u64>, replay: u64) -> Snapshot {
        Snapshot {
            in_recovery: true,
            system_identifier: "7".into(),
            version: "PostgreSQL 17".into(),
            version_num: 170000,
            uptime_seconds: 5,
            pending_restart: false,
            standby_floor_settings: Default::default(),
            timeline: Some(2),
            current_lsn: None,
            receive_lsn: receive.map(Lsn),
            flush_lsn: None,
            replay_lsn: Some(Lsn(replay)),
            primary_end_lsn: None,
            wal_receiver: Some("streaming".into()),
            replay_delay_seconds: Some(3.5),
            standbys: vec![],
            inactive_slots: vec![],
        }
    }

    fn facts(snapshot: Option<&Snapshot>, primary_end: Option<u64>) -> Facts<'_> {
        Facts {
            pod: "db-2",
            target: Some("db-1".into()),
            lease: None,
            restarts: 2,
            last_error: Some("boom".into()),
            snapshot,
            primary_end: primary_end.map(Lsn),
            ready_max_lag: 100,
            archive: None,
            backup: None,
            restore: None,
            upgrade: None,
        }
    }

    #[test]
    fn a_stopped_instance_reports_what_the_loop_knows() {
        let r = report(facts(None, None));
        assert!(!r.running && !r.ready);
        assert_eq!(r.role, Role::Unknown);
        assert_eq!(r.target_primary.as_deref(), Some("db-1"));
        assert_eq!(r.postgres_restarts, 2);
        assert_eq!(r.last_error.as_deref(), Some("boom"));
    }

    #[test]
    fn replica_lag_counts_from_the_furthest_known_primary_position() {
        let caught_up = replica(Some(1000), 1000);
        let r = report(facts(Some(&caught_up), None));
        assert_eq!(r.role, Role::Replica);
        assert_eq!(r.lag_bytes, Some(0));
        assert_eq!(r.lag_seconds, Some(0.0), "no lag, no delay");
        assert!(r.ready);
        // The primary was heard of further ahead than this replica received.
        let r = report(facts(Some(&caught_up), Some(1500)));
        assert_eq!(r.lag_bytes, Some(500));
        assert_eq!(r.lag_seconds, Some(3.5));
        assert!(!r.ready, "beyond the lag bound");
        // Received but not replayed yet.
        let behind = replica(Some(1050), 1000);
        let r = report(facts(Some(&behind), Some(900)));
        assert_eq!(r.lag_bytes, Some(50));
        assert!(r.ready);
    }
}

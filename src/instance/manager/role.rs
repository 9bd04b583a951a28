//! Role changes: promote when the cluster names this instance, demote (a
//! clean stop, then follow) when it names another, rejoin a primary that
//! moved on (pg_rewind, or a fresh clone when rewinding fails), and the
//! `POST /promote` and `POST /demote` commands. What to change, whether a
//! command may be carried out and how to rejoin are pure functions here;
//! the manager's methods below carry them out.

use std::time::{Duration, Instant};

use crate::contract::instance::{DemoteRequest, DemoteResult, PromoteRequest, PromoteResult};
use crate::contract::settings::InstanceSettings;
use crate::postgres::lsn::Lsn;

use super::super::authority::Authority;
use super::super::binaries::Binaries;
use super::super::bootstrap::BootstrapError;
use super::super::config::{self, Desired};
use super::super::fencing::FenceError;
use super::super::process;
use super::super::remote::{Primary, PrimaryInfo};
use super::super::state::CommandError;
use super::super::supervisor;
use super::Manager;
use super::errors::Source;

const PROMOTE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a promote or demote waits for the target-primary move that
/// came with it before refusing.
const AUTHORITY_CATCH_UP: Duration = Duration::from_secs(2);

/// What role changes remember between ticks.
#[derive(Default)]
pub(super) struct RoleState {
    /// The furthest WAL position of the primary this replica has heard of:
    /// the lag bound of a promotion counts from it.
    pub(super) primary_end: Option<Lsn>,
    /// Since when this replica is named primary while the old primary
    /// still streams to it (a switchover in progress).
    pub(super) named_while_streaming: Option<Instant>,
}

/// What a running instance must change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RoleChange {
    None,
    Promote,
    Demote,
}

pub(super) fn role_change(me: &str, target: Option<&str>, in_recovery: bool) -> RoleChange {
    match target {
        Some(t) if t == me && in_recovery => RoleChange::Promote,
        Some(t) if t != me && !in_recovery => RoleChange::Demote,
        // Nobody named: keep what runs (a primary stays; fencing comes with the lease).
        _ => RoleChange::None,
    }
}

/// `POST /promote` is carried out only for the instance the cluster names.
fn check_promote_target(me: &str, target: Option<&str>) -> Result<(), CommandError> {
    if target == Some(me) {
        return Ok(());
    }
    Err(CommandError::Conflict(format!(
        "the cluster's target primary is {}, not {me}; refusing to promote",
        target.unwrap_or("nobody")
    )))
}

/// A promotion with a lag bound refuses a replica further behind the
/// primary's last known position (none known: nothing to hold against it).
fn check_lag(
    max: Option<u64>,
    received: Lsn,
    primary_end: Option<Lsn>,
) -> Result<(), CommandError> {
    let Some(max) = max else {
        return Ok(());
    };
    let behind = primary_end
        .map(|end| end.bytes_after(received))
        .unwrap_or(0);
    if behind > max {
        return Err(CommandError::Conflict(format!(
            "this replica is {behind} bytes behind the primary's last known position, more than the allowed {max}; refusing to promote"
        )));
    }
    Ok(())
}

/// `POST /demote` must name another instance to follow.
fn check_demote_request(me: &str, new_primary: &str) -> Result<(), CommandError> {
    if new_primary == me {
        return Err(CommandError::Conflict(
            "newPrimary names this instance; it cannot follow itself".into(),
        ));
    }
    Ok(())
}

/// ... and that instance must be the cluster's target primary.
fn check_demote_target(new_primary: &str, target: Option<&str>) -> Result<(), CommandError> {
    if target == Some(new_primary) {
        return Ok(());
    }
    Err(CommandError::Conflict(format!(
        "the cluster's target primary is {}, not {new_primary}; refusing to demote",
        target.unwrap_or("nobody")
    )))
}

/// How a stopped data directory follows the primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rejoin {
    /// Same timeline: only `standby.signal` is missing.
    Follow,
    /// The primary moved on to a new timeline: rewind (or re-clone).
    Rewind,
}

/// `local` is this data's (system identifier, timeline); `primary_at`
/// names the primary for messages. Errors mean "not now" (the primary is
/// still a standby) or "never" (another system: data left untouched).
fn rejoin_plan(
    primary: &PrimaryInfo,
    local: (u64, u32),
    primary_at: &str,
) -> Result<Rejoin, String> {
    let (system_identifier, timeline) = local;
    if primary.in_recovery {
        return Err(format!(
            "{primary_at} is still a standby; waiting for the new primary before rejoining"
        ));
    }
    if primary.system_identifier != system_identifier {
        return Err(format!(
            "the primary has system identifier {}, this data {system_identifier}: refusing to rejoin (data left untouched)",
            primary.system_identifier
        ));
    }
    if primary.timeline == timeline {
        Ok(Rejoin::Follow)
    } else {
        Ok(Rejoin::Rewind)
    }
}

/// SIGTERM ends a WAL receiver and the startup process starts a new one.
/// Found by its process title, not `pg_stat_wal_receiver`: that view shows
/// nothing while the receiver is still connecting, which is where one hangs
/// on a frozen primary (its kernel accepts, nothing answers, and the
/// receiver's connection loop has no timeout). `pg_terminate_backend`
/// refuses it too: it is not a backend.
fn restart_wal_receiver(postmaster: u32) {
    for pid in process::children_titled(postmaster, "walreceiver") {
        match nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        ) {
            Ok(()) => {
                tracing::info!(pid, "restarted the WAL receiver to follow the new primary")
            }
            Err(e) => tracing::warn!(pid, error = %e, "cannot restart the WAL receiver"),
        }
    }
}

impl<A: Authority> Manager<A> {
    /// The primary moved: a replica streaming from the old one (perhaps
    /// frozen or cut off, so its connection just hangs) reconnects through
    /// the `-rw` Service. At once, so an old primary that runs again for a
    /// moment (a thawed VM) cannot stream WAL the new primary never had;
    /// then twice more, as the Service may move a moment after the target
    /// does. A primary has no WAL receiver, so it is a no-op there.
    pub(super) fn follow_new_primary(&self) {
        use tracing::Instrument as _;
        let Some(postmaster) = self.postgres.as_ref().map(|p| p.signaller().pid()) else {
            return;
        };
        tokio::spawn(
            async move {
                for delay in [
                    Duration::ZERO,
                    Duration::from_secs(1),
                    Duration::from_secs(3),
                ] {
                    tokio::time::sleep(delay).await;
                    restart_wal_receiver(postmaster);
                }
            }
            .in_current_span(),
        );
    }

    async fn stop_fast(&mut self) -> Result<(), String> {
        let Some(mut child) = self.postgres.take() else {
            return Ok(());
        };
        self.snapshot = None;
        let status = child
            .stop(&supervisor::fast_plan(self.inputs.shutdown_budget))
            .await;
        match status {
            Some(_) => Ok(()),
            None => {
                self.postgres = Some(child);
                Err("postgres did not stop".into())
            }
        }
    }

    /// Stop, rewind (or re-clone) against the primary, start as replica.
    pub(super) async fn restart_as_follower(
        &mut self,
        settings: &InstanceSettings,
    ) -> Result<bool, String> {
        let Some(bins) = self.bins.clone() else {
            return Err("no PostgreSQL binaries".into());
        };
        self.stop_fast().await?;
        self.release_lease().await;
        let rewound = self.rejoin(settings, &bins).await?;
        self.launch(settings, &bins, Desired::Replica).await?;
        Ok(rewound)
    }

    /// Makes a stopped data directory follow the primary behind
    /// `primary_host`: pg_rewind when the timelines differ, a fresh clone
    /// when rewinding fails. Never starts anything writable. Returns whether
    /// the data was rewritten.
    pub(super) async fn rejoin(
        &mut self,
        settings: &InstanceSettings,
        bins: &Binaries,
    ) -> Result<bool, String> {
        let ops = self.ops(settings, bins);
        let control = ops
            .controldata(&self.inputs.data_dir)
            .await
            .map_err(|e| e.to_string())?;
        let remote = Primary::new(&self.inputs, settings);
        let primary = remote
            .info()
            .await
            .map_err(|e| format!("waiting for the primary to rejoin it: {e}"))?;
        let primary_at = format!("{}:{}", settings.primary_host, settings.primary_port);
        let local = (control.system_identifier, control.timeline);
        match rejoin_plan(&primary, local, &primary_at)? {
            Rejoin::Follow => {
                config::set_standby(&self.inputs.data_dir, true).map_err(|e| e.to_string())?;
                return Ok(false);
            }
            Rejoin::Rewind => {}
        }
        if let Err(e) = remote.checkpoint().await {
            tracing::warn!(error = %e, "CHECKPOINT on the primary failed; rewinding anyway");
        }
        self.busy(Some("rewind"));
        let rewound = self.ops(settings, bins).rewind().await;
        self.busy(None);
        match rewound {
            Ok(()) => {
                self.shared.metrics.rewind_result(true);
                tracing::info!(operation = "rewind", "rewound to the primary's timeline");
                Ok(true)
            }
            Err(e) => {
                self.shared.metrics.rewind_result(false);
                tracing::warn!(operation = "rewind", error = %e, "pg_rewind failed; re-cloning from the primary");
                self.busy(Some("re-clone"));
                let cloned = self.ops(settings, bins).clone_from_primary().await;
                self.busy(None);
                cloned.map_err(|e: BootstrapError| {
                    format!("re-clone after a failed rewind failed: {e}")
                })?;
                self.shared.metrics.reclones.inc();
                Ok(true)
            }
        }
    }

    /// Promotes and returns as soon as writes are accepted; the config
    /// rewrite and the slots for the others follow on the next tick.
    pub(super) async fn promote_now(&mut self) -> Result<u64, CommandError> {
        let started = Instant::now();
        if !self.shared.lease.may_write() {
            return Err(CommandError::Unavailable(
                "this instance does not hold the primary lease; not promoting".into(),
            ));
        }
        tracing::info!(operation = "promote", "promoting");
        self.local
            .promote(PROMOTE_TIMEOUT)
            .await
            .map_err(|e| CommandError::Failed(e.to_string()))?;
        let elapsed = started.elapsed().as_millis() as u64;
        self.shared.metrics.promotions.inc();
        tracing::info!(
            operation = "promote",
            elapsed_ms = elapsed,
            "promoted; accepting writes"
        );
        self.clear_error(Source::RoleChange);
        self.clear_error(Source::Replication);
        self.upkeep.last_slot_sync = None;
        self.refresh_snapshot().await;
        Ok(elapsed)
    }

    /// Clean shutdown, then follow the new primary. Returns (rewound,
    /// following, where the shutdown checkpoint starts); when the new primary does not answer yet, postgres stays
    /// stopped and the start path rejoins it once it does — a demoted
    /// primary never comes back writable.
    pub(super) async fn demote_now(
        &mut self,
        settings: &InstanceSettings,
    ) -> Result<(bool, bool, Option<Lsn>), CommandError> {
        tracing::info!(
            operation = "demote",
            "demoting: clean shutdown, then follow the new primary"
        );
        // A checkpoint now makes the shutdown checkpoint short.
        if let Err(e) = self.local.checkpoint().await {
            tracing::warn!(error = %e, "CHECKPOINT before demotion failed");
        }
        self.stop_fast().await.map_err(CommandError::Failed)?;
        // Stopped cleanly: the new primary may take the lease at once.
        self.release_lease().await;
        let Some(bins) = self.bins.clone() else {
            return Err(CommandError::Failed("no PostgreSQL binaries".into()));
        };
        let checkpoint = match self
            .ops(settings, &bins)
            .controldata(&self.inputs.data_dir)
            .await
        {
            Ok(control) => control.checkpoint,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read where the shutdown checkpoint is");
                None
            }
        };
        self.clear_error(Source::RoleChange);
        match self.rejoin(settings, &bins).await {
            Ok(rewound) => {
                self.launch(settings, &bins, Desired::Replica)
                    .await
                    .map_err(CommandError::Failed)?;
                Ok((rewound, true, checkpoint))
            }
            Err(e) => {
                self.set_error(Source::Start, e);
                self.restarts
                    .retry_after(Instant::now(), Duration::from_secs(1));
                Ok((false, false, checkpoint))
            }
        }
    }

    fn running_settings(&self) -> Result<InstanceSettings, CommandError> {
        let settings = self
            .settings
            .clone()
            .ok_or_else(|| CommandError::Unavailable("no valid settings loaded".into()))?;
        if self.postgres.is_none() {
            return Err(CommandError::Unavailable("postgres is not running".into()));
        }
        Ok(settings)
    }

    async fn authority_target(&mut self) -> Result<Option<String>, CommandError> {
        self.read_authority().await.map_err(|()| {
            CommandError::Unavailable("cannot read the cluster's target primary".into())
        })
    }

    /// The target primary, waiting a moment for it to become `expected`:
    /// the operator moves `status.targetPrimary` and then sends the command,
    /// and the watch that brings the move here may arrive after the command.
    async fn authority_target_expecting(
        &mut self,
        expected: &str,
    ) -> Result<Option<String>, CommandError> {
        let deadline = Instant::now() + AUTHORITY_CATCH_UP;
        loop {
            let target = self.authority_target().await?;
            if target.as_deref() == Some(expected) || Instant::now() >= deadline {
                return Ok(target);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub(super) async fn promote_command(
        &mut self,
        request: PromoteRequest,
    ) -> Result<PromoteResult, CommandError> {
        let started = Instant::now();
        self.running_settings()?;
        let pod = self.inputs.pod.clone();
        let target = self.authority_target_expecting(&pod).await?;
        check_promote_target(&pod, target.as_deref())?;
        let min_wal = match request.min_wal.as_deref() {
            Some(text) => Some(text.parse::<Lsn>().map_err(|_| {
                CommandError::Conflict(format!("minWal {text:?} is not a WAL position"))
            })?),
            None => None,
        };
        let catch_up = Duration::from_millis(request.catch_up_ms.unwrap_or(0));
        // Asked live (not from the last report) and polled briefly: the
        // clean shutdown of the old primary already sent its last WAL, so
        // this normally holds at once.
        let received = loop {
            let snapshot = self
                .local
                .snapshot()
                .await
                .map_err(|e| CommandError::Unavailable(e.to_string()))?;
            if !snapshot.in_recovery {
                return Ok(PromoteResult {
                    timeline: snapshot.timeline.unwrap_or(0),
                    elapsed_ms: started.elapsed().as_millis() as u64,
                    already_primary: true,
                });
            }
            let received = snapshot
                .receive_lsn
                .or(snapshot.replay_lsn)
                .unwrap_or_default();
            match min_wal {
                Some(min) if received < min => {
                    if started.elapsed() >= catch_up {
                        return Err(CommandError::Conflict(format!(
                            "this replica has WAL up to {received}, not up to the old primary's shutdown checkpoint at {min}, after {} ms; refusing to promote",
                            started.elapsed().as_millis()
                        )));
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                _ => break received,
            }
        };
        check_lag(request.max_lag_bytes, received, self.role.primary_end)?;
        // A failover: the operator waited out the old holder's lease, so the
        // takeover is normally immediate; a holder still renewing is refused.
        match self.lease.acquire().await {
            Ok(()) => self.clear_error(Source::Lease),
            Err(e @ FenceError::HeldBy { .. }) => {
                return Err(CommandError::Conflict(format!("{e}; refusing to promote")));
            }
            Err(e) => {
                return Err(CommandError::Unavailable(format!(
                    "cannot take the primary lease: {e}; refusing to promote"
                )));
            }
        }
        self.promote_now().await?;
        let timeline = self.snapshot.as_ref().and_then(|s| s.timeline).unwrap_or(0);
        Ok(PromoteResult {
            timeline,
            elapsed_ms: started.elapsed().as_millis() as u64,
            already_primary: false,
        })
    }

    pub(super) async fn demote_command(
        &mut self,
        request: DemoteRequest,
    ) -> Result<DemoteResult, CommandError> {
        let started = Instant::now();
        let settings = self
            .settings
            .clone()
            .ok_or_else(|| CommandError::Unavailable("no valid settings loaded".into()))?;
        check_demote_request(&self.inputs.pod, &request.new_primary)?;
        let target = self
            .authority_target_expecting(&request.new_primary)
            .await?;
        check_demote_target(&request.new_primary, target.as_deref())?;
        let elapsed = || started.elapsed().as_millis() as u64;
        if self.postgres.is_none() {
            // Not running, so not writable; the start path brings it back
            // as a replica of the target.
            return Ok(DemoteResult {
                elapsed_ms: elapsed(),
                already_replica: false,
                rewound: false,
                following: false,
                shutdown_checkpoint: None,
            });
        }
        let snapshot = self
            .local
            .snapshot()
            .await
            .map_err(|e| CommandError::Unavailable(e.to_string()))?;
        if snapshot.in_recovery {
            return Ok(DemoteResult {
                elapsed_ms: elapsed(),
                already_replica: true,
                rewound: false,
                following: snapshot.wal_receiver.as_deref() == Some("streaming"),
                shutdown_checkpoint: None,
            });
        }
        let (rewound, following, checkpoint) = self.demote_now(&settings).await?;
        Ok(DemoteResult {
            elapsed_ms: elapsed(),
            already_replica: false,
            rewound,
            following,
            shutdown_checkpoint: checkpoint.map(|l| l.to_string()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_instances_follow_the_target() {
        assert_eq!(role_change("db-2", Some("db-2"), true), RoleChange::Promote);
        assert_eq!(role_change("db-2", Some("db-2"), false), RoleChange::None);
        assert_eq!(role_change("db-1", Some("db-2"), false), RoleChange::Demote);
        assert_eq!(role_change("db-1", Some("db-2"), true), RoleChange::None);
        assert_eq!(role_change("db-1", None, false), RoleChange::None);
        assert_eq!(role_change("db-1", None, true), RoleChange::None);
    }

    fn conflict(r: Result<(), CommandError>) -> String {
        match r {
            Err(CommandError::Conflict(m)) => m,
            other => panic!("expected a conflict, got {other:?}"),
        }
    }

    #[test]
    fn only_the_named_instance_promotes() {
        assert_eq!(check_promote_target("db-2", Some("db-2")), Ok(()));
        let m = conflict(check_promote_target("db-2", Some("db-1")));
        assert!(m.contains("is db-1, not db-2"), "{m}");
        let m = conflict(check_promote_target("db-2", None));
        assert!(m.contains("is nobody"), "{m}");
    }

    #[test]
    fn a_lag_bound_refuses_a_replica_too_far_behind() {
        let received = Lsn(1000);
        assert_eq!(check_lag(None, received, Some(Lsn(9000))), Ok(()));
        assert_eq!(check_lag(Some(0), received, None), Ok(()), "nothing known");
        assert_eq!(check_lag(Some(100), received, Some(Lsn(1100))), Ok(()));
        let m = conflict(check_lag(Some(100), received, Some(Lsn(1101))));
        assert!(m.contains("101 bytes behind"), "{m}");
    }

    #[test]
    fn a_demotion_follows_the_named_other_instance() {
        assert!(conflict(check_demote_request("db-1", "db-1")).contains("itself"));
        assert_eq!(check_demote_request("db-1", "db-2"), Ok(()));
        assert_eq!(check_demote_target("db-2", Some("db-2")), Ok(()));
        let m = conflict(check_demote_target("db-2", Some("db-3")));
        assert!(m.contains("is db-3, not db-2"), "{m}");
    }

    #[test]
    fn rejoining_rewinds_only_across_timelines_and_never_another_system() {
        let primary = |in_recovery, system_identifier, timeline| PrimaryInfo {
            in_recovery,
            system_identifier,
            timeline,
            major: 17,
        };
        let at = "db-rw:5432";
        assert_eq!(
            rejoin_plan(&primary(false, 7, 2), (7, 2), at),
            Ok(Rejoin::Follow)
        );
        assert_eq!(
            rejoin_plan(&primary(false, 7, 3), (7, 2), at),
            Ok(Rejoin::Rewind)
        );
        let wait = rejoin_plan(&primary(true, 7, 3), (7, 2), at).unwrap_err();
        assert!(wait.contains("db-rw:5432 is still a standby"), "{wait}");
        let never = rejoin_plan(&primary(false, 8, 3), (7, 2), at).unwrap_err();
        assert!(never.contains("left untouched"), "{never}");
    }
}

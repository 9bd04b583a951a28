//! Backups: ask the primary's instance manager to take one, and record on
//! the `PostgresBackup` object what it reports. The agent is called before
//! the object says `Running`, so an operator stopped in between asks again
//! (the agent answers a repeated request with the job it already runs).

use serde_json::{Value, json};
use tracing::{info, warn};

use super::Executor;
use crate::contract::backup::{BackupJob, JobPhase};
use crate::operator::cluster::backup::{Step, phase};
use crate::operator::cluster::verify::phase as verify_phase;
use crate::operator::report::{self, reason};

impl Executor<'_> {
    pub(super) async fn backup(&self, step: &Step) {
        let name = step.backup();
        match step {
            Step::Start {
                instance,
                request,
                sentinel_on,
                ..
            } => {
                let Some(agents) = self.agents else { return };
                let Some(ep) = self.endpoint(instance) else {
                    return;
                };
                // A backup is still worth taking without its sentinel (its
                // verification then says the row is missing).
                if let Some(primary) = sentinel_on
                    && let Some(primary_ep) = self.endpoint(primary)
                    && let Err(e) = agents.sentinel(&primary_ep, name).await
                {
                    warn!(cluster = %self.model.name, instance = %primary, operation = "backup", backup = %name, error = %e, "cannot write the backup sentinel on the primary; starting the backup anyway");
                }
                let where_ = if request.standby {
                    " (a streaming replica; spec.backup.target: preferReplica)"
                } else {
                    ""
                };
                match agents.backup(&ep, request).await {
                    Ok(job) => {
                        info!(cluster = %self.model.name, instance = %instance, operation = "backup", backup = %name, "backup started");
                        self.record(
                            name,
                            json!({
                                "phase": phase::RUNNING,
                                "instance": instance,
                                "type": backup_type(&job),
                                "repository": format!("repo{}", job.repository),
                                "startedAt": job.started_at,
                                "message": format!("running on {instance}{where_}"),
                            }),
                        )
                        .await;
                        self.event(
                            false,
                            reason::BACKUP_STARTED,
                            format!("backup {name} started on {instance}{where_}"),
                        )
                        .await;
                    }
                    // Refused for now (another backup, a stanza being
                    // created): it stays Pending and is asked again.
                    Err(e) => {
                        warn!(cluster = %self.model.name, instance = %instance, operation = "backup", backup = %name, error = %e, "backup not started");
                        self.pending(name, format!("not started yet: {e}")).await;
                    }
                }
            }
            Step::Finish {
                job,
                verify,
                tell_primary,
                ..
            } => {
                self.finish(name, job, verify).await;
                if let Some(primary) = tell_primary
                    && job.phase == JobPhase::Completed
                    && let (Some(agents), Some(ep)) = (self.agents, self.endpoint(primary))
                    && let Err(e) = agents.inventory_changed(&ep).await
                {
                    // It reads them again within minutes anyway.
                    warn!(cluster = %self.model.name, instance = %primary, operation = "backup", backup = %name, error = %e, "cannot ask the primary to re-read the repositories");
                }
            }
            Step::Reject { message, .. } => {
                self.record(name, json!({"phase": phase::FAILED, "message": message}))
                    .await;
                self.event(
                    true,
                    reason::BACKUP_FAILED,
                    format!("backup {name}: {message}"),
                )
                .await;
            }
            Step::Wait { message, .. } => self.pending(name, message.clone()).await,
        }
    }

    async fn finish(&self, name: &str, job: &BackupJob, verify: &Result<(), String>) {
        let stopped = job.finished_at.clone();
        if job.phase == JobPhase::Failed {
            let message = job
                .message
                .clone()
                .unwrap_or_else(|| "pgBackRest failed without a message".into());
            self.record(
                name,
                json!({"phase": phase::FAILED, "stoppedAt": stopped, "message": message}),
            )
            .await;
            self.event(
                true,
                reason::BACKUP_FAILED,
                format!("backup {name} failed: {message}"),
            )
            .await;
            return;
        }
        let r = job.result.clone().unwrap_or_default();
        let duration = match (&r.started_at, &r.stopped_at) {
            (Some(a), Some(b)) => {
                match (a.parse::<jiff::Timestamp>(), b.parse::<jiff::Timestamp>()) {
                    (Ok(a), Ok(b)) => Some(b.as_second() - a.as_second()),
                    _ => None,
                }
            }
            _ => None,
        };
        // Verified backups are `Completed` once their restore was checked.
        let (phase, verification) = match verify {
            Ok(()) => (
                phase::VERIFYING,
                json!({"phase": verify_phase::PENDING,
                       "message": "waiting to be restored in a throwaway pod (one verification at a time per cluster)"}),
            ),
            Err(why) => (
                phase::COMPLETED,
                json!({"phase": verify_phase::SKIPPED, "message": format!("not verified: {why}")}),
            ),
        };
        self.record(
            name,
            json!({
                "phase": phase,
                "label": r.label,
                "stoppedAt": r.stopped_at.clone().or(stopped),
                "durationSeconds": duration,
                "lsnStart": r.lsn_start, "lsnStop": r.lsn_stop,
                "walStart": r.wal_start, "walStop": r.wal_stop,
                "size": r.size, "repositorySize": r.repository_size,
                "verification": verification,
                "message": format!("completed: {}", r.label),
            }),
        )
        .await;
        info!(cluster = %self.model.name, operation = "backup", backup = %name, label = %r.label, "backup completed");
        self.event(
            false,
            reason::BACKUP_COMPLETED,
            format!("backup {name} completed: {}", r.label),
        )
        .await;
    }

    /// Pending with `message`, written only when it changed.
    async fn pending(&self, name: &str, message: String) {
        let current = self
            .observed
            .backups
            .iter()
            .find(|b| b.metadata.name.as_deref() == Some(name))
            .and_then(|b| b.status.as_ref());
        let same = current.is_some_and(|s| {
            s.phase.as_deref() == Some(phase::PENDING) && s.message.as_deref() == Some(&message)
        });
        if !same {
            self.record(name, json!({"phase": phase::PENDING, "message": message}))
                .await;
        }
    }

    pub(super) async fn record(&self, name: &str, status: Value) {
        if let Err(e) =
            report::patch_backup_status(self.ctx, &self.model.namespace, name, status).await
        {
            warn!(cluster = %self.model.name, backup = %name, error = %e, "cannot write the backup's status");
        }
    }
}

fn backup_type(job: &BackupJob) -> &'static str {
    match job.kind {
        crate::contract::backup::BackupType::Full => "full",
        crate::contract::backup::BackupType::Diff => "differential",
        crate::contract::backup::BackupType::Incr => "incremental",
    }
}

//! Major-upgrade steps that need the poolers or a record: each record is
//! written (with the resourceVersion the decision was made on) before the
//! step it announces, so an operator restarted half-way finds it.

use std::time::Duration;

use serde_json::json;
use tracing::{info, warn};

use super::{Executor, Next, now_rfc3339, replacing};
use crate::api::{MajorUpgradeStatus, PostgresClusterStatus};
use crate::operator::cluster::upgrade::{self, Step};
use crate::operator::report::{self, StatusError, reason};
use crate::pooler::switchover::{SwitchoverOptions, pause_all, reconnect_all, resume_all};

/// Poolers resume by themselves after this: a stop → pg_upgrade → start
/// that takes longer lets clients through to fail fast (no primary behind
/// `-rw`) rather than hang.
const CLIENT_HOLD: Duration = Duration::from_secs(60);
/// Bound of the CHECKPOINT before the pause (past it the shutdown writes
/// the rest).
const CHECKPOINT_WITHIN: Duration = Duration::from_secs(60);

fn millis_since(rfc3339: Option<&str>) -> Option<u64> {
    let at: jiff::Timestamp = rfc3339?.parse().ok()?;
    let elapsed = jiff::Timestamp::now().duration_since(at);
    u64::try_from(elapsed.as_millis()).ok()
}

impl Executor<'_> {
    pub(super) async fn upgrade(
        &self,
        step: &Step,
        status: &mut PostgresClusterStatus,
    ) -> Result<Next, StatusError> {
        let cluster = &self.model.name;
        match step {
            Step::Start { from, to } => {
                let Some(plan) = &self.model.upgrade else {
                    return Ok(Next::Continue);
                };
                let record = MajorUpgradeStatus {
                    phase: upgrade::UPGRADING.into(),
                    from_version: *from,
                    to_version: *to,
                    image: plan.image.clone(),
                    old_image: plan.old_image.clone(),
                    generation: plan.generation,
                    message: step.describe(),
                    started_at: now_rfc3339(),
                    ..MajorUpgradeStatus::default()
                };
                self.record_upgrade(
                    json!({"upgrade": replacing(&record, status.upgrade.as_ref())}),
                )
                .await?;
                info!(%cluster, operation = "major-upgrade", from, to, image = %plan.image, "major upgrade started");
                self.event(false, reason::MAJOR_UPGRADE_STARTED, format!(
                    "upgrading from PostgreSQL {from} to {to} ({}): replicas stop, then the primary is upgraded with pg_upgrade --link while the poolers hold clients",
                    plan.image
                ))
                .await;
                Ok(Next::Restart)
            }
            Step::BackupFailed { .. } => {
                let Some(plan) = &self.model.upgrade else {
                    return Ok(Next::Continue);
                };
                let record = MajorUpgradeStatus {
                    phase: upgrade::FAILED.into(),
                    from_version: plan.from,
                    to_version: plan.to,
                    image: plan.image.clone(),
                    old_image: plan.old_image.clone(),
                    generation: plan.generation,
                    message: step.describe(),
                    started_at: now_rfc3339(),
                    completed_at: Some(now_rfc3339()),
                    ..MajorUpgradeStatus::default()
                };
                self.record_upgrade(
                    json!({"upgrade": replacing(&record, status.upgrade.as_ref())}),
                )
                .await?;
                self.event(true, reason::MAJOR_UPGRADE_FAILED, step.describe())
                    .await;
                Ok(Next::Restart)
            }
            Step::TakeBackup(_) | Step::StopReplicas(_) => {
                self.event(false, reason::MAJOR_UPGRADE_PROGRESS, step.describe())
                    .await;
                Ok(Next::Continue)
            }
            Step::StopPrimary(primary) => {
                let Some(agents) = self.agents else {
                    return Ok(Next::Continue);
                };
                let options = SwitchoverOptions {
                    max_hold: CLIENT_HOLD,
                    ..SwitchoverOptions::default()
                };
                // Dirty buffers written while clients still run (the
                // shutdown checkpoint after PAUSE has little left to write),
                // and a fast shutdown: sessions connected around the pooler
                // must not keep the held clients waiting.
                if let Some(ep) = self.endpoint(primary) {
                    let started = std::time::Instant::now();
                    match agents.prepare_stop(&ep, CHECKPOINT_WITHIN).await {
                        Ok(()) => {
                            info!(%cluster, operation = "major-upgrade", instance = %primary, ms = started.elapsed().as_millis() as u64, "checkpoint before the pause")
                        }
                        Err(e) => {
                            warn!(%cluster, operation = "major-upgrade", instance = %primary, error = %e, "no checkpoint before the pause; the shutdown writes it")
                        }
                    }
                }
                let poolers = self.poolers();
                if let Err(e) = pause_all::<_, String>(agents, &poolers, &options).await {
                    warn!(%cluster, operation = "major-upgrade", error = %e, "cannot pause the poolers; the primary keeps running");
                    self.event(
                        true,
                        reason::MAJOR_UPGRADE_FAILED,
                        format!("major upgrade: {e}; trying again"),
                    )
                    .await;
                    return Ok(Next::Continue);
                }
                let mut record = status.upgrade.clone().unwrap_or_default();
                record.primary_stopped_at = Some(now_rfc3339());
                record.message = step.describe();
                if let Err(e) = self.record_upgrade(json!({"upgrade": record})).await {
                    let _ = resume_all(agents, &poolers).await;
                    return Err(e);
                }
                info!(%cluster, operation = "major-upgrade", instance = %primary, "poolers paused; stopping the primary");
                self.event(false, reason::MAJOR_UPGRADE_PROGRESS, step.describe())
                    .await;
                Ok(Next::Restart)
            }
            Step::PrimaryUpgraded {
                instance,
                pg_upgrade_ms,
            } => {
                let mut record = status.upgrade.clone().unwrap_or_default();
                if let Some(agents) = self.agents {
                    let poolers = self.poolers();
                    reconnect_all(agents, &poolers).await;
                    let failed = resume_all(agents, &poolers).await;
                    if !failed.is_empty() {
                        warn!(%cluster, operation = "major-upgrade", poolers = failed.len(), "RESUME failed; they resume after their hold limit");
                    }
                }
                record.downtime_ms = millis_since(record.primary_stopped_at.as_deref());
                record.primary_started_at = Some(now_rfc3339());
                record.pg_upgrade_ms = *pg_upgrade_ms;
                record.phase = upgrade::RECLONING.into();
                record.message = format!(
                    "{instance} runs PostgreSQL {}; replicas clone it again",
                    record.to_version
                );
                self.record_upgrade(
                    json!({"upgrade": record, "postgresVersion": record.to_version}),
                )
                .await?;
                info!(%cluster, operation = "major-upgrade", instance = %instance, downtime_ms = record.downtime_ms, pg_upgrade_ms = record.pg_upgrade_ms, "the upgraded primary serves; poolers resumed");
                self.event(false, reason::MAJOR_UPGRADE_PROGRESS, format!(
                    "{instance} runs PostgreSQL {} after pg_upgrade ({} ms); writes waited {} ms; replicas clone it again",
                    record.to_version,
                    record.pg_upgrade_ms.unwrap_or_default(),
                    record.downtime_ms.unwrap_or_default()
                ))
                .await;
                Ok(Next::Restart)
            }
            Step::Fail { instance, message } => {
                if let Some(agents) = self.agents {
                    let _ = resume_all(agents, &self.poolers()).await;
                }
                let mut record = status.upgrade.clone().unwrap_or_default();
                record.phase = upgrade::FAILED.into();
                record.message = message.clone();
                record.downtime_ms = millis_since(record.primary_stopped_at.as_deref());
                record.completed_at = Some(now_rfc3339());
                self.record_upgrade(json!({"upgrade": record})).await?;
                warn!(%cluster, operation = "major-upgrade", instance = %instance, error = %message, "major upgrade refused; the old primary comes back");
                self.event(true, reason::MAJOR_UPGRADE_FAILED, format!(
                    "pg_upgrade refused on {instance} and changed nothing; {instance} comes back on PostgreSQL {}: {message}",
                    record.from_version
                ))
                .await;
                Ok(Next::Restart)
            }
            Step::Complete => {
                let mut record = status.upgrade.clone().unwrap_or_default();
                record.phase = upgrade::COMPLETED.into();
                record.completed_at = Some(now_rfc3339());
                record.message = format!(
                    "upgraded from PostgreSQL {} to {}",
                    record.from_version, record.to_version
                );
                self.record_upgrade(json!({"upgrade": record})).await?;
                info!(%cluster, operation = "major-upgrade", "major upgrade completed");
                self.event(
                    false,
                    reason::MAJOR_UPGRADE_COMPLETED,
                    format!(
                        "upgraded from PostgreSQL {} to {}; writes waited {} ms",
                        record.from_version,
                        record.to_version,
                        record.downtime_ms.unwrap_or_default()
                    ),
                )
                .await;
                Ok(Next::Restart)
            }
            Step::DeleteOldPrimary(_)
            | Step::CreatePrimary(_)
            | Step::AwaitGone(_)
            | Step::AwaitPrimary(_)
            | Step::RemoveUpgradePod(_) => Ok(Next::Continue),
        }
    }

    async fn record_upgrade(&self, status: serde_json::Value) -> Result<String, StatusError> {
        report::patch_status_if(
            self.ctx,
            self.cluster,
            &self.resource_version(),
            status,
            "upgrade",
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_record_removes_what_the_last_attempt_left() {
        let fresh = MajorUpgradeStatus {
            phase: upgrade::UPGRADING.into(),
            started_at: "now".into(),
            ..MajorUpgradeStatus::default()
        };
        let failed = MajorUpgradeStatus {
            phase: upgrade::FAILED.into(),
            primary_stopped_at: Some("before".into()),
            completed_at: Some("before".into()),
            downtime_ms: Some(5),
            ..MajorUpgradeStatus::default()
        };
        let patch = replacing(&fresh, Some(&failed));
        assert_eq!(patch["primaryStoppedAt"], serde_json::Value::Null);
        assert_eq!(patch["completedAt"], serde_json::Value::Null);
        assert_eq!(patch["startedAt"], "now");
        // Applied over the failed attempt's record, nothing of it stays.
        let mut old = serde_json::to_value(&failed).unwrap();
        json_patch_merge(&mut old, &patch);
        let merged: MajorUpgradeStatus = serde_json::from_value(old).unwrap();
        assert_eq!(merged, fresh);
    }

    /// RFC 7386, as the API server applies a merge patch.
    fn json_patch_merge(target: &mut serde_json::Value, patch: &serde_json::Value) {
        let (Some(t), Some(p)) = (target.as_object_mut(), patch.as_object()) else {
            *target = patch.clone();
            return;
        };
        for (k, v) in p {
            if v.is_null() {
                t.remove(k);
            } else {
                json_patch_merge(t.entry(k.clone()).or_insert(serde_json::Value::Null), v);
            }
        }
    }
}

//! Switchover steps: PAUSE the poolers, stop the old primary cleanly,
//! wait for the target to have all its WAL, promote, route clients,
//! RECONNECT and RESUME; and what an operator restarted half-way does.

use serde_json::json;
use tracing::{info, warn};

use super::{CATCH_UP_WAIT, Executor, Next, now_rfc3339};
use crate::api::{PostgresClusterStatus, SwitchoverStatus};
use crate::contract::instance::PromoteRequest;
use crate::contract::instance::Role;
use crate::operator::agents::Agents;
use crate::operator::cluster::operation::{Switchover, SwitchoverWhy};
use crate::operator::cluster::switchover as so;
use crate::operator::report::{self, StatusError, reason};
use crate::pooler::switchover::{SwitchoverOptions, resume_all, switchover};
use crate::postgres::lsn::Lsn;
use crate::resources::labels;

impl Executor<'_> {
    pub(super) async fn switchover(
        &self,
        step: &Switchover,
        status: &mut PostgresClusterStatus,
    ) -> Result<Next, StatusError> {
        let primary = status.target_primary.clone().unwrap_or_default();
        match step {
            Switchover::Refuse { request, message } => {
                warn!(cluster = %self.model.name, operation = "switchover", %message, "switchover refused");
                self.event(true, reason::SWITCHOVER_REFUSED, message.clone())
                    .await;
                status.switchover = Some(SwitchoverStatus {
                    request: request.clone(),
                    phase: so::FAILED.into(),
                    from: primary,
                    to: String::new(),
                    message: message.clone(),
                    client_hold_ms: None,
                    started_at: now_rfc3339(),
                    completed_at: Some(now_rfc3339()),
                });
                Ok(Next::Continue)
            }
            Switchover::AlreadyPrimary { request, to } => {
                status.switchover = Some(SwitchoverStatus {
                    request: request.clone(),
                    phase: so::COMPLETED.into(),
                    from: to.clone(),
                    to: to.clone(),
                    message: format!("{to} already is the primary; nothing to do"),
                    client_hold_ms: None,
                    started_at: now_rfc3339(),
                    completed_at: Some(now_rfc3339()),
                });
                Ok(Next::Continue)
            }
            Switchover::Interrupted { from, to } => {
                self.resolve_interrupted(from, to, status).await;
                Ok(Next::Continue)
            }
            Switchover::Start { request, to, why } => match self.agents {
                Some(agents) => {
                    self.run_switchover(agents, &primary, request, to, *why)
                        .await
                }
                None => Ok(Next::Continue),
            },
        }
    }

    /// PAUSE → stop the old primary cleanly → the target has all its WAL →
    /// promote → route clients → RECONNECT → RESUME.
    async fn run_switchover(
        &self,
        agents: &dyn Agents,
        from: &str,
        request: &str,
        to: &str,
        why: SwitchoverWhy,
    ) -> Result<Next, StatusError> {
        let purpose = match why {
            SwitchoverWhy::Requested => "switching over",
            SwitchoverWhy::RollingUpdate => "rolling update: switching over",
        };
        let mut record = SwitchoverStatus {
            request: request.to_string(),
            phase: so::PAUSING.into(),
            from: from.to_string(),
            to: to.to_string(),
            message: format!("{purpose} from {from} to {to}: pausing the poolers"),
            client_hold_ms: None,
            started_at: now_rfc3339(),
            completed_at: None,
        };
        let version = report::patch_status_if(
            self.ctx,
            self.cluster,
            &self.resource_version(),
            json!({"switchover": record}),
            "switchover",
        )
        .await?;
        info!(cluster = %self.model.name, operation = "switchover", %from, %to, ?why, "switchover started");
        self.event(false, reason::SWITCHOVER_STARTED, record.message.clone())
            .await;

        let old_lsn: Option<Lsn> = self
            .observed
            .reports
            .get(from)
            .and_then(|r| r.current_lsn.as_deref())
            .and_then(|s| s.parse().ok());
        let version = std::sync::Mutex::new(version);
        let phases = Phases::start();
        let promoting = {
            let mut r = record.clone();
            r.phase = so::PROMOTING.into();
            r.message = format!("{to} is the target primary; stopping {from} cleanly");
            r
        };
        let outcome = switchover(
            agents,
            &self.poolers(),
            &SwitchoverOptions::default(),
            || async {
                phases.mark("paused");
                let (Some(old), Some(new)) = (self.endpoint(from), self.endpoint(to)) else {
                    return Err("an instance has no pod IP".to_string());
                };
                self.move_target(
                    &version,
                    json!({"targetPrimary": to, "switchover": promoting}),
                )
                .await
                .map_err(|e| e.to_string())?;
                phases.mark("targetMoved");
                self.set_role(from, labels::ROLE_REPLICA).await;
                let give_back = |why: String| async {
                    if let Err(e) = self
                        .move_target(&version, json!({"targetPrimary": from}))
                        .await
                    {
                        warn!(cluster = %self.model.name, error = %e, "cannot give the primary role back");
                    }
                    self.set_role(from, labels::ROLE_PRIMARY).await;
                    why
                };
                let stopped_at = match agents.demote(&old, to).await {
                    Ok(r) => r.shutdown_checkpoint,
                    Err(e) => {
                        return Err(give_back(format!("stopping {from} failed: {e}")).await);
                    }
                };
                phases.mark("demoted");
                if let Err(e) = agents.promote(&new, &catch_up(stopped_at, old_lsn)).await {
                    return Err(give_back(format!("promoting {to} failed: {e}")).await);
                }
                phases.mark("promoted");
                self.route_clients(to).await;
                phases.mark("routed");
                Ok::<(), String>(())
            },
        )
        .await;
        let version = version.into_inner().unwrap_or_else(|p| p.into_inner());
        phases.mark("resumed");
        let warning = outcome.is_err();
        match outcome {
            Ok(switched) => {
                record.phase = so::COMPLETED.into();
                record.client_hold_ms = Some(switched.held.as_millis() as u64);
                record.message = format!(
                    "{to} is the primary; clients were held {} ms{}",
                    switched.held.as_millis(),
                    if switched.resume_failures.is_empty() {
                        String::new()
                    } else {
                        format!(
                            "; RESUME failed on {} pooler(s), they resume on their own after their hold limit",
                            switched.resume_failures.len()
                        )
                    }
                );
            }
            Err(e) => {
                record.phase = so::FAILED.into();
                record.message = e.to_string();
            }
        }
        record.completed_at = Some(now_rfc3339());
        if warning {
            warn!(cluster = %self.model.name, operation = "switchover", message = %record.message, phases = %phases, "switchover failed");
        } else {
            info!(cluster = %self.model.name, operation = "switchover", message = %record.message, phases = %phases, "switchover completed");
        }
        self.event(
            warning,
            if warning {
                reason::SWITCHOVER_FAILED
            } else {
                reason::SWITCHOVER_COMPLETED
            },
            record.message.clone(),
        )
        .await;
        let mut body = json!({"switchover": record});
        if !warning {
            // Promoted and behind -rw: it is the current primary now.
            body["currentPrimary"] = json!(to);
        }
        // A conflict leaves the record in flight: the next reconcile
        // resolves it from the instances (Switchover::Interrupted).
        if let Err(e) =
            report::patch_status_if(self.ctx, self.cluster, &version, body, "switchover").await
        {
            warn!(cluster = %self.model.name, operation = "switchover", error = %e, "cannot record the outcome; resolved on the next reconcile");
        }
        Ok(Next::Restart)
    }

    /// An optimistic status write during a switchover; keeps the version.
    async fn move_target(
        &self,
        version: &std::sync::Mutex<String>,
        body: serde_json::Value,
    ) -> Result<(), StatusError> {
        let current = version.lock().map(|v| v.clone()).unwrap_or_default();
        let new = report::patch_status_if(self.ctx, self.cluster, &current, body, "targetPrimary")
            .await?;
        if let Ok(mut v) = version.lock() {
            *v = new;
        }
        Ok(())
    }

    /// A switchover the operator was carrying out when it stopped. Before
    /// `targetPrimary` moved nothing changed: the poolers are resumed and
    /// the request is recorded as failed. After, the instance managers
    /// already follow the new target, so the remaining steps (each
    /// idempotent) are carried out; a step that cannot be taken yet is
    /// tried again on the next reconcile. The poolers also resume on their
    /// own after their hold limit.
    async fn resolve_interrupted(&self, from: &str, to: &str, status: &mut PostgresClusterStatus) {
        let Some(agents) = self.agents else { return };
        let moved = status.target_primary.as_deref() == Some(to);
        let role = |name: &str| self.observed.reports.get(name).map(|r| r.role);
        if moved {
            self.set_role(from, labels::ROLE_REPLICA).await;
        }
        if moved && role(to) != Some(Role::Primary) {
            let (Some(old), Some(new)) = (self.endpoint(from), self.endpoint(to)) else {
                return;
            };
            let mut request = PromoteRequest::default();
            if role(from) == Some(Role::Primary) {
                match agents.demote(&old, to).await {
                    Ok(r) => {
                        let last = self
                            .observed
                            .reports
                            .get(from)
                            .and_then(|r| r.current_lsn.as_deref())
                            .and_then(|s| s.parse::<Lsn>().ok());
                        request = catch_up(r.shutdown_checkpoint, last);
                    }
                    Err(e) => {
                        warn!(cluster = %self.model.name, instance = %from, operation = "switchover", error = %e, "demote; tried again on the next reconcile");
                        return;
                    }
                }
            }
            if let Err(e) = agents.promote(&new, &request).await {
                warn!(cluster = %self.model.name, instance = %to, operation = "switchover", error = %e, "promote; tried again on the next reconcile");
                return;
            }
        }
        if moved {
            self.route_clients(to).await;
            self.reconnect_poolers().await;
        }
        let _ = resume_all(agents, &self.poolers()).await;
        let Some(record) = status.switchover.as_mut() else {
            return;
        };
        record.phase = if moved { so::COMPLETED } else { so::FAILED }.into();
        record.message = if moved {
            format!("{to} is the primary (the switchover was finished after an operator restart)")
        } else {
            format!(
                "the operator restarted before {to} became the target; {from} stays the primary; change the annotation's token to ask again"
            )
        };
        record.completed_at = Some(now_rfc3339());
        self.event(
            !moved,
            reason::SWITCHOVER_INTERRUPTED,
            record.message.clone(),
        )
        .await;
    }
}

/// The promotion of a switchover's target: only once it has the old
/// primary's last WAL (where its shutdown checkpoint starts, else the
/// position it last reported), waiting for it at most [`CATCH_UP_WAIT`].
fn catch_up(shutdown_checkpoint: Option<String>, last_reported: Option<Lsn>) -> PromoteRequest {
    PromoteRequest {
        min_wal: shutdown_checkpoint.or_else(|| last_reported.map(|l| l.to_string())),
        catch_up_ms: Some(CATCH_UP_WAIT.as_millis() as u64),
        ..PromoteRequest::default()
    }
}

/// When each step of a switchover ended, in ms since the poolers were
/// asked to pause: the log line that shows where a long client wait went.
struct Phases {
    started: std::time::Instant,
    marks: std::sync::Mutex<Vec<(&'static str, u128)>>,
}

impl Phases {
    fn start() -> Self {
        Self {
            started: std::time::Instant::now(),
            marks: std::sync::Mutex::new(Vec::new()),
        }
    }

    fn mark(&self, step: &'static str) {
        if let Ok(mut marks) = self.marks.lock() {
            marks.push((step, self.started.elapsed().as_millis()));
        }
    }
}

impl std::fmt::Display for Phases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let marks = self.marks.lock().map(|m| m.clone()).unwrap_or_default();
        let parts: Vec<String> = marks.iter().map(|(s, ms)| format!("{s}={ms}")).collect();
        f.write_str(&parts.join(" "))
    }
}

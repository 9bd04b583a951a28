//! Failover steps: move `targetPrimary` to the chosen replica, promote it,
//! route clients; record a blocked or no longer needed failover.

use std::time::Instant;

use serde_json::json;
use tracing::{info, warn};

use super::{Executor, Next, now_rfc3339};
use crate::api::{FailoverStatus, PostgresClusterStatus};
use crate::contract::instance::PromoteRequest;
use crate::operator::cluster::failover::Promotion;
use crate::operator::cluster::operation::{Failover, failover_phase};
use crate::operator::report::{self, StatusError, reason};
use crate::resources::labels;

impl Executor<'_> {
    pub(super) async fn failover(
        &self,
        step: &Failover,
        status: &mut PostgresClusterStatus,
    ) -> Result<Next, StatusError> {
        use failover_phase::*;
        match step {
            Failover::Start(p) => {
                self.start_failover(p).await?;
                Ok(Next::Restart)
            }
            Failover::Promote { to } => {
                // Idempotent; the instance manager also promotes on its own
                // once it sees the target and the free Lease.
                if let (Some(agents), Some(ep)) = (self.agents, self.endpoint(to))
                    && let Err(e) = agents.promote(&ep, &PromoteRequest::default()).await
                {
                    warn!(cluster = %self.model.name, instance = %to, operation = "failover", error = %e, "promote");
                }
                Ok(Next::Continue)
            }
            Failover::Finish { to, from } => {
                self.set_role(from, labels::ROLE_REPLICA).await;
                self.route_clients(to).await;
                self.reconnect_poolers().await;
                if let Some(f) = status.failover.as_mut() {
                    f.phase = COMPLETED.into();
                    f.completed_at = Some(now_rfc3339());
                    f.message = format!("{to} is the primary; {from} was lost");
                    info!(cluster = %self.model.name, operation = "failover", primary = %to, "failover completed");
                    self.event(false, reason::FAILOVER_COMPLETED, f.message.clone())
                        .await;
                }
                Ok(Next::Continue)
            }
            Failover::Blocked { from, message } => {
                let new = !status
                    .failover
                    .as_ref()
                    .is_some_and(|f| f.phase == BLOCKED && f.from == *from);
                if new {
                    warn!(cluster = %self.model.name, operation = "failover", %message, "failover blocked");
                    self.event(true, reason::FAILOVER_BLOCKED, message.clone())
                        .await;
                }
                let started_at = status
                    .failover
                    .as_ref()
                    .filter(|_| !new)
                    .map_or_else(now_rfc3339, |f| f.started_at.clone());
                status.failover = Some(FailoverStatus {
                    phase: BLOCKED.into(),
                    from: from.clone(),
                    to: String::new(),
                    message: message.clone(),
                    last_known_lsn: None,
                    candidate_lsn: None,
                    started_at,
                    completed_at: None,
                });
                Ok(Next::Continue)
            }
            Failover::Recovered => {
                if let Some(f) = status.failover.as_mut() {
                    f.phase = RECOVERED.into();
                    f.message =
                        format!("{} renewed its Lease again; no failover was needed", f.from);
                    f.completed_at = Some(now_rfc3339());
                    self.event(false, reason::FAILOVER_CANCELLED, f.message.clone())
                        .await;
                }
                Ok(Next::Continue)
            }
        }
    }

    async fn start_failover(&self, p: &Promotion) -> Result<(), StatusError> {
        let record = FailoverStatus {
            phase: failover_phase::PROMOTING.into(),
            from: p.from.clone(),
            to: p.to.clone(),
            message: p.message.clone(),
            last_known_lsn: p.last_known_lsn.clone(),
            candidate_lsn: p.candidate_lsn.clone(),
            started_at: now_rfc3339(),
            completed_at: None,
        };
        let version = report::patch_status_if(
            self.ctx,
            self.cluster,
            &self.resource_version(),
            json!({"targetPrimary": p.to, "failover": record}),
            "targetPrimary",
        )
        .await?;
        warn!(cluster = %self.model.name, operation = "failover", from = %p.from, to = %p.to, message = %p.message, "failover started");
        self.ctx
            .metrics
            .failover(&self.model.namespace, &self.model.name);
        // New connections stop going to the lost primary (and the label
        // changes reach the EndpointSlice controller one at a time).
        self.set_role(&p.from, labels::ROLE_REPLICA).await;
        let started = Instant::now();
        let promoted = match (self.agents, self.endpoint(&p.to)) {
            (Some(agents), Some(ep)) => agents
                .promote(&ep, &PromoteRequest::default())
                .await
                .map_err(|e| e.to_string()),
            _ => Err(format!("{} has no agent address yet", p.to)),
        };
        match promoted {
            Ok(r) => {
                info!(cluster = %self.model.name, instance = %p.to, operation = "failover", elapsed_ms = started.elapsed().as_millis() as u64, timeline = r.timeline, "promoted")
            }
            Err(e) => {
                warn!(cluster = %self.model.name, instance = %p.to, operation = "failover", error = %e, "promote failed; retried on the next reconcile");
                self.event(true, reason::FAILOVER_STARTED, p.message.clone())
                    .await;
                return Ok(());
            }
        }
        // Writes are accepted: route clients now rather than on the next
        // reconcile (which would first wait for the lost primary's agent).
        self.route_clients(&p.to).await;
        self.reconnect_poolers().await;
        // Recorded once clients are routed: an Event is an API write the
        // outage need not wait for.
        self.event(true, reason::FAILOVER_STARTED, p.message.clone())
            .await;
        let mut done = record;
        done.phase = failover_phase::COMPLETED.into();
        done.completed_at = Some(now_rfc3339());
        done.message = format!("{} is the primary; {} was lost", p.to, p.from);
        // On a conflict the next reconcile finishes it (Failover::Finish).
        if report::patch_status_if(
            self.ctx,
            self.cluster,
            &version,
            json!({"failover": done}),
            "failover",
        )
        .await
        .is_ok()
        {
            info!(cluster = %self.model.name, operation = "failover", primary = %p.to, elapsed_ms = started.elapsed().as_millis() as u64, "failover completed");
            self.event(false, reason::FAILOVER_COMPLETED, done.message)
                .await;
        }
        Ok(())
    }
}

//! The executor: carries out the step [`operation::choose`] picked. The
//! only operator code that acts through the agents (promote, demote,
//! PAUSE/RECONNECT/RESUME); pods and other children are written by
//! `apply`.
//!
//! `status.targetPrimary` is the authority the instance managers follow, so
//! it only moves with an optimistic write (the resourceVersion the decision
//! was made on as a precondition): an operator working from a stale copy
//! gets a conflict instead of undoing a newer decision. Each step of a
//! failover or switchover is recorded in `status.failover` /
//! `status.switchover` before it is taken, so an operator that restarts
//! half-way finds it (see `operation`'s priorities).

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::ListParams;
use kube::{Api, ResourceExt};
use serde_json::json;
use tracing::{info, warn};

use super::apply::relabel;
use super::failover::Promotion;
use super::observe::Observed;
use super::operation::{
    Failover, Operation, RestartWhy, Switchover, SwitchoverWhy, failover_phase,
};
use super::switchover as so;
use crate::agents::client::Endpoint;
use crate::api::{FailoverStatus, PostgresCluster, PostgresClusterStatus, SwitchoverStatus};
use crate::contract::instance::Role;
use crate::operator::agents::{self, Agents};
use crate::operator::context::Context;
use crate::operator::report::{self, StatusError, reason};
use crate::pooler::switchover::{SwitchoverOptions, resume_all, switchover};
use crate::postgres::lsn::Lsn;
use crate::resources::labels;
use crate::resources::model::Model;
use crate::resources::names;

/// How long a relabelled primary may take to appear behind `<name>-rw`
/// before clients are let through anyway.
const ENDPOINTS_WAIT: Duration = Duration::from_secs(5);
/// How long the target of a switchover may take to receive the old
/// primary's last WAL.
const CATCH_UP_WAIT: Duration = Duration::from_secs(10);
/// How often the catch-up and the `-rw` endpoints are looked at.
const POLL: Duration = Duration::from_millis(20);

/// What the reconcile does after the step.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Go on: apply the children and write status (the working status may
    /// carry updated records).
    Continue,
    /// `targetPrimary` or an operation record was written: plan again from
    /// what the API server has now.
    Restart,
}

/// What one step works with.
pub struct Executor<'a> {
    pub ctx: &'a Context,
    pub cluster: &'a PostgresCluster,
    pub model: &'a Model,
    pub observed: &'a Observed,
    /// None while no pod exists or the operator's certificate is missing.
    pub agents: Option<&'a dyn Agents>,
}

fn now_rfc3339() -> String {
    jiff::Timestamp::now().to_string()
}

impl Executor<'_> {
    fn endpoint(&self, name: &str) -> Option<Endpoint> {
        agents::endpoint(
            self.observed.pod(name)?,
            &self.model.name,
            &self.model.namespace,
        )
    }

    fn poolers(&self) -> Vec<Endpoint> {
        agents::poolers(
            &self.observed.pooler_pods,
            &self.model.namespace,
            &self.model.name,
        )
    }

    fn resource_version(&self) -> String {
        self.cluster.resource_version().unwrap_or_default()
    }

    /// Carries out the step of `op` that needs the agents or an operation
    /// record; other operations are pods `apply` creates or deletes.
    pub async fn run(
        &self,
        op: &Operation,
        status: &mut PostgresClusterStatus,
    ) -> Result<Next, StatusError> {
        match op {
            Operation::Failover(f) => self.failover(f, status).await,
            Operation::Switchover(s) => self.switchover(s, status).await,
            Operation::RestartPrimary { instance, why } => {
                let note = op.describe();
                if *why == RestartWhy::SingleInstance {
                    warn!(cluster = %self.model.name, instance = %instance, operation = "rolling-update", "restarting the only instance in place");
                }
                report::event(
                    self.ctx,
                    self.cluster,
                    false,
                    reason::RESTARTING_PRIMARY,
                    note,
                )
                .await;
                Ok(Next::Continue)
            }
            Operation::AwaitSwitchoverRequest { .. } => {
                let told = status
                    .operation
                    .as_ref()
                    .is_some_and(|o| o.message == op.describe());
                if !told {
                    report::event(
                        self.ctx,
                        self.cluster,
                        false,
                        reason::WAITING_FOR_SWITCHOVER,
                        op.describe(),
                    )
                    .await;
                }
                Ok(Next::Continue)
            }
            Operation::RecreateReplica(_) => {
                report::event(
                    self.ctx,
                    self.cluster,
                    false,
                    reason::ROLLING_UPDATE,
                    op.describe(),
                )
                .await;
                Ok(Next::Continue)
            }
            _ => Ok(Next::Continue),
        }
    }

    async fn failover(
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
                    && let Err(e) = agents.promote(&ep).await
                {
                    warn!(cluster = %self.model.name, instance = %to, operation = "failover", error = %e, "promote");
                }
                Ok(Next::Continue)
            }
            Failover::Finish { to, from } => {
                self.route_clients(to, from).await;
                self.reconnect_poolers().await;
                if let Some(f) = status.failover.as_mut() {
                    f.phase = COMPLETED.into();
                    f.completed_at = Some(now_rfc3339());
                    f.message = format!("{to} is the primary; {from} was lost");
                    info!(cluster = %self.model.name, operation = "failover", primary = %to, "failover completed");
                    report::event(
                        self.ctx,
                        self.cluster,
                        false,
                        reason::FAILOVER_COMPLETED,
                        f.message.clone(),
                    )
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
                    report::event(
                        self.ctx,
                        self.cluster,
                        true,
                        reason::FAILOVER_BLOCKED,
                        message.clone(),
                    )
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
                    report::event(
                        self.ctx,
                        self.cluster,
                        false,
                        reason::FAILOVER_CANCELLED,
                        f.message.clone(),
                    )
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
        self.ctx.metrics.failovers.inc();
        report::event(
            self.ctx,
            self.cluster,
            true,
            reason::FAILOVER_STARTED,
            p.message.clone(),
        )
        .await;
        let (Some(agents), Some(ep)) = (self.agents, self.endpoint(&p.to)) else {
            return Ok(());
        };
        let started = Instant::now();
        match agents.promote(&ep).await {
            Ok(r) => {
                info!(cluster = %self.model.name, instance = %p.to, operation = "failover", elapsed_ms = started.elapsed().as_millis() as u64, timeline = r.timeline, "promoted")
            }
            Err(e) => {
                warn!(cluster = %self.model.name, instance = %p.to, operation = "failover", error = %e, "promote failed; retried on the next reconcile");
                return Ok(());
            }
        }
        // Writes are accepted: route clients now rather than on the next
        // reconcile (which would first wait for the lost primary's agent).
        self.route_clients(&p.to, &p.from).await;
        self.reconnect_poolers().await;
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
            report::event(
                self.ctx,
                self.cluster,
                false,
                reason::FAILOVER_COMPLETED,
                done.message,
            )
            .await;
        }
        Ok(())
    }

    /// Moves the role labels (the Services select on them) and waits until
    /// `<name>-rw` lists the new primary, so connections opened after this
    /// reach it. Every change of primary goes through here.
    async fn route_clients(&self, to: &str, from: &str) {
        let pods: Api<Pod> = Api::namespaced(self.ctx.client.clone(), &self.model.namespace);
        for (name, role) in [(to, labels::ROLE_PRIMARY), (from, labels::ROLE_REPLICA)] {
            if let Err(e) = relabel(&pods, name, role).await {
                warn!(cluster = %self.model.name, instance = %name, error = %e, "relabel");
            }
        }
        if let Some(ip) = self
            .observed
            .pod(to)
            .and_then(|p| p.status.as_ref()?.pod_ip.clone())
        {
            self.wait_for_rw_endpoint(&ip).await;
        }
    }

    /// Pooler server connections opened before the change go to the old
    /// primary: retire them.
    async fn reconnect_poolers(&self) {
        let Some(agents) = self.agents else { return };
        for ep in &self.poolers() {
            if let Err(e) = agents.reconnect(ep).await {
                warn!(cluster = %self.model.name, pooler = %ep.name, error = %e, "RECONNECT failed");
            }
        }
    }

    async fn wait_for_rw_endpoint(&self, ip: &str) {
        let api: Api<EndpointSlice> =
            Api::namespaced(self.ctx.client.clone(), &self.model.namespace);
        let selector = format!(
            "kubernetes.io/service-name={}",
            names::rw_service(&self.model.name)
        );
        let deadline = Instant::now() + ENDPOINTS_WAIT;
        loop {
            let only_new = api
                .list(&ListParams::default().labels(&selector))
                .await
                .map(|l| {
                    let ready: Vec<String> = l
                        .items
                        .iter()
                        .flat_map(|s| s.endpoints.iter())
                        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(false))
                        .flat_map(|e| e.addresses.iter().cloned())
                        .collect();
                    ready == [ip.to_string()]
                })
                .unwrap_or(false);
            if only_new || Instant::now() >= deadline {
                if !only_new {
                    warn!(cluster = %self.model.name, "the -rw Service does not list the new primary yet; going on anyway");
                }
                return;
            }
            tokio::time::sleep(POLL * 2).await;
        }
    }

    async fn switchover(
        &self,
        step: &Switchover,
        status: &mut PostgresClusterStatus,
    ) -> Result<Next, StatusError> {
        let primary = status.target_primary.clone().unwrap_or_default();
        match step {
            Switchover::Refuse { request, message } => {
                warn!(cluster = %self.model.name, operation = "switchover", %message, "switchover refused");
                report::event(
                    self.ctx,
                    self.cluster,
                    true,
                    reason::SWITCHOVER_REFUSED,
                    message.clone(),
                )
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
        report::event(
            self.ctx,
            self.cluster,
            false,
            reason::SWITCHOVER_STARTED,
            record.message.clone(),
        )
        .await;

        let old_lsn: Option<Lsn> = self
            .observed
            .reports
            .get(from)
            .and_then(|r| r.current_lsn.as_deref())
            .and_then(|s| s.parse().ok());
        let version = std::sync::Mutex::new(version);
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
                let (Some(old), Some(new)) = (self.endpoint(from), self.endpoint(to)) else {
                    return Err("an instance has no pod IP".to_string());
                };
                self.move_target(
                    &version,
                    json!({"targetPrimary": to, "switchover": promoting}),
                )
                .await
                .map_err(|e| e.to_string())?;
                let give_back = |why: String| async {
                    if let Err(e) = self
                        .move_target(&version, json!({"targetPrimary": from}))
                        .await
                    {
                        warn!(cluster = %self.model.name, error = %e, "cannot give the primary role back");
                    }
                    why
                };
                if let Err(e) = agents.demote(&old, to).await {
                    return Err(give_back(format!("stopping {from} failed: {e}")).await);
                }
                if let Some(lsn) = old_lsn
                    && !self.wait_for_wal(agents, &new, lsn).await
                {
                    return Err(give_back(format!(
                        "{to} did not receive {from}'s last WAL ({lsn}) within {CATCH_UP_WAIT:?}; not promoting it"
                    ))
                    .await);
                }
                if let Err(e) = agents.promote(&new).await {
                    return Err(give_back(format!("promoting {to} failed: {e}")).await);
                }
                self.route_clients(to, from).await;
                Ok::<(), String>(())
            },
        )
        .await;
        let version = version.into_inner().unwrap_or_else(|p| p.into_inner());
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
            warn!(cluster = %self.model.name, operation = "switchover", message = %record.message, "switchover failed");
        } else {
            info!(cluster = %self.model.name, operation = "switchover", message = %record.message, "switchover completed");
        }
        report::event(
            self.ctx,
            self.cluster,
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

    /// Waits (bounded) until `new` has received WAL up to `lsn`, or has
    /// already promoted itself (it follows `targetPrimary` on its own once
    /// the old primary released the Lease, after its clean shutdown sent
    /// every WAL record). False when it never caught up.
    async fn wait_for_wal(&self, agents: &dyn Agents, new: &Endpoint, lsn: Lsn) -> bool {
        let deadline = Instant::now() + CATCH_UP_WAIT;
        while Instant::now() < deadline {
            let caught_up = agents
                .instance_status(new, Duration::from_secs(1))
                .await
                .is_ok_and(|r| {
                    r.role == Role::Primary
                        || r.receive_lsn
                            .or(r.replay_lsn)
                            .and_then(|s| s.parse::<Lsn>().ok())
                            .is_some_and(|have| have >= lsn)
                });
            if caught_up {
                return true;
            }
            tokio::time::sleep(POLL).await;
        }
        false
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
        if moved && role(to) != Some(Role::Primary) {
            let (Some(old), Some(new)) = (self.endpoint(from), self.endpoint(to)) else {
                return;
            };
            if role(from) == Some(Role::Primary) {
                if let Err(e) = agents.demote(&old, to).await {
                    warn!(cluster = %self.model.name, instance = %from, operation = "switchover", error = %e, "demote; tried again on the next reconcile");
                    return;
                }
                let lsn = self
                    .observed
                    .reports
                    .get(from)
                    .and_then(|r| r.current_lsn.as_deref())
                    .and_then(|s| s.parse::<Lsn>().ok());
                if let Some(lsn) = lsn
                    && !self.wait_for_wal(agents, &new, lsn).await
                {
                    return;
                }
            }
            if let Err(e) = agents.promote(&new).await {
                warn!(cluster = %self.model.name, instance = %to, operation = "switchover", error = %e, "promote; tried again on the next reconcile");
                return;
            }
        }
        if moved {
            self.route_clients(to, from).await;
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
        report::event(
            self.ctx,
            self.cluster,
            !moved,
            reason::SWITCHOVER_INTERRUPTED,
            record.message.clone(),
        )
        .await;
    }
}

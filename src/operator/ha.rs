//! Failover and switchover, carried out by the reconcile (DESIGN §5).
//!
//! The decisions are pure (`cluster::failover`, `cluster::switchover`);
//! this module performs them. `status.targetPrimary` is the authority the
//! instance managers follow, so it only ever moves with an optimistic write
//! (the cluster's resourceVersion as a precondition): an operator working
//! from a stale copy gets a conflict instead of undoing a newer decision.
//! Progress is kept in `status.failover` / `status.switchover`, so an
//! operator that restarts half-way picks up from there.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use kube::{Api, Resource, ResourceExt};
use serde_json::json;
use tracing::{info, warn};

use super::agents;
use super::cluster::apply::{FIELD_MANAGER, relabel};
use super::cluster::failover::{self, Decision as FailoverDecision, Promotion};
use super::cluster::observe::Observed;
use super::cluster::switchover::{self as so, Decision as SwitchoverDecision};
use super::context::Context;
use crate::agents::client::{AgentClient, Endpoint};
use crate::api::{FailoverStatus, PostgresCluster, PostgresClusterStatus, SwitchoverStatus};
use crate::contract::instance::{DemoteRequest, PromoteRequest, Role};
use crate::pooler::switchover::{SwitchoverOptions, resume_all, switchover};
use crate::postgres::lsn::Lsn;
use crate::resources::labels;
use crate::resources::model::Model;
use crate::resources::names;

pub const PROMOTING: &str = "Promoting";
pub const COMPLETED: &str = "Completed";
pub const BLOCKED: &str = "Blocked";
/// The primary renewed its Lease again before anything was promoted.
pub const RECOVERED: &str = "Recovered";

/// How long a relabelled primary may take to appear behind `<name>-rw`
/// before the poolers are resumed anyway.
const ENDPOINTS_WAIT: Duration = Duration::from_secs(5);
/// How long the target of a switchover may take to receive the old
/// primary's last WAL.
const CATCH_UP_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum HaError {
    #[error("the cluster changed while deciding (conflict on resourceVersion); deciding again")]
    Conflict,
    #[error("cannot write status.{field}: {source}")]
    Write {
        field: &'static str,
        #[source]
        source: kube::Error,
    },
}

/// What the reconcile does next.
pub enum Next {
    /// Go on with the normal pipeline (the status may carry updated
    /// failover/switchover records).
    Continue,
    /// targetPrimary moved: start over from a fresh read.
    Restart,
}

fn now_rfc3339() -> String {
    jiff::Timestamp::now().to_string()
}

fn rv(cluster: &PostgresCluster) -> String {
    cluster
        .metadata
        .resource_version
        .clone()
        .unwrap_or_default()
}

/// A merge patch of the status, valid only against `resource_version`;
/// returns the new resourceVersion.
async fn patch_status_if(
    ctx: &Context,
    cluster: &PostgresCluster,
    resource_version: &str,
    status: serde_json::Value,
    field: &'static str,
) -> Result<String, HaError> {
    let api: Api<PostgresCluster> =
        Api::namespaced(ctx.client.clone(), &cluster.namespace().unwrap_or_default());
    let body = json!({"metadata": {"resourceVersion": resource_version}, "status": status});
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PatchParams::default()
    };
    match api
        .patch_status(&cluster.name_any(), &params, &Patch::Merge(&body))
        .await
    {
        Ok(updated) => Ok(updated.metadata.resource_version.unwrap_or_default()),
        Err(kube::Error::Api(s)) if s.code == 409 => Err(HaError::Conflict),
        Err(source) => Err(HaError::Write { field, source }),
    }
}

async fn event(
    ctx: &Context,
    cluster: &PostgresCluster,
    warning: bool,
    reason: &str,
    note: String,
) {
    let e = Event {
        type_: if warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: reason.into(),
        note: Some(note),
        action: reason.into(),
        secondary: None,
    };
    if let Err(err) = ctx.recorder.publish(&e, &cluster.object_ref(&())).await {
        warn!(cluster = %cluster.name_any(), error = %err, "cannot publish event");
    }
}

fn endpoint_of(observed: &Observed, model: &Model, name: &str) -> Option<Endpoint> {
    agents::endpoint(observed.pod(name)?, &model.name, &model.namespace)
}

/// Runs before the plan: starts a failover or a switchover when one is due.
pub async fn before(
    ctx: &Context,
    cluster: &PostgresCluster,
    model: &Model,
    observed: &Observed,
    instances: &[String],
    status: &mut PostgresClusterStatus,
    client: Option<&AgentClient>,
) -> Result<Next, HaError> {
    let Some(target) = status.target_primary.clone() else {
        return Ok(Next::Continue);
    };
    let failover_running = status
        .failover
        .as_ref()
        .is_some_and(|f| f.phase == PROMOTING);
    let switchover_running = status
        .switchover
        .as_ref()
        .is_some_and(|s| !so::is_terminal(&s.phase));

    // A switchover request (one at a time, never during a failover).
    let annotation = cluster
        .annotations()
        .get(labels::SWITCHOVER_ANNOTATION)
        .cloned();
    let decision = so::decide(&so::Input {
        annotation: annotation.as_deref(),
        recorded: status.switchover.as_ref(),
        target_primary: &target,
        instances,
        reports: &observed.reports,
        failover_running,
    });
    match decision {
        SwitchoverDecision::Nothing | SwitchoverDecision::Wait(_) => {}
        SwitchoverDecision::Refuse { request, message } => {
            warn!(cluster = %model.name, operation = "switchover", %message, "switchover refused");
            event(ctx, cluster, true, "SwitchoverRefused", message.clone()).await;
            status.switchover = Some(SwitchoverStatus {
                request,
                phase: so::FAILED.into(),
                from: target.clone(),
                to: String::new(),
                message,
                client_hold_ms: None,
                started_at: now_rfc3339(),
                completed_at: Some(now_rfc3339()),
            });
        }
        SwitchoverDecision::AlreadyPrimary { request, to } => {
            status.switchover = Some(SwitchoverStatus {
                request,
                phase: so::COMPLETED.into(),
                from: to.clone(),
                message: format!("{to} already is the primary; nothing to do"),
                to,
                client_hold_ms: None,
                started_at: now_rfc3339(),
                completed_at: Some(now_rfc3339()),
            });
        }
        SwitchoverDecision::Resume { request, to } => {
            resume_interrupted(ctx, cluster, model, observed, status, client, request, to).await;
        }
        SwitchoverDecision::Start { request, to } => {
            if let Some(client) = client {
                return run_switchover(
                    ctx, cluster, model, observed, status, client, &target, request, to,
                )
                .await;
            }
        }
    }
    if switchover_running {
        return Ok(Next::Continue);
    }

    if let Some(f) = status.failover.as_ref().filter(|_| failover_running) {
        // Promoted already, or promote again (the call is idempotent; the
        // instance manager also promotes on its own once it sees the
        // target and the free Lease). Only a chosen replica that stopped
        // answering is given up for another: the decision below runs with
        // it as the primary.
        if let Some(report) = observed.reports.get(&f.to) {
            if report.role != Role::Primary
                && let (Some(client), Some(ep)) = (client, endpoint_of(observed, model, &f.to))
                && let Err(e) = client.promote(&ep, &PromoteRequest::default()).await
            {
                warn!(cluster = %model.name, instance = %f.to, operation = "failover", error = %e, "promote");
            }
            return Ok(Next::Continue);
        }
    }

    let view = ctx.leases.view(&model.namespace, &model.name);
    let decision = failover::decide(&failover::Input {
        target_primary: &target,
        instances,
        lease: view.as_ref(),
        reports: &observed.reports,
        recorded: &status.instances,
        failover: &model.spec.failover,
        synchronous: &model.spec.replication.synchronous,
    });
    match decision {
        FailoverDecision::Healthy => {
            if let Some(f) = status.failover.as_mut()
                && f.phase == BLOCKED
            {
                f.phase = RECOVERED.into();
                f.message = format!("{} renewed its Lease again; no failover was needed", f.from);
                f.completed_at = Some(now_rfc3339());
                event(ctx, cluster, false, "FailoverCancelled", f.message.clone()).await;
            }
            Ok(Next::Continue)
        }
        FailoverDecision::Blocked { from, message } => {
            let new = !status
                .failover
                .as_ref()
                .is_some_and(|f| f.phase == BLOCKED && f.from == from);
            if new {
                warn!(cluster = %model.name, operation = "failover", %message, "failover blocked");
                event(ctx, cluster, true, "FailoverBlocked", message.clone()).await;
            }
            let started_at = status
                .failover
                .as_ref()
                .filter(|_| !new)
                .map_or_else(now_rfc3339, |f| f.started_at.clone());
            status.failover = Some(FailoverStatus {
                phase: BLOCKED.into(),
                from,
                to: String::new(),
                message,
                last_known_lsn: None,
                candidate_lsn: None,
                started_at,
                completed_at: None,
            });
            Ok(Next::Continue)
        }
        FailoverDecision::Promote(p) => {
            start_failover(ctx, cluster, model, observed, client, p).await?;
            Ok(Next::Restart)
        }
    }
}

async fn start_failover(
    ctx: &Context,
    cluster: &PostgresCluster,
    model: &Model,
    observed: &Observed,
    client: Option<&AgentClient>,
    p: Promotion,
) -> Result<(), HaError> {
    let record = FailoverStatus {
        phase: PROMOTING.into(),
        from: p.from.clone(),
        to: p.to.clone(),
        message: p.message.clone(),
        last_known_lsn: p.last_known_lsn.clone(),
        candidate_lsn: p.candidate_lsn.clone(),
        started_at: now_rfc3339(),
        completed_at: None,
    };
    let record_sent = record.clone();
    let version = patch_status_if(
        ctx,
        cluster,
        &rv(cluster),
        json!({"targetPrimary": p.to, "failover": record_sent}),
        "targetPrimary",
    )
    .await?;
    warn!(cluster = %model.name, operation = "failover", from = %p.from, to = %p.to, message = %p.message, "failover started");
    ctx.metrics.failovers.inc();
    event(ctx, cluster, true, "FailoverStarted", p.message.clone()).await;
    let (Some(client), Some(ep)) = (client, endpoint_of(observed, model, &p.to)) else {
        return Ok(());
    };
    let started = Instant::now();
    match client.promote(&ep, &PromoteRequest::default()).await {
        Ok(r) => {
            info!(cluster = %model.name, instance = %p.to, operation = "failover", elapsed_ms = started.elapsed().as_millis() as u64, timeline = r.timeline, "promoted")
        }
        Err(e) => {
            warn!(cluster = %model.name, instance = %p.to, operation = "failover", error = %e, "promote failed; retried on the next reconcile");
            return Ok(());
        }
    }
    // Writes are accepted: route clients now rather than on the next
    // reconcile (which would first wait for the lost primary's agent).
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &model.namespace);
    for (name, role) in [
        (p.to.as_str(), labels::ROLE_PRIMARY),
        (p.from.as_str(), labels::ROLE_REPLICA),
    ] {
        if let Err(e) = relabel(&pods, name, role).await {
            warn!(cluster = %model.name, instance = %name, error = %e, "relabel");
        }
    }
    wait_for_rw_endpoint(ctx, model, &ep.host).await;
    reconnect_poolers(ctx, model, client).await;
    let mut done = record;
    done.phase = COMPLETED.into();
    done.completed_at = Some(now_rfc3339());
    done.message = format!("{} is the primary; {} was lost", p.to, p.from);
    // On a conflict the next reconcile completes it (see `after`).
    if patch_status_if(
        ctx,
        cluster,
        &version,
        json!({"failover": done}),
        "failover",
    )
    .await
    .is_ok()
    {
        info!(cluster = %model.name, operation = "failover", primary = %p.to, elapsed_ms = started.elapsed().as_millis() as u64, "failover completed");
        event(ctx, cluster, false, "FailoverCompleted", done.message).await;
    }
    Ok(())
}

/// Runs after the plan was applied (labels follow targetPrimary): finishes
/// a failover whose new primary accepts writes.
pub async fn after(
    ctx: &Context,
    cluster: &PostgresCluster,
    model: &Model,
    observed: &Observed,
    status: &mut PostgresClusterStatus,
    client: Option<&AgentClient>,
) {
    let Some(f) = status.failover.as_mut().filter(|f| f.phase == PROMOTING) else {
        return;
    };
    let promoted = observed
        .reports
        .get(&f.to)
        .is_some_and(|r| r.role == Role::Primary && r.running);
    if !promoted {
        return;
    }
    if let Some(client) = client {
        if let Some(ip) = observed
            .pod(&f.to)
            .and_then(|p| p.status.as_ref()?.pod_ip.clone())
        {
            wait_for_rw_endpoint(ctx, model, &ip).await;
        }
        reconnect_poolers(ctx, model, client).await;
    }
    f.phase = COMPLETED.into();
    f.completed_at = Some(now_rfc3339());
    let note = format!("{} is the primary; {} was lost", f.to, f.from);
    f.message = note.clone();
    info!(cluster = %model.name, operation = "failover", primary = %f.to, "failover completed");
    event(ctx, cluster, false, "FailoverCompleted", note).await;
}

async fn reconnect_poolers(ctx: &Context, model: &Model, client: &AgentClient) {
    let poolers = match agents::poolers(&ctx.client, &model.namespace, &model.name).await {
        Ok(p) => p,
        Err(e) => {
            warn!(cluster = %model.name, error = %e, "cannot list pooler pods");
            return;
        }
    };
    for ep in &poolers {
        if let Err(e) = client.reconnect(ep).await {
            warn!(cluster = %model.name, pooler = %ep.name, error = %e, "RECONNECT failed");
        }
    }
}

/// Waits (bounded) until `<name>-rw` lists exactly the new primary, so
/// connections opened after this reach it.
async fn wait_for_rw_endpoint(ctx: &Context, model: &Model, ip: &str) {
    let api: Api<EndpointSlice> = Api::namespaced(ctx.client.clone(), &model.namespace);
    let selector = format!(
        "kubernetes.io/service-name={}",
        names::rw_service(&model.name)
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
                warn!(cluster = %model.name, "the -rw Service does not list the new primary yet; resuming anyway");
            }
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[allow(clippy::too_many_arguments)]
async fn run_switchover(
    ctx: &Context,
    cluster: &PostgresCluster,
    model: &Model,
    observed: &Observed,
    status: &mut PostgresClusterStatus,
    client: &AgentClient,
    from: &str,
    request: String,
    to: String,
) -> Result<Next, HaError> {
    let started_at = now_rfc3339();
    let mut record = SwitchoverStatus {
        request: request.clone(),
        phase: so::PAUSING.into(),
        from: from.to_string(),
        to: to.clone(),
        message: format!("switching over from {from} to {to}: pausing the poolers"),
        client_hold_ms: None,
        started_at,
        completed_at: None,
    };
    let mut version = patch_status_if(
        ctx,
        cluster,
        &rv(cluster),
        json!({"switchover": record}),
        "switchover",
    )
    .await?;
    info!(cluster = %model.name, operation = "switchover", %from, %to, "switchover started");
    event(
        ctx,
        cluster,
        false,
        "SwitchoverStarted",
        record.message.clone(),
    )
    .await;

    let poolers = agents::poolers(&ctx.client, &model.namespace, &model.name)
        .await
        .unwrap_or_default();
    let old = endpoint_of(observed, model, from);
    let new = endpoint_of(observed, model, &to);
    let old_lsn: Option<Lsn> = observed
        .reports
        .get(from)
        .and_then(|r| r.current_lsn.as_deref())
        .and_then(|s| s.parse().ok());
    let version_cell = std::sync::Mutex::new(version.clone());
    let outcome = switchover(client, &poolers, &SwitchoverOptions::default(), || async {
        let (Some(old), Some(new)) = (old.clone(), new.clone()) else {
            return Err("an instance has no pod IP".to_string());
        };
        let current = version_cell.lock().map(|v| v.clone()).unwrap_or_default();
        let mut promoting = record.clone();
        promoting.phase = so::PROMOTING.into();
        promoting.message = format!("{to} is the target primary; stopping {from} cleanly");
        let v = patch_status_if(
            ctx,
            cluster,
            &current,
            json!({"targetPrimary": to, "switchover": promoting}),
            "targetPrimary",
        )
        .await
        .map_err(|e| e.to_string())?;
        set(&version_cell, v);
        let revert = |why: String| async {
            let current = version_cell.lock().map(|v| v.clone()).unwrap_or_default();
            match patch_status_if(
                ctx,
                cluster,
                &current,
                json!({"targetPrimary": from}),
                "targetPrimary",
            )
            .await
            {
                Ok(v) => set(&version_cell, v),
                Err(e) => {
                    warn!(cluster = %model.name, error = %e, "cannot give the primary role back")
                }
            }
            why
        };
        if let Err(e) = client
            .demote(
                &old,
                &DemoteRequest {
                    new_primary: to.clone(),
                },
            )
            .await
        {
            return Err(revert(format!("stopping {from} failed: {e}")).await);
        }
        if let Some(lsn) = old_lsn
            && !wait_for_wal(client, &new, lsn).await
        {
            return Err(revert(format!(
                "{to} did not receive {from}'s last WAL ({lsn}) within {CATCH_UP_WAIT:?}; not promoting it"
            ))
            .await);
        }
        if let Err(e) = client.promote(&new, &PromoteRequest::default()).await {
            return Err(revert(format!("promoting {to} failed: {e}")).await);
        }
        // The Services follow the role labels; move them before clients
        // are let through.
        let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &model.namespace);
        for (name, role) in [
            (to.as_str(), labels::ROLE_PRIMARY),
            (from, labels::ROLE_REPLICA),
        ] {
            if let Err(e) = relabel(&pods, name, role).await {
                warn!(cluster = %model.name, instance = %name, error = %e, "relabel");
            }
        }
        wait_for_rw_endpoint(ctx, model, &new.host).await;
        Ok::<(), String>(())
    })
    .await;
    version = version_cell.lock().map(|v| v.clone()).unwrap_or(version);
    let (phase, message, hold, warning) = match outcome {
        Ok(switched) => (
            so::COMPLETED,
            format!(
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
            ),
            Some(switched.held.as_millis() as u64),
            false,
        ),
        Err(e) => (so::FAILED, e.to_string(), None, true),
    };
    record.phase = phase.into();
    record.message = message.clone();
    record.client_hold_ms = hold;
    record.completed_at = Some(now_rfc3339());
    if warning {
        warn!(cluster = %model.name, operation = "switchover", %message, "switchover failed");
    } else {
        info!(cluster = %model.name, operation = "switchover", %message, "switchover completed");
    }
    event(
        ctx,
        cluster,
        warning,
        if warning {
            "SwitchoverFailed"
        } else {
            "SwitchoverCompleted"
        },
        message,
    )
    .await;
    let mut body = json!({"switchover": record});
    if !warning {
        // Promoted and behind -rw: it is the current primary now.
        body["currentPrimary"] = json!(to);
    }
    match patch_status_if(ctx, cluster, &version, body, "switchover").await {
        Ok(_) => {}
        // Someone wrote in between: keep the record for the next write.
        Err(_) => status.switchover = Some(record),
    }
    Ok(Next::Restart)
}

fn set(cell: &std::sync::Mutex<String>, value: String) {
    if let Ok(mut v) = cell.lock() {
        *v = value;
    }
}

/// Waits (bounded) until `new` has received WAL up to `lsn`, or has
/// already promoted itself (it follows `targetPrimary` on its own once the
/// old primary released the Lease, after its clean shutdown sent every WAL
/// record). False when it never caught up.
async fn wait_for_wal(client: &AgentClient, new: &Endpoint, lsn: Lsn) -> bool {
    let deadline = Instant::now() + CATCH_UP_WAIT;
    while Instant::now() < deadline {
        let caught_up = client.instance_status(new).await.is_ok_and(|r| {
            r.role == Role::Primary
                || r.receive_lsn
                    .or(r.replay_lsn)
                    .and_then(|s| s.parse::<Lsn>().ok())
                    .is_some_and(|have| have >= lsn)
        });
        if caught_up {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// A switchover the operator was carrying out when it stopped: the poolers
/// are resumed (they also resume on their own after their hold limit) and
/// the outcome is read from the instances.
#[allow(clippy::too_many_arguments)]
async fn resume_interrupted(
    ctx: &Context,
    cluster: &PostgresCluster,
    model: &Model,
    observed: &Observed,
    status: &mut PostgresClusterStatus,
    client: Option<&AgentClient>,
    request: String,
    to: String,
) {
    if let Some(client) = client {
        let poolers = agents::poolers(&ctx.client, &model.namespace, &model.name)
            .await
            .unwrap_or_default();
        let _ = resume_all(client, &poolers).await;
    }
    let done = status.target_primary.as_deref() == Some(to.as_str())
        && observed
            .reports
            .get(&to)
            .is_some_and(|r| r.role == Role::Primary);
    let Some(record) = status.switchover.as_mut().filter(|r| r.request == request) else {
        return;
    };
    record.phase = if done { so::COMPLETED } else { so::FAILED }.into();
    record.message = if done {
        format!("{to} is the primary (the operator restarted during the switchover)")
    } else {
        format!(
            "the operator restarted during the switchover; {} is the primary; change the annotation's token to ask again",
            status.target_primary.as_deref().unwrap_or("nobody")
        )
    };
    record.completed_at = Some(now_rfc3339());
    event(
        ctx,
        cluster,
        !done,
        "SwitchoverInterrupted",
        record.message.clone(),
    )
    .await;
}

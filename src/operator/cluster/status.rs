//! Report: the status Capstan writes, with kstatus-compatible conditions
//! (`Ready`, `Reconciling`, `Stalled`, `Degraded`), and the transitions
//! worth an Event. Pure.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use super::observe::Observed;
use super::operation::is_ready;
use super::plan::Plan;
use super::validate::{Blocked, SpecError};
use crate::api::{
    Endpoints, InstanceStatus, OperationStatus, Phase, PostgresClusterStatus, ProxyStatus,
    SecretNames, TlsStatus,
};
use crate::contract::instance::{InstanceReport, Role};
use crate::contract::layout;
use crate::operator::report::reason;
use crate::resources::model::Model;
use crate::resources::secrets::{CertKind, PasswordSecret, tls_sources};
use crate::resources::{labels, names};

pub const READY: &str = "Ready";
pub const RECONCILING: &str = "Reconciling";
pub const STALLED: &str = "Stalled";
pub const DEGRADED: &str = "Degraded";
/// Only with `spec.backup`: the primary's WAL reaches the repositories.
pub const WAL_ARCHIVING: &str = "WalArchiving";
/// Whether the newest verification by restore passed (absent until one
/// finished).
pub const BACKUP_VERIFIED: &str = "BackupVerified";

/// A change people care about, published as an Event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    pub warning: bool,
    pub reason: &'static str,
    pub message: String,
}

/// Sets condition `type_`, keeping `lastTransitionTime` when the status did
/// not change.
fn set(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    generation: i64,
    now: &Time,
) {
    let status = if status { "True" } else { "False" }.to_string();
    let previous = conditions.iter().find(|c| c.type_ == type_);
    let last_transition_time = match previous {
        Some(p) if p.status == status => p.last_transition_time.clone(),
        _ => now.clone(),
    };
    let condition = Condition {
        type_: type_.to_string(),
        status,
        reason: reason.to_string(),
        message: message.to_string(),
        observed_generation: Some(generation),
        last_transition_time,
    };
    conditions.retain(|c| c.type_ != type_);
    conditions.push(condition);
    conditions.sort_by(|a, b| a.type_.cmp(&b.type_));
}

/// The first status of a new cluster: the first primary chosen, and
/// `Reconciling` (not `Ready`) from this first write on, so kstatus (Flux)
/// and Argo CD read the cluster as in progress; a status without
/// conditions reads as current.
pub fn first(
    previous: Option<&PostgresClusterStatus>,
    target_primary: &str,
    postgres_version: i32,
    generation: i64,
    now: &Time,
) -> PostgresClusterStatus {
    let mut status = PostgresClusterStatus {
        target_primary: Some(target_primary.to_string()),
        postgres_version: Some(postgres_version),
        ..previous.cloned().unwrap_or_default()
    };
    let message = format!("creating the cluster; {target_primary} is the first primary");
    set(
        &mut status.conditions,
        RECONCILING,
        true,
        "Creating",
        &message,
        generation,
        now,
    );
    set(
        &mut status.conditions,
        READY,
        false,
        "Creating",
        &message,
        generation,
        now,
    );
    status
}

pub fn condition_is(status: Option<&PostgresClusterStatus>, type_: &str, value: &str) -> bool {
    status
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == type_))
        .is_some_and(|c| c.status == value)
}

/// `WalArchiving` from the primary's report, with an Event when archiving
/// starts failing and when it recovers.
fn archiving_condition(
    r: &Report<'_>,
    conditions: &mut Vec<Condition>,
    transitions: &mut Vec<Transition>,
) {
    let spec = r.model.spec.backup.as_ref();
    if spec.is_none() {
        conditions.retain(|c| c.type_ != WAL_ARCHIVING);
        return;
    }
    let primary = r.observed.reports.get(&r.plan.target_primary);
    let Some(a) = super::backup::archiving(spec, primary) else {
        return;
    };
    let was_failing = condition_is(r.previous, WAL_ARCHIVING, "False");
    if !a.ok && !was_failing {
        transitions.push(Transition {
            warning: true,
            reason: reason::WAL_ARCHIVING_FAILED,
            message: a.message.clone(),
        });
    } else if a.ok && was_failing {
        transitions.push(Transition {
            warning: false,
            reason: reason::WAL_ARCHIVING_RECOVERED,
            message: a.message.clone(),
        });
    }
    set(
        conditions,
        WAL_ARCHIVING,
        a.ok,
        a.reason,
        &a.message,
        r.generation,
        &r.now,
    );
}

fn pooler_counts(deployment: Option<&Deployment>) -> (i32, i32) {
    let status = deployment.and_then(|d| d.status.as_ref());
    (
        status.and_then(|s| s.replicas).unwrap_or(0),
        status.and_then(|s| s.ready_replicas).unwrap_or(0),
    )
}

pub struct Report<'a> {
    pub model: &'a Model,
    pub observed: &'a Observed,
    pub plan: &'a Plan,
    pub previous: Option<&'a PostgresClusterStatus>,
    pub generation: i64,
    pub now: Time,
    pub blocked: Option<&'a Blocked>,
    /// An error applying the plan, for people to read.
    pub apply_error: Option<String>,
}

/// A primary's written WAL, a replica's received WAL.
fn report_lsn(report: &InstanceReport) -> Option<String> {
    match report.role {
        Role::Primary => report.current_lsn.clone(),
        _ => report.receive_lsn.clone().or(report.replay_lsn.clone()),
    }
}

/// What the primary, when it answered, says of this replica: a replica it
/// does not list is not confirming commits now.
fn sync_state(r: &Report<'_>, name: &str) -> Option<String> {
    let primary = r.observed.reports.get(&r.plan.target_primary)?;
    if primary.role != Role::Primary || name == r.plan.target_primary {
        return None;
    }
    Some(
        primary
            .standbys
            .iter()
            .find(|s| s.name == name)
            .map_or_else(|| "disconnected".to_string(), |s| s.sync_state.clone()),
    )
}

/// `status.operation`: the operation under way; it keeps its start time
/// while the same kind of operation goes on.
fn operation_status(r: &Report<'_>) -> Option<OperationStatus> {
    let op = &r.plan.operation;
    if op.is_idle() {
        return None;
    }
    let type_ = op.kind().to_string();
    let started_at = r
        .previous
        .and_then(|s| s.operation.as_ref())
        .filter(|o| o.type_ == type_)
        .map_or_else(|| r.now.0.to_string(), |o| o.started_at.clone());
    Some(OperationStatus {
        type_,
        message: op.describe(),
        started_at,
    })
}

pub fn compute(r: &Report<'_>) -> (PostgresClusterStatus, Vec<Transition>) {
    let model = r.model;
    let cluster = &model.name;
    let mut instances: Vec<InstanceStatus> = r
        .plan
        .instances
        .iter()
        .map(|name| {
            let pod = r.observed.pod(name);
            let role = if *name == r.plan.target_primary {
                labels::ROLE_PRIMARY
            } else {
                labels::ROLE_REPLICA
            };
            let before = r
                .previous
                .and_then(|s| s.instances.iter().find(|i| i.name == *name));
            let report = r.observed.reports.get(name);
            InstanceStatus {
                name: name.clone(),
                role: role.to_string(),
                ready: pod.is_some_and(is_ready),
                pod_phase: pod.and_then(|p| p.status.as_ref()?.phase.clone()),
                pod_ip: pod.and_then(|p| p.status.as_ref()?.pod_ip.clone()),
                timeline: report
                    .and_then(|r| r.timeline)
                    .or(before.and_then(|b| b.timeline)),
                lsn: report
                    .and_then(report_lsn)
                    .or(before.and_then(|b| b.lsn.clone())),
                lag_bytes: report.and_then(|r| r.lag_bytes).map(|b| b as i64),
                sync_state: sync_state(r, name).or(before.and_then(|b| b.sync_state.clone())),
                pending_restart: report.is_some_and(|r| r.pending_restart),
                agent_build: report
                    .and_then(|r| r.agent.as_ref()?.short())
                    .or(before.and_then(|b| b.agent_build.clone())),
                volumes: volumes_of(&r.plan.volumes, name),
            }
        })
        .collect();
    instances.sort_by_key(|i| {
        (
            i.role != labels::ROLE_PRIMARY,
            names::instance_index(cluster, &i.name),
        )
    });
    let ready_instances = instances.iter().filter(|i| i.ready).count() as i32;
    let primary_ready = instances
        .iter()
        .any(|i| i.role == labels::ROLE_PRIMARY && i.ready);
    let current_primary = if primary_ready {
        Some(r.plan.target_primary.clone())
    } else {
        r.previous.and_then(|s| s.current_primary.clone())
    };

    let wanted_poolers = model.spec.proxy.pgbouncer.replicas;
    let (pooler_replicas, pooler_ready) = pooler_counts(r.observed.pooler.as_ref());
    let all_instances_ready =
        ready_instances == model.spec.instances && instances.len() as i32 == model.spec.instances;
    let ready = all_instances_ready && pooler_ready >= wanted_poolers;

    let mut conditions = r.previous.map(|s| s.conditions.clone()).unwrap_or_default();
    let g = r.generation;
    let ready_message = if ready {
        format!("{ready_instances} instance(s) and {pooler_ready} pooler(s) ready")
    } else {
        format!(
            "{ready_instances}/{} instance(s) and {pooler_ready}/{wanted_poolers} pooler(s) ready",
            model.spec.instances
        )
    };
    set(
        &mut conditions,
        READY,
        ready,
        if ready { "Ready" } else { "NotReady" },
        &ready_message,
        g,
        &r.now,
    );
    let idle = r.plan.operation.is_idle();
    let progressing = !idle || !ready;
    let (reason, message) = if idle && !ready {
        (
            "WaitingForPoolers",
            format!("{pooler_ready}/{wanted_poolers} pooler(s) ready"),
        )
    } else {
        (r.plan.operation.reason(), r.plan.operation.describe())
    };
    set(
        &mut conditions,
        RECONCILING,
        progressing,
        reason,
        &message,
        g,
        &r.now,
    );
    match r.blocked {
        Some(b) => set(
            &mut conditions,
            STALLED,
            true,
            b.reason,
            &b.message,
            g,
            &r.now,
        ),
        None => set(
            &mut conditions,
            STALLED,
            false,
            "Reconciled",
            "the spec can be applied",
            g,
            &r.now,
        ),
    }
    let was_ready_once = r
        .previous
        .and_then(|s| s.current_primary.as_ref())
        .is_some();
    let full = r.plan.volumes.full_message();
    let degraded = r.apply_error.is_some() || (was_ready_once && !ready) || full.is_some();
    let (degraded_reason, degraded_message) = match (&r.apply_error, &full) {
        (Some(e), _) => ("ApplyFailed", e.clone()),
        (None, _) if was_ready_once && !ready => ("NotAllReady", ready_message.clone()),
        (None, Some(full)) => (reason::VOLUME_FULL, full.clone()),
        (None, None) => (
            "AllReady",
            "all instances and poolers are ready".to_string(),
        ),
    };
    let was_full = r.previous.is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == DEGRADED && c.reason == reason::VOLUME_FULL)
    });
    set(
        &mut conditions,
        DEGRADED,
        degraded,
        degraded_reason,
        &degraded_message,
        g,
        &r.now,
    );
    if let Some((passed, backup, message)) = super::verify::latest(&r.observed.backups) {
        set(
            &mut conditions,
            BACKUP_VERIFIED,
            passed,
            if passed {
                "VerificationPassed"
            } else {
                reason::BACKUP_VERIFICATION_FAILED
            },
            &format!("backup {backup}: {message}"),
            g,
            &r.now,
        );
    }

    let phase = if r.blocked.is_some() {
        Phase::Stalled
    } else if ready {
        Phase::Ready
    } else if was_ready_once || current_primary.is_some() {
        Phase::Degraded
    } else {
        Phase::Creating
    };

    let mut transitions = vec![];
    let was_ready = condition_is(r.previous, READY, "True");
    if ready && !was_ready {
        transitions.push(Transition {
            warning: false,
            reason: reason::CLUSTER_READY,
            message: ready_message.clone(),
        });
    } else if !ready && was_ready {
        transitions.push(Transition {
            warning: true,
            reason: reason::CLUSTER_NOT_READY,
            message: ready_message.clone(),
        });
    }
    if let Some(b) = r.blocked
        && !condition_is(r.previous, STALLED, "True")
    {
        transitions.push(Transition {
            warning: true,
            reason: b.reason,
            message: b.message.clone(),
        });
    }

    if let Some(full) = &full
        && !was_full
    {
        transitions.push(Transition {
            warning: true,
            reason: reason::VOLUME_FULL,
            message: full.clone(),
        });
    }

    archiving_condition(r, &mut conditions, &mut transitions);

    let (roles, databases, failed) = managed::statuses(
        &model.spec,
        r.observed
            .reports
            .get(&r.plan.target_primary)
            .and_then(|p| p.managed.as_ref()),
        r.previous,
    );
    transitions.extend(failed);

    let tls = tls_sources(model);
    let not_after = |kind: CertKind| {
        r.observed
            .secrets
            .get(&kind.secret_name(cluster))
            .and_then(|f| f.cert.as_ref())
            .map(|c| c.not_after_rfc3339())
    };
    let status = PostgresClusterStatus {
        failover: r.previous.and_then(|s| s.failover.clone()),
        switchover: r.previous.and_then(|s| s.switchover.clone()),
        upgrade: r.previous.and_then(|s| s.upgrade.clone()),
        image_check: r.previous.and_then(|s| s.image_check.clone()),
        roles,
        databases,
        backup: super::backup::status(
            model.spec.backup.as_ref(),
            &r.observed.backups,
            &r.plan.schedules,
            r.observed.reports.get(&r.plan.target_primary),
            r.previous.and_then(|s| s.backup.as_ref()),
        ),
        operation: operation_status(r),
        observed_generation: Some(g),
        phase: Some(phase),
        conditions,
        current_primary,
        target_primary: Some(r.plan.target_primary.clone()),
        postgres_version: Some(model.postgres_version),
        ready_instances,
        selector: Some(crate::api::scale_selector(cluster)),
        instances,
        proxy: Some(ProxyStatus {
            replicas: pooler_replicas,
            ready_replicas: pooler_ready,
            service: names::pooler(cluster),
            agent_builds: r
                .observed
                .pooler_reports
                .values()
                .filter_map(|p| p.agent.as_ref()?.short())
                .collect(),
        }),
        endpoints: Some(Endpoints {
            pooler: model.service_endpoint(&names::pooler(cluster), layout::POOLER_PORT),
            read_write: model.service_endpoint(&names::rw_service(cluster), layout::POSTGRES_PORT),
            read_only: model.service_endpoint(&names::ro_service(cluster), layout::POSTGRES_PORT),
            read: model.service_endpoint(&names::r_service(cluster), layout::POSTGRES_PORT),
        }),
        tls: Some(TlsStatus {
            ca_secret: tls.ca.clone(),
            ca_not_after: r
                .observed
                .secrets
                .get(&tls.ca)
                .and_then(|f| f.ca_cert.as_ref())
                .map(|c| c.not_after_rfc3339()),
            server_not_after: not_after(CertKind::Server),
            pooler_not_after: not_after(CertKind::Pooler),
            authorities: r
                .observed
                .authorities
                .as_ref()
                .map(authorities_status)
                .unwrap_or_default(),
        }),
        secrets: Some(SecretNames {
            superuser: PasswordSecret::Superuser.name(cluster),
            app: PasswordSecret::App.name(cluster),
            replication: tls.replication,
            pooler: PasswordSecret::Pooler.name(cluster),
        }),
    };
    (status, transitions)
}

/// Status for a spec that cannot be applied: everything else is kept as it
/// was, `Stalled` names the field and the fix.
pub fn stalled(
    previous: Option<&PostgresClusterStatus>,
    generation: i64,
    now: Time,
    error: &SpecError,
) -> (PostgresClusterStatus, Vec<Transition>) {
    let mut status = previous.cloned().unwrap_or_default();
    let message = error.to_string();
    set(
        &mut status.conditions,
        STALLED,
        true,
        "InvalidSpec",
        &message,
        generation,
        &now,
    );
    set(
        &mut status.conditions,
        RECONCILING,
        false,
        "InvalidSpec",
        "waiting for the spec to be fixed",
        generation,
        &now,
    );
    if !status.conditions.iter().any(|c| c.type_ == READY) {
        set(
            &mut status.conditions,
            READY,
            false,
            "InvalidSpec",
            &message,
            generation,
            &now,
        );
    }
    status.observed_generation = Some(generation);
    status.phase = Some(Phase::Stalled);
    let already = previous
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == STALLED))
        .is_some_and(|c| c.status == "True" && c.message == message);
    let transitions = if already {
        vec![]
    } else {
        vec![Transition {
            warning: true,
            reason: reason::INVALID_SPEC,
            message,
        }]
    };
    (status, transitions)
}

fn volumes_of(volumes: &super::storage::Decision, instance: &str) -> Vec<crate::api::VolumeStatus> {
    volumes
        .volumes
        .iter()
        .filter(|v| v.instance == instance)
        .map(|v| crate::api::VolumeStatus {
            volume: v.kind.label().to_string(),
            claim: v.claim.clone(),
            requested: v.request.0.clone(),
            capacity: v.capacity.as_ref().map(|q| q.0.clone()),
            size_bytes: v.usage.as_ref().map(|u| u.size_bytes as i64),
            used_bytes: v
                .usage
                .as_ref()
                .map(|u| u.size_bytes.saturating_sub(u.available_bytes) as i64),
            resize: v.resize.map(str::to_string),
        })
        .collect()
}

fn authorities_status(cas: &crate::tls::Authorities) -> Vec<crate::api::CaStatus> {
    let entry = |role: &str, ca: &crate::tls::CaRecord| crate::api::CaStatus {
        role: role.to_string(),
        fingerprint: ca.fingerprint.clone(),
        not_after: jiff::Timestamp::from_second(ca.not_after)
            .map(|t| t.to_string())
            .unwrap_or_default(),
    };
    std::iter::once(entry("Signing", &cas.signing))
        .chain(cas.next.as_ref().map(|c| entry("Next", c)))
        .chain(cas.previous.as_ref().map(|c| entry("Previous", c)))
        .collect()
}

mod managed;
#[cfg(test)]
mod tests;

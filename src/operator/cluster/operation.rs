//! The runbook: which one operation a cluster needs now, and its next step.
//! Pure, so every priority is unit-tested without a cluster (DESIGN §4).
//!
//! Priorities, first match wins:
//! 1. a failover in flight continues; a lost primary is failed over;
//! 2. a switchover the operator was carrying out when it stopped is
//!    resolved;
//! 3. user requests (the `capstan.dev/switchover` annotation), then
//!    backups (`PostgresBackup` objects, one at a time, oldest first);
//! 4. instances: failed pods replaced, the primary created and ready
//!    first, then the replicas;
//! 5. a new PostgreSQL image tried in a throwaway pod (the model keeps the
//!    running image until it passed);
//! 6. a major upgrade, then a rolling update of a changed pod spec:
//!    replicas one at a time (each ready and streaming before the next),
//!    then the primary through a switchover (or a restart, by
//!    `spec.updateStrategy`);
//! 7. scale down;
//! 8. agents brought to the operator's binary in place, one at a time.
//!
//! A backup running on the primary holds back the rolling update's
//! primary step (a restart would fail it); everything else goes on.
//!
//! Progress lives in the API: pods and their spec-hash annotations, and
//! `status.failover` / `status.switchover`, so an operator that restarts
//! at any step chooses the same next step again.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;

use super::failover::{self, Promotion};
use super::observe::Observed;
use super::switchover::{self as so};
use super::upgrade;
use crate::api::{PostgresClusterStatus, PrimaryUpdateMethod};
use crate::contract::instance::{InstanceReport, Role};
use crate::operator::leases::LeaseView;
use crate::postgres::lsn::Lsn;
use crate::postgres::parameters;
use crate::resources::instance::{self, SPEC_HASH_ANNOTATION};
use crate::resources::labels;
use crate::resources::model::Model;

/// `status.failover.phase` values.
pub mod failover_phase {
    pub const PROMOTING: &str = "Promoting";
    pub const COMPLETED: &str = "Completed";
    pub const BLOCKED: &str = "Blocked";
    /// The primary renewed its Lease again before anything was promoted.
    pub const RECOVERED: &str = "Recovered";
}

/// The one operation this reconcile works on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Operation {
    /// Nothing to do; the cluster matches its spec.
    Idle,
    Failover(Failover),
    Switchover(Switchover),
    /// Create instance pods (the primary first, then the replicas).
    CreateInstances(Vec<String>),
    /// Wait for instances to become ready (or terminating pods to go);
    /// failed (evicted) pods in the list are deleted to be re-created.
    AwaitInstances {
        instances: Vec<String>,
        failed: Vec<String>,
    },
    /// Wait for replicas to stream from the primary before the rolling
    /// update goes on.
    AwaitReplication(Vec<String>),
    /// Wait for instances to load the current settings: until they do,
    /// a setting that needs a restart shows only on those that did.
    AwaitSettings(Vec<String>),
    /// Re-create a replica's pod to apply the updated pod spec.
    RecreateReplica(String),
    /// Re-create the primary's pod in place.
    RestartPrimary {
        instance: String,
        why: RestartWhy,
    },
    /// Every replica is updated; the primary waits for a user's switchover
    /// (`updateStrategy.supervised`).
    AwaitSwitchoverRequest {
        primary: String,
    },
    /// Remove instances after `spec.instances` was lowered.
    RemoveInstances(Vec<String>),
    /// The last rolling-update switchover failed: wait before trying
    /// again (the message says why it failed).
    RetryLater(String),
    /// Start, record or hold a `PostgresBackup`.
    Backup(super::backup::Step),
    /// The next step of a major upgrade.
    MajorUpgrade(super::upgrade::Step),
    /// Try a new PostgreSQL image in a throwaway pod first.
    CheckImage(super::image_check::Step),
    /// Send the operator's binary to one agent, which re-executes into it
    /// (PostgreSQL or PgBouncer keep running).
    UpgradeAgent(super::agent_upgrade::Step),
    /// The rolling update's next step (restarting `instance`, or a
    /// switchover) waits for `backup` to end: it runs there, or needs the
    /// primary.
    AwaitBackup {
        backup: String,
        instance: String,
    },
}

/// How long a failed rolling-update switchover waits before the next try.
pub const SWITCHOVER_RETRY_SECS: i64 = 60;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestartWhy {
    /// There is no replica to switch over to.
    SingleInstance,
    /// `updateStrategy.primaryUpdateMethod: Restart`.
    Strategy,
    /// A lowered setting a standby may not run below its primary
    /// (`max_connections`, …): the primary takes it first.
    LowerStandbySettings,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failover {
    /// Move `targetPrimary` to the best replica and promote it.
    Start(Promotion),
    /// The chosen replica has not promoted yet: ask again (idempotent).
    Promote { to: String },
    /// The new primary runs: route clients to it and record the outcome.
    Finish { to: String, from: String },
    /// The primary is lost but no replica may be promoted.
    Blocked { from: String, message: String },
    /// A blocked failover is no longer needed: the primary is back.
    Recovered,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Switchover {
    /// Hold clients, stop the primary cleanly, promote `to`, resume.
    Start {
        /// The annotation value this answers ("" for a rolling update).
        request: String,
        to: String,
        why: SwitchoverWhy,
    },
    /// The operator stopped half-way: rolled back when `targetPrimary`
    /// had not moved yet, carried on to the end when it had.
    Interrupted { from: String, to: String },
    /// A request that cannot be carried out; the message names the fix.
    Refuse { request: String, message: String },
    /// The requested instance already is the primary.
    AlreadyPrimary { request: String, to: String },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SwitchoverWhy {
    Requested,
    RollingUpdate,
}

impl Operation {
    pub fn is_idle(&self) -> bool {
        matches!(self, Operation::Idle)
    }

    /// The operation's name in `status.operation.type`.
    pub fn kind(&self) -> &'static str {
        match self {
            Operation::Idle => "None",
            Operation::Failover(_) => "Failover",
            Operation::Switchover(Switchover::Start {
                why: SwitchoverWhy::RollingUpdate,
                ..
            }) => "RollingUpdate",
            Operation::Switchover(_) => "Switchover",
            Operation::CreateInstances(_) => "CreateInstances",
            Operation::AwaitInstances { .. } => "AwaitInstances",
            Operation::AwaitReplication(_)
            | Operation::AwaitSettings(_)
            | Operation::RecreateReplica(_)
            | Operation::RestartPrimary { .. }
            | Operation::AwaitSwitchoverRequest { .. }
            | Operation::RetryLater(_) => "RollingUpdate",
            Operation::RemoveInstances(_) => "ScaleDown",
            Operation::Backup(_) => "Backup",
            Operation::AwaitBackup { .. } => "RollingUpdate",
            Operation::MajorUpgrade(_) => "MajorUpgrade",
            Operation::UpgradeAgent(_) => "AgentUpgrade",
            Operation::CheckImage(_) => "ImageCheck",
        }
    }

    /// The Reconciling condition's reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Operation::Idle => "Reconciled",
            Operation::CreateInstances(_) => "CreatingInstances",
            Operation::AwaitInstances { .. } => "WaitingForInstances",
            Operation::AwaitSwitchoverRequest { .. } => "WaitingForSwitchover",
            Operation::RemoveInstances(_) => "ScalingDown",
            Operation::Failover(_) => "Failover",
            Operation::Switchover(_) => "Switchover",
            Operation::Backup(_) => "Backup",
            Operation::UpgradeAgent(_) => "UpgradingAgents",
            Operation::CheckImage(_) => "CheckingImage",
            _ => "RollingUpdate",
        }
    }

    /// One line for status and Events.
    pub fn describe(&self) -> String {
        match self {
            Operation::Idle => "cluster matches its spec".into(),
            Operation::MajorUpgrade(step) => step.describe(),
            Operation::CheckImage(step) => step.describe(),
            Operation::UpgradeAgent(step) => format!(
                "Capstan upgrade: {} {} takes the operator's binary in place (it ran {}); {} keeps running",
                if step.pooler { "pooler" } else { "instance" },
                step.pod,
                step.from,
                if step.pooler {
                    "PgBouncer"
                } else {
                    "PostgreSQL"
                }
            ),
            Operation::CreateInstances(v) => format!("creating instance(s) {}", v.join(", ")),
            Operation::AwaitInstances { instances, .. } => format!(
                "waiting for instance(s) {} to become ready",
                instances.join(", ")
            ),
            Operation::AwaitReplication(v) => format!(
                "rolling update: waiting for replica(s) {} to stream from the primary",
                v.join(", ")
            ),
            Operation::AwaitSettings(v) => format!(
                "rolling restart: waiting for instance(s) {} to load the new settings",
                v.join(", ")
            ),
            Operation::RecreateReplica(i) => format!(
                "rolling update: re-creating replica {i} with the updated pod spec (or for a setting that waits for a restart)"
            ),
            Operation::RestartPrimary {
                instance,
                why: RestartWhy::SingleInstance,
            } => format!(
                "rolling update: restarting primary {instance} in place (a single instance has no replica to switch over to; writes stop until it is back)"
            ),
            Operation::RestartPrimary {
                instance,
                why: RestartWhy::Strategy,
            } => format!(
                "rolling update: restarting primary {instance} in place (updateStrategy.primaryUpdateMethod: Restart)"
            ),
            Operation::RestartPrimary {
                instance,
                why: RestartWhy::LowerStandbySettings,
            } => format!(
                "rolling restart: restarting primary {instance} first, in place: spec.postgres.parameters lowers a setting a standby may not run below its primary (max_connections, max_worker_processes, max_wal_senders, max_prepared_transactions, max_locks_per_transaction); writes stop until it is back, then the replicas restart"
            ),
            Operation::AwaitSwitchoverRequest { primary } => format!(
                "rolling update: every replica is updated; primary {primary} waits for a switchover request (updateStrategy.supervised): annotate capstan.dev/switchover=<replica> or run `kubectl capstan switchover`"
            ),
            Operation::RemoveInstances(v) => format!("removing instance(s) {}", v.join(", ")),
            Operation::RetryLater(why) => format!(
                "rolling update: the switchover failed ({why}); trying again within {SWITCHOVER_RETRY_SECS}s"
            ),
            Operation::Failover(Failover::Start(p)) => {
                format!("failover: promoting {} ({} was lost)", p.to, p.from)
            }
            Operation::Failover(Failover::Promote { to }) => {
                format!("failover: waiting for {to} to promote")
            }
            Operation::Failover(Failover::Finish { to, .. }) => {
                format!("failover: routing clients to {to}")
            }
            Operation::Failover(Failover::Blocked { message, .. }) => message.clone(),
            Operation::Failover(Failover::Recovered) => {
                "the primary renewed its Lease again; no failover needed".into()
            }
            Operation::Switchover(Switchover::Start {
                to,
                why: SwitchoverWhy::RollingUpdate,
                ..
            }) => format!("rolling update: switching over to the updated replica {to}"),
            Operation::Switchover(Switchover::Start { to, .. }) => {
                format!("switching over to {to}")
            }
            Operation::Switchover(Switchover::Interrupted { to, .. }) => {
                format!("finishing a switchover to {to} interrupted by an operator restart")
            }
            Operation::Switchover(Switchover::Refuse { message, .. }) => message.clone(),
            Operation::Switchover(Switchover::AlreadyPrimary { to, .. }) => {
                format!("{to} already is the primary")
            }
            Operation::Backup(step) => {
                use super::backup::Step;
                match step {
                    Step::Start {
                        backup, instance, ..
                    } => format!("backup {backup}: starting on {instance}"),
                    Step::Finish { backup, .. } => format!("backup {backup}: recording its result"),
                    Step::Reject { backup, message } | Step::Wait { backup, message } => {
                        format!("backup {backup}: {message}")
                    }
                }
            }
            Operation::AwaitBackup { backup, instance } => format!(
                "rolling update: {instance} waits for backup {backup} to finish before it is restarted"
            ),
        }
    }
}

/// Everything the choice looks at.
pub struct Input<'a> {
    pub model: &'a Model,
    pub observed: &'a Observed,
    pub status: Option<&'a PostgresClusterStatus>,
    pub target_primary: &'a str,
    /// The instances the cluster keeps.
    pub instances: &'a [String],
    /// Instances being removed (scale down).
    pub removed: &'a [String],
    /// The `capstan.dev/switchover` annotation.
    pub switchover_request: Option<&'a str>,
    /// The primary Lease as the operator sees it.
    pub lease: Option<&'a LeaseView>,
}

pub fn choose(input: &Input<'_>) -> Operation {
    if let Some(step) = upgrade::in_flight(input) {
        return Operation::MajorUpgrade(step);
    }
    if let Some(op) = failover_step(input) {
        return Operation::Failover(op);
    }
    if let Some(op) = switchover_step(input) {
        return Operation::Switchover(op);
    }
    let backups = super::backup::decide(&super::backup::Input {
        spec: input.model.spec.backup.as_ref(),
        backups: &input.observed.backups,
        target_primary: input.target_primary,
        primary_pod: input.observed.pod(input.target_primary),
        ready_replicas: &input
            .instances
            .iter()
            .filter(|n| *n != input.target_primary && !input.removed.contains(n))
            .filter(|n| input.observed.pod(n).is_some_and(is_ready))
            .cloned()
            .collect::<Vec<_>>(),
        reports: &input.observed.reports,
    });
    // Starting, recording or refusing a backup is one quick step; a backup
    // that waits (for a ready primary, for its stanza) must not hold up
    // the instances, so it only reports when nothing else is to be done.
    let waiting = match backups.step {
        Some(step @ super::backup::Step::Wait { .. }) => Some(step),
        Some(step) => return Operation::Backup(step),
        None => None,
    };
    if let Some(op) = instances_step(input) {
        return op;
    }
    // Before a new image reaches any instance (the model keeps the old one
    // until it passed).
    if let Some(candidate) = &input.model.image_check {
        return Operation::CheckImage(super::image_check::decide(
            candidate,
            &input.observed.check_pods,
            input.observed.now,
        ));
    }
    if let Some(step) = upgrade::when_settled(input) {
        // The primary stops for the upgrade: a running backup ends first.
        return match (step, backups.running) {
            (upgrade::Step::Start { .. }, Some(running)) => Operation::AwaitBackup {
                backup: running.backup,
                instance: input.target_primary.to_string(),
            },
            (step, _) => Operation::MajorUpgrade(step),
        };
    }
    if let Some(op) = rolling_step(input) {
        // A backup needs the primary (even one taken on a standby) and the
        // instance it runs on.
        return match (op, backups.running) {
            (Operation::Switchover(_) | Operation::RestartPrimary { .. }, Some(running)) => {
                Operation::AwaitBackup {
                    backup: running.backup,
                    instance: input.target_primary.to_string(),
                }
            }
            (Operation::RecreateReplica(replica), Some(running)) if replica == running.instance => {
                Operation::AwaitBackup {
                    backup: running.backup,
                    instance: replica,
                }
            }
            (op, _) => op,
        };
    }
    if !input.removed.is_empty() {
        return Operation::RemoveInstances(input.removed.to_vec());
    }
    // Last: a settled cluster, nothing else under way.
    if backups.running.is_none()
        && let Some(step) = super::agent_upgrade::next(
            input.observed.operator_build.as_ref(),
            input.target_primary,
            &input.observed.reports,
            &input.observed.pooler_reports,
        )
    {
        return Operation::UpgradeAgent(step);
    }
    waiting.map_or(Operation::Idle, Operation::Backup)
}

fn failover_step(input: &Input<'_>) -> Option<Failover> {
    use failover_phase::*;
    let record = input.status.and_then(|s| s.failover.as_ref());
    let reports = &input.observed.reports;
    if let Some(f) = record.filter(|f| f.phase == PROMOTING) {
        match reports.get(&f.to) {
            Some(r) if r.role == Role::Primary && r.running => {
                return Some(Failover::Finish {
                    to: f.to.clone(),
                    from: f.from.clone(),
                });
            }
            Some(_) => return Some(Failover::Promote { to: f.to.clone() }),
            // The chosen replica stopped answering: decide again, with it
            // as the primary that was lost.
            None => {}
        }
    }
    let recorded = input.status.map(|s| s.instances.as_slice()).unwrap_or(&[]);
    let decision = failover::decide(&failover::Input {
        target_primary: input.target_primary,
        instances: input.instances,
        lease: input.lease,
        reports,
        recorded,
        failover: &input.model.spec.failover,
        synchronous: &input.model.spec.replication.synchronous,
    });
    match decision {
        failover::Decision::Promote(p) => Some(Failover::Start(p)),
        failover::Decision::Blocked { from, message } => Some(Failover::Blocked { from, message }),
        failover::Decision::Healthy => record
            .is_some_and(|f| f.phase == BLOCKED)
            .then_some(Failover::Recovered),
    }
}

fn switchover_step(input: &Input<'_>) -> Option<Switchover> {
    let recorded = input.status.and_then(|s| s.switchover.as_ref());
    if let Some(r) = recorded.filter(|r| !so::is_terminal(&r.phase)) {
        return Some(Switchover::Interrupted {
            from: r.from.clone(),
            to: r.to.clone(),
        });
    }
    match so::decide(&so::Input {
        annotation: input.switchover_request,
        recorded,
        target_primary: input.target_primary,
        instances: input.instances,
        reports: &input.observed.reports,
    }) {
        so::Decision::Nothing => None,
        so::Decision::Start { request, to } => Some(Switchover::Start {
            request,
            to,
            why: SwitchoverWhy::Requested,
        }),
        so::Decision::Refuse { request, message } => Some(Switchover::Refuse { request, message }),
        so::Decision::AlreadyPrimary { request, to } => {
            Some(Switchover::AlreadyPrimary { request, to })
        }
    }
}

pub fn is_terminating(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

fn is_failed(pod: &Pod) -> bool {
    pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Failed")
}

pub fn is_ready(pod: &Pod) -> bool {
    !is_terminating(pod)
        && pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

pub fn spec_hash(pod: &Pod) -> Option<&str> {
    pod.metadata
        .annotations
        .as_ref()?
        .get(SPEC_HASH_ANNOTATION)
        .map(String::as_str)
}

/// A user asked for this pod to be restarted (`kubectl capstan restart`).
fn restart_requested(pod: &Pod) -> bool {
    pod.metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(labels::RESTART_ANNOTATION))
}

/// The pod spec hash instances should run.
pub fn desired_hash(model: &Model, name: &str) -> String {
    let pod = instance::pod(model, name, labels::ROLE_REPLICA);
    spec_hash(&pod).unwrap_or_default().to_string()
}

/// Failed pods replaced, terminating ones waited for, the primary created
/// and ready before any replica (which clones it), then the replicas.
fn instances_step(input: &Input<'_>) -> Option<Operation> {
    let observed = input.observed;
    let keep = input.instances;
    let primary = input.target_primary;
    let matching = |f: &dyn Fn(&Pod) -> bool| -> Vec<String> {
        keep.iter()
            .filter(|n| observed.pod(n).is_some_and(f))
            .cloned()
            .collect()
    };
    // An evicted or failed pod never comes back by itself: it is deleted
    // and re-created on its volume.
    let failed = matching(&|p| is_failed(p) && !is_terminating(p));
    if !failed.is_empty() {
        return Some(Operation::AwaitInstances {
            instances: failed.clone(),
            failed,
        });
    }
    let terminating = matching(&is_terminating);
    if !terminating.is_empty() {
        return Some(Operation::AwaitInstances {
            instances: terminating,
            failed: vec![],
        });
    }
    let Some(primary_pod) = observed.pod(primary) else {
        return Some(Operation::CreateInstances(vec![primary.to_string()]));
    };
    if !is_ready(primary_pod) {
        return Some(Operation::AwaitInstances {
            instances: vec![primary.to_string()],
            failed: vec![],
        });
    }
    let missing: Vec<String> = keep
        .iter()
        .filter(|n| observed.pod(n).is_none())
        .cloned()
        .collect();
    if !missing.is_empty() {
        return Some(Operation::CreateInstances(missing));
    }
    let not_ready = matching(&|p| !is_ready(p));
    if !not_ready.is_empty() {
        return Some(Operation::AwaitInstances {
            instances: not_ready,
            failed: vec![],
        });
    }
    None
}

fn streaming(report: Option<&InstanceReport>) -> bool {
    report.is_some_and(|r| {
        r.role == Role::Replica && r.running && r.wal_receiver.as_deref() == Some("streaming")
    })
}

fn received(report: Option<&InstanceReport>) -> Option<Lsn> {
    report?.wal_held()
}

/// Every instance is up and ready: a changed pod spec is rolled out one
/// pod at a time, the primary last.
fn rolling_step(input: &Input<'_>) -> Option<Operation> {
    let model = input.model;
    let observed = input.observed;
    let primary = input.target_primary;
    // The pod spec names its instance, so each has its own hash. A setting
    // that waits for a restart is rolled out the same way: the pod is
    // re-created, or the primary switched over (demotion restarts it).
    // Parameters one instance could not start with (it went back to the
    // ones it ran with) are not restarted into the others.
    let refused = observed
        .reports
        .values()
        .any(|r| r.parameters_refused.is_some());
    // A volume whose file system grows only when a new pod mounts it.
    let resizing = super::storage::waiting_for_pod(observed);
    let outdated = |name: &str| {
        observed.pod(name).and_then(spec_hash) != Some(desired_hash(model, name).as_str())
            || observed.pod(name).is_some_and(restart_requested)
            || resizing.contains(name)
            || !refused
                && observed
                    .reports
                    .get(name)
                    .is_some_and(|r| r.pending_restart)
    };
    let replicas: Vec<&String> = input.instances.iter().filter(|n| *n != primary).collect();
    let lowered = !refused
        && observed.reports.get(primary).is_some_and(|r| {
            !parameters::lowered_standby_settings(
                &model.spec.postgres.parameters,
                input.instances.len(),
                &r.standby_floor_settings,
            )
            .is_empty()
        });
    let primary_outdated = lowered || outdated(primary);
    let outdated_replicas: Vec<&String> =
        replicas.iter().copied().filter(|n| outdated(n)).collect();
    if !primary_outdated && outdated_replicas.is_empty() {
        return None;
    }
    // A setting that needs a restart shows first on whoever loaded the new
    // settings first. Were that the primary alone, it would be switched
    // over before any replica took the value; so the replicas that still
    // run older settings are waited for. (Agents too old to say are not.)
    if outdated_replicas.is_empty() {
        let current = crate::resources::config::instance_settings(model, input.instances).digest();
        let behind: Vec<String> = replicas
            .iter()
            .filter(|n| {
                observed
                    .reports
                    .get(n.as_str())
                    .and_then(|r| r.settings_digest.as_deref())
                    .is_some_and(|d| d != current)
            })
            .map(|n| n.to_string())
            .collect();
        if !behind.is_empty() {
            return Some(Operation::AwaitSettings(behind));
        }
    }
    // Each updated replica streams before the next is taken down (and
    // before one becomes the primary), so the cluster never has fewer
    // than all-but-one copies of every commit.
    let lagging: Vec<String> = replicas
        .iter()
        .filter(|n| !outdated(n) && !streaming(observed.reports.get(n.as_str())))
        .map(|n| n.to_string())
        .collect();
    if !lagging.is_empty() {
        return Some(Operation::AwaitReplication(lagging));
    }
    // Whether or not the new files reached any pod yet: a replica
    // restarted with them first would run below its primary.
    if lowered {
        return Some(Operation::RestartPrimary {
            instance: primary.to_string(),
            why: RestartWhy::LowerStandbySettings,
        });
    }
    if let Some(next) = outdated_replicas.first() {
        return Some(Operation::RecreateReplica(next.to_string()));
    }
    let strategy = &model.spec.update_strategy;
    if replicas.is_empty() {
        return Some(Operation::RestartPrimary {
            instance: primary.to_string(),
            why: RestartWhy::SingleInstance,
        });
    }
    if strategy.primary_update_method == PrimaryUpdateMethod::Restart {
        return Some(Operation::RestartPrimary {
            instance: primary.to_string(),
            why: RestartWhy::Strategy,
        });
    }
    if strategy.supervised {
        return Some(Operation::AwaitSwitchoverRequest {
            primary: primary.to_string(),
        });
    }
    let last = input.status.and_then(|s| s.switchover.as_ref());
    if let Some(failed) = last.filter(|s| s.phase == so::FAILED)
        && let Some(at) = failed
            .completed_at
            .as_deref()
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
        && observed.now - at.as_second() < SWITCHOVER_RETRY_SECS
    {
        return Some(Operation::RetryLater(failed.message.clone()));
    }
    // The updated replica with the most WAL; the lowest index on a tie.
    let to = replicas
        .iter()
        .max_by_key(|n| {
            (
                received(observed.reports.get(n.as_str())),
                std::cmp::Reverse(n.to_string()),
            )
        })
        .map(|n| n.to_string())?;
    Some(Operation::Switchover(Switchover::Start {
        // Keep the last handled annotation value: this is not an answer to
        // a new request.
        request: last.map(|s| s.request.clone()).unwrap_or_default(),
        to,
        why: SwitchoverWhy::RollingUpdate,
    }))
}

/// The pods an operation creates.
pub fn pods_to_create(model: &Model, op: &Operation, target_primary: &str) -> Vec<Pod> {
    if let (Operation::MajorUpgrade(upgrade::Step::CreatePrimary(name)), Some(u)) =
        (op, &model.upgrade)
    {
        return vec![crate::resources::upgrade::pod(model, u, name)];
    }
    if let Operation::CheckImage(super::image_check::Step::Start(candidate)) = op {
        return vec![crate::resources::image_check::pod(model, candidate)];
    }
    let Operation::CreateInstances(names) = op else {
        return vec![];
    };
    names
        .iter()
        .map(|n| {
            let role = if n == target_primary {
                labels::ROLE_PRIMARY
            } else {
                labels::ROLE_REPLICA
            };
            instance::pod(model, n, role)
        })
        .collect()
}

/// The pods an operation deletes.
pub fn pods_to_delete(op: &Operation) -> Vec<String> {
    match op {
        Operation::MajorUpgrade(step) => upgrade::pods_to_delete(step),
        Operation::AwaitInstances { failed, .. } => failed.clone(),
        Operation::RecreateReplica(name) => vec![name.clone()],
        Operation::RestartPrimary { instance, .. } => vec![instance.clone()],
        _ => vec![],
    }
}

/// Reports by instance, for tests and callers building inputs.
pub type Reports = BTreeMap<String, InstanceReport>;

#[cfg(test)]
mod tests;

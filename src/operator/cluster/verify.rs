//! Verification by restore: which backup's throwaway pod to create, follow
//! or clean up. Pure; the executor creates and deletes the pod and writes
//! the `PostgresBackup` status.
//!
//! A backup pgBackRest finished becomes `Verifying` when it is to be
//! verified (`spec.verify`, else full backups when
//! `spec.backup.verify.enabled`). Verifications run one at a time per
//! cluster, oldest first, beside everything else: they touch no instance,
//! so they never hold up a backup, a failover or WAL archiving.
//!
//! Progress lives in the API: the pod (`<backup>-verify`, found by the
//! backup annotation) and `status.verification`, so a restarted operator
//! follows the pod that exists instead of creating a second one. The pod's
//! result is its termination message ([`VerifyResult`]); the result is
//! recorded before the pod is deleted, and a pod left behind by a
//! restart in between is deleted as an orphan.

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

use super::backup::{phase as backup_phase, phase_of};
use crate::api::pgbackup::PostgresBackup;
use crate::contract::verify::VerifyResult;
use crate::resources::model::Model;
use crate::resources::{labels, names, verify};

/// `status.verification.phase` values.
pub mod phase {
    pub const PENDING: &str = "Pending";
    pub const RUNNING: &str = "Running";
    pub const PASSED: &str = "Passed";
    pub const FAILED: &str = "Failed";
    pub const SKIPPED: &str = "Skipped";
}

/// A pod whose container has not started after this fails the
/// verification (an image without pgBackRest, an unschedulable pod).
pub const START_TIMEOUT_SECS: i64 = 300;
/// A recorded pod missing from the cache for longer than this is gone (the
/// watch may deliver a pod created a moment ago a little later).
pub const VANISHED_GRACE_SECS: i64 = 30;

#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// Create the pod, then record the verification `Running`.
    Start { backup: String, pod: Box<Pod> },
    /// The pod exists but the record does not name it (the operator
    /// stopped in between): record it.
    Adopt { backup: String, pod: String },
    /// Record the outcome, then delete the pod (when there is one).
    Finish {
        backup: String,
        pod: Option<String>,
        outcome: Outcome,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// What the pod reported, passed or failed.
    Reported(VerifyResult),
    /// No result from the pod; the message says what happened instead.
    Failed(String),
    /// Never verified: retention expired the backup while it waited for
    /// its turn (no restore to try, and no reason for alarm).
    Expired(String),
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Decision {
    pub step: Option<Step>,
    /// Verification pods no verification needs any more.
    pub orphans: Vec<String>,
    /// A verification is under way (follow it closely).
    pub active: bool,
}

pub struct Input<'a> {
    pub model: &'a Model,
    /// This cluster's `PostgresBackup` objects, oldest first.
    pub backups: &'a [PostgresBackup],
    /// This cluster's verification pods.
    pub pods: &'a [Pod],
    /// What the repositories hold, as the primary last read it.
    pub inventory: &'a [crate::contract::backup::RepositoryInventory],
    /// Unix seconds.
    pub now: i64,
}

fn backup_of(pod: &Pod) -> Option<&str> {
    pod.metadata
        .annotations
        .as_ref()?
        .get(labels::BACKUP_ANNOTATION)
        .map(String::as_str)
}

fn verification_phase(b: &PostgresBackup) -> Option<&str> {
    b.status
        .as_ref()?
        .verification
        .as_ref()
        .map(|v| v.phase.as_str())
}

fn seconds(t: Option<&str>) -> Option<i64> {
    t?.parse::<jiff::Timestamp>().ok().map(|t| t.as_second())
}

/// Where a verification pod is.
#[derive(Clone, Debug, PartialEq)]
pub enum PodState {
    /// Not running yet; why, in the kubelet's or scheduler's words.
    NotStarted(String),
    Running,
    /// Ended: the container's termination message, else why the pod ended.
    Ended {
        exit_code: Option<i32>,
        message: String,
    },
}

pub fn pod_state(pod: &Pod) -> PodState {
    let status = pod.status.clone().unwrap_or_default();
    let container = status
        .container_statuses
        .iter()
        .flatten()
        .find(|c| c.name == "verify");
    let state = container.and_then(|c| c.state.clone()).unwrap_or_default();
    if let Some(t) = &state.terminated {
        return PodState::Ended {
            exit_code: Some(t.exit_code),
            message: t.message.clone().or(t.reason.clone()).unwrap_or_default(),
        };
    }
    if matches!(status.phase.as_deref(), Some("Failed" | "Succeeded")) {
        let words = [status.reason.as_deref(), status.message.as_deref()]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(": ");
        return PodState::Ended {
            exit_code: None,
            message: if words.is_empty() {
                "the pod ended without a result".into()
            } else {
                words
            },
        };
    }
    if state.running.is_some() {
        return PodState::Running;
    }
    let waiting = |w: &k8s_openapi::api::core::v1::ContainerStateWaiting| {
        let reason = w.reason.clone().unwrap_or_default();
        match &w.message {
            Some(m) => format!("{reason}: {m}"),
            None => reason,
        }
    };
    // The init container (copying capstan), then the main one, then the
    // scheduler: the first that says why it waits.
    let init = status
        .init_container_statuses
        .iter()
        .flatten()
        .filter_map(|c| c.state.as_ref()?.waiting.as_ref())
        .map(waiting)
        .find(|w| !w.is_empty() && w != "PodInitializing");
    let main = state
        .waiting
        .as_ref()
        .map(waiting)
        .filter(|w| !w.is_empty() && w != "PodInitializing" && w != "ContainerCreating");
    let unscheduled = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "PodScheduled" && c.status == "False")
        .map(|c| {
            format!(
                "not scheduled: {}",
                c.message.clone().or(c.reason.clone()).unwrap_or_default()
            )
        });
    PodState::NotStarted(
        init.or(main)
            .or(unscheduled)
            .unwrap_or_else(|| "the pod is starting".into()),
    )
}

/// The repository number (`repoN`) a backup was written to.
fn repository_number(model: &Model, b: &PostgresBackup) -> u32 {
    let name = b.status.as_ref().and_then(|s| s.repository.as_deref());
    let by_position = model.spec.backup.as_ref().and_then(|spec| {
        spec.repositories
            .iter()
            .position(|r| Some(r.name.as_str()) == name)
    });
    by_position
        .and_then(|p| u32::try_from(p + 1).ok())
        .or_else(|| name?.strip_prefix("repo")?.parse().ok())
        .unwrap_or(1)
}

pub fn decide(input: &Input<'_>) -> Decision {
    let verifying: Vec<&PostgresBackup> = input
        .backups
        .iter()
        .filter(|b| phase_of(b) == backup_phase::VERIFYING)
        .collect();
    let wanted = |pod: &Pod| {
        backup_of(pod).is_some_and(|name| verifying.iter().any(|b| b.name_any() == name))
    };
    let orphans: Vec<String> = input
        .pods
        .iter()
        .filter(|p| !wanted(p) && p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    let pod_of = |b: &PostgresBackup| {
        let name = b.name_any();
        input
            .pods
            .iter()
            .find(|p| backup_of(p) == Some(name.as_str()))
    };
    // One at a time: the one with a pod, else one recorded as running,
    // else the oldest waiting.
    let active = verifying
        .iter()
        .find(|b| pod_of(b).is_some())
        .or_else(|| {
            verifying
                .iter()
                .find(|b| verification_phase(b) == Some(phase::RUNNING))
        })
        .or_else(|| verifying.first());
    let Some(b) = active else {
        return Decision {
            orphans,
            ..Decision::default()
        };
    };
    let name = b.name_any();
    let status = b.status.clone().unwrap_or_default();
    let recorded = status.verification.clone().unwrap_or_default();
    let step = match pod_of(b) {
        Some(pod) => {
            let pod_name = pod.name_any();
            match pod_state(pod) {
                PodState::Ended { exit_code, message } => Some(Step::Finish {
                    backup: name,
                    pod: Some(pod_name.clone()),
                    outcome: match VerifyResult::from_message(&message) {
                        Some(r) => Outcome::Reported(r),
                        None => Outcome::Failed(format!(
                            "verification pod {pod_name} ended{} without a result: {}",
                            exit_code
                                .map(|c| format!(" (exit code {c})"))
                                .unwrap_or_default(),
                            last_lines(&message)
                        )),
                    },
                }),
                _ if pod.metadata.deletion_timestamp.is_some() => None,
                PodState::NotStarted(why) => {
                    let created = pod
                        .metadata
                        .creation_timestamp
                        .as_ref()
                        .map(|t| t.0.as_second());
                    if created.is_some_and(|c| input.now - c > START_TIMEOUT_SECS) {
                        Some(Step::Finish {
                            backup: name,
                            pod: Some(pod_name.clone()),
                            outcome: Outcome::Failed(format!(
                                "verification pod {pod_name} did not start within {START_TIMEOUT_SECS}s: {why}; the instances' image must carry PostgreSQL and pgBackRest, and the pod must fit a node"
                            )),
                        })
                    } else if recorded.pod.as_deref() != Some(pod_name.as_str()) {
                        Some(Step::Adopt {
                            backup: name,
                            pod: pod_name,
                        })
                    } else {
                        None
                    }
                }
                PodState::Running => (recorded.pod.as_deref() != Some(pod_name.as_str()))
                    .then_some(Step::Adopt {
                        backup: name,
                        pod: pod_name,
                    }),
            }
        }
        None if recorded.phase == phase::RUNNING => {
            let since = seconds(recorded.started_at.as_deref()).unwrap_or(input.now);
            (input.now - since > VANISHED_GRACE_SECS).then(|| Step::Finish {
                backup: name.clone(),
                pod: None,
                outcome: Outcome::Failed(format!(
                    "verification pod {} disappeared before it reported a result (deleted or evicted); create a PostgresBackup with spec.verify: true to verify again",
                    recorded.pod.unwrap_or_else(|| names::verify_pod(&name))
                )),
            })
        }
        None => match (&status.label, b.uid()) {
            _ if let Some((label, repository)) = super::retention::expired(b, input.inventory) => {
                Some(Step::Finish {
                    backup: name,
                    pod: None,
                    outcome: Outcome::Expired(format!(
                        "not verified: retention expired {label} from {repository} before its verification's turn came"
                    )),
                })
            }
            (Some(label), Some(uid)) => Some(Step::Start {
                pod: Box::new(verify::pod(
                    input.model,
                    &verify::Request {
                        backup: name.clone(),
                        backup_uid: uid,
                        label: label.clone(),
                        repository: repository_number(input.model, b),
                        size: status.size,
                    },
                )),
                backup: name,
            }),
            _ => Some(Step::Finish {
                backup: name,
                pod: None,
                outcome: Outcome::Failed("the backup has no pgBackRest label to restore".into()),
            }),
        },
    };
    Decision {
        step,
        orphans,
        active: true,
    }
}

/// The end of a log used as a termination message: the last lines say most.
fn last_lines(text: &str) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let mut out = lines[lines.len().saturating_sub(3)..].join(" | ");
    crate::contract::verify::shorten(&mut out, 1000);
    out
}

/// The newest finished verification: (passed, backup, message), for the
/// cluster's `BackupVerified` condition.
pub fn latest(backups: &[PostgresBackup]) -> Option<(bool, String, String)> {
    backups
        .iter()
        .filter_map(|b| {
            let v = b.status.as_ref()?.verification.as_ref()?;
            let passed = match v.phase.as_str() {
                phase::PASSED => true,
                phase::FAILED => false,
                _ => return None,
            };
            let at = seconds(v.finished_at.as_deref())?;
            Some((
                at,
                passed,
                b.name_any(),
                v.message.clone().unwrap_or_default(),
            ))
        })
        .max_by(|a, b| (a.0, &a.2).cmp(&(b.0, &b.2)))
        .map(|(_, passed, name, message)| (passed, name, message))
}

/// The `status.verification` summary of a result, in words.
pub fn describe(r: &VerifyResult) -> String {
    if !r.passed {
        return r
            .error
            .clone()
            .unwrap_or_else(|| "failed without a message".into());
    }
    let part = |what: &str, s: Option<f64>| s.map(|s| format!("{what} {s:.1}s"));
    let parts: Vec<String> = [
        part("restore", r.restore_seconds),
        part("recovery", r.recovery_seconds),
        part("checks", r.checks_seconds),
    ]
    .into_iter()
    .flatten()
    .collect();
    let amcheck = match r.amcheck.as_deref() {
        Some("Passed") => "pg_amcheck found no corruption",
        _ => "pg_amcheck not available in the image",
    };
    let sentinel = match r.sentinel_found {
        Some(true) => "; the sentinel row written before the backup is there",
        _ => "",
    };
    format!(
        "restored {} and checked it in {:.1}s ({}): consistent, catalogs of {} database(s) readable, {amcheck}{sentinel}",
        r.label,
        r.total_seconds,
        parts.join(", "),
        r.databases
    )
}

#[cfg(test)]
mod tests;

//! Which backup to start or record next: one at a time per cluster, the
//! oldest `PostgresBackup` first. Pure; the executor calls the agent and
//! writes the objects' status.

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

use crate::api::backup::{BackupSpec, BackupTarget, BackupType as ApiType};
use crate::api::pgbackup::PostgresBackup;
use crate::api::status::{ArchiveFailure, ArchivedWal, BackupReference, BackupStatus};
use crate::contract::backup::{BackupJob, BackupRequest, BackupType, JobPhase};
use crate::contract::instance::{InstanceReport, Role};

/// `status.phase` of a `PostgresBackup`.
pub mod phase {
    pub const PENDING: &str = "Pending";
    pub const RUNNING: &str = "Running";
    /// Taken; a throwaway pod restores it (see `verify`).
    pub const VERIFYING: &str = "Verifying";
    pub const COMPLETED: &str = "Completed";
    pub const FAILED: &str = "Failed";
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Ask `instance` to take the backup; with `sentinel_on` (a backup on
    /// a standby), first have that primary write the sentinel row a
    /// verification looks for.
    Start {
        backup: String,
        instance: String,
        request: BackupRequest,
        sentinel_on: Option<String>,
    },
    /// The instance finished it: record the outcome; `verify`: whether a
    /// completed backup is verified by restore, else why not.
    Finish {
        backup: String,
        job: Box<BackupJob>,
        verify: Result<(), String>,
        /// The primary, when a standby took the backup: it re-reads what
        /// the repositories hold (it reports that; retention follows it).
        tell_primary: Option<String>,
    },
    /// It cannot be taken at all (the message names the fix).
    Reject { backup: String, message: String },
    /// It waits; the message says for what.
    Wait { backup: String, message: String },
}

impl Step {
    pub fn backup(&self) -> &str {
        match self {
            Step::Start { backup, .. }
            | Step::Finish { backup, .. }
            | Step::Reject { backup, .. }
            | Step::Wait { backup, .. } => backup,
        }
    }
}

pub struct Input<'a> {
    pub spec: Option<&'a BackupSpec>,
    /// This cluster's `PostgresBackup` objects, oldest first.
    pub backups: &'a [PostgresBackup],
    pub target_primary: &'a str,
    pub primary_pod: Option<&'a Pod>,
    /// Replicas whose pods are ready and not being removed (where a backup
    /// with `target: preferReplica` may run).
    pub ready_replicas: &'a [String],
    pub reports: &'a std::collections::BTreeMap<String, InstanceReport>,
}

/// A backup being taken, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Running {
    pub backup: String,
    pub instance: String,
}

/// What the backups need now: the step to take (if any), and the backup
/// running on an instance (neither it nor the primary may be restarted
/// under it).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Decision {
    pub step: Option<Step>,
    pub running: Option<Running>,
}

pub(super) fn phase_of(b: &PostgresBackup) -> &str {
    b.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or(phase::PENDING)
}

/// Not finished yet: waiting for its turn, running or being verified.
pub fn in_flight(b: &PostgresBackup) -> bool {
    !matches!(phase_of(b), phase::COMPLETED | phase::FAILED)
}

/// Not taken yet: waiting for its turn or running. A backup being
/// verified is taken; the next one need not wait for its verification.
pub fn not_taken(b: &PostgresBackup) -> bool {
    matches!(phase_of(b), phase::PENDING | phase::RUNNING)
}

/// Whether backup `b`, taken as `label`, is verified by restore: its own
/// `spec.verify`, else full backups when `spec.backup.verify.enabled`.
pub fn verification_wanted(
    spec: Option<&BackupSpec>,
    b: &PostgresBackup,
    label: &str,
) -> Result<(), String> {
    // pgBackRest labels end in F, D or I by the type it took.
    let full = label.ends_with('F');
    match (b.spec.verify, spec.is_some_and(|s| s.verify.enabled)) {
        (Some(true), _) => Ok(()),
        (Some(false), _) => Err("spec.verify is false".into()),
        (None, false) => Err("spec.backup.verify.enabled is false".into()),
        (None, true) if full => Ok(()),
        (None, true) => Err(
            "only full backups are verified by default; set spec.verify: true to verify this one"
                .into(),
        ),
    }
}

pub fn decide(input: &Input<'_>) -> Decision {
    // A running backup is followed to its end before another starts.
    if let Some(b) = input.backups.iter().find(|b| phase_of(b) == phase::RUNNING) {
        let name = b.name_any();
        let instance = b
            .status
            .as_ref()
            .and_then(|s| s.instance.clone())
            .unwrap_or_default();
        let step = match input.reports.get(&instance) {
            // Unreachable for now: the job may still run; ask again later.
            None => None,
            Some(r) => match r.backup.as_ref().filter(|j| j.backup == name) {
                Some(j) if j.phase == JobPhase::Running => None,
                Some(j) => Some(Step::Finish {
                    backup: name.clone(),
                    tell_primary: (instance != input.target_primary)
                        .then(|| input.target_primary.to_string()),
                    job: Box::new(j.clone()),
                    verify: verification_wanted(
                        input.spec,
                        b,
                        j.result
                            .as_ref()
                            .map(|r| r.label.as_str())
                            .unwrap_or_default(),
                    ),
                }),
                None => Some(Step::Reject {
                    backup: name.clone(),
                    message: format!(
                        "instance {instance} restarted or lost the backup while it ran; create a new PostgresBackup to try again"
                    ),
                }),
            },
        };
        let running = step.is_none().then_some(Running {
            backup: name,
            instance,
        });
        return Decision { step, running };
    }
    let Some(b) = input.backups.iter().find(|b| phase_of(b) == phase::PENDING) else {
        return Decision::default();
    };
    let name = b.name_any();
    let Some(spec) = input.spec else {
        return reject(
            name,
            format!(
                "cluster {} has no spec.backup; add a repository there, then create the PostgresBackup again",
                b.spec.cluster
            ),
        );
    };
    let repository = b
        .spec
        .repository
        .clone()
        .or_else(|| spec.repositories.first().map(|r| r.name.clone()))
        .unwrap_or_default();
    let Some(position) = spec.repositories.iter().position(|r| r.name == repository) else {
        let known: Vec<&str> = spec.repositories.iter().map(|r| r.name.as_str()).collect();
        return reject(
            name,
            format!(
                "spec.repository {repository} is not one of the cluster's repositories ({}); create the PostgresBackup again naming one of them",
                known.join(", ")
            ),
        );
    };
    let primary = input.target_primary;
    let ready = input.primary_pod.is_some_and(super::operation::is_ready);
    let wait = |message: String| Decision {
        step: Some(Step::Wait {
            backup: name.clone(),
            message,
        }),
        running: None,
    };
    let report = match input.reports.get(primary) {
        Some(r) if ready && r.role == Role::Primary && r.running => r,
        _ => return wait(format!("waiting for the primary {primary} to be ready")),
    };
    match &report.archive {
        Some(a) if a.stanza_ready => {}
        // stanza-create failed (wrong credentials, an unreachable store, no
        // pgBackRest): waiting could be forever, so the backup is tried and
        // ends with what pgBackRest (or the instance) says about it.
        Some(a) if a.stanza_error.is_some() => {}
        Some(_) => {
            return wait(
                "waiting for WAL archiving to the repositories: the pgBackRest stanza is being created"
                    .into(),
            );
        }
        None => {
            return wait(format!(
                "waiting for {primary} to configure WAL archiving (its pod may still run without spec.backup)"
            ));
        }
    }
    let standby = (spec.target == BackupTarget::PreferReplica)
        .then(|| standby_for_backup(input.ready_replicas, input.reports, report))
        .flatten();
    Decision {
        step: Some(Step::Start {
            backup: name.clone(),
            instance: standby.clone().unwrap_or_else(|| primary.to_string()),
            request: BackupRequest {
                backup: name,
                kind: match b.spec.type_ {
                    ApiType::Full => BackupType::Full,
                    ApiType::Differential => BackupType::Diff,
                    ApiType::Incremental => BackupType::Incr,
                },
                repository: u32::try_from(position + 1).unwrap_or(1),
                standby: standby.is_some(),
            },
            sentinel_on: standby.map(|_| primary.to_string()),
        }),
        running: None,
    }
}

/// The replica a `preferReplica` backup runs on: a ready one that streams,
/// an asynchronous one before a synchronous standby (whose slower disk
/// would slow commits), then the least behind; the name breaks ties.
/// `None`: there is none, and the primary takes the backup.
fn standby_for_backup(
    ready: &[String],
    reports: &std::collections::BTreeMap<String, InstanceReport>,
    primary: &InstanceReport,
) -> Option<String> {
    let synchronous = |name: &str| {
        primary
            .standbys
            .iter()
            .any(|s| s.name == name && matches!(s.sync_state.as_str(), "sync" | "quorum"))
    };
    ready
        .iter()
        .filter_map(|name| {
            let r = reports.get(name)?;
            let streams = r.role == Role::Replica
                && r.running
                && r.ready
                && r.wal_receiver.as_deref() == Some("streaming");
            streams.then(|| (synchronous(name), r.lag_bytes.unwrap_or(u64::MAX), name))
        })
        .min()
        .map(|(_, _, name)| name.clone())
}

fn reject(backup: String, message: String) -> Decision {
    Decision {
        step: Some(Step::Reject { backup, message }),
        running: None,
    }
}

/// `status.backup`: the newest completed backup, the schedules, what the
/// repositories can restore and how archiving goes on the primary; what
/// the primary does not report now is kept as it was.
pub fn status(
    spec: Option<&BackupSpec>,
    backups: &[PostgresBackup],
    schedules: &super::schedule::Decision,
    primary: Option<&InstanceReport>,
    previous: Option<&BackupStatus>,
) -> Option<BackupStatus> {
    spec?;
    let mut out = previous.cloned().unwrap_or_default();
    out.schedules = schedules.status.clone();
    out.next_scheduled = schedules.next.clone();
    // A backup being verified is in the repository already; one whose
    // restore failed is not a backup to count on.
    let failed_verification = |b: &PostgresBackup| {
        b.status
            .as_ref()
            .and_then(|s| s.verification.as_ref())
            .is_some_and(|v| v.phase == super::verify::phase::FAILED)
    };
    if let Some(last) = &out.last_successful_backup
        && backups
            .iter()
            .any(|b| b.name_any() == last.name && failed_verification(b))
    {
        out.last_successful_backup = None;
    }
    let completed = backups
        .iter()
        .filter(|b| matches!(phase_of(b), phase::COMPLETED | phase::VERIFYING))
        .filter(|b| !failed_verification(b))
        .filter_map(|b| {
            let s = b.status.as_ref()?;
            Some(BackupReference {
                name: b.name_any(),
                label: s.label.clone()?,
                type_: s.type_.unwrap_or(b.spec.type_),
                repository: s.repository.clone().unwrap_or_default(),
                completed_at: s.stopped_at.clone()?,
            })
        })
        .max_by(|a, b| a.completed_at.cmp(&b.completed_at));
    if completed.is_some() {
        out.last_successful_backup = completed;
    }
    if let Some(a) = primary.and_then(|r| r.archive.as_ref()) {
        if !a.repositories.is_empty() {
            out.first_recoverability_point = a
                .repositories
                .iter()
                .filter_map(|r| r.first_recoverability_point.as_deref())
                .filter_map(|t| t.parse::<jiff::Timestamp>().ok())
                .min()
                .map(|t| t.to_string());
        }
        if let (Some(wal), Some(time)) = (&a.last_archived_wal, &a.last_archived_at) {
            out.last_archived_wal = Some(ArchivedWal {
                wal: wal.clone(),
                time: time.clone(),
            });
        }
        if let (Some(wal), Some(time)) = (&a.last_failed_wal, &a.last_failed_at) {
            out.last_archive_failure = Some(ArchiveFailure {
                wal: wal.clone(),
                time: time.clone(),
                message: format!(
                    "archive-push of {wal} failed ({} failures so far); the primary's log has pgBackRest's message{}",
                    a.failed_count,
                    a.stanza_error
                        .as_deref()
                        .map(|e| format!("; stanza: {e}"))
                        .unwrap_or_default()
                ),
            });
        }
    }
    Some(out)
}

/// The `WalArchiving` condition: whether the primary's archiver keeps up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Archiving {
    pub ok: bool,
    pub reason: &'static str,
    pub message: String,
}

/// How archiving goes on the primary; `None` when there is nothing new to
/// say (no backups configured, no report from the primary now, or its
/// stanza still being created), so the condition stays as it was.
pub fn archiving(spec: Option<&BackupSpec>, primary: Option<&InstanceReport>) -> Option<Archiving> {
    spec?;
    let a = primary?.archive.as_ref()?;
    let kept = "the primary keeps every WAL segment that is not archived";
    if !a.stanza_ready {
        // No error yet: the stanza is being created (a new cluster).
        let e = a.stanza_error.as_ref()?;
        return Some(Archiving {
            ok: false,
            reason: "RepositoryNotReady",
            message: format!("WAL is not archived: {e}; {kept}"),
        });
    }
    Some(if a.failing() {
        Archiving {
            ok: false,
            reason: "ArchiveFailing",
            message: format!(
                "archive-push of {} failed ({} failures so far) and nothing was archived since; the primary's log has pgBackRest's message; {kept}",
                a.last_failed_wal.as_deref().unwrap_or("a segment"),
                a.failed_count
            ),
        }
    } else {
        Archiving {
            ok: true,
            reason: "Archiving",
            message: match (&a.last_archived_wal, &a.last_archived_at) {
                (Some(wal), Some(t)) => format!("WAL archived up to {wal} at {t}"),
                _ => "the repository is ready; no segment was full yet".to_string(),
            },
        }
    })
}

#[cfg(test)]
mod tests;

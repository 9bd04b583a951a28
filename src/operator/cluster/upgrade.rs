//! Major upgrade, the runbook: once the cluster is healthy, record the
//! attempt; stop the replicas; PAUSE the poolers and stop the primary;
//! bring its pod back with the new image and the old binaries, where the
//! instance manager runs pg_upgrade; RESUME once it serves (or, when
//! pg_upgrade refused, once the old primary is back); replicas then clone
//! the upgraded primary. Each step is recorded in `status.upgrade` before
//! it is taken, so an operator restart resumes where it stopped. Pure: the
//! executor carries the steps out.

use k8s_openapi::api::core::v1::Pod;

use super::operation::{Input, desired_hash, is_ready, is_terminating, spec_hash};
use crate::api::BackupType;
use crate::api::MajorUpgradeStatus;
use crate::api::pgbackup::{PostgresBackup, PostgresBackupSpec};
use crate::contract::upgrade::UpgradePhase;
use crate::resources::labels;
use crate::resources::model::{Model, UpgradeStage};
use crate::resources::upgrade::is_upgrade_pod;

/// `status.upgrade.phase` values.
pub const UPGRADING: &str = "Upgrading";
pub const RECLONING: &str = "Recloning";
pub const COMPLETED: &str = "Completed";
pub const FAILED: &str = "Failed";

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// With `spec.backup`: a full backup before anything stops (the way
    /// back); this creates its `PostgresBackup`.
    TakeBackup(String),
    /// That backup failed: the upgrade is recorded `Failed`, nothing was
    /// touched.
    BackupFailed { backup: String, message: String },
    /// Record the attempt (`Upgrading`), from `from` to `to`.
    Start { from: i32, to: i32 },
    /// Stop these replicas: their data is cloned again afterwards.
    StopReplicas(Vec<String>),
    /// Wait for these pods to be gone.
    AwaitGone(Vec<String>),
    /// PAUSE the poolers, record the stop, then stop the primary.
    StopPrimary(String),
    /// The old primary's pod, still there after the stop was recorded.
    DeleteOldPrimary(String),
    /// The primary's pod with the new image and the old binaries.
    CreatePrimary(String),
    /// pg_upgrade runs in the primary's pod.
    AwaitPrimary(String),
    /// The upgraded primary serves: RESUME, record `Recloning` and the new
    /// data version.
    PrimaryUpgraded {
        instance: String,
        pg_upgrade_ms: Option<u64>,
    },
    /// pg_upgrade refused (the data is unchanged): RESUME, record `Failed`
    /// with its words, and bring the old image back.
    Fail { instance: String, message: String },
    /// A failed attempt's pod (new image) still stands in for the primary.
    RemoveUpgradePod(String),
    /// Every replica streams from the upgraded primary.
    Complete,
}

impl Step {
    pub fn describe(&self) -> String {
        match self {
            Step::TakeBackup(b) => {
                format!("major upgrade: taking full backup {b} first (the way back)")
            }
            Step::BackupFailed { backup, message } => format!(
                "major upgrade: the backup before it ({backup}) failed, nothing was changed: {message}"
            ),
            Step::Start { from, to } => {
                format!("major upgrade from PostgreSQL {from} to {to}: starting")
            }
            Step::StopReplicas(v) => format!(
                "major upgrade: stopping replica(s) {} (they clone the upgraded primary afterwards)",
                v.join(", ")
            ),
            Step::AwaitGone(v) => {
                format!("major upgrade: waiting for {} to stop", v.join(", "))
            }
            Step::StopPrimary(p) | Step::DeleteOldPrimary(p) => {
                format!("major upgrade: poolers hold clients; stopping primary {p}")
            }
            Step::CreatePrimary(p) => {
                format!("major upgrade: starting {p} with the new image and the old binaries")
            }
            Step::AwaitPrimary(p) => {
                format!("major upgrade: pg_upgrade runs on {p}; poolers hold clients")
            }
            Step::PrimaryUpgraded { instance, .. } => {
                format!("major upgrade: {instance} runs the new major; resuming the poolers")
            }
            Step::Fail { message, .. } => {
                format!("major upgrade failed and changed nothing: {message}")
            }
            Step::RemoveUpgradePod(p) => {
                format!("major upgrade failed: bringing {p} back on the old image")
            }
            Step::Complete => {
                "major upgrade: every replica streams from the upgraded primary".into()
            }
        }
    }
}

fn record<'a>(input: &'a Input<'_>) -> Option<&'a MajorUpgradeStatus> {
    input.status.and_then(|s| s.upgrade.as_ref())
}

/// Steps that come before failover and everything else: once the
/// replicas are being stopped, nothing else may act on the instances.
pub fn in_flight(input: &Input<'_>) -> Option<Step> {
    let primary = input.target_primary;
    let pod = input.observed.pod(primary);
    // A failed attempt leaves the new image's pod: the old one returns.
    if record(input).is_some_and(|r| r.phase == FAILED)
        && input.model.upgrade.is_none()
        && pod.is_some_and(|p| is_upgrade_pod(p) && !is_terminating(p))
    {
        return Some(Step::RemoveUpgradePod(primary.to_string()));
    }
    let upgrade = input.model.upgrade.as_ref()?;
    match upgrade.stage {
        UpgradeStage::Preparing => {
            record(input).filter(|r| r.phase == UPGRADING && r.to_version == upgrade.to)?;
            let replicas: Vec<&String> = input
                .instances
                .iter()
                .chain(input.removed)
                .filter(|n| *n != primary)
                .filter(|n| input.observed.pod(n).is_some())
                .collect();
            let running: Vec<String> = replicas
                .iter()
                .filter(|n| input.observed.pod(n).is_some_and(|p| !is_terminating(p)))
                .map(|n| n.to_string())
                .collect();
            if !running.is_empty() {
                return Some(Step::StopReplicas(running));
            }
            if !replicas.is_empty() {
                return Some(Step::AwaitGone(
                    replicas.iter().map(|n| n.to_string()).collect(),
                ));
            }
            Some(Step::StopPrimary(primary.to_string()))
        }
        UpgradeStage::PrimaryStopped => Some(primary_stopped(input, pod)),
        UpgradeStage::Recloning => {
            // A replica pod of the old major (left by an interrupted
            // attempt) can never follow the upgraded primary.
            let old: Vec<String> = input
                .instances
                .iter()
                .filter(|n| *n != primary)
                .filter(|n| {
                    input.observed.pod(n).is_some_and(|p| {
                        !is_terminating(p)
                            && spec_hash(p) != Some(desired_hash(input.model, n).as_str())
                    })
                })
                .cloned()
                .collect();
            (!old.is_empty()).then_some(Step::StopReplicas(old))
        }
    }
}

fn primary_stopped(input: &Input<'_>, pod: Option<&Pod>) -> Step {
    let primary = input.target_primary.to_string();
    let Some(pod) = pod else {
        return Step::CreatePrimary(primary);
    };
    if is_terminating(pod) {
        return Step::AwaitGone(vec![primary]);
    }
    if !is_upgrade_pod(pod) {
        return Step::DeleteOldPrimary(primary);
    }
    if let Some(message) = cannot_start(pod) {
        return Step::Fail {
            instance: primary,
            message,
        };
    }
    let report = input.observed.reports.get(&primary);
    let upgrade_report = report.and_then(|r| r.upgrade.as_ref());
    if let Some(refused) = upgrade_report.filter(|u| u.phase == UpgradePhase::Refused) {
        return Step::Fail {
            instance: primary,
            message: refused.message.clone().unwrap_or_default(),
        };
    }
    let to = input.model.upgrade.as_ref().map_or(0, |u| u.to);
    let serving = report.is_some_and(|r| {
        r.running
            && r.role == crate::contract::instance::Role::Primary
            && r.version.as_deref().and_then(major_of) == Some(to)
    });
    if serving {
        return Step::PrimaryUpgraded {
            instance: primary,
            pg_upgrade_ms: upgrade_report.and_then(|u| u.upgrade_ms),
        };
    }
    Step::AwaitPrimary(primary)
}

/// Why the upgrading primary's pod will not start by itself: an image that
/// cannot be pulled, or the copy of the old binaries failing.
fn cannot_start(pod: &Pod) -> Option<String> {
    const STUCK: &[&str] = &[
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "CrashLoopBackOff",
        "CreateContainerConfigError",
    ];
    let status = pod.status.as_ref()?;
    let containers = status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten());
    containers.into_iter().find_map(|c| {
        let waiting = c.state.as_ref()?.waiting.as_ref()?;
        let reason = waiting.reason.as_deref()?;
        STUCK.contains(&reason).then(|| {
            format!(
                "container {} of the upgrading primary's pod cannot start: {reason}: {}",
                c.name,
                waiting.message.as_deref().unwrap_or("no message")
            )
        })
    })
}

/// `server_version` `18.1 (Debian 18.1-1.pgdg120+1)` → 18.
fn major_of(version: &str) -> Option<i32> {
    version
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// Steps taken only when nothing more urgent is to be done: starting an
/// attempt on a healthy cluster, and finishing once the replicas stream.
pub fn when_settled(input: &Input<'_>) -> Option<Step> {
    let upgrade = input.model.upgrade.as_ref()?;
    let healthy = input.instances.iter().all(|n| {
        input.observed.pod(n).is_some_and(is_ready)
            && input.observed.reports.get(n).is_some_and(|r| r.running)
    });
    match upgrade.stage {
        UpgradeStage::Preparing => {
            let started =
                record(input).is_some_and(|r| r.phase == UPGRADING && r.to_version == upgrade.to);
            if started || !healthy {
                return None;
            }
            if input.model.spec.backup.is_some() {
                let name = backup_name(&input.model.name, upgrade.to, upgrade.generation);
                let backup = input
                    .observed
                    .backups
                    .iter()
                    .find(|b| b.metadata.name.as_deref() == Some(name.as_str()));
                let status = backup.and_then(|b| b.status.as_ref());
                match status.and_then(|s| s.phase.as_deref()) {
                    None if backup.is_none() => return Some(Step::TakeBackup(name)),
                    Some("Completed" | "Verifying") => {}
                    Some("Failed") => {
                        let message = status.and_then(|s| s.message.clone()).unwrap_or_default();
                        return Some(Step::BackupFailed {
                            backup: name,
                            message,
                        });
                    }
                    // Taken by the backup steps, which come before this one.
                    _ => return None,
                }
            }
            Some(Step::Start {
                from: upgrade.from,
                to: upgrade.to,
            })
        }
        UpgradeStage::Recloning => {
            let streaming = input
                .instances
                .iter()
                .filter(|n| *n != input.target_primary)
                .all(|n| {
                    input.observed.reports.get(n).is_some_and(|r| {
                        r.wal_receiver.as_deref() == Some("streaming")
                            && r.version.as_deref().and_then(major_of) == Some(upgrade.to)
                    })
                });
            (healthy && streaming).then_some(Step::Complete)
        }
        UpgradeStage::PrimaryStopped => None,
    }
}

/// The full backup taken before the upgrade this spec generation asks for.
pub fn backup_name(cluster: &str, to: i32, generation: i64) -> String {
    format!("{cluster}-before-pg{to}-g{generation}")
}

/// Its `PostgresBackup`, in the first repository.
pub fn backup_object(model: &Model, name: &str) -> PostgresBackup {
    let repository = model
        .spec
        .backup
        .as_ref()
        .and_then(|b| b.repositories.first())
        .map(|r| r.name.clone());
    let mut object = PostgresBackup::new(
        name,
        PostgresBackupSpec {
            cluster: model.name.clone(),
            type_: BackupType::Full,
            repository,
            verify: None,
        },
    );
    object.metadata = model.child_meta(
        name.to_string(),
        labels::common(&model.name, labels::COMPONENT_BACKUP),
    );
    object
}

/// The pods a step deletes.
pub fn pods_to_delete(step: &Step) -> Vec<String> {
    match step {
        Step::StopReplicas(v) => v.clone(),
        Step::DeleteOldPrimary(p) | Step::RemoveUpgradePod(p) | Step::Fail { instance: p, .. } => {
            vec![p.clone()]
        }
        _ => vec![],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_image_that_cannot_be_pulled_fails_the_upgrade() {
        use k8s_openapi::api::core::v1::{
            ContainerState, ContainerStateWaiting, ContainerStatus, PodStatus,
        };
        let waiting = |name: &str, reason: &str| ContainerStatus {
            name: name.into(),
            state: Some(ContainerState {
                waiting: Some(ContainerStateWaiting {
                    reason: Some(reason.into()),
                    message: Some("not found".into()),
                }),
                ..ContainerState::default()
            }),
            ..ContainerStatus::default()
        };
        let mut pod = Pod::default();
        assert_eq!(cannot_start(&pod), None);
        pod.status = Some(PodStatus {
            container_statuses: Some(vec![waiting("postgres", "PodInitializing")]),
            ..PodStatus::default()
        });
        assert_eq!(cannot_start(&pod), None);
        pod.status = Some(PodStatus {
            init_container_statuses: Some(vec![waiting("old-postgres", "ErrImagePull")]),
            ..PodStatus::default()
        });
        assert_eq!(
            cannot_start(&pod).as_deref(),
            Some(
                "container old-postgres of the upgrading primary's pod cannot start: ErrImagePull: not found"
            )
        );
    }

    #[test]
    fn reads_the_major_of_server_version() {
        assert_eq!(major_of("18.1 (Debian 18.1-1.pgdg120+1)"), Some(18));
        assert_eq!(major_of("17.6"), Some(17));
        assert_eq!(major_of("18devel"), Some(18));
        assert_eq!(major_of(""), None);
    }
}

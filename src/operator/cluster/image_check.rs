//! Trying a PostgreSQL image before the instances get it (see
//! [`crate::resources::image_check`]): which step the image-check pod
//! needs. Pure; `apply` creates the pod, the executor records the result
//! in `status.imageCheck`, and the plan deletes pods no check needs.
//!
//! Progress lives in the API: the pod (its annotations name the image and
//! the major) and `status.imageCheck`, so a restarted operator follows the
//! pod that exists, and a result recorded before the pod was deleted is
//! not asked for again.

use k8s_openapi::api::core::v1::{ContainerStatus, Pod};

use crate::contract::image_check::{ImageCheckResult, UpgradeRehearsal};
use crate::resources::labels;
use crate::resources::model::ImageCandidate;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Create the pod.
    Start(ImageCandidate),
    /// The pod runs (or pulls the image): wait.
    Wait(ImageCandidate),
    /// The pod ended or cannot start: record this.
    Record {
        candidate: ImageCandidate,
        passed: bool,
        message: String,
        /// A major upgrade's rehearsal on a copy of the primary, passed.
        rehearsal: Option<UpgradeRehearsal>,
        /// The image passed, its upgrade rehearsal failed.
        rehearsal_failed: bool,
    },
}

impl Step {
    pub fn describe(&self) -> String {
        match self {
            Step::Start(c) | Step::Wait(c) => match &c.upgrade_from {
                Some(from) => format!(
                    "rehearsing the upgrade from PostgreSQL {} to {} (image {}) on a copy of the primary before anything stops",
                    from.major, c.major, c.image
                ),
                None => format!(
                    "trying image {} (PostgreSQL {}) in a throwaway pod before any instance gets it",
                    c.image, c.major
                ),
            },
            Step::Record {
                candidate, passed, ..
            } => format!(
                "image {} {} the check for PostgreSQL {}",
                candidate.image,
                if *passed { "passed" } else { "failed" },
                candidate.major
            ),
        }
    }
}

/// A check pod that has not started after this long (unschedulable, a
/// pull that never ends) fails the check; one that runs is bounded by its
/// `activeDeadlineSeconds`.
pub const RESULT_WITHIN_SECS: i64 = 600;

/// Waiting reasons that do not go away by themselves.
const CANNOT_START: &[&str] = &[
    "ImagePullBackOff",
    "InvalidImageName",
    "ErrImageNeverPull",
    "CreateContainerConfigError",
];

/// Whether `pod` checks `candidate` (its annotations say what it checks).
pub fn checks(pod: &Pod, candidate: &ImageCandidate) -> bool {
    let a = pod.metadata.annotations.as_ref();
    let get = |k: &str| a.and_then(|a| a.get(k)).map(String::as_str);
    get(labels::IMAGE_ANNOTATION) == Some(candidate.image.as_str())
        && get(labels::MAJOR_ANNOTATION) == Some(candidate.major.to_string().as_str())
        && get(labels::UPGRADE_FROM_ANNOTATION)
            == candidate
                .upgrade_from
                .as_ref()
                .map(|u| u.major.to_string())
                .as_deref()
}

pub fn decide(candidate: &ImageCandidate, pods: &[Pod], now: i64) -> Step {
    let Some(pod) = pods
        .iter()
        .find(|p| checks(p, candidate) && p.metadata.deletion_timestamp.is_none())
    else {
        return Step::Start(candidate.clone());
    };
    let record = |passed: bool, message: String| Step::Record {
        candidate: candidate.clone(),
        passed,
        message,
        rehearsal: None,
        rehearsal_failed: false,
    };
    let status = pod.status.as_ref();
    let containers = || {
        status
            .into_iter()
            .flat_map(|s| {
                s.init_container_statuses
                    .iter()
                    .flatten()
                    .chain(s.container_statuses.iter().flatten())
            })
            .collect::<Vec<&ContainerStatus>>()
    };
    let check = containers().into_iter().find(|c| c.name == "check");
    if let Some(done) = check.and_then(|c| c.state.as_ref()?.terminated.as_ref()) {
        return match done
            .message
            .as_deref()
            .and_then(ImageCheckResult::from_message)
        {
            Some(r) if r.passed => Step::Record {
                candidate: candidate.clone(),
                passed: true,
                message: format!(
                    "PostgreSQL {}{}{}",
                    r.version.unwrap_or_default(),
                    r.pgbackrest.map(|p| format!(", {p}")).unwrap_or_default(),
                    r.upgrade.as_ref().map(rehearsed).unwrap_or_default()
                ),
                rehearsal: r.upgrade,
                rehearsal_failed: false,
            },
            Some(r) => Step::Record {
                candidate: candidate.clone(),
                passed: false,
                message: r.error.unwrap_or_else(|| "no reason given".into()),
                rehearsal: None,
                rehearsal_failed: r.rehearsal_failed,
            },
            None => record(
                false,
                format!(
                    "the check ended ({}, exit code {}) without a result: {}",
                    done.reason.as_deref().unwrap_or("terminated"),
                    done.exit_code,
                    done.message.as_deref().unwrap_or("no message")
                ),
            ),
        };
    }
    for c in containers() {
        if let Some(w) = c.state.as_ref().and_then(|s| s.waiting.as_ref())
            && let Some(reason) = w.reason.as_deref().filter(|r| CANNOT_START.contains(r))
        {
            return record(
                false,
                format!(
                    "container {} cannot start ({reason}): {}",
                    c.name,
                    w.message.as_deref().unwrap_or("no message")
                ),
            );
        }
    }
    // The kubelet gave up on it (activeDeadlineSeconds) before it ran.
    if let Some(s) = status.filter(|s| s.phase.as_deref() == Some("Failed")) {
        return record(
            false,
            format!(
                "the check pod failed before the check ran: {}",
                s.message
                    .clone()
                    .or(s.reason.clone())
                    .unwrap_or_else(|| "no reason given".into())
            ),
        );
    }
    let created = pod
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0.as_second());
    let running = status.is_some_and(|s| s.phase.as_deref() == Some("Running"));
    if !running && created.is_some_and(|c| now - c > RESULT_WITHIN_SECS) {
        let phase = status.and_then(|s| s.phase.clone()).unwrap_or_default();
        let why = status
            .and_then(|s| s.conditions.as_ref())
            .into_iter()
            .flatten()
            .filter(|c| c.status == "False")
            .filter_map(|c| c.message.clone())
            .collect::<Vec<_>>()
            .join("; ");
        return record(
            false,
            format!(
                "the check pod gave no result within {RESULT_WITHIN_SECS} s (phase {phase}{}{why})",
                if why.is_empty() { "" } else { ": " }
            ),
        );
    }
    Step::Wait(candidate.clone())
}

/// What the rehearsal measured, for the message.
fn rehearsed(r: &UpgradeRehearsal) -> String {
    let mib = |b: u64| b.div_ceil(1024 * 1024);
    format!(
        "; the upgrade from PostgreSQL {} rehearsed on a copy of the primary ({} MiB, copied in {:.1} s): pg_upgrade --link took {:.1} s and writes {} MiB; extensions: {}",
        r.from,
        mib(r.database_bytes),
        r.copy_ms as f64 / 1000.0,
        r.pg_upgrade_ms as f64 / 1000.0,
        mib(r.link_bytes),
        if r.extensions.is_empty() {
            "none".to_string()
        } else {
            r.extensions.join(", ")
        }
    )
}

/// Check pods nobody needs: all of them without a candidate, else those
/// for another image or major.
pub fn orphans(candidate: Option<&ImageCandidate>, pods: &[Pod]) -> Vec<String> {
    pods.iter()
        .filter(|p| candidate.is_none_or(|c| !checks(p, c)))
        .filter_map(|p| p.metadata.name.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::image_check;
    use crate::resources::model::fixtures::model;
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateTerminated, ContainerStateWaiting, PodStatus,
    };

    fn candidate() -> ImageCandidate {
        ImageCandidate {
            image: "postgres:17.9".into(),
            major: 17,
            upgrade_from: None,
        }
    }

    fn with(state: ContainerState, name: &str) -> Pod {
        let mut pod = image_check::pod(&model(), &candidate());
        pod.status = Some(PodStatus {
            container_statuses: Some(vec![ContainerStatus {
                name: name.into(),
                state: Some(state),
                ..ContainerStatus::default()
            }]),
            ..PodStatus::default()
        });
        pod
    }

    fn ended(message: &str, exit_code: i32) -> ContainerState {
        ContainerState {
            terminated: Some(ContainerStateTerminated {
                exit_code,
                message: Some(message.into()),
                ..ContainerStateTerminated::default()
            }),
            ..ContainerState::default()
        }
    }

    #[test]
    fn no_pod_starts_one_and_a_running_one_is_waited_for() {
        assert_eq!(decide(&candidate(), &[], 0), Step::Start(candidate()));
        let running = image_check::pod(&model(), &candidate());
        assert_eq!(decide(&candidate(), &[running], 0), Step::Wait(candidate()));
    }

    #[test]
    fn the_result_is_what_the_pod_reported() {
        let ok = ImageCheckResult {
            passed: true,
            version: Some("17.9".into()),
            ..ImageCheckResult::default()
        };
        let step = decide(
            &candidate(),
            &[with(ended(&ok.to_message(), 0), "check")],
            0,
        );
        assert_eq!(
            step,
            Step::Record {
                candidate: candidate(),
                passed: true,
                message: "PostgreSQL 17.9".into(),
                rehearsal: None,
                rehearsal_failed: false,
            }
        );
        let bad = ImageCheckResult {
            passed: false,
            error: Some("the binaries in /usr/lib/postgresql/16/bin are PostgreSQL 16".into()),
            ..ImageCheckResult::default()
        };
        let Step::Record {
            passed, message, ..
        } = decide(
            &candidate(),
            &[with(ended(&bad.to_message(), 1), "check")],
            0,
        )
        else {
            panic!("recorded")
        };
        assert!(!passed);
        assert!(message.contains("PostgreSQL 16"), "{message}");
        // A crash without a result still ends the check, failed.
        let Step::Record {
            passed, message, ..
        } = decide(
            &candidate(),
            &[with(ended("exec format error", 126), "check")],
            0,
        )
        else {
            panic!("recorded")
        };
        assert!(
            !passed && message.contains("exec format error"),
            "{message}"
        );
    }

    #[test]
    fn an_image_that_cannot_be_pulled_fails_the_check() {
        let waiting = |reason: &str| ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some(reason.into()),
                message: Some("manifest unknown".into()),
            }),
            ..ContainerState::default()
        };
        let Step::Record {
            passed, message, ..
        } = decide(
            &candidate(),
            &[with(waiting("ImagePullBackOff"), "check")],
            0,
        )
        else {
            panic!("recorded")
        };
        assert!(!passed && message.contains("manifest unknown"), "{message}");
        // A first failed pull may be a hiccup: the kubelet tries again.
        assert_eq!(
            decide(&candidate(), &[with(waiting("ErrImagePull"), "check")], 0),
            Step::Wait(candidate())
        );
    }

    #[test]
    fn a_pod_that_never_gives_a_result_fails_the_check() {
        let mut pod = image_check::pod(&model(), &candidate());
        let created = jiff::Timestamp::from_second(1_000_000).unwrap();
        pod.metadata.creation_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(created),
        );
        pod.status = Some(PodStatus {
            phase: Some("Pending".into()),
            conditions: Some(vec![k8s_openapi::api::core::v1::PodCondition {
                type_: "PodScheduled".into(),
                status: "False".into(),
                message: Some("0/3 nodes are available: 3 Insufficient memory".into()),
                ..Default::default()
            }]),
            ..PodStatus::default()
        });
        let pods = std::slice::from_ref(&pod);
        assert_eq!(
            decide(&candidate(), pods, 1_000_000 + 60),
            Step::Wait(candidate())
        );
        let Step::Record {
            passed, message, ..
        } = decide(&candidate(), pods, 1_000_000 + RESULT_WITHIN_SECS + 1)
        else {
            panic!("recorded")
        };
        assert!(!passed);
        assert!(message.contains("Insufficient memory"), "{message}");
        // Running (a rehearsal copying a large database): its deadline
        // bounds it, not this.
        pod.status = Some(PodStatus {
            phase: Some("Running".into()),
            ..PodStatus::default()
        });
        assert_eq!(
            decide(
                &candidate(),
                std::slice::from_ref(&pod),
                1_000_000 + RESULT_WITHIN_SECS + 1
            ),
            Step::Wait(candidate())
        );
    }

    fn upgrade_candidate() -> ImageCandidate {
        ImageCandidate {
            image: "postgres:18.1".into(),
            major: 18,
            upgrade_from: Some(crate::resources::model::UpgradeFrom {
                major: 17,
                old_image: "postgres:17.9".into(),
            }),
        }
    }

    #[test]
    fn a_rehearsal_is_followed_by_its_own_pod_and_recorded_with_what_it_measured() {
        let upgrade = upgrade_candidate();
        let minor_pod = image_check::pod(
            &model(),
            &ImageCandidate {
                upgrade_from: None,
                ..upgrade.clone()
            },
        );
        assert_eq!(
            decide(&upgrade, std::slice::from_ref(&minor_pod), 0),
            Step::Start(upgrade.clone()),
            "a check of the image alone is not a rehearsal"
        );
        assert_eq!(orphans(Some(&upgrade), &[minor_pod]).len(), 1);
        let rehearsal = UpgradeRehearsal {
            from: 17,
            database_bytes: 1100 << 20,
            link_bytes: 48 << 20,
            copy_ms: 12_300,
            pg_upgrade_ms: 3_400,
            extensions: vec!["pg_stat_statements 1.11".into()],
        };
        let ok = ImageCheckResult {
            passed: true,
            version: Some("18.1".into()),
            upgrade: Some(rehearsal.clone()),
            ..ImageCheckResult::default()
        };
        let mut pod = image_check::pod(&model(), &upgrade);
        pod.status = Some(PodStatus {
            container_statuses: Some(vec![ContainerStatus {
                name: "check".into(),
                state: Some(ended(&ok.to_message(), 0)),
                ..ContainerStatus::default()
            }]),
            ..PodStatus::default()
        });
        let Step::Record {
            passed,
            message,
            rehearsal: recorded,
            ..
        } = decide(&upgrade, &[pod], 0)
        else {
            panic!("recorded")
        };
        assert!(passed);
        assert_eq!(recorded, Some(rehearsal));
        assert_eq!(
            message,
            "PostgreSQL 18.1; the upgrade from PostgreSQL 17 rehearsed on a copy of the primary (1100 MiB, copied in 12.3 s): pg_upgrade --link took 3.4 s and writes 48 MiB; extensions: pg_stat_statements 1.11"
        );
    }

    #[test]
    fn pods_for_another_image_are_orphans() {
        let pod = image_check::pod(&model(), &candidate());
        assert!(orphans(Some(&candidate()), std::slice::from_ref(&pod)).is_empty());
        let other = ImageCandidate {
            image: "postgres:17.10".into(),
            major: 17,
            upgrade_from: None,
        };
        assert_eq!(
            orphans(Some(&other), std::slice::from_ref(&pod)),
            vec!["db-image-check".to_string()]
        );
        assert_eq!(orphans(None, &[pod]), vec!["db-image-check".to_string()]);
        // A pod for another image is not followed.
        let old = image_check::pod(&model(), &other);
        assert_eq!(decide(&candidate(), &[old], 0), Step::Start(candidate()));
    }
}

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

use crate::contract::image_check::ImageCheckResult;
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
    },
}

impl Step {
    pub fn describe(&self) -> String {
        match self {
            Step::Start(c) | Step::Wait(c) => format!(
                "trying image {} (PostgreSQL {}) in a throwaway pod before any instance gets it",
                c.image, c.major
            ),
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

/// A check pod without a result after this long (unschedulable, a pull
/// that never ends) fails the check.
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
            Some(r) if r.passed => record(
                true,
                format!(
                    "PostgreSQL {}{}",
                    r.version.unwrap_or_default(),
                    r.pgbackrest.map(|p| format!(", {p}")).unwrap_or_default()
                ),
            ),
            Some(r) => record(false, r.error.unwrap_or_else(|| "no reason given".into())),
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
    if created.is_some_and(|c| now - c > RESULT_WITHIN_SECS) {
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
                message: "PostgreSQL 17.9".into()
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
    }

    #[test]
    fn pods_for_another_image_are_orphans() {
        let pod = image_check::pod(&model(), &candidate());
        assert!(orphans(Some(&candidate()), std::slice::from_ref(&pod)).is_empty());
        let other = ImageCandidate {
            image: "postgres:17.10".into(),
            major: 17,
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

use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, PodCondition, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde_json::json;

use super::*;
use crate::api::pgbackup::{PostgresBackupStatus, VerificationStatus};
use crate::resources::model::fixtures::model;

const NOW: i64 = 1_800_000_000;

fn at(secs: i64) -> String {
    jiff::Timestamp::from_second(secs).unwrap().to_string()
}

fn backup(name: &str, phase: &str, verification: Option<(&str, Option<i64>)>) -> PostgresBackup {
    let mut b: PostgresBackup = serde_json::from_value(json!({
        "apiVersion": "capstan.dev/v1alpha1", "kind": "PostgresBackup",
        "metadata": {"name": name, "namespace": "ns", "uid": format!("uid-{name}")},
        "spec": {"cluster": "db"}
    }))
    .unwrap();
    b.status = Some(PostgresBackupStatus {
        phase: Some(phase.into()),
        label: Some(format!("{name}-label-F")),
        repository: Some("repo1".into()),
        size: Some(1024),
        verification: verification.map(|(p, started)| VerificationStatus {
            phase: p.into(),
            started_at: started.map(at),
            pod: (p == phase::RUNNING).then(|| names::verify_pod(name)),
            ..VerificationStatus::default()
        }),
        ..PostgresBackupStatus::default()
    });
    b
}

fn verify_pod(backup_name: &str, created: i64, state: Option<ContainerState>) -> Pod {
    let mut p = verify::pod(
        &model(),
        &verify::Request {
            backup: backup_name.into(),
            backup_uid: "u".into(),
            label: "L".into(),
            repository: 1,
            size: None,
        },
    );
    p.metadata.creation_timestamp = Some(Time(jiff::Timestamp::from_second(created).unwrap()));
    p.status = Some(PodStatus {
        phase: Some("Pending".into()),
        container_statuses: state.map(|s| {
            vec![ContainerStatus {
                name: "verify".into(),
                state: Some(s),
                ..ContainerStatus::default()
            }]
        }),
        ..PodStatus::default()
    });
    p
}

fn running() -> Option<ContainerState> {
    Some(ContainerState {
        running: Some(ContainerStateRunning::default()),
        ..ContainerState::default()
    })
}

fn ended(code: i32, message: &str) -> Option<ContainerState> {
    Some(ContainerState {
        terminated: Some(ContainerStateTerminated {
            exit_code: code,
            message: Some(message.into()),
            ..ContainerStateTerminated::default()
        }),
        ..ContainerState::default()
    })
}

fn decide_on(backups: &[PostgresBackup], pods: &[Pod]) -> Decision {
    decide(&Input {
        model: &model(),
        backups,
        pods,
        inventory: &[],
        now: NOW,
    })
}

#[test]
fn a_backup_retention_expired_before_its_turn_is_skipped_not_failed() {
    use crate::contract::backup::RepositoryInventory;
    let mut waiting = backup("a", "Verifying", Some(("Pending", None)));
    waiting.status.as_mut().unwrap().stopped_at = Some(at(NOW - 600));
    let listing = |labels: Vec<String>, read: i64| RepositoryInventory {
        repository: 1,
        read_at: at(read),
        labels,
        first_recoverability_point: None,
        last_backup_at: None,
    };
    let decide_with = |inventory: &[RepositoryInventory]| {
        decide(&Input {
            model: &model(),
            backups: std::slice::from_ref(&waiting),
            pods: &[],
            inventory,
            now: NOW,
        })
    };
    // Listed, or a listing older than the backup: verified as usual.
    let held = [listing(vec!["a-label-F".into(), "b-label-F".into()], NOW)];
    assert!(matches!(decide_with(&held).step, Some(Step::Start { .. })));
    let stale = [listing(vec!["b-label-F".into()], NOW - 900)];
    assert!(matches!(decide_with(&stale).step, Some(Step::Start { .. })));
    // Gone by a listing read after it ended: skipped, with why.
    let gone = [listing(vec!["b-label-F".into()], NOW)];
    match decide_with(&gone).step {
        Some(Step::Finish {
            backup,
            pod: None,
            outcome: Outcome::Expired(message),
        }) => {
            assert_eq!(backup, "a");
            assert!(
                message.contains("retention expired a-label-F from repo1"),
                "{message}"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn nothing_to_verify_means_nothing_to_do() {
    let d = decide_on(&[backup("a", "Completed", Some(("Passed", None)))], &[]);
    assert_eq!(d, Decision::default());
}

#[test]
fn the_oldest_waiting_backup_gets_a_pod_one_at_a_time() {
    let backups = [
        backup("a", "Verifying", Some(("Pending", None))),
        backup("b", "Verifying", Some(("Pending", None))),
    ];
    let d = decide_on(&backups, &[]);
    assert!(d.active);
    let Some(Step::Start { backup, pod }) = d.step else {
        panic!("{:?}", d.step)
    };
    assert_eq!(backup, "a");
    assert_eq!(pod.metadata.name.as_deref(), Some("a-verify"));
    let owner = &pod.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(owner.uid, "uid-a");
    let cmd = pod.spec.as_ref().unwrap().containers[0]
        .command
        .as_ref()
        .unwrap()
        .join(" ");
    assert!(cmd.contains("--label a-label-F --repository 1"), "{cmd}");
    // While a's pod runs, b waits.
    let d = decide_on(&backups, &[verify_pod("a", NOW - 5, running())]);
    assert!(matches!(d.step, Some(Step::Adopt { ref backup, .. }) if backup == "a"));
}

#[test]
fn a_running_pod_is_followed_and_a_restarted_operator_adopts_it() {
    let recorded = [backup("a", "Verifying", Some(("Running", Some(NOW - 10))))];
    let pods = [verify_pod("a", NOW - 10, running())];
    let d = decide_on(&recorded, &pods);
    assert_eq!(d.step, None);
    assert!(d.active, "followed closely");
    // Created, then the operator stopped before recording it: no second pod.
    let unrecorded = [backup("a", "Verifying", Some(("Pending", None)))];
    let d = decide_on(&unrecorded, &pods);
    assert_eq!(
        d.step,
        Some(Step::Adopt {
            backup: "a".into(),
            pod: "a-verify".into()
        })
    );
}

#[test]
fn the_pods_result_is_recorded_then_the_pod_deleted() {
    let r = VerifyResult {
        passed: true,
        label: "L".into(),
        total_seconds: 3.0,
        ..VerifyResult::default()
    };
    let backups = [backup("a", "Verifying", Some(("Running", Some(NOW - 10))))];
    let d = decide_on(
        &backups,
        &[verify_pod("a", NOW - 10, ended(0, &r.to_message()))],
    );
    assert_eq!(
        d.step,
        Some(Step::Finish {
            backup: "a".into(),
            pod: Some("a-verify".into()),
            outcome: Outcome::Reported(r),
        })
    );
    // A crash without a result: the log's end (FallbackToLogsOnError).
    let d = decide_on(
        &backups,
        &[verify_pod("a", NOW - 10, ended(137, "line 1\nkilled\n"))],
    );
    let Some(Step::Finish {
        outcome: Outcome::Failed(m),
        ..
    }) = d.step
    else {
        panic!("{:?}", d.step)
    };
    assert!(
        m.contains("exit code 137") && m.contains("line 1 | killed"),
        "{m}"
    );
}

#[test]
fn a_pod_that_cannot_start_fails_after_a_bounded_time() {
    let backups = [backup("a", "Verifying", Some(("Running", Some(NOW - 400))))];
    let waiting = Some(ContainerState {
        waiting: Some(ContainerStateWaiting {
            reason: Some("ErrImagePull".into()),
            message: Some("no such image".into()),
        }),
        ..ContainerState::default()
    });
    let young = verify_pod("a", NOW - 60, waiting.clone());
    assert_eq!(
        decide_on(&backups, &[young]).step,
        None,
        "still within the bound"
    );
    let old = verify_pod("a", NOW - START_TIMEOUT_SECS - 1, waiting);
    let Some(Step::Finish {
        pod: Some(pod),
        outcome: Outcome::Failed(m),
        ..
    }) = decide_on(&backups, &[old]).step
    else {
        panic!()
    };
    assert_eq!(pod, "a-verify");
    assert!(
        m.contains("did not start") && m.contains("ErrImagePull: no such image"),
        "{m}"
    );
    // Unschedulable: the scheduler's words.
    let mut unscheduled = verify_pod("a", NOW - START_TIMEOUT_SECS - 1, None);
    unscheduled.status.as_mut().unwrap().conditions = Some(vec![PodCondition {
        type_: "PodScheduled".into(),
        status: "False".into(),
        message: Some("0/3 nodes are available: Insufficient memory".into()),
        ..PodCondition::default()
    }]);
    let Some(Step::Finish {
        outcome: Outcome::Failed(m),
        ..
    }) = decide_on(&backups, &[unscheduled]).step
    else {
        panic!()
    };
    assert!(m.contains("not scheduled: 0/3 nodes"), "{m}");
}

#[test]
fn a_pod_that_vanished_fails_the_verification_after_a_grace() {
    let fresh = [backup("a", "Verifying", Some(("Running", Some(NOW - 5))))];
    assert_eq!(decide_on(&fresh, &[]).step, None, "the watch may be behind");
    let stale = [backup("a", "Verifying", Some(("Running", Some(NOW - 60))))];
    let Some(Step::Finish {
        pod: None,
        outcome: Outcome::Failed(m),
        ..
    }) = decide_on(&stale, &[]).step
    else {
        panic!()
    };
    assert!(m.contains("a-verify disappeared"), "{m}");
}

#[test]
fn a_pod_ended_by_its_deadline_says_so() {
    let backups = [backup("a", "Verifying", Some(("Running", Some(NOW - 10))))];
    let mut p = verify_pod("a", NOW - 10, running());
    let s = p.status.as_mut().unwrap();
    s.phase = Some("Failed".into());
    s.reason = Some("DeadlineExceeded".into());
    s.container_statuses = None;
    let Some(Step::Finish {
        outcome: Outcome::Failed(m),
        ..
    }) = decide_on(&backups, &[p]).step
    else {
        panic!()
    };
    assert!(m.contains("DeadlineExceeded"), "{m}");
}

#[test]
fn pods_of_finished_or_deleted_backups_are_orphans() {
    let backups = [
        backup("a", "Completed", Some(("Passed", None))),
        backup("b", "Verifying", Some(("Running", Some(NOW - 5)))),
    ];
    let pods = [
        verify_pod("a", NOW - 100, ended(0, "{}")),
        verify_pod("gone", NOW - 100, running()),
        verify_pod("b", NOW - 5, running()),
    ];
    let d = decide_on(&backups, &pods);
    assert_eq!(d.orphans, ["a-verify", "gone-verify"]);
    assert_eq!(d.step, None);
}

#[test]
fn the_newest_finished_verification_decides_the_condition() {
    let mut a = backup("a", "Completed", Some(("Failed", None)));
    a.status
        .as_mut()
        .unwrap()
        .verification
        .as_mut()
        .unwrap()
        .finished_at = Some(at(NOW - 100));
    a.status
        .as_mut()
        .unwrap()
        .verification
        .as_mut()
        .unwrap()
        .message = Some("no sentinel".into());
    let mut b = backup("b", "Completed", Some(("Passed", None)));
    b.status
        .as_mut()
        .unwrap()
        .verification
        .as_mut()
        .unwrap()
        .finished_at = Some(at(NOW - 10));
    assert_eq!(
        latest(&[a.clone()]),
        Some((false, "a".into(), "no sentinel".into()))
    );
    assert_eq!(latest(&[a.clone(), b]).map(|l| l.0), Some(true));
    assert_eq!(
        latest(&[backup("c", "Verifying", Some(("Running", None)))]),
        None
    );
}

#[test]
fn results_read_as_a_sentence() {
    let r = VerifyResult {
        passed: true,
        label: "20261204-100000F".into(),
        restore_seconds: Some(1.23),
        recovery_seconds: Some(0.5),
        checks_seconds: Some(0.25),
        total_seconds: 2.2,
        databases: 3,
        amcheck: Some("Passed".into()),
        sentinel_found: Some(true),
        error: None,
    };
    let text = describe(&r);
    assert!(text.starts_with("restored 20261204-100000F and checked it in 2.2s (restore 1.2s, recovery 0.5s, checks 0.2s)"), "{text}");
    assert!(
        text.contains("3 database(s)") && text.contains("sentinel"),
        "{text}"
    );
    let failed = VerifyResult {
        error: Some("ERROR: [075]: no backup".into()),
        ..VerifyResult::default()
    };
    assert_eq!(describe(&failed), "ERROR: [075]: no backup");
}

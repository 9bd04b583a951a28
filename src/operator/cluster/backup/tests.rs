use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Pod, PodCondition, PodStatus};
use serde_json::json;

use super::*;
use crate::api::pgbackup::PostgresBackupStatus;
use crate::contract::backup::ArchiveReport;

fn spec() -> BackupSpec {
    serde_json::from_value(json!({"repositories": [
        {"name": "repo1", "s3": {"endpoint": "s3.store", "region": "r", "bucket": "bkt",
                                 "credentials": {"secretName": "k"}}},
        {"name": "repo2", "s3": {"endpoint": "s3.other", "region": "r", "bucket": "bkt",
                                 "credentials": {"secretName": "k"}}}
    ]}))
    .unwrap()
}

fn backup(name: &str, kind: &str, repo: Option<&str>, phase: Option<&str>) -> PostgresBackup {
    let mut b: PostgresBackup = serde_json::from_value(json!({
        "apiVersion": "capstan.dev/v1alpha1", "kind": "PostgresBackup",
        "metadata": {"name": name, "namespace": "ns"},
        "spec": {"cluster": "db", "type": kind, "repository": repo}
    }))
    .unwrap();
    b.status = phase.map(|p| PostgresBackupStatus {
        phase: Some(p.into()),
        instance: Some("db-1".into()),
        ..PostgresBackupStatus::default()
    });
    b
}

fn ready_pod() -> Pod {
    Pod {
        status: Some(PodStatus {
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: "True".into(),
                ..PodCondition::default()
            }]),
            ..PodStatus::default()
        }),
        ..Pod::default()
    }
}

fn primary(
    archive: Option<ArchiveReport>,
    job: Option<BackupJob>,
) -> BTreeMap<String, InstanceReport> {
    [(
        "db-1".to_string(),
        InstanceReport {
            name: "db-1".into(),
            role: Role::Primary,
            running: true,
            ready: true,
            archive,
            backup: job,
            ..InstanceReport::default()
        },
    )]
    .into()
}

fn archiving() -> Option<ArchiveReport> {
    Some(ArchiveReport {
        stanza_ready: true,
        ..ArchiveReport::default()
    })
}

fn job(name: &str, phase: JobPhase) -> BackupJob {
    BackupJob {
        backup: name.into(),
        kind: BackupType::Full,
        repository: 1,
        phase,
        started_at: "2026-12-04T10:00:00Z".into(),
        finished_at: None,
        result: None,
        message: None,
    }
}

fn decide_with(
    spec: Option<&BackupSpec>,
    backups: &[PostgresBackup],
    reports: &BTreeMap<String, InstanceReport>,
) -> Decision {
    let pod = ready_pod();
    let ready: Vec<String> = reports.keys().filter(|n| *n != "db-1").cloned().collect();
    decide(&Input {
        spec,
        backups,
        target_primary: "db-1",
        primary_pod: Some(&pod),
        ready_replicas: &ready,
        reports,
    })
}

#[test]
fn the_oldest_pending_backup_starts_on_the_primary_in_its_repository() {
    let s = spec();
    let backups = [
        backup("b1", "incremental", Some("repo2"), None),
        backup("b2", "full", None, None),
    ];
    let d = decide_with(Some(&s), &backups, &primary(archiving(), None));
    assert_eq!(
        d.step,
        Some(Step::Start {
            backup: "b1".into(),
            instance: "db-1".into(),
            request: BackupRequest {
                backup: "b1".into(),
                kind: BackupType::Incr,
                repository: 2,
                standby: false,
            },
            sentinel_on: None,
        })
    );
    // Without a repository named, the first one listed.
    let d = decide_with(Some(&s), &backups[1..], &primary(archiving(), None));
    assert!(matches!(d.step, Some(Step::Start { request, .. }) if request.repository == 1));
}

#[test]
fn a_running_backup_is_followed_to_its_end_before_another_starts() {
    let s = spec();
    let backups = [
        backup("b1", "full", None, Some(phase::COMPLETED)),
        backup("b2", "full", None, Some(phase::RUNNING)),
        backup("b3", "full", None, None),
    ];
    let running = primary(archiving(), Some(job("b2", JobPhase::Running)));
    let d = decide_with(Some(&s), &backups, &running);
    assert_eq!(
        d,
        Decision {
            step: None,
            running: Some(Running {
                backup: "b2".into(),
                instance: "db-1".into()
            })
        }
    );

    let done = primary(archiving(), Some(job("b2", JobPhase::Completed)));
    let d = decide_with(Some(&s), &backups, &done);
    assert!(matches!(d.step, Some(Step::Finish { ref backup, .. }) if backup == "b2"));
    assert_eq!(d.running, None);

    // The instance no longer knows the job (it restarted): failed.
    let forgot = primary(archiving(), None);
    let d = decide_with(Some(&s), &backups, &forgot);
    assert!(
        matches!(d.step, Some(Step::Reject { ref backup, ref message }) if backup == "b2" && message.contains("restarted"))
    );
    // Unreachable: no decision until it answers.
    let d = decide_with(Some(&s), &backups, &BTreeMap::new());
    assert_eq!(
        d,
        Decision {
            step: None,
            running: Some(Running {
                backup: "b2".into(),
                instance: "db-1".into()
            })
        }
    );
}

#[test]
fn a_backup_waits_for_a_ready_primary_and_its_stanza() {
    let s = spec();
    let backups = [backup("b1", "full", None, None)];
    let being_created = ArchiveReport {
        stanza_ready: false,
        ..ArchiveReport::default()
    };
    let d = decide_with(Some(&s), &backups, &primary(Some(being_created), None));
    assert!(
        matches!(d.step, Some(Step::Wait { ref message, .. }) if message.contains("stanza is being created")),
        "{d:?}"
    );
    // A stanza that failed may never come: the backup is tried, so it ends
    // (as Failed with pgBackRest's message, if the repository still fails).
    for error in [
        "ERROR: [039]: HTTP request failed with 403 (Forbidden)",
        "backups are configured but pgBackRest is not at /usr/bin/pgbackrest: set spec.postgres.image …",
    ] {
        let failed = ArchiveReport {
            stanza_ready: false,
            stanza_error: Some(error.into()),
            ..ArchiveReport::default()
        };
        let d = decide_with(Some(&s), &backups, &primary(Some(failed), None));
        assert!(
            matches!(d.step, Some(Step::Start { ref instance, .. }) if instance == "db-1"),
            "{error}: {d:?}"
        );
    }
    let d = decide_with(Some(&s), &backups, &primary(None, None));
    assert!(matches!(d.step, Some(Step::Wait { .. })));
    let d = decide(&Input {
        spec: Some(&s),
        backups: &backups,
        target_primary: "db-1",
        primary_pod: None,
        ready_replicas: &[],
        reports: &primary(archiving(), None),
    });
    assert!(
        matches!(d.step, Some(Step::Wait { ref message, .. }) if message.contains("primary db-1"))
    );
}

#[test]
fn a_backup_the_cluster_cannot_take_is_rejected_with_the_fix() {
    let backups = [backup("b1", "full", Some("repo3"), None)];
    let d = decide_with(Some(&spec()), &backups, &primary(archiving(), None));
    assert!(
        matches!(d.step, Some(Step::Reject { ref message, .. }) if message.contains("repo3") && message.contains("repo1, repo2"))
    );
    let d = decide_with(None, &backups, &primary(archiving(), None));
    assert!(
        matches!(d.step, Some(Step::Reject { ref message, .. }) if message.contains("no spec.backup"))
    );
}

#[test]
fn finished_backups_need_nothing() {
    let backups = [
        backup("b1", "full", None, Some(phase::COMPLETED)),
        backup("b2", "full", None, Some(phase::FAILED)),
    ];
    assert_eq!(
        decide_with(Some(&spec()), &backups, &primary(archiving(), None)),
        Decision::default()
    );
}

#[test]
fn status_shows_the_newest_completed_backup_and_the_primarys_archiving() {
    let s = spec();
    let done = |name: &str, label: &str, stopped: &str| {
        let mut b = backup(name, "full", None, Some(phase::COMPLETED));
        let st = b.status.as_mut().unwrap();
        st.label = Some(label.into());
        st.stopped_at = Some(stopped.into());
        st.repository = Some("repo1".into());
        b
    };
    let backups = [
        done("b2", "20261204-110000F", "2026-12-04T11:05:00Z"),
        done("b1", "20261204-100000F", "2026-12-04T10:05:00Z"),
        backup("b3", "full", None, Some(phase::FAILED)),
    ];
    let report = InstanceReport {
        archive: Some(ArchiveReport {
            stanza_ready: true,
            last_archived_wal: Some("000000010000000000000007".into()),
            last_archived_at: Some("2026-12-04T11:06:00Z".into()),
            last_failed_wal: Some("000000010000000000000006".into()),
            last_failed_at: Some("2026-12-04T11:00:00Z".into()),
            failed_count: 2,
            ..ArchiveReport::default()
        }),
        ..InstanceReport::default()
    };
    let none = crate::operator::cluster::schedule::Decision::default();
    let st = status(Some(&s), &backups, &none, Some(&report), None).unwrap();
    let last = st.last_successful_backup.unwrap();
    assert_eq!(
        (last.name.as_str(), last.label.as_str()),
        ("b2", "20261204-110000F")
    );
    assert_eq!(
        st.last_archived_wal.unwrap().wal,
        "000000010000000000000007"
    );
    let failure = st.last_archive_failure.unwrap();
    assert!(
        failure.message.contains("2 failures"),
        "{}",
        failure.message
    );
    // Without spec.backup there is no status.backup; an unreachable
    // primary keeps what was known.
    assert!(status(None, &backups, &none, Some(&report), None).is_none());
    let kept = status(
        Some(&s),
        &[],
        &none,
        None,
        Some(&BackupStatus {
            last_archived_wal: Some(ArchivedWal {
                wal: "w".into(),
                time: "t".into(),
            }),
            ..BackupStatus::default()
        }),
    )
    .unwrap();
    assert_eq!(kept.last_archived_wal.unwrap().wal, "w");
}

#[test]
fn status_shows_the_schedules_and_the_first_recoverability_point() {
    use crate::api::status::{ScheduleStatus, ScheduledBackup};
    use crate::contract::backup::RepositoryInventory;
    use crate::operator::cluster::schedule::Decision;
    let decision = Decision {
        status: vec![ScheduleStatus {
            name: "nightly".into(),
            schedule: "0 1 * * *".into(),
            next: "2026-12-05T01:00:00Z".into(),
            last_backup: Some("db-nightly-202612040100".into()),
        }],
        next: Some(ScheduledBackup {
            schedule: "nightly".into(),
            type_: ApiType::Full,
            time: "2026-12-05T01:00:00Z".into(),
        }),
        ..Decision::default()
    };
    let held = |repository: u32, first: Option<&str>| RepositoryInventory {
        repository,
        read_at: "2026-12-04T10:00:00.000000Z".into(),
        first_recoverability_point: first.map(str::to_string),
        ..RepositoryInventory::default()
    };
    let report = |repositories: Vec<RepositoryInventory>| InstanceReport {
        archive: Some(ArchiveReport {
            stanza_ready: true,
            repositories,
            ..ArchiveReport::default()
        }),
        ..InstanceReport::default()
    };
    let primary = report(vec![
        held(1, Some("2026-12-01T01:05:00.000000Z")),
        held(2, Some("2026-11-30T02:00:00.500000Z")),
        held(3, None),
    ]);
    let st = status(Some(&spec()), &[], &decision, Some(&primary), None).unwrap();
    assert_eq!(st.schedules, decision.status);
    assert_eq!(st.next_scheduled, decision.next);
    // The earliest point any repository reaches.
    assert_eq!(
        st.first_recoverability_point.as_deref(),
        Some("2026-11-30T02:00:00.5Z")
    );
    // Not read (yet): kept as it was.
    let kept = status(
        Some(&spec()),
        &[],
        &Decision::default(),
        Some(&report(vec![])),
        Some(&st),
    )
    .unwrap();
    assert_eq!(
        kept.first_recoverability_point,
        st.first_recoverability_point
    );
    assert!(kept.schedules.is_empty() && kept.next_scheduled.is_none());
}

#[test]
fn the_archiving_condition_follows_the_primarys_archiver() {
    let s = spec();
    let report = |a: ArchiveReport| InstanceReport {
        archive: Some(a),
        ..InstanceReport::default()
    };
    let at = |archived: Option<&str>, failed: Option<&str>| ArchiveReport {
        stanza_ready: true,
        last_archived_wal: archived.map(|_| "000000010000000000000007".into()),
        last_archived_at: archived.map(Into::into),
        last_failed_wal: failed.map(|_| "000000010000000000000008".into()),
        last_failed_at: failed.map(Into::into),
        failed_count: u64::from(failed.is_some()) * 3,
        ..ArchiveReport::default()
    };
    // Nothing to say: no backups, no report, a stanza still being created.
    assert_eq!(super::archiving(None, Some(&report(at(None, None)))), None);
    assert_eq!(super::archiving(Some(&s), None), None);
    assert_eq!(
        super::archiving(Some(&s), Some(&report(ArchiveReport::default()))),
        None
    );

    let ok = super::archiving(
        Some(&s),
        Some(&report(at(Some("2026-12-04T11:06:00Z"), None))),
    )
    .unwrap();
    assert!(ok.ok);
    assert!(
        ok.message.contains("000000010000000000000007"),
        "{}",
        ok.message
    );
    // A failure older than the last success is over.
    let recovered = super::archiving(
        Some(&s),
        Some(&report(at(
            Some("2026-12-04T11:06:00Z"),
            Some("2026-12-04T11:00:00Z"),
        ))),
    )
    .unwrap();
    assert!(recovered.ok);
    for (archived, failed) in [
        (Some("2026-12-04T11:00:00Z"), Some("2026-12-04T11:06:00Z")),
        (None, Some("2026-12-04T11:06:00Z")),
    ] {
        let failing = super::archiving(Some(&s), Some(&report(at(archived, failed)))).unwrap();
        assert!(!failing.ok);
        assert_eq!(failing.reason, "ArchiveFailing");
        assert!(
            failing.message.contains("000000010000000000000008")
                && failing.message.contains("3 failures"),
            "{}",
            failing.message
        );
    }
    // No pgBackRest in the image, or a refused stanza: said with its cause.
    let missing = super::archiving(
        Some(&s),
        Some(&report(ArchiveReport {
            stanza_error: Some("pgBackRest is not in this image; set spec.postgres.image".into()),
            ..ArchiveReport::default()
        })),
    )
    .unwrap();
    assert!(!missing.ok);
    assert_eq!(missing.reason, "RepositoryNotReady");
    assert!(
        missing.message.contains("spec.postgres.image"),
        "{}",
        missing.message
    );
}

#[test]
fn full_backups_are_verified_by_default_and_spec_verify_decides_otherwise() {
    let on = spec();
    let mut off = spec();
    off.verify.enabled = false;
    let b = backup("b", "full", None, Some(phase::RUNNING));
    assert_eq!(
        verification_wanted(Some(&on), &b, "20261204-100000F"),
        Ok(())
    );
    let incr = "20261204-100000F_20261204-110000I";
    let e = verification_wanted(Some(&on), &b, incr).unwrap_err();
    assert!(e.contains("spec.verify: true"), "{e}");
    assert!(verification_wanted(Some(&off), &b, "20261204-100000F").is_err());
    let mut asked = b.clone();
    asked.spec.verify = Some(true);
    assert_eq!(verification_wanted(Some(&off), &asked, incr), Ok(()));
    asked.spec.verify = Some(false);
    assert!(verification_wanted(Some(&on), &asked, "20261204-100000F").is_err());
    // Verifying counts as taken: the schedule's next run need not wait.
    assert!(!not_taken(&backup(
        "v",
        "full",
        None,
        Some(phase::VERIFYING)
    )));
    assert!(in_flight(&backup(
        "v",
        "full",
        None,
        Some(phase::VERIFYING)
    )));
    assert!(not_taken(&backup("p", "full", None, None)));
}

#[test]
fn a_backup_that_failed_its_verification_is_not_the_last_successful_one() {
    use crate::api::pgbackup::VerificationStatus;
    let s = spec();
    let done = |name: &str, label: &str, stopped: &str, verified: &str| {
        let mut b = backup(name, "full", None, Some(phase::COMPLETED));
        let st = b.status.as_mut().unwrap();
        st.label = Some(label.into());
        st.stopped_at = Some(stopped.into());
        st.verification = Some(VerificationStatus {
            phase: verified.into(),
            ..VerificationStatus::default()
        });
        b
    };
    let none = crate::operator::cluster::schedule::Decision::default();
    let older = done("b1", "20261204-100000F", "2026-12-04T10:05:00Z", "Passed");
    let newer = done("b2", "20261204-110000F", "2026-12-04T11:05:00Z", "Failed");
    let st = status(Some(&s), &[older.clone(), newer.clone()], &none, None, None).unwrap();
    assert_eq!(st.last_successful_backup.unwrap().name, "b1");
    // Recorded while b2 was being verified, then its restore failed: b2
    // goes, even with no other backup left to name.
    let was = BackupStatus {
        last_successful_backup: Some(BackupReference {
            name: "b2".into(),
            label: "20261204-110000F".into(),
            type_: ApiType::Full,
            repository: "repo1".into(),
            completed_at: "2026-12-04T11:05:00Z".into(),
        }),
        ..BackupStatus::default()
    };
    let st = status(Some(&s), &[newer], &none, None, Some(&was)).unwrap();
    assert_eq!(st.last_successful_backup, None);
    let st = status(Some(&s), &[older], &none, None, Some(&was)).unwrap();
    assert_eq!(st.last_successful_backup.unwrap().name, "b1");
}

fn replica(name: &str, lag: u64, receiver: &str) -> InstanceReport {
    InstanceReport {
        name: name.into(),
        role: Role::Replica,
        running: true,
        ready: true,
        lag_bytes: Some(lag),
        wal_receiver: Some(receiver.into()),
        ..InstanceReport::default()
    }
}

fn on_replicas() -> BackupSpec {
    let mut s = spec();
    s.target = BackupTarget::PreferReplica;
    s
}

fn started_on(d: &Decision) -> (String, bool, Option<String>) {
    match &d.step {
        Some(Step::Start {
            instance,
            request,
            sentinel_on,
            ..
        }) => (instance.clone(), request.standby, sentinel_on.clone()),
        other => panic!("{other:?}"),
    }
}

#[test]
fn prefer_replica_takes_a_streaming_asynchronous_replica_least_behind() {
    let s = on_replicas();
    let backups = [backup("b1", "full", None, None)];
    let mut reports = primary(archiving(), None);
    reports.insert("db-2".into(), replica("db-2", 4096, "streaming"));
    reports.insert("db-3".into(), replica("db-3", 0, "streaming"));
    let d = decide_with(Some(&s), &backups, &reports);
    // The standby takes it; the primary writes the sentinel first.
    assert_eq!(started_on(&d), ("db-3".into(), true, Some("db-1".into())));
    // A synchronous standby only when no asynchronous one streams.
    reports.get_mut("db-1").unwrap().standbys = vec![crate::contract::instance::StandbyReport {
        name: "db-3".into(),
        state: "streaming".into(),
        sync_state: "sync".into(),
        flush_lsn: None,
        replay_lsn: None,
    }];
    let d = decide_with(Some(&s), &backups, &reports);
    assert_eq!(started_on(&d).0, "db-2");
    // One that does not stream (catching up from the archive) is skipped.
    reports.insert("db-2".into(), replica("db-2", 0, "stopped"));
    let d = decide_with(Some(&s), &backups, &reports);
    assert_eq!(started_on(&d).0, "db-3");
}

#[test]
fn prefer_replica_falls_back_to_the_primary() {
    let s = on_replicas();
    let backups = [backup("b1", "full", None, None)];
    // No replica at all.
    let d = decide_with(Some(&s), &backups, &primary(archiving(), None));
    assert_eq!(started_on(&d), ("db-1".into(), false, None));
    // A replica whose pod is not ready (not in ready_replicas).
    let mut reports = primary(archiving(), None);
    reports.insert("db-2".into(), replica("db-2", 0, "streaming"));
    let pod = ready_pod();
    let d = decide(&Input {
        spec: Some(&s),
        backups: &backups,
        target_primary: "db-1",
        primary_pod: Some(&pod),
        ready_replicas: &[],
        reports: &reports,
    });
    assert_eq!(started_on(&d), ("db-1".into(), false, None));
    // With target primary, a streaming replica is not used.
    let d = decide_with(Some(&spec()), &backups, &reports);
    assert_eq!(started_on(&d), ("db-1".into(), false, None));
}

#[test]
fn a_backup_running_on_a_replica_is_followed_there() {
    let s = on_replicas();
    let mut b = backup("b1", "full", None, Some(phase::RUNNING));
    b.status.as_mut().unwrap().instance = Some("db-2".into());
    let mut reports = primary(archiving(), None);
    let mut r = replica("db-2", 0, "streaming");
    r.backup = Some(job("b1", JobPhase::Running));
    reports.insert("db-2".into(), r);
    let d = decide_with(Some(&s), std::slice::from_ref(&b), &reports);
    assert_eq!(d.step, None);
    assert_eq!(
        d.running,
        Some(Running {
            backup: "b1".into(),
            instance: "db-2".into()
        })
    );
    reports.get_mut("db-2").unwrap().backup = Some(job("b1", JobPhase::Completed));
    let d = decide_with(Some(&s), std::slice::from_ref(&b), &reports);
    assert!(matches!(d.step, Some(Step::Finish { .. })), "{:?}", d.step);
}

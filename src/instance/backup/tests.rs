use super::*;
use crate::contract::backup::BackupType;

fn request(name: &str) -> BackupRequest {
    BackupRequest {
        backup: name.into(),
        kind: BackupType::Full,
        repository: 1,
        standby: false,
    }
}

fn job(name: &str, phase: JobPhase) -> BackupJob {
    BackupJob {
        backup: name.into(),
        kind: BackupType::Full,
        repository: 1,
        phase,
        started_at: "2026-12-04T10:00:00.000000Z".into(),
        finished_at: None,
        result: None,
        message: None,
    }
}

#[test]
fn one_backup_at_a_time_and_the_same_one_is_answered_with_its_job() {
    assert_eq!(admit(None, &request("a"), true, 1), Admission::Start);
    let running = job("a", JobPhase::Running);
    assert_eq!(
        admit(Some(&running), &request("a"), true, 1),
        Admission::Existing(Box::new(running.clone()))
    );
    match admit(Some(&running), &request("b"), true, 1) {
        Admission::Refused(CommandError::Conflict(m)) => {
            assert!(m.contains("backup a is running"), "{m}");
            assert!(m.contains("b must wait"), "{m}");
        }
        other => panic!("{other:?}"),
    }
    // Finished: the next one may start; the finished one still answers.
    let done = job("a", JobPhase::Failed);
    assert_eq!(admit(Some(&done), &request("b"), true, 1), Admission::Start);
    assert_eq!(
        admit(Some(&done), &request("a"), true, 1),
        Admission::Existing(Box::new(done.clone()))
    );
}

#[test]
fn replicas_refuse_and_unknown_repositories_are_refused() {
    match admit(None, &request("a"), false, 1) {
        Admission::Refused(CommandError::Conflict(m)) => {
            assert!(m.contains("backups run on the primary"), "{m}")
        }
        other => panic!("{other:?}"),
    }
    // A standby backup runs on a replica, never on the primary.
    let mut on_standby = request("a");
    on_standby.standby = true;
    assert_eq!(admit(None, &on_standby, false, 1), Admission::Start);
    match admit(None, &on_standby, true, 1) {
        Admission::Refused(CommandError::Conflict(m)) => {
            assert!(m.contains("runs on a replica"), "{m}")
        }
        other => panic!("{other:?}"),
    }
    let mut r = request("a");
    r.repository = 2;
    assert!(matches!(
        admit(None, &r, true, 1),
        Admission::Refused(CommandError::Conflict(m)) if m.contains("repository 2 is not configured")
    ));
    r.repository = 0;
    assert!(matches!(admit(None, &r, true, 1), Admission::Refused(_)));
}

#[test]
fn the_stanza_is_created_once_per_version_and_retried_with_backoff() {
    let now = Instant::now();
    let mut s = StanzaState::default();
    assert!(s.due(1, now));
    s.running = true;
    assert!(!s.due(1, now), "not twice at once");
    s.failed(now, "ERROR: [049]: x".into());
    assert!(!s.due(1, now));
    assert!(s.due(1, now + STANZA_RETRY_MIN));
    s.failed(now, "again".into());
    assert!(!s.due(1, now + STANZA_RETRY_MIN));
    assert!(s.due(1, now + STANZA_RETRY_MIN * 2));
    s.succeeded(1);
    assert!(!s.due(1, now) && s.error.is_none());
    assert!(s.due(2, now), "a new configuration creates it again");
}

#[test]
fn finds_the_label_in_output_or_info() {
    let out = "P00   INFO: backup start archive = 000000010000000000000003\n\
               P00   INFO: new backup label = 20261204-191306F\n\
               P00   INFO: backup command end: completed successfully\n";
    assert_eq!(label_in_output(out).as_deref(), Some("20261204-191306F"));
    assert_eq!(label_in_output("nothing\n"), None);
    let backup = |label: &str, start: i64, kind: BackupType| info::Backup {
        label: label.into(),
        kind,
        start: jiff::Timestamp::from_second(start).unwrap(),
        stop: jiff::Timestamp::from_second(start + 5).unwrap(),
        wal_start: None,
        wal_stop: None,
        lsn_start: Some("0/2000028".into()),
        lsn_stop: None,
        size: 1,
        repo_delta: 1,
        repo_size: 1,
        prior: None,
        repo: 1,
        error: false,
    };
    let info = StanzaInfo {
        name: "db".into(),
        status_code: 0,
        status_message: "ok".into(),
        backup_running: false,
        backups: vec![
            backup("old", 1_000, BackupType::Full),
            backup("new", 2_000, BackupType::Full),
            backup("incr", 2_001, BackupType::Incr),
        ],
        archive: vec![],
        repos: vec![],
    };
    let started = jiff::Timestamp::from_second(2_000).unwrap();
    assert_eq!(
        label_in_info(&info, &request("a"), started).as_deref(),
        Some("new")
    );
    let later = jiff::Timestamp::from_second(3_000).unwrap();
    assert_eq!(label_in_info(&info, &request("a"), later), None);
    let r = result_of(&info.backups[1]);
    assert_eq!(r.label, "new");
    assert_eq!(r.lsn_start.as_deref(), Some("0/2000028"));
    assert_eq!(r.started_at.as_deref(), Some("1970-01-01T00:33:20.000000Z"));
}

#[test]
fn times_sort_as_text() {
    let a = rfc3339(jiff::Timestamp::from_second(1_000).unwrap());
    let b = rfc3339(jiff::Timestamp::from_microsecond(1_000_000_500).unwrap());
    assert_eq!(a, "1970-01-01T00:16:40.000000Z");
    assert!(a < b, "{a} {b}");
    assert_eq!(from_micros(None), None);
}

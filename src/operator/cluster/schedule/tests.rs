use serde_json::json;

use super::*;
use crate::api::backup::BackupType;
use crate::resources::model::fixtures;

fn at(t: &str) -> Timestamp {
    t.parse().unwrap()
}

fn schedule(name: &str, cron: &str) -> BackupSchedule {
    BackupSchedule {
        name: name.into(),
        type_: BackupType::Full,
        schedule: cron.into(),
        repository: None,
    }
}

fn cron(expression: &str) -> Cron {
    parse(&schedule("s", expression)).unwrap()
}

fn next(expression: &str, from: &str) -> String {
    next_after(&cron(expression), at(from)).unwrap().to_string()
}

fn latest(expression: &str, until: &str) -> String {
    latest_until(&cron(expression), at(until))
        .unwrap()
        .to_string()
}

#[test]
fn five_fields_in_utc_as_the_crd_describes_them() {
    // 2026-12-04 is a Friday.
    assert_eq!(
        next("0 1 * * 0", "2026-12-04T10:00:00Z"),
        "2026-12-06T01:00:00Z"
    );
    assert_eq!(
        next("0 1 * * SUN", "2026-12-04T10:00:00Z"),
        "2026-12-06T01:00:00Z"
    );
    assert_eq!(
        next("0 1 * * 7", "2026-12-04T10:00:00Z"),
        "2026-12-06T01:00:00Z"
    );
    assert_eq!(
        next("30 */6 * * *", "2026-12-04T10:00:00Z"),
        "2026-12-04T12:30:00Z"
    );
    // UTC whatever the offset of the time given: 01:30+02:00 is 23:30 UTC
    // the day before.
    assert_eq!(
        next("0 1 * * *", "2026-12-04T01:30:00+02:00"),
        "2026-12-04T01:00:00Z"
    );
    // Strictly after; the latest run includes the instant itself.
    assert_eq!(
        next("0 1 * * *", "2026-12-04T01:00:00Z"),
        "2026-12-05T01:00:00Z"
    );
    assert_eq!(
        latest("0 1 * * *", "2026-12-04T01:00:00Z"),
        "2026-12-04T01:00:00Z"
    );
    assert_eq!(
        latest("0 1 * * *", "2026-12-04T00:59:59.9Z"),
        "2026-12-03T01:00:00Z"
    );
    assert_eq!(
        next("0 1 * * *", "2026-12-04T00:59:59.9Z"),
        "2026-12-04T01:00:00Z"
    );
}

#[test]
fn month_and_day_fields() {
    // Quarterly, on the first.
    assert_eq!(
        next("0 0 1 */3 *", "2026-12-04T00:00:00Z"),
        "2027-01-01T00:00:00Z"
    );
    assert_eq!(
        next("0 0 1 JAN,jul *", "2027-01-01T00:00:00Z"),
        "2027-07-01T00:00:00Z"
    );
    // Both day fields restricted: either matches, as in cron (the 13th, or
    // a Friday), not only Fridays the 13th.
    assert_eq!(
        next("0 0 13 * 5", "2026-12-04T00:00:01Z"),
        "2026-12-11T00:00:00Z"
    );
    assert_eq!(
        next("0 0 13 * 5", "2026-12-11T00:00:00Z"),
        "2026-12-13T00:00:00Z"
    );
    // 29 February exists every few years.
    assert_eq!(
        next("0 0 29 2 *", "2026-12-04T00:00:00Z"),
        "2028-02-29T00:00:00Z"
    );
    assert_eq!(
        next("0 2 * * 1-5", "2026-12-05T03:00:00Z"),
        "2026-12-07T02:00:00Z"
    );
}

#[test]
fn what_cannot_be_read_names_the_schedule_and_the_fix() {
    for bad in [
        "61 * * * *",
        "0 24 * * *",
        "0 0 32 * *",
        "0 0 * 13 *",
        "0 0 * * 8",
        "0 0 * *",
        "0 0 1 * * *",
        "@daily",
        "0 0 * * 5#2",
        "0 0 * * +5",
        "x y z w v",
    ] {
        let e = parse(&schedule("nightly", bad)).unwrap_err();
        assert!(matches!(e, ScheduleError::Invalid { .. }), "{bad}: {e:?}");
        let text = e.to_string();
        assert!(
            text.starts_with("spec.backup.schedules[nightly].schedule"),
            "{text}"
        );
        assert!(text.contains("e.g. '0 1 * * 0'"), "{text}");
    }
    let never = parse(&schedule("leap", "0 0 30 2 *")).unwrap_err();
    assert_eq!(
        never,
        ScheduleError::Never {
            name: "leap".into(),
            expression: "0 0 30 2 *".into()
        }
    );
    assert!(never.to_string().contains("never falls on a real date"));
    let schedules = [schedule("ok", "0 1 * * *"), schedule("bad", "0 1 * *")];
    assert!(invalid(&schedules).unwrap().contains("schedules[bad]"));
    assert_eq!(invalid(&schedules[..1]), None);
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

#[test]
fn names_carry_the_run_and_fit_a_label() {
    let run = at("2026-12-04T01:00:00Z");
    assert_eq!(backup_name("db", "nightly", run), "db-nightly-202612040100");
    // The name is in UTC.
    assert_eq!(
        backup_name("db", "nightly", at("2026-12-04T03:30:00+02:00")),
        "db-nightly-202612040130"
    );
    let cluster = "c".repeat(crate::api::limits::CLUSTER_NAME_MAX);
    let long_a = "a".repeat(crate::api::limits::SCHEDULE_NAME_MAX);
    let long_b = format!("{}b", "a".repeat(crate::api::limits::SCHEDULE_NAME_MAX - 1));
    let a = backup_name(&cluster, &long_a, run);
    let b = backup_name(&cluster, &long_b, run);
    for name in [&a, &b] {
        assert_eq!(name.len(), 63, "{name}");
        assert!(is_dns_label(name), "{name}");
        assert!(name.ends_with("-202612040100"), "{name}");
        assert!(name.starts_with("ccc"), "{name}");
    }
    assert_ne!(a, b, "two schedules never share a name");
    // A cut that lands on a '-' leaves no double dash.
    let c = backup_name(&format!("{}-x", "d".repeat(40)), "nightly", run);
    assert!(is_dns_label(&c) && !c.contains("--"), "{c}");
    assert_eq!(backup_name(&cluster, &long_a, run), a, "stable");
}

#[test]
fn the_object_of_a_run() {
    let mut model = fixtures::model();
    model.spec.backup = Some(
        serde_json::from_value(json!({"repositories": [
            {"name": "repo2", "s3": {"endpoint": "s3.store", "region": "r", "bucket": "bkt",
                                     "credentials": {"secretName": "k"}}}]}))
        .unwrap(),
    );
    let mut s = schedule("hourly", "0 * * * *");
    s.type_ = BackupType::Incremental;
    let b = backup_object(&model, &s, at("2026-12-04T10:00:00Z"));
    assert_eq!(b.metadata.name.as_deref(), Some("db-hourly-202612041000"));
    assert_eq!(b.metadata.namespace.as_deref(), Some("ns"));
    assert_eq!(b.spec.cluster, "db");
    assert_eq!(b.spec.type_, BackupType::Incremental);
    // The repository is fixed when the run is: the first one listed.
    assert_eq!(b.spec.repository.as_deref(), Some("repo2"));
    assert_eq!(schedule_of(&b), Some("hourly"));
    assert_eq!(
        b.labels().get(labels::CLUSTER).map(String::as_str),
        Some("db")
    );
    assert_eq!(scheduled_at(&b), Some(at("2026-12-04T10:00:00Z")));
    let owner = &b.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("PostgresCluster", "db")
    );
    assert_eq!(owner.controller, Some(true));
    // What server-side apply sends names its kind.
    let body = serde_json::to_value(&b).unwrap();
    assert_eq!(body["kind"], "PostgresBackup");
    assert_eq!(body["apiVersion"], "capstan.dev/v1alpha1");
    s.repository = Some("repo3".into());
    assert_eq!(
        backup_object(&model, &s, at("2026-12-04T10:00:00Z"))
            .spec
            .repository
            .as_deref(),
        Some("repo3")
    );
}

/// An object `schedule` created for the run at `run`, in `phase`.
fn made(schedule_name: &str, run: &str, phase: Option<&str>) -> PostgresBackup {
    let model = fixtures::model();
    let mut b = backup_object(&model, &schedule(schedule_name, "0 1 * * *"), at(run));
    b.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(at(
        run,
    )));
    b.status = phase.map(|p| crate::api::pgbackup::PostgresBackupStatus {
        phase: Some(p.into()),
        ..Default::default()
    });
    b
}

fn entry(name: &str, cron: &str, next: &str) -> ScheduleStatus {
    ScheduleStatus {
        name: name.into(),
        schedule: cron.into(),
        next: next.into(),
        last_backup: None,
    }
}

fn decide_at(
    schedules: &[BackupSchedule],
    backups: &[PostgresBackup],
    previous: &[ScheduleStatus],
    now: &str,
) -> Decision {
    decide(&Input {
        cluster: "db",
        schedules,
        backups,
        previous,
        now: at(now),
    })
}

#[test]
fn a_new_schedule_waits_for_its_first_run() {
    let nightly = [schedule("nightly", "0 1 * * *")];
    let d = decide_at(&nightly, &[], &[], "2026-12-04T10:00:00Z");
    assert!(d.due.is_empty());
    assert_eq!(
        d.status,
        [entry("nightly", "0 1 * * *", "2026-12-05T01:00:00Z")]
    );
    assert_eq!(d.wake_at, Some(at("2026-12-05T01:00:00Z")));
    let next = d.next.unwrap();
    assert_eq!(
        (next.schedule.as_str(), next.time.as_str()),
        ("nightly", "2026-12-05T01:00:00Z")
    );
    assert_eq!(next.type_, BackupType::Full);
}

#[test]
fn a_due_schedule_creates_one_object_and_moves_on() {
    let nightly = [schedule("nightly", "0 1 * * *")];
    let previous = [entry("nightly", "0 1 * * *", "2026-12-05T01:00:00Z")];
    // Before the run: nothing.
    let d = decide_at(&nightly, &[], &previous, "2026-12-05T00:59:59Z");
    assert!(d.due.is_empty());
    assert_eq!(d.wake_at, Some(at("2026-12-05T01:00:00Z")));
    // At the run.
    let d = decide_at(&nightly, &[], &previous, "2026-12-05T01:00:01Z");
    assert_eq!(d.due.len(), 1);
    assert_eq!(d.due[0].at, at("2026-12-05T01:00:00Z"));
    assert_eq!(d.due[0].schedule.name, "nightly");
    assert_eq!(d.status[0].next, "2026-12-06T01:00:00Z");
    assert_eq!(
        d.status[0].last_backup.as_deref(),
        Some("db-nightly-202612050100")
    );
    assert_eq!(d.wake_at, Some(at("2026-12-06T01:00:00Z")));
    // The status written then: nothing more.
    let again = decide_at(
        &nightly,
        &[made("nightly", "2026-12-05T01:00:00Z", None)],
        &d.status,
        "2026-12-05T01:00:02Z",
    );
    assert!(again.due.is_empty());
    // The status write was lost, the object exists: still nothing.
    let lost = decide_at(
        &nightly,
        &[made("nightly", "2026-12-05T01:00:00Z", None)],
        &previous,
        "2026-12-05T01:00:02Z",
    );
    assert!(lost.due.is_empty(), "{lost:?}");
    assert_eq!(lost.status[0].next, "2026-12-06T01:00:00Z");
    assert_eq!(
        lost.status[0].last_backup.as_deref(),
        Some("db-nightly-202612050100")
    );
}

#[test]
fn runs_missed_while_the_operator_was_down_become_one() {
    let hourly = [schedule("hourly", "0 * * * *")];
    let previous = [entry("hourly", "0 * * * *", "2026-12-04T01:00:00Z")];
    let old = made("hourly", "2026-12-04T00:00:00Z", Some("Completed"));
    let d = decide_at(&hourly, &[old], &previous, "2026-12-04T07:20:00Z");
    assert_eq!(d.due.len(), 1, "{d:?}");
    assert_eq!(d.due[0].at, at("2026-12-04T07:00:00Z"), "the latest run");
    assert_eq!(d.status[0].next, "2026-12-04T08:00:00Z");
}

#[test]
fn a_run_waits_while_the_schedules_previous_backup_is_unfinished() {
    let nightly = [schedule("nightly", "0 1 * * *")];
    let previous = [entry("nightly", "0 1 * * *", "2026-12-05T01:00:00Z")];
    for phase in [None, Some("Pending"), Some("Running")] {
        let busy = made("nightly", "2026-12-04T01:00:00Z", phase);
        let d = decide_at(&nightly, &[busy], &previous, "2026-12-05T01:00:05Z");
        assert!(d.due.is_empty(), "{phase:?}");
        // Shown as overdue; the object's end wakes the controller.
        assert_eq!(d.status[0].next, "2026-12-05T01:00:00Z");
        assert_eq!(
            d.status[0].last_backup.as_deref(),
            Some("db-nightly-202612040100")
        );
        assert_eq!(d.wake_at, None);
    }
    // It ended (either way) hours later: the run goes, once.
    for phase in ["Completed", "Failed"] {
        let done = made("nightly", "2026-12-04T01:00:00Z", Some(phase));
        let d = decide_at(&nightly, &[done], &previous, "2026-12-05T04:00:00Z");
        assert_eq!(d.due.len(), 1, "{phase}");
        assert_eq!(d.due[0].at, at("2026-12-05T01:00:00Z"));
    }
    // Another schedule's or a user's backup does not hold it (the queue
    // runs them one at a time).
    let mut mine = made("other", "2026-12-04T01:00:00Z", Some("Running"));
    mine.metadata.labels = None;
    let others = [
        made("weekly", "2026-12-04T01:00:00Z", Some("Pending")),
        mine,
    ];
    let d = decide_at(&nightly, &others, &previous, "2026-12-05T01:00:05Z");
    assert_eq!(d.due.len(), 1);
}

#[test]
fn a_changed_expression_starts_over() {
    let nightly = [schedule("nightly", "0 2 * * *")];
    let previous = [entry("nightly", "0 1 * * *", "2026-12-05T01:00:00Z")];
    let d = decide_at(&nightly, &[], &previous, "2026-12-05T01:30:00Z");
    assert!(d.due.is_empty());
    assert_eq!(
        d.status,
        [entry("nightly", "0 2 * * *", "2026-12-05T02:00:00Z")]
    );
    // A removed schedule leaves the status.
    let d = decide_at(&[], &[], &previous, "2026-12-05T01:30:00Z");
    assert!(d.status.is_empty() && d.next.is_none() && d.wake_at.is_none());
}

#[test]
fn the_soonest_schedule_is_next() {
    let mut hourly = schedule("hourly", "0 * * * *");
    hourly.type_ = BackupType::Incremental;
    let schedules = [schedule("weekly", "0 1 * * 0"), hourly];
    let d = decide_at(&schedules, &[], &[], "2026-12-04T10:20:00Z");
    let next = d.next.unwrap();
    assert_eq!(next.schedule, "hourly");
    assert_eq!(next.type_, BackupType::Incremental);
    assert_eq!(next.time, "2026-12-04T11:00:00Z");
    assert_eq!(d.wake_at, Some(at("2026-12-04T11:00:00Z")));
    let times: Vec<&str> = d.status.iter().map(|s| s.next.as_str()).collect();
    assert_eq!(times, ["2026-12-06T01:00:00Z", "2026-12-04T11:00:00Z"]);
    // Both due at once: one object each.
    let previous = d.status.clone();
    let d = decide_at(
        &schedules,
        &[],
        &[
            entry("weekly", "0 1 * * 0", "2026-12-06T01:00:00Z"),
            previous[1].clone(),
        ],
        "2026-12-06T01:00:30Z",
    );
    let due: Vec<&str> = d.due.iter().map(|r| r.schedule.name.as_str()).collect();
    assert_eq!(due, ["weekly", "hourly"]);
}

#[test]
fn a_run_whose_object_was_not_created_stays_due() {
    let schedules = [
        schedule("nightly", "0 1 * * *"),
        schedule("weekly", "0 2 * * 0"),
    ];
    let previous = [
        entry("nightly", "0 1 * * *", "2026-12-05T01:00:00Z"),
        entry("weekly", "0 2 * * 0", "2026-12-06T02:00:00Z"),
    ];
    let made = decide_at(&schedules, &[], &previous, "2026-12-05T01:00:10Z");
    assert_eq!(made.due.len(), 1);
    assert_eq!(made.due[0].name, "db-nightly-202612050100");
    // Created: as decided.
    let mut created = made.clone();
    created.keep_uncreated(&["db-nightly-202612050100".to_string()]);
    assert_eq!(created, made);
    // Not created: the entry is as before, and shown as next (overdue).
    let mut failed = made.clone();
    failed.keep_uncreated(&[]);
    assert!(failed.due.is_empty());
    assert_eq!(failed.status, previous);
    let next = failed.next.unwrap();
    assert_eq!(
        (next.schedule.as_str(), next.time.as_str()),
        ("nightly", "2026-12-05T01:00:00Z")
    );
    // So the next reconcile makes it.
    let again = decide_at(&schedules, &[], &failed.status, "2026-12-05T01:00:20Z");
    assert_eq!(again.due.len(), 1);
}

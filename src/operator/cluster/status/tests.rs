use k8s_openapi::api::apps::v1::DeploymentStatus;
use k8s_openapi::api::core::v1::{Pod, PodCondition, PodStatus};

use super::*;
use crate::operator::cluster::plan::plan;
use crate::resources::instance;
use crate::resources::model::fixtures::model;

fn now(secs: i64) -> Time {
    Time(jiff::Timestamp::from_second(secs).unwrap())
}

fn pod(m: &Model, name: &str, ready: bool) -> Pod {
    let mut p = instance::pod(m, name, if name == "db-1" { "primary" } else { "replica" });
    p.status = Some(PodStatus {
        phase: Some("Running".into()),
        pod_ip: Some(format!("10.0.0.{}", &name[3..])),
        conditions: Some(vec![PodCondition {
            type_: "Ready".into(),
            status: if ready { "True" } else { "False" }.into(),
            ..PodCondition::default()
        }]),
        ..PodStatus::default()
    });
    p
}

fn observed(m: &Model, ready: &[bool], poolers_ready: i32) -> Observed {
    let mut d = crate::resources::proxy::deployment(m);
    d.status = Some(DeploymentStatus {
        replicas: Some(2),
        ready_replicas: Some(poolers_ready),
        ..DeploymentStatus::default()
    });
    Observed {
        pods: ready
            .iter()
            .enumerate()
            .map(|(i, r)| pod(m, &format!("db-{}", i + 1), *r))
            .collect(),
        pooler: Some(d),
        ..Observed::default()
    }
}

fn report(
    m: &Model,
    o: &Observed,
    previous: Option<&PostgresClusterStatus>,
    t: i64,
) -> (PostgresClusterStatus, Vec<Transition>) {
    let p = plan(m, o, previous).unwrap();
    compute(&Report {
        model: m,
        observed: o,
        plan: &p,
        previous,
        generation: 4,
        now: now(t),
        blocked: None,
        apply_error: None,
    })
}

fn condition<'a>(s: &'a PostgresClusterStatus, t: &str) -> &'a Condition {
    s.conditions.iter().find(|c| c.type_ == t).unwrap()
}

#[test]
fn ready_only_when_every_instance_and_pooler_is() {
    let m = model();
    let (s, _) = report(&m, &observed(&m, &[true, true, true], 1), None, 100);
    assert_eq!(condition(&s, READY).status, "False");
    assert_eq!(condition(&s, RECONCILING).status, "True");
    assert_eq!(condition(&s, RECONCILING).reason, "WaitingForPoolers");
    let (s, t) = report(&m, &observed(&m, &[true, true, true], 2), None, 100);
    assert_eq!(condition(&s, READY).status, "True");
    assert_eq!(condition(&s, RECONCILING).status, "False");
    assert_eq!(condition(&s, STALLED).status, "False");
    assert_eq!(s.phase, Some(Phase::Ready));
    assert_eq!(s.observed_generation, Some(4));
    assert_eq!(s.ready_instances, 3);
    assert_eq!(s.current_primary.as_deref(), Some("db-1"));
    assert_eq!(s.instances[0].role, "primary");
    assert_eq!(s.instances[2].pod_ip.as_deref(), Some("10.0.0.3"));
    assert_eq!(
        s.endpoints.as_ref().unwrap().pooler,
        "db-pooler.ns.svc:5432"
    );
    assert_eq!(
        t,
        vec![Transition {
            warning: false,
            reason: reason::CLUSTER_READY,
            message: "3 instance(s) and 2 pooler(s) ready".into()
        }]
    );
}

#[test]
fn losing_an_instance_degrades_and_keeps_transition_times() {
    let m = model();
    let (ready, _) = report(&m, &observed(&m, &[true, true, true], 2), None, 100);
    let (s, t) = report(
        &m,
        &observed(&m, &[true, false, true], 2),
        Some(&ready),
        200,
    );
    assert_eq!(condition(&s, READY).status, "False");
    assert_eq!(condition(&s, DEGRADED).status, "True");
    assert_eq!(s.phase, Some(Phase::Degraded));
    assert_eq!(t[0].reason, "ClusterNotReady");
    assert!(t[0].warning);
    // Stalled did not change: its transition time stays.
    assert_eq!(condition(&s, STALLED).last_transition_time, now(100));
    assert_eq!(condition(&s, READY).last_transition_time, now(200));
}

#[test]
fn a_new_cluster_is_creating_not_degraded() {
    let m = model();
    let (s, t) = report(&m, &Observed::default(), None, 100);
    assert_eq!(s.phase, Some(Phase::Creating));
    assert_eq!(condition(&s, DEGRADED).status, "False");
    assert_eq!(condition(&s, RECONCILING).reason, "CreatingInstances");
    assert_eq!(s.target_primary.as_deref(), Some("db-1"));
    assert!(s.current_primary.is_none());
    assert!(t.is_empty());
}

#[test]
fn blocked_work_is_stalled_with_its_reason() {
    let m = model();
    let o = observed(&m, &[true, true, true], 2);
    let p = plan(&m, &o, None).unwrap();
    let blocked = Blocked {
        reason: "MajorUpgradeFailed",
        message: "no".into(),
    };
    let (s, t) = compute(&Report {
        model: &m,
        observed: &o,
        plan: &p,
        previous: None,
        generation: 1,
        now: now(1),
        blocked: Some(&blocked),
        apply_error: None,
    });
    assert_eq!(condition(&s, STALLED).status, "True");
    assert_eq!(condition(&s, STALLED).reason, "MajorUpgradeFailed");
    assert_eq!(s.phase, Some(Phase::Stalled));
    assert!(t.iter().any(|t| t.reason == "MajorUpgradeFailed"));
}

#[test]
fn invalid_spec_is_stalled_once_and_keeps_the_rest() {
    let m = model();
    let (ready, _) = report(&m, &observed(&m, &[true, true, true], 2), None, 100);
    let err = SpecError {
        field: "spec.postgres.parameters".into(),
        message: "port is managed by Capstan and may not be set; remove it".into(),
        awaits_object: false,
    };
    let (s, t) = stalled(Some(&ready), 5, now(300), &err);
    assert_eq!(s.observed_generation, Some(5));
    assert_eq!(condition(&s, STALLED).status, "True");
    assert!(
        condition(&s, STALLED)
            .message
            .starts_with("spec.postgres.parameters: port")
    );
    assert_eq!(
        s.current_primary.as_deref(),
        Some("db-1"),
        "what is known is kept"
    );
    assert_eq!(t.len(), 1);
    let (_, again) = stalled(Some(&s), 5, now(400), &err);
    assert!(again.is_empty(), "no Event storm for the same error");
}

#[test]
fn failing_wal_archiving_is_a_condition_and_one_event_each_way() {
    use crate::contract::backup::ArchiveReport;
    let mut m = model();
    let archive = |m: &Model, failing: bool| {
        let mut o = observed(m, &[true, true, true], 2);
        let mut r = InstanceReport {
            name: "db-1".into(),
            role: Role::Primary,
            running: true,
            ready: true,
            archive: Some(ArchiveReport {
                stanza_ready: true,
                last_archived_wal: Some("000000010000000000000004".into()),
                last_archived_at: Some("2026-12-05T01:00:00Z".into()),
                ..ArchiveReport::default()
            }),
            ..InstanceReport::default()
        };
        if failing {
            let a = r.archive.as_mut().unwrap();
            a.last_failed_wal = Some("000000010000000000000005".into());
            a.last_failed_at = Some("2026-12-05T01:01:00Z".into());
            a.failed_count = 1;
        }
        o.reports.insert("db-1".into(), r);
        o
    };
    // No spec.backup: no such condition, whatever the report says.
    let (s, _) = report(&m, &archive(&m, true), None, 100);
    assert!(!s.conditions.iter().any(|c| c.type_ == WAL_ARCHIVING));

    m.spec.backup = Some(
        serde_json::from_value(
            serde_json::json!({"repositories": [{"name": "repo1", "s3": {
            "endpoint": "s3.store", "region": "r", "bucket": "b",
            "credentials": {"secretName": "k"}}}]}),
        )
        .unwrap(),
    );
    let (ok, t) = report(&m, &archive(&m, false), None, 100);
    assert_eq!(condition(&ok, WAL_ARCHIVING).status, "True");
    assert!(!t.iter().any(|t| t.reason.starts_with("WalArchiving")));
    let (failing, t) = report(&m, &archive(&m, true), Some(&ok), 110);
    let c = condition(&failing, WAL_ARCHIVING);
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "ArchiveFailing")
    );
    assert!(
        c.message.contains("000000010000000000000005"),
        "{}",
        c.message
    );
    assert_eq!(
        t.iter()
            .filter(|t| t.reason == reason::WAL_ARCHIVING_FAILED && t.warning)
            .count(),
        1
    );
    let (still, t) = report(&m, &archive(&m, true), Some(&failing), 120);
    assert!(
        !t.iter().any(|t| t.reason.starts_with("WalArchiving")),
        "said once"
    );
    // An unreachable primary changes nothing.
    let (unknown, _) = report(&m, &observed(&m, &[true, true, true], 2), Some(&still), 125);
    assert_eq!(condition(&unknown, WAL_ARCHIVING).status, "False");
    let (back, t) = report(&m, &archive(&m, false), Some(&still), 130);
    assert_eq!(condition(&back, WAL_ARCHIVING).status, "True");
    assert_eq!(
        t.iter()
            .filter(|t| t.reason == reason::WAL_ARCHIVING_RECOVERED)
            .count(),
        1
    );
}

#[test]
fn a_new_cluster_reads_as_in_progress_from_its_first_status() {
    let now = Time(jiff::Timestamp::from_second(1_800_000_000).unwrap());
    let s = first(None, "db-1", 17, 1, &now);
    assert_eq!(s.target_primary.as_deref(), Some("db-1"));
    assert_eq!(s.postgres_version, Some(17));
    assert!(condition_is(Some(&s), RECONCILING, "True"));
    assert!(condition_is(Some(&s), READY, "False"));
    assert!(
        s.conditions
            .iter()
            .all(|c| c.observed_generation == Some(1))
    );
}

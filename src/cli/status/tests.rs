use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{EventSeries, PodCondition, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, MicroTime, Time};

use super::*;
use crate::api::status::{
    BackupReference, BackupStatus, InstanceStatus, OperationStatus, PostgresClusterStatus,
    ProxyStatus, TlsStatus, VolumeStatus,
};
use crate::api::{BackupType, Phase};

fn at(t: &str) -> jiff::Timestamp {
    t.parse().unwrap()
}

fn condition(type_: &str, status: &str, reason: &str, message: &str) -> Condition {
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message: message.into(),
        last_transition_time: Time(at("2026-12-06T10:00:00Z")),
        observed_generation: None,
    }
}

fn pod(name: &str, component: &str, ready: bool) -> Pod {
    let mut p = Pod::default();
    p.metadata.name = Some(name.into());
    p.metadata.labels = Some(BTreeMap::from([
        (labels::CLUSTER.into(), "db".into()),
        (labels::COMPONENT.into(), component.into()),
    ]));
    p.status = Some(PodStatus {
        conditions: Some(vec![PodCondition {
            type_: "Ready".into(),
            status: if ready { "True" } else { "False" }.into(),
            ..PodCondition::default()
        }]),
        ..PodStatus::default()
    });
    p
}

fn cluster() -> PostgresCluster {
    let mut spec = crate::resources::model::fixtures::model().spec;
    spec.backup = serde_json::from_value(serde_json::json!({
        "repositories": [{"name": "repo1", "volume": {"size": "1Gi"}}],
    }))
    .unwrap();
    let mut c = PostgresCluster::new("db", spec);
    c.metadata.namespace = Some("shop".into());
    let instance = |name: &str, role: &str, lag: Option<i64>, sync: Option<&str>| InstanceStatus {
        name: name.into(),
        role: role.into(),
        ready: true,
        timeline: Some(2),
        lsn: Some("0/5000060".into()),
        lag_bytes: lag,
        sync_state: sync.map(Into::into),
        volumes: vec![VolumeStatus {
            volume: "data".into(),
            claim: format!("{name}-data"),
            requested: "1Gi".into(),
            size_bytes: Some(1 << 30),
            used_bytes: Some(48 << 20),
            ..VolumeStatus::default()
        }],
        ..InstanceStatus::default()
    };
    c.status = Some(PostgresClusterStatus {
        phase: Some(Phase::Degraded),
        postgres_version: Some(17),
        current_primary: Some("db-2".into()),
        conditions: vec![
            condition("Ready", "False", "ReplicaNotReady", "db-3 is not ready"),
            condition("Degraded", "True", "ReplicaNotReady", "db-3 is not ready"),
        ],
        instances: vec![
            instance("db-2", "primary", None, Some("sync")),
            instance("db-1", "replica", Some(0), Some("sync")),
            InstanceStatus {
                ready: false,
                pending_restart: true,
                ..instance("db-3", "replica", Some(3 << 20), Some("async"))
            },
        ],
        proxy: Some(ProxyStatus {
            replicas: 2,
            ready_replicas: 1,
            service: "db-pooler".into(),
            ..ProxyStatus::default()
        }),
        operation: Some(OperationStatus {
            type_: "RollingUpdate".into(),
            message: "re-creating replica db-3".into(),
            started_at: "2026-12-06T11:59:00Z".into(),
        }),
        tls: Some(TlsStatus {
            ca_not_after: Some("2031-12-05T12:00:00Z".into()),
            server_not_after: Some("2026-12-09T12:00:00Z".into()),
            pooler_not_after: Some("2027-12-06T12:00:00Z".into()),
            ..TlsStatus::default()
        }),
        backup: Some(BackupStatus {
            last_successful_backup: Some(BackupReference {
                name: "db-20261206".into(),
                label: "20261206-110000F".into(),
                type_: BackupType::Full,
                repository: "repo1".into(),
                completed_at: "2026-12-06T11:00:30Z".into(),
            }),
            first_recoverability_point: Some("2026-12-06T11:00:30Z".into()),
            ..BackupStatus::default()
        }),
        ..PostgresClusterStatus::default()
    });
    c
}

fn backup(
    name: &str,
    cluster: &str,
    phase: &str,
    verified: Option<&str>,
    created: &str,
) -> PostgresBackup {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "capstan.dev/v1alpha1",
        "kind": "PostgresBackup",
        "metadata": {"name": name, "creationTimestamp": created},
        "spec": {"cluster": cluster},
        "status": {"phase": phase, "type": "full", "stoppedAt": "2026-12-06T11:00:30Z",
            "verification": verified.map(|v| serde_json::json!({"phase": v}))},
    }))
    .unwrap()
}

fn warning(reason: &str, message: &str, at_: &str, count: i32) -> Event {
    Event {
        type_: Some("Warning".into()),
        reason: Some(reason.into()),
        message: Some(message.into()),
        event_time: Some(MicroTime(at(at_))),
        series: (count > 1).then(|| EventSeries {
            count: Some(count),
            last_observed_time: Some(MicroTime(at(at_))),
        }),
        ..Event::default()
    }
}

const POOLER_METRICS: &str = "\
# HELP pgbouncer_pools_client_waiting_connections Client connections waiting on a server connection.
# TYPE pgbouncer_pools_client_waiting_connections gauge
pgbouncer_pools_client_waiting_connections{database=\"app\",user=\"app\"} 3
pgbouncer_pools_client_waiting_connections{database=\"pgbouncer\",user=\"pgbouncer\"} 0
pgbouncer_pools_client_active_connections{database=\"app\",user=\"app\"} 8
pgbouncer_pools_client_active_connections{database=\"pgbouncer\",user=\"pgbouncer\"} 1
pgbouncer_pools_client_maxwait_seconds{database=\"app\",user=\"app\"} 0.25
";

fn summary() -> Summary {
    let pods = vec![
        pod("db-1", labels::COMPONENT_DATABASE, true),
        pod("db-pooler-a", labels::COMPONENT_POOLER, true),
        pod("db-pooler-b", labels::COMPONENT_POOLER, false),
    ];
    let backups = vec![
        backup(
            "db-20261205",
            "db",
            "Completed",
            Some("Passed"),
            "2026-12-05T11:00:00Z",
        ),
        backup(
            "db-20261206",
            "db",
            "Completed",
            Some("Failed"),
            "2026-12-06T11:00:00Z",
        ),
        backup(
            "other-1",
            "other",
            "Completed",
            None,
            "2026-12-06T11:30:00Z",
        ),
    ];
    let events = vec![
        warning(
            "VerificationFailed",
            "backup db-20261206 did not restore",
            "2026-12-06T11:05:00Z",
            1,
        ),
        warning(
            "InstanceNotReady",
            "db-3 is not ready",
            "2026-12-06T11:59:30Z",
            4,
        ),
        Event {
            type_: Some("Normal".into()),
            reason: Some("Created".into()),
            ..Event::default()
        },
    ];
    let metrics: PoolerMetrics = vec![("db-pooler-a".into(), Ok(POOLER_METRICS.into()))];
    summarize(
        &cluster(),
        &pods,
        &backups,
        &events,
        &metrics,
        at("2026-12-06T12:00:00Z"),
    )
}

#[test]
fn metric_sums_add_every_pool_and_ignore_longer_names() {
    assert_eq!(
        metric_sum(POOLER_METRICS, "pgbouncer_pools_client_waiting_connections"),
        Some(3)
    );
    assert_eq!(
        metric_sum(POOLER_METRICS, "pgbouncer_pools_client_active_connections"),
        Some(9)
    );
    assert_eq!(metric_sum(POOLER_METRICS, "pgbouncer_pools_client"), None);
    assert_eq!(metric_sum("up 1\n", "up"), Some(1));
    assert_eq!(metric_sum("", "up"), None);
}

#[test]
fn the_summary_holds_what_a_dba_looks_for() {
    let s = summary();
    assert_eq!(
        (s.ready.as_str(), s.reason.as_deref()),
        ("False", Some("ReplicaNotReady"))
    );
    assert_eq!(s.phase.as_deref(), Some("Degraded"));
    assert_eq!(s.primary.as_deref(), Some("db-2"));
    assert_eq!(s.instances.len(), 3);
    assert_eq!(
        s.instances[0].sync_state, None,
        "a primary is nobody's standby"
    );
    assert_eq!(s.instances[2].lag_bytes, Some(3 << 20));
    assert!(s.instances[2].pending_restart);
    assert_eq!(
        s.operation.as_deref(),
        Some("RollingUpdate: re-creating replica db-3 (since 2026-12-06T11:59:00Z)")
    );
    // Only pooler pods; unready ones are listed without metrics.
    let names: Vec<_> = s.poolers.pods.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["db-pooler-a", "db-pooler-b"]);
    assert_eq!(
        (
            s.poolers.pods[0].clients_active,
            s.poolers.pods[0].clients_waiting
        ),
        (Some(9), Some(3))
    );
    assert_eq!(s.poolers.pods[1].clients_waiting, None);
    // Days left, rounded down.
    let days: Vec<_> = s
        .certificates
        .iter()
        .map(|c| (c.certificate.as_str(), c.days_left))
        .collect();
    assert_eq!(
        days,
        [
            ("CA", Some(1825)),
            ("server", Some(3)),
            ("pooler", Some(365))
        ]
    );
    let b = s.backups.unwrap();
    assert_eq!(
        b.last_successful.as_deref(),
        Some("db-20261206 (full, repo1) at 2026-12-06T11:00:30Z")
    );
    // This cluster's backups only, newest first.
    let recent: Vec<_> = b
        .recent
        .iter()
        .map(|r| (r.name.as_str(), r.verification.as_deref()))
        .collect();
    assert_eq!(
        recent,
        [
            ("db-20261206", Some("Failed")),
            ("db-20261205", Some("Passed"))
        ]
    );
    // Warnings only, newest first, with their count.
    let warnings: Vec<_> = s
        .warnings
        .iter()
        .map(|w| (w.reason.as_str(), w.count))
        .collect();
    assert_eq!(
        warnings,
        [("InstanceNotReady", 4), ("VerificationFailed", 1)]
    );
}

#[test]
fn the_screen_without_colour() {
    let text = render(&summary(), Style { colour: false });
    assert!(!text.contains('\x1b'), "{text}");
    let expected_lines = [
        "PostgresCluster db in shop: Not ready (ReplicaNotReady), PostgreSQL 17, primary db-2",
        "  NAME  ROLE     READY  TIMELINE  LSN        LAG      SYNC   DATA USED           RESTART",
        "  db-2  primary  yes    2         0/5000060  -        -      48.0 MiB / 1.0 GiB  -",
        "  db-3  replica  no     2         0/5000060  3.0 MiB  async  48.0 MiB / 1.0 GiB  pending",
        "  RollingUpdate: re-creating replica db-3 (since 2026-12-06T11:59:00Z)",
        "Poolers (db-pooler, 1/2 ready)",
        "  db-pooler-a  yes    9        3",
        "  server  expires 2026-12-09T12:00:00Z (in 3 days)",
        "  last good        db-20261206 (full, repo1) at 2026-12-06T11:00:30Z",
        "  next             -",
        "  db-20261206  full  Completed  Failed    2026-12-06T11:00:30Z",
        "  Ready=False ReplicaNotReady db-3 is not ready",
        "  2026-12-06T11:59:30Z InstanceNotReady: db-3 is not ready (×4)",
    ];
    for line in expected_lines {
        assert!(
            text.lines().any(|l| l == line),
            "no line {line:?} in\n{text}"
        );
    }
}

#[test]
fn colour_marks_state_and_never_shifts_columns() {
    let plain = render(&summary(), Style { colour: false });
    let painted = render(&summary(), Style { colour: true });
    assert!(painted.contains("\x1b[31mno   \x1b[0m"), "{painted}");
    // Ready=False and Degraded=True are both bad news.
    assert!(painted.contains("\x1b[31mReady=False\x1b[0m"), "{painted}");
    assert!(
        painted.contains("\x1b[31mDegraded=True\x1b[0m"),
        "{painted}"
    );
    let strip = |s: &str| {
        let mut out = String::new();
        let mut chars = s.chars();
        while let Some(c) = chars.next() {
            if c == '\x1b' {
                for c in chars.by_ref() {
                    if c == 'm' {
                        break;
                    }
                }
            } else {
                out.push(c);
            }
        }
        out
    };
    assert_eq!(strip(&painted), plain);
}

#[test]
fn a_new_cluster_without_status_still_renders() {
    let c = PostgresCluster::new("db", crate::resources::model::fixtures::model().spec);
    let s = summarize(&c, &[], &[], &[], &vec![], at("2026-12-06T12:00:00Z"));
    assert_eq!(s.ready, "Unknown");
    assert!(s.backups.is_none());
    let text = render(&s, Style { colour: false });
    assert!(text.contains("Not ready (no status yet)"), "{text}");
    assert!(
        text.contains("Backups\n  not configured (spec.backup)"),
        "{text}"
    );
}

#[test]
fn json_uses_the_api_s_field_names() {
    let json = serde_json::to_value(summary()).unwrap();
    assert_eq!(json["instances"][1]["syncState"], "sync");
    assert_eq!(json["poolers"]["pods"][0]["clientsWaiting"], 3);
    assert_eq!(json["backups"]["recent"][0]["type"], "full");
}

#[test]
fn roles_and_databases_show_their_state_and_failures() {
    use crate::api::ManagedObjectStatus;
    let mut c = cluster();
    let entry = |name: &str, state: &str, message: &str| ManagedObjectStatus {
        name: name.into(),
        state: state.into(),
        message: message.into(),
    };
    let status = c.status.get_or_insert_with(Default::default);
    status.roles = vec![
        entry("reporting", "Applied", "unchanged"),
        entry(
            "etl",
            "Failed",
            "no password: Secret key etl-login/password is missing or empty",
        ),
    ];
    status.databases = vec![entry("scratch", "Kept", "ensure: absent, but kept")];
    let s = summarize(&c, &[], &[], &[], &vec![], at("2026-12-06T12:00:00Z"));
    let text = render(&s, Style { colour: false });
    let section = text
        .split("Roles and databases\n")
        .nth(1)
        .and_then(|rest| rest.split("\n\n").next())
        .unwrap_or_default();
    let lines: Vec<Vec<&str>> = section
        .lines()
        .map(|l| l.split_whitespace().take(3).collect())
        .collect();
    assert_eq!(
        lines,
        [
            vec!["KIND", "NAME", "STATE"],
            vec!["role", "reporting", "Applied"],
            vec!["role", "etl", "Failed"],
            vec!["database", "scratch", "Kept"],
        ],
        "{text}"
    );
    assert!(section.contains("etl-login/password"), "{text}");
    // No entries, no section.
    let none = summarize(
        &cluster(),
        &[],
        &[],
        &[],
        &vec![],
        at("2026-12-06T12:00:00Z"),
    );
    assert!(!render(&none, Style { colour: false }).contains("Roles and databases"));
}

use std::time::Duration;

use k8s_openapi::api::core::v1::{PodCondition, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::*;
use crate::api::{FailoverStatus, InstanceStatus, SwitchoverStatus};
use crate::resources::model::fixtures::model;

fn pod(model: &Model, name: &str, ready: bool) -> Pod {
    let mut pod = instance::pod(model, name, labels::ROLE_REPLICA);
    pod.status = Some(PodStatus {
        phase: Some("Running".into()),
        conditions: Some(vec![PodCondition {
            type_: "Ready".into(),
            status: if ready { "True" } else { "False" }.into(),
            ..PodCondition::default()
        }]),
        ..PodStatus::default()
    });
    pod
}

fn replica(name: &str, lsn: &str) -> InstanceReport {
    InstanceReport {
        name: name.into(),
        role: Role::Replica,
        running: true,
        ready: true,
        receive_lsn: Some(lsn.into()),
        wal_receiver: Some("streaming".into()),
        ..InstanceReport::default()
    }
}

fn primary(name: &str) -> InstanceReport {
    InstanceReport {
        name: name.into(),
        role: Role::Primary,
        running: true,
        ready: true,
        ..InstanceReport::default()
    }
}

/// A three-instance cluster, every pod ready and built from `built`;
/// db-1 the primary, db-2 and db-3 streaming.
struct World {
    model: Model,
    observed: Observed,
    status: PostgresClusterStatus,
    instances: Vec<String>,
    removed: Vec<String>,
}

impl World {
    fn new() -> Self {
        let model = model();
        let names = ["db-1", "db-2", "db-3"];
        let observed = Observed {
            pods: names.iter().map(|n| pod(&model, n, true)).collect(),
            reports: [
                ("db-1".to_string(), primary("db-1")),
                ("db-2".to_string(), replica("db-2", "0/3000000")),
                ("db-3".to_string(), replica("db-3", "0/3000000")),
            ]
            .into(),
            lease: Some(LeaseView {
                holder: Some("db-1".into()),
                silent_for: Duration::from_millis(100),
                duration: Duration::from_secs(4),
                ..LeaseView::default()
            }),
            ..Observed::default()
        };
        World {
            model,
            observed,
            status: PostgresClusterStatus {
                target_primary: Some("db-1".into()),
                instances: vec![InstanceStatus {
                    name: "db-1".into(),
                    role: "primary".into(),
                    lsn: Some("0/3000000".into()),
                    ..InstanceStatus::default()
                }],
                ..PostgresClusterStatus::default()
            },
            instances: names.iter().map(|n| n.to_string()).collect(),
            removed: vec![],
        }
    }

    fn target(&self) -> String {
        self.status.target_primary.clone().unwrap()
    }

    fn choose(&self) -> Operation {
        let target = self.target();
        choose(&Input {
            model: &self.model,
            observed: &self.observed,
            status: Some(&self.status),
            target_primary: &target,
            instances: &self.instances,
            removed: &self.removed,
            switchover_request: self.observed.switchover_request.as_deref(),
            lease: self.observed.lease.as_ref(),
        })
    }

    /// The spec changes: every pod is now outdated.
    fn change_pod_spec(&mut self) {
        self.model.images.postgres = "postgres:17.99".into();
    }

    /// Re-creates `name` with the current spec, ready and streaming.
    fn recreate(&mut self, name: &str) {
        let fresh = pod(&self.model, name, true);
        for p in &mut self.observed.pods {
            if p.metadata.name.as_deref() == Some(name) {
                *p = fresh.clone();
            }
        }
    }

    fn lose_primary(&mut self) {
        self.observed.lease.as_mut().unwrap().silent_for = Duration::from_secs(5);
        self.observed.reports.remove("db-1");
    }
}

fn rolling_switchover_to(op: &Operation) -> String {
    match op {
        Operation::Switchover(Switchover::Start {
            to,
            why: SwitchoverWhy::RollingUpdate,
            ..
        }) => to.clone(),
        other => panic!("expected a rolling-update switchover, got {other:?}"),
    }
}

#[test]
fn a_settled_cluster_is_idle() {
    assert_eq!(World::new().choose(), Operation::Idle);
}

#[test]
fn a_rolling_update_takes_replicas_one_at_a_time_then_switches_over() {
    let mut w = World::new();
    w.change_pod_spec();
    assert_eq!(w.choose(), Operation::RecreateReplica("db-2".into()));

    // db-2 is back with the new spec but not streaming yet: wait, touch
    // nothing else.
    w.recreate("db-2");
    w.observed.reports.get_mut("db-2").unwrap().wal_receiver = Some("starting".into());
    assert_eq!(w.choose(), Operation::AwaitReplication(vec!["db-2".into()]));
    w.observed.reports.remove("db-2");
    assert_eq!(
        w.choose(),
        Operation::AwaitReplication(vec!["db-2".into()]),
        "an instance manager that does not answer is not known to stream"
    );
    w.observed
        .reports
        .insert("db-2".into(), replica("db-2", "0/3000000"));
    assert_eq!(w.choose(), Operation::RecreateReplica("db-3".into()));

    // Every replica updated: the primary moves to the one with most WAL.
    w.recreate("db-3");
    w.observed
        .reports
        .insert("db-3".into(), replica("db-3", "0/3000100"));
    let op = w.choose();
    assert_eq!(rolling_switchover_to(&op), "db-3");
    assert_eq!(op.kind(), "RollingUpdate");

    // After the switchover the old primary is an outdated replica.
    w.status.target_primary = Some("db-3".into());
    w.observed.lease.as_mut().unwrap().holder = Some("db-3".into());
    w.observed
        .reports
        .insert("db-1".into(), replica("db-1", "0/3000200"));
    w.observed.reports.insert("db-3".into(), primary("db-3"));
    assert_eq!(w.choose(), Operation::RecreateReplica("db-1".into()));
    w.recreate("db-1");
    assert_eq!(w.choose(), Operation::Idle);
}

/// `kubectl capstan restart`: the annotation on a pod.
fn ask_restart(w: &mut World, name: &str) {
    let pod = w
        .observed
        .pods
        .iter_mut()
        .find(|p| p.metadata.name.as_deref() == Some(name))
        .unwrap();
    pod.metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(
            labels::RESTART_ANNOTATION.into(),
            "2026-12-06T17:00:00Z".into(),
        );
}

#[test]
fn a_restart_request_restarts_that_instance_alone_the_primary_through_a_switchover() {
    let mut w = World::new();
    ask_restart(&mut w, "db-3");
    assert_eq!(w.choose(), Operation::RecreateReplica("db-3".into()));
    // The new pod carries no request: nothing else moves.
    w.recreate("db-3");
    assert_eq!(w.choose(), Operation::Idle);

    // The primary: a switchover first, then it is re-created as a replica.
    ask_restart(&mut w, "db-1");
    let op = w.choose();
    assert!(
        matches!(op, Operation::Switchover(Switchover::Start { .. })),
        "{op:?}"
    );
    w.status.target_primary = Some("db-2".into());
    w.observed.lease.as_mut().unwrap().holder = Some("db-2".into());
    w.observed
        .reports
        .insert("db-1".into(), replica("db-1", "0/3000200"));
    w.observed.reports.insert("db-2".into(), primary("db-2"));
    assert_eq!(w.choose(), Operation::RecreateReplica("db-1".into()));
    w.recreate("db-1");
    assert_eq!(w.choose(), Operation::Idle);
}

#[test]
fn a_setting_that_waits_for_a_restart_rolls_replicas_first_then_switches_over() {
    let mut w = World::new();
    for n in ["db-1", "db-2", "db-3"] {
        w.observed.reports.get_mut(n).unwrap().pending_restart = true;
    }
    assert_eq!(w.choose(), Operation::RecreateReplica("db-2".into()));
    // Re-created: PostgreSQL started with the setting, nothing pending.
    w.observed
        .reports
        .insert("db-2".into(), replica("db-2", "0/3000000"));
    assert_eq!(w.choose(), Operation::RecreateReplica("db-3".into()));
    w.observed
        .reports
        .insert("db-3".into(), replica("db-3", "0/3000100"));
    assert_eq!(rolling_switchover_to(&w.choose()), "db-3");
    // The demoted primary restarted as a standby: nothing left to do.
    w.status.target_primary = Some("db-3".into());
    w.observed.lease.as_mut().unwrap().holder = Some("db-3".into());
    w.observed
        .reports
        .insert("db-1".into(), replica("db-1", "0/3000200"));
    w.observed.reports.insert("db-3".into(), primary("db-3"));
    assert_eq!(w.choose(), Operation::Idle);
}

#[test]
fn the_primary_alone_pending_waits_for_replicas_to_load_the_settings() {
    let mut w = World::new();
    let instances: Vec<String> = ["db-1", "db-2", "db-3"].map(String::from).to_vec();
    let current = crate::resources::config::instance_settings(&w.model, &instances).digest();
    // The primary loaded the new settings first and waits for a restart;
    // db-3 still runs the older settings.
    for n in ["db-1", "db-2", "db-3"] {
        w.observed.reports.get_mut(n).unwrap().settings_digest = Some(current.clone());
    }
    w.observed.reports.get_mut("db-1").unwrap().pending_restart = true;
    w.observed.reports.get_mut("db-3").unwrap().settings_digest = Some("older".into());
    assert_eq!(w.choose(), Operation::AwaitSettings(vec!["db-3".into()]));
    // db-3 loaded them and waits for a restart too: replicas first.
    let r = w.observed.reports.get_mut("db-3").unwrap();
    r.settings_digest = Some(current.clone());
    r.pending_restart = true;
    assert_eq!(w.choose(), Operation::RecreateReplica("db-3".into()));
    // An agent too old to report its settings is not waited for.
    let r = w.observed.reports.get_mut("db-3").unwrap();
    r.settings_digest = None;
    r.pending_restart = false;
    assert_eq!(rolling_switchover_to(&w.choose()), "db-2");
}

#[test]
fn parameters_an_instance_could_not_start_with_are_not_rolled_into_the_others() {
    let mut w = World::new();
    for n in ["db-1", "db-2", "db-3"] {
        w.observed.reports.get_mut(n).unwrap().pending_restart = true;
    }
    assert_eq!(w.choose(), Operation::RecreateReplica("db-2".into()));
    // db-2 came back on the parameters it ran with, and says why.
    let mut back = replica("db-2", "0/3000000");
    back.parameters_refused =
        Some("postgres cannot start with them: could not map anonymous shared memory".into());
    w.observed.reports.insert("db-2".into(), back);
    assert_eq!(w.choose(), Operation::Idle);
    // Neither does the primary go first for a lowered setting meanwhile.
    for n in ["db-1", "db-2", "db-3"] {
        running_max_connections(w.observed.reports.get_mut(n).unwrap(), 200);
    }
    assert_eq!(w.choose(), Operation::Idle);
    // The spec changed and db-2 took it: the rollout goes on.
    w.observed
        .reports
        .get_mut("db-2")
        .unwrap()
        .parameters_refused = None;
    assert_eq!(
        w.choose(),
        Operation::RestartPrimary {
            instance: "db-1".into(),
            why: RestartWhy::LowerStandbySettings
        }
    );
}

fn running_max_connections(report: &mut InstanceReport, value: u64) {
    report
        .standby_floor_settings
        .insert("max_connections".into(), value);
}

#[test]
fn a_lowered_standby_setting_restarts_the_primary_first() {
    let mut w = World::new();
    for n in ["db-1", "db-2", "db-3"] {
        running_max_connections(w.observed.reports.get_mut(n).unwrap(), 200);
    }
    assert_eq!(
        w.choose(),
        Operation::RestartPrimary {
            instance: "db-1".into(),
            why: RestartWhy::LowerStandbySettings
        },
        "the spec sets no max_connections: PostgreSQL's 100"
    );
    w.model
        .spec
        .postgres
        .parameters
        .insert("max_connections".into(), "200".into());
    assert_eq!(w.choose(), Operation::Idle);
    w.model
        .spec
        .postgres
        .parameters
        .insert("max_connections".into(), "150".into());
    // The new files reached a replica before the primary: the primary
    // still goes first, or that replica would restart below it.
    w.observed.reports.get_mut("db-3").unwrap().pending_restart = true;
    let op = w.choose();
    assert_eq!(
        op,
        Operation::RestartPrimary {
            instance: "db-1".into(),
            why: RestartWhy::LowerStandbySettings
        }
    );
    assert!(
        op.describe().contains("max_connections"),
        "{}",
        op.describe()
    );
    // Back with the lower value: the replicas follow, no switchover.
    w.recreate("db-1");
    let mut restarted = primary("db-1");
    running_max_connections(&mut restarted, 150);
    w.observed.reports.insert("db-1".into(), restarted);
    w.observed.reports.get_mut("db-2").unwrap().pending_restart = true;
    assert_eq!(w.choose(), Operation::RecreateReplica("db-2".into()));
    w.observed
        .reports
        .insert("db-2".into(), replica("db-2", "0/3000000"));
    assert_eq!(w.choose(), Operation::RecreateReplica("db-3".into()));
    w.observed
        .reports
        .insert("db-3".into(), replica("db-3", "0/3000000"));
    assert_eq!(w.choose(), Operation::Idle);
}

#[test]
fn a_raised_standby_setting_goes_to_the_replicas_first() {
    let mut w = World::new();
    for n in ["db-1", "db-2", "db-3"] {
        let r = w.observed.reports.get_mut(n).unwrap();
        running_max_connections(r, 200);
        r.pending_restart = true;
    }
    w.model
        .spec
        .postgres
        .parameters
        .insert("max_connections".into(), "300".into());
    assert_eq!(w.choose(), Operation::RecreateReplica("db-2".into()));
}

#[test]
fn a_rolling_switchover_keeps_the_last_handled_annotation() {
    let mut w = World::new();
    w.observed.switchover_request = Some("db-2".into());
    w.status.switchover = Some(SwitchoverStatus {
        request: "db-2".into(),
        phase: so::COMPLETED.into(),
        ..SwitchoverStatus::default()
    });
    w.change_pod_spec();
    for n in ["db-2", "db-3"] {
        w.recreate(n);
    }
    match w.choose() {
        Operation::Switchover(Switchover::Start { request, .. }) => assert_eq!(request, "db-2"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn supervised_updates_wait_for_the_user_before_the_primary() {
    let mut w = World::new();
    w.model.spec.update_strategy.supervised = true;
    w.change_pod_spec();
    assert_eq!(w.choose(), Operation::RecreateReplica("db-2".into()));
    for n in ["db-2", "db-3"] {
        w.recreate(n);
    }
    let op = w.choose();
    assert_eq!(
        op,
        Operation::AwaitSwitchoverRequest {
            primary: "db-1".into()
        }
    );
    assert!(op.describe().contains("capstan.dev/switchover"));
    // The user's request is what moves the primary.
    w.observed.switchover_request = Some("db-2".into());
    assert_eq!(
        w.choose(),
        Operation::Switchover(Switchover::Start {
            request: "db-2".into(),
            to: "db-2".into(),
            why: SwitchoverWhy::Requested
        })
    );
}

#[test]
fn the_restart_strategy_and_single_instances_restart_the_primary_in_place() {
    let mut w = World::new();
    w.model.spec.update_strategy.primary_update_method = PrimaryUpdateMethod::Restart;
    w.change_pod_spec();
    for n in ["db-2", "db-3"] {
        w.recreate(n);
    }
    assert_eq!(
        w.choose(),
        Operation::RestartPrimary {
            instance: "db-1".into(),
            why: RestartWhy::Strategy
        }
    );

    let mut single = World::new();
    single.instances.truncate(1);
    single.observed.pods.truncate(1);
    single.change_pod_spec();
    let op = single.choose();
    assert_eq!(
        op,
        Operation::RestartPrimary {
            instance: "db-1".into(),
            why: RestartWhy::SingleInstance
        }
    );
    assert_eq!(pods_to_delete(&op), ["db-1"]);
    assert!(op.describe().contains("writes stop"));
}

#[test]
fn failover_comes_before_everything() {
    let mut w = World::new();
    w.change_pod_spec();
    w.observed.switchover_request = Some("db-2".into());
    w.lose_primary();
    match w.choose() {
        Operation::Failover(Failover::Start(p)) => {
            assert_eq!((p.from.as_str(), p.to.as_str()), ("db-1", "db-2"))
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_failover_in_flight_continues_until_the_new_primary_runs() {
    let mut w = World::new();
    w.lose_primary();
    w.status.target_primary = Some("db-2".into());
    w.status.failover = Some(FailoverStatus {
        phase: failover_phase::PROMOTING.into(),
        from: "db-1".into(),
        to: "db-2".into(),
        ..FailoverStatus::default()
    });
    // The Lease is still silent (nobody holds it anew), the replica has
    // not promoted yet: ask it again.
    assert_eq!(
        w.choose(),
        Operation::Failover(Failover::Promote { to: "db-2".into() })
    );
    w.observed.reports.insert("db-2".into(), primary("db-2"));
    assert_eq!(
        w.choose(),
        Operation::Failover(Failover::Finish {
            to: "db-2".into(),
            from: "db-1".into()
        })
    );
}

#[test]
fn a_chosen_replica_that_vanishes_is_replaced_by_another() {
    let mut w = World::new();
    w.lose_primary();
    w.status.target_primary = Some("db-2".into());
    w.status.failover = Some(FailoverStatus {
        phase: failover_phase::PROMOTING.into(),
        from: "db-1".into(),
        to: "db-2".into(),
        ..FailoverStatus::default()
    });
    w.observed.reports.remove("db-2");
    w.observed.lease.as_mut().unwrap().holder = Some("db-2".into());
    match w.choose() {
        Operation::Failover(Failover::Start(p)) => {
            assert_eq!((p.from.as_str(), p.to.as_str()), ("db-2", "db-3"))
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_blocked_failover_is_reported_and_recovers() {
    let mut w = World::new();
    w.lose_primary();
    w.observed.reports.clear();
    let op = w.choose();
    assert!(
        matches!(&op, Operation::Failover(Failover::Blocked { message, .. }) if message.contains("no replica answers")),
        "{op:?}"
    );
    w.status.failover = Some(FailoverStatus {
        phase: failover_phase::BLOCKED.into(),
        from: "db-1".into(),
        ..FailoverStatus::default()
    });
    w.observed.lease.as_mut().unwrap().silent_for = Duration::from_millis(10);
    assert_eq!(w.choose(), Operation::Failover(Failover::Recovered));
}

#[test]
fn an_interrupted_switchover_is_resolved_before_new_requests() {
    let mut w = World::new();
    w.status.switchover = Some(SwitchoverStatus {
        request: "db-2".into(),
        phase: so::PROMOTING.into(),
        from: "db-1".into(),
        to: "db-2".into(),
        ..SwitchoverStatus::default()
    });
    w.observed.switchover_request = Some("db-3".into());
    assert_eq!(
        w.choose(),
        Operation::Switchover(Switchover::Interrupted {
            from: "db-1".into(),
            to: "db-2".into()
        })
    );
}

#[test]
fn user_requests_come_before_rolling_updates_and_bad_ones_say_why() {
    let mut w = World::new();
    w.change_pod_spec();
    w.observed.switchover_request = Some("db-3".into());
    assert_eq!(
        w.choose(),
        Operation::Switchover(Switchover::Start {
            request: "db-3".into(),
            to: "db-3".into(),
            why: SwitchoverWhy::Requested
        })
    );
    w.observed.switchover_request = Some("db-9".into());
    assert!(matches!(
        w.choose(),
        Operation::Switchover(Switchover::Refuse { message, .. }) if message.contains("not an instance")
    ));
}

#[test]
fn instances_come_before_rolling_updates_and_the_primary_first() {
    let mut w = World::new();
    w.change_pod_spec();
    w.observed.pods[1].status.as_mut().unwrap().phase = Some("Failed".into());
    let op = w.choose();
    assert_eq!(
        op,
        Operation::AwaitInstances {
            instances: vec!["db-2".into()],
            failed: vec!["db-2".into()]
        }
    );
    assert_eq!(pods_to_delete(&op), ["db-2"]);

    let mut w = World::new();
    w.observed.pods.clear();
    let op = w.choose();
    assert_eq!(op, Operation::CreateInstances(vec!["db-1".into()]));
    let created = pods_to_create(&w.model, &op, "db-1");
    assert_eq!(
        created[0].metadata.labels.as_ref().unwrap()[labels::ROLE],
        labels::ROLE_PRIMARY
    );

    let mut w = World::new();
    w.observed.pods[0] = pod(&w.model, "db-1", false);
    w.observed.pods.truncate(1);
    assert_eq!(
        w.choose(),
        Operation::AwaitInstances {
            instances: vec!["db-1".into()],
            failed: vec![]
        },
        "replicas clone a ready primary"
    );

    let mut w = World::new();
    w.observed.pods[2].metadata.deletion_timestamp = Some(Time(jiff::Timestamp::UNIX_EPOCH));
    assert!(matches!(w.choose(), Operation::AwaitInstances { .. }));
}

#[test]
fn scale_down_comes_last() {
    let mut w = World::new();
    w.removed = vec!["db-3".into()];
    w.instances.truncate(2);
    assert_eq!(w.choose(), Operation::RemoveInstances(vec!["db-3".into()]));
    w.change_pod_spec();
    assert_eq!(w.choose(), Operation::RecreateReplica("db-2".into()));
}

#[test]
fn every_operation_describes_itself_for_people() {
    let ops = [
        Operation::Idle,
        Operation::CreateInstances(vec!["db-1".into()]),
        Operation::AwaitReplication(vec!["db-2".into()]),
        Operation::RecreateReplica("db-2".into()),
        Operation::RemoveInstances(vec!["db-3".into()]),
    ];
    for op in ops {
        assert!(!op.describe().is_empty());
        assert!(!op.reason().is_empty());
    }
}

fn with_backup(w: &mut World, stanza_ready: bool) {
    w.model.spec.backup = Some(
        serde_json::from_value(serde_json::json!({"repositories": [{"name": "repo1",
            "s3": {"endpoint": "s3.store", "region": "r", "bucket": "bkt",
                   "credentials": {"secretName": "k"}}}]}))
        .unwrap(),
    );
    w.observed.reports.get_mut("db-1").unwrap().archive =
        Some(crate::contract::backup::ArchiveReport {
            stanza_ready,
            ..Default::default()
        });
    // The pods already run with the repositories' credential volumes.
    for name in ["db-1", "db-2", "db-3"] {
        w.recreate(name);
    }
}

fn pending_backup(name: &str, phase: Option<&str>) -> crate::api::pgbackup::PostgresBackup {
    let mut b: crate::api::pgbackup::PostgresBackup = serde_json::from_value(serde_json::json!({
        "apiVersion": "capstan.dev/v1alpha1", "kind": "PostgresBackup",
        "metadata": {"name": name, "namespace": "ns"},
        "spec": {"cluster": "db"}
    }))
    .unwrap();
    b.status = phase.map(|p| crate::api::pgbackup::PostgresBackupStatus {
        phase: Some(p.into()),
        instance: Some("db-1".into()),
        ..Default::default()
    });
    b
}

#[test]
fn a_backup_starts_after_failover_and_switchover_but_before_instances() {
    let mut w = World::new();
    with_backup(&mut w, true);
    w.observed.backups = vec![pending_backup("b1", None)];
    w.instances.push("db-4".into());
    assert!(matches!(
        w.choose(),
        Operation::Backup(crate::operator::cluster::backup::Step::Start { .. })
    ));
    w.lose_primary();
    assert!(matches!(w.choose(), Operation::Failover(_)));
}

#[test]
fn a_waiting_backup_never_holds_up_the_instances() {
    let mut w = World::new();
    // The stanza cannot be created (e.g. wrong credentials): it waits.
    with_backup(&mut w, false);
    w.observed.backups = vec![pending_backup("b1", None)];
    w.instances.push("db-4".into());
    assert_eq!(w.choose(), Operation::CreateInstances(vec!["db-4".into()]));
    w.instances.pop();
    assert!(matches!(
        w.choose(),
        Operation::Backup(crate::operator::cluster::backup::Step::Wait { .. })
    ));
}

#[test]
fn a_running_backup_holds_back_only_the_primarys_restart() {
    let mut w = World::new();
    with_backup(&mut w, true);
    w.observed.backups = vec![pending_backup("b1", Some("Running"))];
    w.observed.reports.get_mut("db-1").unwrap().backup = Some(crate::contract::backup::BackupJob {
        backup: "b1".into(),
        kind: crate::contract::backup::BackupType::Full,
        repository: 1,
        phase: crate::contract::backup::JobPhase::Running,
        started_at: "2026-12-04T10:00:00Z".into(),
        finished_at: None,
        result: None,
        message: None,
    });
    assert_eq!(w.choose(), Operation::Idle);
    w.change_pod_spec();
    // Replicas roll meanwhile ...
    assert!(matches!(w.choose(), Operation::RecreateReplica(_)));
    w.recreate("db-2");
    w.recreate("db-3");
    // ... and the primary waits for the backup.
    assert_eq!(
        w.choose(),
        Operation::AwaitBackup {
            backup: "b1".into(),
            instance: "db-1".into()
        }
    );
}

mod major_upgrade {
    use super::*;
    use crate::api::MajorUpgradeStatus;
    use crate::contract::upgrade::{UpgradePhase, UpgradeReport};
    use crate::operator::cluster::upgrade::Step;
    use crate::resources::model::{MajorUpgrade, UpgradeStage};

    fn raise(w: &mut World, stage: UpgradeStage) {
        w.model.upgrade = Some(MajorUpgrade {
            from: 17,
            to: 18,
            image: "postgres:18".into(),
            old_image: "postgres:17".into(),
            stage,
            generation: 1,
        });
    }

    fn recorded(w: &mut World, stopped: bool) {
        w.status.upgrade = Some(MajorUpgradeStatus {
            phase: "Upgrading".into(),
            from_version: 17,
            to_version: 18,
            primary_stopped_at: stopped.then(|| "2026-12-06T00:00:00Z".into()),
            ..MajorUpgradeStatus::default()
        });
    }

    fn step(w: &World) -> Step {
        match w.choose() {
            Operation::MajorUpgrade(s) => s,
            other => panic!("expected a major-upgrade step, got {other:?}"),
        }
    }

    fn terminating(w: &mut World, name: &str) {
        for p in &mut w.observed.pods {
            if p.metadata.name.as_deref() == Some(name) {
                p.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::UNIX_EPOCH));
            }
        }
    }

    fn remove(w: &mut World, name: &str) {
        w.observed
            .pods
            .retain(|p| p.metadata.name.as_deref() != Some(name));
        w.observed.reports.remove(name);
    }

    #[test]
    fn the_runbook_from_a_healthy_cluster_to_the_upgraded_primary() {
        let mut w = World::new();
        raise(&mut w, UpgradeStage::Preparing);
        assert_eq!(step(&w), Step::Start { from: 17, to: 18 });
        // Not while an instance is unhealthy: the usual steps first.
        w.observed.reports.remove("db-3");
        assert!(!matches!(w.choose(), Operation::MajorUpgrade(_)));
        w.observed
            .reports
            .insert("db-3".into(), replica("db-3", "0/3000000"));

        recorded(&mut w, false);
        let op = w.choose();
        assert_eq!(
            op,
            Operation::MajorUpgrade(Step::StopReplicas(vec!["db-2".into(), "db-3".into()]))
        );
        assert_eq!(pods_to_delete(&op), ["db-2", "db-3"]);
        terminating(&mut w, "db-2");
        remove(&mut w, "db-3");
        assert_eq!(step(&w), Step::AwaitGone(vec!["db-2".into()]));
        remove(&mut w, "db-2");
        assert_eq!(step(&w), Step::StopPrimary("db-1".into()));
        // The primary going quiet now is the upgrade, not a failure.
        w.lose_primary();
        assert_eq!(step(&w), Step::StopPrimary("db-1".into()));

        recorded(&mut w, true);
        raise(&mut w, UpgradeStage::PrimaryStopped);
        let op = w.choose();
        assert_eq!(
            op,
            Operation::MajorUpgrade(Step::DeleteOldPrimary("db-1".into()))
        );
        assert_eq!(pods_to_delete(&op), ["db-1"]);
        remove(&mut w, "db-1");
        let op = w.choose();
        assert_eq!(
            op,
            Operation::MajorUpgrade(Step::CreatePrimary("db-1".into()))
        );
        let created = pods_to_create(&w.model, &op, "db-1");
        assert_eq!(created.len(), 1);
        assert!(crate::resources::upgrade::is_upgrade_pod(&created[0]));

        let mut upgrade_pod = created[0].clone();
        upgrade_pod.status = pod(&w.model, "db-1", false).status;
        w.observed.pods.push(upgrade_pod);
        assert_eq!(step(&w), Step::AwaitPrimary("db-1".into()));

        // pg_upgrade refused: the poolers resume and the old image returns.
        let mut refused = InstanceReport {
            name: "db-1".into(),
            upgrade: Some(UpgradeReport {
                phase: UpgradePhase::Refused,
                from_version: 17,
                to_version: 18,
                message: Some("Checking for presence of required libraries fatal".into()),
                upgrade_ms: Some(900),
            }),
            ..InstanceReport::default()
        };
        w.observed.reports.insert("db-1".into(), refused.clone());
        let op = w.choose();
        assert!(
            matches!(&op, Operation::MajorUpgrade(Step::Fail { message, .. }) if message.contains("required libraries"))
        );
        assert_eq!(pods_to_delete(&op), ["db-1"]);

        // Upgraded instead: it serves the new major.
        refused.upgrade.as_mut().unwrap().phase = UpgradePhase::Analyzing;
        let mut serving = primary("db-1");
        serving.version = Some("18.1".into());
        serving.upgrade = refused.upgrade.clone();
        w.observed.reports.insert("db-1".into(), serving);
        assert_eq!(
            step(&w),
            Step::PrimaryUpgraded {
                instance: "db-1".into(),
                pg_upgrade_ms: Some(900)
            }
        );
    }

    #[test]
    fn with_backups_a_full_backup_comes_first_and_its_failure_stops_the_upgrade() {
        let mut w = World::new();
        with_backup(&mut w, true);
        raise(&mut w, UpgradeStage::Preparing);
        let name = crate::operator::cluster::upgrade::backup_name("db", 18, 1);
        assert_eq!(name, "db-before-pg18-g1");
        let op = w.choose();
        assert_eq!(op, Operation::MajorUpgrade(Step::TakeBackup(name.clone())));
        let plan =
            crate::operator::cluster::plan::plan(&w.model, &w.observed, Some(&w.status)).unwrap();
        assert_eq!(plan.create_backups.len(), 1);
        assert_eq!(
            plan.create_backups[0].metadata.name.as_deref(),
            Some(name.as_str())
        );
        assert_eq!(
            plan.create_backups[0].spec.type_,
            crate::api::BackupType::Full
        );

        // Created, not taken yet: the backup steps run it; nothing stops.
        w.observed.backups = vec![pending_backup(&name, None)];
        assert!(
            matches!(w.choose(), Operation::Backup(_)),
            "{:?}",
            w.choose()
        );
        w.observed.backups = vec![pending_backup(&name, Some("Running"))];
        assert!(
            !matches!(w.choose(), Operation::MajorUpgrade(_)),
            "{:?}",
            w.choose()
        );
        w.observed.backups = vec![pending_backup(&name, Some("Completed"))];
        assert_eq!(step(&w), Step::Start { from: 17, to: 18 });
        w.observed.backups = vec![pending_backup(&name, Some("Failed"))];
        assert!(matches!(step(&w), Step::BackupFailed { backup, .. } if backup == name));
    }

    #[test]
    fn replicas_clone_the_upgraded_primary_then_the_upgrade_completes() {
        let mut w = World::new();
        raise(&mut w, UpgradeStage::Recloning);
        w.status.upgrade = Some(MajorUpgradeStatus {
            phase: "Recloning".into(),
            from_version: 17,
            to_version: 18,
            ..MajorUpgradeStatus::default()
        });
        // db-3 still runs the old major's pod: it goes.
        remove(&mut w, "db-2");
        w.observed
            .pods
            .retain(|p| p.metadata.name.as_deref() != Some("db-3"));
        let mut old = w.model.clone();
        old.images.postgres = "postgres:old".into();
        w.observed.pods.push(pod(&old, "db-3", false));
        let op = w.choose();
        assert_eq!(
            op,
            Operation::MajorUpgrade(Step::StopReplicas(vec!["db-3".into()]))
        );
        remove(&mut w, "db-3");
        let mut p = primary("db-1");
        p.version = Some("18.1".into());
        w.observed.reports.insert("db-1".into(), p);
        assert_eq!(
            w.choose(),
            Operation::CreateInstances(vec!["db-2".into(), "db-3".into()])
        );
        for n in ["db-2", "db-3"] {
            w.observed.pods.push(pod(&w.model, n, true));
            let mut r = replica(n, "0/3000000");
            r.version = Some("17.6".into());
            w.observed.reports.insert(n.into(), r);
        }
        assert!(
            !matches!(w.choose(), Operation::MajorUpgrade(Step::Complete)),
            "replicas still on the old major"
        );
        for n in ["db-2", "db-3"] {
            w.observed.reports.get_mut(n).unwrap().version = Some("18.1".into());
        }
        assert_eq!(step(&w), Step::Complete);
    }

    #[test]
    fn a_failed_attempt_brings_the_old_primary_back() {
        let mut w = World::new();
        w.status.upgrade = Some(MajorUpgradeStatus {
            phase: "Failed".into(),
            from_version: 17,
            to_version: 18,
            ..MajorUpgradeStatus::default()
        });
        raise(&mut w, UpgradeStage::PrimaryStopped);
        let upgrade_pod =
            crate::resources::upgrade::pod(&w.model, w.model.upgrade.as_ref().unwrap(), "db-1");
        w.model.upgrade = None;
        w.observed.pods[0] = upgrade_pod;
        let op = w.choose();
        assert_eq!(
            op,
            Operation::MajorUpgrade(Step::RemoveUpgradePod("db-1".into()))
        );
        assert_eq!(pods_to_delete(&op), ["db-1"]);
    }
}

//! Verification by restore through the controller, against the API double:
//! the throwaway pod created for a `Verifying` backup, followed every
//! second, its termination message recorded on the backup, the pod
//! deleted, an Event and the cluster's `BackupVerified` condition; a
//! restarted operator adopts the pod it finds instead of creating another.

mod controller_support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStatus, Pod, Secret,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::runtime::controller::Action;
use kube::runtime::watcher;
use serde_json::{Value, json};

use capstan::api::PostgresCluster;
use capstan::api::pgbackup::PostgresBackup;
use capstan::contract::backup::ArchiveReport;
use capstan::contract::instance::{InstanceReport, Role};
use capstan::contract::verify::VerifyResult;
use capstan::operator::cache::Writers;
use capstan::operator::cluster::validate::validate_offline;
use capstan::operator::context::Context;
use capstan::resources::{instance, labels, verify};
use controller_support::{
    Api, Call, FakeAgents, Tripwire, cluster, context, reconcile_once, running, seed,
};

const LIMIT: Duration = Duration::from_secs(10);

fn spec() -> Value {
    json!({"instances": 1, "postgres": {"version": 17}, "storage": {"size": "1Gi"},
        "proxy": {"pgbouncer": {"replicas": 1}},
        "backup": {"repositories": [{"name": "repo1", "s3": {
            "endpoint": "s3.store", "region": "r", "bucket": "bkt",
            "credentials": {"secretName": "keys"}}}]}})
}

fn model() -> capstan::resources::model::Model {
    let c: PostgresCluster = serde_json::from_value(cluster(spec(), None)).unwrap();
    validate_offline(&c, "capstan:test").unwrap().model
}

fn operator_secret() -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some("db-operator-tls".into()),
            namespace: Some("ns".into()),
            labels: Some(BTreeMap::from([
                (labels::CLUSTER.to_string(), "db".to_string()),
                (labels::MANAGED_BY.to_string(), labels::MANAGER.to_string()),
            ])),
            ..ObjectMeta::default()
        },
        ..Secret::default()
    }
}

fn backup(name: &str, status: Value) -> PostgresBackup {
    serde_json::from_value(json!({
        "apiVersion": "capstan.dev/v1alpha1", "kind": "PostgresBackup",
        "metadata": {"name": name, "namespace": "ns", "uid": format!("uid-{name}"),
                     "creationTimestamp": "2026-12-04T10:00:00Z"},
        "spec": {"cluster": "db", "type": "full"},
        "status": status,
    }))
    .unwrap()
}

fn taken(verification: Value) -> Value {
    json!({"phase": "Verifying", "label": "20261204-100000F", "repository": "repo1",
           "size": 30_000_000, "stoppedAt": "2026-12-04T10:00:42Z",
           "verification": verification})
}

/// The verification pod as the kubelet reports it.
fn verify_pod(backup: &str, state: ContainerState) -> Pod {
    let mut pod = verify::pod(
        &model(),
        &verify::Request {
            backup: backup.into(),
            backup_uid: format!("uid-{backup}"),
            label: "20261204-100000F".into(),
            repository: 1,
            size: None,
        },
    );
    pod.metadata.creation_timestamp = Some(Time(jiff::Timestamp::now()));
    pod = running(pod, "10.0.2.1", false);
    pod.status.as_mut().unwrap().container_statuses = Some(vec![ContainerStatus {
        name: "verify".into(),
        state: Some(state),
        ..ContainerStatus::default()
    }]);
    pod
}

fn ended(result: &VerifyResult) -> ContainerState {
    ContainerState {
        terminated: Some(ContainerStateTerminated {
            exit_code: i32::from(!result.passed),
            message: Some(result.to_message()),
            ..ContainerStateTerminated::default()
        }),
        ..ContainerState::default()
    }
}

struct World {
    api: Api,
    trip: Arc<Tripwire>,
    agents: Arc<FakeAgents>,
}

impl World {
    fn new() -> Self {
        let trip = Arc::new(Tripwire::default());
        let api = Api::new(
            cluster(
                spec(),
                Some(
                    json!({"targetPrimary": "db-1", "currentPrimary": "db-1", "postgresVersion": 17}),
                ),
            ),
            trip.clone(),
        );
        api.state
            .lock()
            .unwrap()
            .pods
            .insert("db-1".into(), ("10.0.0.1".into(), "primary".into()));
        let agents = FakeAgents::new(trip.clone());
        agents.set(InstanceReport {
            name: "db-1".into(),
            role: Role::Primary,
            running: true,
            ready: true,
            timeline: Some(1),
            archive: Some(ArchiveReport {
                stanza_ready: true,
                ..ArchiveReport::default()
            }),
            ..InstanceReport::default()
        });
        World { api, trip, agents }
    }

    /// A fresh operator process whose caches hold the primary and `pods`.
    fn operator(&self, pods: &[Pod]) -> (Arc<Context>, Writers, tokio::task::JoinHandle<()>) {
        let (client, server) = self.api.serve();
        let ctx = context(client, Some(self.agents.clone()));
        let mut all = vec![running(
            instance::pod(&model(), "db-1", "primary"),
            "10.0.0.1",
            true,
        )];
        all.extend(pods.iter().cloned());
        let writers = seed(&ctx, &all, &[operator_secret()]);
        (ctx, writers, server)
    }
}

fn steps(timeline: Vec<String>) -> Vec<String> {
    timeline
        .into_iter()
        .filter(|s| s != "status" && !s.starts_with("status "))
        .collect()
}

fn backup_status(calls: &[Call], name: &str) -> Vec<Value> {
    calls
        .iter()
        .filter(|c| c.path.ends_with(&format!("/postgresbackups/{name}/status")))
        .map(|c| c.body["status"].clone())
        .collect()
}

fn events(calls: &[Call], reason: &str) -> Vec<(String, String)> {
    calls
        .iter()
        .filter(|c| c.path.ends_with("/events") && c.body["reason"] == reason)
        .map(|c| {
            (
                c.body["type"].as_str().unwrap_or_default().to_string(),
                c.body["note"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

fn condition(api: &Api, type_: &str) -> Value {
    api.status()["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == type_)
        .cloned()
        .unwrap_or(Value::Null)
}

#[tokio::test]
async fn a_verification_pod_is_created_followed_recorded_and_deleted() {
    let w = World::new();
    let (ctx, mut writers, server) = w.operator(&[]);
    writers
        .backups
        .apply_watcher_event(&watcher::Event::Apply(backup(
            "b1",
            taken(json!({"phase": "Pending"})),
        )));

    // 1. The pod is created, the verification recorded Running.
    let action = reconcile_once(&w.api, &ctx, LIMIT).await.unwrap().unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(1)));
    assert_eq!(steps(w.trip.take_timeline()), ["create b1-verify"]);
    let calls = w.api.take_calls();
    let create = calls
        .iter()
        .find(|c| c.method == http::Method::POST && c.path.ends_with("/pods"))
        .unwrap();
    assert_eq!(
        create.body["metadata"]["ownerReferences"][0]["uid"],
        "uid-b1"
    );
    assert_eq!(create.body["spec"]["restartPolicy"], "Never");
    let cmd = create.body["spec"]["containers"][0]["command"].to_string();
    assert!(cmd.contains("\"--label\",\"20261204-100000F\""), "{cmd}");
    let written = backup_status(&calls, "b1");
    assert_eq!(written.len(), 1, "{written:?}");
    assert_eq!(written[0]["verification"]["phase"], "Running");
    assert_eq!(written[0]["verification"]["pod"], "b1-verify");
    assert_eq!(events(&calls, "BackupVerifying").len(), 1);

    // 2. Running: followed every second, nothing written.
    writers
        .backups
        .apply_watcher_event(&watcher::Event::Apply(backup(
            "b1",
            taken(written[0]["verification"].clone()),
        )));
    let run = ContainerState {
        running: Some(ContainerStateRunning::default()),
        ..ContainerState::default()
    };
    writers
        .pods
        .apply_watcher_event(&watcher::Event::Apply(verify_pod("b1", run)));
    let action = reconcile_once(&w.api, &ctx, LIMIT).await.unwrap().unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(1)));
    assert!(steps(w.trip.take_timeline()).is_empty());
    assert!(backup_status(&w.api.take_calls(), "b1").is_empty());

    // 3. It reports: recorded on the backup, then the pod is deleted.
    let result = VerifyResult {
        passed: true,
        label: "20261204-100000F".into(),
        restore_seconds: Some(2.5),
        recovery_seconds: Some(1.25),
        checks_seconds: Some(0.5),
        total_seconds: 4.5,
        databases: 3,
        amcheck: Some("Passed".into()),
        sentinel_found: Some(true),
        error: None,
    };
    let done = verify_pod("b1", ended(&result));
    writers
        .pods
        .apply_watcher_event(&watcher::Event::Apply(done.clone()));
    reconcile_once(&w.api, &ctx, LIMIT).await.unwrap().unwrap();
    assert_eq!(steps(w.trip.take_timeline()), ["delete b1-verify"]);
    let calls = w.api.take_calls();
    let written = backup_status(&calls, "b1");
    assert_eq!(written.len(), 1, "{written:?}");
    let v = &written[0]["verification"];
    assert_eq!(written[0]["phase"], "Completed");
    assert_eq!(v["phase"], "Passed");
    assert_eq!(v["restoreSeconds"], 2.5);
    assert_eq!(v["recoverySeconds"], 1.25);
    assert_eq!(v["checksSeconds"], 0.5);
    assert_eq!(v["amcheck"], "Passed");
    assert_eq!(v["sentinelFound"], true);
    assert!(
        v["durationSeconds"].is_i64() && v["finishedAt"].is_string(),
        "{v}"
    );
    let record = calls
        .iter()
        .position(|c| c.path.ends_with("/postgresbackups/b1/status"))
        .unwrap();
    let delete = calls
        .iter()
        .position(|c| c.method == http::Method::DELETE && c.path.ends_with("/pods/b1-verify"))
        .unwrap();
    assert!(
        record < delete,
        "the result is recorded before the pod goes"
    );
    let verified = events(&calls, "BackupVerified");
    assert_eq!(verified.len(), 1);
    assert_eq!(verified[0].0, "Normal");
    assert!(
        verified[0].1.contains("restored 20261204-100000F"),
        "{verified:?}"
    );

    // 4. The cluster's condition follows the recorded result.
    writers
        .backups
        .apply_watcher_event(&watcher::Event::Apply(backup("b1", {
            let mut s = written[0].clone();
            s["label"] = json!("20261204-100000F");
            s
        })));
    writers
        .pods
        .apply_watcher_event(&watcher::Event::Delete(done));
    let action = reconcile_once(&w.api, &ctx, LIMIT).await.unwrap().unwrap();
    assert_ne!(
        action,
        Action::requeue(Duration::from_secs(1)),
        "nothing to follow"
    );
    let c = condition(&w.api, "BackupVerified");
    assert_eq!(c["status"], "True", "{c}");
    assert_eq!(c["reason"], "VerificationPassed");
    server.abort();
}

#[tokio::test]
async fn a_restarted_operator_adopts_the_pod_and_a_failure_is_a_warning_and_a_condition() {
    let w = World::new();
    // The pod was created, then the operator stopped before recording it.
    let run = ContainerState {
        running: Some(ContainerStateRunning::default()),
        ..ContainerState::default()
    };
    let (ctx, mut writers, server) = w.operator(&[verify_pod("b2", run)]);
    writers
        .backups
        .apply_watcher_event(&watcher::Event::Apply(backup(
            "b2",
            taken(json!({"phase": "Pending"})),
        )));
    reconcile_once(&w.api, &ctx, LIMIT).await.unwrap().unwrap();
    assert!(steps(w.trip.take_timeline()).is_empty(), "no second pod");
    let calls = w.api.take_calls();
    assert!(
        !calls
            .iter()
            .any(|c| c.method == http::Method::POST && c.path.ends_with("/pods"))
    );
    let written = backup_status(&calls, "b2");
    assert_eq!(written[0]["verification"]["phase"], "Running");
    assert_eq!(written[0]["verification"]["pod"], "b2-verify");

    // The copy lacks the sentinel: Failed, a Warning, the condition False.
    let result = VerifyResult {
        passed: false,
        label: "20261204-100000F".into(),
        total_seconds: 3.0,
        sentinel_found: Some(false),
        error: Some("the restored copy of 20261204-100000F lacks the sentinel".into()),
        ..VerifyResult::default()
    };
    writers
        .backups
        .apply_watcher_event(&watcher::Event::Apply(backup(
            "b2",
            taken(written[0]["verification"].clone()),
        )));
    let done = verify_pod("b2", ended(&result));
    writers
        .pods
        .apply_watcher_event(&watcher::Event::Apply(done.clone()));
    reconcile_once(&w.api, &ctx, LIMIT).await.unwrap().unwrap();
    assert_eq!(steps(w.trip.take_timeline()), ["delete b2-verify"]);
    let calls = w.api.take_calls();
    let written = backup_status(&calls, "b2");
    assert_eq!(written[0]["phase"], "Completed");
    assert_eq!(written[0]["verification"]["phase"], "Failed");
    assert_eq!(written[0]["verification"]["sentinelFound"], false);
    let failed = events(&calls, "BackupVerificationFailed");
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].0, "Warning");
    assert!(failed[0].1.contains("lacks the sentinel"), "{failed:?}");

    writers
        .backups
        .apply_watcher_event(&watcher::Event::Apply(backup("b2", written[0].clone())));
    writers
        .pods
        .apply_watcher_event(&watcher::Event::Delete(done));
    reconcile_once(&w.api, &ctx, LIMIT).await.unwrap().unwrap();
    let c = condition(&w.api, "BackupVerified");
    assert_eq!(c["status"], "False", "{c}");
    assert_eq!(c["reason"], "BackupVerificationFailed");
    assert!(
        c["message"]
            .as_str()
            .unwrap()
            .contains("backup b2: the restored copy"),
        "{c}"
    );
    server.abort();
}

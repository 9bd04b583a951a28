//! Operations end to end through the controller, against the API double
//! and the fake agent: the exact steps of a failover, a switchover and a
//! rolling update, an operator killed at every step of a switchover, and
//! the primary Lease left alone while its holder renews it, a backup
//! started on the primary and recorded on its object, and a major upgrade.

mod controller_support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::watcher;
use serde_json::{Value, json};

use capstan::api::PostgresCluster;
use capstan::contract::instance::{InstanceReport, Role};
use capstan::contract::upgrade::{UpgradePhase, UpgradeReport};
use capstan::operator::cache::Writers;
use capstan::operator::cluster::validate::validate_offline;
use capstan::operator::context::Context;
use capstan::resources::{instance, labels};
use controller_support::{
    Api, FakeAgents, Tripwire, cluster, context, reconcile_once, running, seed,
};

const LIMIT: Duration = Duration::from_secs(10);

fn ip(name: &str) -> String {
    let i = name.rsplit('-').next().unwrap_or("9");
    format!("10.0.0.{i}")
}

fn spec() -> Value {
    json!({"instances": 3, "postgres": {"version": 17}, "storage": {"size": "1Gi"}})
}

fn model_of(spec: &Value) -> capstan::resources::model::Model {
    let c: PostgresCluster = serde_json::from_value(cluster(spec.clone(), None)).unwrap();
    validate_offline(&c, "capstan:test").unwrap().model
}

fn replica(name: &str, lsn: &str) -> InstanceReport {
    InstanceReport {
        name: name.into(),
        role: Role::Replica,
        running: true,
        ready: true,
        timeline: Some(1),
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
        timeline: Some(1),
        current_lsn: Some("0/3000000".into()),
        ..InstanceReport::default()
    }
}

fn child_meta(name: &str, mut extra: BTreeMap<String, String>) -> ObjectMeta {
    extra.insert(labels::CLUSTER.into(), "db".into());
    extra.insert(labels::MANAGED_BY.into(), labels::MANAGER.into());
    ObjectMeta {
        name: Some(name.into()),
        namespace: Some("ns".into()),
        labels: Some(extra),
        ..ObjectMeta::default()
    }
}

fn pooler_pod() -> Pod {
    let mut l = labels::pooler_selector("db");
    l.insert(labels::MANAGED_BY.into(), labels::MANAGER.into());
    running(
        Pod {
            metadata: child_meta("db-pooler-a", l),
            ..Pod::default()
        },
        "10.0.1.1",
        true,
    )
}

fn operator_secret() -> Secret {
    Secret {
        metadata: child_meta("db-operator-tls", BTreeMap::new()),
        ..Secret::default()
    }
}

/// A Ready three-instance cluster: db-1 primary, db-2 and db-3 streaming,
/// one pooler. Pods are built from `built_with` (an older spec makes them
/// outdated).
struct World {
    api: Api,
    agents: Arc<FakeAgents>,
    trip: Arc<Tripwire>,
    pods: BTreeMap<String, Pod>,
}

impl World {
    fn new(spec: Value, built_with: &Value, annotation: Option<&str>) -> Self {
        let trip = Arc::new(Tripwire::default());
        let mut object = cluster(
            spec,
            Some(json!({"targetPrimary": "db-1", "currentPrimary": "db-1", "postgresVersion": 17})),
        );
        if let Some(a) = annotation {
            object["metadata"]["annotations"] = json!({"capstan.dev/switchover": a});
        }
        let api = Api::new(object, trip.clone());
        let agents = FakeAgents::new(trip.clone());
        let model = model_of(built_with);
        let mut pods = BTreeMap::new();
        for (name, role) in [
            ("db-1", "primary"),
            ("db-2", "replica"),
            ("db-3", "replica"),
        ] {
            let pod = running(instance::pod(&model, name, role), &ip(name), true);
            pods.insert(name.to_string(), pod);
            api.state
                .lock()
                .unwrap()
                .pods
                .insert(name.into(), (ip(name), role.into()));
        }
        agents.set(primary("db-1"));
        agents.set(replica("db-2", "0/3000000"));
        agents.set(replica("db-3", "0/3000000"));
        World {
            api,
            agents,
            trip,
            pods,
        }
    }

    /// A fresh operator process: new context, caches listed from what
    /// exists now (pods with the role labels the API server has).
    fn operator(&self) -> (Arc<Context>, Writers, tokio::task::JoinHandle<()>) {
        let (client, server) = self.api.serve();
        let ctx = context(client, Some(self.agents.clone()));
        let roles = self.api.state.lock().unwrap().pods.clone();
        let mut pods: Vec<Pod> = self
            .pods
            .values()
            .cloned()
            .map(|mut p| {
                let name = p.metadata.name.clone().unwrap_or_default();
                if let Some((_, role)) = roles.get(&name) {
                    p.metadata
                        .labels
                        .get_or_insert_default()
                        .insert(labels::ROLE.into(), role.clone());
                }
                p
            })
            .collect();
        pods.push(pooler_pod());
        let writers = seed(&ctx, &pods, &[operator_secret()]);
        (ctx, writers, server)
    }

    fn primaries(&self) -> Vec<String> {
        let reports = self.agents.reports.lock().unwrap();
        reports
            .values()
            .filter(|r| r.role == Role::Primary)
            .map(|r| r.name.clone())
            .collect()
    }

    fn labelled_primary(&self) -> Vec<String> {
        let st = self.api.state.lock().unwrap();
        st.pods
            .iter()
            .filter(|(_, (_, role))| role == "primary")
            .map(|(n, _)| n.clone())
            .collect()
    }
}

fn steps(timeline: Vec<String>) -> Vec<String> {
    // Full status writes (the report step) are checked apart.
    timeline.into_iter().filter(|s| s != "status").collect()
}

#[tokio::test]
async fn a_requested_switchover_holds_clients_and_moves_the_primary_in_order() {
    let w = World::new(spec(), &spec(), Some("db-2"));
    let (ctx, _writers, server) = w.operator();
    let result = reconcile_once(&w.api, &ctx, LIMIT).await.expect("finished");
    assert_eq!(
        result.unwrap(),
        kube::runtime::controller::Action::requeue(Duration::ZERO)
    );
    assert_eq!(
        w.trip.take_timeline(),
        [
            "status switchover Pausing",
            "pause db-pooler-a",
            "status switchover+targetPrimary Promoting",
            "label db-1 replica",
            "demote db-1 for db-2",
            "promote db-2",
            "label db-2 primary",
            "reconnect db-pooler-a",
            "resume db-pooler-a",
            "status currentPrimary+switchover Completed",
        ]
    );
    let status = w.api.status();
    assert_eq!(status["targetPrimary"], "db-2");
    assert_eq!(status["currentPrimary"], "db-2");
    assert_eq!(status["switchover"]["request"], "db-2");
    assert!(status["switchover"]["clientHoldMs"].is_u64());

    // The same annotation again (a GitOps re-apply) does nothing.
    let (ctx, _writers2, server2) = w.operator();
    reconcile_once(&w.api, &ctx, LIMIT).await.unwrap().unwrap();
    let again = steps(w.trip.take_timeline());
    assert!(
        again
            .iter()
            .all(|s| !s.starts_with("pause") && !s.starts_with("promote")),
        "{again:?}"
    );
    server.abort();
    server2.abort();
}

#[tokio::test]
async fn a_switchover_target_without_the_old_primarys_last_wal_is_not_promoted() {
    let w = World::new(spec(), &spec(), Some("db-2"));
    // db-2 stopped receiving before the primary's last write.
    w.agents.set(replica("db-2", "0/2000000"));
    let (ctx, _writers, server) = w.operator();
    reconcile_once(&w.api, &ctx, LIMIT)
        .await
        .expect("finished")
        .unwrap();
    assert_eq!(
        steps(w.trip.take_timeline()),
        [
            "status switchover Pausing",
            "pause db-pooler-a",
            "status switchover+targetPrimary Promoting",
            "label db-1 replica",
            "demote db-1 for db-2",
            "promote db-2",
            "status targetPrimary",
            "label db-1 primary",
            "reconnect db-pooler-a",
            "resume db-pooler-a",
            "status switchover Failed",
        ]
    );
    let status = w.api.status();
    assert_eq!(status["targetPrimary"], "db-1");
    assert_eq!(status["switchover"]["phase"], "Failed");
    let message = status["switchover"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("promoting db-2 failed"), "{message}");
    assert!(message.contains("0/3000000"), "{message}");
    assert_eq!(w.labelled_primary(), ["db-1"]);
    server.abort();
}

#[tokio::test]
async fn a_lost_primary_is_failed_over_to_the_replica_with_most_wal() {
    let w = World::new(spec(), &spec(), None);
    w.agents.remove("db-1");
    w.agents.set(replica("db-3", "0/3000100"));
    let (ctx, _writers, server) = w.operator();
    let lease = Lease {
        metadata: child_meta("db-primary", BTreeMap::new()),
        spec: Some(LeaseSpec {
            holder_identity: Some("db-1".into()),
            lease_duration_seconds: Some(4),
            ..LeaseSpec::default()
        }),
    };
    // Last renewal seen 10 s ago: past the 4 s duration.
    ctx.leases
        .observe(&lease, Instant::now() - Duration::from_secs(10));
    reconcile_once(&w.api, &ctx, LIMIT).await.unwrap().unwrap();
    assert_eq!(
        w.trip.take_timeline(),
        [
            "status failover+targetPrimary Promoting",
            "label db-1 replica",
            "promote db-3",
            "label db-3 primary",
            "reconnect db-pooler-a",
            "status failover Completed",
        ]
    );
    let status = w.api.status();
    assert_eq!(status["targetPrimary"], "db-3");
    assert_eq!(status["failover"]["from"], "db-1");
    assert_eq!(status["failover"]["candidateLsn"], "0/3000100");
    server.abort();
}

/// Plays the kubelet after a reconcile: deleted pods go, created ones run
/// (replicas streaming); role labels follow the API server.
fn kubelet(w: &mut World, writers: &mut Writers, calls: &[controller_support::Call]) {
    for call in calls {
        let name = call.path.rsplit('/').next().unwrap_or_default().to_string();
        if call.method == http::Method::DELETE && call.path.contains("/pods/") {
            if let Some(p) = w.pods.remove(&name) {
                writers.pods.apply_watcher_event(&watcher::Event::Delete(p));
            }
            w.agents.remove(&name);
        }
        if call.method == http::Method::POST && call.path.ends_with("/pods") {
            let pod: Pod = serde_json::from_value(call.body.clone()).unwrap();
            let name = pod.metadata.name.clone().unwrap();
            if let Some(checked) = image_checked(&pod) {
                writers
                    .pods
                    .apply_watcher_event(&watcher::Event::Apply(checked.clone()));
                w.pods.insert(name, checked);
                continue;
            }
            let pod = running(pod, &ip(&name), true);
            writers
                .pods
                .apply_watcher_event(&watcher::Event::Apply(pod.clone()));
            w.pods.insert(name.clone(), pod);
            w.agents.set(replica(&name, "0/3000000"));
        }
    }
    let roles = w.api.state.lock().unwrap().pods.clone();
    for (name, pod) in &mut w.pods {
        if let Some((_, role)) = roles.get(name) {
            pod.metadata
                .labels
                .get_or_insert_default()
                .insert(labels::ROLE.into(), role.clone());
            writers
                .pods
                .apply_watcher_event(&watcher::Event::Apply(pod.clone()));
        }
    }
}

/// An image-check pod as the kubelet leaves it: its check ran and passed
/// (any image runs the major it is asked for here, except images named
/// `…wrong…`, which run PostgreSQL 15).
fn image_checked(pod: &Pod) -> Option<Pod> {
    let labels = pod.metadata.labels.as_ref()?;
    if labels.get(labels::COMPONENT).map(String::as_str) != Some(labels::COMPONENT_IMAGE_CHECK) {
        return None;
    }
    let annotations = pod.metadata.annotations.as_ref()?;
    let major = &annotations[labels::MAJOR_ANNOTATION];
    let image = &annotations[labels::IMAGE_ANNOTATION];
    let wrong = image.contains("wrong");
    // A major upgrade is rehearsed; images named `…regproc…` meet data
    // pg_upgrade refuses.
    let from = annotations.get(labels::UPGRADE_FROM_ANNOTATION);
    let refused = from.is_some() && image.contains("regproc");
    let result = capstan::contract::image_check::ImageCheckResult {
        passed: !wrong && !refused,
        version: Some(if wrong {
            "15.8".into()
        } else {
            format!("{major}.6")
        }),
        error: if wrong {
            Some(format!(
                "the binaries in /usr/lib/postgresql/15/bin are PostgreSQL 15, but the cluster runs PostgreSQL {major}"
            ))
        } else if refused {
            Some(format!(
                "pg_upgrade from PostgreSQL 17 to {major} refused: Checking data type usage failed check: Checking for reg* data types in user tables"
            ))
        } else {
            None
        },
        pgbackrest: None,
        rehearsal_failed: refused,
        upgrade: from.filter(|_| !wrong && !refused).map(|from| {
            capstan::contract::image_check::UpgradeRehearsal {
                from: from.parse().unwrap(),
                database_bytes: 900 << 20,
                link_bytes: 50 << 20,
                copy_ms: 9000,
                pg_upgrade_ms: 2000,
                extensions: vec!["pg_stat_statements 1.11".into()],
            }
        }),
    };
    let mut pod = pod.clone();
    pod.status = Some(k8s_openapi::api::core::v1::PodStatus {
        phase: Some("Succeeded".into()),
        container_statuses: Some(vec![k8s_openapi::api::core::v1::ContainerStatus {
            name: "check".into(),
            state: Some(k8s_openapi::api::core::v1::ContainerState {
                terminated: Some(k8s_openapi::api::core::v1::ContainerStateTerminated {
                    exit_code: 0,
                    message: Some(result.to_message()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }]),
        ..Default::default()
    });
    Some(pod)
}

fn updated_spec() -> Value {
    let mut s = spec();
    s["resources"] = json!({"requests": {"cpu": "100m", "memory": "256Mi"}});
    s
}

/// Reconciles until the operation settles; returns the steps taken.
async fn roll(w: &mut World) -> (Vec<String>, Vec<Value>) {
    let (ctx, mut writers, server) = w.operator();
    let mut operations = vec![];
    for _ in 0..30 {
        reconcile_once(&w.api, &ctx, LIMIT).await.unwrap().unwrap();
        let calls = w.api.take_calls();
        kubelet(w, &mut writers, &calls);
        let op = w.api.status()["operation"].clone();
        if op.is_null() {
            break;
        }
        operations.push(op);
    }
    server.abort();
    (steps(w.trip.take_timeline()), operations)
}

#[tokio::test]
async fn a_rolling_update_takes_replicas_first_and_moves_the_primary_by_switchover() {
    let mut w = World::new(updated_spec(), &spec(), None);
    let (steps, operations) = roll(&mut w).await;
    assert_eq!(
        steps,
        [
            "delete db-2",
            "create db-2",
            "delete db-3",
            "create db-3",
            "status switchover Pausing",
            "pause db-pooler-a",
            "status switchover+targetPrimary Promoting",
            "label db-1 replica",
            "demote db-1 for db-2",
            "promote db-2",
            "label db-2 primary",
            "reconnect db-pooler-a",
            "resume db-pooler-a",
            "status currentPrimary+switchover Completed",
            "delete db-1",
            "create db-1",
        ]
    );
    assert!(
        operations.iter().all(|o| o.is_null()
            || ["RollingUpdate", "CreateInstances"].contains(&o["type"].as_str().unwrap())),
        "{operations:#?}"
    );
    let model = model_of(&updated_spec());
    for (name, pod) in &w.pods {
        let want = instance::pod(&model, name, "replica");
        assert_eq!(
            pod.metadata.annotations.as_ref().unwrap()[instance::SPEC_HASH_ANNOTATION],
            want.metadata.annotations.unwrap()[instance::SPEC_HASH_ANNOTATION],
            "{name} runs the new spec"
        );
    }
    assert_eq!(w.api.status()["targetPrimary"], "db-2");
}

/// Like [`kubelet`], but created pods run PostgreSQL 18: the upgrading
/// primary's pod (it carries the old binaries) comes up upgraded, the
/// others as streaming replicas of 18.
fn upgrade_kubelet(w: &mut World, writers: &mut Writers, calls: &[controller_support::Call]) {
    kubelet(w, writers, calls);
    for call in calls {
        if call.method == http::Method::POST && call.path.ends_with("/pods") {
            let pod: Pod = serde_json::from_value(call.body.clone()).unwrap();
            let name = pod.metadata.name.clone().unwrap();
            if image_checked(&pod).is_some() {
                continue;
            }
            let mut report = if capstan::resources::upgrade::is_upgrade_pod(&pod) {
                let mut p = primary(&name);
                p.upgrade = Some(UpgradeReport {
                    phase: UpgradePhase::Analyzing,
                    from_version: 17,
                    to_version: 18,
                    message: None,
                    upgrade_ms: Some(1500),
                });
                p
            } else {
                replica(&name, "0/3000000")
            };
            report.version = Some("18.6".into());
            w.agents.set(report);
        }
    }
}

/// Reconciles a 17 → 18 upgrade until it completed and nothing is left to
/// do; with `restarts`, every reconcile is a fresh operator process.
async fn upgrade(w: &mut World, restarts: bool) -> (Vec<String>, Vec<String>) {
    let (mut ctx, mut writers, mut server) = w.operator();
    let mut kinds = vec![];
    for _ in 0..40 {
        if restarts {
            server.abort();
            (ctx, writers, server) = w.operator();
        }
        reconcile_once(&w.api, &ctx, LIMIT).await.unwrap().unwrap();
        let calls = w.api.take_calls();
        upgrade_kubelet(w, &mut writers, &calls);
        let status = w.api.status();
        let op = status["operation"].clone();
        // A step that records its progress plans again at once, before a
        // full status write: only a completed upgrade with nothing else to
        // do ends the loop.
        if op.is_null() && status["upgrade"]["phase"] == "Completed" {
            break;
        }
        kinds.push(op["type"].as_str().unwrap_or_default().to_string());
    }
    server.abort();
    (steps(w.trip.take_timeline()), kinds)
}

fn upgrading_world() -> World {
    let mut upgraded = spec();
    upgraded["postgres"]["version"] = json!(18);
    World::new(upgraded, &spec(), None)
}

#[tokio::test]
async fn an_operator_restarted_before_every_step_upgrades_the_same_way() {
    let mut once = upgrading_world();
    let (straight, _) = upgrade(&mut once, false).await;
    let mut w = upgrading_world();
    let (restarted, _) = upgrade(&mut w, true).await;
    assert_eq!(restarted, straight);
    assert_eq!(w.api.status()["postgresVersion"], 18);
}

#[tokio::test]
async fn a_major_upgrade_stops_the_replicas_holds_clients_and_upgrades_the_primary() {
    let mut w = upgrading_world();
    let (steps, kinds) = upgrade(&mut w, false).await;
    assert_eq!(
        steps[..14],
        [
            // The new image is tried before anything stops.
            "create db-image-check",
            "status imageCheck",
            "status upgrade Upgrading",
            "delete db-2",
            "delete db-3",
            "delete db-image-check",
            "prepare-stop db-1",
            "pause db-pooler-a",
            "status upgrade Upgrading",
            "delete db-1",
            "create db-1",
            "reconnect db-pooler-a",
            "resume db-pooler-a",
            "status postgresVersion+upgrade Recloning",
        ],
        "{steps:#?}"
    );
    assert_eq!(
        steps[14..17],
        ["create db-2", "create db-3", "status upgrade Completed"],
        "{steps:#?}"
    );
    // Then the primary's pod (it still carries the old binaries) is
    // replaced by a rolling switchover.
    assert!(
        steps[17..].contains(&"status switchover Pausing".to_string()),
        "{steps:#?}"
    );
    assert_eq!(w.api.status()["imageCheck"]["passed"], true);
    assert_eq!(w.api.status()["imageCheck"]["major"], 18);
    assert_eq!(w.api.status()["imageCheck"]["upgradeFrom"], 17);
    assert_eq!(w.api.status()["imageCheck"]["linkBytes"], 50 << 20);
    assert!(kinds.contains(&"MajorUpgrade".to_string()), "{kinds:?}");
    let status = w.api.status();
    assert_eq!(status["postgresVersion"], 18);
    assert_eq!(status["upgrade"]["phase"], "Completed");
    assert_eq!(status["upgrade"]["pgUpgradeMs"], 1500);
    assert!(status["upgrade"]["downtimeMs"].is_u64());
    assert!(status["upgrade"]["primaryStoppedAt"].is_string());
    let model =
        model_of(&json!({"instances": 3, "postgres": {"version": 18}, "storage": {"size": "1Gi"}}));
    for (name, pod) in &w.pods {
        let want = instance::pod(&model, name, "replica");
        assert_eq!(
            pod.metadata.annotations.as_ref().unwrap()[instance::SPEC_HASH_ANNOTATION],
            want.metadata.annotations.unwrap()[instance::SPEC_HASH_ANNOTATION],
            "{name} runs the 18 image"
        );
    }
}

/// The Stalled condition after a few reconciles, and the steps taken.
async fn stalled_upgrade(w: &mut World) -> (Vec<String>, Value) {
    let (steps, _) = roll(w).await;
    let status = w.api.status();
    let stalled = status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Stalled")
        .cloned()
        .unwrap_or_default();
    (steps, stalled)
}

#[tokio::test]
async fn a_failed_rehearsal_stalls_the_upgrade_before_anything_stops() {
    let mut upgraded = spec();
    upgraded["postgres"]["version"] = json!(18);
    upgraded["postgres"]["image"] = json!("registry.example/regproc:18");
    let mut w = World::new(upgraded, &spec(), None);
    let (steps, stalled) = stalled_upgrade(&mut w).await;
    assert_eq!(
        steps,
        [
            "create db-image-check",
            "status imageCheck",
            "delete db-image-check"
        ],
        "rehearsed, recorded, removed; no instance stopped, no pooler paused"
    );
    assert_eq!(stalled["status"], "True", "{stalled}");
    assert_eq!(stalled["reason"], "UpgradeCheckFailed");
    let message = stalled["message"].as_str().unwrap();
    assert!(
        message.contains("reg* data types") && message.contains("spec.postgres.version back to 17"),
        "{message}"
    );
    assert_eq!(w.api.status()["postgresVersion"], 17);
}

#[tokio::test]
async fn an_upgrade_waits_for_room_on_the_primarys_volume() {
    let mut w = upgrading_world();
    let mut p = primary("db-1");
    p.data_volume = Some(capstan::contract::instance::VolumeUsage {
        size_bytes: 1 << 30,
        available_bytes: 200 << 20,
    });
    w.agents.set(p);
    let (steps, stalled) = stalled_upgrade(&mut w).await;
    assert_eq!(
        steps,
        [
            "create db-image-check",
            "status imageCheck",
            "delete db-image-check"
        ],
        "{steps:#?}"
    );
    assert_eq!(stalled["reason"], "UpgradeNeedsSpace", "{stalled}");
    assert!(
        stalled["message"]
            .as_str()
            .unwrap()
            .contains("200 MiB of 1024 MiB are free"),
        "{stalled}"
    );
}

#[tokio::test]
async fn a_supervised_rolling_update_waits_for_the_users_switchover() {
    let mut s = updated_spec();
    s["updateStrategy"] = json!({"supervised": true});
    let mut w = World::new(s, &spec(), None);
    let (steps, operations) = roll(&mut w).await;
    assert_eq!(
        steps,
        ["delete db-2", "create db-2", "delete db-3", "create db-3"],
        "the primary is not touched"
    );
    let last = operations.last().unwrap();
    assert_eq!(last["type"], "RollingUpdate");
    assert!(
        last["message"]
            .as_str()
            .unwrap()
            .contains("waits for a switchover request"),
        "{last}"
    );
    assert_eq!(w.primaries(), ["db-1"]);
}

#[tokio::test]
async fn an_operator_killed_at_any_step_of_a_switchover_resumes_or_rolls_back() {
    let clean = World::new(spec(), &spec(), Some("db-2"));
    let (ctx, _w, server) = clean.operator();
    reconcile_once(&clean.api, &ctx, LIMIT)
        .await
        .unwrap()
        .unwrap();
    server.abort();
    let total = clean.trip.actions();
    assert!(total >= 10, "{total} actions");

    for k in 1..=total {
        let w = World::new(spec(), &spec(), Some("db-2"));
        w.trip.arm(k);
        let (ctx, _writers, server) = w.operator();
        let died = reconcile_once(&w.api, &ctx, Duration::from_secs(2)).await;
        assert!(died.is_none(), "step {k}: the operator should hang there");
        server.abort();
        let before = w.trip.take_timeline();
        w.trip.arm(0);

        // A new operator process, reconciling until the record settles.
        let (ctx, _writers, server) = w.operator();
        for _ in 0..3 {
            reconcile_once(&w.api, &ctx, LIMIT).await.unwrap().unwrap();
            let phase = w.api.status()["switchover"]["phase"].clone();
            if phase == "Completed" || phase == "Failed" {
                break;
            }
        }
        server.abort();
        let after = w.trip.take_timeline();
        let status = w.api.status();
        let phase = status["switchover"]["phase"].as_str().unwrap_or_default();
        let primary = if phase == "Completed" { "db-2" } else { "db-1" };
        let context = format!("killed at step {k} ({:?}); then {after:?}", before.last());
        assert!(
            phase == "Completed" || phase == "Failed",
            "{context}: {status}"
        );
        assert_eq!(w.primaries(), [primary], "{context}");
        assert_eq!(status["targetPrimary"], primary, "{context}");
        assert_eq!(w.labelled_primary(), [primary], "{context}");
        let pooler: Vec<&String> = before
            .iter()
            .chain(after.iter())
            .filter(|s| s.ends_with("db-pooler-a") && !s.starts_with("reconnect"))
            .collect();
        if let Some(last) = pooler.last() {
            assert_eq!(
                last.as_str(),
                "resume db-pooler-a",
                "{context}: poolers left paused"
            );
        }
    }
}

#[tokio::test]
async fn a_renewed_primary_lease_is_not_applied_again() {
    let w = World::new(spec(), &spec(), None);
    let (ctx, _writers, server) = w.operator();
    let lease_path = "/apis/coordination.k8s.io/v1/namespaces/ns/leases/db-primary";
    let lease_patches = |calls: Vec<controller_support::Call>| {
        calls
            .into_iter()
            .filter(|c| c.path == lease_path)
            .map(|c| c.body)
            .collect::<Vec<Value>>()
    };
    reconcile_once(&w.api, &ctx, LIMIT).await.unwrap().unwrap();
    let applied = lease_patches(w.api.take_calls());
    assert_eq!(applied.len(), 1, "the first reconcile applies the Lease");
    // The holder renews it: its resourceVersion and spec move, Capstan's
    // labels and owner stay.
    let mut renewed: Lease = serde_json::from_value(applied[0].clone()).unwrap();
    renewed.metadata.resource_version = Some("777".into());
    renewed.spec = Some(LeaseSpec {
        holder_identity: Some("db-1".into()),
        lease_duration_seconds: Some(4),
        ..LeaseSpec::default()
    });
    ctx.leases.observe(&renewed, Instant::now());
    reconcile_once(&w.api, &ctx, LIMIT).await.unwrap().unwrap();
    assert!(lease_patches(w.api.take_calls()).is_empty());
    // Someone strips Capstan's labels: applied again.
    let mut stripped = renewed.clone();
    stripped
        .metadata
        .labels
        .as_mut()
        .unwrap()
        .remove(labels::MANAGED_BY);
    ctx.leases.observe(&stripped, Instant::now());
    reconcile_once(&w.api, &ctx, LIMIT).await.unwrap().unwrap();
    assert_eq!(lease_patches(w.api.take_calls()).len(), 1);
    server.abort();
}

fn backup_spec() -> Value {
    let mut s = spec();
    s["backup"] = json!({"repositories": [{"name": "repo1", "s3": {
        "endpoint": "s3.store", "region": "r", "bucket": "bkt",
        "credentials": {"secretName": "keys"}}}]});
    s
}

fn backup_object(name: &str, status: Option<Value>) -> capstan::api::pgbackup::PostgresBackup {
    serde_json::from_value(json!({
        "apiVersion": "capstan.dev/v1alpha1", "kind": "PostgresBackup",
        "metadata": {"name": name, "namespace": "ns", "creationTimestamp": "2026-12-04T10:00:00Z"},
        "spec": {"cluster": "db", "type": "full"},
        "status": status,
    }))
    .unwrap()
}

/// The statuses written to backup `name`, in order.
fn status_writes(calls: Vec<controller_support::Call>, name: &str) -> Vec<Value> {
    let path = format!("/postgresbackups/{name}/status");
    calls
        .into_iter()
        .filter(|c| c.path.ends_with(&path))
        .map(|c| c.body["status"].clone())
        .collect()
}

#[tokio::test]
async fn a_backup_is_started_on_the_primary_and_its_result_recorded() {
    use capstan::contract::backup::{ArchiveReport, BackupResult, JobPhase};
    let w = World::new(backup_spec(), &backup_spec(), None);
    let mut report = primary("db-1");
    report.archive = Some(ArchiveReport {
        stanza_ready: true,
        ..ArchiveReport::default()
    });
    w.agents.set(report);
    let (ctx, mut writers, server) = w.operator();
    writers
        .backups
        .apply_watcher_event(&watcher::Event::Apply(backup_object("b1", None)));
    reconcile_once(&w.api, &ctx, LIMIT).await.unwrap().unwrap();
    assert_eq!(steps(w.trip.take_timeline()), ["backup db-1 b1"]);
    let written = status_writes(w.api.take_calls(), "b1");
    assert_eq!(written.len(), 1, "{written:?}");
    assert_eq!(written[0]["phase"], "Running");
    assert_eq!(written[0]["instance"], "db-1");
    assert_eq!(written[0]["repository"], "repo1");

    // The object now says Running; the instance finishes the job.
    writers
        .backups
        .apply_watcher_event(&watcher::Event::Apply(backup_object(
            "b1",
            Some(json!({"phase": "Running", "instance": "db-1"})),
        )));
    {
        let mut reports = w.agents.reports.lock().unwrap();
        let job = reports.get_mut("db-1").unwrap().backup.as_mut().unwrap();
        job.phase = JobPhase::Completed;
        job.result = Some(BackupResult {
            label: "20261204-100000F".into(),
            lsn_stop: Some("0/5000100".into()),
            started_at: Some("2026-12-04T10:00:00Z".into()),
            stopped_at: Some("2026-12-04T10:00:42Z".into()),
            ..BackupResult::default()
        });
    }
    reconcile_once(&w.api, &ctx, LIMIT).await.unwrap().unwrap();
    assert!(
        steps(w.trip.take_timeline()).is_empty(),
        "no agent call to finish"
    );
    let written = status_writes(w.api.take_calls(), "b1");
    assert_eq!(written.len(), 1, "{written:?}");
    // Full backups are verified by default (tests/controller_verify.rs).
    assert_eq!(written[0]["phase"], "Verifying");
    assert_eq!(written[0]["label"], "20261204-100000F");
    assert_eq!(written[0]["durationSeconds"], 42);
    assert_eq!(written[0]["verification"]["phase"], "Pending");
    server.abort();
}

/// `target: preferReplica`: the primary writes the sentinel, then the
/// least-behind streaming replica is asked for a standby backup, recorded
/// as running there.
#[tokio::test]
async fn a_prefer_replica_backup_runs_on_a_streaming_replica_after_the_primarys_sentinel() {
    use capstan::contract::backup::ArchiveReport;
    let mut spec = backup_spec();
    spec["backup"]["target"] = json!("preferReplica");
    let w = World::new(spec.clone(), &spec, None);
    let mut report = primary("db-1");
    report.archive = Some(ArchiveReport {
        stanza_ready: true,
        ..ArchiveReport::default()
    });
    w.agents.set(report);
    let mut behind = replica("db-2", "0/2000000");
    behind.lag_bytes = Some(1 << 20);
    w.agents.set(behind);
    let mut close = replica("db-3", "0/3000000");
    close.lag_bytes = Some(0);
    w.agents.set(close);
    let (ctx, mut writers, server) = w.operator();
    writers
        .backups
        .apply_watcher_event(&watcher::Event::Apply(backup_object("b1", None)));
    reconcile_once(&w.api, &ctx, LIMIT).await.unwrap().unwrap();
    assert_eq!(
        steps(w.trip.take_timeline()),
        ["sentinel db-1 b1", "backup db-3 b1"]
    );
    let written = status_writes(w.api.take_calls(), "b1");
    assert_eq!(written.len(), 1, "{written:?}");
    assert_eq!(written[0]["phase"], "Running");
    assert_eq!(written[0]["instance"], "db-3");
    assert!(
        written[0]["message"]
            .as_str()
            .unwrap()
            .contains("streaming replica"),
        "{written:?}"
    );
    let job = w.agents.reports.lock().unwrap()["db-3"].backup.clone();
    assert!(job.is_some(), "the replica runs it");

    // It completes: recorded, and the primary re-reads the repositories.
    writers
        .backups
        .apply_watcher_event(&watcher::Event::Apply(backup_object(
            "b1",
            Some(json!({"phase": "Running", "instance": "db-3"})),
        )));
    {
        let mut reports = w.agents.reports.lock().unwrap();
        let job = reports.get_mut("db-3").unwrap().backup.as_mut().unwrap();
        job.phase = capstan::contract::backup::JobPhase::Completed;
        job.result = Some(capstan::contract::backup::BackupResult {
            label: "20261204-100000F".into(),
            started_at: Some("2026-12-04T10:00:00Z".into()),
            stopped_at: Some("2026-12-04T10:00:42Z".into()),
            ..Default::default()
        });
    }
    reconcile_once(&w.api, &ctx, LIMIT).await.unwrap().unwrap();
    assert_eq!(steps(w.trip.take_timeline()), ["inventory db-1"]);
    server.abort();
}

/// The API double's writes to `PostgresBackup` objects other than status:
/// (method, name, body).
fn backup_writes(calls: &[controller_support::Call]) -> Vec<(String, String, Value)> {
    calls
        .iter()
        .filter(|c| c.path.contains("/postgresbackups/") && !c.path.ends_with("/status"))
        .filter(|c| c.method != http::Method::GET)
        .map(|c| {
            let name = c.path.rsplit('/').next().unwrap_or_default().to_string();
            (c.method.to_string(), name, c.body.clone())
        })
        .collect()
}

fn event_notes(calls: &[controller_support::Call], reason: &str) -> Vec<String> {
    calls
        .iter()
        .filter(|c| c.path.ends_with("/events") && c.body["reason"] == reason)
        .map(|c| c.body["note"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[tokio::test]
async fn a_due_schedule_creates_one_backup_object_and_a_later_reconcile_none() {
    use capstan::contract::backup::ArchiveReport;
    let mut spec = backup_spec();
    spec["backup"]["schedules"] =
        json!([{"name": "yearly", "type": "full", "schedule": "0 0 1 1 *"}]);
    let w = World::new(spec.clone(), &spec, None);
    let mut report = primary("db-1");
    report.archive = Some(ArchiveReport {
        stanza_ready: true,
        ..ArchiveReport::default()
    });
    w.agents.set(report);
    // The run recorded as next has come (the operator was down over it).
    let overdue = json!({"schedules": [{"name": "yearly", "schedule": "0 0 1 1 *",
                                        "next": "2020-01-01T00:00:00Z"}]});
    w.api.state.lock().unwrap().cluster["status"]["backup"] = overdue.clone();
    let (ctx, mut writers, server) = w.operator();

    reconcile_once(&w.api, &ctx, LIMIT).await.unwrap().unwrap();
    let calls = w.api.take_calls();
    let writes = backup_writes(&calls);
    assert_eq!(writes.len(), 1, "{writes:?}");
    let (method, name, body) = &writes[0];
    assert_eq!(method, "PATCH", "server-side apply");
    assert!(
        name.starts_with("db-yearly-") && name.ends_with("01010000"),
        "{name}"
    );
    assert_eq!(
        body["spec"],
        json!({"cluster": "db", "type": "full", "repository": "repo1"})
    );
    assert_eq!(body["metadata"]["labels"]["capstan.dev/schedule"], "yearly");
    assert_eq!(body["metadata"]["ownerReferences"][0]["name"], "db");
    let run = body["metadata"]["annotations"]["capstan.dev/scheduled-at"].clone();
    assert_eq!(event_notes(&calls, "BackupScheduled").len(), 1);
    // Status shows the next run, a year on, and the object made.
    let status = w.api.status();
    let entry = &status["backup"]["schedules"][0];
    assert_eq!(entry["lastBackup"], json!(name));
    assert!(
        entry["next"].as_str().unwrap() > run.as_str().unwrap(),
        "{entry}"
    );
    assert_eq!(status["backup"]["nextScheduled"]["schedule"], "yearly");
    assert_eq!(status["backup"]["nextScheduled"]["time"], entry["next"]);

    // The watch delivers the object: it is started, and no second one made.
    let object: capstan::api::pgbackup::PostgresBackup = serde_json::from_value({
        let mut o = body.clone();
        o["metadata"]["namespace"] = json!("ns");
        o["metadata"]["creationTimestamp"] = json!("2026-12-04T10:00:00Z");
        o
    })
    .unwrap();
    writers
        .backups
        .apply_watcher_event(&watcher::Event::Apply(object));
    reconcile_once(&w.api, &ctx, LIMIT).await.unwrap().unwrap();
    assert_eq!(
        steps(w.trip.take_timeline()),
        [format!("backup db-1 {name}")]
    );
    assert!(backup_writes(&w.api.take_calls()).is_empty());
    // Even when the status that moved the schedule on was lost.
    w.api.state.lock().unwrap().cluster["status"]["backup"] = overdue;
    reconcile_once(&w.api, &ctx, LIMIT).await.unwrap().unwrap();
    assert!(backup_writes(&w.api.take_calls()).is_empty());
    server.abort();
}

#[tokio::test]
async fn objects_of_expired_backups_are_deleted_with_an_event() {
    use capstan::contract::backup::{ArchiveReport, RepositoryInventory};
    let w = World::new(backup_spec(), &backup_spec(), None);
    let mut report = primary("db-1");
    report.archive = Some(ArchiveReport {
        stanza_ready: true,
        repositories: vec![RepositoryInventory {
            repository: 1,
            read_at: "2026-12-04T12:00:00.000000Z".into(),
            labels: vec!["20261204-110000F".into()],
            first_recoverability_point: Some("2026-12-04T11:05:00.000000Z".into()),
            ..RepositoryInventory::default()
        }],
        ..ArchiveReport::default()
    });
    w.agents.set(report);
    let (ctx, mut writers, server) = w.operator();
    for (name, label, stopped) in [
        ("old", "20261204-100000F", "2026-12-04T10:05:00Z"),
        ("new", "20261204-110000F", "2026-12-04T11:05:00Z"),
    ] {
        writers
            .backups
            .apply_watcher_event(&watcher::Event::Apply(backup_object(
                name,
                Some(
                    json!({"phase": "Completed", "label": label, "repository": "repo1",
                            "stoppedAt": stopped}),
                ),
            )));
    }
    reconcile_once(&w.api, &ctx, LIMIT).await.unwrap().unwrap();
    let calls = w.api.take_calls();
    let writes = backup_writes(&calls);
    assert_eq!(writes.len(), 1, "{writes:?}");
    assert_eq!(
        (writes[0].0.as_str(), writes[0].1.as_str()),
        ("DELETE", "old")
    );
    let notes = event_notes(&calls, "BackupExpired");
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert!(
        notes[0].contains("old") && notes[0].contains("20261204-100000F"),
        "{notes:?}"
    );
    assert_eq!(
        w.api.status()["backup"]["firstRecoverabilityPoint"],
        "2026-12-04T11:05:00Z"
    );
    server.abort();
}

const NEW_BINARY: &str = "5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed";

fn agent(sha: &str) -> capstan::contract::agent::AgentBuild {
    capstan::contract::agent::AgentBuild {
        version: "0.1.0".into(),
        sha256: Some(sha.into()),
        arch: std::env::consts::ARCH.into(),
        replaceable: true,
    }
}

#[tokio::test]
async fn a_new_operator_binary_reaches_every_agent_in_place_and_recreates_no_pod() {
    // What the operator's own binary hashes to in this test process.
    capstan::agents::binary::start_hashing(Some(NEW_BINARY.into()));
    let mut w = World::new(spec(), &spec(), None);
    // The pods were made by the previous operator image.
    let mut old = model_of(&spec());
    old.images.operator = "capstan:previous".into();
    for (name, role) in [
        ("db-1", "primary"),
        ("db-2", "replica"),
        ("db-3", "replica"),
    ] {
        let pod = running(instance::pod(&old, name, role), &ip(name), true);
        w.pods.insert(name.to_string(), pod);
        w.agents
            .reports
            .lock()
            .unwrap()
            .get_mut(name)
            .unwrap()
            .agent = Some(agent("01d01d01d01d01d"));
    }
    w.agents.poolers.lock().unwrap().insert(
        "db-pooler-a".into(),
        capstan::contract::pooler::PoolerReport {
            name: "db-pooler-a".into(),
            running: true,
            paused: false,
            backend_host: "db-rw".into(),
            backend_port: Some(5432),
            restarts: 0,
            reloads: 0,
            clients_active: 0,
            clients_waiting: 0,
            servers_active: 0,
            servers_idle: 0,
            last_error: None,
            agent: Some(agent("01d01d01d01d01d")),
            tls: Default::default(),
        },
    );
    let (steps, operations) = roll(&mut w).await;
    assert_eq!(
        steps,
        [
            "binary db-2",
            "binary db-3",
            "binary db-1",
            "binary db-pooler-a"
        ],
        "replicas, the primary, then the poolers; no pod deleted or created"
    );
    assert!(
        operations.iter().all(|o| o["type"] == "AgentUpgrade"),
        "{operations:#?}"
    );
    let status = w.api.status();
    for i in status["instances"].as_array().unwrap() {
        assert_eq!(i["agentBuild"], NEW_BINARY[..12], "{i}");
    }
    assert_eq!(status["proxy"]["agentBuilds"], json!([&NEW_BINARY[..12]]));
}

#[tokio::test]
async fn an_image_that_fails_its_check_stalls_and_recreates_nothing() {
    let mut wrong = spec();
    wrong["postgres"]["image"] = json!("registry.example/wrong:17");
    let mut w = World::new(wrong, &spec(), None);
    let (steps, operations) = roll(&mut w).await;
    assert_eq!(
        steps,
        [
            "create db-image-check",
            "status imageCheck",
            "delete db-image-check"
        ],
        "the check, its record, its pod removed; no instance pod touched"
    );
    assert!(
        operations.iter().all(|o| o["type"] == "ImageCheck"),
        "{operations:#?}"
    );
    let status = w.api.status();
    assert_eq!(status["imageCheck"]["passed"], false);
    let stalled = status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Stalled")
        .unwrap()
        .clone();
    assert_eq!(stalled["status"], "True", "{stalled}");
    assert_eq!(stalled["reason"], "ImageCheckFailed");
    assert!(
        stalled["message"]
            .as_str()
            .unwrap()
            .contains("PostgreSQL 15"),
        "{stalled}"
    );
}

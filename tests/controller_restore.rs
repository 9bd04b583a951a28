//! A cluster bootstrapped from a backup, through the controller against
//! the API double and the fake agent: the restore settings reach the
//! instances, a failed restore the instance reports makes the cluster
//! Stalled with reason RestoreFailed and a Warning Event naming the
//! cause, and a completed one clears it.

mod controller_support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use http::Method;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::watcher;
use serde_json::{Value, json};

use capstan::api::PostgresCluster;
use capstan::contract::instance::{InstanceReport, Role};
use capstan::contract::restore::{RestorePhase, RestoreReport};
use capstan::operator::cluster::validate::validate_offline;
use capstan::resources::{instance, labels};
use controller_support::{
    Api, FakeAgents, Tripwire, cluster, context, reconcile_once, running, seed,
};

const LIMIT: Duration = Duration::from_secs(10);
const PGBACKREST: &str =
    "ERROR: [075]: unable to find backup set with stop time less than '2026-12-04 10:00:00+00'";

fn spec() -> Value {
    json!({"instances": 2, "postgres": {"version": 17}, "storage": {"size": "1Gi"},
        "bootstrap": {"restore": {
            "source": {"cluster": "orders", "repository": {"s3": {
                "endpoint": "s3.store", "region": "r", "bucket": "bkt",
                "credentials": {"secretName": "orders-s3"}}}},
            "target": {"time": "2026-12-04T10:00:00Z"}}}})
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

fn report(restore: RestoreReport, primary: bool) -> InstanceReport {
    InstanceReport {
        name: "db-1".into(),
        role: if primary {
            Role::Primary
        } else {
            Role::Unknown
        },
        running: primary,
        ready: primary,
        timeline: primary.then_some(2),
        restore: Some(restore),
        ..InstanceReport::default()
    }
}

fn stalled(status: &Value) -> Value {
    status["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Stalled"))
        .cloned()
        .unwrap_or(Value::Null)
}

#[tokio::test]
async fn a_failed_restore_stalls_the_cluster_until_the_instance_restores() {
    let trip = Arc::new(Tripwire::default());
    let api = Api::new(
        cluster(
            spec(),
            Some(json!({"targetPrimary": "db-1", "postgresVersion": 17})),
        ),
        trip.clone(),
    );
    let agents = FakeAgents::new(trip);
    let c: PostgresCluster = serde_json::from_value(cluster(spec(), None)).unwrap();
    let model = validate_offline(&c, "capstan:test").unwrap().model;
    let pod = instance::pod(&model, "db-1", "primary");
    let mounted = pod
        .spec
        .as_ref()
        .unwrap()
        .volumes
        .iter()
        .flatten()
        .any(|v| {
            v.secret
                .as_ref()
                .is_some_and(|s| s.secret_name.as_deref() == Some("orders-s3"))
        });
    assert!(mounted, "the source's credentials are mounted");
    agents.set(report(
        RestoreReport {
            phase: RestorePhase::Waiting,
            stanza: "orders".into(),
            attempts: 2,
            last_error: Some(PGBACKREST.into()),
            retry_in_seconds: Some(20),
        },
        false,
    ));
    let (client, server) = api.serve();
    let ctx = context(client, Some(agents.clone()));
    let mut writers = seed(
        &ctx,
        &[running(pod.clone(), "10.0.0.1", false)],
        &[operator_secret()],
    );

    reconcile_once(&api, &ctx, LIMIT).await.unwrap().unwrap();
    let calls = api.take_calls();
    let status = api.status();
    let condition = stalled(&status);
    assert_eq!(condition["status"], "True", "{status:#}");
    assert_eq!(condition["reason"], "RestoreFailed");
    let message = condition["message"].as_str().unwrap_or_default();
    assert!(message.contains(PGBACKREST), "{message}");
    assert!(message.contains("attempt 2"), "{message}");
    assert_eq!(status["phase"], "Stalled");
    let events: Vec<&Value> = calls
        .iter()
        .filter(|c| c.method == Method::POST && c.path.contains("/events"))
        .map(|c| &c.body)
        .filter(|b| b["reason"] == "RestoreFailed")
        .collect();
    assert_eq!(events.len(), 1, "one Warning Event: {events:#?}");
    assert_eq!(events[0]["type"], "Warning");
    assert!(
        events[0]["note"]
            .as_str()
            .is_some_and(|n| n.contains("ERROR: [075]")),
        "{:#?}",
        events[0]
    );
    // The instances learn what to restore; no replica before the primary.
    let config = calls
        .iter()
        .find(|c| c.path.ends_with("/configmaps/db-config"))
        .expect("the settings ConfigMap is applied");
    let settings: Value =
        serde_json::from_str(config.body["data"]["instance.json"].as_str().unwrap()).unwrap();
    assert_eq!(settings["restore"]["stanza"], "orders");
    assert_eq!(
        settings["restore"]["target"]["time"],
        "2026-12-04T10:00:00Z"
    );
    assert_eq!(
        settings["restore"]["repository"]["path"],
        "/capstan/ns/orders"
    );
    assert!(
        !calls
            .iter()
            .any(|c| c.method == Method::POST && c.path.ends_with("/pods")),
        "no replica is created while the primary has not restored"
    );

    // The same failure again: no second Event.
    reconcile_once(&api, &ctx, LIMIT).await.unwrap().unwrap();
    let again = api.take_calls();
    assert!(
        !again
            .iter()
            .any(|c| c.path.contains("/events") && c.body["reason"] == "RestoreFailed"),
        "the Event is not repeated"
    );

    // Restored and promoted: no longer Stalled.
    agents.set(report(
        RestoreReport {
            phase: RestorePhase::Completed,
            stanza: "orders".into(),
            attempts: 3,
            last_error: None,
            retry_in_seconds: None,
        },
        true,
    ));
    writers
        .pods
        .apply_watcher_event(&watcher::Event::Apply(running(pod, "10.0.0.1", true)));
    reconcile_once(&api, &ctx, LIMIT).await.unwrap().unwrap();
    let status = api.status();
    assert_eq!(stalled(&status)["status"], "False", "{status:#}");
    assert_ne!(status["phase"], "Stalled");
    server.abort();
}

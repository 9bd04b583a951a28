//! What the operator's leader election and event recording do: Lease
//! election with kube-lease-manager (server-side apply conflicts decide
//! the winner) and Events from kube-runtime's Recorder.

mod common;

use std::time::Duration;

use common::{eventually, start};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::events::v1::Event;
use kube::Resource;
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::events::{Event as RecordedEvent, EventType, Recorder, Reporter};
use kube_lease_manager::LeaseManagerBuilder;
use serde_json::json;

#[tokio::test]
async fn exactly_one_lease_holder_and_handover() {
    let (_server, client) = start().await;
    let manager = |identity: &str| {
        LeaseManagerBuilder::new(client.clone(), "capstan-operator")
            .with_namespace("default")
            .with_identity(identity)
            .with_duration(3)
            .with_grace(1)
    };
    let (mut a, a_task) = manager("a").build().await.unwrap().watch().await;
    let (mut b, b_task) = manager("b").build().await.unwrap().watch().await;
    let leader = eventually("a leader", || {
        let (a, b) = (*a.borrow(), *b.borrow());
        async move {
            match (a, b) {
                (true, false) => Some("a"),
                (false, true) => Some("b"),
                (true, true) => panic!("two leaders at once"),
                (false, false) => None,
            }
        }
    })
    .await;
    // Both keep running for a couple of renewals: still exactly one leader.
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            *a.borrow_and_update() ^ *b.borrow_and_update(),
            "exactly one leader"
        );
    }
    // The leader steps down (closing its channel releases the lease).
    let (follower, follower_task) = if leader == "a" {
        drop(a);
        a_task.await.unwrap().unwrap();
        (b, b_task)
    } else {
        drop(b);
        b_task.await.unwrap().unwrap();
        (a, a_task)
    };
    eventually("the follower to take over", || {
        let now = *follower.borrow();
        async move { now.then_some(()) }
    })
    .await;
    drop(follower);
    follower_task.await.unwrap().unwrap();
}

#[tokio::test]
async fn recorder_events_are_stored_and_aggregated() {
    let (_server, client) = start().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "db"}})).unwrap();
    let cm = cms.create(&PostParams::default(), &cm).await.unwrap();
    let recorder = Recorder::new(client.clone(), Reporter::from("capstan-operator"));
    let event = RecordedEvent {
        type_: EventType::Normal,
        reason: "Switchover".into(),
        note: Some("db-2 is the new primary".into()),
        action: "Promote".into(),
        secondary: None,
    };
    let reference = cm.object_ref(&());
    recorder.publish(&event, &reference).await.unwrap();
    recorder.publish(&event, &reference).await.unwrap();
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    let list = events.list(&ListParams::default()).await.unwrap();
    assert_eq!(
        list.items.len(),
        1,
        "repeated events are aggregated into one object"
    );
    let stored = &list.items[0];
    assert_eq!(stored.reason.as_deref(), Some("Switchover"));
    assert_eq!(stored.series.as_ref().map(|s| s.count), Some(2));
    assert_eq!(
        stored.regarding.as_ref().and_then(|r| r.name.as_deref()),
        Some("db")
    );
}

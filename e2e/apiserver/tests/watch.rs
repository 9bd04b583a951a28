//! Watches through kube's client and kube-runtime: resume from a
//! resourceVersion, 410 Gone, selector transitions, bookmarks, initial
//! events, timeouts, and a Controller that outlives many watch timeouts.

mod common;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use capstan_e2e_apiserver::Config;
use common::{eventually, start, start_with};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use serde_json::json;

fn cm(name: &str, labels: serde_json::Value) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).unwrap()
}

fn describe(ev: &WatchEvent<ConfigMap>) -> String {
    match ev {
        WatchEvent::Added(o) => format!("ADDED {}", o.metadata.name.as_deref().unwrap_or("")),
        WatchEvent::Modified(o) => format!("MODIFIED {}", o.metadata.name.as_deref().unwrap_or("")),
        WatchEvent::Deleted(o) => format!("DELETED {}", o.metadata.name.as_deref().unwrap_or("")),
        WatchEvent::Bookmark(b) => format!("BOOKMARK {}", b.metadata.resource_version),
        WatchEvent::Error(e) => format!("ERROR {}", e.code),
    }
}

/// The next `n` non-bookmark events of a watch.
async fn next_events<S>(stream: &mut S, n: usize) -> Vec<String>
where
    S: futures::Stream<Item = kube::Result<WatchEvent<ConfigMap>>> + Unpin,
{
    let mut out = vec![];
    while out.len() < n {
        let ev = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("event in time")
            .expect("stream open")
            .expect("event ok");
        if !matches!(ev, WatchEvent::Bookmark(_)) {
            out.push(describe(&ev));
        }
    }
    out
}

#[tokio::test]
async fn watch_resumes_after_a_resource_version() {
    let (_server, client) = start().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let a = cms
        .create(&PostParams::default(), &cm("a", json!({})))
        .await
        .unwrap();
    cms.create(&PostParams::default(), &cm("b", json!({})))
        .await
        .unwrap();
    cms.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"k": "v"}})),
    )
    .await
    .unwrap();
    let rv = a.metadata.resource_version.unwrap();
    let mut stream = cms
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    assert_eq!(next_events(&mut stream, 2).await, ["ADDED b", "MODIFIED a"]);
    cms.delete("b", &Default::default()).await.unwrap();
    assert_eq!(next_events(&mut stream, 1).await, ["DELETED b"]);

    // "0" and "" start now, with the current objects as ADDED events.
    let mut from_zero = cms
        .watch(&WatchParams::default(), "0")
        .await
        .unwrap()
        .boxed();
    assert_eq!(
        next_events(&mut from_zero, 2).await,
        ["ADDED a", "ADDED kube-root-ca.crt"]
    );
    cms.create(&PostParams::default(), &cm("c", json!({})))
        .await
        .unwrap();
    assert_eq!(next_events(&mut from_zero, 1).await, ["ADDED c"]);
}

#[tokio::test]
async fn too_old_resource_version_is_gone() {
    let (_server, client) = start_with(Config {
        history_limit: 4,
        ..Config::default()
    })
    .await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let first = cms
        .create(&PostParams::default(), &cm("x0", json!({})))
        .await
        .unwrap();
    for i in 1..10 {
        cms.create(&PostParams::default(), &cm(&format!("x{i}"), json!({})))
            .await
            .unwrap();
    }
    let rv = first.metadata.resource_version.unwrap();
    let mut stream = cms
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    let ev = stream.next().await.unwrap().unwrap();
    match ev {
        WatchEvent::Error(status) => {
            assert_eq!(status.code, 410);
            assert_eq!(status.reason, "Expired");
        }
        other => panic!("expected 410 Gone, got {}", describe(&other)),
    }
    assert!(
        stream.next().await.is_none(),
        "the watch ends after the error"
    );

    // A recent resourceVersion still resumes.
    let list = cms.list(&ListParams::default()).await.unwrap();
    let mut stream = cms
        .watch(
            &WatchParams::default(),
            list.metadata.resource_version.as_deref().unwrap(),
        )
        .await
        .unwrap()
        .boxed();
    cms.create(&PostParams::default(), &cm("y", json!({})))
        .await
        .unwrap();
    assert_eq!(next_events(&mut stream, 1).await, ["ADDED y"]);
}

#[tokio::test]
async fn selector_watches_see_objects_enter_and_leave() {
    let (_server, client) = start().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let list = cms.list(&ListParams::default()).await.unwrap();
    let rv = list.metadata.resource_version.unwrap();
    let mut stream = cms
        .watch(&WatchParams::default().labels("role=primary"), &rv)
        .await
        .unwrap()
        .boxed();
    cms.create(
        &PostParams::default(),
        &cm("other", json!({"role": "replica"})),
    )
    .await
    .unwrap();
    cms.create(
        &PostParams::default(),
        &cm("db-1", json!({"role": "primary"})),
    )
    .await
    .unwrap();
    assert_eq!(next_events(&mut stream, 1).await, ["ADDED db-1"]);
    let demote = Patch::Merge(json!({"metadata": {"labels": {"role": "replica"}}}));
    cms.patch("db-1", &PatchParams::default(), &demote)
        .await
        .unwrap();
    assert_eq!(next_events(&mut stream, 1).await, ["DELETED db-1"]);
    let promote = Patch::Merge(json!({"metadata": {"labels": {"role": "primary"}}}));
    cms.patch("other", &PatchParams::default(), &promote)
        .await
        .unwrap();
    assert_eq!(next_events(&mut stream, 1).await, ["ADDED other"]);

    let mut by_name = cms
        .watch(&WatchParams::default().fields("metadata.name=db-1"), "0")
        .await
        .unwrap()
        .boxed();
    assert_eq!(next_events(&mut by_name, 1).await, ["ADDED db-1"]);
}

#[tokio::test]
async fn bookmarks_and_timeouts() {
    let (_server, client) = start_with(Config {
        bookmark_interval: Duration::from_millis(100),
        ..Config::default()
    })
    .await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let created = cms
        .create(&PostParams::default(), &cm("a", json!({})))
        .await
        .unwrap();
    let created_rv: u64 = created.metadata.resource_version.unwrap().parse().unwrap();
    let mut stream = cms
        .watch(&WatchParams::default().timeout(1), "0")
        .await
        .unwrap()
        .boxed();
    let mut bookmark_rv = None;
    let mut events = 0;
    // The server ends the watch after timeoutSeconds.
    while let Some(ev) = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("watch ends")
    {
        match ev.unwrap() {
            WatchEvent::Bookmark(b) => {
                bookmark_rv = Some(b.metadata.resource_version.parse::<u64>().unwrap())
            }
            _ => events += 1,
        }
    }
    assert_eq!(events, 2, "a and kube-root-ca.crt");
    assert!(bookmark_rv.expect("a bookmark") >= created_rv);

    // sendInitialEvents: the initial state, then a bookmark marking its end.
    let mut streaming = cms
        .watch(&WatchParams::default().initial_events(), "")
        .await
        .unwrap()
        .boxed();
    for expected in ["ADDED a", "ADDED kube-root-ca.crt"] {
        let ev = streaming.next().await.unwrap().unwrap();
        assert_eq!(describe(&ev), expected);
    }
    match streaming.next().await.unwrap().unwrap() {
        WatchEvent::Bookmark(b) => {
            assert_eq!(
                b.metadata
                    .annotations
                    .get("k8s.io/initial-events-end")
                    .map(String::as_str),
                Some("true")
            );
        }
        other => panic!(
            "expected the initial-events-end bookmark, got {}",
            describe(&other)
        ),
    }
}

#[tokio::test]
async fn reflector_survives_watch_timeouts() {
    let (server, client) = start_with(Config {
        watch_timeout_cap: Some(Duration::from_millis(1500)),
        bookmark_interval: Duration::from_millis(300),
        ..Config::default()
    })
    .await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let (reader, writer) = reflector::store::<ConfigMap>();
    let stream = reflector(writer, watcher(cms.clone(), watcher::Config::default()))
        .applied_objects()
        .try_for_each(|_| async { Ok(()) });
    let task = tokio::spawn(stream);
    // Objects are created across several server-side watch timeouts.
    for i in 0..8 {
        cms.create(&PostParams::default(), &cm(&format!("r{i}"), json!({})))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eventually("the reflector to see every object", || {
        let reader = reader.clone();
        async move { (reader.state().len() == 9).then_some(()) }
    })
    .await;
    cms.delete("r0", &Default::default()).await.unwrap();
    eventually("the reflector to see the deletion", || {
        let reader = reader.clone();
        async move { (reader.state().len() == 8).then_some(()) }
    })
    .await;
    assert!(
        !task.is_finished(),
        "the watcher stream never errored out: {task:?}"
    );
    task.abort();
    // One initial list, then the watch was resumed after every timeout
    // instead of relisting.
    let counts = server.request_counts();
    assert_eq!(counts.list, 1, "{counts:?}");
    assert!(counts.watch >= 3, "{counts:?}");

    // streaming lists (sendInitialEvents) work too.
    let (reader, writer) = reflector::store::<ConfigMap>();
    let stream = reflector(
        writer,
        watcher(cms.clone(), watcher::Config::default().streaming_lists()),
    )
    .applied_objects()
    .try_for_each(|_| async { Ok(()) });
    let task = tokio::spawn(stream);
    eventually("the streaming-list reflector to fill", || {
        let reader = reader.clone();
        async move { (reader.state().len() == 8).then_some(()) }
    })
    .await;
    task.abort();
}

#[tokio::test]
async fn controller_keeps_reconciling_across_watch_timeouts() {
    let (_server, client) = start_with(Config {
        watch_timeout_cap: Some(Duration::from_secs(1)),
        ..Config::default()
    })
    .await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let seen: Arc<Mutex<BTreeSet<String>>> = Arc::default();

    async fn reconcile(
        obj: Arc<ConfigMap>,
        seen: Arc<Mutex<BTreeSet<String>>>,
    ) -> Result<Action, kube::Error> {
        seen.lock().unwrap().insert(format!(
            "{}@{}",
            obj.metadata.name.as_deref().unwrap_or(""),
            obj.data.as_ref().map(|d| d.len()).unwrap_or(0)
        ));
        Ok(Action::await_change())
    }
    fn error_policy(_: Arc<ConfigMap>, _: &kube::Error, _: Arc<Mutex<BTreeSet<String>>>) -> Action {
        Action::requeue(Duration::from_millis(100))
    }
    let controller = Controller::new(cms.clone(), watcher::Config::default())
        .run(reconcile, error_policy, seen.clone())
        .for_each(|_| async {});
    let task = tokio::spawn(controller);
    cms.create(&PostParams::default(), &cm("one", json!({})))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    cms.create(&PostParams::default(), &cm("two", json!({})))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    cms.patch(
        "one",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"k": "v"}})),
    )
    .await
    .unwrap();
    eventually("every change to be reconciled", || {
        let seen = seen.clone();
        async move {
            let seen = seen.lock().unwrap();
            (seen.contains("one@0") && seen.contains("two@0") && seen.contains("one@1"))
                .then_some(())
        }
    })
    .await;
    task.abort();
}

#[tokio::test]
async fn metadata_only_lists_and_watches() {
    let (_server, client) = start().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let mut big = cm("big", json!({"app": "db"}));
    big.data = Some([("k".to_string(), "v".repeat(1000))].into());
    cms.create(&PostParams::default(), &big).await.unwrap();
    let list = cms
        .list_metadata(&ListParams::default().labels("app=db"))
        .await
        .unwrap();
    assert_eq!(list.items.len(), 1);
    assert_eq!(list.items[0].metadata.name.as_deref(), Some("big"));
    let one = cms.get_metadata("big").await.unwrap();
    assert_eq!(one.metadata.labels.unwrap()["app"], "db");

    let (reader, writer) = reflector::store();
    let meta: Api<kube::core::PartialObjectMeta<ConfigMap>> =
        Api::namespaced(client.clone(), "default");
    let stream = reflector(writer, watcher(meta, watcher::Config::default()))
        .applied_objects()
        .try_for_each(|_| async { Ok(()) });
    let task = tokio::spawn(stream);
    cms.create(&PostParams::default(), &cm("second", json!({})))
        .await
        .unwrap();
    eventually("the metadata reflector to see both", || {
        let reader = reader.clone();
        async move { (reader.state().len() == 3).then_some(()) }
    })
    .await;
    task.abort();
}

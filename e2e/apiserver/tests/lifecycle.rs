//! Deletion semantics: finalizers and deletionTimestamp, graceful pod
//! deletion confirmed by the kubelet, cascading deletion through
//! ownerReferences (background, orphan, foreground), namespace cleanup.

mod common;

use capstan_e2e_apiserver::Config;
use common::{api_error, eventually, namespace, start, start_with};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Endpoints, Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::Resource;
use kube::api::{
    Api, DeleteParams, EvictParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use serde_json::json;

fn cm(name: &str) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name}})).unwrap()
}

fn pod(name: &str) -> Pod {
    serde_json::from_value(json!({"metadata": {"name": name},
        "spec": {"containers": [{"name": "c", "image": "busybox:1"}], "terminationGracePeriodSeconds": 20}}))
    .unwrap()
}

async fn gone<K>(api: &Api<K>, name: &str)
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    eventually(&format!("{name} to be gone"), || async {
        match api.get_opt(name).await.unwrap() {
            None => Some(()),
            Some(_) => None,
        }
    })
    .await;
}

fn owned_cm(name: &str, owner: &ConfigMap, block: bool) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name, "ownerReferences": [{
        "apiVersion": "v1", "kind": "ConfigMap",
        "name": owner.metadata.name, "uid": owner.metadata.uid,
        "controller": true, "blockOwnerDeletion": block
    }]}}))
    .unwrap()
}

#[tokio::test]
async fn finalizers_hold_deletion() {
    let (_server, client) = start().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let mut held = cm("held");
    held.metadata.finalizers = Some(vec!["capstan.dev/cleanup".into()]);
    cms.create(&PostParams::default(), &held).await.unwrap();

    let pending = cms.delete("held", &DeleteParams::default()).await.unwrap();
    let obj = pending
        .left()
        .expect("still there while a finalizer remains");
    assert!(obj.metadata.deletion_timestamp.is_some());
    assert_eq!(obj.metadata.deletion_grace_period_seconds, Some(0));

    // Deleting again changes nothing; adding finalizers is refused.
    assert!(
        cms.delete("held", &DeleteParams::default())
            .await
            .unwrap()
            .is_left()
    );
    let refused = api_error(
        cms.patch(
            "held",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": ["capstan.dev/cleanup", "x"]}})),
        )
        .await,
    );
    assert_eq!(refused.code, 422);

    // Other updates still work while it is being deleted.
    cms.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"k": "v"}})),
    )
    .await
    .unwrap();
    let rv = cms
        .get("held")
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let mut events = cms
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    cms.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    assert!(
        cms.get_opt("held").await.unwrap().is_none(),
        "removing the last finalizer removes the object"
    );
    match events.next().await.unwrap().unwrap() {
        WatchEvent::Deleted(last) => {
            assert!(
                last.metadata.finalizers.is_none(),
                "the final state is shown"
            );
            assert_eq!(last.data.unwrap()["k"], "v");
        }
        other => panic!("expected DELETED, got {other:?}"),
    }
}

#[tokio::test]
async fn pods_wait_for_the_kubelet() {
    let (_server, client) = start_with(Config {
        node_name: Some("local".into()),
        ..Config::default()
    })
    .await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let p = pods
        .create(&PostParams::default(), &pod("db-1"))
        .await
        .unwrap();
    assert_eq!(p.spec.as_ref().unwrap().node_name.as_deref(), Some("local"));

    let pending = pods
        .delete("db-1", &DeleteParams::default())
        .await
        .unwrap()
        .left()
        .unwrap();
    assert_eq!(pending.metadata.deletion_grace_period_seconds, Some(20));
    assert!(
        pods.get_opt("db-1").await.unwrap().is_some(),
        "a scheduled pod waits for its kubelet"
    );

    // The kubelet stops the containers, then confirms with grace period 0.
    pods.delete(
        "db-1",
        &DeleteParams {
            grace_period_seconds: Some(0),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(pods.get_opt("db-1").await.unwrap().is_none());

    // An explicit grace period wins over the pod's own.
    pods.create(&PostParams::default(), &pod("db-2"))
        .await
        .unwrap();
    let pending = pods
        .delete(
            "db-2",
            &DeleteParams {
                grace_period_seconds: Some(3),
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .left()
        .unwrap();
    assert_eq!(pending.metadata.deletion_grace_period_seconds, Some(3));

    // Unscheduled pods have no kubelet to wait for.
    let (_server, client) = start().await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    pods.create(&PostParams::default(), &pod("lonely"))
        .await
        .unwrap();
    assert!(
        pods.delete("lonely", &DeleteParams::default())
            .await
            .unwrap()
            .is_right()
    );
}

#[tokio::test]
async fn background_deletion_collects_dependents() {
    let (_server, client) = start().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let owner = cms
        .create(&PostParams::default(), &cm("owner"))
        .await
        .unwrap();
    let other = cms
        .create(&PostParams::default(), &cm("other-owner"))
        .await
        .unwrap();
    cms.create(&PostParams::default(), &owned_cm("child", &owner, false))
        .await
        .unwrap();
    let mut shared = owned_cm("shared", &owner, false);
    shared.metadata.owner_references.as_mut().unwrap().push(
        serde_json::from_value(json!({"apiVersion": "v1", "kind": "ConfigMap", "name": "other-owner", "uid": other.metadata.uid})).unwrap(),
    );
    cms.create(&PostParams::default(), &shared).await.unwrap();
    // A dependent of a different kind (a Deployment owned by a ConfigMap).
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let d: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "dep", "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.metadata.uid}]},
        "spec": {"selector": {"matchLabels": {"a": "b"}}, "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}
    }))
    .unwrap();
    deployments
        .create(&PostParams::default(), &d)
        .await
        .unwrap();

    cms.delete("owner", &DeleteParams::background())
        .await
        .unwrap();
    gone(&cms, "child").await;
    gone(&deployments, "dep").await;
    // The dependent with another live owner stays, without the dead reference.
    let shared = eventually("the dangling reference to be dropped", || async {
        let s = cms.get("shared").await.unwrap();
        (s.metadata.owner_references.as_ref().map(Vec::len) == Some(1)).then_some(s)
    })
    .await;
    assert_eq!(
        shared.metadata.owner_references.unwrap()[0].name,
        "other-owner"
    );
}

#[tokio::test]
async fn orphan_deletion_keeps_dependents() {
    let (_server, client) = start().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let owner = cms
        .create(&PostParams::default(), &cm("owner"))
        .await
        .unwrap();
    cms.create(&PostParams::default(), &owned_cm("child", &owner, true))
        .await
        .unwrap();
    cms.delete("owner", &DeleteParams::orphan()).await.unwrap();
    gone(&cms, "owner").await;
    let child = eventually("the child to be orphaned", || async {
        let c = cms.get("child").await.unwrap();
        c.metadata.owner_references.is_none().then_some(c)
    })
    .await;
    assert!(child.metadata.deletion_timestamp.is_none());
}

#[tokio::test]
async fn foreground_deletion_waits_for_blocking_dependents() {
    let (_server, client) = start().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let owner = cms
        .create(&PostParams::default(), &cm("owner"))
        .await
        .unwrap();
    let mut child = owned_cm("child", &owner, true);
    child.metadata.finalizers = Some(vec!["test/hold".into()]);
    cms.create(&PostParams::default(), &child).await.unwrap();

    let pending = cms
        .delete("owner", &DeleteParams::foreground())
        .await
        .unwrap()
        .left()
        .unwrap();
    assert!(
        pending
            .metadata
            .finalizers
            .unwrap()
            .contains(&"foregroundDeletion".to_string())
    );
    let child = eventually("the child to be deleted first", || async {
        let c = cms.get("child").await.unwrap();
        c.metadata.deletion_timestamp.is_some().then_some(c)
    })
    .await;
    assert!(child.metadata.deletion_timestamp.is_some());
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(
        cms.get_opt("owner").await.unwrap().is_some(),
        "the owner waits for its blocking dependent"
    );
    cms.patch(
        "child",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": []}})),
    )
    .await
    .unwrap();
    gone(&cms, "child").await;
    gone(&cms, "owner").await;
}

#[tokio::test]
async fn namespace_deletion_removes_its_content() {
    let (_server, client) = start().await;
    namespace(&client, "doomed").await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "doomed");
    cms.create(&PostParams::default(), &cm("a")).await.unwrap();
    let mut held = cm("held");
    held.metadata.finalizers = Some(vec!["test/hold".into()]);
    cms.create(&PostParams::default(), &held).await.unwrap();

    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns = namespaces
        .delete("doomed", &DeleteParams::default())
        .await
        .unwrap()
        .left()
        .unwrap();
    assert_eq!(ns.status.unwrap().phase.as_deref(), Some("Terminating"));
    gone(&cms, "a").await;
    let refused = api_error(cms.create(&PostParams::default(), &cm("late")).await);
    assert_eq!(refused.code, 403);
    assert!(
        namespaces.get_opt("doomed").await.unwrap().is_some(),
        "waits for the held object"
    );
    cms.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    gone(&namespaces, "doomed").await;
    // The name can be used again, for a fresh namespace.
    namespace(&client, "doomed").await;
    cms.create(&PostParams::default(), &cm("again"))
        .await
        .unwrap();
}

#[tokio::test]
async fn eviction_respects_disruption_budgets() {
    let (server, client) = start_with(Config {
        node_name: Some("local".into()),
        ..Config::default()
    })
    .await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    for name in ["db-1", "db-2", "db-3"] {
        let mut p = pod(name);
        p.metadata.labels = Some([("app".to_string(), "db".to_string())].into());
        pods.create(&PostParams::default(), &p).await.unwrap();
        pods.patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}})),
        )
        .await
        .unwrap();
    }
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), "default");
    let pdb: PodDisruptionBudget = serde_json::from_value(json!({
        "metadata": {"name": "db"},
        "spec": {"minAvailable": 2, "selector": {"matchLabels": {"app": "db"}}}
    }))
    .unwrap();
    pdbs.create(&PostParams::default(), &pdb).await.unwrap();
    let status = eventually("the budget's status", || async {
        let s = pdbs.get("db").await.unwrap().status?;
        (s.expected_pods == 3).then_some(s)
    })
    .await;
    assert_eq!(
        (
            status.current_healthy,
            status.desired_healthy,
            status.disruptions_allowed
        ),
        (3, 2, 1)
    );

    // kube's default client retries 429 with backoff for minutes; a caller
    // that wants the refusal at once disables that.
    let mut config = server.client_config().await.unwrap();
    config.default_retry = false;
    let pods: Api<Pod> = Api::namespaced(kube::Client::try_from(config).unwrap(), "default");
    pods.evict("db-1", &EvictParams::default()).await.unwrap();
    let evicted = pods.get("db-1").await.unwrap();
    assert!(
        evicted.metadata.deletion_timestamp.is_some(),
        "eviction deletes gracefully"
    );
    let refused = api_error(pods.evict("db-2", &EvictParams::default()).await);
    assert_eq!(
        (refused.code, refused.reason.as_str()),
        (429, "TooManyRequests")
    );
    assert!(
        refused.message.contains("disruption budget"),
        "{}",
        refused.message
    );
    eventually("the budget to show no disruptions left", || async {
        let s = pdbs.get("db").await.unwrap().status?;
        (s.disruptions_allowed == 0 && s.current_healthy == 2).then_some(())
    })
    .await;
}

#[tokio::test]
async fn endpoints_follow_ready_pods_behind_services() {
    let (_server, client) = start_with(Config {
        node_name: Some("local".into()),
        ..Config::default()
    })
    .await;
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": "db-rw"},
        "spec": {"selector": {"role": "primary"}, "ports": [{"name": "pg", "port": 5432, "targetPort": "postgres"}]}
    }))
    .unwrap();
    services.create(&PostParams::default(), &svc).await.unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    for (name, role, ip) in [
        ("db-1", "primary", "127.0.10.1"),
        ("db-2", "replica", "127.0.10.2"),
    ] {
        let p: Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"role": role}},
            "spec": {"containers": [{"name": "pg", "image": "postgres:17", "ports": [{"name": "postgres", "containerPort": 5432}]}]}
        }))
        .unwrap();
        pods.create(&PostParams::default(), &p).await.unwrap();
        pods.patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Running", "podIP": ip, "conditions": [{"type": "Ready", "status": "True"}]}})),
        )
        .await
        .unwrap();
    }
    let endpoints: Api<Endpoints> = Api::namespaced(client.clone(), "default");
    let ready_ips = |ep: &Endpoints| -> Vec<String> {
        ep.subsets
            .iter()
            .flatten()
            .flat_map(|s| s.addresses.iter().flatten())
            .map(|a| a.ip.clone())
            .collect()
    };
    let ep = eventually("db-rw to point at db-1", || async {
        let ep = endpoints.get_opt("db-rw").await.unwrap()?;
        (ready_ips(&ep) == ["127.0.10.1"]).then_some(ep)
    })
    .await;
    let subsets = ep.subsets.unwrap();
    let port = &subsets[0].ports.as_ref().unwrap()[0];
    assert_eq!((port.name.as_deref(), port.port), (Some("pg"), 5432));

    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let slice = eventually("an EndpointSlice for db-rw", || async {
        let list = slices
            .list(&kube::api::ListParams::default().labels("kubernetes.io/service-name=db-rw"))
            .await
            .unwrap();
        list.items.into_iter().next()
    })
    .await;
    assert_eq!(slice.endpoints[0].addresses, ["127.0.10.1"]);
    assert_eq!(
        slice.endpoints[0].conditions.as_ref().unwrap().ready,
        Some(true)
    );

    // Switchover: the labels move, and so do the endpoints.
    let role = |r: &str| Patch::Merge(json!({"metadata": {"labels": {"role": r}}}));
    pods.patch("db-1", &PatchParams::default(), &role("replica"))
        .await
        .unwrap();
    pods.patch("db-2", &PatchParams::default(), &role("primary"))
        .await
        .unwrap();
    eventually("db-rw to point at db-2", || async {
        let ep = endpoints.get("db-rw").await.unwrap();
        (ready_ips(&ep) == ["127.0.10.2"]).then_some(())
    })
    .await;
    // Not ready: listed as notReadyAddresses.
    pods.patch_status(
        "db-2",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}})),
    )
    .await
    .unwrap();
    eventually("db-2 to be not ready", || async {
        let ep = endpoints.get("db-rw").await.unwrap();
        let not_ready: Vec<String> = ep
            .subsets
            .iter()
            .flatten()
            .flat_map(|s| s.not_ready_addresses.iter().flatten())
            .map(|a| a.ip.clone())
            .collect();
        (ready_ips(&ep).is_empty() && not_ready == ["127.0.10.2"]).then_some(())
    })
    .await;

    services
        .delete("db-rw", &DeleteParams::default())
        .await
        .unwrap();
    gone(&endpoints, "db-rw").await;
    eventually("the slices to go", || async {
        let list = slices.list(&Default::default()).await.unwrap();
        list.items.is_empty().then_some(())
    })
    .await;
}

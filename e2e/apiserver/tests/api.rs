//! Core API semantics through kube's real client: CRUD, conflicts,
//! generation, status subresource, selectors, patches, discovery.

mod common;

use std::collections::BTreeMap;

use common::{api_error, namespace, start};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::discovery::Discovery;
use serde_json::json;

fn cm(name: &str, labels: serde_json::Value, data: serde_json::Value) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}, "data": data}))
        .unwrap()
}

fn pod(name: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": "db"}},
        "spec": {"containers": [{"name": "pg", "image": "postgres:17", "ports": [{"containerPort": 5432}]}]}
    }))
    .unwrap()
}

#[tokio::test]
async fn crud_round_trips() {
    let (_server, client) = start().await;
    namespace(&client, "crud").await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "crud");

    let created = cms
        .create(
            &PostParams::default(),
            &cm("a", json!({"x": "1"}), json!({"k": "v"})),
        )
        .await
        .unwrap();
    let meta = &created.metadata;
    assert_eq!(meta.namespace.as_deref(), Some("crud"));
    assert_eq!(meta.uid.as_ref().map(String::len), Some(36));
    assert!(meta.creation_timestamp.is_some());
    let rv1: u64 = meta.resource_version.as_ref().unwrap().parse().unwrap();

    let got = cms.get("a").await.unwrap();
    assert_eq!(got.data.unwrap()["k"], "v");

    let mut changed = created.clone();
    changed.data = Some(BTreeMap::from([("k".to_string(), "w".to_string())]));
    let replaced = cms
        .replace("a", &PostParams::default(), &changed)
        .await
        .unwrap();
    let rv2: u64 = replaced
        .metadata
        .resource_version
        .clone()
        .unwrap()
        .parse()
        .unwrap();
    assert!(rv2 > rv1, "resourceVersion grows: {rv1} -> {rv2}");
    assert_eq!(replaced.metadata.uid, created.metadata.uid);

    // generateName
    let generated = cms
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"generateName": "gen-"}})).unwrap(),
        )
        .await
        .unwrap();
    let name = generated.metadata.name.unwrap();
    assert!(name.starts_with("gen-") && name.len() == 9, "{name}");

    // Every namespace also holds the published root CA, as on a real cluster.
    let list = cms.list(&ListParams::default()).await.unwrap();
    let names: Vec<String> = list
        .items
        .iter()
        .map(|c| c.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(names, ["a", &name, "kube-root-ca.crt"]);
    let sas: Api<k8s_openapi::api::core::v1::ServiceAccount> =
        Api::namespaced(client.clone(), "crud");
    sas.get("default")
        .await
        .expect("the default ServiceAccount exists");
    let list_rv: u64 = list.metadata.resource_version.unwrap().parse().unwrap();
    assert!(list_rv >= rv2);

    let deleted = cms.delete("a", &DeleteParams::default()).await.unwrap();
    assert!(
        deleted.is_right(),
        "an object without finalizers is gone at once"
    );
    let missing = api_error(cms.get("a").await);
    assert_eq!((missing.code, missing.reason.as_str()), (404, "NotFound"));
    assert_eq!(missing.message, "configmaps \"a\" not found");

    // Secrets: stringData is folded into data.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "crud");
    let s: Secret = serde_json::from_value(
        json!({"metadata": {"name": "s"}, "stringData": {"password": "hunter2"}}),
    )
    .unwrap();
    let stored = secrets.create(&PostParams::default(), &s).await.unwrap();
    assert!(stored.string_data.is_none());
    assert_eq!(stored.data.unwrap()["password"].0, b"hunter2");
    assert_eq!(stored.type_.as_deref(), Some("Opaque"));

    // Leases are plain objects.
    let leases: Api<Lease> = Api::namespaced(client.clone(), "crud");
    let lease: Lease = serde_json::from_value(json!({"metadata": {"name": "db-primary"},
        "spec": {"holderIdentity": "db-1", "leaseDurationSeconds": 10, "renewTime": "2026-01-01T00:00:00.123456Z"}})).unwrap();
    leases.create(&PostParams::default(), &lease).await.unwrap();
    let got = leases.get("db-primary").await.unwrap();
    assert_eq!(got.spec.unwrap().holder_identity.as_deref(), Some("db-1"));
}

#[tokio::test]
async fn namespaces_must_exist_and_defaults_apply() {
    let (_server, client) = start().await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "nowhere");
    let err = api_error(pods.create(&PostParams::default(), &pod("p")).await);
    assert_eq!(err.code, 404);
    assert!(
        err.message.contains("namespaces \"nowhere\" not found"),
        "{}",
        err.message
    );

    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let p = pods
        .create(&PostParams::default(), &pod("p"))
        .await
        .unwrap();
    assert_eq!(p.status.unwrap().phase.as_deref(), Some("Pending"));
    let spec = p.spec.unwrap();
    assert_eq!(spec.restart_policy.as_deref(), Some("Always"));
    assert_eq!(spec.termination_grace_period_seconds, Some(30));
    assert_eq!(
        spec.containers[0].ports.as_ref().unwrap()[0]
            .protocol
            .as_deref(),
        Some("TCP")
    );
    assert_eq!(p.metadata.generation, Some(1));

    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let svc: Service = serde_json::from_value(json!({"metadata": {"name": "db-rw"},
        "spec": {"selector": {"app": "db"}, "ports": [{"port": 5432}]}}))
    .unwrap();
    let svc = services.create(&PostParams::default(), &svc).await.unwrap();
    let spec = svc.spec.unwrap();
    assert!(spec.cluster_ip.as_deref().unwrap().starts_with("10.96."));
    assert_eq!(spec.type_.as_deref(), Some("ClusterIP"));
    assert_eq!(
        spec.ports.unwrap()[0].target_port,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(5432))
    );

    // Invalid objects are refused with the real server's reasons.
    let bad = api_error(
        pods.create(
            &PostParams::default(),
            &serde_json::from_value(
                json!({"metadata": {"name": "Bad_Name"}, "spec": {"containers": []}}),
            )
            .unwrap(),
        )
        .await,
    );
    assert_eq!((bad.code, bad.reason.as_str()), (422, "Invalid"));
    assert_eq!(bad.details.unwrap().causes[0].field, "metadata.name");
    let bad_label = api_error(
        pods.create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "p2", "labels": {"a": "-x"}}, "spec": {"containers": []}})).unwrap(),
        )
        .await,
    );
    assert_eq!(bad_label.code, 422);

    // Pod specs are immutable except images.
    let mut p = pods.get("p").await.unwrap();
    p.spec.as_mut().unwrap().containers[0].command = Some(vec!["sleep".into()]);
    let immutable = api_error(pods.replace("p", &PostParams::default(), &p).await);
    assert_eq!(immutable.code, 422);
    assert!(
        immutable
            .message
            .contains("pod updates may not change fields"),
        "{}",
        immutable.message
    );
}

#[tokio::test]
async fn conflicts_and_already_exists() {
    let (_server, client) = start().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let first = cms
        .create(
            &PostParams::default(),
            &cm("c", json!({}), json!({"n": "1"})),
        )
        .await
        .unwrap();

    let dup = api_error(
        cms.create(&PostParams::default(), &cm("c", json!({}), json!({})))
            .await,
    );
    assert_eq!((dup.code, dup.reason.as_str()), (409, "AlreadyExists"));
    assert_eq!(dup.message, "configmaps \"c\" already exists");

    let mut update = first.clone();
    update.data = Some(BTreeMap::from([("n".to_string(), "2".to_string())]));
    cms.replace("c", &PostParams::default(), &update)
        .await
        .unwrap();

    // `first` now carries a stale resourceVersion.
    let stale = api_error(cms.replace("c", &PostParams::default(), &first).await);
    assert_eq!((stale.code, stale.reason.as_str()), (409, "Conflict"));
    assert!(
        stale.message.contains("the object has been modified"),
        "{}",
        stale.message
    );

    // A patch carrying a stale resourceVersion is refused too.
    let rv = first.metadata.resource_version.clone().unwrap();
    let stale_patch = api_error(
        cms.patch(
            "c",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"resourceVersion": rv}, "data": {"n": "3"}})),
        )
        .await,
    );
    assert_eq!(stale_patch.code, 409);

    let missing = api_error(
        cms.replace(
            "nope",
            &PostParams::default(),
            &cm("nope", json!({}), json!({})),
        )
        .await,
    );
    assert_eq!(missing.code, 404);
}

#[tokio::test]
async fn generation_counts_spec_changes_only() {
    let (_server, client) = start().await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let d: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "pooler"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "pooler"}},
                 "template": {"metadata": {"labels": {"app": "pooler"}},
                              "spec": {"containers": [{"name": "pgbouncer", "image": "pgbouncer:1"}]}}}
    }))
    .unwrap();
    let d = deployments
        .create(&PostParams::default(), &d)
        .await
        .unwrap();
    assert_eq!(d.metadata.generation, Some(1));

    let labelled = deployments
        .patch(
            "pooler",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"x": "y"}}})),
        )
        .await
        .unwrap();
    assert_eq!(
        labelled.metadata.generation,
        Some(1),
        "metadata changes keep the generation"
    );

    let status = deployments
        .patch_status(
            "pooler",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"replicas": 2, "readyReplicas": 1}})),
        )
        .await
        .unwrap();
    assert_eq!(
        status.metadata.generation,
        Some(1),
        "status changes keep the generation"
    );
    assert_eq!(status.status.unwrap().ready_replicas, Some(1));

    let scaled = deployments
        .patch(
            "pooler",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 3}})),
        )
        .await
        .unwrap();
    assert_eq!(scaled.metadata.generation, Some(2));

    // A write that changes nothing is not a write.
    let again = deployments
        .patch(
            "pooler",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 3}})),
        )
        .await
        .unwrap();
    assert_eq!(
        again.metadata.resource_version,
        scaled.metadata.resource_version
    );
}

#[tokio::test]
async fn status_subresource_is_isolated() {
    let (_server, client) = start().await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    pods.create(&PostParams::default(), &pod("p"))
        .await
        .unwrap();

    // A main-resource write cannot change status...
    let p = pods
        .patch(
            "p",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"labels": {"l": "1"}}, "status": {"phase": "Running"}}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(p.status.as_ref().unwrap().phase.as_deref(), Some("Pending"));
    assert_eq!(p.metadata.labels.as_ref().unwrap()["l"], "1");

    // ...and a status write cannot change anything else.
    let p = pods
        .patch_status(
            "p",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"l": "2"}}, "spec": {"activeDeadlineSeconds": 5}, "status": {"phase": "Running", "podIP": "127.0.0.2"}})),
        )
        .await
        .unwrap();
    assert_eq!(p.status.as_ref().unwrap().phase.as_deref(), Some("Running"));
    assert_eq!(p.metadata.labels.as_ref().unwrap()["l"], "1");
    assert_eq!(p.spec.as_ref().unwrap().active_deadline_seconds, None);

    let mut whole = pods.get_status("p").await.unwrap();
    whole.status.as_mut().unwrap().phase = Some("Succeeded".into());
    let replaced = pods
        .replace_status("p", &PostParams::default(), &whole)
        .await
        .unwrap();
    assert_eq!(replaced.status.unwrap().phase.as_deref(), Some("Succeeded"));
}

#[tokio::test]
async fn label_and_field_selectors() {
    let (_server, client) = start().await;
    namespace(&client, "sel").await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "sel");
    for (name, labels) in [
        ("a", json!({"app": "db", "role": "primary"})),
        ("b", json!({"app": "db", "role": "replica"})),
        ("c", json!({"app": "web"})),
    ] {
        cms.create(&PostParams::default(), &cm(name, labels, json!({})))
            .await
            .unwrap();
    }
    let names = |list: kube::core::ObjectList<ConfigMap>| -> Vec<String> {
        list.items
            .into_iter()
            .map(|c| c.metadata.name.unwrap())
            .collect()
    };
    let q = |s: &str| ListParams::default().labels(s);
    assert_eq!(names(cms.list(&q("app=db")).await.unwrap()), ["a", "b"]);
    assert_eq!(
        names(cms.list(&q("app==db,role!=primary")).await.unwrap()),
        ["b"]
    );
    assert_eq!(
        names(cms.list(&q("role in (primary,replica)")).await.unwrap()),
        ["a", "b"]
    );
    assert_eq!(
        names(cms.list(&q("app,role notin (replica)")).await.unwrap()),
        ["a", "c"]
    );
    assert_eq!(
        names(cms.list(&q("!role")).await.unwrap()),
        ["c", "kube-root-ca.crt"]
    );
    assert_eq!(names(cms.list(&q("role")).await.unwrap()), ["a", "b"]);
    assert_eq!(
        names(
            cms.list(&ListParams::default().fields("metadata.name=b"))
                .await
                .unwrap()
        ),
        ["b"]
    );
    assert_eq!(
        names(
            cms.list(&ListParams::default().fields("metadata.name!=b"))
                .await
                .unwrap()
        ),
        ["a", "c", "kube-root-ca.crt"]
    );

    let pods: Api<Pod> = Api::namespaced(client.clone(), "sel");
    pods.create(&PostParams::default(), &pod("p1"))
        .await
        .unwrap();
    pods.create(&PostParams::default(), &pod("p2"))
        .await
        .unwrap();
    pods.patch_status(
        "p2",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": "Running"}})),
    )
    .await
    .unwrap();
    let running = pods
        .list(&ListParams::default().fields("status.phase=Running"))
        .await
        .unwrap();
    assert_eq!(running.items.len(), 1);
    assert_eq!(running.items[0].metadata.name.as_deref(), Some("p2"));

    // All-namespaces lists see every namespace.
    let all: Api<ConfigMap> = Api::all(client.clone());
    assert_eq!(all.list(&q("app=db")).await.unwrap().items.len(), 2);
    // Namespaces are isolated.
    let other: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    assert!(other.list(&q("app=db")).await.unwrap().items.is_empty());
}

#[tokio::test]
async fn merge_json_and_strategic_patches() {
    let (_server, client) = start().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    cms.create(
        &PostParams::default(),
        &cm("m", json!({"a": "1"}), json!({"x": "1", "y": "2"})),
    )
    .await
    .unwrap();
    let merged = cms
        .patch(
            "m",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"x": null, "z": "3"}})),
        )
        .await
        .unwrap();
    assert_eq!(
        merged.data.unwrap(),
        BTreeMap::from([("y".into(), "2".into()), ("z".into(), "3".into())])
    );

    let ops: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": "/data/y", "value": "2"},
        {"op": "replace", "path": "/data/y", "value": "4"},
        {"op": "add", "path": "/metadata/labels/b", "value": "2"}
    ]))
    .unwrap();
    let patched = cms
        .patch("m", &PatchParams::default(), &Patch::<()>::Json(ops))
        .await
        .unwrap();
    assert_eq!(patched.data.unwrap()["y"], "4");
    assert_eq!(patched.metadata.labels.unwrap()["b"], "2");
    let failing: json_patch::Patch =
        serde_json::from_value(json!([{"op": "test", "path": "/data/y", "value": "nope"}]))
            .unwrap();
    let err = api_error(
        cms.patch("m", &PatchParams::default(), &Patch::<()>::Json(failing))
            .await,
    );
    assert_eq!(err.code, 422);

    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    pods.create(&PostParams::default(), &pod("sp"))
        .await
        .unwrap();
    let p = pods
        .patch(
            "sp",
            &PatchParams::default(),
            &Patch::Strategic(json!({"metadata": {"ownerReferences": [
                {"apiVersion": "v1", "kind": "ConfigMap", "name": "m", "uid": "u1"}]},
                "spec": {"containers": [{"name": "pg", "image": "postgres:18"}]}})),
        )
        .await
        .unwrap();
    let spec = p.spec.unwrap();
    assert_eq!(spec.containers.len(), 1);
    assert_eq!(spec.containers[0].image.as_deref(), Some("postgres:18"));
    assert_eq!(
        spec.containers[0].ports.as_ref().unwrap()[0].container_port,
        5432,
        "merged by name, other fields kept"
    );
    assert_eq!(p.metadata.generation, Some(2));
}

#[tokio::test]
async fn discovery_lists_builtin_resources() {
    let (_server, client) = start().await;
    let discovery = Discovery::new(client.clone()).run().await.unwrap();
    let mut kinds = vec![];
    for group in discovery.groups() {
        for (ar, caps) in group.recommended_resources() {
            kinds.push((
                ar.group.clone(),
                ar.kind.clone(),
                caps.scope == kube::discovery::Scope::Namespaced,
            ));
        }
    }
    for (group, kind, namespaced) in [
        ("", "Pod", true),
        ("", "Namespace", false),
        ("apps", "Deployment", true),
        ("coordination.k8s.io", "Lease", true),
        ("events.k8s.io", "Event", true),
        ("policy", "PodDisruptionBudget", true),
        ("rbac.authorization.k8s.io", "ClusterRole", false),
        ("apiextensions.k8s.io", "CustomResourceDefinition", false),
    ] {
        assert!(
            kinds.contains(&(group.to_string(), kind.to_string(), namespaced)),
            "{group}/{kind} missing from {kinds:?}"
        );
    }
    let version = client.apiserver_version().await.unwrap();
    assert_eq!(version.major, "1");
}

#[tokio::test]
async fn unauthenticated_requests_are_refused() {
    let (server, _client) = start().await;
    let mut config = server.client_config().await.unwrap();
    config.auth_info.token = Some("wrong".to_string().into());
    let client = kube::Client::try_from(config).unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    let err = api_error(cms.list(&ListParams::default()).await);
    assert_eq!(err.code, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_to_one_object_all_land() {
    let (_server, client) = start().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    cms.create(&PostParams::default(), &cm("hot", json!({}), json!({})))
        .await
        .unwrap();
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let cms = cms.clone();
            tokio::spawn(async move {
                for i in 0..25 {
                    let patch = Patch::Merge(json!({"data": {format!("w{w}-{i}"): "x"}}));
                    cms.patch("hot", &PatchParams::default(), &patch)
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    let hot = cms.get("hot").await.unwrap();
    assert_eq!(hot.data.unwrap().len(), 200, "no write was lost");
}

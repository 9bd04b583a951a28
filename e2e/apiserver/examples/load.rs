//! Load measurement: N "clusters" of about 15 objects each, created by
//! concurrent clients while operator-style all-namespace watches and one
//! field-selected watch per cluster (the in-pod agents) are open; then a
//! round of status patches. Prints timings, request counts, watch events
//! received and the process's peak RSS.
//!
//!     cargo run -p capstan-e2e-apiserver --example load [clusters] [concurrency]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use capstan::api::PostgresCluster;
use capstan_e2e_apiserver::{ApiServer, Config};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{
    ConfigMap, Namespace, PersistentVolumeClaim, Pod, Secret, Service,
};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, WatchEvent, WatchParams};
use kube::{Client, CustomResourceExt};
use serde_json::json;

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|n| n.parse().ok()))
        })
        .unwrap_or(0)
}

fn watch_all<K>(api: Api<K>, params: WatchParams, counter: Arc<AtomicU64>)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    tokio::spawn(async move {
        let Ok(stream) = api.watch(&params, "0").await else {
            return;
        };
        let mut stream = stream.boxed();
        while let Some(Ok(ev)) = stream.next().await {
            if !matches!(ev, WatchEvent::Bookmark(_)) {
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
}

async fn create_cluster(client: Client, i: usize) -> kube::Result<()> {
    let ns = format!("c{i}");
    let apply = PatchParams::apply("capstan").force();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .patch(
            &ns,
            &apply,
            &Patch::Apply(
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
            ),
        )
        .await?;
    let cr: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        &ns,
        &ApiResource::erase::<PostgresCluster>(&()),
    );
    cr.patch(
        "db",
        &apply,
        &Patch::Apply(json!({"apiVersion": "capstan.dev/v1alpha1", "kind": "PostgresCluster", "metadata": {"name": "db"},
            "spec": {"instances": 3, "postgres": {"version": 17}, "storage": {"size": "1Gi"}}})),
    )
    .await?;
    let labels = json!({"capstan.dev/cluster": "db"});
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
    for n in 1..=3 {
        let name = format!("db-{n}");
        pvcs.patch(&name, &apply, &Patch::Apply(json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": name, "labels": labels},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}})))
            .await?;
        pods.patch(&name, &apply, &Patch::Apply(json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": labels},
            "spec": {"containers": [{"name": "postgres", "image": "postgres:17", "ports": [{"containerPort": 5432}],
                     "env": [{"name": "A", "value": "1"}], "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
                     "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": name}}]}})))
            .await?;
    }
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    for svc in ["db-rw", "db-ro", "db-r", "db-pooler"] {
        services
            .patch(svc, &apply, &Patch::Apply(json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": svc, "labels": labels},
                "spec": {"selector": labels, "ports": [{"name": "pg", "port": 5432}]}})))
            .await?;
    }
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    for s in ["db-superuser", "db-app", "db-tls"] {
        secrets
            .patch(s, &apply, &Patch::Apply(json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": s, "labels": labels},
                "stringData": {"password": "x".repeat(32)}})))
            .await?;
    }
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    cms.patch(
        "db-settings",
        &apply,
        &Patch::Apply(json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "db-settings", "labels": labels}, "data": {"settings.json": "{}"}})),
    )
    .await?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    deployments
        .patch("db-pooler", &apply, &Patch::Apply(json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "db-pooler", "labels": labels},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "pooler"}},
                     "template": {"metadata": {"labels": {"app": "pooler"}}, "spec": {"containers": [{"name": "pgbouncer", "image": "pgbouncer:1"}]}}}})))
        .await?;
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), &ns);
    pdbs.patch("db", &apply, &Patch::Apply(json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
        "metadata": {"name": "db"}, "spec": {"maxUnavailable": 1, "selector": {"matchLabels": labels}}})))
        .await?;
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
    leases
        .patch("db-primary", &apply, &Patch::Apply(json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "db-primary"}, "spec": {"holderIdentity": "db-1", "leaseDurationSeconds": 10}})))
        .await?;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let clusters = args.first().copied().unwrap_or(100);
    let concurrency = args.get(1).copied().unwrap_or(8);
    let server = ApiServer::start(Config {
        crds: vec![PostgresCluster::crd()],
        ..Config::default()
    })
    .await?;
    let client = server.client().await?;
    let events = Arc::new(AtomicU64::new(0));
    let wp = WatchParams::default();
    watch_all(Api::<Pod>::all(client.clone()), wp.clone(), events.clone());
    watch_all(
        Api::<PersistentVolumeClaim>::all(client.clone()),
        wp.clone(),
        events.clone(),
    );
    watch_all(
        Api::<Service>::all(client.clone()),
        wp.clone(),
        events.clone(),
    );
    watch_all(
        Api::<Secret>::all(client.clone()),
        wp.clone(),
        events.clone(),
    );
    watch_all(
        Api::<Deployment>::all(client.clone()),
        wp.clone(),
        events.clone(),
    );
    watch_all(
        Api::<DynamicObject>::all_with(client.clone(), &ApiResource::erase::<PostgresCluster>(&())),
        wp.clone(),
        events.clone(),
    );
    // One agent-style watch per cluster, on its own CR by name, all namespaces.
    for i in 0..clusters {
        let api: Api<DynamicObject> =
            Api::all_with(client.clone(), &ApiResource::erase::<PostgresCluster>(&()));
        watch_all(
            api,
            wp.clone()
                .fields(&format!("metadata.namespace=c{i},metadata.name=db")),
            events.clone(),
        );
    }
    tokio::time::sleep(Duration::from_millis(200)).await;

    let started = Instant::now();
    let work = futures::stream::iter(0..clusters)
        .map(|i| create_cluster(client.clone(), i))
        .buffer_unordered(concurrency)
        .collect::<Vec<_>>()
        .await;
    let failures = work.iter().filter(|r| r.is_err()).count();
    let created = started.elapsed();

    let started = Instant::now();
    let status_patches = futures::stream::iter(0..clusters)
        .map(|i| {
            let api: Api<DynamicObject> = Api::namespaced_with(
                client.clone(),
                &format!("c{i}"),
                &ApiResource::erase::<PostgresCluster>(&()),
            );
            async move {
                api.patch_status(
                    "db",
                    &PatchParams::default(),
                    &Patch::Merge(
                        json!({"status": {"phase": "Creating", "observedGeneration": 1}}),
                    ),
                )
                .await
            }
        })
        .buffer_unordered(concurrency)
        .collect::<Vec<_>>()
        .await;
    let status_failures = status_patches.iter().filter(|r| r.is_err()).count();
    let patched = started.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;

    let counts = server.request_counts();
    let writes = counts.create + counts.update + counts.patch + counts.delete;
    println!(
        "clusters: {clusters}, client concurrency: {concurrency}, watches: {}",
        clusters + 6
    );
    println!(
        "create phase: {:.2} s for {writes} writes ({:.0} writes/s), failures: {failures}",
        created.as_secs_f64(),
        writes as f64 / created.as_secs_f64()
    );
    println!(
        "status phase: {:.2} s for {clusters} status patches, failures: {status_failures}",
        patched.as_secs_f64()
    );
    println!("watch events delivered: {}", events.load(Ordering::Relaxed));
    println!("requests: {counts:?}");
    println!(
        "peak RSS (server + clients in one process): {} MiB",
        peak_rss_kib() / 1024
    );
    server.shutdown().await;
    Ok(())
}

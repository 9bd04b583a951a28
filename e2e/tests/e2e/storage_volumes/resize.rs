//! `storage.size` raised on a running cluster.
//!
//! * `a_larger_size_grows_volumes_online_with_no_restart`: a class that
//!   expands online; every data volume shows the new capacity in status, no
//!   pod is re-created, no PostgreSQL restarted.
//! * `an_offline_resize_restarts_pods_with_no_client_error`: a class whose
//!   file systems grow only when a pod mounts them (`FileSystemResizePending`),
//!   under `pgbench -c 4` through the pooler: the replicas are re-created one
//!   at a time, the primary moved by a switchover and its old pod re-created;
//!   every volume ends with the new capacity, pgbench sees 0 failed
//!   transactions.
//! * `a_class_that_cannot_expand_stalls_before_anything_is_patched`: `Stalled`
//!   (`VolumeExpansionNotAllowed`) naming the class and the fix, the claims
//!   untouched.
//!
//! Runs on the harness (size-limited tmpfs volumes); on a real cluster with
//! `CAPSTAN_E2E_STORAGE_CLASS_<NAME>` naming classes that behave so.

use std::time::{Duration, Instant};

use capstan::api::PostgresCluster;
use capstan_e2e::E2eError;
use capstan_e2e::ha::{self, HaCluster, ha_example};
use capstan_e2e::harness::{ensure_namespace, wait_for};
use capstan_e2e::load::{Pgbench, pgbench_binary};
use capstan_e2e::target::{Target, fail};
use capstan_e2e::volumes::{self, Expansion};
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::Api;

const FROM: &str = "128Mi";
const TO: &str = "192Mi";
const RESIZE_WITHIN: Duration = Duration::from_secs(180);

async fn cluster_on(
    target: &Target,
    ns: &str,
    class: &str,
    expansion: Expansion,
    instances: i32,
) -> Result<HaCluster, E2eError> {
    let client = target.client();
    ensure_namespace(&client, ns).await?;
    let class = volumes::storage_class(&client, class, expansion).await?;
    let mut spec = ha_example("ha-cluster.yaml", ns)?;
    spec.spec.instances = instances;
    spec.spec.storage.size = Quantity(FROM.into());
    spec.spec.storage.storage_class_name = Some(class);
    HaCluster::create(target, &spec).await
}

async fn raise(target: &Target, ha: &HaCluster) -> Result<(), E2eError> {
    let patch = serde_json::json!({"spec": {"storage": {"size": TO}}});
    capstan_e2e::cluster::merge_patch(&target.client(), &ha.ns, &ha.name, &patch).await
}

/// Every instance's data volume provided at `TO`, no resize left.
/// (The file system as the instance manager measured it, too.)
fn resized(c: &PostgresCluster, instances: &[String]) -> bool {
    instances.iter().all(|name| {
        volumes::volume(c, name, "data").is_some_and(|v| {
            v.requested == TO
                && v.capacity.as_deref() == Some(TO)
                && v.resize.is_none()
                && v.size_bytes.unwrap_or(0) >= 180 << 20
        })
    }) && c.status.as_ref().is_some_and(|s| s.operation.is_none())
        && capstan_e2e::cluster::condition(c, "Ready").as_deref() == Some("True")
}

async fn online(target: &mut Target, ns: &str) -> Result<(), E2eError> {
    let target = &*target;
    let ha = cluster_on(target, ns, "e2e-grows", Expansion::Online, 2).await?;
    let instances = ha::instance_names(&ha.get(target).await?);
    let pods = ha.pod_uids(target).await?;
    let started = ha.start_times(target, &instances).await?;
    let at = Instant::now();
    raise(target, &ha).await?;
    let c = wait_for(
        "every data volume provided at the new size",
        RESIZE_WITHIN,
        Duration::from_millis(250),
        || async {
            let c = ha.get(target).await.ok()?;
            resized(&c, &instances).then_some(c)
        },
    )
    .await?;
    eprintln!(
        "[{ns}] storage.size {FROM} -> {TO}: provided and the file systems grown on every instance {:.1}s later, online",
        at.elapsed().as_secs_f64()
    );
    for name in &instances {
        let v = volumes::volume(&c, name, "data").expect("in status");
        eprintln!(
            "[{ns}] {name}: file system {} MiB, {} MiB used",
            v.size_bytes.unwrap_or(0) >> 20,
            v.used_bytes.unwrap_or(0) >> 20
        );
    }
    assert_eq!(ha.pod_uids(target).await?, pods, "no pod re-created");
    assert_eq!(ha.start_times(target, &instances).await?, started);
    ha.delete(target).await
}

async fn offline(target: &mut Target, ns: &str) -> Result<(), E2eError> {
    let Some(pgbench) = pgbench_binary() else {
        eprintln!("skipped: pgbench not found (install postgresql-15 or set CAPSTAN_PGBENCH)");
        return Ok(());
    };
    let target = &*target;
    let ha = cluster_on(target, ns, "e2e-grows-offline", Expansion::Offline, 3).await?;
    let c = ha.get(target).await?;
    let instances = ha::instance_names(&c);
    let old_primary = ha::current_primary(&c).cloned().unwrap_or_default();
    let pods = ha.pod_uids(target).await?;
    let bench = Pgbench::new(&pgbench, &ha, &ha.pooler(target).await?)?;
    bench.init(1).await?;
    let run = bench.start(4, Duration::from_secs(80))?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let at = Instant::now();
    raise(target, &ha).await?;
    let pending = wait_for(
        "a volume waiting for its pod (FileSystemResizePending) in status",
        Duration::from_secs(60),
        Duration::from_millis(250),
        || async {
            let c = ha.get(target).await.ok()?;
            instances
                .iter()
                .find(|n| {
                    volumes::volume(&c, n, "data")
                        .is_some_and(|v| v.resize.as_deref() == Some("FileSystemResizePending"))
                })
                .cloned()
        },
    )
    .await?;
    eprintln!(
        "[{ns}] {pending}: FileSystemResizePending {:.1}s after the new size",
        at.elapsed().as_secs_f64()
    );
    let c = wait_for(
        "every data volume provided at the new size after the rolling restart",
        RESIZE_WITHIN,
        Duration::from_millis(500),
        || async {
            let c = ha.get(target).await.ok()?;
            resized(&c, &instances).then_some(c)
        },
    )
    .await?;
    let took = at.elapsed();
    let new_primary = ha::current_primary(&c).cloned().unwrap_or_default();
    let after = ha.pod_uids(target).await?;
    eprintln!(
        "[{ns}] resized offline in {:.1}s: primary {old_primary} -> {new_primary}, pods re-created: {}",
        took.as_secs_f64(),
        after
            .iter()
            .filter(|(n, uid)| pods.get(*n) != Some(uid))
            .count()
    );
    assert_ne!(new_primary, old_primary, "the primary moved by switchover");
    for name in &instances {
        assert_ne!(pods.get(name), after.get(name), "{name} was re-created");
    }
    let report = run.finish(Duration::from_secs(180)).await?;
    eprintln!(
        "[{ns}] pgbench: {} transactions, {} failed, {} clients aborted, longest transaction {:.0} ms",
        report.processed, report.failed, report.aborted_clients, report.max_latency_ms
    );
    assert!(
        report.failed == 0 && report.aborted_clients == 0 && !report.run_aborted,
        "pgbench saw client errors across the offline resize: {:?}\n{}",
        report.errors,
        report.output
    );
    ha.delete(target).await
}

async fn fixed(target: &mut Target, ns: &str) -> Result<(), E2eError> {
    let target = &*target;
    let ha = cluster_on(target, ns, "e2e-fixed", Expansion::None, 1).await?;
    raise(target, &ha).await?;
    let (reason, message) = wait_for(
        "Stalled for a class that cannot expand",
        Duration::from_secs(60),
        Duration::from_millis(250),
        || async {
            let c = ha.get(target).await.ok()?;
            c.status
                .as_ref()?
                .conditions
                .iter()
                .find(|c| c.type_ == "Stalled" && c.status == "True")
                .map(|c| (c.reason.clone(), c.message.clone()))
        },
    )
    .await?;
    eprintln!("[{ns}] Stalled {reason}: {message}");
    assert_eq!(reason, "VolumeExpansionNotAllowed");
    assert!(
        message.contains("StorageClass \"e2e-fixed\"") && message.contains("allowVolumeExpansion"),
        "{message}"
    );
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(target.client(), &ha.ns);
    for claim in claims
        .list(&Default::default())
        .await
        .map_err(|e| E2eError::Kube("list claims".into(), e))?
        .items
        .iter()
        .filter(|c| c.metadata.name.as_deref() == Some("orders-1"))
    {
        let asked = claim.spec.as_ref().and_then(|s| {
            s.resources
                .as_ref()?
                .requests
                .as_ref()?
                .get("storage")
                .cloned()
        });
        assert_eq!(
            asked.map(|q| q.0),
            Some(FROM.to_string()),
            "the claim untouched"
        );
    }
    ha.delete(target).await
}

#[test]
fn a_larger_size_grows_volumes_online_with_no_restart() {
    capstan_e2e::scenario(|| async {
        let mut target = Target::from_env().await.expect("e2e target");
        let ns = format!("e2e-resize-online-{}", std::process::id());
        if let Err(e) = online(&mut target, &ns).await {
            fail(&target, &ns, e).await;
        }
    });
}

#[test]
fn an_offline_resize_restarts_pods_with_no_client_error() {
    capstan_e2e::scenario(|| async {
        let mut target = Target::from_env().await.expect("e2e target");
        let ns = format!("e2e-resize-offline-{}", std::process::id());
        if let Err(e) = offline(&mut target, &ns).await {
            fail(&target, &ns, e).await;
        }
    });
}

#[test]
fn a_class_that_cannot_expand_stalls_before_anything_is_patched() {
    capstan_e2e::scenario(|| async {
        let mut target = Target::from_env().await.expect("e2e target");
        let ns = format!("e2e-resize-fixed-{}", std::process::id());
        if let Err(e) = fixed(&mut target, &ns).await {
            fail(&target, &ns, e).await;
        }
    });
}

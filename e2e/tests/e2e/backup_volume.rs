//! A volume repository on the real control plane, no object store
//! anywhere: the operator creates the claim `src-repo1` and the repository
//! host `src-repo-host` (pgBackRest's TLS server in the cluster's image);
//! the instances archive and back up through it.
//!
//! `a_volume_repository_backs_up_verifies_and_restores`: two instances, a
//! `volume` repository → rows through the pooler → a full backup is
//! `Completed` and its verification by restore `Passed` (the verification
//! pod reads the repository through the host too) → the primary freezes
//! and fails over → more rows, archived on the new timeline through the
//! same host → a new cluster restored from the claim (mounted read-only in
//! its first instance) to the latest point holds every row, and its
//! replica streams.
//!
//! Needs the local harness (it freezes a primary); on a real cluster this
//! skips.

use std::time::{Duration, Instant};

use capstan::api::BackupType;
use capstan::api::backup::volume_repository_claim;
use capstan_e2e::backup;
use capstan_e2e::ha::{self, HaCluster, ha_example};
use capstan_e2e::harness::{ensure_namespace, wait_for};
use capstan_e2e::target::{Target, fail};
use capstan_e2e::{E2eError, cluster};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::Api;

const MAJOR: u32 = 17;
const WRITES_WITHIN: Duration = Duration::from_secs(60);
const VERIFIED_WITHIN: Duration = Duration::from_secs(240);
const RESTORED_WITHIN: Duration = Duration::from_secs(300);
const ARCHIVED_WITHIN: Duration = Duration::from_secs(60);

fn spec(ns: &str, name: &str, instances: i32) -> Result<capstan::api::PostgresCluster, E2eError> {
    let mut spec = ha_example("ha-cluster.yaml", ns)?;
    spec.metadata.name = Some(name.into());
    spec.spec.instances = instances;
    spec.spec.proxy.pgbouncer.replicas = 1;
    spec.spec.postgres.version = MAJOR as i32;
    spec.spec.postgres.image = Some(backup::pgbackrest_image(MAJOR));
    Ok(spec)
}

async fn verification_passed(target: &Target, ns: &str, name: &str) -> Result<(), E2eError> {
    let v = wait_for(
        &format!("the verification of {name} to finish"),
        VERIFIED_WITHIN,
        Duration::from_millis(250),
        || async {
            let b = backup::get(target, ns, name).await.ok()?;
            let v = b.status?.verification?;
            matches!(v.phase.as_str(), "Passed" | "Failed").then_some(v)
        },
    )
    .await?;
    eprintln!(
        "[{ns}] {name}: verification {} in {:?}s, sentinel found {:?}: {}",
        v.phase,
        v.duration_seconds,
        v.sentinel_found,
        v.message.clone().unwrap_or_default()
    );
    if v.phase == "Passed" && v.sentinel_found == Some(true) {
        Ok(())
    } else {
        Err(E2eError::Check(format!("verification of {name}: {v:?}")))
    }
}

async fn scenario(target: &mut Target, ns: &str) -> Result<(), E2eError> {
    ensure_namespace(&target.client(), ns).await?;
    let mut src = spec(ns, "src", 2)?;
    src.spec.backup = Some(
        serde_json::from_value(serde_json::json!({
            "repositories": [{"name": "repo1", "volume": {"size": "1Gi"}}],
            "archive": {"timeout": "5s"},
        }))
        .map_err(|e| E2eError::Setup(format!("spec.backup: {e}")))?,
    );
    let db = HaCluster::create(target, &src).await?;

    // The operator's children for the repository.
    let claim = volume_repository_claim("src", "repo1");
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(target.client(), ns);
    claims
        .get(&claim)
        .await
        .map_err(|e| E2eError::Check(format!("claim {claim}: {e}")))?;
    let deployments: Api<Deployment> = Api::namespaced(target.client(), ns);
    wait_for(
        "deployment src-repo-host available",
        Duration::from_secs(120),
        Duration::from_millis(250),
        || async {
            let d = deployments.get_opt("src-repo-host").await.ok()??;
            (d.status?.available_replicas? == 1).then_some(())
        },
    )
    .await?;

    // 1. Rows, a full backup through the host, verified by restore.
    backup::write_rows(&db, target, 1..=200, WRITES_WITHIN).await?;
    let asked = Instant::now();
    let full = backup::completed(target, ns, "src-full", "src", BackupType::Full).await?;
    eprintln!(
        "[{ns}] src-full on {:?}: {:?}, {:?} bytes",
        full.status.as_ref().and_then(|s| s.instance.clone()),
        full.status.as_ref().and_then(|s| s.label.clone()),
        full.status.as_ref().and_then(|s| s.size)
    );
    verification_passed(target, ns, "src-full").await?;
    eprintln!(
        "[{ns}] request to verified: {:.1}s",
        asked.elapsed().as_secs_f64()
    );

    // 2. A failover; archiving goes on from the new primary to the same host.
    let (old, new) = db.fail_over(target).await?;
    eprintln!("[{ns}] failover {old} -> {new}");
    let target = &*target;
    backup::write_rows(&db, target, 201..=300, WRITES_WITHIN).await?;
    let wanted = backup::current_segment(&db, target).await?;
    let admin = db.connect(&db.rw(target).await?, ha::As::Superuser).await?;
    capstan_e2e::sql::value(&admin, "SELECT pg_switch_wal()").await?;
    backup::wait_archived(&db, target, &wanted, ARCHIVED_WITHIN).await?;
    eprintln!(
        "[{ns}] {wanted} (timeline {:?}) archived through the repository host",
        backup::timeline(&wanted)
    );

    // 3. A clone from the claim, to the latest point.
    let mut copy = spec(ns, "copy", 2)?;
    copy.spec.bootstrap.initdb = None;
    copy.spec.bootstrap.restore = Some(
        serde_json::from_value(serde_json::json!({
            "source": {"repository": {"volume": {"claimName": claim}}, "cluster": "src"},
            // The example's application database, where the rows are.
            "database": "orders",
            "owner": "orders",
        }))
        .map_err(|e| E2eError::Setup(format!("spec.bootstrap.restore: {e}")))?,
    );
    let asked = Instant::now();
    cluster::apply(&target.client(), &copy).await?;
    cluster::wait_ready(&target.client(), ns, "copy", RESTORED_WITHIN).await?;
    eprintln!(
        "[{ns}] copy (2 instances) restored from {claim}: Ready {:.1}s after it was applied",
        asked.elapsed().as_secs_f64()
    );
    let copy = HaCluster::create(target, &copy).await?;
    let rows = copy.written(&copy.pooler(target).await?).await?;
    if rows != (1..=300).collect() {
        return Err(E2eError::Check(format!(
            "{} rows restored (first/last {:?}/{:?}), not 1..=300; copy: {}",
            rows.len(),
            rows.first(),
            rows.last(),
            ha::status_summary(&copy.get(target).await?)
        )));
    }
    let c = copy.get(target).await?;
    let primary = ha::current_primary(&c).cloned().unwrap_or_default();
    let replicas: Vec<&str> = c
        .status
        .iter()
        .flat_map(|s| &s.instances)
        .map(|i| i.name.as_str())
        .filter(|n| *n != primary)
        .collect();
    copy.wait_streaming(target, &replicas, WRITES_WITHIN)
        .await?;
    eprintln!("[{ns}] copy: all 300 rows, replica {replicas:?} streaming");

    // The source kept serving throughout.
    backup::write_rows(&db, target, 301..=310, WRITES_WITHIN).await?;
    copy.delete(target).await?;
    db.delete(target).await
}

#[test]
fn a_volume_repository_backs_up_verifies_and_restores() {
    capstan_e2e::scenario(|| async {
        let Some(mut target) = backup::harness_for_backups(
            MAJOR,
            "this scenario freezes a primary, which only the local harness can do",
        )
        .await
        else {
            return;
        };
        let ns = format!("e2e-backup-volume-{}", std::process::id());
        if let Err(e) = scenario(&mut target, &ns).await {
            fail(&target, &ns, e).await;
        }
    });
}

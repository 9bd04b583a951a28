//! Verification by restore on the real control plane: every full backup is
//! restored in a throwaway pod (`<backup>-verify`, the instances' image)
//! from the S3 store, recovered to its end, started and checked, and the
//! result is recorded on the `PostgresBackup`.
//!
//! * `a_verification_runs_and_is_reported`: one instance, rows through the
//!   pooler → a full backup ends `Completed` with its verification
//!   `Passed` (restore/recovery/checks durations, the sentinel row found),
//!   a `BackupVerified` Event and condition, and its pod gone → the
//!   backup's data files are deleted from the store behind Capstan's back
//!   → an incremental backup on top of it, asked to be verified
//!   (`spec.verify: true`), is taken (pgBackRest only references the
//!   unchanged files) but its verification fails with pgBackRest's own
//!   message: a `Failed` verification, a Warning Event and the cluster's
//!   `BackupVerified` condition `False`, while the database keeps serving.
//!
//! * `a_replica_takes_the_backup_and_it_restores`: two instances with
//!   `target: preferReplica` → a full backup is taken on the replica (its
//!   `status.instance`, the `BackupStarted` Event says so), the primary's
//!   part through its pgBackRest TLS server behind `-rw` → its
//!   verification passes with the sentinel row the primary wrote → the
//!   cluster stays Ready and every row written through the pooler is there.
//!
//! The store is a harness facility: on a real cluster this skips.

use std::time::{Duration, Instant};

use capstan::api::BackupType;
use capstan::api::pgbackup::PostgresBackup;
use capstan_e2e::backup::{self, KEYS_SECRET, Keys, PodS3};
use capstan_e2e::ha::{self, HaCluster, ha_example};
use capstan_e2e::harness::{ensure_namespace, wait_for};
use capstan_e2e::target::{Target, fail};
use capstan_e2e::{E2eError, cluster};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::events::v1::Event;
use kube::Api;
use kube::api::ListParams;

const MAJOR: u32 = 17;
const WRITES_WITHIN: Duration = Duration::from_secs(60);
/// From the backup's end to its verification recorded: the pod starts,
/// restores, recovers and checks a small database.
const VERIFIED_WITHIN: Duration = Duration::from_secs(240);

async fn setup() -> Option<(Target, PodS3)> {
    backup::harness_with_store(MAJOR, "capstan-e2e-verify").await
}

fn verification(b: &PostgresBackup) -> capstan::api::pgbackup::VerificationStatus {
    b.status
        .as_ref()
        .and_then(|s| s.verification.clone())
        .unwrap_or_default()
}

/// Waits until the backup's verification finished, and returns it.
async fn verified(target: &Target, ns: &str, name: &str) -> Result<PostgresBackup, E2eError> {
    let b = backup::wait_finished(target, ns, name, VERIFIED_WITHIN).await?;
    wait_for(
        &format!("the verification of {name} to finish"),
        VERIFIED_WITHIN,
        Duration::from_millis(250),
        || async {
            let b = backup::get(target, ns, name).await.ok()?;
            matches!(verification(&b).phase.as_str(), "Passed" | "Failed").then_some(b)
        },
    )
    .await
    .or(Ok(b))
}

async fn pod_gone(target: &Target, ns: &str, pod: &str) -> Result<(), E2eError> {
    let pods: Api<Pod> = Api::namespaced(target.client(), ns);
    wait_for(
        &format!("pod {pod} to be deleted"),
        Duration::from_secs(60),
        Duration::from_millis(250),
        || async { pods.get_opt(pod).await.ok()?.is_none().then_some(()) },
    )
    .await
}

async fn event_notes(target: &Target, ns: &str, reason: &str) -> Vec<(String, String)> {
    let events: Api<Event> = Api::namespaced(target.client(), ns);
    events
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .map(|e| (e.type_.unwrap_or_default(), e.note.unwrap_or_default()))
        .collect()
}

async fn wait_event(
    target: &Target,
    ns: &str,
    reason: &str,
    backup: &str,
) -> Result<(String, String), E2eError> {
    wait_for(
        &format!("a {reason} Event about {backup}"),
        Duration::from_secs(30),
        Duration::from_millis(250),
        || async {
            event_notes(target, ns, reason)
                .await
                .into_iter()
                .find(|(_, note)| note.contains(backup))
        },
    )
    .await
}

async fn wait_condition(
    target: &Target,
    ns: &str,
    status: &str,
) -> Result<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition, E2eError> {
    wait_for(
        &format!("condition BackupVerified={status}"),
        Duration::from_secs(60),
        Duration::from_millis(250),
        || async {
            backup::condition(target, ns, "db", "BackupVerified")
                .await
                .ok()
                .flatten()
                .filter(|c| c.status == status)
        },
    )
    .await
}

/// Cluster `db` in `ns` with `instances`, one pooler, the pgBackRest image
/// and `repo1` on the store (keys in place), WAL archived every 5 s.
async fn cluster_on_store(
    target: &Target,
    store: &PodS3,
    ns: &str,
    instances: i32,
    backup_target: capstan::api::backup::BackupTarget,
) -> Result<HaCluster, E2eError> {
    ensure_namespace(&target.client(), ns).await?;
    store
        .write_secrets(target, ns, KEYS_SECRET, Keys::Right)
        .await?;
    let mut spec = ha_example("ha-cluster.yaml", ns)?;
    spec.metadata.name = Some("db".into());
    spec.spec.instances = instances;
    spec.spec.proxy.pgbouncer.replicas = 1;
    spec.spec.postgres.version = MAJOR as i32;
    spec.spec.postgres.image = Some(backup::pgbackrest_image(MAJOR));
    let mut backup_spec = store.backup_spec(KEYS_SECRET, "5s")?;
    backup_spec.target = backup_target;
    spec.spec.backup = Some(backup_spec);
    HaCluster::create(target, &spec).await
}

async fn scenario(target: &Target, store: &PodS3, ns: &str) -> Result<(), E2eError> {
    use capstan::api::backup::BackupTarget;
    let db = cluster_on_store(target, store, ns, 1, BackupTarget::Primary).await?;
    backup::write_rows(&db, target, 1..=500, WRITES_WITHIN).await?;

    // 1. A full backup, verified by default.
    let asked = Instant::now();
    backup::request(target, ns, "db-full", "db", BackupType::Full).await?;
    let full = verified(target, ns, "db-full").await?;
    let took = asked.elapsed();
    let s = full.status.clone().unwrap_or_default();
    let v = verification(&full);
    eprintln!(
        "[{ns}] db-full {:?}, verification {}: {} (restore {:?}s, recovery {:?}s, checks {:?}s, total {:?}s; request to verified {:.1}s)",
        s.phase,
        v.phase,
        v.message.clone().unwrap_or_default(),
        v.restore_seconds,
        v.recovery_seconds,
        v.checks_seconds,
        v.duration_seconds,
        took.as_secs_f64()
    );
    assert_eq!(s.phase.as_deref(), Some("Completed"));
    assert_eq!(v.phase, "Passed", "{v:?}");
    assert_eq!(v.sentinel_found, Some(true), "{v:?}");
    assert!(v.amcheck.is_some(), "{v:?}");
    for d in [v.restore_seconds, v.recovery_seconds, v.checks_seconds] {
        assert!(d.is_some_and(|d| d >= 0.0), "{v:?}");
    }
    assert!(
        v.duration_seconds.is_some() && v.finished_at.is_some(),
        "{v:?}"
    );
    pod_gone(target, ns, "db-full-verify").await?;
    let (kind, note) = wait_event(target, ns, "BackupVerified", "db-full").await?;
    assert_eq!(kind, "Normal", "{note}");
    let c = wait_condition(target, ns, "True").await?;
    eprintln!("[{ns}] BackupVerified {}: {}", c.status, c.message);

    // 2. The full backup's data files vanish from the store; an
    // incremental on top of it is taken (it only references them) but
    // cannot be restored.
    let label = s.label.clone().unwrap_or_default();
    let data: Vec<String> = store
        .keys("capstan/")?
        .into_iter()
        .filter(|k| k.contains(&format!("/{label}/pg_data/")))
        .collect();
    assert!(!data.is_empty(), "no data files of {label} in the store");
    store.delete(&data)?;
    eprintln!(
        "[{ns}] deleted {} data file(s) of {label} from the store",
        data.len()
    );
    backup::write_rows(&db, target, 501..=600, WRITES_WITHIN).await?;
    backup::request_verified(
        target,
        ns,
        "db-incr",
        "db",
        BackupType::Incremental,
        Some(true),
    )
    .await?;
    let incr = verified(target, ns, "db-incr").await?;
    let s = incr.status.clone().unwrap_or_default();
    let v = verification(&incr);
    eprintln!(
        "[{ns}] db-incr {:?} ({:?}), verification {} after {:?}s: {}",
        s.phase,
        s.label,
        v.phase,
        v.duration_seconds,
        v.message.clone().unwrap_or_default()
    );
    assert_eq!(s.phase.as_deref(), Some("Completed"), "{s:?}");
    assert_eq!(v.phase, "Failed", "{v:?}");
    let message = v.message.clone().unwrap_or_default();
    assert!(message.contains("restoring backup"), "{message}");
    pod_gone(target, ns, "db-incr-verify").await?;
    let (kind, note) = wait_event(target, ns, "BackupVerificationFailed", "db-incr").await?;
    assert_eq!(kind, "Warning", "{note}");
    let c = wait_condition(target, ns, "False").await?;
    assert_eq!(c.reason, "BackupVerificationFailed");
    assert!(c.message.contains("db-incr"), "{}", c.message);

    // 3. The database never noticed.
    backup::write_rows(&db, target, 601..=700, WRITES_WITHIN).await?;
    let c = db.get(target).await?;
    assert_eq!(
        cluster::condition(&c, "Ready").as_deref(),
        Some("True"),
        "{}",
        ha::status_summary(&c)
    );
    let rows = db.written(&db.pooler(target).await?).await?;
    assert!(
        (1..=700).all(|n| rows.contains(&n)),
        "{} of 700 rows",
        rows.len()
    );
    db.delete(target).await
}

async fn on_a_replica(target: &Target, store: &PodS3, ns: &str) -> Result<(), E2eError> {
    use capstan::api::backup::BackupTarget;
    let db = cluster_on_store(target, store, ns, 2, BackupTarget::PreferReplica).await?;
    backup::write_rows(&db, target, 1..=300, WRITES_WITHIN).await?;
    let c = db.get(target).await?;
    let primary = ha::current_primary(&c).cloned().unwrap_or_default();

    backup::completed(target, ns, "db-standby", "db", BackupType::Full).await?;
    let b = verified(target, ns, "db-standby").await?;
    let s = b.status.clone().unwrap_or_default();
    let v = verification(&b);
    let instance = s.instance.clone().unwrap_or_default();
    eprintln!(
        "[{ns}] db-standby taken on {instance} (primary {primary}); verification {}: {}",
        v.phase,
        v.message.clone().unwrap_or_default()
    );
    assert!(!instance.is_empty() && instance != primary, "{s:?}");
    let (kind, note) = wait_event(target, ns, "BackupStarted", "db-standby").await?;
    assert_eq!(kind, "Normal");
    assert!(
        note.contains(&instance) && note.contains("replica"),
        "{note}"
    );
    assert_eq!(v.phase, "Passed", "{v:?}");
    assert_eq!(v.sentinel_found, Some(true), "{v:?}");

    backup::write_rows(&db, target, 301..=400, WRITES_WITHIN).await?;
    let c = db.get(target).await?;
    assert_eq!(
        cluster::condition(&c, "Ready").as_deref(),
        Some("True"),
        "{}",
        ha::status_summary(&c)
    );
    assert_eq!(ha::current_primary(&c), Some(&primary));
    let rows = db.written(&db.pooler(target).await?).await?;
    assert!(
        (1..=400).all(|n| rows.contains(&n)),
        "{} of 400 rows",
        rows.len()
    );
    db.delete(target).await
}

#[test]
fn a_replica_takes_the_backup_and_it_restores() {
    capstan_e2e::scenario(|| async {
        let Some((target, store)) = setup().await else {
            return;
        };
        let ns = format!("e2e-backup-standby-{}", std::process::id());
        if let Err(e) = on_a_replica(&target, &store, &ns).await {
            eprintln!("--- S3 store ---\n{}", store.logs());
            fail(&target, &ns, e).await;
        }
    });
}

#[test]
fn a_verification_runs_and_is_reported() {
    capstan_e2e::scenario(|| async {
        let Some((target, store)) = setup().await else {
            return;
        };
        let ns = format!("e2e-backup-verify-{}", std::process::id());
        if let Err(e) = scenario(&target, &store, &ns).await {
            eprintln!("--- S3 store ---\n{}", store.logs());
            fail(&target, &ns, e).await;
        }
    });
}

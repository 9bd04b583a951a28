//! Backups on the real control plane. Instance pods run the pgBackRest
//! image (`images/postgres`; the harness maps any image named
//! `…pgbackrest…` to PostgreSQL plus pgBackRest 2.55), WAL goes to an S3
//! store over TLS (moto behind nginx, checking signatures) on the node
//! address, trusted through `caSecret`, and each `PostgresBackup` is taken
//! by the primary's instance manager.
//!
//! * `full_and_incremental_backups_through_a_failover`: 3 instances, rows
//!   through the pooler → a full backup `Completed` with its label, sizes,
//!   LSNs and duration, named by `status.backup.lastSuccessfulBackup`, and
//!   `lastArchivedWal` moving on → the primary frozen, a failover, more
//!   rows → WAL archived on the new timeline → an incremental backup
//!   `Completed` on the new primary → the old primary rejoins.
//! * `a_wrong_key_fails_the_backup_and_a_stock_image_says_what_is_missing`:
//!   a cluster whose Secret has a wrong secret key gets a `Failed` backup
//!   with pgBackRest's own message; one on the stock image (no pgBackRest)
//!   gets a backup that says pgBackRest is missing and how to fix it; both
//!   keep serving writes through their poolers without a restart.
//!
//! The store and the freeze are harness facilities: on a real cluster
//! (`CAPSTAN_E2E_KUBECONFIG`) these skip with a message.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use capstan::api::{BackupType, PostgresBackup, PostgresCluster};
use capstan_e2e::backup::{self, KEYS_SECRET, Keys, PodS3, s3};
use capstan_e2e::cluster;
use capstan_e2e::ha::{self, FAILOVER_WITHIN, HaCluster, REJOIN_WITHIN, ha_example};
use capstan_e2e::harness::{ensure_namespace, wait_for};
use capstan_e2e::target::{Target, fail};
use capstan_e2e::{E2eError, sql};

/// PostgreSQL major of these scenarios (`CAPSTAN_PG17_BIN`).
const MAJOR: u32 = 17;
/// The official image, named explicitly: it has no pgBackRest.
const STOCK_IMAGE: &str = "docker.io/library/postgres:17-bookworm";
/// `spec.backup.archive.timeout`: a written segment is archived this soon.
const ARCHIVE_TIMEOUT: &str = "5s";
/// From a commit to its segment in the repository: `ARCHIVE_TIMEOUT`, the
/// asynchronous push, and room for a slow machine.
const ARCHIVED_WITHIN: Duration = Duration::from_secs(60);
/// What the operator shows in `status.backup` follows its reconciles:
/// every 15 s while a backup is pending or running or the cluster is not
/// Ready, else only on changes or the resync (300 s by default), so the
/// scenarios read `lastArchivedWal` around backups and the failover.
const STATUS_WITHIN: Duration = Duration::from_secs(90);
const WRITES_WITHIN: Duration = Duration::from_secs(60);

/// What every backup scenario starts from: a harness with the operator,
/// and an S3 store its pods reach. Fields drop in order: the pods (and
/// their archivers) go before the store.
struct Setup {
    target: Target,
    s3: PodS3,
}

impl Setup {
    /// `None` when a tool is missing (said why; `CI=true` fails instead) or
    /// the target is a real cluster.
    async fn start() -> Option<Setup> {
        s3::pgbackrest()?;
        let pg_bin = std::env::var_os(format!("CAPSTAN_PG{MAJOR}_BIN"));
        let debian = format!("/usr/lib/postgresql/{MAJOR}/bin/postgres");
        if pg_bin.is_none() && !std::path::Path::new(&debian).is_file() {
            return s3::missing(&format!(
                "PostgreSQL {MAJOR} (CAPSTAN_PG{MAJOR}_BIN=/opt/capstan-pg/{MAJOR}/bin)"
            ));
        }
        let mut target = Target::from_env().await.expect("e2e target");
        let Some(harness) = target.harness() else {
            eprintln!(
                "skipped: the S3 store runs on the local harness's node address; a real cluster needs one of its own"
            );
            return None;
        };
        let node = IpAddr::V4(harness.control_plane().addr());
        let s3 = PodS3::start(node, "capstan-e2e")
            .await
            .expect("S3 store for the pods")?;
        eprintln!("S3 store for the pods at https://{}", s3.endpoint());
        Some(Setup { target, s3 })
    }

    /// Fails the test with `error`, the pods, the operator's log and the
    /// store's.
    async fn fail(&self, ns: &str, error: E2eError) -> ! {
        eprintln!("--- S3 store ---\n{}", self.s3.logs());
        fail(&self.target, ns, error).await
    }

    /// `examples/ha-cluster.yaml` as `name` with `instances` and `poolers`,
    /// on `image`, backing up to the store with the keys in `keys_secret`
    /// (written with [`PodS3::write_secrets`] first).
    fn cluster(
        &self,
        ns: &str,
        name: &str,
        (instances, poolers): (i32, i32),
        image: &str,
        keys_secret: &str,
    ) -> Result<PostgresCluster, E2eError> {
        let mut c = ha_example("ha-cluster.yaml", ns)?;
        c.metadata.name = Some(name.to_string());
        c.spec.instances = instances;
        c.spec.proxy.pgbouncer.replicas = poolers;
        c.spec.postgres.version = MAJOR as i32;
        c.spec.postgres.image = Some(image.to_string());
        c.spec.backup = Some(self.s3.backup_spec(keys_secret, ARCHIVE_TIMEOUT)?);
        Ok(c)
    }
}

/// Takes a backup of `cluster` and returns it `Completed` with what
/// pgBackRest recorded, printing how long it took.
async fn completed_backup(
    target: &Target,
    ns: &str,
    name: &str,
    cluster: &str,
    type_: BackupType,
) -> Result<PostgresBackup, E2eError> {
    let asked = Instant::now();
    backup::request(target, ns, name, cluster, type_).await?;
    let b = backup::wait_finished(target, ns, name, backup::BACKUP_WITHIN).await?;
    if backup::phase(&b) != "Completed" {
        return Err(E2eError::Check(format!(
            "backup {name} {}: {}",
            backup::phase(&b),
            backup::message(&b)
        )));
    }
    let s = b.status.clone().unwrap_or_default();
    let missing = |field: &str| E2eError::Check(format!("backup {name} has no {field}: {s:?}"));
    let label = s.label.clone().ok_or_else(|| missing("label"))?;
    let size = s.size.filter(|n| *n > 0).ok_or_else(|| missing("size"))?;
    let (start, stop) = (
        s.lsn_start.clone().ok_or_else(|| missing("lsnStart"))?,
        s.lsn_stop.clone().ok_or_else(|| missing("lsnStop"))?,
    );
    let duration = s
        .duration_seconds
        .filter(|d| *d >= 0)
        .ok_or_else(|| missing("durationSeconds"))?;
    assert_eq!(s.type_, Some(type_), "{s:?}");
    assert_eq!(s.repository.as_deref(), Some("repo1"), "{s:?}");
    let suffix = match type_ {
        BackupType::Full => 'F',
        BackupType::Differential => 'D',
        BackupType::Incremental => 'I',
    };
    assert!(label.ends_with(suffix), "{type_:?} backup label {label}");
    eprintln!(
        "[{ns}] backup {name} ({type_:?}) Completed on {}: label {label}, {size} bytes ({} in the repository), WAL {start} .. {stop}; pgBackRest took {duration}s, request to Completed {:.1}s",
        s.instance.as_deref().unwrap_or("?"),
        s.repository_size.unwrap_or_default(),
        asked.elapsed().as_secs_f64()
    );
    Ok(b)
}

/// Rows committed now reach the repository: the lag from the commit to
/// `pg_stat_archiver` on the primary (asked on `-rw`). Returns the segment
/// that held them.
async fn archive_lag(ha: &HaCluster, target: &Target, what: &str) -> Result<String, E2eError> {
    let committed = Instant::now();
    let wanted = backup::current_segment(ha, target).await?;
    let archived = backup::wait_archived(ha, target, &wanted, ARCHIVED_WITHIN).await?;
    eprintln!(
        "[{}] archive lag ({what}): segment {wanted} archived {:.1}s after the commit (pg_stat_archiver; archive.timeout {ARCHIVE_TIMEOUT})",
        ha.ns,
        archived.duration_since(committed).as_secs_f64(),
    );
    Ok(wanted)
}

/// Waits until `status.backup.lastSuccessfulBackup` names `backup`.
async fn wait_last_successful(
    ha: &HaCluster,
    target: &Target,
    backup: &str,
) -> Result<PostgresCluster, E2eError> {
    wait_for(
        &format!("status.backup.lastSuccessfulBackup = {backup}"),
        STATUS_WITHIN,
        Duration::from_millis(250),
        || async {
            let c = ha.get(target).await.ok()?;
            let last = backup::status(&c)?.last_successful_backup.as_ref()?;
            (last.name == backup).then_some(c)
        },
    )
    .await
}

async fn through_a_failover(setup: &mut Setup, ns: &str) -> Result<(), E2eError> {
    let spec = setup.cluster(
        ns,
        "db",
        (3, 2),
        &backup::pgbackrest_image(MAJOR),
        KEYS_SECRET,
    )?;
    let Setup { target, s3 } = setup;
    ensure_namespace(&target.client(), ns).await?;
    s3.write_secrets(target, ns, KEYS_SECRET, Keys::Right)
        .await?;
    let ha = HaCluster::create(target, &spec).await?;

    // 1. Rows through the pooler, archived within archive.timeout.
    backup::write_rows(&ha, target, 1..=1000, WRITES_WITHIN).await?;
    let first = archive_lag(&ha, target, "before the backups").await?;
    let before = backup::last_archived_wal(&ha.get(target).await?).map(str::to_string);

    // 2. A full backup, recorded on its object and on the cluster.
    let primary = ha::current_primary(&ha.get(target).await?)
        .cloned()
        .ok_or_else(|| E2eError::Check("no current primary".into()))?;
    let full = completed_backup(target, ns, "db-full", "db", BackupType::Full).await?;
    let full_status = full.status.clone().unwrap_or_default();
    assert_eq!(full_status.instance.as_ref(), Some(&primary));
    let c = wait_last_successful(&ha, target, "db-full").await?;
    let last = backup::status(&c)
        .and_then(|s| s.last_successful_backup.clone())
        .unwrap_or_default();
    assert_eq!(Some(&last.label), full_status.label.as_ref());
    assert_eq!(last.type_, BackupType::Full);
    // The status moved on past the rows written before the backup (the
    // backup's own WAL was archived after them).
    let moved_on = |wal: &str| {
        backup::covers(wal, &first)
            && before
                .as_deref()
                .is_none_or(|b| backup::segment(wal) > backup::segment(b))
    };
    let after_backup = backup::wait_archived_in_status(
        &ha,
        target,
        &format!("past {before:?} and {first}"),
        STATUS_WITHIN,
        moved_on,
    )
    .await?;
    let now = backup::last_archived_wal(&after_backup).unwrap_or_default();
    eprintln!(
        "[{ns}] status.backup.lastArchivedWal {before:?} -> {now} (the full backup's WAL: {:?} .. {:?})",
        full_status.wal_start, full_status.wal_stop
    );

    // 3. A failover: the primary freezes, a replica takes over.
    let old = primary;
    let frozen = target
        .harness()
        .expect("local harness")
        .runtime()
        .freeze_pod(ns, &old)
        .map_err(|e| E2eError::Check(format!("freeze {old}: {e}")))?;
    let t0 = Instant::now();
    eprintln!("[{ns}] froze primary {old} ({frozen} processes)");
    let (_, failover) = ha.wait_failover(target, &old, FAILOVER_WITHIN).await?;
    let new = failover.to.clone();
    eprintln!(
        "[{ns}] failover {old} -> {new} completed {:.1}s after the freeze",
        t0.elapsed().as_secs_f64()
    );
    backup::write_rows(&ha, target, 1001..=2000, WRITES_WITHIN).await?;
    let second = archive_lag(&ha, target, "after the failover").await?;
    let (old_tl, new_tl) = (backup::timeline(&first), backup::timeline(&second));
    assert!(new_tl > old_tl, "timeline {old_tl:?} -> {new_tl:?}");
    // The status follows (the operator reconciles every 15 s while the
    // frozen instance keeps the cluster from Ready).
    let seen = Instant::now();
    let c = backup::wait_archived_in_status(
        &ha,
        target,
        &format!("at {second} on the new timeline"),
        STATUS_WITHIN,
        |wal| backup::covers(wal, &second),
    )
    .await?;
    let archived = backup::last_archived_wal(&c).unwrap_or_default();
    assert_eq!(
        backup::timeline(archived),
        new_tl,
        "lastArchivedWal {archived} is not on the new timeline"
    );
    eprintln!(
        "[{ns}] status.backup.lastArchivedWal {archived} (timeline {new_tl:?}) {:.1}s after pg_stat_archiver had it",
        seen.elapsed().as_secs_f64()
    );

    // An incremental backup on the new primary, based on the full one.
    let incr = completed_backup(target, ns, "db-incr", "db", BackupType::Incremental).await?;
    let incr_status = incr.status.clone().unwrap_or_default();
    assert_eq!(incr_status.instance.as_ref(), Some(&new));
    let wal_start = incr_status.wal_start.clone().unwrap_or_default();
    assert_eq!(backup::timeline(&wal_start), new_tl, "walStart {wal_start}");
    wait_last_successful(&ha, target, "db-incr").await?;

    // The old primary comes back as a replica of the new timeline.
    target
        .harness()
        .expect("local harness")
        .runtime()
        .thaw_pod(ns, &old)
        .map_err(|e| E2eError::Check(format!("thaw {old}: {e}")))?;
    let thawed = Instant::now();
    ha.wait_replica(target, &old, REJOIN_WITHIN).await?;
    eprintln!(
        "[{ns}] {old} is a ready replica {:.1}s after the thaw",
        thawed.elapsed().as_secs_f64()
    );
    let rows = ha.written(&ha.rw(target).await?).await?;
    assert!(
        (1..=2000).all(|n| rows.contains(&n)),
        "{} of 2000 rows on the primary",
        rows.len()
    );
    ha.delete(target).await
}

/// pgBackRest's own error format, and what the store said to a wrong key.
fn is_refused_key(message: &str) -> bool {
    message.starts_with("ERROR: [")
        && ["403", "SignatureDoesNotMatch", "InvalidAccessKeyId"]
            .iter()
            .any(|m| message.contains(m))
}

/// The primary's archiver, asked on `-rw`: (failed, archived, segments
/// waiting to be archived).
async fn archiver(ha: &HaCluster, target: &Target) -> Result<(i64, i64, i64), E2eError> {
    let admin = ha.connect(&ha.rw(target).await?, ha::As::Superuser).await?;
    let row = sql::value(
        &admin,
        "SELECT failed_count || ' ' || archived_count || ' ' \
         || (SELECT count(*) FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready') \
         FROM pg_stat_archiver",
    )
    .await?;
    let n: Vec<i64> = row.split(' ').filter_map(|v| v.parse().ok()).collect();
    match n[..] {
        [failed, archived, ready] => Ok((failed, archived, ready)),
        _ => Err(E2eError::Sql(format!("pg_stat_archiver: {row:?}"))),
    }
}

/// Closes the segment being written and waits until the primary's archiver
/// says `done` about it. The switch is asked for because archive_timeout
/// does not switch a server that was just started before its WAL leaves the
/// first segment (PostgreSQL 17: after a restart 100 rows stayed in segment
/// 1 for over a minute here).
async fn after_a_switch(
    ha: &HaCluster,
    target: &Target,
    what: &str,
    done: impl Fn((i64, i64, i64)) -> bool,
) -> Result<(i64, i64, i64), E2eError> {
    let admin = ha.connect(&ha.rw(target).await?, ha::As::Superuser).await?;
    sql::value(&admin, "SELECT pg_walfile_name(pg_switch_wal())").await?;
    let seen = std::sync::Mutex::new(None);
    let found = wait_for(
        &format!("{}: {what}", ha.name),
        ARCHIVED_WITHIN,
        Duration::from_millis(250),
        || async {
            let now = archiver(ha, target).await.ok()?;
            *seen.lock().unwrap_or_else(|p| p.into_inner()) = Some(now);
            done(now).then_some(now)
        },
    )
    .await;
    found.map_err(|e| {
        let seen = *seen.lock().unwrap_or_else(|p| p.into_inner());
        E2eError::Check(format!(
            "{e} (archiver: failed, archived, waiting = {seen:?})"
        ))
    })
}

/// Waits until `status.backup.lastArchiveFailure` reports it; its message.
async fn archive_failure_in_status(ha: &HaCluster, target: &Target) -> Result<String, E2eError> {
    wait_for(
        &format!("{}: status.backup.lastArchiveFailure", ha.name),
        STATUS_WITHIN,
        Duration::from_millis(250),
        || async {
            let c = ha.get(target).await.ok()?;
            Some(
                backup::status(&c)?
                    .last_archive_failure
                    .as_ref()?
                    .message
                    .clone(),
            )
        },
    )
    .await
}

/// `Ready=True` now, and writes through the pooler succeed.
async fn serves(
    ha: &HaCluster,
    target: &Target,
    rows: std::ops::RangeInclusive<i64>,
) -> Result<(), E2eError> {
    backup::write_rows(ha, target, rows, WRITES_WITHIN).await?;
    let c = ha.get(target).await?;
    match cluster::condition(&c, "Ready").as_deref() {
        Some("True") => Ok(()),
        other => Err(E2eError::Check(format!(
            "{} is not Ready ({other:?}): {}",
            ha.name,
            ha::status_summary(&c)
        ))),
    }
}

async fn bad_repository_and_image(setup: &Setup, ns: &str) -> Result<(), E2eError> {
    let wrong = setup.cluster(
        ns,
        "wrongkey",
        (1, 1),
        &backup::pgbackrest_image(MAJOR),
        "s3-wrong-keys",
    )?;
    let stock = setup.cluster(ns, "stock", (1, 1), STOCK_IMAGE, KEYS_SECRET)?;
    let Setup { target, s3 } = setup;
    ensure_namespace(&target.client(), ns).await?;
    s3.write_secrets(target, ns, KEYS_SECRET, Keys::Right)
        .await?;
    s3.write_secrets(target, ns, "s3-wrong-keys", Keys::WrongSecret)
        .await?;
    // Both start at once; each is then waited for.
    cluster::apply(&target.client(), &stock).await?;
    let wrong = HaCluster::create(target, &wrong).await?;
    let stock = HaCluster::create(target, &stock).await?;
    serves(&wrong, target, 1..=100).await?;
    serves(&stock, target, 1..=100).await?;

    // 4. A wrong secret key: archiving fails, the backup fails with
    // pgBackRest's message, and the database goes on. (The operator reads
    // archiving into the status when it reconciles; the backup makes it.)
    after_a_switch(&wrong, target, "a failed archive-push", |(failed, _, _)| {
        failed > 0
    })
    .await?;
    let asked = Instant::now();
    backup::request(target, ns, "wrongkey-full", "wrongkey", BackupType::Full).await?;
    let b = backup::wait_finished(target, ns, "wrongkey-full", backup::BACKUP_WITHIN).await?;
    let message = backup::message(&b).to_string();
    eprintln!(
        "[{ns}] wrongkey-full {} after {:.1}s: {message}",
        backup::phase(&b),
        asked.elapsed().as_secs_f64()
    );
    assert_eq!(backup::phase(&b), "Failed", "{message}");
    assert!(is_refused_key(&message), "{message}");
    let failure = archive_failure_in_status(&wrong, target).await?;
    eprintln!("[{ns}] wrongkey lastArchiveFailure: {failure}");
    for key in [
        &s3.secret_access_key,
        &format!("not-{}", s3.secret_access_key),
    ] {
        assert!(!message.contains(key.as_str()), "a key reached the status");
        assert!(!failure.contains(key.as_str()), "a key reached the status");
    }
    serves(&wrong, target, 101..=200).await?;

    // 5. The stock image: no pgBackRest. The backup says so and names the
    // fix; archiving is reported failing; the database goes on.
    backup::request(target, ns, "stock-full", "stock", BackupType::Full).await?;
    let b = backup::wait_message(target, ns, "stock-full", STATUS_WITHIN, |m| {
        m.contains("pgBackRest")
    })
    .await?;
    let message = backup::message(&b).to_string();
    eprintln!("[{ns}] stock-full {}: {message}", backup::phase(&b));
    assert!(
        matches!(backup::phase(&b), "Pending" | "Failed"),
        "a backup without pgBackRest is {}",
        backup::phase(&b)
    );
    assert!(message.contains("pgBackRest is not at"), "{message}");
    assert!(message.contains("spec.postgres.image"), "{message}");
    // WAL waits for pgBackRest: the closed segment is kept, never archived.
    // (PostgreSQL's archiver exits on a command that is not there rather
    // than counting a failure, so `lastArchiveFailure` stays empty.)
    let (failed, archived, waiting) = after_a_switch(
        &stock,
        target,
        "a segment waiting for pgBackRest",
        |(_, _, w)| w > 0,
    )
    .await?;
    eprintln!(
        "[{ns}] stock archiver: {archived} archived, {failed} failures counted, {waiting} segment(s) kept for archiving"
    );
    assert_eq!(archived, 0);
    serves(&stock, target, 101..=200).await?;
    // Still not taken, still explained.
    let b = backup::get(target, ns, "stock-full").await?;
    assert_ne!(backup::phase(&b), "Completed");
    assert!(backup::message(&b).contains("pgBackRest"), "{b:?}");

    // Neither instance crash-looped over it.
    for name in ["wrongkey", "stock"] {
        let restarts = backup::instance_restarts(target, ns, name).await?;
        assert_eq!(restarts, 0, "{name}'s instance containers restarted");
    }
    Ok(())
}

#[test]
fn full_and_incremental_backups_through_a_failover() {
    capstan_e2e::scenario(|| async {
        let Some(mut setup) = Setup::start().await else {
            return;
        };
        let ns = format!("e2e-backup-s3-{}", std::process::id());
        if let Err(e) = through_a_failover(&mut setup, &ns).await {
            setup.fail(&ns, e).await;
        }
    });
}

#[test]
fn a_wrong_key_fails_the_backup_and_a_stock_image_says_what_is_missing() {
    capstan_e2e::scenario(|| async {
        let Some(setup) = Setup::start().await else {
            return;
        };
        let ns = format!("e2e-backup-bad-{}", std::process::id());
        if let Err(e) = bad_repository_and_image(&setup, &ns).await {
            setup.fail(&ns, e).await;
        }
    });
}

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
//!   gets a backup that says pgBackRest is missing and how to fix it; one
//!   whose Secret does not exist starts anyway and its `WalArchiving`
//!   condition names `spec.backup.repositories[0].s3.credentials`; all
//!   keep serving writes through their poolers without a restart.
//! * `restore_to_a_time_between_two_writes`: 3 instances, rows A → a full
//!   backup → rows B → an incremental backup → the target time T (the
//!   server's clock, a quiet second either side; the newest backup before
//!   it is the incremental, so the restore starts from it) → rows C → a
//!   failover → rows D archived on the
//!   new timeline → a new 2-instance cluster with `bootstrap.restore` of
//!   the source to T is Ready, holds exactly A and B through its pooler,
//!   its replica streams, it runs on a timeline of its own and archives to
//!   its own path (none of that timeline in the source's); a cluster
//!   restored to a time before the first backup is `Stalled` with reason
//!   `RestoreFailed` and pgBackRest's message, no instance Ready. Also on
//!   PostgreSQL 18 (`…_on_postgres_18`).
//!
//! The store and the freeze are harness facilities: on a real cluster
//! (`CAPSTAN_E2E_KUBECONFIG`) these skip with a message.

use std::time::{Duration, Instant};

use capstan::api::{BackupType, PostgresCluster};
use capstan_e2e::backup::{self, KEYS_SECRET, Keys, PodS3};
use capstan_e2e::cluster;
use capstan_e2e::ha::{self, HaCluster, REJOIN_WITHIN, WRITES_TABLE, ha_example};
use capstan_e2e::harness::{ensure_namespace, wait_for};
use capstan_e2e::target::{Target, fail};
use capstan_e2e::{E2eError, sql};

/// PostgreSQL major of these scenarios (`CAPSTAN_PG17_BIN`); the
/// point-in-time restore also runs on 18 (`CAPSTAN_PG18_BIN`).
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
    /// PostgreSQL major of the clusters.
    major: u32,
}

impl Setup {
    /// `None` when a tool is missing (said why; `CI=true` fails instead) or
    /// the target is a real cluster.
    async fn start(major: u32) -> Option<Setup> {
        let (target, s3) = backup::harness_with_store(major, "capstan-e2e").await?;
        Some(Setup { target, s3, major })
    }

    /// Fails the test with `error`, the pods, the operator's log and the
    /// store's.
    async fn fail(&self, ns: &str, error: E2eError) -> ! {
        eprintln!("--- S3 store ---\n{}", self.s3.logs());
        fail(&self.target, ns, error).await
    }

    /// Applies `spec` with the store's keys ([`KEYS_SECRET`]) in its
    /// namespace and waits until it is Ready.
    async fn create(&self, spec: &PostgresCluster) -> Result<HaCluster, E2eError> {
        let ns = spec.metadata.namespace.clone().unwrap_or_default();
        ensure_namespace(&self.target.client(), &ns).await?;
        self.s3
            .write_secrets(&self.target, &ns, KEYS_SECRET, Keys::Right)
            .await?;
        HaCluster::create(&self.target, spec).await
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
        c.spec.postgres.version = self.major as i32;
        c.spec.postgres.image = Some(image.to_string());
        c.spec.backup = Some(self.s3.backup_spec(keys_secret, ARCHIVE_TIMEOUT)?);
        Ok(c)
    }
}

/// Rows committed now reach the repository: the lag from the commit to
/// `pg_stat_archiver` on the primary (asked on `-rw`). Returns the segment
/// that held them. With `switch` the segment is closed at once
/// (`pg_switch_wal()`: archive_timeout does not switch a server just
/// started, see [`after_a_switch`]).
async fn archive_lag(
    ha: &HaCluster,
    target: &Target,
    what: &str,
    switch: bool,
) -> Result<String, E2eError> {
    let committed = Instant::now();
    // With a switch, the segment `pg_switch_wal()` closed: it holds every
    // commit before the call. Reading the current segment first raced with
    // archive_timeout switching it (seen on PostgreSQL 18): the "current"
    // segment was then an empty one no switch would ever close.
    let wanted = if switch {
        let admin = ha.connect(&ha.rw(target).await?, ha::As::Superuser).await?;
        sql::value(&admin, "SELECT pg_walfile_name(pg_switch_wal())").await?
    } else {
        backup::current_segment(ha, target).await?
    };
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
        &backup::pgbackrest_image(setup.major),
        KEYS_SECRET,
    )?;
    let ha = setup.create(&spec).await?;
    let target = &mut setup.target;

    // 1. Rows through the pooler, archived within archive.timeout.
    backup::write_rows(&ha, target, 1..=1000, WRITES_WITHIN).await?;
    let first = archive_lag(&ha, target, "before the backups", false).await?;
    let before = backup::last_archived_wal(&ha.get(target).await?).map(str::to_string);

    // 2. A full backup, recorded on its object and on the cluster.
    let primary = ha::current_primary(&ha.get(target).await?)
        .cloned()
        .ok_or_else(|| E2eError::Check("no current primary".into()))?;
    let full = backup::completed(target, ns, "db-full", "db", BackupType::Full).await?;
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
    let (old, new) = ha.fail_over(target).await?;
    assert_eq!(old, primary);
    backup::write_rows(&ha, target, 1001..=2000, WRITES_WITHIN).await?;
    let second = archive_lag(&ha, target, "after the failover", false).await?;
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
    let incr = backup::completed(target, ns, "db-incr", "db", BackupType::Incremental).await?;
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

/// Room on the server's clock on either side of a restore target.
const GAP: Duration = Duration::from_secs(1);
/// A restored cluster (download, recovery, promotion, its replica) Ready.
const RESTORED_WITHIN: Duration = Duration::from_secs(240);

/// A cluster made from the source's backups up to `time`, archiving to
/// its own default path: the application database and owner of a
/// restored cluster are Capstan's defaults (`spec.bootstrap.initdb` cannot
/// be set next to `restore`), which the source uses too.
fn restored(
    setup: &Setup,
    source: &PostgresCluster,
    (name, instances): (&str, i32),
    time: &str,
) -> Result<PostgresCluster, E2eError> {
    let ns = source.metadata.namespace.clone().unwrap_or_default();
    let from = source.metadata.name.clone().unwrap_or_default();
    let image = backup::pgbackrest_image(setup.major);
    let mut c = setup.cluster(&ns, name, (instances, 1), &image, KEYS_SECRET)?;
    let repository = source
        .spec
        .backup
        .as_ref()
        .ok_or_else(|| E2eError::Setup(format!("{from} has no spec.backup to restore from")))?;
    c.spec.bootstrap.initdb = None;
    c.spec.bootstrap.restore = Some(backup::restore_to_time(repository, &from, time)?);
    Ok(c)
}

async fn to_a_time_between_two_writes(setup: &mut Setup, ns: &str) -> Result<(), E2eError> {
    let image = backup::pgbackrest_image(setup.major);
    let mut spec = setup.cluster(ns, "src", (3, 1), &image, KEYS_SECRET)?;
    spec.spec.bootstrap.initdb = None;
    let src = setup.create(&spec).await?;
    let target = &setup.target;
    let app = src.connect(&src.pooler(target).await?, ha::As::App).await?;

    // A, the full backup, B, the target time T between two quiet seconds, C.
    backup::write_rows(&src, target, 1..=100, WRITES_WITHIN).await?;
    let after_a = backup::server_time(&src, target).await?;
    backup::completed(target, ns, "src-full", "src", BackupType::Full).await?;
    backup::write_rows(&src, target, 101..=200, WRITES_WITHIN).await?;
    // An incremental on the full one: the newest backup before T, so the
    // restore starts from the two of them.
    backup::completed(target, ns, "src-incr", "src", BackupType::Incremental).await?;
    tokio::time::sleep(GAP).await;
    let t = backup::server_time(&src, target).await?;
    tokio::time::sleep(GAP).await;
    backup::write_rows(&src, target, 201..=300, WRITES_WITHIN).await?;
    let split = sql::value(
        &app,
        &format!(
            "SELECT (max(at) FILTER (WHERE n <= 200) < '{t}') \
             AND (min(at) FILTER (WHERE n > 200) > '{t}') FROM {WRITES_TABLE}"
        ),
    )
    .await?;
    assert_eq!(split, "t", "rows 1-200 before {t}, 201-300 after it");
    let tl_at_t = backup::server_timeline(&src, target).await?;
    eprintln!("[{ns}] rows A committed by {after_a}, B before T = {t}, C after it");
    // C reaches the archive and the replicas before the primary is lost.
    archive_lag(&src, target, "rows C", false).await?;
    src.wait_replicated(target, 2, WRITES_WITHIN).await?;

    // A failover, D on the new timeline, archived.
    src.fail_over(&mut setup.target).await?;
    let target = &setup.target;
    backup::write_rows(&src, target, 301..=400, WRITES_WITHIN).await?;
    let d = archive_lag(&src, target, "rows D after the failover", false).await?;
    let new_tl = backup::timeline(&d).unwrap_or_default();
    assert!(new_tl > tl_at_t, "timeline {tl_at_t} -> {new_tl}");

    // The clone to T, and one to a time before the first backup.
    let early = restored(setup, &spec, ("early", 1), &after_a)?;
    cluster::apply(&target.client(), &early).await?;
    let early_applied = Instant::now();
    let pitr = restored(setup, &spec, ("pitr", 2), &t)?;
    let asked = Instant::now();
    cluster::apply(&target.client(), &pitr).await?;
    cluster::wait_ready(&target.client(), ns, "pitr", RESTORED_WITHIN).await?;
    eprintln!(
        "[{ns}] restore to {t}: pitr (2 instances) Ready {:.1}s after it was applied",
        asked.elapsed().as_secs_f64()
    );
    let pitr = HaCluster::create(target, &pitr).await?;

    // Exactly A and B, through its pooler; its replica streams.
    let rows = pitr.written(&pitr.pooler(target).await?).await?;
    let expected: std::collections::BTreeSet<i64> = (1..=200).collect();
    assert_eq!(
        rows,
        expected,
        "{} rows restored, first/last {:?}/{:?}",
        rows.len(),
        rows.first(),
        rows.last()
    );
    let c = pitr.get(target).await?;
    let primary = ha::current_primary(&c).cloned().unwrap_or_default();
    let replicas: Vec<&str> = c
        .status
        .iter()
        .flat_map(|s| &s.instances)
        .map(|i| i.name.as_str())
        .filter(|n| *n != primary)
        .collect();
    assert_eq!(replicas.len(), 1, "{}", ha::status_summary(&c));
    pitr.wait_streaming(target, &replicas, WRITES_WITHIN)
        .await?;
    assert!(!pitr.in_recovery(target, &primary).await?);

    // A new timeline, archived to its own path; none of it in the source's.
    let restored_tl = backup::server_timeline(&pitr, target).await?;
    eprintln!(
        "[{ns}] pitr: 200 rows (A and B), replica {} streaming, timeline {restored_tl} (source: {tl_at_t} at T, now {new_tl})",
        replicas[0]
    );
    assert!(restored_tl > new_tl, "restored on timeline {restored_tl}");
    backup::write_rows(&pitr, target, 1001..=1010, WRITES_WITHIN).await?;
    let own = archive_lag(&pitr, target, "the restored cluster", true).await?;
    let path = |c: &str| capstan::api::default_repository_path(ns, c);
    let mine = backup::archived_segments(&setup.s3, &path("pitr"), "pitr")?;
    assert!(
        mine.contains(&own),
        "{own} not in {}: {mine:?}",
        path("pitr")
    );
    let theirs = backup::archived_segments(&setup.s3, &path("src"), "src")?;
    assert!(
        theirs
            .iter()
            .all(|s| backup::timeline(s) != Some(restored_tl)),
        "timeline {restored_tl} in the source's archive: {theirs:?}"
    );
    eprintln!(
        "[{ns}] pitr archives to {} ({} segments); {} holds {} segments, none of timeline {restored_tl}",
        path("pitr"),
        mine.len(),
        path("src"),
        theirs.len()
    );

    // Before the first backup: Stalled with pgBackRest's words, never Ready.
    let stalled = wait_for(
        "early: Stalled with reason RestoreFailed",
        STATUS_WITHIN,
        Duration::from_millis(500),
        || async {
            let s = backup::condition(target, ns, "early", "Stalled")
                .await
                .ok()??;
            (s.status == "True" && s.reason == "RestoreFailed").then_some(s)
        },
    )
    .await?;
    eprintln!(
        "[{ns}] early: Stalled/RestoreFailed (looked at {:.1}s after it was applied): {}",
        early_applied.elapsed().as_secs_f64(),
        stalled.message
    );
    assert!(
        stalled.message.contains("ERROR: [075]")
            && stalled.message.contains("unable to find backup set"),
        "{}",
        stalled.message
    );
    let early = cluster::get(&target.client(), ns, "early").await?;
    assert!(
        early
            .status
            .iter()
            .flat_map(|s| &s.instances)
            .all(|i| !i.ready)
            && cluster::condition(&early, "Ready").as_deref() != Some("True"),
        "{}",
        ha::status_summary(&early)
    );
    Ok(())
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

/// The `WalArchiving` condition's message once its status is `status`.
async fn wal_archiving(ha: &HaCluster, target: &Target, status: &str) -> Result<String, E2eError> {
    wait_for(
        &format!("{}: condition WalArchiving={status}", ha.name),
        STATUS_WITHIN,
        Duration::from_millis(250),
        || async {
            let c = ha.get(target).await.ok()?;
            let cond = c
                .status?
                .conditions
                .into_iter()
                .find(|c| c.type_ == "WalArchiving" && c.status == status)?;
            Some(format!("{}: {}", cond.reason, cond.message))
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
        &backup::pgbackrest_image(setup.major),
        "s3-wrong-keys",
    )?;
    let stock = setup.cluster(ns, "stock", (1, 1), STOCK_IMAGE, KEYS_SECRET)?;
    // Its Secret is never written.
    let nosecret = setup.cluster(
        ns,
        "nosecret",
        (1, 1),
        &backup::pgbackrest_image(setup.major),
        "s3-absent",
    )?;
    let Setup { target, s3, .. } = setup;
    ensure_namespace(&target.client(), ns).await?;
    s3.write_secrets(target, ns, KEYS_SECRET, Keys::Right)
        .await?;
    s3.write_secrets(target, ns, "s3-wrong-keys", Keys::WrongSecret)
        .await?;
    // All start at once; each is then waited for.
    cluster::apply(&target.client(), &stock).await?;
    cluster::apply(&target.client(), &nosecret).await?;
    let wrong = HaCluster::create(target, &wrong).await?;
    let stock = HaCluster::create(target, &stock).await?;
    // A missing Secret keeps no pod from starting: the cluster is Ready,
    // serves, and says which field names the Secret.
    let nosecret = HaCluster::create(target, &nosecret).await?;
    serves(&wrong, target, 1..=100).await?;
    serves(&stock, target, 1..=100).await?;
    serves(&nosecret, target, 1..=100).await?;
    let archiving = wal_archiving(&nosecret, target, "False").await?;
    eprintln!("[{ns}] nosecret WalArchiving: {archiving}");
    assert!(
        archiving.contains("spec.backup.repositories[0].s3.credentials"),
        "{archiving}"
    );

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
    let archiving = wal_archiving(&wrong, target, "False").await?;
    eprintln!("[{ns}] wrongkey WalArchiving: {archiving}");

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

    // No instance crash-looped over it.
    for name in ["wrongkey", "stock", "nosecret"] {
        let restarts = backup::instance_restarts(target, ns, name).await?;
        assert_eq!(restarts, 0, "{name}'s instance containers restarted");
    }
    Ok(())
}

#[test]
fn full_and_incremental_backups_through_a_failover() {
    capstan_e2e::scenario(|| async {
        let Some(mut setup) = Setup::start(MAJOR).await else {
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
        let Some(setup) = Setup::start(MAJOR).await else {
            return;
        };
        let ns = format!("e2e-backup-bad-{}", std::process::id());
        if let Err(e) = bad_repository_and_image(&setup, &ns).await {
            setup.fail(&ns, e).await;
        }
    });
}

fn restore_scenario(major: u32) {
    capstan_e2e::scenario(move || async move {
        let Some(mut setup) = Setup::start(major).await else {
            return;
        };
        let ns = format!("e2e-backup-pitr{major}-{}", std::process::id());
        if let Err(e) = to_a_time_between_two_writes(&mut setup, &ns).await {
            setup.fail(&ns, e).await;
        }
    });
}

#[test]
fn restore_to_a_time_between_two_writes() {
    restore_scenario(MAJOR);
}

#[test]
fn restore_to_a_time_between_two_writes_on_postgres_18() {
    restore_scenario(18);
}

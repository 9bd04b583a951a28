//! pgBackRest 2.55 against real PostgreSQL 15 (Debian), 17 and 18 through
//! `capstan::backup`: stanza-create, async WAL archiving, full and
//! incremental backups to S3 over TLS (moto behind nginx), point-in-time
//! restore of a clone, info parsing, retention, verification by restore,
//! and pgBackRest's own message when the repository refuses us.

mod support;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use capstan::backup::config::Invocation;
use capstan::backup::{BackupType, Restore, RestoreTarget, Sentinel, Verification};
use support::backrest::{
    Pg, as_postgres, env_or, load_pgbench, median, setup, values, write_config,
};
use support::posix::PosixRepo;
use support::s3::{Listen, S3Stack, pgbackrest};
use support::{Ports, chown_tree, pg_bin, server_now};

static PORTS: Ports = Ports::new(25100, 25300);

async fn full_cycle(major: u32) {
    let (Some(pgbackrest), Some(bin)) = (pgbackrest(), pg_bin(major)) else {
        return;
    };
    let Some(s3) = S3Stack::start(
        Listen::loopback(PORTS.take(), PORTS.take()),
        &format!("pg{major}"),
    ) else {
        return;
    };
    let started = Instant::now();
    let tmp = tempfile::Builder::new().prefix("capbr").tempdir().unwrap();
    let root = tmp.path();
    let mut pg = Pg::initdb(&bin, &root.join("src"), PORTS.take());
    let mut repo = s3.repository("/src", &root.join("secrets"));
    repo.retention.full = Some(1);
    let src = setup(&pgbackrest, &root.join("br"), "src", &pg, repo);
    let inv = Invocation {
        pgbackrest: pgbackrest.clone(),
        config: src.config_path.clone(),
        stanza: "src".into(),
    };
    pg.start(&inv.archive_parameters(Duration::from_secs(60)));
    let c = pg.client("postgres").await;

    src.runner.stanza_create().await.expect("stanza-create");
    src.runner.check().await.expect("check");
    c.batch_execute("CREATE TABLE t (v text PRIMARY KEY); CREATE TABLE sentinel (v text); INSERT INTO sentinel VALUES ('before-full')")
        .await
        .unwrap();
    src.runner
        .backup(BackupType::Full, None)
        .await
        .expect("full backup");

    // Rows with their commit times; the PITR target falls between writes.
    c.batch_execute("INSERT INTO t VALUES ('a1'); INSERT INTO t VALUES ('a2')")
        .await
        .unwrap();
    src.runner
        .backup(BackupType::Incr, None)
        .await
        .expect("incr backup");
    c.batch_execute("INSERT INTO t VALUES ('a3')")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let target = server_now(&c).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.batch_execute("INSERT INTO t VALUES ('b1'); INSERT INTO t VALUES ('b2')")
        .await
        .unwrap();
    // check switches WAL and waits until the segment is in the repository.
    src.runner.check().await.expect("check after writes");

    let info = src.runner.info(None).await.expect("info");
    let kinds: Vec<_> = info.backups.iter().map(|b| b.kind).collect();
    assert_eq!(kinds, [BackupType::Full, BackupType::Incr], "{info:#?}");
    let full = info.backups[0].clone();
    assert_eq!(info.backups[1].prior.as_deref(), Some(full.label.as_str()));
    assert!(full.size > 0 && full.repo_size > 0 && full.stop >= full.start);
    assert!(full.wal_start.is_some() && full.lsn_stop.is_some());
    assert!(info.last_archived_wal().is_some());
    assert!(
        std::fs::read_dir(root.join("br/spool")).is_ok(),
        "async archive-push spools"
    );

    // PITR clone into a new directory, then its own stanza and path.
    let clone_root = root.join("clone");
    let mut clone = Pg::initdb(&bin, &clone_root, PORTS.take());
    std::fs::remove_dir_all(&clone.data).unwrap();
    let mut restore = Restore::new(&clone.data, RestoreTarget::Time(target));
    restore.archive_off = true;
    src.runner.restore(restore).await.expect("PITR restore");
    clone.start(&[]);
    clone.wait_promoted().await;
    let cc = clone.client("postgres").await;
    assert_eq!(values(&cc).await, ["a1", "a2", "a3"], "rows up to {target}");
    let clone_repo = s3.repository("/clone", &root.join("secrets"));
    let cl = setup(
        &pgbackrest,
        &root.join("br-clone"),
        "clone",
        &clone,
        clone_repo,
    );
    cl.runner
        .stanza_create()
        .await
        .expect("clone stanza-create");
    assert_eq!(cl.config.stanza.name, "clone");
    drop(cc);
    clone.stop();

    // Verification by restore: passes with the sentinel, fails without it.
    let verification = |label: &str, expected: &str, scratch: &str| Verification {
        label: label.to_string(),
        repo: None,
        scratch: root.join(scratch),
        bin_dir: bin.clone(),
        port: PORTS.take(),
        user: "postgres".into(),
        sentinel: Some(Sentinel {
            database: "postgres".into(),
            query: "SELECT v FROM sentinel".into(),
            expected: expected.into(),
        }),
        recovery_timeout: Duration::from_secs(120),
    };
    let report = capstan::backup::verify_by_restore(
        &src.runner,
        &verification(&full.label, "before-full", "verify1"),
    )
    .await
    .expect("verification");
    assert!(report.sentinel_found);
    assert!(report.relations.iter().all(|(_, n)| *n > 100), "{report:?}");
    assert!(matches!(
        report.amcheck,
        capstan::backup::verify::Amcheck::Passed { .. }
    ));
    assert!(!root.join("verify1").exists(), "scratch removed");
    let err = capstan::backup::verify_by_restore(
        &src.runner,
        &verification(&full.label, "written-later", "verify2"),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, capstan::backup::VerifyError::SentinelMissing { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("lacks the sentinel"), "{err}");
    assert!(!root.join("verify2").exists(), "scratch removed on failure");

    // Retention (one full): a new full backup expires the old chain.
    src.runner
        .backup(BackupType::Full, None)
        .await
        .expect("second full");
    src.runner.expire(None).await.expect("expire");
    let info = src.runner.info(None).await.unwrap();
    assert_eq!(info.backups.len(), 1, "{info:#?}");
    assert_ne!(info.backups[0].label, full.label);

    // A repository that refuses us: pgBackRest's own message comes back.
    let mut bad = src.config.clone();
    if let capstan::backup::Storage::S3(s) = &mut bad.repositories[0].storage {
        s.bucket = "no-such-bucket".into();
    }
    let bad_path = root.join("br/bad.conf");
    write_config(&bad, &bad_path);
    let mut bad_runner = src.runner.clone();
    bad_runner.config = bad_path;
    let err = bad_runner.backup(BackupType::Full, None).await.unwrap_err();
    let message = err.pgbackrest_message().unwrap_or_default().to_string();
    assert!(message.starts_with("ERROR: ["), "{err}");
    eprintln!("PostgreSQL {major}: missing bucket -> {message}");
    // Missing keys (Environment credentials with no environment).
    let mut nokeys = src.config.clone();
    if let capstan::backup::Storage::S3(s) = &mut nokeys.repositories[0].storage {
        s.credentials = capstan::backup::repository::S3Credentials::Environment;
    }
    let nokeys_path = root.join("br/nokeys.conf");
    write_config(&nokeys, &nokeys_path);
    bad_runner.config = nokeys_path;
    let err = bad_runner.backup(BackupType::Full, None).await.unwrap_err();
    let message = err.pgbackrest_message().unwrap_or_default();
    assert!(message.contains("repo1-s3-key"), "{err}");
    eprintln!("PostgreSQL {major}: no keys -> {message}");
    eprintln!(
        "PostgreSQL {major}: full cycle in {:?}; verification {:?}",
        started.elapsed(),
        report.total
    );
    drop(c);
    pg.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_cycle_on_postgres_15() {
    full_cycle(15).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_cycle_on_postgres_17() {
    full_cycle(17).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_cycle_on_postgres_18() {
    full_cycle(18).await;
}

/// A volume repository: backup and a restore to the latest point.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posix_repository_backup_and_restore() {
    let (Some(pgbackrest), Some(bin)) = (pgbackrest(), pg_bin(17)) else {
        return;
    };
    let tmp = tempfile::Builder::new().prefix("capbp").tempdir().unwrap();
    let root = tmp.path();
    let repo = PosixRepo::new();
    let mut pg = Pg::initdb(&bin, &root.join("src"), PORTS.take());
    let src = setup(&pgbackrest, &root.join("br"), "vol", &pg, repo.repository());
    let inv = Invocation {
        pgbackrest: pgbackrest.clone(),
        config: src.config_path.clone(),
        stanza: "vol".into(),
    };
    pg.start(&inv.archive_parameters(Duration::from_secs(60)));
    let c = pg.client("postgres").await;
    src.runner.stanza_create().await.expect("stanza-create");
    c.batch_execute("CREATE TABLE t (v text); INSERT INTO t VALUES ('x')")
        .await
        .unwrap();
    src.runner
        .backup(BackupType::Full, None)
        .await
        .expect("full");
    c.batch_execute("INSERT INTO t VALUES ('y')").await.unwrap();
    src.runner.check().await.expect("check");
    let mut copy = Pg::initdb(&bin, &root.join("copy"), PORTS.take());
    std::fs::remove_dir_all(&copy.data).unwrap();
    let mut restore = Restore::new(&copy.data, RestoreTarget::Latest);
    restore.archive_off = true;
    src.runner.restore(restore).await.expect("restore");
    copy.start(&[]);
    copy.wait_promoted().await;
    assert_eq!(values(&copy.client("postgres").await).await, ["x", "y"]);
    copy.stop();
    drop(c);
    pg.stop();
}

/// moto checking signatures: the right key backs up, a wrong secret fails
/// the backup with pgBackRest's own message, and the database keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_s3_credentials_fail_the_backup_with_pgbackrests_message() {
    let (Some(pgbackrest), Some(bin)) = (pgbackrest(), pg_bin(17)) else {
        return;
    };
    let Some((s3, (id, secret))) =
        S3Stack::start_with_auth(Listen::loopback(PORTS.take(), PORTS.take()), "auth")
    else {
        return;
    };
    let tmp = tempfile::Builder::new().prefix("capba").tempdir().unwrap();
    let root = tmp.path();
    let mut pg = Pg::initdb(&bin, &root.join("src"), PORTS.take());
    let repo = s3.repository_with_key("/db", &root.join("secrets"), (&id, &secret));
    let good = setup(&pgbackrest, &root.join("br"), "db", &pg, repo);
    let inv = Invocation {
        pgbackrest: pgbackrest.clone(),
        config: good.config_path.clone(),
        stanza: "db".into(),
    };
    pg.start(&inv.archive_parameters(Duration::from_secs(60)));
    let c = pg.client("postgres").await;
    good.runner
        .stanza_create()
        .await
        .expect("stanza-create with the right key");

    let wrong = s3.repository_with_key("/db", &root.join("wrong"), (&id, "not-the-secret"));
    let mut config = good.config.clone();
    config.repositories = vec![wrong];
    let path = root.join("br/wrong.conf");
    write_config(&config, &path);
    let mut runner = good.runner.clone();
    runner.config = path;
    let err = runner.backup(BackupType::Full, None).await.unwrap_err();
    let message = err.pgbackrest_message().unwrap_or_default();
    eprintln!("wrong secret -> {message}");
    assert!(message.starts_with("ERROR: ["), "{err}");
    assert!(
        message.contains("403") || message.contains("SignatureDoesNotMatch"),
        "{err}"
    );
    assert!(
        !message.contains("not-the-secret"),
        "secret leaked: {message}"
    );
    let one: i32 = c.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1, "the database keeps serving");
    drop(c);
    pg.stop();
}

/// The measurement behind bench/backup.sh (not a timed test): on a pgbench
/// database, a full backup by hand vs through `Runner` (alternating),
/// restore, verification, and the WAL archive lag under pgbench.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement; run with bench/backup.sh"]
async fn bench_backup() {
    let major: u32 = env_or("CAPSTAN_BENCH_PG_VERSION", 17);
    let scale: u32 = env_or("CAPSTAN_BENCH_SCALE", 70);
    let rounds: usize = env_or("CAPSTAN_BENCH_ROUNDS", 3);
    let pgbench_seconds: u64 = env_or("CAPSTAN_BENCH_PGBENCH_SECONDS", 60);
    let archive_timeout = Duration::from_secs(env_or("CAPSTAN_BENCH_ARCHIVE_TIMEOUT", 60));
    let (Some(pgbackrest), Some(bin)) = (pgbackrest(), pg_bin(major)) else {
        return;
    };
    let pgbench = if bin.join("pgbench").is_file() {
        bin.join("pgbench")
    } else {
        PathBuf::from("/usr/lib/postgresql/15/bin/pgbench")
    };
    let tmp = tempfile::Builder::new()
        .prefix("capbench")
        .tempdir_in(std::env::var("CAPSTAN_BENCH_DIR").unwrap_or_else(|_| "/var/tmp".into()))
        .unwrap();
    let root = tmp.path();
    // pgBackRest (as postgres) creates the restore directory in it.
    chown_tree(root);
    let repo = PosixRepo::new();
    let mut pg = Pg::initdb(&bin, &root.join("src"), PORTS.take());
    let src = setup(
        &pgbackrest,
        &root.join("br"),
        "bench",
        &pg,
        repo.repository(),
    );
    let inv = Invocation {
        pgbackrest: pgbackrest.clone(),
        config: src.config_path.clone(),
        stanza: "bench".into(),
    };
    let mut settings = inv.archive_parameters(archive_timeout);
    settings.push(("max_wal_size", "4GB".into()));
    pg.start(&settings);
    let c = pg.client("postgres").await;
    src.runner.stanza_create().await.expect("stanza-create");
    let t = Instant::now();
    let size = load_pgbench(&pgbench, &pg, scale).await;
    println!(
        "backup-bench: PostgreSQL {major}, pgbench scale {scale} ({size}) loaded in {:?}",
        t.elapsed()
    );
    // Settle the load's aftermath (autovacuum, hint-bit WAL with checksums,
    // the archive backlog) and warm the cache, so no round pays for it.
    c.simple_query("VACUUM ANALYZE").await.unwrap();
    c.simple_query("CHECKPOINT").await.unwrap();
    src.runner.check().await.expect("check");
    src.runner
        .backup(BackupType::Full, None)
        .await
        .expect("warm-up backup");

    let argv = src
        .runner
        .argv(&capstan::backup::Operation::Backup {
            kind: BackupType::Full,
            repo: None,
            standby: None,
        })
        .unwrap();
    let (mut by_hand, mut through) = (vec![], vec![]);
    for round in 0..rounds {
        // Alternate which goes first, so drift favours neither.
        for turn in 0..2 {
            let hand_now = (round + turn) % 2 == 0;
            let t = Instant::now();
            if hand_now {
                let out = as_postgres(Command::new(&pgbackrest))
                    .args(&argv)
                    .output()
                    .unwrap();
                assert!(out.status.success(), "pgbackrest backup: {out:?}");
                by_hand.push(t.elapsed());
            } else {
                src.runner
                    .backup(BackupType::Full, None)
                    .await
                    .expect("backup through Runner");
                through.push(t.elapsed());
            }
        }
        println!(
            "backup-bench: round {round}: by hand {:?}, through capstan::backup {:?}",
            by_hand[round], through[round]
        );
    }
    let (hand, capstan) = (median(by_hand), median(through));
    println!(
        "backup-bench: full backup median by hand {hand:?}, through Capstan {capstan:?}, overhead {:+.1} %",
        (capstan.as_secs_f64() / hand.as_secs_f64() - 1.0) * 100.0
    );

    let info = src.runner.info(None).await.unwrap();
    let label = info.latest().unwrap().label.clone();
    let restore_dir = root.join("restore");
    let mut restore = Restore::new(&restore_dir, RestoreTarget::Latest);
    restore.archive_off = true;
    let t = Instant::now();
    src.runner.restore(restore).await.expect("restore");
    println!("backup-bench: restore (files, to latest) {:?}", t.elapsed());
    let _ = std::fs::remove_dir_all(&restore_dir);

    let report = capstan::backup::verify_by_restore(
        &src.runner,
        &Verification {
            label: label.clone(),
            repo: None,
            scratch: root.join("verify"),
            bin_dir: bin.clone(),
            port: PORTS.take(),
            user: "postgres".into(),
            sentinel: Some(Sentinel {
                database: "postgres".into(),
                query: "SELECT count(*) FROM pgbench_branches".into(),
                expected: scale.to_string(),
            }),
            recovery_timeout: Duration::from_secs(600),
        },
    )
    .await
    .expect("verification");
    println!(
        "backup-bench: verification of {label}: total {:?} (restore {:?}, recovery {:?}, checks incl. pg_amcheck {:?})",
        report.total, report.restore, report.recovery, report.checks
    );

    // Archive lag under load: how old the oldest unarchived WAL is, sampled
    // every second (0 when everything finished is archived).
    let mut load = as_postgres(Command::new(&pgbench))
        .args([
            "-c",
            "4",
            "-j",
            "2",
            "-T",
            &pgbench_seconds.to_string(),
            "-h",
        ])
        .arg(&pg.socket)
        .args(["-p", &pg.port.to_string(), "-U", "postgres", "postgres"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lags = vec![];
    let mut max_segments = 0i64;
    let deadline = Instant::now() + Duration::from_secs(pgbench_seconds);
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let row = c
            .query_one(
                "SELECT coalesce(extract(epoch FROM now() - last_archived_time), 0)::float8,
                        ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 9, 16))::bit(64)::bigint
                        - coalesce(('x' || substr(last_archived_wal, 9, 16))::bit(64)::bigint, 0) - 1
                 FROM pg_stat_archiver",
                &[],
            )
            .await
            .unwrap();
        let (age, segments): (f64, i64) = (row.get(0), row.get(1));
        max_segments = max_segments.max(segments);
        lags.push(if segments > 0 { age } else { 0.0 });
    }
    let _ = load.wait();
    lags.sort_by(f64::total_cmp);
    println!(
        "backup-bench: archive lag under pgbench -c 4 ({pgbench_seconds} s): p50 {:.1} s, max {:.1} s, at most {max_segments} finished segments waiting; archive_timeout {archive_timeout:?}",
        lags[lags.len() / 2],
        lags.last().copied().unwrap_or(0.0)
    );
    drop(c);
    pg.stop();
}

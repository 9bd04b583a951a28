//! Restore as bootstrap through a real instance manager: a source instance
//! archives WAL to S3 over TLS (moto behind nginx) with pgBackRest 2.55, a
//! full backup is taken, rows are written around a recorded time, and a
//! new instance of another cluster bootstraps from the source's stanza to
//! that time. It must hold exactly the rows committed before it, be a
//! primary on a new timeline with this cluster's passwords, and archive to
//! its own stanza only. A target before the first backup is reported with
//! pgBackRest's message while nothing is ever started.

mod support;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use capstan::backup::{BackupType, Runner};
use capstan::contract::backup::BackupSettings;
use capstan::contract::instance::Role;
use capstan::contract::restore::{RestorePhase, RestoreSettings, RestoreTarget};
use support::s3::{Listen, S3Stack, pgbackrest};
use support::*;

static PORTS: Ports = Ports::new(25400, 25500);

const LONG: Duration = Duration::from_secs(180);

/// The server's clock, to the microsecond.
async fn rows(c: &tokio_postgres::Client) -> Vec<String> {
    c.query("SELECT v FROM t ORDER BY v", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// A running instance of cluster `cluster` archiving to `/<cluster>` in
/// the bucket, with pgBackRest from the test's environment.
fn instance(
    cluster: &str,
    major: u32,
    bin: &std::path::Path,
    pki: &Arc<Pki>,
    s3: &S3Stack,
    pgbackrest: &std::path::Path,
    restore: Option<(&str, RestoreTarget)>,
) -> Instance {
    let name = format!("{cluster}-1");
    let mut s = settings(major as i32, PORTS.take(), &[name.as_str()]);
    s.cluster = cluster.into();
    let mut i = Instance::new(&name, &PORTS, bin, pki.clone(), &s);
    s.backup = Some(BackupSettings {
        stanza: cluster.into(),
        repositories: vec![
            s3.repository(&format!("/{cluster}"), &i.root.join("backup").join("repo1")),
        ],
        archive_timeout_seconds: 60,
        archive_async: true,
        standby_backups: None,
    });
    s.restore = restore.map(|(source, target)| RestoreSettings {
        stanza: source.into(),
        repository: s3.repository(&format!("/{source}"), &i.root.join("restore")),
        target,
    });
    chown_tree(&i.root);
    i.write_settings(&s);
    i.use_pgbackrest(pgbackrest);
    i.set_authority(&name);
    i
}

/// The source: table `t`, a time before any backup, a full backup, `a1`
/// and `a2`, the target time, then `b1`, all archived.
struct Source {
    instance: Instance,
    before_backup: jiff::Timestamp,
    target: jiff::Timestamp,
}

async fn source(
    major: u32,
    bin: &std::path::Path,
    pki: &Arc<Pki>,
    s3: &S3Stack,
    pgbackrest: &std::path::Path,
) -> Source {
    let mut a = instance("src", major, bin, pki, s3, pgbackrest, None);
    a.start();
    a.wait_status("source stanza ready", LONG, |r| {
        r.ready && r.archive.as_ref().is_some_and(|x| x.stanza_ready)
    })
    .await;
    let mut runner = Runner::new(pgbackrest, a.root.join("pgbackrest/pgbackrest.conf"), "src")
        .with_timeout(Duration::from_secs(300));
    runner.run_as = Some(postgres_ids());
    let c = a.sql("app").await.unwrap();
    c.batch_execute("CREATE TABLE t (v text PRIMARY KEY)")
        .await
        .unwrap();
    let before_backup = server_now(&c).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    runner
        .backup(BackupType::Full, None)
        .await
        .expect("full backup");
    // pgBackRest keeps a backup's stop time in whole seconds (rounded up):
    // a target within the same second would be "before" the backup.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    c.batch_execute("INSERT INTO t VALUES ('a1')")
        .await
        .unwrap();
    c.batch_execute("INSERT INTO t VALUES ('a2')")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let target = server_now(&c).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.batch_execute("INSERT INTO t VALUES ('b1')")
        .await
        .unwrap();
    // check switches WAL and waits until the segment is in the repository.
    runner.check().await.expect("WAL archived");
    Source {
        instance: a,
        before_backup,
        target,
    }
}

async fn restore_to_a_time_between_two_writes(major: u32) {
    let (Some(pgbackrest), Some(bin)) = (pgbackrest(), pg_bin(major)) else {
        return;
    };
    let Some(s3) = S3Stack::start(
        Listen::loopback(PORTS.take(), PORTS.take()),
        &format!("restore{major}"),
    ) else {
        return;
    };
    let pki = Arc::new(Pki::new());
    let mut src = source(major, &bin, &pki, &s3, &pgbackrest).await;

    let target = RestoreTarget::Time(src.target.to_string());
    let mut d = instance(
        "dst",
        major,
        &bin,
        &pki,
        &s3,
        &pgbackrest,
        Some(("src", target)),
    );
    // This cluster's own passwords, unlike the source's.
    d.restore_secret("superuser/password", "dst-super");
    d.restore_secret("app/password", "dst-app");
    d.start();
    let report = d
        .wait_status("restored and promoted", LONG, |r| {
            r.ready
                && r.role == Role::Primary
                && r.restore
                    .as_ref()
                    .is_some_and(|x| x.phase == RestorePhase::Completed)
        })
        .await;
    let restore = report.restore.unwrap();
    assert_eq!((restore.attempts, restore.last_error), (1, None));
    assert!(
        report.timeline.unwrap_or(0) >= 2,
        "a new timeline: {:?}",
        report.timeline
    );
    assert!(d.pgdata().join("PG_VERSION").is_file());
    assert!(!d.root.join("data/pgdata.partial").exists());

    let c = sql_connect(&pki, d.pg_port, "postgres", "dst-super", "app")
        .await
        .expect("the new cluster's superuser password");
    assert_eq!(rows(&c).await, ["a1", "a2"], "rows up to {}", src.target);
    let app = sql_connect(&pki, d.pg_port, "app", "dst-app", "app")
        .await
        .expect("the new cluster's app password");
    app.batch_execute("SELECT 1").await.unwrap();
    assert!(
        sql_connect(&pki, d.pg_port, "app", APP_PASSWORD, "app")
            .await
            .is_err(),
        "the source's app password was replaced"
    );
    let pooler: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_proc WHERE proname = 'pooler_user_lookup'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(pooler, 1, "the pooler's lookup function");

    // Its own stanza, and WAL of the new timeline there only.
    d.wait_status("own stanza", LONG, |r| {
        r.archive.as_ref().is_some_and(|x| x.stanza_ready)
    })
    .await;
    c.batch_execute("INSERT INTO t VALUES ('c1')")
        .await
        .unwrap();
    let segment: String = c
        .query_one("SELECT pg_walfile_name(pg_switch_wal())", &[])
        .await
        .unwrap()
        .get(0);
    assert!(!segment.starts_with("00000001"), "{segment}");
    d.wait_status(&format!("{segment} archived"), LONG, |r| {
        r.archive
            .as_ref()
            .and_then(|x| x.last_archived_wal.as_deref())
            .is_some_and(|w| w >= segment.as_str())
    })
    .await;
    let timeline = &segment[..8];
    let own = s3.keys("dst/");
    assert!(
        own.iter().any(|k| k.contains(&format!("/{timeline}"))),
        "no WAL of timeline {timeline} in the own archive: {own:#?}"
    );
    let sources = s3.keys("src/");
    assert!(
        sources.iter().any(|k| k.contains("/00000001")),
        "{sources:#?}"
    );
    assert!(
        !sources.iter().any(|k| k.contains(&format!("/{timeline}"))),
        "WAL of the new timeline reached the source's archive: {sources:#?}"
    );
    drop((c, app));
    assert!(d.terminate(Duration::from_secs(40)).success());
    assert!(src.instance.terminate(Duration::from_secs(40)).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_to_a_time_on_postgres_16() {
    restore_to_a_time_between_two_writes(16).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_to_a_time_on_postgres_17() {
    restore_to_a_time_between_two_writes(17).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_to_a_time_on_postgres_18() {
    restore_to_a_time_between_two_writes(18).await;
}

/// A target before the first backup: pgBackRest refuses, the report says
/// so in its words, the instance retries later without a crash loop, and
/// PostgreSQL never ran on that data directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_before_the_first_backup_is_reported_and_nothing_starts() {
    let (Some(pgbackrest), Some(bin)) = (pgbackrest(), pg_bin(17)) else {
        return;
    };
    let Some(s3) = S3Stack::start(Listen::loopback(PORTS.take(), PORTS.take()), "restorefault")
    else {
        return;
    };
    let pki = Arc::new(Pki::new());
    let mut src = source(17, &bin, &pki, &s3, &pgbackrest).await;
    let target = RestoreTarget::Time(src.before_backup.to_string());
    let mut bad = instance(
        "bad",
        17,
        &bin,
        &pki,
        &s3,
        &pgbackrest,
        Some(("src", target)),
    );
    bad.start();
    let failed = |attempts: u32| {
        move |r: &capstan::contract::instance::InstanceReport| {
            r.restore.as_ref().is_some_and(|x| {
                x.attempts >= attempts
                    && x.phase == RestorePhase::Waiting
                    && x.last_error
                        .as_deref()
                        .is_some_and(|e| e.contains("ERROR: [075]"))
            })
        }
    };
    let report = bad
        .wait_status("the restore failure reported", LONG, failed(1))
        .await;
    let restore = report.restore.clone().unwrap();
    let message = restore.last_error.unwrap();
    assert!(
        message.contains("unable to find backup set with stop time less than"),
        "{message}"
    );
    assert_eq!(restore.retry_in_seconds, Some(10));
    assert!(
        report
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("ERROR: [075]")),
        "{:?}",
        report.last_error
    );
    assert!(!report.running && report.role == Role::Unknown);
    // Retried after the backoff, still without a crash loop or a start.
    let report = bad
        .wait_status("a second attempt", Duration::from_secs(60), failed(2))
        .await;
    assert_eq!(report.postgres_restarts, 0);
    let pgdata: PathBuf = bad.pgdata();
    assert!(!pgdata.exists(), "{} was created", pgdata.display());
    assert!(bad.postgres_processes().is_empty());
    assert!(
        !bad.log().contains("postgres started"),
        "postgres was started:\n{}",
        bad.log_tail(40)
    );
    assert!(bad.terminate(Duration::from_secs(40)).success());
    assert!(src.instance.terminate(Duration::from_secs(40)).success());
}

/// A key missing from the source's Secret (its volume is optional, so the
/// pod starts without the file): the report names the file and the field
/// to fix, pgBackRest is not even run, and nothing starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_credential_is_reported_and_nothing_starts() {
    use capstan::backup::repository::{Repository, S3, S3Credentials, Storage, Tls, UriStyle};
    let (Some(pgbackrest), Some(bin)) = (pgbackrest(), pg_bin(17)) else {
        return;
    };
    let pki = Arc::new(Pki::new());
    let mut s = settings(17, PORTS.take(), &["new-1"]);
    s.cluster = "new".into();
    let mut i = Instance::new("new-1", &PORTS, &bin, pki, &s);
    let keys = i.root.join("restore");
    std::fs::create_dir_all(&keys).unwrap();
    std::fs::write(keys.join("s3-key"), "AKID").unwrap();
    s.restore = Some(RestoreSettings {
        stanza: "src".into(),
        repository: Repository {
            storage: Storage::S3(S3 {
                endpoint: "localhost".into(),
                port: Some(PORTS.take()),
                region: "us-east-1".into(),
                bucket: "none".into(),
                uri_style: UriStyle::Path,
                tls: Tls::default(),
                credentials: S3Credentials::Files {
                    access_key_id: keys.join("s3-key"),
                    secret_access_key: keys.join("s3-key-secret"),
                },
            }),
            path: "/src".into(),
            retention: Default::default(),
        },
        target: RestoreTarget::Latest,
    });
    chown_tree(&i.root);
    i.write_settings(&s);
    i.use_pgbackrest(&pgbackrest);
    i.set_authority("new-1");
    i.start();
    let report = i
        .wait_status("the missing key reported", LONG, |r| {
            r.restore
                .as_ref()
                .and_then(|x| x.last_error.as_deref())
                .is_some_and(|e| e.contains("s3-key-secret"))
        })
        .await;
    let message = report.restore.unwrap().last_error.unwrap();
    assert!(
        message.contains("spec.bootstrap.restore.source.repository.s3.credentials"),
        "{message}"
    );
    assert!(
        !message.contains("AKID"),
        "a key reached the report: {message}"
    );
    assert!(
        !i.log().contains("running pgbackrest"),
        "{}",
        i.log_tail(30)
    );
    assert!(!i.pgdata().exists() && i.postgres_processes().is_empty());
    assert!(i.terminate(Duration::from_secs(40)).success());
}

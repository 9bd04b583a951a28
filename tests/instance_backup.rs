//! WAL archiving and backups through a real instance manager: PostgreSQL
//! 17, pgBackRest 2.55 and an S3 repository over TLS (moto behind nginx,
//! checking signatures). The manager writes pgbackrest.conf from the
//! settings and the mounted credential files, creates the stanza, archives
//! WAL, runs `POST /backup` one at a time, reports what the repository
//! holds (retention expiring old backups), and with a wrong key reports
//! pgBackRest's own message while PostgreSQL keeps serving.

mod support;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use capstan::contract::backup::{BackupJob, BackupSettings, JobPhase, StandbyBackups};
use capstan::contract::instance::Role;
use support::s3::{Listen, S3Stack, pgbackrest};
use support::*;

static PORTS: Ports = Ports::new(25300, 25400);

const LONG: Duration = Duration::from_secs(120);

fn pg17_bin() -> Option<PathBuf> {
    let dir = PathBuf::from(
        std::env::var_os("CAPSTAN_PG17_BIN").unwrap_or_else(|| "/opt/capstan-pg/17/bin".into()),
    );
    if dir.join("postgres").is_file() {
        return Some(dir);
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("PostgreSQL 17 is required in CI; not in {}", dir.display());
    }
    eprintln!("SKIP: PostgreSQL 17 not found in {}", dir.display());
    None
}

/// The manager's pgBackRest and its working directory under `root`.
fn backrest_env(root: &std::path::Path, pgbackrest: &std::path::Path) -> Vec<(String, String)> {
    vec![
        (
            "CAPSTAN_PGBACKREST".into(),
            pgbackrest.display().to_string(),
        ),
        (
            "CAPSTAN_BACKREST_DIR".into(),
            root.join("pgbackrest").display().to_string(),
        ),
    ]
}

fn request(name: &str) -> String {
    format!(r#"{{"backup":"{name}","type":"full","repository":1}}"#)
}

/// `POST /backup`, retried while the instance answers 503 (stanza-create
/// still running after a configuration change).
async fn post_backup(a: &Instance, name: &str) -> (u16, String) {
    let deadline = Instant::now() + LONG;
    loop {
        let (code, body) = a.operator("POST", "/backup", Some(&request(name))).await;
        if code != 503 || Instant::now() > deadline {
            return (code, body);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

async fn finished_job(a: &Instance, name: &str) -> BackupJob {
    let report = a
        .wait_status(
            &format!("backup {name} finished"),
            Duration::from_secs(300),
            |r| {
                r.backup
                    .as_ref()
                    .is_some_and(|j| j.backup == name && j.phase != JobPhase::Running)
            },
        )
        .await;
    report.backup.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_primary_archives_wal_and_runs_one_backup_at_a_time_to_s3() {
    let (Some(pgbackrest), Some(bin)) = (pgbackrest(), pg17_bin()) else {
        return;
    };
    let Some((s3, (id, secret))) =
        S3Stack::start_with_auth(Listen::loopback(PORTS.take(), PORTS.take()), "capstan")
    else {
        return;
    };
    let pki = Arc::new(Pki::new());
    let mut s = settings(17, PORTS.take(), &["db-1"]);
    let mut a = Instance::new("db-1", &PORTS, &bin, pki, &s);
    let secrets = a.root.join("backup").join("repo1");
    let repo = s3.repository_with_key("/db", &secrets, (&id, &secret));
    chown_tree(&a.root.join("backup"));
    s.backup = Some(BackupSettings {
        stanza: "db".into(),
        repositories: vec![repo],
        archive_timeout_seconds: 60,
        archive_async: true,
        standby_backups: None,
    });
    a.write_settings(&s);
    a.env = backrest_env(&a.root, &pgbackrest);
    a.set_authority("db-1");
    a.start();
    a.wait_ready(LONG).await;

    // The stanza, then WAL reaching the repository.
    let report = a
        .wait_status("stanza ready", LONG, |r| {
            r.archive.as_ref().is_some_and(|x| x.stanza_ready)
        })
        .await;
    assert_eq!(report.role, Role::Primary);
    assert!(!report.pending_restart, "archiving was on from the start");
    let conf = a.root.join("pgbackrest/pgbackrest.conf");
    {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let meta = std::fs::metadata(&conf).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(meta.uid(), postgres_ids().0, "owned by postgres");
    }
    let c = a.sql("app").await.unwrap();
    c.batch_execute("CREATE TABLE t (v int); INSERT INTO t VALUES (1);")
        .await
        .unwrap();
    let segment: String = c
        .query_one("SELECT pg_walfile_name(pg_switch_wal())", &[])
        .await
        .unwrap()
        .get(0);
    let report = a
        .wait_status(&format!("{segment} archived"), LONG, |r| {
            r.archive
                .as_ref()
                .and_then(|x| x.last_archived_wal.as_deref())
                .is_some_and(|w| w >= segment.as_str())
        })
        .await;
    let archive = report.archive.unwrap();
    assert!(archive.archived_count >= 1);
    assert!(archive.last_archived_at.is_some());
    assert!(!archive.failing(), "{archive:?}");

    // A full backup; a different one meanwhile is refused, the same one answered.
    let started = Instant::now();
    let (code, body) = post_backup(&a, "b1").await;
    assert_eq!(code, 200, "{body}");
    let job: BackupJob = serde_json::from_str(&body).unwrap();
    assert_eq!(job.phase, JobPhase::Running);
    let (code, body) = a.operator("POST", "/backup", Some(&request("b2"))).await;
    assert_eq!(code, 409, "{body}");
    assert!(body.contains("b1 is running"), "{body}");
    let (code, body) = a.operator("POST", "/backup", Some(&request("b1"))).await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = a.operator("POST", "/backup", Some("{\"backup\":1}")).await;
    assert_eq!(code, 400, "{body}");
    let job = finished_job(&a, "b1").await;
    eprintln!("full backup through the manager: {:?}", started.elapsed());
    assert_eq!(job.phase, JobPhase::Completed, "{job:?}");
    let result = job.result.expect("a completed job carries its result");
    assert!(result.label.ends_with('F'), "{result:?}");
    assert!(
        result.lsn_start.is_some() && result.lsn_stop.is_some(),
        "{result:?}"
    );
    assert!(
        result.wal_start.is_some() && result.size.is_some(),
        "{result:?}"
    );
    // What the repository holds, read from S3 after the backup.
    a.wait_status("the backup listed in the report", LONG, |r| {
        r.archive.as_ref().is_some_and(|x| {
            x.repositories
                .iter()
                .any(|h| h.repository == 1 && h.labels == [result.label.clone()])
        })
    })
    .await;
    let (_, metrics) = a.http("GET", "/metrics", None, None).await;
    for line in [
        "capstan_backup_repository_backups{repository=\"repo1\"} 1",
        "capstan_backup_stanza_ready 1",
        "capstan_backup_running 0",
        "capstan_backup_last_result{result=\"completed\"} 1",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    }
    assert!(metrics.contains("capstan_wal_last_archived_age_seconds "));

    // A wrong key (the kubelet refreshes the mounted Secret): the stanza
    // and the next backup fail with pgBackRest's message; SQL goes on.
    std::fs::write(secrets.join("secret-access-key"), "not-the-secret").unwrap();
    chown_tree(&secrets);
    let report = a
        .wait_status("stanza error with the wrong key", LONG, |r| {
            r.archive
                .as_ref()
                .and_then(|x| x.stanza_error.as_deref())
                .is_some_and(|e| e.starts_with("ERROR: ["))
        })
        .await;
    let error = report.archive.unwrap().stanza_error.unwrap();
    assert!(!error.contains("not-the-secret"), "secret leaked: {error}");
    let (code, body) = post_backup(&a, "b3").await;
    assert_eq!(code, 200, "{body}");
    let job = finished_job(&a, "b3").await;
    assert_eq!(job.phase, JobPhase::Failed, "{job:?}");
    let message = job.message.unwrap_or_default();
    assert!(message.starts_with("ERROR: ["), "{message}");
    assert!(
        message.contains("403") || message.contains("SignatureDoesNotMatch"),
        "{message}"
    );
    c.batch_execute("INSERT INTO t VALUES (2)").await.unwrap();
    c.query_one("SELECT pg_switch_wal()", &[]).await.unwrap();
    // archive-push is refused too: reported as failing, WAL kept.
    a.wait_status("archiving failing with the wrong key", LONG, |r| {
        r.archive
            .as_ref()
            .is_some_and(|x| x.failing() && x.failed_count > 0)
    })
    .await;
    let report = a.status().await.unwrap();
    assert!(report.ready && report.role == Role::Primary);
    assert!(
        !a.log().contains("not-the-secret") && !a.log().contains(&secret),
        "a key reached the log"
    );
    drop(c);
    assert!(a.terminate(Duration::from_secs(40)).success());
}

/// An image without pgBackRest: PostgreSQL still runs (its archive_command
/// fails and WAL is kept), the report names the fix, and backups are
/// refused with the same reason; no crash loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_pgbackrest_is_reported_and_postgres_keeps_serving() {
    let Some(bin) = pg17_bin() else {
        return;
    };
    let pki = Arc::new(Pki::new());
    let mut s = settings(17, PORTS.take(), &["db-1"]);
    let repo = support::posix::PosixRepo::new();
    s.backup = Some(BackupSettings {
        stanza: "db".into(),
        repositories: vec![repo.repository()],
        archive_timeout_seconds: 60,
        archive_async: true,
        standby_backups: None,
    });
    let mut a = Instance::new("db-1", &PORTS, &bin, pki, &s);
    a.env = backrest_env(&a.root, &a.root.join("no/pgbackrest"));
    a.set_authority("db-1");
    a.start();
    let report = a
        .wait_status("ready with the missing tool reported", LONG, |r| {
            r.ready
                && r.last_error
                    .as_deref()
                    .is_some_and(|e| e.contains("pgBackRest 2.55 or newer"))
        })
        .await;
    assert_eq!(report.postgres_restarts, 0);
    assert!(!report.archive.unwrap().stanza_ready);
    let (code, body) = a.operator("POST", "/backup", Some(&request("b1"))).await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("pgBackRest is not at"), "{body}");
    let c = a.sql("app").await.unwrap();
    c.batch_execute("CREATE TABLE t (v int); INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    drop(c);
    assert!(a.terminate(Duration::from_secs(40)).success());
}

/// A replica gets pgbackrest.conf (its restore_command fetches WAL from the
/// repository) but creates no stanza and refuses backups; the primary backs
/// up to a volume repository.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_primary_backs_up_and_replicas_refuse() {
    let (Some(pgbackrest), Some(bin)) = (pgbackrest(), pg17_bin()) else {
        return;
    };
    let pki = Arc::new(Pki::new());
    let proxy_port = PORTS.take();
    let mut s = settings(17, proxy_port, &["db-1", "db-2"]);
    let repo = support::posix::PosixRepo::new();
    s.backup = Some(BackupSettings {
        stanza: "db".into(),
        repositories: vec![repo.repository()],
        archive_timeout_seconds: 60,
        archive_async: false,
        standby_backups: None,
    });
    let mut a = Instance::new("db-1", &PORTS, &bin, pki.clone(), &s);
    let mut b = Instance::new("db-2", &PORTS, &bin, pki.clone(), &s);
    for i in [&mut a, &mut b] {
        i.env = backrest_env(&i.root, &pgbackrest);
        i.set_authority("db-1");
    }
    let _proxy = Proxy::start(proxy_port, a.pg_port).await;
    a.start();
    a.wait_status("primary with its stanza", LONG, |r| {
        r.ready && r.archive.as_ref().is_some_and(|x| x.stanza_ready)
    })
    .await;
    b.start();
    let report = b
        .wait_status("replica streaming", LONG, |r| {
            r.ready && r.role == Role::Replica
        })
        .await;
    assert!(report.archive.is_none(), "{:?}", report.archive);
    let conf = std::fs::read_to_string(b.root.join("pgbackrest/pgbackrest.conf")).unwrap();
    assert!(conf.contains("archive-async=n"), "{conf}");
    let managed = std::fs::read_to_string(b.pgdata().join("capstan-managed.conf")).unwrap();
    assert!(managed.contains("archive-get %f"), "{managed}");
    let (code, body) = b.operator("POST", "/backup", Some(&request("b1"))).await;
    assert_eq!(code, 409, "{body}");
    assert!(body.contains("backups run on the primary"), "{body}");

    let (code, body) = post_backup(&a, "b1").await;
    assert_eq!(code, 200, "{body}");
    let job = finished_job(&a, "b1").await;
    assert_eq!(job.phase, JobPhase::Completed, "{job:?}");
    assert!(
        !b.log().contains("stanza-create"),
        "a replica created the stanza"
    );
    assert!(b.terminate(Duration::from_secs(40)).success());
    assert!(a.terminate(Duration::from_secs(40)).success());
}

/// `target: preferReplica`: both instances run pgBackRest's TLS server
/// (the certificate the operator issues: `db-rw`, server and client); the
/// primary writes the sentinel on request (a replica refuses), the replica
/// takes the backup with `backup-standby` (pgBackRest waits for its replay
/// and reads the primary's part through the primary's server), and each
/// refuses the other's kind of request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_takes_the_backup_through_the_primarys_tls_server() {
    let (Some(pgbackrest), Some(bin)) = (pgbackrest(), pg17_bin()) else {
        return;
    };
    let pki = Arc::new(Pki::new());
    let proxy_port = PORTS.take();
    let s = settings(17, proxy_port, &["db-1", "db-2"]);
    let repo = support::posix::PosixRepo::new();
    let (server_a, server_b) = (PORTS.take(), PORTS.take());
    let mut a = Instance::new("db-1", &PORTS, &bin, pki.clone(), &s);
    let mut b = Instance::new("db-2", &PORTS, &bin, pki.clone(), &s);
    let primary = (a.pgdata(), a.pg_port, a.root.join("run"));
    let with_server = |port: u16| {
        let mut s = s.clone();
        s.backup = Some(BackupSettings {
            stanza: "db".into(),
            repositories: vec![repo.repository()],
            archive_timeout_seconds: 60,
            archive_async: true,
            // Both reach the primary (db-1) at `localhost`, as pods do at `-rw`.
            standby_backups: Some(StandbyBackups {
                primary_host: "localhost".into(),
                primary_port: server_a,
                port,
                primary_pg_path: primary.0.clone(),
                primary_pg_port: primary.1,
                primary_socket_path: primary.2.clone(),
                client_name: "db-rw".into(),
            }),
        });
        s
    };
    a.write_settings(&with_server(server_a));
    b.write_settings(&with_server(server_b));
    for i in [&mut a, &mut b] {
        i.env = backrest_env(&i.root, &pgbackrest);
        i.set_authority("db-1");
    }
    let _proxy = Proxy::start(proxy_port, a.pg_port).await;
    a.start();
    a.wait_status("primary with its stanza", LONG, |r| {
        r.ready && r.archive.as_ref().is_some_and(|x| x.stanza_ready)
    })
    .await;
    b.start();
    b.wait_status("replica streaming", LONG, |r| {
        r.ready && r.role == Role::Replica && r.wal_receiver.as_deref() == Some("streaming")
    })
    .await;
    let conf = std::fs::read_to_string(a.root.join("pgbackrest/pgbackrest.conf")).unwrap();
    assert!(conf.contains("tls-server-auth=db-rw=db"), "{conf}");
    assert!(
        conf.contains(&format!("tls-server-port={server_a}")),
        "{conf}"
    );
    for (i, port) in [(&a, server_a), (&b, server_b)] {
        eventually(
            &format!("{}'s pgBackRest server listening", i.name),
            LONG,
            || async move {
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .ok()
            },
        )
        .await;
    }

    // The sentinel is written on the primary only.
    let sentinel = r#"{"backup":"b1"}"#;
    let (code, body) = b.operator("POST", "/sentinel", Some(sentinel)).await;
    assert_eq!(code, 409, "{body}");
    let (code, body) = a.operator("POST", "/sentinel", Some(sentinel)).await;
    assert_eq!(code, 200, "{body}");
    let rows = a
        .sql("postgres")
        .await
        .unwrap()
        .query(
            "SELECT backup FROM capstan.backup_sentinel WHERE backup = 'b1'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);

    // A standby backup: refused by the primary, taken by the replica.
    let on_standby = r#"{"backup":"b1","type":"full","repository":1,"standby":true}"#;
    let (code, body) = a.operator("POST", "/backup", Some(on_standby)).await;
    assert_eq!(code, 409, "{body}");
    assert!(body.contains("runs on a replica"), "{body}");
    let (code, body) = b.operator("POST", "/backup", Some(on_standby)).await;
    assert_eq!(code, 200, "{body}");
    let job = finished_job(&b, "b1").await;
    assert_eq!(
        job.phase,
        JobPhase::Completed,
        "{job:?}\n{}",
        std::fs::read_to_string(b.root.join("pgbackrest/log/db-backup.log")).unwrap_or_default()
    );
    let label = job.result.as_ref().unwrap().label.clone();
    assert!(label.ends_with('F'), "{label}");
    // pgBackRest's own log on the replica: the files came from the standby.
    let log = std::fs::read_to_string(b.root.join("pgbackrest/log/db-backup.log")).unwrap();
    assert!(log.contains("wait for replay on the standby"), "{log}");
    assert!(
        log.contains(&format!("new backup label = {label}")),
        "{log}"
    );
    // The repository holds it, read through the primary's configuration.
    let mut info =
        capstan::backup::Runner::new(&pgbackrest, a.root.join("pgbackrest/pgbackrest.conf"), "db");
    info.run_as = Some(postgres_ids());
    let stanza = info.info(None).await.unwrap();
    assert!(
        stanza.backups.iter().any(|x| x.label == label),
        "{stanza:?}"
    );
    // Told so (the operator does after a standby's backup), the primary
    // re-reads the repositories and reports the new backup.
    let (code, body) = a.operator("POST", "/inventory", Some("{}")).await;
    assert_eq!(code, 200, "{body}");
    a.wait_status("the primary lists the standby's backup", LONG, |r| {
        r.archive
            .as_ref()
            .is_some_and(|x| x.repositories.iter().any(|i| i.labels.contains(&label)))
    })
    .await;
    assert!(b.terminate(Duration::from_secs(40)).success());
    assert!(a.terminate(Duration::from_secs(40)).success());
}

/// Retention is pgBackRest's: with `repo-retention-full=1` the second full
/// backup expires the first, and the primary's report (read with
/// `pgbackrest info` after the backup) lists only the second, which is
/// what the operator deletes expired `PostgresBackup` objects from.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_expires_the_first_full_backup_and_the_report_follows() {
    use capstan::contract::backup::RepositoryInventory;
    let (Some(pgbackrest), Some(bin)) = (pgbackrest(), pg17_bin()) else {
        return;
    };
    let pki = Arc::new(Pki::new());
    let mut s = settings(17, PORTS.take(), &["db-1"]);
    let repo = support::posix::PosixRepo::new();
    let mut repository = repo.repository();
    repository.retention.full = Some(1);
    s.backup = Some(BackupSettings {
        stanza: "db".into(),
        repositories: vec![repository],
        archive_timeout_seconds: 60,
        archive_async: false,
        standby_backups: None,
    });
    let mut a = Instance::new("db-1", &PORTS, &bin, pki, &s);
    a.env = backrest_env(&a.root, &pgbackrest);
    a.set_authority("db-1");
    a.start();
    a.wait_status("primary with its stanza", LONG, |r| {
        r.ready && r.archive.as_ref().is_some_and(|x| x.stanza_ready)
    })
    .await;
    let conf = std::fs::read_to_string(a.root.join("pgbackrest/pgbackrest.conf")).unwrap();
    assert!(conf.contains("\nrepo1-retention-full=1\n"), "{conf}");
    let held = |r: &capstan::contract::instance::InstanceReport| -> Option<RepositoryInventory> {
        r.archive.as_ref()?.repositories.first().cloned()
    };

    let mut labels = vec![];
    for name in ["b1", "b2"] {
        let (code, body) = post_backup(&a, name).await;
        assert_eq!(code, 200, "{body}");
        let job = finished_job(&a, name).await;
        assert_eq!(job.phase, JobPhase::Completed, "{job:?}");
        let result = job.result.unwrap();
        let stopped = result.stopped_at.clone().unwrap();
        // A listing read after the backup ended, naming it.
        let label = result.label.clone();
        let report = a
            .wait_status(&format!("{label} listed"), LONG, |r| {
                held(r).is_some_and(|h| h.read_at >= stopped && h.labels.contains(&label))
            })
            .await;
        labels.push((label, held(&report).unwrap()));
    }
    let (first, _) = &labels[0];
    let (second, inventory) = &labels[1];
    assert_ne!(first, second);
    assert_eq!(inventory.repository, 1);
    assert_eq!(
        inventory.labels,
        std::slice::from_ref(second),
        "{first} was expired"
    );
    assert_eq!(
        inventory.first_recoverability_point,
        inventory.last_backup_at
    );
    // pgBackRest removed it from the repository, not only from its list.
    let backup_dir = repo.dir.path().join("backup/db");
    assert!(backup_dir.join(second).is_dir());
    assert!(
        !backup_dir.join(first).exists(),
        "{first} is still in the repository"
    );

    let (_, metrics) = a.http("GET", "/metrics", None, None).await;
    assert!(
        metrics
            .lines()
            .any(|l| l == "capstan_backup_repository_backups{repository=\"repo1\"} 1"),
        "{metrics}"
    );
    let age: f64 = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix("capstan_backup_last_successful_age_seconds{repository=\"repo1\"} ")
        })
        .expect("the age of the newest backup")
        .parse()
        .unwrap();
    assert!((0.0..LONG.as_secs_f64()).contains(&age), "{age}");
    assert!(a.terminate(Duration::from_secs(40)).success());
}

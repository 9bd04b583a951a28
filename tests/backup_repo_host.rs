//! A volume repository behind a repository host, with real processes:
//! `capstan repo-host` runs pgBackRest's TLS server in front of a
//! directory (the volume), and a PostgreSQL configured as Capstan's
//! instances are (`repo1-host-type=tls`, the cluster's pgBackRest
//! certificate) creates the stanza, archives, takes full and incremental
//! backups, expires by retention and restores through it. A certificate of
//! another name is refused, and the volume read directly (as a restored
//! cluster mounts its source's claim, read-only) restores too.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use capstan::backup::config::{ClientTls, Invocation};
use capstan::backup::repository::{RepoHost, Repository, Retention, Storage};
use capstan::backup::{BackupType, Restore, RestoreTarget};
use support::backrest::{
    Pg, as_postgres, env_or, load_pgbench, median, setup, setup_with_tls, values, write_config,
};
use support::s3::pgbackrest;
use support::{Pki, Ports, chown_tree, pg_bin, write_file};

static PORTS: Ports = Ports::new(25600, 25700);

/// `capstan repo-host` as the postgres user, serving stanza `db` to the
/// `db-rw` certificate; killed on drop.
struct RepoHostProcess {
    child: Child,
    port: u16,
}

impl RepoHostProcess {
    fn start(pgbackrest: &Path, root: &Path, pki: &Pki) -> Self {
        let tls = root.join("tls");
        write_file(&tls.join("tls.crt"), pki.backrest.0.as_bytes(), 0o644);
        write_file(&tls.join("tls.key"), pki.backrest.1.as_bytes(), 0o600);
        write_file(&tls.join("ca.crt"), pki.ca_pem.as_bytes(), 0o644);
        std::fs::create_dir_all(root.join("run")).unwrap();
        chown_tree(root);
        let port = PORTS.take();
        let log = std::fs::File::create(root.join("repo-host.log")).unwrap();
        let child = as_postgres(Command::new(env!("CARGO_BIN_EXE_capstan")))
            .arg("repo-host")
            .args(["--cluster", "db", "--listen", "127.0.0.1"])
            .arg(format!("--port={port}"))
            .arg("--tls-dir")
            .arg(&tls)
            .arg("--run-dir")
            .arg(root.join("run"))
            .arg("--pgbackrest")
            .arg(pgbackrest)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let host = Self { child, port };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "the repository host never listened: {}",
                std::fs::read_to_string(root.join("repo-host.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        host
    }
}

impl Drop for RepoHostProcess {
    /// SIGTERM, as the kubelet stops it: it stops its server too.
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The volume: a directory only the postgres user can write.
fn volume(root: &Path) -> PathBuf {
    let dir = root.join("volume");
    std::fs::create_dir_all(&dir).unwrap();
    chown_tree(&dir);
    dir
}

fn on_host(port: u16, path: &Path, full: u32) -> Repository {
    Repository {
        storage: Storage::Host(RepoHost {
            host: "localhost".into(),
            port,
        }),
        path: path.display().to_string(),
        retention: Retention {
            full: Some(full),
            ..Retention::default()
        },
    }
}

/// The instance's side: the `db-rw` certificate (or another one).
fn client_tls(root: &Path, pki: &Pki, cert: &(String, String)) -> ClientTls {
    let dir = root.join("client-tls");
    write_file(&dir.join("tls.crt"), cert.0.as_bytes(), 0o644);
    write_file(&dir.join("tls.key"), cert.1.as_bytes(), 0o600);
    write_file(&dir.join("ca.crt"), pki.ca_pem.as_bytes(), 0o644);
    chown_tree(&dir);
    ClientTls {
        cert_file: dir.join("tls.crt"),
        key_file: dir.join("tls.key"),
        ca_file: dir.join("ca.crt"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_archive_back_up_expire_and_restore_through_the_repository_host() {
    let (Some(pgbackrest), Some(bin)) = (pgbackrest(), pg_bin(17)) else {
        return;
    };
    let tmp = tempfile::Builder::new().prefix("caprh").tempdir().unwrap();
    let root = tmp.path();
    let pki = Pki::new();
    let host = RepoHostProcess::start(&pgbackrest, &root.join("host"), &pki);
    let volume = volume(root);

    let mut pg = Pg::initdb(&bin, &root.join("src"), PORTS.take());
    let db = setup_with_tls(
        &pgbackrest,
        &root.join("br"),
        "db",
        &pg,
        on_host(host.port, &volume, 1),
        Some(client_tls(&root.join("br-tls"), &pki, &pki.backrest)),
    );
    let inv = Invocation {
        pgbackrest: pgbackrest.clone(),
        config: db.config_path.clone(),
        stanza: "db".into(),
    };
    pg.start(&inv.archive_parameters(Duration::from_secs(60)));
    let c = pg.client("postgres").await;
    db.runner.stanza_create().await.expect("stanza-create");
    c.batch_execute("CREATE TABLE t (v text); INSERT INTO t VALUES ('x')")
        .await
        .unwrap();
    db.runner
        .backup(BackupType::Full, None)
        .await
        .expect("full backup through the repository host");
    c.batch_execute("INSERT INTO t VALUES ('y')").await.unwrap();
    db.runner
        .backup(BackupType::Incr, None)
        .await
        .expect("incremental");
    // The files are on the volume, written by the host.
    assert!(volume.join("backup/db/backup.info").is_file());
    assert!(volume.join("archive/db/archive.info").is_file());

    // A second full: retention (1 full) expires the first and its incremental.
    db.runner
        .backup(BackupType::Full, None)
        .await
        .expect("full");
    let stanza = db.runner.info(None).await.expect("info");
    let labels: Vec<&str> = stanza.backups.iter().map(|b| b.label.as_str()).collect();
    assert_eq!(labels.len(), 1, "retention left {labels:?}");
    c.batch_execute("INSERT INTO t VALUES ('z')").await.unwrap();
    db.runner.check().await.expect("check");

    // Restore through the host to the latest point.
    let mut copy = Pg::initdb(&bin, &root.join("copy"), PORTS.take());
    std::fs::remove_dir_all(&copy.data).unwrap();
    let mut restore = Restore::new(&copy.data, RestoreTarget::Latest);
    restore.archive_off = true;
    db.runner.restore(restore).await.expect("restore");
    copy.start(&[]);
    copy.wait_promoted().await;
    assert_eq!(
        values(&copy.client("postgres").await).await,
        ["x", "y", "z"]
    );
    copy.stop();

    // Another certificate (a name the host does not serve) is refused.
    let stranger = client_tls(&root.join("other"), &pki, &pki.stranger);
    let mut other = db.config.clone();
    other.client_tls = Some(stranger);
    let other_path = root.join("br").join("other.conf");
    write_config(&other, &other_path);
    let mut refused = db.runner.clone();
    refused.config = other_path;
    let err = refused.check().await.expect_err("a stranger's certificate");
    let message = err.pgbackrest_message().unwrap_or_default().to_string();
    assert!(message.contains("access denied"), "{err}");
    eprintln!("a stranger's certificate: {message}");

    // The volume read directly and read-only: a clone's first instance.
    drop(c);
    pg.stop();
    drop(host);
    readonly_tree(&volume);
    let mut clone = Pg::initdb(&bin, &root.join("clone"), PORTS.take());
    std::fs::remove_dir_all(&clone.data).unwrap();
    let direct = setup(
        &pgbackrest,
        &root.join("br-clone"),
        "db",
        &clone,
        Repository::posix(volume.display().to_string()),
    );
    let mut restore = Restore::new(&clone.data, RestoreTarget::Latest);
    restore.archive_off = true;
    direct
        .runner
        .restore(restore)
        .await
        .expect("restore from the read-only volume");
    clone.start(&[]);
    clone.wait_promoted().await;
    assert_eq!(
        values(&clone.client("postgres").await).await,
        ["x", "y", "z"]
    );
    clone.stop();
}

/// Directories 0555, files 0444: the postgres user can read, not write.
fn readonly_tree(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    for entry in std::fs::read_dir(path).unwrap().flatten() {
        let p = entry.path();
        if p.is_dir() {
            readonly_tree(&p);
        } else {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o444)).unwrap();
        }
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o555)).unwrap();
}

/// What the repository host costs: one pgbench database backed up, full,
/// alternately to a directory through the repository host (repo1, TLS on
/// loopback) and to a directory pgBackRest writes itself (repo2), then
/// restored from each. `bench/backup.sh` runs it (release build).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement (bench/backup.sh), not a test"]
async fn bench_repo_host() {
    let major: u32 = env_or("CAPSTAN_BENCH_PG_VERSION", 17);
    let scale: u32 = env_or("CAPSTAN_BENCH_SCALE", 70);
    let rounds: usize = env_or("CAPSTAN_BENCH_ROUNDS", 3);
    let (Some(pgbackrest), Some(bin)) = (pgbackrest(), pg_bin(major)) else {
        return;
    };
    let pgbench = if bin.join("pgbench").is_file() {
        bin.join("pgbench")
    } else {
        PathBuf::from("/usr/lib/postgresql/15/bin/pgbench")
    };
    let tmp = tempfile::Builder::new()
        .prefix("caprhbench")
        .tempdir_in(std::env::var("CAPSTAN_BENCH_DIR").unwrap_or_else(|_| "/var/tmp".into()))
        .unwrap();
    let root = tmp.path();
    chown_tree(root);
    let pki = Pki::new();
    let host = RepoHostProcess::start(&pgbackrest, &root.join("host"), &pki);
    let (remote, local) = (volume(root), root.join("local"));
    std::fs::create_dir_all(&local).unwrap();
    chown_tree(&local);
    let mut pg = Pg::initdb(&bin, &root.join("src"), PORTS.take());
    let db = setup_with_tls(
        &pgbackrest,
        &root.join("br"),
        "db",
        &pg,
        on_host(host.port, &remote, 2),
        Some(client_tls(&root.join("br-tls"), &pki, &pki.backrest)),
    );
    let mut config = db.config.clone();
    let mut direct = Repository::posix(local.display().to_string());
    direct.retention.full = Some(2);
    config.repositories.push(direct);
    write_config(&config, &db.config_path);
    let inv = Invocation {
        pgbackrest: pgbackrest.clone(),
        config: db.config_path.clone(),
        stanza: "db".into(),
    };
    let mut settings = inv.archive_parameters(Duration::from_secs(60));
    settings.push(("max_wal_size", "4GB".into()));
    pg.start(&settings);
    let c = pg.client("postgres").await;
    db.runner.stanza_create().await.expect("stanza-create");
    let size = load_pgbench(&pgbench, &pg, scale).await;
    c.simple_query("VACUUM ANALYZE").await.unwrap();
    c.simple_query("CHECKPOINT").await.unwrap();
    db.runner.check().await.expect("check");
    println!("repo-host-bench: PostgreSQL {major}, pgbench scale {scale} ({size})");
    for repo in [1, 2] {
        db.runner
            .backup(BackupType::Full, Some(repo))
            .await
            .expect("warm-up backup");
    }
    let (mut through_host, mut direct) = (vec![], vec![]);
    for round in 0..rounds {
        for turn in 0..2 {
            let host_now = (round + turn) % 2 == 0;
            let t = Instant::now();
            let repo = if host_now { 1 } else { 2 };
            db.runner
                .backup(BackupType::Full, Some(repo))
                .await
                .expect("full backup");
            if host_now {
                through_host.push(t.elapsed());
            } else {
                direct.push(t.elapsed());
            }
        }
        println!(
            "repo-host-bench: round {round}: through the repository host {:?}, to a local directory {:?}",
            through_host[round], direct[round]
        );
    }
    let (host_median, direct_median) = (median(through_host), median(direct));
    println!(
        "repo-host-bench: full backup median through the repository host {host_median:?}, to a local directory {direct_median:?} ({:+.1} %)",
        (host_median.as_secs_f64() / direct_median.as_secs_f64() - 1.0) * 100.0
    );
    for repo in [1, 2] {
        let dir = root.join(format!("restore-{repo}"));
        let mut restore = Restore::new(&dir, RestoreTarget::Latest);
        restore.archive_off = true;
        restore.repo = Some(repo);
        let t = Instant::now();
        db.runner.restore(restore).await.expect("restore");
        println!(
            "repo-host-bench: restore from repo{repo} ({}) {:?}",
            if repo == 1 {
                "repository host"
            } else {
                "local directory"
            },
            t.elapsed()
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
    drop(c);
    pg.stop();
}

//! A PostgreSQL server and a pgBackRest stanza run directly by a test (as
//! the postgres user), configured through `capstan::backup`, for the
//! real-process backup tests of every kind of repository.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use capstan::backup::Runner;
use capstan::backup::config::{self, BackrestConfig, Secrets, Stanza};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::{chown_tree, postgres_ids};

/// A PostgreSQL server run directly by the test (as the postgres user).
pub struct Pg {
    pub bin: PathBuf,
    pub data: PathBuf,
    pub socket: PathBuf,
    pub port: u16,
    child: Option<Child>,
}

impl Pg {
    pub fn initdb(bin: &Path, root: &Path, port: u16) -> Self {
        let pg = Pg {
            bin: bin.to_path_buf(),
            data: root.join("pgdata"),
            socket: root.join("sock"),
            port,
            child: None,
        };
        std::fs::create_dir_all(&pg.socket).unwrap();
        chown_tree(root);
        let out = as_postgres(Command::new(bin.join("initdb")))
            .arg("-D")
            .arg(&pg.data)
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-k"])
            .output()
            .unwrap();
        assert!(out.status.success(), "initdb: {out:?}");
        pg
    }

    pub fn start(&mut self, extra: &[(&str, String)]) {
        let mut cmd = as_postgres(Command::new(self.bin.join("postgres")));
        cmd.arg("-D").arg(&self.data);
        let mut settings = vec![
            ("port", self.port.to_string()),
            ("listen_addresses", String::new()),
            ("unix_socket_directories", self.socket.display().to_string()),
            ("fsync", "off".into()),
        ];
        settings.extend(extra.iter().cloned());
        for (k, v) in settings {
            cmd.arg("-c").arg(format!("{k}={v}"));
        }
        let log = std::fs::File::create(self.data.with_extension("log")).unwrap();
        self.child = Some(
            cmd.stdout(log.try_clone().unwrap())
                .stderr(log)
                .stdin(Stdio::null())
                .spawn()
                .unwrap(),
        );
    }

    pub async fn client(&self, db: &str) -> tokio_postgres::Client {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mut c = tokio_postgres::Config::new();
            c.host_path(&self.socket)
                .port(self.port)
                .user("postgres")
                .dbname(db);
            match c.connect(tokio_postgres::NoTls).await {
                Ok((client, conn)) => {
                    tokio::spawn(conn);
                    return client;
                }
                Err(e) if Instant::now() > deadline => panic!(
                    "no connection to {}: {e}\n{}",
                    self.data.display(),
                    std::fs::read_to_string(self.data.with_extension("log")).unwrap_or_default()
                ),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    pub async fn wait_promoted(&self) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let c = self.client("postgres").await;
            if let Ok(row) = c.query_one("SELECT pg_is_in_recovery()", &[]).await
                && !row.get::<_, bool>(0)
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} never promoted",
                self.data.display()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGINT);
            let _ = c.wait();
        }
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGQUIT);
            let _ = c.wait();
        }
    }
}

pub fn as_postgres(mut cmd: Command) -> Command {
    use std::os::unix::process::CommandExt;
    let (uid, gid) = postgres_ids();
    cmd.uid(uid).gid(gid).env("LC_ALL", "C");
    cmd
}

pub struct Setup {
    pub runner: Runner,
    pub config: BackrestConfig,
    pub config_path: PathBuf,
}

/// Writes pgbackrest.conf for `stanza` in `root` and returns its runner.
pub fn setup(
    pgbackrest: &Path,
    root: &Path,
    stanza: &str,
    pg: &Pg,
    repo: capstan::backup::Repository,
) -> Setup {
    setup_with_tls(pgbackrest, root, stanza, pg, repo, None)
}

/// [`setup`] with the certificate that reaches a repository host.
pub fn setup_with_tls(
    pgbackrest: &Path,
    root: &Path,
    stanza: &str,
    pg: &Pg,
    repo: capstan::backup::Repository,
    client_tls: Option<config::ClientTls>,
) -> Setup {
    for d in ["log", "lock", "spool"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    chown_tree(root);
    let config = BackrestConfig {
        stanza: Stanza {
            name: stanza.into(),
            pg_path: pg.data.clone(),
            pg_port: pg.port,
            pg_socket_path: pg.socket.clone(),
            pg_user: "postgres".into(),
        },
        repositories: vec![repo],
        log_path: root.join("log"),
        lock_path: root.join("lock"),
        spool_path: root.join("spool"),
        process_max: 2,
        archive_timeout: Duration::from_secs(60),
        archive_push_queue_max: None,
        server: None,
        client_tls,
    };
    let config_path = root.join("pgbackrest.conf");
    write_config(&config, &config_path);
    let mut runner =
        Runner::new(pgbackrest, &config_path, stanza).with_timeout(Duration::from_secs(300));
    runner.run_as = Some(postgres_ids());
    Setup {
        runner,
        config,
        config_path,
    }
}

pub fn write_config(config: &BackrestConfig, path: &Path) {
    let secrets = Secrets::load(&config.repositories).unwrap();
    let text = config::render(config, &secrets).unwrap();
    config::write(path, &text, Some(postgres_ids())).unwrap();
}

pub async fn values(c: &tokio_postgres::Client) -> Vec<String> {
    c.query("SELECT v FROM t ORDER BY v", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// A benchmark knob from the environment.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

pub fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// `pgbench -i -s scale` into `pg`'s postgres database; its size, for people.
pub async fn load_pgbench(pgbench: &Path, pg: &Pg, scale: u32) -> String {
    let out = as_postgres(Command::new(pgbench))
        .args(["-i", "-q", "-s", &scale.to_string(), "-h"])
        .arg(&pg.socket)
        .args(["-p", &pg.port.to_string(), "-U", "postgres", "postgres"])
        .output()
        .unwrap();
    assert!(out.status.success(), "pgbench -i: {out:?}");
    pg.client("postgres")
        .await
        .query_one("SELECT pg_size_pretty(pg_database_size('postgres'))", &[])
        .await
        .unwrap()
        .get(0)
}

//! PostgreSQL 15 instances made by hand: a primary (initdb) and streaming
//! replicas (pg_basebackup -R), with TLS and SCRAM on TCP, trust on the
//! private Unix socket for the test's own superuser access.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::{
    APP_DB, APP_PASSWORD, APP_USER, PG_BIN, POOLER_PASSWORD, as_postgres, chown_postgres, pki::Pki,
    run_ok, wait_until,
};

pub struct Postgres {
    pub name: String,
    pub data: PathBuf,
    pub port: u16,
    pub sock: PathBuf,
    log: PathBuf,
    running: bool,
}

fn bin(tool: &str) -> String {
    format!("{PG_BIN}/{tool}")
}

const CONF: &str = "
listen_addresses = '127.0.0.1'
ssl = on
ssl_cert_file = 'server.crt'
ssl_key_file = 'server.key'
ssl_ca_file = 'root.crt'
wal_level = replica
max_wal_senders = 10
wal_keep_size = '512MB'
hot_standby = on
wal_log_hints = on
fsync = off
shared_buffers = '32MB'
max_connections = 100
";

const HBA: &str = "
local all all trust
local replication all trust
hostssl all all 127.0.0.1/32 scram-sha-256
";

impl Postgres {
    fn paths(root: &Path, name: &str) -> (PathBuf, PathBuf, PathBuf) {
        let data = root.join(name);
        let sock = root.join(format!("{name}-s"));
        let log = root.join(format!("{name}.log"));
        (data, sock, log)
    }

    /// initdb, TLS, roles (`app`, `capstan_pooler`), database `appdb` with
    /// the pooler lookup function, started.
    pub fn primary(root: &Path, name: &str, port: u16, pki: &Pki) -> Self {
        let (data, sock, log) = Self::paths(root, name);
        std::fs::create_dir_all(&sock).unwrap();
        chown_postgres(&sock);
        let mut c = as_postgres(&bin("initdb"));
        c.arg("-D").arg(&data).args([
            "-U",
            "postgres",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--data-checksums",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ]);
        run_ok(c, "initdb");
        let conf = data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).unwrap();
        text.push_str(CONF);
        std::fs::write(&conf, text).unwrap();
        std::fs::write(data.join("pg_hba.conf"), HBA).unwrap();
        pki.write_postgres_tls(&data);
        let mut pg = Self {
            name: name.into(),
            data,
            port,
            sock,
            log,
            running: false,
        };
        pg.start();
        pg.sql(
            "postgres",
            &format!(
                "CREATE ROLE capstan_pooler LOGIN PASSWORD '{POOLER_PASSWORD}';
                 CREATE ROLE {APP_USER} LOGIN PASSWORD '{APP_PASSWORD}';"
            ),
        );
        pg.sql(
            "postgres",
            &format!("CREATE DATABASE {APP_DB} OWNER {APP_USER}"),
        );
        pg.sql(APP_DB, capstan::postgres::pooler_auth::INSTALL_SQL);
        pg
    }

    /// A streaming replica of `primary`, started.
    pub fn replica(root: &Path, name: &str, port: u16, primary: &Postgres) -> Self {
        let (data, sock, log) = Self::paths(root, name);
        std::fs::create_dir_all(&sock).unwrap();
        chown_postgres(&sock);
        let mut pg = Self {
            name: name.into(),
            data,
            port,
            sock,
            log,
            running: false,
        };
        pg.clone_from(primary);
        pg.start();
        primary.wait_streaming(&pg.name);
        pg
    }

    /// Waits until replica `name` streams from this primary: a switchover
    /// may only stop the primary once its target receives its WAL.
    pub fn wait_streaming(&self, name: &str) {
        wait_until(
            &format!("{name} to stream from {}", self.name),
            Duration::from_secs(30),
            || {
                self.sql(
                    "postgres",
                    &format!(
                        "SELECT count(*) FROM pg_stat_replication WHERE application_name = '{name}' AND state = 'streaming'"
                    ),
                ) == "1"
            },
        );
    }

    fn clone_from(&self, primary: &Postgres) {
        let mut c = as_postgres(&bin("pg_basebackup"));
        c.arg("-D")
            .arg(&self.data)
            .arg("-h")
            .arg(&primary.sock)
            .args([
                "-p",
                &primary.port.to_string(),
                "-U",
                "postgres",
                "-X",
                "stream",
                "--no-sync",
                "--checkpoint=fast",
            ]);
        run_ok(c, "pg_basebackup");
        self.follow(primary);
    }

    /// standby.signal plus a primary_conninfo naming `primary` (pg_rewind
    /// and pg_basebackup copy the source's settings, so it is rewritten).
    fn follow(&self, primary: &Postgres) {
        let auto = format!(
            "primary_conninfo = 'host={} port={} user=postgres application_name={}'\n",
            primary.sock.display(),
            primary.port,
            self.name
        );
        std::fs::write(self.data.join("postgresql.auto.conf"), auto).unwrap();
        chown_postgres(&self.data.join("postgresql.auto.conf"));
        std::fs::write(self.data.join("standby.signal"), "").unwrap();
        chown_postgres(&self.data.join("standby.signal"));
    }

    pub fn start(&mut self) {
        let mut c = as_postgres(&bin("pg_ctl"));
        c.arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(&self.log)
            .args(["-w", "-t", "60", "-o"])
            .arg(format!("-p {} -k {}", self.port, self.sock.display()))
            .arg("start");
        if std::fs::metadata(&self.log).is_err() {
            std::fs::write(&self.log, "").unwrap();
            chown_postgres(&self.log);
        }
        run_ok(c, &format!("pg_ctl start {}", self.name));
        self.running = true;
    }

    pub fn stop_fast(&mut self) {
        let mut c = as_postgres(&bin("pg_ctl"));
        c.arg("-D")
            .arg(&self.data)
            .args(["-m", "fast", "-w", "-t", "60", "stop"]);
        run_ok(c, &format!("pg_ctl stop {}", self.name));
        self.running = false;
    }

    pub fn promote(&self) {
        let mut c = as_postgres(&bin("pg_ctl"));
        c.arg("-D")
            .arg(&self.data)
            .args(["-w", "-t", "60", "promote"]);
        run_ok(c, &format!("pg_ctl promote {}", self.name));
    }

    /// Runs SQL as the superuser over the Unix socket; returns unaligned,
    /// tuples-only output.
    pub fn sql(&self, db: &str, sql: &str) -> String {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let n = SEQ.fetch_add(1, Ordering::SeqCst);
        let file = self.sock.with_extension(format!("{n}.sql"));
        std::fs::write(&file, sql).unwrap();
        let mut c = as_postgres(&bin("psql"));
        c.arg("-h")
            .arg(&self.sock)
            .args(["-p", &self.port.to_string(), "-U", "postgres", "-d", db])
            .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-f"])
            .arg(&file);
        let out = run_ok(c, &format!("psql on {}", self.name));
        let _ = std::fs::remove_file(&file);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// `Latest checkpoint location` of a stopped instance: a replica that
    /// replayed past it has everything the old primary wrote.
    pub fn last_checkpoint(&self) -> String {
        let mut c = as_postgres(&bin("pg_controldata"));
        c.arg("-D").arg(&self.data);
        let out = run_ok(c, "pg_controldata");
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .find_map(|l| l.strip_prefix("Latest checkpoint location:"))
            .map(|v| v.trim().to_string())
            .expect("checkpoint location in pg_controldata output")
    }

    pub fn wait_replayed(&self, lsn: &str) {
        wait_until(
            &format!("{} to replay {lsn}", self.name),
            Duration::from_secs(30),
            || {
                self.sql(
                    "postgres",
                    &format!("SELECT pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn"),
                ) == "t"
            },
        );
    }

    /// Turns this stopped former primary into a replica of `primary`:
    /// pg_rewind, or a fresh clone when the rewind fails.
    pub fn rejoin(&mut self, primary: &Postgres) {
        assert!(!self.running);
        primary.sql("postgres", "CHECKPOINT");
        let _ = std::fs::remove_file(self.data.join("standby.signal"));
        let mut c = as_postgres(&bin("pg_rewind"));
        c.arg("--target-pgdata").arg(&self.data).arg(format!(
            "--source-server=host={} port={} user=postgres dbname=postgres",
            primary.sock.display(),
            primary.port
        ));
        let out = c.output().unwrap();
        if out.status.success() {
            self.follow(primary);
        } else {
            eprintln!(
                "pg_rewind of {} failed, re-cloning: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr)
            );
            std::fs::remove_dir_all(&self.data).unwrap();
            self.clone_from(primary);
        }
        self.start();
        primary.wait_streaming(&self.name);
    }

    pub fn is_running(&self) -> bool {
        self.running
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            eprintln!("---- log of postgres {} (last lines) ----", self.name);
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
        if !self.running {
            return;
        }
        let status = as_postgres(&bin("pg_ctl"))
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "stop"])
            .output();
        let stopped = status.map(|o| o.status.success()).unwrap_or(false);
        if !stopped {
            // pg_ctl refuses root; kill the postmaster by its pid instead.
            if let Some(pid) = std::fs::read_to_string(self.data.join("postmaster.pid"))
                .ok()
                .and_then(|t| t.lines().next().and_then(|l| l.trim().parse::<i32>().ok()))
            {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGQUIT,
                );
                std::thread::sleep(Duration::from_millis(500));
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

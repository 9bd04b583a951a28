//! Real-process fixtures for the pooler tests: PostgreSQL 15 primary and
//! streaming replicas made by hand, a TLS PKI from rcgen, a TCP forwarder
//! standing in for the `<name>-rw` Service, and `capstan pooler` itself.
//! Every process is stopped by PID on drop, also when a test fails.
#![allow(dead_code)]

pub mod pki;
pub mod postgres;
pub mod prom;
pub mod service;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use capstan::contract::settings::PoolerSettings;
use capstan::pooler::client::{Endpoint, PoolerClient};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
pub const PGBOUNCER: &str = "/usr/sbin/pgbouncer";
pub const APP_USER: &str = "app";
pub const APP_PASSWORD: &str = "app-secret-pw";
pub const APP_DB: &str = "appdb";
pub const POOLER_PASSWORD: &str = "pooler-secret-pw";

/// Whether the real tools are here; prints why not.
pub fn tools_present() -> bool {
    let needed = [
        format!("{PG_BIN}/initdb"),
        format!("{PG_BIN}/pg_ctl"),
        format!("{PG_BIN}/pg_basebackup"),
        format!("{PG_BIN}/pg_rewind"),
        format!("{PG_BIN}/pgbench"),
        format!("{PG_BIN}/psql"),
        PGBOUNCER.to_string(),
    ];
    for tool in &needed {
        if !Path::new(tool).exists() {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "{tool} is required in CI; .ci/run installs it"
            );
            eprintln!(
                "skipping: {tool} is not installed (apt-get install postgresql-15 pgbouncer)"
            );
            return false;
        }
    }
    if nix::unistd::User::from_name("postgres")
        .ok()
        .flatten()
        .is_none()
    {
        eprintln!("skipping: no postgres user to run PostgreSQL and PgBouncer as");
        return false;
    }
    true
}

/// Ports for one test binary: `base..base+span`, probed before use.
pub struct Ports {
    next: AtomicU16,
    end: u16,
}

impl Ports {
    pub const fn new(base: u16, span: u16) -> Self {
        Self {
            next: AtomicU16::new(base),
            end: base + span,
        }
    }

    pub fn take(&self) -> u16 {
        loop {
            let p = self.next.fetch_add(1, Ordering::SeqCst);
            assert!(p < self.end, "test port range exhausted");
            if std::net::TcpListener::bind(("127.0.0.1", p)).is_ok() {
                return p;
            }
        }
    }
}

/// The `postgres` user's ids.
pub fn postgres_ids() -> (u32, u32) {
    let u = nix::unistd::User::from_name("postgres")
        .unwrap()
        .expect("postgres user");
    (u.uid.as_raw(), u.gid.as_raw())
}

pub fn chown_postgres(path: &Path) {
    let (uid, gid) = postgres_ids();
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
}

pub fn write_file(path: &Path, content: &[u8], mode: u32, postgres_owned: bool) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, content).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    if postgres_owned {
        chown_postgres(path);
    }
}

/// A temporary directory PostgreSQL's user can enter; short, for sockets.
pub fn workdir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::Builder::new()
        .prefix("cp")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    chown_postgres(dir.path());
    dir
}

/// Runs a command as the postgres user.
pub fn as_postgres(program: &str) -> Command {
    use std::os::unix::process::CommandExt;
    let (uid, gid) = postgres_ids();
    let mut c = Command::new(program);
    c.uid(uid).gid(gid).current_dir("/tmp");
    c
}

pub fn run_ok(mut c: Command, what: &str) -> Output {
    let out = c
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

/// psql through the pooler as the app user over TLS (`sslmode`),
/// password from the environment, never the command line.
pub fn psql_pooler(port: u16, pki: &pki::Pki, password: &str, sslmode: &str, sql: &str) -> Output {
    let mut c = Command::new(format!("{PG_BIN}/psql"));
    c.args([
        "-h",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-U",
        APP_USER,
        "-d",
        APP_DB,
        "-X",
        "-A",
        "-t",
        "-v",
        "ON_ERROR_STOP=1",
        "-c",
        sql,
    ]);
    c.env("PGSSLMODE", sslmode)
        .env("PGSSLROOTCERT", pki.ca_file())
        .env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "10")
        .stdin(Stdio::null());
    c.output().unwrap()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).trim().to_string()
}

/// A pgbench run through some host/port as the app user, over TLS.
pub fn pgbench(port: u16, pki: &pki::Pki, args: &[&str]) -> Command {
    let mut c = Command::new(format!("{PG_BIN}/pgbench"));
    c.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", APP_USER])
        .args(args)
        .arg(APP_DB)
        .env("PGSSLMODE", "verify-full")
        .env("PGSSLROOTCERT", pki.ca_file())
        .env("PGPASSWORD", APP_PASSWORD)
        .stdin(Stdio::null());
    c
}

/// Figures pgbench prints at the end of a run.
#[derive(Debug, Clone, Default)]
pub struct PgbenchResult {
    pub success: bool,
    pub transactions: u64,
    pub failed: u64,
    pub aborted: bool,
    pub tps: f64,
    pub output: String,
}

pub fn parse_pgbench(out: &Output) -> PgbenchResult {
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut r = PgbenchResult {
        success: out.status.success(),
        output: text.clone(),
        ..Default::default()
    };
    for line in text.lines() {
        let line = line.trim();
        if let Some(v) = line.strip_prefix("number of transactions actually processed:") {
            r.transactions = v
                .split_whitespace()
                .next()
                .and_then(|n| n.split('/').next()?.parse().ok())
                .unwrap_or(0);
        } else if let Some(v) = line.strip_prefix("number of failed transactions:") {
            r.failed = v
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(u64::MAX);
        } else if let Some(v) = line.strip_prefix("tps =") {
            r.tps = v
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0.0);
        }
        if line.contains("aborted") || line.contains("Run was aborted") {
            r.aborted = true;
        }
    }
    r
}

/// A running `capstan pooler` with its own files.
pub struct Pooler {
    pub name: String,
    /// Started through a wrapper whose only child is the supervisor.
    wrapped: bool,
    child: Child,
    pub port: u16,
    pub api_port: u16,
    pub dir: PathBuf,
    pub settings_path: PathBuf,
    log: PathBuf,
}

impl Pooler {
    /// Starts `capstan pooler` for `backend_port` on 127.0.0.1.
    pub fn start(
        name: &str,
        root: &Path,
        pki: &pki::Pki,
        ports: &Ports,
        settings: &PoolerSettings,
    ) -> Self {
        Self::start_with(name, root, pki, ports, settings, &[], PGBOUNCER)
    }

    /// Like [`Pooler::start`], with the supervisor started through
    /// `wrapper` (e.g. `unshare` to make it PID 1) and another pgbouncer.
    pub fn start_with(
        name: &str,
        root: &Path,
        pki: &pki::Pki,
        ports: &Ports,
        settings: &PoolerSettings,
        wrapper: &[&str],
        pgbouncer: &str,
    ) -> Self {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let tls = dir.join("tls");
        let secrets = dir.join("secrets");
        std::fs::create_dir_all(&tls).unwrap();
        std::fs::create_dir_all(&secrets).unwrap();
        chown_postgres(&tls);
        pki.write_pooler_tls(&tls);
        write_file(&secrets.join("username"), b"capstan_pooler\n", 0o600, false);
        write_file(
            &secrets.join("password"),
            POOLER_PASSWORD.as_bytes(),
            0o600,
            false,
        );
        let settings_path = dir.join("pooler.json");
        std::fs::write(&settings_path, serde_json::to_vec_pretty(settings).unwrap()).unwrap();
        let port = ports.take();
        let api_port = ports.take();
        let log = dir.join("pooler.log");
        let logfile = std::fs::File::create(&log).unwrap();
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(env!("CARGO_BIN_EXE_capstan"));
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_capstan")),
        };
        let child = command
            .arg("pooler")
            .env("POD_NAME", name)
            .env("POD_IP", "127.0.0.1")
            .env("CAPSTAN_SHUTDOWN_SECONDS", "5")
            .env("RUST_LOG", "info,capstan=debug")
            .args(["--port", &port.to_string()])
            .args(["--api-port", &api_port.to_string()])
            .arg("--settings")
            .arg(&settings_path)
            .arg("--run-dir")
            .arg(dir.join("run"))
            .arg("--tls-dir")
            .arg(&tls)
            .arg("--api-tls-dir")
            .arg(&tls)
            .arg("--secrets-dir")
            .arg(&secrets)
            .args([
                "--pgbouncer",
                pgbouncer,
                "--run-as",
                "postgres",
                "--poll-ms",
                "200",
            ])
            .stdin(Stdio::null())
            .stdout(logfile.try_clone().unwrap())
            .stderr(logfile)
            .spawn()
            .expect("start capstan pooler");
        Self {
            name: name.to_string(),
            wrapped: !wrapper.is_empty(),
            child,
            port,
            api_port,
            dir,
            settings_path,
            log,
        }
    }

    pub fn endpoint(&self) -> Endpoint {
        Endpoint {
            name: self.name.clone(),
            host: "127.0.0.1".into(),
            port: self.api_port,
            server_name: "localhost".into(),
        }
    }

    /// The supervisor's pid (as seen from the test).
    pub fn pid(&self) -> Option<u32> {
        if self.wrapped {
            children_of(self.child.id()).first().map(|p| *p as u32)
        } else {
            Some(self.child.id())
        }
    }

    /// PgBouncer's pid (the supervisor's only long-lived child).
    pub fn pgbouncer_pid(&self) -> Option<i32> {
        children_of(self.pid()?).into_iter().next()
    }

    pub fn write_settings(&self, settings: &PoolerSettings) {
        let tmp = self.settings_path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(settings).unwrap()).unwrap();
        std::fs::rename(&tmp, &self.settings_path).unwrap();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until `/readyz` answers 200.
    pub async fn wait_ready(&self, client: &PoolerClient) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match client.ready(&self.endpoint()).await {
                Ok(()) => return,
                Err(e) if Instant::now() > deadline => {
                    panic!("pooler {} not ready: {e}\nlog:\n{}", self.name, self.log())
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// SIGTERM and wait for the supervisor to drain and exit.
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Pooler {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- log of pooler {} ----\n{}", self.name, self.log());
        }
        let mut orphans = children_of(self.child.id());
        if let Some(pid) = self.pid().filter(|_| self.wrapped) {
            orphans.extend(children_of(pid));
        }
        if self.terminate(Duration::from_secs(10)).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        for pid in orphans {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

/// Zombie children of `pid`, from /proc.
pub fn zombies_of(pid: u32) -> Vec<i32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid ...
        let Some(rest) = stat.rsplit_once(") ").map(|(_, r)| r) else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let (Some(state), Some(ppid)) = (fields.next(), fields.next()) else {
            continue;
        };
        if state == "Z"
            && ppid == pid.to_string()
            && let Ok(p) = entry.file_name().to_string_lossy().parse()
        {
            out.push(p);
        }
    }
    out
}

/// Child pids of `pid`, from /proc.
pub fn children_of(pid: u32) -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in tasks.flatten() {
        if let Ok(text) = std::fs::read_to_string(t.path().join("children")) {
            out.extend(
                text.split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok()),
            );
        }
    }
    out
}

/// Pooler settings for a backend on 127.0.0.1.
pub fn settings(backend_port: u16, pool_mode: &str) -> PoolerSettings {
    PoolerSettings {
        cluster: "db".into(),
        namespace: "test".into(),
        backend_host: "127.0.0.1".into(),
        backend_port,
        pool_mode: pool_mode.into(),
        max_client_conn: 200,
        default_pool_size: 10,
        parameters: Default::default(),
    }
}

/// The operator's API client.
pub fn operator_client(pki: &pki::Pki) -> PoolerClient {
    PoolerClient::new(Arc::new(pki.client_config("capstan-operator")))
}

/// A psql session kept open through the pooler (an idle client).
pub struct InteractivePsql {
    child: Child,
    out: std::io::BufReader<std::process::ChildStdout>,
}

pub fn interactive_psql(port: u16, pki: &pki::Pki) -> InteractivePsql {
    let mut child = Command::new(format!("{PG_BIN}/psql"))
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            APP_USER,
            "-d",
            APP_DB,
        ])
        .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1"])
        .env("PGSSLMODE", "verify-full")
        .env("PGSSLROOTCERT", pki.ca_file())
        .env("PGPASSWORD", APP_PASSWORD)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = std::io::BufReader::new(child.stdout.take().unwrap());
    InteractivePsql { child, out }
}

impl InteractivePsql {
    /// Runs a one-value query on the open session.
    pub fn query(&mut self, sql: &str) -> String {
        use std::io::{BufRead, Write};
        let stdin = self.child.stdin.as_mut().unwrap();
        writeln!(stdin, "{sql};").unwrap();
        stdin.flush().unwrap();
        let mut line = String::new();
        self.out.read_line(&mut line).unwrap();
        assert!(!line.is_empty(), "psql session ended (connection dropped?)");
        line.trim().to_string()
    }
}

impl Drop for InteractivePsql {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

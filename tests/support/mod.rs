//! Real-process harness for the instance manager: each instance is a
//! `capstan instance` process (run as the `postgres` OS user, as in a pod)
//! with its own directories and ports on 127.0.0.1, a test PKI made with
//! rcgen, a TCP proxy standing in for the `-rw` Service, and small HTTPS
//! and SQL clients. Every process is killed by PID on drop, also when a
//! test fails.

#![allow(dead_code)]

pub mod backrest;
pub mod posix;
pub mod s3;
pub mod stores;
pub mod tools;

use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use capstan::contract::instance::InstanceReport;
use capstan::contract::settings::{InitdbSettings, InstanceSettings};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub const CLUSTER: &str = "db";
pub const NAMESPACE: &str = "test";
pub const SUPERUSER_PASSWORD: &str = "super'pass\\word";
pub const APP_PASSWORD: &str = "app-pass";

/// PostgreSQL 15 from Debian, the version CI installs.
pub fn pg15_bin() -> Option<PathBuf> {
    let dir = PathBuf::from("/usr/lib/postgresql/15/bin");
    dir.join("postgres").is_file().then_some(dir)
}

/// PostgreSQL 18 binaries (.ci/install-pg-binaries.sh), from CAPSTAN_PG18_BIN.
pub fn pg18_bin() -> Option<PathBuf> {
    let dir = PathBuf::from(std::env::var_os("CAPSTAN_PG18_BIN")?);
    dir.join("postgres").is_file().then_some(dir)
}

/// PostgreSQL `major` binaries: Debian's for 15, else CAPSTAN_PG<major>_BIN
/// or /opt/capstan-pg/<major>/bin (.ci/install-pg-binaries.sh). `None`
/// (after saying why) when absent outside CI; panics in CI.
pub fn pg_bin(major: u32) -> Option<PathBuf> {
    let dir = match major {
        15 => PathBuf::from("/usr/lib/postgresql/15/bin"),
        m => std::env::var_os(format!("CAPSTAN_PG{m}_BIN"))
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(format!("/opt/capstan-pg/{m}/bin"))),
    };
    if dir.join("postgres").is_file() {
        return Some(dir);
    }
    assert!(
        !std::env::var("CI").is_ok_and(|v| v == "true"),
        "PostgreSQL {major} is required in CI; not in {}",
        dir.display()
    );
    eprintln!("SKIP: PostgreSQL {major} not found in {}", dir.display());
    None
}

/// Ports for one test binary: `base` + a counter, inside 20000-21999.
pub struct Ports {
    next: AtomicU16,
    end: u16,
}

impl Ports {
    pub const fn new(base: u16, end: u16) -> Self {
        Self {
            next: AtomicU16::new(base),
            end,
        }
    }

    pub fn take(&self) -> u16 {
        let port = self.next.fetch_add(1, Ordering::SeqCst);
        assert!(port < self.end, "test ran out of ports");
        port
    }
}

pub fn postgres_ids() -> (u32, u32) {
    let user = nix::unistd::User::from_name("postgres")
        .expect("user lookup")
        .expect("a postgres OS user");
    (user.uid.as_raw(), user.gid.as_raw())
}

pub fn chown_tree(path: &Path) {
    let (uid, gid) = postgres_ids();
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).unwrap();
    if path.is_dir() && !path.is_symlink() {
        for entry in std::fs::read_dir(path).unwrap() {
            chown_tree(&entry.unwrap().path());
        }
    }
}

pub fn write_file(path: &Path, content: &[u8], mode: u32) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .unwrap();
    f.write_all(content).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A cluster CA and the certificates of one test cluster.
pub struct Pki {
    ca: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    pub ca_pem: String,
    pub server: (String, String),
    pub replication: (String, String),
    pub operator: (String, String),
    pub stranger: (String, String),
    /// pgBackRest's TLS server and client certificate (as the operator
    /// issues it: `db-rw`, both usages), also for `localhost`.
    pub backrest: (String, String),
}

impl Pki {
    pub fn new() -> Self {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "capstan test CA");
        ca.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let ca = rcgen::CertifiedIssuer::self_signed(ca, ca_key).unwrap();
        let mut pki = Self {
            ca_pem: ca.pem(),
            ca,
            server: Default::default(),
            replication: Default::default(),
            operator: Default::default(),
            stranger: Default::default(),
            backrest: Default::default(),
        };
        pki.server = pki.issue("localhost", &["localhost", "127.0.0.1"], true);
        pki.replication = pki.issue("streaming_replica", &[], false);
        pki.operator = pki.issue("capstan-operator", &[], false);
        pki.stranger = pki.issue("someone-else", &[], false);
        pki.backrest = pki.issue_with(
            "db-rw",
            &["db-rw", "localhost"],
            vec![
                rcgen::ExtendedKeyUsagePurpose::ServerAuth,
                rcgen::ExtendedKeyUsagePurpose::ClientAuth,
            ],
        );
        pki
    }

    fn issue(&self, cn: &str, names: &[&str], server: bool) -> (String, String) {
        self.issue_with(
            cn,
            names,
            vec![if server {
                rcgen::ExtendedKeyUsagePurpose::ServerAuth
            } else {
                rcgen::ExtendedKeyUsagePurpose::ClientAuth
            }],
        )
    }

    fn issue_with(
        &self,
        cn: &str,
        names: &[&str],
        usages: Vec<rcgen::ExtendedKeyUsagePurpose>,
    ) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params.extended_key_usages = usages;
        let cert = params.signed_by(&key, &self.ca).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn roots(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.der().clone()).unwrap();
        roots
    }

    /// A client config trusting the CA, with an optional client certificate.
    pub fn client_config(&self, identity: Option<&(String, String)>) -> rustls::ClientConfig {
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(self.roots());
        match identity {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let certs = vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()];
                let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
                builder.with_client_auth_cert(certs, key).unwrap()
            }
        }
    }
}

use rustls::pki_types::pem::PemObject;

pub fn settings(version: i32, primary_port: u16, instances: &[&str]) -> InstanceSettings {
    InstanceSettings {
        cluster: CLUSTER.into(),
        namespace: NAMESPACE.into(),
        postgres_version: version,
        parameters: [("work_mem".to_string(), "8MB".to_string())].into(),
        hba: vec![],
        initdb: InitdbSettings {
            database: "app".into(),
            owner: "app".into(),
            encoding: "UTF8".into(),
            locale: "C".into(),
            data_checksums: true,
        },
        primary_host: "127.0.0.1".into(),
        primary_port,
        instances: instances.iter().map(|s| s.to_string()).collect(),
        separate_wal: false,
        fencing: None,
        synchronous: Default::default(),
        backup: None,
        restore: None,
        major_upgrade: None,
        roles: vec![],
        databases: vec![],
    }
}

/// One `capstan instance` process and its directories.
pub struct Instance {
    pub name: String,
    pub cluster: String,
    pub root: PathBuf,
    _tmp: tempfile::TempDir,
    pub pg_port: u16,
    pub api_port: u16,
    pub bin_dir: PathBuf,
    pub pki: Arc<Pki>,
    pub shutdown_seconds: u64,
    /// `--lease file:<dir>` when set (fencing tests); `kube` otherwise.
    pub lease_dir: Option<PathBuf>,
    /// Extra environment for the manager (e.g. CAPSTAN_PGBACKREST).
    pub env: Vec<(String, String)>,
    /// The `capstan` binary to run instead of [`manager_binary`].
    pub binary: Option<PathBuf>,
    child: Option<Child>,
}

impl Instance {
    pub fn new(
        name: &str,
        ports: &Ports,
        bin_dir: &Path,
        pki: Arc<Pki>,
        settings: &InstanceSettings,
    ) -> Self {
        let tmp = tempfile::Builder::new().prefix("capi").tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        let instance = Self {
            name: name.into(),
            cluster: settings.cluster.clone(),
            root: root.clone(),
            _tmp: tmp,
            pg_port: ports.take(),
            api_port: ports.take(),
            bin_dir: bin_dir.to_path_buf(),
            pki,
            shutdown_seconds: 20,
            lease_dir: None,
            env: vec![],
            binary: None,
            child: None,
        };
        for dir in ["data", "run"] {
            std::fs::create_dir_all(root.join(dir)).unwrap();
        }
        instance.write_settings(settings);
        for (secret, user, password) in [
            ("superuser", "postgres", SUPERUSER_PASSWORD),
            ("app", "app", APP_PASSWORD),
            ("pooler", "capstan_pooler", "pooler-pass"),
        ] {
            write_file(
                &root.join("secrets").join(secret).join("username"),
                user.as_bytes(),
                0o600,
            );
            write_file(
                &root.join("secrets").join(secret).join("password"),
                password.as_bytes(),
                0o600,
            );
        }
        let pki = &instance.pki;
        // The API serves the agent certificate; here the server one doubles as it.
        for (dir, (cert, key)) in [
            ("server", &pki.server),
            ("replication", &pki.replication),
            ("agent", &pki.server),
            ("pgbackrest", &pki.backrest),
        ] {
            let dir = root.join("tls").join(dir);
            write_file(&dir.join("tls.crt"), cert.as_bytes(), 0o644);
            write_file(&dir.join("tls.key"), key.as_bytes(), 0o600);
            write_file(&dir.join("ca.crt"), pki.ca_pem.as_bytes(), 0o644);
        }
        chown_tree(&root);
        instance
    }

    pub fn pgdata(&self) -> PathBuf {
        self.root.join("data").join("pgdata")
    }

    pub fn log_path(&self) -> PathBuf {
        self.root.join("manager.log")
    }

    /// Replaces `instance.json` atomically, as the kubelet does.
    pub fn write_settings(&self, settings: &InstanceSettings) {
        let dir = self.root.join("config");
        let tmp = dir.join(".instance.json.tmp");
        write_file(&tmp, &serde_json::to_vec_pretty(settings).unwrap(), 0o644);
        std::fs::rename(&tmp, dir.join("instance.json")).unwrap();
        chown_tree(&dir);
    }

    /// The manager runs `pgbackrest` and keeps its files in `<root>/pgbackrest`.
    pub fn use_pgbackrest(&mut self, pgbackrest: &Path) {
        let dir = self.root.join("pgbackrest");
        self.env.extend([
            (
                "CAPSTAN_PGBACKREST".into(),
                pgbackrest.display().to_string(),
            ),
            ("CAPSTAN_BACKREST_DIR".into(), dir.display().to_string()),
        ]);
    }

    pub fn set_authority(&self, target: &str) {
        let path = self.root.join("authority");
        write_file(&path, target.as_bytes(), 0o644);
        chown_tree(&path);
    }

    pub fn remove_secret(&self, relative: &str) {
        std::fs::remove_file(self.root.join("secrets").join(relative)).unwrap();
    }

    pub fn restore_secret(&self, relative: &str, value: &str) {
        let path = self.root.join("secrets").join(relative);
        write_file(&path, value.as_bytes(), 0o600);
        chown_tree(&path);
    }

    pub fn start(&mut self) {
        assert!(self.child.is_none(), "{} already started", self.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let (uid, gid) = postgres_ids();
        let root = &self.root;
        let mut command =
            std::process::Command::new(self.binary.clone().unwrap_or_else(manager_binary));
        command.arg("instance");
        if let Some(dir) = &self.lease_dir {
            command
                .arg("--lease")
                .arg(format!("file:{}", dir.display()));
        }
        command.envs(self.env.iter().map(|(k, v)| (k, v)));
        let child = command
            .env("POD_NAME", &self.name)
            .env("POD_NAMESPACE", NAMESPACE)
            .env("CLUSTER_NAME", &self.cluster)
            .env("POD_IP", "127.0.0.1")
            .env(
                "CAPSTAN_SHUTDOWN_SECONDS",
                self.shutdown_seconds.to_string(),
            )
            .env("CAPSTAN_LOG_FORMAT", "text")
            .env("RUST_LOG", "info")
            .env("HOME", root)
            .arg("--data-dir")
            .arg(self.pgdata())
            .arg("--config-dir")
            .arg(root.join("config"))
            .arg("--secrets-dir")
            .arg(root.join("secrets"))
            .arg("--tls-dir")
            .arg(root.join("tls"))
            .arg("--run-dir")
            .arg(root.join("run"))
            .arg("--postgres-port")
            .arg(self.pg_port.to_string())
            .arg("--api-port")
            .arg(self.api_port.to_string())
            .arg("--pg-bin-dir")
            .arg(&self.bin_dir)
            .arg("--authority")
            .arg(format!("file:{}", root.join("authority").display()))
            .current_dir(root)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .uid(uid)
            .gid(gid)
            .spawn()
            .expect("spawn capstan instance");
        self.child = Some(child);
    }

    pub fn manager_pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGTERM, then wait up to `limit`; returns the exit status.
    pub fn terminate(&mut self, limit: Duration) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running manager");
        kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{} did not exit within {limit:?} after SIGTERM", self.name);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The postmaster's PID from `postmaster.pid`.
    pub fn postmaster_pid(&self) -> Option<i32> {
        let text = std::fs::read_to_string(self.pgdata().join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }

    /// Processes whose working directory is this data directory (every
    /// postgres process chdirs there).
    pub fn postgres_processes(&self) -> Vec<i32> {
        processes_in(&self.pgdata())
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub async fn http(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        identity: Option<&(String, String)>,
    ) -> (u16, String) {
        https_request(
            &self.pki.client_config(identity),
            self.api_port,
            method,
            path,
            body,
        )
        .await
    }

    pub async fn operator(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        let pki = self.pki.clone();
        self.http(method, path, body, Some(&pki.operator)).await
    }

    pub async fn status(&self) -> Option<InstanceReport> {
        let (code, body) = self.operator("GET", "/status", None).await;
        if code != 200 {
            return None;
        }
        serde_json::from_str(&body).ok()
    }

    pub async fn wait_status(
        &self,
        what: &str,
        limit: Duration,
        check: impl Fn(&InstanceReport) -> bool,
    ) -> InstanceReport {
        let deadline = Instant::now() + limit;
        let mut last = None;
        loop {
            if let Some(report) = self.status().await {
                if check(&report) {
                    return report;
                }
                last = Some(report);
            }
            if Instant::now() > deadline {
                panic!(
                    "{}: {what} not reached within {limit:?}; last status {last:#?}\n--- manager log ---\n{}",
                    self.name,
                    self.log_tail(80)
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub async fn wait_ready(&self, limit: Duration) -> InstanceReport {
        self.wait_status("ready", limit, |r| r.ready).await
    }

    /// A TLS connection as the superuser (password over `hostssl ... scram`).
    pub async fn sql(&self, dbname: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        sql_connect(
            &self.pki,
            self.pg_port,
            "postgres",
            SUPERUSER_PASSWORD,
            dbname,
        )
        .await
    }

    pub async fn sql_retry(&self, dbname: &str, limit: Duration) -> tokio_postgres::Client {
        let deadline = Instant::now() + limit;
        loop {
            match self.sql(dbname).await {
                Ok(c) => return c,
                Err(e) if Instant::now() > deadline => panic!(
                    "{}: no SQL connection within {limit:?}: {e:?}\n{}",
                    self.name,
                    self.log_tail(60)
                ),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// Kills the manager and its postgres at once (cleanup).
    pub fn kill_all(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(pid) = self.postmaster_pid() {
            let _ = kill(Pid::from_raw(pid), Signal::SIGQUIT);
        }
        // The manager's other children (pgBackRest's TLS server, its async
        // archiver) outlive a killed manager; their arguments name the root.
        let postgres = self.postgres_processes();
        for pid in processes_naming(&self.root) {
            if !postgres.contains(&pid) && Some(pid) != self.postmaster_pid() {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = self.postgres_processes();
            if left.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                for pid in left {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let all = std::env::var_os("CAPSTAN_TEST_LOGS").is_some();
        if std::thread::panicking() || all {
            let text = if all { self.log() } else { self.log_tail(150) };
            eprintln!(
                "--- {} manager log ---\n{text}\n--- end {} ---",
                self.name, self.name
            );
        }
        self.kill_all();
    }
}

/// The `capstan` binary as the `postgres` OS user can run it: the build
/// output may sit below a directory only root may enter (a checkout in
/// /root), so then a copy in the temp directory is used.
pub fn manager_binary() -> PathBuf {
    static BINARY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BINARY
        .get_or_init(|| {
            let built = PathBuf::from(env!("CARGO_BIN_EXE_capstan"));
            let reachable = built.ancestors().skip(1).all(|dir| {
                std::fs::metadata(dir).is_ok_and(|m| m.permissions().mode() & 0o001 != 0)
            });
            if reachable {
                return built;
            }
            let meta = std::fs::metadata(&built).unwrap();
            let stamp = meta
                .modified()
                .unwrap()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos();
            let dir = std::env::temp_dir().join(format!("capstan-test-bin-{stamp}"));
            let copy = dir.join("capstan");
            if std::fs::metadata(&copy).map(|m| m.len()).ok() != Some(meta.len()) {
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
                let partial = dir.join(format!("capstan.{}", std::process::id()));
                std::fs::copy(&built, &partial).unwrap();
                std::fs::set_permissions(&partial, std::fs::Permissions::from_mode(0o755)).unwrap();
                std::fs::rename(&partial, &copy).unwrap();
            }
            copy
        })
        .clone()
}

/// Every process: its PID and its `/proc` directory.
fn proc_entries() -> impl Iterator<Item = (i32, PathBuf)> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|entry| {
            let pid = entry.file_name().to_str()?.parse::<i32>().ok()?;
            Some((pid, entry.path()))
        })
}

/// Processes whose command line names `root` (or a path below it).
pub fn processes_naming(root: &Path) -> Vec<i32> {
    let needle = root.display().to_string();
    proc_entries()
        .filter(|(_, dir)| {
            std::fs::read(dir.join("cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&needle))
        })
        .map(|(pid, _)| pid)
        .collect()
}

pub fn processes_in(dir: &Path) -> Vec<i32> {
    let Ok(canonical) = dir.canonicalize() else {
        return vec![];
    };
    proc_entries()
        .filter(|(_, proc_dir)| {
            std::fs::read_link(proc_dir.join("cwd")).ok().as_deref() == Some(canonical.as_path())
        })
        .map(|(pid, _)| pid)
        .collect()
}

/// Zombie children of `parent`.
pub fn zombies_of(parent: u32) -> Vec<u32> {
    let mut found = vec![];
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next();
        let ppid = fields.next().and_then(|p| p.parse::<u32>().ok());
        if state == Some("Z") && ppid == Some(parent) {
            found.push(pid);
        }
    }
    found
}

pub async fn sql_connect(
    pki: &Pki,
    port: u16,
    user: &str,
    password: &str,
    dbname: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let mut config = tokio_postgres::Config::new();
    config
        .host("127.0.0.1")
        .port(port)
        .user(user)
        .password(password)
        .dbname(dbname)
        .ssl_mode(tokio_postgres::config::SslMode::Require)
        .connect_timeout(Duration::from_secs(5));
    let tls = tokio_postgres_rustls::MakeRustlsConnect::new(pki.client_config(None));
    let (client, connection) = config.connect(tls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// A minimal HTTPS/1.1 client (one request per connection).
pub async fn https_request(
    config: &rustls::ClientConfig,
    port: u16,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> (u16, String) {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config.clone()));
    let tcp = match TcpStream::connect(("127.0.0.1", port)).await {
        Ok(t) => t,
        Err(e) => return (0, format!("connect: {e}")),
    };
    let server = ServerName::try_from("localhost").unwrap();
    let mut tls = match connector.connect(server, tcp).await {
        Ok(t) => t,
        Err(e) => return (0, format!("tls: {e}")),
    };
    let body = body.unwrap_or("");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    if let Err(e) = tls.write_all(request.as_bytes()).await {
        return (0, format!("write: {e}"));
    }
    let mut response = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(150), tls.read_to_end(&mut response)).await;
    if !matches!(read, Ok(Ok(_))) && response.is_empty() {
        return (0, format!("read: {read:?}"));
    }
    let text = String::from_utf8_lossy(&response).to_string();
    let Some((head, rest)) = text.split_once("\r\n\r\n") else {
        return (0, text);
    };
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    (code, body)
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}

/// The stand-in for the `-rw` Service: forwards 127.0.0.1:`port` to the
/// current backend port; repointing drops the existing connections, as a
/// primary that goes away would.
pub struct Proxy {
    pub port: u16,
    backend: Arc<AtomicU16>,
    generation: Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(port: u16, backend: u16) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let backend = Arc::new(AtomicU16::new(backend));
        let generation = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (b, g) = (backend.clone(), generation.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    continue;
                };
                let target = b.load(Ordering::SeqCst);
                let born = g.load(Ordering::SeqCst);
                let g = g.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(("127.0.0.1", target)).await else {
                        return;
                    };
                    let copy = tokio::io::copy_bidirectional(&mut client, &mut server);
                    let repointed = async {
                        while g.load(Ordering::SeqCst) == born {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    };
                    tokio::select! {
                        _ = copy => {}
                        _ = repointed => {}
                    }
                });
            }
        });
        Self {
            port,
            backend,
            generation,
            task,
        }
    }

    pub fn repoint(&self, backend: u16) {
        self.backend.store(backend, Ordering::SeqCst);
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// Repoints new connections only, as a Service does: connections to a
    /// frozen backend stay open and silent.
    pub fn repoint_new_connections(&self, backend: u16) {
        self.backend.store(backend, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Polls `check` until it returns Some or `limit` passes.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("{what} not reached within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Rows of `SELECT v FROM t ORDER BY v` on a fresh connection, or None.
pub async fn values(instance: &Instance, table: &str) -> Option<Vec<String>> {
    let client = instance.sql("app").await.ok()?;
    let rows = client
        .query(&format!("SELECT v FROM {table} ORDER BY v"), &[])
        .await
        .ok()?;
    Some(rows.iter().map(|r| r.get::<_, String>(0)).collect())
}

/// Reads a whole file as bytes (for "data untouched" checks).
pub fn read_bytes(path: &Path) -> Vec<u8> {
    let mut out = vec![];
    std::fs::File::open(path)
        .unwrap()
        .read_to_end(&mut out)
        .unwrap();
    out
}

/// A directory of lease files shared by the instances of one test
/// (`--lease file:<dir>`), with the partition switch of each instance.
pub struct LeaseDir {
    dir: tempfile::TempDir,
}

impl LeaseDir {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new().prefix("capl").tempdir().unwrap();
        chown_tree(dir.path());
        Self { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Cuts `instance` off the lease store: its requests fail at once, or
    /// hang when `hang` (a black-holed connection).
    pub fn partition(&self, instance: &str, hang: bool) {
        let sentinel = capstan::instance::lease::FileLease::sentinel(self.path(), instance);
        std::fs::write(&sentinel, if hang { "hang" } else { "" }).unwrap();
    }

    pub fn heal(&self, instance: &str) {
        let sentinel = capstan::instance::lease::FileLease::sentinel(self.path(), instance);
        let _ = std::fs::remove_file(sentinel);
    }

    /// The lease document as last written, if any.
    pub fn read(&self, name: &str) -> Option<LeaseFile> {
        let text = std::fs::read_to_string(self.path().join(format!("{name}.json"))).ok()?;
        let value: serde_json::Value = serde_json::from_str(&text).ok()?;
        let spec = &value["spec"];
        Some(LeaseFile {
            version: value["metadata"]["resourceVersion"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            holder: spec["holderIdentity"].as_str().map(str::to_string),
            renew_time: spec["renewTime"].as_str().and_then(|t| t.parse().ok()),
            transitions: spec["leaseTransitions"].as_i64(),
        })
    }
}

/// The parts of a lease file the tests look at.
#[derive(Debug, Clone, PartialEq)]
pub struct LeaseFile {
    pub version: String,
    pub holder: Option<String>,
    pub renew_time: Option<jiff::Timestamp>,
    pub transitions: Option<i64>,
}

/// The server's clock (a restore target must be on its clock, not ours).
pub async fn server_now(c: &tokio_postgres::Client) -> jiff::Timestamp {
    let us: i64 = c
        .query_one(
            "SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    jiff::Timestamp::from_microsecond(us).unwrap()
}

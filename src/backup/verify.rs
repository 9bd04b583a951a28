//! Proving a backup restorable: restore one label into a scratch directory,
//! recover to the backup's end, start PostgreSQL there (local socket only,
//! archiving off, so it never touches the source's repository or clients),
//! check it, stop it and remove the directory, whatever happened.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::Command;

use super::command::{Restore, RestoreTarget};
use super::runner::{RunError, Runner};
use crate::agents::pid1;

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("cannot prepare the scratch directory {path}: {source}")]
    Scratch {
        path: String,
        source: std::io::Error,
    },
    #[error("restoring backup {label} failed: {source}")]
    Restore { label: String, source: RunError },
    #[error("the restored copy of {label} did not start: {message}")]
    Start { label: String, message: String },
    #[error("the restored copy of {label} did not finish recovery within {after:?}: {message}")]
    Recovery {
        label: String,
        after: Duration,
        message: String,
    },
    #[error("checking the restored copy of {label} failed: {message}")]
    Check { label: String, message: String },
    #[error("pg_amcheck found corruption in the restored copy of {label}: {output}")]
    Corrupt { label: String, output: String },
    #[error(
        "the restored copy of {label} lacks the sentinel: {query:?} in database {database} returned no {expected:?}"
    )]
    SentinelMissing {
        label: String,
        database: String,
        query: String,
        expected: String,
    },
}

/// A value written before the backup began that must be in the copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sentinel {
    pub database: String,
    /// A query whose first column, as text, must equal `expected` in some row.
    pub query: String,
    pub expected: String,
}

/// What to verify and where.
#[derive(Debug, Clone)]
pub struct Verification {
    pub label: String,
    pub repo: Option<u32>,
    /// Created for the run and removed after it; must not exist yet.
    pub scratch: PathBuf,
    /// The PostgreSQL binaries of the backup's major version.
    pub bin_dir: PathBuf,
    /// A free port for the copy (it listens on a socket in `scratch` only).
    pub port: u16,
    /// The superuser to check as (the source's).
    pub user: String,
    pub sentinel: Option<Sentinel>,
    /// How long recovery may take before the copy counts as broken.
    pub recovery_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Amcheck {
    /// Every database was checked (heap and B-tree indexes).
    Passed { databases: usize },
    /// No `pg_amcheck` in the bin dir or no amcheck extension available.
    NotAvailable,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    pub label: String,
    pub restore: Duration,
    /// From starting the copy to it leaving recovery.
    pub recovery: Duration,
    pub checks: Duration,
    pub total: Duration,
    /// `pg_class` rows per database.
    pub relations: Vec<(String, i64)>,
    pub amcheck: Amcheck,
    pub sentinel_found: bool,
}

/// A postmaster started for the check; stopped when dropped, so an error
/// return never leaves it running.
struct Server {
    child: Option<pid1::Tracked>,
}

impl Server {
    async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = Pid::from_raw(child.pid() as i32);
        // Fast shutdown; immediate if it hangs (the copy is thrown away).
        let _ = kill(pid, Signal::SIGINT);
        if tokio::time::timeout(Duration::from_secs(30), child.wait())
            .await
            .is_err()
        {
            let _ = kill(pid, Signal::SIGQUIT);
            let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            let _ = kill(Pid::from_raw(child.pid() as i32), Signal::SIGQUIT);
        }
    }
}

fn chown(path: &Path, run_as: Option<(u32, u32)>) -> std::io::Result<()> {
    if let Some((uid, gid)) = run_as {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))?;
    }
    Ok(())
}

/// Restores `v.label` and checks the copy. The scratch directory is removed
/// afterwards in every case.
pub async fn verify_by_restore(
    runner: &Runner,
    v: &Verification,
) -> Result<VerifyReport, VerifyError> {
    let started = Instant::now();
    let mut server = Server { child: None };
    let result = run(runner, v, &mut server, started).await;
    server.stop().await;
    if let Err(e) = tokio::fs::remove_dir_all(&v.scratch).await
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(target: "capstan::backup", scratch = %v.scratch.display(), error = %e, "cannot remove the verification directory");
    }
    match &result {
        Ok(r) => {
            tracing::info!(target: "capstan::backup", label = %v.label, total = ?r.total, "backup verified by restore")
        }
        Err(e) => {
            tracing::warn!(target: "capstan::backup", label = %v.label, error = %e, "backup verification failed")
        }
    }
    result
}

async fn run(
    runner: &Runner,
    v: &Verification,
    server: &mut Server,
    started: Instant,
) -> Result<VerifyReport, VerifyError> {
    let label = v.label.clone();
    let data = v.scratch.join("pgdata");
    let socket = v.scratch.join("socket");
    let scratch_err = |source| VerifyError::Scratch {
        path: v.scratch.display().to_string(),
        source,
    };
    // create_dir (not _all) for the scratch itself: refuse an existing one
    // rather than restoring over something.
    tokio::fs::create_dir(&v.scratch)
        .await
        .map_err(scratch_err)?;
    for dir in [&v.scratch, &socket] {
        if dir != &v.scratch {
            tokio::fs::create_dir(dir).await.map_err(scratch_err)?;
        }
        chown(dir, runner.run_as).map_err(scratch_err)?;
    }
    // Local trust only: the socket directory is private to the scratch.
    let hba = v.scratch.join("verify_hba.conf");
    tokio::fs::write(&hba, "local all all trust\n")
        .await
        .map_err(scratch_err)?;
    chown(&hba, runner.run_as).map_err(scratch_err)?;

    let mut restore = Restore::new(&data, RestoreTarget::EndOfBackup);
    restore.set = Some(v.label.clone());
    restore.repo = v.repo;
    restore.archive_off = true;
    let t = Instant::now();
    runner
        .restore(restore)
        .await
        .map_err(|source| VerifyError::Restore {
            label: label.clone(),
            source,
        })?;
    let restore_time = t.elapsed();

    // Command-line settings win over every file the copy brought along.
    let log = v.scratch.join("postgres.log");
    let log_file = std::fs::File::create(&log).map_err(scratch_err)?;
    chown(&log, runner.run_as).map_err(scratch_err)?;
    let settings = [
        format!("port={}", v.port),
        "listen_addresses=".into(),
        format!("unix_socket_directories={}", socket.display()),
        format!("hba_file={}", hba.display()),
        "ssl=off".into(),
        "archive_mode=off".into(),
        "synchronous_standby_names=".into(),
        "primary_conninfo=".into(),
        "primary_slot_name=".into(),
        "hot_standby=on".into(),
        "logging_collector=off".into(),
        "log_destination=stderr".into(),
    ];
    let mut cmd = Command::new(v.bin_dir.join("postgres"));
    cmd.arg("-D").arg(&data);
    for s in &settings {
        cmd.arg("-c").arg(s);
    }
    cmd.stdin(std::process::Stdio::null())
        .stdout(log_file.try_clone().map_err(scratch_err)?)
        .stderr(log_file)
        .kill_on_drop(true)
        .env("LC_ALL", "C");
    if let Some((uid, gid)) = runner.run_as {
        cmd.uid(uid).gid(gid);
    }
    let t = Instant::now();
    server.child = Some(pid1::spawn(&mut cmd).map_err(|e| VerifyError::Start {
        label: label.clone(),
        message: e.to_string(),
    })?);

    let log_tail = |log: &Path| {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(5)..].join(" | ")
    };
    let mut config = tokio_postgres::Config::new();
    config
        .host_path(&socket)
        .port(v.port)
        .user(&v.user)
        .dbname("postgres")
        .connect_timeout(Duration::from_secs(5));
    // `pg_is_in_recovery()` turns false once the copy promoted at the
    // backup's end; the server accepts connections earlier (hot standby).
    let deadline = Instant::now() + v.recovery_timeout;
    let client = loop {
        if let Some(child) = server.child.as_mut()
            && let Ok(Some(status)) = child.child.try_wait()
        {
            return Err(VerifyError::Start {
                label,
                message: format!("postgres exited ({status}): {}", log_tail(&log)),
            });
        }
        if let Ok(client) = connect(&config).await
            && let Ok(row) = client.query_one("SELECT pg_is_in_recovery()", &[]).await
            && !row.get::<_, bool>(0)
        {
            break client;
        }
        if Instant::now() > deadline {
            return Err(VerifyError::Recovery {
                label,
                after: v.recovery_timeout,
                message: log_tail(&log),
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let recovery = t.elapsed();

    let t = Instant::now();
    let check_err = |e: tokio_postgres::Error| VerifyError::Check {
        label: label.clone(),
        message: e.to_string(),
    };
    let databases: Vec<String> = client
        .query(
            "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate ORDER BY datname",
            &[],
        )
        .await
        .map_err(check_err)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut relations = vec![];
    for db in &databases {
        let c = connect(config.clone().dbname(db))
            .await
            .map_err(check_err)?;
        let n: i64 = c
            .query_one("SELECT count(*) FROM pg_class", &[])
            .await
            .map_err(check_err)?
            .get(0);
        relations.push((db.clone(), n));
    }
    let amcheck_available = client
        .query_opt(
            "SELECT 1 FROM pg_available_extensions WHERE name = 'amcheck'",
            &[],
        )
        .await
        .map_err(check_err)?
        .is_some();
    let pg_amcheck = v.bin_dir.join("pg_amcheck");
    let amcheck = if amcheck_available && pg_amcheck.is_file() {
        let mut cmd = Command::new(&pg_amcheck);
        cmd.arg("--host")
            .arg(&socket)
            .arg("--port")
            .arg(v.port.to_string())
            .arg("--username")
            .arg(&v.user)
            .arg("--all")
            // The copy is thrown away, so creating the extension is harmless.
            .arg("--install-missing")
            .arg("--no-password");
        if let Some((uid, gid)) = runner.run_as {
            cmd.uid(uid).gid(gid);
        }
        let out = crate::instance::process::run_tool("pg_amcheck", &mut cmd).await;
        match out {
            Ok(_) => Amcheck::Passed {
                databases: databases.len(),
            },
            Err(e) => {
                return Err(VerifyError::Corrupt {
                    label,
                    output: e.to_string(),
                });
            }
        }
    } else {
        Amcheck::NotAvailable
    };
    let sentinel_found = match &v.sentinel {
        None => false,
        Some(s) => {
            let c = connect(config.clone().dbname(&s.database))
                .await
                .map_err(check_err)?;
            let found = c
                .simple_query(&s.query)
                .await
                .map_err(check_err)?
                .iter()
                .any(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(row) => {
                        row.get(0) == Some(s.expected.as_str())
                    }
                    _ => false,
                });
            if !found {
                return Err(VerifyError::SentinelMissing {
                    label,
                    database: s.database.clone(),
                    query: s.query.clone(),
                    expected: s.expected.clone(),
                });
            }
            true
        }
    };
    Ok(VerifyReport {
        label,
        restore: restore_time,
        recovery,
        checks: t.elapsed(),
        total: started.elapsed(),
        relations,
        amcheck,
        sentinel_found,
    })
}

async fn connect(
    config: &tokio_postgres::Config,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

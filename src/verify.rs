//! `capstan verify`: the one process of a verification pod. Renders
//! `pgbackrest.conf` from the cluster's `instance.json` and the mounted
//! repository credentials (as the instance managers do), restores one
//! backup into the scratch volume with [`verify_by_restore`], and leaves
//! a [`VerifyResult`] in the termination message, where the operator reads
//! it. Exits non-zero when the verification failed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::backup::config::{self as backrest, BackrestConfig, ClientTls, Secrets, Stanza};
use crate::backup::verify::{Amcheck, VerifyReport};
use crate::backup::{Runner, Sentinel, Verification, VerifyError, verify_by_restore};
use crate::contract::layout;
use crate::contract::settings::InstanceSettings;
use crate::contract::verify::{self as contract, VerifyResult};
use crate::instance::binaries::{self, Binaries};
use crate::postgres::roles;

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// pgBackRest label of the backup, e.g. `20261204-100000F`.
    #[arg(long)]
    pub label: String,
    /// 1-based repository number (`repoN`) holding it.
    #[arg(long, default_value_t = 1)]
    pub repository: u32,
    /// Name of the `PostgresBackup`: its sentinel row must be in the copy.
    #[arg(long)]
    pub sentinel: Option<String>,
    /// Directory of the PostgreSQL binaries [default: `postgres` on PATH,
    /// else /usr/lib/postgresql/<version>/bin].
    #[arg(long, env = "CAPSTAN_PG_BIN_DIR")]
    pub pg_bin_dir: Option<PathBuf>,
    /// pgBackRest [default: next to the PostgreSQL binaries, else on PATH].
    #[arg(long, env = "CAPSTAN_PGBACKREST")]
    pub pgbackrest: Option<PathBuf>,
    /// Directory of the mounted ConfigMap (holds `instance.json`).
    #[arg(long, env = "CAPSTAN_CONFIG_DIR", default_value = layout::CONFIG_DIR)]
    pub config_dir: PathBuf,
    /// Restored into; must not exist (it is created and removed).
    #[arg(long, default_value = layout::VERIFY_SCRATCH)]
    pub scratch: PathBuf,
    /// pgBackRest's configuration, logs, locks and spool.
    #[arg(long, env = "CAPSTAN_BACKREST_DIR", default_value = layout::BACKREST_DIR)]
    pub backrest_dir: PathBuf,
    /// Port of the restored copy (on a Unix socket in the scratch only).
    #[arg(long, default_value_t = layout::POSTGRES_PORT)]
    pub port: u16,

    /// The certificate that reaches a repository host (volume repositories).
    #[arg(long, default_value = layout::BACKREST_TLS_DIR)]
    pub backrest_tls_dir: PathBuf,
    /// Where the result goes (the container's `terminationMessagePath`).
    #[arg(long, default_value = layout::TERMINATION_LOG)]
    pub termination_log: PathBuf,
    /// How long recovery to the backup's end may take.
    #[arg(long, default_value_t = 3600)]
    pub recovery_timeout_seconds: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error("cannot read {path}: {message}; the pod mounts the cluster's ConfigMap there")]
    Settings { path: String, message: String },
    #[error(
        "cluster {0} has no spec.backup in its settings: nothing to restore from (was spec.backup removed?)"
    )]
    NoBackup(String),
    #[error("repository {0} is not configured for this cluster")]
    NoRepository(u32),
    #[error("{0}")]
    Binaries(#[from] binaries::BinariesError),
    #[error("cannot write pgbackrest.conf: {0}")]
    Config(#[from] backrest::ConfigError),
    #[error("cannot create {path}: {source}")]
    Dir {
        path: String,
        source: std::io::Error,
    },
}

/// Runs the verification and writes its result; `Err` when it failed.
pub fn run(args: Args) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    let result = runtime.block_on(verify(&args));
    let message = result.to_message();
    if let Err(e) = std::fs::write(&args.termination_log, &message) {
        tracing::warn!(path = %args.termination_log.display(), error = %e, "cannot write the termination message; the operator falls back to the log");
    }
    // The last line of the log is the result too (FallbackToLogsOnError).
    println!("{message}");
    if result.passed {
        Ok(())
    } else {
        Err(format!(
            "verification of {} failed: {}",
            result.label,
            result.error.unwrap_or_default()
        ))
    }
}

/// The verification, from the pod's files to its result.
pub async fn verify(args: &Args) -> VerifyResult {
    let started = std::time::Instant::now();
    let failed = |error: String| VerifyResult {
        passed: false,
        label: args.label.clone(),
        total_seconds: seconds(started.elapsed()),
        error: Some(error),
        ..VerifyResult::default()
    };
    let (runner, verification) = match prepare(args).await {
        Ok(p) => p,
        Err(e) => return failed(e.to_string()),
    };
    tracing::info!(label = %args.label, repository = args.repository, stanza = %runner.stanza, "verifying the backup by restoring it");
    let mut result = match verify_by_restore(&runner, &verification).await {
        Ok(report) => passed(&report, args.sentinel.is_some()),
        Err(e) => failure(&args.label, &e),
    };
    result.total_seconds = seconds(started.elapsed());
    result
}

fn seconds(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}

fn passed(r: &VerifyReport, sentinel: bool) -> VerifyResult {
    VerifyResult {
        passed: true,
        label: r.label.clone(),
        restore_seconds: Some(seconds(r.restore)),
        recovery_seconds: Some(seconds(r.recovery)),
        checks_seconds: Some(seconds(r.checks)),
        total_seconds: seconds(r.total),
        databases: r.relations.len(),
        amcheck: Some(
            match r.amcheck {
                Amcheck::Passed { .. } => "Passed",
                Amcheck::NotAvailable => "NotAvailable",
            }
            .into(),
        ),
        sentinel_found: sentinel.then_some(r.sentinel_found),
        error: None,
    }
}

fn failure(label: &str, e: &VerifyError) -> VerifyResult {
    VerifyResult {
        passed: false,
        label: label.to_string(),
        amcheck: matches!(e, VerifyError::Corrupt { .. }).then(|| "Failed".into()),
        sentinel_found: matches!(e, VerifyError::SentinelMissing { .. }).then_some(false),
        error: Some(e.to_string()),
        ..VerifyResult::default()
    }
}

/// The user PostgreSQL runs as when this runs as root (tests): `postgres`.
fn run_as() -> Option<(u32, u32)> {
    if !nix::unistd::geteuid().is_root() {
        return None;
    }
    let user = nix::unistd::User::from_name(roles::SUPERUSER).ok()??;
    Some((user.uid.as_raw(), user.gid.as_raw()))
}

fn make_dir(path: &Path, owner: Option<(u32, u32)>) -> Result<(), PrepareError> {
    use std::os::unix::fs::DirBuilderExt;
    let err = |source| PrepareError::Dir {
        path: path.display().to_string(),
        source,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(err)?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(err)?;
    }
    Ok(())
}

/// pgbackrest.conf for the cluster's repositories, and what to verify.
async fn prepare(args: &Args) -> Result<(Runner, Verification), PrepareError> {
    let path = args.config_dir.join(layout::files::INSTANCE_SETTINGS);
    let settings: InstanceSettings = std::fs::read_to_string(&path)
        .map_err(|e| e.to_string())
        .and_then(|text| serde_json::from_str(&text).map_err(|e| e.to_string()))
        .map_err(|message| PrepareError::Settings {
            path: path.display().to_string(),
            message,
        })?;
    let backup = settings
        .backup
        .clone()
        .ok_or_else(|| PrepareError::NoBackup(settings.cluster.clone()))?;
    if args.repository == 0 || args.repository as usize > backup.repositories.len() {
        return Err(PrepareError::NoRepository(args.repository));
    }
    let bins = Binaries::resolve(args.pg_bin_dir.as_deref(), settings.postgres_version).await?;
    let tool = binaries::pgbackrest_path(args.pgbackrest.as_deref(), Some(&bins.dir));
    binaries::check_pgbackrest(&tool).await?;
    let owner = run_as();
    let dir = &args.backrest_dir;
    let config = BackrestConfig {
        stanza: Stanza {
            name: backup.stanza.clone(),
            pg_path: args.scratch.join("pgdata"),
            pg_port: args.port,
            pg_socket_path: args.scratch.join("socket"),
            pg_user: roles::SUPERUSER.to_string(),
        },
        repositories: backup.repositories.clone(),
        log_path: dir.join("log"),
        lock_path: dir.join("lock"),
        spool_path: dir.join("spool"),
        process_max: 2,
        archive_timeout: Duration::from_secs(60),
        archive_push_queue_max: None,
        server: None,
        client_tls: ClientTls::when_needed(&backup.repositories, &args.backrest_tls_dir),
    };
    make_dir(dir, owner)?;
    for d in [&config.log_path, &config.lock_path, &config.spool_path] {
        make_dir(d, owner)?;
    }
    let secrets = Secrets::load(&backup.repositories)?;
    let file = dir.join("pgbackrest.conf");
    backrest::write(&file, &backrest::render(&config, &secrets)?, owner)?;
    let mut runner = Runner::new(&tool, &file, &backup.stanza);
    runner.run_as = owner;
    let runner = runner.with_timeout(Duration::from_secs(24 * 3600));
    let verification = Verification {
        label: args.label.clone(),
        repo: Some(args.repository),
        scratch: args.scratch.clone(),
        bin_dir: bins.dir.clone(),
        port: args.port,
        user: roles::SUPERUSER.to_string(),
        sentinel: args.sentinel.as_ref().map(|name| Sentinel {
            database: contract::SENTINEL_DATABASE.to_string(),
            query: contract::sentinel_query(name),
            expected: name.clone(),
        }),
        recovery_timeout: Duration::from_secs(args.recovery_timeout_seconds),
    };
    Ok((runner, verification))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(dir: &Path) -> Args {
        Args {
            label: "20261204-100000F".into(),
            repository: 1,
            sentinel: Some("db-full".into()),
            pg_bin_dir: None,
            pgbackrest: None,
            config_dir: dir.join("config"),
            scratch: dir.join("scratch"),
            backrest_dir: dir.join("backrest"),
            port: 5432,
            backrest_tls_dir: dir.join("tls"),
            termination_log: dir.join("termination-log"),
            recovery_timeout_seconds: 60,
        }
    }

    #[tokio::test]
    async fn missing_settings_fail_with_where_they_were_looked_for() {
        let dir = tempfile::tempdir().unwrap();
        let r = verify(&args(dir.path())).await;
        assert!(!r.passed);
        assert_eq!(r.label, "20261204-100000F");
        let e = r.error.unwrap();
        assert!(
            e.contains("instance.json") && e.contains("ConfigMap"),
            "{e}"
        );
    }

    #[test]
    fn errors_say_what_was_checked() {
        let e = VerifyError::SentinelMissing {
            label: "L".into(),
            database: "postgres".into(),
            query: "q".into(),
            expected: "db-full".into(),
        };
        let r = failure("L", &e);
        assert_eq!(r.sentinel_found, Some(false));
        assert_eq!(r.amcheck, None);
        let r = failure(
            "L",
            &VerifyError::Corrupt {
                label: "L".into(),
                output: "bad".into(),
            },
        );
        assert_eq!(r.amcheck.as_deref(), Some("Failed"));
        assert!(r.error.unwrap().contains("corruption"));
    }
}

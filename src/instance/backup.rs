//! Backups on the instance: `pgbackrest.conf` built from the settings, the
//! stanza (created by the primary once per configuration), the report on
//! WAL archiving, and the one backup job an instance runs at a time.
//!
//! The manager loop keeps the configuration and the stanza in step; the
//! API starts jobs here directly, so a request never waits behind a long
//! tick. pgBackRest runs in background tasks; their outcome lands in
//! [`Backups`], which `/status` reads.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::backup::command::{Operation, Standby};
use crate::backup::config::{BackrestConfig, ClientTls, Stanza, TlsServer};
use crate::backup::info::{self, StanzaInfo};
use crate::backup::runner::{RunError, Runner};
use crate::contract::backup::{
    ArchiveReport, BackupJob, BackupRequest, BackupResult, BackupSettings, JobPhase,
};
use crate::postgres::roles;

use super::inputs::Inputs;
use super::local::{Archiver, Local};
use super::state::CommandError;

mod inventory;

/// stanza-create talks to the repository once; a minute is generous.
const STANZA_TIMEOUT: Duration = Duration::from_secs(600);
/// A full backup of a large database takes hours; the operator decides
/// when a backup is overdue, this only stops a wedged pgBackRest.
const BACKUP_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
const INFO_TIMEOUT: Duration = Duration::from_secs(300);
const STANZA_RETRY_MIN: Duration = Duration::from_secs(5);
const STANZA_RETRY_MAX: Duration = Duration::from_secs(300);

/// pgbackrest.conf for this instance: the stanza is the local PostgreSQL
/// over its socket; logs, locks and the spool under the pod-local dir.
pub fn backrest_config(inputs: &Inputs, settings: &BackupSettings) -> BackrestConfig {
    let dir = &inputs.backrest_dir;
    BackrestConfig {
        stanza: Stanza {
            name: settings.stanza.clone(),
            pg_path: inputs.data_dir.clone(),
            pg_port: inputs.postgres_port,
            pg_socket_path: inputs.run_dir.clone(),
            pg_user: roles::SUPERUSER.to_string(),
        },
        repositories: settings.repositories.clone(),
        log_path: dir.join("log"),
        lock_path: dir.join("lock"),
        spool_path: dir.join("spool"),
        process_max: 2,
        // pgBackRest's wait for a segment to reach the repository during a
        // backup: at least PostgreSQL's archive_timeout, and not too short
        // for a slow object store.
        archive_timeout: Duration::from_secs(settings.archive_timeout_seconds.max(60)),
        archive_push_queue_max: None,
        server: settings.standby_backups.as_ref().map(|s| {
            let tls = inputs.backrest_tls();
            TlsServer {
                address: inputs.listen_address.clone(),
                port: s.port,
                cert_file: tls.cert,
                key_file: tls.key,
                ca_file: tls.ca,
                client_name: s.client_name.clone(),
            }
        }),
        client_tls: ClientTls::when_needed(
            &settings.repositories,
            &inputs
                .tls_dir
                .join(crate::contract::layout::mounts::BACKREST_TLS),
        ),
    }
}

/// How a standby of this cluster takes a backup: the primary's pgBackRest
/// server through the `-rw` name, and where the primary keeps its data.
pub fn standby_source(inputs: &Inputs, settings: &BackupSettings) -> Option<Standby> {
    let s = settings.standby_backups.as_ref()?;
    let tls = inputs.backrest_tls();
    Some(Standby {
        primary_host: s.primary_host.clone(),
        port: s.primary_port,
        cert_file: tls.cert,
        key_file: tls.key,
        ca_file: tls.ca,
        pg_path: s.primary_pg_path.clone(),
        pg_port: s.primary_pg_port,
        pg_socket_path: s.primary_socket_path.clone(),
        pg_user: roles::SUPERUSER.to_string(),
    })
}

/// The directories pgbackrest.conf names, created before pgBackRest runs.
pub fn backrest_dirs(config: &BackrestConfig) -> [PathBuf; 3] {
    [
        config.log_path.clone(),
        config.lock_path.clone(),
        config.spool_path.clone(),
    ]
}

/// What to do with a `POST /backup`.
#[derive(Debug, Clone, PartialEq)]
pub enum Admission {
    /// The same backup was asked for before: its job, as it is.
    Existing(Box<BackupJob>),
    Start,
    Refused(CommandError),
}

/// One job at a time; asking again for the same backup is harmless; a
/// backup runs on the primary, or on a standby when it says so.
pub fn admit(
    current: Option<&BackupJob>,
    request: &BackupRequest,
    primary: bool,
    repositories: usize,
) -> Admission {
    if let Some(job) = current
        && job.backup == request.backup
    {
        return Admission::Existing(Box::new(job.clone()));
    }
    match (request.standby, primary) {
        (false, false) => {
            return Admission::Refused(CommandError::Conflict(
                "backups run on the primary; this instance is not the primary".into(),
            ));
        }
        (true, true) => {
            return Admission::Refused(CommandError::Conflict(
                "a backup from a standby runs on a replica; this instance is the primary".into(),
            ));
        }
        _ => {}
    }
    if let Some(job) = current
        && job.phase == JobPhase::Running
    {
        return Admission::Refused(CommandError::Conflict(format!(
            "backup {} is running on this instance; {} must wait until it finishes",
            job.backup, request.backup
        )));
    }
    if request.repository == 0 || request.repository as usize > repositories {
        return Admission::Refused(CommandError::Conflict(format!(
            "repository {} is not configured: the cluster has {repositories} (repo1..repo{repositories})",
            request.repository
        )));
    }
    Admission::Start
}

/// The label pgBackRest logs for a new backup (`new backup label = …`)
/// when its console log level shows it.
pub fn label_in_output(output: &str) -> Option<String> {
    output.lines().rev().find_map(|line| {
        let (_, rest) = line.split_once("new backup label = ")?;
        let label = rest.split_whitespace().next()?;
        crate::backup::command::valid_label(label).then(|| label.to_string())
    })
}

/// The backup a job made, from `info` after it finished: the newest of
/// its type in its repository that started no earlier than the job.
pub fn label_in_info(
    info: &StanzaInfo,
    request: &BackupRequest,
    started: jiff::Timestamp,
) -> Option<String> {
    let earliest = started.as_second().saturating_sub(1);
    info.backups
        .iter()
        .filter(|b| b.repo == request.repository && b.kind == request.kind)
        .filter(|b| b.start.as_second() >= earliest)
        .max_by_key(|b| (b.stop, b.label.clone()))
        .map(|b| b.label.clone())
}

/// RFC 3339 with a fixed number of digits, so texts sort as times do
/// ([`ArchiveReport::failing`] compares them).
pub fn rfc3339(at: jiff::Timestamp) -> String {
    at.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

fn from_micros(us: Option<i64>) -> Option<String> {
    us.and_then(|us| jiff::Timestamp::from_microsecond(us).ok())
        .map(rfc3339)
}

fn result_of(backup: &info::Backup) -> BackupResult {
    BackupResult {
        label: backup.label.clone(),
        lsn_start: backup.lsn_start.clone(),
        lsn_stop: backup.lsn_stop.clone(),
        wal_start: backup.wal_start.clone(),
        wal_stop: backup.wal_stop.clone(),
        size: Some(backup.size),
        repository_size: Some(backup.repo_delta),
        started_at: Some(rfc3339(backup.start)),
        stopped_at: Some(rfc3339(backup.stop)),
    }
}

/// pgBackRest's own words when it failed, else what went wrong.
fn message(e: &RunError) -> String {
    e.pgbackrest_message()
        .map(str::to_string)
        .unwrap_or_else(|| e.to_string())
}

/// The stanza: created once per configuration version, retried with a
/// growing pause while it fails.
#[derive(Debug, Default, Clone)]
struct StanzaState {
    /// The configuration version stanza-create succeeded for.
    done_for: Option<u64>,
    running: bool,
    error: Option<String>,
    retry_at: Option<Instant>,
    backoff: Duration,
}

impl StanzaState {
    fn due(&self, version: u64, now: Instant) -> bool {
        self.done_for != Some(version) && !self.running && self.retry_at.is_none_or(|t| now >= t)
    }

    fn failed(&mut self, now: Instant, error: String) {
        self.running = false;
        self.error = Some(error);
        self.backoff = (self.backoff * 2).clamp(STANZA_RETRY_MIN, STANZA_RETRY_MAX);
        self.retry_at = Some(now + self.backoff);
    }

    fn succeeded(&mut self, version: u64) {
        *self = Self {
            done_for: Some(version),
            ..Self::default()
        };
    }
}

#[derive(Default)]
struct Inner {
    /// Set once pgbackrest.conf is written for the current settings.
    runner: Option<Runner>,
    version: u64,
    repositories: usize,
    /// Set when this cluster takes backups on standbys.
    standby: Option<Standby>,
    /// Why backups cannot run here (not configured, no pgBackRest, …).
    unavailable: Option<String>,
    stanza: StanzaState,
    job: Option<BackupJob>,
    inventory: inventory::InventoryState,
}

/// Backups on this instance, shared by the loop and the API.
#[derive(Default)]
pub struct Backups {
    inner: Mutex<Inner>,
}

impl Backups {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// pgbackrest.conf of `version` is in place: pgBackRest may run.
    pub fn configure(
        &self,
        runner: Runner,
        version: u64,
        repositories: usize,
        standby: Option<Standby>,
    ) {
        let mut inner = self.lock();
        if inner.version != version {
            inner.stanza.retry_at = None;
            inner.stanza.backoff = Duration::ZERO;
            inner.inventory.reset();
        }
        inner.runner = Some(runner);
        inner.version = version;
        inner.repositories = repositories;
        inner.standby = standby;
        inner.unavailable = None;
    }

    /// Backups cannot run here, and why.
    pub fn disable(&self, why: String) {
        let mut inner = self.lock();
        inner.runner = None;
        inner.unavailable = Some(why);
        inner.stanza = StanzaState::default();
        inner.inventory.reset();
    }

    /// What pgBackRest runs here now, if anything (a backup, stanza-create).
    pub fn busy(&self) -> Option<String> {
        let inner = self.lock();
        if let Some(job) = inner.job.as_ref().filter(|j| j.phase == JobPhase::Running) {
            return Some(format!("backup {} is running", job.backup));
        }
        inner
            .stanza
            .running
            .then(|| "pgBackRest's stanza-create is running".to_string())
    }

    pub fn job(&self) -> Option<BackupJob> {
        self.lock().job.clone()
    }

    /// Starts stanza-create in the background when it is due (primary only).
    pub fn ensure_stanza(self: &Arc<Self>) {
        let (runner, version) = {
            let mut inner = self.lock();
            let version = inner.version;
            let Some(runner) = inner.runner.clone() else {
                return;
            };
            if !inner.stanza.due(version, Instant::now()) {
                return;
            }
            inner.stanza.running = true;
            (runner, version)
        };
        let this = self.clone();
        tokio::spawn(tracing::Instrument::in_current_span(async move {
            let runner = runner.with_timeout(STANZA_TIMEOUT);
            tracing::info!(operation = "stanza-create", stanza = %runner.stanza, "creating the stanza");
            let result = runner.stanza_create_or_upgrade().await;
            let mut inner = this.lock();
            if inner.version != version {
                // The configuration changed meanwhile: the next tick runs it again.
                inner.stanza.running = false;
                return;
            }
            match result {
                Ok(_) => {
                    tracing::info!(operation = "stanza-create", stanza = %runner.stanza, "stanza ready");
                    inner.stanza.succeeded(version);
                }
                Err(e) => {
                    let text = message(&e);
                    tracing::warn!(operation = "stanza-create", stanza = %runner.stanza, error = %text, "stanza-create failed; retrying");
                    inner.stanza.failed(Instant::now(), text);
                }
            }
        }));
    }

    /// stanza-create succeeded for the current configuration.
    pub fn stanza_ready(&self) -> bool {
        let inner = self.lock();
        inner.runner.is_some() && inner.stanza.done_for == Some(inner.version)
    }

    /// The primary's report on archiving: the stanza and `pg_stat_archiver`.
    pub fn archive_report(&self, archiver: Option<&Archiver>) -> ArchiveReport {
        let inner = self.lock();
        let mut report = ArchiveReport {
            stanza_ready: inner.runner.is_some() && inner.stanza.done_for == Some(inner.version),
            stanza_error: inner.stanza.error.clone().or(inner.unavailable.clone()),
            ..ArchiveReport::default()
        };
        if let Some(a) = archiver {
            report.last_archived_wal = a.last_archived_wal.clone();
            report.last_archived_at = from_micros(a.last_archived_us);
            report.last_failed_wal = a.last_failed_wal.clone();
            report.last_failed_at = from_micros(a.last_failed_us);
            report.archived_count = a.archived_count;
            report.failed_count = a.failed_count;
        }
        report.repositories = inner.inventory.repositories.clone();
        report.inventory_error = inner.inventory.error.clone();
        report
    }

    /// `POST /backup`: the job, started or as it stands. `local` is this
    /// instance's PostgreSQL (for the checkpoint before the backup).
    pub fn request(
        self: &Arc<Self>,
        request: BackupRequest,
        primary: bool,
        local: &Local,
    ) -> Result<BackupJob, CommandError> {
        let mut inner = self.lock();
        let admission = admit(inner.job.as_ref(), &request, primary, inner.repositories);
        let admission = match admission {
            Admission::Existing(job) => return Ok(*job),
            Admission::Refused(e) if !primary => return Err(e),
            other => other,
        };
        // Why backups cannot run at all says more than a repository count.
        let Some(runner) = inner.runner.clone() else {
            return Err(CommandError::Unavailable(
                inner.unavailable.clone().unwrap_or_else(|| {
                    "backups are not configured on this instance yet (no pgbackrest.conf)".into()
                }),
            ));
        };
        if let Admission::Refused(e) = admission {
            return Err(e);
        }
        let standby = match (request.standby, &inner.standby) {
            (false, _) => None,
            (true, Some(s)) => Some(s.clone()),
            (true, None) => {
                return Err(CommandError::Unavailable(
                    "backups from a standby are not configured on this instance (its settings do not have spec.backup.target: preferReplica yet)".into(),
                ));
            }
        };
        if inner.stanza.running {
            return Err(CommandError::Unavailable(
                "stanza-create is running; ask again in a moment".into(),
            ));
        }
        let started = jiff::Timestamp::now();
        let job = BackupJob {
            backup: request.backup.clone(),
            kind: request.kind,
            repository: request.repository,
            phase: JobPhase::Running,
            started_at: rfc3339(started),
            finished_at: None,
            result: None,
            message: None,
        };
        inner.job = Some(job.clone());
        drop(inner);
        let this = self.clone();
        let local = local.clone();
        tokio::spawn(tracing::Instrument::in_current_span(async move {
            // pgBackRest reads pg_control before its own checkpoint, and
            // after a promotion pg_control names the old timeline until the
            // first checkpoint on the new one ends (a spread one, seconds
            // later): pgBackRest would refuse with "WAL timeline 2 does not
            // match pg_control timeline 1". One now leaves little to write
            // for the immediate checkpoint pgBackRest then asks for.
            // The row a verification by restore looks for; a backup is
            // still worth taking without it (its verification then says
            // the sentinel is missing).
            // On a standby the operator had the primary write it.
            if standby.is_none()
                && let Err(e) = local.write_sentinel(&request.backup).await
            {
                tracing::warn!(operation = "backup", backup = %request.backup, error = %e, "cannot write the backup sentinel; starting the backup anyway");
            }
            if let Err(e) = local.checkpoint().await {
                tracing::warn!(operation = "backup", backup = %request.backup, error = %e, "CHECKPOINT before the backup failed; starting it anyway");
            }
            let outcome = run_backup(&runner, &request, standby.as_ref(), started).await;
            let mut inner = this.lock();
            // pgBackRest expired old backups after this one.
            inner.inventory.changed();
            let Some(job) = inner.job.as_mut().filter(|j| j.backup == request.backup) else {
                return;
            };
            job.finished_at = Some(rfc3339(jiff::Timestamp::now()));
            match outcome {
                Ok(result) => {
                    tracing::info!(operation = "backup", backup = %request.backup, label = %result.label, "backup completed");
                    job.phase = JobPhase::Completed;
                    job.result = Some(result);
                }
                Err(text) => {
                    tracing::warn!(operation = "backup", backup = %request.backup, error = %text, "backup failed");
                    job.phase = JobPhase::Failed;
                    job.message = Some(text);
                }
            }
        }));
        Ok(job)
    }
}

/// `pgbackrest backup`, then what `info` recorded about the new backup.
async fn run_backup(
    runner: &Runner,
    request: &BackupRequest,
    standby: Option<&Standby>,
    started: jiff::Timestamp,
) -> Result<BackupResult, String> {
    tracing::info!(operation = "backup", backup = %request.backup, kind = request.kind.as_str(), repository = request.repository, standby = standby.is_some(), "backup starting");
    let runner_long = runner.clone().with_timeout(BACKUP_TIMEOUT);
    let repo = Some(request.repository);
    let out = match standby {
        None => runner_long.backup(request.kind, repo).await,
        Some(s) => runner_long.backup_from_standby(request.kind, repo, s).await,
    }
    .map_err(|e| message(&e))?;
    let info_runner = runner.clone().with_timeout(INFO_TIMEOUT);
    let label = match label_in_output(&out.stdout) {
        Some(label) => label,
        None => {
            let all = info_runner
                .info(Some(request.repository))
                .await
                .map_err(|e| {
                    format!(
                        "the backup finished but pgbackrest info failed: {}",
                        message(&e)
                    )
                })?;
            label_in_info(&all, request, started).ok_or_else(|| {
                "the backup finished but pgbackrest info lists no new backup of this type"
                    .to_string()
            })?
        }
    };
    let op = Operation::Info {
        repo: Some(request.repository),
        set: Some(label.clone()),
    };
    let detail = info_runner.run(&op).await.map_err(|e| {
        format!(
            "backup {label} finished but pgbackrest info failed: {}",
            message(&e)
        )
    })?;
    let stanzas = info::parse(&detail.stdout)
        .map_err(|e| format!("backup {label} finished but its info is unreadable: {e}"))?;
    stanzas
        .iter()
        .find(|s| s.name == runner.stanza)
        .and_then(|s| s.backup(&label))
        .map(result_of)
        .ok_or_else(|| format!("backup {label} finished but pgbackrest info does not list it"))
}

#[cfg(test)]
mod tests;

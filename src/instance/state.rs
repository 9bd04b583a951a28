//! What the manager loop shares with the HTTPS API: the last report, a
//! heartbeat, metrics, and the command channel.

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use crate::contract::instance::{
    DemoteRequest, DemoteResult, InstanceReport, PromoteRequest, PromoteResult, Role,
};

use super::backup::Backups;
use super::fencing::LeaseState;
use super::inputs::Inputs;
use super::local::Local;
use super::metrics::Metrics;

/// Why a command was not carried out, mapped to an HTTP status by the API.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum CommandError {
    /// The cluster's authority or the instance's state says no (409).
    #[error("{0}")]
    Conflict(String),
    /// Not now: postgres not running, authority unreachable, … (503).
    #[error("{0}")]
    Unavailable(String),
    /// It was tried and failed (500).
    #[error("{0}")]
    Failed(String),
}

pub enum Command {
    Promote(
        PromoteRequest,
        oneshot::Sender<Result<PromoteResult, CommandError>>,
    ),
    Demote(
        DemoteRequest,
        oneshot::Sender<Result<DemoteResult, CommandError>>,
    ),
    /// A new binary is installed (its checksum): re-execute into it.
    Reexec(String, oneshot::Sender<Result<(), CommandError>>),
}

pub struct Shared {
    pub inputs: Inputs,
    pub local: Local,
    pub metrics: Metrics,
    pub commands: mpsc::Sender<Command>,
    /// The primary lease and the fence, kept by their own task.
    pub lease: Arc<LeaseState>,
    /// pgBackRest on this instance: the stanza and the backup job.
    pub backups: Arc<Backups>,
    report: RwLock<InstanceReport>,
    heartbeat: Mutex<Instant>,
    busy: Mutex<Option<&'static str>>,
    /// Until when a shutdown skips the smart phase (see `/prepare-stop`).
    fast_stop_until: Mutex<Option<Instant>>,
}

/// How long the loop may go without a heartbeat before `/healthz` fails,
/// unless it is inside a long operation (clone, rewind) that reports itself.
const WEDGED_AFTER: Duration = Duration::from_secs(60);

impl Shared {
    pub fn new(inputs: Inputs, commands: mpsc::Sender<Command>) -> Self {
        let local = Local::new(inputs.run_dir.clone(), inputs.postgres_port);
        let report = empty_report(&inputs.pod);
        let lease = Arc::new(LeaseState::new(inputs.data_dir.clone()));
        Self {
            inputs,
            local,
            metrics: Metrics::new(),
            commands,
            lease,
            backups: Arc::new(Backups::default()),
            report: RwLock::new(report),
            heartbeat: Mutex::new(Instant::now()),
            busy: Mutex::new(None),
            fast_stop_until: Mutex::new(None),
        }
    }

    /// A shutdown within `window` goes straight to a fast shutdown: the
    /// pooler holds its clients, and a session connected directly would
    /// only make everyone wait out the smart phase.
    pub fn stop_fast_within(&self, window: Duration) {
        if let Ok(mut until) = self.fast_stop_until.lock() {
            *until = Some(Instant::now() + window);
        }
    }

    pub fn stops_fast(&self) -> bool {
        self.fast_stop_until
            .lock()
            .ok()
            .and_then(|u| *u)
            .is_some_and(|u| Instant::now() < u)
    }

    /// The last report, with the lease as it is now: a fence shows (and
    /// makes the instance unready) at once, not at the loop's next publish.
    pub fn report(&self) -> InstanceReport {
        let mut report = self
            .report
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        report.lease = self.lease.report();
        // A job's start and end show at once, not at the next publish.
        report.backup = self.backups.job();
        report.agent = Some(crate::agents::binary::build());
        if report.lease.as_ref().is_some_and(|l| l.fenced) {
            report.ready = false;
        }
        report
    }

    pub fn publish(&self, report: InstanceReport) {
        self.metrics.observe_report(&report);
        *self.report.write().unwrap_or_else(|p| p.into_inner()) = report;
    }

    pub fn beat(&self) {
        *self.heartbeat.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    pub fn set_busy(&self, operation: Option<&'static str>) {
        *self.busy.lock().unwrap_or_else(|p| p.into_inner()) = operation;
    }

    pub fn busy(&self) -> Option<&'static str> {
        *self.busy.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Healthy unless the loop stopped beating outside a long operation.
    pub fn health(&self) -> Result<(), String> {
        let since = self
            .heartbeat
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed();
        let busy = *self.busy.lock().unwrap_or_else(|p| p.into_inner());
        match busy {
            _ if since < WEDGED_AFTER => Ok(()),
            Some(_) => Ok(()),
            None => Err(format!(
                "the supervision loop has not run for {}s",
                since.as_secs()
            )),
        }
    }
}

pub fn empty_report(name: &str) -> InstanceReport {
    InstanceReport {
        name: name.to_string(),
        role: Role::Unknown,
        running: false,
        ready: false,
        target_primary: None,
        timeline: None,
        system_identifier: None,
        current_lsn: None,
        receive_lsn: None,
        replay_lsn: None,
        flush_lsn: None,
        lag_bytes: None,
        lag_seconds: None,
        wal_receiver: None,
        pending_restart: false,
        standby_floor_settings: Default::default(),
        version: None,
        postgres_uptime_seconds: None,
        last_error: None,
        postgres_restarts: 0,
        lease: None,
        standbys: vec![],
        archive: None,
        backup: None,
        restore: None,
        upgrade: None,
        parameters_refused: None,
        agent: None,
        data_volume: None,
        settings_digest: None,
        wal_volume: None,
        inactive_slots: vec![],
        tls: Default::default(),
        managed: None,
    }
}

/// Resolves once `shutdown` turns true (or its sender is gone).
pub async fn stopping(shutdown: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await.map(|_| ());
}

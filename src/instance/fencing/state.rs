//! What the keeper knows, shared with the manager loop and the API, and
//! the gate every postmaster start goes through: a writable start and a
//! fence take the same lock, so a fence either prevents the start or stops
//! the new postmaster.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::contract::instance::LeaseReport;
use crate::contract::settings::FencingSettings;

use super::super::process;
use super::super::supervisor::{Mode, PostgresChild, Signaller};

/// What the keeper knows, shared with the manager loop and the API.
pub struct LeaseState {
    inner: Mutex<Inner>,
    data_dir: std::path::PathBuf,
}

#[derive(Default)]
struct Inner {
    settings: Option<FencingSettings>,
    holder: Option<String>,
    /// Start of the last successful write while holding; None when not holding.
    valid_from: Option<Instant>,
    last_renewal: Option<Instant>,
    fenced: bool,
    postmaster: Option<Signaller>,
}

impl Inner {
    fn fence_after(&self) -> Option<Duration> {
        self.settings
            .as_ref()
            .map(|f| Duration::from_millis(f.fence_after_ms))
    }

    fn within_bound(&self) -> bool {
        match (self.valid_from, self.fence_after()) {
            (Some(from), Some(bound)) => from.elapsed() < bound,
            _ => false,
        }
    }

    fn may_write(&self) -> bool {
        self.settings.is_none() || (!self.fenced && self.within_bound())
    }
}

/// The postmaster could not be started writable: the lease is not held.
#[derive(Debug, thiserror::Error)]
pub enum GateError<E> {
    #[error("this instance does not hold the primary lease; it does not start writable")]
    NotHeld,
    #[error(transparent)]
    Spawn(E),
}

impl LeaseState {
    pub fn new(data_dir: std::path::PathBuf) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            data_dir,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `lease` of `GET /status`; None without fencing.
    pub fn report(&self) -> Option<LeaseReport> {
        let inner = self.lock();
        inner.settings.as_ref()?;
        Some(LeaseReport {
            holder: inner.holder.clone(),
            held: !inner.fenced && inner.within_bound(),
            renewed_ms_ago: inner.last_renewal.map(|t| t.elapsed().as_millis() as u64),
            fenced: inner.fenced,
        })
    }

    pub fn enabled(&self) -> bool {
        self.lock().settings.is_some()
    }

    pub(super) fn settings(&self) -> Option<FencingSettings> {
        self.lock().settings.clone()
    }

    pub fn fenced(&self) -> bool {
        self.lock().fenced
    }

    /// The keeper holds the lease (it may still lapse; see [`Self::may_write`]).
    pub fn holding(&self) -> bool {
        let inner = self.lock();
        inner.valid_from.is_some() && !inner.fenced
    }

    /// Whether a primary may accept writes now: no fencing configured, or
    /// the lease held within the fence bound.
    pub fn may_write(&self) -> bool {
        self.lock().may_write()
    }

    /// Starts postgres through `spawn` and registers it for fencing. A
    /// writable start is refused unless the lease is held; the check and the
    /// registration happen under the same lock as a fence, so a fence either
    /// prevents the start or stops the new postmaster.
    pub fn start_postgres<E>(
        &self,
        writable: bool,
        spawn: impl FnOnce() -> Result<PostgresChild, E>,
    ) -> Result<PostgresChild, GateError<E>> {
        let mut inner = self.lock();
        if writable && !inner.may_write() {
            return Err(GateError::NotHeld);
        }
        let child = spawn().map_err(GateError::Spawn)?;
        inner.postmaster = Some(child.signaller());
        Ok(child)
    }

    /// Stops accepting writes now: SIGQUIT to the postmaster (immediate
    /// shutdown), then to every process working in PGDATA.
    pub(super) fn fence(&self, reason: &str) {
        let (postmaster, since) = {
            let mut inner = self.lock();
            let since = inner.last_renewal.map(|t| t.elapsed().as_millis() as u64);
            inner.fenced = true;
            inner.valid_from = None;
            if let Some(pm) = &inner.postmaster {
                pm.signal(Mode::Immediate);
            }
            (inner.postmaster.as_ref().map(Signaller::pid), since)
        };
        let signalled =
            process::signal_processes_in(&self.data_dir, nix::sys::signal::Signal::SIGQUIT);
        tracing::error!(
            operation = "fence",
            reason,
            last_renewal_ms_ago = since,
            postmaster = ?postmaster,
            signalled,
            "FENCED: stopped postgres immediately; no writes until the primary lease is held again"
        );
    }

    /// Start of the last successful renewal, while holding.
    pub fn valid_from(&self) -> Option<Instant> {
        let inner = self.lock();
        inner.valid_from.filter(|_| !inner.fenced)
    }

    /// A new manager image takes over: the lease was held from `from` by
    /// the previous image (the keeper renews it first thing) and `postmaster`
    /// is the one a fence must stop.
    pub fn resume(&self, from: Option<Instant>, holder: &str, postmaster: Option<Signaller>) {
        let mut inner = self.lock();
        if let Some(from) = from {
            inner.valid_from = Some(from);
            inner.last_renewal = Some(from);
            inner.holder = Some(holder.to_string());
        }
        inner.postmaster = postmaster;
    }

    pub(super) fn set_holder(&self, holder: Option<String>) {
        self.lock().holder = holder;
    }

    pub(super) fn held(&self, from: Instant, holder: &str) {
        let mut inner = self.lock();
        inner.valid_from = Some(from);
        inner.last_renewal = Some(from);
        inner.holder = Some(holder.to_string());
        inner.fenced = false;
    }

    pub(super) fn released(&self) {
        let mut inner = self.lock();
        inner.valid_from = None;
        inner.fenced = false;
    }

    pub(super) fn configure(&self, settings: Option<FencingSettings>) {
        let mut inner = self.lock();
        if settings.is_none() {
            inner.valid_from = None;
            inner.fenced = false;
            inner.holder = None;
        }
        inner.settings = settings;
    }
}

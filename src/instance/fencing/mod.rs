//! The primary Lease and self-fencing: a primary accepts writes only while
//! it holds the Lease, and stops PostgreSQL on its own when it cannot show
//! that it still does.
//!
//! # The safety argument
//!
//! Let `S` be the moment (this manager's monotonic clock) the last
//! *successful* renewal request was started. The keeper fences — SIGQUIT to
//! the postmaster and to every process working in PGDATA — at
//! `S + fence_after` at the latest, so PostgreSQL accepts no write after
//! `S + fence_after + t_fence`, where `t_fence` is the time from the
//! deadline to the last process gone (a timer wake-up and a signal; measured
//! by `bench/fencing.sh`).
//!
//! The operator promotes another instance only after it has observed no
//! change of the Lease for `lease_duration`. The renewal that started at `S`
//! reached the API server at some `A ≥ S` and the operator saw it at
//! `O ≥ A`, so the promotion happens at `P ≥ O + lease_duration ≥ S +
//! lease_duration`. Two writable primaries are therefore impossible when
//!
//! ```text
//! fence_after + t_fence + renewal latency < lease_duration
//! (defaults:  2000 ms  +  ≤ 500 ms  +  ≤ 500 ms  <  4000 ms)
//! ```
//!
//! The renewal latency is a cushion for an operator that dates a renewal
//! by the `renewTime` written into it (stamped before the request is sent)
//! or watches with some lag; measuring from the *start* of the request, as
//! the keeper does, is what makes every other delay work in favour of
//! safety. A renewal that hangs is abandoned at the deadline, not awaited.
//!
//! The monotonic clock keeps running while the process is stopped
//! (SIGSTOP, a frozen VM), so a thawed keeper finds its deadline long past:
//! the first thing it does on every wake-up is this check, and it fences
//! before it sends any request (a renewal that was under way when the
//! process stopped counts from its start, so it cannot extend the bound).
//! Because the fence also signals every backend directly, a backend that is
//! still stopped when the keeper wakes dies the moment it resumes (the
//! pending SIGQUIT is delivered before it runs again).
//!
//! The new primary takes the Lease over with a conditional update, and only
//! when it is free, its own, expired by its `renewTime +
//! leaseDurationSeconds` against this machine's clock, or unchanged for
//! `lease_duration` as observed here. The operator has waited out
//! `lease_duration` already, so on clocks in step the lease is expired and
//! the takeover is immediate; the observation is the fallback for a clock
//! that runs behind the old holder's. A holder that is still renewing is
//! not overwritten: its `renewTime` is at most `renew_interval` (plus the
//! request's latency) old, so it cannot look expired unless the two clocks
//! differ by more than `lease_duration - renew_interval`, and every write
//! is conditional on the version read. (Should a takeover still happen, the
//! old holder finds it at its next renewal and fences at once.)
//!
//! Not covered: a manager that is stopped while its PostgreSQL keeps running
//! cannot fence (nothing but the manager watches the Lease); and when a
//! whole pod thaws at once, a backend scheduled before the keeper may finish
//! a commit that was already under way (a window of scheduler latency).

//!
//! The pieces: `decide` holds the pure rules (when a lease may be taken,
//! what a holder writes, when the bound runs out), `keeper` the task that
//! talks to the lease store and fences, `state` what the keeper shares
//! with the manager loop and the API (and the gate every postmaster start
//! goes through); [`LeaseHandle`] is the manager's side of the keeper.

mod decide;
mod keeper;
mod state;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tracing::Instrument;

use crate::contract::settings::FencingSettings;

use super::lease::{LeaseStore, StoreError};

pub use state::{GateError, LeaseState};

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum FenceError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "the primary lease {lease} is held by {holder} (renewed {renewed}); it is still renewed, so this instance may not become primary"
    )]
    HeldBy {
        lease: String,
        holder: String,
        renewed: String,
    },
    #[error("the lease store did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the lease keeper has stopped")]
    Stopped,
}

/// What the manager asks of the keeper.
enum Request {
    Acquire(oneshot::Sender<Result<(), FenceError>>),
    Release(oneshot::Sender<()>),
    Fence(String),
}

/// The manager's side of the keeper.
#[derive(Clone)]
pub struct LeaseHandle {
    requests: mpsc::Sender<Request>,
    config: Arc<watch::Sender<Option<FencingSettings>>>,
    pub state: Arc<LeaseState>,
}

impl LeaseHandle {
    /// Starts the keeper task for `identity` (the pod name).
    pub fn spawn<S: LeaseStore>(store: S, identity: &str, state: Arc<LeaseState>) -> Self {
        Self::spawn_resumed(store, identity, state, None)
    }

    /// Starts the keeper in a new manager image whose predecessor held the
    /// lease from `resumed`: the keeper renews it as soon as it knows the
    /// lease's settings, and fences if it cannot within the bound.
    pub fn spawn_resumed<S: LeaseStore>(
        store: S,
        identity: &str,
        state: Arc<LeaseState>,
        resumed: Option<tokio::time::Instant>,
    ) -> Self {
        let (requests_tx, requests) = mpsc::channel(4);
        let (config_tx, config) = watch::channel(None);
        let keeper = keeper::Keeper::new(store, identity, state.clone(), requests, config, resumed);
        tokio::spawn(keeper.run().in_current_span());
        Self {
            requests: requests_tx,
            config: Arc::new(config_tx),
            state,
        }
    }

    /// The fencing settings from `instance.json` (None: no lease at all).
    /// The shared state learns them at once, so no start slips through
    /// before the keeper has seen them.
    pub fn configure(&self, fencing: Option<FencingSettings>) {
        if self.state.settings() != fencing {
            self.state.configure(fencing.clone());
        }
        self.config.send_if_modified(|current| {
            let changed = *current != fencing;
            *current = fencing;
            changed
        });
    }

    /// Holds the lease (renewing it from now on); Ok at once when it is
    /// held already or fencing is off.
    pub async fn acquire(&self) -> Result<(), FenceError> {
        if !self.state.enabled() || self.state.may_write() {
            return Ok(());
        }
        let (tx, rx) = oneshot::channel();
        self.requests
            .send(Request::Acquire(tx))
            .await
            .map_err(|_| FenceError::Stopped)?;
        rx.await.map_err(|_| FenceError::Stopped)?
    }

    /// Stops renewing and clears the holder if it is still this instance.
    /// Only after postgres stopped (or when it runs as a replica).
    pub async fn release(&self) {
        let (tx, rx) = oneshot::channel();
        if self.requests.send(Request::Release(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// Fences now (a running primary that cannot get the lease).
    pub async fn fence(&self, reason: String) {
        let _ = self.requests.send(Request::Fence(reason)).await;
    }
}

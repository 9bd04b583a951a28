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

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::LeaseSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::Instrument;

use crate::contract::instance::LeaseReport;
use crate::contract::settings::FencingSettings;

use super::lease::{LeaseStore, StoreError, Stored};
use super::process;
use super::supervisor::{Mode, PostgresChild, Signaller};

/// Bound for one lease request when no fence deadline is running.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a takeover re-reads a lease held by someone else.
const TAKEOVER_POLL: Duration = Duration::from_millis(200);

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

    fn settings(&self) -> Option<FencingSettings> {
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
    fn fence(&self, reason: &str) {
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

    fn set_holder(&self, holder: Option<String>) {
        self.lock().holder = holder;
    }

    fn held(&self, from: Instant, holder: &str) {
        let mut inner = self.lock();
        inner.valid_from = Some(from);
        inner.last_renewal = Some(from);
        inner.holder = Some(holder.to_string());
        inner.fenced = false;
    }

    fn released(&self) {
        let mut inner = self.lock();
        inner.valid_from = None;
        inner.fenced = false;
    }

    fn configure(&self, settings: Option<FencingSettings>) {
        let mut inner = self.lock();
        if settings.is_none() {
            inner.valid_from = None;
            inner.fenced = false;
            inner.holder = None;
        }
        inner.settings = settings;
    }
}

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
        let (requests_tx, requests) = mpsc::channel(4);
        let (config_tx, config) = watch::channel(None);
        let keeper = Keeper {
            store,
            me: identity.to_string(),
            state: state.clone(),
            requests,
            config,
            fencing: None,
            held: None,
            seen: None,
        };
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

struct Held {
    stored: Stored,
    /// Start of the last successful write.
    valid_from: Instant,
    next_renewal: Instant,
}

/// Why a lease could be taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Takeover {
    Free,
    Own,
    Expired,
    Unchanged,
}

impl Takeover {
    fn as_str(self) -> &'static str {
        match self {
            Self::Free => "free",
            Self::Own => "own",
            Self::Expired => "expired",
            Self::Unchanged => "unchanged-for-lease-duration",
        }
    }
}

/// A version of the lease and when this keeper first saw it.
struct Seen {
    version: String,
    since: Instant,
}

struct Keeper<S> {
    store: S,
    me: String,
    state: Arc<LeaseState>,
    requests: mpsc::Receiver<Request>,
    config: watch::Receiver<Option<FencingSettings>>,
    fencing: Option<FencingSettings>,
    held: Option<Held>,
    seen: Option<Seen>,
}

fn ms(d: u64) -> Duration {
    Duration::from_millis(d)
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl<S: LeaseStore> Keeper<S> {
    async fn run(mut self) {
        loop {
            // First on every wake-up, before any request: a keeper that was
            // stopped (or starved) past its bound fences right away.
            self.check_bound();
            let deadline = self.deadline();
            let renewal = self.held.as_ref().map(|h| h.next_renewal);
            tokio::select! {
                biased;
                _ = sleep_until(deadline) => {
                    self.fence_for_silence();
                }
                changed = self.config.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    self.reconfigure();
                }
                request = self.requests.recv() => match request {
                    None => return,
                    Some(request) => self.handle(request).await,
                },
                _ = sleep_until(renewal) => self.renew().await,
            }
        }
    }

    fn deadline(&self) -> Option<Instant> {
        let fencing = self.fencing.as_ref()?;
        self.held
            .as_ref()
            .map(|h| h.valid_from + ms(fencing.fence_after_ms))
    }

    fn check_bound(&mut self) {
        if self.deadline().is_some_and(|d| Instant::now() >= d) {
            self.fence_for_silence();
        }
    }

    fn fence_for_silence(&mut self) {
        let bound = self.fencing.as_ref().map_or(0, |f| f.fence_after_ms);
        self.fence(&format!(
            "no successful lease renewal for {bound} ms (the fence bound)"
        ));
    }

    fn fence(&mut self, reason: &str) {
        self.held = None;
        self.state.fence(reason);
    }

    fn reconfigure(&mut self) {
        let new = self.config.borrow_and_update().clone();
        let renamed = match (&self.fencing, &new) {
            (Some(old), Some(new)) => old.lease_name != new.lease_name,
            _ => true,
        };
        if renamed && self.held.take().is_some() {
            // Not a fence: the manager acquires the lease it is told about
            // next, and fences if it cannot.
            tracing::warn!("fencing settings changed; no longer renewing the previous lease");
            self.state.released();
        }
        if renamed {
            self.seen = None;
        }
        self.state.configure(new.clone());
        self.fencing = new;
    }

    async fn handle(&mut self, request: Request) {
        match request {
            Request::Acquire(reply) => {
                let result = self.acquire().await;
                let _ = reply.send(result);
            }
            Request::Release(reply) => {
                self.release().await;
                let _ = reply.send(());
            }
            Request::Fence(reason) => self.fence(&reason),
        }
    }

    /// A request bounded by the fence deadline when one runs, else by
    /// [`REQUEST_TIMEOUT`].
    async fn bounded<T>(
        &self,
        request: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, FenceError> {
        let started = Instant::now();
        let limit = self.deadline().unwrap_or(started + REQUEST_TIMEOUT);
        match tokio::time::timeout_at(limit, request).await {
            Ok(result) => Ok(result?),
            Err(_) => Err(FenceError::Timeout(
                limit.saturating_duration_since(started),
            )),
        }
    }

    fn observe(&mut self, stored: Option<&Stored>) {
        self.state.set_holder(
            stored
                .and_then(|s| s.spec.holder_identity.clone())
                .filter(|h| !h.is_empty()),
        );
        let version = stored.map(|s| s.version.clone()).unwrap_or_default();
        if self.seen.as_ref().is_none_or(|s| s.version != version) {
            self.seen = Some(Seen {
                version,
                since: Instant::now(),
            });
        }
    }

    /// The spec this instance writes to hold the lease.
    fn holding_spec(&self, fencing: &FencingSettings, previous: Option<&LeaseSpec>) -> LeaseSpec {
        let now = MicroTime(jiff::Timestamp::now());
        let previous_holder = previous.and_then(|p| p.holder_identity.as_deref());
        let same_holder = previous_holder == Some(self.me.as_str());
        let transitions = previous.and_then(|p| p.lease_transitions).unwrap_or(0);
        LeaseSpec {
            holder_identity: Some(self.me.clone()),
            lease_duration_seconds: Some(fencing.lease_duration_ms.div_ceil(1000) as i32),
            acquire_time: if same_holder {
                previous.and_then(|p| p.acquire_time.clone())
            } else {
                Some(now.clone())
            },
            renew_time: Some(now),
            lease_transitions: Some(match previous {
                None => 0,
                Some(_) if same_holder => transitions,
                Some(_) => transitions + 1,
            }),
            ..previous.cloned().unwrap_or_default()
        }
    }

    /// Why the lease may be taken, if it may: free, already this
    /// instance's, expired by its own `renewTime + leaseDurationSeconds` on
    /// this machine's clock, or not changed for `lease_duration` as observed
    /// here.
    fn takeable(&self, stored: &Stored, fencing: &FencingSettings) -> Option<Takeover> {
        let spec = &stored.spec;
        let holder = spec.holder_identity.as_deref().unwrap_or("");
        if holder.is_empty() {
            return Some(Takeover::Free);
        }
        if holder == self.me {
            return Some(Takeover::Own);
        }
        let expired = match (&spec.renew_time, spec.lease_duration_seconds) {
            (Some(renewed), Some(seconds)) => renewed
                .0
                .checked_add(jiff::SignedDuration::from_secs(i64::from(seconds.max(0))))
                .is_ok_and(|until| until <= jiff::Timestamp::now()),
            // Without a renewal time only observation can tell.
            _ => false,
        };
        let unchanged = self.seen.as_ref().is_some_and(|s| {
            s.version == stored.version && s.since.elapsed() >= ms(fencing.lease_duration_ms)
        });
        if expired {
            Some(Takeover::Expired)
        } else if unchanged {
            Some(Takeover::Unchanged)
        } else {
            None
        }
    }

    async fn acquire(&mut self) -> Result<(), FenceError> {
        let Some(fencing) = self.fencing.clone() else {
            return Ok(());
        };
        if self.held.is_some() && self.deadline().is_some_and(|d| Instant::now() < d) {
            return Ok(());
        }
        let name = fencing.lease_name.clone();
        // Long enough to see a holder that renews, or one that stopped
        // (no change for the whole lease duration).
        let give_up = Instant::now() + ms(fencing.lease_duration_ms + fencing.renew_interval_ms);
        loop {
            let current = self.bounded(self.store.read(&name)).await?;
            self.observe(current.as_ref());
            let started = Instant::now();
            let takeover = current.as_ref().map(|c| self.takeable(c, &fencing));
            let written = match (&current, takeover.flatten()) {
                (None, _) => {
                    let spec = self.holding_spec(&fencing, None);
                    self.bounded(self.store.create(&name, &spec)).await
                }
                (Some(stored), Some(_)) => {
                    let spec = self.holding_spec(&fencing, Some(&stored.spec));
                    self.bounded(self.store.replace(&name, stored, &spec)).await
                }
                (Some(stored), None) => {
                    if Instant::now() >= give_up {
                        let renewed = stored
                            .spec
                            .renew_time
                            .as_ref()
                            .map_or("at an unknown time".to_string(), |t| format!("at {}", t.0));
                        return Err(FenceError::HeldBy {
                            lease: name,
                            holder: stored.spec.holder_identity.clone().unwrap_or_default(),
                            renewed,
                        });
                    }
                    tokio::time::sleep(TAKEOVER_POLL).await;
                    continue;
                }
            };
            match written {
                Ok(stored) => {
                    let previous = current
                        .as_ref()
                        .and_then(|c| c.spec.holder_identity.clone());
                    tracing::info!(
                        operation = "lease",
                        lease = %name,
                        previous_holder = ?previous,
                        takeover = takeover.flatten().map_or("created", Takeover::as_str),
                        transitions = stored.spec.lease_transitions,
                        "holding the primary lease"
                    );
                    self.observe(Some(&stored));
                    self.hold(stored, started, &fencing);
                    return Ok(());
                }
                // Someone wrote in between: read again.
                Err(FenceError::Store(StoreError::Conflict(_))) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    fn hold(&mut self, stored: Stored, started: Instant, fencing: &FencingSettings) {
        self.held = Some(Held {
            stored,
            valid_from: started,
            next_renewal: started + ms(fencing.renew_interval_ms),
        });
        self.state.held(started, &self.me);
    }

    async fn renew(&mut self) {
        let (Some(fencing), Some(held)) = (self.fencing.clone(), self.held.as_ref()) else {
            return;
        };
        let name = fencing.lease_name.clone();
        let previous = held.stored.clone();
        let started = Instant::now();
        let spec = self.holding_spec(&fencing, Some(&previous.spec));
        let mut result = self
            .bounded(self.store.replace(&name, &previous, &spec))
            .await;
        if let Err(FenceError::Store(StoreError::Conflict(_))) = result {
            // Changed under us: fine if it still names this instance (an
            // earlier renewal that timed out here but landed there).
            result = match self.bounded(self.store.read(&name)).await {
                Ok(Some(current))
                    if current.spec.holder_identity.as_deref() == Some(self.me.as_str()) =>
                {
                    let spec = self.holding_spec(&fencing, Some(&current.spec));
                    self.bounded(self.store.replace(&name, &current, &spec))
                        .await
                }
                Ok(current) => {
                    self.observe(current.as_ref());
                    let holder = current
                        .and_then(|c| c.spec.holder_identity)
                        .filter(|h| !h.is_empty());
                    let reason = match holder {
                        Some(h) => format!("the primary lease was taken over by {h}"),
                        None => "the primary lease was released by someone else".into(),
                    };
                    self.fence(&reason);
                    return;
                }
                Err(e) => Err(e),
            };
        }
        match result {
            Ok(stored) => {
                self.observe(Some(&stored));
                self.hold(stored, started, &fencing);
                tracing::debug!(operation = "lease", "renewed");
            }
            Err(FenceError::Timeout(_)) => self.fence_for_silence(),
            Err(e) => {
                tracing::warn!(operation = "lease", error = %e, "lease renewal failed; retrying");
                if let Some(held) = self.held.as_mut() {
                    held.next_renewal =
                        Instant::now() + ms(fencing.renew_interval_ms / 4).max(ms(50));
                }
            }
        }
    }

    async fn release(&mut self) {
        let was_held = self.held.take().is_some();
        self.state.released();
        let Some(fencing) = self.fencing.clone() else {
            return;
        };
        let name = fencing.lease_name.clone();
        let current = match self.bounded(self.store.read(&name)).await {
            Ok(c) => c,
            Err(e) => {
                if was_held {
                    tracing::warn!(operation = "lease", error = %e, "cannot release the primary lease; it expires on its own");
                }
                return;
            }
        };
        self.observe(current.as_ref());
        let Some(current) = current else {
            return;
        };
        if current.spec.holder_identity.as_deref() != Some(self.me.as_str()) {
            return;
        }
        let spec = LeaseSpec {
            holder_identity: None,
            renew_time: Some(MicroTime(jiff::Timestamp::now())),
            ..current.spec.clone()
        };
        match self
            .bounded(self.store.replace(&name, &current, &spec))
            .await
        {
            Ok(stored) => {
                self.observe(Some(&stored));
                tracing::info!(operation = "lease", lease = %name, "released the primary lease");
            }
            Err(e) => {
                tracing::warn!(operation = "lease", error = %e, "cannot release the primary lease; it expires on its own")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::Mutex as StdMutex;

    /// An in-memory store with switches for partitions (fail or hang), for
    /// everyone or for one instance's view of it.
    #[derive(Clone, Default)]
    struct Memory {
        inner: Arc<StdMutex<MemoryInner>>,
        who: String,
    }

    #[derive(Default)]
    struct MemoryInner {
        leases: HashMap<String, Stored>,
        counter: u64,
        fail: bool,
        hang: bool,
        partitioned: std::collections::HashSet<String>,
        writes: u32,
    }

    impl Memory {
        /// The same store as instance `who` reaches it.
        fn seen_by(&self, who: &str) -> Memory {
            Memory {
                inner: self.inner.clone(),
                who: who.into(),
            }
        }
        fn set(&self, f: impl FnOnce(&mut MemoryInner)) {
            f(&mut self.inner.lock().unwrap());
        }
        fn get(&self, name: &str) -> Option<Stored> {
            self.inner.lock().unwrap().leases.get(name).cloned()
        }
        fn writes(&self) -> u32 {
            self.inner.lock().unwrap().writes
        }
        /// Another instance writes the lease.
        fn put(&self, name: &str, spec: LeaseSpec) {
            let mut inner = self.inner.lock().unwrap();
            inner.counter += 1;
            let version = inner.counter.to_string();
            inner.leases.insert(
                name.into(),
                Stored {
                    version,
                    spec,
                    metadata: Default::default(),
                },
            );
        }
        async fn gate(&self) -> Result<(), StoreError> {
            let (fail, hang) = {
                let inner = self.inner.lock().unwrap();
                (
                    inner.fail || inner.partitioned.contains(&self.who),
                    inner.hang,
                )
            };
            if hang {
                std::future::pending::<()>().await;
            }
            if fail {
                return Err(StoreError::Unavailable("partitioned".into()));
            }
            Ok(())
        }
    }

    impl LeaseStore for Memory {
        async fn read(&self, name: &str) -> Result<Option<Stored>, StoreError> {
            self.gate().await?;
            Ok(self.get(name))
        }
        async fn create(&self, name: &str, spec: &LeaseSpec) -> Result<Stored, StoreError> {
            self.gate().await?;
            if self.get(name).is_some() {
                return Err(StoreError::Conflict(name.into()));
            }
            self.put(name, spec.clone());
            self.set(|i| i.writes += 1);
            Ok(self.get(name).unwrap())
        }
        async fn replace(
            &self,
            name: &str,
            previous: &Stored,
            spec: &LeaseSpec,
        ) -> Result<Stored, StoreError> {
            self.gate().await?;
            match self.get(name) {
                Some(s) if s.version == previous.version => {}
                _ => return Err(StoreError::Conflict(name.into())),
            }
            self.put(name, spec.clone());
            self.set(|i| i.writes += 1);
            Ok(self.get(name).unwrap())
        }
    }

    fn fencing() -> FencingSettings {
        FencingSettings {
            lease_name: "db-primary".into(),
            lease_duration_ms: 4000,
            renew_interval_ms: 1000,
            fence_after_ms: 2000,
        }
    }

    fn keeper_with(store: &Memory, me: &str, settings: FencingSettings) -> LeaseHandle {
        let dir = std::env::temp_dir().join("capstan-fencing-unit-no-such-dir");
        let handle = LeaseHandle::spawn(store.seen_by(me), me, Arc::new(LeaseState::new(dir)));
        handle.configure(Some(settings));
        handle
    }

    fn keeper(store: &Memory, me: &str) -> LeaseHandle {
        let dir = std::env::temp_dir().join("capstan-fencing-unit-no-such-dir");
        let handle = LeaseHandle::spawn(store.seen_by(me), me, Arc::new(LeaseState::new(dir)));
        handle.configure(Some(fencing()));
        handle
    }

    async fn settle() {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }

    fn other_holds(store: &Memory, holder: &str, renewed_ago: Duration) {
        let renewed = jiff::Timestamp::now() - jiff::SignedDuration::try_from(renewed_ago).unwrap();
        store.put(
            "db-primary",
            LeaseSpec {
                holder_identity: Some(holder.into()),
                lease_duration_seconds: Some(4),
                renew_time: Some(MicroTime(renewed)),
                lease_transitions: Some(3),
                ..LeaseSpec::default()
            },
        );
    }

    #[tokio::test(start_paused = true)]
    async fn acquires_renews_and_reports() {
        let store = Memory::default();
        let handle = keeper(&store, "db-1");
        settle().await;
        assert!(!handle.state.may_write());
        handle.acquire().await.unwrap();
        let lease = store.get("db-primary").unwrap();
        assert_eq!(lease.spec.holder_identity.as_deref(), Some("db-1"));
        assert_eq!(lease.spec.lease_duration_seconds, Some(4));
        assert_eq!(lease.spec.lease_transitions, Some(0));
        assert!(lease.spec.acquire_time.is_some());
        let first_renewal = lease.spec.renew_time.clone();
        assert!(handle.state.may_write());
        tokio::time::sleep(Duration::from_millis(3500)).await;
        assert!(store.writes() >= 4, "renewed every second");
        let lease = store.get("db-primary").unwrap();
        assert_ne!(lease.spec.renew_time, first_renewal);
        assert_eq!(lease.spec.lease_transitions, Some(0));
        let report = handle.state.report().unwrap();
        assert!(report.held && !report.fenced);
        assert_eq!(report.holder.as_deref(), Some("db-1"));
        assert!(report.renewed_ms_ago.unwrap() < 1000);
    }

    #[tokio::test(start_paused = true)]
    async fn a_partition_fences_at_the_bound_measured_from_the_last_renewal_start() {
        let store = Memory::default();
        let handle = keeper(&store, "db-1");
        handle.acquire().await.unwrap();
        let acquired = Instant::now();
        store.set(|i| i.fail = true);
        tokio::time::sleep(Duration::from_millis(1990)).await;
        assert!(!handle.state.fenced(), "not before the bound");
        tokio::time::sleep(Duration::from_millis(20)).await;
        settle().await;
        assert!(handle.state.fenced());
        assert!(!handle.state.may_write());
        let report = handle.state.report().unwrap();
        assert!(!report.held && report.fenced);
        assert!(acquired.elapsed() <= Duration::from_millis(2010));
        // Healing alone does not unfence: the manager re-acquires.
        store.set(|i| i.fail = false);
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(handle.state.fenced());
        handle.acquire().await.unwrap();
        assert!(!handle.state.fenced() && handle.state.may_write());
        assert_eq!(
            store.get("db-primary").unwrap().spec.lease_transitions,
            Some(0),
            "its own lease again: no transition"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_hanging_renewal_does_not_delay_the_fence() {
        let store = Memory::default();
        let handle = keeper(&store, "db-1");
        handle.acquire().await.unwrap();
        store.set(|i| i.hang = true);
        tokio::time::sleep(Duration::from_millis(2001)).await;
        settle().await;
        assert!(handle.state.fenced());
    }

    #[tokio::test(start_paused = true)]
    async fn a_takeover_seen_at_renewal_fences_at_once() {
        let store = Memory::default();
        let handle = keeper(&store, "db-1");
        handle.acquire().await.unwrap();
        other_holds(&store, "db-2", Duration::ZERO);
        tokio::time::sleep(Duration::from_millis(1001)).await;
        settle().await;
        assert!(handle.state.fenced());
        assert_eq!(
            handle.state.report().unwrap().holder.as_deref(),
            Some("db-2")
        );
        // And it does not take the lease back while db-2 renews.
        let store2 = store.clone();
        let renewer = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                other_holds(&store2, "db-2", Duration::ZERO);
            }
        });
        let err = handle.acquire().await.unwrap_err();
        renewer.abort();
        assert!(
            matches!(err, FenceError::HeldBy { ref holder, .. } if holder == "db-2"),
            "{err}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_expired_lease_is_taken_over_with_a_transition() {
        let store = Memory::default();
        other_holds(&store, "db-1", Duration::from_secs(5));
        let handle = keeper(&store, "db-2");
        let started = Instant::now();
        handle.acquire().await.unwrap();
        assert_eq!(started.elapsed(), Duration::ZERO, "no second wait");
        let lease = store.get("db-primary").unwrap();
        assert_eq!(lease.spec.holder_identity.as_deref(), Some("db-2"));
        assert_eq!(lease.spec.lease_transitions, Some(4));
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_holder_is_taken_over_after_the_lease_duration_as_observed() {
        let store = Memory::default();
        // renewTime in the future (a clock ahead of ours): only observation helps.
        let ahead = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(60);
        store.put(
            "db-primary",
            LeaseSpec {
                holder_identity: Some("db-1".into()),
                lease_duration_seconds: Some(4),
                renew_time: Some(MicroTime(ahead)),
                ..LeaseSpec::default()
            },
        );
        let handle = keeper(&store, "db-2");
        settle().await;
        let started = Instant::now();
        handle.acquire().await.unwrap();
        assert!(started.elapsed() >= Duration::from_secs(4));
        assert_eq!(
            store
                .get("db-primary")
                .unwrap()
                .spec
                .holder_identity
                .as_deref(),
            Some("db-2")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn release_clears_only_its_own_holder() {
        let store = Memory::default();
        let handle = keeper(&store, "db-1");
        handle.acquire().await.unwrap();
        handle.release().await;
        let lease = store.get("db-primary").unwrap();
        assert_eq!(lease.spec.holder_identity, None);
        assert!(!handle.state.holding());
        // Nothing renews after a release, and nothing fences.
        let writes = store.writes();
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(store.writes(), writes);
        assert!(!handle.state.fenced());
        // Someone else's lease is left alone.
        other_holds(&store, "db-2", Duration::ZERO);
        handle.release().await;
        assert_eq!(
            store
                .get("db-primary")
                .unwrap()
                .spec
                .holder_identity
                .as_deref(),
            Some("db-2")
        );
        // A free lease is taken without waiting, counted as a transition.
        let handle2 = keeper(&store, "db-3");
        let mut free = store.get("db-primary").unwrap().spec;
        free.holder_identity = None;
        store.put("db-primary", free);
        handle2.acquire().await.unwrap();
        assert_eq!(
            store.get("db-primary").unwrap().spec.lease_transitions,
            Some(4)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn without_fencing_settings_writes_are_allowed_and_nothing_is_written() {
        let store = Memory::default();
        let dir = std::env::temp_dir().join("capstan-fencing-unit-no-such-dir");
        let handle = LeaseHandle::spawn(store.clone(), "db-1", Arc::new(LeaseState::new(dir)));
        handle.acquire().await.unwrap();
        assert!(handle.state.may_write());
        assert!(handle.state.report().is_none());
        assert_eq!(store.writes(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_thawed_keeper_fences_before_it_renews() {
        let store = Memory::default();
        let handle = keeper(&store, "db-1");
        handle.acquire().await.unwrap();
        let writes = store.writes();
        // A stopped process: time passes, the runtime does not run. Advance
        // the clock without yielding to the keeper, as a thaw looks to it.
        tokio::time::advance(Duration::from_secs(10)).await;
        settle().await;
        assert!(handle.state.fenced());
        assert_eq!(store.writes(), writes, "no renewal after the bound");
    }

    #[tokio::test(start_paused = true)]
    async fn a_renewing_holder_is_never_overwritten() {
        let store = Memory::default();
        let holder = keeper(&store, "db-1");
        holder.acquire().await.unwrap();
        let other = keeper(&store, "db-2");
        let started = Instant::now();
        let err = other.acquire().await.unwrap_err();
        assert!(
            matches!(err, FenceError::HeldBy { ref holder, .. } if holder == "db-1"),
            "{err}"
        );
        // It looked for the whole lease duration before giving up.
        assert!(started.elapsed() >= Duration::from_millis(4000));
        let lease = store.get("db-primary").unwrap();
        assert_eq!(lease.spec.holder_identity.as_deref(), Some("db-1"));
        assert_eq!(lease.spec.lease_transitions, Some(0));
        assert!(holder.state.may_write() && !holder.state.fenced());
        assert!(!other.state.holding() && !other.state.may_write());
    }

    #[tokio::test(start_paused = true)]
    async fn a_partitioned_holder_fences_and_is_taken_over_at_once_after_the_lease_duration() {
        let short = FencingSettings {
            lease_duration_ms: 1000,
            renew_interval_ms: 250,
            fence_after_ms: 500,
            ..fencing()
        };
        let store = Memory::default();
        let old = keeper_with(&store, "db-1", short.clone());
        let new = keeper_with(&store, "db-2", short.clone());
        old.acquire().await.unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(old.state.may_write(), "renewals keep it held");
        store.set(|i| {
            i.partitioned.insert("db-1".into());
        });
        let cut = Instant::now();
        tokio::time::sleep(Duration::from_millis(500)).await;
        settle().await;
        assert!(old.state.fenced() && !old.state.may_write());
        assert!(cut.elapsed() <= Duration::from_millis(500));
        // The operator waits the lease duration out on its clock; the
        // renewal time in the lease is wall-clock time, which paused tokio
        // time does not move, so let the real clock pass it.
        std::thread::sleep(Duration::from_millis(1050));
        let started = Instant::now();
        new.acquire().await.unwrap();
        assert_eq!(started.elapsed(), Duration::ZERO, "no second wait");
        let lease = store.get("db-primary").unwrap();
        assert_eq!(lease.spec.holder_identity.as_deref(), Some("db-2"));
        assert_eq!(lease.spec.lease_transitions, Some(1));
        // Healed, the old holder cannot take it back while db-2 renews.
        store.set(|i| {
            i.partitioned.clear();
        });
        let err = old.acquire().await.unwrap_err();
        assert!(matches!(err, FenceError::HeldBy { .. }), "{err}");
        assert!(old.state.fenced() && !old.state.may_write());
        assert!(new.state.may_write());
    }

    /// A stand-in postmaster: `postgres -D <dir>` that works in `<dir>`
    /// and sleeps, killed by the guard if a test fails.
    struct FakePostgres {
        bin: tempfile::TempDir,
        data: tempfile::TempDir,
        pids: Vec<u32>,
    }

    impl FakePostgres {
        fn new() -> Self {
            use std::os::unix::fs::PermissionsExt;
            let bin = tempfile::tempdir().unwrap();
            let script = bin.path().join("postgres");
            std::fs::write(
                &script,
                "#!/bin/sh\nulimit -c 0\ncd \"$2\" || exit 1\nexec sleep 1000\n",
            )
            .unwrap();
            std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
            Self {
                bin,
                data: tempfile::tempdir().unwrap(),
                pids: vec![],
            }
        }

        fn spawn(&mut self) -> Result<PostgresChild, super::super::supervisor::SupervisorError> {
            // A freshly written script may be "text file busy" while another
            // test thread forks: retry briefly.
            let mut attempt = 0;
            loop {
                match PostgresChild::spawn(self.bin.path(), self.data.path(), &[]) {
                    Ok(child) => {
                        self.pids.push(child.signaller().pid());
                        return Ok(child);
                    }
                    Err(e) if attempt < 20 => {
                        attempt += 1;
                        let _ = e;
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err(e) => return Err(e),
                }
            }
        }

        /// A process working in the data directory that nobody registered,
        /// like a backend.
        fn backend(&mut self) -> std::process::Child {
            let child = std::process::Command::new("sleep")
                .arg("1000")
                .current_dir(self.data.path())
                .spawn()
                .unwrap();
            self.pids.push(child.id());
            child
        }
    }

    impl Drop for FakePostgres {
        fn drop(&mut self) {
            for pid in &self.pids {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(*pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }

    #[tokio::test]
    async fn a_writable_start_needs_the_lease() {
        let mut fake = FakePostgres::new();
        let store = Memory::default();
        let dir = fake.data.path().to_path_buf();
        let handle = LeaseHandle::spawn(
            store.seen_by("db-1"),
            "db-1",
            Arc::new(LeaseState::new(dir)),
        );
        handle.configure(Some(fencing()));
        let mut spawned = false;
        let refused = handle.state.start_postgres(true, || {
            spawned = true;
            fake.spawn()
        });
        assert!(matches!(refused, Err(GateError::NotHeld)));
        assert!(!spawned, "nothing is started without the lease");
        // A replica needs no lease.
        let replica = handle.state.start_postgres(false, || fake.spawn()).unwrap();
        replica.signal(Mode::Kill);
        handle.acquire().await.unwrap();
        let mut primary = handle.state.start_postgres(true, || fake.spawn()).unwrap();
        primary.signal(Mode::Kill);
        primary.wait_exit(Duration::from_secs(10)).await.unwrap();
        handle.fence("test".into()).await;
        for _ in 0..100 {
            if handle.state.fenced() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut spawned = false;
        let refused = handle.state.start_postgres(true, || {
            spawned = true;
            fake.spawn()
        });
        assert!(matches!(refused, Err(GateError::NotHeld)), "fenced");
        assert!(!spawned);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_partition_signals_the_postmaster_and_every_process_in_pgdata() {
        use super::super::lease::FileLease;
        let leases = tempfile::tempdir().unwrap();
        let mut fake = FakePostgres::new();
        let dir = fake.data.path().to_path_buf();
        let store = FileLease::new(leases.path().into(), "db-1");
        let handle = LeaseHandle::spawn(store, "db-1", Arc::new(LeaseState::new(dir)));
        handle.configure(Some(FencingSettings {
            lease_duration_ms: 1000,
            renew_interval_ms: 100,
            fence_after_ms: 500,
            ..fencing()
        }));
        handle.acquire().await.unwrap();
        let mut postmaster = handle.state.start_postgres(true, || fake.spawn()).unwrap();
        let mut backend = fake.backend();
        // Renewals through the file keep it held.
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert!(handle.state.may_write() && !handle.state.fenced());
        assert!(postmaster.exited().is_none());

        std::fs::write(FileLease::sentinel(leases.path(), "db-1"), "").unwrap();
        let status = postmaster.wait_exit(Duration::from_secs(20)).await;
        assert_eq!(status.as_deref(), Some("killed by SIGQUIT"));
        let report = handle.state.report().unwrap();
        assert!(report.fenced && !report.held, "{report:?}");
        let mut backend_status = None;
        for _ in 0..200 {
            backend_status = backend.try_wait().unwrap();
            if backend_status.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            backend_status.and_then(|s| s.signal()),
            Some(nix::sys::signal::Signal::SIGQUIT as i32),
            "a process in PGDATA is signalled too"
        );
        // Healed, it stays fenced until the manager acquires again.
        std::fs::remove_file(FileLease::sentinel(leases.path(), "db-1")).unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(handle.state.fenced());
        handle.acquire().await.unwrap();
        assert!(handle.state.may_write() && !handle.state.fenced());
    }
}

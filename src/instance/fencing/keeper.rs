//! The keeper task: the only code that reads and writes the primary Lease.
//! It acquires on request, renews every `renew_interval`, releases on
//! request, and fences when it cannot show that it still holds the lease
//! (see the safety argument in [`super`]). The rules it follows are the pure
//! functions of [`super::decide`].

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::LeaseSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::contract::settings::FencingSettings;

use super::super::lease::{LeaseStore, StoreError, Stored};
use super::decide::{self, Seen, Takeover, ms};
use super::{FenceError, LeaseState, Request};

/// Bound for one lease request when no fence deadline is running.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a takeover re-reads a lease held by someone else.
const TAKEOVER_POLL: Duration = Duration::from_millis(200);

struct Held {
    stored: Stored,
    /// Start of the last successful write.
    valid_from: Instant,
    next_renewal: Instant,
}
pub(super) struct Keeper<S> {
    store: S,
    me: String,
    state: Arc<LeaseState>,
    requests: mpsc::Receiver<Request>,
    config: watch::Receiver<Option<FencingSettings>>,
    fencing: Option<FencingSettings>,
    held: Option<Held>,
    seen: Option<Seen>,
    /// The previous manager image held the lease from this instant: renew
    /// it before its fence deadline, or fence.
    resumed: Option<Instant>,
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl<S: LeaseStore> Keeper<S> {
    pub(super) fn new(
        store: S,
        identity: &str,
        state: Arc<LeaseState>,
        requests: mpsc::Receiver<Request>,
        config: watch::Receiver<Option<FencingSettings>>,
        resumed: Option<Instant>,
    ) -> Self {
        Self {
            resumed,
            store,
            me: identity.to_string(),
            state,
            requests,
            config,
            fencing: None,
            held: None,
            seen: None,
        }
    }

    pub(super) async fn run(mut self) {
        loop {
            // First on every wake-up, before any request: a keeper that was
            // stopped (or starved) past its bound fences right away.
            self.check_bound();
            if self.resumed.is_some() && self.fencing.is_some() && self.held.is_none() {
                self.resume().await;
                continue;
            }
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
            .map(|h| h.valid_from)
            .or(self.resumed)
            .map(|from| decide::fence_deadline(from, fencing))
    }

    /// Renews the lease the previous manager image held, within its bound.
    async fn resume(&mut self) {
        match self.acquire().await {
            Ok(()) => tracing::info!(
                operation = "lease",
                "renewed the primary lease the previous manager image held"
            ),
            Err(e) => self.fence(&format!(
                "the previous manager image held the primary lease and this one cannot renew it: {e}"
            )),
        }
        self.resumed = None;
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
        self.resumed = None;
        self.state.fence(reason);
    }

    fn reconfigure(&mut self) {
        let new = self.config.borrow_and_update().clone();
        let renamed = decide::renamed(self.fencing.as_ref(), new.as_ref());
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

    /// The spec this instance writes to hold the lease, stamped now.
    fn holding_spec(&self, fencing: &FencingSettings, previous: Option<&LeaseSpec>) -> LeaseSpec {
        decide::holding_spec(
            &self.me,
            fencing,
            previous,
            MicroTime(jiff::Timestamp::now()),
        )
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
        let give_up = Instant::now() + decide::give_up_after(&fencing);
        loop {
            let current = self.bounded(self.store.read(&name)).await?;
            self.observe(current.as_ref());
            let started = Instant::now();
            let takeover = current.as_ref().map(|c| {
                decide::takeable(
                    &self.me,
                    c,
                    self.seen.as_ref(),
                    &fencing,
                    jiff::Timestamp::now(),
                    Instant::now(),
                )
            });
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
        self.resumed = None;
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
                    held.next_renewal = Instant::now() + decide::retry_after(&fencing);
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
        let spec = decide::released_spec(&current.spec, MicroTime(jiff::Timestamp::now()));
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

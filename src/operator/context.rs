//! Shared state of the controller.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::Client;
use kube::runtime::events::Recorder;

use super::agents::{Connect, Https};
use super::cache::{self, Caches, Writers};
use super::cluster::apply::AppliedCache;
use super::leases::LeaseMonitor;
use super::metrics::Metrics;

/// Settings of the running operator.
#[derive(Clone, Debug)]
pub struct OperatorConfig {
    /// Image carrying the `capstan` binary (init container of every pod).
    pub operator_image: String,
    /// Watch only this namespace (None: all namespaces).
    pub namespace: Option<String>,
    /// How often a settled cluster is reconciled again without any change.
    pub resync: Duration,
}

pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub config: OperatorConfig,
    pub metrics: Arc<Metrics>,
    /// What was last applied to each child, to skip no-op applies.
    pub applied: AppliedCache,
    /// Primary Leases as this operator sees them renewed.
    pub leases: Arc<LeaseMonitor>,
    /// Watch caches of the children (`observe` reads them).
    pub caches: Caches,
    /// Their write side, taken by `controller::run` (or filled by a test).
    writers: Mutex<Option<Writers>>,
    /// Builds a cluster's agent client.
    pub agents: Box<dyn Connect>,
    /// Consecutive failures per cluster (`namespace/name`), for backoff.
    failures: Mutex<HashMap<String, u32>>,
    /// The operator's own last step writes, which a reconcile waits for.
    pub own_writes: OwnWrites,
    /// Agents (by pod uid) sent this operator's binary, and when: the
    /// reports show the new build a moment later, after the exec.
    pub binary_sent: BinarySent,
}

/// When each agent (by pod uid) was last sent the operator's binary.
#[derive(Default)]
pub struct BinarySent(Mutex<HashMap<String, std::time::Instant>>);

impl BinarySent {
    /// How long an agent that took the binary has to report it before it
    /// is sent again.
    pub const SETTLE: std::time::Duration = std::time::Duration::from_secs(30);

    pub fn sent(&self, uid: &str) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, at| at.elapsed() < Self::SETTLE);
        map.insert(uid.to_string(), std::time::Instant::now());
    }

    /// Sent within [`Self::SETTLE`]: wait for its report instead.
    pub fn recently(&self, uid: &str) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(uid)
            .is_some_and(|at| at.elapsed() < Self::SETTLE)
    }
}

/// resourceVersion of each cluster's last operation-step status write (by
/// uid), and when it was made.
#[derive(Default)]
pub struct OwnWrites(Mutex<HashMap<String, (String, std::time::Instant)>>);

impl OwnWrites {
    /// Records a status write of an operation step.
    pub fn wrote(&self, uid: &str, resource_version: String) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).insert(
            uid.to_string(),
            (resource_version, std::time::Instant::now()),
        );
    }

    /// Whether the object a reconcile was handed predates the operator's
    /// own last step write: deciding from it would redo that step (an
    /// immediate requeue after a switchover saw it still in flight and
    /// reconnected the poolers again, failing clients mid-login).
    pub fn behind(&self, uid: &str, resource_version: &str) -> bool {
        let mut written = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match written.get(uid) {
            Some((rv, at)) if rv != resource_version && at.elapsed() < OWN_WRITE_WAIT => true,
            Some(_) => {
                written.remove(uid);
                false
            }
            None => false,
        }
    }
}

/// How long a reconcile waits for the watch to deliver the operator's own
/// status write before it goes on with what it has (another writer may
/// have changed the object since, so the versions never match).
pub const OWN_WRITE_WAIT: Duration = Duration::from_secs(3);

/// First retry after a failure; doubles up to [`MAX_BACKOFF`].
pub const MIN_BACKOFF: Duration = Duration::from_secs(2);
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);

impl Context {
    pub fn new(
        client: Client,
        recorder: Recorder,
        config: OperatorConfig,
        metrics: Arc<Metrics>,
    ) -> Self {
        let (caches, writers) = cache::new();
        Context {
            client,
            recorder,
            config,
            metrics,
            applied: AppliedCache::default(),
            leases: Arc::new(LeaseMonitor::default()),
            caches,
            writers: Mutex::new(Some(writers)),
            agents: Box::new(Https),
            failures: Mutex::new(HashMap::new()),
            own_writes: OwnWrites::default(),
            binary_sent: BinarySent::default(),
        }
    }

    /// With another way to reach the agents (the controller tests' double).
    pub fn with_agents(mut self, agents: Box<dyn Connect>) -> Self {
        self.agents = agents;
        self
    }

    /// The caches' write side; None once taken.
    pub fn take_writers(&self) -> Option<Writers> {
        self.writers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    /// Records a failure and returns how long to wait before retrying.
    pub fn backoff(&self, key: &str) -> Duration {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let n = failures.entry(key.to_string()).or_insert(0);
        *n = n.saturating_add(1);
        backoff_for(*n)
    }

    pub fn succeeded(&self, key: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }
}

/// `MIN_BACKOFF * 2^(failures-1)`, capped.
pub fn backoff_for(failures: u32) -> Duration {
    let factor = 2u32.saturating_pow(failures.saturating_sub(1).min(16));
    MIN_BACKOFF.saturating_mul(factor).min(MAX_BACKOFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reconcile_waits_for_its_own_step_write_a_bounded_time() {
        let w = OwnWrites::default();
        assert!(!w.behind("u", "5"));
        w.wrote("u", "7".into());
        assert!(w.behind("u", "5"), "the cache still has the older object");
        assert!(!w.behind("u", "7"), "caught up");
        assert!(!w.behind("u", "5"), "forgotten once caught up");
        w.0.lock().unwrap().insert(
            "u".into(),
            ("9".into(), std::time::Instant::now() - OWN_WRITE_WAIT),
        );
        assert!(!w.behind("u", "5"), "not waited for forever");
    }

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff_for(1), Duration::from_secs(2));
        assert_eq!(backoff_for(2), Duration::from_secs(4));
        assert_eq!(backoff_for(5), Duration::from_secs(32));
        assert_eq!(backoff_for(100), MAX_BACKOFF);
    }
}

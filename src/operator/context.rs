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
}

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
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff_for(1), Duration::from_secs(2));
        assert_eq!(backoff_for(2), Duration::from_secs(4));
        assert_eq!(backoff_for(5), Duration::from_secs(32));
        assert_eq!(backoff_for(100), MAX_BACKOFF);
    }
}

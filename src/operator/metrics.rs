//! Operator metrics (prometheus-client): reconciles, errors by category,
//! reconcile duration, and per cluster its conditions and failovers.
//!
//! Per-cluster series are read from the controller's cluster cache at
//! scrape time, so a deleted cluster's series go with it and every cluster
//! has a failover count (0 until one happens) for `increase()` to work on.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};

use kube::ResourceExt;
use kube::runtime::reflector::Store;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, EncodeMetric,
};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::api::PostgresCluster;

/// Static error categories: bounded label values, whatever the message.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum ErrorCategory {
    /// The spec cannot be applied (Stalled).
    InvalidSpec,
    /// Reading from the API server failed.
    Observe,
    /// Writing a child failed.
    Apply,
    /// Writing status failed.
    Status,
    /// Certificates or rendering.
    Internal,
}

impl ErrorCategory {
    /// The reason of the Warning Event a failed reconcile publishes.
    pub fn reason(self) -> &'static str {
        match self {
            ErrorCategory::InvalidSpec => "InvalidSpec",
            ErrorCategory::Observe => "ObserveFailed",
            ErrorCategory::Apply => "ApplyFailed",
            ErrorCategory::Status => "StatusWriteFailed",
            ErrorCategory::Internal => "InternalError",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub category: ErrorCategory,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClusterLabels {
    namespace: String,
    capstan_cluster: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConditionLabels {
    namespace: String,
    capstan_cluster: String,
    #[prometheus(flatten)]
    condition: ConditionValue,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConditionValue {
    r#type: String,
    status: String,
    reason: String,
}

/// Series computed from the cluster cache on each scrape.
#[derive(Debug, Default)]
struct Clusters {
    store: OnceLock<Store<PostgresCluster>>,
    /// Failovers started since this process started, by (namespace, name).
    failovers: Mutex<BTreeMap<(String, String), u64>>,
}

pub struct Metrics {
    pub registry: Registry,
    pub reconciles: Counter,
    pub errors: Family<ErrorLabels, Counter>,
    pub duration: Histogram,
    clusters: Arc<Clusters>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("capstan_operator");
        let reconciles = Counter::default();
        let errors = Family::<ErrorLabels, Counter>::default();
        let duration = Histogram::new(exponential_buckets(0.005, 2.0, 12));
        registry.register(
            "reconciles",
            "PostgresCluster reconciliations",
            reconciles.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Failed reconciliations by category",
            errors.clone(),
        );
        let clusters = Arc::new(Clusters::default());
        registry.register_collector(Box::new(clusters.clone()));
        registry.register(
            "reconcile_duration_seconds",
            "Time spent in one reconciliation",
            duration.clone(),
        );
        Metrics {
            registry,
            reconciles,
            clusters,
            errors,
            duration,
        }
    }
}

impl Metrics {
    pub fn error(&self, category: ErrorCategory) {
        self.errors.get_or_create(&ErrorLabels { category }).inc();
    }

    /// The clusters whose conditions and failovers `/metrics` shows (set
    /// once, when the controller starts).
    pub fn watch_clusters(&self, store: Store<PostgresCluster>) {
        let _ = self.clusters.store.set(store);
    }

    /// A failover of `namespace/cluster` started.
    pub fn failover(&self, namespace: &str, cluster: &str) {
        if let Ok(mut counts) = self.clusters.failovers.lock() {
            *counts
                .entry((namespace.to_string(), cluster.to_string()))
                .or_default() += 1;
        }
    }

    /// Prometheus text exposition.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// When the failover in the status started, if one promoted a replica
/// (not one that was blocked, or cancelled because the primary came back).
fn last_failover(cluster: &PostgresCluster) -> i64 {
    cluster
        .status
        .as_ref()
        .and_then(|s| s.failover.as_ref())
        .filter(|f| f.phase == "Promoting" || f.phase == "Completed")
        .and_then(|f| f.started_at.parse::<jiff::Timestamp>().ok())
        .map_or(0, |t| t.as_second())
}

impl Collector for Clusters {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let clusters = self.store.get().map(Store::state).unwrap_or_default();
        let counts = self.failovers.lock().map(|c| c.clone()).unwrap_or_default();
        let labels = |c: &PostgresCluster| ClusterLabels {
            namespace: c.namespace().unwrap_or_default(),
            capstan_cluster: c.name_any(),
        };
        let zero = ConstCounter::new(0u64);
        let mut family = encoder.encode_descriptor(
            "failovers",
            "Automatic failovers started since the operator started, by cluster",
            None,
            zero.metric_type(),
        )?;
        for c in &clusters {
            let l = labels(c);
            let n = counts
                .get(&(l.namespace.clone(), l.capstan_cluster.clone()))
                .copied()
                .unwrap_or(0);
            ConstCounter::new(n).encode(family.encode_family(&l)?)?;
        }
        let never = ConstGauge::new(0i64);
        let mut family = encoder.encode_descriptor(
            "last_failover_timestamp_seconds",
            "When the newest failover of a PostgresCluster started (Unix time, from its status; 0 if none)",
            None,
            never.metric_type(),
        )?;
        for c in &clusters {
            ConstGauge::new(last_failover(c)).encode(family.encode_family(&labels(c))?)?;
        }
        let one = ConstGauge::new(1i64);
        let mut family = encoder.encode_descriptor(
            "cluster_condition",
            "1 for each condition of a PostgresCluster's status, with its status and reason",
            None,
            one.metric_type(),
        )?;
        for c in &clusters {
            let l = labels(c);
            for condition in c.status.iter().flat_map(|s| &s.conditions) {
                let labels = ConditionLabels {
                    namespace: l.namespace.clone(),
                    capstan_cluster: l.capstan_cluster.clone(),
                    condition: ConditionValue {
                        r#type: condition.type_.clone(),
                        status: condition.status.clone(),
                        reason: condition.reason.clone(),
                    },
                };
                ConstGauge::new(1i64).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_carries_every_family() {
        let m = Metrics::default();
        m.reconciles.inc();
        m.error(ErrorCategory::InvalidSpec);
        m.duration.observe(0.02);
        let text = m.encode().unwrap();
        assert!(
            text.contains("capstan_operator_reconciles_total 1"),
            "{text}"
        );
        assert!(
            text.contains("capstan_operator_reconcile_errors_total{category=\"InvalidSpec\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("capstan_operator_reconcile_duration_seconds_count 1"),
            "{text}"
        );
    }

    #[test]
    fn every_cached_cluster_has_a_failover_count_and_its_conditions() {
        let (store, mut writer) = kube::runtime::reflector::store::<PostgresCluster>();
        let cluster = |name: &str, conditions: serde_json::Value| -> PostgresCluster {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "capstan.dev/v1alpha1",
                "kind": "PostgresCluster",
                "metadata": {"name": name, "namespace": "apps"},
                "spec": {"instances": 1, "postgres": {"version": 17}, "storage": {"size": "1Gi"}},
                "status": {"conditions": conditions, "failover": {
                    "phase": "Completed", "from": "db-1", "to": "db-2", "message": "m",
                    "startedAt": "2026-01-01T00:00:10Z"}},
            }))
            .unwrap()
        };
        let stalled = serde_json::json!([{
            "type": "Stalled", "status": "True", "reason": "InvalidSpec",
            "message": "m", "lastTransitionTime": "2026-01-01T00:00:00Z"
        }]);
        writer.apply_watcher_event(&kube::runtime::watcher::Event::Apply(cluster(
            "db", stalled,
        )));
        writer.apply_watcher_event(&kube::runtime::watcher::Event::Apply(cluster(
            "other",
            serde_json::json!([]),
        )));
        let m = Metrics::default();
        m.watch_clusters(store);
        m.failover("apps", "db");
        m.failover("apps", "db");
        // A cluster gone from the cache shows nothing, whatever it counted.
        m.failover("apps", "deleted");
        let text = m.encode().unwrap();
        for line in [
            "capstan_operator_failovers_total{namespace=\"apps\",capstan_cluster=\"db\"} 2",
            "capstan_operator_failovers_total{namespace=\"apps\",capstan_cluster=\"other\"} 0",
            "capstan_operator_last_failover_timestamp_seconds{namespace=\"apps\",capstan_cluster=\"db\"} 1767225610",
            "capstan_operator_cluster_condition{namespace=\"apps\",capstan_cluster=\"db\",type=\"Stalled\",status=\"True\",reason=\"InvalidSpec\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line} in\n{text}");
        }
        assert!(!text.contains("deleted"), "{text}");
        assert!(!text.contains("capstan_cluster=\"other\",type"), "{text}");
    }
}

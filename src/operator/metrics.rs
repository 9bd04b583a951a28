//! Operator metrics (prometheus-client): reconciles, errors by category,
//! reconcile duration.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

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

pub struct Metrics {
    pub registry: Registry,
    pub reconciles: Counter,
    pub errors: Family<ErrorLabels, Counter>,
    pub duration: Histogram,
    /// Failovers started (targetPrimary moved after a lost Lease).
    pub failovers: Counter,
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
        let failovers = Counter::default();
        registry.register(
            "failovers",
            "Automatic failovers started",
            failovers.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time spent in one reconciliation",
            duration.clone(),
        );
        Metrics {
            registry,
            reconciles,
            failovers,
            errors,
            duration,
        }
    }
}

impl Metrics {
    pub fn error(&self, category: ErrorCategory) {
        self.errors.get_or_create(&ErrorLabels { category }).inc();
    }

    /// Prometheus text exposition.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
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
}

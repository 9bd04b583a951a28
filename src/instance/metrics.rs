//! `GET /metrics`: Prometheus text format.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::contract::instance::{InstanceReport, Role};

use super::local::Sample;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RoleLabel {
    pub role: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DatabaseLabel {
    pub datname: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: String,
}

pub struct Metrics {
    registry: Registry,
    up: Gauge,
    role: Family<RoleLabel, Gauge>,
    lag_bytes: Gauge,
    lag_seconds: Gauge<f64, AtomicU64>,
    wal_receiver: Family<StateLabel, Gauge>,
    pending_restart: Gauge,
    lease_held: Gauge,
    fenced: Gauge,
    connections: Family<StateLabel, Gauge>,
    xid_age: Gauge,
    database_size: Family<DatabaseLabel, Gauge>,
    pub postgres_restarts: Counter,
    pub rewinds: Family<ResultLabel, Counter>,
    pub reclones: Counter,
    pub promotions: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("capstan");
        let metrics = Self {
            up: Gauge::default(),
            role: Family::default(),
            lag_bytes: Gauge::default(),
            lag_seconds: Gauge::default(),
            wal_receiver: Family::default(),
            pending_restart: Gauge::default(),
            lease_held: Gauge::default(),
            fenced: Gauge::default(),
            connections: Family::default(),
            xid_age: Gauge::default(),
            database_size: Family::default(),
            postgres_restarts: Counter::default(),
            rewinds: Family::default(),
            reclones: Counter::default(),
            promotions: Counter::default(),
            registry: Registry::default(),
        };
        registry.register(
            "postgres_up",
            "PostgreSQL accepts connections",
            metrics.up.clone(),
        );
        registry.register(
            "postgres_role",
            "1 for the current role (primary, replica, unknown)",
            metrics.role.clone(),
        );
        registry.register(
            "replication_lag_bytes",
            "Replica: WAL bytes behind the primary's last reported position",
            metrics.lag_bytes.clone(),
        );
        registry.register(
            "replication_lag_seconds",
            "Replica: age of the last replayed transaction while behind",
            metrics.lag_seconds.clone(),
        );
        registry.register(
            "wal_receiver_state",
            "Replica: 1 for the WAL receiver's status (streaming, stopped, ...)",
            metrics.wal_receiver.clone(),
        );
        registry.register(
            "postgres_pending_restart",
            "A changed setting waits for a restart",
            metrics.pending_restart.clone(),
        );
        registry.register(
            "primary_lease_held",
            "This instance holds the primary lease within the fence bound",
            metrics.lease_held.clone(),
        );
        registry.register(
            "fenced",
            "PostgreSQL was stopped because the primary lease could not be renewed or was taken over",
            metrics.fenced.clone(),
        );
        registry.register(
            "postgres_connections",
            "Client connections by state",
            metrics.connections.clone(),
        );
        registry.register(
            "postgres_xid_age",
            "Age of the oldest unfrozen transaction ID over all databases",
            metrics.xid_age.clone(),
        );
        registry.register(
            "database_size_bytes",
            "Size of each database",
            metrics.database_size.clone(),
        );
        registry.register(
            "postgres_restarts",
            "Restarts of postgres after it exited unexpectedly",
            metrics.postgres_restarts.clone(),
        );
        registry.register(
            "rewinds",
            "pg_rewind runs by result",
            metrics.rewinds.clone(),
        );
        registry.register(
            "reclones",
            "Data directories re-cloned from the primary after a failed rewind",
            metrics.reclones.clone(),
        );
        registry.register(
            "promotions",
            "Promotions of this instance",
            metrics.promotions.clone(),
        );
        Self {
            registry,
            ..metrics
        }
    }

    pub fn observe_report(&self, report: &InstanceReport) {
        self.up.set(i64::from(report.running));
        for role in [Role::Primary, Role::Replica, Role::Unknown] {
            self.role
                .get_or_create(&RoleLabel {
                    role: role.as_str().into(),
                })
                .set(i64::from(role == report.role));
        }
        self.lag_bytes
            .set(report.lag_bytes.unwrap_or(0).min(i64::MAX as u64) as i64);
        self.lag_seconds.set(report.lag_seconds.unwrap_or(0.0));
        self.wal_receiver.clear();
        if let Some(state) = &report.wal_receiver {
            self.wal_receiver
                .get_or_create(&StateLabel {
                    state: state.clone(),
                })
                .set(1);
        }
        self.pending_restart.set(i64::from(report.pending_restart));
        let lease = report.lease.as_ref();
        self.lease_held
            .set(i64::from(lease.is_some_and(|l| l.held)));
        self.fenced.set(i64::from(lease.is_some_and(|l| l.fenced)));
    }

    pub fn observe_sample(&self, sample: Option<&Sample>) {
        self.connections.clear();
        self.database_size.clear();
        let Some(sample) = sample else {
            return;
        };
        for (state, count) in &sample.connections {
            self.connections
                .get_or_create(&StateLabel {
                    state: state.clone(),
                })
                .set(*count);
        }
        self.xid_age.set(sample.xid_age);
        for (datname, size) in &sample.database_sizes {
            self.database_size
                .get_or_create(&DatabaseLabel {
                    datname: datname.clone(),
                })
                .set(*size);
        }
    }

    pub fn rewind_result(&self, ok: bool) {
        self.rewinds
            .get_or_create(&ResultLabel {
                result: if ok { "ok" } else { "failed" }.into(),
            })
            .inc();
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_report_and_sample() {
        let metrics = Metrics::new();
        let report = InstanceReport {
            role: Role::Replica,
            running: true,
            ready: true,
            timeline: Some(1),
            lag_bytes: Some(42),
            lag_seconds: Some(0.5),
            wal_receiver: Some("streaming".into()),
            ..crate::instance::state::empty_report("db-2")
        };
        metrics.observe_report(&report);
        metrics.observe_sample(Some(&Sample {
            connections: vec![("active".into(), 3)],
            xid_age: 100,
            database_sizes: vec![("app".into(), 8_000_000)],
        }));
        metrics.rewind_result(true);
        metrics.promotions.inc();
        let text = metrics.encode();
        for line in [
            "capstan_postgres_up 1",
            "capstan_postgres_role{role=\"replica\"} 1",
            "capstan_postgres_role{role=\"primary\"} 0",
            "capstan_replication_lag_bytes 42",
            "capstan_replication_lag_seconds 0.5",
            "capstan_wal_receiver_state{state=\"streaming\"} 1",
            "capstan_postgres_connections{state=\"active\"} 3",
            "capstan_postgres_xid_age 100",
            "capstan_database_size_bytes{datname=\"app\"} 8000000",
            "capstan_rewinds_total{result=\"ok\"} 1",
            "capstan_promotions_total 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }
}

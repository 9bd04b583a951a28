//! The metric names Capstan's three exporters (operator, instance manager,
//! pooler) serve, as a scrape shows them: what the shipped alert rules and
//! Grafana dashboard may refer to, checked by their tests.

use std::collections::BTreeSet;

/// Each exporter's exposition with every family registered and no figures.
pub fn expositions() -> [(&'static str, String); 3] {
    [
        (
            "operator",
            crate::operator::metrics::Metrics::default()
                .encode()
                .unwrap_or_default(),
        ),
        ("instance", crate::instance::metrics::Metrics::catalog()),
        ("pooler", crate::pooler::metrics::catalog()),
    ]
}

/// Names of the series a scrape can return: a counter's `_total`, a
/// histogram's `_bucket`, `_sum` and `_count`, the others as declared.
pub fn exported_metric_names() -> BTreeSet<String> {
    expositions()
        .iter()
        .flat_map(|(_, text)| series_names(text))
        .collect()
}

fn series_names(exposition: &str) -> Vec<String> {
    exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .flat_map(|(name, kind)| {
            let suffixes: &[&str] = match kind {
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_sum", "_count"],
                "summary" => &["", "_sum", "_count"],
                _ => &[""],
            };
            suffixes
                .iter()
                .map(|s| format!("{name}{s}"))
                .collect::<Vec<_>>()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cover_every_exporter_and_their_series_suffixes() {
        let names = exported_metric_names();
        for name in [
            "capstan_operator_reconciles_total",
            "capstan_operator_reconcile_duration_seconds_bucket",
            "capstan_operator_failovers_total",
            "capstan_operator_cluster_condition",
            "capstan_postgres_up",
            "capstan_promotions_total",
            "capstan_tls_certificate_expiry_timestamp_seconds",
            "pgbouncer_pools_client_waiting_connections",
            "pgbouncer_stats_sql_transactions_pooled_total",
            "pgbouncer_config_max_client_connections",
        ] {
            assert!(names.contains(name), "{name} missing from {names:?}");
        }
        assert!(!names.contains("capstan_promotions"));
    }
}

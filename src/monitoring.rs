//! What Capstan's three exporters (operator, instance manager, pooler)
//! serve on `/metrics`: the format a scraper asked for, and the metric
//! names a scrape shows, which the shipped alert rules and Grafana
//! dashboard may refer to (checked by their tests).

use std::collections::BTreeSet;

use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// `/metrics` from an OpenMetrics exposition (what prometheus-client
/// writes): as is for a scraper that accepts OpenMetrics (Prometheus asks
/// for it first), in the classic text format for everyone else (`curl`,
/// `promtool check metrics`, older scrapers), where a counter's HELP and
/// TYPE name its `_total` series.
pub fn response(request: &HeaderMap, openmetrics: String) -> Response {
    let accepts_openmetrics = request
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    if accepts_openmetrics {
        ([(header::CONTENT_TYPE, OPENMETRICS)], openmetrics).into_response()
    } else {
        ([(header::CONTENT_TYPE, TEXT)], to_text_format(&openmetrics)).into_response()
    }
}

/// The classic Prometheus text format (0.0.4) of an OpenMetrics exposition
/// that uses counters, gauges and histograms only.
pub fn to_text_format(openmetrics: &str) -> String {
    let counters: BTreeSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .filter(|(_, kind)| *kind == "counter")
        .map(|(name, _)| name)
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let metadata = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        match metadata.and_then(|(p, rest)| rest.split_once(' ').map(|(n, r)| (p, n, r))) {
            Some((prefix, name, rest)) if counters.contains(name) => {
                out.push_str(&format!("{prefix}{name}_total {rest}"));
            }
            _ => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// Each exporter's exposition with every family registered and no figures.
pub fn expositions() -> [(&'static str, String); 3] {
    [
        ("operator", operator_catalog()),
        ("instance", crate::instance::metrics::Metrics::catalog()),
        ("pooler", crate::pooler::metrics::catalog()),
    ]
}

fn operator_catalog() -> String {
    let metrics = crate::operator::metrics::Metrics::default();
    metrics.error(crate::operator::metrics::ErrorCategory::Apply);
    metrics.encode().unwrap_or_default()
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
    fn the_text_format_names_counters_by_their_series() {
        let om = "# HELP up Up.\n# TYPE up gauge\nup 1\n# HELP x Runs.\n# TYPE x counter\nx_total{a=\"b\"} 2\n# HELP d Time.\n# TYPE d histogram\n# UNIT d seconds\nd_count 1\n# EOF\n";
        assert_eq!(
            to_text_format(om),
            "# HELP up Up.\n# TYPE up gauge\nup 1\n# HELP x_total Runs.\n# TYPE x_total counter\nx_total{a=\"b\"} 2\n# HELP d Time.\n# TYPE d histogram\nd_count 1\n"
        );
    }

    #[test]
    fn prometheus_gets_openmetrics_and_others_the_text_format() {
        let om = "# HELP x Runs.\n# TYPE x counter\nx_total 2\n# EOF\n".to_string();
        let mut prometheus = HeaderMap::new();
        prometheus.insert(
            header::ACCEPT,
            "application/openmetrics-text;version=1.0.0;q=0.6,text/plain;version=0.0.4;q=0.3"
                .parse()
                .unwrap(),
        );
        let r = response(&prometheus, om.clone());
        assert_eq!(r.headers()[header::CONTENT_TYPE], OPENMETRICS);
        let r = response(&HeaderMap::new(), om);
        assert_eq!(r.headers()[header::CONTENT_TYPE], TEXT);
    }

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

//! `GET /metrics`: the figures people run pgbouncer_exporter for (pools,
//! clients active/waiting, server connections, average wait/query times,
//! transaction totals), read from the admin console at scrape time, with
//! pgbouncer_exporter's metric names so existing dashboards keep working.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

use super::admin::{ClientLimits, Pool, Stats};
use super::shared::{Shared, Snapshot};

/// The admin console's own pseudo-database, left out of the figures.
const ADMIN_DB: &str = "pgbouncer";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabels {
    database: String,
    user: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MountLabel {
    mount: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DatabaseLabels {
    database: String,
}

type SecondsGauge = Gauge<f64, AtomicU64>;
type SecondsCounter = Counter<f64, AtomicU64>;

fn us(v: u64) -> f64 {
    v as f64 / 1_000_000.0
}

/// Reads the console and encodes the Prometheus text format.
pub async fn gather(shared: &Shared) -> String {
    let snap = shared.snapshot();
    let figures = if snap.running {
        match (
            shared.admin.show_pools().await,
            shared.admin.show_stats().await,
            shared.admin.client_limits().await,
        ) {
            (Ok(pools), Ok(stats), Ok(limits)) => Some(Figures {
                pools,
                stats,
                limits,
            }),
            (p, s, l) => {
                for e in [p.err(), s.err(), l.err()].into_iter().flatten() {
                    tracing::warn!(error = %e, "cannot read PgBouncer figures for /metrics");
                }
                None
            }
        }
    } else {
        None
    };
    let tls = crate::agents::tls::mounted(&shared.tls);
    let expiry: Vec<(String, i64)> = tls
        .into_iter()
        .filter_map(|(mount, m)| m.not_after.map(|t| (mount, t)))
        .collect();
    encode_all(&snap, figures.as_ref(), &expiry)
}

/// What the admin console answered at scrape time.
#[derive(Debug, Default)]
pub struct Figures {
    pub pools: Vec<Pool>,
    pub stats: Vec<Stats>,
    pub limits: ClientLimits,
}

/// Every family with one made-up figure each: the names and help texts a
/// scrape can show (families without figures are not encoded at all).
pub fn catalog() -> String {
    let figures = Figures {
        pools: vec![Pool::default()],
        stats: vec![Stats::default()],
        limits: ClientLimits::default(),
    };
    encode_all(
        &Snapshot::default(),
        Some(&figures),
        &[("server".into(), 0)],
    )
}

fn pool_gauge(registry: &mut Registry, name: &str, help: &str) -> Family<PoolLabels, Gauge> {
    let f = Family::<PoolLabels, Gauge>::default();
    registry.register(name, help, f.clone());
    f
}

fn encode_all(snap: &Snapshot, figures: Option<&Figures>, expiry: &[(String, i64)]) -> String {
    let mut registry = Registry::default();
    let up = figures.is_some();
    let empty = Figures::default();
    let Figures {
        pools,
        stats,
        limits,
    } = figures.unwrap_or(&empty);

    let g_up = Gauge::<i64>::default();
    registry.register(
        "pgbouncer_up",
        "PgBouncer answers on its admin console",
        g_up.clone(),
    );
    g_up.set(i64::from(up));
    let g_paused = Gauge::<i64>::default();
    registry.register(
        "capstan_pooler_paused",
        "The pooler holds clients (PAUSE in force)",
        g_paused.clone(),
    );
    g_paused.set(i64::from(snap.paused));
    let c_restarts = Counter::<u64>::default();
    registry.register(
        "capstan_pooler_restarts",
        "PgBouncer processes that ended unexpectedly and were restarted",
        c_restarts.clone(),
    );
    c_restarts.inc_by(snap.restarts);
    let g_used = Gauge::<i64>::default();
    registry.register(
        "pgbouncer_used_clients",
        "Client connections in use (SHOW LISTS used_clients)",
        g_used.clone(),
    );
    let g_max = Gauge::<i64>::default();
    registry.register(
        "pgbouncer_config_max_client_connections",
        "Client connections PgBouncer accepts (max_client_conn)",
        g_max.clone(),
    );
    if up {
        g_used.set(limits.used_clients);
        g_max.set(limits.max_client_conn);
    }
    let expiry_family = Family::<MountLabel, Gauge>::default();
    registry.register(
        "capstan_tls_certificate_expiry_timestamp_seconds",
        "When the certificate of a mounted TLS Secret expires (Unix time)",
        expiry_family.clone(),
    );
    for (mount, not_after) in expiry {
        expiry_family
            .get_or_create(&MountLabel {
                mount: mount.clone(),
            })
            .set(*not_after);
    }

    let cl_active = pool_gauge(
        &mut registry,
        "pgbouncer_pools_client_active_connections",
        "Client connections linked to a server connection or idle",
    );
    let cl_waiting = pool_gauge(
        &mut registry,
        "pgbouncer_pools_client_waiting_connections",
        "Client connections waiting for a server connection",
    );
    let sv_active = pool_gauge(
        &mut registry,
        "pgbouncer_pools_server_active_connections",
        "Server connections linked to a client",
    );
    let sv_idle = pool_gauge(
        &mut registry,
        "pgbouncer_pools_server_idle_connections",
        "Server connections idle and ready for a client",
    );
    let sv_used = pool_gauge(
        &mut registry,
        "pgbouncer_pools_server_used_connections",
        "Server connections idle for longer than server_check_delay",
    );
    let sv_login = pool_gauge(
        &mut registry,
        "pgbouncer_pools_server_login_connections",
        "Server connections logging in",
    );
    let maxwait = Family::<PoolLabels, SecondsGauge>::default();
    registry.register(
        "pgbouncer_pools_client_maxwait_seconds",
        "Wait of the oldest client in the queue",
        maxwait.clone(),
    );
    for p in pools.iter().filter(|p| p.database != ADMIN_DB) {
        let l = PoolLabels {
            database: p.database.clone(),
            user: p.user.clone(),
        };
        cl_active.get_or_create(&l).set(p.cl_active);
        cl_waiting.get_or_create(&l).set(p.cl_waiting);
        sv_active.get_or_create(&l).set(p.sv_active);
        sv_idle.get_or_create(&l).set(p.sv_idle);
        sv_used.get_or_create(&l).set(p.sv_used);
        sv_login.get_or_create(&l).set(p.sv_login);
        maxwait.get_or_create(&l).set(p.maxwait.as_secs_f64());
    }

    let counter = |registry: &mut Registry, name: &str, help: &str| {
        let f = Family::<DatabaseLabels, Counter>::default();
        registry.register(name, help, f.clone());
        f
    };
    let seconds_counter = |registry: &mut Registry, name: &str, help: &str| {
        let f = Family::<DatabaseLabels, SecondsCounter>::default();
        registry.register(name, help, f.clone());
        f
    };
    let seconds_gauge = |registry: &mut Registry, name: &str, help: &str| {
        let f = Family::<DatabaseLabels, SecondsGauge>::default();
        registry.register(name, help, f.clone());
        f
    };
    let xacts = counter(
        &mut registry,
        "pgbouncer_stats_sql_transactions_pooled",
        "Transactions pooled",
    );
    let queries = counter(
        &mut registry,
        "pgbouncer_stats_queries_pooled",
        "Queries pooled",
    );
    let received = counter(
        &mut registry,
        "pgbouncer_stats_received_bytes",
        "Bytes received from clients",
    );
    let sent = counter(
        &mut registry,
        "pgbouncer_stats_sent_bytes",
        "Bytes sent to clients",
    );
    let xact_time = seconds_counter(
        &mut registry,
        "pgbouncer_stats_server_in_transaction_seconds",
        "Time spent by server connections in transactions",
    );
    let query_time = seconds_counter(
        &mut registry,
        "pgbouncer_stats_queries_duration_seconds",
        "Time spent by server connections running queries",
    );
    let wait_time = seconds_counter(
        &mut registry,
        "pgbouncer_stats_client_wait_seconds",
        "Time clients spent waiting for a server connection",
    );
    let avg_xact = seconds_gauge(
        &mut registry,
        "pgbouncer_stats_avg_transaction_seconds",
        "Average transaction duration over the last stats period",
    );
    let avg_query = seconds_gauge(
        &mut registry,
        "pgbouncer_stats_avg_query_seconds",
        "Average query duration over the last stats period",
    );
    let avg_wait = seconds_gauge(
        &mut registry,
        "pgbouncer_stats_avg_wait_seconds",
        "Average client wait for a server over the last stats period",
    );
    for s in stats.iter().filter(|s| s.database != ADMIN_DB) {
        let l = DatabaseLabels {
            database: s.database.clone(),
        };
        xacts.get_or_create(&l).inc_by(s.total_xact_count);
        queries.get_or_create(&l).inc_by(s.total_query_count);
        received.get_or_create(&l).inc_by(s.total_received);
        sent.get_or_create(&l).inc_by(s.total_sent);
        xact_time.get_or_create(&l).inc_by(us(s.total_xact_time_us));
        query_time
            .get_or_create(&l)
            .inc_by(us(s.total_query_time_us));
        wait_time.get_or_create(&l).inc_by(us(s.total_wait_time_us));
        avg_xact.get_or_create(&l).set(us(s.avg_xact_time_us));
        avg_query.get_or_create(&l).set(us(s.avg_query_time_us));
        avg_wait.get_or_create(&l).set(us(s.avg_wait_time_us));
    }

    let mut out = String::new();
    if let Err(e) = encode(&mut out, &registry) {
        tracing::error!(error = %e, "cannot encode metrics");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn snap() -> Snapshot {
        Snapshot {
            running: true,
            paused: true,
            shutting_down: false,
            backend_host: "db-rw".into(),
            backend_port: 5432,
            last_error: None,
            restarts: 2,
            reloads: 0,
        }
    }

    #[test]
    fn encodes_pool_and_stats_figures() {
        let pools = vec![
            Pool {
                database: "app".into(),
                user: "alice".into(),
                cl_active: 8,
                cl_waiting: 3,
                sv_active: 2,
                sv_idle: 1,
                maxwait: Duration::from_millis(1500),
                ..Default::default()
            },
            Pool {
                database: "pgbouncer".into(),
                user: "pgbouncer".into(),
                cl_active: 1,
                ..Default::default()
            },
        ];
        let stats = vec![Stats {
            database: "app".into(),
            total_xact_count: 1234,
            avg_wait_time_us: 2500,
            ..Default::default()
        }];
        let figures = Figures {
            pools,
            stats,
            limits: ClientLimits {
                used_clients: 12,
                max_client_conn: 1000,
            },
        };
        let text = encode_all(
            &snap(),
            Some(&figures),
            &[("server".to_string(), 1_800_000_000)],
        );
        for line in [
            "pgbouncer_up 1",
            "pgbouncer_used_clients 12",
            "pgbouncer_config_max_client_connections 1000",
            "capstan_tls_certificate_expiry_timestamp_seconds{mount=\"server\"} 1800000000",
            "capstan_pooler_paused 1",
            "capstan_pooler_restarts_total 2",
            "pgbouncer_pools_client_active_connections{database=\"app\",user=\"alice\"} 8",
            "pgbouncer_pools_client_waiting_connections{database=\"app\",user=\"alice\"} 3",
            "pgbouncer_pools_server_active_connections{database=\"app\",user=\"alice\"} 2",
            "pgbouncer_pools_client_maxwait_seconds{database=\"app\",user=\"alice\"} 1.5",
            "pgbouncer_stats_sql_transactions_pooled_total{database=\"app\"} 1234",
            "pgbouncer_stats_avg_wait_seconds{database=\"app\"} 0.0025",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        assert!(!text.contains("database=\"pgbouncer\""));
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn without_an_answer_from_the_console_it_reports_down_and_no_limits() {
        let text = encode_all(&snap(), None, &[]);
        assert!(text.lines().any(|l| l == "pgbouncer_up 0"), "{text}");
        assert!(
            text.lines()
                .any(|l| l == "pgbouncer_config_max_client_connections 0"),
            "{text}"
        );
    }
}

//! HA scenario d: a planned switchover under load. `pgbench -c 8` runs
//! through `<name>-pooler` (TLS, `sslmode=verify-full`) while the
//! `capstan.dev/switchover` annotation asks for another primary: the
//! switchover completes, pgbench reports no failed transaction and no
//! aborted client (the poolers held the clients instead), and the old
//! primary follows as a replica.
//!
//! Runs on the harness and on a real cluster (pgbench reaches the pooler
//! Service through a port-forward there). Needs `pgbench`
//! (`$CAPSTAN_PGBENCH` or PostgreSQL 15's from Debian).

use std::time::{Duration, Instant};

use capstan_e2e::E2eError;
use capstan_e2e::ha::{self, HaCluster, REJOIN_WITHIN, SWITCHOVER_WITHIN, ha_example};
use capstan_e2e::load::{Pgbench, pgbench_binary};
use capstan_e2e::target::{Target, fail};

/// Length of the pgbench run; the switchover is requested after
/// [`REQUEST_AFTER`], so load runs before, during and after it.
const RUN: Duration = Duration::from_secs(30);
const REQUEST_AFTER: Duration = Duration::from_secs(8);

async fn scenario(target: &mut Target, ns: &str) -> Result<(), E2eError> {
    let Some(pgbench) = pgbench_binary() else {
        eprintln!("skipped: pgbench not found (install postgresql-15 or set CAPSTAN_PGBENCH)");
        return Ok(());
    };
    let ha = HaCluster::create(target, &ha_example("ha-cluster.yaml", ns)?).await?;
    let c = ha.get(target).await?;
    let old = ha::current_primary(&c)
        .cloned()
        .ok_or_else(|| E2eError::Check("no current primary".into()))?;
    let to = ha::ready_replica(&c, &[&old])
        .ok_or_else(|| E2eError::Check(format!("no ready replica: {}", ha::status_summary(&c))))?;

    let bench = Pgbench::new(&pgbench, &ha, &ha.pooler(target).await?)?;
    bench.init(1).await?;
    let run = bench.start(8, RUN)?;
    let started = Instant::now();
    tokio::time::sleep(REQUEST_AFTER).await;
    let request = format!("{to}/e2e-{}", std::process::id());
    ha.request_switchover(target, &request).await?;
    let requested = Instant::now();
    eprintln!("[{ns}] requested switchover {old} -> {to} ({request}) under pgbench -c 8");
    let (c, switchover) = ha
        .wait_switchover(target, &request, SWITCHOVER_WITHIN)
        .await?;
    eprintln!(
        "[{ns}] switchover completed {:.1}s after the request; clients held {:?} ms; {}",
        requested.elapsed().as_secs_f64(),
        switchover.client_hold_ms,
        switchover.message
    );
    assert_eq!(switchover.from, old);
    assert_eq!(switchover.to, to);
    assert_eq!(ha::target_primary(&c), Some(&to));
    if ha::current_primary(&c) != Some(&to) {
        eprintln!(
            "[{ns}] NOTE: status.switchover said Completed while currentPrimary was still {:?}: {}",
            ha::current_primary(&c),
            ha::status_summary(&c)
        );
    }
    ha.wait_current_primary(target, &to, Duration::from_secs(30))
        .await?;
    assert!(
        switchover.client_hold_ms.is_some(),
        "status.switchover.clientHoldMs is reported"
    );

    let report = run.finish(RUN + Duration::from_secs(60)).await?;
    eprintln!(
        "[{ns}] pgbench after {:.1}s: {} transactions, {} failed, {} clients aborted, longest transaction {:.0} ms",
        started.elapsed().as_secs_f64(),
        report.processed,
        report.failed,
        report.aborted_clients,
        report.max_latency_ms
    );
    assert!(
        report.failed == 0 && report.aborted_clients == 0 && !report.run_aborted,
        "pgbench saw client errors across the switchover: {:?}\n{}",
        report.errors,
        report.output
    );
    assert!(report.processed > 0, "pgbench ran: {}", report.output);

    ha.wait_replica(target, &old, REJOIN_WITHIN).await?;
    ha.wait_ready(target, Duration::from_secs(60)).await?;
    ha.delete(target).await
}

#[test]
fn switchover_under_pgbench_loses_no_client() {
    capstan_e2e::scenario(|| async {
        let mut target = Target::from_env().await.expect("e2e target");
        let ns = format!("e2e-ha-switchover-{}", std::process::id());
        if let Err(e) = scenario(&mut target, &ns).await {
            fail(&target, &ns, e).await;
        }
    });
}

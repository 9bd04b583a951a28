//! Major-upgrade measurement (17 → 18) on a ~1 GB database, not a
//! pass/fail test: run it with `bench/upgrade.sh` (release build).
//!
//! A writer commits numbered rows through the pooler, one at a time, with
//! a 120 s bound on each statement (longer than the poolers' hold), so a
//! write the poolers hold waits rather than fails. Reported: the longest
//! time one write took (held across the upgrade), the longest gap between
//! two acknowledged writes (the write outage as a client sees it), failed
//! writes, `status.upgrade.downtimeMs` (PAUSE to RESUME), pg_upgrade's own
//! time, and the whole upgrade until replicas stream again.
//!
//! Every output line starts with `upgrade-bench`.

use std::time::{Duration, Instant};

use capstan_e2e::E2eError;
use capstan_e2e::ha::{As, HaCluster, ha_example};
use capstan_e2e::harness::wait_for;
use capstan_e2e::load::{Pgbench, Writer, WriterOptions, pgbench_binary};
use capstan_e2e::sql;
use capstan_e2e::target::{Target, fail};

/// pgbench scale 70: about 1 GB.
const SCALE: u32 = 70;

async fn scenario(target: &mut Target, ns: &str) -> Result<(), E2eError> {
    let Some(pgbench) = pgbench_binary() else {
        return Err(E2eError::Setup("pgbench not found".into()));
    };
    let spec = ha_example("ha-cluster.yaml", ns)?;
    let ha = HaCluster::create(target, &spec).await?;
    let target = &*target;
    let rw = ha.rw(target).await?;
    let loading = Instant::now();
    Pgbench::new(&pgbench, &ha, &rw)?.init(SCALE).await?;
    let admin = ha.connect(&rw, As::App).await?;
    let size = sql::value(
        &admin,
        "SELECT pg_size_pretty(pg_database_size(current_database()))",
    )
    .await?;
    println!(
        "upgrade-bench database: {size} (pgbench scale {SCALE}, loaded in {:.0}s)",
        loading.elapsed().as_secs_f64()
    );
    // Replicas have it all before the upgrade starts.
    tokio::time::sleep(Duration::from_secs(10)).await;

    let writer = Writer::start(
        &ha,
        &ha.pooler(target).await?,
        WriterOptions {
            op_timeout: Duration::from_secs(120),
            ..WriterOptions::default()
        },
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let started = Instant::now();
    let patch = serde_json::json!({"spec": {"postgres": {"version": 18}}});
    capstan_e2e::cluster::merge_patch(&target.client(), &ha.ns, &ha.name, &patch).await?;
    let c = wait_for(
        "status.upgrade Completed",
        Duration::from_secs(900),
        Duration::from_millis(500),
        || async {
            let c = ha.get(target).await.ok()?;
            let u = c.status.as_ref()?.upgrade.as_ref()?;
            match u.phase.as_str() {
                "Completed" | "Failed" => Some(c),
                _ => None,
            }
        },
    )
    .await?;
    let total = started.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let log = writer.stop().await;
    let record = c
        .status
        .as_ref()
        .and_then(|s| s.upgrade.clone())
        .unwrap_or_default();
    if record.phase != "Completed" {
        return Err(E2eError::Check(format!(
            "upgrade failed: {}",
            record.message
        )));
    }
    let during: Vec<_> = log.acks.iter().filter(|a| a.sent >= started).collect();
    let longest_write = during
        .iter()
        .map(|a| a.acked.duration_since(a.sent))
        .max()
        .unwrap_or_default();
    let longest_gap = during
        .windows(2)
        .map(|w| w[1].acked.duration_since(w[0].acked))
        .max()
        .unwrap_or_default();
    println!(
        "upgrade-bench writes through the pooler: {} acknowledged, {} failed; longest single write {:.1}s, longest gap between acknowledged writes {:.1}s",
        during.len(),
        log.failures.iter().filter(|f| f.at >= started).count(),
        longest_write.as_secs_f64(),
        longest_gap.as_secs_f64()
    );
    for f in log.failures.iter().filter(|f| f.at >= started).take(5) {
        println!("upgrade-bench failed write: {}", f.error);
    }
    println!(
        "upgrade-bench status.upgrade: downtimeMs {:?} (PAUSE to RESUME), pgUpgradeMs {:?}; whole upgrade incl. re-cloned replicas {:.1}s",
        record.downtime_ms,
        record.pg_upgrade_ms,
        total.as_secs_f64()
    );
    ha.delete(target).await
}

#[test]
#[ignore = "measurement: bench/upgrade.sh"]
fn bench_major_upgrade() {
    capstan_e2e::scenario(|| async {
        let mut target = Target::from_env().await.expect("e2e target");
        let ns = format!("upgrade-bench-{}", std::process::id());
        if let Err(e) = scenario(&mut target, &ns).await {
            fail(&target, &ns, e).await;
        }
    });
}

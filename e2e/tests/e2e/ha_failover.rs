//! HA scenario a: the primary pod freezes (every process SIGSTOPped, as a
//! hung node) → its Lease goes unrenewed → a replica is promoted, the
//! pooler follows and writes through `<name>-pooler` resume; thawed, the
//! old primary rejoins as a replica and every row written before and after
//! the failover is on both.
//!
//! Freezing a pod is a harness fault hook: on a real cluster
//! (`CAPSTAN_E2E_KUBECONFIG`) this scenario skips with a message.

use std::time::{Duration, Instant};

use capstan_e2e::E2eError;
use capstan_e2e::ha::{self, FAILOVER_WITHIN, HaCluster, REJOIN_WITHIN, ha_example};
use capstan_e2e::harness::wait_for;
use capstan_e2e::load::{Writer, WriterOptions};
use capstan_e2e::target::{Target, fail};

async fn scenario(target: &mut Target, ns: &str) -> Result<(), E2eError> {
    if target.harness().is_none() {
        eprintln!("skipped: freezing a pod needs the local harness's fault hooks");
        return Ok(());
    }
    let ha = HaCluster::create(target, &ha_example("ha-cluster.yaml", ns)?).await?;
    let c = ha.get(target).await?;
    let old = ha::current_primary(&c)
        .cloned()
        .ok_or_else(|| E2eError::Check("no current primary".into()))?;

    let pooler = ha.pooler(target).await?;
    let writer = Writer::start(&ha, &pooler, WriterOptions::default());
    writer
        .wait_ack_after(Instant::now(), Duration::from_secs(30))
        .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Replication is asynchronous here: only commits every replica has
    // replayed are promised to survive the loss of the primary.
    let before = writer.log().acked();
    ha.wait_replicated(target, 2, Duration::from_secs(30))
        .await?;

    let server = writer
        .log()
        .acks
        .last()
        .map(|a| a.server.clone())
        .unwrap_or_default();
    let harness = target.harness().expect("local harness");
    let frozen = harness
        .runtime()
        .freeze_pod(ns, &old)
        .map_err(|e| E2eError::Check(format!("freeze {old}: {e}")))?;
    let t0 = Instant::now();
    eprintln!("[{ns}] froze primary {old} ({frozen} processes)");

    let (after, failover) = ha.wait_failover(target, &old, FAILOVER_WITHIN).await?;
    let detected = t0.elapsed();
    let new = failover.to.clone();
    let ack = writer
        .wait_ack_from_other(t0, &server, Duration::from_secs(60))
        .await?;
    eprintln!(
        "[{ns}] failover {old} -> {new} completed (seen {:.1}s after the freeze; {}); first write through the pooler ({}) {:.1}s after the freeze",
        detected.as_secs_f64(),
        failover.message,
        ack.server,
        ack.acked.duration_since(t0).as_secs_f64()
    );
    eprintln!("[{ns}] status: {}", ha::status_summary(&after));
    assert_ne!(new, old);
    // The third instance follows the new primary.
    let third = after
        .status
        .as_ref()
        .and_then(|s| s.instances.iter().find(|i| i.name != old && i.name != new))
        .map(|i| i.name.clone())
        .ok_or_else(|| E2eError::Check(ha::status_summary(&after)))?;
    ha.wait_streaming(target, &[&third], REJOIN_WITHIN).await?;
    eprintln!(
        "[{ns}] {third} streams from {new} {:.1}s after the freeze",
        t0.elapsed().as_secs_f64()
    );
    assert_eq!(ha::target_primary(&after), Some(&new));
    // A few more commits on the new primary.
    let resumed = Instant::now();
    writer
        .wait_ack_after(resumed + Duration::from_secs(1), Duration::from_secs(30))
        .await?;

    let harness = target.harness().expect("local harness");
    harness
        .runtime()
        .thaw_pod(ns, &old)
        .map_err(|e| E2eError::Check(format!("thaw {old}: {e}")))?;
    eprintln!("[{ns}] thawed {old}");
    let rejoined = Instant::now();
    ha.wait_replica(target, &old, REJOIN_WITHIN).await?;
    eprintln!(
        "[{ns}] {old} is a ready replica {:.1}s after the thaw",
        rejoined.elapsed().as_secs_f64()
    );
    let c = ha.get(target).await?;
    assert_eq!(
        ha::current_primary(&c),
        Some(&new),
        "{}",
        ha::status_summary(&c)
    );

    let log = writer.stop().await;
    // Everything acknowledged after the freeze was committed by the new
    // primary (the frozen one could not answer).
    let required: std::collections::BTreeSet<i64> = before
        .iter()
        .copied()
        .chain(log.acks.iter().filter(|a| a.sent >= t0).map(|a| a.n))
        .collect();
    let on_primary = ha.written(&ha.rw(target).await?).await?;
    let missing: Vec<i64> = required.difference(&on_primary).copied().collect();
    assert!(
        missing.is_empty(),
        "rows missing on the new primary {new}: {missing:?}"
    );
    let window_lost = log.missing(&on_primary).len();
    eprintln!(
        "[{ns}] {} rows before, {} acknowledged in all, {window_lost} acknowledged just before the freeze but not replicated (asynchronous replication allows it)",
        before.len(),
        log.acks.len()
    );
    // The old primary replays the new timeline: every row is there too.
    let old_pod = ha.pod(target, &old).await?;
    wait_for(
        &format!("every row on {old}"),
        Duration::from_secs(30),
        Duration::from_millis(300),
        || async {
            let rows = ha.written(&old_pod).await.ok()?;
            required.is_subset(&rows).then_some(())
        },
    )
    .await?;

    ha.wait_streaming(target, &[&old, &third], Duration::from_secs(60))
        .await?;
    ha.wait_ready(target, Duration::from_secs(60)).await?;
    ha.delete(target).await
}

#[test]
fn frozen_primary_is_replaced_and_rejoins_as_a_replica() {
    capstan_e2e::scenario(|| async {
        let mut target = Target::from_env().await.expect("e2e target");
        let ns = format!("e2e-ha-freeze-{}", std::process::id());
        if let Err(e) = scenario(&mut target, &ns).await {
            fail(&target, &ns, e).await;
        }
    });
}

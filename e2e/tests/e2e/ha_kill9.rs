//! HA scenario b: the primary's postmaster is killed with SIGKILL. Its
//! instance manager is alive and keeps the Lease, so it restarts
//! PostgreSQL in place (crash recovery): no failover, `targetPrimary` never
//! moves, writes through the pooler resume, and no acknowledged commit is
//! lost.
//!
//! Runs on the harness (the kubelet's fault hook) and on a real cluster
//! (`kill` run by `exec` in the pod's `postgres` container).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use capstan_e2e::E2eError;
use capstan_e2e::ha::{self, HaCluster, ha_example};
use capstan_e2e::load::{Writer, WriterOptions};
use capstan_e2e::target::{Target, fail};

async fn scenario(target: &mut Target, ns: &str) -> Result<(), E2eError> {
    let ha = HaCluster::create(target, &ha_example("ha-cluster.yaml", ns)?).await?;
    let c = ha.get(target).await?;
    let primary = ha::current_primary(&c)
        .cloned()
        .ok_or_else(|| E2eError::Check("no current primary".into()))?;
    let failover_before = ha::failover(&c).cloned();

    let pooler = ha.pooler(target).await?;
    let writer = Writer::start(&ha, &pooler, WriterOptions::default());
    writer
        .wait_ack_after(Instant::now(), Duration::from_secs(30))
        .await?;

    // Every targetPrimary the status names from now on.
    let seen = Arc::new(Mutex::new(vec![primary.clone()]));
    let watch = {
        let seen = seen.clone();
        let client = target.client();
        let (ns, name) = (ha.ns.clone(), ha.name.clone());
        tokio::spawn(async move {
            loop {
                if let Ok(c) = capstan_e2e::cluster::get(&client, &ns, &name).await {
                    let target = ha::target_primary(&c).cloned().unwrap_or_default();
                    let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
                    if seen.last() != Some(&target) {
                        seen.push(target);
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };

    let server = writer
        .log()
        .acks
        .last()
        .map(|a| a.server.clone())
        .unwrap_or_default();
    target.kill_postmaster(ns, &primary).await?;
    let t0 = Instant::now();
    eprintln!("[{ns}] killed the postmaster of {primary} ({server}) with SIGKILL");
    // Backends outlive their postmaster for a moment and may still commit:
    // recovery is the first commit by the restarted server.
    let ack = writer
        .wait_ack_from_other(t0, &server, Duration::from_secs(60))
        .await?;
    let orphans = writer
        .log()
        .acks
        .iter()
        .filter(|a| a.sent >= t0 && a.server == server)
        .count();
    eprintln!(
        "[{ns}] first write through the pooler by the restarted server ({}) {:.2}s after the kill; {orphans} commits by the old server's backends after the kill",
        ack.server,
        ack.acked.duration_since(t0).as_secs_f64()
    );
    let address = |s: &str| s.split(' ').next().unwrap_or_default().to_string();
    assert_eq!(
        address(&ack.server),
        address(&server),
        "restarted in place, on the same pod"
    );
    let ready = ha.wait_ready(target, Duration::from_secs(60)).await?;
    // Longer than the detection bound: a failover would have started by now.
    tokio::time::sleep(Duration::from_secs(ha::DETECTION_SECONDS as u64 + 2)).await;
    watch.abort();
    let c = ha.get(target).await?;
    let seen = seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
    assert_eq!(
        seen,
        std::slice::from_ref(&primary),
        "targetPrimary never moved"
    );
    assert_eq!(
        ha::current_primary(&c),
        Some(&primary),
        "{}",
        ha::status_summary(&c)
    );
    assert_eq!(
        ha::failover(&c),
        failover_before.as_ref(),
        "no failover was started"
    );
    assert_eq!(ready.status.as_ref().map(|s| s.ready_instances), Some(3));

    let log = writer.stop().await;
    let on_primary = ha.written(&ha.rw(target).await?).await?;
    let missing = log.missing(&on_primary);
    assert!(
        missing.is_empty(),
        "acknowledged commits lost by the crash restart: {missing:?}"
    );
    eprintln!(
        "[{ns}] {} commits acknowledged, none lost; {} attempts failed during the restart",
        log.acks.len(),
        log.failures.len()
    );
    ha.delete(target).await
}

#[test]
fn killed_postmaster_restarts_in_place_without_failover() {
    capstan_e2e::scenario(|| async {
        let mut target = Target::from_env().await.expect("e2e target");
        let ns = format!("e2e-ha-kill9-{}", std::process::id());
        if let Err(e) = scenario(&mut target, &ns).await {
            fail(&target, &ns, e).await;
        }
    });
}

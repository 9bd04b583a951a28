//! HA scenario c: the primary is cut off the network (nftables drops its
//! traffic with the API server, the other pods, the Services and the host)
//! while it keeps running. It cannot renew its Lease, so it must fence
//! itself (stop accepting writes) before another instance is promoted, and
//! a new primary is elected; healed, the old one returns as a replica.
//!
//! How "no write accepted after the bound" is checked honestly: the
//! partition leaves one path open, the one between the pod and the node
//! address (the kubelet's own: probes). A prober connects from the node
//! address straight to the old primary's pod IP before the partition and
//! keeps committing one row at a time over that path (reconnecting when
//! the connection breaks), like a client stuck on the primary's side of
//! the partition. Every attempt is recorded as acknowledged, answered with
//! an error (the server or its host said no), or timed out (no answer). The
//! checks:
//! * the path stays alive across the partition (some attempt after it gets
//!   an answer), so the absence of acknowledgements means something;
//! * no commit is acknowledged on the old primary once the detection bound
//!   (`detectionSeconds`, the Lease duration) has passed since the
//!   partition — the instance manager promises to fence after half of it;
//! * every commit the old primary acknowledged came back before the first
//!   commit sent to the new primary: the two never accepted writes at the
//!   same time.
//!
//! Partitions are a harness fault hook (nftables): on a real cluster, or
//! without `nft`, the scenario skips with a message.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use capstan_e2e::E2eError;
use capstan_e2e::ha::{self, As, Endpoint, FAILOVER_WITHIN, HaCluster, REJOIN_WITHIN, ha_example};
use capstan_e2e::load::{Writer, WriterOptions};
use capstan_e2e::sql;
use capstan_e2e::target::{Target, fail};

/// Bound on each prober attempt: longer means fewer, coarser samples.
const PROBE_TIMEOUT: Duration = Duration::from_millis(1000);

#[derive(Clone, Debug, PartialEq)]
enum Outcome {
    Acked,
    /// An error came back: the server refused, or the connection was
    /// refused or reset. The path works.
    Answered(String),
    /// Nothing came back within [`PROBE_TIMEOUT`].
    TimedOut,
}

#[derive(Clone, Debug)]
struct Probe {
    k: i64,
    sent: Instant,
    done: Instant,
    outcome: Outcome,
}

fn classify(error: &str) -> Outcome {
    if error.contains("timed out") {
        Outcome::TimedOut
    } else {
        Outcome::Answered(error.to_string())
    }
}

/// Commits `INSERT INTO fence_probe` on the pod at `endpoint` from
/// `source`, one at a time, until `stop`.
async fn probe_loop(
    ha: HaCluster,
    endpoint: Endpoint,
    source: IpAddr,
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<Probe>>>,
) {
    let mut conn: Option<tokio_postgres::Client> = None;
    let mut k = 0i64;
    while !stop.load(Ordering::Relaxed) {
        k += 1;
        let sent = Instant::now();
        let outcome = async {
            let client = match conn.take().filter(|c| !c.is_closed()) {
                Some(c) => c,
                None => {
                    match tokio::time::timeout(
                        PROBE_TIMEOUT,
                        sql::connect_from(&ha.login(&endpoint, As::App), source),
                    )
                    .await
                    {
                        Ok(Ok(c)) => c,
                        Ok(Err(e)) => return classify(&e.to_string()),
                        Err(_) => return Outcome::TimedOut,
                    }
                }
            };
            let insert = format!("INSERT INTO fence_probe (k) VALUES ({k})");
            match tokio::time::timeout(PROBE_TIMEOUT, client.batch_execute(&insert)).await {
                Ok(Ok(())) => {
                    conn = Some(client);
                    Outcome::Acked
                }
                Ok(Err(e)) => {
                    if !client.is_closed() {
                        conn = Some(client);
                    }
                    classify(&e.to_string())
                }
                Err(_) => Outcome::TimedOut,
            }
        }
        .await;
        let done = Instant::now();
        log.lock().unwrap_or_else(|e| e.into_inner()).push(Probe {
            k,
            sent,
            done,
            outcome,
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn scenario(target: &mut Target, ns: &str) -> Result<(), E2eError> {
    let Some(harness) = target.harness() else {
        eprintln!("skipped: partitions need the local harness's fault hooks");
        return Ok(());
    };
    if !harness.runtime().partitions_supported() {
        eprintln!("skipped: partitions need nftables (`nft`), which is not available here");
        return Ok(());
    }
    let node = IpAddr::V4(harness.runtime().config().node_ip);
    let ha = HaCluster::create(target, &ha_example("ha-cluster.yaml", ns)?).await?;
    let c = ha.get(target).await?;
    let old = ha::current_primary(&c)
        .cloned()
        .ok_or_else(|| E2eError::Check("no current primary".into()))?;
    let detection = Duration::from_secs(c.spec.failover.detection_seconds.unsigned_abs().into());
    let pooler = ha.pooler(target).await?;
    ha.connect(&pooler, As::App)
        .await?
        .batch_execute("CREATE TABLE fence_probe (k bigint PRIMARY KEY)")
        .await
        .map_err(|e| E2eError::Sql(format!("create fence_probe: {e}")))?;

    let writer = Writer::start(&ha, &pooler, WriterOptions::default());
    writer
        .wait_ack_after(Instant::now(), Duration::from_secs(30))
        .await?;
    let probes = Arc::new(Mutex::new(Vec::<Probe>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let prober = tokio::spawn(probe_loop(
        ha.clone(),
        ha.pod(target, &old).await?,
        node,
        stop.clone(),
        probes.clone(),
    ));
    let probes_now = || probes.lock().unwrap_or_else(|e| e.into_inner()).clone();
    capstan_e2e::harness::wait_for(
        "the prober's first commit on the primary",
        Duration::from_secs(30),
        Duration::from_millis(50),
        || async {
            probes_now()
                .iter()
                .any(|p| p.outcome == Outcome::Acked)
                .then_some(())
        },
    )
    .await?;

    let harness = target.harness().expect("local harness");
    harness
        .runtime()
        .partition_pod(ns, &old)
        .map_err(|e| E2eError::Check(format!("partition {old}: {e}")))?;
    let t0 = Instant::now();
    eprintln!("[{ns}] partitioned primary {old}");

    let (after, failover) = ha.wait_failover(target, &old, FAILOVER_WITHIN).await?;
    let new = failover.to.clone();
    let first_new = writer.wait_ack_after(t0, Duration::from_secs(60)).await?;
    eprintln!(
        "[{ns}] failover {old} -> {new} seen {:.1}s after the partition; first write through the pooler {:.1}s after it ({})",
        t0.elapsed().as_secs_f64(),
        first_new.acked.duration_since(t0).as_secs_f64(),
        first_new.server
    );
    eprintln!("[{ns}] status: {}", ha::status_summary(&after));
    assert_ne!(new, old);
    // Keep probing the fenced primary past the bound, then stop.
    tokio::time::sleep(detection).await;
    stop.store(true, Ordering::Relaxed);
    let _ = tokio::time::timeout(Duration::from_secs(10), prober).await;
    let probes = probes_now();

    let after_cut: Vec<&Probe> = probes.iter().filter(|p| p.sent >= t0).collect();
    let acked_after_cut: Vec<&Probe> = after_cut
        .iter()
        .copied()
        .filter(|p| p.outcome == Outcome::Acked)
        .collect();
    let answered_late = after_cut
        .iter()
        .filter(|p| p.sent >= t0 + detection && matches!(p.outcome, Outcome::Answered(_)))
        .count();
    let last_ack = acked_after_cut.last().map(|p| p.done.duration_since(t0));
    let first_answer = after_cut.iter().find_map(|p| match &p.outcome {
        Outcome::Answered(e) if p.sent >= t0 + detection / 2 => Some(e.clone()),
        _ => None,
    });
    eprintln!(
        "[{ns}] prober on {old} after the partition: {} attempts, {} acknowledged (last {:?} after the partition; the fence bound is {:?}), {answered_late} refused after the detection bound (first refusal: {first_answer:?})",
        after_cut.len(),
        acked_after_cut.len(),
        last_ack,
        detection / 2,
    );
    assert!(
        after_cut.iter().any(|p| p.outcome != Outcome::TimedOut),
        "the node path to {old} stays open across the partition (no attempt got an answer, so the check below would prove nothing)"
    );
    let late: Vec<i64> = acked_after_cut
        .iter()
        .filter(|p| p.sent >= t0 + detection)
        .map(|p| p.k)
        .collect();
    assert!(
        late.is_empty(),
        "{old} acknowledged commits sent more than {detection:?} after the partition: {late:?}"
    );
    if let Some(p) = acked_after_cut.last() {
        assert!(
            p.done < first_new.sent,
            "{old} acknowledged commit {} at {:?} after the partition, after the new primary {new} was written to ({:?})",
            p.k,
            p.done.duration_since(t0),
            first_new.sent.duration_since(t0)
        );
    }

    let harness = target.harness().expect("local harness");
    harness
        .runtime()
        .heal_pod(ns, &old)
        .map_err(|e| E2eError::Check(format!("heal {old}: {e}")))?;
    let healed = Instant::now();
    ha.wait_replica(target, &old, REJOIN_WITHIN).await?;
    eprintln!(
        "[{ns}] healed; {old} is a ready replica {:.1}s later",
        healed.elapsed().as_secs_f64()
    );
    let log = writer.stop().await;
    let on_primary = ha.written(&ha.rw(target).await?).await?;
    let required: BTreeSet<i64> = log
        .acks
        .iter()
        .filter(|a| a.sent >= t0)
        .map(|a| a.n)
        .collect();
    let missing: Vec<i64> = required.difference(&on_primary).copied().collect();
    assert!(
        missing.is_empty(),
        "commits acknowledged after the partition missing on {new}: {missing:?}"
    );
    let c = ha.get(target).await?;
    assert_eq!(
        ha::current_primary(&c),
        Some(&new),
        "{}",
        ha::status_summary(&c)
    );
    ha.wait_ready(target, Duration::from_secs(60)).await?;
    ha.delete(target).await
}

#[test]
fn partitioned_primary_fences_itself_and_returns_as_a_replica() {
    capstan_e2e::scenario(|| async {
        let mut target = Target::from_env().await.expect("e2e target");
        let ns = format!("e2e-ha-partition-{}", std::process::id());
        if let Err(e) = scenario(&mut target, &ns).await {
            fail(&target, &ns, e).await;
        }
    });
}

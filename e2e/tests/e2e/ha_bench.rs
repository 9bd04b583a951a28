//! HA measurements, each on one cluster over many iterations (the primary
//! moves every time), printing p50/p99/max. Measurements, not pass/fail
//! tests: run them with `bench/ha-bench.sh <rto|kill9|switchover|ackwrites>`
//! (release build). Iterations: `$CAPSTAN_HA_BENCH_ITERATIONS` (default 20).
//!
//! * `rto`: freeze the primary → first commit through the pooler by another
//!   server.
//! * `kill9`: SIGKILL the primary's postmaster → first commit through the
//!   pooler by the restarted server (a switchover between iterations moves
//!   the primary).
//! * `switchover`: `pgbench -c 8` through the pooler during each
//!   switchover: client errors, longest transaction, `clientHoldMs`.
//! * `ackwrites`: synchronous replication (quorum 1, `examples/ha-sync.yaml`)
//!   and a writer of numbered rows; after each failover every acknowledged
//!   number must be on the new primary (goal: 0 lost).
//!
//! The writers bound each connection attempt and INSERT by 0.5 s: a stuck
//! attempt costs at most that before the next one, so a measured time is
//! when writes became possible again, to within 0.5 s. (A client with a
//! longer statement or connect timeout waits up to that timeout longer.)
//!
//! Every output line starts with `ha-bench`.

use std::time::{Duration, Instant};

use capstan_e2e::E2eError;
use capstan_e2e::ha::{
    self, FAILOVER_WITHIN, HaCluster, REJOIN_WITHIN, SWITCHOVER_WITHIN, ha_example,
};
use capstan_e2e::load::{Pgbench, Writer, WriterOptions, pgbench_binary, summary};
use capstan_e2e::target::{Target, fail};

fn iterations() -> usize {
    std::env::var("CAPSTAN_HA_BENCH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20)
}

fn writer_options() -> WriterOptions {
    WriterOptions {
        op_timeout: Duration::from_millis(500),
        ..WriterOptions::default()
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn primary(ha: &HaCluster, target: &Target) -> Result<String, E2eError> {
    let c = ha.get(target).await?;
    ha::current_primary(&c)
        .cloned()
        .ok_or_else(|| E2eError::Check(format!("no current primary: {}", ha::status_summary(&c))))
}

fn freeze(target: &mut Target, ns: &str, pod: &str, frozen: bool) -> Result<(), E2eError> {
    let harness = target
        .harness()
        .ok_or_else(|| E2eError::Setup("freezing needs the local harness".into()))?;
    let runtime = harness.runtime();
    if frozen {
        runtime.freeze_pod(ns, pod)
    } else {
        runtime.thaw_pod(ns, pod)
    }
    .map(|_| ())
    .map_err(|e| E2eError::Check(format!("freeze/thaw {pod}: {e}")))
}

/// The server of a commit acknowledged from now on (waits for one).
async fn current_server(writer: &Writer) -> Result<String, E2eError> {
    Ok(writer
        .wait_ack_after(Instant::now(), Duration::from_secs(60))
        .await?
        .server)
}

/// `renewTime` of the cluster's primary Lease (microsecond precision).
async fn last_renewal(target: &Target, ha: &HaCluster) -> Option<time::OffsetDateTime> {
    let api: kube::Api<k8s_openapi::api::coordination::v1::Lease> =
        kube::Api::namespaced(target.client(), &ha.ns);
    let lease = api
        .get(&capstan::resources::names::primary_lease(&ha.name))
        .await
        .ok()?;
    let renew = lease.spec?.renew_time?.0;
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(renew.as_microsecond()) * 1_000).ok()
}

/// Freezes the primary, waits for writes to resume elsewhere and the
/// failover to complete, thaws the old primary and waits until it is a
/// replica again and the cluster is Ready. Returns (old, new, RTO).
async fn freeze_failover(
    target: &mut Target,
    ha: &HaCluster,
    writer: &Writer,
) -> Result<(String, String, Duration), E2eError> {
    let old = primary(ha, target).await?;
    let server = current_server(writer).await?;
    freeze(target, &ha.ns, &old, true)?;
    let t0 = Instant::now();
    let frozen_at = time::OffsetDateTime::now_utc();
    let renewed = last_renewal(target, ha).await;
    let ack = writer
        .wait_ack_from_other(t0, &server, FAILOVER_WITHIN)
        .await?;
    let rto = ack.acked.duration_since(t0);
    // Wall-clock marks to line up with the operator's log ("failover
    // started"/"failover completed"): where the RTO goes.
    println!(
        "ha-bench timing: frozen {frozen_at} last renewal {} ({}) first write {}",
        renewed.map_or_else(|| "unknown".to_string(), |r| r.to_string()),
        renewed.map_or_else(
            || "unknown".to_string(),
            |r| format!(
                "{:.0} ms before the freeze",
                (frozen_at - r).as_seconds_f64() * 1000.0
            )
        ),
        frozen_at + rto
    );
    let (_, failover) = ha.wait_failover(target, &old, FAILOVER_WITHIN).await?;
    freeze(target, &ha.ns, &old, false)?;
    ha.wait_replica(target, &old, REJOIN_WITHIN).await?;
    ha.wait_ready(target, Duration::from_secs(120)).await?;
    Ok((old, failover.to, rto))
}

async fn rto(target: &mut Target, ns: &str) -> Result<(), E2eError> {
    let ha = HaCluster::create(target, &ha_example("ha-cluster.yaml", ns)?).await?;
    let writer = Writer::start(&ha, &ha.pooler(target).await?, writer_options());
    let mut samples = Vec::new();
    for i in 1..=iterations() {
        let (old, new, rto) = freeze_failover(target, &ha, &writer).await?;
        println!(
            "ha-bench rto #{i}: {old} frozen -> {new}: {:.0} ms",
            ms(rto)
        );
        samples.push(ms(rto));
    }
    println!(
        "ha-bench {}",
        summary(
            "rto (freeze -> first write through the pooler, detectionSeconds 4)",
            "ms",
            &samples
        )
    );
    Ok(())
}

async fn kill9(target: &mut Target, ns: &str) -> Result<(), E2eError> {
    let ha = HaCluster::create(target, &ha_example("ha-cluster.yaml", ns)?).await?;
    let writer = Writer::start(&ha, &ha.pooler(target).await?, writer_options());
    let mut samples = Vec::new();
    let mut not_moved = 0;
    for i in 1..=iterations() {
        let pod = primary(&ha, target).await?;
        let server = current_server(&writer).await?;
        target.kill_postmaster(ns, &pod).await?;
        let t0 = Instant::now();
        let ack = writer
            .wait_ack_from_other(t0, &server, Duration::from_secs(60))
            .await?;
        let took = ack.acked.duration_since(t0);
        let c = ha.wait_ready(target, Duration::from_secs(120)).await?;
        if ha::target_primary(&c) != Some(&pod) {
            return Err(E2eError::Check(format!(
                "a postmaster kill moved the primary: {}",
                ha::status_summary(&c)
            )));
        }
        println!("ha-bench kill9 #{i}: {pod}: {:.0} ms", ms(took));
        samples.push(ms(took));
        // Move the primary for the next iteration, to a replica that
        // streams again after the restart (the operator refuses others).
        let Some(to) = ha::ready_replica(&c, &[&pod]) else {
            not_moved += 1;
            continue;
        };
        if !move_primary(target, &ha, &pod, &to, &format!("kill9-{i}")).await? {
            not_moved += 1;
        }
    }
    println!(
        "ha-bench {}",
        summary(
            "kill9 (SIGKILL of the postmaster -> first write through the pooler by the restarted server)",
            "ms",
            &samples
        )
    );
    if not_moved > 0 {
        println!("ha-bench kill9: the primary could not be moved {not_moved} times");
    }
    Ok(())
}

/// Switches over from `from` to `to` (up to three requests, as the
/// operator refuses a target that is not streaming yet); false when it did
/// not happen.
async fn move_primary(
    target: &Target,
    ha: &HaCluster,
    from: &str,
    to: &str,
    token: &str,
) -> Result<bool, E2eError> {
    for attempt in 1..=3 {
        ha.wait_streaming(target, &[to], Duration::from_secs(60))
            .await?;
        let request = format!("{to}/bench-{token}-{attempt}");
        ha.request_switchover(target, &request).await?;
        match ha
            .wait_switchover(target, &request, SWITCHOVER_WITHIN)
            .await
        {
            Ok(_) => {
                ha.wait_current_primary(target, to, Duration::from_secs(30))
                    .await?;
                ha.wait_replica(target, from, REJOIN_WITHIN).await?;
                ha.wait_ready(target, Duration::from_secs(120)).await?;
                return Ok(true);
            }
            Err(e) => {
                println!("ha-bench switchover {from} -> {to} (attempt {attempt}): {e}");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    }
    Ok(false)
}

/// What the operator and the poolers logged about the last switchover, for
/// an iteration that went wrong (harness only).
async fn switchover_diagnostics(target: &Target, ha: &HaCluster) {
    let ns = ha.ns.as_str();
    let Target::Local(harness) = target else {
        return;
    };
    let strip = |line: &str| {
        let mut out = String::new();
        let mut chars = line.chars();
        while let Some(c) = chars.next() {
            if c == '\u{1b}' {
                for c in chars.by_ref() {
                    if c == 'm' {
                        break;
                    }
                }
            } else {
                out.push(c);
            }
        }
        out
    };
    let operator = harness.operator_logs();
    let lines: Vec<String> = operator
        .lines()
        .map(strip)
        .filter(|l| {
            ["switchover", "pooler", "promot", "demot", "WARN"]
                .iter()
                .any(|k| l.contains(k))
        })
        .collect();
    for line in &lines[lines.len().saturating_sub(12)..] {
        println!("ha-bench diag operator: {line}");
    }
    let pods: kube::Api<k8s_openapi::api::core::v1::Pod> =
        kube::Api::namespaced(harness.client(), ns);
    let selector = capstan::resources::labels::to_selector(
        &capstan::resources::labels::pooler_selector(&ha.name),
    );
    let Ok(list) = pods
        .list(&kube::api::ListParams::default().labels(&selector))
        .await
    else {
        return;
    };
    for pod in list.items.into_iter().filter_map(|p| p.metadata.name) {
        let log = harness
            .runtime()
            .logs(ns, &pod, "pgbouncer", false)
            .unwrap_or_default();
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| {
                [
                    "PAUSE",
                    "RESUME",
                    "RECONNECT",
                    "query_wait_timeout",
                    "paused",
                    "resumed",
                    "ERROR",
                    "WARNING",
                ]
                .iter()
                .any(|k| l.contains(k))
            })
            .collect();
        for line in &lines[lines.len().saturating_sub(8)..] {
            println!("ha-bench diag {pod}: {line}");
        }
    }
}

async fn switchover(target: &mut Target, ns: &str) -> Result<(), E2eError> {
    let Some(pgbench) = pgbench_binary() else {
        println!("ha-bench switchover: skipped, pgbench not found (set CAPSTAN_PGBENCH)");
        return Ok(());
    };
    let ha = HaCluster::create(target, &ha_example("ha-cluster.yaml", ns)?).await?;
    let bench = Pgbench::new(&pgbench, &ha, &ha.pooler(target).await?)?;
    bench.init(1).await?;
    let (mut longest, mut held, mut took) = (Vec::new(), Vec::new(), Vec::new());
    let (mut failed, mut aborted, mut runs_aborted, mut transactions) = (0, 0, 0, 0);
    for i in 1..=iterations() {
        let c = ha.get(target).await?;
        let old = primary(&ha, target).await?;
        let to = ha::ready_replica(&c, &[&old]).ok_or_else(|| {
            E2eError::Check(format!("no ready replica: {}", ha::status_summary(&c)))
        })?;
        ha.wait_streaming(target, &[&to], Duration::from_secs(60))
            .await?;
        let run = bench.start(8, Duration::from_secs(12))?;
        tokio::time::sleep(Duration::from_secs(4)).await;
        let request = format!("{to}/bench-{i}");
        ha.request_switchover(target, &request).await?;
        let t0 = Instant::now();
        let (_, status) = ha
            .wait_switchover(target, &request, SWITCHOVER_WITHIN)
            .await?;
        let switched = t0.elapsed();
        let report = run.finish(Duration::from_secs(120)).await?;
        let hold = status.client_hold_ms.unwrap_or_default();
        println!(
            "ha-bench switchover #{i}: {old} -> {to}: {} transactions, {} failed, {} clients aborted, longest transaction {:.0} ms, clientHoldMs {hold}, completed {:.0} ms after the request{}",
            report.processed,
            report.failed,
            report.aborted_clients,
            report.max_latency_ms,
            ms(switched),
            if report.errors.is_empty() {
                String::new()
            } else {
                format!(", errors: {:?}", report.errors)
            }
        );
        if report.failed + report.aborted_clients > 0 || report.run_aborted || hold > 5000 {
            switchover_diagnostics(target, &ha).await;
        }
        longest.push(report.max_latency_ms);
        held.push(hold as f64);
        took.push(ms(switched));
        failed += report.failed;
        aborted += report.aborted_clients;
        runs_aborted += u64::from(report.run_aborted);
        transactions += report.processed;
        ha.wait_current_primary(target, &to, Duration::from_secs(30))
            .await?;
        ha.wait_replica(target, &old, REJOIN_WITHIN).await?;
        ha.wait_ready(target, Duration::from_secs(120)).await?;
    }
    println!(
        "ha-bench {}",
        summary(
            "switchover longest client wait (pgbench max transaction latency, -c 8)",
            "ms",
            &longest
        )
    );
    println!(
        "ha-bench {}",
        summary("switchover status.clientHoldMs", "ms", &held)
    );
    println!(
        "ha-bench {}",
        summary("switchover request -> Completed (as polled)", "ms", &took)
    );
    println!(
        "ha-bench switchover client errors over {} switchovers: {failed} failed transactions, {aborted} aborted clients, {runs_aborted} pgbench runs ended early ({transactions} transactions)",
        iterations()
    );
    Ok(())
}

async fn ackwrites(target: &mut Target, ns: &str) -> Result<(), E2eError> {
    let ha = HaCluster::create(target, &ha_example("ha-sync.yaml", ns)?).await?;
    let writer = Writer::start(&ha, &ha.pooler(target).await?, writer_options());
    let (mut worst, mut rtos) = (0usize, Vec::new());
    for i in 1..=iterations() {
        let (old, new, rto) = freeze_failover(target, &ha, &writer).await?;
        // Every commit acknowledged before this read must be on the primary.
        let log = writer.log();
        let present = ha.written(&ha.rw(target).await?).await?;
        let lost = log.missing(&present);
        println!(
            "ha-bench ackwrites #{i}: {old} frozen -> {new}: {} acknowledged so far, {} lost{}, rto {:.0} ms",
            log.acks.len(),
            lost.len(),
            if lost.is_empty() {
                String::new()
            } else {
                format!(" {lost:?}")
            },
            ms(rto)
        );
        worst = worst.max(lost.len());
        rtos.push(ms(rto));
    }
    let log = writer.stop().await;
    let present = ha.written(&ha.rw(target).await?).await?;
    let lost = log.missing(&present).len();
    println!(
        "ha-bench ackwrites (synchronous quorum 1): {} failovers, {} commits acknowledged, {lost} lost at the end (most missing after any failover: {worst}; goal 0)",
        iterations(),
        log.acks.len()
    );
    println!(
        "ha-bench {}",
        summary(
            "ackwrites rto (freeze -> first write, synchronous)",
            "ms",
            &rtos
        )
    );
    Ok(())
}

async fn local_target(name: &str) -> Option<Target> {
    let mut target = Target::from_env().await.expect("e2e target");
    if target.harness().is_none() {
        println!("ha-bench {name}: skipped, freezing a pod needs the local harness");
        return None;
    }
    Some(target)
}

#[test]
#[ignore = "measurement; run bench/ha-bench.sh rto"]
fn bench_rto() {
    capstan_e2e::scenario(|| async {
        let Some(mut target) = local_target("rto").await else {
            return;
        };
        if let Err(e) = rto(&mut target, "ha-bench-rto").await {
            fail(&target, "ha-bench-rto", e).await;
        }
    });
}

#[test]
#[ignore = "measurement; run bench/ha-bench.sh kill9"]
fn bench_kill9() {
    capstan_e2e::scenario(|| async {
        let mut target = Target::from_env().await.expect("e2e target");
        if let Err(e) = kill9(&mut target, "ha-bench-kill9").await {
            fail(&target, "ha-bench-kill9", e).await;
        }
    });
}

#[test]
#[ignore = "measurement; run bench/ha-bench.sh switchover"]
fn bench_switchover() {
    capstan_e2e::scenario(|| async {
        let mut target = Target::from_env().await.expect("e2e target");
        if let Err(e) = switchover(&mut target, "ha-bench-switchover").await {
            fail(&target, "ha-bench-switchover", e).await;
        }
    });
}

#[test]
#[ignore = "measurement; run bench/ha-bench.sh ackwrites"]
fn bench_ackwrites() {
    capstan_e2e::scenario(|| async {
        let Some(mut target) = local_target("ackwrites").await else {
            return;
        };
        if let Err(e) = ackwrites(&mut target, "ha-bench-ackwrites").await {
            fail(&target, "ha-bench-ackwrites", e).await;
        }
    });
}

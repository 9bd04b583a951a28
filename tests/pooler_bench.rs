//! Measurement, not a test (ignored; run by bench/pooler-switch.sh):
//! client hold time over repeated switchovers under pgbench load, and
//! transactions per second through the pooler versus straight to
//! PostgreSQL on the same machine. Prints `pooler-switch:` lines.

mod pooler_support;

use std::time::Duration;

use capstan::pooler::switchover::{SwitchoverOptions, switchover};
use pooler_support::postgres::Postgres;
use pooler_support::service::ServiceProxy;
use pooler_support::{
    PgbenchResult, Pooler, Ports, operator_client, parse_pgbench, pgbench, pki::Pki, run_ok,
    settings, tools_present, workdir,
};

static PORTS: Ports = Ports::new(23500, 500);

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn bench(port: u16, pki: &Pki, clients: u64, seconds: u64, extra: &[&str]) -> PgbenchResult {
    let clients = clients.to_string();
    let seconds = seconds.to_string();
    let mut args = vec!["-c", &clients, "-j", "2", "-T", &seconds, "-n"];
    args.extend_from_slice(extra);
    parse_pgbench(&pgbench(port, pki, &args).output().unwrap())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement; run bench/pooler-switch.sh"]
async fn measure_switchover_hold_and_pooler_throughput() {
    if !tools_present() {
        return;
    }
    let switches = env_u64("SWITCHES", 10);
    let tps_seconds = env_u64("TPS_SECONDS", 15);
    let clients = env_u64("CLIENTS", 8);

    let dir = workdir();
    let pki = Pki::new(dir.path());
    let mut primary = Postgres::primary(dir.path(), "a", PORTS.take(), &pki);
    let mut replica = Postgres::replica(dir.path(), "b", PORTS.take(), &primary);
    let service = ServiceProxy::start(PORTS.take(), primary.port);
    let pooler = Pooler::start(
        "p1",
        dir.path(),
        &pki,
        &PORTS,
        &settings(service.port, "transaction"),
    );
    let client = operator_client(&pki);
    pooler.wait_ready(&client).await;
    run_ok(
        pgbench(primary.port, &pki, &["-i", "-s", "10", "-q"]),
        "pgbench -i",
    );

    // Throughput: the same pgbench, TLS in both cases, direct vs pooled.
    let mut tps = Vec::new();
    for (label, extra) in [("tpcb-like", &[][..]), ("select-only", &["-S"][..])] {
        let direct =
            tokio::task::block_in_place(|| bench(primary.port, &pki, clients, tps_seconds, extra));
        let pooled =
            tokio::task::block_in_place(|| bench(pooler.port, &pki, clients, tps_seconds, extra));
        assert!(
            direct.success && pooled.success,
            "{}\n{}",
            direct.output,
            pooled.output
        );
        tps.push((label, direct.tps, pooled.tps));
    }

    // Switchovers under load.
    let duration = switches * 4 + 6;
    let load = {
        let mut c = pgbench(
            pooler.port,
            &pki,
            &[
                "-c",
                &clients.to_string(),
                "-j",
                "2",
                "-T",
                &duration.to_string(),
                "-n",
            ],
        );
        std::thread::spawn(move || c.output().unwrap())
    };
    let options = SwitchoverOptions {
        pause_timeout: Duration::from_secs(10),
        max_hold: Duration::from_secs(60),
    };
    let mut held = Vec::new();
    let mut drained = Vec::new();
    tokio::time::sleep(Duration::from_secs(2)).await;
    for n in 0..switches {
        let switched = switchover(&client, &[pooler.endpoint()], &options, || async {
            tokio::task::block_in_place(|| {
                primary.stop_fast();
                let lsn = primary.last_checkpoint();
                replica.wait_replayed(&lsn);
                replica.promote();
                service.set_target(replica.port);
            });
            Ok::<_, String>(())
        })
        .await
        .unwrap_or_else(|e| panic!("switch {n}: {e}"));
        assert!(switched.resume_failures.is_empty());
        held.push(switched.held);
        drained.extend(switched.paused_in.iter().map(|(_, d)| *d));
        std::mem::swap(&mut primary, &mut replica);
        tokio::task::block_in_place(|| replica.rejoin(&primary));
        println!(
            "pooler-switch: switch {} held clients {:?}",
            n + 1,
            switched.held
        );
    }
    let load = parse_pgbench(&tokio::task::block_in_place(|| load.join().unwrap()));

    held.sort();
    drained.sort();
    println!(
        "pooler-switch: {} switches under pgbench -c {clients}: client hold p50 {:?}, max {:?} (PAUSE drain p50 {:?}, max {:?})",
        held.len(),
        percentile(&held, 0.5),
        held[held.len() - 1],
        percentile(&drained, 0.5),
        drained[drained.len() - 1],
    );
    println!(
        "pooler-switch: errors during switches: {} failed transactions, aborted clients: {}, pgbench exit ok: {} ({} transactions)",
        load.failed, load.aborted, load.success, load.transactions
    );
    for (label, direct, pooled) in &tps {
        println!(
            "pooler-switch: tps {label} -c {clients} for {tps_seconds}s: direct {direct:.0}, through pooler {pooled:.0}, ratio {:.2}",
            pooled / direct
        );
    }
    assert!(
        load.success && !load.aborted && load.failed == 0,
        "{}",
        load.output
    );
}

//! Measurements, not assertions on time: `bench/instance-times.sh` runs this
//! with `--ignored --nocapture` and prints how long the instance manager
//! takes for bootstrap, crash restart, promotion and rejoin on real
//! PostgreSQL (15, or CAPSTAN_BENCH_PG_BIN).

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use capstan::contract::instance::{PromoteResult, Role};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use support::*;

static PORTS: Ports = Ports::new(20500, 20700);

const LIMIT: Duration = Duration::from_secs(120);
const POLL: Duration = Duration::from_millis(10);

async fn until<F, Fut>(what: &str, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        assert!(
            started.elapsed() < LIMIT,
            "{what} took longer than {LIMIT:?}"
        );
        tokio::time::sleep(POLL).await;
    }
    started.elapsed()
}

async fn write_ok(instance: &Instance, value: &str) -> bool {
    match instance.sql("app").await {
        Ok(c) => c
            .execute("INSERT INTO t VALUES ($1)", &[&value])
            .await
            .is_ok(),
        Err(_) => false,
    }
}

async fn status_is(
    instance: &Instance,
    check: impl Fn(&capstan::contract::instance::InstanceReport) -> bool,
) -> bool {
    instance.status().await.is_some_and(|r| check(&r))
}

fn ms(d: Duration) -> String {
    format!("{:>7.0} ms", d.as_secs_f64() * 1000.0)
}

struct Round {
    connect_and_write: Duration,
    bootstrap_primary: Duration,
    bootstrap_replica: Duration,
    crash_restart: Duration,
    promote: Duration,
    promote_reported: Duration,
    rejoin_rewind: Duration,
}

async fn round(bin: &Path, version: i32) -> Round {
    let pki = Arc::new(Pki::new());
    let proxy_port = PORTS.take();
    let s = settings(version, proxy_port, &["db-1", "db-2"]);
    let mut a = Instance::new("db-1", &PORTS, bin, pki.clone(), &s);
    let mut b = Instance::new("db-2", &PORTS, bin, pki.clone(), &s);
    let proxy = Proxy::start(proxy_port, a.pg_port).await;
    a.set_authority("db-1");
    b.set_authority("db-1");

    // Bootstrap of the primary: process start until a write succeeds.
    let started = Instant::now();
    a.start();
    until("primary accepts connections", || async {
        a.sql("app").await.is_ok()
    })
    .await;
    a.sql("app")
        .await
        .unwrap()
        .batch_execute("CREATE TABLE t (v text)")
        .await
        .unwrap();
    let bootstrap_primary = started.elapsed();

    // Bootstrap of a replica: process start until it streams.
    let started = Instant::now();
    b.start();
    until("replica streams", || async {
        status_is(&b, |r| r.wal_receiver.as_deref() == Some("streaming")).await
    })
    .await;
    let bootstrap_replica = started.elapsed();

    // What a new client connection costs here (TLS + SCRAM in this debug
    // build), included in the crash restart figure.
    let started = Instant::now();
    assert!(write_ok(&a, "baseline").await);
    let connect_and_write = started.elapsed();

    // kill -9 of the postmaster until a write succeeds again.
    let pid = a.postmaster_pid().unwrap();
    let started = Instant::now();
    kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
    until("write after the crash", || async {
        a.postmaster_pid() != Some(pid) && write_ok(&a, "after-crash").await
    })
    .await;
    let crash_restart = started.elapsed();
    until("replica streams again", || async {
        status_is(&b, |r| {
            r.wal_receiver.as_deref() == Some("streaming") && r.lag_bytes == Some(0)
        })
        .await
    })
    .await;

    // Promotion of db-2 with db-1 cut off (a partition: db-1 keeps running
    // as primary and takes a diverging write), API call to first write.
    // The session is opened before: a standby's sessions may write as soon
    // as it is promoted, so client connection setup is not measured.
    let session = b.sql("app").await.unwrap();
    b.set_authority("db-2");
    proxy.repoint(b.pg_port);
    let started = Instant::now();
    let (code, body) = b.operator("POST", "/promote", Some("{}")).await;
    assert_eq!(code, 200, "{body}");
    until("write on the new primary", || async {
        session
            .execute("INSERT INTO t VALUES ('promoted')", &[])
            .await
            .is_ok()
    })
    .await;
    let promote = started.elapsed();
    let result: PromoteResult = serde_json::from_str(&body).unwrap();
    let promote_reported = Duration::from_millis(result.elapsed_ms);
    assert!(write_ok(&a, "diverged").await);

    // Rejoin: the authority reaches db-1, which demotes, rewinds, follows.
    let started = Instant::now();
    a.set_authority("db-2");
    until("old primary streams from the new one", || async {
        status_is(&a, |r| {
            r.role == Role::Replica && r.wal_receiver.as_deref() == Some("streaming")
        })
        .await
    })
    .await;
    let rejoin_rewind = started.elapsed();
    let (_, metrics) = a.http("GET", "/metrics", None, None).await;
    assert!(
        metrics.contains("capstan_rewinds_total{result=\"ok\"} 1"),
        "expected a rewind: {metrics}"
    );

    a.terminate(Duration::from_secs(40));
    b.terminate(Duration::from_secs(40));
    Round {
        connect_and_write,
        bootstrap_primary,
        bootstrap_replica,
        crash_restart,
        promote,
        promote_reported,
        rejoin_rewind,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement; run bench/instance-times.sh"]
async fn instance_times() {
    let (bin, version) = match std::env::var_os("CAPSTAN_BENCH_PG_BIN") {
        Some(dir) => {
            let version = std::env::var("CAPSTAN_BENCH_PG_VERSION")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(18);
            (PathBuf::from(dir), version)
        }
        None => (pg15_bin().expect("PostgreSQL 15 binaries"), 15),
    };
    let rounds: usize = std::env::var("CAPSTAN_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let mut results = vec![];
    for _ in 0..rounds {
        results.push(round(&bin, version).await);
    }
    type Row = (&'static str, fn(&Round) -> Duration);
    let rows: [Row; 7] = [
        ("new client connection + write (baseline)", |r| {
            r.connect_and_write
        }),
        ("bootstrap primary (start -> first write)", |r| {
            r.bootstrap_primary
        }),
        ("bootstrap replica (start -> streaming)", |r| {
            r.bootstrap_replica
        }),
        ("restart after kill -9 (kill -> first write)", |r| {
            r.crash_restart
        }),
        ("promote (API call -> first write)", |r| r.promote),
        ("promote (as reported by the manager)", |r| {
            r.promote_reported
        }),
        ("rejoin with rewind (authority -> streaming)", |r| {
            r.rejoin_rewind
        }),
    ];
    println!(
        "\nPostgreSQL {version}, {rounds} rounds ({})",
        bin.display()
    );
    println!("{:<46} {:>10} {:>10} {:>10}", "", "min", "median", "max");
    for (name, get) in rows {
        let mut v: Vec<Duration> = results.iter().map(get).collect();
        v.sort();
        println!(
            "{name:<46} {} {} {}",
            ms(v[0]),
            ms(v[v.len() / 2]),
            ms(v[v.len() - 1])
        );
    }
}

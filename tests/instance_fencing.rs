//! The primary Lease and self-fencing on real PostgreSQL, with the lease in
//! files (`--lease file:<dir>`) and a partition made by the per-instance
//! sentinel file: a primary cut off from the lease store stops accepting
//! writes before anyone may take over; a replica promoted after the lease
//! expired takes it at once; the old primary rejoins as a replica; a frozen
//! pod fences on thaw before PostgreSQL runs again; and synchronous
//! replication makes a commit wait for its standby.
//!
//! The assertions are about order, never about speed: every acknowledged
//! write of the old primary must come before the moment the operator may
//! promote another instance (lease duration after the last renewal it
//! saw). `bench/fencing.sh` measures how long fencing takes.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use capstan::contract::instance::{InstanceReport, Role};
use capstan::contract::settings::{FencingSettings, SynchronousMode, SynchronousSettings};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use support::*;

static PORTS: Ports = Ports::new(20700, 20800);
static BENCH_PORTS: Ports = Ports::new(20800, 20900);

const LONG: Duration = Duration::from_secs(120);
const LEASE: &str = "db-primary";

/// The defaults the operator derives from `detectionSeconds: 4`.
fn fencing() -> FencingSettings {
    FencingSettings {
        lease_name: LEASE.into(),
        lease_duration_ms: 4000,
        renew_interval_ms: 1000,
        fence_after_ms: 2000,
    }
}

fn lease_duration() -> Duration {
    Duration::from_millis(fencing().lease_duration_ms)
}

fn pg15() -> Option<std::path::PathBuf> {
    let bin = pg15_bin();
    if bin.is_none() {
        eprintln!("skipping: PostgreSQL 15 is not installed in /usr/lib/postgresql/15/bin");
    }
    bin
}

fn pg18() -> Option<std::path::PathBuf> {
    let bin = pg18_bin();
    if bin.is_none() {
        eprintln!(
            "skipping: CAPSTAN_PG18_BIN is not set to a PostgreSQL 18 bin directory (install with .ci/install-pg-binaries.sh 18.6.0 /opt/capstan-pg/18)"
        );
    }
    bin
}

fn holds_lease(r: &InstanceReport) -> bool {
    r.lease.as_ref().is_some_and(|l| l.held && !l.fenced)
}

fn fenced(r: &InstanceReport) -> bool {
    r.lease.as_ref().is_some_and(|l| l.fenced)
}

struct Cluster {
    pki: Arc<Pki>,
    proxy: Proxy,
    leases: LeaseDir,
    nodes: Vec<Instance>,
}

/// Primary `names[0]` holding the lease, the others streaming from it, and
/// an empty table `t`. The table comes last: with synchronous replication a
/// commit waits for the standbys.
async fn cluster(
    ports: &Ports,
    bin: &Path,
    version: i32,
    names: &[&str],
    synchronous: SynchronousSettings,
) -> Cluster {
    let pki = Arc::new(Pki::new());
    let proxy_port = ports.take();
    let mut s = settings(version, proxy_port, names);
    s.fencing = Some(fencing());
    s.synchronous = synchronous;
    let leases = LeaseDir::new();
    let mut nodes: Vec<Instance> = names
        .iter()
        .map(|n| {
            let mut i = Instance::new(n, ports, bin, pki.clone(), &s);
            i.lease_dir = Some(leases.path().to_path_buf());
            i
        })
        .collect();
    let proxy = Proxy::start(proxy_port, nodes[0].pg_port).await;
    for n in &nodes {
        n.set_authority(names[0]);
    }
    nodes[0].start();
    nodes[0]
        .wait_status("primary holding the lease", LONG, |r| {
            r.ready && r.role == Role::Primary && holds_lease(r)
        })
        .await;
    for n in nodes.iter_mut().skip(1) {
        n.start();
    }
    for n in nodes.iter().skip(1) {
        let report = n
            .wait_status("streaming with no lag", LONG, |r| {
                r.ready && r.lag_bytes == Some(0)
            })
            .await;
        let lease = report.lease.expect("a lease report with fencing on");
        assert!(!lease.held && !lease.fenced, "a replica holds no lease");
    }
    nodes[0]
        .sql_retry("app", LONG)
        .await
        .batch_execute("CREATE TABLE t (v text)")
        .await
        .unwrap();
    Cluster {
        pki,
        proxy,
        leases,
        nodes,
    }
}

/// Inserts into `t` on `port` in a loop, reconnecting after errors, and
/// records when each insert was acknowledged (after its commit).
struct Writer {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Vec<jiff::Timestamp>>,
}

impl Writer {
    fn start(pki: Arc<Pki>, port: u16) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let task = tokio::spawn(async move {
            let mut acks = vec![];
            let mut client = None;
            let mut n = 0u64;
            while !stopping.load(Ordering::SeqCst) {
                let Some(c) = &client else {
                    client = sql_connect(&pki, port, "postgres", SUPERUSER_PASSWORD, "app")
                        .await
                        .ok();
                    if client.is_none() {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    continue;
                };
                n += 1;
                let value = format!("w{n}");
                match c.execute("INSERT INTO t VALUES ($1)", &[&value]).await {
                    Ok(_) => acks.push(jiff::Timestamp::now()),
                    Err(_) => {
                        client = None;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
            acks
        });
        Self { stop, task }
    }

    async fn finish(self) -> Vec<jiff::Timestamp> {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.unwrap()
    }
}

/// What the operator does before a failover: wait until the lease has not
/// changed for the lease duration on this process's monotonic clock.
/// Returns the lease as last seen.
async fn wait_lease_silent(leases: &LeaseDir) -> LeaseFile {
    let started = Instant::now();
    let mut last = leases.read(LEASE);
    let mut since = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = leases.read(LEASE);
        if now != last {
            last = now;
            since = Instant::now();
        } else if since.elapsed() >= lease_duration() {
            return last.expect("a lease file");
        }
        assert!(
            started.elapsed() < LONG,
            "the lease kept changing: {last:?}"
        );
    }
}

fn millis(d: jiff::SignedDuration) -> i64 {
    d.as_millis() as i64
}

/// The safety property: every write the old primary acknowledged came
/// before the operator could promote another instance, i.e. within the
/// lease duration after the last renewal it wrote.
fn assert_no_write_after_the_bound(acks: &[jiff::Timestamp], lease: &LeaseFile) {
    let renewed = lease.renew_time.expect("a renewTime");
    let bound = renewed + jiff::SignedDuration::try_from(lease_duration()).unwrap();
    let last = *acks.last().expect("the writer got writes through");
    eprintln!(
        "{} writes acknowledged; the last {} ms after the last renewal (fence bound {} ms, lease duration {} ms)",
        acks.len(),
        millis(last.duration_since(renewed)),
        fencing().fence_after_ms,
        fencing().lease_duration_ms
    );
    assert!(
        last < bound,
        "a write was acknowledged at {last}, after {bound} (last renewal {renewed} + lease duration)"
    );
}

async fn no_postgres_left(instance: &Instance) {
    eventually("no postgres process in PGDATA", LONG, || async {
        instance.postgres_processes().is_empty().then_some(())
    })
    .await;
}

async fn fence_stops_writes(bin: &Path, version: i32) {
    let c = cluster(&PORTS, bin, version, &["db-1"], Default::default()).await;
    let db1 = &c.nodes[0];
    let writer = Writer::start(c.pki.clone(), db1.pg_port);
    eventually("writes on the primary", LONG, || async {
        (values(db1, "t").await?.len() >= 10).then_some(())
    })
    .await;

    c.leases.partition("db-1", false);
    let report = db1.wait_status("fenced", LONG, fenced).await;
    let lease = report.lease.clone().unwrap();
    assert!(!lease.held && !report.ready, "{report:#?}");
    no_postgres_left(db1).await;
    assert!(db1.sql("app").await.is_err(), "nothing accepts connections");
    let acks = writer.finish().await;
    let file = c.leases.read(LEASE).unwrap();
    assert_eq!(file.holder.as_deref(), Some("db-1"));
    assert_no_write_after_the_bound(&acks, &file);
    assert!(db1.log().contains("FENCED"), "{}", db1.log_tail(40));

    // While cut off it stays down (its restarts need the lease) ...
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(db1.postgres_processes().is_empty());
    let report = db1.status().await.unwrap();
    assert!(fenced(&report) && !report.running, "{report:#?}");
    assert_eq!(c.leases.read(LEASE).unwrap(), file, "nothing written");

    // ... and healed, still named and the lease still its own, it takes the
    // lease back and accepts writes again.
    c.leases.heal("db-1");
    db1.wait_status("primary again", LONG, |r| {
        r.ready && r.role == Role::Primary && holds_lease(r)
    })
    .await;
    db1.sql_retry("app", LONG)
        .await
        .execute("INSERT INTO t VALUES ('after')", &[])
        .await
        .unwrap();
    let file = c.leases.read(LEASE).unwrap();
    assert_eq!(file.holder.as_deref(), Some("db-1"));
    assert_eq!(file.transitions, Some(0), "its own lease: no transition");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_cut_off_from_the_lease_stops_accepting_writes() {
    let Some(bin) = pg15() else { return };
    fence_stops_writes(&bin, 15).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_cut_off_from_the_lease_stops_accepting_writes_on_postgres_18() {
    let Some(bin) = pg18() else { return };
    fence_stops_writes(&bin, 18).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_promoted_after_expiry_takes_the_lease_at_once_and_the_old_primary_rejoins() {
    let Some(bin) = pg15() else { return };
    let c = cluster(&PORTS, &bin, 15, &["db-1", "db-2"], Default::default()).await;
    let writer = Writer::start(c.pki.clone(), c.nodes[0].pg_port);
    eventually("writes on the primary", LONG, || async {
        (values(&c.nodes[0], "t").await?.len() >= 10).then_some(())
    })
    .await;

    // db-1 is cut off; the operator waits the lease out, names db-2 and
    // asks it to promote.
    c.leases.partition("db-1", false);
    let silent = wait_lease_silent(&c.leases).await;
    assert_eq!(silent.holder.as_deref(), Some("db-1"));
    assert!(fenced(&c.nodes[0].status().await.unwrap()));
    let named_at = jiff::Timestamp::now();
    c.nodes[1].set_authority("db-2");
    c.proxy.repoint(c.nodes[1].pg_port);
    let (code, body) = c.nodes[1].operator("POST", "/promote", Some("{}")).await;
    assert_eq!(code, 200, "{body}\n{}", c.nodes[1].log_tail(40));
    let file = c.leases.read(LEASE).unwrap();
    assert_eq!(file.holder.as_deref(), Some("db-2"));
    assert_eq!(file.transitions, Some(1));
    let log = c.nodes[1].log();
    assert!(
        log.contains("takeover=\"expired\""),
        "taken because it expired, without a second wait: {}",
        c.nodes[1].log_tail(40)
    );
    c.nodes[1]
        .wait_status("new primary holding the lease", LONG, |r| {
            r.role == Role::Primary && holds_lease(r)
        })
        .await;
    c.nodes[1]
        .sql("app")
        .await
        .unwrap()
        .execute("INSERT INTO t VALUES ('on db-2')", &[])
        .await
        .unwrap();

    // The old primary acknowledged nothing once another could be named.
    let acks = writer.finish().await;
    assert_no_write_after_the_bound(&acks, &silent);
    assert!(*acks.last().unwrap() < named_at);

    // Healed but still believing itself the target, db-1 may not take the
    // lease db-2 renews, so it stays down.
    c.leases.heal("db-1");
    c.nodes[0]
        .wait_status("refused the lease db-2 holds", LONG, |r| {
            r.last_error
                .as_deref()
                .is_some_and(|e| e.contains("held by db-2"))
        })
        .await;
    assert!(c.nodes[0].postgres_processes().is_empty());
    assert_eq!(
        c.leases.read(LEASE).unwrap().holder.as_deref(),
        Some("db-2")
    );

    // Told the new target primary, it rejoins as a replica.
    c.nodes[0].set_authority("db-2");
    let report = c.nodes[0]
        .wait_status("old primary streaming as a replica", LONG, |r| {
            r.role == Role::Replica && r.wal_receiver.as_deref() == Some("streaming")
        })
        .await;
    let lease = report.lease.unwrap();
    assert!(!lease.held && !lease.fenced, "{lease:?}");
    let in_recovery: bool = c.nodes[0]
        .sql("app")
        .await
        .unwrap()
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .unwrap()
        .get(0);
    assert!(in_recovery);
    eventually("db-2's write on the old primary", LONG, || async {
        values(&c.nodes[0], "t")
            .await?
            .contains(&"on db-2".to_string())
            .then_some(())
    })
    .await;
    assert_eq!(
        c.leases.read(LEASE).unwrap().holder.as_deref(),
        Some("db-2")
    );
}

/// Whether `pid` runs (a zombie has stopped running).
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let state = stat
                .rfind(')')
                .map(|i| stat[i + 1..].trim_start().to_string())?;
            Some(!state.starts_with('Z'))
        })
        .unwrap_or(false)
}

/// Stops processes with SIGSTOP and lets them go on drop, also when the
/// test fails (so the cleanup can signal them).
struct Frozen(Vec<i32>);

impl Frozen {
    fn new(pids: Vec<i32>) -> Self {
        for pid in &pids {
            let _ = kill(Pid::from_raw(*pid), Signal::SIGSTOP);
        }
        Self(pids)
    }

    fn thaw(&mut self) {
        for pid in self.0.drain(..) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGCONT);
        }
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        self.thaw();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_pod_fences_on_thaw_before_postgres_runs_again() {
    let Some(bin) = pg15() else { return };
    let c = cluster(&PORTS, &bin, 15, &["db-1"], Default::default()).await;
    let db1 = &c.nodes[0];
    let client = db1.sql("app").await.unwrap();
    client
        .execute("INSERT INTO t VALUES ('before')", &[])
        .await
        .unwrap();

    // The whole pod stops (a frozen cgroup or VM): manager and postgres.
    let mark = db1.log().len();
    let mut manager = Frozen::new(vec![db1.manager_pid().unwrap() as i32]);
    let frozen = db1.postgres_processes();
    assert!(!frozen.is_empty());
    let mut postgres = Frozen::new(frozen.clone());
    // A write that reaches the stopped backend.
    let pending = tokio::spawn(async move {
        client
            .execute("INSERT INTO t VALUES ('sent while frozen')", &[])
            .await
            .map(|_| ())
    });
    tokio::time::sleep(lease_duration() + Duration::from_secs(1)).await;

    // The manager wakes first: its deadline is long past, so it fences
    // before anything else, while postgres is still stopped ...
    manager.thaw();
    db1.wait_status("fenced on wake-up", LONG, fenced).await;
    // ... and postgres dies of the pending signal as it resumes.
    postgres.thaw();
    let result = pending.await.unwrap();
    assert!(
        result.is_err(),
        "the write sent during the freeze must not commit"
    );
    // Every process of the frozen postgres is gone (the manager may have
    // started a new one since: the lease is still its own).
    eventually("the frozen postgres gone", LONG, || async {
        frozen.iter().all(|pid| !alive(*pid)).then_some(())
    })
    .await;
    let after = db1.log()[mark..].to_string();
    let fenced_at = after.find("FENCED").expect("a fence in the log");
    assert!(
        after
            .find("holding the primary lease")
            .is_none_or(|held| held > fenced_at),
        "no lease write before the fence: {after}"
    );

    // Nobody took over: it takes its own lease back and serves again,
    // without the write sent while frozen.
    db1.wait_status("primary again", LONG, |r| {
        r.ready && r.role == Role::Primary && holds_lease(r)
    })
    .await;
    assert_eq!(values(db1, "t").await.unwrap(), ["before"]);
}

async fn synchronous_commit_waits_for_the_standby(bin: &Path, version: i32) {
    let quorum = SynchronousSettings {
        mode: SynchronousMode::Quorum,
        number: 1,
    };
    let mut c = cluster(&PORTS, bin, version, &["db-1", "db-2"], quorum).await;
    let report = c.nodes[0]
        .wait_status("db-2 listed as a quorum standby", LONG, |r| {
            r.standbys
                .iter()
                .any(|s| s.name == "db-2" && s.state == "streaming" && s.sync_state == "quorum")
        })
        .await;
    assert_eq!(report.standbys.len(), 1, "{:?}", report.standbys);
    let client = c.nodes[0].sql("app").await.unwrap();
    let names: String = client
        .query_one("SHOW synchronous_standby_names", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(names, r#"ANY 1 ("db-2")"#);
    client
        .execute("INSERT INTO t VALUES ('replicated')", &[])
        .await
        .unwrap();

    // Without its standby a commit waits, even past a short
    // statement_timeout (which does not cover the wait for replication).
    assert!(c.nodes[1].terminate(Duration::from_secs(40)).success());
    client
        .batch_execute("SET statement_timeout = '500ms'")
        .await
        .unwrap();
    let waiting = tokio::spawn(async move {
        client
            .execute("INSERT INTO t VALUES ('waited')", &[])
            .await
            .map(|_| ())
    });
    let observer = c.nodes[0].sql("postgres").await.unwrap();
    eventually(
        "a commit waiting for synchronous replication",
        LONG,
        || async {
            let n: i64 = observer
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'",
                    &[],
                )
                .await
                .ok()?
                .get(0);
            (n == 1).then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !waiting.is_finished(),
        "the commit returned without a standby"
    );

    // The standby returns: the commit completes and the row is there.
    c.nodes[1].start();
    let result = tokio::time::timeout(LONG, waiting)
        .await
        .expect("the commit completes once the standby is back")
        .unwrap();
    assert!(result.is_ok(), "{result:?}");
    eventually("the waited-for row on the standby", LONG, || async {
        (values(&c.nodes[1], "t").await? == ["replicated", "waited"]).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_synchronous_commit_waits_for_its_standby() {
    let Some(bin) = pg15() else { return };
    synchronous_commit_waits_for_the_standby(&bin, 15).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_synchronous_commit_waits_for_its_standby_on_postgres_18() {
    let Some(bin) = pg18() else { return };
    synchronous_commit_waits_for_the_standby(&bin, 18).await;
}

// ---- measurement (bench/fencing.sh) ---------------------------------------

fn percentile(sorted: &[i64], p: f64) -> i64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// Not an assertion on time: prints how long fencing takes, from the
/// partition to the fence deadline (last successful renewal start +
/// fence_after) to the last postgres process gone in PGDATA.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement: run by bench/fencing.sh"]
async fn fence_times() {
    let (bin, version) = match std::env::var_os("CAPSTAN_BENCH_PG_BIN") {
        Some(dir) => (
            std::path::PathBuf::from(dir),
            std::env::var("CAPSTAN_BENCH_PG_VERSION")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(15),
        ),
        None => match pg15() {
            Some(bin) => (bin, 15),
            None => return,
        },
    };
    let rounds: usize = std::env::var("CAPSTAN_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(10);
    let fence_after = jiff::SignedDuration::from_millis(fencing().fence_after_ms as i64);
    let c = cluster(&BENCH_PORTS, &bin, version, &["db-1"], Default::default()).await;
    let db1 = &c.nodes[0];
    println!(
        "PostgreSQL {version}; lease duration {} ms, renew every {} ms, fence after {} ms",
        fencing().lease_duration_ms,
        fencing().renew_interval_ms,
        fencing().fence_after_ms
    );
    println!(
        "{:>5} {:>5} {:>22} {:>24} {:>20}",
        "round", "mode", "partition->deadline", "deadline->gone (t_fence)", "partition->gone"
    );
    for (mode, hang) in [("fail", false), ("hang", true)] {
        let mut t_fence = vec![];
        let mut total = vec![];
        for round in 1..=rounds {
            db1.wait_status("primary holding the lease", LONG, |r| {
                r.ready && r.role == Role::Primary && holds_lease(r)
            })
            .await;
            // A different phase of the renewal cycle each round.
            tokio::time::sleep(Duration::from_millis(300 + 137 * round as u64 % 1000)).await;
            let partitioned = jiff::Timestamp::now();
            c.leases.partition("db-1", hang);
            let started = Instant::now();
            while !db1.postgres_processes().is_empty() {
                assert!(started.elapsed() < LONG, "not fenced within {LONG:?}");
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let gone = jiff::Timestamp::now();
            let renewed = c.leases.read(LEASE).unwrap().renew_time.unwrap();
            let deadline = renewed + fence_after;
            let to_deadline = millis(deadline.duration_since(partitioned));
            let fence = millis(gone.duration_since(deadline));
            let all = millis(gone.duration_since(partitioned));
            println!("{round:>5} {mode:>5} {to_deadline:>19} ms {fence:>21} ms {all:>17} ms");
            t_fence.push(fence);
            total.push(all);
            c.leases.heal("db-1");
        }
        t_fence.sort();
        total.sort();
        println!(
            "{mode}: t_fence (deadline -> last process gone) p50 {} ms, max {} ms; partition -> fenced p50 {} ms, max {} ms ({rounds} runs)",
            percentile(&t_fence, 0.5),
            t_fence.last().unwrap(),
            percentile(&total, 0.5),
            total.last().unwrap()
        );
    }
}

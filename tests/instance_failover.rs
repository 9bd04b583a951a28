//! Role changes on real PostgreSQL 15: promotion through the API, an old
//! primary coming back as a replica, a diverged old primary rewound, and a
//! failed rewind replaced by a fresh clone. The `-rw` Service is a TCP
//! proxy the test repoints.

mod support;

use std::sync::Arc;
use std::time::Duration;

use capstan::contract::instance::{PromoteResult, Role};
use capstan::postgres::lsn::Lsn;
use support::*;

static PORTS: Ports = Ports::new(20100, 20200);

const LONG: Duration = Duration::from_secs(120);

async fn insert(instance: &Instance, value: &str) {
    let client = instance.sql_retry("app", Duration::from_secs(30)).await;
    client
        .execute("INSERT INTO t VALUES ($1)", &[&value])
        .await
        .unwrap_or_else(|e| panic!("insert {value} on {}: {e:?}", instance.name));
}

async fn wait_values(instance: &Instance, expected: &[&str]) {
    let expected: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
    let deadline = std::time::Instant::now() + LONG;
    loop {
        let found = values(instance, "t").await;
        if found.as_ref() == Some(&expected) {
            return;
        }
        if std::time::Instant::now() > deadline {
            panic!(
                "{}: expected rows {expected:?}, found {found:?}\n{}",
                instance.name,
                instance.log_tail(80)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn promote(instance: &Instance) -> PromoteResult {
    let (code, body) = instance.operator("POST", "/promote", Some("{}")).await;
    assert_eq!(
        code,
        200,
        "{}: {body}\n{}",
        instance.name,
        instance.log_tail(60)
    );
    serde_json::from_str(&body).unwrap()
}

fn metric(text: &str, line_start: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Primary db-1 and replicas (db-2, ...), table `t` with `rows`, every
/// replica streaming with no lag.
async fn cluster(names: &[&str], rows: &[&str]) -> Option<(Arc<Pki>, Proxy, Vec<Instance>)> {
    cluster_with(names, rows, &[]).await
}

/// [`cluster`] with extra PostgreSQL parameters.
async fn cluster_with(
    names: &[&str],
    rows: &[&str],
    parameters: &[(&str, &str)],
) -> Option<(Arc<Pki>, Proxy, Vec<Instance>)> {
    let Some(bin) = pg15_bin() else {
        eprintln!("skipping: PostgreSQL 15 is not installed in /usr/lib/postgresql/15/bin");
        return None;
    };
    let pki = Arc::new(Pki::new());
    let proxy_port = PORTS.take();
    let mut settings = settings(15, proxy_port, names);
    for (name, value) in parameters {
        settings
            .parameters
            .insert(name.to_string(), value.to_string());
    }
    let mut instances: Vec<Instance> = names
        .iter()
        .map(|n| Instance::new(n, &PORTS, &bin, pki.clone(), &settings))
        .collect();
    let proxy = Proxy::start(proxy_port, instances[0].pg_port).await;
    for i in &instances {
        i.set_authority(names[0]);
    }
    instances[0].start();
    instances[0].wait_ready(LONG).await;
    let primary = instances[0].sql("app").await.unwrap();
    primary
        .batch_execute("CREATE TABLE t (v text)")
        .await
        .unwrap();
    for row in rows {
        primary
            .execute("INSERT INTO t VALUES ($1)", &[row])
            .await
            .unwrap();
    }
    for replica in instances.iter_mut().skip(1) {
        replica.start();
    }
    for replica in instances.iter().skip(1) {
        replica
            .wait_status("streaming with no lag", LONG, |r| {
                r.ready && r.lag_bytes == Some(0)
            })
            .await;
        wait_values(replica, rows).await;
    }
    Some((pki, proxy, instances))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promoted_replica_takes_writes_and_the_old_primary_returns_as_replica() {
    let Some((_pki, proxy, mut nodes)) = cluster(&["db-1", "db-2", "db-3"], &["before"]).await
    else {
        return;
    };

    // The primary goes away; the operator names db-2 and the Service follows.
    let status = nodes[0].terminate(Duration::from_secs(40));
    assert!(status.success());
    for node in &nodes {
        node.set_authority("db-2");
    }
    proxy.repoint(nodes[1].pg_port);
    // A replica without the WAL it is asked to have waits (here 300 ms),
    // then refuses and stays a replica.
    let (code, body) = nodes[1]
        .operator(
            "POST",
            "/promote",
            Some(r#"{"minWal":"FF/0","catchUpMs":300}"#),
        )
        .await;
    assert_eq!(code, 409, "{body}");
    assert!(
        body.contains("not up to the old primary's shutdown checkpoint at FF/0"),
        "{body}"
    );
    assert_eq!(nodes[1].status().await.unwrap().role, Role::Replica);
    let result = promote(&nodes[1]).await;
    assert_eq!(result.timeline, 2);
    let report = nodes[1].status().await.unwrap();
    assert_eq!(report.role, Role::Primary);
    insert(&nodes[1], "after").await;

    // The other replica follows the new timeline through the Service.
    wait_values(&nodes[2], &["after", "before"]).await;
    nodes[2]
        .wait_status("streaming from the new primary", LONG, |r| {
            r.wal_receiver.as_deref() == Some("streaming") && r.timeline == Some(2)
        })
        .await;

    // The old primary restarts, reads the authority first, and comes back
    // as a replica of the new primary: never writable.
    let log_before = nodes[0].log().len();
    nodes[0].start();
    let report = nodes[0]
        .wait_status("old primary streaming as a replica", LONG, |r| {
            r.role == Role::Replica && r.wal_receiver.as_deref() == Some("streaming")
        })
        .await;
    assert_eq!(report.target_primary.as_deref(), Some("db-2"));
    let restart_log = nodes[0].log()[log_before..].to_string();
    assert!(restart_log.contains("plan=Rejoin"), "{restart_log}");
    assert!(
        !restart_log.contains("role=Primary"),
        "the old primary must never start as primary"
    );
    wait_values(&nodes[0], &["after", "before"]).await;
    let err = nodes[0]
        .sql("app")
        .await
        .unwrap()
        .execute("INSERT INTO t VALUES ('nope')", &[])
        .await
        .unwrap_err();
    assert!(format!("{err:?}").contains("read-only"), "{err:?}");
    let (code, body) = nodes[0].operator("POST", "/promote", Some("{}")).await;
    assert_eq!(code, 409, "{body}");

    // The new primary keeps a slot for every other instance.
    let slots: Vec<String> = nodes[1]
        .sql("postgres")
        .await
        .unwrap()
        .query(
            "SELECT slot_name::text FROM pg_replication_slots ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(slots, ["db_1", "db_3"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_of_a_frozen_primary_follows_the_new_one_when_the_target_moves() {
    // No receiver timeout: only the move of the target can make db-3 leave
    // its silent connection to the frozen db-1.
    let Some((_pki, proxy, nodes)) = cluster_with(
        &["db-1", "db-2", "db-3"],
        &["before"],
        &[("wal_receiver_timeout", "0")],
    )
    .await
    else {
        return;
    };
    let frozen = nodes[0].postgres_processes();
    assert!(!frozen.is_empty());
    let _thaw = Frozen::new(frozen);
    // db-3's receiver starts over while db-1 is frozen: the new one hangs
    // connecting (db-1's kernel accepts, nothing answers), a state in which
    // pg_stat_wal_receiver shows no receiver at all. (Here the connect
    // gives up after primary_conninfo's connect_timeout; one hung later in
    // the handshake, as seen in the HA bench, waits for nothing.)
    let receiver = walreceiver_of(&nodes[2]).expect("db-3 streams");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(receiver),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let connecting = eventually("a new WAL receiver", LONG, || async {
        walreceiver_of(&nodes[2]).filter(|pid| *pid != receiver)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        walreceiver_of(&nodes[2]),
        Some(connecting),
        "still connecting"
    );
    for node in &nodes {
        node.set_authority("db-2");
    }
    proxy.repoint_new_connections(nodes[1].pg_port);
    assert_eq!(promote(&nodes[1]).await.timeline, 2);
    insert(&nodes[1], "after").await;
    wait_values(&nodes[2], &["after", "before"]).await;
    let report = nodes[2]
        .wait_status("streaming from the new primary", LONG, |r| {
            r.wal_receiver.as_deref() == Some("streaming") && r.timeline == Some(2)
        })
        .await;
    assert_eq!(report.target_primary.as_deref(), Some("db-2"));
    assert!(
        nodes[2]
            .log()
            .contains("restarted the WAL receiver to follow the new primary"),
        "{}",
        nodes[2].log_tail(40)
    );
}

/// The PID of the instance's WAL receiver, when one runs.
fn walreceiver_of(instance: &Instance) -> Option<i32> {
    instance.postgres_processes().into_iter().find(|pid| {
        std::fs::read(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|title| String::from_utf8_lossy(&title).contains("walreceiver"))
    })
}

/// SIGSTOPs processes; SIGCONT when dropped.
struct Frozen(Vec<i32>);

impl Frozen {
    fn new(pids: Vec<i32>) -> Self {
        for pid in &pids {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(*pid),
                nix::sys::signal::Signal::SIGSTOP,
            );
        }
        Frozen(pids)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        for pid in &self.0 {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(*pid),
                nix::sys::signal::Signal::SIGCONT,
            );
        }
    }
}

/// db-2 is promoted while db-1 still runs as primary (a partition: db-1's
/// authority has not moved yet) and takes a write of its own.
async fn diverged_pair() -> Option<(Proxy, Vec<Instance>)> {
    let (_pki, proxy, nodes) = cluster(&["db-1", "db-2"], &["common"]).await?;
    nodes[1].set_authority("db-2");
    proxy.repoint(nodes[1].pg_port);
    promote(&nodes[1]).await;
    insert(&nodes[1], "new").await;
    insert(&nodes[0], "diverged").await;
    wait_values(&nodes[0], &["common", "diverged"]).await;
    Some((proxy, nodes))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diverged_old_primary_is_rewound_and_loses_its_writes() {
    let Some((_proxy, nodes)) = diverged_pair().await else {
        return;
    };
    nodes[0].set_authority("db-2");
    nodes[0]
        .wait_status("rejoined as a replica", LONG, |r| {
            r.role == Role::Replica && r.wal_receiver.as_deref() == Some("streaming")
        })
        .await;
    wait_values(&nodes[0], &["common", "new"]).await;
    let (_, metrics) = nodes[0].http("GET", "/metrics", None, None).await;
    assert_eq!(
        metric(&metrics, "capstan_rewinds_total{result=\"ok\"}"),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(metric(&metrics, "capstan_reclones_total"), Some(0.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_rewind_falls_back_to_a_fresh_clone() {
    let Some((_proxy, nodes)) = diverged_pair().await else {
        return;
    };
    // Without these grants pg_rewind cannot list or read the source's files.
    nodes[1]
        .sql("postgres")
        .await
        .unwrap()
        .batch_execute(
            "REVOKE EXECUTE ON FUNCTION pg_catalog.pg_ls_dir(text, boolean, boolean) FROM streaming_replica;
             REVOKE EXECUTE ON FUNCTION pg_catalog.pg_stat_file(text, boolean) FROM streaming_replica;
             REVOKE EXECUTE ON FUNCTION pg_catalog.pg_read_binary_file(text) FROM streaming_replica;
             REVOKE EXECUTE ON FUNCTION pg_catalog.pg_read_binary_file(text, bigint, bigint, boolean) FROM streaming_replica;",
        )
        .await
        .unwrap();
    nodes[0].set_authority("db-2");
    nodes[0]
        .wait_status("re-cloned as a replica", LONG, |r| {
            r.role == Role::Replica && r.wal_receiver.as_deref() == Some("streaming")
        })
        .await;
    wait_values(&nodes[0], &["common", "new"]).await;
    let (_, metrics) = nodes[0].http("GET", "/metrics", None, None).await;
    assert!(
        metric(&metrics, "capstan_rewinds_total{result=\"failed\"}").unwrap_or(0.0) >= 1.0,
        "{metrics}"
    );
    assert_eq!(metric(&metrics, "capstan_reclones_total"), Some(1.0));
    assert!(nodes[0].log().contains("pg_rewind failed; re-cloning"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switchover_waits_for_the_old_primary_and_loses_nothing() {
    let Some((_pki, proxy, nodes)) = cluster(&["db-1", "db-2"], &["before"]).await else {
        return;
    };
    // Named while db-1 still streams to it: db-2 waits for db-1 to step down.
    nodes[1].set_authority("db-2");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(nodes[1].status().await.unwrap().role, Role::Replica);
    insert(&nodes[0], "last-on-old").await;

    // db-1 learns it too; the operator's demote makes it immediate. The
    // demote may arrive before the move reaches db-1 (the watch lags the
    // operator's write): it waits for it rather than refusing.
    let demote = nodes[0].operator("POST", "/demote", Some(r#"{"newPrimary":"db-2"}"#));
    let moved_late = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        nodes[0].set_authority("db-2");
    };
    let ((code, body), ()) = tokio::join!(demote, moved_late);
    assert_eq!(code, 200, "{body}");
    // Where the last record db-1 wrote starts: what db-2 must have.
    let demoted: serde_json::Value = serde_json::from_str(&body).unwrap();
    let checkpoint: Lsn = demoted["shutdownCheckpoint"]
        .as_str()
        .and_then(|l| l.parse().ok())
        .unwrap_or_else(|| panic!("no shutdown checkpoint in {body}"));
    let (code, body) = nodes[0].operator("POST", "/demote", Some("{}")).await;
    assert_eq!(code, 400, "newPrimary is required: {body}");

    // db-2 promotes once the stream ended with everything db-1 wrote; the
    // Service follows the new primary.
    nodes[1]
        .wait_status("promoted after the old primary stopped", LONG, |r| {
            r.role == Role::Primary
        })
        .await;
    proxy.repoint(nodes[1].pg_port);
    wait_values(&nodes[1], &["before", "last-on-old"]).await;
    let promoted = nodes[1].status().await.unwrap();
    let new_start: Lsn = promoted.current_lsn.as_deref().unwrap().parse().unwrap();
    assert!(new_start > checkpoint, "{new_start} after {checkpoint}");
    insert(&nodes[1], "after").await;
    nodes[0]
        .wait_status("old primary follows", LONG, |r| {
            r.role == Role::Replica && r.wal_receiver.as_deref() == Some("streaming")
        })
        .await;
    wait_values(&nodes[0], &["after", "before", "last-on-old"]).await;
    let (_, metrics) = nodes[0].http("GET", "/metrics", None, None).await;
    assert_eq!(metric(&metrics, "capstan_reclones_total"), Some(0.0));
    assert!(nodes[1].log().contains("waiting for it to shut down"));
}

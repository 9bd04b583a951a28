//! Settings changes on a running primary (real PostgreSQL 15): reload when
//! possible, `pendingRestart` when not, managed parameters refused, hba
//! lines applied, TLS-only TCP, ALTER SYSTEM reverted to the spec.

mod support;

use std::sync::Arc;
use std::time::Duration;

use support::*;

static PORTS: Ports = Ports::new(20200, 20300);

async fn show(instance: &Instance, name: &str) -> String {
    let client = instance
        .sql_retry("postgres", Duration::from_secs(30))
        .await;
    let row = client
        .query_one(&format!("SHOW {name}"), &[])
        .await
        .unwrap();
    row.get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_changes_reload_or_wait_for_a_restart() {
    let Some(bin) = pg15_bin() else {
        eprintln!("skipping: PostgreSQL 15 is not installed in /usr/lib/postgresql/15/bin");
        return;
    };
    let pki = Arc::new(Pki::new());
    let mut s = settings(15, PORTS.take(), &["db-1"]);
    let mut a = Instance::new("db-1", &PORTS, &bin, pki.clone(), &s);
    a.set_authority("db-1");
    a.start();
    a.wait_ready(Duration::from_secs(90)).await;
    assert_eq!(show(&a, "work_mem").await, "8MB");
    assert_eq!(show(&a, "wal_keep_size").await, "512MB");

    // A reloadable parameter is applied without a restart.
    s.parameters.insert("work_mem".into(), "16MB".into());
    a.write_settings(&s);
    eventually("work_mem reloaded", Duration::from_secs(30), || async {
        (show(&a, "work_mem").await == "16MB").then_some(())
    })
    .await;
    let report = a.status().await.unwrap();
    assert!(!report.pending_restart);
    let uptime = report.postgres_uptime_seconds.unwrap();

    // One that needs a restart is reported, not applied by restarting.
    s.parameters.insert("shared_buffers".into(), "64MB".into());
    a.write_settings(&s);
    a.wait_status("pendingRestart", Duration::from_secs(30), |r| {
        r.pending_restart
    })
    .await;
    assert_eq!(show(&a, "shared_buffers").await, "128MB");
    let report = a.status().await.unwrap();
    assert!(report.postgres_uptime_seconds.unwrap() >= uptime);
    assert_eq!(report.postgres_restarts, 0);
    assert_eq!(
        report
            .standby_floor_settings
            .get("max_connections")
            .copied(),
        show(&a, "max_connections").await.parse().ok()
    );

    // The running value of a setting a standby may not run below its
    // primary is reported (the operator compares it with the spec), and
    // stays the running one while a new value waits for a restart.
    let running: u64 = show(&a, "max_connections").await.parse().unwrap();
    s.parameters
        .insert("max_connections".into(), (running - 10).to_string());
    a.write_settings(&s);
    let report = a
        .wait_status("max_connections pending", Duration::from_secs(30), |r| {
            r.pending_restart && r.standby_floor_settings.get("max_connections") == Some(&running)
        })
        .await;
    assert_eq!(
        report.standby_floor_settings.keys().collect::<Vec<_>>(),
        [
            "max_connections",
            "max_locks_per_transaction",
            "max_prepared_transactions",
            "max_wal_senders",
            "max_worker_processes"
        ]
    );

    // A managed parameter: the whole document is refused and named.
    let mut bad = s.clone();
    bad.parameters.insert("listen_addresses".into(), "*".into());
    bad.parameters.insert("work_mem".into(), "32MB".into());
    a.write_settings(&bad);
    let report = a
        .wait_status("managed parameter reported", Duration::from_secs(30), |r| {
            r.last_error
                .as_deref()
                .is_some_and(|e| e.contains("listen_addresses"))
        })
        .await;
    assert!(report.last_error.unwrap().contains("not applied"));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(show(&a, "work_mem").await, "16MB");
    let user_conf = std::fs::read_to_string(a.pgdata().join("capstan-user.conf")).unwrap();
    assert!(!user_conf.contains("32MB"), "{user_conf}");
    assert!(a.log().contains("listen_addresses"));

    // Back to a good document with an extra hba rule: the error clears.
    s.hba = vec!["hostssl app app 127.0.0.1/32 scram-sha-256".into()];
    a.write_settings(&s);
    a.wait_status("error cleared", Duration::from_secs(30), |r| {
        r.last_error.is_none()
    })
    .await;
    let hba = std::fs::read_to_string(a.pgdata().join("pg_hba.conf")).unwrap();
    assert!(
        hba.contains("hostssl app app 127.0.0.1/32 scram-sha-256"),
        "{hba}"
    );
    sql_connect(&pki, a.pg_port, "app", APP_PASSWORD, "app")
        .await
        .expect("app user through the new rule");

    // A rule PostgreSQL itself rejects is reported; the old rules stay.
    s.hba = vec!["hostssl app app 127.0.0.1/32 no-such-method".into()];
    a.write_settings(&s);
    a.wait_status("hba error reported", Duration::from_secs(30), |r| {
        r.last_error
            .as_deref()
            .is_some_and(|e| e.contains("pg_hba.conf"))
    })
    .await;
    sql_connect(&pki, a.pg_port, "app", APP_PASSWORD, "app")
        .await
        .expect("the previous hba still applies");
    s.hba.clear();
    a.write_settings(&s);

    // Nothing without TLS over TCP.
    let mut plain = tokio_postgres::Config::new();
    plain
        .host("127.0.0.1")
        .port(a.pg_port)
        .user("postgres")
        .password(SUPERUSER_PASSWORD)
        .dbname("postgres");
    let Err(err) = plain.connect(tokio_postgres::NoTls).await else {
        panic!("a connection without TLS was accepted");
    };
    assert!(format!("{err:?}").contains("pg_hba.conf"), "{err:?}");

    // ALTER SYSTEM is reverted to the spec.
    let admin = a.sql("postgres").await.unwrap();
    admin
        .batch_execute("ALTER SYSTEM SET work_mem = '1MB'")
        .await
        .unwrap();
    admin
        .batch_execute("SELECT pg_reload_conf()")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(show(&a, "work_mem").await, "16MB");

    let status = a.terminate(Duration::from_secs(a.shutdown_seconds + 10));
    assert!(status.success());
    assert!(a.postgres_processes().is_empty());
}

/// A value PostgreSQL refuses never reaches the files: the instance keeps
/// running with what it has, says why in PostgreSQL's words, and starts
/// again after a restart; a fixed value is applied as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parameters_postgres_refuses_are_not_written() {
    let Some(bin) = pg15_bin() else {
        eprintln!("skipping: PostgreSQL 15 is not installed in /usr/lib/postgresql/15/bin");
        return;
    };
    let pki = Arc::new(Pki::new());
    let mut s = settings(15, PORTS.take(), &["db-1"]);
    let mut a = Instance::new("db-1", &PORTS, &bin, pki.clone(), &s);
    a.set_authority("db-1");
    a.start();
    a.wait_ready(Duration::from_secs(90)).await;
    let postmaster = a.postmaster_pid();

    for (name, value, words) in [
        (
            "work_mem",
            "lots",
            "invalid value for parameter \"work_mem\"",
        ),
        ("max_connections", "5000000", "outside the valid range"),
        ("shard_buffers", "1", "unrecognized configuration parameter"),
    ] {
        let mut bad = s.clone();
        bad.parameters.insert(name.into(), value.into());
        a.write_settings(&bad);
        let r = a
            .wait_status("the parameters refused", Duration::from_secs(30), |r| {
                r.parameters_refused
                    .as_deref()
                    .is_some_and(|w| w.contains(words))
            })
            .await;
        let refused = r.parameters_refused.clone().unwrap();
        assert!(refused.contains(words), "{name}={value}: {refused}");
        assert!(r.ready && !r.pending_restart, "{r:?}");
        let user = std::fs::read_to_string(a.pgdata().join("capstan-user.conf")).unwrap();
        assert!(!user.contains(value), "{user}");
    }
    assert_eq!(show(&a, "work_mem").await, "8MB");
    assert_eq!(a.postmaster_pid(), postmaster, "no restart");
    // A restart meanwhile starts on the parameters it had.
    a.terminate(Duration::from_secs(60));
    a.start();
    let r = a.wait_ready(Duration::from_secs(90)).await;
    assert!(r.parameters_refused.is_some(), "still said: {r:?}");
    assert_eq!(show(&a, "work_mem").await, "8MB");

    // Fixed: applied, nothing refused any more.
    s.parameters.insert("work_mem".into(), "16MB".into());
    a.write_settings(&s);
    a.wait_status("the fix applied", Duration::from_secs(30), |r| {
        r.parameters_refused.is_none()
    })
    .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while show(&a, "work_mem").await != "16MB" {
        assert!(std::time::Instant::now() < deadline, "16MB applied");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A value `postgres -C` accepts but PostgreSQL cannot start with (more
/// shared memory than the machine has): the restart that meets it goes
/// back to the file it last started with, the instance runs, and the
/// report says why in PostgreSQL's words, until the spec changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parameters_postgres_cannot_start_with_are_rolled_back() {
    let Some(bin) = pg15_bin() else {
        eprintln!("skipping: PostgreSQL 15 is not installed in /usr/lib/postgresql/15/bin");
        return;
    };
    let pki = Arc::new(Pki::new());
    let s = settings(15, PORTS.take(), &["db-1"]);
    let mut a = Instance::new("db-1", &PORTS, &bin, pki.clone(), &s);
    a.set_authority("db-1");
    a.start();
    a.wait_ready(Duration::from_secs(90)).await;
    let before = show(&a, "shared_buffers").await;

    let mut huge = s.clone();
    huge.parameters
        .insert("shared_buffers".into(), "4000000MB".into());
    a.write_settings(&huge);
    // Valid for `postgres -C`: written, and waiting for a restart.
    a.wait_status("the restart pending", Duration::from_secs(30), |r| {
        r.pending_restart
    })
    .await;
    a.terminate(Duration::from_secs(60));
    a.start();
    let r = a
        .wait_status("started on the old file", Duration::from_secs(90), |r| {
            r.ready && r.parameters_refused.is_some()
        })
        .await;
    let words = r.parameters_refused.clone().unwrap();
    assert!(
        words.contains("cannot start with them") && words.contains("shared memory"),
        "{words}"
    );
    assert_eq!(show(&a, "shared_buffers").await, before);
    let user = std::fs::read_to_string(a.pgdata().join("capstan-user.conf")).unwrap();
    assert!(!user.contains("4000000MB"), "{user}");

    // The spec back to what runs: nothing refused any more.
    a.write_settings(&s);
    a.wait_status("nothing refused", Duration::from_secs(30), |r| {
        r.parameters_refused.is_none() && r.ready
    })
    .await;
}

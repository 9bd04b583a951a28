//! A primary and two replicas on real PostgreSQL 15: bootstrap, streaming,
//! the API's authentication, a `kill -9` of the postmaster, SIGTERM.

mod support;

use std::sync::Arc;
use std::time::Duration;

use capstan::contract::instance::Role;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use support::*;

static PORTS: Ports = Ports::new(20000, 20100);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_and_two_replicas_stream_survive_a_crash_and_stop_cleanly() {
    let Some(bin) = pg15_bin() else {
        eprintln!("skipping: PostgreSQL 15 is not installed in /usr/lib/postgresql/15/bin");
        return;
    };
    let pki = Arc::new(Pki::new());
    let proxy_port = PORTS.take();
    let settings = settings(15, proxy_port, &["db-1", "db-2", "db-3"]);
    let mut a = Instance::new("db-1", &PORTS, &bin, pki.clone(), &settings);
    let mut b = Instance::new("db-2", &PORTS, &bin, pki.clone(), &settings);
    let mut c = Instance::new("db-3", &PORTS, &bin, pki.clone(), &settings);
    let _proxy = Proxy::start(proxy_port, a.pg_port).await;
    for i in [&a, &b, &c] {
        i.set_authority("db-1");
    }

    a.start();
    let report = a.wait_ready(Duration::from_secs(90)).await;
    assert_eq!(report.role, Role::Primary);
    assert_eq!(report.timeline, Some(1));
    assert!(report.version.as_deref().unwrap().starts_with("15."));
    b.start();
    c.start();
    b.wait_ready(Duration::from_secs(90)).await;
    c.wait_ready(Duration::from_secs(90)).await;

    let primary = a.sql("app").await.expect("superuser over TLS");
    primary
        .batch_execute("CREATE TABLE t (v text); INSERT INTO t VALUES ('one'), ('two');")
        .await
        .unwrap();
    for replica in [&b, &c] {
        eventually("rows on the replica", Duration::from_secs(30), || async {
            (values(replica, "t").await? == ["one", "two"]).then_some(())
        })
        .await;
        let report = replica
            .wait_status("streaming with no lag", Duration::from_secs(30), |r| {
                r.wal_receiver.as_deref() == Some("streaming") && r.lag_bytes == Some(0)
            })
            .await;
        assert_eq!(report.role, Role::Replica);
        assert_eq!(report.target_primary.as_deref(), Some("db-1"));
        assert_eq!(
            report.system_identifier,
            a.status().await.unwrap().system_identifier
        );
    }

    // Each replica streams through its own slot on the primary.
    let slots: Vec<(String, bool)> =
        eventually("active slots", Duration::from_secs(30), || async {
            let rows = primary
                .query(
                    "SELECT slot_name::text, active FROM pg_replication_slots ORDER BY 1",
                    &[],
                )
                .await
                .ok()?;
            let slots: Vec<(String, bool)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
            slots.iter().all(|(_, active)| *active).then_some(slots)
        })
        .await;
    assert_eq!(
        slots,
        vec![("db_2".to_string(), true), ("db_3".to_string(), true)]
    );

    // The application owner logs in with its Secret's password; the pooler
    // role can call the auth_query function in the app database.
    let app = sql_connect(&pki, a.pg_port, "app", APP_PASSWORD, "app")
        .await
        .expect("app user over TLS");
    app.simple_query("SELECT 1").await.unwrap();
    let pooler = sql_connect(&pki, a.pg_port, "capstan_pooler", "pooler-pass", "app")
        .await
        .expect("pooler user over TLS");
    let row = pooler
        .query_one(capstan::postgres::pooler_auth::AUTH_QUERY, &[&"app"])
        .await
        .unwrap();
    assert!(row.get::<_, String>(1).starts_with("SCRAM-SHA-256$"));

    // API: probes and metrics for anyone, status and commands for the operator.
    let (code, _) = a.http("GET", "/healthz", None, None).await;
    assert_eq!(code, 200);
    let (code, _) = a.http("GET", "/readyz", None, None).await;
    assert_eq!(code, 200);
    let (code, metrics) = b.http("GET", "/metrics", None, None).await;
    assert_eq!(code, 200);
    for line in [
        "capstan_postgres_up 1",
        "capstan_postgres_role{role=\"replica\"} 1",
        "capstan_wal_receiver_state{state=\"streaming\"} 1",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    }
    assert!(metrics.contains("capstan_database_size_bytes{datname=\"app\"}"));
    assert!(metrics.contains("capstan_postgres_xid_age"));
    let (code, body) = a.http("GET", "/status", None, None).await;
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("\"error\""), "{body}");
    let (code, _) = a.http("GET", "/status", None, Some(&pki.stranger)).await;
    assert_eq!(code, 403);
    let (code, body) = b.operator("POST", "/promote", Some("{")).await;
    assert_eq!(code, 400, "{body}");
    let (code, body) = b.operator("POST", "/promote", None).await;
    assert_eq!(code, 409, "the authority names db-1: {body}");
    assert!(body.contains("db-1"), "{body}");
    let (code, _) = a.operator("GET", "/nowhere", None).await;
    assert_eq!(code, 404);

    // kill -9 of the postmaster: the manager restarts it and writes resume.
    let verifiers_before = stored_verifiers(&primary).await;
    let old = a.postmaster_pid().expect("postmaster.pid");
    kill(Pid::from_raw(old), Signal::SIGKILL).unwrap();
    let report = a
        .wait_status("restarted after the crash", Duration::from_secs(60), |r| {
            r.postgres_restarts == 1 && r.running
        })
        .await;
    assert_eq!(report.role, Role::Primary);
    let writer = a.sql_retry("app", Duration::from_secs(30)).await;
    writer
        .batch_execute("INSERT INTO t VALUES ('three')")
        .await
        .unwrap();
    assert_ne!(a.postmaster_pid(), Some(old));
    // Unchanged passwords keep their verifiers over the restart: a new salt
    // would break the SCRAM keys a pooler holds for its server logins. The
    // manager syncs passwords each second; give it a few.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(stored_verifiers(&writer).await, verifiers_before);
    // A changed Secret is applied: the old password stops working.
    a.restore_secret("app/password", "rotated-app-password");
    eventually(
        "the rotated app password works",
        Duration::from_secs(30),
        || async {
            sql_connect(&pki, a.pg_port, "app", "rotated-app-password", "app")
                .await
                .ok()
                .map(|_| ())
        },
    )
    .await;
    assert!(
        sql_connect(&pki, a.pg_port, "app", APP_PASSWORD, "app")
            .await
            .is_err()
    );
    // The backends of the killed postmaster were adopted and reaped.
    let manager = a.manager_pid().unwrap();
    eventually(
        "no zombies under the manager",
        Duration::from_secs(15),
        || async { zombies_of(manager).is_empty().then_some(()) },
    )
    .await;
    for replica in [&b, &c] {
        eventually(
            "the new row on the replica",
            Duration::from_secs(60),
            || async { (values(replica, "t").await? == ["one", "three", "two"]).then_some(()) },
        )
        .await;
    }

    // SIGTERM: clean shutdown within the budget, nothing left running.
    drop((primary, app, pooler, writer));
    for instance in [&mut b, &mut c, &mut a] {
        let pgdata_processes = instance.postgres_processes();
        assert!(!pgdata_processes.is_empty());
        let limit = Duration::from_secs(instance.shutdown_seconds + 10);
        let status = instance.terminate(limit);
        assert!(status.success(), "{}: {status:?}", instance.name);
        assert!(
            instance.postgres_processes().is_empty(),
            "{}: postgres left running",
            instance.name
        );
        assert!(instance.log().contains("postgres stopped; exiting"));
    }
}

/// Every login role's stored password verifier.
async fn stored_verifiers(client: &tokio_postgres::Client) -> Vec<(String, Option<String>)> {
    let rows = client
        .query(
            "SELECT rolname::text, rolpassword FROM pg_authid WHERE rolcanlogin ORDER BY 1",
            &[],
        )
        .await
        .unwrap();
    let verifiers: Vec<_> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert!(verifiers.len() >= 3, "{verifiers:?}");
    verifiers
}

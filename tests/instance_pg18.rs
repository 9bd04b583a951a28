//! The primary/replica/promote path on PostgreSQL 18 (binaries from
//! .ci/install-pg-binaries.sh, found through CAPSTAN_PG18_BIN), so that
//! version-specific SQL and tool flags are caught.

mod support;

use std::sync::Arc;
use std::time::Duration;

use capstan::contract::instance::{PromoteResult, Role};
use support::*;

static PORTS: Ports = Ports::new(20400, 20500);

const LONG: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_replica_promote_and_rejoin_on_postgres_18() {
    let Some(bin) = pg18_bin() else {
        eprintln!(
            "skipping: CAPSTAN_PG18_BIN is not set to a PostgreSQL 18 bin directory (install with .ci/install-pg-binaries.sh 18.6.0 /opt/capstan-pg/18)"
        );
        return;
    };
    let pki = Arc::new(Pki::new());
    let proxy_port = PORTS.take();
    let settings = settings(18, proxy_port, &["db-1", "db-2"]);
    let mut a = Instance::new("db-1", &PORTS, &bin, pki.clone(), &settings);
    let b = Instance::new("db-2", &PORTS, &bin, pki.clone(), &settings);
    let proxy = Proxy::start(proxy_port, a.pg_port).await;
    a.set_authority("db-1");
    b.set_authority("db-1");

    a.start();
    let report = a.wait_ready(LONG).await;
    assert!(report.version.as_deref().unwrap().starts_with("18."));
    let primary = a.sql("app").await.unwrap();
    primary
        .batch_execute("CREATE TABLE t (v text); INSERT INTO t VALUES ('one');")
        .await
        .unwrap();
    let mut b = b;
    b.start();
    b.wait_status("streaming with no lag", LONG, |r| {
        r.ready && r.lag_bytes == Some(0)
    })
    .await;
    eventually("row on the replica", LONG, || async {
        (values(&b, "t").await? == ["one"]).then_some(())
    })
    .await;

    // Failover to db-2 while db-1 is down; db-1 returns as a replica.
    drop(primary);
    assert!(a.terminate(Duration::from_secs(40)).success());
    a.set_authority("db-2");
    b.set_authority("db-2");
    proxy.repoint(b.pg_port);
    let (code, body) = b.operator("POST", "/promote", Some("{}")).await;
    assert_eq!(code, 200, "{body}");
    let result: PromoteResult = serde_json::from_str(&body).unwrap();
    assert_eq!(result.timeline, 2);
    b.sql("app")
        .await
        .unwrap()
        .batch_execute("INSERT INTO t VALUES ('two')")
        .await
        .unwrap();

    a.start();
    a.wait_status("old primary streaming as a replica", LONG, |r| {
        r.role == Role::Replica && r.wal_receiver.as_deref() == Some("streaming")
    })
    .await;
    eventually("new row on the old primary", LONG, || async {
        (values(&a, "t").await? == ["one", "two"]).then_some(())
    })
    .await;
    let (_, metrics) = a.http("GET", "/metrics", None, None).await;
    assert!(
        metrics.contains("capstan_postgres_role{role=\"replica\"} 1"),
        "{metrics}"
    );
}

//! Scenario 1: the example 3-instance cluster with 2 poolers is created,
//! used through the pooler with TLS, replicates to every replica, and is
//! deleted with every child and the volume policy respected.
//!
//! Runs on the local harness, or on a real cluster with
//! `CAPSTAN_E2E_KUBECONFIG=<kubeconfig>` (Capstan installed there).

use std::time::{Duration, Instant};

use capstan_e2e::E2eError;
use capstan_e2e::cluster::{self, example};
use capstan_e2e::harness::{ensure_namespace, wait_for};
use capstan_e2e::sql::{self, Login};
use capstan_e2e::target::{Target, fail};

/// Bound on creation: three instances (initdb, two clones) and two poolers.
const READY_WITHIN: Duration = Duration::from_secs(90);

async fn scenario(target: &mut Target, ns: &str) -> Result<(), E2eError> {
    let client = target.client();
    ensure_namespace(&client, ns).await?;
    let cluster = cluster::load_example(&example("ha-cluster.yaml"), ns)?;
    let name = cluster.metadata.name.clone().unwrap_or_default();
    assert_eq!(cluster.spec.instances, 3);
    assert_eq!(cluster.spec.proxy.pgbouncer.replicas, 2);

    let started = Instant::now();
    cluster::apply(&client, &cluster).await?;
    let ready = cluster::wait_ready(&client, ns, &name, READY_WITHIN).await?;
    eprintln!(
        "cluster Ready after {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let status = ready.status.clone().unwrap_or_default();
    assert_eq!(status.ready_instances, 3);
    assert_eq!(
        status.current_primary.as_deref(),
        Some(format!("{name}-1").as_str())
    );
    assert_eq!(status.proxy.as_ref().map(|p| p.ready_replicas), Some(2));

    let ca = cluster::secret_value(&client, ns, &format!("{name}-ca"), "ca.crt").await?;
    let app_user = cluster::secret_value(&client, ns, &format!("{name}-app"), "username").await?;
    let app_password =
        cluster::secret_value(&client, ns, &format!("{name}-app"), "password").await?;
    let dbname = cluster::secret_value(&client, ns, &format!("{name}-app"), "dbname").await?;

    // Write through the pooler, as applications do.
    let pooler_host = format!("{name}-pooler.{ns}.svc");
    let pooler = target
        .service_addr(ns, &format!("{name}-pooler"), 5432)
        .await?;
    let writer = sql::connect(&Login {
        host: &pooler_host,
        addr: pooler,
        dbname: &dbname,
        user: &app_user,
        password: &app_password,
        ca_pem: &ca,
    })
    .await?;
    writer
        .batch_execute("CREATE TABLE e2e_rows (id int PRIMARY KEY, note text); INSERT INTO e2e_rows SELECT g, 'row ' || g FROM generate_series(1, 1000) g;")
        .await
        .map_err(|e| E2eError::Sql(format!("write through the pooler: {e}")))?;
    let tls: bool = writer
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .map_err(|e| E2eError::Sql(e.to_string()))?
        .get(0);
    assert!(tls, "the pooler's server connection uses TLS too");

    // Read them back from the replicas.
    let ro_host = format!("{name}-ro.{ns}.svc");
    let ro = target.service_addr(ns, &format!("{name}-ro"), 5432).await?;
    let count = wait_for(
        "rows on a replica",
        Duration::from_secs(30),
        Duration::from_millis(300),
        || async {
            let reader = sql::connect(&Login {
                host: &ro_host,
                addr: ro,
                dbname: &dbname,
                user: &app_user,
                password: &app_password,
                ca_pem: &ca,
            })
            .await
            .ok()?;
            let in_recovery: bool = reader
                .query_one("SELECT pg_is_in_recovery()", &[])
                .await
                .ok()?
                .get(0);
            let n: i64 = reader
                .query_one("SELECT count(*) FROM e2e_rows", &[])
                .await
                .ok()?
                .get(0);
            (in_recovery && n == 1000).then_some(n)
        },
    )
    .await?;
    assert_eq!(count, 1000);

    // Every replica streams from the primary.
    let superuser =
        cluster::secret_value(&client, ns, &format!("{name}-superuser"), "password").await?;
    let rw_host = format!("{name}-rw.{ns}.svc");
    let rw = target.service_addr(ns, &format!("{name}-rw"), 5432).await?;
    let admin = sql::connect(&Login {
        host: &rw_host,
        addr: rw,
        dbname: "postgres",
        user: "postgres",
        password: &superuser,
        ca_pem: &ca,
    })
    .await?;
    let streaming: Vec<String> = wait_for("both replicas streaming", Duration::from_secs(30), Duration::from_millis(300), || async {
        let rows = admin
            .query("SELECT application_name FROM pg_stat_replication WHERE state = 'streaming' ORDER BY 1", &[])
            .await
            .ok()?;
        let names: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        (names.len() == 2).then_some(names)
    })
    .await?;
    assert_eq!(streaming, [format!("{name}-2"), format!("{name}-3")]);

    // Delete: every child goes; the volumes stay (whenDeleted: Retain).
    cluster::delete(&client, ns, &name).await?;
    let volumes_before = cluster::volumes(&client, ns, &name).await?;
    wait_for(
        "every child object gone",
        Duration::from_secs(120),
        Duration::from_millis(500),
        || async {
            cluster::children(&client, ns, &name)
                .await
                .ok()
                .filter(|c| c.is_empty())
        },
    )
    .await?;
    let volumes_after = cluster::volumes(&client, ns, &name).await?;
    assert_eq!(
        volumes_after.len(),
        6,
        "3 data + 3 WAL volumes kept: {volumes_after:?}"
    );
    assert_eq!(volumes_before, volumes_after);
    cluster::delete_volumes(&client, ns, &name).await?;
    Ok(())
}

#[test]
fn create_use_and_delete_a_cluster() {
    capstan_e2e::scenario(|| async {
        let mut target = Target::from_env().await.expect("e2e target");
        let ns = format!("e2e-lifecycle-{}", std::process::id());
        if let Err(e) = scenario(&mut target, &ns).await {
            fail(&target, &ns, e).await;
        }
    });
}

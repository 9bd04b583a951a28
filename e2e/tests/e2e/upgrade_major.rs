//! Major upgrade 17 → 18 of a 3-instance cluster by raising
//! `spec.postgres.version`, on the harness or a real cluster.
//!
//! First a refusal: a table with a `regproc` column (pg_upgrade cannot
//! carry reg* types) makes pg_upgrade's check fail in the rehearsal on a
//! copy of the primary: no instance stops, no upgrade starts, and the
//! `Stalled` condition (`UpgradeCheckFailed`) quotes pg_upgrade; lowering
//! the version back to 17 is accepted and clears it. Then, the table dropped, the upgrade under
//! `pgbench` through the pooler: replicas stop, the poolers hold clients
//! while pg_upgrade --link runs on the primary, replicas clone the upgraded
//! primary. Rows, an extension, a role's password and a non-default
//! setting survive, every instance runs 18, replicas stream, and pgbench
//! sees no failed transaction.
//!
//! Needs PostgreSQL 17 and 18 images (`CAPSTAN_PG17_BIN`/`CAPSTAN_PG18_BIN`
//! on the harness) and `pgbench`.

use std::time::{Duration, Instant};

use capstan::api::PostgresCluster;
use capstan_e2e::E2eError;
use capstan_e2e::ha::{self, As, HaCluster, ha_example};
use capstan_e2e::harness::wait_for;
use capstan_e2e::load::{Pgbench, pgbench_binary};
use capstan_e2e::sql::{self, Login};
use capstan_e2e::target::{Target, fail};

const UPGRADE_WITHIN: Duration = Duration::from_secs(300);
const RUN: Duration = Duration::from_secs(90);
const ROWS: i64 = 20_000;

fn upgrade(c: &PostgresCluster) -> Option<&capstan::api::MajorUpgradeStatus> {
    c.status.as_ref()?.upgrade.as_ref()
}

fn stalled(c: &PostgresCluster) -> Option<String> {
    c.status.as_ref()?.conditions.iter().find_map(|k| {
        (k.type_ == "Stalled" && k.status == "True").then(|| format!("{}: {}", k.reason, k.message))
    })
}

async fn set_version(target: &Target, ha: &HaCluster, version: i32) -> Result<(), E2eError> {
    let patch = serde_json::json!({"spec": {"postgres": {"version": version}}});
    capstan_e2e::cluster::merge_patch(&target.client(), &ha.ns, &ha.name, &patch).await
}

/// The superuser in the application database.
async fn superuser_in_app_db(
    target: &Target,
    ha: &HaCluster,
) -> Result<tokio_postgres::Client, E2eError> {
    let rw = ha.rw(target).await?;
    let login = ha.login(&rw, As::Superuser);
    sql::connect(&Login {
        dbname: &ha.dbname,
        ..login
    })
    .await
}

async fn exec(client: &tokio_postgres::Client, statements: &str) -> Result<(), E2eError> {
    client
        .batch_execute(statements)
        .await
        .map_err(|e| E2eError::Sql(format!("{statements}: {e}")))
}

/// `server_version` and the row count on every instance.
async fn every_instance(
    target: &Target,
    ha: &HaCluster,
    instances: &[String],
) -> Result<Vec<(String, String, String)>, E2eError> {
    let mut out = vec![];
    for name in instances {
        let endpoint = ha.pod(target, name).await?;
        let login = ha.login(&endpoint, As::Superuser);
        let client = sql::connect(&Login {
            dbname: &ha.dbname,
            ..login
        })
        .await?;
        out.push((
            name.clone(),
            sql::value(&client, "SHOW server_version").await?,
            sql::value(&client, "SELECT count(*)::text FROM upgrade_rows").await?,
        ));
    }
    Ok(out)
}

async fn scenario(target: &mut Target, ns: &str) -> Result<(), E2eError> {
    let Some(pgbench) = pgbench_binary() else {
        eprintln!("skipped: pgbench not found (install postgresql-15 or set CAPSTAN_PGBENCH)");
        return Ok(());
    };
    let spec = ha_example("ha-cluster.yaml", ns)?;
    assert_eq!(spec.spec.postgres.version, 17);
    let ha = HaCluster::create(target, &spec).await?;
    let target = &*target;
    let c = ha.get(target).await?;
    let instances = ha::instance_names(&c);
    assert_eq!(instances.len(), 3, "{}", ha::status_summary(&c));
    let admin = superuser_in_app_db(target, &ha).await?;
    exec(
        &admin,
        &format!(
            "CREATE TABLE upgrade_rows (id bigint PRIMARY KEY, note text NOT NULL);
             INSERT INTO upgrade_rows SELECT g, md5(g::text) FROM generate_series(1, {ROWS}) g;
             CREATE EXTENSION pg_stat_statements;
             CREATE ROLE reporter LOGIN PASSWORD 'reporter-pass';
             GRANT SELECT ON upgrade_rows TO reporter;
             CREATE TABLE upgrade_blocker (f regproc);"
        ),
    )
    .await?;
    drop(admin);

    // 1. pg_upgrade refuses, on a copy: nothing stops, the cluster says why.
    let uids = ha.pod_uids(target).await?;
    let started = Instant::now();
    set_version(target, &ha, 18).await?;
    let failed = wait_for(
        "Stalled: the rehearsal on a copy of the primary failed",
        UPGRADE_WITHIN,
        Duration::from_millis(500),
        || async {
            let c = ha.get(target).await.ok()?;
            stalled(&c)
                .is_some_and(|w| w.starts_with("UpgradeCheckFailed"))
                .then_some(c)
        },
    )
    .await?;
    let why = stalled(&failed).unwrap_or_default();
    eprintln!(
        "[{ns}] refused on a copy after {:.1}s: {why}",
        started.elapsed().as_secs_f64()
    );
    assert!(why.contains("reg*"), "pg_upgrade's own words: {why}");
    assert!(why.contains("spec.postgres.version back to 17"), "{why}");
    assert!(upgrade(&failed).is_none(), "no upgrade started");
    assert_eq!(
        failed.status.as_ref().and_then(|s| s.postgres_version),
        Some(17)
    );
    assert_eq!(
        ha.pod_uids(target).await?,
        uids,
        "no pod stopped or re-created"
    );
    for (name, version, rows) in every_instance(target, &ha, &instances).await? {
        assert!(version.starts_with("17"), "{name} runs {version}");
        assert_eq!(rows, ROWS.to_string(), "{name}");
    }
    // The way back is allowed, and clears the stall.
    set_version(target, &ha, 17).await?;
    wait_for(
        "no Stalled condition after lowering the version back",
        Duration::from_secs(60),
        Duration::from_millis(500),
        || async {
            let c = ha.get(target).await.ok()?;
            stalled(&c).is_none().then_some(())
        },
    )
    .await?;

    // 2. Fixed; the upgrade under load.
    let admin = superuser_in_app_db(target, &ha).await?;
    exec(&admin, "DROP TABLE upgrade_blocker").await?;
    drop(admin);
    let bench = Pgbench::new(&pgbench, &ha, &ha.pooler(target).await?)?;
    bench.init(1).await?;
    let run = bench.start(4, RUN)?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let started = Instant::now();
    set_version(target, &ha, 18).await?;
    let done = wait_for(
        "status.upgrade Completed",
        UPGRADE_WITHIN,
        Duration::from_millis(500),
        || async {
            let c = ha.get(target).await.ok()?;
            (upgrade(&c)?.phase == "Completed").then_some(c)
        },
    )
    .await?;
    let total = started.elapsed();
    let record = upgrade(&done).cloned().unwrap_or_default();
    let check = done
        .status
        .as_ref()
        .and_then(|s| s.image_check.clone())
        .expect("status.imageCheck: the rehearsal");
    eprintln!("[{ns}] rehearsal: {}", check.message);
    assert_eq!(check.upgrade_from, Some(17));
    assert!(check.link_bytes.is_some_and(|b| b > 0), "{check:?}");
    eprintln!(
        "[{ns}] upgraded 17 -> 18 in {:.1}s: writes waited {:?} ms (PAUSE to RESUME), pg_upgrade {:?} ms",
        total.as_secs_f64(),
        record.downtime_ms,
        record.pg_upgrade_ms
    );
    assert_eq!(
        done.status.as_ref().and_then(|s| s.postgres_version),
        Some(18)
    );
    let report = run.finish(RUN + Duration::from_secs(90)).await?;
    eprintln!(
        "[{ns}] pgbench: {} transactions, {} failed, {} clients aborted, longest {:.0} ms",
        report.processed, report.failed, report.aborted_clients, report.max_latency_ms
    );
    assert!(
        report.failed == 0 && report.aborted_clients == 0 && !report.run_aborted,
        "pgbench saw client errors across the upgrade: {:?}\n{}",
        report.errors,
        report.output
    );

    let settled = wait_for(
        "every instance on 18 with the rows, replicas streaming",
        Duration::from_secs(120),
        Duration::from_millis(500),
        || async {
            let rows = every_instance(target, &ha, &instances).await.ok()?;
            rows.iter()
                .all(|(_, v, n)| v.starts_with("18") && *n == ROWS.to_string())
                .then_some(rows)
        },
    )
    .await?;
    eprintln!("[{ns}] {settled:?}");
    let c = ha.get(target).await?;
    let streaming = c
        .status
        .iter()
        .flat_map(|s| &s.instances)
        .filter(|i| i.role == "replica")
        .count();
    assert_eq!(streaming, 2, "{}", ha::status_summary(&c));
    let admin = superuser_in_app_db(target, &ha).await?;
    assert_eq!(
        sql::value(
            &admin,
            "SELECT count(*)::text FROM pg_extension WHERE extname = 'pg_stat_statements'"
        )
        .await?,
        "1"
    );
    assert_eq!(sql::value(&admin, "SHOW work_mem").await?, "8MB");
    let rw = ha.rw(target).await?;
    let login = ha.login(&rw, As::App);
    let reporter = sql::connect(&Login {
        user: "reporter",
        password: "reporter-pass",
        ..login
    })
    .await?;
    assert_eq!(
        sql::value(&reporter, "SELECT count(*)::text FROM upgrade_rows").await?,
        ROWS.to_string()
    );
    // The application's own login through the pooler.
    let app = ha.connect(&ha.pooler(target).await?, As::App).await?;
    assert_eq!(sql::value(&app, "SELECT 1::text").await?, "1");
    ha.delete(target).await
}

#[test]
fn a_major_upgrade_refused_then_done_under_load() {
    capstan_e2e::scenario(|| async {
        let mut target = Target::from_env().await.expect("e2e target");
        let ns = format!("e2e-major-{}", std::process::id());
        if let Err(e) = scenario(&mut target, &ns).await {
            fail(&target, &ns, e).await;
        }
    });
}

//! Major upgrade by the instance manager (real PostgreSQL 17 → 18): a
//! refused pg_upgrade leaves the old data as it was and says why in
//! pg_upgrade's words; then the primary is upgraded with `--link`
//! (rows, roles, passwords, an extension and checksums survive) and a
//! replica of the old major clones the upgraded primary again.

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use capstan::contract::upgrade::{MajorUpgradeSettings, UpgradePhase};
use support::*;

static PORTS: Ports = Ports::new(25700, 25800);

/// A copy of the PostgreSQL 17 installation with one more loadable
/// library, `capstan_probe` (pg_stat_statements under another name): what
/// an extension present in the old image and missing from the new one is.
fn old_install_with_probe(bin17: &Path, into: &Path) -> PathBuf {
    let prefix = bin17.parent().unwrap();
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(prefix)
        .arg(into)
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::copy(
        into.join("lib/pg_stat_statements.so"),
        into.join("lib/capstan_probe.so"),
    )
    .unwrap();
    chown_tree(into);
    into.to_path_buf()
}

/// One text value from the application database.
async fn query_one_text(instance: &Instance, sql: &str) -> String {
    let client = instance.sql_retry("app", Duration::from_secs(60)).await;
    client.query_one(sql, &[]).await.unwrap().get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_upgrades_with_pg_upgrade_and_a_replica_clones_it_again() {
    let (Some(bin17), Some(bin18)) = (pg_bin(17), pg_bin(18)) else {
        return;
    };
    let scratch = tempfile::tempdir().unwrap();
    chown_tree(scratch.path());
    let old = old_install_with_probe(&bin17, &scratch.path().join("pg17"));
    let pki = Arc::new(Pki::new());
    let primary_port = PORTS.take();
    let mut s = settings(17, primary_port, &["db-1", "db-2"]);
    s.parameters.insert(
        "shared_preload_libraries".into(),
        "pg_stat_statements".into(),
    );
    let mut a = Instance::new("db-1", &PORTS, &old.join("bin"), pki.clone(), &s);
    a.pg_port = primary_port;
    a.set_authority("db-1");
    a.env
        .push(("CAPSTAN_OLD_POSTGRES_DIR".into(), old.display().to_string()));
    a.start();
    a.wait_ready(Duration::from_secs(90)).await;
    let mut b = Instance::new("db-2", &PORTS, &old.join("bin"), pki.clone(), &s);
    b.set_authority("db-1");
    b.start();
    b.wait_ready(Duration::from_secs(90)).await;

    let client = a.sql_retry("app", Duration::from_secs(30)).await;
    client
        .batch_execute(
            "CREATE TABLE orders (id int PRIMARY KEY, note text);
             INSERT INTO orders SELECT g, 'order ' || g FROM generate_series(1, 5000) g;
             CREATE EXTENSION pg_stat_statements;
             CREATE ROLE reporter LOGIN PASSWORD 'reporter-pass';
             CREATE FUNCTION probe() RETURNS void AS '$libdir/capstan_probe', 'pg_stat_statements_reset' LANGUAGE C;",
        )
        .await
        .unwrap();
    let before = a.status().await.unwrap();
    let old_sysid = before.system_identifier.clone().unwrap();

    // The operator re-creates the primary with the new image; the replica
    // is stopped meanwhile.
    b.terminate(Duration::from_secs(30));
    a.terminate(Duration::from_secs(30));
    s.postgres_version = 18;
    s.major_upgrade = Some(MajorUpgradeSettings { from_version: 17 });
    a.write_settings(&s);

    // An image of the wrong major is refused before anything runs.
    a.start();
    let wrong = a
        .wait_status("the wrong image refused", Duration::from_secs(60), |r| {
            r.upgrade
                .as_ref()
                .is_some_and(|u| u.phase == UpgradePhase::Refused)
        })
        .await;
    let words = wrong.upgrade.unwrap().message.unwrap();
    assert!(
        words.contains("are PostgreSQL 17") && words.contains("runs PostgreSQL 18"),
        "{words}"
    );
    a.terminate(Duration::from_secs(30));
    assert!(!a.root.join("data/pgdata.upgrading").exists());

    a.bin_dir = bin18.clone();
    a.start();
    let refused = a
        .wait_status("the upgrade refused", Duration::from_secs(120), |r| {
            r.upgrade
                .as_ref()
                .is_some_and(|u| u.phase == UpgradePhase::Refused)
        })
        .await;
    let words = refused.upgrade.unwrap().message.unwrap();
    eprintln!("refused: {words}");
    assert!(
        words.contains("loadable libraries") && words.contains("capstan_probe"),
        "pg_upgrade's own words, with the library it lists: {words}"
    );
    assert!(!refused.running);
    assert_eq!(
        std::fs::read_to_string(a.pgdata().join("PG_VERSION"))
            .unwrap()
            .trim(),
        "17"
    );
    assert!(!a.root.join("data/pgdata.upgrading").exists());
    assert!(a.pgdata().join("global/pg_control").exists());

    // The way back: the old image runs the untouched data.
    a.terminate(Duration::from_secs(30));
    s.postgres_version = 17;
    s.major_upgrade = None;
    a.write_settings(&s);
    a.bin_dir = old.join("bin");
    a.start();
    a.wait_ready(Duration::from_secs(90)).await;
    assert_eq!(
        query_one_text(&a, "SELECT count(*)::text FROM orders").await,
        "5000"
    );
    let client = a.sql_retry("app", Duration::from_secs(30)).await;
    client.batch_execute("DROP FUNCTION probe()").await.unwrap();
    a.terminate(Duration::from_secs(30));

    // Fixed: the upgrade goes through.
    s.postgres_version = 18;
    s.major_upgrade = Some(MajorUpgradeSettings { from_version: 17 });
    a.write_settings(&s);
    a.bin_dir = bin18.clone();
    a.start();
    let upgraded = a
        .wait_status("upgraded and ready", Duration::from_secs(180), |r| {
            r.ready && r.version.as_deref().is_some_and(|v| v.starts_with("18"))
        })
        .await;
    let report = upgraded.upgrade.clone().unwrap();
    eprintln!(
        "pg_upgrade (check, link, swap) took {:?} ms",
        report.upgrade_ms
    );
    assert_ne!(upgraded.system_identifier.unwrap(), old_sysid);
    let done = a
        .wait_status("statistics rebuilt", Duration::from_secs(120), |r| {
            r.upgrade
                .as_ref()
                .is_some_and(|u| u.phase == UpgradePhase::Completed)
        })
        .await;
    assert_eq!(done.upgrade.unwrap().message, None);
    assert_eq!(
        query_one_text(&a, "SELECT count(*)::text FROM orders").await,
        "5000"
    );
    assert!(
        !query_one_text(
            &a,
            "SELECT extversion FROM pg_extension WHERE extname = 'pg_stat_statements'"
        )
        .await
        .is_empty()
    );
    assert_eq!(query_one_text(&a, "SHOW data_checksums").await, "on");
    assert_eq!(
        query_one_text(
            &a,
            "SELECT count(*)::text FROM pg_stats WHERE tablename = 'orders'"
        )
        .await,
        "2",
        "vacuumdb --analyze-in-stages rebuilt the statistics"
    );
    // The role's password came along (SCRAM over TLS, as clients connect).
    let reporter = sql_connect(&pki, a.pg_port, "reporter", "reporter-pass", "app")
        .await
        .expect("reporter logs in with its password after the upgrade");
    drop(reporter);
    for leftover in [
        "pgdata.upgrading",
        "pgdata.pre-upgrade",
        "capstan-upgrade.json",
    ] {
        assert!(
            !a.root.join("data").join(leftover).exists(),
            "{leftover} removed"
        );
    }

    // The replica's data is of the old major: it clones the upgraded
    // primary again and streams.
    s.major_upgrade = Some(MajorUpgradeSettings { from_version: 17 });
    b.write_settings(&s);
    b.bin_dir = bin18;
    b.start();
    let replica = b
        .wait_status("the replica streams again", Duration::from_secs(120), |r| {
            r.ready && r.wal_receiver.as_deref() == Some("streaming")
        })
        .await;
    assert!(replica.version.unwrap().starts_with("18"));
    assert_eq!(
        query_one_text(&b, "SELECT count(*)::text FROM orders").await,
        "5000"
    );
}

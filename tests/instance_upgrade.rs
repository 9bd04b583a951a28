//! Major upgrade by the instance manager (real PostgreSQL 17 → 18): a
//! refused pg_upgrade leaves the old data as it was and says why in
//! pg_upgrade's words; then the primary is upgraded with `--link`
//! (rows, roles, passwords, an extension and checksums survive) and a
//! replica of the old major clones the upgraded primary again.

mod support;

use std::os::unix::process::CommandExt;
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

/// `capstan check-image --upgrade-from 17`, as the upgrade-check pod runs
/// it: the major upgrade rehearsed on a `pg_basebackup` copy of the
/// running 17 primary. A library the new image lacks is refused in
/// pg_upgrade's words, an extension the new image lacks by name; fixed,
/// it passes and says how much space `--link` needs. The primary serves
/// throughout (same postmaster) and its data is not touched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_major_upgrade_is_rehearsed_on_a_copy_of_the_running_primary() {
    let (Some(bin17), Some(bin18)) = (pg_bin(17), pg_bin(18)) else {
        eprintln!("skipping: set CAPSTAN_PG17_BIN and CAPSTAN_PG18_BIN");
        return;
    };
    let scratch = tempfile::tempdir().unwrap();
    chown_tree(scratch.path());
    let old = old_install_with_probe(&bin17, &scratch.path().join("pg17"));
    // An SQL-only extension the 17 installation has and 18's has not.
    let ext = old.join("share/extension");
    std::fs::write(
        ext.join("capstan_ext.control"),
        "default_version = '1.0'\nrelocatable = true\n",
    )
    .unwrap();
    std::fs::write(
        ext.join("capstan_ext--1.0.sql"),
        "CREATE FUNCTION capstan_ext_answer() RETURNS int AS 'SELECT 42' LANGUAGE sql;\n",
    )
    .unwrap();
    chown_tree(&old);
    let pki = Arc::new(Pki::new());
    let primary_port = PORTS.take();
    let s = settings(17, primary_port, &["db-1"]);
    let mut a = Instance::new("db-1", &PORTS, &old.join("bin"), pki.clone(), &s);
    a.pg_port = primary_port;
    a.set_authority("db-1");
    a.start();
    a.wait_ready(Duration::from_secs(90)).await;
    let client = a.sql_retry("app", Duration::from_secs(30)).await;
    client
        .batch_execute(
            "CREATE TABLE orders (id int PRIMARY KEY, note text);
             INSERT INTO orders SELECT g, 'order ' || g FROM generate_series(1, 20000) g;
             CREATE EXTENSION pg_stat_statements;
             CREATE EXTENSION capstan_ext;
             CREATE FUNCTION probe() RETURNS void AS '$libdir/capstan_probe', 'pg_stat_statements_reset' LANGUAGE C;",
        )
        .await
        .unwrap();
    let postmaster = a.postmaster_pid();

    let check_dir = scratch.path().join("check");
    std::fs::create_dir_all(&check_dir).unwrap();
    chown_tree(&check_dir);
    let check_port = PORTS.take();
    let check = || {
        let log = check_dir.join("termination-log");
        let (uid, gid) = postgres_ids();
        let out = std::process::Command::new(manager_binary())
            .arg("check-image")
            .args(["--major", "18", "--upgrade-from", "17"])
            .arg("--pg-bin-dir")
            .arg(&bin18)
            .arg("--old-postgres-dir")
            .arg(&old)
            .arg("--config-dir")
            .arg(a.root.join("config"))
            .arg("--tls-dir")
            .arg(a.root.join("tls"))
            .arg("--scratch")
            .arg(check_dir.join("scratch"))
            .arg("--port")
            .arg(check_port.to_string())
            .arg("--termination-log")
            .arg(&log)
            .env("RUST_LOG", "info")
            .env("HOME", &check_dir)
            .current_dir(&check_dir)
            .uid(uid)
            .gid(gid)
            .output()
            .unwrap();
        eprintln!("{}", String::from_utf8_lossy(&out.stderr));
        let text = std::fs::read_to_string(&log).unwrap();
        let result = capstan::contract::image_check::ImageCheckResult::from_message(&text)
            .unwrap_or_else(|| panic!("a result: {text}"));
        assert_eq!(out.status.success(), result.passed, "{text}");
        result
    };

    let r = check();
    let words = r.error.clone().unwrap_or_default();
    eprintln!("refused: {words}");
    assert!(
        !r.passed && words.contains("loadable libraries") && words.contains("capstan_probe"),
        "pg_upgrade's words with the library: {r:?}"
    );
    assert!(r.rehearsal_failed, "the image itself passed: {r:?}");
    client.batch_execute("DROP FUNCTION probe()").await.unwrap();
    let r = check();
    let words = r.error.clone().unwrap_or_default();
    eprintln!("refused: {words}");
    assert!(
        !r.passed && words.contains("capstan_ext (in database app)"),
        "the extension named: {r:?}"
    );
    client
        .batch_execute("DROP EXTENSION capstan_ext")
        .await
        .unwrap();
    let r = check();
    assert!(r.passed, "{r:?}");
    let u = r.upgrade.unwrap();
    eprintln!(
        "rehearsal: copy {} ms, pg_upgrade {} ms, database {} bytes, --link writes {} bytes",
        u.copy_ms, u.pg_upgrade_ms, u.database_bytes, u.link_bytes
    );
    assert_eq!(u.from, 17);
    assert!(
        u.link_bytes > 0 && u.link_bytes < u.database_bytes,
        "{} of {}",
        u.link_bytes,
        u.database_bytes
    );
    assert!(
        u.extensions
            .iter()
            .any(|e| e.starts_with("pg_stat_statements ")),
        "{:?}",
        u.extensions
    );

    // The primary never stopped, and is still 17 with its rows.
    assert_eq!(a.postmaster_pid(), postmaster);
    assert_eq!(
        query_one_text(&a, "SELECT count(*)::text FROM orders").await,
        "20000"
    );
    assert_eq!(
        query_one_text(
            &a,
            "SELECT current_setting('server_version_num')::int / 10000 || ''"
        )
        .await,
        "17"
    );
}

/// A major upgrade stops the primary while the poolers hold clients:
/// after `POST /prepare-stop` (a CHECKPOINT) the shutdown is fast, so a
/// session connected around the pooler is ended instead of being waited
/// for through the smart phase. Without it, the smart phase comes first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prepared_stop_skips_the_smart_shutdown() {
    let Some(bin17) = pg_bin(17) else {
        eprintln!("skipping: set CAPSTAN_PG17_BIN");
        return;
    };
    let pki = Arc::new(Pki::new());
    let s = settings(17, PORTS.take(), &["db-1"]);
    let mut a = Instance::new("db-1", &PORTS, &bin17, pki.clone(), &s);
    a.set_authority("db-1");
    let smart = |a: &Instance| a.log().matches("received smart shutdown request").count();
    let fast = |a: &Instance| a.log().matches("received fast shutdown request").count();

    a.start();
    a.wait_ready(Duration::from_secs(90)).await;
    let idle = a.sql_retry("app", Duration::from_secs(30)).await;
    a.terminate(Duration::from_secs(90));
    drop(idle);
    assert_eq!(smart(&a), 1, "an ordinary stop waits for sessions first");

    a.start();
    a.wait_ready(Duration::from_secs(90)).await;
    let idle = a.sql_retry("app", Duration::from_secs(30)).await;
    let (code, body) = a.operator("POST", "/prepare-stop", Some("{}")).await;
    assert_eq!(code, 200, "{body}");
    assert!(
        a.log()
            .contains("checkpoint starting: immediate force wait")
    );
    let fast_before = fast(&a);
    a.terminate(Duration::from_secs(90));
    drop(idle);
    assert_eq!(smart(&a), 1, "no smart phase after prepare-stop");
    assert_eq!(fast(&a), fast_before + 1);
}

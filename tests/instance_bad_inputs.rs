//! Bad inputs give a clear error in /status and the log, and leave the data
//! alone: a managed parameter, a data directory of another cluster, a
//! missing secret file (real PostgreSQL 15).

mod support;

use std::sync::Arc;
use std::time::Duration;

use support::*;

static PORTS: Ports = Ports::new(20300, 20400);

const WAIT: Duration = Duration::from_secs(60);

fn error_contains<'a>(
    needle: &'a str,
) -> impl Fn(&capstan::contract::instance::InstanceReport) -> bool + 'a {
    move |r| r.last_error.as_deref().is_some_and(|e| e.contains(needle))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managed_parameter_at_bootstrap_creates_nothing() {
    let Some(bin) = pg15_bin() else {
        eprintln!("skipping: PostgreSQL 15 is not installed in /usr/lib/postgresql/15/bin");
        return;
    };
    let pki = Arc::new(Pki::new());
    let mut s = settings(15, PORTS.take(), &["db-1"]);
    s.parameters.insert("port".into(), "5433".into());
    let mut a = Instance::new("db-1", &PORTS, &bin, pki, &s);
    a.set_authority("db-1");
    a.start();
    let report = a
        .wait_status("managed parameter reported", WAIT, error_contains("port"))
        .await;
    assert!(!report.running);
    assert!(report.last_error.unwrap().contains("managed by Capstan"));
    assert!(a.log().contains("managed by Capstan"));
    assert!(!a.pgdata().exists(), "no data may be created");
    let (code, _) = a.http("GET", "/healthz", None, None).await;
    assert_eq!(code, 200, "the manager itself is healthy");
    let (code, _) = a.http("GET", "/readyz", None, None).await;
    assert_eq!(code, 503);

    // Fixed settings: it bootstraps.
    s.parameters.remove("port");
    a.write_settings(&s);
    a.wait_ready(Duration::from_secs(90)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_directory_of_another_cluster_is_refused_untouched() {
    let Some(bin) = pg15_bin() else {
        eprintln!("skipping: PostgreSQL 15 is not installed in /usr/lib/postgresql/15/bin");
        return;
    };
    let pki = Arc::new(Pki::new());
    let mut other = settings(15, PORTS.take(), &["db-1"]);
    other.cluster = "other".into();
    let mut a = Instance::new("db-1", &PORTS, &bin, pki, &other);
    a.set_authority("db-1");
    a.start();
    a.wait_ready(Duration::from_secs(90)).await;
    assert!(a.terminate(Duration::from_secs(40)).success());
    let control = read_bytes(&a.pgdata().join("global/pg_control"));
    let identity = read_bytes(&a.root.join("data/capstan-identity.json"));

    // The same volume, mounted into an instance of cluster `db`.
    a.cluster = CLUSTER.into();
    a.write_settings(&settings(15, PORTS.take(), &["db-1"]));
    a.start();
    let report = a
        .wait_status(
            "foreign data reported",
            WAIT,
            error_contains("belongs to cluster test/other"),
        )
        .await;
    assert!(!report.running);
    assert!(a.log().contains("belongs to cluster test/other"));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(a.postgres_processes().is_empty(), "postgres must not start");
    assert_eq!(read_bytes(&a.pgdata().join("global/pg_control")), control);
    assert_eq!(
        read_bytes(&a.root.join("data/capstan-identity.json")),
        identity
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_secret_file_is_reported_and_bootstrap_waits_for_it() {
    let Some(bin) = pg15_bin() else {
        eprintln!("skipping: PostgreSQL 15 is not installed in /usr/lib/postgresql/15/bin");
        return;
    };
    let pki = Arc::new(Pki::new());
    let s = settings(15, PORTS.take(), &["db-1"]);
    let mut a = Instance::new("db-1", &PORTS, &bin, pki, &s);
    a.remove_secret("app/password");
    a.set_authority("db-1");
    a.start();
    let report = a
        .wait_status(
            "missing secret reported",
            WAIT,
            error_contains("app/password"),
        )
        .await;
    assert!(!report.running);
    assert!(a.log().contains("app/password"));
    assert!(!a.pgdata().exists(), "no data may be created");
    assert!(!a.log().contains(APP_PASSWORD));

    a.restore_secret("app/password", APP_PASSWORD);
    a.wait_ready(Duration::from_secs(90)).await;
    sql_connect(&a.pki, a.pg_port, "app", APP_PASSWORD, "app")
        .await
        .expect("the app user has the Secret's password");
    let log = a.log();
    for secret in [APP_PASSWORD, SUPERUSER_PASSWORD, "pooler-pass"] {
        assert!(!log.contains(secret), "a password reached the log");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_starts_before_the_authority_answers() {
    let Some(bin) = pg15_bin() else {
        eprintln!("skipping: PostgreSQL 15 is not installed in /usr/lib/postgresql/15/bin");
        return;
    };
    let pki = Arc::new(Pki::new());
    let s = settings(15, PORTS.take(), &["db-1"]);
    let mut a = Instance::new("db-1", &PORTS, &bin, pki, &s);
    a.start();
    let report = a
        .wait_status(
            "authority error reported",
            WAIT,
            error_contains("authority"),
        )
        .await;
    assert!(!report.running);
    assert!(
        !a.pgdata().exists(),
        "no data before the cluster names a primary"
    );

    // An empty answer (nobody named yet) does not create data either.
    a.set_authority("");
    a.wait_status("no primary named", WAIT, error_contains("names no primary"))
        .await;
    assert!(!a.pgdata().exists());

    a.set_authority("db-1");
    let report = a.wait_ready(Duration::from_secs(90)).await;
    assert_eq!(report.target_primary.as_deref(), Some("db-1"));
}

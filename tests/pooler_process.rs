//! `capstan pooler` against real PgBouncer 1.18 and PostgreSQL 15: TLS and
//! auth_query authentication, the API's client-certificate rules, PAUSE
//! bounded by its timeout, crash restart, reload, metrics, and the
//! all-or-nothing pause of several poolers.

mod pooler_support;

use std::sync::Arc;
use std::time::Duration;

use capstan::contract::pooler::PauseRequest;
use capstan::pooler::client::{ClientError, PoolerClient};
use capstan::pooler::switchover::{SwitchoverError, SwitchoverOptions, switchover};
use hyper::StatusCode;
use pooler_support::postgres::Postgres;
use pooler_support::{
    APP_PASSWORD, Pooler, Ports, operator_client, pki::Pki, prom, psql_pooler, settings, stderr,
    stdout, tools_present, wait_until, workdir,
};

static PORTS: Ports = Ports::new(22000, 1000);

/// A long transaction through the pooler, holding a server connection.
fn long_transaction(
    port: u16,
    pki: &Pki,
    seconds: u32,
) -> std::thread::JoinHandle<std::process::Output> {
    let ca = pki.ca_file();
    std::thread::spawn(move || {
        std::process::Command::new(format!("{}/psql", pooler_support::PG_BIN))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-U",
                "app",
                "-d",
                "appdb",
                "-X",
            ])
            .args(["-c", &format!("BEGIN; SELECT pg_sleep({seconds}); COMMIT;")])
            .env("PGSSLMODE", "verify-full")
            .env("PGSSLROOTCERT", ca)
            .env("PGPASSWORD", APP_PASSWORD)
            .output()
            .unwrap()
    })
}

async fn wait_servers_active(client: &PoolerClient, pooler: &Pooler, at_least: i64) {
    for _ in 0..100 {
        let s = client.status(&pooler.endpoint()).await.unwrap();
        if s.servers_active >= at_least {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no active server connection on {}", pooler.name);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_auth_query_authentication() {
    if !tools_present() {
        return;
    }
    let dir = workdir();
    let pki = Pki::new(dir.path());
    let pg = Postgres::primary(dir.path(), "a", PORTS.take(), &pki);
    let pooler = Pooler::start(
        "p1",
        dir.path(),
        &pki,
        &PORTS,
        &settings(pg.port, "transaction"),
    );
    let client = operator_client(&pki);
    pooler.wait_ready(&client).await;

    // verify-full against the pooler certificate, SCRAM via auth_query,
    // and TLS (verify-full) on the server side too.
    let ok = psql_pooler(
        pooler.port,
        &pki,
        APP_PASSWORD,
        "verify-full",
        "SELECT current_user, (SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid())",
    );
    assert!(ok.status.success(), "{}", stderr(&ok));
    assert_eq!(stdout(&ok), "app|t");

    let plain = psql_pooler(pooler.port, &pki, APP_PASSWORD, "disable", "SELECT 1");
    assert!(!plain.status.success(), "a plain-text client got in");

    let wrong = psql_pooler(
        pooler.port,
        &pki,
        "not-the-password",
        "verify-full",
        "SELECT 1",
    );
    assert!(!wrong.status.success(), "a wrong password got in");
    assert!(
        stderr(&wrong).contains("authentication failed"),
        "{}",
        stderr(&wrong)
    );

    // The pooler role itself may not log in through the pooler.
    let rendered = std::fs::read_to_string(pooler.dir.join("run/pgbouncer.ini")).unwrap();
    assert!(!rendered.contains(APP_PASSWORD));
    let auth_file = std::fs::read_to_string(pooler.dir.join("run/users.txt")).unwrap();
    assert!(!auth_file.contains(APP_PASSWORD));
    assert!(!auth_file.contains("\"app\""));

    // API: probes and metrics need no certificate, the rest the operator's.
    let anonymous = PoolerClient::new(Arc::new(pki.anonymous_client_config()));
    anonymous.ready(&pooler.endpoint()).await.unwrap();
    anonymous.metrics(&pooler.endpoint()).await.unwrap();
    match anonymous.status(&pooler.endpoint()).await {
        Err(ClientError::Status { status, .. }) => assert_eq!(status, StatusCode::UNAUTHORIZED),
        other => panic!("anonymous /status: {other:?}"),
    }
    let stranger = PoolerClient::new(Arc::new(pki.client_config("someone-else")));
    match stranger.resume(&pooler.endpoint()).await {
        Err(ClientError::Status {
            status, message, ..
        }) => {
            assert_eq!(status, StatusCode::FORBIDDEN);
            assert!(message.contains("someone-else"), "{message}");
        }
        other => panic!("stranger /resume: {other:?}"),
    }
    let report = client.status(&pooler.endpoint()).await.unwrap();
    assert!(report.running && !report.paused);
    assert_eq!(report.backend_port, Some(pg.port));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_times_out_on_a_long_transaction_and_resumes() {
    if !tools_present() {
        return;
    }
    let dir = workdir();
    let pki = Pki::new(dir.path());
    let pg = Postgres::primary(dir.path(), "a", PORTS.take(), &pki);
    let pooler = Pooler::start(
        "p1",
        dir.path(),
        &pki,
        &PORTS,
        &settings(pg.port, "transaction"),
    );
    let client = operator_client(&pki);
    pooler.wait_ready(&client).await;

    let long = long_transaction(pooler.port, &pki, 6);
    wait_servers_active(&client, &pooler, 1).await;

    let request = PauseRequest {
        timeout_ms: 1000,
        max_hold_ms: None,
    };
    match client.pause(&pooler.endpoint(), &request).await {
        Err(ClientError::Status {
            status, message, ..
        }) => {
            assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
            assert!(message.contains("resumed"), "{message}");
        }
        other => panic!("PAUSE during a long transaction: {other:?}"),
    }
    let report = client.status(&pooler.endpoint()).await.unwrap();
    assert!(!report.paused);
    // Other clients go on while the long transaction still runs.
    let other = psql_pooler(pooler.port, &pki, APP_PASSWORD, "verify-full", "SELECT 42");
    assert!(other.status.success(), "{}", stderr(&other));
    assert_eq!(stdout(&other), "42");
    let long = long.join().unwrap();
    assert!(long.status.success(), "{}", stderr(&long));

    // Without the long transaction PAUSE completes, and RESUME lifts it.
    client.pause(&pooler.endpoint(), &request).await.unwrap();
    assert!(client.status(&pooler.endpoint()).await.unwrap().paused);
    client.resume(&pooler.endpoint()).await.unwrap();
    assert!(!client.status(&pooler.endpoint()).await.unwrap().paused);

    // A pause nobody lifts ends at its hold limit.
    let held = PauseRequest {
        timeout_ms: 1000,
        max_hold_ms: Some(500),
    };
    client.pause(&pooler.endpoint(), &held).await.unwrap();
    wait_until(
        "the hold limit to resume the pooler",
        Duration::from_secs(10),
        || {
            psql_pooler(pooler.port, &pki, APP_PASSWORD, "verify-full", "SELECT 1")
                .status
                .success()
        },
    );
    assert!(!client.status(&pooler.endpoint()).await.unwrap().paused);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_restarts_and_config_change_reloads_without_dropping_clients() {
    if !tools_present() {
        return;
    }
    let dir = workdir();
    let pki = Pki::new(dir.path());
    let pg = Postgres::primary(dir.path(), "a", PORTS.take(), &pki);
    let mut s = settings(pg.port, "transaction");
    let pooler = Pooler::start("p1", dir.path(), &pki, &PORTS, &s);
    let client = operator_client(&pki);
    pooler.wait_ready(&client).await;

    // kill -9 the pgbouncer child: the supervisor restarts it.
    let first = pooler.pgbouncer_pid().expect("pgbouncer runs");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_until("pgbouncer to be restarted", Duration::from_secs(20), || {
        pooler.pgbouncer_pid().is_some_and(|p| p != first)
    });
    pooler.wait_ready(&client).await;
    let report = client.status(&pooler.endpoint()).await.unwrap();
    assert_eq!(report.restarts, 1);
    let ok = psql_pooler(pooler.port, &pki, APP_PASSWORD, "verify-full", "SELECT 1");
    assert!(ok.status.success(), "{}", stderr(&ok));
    // The killed process was reaped, not left a zombie.
    let stat = std::fs::read_to_string(format!("/proc/{first}/stat")).unwrap_or_default();
    assert!(!stat.contains(") Z "), "pgbouncer {first} is a zombie");

    // An idle client connection survives a settings change and its RELOAD.
    let mut idle = pooler_support::interactive_psql(pooler.port, &pki);
    assert_eq!(idle.query("SELECT 'before'"), "before");
    let pid_before = pooler.pgbouncer_pid();
    s.default_pool_size = 5;
    s.parameters
        .insert("server_idle_timeout".into(), "30".into());
    pooler.write_settings(&s);
    wait_until("a RELOAD", Duration::from_secs(20), || {
        tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current()
                .block_on(client.status(&pooler.endpoint()))
                .map(|r| r.reloads >= 1)
                .unwrap_or(false)
        })
    });
    let ini = std::fs::read_to_string(pooler.dir.join("run/pgbouncer.ini")).unwrap();
    assert!(ini.contains("default_pool_size = 5"));
    assert_eq!(idle.query("SELECT 'after'"), "after");
    assert_eq!(
        pooler.pgbouncer_pid(),
        pid_before,
        "RELOAD must not restart pgbouncer"
    );

    // A managed parameter is refused with its name; the running config stays.
    s.parameters.insert("auth_type".into(), "trust".into());
    pooler.write_settings(&s);
    wait_until(
        "the refusal to be reported",
        Duration::from_secs(20),
        || {
            tokio::task::block_in_place(|| {
                tokio::runtime::Handle::current()
                    .block_on(client.status(&pooler.endpoint()))
                    .ok()
                    .and_then(|r| r.last_error)
                    .is_some_and(|e| e.contains("auth_type"))
            })
        },
    );
    assert_eq!(idle.query("SELECT 'still'"), "still");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_carry_pool_figures() {
    if !tools_present() {
        return;
    }
    let dir = workdir();
    let pki = Pki::new(dir.path());
    let pg = Postgres::primary(dir.path(), "a", PORTS.take(), &pki);
    let pooler = Pooler::start(
        "p1",
        dir.path(),
        &pki,
        &PORTS,
        &settings(pg.port, "transaction"),
    );
    let client = operator_client(&pki);
    pooler.wait_ready(&client).await;
    for _ in 0..3 {
        let ok = psql_pooler(pooler.port, &pki, APP_PASSWORD, "verify-full", "SELECT 1");
        assert!(ok.status.success(), "{}", stderr(&ok));
    }
    let long = long_transaction(pooler.port, &pki, 3);
    wait_servers_active(&client, &pooler, 1).await;

    let text = client.metrics(&pooler.endpoint()).await.unwrap();
    let samples = prom::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let db = [("database", "appdb"), ("user", "app")];
    assert_eq!(prom::value(&samples, "pgbouncer_up", &[]), Some(1.0));
    assert_eq!(
        prom::value(&samples, "capstan_pooler_paused", &[]),
        Some(0.0)
    );
    assert!(
        prom::value(&samples, "pgbouncer_pools_client_active_connections", &db).unwrap() >= 1.0
    );
    assert!(
        prom::value(&samples, "pgbouncer_pools_server_active_connections", &db).unwrap() >= 1.0
    );
    assert!(prom::value(&samples, "pgbouncer_pools_client_waiting_connections", &db).is_some());
    assert!(prom::value(&samples, "pgbouncer_pools_client_maxwait_seconds", &db).is_some());
    // Statistics are totals since start, refreshed by PgBouncer's stats period.
    let stats = [("database", "appdb")];
    assert!(
        prom::value(
            &samples,
            "pgbouncer_stats_sql_transactions_pooled_total",
            &stats
        )
        .unwrap()
            >= 3.0
    );
    assert!(prom::value(&samples, "pgbouncer_stats_avg_query_seconds", &stats).is_some());
    assert!(prom::value(&samples, "pgbouncer_stats_avg_wait_seconds", &stats).is_some());
    long.join().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pausing_several_poolers_is_all_or_nothing() {
    if !tools_present() {
        return;
    }
    let dir = workdir();
    let pki = Pki::new(dir.path());
    let pg = Postgres::primary(dir.path(), "a", PORTS.take(), &pki);
    let s = settings(pg.port, "transaction");
    let free = Pooler::start("p1", dir.path(), &pki, &PORTS, &s);
    let blocked = Pooler::start("p2", dir.path(), &pki, &PORTS, &s);
    let client = operator_client(&pki);
    free.wait_ready(&client).await;
    blocked.wait_ready(&client).await;

    let long = long_transaction(blocked.port, &pki, 6);
    wait_servers_active(&client, &blocked, 1).await;

    let ran = std::sync::atomic::AtomicBool::new(false);
    let options = SwitchoverOptions {
        pause_timeout: Duration::from_millis(1000),
        max_hold: Duration::from_secs(30),
    };
    let result = switchover(
        &client,
        &[free.endpoint(), blocked.endpoint()],
        &options,
        || async {
            ran.store(true, std::sync::atomic::Ordering::SeqCst);
            Ok::<_, String>(())
        },
    )
    .await;
    assert!(
        !ran.load(std::sync::atomic::Ordering::SeqCst),
        "the step ran although a pause failed"
    );
    match result {
        Err(SwitchoverError::Pause {
            failures,
            resume_failures,
        }) => {
            assert_eq!(failures.len(), 1, "{failures:?}");
            assert_eq!(failures[0].endpoint, "p2");
            assert!(resume_failures.is_empty(), "{resume_failures:?}");
        }
        other => panic!("expected a pause failure, got {other:?}"),
    }
    for p in [&free, &blocked] {
        assert!(
            !client.status(&p.endpoint()).await.unwrap().paused,
            "{} still paused",
            p.name
        );
        let ok = psql_pooler(p.port, &pki, APP_PASSWORD, "verify-full", "SELECT 1");
        assert!(ok.status.success(), "{}: {}", p.name, stderr(&ok));
    }
    let long = long.join().unwrap();
    assert!(long.status.success(), "{}", stderr(&long));

    // Without the blocker the same call pauses both, runs the step, resumes.
    let switched = switchover(
        &client,
        &[free.endpoint(), blocked.endpoint()],
        &options,
        || async { Ok::<_, String>("stepped") },
    )
    .await
    .unwrap();
    assert_eq!(switched.value, "stepped");
    assert_eq!(switched.paused_in.len(), 2);
    assert!(switched.resume_failures.is_empty());
    for p in [&free, &blocked] {
        assert!(!client.status(&p.endpoint()).await.unwrap().paused);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_stops_pgbouncer() {
    if !tools_present() {
        return;
    }
    let dir = workdir();
    let pki = Pki::new(dir.path());
    let pg = Postgres::primary(dir.path(), "a", PORTS.take(), &pki);
    let mut pooler = Pooler::start(
        "p1",
        dir.path(),
        &pki,
        &PORTS,
        &settings(pg.port, "transaction"),
    );
    let client = operator_client(&pki);
    pooler.wait_ready(&client).await;
    let bouncer = pooler.pgbouncer_pid().unwrap();
    // A running transaction is allowed to finish.
    let long = long_transaction(pooler.port, &pki, 2);
    wait_servers_active(&client, &pooler, 1).await;
    let status = tokio::task::block_in_place(|| pooler.terminate(Duration::from_secs(15)))
        .expect("supervisor exits after SIGTERM");
    assert!(status.success(), "{status}");
    let long = long.join().unwrap();
    assert!(
        long.status.success(),
        "transaction cut off by shutdown: {}",
        stderr(&long)
    );
    assert!(
        !std::path::Path::new(&format!("/proc/{bouncer}")).exists(),
        "pgbouncer left running"
    );
}

/// The admin console client on its own, with the supervisor's admin
/// password taken from the rendered auth file (root may read it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_console_commands_and_listings() {
    if !tools_present() {
        return;
    }
    let dir = workdir();
    let pki = Pki::new(dir.path());
    let pg = Postgres::primary(dir.path(), "a", PORTS.take(), &pki);
    let pooler = Pooler::start(
        "p1",
        dir.path(),
        &pki,
        &PORTS,
        &settings(pg.port, "transaction"),
    );
    let client = operator_client(&pki);
    pooler.wait_ready(&client).await;
    let run_dir = pooler.dir.join("run");
    let auth = std::fs::read_to_string(run_dir.join("users.txt")).unwrap();
    let password = auth
        .lines()
        .find_map(|l| l.strip_prefix("\"capstan_admin\" \""))
        .and_then(|l| l.strip_suffix('"'))
        .unwrap()
        .to_string();
    let admin = capstan::pooler::admin::AdminConsole::new(run_dir, pooler.port, password);

    let mut idle = pooler_support::interactive_psql(pooler.port, &pki);
    assert_eq!(idle.query("SELECT 'x'"), "x");
    let clients = admin.show_clients().await.unwrap();
    assert!(
        clients
            .iter()
            .any(|c| c.user == "app" && c.database == "appdb" && c.tls.starts_with("TLS")),
        "{clients:?}"
    );
    let servers = admin.show_servers().await.unwrap();
    assert!(
        servers
            .iter()
            .any(|s| s.user == "app" && s.port == pg.port && s.tls.starts_with("TLS")),
        "{servers:?}"
    );
    let pools = admin.show_pools().await.unwrap();
    assert!(
        pools
            .iter()
            .any(|p| p.database == "appdb" && p.pool_mode == "transaction"),
        "{pools:?}"
    );
    assert!(!admin.show_stats().await.unwrap().is_empty());

    // PAUSE and RESUME are idempotent; RECONNECT and RELOAD are accepted.
    admin.pause(Duration::from_secs(5)).await.unwrap();
    admin.pause(Duration::from_secs(5)).await.unwrap();
    admin.resume().await.unwrap();
    admin.resume().await.unwrap();
    admin.reconnect().await.unwrap();
    admin.reload().await.unwrap();
    assert_eq!(idle.query("SELECT 'y'"), "y");
}

/// As PID 1 (in its own PID namespace) the supervisor reaps orphans that
/// get reparented to it, and still sees its own child's exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn as_pid_1_reaps_orphans_and_still_restarts_its_child() {
    if !tools_present() {
        return;
    }
    if !std::process::Command::new("unshare")
        .args(["--pid", "--fork", "true"])
        .status()
        .is_ok_and(|s| s.success())
    {
        eprintln!("skipping: cannot create a PID namespace here (unshare --pid)");
        return;
    }
    let dir = workdir();
    let pki = Pki::new(dir.path());
    let pg = Postgres::primary(dir.path(), "a", PORTS.take(), &pki);
    // Leaves orphans behind, then becomes pgbouncer.
    let wrapper = dir.path().join("orphaning-pgbouncer");
    pooler_support::write_file(
        &wrapper,
        format!(
            "#!/bin/sh\nfor i in 1 2 3; do (sleep 0.3 &) ; done\nexec {} \"$@\"\n",
            pooler_support::PGBOUNCER
        )
        .as_bytes(),
        0o755,
        false,
    );
    let pooler = Pooler::start_with(
        "p1",
        dir.path(),
        &pki,
        &PORTS,
        &settings(pg.port, "transaction"),
        &["unshare", "--pid", "--fork", "--kill-child=SIGTERM"],
        wrapper.to_str().unwrap(),
    );
    let client = operator_client(&pki);
    pooler.wait_ready(&client).await;
    let supervisor = pooler.pid().expect("supervisor under unshare");

    let first = pooler.pgbouncer_pid().expect("pgbouncer runs");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_until("pgbouncer to be restarted", Duration::from_secs(20), || {
        pooler.pgbouncer_pid().is_some_and(|p| p != first)
    });
    pooler.wait_ready(&client).await;
    assert_eq!(client.status(&pooler.endpoint()).await.unwrap().restarts, 1);
    // The sleeps (orphans of both starts) are gone and nothing is a zombie.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let zombies = pooler_support::zombies_of(supervisor);
    assert!(zombies.is_empty(), "zombies left under PID 1: {zombies:?}");
    let ok = psql_pooler(pooler.port, &pki, APP_PASSWORD, "verify-full", "SELECT 1");
    assert!(ok.status.success(), "{}", stderr(&ok));
}

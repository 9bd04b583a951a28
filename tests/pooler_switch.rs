//! Zero-error switchover through `capstan pooler`: pgbench runs through the
//! pooler (transaction mode, TLS both hops) while the switchover primitive
//! pauses the pooler, the replica is promoted, the backend is repointed and
//! the pooler resumes — in both directions. pgbench must report no failed
//! transaction and no aborted client.
//!
//! Repointing without Kubernetes Services, two ways:
//! 1. as in a cluster: PgBouncer's backend is a stand-in for the `-rw`
//!    Service (a TCP forwarder); the step moves it to the new primary and
//!    the primitive's RECONNECT makes new server connections follow it;
//! 2. through the settings document: the step writes a new backend port
//!    into pooler.json and waits until the supervisor has RELOADed it.

mod pooler_support;

use std::time::{Duration, Instant};

use capstan::pooler::client::PoolerClient;
use capstan::pooler::switchover::{SwitchoverOptions, switchover};
use pooler_support::postgres::Postgres;
use pooler_support::service::ServiceProxy;
use pooler_support::{
    APP_PASSWORD, Pooler, Ports, operator_client, parse_pgbench, pgbench, pki::Pki, psql_pooler,
    run_ok, settings, stderr, stdout, tools_present, workdir,
};

static PORTS: Ports = Ports::new(23000, 500);

/// Stops `old` cleanly, waits until `new` replayed everything, promotes it.
fn promote(old: &mut Postgres, new: &Postgres) {
    old.stop_fast();
    let lsn = old.last_checkpoint();
    new.wait_replayed(&lsn);
    new.promote();
}

/// Port of the PostgreSQL that serves a new client of the pooler.
fn served_by(pooler: &Pooler, pki: &Pki) -> String {
    let out = psql_pooler(
        pooler.port,
        pki,
        APP_PASSWORD,
        "verify-full",
        "SELECT inet_server_port()",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out)
}

async fn wait_backend(client: &PoolerClient, pooler: &Pooler, port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = client.status(&pooler.endpoint()).await.unwrap();
        if r.backend_port == Some(port) && r.last_error.is_none() && r.reloads > 0 {
            return;
        }
        assert!(Instant::now() < deadline, "pooler did not reload: {r:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switchover_under_pgbench_has_no_client_errors() {
    if !tools_present() {
        return;
    }
    let dir = workdir();
    let pki = Pki::new(dir.path());
    let mut a = Postgres::primary(dir.path(), "a", PORTS.take(), &pki);
    let mut b = Postgres::replica(dir.path(), "b", PORTS.take(), &a);
    let service = ServiceProxy::start(PORTS.take(), a.port);
    let mut s = settings(service.port, "transaction");
    let pooler = Pooler::start("p1", dir.path(), &pki, &PORTS, &s);
    let client = operator_client(&pki);
    pooler.wait_ready(&client).await;
    run_ok(
        pgbench(a.port, &pki, &["-i", "-s", "2", "-q"]),
        "pgbench -i",
    );

    let bench = {
        let mut c = pgbench(pooler.port, &pki, &["-c", "8", "-j", "2", "-T", "30", "-n"]);
        std::thread::spawn(move || c.output().unwrap())
    };
    let options = SwitchoverOptions {
        pause_timeout: Duration::from_secs(10),
        max_hold: Duration::from_secs(60),
    };

    // a → b, repointing the Service stand-in; RECONNECT follows it.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let first = switchover(&client, &[pooler.endpoint()], &options, || async {
        tokio::task::block_in_place(|| {
            promote(&mut a, &b);
            service.set_target(b.port);
        });
        Ok::<_, String>(())
    })
    .await
    .unwrap();
    assert!(first.resume_failures.is_empty());
    assert_eq!(served_by(&pooler, &pki), b.port.to_string());
    tokio::task::block_in_place(|| a.rejoin(&b));

    // b → a, repointing through the settings document and RELOAD.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let second = switchover(&client, &[pooler.endpoint()], &options, || async {
        tokio::task::block_in_place(|| promote(&mut b, &a));
        s.backend_port = a.port;
        pooler.write_settings(&s);
        wait_backend(&client, &pooler, a.port).await;
        Ok::<_, String>(())
    })
    .await
    .unwrap();
    assert!(second.resume_failures.is_empty());
    assert_eq!(served_by(&pooler, &pki), a.port.to_string());
    tokio::task::block_in_place(|| b.rejoin(&a));

    let out = tokio::task::block_in_place(|| bench.join().unwrap());
    let result = parse_pgbench(&out);
    eprintln!(
        "held: {:?} and {:?}; pgbench: {} transactions, {} failed, tps {:.0}",
        first.held, second.held, result.transactions, result.failed, result.tps
    );
    assert!(result.success, "pgbench failed:\n{}", result.output);
    assert!(
        !result.aborted,
        "pgbench clients aborted:\n{}",
        result.output
    );
    assert_eq!(result.failed, 0, "{}", result.output);
    assert!(result.transactions > 0, "{}", result.output);

    // Both promotions really happened: a is primary again on timeline 3,
    // b follows it.
    assert_eq!(a.sql("postgres", "SELECT pg_is_in_recovery()"), "f");
    assert_eq!(b.sql("postgres", "SELECT pg_is_in_recovery()"), "t");
    let timeline = a.sql(
        "postgres",
        "SELECT timeline_id FROM pg_control_checkpoint()",
    );
    assert!(timeline.parse::<u32>().unwrap() >= 2, "timeline {timeline}");
}

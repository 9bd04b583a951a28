//! A Capstan upgrade on a real instance manager (`POST /binary`, what the
//! operator sends when it runs a new binary): the manager checks the binary,
//! installs it over the one it runs from and re-executes as the same
//! process. PostgreSQL keeps its postmaster (PID and start time), its
//! client connections and its log stream; the primary keeps its lease
//! without a fence; a clean shutdown afterwards still stops the adopted
//! postmaster. Bad binaries are refused and change nothing.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use capstan::agents::client::{AgentClient, ClientError, Endpoint};
use capstan::contract::instance::{InstanceReport, Role};
use capstan::contract::settings::FencingSettings;
use hyper::StatusCode;
use hyper::body::Bytes;
use support::*;

static PORTS: Ports = Ports::new(25800, 25900);

const LONG: Duration = Duration::from_secs(120);

fn holds_lease(r: &InstanceReport) -> bool {
    r.lease.as_ref().is_some_and(|l| l.held && !l.fenced)
}

fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    capstan::agents::binary::hex(&sha2::Sha256::digest(bytes))
}

fn status_of(e: &ClientError) -> Option<StatusCode> {
    match e {
        ClientError::Status { status, .. } => Some(*status),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_manager_binary_is_taken_in_place_and_postgres_keeps_running() {
    let Some(bin) = pg15_bin() else {
        eprintln!("skipping: PostgreSQL 15 is not installed in /usr/lib/postgresql/15/bin");
        return;
    };
    // The manager runs from a binary volume of its own, as in a pod.
    let volume = tempfile::Builder::new().prefix("capbin").tempdir().unwrap();
    let running = volume.path().join("capstan");
    let original = std::fs::read(manager_binary()).unwrap();
    std::fs::write(&running, &original).unwrap();
    std::fs::set_permissions(&running, std::fs::Permissions::from_mode(0o755)).unwrap();
    chown_tree(volume.path());

    let pki = Arc::new(Pki::new());
    let mut s = settings(15, PORTS.take(), &["db-1"]);
    s.fencing = Some(FencingSettings {
        lease_name: "db-primary".into(),
        lease_duration_ms: 4000,
        renew_interval_ms: 1000,
        fence_after_ms: 2000,
    });
    let leases = LeaseDir::new();
    let mut node = Instance::new("db-1", &PORTS, &bin, pki.clone(), &s);
    node.lease_dir = Some(leases.path().to_path_buf());
    node.binary = Some(running.clone());
    node.env.push((
        "CAPSTAN_REPLACEABLE_BINARY".into(),
        running.display().to_string(),
    ));
    node.set_authority("db-1");
    node.start();
    let before = node
        .wait_status("a primary holding the lease", LONG, |r| {
            r.ready && r.role == Role::Primary && holds_lease(r)
        })
        .await;
    let old_agent = before.agent.clone().expect("the agent reports its build");
    assert!(old_agent.replaceable, "{old_agent:?}");
    let manager = node.manager_pid().unwrap();
    let postmaster = node.postmaster_pid().unwrap();
    let conn = node.sql_retry("app", LONG).await;
    conn.batch_execute("CREATE TABLE t (v int); INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    let started: String = conn
        .query_one("SELECT pg_postmaster_start_time()::text", &[])
        .await
        .unwrap()
        .get(0);

    let client = AgentClient::new(Arc::new(pki.client_config(Some(&pki.operator))));
    let ep = Endpoint {
        name: "db-1".into(),
        host: "127.0.0.1".into(),
        port: node.api_port,
        server_name: "localhost".into(),
    };
    // The same program with bytes appended: it runs, with another checksum.
    let mut new = original.clone();
    new.extend_from_slice(b"\ncapstan-reexec-test\n");
    let new_sha = sha256(&new);

    // A body that is not what the checksum names is not installed.
    let wrong = client
        .replace_binary(&ep, &sha256(b"other"), Bytes::from(new.clone()), LONG)
        .await
        .unwrap_err();
    assert_eq!(status_of(&wrong), Some(StatusCode::BAD_REQUEST), "{wrong}");
    // Nor is one that does not run here.
    let junk = b"#!/nonexistent/interpreter\n".to_vec();
    let refused = client
        .replace_binary(&ep, &sha256(&junk), Bytes::from(junk), LONG)
        .await
        .unwrap_err();
    assert_eq!(
        status_of(&refused),
        Some(StatusCode::UNPROCESSABLE_ENTITY),
        "{refused}"
    );
    assert_eq!(
        std::fs::read(&running).unwrap(),
        original,
        "nothing replaced"
    );
    assert!(!volume.path().join("capstan.next").exists());

    let asked = Instant::now();
    client
        .replace_binary(&ep, &new_sha, Bytes::from(new.clone()), LONG)
        .await
        .unwrap();
    let after = node
        .wait_status("the new binary, ready, holding the lease", LONG, |r| {
            r.agent.as_ref().and_then(|a| a.sha256.as_deref()) == Some(new_sha.as_str())
                && r.ready
                && holds_lease(r)
        })
        .await;
    eprintln!(
        "new binary reported {} ms after the request",
        asked.elapsed().as_millis()
    );
    assert_eq!(std::fs::read(&running).unwrap(), new);
    assert!(
        node.log().contains("re-executing as the new agent binary"),
        "the manager re-executed"
    );
    assert!(node.log().contains("adopted the running postgres"));
    // The same process (exec keeps the PID), the same postmaster.
    assert_eq!(node.manager_pid(), Some(manager));
    assert!(Path::new(&format!("/proc/{manager}")).exists());
    assert_eq!(node.postmaster_pid(), Some(postmaster));
    assert_eq!(after.postgres_restarts, 0);
    assert!(!after.lease.as_ref().unwrap().fenced);
    // Connections opened before go on; the server never restarted.
    let now: String = conn
        .query_one("SELECT pg_postmaster_start_time()::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(now, started);
    conn.batch_execute("INSERT INTO t VALUES (2)")
        .await
        .unwrap();
    // PostgreSQL's log still reaches the manager's, through the adopted pipe.
    let seen = node.log().len();
    conn.batch_execute("SELECT pg_reload_conf()").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !node.log()[seen..].contains("received SIGHUP") {
        assert!(
            Instant::now() < deadline,
            "no postgres log line after the re-exec:\n{}",
            node.log_tail(40)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The lease is renewed by the new image: still held a while later.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let later = node.status().await.unwrap();
    assert!(holds_lease(&later), "{:?}", later.lease);
    drop(conn);
    // A clean shutdown stops the adopted postmaster, as any other.
    let status = node.terminate(Duration::from_secs(60));
    assert!(status.success(), "{status}");
    assert!(
        node.postgres_processes().is_empty(),
        "postgres stopped with the manager"
    );
    assert!(node.log().contains("postgres stopped"));
}

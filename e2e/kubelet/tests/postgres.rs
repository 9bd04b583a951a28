//! A real PostgreSQL 15 in a pod sandbox, as Capstan's instance pods run it:
//! uid 999 (mapped to the host's postgres user), data on a claim, socket
//! dir on an emptyDir, listening on the pod IP, reachable through a Service
//! by name, data surviving a pod replacement.

mod common;

use std::path::Path;
use std::process::Command;

use capstan_e2e_kubelet::ServiceProxy;
use common::*;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Service};
use serde_json::json;

const BIN: &str = "/usr/lib/postgresql/15/bin";

fn db_pod() -> Pod {
    let script = r#"set -e
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  initdb -D "$PGDATA" --auth=trust -U postgres >/dev/null
  echo "host all all 127.0.0.0/8 trust" >> "$PGDATA/pg_hba.conf"
fi
exec postgres -D "$PGDATA" -c listen_addresses="$POD_IP" -c unix_socket_directories=/var/run/postgresql"#;
    pod(json!({
        "metadata": {"name": "db-1", "labels": {"cluster": "db", "role": "primary"}},
        "spec": {
            "securityContext": {"runAsUser": 999, "runAsGroup": 999, "fsGroup": 999, "runAsNonRoot": true},
            "containers": [{
                "name": "postgres",
                "image": "docker.io/library/postgres:15-bookworm",
                "command": ["sh", "-c", script],
                "env": [
                    {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                    {"name": "PGDATA", "value": "/var/lib/postgresql/data/pgdata"}
                ],
                "ports": [{"name": "postgres", "containerPort": 5432}],
                "readinessProbe": {"exec": {"command": ["pg_isready", "-q", "-h", "/var/run/postgresql"]}, "periodSeconds": 1},
                "volumeMounts": [
                    {"name": "data", "mountPath": "/var/lib/postgresql/data"},
                    {"name": "run", "mountPath": "/var/run/postgresql"},
                    {"name": "tmp", "mountPath": "/tmp"}
                ]
            }],
            "volumes": [
                {"name": "data", "persistentVolumeClaim": {"claimName": "db-1"}},
                {"name": "run", "emptyDir": {}},
                {"name": "tmp", "emptyDir": {}}
            ]
        }
    }))
}

fn psql(host: &str, sql: &str) -> String {
    let out = Command::new(format!("{BIN}/psql"))
        .args([
            "-h", host, "-p", "5432", "-U", "postgres", "-d", "postgres", "-At", "-c", sql,
        ])
        .env("PGCONNECT_TIMEOUT", "5")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "psql failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn observed(node: &Node, pods: &[&Pod]) -> Vec<Pod> {
    pods.iter()
        .map(|p| {
            let mut p = (*p).clone();
            p.status = node.rt.status("ns", p.metadata.name.as_deref().unwrap());
            p
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_runs_in_a_pod_behind_a_service() {
    if !privileged() {
        return;
    }
    if !Path::new(BIN).join("postgres").exists() {
        eprintln!("skipping: PostgreSQL 15 is not installed at {BIN}");
        return;
    }
    let mut node = node();
    if node.rt.config().ids.default_uid == 0 {
        eprintln!("skipping: no host user `postgres` to run PostgreSQL as");
        return;
    }
    let claim: PersistentVolumeClaim = serde_json::from_value(json!({
        "metadata": {"name": "db-1", "namespace": "ns"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}
    }))
    .unwrap();
    node.objects.put_claim(claim);
    let service: Service = serde_json::from_value(json!({
        "metadata": {"name": "db-rw", "namespace": "ns", "uid": "svc-db-rw"},
        "spec": {"selector": {"cluster": "db", "role": "primary"}, "ports": [{"port": 5432, "targetPort": "postgres"}]}
    }))
    .unwrap();
    let cfg = node.rt.config().clone();
    let mut proxy = ServiceProxy::new(cfg.service_cidr, &cfg.cluster_domain, &cfg.node_name);

    let db = db_pod();
    node.rt.sync_pod(db.clone());
    let status = wait_status(&node, "ns", "db-1", "PostgreSQL ready", 60, ready).await;
    let pod_ip = status.pod_ip.unwrap();
    let client = pod(json!({
        "metadata": {"name": "client"},
        "spec": {"containers": [{"name": "psql", "image": "postgres:15", "command": ["sh", "-c",
            "until out=$(psql -h db-rw.ns.svc -U postgres -Atc 'select host(inet_client_addr())' 2>&1); do sleep 0.2; done; echo \"client=$out\"; exec sleep 3600"]}]}
    }));
    node.rt.sync_pod(client.clone());
    let client_status = wait_status(&node, "ns", "client", "client running", 30, |s| {
        phase(s) == "Running"
    })
    .await;
    let update = proxy.apply(
        [&service],
        &observed(&node, &[&db, &client]).iter().collect::<Vec<_>>(),
    );
    node.rt.set_dns(update.dns);
    let svc_ip = node
        .rt
        .resolver()
        .resolve("db-rw.ns.svc")
        .unwrap()
        .to_string();

    // From the host, through the Service: the server is the pod.
    assert_eq!(psql(&svc_ip, "select host(inet_server_addr())"), pod_ip);
    // The data directory belongs to the mapped postgres user.
    assert_eq!(
        psql(&svc_ip, "select current_setting('data_directory')"),
        "/var/lib/postgresql/data/pgdata"
    );
    psql(
        &svc_ip,
        "create table kept (v text); insert into kept values ('survives')",
    );

    // From another pod, by name; with nftables the server sees the client pod's address.
    let logs = eventually("the client pod's query", 30, || {
        node.rt
            .logs("ns", "client", "psql", false)
            .ok()
            .filter(|l| l.contains("client="))
    })
    .await;
    if node.rt.partitions_supported() {
        assert_eq!(
            logs.trim(),
            format!("client={}", client_status.pod_ip.unwrap()),
            "{logs}"
        );
    }

    // Replace the pod (graceful stop: PostgreSQL's smart shutdown exits 0); data stays.
    node.rt.sync_pod(deleted(db, 30));
    wait_terminated(&mut node, "db-1", 60).await;
    let db = db_pod();
    node.rt.sync_pod(db.clone());
    wait_status(&node, "ns", "db-1", "PostgreSQL ready again", 60, ready).await;
    let update = proxy.apply(
        [&service],
        &observed(&node, &[&db, &client]).iter().collect::<Vec<_>>(),
    );
    node.rt.set_dns(update.dns);
    assert_eq!(psql(&svc_ip, "select v from kept"), "survives");
}

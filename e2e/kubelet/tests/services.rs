//! Service proxy and names, driven by pods the runtime runs (no API server).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use capstan_e2e_kubelet::ServiceProxy;
use common::*;
use k8s_openapi::api::core::v1::{Pod, Service};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn web(name: &str, role: &str) -> Pod {
    pod(json!({
        "metadata": {"name": name, "labels": {"app": "db", "role": role}},
        "spec": {"containers": [{
            "name": "web", "image": "debian",
            "command": ["sh", "-c", "echo $POD_NAME > /srv/index.html && touch /srv/ready && cd /srv && exec python3 -m http.server --bind $POD_IP 8080"],
            "env": [
                {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}
            ],
            "ports": [{"name": "http", "containerPort": 8080}],
            "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"}, "periodSeconds": 1, "failureThreshold": 1},
            "volumeMounts": [{"name": "srv", "mountPath": "/srv"}]
        }], "volumes": [{"name": "srv", "emptyDir": {}}]}
    }))
}

fn service(name: &str, selector: serde_json::Value, extra: serde_json::Value) -> Service {
    let mut v = json!({
        "metadata": {"name": name, "namespace": "ns", "uid": format!("svc-{name}")},
        "spec": {"selector": selector, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}
    });
    if let (Some(spec), Some(extra)) = (v["spec"].as_object_mut(), extra.as_object()) {
        spec.extend(extra.clone());
    }
    serde_json::from_value(v).unwrap()
}

/// The pod objects as the API would show them: spec plus the node's status.
fn observed(node: &Node, pods: &[Pod]) -> Vec<Pod> {
    pods.iter()
        .map(|p| {
            let mut p = p.clone();
            p.status = node.rt.status("ns", p.metadata.name.as_deref().unwrap());
            p
        })
        .collect()
}

fn sync(node: &Node, proxy: &mut ServiceProxy, services: &[Service], pods: &[Pod]) {
    let pods = observed(node, pods);
    let refs: Vec<&Pod> = pods.iter().collect();
    let update = proxy.apply(services.iter(), &refs);
    node.rt.set_dns(update.dns);
}

async fn get(addr: SocketAddr) -> std::io::Result<String> {
    let mut s = tokio::time::timeout(Duration::from_secs(3), TcpStream::connect(addr)).await??;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    Ok(out)
}

#[tokio::test(flavor = "multi_thread")]
async fn proxy_follows_ready_endpoints_and_names_resolve() {
    if !privileged() {
        return;
    }
    let node = node();
    let cfg = node.rt.config().clone();
    let mut proxy = ServiceProxy::new(cfg.service_cidr, &cfg.cluster_domain, &cfg.node_name);
    let mut pods = vec![web("db-1", "primary"), web("db-2", "replica")];
    for p in &pods {
        node.rt.sync_pod(p.clone());
    }
    wait_status(&node, "ns", "db-1", "db-1 Ready", 30, ready).await;
    wait_status(&node, "ns", "db-2", "db-2 Ready", 30, ready).await;
    let mut services = vec![service("db-rw", json!({"role": "primary"}), json!({}))];
    sync(&node, &mut proxy, &services, &pods);

    let resolver = node.rt.resolver();
    let rw = resolver
        .socket_addr("db-rw.ns.svc", 80)
        .expect("db-rw resolves");
    assert!(cfg.service_cidr.contains(match rw.ip() {
        std::net::IpAddr::V4(v4) => v4,
        _ => unreachable!(),
    }));
    assert_eq!(
        resolver.resolve("db-rw.ns.svc.cluster.local"),
        Some(rw.ip())
    );
    assert!(get(rw).await.unwrap().contains("db-1"));

    // A pod resolves the name through its /etc/hosts, also for Services
    // created after it started.
    let resolver_pod = pod(json!({
        "metadata": {"name": "client"},
        "spec": {"containers": [{"name": "c", "image": "debian", "command": ["sh", "-c",
            "getent hosts db-rw db-rw.ns db-rw.ns.svc db-rw.ns.svc.cluster.local; echo first-done; until getent hosts late.ns.svc; do sleep 0.1; done; echo late-resolved"]}]}
    }));
    node.rt.sync_pod(resolver_pod.clone());
    let logs = eventually("getent output", 20, || {
        node.rt
            .logs("ns", "client", "c", false)
            .ok()
            .filter(|l| l.contains("first-done"))
    })
    .await;
    assert_eq!(logs.matches(&rw.ip().to_string()).count(), 4, "{logs}");
    services.push(service("late", json!({"role": "replica"}), json!({})));
    pods.push(resolver_pod);
    sync(&node, &mut proxy, &services, &pods);
    eventually("the late Service name inside the pod", 20, || {
        node.rt
            .logs("ns", "client", "c", false)
            .ok()
            .filter(|l| l.contains("late-resolved"))
    })
    .await;

    // Relabel: new connections follow the primary role.
    pods[0]
        .metadata
        .labels
        .as_mut()
        .unwrap()
        .insert("role".into(), "replica".into());
    pods[1]
        .metadata
        .labels
        .as_mut()
        .unwrap()
        .insert("role".into(), "primary".into());
    sync(&node, &mut proxy, &services, &pods);
    assert!(get(rw).await.unwrap().contains("db-2"));

    // The only endpoint turns unready: nothing listens, connections are refused.
    let marker = node
        .rt
        .pod_dir("ns", "db-2")
        .unwrap()
        .join("volumes/srv/ready");
    std::fs::remove_file(&marker).unwrap();
    wait_status(&node, "ns", "db-2", "db-2 not Ready", 20, |s| !ready(s)).await;
    sync(&node, &mut proxy, &services, &pods);
    let err = get(rw).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");

    // publishNotReadyAddresses includes it anyway.
    services.push(service(
        "db-any",
        json!({"app": "db"}),
        json!({"publishNotReadyAddresses": true}),
    ));
    sync(&node, &mut proxy, &services, &pods);
    let any = resolver.socket_addr("db-any.ns", 80).unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..4 {
        let body = get(any).await.unwrap();
        seen.insert(if body.contains("db-1") {
            "db-1"
        } else {
            "db-2"
        });
    }
    assert_eq!(seen.len(), 2, "round robin over ready and not-ready pods");

    // Back to ready: served again.
    std::fs::write(&marker, "").unwrap();
    wait_status(&node, "ns", "db-2", "db-2 Ready again", 20, ready).await;
    sync(&node, &mut proxy, &services, &pods);
    assert!(get(rw).await.unwrap().contains("db-2"));
}

#[tokio::test(flavor = "multi_thread")]
async fn headless_services_resolve_to_pod_ips() {
    if !privileged() {
        return;
    }
    let node = node();
    let cfg = node.rt.config().clone();
    let mut proxy = ServiceProxy::new(cfg.service_cidr, &cfg.cluster_domain, &cfg.node_name);
    let mut p = web("db-1", "primary");
    p.spec.as_mut().unwrap().hostname = Some("db-1".into());
    p.spec.as_mut().unwrap().subdomain = Some("db".into());
    node.rt.sync_pod(p.clone());
    let status = wait_status(&node, "ns", "db-1", "Ready", 30, ready).await;
    let services = vec![service(
        "db",
        json!({"app": "db"}),
        json!({"clusterIP": "None"}),
    )];
    sync(&node, &mut proxy, &services, std::slice::from_ref(&p));
    let ip: std::net::IpAddr = status.pod_ip.unwrap().parse().unwrap();
    let resolver = node.rt.resolver();
    assert_eq!(resolver.resolve("db.ns.svc"), Some(ip));
    assert_eq!(resolver.resolve("db-1.db.ns.svc.cluster.local"), Some(ip));
}

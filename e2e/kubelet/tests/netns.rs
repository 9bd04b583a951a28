//! Pods and Services on non-loopback ranges (10.244.0.0/24 pods, 10.96.0.0/24
//! Services), as the e2e harness runs them for a real API server: inside a
//! network namespace of the test's own thread whose ranges are made local by
//! AnyIP routes (`ip route add local <range> dev lo`). Pod addresses, probes
//! from the node address, pod source addresses, a Service on the clusterIP an
//! API server assigned, and partitions (including a host process whose
//! connection got the pod's address as source).

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use capstan_e2e_kubelet::ServiceProxy;
use common::*;
use k8s_openapi::api::core::v1::{Pod, Service};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Moves this thread into a new network namespace with the ranges local.
fn enter_netns() -> Result<(), String> {
    // SAFETY: unshare has no memory-safety preconditions; CLONE_NEWNET only
    // changes this thread's namespace, and threads it starts inherit it.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(format!(
            "unshare(CLONE_NEWNET): {}",
            std::io::Error::last_os_error()
        ));
    }
    for args in [
        &["link", "set", "lo", "up"][..],
        &["route", "add", "local", "10.244.0.0/16", "dev", "lo"],
        &["route", "add", "local", "10.96.0.0/16", "dev", "lo"],
    ] {
        let out = Command::new("ip")
            .args(args)
            .output()
            .map_err(|e| format!("ip: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "ip {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    Ok(())
}

/// A host listener recording the peers of its connections.
async fn recorder(addr: &str) -> Arc<Mutex<Vec<IpAddr>>> {
    let listener = TcpListener::bind(addr).await.unwrap();
    let peers: Arc<Mutex<Vec<IpAddr>>> = Arc::default();
    let seen = peers.clone();
    tokio::spawn(async move {
        loop {
            if let Ok((_stream, peer)) = listener.accept().await {
                seen.lock().unwrap().push(peer.ip());
            }
        }
    });
    peers
}

async fn get(addr: SocketAddr) -> std::io::Result<String> {
    let mut s = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr)).await??;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").await?;
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(2), s.read_to_string(&mut out)).await??;
    Ok(out)
}

/// `label ok` / `label fail` lines of the pod's log since `from`.
fn count(log: &str, line: &str) -> usize {
    log.lines().filter(|l| *l == line).count()
}

#[test]
fn pods_and_services_on_non_loopback_ranges() {
    if !privileged() || !nft_available() {
        return;
    }
    if let Err(why) = enter_netns() {
        eprintln!("skipping: no network namespace: {why}");
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(scenario());
}

async fn scenario() {
    let node = node_with(|cfg| {
        cfg.pod_cidr = "10.244.0.0/24".parse().unwrap();
        cfg.service_cidr = "10.96.0.0/24".parse().unwrap();
        cfg.node_ip = Ipv4Addr::new(10, 244, 0, 1);
    });
    // The API server listens on the node address; another host service elsewhere.
    let api_peers = recorder("10.244.0.1:26101").await;
    let other_peers = recorder("10.96.0.200:26102").await;
    let caller = r#"echo hello > /srv/index.html; cd /srv && python3 -m http.server --bind $POD_IP 8080 &
call() { if timeout 1 bash -c "exec 3<>/dev/tcp/$2/$3"; then echo "$1 ok"; else echo "$1 fail"; fi; }
while :; do
  call api 10.244.0.1 26101; call other 10.96.0.200 26102; call self $POD_IP 8080
  sleep 0.2
done"#;
    let pod: Pod = pod(json!({
        "metadata": {"name": "web", "labels": {"app": "web"}},
        "spec": {"containers": [{
            "name": "c", "image": "debian", "command": ["bash", "-c", caller],
            "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
            "ports": [{"name": "http", "containerPort": 8080}],
            "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1, "failureThreshold": 1},
            "volumeMounts": [{"name": "srv", "mountPath": "/srv"}]
        }], "volumes": [{"name": "srv", "emptyDir": {}}]}
    }));
    node.rt.sync_pod(pod.clone());
    let status = wait_status(
        &node,
        "ns",
        "web",
        "Ready (probed from the node address)",
        30,
        ready,
    )
    .await;
    let pod_ip: IpAddr = status.pod_ip.clone().unwrap().parse().unwrap();
    assert!(pod_ip.to_string().starts_with("10.244.0."), "{pod_ip}");
    assert_eq!(status.host_ip.as_deref(), Some("10.244.0.1"));
    // Connections from the pod carry its address (the kernel would pick the
    // destination itself for an AnyIP address).
    for peers in [&api_peers, &other_peers] {
        eventually("a call from the pod's address", 10, || {
            peers.lock().unwrap().contains(&pod_ip).then_some(())
        })
        .await;
        assert!(peers.lock().unwrap().iter().all(|p| *p == pod_ip));
    }
    let web = SocketAddr::new(pod_ip, 8080);
    assert!(get(web).await.unwrap().contains("hello"));

    // A Service whose clusterIP an API server assigned from our range.
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "ns", "uid": "svc-web"},
        "spec": {"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"], "selector": {"app": "web"},
                 "ports": [{"port": 80, "targetPort": "http"}]}
    }))
    .unwrap();
    let cfg = node.rt.config().clone();
    let mut proxy = ServiceProxy::new(cfg.service_cidr, &cfg.cluster_domain, &cfg.node_name);
    let mut observed = pod.clone();
    observed.status = Some(status);
    let update = proxy.apply([&svc], &[&observed]);
    assert!(
        update.assign_cluster_ip.is_empty(),
        "{:?}",
        update.assign_cluster_ip
    );
    node.rt.set_dns(update.dns);
    let addr = node.rt.resolver().socket_addr("web.ns.svc", 80).unwrap();
    assert_eq!(addr, "10.96.0.10:80".parse().unwrap());
    let body = eventually_async("an answer through the Service", 10, || async {
        get(addr).await.ok()
    })
    .await;
    assert!(body.contains("hello"), "{body}");

    // Partitioned: the pod reaches only itself, only the node address reaches it.
    node.rt.partition_pod("ns", "web").unwrap();
    let before = node.rt.logs("ns", "web", "c", false).unwrap().len();
    let (api_calls, other_calls) = (
        api_peers.lock().unwrap().len(),
        other_peers.lock().unwrap().len(),
    );
    // Each round of the pod's loop calls the API, the other server, then
    // itself: wait for two whole rounds.
    let log = eventually("calls from the pod to fail", 20, || {
        let log = node.rt.logs("ns", "web", "c", false).ok()?;
        let since = log[before..].to_string();
        let calls =
            |what| count(&since, &format!("{what} ok")) + count(&since, &format!("{what} fail"));
        (count(&since, "api fail") >= 2 && count(&since, "other fail") >= 2 && calls("self") >= 2)
            .then_some(since)
    })
    .await;
    assert!(
        count(&log, "self ok") >= 2,
        "the pod still reaches itself:\n{log}"
    );
    assert_eq!(count(&log, "self fail"), 0, "{log}");
    assert_eq!(
        api_peers.lock().unwrap().len(),
        api_calls,
        "no call reached the API server"
    );
    assert_eq!(other_peers.lock().unwrap().len(), other_calls);
    // This host connection gets the pod's own address as source.
    assert!(
        get(web).await.is_err(),
        "the pod must be unreachable from the host"
    );
    assert!(get(addr).await.is_err(), "and through its Service");
    assert!(
        ready(&node.rt.status("ns", "web").unwrap()),
        "probes still pass"
    );

    node.rt.heal_pod("ns", "web").unwrap();
    eventually("calls to resume", 20, || {
        (api_peers.lock().unwrap().len() > api_calls).then_some(())
    })
    .await;
    assert!(get(web).await.unwrap().contains("hello"));
    assert!(get(addr).await.unwrap().contains("hello"));
}

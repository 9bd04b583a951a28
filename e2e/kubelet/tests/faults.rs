//! Fault hooks: killing processes, freezing a pod, partitioning it.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use capstan_e2e_kubelet::Signal;
use capstan_e2e_kubelet::sys::procs;
use common::*;
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};

fn web_pod(name: &str) -> k8s_openapi::api::core::v1::Pod {
    pod(json!({
        "metadata": {"name": name},
        "spec": {"containers": [{
            "name": "web", "image": "debian",
            "command": ["sh", "-c", "cd /srv && exec python3 -m http.server --bind $POD_IP 8080"],
            "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
            "readinessProbe": {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1, "timeoutSeconds": 1, "failureThreshold": 1},
            "volumeMounts": [{"name": "srv", "mountPath": "/srv"}]
        }], "volumes": [{"name": "srv", "emptyDir": {}}]}
    }))
}

#[tokio::test(flavor = "multi_thread")]
async fn freeze_makes_probes_fail_and_thaw_recovers() {
    if !privileged() {
        return;
    }
    let node = node();
    node.rt.sync_pod(web_pod("frozen"));
    wait_status(&node, "ns", "frozen", "Ready", 30, ready).await;
    let stopped = node.rt.freeze_pod("ns", "frozen").unwrap();
    assert!(stopped >= 1);
    assert!(node.rt.is_frozen("ns", "frozen"));
    for (pid, _, _) in node.rt.processes("ns", "frozen").unwrap() {
        eventually("the process to be stopped", 5, || {
            (procs::state(pid) == Some('T')).then_some(())
        })
        .await;
    }
    let status = wait_status(&node, "ns", "frozen", "not Ready while frozen", 20, |s| {
        !ready(s)
    })
    .await;
    assert_eq!(phase(&status), "Running");
    node.rt.thaw_pod("ns", "frozen").unwrap();
    wait_status(&node, "ns", "frozen", "Ready after thaw", 20, ready).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_hooks_signal_the_right_processes() {
    if !privileged() {
        return;
    }
    let node = node();
    node.rt.sync_pod(pod(json!({
        "metadata": {"name": "victim"},
        "spec": {"containers": [{"name": "main", "image": "debian",
            // Through a variable, so the shell's own command line does not match.
            "command": ["bash", "-c", "eval \"$S\""], "env": [{"name": "S", "value": "sleep 1001 & sleep 1002 & wait"}]}]}
    })));
    wait_status(&node, "ns", "victim", "Running", 20, |s| {
        phase(s) == "Running"
    })
    .await;
    eventually("both sleeps", 10, || {
        let cmds: Vec<String> = node
            .rt
            .processes("ns", "victim")
            .ok()?
            .into_iter()
            .map(|p| p.2)
            .collect();
        (cmds.iter().any(|c| c == "sleep 1001") && cmds.iter().any(|c| c == "sleep 1002"))
            .then_some(())
    })
    .await;
    let killed = node
        .rt
        .kill_matching("ns", "victim", "sleep 1001", Signal::KILL)
        .unwrap();
    assert_eq!(killed.len(), 1);
    eventually("sleep 1001 to be gone", 5, || {
        let cmds: Vec<String> = node
            .rt
            .processes("ns", "victim")
            .ok()?
            .into_iter()
            .map(|p| p.2)
            .collect();
        (!cmds.iter().any(|c| c == "sleep 1001") && cmds.iter().any(|c| c == "sleep 1002"))
            .then_some(())
    })
    .await;
    assert!(
        node.rt
            .kill_matching("ns", "victim", "no such thing", Signal::KILL)
            .is_err()
    );

    node.rt
        .kill_container("ns", "victim", "main", Signal::KILL)
        .unwrap();
    let status = wait_status(&node, "ns", "victim", "a restart", 20, |s| {
        s.container_statuses.as_ref().is_some_and(|c| {
            c[0].restart_count == 1 && c[0].state.as_ref().is_some_and(|st| st.running.is_some())
        })
    })
    .await;
    let last = status.container_statuses.unwrap()[0]
        .last_state
        .clone()
        .unwrap()
        .terminated
        .unwrap();
    assert_eq!(last.exit_code, 137);
    // The container's other processes died with it; the new run has fresh ones.
    eventually("a fresh pair of sleeps", 10, || {
        let procs = node.rt.processes("ns", "victim").ok()?;
        (procs
            .iter()
            .filter(|p| p.2.starts_with("sleep 100"))
            .count()
            == 2)
            .then_some(())
    })
    .await;
}

async fn connects(addr: SocketAddr) -> bool {
    matches!(
        tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(addr)).await,
        Ok(Ok(_))
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn partition_cuts_a_pod_off_and_heal_restores_it() {
    if !privileged() || !nft_available() {
        return;
    }
    let node = node();
    assert!(node.rt.partitions_supported());
    // A host service the pod keeps calling (stands in for the API server).
    let listener = TcpListener::bind("127.0.0.1:26101").await.unwrap();
    let peers: Arc<Mutex<Vec<IpAddr>>> = Arc::default();
    let seen = peers.clone();
    let server = tokio::spawn(async move {
        loop {
            if let Ok((_stream, peer)) = listener.accept().await {
                seen.lock().unwrap().push(peer.ip());
            }
        }
    });
    let caller = r#"cd /srv && python3 -m http.server --bind $POD_IP 8080 &
while :; do
  if timeout 1 bash -c 'exec 3<>/dev/tcp/127.0.0.1/26101'; then echo ok; else echo fail; fi
  sleep 0.2
done"#;
    node.rt.sync_pod(pod(json!({
        "metadata": {"name": "island"},
        "spec": {"containers": [{
            "name": "c", "image": "debian", "command": ["bash", "-c", caller],
            "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
            "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1, "failureThreshold": 1},
            "volumeMounts": [{"name": "srv", "mountPath": "/srv"}]
        }], "volumes": [{"name": "srv", "emptyDir": {}}]}
    })));
    let status = wait_status(&node, "ns", "island", "Ready", 30, ready).await;
    let pod_ip: IpAddr = status.pod_ip.unwrap().parse().unwrap();
    let web = SocketAddr::new(pod_ip, 8080);
    // The pod's connections carry its own address as source.
    eventually("a call from the pod's address", 10, || {
        peers.lock().unwrap().contains(&pod_ip).then_some(())
    })
    .await;
    assert!(connects(web).await);

    node.rt.partition_pod("ns", "island").unwrap();
    assert!(node.rt.is_partitioned("ns", "island"));
    let calls_before = peers.lock().unwrap().len();
    let log_before = node.rt.logs("ns", "island", "c", false).unwrap().len();
    eventually_async("calls from the pod to fail", 20, || async {
        let log = node.rt.logs("ns", "island", "c", false).ok()?;
        log[log_before..].matches("fail").nth(2).map(|_| ())
    })
    .await;
    assert_eq!(
        peers.lock().unwrap().len(),
        calls_before,
        "no call got through the partition"
    );
    assert!(
        !connects(web).await,
        "the pod must be unreachable from the host"
    );
    // The kubelet still reaches it (probes come from the node address).
    assert!(ready(&node.rt.status("ns", "island").unwrap()));

    node.rt.heal_pod("ns", "island").unwrap();
    assert!(!node.rt.is_partitioned("ns", "island"));
    eventually("calls to resume", 20, || {
        (peers.lock().unwrap().len() > calls_before).then_some(())
    })
    .await;
    assert!(connects(web).await);
    server.abort();
}

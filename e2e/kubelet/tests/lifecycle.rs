//! Container lifecycle: init containers, probes, restarts with back-off,
//! graceful deletion.

mod common;

use std::fs;
use std::time::Duration;

use common::*;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ContainerStatus, PodStatus, Secret};
use serde_json::json;

fn container<'a>(status: &'a PodStatus, name: &str) -> &'a ContainerStatus {
    status
        .container_statuses
        .iter()
        .flatten()
        .chain(status.init_container_statuses.iter().flatten())
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no status for container {name}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn init_containers_run_in_order_and_retry() {
    if !privileged() {
        return;
    }
    let node = node();
    let p = pod(json!({
        "metadata": {"name": "init"},
        "spec": {
            "initContainers": [
                {"name": "first", "image": "debian", "command": ["sh", "-c", "echo first >> /shared/order"],
                 "volumeMounts": [{"name": "work", "mountPath": "/shared"}]},
                // Fails once, then succeeds.
                {"name": "flaky", "image": "debian",
                 "command": ["sh", "-c", "echo flaky >> /shared/order; if [ -e /shared/flag ]; then exit 0; fi; touch /shared/flag; exit 7"],
                 "volumeMounts": [{"name": "work", "mountPath": "/shared"}]}
            ],
            "containers": [{"name": "main", "image": "debian",
                "command": ["sh", "-c", "cat /shared/order; echo main-started; exec sleep 3600"],
                "volumeMounts": [{"name": "work", "mountPath": "/shared"}]}],
            "volumes": [{"name": "work", "emptyDir": {}}]
        }
    }));
    node.rt.sync_pod(p);
    let status = wait_status(&node, "ns", "init", "Ready", 30, ready).await;
    assert!(condition(&status, "Initialized"));
    let flaky = container(&status, "flaky");
    assert_eq!(flaky.restart_count, 1);
    let last = flaky.last_state.clone().unwrap().terminated.unwrap();
    assert_eq!((last.exit_code, last.reason.as_deref()), (7, Some("Error")));
    assert_eq!(container(&status, "first").restart_count, 0);
    let logs = eventually("main's output", 10, || {
        node.rt
            .logs("ns", "init", "main", false)
            .ok()
            .filter(|l| l.contains("main-started"))
    })
    .await;
    assert!(
        logs.starts_with("first\nflaky\nflaky\nmain-started"),
        "{logs}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn failed_init_container_with_restart_never_fails_the_pod() {
    if !privileged() {
        return;
    }
    let node = node();
    node.rt.sync_pod(pod(json!({
        "metadata": {"name": "init-fails"},
        "spec": {
            "restartPolicy": "Never",
            "initContainers": [{"name": "boom", "image": "debian", "command": ["sh", "-c", "exit 3"]}],
            "containers": [{"name": "main", "image": "debian", "command": ["sleep", "3600"]}]
        }
    })));
    let status = wait_status(&node, "ns", "init-fails", "Failed", 20, |s| {
        phase(s) == "Failed"
    })
    .await;
    assert!(!condition(&status, "Initialized"));
    let boom = container(&status, "boom")
        .state
        .clone()
        .unwrap()
        .terminated
        .unwrap();
    assert_eq!(boom.exit_code, 3);
    let main = container(&status, "main").state.clone().unwrap();
    assert_eq!(
        main.waiting.unwrap().reason.as_deref(),
        Some("PodInitializing")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn probes_drive_readiness() {
    if !privileged() {
        return;
    }
    let node = node();
    let tls = tls_secret();
    if let Some(secret) = &tls {
        node.objects.put_secret(secret.clone());
    }
    let https_server = r#"
import http.server, os, ssl
srv = http.server.HTTPServer((os.environ['POD_IP'], 8443), http.server.SimpleHTTPRequestHandler)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain('/tls/tls.crt', '/tls/tls.key')
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
os.chdir('/srv')
srv.serve_forever()
"#;
    let pod_ip_env =
        json!([{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}]);
    let mut containers = vec![
        json!({
            "name": "web", "image": "debian",
            "command": ["sh", "-c", "touch /srv/ready && cd /srv && exec python3 -m http.server --bind $POD_IP 8080"],
            "env": pod_ip_env,
            "ports": [{"name": "http", "containerPort": 8080}],
            "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"}, "periodSeconds": 1, "failureThreshold": 1},
            "livenessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1, "failureThreshold": 3},
            "volumeMounts": [{"name": "srv", "mountPath": "/srv"}]
        }),
        json!({
            "name": "side", "image": "debian", "command": ["sleep", "3600"],
            "readinessProbe": {"exec": {"command": ["test", "-e", "/srv/ready"]}, "periodSeconds": 1, "failureThreshold": 1},
            "volumeMounts": [{"name": "srv", "mountPath": "/srv"}]
        }),
    ];
    let mut volumes = vec![json!({"name": "srv", "emptyDir": {}})];
    if tls.is_some() {
        containers.push(json!({
            "name": "tls", "image": "debian", "command": ["python3", "-c", https_server],
            "env": pod_ip_env,
            "readinessProbe": {"httpGet": {"path": "/ready", "port": 8443, "scheme": "HTTPS"}, "periodSeconds": 1, "failureThreshold": 1},
            "volumeMounts": [{"name": "srv", "mountPath": "/srv"}, {"name": "tls", "mountPath": "/tls"}]
        }));
        volumes.push(json!({"name": "tls", "secret": {"secretName": "tls"}}));
    }
    node.rt.sync_pod(pod(json!({
        "metadata": {"name": "probed"},
        "spec": {"containers": containers, "volumes": volumes}
    })));
    wait_status(&node, "ns", "probed", "Ready", 30, ready).await;
    let marker = node
        .rt
        .pod_dir("ns", "probed")
        .unwrap()
        .join("volumes/srv/ready");
    fs::remove_file(&marker).unwrap();
    let status = wait_status(&node, "ns", "probed", "not Ready", 20, |s| {
        s.container_statuses.iter().flatten().all(|c| !c.ready)
    })
    .await;
    assert!(!ready(&status));
    assert_eq!(phase(&status), "Running");
    // tcpSocket liveness keeps passing: nothing restarted.
    assert_eq!(container(&status, "web").restart_count, 0);
    fs::write(&marker, "").unwrap();
    wait_status(&node, "ns", "probed", "Ready again", 20, ready).await;
}

/// A self-signed certificate for the HTTPS probe, if openssl is installed.
fn tls_secret() -> Option<Secret> {
    let dir = tempfile::tempdir().unwrap();
    let (key, crt) = (dir.path().join("k"), dir.path().join("c"));
    let ok = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=probe",
            "-days",
            "1",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&crt)
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("openssl is not installed: the HTTPS probe part is skipped");
        return None;
    }
    let mut secret = Secret::default();
    secret.metadata.name = Some("tls".into());
    secret.metadata.namespace = Some("ns".into());
    secret.data = Some(
        [
            ("tls.key".to_string(), ByteString(fs::read(&key).unwrap())),
            ("tls.crt".to_string(), ByteString(fs::read(&crt).unwrap())),
        ]
        .into(),
    );
    Some(secret)
}

#[tokio::test(flavor = "multi_thread")]
async fn crashing_container_restarts_with_backoff() {
    if !privileged() {
        return;
    }
    let node = node();
    node.rt.sync_pod(pod(json!({
        "metadata": {"name": "crasher"},
        "spec": {"containers": [{"name": "c", "image": "debian", "command": ["sh", "-c", "echo run; exit 3"]}]}
    })));
    let status = wait_status(&node, "ns", "crasher", "CrashLoopBackOff", 30, |s| {
        let Some(c) = s.container_statuses.as_ref().and_then(|c| c.first()) else {
            return false;
        };
        c.restart_count >= 2
            && c.state
                .as_ref()
                .and_then(|st| st.waiting.as_ref())
                .and_then(|w| w.reason.as_deref())
                == Some("CrashLoopBackOff")
    })
    .await;
    let c = container(&status, "c");
    let last = c.last_state.clone().unwrap().terminated.unwrap();
    assert_eq!(last.exit_code, 3);
    assert!(!c.ready);
    assert_eq!(phase(&status), "Running");
    let waiting = c.state.clone().unwrap().waiting.unwrap();
    assert!(
        waiting.message.unwrap().contains("back-off"),
        "back-off message"
    );
    assert_eq!(node.rt.logs("ns", "crasher", "c", true).unwrap(), "run\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn restart_policies_decide_the_phase() {
    if !privileged() {
        return;
    }
    let node = node();
    for (name, policy, cmd) in [
        ("ok", "OnFailure", "exit 0"),
        ("never", "Never", "exit 1"),
        ("onfail", "OnFailure", "exit 1"),
    ] {
        node.rt.sync_pod(pod(json!({
            "metadata": {"name": name},
            "spec": {"restartPolicy": policy, "containers": [{"name": "c", "image": "debian", "command": ["sh", "-c", cmd]}]}
        })));
    }
    let ok = wait_status(&node, "ns", "ok", "Succeeded", 20, |s| {
        phase(s) == "Succeeded"
    })
    .await;
    assert_eq!(container(&ok, "c").restart_count, 0);
    let never = wait_status(&node, "ns", "never", "Failed", 20, |s| phase(s) == "Failed").await;
    assert_eq!(container(&never, "c").restart_count, 0);
    // OnFailure restarts a failing container and stays Running.
    let onfail = wait_status(&node, "ns", "onfail", "a restart", 20, |s| {
        s.container_statuses
            .as_ref()
            .is_some_and(|c| c[0].restart_count >= 1)
    })
    .await;
    assert_eq!(phase(&onfail), "Running");
}

#[tokio::test(flavor = "multi_thread")]
async fn liveness_failure_restarts_the_container() {
    if !privileged() {
        return;
    }
    let node = node();
    node.rt.sync_pod(pod(json!({
        "metadata": {"name": "live"},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "c", "image": "debian",
                "command": ["sh", "-c", "if [ -e /data/once ]; then exec sleep 3600; fi; touch /data/once; exec sleep 3600"],
                "startupProbe": {"exec": {"command": ["true"]}, "periodSeconds": 1},
                "livenessProbe": {"exec": {"command": ["test", "-e", "/data/alive"]}, "periodSeconds": 1, "failureThreshold": 2},
                "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
            "volumes": [{"name": "data", "emptyDir": {}}]
        }
    })));
    let status = wait_status(&node, "ns", "live", "a liveness restart", 30, |s| {
        s.container_statuses
            .as_ref()
            .is_some_and(|c| c[0].restart_count >= 1)
    })
    .await;
    let last = container(&status, "c")
        .last_state
        .clone()
        .unwrap()
        .terminated
        .unwrap();
    // sleep ignores nothing: SIGTERM ends it (143).
    assert_eq!(last.exit_code, 143);
    assert_eq!(last.signal, Some(15));
}

#[tokio::test(flavor = "multi_thread")]
async fn deletion_sends_sigterm_then_sigkill_after_grace() {
    if !privileged() {
        return;
    }
    let mut node = node();
    let out = tempfile::tempdir().unwrap();
    let graceful = pod(json!({
        "metadata": {"name": "graceful"},
        "spec": {"containers": [{"name": "c", "image": "debian", "command": ["bash", "-c",
            "trap 'echo got TERM; echo bye; exit 0' TERM; echo up; while :; do sleep 0.1; done"],
            "lifecycle": {"preStop": {"exec": {"command": ["sh", "-c", "echo $(hostname) > /out/prestop"]}}},
            "volumeMounts": [{"name": "out", "mountPath": "/out"}]}],
            "volumes": [{"name": "out", "hostPath": {"path": out.path().to_str().unwrap()}}]}
    }));
    let stubborn = pod(json!({
        "metadata": {"name": "stubborn"},
        "spec": {"containers": [{"name": "c", "image": "debian", "command": ["bash", "-c",
            "trap 'echo ignoring TERM' TERM; sleep 1000 & echo $! > /data/child; echo up; while :; do sleep 0.1; done"],
            "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
            "volumes": [{"name": "data", "emptyDir": {}}]}
    }));
    node.rt.sync_pod(graceful.clone());
    node.rt.sync_pod(stubborn.clone());
    wait_status(&node, "ns", "graceful", "Running", 20, |s| {
        phase(s) == "Running"
    })
    .await;
    wait_status(&node, "ns", "stubborn", "Running", 20, |s| {
        phase(s) == "Running"
    })
    .await;
    eventually("both scripts up", 10, || {
        let a = node.rt.logs("ns", "graceful", "c", false).ok()?;
        let b = node.rt.logs("ns", "stubborn", "c", false).ok()?;
        (a.contains("up") && b.contains("up")).then_some(())
    })
    .await;
    let stubborn_dir = node.rt.pod_dir("ns", "stubborn").unwrap();
    let child: i32 = fs::read_to_string(stubborn_dir.join("volumes/data/child"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(std::path::Path::new(&format!("/proc/{child}")).exists());

    let mut rx = node.rt.watch_status("ns", "graceful").unwrap();
    node.rt.sync_pod(deleted(graceful, 30));
    wait_terminated(&mut node, "graceful", 20).await;
    let final_status = rx.borrow_and_update().clone();
    let term = final_status.container_statuses.unwrap()[0]
        .state
        .clone()
        .unwrap()
        .terminated
        .unwrap();
    assert_eq!(term.exit_code, 0);
    assert_eq!(final_status.phase.as_deref(), Some("Succeeded"));
    // Logs outlive the pod in the state directory.
    let dir = fs::read_dir(node.dir.path().join("pods"))
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with("ns_graceful_"))
        .unwrap();
    let logs = fs::read_to_string(dir.path().join("logs/c/0.log")).unwrap();
    assert!(logs.contains("got TERM\nbye"), "{logs}");
    // The preStop hook ran inside the container before SIGTERM.
    assert_eq!(
        fs::read_to_string(out.path().join("prestop")).unwrap(),
        "graceful\n"
    );

    let mut rx = node.rt.watch_status("ns", "stubborn").unwrap();
    node.rt.sync_pod(deleted(stubborn, 1));
    wait_terminated(&mut node, "stubborn", 20).await;
    let final_status = rx.borrow_and_update().clone();
    let term = final_status.container_statuses.unwrap()[0]
        .state
        .clone()
        .unwrap()
        .terminated
        .unwrap();
    assert_eq!((term.exit_code, term.signal), (137, Some(9)));
    assert_eq!(final_status.phase.as_deref(), Some("Failed"));
    // The background child died with the container.
    eventually("the container's child to be gone", 5, || {
        (!std::path::Path::new(&format!("/proc/{child}")).exists()).then_some(())
    })
    .await;
    // The emptyDir went with the pod.
    assert!(!stubborn_dir.join("volumes/data").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn grace_zero_and_removal_kill_at_once() {
    if !privileged() {
        return;
    }
    let mut node = node();
    let p = pod(json!({
        "metadata": {"name": "now"},
        "spec": {"terminationGracePeriodSeconds": 600, "containers": [{"name": "c", "image": "debian",
            "command": ["bash", "-c", "trap '' TERM; while :; do sleep 0.1; done"]}]}
    }));
    node.rt.sync_pod(p.clone());
    wait_status(&node, "ns", "now", "Running", 20, |s| phase(s) == "Running").await;
    node.rt.sync_pod(deleted(p, 0));
    wait_terminated(&mut node, "now", 10).await;

    // A pod that vanishes from the API is killed without a confirmation.
    let gone = pod(json!({
        "metadata": {"name": "gone"},
        "spec": {"terminationGracePeriodSeconds": 600, "containers": [{"name": "c", "image": "debian", "command": ["sleep", "3600"]}]}
    }));
    let uid = gone.metadata.uid.clone().unwrap();
    node.rt.sync_pod(gone);
    wait_status(&node, "ns", "gone", "Running", 20, |s| {
        phase(s) == "Running"
    })
    .await;
    node.rt.remove_pod(&uid);
    eventually("the pod to be forgotten", 10, || {
        (!node.rt.pod_uids().contains(&uid)).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    while let Ok(ev) = node.events.try_recv() {
        if let capstan_e2e_kubelet::PodEvent::Terminated { name, .. } = ev {
            assert_ne!(name, "gone", "a vanished pod must not be confirmed");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn termination_messages_come_from_the_file_or_the_log_on_failure() {
    if !privileged() {
        return;
    }
    let node = node();
    node.rt.sync_pod(pod(json!({
        "metadata": {"name": "messages"},
        "spec": {
            "restartPolicy": "Never",
            "securityContext": {"runAsUser": 999, "runAsGroup": 999},
            "containers": [
                // As the API server defaults it; written by a non-root user.
                {"name": "file", "image": "debian",
                 "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File",
                 "command": ["sh", "-c", "echo noise; printf '{\"passed\":true}' > /dev/termination-log; exit 1"]},
                {"name": "fallback", "image": "debian",
                 "terminationMessagePath": "/dev/termination-log",
                 "terminationMessagePolicy": "FallbackToLogsOnError",
                 "command": ["sh", "-c", "echo first; echo the last words; exit 2"]},
                {"name": "quiet", "image": "debian",
                 "terminationMessagePath": "/dev/termination-log",
                 "terminationMessagePolicy": "FallbackToLogsOnError",
                 "command": ["sh", "-c", "echo fine"]}
            ]
        }
    })));
    let status = wait_status(&node, "ns", "messages", "Failed", 30, |s| {
        phase(s) == "Failed"
    })
    .await;
    let message = |name: &str| {
        container(&status, name)
            .state
            .clone()
            .unwrap()
            .terminated
            .unwrap()
            .message
    };
    assert_eq!(message("file").as_deref(), Some("{\"passed\":true}"));
    assert_eq!(
        message("fallback").as_deref(),
        Some("first\nthe last words")
    );
    assert_eq!(message("quiet"), None, "no fallback after a success");
}

//! A pod's sandbox: mount namespace with ConfigMap/Secret/emptyDir volumes at
//! their in-container paths, downward API env, logs, volume refresh, users.

mod common;

use std::fs;

use common::*;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use serde_json::json;

fn config_map(data: &str) -> ConfigMap {
    let mut cm = ConfigMap::default();
    cm.metadata.name = Some("db-config".into());
    cm.metadata.namespace = Some("ns".into());
    cm.data = Some(
        [
            ("instance.json".to_string(), data.to_string()),
            ("unused".to_string(), "x".to_string()),
        ]
        .into(),
    );
    cm
}

#[tokio::test(flavor = "multi_thread")]
async fn pod_sees_volumes_env_and_its_own_paths() {
    if !privileged() {
        return;
    }
    let node = node();
    node.objects.put_config_map(config_map(r#"{"v":1}"#));
    let mut secret = Secret::default();
    secret.metadata.name = Some("db-app".into());
    secret.metadata.namespace = Some("ns".into());
    secret.data = Some([("password".to_string(), ByteString(b"pa55".to_vec()))].into());
    node.objects.put_secret(secret);

    let script = r#"
echo "name=$POD_NAME ns=$POD_NAMESPACE ip=$POD_IP sa=$SA uid=$POD_UID mem=$MEM url=$URL"
echo "hostname=$(hostname)"
cat /etc/capstan/config/settings.json; echo
stat -L -c 'secret-mode=%a' /etc/capstan/secrets/app/password
cat /etc/capstan/secrets/app/password; echo
test -e /etc/capstan/config/unused && echo unused-present
echo scratch > /tmp/scratch
echo done
while :; do cat /etc/capstan/config/settings.json > /tmp/seen; sleep 0.1; done
"#;
    let p = pod(json!({
        "metadata": {"name": "sandbox", "uid": "uid-sandbox"},
        "spec": {
            "containers": [{
                "name": "main",
                "image": "docker.io/library/debian:bookworm",
                "command": ["/bin/sh", "-c", script],
                "env": [
                    {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                    {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                    {"name": "POD_UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}},
                    {"name": "SA", "valueFrom": {"fieldRef": {"fieldPath": "spec.serviceAccountName"}}},
                    {"name": "MEM", "valueFrom": {"resourceFieldRef": {"containerName": "main", "resource": "limits.memory", "divisor": "1Mi"}}},
                    {"name": "URL", "value": "http://$(POD_IP):8000"}
                ],
                "resources": {"limits": {"memory": "256Mi"}},
                "volumeMounts": [
                    {"name": "config", "mountPath": "/etc/capstan/config"},
                    {"name": "app", "mountPath": "/etc/capstan/secrets/app"},
                    {"name": "tmp", "mountPath": "/tmp"}
                ]
            }],
            "serviceAccountName": "db",
            "volumes": [
                {"name": "config", "configMap": {"name": "db-config", "items": [{"key": "instance.json", "path": "settings.json"}]}},
                {"name": "app", "secret": {"secretName": "db-app", "defaultMode": 0o600}},
                {"name": "tmp", "emptyDir": {}}
            ]
        }
    }));
    node.rt.sync_pod(p);
    let status = wait_status(&node, "ns", "sandbox", "Ready", 20, ready).await;
    assert_eq!(phase(&status), "Running");
    let ip = status.pod_ip.clone().unwrap();
    assert!(ip.starts_with("127.20."), "{ip}");
    assert_eq!(
        status.host_ip.as_deref(),
        Some(node.rt.config().node_ip.to_string().as_str())
    );

    let logs = eventually("the script's output", 20, || {
        node.rt
            .logs("ns", "sandbox", "main", false)
            .ok()
            .filter(|l| l.contains("done"))
    })
    .await;
    assert!(
        logs.contains(&format!(
            "name=sandbox ns=ns ip={ip} sa=db uid=uid-sandbox mem=256 url=http://{ip}:8000"
        )),
        "{logs}"
    );
    assert!(logs.contains("hostname=sandbox"), "{logs}");
    assert!(logs.contains(r#"{"v":1}"#), "{logs}");
    assert!(logs.contains("secret-mode=600"), "{logs}");
    assert!(logs.contains("pa55"), "{logs}");
    assert!(!logs.contains("unused-present"), "{logs}");

    // /tmp of the container is its emptyDir, not the host's /tmp.
    let pod_dir = node.rt.pod_dir("ns", "sandbox").unwrap();
    assert_eq!(
        fs::read_to_string(pod_dir.join("volumes/tmp/scratch")).unwrap(),
        "scratch\n"
    );
    assert!(!std::path::Path::new("/tmp/scratch").exists());

    // A ConfigMap change reaches the running container.
    node.objects.put_config_map(config_map(r#"{"v":2}"#));
    node.rt.objects_changed();
    eventually("the updated ConfigMap inside the container", 20, || {
        fs::read_to_string(pod_dir.join("volumes/tmp/seen"))
            .ok()
            .filter(|s| s.contains(r#"{"v":2}"#))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn run_as_user_maps_to_the_postgres_user() {
    if !privileged() {
        return;
    }
    let node = node();
    if node.rt.config().ids.default_uid == 0 {
        eprintln!("skipping: no host user `postgres` to map to");
        return;
    }
    let p = pod(json!({
        "metadata": {"name": "whoami"},
        "spec": {
            "restartPolicy": "Never",
            "securityContext": {"runAsUser": 999, "runAsGroup": 999, "fsGroup": 999},
            "containers": [{
                "name": "id",
                "image": "debian",
                "command": ["sh", "-c", "echo uid=$(id -u) gid=$(id -g) groups=$(id -G) home=$HOME; touch /data/mine && stat -c 'data=%u:%g:%a' /data"],
                "volumeMounts": [{"name": "data", "mountPath": "/data"}]
            }],
            "volumes": [{"name": "data", "emptyDir": {}}]
        }
    }));
    node.rt.sync_pod(p);
    let status = wait_status(&node, "ns", "whoami", "Succeeded", 20, |s| {
        phase(s) == "Succeeded"
    })
    .await;
    let term = status.container_statuses.unwrap()[0]
        .state
        .clone()
        .unwrap()
        .terminated
        .unwrap();
    assert_eq!(
        (term.exit_code, term.reason.as_deref()),
        (0, Some("Completed"))
    );
    let logs = node.rt.logs("ns", "whoami", "id", false).unwrap();
    let ids = &node.rt.config().ids;
    let expected = format!(
        "uid={} gid={} groups={} home=",
        ids.default_uid, ids.default_gid, ids.default_gid
    );
    assert!(logs.contains(&expected), "{logs}");
    assert!(
        logs.contains(&format!("data=0:{}:2777", ids.default_gid)),
        "{logs}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_images_and_missing_secrets_wait_with_a_reason() {
    if !privileged() {
        return;
    }
    let node = node();
    let p = pod(json!({
        "metadata": {"name": "bad"},
        "spec": {"containers": [
            {"name": "img", "image": "quay.io/unknown/thing:1", "command": ["true"]},
            {"name": "env", "image": "debian", "command": ["sleep", "3600"],
             "env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "missing", "key": "k"}}}]}
        ]}
    }));
    node.rt.sync_pod(p);
    let status = wait_status(&node, "ns", "bad", "waiting reasons", 20, |s| {
        let reasons: Vec<String> = s
            .container_statuses
            .iter()
            .flatten()
            .filter_map(|c| c.state.as_ref()?.waiting.as_ref()?.reason.clone())
            .collect();
        reasons
            .iter()
            .any(|r| r == "ErrImagePull" || r == "ImagePullBackOff")
            && reasons.iter().any(|r| r == "CreateContainerConfigError")
    })
    .await;
    assert_eq!(phase(&status), "Pending");
    let msgs: Vec<String> = status
        .container_statuses
        .iter()
        .flatten()
        .filter_map(|c| c.state.as_ref()?.waiting.as_ref()?.message.clone())
        .collect();
    assert!(
        msgs.iter()
            .any(|m| m.contains("not mapped to local executables")),
        "{msgs:?}"
    );
    assert!(
        msgs.iter()
            .any(|m| m.contains("secret \"missing\" not found")),
        "{msgs:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn images_map_to_the_capstan_binary_and_postgres_bin_dirs() {
    if !privileged() {
        return;
    }
    if !std::path::Path::new("/usr/lib/postgresql/15/bin/initdb").exists() {
        eprintln!("skipping: PostgreSQL 15 is not installed");
        return;
    }
    // Stands in for the capstan binary: copy-binary copies itself, instance reports.
    let bin_dir = tempfile::tempdir().unwrap();
    let fake = bin_dir.path().join("capstan");
    fs::write(
        &fake,
        "#!/bin/sh\ncase \"$1\" in\n  copy-binary) ls /usr/local/bin; cp \"$0\" \"$2\" ;;\n  instance) echo \"PATH=$PATH\"; echo \"initdb=$(command -v initdb)\"; echo \"major=$PG_MAJOR\" ;;\nesac\n",
    )
    .unwrap();
    fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let node = node_with(|cfg| {
        cfg.images = capstan_e2e_kubelet::ImageTable::capstan_defaults(&fake);
    });
    node.rt.sync_pod(pod(json!({
        "metadata": {"name": "db-1"},
        "spec": {
            "restartPolicy": "Never",
            "initContainers": [{"name": "bootstrap", "image": "ghcr.io/example/capstan:dev",
                "args": ["copy-binary", "/capstan/bin/capstan"],
                "volumeMounts": [{"name": "bin", "mountPath": "/capstan/bin"}]}],
            "containers": [{"name": "postgres", "image": "docker.io/library/postgres:15-bookworm",
                "command": ["/capstan/bin/capstan", "instance"],
                "volumeMounts": [{"name": "bin", "mountPath": "/capstan/bin"}]}],
            "volumes": [{"name": "bin", "emptyDir": {}}]
        }
    })));
    wait_status(&node, "ns", "db-1", "Succeeded", 30, |s| {
        phase(s) == "Succeeded"
    })
    .await;
    // The operator image's /usr/local/bin holds only the binary.
    assert_eq!(
        node.rt.logs("ns", "db-1", "bootstrap", false).unwrap(),
        "capstan\n"
    );
    let logs = node.rt.logs("ns", "db-1", "postgres", false).unwrap();
    assert!(logs.contains("PATH=/usr/lib/postgresql/15/bin:"), "{logs}");
    assert!(
        logs.contains("initdb=/usr/lib/postgresql/15/bin/initdb"),
        "{logs}"
    );
    assert!(logs.contains("major=15"), "{logs}");
}

#[tokio::test(flavor = "multi_thread")]
async fn only_pgbackrest_images_have_pgbackrest() {
    if !privileged() {
        return;
    }
    if !std::path::Path::new("/usr/lib/postgresql/15/bin/postgres").exists() {
        eprintln!("skipping: PostgreSQL 15 is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("pgbackrest-2.55");
    fs::write(&fake, "#!/bin/sh\necho \"pgBackRest 2.55.1\"\n").unwrap();
    fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let node = node_with(|cfg| {
        cfg.images = capstan_e2e_kubelet::ImageTable::capstan_defaults("/nonexistent/capstan")
            .with_pgbackrest_image(&fake);
    });
    // What an instance manager looks for: pgbackrest on PATH, and Debian's
    // path (where this host may have its own 2.45).
    let script = "echo \"found=$(command -v pgbackrest || echo none)\"; \
                  if [ -x /usr/bin/pgbackrest ]; then echo usr-bin=runnable; else echo usr-bin=absent; fi; \
                  pgbackrest version 2>/dev/null || echo no-version; \
                  echo \"postgres=$(command -v postgres)\"";
    for (name, image) in [
        ("stock", "docker.io/library/postgres:15-bookworm"),
        ("backrest", "localhost/postgres-pgbackrest:15"),
    ] {
        node.rt.sync_pod(pod(json!({
            "metadata": {"name": name},
            "spec": {
                "restartPolicy": "Never",
                "containers": [{"name": "postgres", "image": image,
                    "command": ["/bin/sh", "-c", script]}]
            }
        })));
    }
    for name in ["stock", "backrest"] {
        wait_status(&node, "ns", name, "Succeeded", 30, |s| {
            phase(s) == "Succeeded"
        })
        .await;
    }
    let stock = node.rt.logs("ns", "stock", "postgres", false).unwrap();
    assert!(stock.contains("found=none\n"), "{stock}");
    assert!(stock.contains("usr-bin=absent\n"), "{stock}");
    assert!(stock.contains("no-version\n"), "{stock}");
    assert!(
        stock.contains("postgres=/usr/lib/postgresql/15/bin/postgres"),
        "{stock}"
    );
    let backrest = node.rt.logs("ns", "backrest", "postgres", false).unwrap();
    assert!(
        backrest.contains("found=/usr/local/lib/pgbackrest/bin/pgbackrest\n"),
        "{backrest}"
    );
    assert!(backrest.contains("pgBackRest 2.55.1\n"), "{backrest}");
    assert!(
        backrest.contains("postgres=/usr/lib/postgresql/15/bin/postgres"),
        "{backrest}"
    );
    // Nothing was created on the host for either image.
    assert!(
        !std::path::Path::new("/usr/local/lib/pgbackrest/bin/pgbackrest").exists(),
        "the image's binary must not appear on the host"
    );
}

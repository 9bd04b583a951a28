//! kubectl (client-side and server-side apply, get, delete) against the
//! server through a kubeconfig. Skips only when kubectl is not installed.

use std::path::Path;
use std::process::Command;

use capstan::api::PostgresCluster;
use capstan_e2e_apiserver::{ApiServer, Config};
use kube::CustomResourceExt;
use serde_json::Value;

struct Kubectl {
    kubeconfig: std::path::PathBuf,
    cache: std::path::PathBuf,
}

impl Kubectl {
    async fn run(&self, args: &[&str]) -> (bool, String, String) {
        let mut cmd = Command::new("kubectl");
        cmd.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(&self.cache)
            .args(args);
        let out = tokio::task::spawn_blocking(move || cmd.output())
            .await
            .unwrap()
            .expect("kubectl runs");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    async fn ok(&self, args: &[&str]) -> String {
        let (ok, stdout, stderr) = self.run(args).await;
        assert!(ok, "kubectl {args:?} failed: {stderr}");
        stdout
    }
}

fn kubectl_present() -> bool {
    Command::new("kubectl")
        .arg("version")
        .arg("--client")
        .output()
        .is_ok()
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

const MANIFESTS: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
  labels: {app: db}
data:
  a: "1"
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: db-pooler
spec:
  replicas: 2
  selector: {matchLabels: {app: pooler}}
  template:
    metadata: {labels: {app: pooler}}
    spec:
      containers:
      - name: pgbouncer
        image: pgbouncer:1
---
apiVersion: capstan.dev/v1alpha1
kind: PostgresCluster
metadata:
  name: db
spec:
  instances: 3
  postgres: {version: 17}
  storage: {size: 2Gi}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_get_apply_delete() {
    if !kubectl_present() {
        eprintln!("skipping: kubectl is not installed");
        return;
    }
    let server = ApiServer::start(Config {
        crds: vec![PostgresCluster::crd()],
        ..Config::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    server.write_kubeconfig(&kubeconfig).unwrap();
    let k = Kubectl {
        kubeconfig,
        cache: dir.path().join("cache"),
    };

    let namespaces = k.ok(&["get", "namespaces"]).await;
    assert!(namespaces.contains("kube-system"), "{namespaces}");

    // Typed `create` generators send protobuf.
    k.ok(&["create", "namespace", "dbs"]).await;
    k.ok(&[
        "-n",
        "dbs",
        "create",
        "secret",
        "generic",
        "creds",
        "--from-literal=password=hunter2",
    ])
    .await;
    let password = k
        .ok(&[
            "-n",
            "dbs",
            "get",
            "secret",
            "creds",
            "-o",
            "jsonpath={.data.password}",
        ])
        .await;
    assert_eq!(password, "aHVudGVyMg==");

    let manifests = write(dir.path(), "m.yaml", MANIFESTS);
    let out = k.ok(&["apply", "-f", &manifests]).await;
    assert!(out.contains("configmap/settings created"), "{out}");
    assert!(
        out.contains("postgrescluster.capstan.dev/db created"),
        "{out}"
    );
    let out = k.ok(&["apply", "-f", &manifests]).await;
    assert!(out.contains("deployment.apps/db-pooler unchanged"), "{out}");

    let changed = write(
        dir.path(),
        "m2.yaml",
        &MANIFESTS
            .replace("replicas: 2", "replicas: 3")
            .replace("instances: 3", "instances: 5"),
    );
    let out = k.ok(&["apply", "-f", &changed]).await;
    assert!(
        out.contains("deployment.apps/db-pooler configured"),
        "{out}"
    );
    let deployment: Value = serde_json::from_str(
        &k.ok(&["get", "deployment", "db-pooler", "-o", "json"])
            .await,
    )
    .unwrap();
    assert_eq!(deployment["spec"]["replicas"], 3);
    assert_eq!(deployment["metadata"]["generation"], 2);

    // Server-side printing with the CRD's printer columns.
    let table = k.ok(&["get", "pgc"]).await;
    let header = table.lines().next().unwrap_or("");
    assert!(
        header.contains("INSTANCES") && header.contains("PHASE"),
        "{table}"
    );
    assert!(
        table.lines().nth(1).unwrap_or("").contains(" 5 "),
        "{table}"
    );

    // Server-side apply.
    let out = k
        .ok(&[
            "apply",
            "--server-side",
            "--force-conflicts",
            "-f",
            &changed,
        ])
        .await;
    assert!(out.contains("serverside-applied"), "{out}");

    // Admission errors reach the user as the real server words them.
    let shrink = write(
        dir.path(),
        "bad.yaml",
        &MANIFESTS.replace("size: 2Gi", "size: 1Gi"),
    );
    let (ok, _, stderr) = k.run(&["apply", "-f", &shrink]).await;
    assert!(!ok);
    assert!(
        stderr.contains("The PostgresCluster \"db\" is invalid"),
        "{stderr}"
    );
    assert!(
        stderr.contains("spec.storage.size: Forbidden: size may not be decreased"),
        "{stderr}"
    );

    // kubectl asks for strict field validation: typos are refused.
    let typo = write(
        dir.path(),
        "typo.yaml",
        &MANIFESTS.replace("instances: 3", "instancez: 3"),
    );
    let (ok, _, stderr) = k.run(&["apply", "-f", &typo]).await;
    assert!(!ok);
    assert!(
        stderr.contains("unknown field \"spec.instancez\""),
        "{stderr}"
    );

    let out = k.ok(&["delete", "-f", &manifests]).await;
    assert!(out.contains("configmap \"settings\" deleted"), "{out}");
    let (ok, _, stderr) = k.run(&["get", "configmap", "settings"]).await;
    assert!(!ok && stderr.contains("NotFound"), "{stderr}");
    server.shutdown().await;
}

//! `capstan-e2e up`: the e2e harness as a cluster on this machine — a real
//! control plane, the process kubelet, and Capstan installed by Helm — until
//! Ctrl-C. Test infrastructure, never part of the product.

use std::time::Duration;

use capstan_e2e::harness::wait_for;
use capstan_e2e::harness::{Harness, HarnessOptions, OPERATOR_NAMESPACE, OPERATOR_SELECTOR};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::ListParams;

const USAGE: &str = "usage: capstan-e2e up

Starts etcd, kube-apiserver, kube-controller-manager, kube-scheduler (from
$CAPSTAN_K8S_BIN, built by .ci/build-k8s-tools.sh) and the process kubelet in
a network namespace of their own, installs charts/capstan with helm, prints
how to use it, and removes everything on Ctrl-C. Needs root, PostgreSQL and
PgBouncer (see e2e/README.md); build the capstan binary first
(cargo build --bin capstan).";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) != Some("up") {
        eprintln!("{USAGE}");
        std::process::exit(2);
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "capstan_e2e=info".into()),
        )
        .init();
    capstan_e2e::netns::run(|| async {
        if let Err(e) = up().await {
            eprintln!("capstan-e2e up: {e}");
            std::process::exit(1);
        }
    });
}

async fn up() -> Result<(), capstan_e2e::E2eError> {
    let started = std::time::Instant::now();
    let mut harness = Harness::start(HarnessOptions::default()).await?;
    harness.start_operator().await?;
    let pods: Api<Pod> = Api::namespaced(harness.client(), OPERATOR_NAMESPACE);
    wait_for(
        "the operator pod Ready",
        Duration::from_secs(120),
        Duration::from_millis(250),
        || async {
            let list = pods
                .list(&ListParams::default().labels(OPERATOR_SELECTOR))
                .await
                .ok()?;
            list.items
                .iter()
                .any(capstan::operator::cluster::operation::is_ready)
                .then_some(())
        },
    )
    .await?;
    let kubeconfig = harness.kubeconfig().display().to_string();
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .unwrap_or_default()
        .display()
        .to_string();
    println!(
        "Capstan is running on a local Kubernetes {} (ready in {:.1} s).

Everything lives in a network namespace of its own; enter it from another
terminal (as root) and use kubectl, helm and psql as usual:

  nsenter --net=/proc/{pid}/task/{tid}/ns/net bash
  export KUBECONFIG={kubeconfig}
  kubectl get pods -A
  kubectl apply --server-side -f {repo}/examples/minimal.yaml
  kubectl wait pgc/minimal --for=condition=Ready --timeout=120s
  # through the pooler, as an application connects:
  kubectl get secret minimal-ca -o jsonpath='{{.data.ca\\.crt}}' | base64 -d > /tmp/minimal-ca.crt
  psql \"$(kubectl get secret minimal-app -o jsonpath='{{.data.uri}}' | base64 -d)&sslrootcert=/tmp/minimal-ca.crt&hostaddr=$(kubectl get svc minimal-pooler -o jsonpath='{{.spec.clusterIP}}')\"

Pod logs: {state}/kubelet/pods/<namespace>_<pod>_<uid>/logs/<container>/.
Ctrl-C stops every process and removes the namespace.",
        capstan_e2e::controlplane::KUBERNETES_VERSION,
        started.elapsed().as_secs_f64(),
        pid = std::process::id(),
        // The namespace is this thread's (see capstan_e2e::netns).
        tid = nix::unistd::gettid(),
        state = harness.state_dir().display(),
    );
    let _ = tokio::signal::ctrl_c().await;
    println!("stopping…");
    drop(harness);
    Ok(())
}

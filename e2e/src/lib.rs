//! Capstan's end-to-end tests: the local harness (a real control plane
//! built from Go modules, the process kubelet and its Service proxy; see
//! README.md) and the scenarios, written against the Kubernetes API and the
//! cluster's Service names only, so they run unchanged on a real cluster
//! (`CAPSTAN_E2E_KUBECONFIG`).

pub mod argocd;
pub mod backup;
pub mod cluster;
pub mod controlplane;
pub mod ha;
pub mod harness;
pub mod kstatus;
pub mod load;
pub mod netns;
pub mod pki;
pub mod prometheus;
pub mod schedule;
pub mod sql;
pub mod target;
pub mod volumes;

use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum E2eError {
    #[error("harness setup: {0}")]
    Setup(String),
    #[error("{0}: {1}")]
    Kube(String, #[source] kube::Error),
    #[error("timed out after {1:?} waiting for {0}")]
    Timeout(String, Duration),
    #[error("SQL: {0}")]
    Sql(String),
    #[error("{0}")]
    Check(String),
}

/// Runs an e2e scenario ([`netns::run`]). On the local harness it needs the
/// control-plane binaries: without them the test is skipped with the reason
/// printed, except under `CI=true`, where that fails the test.
/// `CAPSTAN_E2E_LOG` (an `EnvFilter`, e.g. `capstan_e2e_kubelet=debug`)
/// prints the harness's own logs.
pub fn scenario<F, Fut>(scenario: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    if std::env::var_os("CAPSTAN_E2E_KUBECONFIG").is_none()
        && let Err(e) = controlplane::tools_dir()
    {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{e}");
        }
        eprintln!("SKIP: {e}");
        return;
    }
    // The harness's own logs (kubelet, claim binder) for debugging a run.
    if let Ok(filter) = std::env::var("CAPSTAN_E2E_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .try_init();
    }
    netns::run(scenario);
}

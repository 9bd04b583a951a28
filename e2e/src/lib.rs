//! Capstan's end-to-end tests: the local harness (emulated API server,
//! process kubelet, Service proxy; see README.md) and the scenarios, written
//! against the Kubernetes API and the cluster's Service names only, so they
//! run unchanged on a real cluster (`CAPSTAN_E2E_KUBECONFIG`).

pub mod cluster;
pub mod controlplane;
pub mod ha;
pub mod harness;
pub mod load;
pub mod netns;
pub mod sql;
pub mod target;

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

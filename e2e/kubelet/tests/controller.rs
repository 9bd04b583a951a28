//! The kubelet driven through the Kubernetes API (kube's client against an
//! in-memory API double): pod statuses and deletion, Services and
//! Endpoints, Deployments, claims, simulated pods.

mod common;

use std::time::Duration;

use capstan_e2e_kubelet::Kubelet;
use common::fake_api::FakeServer;
use common::scenarios::{self, Cluster};
use common::*;

async fn cluster() -> Cluster {
    init_tracing();
    let server = FakeServer::start().await;
    let client = server.client();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.resync = Duration::from_millis(500);
    let kubelet = Kubelet::start(client.clone(), cfg).await.unwrap();
    Cluster {
        kubelet,
        client,
        server: Box::new(server),
        dir,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn pods_run_report_status_and_are_deleted_gracefully() {
    if !privileged() {
        return;
    }
    scenarios::pods_run_report_status_and_are_deleted_gracefully(&cluster().await).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn services_get_addresses_endpoints_and_names() {
    if !privileged() {
        return;
    }
    scenarios::services_get_addresses_endpoints_and_names(&cluster().await).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn deployments_create_roll_scale_and_clean_up() {
    if !privileged() {
        return;
    }
    scenarios::deployments_create_roll_scale_and_clean_up(&cluster().await).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn claims_bind_expand_and_keep_data_across_pods() {
    if !privileged() {
        return;
    }
    scenarios::claims_bind_expand_and_keep_data_across_pods(&cluster().await).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn simulated_pods_are_ready_without_processes() {
    if !privileged() {
        return;
    }
    scenarios::simulated_pods_are_ready_without_processes(&cluster().await).await;
}

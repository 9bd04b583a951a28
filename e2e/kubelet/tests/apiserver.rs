//! The API scenarios against capstan-e2e-apiserver (HTTPS, tokens, its own
//! clusterIP allocation and pod binding). Run with `--features apiserver`.
#![cfg(feature = "apiserver")]

mod common;

use std::time::Duration;

use capstan_e2e_apiserver::{ApiServer, Config};
use capstan_e2e_kubelet::{ApiServerAccess, Kubelet};
use common::scenarios::{self, Cluster};
use common::*;
use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use kube::api::PostParams;

async fn cluster() -> Cluster {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.resync = Duration::from_millis(500);
    let server = ApiServer::start(Config {
        node_name: Some(cfg.node_name.clone()),
        // clusterIPs the proxy can bind directly.
        service_cidr: (cfg.service_cidr.network(), 256),
        ..Config::default()
    })
    .await
    .unwrap();
    let client = server.client().await.unwrap();
    cfg.api_server = Some(ApiServerAccess {
        host: server.addr().ip(),
        port: server.addr().port(),
        token: server.issue_token(),
        ca_crt: server.ca_pem().to_string(),
    });
    let ns: Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": "ns"}})).unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
    let kubelet = Kubelet::start(client.clone(), cfg).await.unwrap();
    Cluster {
        kubelet,
        client,
        server: Box::new(server),
        dir,
    }
}

macro_rules! scenario {
    ($($name:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread")]
        async fn $name() {
            if !privileged() {
                return;
            }
            scenarios::$name(&cluster().await).await;
        }
    )*};
}

scenario!(
    pods_run_report_status_and_are_deleted_gracefully,
    services_get_addresses_endpoints_and_names,
    deployments_create_roll_scale_and_clean_up,
    claims_bind_expand_and_keep_data_across_pods,
    simulated_pods_are_ready_without_processes,
    pods_reach_the_api_server_with_their_service_account,
    node_is_registered_with_a_lease,
);

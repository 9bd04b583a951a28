//! The real control plane under the harness: kube-apiserver answers with the
//! version it was built at, the real controllers run (a Deployment gets a
//! ReplicaSet and pods, a namespace gets its `default` ServiceAccount and
//! `kube-root-ca.crt`), the scheduler binds pods to the kubelet's Node, and
//! RBAC is enforced (a ServiceAccount with no binding is refused).

use std::time::Duration;

use capstan_e2e::controlplane::KUBERNETES_VERSION;
use capstan_e2e::harness::{Harness, HarnessOptions, Install, ensure_namespace, wait_for};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{ListParams, PostParams};
use kube::{Api, Client};

const NS: &str = "e2e-control-plane";

#[test]
fn the_harness_runs_a_real_control_plane() {
    capstan_e2e::scenario(|| async {
        let harness = Harness::start(HarnessOptions {
            simulated: false,
            install: Install::HostProcess,
        })
        .await
        .expect("harness");
        let plane = harness.control_plane();
        let client = harness.client();
        let version = client.apiserver_version().await.expect("/version");
        assert_eq!(version.git_version, KUBERNETES_VERSION);

        ensure_namespace(&client, NS).await.unwrap();
        let deployment: Deployment = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "sleeper", "namespace": NS},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": "sleeper"}},
                "template": {
                    "metadata": {"labels": {"app": "sleeper"}},
                    "spec": {"containers": [{
                        "name": "sleep",
                        "image": "debian",
                        "command": ["sleep", "300"],
                    }]},
                },
            },
        }))
        .unwrap();
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), NS);
        deployments
            .create(&PostParams::default(), &deployment)
            .await
            .unwrap();
        let replica_sets: Api<ReplicaSet> = Api::namespaced(client.clone(), NS);
        wait_for(
            "a ReplicaSet made by the real Deployment controller",
            Duration::from_secs(30),
            Duration::from_millis(200),
            || async {
                let list = replica_sets.list(&ListParams::default()).await.ok()?;
                (!list.items.is_empty()).then_some(())
            },
        )
        .await
        .unwrap();
        let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
        let node = wait_for(
            "the pod bound to the kubelet's Node by kube-scheduler",
            Duration::from_secs(30),
            Duration::from_millis(200),
            || async {
                let list = pods.list(&ListParams::default()).await.ok()?;
                list.items.first()?.spec.as_ref()?.node_name.clone()
            },
        )
        .await
        .unwrap();
        assert_eq!(node, "capstan-e2e");

        // RBAC is real: the namespace's default ServiceAccount may not read
        // Secrets.
        let token = harness_token(&client, NS, "default").await;
        let mut config = kube::Config::new(
            format!(
                "https://{}:{}",
                plane.addr(),
                capstan_e2e::controlplane::API_PORT
            )
            .parse()
            .unwrap(),
        );
        config.root_cert = Some(vec![pem_der(plane.ca_pem())]);
        config.auth_info.token = Some(token.into());
        let restricted = Client::try_from(config).unwrap();
        let secrets: Api<Secret> = Api::namespaced(restricted, NS);
        match secrets.list(&ListParams::default()).await {
            Err(kube::Error::Api(status)) if status.code == 403 => {}
            other => panic!("a ServiceAccount without a binding listed Secrets: {other:?}"),
        }
    });
}

/// A token of `namespace/account` through the TokenRequest API.
async fn harness_token(client: &Client, namespace: &str, account: &str) -> String {
    use k8s_openapi::api::authentication::v1::TokenRequest;
    use k8s_openapi::api::core::v1::ServiceAccount;
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let request: TokenRequest = serde_json::from_value(serde_json::json!({
        "spec": {"audiences": [], "expirationSeconds": 600}
    }))
    .unwrap();
    let issued = accounts
        .create_token_request(account, &PostParams::default(), &request)
        .await
        .expect("token request");
    issued.status.expect("token").token
}

fn pem_der(pem: &str) -> Vec<u8> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes())
        .expect("CA PEM")
        .to_vec()
}

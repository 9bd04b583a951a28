//! The files a pod gets for in-cluster config (token, ca.crt, namespace)
//! authenticate a kube client, also when it names the server
//! `kubernetes.default.svc` as in-cluster clients do.

use capstan_e2e_apiserver::{ApiServer, Config};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams};
use kube::config::{KubeConfigOptions, Kubeconfig};

#[tokio::test]
async fn service_account_directory_authenticates() {
    let server = ApiServer::start(Config::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sa = dir.path().join("serviceaccount");
    server.write_service_account_dir(&sa, "default").unwrap();
    let token = std::fs::read_to_string(sa.join("token")).unwrap();
    assert_ne!(token, server.token(), "each pod gets its own token");
    assert_eq!(
        std::fs::read_to_string(sa.join("namespace")).unwrap(),
        "default"
    );

    let env: std::collections::HashMap<String, String> =
        server.in_cluster_env().into_iter().collect();
    let url = format!(
        "https://{}:{}",
        env["KUBERNETES_SERVICE_HOST"], env["KUBERNETES_SERVICE_PORT"]
    );
    assert_eq!(url, server.url());
    let kubeconfig = Kubeconfig::from_yaml(&format!(
        r#"
apiVersion: v1
kind: Config
clusters:
- name: in-cluster
  cluster:
    server: {url}
    certificate-authority: {ca}
    tls-server-name: kubernetes.default.svc
users:
- name: pod
  user:
    tokenFile: {token}
contexts:
- name: pod
  context: {{cluster: in-cluster, user: pod, namespace: default}}
current-context: pod
"#,
        ca = sa.join("ca.crt").display(),
        token = sa.join("token").display(),
    ))
    .unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap();
    let client = kube::Client::try_from(config).unwrap();
    let cms: Api<ConfigMap> = Api::default_namespaced(client);
    cms.list(&ListParams::default())
        .await
        .expect("the pod's token is accepted");
    server.shutdown().await;
}

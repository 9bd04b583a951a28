//! Scenarios of the kubelet driven through the Kubernetes API, run against
//! the in-memory double (tests/controller.rs); the e2e scenarios run the
//! kubelet against the real kube-apiserver.

use capstan_e2e_kubelet::Kubelet;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Endpoints, PersistentVolumeClaim, Pod, Service};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;

use super::*;

/// A kubelet and the API server it watches.
pub struct Cluster {
    pub kubelet: Kubelet,
    pub client: Client,
    /// The API server (kept alive for the test).
    pub server: Box<dyn std::any::Any + Send>,
    pub dir: tempfile::TempDir,
}

pub async fn create<K>(client: &Client, ns: &str, value: serde_json::Value) -> K
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let obj: K = serde_json::from_value(value).unwrap();
    Api::<K>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &obj)
        .await
        .unwrap()
}

pub async fn get_pod(client: &Client, name: &str) -> Option<Pod> {
    Api::<Pod>::namespaced(client.clone(), "ns")
        .get_opt(name)
        .await
        .unwrap()
}

pub fn pod_ready(p: &Pod) -> bool {
    p.status.as_ref().is_some_and(ready)
}

pub fn phase_of(p: &Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or_default()
}

pub fn claim_phase(c: &PersistentVolumeClaim) -> &str {
    c.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or_default()
}

pub async fn pods_run_report_status_and_are_deleted_gracefully(c: &Cluster) {
    let _: Pod = create(&c.client, "ns", json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web"},
        "spec": {"terminationGracePeriodSeconds": 20, "containers": [{"name": "c", "image": "debian",
            "command": ["bash", "-c", "trap 'echo bye; exit 0' TERM; while :; do sleep 0.1; done"],
            "readinessProbe": {"exec": {"command": ["true"]}, "periodSeconds": 1}}]}
    }))
    .await;
    let pod = eventually_async("pod Ready in the API", 30, || async {
        get_pod(&c.client, "web").await.filter(pod_ready)
    })
    .await;
    let status = pod.status.unwrap();
    assert_eq!(status.phase.as_deref(), Some("Running"));
    assert!(status.pod_ip.unwrap().starts_with("127.20."));
    assert_eq!(
        status.host_ip,
        Some(c.kubelet.runtime().config().node_ip.to_string())
    );
    assert_eq!(
        pod.spec.unwrap().node_name.as_deref(),
        Some("capstan-e2e"),
        "bound to the node"
    );

    Api::<Pod>::namespaced(c.client.clone(), "ns")
        .delete("web", &DeleteParams::default())
        .await
        .unwrap();
    eventually_async("the kubelet to confirm the deletion", 30, || async {
        get_pod(&c.client, "web").await.is_none().then_some(())
    })
    .await;
}

pub async fn services_get_addresses_endpoints_and_names(c: &Cluster) {
    let _: Pod = create(&c.client, "ns", json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "db-1", "labels": {"role": "primary"}},
        "spec": {"containers": [{"name": "web", "image": "debian",
            "command": ["sh", "-c", "cd /srv && echo hello > index.html && exec python3 -m http.server --bind $POD_IP 8080"],
            "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
            "ports": [{"name": "http", "containerPort": 8080}],
            "readinessProbe": {"tcpSocket": {"port": "http"}, "periodSeconds": 1},
            "volumeMounts": [{"name": "srv", "mountPath": "/srv"}]}],
            "volumes": [{"name": "srv", "emptyDir": {}}]}
    }))
    .await;
    let _: Service = create(&c.client, "ns", json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "db-rw"},
        "spec": {"selector": {"role": "primary"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}
    }))
    .await;
    let services: Api<Service> = Api::namespaced(c.client.clone(), "ns");
    let ip = eventually_async("spec.clusterIP", 20, || async {
        services
            .get("db-rw")
            .await
            .ok()?
            .spec?
            .cluster_ip
            .filter(|ip| !ip.is_empty())
    })
    .await;
    assert!(ip.starts_with("127.21."), "{ip}");
    let endpoints: Api<Endpoints> = Api::namespaced(c.client.clone(), "ns");
    let ep = eventually_async("ready Endpoints", 30, || async {
        let ep = endpoints.get_opt("db-rw").await.ok()??;
        ep.subsets.as_ref()?.first()?.addresses.as_ref()?.first()?;
        Some(ep)
    })
    .await;
    assert_eq!(ep.subsets.unwrap()[0].ports.as_ref().unwrap()[0].port, 8080);
    let addr = c
        .kubelet
        .resolver()
        .socket_addr("db-rw.ns.svc.cluster.local", 80)
        .unwrap();
    assert_eq!(addr.ip().to_string(), ip);
    let body = eventually_async("an answer through the Service", 10, || async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        s.write_all(b"GET / HTTP/1.0\r\n\r\n").await.ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).await.ok()?;
        Some(out)
    })
    .await;
    assert!(body.contains("hello"), "{body}");

    // Deleting the Service removes its Endpoints and name.
    services
        .delete("db-rw", &DeleteParams::default())
        .await
        .unwrap();
    eventually_async("Endpoints to go", 20, || async {
        endpoints
            .get_opt("db-rw")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    eventually("the name to go", 10, || {
        c.kubelet
            .resolver()
            .resolve("db-rw.ns")
            .is_none()
            .then_some(())
    })
    .await;
}

pub fn deployment_pods(pods: &[Pod]) -> Vec<&Pod> {
    pods.iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect()
}

pub async fn deployments_create_roll_scale_and_clean_up(c: &Cluster) {
    let deploy: Deployment = create(&c.client, "ns", json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "pooler"},
        "spec": {"replicas": 2,
            "selector": {"matchLabels": {"app": "pooler"}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {"metadata": {"labels": {"app": "pooler"}}, "spec": {"terminationGracePeriodSeconds": 1, "containers": [{
                "name": "c", "image": "debian", "command": ["sleep", "3600"], "env": [{"name": "V", "value": "1"}],
                "readinessProbe": {"exec": {"command": ["true"]}, "periodSeconds": 1}}]}}}
    }))
    .await;
    let deployments: Api<Deployment> = Api::namespaced(c.client.clone(), "ns");
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), "ns");
    let status_ok = |d: &Deployment, replicas: i32| {
        let s = d.status.clone().unwrap_or_default();
        s.observed_generation == d.metadata.generation
            && s.ready_replicas == Some(replicas)
            && s.available_replicas == Some(replicas)
            && s.updated_replicas == Some(replicas)
            && s.replicas == Some(replicas)
            && s.conditions
                .iter()
                .flatten()
                .any(|c| c.type_ == "Available" && c.status == "True")
            && s.conditions
                .iter()
                .flatten()
                .any(|c| c.reason.as_deref() == Some("NewReplicaSetAvailable"))
    };
    eventually_async("2 available replicas", 40, || async {
        deployments
            .get("pooler")
            .await
            .ok()
            .filter(|d| status_ok(d, 2))
    })
    .await;
    let list = pods.list(&Default::default()).await.unwrap().items;
    let first_hash = list[0].metadata.labels.as_ref().unwrap()["pod-template-hash"].clone();
    for p in &list {
        let name = p.metadata.name.clone().unwrap();
        assert!(name.starts_with(&format!("pooler-{first_hash}-")), "{name}");
        let owner = &p.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str()),
            ("Deployment", deploy.metadata.uid.as_deref().unwrap())
        );
    }

    // Template change: rolling update to a new hash.
    let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "debian", "command": ["sleep", "3600"],
        "env": [{"name": "V", "value": "2"}], "readinessProbe": {"exec": {"command": ["true"]}, "periodSeconds": 1}}]}}}});
    deployments
        .patch("pooler", &PatchParams::default(), &Patch::Merge(patch))
        .await
        .unwrap();
    eventually_async("the rollout to finish", 60, || async {
        let d = deployments
            .get("pooler")
            .await
            .ok()
            .filter(|d| status_ok(d, 2))?;
        let list = pods.list(&Default::default()).await.ok()?.items;
        let live = deployment_pods(&list);
        (live.len() == 2
            && live
                .iter()
                .all(|p| p.metadata.labels.as_ref().unwrap()["pod-template-hash"] != first_hash))
        .then_some(d)
    })
    .await;

    // Scale down.
    deployments
        .patch(
            "pooler",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 1}})),
        )
        .await
        .unwrap();
    eventually_async("1 replica", 40, || async {
        let list = pods.list(&Default::default()).await.ok()?.items;
        let d = deployments
            .get("pooler")
            .await
            .ok()
            .filter(|d| status_ok(d, 1))?;
        (list.len() == 1).then_some(d)
    })
    .await;

    // Deleting the Deployment deletes its pods.
    deployments
        .delete("pooler", &DeleteParams::default())
        .await
        .unwrap();
    eventually_async("pods to go", 40, || async {
        pods.list(&Default::default())
            .await
            .ok()?
            .items
            .is_empty()
            .then_some(())
    })
    .await;
}

pub async fn claims_bind_expand_and_keep_data_across_pods(c: &Cluster) {
    let _: PersistentVolumeClaim = create(&c.client, "ns", json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": "data"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}
    }))
    .await;
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(c.client.clone(), "ns");
    let capacity = |pvc: &PersistentVolumeClaim| {
        let s = pvc.status.as_ref()?;
        (s.phase.as_deref() == Some("Bound"))
            .then(|| s.capacity.as_ref()?.get("storage").map(|q| q.0.clone()))?
    };
    eventually_async("Bound", 20, || async {
        capacity(&claims.get("data").await.ok()?).filter(|c| c == "1Gi")
    })
    .await;
    claims
        .patch(
            "data",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"resources": {"requests": {"storage": "2Gi"}}}})),
        )
        .await
        .unwrap();
    eventually_async("expanded", 20, || async {
        capacity(&claims.get("data").await.ok()?).filter(|c| c == "2Gi")
    })
    .await;

    let writer = |name: &str, cmd: &str| {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "debian", "command": ["sh", "-c", cmd],
                "volumeMounts": [{"name": "data", "mountPath": "/var/lib/postgresql/data"}]}],
                "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}]}})
    };
    let _: Pod = create(
        &c.client,
        "ns",
        writer("w", "echo kept > /var/lib/postgresql/data/file"),
    )
    .await;
    let succeeded =
        |p: &Pod| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Succeeded");
    eventually_async("the writer to finish", 30, || async {
        get_pod(&c.client, "w").await.filter(succeeded)
    })
    .await;
    let _: Pod = create(
        &c.client,
        "ns",
        writer("r", "cat /var/lib/postgresql/data/file"),
    )
    .await;
    eventually_async("the reader to finish", 30, || async {
        get_pod(&c.client, "r").await.filter(succeeded)
    })
    .await;
    assert_eq!(
        c.kubelet.runtime().logs("ns", "r", "c", false).unwrap(),
        "kept\n"
    );

    let dir = c.kubelet.runtime().claim_dir("ns", "data");
    assert!(dir.join("file").exists());
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), "ns");
    for name in ["w", "r"] {
        pods.delete(name, &DeleteParams::default()).await.unwrap();
    }
    claims
        .delete("data", &DeleteParams::default())
        .await
        .unwrap();
    eventually("the claim's directory to go", 20, || {
        (!dir.exists()).then_some(())
    })
    .await;
}

pub async fn simulated_pods_are_ready_without_processes(c: &Cluster) {
    let _: Pod = create(
        &c.client,
        "ns",
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "sim", "annotations": {"e2e.capstan.dev/simulated": "true"}},
            "spec": {"containers": [{"name": "c", "image": "unmapped/anything:1"}]}
        }),
    )
    .await;
    let pod = eventually_async("simulated pod Ready", 20, || async {
        get_pod(&c.client, "sim").await.filter(pod_ready)
    })
    .await;
    assert!(pod.status.unwrap().pod_ip.is_some());
    assert!(
        c.kubelet
            .runtime()
            .processes("ns", "sim")
            .unwrap()
            .is_empty()
    );
    Api::<Pod>::namespaced(c.client.clone(), "ns")
        .delete("sim", &DeleteParams::default())
        .await
        .unwrap();
    eventually_async("deletion", 20, || async {
        get_pod(&c.client, "sim").await.is_none().then_some(())
    })
    .await;
}

/// The Node is registered Ready and its Lease held (whether or not the
/// kubelet schedules).
pub async fn node_is_registered_with_a_lease(c: &Cluster) {
    use k8s_openapi::api::coordination::v1::Lease;
    use k8s_openapi::api::core::v1::Node;
    let name = c.kubelet.runtime().config().node_name.clone();
    let nodes: Api<Node> = Api::all(c.client.clone());
    eventually_async("the Node, Ready", 20, || async {
        let node = nodes.get_opt(&name).await.ok()??;
        node.status?
            .conditions?
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
            .then_some(())
    })
    .await;
    let leases: Api<Lease> = Api::namespaced(c.client.clone(), "kube-node-lease");
    let lease = eventually_async("the node Lease", 20, || async {
        leases.get_opt(&name).await.ok()?
    })
    .await;
    let spec = lease.spec.unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some(name.as_str()));
    assert!(spec.renew_time.is_some());
}

/// A pod uses its service account directory and `KUBERNETES_SERVICE_*` to
/// list pods over TLS (needs an API server that checks tokens and serves TLS).
pub async fn pods_reach_the_api_server_with_their_service_account(c: &Cluster) {
    let script = r#"
import json, os, ssl, urllib.request
d = '/var/run/secrets/kubernetes.io/serviceaccount'
ctx = ssl.create_default_context(cafile=d + '/ca.crt')
ns = open(d + '/namespace').read()
url = 'https://%s:%s/api/v1/namespaces/%s/pods' % (os.environ['KUBERNETES_SERVICE_HOST'], os.environ['KUBERNETES_SERVICE_PORT'], ns)
req = urllib.request.Request(url, headers={'Authorization': 'Bearer ' + open(d + '/token').read()})
items = json.load(urllib.request.urlopen(req, context=ctx))['items']
print('pods:', ' '.join(p['metadata']['name'] for p in items))
"#;
    let _: Pod = create(
        &c.client,
        "ns",
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "incluster"},
            "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "debian", "command": ["python3", "-c", script]}]}
        }),
    )
    .await;
    let done = eventually_async("the in-cluster client to finish", 30, || async {
        let p = get_pod(&c.client, "incluster").await?;
        matches!(
            p.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        )
        .then_some(p)
    })
    .await;
    let logs = c
        .kubelet
        .runtime()
        .logs("ns", "incluster", "c", false)
        .unwrap();
    assert_eq!(
        done.status.unwrap().phase.as_deref(),
        Some("Succeeded"),
        "{logs}"
    );
    assert!(logs.contains("pods: incluster"), "{logs}");
}

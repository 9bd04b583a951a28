//! The kubelet driven through the Kubernetes API (kube's client against an
//! in-memory API double): pod statuses and deletion, Services and
//! Endpoints, Deployments, claims, simulated pods; and the parts a real
//! control plane needs: the Node and its Lease, TokenRequest tokens in
//! projected volumes, PersistentVolumes, pods of other nodes.

mod common;

use std::sync::Arc;
use std::time::Duration;

use capstan_e2e_kubelet::{Kubelet, KubeletConfig};
use common::fake_api::{FakeApi, FakeServer};
use common::scenarios::{self, Cluster, create, get_pod};
use common::*;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{
    ConfigMap, Node, PersistentVolume, PersistentVolumeClaim, Pod, ServiceAccount,
};
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams};
use serde_json::json;

async fn cluster() -> Cluster {
    cluster_with(|_| {}).await.0
}

async fn cluster_with(adjust: impl FnOnce(&mut KubeletConfig)) -> (Cluster, Arc<FakeApi>) {
    init_tracing();
    let server = FakeServer::start().await;
    let api = server.api.clone();
    let client = server.client();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.resync = Duration::from_millis(500);
    adjust(&mut cfg);
    let kubelet = Kubelet::start(client.clone(), cfg).await.unwrap();
    let cluster = Cluster {
        kubelet,
        client,
        server: Box::new(server),
        dir,
    };
    (cluster, api)
}

/// The switches the harness sets against a real control plane (its
/// scheduler binds pods, its controllers keep Endpoints and Deployments).
fn real_control_plane(cfg: &mut KubeletConfig) {
    cfg.controllers.scheduler = false;
    cfg.controllers.endpoints = false;
    cfg.controllers.deployments = false;
    cfg.token_requests = true;
    cfg.persistent_volumes = true;
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

#[tokio::test(flavor = "multi_thread")]
async fn node_is_registered_and_its_lease_renewed() {
    if !privileged() {
        return;
    }
    let (c, _) = cluster_with(|cfg| {
        real_control_plane(cfg);
        cfg.node.lease_renew = Duration::from_millis(200);
        cfg.node.status_heartbeat = Duration::from_millis(300);
    })
    .await;
    let nodes: Api<Node> = Api::all(c.client.clone());
    let node = eventually_async("the Node, Ready", 20, || async {
        let node = nodes.get_opt("capstan-e2e").await.ok()??;
        let ready = node
            .status
            .as_ref()?
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        ready.then_some(node)
    })
    .await;
    let cfg = c.kubelet.runtime().config();
    let spec = node.spec.clone().unwrap();
    assert_eq!(spec.pod_cidr, Some(cfg.pod_cidr.to_string()));
    let status = node.status.clone().unwrap();
    assert_eq!(status.capacity.unwrap()["pods"].0, "2000");
    let addresses = status.addresses.unwrap();
    assert_eq!(addresses[0].type_, "InternalIP");
    assert_eq!(addresses[0].address, cfg.node_ip.to_string());
    assert_eq!(status.node_info.unwrap().kubelet_version, "v1.37.2");
    let labels = node.metadata.labels.clone().unwrap();
    assert_eq!(labels["kubernetes.io/hostname"], "capstan-e2e");

    let leases: Api<Lease> = Api::namespaced(c.client.clone(), "kube-node-lease");
    let renewed = |l: &Lease| {
        l.spec
            .as_ref()
            .and_then(|s| s.renew_time.clone())
            .unwrap()
            .0
    };
    let lease = eventually_async("the node Lease", 20, || async {
        leases.get_opt("capstan-e2e").await.ok()?
    })
    .await;
    let spec = lease.spec.clone().unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some("capstan-e2e"));
    assert_eq!(spec.lease_duration_seconds, Some(40));
    let owner = &lease.metadata.owner_references.clone().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.uid.as_str()),
        ("Node", node.metadata.uid.as_deref().unwrap())
    );
    let first = renewed(&lease);
    eventually_async("the Lease to be renewed", 10, || async {
        let l = leases.get("capstan-e2e").await.ok()?;
        (renewed(&l) > first).then_some(())
    })
    .await;
    // The Ready condition's heartbeat moves too.
    let heartbeat = |n: &Node| {
        n.status
            .as_ref()?
            .conditions
            .as_ref()?
            .iter()
            .find(|c| c.type_ == "Ready")?
            .last_heartbeat_time
            .clone()
    };
    let before = heartbeat(&node).unwrap().0;
    eventually_async("a Ready heartbeat", 10, || async {
        let n = nodes.get("capstan-e2e").await.ok()?;
        (heartbeat(&n)?.0 > before).then_some(())
    })
    .await;

    // Deleted (and its Lease with it): registered again.
    nodes
        .delete("capstan-e2e", &DeleteParams::default())
        .await
        .unwrap();
    eventually_async("the Node back", 20, || async {
        let n = nodes.get_opt("capstan-e2e").await.ok()??;
        (n.metadata.uid != node.metadata.uid).then_some(())
    })
    .await;
}

/// A pod as a real API server stores it: bound by the scheduler, its
/// service account's token volume injected by the ServiceAccount admission.
fn api_pod(name: &str, node: &str, command: &str) -> serde_json::Value {
    let sa = "/var/run/secrets/kubernetes.io/serviceaccount";
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"nodeName": node, "serviceAccountName": "app",
            "containers": [{"name": "c", "image": "debian", "command": ["bash", "-c", command],
                "volumeMounts": [{"name": "kube-api-access-x7k2p", "mountPath": sa, "readOnly": true}]}],
            "volumes": [{"name": "kube-api-access-x7k2p", "projected": {"defaultMode": 420, "sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}
            ]}}]}
    })
}

fn waiting_reason(p: &Pod) -> Option<String> {
    p.status.as_ref()?.container_statuses.as_ref()?[0]
        .state
        .as_ref()?
        .waiting
        .as_ref()?
        .reason
        .clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn service_account_tokens_are_requested_projected_and_refreshed() {
    if !privileged() {
        return;
    }
    let (c, api) = cluster_with(real_control_plane).await;
    api.set_token_lifetime(Duration::from_secs(3));
    let script = "d=/var/run/secrets/kubernetes.io/serviceaccount; while :; do echo \"ns=$(cat $d/namespace) ca=$(cat $d/ca.crt) token=$(cat $d/token)\"; sleep 0.3; done";
    let pod: Pod = create(&c.client, "ns", api_pod("app-1", "capstan-e2e", script)).await;
    let uid = pod.metadata.uid.clone().unwrap();
    // A pod of another node is none of ours.
    let _: Pod = create(&c.client, "ns", api_pod("elsewhere", "node-2", script)).await;

    // No ServiceAccount, no kube-root-ca.crt yet: the pod waits, as with a kubelet.
    let p = eventually_async("the pod waiting for its volume", 20, || async {
        get_pod(&c.client, "app-1")
            .await
            .filter(|p| waiting_reason(p).as_deref() == Some("ContainerCreating"))
    })
    .await;
    assert_eq!(p.status.unwrap().phase.as_deref(), Some("Pending"));
    let _: ServiceAccount = create(
        &c.client,
        "ns",
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "app"}}),
    )
    .await;
    eventually("a TokenRequest", 20, || {
        (!api.token_requests().is_empty()).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        waiting_reason(&get_pod(&c.client, "app-1").await.unwrap()).as_deref(),
        Some("ContainerCreating"),
        "still waiting for kube-root-ca.crt"
    );
    let _: ConfigMap = create(
        &c.client,
        "ns",
        json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "kube-root-ca.crt"}, "data": {"ca.crt": "THE-CA"}}),
    )
    .await;
    eventually_async("the pod Running", 30, || async {
        get_pod(&c.client, "app-1")
            .await
            .filter(|p| scenarios::phase_of(p) == "Running")
    })
    .await;

    let (namespace, account, request) = api.token_requests()[0].clone();
    assert_eq!((namespace.as_str(), account.as_str()), ("ns", "app"));
    assert_eq!(
        request["spec"],
        json!({"audiences": [], "expirationSeconds": 3607,
               "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": "app-1", "uid": uid}})
    );
    let rt = c.kubelet.runtime();
    let first = eventually("the pod's own token", 20, || {
        let logs = rt.logs("ns", "app-1", "c", false).ok()?;
        let line = logs.lines().last()?.to_string();
        line.contains("ns=ns ca=THE-CA token=token-ns-app-")
            .then_some(line)
    })
    .await;
    // Issued for 3 s: a new one before 80% of that has passed, in the file.
    let file = rt
        .pod_dir("ns", "app-1")
        .unwrap()
        .join("volumes/kube-api-access-x7k2p/token");
    eventually("a refreshed token in the file", 20, || {
        let now = std::fs::read_to_string(&file).ok()?;
        (!first.ends_with(&now)).then_some(())
    })
    .await;
    eventually("the container to see the new token", 10, || {
        let logs = rt.logs("ns", "app-1", "c", false).ok()?;
        (logs.lines().last()? != first).then_some(())
    })
    .await;
    assert!(rt.status("ns", "elsewhere").is_none());
    let other = get_pod(&c.client, "elsewhere").await.unwrap();
    assert!(other.status.as_ref().is_none_or(|s| s.pod_ip.is_none()));
    assert!(
        api.token_requests()
            .iter()
            .all(|(_, _, r)| r["spec"]["boundObjectRef"]["name"] == "app-1")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn claims_get_persistent_volumes() {
    if !privileged() {
        return;
    }
    let (c, _) = cluster_with(real_control_plane).await;
    let claim: PersistentVolumeClaim = create(
        &c.client,
        "ns",
        json!({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": "data"},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "standard",
                     "resources": {"requests": {"storage": "1Gi"}}}
        }),
    )
    .await;
    let uid = claim.metadata.uid.clone().unwrap();
    let name = format!("pvc-{uid}");
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(c.client.clone(), "ns");
    let volumes: Api<PersistentVolume> = Api::all(c.client.clone());
    let pv = eventually_async("the PersistentVolume", 20, || async {
        volumes.get_opt(&name).await.ok()?
    })
    .await;
    let spec = pv.spec.clone().unwrap();
    assert_eq!(spec.capacity.unwrap()["storage"].0, "1Gi");
    assert_eq!(spec.storage_class_name.as_deref(), Some("standard"));
    assert_eq!(
        spec.persistent_volume_reclaim_policy.as_deref(),
        Some("Delete")
    );
    assert_eq!(spec.claim_ref.unwrap().uid.as_deref(), Some(uid.as_str()));
    let dir = c.kubelet.runtime().claim_dir("ns", "data");
    assert_eq!(spec.host_path.unwrap().path, dir.to_string_lossy());
    eventually_async("spec.volumeName", 20, || async {
        let c = claims.get("data").await.ok()?;
        (c.spec?.volume_name? == name).then_some(())
    })
    .await;
    // The kubelet leaves Bound to the PersistentVolume controller; play it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_ne!(
        scenarios::claim_phase(&claims.get("data").await.unwrap()),
        "Bound"
    );
    claims
        .patch_status(
            "data",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {
            "phase": "Bound", "accessModes": ["ReadWriteOnce"], "capacity": {"storage": "1Gi"}}})),
        )
        .await
        .unwrap();

    // Expansion: the volume grows, then the claim's capacity.
    claims
        .patch(
            "data",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"resources": {"requests": {"storage": "2Gi"}}}})),
        )
        .await
        .unwrap();
    eventually_async("the volume and claim grown", 20, || async {
        let pv = volumes.get(&name).await.ok()?;
        let claim = claims.get("data").await.ok()?;
        let pv_cap = pv.spec?.capacity?.get("storage")?.0.clone();
        let claim_cap = claim.status?.capacity?.get("storage")?.0.clone();
        (pv_cap == "2Gi" && claim_cap == "2Gi").then_some(())
    })
    .await;

    claims
        .delete("data", &DeleteParams::default())
        .await
        .unwrap();
    eventually_async("the volume deleted with its claim", 20, || async {
        volumes.get_opt(&name).await.ok()?.is_none().then_some(())
    })
    .await;
}

//! The Node: registered as a kubelet does (created with labels, addresses,
//! capacity, conditions, node info and `spec.podCIDR`), then kept alive by
//! renewing its Lease in `kube-node-lease` and refreshing the Ready
//! condition's heartbeat, so a node lifecycle controller never taints it.
//! Registered whether or not this kubelet also schedules pods.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{
    DaemonEndpoint, Namespace, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeSpec,
    NodeStatus, NodeSystemInfo,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, OwnerReference, Time};
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use tokio::time::Instant;

use crate::config::KubeletConfig;

pub(crate) const LEASE_NAMESPACE: &str = "kube-node-lease";
/// How soon a failed registration or write is retried.
const RETRY: Duration = Duration::from_secs(2);

/// Facts about the host the Node reports in `status.nodeInfo`.
#[derive(Debug, Clone, Default)]
pub(crate) struct HostFacts {
    pub kernel_version: String,
    pub machine_id: String,
    pub boot_id: String,
}

impl HostFacts {
    pub(crate) fn read() -> HostFacts {
        let read = |path: &str| {
            std::fs::read_to_string(path)
                .map(|s| s.trim().to_string())
                .unwrap_or_default()
        };
        HostFacts {
            kernel_version: read("/proc/sys/kernel/osrelease"),
            machine_id: read("/etc/machine-id"),
            boot_id: read("/proc/sys/kernel/random/boot_id"),
        }
    }
}

/// `kubernetes.io/arch` of this build (Go's names).
fn architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

fn node_labels(cfg: &KubeletConfig) -> BTreeMap<String, String> {
    let mut labels = cfg.node.labels.clone();
    labels.insert("kubernetes.io/hostname".into(), cfg.node_name.clone());
    labels.insert("kubernetes.io/os".into(), "linux".into());
    labels.insert("kubernetes.io/arch".into(), architecture().into());
    labels
}

fn condition(
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
    since: &Time,
    now: &Time,
) -> NodeCondition {
    NodeCondition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: Some(reason.to_string()),
        message: Some(message.to_string()),
        last_heartbeat_time: Some(now.clone()),
        last_transition_time: Some(since.clone()),
    }
}

/// The Node's status: Ready since `since`, heartbeat `now`.
pub(crate) fn node_status(
    cfg: &KubeletConfig,
    host: &HostFacts,
    since: &Time,
    now: &Time,
) -> NodeStatus {
    let capacity: BTreeMap<String, Quantity> = cfg
        .node
        .capacity
        .iter()
        .map(|(k, v)| (k.clone(), Quantity(v.clone())))
        .collect();
    let c = |type_, status, reason, message| condition(type_, status, reason, message, since, now);
    NodeStatus {
        addresses: Some(vec![
            NodeAddress {
                type_: "InternalIP".into(),
                address: cfg.node_ip.to_string(),
            },
            NodeAddress {
                type_: "Hostname".into(),
                address: cfg.node_name.clone(),
            },
        ]),
        allocatable: Some(capacity.clone()),
        capacity: Some(capacity),
        conditions: Some(vec![
            c(
                "MemoryPressure",
                "False",
                "KubeletHasSufficientMemory",
                "kubelet has sufficient memory available",
            ),
            c(
                "DiskPressure",
                "False",
                "KubeletHasNoDiskPressure",
                "kubelet has no disk pressure",
            ),
            c(
                "PIDPressure",
                "False",
                "KubeletHasSufficientPID",
                "kubelet has sufficient PID available",
            ),
            c(
                "Ready",
                "True",
                "KubeletReady",
                "capstan e2e process kubelet is posting ready status",
            ),
        ]),
        node_info: Some(NodeSystemInfo {
            architecture: architecture().to_string(),
            boot_id: host.boot_id.clone(),
            container_runtime_version: format!("e2e://{}", env!("CARGO_PKG_VERSION")),
            kernel_version: host.kernel_version.clone(),
            kube_proxy_version: String::new(),
            kubelet_version: cfg.node.kubelet_version.clone(),
            machine_id: host.machine_id.clone(),
            operating_system: "linux".to_string(),
            os_image: "capstan e2e process kubelet".to_string(),
            system_uuid: host.machine_id.clone(),
            ..Default::default()
        }),
        daemon_endpoints: cfg.serving.as_ref().map(|s| NodeDaemonEndpoints {
            kubelet_endpoint: Some(DaemonEndpoint {
                port: i32::from(s.port),
            }),
        }),
        ..Default::default()
    }
}

/// The Node as registered (status included, as a kubelet creates it).
pub(crate) fn node_object(cfg: &KubeletConfig, host: &HostFacts, since: &Time) -> Node {
    let cidr = cfg.pod_cidr.to_string();
    Node {
        metadata: ObjectMeta {
            name: Some(cfg.node_name.clone()),
            labels: Some(node_labels(cfg)),
            ..Default::default()
        },
        spec: Some(NodeSpec {
            pod_cidr: Some(cidr.clone()),
            pod_cidrs: Some(vec![cidr]),
            ..Default::default()
        }),
        status: Some(node_status(cfg, host, since, since)),
    }
}

/// The node's Lease, renewed at `now`, owned by the Node (uid `node_uid`).
pub(crate) fn node_lease(cfg: &KubeletConfig, node_uid: &str, now: &MicroTime) -> Lease {
    Lease {
        metadata: ObjectMeta {
            name: Some(cfg.node_name.clone()),
            namespace: Some(LEASE_NAMESPACE.to_string()),
            owner_references: Some(vec![OwnerReference {
                api_version: "v1".into(),
                kind: "Node".into(),
                name: cfg.node_name.clone(),
                uid: node_uid.to_string(),
                ..Default::default()
            }]),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(cfg.node_name.clone()),
            lease_duration_seconds: Some(
                i32::try_from(cfg.node.lease_duration.as_secs()).unwrap_or(40),
            ),
            renew_time: Some(now.clone()),
            ..Default::default()
        }),
    }
}

fn api_error_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

/// Creates the Node if absent (else completes labels and `spec.podCIDR`) and
/// writes its status; returns its uid.
async fn register(
    nodes: &Api<Node>,
    cfg: &KubeletConfig,
    host: &HostFacts,
    since: &Time,
) -> Result<String, kube::Error> {
    let node = match nodes
        .create(&PostParams::default(), &node_object(cfg, host, since))
        .await
    {
        Ok(node) => node,
        Err(kube::Error::Api(s)) if s.is_already_exists() => {
            let existing = nodes.get(&cfg.node_name).await?;
            let has_cidr = existing
                .spec
                .as_ref()
                .and_then(|s| s.pod_cidr.as_deref())
                .is_some_and(|c| !c.is_empty());
            let mut patch = serde_json::json!({"metadata": {"labels": node_labels(cfg)}});
            if !has_cidr {
                let cidr = cfg.pod_cidr.to_string();
                patch["spec"] = serde_json::json!({"podCIDR": cidr, "podCIDRs": [cidr]});
            }
            nodes
                .patch(
                    &cfg.node_name,
                    &PatchParams::default(),
                    &Patch::Merge(patch),
                )
                .await?
        }
        Err(e) => return Err(e),
    };
    // Also when created: an API server may drop the status of a create.
    write_status(nodes, cfg, host, since).await?;
    tracing::info!(node = %cfg.node_name, "node registered");
    Ok(node.metadata.uid.unwrap_or_default())
}

async fn write_status(
    nodes: &Api<Node>,
    cfg: &KubeletConfig,
    host: &HostFacts,
    since: &Time,
) -> Result<(), kube::Error> {
    let status = node_status(cfg, host, since, &crate::pod::status::now());
    nodes
        .patch_status(
            &cfg.node_name,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({ "status": status })),
        )
        .await
        .map(drop)
}

async fn ensure_lease_namespace(client: &Client) {
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(LEASE_NAMESPACE.to_string()),
            ..Default::default()
        },
        ..Default::default()
    };
    match Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.is_already_exists() => {}
        Err(e) => tracing::debug!(error = %e, "cannot create namespace {LEASE_NAMESPACE}"),
    }
}

/// Renews the Lease (creating it, and its namespace, when missing).
async fn renew_lease(
    client: &Client,
    cfg: &KubeletConfig,
    node_uid: &str,
) -> Result<(), kube::Error> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), LEASE_NAMESPACE);
    let lease = node_lease(cfg, node_uid, &MicroTime(jiff::Timestamp::now()));
    let patch = serde_json::json!({"metadata": {"ownerReferences": lease.metadata.owner_references}, "spec": lease.spec});
    match leases
        .patch(
            &cfg.node_name,
            &PatchParams::default(),
            &Patch::Merge(patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.is_not_found() => {
            ensure_lease_namespace(client).await;
            match leases.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(()),
                // Created meanwhile: renewed on the next round.
                Err(kube::Error::Api(s)) if s.is_already_exists() => Ok(()),
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e),
    }
}

/// Registers the Node, then renews its Lease and heartbeat until cancelled;
/// registers it again if it is deleted.
pub(super) async fn run(client: Client, cfg: KubeletConfig) {
    let host = HostFacts::read();
    let since = crate::pod::status::now();
    let nodes: Api<Node> = Api::all(client.clone());
    ensure_lease_namespace(&client).await;
    let mut node_uid: Option<String> = None;
    let mut next_lease = Instant::now();
    let mut next_status = Instant::now();
    loop {
        let uid = match &node_uid {
            Some(uid) => uid.clone(),
            None => match register(&nodes, &cfg, &host, &since).await {
                Ok(uid) => {
                    next_status = Instant::now() + cfg.node.status_heartbeat;
                    next_lease = Instant::now();
                    node_uid = Some(uid.clone());
                    uid
                }
                Err(e) => {
                    tracing::debug!(error = %e, "cannot register the Node (retrying)");
                    tokio::time::sleep(RETRY).await;
                    continue;
                }
            },
        };
        let now = Instant::now();
        if now >= next_lease {
            next_lease = match renew_lease(&client, &cfg, &uid).await {
                Ok(()) => now + cfg.node.lease_renew,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot renew the node Lease (retrying)");
                    now + RETRY.min(cfg.node.lease_renew)
                }
            };
        }
        if now >= next_status {
            next_status = match write_status(&nodes, &cfg, &host, &since).await {
                Ok(()) => now + cfg.node.status_heartbeat,
                Err(e) if api_error_code(&e) == Some(404) => {
                    tracing::warn!(node = %cfg.node_name, "the Node was deleted: registering it again");
                    node_uid = None;
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot write the Node status (retrying)");
                    now + RETRY.min(cfg.node.status_heartbeat)
                }
            };
        }
        tokio::time::sleep_until(next_lease.min(next_status)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::images::ImageTable;
    use serde_json::json;

    fn config() -> KubeletConfig {
        KubeletConfig::new(
            "/tmp/unused",
            "10.244.0.0/16".parse().unwrap(),
            "10.96.0.0/16".parse().unwrap(),
            ImageTable::capstan_defaults("/nonexistent"),
        )
    }

    #[test]
    fn node_object_is_ready_with_addresses_capacity_and_cidr() {
        let cfg = config();
        let host = HostFacts {
            kernel_version: "6.1.0".into(),
            machine_id: "m".into(),
            boot_id: "b".into(),
        };
        let since = Time("2026-01-01T00:00:00Z".parse().unwrap());
        let node = serde_json::to_value(node_object(&cfg, &host, &since)).unwrap();
        assert_eq!(node["metadata"]["name"], "capstan-e2e");
        assert_eq!(
            node["metadata"]["labels"]["kubernetes.io/hostname"],
            "capstan-e2e"
        );
        assert_eq!(node["metadata"]["labels"]["kubernetes.io/os"], "linux");
        assert!(node["metadata"]["labels"]["kubernetes.io/arch"].is_string());
        assert_eq!(
            node["spec"],
            json!({"podCIDR": "10.244.0.0/16", "podCIDRs": ["10.244.0.0/16"]})
        );
        let status = &node["status"];
        assert_eq!(
            status["addresses"],
            json!([{"type": "InternalIP", "address": "10.244.0.1"}, {"type": "Hostname", "address": "capstan-e2e"}])
        );
        assert_eq!(status["capacity"]["pods"], "2000");
        assert_eq!(status["allocatable"], status["capacity"]);
        let conditions = status["conditions"].as_array().unwrap();
        let find = |t: &str| conditions.iter().find(|c| c["type"] == t).unwrap().clone();
        assert_eq!(find("Ready")["status"], "True");
        assert_eq!(find("Ready")["reason"], "KubeletReady");
        for t in ["MemoryPressure", "DiskPressure", "PIDPressure"] {
            assert_eq!(find(t)["status"], "False", "{t}");
        }
        assert_eq!(status["nodeInfo"]["kubeletVersion"], "v1.37.2");
        assert_eq!(status["nodeInfo"]["operatingSystem"], "linux");
        assert_eq!(status["nodeInfo"]["kernelVersion"], "6.1.0");

        // A heartbeat moves lastHeartbeatTime, not lastTransitionTime.
        let later = Time("2026-01-01T00:00:30Z".parse().unwrap());
        let status = node_status(&cfg, &host, &since, &later);
        let ready = status
            .conditions
            .unwrap()
            .into_iter()
            .find(|c| c.type_ == "Ready")
            .unwrap();
        assert_eq!(ready.last_heartbeat_time, Some(later));
        assert_eq!(ready.last_transition_time, Some(since));
    }

    #[test]
    fn lease_is_held_by_the_node_and_owned_by_it() {
        let cfg = config();
        let now = MicroTime("2026-01-01T00:00:00.123456Z".parse().unwrap());
        let lease = serde_json::to_value(node_lease(&cfg, "node-uid", &now)).unwrap();
        assert_eq!(lease["metadata"]["namespace"], "kube-node-lease");
        assert_eq!(lease["metadata"]["name"], "capstan-e2e");
        assert_eq!(
            lease["metadata"]["ownerReferences"],
            json!([{"apiVersion": "v1", "kind": "Node", "name": "capstan-e2e", "uid": "node-uid"}])
        );
        assert_eq!(
            lease["spec"],
            json!({"holderIdentity": "capstan-e2e", "leaseDurationSeconds": 40, "renewTime": "2026-01-01T00:00:00.123456Z"})
        );
    }
}

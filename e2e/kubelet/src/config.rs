//! Configuration of a process kubelet instance.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;

use crate::images::ImageTable;
use crate::ipam::Cidr;
use crate::users::IdMapping;

/// Annotation selecting simulated mode for one pod (`"true"` / `"false"`).
pub const SIMULATED_ANNOTATION: &str = "e2e.capstan.dev/simulated";

/// How pods reach the API server (env `KUBERNETES_SERVICE_HOST`/`PORT`) and
/// the files of their service account directory.
#[derive(Debug, Clone)]
pub struct ApiServerAccess {
    pub host: IpAddr,
    pub port: u16,
    /// Bearer token written to `/var/run/secrets/kubernetes.io/serviceaccount/token`
    /// and to projected `serviceAccountToken` files (unused with
    /// [`KubeletConfig::token_requests`]).
    pub token: String,
    /// PEM of the API server's CA, written to `ca.crt` there.
    pub ca_crt: String,
}

/// Restart back-off of crashed containers (the kubelet's defaults are 10 s
/// doubling to 300 s, reset after 10 min of running).
#[derive(Debug, Clone, Copy)]
pub struct RestartBackoff {
    pub initial: Duration,
    pub max: Duration,
    pub reset_after: Duration,
}

impl Default for RestartBackoff {
    fn default() -> Self {
        RestartBackoff {
            initial: Duration::from_secs(10),
            max: Duration::from_secs(300),
            reset_after: Duration::from_secs(600),
        }
    }
}

/// Which API-facing controllers [`crate::Kubelet::start`] runs besides the
/// pod runtime (turn off what the API server under test already provides).
#[derive(Debug, Clone, Copy)]
pub struct Controllers {
    /// Service addresses, proxies, `/etc/hosts` names.
    pub services: bool,
    /// Write `Endpoints` objects for Services with a selector.
    pub endpoints: bool,
    pub deployments: bool,
    pub claim_binder: bool,
    /// Bind unscheduled pods to this node (`pods/binding`). Without it only
    /// pods whose `spec.nodeName` is this node run. The Node is registered
    /// either way.
    pub scheduler: bool,
}

impl Default for Controllers {
    fn default() -> Self {
        Controllers {
            services: true,
            endpoints: true,
            deployments: true,
            claim_binder: true,
            scheduler: true,
        }
    }
}

/// The Node object the kubelet registers (always) and keeps alive, as a
/// kubelet does: a `coordination.k8s.io/v1` Lease in `kube-node-lease`
/// renewed every `lease_renew`, and the Ready condition's `lastHeartbeatTime`
/// refreshed every `status_heartbeat` (a node lifecycle controller taints a
/// node whose lease and status both go stale for its grace period, 40–50 s).
#[derive(Debug, Clone)]
pub struct NodeSettings {
    /// `status.capacity` and `status.allocatable`. Large by default: a
    /// scheduler must not refuse pods for resources the processes do not
    /// really reserve (resource limits are not enforced).
    pub capacity: BTreeMap<String, String>,
    /// Extra labels besides `kubernetes.io/hostname`, `kubernetes.io/os` and
    /// `kubernetes.io/arch`.
    pub labels: BTreeMap<String, String>,
    /// Reported as `status.nodeInfo.kubeletVersion`.
    pub kubelet_version: String,
    pub lease_renew: Duration,
    /// `spec.leaseDurationSeconds` of the Lease.
    pub lease_duration: Duration,
    pub status_heartbeat: Duration,
}

impl Default for NodeSettings {
    fn default() -> Self {
        let capacity = [
            ("cpu", "1000"),
            ("memory", "4Ti"),
            ("pods", "2000"),
            ("ephemeral-storage", "10Ti"),
        ];
        NodeSettings {
            capacity: capacity
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            labels: BTreeMap::new(),
            kubelet_version: "v1.37.2".to_string(),
            lease_renew: Duration::from_secs(10),
            lease_duration: Duration::from_secs(40),
            status_heartbeat: Duration::from_secs(20),
        }
    }
}

#[derive(Debug, Clone)]
pub struct KubeletConfig {
    pub node_name: String,
    /// `status.hostIP`; the source address of probes. Never handed to a pod.
    pub node_ip: Ipv4Addr,
    pub pod_cidr: Cidr,
    pub service_cidr: Cidr,
    pub cluster_domain: String,
    /// Pod directories, logs, claim volumes.
    pub state_dir: PathBuf,
    pub images: ImageTable,
    pub ids: IdMapping,
    pub api_server: Option<ApiServerAccess>,
    /// Run every pod simulated (Running/Ready with an IP, no processes).
    pub simulated: bool,
    pub backoff: RestartBackoff,
    pub controllers: Controllers,
    /// How often the controllers re-check everything besides watch events.
    pub resync: Duration,
    pub node: NodeSettings,
    /// Projected `serviceAccountToken` sources get a token of the pod's own
    /// ServiceAccount from the TokenRequest API (bound to the pod, refreshed
    /// at 80% of its lifetime), and the kubelet writes no service account
    /// directory of its own (the API server's ServiceAccount admission plugin
    /// injects a `kube-api-access-*` volume instead). Needs an API server
    /// serving `serviceaccounts/token`; otherwise every such source gets
    /// [`ApiServerAccess::token`].
    pub token_requests: bool,
    /// The claim binder binds claims through PersistentVolume objects (a
    /// hostPath volume of the claim's directory, `claimRef`, Delete policy)
    /// and the claim's `spec.volumeName`, leaving `Bound` to the API server's
    /// PersistentVolume controller (kube-controller-manager); otherwise it
    /// writes the claim's status itself and no PersistentVolume exists.
    pub persistent_volumes: bool,
    /// The kubelet's HTTPS server on `node_ip` (port-forward only), its
    /// port reported as the Node's `status.daemonEndpoints.kubeletEndpoint.port`
    /// so the API server can proxy `pods/portforward` to it. `None`: no
    /// server, no port reported.
    pub serving: Option<crate::portforward::KubeletServing>,
}

impl KubeletConfig {
    /// Defaults: node `capstan-e2e`, node IP = first address of `pod_cidr`,
    /// `cluster.local`, non-root ids mapped to the host `postgres` user (root if
    /// there is none), the kubelet's back-off.
    pub fn new(
        state_dir: impl Into<PathBuf>,
        pod_cidr: Cidr,
        service_cidr: Cidr,
        images: ImageTable,
    ) -> Self {
        let ids = IdMapping::host_user("postgres").unwrap_or(IdMapping {
            default_uid: 0,
            default_gid: 0,
            uids: Default::default(),
            gids: Default::default(),
        });
        KubeletConfig {
            node_name: "capstan-e2e".to_string(),
            node_ip: pod_cidr.host(1).unwrap_or(Ipv4Addr::LOCALHOST),
            pod_cidr,
            service_cidr,
            cluster_domain: "cluster.local".to_string(),
            state_dir: state_dir.into(),
            images,
            ids,
            api_server: None,
            simulated: false,
            backoff: RestartBackoff::default(),
            controllers: Controllers::default(),
            resync: Duration::from_secs(2),
            node: NodeSettings::default(),
            token_requests: false,
            persistent_volumes: false,
            serving: None,
        }
    }

    /// Whether `pod` runs simulated: its [`SIMULATED_ANNOTATION`], else
    /// [`KubeletConfig::simulated`].
    pub fn runs_simulated(&self, pod: &Pod) -> bool {
        let annotation = pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(SIMULATED_ANNOTATION));
        match annotation.map(String::as_str) {
            Some("true") => true,
            Some("false") => false,
            _ => self.simulated,
        }
    }
}

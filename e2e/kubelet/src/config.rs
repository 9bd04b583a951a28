//! Configuration of a process kubelet instance.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Duration;

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
    /// Bearer token written to `/var/run/secrets/kubernetes.io/serviceaccount/token`.
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
    /// Bind unscheduled pods to this node (`pods/binding`) and create the Node.
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
        }
    }
}

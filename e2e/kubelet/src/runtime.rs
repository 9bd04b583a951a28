//! The node: pods as sandboxes of processes, their addresses, volumes and
//! status, plus the fault hooks e2e scenarios use. Independent of any API
//! server: the API-facing controller ([`crate::kubelet`]) feeds it pods and
//! writes back the statuses it reports.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, PodStatus};
use kube::ResourceExt;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::config::KubeletConfig;
use crate::dns::{DnsTable, Resolver};
use crate::ipam::{IpPool, IpamError};
use crate::objects::ObjectSource;
use crate::pod::Worker;
use crate::sys::cgroup::{Cgroup, CgroupRoot};
use crate::sys::nft::{NetError, Network};
use crate::sys::{Signal, procs, send_signal};

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("cannot create the kubelet state directory {path}: {source}")]
    StateDir { path: PathBuf, source: io::Error },
    #[error("node IP {0} must lie outside the pod range {1} or be its first address")]
    NodeIp(Ipv4Addr, crate::ipam::Cidr),
}

#[derive(Debug, thiserror::Error)]
pub enum FaultError {
    #[error("pod {0} is not running on this kubelet")]
    NoSuchPod(String),
    #[error("container {container:?} of pod {pod} is not running")]
    NotRunning { pod: String, container: String },
    #[error("no process of pod {pod} has a command line containing {pattern:?}")]
    NoMatch { pod: String, pattern: String },
    #[error("pod {0} has no address yet")]
    NoAddress(String),
    #[error("cannot signal process {pid}: {source}")]
    Signal { pid: i32, source: io::Error },
    #[error(transparent)]
    Network(#[from] NetError),
}

/// What the runtime reports to the API-facing side.
#[derive(Debug, Clone)]
pub enum PodEvent {
    Status {
        namespace: String,
        name: String,
        uid: String,
        status: Box<PodStatus>,
    },
    /// All containers are gone and resources released: confirm the deletion
    /// (delete with grace 0), as a kubelet does.
    Terminated {
        namespace: String,
        name: String,
        uid: String,
    },
}

/// A container's live process, for fault hooks.
#[derive(Debug, Clone)]
pub(crate) struct LiveContainer {
    pub pid: i32,
    pub cgroup: Cgroup,
}

/// Per-pod state shared between the pod's worker and the fault hooks.
#[derive(Debug, Default)]
pub(crate) struct PodShared {
    pub ip: Option<Ipv4Addr>,
    pub dir: Option<PathBuf>,
    pub containers: BTreeMap<String, LiveContainer>,
    pub frozen: bool,
    pub claims: Vec<(String, String)>,
}

struct PodEntry {
    namespace: String,
    name: String,
    shared: Arc<Mutex<PodShared>>,
    pod_tx: watch::Sender<Pod>,
    removed_tx: watch::Sender<bool>,
    status_rx: watch::Receiver<PodStatus>,
    task: JoinHandle<()>,
}

pub(crate) struct Inner {
    pub config: KubeletConfig,
    pub objects: Arc<dyn ObjectSource>,
    pub cgroup: Result<Cgroup, String>,
    pub network: Network,
    pub resolver: Resolver,
    pub events: mpsc::UnboundedSender<PodEvent>,
    pub objects_gen: watch::Sender<u64>,
    pub dns_gen: watch::Sender<u64>,
    pub node_cpus: f64,
    pub node_memory: f64,
    pod_ips: Mutex<IpPool>,
    pods: Mutex<HashMap<String, PodEntry>>,
    finished: Mutex<BTreeSet<String>>,
    deleted_claims: Mutex<BTreeSet<(String, String)>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Cheap handle to the node; every operation of [`Runtime`] is here.
#[derive(Clone)]
pub struct RuntimeHandle {
    pub(crate) inner: Arc<Inner>,
}

/// Owns the node: dropping it kills every container process at once and
/// removes the kubelet's cgroups and nftables table.
pub struct Runtime {
    handle: RuntimeHandle,
}

impl std::ops::Deref for Runtime {
    type Target = RuntimeHandle;

    fn deref(&self) -> &RuntimeHandle {
        &self.handle
    }
}

static INSTANCES: AtomicU64 = AtomicU64::new(0);

fn node_memory() -> f64 {
    fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        })
        .map(|kib| kib * 1024.0)
        .unwrap_or(1024.0 * 1024.0 * 1024.0)
}

impl Runtime {
    /// Starts an empty node. Pods come through [`RuntimeHandle::sync_pod`];
    /// status changes and deletion confirmations arrive on the receiver.
    pub fn new(
        config: KubeletConfig,
        objects: Arc<dyn ObjectSource>,
    ) -> Result<(Runtime, mpsc::UnboundedReceiver<PodEvent>), RuntimeError> {
        for dir in [
            config.state_dir.join("pods"),
            config.state_dir.join("claims"),
        ] {
            fs::create_dir_all(&dir).map_err(|source| RuntimeError::StateDir {
                path: dir.clone(),
                source,
            })?;
        }
        let mut pod_ips = IpPool::new(config.pod_cidr);
        if config.pod_cidr.contains(config.node_ip) {
            if Some(config.node_ip) != config.pod_cidr.host(1) {
                return Err(RuntimeError::NodeIp(config.node_ip, config.pod_cidr));
            }
            pod_ips.reserve(config.node_ip);
        }
        let instance = format!(
            "{}-{}",
            std::process::id(),
            INSTANCES.fetch_add(1, Ordering::Relaxed)
        );
        let cgroup = CgroupRoot::discover()
            .and_then(|root| {
                root.sweep_stale();
                root.kubelet_group(&instance)
            })
            .map_err(|e| e.to_string());
        if let Err(why) = &cgroup {
            tracing::warn!(%why, "no cgroup v2: only simulated pods can run");
        }
        let network = Network::new(&instance, config.node_ip);
        let (events, events_rx) = mpsc::unbounded_channel();
        let inner = Inner {
            objects,
            cgroup,
            network,
            resolver: Resolver::default(),
            events,
            objects_gen: watch::Sender::new(0),
            dns_gen: watch::Sender::new(0),
            node_cpus: std::thread::available_parallelism()
                .map(|n| n.get() as f64)
                .unwrap_or(1.0),
            node_memory: node_memory(),
            pod_ips: Mutex::new(pod_ips),
            pods: Mutex::new(HashMap::new()),
            finished: Mutex::new(BTreeSet::new()),
            deleted_claims: Mutex::new(BTreeSet::new()),
            config,
        };
        inner
            .resolver
            .set(DnsTable::new(&inner.config.cluster_domain));
        Ok((
            Runtime {
                handle: RuntimeHandle {
                    inner: Arc::new(inner),
                },
            },
            events_rx,
        ))
    }

    pub fn handle(&self) -> RuntimeHandle {
        self.handle.clone()
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.handle.kill_everything();
    }
}

impl RuntimeHandle {
    pub fn config(&self) -> &KubeletConfig {
        &self.inner.config
    }

    /// Creates or updates the pod (keyed by `metadata.uid`).
    pub fn sync_pod(&self, pod: Pod) {
        let Some(uid) = pod.metadata.uid.clone() else {
            tracing::warn!(pod = %pod.name_any(), "pod without uid ignored");
            return;
        };
        if lock(&self.inner.finished).contains(&uid) {
            return;
        }
        let mut pods = lock(&self.inner.pods);
        if let Some(entry) = pods.get(&uid) {
            entry.pod_tx.send_replace(pod);
            return;
        }
        let namespace = pod.namespace().unwrap_or_default();
        let name = pod.name_any();
        let shared = Arc::new(Mutex::new(PodShared::default()));
        let (pod_tx, pod_rx) = watch::channel(pod.clone());
        let (removed_tx, removed_rx) = watch::channel(false);
        let (status_tx, status_rx) = watch::channel(PodStatus::default());
        let worker = Worker::new(
            self.clone(),
            pod,
            shared.clone(),
            pod_rx,
            removed_rx,
            status_tx,
        );
        let task = tokio::spawn(worker.run());
        pods.insert(
            uid,
            PodEntry {
                namespace,
                name,
                shared,
                pod_tx,
                removed_tx,
                status_rx,
                task,
            },
        );
    }

    /// The pod is gone from the API (deleted with grace 0 or by force): kill
    /// its containers now; no deletion confirmation follows.
    pub fn remove_pod(&self, uid: &str) {
        if let Some(entry) = lock(&self.inner.pods).get(uid) {
            entry.removed_tx.send_replace(true);
        }
    }

    /// Uids of the pods the node runs (or is terminating).
    pub fn pod_uids(&self) -> Vec<String> {
        lock(&self.inner.pods).keys().cloned().collect()
    }

    /// Whether the node runs (or ran) the pod with this uid.
    pub fn has_pod(&self, uid: &str) -> bool {
        lock(&self.inner.pods).contains_key(uid) || lock(&self.inner.finished).contains(uid)
    }

    /// Secrets/ConfigMaps/claims changed: projected volumes are refreshed and
    /// containers waiting for a missing object retry.
    pub fn objects_changed(&self) {
        self.inner.objects_gen.send_modify(|g| *g += 1);
    }

    /// New Service names: every pod's `/etc/hosts` is rewritten.
    pub fn set_dns(&self, table: DnsTable) {
        if self.inner.resolver.set(table) {
            self.inner.dns_gen.send_modify(|g| *g += 1);
        }
    }

    pub fn resolver(&self) -> Resolver {
        self.inner.resolver.clone()
    }

    fn entry<R>(
        &self,
        namespace: &str,
        name: &str,
        f: impl FnOnce(&PodEntry) -> R,
    ) -> Result<R, FaultError> {
        let pods = lock(&self.inner.pods);
        pods.values()
            .find(|e| e.namespace == namespace && e.name == name)
            .map(f)
            .ok_or_else(|| FaultError::NoSuchPod(format!("{namespace}/{name}")))
    }

    /// The latest status the node computed for the pod.
    pub fn status(&self, namespace: &str, name: &str) -> Option<PodStatus> {
        self.entry(namespace, name, |e| e.status_rx.borrow().clone())
            .ok()
    }

    pub fn watch_status(&self, namespace: &str, name: &str) -> Option<watch::Receiver<PodStatus>> {
        self.entry(namespace, name, |e| e.status_rx.clone()).ok()
    }

    /// Waits until the pod's status satisfies `pred` (or the pod disappears).
    pub async fn wait_status(
        &self,
        namespace: &str,
        name: &str,
        pred: impl Fn(&PodStatus) -> bool,
    ) -> Option<PodStatus> {
        let mut rx = self.watch_status(namespace, name)?;
        rx.wait_for(|s| pred(s)).await.ok().map(|s| s.clone())
    }

    fn shared(&self, namespace: &str, name: &str) -> Result<Arc<Mutex<PodShared>>, FaultError> {
        self.entry(namespace, name, |e| e.shared.clone())
    }

    /// Directory of the pod's logs and volumes.
    pub fn pod_dir(&self, namespace: &str, name: &str) -> Option<PathBuf> {
        self.shared(namespace, name)
            .ok()
            .and_then(|s| lock(&s).dir.clone())
    }

    pub fn pod_ip(&self, namespace: &str, name: &str) -> Option<Ipv4Addr> {
        self.shared(namespace, name).ok().and_then(|s| lock(&s).ip)
    }

    /// Output of the container's current (or, with `previous`, last) run.
    pub fn logs(
        &self,
        namespace: &str,
        pod: &str,
        container: &str,
        previous: bool,
    ) -> io::Result<String> {
        let dir = self.pod_dir(namespace, pod).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("pod {namespace}/{pod} not found"),
            )
        })?;
        read_log(&dir, container, previous)
    }

    // ---- fault hooks ----

    /// Signals the main process of a container (e.g. SIGKILL the instance manager).
    pub fn kill_container(
        &self,
        namespace: &str,
        pod: &str,
        container: &str,
        sig: Signal,
    ) -> Result<i32, FaultError> {
        let shared = self.shared(namespace, pod)?;
        let pid = lock(&shared)
            .containers
            .get(container)
            .map(|c| c.pid)
            .ok_or_else(|| FaultError::NotRunning {
                pod: format!("{namespace}/{pod}"),
                container: container.to_string(),
            })?;
        send_signal(pid, sig).map_err(|source| FaultError::Signal { pid, source })?;
        tracing::info!(
            namespace,
            pod,
            container,
            pid,
            signal = sig.0,
            "fault: signalled container"
        );
        Ok(pid)
    }

    /// Signals every process of the pod whose command line contains `pattern`
    /// (e.g. `"postgres: checkpointer"`, or `"postgres -D"` for the postmaster).
    pub fn kill_matching(
        &self,
        namespace: &str,
        pod: &str,
        pattern: &str,
        sig: Signal,
    ) -> Result<Vec<i32>, FaultError> {
        let pids: Vec<i32> = self
            .processes(namespace, pod)?
            .into_iter()
            .filter(|(_, _, cmd)| cmd.contains(pattern))
            .map(|(pid, _, _)| pid)
            .collect();
        if pids.is_empty() {
            return Err(FaultError::NoMatch {
                pod: format!("{namespace}/{pod}"),
                pattern: pattern.to_string(),
            });
        }
        for pid in &pids {
            send_signal(*pid, sig).map_err(|source| FaultError::Signal { pid: *pid, source })?;
        }
        tracing::info!(
            namespace,
            pod,
            pattern,
            ?pids,
            signal = sig.0,
            "fault: signalled matching processes"
        );
        Ok(pids)
    }

    /// Every process of the pod: (pid, container, command line).
    pub fn processes(
        &self,
        namespace: &str,
        pod: &str,
    ) -> Result<Vec<(i32, String, String)>, FaultError> {
        let shared = self.shared(namespace, pod)?;
        let containers = lock(&shared).containers.clone();
        Ok(containers
            .iter()
            .flat_map(|(name, c)| {
                c.cgroup
                    .procs()
                    .into_iter()
                    .filter_map(move |pid| Some((pid, name.clone(), procs::cmdline(pid)?)))
            })
            .collect())
    }

    /// SIGSTOPs every process of the pod, as a node that stops responding.
    /// The kubelet keeps probing: readiness (and liveness) fail as they would.
    pub fn freeze_pod(&self, namespace: &str, pod: &str) -> Result<usize, FaultError> {
        self.stop_or_continue(namespace, pod, true)
    }

    /// SIGCONTs every process of the pod.
    pub fn thaw_pod(&self, namespace: &str, pod: &str) -> Result<usize, FaultError> {
        self.stop_or_continue(namespace, pod, false)
    }

    fn stop_or_continue(
        &self,
        namespace: &str,
        pod: &str,
        stop: bool,
    ) -> Result<usize, FaultError> {
        let shared = self.shared(namespace, pod)?;
        let mut s = lock(&shared);
        s.frozen = stop;
        let sig = if stop { Signal::STOP } else { Signal::CONT };
        let n = s.containers.values().map(|c| c.cgroup.signal(sig)).sum();
        tracing::info!(
            namespace,
            pod,
            processes = n,
            frozen = stop,
            "fault: freeze/thaw"
        );
        Ok(n)
    }

    pub fn is_frozen(&self, namespace: &str, pod: &str) -> bool {
        self.shared(namespace, pod)
            .map(|s| lock(&s).frozen)
            .unwrap_or(false)
    }

    /// Cuts the pod off from everything but itself and the kubelet (API server,
    /// Services, other pods, host processes): packets of new and established
    /// connections are dropped, so peers see timeouts, not resets.
    pub fn partition_pod(&self, namespace: &str, pod: &str) -> Result<(), FaultError> {
        let ip = self
            .pod_ip(namespace, pod)
            .ok_or_else(|| FaultError::NoAddress(format!("{namespace}/{pod}")))?;
        self.inner.network.partition(ip)?;
        tracing::info!(namespace, pod, %ip, "fault: partitioned");
        Ok(())
    }

    pub fn heal_pod(&self, namespace: &str, pod: &str) -> Result<(), FaultError> {
        let ip = self
            .pod_ip(namespace, pod)
            .ok_or_else(|| FaultError::NoAddress(format!("{namespace}/{pod}")))?;
        self.inner.network.heal(ip)?;
        tracing::info!(namespace, pod, %ip, "fault: healed");
        Ok(())
    }

    pub fn is_partitioned(&self, namespace: &str, pod: &str) -> bool {
        self.pod_ip(namespace, pod)
            .is_some_and(|ip| self.inner.network.is_partitioned(ip))
    }

    /// Whether partitions (and pod source addresses) work here (nftables present).
    pub fn partitions_supported(&self) -> bool {
        self.inner.network.available()
    }

    // ---- claims ----

    /// Host directory of claim `namespace/name` (exists once a pod mounted it).
    pub fn claim_dir(&self, namespace: &str, name: &str) -> PathBuf {
        crate::volumes::claim_dir(&self.inner.config.state_dir.join("claims"), namespace, name)
    }

    /// The claim was deleted: its directory goes now, or when the last pod
    /// using it is gone.
    pub fn claim_deleted(&self, namespace: &str, name: &str) {
        let key = (namespace.to_string(), name.to_string());
        if self.claim_in_use(&key) {
            lock(&self.inner.deleted_claims).insert(key);
        } else {
            self.remove_claim_dir(namespace, name);
        }
    }

    fn claim_in_use(&self, key: &(String, String)) -> bool {
        lock(&self.inner.pods)
            .values()
            .any(|e| lock(&e.shared).claims.contains(key))
    }

    fn remove_claim_dir(&self, namespace: &str, name: &str) {
        let dir = self.claim_dir(namespace, name);
        if let Err(e) = crate::sys::tmpfs::unmount(&dir) {
            tracing::warn!(path = %dir.display(), error = %e, "cannot unmount claim volume");
        }
        if let Err(e) = fs::remove_dir_all(&dir)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(path = %dir.display(), error = %e, "cannot remove claim directory");
        }
    }

    // ---- used by pod workers ----

    pub(crate) fn allocate_pod_ip(&self) -> Result<Ipv4Addr, IpamError> {
        lock(&self.inner.pod_ips).allocate()
    }

    pub(crate) fn release_pod_ip(&self, ip: Ipv4Addr) {
        lock(&self.inner.pod_ips).release(ip);
    }

    /// Called by a pod's worker when it is done; claims it used may go now.
    pub(crate) fn forget(&self, uid: &str, claims: &[(String, String)]) {
        lock(&self.inner.pods).remove(uid);
        lock(&self.inner.finished).insert(uid.to_string());
        for key in claims {
            if !self.claim_in_use(key) && lock(&self.inner.deleted_claims).remove(key) {
                self.remove_claim_dir(&key.0, &key.1);
            }
        }
    }

    fn kill_everything(&self) {
        let entries: Vec<JoinHandle<()>> = lock(&self.inner.pods)
            .drain()
            .map(|(_, e)| e.task)
            .collect();
        for task in entries {
            task.abort();
        }
        if let Ok(group) = &self.inner.cgroup {
            for _ in 0..200 {
                group.kill();
                if !group.populated() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            group.remove();
        }
        self.inner.network.shutdown();
    }
}

pub(crate) fn log_path(pod_dir: &Path, container: &str, run: i32) -> PathBuf {
    pod_dir
        .join("logs")
        .join(container)
        .join(format!("{run}.log"))
}

fn read_log(pod_dir: &Path, container: &str, previous: bool) -> io::Result<String> {
    let dir = pod_dir.join("logs").join(container);
    let mut runs: Vec<i32> = fs::read_dir(&dir)?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_suffix(".log")?.parse().ok())
        .collect();
    runs.sort_unstable();
    let run = if previous {
        runs.iter().rev().nth(1)
    } else {
        runs.last()
    };
    let run = run.ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "no {}log for {container}",
                if previous { "previous " } else { "" }
            ),
        )
    })?;
    fs::read_to_string(log_path(pod_dir, container, *run))
}

//! Service addresses and the userspace TCP proxy behind them.
//!
//! Each ClusterIP Service gets a local address: its `spec.clusterIP` when that
//! lies in the Service range or on loopback (an API server allocating from
//! the same range as ours, e.g. a real one with `--service-cluster-ip-range`
//! = our `service_cidr`), else a local alias from the Service range, used in
//! names. The range must be local (see [`crate::ipam`]). For each
//! TCP port with ready endpoints, a listener forwarding every new connection
//! to one ready endpoint (round robin; an endpoint refusing the connection is
//! skipped). Without ready endpoints nothing listens, so clients get
//! "connection refused", as with kube-proxy. Established connections are left
//! alone when endpoints change. The proxy connects from the client's address,
//! so backends see the client pod's IP as they would in a cluster.
//! Headless Services only get names.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Endpoints, Pod, Service};
use kube::ResourceExt;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinHandle;

use crate::dns::DnsTable;
use crate::endpoints;
use crate::ipam::{Cidr, IpPool};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Default)]
struct Backends {
    addrs: RwLock<Vec<SocketAddr>>,
    next: AtomicUsize,
}

impl Backends {
    /// Endpoints in the order to try them for the next connection.
    fn rotation(&self) -> Vec<SocketAddr> {
        let addrs = self.addrs.read().unwrap_or_else(|e| e.into_inner()).clone();
        if addrs.is_empty() {
            return addrs;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % addrs.len();
        addrs[start..]
            .iter()
            .chain(&addrs[..start])
            .copied()
            .collect()
    }
}

struct Listener {
    backends: Arc<Backends>,
    /// The listening socket while serving; shared with the accept task.
    socket: Option<(Arc<TcpListener>, JoinHandle<()>)>,
}

impl Listener {
    /// Stops listening at once: aborting the task alone would close the socket
    /// only when the task is dropped, and connections arriving meanwhile would
    /// be accepted and reset instead of refused.
    fn stop(&mut self) {
        if let Some((socket, task)) = self.socket.take() {
            // SAFETY: the fd stays open while we hold `socket`.
            unsafe { libc::shutdown(socket.as_raw_fd(), libc::SHUT_RD) };
            task.abort();
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What the API-facing side must write back after [`ServiceProxy::apply`].
#[derive(Debug, Default)]
pub struct ProxyUpdate {
    /// Services without `spec.clusterIP`: the address they got.
    pub assign_cluster_ip: Vec<(String, String, Ipv4Addr)>,
    /// `Endpoints` of every Service with a selector.
    pub endpoints: Vec<Endpoints>,
    /// Names for `/etc/hosts` and the host resolver.
    pub dns: DnsTable,
}

pub struct ServiceProxy {
    pool: IpPool,
    cluster_domain: String,
    node_name: String,
    /// Service uid → local address we allocated.
    allocated: HashMap<String, Ipv4Addr>,
    /// (Service uid, port) → listener.
    listeners: HashMap<(String, u16), Listener>,
}

impl ServiceProxy {
    pub fn new(service_cidr: Cidr, cluster_domain: &str, node_name: &str) -> Self {
        ServiceProxy {
            pool: IpPool::new(service_cidr),
            cluster_domain: cluster_domain.to_string(),
            node_name: node_name.to_string(),
            allocated: HashMap::new(),
            listeners: HashMap::new(),
        }
    }

    /// Brings addresses, listeners and names in line with `services` and `pods`.
    pub fn apply<'a>(
        &mut self,
        services: impl IntoIterator<Item = &'a Service>,
        pods: &[&'a Pod],
    ) -> ProxyUpdate {
        let mut update = ProxyUpdate {
            dns: DnsTable::new(&self.cluster_domain),
            ..Default::default()
        };
        let mut live_uids = Vec::new();
        let mut live_listeners = Vec::new();
        for svc in services {
            let Some(spec) = svc.spec.as_ref() else {
                continue;
            };
            if spec.type_.as_deref() == Some("ExternalName") {
                continue;
            }
            let (ns, name) = (svc.namespace().unwrap_or_default(), svc.name_any());
            let uid = svc
                .metadata
                .uid
                .clone()
                .unwrap_or_else(|| format!("{ns}/{name}"));
            live_uids.push(uid.clone());
            let members = endpoints::members(svc, pods.iter().copied());
            if spec.selector.as_ref().is_some_and(|s| !s.is_empty()) {
                update
                    .endpoints
                    .push(endpoints::endpoints_object(svc, &members, &self.node_name));
            }
            if spec.cluster_ip.as_deref() == Some("None") {
                update.dns.insert_service(
                    &ns,
                    &name,
                    members.iter().filter(|m| m.ready).map(|m| m.ip).collect(),
                );
                for m in &members {
                    let pod_spec = m.pod.spec.as_ref();
                    if pod_spec.and_then(|s| s.subdomain.as_deref()) == Some(name.as_str()) {
                        let host = pod_spec
                            .and_then(|s| s.hostname.clone())
                            .unwrap_or_else(|| m.pod.name_any());
                        update.dns.insert_pod(&ns, &name, &host, m.ip);
                    }
                }
                continue;
            }
            let Some(ip) = self.address(&uid, spec.cluster_ip.as_deref(), &ns, &name, &mut update)
            else {
                continue;
            };
            update.dns.insert_service(&ns, &name, vec![IpAddr::V4(ip)]);
            if spec.selector.as_ref().is_none_or(|s| s.is_empty()) {
                continue;
            }
            for port in spec.ports.iter().flatten() {
                if port.protocol.as_deref().unwrap_or("TCP") != "TCP" {
                    continue;
                }
                let Ok(number) = u16::try_from(port.port) else {
                    continue;
                };
                let key = (uid.clone(), number);
                live_listeners.push(key.clone());
                let backends = endpoints::backends(port, &members);
                self.ensure_listener(key, SocketAddr::new(IpAddr::V4(ip), number), backends);
            }
        }
        self.listeners.retain(|k, _| live_listeners.contains(k));
        let gone: Vec<String> = self
            .allocated
            .keys()
            .filter(|u| !live_uids.contains(u))
            .cloned()
            .collect();
        for uid in gone {
            if let Some(ip) = self.allocated.remove(&uid) {
                self.pool.release(ip);
            }
        }
        update
    }

    fn address(
        &mut self,
        uid: &str,
        cluster_ip: Option<&str>,
        ns: &str,
        name: &str,
        update: &mut ProxyUpdate,
    ) -> Option<Ipv4Addr> {
        let requested = cluster_ip
            .filter(|c| !c.is_empty())
            .and_then(|c| c.parse::<Ipv4Addr>().ok());
        if let Some(ip) = requested.filter(|ip| ip.is_loopback() || self.pool.cidr().contains(*ip))
        {
            if self.pool.cidr().contains(ip) {
                self.pool.reserve(ip);
            }
            return Some(ip);
        }
        let ip = match self.allocated.get(uid) {
            Some(ip) => *ip,
            None => match self.pool.allocate() {
                Ok(ip) => {
                    self.allocated.insert(uid.to_string(), ip);
                    ip
                }
                Err(e) => {
                    tracing::error!(namespace = ns, service = name, error = %e, "no address for Service");
                    return None;
                }
            },
        };
        // A clusterIP outside our range (set by the API server) keeps its
        // value; the local address stands in for it in names.
        if requested.is_none() {
            update
                .assign_cluster_ip
                .push((ns.to_string(), name.to_string(), ip));
        }
        Some(ip)
    }

    fn ensure_listener(&mut self, key: (String, u16), addr: SocketAddr, backends: Vec<SocketAddr>) {
        let listener = self.listeners.entry(key).or_insert_with(|| Listener {
            backends: Arc::default(),
            socket: None,
        });
        *listener
            .backends
            .addrs
            .write()
            .unwrap_or_else(|e| e.into_inner()) = backends.clone();
        if backends.is_empty() {
            // Nothing listens: new connections are refused.
            listener.stop();
        } else if listener.socket.is_none() {
            match std::net::TcpListener::bind(addr).and_then(|l| {
                l.set_nonblocking(true)?;
                TcpListener::from_std(l)
            }) {
                Ok(l) => {
                    let socket = Arc::new(l);
                    let task = tokio::spawn(serve(socket.clone(), listener.backends.clone()));
                    listener.socket = Some((socket, task));
                }
                Err(e) => {
                    tracing::warn!(%addr, error = %e, "cannot listen for Service (retried on the next sync)")
                }
            }
        }
    }
}

async fn serve(listener: Arc<TcpListener>, backends: Arc<Backends>) {
    loop {
        let (client, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            // The socket was shut down: the Service lost its endpoints.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return,
            Err(e) => {
                // E.g. out of file descriptors: back off instead of spinning.
                tracing::warn!(error = %e, "Service proxy cannot accept");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let backends = backends.clone();
        tokio::spawn(async move {
            let Some(mut upstream) = connect_any(&backends, peer.ip()).await else {
                return;
            };
            let mut client = client;
            let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
        });
    }
}

async fn connect_any(backends: &Backends, client_ip: IpAddr) -> Option<TcpStream> {
    for addr in backends.rotation() {
        match tokio::time::timeout(CONNECT_TIMEOUT, connect_from(client_ip, addr)).await {
            Ok(Ok(stream)) => return Some(stream),
            Ok(Err(e)) => tracing::debug!(%addr, error = %e, "endpoint refused, trying the next"),
            Err(_) => tracing::debug!(%addr, "endpoint timed out, trying the next"),
        }
    }
    None
}

/// Connects from the client's own address when possible (it is local: the
/// client connected to us on this host).
async fn connect_from(client_ip: IpAddr, addr: SocketAddr) -> std::io::Result<TcpStream> {
    if let (IpAddr::V4(src), SocketAddr::V4(_)) = (client_ip, addr) {
        let socket = TcpSocket::new_v4()?;
        if socket.bind(SocketAddr::new(IpAddr::V4(src), 0)).is_ok() {
            return socket.connect(addr).await;
        }
    }
    TcpStream::connect(addr).await
}

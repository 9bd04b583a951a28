//! Service names without a DNS server: every container gets an `/etc/hosts`
//! (bind-mounted, rewritten in place when Services change) listing
//! `<svc>.<ns>.svc.<domain>`, `<svc>.<ns>.svc`, `<svc>.<ns>` for every Service
//! and the bare `<svc>` for those of the pod's namespace; test code on the
//! host uses [`Resolver`] with the same rules.
//!
//! glibc (libpq, getent) reads `/etc/hosts` on every lookup. PgBouncer caches
//! lookups for `dns_max_ttl` (15 s by default), as it would with real DNS.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, RwLock};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DnsTable {
    cluster_domain: String,
    /// (namespace, service) → addresses (one for ClusterIP, pod IPs for headless).
    services: BTreeMap<(String, String), Vec<IpAddr>>,
    /// (namespace, subdomain, hostname) → pod IP, for pods of headless Services.
    pods: BTreeMap<(String, String, String), IpAddr>,
}

/// What a pod's own hosts entries need.
#[derive(Debug, Clone)]
pub struct HostsIdentity<'a> {
    pub namespace: &'a str,
    pub hostname: &'a str,
    pub subdomain: Option<&'a str>,
    pub ip: IpAddr,
}

impl DnsTable {
    pub fn new(cluster_domain: &str) -> Self {
        DnsTable {
            cluster_domain: cluster_domain.to_string(),
            ..Default::default()
        }
    }

    pub fn insert_service(&mut self, namespace: &str, name: &str, ips: Vec<IpAddr>) {
        self.services
            .insert((namespace.to_string(), name.to_string()), ips);
    }

    pub fn insert_pod(&mut self, namespace: &str, subdomain: &str, hostname: &str, ip: IpAddr) {
        self.pods.insert(
            (
                namespace.to_string(),
                subdomain.to_string(),
                hostname.to_string(),
            ),
            ip,
        );
    }

    /// Addresses of `name` as seen from a pod in `namespace`.
    pub fn resolve(&self, name: &str, namespace: &str) -> Vec<IpAddr> {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        let domain_suffix = format!(".svc.{}", self.cluster_domain);
        let base = name
            .strip_suffix(&domain_suffix)
            .or_else(|| name.strip_suffix(".svc"))
            .unwrap_or(&name);
        let parts: Vec<&str> = base.split('.').collect();
        let service = |ns: &str, svc: &str| {
            self.services
                .get(&(ns.to_string(), svc.to_string()))
                .cloned()
        };
        match parts.as_slice() {
            [svc] => service(namespace, svc).unwrap_or_default(),
            [svc, ns] => service(ns, svc).unwrap_or_default(),
            [host, sub, ns] => self
                .pods
                .get(&(ns.to_string(), sub.to_string(), host.to_string()))
                .map(|ip| vec![*ip])
                .unwrap_or_default(),
            _ => Vec::new(),
        }
    }

    /// The `/etc/hosts` of a pod.
    pub fn hosts_file(&self, me: &HostsIdentity<'_>) -> String {
        let domain = &self.cluster_domain;
        let mut out = String::from(
            "# Kubernetes-managed hosts file (capstan e2e process kubelet).\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
        );
        match me.subdomain {
            Some(sub) => out.push_str(&format!(
                "{}\t{}.{sub}.{}.svc.{domain}\t{}\n",
                me.ip, me.hostname, me.namespace, me.hostname
            )),
            None => out.push_str(&format!("{}\t{}\n", me.ip, me.hostname)),
        }
        for ((ns, svc), ips) in &self.services {
            for ip in ips {
                out.push_str(&format!(
                    "{ip}\t{svc}.{ns}.svc.{domain}\t{svc}.{ns}.svc\t{svc}.{ns}"
                ));
                if ns == me.namespace {
                    out.push_str(&format!("\t{svc}"));
                }
                out.push('\n');
            }
        }
        for ((ns, sub, host), ip) in &self.pods {
            out.push_str(&format!(
                "{ip}\t{host}.{sub}.{ns}.svc.{domain}\t{host}.{sub}.{ns}.svc\t{host}.{sub}.{ns}\n"
            ));
        }
        out
    }
}

/// Rewrites a bind-mounted file in place: the mount pins the inode, so a
/// rename would not be seen. Overwriting before truncating means readers never
/// see an empty file.
pub fn write_in_place(path: &Path, content: &str) -> io::Result<()> {
    if fs::read_to_string(path).ok().as_deref() == Some(content) {
        return Ok(());
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    file.write_all(content.as_bytes())?;
    file.set_len(content.len() as u64)?;
    Ok(())
}

/// Host-side name resolution for test code, following the pods' rules.
#[derive(Debug, Clone, Default)]
pub struct Resolver {
    table: Arc<RwLock<Arc<DnsTable>>>,
}

impl Resolver {
    pub(crate) fn set(&self, table: DnsTable) -> bool {
        let mut guard = self.table.write().unwrap_or_else(|e| e.into_inner());
        if **guard == table {
            return false;
        }
        *guard = Arc::new(table);
        true
    }

    pub fn table(&self) -> Arc<DnsTable> {
        self.table.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// All addresses of `name` (`db-rw.ns`, `db-rw.ns.svc`, `db-rw.ns.svc.cluster.local`;
    /// a bare `db-rw` is looked up in namespace `default`).
    pub fn resolve_all(&self, name: &str) -> Vec<IpAddr> {
        self.table().resolve(name, "default")
    }

    pub fn resolve(&self, name: &str) -> Option<IpAddr> {
        self.resolve_all(name).into_iter().next()
    }

    /// `resolve` plus a port, e.g. `socket_addr("db-rw.ns.svc", 5432)`.
    pub fn socket_addr(&self, name: &str, port: u16) -> Option<SocketAddr> {
        self.resolve(name).map(|ip| SocketAddr::new(ip, port))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn ip(d: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(127, 21, 0, d))
    }

    #[test]
    fn resolves_service_names() {
        let mut t = DnsTable::new("cluster.local");
        t.insert_service("ns", "db-rw", vec![ip(1)]);
        t.insert_service("other", "db-rw", vec![ip(2)]);
        t.insert_pod("ns", "db", "db-1", ip(9));
        for name in [
            "db-rw",
            "db-rw.ns",
            "db-rw.ns.svc",
            "db-rw.ns.svc.cluster.local",
            "DB-RW.ns.svc.cluster.local.",
        ] {
            assert_eq!(t.resolve(name, "ns"), vec![ip(1)], "{name}");
        }
        assert_eq!(t.resolve("db-rw", "other"), vec![ip(2)]);
        assert_eq!(t.resolve("db-1.db.ns.svc.cluster.local", "x"), vec![ip(9)]);
        assert!(t.resolve("nope.ns", "ns").is_empty());
        let hosts = t.hosts_file(&HostsIdentity {
            namespace: "ns",
            hostname: "p",
            subdomain: None,
            ip: ip(7),
        });
        assert!(
            hosts.contains(
                "127.21.0.1\tdb-rw.ns.svc.cluster.local\tdb-rw.ns.svc\tdb-rw.ns\tdb-rw\n"
            ),
            "{hosts}"
        );
        assert!(
            hosts.contains(
                "127.21.0.2\tdb-rw.other.svc.cluster.local\tdb-rw.other.svc\tdb-rw.other\n"
            ),
            "{hosts}"
        );
        assert!(hosts.contains("127.21.0.7\tp\n"), "{hosts}");
    }

    #[test]
    fn rewrites_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("hosts");
        write_in_place(&p, "a long first version\n").unwrap();
        let ino = std::os::unix::fs::MetadataExt::ino(&fs::metadata(&p).unwrap());
        write_in_place(&p, "short\n").unwrap();
        assert_eq!(fs::read_to_string(&p).unwrap(), "short\n");
        assert_eq!(
            std::os::unix::fs::MetadataExt::ino(&fs::metadata(&p).unwrap()),
            ino
        );
    }
}

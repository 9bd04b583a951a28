//! nftables rules of one kubelet instance (table `ce2e_<pid>_<n>`):
//!
//! * pod source addresses: packets from sockets in a pod's cgroup to a local
//!   address (out through `lo`) get the pod IP as source (SNAT), so servers
//!   see the client pod's address as they would in a cluster; otherwise the
//!   kernel picks the source: 127.0.0.1 towards loopback, and the destination
//!   itself towards an address of an AnyIP local route such as
//!   `local 10.244.0.0/16 dev lo` (no preferred source). Packets leaving the
//!   host keep the kernel's source;
//! * partitions: every connection between a partitioned pod and anything but
//!   itself is dropped, in both directions, established ones included, except
//!   connections the node address opens to the pod (the kubelet's probes).
//!   Connections opened by the pod's own sockets carry a conntrack mark, so a
//!   host process whose packets got the pod address as source (the destination,
//!   see above) is told apart from the pod talking to itself.
//!
//! Without the `nft` tool pods keep the kernel's source address and partitions
//! fail with [`NetError::Unavailable`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::sync::Mutex;

use super::cgroup::Cgroup;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("network partitions need nftables: {0}")]
    Unavailable(String),
    #[error("pod {0} has no cgroup under /sys/fs/cgroup that nftables can match")]
    NoCgroupMatch(Ipv4Addr),
    #[error("nft failed: {0}")]
    Nft(String),
}

#[derive(Debug, Default)]
struct State {
    /// Pod IP → (cgroup level, cgroup path relative to /sys/fs/cgroup).
    pods: BTreeMap<Ipv4Addr, Option<(usize, String)>>,
    partitioned: BTreeSet<Ipv4Addr>,
}

#[derive(Debug)]
pub struct Network {
    table: String,
    node_ip: Ipv4Addr,
    unavailable: Option<String>,
    state: Mutex<State>,
}

fn nft(script: &str) -> Result<(), NetError> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| NetError::Nft(e.to_string()))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| NetError::Nft(e.to_string()))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| NetError::Nft(e.to_string()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NetError::Nft(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ))
    }
}

fn probe_nft() -> Option<String> {
    match Command::new("nft").args(["list", "tables"]).output() {
        Ok(out) if out.status.success() => None,
        Ok(out) => Some(format!(
            "`nft list tables` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Some(format!(
            "cannot run `nft` ({e}); install the nftables package"
        )),
    }
}

/// Deletes tables of kubelet instances whose process is gone.
fn sweep_stale_tables() {
    let Ok(out) = Command::new("nft").args(["list", "tables"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line.strip_prefix("table ip ") else {
            continue;
        };
        let Some(pid) = name
            .strip_prefix("ce2e_")
            .and_then(|r| r.split('_').next())
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        if !super::process_alive(pid) {
            let _ = nft(&format!("delete table ip {name}\n"));
        }
    }
}

impl Network {
    /// `instance` is `<pid>-<n>`, unique per kubelet in this process.
    pub fn new(instance: &str, node_ip: Ipv4Addr) -> Self {
        let unavailable = probe_nft();
        if unavailable.is_none() {
            sweep_stale_tables();
        }
        Network {
            table: format!("ce2e_{}", instance.replace('-', "_")),
            node_ip,
            unavailable,
            state: Mutex::new(State::default()),
        }
    }

    pub fn available(&self) -> bool {
        self.unavailable.is_none()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts giving the pod's sockets its address as source.
    pub fn add_pod(&self, ip: Ipv4Addr, cgroup: &Cgroup) -> Result<(), NetError> {
        if !self.available() {
            return Ok(());
        }
        let mut state = self.lock();
        state
            .pods
            .insert(ip, cgroup.nft_match().map(|(l, p)| (l, p.to_string())));
        self.apply(&state)
    }

    pub fn remove_pod(&self, ip: Ipv4Addr) -> Result<(), NetError> {
        if !self.available() {
            return Ok(());
        }
        let mut state = self.lock();
        let known = state.pods.remove(&ip).is_some();
        let partitioned = state.partitioned.remove(&ip);
        if known || partitioned {
            self.apply(&state)
        } else {
            Ok(())
        }
    }

    pub fn partition(&self, ip: Ipv4Addr) -> Result<(), NetError> {
        if let Some(why) = &self.unavailable {
            return Err(NetError::Unavailable(why.clone()));
        }
        let mut state = self.lock();
        if !matches!(state.pods.get(&ip), Some(Some(_))) {
            return Err(NetError::NoCgroupMatch(ip));
        }
        state.partitioned.insert(ip);
        self.apply(&state)
    }

    pub fn heal(&self, ip: Ipv4Addr) -> Result<(), NetError> {
        if !self.available() {
            return Ok(());
        }
        let mut state = self.lock();
        if state.partitioned.remove(&ip) {
            self.apply(&state)
        } else {
            Ok(())
        }
    }

    pub fn is_partitioned(&self, ip: Ipv4Addr) -> bool {
        self.lock().partitioned.contains(&ip)
    }

    fn apply(&self, state: &State) -> Result<(), NetError> {
        nft(&self.script(state))
    }

    fn script(&self, state: &State) -> String {
        let t = &self.table;
        let node = self.node_ip;
        let mut s = format!("table ip {t}\ndelete table ip {t}\ntable ip {t} {{\n");
        s.push_str(
            "  chain pod_mark {\n    type filter hook output priority mangle; policy accept;\n",
        );
        for (ip, m) in &state.pods {
            if let Some((level, path)) = m {
                let mark = u32::from(*ip);
                let _ = writeln!(
                    s,
                    "    socket cgroupv2 level {level} \"{path}\" meta mark set {mark:#010x}"
                );
                // Connections the pod opens: the first packet marks the conntrack entry.
                let _ = writeln!(
                    s,
                    "    meta mark {mark:#010x} ct state new ct mark set {mark:#010x}"
                );
            }
        }
        s.push_str(
            "  }\n  chain pod_snat {\n    type nat hook postrouting priority srcnat; policy accept;\n",
        );
        // Only towards local addresses (out through lo): elsewhere the pod
        // address would be a martian source.
        for (ip, m) in &state.pods {
            if m.is_some() {
                let _ = writeln!(
                    s,
                    "    meta mark {:#010x} oifname \"lo\" ip saddr != {ip} snat to {ip}",
                    u32::from(*ip)
                );
            }
        }
        // After SNAT, so connection tuples carry the pod addresses.
        s.push_str("  }\n  chain pod_partition {\n    type filter hook postrouting priority 200; policy accept;\n");
        for ip in &state.partitioned {
            let mark = u32::from(*ip);
            // Opened by the pod (its address as source after SNAT): only to itself.
            let _ = writeln!(
                s,
                "    ct reply ip daddr {ip} ct original ip daddr != {ip} drop"
            );
            // Opened towards the pod: only by itself or from the node address.
            let _ = writeln!(
                s,
                "    ct original ip daddr {ip} ct reply ip daddr != {ip} ct original ip saddr != {node} drop"
            );
            // Pod address on both ends but not opened by the pod: a host process
            // that got the destination as source.
            let _ = writeln!(
                s,
                "    ct original ip daddr {ip} ct original ip saddr {ip} ct mark != {mark:#010x} drop"
            );
        }
        s.push_str("  }\n}\n");
        s
    }

    /// Removes the table (kubelet shutdown).
    pub fn shutdown(&self) {
        if self.available() {
            let t = &self.table;
            let _ = nft(&format!("table ip {t}\ndelete table ip {t}\n"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_rules() {
        let net = Network {
            table: "ce2e_1_0".into(),
            node_ip: Ipv4Addr::new(127, 20, 0, 1),
            unavailable: None,
            state: Mutex::new(State::default()),
        };
        let mut state = State::default();
        let ip = Ipv4Addr::new(127, 20, 0, 2);
        state
            .pods
            .insert(ip, Some((3, "unified/capstan-e2e/1-0/uid".into())));
        state.partitioned.insert(ip);
        let s = net.script(&state);
        assert!(
            s.contains(
                "socket cgroupv2 level 3 \"unified/capstan-e2e/1-0/uid\" meta mark set 0x7f140002"
            ),
            "{s}"
        );
        assert!(
            s.contains("meta mark 0x7f140002 ct state new ct mark set 0x7f140002"),
            "{s}"
        );
        assert!(
            s.contains(
                "meta mark 0x7f140002 oifname \"lo\" ip saddr != 127.20.0.2 snat to 127.20.0.2"
            ),
            "{s}"
        );
        assert!(
            s.contains("ct reply ip daddr 127.20.0.2 ct original ip daddr != 127.20.0.2 drop"),
            "{s}"
        );
        assert!(s.contains("ct original ip daddr 127.20.0.2 ct reply ip daddr != 127.20.0.2 ct original ip saddr != 127.20.0.1 drop"), "{s}");
        assert!(s.contains("ct original ip daddr 127.20.0.2 ct original ip saddr 127.20.0.2 ct mark != 0x7f140002 drop"), "{s}");

        // Let nft itself check the syntax where it is installed (cgroup paths
        // must exist to be checked, so that part is left to the integration tests).
        if probe_nft().is_none() {
            let mut state = State::default();
            state.pods.insert(ip, None);
            state.partitioned.insert(ip);
            let mut child = Command::new("nft")
                .args(["-c", "-f", "-"])
                .stdin(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            child
                .stdin
                .take()
                .unwrap()
                .write_all(net.script(&state).as_bytes())
                .unwrap();
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

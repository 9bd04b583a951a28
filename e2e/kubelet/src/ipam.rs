//! Address ranges and the allocator handing out pod and Service addresses.
//!
//! Pods and Services bind addresses of their range without any `ip addr add`,
//! so the caller must make the whole range local: every `127.0.0.0/8` address
//! already is on Linux; any other range needs an "AnyIP" local route, e.g.
//! `ip route add local 10.244.0.0/16 dev lo` (inside a network namespace of
//! the harness, never on the host's own interfaces). Then a pod can bind its
//! own address and every other process of the namespace reaches it.

use std::collections::BTreeSet;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    #[error("invalid CIDR {0:?}: expected a.b.c.d/len with len between 8 and 30")]
    InvalidCidr(String),
    #[error("CIDR {0} is not a unicast range (0/8, multicast and 240/4 cannot be handed out)")]
    NotUnicast(Cidr),
    #[error("address range {0} is exhausted")]
    Exhausted(Cidr),
}

/// An IPv4 range such as `127.20.0.0/16` or `10.244.0.0/16` (see the module
/// documentation: the caller makes it local).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    network: Ipv4Addr,
    prefix: u8,
}

impl Cidr {
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Result<Self, IpamError> {
        if !(8..=30).contains(&prefix) {
            return Err(IpamError::InvalidCidr(format!("{addr}/{prefix}")));
        }
        let mask = u32::MAX << (32 - prefix);
        let cidr = Cidr {
            network: Ipv4Addr::from(u32::from(addr) & mask),
            prefix,
        };
        let first = cidr.network.octets()[0];
        if first == 0 || first >= 224 {
            return Err(IpamError::NotUnicast(cidr));
        }
        Ok(cidr)
    }

    pub fn network(&self) -> Ipv4Addr {
        self.network
    }

    /// Number of usable host addresses (network and broadcast excluded).
    pub fn hosts(&self) -> u32 {
        (1u32 << (32 - self.prefix)) - 2
    }

    /// The `n`-th host address, starting at 1 (network + 1).
    pub fn host(&self, n: u32) -> Option<Ipv4Addr> {
        (n >= 1 && n <= self.hosts()).then(|| Ipv4Addr::from(u32::from(self.network) + n))
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = u32::MAX << (32 - self.prefix);
        u32::from(ip) & mask == u32::from(self.network)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl FromStr for Cidr {
    type Err = IpamError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || IpamError::InvalidCidr(s.to_string());
        let (addr, prefix) = s.split_once('/').ok_or_else(invalid)?;
        let addr = addr.parse::<Ipv4Addr>().map_err(|_| invalid())?;
        let prefix = prefix.parse::<u8>().map_err(|_| invalid())?;
        Cidr::new(addr, prefix)
    }
}

/// Hands out addresses of a range round-robin, so a released address is not
/// reused at once (stale `status.podIP` values stay unambiguous for a while).
#[derive(Debug)]
pub struct IpPool {
    cidr: Cidr,
    used: BTreeSet<Ipv4Addr>,
    next: u32,
}

impl IpPool {
    pub fn new(cidr: Cidr) -> Self {
        IpPool {
            cidr,
            used: BTreeSet::new(),
            next: 1,
        }
    }

    pub fn cidr(&self) -> Cidr {
        self.cidr
    }

    /// Marks an address as taken (the node address, or a Service address the
    /// API server chose); returns false if it was already taken.
    pub fn reserve(&mut self, ip: Ipv4Addr) -> bool {
        self.used.insert(ip)
    }

    pub fn allocate(&mut self) -> Result<Ipv4Addr, IpamError> {
        let hosts = self.cidr.hosts();
        for _ in 0..hosts {
            let n = self.next;
            self.next = if n >= hosts { 1 } else { n + 1 };
            if let Some(ip) = self.cidr.host(n)
                && self.used.insert(ip)
            {
                return Ok(ip);
            }
        }
        Err(IpamError::Exhausted(self.cidr))
    }

    pub fn release(&mut self, ip: Ipv4Addr) {
        self.used.remove(&ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        let c: Cidr = "127.20.0.0/16".parse().unwrap();
        assert_eq!(c.host(1), Some(Ipv4Addr::new(127, 20, 0, 1)));
        assert_eq!(c.hosts(), 65534);
        assert!(c.contains(Ipv4Addr::new(127, 20, 255, 1)));
        assert!(!c.contains(Ipv4Addr::new(127, 21, 0, 1)));
        assert!("127.0.0.0/31".parse::<Cidr>().is_err());
        assert!("127.0.0.0/7".parse::<Cidr>().is_err());
        assert!("nonsense".parse::<Cidr>().is_err());
    }

    #[test]
    fn accepts_non_loopback_ranges() {
        let pods: Cidr = "10.244.0.0/16".parse().unwrap();
        assert_eq!(pods.host(1), Some(Ipv4Addr::new(10, 244, 0, 1)));
        assert!(pods.contains(Ipv4Addr::new(10, 244, 3, 7)));
        assert!(!pods.contains(Ipv4Addr::new(10, 96, 0, 1)));
        // Host bits are dropped, as the API server does for its ranges.
        let services: Cidr = "10.96.7.9/16".parse().unwrap();
        assert_eq!(services.to_string(), "10.96.0.0/16");
        let mut pool = IpPool::new("10.96.0.0/30".parse().unwrap());
        assert_eq!(pool.allocate().unwrap(), Ipv4Addr::new(10, 96, 0, 1));
        for bad in ["0.0.0.0/8", "224.0.0.0/8", "240.0.0.0/8"] {
            assert!(
                matches!(bad.parse::<Cidr>(), Err(IpamError::NotUnicast(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn allocates_round_robin_and_exhausts() {
        let mut pool = IpPool::new("127.30.0.0/30".parse().unwrap());
        assert!(pool.reserve(Ipv4Addr::new(127, 30, 0, 1)));
        let a = pool.allocate().unwrap();
        assert_eq!(a, Ipv4Addr::new(127, 30, 0, 2));
        assert!(matches!(pool.allocate(), Err(IpamError::Exhausted(_))));
        pool.release(a);
        assert_eq!(pool.allocate().unwrap(), a);
    }
}

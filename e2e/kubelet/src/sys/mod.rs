//! Thin wrappers over the Linux facilities the process kubelet builds on:
//! cgroup v2 (process tracking), mount/UTS namespaces (the container's view of
//! the filesystem), nftables (pod source addresses and partitions), tmpfs
//! (claims with a real capacity).

pub mod cgroup;
pub mod nft;
pub mod procs;
pub mod spawn;
pub mod tmpfs;

use std::io;

/// A signal number (`Signal::KILL`, `Signal(libc::SIGUSR1)`, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Signal(pub i32);

impl Signal {
    pub const HUP: Signal = Signal(libc::SIGHUP);
    pub const INT: Signal = Signal(libc::SIGINT);
    pub const QUIT: Signal = Signal(libc::SIGQUIT);
    pub const KILL: Signal = Signal(libc::SIGKILL);
    pub const TERM: Signal = Signal(libc::SIGTERM);
    pub const STOP: Signal = Signal(libc::SIGSTOP);
    pub const CONT: Signal = Signal(libc::SIGCONT);
}

/// Sends `sig` to `pid`; a process that is already gone is not an error.
pub fn send_signal(pid: i32, sig: Signal) -> io::Result<()> {
    // SAFETY: kill(2) has no memory-safety preconditions.
    if unsafe { libc::kill(pid, sig.0) } == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::ESRCH) {
        Ok(())
    } else {
        Err(err)
    }
}

pub fn process_alive(pid: i32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

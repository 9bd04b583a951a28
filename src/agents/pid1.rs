//! PID 1 duties of both agents (instance manager, pooler supervisor).
//!
//! As PID 1 (and as a child subreaper outside a pod) an agent inherits every
//! orphan in the container, e.g. backends of a postmaster that was killed or
//! whatever a PgBouncer wrapper left behind. Those must be reaped, but a
//! blanket `waitpid(-1)` would steal the exit status of children tokio is
//! waiting for. So every child an agent spawns goes through [`spawn`],
//! which registers it under the same lock the reaper holds, and the reaper
//! only waits for zombies whose PID is not registered.

use std::collections::HashSet;
use std::process::ExitStatus;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::kill;
use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tracing::Instrument;

fn registry() -> &'static Mutex<HashSet<u32>> {
    static TRACKED: OnceLock<Mutex<HashSet<u32>>> = OnceLock::new();
    TRACKED.get_or_init(|| Mutex::new(HashSet::new()))
}

fn lock() -> std::sync::MutexGuard<'static, HashSet<u32>> {
    // A panic while holding the lock leaves a usable set behind.
    registry().lock().unwrap_or_else(|p| p.into_inner())
}

/// A child we spawned and will wait for ourselves.
pub struct Tracked {
    pub child: Child,
    pid: u32,
}

impl Tracked {
    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        let status = self.child.wait().await;
        lock().remove(&self.pid);
        status
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        // Reaped already: forget it. Otherwise tokio reaps it later and the
        // reaper prunes the PID once it is gone.
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            lock().remove(&self.pid);
        }
    }
}

/// Spawns `command` and registers it before the reaper can see it exit.
pub fn spawn(command: &mut Command) -> std::io::Result<Tracked> {
    let mut tracked = lock();
    let child = command.spawn()?;
    let pid = child.id().unwrap_or(0);
    tracked.insert(pid);
    Ok(Tracked { child, pid })
}

/// Registers a child this process did not spawn in this image (one the
/// previous image started before it re-executed): someone waits for it.
pub fn adopt(pid: u32) {
    lock().insert(pid);
}

/// Forgets a child [`adopt`]ed once it was waited for.
pub fn forget(pid: u32) {
    lock().remove(&pid);
}

/// Takes on the PID 1 duties: become a child subreaper (orphans of our
/// descendants become our children even outside a pod, where we are not
/// PID 1) and reap adopted zombies for the life of the process.
pub fn start_reaping() {
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        tracing::warn!(error = %e, "cannot become a child subreaper; orphans are left to init");
    }
    tokio::spawn(reap_adopted_forever().in_current_span());
}

/// Reaps on SIGCHLD and every few seconds (signals coalesce).
async fn reap_adopted_forever() {
    let mut sigchld = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGCHLD; reaping on a timer only");
            None
        }
    };
    let mut timer = tokio::time::interval(Duration::from_secs(5));
    loop {
        match sigchld.as_mut() {
            Some(s) => {
                tokio::select! {
                    _ = s.recv() => {}
                    _ = timer.tick() => {}
                }
            }
            None => {
                timer.tick().await;
            }
        }
        let reaped = tokio::task::spawn_blocking(reap_adopted_once)
            .await
            .unwrap_or(0);
        if reaped > 0 {
            tracing::debug!(reaped, "reaped adopted processes");
        }
    }
}

/// One pass over /proc: waits for zombie children that nobody else owns.
pub fn reap_adopted_once() -> usize {
    let me = proc_self().unwrap_or_else(std::process::id);
    let mut tracked = lock();
    let mut reaped = 0;
    for (pid, dir) in proc_entries() {
        let Some((state, ppid)) = stat_in(&dir) else {
            continue;
        };
        if state != 'Z' || ppid != me {
            continue;
        }
        // waitpid and the registry speak our namespace's PIDs.
        let pid = own_namespace_pid(&dir).unwrap_or(pid);
        if !tracked.contains(&pid)
            && waitpid(Pid::from_raw(pid as i32), Some(WaitPidFlag::WNOHANG)).is_ok()
        {
            reaped += 1;
        }
    }
    // Children dropped without a wait were reaped by tokio; forget them.
    tracked.retain(|pid| !matches!(kill(Pid::from_raw(*pid as i32), None), Err(Errno::ESRCH)));
    reaped
}

/// This process's PID as the mounted /proc numbers processes. It differs
/// from `getpid()` in a PID namespace that kept its parent's /proc (a pod
/// mounts its own; `unshare --pid` without `--mount-proc` does not).
fn proc_self() -> Option<u32> {
    std::fs::read_link("/proc/self")
        .ok()?
        .to_str()?
        .parse()
        .ok()
}

/// The PID of the process at `/proc/<pid>` in our own PID namespace: the
/// last of the `NSpid` line of its status (one per nested namespace).
fn own_namespace_pid(dir: &std::path::Path) -> Option<u32> {
    let status = std::fs::read_to_string(dir.join("status")).ok()?;
    parse_nspid(&status)
}

fn parse_nspid(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("NSpid:"))?
        .split_whitespace()
        .last()?
        .parse()
        .ok()
}

/// Every process's PID and `/proc/<pid>` directory (none when /proc is
/// unreadable).
pub fn proc_entries() -> impl Iterator<Item = (u32, std::path::PathBuf)> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let pid = entry.file_name().to_str()?.parse::<u32>().ok()?;
            Some((pid, entry.path()))
        })
}

/// State and parent PID of the process at `/proc/<pid>`.
pub fn stat_in(dir: &std::path::Path) -> Option<(char, u32)> {
    parse_stat(&std::fs::read_to_string(dir.join("stat")).ok()?)
}

/// State and parent PID from `/proc/<pid>/stat` (the command name may hold
/// spaces and parentheses, so parse after the last `)`).
fn parse_stat(stat: &str) -> Option<(char, u32)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_stat() {
        assert_eq!(
            parse_stat("123 (postgres: a) b) Z 1 123 123 0 -1"),
            Some(('Z', 1))
        );
        assert_eq!(parse_stat("9 (sh) S 42 9 9"), Some(('S', 42)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn the_innermost_namespace_pid_is_ours() {
        assert_eq!(
            parse_nspid("Name:\tsleep\nNSpid:\t21807\t5\nNSpgid: 1\n"),
            Some(5)
        );
        assert_eq!(parse_nspid("NSpid:\t42\n"), Some(42));
        assert_eq!(parse_nspid("Name:\tsleep\n"), None);
        assert_eq!(proc_self(), Some(std::process::id()));
    }

    #[tokio::test]
    async fn reaper_leaves_tracked_children_alone() {
        let mut child = spawn(Command::new("true").kill_on_drop(true)).unwrap();
        // Let it exit and become a zombie that only we may reap.
        tokio::time::sleep(Duration::from_millis(100)).await;
        reap_adopted_once();
        let status = child.wait().await.unwrap();
        assert!(status.success(), "exit status was stolen: {status:?}");
    }
}

//! Child processes and PID 1 duties.
//!
//! As PID 1 (and as a child subreaper outside a pod) the manager inherits
//! every orphan in the container, e.g. backends of a postmaster that was
//! killed. Those must be reaped, but a blanket `waitpid(-1)` would steal the
//! exit status of children tokio is waiting for. So every child we spawn is
//! registered (under the same lock the reaper holds), and the reaper only
//! waits for zombies whose PID is not registered.

use std::collections::{HashSet, VecDeque};
use std::process::ExitStatus;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
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
        // Reaped already: forget it. Otherwise tokio reaps it later (it is
        // killed on drop) and the reaper prunes the PID once it is gone.
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

#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error("cannot run {tool}: {source}")]
    Spawn {
        tool: String,
        source: std::io::Error,
    },
    #[error("{tool} failed ({status}): {output}")]
    Failed {
        tool: String,
        status: ExitStatus,
        output: String,
    },
}

/// Runs a PostgreSQL tool to completion, logging its output line by line
/// (tagged with the tool) and keeping the tail for the error message.
/// Killed if the returned future is dropped (shutdown during bootstrap).
pub async fn run_tool(tool: &str, command: &mut Command) -> Result<String, ToolError> {
    command
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .env("LC_ALL", "C");
    let mut child = spawn(command).map_err(|source| ToolError::Spawn {
        tool: tool.to_string(),
        source,
    })?;
    let stdout = child.child.stdout.take();
    let stderr = child.child.stderr.take();
    let tool_name = tool.to_string();
    let out_task =
        stdout.map(|s| tokio::spawn(collect_lines(tool_name.clone(), s, true).in_current_span()));
    let err_task =
        stderr.map(|s| tokio::spawn(collect_lines(tool_name, s, false).in_current_span()));
    let status = child.wait().await.map_err(|source| ToolError::Spawn {
        tool: tool.to_string(),
        source,
    })?;
    let stdout = match out_task {
        Some(t) => t.await.unwrap_or_default(),
        None => VecDeque::new(),
    };
    let stderr = match err_task {
        Some(t) => t.await.unwrap_or_default(),
        None => VecDeque::new(),
    };
    if status.success() {
        Ok(stdout.into_iter().collect::<Vec<_>>().join("\n"))
    } else {
        Err(ToolError::Failed {
            tool: tool.to_string(),
            status,
            output: stderr.into_iter().collect::<Vec<_>>().join(" | "),
        })
    }
}

const KEPT_LINES: usize = 200;

async fn collect_lines(
    tool: String,
    stream: impl AsyncRead + Unpin,
    is_stdout: bool,
) -> VecDeque<String> {
    let mut lines = BufReader::new(stream).lines();
    let mut kept = VecDeque::new();
    while let Ok(Some(line)) = lines.next_line().await {
        // Stdout carries data we parse (pg_controldata); only stderr is news.
        if !is_stdout {
            tracing::info!(target: "capstan::tool", tool = %tool, "{line}");
        }
        if kept.len() == KEPT_LINES {
            kept.pop_front();
        }
        kept.push_back(line);
    }
    kept
}

/// Makes orphans of our descendants our children (no-op effect as PID 1,
/// where the kernel does this anyway), so they are reaped here too.
pub fn become_subreaper() {
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        tracing::warn!(error = %e, "cannot become a child subreaper; orphans are left to init");
    }
}

/// Reaps adopted zombies for the life of the process: on SIGCHLD and every
/// few seconds (signals coalesce).
pub async fn reap_adopted_forever() {
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
    let me = std::process::id();
    let mut tracked = lock();
    let mut reaped = 0;
    let mut alive = HashSet::new();
    for (pid, dir) in proc_entries() {
        alive.insert(pid);
        let Some((state, ppid)) = stat_in(&dir) else {
            continue;
        };
        if state == 'Z' && ppid == me && !tracked.contains(&pid) {
            let target = Pid::from_raw(pid as i32);
            if waitpid(target, Some(WaitPidFlag::WNOHANG)).is_ok() {
                reaped += 1;
            }
        }
    }
    // Children dropped without a wait were reaped by tokio; forget them.
    tracked.retain(|pid| alive.contains(pid));
    reaped
}

/// Waits until no process works in `dir` (every PostgreSQL process chdirs
/// into its data directory): after a postmaster was killed, its backends
/// notice and exit within moments, and a new postmaster would refuse to
/// start while they still hold the old shared memory.
pub async fn wait_until_no_process_in(dir: &std::path::Path, timeout: Duration) -> bool {
    let Ok(dir) = dir.canonicalize() else {
        return true;
    };
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let dir = dir.clone();
        let busy = tokio::task::spawn_blocking(move || any_process_in(&dir))
            .await
            .unwrap_or(false);
        if !busy {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn any_process_in(dir: &std::path::Path) -> bool {
    !processes_in(dir).is_empty()
}

/// Processes working in `dir`. Compares the directory itself (device and
/// inode), not its path: another mount namespace may have a different
/// directory at the same path (other pods sharing the PID namespace, as on
/// the e2e harness).
pub fn processes_in(dir: &std::path::Path) -> Vec<u32> {
    use std::os::unix::fs::MetadataExt;
    let Ok(target) = std::fs::metadata(dir) else {
        return vec![];
    };
    proc_entries()
        .filter_map(|(pid, dir)| {
            let cwd = std::fs::metadata(dir.join("cwd")).ok()?;
            (cwd.dev() == target.dev() && cwd.ino() == target.ino()).then_some(pid)
        })
        .collect()
}

/// Sends `signal` to every process working in `dir` except this one;
/// returns how many were signalled.
pub fn signal_processes_in(dir: &std::path::Path, signal: nix::sys::signal::Signal) -> usize {
    let me = std::process::id();
    processes_in(dir)
        .into_iter()
        .filter(|pid| *pid != me)
        .filter(|pid| nix::sys::signal::kill(Pid::from_raw(*pid as i32), signal).is_ok())
        .count()
}

/// Children of `parent` whose process title contains `needle`
/// (PostgreSQL names its processes in their titles, `postgres: walreceiver`).
pub fn children_titled(parent: u32, needle: &str) -> Vec<u32> {
    proc_entries()
        .filter(|(_, dir)| stat_in(dir).is_some_and(|(_, ppid)| ppid == parent))
        .filter(|(_, dir)| {
            std::fs::read(dir.join("cmdline"))
                .is_ok_and(|title| String::from_utf8_lossy(&title).contains(needle))
        })
        .map(|(pid, _)| pid)
        .collect()
}

/// Every process's PID and `/proc/<pid>` directory (none when /proc is
/// unreadable).
fn proc_entries() -> impl Iterator<Item = (u32, std::path::PathBuf)> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let pid = entry.file_name().to_str()?.parse::<u32>().ok()?;
            Some((pid, entry.path()))
        })
}

fn stat_in(dir: &std::path::Path) -> Option<(char, u32)> {
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
    fn finds_children_by_process_title() {
        let mut child = std::process::Command::new("bash")
            .args(["-c", "exec -a 'postgres: walreceiver streaming' sleep 30"])
            .spawn()
            .unwrap();
        let me = std::process::id();
        let mut found = vec![];
        for _ in 0..100 {
            found = children_titled(me, "walreceiver");
            if !found.is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert_eq!(found, vec![child.id()]);
        assert!(children_titled(me, "walsender").is_empty());
        assert!(children_titled(1, "walreceiver").is_empty());
        child.kill().unwrap();
        // Another test's reaper may have collected it already.
        let _ = child.wait();
    }

    #[test]
    fn parses_proc_stat() {
        assert_eq!(
            parse_stat("123 (postgres: a) b) Z 1 123 123 0 -1"),
            Some(('Z', 1))
        );
        assert_eq!(parse_stat("9 (sh) S 42 9 9"), Some(('S', 42)));
        assert_eq!(parse_stat("garbage"), None);
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

    #[tokio::test]
    async fn waits_for_processes_working_in_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = spawn(
            Command::new("sleep")
                .arg("0.3")
                .current_dir(dir.path())
                .kill_on_drop(true),
        )
        .unwrap();
        assert!(!wait_until_no_process_in(dir.path(), Duration::from_millis(50)).await);
        assert!(wait_until_no_process_in(dir.path(), Duration::from_secs(5)).await);
        child.wait().await.unwrap();
    }

    #[tokio::test]
    async fn run_tool_reports_failures_with_output() {
        let ok = run_tool(
            "sh",
            Command::new("sh").args(["-c", "echo out; echo err >&2"]),
        )
        .await
        .unwrap();
        assert_eq!(ok, "out");
        let err = run_tool(
            "sh",
            Command::new("sh").args(["-c", "echo broken >&2; exit 3"]),
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains("broken"), "{err}");
    }
}

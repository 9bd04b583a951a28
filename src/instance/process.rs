//! PostgreSQL tools run to completion, and the processes working in a data
//! directory (what fencing signals and a new postmaster waits out). Every
//! child is spawned through [`crate::agents::pid1::spawn`], so the PID 1
//! reaper never steals its exit status.

use std::collections::VecDeque;
use std::process::ExitStatus;
use std::time::Duration;

use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;
use tracing::Instrument;

use crate::agents::pid1::{self, proc_entries, stat_in};

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
        /// The tail of its standard output (pg_upgrade reports there).
        stdout: Vec<String>,
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
    let mut child = pid1::spawn(command).map_err(|source| ToolError::Spawn {
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
            stdout: stdout.into(),
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

    #[tokio::test]
    async fn waits_for_processes_working_in_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = pid1::spawn(
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

//! The PgBouncer child process: spawned through the agents' PID 1 registry
//! ([`crate::agents::pid1`]), so the reaper of orphans never takes its exit
//! status; a task waits for it and hands the exit to the supervisor loop.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::unistd::{Gid, Pid, Uid, User};
use tokio::process::Command;
use tokio::sync::mpsc;

use crate::agents::pid1;

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("user {0:?} does not exist; set --run-as to an existing user")]
    NoSuchUser(String),
    #[error("cannot look up user {user:?}: {message}")]
    Lookup { user: String, message: String },
    #[error("cannot start {program}: {message}")]
    Spawn { program: String, message: String },
}

/// The unprivileged identity PgBouncer runs as (it refuses root).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity {
    pub uid: Uid,
    pub gid: Gid,
}

impl Identity {
    pub fn lookup(user: &str) -> Result<Self, ProcessError> {
        match User::from_name(user) {
            Ok(Some(u)) => Ok(Self {
                uid: u.uid,
                gid: u.gid,
            }),
            Ok(None) => Err(ProcessError::NoSuchUser(user.into())),
            Err(e) => Err(ProcessError::Lookup {
                user: user.into(),
                message: e.to_string(),
            }),
        }
    }
}

/// How a child ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Code(c) => write!(f, "exit code {c}"),
            Exit::Signal(s) => match Signal::try_from(*s) {
                Ok(sig) => write!(f, "signal {sig}"),
                Err(_) => write!(f, "signal {s}"),
            },
        }
    }
}

impl Exit {
    /// How an adopted child (one the previous supervisor image started)
    /// ended, from `waitpid`.
    pub fn of_wait(status: nix::Result<nix::sys::wait::WaitStatus>) -> Self {
        use nix::sys::wait::WaitStatus;
        match status {
            Ok(WaitStatus::Exited(_, code)) => Exit::Code(code),
            Ok(WaitStatus::Signaled(_, signal, _)) => Exit::Signal(signal as i32),
            _ => Exit::Code(-1),
        }
    }

    fn of(status: std::process::ExitStatus) -> Self {
        use std::os::unix::process::ExitStatusExt;
        match (status.code(), status.signal()) {
            (Some(code), _) => Exit::Code(code),
            (None, Some(signal)) => Exit::Signal(signal),
            // Neither: not possible for a child that was waited for.
            (None, None) => Exit::Code(-1),
        }
    }
}

/// Starts `program args` as `identity` (when given), with stdout/stderr
/// inherited so its log lines reach the container log. Its pid and exit
/// are sent on `exits` once it ends.
pub fn spawn(
    program: &PathBuf,
    args: &[OsString],
    identity: Option<Identity>,
    exits: mpsc::UnboundedSender<(Pid, Exit)>,
) -> Result<Pid, ProcessError> {
    let mut command = Command::new(program);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit());
    if let Some(id) = identity {
        // std drops supplementary groups when changing uid as root.
        command.uid(id.uid.as_raw()).gid(id.gid.as_raw());
    }
    let mut child = pid1::spawn(&mut command).map_err(|e| ProcessError::Spawn {
        program: program.display().to_string(),
        message: e.to_string(),
    })?;
    let pid = Pid::from_raw(child.pid() as i32);
    tokio::spawn(async move {
        let exit = match child.wait().await {
            Ok(status) => Exit::of(status),
            Err(e) => {
                tracing::warn!(pid = pid.as_raw(), error = %e, "cannot wait for pgbouncer");
                Exit::Code(-1)
            }
        };
        let _ = exits.send((pid, exit));
    });
    Ok(pid)
}

/// Waits for a PgBouncer the previous supervisor image started (exec kept
/// it as our child) and reports its exit on `exits` like [`spawn`]'s.
pub fn adopt(pid: Pid, exits: mpsc::UnboundedSender<(Pid, Exit)>) {
    pid1::adopt(pid.as_raw() as u32);
    std::thread::spawn(move || {
        let exit = Exit::of_wait(nix::sys::wait::waitpid(pid, None));
        pid1::forget(pid.as_raw() as u32);
        let _ = exits.send((pid, exit));
    });
}

/// Sends `signal` to `pid`; a process that is already gone is not an error.
pub fn signal_child(pid: Pid, signal: Signal) {
    match kill(pid, signal) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(e) => tracing::warn!(pid = pid.as_raw(), %signal, error = %e, "cannot signal child"),
    }
}

/// Delay before restart number `attempt` (0-based) of a crashing child:
/// 0.5 s doubling up to 30 s.
pub fn backoff(attempt: u32) -> Duration {
    let ms = 500u64.saturating_mul(1u64 << attempt.min(16));
    Duration::from_millis(ms.min(30_000))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        assert_eq!(backoff(0), Duration::from_millis(500));
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(3), Duration::from_secs(4));
        assert_eq!(backoff(10), Duration::from_secs(30));
        assert_eq!(backoff(u32::MAX), Duration::from_secs(30));
    }

    #[test]
    fn exit_reads_well() {
        assert_eq!(Exit::Code(1).to_string(), "exit code 1");
        assert_eq!(Exit::Signal(9).to_string(), "signal SIGKILL");
    }

    #[test]
    fn unknown_user_is_named() {
        let e = Identity::lookup("no-such-user-capstan").unwrap_err();
        assert!(e.to_string().contains("no-such-user-capstan"));
    }
}

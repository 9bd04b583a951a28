//! The PgBouncer child process and PID 1 duties.
//!
//! As PID 1 the supervisor inherits every orphan in the pod and must reap
//! it. A single reaper owns `waitpid(-1)`: it reaps everything and forwards
//! each exit, so the supervisor learns its own child's status from the same
//! place instead of racing the reaper for it. Nothing else in this process
//! may wait for children.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{Gid, Pid, Uid, User};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("user {0:?} does not exist; set --run-as to an existing user")]
    NoSuchUser(String),
    #[error("cannot look up user {user:?}: {message}")]
    Lookup { user: String, message: String },
    #[error("cannot start {program}: {message}")]
    Spawn { program: String, message: String },
    #[error("cannot install the SIGCHLD handler: {0}")]
    Signal(String),
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

/// Starts `program args` as `identity` (when given), with stdout/stderr
/// inherited so its log lines reach the container log. The child is not
/// waited for here: its exit arrives through [`reaper`].
pub fn spawn(
    program: &PathBuf,
    args: &[OsString],
    identity: Option<Identity>,
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
    let child = command.spawn().map_err(|e| ProcessError::Spawn {
        program: program.display().to_string(),
        message: e.to_string(),
    })?;
    let pid = Pid::from_raw(child.id() as i32);
    // Dropping a std Child neither waits nor kills; the reaper collects it.
    drop(child);
    Ok(pid)
}

/// Sends `signal` to `pid`; a process that is already gone is not an error.
pub fn signal_child(pid: Pid, signal: Signal) {
    match kill(pid, signal) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(e) => tracing::warn!(pid = pid.as_raw(), %signal, error = %e, "cannot signal child"),
    }
}

/// Starts the reaper task: every child that ends (ours or an orphan handed
/// to PID 1) is reaped, and its pid and exit are sent on the channel.
pub fn reaper() -> Result<mpsc::UnboundedReceiver<(Pid, Exit)>, ProcessError> {
    let mut sigchld =
        signal(SignalKind::child()).map_err(|e| ProcessError::Signal(e.to_string()))?;
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        // SIGCHLD coalesces; the periodic sweep also catches a missed one.
        let mut sweep = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = sigchld.recv() => {}
                _ = sweep.tick() => {}
            }
            loop {
                match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::Exited(pid, code)) => {
                        let _ = tx.send((pid, Exit::Code(code)));
                    }
                    Ok(WaitStatus::Signaled(pid, sig, _)) => {
                        let _ = tx.send((pid, Exit::Signal(sig as i32)));
                    }
                    Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => break,
                    Ok(_) => {}
                    Err(Errno::EINTR) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "waitpid failed");
                        break;
                    }
                }
            }
            if tx.is_closed() {
                break;
            }
        }
    });
    Ok(rx)
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

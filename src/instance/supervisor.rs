//! The `postgres` child: start it, re-emit its log lines, notice its exit,
//! and stop it with escalating shutdown modes.
//!
//! PostgreSQL logs to stderr (`log_destination = stderr`, no logging
//! collector); every line is re-emitted through `tracing` with target
//! `postgres` inside the manager's span, so the pod log carries one
//! structured stream tagged with cluster and instance, with the level taken
//! from PostgreSQL's own severity.

use std::os::fd::{AsFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;
use tokio::sync::watch;
use tracing::Instrument;

use crate::agents::pid1;

#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("cannot start postgres ({bin}): {source}")]
    Spawn { bin: String, source: std::io::Error },
}

/// A running (or just exited) postmaster.
pub struct PostgresChild {
    pid: u32,
    exit: watch::Receiver<Option<String>>,
    /// The last `FATAL`/`PANIC`/`ERROR` line it logged: why it stopped.
    last_error: Arc<Mutex<Option<String>>>,
    /// Copies of the read ends of its stdout and stderr pipes, for a new
    /// manager image to go on reading (see [`PostgresChild::handover`]).
    log_pipes: Vec<OwnedFd>,
}

/// A postmaster handed from one manager image to the next across `exec`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Adoptable {
    pub pid: u32,
    /// Its log pipes, open in the new image.
    pub log_fds: Vec<RawFd>,
}

/// PostgreSQL's shutdown modes, by signal to the postmaster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Wait for clients to disconnect.
    Smart,
    /// Disconnect clients, then shut down cleanly (with a checkpoint).
    Fast,
    /// Quit at once; crash recovery at the next start.
    Immediate,
    /// Last resort when immediate does not return.
    Kill,
}

impl Mode {
    fn signal(self) -> Signal {
        match self {
            Mode::Smart => Signal::SIGTERM,
            Mode::Fast => Signal::SIGINT,
            Mode::Immediate => Signal::SIGQUIT,
            Mode::Kill => Signal::SIGKILL,
        }
    }
}

impl PostgresChild {
    /// Starts `postgres -D pgdata` with extra `-c name=value` settings.
    pub fn spawn(
        bin_dir: &Path,
        pgdata: &Path,
        settings: &[(&str, &str)],
    ) -> Result<Self, SupervisorError> {
        let bin = bin_dir.join("postgres");
        let mut command = Command::new(&bin);
        command.arg("-D").arg(pgdata);
        for (name, value) in settings {
            command.arg("-c").arg(format!("{name}={value}"));
        }
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group: a signal meant for the manager (Ctrl-C
            // in a terminal) must not reach the postmaster directly.
            .process_group(0);
        let mut tracked = pid1::spawn(&mut command).map_err(|source| SupervisorError::Spawn {
            bin: bin.display().to_string(),
            source,
        })?;
        let pid = tracked.pid();
        let last_error = Arc::new(Mutex::new(None));
        let mut log_pipes = vec![];
        if let Some(out) = tracked.child.stdout.take() {
            log_pipes.extend(out.as_fd().try_clone_to_owned().ok());
            tokio::spawn(forward_log(out, last_error.clone()).in_current_span());
        }
        if let Some(err) = tracked.child.stderr.take() {
            log_pipes.extend(err.as_fd().try_clone_to_owned().ok());
            tokio::spawn(forward_log(err, last_error.clone()).in_current_span());
        }
        let (tx, rx) = watch::channel(None);
        tokio::spawn(
            async move {
                let description = match tracked.wait().await {
                    Ok(status) => describe(status),
                    Err(e) => format!("unknown status ({e})"),
                };
                let _ = tx.send(Some(description));
            }
            .in_current_span(),
        );
        tracing::info!(pid, "postgres started");
        Ok(Self {
            pid,
            exit: rx,
            last_error,
            log_pipes,
        })
    }

    /// What the next manager image needs to adopt this postmaster: its PID
    /// and its log pipes, kept open across `exec`.
    pub fn handover(&self) -> Result<Adoptable, crate::agents::binary::BinaryError> {
        let log_fds = self
            .log_pipes
            .iter()
            .map(|fd| crate::agents::binary::inherit(fd.as_fd()))
            .collect::<Result<_, _>>()?;
        Ok(Adoptable {
            pid: self.pid,
            log_fds,
        })
    }

    /// Takes over a postmaster the previous manager image started: it is
    /// still this process's child (exec keeps the PID), so its exit is
    /// waited for here; its log pipes are read on.
    pub fn adopt(adoptable: Adoptable) -> Self {
        let pid = adoptable.pid;
        let last_error = Arc::new(Mutex::new(None));
        let mut log_pipes = vec![];
        for raw in adoptable.log_fds {
            // SAFETY: the previous image cleared close-on-exec on exactly
            // these descriptors for us, and nothing else here owns them.
            let fd = unsafe { OwnedFd::from_raw_fd(raw) };
            log_pipes.extend(fd.try_clone().ok());
            match tokio::net::unix::pipe::Receiver::from_owned_fd(fd) {
                Ok(pipe) => {
                    tokio::spawn(forward_log(pipe, last_error.clone()).in_current_span());
                }
                Err(e) => tracing::warn!(fd = raw, error = %e, "cannot read postgres's log pipe"),
            }
        }
        pid1::adopt(pid);
        let (tx, rx) = watch::channel(None);
        // exec took tokio's handle on it: wait on a thread of its own.
        let span = tracing::Span::current();
        std::thread::spawn(move || {
            let _entered = span.enter();
            let description = match nix::sys::wait::waitpid(Pid::from_raw(pid as i32), None) {
                Ok(nix::sys::wait::WaitStatus::Exited(_, code)) => format!("exit code {code}"),
                Ok(nix::sys::wait::WaitStatus::Signaled(_, signal, _)) => {
                    format!("killed by {signal}")
                }
                Ok(other) => format!("{other:?}"),
                Err(e) => format!("unknown status ({e})"),
            };
            pid1::forget(pid);
            let _ = tx.send(Some(description));
        });
        tracing::info!(pid, "adopted the running postgres");
        Self {
            pid,
            exit: rx,
            last_error,
            log_pipes,
        }
    }

    /// The last error line it logged, without the log line prefix.
    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// How it exited, once it has.
    pub fn exited(&self) -> Option<String> {
        self.exit.borrow().clone()
    }

    /// A receiver that changes when the postmaster exits.
    pub fn exit_watch(&self) -> watch::Receiver<Option<String>> {
        self.exit.clone()
    }

    /// A handle that can signal this postmaster from another task (fencing).
    pub fn signaller(&self) -> Signaller {
        Signaller {
            pid: self.pid,
            exit: self.exit.clone(),
        }
    }

    pub fn signal(&self, mode: Mode) {
        self.signaller().signal(mode);
    }

    /// Waits up to `timeout` for the exit.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<String> {
        let _ = tokio::time::timeout(timeout, self.exit.wait_for(Option::is_some)).await;
        self.exited()
    }

    /// Tries each mode in turn for its share of time; returns how it exited.
    pub async fn stop(&mut self, plan: &[(Mode, Duration)]) -> Option<String> {
        for (mode, wait) in plan {
            if let Some(status) = self.exited() {
                return Some(status);
            }
            tracing::info!(pid = self.pid, mode = ?mode, "stopping postgres");
            self.signal(*mode);
            if let Some(status) = self.wait_exit(*wait).await {
                tracing::info!(pid = self.pid, status = %status, "postgres stopped");
                return Some(status);
            }
        }
        self.exited()
    }
}

/// Signals a postmaster without owning it.
#[derive(Clone, Debug)]
pub struct Signaller {
    pid: u32,
    exit: watch::Receiver<Option<String>>,
}

impl Signaller {
    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn signal(&self, mode: Mode) {
        if self.exit.borrow().is_none() {
            // The PID is ours until we reap it, so it cannot be reused meanwhile.
            let _ = kill(Pid::from_raw(self.pid as i32), mode.signal());
        }
    }
}

/// Whether the postmaster says it accepts connections (`postmaster.pid`
/// line 8 is `ready` or `standby`), as pg_ctl checks: polling with
/// connection attempts would fill the log with "starting up" errors.
pub fn postmaster_ready(pgdata: &Path) -> bool {
    std::fs::read_to_string(pgdata.join("postmaster.pid"))
        .ok()
        .and_then(|text| text.lines().nth(7).map(|l| l.trim().to_string()))
        .is_some_and(|status| status == "ready" || status == "standby")
}

/// Dropped while still running (a bootstrap cancelled by shutdown, or a
/// panic): quit at once rather than leave an orphaned postmaster behind.
impl Drop for PostgresChild {
    fn drop(&mut self) {
        if self.exited().is_none() {
            tracing::warn!(
                pid = self.pid,
                "postgres still running while abandoned; stopping it immediately"
            );
            self.signal(Mode::Immediate);
        }
    }
}

/// Shutdown plan within `budget`: smart for a fifth, fast until nine tenths,
/// immediate for the rest, then SIGKILL.
pub fn shutdown_plan(budget: Duration) -> Vec<(Mode, Duration)> {
    let smart = budget / 5;
    let fast = budget * 7 / 10;
    let immediate = budget
        .saturating_sub(smart + fast)
        .max(Duration::from_secs(1));
    vec![
        (Mode::Smart, smart),
        (Mode::Fast, fast),
        (Mode::Immediate, immediate),
        (Mode::Kill, Duration::from_secs(5)),
    ]
}

/// Plan for role changes: disconnect clients now, shut down cleanly.
pub fn fast_plan(timeout: Duration) -> Vec<(Mode, Duration)> {
    vec![
        (Mode::Fast, timeout),
        (Mode::Immediate, Duration::from_secs(10)),
        (Mode::Kill, Duration::from_secs(5)),
    ]
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => match Signal::try_from(signal) {
            Ok(s) => format!("killed by {s}"),
            Err(_) => format!("killed by signal {signal}"),
        },
        _ => status.to_string(),
    }
}

async fn forward_log(stream: impl AsyncRead + Unpin, last_error: Arc<Mutex<Option<String>>>) {
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        match severity(&line) {
            Severity::Error => {
                tracing::error!(target: "postgres", "{line}");
                let message = error_message(&line).to_string();
                *last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(message);
            }
            Severity::Warn => tracing::warn!(target: "postgres", "{line}"),
            Severity::Info => tracing::info!(target: "postgres", "{line}"),
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Severity {
    Error,
    Warn,
    Info,
}

/// `FATAL:  recovery ended before …` out of a whole log line.
fn error_message(line: &str) -> &str {
    ["PANIC:  ", "FATAL:  ", "ERROR:  "]
        .iter()
        .find_map(|tag| line.find(tag).map(|at| &line[at..]))
        .unwrap_or(line)
}

fn severity(line: &str) -> Severity {
    const ERRORS: &[&str] = &["PANIC:  ", "FATAL:  ", "ERROR:  "];
    if ERRORS.iter().any(|tag| line.contains(tag)) {
        Severity::Error
    } else if line.contains("WARNING:  ") {
        Severity::Warn
    } else {
        Severity::Info
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn severity_follows_postgres_tags() {
        assert_eq!(
            severity("2026-01-01 00:00:00 UTC [12] FATAL:  role \"x\" does not exist"),
            Severity::Error
        );
        assert_eq!(
            severity("2026-01-01 [12] WARNING:  could not flush"),
            Severity::Warn
        );
        assert_eq!(
            severity("2026-01-01 [12] LOG:  database system is ready"),
            Severity::Info
        );
    }

    #[test]
    fn error_lines_lose_their_prefix() {
        assert_eq!(
            error_message(
                "2026-01-01 00:00:00 UTC [12] FATAL:  recovery ended before configured recovery target was reached"
            ),
            "FATAL:  recovery ended before configured recovery target was reached"
        );
        assert_eq!(error_message("plain"), "plain");
    }

    #[test]
    fn shutdown_plan_fits_the_budget() {
        let plan = shutdown_plan(Duration::from_secs(50));
        let modes: Vec<_> = plan.iter().map(|(m, _)| *m).collect();
        assert_eq!(
            modes,
            vec![Mode::Smart, Mode::Fast, Mode::Immediate, Mode::Kill]
        );
        let before_kill: Duration = plan[..3].iter().map(|(_, d)| *d).sum();
        assert_eq!(before_kill, Duration::from_secs(50));
    }
}

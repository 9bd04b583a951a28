//! Runs pgBackRest commands to completion, as the PostgreSQL OS user, with
//! a time limit, and turns a failure into pgBackRest's own last `ERROR:`
//! line: the message a `PostgresBackup` object shows the user.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::AsyncReadExt;
use tokio::process::Command;

use super::command::{self, BackupType, CommandError, Operation, Restore};
use super::info::{self, InfoError, StanzaInfo};
use crate::agents::pid1;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Command(#[from] CommandError),
    #[error("cannot run {binary}: {source}")]
    Spawn {
        binary: String,
        source: std::io::Error,
    },
    #[error("pgbackrest {command} did not finish within {after:?} and was stopped")]
    Timeout { command: String, after: Duration },
    #[error("pgbackrest {command} failed (exit code {code:?}): {message}")]
    Failed {
        command: String,
        code: Option<i32>,
        /// pgBackRest's last `ERROR:` line, or the output's tail without one.
        message: String,
    },
    #[error(transparent)]
    Info(#[from] InfoError),
    #[error("pgbackrest info printed no stanza {0}")]
    NoStanza(String),
}

impl RunError {
    /// pgBackRest's own words when it failed.
    pub fn pgbackrest_message(&self) -> Option<&str> {
        match self {
            Self::Failed { message, .. } => Some(message),
            _ => None,
        }
    }
}

/// What a finished command printed.
#[derive(Debug, Clone)]
pub struct Output {
    pub stdout: String,
    pub duration: Duration,
}

/// Runs commands for one stanza.
#[derive(Debug, Clone)]
pub struct Runner {
    pub pgbackrest: PathBuf,
    pub config: PathBuf,
    pub stanza: String,
    /// (uid, gid) to run as when the caller is not the PostgreSQL user
    /// (tests run as root; the instance manager already is that user).
    pub run_as: Option<(u32, u32)>,
    /// Extra environment, e.g. `PGBACKREST_REPO1_S3_KEY` from a Secret.
    /// Values are never logged.
    pub env: Vec<(String, String)>,
    pub timeout: Duration,
}

/// The last line carrying `ERROR:` (pgBackRest prints `ERROR: [nnn]: …`),
/// without the timestamp/process prefix of file-style lines, joined with
/// the indented lines that continue it (the cause of a multi-line error).
pub fn last_error_line(output: &str) -> Option<String> {
    let lines: Vec<&str> = output.lines().collect();
    let (index, at) = lines
        .iter()
        .enumerate()
        .rev()
        .find_map(|(i, line)| line.find("ERROR:").map(|at| (i, at)))?;
    let mut message = lines[index][at..].trim().to_string();
    for line in &lines[index + 1..] {
        if !line.starts_with(char::is_whitespace) || line.trim().is_empty() {
            break;
        }
        message.push(' ');
        message.push_str(line.trim());
    }
    Some(message)
}

/// An S3 error carries the whole HTTP exchange (pgBackRest redacts the
/// signature); keep what fits a status field and an Event.
const MAX_MESSAGE: usize = 2000;

fn shorten(message: String) -> String {
    if message.len() <= MAX_MESSAGE {
        return message;
    }
    let mut end = MAX_MESSAGE;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &message[..end])
}

fn tail(output: &str, lines: usize) -> String {
    let all: Vec<&str> = output.lines().filter(|l| !l.trim().is_empty()).collect();
    all[all.len().saturating_sub(lines)..].join(" | ")
}

impl Runner {
    pub fn new(pgbackrest: impl Into<PathBuf>, config: impl Into<PathBuf>, stanza: &str) -> Self {
        Self {
            pgbackrest: pgbackrest.into(),
            config: config.into(),
            stanza: stanza.to_string(),
            run_as: None,
            env: vec![],
            timeout: Duration::from_secs(3600),
        }
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn argv(&self, op: &Operation) -> Result<Vec<String>, CommandError> {
        command::argv(&self.config, &self.stanza, op)
    }

    /// Runs `op`; stdout on success (pgBackRest's console log or JSON).
    pub async fn run(&self, op: &Operation) -> Result<Output, RunError> {
        let args = self.argv(op)?;
        let name = op.name().to_string();
        tracing::info!(target: "capstan::backup", command = %name, args = ?args, "running pgbackrest");
        let mut cmd = Command::new(&self.pgbackrest);
        cmd.args(&args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .env("LC_ALL", "C");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        if let Some((uid, gid)) = self.run_as {
            cmd.uid(uid).gid(gid);
        }
        let started = Instant::now();
        let mut child = pid1::spawn(&mut cmd).map_err(|source| RunError::Spawn {
            binary: self.pgbackrest.display().to_string(),
            source,
        })?;
        let mut stdout = child.child.stdout.take();
        let mut stderr = child.child.stderr.take();
        let read_out = tokio::spawn(async move {
            let mut text = String::new();
            if let Some(s) = stdout.as_mut() {
                let _ = s.read_to_string(&mut text).await;
            }
            text
        });
        let read_err = tokio::spawn(async move {
            let mut text = String::new();
            if let Some(s) = stderr.as_mut() {
                let _ = s.read_to_string(&mut text).await;
            }
            text
        });
        let status = match tokio::time::timeout(self.timeout, child.wait()).await {
            Ok(status) => status.map_err(|source| RunError::Spawn {
                binary: self.pgbackrest.display().to_string(),
                source,
            })?,
            Err(_) => {
                // SIGTERM first: pgBackRest then stops its workers and
                // releases its locks; SIGKILL (kill_on_drop) if it lingers.
                let pid = child.pid() as i32;
                let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
                if tokio::time::timeout(Duration::from_secs(10), child.wait())
                    .await
                    .is_err()
                {
                    let _ = child.child.start_kill();
                    let _ = child.wait().await;
                }
                tracing::warn!(target: "capstan::backup", command = %name, timeout = ?self.timeout, "pgbackrest timed out");
                return Err(RunError::Timeout {
                    command: name,
                    after: self.timeout,
                });
            }
        };
        let stdout = read_out.await.unwrap_or_default();
        let stderr = read_err.await.unwrap_or_default();
        let duration = started.elapsed();
        if status.success() {
            tracing::info!(target: "capstan::backup", command = %name, ?duration, "pgbackrest finished");
            return Ok(Output { stdout, duration });
        }
        let message = last_error_line(&stderr)
            .or_else(|| last_error_line(&stdout))
            .unwrap_or_else(|| {
                let t = tail(&format!("{stdout}\n{stderr}"), 5);
                if t.is_empty() {
                    format!("no output; {status}")
                } else {
                    t
                }
            });
        let message = shorten(message);
        tracing::warn!(target: "capstan::backup", command = %name, code = ?status.code(), %message, "pgbackrest failed");
        Err(RunError::Failed {
            command: name,
            code: status.code(),
            message,
        })
    }

    pub async fn stanza_create(&self) -> Result<Output, RunError> {
        self.run(&Operation::StanzaCreate).await
    }

    /// stanza-create, or stanza-upgrade when the repository holds the
    /// stanza for the data before a major upgrade (pg_upgrade gives the
    /// cluster a new system identifier and version).
    pub async fn stanza_create_or_upgrade(&self) -> Result<Output, RunError> {
        match self.stanza_create().await {
            Err(e) if e.pgbackrest_message().is_some_and(stanza_predates_upgrade) => {
                tracing::info!(target: "capstan::backup", stanza = %self.stanza, "the stanza predates a major upgrade; upgrading it");
                self.run(&Operation::StanzaUpgrade).await
            }
            other => other,
        }
    }

    pub async fn check(&self) -> Result<Output, RunError> {
        self.run(&Operation::Check).await
    }

    pub async fn backup(&self, kind: BackupType, repo: Option<u32>) -> Result<Output, RunError> {
        self.run(&Operation::Backup {
            kind,
            repo,
            standby: None,
        })
        .await
    }

    /// A backup on this standby; the primary's part through `standby`.
    pub async fn backup_from_standby(
        &self,
        kind: BackupType,
        repo: Option<u32>,
        standby: &super::command::Standby,
    ) -> Result<Output, RunError> {
        self.run(&Operation::Backup {
            kind,
            repo,
            standby: Some(standby.clone()),
        })
        .await
    }

    pub async fn expire(&self, repo: Option<u32>) -> Result<Output, RunError> {
        self.run(&Operation::Expire { repo, set: None }).await
    }

    pub async fn restore(&self, restore: Restore) -> Result<Output, RunError> {
        self.run(&Operation::Restore(restore)).await
    }

    /// This stanza's backups and archive.
    pub async fn info(&self, repo: Option<u32>) -> Result<StanzaInfo, RunError> {
        let out = self.run(&Operation::Info { repo, set: None }).await?;
        info::parse(&out.stdout)?
            .into_iter()
            .find(|s| s.name == self.stanza)
            .ok_or_else(|| RunError::NoStanza(self.stanza.clone()))
    }
}

/// pgBackRest's words when the stanza's recorded version or system
/// identifier is not the database's (`backup and archive info files exist
/// but do not match the database`).
fn stanza_predates_upgrade(message: &str) -> bool {
    message.contains("do not match the database")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_pgbackrests_last_error_line() {
        let out = "WARN: something\n\
                   2026-12-04 19:13:15.643 P00  ERROR: [039]: first\n\
                   ERROR: [049]: unable to find valid repository:\n";
        assert_eq!(
            last_error_line(out).as_deref(),
            Some("ERROR: [049]: unable to find valid repository:")
        );
        assert_eq!(last_error_line("INFO: fine\n"), None);
        let multi = "ERROR: [055]: unable to load info file 'x' or 'x.copy':\n\
                     \x20                                   FileMissingError: unable to open missing file\n\
                     \x20                                   HINT: does the stanza exist?\n\
                     INFO: done\n";
        assert_eq!(
            last_error_line(multi).as_deref(),
            Some(
                "ERROR: [055]: unable to load info file 'x' or 'x.copy': FileMissingError: unable to open missing file HINT: does the stanza exist?"
            )
        );
    }

    #[test]
    fn long_messages_are_cut_on_a_character_boundary() {
        let long = "é".repeat(MAX_MESSAGE);
        let short = shorten(long);
        assert!(short.len() <= MAX_MESSAGE + "…".len());
        assert!(short.ends_with('…'));
        assert_eq!(shorten("ERROR: x".into()), "ERROR: x");
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn failure_carries_the_error_line_and_timeout_stops_the_command() {
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("pgbackrest");
        std::fs::write(
            &fake,
            "#!/bin/sh\n\
             case \"$3\" in\n\
             check) echo 'P00 INFO: check begin'; echo 'ERROR: [037]: check command requires option: stanza' >&2; exit 37;;\n\
             info) echo '[{\"name\":\"db\",\"backup\":[],\"archive\":[]}]';;\n\
             *) sleep 30;;\n\
             esac\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let runner = Runner::new(&fake, "/c.conf", "db").with_timeout(Duration::from_millis(500));
        let err = runner.check().await.unwrap_err();
        assert_eq!(
            err.pgbackrest_message(),
            Some("ERROR: [037]: check command requires option: stanza")
        );
        assert!(err.to_string().contains("exit code Some(37)"), "{err}");
        let info = runner.info(None).await.unwrap();
        assert!(info.backups.is_empty());
        let started = Instant::now();
        let err = runner.stanza_create().await.unwrap_err();
        assert!(matches!(err, RunError::Timeout { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}

//! pgBackRest's TLS server (`pgbackrest server`) as a child process, its
//! output relayed to the log: run by instances (backups from a standby) and
//! by the repository host.

use std::path::Path;
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;
use tracing::Instrument;

use crate::agents::pid1::{self, Tracked};

/// Starts `pgbackrest --config=<config> server`, as `owner` (uid, gid) when
/// given; killed when the handle is dropped.
pub fn spawn(
    pgbackrest: &Path,
    config: &Path,
    owner: Option<(u32, u32)>,
) -> Result<Tracked, String> {
    let mut cmd = Command::new(pgbackrest);
    cmd.arg(format!("--config={}", config.display()))
        .arg("server")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .env("LC_ALL", "C");
    if let Some((uid, gid)) = owner {
        cmd.uid(uid).gid(gid);
    }
    let mut child = pid1::spawn(&mut cmd).map_err(|e| {
        format!(
            "cannot start pgBackRest's TLS server ({}): {e}",
            pgbackrest.display()
        )
    })?;
    for stream in [
        child
            .child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn AsyncRead + Unpin + Send>),
        child
            .child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn AsyncRead + Unpin + Send>),
    ]
    .into_iter()
    .flatten()
    {
        tokio::spawn(relay(stream).in_current_span());
    }
    Ok(child)
}

async fn relay(stream: impl AsyncRead + Unpin) {
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        tracing::warn!(target: "pgbackrest", operation = "server", "{line}");
    }
}

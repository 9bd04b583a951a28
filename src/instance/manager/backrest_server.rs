//! pgBackRest's TLS server (`pgbackrest server`), with backups from a
//! standby (`spec.backup.target: preferReplica`): every instance runs one,
//! so whichever is primary serves the standby that takes a backup (start
//! and stop backup, the few files only the primary has). It reads its
//! configuration and certificate once, at start: a change to either
//! restarts it, and so does its exit, at most every few seconds.

use std::time::{Duration, Instant};

use crate::agents::pid1::Tracked;
use crate::agents::tls::TlsFiles;

use super::super::authority::Authority;
use super::Manager;
use super::archive::owner_for;

const RESTART_AFTER: Duration = Duration::from_secs(5);

#[derive(Default)]
pub(super) struct ServerUpkeep {
    child: Option<Tracked>,
    /// What the running server was started with (configuration and
    /// certificate digest).
    version: Option<u64>,
    started: Option<Instant>,
}

/// The server's version: the configuration's and the certificate files'
/// (a rotated certificate is a new version).
fn version_with_certificate(config_version: u64, tls: &TlsFiles) -> Result<u64, String> {
    let mut text = config_version.to_string();
    for path in tls.all() {
        let content = std::fs::read_to_string(path).map_err(|e| {
            format!(
                "cannot read {} for pgBackRest's TLS server: {e}; the pod mounts it from the cluster's pgbackrest certificate Secret",
                path.display()
            )
        })?;
        text.push_str(&content);
    }
    Ok(super::archive::version_of(&text))
}

impl<A: Authority> Manager<A> {
    /// Stops the server now (the manager is about to re-execute).
    pub(super) fn stop_backrest_server(&mut self) {
        if let Some(mut child) = self.backrest_server.child.take() {
            let _ = child.child.start_kill();
        }
        self.backrest_server.version = None;
    }

    /// Keeps the server running while `config_version` is `Some` (the
    /// written pgbackrest.conf has `tls-server-*`), stopped otherwise.
    pub(super) fn keep_backrest_server(
        &mut self,
        config_version: Option<u64>,
    ) -> Result<(), String> {
        let server = &mut self.backrest_server;
        if let Some(child) = server.child.as_mut()
            && let Ok(Some(status)) = child.child.try_wait()
        {
            tracing::warn!(operation = "server", %status, "pgBackRest's TLS server exited; restarting it");
            server.child = None;
        }
        let Some(config_version) = config_version else {
            if server.child.take().is_some() {
                tracing::info!(
                    operation = "server",
                    "pgBackRest's TLS server stopped: no longer needed"
                );
            }
            server.version = None;
            return Ok(());
        };
        let version = version_with_certificate(config_version, &self.inputs.backrest_tls())?;
        if server.child.is_some() && server.version == Some(version) {
            return Ok(());
        }
        if server.child.is_none()
            && server.version == Some(version)
            && server.started.is_some_and(|t| t.elapsed() < RESTART_AFTER)
        {
            return Ok(());
        }
        // Dropping the old child kills it (kill_on_drop) before the new one binds.
        if server.child.take().is_some() {
            tracing::info!(
                operation = "server",
                "pgBackRest's TLS server restarts with a new configuration or certificate"
            );
        }
        let child = crate::backup::server::spawn(
            &self.inputs.pgbackrest,
            &self.inputs.backrest_config(),
            owner_for(&self.inputs.data_dir),
        )?;
        tracing::info!(
            operation = "server",
            pid = child.pid(),
            "pgBackRest's TLS server started"
        );
        server.child = Some(child);
        server.version = Some(version);
        server.started = Some(Instant::now());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rotated_certificate_is_a_new_version() {
        let dir = tempfile::tempdir().unwrap();
        let tls = TlsFiles::new(dir.path().to_path_buf());
        assert!(
            version_with_certificate(1, &tls)
                .unwrap_err()
                .contains("pgbackrest certificate Secret")
        );
        for path in tls.all() {
            std::fs::write(path, "a").unwrap();
        }
        let first = version_with_certificate(1, &tls).unwrap();
        assert_eq!(first, version_with_certificate(1, &tls).unwrap());
        assert_ne!(first, version_with_certificate(2, &tls).unwrap());
        std::fs::write(&tls.cert, "b").unwrap();
        assert_ne!(first, version_with_certificate(1, &tls).unwrap());
    }
}

//! The manager's side of a restore as bootstrap: the source's own
//! `pgbackrest.conf` (apart from the cluster's, which names this cluster's
//! stanza), the attempts and their backoff, and the report the operator
//! turns into `Stalled`/`RestoreFailed`. The data work is in
//! [`crate::instance::restore`].

use std::path::Path;
use std::time::Duration;

use crate::backup::config::{self as backrest, Invocation, Secrets};
use crate::backup::runner::Runner;
use crate::contract::backup::BackupSettings;
use crate::contract::restore::{RestorePhase, RestoreReport, RestoreSettings};
use crate::contract::settings::InstanceSettings;

use super::super::authority::Authority;
use super::super::backup::{backrest_config, backrest_dirs};
use super::super::binaries::{self, Binaries};
use super::super::bootstrap::BootstrapSecrets;
use super::Manager;
use super::archive::{make_dir, owner_for};

/// `pgbackrest restore` downloads the whole backup.
const RESTORE_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
const RETRY_MIN: Duration = Duration::from_secs(10);
const RETRY_MAX: Duration = Duration::from_secs(300);

/// The wait after failed attempt `attempts` (1-based): 10 s, doubling, up
/// to 5 min. An attempt may download a whole backup before it fails, so
/// retries are slower than a start's.
pub(super) fn retry_after(attempts: u32) -> Duration {
    let doublings = attempts.saturating_sub(1).min(16);
    (RETRY_MIN * 2u32.pow(doublings)).min(RETRY_MAX)
}

/// What the report says about the restore; kept across attempts.
#[derive(Default)]
pub(super) struct RestoreState {
    pub(super) report: Option<RestoreReport>,
}

impl<A: Authority> Manager<A> {
    /// The first primary of a restored cluster: restore, recover to the
    /// target, promote, then the data is in place. On failure the report
    /// keeps pgBackRest's (or PostgreSQL's) message and the wait before
    /// the next attempt; nothing was started on PGDATA.
    pub(super) async fn restore_bootstrap(
        &mut self,
        settings: &InstanceSettings,
        bins: &Binaries,
        restore: &RestoreSettings,
    ) -> Result<(), (String, Duration)> {
        let previous = self.restore.report.take();
        let attempts = previous.as_ref().map_or(0, |r| r.attempts) + 1;
        let last_error = previous.and_then(|r| r.last_error);
        self.restore.report = Some(RestoreReport {
            phase: RestorePhase::Restoring,
            stanza: restore.stanza.clone(),
            attempts,
            last_error,
            retry_in_seconds: None,
        });
        self.publish();
        self.busy(Some("restore"));
        let result = self.attempt_restore(settings, bins, restore).await;
        self.busy(None);
        let Some(report) = self.restore.report.as_mut() else {
            return Ok(());
        };
        match result {
            Ok(()) => {
                tracing::info!(operation = "restore", stanza = %restore.stanza, attempts, "the cluster runs on the restored data");
                report.phase = RestorePhase::Completed;
                report.last_error = None;
                Ok(())
            }
            Err(message) => {
                let wait = retry_after(attempts);
                tracing::warn!(operation = "restore", stanza = %restore.stanza, attempts, retry_in_s = wait.as_secs(), error = %message, "restore failed; retrying later");
                report.phase = RestorePhase::Waiting;
                report.last_error = Some(message.clone());
                report.retry_in_seconds = Some(wait.as_secs());
                Err((message, wait))
            }
        }
    }

    async fn attempt_restore(
        &mut self,
        settings: &InstanceSettings,
        bins: &Binaries,
        restore: &RestoreSettings,
    ) -> Result<(), String> {
        let secrets = BootstrapSecrets::read(&self.inputs, settings).map_err(|e| e.to_string())?;
        binaries::check_pgbackrest(&self.inputs.pgbackrest)
            .await
            .map_err(|e| e.to_string())?;
        let ops = self.ops(settings, bins);
        let (runner, source) = self.write_source_config(restore, &ops.partial())?;
        ops.restore_files(&runner, &restore.target)
            .await
            .map_err(|e| e.to_string())?;
        if let Some(report) = self.restore.report.as_mut() {
            report.phase = RestorePhase::Recovering;
        }
        self.publish();
        self.ops(settings, bins)
            .recover(&secrets, &source.restore_command())
            .await
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    /// `<backrest dir>/restore/pgbackrest.conf`: the source's stanza and
    /// repository, with the staging directory as its data directory; its
    /// logs, locks and spool beside it. The credential files are read on
    /// every attempt, so a fixed Secret is used by the next one.
    fn write_source_config(
        &self,
        restore: &RestoreSettings,
        pg_path: &Path,
    ) -> Result<(Runner, Invocation), String> {
        let dir = self.inputs.backrest_dir.join("restore");
        let mut config = backrest_config(
            &self.inputs,
            &BackupSettings {
                stanza: restore.stanza.clone(),
                repositories: vec![restore.repository.clone()],
                archive_timeout_seconds: 60,
                // archive-get prefetches segments in the background.
                archive_async: true,
                standby_backups: None,
            },
        );
        config.stanza.pg_path = pg_path.to_path_buf();
        config.log_path = dir.join("log");
        config.lock_path = dir.join("lock");
        config.spool_path = dir.join("spool");
        let secrets = Secrets::load(&config.repositories).map_err(|e| {
            format!(
                "the restore source's credentials: {e}; check the Secret and keys named by spec.bootstrap.restore.source.repository.{}.credentials",
                restore.repository.storage.kind()
            )
        })?;
        let text = backrest::render(&config, &secrets).map_err(|e| e.to_string())?;
        let owner = owner_for(&self.inputs.data_dir);
        make_dir(&dir, owner)?;
        for d in backrest_dirs(&config) {
            make_dir(&d, owner)?;
        }
        let path = dir.join("pgbackrest.conf");
        backrest::write(&path, &text, owner).map_err(|e| e.to_string())?;
        let tool = self.inputs.pgbackrest.clone();
        let mut runner = Runner::new(&tool, &path, &restore.stanza).with_timeout(RESTORE_TIMEOUT);
        runner.run_as = owner;
        let source = Invocation {
            pgbackrest: tool,
            config: path,
            stanza: restore.stanza.clone(),
        };
        Ok((runner, source))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_attempts_back_off_to_five_minutes() {
        let waits: Vec<u64> = (1..=7).map(|n| retry_after(n).as_secs()).collect();
        assert_eq!(waits, [10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(retry_after(0), RETRY_MIN);
        assert_eq!(retry_after(u32::MAX), RETRY_MAX);
    }
}

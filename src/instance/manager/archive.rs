//! The manager's side of backups, every tick: find pgBackRest, keep
//! `pgbackrest.conf` equal to what the settings and the credential files
//! (refreshed by the kubelet) say, and on the primary create the stanza,
//! read `pg_stat_archiver` and what the repositories hold (now and then)
//! for the report. Jobs live in
//! [`super::super::backup`].

use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::backup::config::{self as backrest, ConfigError, Secrets};
use crate::backup::repository::Repository;
use crate::backup::runner::Runner;
use crate::contract::backup::BackupSettings;
use crate::contract::settings::InstanceSettings;

use super::super::authority::Authority;
use super::super::backup::{backrest_config, backrest_dirs, standby_source};
use super::super::binaries;
use super::super::local::Archiver;
use super::Manager;
use super::errors::Source;

/// What the backup upkeep remembers between ticks.
#[derive(Default)]
pub(super) struct BackupUpkeep {
    /// The pgBackRest found good (its path).
    checked: Option<PathBuf>,
    /// Digest of the pgbackrest.conf last written: its version.
    written: Option<u64>,
    /// `pg_stat_archiver` on the primary, from the last tick.
    pub(super) archiver: Option<Archiver>,
    /// The stanza was ready at the last tick.
    stanza_ready: bool,
}

/// A configuration's version: its digest (never logged; it holds keys).
pub(super) fn version_of(text: &str) -> u64 {
    let digest = Sha256::digest(text.as_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(bytes)
}

/// `archiveAsync: false`: the library renders asynchronous archiving
/// (the fast default); the settings may turn it off for this cluster.
fn with_archive_async(text: String, archive_async: bool) -> String {
    if archive_async {
        text
    } else {
        text.replacen("\narchive-async=y\n", "\narchive-async=n\n", 1)
    }
}

/// pgBackRest must run as the owner of the data directory; when the
/// manager runs as root (not in a pod), the files are given to that owner.
pub(super) fn owner_for(data_dir: &Path) -> Option<(u32, u32)> {
    if !nix::unistd::geteuid().is_root() {
        return None;
    }
    let parent = data_dir.parent().unwrap_or(data_dir);
    let meta = std::fs::metadata(data_dir)
        .or_else(|_| std::fs::metadata(parent))
        .ok()?;
    Some((meta.uid(), meta.gid()))
}

pub(super) fn make_dir(path: &Path, owner: Option<(u32, u32)>) -> Result<(), String> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .map_err(|e| format!("cannot hand {} to the postgres user: {e}", path.display()))?;
    }
    Ok(())
}

impl<A: Authority> Manager<A> {
    /// Keeps pgbackrest.conf in step; every tick, running or not, so it is
    /// in place before PostgreSQL's first archive-push.
    pub(super) async fn keep_backup_config(&mut self, settings: &InstanceSettings) {
        let Some(backup) = &settings.backup else {
            if self.backup.written.take().is_some() || self.backup.checked.is_some() {
                tracing::info!("backups are no longer configured");
            }
            self.backup.checked = None;
            let _ = self.keep_backrest_server(None);
            self.shared.backups.disable(
                "backups are not configured for this cluster (spec.backup is not set)".into(),
            );
            self.clear_error(Source::Backup);
            return;
        };
        match self.write_backup_config(backup).await {
            Ok(version) => {
                let server = backup.standby_backups.is_some().then_some(version);
                match self.keep_backrest_server(server) {
                    Ok(()) => self.clear_error(Source::Backup),
                    Err(e) => self.set_error(Source::Backup, e),
                }
            }
            Err(e) => {
                let _ = self.keep_backrest_server(None);
                self.shared.backups.disable(e.clone());
                self.set_error(Source::Backup, e);
            }
        }
    }

    /// Writes pgbackrest.conf when it changed; its version.
    async fn write_backup_config(&mut self, backup: &BackupSettings) -> Result<u64, String> {
        let tool = self.inputs.pgbackrest.clone();
        if self.backup.checked.as_ref() != Some(&tool) {
            let version = binaries::check_pgbackrest(&tool)
                .await
                .map_err(|e| e.to_string())?;
            tracing::info!(path = %tool.display(), %version, "pgBackRest");
            self.backup.checked = Some(tool.clone());
        }
        let config = backrest_config(&self.inputs, backup);
        // The credential files are read every tick: a rotated Secret is
        // picked up like a changed setting.
        let secrets = Secrets::load(&backup.repositories)
            .map_err(|e| credentials_error(&backup.repositories, &e))?;
        let text = backrest::render(&config, &secrets).map_err(|e| e.to_string())?;
        let text = with_archive_async(text, backup.archive_async);
        let version = version_of(&text);
        let path = self.inputs.backrest_config();
        let owner = owner_for(&self.inputs.data_dir);
        if self.backup.written != Some(version) || !path.is_file() {
            make_dir(&self.inputs.backrest_dir, owner)?;
            for dir in backrest_dirs(&config) {
                make_dir(&dir, owner)?;
            }
            backrest::write(&path, &text, owner).map_err(|e| e.to_string())?;
            tracing::info!(
                operation = "configure",
                stanza = %backup.stanza,
                repositories = backup.repositories.len(),
                path = %path.display(),
                "pgbackrest.conf written"
            );
            self.backup.written = Some(version);
        }
        let mut runner = Runner::new(&tool, &path, &backup.stanza);
        runner.run_as = owner;
        self.shared.backups.configure(
            runner,
            version,
            backup.repositories.len(),
            standby_source(&self.inputs, backup),
        );
        Ok(version)
    }

    /// A primary with backups configured: it archives and reports on it.
    pub(super) fn archiving(&self, settings: &InstanceSettings) -> bool {
        settings.backup.is_some() && self.snapshot.as_ref().is_some_and(|s| !s.in_recovery)
    }

    /// On the primary: the stanza, and `pg_stat_archiver` for the report.
    pub(super) async fn keep_archive(&mut self, settings: &InstanceSettings) {
        if !self.archiving(settings) {
            self.backup.archiver = None;
            return;
        }
        self.shared.backups.ensure_stanza();
        self.shared.backups.refresh_inventory();
        match self.local.archiver().await {
            Ok(a) => self.backup.archiver = Some(a),
            Err(e) => tracing::debug!(error = %e, "no pg_stat_archiver sample"),
        }
        let ready = self.shared.backups.stanza_ready();
        let failed = self
            .backup
            .archiver
            .as_ref()
            .is_some_and(|a| a.failed_count > 0);
        if ready && !self.backup.stanza_ready && failed {
            // After three failed attempts (WAL of a new primary before its
            // stanza existed) the archiver sleeps up to a minute; a reload
            // wakes it, so that WAL goes now.
            match self.local.reload().await {
                Ok(()) => tracing::info!(
                    operation = "archive",
                    "stanza ready: the archiver retries the WAL it could not archive"
                ),
                Err(e) => tracing::warn!(error = %e, "cannot wake the archiver"),
            }
        }
        self.backup.stanza_ready = ready;
    }
}

/// A credential that cannot be read, with the field naming its Secret: the
/// pods mount repository Secrets as optional, so a missing Secret or key
/// arrives here as a missing file rather than as a pod that never starts.
fn credentials_error(repositories: &[Repository], e: &ConfigError) -> String {
    let failing = repositories
        .iter()
        .position(|r| Secrets::load(std::slice::from_ref(r)).is_err());
    match failing {
        Some(i) => format!(
            "{e}; check the Secret and key named by spec.backup.repositories[{i}].{}.credentials (a missing Secret or key is a missing file here); WAL stays on the primary until it can be archived",
            repositories[i].storage.kind()
        ),
        None => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_credential_names_the_repository_field() {
        use crate::backup::repository::{S3, S3Credentials, Storage, Tls};
        let dir = tempfile::tempdir().unwrap();
        let s3 = |name: &str| Repository {
            storage: Storage::S3(S3 {
                endpoint: "s3.store".into(),
                port: None,
                region: "r".into(),
                bucket: "b".into(),
                uri_style: crate::backup::repository::UriStyle::Host,
                tls: Tls::default(),
                credentials: S3Credentials::Files {
                    access_key_id: dir.path().join(format!("{name}-id")),
                    secret_access_key: dir.path().join(format!("{name}-secret")),
                },
            }),
            path: "/db".into(),
            retention: Default::default(),
        };
        std::fs::write(dir.path().join("one-id"), "id").unwrap();
        std::fs::write(dir.path().join("one-secret"), "secret").unwrap();
        let repos = [s3("one"), s3("two")];
        let e = Secrets::load(&repos).unwrap_err();
        let message = credentials_error(&repos, &e);
        assert!(
            message.contains("spec.backup.repositories[1].s3.credentials")
                && message.contains("two-id"),
            "{message}"
        );
    }

    #[test]
    fn any_change_to_the_file_is_a_new_version() {
        assert_eq!(version_of("a"), version_of("a"));
        assert_ne!(version_of("repo1-s3-key=a"), version_of("repo1-s3-key=b"));
    }

    #[test]
    fn asynchronous_archiving_follows_the_settings() {
        let text = "[global]\narchive-async=y\nprocess-max=2\n".to_string();
        assert_eq!(with_archive_async(text.clone(), true), text);
        assert_eq!(
            with_archive_async(text, false),
            "[global]\narchive-async=n\nprocess-max=2\n"
        );
        // On what the library really renders.
        let config = backrest::BackrestConfig {
            stanza: backrest::Stanza {
                name: "db".into(),
                pg_path: "/d".into(),
                pg_port: 5432,
                pg_socket_path: "/r".into(),
                pg_user: "postgres".into(),
            },
            repositories: vec![crate::backup::Repository::posix("/backups/db")],
            log_path: "/b/log".into(),
            lock_path: "/b/lock".into(),
            spool_path: "/b/spool".into(),
            process_max: 2,
            archive_timeout: std::time::Duration::from_secs(60),
            archive_push_queue_max: None,
            server: None,
            client_tls: None,
        };
        let rendered = backrest::render(&config, &Secrets::default()).unwrap();
        let off = with_archive_async(rendered, false);
        assert!(off.contains("\narchive-async=n\n"), "{off}");
        assert!(!off.contains("archive-async=y"), "{off}");
    }

    #[test]
    fn directories_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b");
        make_dir(&path, None).unwrap();
        let mode = std::fs::metadata(&path).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }
}

//! Restore as bootstrap: the first primary of a cluster made from a backup
//! (`spec.bootstrap.restore`) gets its data from `pgbackrest restore`
//! instead of initdb.
//!
//! As with initdb, everything happens in `<PGDATA>.partial`, which a
//! restart throws away, and is renamed into place only once PostgreSQL
//! replayed the source's WAL to the target, promoted on a new timeline,
//! and has this cluster's roles and passwords: a half-restored directory
//! is never started as PGDATA. During recovery `restore_command` reads
//! the source's archive (its own pgbackrest.conf); archiving is paused
//! until the server runs on PGDATA with this cluster's `archive_command`,
//! so WAL of the new timeline only ever goes to its own stanza.

use std::os::unix::fs::DirBuilderExt;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::backup::command::{Restore, RestoreTarget as Target};
use crate::backup::runner::Runner;
use crate::contract::restore::RestoreTarget;

use super::bootstrap::{BootstrapError, BootstrapSecrets, DataOps};
use super::config::{self, Desired, Rendered};
use super::supervisor::{self, PostgresChild};

/// Recovery replays the source's WAL from the backup to the target; a
/// large archive takes hours. Past this a wedged recovery is given up.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// `pgbackrest restore` of `target` into `pg_path`: PostgreSQL promotes
/// when it reaches the target (at the end of the archive for `Latest`).
/// The backup set pgBackRest chose (`restore backup set <label>, …`).
pub fn backup_set_in_output(output: &str) -> Option<String> {
    output.lines().find_map(|line| {
        let (_, rest) = line.split_once("restore backup set ")?;
        let label = rest.split([',', ' ']).next()?;
        crate::backup::command::valid_label(label).then(|| label.to_string())
    })
}

pub fn restore_of(target: &RestoreTarget, pg_path: &Path) -> Result<Restore, String> {
    let (target, set) = match target {
        RestoreTarget::Latest => (Target::Latest, None),
        RestoreTarget::Time(text) => {
            let at: jiff::Timestamp = text.parse().map_err(|e| {
                format!("spec.bootstrap.restore.target.time {text:?} is not an RFC 3339 time: {e}")
            })?;
            (Target::Time(at), None)
        }
        RestoreTarget::Lsn(lsn) => (Target::Lsn(lsn.clone()), None),
        RestoreTarget::Name(name) => (Target::Name(name.clone()), None),
        RestoreTarget::Backup(label) => (Target::EndOfBackup, Some(label.clone())),
    };
    let mut restore = Restore::new(pg_path, target);
    restore.set = set;
    Ok(restore)
}

/// Settings of the server that recovers the restored copy: on the Unix
/// socket only (nobody may connect before it is complete), WAL from the
/// source's archive, and no synchronous standbys to wait for (there are
/// none yet). An empty `archive_command` pauses archiving without losing
/// anything: the new timeline's first segments and history file wait
/// (`.ready`) for the server started on PGDATA, whose pgBackRest
/// configuration names that directory, to archive them to this
/// cluster's own stanza.
pub fn recovery_settings(
    socket_dir: &Path,
    port: u16,
    source_restore_command: &str,
) -> Vec<(&'static str, String)> {
    let mut settings = super::bootstrap::socket_only(socket_dir, port);
    settings.extend([
        ("restore_command", source_restore_command.to_string()),
        ("archive_command", String::new()),
        ("synchronous_standby_names", String::new()),
    ]);
    settings
}

/// The restored data must be of the major the cluster runs: newer
/// binaries refuse older data files (that is a major upgrade).
fn same_major(pg_version: &str, binaries: u32) -> Result<(), String> {
    let found = pg_version.trim();
    if found == binaries.to_string() {
        return Ok(());
    }
    Err(format!(
        "the backup holds PostgreSQL {found} data but the cluster runs PostgreSQL {binaries}; create the restored cluster with spec.postgres.version {found} (it can be upgraded afterwards)"
    ))
}

/// Moves the (small) `pg_wal` pgBackRest restored into `wal`, leaving a
/// link in its place, as initdb `--waldir` does.
fn relocate_wal(pgdata: &Path, wal: &Path) -> std::io::Result<()> {
    let restored = pgdata.join("pg_wal");
    std::fs::DirBuilder::new().mode(0o700).create(wal)?;
    if std::fs::symlink_metadata(&restored)?.is_symlink() {
        // The source's own WAL volume: nothing to take from there.
        std::fs::remove_file(&restored)?;
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(wal.join("archive_status"))?;
    } else {
        copy_tree(&restored, wal)?;
        std::fs::remove_dir_all(&restored)?;
    }
    std::os::unix::fs::symlink(wal, &restored)
}

/// Copies a directory's contents (the WAL volume is another filesystem,
/// so a rename would fail).
fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let dest = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            std::fs::DirBuilder::new().mode(0o700).create(&dest)?;
            copy_tree(&entry.path(), &dest)?;
        } else {
            std::fs::copy(entry.path(), &dest)?;
        }
    }
    Ok(())
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> BootstrapError + '_ {
    move |e| BootstrapError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

impl DataOps<'_> {
    /// `pgbackrest restore` of the source into `<PGDATA>.partial`.
    pub async fn restore_files(
        &self,
        runner: &Runner,
        target: &RestoreTarget,
    ) -> Result<(), BootstrapError> {
        self.clean_leftovers()?;
        let partial = self.partial();
        let restore = restore_of(target, &partial).map_err(BootstrapError::Refused)?;
        tracing::info!(operation = "restore", stanza = %runner.stanza, target = ?target, "restoring the source's backup");
        let out = runner
            .restore(restore)
            .await
            .map_err(|e| BootstrapError::Restore {
                stanza: runner.stanza.clone(),
                message: e
                    .pgbackrest_message()
                    .map(str::to_string)
                    .unwrap_or_else(|| e.to_string()),
            })?;
        if let Some(set) = backup_set_in_output(&out.stdout) {
            tracing::info!(operation = "restore", stanza = %runner.stanza, backup_set = %set, "restored from this backup set; recovery replays WAL from its start");
        }
        let version_file = partial.join("PG_VERSION");
        let found = std::fs::read_to_string(&version_file).map_err(io(&version_file))?;
        same_major(&found, self.bins.major).map_err(BootstrapError::Refused)?;
        if self.settings.separate_wal {
            let wal = self.wal_partial();
            relocate_wal(&partial, &wal).map_err(io(&wal))?;
        }
        Ok(())
    }

    /// Recovers the restored copy to the target on a socket-only server,
    /// waits for the promotion, sets this cluster's roles and passwords,
    /// stops it cleanly and moves the data into place. Returns the system
    /// identifier (the source's: a restore keeps it).
    pub async fn recover(
        &self,
        secrets: &BootstrapSecrets,
        source_restore_command: &str,
    ) -> Result<u64, BootstrapError> {
        let partial = self.partial();
        // This cluster's configuration (the copy carries the source's), but
        // pgBackRest's recovery settings in postgresql.auto.conf stay.
        let Rendered(files) = config::render(self.inputs, self.settings, Desired::Primary)?;
        let files = files
            .into_iter()
            .filter(|(name, _)| *name != config::AUTO_CONF)
            .collect();
        config::write(&partial, &Rendered(files))?;
        config::set_standby(&partial, false)?;
        let settings = recovery_settings(
            &self.inputs.run_dir,
            self.inputs.postgres_port,
            source_restore_command,
        );
        tracing::info!(
            operation = "recover",
            "replaying the source's WAL to the target"
        );
        self.on_private_server(&partial, &settings, "recovered", async |server| {
            self.wait_promoted(server, &partial).await?;
            self.setup_sql(secrets).await
        })
        .await?;
        let control = self.controldata(&partial).await?;
        self.sync_filesystems(&partial)?;
        self.install(&partial, control.system_identifier)?;
        tracing::info!(
            operation = "recover",
            timeline = control.timeline,
            "restored and promoted"
        );
        Ok(control.system_identifier)
    }

    /// Until the server leaves recovery (it promotes at the target). It
    /// accepts connections only once consistent, so it is asked only when
    /// `postmaster.pid` says so (a refused connection would log a FATAL).
    async fn wait_promoted(
        &self,
        server: &PostgresChild,
        pgdata: &Path,
    ) -> Result<(), BootstrapError> {
        let local = self.local();
        let deadline = Instant::now() + RECOVERY_TIMEOUT;
        loop {
            if let Some(status) = server.exited() {
                return Err(BootstrapError::Recovery(format!(
                    "postgres stopped ({status}): {}",
                    server
                        .last_error()
                        .unwrap_or_else(|| "see its log lines".into())
                )));
            }
            if supervisor::postmaster_ready(pgdata)
                && let Ok(client) = local.connect().await
                && let Ok(row) = client.query_one("SELECT pg_is_in_recovery()", &[]).await
                && !row.get::<_, bool>(0)
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(BootstrapError::Recovery(format!(
                    "still recovering after {RECOVERY_TIMEOUT:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::command::argv;

    #[test]
    fn the_backup_set_is_read_from_pgbackrests_log() {
        let out = "2026-12-05 22:00:13.379 P00   INFO: repo1: restore backup set 20261205-220010F_20261205-220112I, recovery will start at 2026-12-05 22:01:12\n";
        assert_eq!(
            backup_set_in_output(out).as_deref(),
            Some("20261205-220010F_20261205-220112I")
        );
        assert_eq!(backup_set_in_output("INFO: restore command end"), None);
    }

    fn tail(target: RestoreTarget) -> String {
        let restore = restore_of(&target, Path::new("/d/pgdata.partial")).unwrap();
        argv(
            Path::new("/b/restore.conf"),
            "orders",
            &crate::backup::Operation::Restore(restore),
        )
        .unwrap()[3..]
            .join(" ")
    }

    #[test]
    fn each_target_becomes_pgbackrests_arguments() {
        assert_eq!(
            tail(RestoreTarget::Latest),
            "--pg1-path=/d/pgdata.partial --type=default"
        );
        assert_eq!(
            tail(RestoreTarget::Time("2026-12-04T12:00:00+02:00".into())),
            "--pg1-path=/d/pgdata.partial --type=time --target=2026-12-04 10:00:00.000000+00 --target-action=promote"
        );
        assert_eq!(
            tail(RestoreTarget::Lsn("0/3000060".into())),
            "--pg1-path=/d/pgdata.partial --type=lsn --target=0/3000060 --target-action=promote"
        );
        assert_eq!(
            tail(RestoreTarget::Name("before-upgrade".into())),
            "--pg1-path=/d/pgdata.partial --type=name --target=before-upgrade --target-action=promote"
        );
        assert_eq!(
            tail(RestoreTarget::Backup("20261204-100000F".into())),
            "--pg1-path=/d/pgdata.partial --set=20261204-100000F --type=immediate --target-action=promote"
        );
        let err = restore_of(&RestoreTarget::Time("noon".into()), Path::new("/d")).unwrap_err();
        assert!(err.contains("spec.bootstrap.restore.target.time"), "{err}");
    }

    #[test]
    fn the_recovering_server_is_private_and_reads_the_sources_archive() {
        let s = recovery_settings(
            Path::new("/run/pg"),
            5432,
            "pgbackrest archive-get %f \"%p\"",
        );
        assert!(s.contains(&("listen_addresses", String::new())));
        assert!(s.contains(&("unix_socket_directories", "/run/pg".into())));
        assert!(s.contains(&("synchronous_standby_names", String::new())));
        assert!(
            s.contains(&("archive_command", String::new())),
            "paused, not off"
        );
        assert!(s.contains(&("restore_command", "pgbackrest archive-get %f \"%p\"".into())));
    }

    #[test]
    fn data_of_another_major_is_refused_with_the_fix() {
        assert!(same_major("17\n", 17).is_ok());
        let err = same_major("16\n", 17).unwrap_err();
        assert!(err.contains("spec.postgres.version 16"), "{err}");
    }

    #[test]
    fn restored_wal_moves_to_its_own_volume_behind_a_link() {
        let dir = tempfile::tempdir().unwrap();
        let pgdata = dir.path().join("pgdata");
        std::fs::create_dir_all(pgdata.join("pg_wal/archive_status")).unwrap();
        std::fs::write(pgdata.join("pg_wal/00000002.history"), "1\t0/3000000\n").unwrap();
        let wal = dir.path().join("wal");
        relocate_wal(&pgdata, &wal).unwrap();
        let link = std::fs::read_link(pgdata.join("pg_wal")).unwrap();
        assert_eq!(link, wal);
        assert!(wal.join("archive_status").is_dir());
        assert!(wal.join("00000002.history").is_file());
    }
}

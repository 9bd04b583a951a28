//! Major-version upgrade of the primary's data directory: `pg_upgrade
//! --link` from the old major's binaries (copied into the pod from the old
//! image by an init container) to this pod's.
//!
//! The new cluster is built beside the old one (`pgdata.upgrading`). Until
//! pg_upgrade has linked the files, the old data directory is untouched but
//! for the `global/pg_control.old` rename pg_upgrade does, which a revert
//! undoes. A marker written once pg_upgrade succeeded is the point of no
//! return: after it an interrupted swap is finished, never undone.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tokio::process::Command;

use super::binaries::Binaries;
use super::bootstrap::{
    BootstrapError, DataOps, io_err, remove_dir_if_exists, sibling, socket_only, sync_dir,
};
use super::config::write_atomic;
use super::process::{self, ToolError};
use crate::postgres::controldata::ControlData;
use crate::postgres::roles;

/// Next to PGDATA on the data volume while an upgrade finishes.
pub const MARKER: &str = "capstan-upgrade.json";

/// What pg_upgrade's failure report may name (its `*.txt` lists), at most.
const LISTED_BYTES: usize = 2048;

#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    /// Before the point of no return: the old data directory is as it was.
    #[error("pg_upgrade from PostgreSQL {from} to {to} refused: {words}")]
    Refused { from: u32, to: u32, words: String },
    #[error(transparent)]
    Data(#[from] BootstrapError),
}

/// Written once pg_upgrade succeeded.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Marker {
    pub from: u32,
    pub to: u32,
    /// The upgraded cluster's `pg_control` system identifier (pg_upgrade
    /// gives it the new initdb's).
    pub system_identifier: String,
}

/// A directory and the names it has during an upgrade.
struct Swap {
    live: PathBuf,
    upgrading: PathBuf,
    previous: PathBuf,
}

impl Swap {
    fn of(live: &Path) -> Self {
        Swap {
            live: live.to_path_buf(),
            upgrading: sibling(live, ".upgrading"),
            previous: sibling(live, ".pre-upgrade"),
        }
    }

    /// Moves `upgrading` into place; `live`, if there, becomes `previous`.
    /// Idempotent, so an interrupted swap is finished by running it again.
    fn finish(&self) -> Result<(), BootstrapError> {
        if !self.upgrading.exists() {
            return Ok(());
        }
        if self.live.exists() {
            if self.previous.exists() {
                return Err(BootstrapError::Refused(format!(
                    "{}, {} and {} all exist after an interrupted upgrade; move the ones that are not the upgraded cluster away",
                    self.live.display(),
                    self.upgrading.display(),
                    self.previous.display()
                )));
            }
            std::fs::rename(&self.live, &self.previous).map_err(io_err(&self.live))?;
        }
        std::fs::rename(&self.upgrading, &self.live).map_err(io_err(&self.upgrading))
    }
}

impl DataOps<'_> {
    fn marker_path(&self) -> PathBuf {
        self.inputs.data_volume().join(MARKER)
    }

    fn swaps(&self) -> Vec<Swap> {
        let mut swaps = vec![Swap::of(&self.inputs.data_dir)];
        if self.settings.separate_wal {
            swaps.push(Swap::of(&self.inputs.wal_dir));
        }
        swaps
    }

    /// The upgrade an earlier run got past its point of no return with,
    /// now finished (the new cluster in place); otherwise the leftovers of
    /// one that did not get there are removed and the old cluster restored.
    pub fn recover_upgrade(&self) -> Result<Option<Marker>, BootstrapError> {
        let path = self.marker_path();
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let marker: Marker =
                    serde_json::from_str(&text).map_err(|e| BootstrapError::Io {
                        path: path.display().to_string(),
                        message: e.to_string(),
                    })?;
                for swap in self.swaps() {
                    swap.finish()?;
                }
                if self.settings.separate_wal {
                    self.point_pg_wal_at(&self.inputs.data_dir)?;
                }
                sync_dir(self.inputs.data_volume())?;
                let system_identifier =
                    marker
                        .system_identifier
                        .parse()
                        .map_err(|_| BootstrapError::Io {
                            path: path.display().to_string(),
                            message: format!(
                                "unexpected system identifier {:?}",
                                marker.system_identifier
                            ),
                        })?;
                self.write_identity(system_identifier)?;
                Ok(Some(marker))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut reverted = false;
                for swap in self.swaps() {
                    if swap.upgrading.exists() {
                        tracing::warn!(path = %swap.upgrading.display(), operation = "major-upgrade", "removing an upgrade that did not finish");
                        remove_dir_if_exists(&swap.upgrading)?;
                        reverted = true;
                    }
                }
                reverted |= restore_pg_control(&self.inputs.data_dir)?;
                if reverted {
                    tracing::warn!(
                        operation = "major-upgrade",
                        "the old cluster is back as it was"
                    );
                }
                Ok(None)
            }
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    /// The upgraded cluster started: the old one's directories go.
    pub fn forget_upgrade(&self) -> Result<(), BootstrapError> {
        for swap in self.swaps() {
            remove_dir_if_exists(&swap.previous)?;
        }
        let path = self.marker_path();
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err(&path)(e)),
            _ => Ok(()),
        }
    }

    /// Upgrades the stopped primary's data directory from `old`'s major to
    /// this pod's binaries (`self.bins`); returns the new system identifier.
    pub async fn upgrade(&self, old: &Binaries) -> Result<u64, UpgradeError> {
        let (from, to) = (old.major, self.bins.major);
        let refused = |words: String| UpgradeError::Refused { from, to, words };
        self.recover_upgrade()?;
        let pgdata = self.inputs.data_dir.clone();
        if super::config::is_standby(&pgdata) {
            return Err(refused(format!(
                "{} is a standby's data directory; only the primary's is upgraded (replicas are cloned again)",
                pgdata.display()
            )));
        }
        let old_ops = DataOps {
            inputs: self.inputs,
            settings: self.settings,
            bins: old,
        };
        let control = old_ops.controldata(&pgdata).await?;
        if !control.shut_down_cleanly() {
            // pg_upgrade needs a clean shutdown; one recovery run gives it.
            tracing::info!(operation = "major-upgrade", state = %control.cluster_state, "recovering the old cluster before the upgrade");
            let mut settings = socket_only(&self.inputs.run_dir, self.inputs.postgres_port);
            settings.extend([
                ("archive_mode", "off".to_string()),
                ("synchronous_standby_names", String::new()),
            ]);
            old_ops
                .on_private_server(&pgdata, &settings, "recovery", async |server| {
                    old_ops
                        .wait_accepting(server, &pgdata, std::time::Duration::from_secs(300))
                        .await
                })
                .await?;
        }
        self.initdb_for_upgrade(&control).await?;
        for check in [true, false] {
            if let Err(e) = self.pg_upgrade(old, check).await {
                let words = failure_words(&e, &self.upgrading_dir());
                self.recover_upgrade()?;
                return Err(refused(words));
            }
        }
        let upgraded = self.upgrading_dir();
        self.sync_filesystems_with_wal(&upgraded, &Swap::of(&self.inputs.wal_dir).upgrading)?;
        let new_control = self.controldata(&upgraded).await?;
        let marker = Marker {
            from,
            to,
            system_identifier: new_control.system_identifier.to_string(),
        };
        let text = serde_json::to_vec(&marker).unwrap_or_default();
        write_atomic(&self.marker_path(), &text).map_err(|e| BootstrapError::Io {
            path: self.marker_path().display().to_string(),
            message: e.to_string(),
        })?;
        tracing::info!(
            operation = "major-upgrade",
            from,
            to,
            "pg_upgrade linked the data; the upgraded cluster takes its place"
        );
        self.recover_upgrade()?;
        Ok(new_control.system_identifier)
    }

    fn upgrading_dir(&self) -> PathBuf {
        Swap::of(&self.inputs.data_dir).upgrading
    }

    /// An empty cluster of the new major with what pg_upgrade needs to
    /// match: the bootstrap superuser, encoding, locale and checksums.
    async fn initdb_for_upgrade(&self, old: &ControlData) -> Result<(), BootstrapError> {
        let wal = Swap::of(&self.inputs.wal_dir).upgrading;
        let mut command = self.initdb_command(&self.upgrading_dir(), &wal, old.data_checksums);
        tracing::info!(operation = "major-upgrade", "creating the new cluster");
        process::run_tool("initdb", &mut command).await?;
        Ok(())
    }

    async fn pg_upgrade(&self, old: &Binaries, check: bool) -> Result<String, ToolError> {
        let port = self.inputs.postgres_port.to_string();
        let jobs = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut command = Command::new(self.bins.tool("pg_upgrade"));
        command
            // It writes its scripts to the working directory.
            .current_dir(&self.inputs.run_dir)
            .arg("--old-bindir")
            .arg(&old.dir)
            .arg("--new-bindir")
            .arg(&self.bins.dir)
            .arg("--old-datadir")
            .arg(&self.inputs.data_dir)
            .arg("--new-datadir")
            .arg(self.upgrading_dir())
            .arg(format!("--username={}", roles::SUPERUSER))
            .arg(format!("--old-port={port}"))
            .arg(format!("--new-port={port}"))
            .arg("--socketdir")
            .arg(&self.inputs.run_dir)
            .arg(format!("--jobs={jobs}"))
            .arg("--link")
            // The old server runs alone: nothing to archive to or wait for,
            // and it serves only pg_dump (a rehearsal pod has little memory).
            .arg("--old-options=-c archive_mode=off -c synchronous_standby_names='' -c ssl=off -c shared_buffers=128MB");
        if check {
            command.arg("--check");
        }
        tracing::info!(operation = "major-upgrade", check, "running pg_upgrade");
        process::run_tool("pg_upgrade", &mut command).await
    }

    /// initdb pointed `pg_wal` at the WAL directory's temporary name.
    fn point_pg_wal_at(&self, pgdata: &Path) -> Result<(), BootstrapError> {
        let link = pgdata.join("pg_wal");
        let wal = &self.inputs.wal_dir;
        if std::fs::read_link(&link).ok().as_deref() == Some(wal.as_path()) {
            return Ok(());
        }
        std::fs::remove_file(&link).map_err(io_err(&link))?;
        std::os::unix::fs::symlink(wal, &link).map_err(io_err(&link))
    }
}

/// pg_upgrade renames `global/pg_control` when it starts linking; while
/// the new cluster never ran, renaming it back makes the old one whole.
fn restore_pg_control(pgdata: &Path) -> Result<bool, BootstrapError> {
    let global = pgdata.join("global");
    let (live, renamed) = (global.join("pg_control"), global.join("pg_control.old"));
    if live.exists() || !renamed.exists() {
        return Ok(false);
    }
    std::fs::rename(&renamed, &live).map_err(io_err(&renamed))?;
    Ok(true)
}

/// What pg_upgrade said about its failure, with the problem lists it
/// names (they are inside the new cluster's directory, read before that
/// goes).
fn failure_words(error: &ToolError, upgrading: &Path) -> String {
    let ToolError::Failed { stdout, output, .. } = error else {
        return error.to_string();
    };
    let mut words = explain(stdout);
    if words.is_empty() {
        words = output.clone();
    }
    for listed in listed_files(stdout) {
        if !listed.starts_with(upgrading) {
            continue;
        }
        if let Ok(text) = std::fs::read_to_string(&listed) {
            let mut text: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
            if text.len() > LISTED_BYTES {
                let cut = (0..=LISTED_BYTES)
                    .rev()
                    .find(|i| text.is_char_boundary(*i))
                    .unwrap_or(0);
                text.truncate(cut);
                text.push('…');
            }
            let name = listed.file_name().unwrap_or_default().to_string_lossy();
            words.push_str(&format!(" [{name}: {text}]"));
        }
    }
    words
}

/// From the first check that failed to the end, on one line.
fn explain(stdout: &[String]) -> String {
    let start = stdout
        .iter()
        .position(|l| {
            // 17 and older end a failed check's line with "fatal"; 18
            // says "failed check: <which>".
            let t = l.trim_end();
            t.ends_with("fatal")
                || t.contains("failed check")
                || t.contains("*failure*")
                || t.starts_with("error")
        })
        .unwrap_or(stdout.len().saturating_sub(8));
    stdout[start..]
        .iter()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|l| !l.is_empty() && l != "Failure, exiting")
        .collect::<Vec<_>>()
        .join(" ")
}

/// Files named in pg_upgrade's report (`…/loadable_libraries.txt`).
fn listed_files(stdout: &[String]) -> Vec<PathBuf> {
    stdout
        .iter()
        .map(|l| l.trim())
        .filter(|l| l.starts_with('/') && l.ends_with(".txt"))
        .map(PathBuf::from)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Vec<String> {
        text.lines().map(str::to_string).collect()
    }

    #[test]
    fn explains_from_the_failed_check_on() {
        let out = lines(
            "Performing Consistency Checks\n\
             -----------------------------\n\
             Checking cluster versions                                     ok\n\
             Checking for presence of required libraries                   fatal\n\
             \n\
             Your installation references loadable libraries that are missing from the\n\
             new installation.  A list of problem libraries is in the file:\n\
             \x20   /d/pgdata.upgrading/pg_upgrade_output.d/x/loadable_libraries.txt\n\
             Failure, exiting\n",
        );
        let words = explain(&out);
        assert!(
            words.starts_with("Checking for presence of required libraries fatal Your installation references loadable libraries that are missing from the new installation."),
            "{words}"
        );
        assert!(!words.contains("Failure, exiting"), "{words}");
        assert_eq!(
            listed_files(&out),
            [PathBuf::from(
                "/d/pgdata.upgrading/pg_upgrade_output.d/x/loadable_libraries.txt"
            )]
        );
    }

    #[test]
    fn explains_a_failed_check_as_18_words_it() {
        let out = lines(
            "Checking for subscription state                               ok\n\
             Checking data type usage                                      failed check: Checking for reg* data types in user tables\n\
             \n\
             Data type checks failed: \n\
             Your installation contains one of the reg* data types in user tables.\n\
             A list of the problem columns is in the file:\n\
             \x20   /d/pgdata.upgrading/pg_upgrade_output.d/x/tables_using_reg.txt\n\
             \n\
             Failure, exiting",
        );
        let words = explain(&out);
        assert!(
            words.starts_with("Checking data type usage failed check: Checking for reg* data types in user tables Data type checks failed: Your installation contains"),
            "{words}"
        );
    }

    #[test]
    fn without_a_failed_check_the_tail_explains() {
        let out = lines("a\nb\ncould not connect to source postmaster\nFailure, exiting");
        assert_eq!(explain(&out), "a b could not connect to source postmaster");
    }

    #[test]
    fn a_swap_is_finished_from_any_point_it_was_interrupted_at() {
        let dir = tempfile::tempdir().unwrap();
        let swap = Swap::of(&dir.path().join("pgdata"));
        let mark = |p: &Path, what: &str| {
            std::fs::create_dir_all(p).unwrap();
            std::fs::write(p.join("WHAT"), what).unwrap();
        };
        let what = |p: &Path| std::fs::read_to_string(p.join("WHAT")).ok();
        mark(&swap.live, "old");
        mark(&swap.upgrading, "new");
        swap.finish().unwrap();
        assert_eq!(what(&swap.live).as_deref(), Some("new"));
        assert_eq!(what(&swap.previous).as_deref(), Some("old"));
        assert!(!swap.upgrading.exists());
        // Again: nothing left to do.
        swap.finish().unwrap();
        assert_eq!(what(&swap.live).as_deref(), Some("new"));

        // Interrupted between the two renames.
        std::fs::rename(&swap.live, &swap.upgrading).unwrap();
        swap.finish().unwrap();
        assert_eq!(what(&swap.live).as_deref(), Some("new"));
        assert_eq!(what(&swap.previous).as_deref(), Some("old"));

        // Three directories: which is which is not guessed.
        mark(&swap.upgrading, "newer");
        assert!(swap.finish().is_err());
        assert_eq!(what(&swap.live).as_deref(), Some("new"));
    }

    #[test]
    fn pg_control_comes_back_only_when_it_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let global = dir.path().join("global");
        std::fs::create_dir_all(&global).unwrap();
        assert!(!restore_pg_control(dir.path()).unwrap());
        std::fs::write(global.join("pg_control.old"), "x").unwrap();
        assert!(restore_pg_control(dir.path()).unwrap());
        assert!(global.join("pg_control").exists());
        std::fs::write(global.join("pg_control.old"), "y").unwrap();
        assert!(!restore_pg_control(dir.path()).unwrap());
        assert_eq!(
            std::fs::read_to_string(global.join("pg_control")).unwrap(),
            "x"
        );
    }
}

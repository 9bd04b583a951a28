//! A major upgrade rehearsed on a copy, before the primary stops: the
//! upgrade-check pod (`capstan check-image --upgrade-from N`) copies the
//! running primary with `pg_basebackup`, brings the copy to a clean
//! shutdown with the old binaries (listing its extensions), runs the same
//! `pg_upgrade --check` and `--link` the real upgrade runs
//! ([`DataOps::upgrade`]), starts the result with the new binaries and
//! checks that every extension is installed in the new image. What a
//! refusal says is pg_upgrade's (or PostgreSQL's) own words, and it costs
//! the cluster nothing: the primary kept serving.
//!
//! It also measures what `--link` writes besides the linked relation
//! files (the new catalog, WAL): the free space the primary's data volume
//! needs for the real upgrade.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::contract::settings::InstanceSettings;

use super::binaries::Binaries;
use super::bootstrap::{
    self, BootstrapError, DataOps, io_err, remove_dir_if_exists, socket_only, sql_err,
};
use super::inputs::Inputs;
use super::process;
use super::upgrade::UpgradeError;

/// The copy's name for `application_name` (the primary's
/// `pg_stat_replication` shows who copies it).
const APPLICATION: &str = "capstan-upgrade-check";

/// Where and with what the rehearsal runs.
pub struct Rehearsal {
    pub settings: InstanceSettings,
    pub old: Binaries,
    pub new: Binaries,
    /// Empty or missing; the copy, its socket and pg_upgrade's files go here.
    pub scratch: PathBuf,
    /// Holds `replication/` (the client certificate the copy is taken with).
    pub tls_dir: PathBuf,
    pub config_dir: PathBuf,
    /// Of the copy's private servers (Unix socket in the scratch only).
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rehearsed {
    /// Size of the copy (data and WAL) before the upgrade.
    pub database_bytes: u64,
    /// What `--link` wrote besides the linked files.
    pub link_bytes: u64,
    pub copy: Duration,
    pub pg_upgrade: Duration,
    /// `name version` of each extension, over every database.
    pub extensions: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum RehearsalError {
    #[error("cannot copy the primary for the upgrade check: {0}")]
    Copy(BootstrapError),
    #[error("{0}")]
    Upgrade(UpgradeError),
    #[error(
        "the upgraded copy has extensions the new image does not have: {missing}; use an image of PostgreSQL {to} with them installed"
    )]
    MissingExtensions { missing: String, to: u32 },
    #[error("the upgraded copy did not start with PostgreSQL {to}: {error}")]
    Start { to: u32, error: BootstrapError },
}

impl Rehearsal {
    fn inputs(&self) -> Inputs {
        let s = &self.scratch;
        Inputs {
            pod: APPLICATION.into(),
            namespace: self.settings.namespace.clone(),
            cluster: self.settings.cluster.clone(),
            listen_address: String::new(),
            data_dir: s.join("pgdata"),
            wal_dir: s.join("pgwal"),
            config_dir: self.config_dir.clone(),
            secrets_dir: s.join("no-secrets"),
            tls_dir: self.tls_dir.clone(),
            run_dir: s.join("run"),
            postgres_port: self.port,
            api_port: 0,
            pg_bin_dir: Some(self.new.dir.clone()),
            old_postgres_dir: self.old.dir.clone(),
            pgbackrest: PathBuf::new(),
            backrest_dir: s.join("no-pgbackrest"),
            shutdown_budget: Duration::from_secs(60),
            ready_max_lag_bytes: 0,
        }
    }

    pub async fn run(&self) -> Result<Rehearsed, RehearsalError> {
        let inputs = self.inputs();
        // The copy keeps its WAL in pg_wal, whatever the primary does.
        let settings = InstanceSettings {
            separate_wal: false,
            ..self.settings.clone()
        };
        let old = DataOps {
            inputs: &inputs,
            settings: &settings,
            bins: &self.old,
        };
        let started = Instant::now();
        let extensions = self.copy(&old).await.map_err(RehearsalError::Copy)?;
        let copy = started.elapsed();
        let database_bytes = tree_bytes(&inputs.data_dir, |_| true);
        let new = DataOps {
            inputs: &inputs,
            settings: &settings,
            bins: &self.new,
        };
        let started = Instant::now();
        new.upgrade(&self.old)
            .await
            .map_err(RehearsalError::Upgrade)?;
        let pg_upgrade = started.elapsed();
        // Linked relation files have a second name (in the old directory).
        let link_bytes = tree_bytes(&inputs.data_dir, |m| m.nlink() == 1);
        let to = self.new.major;
        let missing = missing_extensions(&new)
            .await
            .map_err(|error| RehearsalError::Start { to, error })?;
        if !missing.is_empty() {
            return Err(RehearsalError::MissingExtensions {
                missing: missing.join(", "),
                to,
            });
        }
        Ok(Rehearsed {
            database_bytes,
            link_bytes,
            copy,
            pg_upgrade,
            extensions,
        })
    }

    /// `pg_basebackup` of the primary, recovered to a clean shutdown on a
    /// private socket (pg_upgrade needs one); returns its extensions.
    async fn copy(&self, old: &DataOps<'_>) -> Result<Vec<String>, BootstrapError> {
        let inputs = old.inputs;
        clear(&self.scratch)?;
        let run = &inputs.run_dir;
        std::fs::create_dir_all(run).map_err(io_err(run))?;
        let mut command = old.basebackup_into(&inputs.data_dir);
        tracing::info!(operation = "upgrade-check", host = %old.settings.primary_host, "copying the primary");
        process::run_tool("pg_basebackup", &mut command).await?;
        let mut settings = private_settings(inputs);
        // The copy needs no more memory than a check does.
        settings.extend([
            ("shared_buffers", "128MB".to_string()),
            ("max_connections", "20".to_string()),
        ]);
        let mut extensions = vec![];
        old.on_private_server(&inputs.data_dir, &settings, "copy", async |server| {
            old.wait_accepting(server, &inputs.data_dir, Duration::from_secs(3600))
                .await?;
            extensions = list_extensions(old).await?;
            Ok(())
        })
        .await?;
        Ok(extensions)
    }
}

/// Empties `dir` (an emptyDir's mount point stays), or creates it.
fn clear(dir: &Path) -> Result<(), BootstrapError> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))?.flatten() {
        let path = entry.path();
        if path.is_dir() && !path.is_symlink() {
            remove_dir_if_exists(&path)?;
        } else {
            std::fs::remove_file(&path).map_err(io_err(&path))?;
        }
    }
    Ok(())
}

/// A server only this process reaches, with nothing to archive to, wait
/// for or encrypt with (the pod has none of the primary's certificates).
fn private_settings(inputs: &Inputs) -> Vec<(&'static str, String)> {
    let mut settings = socket_only(&inputs.run_dir, inputs.postgres_port);
    settings.extend([
        ("archive_mode", "off".to_string()),
        ("synchronous_standby_names", String::new()),
        ("ssl", "off".to_string()),
    ]);
    settings
}

async fn databases(ops: &DataOps<'_>) -> Result<Vec<String>, BootstrapError> {
    bootstrap::databases(&ops.local().connect().await?).await
}

/// `name version` of every extension, once each.
async fn list_extensions(ops: &DataOps<'_>) -> Result<Vec<String>, BootstrapError> {
    let mut all = std::collections::BTreeSet::new();
    for db in databases(ops).await? {
        let client = ops.local().connect_to(&db).await?;
        for row in client
            .query(
                "SELECT extname::text, extversion FROM pg_catalog.pg_extension",
                &[],
            )
            .await
            .map_err(sql_err("listing extensions"))?
        {
            all.insert(format!(
                "{} {}",
                row.get::<_, String>(0),
                row.get::<_, String>(1)
            ));
        }
    }
    Ok(all.into_iter().collect())
}

/// Starts the upgraded copy with the new binaries: extensions whose
/// control file the new installation lacks, as `name (in db)`.
async fn missing_extensions(new: &DataOps<'_>) -> Result<Vec<String>, BootstrapError> {
    let pgdata = new.inputs.data_dir.clone();
    let mut missing = vec![];
    new.on_private_server(
        &pgdata,
        &private_settings(new.inputs),
        "upgraded copy",
        async |server| {
            new.wait_accepting(server, &pgdata, Duration::from_secs(300))
                .await?;
            for db in databases(new).await? {
                let client = new.local().connect_to(&db).await?;
                for row in client
                    .query(
                        "SELECT e.extname::text FROM pg_catalog.pg_extension e
                         WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_available_extensions a
                                           WHERE a.name = e.extname)",
                        &[],
                    )
                    .await
                    .map_err(sql_err("checking extensions"))?
                {
                    missing.push(format!("{} (in database {db})", row.get::<_, String>(0)));
                }
            }
            Ok(())
        },
    )
    .await?;
    Ok(missing)
}

/// Bytes of the regular files under `dir` that `count` selects (symbolic
/// links are not followed).
fn tree_bytes(dir: &Path, count: impl Fn(&std::fs::Metadata) -> bool + Copy) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .filter_map(|e| Some((e.path(), std::fs::symlink_metadata(e.path()).ok()?)))
        .map(|(path, m)| {
            if m.is_dir() {
                tree_bytes(&path, count)
            } else if m.is_file() && count(&m) {
                m.len()
            } else {
                0
            }
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linked_files_are_not_counted_twice() {
        let dir = tempfile::tempdir().unwrap();
        let new = dir.path().join("new/base");
        std::fs::create_dir_all(&new).unwrap();
        std::fs::write(dir.path().join("relation"), vec![0u8; 8192]).unwrap();
        std::fs::hard_link(dir.path().join("relation"), new.join("relation")).unwrap();
        std::fs::write(new.join("catalog"), vec![0u8; 100]).unwrap();
        std::os::unix::fs::symlink(dir.path().join("relation"), new.join("pg_wal")).unwrap();
        let root = dir.path().join("new");
        assert_eq!(tree_bytes(&root, |_| true), 8292);
        assert_eq!(tree_bytes(&root, |m| m.nlink() == 1), 100);
    }
}

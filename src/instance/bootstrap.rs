//! Creating, cloning, rewinding and re-cloning the data directory.
//!
//! Crash safety: new data is always built in `<PGDATA>.partial` (next to
//! PGDATA, on the same volume) and renamed into place only when complete —
//! roles, passwords, functions, configuration and the identity file
//! included. A restart that finds a `.partial` (or a `.old` left by a swap)
//! throws it away and starts over; a PGDATA that exists is always whole.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::process::Command;

use crate::contract::settings::InstanceSettings;
use crate::postgres::controldata::{self, ControlData};
use crate::postgres::{pooler_auth, roles, sql};

use super::binaries::Binaries;
use super::config::{self, Desired};
use super::identity::{self, Identity, IdentityError};
use super::inputs::Inputs;
use super::local::{Local, LocalError};
use super::process::{self, ToolError};
use super::remote::{Primary, RemoteError};
use super::secrets::{self, Credentials, Password, SecretError};
use super::supervisor::{self, PostgresChild};
use crate::contract::layout::mounts;

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    Local(#[from] LocalError),
    #[error(transparent)]
    Remote(#[from] RemoteError),
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("cannot read pg_control of {path}: {message}")]
    ControlData { path: String, message: String },
    #[error("{path}: {message}")]
    Io { path: String, message: String },
    #[error("the {secret} secret names user {found:?}, but the cluster's user is {expected:?}")]
    SecretUser {
        secret: &'static str,
        expected: String,
        found: String,
    },
    #[error("{0}")]
    Refused(String),
    #[error("pgbackrest restore from stanza {stanza} failed: {message}")]
    Restore { stanza: String, message: String },
    #[error("recovery of the restored data did not finish: {0}")]
    Recovery(String),
}

pub(super) fn io_err(path: &Path) -> impl Fn(std::io::Error) -> BootstrapError + '_ {
    move |e| BootstrapError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

/// What is in PGDATA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataState {
    Missing,
    Present {
        control: ControlData,
        /// `standby.signal` present: it was (or is becoming) a replica.
        standby: bool,
        major: u32,
    },
}

/// The passwords the first primary sets.
pub struct BootstrapSecrets {
    pub superuser: Password,
    pub app: Password,
    pub pooler: Password,
}

impl BootstrapSecrets {
    pub fn read(inputs: &Inputs, settings: &InstanceSettings) -> Result<Self, BootstrapError> {
        let superuser = secrets::read_credentials(&inputs.secret_dir(mounts::SUPERUSER))?;
        check_user("superuser", &superuser, roles::SUPERUSER)?;
        let app = secrets::read_credentials(&inputs.secret_dir(mounts::APP))?;
        check_user("app", &app, &settings.initdb.owner)?;
        let pooler = secrets::read_password(&inputs.secret_dir(mounts::POOLER))?;
        Ok(Self {
            superuser: superuser.password,
            app: app.password,
            pooler,
        })
    }
}

fn check_user(
    secret: &'static str,
    creds: &Credentials,
    expected: &str,
) -> Result<(), BootstrapError> {
    if creds.username == expected {
        Ok(())
    } else {
        Err(BootstrapError::SecretUser {
            secret,
            expected: expected.to_string(),
            found: creds.username.clone(),
        })
    }
}

pub struct DataOps<'a> {
    pub inputs: &'a Inputs,
    pub settings: &'a InstanceSettings,
    pub bins: &'a Binaries,
}

/// A server nobody but the instance manager can reach: the Unix socket in
/// `socket_dir` only, on `port`.
pub(super) fn socket_only(socket_dir: &Path, port: u16) -> Vec<(&'static str, String)> {
    vec![
        ("listen_addresses", String::new()),
        ("unix_socket_directories", socket_dir.display().to_string()),
        ("port", port.to_string()),
    ]
}

pub(super) fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

pub(super) fn remove_dir_if_exists(path: &Path) -> Result<(), BootstrapError> {
    match std::fs::remove_dir_all(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err(path)(e)),
        _ => Ok(()),
    }
}

pub(super) fn sync_dir(path: &Path) -> Result<(), BootstrapError> {
    std::fs::File::open(path)
        .and_then(|d| d.sync_all())
        .map_err(io_err(path))
}

impl DataOps<'_> {
    fn pgdata(&self) -> &Path {
        &self.inputs.data_dir
    }

    pub(super) fn partial(&self) -> PathBuf {
        sibling(self.pgdata(), ".partial")
    }

    fn old(&self) -> PathBuf {
        sibling(self.pgdata(), ".old")
    }

    pub(super) fn wal_partial(&self) -> PathBuf {
        sibling(&self.inputs.wal_dir, ".partial")
    }

    fn wal_old(&self) -> PathBuf {
        sibling(&self.inputs.wal_dir, ".old")
    }

    pub(super) fn local(&self) -> Local {
        Local::new(self.inputs.run_dir.clone(), self.inputs.postgres_port)
    }

    /// Throws away leftovers of an interrupted bootstrap or swap.
    pub fn clean_leftovers(&self) -> Result<(), BootstrapError> {
        for dir in [
            self.partial(),
            self.old(),
            self.wal_partial(),
            self.wal_old(),
        ] {
            if dir.exists() {
                tracing::warn!(path = %dir.display(), "removing a leftover of an interrupted bootstrap");
                remove_dir_if_exists(&dir)?;
            }
        }
        Ok(())
    }

    pub async fn controldata(&self, dir: &Path) -> Result<ControlData, BootstrapError> {
        let out = process::run_tool(
            "pg_controldata",
            Command::new(self.bins.tool("pg_controldata")).arg(dir),
        )
        .await?;
        controldata::parse(&out).map_err(|e| BootstrapError::ControlData {
            path: dir.display().to_string(),
            message: e.to_string(),
        })
    }

    pub async fn inspect(&self) -> Result<DataState, BootstrapError> {
        self.clean_leftovers()?;
        let pgdata = self.pgdata();
        let version_file = pgdata.join("PG_VERSION");
        if !version_file.exists() {
            let empty = match std::fs::read_dir(pgdata) {
                Ok(mut entries) => entries.next().is_none(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
                Err(e) => return Err(io_err(pgdata)(e)),
            };
            if !empty {
                return Err(BootstrapError::Refused(format!(
                    "{} is not empty but holds no PostgreSQL data directory; refusing to touch it",
                    pgdata.display()
                )));
            }
            return Ok(DataState::Missing);
        }
        let major_text = std::fs::read_to_string(&version_file).map_err(io_err(&version_file))?;
        let major = major_text.trim().parse().map_err(|_| BootstrapError::Io {
            path: version_file.display().to_string(),
            message: format!("unexpected content {major_text:?}"),
        })?;
        Ok(DataState::Present {
            control: self.controldata(pgdata).await?,
            standby: config::is_standby(pgdata),
            major,
        })
    }

    /// Checks existing data against the identity file (and nothing else).
    pub fn check_identity(&self, system_identifier: u64) -> Result<(), BootstrapError> {
        let volume = self.inputs.data_volume();
        let recorded = identity::read(volume)?;
        identity::check(
            recorded.as_ref(),
            self.pgdata(),
            volume,
            &self.inputs.namespace,
            &self.inputs.cluster,
            system_identifier,
        )?;
        Ok(())
    }

    pub(super) fn write_identity(&self, system_identifier: u64) -> Result<(), BootstrapError> {
        identity::write(
            self.inputs.data_volume(),
            &Identity {
                namespace: self.inputs.namespace.clone(),
                cluster: self.inputs.cluster.clone(),
                system_identifier: system_identifier.to_string(),
            },
        )?;
        Ok(())
    }

    /// The first primary: initdb, roles, passwords, databases, functions.
    pub async fn initdb(&self, secrets: &BootstrapSecrets) -> Result<u64, BootstrapError> {
        let partial = self.partial();
        let mut command = self.initdb_command(
            &partial,
            &self.wal_partial(),
            self.settings.initdb.data_checksums,
        );
        tracing::info!(operation = "initdb", "creating the cluster");
        process::run_tool("initdb", &mut command).await?;
        let control = self.controldata(&partial).await?;

        // Set up roles and databases on a server that listens on the socket
        // only, before the data directory exists under its real name.
        let settings = socket_only(&self.inputs.run_dir, self.inputs.postgres_port);
        self.on_private_server(&partial, &settings, "bootstrap", async |server| {
            self.wait_accepting(server, &partial, Duration::from_secs(60))
                .await?;
            self.setup_sql(secrets).await
        })
        .await?;
        self.sync_filesystems(&partial)?;
        self.install(&partial, control.system_identifier)?;
        Ok(control.system_identifier)
    }

    /// initdb of a new cluster in `dir` (and `wal`, with a separate WAL
    /// volume) as the spec's `initdb` section says.
    pub(super) fn initdb_command(&self, dir: &Path, wal: &Path, checksums: bool) -> Command {
        let initdb = &self.settings.initdb;
        let mut command = Command::new(self.bins.tool("initdb"));
        command
            .arg("-D")
            .arg(dir)
            .arg(format!("--username={}", roles::SUPERUSER))
            .arg("--auth-local=peer")
            .arg("--auth-host=scram-sha-256")
            // One syncfs() before the rename replaces initdb's file-by-file fsync.
            .arg("--no-sync")
            .arg(format!("--encoding={}", initdb.encoding))
            .arg(format!("--locale={}", initdb.locale));
        if checksums {
            command.arg("--data-checksums");
        } else if self.bins.major >= 18 {
            // 18 turned checksums on by default.
            command.arg("--no-data-checksums");
        }
        if self.settings.separate_wal {
            command.arg(format!("--waldir={}", wal.display()));
        }
        command
    }

    /// Runs `work` against a postgres started on `dir` with `settings`,
    /// then stops it cleanly (a checkpoint, so the directory needs no
    /// recovery at its first real start); one that does not stop cleanly
    /// fails the bootstrap.
    pub(super) async fn on_private_server(
        &self,
        dir: &Path,
        settings: &[(&str, String)],
        what: &str,
        work: impl AsyncFnOnce(&PostgresChild) -> Result<(), BootstrapError>,
    ) -> Result<(), BootstrapError> {
        let settings: Vec<(&str, &str)> = settings.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let mut server = PostgresChild::spawn(&self.bins.dir, dir, &settings)
            .map_err(|e| BootstrapError::Refused(e.to_string()))?;
        let result = work(&server).await;
        let stopped = server
            .stop(&supervisor::fast_plan(Duration::from_secs(60)))
            .await;
        result?;
        if stopped.as_deref() != Some("exit code 0") {
            return Err(BootstrapError::Refused(format!(
                "the {what} server did not stop cleanly ({})",
                stopped.unwrap_or_else(|| "still running".into())
            )));
        }
        Ok(())
    }

    /// Flushes the new data (and WAL) to disk before it may be renamed into
    /// place: one syncfs() per filesystem instead of the tools' file-by-file
    /// fsync, which is slow on network volumes. The same guarantee as
    /// `recovery_init_sync_method = syncfs`.
    pub(super) fn sync_filesystems(&self, dir: &Path) -> Result<(), BootstrapError> {
        self.sync_filesystems_with_wal(dir, &self.wal_partial())
    }

    /// [`Self::sync_filesystems`] with the WAL directory named.
    pub(super) fn sync_filesystems_with_wal(
        &self,
        dir: &Path,
        wal: &Path,
    ) -> Result<(), BootstrapError> {
        let mut dirs = vec![dir.to_path_buf()];
        if self.settings.separate_wal {
            dirs.push(wal.to_path_buf());
        }
        for dir in dirs {
            let handle = std::fs::File::open(&dir).map_err(io_err(&dir))?;
            nix::unistd::syncfs(&handle).map_err(|e| BootstrapError::Io {
                path: dir.display().to_string(),
                message: format!("syncfs: {e}"),
            })?;
        }
        Ok(())
    }

    pub(super) async fn wait_accepting(
        &self,
        server: &PostgresChild,
        pgdata: &Path,
        timeout: Duration,
    ) -> Result<(), BootstrapError> {
        let local = self.local();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if supervisor::postmaster_ready(pgdata) && local.accepts_connections().await {
                return Ok(());
            }
            if let Some(status) = server.exited() {
                return Err(BootstrapError::Refused(format!(
                    "postgres exited during bootstrap ({status}); see its log above"
                )));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(BootstrapError::Refused(
                    "postgres did not accept connections within 60s during bootstrap".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Roles, passwords, the application database and the pooler's lookup
    /// function. Idempotent: after initdb it creates them; on restored data
    /// it creates what the source lacks and sets the passwords of this
    /// cluster's Secrets, so they work whatever the source had.
    pub(super) async fn setup_sql(&self, secrets: &BootstrapSecrets) -> Result<(), BootstrapError> {
        let local = self.local();
        let initdb = &self.settings.initdb;
        let owner = sql::quote_ident(&initdb.owner);
        let database = sql::quote_ident(&initdb.database);
        let replication = roles::REPLICATION;
        let pooler = roles::POOLER;
        let superuser = roles::SUPERUSER;
        let verifier = |p: &Password| sql::quote_literal(&p.scram_verifier());
        let postgres_db = local.connect().await?;
        let missing = |role: &str, ident: &str| {
            format!(
                "IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = {}) THEN CREATE ROLE {ident}; END IF;",
                sql::quote_literal(role)
            )
        };
        let roles_sql = format!(
            "DO $capstan$ BEGIN {} {} {} END $capstan$;
             ALTER ROLE {superuser} PASSWORD {su};
             ALTER ROLE {replication} WITH LOGIN REPLICATION;
             ALTER ROLE {pooler} WITH LOGIN PASSWORD {pool};
             ALTER ROLE {owner} WITH LOGIN PASSWORD {app};
             GRANT EXECUTE ON FUNCTION pg_catalog.pg_ls_dir(text, boolean, boolean) TO {replication};
             GRANT EXECUTE ON FUNCTION pg_catalog.pg_stat_file(text, boolean) TO {replication};
             GRANT EXECUTE ON FUNCTION pg_catalog.pg_read_binary_file(text) TO {replication};
             GRANT EXECUTE ON FUNCTION pg_catalog.pg_read_binary_file(text, bigint, bigint, boolean) TO {replication};
             DO $$ BEGIN
               IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'pg_checkpoint') THEN
                 GRANT pg_checkpoint TO {replication};
               END IF;
             END $$;",
            missing(replication, replication),
            missing(pooler, pooler),
            missing(initdb.owner.as_str(), owner.as_str()),
            su = verifier(&secrets.superuser),
            pool = verifier(&secrets.pooler),
            app = verifier(&secrets.app),
        );
        postgres_db
            .batch_execute(super::local::QUIET_SESSION)
            .await
            .map_err(sql_err("quieting the session log"))?;
        postgres_db
            .batch_execute(&roles_sql)
            .await
            .map_err(sql_err("creating roles"))?;
        let exists = postgres_db
            .query_opt(
                "SELECT 1 FROM pg_catalog.pg_database WHERE datname = $1",
                &[&initdb.database],
            )
            .await
            .map_err(sql_err("looking up the application database"))?
            .is_some();
        if !exists {
            postgres_db
                .batch_execute(&format!(
                    "CREATE DATABASE {database} OWNER {owner} TEMPLATE template1"
                ))
                .await
                .map_err(sql_err("creating the application database"))?;
        }
        // Every database (template1 too, so later ones inherit it): PgBouncer
        // runs auth_query in the database a client asks for.
        let databases = databases(&postgres_db).await?;
        for db in &databases {
            self.install_pooler_auth(&local, db).await?;
        }
        Ok(())
    }

    async fn install_pooler_auth(&self, local: &Local, db: &str) -> Result<(), BootstrapError> {
        local
            .connect_to(db)
            .await?
            .batch_execute(pooler_auth::INSTALL_SQL)
            .await
            .map_err(sql_err("installing the pooler auth_query function"))
    }

    /// A replica from the primary behind `primary_host`.
    pub async fn clone_from_primary(&self) -> Result<(), BootstrapError> {
        let remote = Primary::new(self.inputs, self.settings);
        let primary = remote.info().await?;
        if primary.in_recovery {
            return Err(BootstrapError::Refused(format!(
                "{}:{} is a standby, not the primary; waiting for the primary",
                self.settings.primary_host, self.settings.primary_port
            )));
        }
        let partial = self.partial();
        self.clean_leftovers()?;
        let mut command = self.basebackup_into(&partial);
        command.arg(format!("--slot={}", self.inputs.slot_name()));
        // The primary creates a slot for every instance, but a clone may
        // start first (a fresh primary, or one promoted a moment ago).
        if !remote.slot_exists(&self.inputs.slot_name()).await? {
            command.arg("--create-slot");
        }
        if self.settings.separate_wal {
            command.arg(format!("--waldir={}", self.wal_partial().display()));
        }
        tracing::info!(operation = "clone", slot = %self.inputs.slot_name(), "cloning from the primary");
        process::run_tool("pg_basebackup", &mut command).await?;
        let control = self.controldata(&partial).await?;
        if control.system_identifier != primary.system_identifier {
            return Err(BootstrapError::Refused(format!(
                "the clone has system identifier {}, the primary {}; discarding it",
                control.system_identifier, primary.system_identifier
            )));
        }
        config::write(
            &partial,
            &config::render(self.inputs, self.settings, Desired::Replica)?,
        )?;
        config::set_standby(&partial, true)?;
        self.sync_filesystems(&partial)?;
        self.install(&partial, control.system_identifier)?;
        Ok(())
    }

    /// `pg_basebackup` of the primary into `dir`, as a replica connects
    /// (WAL streamed alongside, a fast checkpoint, one sync by the caller).
    pub(super) fn basebackup_into(&self, dir: &Path) -> Command {
        let mut command = Command::new(self.bins.tool("pg_basebackup"));
        command
            .arg("-D")
            .arg(dir)
            .arg("-d")
            .arg(config::replication_conninfo(self.inputs, self.settings).to_string())
            .args([
                "-X",
                "stream",
                "--checkpoint=fast",
                "--no-password",
                "--no-sync",
            ]);
        command
    }

    /// Moves a complete `.partial` into place (keeping the old data until
    /// the new one is there) and records the identity.
    pub(super) fn install(
        &self,
        partial: &Path,
        system_identifier: u64,
    ) -> Result<(), BootstrapError> {
        self.write_identity(system_identifier)?;
        let pgdata = self.pgdata();
        let old = self.old();
        let had_data = pgdata.join("PG_VERSION").exists();
        if had_data {
            std::fs::rename(pgdata, &old).map_err(io_err(pgdata))?;
        } else if pgdata.exists() {
            std::fs::remove_dir(pgdata).map_err(io_err(pgdata))?;
        }
        if self.settings.separate_wal {
            let wal = &self.inputs.wal_dir;
            if wal.exists() {
                std::fs::rename(wal, self.wal_old()).map_err(io_err(wal))?;
            }
            std::fs::rename(self.wal_partial(), wal).map_err(io_err(wal))?;
            let link = partial.join("pg_wal");
            std::fs::remove_file(&link).map_err(io_err(&link))?;
            std::os::unix::fs::symlink(wal, &link).map_err(io_err(&link))?;
        }
        std::fs::rename(partial, pgdata).map_err(io_err(pgdata))?;
        sync_dir(self.inputs.data_volume())?;
        remove_dir_if_exists(&old)?;
        remove_dir_if_exists(&self.wal_old())?;
        tracing::info!(path = %pgdata.display(), system_identifier, "data directory in place");
        Ok(())
    }

    /// pg_rewind against the primary; PGDATA must belong to a stopped server.
    pub async fn rewind(&self) -> Result<(), BootstrapError> {
        let pgdata = self.pgdata();
        // A crashed standby would replay as a standby during pg_rewind's
        // own crash recovery and never reach a consistent end.
        config::set_standby(pgdata, false)?;
        // pg_rewind's recovery run reads the configuration: make it ours.
        config::write(
            pgdata,
            &config::render(self.inputs, self.settings, Desired::Replica)?,
        )?;
        let source =
            config::replication_conninfo(self.inputs, self.settings).with("dbname", "postgres");
        tracing::info!(operation = "rewind", "rewinding from the primary");
        process::run_tool(
            "pg_rewind",
            Command::new(self.bins.tool("pg_rewind"))
                .arg(format!("--target-pgdata={}", pgdata.display()))
                .arg(format!("--source-server={source}"))
                .arg("--no-sync"),
        )
        .await?;
        let handle = std::fs::File::open(pgdata).map_err(io_err(pgdata))?;
        nix::unistd::syncfs(&handle).map_err(|e| BootstrapError::Io {
            path: pgdata.display().to_string(),
            message: format!("syncfs: {e}"),
        })?;
        // pg_rewind copied the primary's configuration files; write ours back.
        config::write(
            pgdata,
            &config::render(self.inputs, self.settings, Desired::Replica)?,
        )?;
        config::set_standby(pgdata, true)?;
        Ok(())
    }
}

/// The databases that take connections.
pub(super) async fn databases(
    client: &tokio_postgres::Client,
) -> Result<Vec<String>, BootstrapError> {
    Ok(client
        .query(
            "SELECT datname::text FROM pg_catalog.pg_database WHERE datallowconn ORDER BY datname",
            &[],
        )
        .await
        .map_err(sql_err("listing databases"))?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

pub(super) fn sql_err(what: &'static str) -> impl Fn(tokio_postgres::Error) -> BootstrapError {
    move |e| {
        BootstrapError::Local(LocalError::Query {
            what,
            message: super::local::error_text(&e),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_dirs_are_siblings_of_pgdata() {
        assert_eq!(
            sibling(Path::new("/var/lib/postgresql/data/pgdata"), ".partial"),
            PathBuf::from("/var/lib/postgresql/data/pgdata.partial")
        );
    }
}

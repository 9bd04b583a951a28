//! SQL on the local PostgreSQL over its Unix socket, as the superuser
//! (`local all postgres peer`: the manager runs as the `postgres` OS user).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use tokio_postgres::{Client, NoTls};
use tracing::Instrument;

use crate::contract::instance::StandbyReport;
use crate::postgres::lsn::Lsn;
use crate::postgres::parameters::STANDBY_AT_LEAST_PRIMARY;
use crate::postgres::{roles, sql, synchronous};

#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("cannot connect to the local postgres: {0}")]
    Connect(String),
    #[error("local query failed ({what}): {message}")]
    Query { what: &'static str, message: String },
}

fn query_err(what: &'static str) -> impl Fn(tokio_postgres::Error) -> LocalError {
    move |e| LocalError::Query {
        what,
        message: error_text(&e),
    }
}

/// The server's message when there is one (the default Display hides it).
pub fn error_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => e.to_string(),
    }
}

#[derive(Clone, Debug)]
pub struct Local {
    socket_dir: PathBuf,
    port: u16,
}

/// What the local server says about itself.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    pub in_recovery: bool,
    pub system_identifier: String,
    pub version: String,
    pub version_num: i32,
    pub uptime_seconds: u64,
    pub pending_restart: bool,
    /// The running values of [`STANDBY_AT_LEAST_PRIMARY`].
    pub standby_floor_settings: BTreeMap<String, u64>,
    pub timeline: Option<u32>,
    /// Primary: insert position; replica: replayed.
    pub current_lsn: Option<Lsn>,
    pub receive_lsn: Option<Lsn>,
    pub flush_lsn: Option<Lsn>,
    pub replay_lsn: Option<Lsn>,
    /// Replica: the primary's end of WAL as it last reported it.
    pub primary_end_lsn: Option<Lsn>,
    pub wal_receiver: Option<String>,
    pub replay_delay_seconds: Option<f64>,
    /// Primary: its standbys (`pg_stat_replication`), by name.
    pub standbys: Vec<StandbyReport>,
    /// Primary: replication slots nobody streams from, and the bytes of
    /// WAL each holds back.
    pub inactive_slots: Vec<(String, u64)>,
}

/// Live numbers for `/metrics`.
#[derive(Clone, Debug, Default)]
pub struct Sample {
    pub connections: Vec<(String, i64)>,
    pub xid_age: i64,
    pub database_sizes: Vec<(String, i64)>,
    /// Primary: standbys `synchronous_standby_names` asks commits to wait
    /// for (0 on a replica or with asynchronous replication).
    pub synchronous_required: i64,
}

/// What `pg_stat_archiver` says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Archiver {
    pub last_archived_wal: Option<String>,
    pub last_archived_us: Option<i64>,
    pub last_failed_wal: Option<String>,
    pub last_failed_us: Option<i64>,
    pub archived_count: u64,
    pub failed_count: u64,
}

fn lsn(text: Option<String>) -> Option<Lsn> {
    text.and_then(|t| Lsn::from_str(&t).ok())
}

impl Local {
    pub fn new(socket_dir: PathBuf, port: u16) -> Self {
        Self { socket_dir, port }
    }

    pub async fn connect_to(&self, dbname: &str) -> Result<Client, LocalError> {
        let mut config = tokio_postgres::Config::new();
        config
            .host_path(&self.socket_dir)
            .port(self.port)
            .user(roles::SUPERUSER)
            .dbname(dbname)
            .application_name("capstan-instance")
            // The manager's own writes (passwords, slots) must not wait for
            // synchronous standbys that may not exist yet.
            .options("-c synchronous_commit=local")
            .connect_timeout(Duration::from_secs(5));
        let (client, connection) = config
            .connect(NoTls)
            .await
            .map_err(|e| LocalError::Connect(error_text(&e)))?;
        tokio::spawn(
            async move {
                let _ = connection.await;
            }
            .in_current_span(),
        );
        Ok(client)
    }

    pub async fn connect(&self) -> Result<Client, LocalError> {
        self.connect_to("postgres").await
    }

    /// Whether the server accepts connections (and queries) now.
    pub async fn accepts_connections(&self) -> bool {
        match self.connect().await {
            Ok(client) => client.simple_query("SELECT 1").await.is_ok(),
            Err(_) => false,
        }
    }

    pub async fn snapshot(&self) -> Result<Snapshot, LocalError> {
        let client = self.connect().await?;
        let row = client
            .query_one(
                "SELECT pg_is_in_recovery(),
                        (SELECT system_identifier FROM pg_control_system())::text,
                        current_setting('server_version'),
                        current_setting('server_version_num')::int,
                        extract(epoch FROM now() - pg_postmaster_start_time())::float8,
                        coalesce((SELECT bool_or(pending_restart) FROM pg_settings), false)",
                &[],
            )
            .await
            .map_err(query_err("server state"))?;
        let mut snap = Snapshot {
            in_recovery: row.get(0),
            system_identifier: row.get(1),
            version: row.get(2),
            version_num: row.get(3),
            uptime_seconds: row.get::<_, f64>(4).max(0.0) as u64,
            pending_restart: row.get(5),
            ..Snapshot::default()
        };
        snap.standby_floor_settings = standby_floor_settings(&client).await?;
        if snap.in_recovery {
            let row = client
                .query_one(
                    "SELECT pg_last_wal_receive_lsn()::text,
                            pg_last_wal_replay_lsn()::text,
                            r.status, r.received_tli, r.written_lsn::text, r.latest_end_lsn::text,
                            (SELECT timeline_id FROM pg_control_checkpoint()),
                            extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8
                     FROM (SELECT 1) AS one
                     LEFT JOIN pg_stat_wal_receiver r ON true",
                    &[],
                )
                .await
                .map_err(query_err("replication state"))?;
            snap.flush_lsn = lsn(row.get(0));
            snap.replay_lsn = lsn(row.get(1));
            snap.current_lsn = snap.replay_lsn;
            snap.wal_receiver = row.get(2);
            let received_tli: Option<i32> = row.get(3);
            snap.receive_lsn = lsn(row.get(4)).or(snap.flush_lsn);
            snap.primary_end_lsn = lsn(row.get(5));
            let checkpoint_tli: Option<i32> = row.get(6);
            snap.timeline = received_tli.or(checkpoint_tli).map(|t| t as u32);
            snap.replay_delay_seconds = row.get(7);
        } else {
            let row = client
                .query_one(
                    "SELECT pg_current_wal_lsn()::text, pg_current_wal_flush_lsn()::text,
                            ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int",
                    &[],
                )
                .await
                .map_err(query_err("WAL position"))?;
            snap.current_lsn = lsn(row.get(0));
            snap.flush_lsn = lsn(row.get(1));
            snap.timeline = Some(row.get::<_, i32>(2) as u32);
            snap.standbys = client
                .query(
                    "SELECT application_name::text, coalesce(state, 'unknown'),
                            coalesce(sync_state, 'unknown'), flush_lsn::text, replay_lsn::text
                     FROM pg_stat_replication
                     -- a clone's pg_basebackup stream carries the standby's
                     -- name but is not a standby
                     WHERE state IS DISTINCT FROM 'backup'
                     ORDER BY application_name, pid",
                    &[],
                )
                .await
                .map_err(query_err("pg_stat_replication"))?
                .iter()
                .map(|r| StandbyReport {
                    name: r.get(0),
                    state: r.get(1),
                    sync_state: r.get(2),
                    flush_lsn: r.get(3),
                    replay_lsn: r.get(4),
                })
                .collect();
            // WAL a slot keeps, whoever made it: a full WAL volume's likely
            // cause when its consumer is gone.
            snap.inactive_slots = client
                .query(
                    "SELECT slot_name::text,
                            pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::int8
                     FROM pg_replication_slots
                     WHERE NOT active AND restart_lsn IS NOT NULL
                     ORDER BY 2 DESC",
                    &[],
                )
                .await
                .map_err(query_err("pg_replication_slots"))?
                .iter()
                .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1).max(0) as u64))
                .collect();
        }
        Ok(snap)
    }

    /// `pg_stat_archiver`, times in microseconds since the epoch.
    pub async fn archiver(&self) -> Result<Archiver, LocalError> {
        let client = self.connect().await?;
        let row = client
            .query_one(
                "SELECT last_archived_wal::text,
                        (extract(epoch FROM last_archived_time) * 1000000)::int8,
                        last_failed_wal::text,
                        (extract(epoch FROM last_failed_time) * 1000000)::int8,
                        archived_count, failed_count
                 FROM pg_stat_archiver",
                &[],
            )
            .await
            .map_err(query_err("pg_stat_archiver"))?;
        Ok(Archiver {
            last_archived_wal: row.get(0),
            last_archived_us: row.get(1),
            last_failed_wal: row.get(2),
            last_failed_us: row.get(3),
            archived_count: row.get::<_, i64>(4).max(0) as u64,
            failed_count: row.get::<_, i64>(5).max(0) as u64,
        })
    }

    pub async fn sample(&self) -> Result<Sample, LocalError> {
        let client = self.connect().await?;
        let connections = client
            .query(
                "SELECT coalesce(state, 'unknown'), count(*)
                 FROM pg_stat_activity WHERE backend_type = 'client backend' GROUP BY 1",
                &[],
            )
            .await
            .map_err(query_err("connections"))?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let xid_age: i32 = client
            .query_one(
                "SELECT coalesce(max(age(datfrozenxid)), 0)::int FROM pg_database",
                &[],
            )
            .await
            .map_err(query_err("transaction ID age"))?
            .get(0);
        let database_sizes = client
            .query(
                "SELECT datname::text, pg_database_size(oid) FROM pg_database WHERE datallowconn",
                &[],
            )
            .await
            .map_err(query_err("database sizes"))?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let row = client
            .query_one(
                "SELECT pg_is_in_recovery(), current_setting('synchronous_standby_names')",
                &[],
            )
            .await
            .map_err(query_err("synchronous_standby_names"))?;
        let synchronous_required = if row.get::<_, bool>(0) {
            0
        } else {
            i64::from(synchronous::required(row.get(1)))
        };
        Ok(Sample {
            connections,
            xid_age: i64::from(xid_age),
            database_sizes,
            synchronous_required,
        })
    }

    /// Promotes and returns once a transaction ID can be assigned, i.e. the
    /// server accepts writes. `pg_promote(wait => true)` checks only every
    /// 100 ms; polling here returns within a few ms of the end of recovery.
    pub async fn promote(&self, wait: Duration) -> Result<(), LocalError> {
        let client = self.connect().await?;
        let signalled: bool = client
            .query_one("SELECT pg_promote(false)", &[])
            .await
            .map_err(query_err("pg_promote"))?
            .get(0);
        if !signalled {
            return Err(LocalError::Query {
                what: "pg_promote",
                message: "the promotion signal could not be sent".into(),
            });
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // pg_is_in_recovery() turns false once WAL may be written; the
            // transaction ID proves it (and polling it would log errors).
            let in_recovery: bool = client
                .query_one("SELECT pg_is_in_recovery()", &[])
                .await
                .map_err(query_err("waiting for the end of recovery"))?
                .get(0);
            if !in_recovery {
                client
                    .simple_query("SELECT pg_current_xact_id()")
                    .await
                    .map_err(query_err("first write after promotion"))?;
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(LocalError::Query {
                    what: "pg_promote",
                    message: format!("still in recovery {}s after promotion", wait.as_secs()),
                });
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    pub async fn checkpoint(&self) -> Result<(), LocalError> {
        let client = self.connect().await?;
        client
            .simple_query("CHECKPOINT")
            .await
            .map_err(query_err("CHECKPOINT"))?;
        Ok(())
    }

    /// The sentinel row of `backup` (see [`crate::contract::verify`]):
    /// committed before the backup starts, so every restore of it must
    /// hold the row.
    pub async fn write_sentinel(&self, backup: &str) -> Result<(), LocalError> {
        let client = self
            .connect_to(crate::contract::verify::SENTINEL_DATABASE)
            .await?;
        client
            .batch_execute(&crate::contract::verify::sentinel_sql(backup))
            .await
            .map_err(query_err("the backup sentinel"))?;
        Ok(())
    }

    pub async fn reload(&self) -> Result<(), LocalError> {
        let client = self.connect().await?;
        client
            .simple_query("SELECT pg_reload_conf()")
            .await
            .map_err(query_err("pg_reload_conf"))?;
        Ok(())
    }

    /// Problems PostgreSQL found in the configuration files after a reload.
    pub async fn config_problems(&self) -> Result<Vec<String>, LocalError> {
        let client = self.connect().await?;
        let mut problems: Vec<String> = client
            .query(
                // A parameter waiting for a restart shows up here too; that is
                // pendingRestart, not an error.
                "SELECT coalesce(f.sourcefile || ' line ' || f.sourceline || ': ', '')
                        || coalesce(f.name || ': ', '') || f.error
                 FROM pg_file_settings f
                 WHERE f.error IS NOT NULL
                   AND NOT EXISTS (SELECT 1 FROM pg_settings s
                                   WHERE s.name = f.name AND s.pending_restart)",
                &[],
            )
            .await
            .map_err(query_err("pg_file_settings"))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        problems.extend(
            client
                .query(
                    "SELECT format('pg_hba.conf line %s: %s', line_number, error)
                     FROM pg_hba_file_rules WHERE error IS NOT NULL",
                    &[],
                )
                .await
                .map_err(query_err("pg_hba_file_rules"))?
                .iter()
                .map(|r| r.get::<_, String>(0)),
        );
        Ok(problems)
    }

    /// Physical slots whose names look like instance slots of this cluster
    /// (`<cluster>_<n>`); other slots belong to users and are left alone.
    async fn instance_slots(
        &self,
        client: &Client,
        cluster_prefix: &str,
    ) -> Result<Vec<(String, bool)>, LocalError> {
        Ok(client
            .query(
                "SELECT slot_name::text, active FROM pg_replication_slots WHERE slot_type = 'physical'",
                &[],
            )
            .await
            .map_err(query_err("pg_replication_slots"))?
            .iter()
            .map(|r| (r.get::<_, String>(0), r.get::<_, bool>(1)))
            .filter(|(name, _)| is_instance_slot(name, cluster_prefix))
            .collect())
    }

    /// Primary: a slot for each wanted instance; inactive slots of removed
    /// instances dropped. Returns (created, dropped).
    pub async fn sync_slots(
        &self,
        wanted: &[String],
        cluster_prefix: &str,
    ) -> Result<(Vec<String>, Vec<String>), LocalError> {
        let client = self.connect().await?;
        let existing = self.instance_slots(&client, cluster_prefix).await?;
        let mut created = Vec::new();
        for slot in wanted {
            if !existing.iter().any(|(name, _)| name == slot) {
                client
                    .execute(
                        "SELECT pg_create_physical_replication_slot($1, true)",
                        &[slot],
                    )
                    .await
                    .map_err(query_err("creating a replication slot"))?;
                created.push(slot.clone());
            }
        }
        let mut dropped = Vec::new();
        for (name, active) in existing {
            if !active && !wanted.contains(&name) {
                client
                    .execute("SELECT pg_drop_replication_slot($1)", &[&name])
                    .await
                    .map_err(query_err("dropping a replication slot"))?;
                dropped.push(name);
            }
        }
        Ok((created, dropped))
    }

    /// Stored passwords (`pg_authid.rolpassword`) of the roles that have one.
    pub async fn stored_passwords(
        &self,
        roles: &[&str],
    ) -> Result<BTreeMap<String, String>, LocalError> {
        let client = self.connect().await?;
        let rows = client
            .query(
                "SELECT rolname::text, rolpassword FROM pg_authid
                 WHERE rolname = ANY($1) AND rolpassword IS NOT NULL",
                &[&roles],
            )
            .await
            .map_err(query_err("reading stored passwords"))?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Sets a role's password from its SCRAM verifier (the plaintext never
    /// reaches the server or its log).
    pub async fn set_password(&self, role: &str, verifier: &str) -> Result<(), LocalError> {
        let client = self.connect().await?;
        client
            .batch_execute(QUIET_SESSION)
            .await
            .map_err(query_err("quieting the session log"))?;
        client
            .batch_execute(&format!(
                "ALTER ROLE {} PASSWORD {}",
                sql::quote_ident(role),
                sql::quote_literal(verifier)
            ))
            .await
            .map_err(query_err("setting a password"))?;
        Ok(())
    }
}

/// Sent alone before statements that carry password verifiers: a query
/// string is logged before it runs, so these must already be in force.
pub const QUIET_SESSION: &str = "SET log_statement = 'none'; \
     SET log_min_duration_statement = -1; \
     SET log_min_error_statement = 'panic'";

fn is_instance_slot(name: &str, cluster_prefix: &str) -> bool {
    name.strip_prefix(cluster_prefix)
        .and_then(|rest| rest.strip_prefix('_'))
        .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
}

/// The running values of the settings a standby may not run below its
/// primary.
async fn standby_floor_settings(client: &Client) -> Result<BTreeMap<String, u64>, LocalError> {
    let names: Vec<&str> = STANDBY_AT_LEAST_PRIMARY.iter().map(|(n, _)| *n).collect();
    let rows = client
        .query(
            "SELECT name::text, setting::bigint FROM pg_catalog.pg_settings
             WHERE name = ANY($1) AND setting ~ '^[0-9]+$'",
            &[&names],
        )
        .await
        .map_err(query_err("pg_settings"))?;
    Ok(rows
        .iter()
        .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1).max(0) as u64))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_instance_slots() {
        assert!(is_instance_slot("db_1", "db"));
        assert!(is_instance_slot("my_db_12", "my_db"));
        assert!(!is_instance_slot("db_x", "db"));
        assert!(!is_instance_slot("db_", "db"));
        assert!(!is_instance_slot("debezium", "db"));
        assert!(!is_instance_slot("other_1", "db"));
    }
}

//! Client of PgBouncer's admin console (database `pgbouncer`), reached only
//! through the Unix socket in the run directory as [`ADMIN_USER`].
//!
//! Every call is bounded by a timeout. [`AdminConsole::pause`] resumes the
//! pooler on every error path: a PAUSE left in force is an outage.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_postgres::{NoTls, SimpleQueryMessage};

use super::config::ADMIN_USER;

/// How long connecting and each plain command may take.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("cannot reach the PgBouncer admin console: {0}")]
    Connect(String),
    #[error("PgBouncer refused {command}: {message}")]
    Command {
        command: &'static str,
        message: String,
    },
    #[error("{command} on the PgBouncer admin console took longer than {timeout:?}")]
    Timeout {
        command: &'static str,
        timeout: Duration,
    },
    #[error(
        "PAUSE did not complete within {timeout:?}: {servers_active} server connection(s) still busy (a long transaction?); the pooler was resumed{resume_note}"
    )]
    PauseTimeout {
        timeout: Duration,
        servers_active: i64,
        /// Empty when RESUME succeeded.
        resume_note: String,
    },
    #[error("unexpected answer to {command}: {message}")]
    Parse {
        command: &'static str,
        message: String,
    },
}

/// Where and how to reach the admin console.
#[derive(Clone)]
pub struct AdminConsole {
    socket_dir: PathBuf,
    port: u16,
    password: String,
    timeout: Duration,
    /// Kept-open session for the short commands.
    control: Session,
    /// Kept-open session for PAUSE, which blocks its session until done.
    pause_session: Session,
}

type Session = Arc<tokio::sync::Mutex<Option<tokio_postgres::Client>>>;

impl std::fmt::Debug for AdminConsole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminConsole")
            .field("socket_dir", &self.socket_dir)
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

/// One row of a `SHOW` command, by column name.
type Row = HashMap<String, String>;

/// `SHOW POOLS`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Pool {
    pub database: String,
    pub user: String,
    pub cl_active: i64,
    pub cl_waiting: i64,
    pub sv_active: i64,
    pub sv_idle: i64,
    pub sv_used: i64,
    pub sv_tested: i64,
    pub sv_login: i64,
    /// Longest wait of a client in the queue.
    pub maxwait: Duration,
    pub pool_mode: String,
}

/// `SHOW STATS` (times in microseconds, as PgBouncer reports them).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stats {
    pub database: String,
    pub total_xact_count: u64,
    pub total_query_count: u64,
    pub total_received: u64,
    pub total_sent: u64,
    pub total_xact_time_us: u64,
    pub total_query_time_us: u64,
    pub total_wait_time_us: u64,
    pub avg_xact_time_us: u64,
    pub avg_query_time_us: u64,
    pub avg_wait_time_us: u64,
}

/// `SHOW SERVERS` / `SHOW CLIENTS`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Connection {
    /// `S` (server) or `C` (client).
    pub kind: String,
    pub user: String,
    pub database: String,
    /// `active`, `idle`, `used`, `waiting`, …
    pub state: String,
    pub addr: String,
    pub port: u16,
    /// TLS description, empty without TLS.
    pub tls: String,
}

impl AdminConsole {
    pub fn new(socket_dir: PathBuf, port: u16, password: String) -> Self {
        Self {
            socket_dir,
            port,
            password,
            timeout: DEFAULT_TIMEOUT,
            control: Session::default(),
            pause_session: Session::default(),
        }
    }

    async fn connect(&self) -> Result<tokio_postgres::Client, AdminError> {
        let mut config = tokio_postgres::Config::new();
        config
            .host_path(&self.socket_dir)
            .port(self.port)
            .user(ADMIN_USER)
            .password(&self.password)
            .dbname("pgbouncer")
            .application_name("capstan-pooler")
            .connect_timeout(self.timeout);
        let connecting = config.connect(NoTls);
        let (client, connection) = tokio::time::timeout(self.timeout, connecting)
            .await
            .map_err(|_| AdminError::Connect(format!("no answer within {:?}", self.timeout)))?
            .map_err(|e| AdminError::Connect(describe(&e)))?;
        tokio::spawn(async move {
            // Errors surface on the client side; the task ends with the socket.
            let _ = connection.await;
        });
        Ok(client)
    }

    /// Runs `command` on a kept-open session within `timeout`,
    /// reconnecting when the session was closed (PgBouncer restarted).
    /// Kept-open sessions spare a SCRAM login per command: the pause path
    /// stays short, and probes do not log a login each.
    async fn query_on(
        &self,
        session: &Session,
        command: &'static str,
        timeout: Duration,
    ) -> Result<Vec<Row>, AdminError> {
        let run = async {
            let mut session = session.lock().await;
            if let Some(client) = session.as_ref().filter(|c| !c.is_closed()) {
                match client.simple_query(command).await {
                    Ok(messages) => return Ok(rows(messages)),
                    Err(e) if e.as_db_error().is_some() => {
                        return Err(AdminError::Command {
                            command,
                            message: describe(&e),
                        });
                    }
                    Err(_) => {}
                }
            }
            *session = None;
            let client = self.connect().await?;
            let messages = client
                .simple_query(command)
                .await
                .map_err(|e| AdminError::Command {
                    command,
                    message: describe(&e),
                })?;
            *session = Some(client);
            Ok(rows(messages))
        };
        match tokio::time::timeout(timeout, run).await {
            Ok(r) => r,
            Err(_) => {
                // The session may still be busy with the abandoned command.
                *session.lock().await = None;
                Err(AdminError::Timeout { command, timeout })
            }
        }
    }

    /// A short command on the control session.
    async fn query(&self, command: &'static str) -> Result<Vec<Row>, AdminError> {
        self.query_on(&self.control, command, self.timeout).await
    }

    /// Opens the PAUSE session ahead of need, so a switchover does not wait
    /// for a login.
    pub async fn warm_up(&self) -> Result<(), AdminError> {
        self.query_on(&self.pause_session, "SHOW VERSION", self.timeout)
            .await
            .map(|_| ())
    }

    /// Whether the console answers (readiness).
    pub async fn ping(&self) -> Result<(), AdminError> {
        self.query("SHOW VERSION").await.map(|_| ())
    }

    /// `PAUSE`: waits until every server connection is released and closed.
    /// Gives up after `timeout`, and then (and on any other error) RESUMEs
    /// before returning the error. Returns how long the PAUSE took.
    pub async fn pause(&self, timeout: Duration) -> Result<Duration, AdminError> {
        let started = Instant::now();
        match self.query_on(&self.pause_session, "PAUSE", timeout).await {
            Ok(_) => Ok(started.elapsed()),
            Err(AdminError::Command { message, .. }) if message.contains("already") => {
                // Paused by an earlier request: the server side is already quiet.
                Ok(started.elapsed())
            }
            Err(AdminError::Timeout { .. }) => {
                let servers_active = self
                    .show_servers()
                    .await
                    .map(|s| s.iter().filter(|c| c.state == "active").count() as i64)
                    .unwrap_or(-1);
                let resume_note = match self.resume().await {
                    Ok(()) => String::new(),
                    Err(e) => format!(" — but RESUME failed: {e}"),
                };
                Err(AdminError::PauseTimeout {
                    timeout,
                    servers_active,
                    resume_note,
                })
            }
            Err(e) => {
                if let Err(resume) = self.resume().await {
                    tracing::error!(error = %resume, "RESUME after a failed PAUSE failed");
                }
                Err(e)
            }
        }
    }

    /// `RESUME`, retried a few times (a stuck PAUSE is an outage); resuming
    /// a pooler that is not paused succeeds.
    pub async fn resume(&self) -> Result<(), AdminError> {
        let mut last = None;
        for attempt in 0..3u32 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
            }
            match self.query("RESUME").await {
                Ok(_) => return Ok(()),
                Err(AdminError::Command { message, .. }) if message.contains("not paused") => {
                    return Ok(());
                }
                Err(e) => {
                    tracing::warn!(error = %e, attempt, "RESUME failed");
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or(AdminError::Connect("RESUME was not attempted".into())))
    }

    /// `RECONNECT`: close every server connection once released, so new
    /// ones go to whatever the backend host now points at.
    pub async fn reconnect(&self) -> Result<(), AdminError> {
        self.query("RECONNECT").await.map(|_| ())
    }

    /// `RELOAD`: re-read `pgbouncer.ini` (and the TLS files).
    pub async fn reload(&self) -> Result<(), AdminError> {
        self.query("RELOAD").await.map(|_| ())
    }

    pub async fn show_pools(&self) -> Result<Vec<Pool>, AdminError> {
        let rows = self.query("SHOW POOLS").await?;
        rows.iter().map(parse_pool).collect()
    }

    pub async fn show_stats(&self) -> Result<Vec<Stats>, AdminError> {
        let rows = self.query("SHOW STATS").await?;
        rows.iter().map(parse_stats).collect()
    }

    /// Client connections in use (`SHOW LISTS`' `used_clients`) and the
    /// `max_client_conn` limit (`SHOW CONFIG`).
    pub async fn client_limits(&self) -> Result<ClientLimits, AdminError> {
        let lists = self.query("SHOW LISTS").await?;
        let config = self.query("SHOW CONFIG").await?;
        let find = |rows: &[Row], key_column: &str, key: &str, value_column: &str, command| {
            rows.iter()
                .find(|r| r.get(key_column).is_some_and(|k| k == key))
                .map_or(Ok(0), |r| number(r, value_column, command))
        };
        Ok(ClientLimits {
            used_clients: find(&lists, "list", "used_clients", "items", "SHOW LISTS")?,
            max_client_conn: find(&config, "key", "max_client_conn", "value", "SHOW CONFIG")?,
        })
    }

    pub async fn show_servers(&self) -> Result<Vec<Connection>, AdminError> {
        let rows = self.query("SHOW SERVERS").await?;
        rows.iter()
            .map(|r| parse_connection(r, "SHOW SERVERS"))
            .collect()
    }

    pub async fn show_clients(&self) -> Result<Vec<Connection>, AdminError> {
        let rows = self.query("SHOW CLIENTS").await?;
        rows.iter()
            .map(|r| parse_connection(r, "SHOW CLIENTS"))
            .collect()
    }
}

/// The server's own message where there is one (tokio-postgres' Display of
/// a server error is only "db error").
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => db.message().to_string(),
        None => e.to_string(),
    }
}

fn rows(messages: Vec<SimpleQueryMessage>) -> Vec<Row> {
    messages
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(
                row.columns()
                    .iter()
                    .enumerate()
                    .map(|(i, c)| (c.name().to_string(), row.get(i).unwrap_or("").to_string()))
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

fn text(row: &Row, column: &str) -> String {
    row.get(column).cloned().unwrap_or_default()
}

/// A numeric column; a missing column (older or newer PgBouncer) reads as 0.
fn number<T: std::str::FromStr + Default>(
    row: &Row,
    column: &str,
    command: &'static str,
) -> Result<T, AdminError> {
    match row.get(column) {
        None => Ok(T::default()),
        Some(v) if v.is_empty() => Ok(T::default()),
        Some(v) => v.parse().map_err(|_| AdminError::Parse {
            command,
            message: format!("column {column} is {v:?}, not a number"),
        }),
    }
}

/// How close PgBouncer is to refusing clients.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientLimits {
    pub used_clients: i64,
    pub max_client_conn: i64,
}

fn parse_pool(row: &Row) -> Result<Pool, AdminError> {
    const C: &str = "SHOW POOLS";
    let maxwait_s: u64 = number(row, "maxwait", C)?;
    let maxwait_us: u64 = number(row, "maxwait_us", C)?;
    Ok(Pool {
        database: text(row, "database"),
        user: text(row, "user"),
        cl_active: number(row, "cl_active", C)?,
        cl_waiting: number(row, "cl_waiting", C)?,
        sv_active: number(row, "sv_active", C)?,
        sv_idle: number(row, "sv_idle", C)?,
        sv_used: number(row, "sv_used", C)?,
        sv_tested: number(row, "sv_tested", C)?,
        sv_login: number(row, "sv_login", C)?,
        maxwait: Duration::from_secs(maxwait_s) + Duration::from_micros(maxwait_us),
        pool_mode: text(row, "pool_mode"),
    })
}

fn parse_stats(row: &Row) -> Result<Stats, AdminError> {
    const C: &str = "SHOW STATS";
    Ok(Stats {
        database: text(row, "database"),
        total_xact_count: number(row, "total_xact_count", C)?,
        total_query_count: number(row, "total_query_count", C)?,
        total_received: number(row, "total_received", C)?,
        total_sent: number(row, "total_sent", C)?,
        total_xact_time_us: number(row, "total_xact_time", C)?,
        total_query_time_us: number(row, "total_query_time", C)?,
        total_wait_time_us: number(row, "total_wait_time", C)?,
        avg_xact_time_us: number(row, "avg_xact_time", C)?,
        avg_query_time_us: number(row, "avg_query_time", C)?,
        avg_wait_time_us: number(row, "avg_wait_time", C)?,
    })
}

fn parse_connection(row: &Row, command: &'static str) -> Result<Connection, AdminError> {
    Ok(Connection {
        kind: text(row, "type"),
        user: text(row, "user"),
        database: text(row, "database"),
        state: text(row, "state"),
        addr: text(row, "addr"),
        port: number(row, "port", command)?,
        tls: text(row, "tls"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(pairs: &[(&str, &str)]) -> Row {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parses_pools_as_pgbouncer_1_18_prints_them() {
        let r = row(&[
            ("database", "app"),
            ("user", "alice"),
            ("cl_active", "8"),
            ("cl_waiting", "2"),
            ("cl_cancel_req", "0"),
            ("sv_active", "3"),
            ("sv_idle", "1"),
            ("sv_used", "0"),
            ("sv_tested", "0"),
            ("sv_login", "0"),
            ("maxwait", "1"),
            ("maxwait_us", "250000"),
            ("pool_mode", "transaction"),
        ]);
        let p = parse_pool(&r).unwrap();
        assert_eq!(p.cl_active, 8);
        assert_eq!(p.cl_waiting, 2);
        assert_eq!(p.sv_active, 3);
        assert_eq!(p.maxwait, Duration::from_millis(1250));
        assert_eq!(p.pool_mode, "transaction");
    }

    #[test]
    fn parses_stats_and_tolerates_missing_columns() {
        let r = row(&[
            ("database", "app"),
            ("total_xact_count", "1200"),
            ("total_query_count", "8400"),
            ("avg_wait_time", "17"),
        ]);
        let s = parse_stats(&r).unwrap();
        assert_eq!(s.total_xact_count, 1200);
        assert_eq!(s.total_query_count, 8400);
        assert_eq!(s.avg_wait_time_us, 17);
        assert_eq!(s.total_sent, 0);
    }

    #[test]
    fn bad_numbers_are_errors_that_name_the_column() {
        let r = row(&[("cl_active", "lots")]);
        let e = parse_pool(&r).unwrap_err().to_string();
        assert!(e.contains("cl_active") && e.contains("lots"), "{e}");
    }

    #[test]
    fn parses_connections() {
        let r = row(&[
            ("type", "S"),
            ("user", "alice"),
            ("database", "app"),
            ("state", "active"),
            ("addr", "127.0.0.1"),
            ("port", "5432"),
            ("tls", "TLSv1.3/TLS_AES_256_GCM_SHA384"),
        ]);
        let c = parse_connection(&r, "SHOW SERVERS").unwrap();
        assert_eq!(c.state, "active");
        assert_eq!(c.port, 5432);
        assert!(c.tls.starts_with("TLSv1.3"));
    }
}

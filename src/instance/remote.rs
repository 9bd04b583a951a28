//! SQL on the primary (through the `-rw` Service) as `streaming_replica`
//! with its client certificate: what a replica needs to know before it
//! clones, follows or rewinds.

use std::time::Duration;

use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;
use tracing::Instrument;

use crate::contract::settings::InstanceSettings;
use crate::postgres::roles;

use super::inputs::Inputs;
use super::local::error_text;
use crate::agents::tls;

#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("cannot connect to the primary at {host}:{port}: {message}")]
    Connect {
        host: String,
        port: u16,
        message: String,
    },
    #[error("query on the primary failed ({what}): {message}")]
    Query { what: &'static str, message: String },
    #[error("the primary did not answer within {}s ({what}); it may be frozen or partitioned", .after.as_secs())]
    TimedOut { what: &'static str, after: Duration },
}

/// Bound of a short question to the primary, connection included. A frozen
/// primary accepts the TCP connection and then never answers (the connect
/// timeout covers only the socket), and the manager's loop must not hang on
/// it.
const ANSWER_WITHIN: Duration = Duration::from_secs(8);
/// `CHECKPOINT` writes every dirty buffer, so it gets longer.
const CHECKPOINT_WITHIN: Duration = Duration::from_secs(120);

async fn bounded<T>(
    what: &'static str,
    after: Duration,
    work: impl std::future::Future<Output = Result<T, RemoteError>>,
) -> Result<T, RemoteError> {
    tokio::time::timeout(after, work)
        .await
        .unwrap_or(Err(RemoteError::TimedOut { what, after }))
}

/// What the server behind `primary_host` says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrimaryInfo {
    pub in_recovery: bool,
    pub system_identifier: u64,
    pub timeline: u32,
    /// `server_version_num` / 10000.
    pub major: u32,
}

pub struct Primary<'a> {
    inputs: &'a Inputs,
    settings: &'a InstanceSettings,
}

impl<'a> Primary<'a> {
    pub fn new(inputs: &'a Inputs, settings: &'a InstanceSettings) -> Self {
        Self { inputs, settings }
    }

    async fn connect(&self) -> Result<tokio_postgres::Client, RemoteError> {
        let tls = tls::postgres_client_config(&self.inputs.replication_tls())?;
        let host = self.settings.primary_host.clone();
        let port = self.settings.primary_port;
        let mut config = tokio_postgres::Config::new();
        // The rustls config verifies the chain and the host name (verify-full).
        config
            .host(&host)
            .port(port)
            .user(roles::REPLICATION)
            .dbname("postgres")
            .application_name(&self.inputs.pod)
            .ssl_mode(SslMode::Require)
            .connect_timeout(Duration::from_secs(5));
        let (client, connection) =
            config
                .connect(MakeRustlsConnect::new(tls))
                .await
                .map_err(|e| RemoteError::Connect {
                    host,
                    port,
                    message: error_text(&e),
                })?;
        tokio::spawn(
            async move {
                let _ = connection.await;
            }
            .in_current_span(),
        );
        Ok(client)
    }

    pub async fn info(&self) -> Result<PrimaryInfo, RemoteError> {
        self.info_within(ANSWER_WITHIN).await
    }

    /// [`Self::info`] with its own bound, for callers that must not wait
    /// long on a primary that may be frozen.
    pub async fn info_within(&self, after: Duration) -> Result<PrimaryInfo, RemoteError> {
        bounded("server identity", after, self.ask_info()).await
    }

    async fn ask_info(&self) -> Result<PrimaryInfo, RemoteError> {
        let client = self.connect().await?;
        let row = client
            .query_one(
                "SELECT pg_is_in_recovery(),
                        (SELECT system_identifier FROM pg_control_system())::text,
                        CASE WHEN pg_is_in_recovery()
                             THEN coalesce((SELECT received_tli FROM pg_stat_wal_receiver),
                                           (SELECT timeline_id FROM pg_control_checkpoint()))
                             ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int
                        END,
                        current_setting('server_version_num')::int / 10000",
                &[],
            )
            .await
            .map_err(|e| RemoteError::Query {
                what: "server identity",
                message: error_text(&e),
            })?;
        let sysid: String = row.get(1);
        Ok(PrimaryInfo {
            in_recovery: row.get(0),
            system_identifier: sysid.parse().map_err(|_| RemoteError::Query {
                what: "server identity",
                message: format!("unexpected system identifier {sysid:?}"),
            })?,
            timeline: row.get::<_, i32>(2) as u32,
            major: row.get::<_, i32>(3) as u32,
        })
    }

    /// Whether the primary has the physical slot `name`.
    pub async fn slot_exists(&self, name: &str) -> Result<bool, RemoteError> {
        bounded("replication slots", ANSWER_WITHIN, self.ask_slot(name)).await
    }

    async fn ask_slot(&self, name: &str) -> Result<bool, RemoteError> {
        let client = self.connect().await?;
        let row = client
            .query_one(
                "SELECT count(*) > 0 FROM pg_replication_slots WHERE slot_name = $1",
                &[&name],
            )
            .await
            .map_err(|e| RemoteError::Query {
                what: "replication slots",
                message: error_text(&e),
            })?;
        Ok(row.get(0))
    }

    /// `CHECKPOINT` on the primary, so its control file shows the new
    /// timeline before pg_rewind reads it (needs `pg_checkpoint`, 15+).
    pub async fn checkpoint(&self) -> Result<(), RemoteError> {
        bounded("CHECKPOINT", CHECKPOINT_WITHIN, self.run_checkpoint()).await
    }

    async fn run_checkpoint(&self) -> Result<(), RemoteError> {
        let client = self.connect().await?;
        client
            .simple_query("CHECKPOINT")
            .await
            .map_err(|e| RemoteError::Query {
                what: "CHECKPOINT",
                message: error_text(&e),
            })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_primary_that_never_answers_is_given_up_on() {
        let never = std::future::pending::<Result<(), RemoteError>>();
        let err = bounded("server identity", ANSWER_WITHIN, never)
            .await
            .unwrap_err();
        assert!(matches!(
            err,
            RemoteError::TimedOut {
                what: "server identity",
                ..
            }
        ));
        assert!(err.to_string().contains("8s"), "{err}");
    }
}

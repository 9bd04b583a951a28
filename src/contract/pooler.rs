//! JSON of the pooler supervisor's HTTPS API (port [`super::layout::AGENT_PORT`]).
//!
//! `GET /readyz` and `GET /metrics` need no client certificate; `GET /status`,
//! `POST /pause`, `POST /resume` and `POST /reconnect` require the
//! operator's client certificate.

use serde::{Deserialize, Serialize};

/// `POST /pause` body.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PauseRequest {
    /// Give up (and RESUME) when server connections are still active after this long.
    pub timeout_ms: u64,
}

/// `POST /pause` answer.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PauseResult {
    /// Time until every server connection was released.
    pub elapsed_ms: u64,
}

/// `GET /status`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PoolerReport {
    /// Pod name.
    pub name: String,
    /// PgBouncer is running and accepts connections.
    pub running: bool,
    pub paused: bool,
    pub backend_host: String,
    pub clients_active: i64,
    pub clients_waiting: i64,
    pub servers_active: i64,
    pub servers_idle: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

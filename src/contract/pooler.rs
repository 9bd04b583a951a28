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
    /// RESUME by itself when no RESUME arrives within this long after the
    /// pause completed, so a caller that dies mid-switchover cannot leave
    /// clients waiting forever. None: [`DEFAULT_MAX_HOLD_MS`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_hold_ms: Option<u64>,
}

/// Longest `timeoutMs` a pooler accepts.
pub const MAX_PAUSE_TIMEOUT_MS: u64 = 60_000;
/// Hold limit of a pause when the request names none.
pub const DEFAULT_MAX_HOLD_MS: u64 = 60_000;
/// Longest `maxHoldMs` a pooler accepts.
pub const MAX_HOLD_LIMIT_MS: u64 = 600_000;

/// `POST /pause` answer.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PauseResult {
    /// Time until every server connection was released.
    pub elapsed_ms: u64,
}

/// `GET /status`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PoolerReport {
    /// Pod name.
    pub name: String,
    /// PgBouncer is running and accepts connections.
    pub running: bool,
    pub paused: bool,
    pub backend_host: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_port: Option<u16>,
    /// Times PgBouncer ended unexpectedly and was restarted.
    #[serde(default)]
    pub restarts: u64,
    /// Times a changed configuration was applied with RELOAD.
    #[serde(default)]
    pub reloads: u64,
    pub clients_active: i64,
    pub clients_waiting: i64,
    pub servers_active: i64,
    pub servers_idle: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// The supervisor binary this pod runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<super::agent::AgentBuild>,
    /// The mounted certificates and the CAs they trust.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub tls: super::agent::TlsMounts,
}

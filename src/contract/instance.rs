//! JSON of the instance manager's HTTPS API (port [`super::layout::AGENT_PORT`]).
//!
//! `GET /healthz`, `GET /readyz` and `GET /metrics` need no client
//! certificate (kubelet probes, Prometheus); `GET /status`, `POST /promote`
//! and `POST /demote` require the operator's client certificate.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Role of an instance as its manager sees it.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Primary,
    Replica,
    /// PostgreSQL is not running (bootstrapping, crashed, fenced, stopped).
    #[default]
    Unknown,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Replica => "replica",
            Role::Unknown => "unknown",
        }
    }
}

/// `GET /status`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct InstanceReport {
    /// Pod name.
    pub name: String,
    pub role: Role,
    /// PostgreSQL accepts connections.
    pub running: bool,
    /// What `/readyz` answers.
    pub ready: bool,
    /// The primary this instance follows or is, per the cluster's authority.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_primary: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeline: Option<u32>,
    /// `pg_control` system identifier, as a string (it exceeds 2^53).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_identifier: Option<String>,
    /// Primary: `pg_current_wal_lsn()`. Replica: last replayed LSN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_lsn: Option<String>,
    /// Replica: last WAL location received and flushed to disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receive_lsn: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay_lsn: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flush_lsn: Option<String>,
    /// Replica: bytes received but not yet replayed, or behind the primary
    /// when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_seconds: Option<f64>,
    /// Replica: `pg_stat_wal_receiver.status` (`streaming`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wal_receiver: Option<String>,
    /// A changed setting needs a restart to take effect.
    #[serde(default)]
    pub pending_restart: bool,
    /// What the server runs of the settings a standby may not run below
    /// its primary (`max_connections`, …): when the spec lowers one, the
    /// primary restarts first.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub standby_floor_settings: BTreeMap<String, u64>,
    /// `server_version`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres_uptime_seconds: Option<u64>,
    /// The last error the manager hit, for people to read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Times the manager restarted postgres after it exited unexpectedly.
    #[serde(default)]
    pub postgres_restarts: u32,
    /// The primary Lease, when fencing is configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<LeaseReport>,
    /// Primary: its standbys.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub standbys: Vec<StandbyReport>,
    /// Primary, with `spec.backup`: WAL archiving.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive: Option<super::backup::ArchiveReport>,
    /// The backup this instance runs, or the last one it ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<super::backup::BackupJob>,
    /// The bootstrap from a backup, on the instance that restores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore: Option<super::restore::RestoreReport>,
    /// A major upgrade, on the primary that runs it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgrade: Option<super::upgrade::UpgradeReport>,
    /// PostgreSQL refused `spec.postgres.parameters` (its words); the
    /// instance keeps running with the parameters it had.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters_refused: Option<String>,
    /// The manager binary this instance runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<super::agent::AgentBuild>,
    /// The file system of the data volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_volume: Option<VolumeUsage>,
    /// [`super::settings::InstanceSettings::digest`] of the settings this
    /// instance runs with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settings_digest: Option<String>,
    /// The file system of the WAL volume (`walStorage` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wal_volume: Option<VolumeUsage>,
    /// Primary: replication slots nobody streams from, with the bytes of
    /// WAL each holds back (largest first).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inactive_slots: Vec<InactiveSlot>,
    /// The mounted certificates and the CAs they trust.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tls: super::agent::TlsMounts,
    /// Primary: `spec.roles` and `spec.databases` as last applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed: Option<super::roles::ManagedReport>,
}

/// A replication slot nobody streams from.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct InactiveSlot {
    pub name: String,
    pub retained_bytes: u64,
}

/// A file system's size and what is free on it (`statvfs`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct VolumeUsage {
    pub size_bytes: u64,
    /// Free for an unprivileged writer (what PostgreSQL can use).
    pub available_bytes: u64,
}

impl InstanceReport {
    /// The WAL this replica has on disk: the larger of what its WAL
    /// receiver flushed and what it replayed. `pg_last_wal_receive_lsn()`
    /// starts again from the segment boundary whenever the WAL receiver
    /// restarts (as it does when the primary moves), so right after a
    /// restart it is lower than the replay position; taking it alone once
    /// made a failover promote a replica with less WAL than another.
    pub fn wal_held(&self) -> Option<crate::postgres::lsn::Lsn> {
        let parse = |s: &Option<String>| s.as_deref().and_then(|s| s.parse().ok());
        parse(&self.receive_lsn).max(parse(&self.replay_lsn))
    }
}

/// The primary Lease as this instance sees it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LeaseReport {
    /// `holderIdentity` last read or written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder: Option<String>,
    /// This instance holds the lease and renewed it within the fence bound.
    pub held: bool,
    /// Milliseconds since this instance's last successful renewal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewed_ms_ago: Option<u64>,
    /// PostgreSQL was stopped because the lease could not be renewed (or was
    /// taken over); it accepts no writes until the lease is held again.
    pub fenced: bool,
}

/// One standby as the primary sees it (`pg_stat_replication`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StandbyReport {
    /// `application_name` (the standby's pod name).
    pub name: String,
    /// `state`: streaming, catchup, …
    pub state: String,
    /// `sync_state`: async, potential, sync, quorum.
    pub sync_state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flush_lsn: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay_lsn: Option<String>,
}

/// `POST /promote` body.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PromoteRequest {
    /// Fail instead of promoting when the replica is further behind its
    /// last known primary LSN than this (None: no check).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_lag_bytes: Option<u64>,
    /// A switchover: the WAL position the replica must have received (the
    /// old primary's shutdown checkpoint). The instance waits for it, at
    /// most `catch_up_ms`, and refuses to promote without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_wal: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catch_up_ms: Option<u64>,
}

/// `POST /promote` answer.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PromoteResult {
    /// Timeline after promotion.
    pub timeline: u32,
    /// From the request until a write was accepted.
    pub elapsed_ms: u64,
    /// The instance was already primary; nothing was done.
    pub already_primary: bool,
}

/// `POST /demote` body.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DemoteRequest {
    /// Pod name of the new primary.
    pub new_primary: String,
}

/// `POST /demote` answer.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DemoteResult {
    /// From the request until the instance followed the new primary.
    pub elapsed_ms: u64,
    /// The instance was already a replica; nothing was done.
    pub already_replica: bool,
    /// The data directory was rewound (or re-cloned) to follow.
    pub rewound: bool,
    /// Streaming from the new primary already. False: stopped cleanly; it
    /// follows as soon as the new primary answers behind the `-rw` Service.
    #[serde(default)]
    pub following: bool,
    /// Where the shutdown checkpoint starts, when this call stopped a
    /// primary: the new primary must have received WAL up to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shutdown_checkpoint: Option<String>,
}

/// Error body of every endpoint.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ApiError {
    pub error: String,
}

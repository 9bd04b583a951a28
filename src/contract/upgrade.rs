//! What the operator and the instance managers agree on for a major
//! upgrade: the `majorUpgrade` block of `instance.json`, and what the
//! upgrading primary reports. pg_upgrade does the work.

use serde::{Deserialize, Serialize};

/// `instance.json` → `majorUpgrade`: present while the operator upgrades
/// the cluster from `fromVersion` to `InstanceSettings::postgres_version`.
/// The named primary upgrades its data directory with the old major's
/// binaries under [`super::layout::OLD_POSTGRES_DIR`]; a replica with data
/// of the old major clones the upgraded primary again.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct MajorUpgradeSettings {
    pub from_version: u32,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpgradePhase {
    /// pg_upgrade runs (`--check`, then `--link`).
    Upgrading,
    /// pg_upgrade refused; the old data directory is as it was.
    Refused,
    /// The upgraded server runs; statistics are being rebuilt.
    Analyzing,
    Completed,
}

/// `InstanceReport::upgrade`, on the instance that upgrades.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct UpgradeReport {
    pub phase: UpgradePhase,
    pub from_version: u32,
    pub to_version: u32,
    /// pg_upgrade's (or vacuumdb's) own words when it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// How long pg_upgrade (check, link and swap) took.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgrade_ms: Option<u64>,
}

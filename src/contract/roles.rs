//! Roles and databases the primary's instance manager keeps
//! (`spec.roles`, `spec.databases`), and what it reports of each.
//!
//! Passwords are not in the settings ConfigMap: the operator copies them
//! into the `<name>-roles` Secret, one key per role, which the manager reads.

use serde::{Deserialize, Serialize};

/// A role to keep, or to drop (`present: false`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RoleSettings {
    pub name: String,
    pub present: bool,
    pub login: bool,
    pub create_db: bool,
    pub connection_limit: i32,
    #[serde(default)]
    pub in_roles: Vec<String>,
    /// Where the password comes from, `<secret>/<key>` (for messages); the
    /// value is the role's key in `<name>-roles`. None: no password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_from: Option<String>,
}

/// A database to keep, or to drop.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseSettings {
    pub name: String,
    pub owner: String,
    pub present: bool,
    /// `ensure: absent` with `confirmDrop`: drop it. Absent without it is
    /// only reported.
    #[serde(default)]
    pub drop: bool,
    #[serde(default)]
    pub extensions: Vec<String>,
}

/// What became of one entry on the last pass.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct EntryReport {
    pub name: String,
    pub state: EntryState,
    /// What was done, or PostgreSQL's error.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryState {
    /// Exists as the entry says (or is gone, for `absent`).
    Applied,
    /// `ensure: absent` on a database without `confirmDrop`: kept.
    Kept,
    /// Could not be applied; the message says why.
    Failed,
}

/// The primary's last pass over `spec.roles` and `spec.databases`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ManagedReport {
    #[serde(default)]
    pub roles: Vec<EntryReport>,
    #[serde(default)]
    pub databases: Vec<EntryReport>,
}

//! Roles and databases the instance manager keeps on the primary
//! (`spec.roles[]`, `spec.databases[]`).
//!
//! Declarative but never destructive by omission: an entry removed from the
//! list is left as it is in PostgreSQL. Only `ensure: absent` drops, and a
//! database (with its data) only when `confirmDrop` repeats its name.

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::backup::SecretKeyRef;
use super::{limits, rules};

/// Whether an entry should exist.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Ensure {
    /// Created when missing, then kept as the entry says.
    #[default]
    Present,
    /// Dropped when present.
    Absent,
}

/// A PostgreSQL role.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RoleSpec {
    /// Role name: a lowercase SQL identifier, not `pg_*` and not a role
    /// Capstan manages (`postgres`, `streaming_replica`, `capstan_pooler`,
    /// the bootstrap owner).
    #[schemars(length(min = 1, max = limits::SQL_IDENTIFIER_MAX))]
    #[x_kube(validation = rules::role_name("spec.roles[].name"))]
    pub name: String,

    /// `present` (default) creates and keeps the role; `absent` drops it
    /// (PostgreSQL refuses while it owns objects; the status says so).
    #[serde(default)]
    pub ensure: Ensure,

    /// The role may log in (default true).
    #[serde(default = "default_true")]
    pub login: bool,

    /// The role may create databases.
    #[serde(default)]
    pub create_db: bool,

    /// Concurrent connections the role may hold; -1 (default) is no limit.
    #[serde(default = "default_connection_limit")]
    #[x_kube(validation = rules::connection_limit())]
    pub connection_limit: i32,

    /// Roles this role is a member of, exactly: memberships not listed are
    /// revoked. `pg_*` roles (e.g. `pg_read_all_data`) may be listed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = limits::ROLE_MEMBERSHIPS_MAX), inner(length(max = limits::SQL_IDENTIFIER_MAX)))]
    #[x_kube(validation = rules::member_of())]
    pub in_roles: Vec<String>,

    /// The Secret key holding the role's password, kept in sync (a changed
    /// value is applied without a restart). None: the role has no password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret: Option<SecretKeyRef>,
}

/// A PostgreSQL database.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = rules::confirm_drop_repeats_name())]
pub struct DatabaseSpec {
    /// Database name: a lowercase SQL identifier, not `postgres`,
    /// `template0` or `template1`.
    #[schemars(length(min = 1, max = limits::SQL_IDENTIFIER_MAX))]
    #[x_kube(validation = rules::sql_identifier("spec.databases[].name"))]
    pub name: String,

    /// Owner role (one of `spec.roles` or an existing role).
    #[schemars(length(min = 1, max = limits::SQL_IDENTIFIER_MAX))]
    #[x_kube(validation = rules::sql_identifier("spec.databases[].owner"))]
    pub owner: String,

    /// `present` (default) creates the database and keeps its owner;
    /// `absent` drops it, but only with `confirmDrop`.
    #[serde(default)]
    pub ensure: Ensure,

    /// The second switch for `ensure: absent`: the database's name again.
    /// Without it an absent database is reported, never dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirm_drop: Option<String>,

    /// Extensions created in the database when missing (the image must
    /// ship them). Removing one from the list drops nothing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = limits::DATABASE_EXTENSIONS_MAX), inner(length(max = limits::SQL_IDENTIFIER_MAX)))]
    #[x_kube(validation = rules::extension_names())]
    pub extensions: Vec<String>,
}

fn default_true() -> bool {
    true
}

fn default_connection_limit() -> i32 {
    -1
}

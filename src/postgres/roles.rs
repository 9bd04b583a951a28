//! Role names Capstan creates and reserves in every cluster.

/// Superuser; its password is in the `<name>-superuser` Secret.
pub const SUPERUSER: &str = "postgres";
/// Streaming replication and `pg_rewind`; authenticates by client certificate.
pub const REPLICATION: &str = "streaming_replica";
/// PgBouncer's `auth_user`: may only call the password lookup function.
pub const POOLER: &str = "capstan_pooler";

//! Ports, mount paths and environment variables inside Capstan's pods.
//!
//! Every listener binds the pod IP (`POD_IP`), never a wildcard, and local
//! connections use Unix sockets: that works in a real pod and on the e2e
//! harness, where pods share the host's network stack on their own loopback
//! addresses.

/// PostgreSQL, in instance pods; also the port of the `-rw`/`-ro`/`-r` Services.
pub const POSTGRES_PORT: u16 = 5432;
/// PgBouncer, in pooler pods; the `-pooler` Service also serves it on 5432.
pub const POOLER_PORT: u16 = 5432;
/// The agent's HTTPS API (status, health, metrics, commands) in every pod.
pub const AGENT_PORT: u16 = 8000;
/// pgBackRest's TLS server on instance pods (its default port): standbys
/// taking a backup (`spec.backup.target: preferReplica`) reach the
/// primary's part of it here.
pub const BACKREST_TLS_PORT: u16 = 8432;

/// emptyDir the init container copies the `capstan` binary into.
pub const BIN_DIR: &str = "/capstan/bin";
/// The `capstan` binary as the agents run it.
pub const BINARY: &str = "/capstan/bin/capstan";
/// Where the `capstan` binary lives in the operator image.
pub const IMAGE_BINARY: &str = "/usr/local/bin/capstan";

/// Mount point of an instance's data volume (PVC `<pod>`).
pub const DATA_MOUNT: &str = "/var/lib/postgresql/data";
/// `PGDATA`: a subdirectory, so `lost+found` on a fresh filesystem is not in it.
pub const PGDATA: &str = "/var/lib/postgresql/data/pgdata";
/// Mount point of an instance's WAL volume (PVC `<pod>-wal`), when configured.
pub const WAL_MOUNT: &str = "/var/lib/postgresql/wal";
/// `pg_wal` directory on the WAL volume.
pub const WAL_DIR: &str = "/var/lib/postgresql/wal/pg_wal";
/// emptyDir for Unix sockets and lock files.
pub const RUN_DIR: &str = "/var/run/postgresql";
/// emptyDir for scratch files (the root filesystem is read-only).
pub const TMP_DIR: &str = "/tmp";

/// ConfigMap `<name>-config`, mounted in instance and pooler pods.
pub const CONFIG_DIR: &str = "/etc/capstan/config";
/// Password Secrets, one directory each with `username` and `password` files:
/// `superuser/`, `app/` (also `dbname`), `pooler/`.
pub const SECRETS_DIR: &str = "/etc/capstan/secrets";
/// TLS material, one directory each with `tls.crt`, `tls.key` and `ca.crt`
/// (the CA that signed it): `server/` (PostgreSQL's server certificate),
/// `replication/` (client certificate `streaming_replica`), `pooler/`
/// (PgBouncer's server certificate), `agent/` (the agent HTTPS API's server
/// certificate; its `ca.crt` is the CA that signs the operator's client
/// certificate, so agents verify the operator with it), `pgbackrest/`
/// (pgBackRest's TLS server and client certificate, with backups from a
/// replica).
pub const TLS_DIR: &str = "/etc/capstan/tls";
/// pgBackRest's certificate ([`mounts::BACKREST_TLS`] under [`TLS_DIR`]).
pub const BACKREST_TLS_DIR: &str = "/etc/capstan/tls/pgbackrest";
/// Backup repository credentials, one directory per repository
/// (`repo1/`, …), mounted from the Secrets `spec.backup` names.
pub const BACKUP_SECRETS_DIR: &str = "/etc/capstan/backup";
/// Credentials of the repository a new cluster is restored from
/// (`spec.bootstrap.restore.source.repository`), files named as under
/// [`BACKUP_SECRETS_DIR`].
pub const RESTORE_SECRETS_DIR: &str = "/etc/capstan/restore";
/// pgBackRest's configuration, logs, locks and async spool (pod-local).
pub const BACKREST_DIR: &str = "/var/run/postgresql/pgbackrest";

/// Scratch emptyDir of a verification pod: the restored copy lives here.
pub const VERIFY_MOUNT: &str = "/var/lib/postgresql/verify";
/// The directory `capstan verify` restores into (created and removed by it).
pub const VERIFY_SCRATCH: &str = "/var/lib/postgresql/verify/restore";
/// Scratch emptyDir of a major upgrade's check pod: the primary's copy
/// that pg_upgrade is rehearsed on.
pub const UPGRADE_CHECK_SCRATCH: &str = "/var/lib/postgresql/upgrade-check";
/// Where a verification pod leaves its result (the Kubernetes default
/// `terminationMessagePath`).
pub const TERMINATION_LOG: &str = "/dev/termination-log";

/// emptyDir an init container of the old image copies that major's
/// PostgreSQL installation into, during a major upgrade: the same paths
/// under it as in the image (`usr/lib/postgresql/<major>`,
/// `usr/share/postgresql/<major>`), so the binaries find their files.
pub const OLD_POSTGRES_DIR: &str = "/capstan/old-postgres";

/// Where the first instance of a cluster restored from a volume repository
/// mounts the source's claim (read-only).
pub const RESTORE_VOLUME_DIR: &str = "/var/lib/pgbackrest-source";

/// emptyDir of the repository host: its pgbackrest.conf, logs and locks.
pub const REPO_HOST_RUN_DIR: &str = "/var/run/pgbackrest";
/// Where the repository host mounts volume repository `repoN`
/// (`<REPO_HOST_DIR>/repoN`), which is also the repository's path.
pub const REPO_HOST_DIR: &str = "/var/lib/pgbackrest";

/// emptyDir in pooler pods for the rendered `pgbouncer.ini`, auth files and socket.
pub const POOLER_RUN_DIR: &str = "/var/run/pgbouncer";

/// Sub-directories of [`SECRETS_DIR`] and [`TLS_DIR`].
pub mod mounts {
    pub const SUPERUSER: &str = "superuser";
    pub const APP: &str = "app";
    pub const POOLER: &str = "pooler";
    /// `spec.roles` passwords when not read from the API (local runs).
    pub const ROLES: &str = "roles";
    pub const SERVER_TLS: &str = "server";
    pub const REPLICATION_TLS: &str = "replication";
    pub const POOLER_TLS: &str = "pooler";
    pub const AGENT_TLS: &str = "agent";
    /// pgBackRest's TLS server and client certificate (`preferReplica`).
    pub const BACKREST_TLS: &str = "pgbackrest";
}

/// File names inside mounted Secrets and the ConfigMap.
pub mod files {
    pub const USERNAME: &str = "username";
    pub const PASSWORD: &str = "password";
    pub const DBNAME: &str = "dbname";
    pub const TLS_CRT: &str = "tls.crt";
    pub const TLS_KEY: &str = "tls.key";
    pub const CA_CRT: &str = "ca.crt";
    pub const CA_KEY: &str = "ca.key";
    /// The next CA while a CA is replaced (`<name>-ca-key` only).
    pub const NEXT_CA_CRT: &str = "next.crt";
    pub const NEXT_CA_KEY: &str = "next.key";
    /// The replaced CA, trusted until it expires (`<name>-ca-key` only).
    pub const PREVIOUS_CA_CRT: &str = "previous.crt";
    /// ConfigMap key read by instance managers ([`super::super::settings::InstanceSettings`]).
    pub const INSTANCE_SETTINGS: &str = "instance.json";
    /// ConfigMap key read by pooler supervisors ([`super::super::settings::PoolerSettings`]).
    pub const POOLER_SETTINGS: &str = "pooler.json";
}

/// Environment variables set on agent containers.
pub mod env {
    /// Downward API `metadata.name`.
    pub const POD_NAME: &str = "POD_NAME";
    /// Downward API `metadata.namespace`.
    pub const POD_NAMESPACE: &str = "POD_NAMESPACE";
    /// Downward API `status.podIP`: the address every listener binds.
    pub const POD_IP: &str = "POD_IP";
    /// Name of the `PostgresCluster`.
    pub const CLUSTER_NAME: &str = "CLUSTER_NAME";
    /// Seconds the agent may spend shutting down after SIGTERM (a little
    /// less than the pod's `terminationGracePeriodSeconds`).
    pub const SHUTDOWN_SECONDS: &str = "CAPSTAN_SHUTDOWN_SECONDS";
    /// `json` or `text`.
    pub const LOG_FORMAT: &str = "CAPSTAN_LOG_FORMAT";
}

/// Pod `terminationGracePeriodSeconds` for instance pods; a primary's clean
/// shutdown includes a checkpoint.
pub const INSTANCE_GRACE_SECONDS: i64 = 60;
/// What the instance manager is told it may use of that grace period.
pub const INSTANCE_SHUTDOWN_SECONDS: i64 = 50;
/// Pod `terminationGracePeriodSeconds` for pooler pods.
pub const POOLER_GRACE_SECONDS: i64 = 40;
/// What the pooler supervisor may use to drain clients.
pub const POOLER_SHUTDOWN_SECONDS: i64 = 30;

/// Common name of the operator's client certificate; the agents' command
/// endpoints accept only this identity, signed by the cluster CA.
pub const OPERATOR_CLIENT_CN: &str = "capstan-operator";

/// UID/GID of the `postgres` user in the official Debian-based images.
pub const POSTGRES_UID: i64 = 999;
/// UID/GID PgBouncer runs as in pooler pods.
pub const POOLER_UID: i64 = 998;

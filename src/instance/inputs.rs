//! What the instance manager is told: identity from the Downward API, paths
//! and ports from flags (with environment fallbacks, defaulting to the pod
//! layout), so the same binary runs in a pod and in a test on 127.0.0.1.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::agents::tls::TlsFiles;
use crate::contract::layout::{self, env, files, mounts};

use super::authority::AuthoritySpec;
use super::lease::LeaseStoreSpec;

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Pod name (Downward API `metadata.name`).
    #[arg(long, env = env::POD_NAME)]
    pub pod_name: String,
    /// Namespace of the pod and its cluster.
    #[arg(long, env = env::POD_NAMESPACE)]
    pub namespace: String,
    /// Name of the `PostgresCluster`.
    #[arg(long, env = env::CLUSTER_NAME)]
    pub cluster_name: String,
    /// Pod IP (Downward API `status.podIP`).
    #[arg(long, env = env::POD_IP)]
    pub pod_ip: String,
    /// Address PostgreSQL and the API listen on [default: the pod IP].
    #[arg(long, env = "CAPSTAN_LISTEN_ADDRESS")]
    pub listen_address: Option<String>,
    /// PostgreSQL data directory. Not `$PGDATA`: the official images set it
    /// to the volume's mount point, which may hold `lost+found`.
    #[arg(long, env = "CAPSTAN_PGDATA", default_value = layout::PGDATA)]
    pub data_dir: PathBuf,
    /// `pg_wal` on its own volume, used when the settings say `separateWal`.
    #[arg(long, env = "CAPSTAN_WAL_DIR", default_value = layout::WAL_DIR)]
    pub wal_dir: PathBuf,
    /// Directory of the mounted ConfigMap (holds `instance.json`).
    #[arg(long, env = "CAPSTAN_CONFIG_DIR", default_value = layout::CONFIG_DIR)]
    pub config_dir: PathBuf,
    /// Directory of the mounted password Secrets (`superuser/`, `app/`, `pooler/`).
    #[arg(long, env = "CAPSTAN_SECRETS_DIR", default_value = layout::SECRETS_DIR)]
    pub secrets_dir: PathBuf,
    /// Directory of the mounted TLS Secrets (`server/`, `replication/`).
    #[arg(long, env = "CAPSTAN_TLS_DIR", default_value = layout::TLS_DIR)]
    pub tls_dir: PathBuf,
    /// Unix socket directory.
    #[arg(long, env = "CAPSTAN_RUN_DIR", default_value = layout::RUN_DIR)]
    pub run_dir: PathBuf,
    #[arg(long, env = "CAPSTAN_POSTGRES_PORT", default_value_t = layout::POSTGRES_PORT)]
    pub postgres_port: u16,
    #[arg(long, env = "CAPSTAN_API_PORT", default_value_t = layout::AGENT_PORT)]
    pub api_port: u16,
    /// Directory of `postgres`, `initdb`, … [default: `postgres` on PATH,
    /// else /usr/lib/postgresql/<version>/bin].
    #[arg(long, env = "CAPSTAN_PG_BIN_DIR")]
    pub pg_bin_dir: Option<PathBuf>,
    /// The old major's installation during a major upgrade (the pod layout
    /// copies it from the old image).
    #[arg(long, env = "CAPSTAN_OLD_POSTGRES_DIR", default_value = layout::OLD_POSTGRES_DIR)]
    pub old_postgres_dir: PathBuf,
    /// pgBackRest, used when the settings configure backups [default:
    /// `pgbackrest` next to the PostgreSQL binaries, else on PATH].
    #[arg(long, env = "CAPSTAN_PGBACKREST")]
    pub pgbackrest: Option<PathBuf>,
    /// pgBackRest's configuration, logs, locks and async spool.
    #[arg(long, env = "CAPSTAN_BACKREST_DIR", default_value = layout::BACKREST_DIR)]
    pub backrest_dir: PathBuf,
    /// Where the role decision comes from: `kube` (status.targetPrimary of the
    /// PostgresCluster) or `file:<path>` (a file holding the target pod name).
    #[arg(long, env = "CAPSTAN_AUTHORITY", default_value = "kube")]
    pub authority: AuthoritySpec,
    /// Where the primary Lease lives when the settings configure fencing:
    /// `kube` (a coordination.k8s.io Lease in the pod's namespace) or
    /// `file:<dir>` (JSON files standing in for Leases; tests and local runs).
    #[arg(long, env = "CAPSTAN_LEASE", default_value = "kube")]
    pub lease: LeaseStoreSpec,
    /// Seconds the manager may spend shutting down after SIGTERM.
    #[arg(long, env = env::SHUTDOWN_SECONDS, default_value_t = layout::INSTANCE_SHUTDOWN_SECONDS as u64)]
    pub shutdown_seconds: u64,
    /// A replica is ready while it is streaming and at most this many bytes
    /// behind what the primary last reported.
    #[arg(long, env = "CAPSTAN_READY_MAX_LAG_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub ready_max_lag_bytes: u64,
    /// `json` or `text`.
    #[arg(long, env = env::LOG_FORMAT, default_value = "json")]
    pub log_format: String,
}

/// Resolved paths and knobs, shared read-only by every part of the manager.
#[derive(Debug, Clone)]
pub struct Inputs {
    pub pod: String,
    pub namespace: String,
    pub cluster: String,
    pub listen_address: String,
    pub data_dir: PathBuf,
    pub wal_dir: PathBuf,
    pub config_dir: PathBuf,
    pub secrets_dir: PathBuf,
    pub tls_dir: PathBuf,
    pub run_dir: PathBuf,
    pub postgres_port: u16,
    pub api_port: u16,
    pub pg_bin_dir: Option<PathBuf>,
    pub old_postgres_dir: PathBuf,
    /// pgBackRest as configured or found; checked when backups are on.
    pub pgbackrest: PathBuf,
    pub backrest_dir: PathBuf,
    pub shutdown_budget: Duration,
    pub ready_max_lag_bytes: u64,
}

impl Inputs {
    pub fn from_args(args: &Args) -> Self {
        Self {
            pod: args.pod_name.clone(),
            namespace: args.namespace.clone(),
            cluster: args.cluster_name.clone(),
            listen_address: args
                .listen_address
                .clone()
                .unwrap_or_else(|| args.pod_ip.clone()),
            data_dir: args.data_dir.clone(),
            wal_dir: args.wal_dir.clone(),
            config_dir: args.config_dir.clone(),
            secrets_dir: args.secrets_dir.clone(),
            tls_dir: args.tls_dir.clone(),
            run_dir: args.run_dir.clone(),
            postgres_port: args.postgres_port,
            api_port: args.api_port,
            pg_bin_dir: args.pg_bin_dir.clone(),
            old_postgres_dir: args.old_postgres_dir.clone(),
            pgbackrest: super::binaries::pgbackrest_path(
                args.pgbackrest.as_deref(),
                args.pg_bin_dir.as_deref(),
            ),
            backrest_dir: args.backrest_dir.clone(),
            shutdown_budget: Duration::from_secs(args.shutdown_seconds),
            ready_max_lag_bytes: args.ready_max_lag_bytes,
        }
    }

    pub fn settings_file(&self) -> PathBuf {
        self.config_dir.join(files::INSTANCE_SETTINGS)
    }

    /// The data volume: PGDATA's parent. Bootstrap works in siblings of
    /// PGDATA there, so the final rename stays on one filesystem.
    pub fn data_volume(&self) -> &Path {
        self.data_dir.parent().unwrap_or(Path::new("/"))
    }

    pub fn server_tls(&self) -> TlsFiles {
        TlsFiles::new(self.tls_dir.join(mounts::SERVER_TLS))
    }

    /// Certificate of the HTTPS API; its `ca.crt` signs the operator's client
    /// certificate.
    pub fn agent_tls(&self) -> TlsFiles {
        TlsFiles::new(self.tls_dir.join(mounts::AGENT_TLS))
    }

    pub fn replication_tls(&self) -> TlsFiles {
        TlsFiles::new(self.tls_dir.join(mounts::REPLICATION_TLS))
    }

    /// pgBackRest's TLS server and client certificate (backups from a
    /// standby).
    pub fn backrest_tls(&self) -> TlsFiles {
        TlsFiles::new(self.tls_dir.join(mounts::BACKREST_TLS))
    }

    pub fn secret_dir(&self, name: &str) -> PathBuf {
        self.secrets_dir.join(name)
    }

    /// `pgbackrest.conf`, which PostgreSQL's archive and restore commands name.
    pub fn backrest_config(&self) -> PathBuf {
        self.backrest_dir.join("pgbackrest.conf")
    }

    /// Replication slot this instance streams through on the primary.
    pub fn slot_name(&self) -> String {
        slot_name(&self.pod)
    }
}

/// Slot name for a pod: `db-2` → `db_2` (slot names allow only lower-case
/// letters, digits and `_`).
pub fn slot_name(pod: &str) -> String {
    pod.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_names_follow_pod_names() {
        assert_eq!(slot_name("db-2"), "db_2");
        assert_eq!(slot_name("My-db-10"), "my_db_10");
        assert_eq!(slot_name("a.b"), "a_b");
    }
}

//! `capstan repo-host`: PID 1 of a cluster's repository host, the one pod
//! that mounts its volume repositories. It runs pgBackRest's TLS server and
//! nothing else: since pgBackRest 2.55 a database host can back up to a
//! remote repository, so the instances archive, back up, expire and
//! restore through this server exactly as they do with an object store,
//! and the volume needs a single ReadWriteOnce mount.
//!
//! The server reads its configuration and certificate at start; a rotated
//! certificate restarts it, and so does its exit (after a short pause).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio::signal::unix::{SignalKind, signal};

use crate::agents::pid1::{self, Tracked};
use crate::agents::tls::TlsFiles;
use crate::backup::config::{self as backrest, TlsServer};
use crate::contract::layout;
use crate::instance::binaries;
use crate::resources::names;

const RESTART_AFTER: Duration = Duration::from_secs(5);

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// The cluster whose stanza this host serves (and whose `-rw`
    /// certificate its clients present).
    #[arg(long, env = layout::env::CLUSTER_NAME)]
    pub cluster: String,
    /// Address the server binds (the pod IP).
    #[arg(long, env = layout::env::POD_IP)]
    pub listen: String,
    #[arg(long, default_value_t = layout::BACKREST_TLS_PORT)]
    pub port: u16,
    /// The cluster's pgBackRest certificate (tls.crt, tls.key, ca.crt).
    #[arg(long, default_value = layout::BACKREST_TLS_DIR)]
    pub tls_dir: PathBuf,
    /// pgbackrest.conf, logs and locks (pod-local).
    #[arg(long, default_value = layout::REPO_HOST_RUN_DIR)]
    pub run_dir: PathBuf,
    #[arg(long, env = "CAPSTAN_PGBACKREST")]
    pub pgbackrest: Option<PathBuf>,
    /// How often the server and its certificate are checked.
    #[arg(long, default_value_t = 2000)]
    pub poll_ms: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum RepoHostError {
    #[error(transparent)]
    Binaries(#[from] binaries::BinariesError),
    #[error(transparent)]
    Config(#[from] backrest::ConfigError),
    #[error("{0}")]
    Io(String),
}

/// Runs until SIGTERM or SIGINT.
pub fn run(args: Args) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    runtime.block_on(serve(args)).map_err(|e| e.to_string())
}

/// The server's settings for this cluster.
pub fn server(args: &Args) -> TlsServer {
    let tls = TlsFiles::new(args.tls_dir.clone());
    TlsServer {
        address: args.listen.clone(),
        port: args.port,
        cert_file: tls.cert,
        key_file: tls.key,
        ca_file: tls.ca,
        client_name: names::rw_service(&args.cluster),
    }
}

/// Writes pgbackrest.conf under `run_dir`; its path.
pub fn write_config(args: &Args) -> Result<PathBuf, RepoHostError> {
    let log = args.run_dir.join("log");
    let lock = args.run_dir.join("lock");
    for dir in [&log, &lock] {
        std::fs::create_dir_all(dir)
            .map_err(|e| RepoHostError::Io(format!("cannot create {}: {e}", dir.display())))?;
    }
    let text = backrest::render_repo_host(&server(args), &args.cluster, &log, &lock)?;
    let path = args.run_dir.join("pgbackrest.conf");
    backrest::write(&path, &text, None)?;
    Ok(path)
}

async fn serve(args: Args) -> Result<(), RepoHostError> {
    pid1::start_reaping();
    let tool = binaries::pgbackrest_path(args.pgbackrest.as_deref(), None);
    let version = binaries::check_pgbackrest(&tool).await?;
    let config = write_config(&args)?;
    tracing::info!(cluster = %args.cluster, pgbackrest = %version, listen = %args.listen, port = args.port, "repository host starting");
    let mut term = signal(SignalKind::terminate()).map_err(|e| RepoHostError::Io(e.to_string()))?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| RepoHostError::Io(e.to_string()))?;
    let tls = TlsFiles::new(args.tls_dir.clone());
    let poll = Duration::from_millis(args.poll_ms.max(100));
    let mut child: Option<Tracked> = None;
    let mut stamp = tls.stamp();
    let mut started: Option<Instant> = None;
    loop {
        if let Some(c) = child.as_mut()
            && let Ok(Some(status)) = c.child.try_wait()
        {
            tracing::warn!(%status, "pgBackRest's TLS server exited; restarting it");
            child = None;
        }
        let now = tls.stamp();
        if now != stamp && child.take().is_some() {
            tracing::info!("certificate rotated: pgBackRest's TLS server restarts");
        }
        stamp = now;
        if child.is_none() && started.is_none_or(|t| t.elapsed() >= RESTART_AFTER) {
            match crate::backup::server::spawn(&tool, &config, None) {
                Ok(c) => {
                    tracing::info!(pid = c.pid(), "pgBackRest's TLS server started");
                    child = Some(c);
                }
                Err(e) => tracing::error!(error = %e, "cannot start pgBackRest's TLS server"),
            }
            started = Some(Instant::now());
        }
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            () = tokio::time::sleep(poll) => {}
        }
    }
    // Dropping the child kills it (kill_on_drop): a server holds no state.
    drop(child);
    tracing::info!("repository host stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_serves_the_clusters_stanza_to_its_rw_certificate_only() {
        let dir = tempfile::tempdir().unwrap();
        let args = Args {
            cluster: "db".into(),
            listen: "10.0.0.9".into(),
            port: 8432,
            tls_dir: "/etc/capstan/tls/pgbackrest".into(),
            run_dir: dir.path().to_path_buf(),
            pgbackrest: None,
            poll_ms: 2000,
        };
        let path = write_config(&args).unwrap();
        let text = std::fs::read_to_string(path).unwrap();
        for line in [
            "tls-server-address=10.0.0.9",
            "tls-server-port=8432",
            "tls-server-cert-file=/etc/capstan/tls/pgbackrest/tls.crt",
            "tls-server-ca-file=/etc/capstan/tls/pgbackrest/ca.crt",
            "tls-server-auth=db-rw=db",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
        // Clients send the repository options; the host keeps none.
        assert!(!text.contains("repo1"), "{text}");
    }
}

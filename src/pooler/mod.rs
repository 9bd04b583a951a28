//! The proxy tier: `capstan pooler` (PID 1 of PgBouncer pods) and the
//! client-side switchover primitive the operator calls.

pub mod admin;
pub mod api;
pub mod client;
pub mod config;
pub mod managed;
pub mod metrics;
pub mod process;
pub mod shared;
pub mod supervisor;
pub mod switchover;

use std::path::PathBuf;
use std::time::Duration;

use crate::contract::layout;

/// `capstan pooler`. Every flag has an environment variable so the pod
/// spec sets it; the defaults are the pod layout ([`layout`]).
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Pod name, reported by `/status`.
    #[arg(long, env = layout::env::POD_NAME, default_value = "pooler")]
    pub name: String,
    /// Address PgBouncer and the API listen on (the pod IP).
    #[arg(long, env = layout::env::POD_IP)]
    pub listen_addr: String,
    /// PgBouncer's port.
    #[arg(long, env = "CAPSTAN_POOLER_PORT", default_value_t = layout::POOLER_PORT)]
    pub port: u16,
    /// Port of the HTTPS API.
    #[arg(long, env = "CAPSTAN_API_PORT", default_value_t = layout::AGENT_PORT)]
    pub api_port: u16,
    /// The settings document (ConfigMap key pooler.json).
    #[arg(
        long,
        env = "CAPSTAN_POOLER_SETTINGS",
        default_value = "/etc/capstan/config/pooler.json"
    )]
    pub settings: PathBuf,
    /// Directory for pgbouncer.ini, the auth file and the admin socket.
    #[arg(long, env = "CAPSTAN_POOLER_RUN_DIR", default_value = layout::POOLER_RUN_DIR)]
    pub run_dir: PathBuf,
    /// The pooler's TLS Secret (tls.crt, tls.key, ca.crt).
    #[arg(
        long,
        env = "CAPSTAN_POOLER_TLS_DIR",
        default_value = "/etc/capstan/tls/pooler"
    )]
    pub tls_dir: PathBuf,
    /// The HTTPS API's certificate (tls.crt, tls.key) and the CA that signs
    /// the operator's client certificate (ca.crt).
    #[arg(
        long,
        env = "CAPSTAN_API_TLS_DIR",
        default_value = "/etc/capstan/tls/agent"
    )]
    pub api_tls_dir: PathBuf,
    /// The pooler role's Secret (username, password).
    #[arg(
        long,
        env = "CAPSTAN_POOLER_SECRETS_DIR",
        default_value = "/etc/capstan/secrets/pooler"
    )]
    pub secrets_dir: PathBuf,
    /// The pgbouncer executable.
    #[arg(long, env = "CAPSTAN_PGBOUNCER", default_value = "pgbouncer")]
    pub pgbouncer: PathBuf,
    /// Run PgBouncer as this user (needed only when the supervisor runs as
    /// root; PgBouncer refuses to run as root).
    #[arg(long, env = "CAPSTAN_POOLER_RUN_AS")]
    pub run_as: Option<String>,
    /// How often the settings, Secret and certificate files are checked.
    #[arg(long, env = "CAPSTAN_POOLER_POLL_MS", default_value_t = 2000)]
    pub poll_ms: u64,
    /// Seconds to drain PgBouncer after SIGTERM.
    #[arg(long, env = layout::env::SHUTDOWN_SECONDS, default_value_t = layout::POOLER_SHUTDOWN_SECONDS as u64)]
    pub shutdown_seconds: u64,
}

/// Runs `capstan pooler` until SIGTERM.
pub fn run(args: Args) -> Result<(), String> {
    init_logging();
    // Before any thread exists: it edits the environment.
    let handover: Option<supervisor::Handover> = crate::agents::binary::take_handover();
    let options = supervisor::Options {
        name: args.name,
        settings_path: args.settings,
        run_dir: args.run_dir,
        tls_dir: args.tls_dir,
        api_tls_dir: args.api_tls_dir,
        secrets_dir: args.secrets_dir,
        listen_addr: args.listen_addr,
        listen_port: args.port,
        api_port: args.api_port,
        pgbouncer: args.pgbouncer,
        run_as: args.run_as,
        poll_interval: Duration::from_millis(args.poll_ms.max(100)),
        shutdown_timeout: Duration::from_secs(args.shutdown_seconds),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    runtime
        .block_on(supervisor::run(options, handover))
        .map_err(|e| e.to_string())
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let json = std::env::var(layout::env::LOG_FORMAT).is_ok_and(|v| v == "json");
    // Another subscriber (tests) may already be installed; keep it.
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

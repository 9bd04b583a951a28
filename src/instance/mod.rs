//! `capstan instance`: the instance manager, PID 1 of every PostgreSQL pod.
//!
//! It runs `postgres` as its child and is the only thing that touches the
//! data directory: bootstrap (initdb, clone, or restore from a backup),
//! configuration, supervision, role changes decided by the cluster's
//! authority (`status.targetPrimary`), and an HTTPS API for probes, metrics
//! and the operator.
//!
//! The loop is `manager` (one module per lifecycle, pure decisions next
//! to their steps); the primary Lease and self-fencing are [`fencing`]; the
//! HTTPS serving, TLS and PID 1 duties it shares with the pooler are in
//! [`crate::agents`].

mod api;
pub mod authority;
mod backup;
pub mod binaries;
mod bootstrap;
mod config;
pub mod fencing;
mod identity;
mod inputs;
pub mod lease;
mod local;
mod manager;
mod metrics;
pub(crate) mod process;
mod remote;
mod restore;
mod secrets;
mod settings;
mod state;
mod supervisor;
mod upgrade;

use std::sync::Arc;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, watch};
use tracing::Instrument;

pub use inputs::Args;

#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot listen for signals: {0}")]
    Signals(std::io::Error),
    #[error(transparent)]
    Authority(#[from] authority::AuthorityError),
    #[error(transparent)]
    Api(#[from] api::ApiServeError),
}

/// Entry point of `capstan instance`.
pub fn run(args: Args) -> Result<(), InstanceError> {
    init_logging(&args.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(InstanceError::Runtime)?;
    let span = tracing::info_span!(
        "instance",
        cluster = %args.cluster_name,
        namespace = %args.namespace,
        instance = %args.pod_name
    );
    runtime.block_on(run_async(args).instrument(span))
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()));
    let _ = if format == "text" {
        builder.try_init()
    } else {
        builder
            .json()
            .flatten_event(true)
            .with_span_list(false)
            .try_init()
    };
}

async fn run_async(args: Args) -> Result<(), InstanceError> {
    crate::agents::pid1::start_reaping();
    let inputs = inputs::Inputs::from_args(&args);
    tracing::info!(
        pgdata = %inputs.data_dir.display(),
        listen = %inputs.listen_address,
        port = inputs.postgres_port,
        api_port = inputs.api_port,
        authority = ?args.authority,
        lease = ?args.lease,
        "instance manager starting"
    );
    let authority =
        authority::AuthoritySource::from_spec(&args.authority, &inputs.namespace, &inputs.cluster)
            .await?;

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let shutdown_tx = Arc::new(shutdown_tx);
    let mut sigterm = signal(SignalKind::terminate()).map_err(InstanceError::Signals)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(InstanceError::Signals)?;
    let on_signal = shutdown_tx.clone();
    tokio::spawn(
        async move {
            tokio::select! {
                _ = sigterm.recv() => tracing::info!("SIGTERM received"),
                _ = sigint.recv() => tracing::info!("SIGINT received"),
            }
            let _ = on_signal.send(true);
        }
        .in_current_span(),
    );

    let (commands_tx, commands_rx) = mpsc::channel(8);
    let shared = Arc::new(state::Shared::new(inputs, commands_tx));
    let store = lease::LeaseSource::new(&args.lease, &args.namespace, &args.pod_name);
    let lease = fencing::LeaseHandle::spawn(store, &args.pod_name, shared.lease.clone());
    let mut api = tokio::spawn(api::serve(shared.clone(), shutdown_rx.clone()).in_current_span());
    let manager = manager::Manager::new(shared, authority, lease);
    let mut managed = tokio::spawn(manager.run(commands_rx, shutdown_rx).in_current_span());
    tokio::select! {
        served = &mut api => {
            // The API ends early only when it cannot listen: stop everything.
            let _ = shutdown_tx.send(true);
            let _ = managed.await;
            if let Ok(Err(e)) = served {
                return Err(e.into());
            }
        }
        _ = &mut managed => api.abort(),
    }
    tracing::info!("instance manager stopped");
    Ok(())
}

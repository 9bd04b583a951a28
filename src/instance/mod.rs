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
mod managed;
mod manager;
pub mod metrics;
pub(crate) mod process;
mod remote;
mod restore;
mod secrets;
mod settings;
mod state;
mod supervisor;
mod upgrade;
pub mod upgrade_check;

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
    // Before any thread exists: it edits the environment.
    let handover: Option<manager::Handover> = crate::agents::binary::take_handover();
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
    runtime.block_on(run_async(args, handover).instrument(span))
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

async fn run_async(args: Args, handover: Option<manager::Handover>) -> Result<(), InstanceError> {
    crate::agents::pid1::start_reaping();
    // First: a re-executed PID 1 has no handlers until it installs them.
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
    crate::agents::binary::start_hashing(handover.as_ref().and_then(|h| h.sha256.clone()));
    // A postmaster the previous manager image handed over is adopted
    // before anything could reap it, and a fence can stop it at once.
    let adopted = handover
        .as_ref()
        .and_then(|h| h.postgres.clone())
        .map(supervisor::PostgresChild::adopt);
    let resumed = handover
        .as_ref()
        .and_then(|h| h.lease_valid_from)
        .map(crate::agents::binary::instant_of);
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

    // The keeper runs before anything that may wait on the network: a
    // handed-over lease must be renewed (or fenced) within its bound.
    let (commands_tx, commands_rx) = mpsc::channel(8);
    let namespace = inputs.namespace.clone();
    let cluster = inputs.cluster.clone();
    let shared = Arc::new(state::Shared::new(inputs, commands_tx));
    let store = lease::LeaseSource::new(&args.lease, &args.namespace, &args.pod_name);
    shared.lease.resume(
        resumed,
        &args.pod_name,
        adopted.as_ref().map(supervisor::PostgresChild::signaller),
    );
    let lease =
        fencing::LeaseHandle::spawn_resumed(store, &args.pod_name, shared.lease.clone(), resumed);
    if let Some(fencing) = handover.as_ref().and_then(|h| h.fencing.clone()) {
        lease.configure(Some(fencing));
    }
    let authority =
        authority::AuthoritySource::from_spec(&args.authority, &namespace, &cluster).await?;

    let mut api = tokio::spawn(api::serve(shared.clone(), shutdown_rx.clone()).in_current_span());
    let mut manager = manager::Manager::new(shared, authority, lease, adopted);
    if args.authority == authority::AuthoritySpec::Kube {
        manager = manager.with_passwords(managed::PasswordSource::kube(
            &namespace,
            crate::resources::names::roles_secret(&cluster),
        ));
    }
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

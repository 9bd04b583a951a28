//! `capstan operator`: the controller manager (DESIGN §2, §4).

pub mod agents;
pub mod cache;
pub mod cluster;
pub mod context;
pub mod controller;
pub mod error;
pub mod http;
pub mod leases;
pub mod metrics;
pub mod report;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use kube::api::ListParams;
use kube::runtime::events::{Recorder, Reporter};
use kube::{Api, Client};
use kube_lease_manager::LeaseManagerBuilder;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::api::PostgresCluster;
use context::{Context, OperatorConfig};
use http::Health;
use metrics::Metrics;

/// Lease that elects the one active operator replica.
pub const LEADER_LEASE: &str = "capstan-operator";

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Image carrying the capstan binary, used by the init container of
    /// every instance and pooler pod (normally the operator's own image).
    #[arg(long, env = "CAPSTAN_IMAGE", default_value = concat!("ghcr.io/capstan-dev/capstan:", env!("CARGO_PKG_VERSION")))]
    pub image: String,
    /// Watch only this namespace (default, or empty: all namespaces).
    #[arg(long, env = "CAPSTAN_WATCH_NAMESPACE")]
    namespace: Option<String>,
    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, env = "CAPSTAN_PROBE_ADDR", default_value = "0.0.0.0:8080")]
    pub probe_addr: SocketAddr,
    /// Elect one active replica through a Lease (keep on when running more
    /// than one replica).
    #[arg(long, env = "CAPSTAN_LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_elect: bool,
    /// Namespace of the leader Lease (the operator's own namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub leader_election_namespace: String,
    /// Identity in the leader Lease (the pod name).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Seconds between reconciles of a settled cluster (changes to it or
    /// its children are reconciled at once; this only catches what no
    /// event reports).
    #[arg(long, env = "CAPSTAN_RESYNC_SECONDS", default_value_t = 300, value_parser = clap::value_parser!(u64).range(10..=86400))]
    pub resync_seconds: u64,
}

impl Args {
    /// The namespace to watch; `None` is every namespace. An empty value
    /// counts as unset: Helm and kustomize render an unset value as `""`.
    pub fn watch_namespace(&self) -> Option<&str> {
        self.namespace.as_deref().filter(|ns| !ns.trim().is_empty())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(
        "cannot connect to Kubernetes: {0} (set KUBECONFIG or run in a pod with a service account)"
    )]
    Connect(#[source] kube::Error),
    #[error(
        "the PostgresCluster CRD (postgresclusters.capstan.dev) is not installed: install it with `kubectl apply --server-side -f crds/` or the Helm chart, then restart the operator"
    )]
    CrdMissing,
    #[error(
        "the operator may not list PostgresClusters ({0}); check its ClusterRole/Role bindings"
    )]
    Forbidden(String),
    #[error("cannot check the CRD: {0}")]
    Check(#[source] kube::Error),
    #[error("leader election failed: {0}")]
    Lease(#[from] kube_lease_manager::LeaseManagerError),
    #[error("lost leadership; exiting so a fresh process can rejoin the election")]
    LostLeadership,
    #[error("probe server on {addr}: {source}")]
    Http {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Fails with a clear message when the CRD is missing or unreadable.
pub async fn check_crd(client: &Client, namespace: Option<&str>) -> Result<(), RunError> {
    let api: Api<PostgresCluster> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    match api.list_metadata(&ListParams::default().limit(1)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Err(RunError::CrdMissing),
        Err(kube::Error::Api(s)) if s.code == 403 => Err(RunError::Forbidden(s.message)),
        Err(e) => Err(RunError::Check(e)),
    }
}

fn shutdown_on_signal(token: CancellationToken) {
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    warn!(error = %e, "cannot listen for SIGTERM");
                    return;
                }
            };
        tokio::select! {
            _ = term.recv() => info!("SIGTERM: shutting down"),
            _ = tokio::signal::ctrl_c() => info!("interrupted: shutting down"),
        }
        token.cancel();
    });
}

pub async fn run(args: Args) -> Result<(), RunError> {
    // Agents are brought to this binary; its checksum takes a moment.
    crate::agents::binary::start_hashing(None);
    let token = CancellationToken::new();
    shutdown_on_signal(token.clone());
    let client = Client::try_default().await.map_err(RunError::Connect)?;
    let metrics = Arc::new(Metrics::default());
    let health = Arc::new(Health {
        metrics: metrics.clone(),
        ready: false.into(),
    });
    let addr = args.probe_addr;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| RunError::Http { addr, source })?;
    let http_token = token.clone();
    let router = http::router(health.clone());
    tokio::spawn(async move {
        let shutdown = async move { http_token.cancelled().await };
        if let Err(e) = axum::serve(listener, router)
            .with_graceful_shutdown(shutdown)
            .await
        {
            warn!(error = %e, "probe server stopped");
        }
    });

    check_crd(&client, args.watch_namespace()).await?;
    health.ready.store(true, Ordering::Relaxed);

    let identity = args
        .identity
        .clone()
        .unwrap_or_else(|| format!("capstan-operator-{}", std::process::id()));
    let reporter = Reporter {
        controller: "capstan-operator".into(),
        instance: Some(identity.clone()),
    };
    let ctx = Arc::new(Context::new(
        client.clone(),
        Recorder::new(client.clone(), reporter),
        OperatorConfig {
            operator_image: args.image.clone(),
            namespace: args.watch_namespace().map(str::to_string),
            resync: std::time::Duration::from_secs(args.resync_seconds),
        },
        metrics,
    ));

    if !args.leader_elect {
        info!(namespace = ?args.watch_namespace(), "starting controller (leader election off)");
        controller::run(ctx, async move { token.cancelled().await }).await;
        return Ok(());
    }

    let manager = LeaseManagerBuilder::new(client.clone(), LEADER_LEASE)
        .with_namespace(&args.leader_election_namespace)
        .with_identity(&identity)
        .with_duration(15)
        .with_grace(5)
        .with_field_manager(cluster::apply::FIELD_MANAGER)
        .build()
        .await?;
    let (mut leader, lease_task) = manager.watch().await;
    info!(identity = %identity, lease = LEADER_LEASE, "waiting for leadership");
    loop {
        if *leader.borrow_and_update() {
            break;
        }
        tokio::select! {
            changed = leader.changed() => if changed.is_err() { return Err(RunError::LostLeadership) },
            _ = token.cancelled() => return Ok(()),
        }
    }
    info!(identity = %identity, namespace = ?args.watch_namespace(), "leader: starting controller");
    let lost = async move {
        while leader.changed().await.is_ok() {
            if !*leader.borrow() {
                break;
            }
        }
    };
    let controller_token = token.clone();
    let outcome = tokio::select! {
        _ = controller::run(ctx, async move { controller_token.cancelled().await }) => Ok(()),
        _ = lost => Err(RunError::LostLeadership),
    };
    // Dropping the receiver makes the lease task release the lease, so a
    // standby replica takes over at once instead of after expiry.
    match lease_task.await {
        Ok(Err(e)) => warn!(error = %e, "releasing the leader lease failed"),
        Err(e) => warn!(error = %e, "lease task failed"),
        Ok(Ok(_)) => {}
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn watch(argv: &[&str]) -> Option<String> {
        let cli = Cli::try_parse_from(std::iter::once("capstan").chain(argv.iter().copied()))
            .unwrap_or_else(|e| panic!("{argv:?}: {e}"));
        cli.args.watch_namespace().map(str::to_string)
    }

    #[test]
    fn an_empty_watch_namespace_watches_every_namespace() {
        // The chart's default renders CAPSTAN_WATCH_NAMESPACE="".
        assert_eq!(watch(&["--namespace", ""]), None);
        assert_eq!(watch(&["--namespace", "  "]), None);
        assert_eq!(watch(&["--namespace", "team-a"]), Some("team-a".into()));
    }
}

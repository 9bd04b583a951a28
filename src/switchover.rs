//! `capstan switchover`: asks for a planned switchover the declarative way
//! (the `capstan.dev/switchover` annotation, with a fresh token so it is a
//! new request) and follows `status.switchover` until it ends.

use std::time::{Duration, Instant};

use kube::api::{Patch, PatchParams};
use kube::{Api, Client};

use crate::api::PostgresCluster;
use crate::operator::cluster::switchover::{FAILED, is_terminal};
use crate::resources::labels::SWITCHOVER_ANNOTATION;

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// The PostgresCluster.
    pub cluster: String,
    /// The replica that becomes the primary.
    #[arg(long)]
    pub to: String,
    /// Namespace of the cluster (default: the kubeconfig's).
    #[arg(short, long)]
    pub namespace: Option<String>,
    /// Seconds to wait for the outcome (0: do not wait).
    #[arg(long, default_value_t = 120)]
    pub wait: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum SwitchoverError {
    #[error("cannot reach the Kubernetes API: {0}")]
    Client(#[source] kube::Error),
    #[error("cannot annotate PostgresCluster {cluster}: {source}")]
    Annotate {
        cluster: String,
        #[source]
        source: kube::Error,
    },
    #[error("switchover failed: {0}")]
    Failed(String),
    #[error(
        "no outcome within {0:?}; follow it with `kubectl get pgc -o jsonpath='{{.status.switchover}}'`"
    )]
    Timeout(Duration),
}

pub async fn run(args: Args) -> Result<(), SwitchoverError> {
    let client = Client::try_default()
        .await
        .map_err(SwitchoverError::Client)?;
    let api: Api<PostgresCluster> = match &args.namespace {
        Some(ns) => Api::namespaced(client, ns),
        None => Api::default_namespaced(client),
    };
    let request = format!("{}/{}", args.to, jiff::Timestamp::now().as_second());
    let patch = serde_json::json!({"metadata": {"annotations": {SWITCHOVER_ANNOTATION: request}}});
    api.patch(
        &args.cluster,
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .map_err(|source| SwitchoverError::Annotate {
        cluster: args.cluster.clone(),
        source,
    })?;
    println!("requested: {SWITCHOVER_ANNOTATION}={request}");
    if args.wait == 0 {
        return Ok(());
    }
    let limit = Duration::from_secs(args.wait);
    let deadline = Instant::now() + limit;
    let mut last_phase = String::new();
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let Ok(cluster) = api.get(&args.cluster).await else {
            continue;
        };
        let Some(s) = cluster
            .status
            .and_then(|s| s.switchover)
            .filter(|s| s.request == request)
        else {
            continue;
        };
        if s.phase != last_phase {
            println!("{}: {}", s.phase, s.message);
            last_phase = s.phase.clone();
        }
        if is_terminal(&s.phase) {
            return if s.phase == FAILED {
                Err(SwitchoverError::Failed(s.message))
            } else {
                Ok(())
            };
        }
    }
    Err(SwitchoverError::Timeout(limit))
}

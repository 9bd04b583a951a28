//! The operator's side of the agents' HTTPS APIs: a client per cluster,
//! built from the cluster's `<name>-operator-tls` Secret (its CA and the
//! operator's client certificate).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::ListParams;
use kube::{Api, Client};

use crate::agents::client::{AgentClient, Endpoint};
use crate::agents::tls;
use crate::contract::instance::InstanceReport;
use crate::contract::layout::{self, files};
use crate::resources::{labels, names};

/// A frozen or partitioned pod accepts the TCP connection (the kernel does)
/// and then never answers: this bounds what it costs a reconcile.
const STATUS_TIMEOUT: Duration = Duration::from_millis(300);
/// For the holder of a Lease silent past the fence point (likely frozen or
/// cut off, and fenced): its answer only matters to vouch that it still
/// holds the Lease when the operator's watch lags, and a healthy agent
/// answers in milliseconds. Waiting longer would delay the failover.
const SILENT_HOLDER_TIMEOUT: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum AgentsError {
    #[error("cannot read Secret {secret}: {source}")]
    Read {
        secret: String,
        #[source]
        source: kube::Error,
    },
    #[error(
        "Secret {secret} lacks {key}; delete it and Capstan issues the operator's client certificate again"
    )]
    Missing { secret: String, key: String },
    #[error("Secret {secret}: {source}")]
    Tls {
        secret: String,
        #[source]
        source: tls::TlsError,
    },
}

/// Builds the client for one cluster's agents from its Secret. Not cached:
/// a reconcile reads the Secret anyway, building the TLS configuration
/// costs microseconds, and a hundred idle clusters would otherwise keep a
/// hundred configurations in memory.
pub async fn client(
    kube: &Client,
    namespace: &str,
    cluster: &str,
) -> Result<AgentClient, AgentsError> {
    let secret_name = names::operator_tls_secret(cluster);
    let secret = Api::<Secret>::namespaced(kube.clone(), namespace)
        .get(&secret_name)
        .await
        .map_err(|source| AgentsError::Read {
            secret: secret_name.clone(),
            source,
        })?;
    let data = secret.data.unwrap_or_default();
    let get = |k: &str| {
        data.get(k)
            .map(|b| b.0.clone())
            .ok_or_else(|| AgentsError::Missing {
                secret: secret_name.clone(),
                key: k.to_string(),
            })
    };
    let config = tls::client_config(
        &get(files::CA_CRT)?,
        &get(files::TLS_CRT)?,
        &get(files::TLS_KEY)?,
    )
    .map_err(|source| AgentsError::Tls {
        secret: secret_name.clone(),
        source,
    })?;
    Ok(AgentClient::new(Arc::new(config)))
}

/// The agent of a pod, when it has an IP and is not being deleted.
pub fn endpoint(pod: &Pod, cluster: &str, namespace: &str) -> Option<Endpoint> {
    if pod.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let ip = pod.status.as_ref()?.pod_ip.clone()?;
    Some(Endpoint {
        name: pod.metadata.name.clone()?,
        host: ip,
        port: layout::AGENT_PORT,
        server_name: names::agent_server_name(cluster, namespace),
    })
}

/// `GET /status` of every instance pod at once; those that do not answer
/// in time are left out. `silent_holder`: the instance whose primary Lease
/// has gone silent, given less time.
pub async fn reports(
    client: &AgentClient,
    pods: &[Pod],
    cluster: &str,
    namespace: &str,
    silent_holder: Option<&str>,
) -> BTreeMap<String, InstanceReport> {
    let normal = client.clone().with_timeout(STATUS_TIMEOUT);
    let short = client.clone().with_timeout(SILENT_HOLDER_TIMEOUT);
    let endpoints: Vec<Endpoint> = pods
        .iter()
        .filter_map(|p| endpoint(p, cluster, namespace))
        .collect();
    let (normal, short) = (&normal, &short);
    join_all(endpoints.iter().map(|ep| async move {
        let client = if silent_holder == Some(ep.name.as_str()) {
            short
        } else {
            normal
        };
        match client.instance_status(ep).await {
            Ok(r) => Some((ep.name.clone(), r)),
            Err(e) => {
                tracing::debug!(cluster = %cluster, instance = %ep.name, error = %e, "instance status");
                None
            }
        }
    }))
    .await
    .into_iter()
    .flatten()
    .collect()
}

/// The running pooler pods' agents.
pub async fn poolers(
    kube: &Client,
    namespace: &str,
    cluster: &str,
) -> Result<Vec<Endpoint>, kube::Error> {
    let selector = labels::pooler_selector(cluster)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let pods = Api::<Pod>::namespaced(kube.clone(), namespace)
        .list(&ListParams::default().labels(&selector))
        .await?;
    Ok(pods
        .items
        .iter()
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .filter_map(|p| endpoint(p, cluster, namespace))
        .collect())
}

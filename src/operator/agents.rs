//! The operator's side of the agents' HTTPS APIs: a client per cluster,
//! built from the cluster's `<name>-operator-tls` Secret (its CA and the
//! operator's client certificate).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::{BoxFuture, join_all};
use k8s_openapi::api::core::v1::{Pod, Secret};

use crate::agents::client::{AgentClient, ClientError, Endpoint};
use crate::agents::tls;
use crate::contract::backup::{BackupJob, BackupRequest, SentinelRequest};
use crate::contract::instance::{
    DemoteRequest, DemoteResult, InstanceReport, PromoteRequest, PromoteResult,
};
use crate::contract::layout::{self, files};
use crate::contract::pooler::PoolerReport;
use crate::pooler::switchover::PoolerControl;
use crate::resources::names;
use hyper::body::Bytes;

/// A frozen or partitioned pod accepts the TCP connection (the kernel does)
/// and then never answers: this bounds what it costs a reconcile.
const STATUS_TIMEOUT: Duration = Duration::from_millis(300);
/// For the holder of a Lease silent past the fence point (likely frozen or
/// cut off, and fenced): its answer only matters to vouch that it still
/// holds the Lease when the operator's watch lags, and a healthy agent
/// answers in milliseconds. Waiting longer would delay the failover.
pub const SILENT_HOLDER_TIMEOUT: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum AgentsError {
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

/// The agent calls the operator makes: the HTTPS client in production, a
/// double in the controller tests. Only `cluster::execute` (actions) and
/// [`reports`] (observation) use it.
pub trait Agents: PoolerControl {
    fn instance_status<'a>(
        &'a self,
        ep: &'a Endpoint,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<InstanceReport, ClientError>>;
    fn promote<'a>(
        &'a self,
        ep: &'a Endpoint,
        request: &'a PromoteRequest,
    ) -> BoxFuture<'a, Result<PromoteResult, ClientError>>;
    fn demote<'a>(
        &'a self,
        ep: &'a Endpoint,
        new_primary: &'a str,
    ) -> BoxFuture<'a, Result<DemoteResult, ClientError>>;
    /// `POST /backup`: start (or look up) a backup on the instance.
    fn backup<'a>(
        &'a self,
        ep: &'a Endpoint,
        request: &'a BackupRequest,
    ) -> BoxFuture<'a, Result<BackupJob, ClientError>>;
    /// `POST /sentinel`: the primary writes a backup's sentinel row.
    fn sentinel<'a>(
        &'a self,
        ep: &'a Endpoint,
        backup: &'a str,
    ) -> BoxFuture<'a, Result<(), ClientError>>;
    /// `POST /inventory`: the instance re-reads what the repositories hold.
    fn inventory_changed<'a>(&'a self, ep: &'a Endpoint) -> BoxFuture<'a, Result<(), ClientError>>;
    /// `POST /prepare-stop`: a CHECKPOINT within `timeout`; the next
    /// shutdown is fast.
    fn prepare_stop<'a>(
        &'a self,
        ep: &'a Endpoint,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<(), ClientError>>;
    /// `GET /status` of a pooler supervisor.
    fn pooler_status<'a>(
        &'a self,
        ep: &'a Endpoint,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<PoolerReport, ClientError>>;
    /// `POST /binary`: the agent takes `binary` and re-executes into it.
    fn replace_binary<'a>(
        &'a self,
        ep: &'a Endpoint,
        sha256: &'a str,
        binary: Bytes,
    ) -> BoxFuture<'a, Result<(), ClientError>>;
}

/// Time for an agent to receive, check and install a binary.
pub const REPLACE_BINARY_TIMEOUT: Duration = Duration::from_secs(110);

impl Agents for AgentClient {
    fn pooler_status<'a>(
        &'a self,
        ep: &'a Endpoint,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<PoolerReport, ClientError>> {
        Box::pin(async move { self.clone().with_timeout(timeout).get(ep, "/status").await })
    }
    fn replace_binary<'a>(
        &'a self,
        ep: &'a Endpoint,
        sha256: &'a str,
        binary: Bytes,
    ) -> BoxFuture<'a, Result<(), ClientError>> {
        Box::pin(async move {
            AgentClient::replace_binary(self, ep, sha256, binary, REPLACE_BINARY_TIMEOUT).await
        })
    }
    fn backup<'a>(
        &'a self,
        ep: &'a Endpoint,
        request: &'a BackupRequest,
    ) -> BoxFuture<'a, Result<BackupJob, ClientError>> {
        Box::pin(async move { AgentClient::backup(self, ep, request).await })
    }
    fn sentinel<'a>(
        &'a self,
        ep: &'a Endpoint,
        backup: &'a str,
    ) -> BoxFuture<'a, Result<(), ClientError>> {
        Box::pin(async move {
            let request = SentinelRequest {
                backup: backup.to_string(),
            };
            AgentClient::sentinel(self, ep, &request).await.map(|_| ())
        })
    }
    fn inventory_changed<'a>(&'a self, ep: &'a Endpoint) -> BoxFuture<'a, Result<(), ClientError>> {
        Box::pin(async move { AgentClient::inventory_changed(self, ep).await })
    }
    fn prepare_stop<'a>(
        &'a self,
        ep: &'a Endpoint,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<(), ClientError>> {
        Box::pin(async move { AgentClient::prepare_stop(self, ep, timeout).await })
    }
    fn instance_status<'a>(
        &'a self,
        ep: &'a Endpoint,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<InstanceReport, ClientError>> {
        Box::pin(async move { self.clone().with_timeout(timeout).instance_status(ep).await })
    }
    fn promote<'a>(
        &'a self,
        ep: &'a Endpoint,
        request: &'a PromoteRequest,
    ) -> BoxFuture<'a, Result<PromoteResult, ClientError>> {
        Box::pin(async move { AgentClient::promote(self, ep, request).await })
    }
    fn demote<'a>(
        &'a self,
        ep: &'a Endpoint,
        new_primary: &'a str,
    ) -> BoxFuture<'a, Result<DemoteResult, ClientError>> {
        Box::pin(async move {
            let request = DemoteRequest {
                new_primary: new_primary.to_string(),
            };
            AgentClient::demote(self, ep, &request).await
        })
    }
}

/// Makes the agent client of one cluster from its `<name>-operator-tls`
/// Secret.
pub trait Connect: Send + Sync {
    fn connect(&self, secret: &Secret) -> Result<Arc<dyn Agents>, AgentsError>;
}

/// The production [`Connect`]: HTTPS with the operator's client
/// certificate. Not cached: building the TLS configuration costs
/// microseconds, and a hundred idle clusters would otherwise keep a hundred
/// configurations in memory.
pub struct Https;

impl Connect for Https {
    fn connect(&self, secret: &Secret) -> Result<Arc<dyn Agents>, AgentsError> {
        let secret_name = secret.metadata.name.clone().unwrap_or_default();
        let data = secret.data.clone().unwrap_or_default();
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
        Ok(Arc::new(AgentClient::new(Arc::new(config))))
    }
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
    client: &dyn Agents,
    pods: &[Pod],
    cluster: &str,
    namespace: &str,
    silent_holder: Option<&str>,
) -> BTreeMap<String, InstanceReport> {
    let endpoints: Vec<Endpoint> = pods
        .iter()
        .filter_map(|p| endpoint(p, cluster, namespace))
        .collect();
    join_all(endpoints.iter().map(|ep| async move {
        let timeout = if silent_holder == Some(ep.name.as_str()) {
            SILENT_HOLDER_TIMEOUT
        } else {
            STATUS_TIMEOUT
        };
        match client.instance_status(ep, timeout).await {
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

/// `GET /status` of every running pooler pod at once; those that do not
/// answer in time are left out.
pub async fn pooler_reports(
    client: &dyn Agents,
    pods: &[Pod],
    cluster: &str,
    namespace: &str,
) -> BTreeMap<String, PoolerReport> {
    let endpoints = poolers(pods, namespace, cluster);
    join_all(endpoints.iter().map(|ep| async move {
        match client.pooler_status(ep, STATUS_TIMEOUT).await {
            Ok(r) => Some((ep.name.clone(), r)),
            Err(e) => {
                tracing::debug!(cluster = %cluster, pooler = %ep.name, error = %e, "pooler status");
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
pub fn poolers(pods: &[Pod], namespace: &str, cluster: &str) -> Vec<Endpoint> {
    pods.iter()
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .filter_map(|p| endpoint(p, cluster, namespace))
        .collect()
}

//! The pooler API as the operator calls it (on top of the generic agent
//! client).

use std::time::Duration;

use hyper::Method;

use crate::agents::client::AgentClient;
pub use crate::agents::client::{AgentClient as PoolerClient, ClientError, Endpoint};
use crate::contract::pooler::{PauseRequest, PauseResult, PoolerReport};

impl AgentClient {
    /// `POST /pause`. The request may take the pause timeout plus the
    /// pooler's own RESUME on failure.
    pub async fn pause(
        &self,
        ep: &Endpoint,
        request: &PauseRequest,
    ) -> Result<PauseResult, ClientError> {
        let body = serde_json::to_vec(request).map_err(|e| ClientError::Decode {
            endpoint: ep.name.clone(),
            message: e.to_string(),
        })?;
        let timeout = Duration::from_millis(request.timeout_ms) + self.timeout();
        let bytes = self
            .call(ep, Method::POST, "/pause", Some(body), timeout)
            .await?;
        AgentClient::decode(ep, &bytes)
    }

    pub async fn resume(&self, ep: &Endpoint) -> Result<(), ClientError> {
        self.call(ep, Method::POST, "/resume", None, self.timeout())
            .await
            .map(|_| ())
    }

    pub async fn reconnect(&self, ep: &Endpoint) -> Result<(), ClientError> {
        self.call(ep, Method::POST, "/reconnect", None, self.timeout())
            .await
            .map(|_| ())
    }

    pub async fn status(&self, ep: &Endpoint) -> Result<PoolerReport, ClientError> {
        let bytes = self
            .call(ep, Method::GET, "/status", None, self.timeout())
            .await?;
        AgentClient::decode(ep, &bytes)
    }

    /// `GET /metrics` (Prometheus text).
    pub async fn metrics(&self, ep: &Endpoint) -> Result<String, ClientError> {
        let bytes = self
            .call(ep, Method::GET, "/metrics", None, self.timeout())
            .await?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// `GET /readyz`: Ok when ready.
    pub async fn ready(&self, ep: &Endpoint) -> Result<(), ClientError> {
        self.call(ep, Method::GET, "/readyz", None, self.timeout())
            .await
            .map(|_| ())
    }
}

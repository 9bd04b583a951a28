//! Client of the pooler API for the operator: one TLS connection per
//! request (calls are rare and must not reuse a connection to a pod that
//! went away), every request bounded by a timeout.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use serde::de::DeserializeOwned;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::contract::instance::ApiError;
use crate::contract::pooler::{PauseRequest, PauseResult, PoolerReport};

/// Time allowed for requests without a timeout of their own.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// One pooler replica's API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// For messages (the pod name).
    pub name: String,
    /// Address to connect to (the pod IP).
    pub host: String,
    pub port: u16,
    /// Name the pooler certificate is checked against (a DNS name of the
    /// `<name>-pooler` Service, or an IP address in the certificate).
    pub server_name: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("pooler {endpoint}: cannot connect to {address}: {message}")]
    Connect {
        endpoint: String,
        address: String,
        message: String,
    },
    #[error("pooler {endpoint}: TLS failed: {message}")]
    Tls { endpoint: String, message: String },
    #[error("pooler {endpoint}: HTTP failed: {message}")]
    Http { endpoint: String, message: String },
    #[error("pooler {endpoint}: no answer within {timeout:?}")]
    Timeout { endpoint: String, timeout: Duration },
    #[error("pooler {endpoint}: {status}: {message}")]
    Status {
        endpoint: String,
        status: StatusCode,
        message: String,
    },
    #[error("pooler {endpoint}: unexpected answer: {message}")]
    Decode { endpoint: String, message: String },
}

#[derive(Clone)]
pub struct PoolerClient {
    tls: TlsConnector,
    timeout: Duration,
}

impl std::fmt::Debug for PoolerClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolerClient")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl PoolerClient {
    /// `tls` trusts the cluster CA and carries the operator's client
    /// certificate (see [`super::tls::client_config`]).
    pub fn new(tls: Arc<ClientConfig>) -> Self {
        Self {
            tls: TlsConnector::from(tls),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    async fn call(
        &self,
        ep: &Endpoint,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<Bytes, ClientError> {
        let name = ep.name.clone();
        let run = async {
            let address = format!("{}:{}", ep.host, ep.port);
            let tcp = TcpStream::connect((ep.host.as_str(), ep.port))
                .await
                .map_err(|e| ClientError::Connect {
                    endpoint: name.clone(),
                    address: address.clone(),
                    message: e.to_string(),
                })?;
            let server_name =
                ServerName::try_from(ep.server_name.clone()).map_err(|e| ClientError::Tls {
                    endpoint: name.clone(),
                    message: format!("{:?} is not a valid server name: {e}", ep.server_name),
                })?;
            let tls = self
                .tls
                .connect(server_name, tcp)
                .await
                .map_err(|e| ClientError::Tls {
                    endpoint: name.clone(),
                    message: e.to_string(),
                })?;
            let http = |e: hyper::Error| ClientError::Http {
                endpoint: name.clone(),
                message: e.to_string(),
            };
            let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                .await
                .map_err(http)?;
            tokio::spawn(async move {
                let _ = connection.await;
            });
            let mut request = Request::builder()
                .method(method)
                .uri(path)
                .header(hyper::header::HOST, ep.server_name.as_str());
            if body.is_some() {
                request = request.header(hyper::header::CONTENT_TYPE, "application/json");
            }
            let request = request
                .body(Full::new(Bytes::from(body.unwrap_or_default())))
                .map_err(|e| ClientError::Http {
                    endpoint: name.clone(),
                    message: e.to_string(),
                })?;
            let response = sender.send_request(request).await.map_err(http)?;
            let status = response.status();
            let bytes = response
                .into_body()
                .collect()
                .await
                .map_err(http)?
                .to_bytes();
            if status.is_success() {
                Ok(bytes)
            } else {
                let message = serde_json::from_slice::<ApiError>(&bytes)
                    .map(|e| e.error)
                    .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
                Err(ClientError::Status {
                    endpoint: name.clone(),
                    status,
                    message,
                })
            }
        };
        tokio::time::timeout(timeout, run)
            .await
            .map_err(|_| ClientError::Timeout {
                endpoint: ep.name.clone(),
                timeout,
            })?
    }

    fn decode<T: DeserializeOwned>(ep: &Endpoint, bytes: &[u8]) -> Result<T, ClientError> {
        serde_json::from_slice(bytes).map_err(|e| ClientError::Decode {
            endpoint: ep.name.clone(),
            message: e.to_string(),
        })
    }

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
        let timeout = Duration::from_millis(request.timeout_ms) + self.timeout;
        let bytes = self
            .call(ep, Method::POST, "/pause", Some(body), timeout)
            .await?;
        Self::decode(ep, &bytes)
    }

    pub async fn resume(&self, ep: &Endpoint) -> Result<(), ClientError> {
        self.call(ep, Method::POST, "/resume", None, self.timeout)
            .await
            .map(|_| ())
    }

    pub async fn reconnect(&self, ep: &Endpoint) -> Result<(), ClientError> {
        self.call(ep, Method::POST, "/reconnect", None, self.timeout)
            .await
            .map(|_| ())
    }

    pub async fn status(&self, ep: &Endpoint) -> Result<PoolerReport, ClientError> {
        let bytes = self
            .call(ep, Method::GET, "/status", None, self.timeout)
            .await?;
        Self::decode(ep, &bytes)
    }

    /// `GET /metrics` (Prometheus text).
    pub async fn metrics(&self, ep: &Endpoint) -> Result<String, ClientError> {
        let bytes = self
            .call(ep, Method::GET, "/metrics", None, self.timeout)
            .await?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// `GET /readyz`: Ok when ready.
    pub async fn ready(&self, ep: &Endpoint) -> Result<(), ClientError> {
        self.call(ep, Method::GET, "/readyz", None, self.timeout)
            .await
            .map(|_| ())
    }
}

//! HTTPS client of the agents' APIs (instance managers and pooler
//! supervisors) for the operator: one TLS connection per request (calls are
//! rare and must not reuse a connection to a pod that went away), every
//! request bounded by a timeout, the server's certificate checked against
//! the cluster CA under a fixed name (pods are reached by IP).

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

/// Time allowed for requests without a timeout of their own.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// One agent's API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// For messages (the pod name).
    pub name: String,
    /// Address to connect to (the pod IP).
    pub host: String,
    pub port: u16,
    /// Name the agent's certificate is checked against (the cluster's agent
    /// name, see `resources::names::agent_server_name`).
    pub server_name: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("agent {endpoint}: cannot connect to {address}: {message}")]
    Connect {
        endpoint: String,
        address: String,
        message: String,
    },
    #[error("agent {endpoint}: TLS failed: {message}")]
    Tls { endpoint: String, message: String },
    #[error("agent {endpoint}: HTTP failed: {message}")]
    Http { endpoint: String, message: String },
    #[error("agent {endpoint}: no answer within {timeout:?}")]
    Timeout { endpoint: String, timeout: Duration },
    #[error("agent {endpoint}: {status}: {message}")]
    Status {
        endpoint: String,
        status: StatusCode,
        message: String,
    },
    #[error("agent {endpoint}: unexpected answer: {message}")]
    Decode { endpoint: String, message: String },
}

#[derive(Clone)]
pub struct AgentClient {
    tls: TlsConnector,
    timeout: Duration,
}

impl std::fmt::Debug for AgentClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentClient")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl AgentClient {
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

    pub async fn call(
        &self,
        ep: &Endpoint,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<Bytes, ClientError> {
        let headers = match body {
            Some(_) => vec![(
                hyper::header::CONTENT_TYPE.as_str(),
                "application/json".to_string(),
            )],
            None => vec![],
        };
        let body = Bytes::from(body.unwrap_or_default());
        self.exchange(ep, method, path, body, &headers, timeout)
            .await
    }

    /// `POST /binary`: the agent installs `binary` (checked against
    /// `sha256`) and re-executes into it.
    pub async fn replace_binary(
        &self,
        ep: &Endpoint,
        sha256: &str,
        binary: Bytes,
        timeout: Duration,
    ) -> Result<(), ClientError> {
        let headers = [
            (
                hyper::header::CONTENT_TYPE.as_str(),
                "application/octet-stream".to_string(),
            ),
            (
                crate::contract::agent::BINARY_SHA256_HEADER,
                sha256.to_string(),
            ),
        ];
        self.exchange(ep, Method::POST, "/binary", binary, &headers, timeout)
            .await
            .map(|_| ())
    }

    async fn exchange(
        &self,
        ep: &Endpoint,
        method: Method,
        path: &str,
        body: Bytes,
        headers: &[(&str, String)],
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
            for (header, value) in headers {
                request = request.header(*header, value.as_str());
            }
            let request = request
                .body(Full::new(body))
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

    pub fn decode<T: DeserializeOwned>(ep: &Endpoint, bytes: &[u8]) -> Result<T, ClientError> {
        serde_json::from_slice(bytes).map_err(|e| ClientError::Decode {
            endpoint: ep.name.clone(),
            message: e.to_string(),
        })
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// `GET path`, decoded.
    pub async fn get<T: DeserializeOwned>(
        &self,
        ep: &Endpoint,
        path: &str,
    ) -> Result<T, ClientError> {
        let bytes = self.call(ep, Method::GET, path, None, self.timeout).await?;
        Self::decode(ep, &bytes)
    }

    /// `POST path` with a JSON body, the answer decoded.
    pub async fn post<B: serde::Serialize, T: DeserializeOwned>(
        &self,
        ep: &Endpoint,
        path: &str,
        body: &B,
        timeout: Duration,
    ) -> Result<T, ClientError> {
        let body = serde_json::to_vec(body).map_err(|e| ClientError::Decode {
            endpoint: ep.name.clone(),
            message: e.to_string(),
        })?;
        let bytes = self
            .call(ep, Method::POST, path, Some(body), timeout)
            .await?;
        Self::decode(ep, &bytes)
    }
}

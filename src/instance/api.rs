//! The HTTPS API on the API port.
//!
//! `GET /healthz`, `/readyz` and `/metrics` answer anyone (kubelet probes,
//! Prometheus). `GET /status`, `POST /promote` and `POST /demote` need a
//! client certificate from the cluster CA with CN `capstan-operator`; rustls
//! verifies the chain during the handshake and each request carries the
//! verified common name. Every request has a time limit, and every error is
//! an `ApiError` JSON body.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;
use tracing::Instrument;

use crate::contract::instance::{ApiError, DemoteRequest, PromoteRequest};
use crate::contract::layout::OPERATOR_CLIENT_CN;

use super::state::{Command, CommandError, Shared};
use super::tls;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Promotion and demotion include a shutdown, a rewind or a clone start.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);
const MAX_BODY: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ApiServeError {
    #[error("invalid listen address {0:?}")]
    Address(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// The verified common name of the client certificate, if any.
#[derive(Clone, Debug, Default)]
struct ClientIdentity(Option<String>);

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (
        status,
        axum::Json(ApiError {
            error: message.into(),
        }),
    )
        .into_response()
}

fn json<T: Serialize>(value: &T) -> Response {
    axum::Json(value).into_response()
}

pub fn router(shared: Arc<Shared>) -> Router {
    let operator = Router::new()
        .route("/status", get(status))
        .route("/promote", post(promote))
        .route("/demote", post(demote))
        .route_layer(middleware::from_fn(require_operator));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(operator)
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such endpoint") })
        .layer(middleware::from_fn(time_limit))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(shared)
}

async fn time_limit(request: Request, next: Next) -> Response {
    let limit = if request.method() == axum::http::Method::POST {
        COMMAND_TIMEOUT
    } else {
        REQUEST_TIMEOUT
    };
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the request took longer than {}s", limit.as_secs()),
        ),
    }
}

async fn require_operator(request: Request, next: Next) -> Response {
    let identity = request
        .extensions()
        .get::<ClientIdentity>()
        .cloned()
        .unwrap_or_default();
    match identity.0.as_deref() {
        Some(OPERATOR_CLIENT_CN) => next.run(request).await,
        Some(other) => error(
            StatusCode::FORBIDDEN,
            format!(
                "client certificate {other:?} may not call this endpoint; it needs {OPERATOR_CLIENT_CN:?}"
            ),
        ),
        None => error(
            StatusCode::UNAUTHORIZED,
            format!(
                "this endpoint needs a client certificate for {OPERATOR_CLIENT_CN:?} from the cluster CA"
            ),
        ),
    }
}

async fn healthz(State(shared): State<Arc<Shared>>) -> Response {
    match shared.health() {
        Ok(()) => json(&serde_json::json!({"status": "ok"})),
        Err(message) => error(StatusCode::SERVICE_UNAVAILABLE, message),
    }
}

async fn readyz(State(shared): State<Arc<Shared>>) -> Response {
    let report = shared.report();
    if report.ready {
        json(&serde_json::json!({"status": "ready", "role": report.role}))
    } else if !report.running {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "postgres is not accepting connections",
        )
    } else {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "replica not streaming within the lag bound (wal receiver: {}, lag: {} bytes)",
                report.wal_receiver.as_deref().unwrap_or("none"),
                report
                    .lag_bytes
                    .map_or_else(|| "unknown".to_string(), |l| l.to_string())
            ),
        )
    }
}

async fn status(State(shared): State<Arc<Shared>>) -> Response {
    json(&shared.report())
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    let sample = if shared.report().running {
        tokio::time::timeout(Duration::from_secs(5), shared.local.sample())
            .await
            .ok()
            .and_then(Result::ok)
    } else {
        None
    };
    shared.metrics.observe_sample(sample.as_ref());
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        shared.metrics.encode(),
    )
        .into_response()
}

/// An empty body means the defaults.
fn parse_body<T: DeserializeOwned + Default>(body: &Bytes) -> Result<T, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    parse_required(body)
}

fn parse_required<T: DeserializeOwned>(body: &Bytes) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|e| format!("invalid request body: {e}"))
}

fn command_error(e: CommandError) -> Response {
    let status = match e {
        CommandError::Conflict(_) => StatusCode::CONFLICT,
        CommandError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        CommandError::Failed(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(status, e.to_string())
}

async fn send<T: Serialize>(
    shared: &Shared,
    make: impl FnOnce(oneshot::Sender<Result<T, CommandError>>) -> Command,
) -> Response {
    let (tx, rx) = oneshot::channel();
    if shared.commands.send(make(tx)).await.is_err() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the manager is shutting down",
        );
    }
    match rx.await {
        Ok(Ok(result)) => json(&result),
        Ok(Err(e)) => command_error(e),
        Err(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the manager is shutting down",
        ),
    }
}

async fn promote(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let request: PromoteRequest = match parse_body(&body) {
        Ok(r) => r,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    send(&shared, |tx| Command::Promote(request, tx)).await
}

async fn demote(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let request: DemoteRequest = match parse_required(&body) {
        Ok(r) => r,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    send(&shared, |tx| Command::Demote(request, tx)).await
}

/// Binds the API port and serves until `shutdown`. TLS material that is
/// missing or broken is retried (the Secret may be mounted late).
pub async fn serve(
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), ApiServeError> {
    let ip: IpAddr = shared
        .inputs
        .listen_address
        .parse()
        .map_err(|_| ApiServeError::Address(shared.inputs.listen_address.clone()))?;
    let addr = SocketAddr::new(ip, shared.inputs.api_port);
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ApiServeError::Bind { addr, source })?;
    let files = shared.inputs.agent_tls();
    let (mut acceptor, mut stamp) = loop {
        let stamp = files.stamp();
        match tls::api_server(&files) {
            Ok(config) => break (TlsAcceptor::from(Arc::new(config)), stamp),
            Err(e) => {
                tracing::error!(error = %e, "cannot set up TLS for the API; retrying in 5s");
                tokio::select! {
                    _ = super::state::stopping(&mut shutdown) => return Ok(()),
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                }
            }
        }
    };
    tracing::info!(%addr, "API listening");
    let app = router(shared);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = super::state::stopping(&mut shutdown) => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        // Rotated certificates (the kubelet updates the mounted Secret) are
        // picked up by the next connection; a broken new set keeps the old.
        let current = files.stamp();
        if current != stamp {
            stamp = current;
            match tls::api_server(&files) {
                Ok(config) => {
                    acceptor = TlsAcceptor::from(Arc::new(config));
                    tracing::info!("API certificates reloaded");
                }
                Err(e) => {
                    tracing::error!(error = %e, "new API certificates are unusable; keeping the old ones")
                }
            }
        }
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(
            async move {
                let stream =
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => return,
                    };
                let identity = ClientIdentity(
                    stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|certs| certs.first())
                        .and_then(tls::common_name),
                );
                let service =
                    hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                        let app = app.clone();
                        let identity = identity.clone();
                        async move {
                            let (mut parts, body) = request.into_parts();
                            parts.extensions.insert(identity);
                            app.oneshot(Request::from_parts(parts, Body::new(body)))
                                .await
                        }
                    });
                let served = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(REQUEST_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
                if let Err(e) = served {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
            }
            .in_current_span(),
        );
    }
}

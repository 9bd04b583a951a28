//! The pooler's HTTPS API (port [`crate::contract::layout::AGENT_PORT`]).
//!
//! Client certificates are verified against the cluster CA but optional:
//! `GET /readyz` and `GET /metrics` serve anyone (kubelet probes,
//! Prometheus); every other endpoint requires the operator's certificate
//! (CN [`OPERATOR_CLIENT_CN`]).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use super::admin::AdminError;
use super::supervisor::Shared;
use crate::contract::instance::ApiError;
use crate::contract::layout::OPERATOR_CLIENT_CN;
use crate::contract::pooler::{
    DEFAULT_MAX_HOLD_MS, MAX_HOLD_LIMIT_MS, MAX_PAUSE_TIMEOUT_MS, PauseRequest, PauseResult,
};

/// Upper bound of any request: the longest PAUSE plus its RESUME.
const REQUEST_TIMEOUT: Duration = Duration::from_millis(MAX_PAUSE_TIMEOUT_MS + 30_000);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Common name of the verified client certificate, if one was presented.
#[derive(Clone, Debug)]
struct Peer(Option<String>);

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (
        status,
        Json(ApiError {
            error: message.into(),
        }),
    )
        .into_response()
}

fn admin_error(e: AdminError) -> Response {
    let status = match e {
        AdminError::PauseTimeout { .. } | AdminError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        AdminError::Connect(_) => StatusCode::SERVICE_UNAVAILABLE,
        AdminError::Command { .. } | AdminError::Parse { .. } => StatusCode::BAD_GATEWAY,
    };
    error(status, e.to_string())
}

pub fn router(shared: Arc<Shared>) -> Router {
    let operator_only = Router::new()
        .route("/status", get(status))
        .route("/pause", post(pause))
        .route("/resume", post(resume))
        .route("/reconnect", post(reconnect))
        .route_layer(middleware::from_fn(require_operator));
    Router::new()
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(operator_only)
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such endpoint") })
        .layer(middleware::from_fn(request_timeout))
        .with_state(shared)
}

/// Accepts TLS connections until the process ends. The certificate is read
/// per connection from the supervisor, so a rotated one applies at once.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let app = router(Arc::clone(&shared));
    loop {
        let (stream, remote) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "API accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let acceptor = TlsAcceptor::from(shared.tls_config());
        let app = app.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%remote, error = %e, "API TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%remote, "API TLS handshake timed out");
                    return;
                }
            };
            let peer = Peer(
                tls.get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .and_then(crate::agents::tls::common_name),
            );
            let service =
                hyper::service::service_fn(move |mut req: Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(peer.clone());
                    app.clone().oneshot(req)
                });
            let served = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(tls), service)
                .await;
            if let Err(e) = served {
                tracing::debug!(%remote, error = %e, "API connection ended with an error");
            }
        });
    }
}

async fn request_timeout(req: Request, next: Next) -> Response {
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(req)).await {
        Ok(r) => r,
        Err(_) => error(StatusCode::GATEWAY_TIMEOUT, "request timed out"),
    }
}

async fn require_operator(req: Request, next: Next) -> Response {
    match req.extensions().get::<Peer>() {
        Some(Peer(Some(cn))) if cn == OPERATOR_CLIENT_CN => next.run(req).await,
        Some(Peer(Some(cn))) => error(
            StatusCode::FORBIDDEN,
            format!(
                "client certificate {cn:?} may not call this endpoint; only {OPERATOR_CLIENT_CN:?} may"
            ),
        ),
        _ => error(
            StatusCode::UNAUTHORIZED,
            format!("this endpoint requires the {OPERATOR_CLIENT_CN:?} client certificate"),
        ),
    }
}

async fn readyz(State(shared): State<Arc<Shared>>) -> Response {
    match shared.ready().await {
        Ok(()) => (StatusCode::OK, "ok\n").into_response(),
        Err(message) => error(StatusCode::SERVICE_UNAVAILABLE, message),
    }
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    let body = super::metrics::gather(&shared).await;
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

async fn status(State(shared): State<Arc<Shared>>) -> Response {
    Json(shared.report().await).into_response()
}

async fn pause(
    State(shared): State<Arc<Shared>>,
    body: Result<Json<PauseRequest>, JsonRejection>,
) -> Response {
    let Json(request) = match body {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    if request.timeout_ms == 0 || request.timeout_ms > MAX_PAUSE_TIMEOUT_MS {
        return error(
            StatusCode::BAD_REQUEST,
            format!("timeoutMs must be between 1 and {MAX_PAUSE_TIMEOUT_MS}"),
        );
    }
    let hold = request.max_hold_ms.unwrap_or(DEFAULT_MAX_HOLD_MS);
    if hold == 0 || hold > MAX_HOLD_LIMIT_MS {
        return error(
            StatusCode::BAD_REQUEST,
            format!("maxHoldMs must be between 1 and {MAX_HOLD_LIMIT_MS}"),
        );
    }
    // Its own task: a caller that hangs up must not cancel the PAUSE
    // half-way and skip the RESUME of its error path.
    let task = tokio::spawn(async move {
        shared
            .pause(
                Duration::from_millis(request.timeout_ms),
                Duration::from_millis(hold),
            )
            .await
    });
    match task.await {
        Ok(Ok(elapsed)) => Json(PauseResult {
            elapsed_ms: elapsed.as_millis() as u64,
        })
        .into_response(),
        Ok(Err(e)) => admin_error(e),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("pause failed: {e}"),
        ),
    }
}

async fn resume(State(shared): State<Arc<Shared>>) -> Response {
    match shared.resume().await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => admin_error(e),
    }
}

async fn reconnect(State(shared): State<Arc<Shared>>) -> Response {
    match shared.reconnect().await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => admin_error(e),
    }
}

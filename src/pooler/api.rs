//! The pooler's HTTPS API (port [`crate::contract::layout::AGENT_PORT`]).
//!
//! Client certificates are verified against the cluster CA but optional:
//! `GET /readyz` and `GET /metrics` serve anyone (kubelet probes,
//! Prometheus); every other endpoint requires the operator's certificate
//! (CN [`crate::contract::layout::OPERATOR_CLIENT_CN`]); the serving and the
//! checks are [`crate::agents::server`], shared with the instance manager.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::{HeaderMap, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use super::admin::AdminError;
use super::shared::Shared;
use crate::agents::server::{self, TimeLimit, error, require_operator};
use crate::contract::pooler::{
    DEFAULT_MAX_HOLD_MS, MAX_HOLD_LIMIT_MS, MAX_PAUSE_TIMEOUT_MS, PauseRequest, PauseResult,
};

/// Upper bound of any request: the longest PAUSE plus its RESUME.
const REQUEST_TIMEOUT: Duration = Duration::from_millis(MAX_PAUSE_TIMEOUT_MS + 30_000);
const TIME_LIMIT: TimeLimit = TimeLimit {
    read: REQUEST_TIMEOUT,
    command: REQUEST_TIMEOUT,
    status: StatusCode::GATEWAY_TIMEOUT,
};

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
        .route(
            "/binary",
            post(replace_binary).layer(axum::extract::DefaultBodyLimit::disable()),
        )
        .route_layer(middleware::from_fn(require_operator));
    let routes = Router::new()
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(operator_only)
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such endpoint") });
    server::with_time_limit(routes, TIME_LIMIT).with_state(shared)
}

async fn readyz(State(shared): State<Arc<Shared>>) -> Response {
    match shared.ready().await {
        Ok(()) => (StatusCode::OK, "ok\n").into_response(),
        Err(message) => error(StatusCode::SERVICE_UNAVAILABLE, message),
    }
}

async fn metrics(State(shared): State<Arc<Shared>>, request: HeaderMap) -> Response {
    crate::monitoring::response(&request, super::metrics::gather(&shared).await)
}

/// Installs a new supervisor binary (the operator's own, when Capstan was
/// upgraded) and re-executes into it; PgBouncer keeps running.
async fn replace_binary(
    State(shared): State<Arc<Shared>>,
    headers: axum::http::HeaderMap,
    body: axum::body::Body,
) -> Response {
    let sha256 = match crate::agents::binary::receive(&headers, body).await {
        Ok(sha) => sha,
        Err(e) => return error(e.status(), e.to_string()),
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    if shared.reexec.send((sha256, tx)).await.is_err() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the supervisor is shutting down",
        );
    }
    match rx.await {
        Ok(Ok(())) => Json(serde_json::json!({"status": "re-executing"})).into_response(),
        Ok(Err(message)) => error(StatusCode::CONFLICT, message),
        Err(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the supervisor is shutting down",
        ),
    }
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

//! The HTTPS API on the API port.
//!
//! `GET /healthz`, `/readyz` and `/metrics` answer anyone (kubelet probes,
//! Prometheus). `GET /status`, `POST /promote`, `POST /demote` and `POST /backup` need a
//! client certificate from the cluster CA with CN `capstan-operator`; rustls
//! verifies the chain during the handshake and each request carries the
//! verified common name. Every request has a time limit, and every error is
//! an `ApiError` JSON body.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};

use crate::agents::server::{self, ServerTls, TimeLimit, error, require_operator};
use crate::contract::backup::{BackupRequest, SentinelRequest};
use crate::contract::instance::{DemoteRequest, PromoteRequest, Role};

use super::state::{Command, CommandError, Shared};

const TIME_LIMIT: TimeLimit = TimeLimit {
    read: Duration::from_secs(10),
    // Promotion and demotion include a shutdown, a rewind or a clone start.
    command: Duration::from_secs(120),
    status: StatusCode::SERVICE_UNAVAILABLE,
};
const MAX_BODY: usize = 64 * 1024;
/// How long after `/prepare-stop` a shutdown is fast.
const FAST_STOP_WINDOW: Duration = Duration::from_secs(120);

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

fn json<T: Serialize>(value: &T) -> Response {
    axum::Json(value).into_response()
}

pub fn router(shared: Arc<Shared>) -> Router {
    let operator = Router::new()
        .route("/status", get(status))
        .route("/promote", post(promote))
        .route("/demote", post(demote))
        .route("/backup", post(backup))
        .route("/sentinel", post(sentinel))
        .route("/prepare-stop", post(prepare_stop))
        .route("/inventory", post(inventory))
        .route(
            "/binary",
            post(replace_binary).layer(DefaultBodyLimit::disable()),
        )
        .route_layer(middleware::from_fn(require_operator));
    let routes = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(operator)
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such endpoint") });
    server::with_time_limit(routes, TIME_LIMIT)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(shared)
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

async fn metrics(State(shared): State<Arc<Shared>>, request: HeaderMap) -> Response {
    let report = shared.report();
    // The job may have finished since the loop last published.
    shared.metrics.observe_report(&report);
    let sample = if report.running {
        tokio::time::timeout(Duration::from_secs(5), shared.local.sample())
            .await
            .ok()
            .and_then(Result::ok)
    } else {
        None
    };
    shared.metrics.observe_sample(sample.as_ref());
    crate::monitoring::response(&request, shared.metrics.encode())
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

/// Installs a new manager binary (the operator's own, when Capstan was
/// upgraded) and re-executes into it; PostgreSQL keeps running. Answers
/// before the exec.
async fn replace_binary(
    State(shared): State<Arc<Shared>>,
    headers: axum::http::HeaderMap,
    body: axum::body::Body,
) -> Response {
    let sha256 = match crate::agents::binary::receive(&headers, body).await {
        Ok(sha) => sha,
        Err(e) => return error(e.status(), e.to_string()),
    };
    send(&shared, |tx| Command::Reexec(sha256, tx)).await
}

/// Starts a backup (or answers with the same one) without a round trip
/// through the loop: the job runs in the background, `/status` follows it.
async fn backup(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let request: BackupRequest = match parse_required(&body) {
        Ok(r) => r,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    // The published report, with a fence applied at once: a fenced
    // primary is no primary for backups.
    let report = shared.report();
    let fenced = report.lease.as_ref().is_some_and(|l| l.fenced);
    let primary = report.running && report.role == Role::Primary && !fenced;
    match shared.backups.request(request, primary, &shared.local) {
        Ok(job) => json(&job),
        Err(e) => command_error(e),
    }
}

/// The sentinel row of a backup a standby takes: written here, on the
/// primary, and replayed to the standby before pgBackRest starts it.
async fn sentinel(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let request: SentinelRequest = match parse_required(&body) {
        Ok(r) => r,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    let report = shared.report();
    let fenced = report.lease.as_ref().is_some_and(|l| l.fenced);
    if !(report.running && report.role == Role::Primary && !fenced) {
        return command_error(CommandError::Conflict(
            "the sentinel row is written on the primary; this instance is not the primary".into(),
        ));
    }
    match shared.local.write_sentinel(&request.backup).await {
        Ok(()) => json(&request),
        Err(e) => command_error(CommandError::Failed(format!(
            "cannot write the sentinel row of {}: {e}",
            request.backup
        ))),
    }
}

/// The primary is about to be stopped while the poolers hold clients (a
/// major upgrade): a CHECKPOINT now, while clients still run, so the
/// shutdown checkpoint has little left to write; and a shutdown in the
/// next two minutes skips the smart phase.
async fn prepare_stop(State(shared): State<Arc<Shared>>) -> Response {
    shared.stop_fast_within(FAST_STOP_WINDOW);
    match shared.local.checkpoint().await {
        Ok(()) => json(&serde_json::json!({})),
        Err(e) => command_error(CommandError::Failed(e.to_string())),
    }
}

/// A standby took a backup: what the repositories hold is read again on
/// the next tick (the primary reports it; retention follows it).
async fn inventory(State(shared): State<Arc<Shared>>) -> Response {
    shared.backups.inventory_changed();
    json(&serde_json::json!({}))
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
    let tls = loop {
        match ServerTls::load(shared.inputs.agent_tls()) {
            Ok(tls) => break tls,
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
    server::serve(
        listener,
        tls,
        router(shared),
        super::state::stopping(&mut shutdown),
    )
    .await;
    Ok(())
}

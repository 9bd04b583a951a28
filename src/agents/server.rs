//! The HTTPS side both agents share: TLS with the agent certificate
//! (reloaded when the kubelet rotates the mounted Secret), the verified
//! client-certificate common name on every request, the guard for routes
//! only the operator may call, a time limit on every request, and
//! `ApiError` JSON bodies for every error.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;
use tracing::Instrument;

use super::tls::{self, TlsError, TlsFiles};
use crate::contract::instance::ApiError;
use crate::contract::layout::OPERATOR_CLIENT_CN;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time for a client to send its request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The verified common name of the client certificate, if one was presented.
#[derive(Clone, Debug, Default)]
struct ClientIdentity(Option<String>);

/// An error response with an [`ApiError`] body.
pub fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (
        status,
        axum::Json(ApiError {
            error: message.into(),
        }),
    )
        .into_response()
}

/// Routes behind this layer answer only the operator's client certificate
/// (CN [`OPERATOR_CLIENT_CN`], chain verified by rustls in the handshake).
pub async fn require_operator(request: Request, next: Next) -> Response {
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

/// Upper bounds of a request, by kind, and the status of one that runs
/// out (each agent keeps the one its clients expect).
#[derive(Clone, Copy, Debug)]
pub struct TimeLimit {
    /// `GET` and the like.
    pub read: Duration,
    /// `POST`: commands, which may include a shutdown, a rewind or a PAUSE.
    pub command: Duration,
    pub status: StatusCode,
}

impl TimeLimit {
    fn of(&self, method: &Method) -> Duration {
        if method == Method::POST {
            self.command
        } else {
            self.read
        }
    }
}

/// Bounds every request of `router` by `limit`.
pub fn with_time_limit<S: Clone + Send + Sync + 'static>(
    router: Router<S>,
    limit: TimeLimit,
) -> Router<S> {
    router.layer(middleware::from_fn_with_state(limit, time_limit))
}

async fn time_limit(State(limit): State<TimeLimit>, request: Request, next: Next) -> Response {
    let bound = limit.of(request.method());
    match tokio::time::timeout(bound, next.run(request)).await {
        Ok(response) => response,
        Err(_) => error(
            limit.status,
            format!("the request took longer than {}s", bound.as_secs()),
        ),
    }
}

/// The API's server certificate, reloaded when its files change.
pub struct ServerTls {
    files: TlsFiles,
    acceptor: TlsAcceptor,
    stamp: Vec<Option<SystemTime>>,
}

impl ServerTls {
    pub fn load(files: TlsFiles) -> Result<Self, TlsError> {
        let stamp = files.stamp();
        let config = tls::server_config(&files)?;
        Ok(Self {
            files,
            acceptor: TlsAcceptor::from(Arc::new(config)),
            stamp,
        })
    }

    /// The acceptor for the next connection: rotated certificates (the
    /// kubelet updates the mounted Secret) apply from the next connection
    /// on; a broken new set keeps the old one.
    fn acceptor(&mut self) -> TlsAcceptor {
        let current = self.files.stamp();
        if current != self.stamp {
            self.stamp = current;
            match tls::server_config(&self.files) {
                Ok(config) => {
                    self.acceptor = TlsAcceptor::from(Arc::new(config));
                    tracing::info!("API certificates reloaded");
                }
                Err(e) => {
                    tracing::error!(error = %e, "new API certificates are unusable; keeping the old ones")
                }
            }
        }
        self.acceptor.clone()
    }
}

/// Serves `app` over TLS on `listener` until `shutdown` resolves; each
/// request carries the verified client identity for [`require_operator`].
pub async fn serve(
    listener: TcpListener,
    mut tls: ServerTls,
    app: Router,
    shutdown: impl Future<Output = ()>,
) {
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let acceptor = tls.acceptor();
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
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            return;
                        }
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
                    .header_read_timeout(HEADER_READ_TIMEOUT)
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

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;

    fn app(identity: Option<&str>) -> Router {
        let guarded = Router::new()
            .route("/status", get(|| async { "ok" }))
            .route_layer(middleware::from_fn(require_operator));
        let identity = ClientIdentity(identity.map(str::to_string));
        with_time_limit(
            Router::new()
                .route("/slow", get(|| tokio::time::sleep(Duration::from_secs(60))))
                .merge(guarded),
            TimeLimit {
                read: Duration::from_millis(50),
                command: Duration::from_secs(1),
                status: StatusCode::GATEWAY_TIMEOUT,
            },
        )
        .layer(middleware::from_fn(move |mut r: Request, n: Next| {
            r.extensions_mut().insert(identity.clone());
            n.run(r)
        }))
    }

    async fn status_of(app: Router, uri: &str) -> StatusCode {
        let request = Request::builder().uri(uri).body(Body::empty()).unwrap();
        app.oneshot(request).await.unwrap().status()
    }

    #[tokio::test]
    async fn only_the_operator_passes_the_guard() {
        assert_eq!(
            status_of(app(None), "/status").await,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            status_of(app(Some("someone")), "/status").await,
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            status_of(app(Some(OPERATOR_CLIENT_CN)), "/status").await,
            StatusCode::OK
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_request_gets_the_agents_timeout_status() {
        assert_eq!(
            status_of(app(None), "/slow").await,
            StatusCode::GATEWAY_TIMEOUT
        );
    }
}

//! The proxy-tier half of a switchover (DESIGN §5), for the operator:
//! PAUSE every pooler replica → the caller's step moves the primary →
//! RECONNECT → RESUME. Clients wait instead of failing.
//!
//! Pausing is all-or-nothing: when one replica cannot pause within the
//! timeout, every replica is resumed and the step does not run. RESUME is
//! attempted on every path, and each PAUSE also carries a hold limit after
//! which the pooler resumes by itself, in case this process dies half-way.
//!
//! Repointing: in a cluster PgBouncer's backend is the `<name>-rw` Service,
//! so the step only has to make the new primary the one the Service
//! selects (its role label). A completed PAUSE has already closed every
//! server connection; the RECONNECT afterwards also retires any connection
//! opened meanwhile (auth_query logins), so after RESUME every server
//! connection is a new one through the Service to the new primary.
//! Without Services (the real-process tests) the step moves a TCP
//! forwarder, or rewrites `backendHost`/`backendPort` in pooler.json and
//! waits until `/status` shows it applied (the supervisor RELOADs).

use std::future::Future;
use std::time::{Duration, Instant};

use futures::future::{BoxFuture, join_all};

use super::client::{ClientError, Endpoint, PoolerClient};
use crate::contract::pooler::{PauseRequest, PauseResult};

/// The pooler calls a switchover makes: the HTTPS client in production, a
/// double in the operator's tests.
pub trait PoolerControl: Send + Sync {
    fn pause<'a>(
        &'a self,
        ep: &'a Endpoint,
        request: &'a PauseRequest,
    ) -> BoxFuture<'a, Result<PauseResult, ClientError>>;
    fn resume<'a>(&'a self, ep: &'a Endpoint) -> BoxFuture<'a, Result<(), ClientError>>;
    fn reconnect<'a>(&'a self, ep: &'a Endpoint) -> BoxFuture<'a, Result<(), ClientError>>;
}

impl PoolerControl for PoolerClient {
    fn pause<'a>(
        &'a self,
        ep: &'a Endpoint,
        request: &'a PauseRequest,
    ) -> BoxFuture<'a, Result<PauseResult, ClientError>> {
        Box::pin(PoolerClient::pause(self, ep, request))
    }
    fn resume<'a>(&'a self, ep: &'a Endpoint) -> BoxFuture<'a, Result<(), ClientError>> {
        Box::pin(PoolerClient::resume(self, ep))
    }
    fn reconnect<'a>(&'a self, ep: &'a Endpoint) -> BoxFuture<'a, Result<(), ClientError>> {
        Box::pin(PoolerClient::reconnect(self, ep))
    }
}

#[derive(Clone, Debug)]
pub struct SwitchoverOptions {
    /// How long each pooler may take to release its server connections.
    pub pause_timeout: Duration,
    /// Poolers resume by themselves this long after pausing; longer than
    /// the step can take.
    pub max_hold: Duration,
}

impl Default for SwitchoverOptions {
    fn default() -> Self {
        Self {
            pause_timeout: Duration::from_secs(10),
            max_hold: Duration::from_secs(60),
        }
    }
}

/// A pooler and what went wrong with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub endpoint: String,
    pub message: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.endpoint, self.message)
    }
}

fn failure(ep: &Endpoint, e: &ClientError) -> Failure {
    Failure {
        endpoint: ep.name.clone(),
        message: e.to_string(),
    }
}

fn list(failures: &[Failure]) -> String {
    failures
        .iter()
        .map(Failure::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// A completed switchover.
#[derive(Clone, Debug)]
pub struct Switched<T> {
    /// What the step returned.
    pub value: T,
    /// From the first PAUSE until every RESUME returned: the longest any
    /// client was held.
    pub held: Duration,
    /// Per pooler, how long its PAUSE took (draining running transactions).
    pub paused_in: Vec<(String, Duration)>,
    /// Poolers whose RECONNECT failed (harmless after a completed PAUSE,
    /// which already closed their server connections).
    pub reconnect_failures: Vec<Failure>,
    /// Poolers that could not be resumed: they resume by themselves after
    /// the hold limit, until then their clients wait. The caller should
    /// retry [`resume_all`] and report it.
    pub resume_failures: Vec<Failure>,
}

#[derive(Debug, thiserror::Error)]
pub enum SwitchoverError<E: std::fmt::Display> {
    #[error(
        "could not pause every pooler ({}); all were resumed{} and the primary was not changed",
        list(.failures),
        resume_note(.resume_failures)
    )]
    Pause {
        failures: Vec<Failure>,
        resume_failures: Vec<Failure>,
    },
    #[error("switching the primary failed: {error}; poolers were resumed{}", resume_note(.resume_failures))]
    Step {
        error: E,
        resume_failures: Vec<Failure>,
    },
}

fn resume_note(failures: &[Failure]) -> String {
    if failures.is_empty() {
        String::new()
    } else {
        format!(" except {}", list(failures))
    }
}

/// PAUSEs every pooler, each resuming by itself after `max_hold`; returns
/// how long each took. All or nothing: when one fails, every pooler is
/// resumed again.
pub async fn pause_all<C: PoolerControl + ?Sized, E: std::fmt::Display>(
    client: &C,
    endpoints: &[Endpoint],
    options: &SwitchoverOptions,
) -> Result<Vec<(String, Duration)>, SwitchoverError<E>> {
    let request = PauseRequest {
        timeout_ms: options.pause_timeout.as_millis() as u64,
        max_hold_ms: Some(options.max_hold.as_millis() as u64),
    };
    let request = &request;
    let paused = join_all(
        endpoints
            .iter()
            .map(|ep| async move { (ep, client.pause(ep, request).await) }),
    )
    .await;
    let mut paused_in = Vec::new();
    let mut failures = Vec::new();
    for (ep, result) in paused {
        match result {
            Ok(r) => paused_in.push((ep.name.clone(), Duration::from_millis(r.elapsed_ms))),
            Err(e) => failures.push(failure(ep, &e)),
        }
    }
    if !failures.is_empty() {
        // Also the ones that failed: a timed-out request may still have paused.
        let resume_failures = resume_all(client, endpoints).await;
        return Err(SwitchoverError::Pause {
            failures,
            resume_failures,
        });
    }
    tracing::info!(poolers = endpoints.len(), "poolers paused");
    Ok(paused_in)
}

/// RECONNECTs every pooler: server connections opened from now on go to
/// the primary the `-rw` Service selects now. Returns those that failed.
pub async fn reconnect_all<C: PoolerControl + ?Sized>(
    client: &C,
    endpoints: &[Endpoint],
) -> Vec<Failure> {
    let reconnected = join_all(
        endpoints
            .iter()
            .map(|ep| async move { client.reconnect(ep).await.err().map(|e| failure(ep, &e)) }),
    )
    .await;
    reconnected.into_iter().flatten().collect()
}

/// RESUMEs every pooler (each retried a few times); returns those that failed.
pub async fn resume_all<C: PoolerControl + ?Sized>(
    client: &C,
    endpoints: &[Endpoint],
) -> Vec<Failure> {
    let results = join_all(endpoints.iter().map(|ep| async move {
        let mut last = None;
        for attempt in 0..3u64 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
            }
            match client.resume(ep).await {
                Ok(()) => return None,
                Err(e) => {
                    tracing::warn!(pooler = %ep.name, attempt, error = %e, "RESUME failed");
                    last = Some(failure(ep, &e));
                }
            }
        }
        last
    }))
    .await;
    results.into_iter().flatten().collect()
}

/// Holds client traffic on every pooler while `step` switches the primary.
pub async fn switchover<C, F, Fut, T, E>(
    client: &C,
    endpoints: &[Endpoint],
    options: &SwitchoverOptions,
    step: F,
) -> Result<Switched<T>, SwitchoverError<E>>
where
    C: PoolerControl + ?Sized,
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    let started = Instant::now();
    let paused_in = match pause_all(client, endpoints, options).await {
        Ok(paused_in) => paused_in,
        Err(e) => {
            tracing::warn!(error = %e, "pause failed; switchover abandoned");
            return Err(e);
        }
    };

    let outcome = step().await;

    let reconnect_failures = reconnect_all(client, endpoints).await;
    let resume_failures = resume_all(client, endpoints).await;
    let held = started.elapsed();
    if !resume_failures.is_empty() {
        tracing::error!(failures = %list(&resume_failures), "poolers not resumed; they resume after their hold limit");
    }
    match outcome {
        Ok(value) => {
            tracing::info!(
                held_ms = held.as_millis() as u64,
                "switchover done; poolers resumed"
            );
            Ok(Switched {
                value,
                held,
                paused_in,
                reconnect_failures,
                resume_failures,
            })
        }
        Err(error) => Err(SwitchoverError::Step {
            error,
            resume_failures,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn client() -> PoolerClient {
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
        PoolerClient::new(Arc::new(config)).with_timeout(Duration::from_millis(500))
    }

    #[tokio::test]
    async fn unreachable_pooler_means_the_step_never_runs() {
        // A port nothing listens on (connection refused).
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let ep = Endpoint {
            name: "db-pooler-x".into(),
            host: "127.0.0.1".into(),
            port,
            server_name: "localhost".into(),
        };
        let mut ran = false;
        let result = switchover(&client(), &[ep], &SwitchoverOptions::default(), || async {
            ran = true;
            Ok::<_, String>(())
        })
        .await;
        assert!(!ran);
        match result {
            Err(SwitchoverError::Pause {
                failures,
                resume_failures,
            }) => {
                assert_eq!(failures.len(), 1);
                assert_eq!(failures[0].endpoint, "db-pooler-x");
                assert_eq!(resume_failures.len(), 1);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn without_poolers_the_step_just_runs() {
        let r = switchover(&client(), &[], &SwitchoverOptions::default(), || async {
            Ok::<_, String>(7)
        })
        .await
        .unwrap();
        assert_eq!(r.value, 7);
        assert!(r.resume_failures.is_empty());
    }
}

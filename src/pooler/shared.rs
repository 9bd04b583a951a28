//! What the pooler supervisor loop shares with the API handlers: the
//! child's state for `/status`, `/readyz` and `/metrics`, and PAUSE, RESUME
//! and RECONNECT, serialised so they never interleave, with the hold limit
//! that resumes a pause nobody ended.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::unistd::Pid;

use super::admin::{AdminConsole, AdminError};
use crate::contract::pooler::PoolerReport;

#[derive(Clone, Debug, Default)]
pub(super) struct State {
    pub(super) child: Option<Pid>,
    pub(super) running: bool,
    pub(super) paused: bool,
    pub(super) backend_host: String,
    pub(super) backend_port: u16,
    pub(super) last_error: Option<String>,
    pub(super) restarts: u64,
    pub(super) reloads: u64,
    /// Bumped by every PAUSE and RESUME, so a hold-limit timer only resumes
    /// the pause it was started for.
    pub(super) pause_generation: u64,
}

/// How long RECONNECT waits for the backend to accept connections.
const BACKEND_WAIT: Duration = Duration::from_secs(2);

/// How long until `host:port` accepted a TCP connection (closed at once,
/// without a byte: PostgreSQL does not log such probes), or
/// [`BACKEND_WAIT`] when it never did.
async fn backend_accepts(host: &str, port: u16) -> Duration {
    let started = std::time::Instant::now();
    while started.elapsed() < BACKEND_WAIT {
        let attempt = tokio::time::timeout(
            Duration::from_millis(250),
            tokio::net::TcpStream::connect((host, port)),
        );
        if let Ok(Ok(_)) = attempt.await {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    started.elapsed()
}

/// State shared by the supervisor loop and the API handlers.
/// A new supervisor binary is installed (its checksum): re-execute into
/// it; the answer says whether it will.
pub type Reexec = (String, tokio::sync::oneshot::Sender<Result<(), String>>);

pub struct Shared {
    pub name: String,
    pub admin: AdminConsole,
    /// Mounted TLS Secrets, reported so the operator knows which CAs
    /// this pod trusts.
    pub tls: Vec<(&'static str, crate::agents::tls::TlsFiles)>,
    pub reexec: tokio::sync::mpsc::Sender<Reexec>,
    state: Mutex<State>,
    /// Serialises PAUSE/RESUME/RECONNECT so they never interleave.
    ops: tokio::sync::Mutex<()>,
    shutting_down: AtomicBool,
}

/// A point-in-time view for `/status`, `/readyz` and `/metrics`.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub running: bool,
    pub paused: bool,
    pub shutting_down: bool,
    pub backend_host: String,
    pub backend_port: u16,
    pub last_error: Option<String>,
    pub restarts: u64,
    pub reloads: u64,
}

impl Shared {
    pub(super) fn new(
        name: String,
        admin: AdminConsole,
        reexec: tokio::sync::mpsc::Sender<Reexec>,
        tls: Vec<(&'static str, crate::agents::tls::TlsFiles)>,
    ) -> Self {
        Self {
            name,
            admin,
            tls,
            reexec,
            state: Mutex::new(State::default()),
            ops: tokio::sync::Mutex::new(()),
            shutting_down: AtomicBool::new(false),
        }
    }

    /// SIGTERM arrived: `/readyz` fails from now on while PgBouncer drains.
    pub(super) fn set_shutting_down(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    pub(super) fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A poisoned lock only means a panic elsewhere; the data is plain.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn snapshot(&self) -> Snapshot {
        let s = self.state();
        Snapshot {
            running: s.running,
            paused: s.paused,
            shutting_down: self.shutting_down.load(Ordering::SeqCst),
            backend_host: s.backend_host.clone(),
            backend_port: s.backend_port,
            last_error: s.last_error.clone(),
            restarts: s.restarts,
            reloads: s.reloads,
        }
    }

    pub(super) fn set_error(&self, message: Option<String>) {
        self.state().last_error = message;
    }

    /// Ready: PgBouncer runs, answers, and the pod is not shutting down.
    pub async fn ready(&self) -> Result<(), String> {
        let snap = self.snapshot();
        if snap.shutting_down {
            return Err("shutting down".into());
        }
        if !snap.running {
            return Err(snap
                .last_error
                .unwrap_or_else(|| "PgBouncer is not running".into()));
        }
        self.admin.ping().await.map_err(|e| e.to_string())
    }

    /// PAUSE bounded by `timeout`; on success the pooler resumes by itself
    /// after `max_hold` unless RESUME comes first (an operator that dies
    /// mid-switchover must not leave clients waiting forever).
    pub async fn pause(
        self: &Arc<Self>,
        timeout: Duration,
        max_hold: Duration,
    ) -> Result<Duration, AdminError> {
        let _op = self.ops.lock().await;
        match self.admin.pause(timeout).await {
            Ok(elapsed) => {
                let generation = {
                    let mut s = self.state();
                    s.paused = true;
                    s.pause_generation += 1;
                    s.pause_generation
                };
                tracing::info!(elapsed_ms = elapsed.as_millis() as u64, "pooler paused");
                let shared = Arc::clone(self);
                tokio::spawn(async move {
                    tokio::time::sleep(max_hold).await;
                    let _op = shared.ops.lock().await;
                    let still = {
                        let s = shared.state();
                        s.paused && s.pause_generation == generation
                    };
                    if still {
                        tracing::warn!(
                            max_hold_ms = max_hold.as_millis() as u64,
                            "no RESUME within the hold limit; resuming"
                        );
                        match shared.admin.resume().await {
                            Ok(()) => shared.mark_resumed(),
                            Err(e) => {
                                tracing::error!(error = %e, "RESUME after the hold limit failed")
                            }
                        }
                    }
                });
                Ok(elapsed)
            }
            Err(e) => {
                tracing::warn!(error = %e, "PAUSE failed");
                self.mark_resumed();
                Err(e)
            }
        }
    }

    fn mark_resumed(&self) {
        let mut s = self.state();
        s.paused = false;
        s.pause_generation += 1;
    }

    pub async fn resume(&self) -> Result<(), AdminError> {
        let _op = self.ops.lock().await;
        self.admin.resume().await?;
        self.mark_resumed();
        tracing::info!("pooler resumed");
        Ok(())
    }

    /// RECONNECT, then wait (at most [`BACKEND_WAIT`]) until the backend
    /// accepts TCP connections. After a change of primary the Service
    /// routes to the new one a moment after its label moved; a RESUME
    /// before that makes PgBouncer's first connect fail, and it retries
    /// only after `server_login_retry`, one connection at a time.
    pub async fn reconnect(&self) -> Result<(), AdminError> {
        let _op = self.ops.lock().await;
        self.admin.reconnect().await?;
        let (host, port) = {
            let s = self.state();
            (s.backend_host.clone(), s.backend_port)
        };
        let waited = backend_accepts(&host, port).await;
        tracing::info!(
            backend = %format!("{host}:{port}"),
            waited_ms = waited.as_millis() as u64,
            "server connections will reconnect"
        );
        Ok(())
    }

    /// `GET /status`: the pool figures summed over all pools.
    pub async fn report(&self) -> PoolerReport {
        let snap = self.snapshot();
        let mut report = PoolerReport {
            name: self.name.clone(),
            running: snap.running,
            paused: snap.paused,
            backend_host: snap.backend_host,
            backend_port: Some(snap.backend_port),
            restarts: snap.restarts,
            reloads: snap.reloads,
            clients_active: 0,
            clients_waiting: 0,
            servers_active: 0,
            servers_idle: 0,
            last_error: snap.last_error,
            agent: Some(crate::agents::binary::build()),
            tls: crate::agents::tls::mounted(&self.tls),
        };
        if snap.running {
            match self.admin.show_pools().await {
                Ok(pools) => {
                    for p in pools.iter().filter(|p| p.database != "pgbouncer") {
                        report.clients_active += p.cl_active;
                        report.clients_waiting += p.cl_waiting;
                        report.servers_active += p.sv_active;
                        report.servers_idle += p.sv_idle;
                    }
                }
                Err(e) => report.last_error = Some(e.to_string()),
            }
        }
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn free_port() -> u16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    }

    #[tokio::test]
    async fn waits_until_the_backend_listens_and_gives_up_after_the_bound() {
        let port = free_port();
        // Nobody listens yet: the wait lasts until the listener appears.
        let listen_later = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            tokio::net::TcpListener::bind(("127.0.0.1", port))
                .await
                .unwrap()
        });
        let waited = backend_accepts("127.0.0.1", port).await;
        let listener = listen_later.await.unwrap();
        assert!(waited >= Duration::from_millis(300), "{waited:?}");
        assert!(waited < BACKEND_WAIT, "{waited:?}");
        // Listening: at once.
        assert!(backend_accepts("127.0.0.1", port).await < Duration::from_millis(200));
        drop(listener);
        // Never: the bound.
        assert!(backend_accepts("127.0.0.1", free_port()).await >= BACKEND_WAIT);
    }
}

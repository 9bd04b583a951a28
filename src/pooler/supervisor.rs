//! `capstan pooler`: PID 1 of a pooler pod. Renders the PgBouncer files,
//! runs `pgbouncer` as its child, restarts it with backoff when it dies,
//! RELOADs it when the rendered files change (the kubelet refreshes mounted
//! ConfigMaps and Secrets, so they are polled), and drains it on SIGTERM.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use rand::Rng;
use rand::distr::Alphanumeric;
use sha2::{Digest, Sha256};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use super::admin::AdminConsole;
use super::config::{self, Credentials, Environment, Rendered};
use super::process::{self, Exit, Identity, ProcessError};
use super::shared::Shared;
use crate::agents::server::{self, ServerTls};
use crate::agents::tls::{TlsError, TlsFiles};
use crate::contract::layout::{files, mounts};
use crate::contract::settings::PoolerSettings;
use crate::postgres::roles;

/// A child that ran this long is healthy again: the next crash restarts fast.
const HEALTHY_RUN: Duration = Duration::from_secs(60);
/// How long a fresh PgBouncer may take to answer on its admin console.
const START_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("cannot prepare {path}: {message}")]
    Io { path: String, message: String },
    #[error("cannot listen on {addr} for the API: {message}")]
    Listen { addr: SocketAddr, message: String },
    #[error("cannot install a signal handler: {0}")]
    Signal(String),
}

/// Why the current settings cannot be applied (kept as `last_error`).
#[derive(Debug, thiserror::Error)]
enum ApplyError {
    #[error("cannot read {path}: {message}")]
    Read { path: String, message: String },
    #[error("{path} is not a valid pooler settings document: {message}")]
    Parse { path: String, message: String },
    #[error("the pooler Secret names user {0:?}; PgBouncer's auth_user must be capstan_pooler")]
    WrongUser(String),
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("cannot write {path}: {message}")]
    Write { path: String, message: String },
}

/// What `capstan pooler` needs to know; see [`super::Args`].
#[derive(Clone, Debug)]
pub struct Options {
    pub name: String,
    pub settings_path: PathBuf,
    pub run_dir: PathBuf,
    pub tls_dir: PathBuf,
    /// Certificate of the HTTPS API (the agent certificate).
    pub api_tls_dir: PathBuf,
    pub secrets_dir: PathBuf,
    pub listen_addr: String,
    pub listen_port: u16,
    pub api_port: u16,
    pub pgbouncer: PathBuf,
    pub run_as: Option<String>,
    pub poll_interval: Duration,
    pub shutdown_timeout: Duration,
}

/// What one supervisor image passes to the next across `exec`. No Debug:
/// it carries the admin password.
#[derive(serde::Serialize, serde::Deserialize, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Handover {
    /// The running PgBouncer (our child still).
    pub pgbouncer: Option<i32>,
    /// The admin console's password it was started with.
    pub admin_password: String,
    /// Checksum of the binary, verified when it was installed.
    pub sha256: Option<String>,
}

/// Time for the API's answer to reach the operator before `exec` closes
/// the connection.
const ANSWER_FLUSH: Duration = Duration::from_millis(300);

/// Runs the supervisor until SIGTERM/SIGINT and a drained PgBouncer.
pub async fn run(opts: Options, handover: Option<Handover>) -> Result<(), SupervisorError> {
    // First: a re-executed PID 1 has no handlers until it installs them.
    let mut sigterm =
        signal(SignalKind::terminate()).map_err(|e| SupervisorError::Signal(e.to_string()))?;
    let mut sigint =
        signal(SignalKind::interrupt()).map_err(|e| SupervisorError::Signal(e.to_string()))?;
    crate::agents::binary::start_hashing(handover.as_ref().and_then(|h| h.sha256.clone()));
    let identity = opts.run_as.as_deref().map(Identity::lookup).transpose()?;
    prepare_run_dir(&opts.run_dir, identity)?;
    let admin_password: String = match &handover {
        Some(h) => h.admin_password.clone(),
        None => rand::rng()
            .sample_iter(&Alphanumeric)
            .take(40)
            .map(char::from)
            .collect(),
    };
    let (reexec_tx, mut reexec) = mpsc::channel(1);
    let api_tls = ServerTls::load(TlsFiles::new(opts.api_tls_dir.clone()))?;
    let shared = Arc::new(Shared::new(
        opts.name.clone(),
        AdminConsole::new(
            opts.run_dir.clone(),
            opts.listen_port,
            admin_password.clone(),
        ),
        reexec_tx,
        vec![
            (mounts::POOLER_TLS, TlsFiles::new(opts.tls_dir.clone())),
            (mounts::AGENT_TLS, TlsFiles::new(opts.api_tls_dir.clone())),
        ],
    ));

    crate::agents::pid1::start_reaping();
    let (exits_tx, mut exits) = mpsc::unbounded_channel();
    let adopted = handover
        .as_ref()
        .and_then(|h| h.pgbouncer)
        .map(Pid::from_raw);
    if let Some(pid) = adopted {
        process::adopt(pid, exits_tx.clone());
        let mut s = shared.state();
        s.child = Some(pid);
        s.running = true;
        tracing::info!(pid = pid.as_raw(), "adopted the running pgbouncer");
        let shared = Arc::clone(&shared);
        // The session a switchover PAUSEs through, opened ahead as at a start.
        tokio::spawn(async move {
            if let Err(e) = shared.admin.warm_up().await {
                tracing::debug!(error = %e, "cannot open the PAUSE session yet");
            }
        });
    }

    let api_addr: SocketAddr = format!("{}:{}", opts.listen_addr, opts.api_port)
        .parse()
        .map_err(|e: std::net::AddrParseError| SupervisorError::Listen {
            addr: SocketAddr::from(([0, 0, 0, 0], opts.api_port)),
            message: format!("{:?} is not an IP address: {e}", opts.listen_addr),
        })?;
    let listener =
        tokio::net::TcpListener::bind(api_addr)
            .await
            .map_err(|e| SupervisorError::Listen {
                addr: api_addr,
                message: e.to_string(),
            })?;
    tokio::spawn(server::serve(
        listener,
        api_tls,
        super::api::router(Arc::clone(&shared)),
        std::future::pending(),
    ));
    tracing::info!(api = %api_addr, "pooler API listening");

    let mut sup = Supervisor {
        opts,
        identity,
        shared: Arc::clone(&shared),
        admin_password,
        exits: exits_tx,
        fingerprint: None,
    };
    let mut restart_at: Option<tokio::time::Instant> =
        adopted.is_none().then(tokio::time::Instant::now);
    let mut crashes: u32 = 0;
    let mut started_at = Instant::now();
    let mut poll = tokio::time::interval(sup.opts.poll_interval);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    loop {
        let child = shared.state().child;
        tokio::select! {
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
            Some((pid, exit)) = exits.recv() => {
                // Only our PgBouncers report here (orphans are reaped
                // silently); one that is no longer the current child is old news.
                if Some(pid) != child {
                    tracing::debug!(pid = pid.as_raw(), %exit, "exit of a former pgbouncer");
                    continue;
                }
                if started_at.elapsed() >= HEALTHY_RUN {
                    crashes = 0;
                }
                let delay = process::backoff(crashes);
                crashes = crashes.saturating_add(1);
                let message = format!("pgbouncer ended ({exit}); restarting in {delay:?}");
                tracing::warn!(pid = pid.as_raw(), %exit, delay_ms = delay.as_millis() as u64, "pgbouncer ended; restarting");
                {
                    let mut s = shared.state();
                    s.child = None;
                    s.restarts += 1;
                    s.running = false;
                    s.paused = false;
                    s.pause_generation += 1;
                    s.last_error = Some(message);
                }
                restart_at = Some(tokio::time::Instant::now() + delay);
            }
            _ = sleep_until(restart_at), if restart_at.is_some() && child.is_none() => {
                match sup.start() {
                    Ok(()) => {
                        restart_at = None;
                        started_at = Instant::now();
                    }
                    Err(message) => {
                        let delay = process::backoff(crashes).max(sup.opts.poll_interval);
                        crashes = crashes.saturating_add(1);
                        tracing::error!(error = %message, "cannot start pgbouncer");
                        shared.set_error(Some(message));
                        restart_at = Some(tokio::time::Instant::now() + delay);
                    }
                }
            }
            _ = poll.tick() => {
                if child.is_some() {
                    sup.refresh().await;
                }
            }
            Some((sha256, reply)) = reexec.recv() => {
                let state = shared.snapshot();
                if state.paused {
                    let _ = reply.send(Err("not taking the new binary now: PgBouncer is paused (a switchover holds clients); ask again when it resumed".into()));
                    continue;
                }
                let handover = Handover {
                    pgbouncer: child.map(Pid::as_raw),
                    admin_password: sup.admin_password.clone(),
                    sha256: Some(sha256),
                };
                let _ = reply.send(Ok(()));
                tokio::time::sleep(ANSWER_FLUSH).await;
                tracing::info!(operation = "agent-upgrade", pgbouncer = ?handover.pgbouncer, "handing PgBouncer over to the new supervisor binary");
                let error = crate::agents::binary::exec(&handover);
                tracing::error!(operation = "agent-upgrade", error = %error, "still running the old binary");
                shared.set_error(Some(error.to_string()));
            }
        }
    }

    shared.set_shutting_down();
    let child = shared.state().child;
    if let Some(pid) = child {
        drain(pid, &mut exits, sup.opts.shutdown_timeout).await;
    }
    tracing::info!("pooler supervisor stopped");
    Ok(())
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// SIGTERM handling. PgBouncer 1.18's SIGINT is its "safe shutdown" (PAUSE,
/// then exit once every server connection is released, so transactions
/// finish); SHUTDOWN WAIT_FOR_CLIENTS only exists from 1.23 on. Bounded by
/// `timeout`, then SIGTERM (immediate shutdown), then SIGKILL.
async fn drain(pid: Pid, exits: &mut mpsc::UnboundedReceiver<(Pid, Exit)>, timeout: Duration) {
    tracing::info!(timeout_s = timeout.as_secs(), "draining pgbouncer");
    for (signal, wait) in [
        (Signal::SIGINT, timeout),
        (Signal::SIGTERM, Duration::from_secs(2)),
        (Signal::SIGKILL, Duration::from_secs(2)),
    ] {
        process::signal_child(pid, signal);
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, exits.recv()).await {
                Ok(Some((p, exit))) if p == pid => {
                    tracing::info!(%exit, "pgbouncer stopped");
                    return;
                }
                Ok(Some(_)) => continue,
                Ok(None) => return,
                Err(_) => break,
            }
        }
        tracing::warn!(%signal, "pgbouncer still running");
    }
}

struct Supervisor {
    opts: Options,
    identity: Option<Identity>,
    shared: Arc<Shared>,
    admin_password: String,
    /// Where the exit of each PgBouncer it starts arrives.
    exits: mpsc::UnboundedSender<(Pid, Exit)>,
    /// Of the rendered files plus the TLS files PgBouncer reads.
    fingerprint: Option<[u8; 32]>,
}

impl Supervisor {
    fn environment(&self) -> Environment {
        Environment {
            listen_addr: self.opts.listen_addr.clone(),
            listen_port: self.opts.listen_port,
            run_dir: self.opts.run_dir.clone(),
            tls_dir: self.opts.tls_dir.clone(),
        }
    }

    fn load(&self) -> Result<(PoolerSettings, Rendered), ApplyError> {
        let path = &self.opts.settings_path;
        let text = std::fs::read_to_string(path).map_err(|e| ApplyError::Read {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        let settings: PoolerSettings =
            serde_json::from_str(&text).map_err(|e| ApplyError::Parse {
                path: path.display().to_string(),
                message: e.to_string(),
            })?;
        let username = read_secret(&self.opts.secrets_dir.join(files::USERNAME))?;
        if username != roles::POOLER {
            return Err(ApplyError::WrongUser(username));
        }
        let credentials = Credentials {
            pooler_password: read_secret(&self.opts.secrets_dir.join(files::PASSWORD))?,
            admin_password: self.admin_password.clone(),
        };
        let rendered = config::render(&settings, &self.environment(), &credentials)?;
        Ok((settings, rendered))
    }

    fn fingerprint_of(dir: &std::path::Path) -> [u8; 32] {
        let mut h = Sha256::new();
        for f in [files::TLS_CRT, files::TLS_KEY, files::CA_CRT] {
            // A missing file hashes as empty; the reader reports the real error.
            h.update(std::fs::read(dir.join(f)).unwrap_or_default());
            h.update([0]);
        }
        h.finalize().into()
    }

    /// Renders and, when anything changed, writes the files. Returns whether
    /// they changed.
    fn apply(&mut self) -> Result<bool, ApplyError> {
        let (settings, rendered) = self.load()?;
        let tls = Self::fingerprint_of(&self.opts.tls_dir);
        let mut h = Sha256::new();
        h.update(rendered.ini.as_bytes());
        h.update([0]);
        h.update(rendered.auth_file.as_bytes());
        h.update(tls);
        let fingerprint: [u8; 32] = h.finalize().into();
        {
            let mut s = self.shared.state();
            s.backend_host = settings.backend_host.clone();
            s.backend_port = settings.backend_port;
        }
        if self.fingerprint == Some(fingerprint) {
            return Ok(false);
        }
        // The auth file first: a new ini may name users only it knows.
        self.write(config::AUTH_FILE, &rendered.auth_file)?;
        self.write(config::INI_FILE, &rendered.ini)?;
        self.fingerprint = Some(fingerprint);
        Ok(true)
    }

    fn write(&self, name: &str, content: &str) -> Result<(), ApplyError> {
        let path = self.opts.run_dir.join(name);
        let partial = self.opts.run_dir.join(format!(".{name}.partial"));
        let err = |e: std::io::Error| ApplyError::Write {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        std::fs::write(&partial, content).map_err(err)?;
        std::fs::set_permissions(&partial, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
        if let Some(id) = self.identity {
            nix::unistd::chown(&partial, Some(id.uid), Some(id.gid))
                .map_err(|e| err(std::io::Error::from(e)))?;
        }
        std::fs::rename(&partial, &path).map_err(err)
    }

    /// Writes the files and starts PgBouncer; readiness follows once its
    /// admin console answers.
    fn start(&mut self) -> Result<(), String> {
        self.fingerprint = None;
        self.apply().map_err(|e| e.to_string())?;
        let ini = self.opts.run_dir.join(config::INI_FILE);
        let pid = process::spawn(
            &self.opts.pgbouncer,
            &[ini.into_os_string()],
            self.identity,
            self.exits.clone(),
        )
        .map_err(|e| e.to_string())?;
        tracing::info!(pid = pid.as_raw(), "pgbouncer started");
        {
            let mut s = self.shared.state();
            s.child = Some(pid);
            s.running = false;
        }
        let shared = Arc::clone(&self.shared);
        tokio::spawn(async move {
            let deadline = Instant::now() + START_WAIT;
            loop {
                match shared.admin.ping().await {
                    Ok(()) => {
                        {
                            let mut s = shared.state();
                            if s.child == Some(pid) {
                                s.running = true;
                                s.last_error = None;
                                tracing::info!(pid = pid.as_raw(), "pgbouncer accepts connections");
                            }
                        }
                        if let Err(e) = shared.admin.warm_up().await {
                            tracing::debug!(error = %e, "cannot open the PAUSE session yet");
                        }
                        return;
                    }
                    Err(e) if Instant::now() >= deadline => {
                        tracing::warn!(error = %e, "pgbouncer does not answer yet");
                        return;
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
        Ok(())
    }

    /// Poll: apply changed settings with RELOAD, track liveness.
    async fn refresh(&mut self) {
        match self.apply() {
            Ok(true) => match self.shared.admin.reload().await {
                Ok(()) => {
                    self.shared.state().reloads += 1;
                    tracing::info!("configuration changed; pgbouncer reloaded");
                }
                Err(e) => {
                    tracing::error!(error = %e, "RELOAD failed");
                    self.shared.set_error(Some(e.to_string()));
                    // Try again on the next poll.
                    self.fingerprint = None;
                }
            },
            Ok(false) => {}
            Err(e) => {
                let message = e.to_string();
                let previous = self.shared.snapshot().last_error;
                if previous.as_deref() != Some(message.as_str()) {
                    tracing::error!(error = %message, "settings not applied; PgBouncer keeps its current configuration");
                }
                self.shared.set_error(Some(message));
                return;
            }
        }
        let child = self.shared.state().child;
        let alive = self.shared.admin.ping().await;
        let mut s = self.shared.state();
        if s.child == child && child.is_some() {
            match alive {
                Ok(()) => {
                    s.running = true;
                    if s.last_error
                        .as_deref()
                        .is_some_and(|e| e.starts_with("pgbouncer"))
                    {
                        s.last_error = None;
                    }
                }
                Err(e) => {
                    s.running = false;
                    s.last_error = Some(format!("pgbouncer does not answer: {e}"));
                }
            }
        }
    }
}

fn read_secret(path: &Path) -> Result<String, ApplyError> {
    let text = std::fs::read_to_string(path).map_err(|e| ApplyError::Read {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    Ok(text.trim_end_matches(['\n', '\r']).to_string())
}

/// The run directory is private to PgBouncer's user: it holds the auth file
/// and the admin socket.
fn prepare_run_dir(dir: &Path, identity: Option<Identity>) -> Result<(), SupervisorError> {
    let err = |e: std::io::Error| SupervisorError::Io {
        path: dir.display().to_string(),
        message: e.to_string(),
    };
    std::fs::create_dir_all(dir).map_err(err)?;
    if let Some(id) = identity {
        nix::unistd::chown(dir, Some(id.uid), Some(id.gid))
            .map_err(|e| err(std::io::Error::from(e)))?;
    }
    // A mounted emptyDir may belong to root; the files in it are 0600 anyway.
    if let Err(e) = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)) {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot make the run directory private");
    }
    Ok(())
}

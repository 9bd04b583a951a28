//! Container probes and lifecycle hooks: httpGet (HTTP and HTTPS without
//! certificate verification, like the kubelet), tcpSocket and exec (inside the
//! container's namespaces, cgroup and user), with the kubelet's thresholds.
//!
//! Network probes connect from the node address, which partitions leave alone
//! (a partitioned node's kubelet still reaches its own pods).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::{HTTPGetAction, LifecycleHandler, Probe, TCPSocketAction};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use rustls::pki_types::ServerName;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;

use crate::ipam::Cidr;
use crate::sys::spawn::{Namespaces, NsFds, SpawnSpec, spawn};
use crate::sys::{Signal, send_signal};
use crate::users::Credentials;

/// How a probe reaches its container.
pub struct ProbeTarget {
    pub pod_ip: Ipv4Addr,
    pub node_ip: Ipv4Addr,
    /// Targets in this range (or on loopback) are reached from `node_ip`.
    pub pod_cidr: Cidr,
    /// Named container ports, for `port: http`.
    pub ports: BTreeMap<String, u16>,
    /// `None` when the container's namespaces could not be opened.
    pub exec: Option<ExecContext>,
}

/// What an exec probe or hook inherits from its container.
pub struct ExecContext {
    pub env: Vec<(String, String)>,
    pub cwd: Option<PathBuf>,
    pub creds: Credentials,
    pub cgroup_procs: PathBuf,
    pub ns: Arc<NsFds>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failure(String),
}

enum Action<'a> {
    Exec(&'a [String]),
    Http(&'a HTTPGetAction),
    Tcp(&'a TCPSocketAction),
    Sleep(i64),
    Unsupported(&'static str),
}

fn probe_action(p: &Probe) -> Action<'_> {
    if let Some(e) = &p.exec {
        Action::Exec(e.command.as_deref().unwrap_or_default())
    } else if let Some(h) = &p.http_get {
        Action::Http(h)
    } else if let Some(t) = &p.tcp_socket {
        Action::Tcp(t)
    } else if p.grpc.is_some() {
        Action::Unsupported("gRPC probes are not supported by the e2e kubelet")
    } else {
        Action::Unsupported("probe has no handler")
    }
}

fn hook_action(h: &LifecycleHandler) -> Action<'_> {
    if let Some(e) = &h.exec {
        Action::Exec(e.command.as_deref().unwrap_or_default())
    } else if let Some(g) = &h.http_get {
        Action::Http(g)
    } else if let Some(t) = &h.tcp_socket {
        Action::Tcp(t)
    } else if let Some(s) = &h.sleep {
        Action::Sleep(s.seconds)
    } else {
        Action::Unsupported("lifecycle hook has no handler")
    }
}

/// Runs `probe` once, bounded by its `timeoutSeconds`.
pub async fn check(probe: &Probe, target: &ProbeTarget) -> Outcome {
    let timeout = Duration::from_secs(probe.timeout_seconds.unwrap_or(1).max(1) as u64);
    run_action(probe_action(probe), timeout, target).await
}

/// Runs a lifecycle hook, bounded by `limit`.
pub async fn run_hook(hook: &LifecycleHandler, limit: Duration, target: &ProbeTarget) -> Outcome {
    run_action(hook_action(hook), limit, target).await
}

async fn run_action(action: Action<'_>, timeout: Duration, target: &ProbeTarget) -> Outcome {
    let result = match action {
        Action::Exec(cmd) => return exec(cmd, timeout, target).await,
        Action::Http(h) => tokio::time::timeout(timeout, http_get(h, target)).await,
        Action::Tcp(t) => tokio::time::timeout(timeout, tcp(t, target)).await,
        Action::Sleep(s) => {
            tokio::time::sleep(Duration::from_secs(s.max(0) as u64).min(timeout)).await;
            return Outcome::Success;
        }
        Action::Unsupported(why) => return Outcome::Failure(why.to_string()),
    };
    match result {
        Ok(Ok(())) => Outcome::Success,
        Ok(Err(why)) => Outcome::Failure(why),
        Err(_) => Outcome::Failure(format!("timeout after {}s", timeout.as_secs())),
    }
}

fn port(p: &IntOrString, target: &ProbeTarget) -> Result<u16, String> {
    match p {
        IntOrString::Int(n) => u16::try_from(*n).map_err(|_| format!("invalid port {n}")),
        IntOrString::String(name) => match name.parse::<u16>() {
            Ok(n) => Ok(n),
            Err(_) => target
                .ports
                .get(name)
                .copied()
                .ok_or_else(|| format!("no container port named {name:?}")),
        },
    }
}

async fn address(
    host: Option<&str>,
    port: u16,
    target: &ProbeTarget,
) -> Result<SocketAddr, String> {
    match host.filter(|h| !h.is_empty()) {
        None => Ok(SocketAddr::new(IpAddr::V4(target.pod_ip), port)),
        Some(h) => match h.parse::<IpAddr>() {
            Ok(ip) => Ok(SocketAddr::new(ip, port)),
            Err(_) => tokio::net::lookup_host((h, port))
                .await
                .map_err(|e| format!("cannot resolve {h}: {e}"))?
                .next()
                .ok_or_else(|| format!("cannot resolve {h}")),
        },
    }
}

/// Connects from the node address when the target is a pod address or on
/// loopback (without binding, the kernel would pick the destination itself as
/// source for an address of an AnyIP local route).
async fn connect(addr: SocketAddr, target: &ProbeTarget) -> Result<TcpStream, String> {
    let socket = match addr {
        SocketAddr::V4(v4) => {
            let s = TcpSocket::new_v4().map_err(|e| e.to_string())?;
            if v4.ip().is_loopback() || target.pod_cidr.contains(*v4.ip()) {
                s.bind(SocketAddr::new(IpAddr::V4(target.node_ip), 0))
                    .map_err(|e| e.to_string())?;
            }
            s
        }
        SocketAddr::V6(_) => TcpSocket::new_v6().map_err(|e| e.to_string())?,
    };
    socket
        .connect(addr)
        .await
        .map_err(|e| format!("dial tcp {addr}: {e}"))
}

async fn tcp(t: &TCPSocketAction, target: &ProbeTarget) -> Result<(), String> {
    let addr = address(t.host.as_deref(), port(&t.port, target)?, target).await?;
    connect(addr, target).await.map(drop)
}

async fn http_get(h: &HTTPGetAction, target: &ProbeTarget) -> Result<(), String> {
    let port = port(&h.port, target)?;
    let addr = address(h.host.as_deref(), port, target).await?;
    let stream = connect(addr, target).await?;
    let path = h
        .path
        .clone()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "/".to_string());
    let host_header = match h.host.as_deref().filter(|h| !h.is_empty()) {
        Some(host) => format!("{host}:{port}"),
        None => addr.to_string(),
    };
    let mut request = hyper::Request::get(path.as_str())
        .header(hyper::header::HOST, host_header)
        .header(hyper::header::USER_AGENT, "kube-probe/1.33")
        .header(hyper::header::ACCEPT, "*/*")
        .header(hyper::header::CONNECTION, "close");
    for header in h.http_headers.iter().flatten() {
        request = request.header(header.name.as_str(), header.value.as_str());
    }
    let request = request
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let status = if h
        .scheme
        .as_deref()
        .is_some_and(|s| s.eq_ignore_ascii_case("https"))
    {
        let server_name = match h.host.as_deref().filter(|h| !h.is_empty()) {
            Some(host) => ServerName::try_from(host.to_string()).map_err(|e| e.to_string())?,
            None => ServerName::IpAddress(addr.ip().into()),
        };
        let tls = tokio_rustls::TlsConnector::from(insecure_tls_config()?)
            .connect(server_name, stream)
            .await
            .map_err(|e| format!("TLS handshake with {addr}: {e}"))?;
        send(TokioIo::new(tls), request).await?
    } else {
        send(TokioIo::new(stream), request).await?
    };
    if (200..400).contains(&status) {
        Ok(())
    } else {
        Err(format!("HTTP probe failed with statuscode: {status}"))
    }
}

async fn send<T>(io: T, request: hyper::Request<Empty<Bytes>>) -> Result<u16, String>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    let driver = tokio::spawn(conn);
    let result = sender
        .send_request(request)
        .await
        .map(|r| r.status().as_u16())
        .map_err(|e| e.to_string());
    driver.abort();
    result
}

/// The kubelet does not verify probe targets' certificates.
fn insecure_tls_config() -> Result<Arc<rustls::ClientConfig>, String> {
    #[derive(Debug)]
    struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

    impl rustls::client::danger::ServerCertVerifier for AcceptAny {
        fn verify_server_cert(
            &self,
            _end_entity: &rustls::pki_types::CertificateDer<'_>,
            _intermediates: &[rustls::pki_types::CertificateDer<'_>],
            _server_name: &ServerName<'_>,
            _ocsp: &[u8],
            _now: rustls::pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            _message: &[u8],
            _cert: &rustls::pki_types::CertificateDer<'_>,
            _dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }

        fn verify_tls13_signature(
            &self,
            _message: &[u8],
            _cert: &rustls::pki_types::CertificateDer<'_>,
            _dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }

        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
        .with_no_client_auth();
    Ok(Arc::new(config))
}

async fn exec(cmd: &[String], timeout: Duration, target: &ProbeTarget) -> Outcome {
    let Some(ctx) = &target.exec else {
        return Outcome::Failure("container is not running".to_string());
    };
    let spawned = spawn(SpawnSpec {
        argv: cmd.to_vec(),
        env: ctx.env.clone(),
        cwd: ctx.cwd.clone(),
        creds: ctx.creds.clone(),
        cgroup_procs: ctx.cgroup_procs.clone(),
        namespaces: Namespaces::Join(ctx.ns.clone()),
        stdout: Stdio::piped(),
        stderr: Stdio::piped(),
    });
    let mut spawned = match spawned {
        Ok(s) => s,
        Err(e) => return Outcome::Failure(format!("exec {cmd:?}: {e}")),
    };
    let mut output = Vec::new();
    let mut stdout = spawned.child.stdout.take();
    let mut stderr = spawned.child.stderr.take();
    let collect = async {
        let mut err = Vec::new();
        if let Some(out) = stdout.as_mut() {
            let _ = out.take(4096).read_to_end(&mut output).await;
        }
        if let Some(e) = stderr.as_mut() {
            let _ = e.take(4096).read_to_end(&mut err).await;
        }
        output.extend(err);
        spawned.child.wait().await
    };
    match tokio::time::timeout(timeout, collect).await {
        Ok(Ok(status)) if status.success() => Outcome::Success,
        Ok(Ok(status)) => Outcome::Failure(format!(
            "command {cmd:?} exited with {}: {}",
            status
                .code()
                .map(|c| c.to_string())
                .unwrap_or_else(|| "a signal".to_string()),
            String::from_utf8_lossy(&output).trim()
        )),
        Ok(Err(e)) => Outcome::Failure(format!("exec {cmd:?}: {e}")),
        Err(_) => {
            // setsid made the probe a process group leader: kill the whole group.
            let _ = send_signal(-spawned.pid, Signal::KILL);
            Outcome::Failure(format!(
                "command {cmd:?} timed out after {}s",
                timeout.as_secs()
            ))
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeKind {
    Startup,
    Liveness,
    Readiness,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    Ready(bool),
    LivenessFailed(String),
    StartupSucceeded,
    StartupFailed(String),
}

/// Probes periodically from `initialDelaySeconds` after `started` and reports
/// transitions; liveness and startup loops end with their verdict.
pub async fn probe_loop(
    kind: ProbeKind,
    probe: Probe,
    target: Arc<ProbeTarget>,
    started: Instant,
    report: impl Fn(Transition) + Send,
) {
    let period = Duration::from_secs(probe.period_seconds.unwrap_or(10).max(1) as u64);
    let success_threshold = probe.success_threshold.unwrap_or(1).max(1);
    let failure_threshold = probe.failure_threshold.unwrap_or(3).max(1);
    tokio::time::sleep_until(
        started + Duration::from_secs(probe.initial_delay_seconds.unwrap_or(0).max(0) as u64),
    )
    .await;
    let (mut successes, mut failures) = (0, 0);
    let mut ready: Option<bool> = None;
    loop {
        let next = Instant::now() + period;
        match check(&probe, &target).await {
            Outcome::Success => {
                successes += 1;
                failures = 0;
            }
            Outcome::Failure(why) => {
                failures += 1;
                successes = 0;
                tracing::debug!(?kind, failures, %why, "probe failed");
                if failures >= failure_threshold {
                    match kind {
                        ProbeKind::Liveness => return report(Transition::LivenessFailed(why)),
                        ProbeKind::Startup => return report(Transition::StartupFailed(why)),
                        ProbeKind::Readiness if ready != Some(false) => {
                            ready = Some(false);
                            report(Transition::Ready(false));
                        }
                        ProbeKind::Readiness => {}
                    }
                }
            }
        }
        if successes >= success_threshold {
            match kind {
                ProbeKind::Startup => return report(Transition::StartupSucceeded),
                ProbeKind::Readiness if ready != Some(true) => {
                    ready = Some(true);
                    report(Transition::Ready(true));
                }
                _ => {}
            }
        }
        tokio::time::sleep_until(next).await;
    }
}

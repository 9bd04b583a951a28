//! The kubelet's port-forward endpoint: `GET /portForward/{namespace}/{pod}`
//! over HTTPS, upgraded to a WebSocket speaking the kubelet's
//! `v4.channel.k8s.io` port-forward protocol, each port forwarded to the
//! pod's address.
//!
//! How a client's request gets here (kube-apiserver v1.37,
//! `pkg/registry/core/pod/rest/subresources.go`, `PortForwardREST.Connect`):
//! the API server finds the node's address (`--kubelet-preferred-address-types`)
//! and `status.daemonEndpoints.kubeletEndpoint.port`, and proxies the
//! client's upgrade request unchanged to
//! `https://<node>:<port>/portForward/<ns>/<pod>?port=…` with its
//! `--kubelet-client-certificate`. Only a WebSocket request asking for a
//! `SPDY/3.1+…k8s.io` tunnelling protocol is translated at the API server
//! (to SPDY towards the kubelet); kube-rs asks for `v5.channel.k8s.io,
//! v4.channel.k8s.io`, kubectl's WebSocket client for the SPDY tunnel, so
//! this endpoint serves the former: the WebSocket protocol of the kubelet's
//! `cri-streaming/pkg/streaming/portforward/websocket.go`:
//!
//! - subprotocols `v4.channel.k8s.io` (and none at all); the kubelet
//!   offers no `v5` for port-forward, so a client asking for both gets v4;
//! - ports from the `port` query parameters (repeated or comma-separated);
//! - for port `i`, channel `2i` carries data both ways and `2i+1` errors
//!   from the server; every message is binary, its first byte the channel;
//! - before anything else the server writes the port (2 bytes, little
//!   endian) on each of the two channels of every port;
//! - a port whose connection fails gets the error text on its error
//!   channel; once every port's connection has ended the WebSocket closes.
//!
//! Test infrastructure only: pods are reached on their own address (where
//! a real kubelet enters the pod's network namespace and dials localhost).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::{Message, http};

/// The only subprotocol served (binary frames).
pub const V4_PROTOCOL: &str = "v4.channel.k8s.io";
/// The kubelet's default port (`--kubelet-port` of old, now the Node's
/// `status.daemonEndpoints.kubeletEndpoint.port`).
pub const DEFAULT_PORT: u16 = 10250;

/// The kubelet's HTTPS server: where it listens and its TLS identity.
#[derive(Debug, Clone)]
pub struct KubeletServing {
    /// Port on the node address; reported as the Node's
    /// `status.daemonEndpoints.kubeletEndpoint.port`.
    pub port: u16,
    /// Serving certificate (PEM, for the node address) and its key.
    pub cert_pem: String,
    pub key_pem: String,
    /// CA whose client certificates are accepted (the API server's
    /// `--kubelet-client-certificate`); `None` accepts any client, without
    /// a certificate.
    pub client_ca_pem: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("kubelet TLS: {0}")]
    Tls(String),
    #[error("kubelet server cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Where a port-forward request asks to go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardRequest {
    pub namespace: String,
    pub pod: String,
    pub ports: Vec<u16>,
}

/// Parses `/portForward/{namespace}/{pod}[/{uid}]?port=…` (the kubelet's
/// routes); an error is the HTTP status and message to answer with.
pub fn parse_request(path: &str, query: Option<&str>) -> Result<ForwardRequest, (u16, String)> {
    let rest = path
        .strip_prefix("/portForward/")
        .ok_or((404, format!("not found: {path}")))?;
    let parts: Vec<&str> = rest.split('/').collect();
    let (namespace, pod) = match parts.as_slice() {
        [ns, pod] | [ns, pod, _] if !ns.is_empty() && !pod.is_empty() => (*ns, *pod),
        _ => return Err((404, format!("not found: {path}"))),
    };
    let ports = parse_ports(query.unwrap_or_default()).map_err(|e| (400, e))?;
    Ok(ForwardRequest {
        namespace: namespace.to_string(),
        pod: pod.to_string(),
        ports,
    })
}

/// The `port` query parameters, each possibly a comma-separated list, as
/// the kubelet's `NewV4Options` reads them.
pub fn parse_ports(query: &str) -> Result<Vec<u16>, String> {
    let mut ports = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if key != "port" {
            continue;
        }
        // Commas may arrive percent-encoded.
        let value = value.replace("%2C", ",").replace("%2c", ",");
        if value.is_empty() {
            return Err("query parameter \"port\" cannot be empty".into());
        }
        for p in value.split(',') {
            match p.parse::<u16>() {
                Ok(port) if port > 0 => ports.push(port),
                _ => return Err(format!("unable to parse {p:?} as a port")),
            }
        }
    }
    if ports.is_empty() {
        return Err("query parameter \"port\" is required".into());
    }
    Ok(ports)
}

/// The subprotocol to answer with, from the client's
/// `Sec-WebSocket-Protocol` list: `Some("")` when it asked for none,
/// `None` when it asked only for protocols not served here.
pub fn select_protocol(requested: Option<&str>) -> Option<&'static str> {
    let requested = requested.map(str::trim).unwrap_or_default();
    if requested.is_empty() {
        return Some("");
    }
    requested
        .split(',')
        .map(str::trim)
        .find(|p| *p == V4_PROTOCOL)
        .map(|_| V4_PROTOCOL)
}

/// A binary message for `channel`.
pub fn frame(channel: u8, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 1);
    out.push(channel);
    out.extend_from_slice(data);
    out
}

/// The first message on each channel of a port: the port, little endian.
pub fn port_preamble(channel: u8, port: u16) -> Vec<u8> {
    frame(channel, &port.to_le_bytes())
}

/// What a client's binary message carries: data for port `index`, or
/// nothing to act on (a message on an error channel, an unknown channel,
/// an empty one).
pub fn client_data(message: &[u8], ports: usize) -> Option<(usize, &[u8])> {
    let (&channel, data) = message.split_first()?;
    let channel = usize::from(channel);
    if channel % 2 != 0 || channel / 2 >= ports || data.is_empty() {
        return None;
    }
    Some((channel / 2, data))
}

/// How the server finds a pod's address.
pub trait PodAddresses: Send + Sync + 'static {
    fn pod_ip(&self, namespace: &str, pod: &str) -> Option<Ipv4Addr>;
}

impl PodAddresses for crate::runtime::RuntimeHandle {
    fn pod_ip(&self, namespace: &str, pod: &str) -> Option<Ipv4Addr> {
        crate::runtime::RuntimeHandle::pod_ip(self, namespace, pod)
    }
}

fn tls_config(serving: &KubeletServing) -> Result<Arc<rustls::ServerConfig>, ServeError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(serving.cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| ServeError::Tls(format!("serving certificate: {e}")))?;
    let key = PrivateKeyDer::from_pem_slice(serving.key_pem.as_bytes())
        .map_err(|e| ServeError::Tls(format!("serving key: {e}")))?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ServeError::Tls(e.to_string()))?;
    let builder = match &serving.client_ca_pem {
        Some(pem) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                let cert = cert.map_err(|e| ServeError::Tls(format!("client CA: {e}")))?;
                roots
                    .add(cert)
                    .map_err(|e| ServeError::Tls(format!("client CA: {e}")))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|e| ServeError::Tls(format!("client verifier: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder
        .with_single_cert(certs, key)
        .map_err(|e| ServeError::Tls(e.to_string()))?;
    Ok(Arc::new(config))
}

/// Listens on `addr:serving.port` and serves port-forward requests until
/// the task is aborted.
pub fn spawn(
    serving: &KubeletServing,
    addr: IpAddr,
    pods: Arc<dyn PodAddresses>,
) -> Result<JoinHandle<()>, ServeError> {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls_config(serving)?);
    let socket = SocketAddr::new(addr, serving.port);
    let listener = std::net::TcpListener::bind(socket)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .and_then(TcpListener::from_std)
        .map_err(|source| ServeError::Listen {
            addr: socket,
            source,
        })?;
    tracing::info!(addr = %socket, "kubelet server listening (port-forward)");
    Ok(tokio::spawn(async move {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "kubelet server: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let acceptor = acceptor.clone();
            let pods = pods.clone();
            tokio::spawn(async move {
                match acceptor.accept(tcp).await {
                    Ok(tls) => serve(tls, pods).await,
                    Err(e) => {
                        tracing::warn!(%peer, error = %e, "kubelet server: TLS handshake failed")
                    }
                }
            });
        }
    }))
}

fn reject(status: u16, message: String) -> ErrorResponse {
    let mut response = ErrorResponse::new(Some(message));
    *response.status_mut() =
        http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::BAD_REQUEST);
    response
}

/// One connection: the WebSocket handshake, then the forwarding.
// The handshake callback's error type is tungstenite's `ErrorResponse`.
#[allow(clippy::result_large_err)]
async fn serve<S>(stream: S, pods: Arc<dyn PodAddresses>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut target: Option<(ForwardRequest, Ipv4Addr)> = None;
    let callback = |request: &Request, mut response: Response| {
        let forward = parse_request(request.uri().path(), request.uri().query())
            .map_err(|(status, message)| reject(status, message))?;
        let requested = request
            .headers()
            .get(http::header::SEC_WEBSOCKET_PROTOCOL)
            .and_then(|v| v.to_str().ok());
        let protocol = select_protocol(requested).ok_or_else(|| {
            reject(
                400,
                format!("unsupported port-forward protocols {requested:?}; this kubelet serves {V4_PROTOCOL}"),
            )
        })?;
        let ip = pods
            .pod_ip(&forward.namespace, &forward.pod)
            .ok_or_else(|| reject(404, "pod does not exist".into()))?;
        if !protocol.is_empty() {
            response.headers_mut().insert(
                http::header::SEC_WEBSOCKET_PROTOCOL,
                http::HeaderValue::from_static(V4_PROTOCOL),
            );
        }
        target = Some((forward, ip));
        Ok(response)
    };
    let ws = match tokio_tungstenite::accept_hdr_async(stream, callback).await {
        Ok(ws) => ws,
        Err(e) => {
            tracing::info!(error = %e, "kubelet server: request refused");
            return;
        }
    };
    let Some((forward, ip)) = target else { return };
    tracing::info!(namespace = %forward.namespace, pod = %forward.pod, ports = ?forward.ports, "port-forward");
    forward_ports(ws, ip, &forward).await;
}

/// What the per-port tasks report to the WebSocket writer.
enum Event {
    Data(u8, Bytes),
    Ended,
}

/// Forwards every port of `forward` to `ip` over `ws` until every pod
/// connection ended or the client went away.
async fn forward_ports<S>(
    ws: tokio_tungstenite::WebSocketStream<S>,
    ip: Ipv4Addr,
    forward: &ForwardRequest,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, mut stream) = ws.split();
    let ports = &forward.ports;
    for (i, port) in ports.iter().enumerate() {
        let data = u8::try_from(2 * i).unwrap_or(u8::MAX);
        for channel in [data, data.saturating_add(1)] {
            if sink
                .send(Message::binary(port_preamble(channel, *port)))
                .await
                .is_err()
            {
                return;
            }
        }
    }
    let (events_tx, mut events) = mpsc::channel::<Event>(64);
    let mut writers: BTreeMap<usize, mpsc::UnboundedSender<Bytes>> = BTreeMap::new();
    let mut tasks = Vec::new();
    let mut running = ports.len();
    for (i, port) in ports.iter().copied().enumerate() {
        let channel = u8::try_from(2 * i).unwrap_or(u8::MAX);
        match TcpStream::connect((ip, port)).await {
            Ok(tcp) => {
                let (mut read, mut write) = tcp.into_split();
                let (to_pod, mut to_pod_rx) = mpsc::unbounded_channel::<Bytes>();
                writers.insert(i, to_pod);
                tasks.push(tokio::spawn(async move {
                    while let Some(bytes) = to_pod_rx.recv().await {
                        if write.write_all(&bytes).await.is_err() {
                            break;
                        }
                    }
                    let _ = write.shutdown().await;
                }));
                let events_tx = events_tx.clone();
                tasks.push(tokio::spawn(async move {
                    let mut buf = vec![0u8; 32 * 1024];
                    loop {
                        match read.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                let bytes = Bytes::copy_from_slice(&buf[..n]);
                                if events_tx.send(Event::Data(channel, bytes)).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                    let _ = events_tx.send(Event::Ended).await;
                }));
            }
            Err(e) => {
                let message = format!(
                    "error forwarding port {port} to pod {}: dial tcp {ip}:{port}: {e}",
                    forward.pod
                );
                tracing::info!(%message, "port-forward");
                let _ = sink
                    .send(Message::binary(frame(
                        channel.saturating_add(1),
                        message.as_bytes(),
                    )))
                    .await;
                running -= 1;
            }
        }
    }
    drop(events_tx);
    while running > 0 {
        tokio::select! {
            message = stream.next() => match message {
                Some(Ok(Message::Binary(bytes))) => {
                    if let Some((i, data)) = client_data(&bytes, ports.len())
                        && let Some(to_pod) = writers.get(&i)
                    {
                        let _ = to_pod.send(Bytes::copy_from_slice(data));
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
            event = events.recv() => match event {
                Some(Event::Data(channel, bytes)) => {
                    if sink.send(Message::binary(frame(channel, &bytes))).await.is_err() {
                        break;
                    }
                }
                Some(Event::Ended) => running -= 1,
                None => break,
            },
        }
    }
    drop(writers);
    for t in &tasks {
        t.abort();
    }
    let _ = sink.send(Message::Close(None)).await;
    let _ = sink.close().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_come_from_repeated_and_comma_separated_parameters() {
        assert_eq!(parse_ports("port=5432").unwrap(), vec![5432]);
        assert_eq!(
            parse_ports("port=5432&port=8000,8432&x=1").unwrap(),
            vec![5432, 8000, 8432]
        );
        assert_eq!(parse_ports("port=1%2C2").unwrap(), vec![1, 2]);
        assert!(parse_ports("").unwrap_err().contains("required"));
        assert!(parse_ports("port=").unwrap_err().contains("empty"));
        assert!(parse_ports("port=0").is_err());
        assert!(parse_ports("port=70000").is_err());
    }

    #[test]
    fn requests_name_namespace_pod_and_optional_uid() {
        let r = parse_request("/portForward/ns/db-1", Some("port=5432")).unwrap();
        assert_eq!(
            r,
            ForwardRequest {
                namespace: "ns".into(),
                pod: "db-1".into(),
                ports: vec![5432]
            }
        );
        assert!(parse_request("/portForward/ns/db-1/uid", Some("port=1")).is_ok());
        assert_eq!(parse_request("/exec/ns/db-1", None).unwrap_err().0, 404);
        assert_eq!(
            parse_request("/portForward/ns", Some("port=1"))
                .unwrap_err()
                .0,
            404
        );
        assert_eq!(
            parse_request("/portForward/ns/db-1", None).unwrap_err().0,
            400
        );
    }

    #[test]
    fn v4_is_chosen_over_v5_which_port_forward_does_not_serve() {
        // kube-rs asks for both, v5 first.
        assert_eq!(
            select_protocol(Some("v5.channel.k8s.io, v4.channel.k8s.io")),
            Some(V4_PROTOCOL)
        );
        assert_eq!(select_protocol(None), Some(""));
        assert_eq!(select_protocol(Some("v4.base64.channel.k8s.io")), None);
    }

    #[test]
    fn frames_carry_the_channel_first_and_the_preamble_the_port_little_endian() {
        assert_eq!(port_preamble(0, 5432), vec![0, 0x38, 0x15]);
        assert_eq!(port_preamble(3, 8000), vec![3, 0x40, 0x1f]);
        assert_eq!(frame(2, b"hi"), vec![2, b'h', b'i']);
    }

    #[test]
    fn only_data_channels_of_known_ports_reach_a_pod() {
        assert_eq!(client_data(&[0, 1, 2], 1), Some((0, &[1u8, 2][..])));
        assert_eq!(client_data(&[2, 9], 2), Some((1, &[9u8][..])));
        assert_eq!(client_data(&[1, 9], 2), None, "error channel");
        assert_eq!(client_data(&[4, 9], 2), None, "no third port");
        assert_eq!(client_data(&[0], 1), None, "empty");
        assert_eq!(client_data(&[], 1), None);
    }

    struct Local;
    impl PodAddresses for Local {
        fn pod_ip(&self, _: &str, pod: &str) -> Option<Ipv4Addr> {
            (pod == "db-1").then_some(Ipv4Addr::LOCALHOST)
        }
    }

    /// A WebSocket client as kube-rs opens it (both subprotocols), against
    /// the server over an in-memory stream, to a local echo server.
    #[tokio::test]
    async fn a_port_is_forwarded_both_ways_and_a_refused_one_reports_an_error() {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = echo.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut tcp, _) = echo.accept().await.unwrap();
            let mut buf = [0u8; 64];
            let n = tcp.read(&mut buf).await.unwrap();
            tcp.write_all(&buf[..n]).await.unwrap();
        });
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let refused = closed.local_addr().unwrap().port();
        drop(closed);

        let (client, server) = tokio::io::duplex(64 * 1024);
        tokio::spawn(serve(server, Arc::new(Local)));
        let mut request = format!("ws://node/portForward/ns/db-1?port={port}&port={refused}")
            .into_client_request()
            .unwrap();
        request.headers_mut().insert(
            http::header::SEC_WEBSOCKET_PROTOCOL,
            http::HeaderValue::from_static("v5.channel.k8s.io, v4.channel.k8s.io"),
        );
        let (mut ws, response) = tokio_tungstenite::client_async(request, client)
            .await
            .unwrap();
        assert_eq!(
            response.headers()[http::header::SEC_WEBSOCKET_PROTOCOL],
            V4_PROTOCOL
        );
        let mut next = async || match ws.next().await {
            Some(Ok(Message::Binary(b))) => b.to_vec(),
            other => panic!("{other:?}"),
        };
        let [lo, hi] = port.to_le_bytes();
        let [rlo, rhi] = refused.to_le_bytes();
        assert_eq!(next().await, vec![0, lo, hi]);
        assert_eq!(next().await, vec![1, lo, hi]);
        assert_eq!(next().await, vec![2, rlo, rhi]);
        assert_eq!(next().await, vec![3, rlo, rhi]);
        let error = next().await;
        assert_eq!(error[0], 3);
        assert!(String::from_utf8_lossy(&error[1..]).contains("error forwarding port"));
        ws.send(Message::binary(frame(0, b"select 1")))
            .await
            .unwrap();
        let mut echoed = Vec::new();
        loop {
            match ws.next().await {
                Some(Ok(Message::Binary(b))) => {
                    assert_eq!(b[0], 0);
                    echoed.extend_from_slice(&b[1..]);
                }
                Some(Ok(Message::Close(_))) | None => break,
                other => panic!("{other:?}"),
            }
        }
        // The echo server answered, then closed: so did the WebSocket.
        assert_eq!(echoed, b"select 1");
    }

    #[tokio::test]
    async fn an_unknown_pod_is_refused_before_the_upgrade() {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let (client, server) = tokio::io::duplex(64 * 1024);
        tokio::spawn(serve(server, Arc::new(Local)));
        let request = "ws://node/portForward/ns/nope?port=5432"
            .into_client_request()
            .unwrap();
        match tokio_tungstenite::client_async(request, client).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 404),
            other => panic!("{other:?}"),
        }
    }
}

//! The HTTPS server and the harness-facing handle: start with a [`Config`],
//! get the URL, CA and token, write a kubeconfig or a pod's in-cluster
//! service-account directory, shut down.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode, header};
use http_body::{Frame, SizeHint};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::core::cel::Validator;
use rand::Rng;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::api::{self, ApiState, Method, Reply, Request, RequestCounts};
use crate::builtin::IpAllocator;
use crate::resources;
use crate::store::Store;
use crate::{endpoints, gc, pki};

const MAX_BODY: usize = 64 * 1024 * 1024;
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How to run the server.
#[derive(Clone, Debug)]
pub struct Config {
    /// Address to listen on; port 0 lets the OS choose.
    pub bind: SocketAddr,
    /// Extra IP SANs of the serving certificate (127.0.0.1 and the bind
    /// address are always included).
    pub extra_ips: Vec<IpAddr>,
    /// Extra DNS SANs (localhost and kubernetes.default.svc… are included).
    pub extra_dns_names: Vec<String>,
    /// CRD manifests to install at startup: YAML/JSON files (several
    /// documents allowed) or directories of them.
    pub crd_paths: Vec<PathBuf>,
    /// CRDs to install at startup.
    pub crds: Vec<CustomResourceDefinition>,
    /// Pods created without `spec.nodeName` are bound to this node (there is
    /// no scheduler); `None` leaves them unscheduled.
    pub node_name: Option<String>,
    /// Ends every watch after at most this long, so clients exercise their
    /// re-watch path (the real server ends watches after 30–60 minutes).
    pub watch_timeout_cap: Option<Duration>,
    /// How often idle watches that asked for bookmarks get one.
    pub bookmark_interval: Duration,
    /// Events kept per resource for resuming watches; older resourceVersions
    /// get 410 Gone.
    pub history_limit: usize,
    /// First address and size of the Service ClusterIP range.
    pub service_cidr: (Ipv4Addr, u32),
    /// Bearer tokens accepted besides the generated admin token.
    pub tokens: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            extra_ips: vec![],
            extra_dns_names: vec![],
            crd_paths: vec![],
            crds: vec![],
            node_name: None,
            watch_timeout_cap: None,
            bookmark_interval: Duration::from_secs(5),
            history_limit: 10_000,
            service_cidr: (Ipv4Addr::new(10, 96, 0, 0), 65_536),
            tokens: vec![],
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot create the serving certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("cannot configure TLS: {0}")]
    Tls(#[from] rustls::Error),
    #[error("cannot read CRDs from {path}: {message}")]
    CrdFile { path: PathBuf, message: String },
    #[error("CRD {name} was refused: {message}")]
    CrdRefused { name: String, message: String },
    #[error("cannot create namespace {name}: {message}")]
    Bootstrap { name: String, message: String },
}

/// A running emulated API server. Dropping it stops the server too;
/// [`ApiServer::shutdown`] also waits for the listener to close.
pub struct ApiServer {
    state: Arc<ApiState>,
    addr: SocketAddr,
    url: String,
    ca_pem: String,
    token: String,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

fn random_token() -> String {
    let bytes: [u8; 24] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl ApiServer {
    pub async fn start(config: Config) -> Result<ApiServer, StartError> {
        let listener = TcpListener::bind(config.bind)
            .await
            .map_err(|source| StartError::Bind {
                addr: config.bind,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: config.bind,
            source,
        })?;
        let mut ips = config.extra_ips.clone();
        if !addr.ip().is_unspecified() {
            ips.push(addr.ip());
        }
        let cert = pki::generate(&ips, &config.extra_dns_names)?;
        let acceptor = tls_acceptor(&cert)?;
        let token = random_token();
        let mut tokens: HashSet<String> = config.tokens.iter().cloned().collect();
        tokens.insert(token.clone());
        let host = if addr.ip().is_unspecified() {
            IpAddr::from([127, 0, 0, 1])
        } else {
            addr.ip()
        };
        let address = SocketAddr::new(host, addr.port()).to_string();
        let store = Store::new(config.history_limit);
        for def in resources::builtins() {
            store.define(def);
        }
        let state = Arc::new(ApiState {
            store,
            tokens: RwLock::new(tokens),
            cel: Mutex::new(Validator::new()),
            ips: IpAllocator::new(config.service_cidr.0, config.service_cidr.1),
            node_name: config.node_name.clone(),
            watch_timeout_cap: config.watch_timeout_cap,
            bookmark_interval: config.bookmark_interval,
            address: address.clone(),
            counts: Default::default(),
            ca_pem: cert.ca_pem.clone(),
            eviction: Mutex::new(()),
        });
        bootstrap(&state, &config).await?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let tasks = vec![
            tokio::spawn(accept_loop(
                listener,
                acceptor,
                state.clone(),
                shutdown_rx.clone(),
            )),
            tokio::spawn(gc::run(state.clone(), shutdown_rx.clone())),
            tokio::spawn(endpoints::run(state.clone(), shutdown_rx)),
        ];
        tracing::info!(%address, "emulated API server listening");
        Ok(ApiServer {
            state,
            addr,
            url: format!("https://{address}"),
            ca_pem: cert.ca_pem,
            token,
            shutdown,
            tasks,
        })
    }

    /// `https://<ip>:<port>`
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// PEM of the CA that signed the serving certificate.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The admin bearer token.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// A new accepted bearer token (no RBAC: every token may do anything).
    pub fn issue_token(&self) -> String {
        let token = random_token();
        self.state
            .tokens
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(token.clone());
        token
    }

    /// Kubeconfig YAML for the admin token, with `namespace` as the
    /// context's default namespace.
    pub fn kubeconfig_yaml(&self, namespace: &str) -> String {
        use base64::Engine;
        let ca = base64::engine::general_purpose::STANDARD.encode(&self.ca_pem);
        let doc = json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "capstan-e2e", "cluster": {"server": self.url, "certificate-authority-data": ca}}],
            "users": [{"name": "capstan-e2e", "user": {"token": self.token}}],
            "contexts": [{"name": "capstan-e2e", "context": {"cluster": "capstan-e2e", "user": "capstan-e2e", "namespace": namespace}}],
            "current-context": "capstan-e2e",
        });
        serde_saphyr::to_string(&doc).unwrap_or_else(|_| doc.to_string())
    }

    /// Writes a kubeconfig (mode 0600: it holds the token).
    pub fn write_kubeconfig(&self, path: &Path) -> std::io::Result<()> {
        write_private(path, self.kubeconfig_yaml("default").as_bytes())
    }

    /// A kube client configuration for this server.
    pub async fn client_config(&self) -> Result<kube::Config, kube::config::KubeconfigError> {
        let kubeconfig = kube::config::Kubeconfig::from_yaml(&self.kubeconfig_yaml("default"))?;
        kube::Config::from_custom_kubeconfig(
            kubeconfig,
            &kube::config::KubeConfigOptions::default(),
        )
        .await
    }

    /// A kube client for this server.
    pub async fn client(&self) -> Result<kube::Client, ClientError> {
        Ok(kube::Client::try_from(self.client_config().await?)?)
    }

    /// Materialises a pod's in-cluster service-account directory (`token`,
    /// `ca.crt`, `namespace`) with a freshly issued token; mount it at
    /// `/var/run/secrets/kubernetes.io/serviceaccount` and set the
    /// variables from [`ApiServer::in_cluster_env`].
    pub fn write_service_account_dir(&self, dir: &Path, namespace: &str) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        write_private(&dir.join("token"), self.issue_token().as_bytes())?;
        std::fs::write(dir.join("ca.crt"), &self.ca_pem)?;
        std::fs::write(dir.join("namespace"), namespace)
    }

    /// `KUBERNETES_SERVICE_HOST` and `KUBERNETES_SERVICE_PORT` for in-cluster clients.
    pub fn in_cluster_env(&self) -> Vec<(String, String)> {
        let (host, port) = self
            .state
            .address
            .rsplit_once(':')
            .map(|(h, p)| (h.to_string(), p.to_string()))
            .unwrap_or_default();
        vec![
            ("KUBERNETES_SERVICE_HOST".into(), host),
            ("KUBERNETES_SERVICE_PORT".into(), port),
        ]
    }

    /// Resource requests answered so far, by verb.
    pub fn request_counts(&self) -> RequestCounts {
        self.state.counts.snapshot()
    }

    /// Stops accepting connections, ends every watch and the garbage
    /// collector, and waits for them.
    pub async fn shutdown(mut self) {
        self.shutdown.send_replace(true);
        for task in self.tasks.drain(..) {
            if let Err(e) = task.await {
                tracing::warn!(error = %e, "server task ended abnormally");
            }
        }
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.shutdown.send_replace(true);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot build the client configuration: {0}")]
    Config(#[from] kube::config::KubeconfigError),
    #[error("cannot build the client: {0}")]
    Client(#[from] kube::Error),
}

fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents)
}

fn tls_acceptor(cert: &pki::ServingCert) -> Result<TlsAcceptor, StartError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = vec![
        CertificateDer::from_pem_slice(cert.cert_pem.as_bytes())
            .map_err(|e| rustls::Error::General(e.to_string()))?,
    ];
    let key = PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes())
        .map_err(|e| rustls::Error::General(e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Namespaces every cluster has, then the configured CRDs.
async fn bootstrap(state: &Arc<ApiState>, config: &Config) -> Result<(), StartError> {
    for name in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        let body = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
        internal_post(state, "/api/v1/namespaces", &body)
            .await
            .map_err(|message| StartError::Bootstrap {
                name: name.into(),
                message,
            })?;
    }
    let mut crds: Vec<Value> = vec![];
    for crd in &config.crds {
        crds.push(
            serde_json::to_value(crd).map_err(|e| StartError::CrdRefused {
                name: crd.metadata.name.clone().unwrap_or_default(),
                message: e.to_string(),
            })?,
        );
    }
    for path in &config.crd_paths {
        crds.extend(read_manifests(path)?);
    }
    for crd in crds {
        let name = crd["metadata"]["name"].as_str().unwrap_or("").to_string();
        internal_post(
            state,
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
            &crd,
        )
        .await
        .map_err(|message| StartError::CrdRefused { name, message })?;
    }
    Ok(())
}

fn read_manifests(path: &Path) -> Result<Vec<Value>, StartError> {
    let err = |message: String| StartError::CrdFile {
        path: path.to_path_buf(),
        message,
    };
    if path.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| err(e.to_string()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("yaml" | "yml" | "json")
                )
            })
            .collect();
        entries.sort();
        let mut out = vec![];
        for entry in entries {
            out.extend(read_manifests(&entry)?);
        }
        return Ok(out);
    }
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text).map_err(|e| err(e.to_string()))?;
    Ok(docs
        .into_iter()
        .filter(|d| d["kind"] == "CustomResourceDefinition")
        .collect())
}

async fn internal_post(state: &Arc<ApiState>, path: &str, body: &Value) -> Result<(), String> {
    let req = Request {
        method: Method::Post,
        path: path.to_string(),
        query: HashMap::new(),
        content_type: "application/json".into(),
        accept: "application/json".into(),
        body: Bytes::from(serde_json::to_vec(body).map_err(|e| e.to_string())?),
    };
    match api::handle(state, req).await {
        Reply::Json(code, _) if code < 300 => Ok(()),
        Reply::Json(_, bytes) => Err(String::from_utf8_lossy(&bytes).into_owned()),
        _ => Err("unexpected reply".into()),
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    state: Arc<ApiState>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.changed() => return,
        };
        let (tcp, peer) = match accepted {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let state = state.clone();
        let mut shutdown = shutdown.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
            {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let service = service_fn(move |req| serve(state.clone(), req));
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), service);
            tokio::select! {
                result = conn => if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                },
                _ = shutdown.changed() => {}
            }
        });
    }
}

/// A response body: one buffer, or a watch stream.
pub enum Body {
    Full(Option<Bytes>),
    Stream(mpsc::Receiver<Bytes>),
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            Body::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Body::Stream(rx) => rx.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, Body::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Body::Full(None) => SizeHint::with_exact(0),
            Body::Stream(_) => SizeHint::default(),
        }
    }
}

fn unauthenticated(path: &str) -> bool {
    matches!(
        path.trim_end_matches('/'),
        "/healthz" | "/livez" | "/readyz"
    )
}

async fn serve(
    state: Arc<ApiState>,
    req: hyper::Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    let authorized = unauthenticated(&path)
        || parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.strip_prefix("Bearer "))
            .is_some_and(|t| {
                state
                    .tokens
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .contains(t.trim())
            });
    let reply = if !authorized {
        Reply::error(&crate::status::ApiError::unauthorized())
    } else {
        match Limited::new(body, MAX_BODY).collect().await {
            Ok(collected) => {
                let header_str = |name: header::HeaderName| {
                    parts
                        .headers
                        .get(name)
                        .and_then(|h| h.to_str().ok())
                        .unwrap_or("")
                        .to_string()
                };
                let request = Request {
                    method: match parts.method {
                        http::Method::GET => Method::Get,
                        http::Method::POST => Method::Post,
                        http::Method::PUT => Method::Put,
                        http::Method::PATCH => Method::Patch,
                        http::Method::DELETE => Method::Delete,
                        _ => Method::Other,
                    },
                    query: parts
                        .uri
                        .query()
                        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
                        .unwrap_or_default(),
                    path,
                    content_type: header_str(header::CONTENT_TYPE),
                    accept: header_str(header::ACCEPT),
                    body: collected.to_bytes(),
                };
                tracing::debug!(method = ?request.method, path = %request.path, query = ?request.query, "request");
                api::handle(&state, request).await
            }
            Err(e) => Reply::error(&crate::status::ApiError::new(
                413,
                "RequestEntityTooLarge",
                format!("cannot read the request body: {e}"),
            )),
        }
    };
    Ok(to_response(reply))
}

fn to_response(reply: Reply) -> Response<Body> {
    let (code, content_type, body) = match reply {
        Reply::Json(code, bytes) => (code, "application/json", Body::Full(Some(bytes))),
        Reply::Text(code, text) => (
            code,
            "text/plain",
            Body::Full(Some(Bytes::from_static(text.as_bytes()))),
        ),
        Reply::Stream(rx) => (200, "application/json", Body::Stream(rx)),
    };
    let mut response = Response::new(body);
    *response.status_mut() =
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}

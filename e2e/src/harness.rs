//! The local harness: the emulated API server, the process kubelet with its
//! Service proxy, and the operator as a host process (exactly how a user
//! runs it with `cargo run -- operator`). Dropping a [`Harness`] stops the
//! operator, every pod process and the API server.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use capstan_e2e_apiserver::{ApiServer, Config as ApiConfig};
use capstan_e2e_kubelet::{
    ApiServerAccess, Cidr, ImageTable, Kubelet, KubeletConfig, RuntimeHandle,
};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};

use crate::E2eError;

/// Image name the operator gives the init containers; the kubelet's image
/// table maps every image whose name contains `capstan` to the built binary.
pub const OPERATOR_IMAGE: &str = "capstan-e2e/capstan:dev";
/// Namespace of the operator's leader Lease.
pub const OPERATOR_NAMESPACE: &str = "capstan-system";

#[derive(Clone, Debug)]
pub struct HarnessOptions {
    /// Pods are marked Running and Ready without processes (control-plane
    /// scale tests).
    pub simulated: bool,
    /// Loopback range for pod IPs.
    pub pod_cidr: (Ipv4Addr, u8),
    /// Loopback range for Service IPs.
    pub service_cidr: (Ipv4Addr, u8),
}

impl Default for HarnessOptions {
    /// Pods on 127.100/16 and Services on 127.101/16; with
    /// `CAPSTAN_E2E_NET=<n>` (2..=250, even) pods on 127.<n>/16 and Services
    /// on 127.<n+1>/16, so two harnesses can run on one machine.
    fn default() -> Self {
        let base = std::env::var("CAPSTAN_E2E_NET")
            .ok()
            .and_then(|v| v.parse::<u8>().ok())
            .filter(|n| (2..=250).contains(n) && n % 2 == 0)
            .unwrap_or(100);
        HarnessOptions {
            simulated: false,
            pod_cidr: (Ipv4Addr::new(127, base, 0, 0), 16),
            service_cidr: (Ipv4Addr::new(127, base + 1, 0, 0), 16),
        }
    }
}

/// The `capstan` binary the harness runs as operator and inside pods:
/// `$CAPSTAN_BIN`, else the one cargo built next to this test binary.
pub fn capstan_binary() -> Result<PathBuf, E2eError> {
    if let Some(path) = std::env::var_os("CAPSTAN_BIN") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe()
        .map_err(|e| E2eError::Setup(format!("cannot locate the test binary: {e}")))?;
    // target/<profile>/deps/<test> → target/<profile>/capstan
    let candidate = exe
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join("capstan"))
        .ok_or_else(|| E2eError::Setup("unexpected test binary location".into()))?;
    if candidate.is_file() {
        Ok(candidate)
    } else {
        Err(E2eError::Setup(format!(
            "{} not found: build it with `cargo build --bin capstan` (cargo test --workspace does) or set CAPSTAN_BIN",
            candidate.display()
        )))
    }
}

/// PostgreSQL bin directories for the majors the images may ask for: Debian's
/// under /usr/lib/postgresql, plus `$CAPSTAN_PG<major>_BIN`.
fn images(capstan: &Path) -> ImageTable {
    let mut table = ImageTable::capstan_defaults(capstan);
    for major in 14..=18u32 {
        if let Some(dir) = std::env::var_os(format!("CAPSTAN_PG{major}_BIN")) {
            table = table.with_postgres_major(major, PathBuf::from(dir));
        }
    }
    table
}

struct OperatorProcess {
    child: Child,
}

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Harness {
    // Field order is drop order: the operator first (so it stops re-creating
    // pods), then the kubelet (kills every pod process), then the API server.
    operator: Option<OperatorProcess>,
    operator_starts: u32,
    kubelet: Kubelet,
    apiserver: ApiServer,
    client: Client,
    kubeconfig: PathBuf,
    capstan: PathBuf,
    state: tempfile::TempDir,
}

impl Harness {
    pub async fn start(options: HarnessOptions) -> Result<Harness, E2eError> {
        let capstan = capstan_binary()?;
        // CAPSTAN_E2E_KEEP=1 keeps pod logs and data for a look afterwards.
        let keep = std::env::var_os("CAPSTAN_E2E_KEEP").is_some_and(|v| v == "1");
        let state = tempfile::Builder::new()
            .prefix("capstan-e2e-")
            .disable_cleanup(keep)
            .tempdir()
            .map_err(|e| {
                E2eError::Setup(format!("cannot create the harness state directory: {e}"))
            })?;
        let cidr = |(addr, prefix): (Ipv4Addr, u8)| {
            Cidr::new(addr, prefix).map_err(|e| E2eError::Setup(e.to_string()))
        };
        let pod_cidr = cidr(options.pod_cidr)?;
        let service_cidr = cidr(options.service_cidr)?;
        let mut kubelet_config = KubeletConfig::new(
            state.path().join("kubelet"),
            pod_cidr,
            service_cidr,
            images(&capstan),
        );
        kubelet_config.simulated = options.simulated;
        // The emulated API server keeps Endpoints itself; two writers would fight.
        kubelet_config.controllers.endpoints = false;

        let crds = capstan::api::crd::all();
        let apiserver = ApiServer::start(ApiConfig {
            crds,
            node_name: Some(kubelet_config.node_name.clone()),
            service_cidr: (service_cidr.network(), service_cidr.hosts()),
            ..ApiConfig::default()
        })
        .await
        .map_err(|e| E2eError::Setup(format!("emulated API server: {e}")))?;
        let kubeconfig = state.path().join("kubeconfig");
        apiserver
            .write_kubeconfig(&kubeconfig)
            .map_err(|e| E2eError::Setup(format!("cannot write the kubeconfig: {e}")))?;
        let client = apiserver
            .client()
            .await
            .map_err(|e| E2eError::Setup(format!("client: {e}")))?;

        kubelet_config.api_server = Some(ApiServerAccess {
            host: apiserver.addr().ip(),
            port: apiserver.addr().port(),
            token: apiserver.issue_token(),
            ca_crt: apiserver.ca_pem().to_string(),
        });
        let kubelet = Kubelet::start(client.clone(), kubelet_config)
            .await
            .map_err(|e| E2eError::Setup(format!("process kubelet: {e}")))?;
        ensure_namespace(&client, OPERATOR_NAMESPACE).await?;
        Ok(Harness {
            operator: None,
            operator_starts: 0,
            kubelet,
            apiserver,
            client,
            kubeconfig,
            capstan,
            state,
        })
    }

    pub fn client(&self) -> Client {
        self.client.clone()
    }

    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    pub fn runtime(&self) -> &RuntimeHandle {
        self.kubelet.runtime()
    }

    pub fn apiserver(&self) -> &ApiServer {
        &self.apiserver
    }

    /// Host-side address of `<service>.<namespace>.svc:<port>`.
    pub fn service_addr(&self, namespace: &str, service: &str, port: u16) -> Option<SocketAddr> {
        self.kubelet
            .resolver()
            .socket_addr(&format!("{service}.{namespace}.svc"), port)
    }

    /// Starts `capstan operator` against the harness, as a host process.
    pub fn start_operator(&mut self) -> Result<(), E2eError> {
        if self.operator.is_some() {
            return Ok(());
        }
        self.operator_starts += 1;
        let log = self
            .state
            .path()
            .join(format!("operator-{}.log", self.operator_starts));
        let file = std::fs::File::create(&log)
            .map_err(|e| E2eError::Setup(format!("{}: {e}", log.display())))?;
        let err = file
            .try_clone()
            .map_err(|e| E2eError::Setup(e.to_string()))?;
        let child = Command::new(&self.capstan)
            .arg("operator")
            .env("KUBECONFIG", &self.kubeconfig)
            .env("CAPSTAN_IMAGE", OPERATOR_IMAGE)
            .env("CAPSTAN_PROBE_ADDR", "127.0.0.1:0")
            .env("POD_NAMESPACE", OPERATOR_NAMESPACE)
            .env("POD_NAME", format!("operator-{}", self.operator_starts))
            .env(
                "RUST_LOG",
                std::env::var("CAPSTAN_E2E_OPERATOR_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err)
            .spawn()
            .map_err(|e| {
                E2eError::Setup(format!("cannot start {}: {e}", self.capstan.display()))
            })?;
        self.operator = Some(OperatorProcess { child });
        Ok(())
    }

    /// Kills the operator with SIGKILL (as a crash or a node loss would).
    pub fn kill_operator(&mut self) {
        self.operator = None;
    }

    /// PID of the running operator process.
    pub fn operator_pid(&self) -> Option<u32> {
        self.operator.as_ref().map(|o| o.child.id())
    }

    /// The operator's log so far (all runs), for failure messages.
    pub fn operator_logs(&self) -> String {
        (1..=self.operator_starts)
            .map(|n| {
                std::fs::read_to_string(self.state.path().join(format!("operator-{n}.log")))
                    .unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("\n--- operator restarted ---\n")
    }

    /// Every pod of `namespace` with its status and the end of each
    /// container's log, for failure messages.
    pub async fn diagnostics(&self, namespace: &str) -> String {
        let pods: Api<k8s_openapi::api::core::v1::Pod> =
            Api::namespaced(self.client.clone(), namespace);
        let Ok(list) = pods.list(&Default::default()).await else {
            return "(cannot list pods)".into();
        };
        let mut out = String::new();
        for pod in list.items {
            let name = pod.metadata.name.clone().unwrap_or_default();
            let status = pod.status.clone().unwrap_or_default();
            let ready = status
                .conditions
                .iter()
                .flatten()
                .find(|c| c.type_ == "Ready")
                .map(|c| c.status.clone())
                .unwrap_or_default();
            out.push_str(&format!(
                "== pod {name}: phase {:?}, ready {ready}, ip {:?}\n",
                status.phase, status.pod_ip
            ));
            let spec = pod.spec.clone().unwrap_or_default();
            let containers = spec
                .init_containers
                .iter()
                .flatten()
                .chain(spec.containers.iter());
            for c in containers {
                let log = self
                    .runtime()
                    .logs(namespace, &name, &c.name, false)
                    .unwrap_or_default();
                let lines: Vec<&str> = log.lines().collect();
                out.push_str(&format!(
                    "-- {name}/{} ({} lines), last 40:\n",
                    c.name,
                    lines.len()
                ));
                out.push_str(&lines[lines.len().saturating_sub(40)..].join("\n"));
                out.push('\n');
            }
        }
        out
    }

    /// Directory kept by the kubelet for pod logs and volumes.
    pub fn state_dir(&self) -> &Path {
        self.state.path()
    }

    /// The pod IP a pod got (host-reachable loopback address).
    pub fn pod_ip(&self, namespace: &str, pod: &str) -> Option<IpAddr> {
        self.runtime().pod_ip(namespace, pod).map(IpAddr::V4)
    }
}

pub async fn ensure_namespace(client: &Client, name: &str) -> Result<(), E2eError> {
    let api: Api<Namespace> = Api::all(client.clone());
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    match api.create(&PostParams::default(), &ns).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(E2eError::Kube(format!("create namespace {name}"), e)),
    }
}

/// Waits up to `timeout` for `check` to return `Some`, polling every `every`.
pub async fn wait_for<T, F, Fut>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut check: F,
) -> Result<T, E2eError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(E2eError::Timeout(what.to_string(), timeout));
        }
        tokio::time::sleep(every).await;
    }
}

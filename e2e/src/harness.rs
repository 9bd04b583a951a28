//! The local harness: a real control plane (etcd, kube-apiserver,
//! kube-controller-manager, kube-scheduler; [`crate::controlplane`]) with
//! Capstan installed by `helm install` of `charts/capstan`, as users install
//! it (or kustomize, or a host process for measurements). The process
//! kubelet runs the pods, and its Service proxy the Services. Local
//! scenarios run inside a network namespace of their own
//! ([`crate::netns::run`]). Dropping a [`Harness`] stops the operator, every
//! pod process and the control plane; before that it fails the test if any
//! log holds a secret ([`secret_scan`]).

pub mod secret_scan;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use capstan_e2e_kubelet::{
    ApiServerAccess, Cidr, Controllers, ImageTable, Kubelet, KubeletConfig, RuntimeHandle,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use kube::api::{DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};

use crate::E2eError;
use crate::controlplane::{self, API_PORT, ControlPlane, ControlPlaneOptions};
use crate::netns;

/// Image name of the operator (and of the init containers it gives pods);
/// the kubelet's image table maps every image whose name contains `capstan`
/// to the built binary.
pub const OPERATOR_IMAGE: &str = "capstan-e2e/capstan:dev";
/// The operator image an upgrade moves to ([`Harness::upgrade_operator`]):
/// the kubelet maps exactly this reference to `<state dir>/capstan-next`, a
/// copy of the built binary with bytes appended, so it runs the same code
/// but its SHA-256 (what agents report as their build) differs.
pub const NEXT_OPERATOR_IMAGE: &str = "capstan-e2e/capstan:next";
/// Name of the operator's Deployment (chart and kustomize) and its container.
pub const OPERATOR_DEPLOYMENT: &str = "capstan-operator";
const OPERATOR_CONTAINER: &str = "operator";
/// Appended to the copy of the binary: an ELF runs with trailing bytes.
const NEXT_MARKER: &[u8] = b"\n-- capstan-e2e: the next operator build --\n";
/// A new operator pod Ready and the old one gone.
const OPERATOR_ROLLOUT_WITHIN: Duration = Duration::from_secs(120);

/// Namespace the chart is installed in (and of the operator's leader Lease).
pub const OPERATOR_NAMESPACE: &str = "capstan-system";
/// Helm release name; the chart names the Deployment `capstan-operator`.
pub const RELEASE: &str = "capstan";
/// Labels of the operator's pods, as the chart sets them.
pub const OPERATOR_SELECTOR: &str =
    "app.kubernetes.io/name=capstan,app.kubernetes.io/component=operator";

#[derive(Clone, Debug)]
pub struct HarnessOptions {
    /// Pods are marked Running and Ready without processes (control-plane
    /// scale tests).
    pub simulated: bool,
    /// How Capstan is installed.
    pub install: Install,
}

/// How the harness installs Capstan when the operator is started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Install {
    /// `helm install` of `charts/capstan` with default values.
    Helm,
    /// `kubectl apply --server-side -k config/`.
    Kustomize,
    /// The CRDs applied by the harness; `capstan operator` as a host process
    /// with the admin kubeconfig (simulated pods run no processes).
    HostProcess,
}

impl Default for HarnessOptions {
    fn default() -> Self {
        HarnessOptions {
            simulated: false,
            install: Install::Helm,
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
    // target/<profile>/deps/<test> (tests) or target/<profile>/capstan-e2e
    // (`up`) → target/<profile>/capstan
    let dir = exe
        .parent()
        .ok_or_else(|| E2eError::Setup("unexpected test binary location".into()))?;
    let candidates = [
        Some(dir.join("capstan")),
        dir.parent().map(|d| d.join("capstan")),
    ];
    let found = candidates.iter().flatten().find(|c| c.is_file());
    found.cloned().ok_or_else(|| {
        E2eError::Setup(format!(
            "{} not found: build it with `cargo build --bin capstan` (cargo test --workspace does) or set CAPSTAN_BIN",
            dir.join("capstan").display()
        ))
    })
}

/// The repository's chart directory.
pub fn chart_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/capstan")
}

/// PostgreSQL bin directories for the majors the images may ask for: Debian's
/// under /usr/lib/postgresql, plus `$CAPSTAN_PG<major>_BIN`; images named
/// `…pgbackrest…` (images/postgres) also get pgBackRest;
/// [`NEXT_OPERATOR_IMAGE`] runs `next`.
fn images(capstan: &Path, next: &Path) -> ImageTable {
    let mut table = ImageTable::capstan_defaults(capstan)
        .with_capstan_image(NEXT_OPERATOR_IMAGE, next)
        .with_pgbackrest_image(crate::backup::pgbackrest_binary());
    for major in 14..=18u32 {
        if let Some(dir) = std::env::var_os(format!("CAPSTAN_PG{major}_BIN")) {
            table = table.with_postgres_major(major, PathBuf::from(dir));
        }
    }
    table
}

/// Writes `next`: `capstan` byte for byte plus [`NEXT_MARKER`] (same code,
/// another SHA-256), executable.
fn write_next_binary(capstan: &Path, next: &Path) -> Result<(), E2eError> {
    use std::io::Write;
    let failed = |e: std::io::Error| E2eError::Setup(format!("{}: {e}", next.display()));
    std::fs::copy(capstan, next).map_err(failed)?;
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(next)
        .map_err(failed)?;
    file.write_all(NEXT_MARKER).map_err(failed)?;
    // Pods run it as the host's `postgres` user.
    let mut permissions = file.metadata().map_err(failed)?.permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut permissions, 0o755);
    file.set_permissions(permissions).map_err(failed)
}

/// Hex SHA-256 of a file's content.
pub fn file_sha256(path: &Path) -> Result<String, E2eError> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let failed = |e: std::io::Error| E2eError::Setup(format!("{}: {e}", path.display()));
    let mut file = std::fs::File::open(path).map_err(failed)?;
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(failed)?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
    }
    Ok(hash.finalize().iter().map(|b| format!("{b:02x}")).collect())
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

/// How the operator runs.
enum Operator {
    /// Not started yet.
    None,
    /// A host process.
    Host(OperatorProcess),
    /// The Deployment `capstan-operator`, installed by Helm or kustomize;
    /// `running` is whether it is scaled to one replica.
    Deployed { running: bool },
}

pub struct Harness {
    // Field order is drop order: the operator first (so it stops re-creating
    // pods), then the kubelet (kills every pod process), then the API server.
    operator: Operator,
    operator_starts: u32,
    kubelet: Kubelet,
    plane: ControlPlane,
    client: Client,
    kubeconfig: PathBuf,
    capstan: PathBuf,
    /// What [`NEXT_OPERATOR_IMAGE`] runs, and its SHA-256 once computed.
    next: PathBuf,
    next_sha256: std::sync::OnceLock<String>,
    install: Install,
    /// `--set` values for `helm install` besides the defaults.
    helm_values: Vec<String>,
    /// What is secret in every Secret seen since the control plane started
    /// (deleted and replaced ones too), from `secret_watch`.
    secrets_seen: Arc<Mutex<secret_scan::Needles>>,
    secret_watch: AbortOnDrop,
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
        let tools = controlplane::tools_dir()?;
        // Written now so the image works from the start (also for `up`);
        // only an upgrade pays for hashing it.
        let next = state.path().join("capstan-next");
        write_next_binary(&capstan, &next)?;
        let cidr = |(addr, prefix): (Ipv4Addr, u8)| {
            Cidr::new(addr, prefix).map_err(|e| E2eError::Setup(e.to_string()))
        };
        let mut kubelet_config = KubeletConfig::new(
            state.path().join("kubelet"),
            cidr(netns::POD_CIDR)?,
            cidr(netns::SERVICE_CIDR)?,
            images(&capstan, &next),
        );
        kubelet_config.simulated = options.simulated;
        let plane = ControlPlane::start(
            &tools,
            &state.path().join("controlplane"),
            &ControlPlaneOptions {
                addr: kubelet_config.node_ip,
                service_cidr: netns::SERVICE_CIDR,
            },
        )
        .await?;
        let secrets_seen = Arc::new(Mutex::new(secret_scan::Needles::new()));
        let secret_watch = watch_secrets(plane.client(), secrets_seen.clone());
        // The real controllers keep Endpoints, Deployments and scheduling;
        // there is no volume provisioner but ours.
        kubelet_config.controllers = Controllers {
            services: true,
            endpoints: false,
            deployments: false,
            claim_binder: true,
            scheduler: false,
        };
        kubelet_config.token_requests = true;
        kubelet_config.persistent_volumes = true;
        let access = ApiServerAccess {
            host: IpAddr::V4(plane.addr()),
            port: API_PORT,
            token: String::new(),
            ca_crt: plane.ca_pem().to_string(),
        };
        let client = plane.client();
        let kubeconfig = plane.kubeconfig();
        kubelet_config.api_server = Some(access);
        // `kubectl port-forward` and `kubectl capstan psql` reach pods
        // through the API server and this server.
        kubelet_config.serving = Some(plane.kubelet_serving());
        let kubelet = Kubelet::start(client.clone(), kubelet_config)
            .await
            .map_err(|e| E2eError::Setup(format!("process kubelet: {e}")))?;
        let install = options.install;
        if install == Install::HostProcess {
            // Helm and kustomize install them otherwise.
            ensure_namespace(&client, OPERATOR_NAMESPACE).await?;
            install_crds(&client).await?;
        }
        Ok(Harness {
            operator: Operator::None,
            operator_starts: 0,
            kubelet,
            plane,
            client,
            kubeconfig,
            capstan,
            next,
            next_sha256: std::sync::OnceLock::new(),
            install,
            helm_values: Vec::new(),
            secrets_seen,
            secret_watch,
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

    pub fn control_plane(&self) -> &ControlPlane {
        &self.plane
    }

    /// A control-plane component that exited, with the end of its log.
    pub fn control_plane_exited(&mut self) -> Option<String> {
        self.plane.exited()
    }

    /// Host-side address of `<service>.<namespace>.svc:<port>`.
    pub fn service_addr(&self, namespace: &str, service: &str, port: u16) -> Option<SocketAddr> {
        self.kubelet
            .resolver()
            .socket_addr(&format!("{service}.{namespace}.svc"), port)
    }

    /// Runs Helm against the harness (`helm` from the control-plane tools).
    pub fn helm(&self, args: &[&str]) -> Result<String, E2eError> {
        let bin = controlplane::tools_dir()?.join("helm");
        let helm_home = self.state.path().join("helm");
        let mut command = Command::new(&bin);
        command
            .env("HELM_CACHE_HOME", helm_home.join("cache"))
            .env("HELM_CONFIG_HOME", helm_home.join("config"))
            .env("HELM_DATA_HOME", helm_home.join("data"));
        self.run_tool(command, "helm", args)
            .map_err(E2eError::Setup)
    }

    /// Runs kubectl (this machine's) against the harness.
    pub fn kubectl(&self, args: &[&str]) -> Result<String, E2eError> {
        self.run_tool(Command::new("kubectl"), "kubectl", args)
            .map_err(E2eError::Check)
    }

    /// Runs a client tool with the admin kubeconfig: its stdout, or what it
    /// printed when it failed.
    fn run_tool(&self, mut command: Command, name: &str, args: &[&str]) -> Result<String, String> {
        let out = command
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {name}: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "{name} {}: {}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// Starts the operator: installed by Helm or kustomize the first time (then scales its
    /// Deployment back to one replica), or a host process.
    /// Values `helm install` sets when the operator is first started
    /// (`Install::Helm`), e.g. `watchNamespace=apps`.
    pub fn set_helm_values(&mut self, values: &[&str]) {
        self.helm_values = values.iter().map(|v| v.to_string()).collect();
    }

    pub async fn start_operator(&mut self) -> Result<(), E2eError> {
        match self.operator {
            Operator::Host(_) | Operator::Deployed { running: true } => return Ok(()),
            Operator::Deployed { running: false } => {
                self.operator_starts += 1;
                self.scale_operator(1).await?;
                self.operator = Operator::Deployed { running: true };
                return Ok(());
            }
            Operator::None => {}
        }
        self.operator_starts += 1;
        if self.install == Install::Kustomize {
            let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config");
            self.kubectl(&[
                "apply",
                "--server-side",
                "-k",
                &config.display().to_string(),
            ])?;
            self.operator = Operator::Deployed { running: true };
            wait_capstan_crds(&self.client).await?;
            return Ok(());
        }
        if self.install == Install::Helm {
            // Default values, as a user installs it: the default image names
            // `capstan`, which the kubelet maps to the built binary. Only the
            // log level follows CAPSTAN_E2E_OPERATOR_LOG when it is set.
            let chart = chart_dir().display().to_string();
            let mut args = vec![
                "install",
                RELEASE,
                &chart,
                "--namespace",
                OPERATOR_NAMESPACE,
                "--create-namespace",
            ];
            let level = std::env::var("CAPSTAN_E2E_OPERATOR_LOG")
                .map(|l| format!("logLevel={l}"))
                .ok();
            if let Some(level) = &level {
                args.extend(["--set", level]);
            }
            for value in &self.helm_values {
                args.extend(["--set", value.as_str()]);
            }
            self.helm(&args)?;
            self.operator = Operator::Deployed { running: true };
            // The chart's CRDs are templates: Helm creates them with the
            // rest and, unlike a chart's crds/, does not wait until they
            // are served.
            wait_capstan_crds(&self.client).await?;
            return Ok(());
        }
        let log = self
            .state
            .path()
            .join(format!("operator-{}.log", self.operator_starts));
        let file = std::fs::File::create(&log)
            .map_err(|e| E2eError::Setup(format!("{}: {e}", log.display())))?;
        let err = file
            .try_clone()
            .map_err(|e| E2eError::Setup(e.to_string()))?;
        let kubeconfig = self.plane.operator_kubeconfig();
        let child = Command::new(&self.capstan)
            .arg("operator")
            .env("KUBECONFIG", &kubeconfig)
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
        self.operator = Operator::Host(OperatorProcess { child });
        Ok(())
    }

    /// Kills the operator with SIGKILL, as a crash or a node loss would: the
    /// host process; or the Deployment is scaled to zero (so nothing brings
    /// it back until [`Harness::start_operator`]) and its pods are deleted
    /// with grace period 0.
    pub async fn kill_operator(&mut self) -> Result<(), E2eError> {
        match self.operator {
            Operator::Host(_) => self.operator = Operator::None,
            Operator::Deployed { running: true } => {
                self.scale_operator(0).await?;
                let pods: Api<Pod> = Api::namespaced(self.client.clone(), OPERATOR_NAMESPACE);
                let list = pods
                    .list(&ListParams::default().labels(OPERATOR_SELECTOR))
                    .await
                    .map_err(|e| E2eError::Kube("list operator pods".into(), e))?;
                for pod in list.items {
                    let name = pod.metadata.name.unwrap_or_default();
                    match pods
                        .delete(&name, &DeleteParams::default().grace_period(0))
                        .await
                    {
                        Ok(_) => {}
                        Err(kube::Error::Api(status)) if status.code == 404 => {}
                        Err(e) => {
                            return Err(E2eError::Kube(format!("delete operator pod {name}"), e));
                        }
                    }
                }
                self.operator = Operator::Deployed { running: false };
            }
            Operator::Deployed { running: false } | Operator::None => {}
        }
        Ok(())
    }

    /// Upgrades Capstan to [`NEXT_OPERATOR_IMAGE`] and nothing else, as a
    /// user upgrades it: `helm upgrade --reuse-values` with the new image
    /// (kustomize installs: the Deployment's image and `CAPSTAN_IMAGE`
    /// patched), then waits until the new operator pod is Ready and the old
    /// one is gone. Not supported for a host-process operator.
    pub async fn upgrade_operator(&mut self) -> Result<(), E2eError> {
        if !matches!(self.operator, Operator::Deployed { running: true }) {
            return Err(E2eError::Setup(
                "upgrade_operator needs the operator installed by Helm or kustomize and running \
                 (a host-process operator is not supported)"
                    .into(),
            ));
        }
        match self.install {
            Install::HostProcess => {
                return Err(E2eError::Setup(
                    "upgrade_operator is not supported with Install::HostProcess".into(),
                ));
            }
            Install::Helm => {
                let (repository, tag) = NEXT_OPERATOR_IMAGE
                    .rsplit_once(':')
                    .ok_or_else(|| E2eError::Setup(format!("{NEXT_OPERATOR_IMAGE} has no tag")))?;
                let chart = chart_dir().display().to_string();
                let repository = format!("image.repository={repository}");
                let tag = format!("image.tag={tag}");
                self.helm(&[
                    "upgrade",
                    RELEASE,
                    &chart,
                    "--namespace",
                    OPERATOR_NAMESPACE,
                    "--reuse-values",
                    "--set",
                    &repository,
                    "--set",
                    &tag,
                ])?;
            }
            Install::Kustomize => {
                set_operator_image(&self.client, OPERATOR_NAMESPACE, NEXT_OPERATOR_IMAGE).await?;
            }
        }
        wait_operator_image(
            &self.client,
            OPERATOR_NAMESPACE,
            OPERATOR_SELECTOR,
            NEXT_OPERATOR_IMAGE,
            OPERATOR_ROLLOUT_WITHIN,
        )
        .await
    }

    /// The file [`NEXT_OPERATOR_IMAGE`] runs.
    pub fn next_binary(&self) -> &Path {
        &self.next
    }

    /// Hex SHA-256 of the binary [`NEXT_OPERATOR_IMAGE`] runs (agents that
    /// took it report its first 12 digits). Hashed on first use.
    pub fn next_binary_sha256(&self) -> Result<String, E2eError> {
        if let Some(sha) = self.next_sha256.get() {
            return Ok(sha.clone());
        }
        let sha = file_sha256(&self.next)?;
        Ok(self.next_sha256.get_or_init(|| sha).clone())
    }

    async fn scale_operator(&self, replicas: i32) -> Result<(), E2eError> {
        let deployments: Api<Deployment> = Api::namespaced(self.client.clone(), OPERATOR_NAMESPACE);
        let patch = serde_json::json!({"spec": {"replicas": replicas}});
        deployments
            .patch_scale(
                "capstan-operator",
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
            .map_err(|e| E2eError::Kube(format!("scale the operator to {replicas}"), e))?;
        Ok(())
    }

    /// PID of the running operator's main process.
    pub async fn operator_pid(&self) -> Option<u32> {
        match &self.operator {
            Operator::Host(o) => Some(o.child.id()),
            Operator::Deployed { running: true } => {
                let pods: Api<Pod> = Api::namespaced(self.client.clone(), OPERATOR_NAMESPACE);
                let list = pods
                    .list(&ListParams::default().labels(OPERATOR_SELECTOR))
                    .await
                    .ok()?;
                list.items.iter().find_map(|pod| {
                    let name = pod.metadata.name.as_deref()?;
                    let procs = self.runtime().processes(OPERATOR_NAMESPACE, name).ok()?;
                    procs
                        .iter()
                        .filter(|(_, container, _)| container == "operator")
                        .map(|(pid, _, _)| *pid)
                        .min()
                        .and_then(|pid| u32::try_from(pid).ok())
                })
            }
            _ => None,
        }
    }

    /// The operator's log so far (all runs), for failure messages.
    pub fn operator_logs(&self) -> String {
        if self.install != Install::HostProcess {
            return self.pod_logs(OPERATOR_NAMESPACE, "operator");
        }
        (1..=self.operator_starts)
            .map(|n| {
                std::fs::read_to_string(self.state.path().join(format!("operator-{n}.log")))
                    .unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("\n--- operator restarted ---\n")
    }

    /// Every log the kubelet kept of container `container` in pods of
    /// `namespace`, gone pods included, oldest first.
    fn pod_logs(&self, namespace: &str, container: &str) -> String {
        let pods = self.state.path().join("kubelet/pods");
        let mut files: Vec<(std::time::SystemTime, PathBuf)> = Vec::new();
        let Ok(entries) = std::fs::read_dir(&pods) else {
            return String::new();
        };
        for entry in entries.flatten() {
            if !entry
                .file_name()
                .to_string_lossy()
                .starts_with(&format!("{namespace}_"))
            {
                continue;
            }
            let dir = entry.path().join("logs").join(container);
            for log in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let modified = log
                    .metadata()
                    .and_then(|m| m.modified())
                    .unwrap_or(std::time::UNIX_EPOCH);
                files.push((modified, log.path()));
            }
        }
        files.sort();
        files
            .iter()
            .map(|(_, path)| std::fs::read_to_string(path).unwrap_or_default())
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

/// Points the operator's Deployment at `image`: its container's image and
/// `CAPSTAN_IMAGE` (the image the operator gives the pods it creates), as
/// the chart sets both from one value. A strategic merge patch keeps every
/// other container field and variable.
pub async fn set_operator_image(
    client: &Client,
    namespace: &str,
    image: &str,
) -> Result<(), E2eError> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let patch = serde_json::json!({"spec": {"template": {"spec": {"containers": [{
        "name": OPERATOR_CONTAINER,
        "image": image,
        "env": [{"name": "CAPSTAN_IMAGE", "value": image}],
    }]}}}});
    deployments
        .patch(
            OPERATOR_DEPLOYMENT,
            &PatchParams::default(),
            &Patch::Strategic(&patch),
        )
        .await
        .map_err(|e| {
            E2eError::Kube(
                format!("set the image of {namespace}/{OPERATOR_DEPLOYMENT} to {image}"),
                e,
            )
        })?;
    Ok(())
}

/// Waits until the operator's Deployment runs `image` everywhere: its
/// template has it (container and `CAPSTAN_IMAGE`), the rollout is observed
/// and complete, and every operator pod left (`selector`) runs it and is
/// Ready, none being deleted (the old one is gone).
pub async fn wait_operator_image(
    client: &Client,
    namespace: &str,
    selector: &str,
    image: &str,
    timeout: Duration,
) -> Result<(), E2eError> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let runs_image = |spec: Option<&k8s_openapi::api::core::v1::PodSpec>| {
        spec.and_then(|s| s.containers.iter().find(|c| c.name == OPERATOR_CONTAINER))
            .is_some_and(|c| {
                let env = c.env.iter().flatten().find(|e| e.name == "CAPSTAN_IMAGE");
                c.image.as_deref() == Some(image)
                    && env.is_some_and(|e| e.value.as_deref() == Some(image))
            })
    };
    let what = format!("the operator to run {image} alone (new pod Ready, old one gone)");
    let found = wait_for(&what, timeout, Duration::from_millis(250), || async {
        let d = deployments.get(OPERATOR_DEPLOYMENT).await.ok()?;
        let spec = d.spec.as_ref()?;
        let status = d.status.as_ref()?;
        let wanted = spec.replicas.unwrap_or(1);
        let rolled = runs_image(spec.template.spec.as_ref())
            && status.observed_generation == d.metadata.generation
            && status.updated_replicas == Some(wanted)
            && status.ready_replicas == Some(wanted)
            && status.replicas == Some(wanted);
        if !rolled {
            return None;
        }
        let list = pods
            .list(&ListParams::default().labels(selector))
            .await
            .ok()?;
        let all_new = list.items.iter().all(|p| {
            p.metadata.deletion_timestamp.is_none()
                && runs_image(p.spec.as_ref())
                && capstan::operator::cluster::operation::is_ready(p)
        });
        (all_new && list.items.len() == usize::try_from(wanted).ok()?).then_some(())
    })
    .await;
    if let Err(e) = found {
        // Say where the rollout stands.
        let pods = pods
            .list(&ListParams::default().labels(selector))
            .await
            .map(|l| {
                l.items
                    .iter()
                    .map(|p| {
                        let image = p
                            .spec
                            .as_ref()
                            .and_then(|s| s.containers.first())
                            .and_then(|c| c.image.clone())
                            .unwrap_or_default();
                        format!(
                            "{} ({image}, ready {}, deleting {})",
                            p.metadata.name.as_deref().unwrap_or_default(),
                            capstan::operator::cluster::operation::is_ready(p),
                            p.metadata.deletion_timestamp.is_some()
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_else(|e| format!("(cannot list: {e})"));
        return Err(E2eError::Check(format!("{e}; operator pods now: {pods}")));
    }
    Ok(())
}

/// Applies the CRDs as `capstan crd` prints them (what `helm install` does
/// from the chart), and waits until they are served.
async fn install_crds(client: &Client) -> Result<(), E2eError> {
    for crd in capstan::api::crd::all() {
        apply_crd(client, &crd).await?;
    }
    Ok(())
}

/// Waits until every Capstan CRD is served (after `helm install` or
/// `kubectl apply -k config/` created them).
async fn wait_capstan_crds(client: &Client) -> Result<(), E2eError> {
    for crd in capstan::api::crd::all() {
        wait_crd_established(client, crd.metadata.name.as_deref().unwrap_or_default()).await?;
    }
    Ok(())
}

/// Applies `crd` (server-side) and waits until it is served.
pub async fn apply_crd(
    client: &Client,
    crd: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
) -> Result<(), E2eError> {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let name = crd.metadata.name.clone().unwrap_or_default();
    api.patch(
        &name,
        &PatchParams::apply("capstan-e2e").force(),
        &Patch::Apply(crd),
    )
    .await
    .map_err(|e| E2eError::Kube(format!("apply CRD {name}"), e))?;
    wait_crd_established(client, &name).await
}

/// Waits until CRD `name` exists and is served (`Established`).
pub async fn wait_crd_established(client: &Client, name: &str) -> Result<(), E2eError> {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    wait_for(
        &format!("CRD {name} Established"),
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async {
            let crd = api.get(name).await.ok()?;
            crd.status?
                .conditions?
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
                .then_some(())
        },
    )
    .await
}

impl Harness {
    /// With `CAPSTAN_E2E_RBAC_REPORT=<file>`, each harness appends what
    /// every ServiceAccount did (from the audit log) to that file as one
    /// JSON line, for comparing the chart's and the operator's grants with
    /// their use.
    fn write_rbac_report(&self) {
        let Some(path) = std::env::var_os("CAPSTAN_E2E_RBAC_REPORT") else {
            return;
        };
        let line = serde_json::json!(self.plane.service_account_requests()).to_string();
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| std::io::Write::write_all(&mut f, format!("{line}\n").as_bytes()));
        if let Err(e) = written {
            eprintln!("CAPSTAN_E2E_RBAC_REPORT: {e}");
        }
    }

    /// No secret in any log ([`secret_scan`]): the Secrets listed now, while
    /// the API server still runs, and every one seen since it started; then
    /// the operator stopped and every pod frozen, so the logs are complete
    /// when they are read. On a hit the state directory is kept and the
    /// report (file, line, Secret and key; never a value) returned.
    fn scan_logs_for_secrets(&mut self) -> Result<(), String> {
        self.secret_watch.0.abort();
        let mut needles = self
            .secrets_seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let started = std::time::Instant::now();
        // An API server that is already gone (a harness that failed to
        // start) leaves the Secrets the watch saw: still scanned, and the
        // test's own error is the one reported.
        match list_secrets(&self.kubeconfig) {
            Ok(listed) => listed.iter().for_each(|s| needles.add_secret(s)),
            Err(e) => eprintln!(
                "secret scan: cannot list the Secrets ({e}); scanning for those the watch saw"
            ),
        }
        let listing = started.elapsed();
        self.operator = Operator::None;
        self.freeze_pods();
        let files = secret_scan::log_files(self.state.path());
        let report = needles.scan(&files);
        eprintln!(
            "{} (listing the Secrets {} ms, in all {} ms)",
            report.summary(),
            listing.as_millis(),
            started.elapsed().as_millis()
        );
        // CAPSTAN_E2E_SECRET_SCAN=list: what was looked for.
        if std::env::var("CAPSTAN_E2E_SECRET_SCAN").is_ok_and(|v| v == "list") {
            eprintln!("{}", needles.describe());
        }
        if report.clean() {
            return Ok(());
        }
        self.state.disable_cleanup(true);
        Err(format!(
            "{}\n(the harness state directory is kept: {})",
            report.render(&needles),
            self.state.path().display()
        ))
    }

    /// SIGSTOPs every pod the kubelet runs (directories `<ns>_<name>_<uid>`).
    fn freeze_pods(&self) {
        let Ok(entries) = std::fs::read_dir(self.state.path().join("kubelet/pods")) else {
            return;
        };
        for entry in entries.flatten() {
            let dir = entry.file_name();
            let mut parts = dir.to_str().unwrap_or_default().splitn(3, '_');
            if let (Some(namespace), Some(pod)) = (parts.next(), parts.next()) {
                let _ = self.runtime().freeze_pod(namespace, pod);
            }
        }
    }
}

/// Before the control plane stops (fields drop after this): the RBAC report
/// when asked for, and the secret scan, whose finding fails the test (only
/// printed when the test is already failing: no panic while panicking).
/// Every local scenario ends here, however it ends.
impl Drop for Harness {
    fn drop(&mut self) {
        self.write_rbac_report();
        if let Err(report) = self.scan_logs_for_secrets() {
            if std::thread::panicking() {
                eprintln!("{report}");
            } else {
                panic!("{report}");
            }
        }
    }
}

/// A task aborted when this is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Records what is secret in every Secret of every namespace, each version
/// as it is seen (so Secrets deleted or replaced during the test count).
fn watch_secrets(client: Client, seen: Arc<Mutex<secret_scan::Needles>>) -> AbortOnDrop {
    use futures::StreamExt;
    use kube::runtime::WatchStreamExt;
    use kube::runtime::watcher::{self, Event};
    let api: Api<Secret> = Api::all(client);
    AbortOnDrop(tokio::spawn(async move {
        let stream = watcher::watcher(api, watcher::Config::default()).default_backoff();
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(Event::Apply(s) | Event::InitApply(s) | Event::Delete(s)) => seen
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .add_secret(&s),
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %e, "Secret watch failed (retrying)"),
            }
        }
    }))
}

/// Every Secret of every namespace, listed by the admin on a thread and
/// runtime of its own (callable from `Drop`, whatever runtime runs it).
fn list_secrets(kubeconfig: &Path) -> Result<Vec<Secret>, String> {
    let kubeconfig = kubeconfig.to_path_buf();
    let thread = std::thread::Builder::new()
        .name("e2e-secret-list".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| format!("tokio runtime: {e}"))?;
            runtime.block_on(async {
                let kc = Kubeconfig::read_from(&kubeconfig)
                    .map_err(|e| format!("{}: {e}", kubeconfig.display()))?;
                let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                    .await
                    .map_err(|e| format!("{}: {e}", kubeconfig.display()))?;
                let client = Client::try_from(config).map_err(|e| e.to_string())?;
                let api: Api<Secret> = Api::all(client);
                let mut error = String::new();
                for _ in 0..3 {
                    let listed = tokio::time::timeout(
                        Duration::from_secs(10),
                        api.list(&ListParams::default()),
                    )
                    .await;
                    match listed {
                        Ok(Ok(list)) => return Ok(list.items),
                        Ok(Err(e)) => error = e.to_string(),
                        Err(_) => error = "no answer within 10 s".into(),
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(error)
            })
        })
        .map_err(|e| format!("cannot start a thread: {e}"))?;
    thread
        .join()
        .map_err(|_| "the listing thread panicked".to_string())?
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

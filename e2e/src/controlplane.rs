//! A real Kubernetes control plane for the harness: etcd, kube-apiserver,
//! kube-controller-manager and kube-scheduler, built from Go modules by
//! `.ci/build-k8s-tools.sh` (see e2e/k8s-tools/README.md), each a child
//! process with its log under the state directory. They run inside the
//! network namespace of the harness (see [`crate::netns`]): the API server
//! listens on a pod-range address, because Kubernetes refuses loopback
//! endpoint addresses.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};

use crate::E2eError;

/// Port of the API server (on [`ControlPlane::addr`]).
pub const API_PORT: u16 = 6443;
/// The issuer in ServiceAccount tokens; its audience is the default one.
const SA_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
/// User of `operator.kubeconfig`; the audit log records its requests only.
pub const OPERATOR_USER: &str = "capstan-e2e-operator";

/// Kubernetes version the tools are built at (e2e/k8s-tools/go.mod).
pub const KUBERNETES_VERSION: &str = "v1.37.2";

/// Where the control-plane binaries are: `$CAPSTAN_K8S_BIN`, printed by
/// `.ci/build-k8s-tools.sh` as its last line.
pub fn tools_dir() -> Result<PathBuf, E2eError> {
    let dir = std::env::var_os("CAPSTAN_K8S_BIN")
        .map(PathBuf::from)
        .ok_or_else(|| {
            E2eError::Setup(
                "CAPSTAN_K8S_BIN is not set: build the control plane with \
             `export CAPSTAN_K8S_BIN=$(bash .ci/build-k8s-tools.sh | tail -n1)`"
                    .into(),
            )
        })?;
    for tool in [
        "etcd",
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
    ] {
        if !dir.join(tool).is_file() {
            return Err(E2eError::Setup(format!(
                "{} has no {tool}: re-run .ci/build-k8s-tools.sh",
                dir.display()
            )));
        }
    }
    Ok(dir)
}

/// One component; killed (SIGKILL) when dropped.
struct Component {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Component {
    fn spawn(
        name: &'static str,
        program: &Path,
        args: &[String],
        dir: &Path,
    ) -> Result<Component, E2eError> {
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log)
            .map_err(|e| E2eError::Setup(format!("{}: {e}", log.display())))?;
        let err = out
            .try_clone()
            .map_err(|e| E2eError::Setup(format!("{}: {e}", log.display())))?;
        let mut command = Command::new(program);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        // The component dies with the harness even when the test process is
        // killed without unwinding (no control plane left running).
        die_with_parent(&mut command);
        let child = command
            .spawn()
            .map_err(|e| E2eError::Setup(format!("cannot start {}: {e}", program.display())))?;
        Ok(Component { name, child, log })
    }

    /// The end of its log, for error messages.
    fn tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(format!(
                "{} exited ({status}); its log ends:\n{}",
                self.name,
                self.tail()
            )),
            _ => None,
        }
    }
}

impl Drop for Component {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Files of the control plane's PKI.
struct Pki {
    ca_pem: String,
    /// The process kubelet's serving certificate (for the node address)
    /// and key: the API server checks it against the CA when it proxies
    /// `pods/portforward`, and the kubelet checks the API server's client
    /// certificate (`apiserver-kubelet-client.crt`) against the same CA.
    kubelet_cert_pem: String,
    kubelet_key_pem: String,
}

fn write(path: &Path, contents: &str) -> Result<(), E2eError> {
    std::fs::write(path, contents)
        .map_err(|e| E2eError::Setup(format!("cannot write {}: {e}", path.display())))
}

fn pki_error(e: rcgen::Error) -> E2eError {
    E2eError::Setup(format!("control-plane certificates: {e}"))
}

/// A CA, the API server's serving certificate, client certificates for the
/// admin (`system:masters`), the controller manager and the scheduler, and
/// the ServiceAccount signing key, all written to `dir`.
fn generate_pki(dir: &Path, api_ip: Ipv4Addr, service_ip: Ipv4Addr) -> Result<Pki, E2eError> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(pki_error)?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "capstan-e2e-ca");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().map_err(pki_error)?)
        .map_err(pki_error)?;
    write(&dir.join("ca.crt"), &ca.pem())?;

    let names = [
        "localhost",
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
    ];
    let mut serving =
        CertificateParams::new(names.map(String::from).to_vec()).map_err(pki_error)?;
    serving
        .distinguished_name
        .push(DnType::CommonName, "kube-apiserver");
    for ip in [
        IpAddr::V4(api_ip),
        IpAddr::V4(service_ip),
        IpAddr::V4(Ipv4Addr::LOCALHOST),
    ] {
        serving.subject_alt_names.push(SanType::IpAddress(ip));
    }
    serving.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate().map_err(pki_error)?;
    let cert = serving.signed_by(&key, &ca).map_err(pki_error)?;
    write(&dir.join("apiserver.crt"), &cert.pem())?;
    write(&dir.join("apiserver.key"), &key.serialize_pem())?;

    for (file, common_name, organization) in [
        ("admin", "capstan-e2e-admin", Some("system:masters")),
        // The operator as a host process: its own name, so the audit log
        // tells its requests from everyone else's.
        ("operator", OPERATOR_USER, Some("system:masters")),
        ("controller-manager", "system:kube-controller-manager", None),
        ("scheduler", "system:kube-scheduler", None),
    ] {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(pki_error)?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        if let Some(o) = organization {
            params.distinguished_name.push(DnType::OrganizationName, o);
        }
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().map_err(pki_error)?;
        let cert = params.signed_by(&key, &ca).map_err(pki_error)?;
        write(&dir.join(format!("{file}.crt")), &cert.pem())?;
        write(&dir.join(format!("{file}.key")), &key.serialize_pem())?;
        write_kubeconfig(dir, file, api_ip)?;
    }

    // The kubelet's HTTPS server, reached on the node's InternalIP (the
    // address the API server listens on too).
    let mut kubelet = CertificateParams::new(vec!["capstan-e2e".to_string()]).map_err(pki_error)?;
    kubelet
        .distinguished_name
        .push(DnType::CommonName, "system:node:capstan-e2e");
    kubelet
        .subject_alt_names
        .push(SanType::IpAddress(IpAddr::V4(api_ip)));
    kubelet.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    kubelet.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let kubelet_key = KeyPair::generate().map_err(pki_error)?;
    let kubelet_cert = kubelet.signed_by(&kubelet_key, &ca).map_err(pki_error)?;
    // The API server's client certificate towards kubelets.
    let mut client = CertificateParams::new(Vec::<String>::new()).map_err(pki_error)?;
    client
        .distinguished_name
        .push(DnType::CommonName, "kube-apiserver-kubelet-client");
    client.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client_key = KeyPair::generate().map_err(pki_error)?;
    let client_cert = client.signed_by(&client_key, &ca).map_err(pki_error)?;
    write(
        &dir.join("apiserver-kubelet-client.crt"),
        &client_cert.pem(),
    )?;
    write(
        &dir.join("apiserver-kubelet-client.key"),
        &client_key.serialize_pem(),
    )?;

    // ECDSA P-256: the API server signs ServiceAccount tokens with ES256.
    let sa = KeyPair::generate().map_err(pki_error)?;
    write(&dir.join("sa.key"), &sa.serialize_pem())?;
    write(&dir.join("sa.pub"), &sa.public_key_pem())?;
    Ok(Pki {
        ca_pem: ca.pem(),
        kubelet_cert_pem: kubelet_cert.pem(),
        kubelet_key_pem: kubelet_key.serialize_pem(),
    })
}

/// `<dir>/<user>.kubeconfig`, pointing at the files of `<user>`.
fn write_kubeconfig(dir: &Path, user: &str, api_ip: Ipv4Addr) -> Result<(), E2eError> {
    let path = |f: &str| dir.join(f).display().to_string();
    let text = format!(
        "apiVersion: v1
kind: Config
clusters:
- name: capstan-e2e
  cluster:
    server: https://{api_ip}:{API_PORT}
    certificate-authority: {ca}
users:
- name: {user}
  user:
    client-certificate: {crt}
    client-key: {key}
contexts:
- name: capstan-e2e
  context: {{cluster: capstan-e2e, user: {user}, namespace: default}}
current-context: capstan-e2e
",
        ca = path("ca.crt"),
        crt = path(&format!("{user}.crt")),
        key = path(&format!("{user}.key")),
    );
    write(&dir.join(format!("{user}.kubeconfig")), &text)
}

/// The running control plane. Dropping it stops every component
/// (scheduler, controller manager, API server, etcd).
pub struct ControlPlane {
    // Field order is drop order.
    scheduler: Component,
    controller_manager: Component,
    apiserver: Component,
    etcd: Component,
    addr: Ipv4Addr,
    dir: PathBuf,
    ca_pem: String,
    kubelet_serving: capstan_e2e_kubelet::KubeletServing,
    client: Client,
}

pub struct ControlPlaneOptions {
    /// Address the API server listens on and advertises: not loopback (a
    /// pod-range address inside the harness's network namespace).
    pub addr: Ipv4Addr,
    /// `--service-cluster-ip-range`.
    pub service_cidr: (Ipv4Addr, u8),
}

impl ControlPlane {
    /// The first component that exited, with the end of its log.
    pub fn exited(&mut self) -> Option<String> {
        self.etcd
            .exited()
            .or_else(|| self.apiserver.exited())
            .or_else(|| self.controller_manager.exited())
            .or_else(|| self.scheduler.exited())
    }

    pub async fn start(
        bin: &Path,
        dir: &Path,
        options: &ControlPlaneOptions,
    ) -> Result<ControlPlane, E2eError> {
        std::fs::create_dir_all(dir.join("etcd"))
            .map_err(|e| E2eError::Setup(format!("{}: {e}", dir.display())))?;
        let (net, prefix) = options.service_cidr;
        let first_service_ip = Ipv4Addr::from(u32::from(net) + 1);
        let pki = generate_pki(dir, options.addr, first_service_ip)?;
        let file = |f: &str| dir.join(f).display().to_string();
        let started = std::time::Instant::now();

        // etcd on the namespace's own loopback: nothing else can reach it.
        let mut etcd = Component::spawn(
            "etcd",
            &bin.join("etcd"),
            &[
                "--name=e2e".into(),
                format!("--data-dir={}", file("etcd")),
                "--listen-client-urls=http://127.0.0.1:2379".into(),
                "--advertise-client-urls=http://127.0.0.1:2379".into(),
                "--listen-peer-urls=http://127.0.0.1:2380".into(),
                "--initial-advertise-peer-urls=http://127.0.0.1:2380".into(),
                "--initial-cluster=e2e=http://127.0.0.1:2380".into(),
                "--unsafe-no-fsync".into(),
                "--log-level=warn".into(),
            ],
            dir,
        )?;

        // Requests of the host-process operator and of every workload's
        // ServiceAccount (metadata only): measurements count the operator's
        // by verb, and the RBAC review compares what each identity used with
        // what it is granted.
        write(
            &dir.join("audit-policy.yaml"),
            &format!(
                "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n- level: None\n  userGroups: [system:serviceaccounts:kube-system]\n- level: Metadata\n  users: [{OPERATOR_USER}]\n- level: Metadata\n  userGroups: [system:serviceaccounts]\n- level: None\n"
            ),
        )?;
        let mut apiserver = Component::spawn(
            "kube-apiserver",
            &bin.join("kube-apiserver"),
            &[
                "--etcd-servers=http://127.0.0.1:2379".into(),
                format!("--bind-address={}", options.addr),
                format!("--advertise-address={}", options.addr),
                format!("--secure-port={API_PORT}"),
                format!("--tls-cert-file={}", file("apiserver.crt")),
                format!("--tls-private-key-file={}", file("apiserver.key")),
                format!("--client-ca-file={}", file("ca.crt")),
                format!("--service-account-issuer={SA_ISSUER}"),
                format!("--service-account-key-file={}", file("sa.pub")),
                format!("--service-account-signing-key-file={}", file("sa.key")),
                format!("--service-cluster-ip-range={net}/{prefix}"),
                "--authorization-mode=Node,RBAC".into(),
                "--allow-privileged=true".into(),
                // One client (the harness) and a handful of controllers:
                // fairness queues only add latency here.
                "--enable-priority-and-fairness=false".into(),
                format!("--audit-policy-file={}", file("audit-policy.yaml")),
                format!("--audit-log-path={}", file("audit.log")),
                "--audit-log-maxsize=0".into(),
                // `pods/portforward` is proxied to the process kubelet's
                // HTTPS server on the Node's InternalIP (its Hostname does
                // not resolve here), both sides checked with this PKI.
                "--kubelet-preferred-address-types=InternalIP".into(),
                format!("--kubelet-certificate-authority={}", file("ca.crt")),
                format!(
                    "--kubelet-client-certificate={}",
                    file("apiserver-kubelet-client.crt")
                ),
                format!(
                    "--kubelet-client-key={}",
                    file("apiserver-kubelet-client.key")
                ),
            ],
            dir,
        )?;

        let kubeconfig = dir.join("admin.kubeconfig");
        let client = admin_client(&kubeconfig).await?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
        loop {
            if let Some(why) = etcd.exited().or_else(|| apiserver.exited()) {
                return Err(E2eError::Setup(why));
            }
            let req = http::Request::get("/readyz").body(Vec::new());
            if let Ok(req) = req
                && let Ok(text) = client.request_text(req).await
                && text.trim() == "ok"
            {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(E2eError::Setup(format!(
                    "kube-apiserver not ready within 90 s; its log ends:\n{}",
                    apiserver.tail()
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        tracing::info!(elapsed = ?started.elapsed(), "kube-apiserver ready");

        let controller_manager = Component::spawn(
            "kube-controller-manager",
            &bin.join("kube-controller-manager"),
            &controller_flags(
                &file("controller-manager.kubeconfig"),
                [
                    // The kubelet's claim binder stands in for the
                    // resizer: it grows tmpfs-backed volumes for real,
                    // online or when a pod mounts them next.
                    "--controllers=*,-persistentvolume-expander-controller".into(),
                    format!("--root-ca-file={}", file("ca.crt")),
                    format!("--service-account-private-key-file={}", file("sa.key")),
                    "--use-service-account-credentials=true".into(),
                ],
            ),
            dir,
        )?;
        let scheduler = Component::spawn(
            "kube-scheduler",
            &bin.join("kube-scheduler"),
            &controller_flags(&file("scheduler.kubeconfig"), []),
            dir,
        )?;
        let mut plane = ControlPlane {
            scheduler,
            controller_manager,
            apiserver,
            etcd,
            addr: options.addr,
            dir: dir.to_path_buf(),
            kubelet_serving: capstan_e2e_kubelet::KubeletServing {
                port: capstan_e2e_kubelet::portforward::DEFAULT_PORT,
                cert_pem: pki.kubelet_cert_pem,
                key_pem: pki.kubelet_key_pem,
                client_ca_pem: Some(pki.ca_pem.clone()),
            },
            ca_pem: pki.ca_pem,
            client,
        };
        plane.wait_controllers().await?;
        tracing::info!(elapsed = ?started.elapsed(), "control plane up");
        Ok(plane)
    }

    /// The controller manager works once it has published the root CA and
    /// created the `default` ServiceAccount of `default`.
    async fn wait_controllers(&mut self) -> Result<(), E2eError> {
        use k8s_openapi::api::core::v1::{ConfigMap, ServiceAccount};
        let sas: kube::Api<ServiceAccount> = kube::Api::namespaced(self.client.clone(), "default");
        let cms: kube::Api<ConfigMap> = kube::Api::namespaced(self.client.clone(), "default");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(why) = self
                .controller_manager
                .exited()
                .or_else(|| self.scheduler.exited())
                .or_else(|| self.apiserver.exited())
            {
                return Err(E2eError::Setup(why));
            }
            let sa = sas.get_opt("default").await.ok().flatten();
            let ca = cms.get_opt("kube-root-ca.crt").await.ok().flatten();
            if sa.is_some() && ca.is_some() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(E2eError::Setup(format!(
                    "kube-controller-manager did not create the default ServiceAccount and \
                     kube-root-ca.crt within 60 s; its log ends:\n{}",
                    self.controller_manager.tail()
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// An admin (`system:masters`) client.
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// The admin kubeconfig (client certificate; for kubectl and helm).
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("admin.kubeconfig")
    }

    /// Kubeconfig of [`OPERATOR_USER`] (cluster admin, audited).
    pub fn operator_kubeconfig(&self) -> PathBuf {
        self.dir.join("operator.kubeconfig")
    }

    /// Completed requests in the audit log: the host-process operator's and
    /// every ServiceAccount's outside kube-system.
    fn audit_events(&self) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(self.dir.join("audit.log")).unwrap_or_default();
        text.lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            // A watch is logged when its response starts (it may never end).
            .filter(|event| {
                event["stage"] == "ResponseComplete"
                    || (event["stage"] == "ResponseStarted" && event["verb"] == "watch")
            })
            .collect()
    }

    /// Requests of [`OPERATOR_USER`] so far, by `verb resource[/sub]` (from
    /// the audit log).
    pub fn operator_requests(&self) -> BTreeMap<String, u64> {
        let mut counts = BTreeMap::new();
        for event in self.audit_events() {
            if event["user"]["username"] != OPERATOR_USER {
                continue;
            }
            let verb = event["verb"].as_str().unwrap_or("?");
            *counts
                .entry(format!("{verb} {}", resource_of(&event)))
                .or_insert(0) += 1;
        }
        counts
    }

    /// What each ServiceAccount did so far: user → `verb group/resource[/sub]`
    /// (allowed or not), from the audit log.
    pub fn service_account_requests(&self) -> BTreeMap<String, std::collections::BTreeSet<String>> {
        let mut out: BTreeMap<String, std::collections::BTreeSet<String>> = BTreeMap::new();
        for event in self.audit_events() {
            let user = event["user"]["username"].as_str().unwrap_or_default();
            if !user.starts_with("system:serviceaccount:") {
                continue;
            }
            let resource = resource_of(&event);
            let group = event["objectRef"]["apiGroup"].as_str().unwrap_or("");
            let code = event["responseStatus"]["code"].as_i64().unwrap_or(0);
            let verb = event["verb"].as_str().unwrap_or("?");
            let denied = if code == 403 { " DENIED" } else { "" };
            out.entry(user.to_string())
                .or_default()
                .insert(format!("{verb} {group}/{resource}{denied}"));
        }
        out
    }

    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The process kubelet's HTTPS server (port-forward), as the API
    /// server is configured to reach it.
    pub fn kubelet_serving(&self) -> capstan_e2e_kubelet::KubeletServing {
        self.kubelet_serving.clone()
    }

    /// Logs of every component, for failure messages.
    pub fn log_dir(&self) -> &Path {
        &self.dir
    }
}

/// `resource[/subresource]` of an audit event, or its URI when it has none.
fn resource_of(event: &serde_json::Value) -> String {
    let obj = &event["objectRef"];
    match (obj["resource"].as_str(), obj["subresource"].as_str()) {
        (Some(r), Some(sub)) => format!("{r}/{sub}"),
        (Some(r), None) => r.to_string(),
        _ => event["requestURI"].as_str().unwrap_or("?").to_string(),
    }
}

/// Flags of kube-controller-manager and kube-scheduler: the kubeconfig of
/// their own user for the API and for checking their callers, one instance
/// (no election), their HTTPS endpoint on the namespace's loopback, then
/// `extra`.
fn controller_flags<const N: usize>(kubeconfig: &str, extra: [String; N]) -> Vec<String> {
    let mut flags = vec![
        format!("--kubeconfig={kubeconfig}"),
        format!("--authentication-kubeconfig={kubeconfig}"),
        format!("--authorization-kubeconfig={kubeconfig}"),
        "--leader-elect=false".into(),
        "--bind-address=127.0.0.1".into(),
    ];
    flags.extend(extra);
    flags
}

async fn admin_client(kubeconfig: &Path) -> Result<Client, E2eError> {
    let kc = Kubeconfig::read_from(kubeconfig)
        .map_err(|e| E2eError::Setup(format!("{}: {e}", kubeconfig.display())))?;
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(|e| E2eError::Setup(format!("{}: {e}", kubeconfig.display())))?;
    Client::try_from(config).map_err(|e| E2eError::Setup(format!("admin client: {e}")))
}

/// `command`'s process gets SIGKILL when the test process ends, even when
/// that is killed without unwinding.
pub(crate) fn die_with_parent(command: &mut Command) {
    // SAFETY: the closure only calls prctl, which is async-signal-safe.
    unsafe {
        use std::os::unix::process::CommandExt;
        command.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(std::io::Error::from)
        });
    }
}

//! Where the scenarios run: the local harness, or a real cluster named by
//! `CAPSTAN_E2E_KUBECONFIG` (with Capstan already installed there).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{AttachParams, DeleteParams, ListParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use tokio::net::TcpListener;

use crate::E2eError;
use crate::harness::{self, Harness, HarnessOptions, NEXT_OPERATOR_IMAGE};
use capstan_e2e_kubelet::Signal;

/// Command line of a postmaster (its children are `postgres: <what>`).
const POSTMASTER: &str = "postgres -D ";
/// The operator image to upgrade to on a real cluster.
pub const NEXT_IMAGE_ENV: &str = "CAPSTAN_E2E_NEXT_IMAGE";
/// A real cluster's operator rolled to the new image.
const OPERATOR_ROLLOUT_WITHIN: std::time::Duration = std::time::Duration::from_secs(300);

/// A cluster somebody else runs: Capstan's operator is installed there and
/// Services are reached through port-forwards.
pub struct Remote {
    client: Client,
    /// Namespace and label selector of the operator's pods (to restart it).
    operator_namespace: String,
    operator_selector: String,
}

pub enum Target {
    Local(Box<Harness>),
    Remote(Remote),
}

impl Target {
    /// `CAPSTAN_E2E_KUBECONFIG` set: that cluster. Otherwise a fresh local
    /// harness with the operator running.
    pub async fn from_env() -> Result<Target, E2eError> {
        match std::env::var_os("CAPSTAN_E2E_KUBECONFIG") {
            Some(path) => {
                let kubeconfig = Kubeconfig::read_from(PathBuf::from(&path))
                    .map_err(|e| E2eError::Setup(format!("CAPSTAN_E2E_KUBECONFIG: {e}")))?;
                let config =
                    Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                        .await
                        .map_err(|e| E2eError::Setup(format!("CAPSTAN_E2E_KUBECONFIG: {e}")))?;
                let client =
                    Client::try_from(config).map_err(|e| E2eError::Setup(e.to_string()))?;
                Ok(Target::Remote(Remote {
                    client,
                    operator_namespace: std::env::var("CAPSTAN_E2E_OPERATOR_NAMESPACE")
                        .unwrap_or_else(|_| "capstan-system".into()),
                    operator_selector: std::env::var("CAPSTAN_E2E_OPERATOR_SELECTOR")
                        .unwrap_or_else(|_| {
                            "app.kubernetes.io/name=capstan,app.kubernetes.io/component=operator"
                                .into()
                        }),
                }))
            }
            None => {
                let mut harness = Harness::start(HarnessOptions::default()).await?;
                if let Err(e) = harness.start_operator().await {
                    // Say whether the control plane itself went away.
                    let down = harness.control_plane_exited().unwrap_or_default();
                    return Err(E2eError::Setup(format!("{e}\n{down}")));
                }
                Ok(Target::Local(Box::new(harness)))
            }
        }
    }

    pub fn client(&self) -> Client {
        match self {
            Target::Local(h) => h.client(),
            Target::Remote(r) => r.client.clone(),
        }
    }

    pub fn harness(&mut self) -> Option<&mut Harness> {
        match self {
            Target::Local(h) => Some(h),
            Target::Remote(_) => None,
        }
    }

    /// The local harness, shared (e.g. to read pods' processes).
    pub fn local(&self) -> Option<&Harness> {
        match self {
            Target::Local(h) => Some(h),
            Target::Remote(_) => None,
        }
    }

    /// The image [`Target::upgrade_operator`] moves Capstan to: always
    /// [`NEXT_OPERATOR_IMAGE`] on the harness; `$CAPSTAN_E2E_NEXT_IMAGE` on a
    /// real cluster, `None` when unset (the scenario is then skipped).
    pub fn next_operator_image(&self) -> Option<String> {
        match self {
            Target::Local(_) => Some(NEXT_OPERATOR_IMAGE.to_string()),
            Target::Remote(_) => std::env::var(NEXT_IMAGE_ENV)
                .ok()
                .filter(|image| !image.is_empty()),
        }
    }

    /// Upgrades Capstan by changing only the operator's image, to
    /// [`Target::next_operator_image`], and waits until the new operator
    /// pod is Ready and the old one gone. Harness: `helm upgrade`
    /// ([`Harness::upgrade_operator`]). Real cluster: the Deployment
    /// `capstan-operator` in the operator namespace gets the image in its
    /// container and in `CAPSTAN_IMAGE`, as the chart sets both.
    pub async fn upgrade_operator(&mut self) -> Result<(), E2eError> {
        let image = self.next_operator_image();
        match self {
            Target::Local(h) => h.upgrade_operator().await,
            Target::Remote(r) => {
                let image = image.ok_or_else(|| {
                    E2eError::Setup(format!(
                        "{NEXT_IMAGE_ENV} is not set: no image to upgrade the operator to"
                    ))
                })?;
                harness::set_operator_image(&r.client, &r.operator_namespace, &image).await?;
                harness::wait_operator_image(
                    &r.client,
                    &r.operator_namespace,
                    &r.operator_selector,
                    &image,
                    OPERATOR_ROLLOUT_WITHIN,
                )
                .await
            }
        }
    }

    /// An address on this machine that reaches `<service>.<namespace>.svc:<port>`.
    pub async fn service_addr(
        &self,
        namespace: &str,
        service: &str,
        port: u16,
    ) -> Result<SocketAddr, E2eError> {
        match self {
            Target::Local(h) => h.service_addr(namespace, service, port).ok_or_else(|| {
                E2eError::Check(format!("Service {namespace}/{service} has no address"))
            }),
            Target::Remote(r) => r.forward(namespace, service, port).await,
        }
    }

    /// An address on this machine that reaches port `port` of pod `pod`
    /// (its pod IP on the harness, a port-forward on a real cluster).
    pub async fn pod_addr(
        &self,
        namespace: &str,
        pod: &str,
        port: u16,
    ) -> Result<SocketAddr, E2eError> {
        match self {
            Target::Local(h) => h
                .pod_ip(namespace, pod)
                .map(|ip| SocketAddr::new(ip, port))
                .ok_or_else(|| E2eError::Check(format!("pod {namespace}/{pod} has no address"))),
            Target::Remote(r) => {
                r.forward_to(namespace, Backend::Pod(pod.to_string()), port)
                    .await
            }
        }
    }

    /// SIGKILLs the postmaster of instance pod `pod` (the instance manager,
    /// PID 1 of the container, stays): through the process kubelet here, by
    /// `exec` into the `postgres` container on a real cluster.
    pub async fn kill_postmaster(&self, namespace: &str, pod: &str) -> Result<(), E2eError> {
        match self {
            Target::Local(h) => h
                .runtime()
                .kill_matching(namespace, pod, POSTMASTER, Signal::KILL)
                .map(|_| ())
                .map_err(|e| E2eError::Check(format!("kill the postmaster of {pod}: {e}"))),
            Target::Remote(r) => {
                let pods: Api<Pod> = Api::namespaced(r.client.clone(), namespace);
                let script = format!(
                    "kill -KILL \"$(head -n 1 {}/postmaster.pid)\"",
                    capstan::contract::layout::PGDATA
                );
                let mut process = pods
                    .exec(
                        pod,
                        ["sh", "-c", script.as_str()],
                        &AttachParams::default()
                            .container("postgres")
                            .stdout(false)
                            .stderr(true),
                    )
                    .await
                    .map_err(|e| E2eError::Kube(format!("exec in {namespace}/{pod}"), e))?;
                let status = match process.take_status() {
                    Some(status) => status.await,
                    None => None,
                };
                match status {
                    Some(s) if s.status.as_deref() == Some("Success") => Ok(()),
                    other => Err(E2eError::Check(format!(
                        "kill the postmaster of {pod}: {other:?}"
                    ))),
                }
            }
        }
    }

    /// Kills the operator (SIGKILL locally; pod deletion with grace 0 on a
    /// real cluster, where its Deployment brings it back).
    pub async fn kill_operator(&mut self) -> Result<(), E2eError> {
        match self {
            Target::Local(h) => h.kill_operator().await,
            Target::Remote(r) => {
                let pods: Api<Pod> = Api::namespaced(r.client.clone(), &r.operator_namespace);
                let list = pods
                    .list(&ListParams::default().labels(&r.operator_selector))
                    .await
                    .map_err(|e| E2eError::Kube("list operator pods".into(), e))?;
                for pod in list.items {
                    let name = pod.metadata.name.unwrap_or_default();
                    pods.delete(&name, &DeleteParams::default().grace_period(0))
                        .await
                        .map_err(|e| E2eError::Kube(format!("delete operator pod {name}"), e))?;
                }
                Ok(())
            }
        }
    }

    /// Starts the operator again (locally; a real cluster's Deployment does
    /// it by itself).
    pub async fn start_operator(&mut self) -> Result<(), E2eError> {
        match self {
            Target::Local(h) => h.start_operator().await,
            Target::Remote(_) => Ok(()),
        }
    }

    /// Pods, statuses and logs of `namespace` (local harness only).
    pub async fn diagnostics(&self, namespace: &str) -> String {
        match self {
            Target::Local(h) => h.diagnostics(namespace).await,
            Target::Remote(_) => {
                format!("(kubectl -n {namespace} get pods; kubectl -n {namespace} logs <pod>)")
            }
        }
    }

    /// The operator's logs, when the harness has them (for failure messages).
    pub fn operator_logs(&self) -> String {
        match self {
            Target::Local(h) => h.operator_logs(),
            Target::Remote(_) => {
                "(operator logs: kubectl logs -n capstan-system deploy/capstan-operator)".into()
            }
        }
    }
}

/// Which pod a port-forward reaches, chosen again for each connection.
enum Backend {
    /// A ready pod matching the selector (a Service's).
    Selector(String),
    /// That pod.
    Pod(String),
}

impl Remote {
    /// Forwards a local port to a ready pod behind the Service, one
    /// port-forward stream per accepted connection.
    async fn forward(
        &self,
        namespace: &str,
        service: &str,
        port: u16,
    ) -> Result<SocketAddr, E2eError> {
        let services: Api<Service> = Api::namespaced(self.client.clone(), namespace);
        let svc = services
            .get(service)
            .await
            .map_err(|e| E2eError::Kube(format!("get Service {namespace}/{service}"), e))?;
        let selector = svc
            .spec
            .and_then(|s| s.selector)
            .map(|m| {
                m.iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .ok_or_else(|| E2eError::Check(format!("Service {service} has no selector")))?;
        self.forward_to(namespace, Backend::Selector(selector), port)
            .await
    }

    async fn forward_to(
        &self,
        namespace: &str,
        backend: Backend,
        target_port: u16,
    ) -> Result<SocketAddr, E2eError> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| E2eError::Setup(format!("cannot listen for a port-forward: {e}")))?;
        let addr = listener
            .local_addr()
            .map_err(|e| E2eError::Setup(e.to_string()))?;
        let pods: Arc<Api<Pod>> = Arc::new(Api::namespaced(self.client.clone(), namespace));
        let backend = Arc::new(backend);
        tokio::spawn(async move {
            while let Ok((mut local, _)) = listener.accept().await {
                let pods = pods.clone();
                let backend = backend.clone();
                tokio::spawn(async move {
                    let name = match backend.as_ref() {
                        Backend::Pod(name) => name.clone(),
                        Backend::Selector(selector) => {
                            let Ok(list) = pods.list(&ListParams::default().labels(selector)).await
                            else {
                                return;
                            };
                            let ready = list
                                .items
                                .into_iter()
                                .find(capstan::operator::cluster::operation::is_ready);
                            let Some(name) = ready.and_then(|p| p.metadata.name) else {
                                return;
                            };
                            name
                        }
                    };
                    let Ok(mut forwarder) = pods.portforward(&name, &[target_port]).await else {
                        return;
                    };
                    let Some(mut upstream) = forwarder.take_stream(target_port) else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut local, &mut upstream).await;
                });
            }
        });
        Ok(addr)
    }
}

/// Fails the test with `error`, the pods of `namespace` (statuses and log
/// ends) and the end of the operator's log.
pub async fn fail(target: &Target, namespace: &str, error: crate::E2eError) -> ! {
    let pods = target.diagnostics(namespace).await;
    let log = target.operator_logs();
    let lines: Vec<&str> = log.lines().collect();
    let operator = lines[lines.len().saturating_sub(60)..].join("\n");
    panic!("{error}\n--- pods ---\n{pods}\n--- operator log (end) ---\n{operator}");
}

//! The API-facing side: watches the Kubernetes API through kube's client, as a
//! kubelet, kube-proxy, scheduler and a few controllers would, and drives the
//! node runtime. It only uses the REST API, so it works against any API server.

pub(crate) mod claims;
mod deployments;
mod node;
mod pods;
mod services;
mod tokens;

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{
    ConfigMap, PersistentVolume, PersistentVolumeClaim, Pod, Secret, Service,
};
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::config::KubeletConfig;
use crate::dns::Resolver;
use crate::objects::ObjectSource;
use crate::runtime::{Runtime, RuntimeError, RuntimeHandle};
use crate::tokens::{TokenKey, TokenStore};

#[derive(Debug, thiserror::Error)]
pub enum KubeletError {
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Serve(#[from] crate::portforward::ServeError),
    #[error(
        "the watch caches did not fill within {0:?}: is the API server reachable and are the kinds served?"
    )]
    NotSynced(Duration),
}

/// Watch caches of the objects pods refer to, and their tokens.
#[derive(Clone)]
struct Caches {
    pods: Store<Pod>,
    services: Store<Service>,
    secrets: Store<Secret>,
    config_maps: Store<ConfigMap>,
    claims: Store<PersistentVolumeClaim>,
    /// Only watched by the claim binder with `persistent_volumes`.
    volumes: Store<PersistentVolume>,
    deployments: Store<Deployment>,
    tokens: Arc<TokenStore>,
}

impl ObjectSource for Caches {
    fn secret(&self, namespace: &str, name: &str) -> Option<Arc<Secret>> {
        self.secrets.get(&ObjectRef::new(name).within(namespace))
    }

    fn config_map(&self, namespace: &str, name: &str) -> Option<Arc<ConfigMap>> {
        self.config_maps
            .get(&ObjectRef::new(name).within(namespace))
    }

    fn claim(&self, namespace: &str, name: &str) -> Option<Arc<PersistentVolumeClaim>> {
        self.claims.get(&ObjectRef::new(name).within(namespace))
    }

    fn service_account_token(&self, key: &TokenKey) -> Option<String> {
        self.tokens.get(key).map(|t| t.token)
    }
}

/// Wakes a controller loop: on watch events, and every `resync` anyway.
async fn triggered(notify: &Notify, resync: Duration) {
    tokio::select! {
        _ = notify.notified() => {}
        _ = tokio::time::sleep(resync) => {}
    }
    // Let a burst of events settle into one pass.
    tokio::time::sleep(Duration::from_millis(20)).await;
}

/// Runs a reflector for `K` cluster-wide, calling `on_event` for each event.
fn reflect<K>(
    client: &Client,
    writer: reflector::store::Writer<K>,
    mut on_event: impl FnMut(&Event<K>) + Send + 'static,
) -> JoinHandle<()>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let api: Api<K> = Api::all(client.clone());
    let stream = reflector::reflector(
        writer,
        watcher::watcher(api, watcher::Config::default()).default_backoff(),
    );
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(event) => on_event(&event),
                Err(e) => {
                    tracing::warn!(kind = %K::kind(&Default::default()), error = %e, "watch failed (retrying)")
                }
            }
        }
    })
}

/// A running process kubelet with its Service proxy and controllers.
/// Dropping it kills every pod process and stops every task.
pub struct Kubelet {
    tasks: Vec<JoinHandle<()>>,
    runtime: Runtime,
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

const SYNC_TIMEOUT: Duration = Duration::from_secs(60);

impl Kubelet {
    /// Starts watching the API server behind `client` and returns once the
    /// watch caches are filled.
    pub async fn start(client: Client, config: KubeletConfig) -> Result<Kubelet, KubeletError> {
        let (pods, pods_w) = reflector::store();
        let (services, services_w) = reflector::store();
        let (secrets, secrets_w) = reflector::store();
        let (config_maps, config_maps_w) = reflector::store();
        let (claims, claims_w) = reflector::store();
        let (volumes, volumes_w) = reflector::store();
        let (deployments, deployments_w) = reflector::store();
        let caches = Caches {
            pods,
            services,
            secrets,
            config_maps,
            claims,
            volumes,
            deployments,
            tokens: Arc::new(TokenStore::new()),
        };
        let controllers = config.controllers;
        let resync = config.resync;
        let token_requests = config.token_requests;
        let watch_volumes = controllers.claim_binder && config.persistent_volumes;
        let (runtime, events) = Runtime::new(config, Arc::new(caches.clone()))?;
        let rt = runtime.handle();
        let mut tasks = Vec::new();
        if let Some(serving) = &rt.config().serving {
            tasks.push(crate::portforward::spawn(
                serving,
                std::net::IpAddr::V4(rt.config().node_ip),
                Arc::new(rt.clone()),
            )?);
        }

        let services_notify = Arc::new(Notify::new());
        let deployments_notify = Arc::new(Notify::new());
        let claims_notify = Arc::new(Notify::new());
        let tokens_notify = Arc::new(Notify::new());

        let mut pod_sink = pods::PodSink::new(rt.clone(), client.clone(), controllers.scheduler);
        let (sn, dn, tn) = (
            services_notify.clone(),
            deployments_notify.clone(),
            tokens_notify.clone(),
        );
        tasks.push(reflect(&client, pods_w, move |event| {
            pod_sink.handle(event);
            sn.notify_one();
            dn.notify_one();
            tn.notify_one();
        }));
        let sn = services_notify.clone();
        tasks.push(reflect(&client, services_w, move |_: &Event<Service>| {
            sn.notify_one()
        }));
        let r = rt.clone();
        tasks.push(reflect(&client, secrets_w, move |_: &Event<Secret>| {
            r.objects_changed()
        }));
        let r = rt.clone();
        tasks.push(reflect(
            &client,
            config_maps_w,
            move |_: &Event<ConfigMap>| r.objects_changed(),
        ));
        let (r, cn) = (rt.clone(), claims_notify.clone());
        tasks.push(reflect(
            &client,
            claims_w,
            move |event: &Event<PersistentVolumeClaim>| {
                if let Event::Delete(pvc) = event {
                    r.claim_deleted(
                        pvc.metadata.namespace.as_deref().unwrap_or_default(),
                        pvc.metadata.name.as_deref().unwrap_or_default(),
                    );
                }
                r.objects_changed();
                cn.notify_one();
            },
        ));
        if watch_volumes {
            let cn = claims_notify.clone();
            tasks.push(reflect(
                &client,
                volumes_w,
                move |_: &Event<PersistentVolume>| cn.notify_one(),
            ));
        }
        if controllers.deployments {
            let dn = deployments_notify.clone();
            tasks.push(reflect(
                &client,
                deployments_w,
                move |_: &Event<Deployment>| dn.notify_one(),
            ));
        }

        let wait = async {
            caches.pods.wait_until_ready().await.ok();
            caches.services.wait_until_ready().await.ok();
            caches.secrets.wait_until_ready().await.ok();
            caches.config_maps.wait_until_ready().await.ok();
            caches.claims.wait_until_ready().await.ok();
            if watch_volumes {
                caches.volumes.wait_until_ready().await.ok();
            }
            if controllers.deployments {
                caches.deployments.wait_until_ready().await.ok();
            }
        };
        if tokio::time::timeout(SYNC_TIMEOUT, wait).await.is_err() {
            for t in &tasks {
                t.abort();
            }
            return Err(KubeletError::NotSynced(SYNC_TIMEOUT));
        }

        tasks.push(tokio::spawn(pods::write_statuses(client.clone(), events)));
        tasks.push(tokio::spawn(node::run(client.clone(), rt.config().clone())));
        if token_requests {
            tasks.push(tokio::spawn(tokens::run(
                client.clone(),
                rt.clone(),
                caches.clone(),
                caches.tokens.clone(),
                tokens_notify,
                resync,
            )));
        }
        if controllers.services {
            tasks.push(tokio::spawn(services::run(
                client.clone(),
                rt.clone(),
                caches.clone(),
                services_notify,
                resync,
            )));
        }
        if controllers.deployments {
            tasks.push(tokio::spawn(deployments::run(
                client.clone(),
                caches.clone(),
                deployments_notify,
                resync,
            )));
        }
        if controllers.claim_binder {
            tasks.push(tokio::spawn(claims::run(
                client.clone(),
                rt.config().clone(),
                caches.clone(),
                claims_notify,
                resync,
            )));
        }
        Ok(Kubelet { tasks, runtime })
    }

    /// The node: pod statuses, logs, and the fault hooks.
    pub fn runtime(&self) -> &RuntimeHandle {
        &self.runtime
    }

    /// Service names as pods see them, for test code on the host.
    pub fn resolver(&self) -> Resolver {
        self.runtime.resolver()
    }
}

/// Runs a kubelet until the task is cancelled.
pub async fn run(client: Client, config: KubeletConfig) -> Result<(), KubeletError> {
    let _kubelet = Kubelet::start(client, config).await?;
    std::future::pending::<()>().await;
    Ok(())
}

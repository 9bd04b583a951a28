//! Services: addresses (patched into `spec.clusterIP` when the API server
//! left it empty), the proxy, names, and `Endpoints` objects.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Endpoints, Pod};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use tokio::sync::Notify;

use super::{Caches, triggered};
use crate::proxy::ServiceProxy;
use crate::runtime::RuntimeHandle;

type Key = (String, String);

pub(super) async fn run(
    client: Client,
    rt: RuntimeHandle,
    caches: Caches,
    notify: Arc<Notify>,
    resync: Duration,
) {
    let cfg = rt.config().clone();
    let write_endpoints = cfg.controllers.endpoints;
    let mut proxy = ServiceProxy::new(cfg.service_cidr, &cfg.cluster_domain, &cfg.node_name);
    let mut assigned: HashSet<(Key, String)> = HashSet::new();
    let mut written: HashMap<Key, Endpoints> = HashMap::new();
    loop {
        let services = caches.services.state();
        let pods = caches.pods.state();
        let pod_refs: Vec<&Pod> = pods.iter().map(|p| p.as_ref()).collect();
        let update = proxy.apply(services.iter().map(|s| s.as_ref()), &pod_refs);
        rt.set_dns(update.dns);

        for (ns, name, ip) in update.assign_cluster_ip {
            let key = ((ns.clone(), name.clone()), ip.to_string());
            if assigned.contains(&key) {
                continue;
            }
            let api: Api<k8s_openapi::api::core::v1::Service> =
                Api::namespaced(client.clone(), &ns);
            let patch = serde_json::json!({"spec": {"clusterIP": ip.to_string(), "clusterIPs": [ip.to_string()]}});
            match api
                .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
                .await
            {
                Ok(_) => {
                    assigned.insert(key);
                }
                Err(e) => {
                    tracing::warn!(namespace = %ns, service = %name, error = %e, "cannot set spec.clusterIP")
                }
            }
        }

        if write_endpoints {
            let mut live = HashSet::new();
            for ep in update.endpoints {
                let key = (ep.namespace().unwrap_or_default(), ep.name_any());
                live.insert(key.clone());
                if written.get(&key).is_some_and(|w| {
                    w.subsets == ep.subsets && w.metadata.labels == ep.metadata.labels
                }) {
                    continue;
                }
                match write(&client, &ep).await {
                    Ok(()) => {
                        written.insert(key, ep);
                    }
                    Err(e) => {
                        tracing::debug!(namespace = %key.0, service = %key.1, error = %e, "cannot write Endpoints (retrying)")
                    }
                }
            }
            let gone: Vec<Key> = written
                .keys()
                .filter(|k| !live.contains(*k))
                .cloned()
                .collect();
            for key in gone {
                let api: Api<Endpoints> = Api::namespaced(client.clone(), &key.0);
                match api.delete(&key.1, &DeleteParams::default()).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(s)) if s.is_not_found() => {}
                    Err(e) => {
                        tracing::debug!(namespace = %key.0, service = %key.1, error = %e, "cannot delete Endpoints (retrying)");
                        continue;
                    }
                }
                written.remove(&key);
            }
        }
        triggered(&notify, resync).await;
    }
}

async fn write(client: &Client, ep: &Endpoints) -> Result<(), kube::Error> {
    let api: Api<Endpoints> = Api::namespaced(client.clone(), &ep.namespace().unwrap_or_default());
    match api.get_opt(&ep.name_any()).await? {
        None => api.create(&PostParams::default(), ep).await.map(drop),
        Some(existing) => {
            let mut ep = ep.clone();
            ep.metadata.resource_version = existing.metadata.resource_version;
            api.replace(&ep.name_any(), &PostParams::default(), &ep)
                .await
                .map(drop)
        }
    }
}

//! The endpoints and endpointslice controllers: for every Service with a
//! selector, an Endpoints object and EndpointSlices listing the matching
//! pods that have an IP — ready ones as addresses, others as
//! notReadyAddresses (slices carry ready/serving/terminating conditions).
//! Runs shortly after any pod or Service write in a namespace, so a
//! relabelled primary moves behind `<cluster>-rw` promptly.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value, json};
use tokio::sync::watch;

use crate::api::ApiState;
use crate::delete::{DeleteOptions, delete_object};
use crate::meta;
use crate::store::{Table, key_of};
use crate::write::{system_create, system_update};

const DEBOUNCE: Duration = Duration::from_millis(10);
const RESYNC: Duration = Duration::from_secs(5);
/// Marks Endpoints this controller maintains (the real controller sets it too).
const TRIGGER_ANNOTATION: &str = "endpoints.kubernetes.io/last-change-trigger-time";
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
const MANAGED_BY: &str = "endpointslice-controller.k8s.io";

pub async fn run(state: Arc<ApiState>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let resync = tokio::select! {
            _ = state.store.workloads_changed.notified() => false,
            _ = tokio::time::sleep(RESYNC) => true,
            _ = shutdown.changed() => return,
        };
        tokio::time::sleep(DEBOUNCE).await;
        let namespaces = if resync {
            state.store.take_dirty_namespaces();
            namespaces(&state)
        } else {
            state.store.take_dirty_namespaces()
        };
        for namespace in namespaces {
            reconcile_namespace(&state, &namespace);
        }
    }
}

fn namespaces(state: &ApiState) -> BTreeSet<String> {
    state
        .store
        .table("", "namespaces")
        .map(|t| {
            t.list(&state.store, None)
                .0
                .iter()
                .filter_map(|n| n["metadata"]["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn selects(selector: &Map<String, Value>, pod: &Value) -> bool {
    let labels = &pod["metadata"]["labels"];
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn pod_ready(pod: &Value) -> bool {
    pod["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

/// The container port a service port targets on this pod.
fn resolve_port(service_port: &Value, pod: &Value) -> Option<i64> {
    match &service_port["targetPort"] {
        Value::Number(n) => n.as_i64(),
        Value::String(name) => pod["spec"]["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|c| c["ports"].as_array().into_iter().flatten())
            .find(|p| p["name"].as_str() == Some(name))
            .and_then(|p| p["containerPort"].as_i64()),
        _ => service_port["port"].as_i64(),
    }
}

struct Member<'a> {
    pod: &'a Value,
    ip: &'a str,
    ready: bool,
    terminating: bool,
}

impl Member<'_> {
    fn target_ref(&self) -> Value {
        json!({
            "kind": "Pod",
            "namespace": self.pod["metadata"]["namespace"],
            "name": self.pod["metadata"]["name"],
            "uid": self.pod["metadata"]["uid"],
        })
    }

    fn address(&self) -> Value {
        let mut address = json!({"ip": self.ip, "targetRef": self.target_ref()});
        if let Some(node) = self.pod["spec"]["nodeName"].as_str() {
            address["nodeName"] = json!(node);
        }
        address
    }
}

/// Pods behind a service, grouped by the ports they resolve to.
fn groups<'a>(
    service: &Value,
    pods: &'a [Arc<Value>],
) -> BTreeMap<String, (Value, Vec<Member<'a>>)> {
    let mut out: BTreeMap<String, (Value, Vec<Member<'a>>)> = BTreeMap::new();
    let Some(selector) = service["spec"]["selector"].as_object() else {
        return out;
    };
    let publish_not_ready = service["spec"]["publishNotReadyAddresses"] == Value::Bool(true);
    for pod in pods.iter().map(|p| &**p) {
        let Some(ip) = pod["status"]["podIP"].as_str().filter(|ip| !ip.is_empty()) else {
            continue;
        };
        if !selects(selector, pod)
            || matches!(
                pod["status"]["phase"].as_str(),
                Some("Succeeded" | "Failed")
            )
        {
            continue;
        }
        let ports: Vec<Value> = service["spec"]["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|sp| {
                let port = resolve_port(sp, pod)?;
                let mut p =
                    json!({"port": port, "protocol": sp["protocol"].as_str().unwrap_or("TCP")});
                if let Some(name) = sp["name"].as_str() {
                    p["name"] = json!(name);
                }
                Some(p)
            })
            .collect();
        let terminating = pod.pointer("/metadata/deletionTimestamp").is_some();
        let member = Member {
            pod,
            ip,
            ready: publish_not_ready || (pod_ready(pod) && !terminating),
            terminating,
        };
        let ports = Value::Array(ports);
        out.entry(ports.to_string())
            .or_insert_with(|| (ports, vec![]))
            .1
            .push(member);
    }
    for (_, members) in out.values_mut() {
        members.sort_by(|a, b| a.ip.cmp(b.ip));
    }
    out
}

fn endpoints_subsets(groups: &BTreeMap<String, (Value, Vec<Member<'_>>)>) -> Vec<Value> {
    groups
        .values()
        .filter_map(|(ports, members)| {
            let ready: Vec<Value> = members
                .iter()
                .filter(|m| m.ready)
                .map(Member::address)
                .collect();
            let not_ready: Vec<Value> = members
                .iter()
                .filter(|m| !m.ready && !m.terminating)
                .map(Member::address)
                .collect();
            if ready.is_empty() && not_ready.is_empty() {
                return None;
            }
            let mut subset = json!({"ports": ports});
            if !ready.is_empty() {
                subset["addresses"] = json!(ready);
            }
            if !not_ready.is_empty() {
                subset["notReadyAddresses"] = json!(not_ready);
            }
            Some(subset)
        })
        .collect()
}

fn slice_endpoints(members: &[Member<'_>]) -> Vec<Value> {
    members
        .iter()
        .map(|m| {
            let mut ep = json!({
                "addresses": [m.ip],
                "conditions": {
                    "ready": m.ready,
                    "serving": pod_ready(m.pod),
                    "terminating": m.terminating,
                },
                "targetRef": m.target_ref(),
            });
            if let Some(node) = m.pod["spec"]["nodeName"].as_str() {
                ep["nodeName"] = json!(node);
            }
            ep
        })
        .collect()
}

fn reconcile_namespace(state: &ApiState, namespace: &str) {
    let table = |g: &str, p: &str| state.store.table(g, p);
    let (Some(services), Some(pods), Some(endpoints), Some(slices)) = (
        table("", "services"),
        table("", "pods"),
        table("", "endpoints"),
        table("discovery.k8s.io", "endpointslices"),
    ) else {
        return;
    };
    let (services_now, _) = services.list(&state.store, Some(namespace));
    let (pods_now, _) = pods.list(&state.store, Some(namespace));
    let mut managed: BTreeSet<String> = BTreeSet::new();
    for service in &services_now {
        if service["spec"]["selector"]
            .as_object()
            .is_none_or(Map::is_empty)
            || service["spec"]["type"] == "ExternalName"
            || service.pointer("/metadata/deletionTimestamp").is_some()
        {
            continue;
        }
        let name = service["metadata"]["name"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let grouped = groups(service, &pods_now);
        sync_endpoints(state, &endpoints, service, &name, namespace, &grouped);
        sync_slices(state, &slices, service, &name, namespace, &grouped);
        managed.insert(name);
    }
    // Endpoints and slices of services that are gone (slices also have an
    // ownerReference, but removing them here is immediate).
    let background = DeleteOptions::default();
    for ep in endpoints.list(&state.store, Some(namespace)).0 {
        let name = ep["metadata"]["name"].as_str().unwrap_or("");
        if ep["metadata"]["annotations"]
            .get(TRIGGER_ANNOTATION)
            .is_some()
            && !managed.contains(name)
        {
            let _ = delete_object(state, &endpoints, &key_of(&ep), &background);
        }
    }
    for slice in slices.list(&state.store, Some(namespace)).0 {
        let labels = &slice["metadata"]["labels"];
        let service = labels[SERVICE_NAME_LABEL].as_str().unwrap_or("");
        if labels[MANAGED_BY_LABEL] == MANAGED_BY && !managed.contains(service) {
            let _ = delete_object(state, &slices, &key_of(&slice), &background);
        }
    }
}

fn sync_endpoints(
    state: &ApiState,
    table: &Arc<Table>,
    service: &Value,
    name: &str,
    namespace: &str,
    grouped: &BTreeMap<String, (Value, Vec<Member<'_>>)>,
) {
    let subsets = endpoints_subsets(grouped);
    let labels = service["metadata"]["labels"].clone();
    let key = (namespace.to_string(), name.to_string());
    match table.get(&key) {
        Some(current) => {
            let current_subsets = current["subsets"].as_array().cloned().unwrap_or_default();
            let current_labels = current["metadata"]["labels"].clone();
            if current_subsets == subsets && current_labels == labels {
                return;
            }
            system_update(state, table, &key, |obj| {
                if subsets.is_empty() {
                    obj.as_object_mut().map(|m| m.remove("subsets"));
                } else {
                    obj["subsets"] = json!(subsets);
                }
                obj["metadata"]["labels"] = labels.clone();
                obj["metadata"]["annotations"][TRIGGER_ANNOTATION] = json!(meta::now());
                true
            });
        }
        None => {
            let mut obj = json!({
                "apiVersion": "v1", "kind": "Endpoints",
                "metadata": {"name": name, "namespace": namespace, "labels": labels,
                             "annotations": {TRIGGER_ANNOTATION: meta::now()}},
            });
            if !subsets.is_empty() {
                obj["subsets"] = json!(subsets);
            }
            system_create(state, table, obj);
        }
    }
}

fn sync_slices(
    state: &ApiState,
    table: &Arc<Table>,
    service: &Value,
    name: &str,
    namespace: &str,
    grouped: &BTreeMap<String, (Value, Vec<Member<'_>>)>,
) {
    // One slice per port set (named <service>-<n>), or one empty slice.
    let mut desired: Vec<(Value, Vec<Value>)> = grouped
        .values()
        .map(|(ports, members)| (ports.clone(), slice_endpoints(members)))
        .collect();
    if desired.is_empty() {
        desired.push((json!([]), vec![]));
    }
    let owner = json!([{
        "apiVersion": "v1", "kind": "Service", "name": name,
        "uid": service["metadata"]["uid"], "controller": true, "blockOwnerDeletion": true,
    }]);
    let labels = json!({SERVICE_NAME_LABEL: name, MANAGED_BY_LABEL: MANAGED_BY});
    let mut wanted_names = BTreeSet::new();
    for (i, (ports, endpoints)) in desired.into_iter().enumerate() {
        let slice_name = format!("{name}-{i}");
        let key = (namespace.to_string(), slice_name.clone());
        wanted_names.insert(slice_name.clone());
        match table.get(&key) {
            Some(current)
                if current["ports"] == ports && current["endpoints"] == json!(endpoints) => {}
            Some(_) => {
                system_update(state, table, &key, |obj| {
                    obj["ports"] = ports.clone();
                    obj["endpoints"] = json!(endpoints);
                    true
                });
            }
            None => {
                system_create(
                    state,
                    table,
                    json!({
                        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                        "metadata": {"name": slice_name, "namespace": namespace, "labels": labels,
                                     "ownerReferences": owner},
                        "addressType": "IPv4",
                        "ports": ports,
                        "endpoints": endpoints,
                    }),
                );
            }
        }
    }
    for slice in table.list(&state.store, Some(namespace)).0 {
        let slice_labels = &slice["metadata"]["labels"];
        let slice_name = slice["metadata"]["name"].as_str().unwrap_or("");
        if slice_labels[SERVICE_NAME_LABEL] == name
            && slice_labels[MANAGED_BY_LABEL] == MANAGED_BY
            && !wanted_names.contains(slice_name)
        {
            let _ = delete_object(state, table, &key_of(&slice), &DeleteOptions::default());
        }
    }
}

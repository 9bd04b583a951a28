//! Which pods back a Service port, as the endpoints controller decides it.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints, ObjectReference, Pod, Service,
    ServicePort,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn pod_ip(pod: &Pod) -> Option<IpAddr> {
    pod.status.as_ref()?.pod_ip.as_deref()?.parse().ok()
}

fn terminal(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

pub fn selects(service: &Service, pod: &Pod) -> bool {
    let Some(selector) = service
        .spec
        .as_ref()
        .and_then(|s| s.selector.as_ref())
        .filter(|s| !s.is_empty())
    else {
        return false;
    };
    if pod.namespace() != service.namespace() {
        return false;
    }
    let labels = pod.labels();
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The container port a Service port targets on `pod` (`None`: the pod
/// does not expose that named port).
pub fn target_port(port: &ServicePort, pod: &Pod) -> Option<u16> {
    match &port.target_port {
        None => u16::try_from(port.port).ok(),
        Some(IntOrString::Int(n)) => u16::try_from(*n).ok(),
        Some(IntOrString::String(name)) => {
            let protocol = port.protocol.as_deref().unwrap_or("TCP");
            pod.spec
                .iter()
                .flat_map(|s| s.containers.iter())
                .flat_map(|c| c.ports.iter().flatten())
                .find_map(|p| {
                    (p.name.as_deref() == Some(name.as_str())
                        && p.protocol.as_deref().unwrap_or("TCP") == protocol)
                        .then(|| u16::try_from(p.container_port).ok())
                        .flatten()
                })
        }
    }
}

/// A pod selected by a Service and eligible as an endpoint.
#[derive(Debug, Clone)]
pub struct Member<'a> {
    pub pod: &'a Pod,
    pub ip: IpAddr,
    pub ready: bool,
}

/// Selected pods with an address, not terminal; terminating and not-ready
/// pods only count with `publishNotReadyAddresses` (then they count as ready).
pub fn members<'a>(service: &Service, pods: impl IntoIterator<Item = &'a Pod>) -> Vec<Member<'a>> {
    let publish_not_ready = service
        .spec
        .as_ref()
        .and_then(|s| s.publish_not_ready_addresses)
        == Some(true);
    let mut out: Vec<Member<'a>> = pods
        .into_iter()
        .filter(|p| selects(service, p) && !terminal(p))
        .filter(|p| publish_not_ready || p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| {
            let ip = pod_ip(p)?;
            Some(Member {
                pod: p,
                ip,
                ready: publish_not_ready || is_ready(p),
            })
        })
        .collect();
    out.sort_by_key(|m| m.pod.name_any());
    out
}

/// Backends of one Service port: ready members' address and target port.
pub fn backends(port: &ServicePort, members: &[Member<'_>]) -> Vec<SocketAddr> {
    members
        .iter()
        .filter(|m| m.ready)
        .filter_map(|m| Some(SocketAddr::new(m.ip, target_port(port, m.pod)?)))
        .collect()
}

/// (name, port, protocol) of a Service port on one pod.
type ResolvedPort = (Option<String>, i32, String);

/// The `Endpoints` object of a Service with a selector.
pub fn endpoints_object(service: &Service, members: &[Member<'_>], node_name: &str) -> Endpoints {
    let ports = service
        .spec
        .as_ref()
        .and_then(|s| s.ports.clone())
        .unwrap_or_default();
    // Pods resolving named ports differently end up in different subsets.
    let mut subsets: BTreeMap<Vec<ResolvedPort>, (Vec<EndpointAddress>, Vec<EndpointAddress>)> =
        BTreeMap::new();
    for m in members {
        let resolved: Vec<ResolvedPort> = ports
            .iter()
            .filter_map(|p| {
                let port = target_port(p, m.pod)?;
                Some((
                    p.name.clone(),
                    i32::from(port),
                    p.protocol.clone().unwrap_or_else(|| "TCP".to_string()),
                ))
            })
            .collect();
        if resolved.is_empty() {
            continue;
        }
        let address = EndpointAddress {
            ip: m.ip.to_string(),
            hostname: m.pod.spec.as_ref().and_then(|s| s.hostname.clone()),
            node_name: Some(node_name.to_string()),
            target_ref: Some(ObjectReference {
                kind: Some("Pod".to_string()),
                name: m.pod.metadata.name.clone(),
                namespace: m.pod.metadata.namespace.clone(),
                uid: m.pod.metadata.uid.clone(),
                ..Default::default()
            }),
        };
        let entry = subsets.entry(resolved).or_default();
        if m.ready {
            entry.0.push(address)
        } else {
            entry.1.push(address)
        }
    }
    let mut endpoints = Endpoints::default();
    endpoints.metadata.name = service.metadata.name.clone();
    endpoints.metadata.namespace = service.metadata.namespace.clone();
    endpoints.metadata.labels = service.metadata.labels.clone();
    let subsets: Vec<EndpointSubset> = subsets
        .into_iter()
        .map(|(ports, (ready, not_ready))| EndpointSubset {
            addresses: (!ready.is_empty()).then_some(ready),
            not_ready_addresses: (!not_ready.is_empty()).then_some(not_ready),
            ports: Some(
                ports
                    .into_iter()
                    .map(|(name, port, protocol)| EndpointPort {
                        name,
                        port,
                        protocol: Some(protocol),
                        app_protocol: None,
                    })
                    .collect(),
            ),
        })
        .collect();
    endpoints.subsets = (!subsets.is_empty()).then_some(subsets);
    endpoints
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, labels: serde_json::Value, ip: &str, ready: bool) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "ns", "labels": labels, "uid": name},
            "spec": {"containers": [{"name": "c", "ports": [{"name": "pg", "containerPort": 5433}]}]},
            "status": {"phase": "Running", "podIP": ip,
                       "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}
        }))
        .unwrap()
    }

    #[test]
    fn picks_ready_selected_pods_and_resolves_named_ports() {
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"name": "db-rw", "namespace": "ns"},
            "spec": {"selector": {"role": "primary"}, "ports": [{"name": "pg", "port": 5432, "targetPort": "pg"}]}
        }))
        .unwrap();
        let pods = [
            pod("a", json!({"role": "primary"}), "127.20.0.2", true),
            pod("b", json!({"role": "primary"}), "127.20.0.3", false),
            pod("c", json!({"role": "replica"}), "127.20.0.4", true),
        ];
        let m = members(&svc, pods.iter());
        assert_eq!(m.len(), 2);
        let port = &svc.spec.as_ref().unwrap().ports.as_ref().unwrap()[0];
        assert_eq!(backends(port, &m), vec!["127.20.0.2:5433".parse().unwrap()]);
        let ep = endpoints_object(&svc, &m, "node");
        let subset = &ep.subsets.unwrap()[0];
        assert_eq!(subset.addresses.as_ref().unwrap()[0].ip, "127.20.0.2");
        assert_eq!(
            subset.not_ready_addresses.as_ref().unwrap()[0].ip,
            "127.20.0.3"
        );
        assert_eq!(subset.ports.as_ref().unwrap()[0].port, 5433);

        let mut publish = svc.clone();
        publish.spec.as_mut().unwrap().publish_not_ready_addresses = Some(true);
        let m = members(&publish, pods.iter());
        assert_eq!(backends(port, &m).len(), 2);
    }
}

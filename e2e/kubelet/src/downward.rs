//! Downward API: pod fields and container resources as env values and files.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::quantity;

#[derive(Debug, thiserror::Error)]
pub enum DownwardError {
    #[error("unsupported downward API field path {0:?}")]
    UnsupportedField(String),
    #[error("unsupported downward API resource {0:?}")]
    UnsupportedResource(String),
    #[error("container {0:?} named in a resourceFieldRef does not exist")]
    NoSuchContainer(String),
    #[error("malformed quantity {0:?} in a resourceFieldRef")]
    BadQuantity(String),
}

/// What the kubelet knows about a pod besides its spec.
#[derive(Debug, Clone, Copy)]
pub struct PodFacts<'a> {
    pub pod: &'a Pod,
    pub pod_ip: Option<Ipv4Addr>,
    pub host_ip: Ipv4Addr,
    pub node_name: &'a str,
    /// Node allocatable, the value of unset limits.
    pub node_cpus: f64,
    pub node_memory: f64,
}

fn map_value(map: &Option<BTreeMap<String, String>>, key: &str) -> String {
    map.as_ref()
        .and_then(|m| m.get(key))
        .cloned()
        .unwrap_or_default()
}

/// `k="v"` lines, sorted, as the kubelet writes labels/annotations files.
fn map_file(map: &Option<BTreeMap<String, String>>) -> String {
    map.iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", serde_json::Value::String(v.clone())))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `metadata.labels['app']` → `Some(("metadata.labels", "app"))`.
fn subscript(path: &str) -> Option<(&str, &str)> {
    let (base, rest) = path.split_once('[')?;
    let key = rest.strip_suffix(']')?;
    let key = key
        .strip_prefix('\'')
        .and_then(|k| k.strip_suffix('\''))
        .unwrap_or(key);
    Some((base, key))
}

impl PodFacts<'_> {
    pub fn field(&self, path: &str) -> Result<String, DownwardError> {
        let meta = &self.pod.metadata;
        let spec = self.pod.spec.as_ref();
        if let Some((base, key)) = subscript(path) {
            return match base {
                "metadata.labels" => Ok(map_value(&meta.labels, key)),
                "metadata.annotations" => Ok(map_value(&meta.annotations, key)),
                _ => Err(DownwardError::UnsupportedField(path.to_string())),
            };
        }
        let ip = self.pod_ip.map(|ip| ip.to_string()).unwrap_or_default();
        Ok(match path {
            "metadata.name" => meta.name.clone().unwrap_or_default(),
            "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
            "metadata.uid" => meta.uid.clone().unwrap_or_default(),
            "metadata.labels" => map_file(&meta.labels),
            "metadata.annotations" => map_file(&meta.annotations),
            "spec.nodeName" => self.node_name.to_string(),
            "spec.serviceAccountName" => spec
                .and_then(|s| s.service_account_name.clone())
                .unwrap_or_else(|| "default".to_string()),
            "status.hostIP" | "status.hostIPs" => self.host_ip.to_string(),
            "status.podIP" | "status.podIPs" => ip,
            _ => return Err(DownwardError::UnsupportedField(path.to_string())),
        })
    }

    /// `limits.memory` etc. of `container`, divided by `divisor` and rounded up.
    pub fn resource(
        &self,
        container: &str,
        resource: &str,
        divisor: Option<&Quantity>,
    ) -> Result<String, DownwardError> {
        let c = self.container(container)?;
        let resources = c.resources.as_ref();
        let get = |limits: bool, name: &str| -> Option<&Quantity> {
            let map = if limits {
                resources?.limits.as_ref()
            } else {
                resources?.requests.as_ref()
            };
            map?.get(name)
        };
        let (kind, name) = resource
            .split_once('.')
            .ok_or_else(|| DownwardError::UnsupportedResource(resource.to_string()))?;
        let node = match name {
            "cpu" => self.node_cpus,
            "memory" => self.node_memory,
            "ephemeral-storage" => self.node_memory,
            _ => return Err(DownwardError::UnsupportedResource(resource.to_string())),
        };
        let value = match kind {
            // An unset limit is the node's allocatable; an unset request is the limit or 0.
            "limits" => get(true, name)
                .map(quantity_value)
                .transpose()?
                .unwrap_or(node),
            "requests" => get(false, name)
                .or(get(true, name))
                .map(quantity_value)
                .transpose()?
                .unwrap_or(0.0),
            _ => return Err(DownwardError::UnsupportedResource(resource.to_string())),
        };
        let divisor = divisor
            .map(quantity_value)
            .transpose()?
            .filter(|d| *d > 0.0)
            .unwrap_or(1.0);
        Ok(format!("{}", (value / divisor).ceil() as i64))
    }

    fn container(&self, name: &str) -> Result<&Container, DownwardError> {
        let spec = self.pod.spec.as_ref();
        spec.into_iter()
            .flat_map(|s| {
                s.containers
                    .iter()
                    .chain(s.init_containers.iter().flatten())
            })
            .find(|c| c.name == name)
            .ok_or_else(|| DownwardError::NoSuchContainer(name.to_string()))
    }
}

fn quantity_value(q: &Quantity) -> Result<f64, DownwardError> {
    quantity::parse(&q.0).ok_or_else(|| DownwardError::BadQuantity(q.0.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodSpec, ResourceRequirements};

    fn pod() -> Pod {
        let mut pod = Pod::default();
        pod.metadata.name = Some("db-1".into());
        pod.metadata.namespace = Some("ns".into());
        pod.metadata.labels = Some([("app".to_string(), "db".to_string())].into());
        pod.spec = Some(PodSpec {
            containers: vec![Container {
                name: "pg".into(),
                resources: Some(ResourceRequirements {
                    limits: Some([("memory".to_string(), Quantity("1Gi".into()))].into()),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        });
        pod
    }

    #[test]
    fn fields_and_resources() {
        let pod = pod();
        let facts = PodFacts {
            pod: &pod,
            pod_ip: Some(Ipv4Addr::new(127, 20, 0, 2)),
            host_ip: Ipv4Addr::new(127, 20, 0, 1),
            node_name: "node",
            node_cpus: 2.0,
            node_memory: 8e9,
        };
        assert_eq!(facts.field("metadata.name").unwrap(), "db-1");
        assert_eq!(facts.field("status.podIP").unwrap(), "127.20.0.2");
        assert_eq!(facts.field("metadata.labels['app']").unwrap(), "db");
        assert_eq!(facts.field("metadata.labels").unwrap(), "app=\"db\"");
        assert_eq!(facts.field("spec.serviceAccountName").unwrap(), "default");
        assert!(facts.field("spec.bogus").is_err());
        assert_eq!(
            facts
                .resource("pg", "limits.memory", Some(&Quantity("1Mi".into())))
                .unwrap(),
            "1024"
        );
        assert_eq!(facts.resource("pg", "limits.cpu", None).unwrap(), "2");
        assert_eq!(
            facts.resource("pg", "requests.memory", None).unwrap(),
            "1073741824"
        );
        assert!(facts.resource("nope", "limits.cpu", None).is_err());
    }
}

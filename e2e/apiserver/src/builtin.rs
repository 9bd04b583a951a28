//! Kind-specific admission for built-in resources: typed decoding (which
//! rejects wrongly typed fields and drops unknown ones, as the real server's
//! decoder does), the defaults controllers commonly rely on, ClusterIP
//! allocation, and the immutable-field rules that most often bite an
//! operator (pod spec, PVC spec, Service clusterIP, selectors, immutable
//! Secrets/ConfigMaps).

use std::net::Ipv4Addr;
use std::sync::Mutex;

use base64::Engine;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::resources::Builtin;
use crate::status::Cause;

fn roundtrip<T: DeserializeOwned + Serialize>(object: Value) -> Result<Value, String> {
    let typed: T = serde_json::from_value(object).map_err(|e| e.to_string())?;
    serde_json::to_value(typed).map_err(|e| e.to_string())
}

/// Decodes into the Kubernetes Go-equivalent type and back.
pub fn decode(kind: Builtin, object: Value) -> Result<Value, String> {
    use k8s_openapi::api::{
        apps::v1 as apps, batch::v1 as batch, coordination::v1 as coordination, core::v1 as core,
        discovery::v1 as discovery, events::v1 as events, policy::v1 as policy, rbac::v1 as rbac,
        storage::v1 as storage,
    };
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1 as apiextensions;
    match kind {
        Builtin::Namespace => roundtrip::<core::Namespace>(object),
        Builtin::Node => roundtrip::<core::Node>(object),
        Builtin::Pod => roundtrip::<core::Pod>(object),
        Builtin::Service => roundtrip::<core::Service>(object),
        Builtin::Endpoints => roundtrip::<core::Endpoints>(object),
        Builtin::Secret => roundtrip::<core::Secret>(object),
        Builtin::ConfigMap => roundtrip::<core::ConfigMap>(object),
        Builtin::PersistentVolumeClaim => roundtrip::<core::PersistentVolumeClaim>(object),
        Builtin::PersistentVolume => roundtrip::<core::PersistentVolume>(object),
        Builtin::ServiceAccount => roundtrip::<core::ServiceAccount>(object),
        Builtin::CoreEvent => roundtrip::<core::Event>(object),
        Builtin::Deployment => roundtrip::<apps::Deployment>(object),
        Builtin::ReplicaSet => roundtrip::<apps::ReplicaSet>(object),
        Builtin::StatefulSet => roundtrip::<apps::StatefulSet>(object),
        Builtin::Job => roundtrip::<batch::Job>(object),
        Builtin::CronJob => roundtrip::<batch::CronJob>(object),
        Builtin::PodDisruptionBudget => roundtrip::<policy::PodDisruptionBudget>(object),
        Builtin::Role => roundtrip::<rbac::Role>(object),
        Builtin::RoleBinding => roundtrip::<rbac::RoleBinding>(object),
        Builtin::ClusterRole => roundtrip::<rbac::ClusterRole>(object),
        Builtin::ClusterRoleBinding => roundtrip::<rbac::ClusterRoleBinding>(object),
        Builtin::Lease => roundtrip::<coordination::Lease>(object),
        Builtin::Event => roundtrip::<events::Event>(object),
        Builtin::EndpointSlice => roundtrip::<discovery::EndpointSlice>(object),
        Builtin::StorageClass => roundtrip::<storage::StorageClass>(object),
        Builtin::CustomResourceDefinition => {
            roundtrip::<apiextensions::CustomResourceDefinition>(object)
        }
    }
}

/// Sequential ClusterIPs from a range (never reused: tests are short).
#[derive(Debug)]
pub struct IpAllocator {
    base: u32,
    size: u32,
    next: Mutex<u32>,
}

impl IpAllocator {
    pub fn new(base: Ipv4Addr, size: u32) -> Self {
        IpAllocator {
            base: u32::from(base),
            size,
            next: Mutex::new(1),
        }
    }

    fn allocate(&self) -> Option<String> {
        let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
        if *next >= self.size {
            return None;
        }
        let ip = Ipv4Addr::from(self.base.wrapping_add(*next));
        *next += 1;
        Some(ip.to_string())
    }
}

/// What creation defaults need from the server.
pub struct CreateContext<'a> {
    pub node_name: Option<&'a str>,
    pub ips: &'a IpAllocator,
    pub now: &'a str,
}

fn set_default(obj: &mut Value, key: &str, value: Value) {
    if let Some(map) = obj.as_object_mut()
        && map.get(key).is_none_or(Value::is_null)
    {
        map.insert(key.to_string(), value);
    }
}

fn child<'a>(obj: &'a mut Value, key: &str) -> &'a mut Value {
    if !obj.get(key).is_some_and(Value::is_object) {
        obj[key] = json!({});
    }
    &mut obj[key]
}

fn container_defaults(container: &mut Value) {
    let image = container["image"].as_str().unwrap_or("").to_string();
    let tag_latest = image
        .rsplit('/')
        .next()
        .is_some_and(|last| !last.contains(':') || last.ends_with(":latest"))
        && !image.contains('@');
    set_default(
        container,
        "terminationMessagePath",
        json!("/dev/termination-log"),
    );
    set_default(container, "terminationMessagePolicy", json!("File"));
    set_default(
        container,
        "imagePullPolicy",
        json!(if tag_latest { "Always" } else { "IfNotPresent" }),
    );
    set_default(container, "resources", json!({}));
    if let Some(ports) = container.get_mut("ports").and_then(Value::as_array_mut) {
        for port in ports {
            set_default(port, "protocol", json!("TCP"));
        }
    }
}

fn pod_spec_defaults(spec: &mut Value) {
    set_default(spec, "restartPolicy", json!("Always"));
    set_default(spec, "terminationGracePeriodSeconds", json!(30));
    set_default(spec, "dnsPolicy", json!("ClusterFirst"));
    set_default(spec, "schedulerName", json!("default-scheduler"));
    set_default(spec, "serviceAccountName", json!("default"));
    set_default(spec, "securityContext", json!({}));
    set_default(spec, "enableServiceLinks", json!(true));
    for list in ["containers", "initContainers"] {
        if let Some(containers) = spec.get_mut(list).and_then(Value::as_array_mut) {
            containers.iter_mut().for_each(container_defaults);
        }
    }
}

fn template_defaults(obj: &mut Value) {
    if let Some(spec) = obj.pointer_mut("/spec/template/spec") {
        pod_spec_defaults(spec);
    }
}

/// Defaults applied when an object is created (after `.status` was dropped
/// for kinds with a status subresource).
pub fn on_create(kind: Builtin, obj: &mut Value, ctx: &CreateContext<'_>) -> Result<(), Cause> {
    match kind {
        Builtin::Namespace => {
            let name = obj["metadata"]["name"].clone();
            child(child(obj, "metadata"), "labels")["kubernetes.io/metadata.name"] = name;
            set_default(child(obj, "spec"), "finalizers", json!(["kubernetes"]));
            obj["status"] = json!({"phase": "Active"});
        }
        Builtin::Pod => {
            let spec = child(obj, "spec");
            pod_spec_defaults(spec);
            let mut status = json!({"phase": "Pending", "qosClass": "BestEffort"});
            if let Some(node) = ctx.node_name
                && spec["nodeName"].as_str().is_none_or(str::is_empty)
            {
                spec["nodeName"] = json!(node);
                status["conditions"] = json!([{"type": "PodScheduled", "status": "True", "lastTransitionTime": ctx.now}]);
            }
            obj["status"] = status;
        }
        Builtin::Service => {
            service_defaults(obj, None);
            let spec = child(obj, "spec");
            if spec["type"] != "ExternalName"
                && spec["clusterIP"].as_str().is_none_or(str::is_empty)
            {
                let ip = ctx.ips.allocate().ok_or_else(|| Cause {
                    reason: "FieldValueInvalid".into(),
                    message: "Internal error: failed to allocate a serviceIP: range is full".into(),
                    field: "spec.clusterIPs".into(),
                })?;
                spec["clusterIP"] = json!(ip);
                spec["clusterIPs"] = json!([ip]);
            }
            obj["status"] = json!({"loadBalancer": {}});
        }
        Builtin::PersistentVolumeClaim => {
            set_default(child(obj, "spec"), "volumeMode", json!("Filesystem"));
            obj["status"] = json!({"phase": "Pending"});
        }
        Builtin::Deployment => {
            let spec = child(obj, "spec");
            set_default(spec, "replicas", json!(1));
            set_default(spec, "revisionHistoryLimit", json!(10));
            set_default(spec, "progressDeadlineSeconds", json!(600));
            set_default(
                spec,
                "strategy",
                json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}}),
            );
        }
        Builtin::ReplicaSet | Builtin::StatefulSet => {
            set_default(child(obj, "spec"), "replicas", json!(1))
        }
        Builtin::Job => {
            let spec = child(obj, "spec");
            set_default(spec, "backoffLimit", json!(6));
            set_default(spec, "completions", json!(1));
            set_default(spec, "parallelism", json!(1));
        }
        Builtin::Secret => set_default(obj, "type", json!("Opaque")),
        _ => {}
    }
    template_defaults(obj);
    Ok(())
}

fn service_defaults(obj: &mut Value, old: Option<&Value>) {
    let spec = child(obj, "spec");
    set_default(spec, "type", json!("ClusterIP"));
    set_default(spec, "sessionAffinity", json!("None"));
    if spec["type"] != "ExternalName" {
        if let Some(old_spec) = old.map(|o| &o["spec"]) {
            // An update that leaves out allocated values keeps them.
            for key in ["clusterIP", "clusterIPs"] {
                set_default(spec, key, old_spec[key].clone());
            }
        }
        if let Some(ip) = spec["clusterIP"].as_str().filter(|s| !s.is_empty()) {
            let ips = json!([ip]);
            set_default(spec, "clusterIPs", ips);
        }
        set_default(spec, "ipFamilies", json!(["IPv4"]));
        set_default(spec, "ipFamilyPolicy", json!("SingleStack"));
        set_default(spec, "internalTrafficPolicy", json!("Cluster"));
    }
    if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
        for port in ports {
            set_default(port, "protocol", json!("TCP"));
            let number = port["port"].clone();
            set_default(port, "targetPort", number);
        }
    }
}

/// Normalisation applied on every write (create and update).
pub fn on_write(kind: Builtin, obj: &mut Value, old: Option<&Value>) {
    match kind {
        Builtin::Secret => {
            // stringData is write-only: merged into data, never stored.
            if let Some(Value::Object(strings)) =
                obj.as_object_mut().and_then(|m| m.remove("stringData"))
            {
                let data = child(obj, "data");
                for (k, v) in strings {
                    let text = v.as_str().unwrap_or("").as_bytes().to_vec();
                    data[k] = json!(base64::engine::general_purpose::STANDARD.encode(text));
                }
            }
        }
        Builtin::Service if old.is_some() => service_defaults(obj, old),
        Builtin::Pod if old.is_some() => {
            if let Some(spec) = obj.get_mut("spec") {
                pod_spec_defaults(spec);
            }
        }
        _ => {}
    }
}

fn forbidden(field: &str, message: &str) -> Cause {
    Cause {
        reason: "FieldValueForbidden".into(),
        message: format!("Forbidden: {message}"),
        field: field.into(),
    }
}

fn without(value: &Value, pointers: &[&str]) -> Value {
    let mut copy = value.clone();
    for p in pointers {
        if let Some((parent, key)) = p.rsplit_once('/')
            && let Some(Value::Object(map)) = copy.pointer_mut(parent)
        {
            map.remove(key);
        }
    }
    copy
}

fn pod_spec_mutable_view(spec: &Value, keep_node: bool) -> Value {
    let mut view = without(
        spec,
        &["/activeDeadlineSeconds", "/tolerations", "/schedulingGates"],
    );
    if !keep_node {
        view.as_object_mut().map(|m| m.remove("nodeName"));
    }
    for list in ["containers", "initContainers"] {
        if let Some(items) = view.get_mut(list).and_then(Value::as_array_mut) {
            for c in items {
                c.as_object_mut().map(|m| m.remove("image"));
            }
        }
    }
    view
}

/// Refuses changes to immutable fields.
pub fn validate_update(kind: Builtin, old: &Value, new: &Value) -> Vec<Cause> {
    let mut causes = vec![];
    match kind {
        Builtin::Pod => {
            // Setting spec.nodeName on an unscheduled pod is allowed: this
            // server has no scheduler or binding subresource.
            let unscheduled = old["spec"]["nodeName"].as_str().is_none_or(str::is_empty);
            if pod_spec_mutable_view(&old["spec"], !unscheduled)
                != pod_spec_mutable_view(&new["spec"], !unscheduled)
            {
                causes.push(forbidden("spec", "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)"));
            }
        }
        Builtin::PersistentVolumeClaim => {
            let unbound = old["spec"]["volumeName"].as_str().is_none_or(str::is_empty);
            let mut ignore = vec!["/resources", "/volumeAttributesClassName"];
            if unbound {
                ignore.push("/volumeName");
            }
            if without(&old["spec"], &ignore) != without(&new["spec"], &ignore) {
                causes.push(forbidden("spec", "spec is immutable after creation except resources.requests and volumeAttributesClassName for bound claims"));
            }
            let size = |o: &Value| {
                o.pointer("/spec/resources/requests/storage")
                    .and_then(Value::as_str)
                    .and_then(parse_quantity)
            };
            if let (Some(before), Some(after)) = (size(old), size(new))
                && after < before
            {
                causes.push(forbidden(
                    "spec.resources.requests.storage",
                    "field can not be less than status.capacity",
                ));
            }
        }
        Builtin::Service => {
            let ip = |o: &Value| o["spec"]["clusterIP"].as_str().unwrap_or("").to_string();
            if !ip(old).is_empty() && ip(old) != ip(new) && new["spec"]["type"] != "ExternalName" {
                causes.push(Cause {
                    reason: "FieldValueInvalid".into(),
                    message: format!("Invalid value: {:?}: field is immutable", ip(new)),
                    field: "spec.clusterIPs[0]".into(),
                });
            }
        }
        Builtin::Secret | Builtin::ConfigMap if old["immutable"] == Value::Bool(true) => {
            for field in ["data", "binaryData", "immutable"] {
                if old[field] != new[field] {
                    causes.push(forbidden(
                        field,
                        "field is immutable when `immutable` is set",
                    ));
                }
            }
        }
        Builtin::Deployment | Builtin::ReplicaSet | Builtin::StatefulSet
            if old["spec"]["selector"] != new["spec"]["selector"] =>
        {
            causes.push(Cause {
                reason: "FieldValueInvalid".into(),
                message: format!(
                    "Invalid value: {}: field is immutable",
                    new["spec"]["selector"]
                ),
                field: "spec.selector".into(),
            });
        }
        _ => {}
    }
    causes
}

/// Bytes of a storage quantity (`10Gi`, `500M`, `1e3`), enough to compare sizes.
pub fn parse_quantity(text: &str) -> Option<f64> {
    let split = text
        .find(|c: char| c.is_ascii_alphabetic() && c != 'e' && c != 'E')
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let n: f64 = number.parse().ok()?;
    let factor = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        _ => return None,
    };
    Some(n * factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_rejects_wrong_types_and_drops_unknown_fields() {
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "c", "image": "i", "bogus": 1}]}});
        let out = decode(Builtin::Pod, pod).unwrap();
        assert!(out["spec"]["containers"][0].get("bogus").is_none());
        let bad = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "c", "image": 5}]}});
        assert!(decode(Builtin::Pod, bad).is_err());
    }

    #[test]
    fn pod_spec_is_immutable_but_image() {
        let old = json!({"spec": {"nodeName": "n", "containers": [{"name": "c", "image": "a"}]}});
        let image = json!({"spec": {"nodeName": "n", "containers": [{"name": "c", "image": "b"}]}});
        let cmd = json!({"spec": {"nodeName": "n", "containers": [{"name": "c", "image": "a", "command": ["x"]}]}});
        assert!(validate_update(Builtin::Pod, &old, &image).is_empty());
        assert_eq!(validate_update(Builtin::Pod, &old, &cmd).len(), 1);
    }

    #[test]
    fn quantities() {
        assert_eq!(parse_quantity("1Gi"), Some(1073741824.0));
        assert!(parse_quantity("1536Mi") > parse_quantity("1Gi"));
        assert_eq!(parse_quantity("1e3"), Some(1000.0));
    }
}

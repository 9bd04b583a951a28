//! Pods: feeding the runtime from the pod watch (the pods of this node, and
//! unscheduled ones when it schedules), binding unscheduled pods to this
//! node, writing statuses (pods/status) and confirming deletions.

use std::collections::{HashMap, HashSet};

use k8s_openapi::api::core::v1::{Binding, ObjectReference, Pod, PodStatus};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::watcher::Event;
use kube::{Api, Client, ResourceExt};
use serde_json::Value;
use tokio::sync::mpsc;

use crate::runtime::{PodEvent, RuntimeHandle};

/// Status fields the kubelet owns: absent ones are cleared (JSON merge patch).
const OWNED_STATUS_FIELDS: [&str; 11] = [
    "phase",
    "conditions",
    "hostIP",
    "hostIPs",
    "podIP",
    "podIPs",
    "startTime",
    "initContainerStatuses",
    "containerStatuses",
    "reason",
    "message",
];

pub(super) struct PodSink {
    rt: RuntimeHandle,
    client: Client,
    schedule: bool,
    listing: Option<HashSet<String>>,
    bound: HashSet<String>,
}

impl PodSink {
    pub(super) fn new(rt: RuntimeHandle, client: Client, schedule: bool) -> Self {
        PodSink {
            rt,
            client,
            schedule,
            listing: None,
            bound: HashSet::new(),
        }
    }

    pub(super) fn handle(&mut self, event: &Event<Pod>) {
        match event {
            Event::Init => self.listing = Some(HashSet::new()),
            Event::InitApply(pod) | Event::Apply(pod) => {
                if let (Some(listing), Some(uid)) = (&mut self.listing, &pod.metadata.uid) {
                    listing.insert(uid.clone());
                }
                if !runs_here(pod, &self.rt.config().node_name, self.schedule) {
                    return;
                }
                let known = pod
                    .metadata
                    .uid
                    .as_deref()
                    .is_some_and(|uid| self.rt.has_pod(uid));
                if !known && terminal(pod) {
                    // Finished before this kubelet started: never run again
                    // (its containers may not leave the terminated state).
                    return;
                }
                self.bind(pod);
                self.rt.sync_pod(pod.clone());
            }
            Event::Delete(pod) => {
                if let Some(uid) = &pod.metadata.uid {
                    self.rt.remove_pod(uid);
                }
            }
            Event::InitDone => {
                // Pods that vanished while the watch was down.
                if let Some(listed) = self.listing.take() {
                    for uid in self.rt.pod_uids() {
                        if !listed.contains(&uid) {
                            self.rt.remove_pod(&uid);
                        }
                    }
                }
            }
        }
    }

    /// Acts as the scheduler: unscheduled pods are bound to this node.
    fn bind(&mut self, pod: &Pod) {
        let unscheduled = pod
            .spec
            .as_ref()
            .is_some_and(|s| s.node_name.as_deref().unwrap_or_default().is_empty());
        let Some(uid) = pod.metadata.uid.clone() else {
            return;
        };
        if !self.schedule
            || !unscheduled
            || pod.metadata.deletion_timestamp.is_some()
            || !self.bound.insert(uid)
        {
            return;
        }
        let api: Api<Pod> =
            Api::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
        let name = pod.name_any();
        let binding = Binding {
            metadata: kube::api::ObjectMeta {
                name: Some(name.clone()),
                ..Default::default()
            },
            target: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Node".into()),
                name: Some(self.rt.config().node_name.clone()),
                ..Default::default()
            },
        };
        let node = self.rt.config().node_name.clone();
        tokio::spawn(async move {
            let result: Result<Value, _> = api
                .create_subresource("binding", &name, &PostParams::default(), &binding)
                .await;
            let unsupported = match &result {
                Ok(_) => return,
                Err(kube::Error::Api(s)) => s.is_not_found() || s.code == 405,
                Err(_) => false,
            };
            // API servers without pods/binding may allow setting spec.nodeName
            // on an unscheduled pod instead.
            let fallback = if unsupported {
                let patch = serde_json::json!({"spec": {"nodeName": node}});
                api.patch(&name, &PatchParams::default(), &Patch::Merge(patch))
                    .await
                    .map(drop)
            } else {
                result.map(drop)
            };
            if let Err(e) = fallback {
                // The pod runs anyway; it only lacks spec.nodeName.
                tracing::debug!(pod = %name, error = %e, "cannot bind pod to the node");
            }
        });
    }
}

/// Whether this node runs `pod`: bound to it, or unscheduled while this
/// kubelet schedules (it binds them). Pods of other nodes, and unscheduled
/// ones a scheduler still has to place, are left alone.
fn runs_here(pod: &Pod, node_name: &str, schedule: bool) -> bool {
    let node = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .unwrap_or_default();
    if node.is_empty() {
        schedule
    } else {
        node == node_name
    }
}

fn terminal(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// The merge patch of a status: our fields, owned-but-absent ones cleared.
fn status_patch(status: &PodStatus) -> Value {
    let mut value = serde_json::to_value(status).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut value {
        for field in OWNED_STATUS_FIELDS {
            map.entry(field).or_insert(Value::Null);
        }
    }
    serde_json::json!({ "status": value })
}

#[derive(Default)]
struct Pending {
    namespace: String,
    name: String,
    status: Option<Box<PodStatus>>,
    terminated: bool,
}

pub(super) async fn write_statuses(client: Client, mut events: mpsc::UnboundedReceiver<PodEvent>) {
    while let Some(first) = events.recv().await {
        // Only the latest status of each pod matters.
        let mut order: Vec<String> = Vec::new();
        let mut pending: HashMap<String, Pending> = HashMap::new();
        let mut next = Some(first);
        while let Some(event) = next {
            let (namespace, name, uid) = match &event {
                PodEvent::Status {
                    namespace,
                    name,
                    uid,
                    ..
                }
                | PodEvent::Terminated {
                    namespace,
                    name,
                    uid,
                } => (namespace.clone(), name.clone(), uid.clone()),
            };
            if !pending.contains_key(&uid) {
                order.push(uid.clone());
            }
            let entry = pending.entry(uid).or_insert_with(|| Pending {
                namespace,
                name,
                ..Default::default()
            });
            match event {
                PodEvent::Status { status, .. } => entry.status = Some(status),
                PodEvent::Terminated { .. } => entry.terminated = true,
            }
            next = events.try_recv().ok();
        }
        for uid in order {
            let Some(p) = pending.remove(&uid) else {
                continue;
            };
            let api: Api<Pod> = Api::namespaced(client.clone(), &p.namespace);
            if let Some(status) = &p.status {
                match api
                    .patch_status(
                        &p.name,
                        &PatchParams::default(),
                        &Patch::Merge(status_patch(status)),
                    )
                    .await
                {
                    Ok(_) => {}
                    Err(kube::Error::Api(s)) if s.is_not_found() => {}
                    Err(e) => tracing::warn!(pod = %p.name, error = %e, "cannot write pod status"),
                }
            }
            if p.terminated {
                let params = DeleteParams {
                    grace_period_seconds: Some(0),
                    preconditions: Some(Preconditions {
                        uid: Some(uid.clone()),
                        resource_version: None,
                    }),
                    ..Default::default()
                };
                match api.delete(&p.name, &params).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(s)) if s.is_not_found() || s.is_conflict() => {}
                    Err(e) => {
                        tracing::warn!(pod = %p.name, error = %e, "cannot confirm pod deletion")
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_only_pods_of_this_node() {
        let pod = |node: Option<&str>| -> Pod {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "p"},
                "spec": {"nodeName": node, "containers": []}
            }))
            .unwrap()
        };
        assert!(runs_here(&pod(Some("n1")), "n1", false));
        assert!(runs_here(&pod(Some("n1")), "n1", true));
        assert!(!runs_here(&pod(Some("n2")), "n1", true));
        assert!(
            !runs_here(&pod(None), "n1", false),
            "the scheduler binds it first"
        );
        assert!(runs_here(&pod(None), "n1", true), "we bind it");
        assert!(runs_here(&pod(Some("")), "n1", true));
    }

    #[test]
    fn status_patch_clears_owned_fields() {
        let status = PodStatus {
            phase: Some("Running".into()),
            ..Default::default()
        };
        let patch = status_patch(&status);
        assert_eq!(patch["status"]["phase"], "Running");
        assert!(
            patch["status"]["podIP"].is_null()
                && patch["status"].as_object().unwrap().contains_key("podIP")
        );
        assert!(
            !patch["status"]
                .as_object()
                .unwrap()
                .contains_key("qosClass")
        );
    }
}

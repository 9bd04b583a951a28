//! apps/v1 Deployments, good enough for the pooler: pods named
//! `<deployment>-<template hash>-<random>` owned directly by the Deployment
//! (no ReplicaSet objects), rolling updates honouring maxSurge/maxUnavailable
//! (or Recreate), scaling, replacement of failed pods, and the status fields
//! `kubectl rollout status` reads. Pods of a deleted Deployment are deleted.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{Deployment, DeploymentCondition, DeploymentStatus};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use rand::Rng;
use tokio::sync::Notify;

use super::{Caches, triggered};

const HASH_LABEL: &str = "pod-template-hash";
/// Alphabet of generated name suffixes (no vowels, no look-alikes).
const ALPHANUMS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
/// How long a create/delete we issued is assumed in flight before the watch shows it.
const EXPECTATION_TTL: Duration = Duration::from_secs(30);

fn fnv32a(data: &[u8]) -> u32 {
    data.iter().fold(0x811c9dc5u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x01000193)
    })
}

/// `pod-template-hash`: FNV-32a of the template, encoded like Kubernetes does.
pub fn template_hash(template: &PodTemplateSpec, collision_count: Option<i32>) -> String {
    let mut data = serde_json::to_vec(template).unwrap_or_default();
    if let Some(c) = collision_count {
        data.extend(c.to_le_bytes());
    }
    fnv32a(&data)
        .to_string()
        .bytes()
        .map(|b| ALPHANUMS[usize::from(b) % ALPHANUMS.len()] as char)
        .collect()
}

fn random_suffix() -> String {
    let mut rng = rand::rng();
    (0..5)
        .map(|_| ALPHANUMS[rng.random_range(0..ALPHANUMS.len())] as char)
        .collect()
}

/// `maxSurge` (rounded up) or `maxUnavailable` (rounded down) as a count.
fn resolve(
    value: Option<&IntOrString>,
    default_percent: i32,
    replicas: i32,
    round_up: bool,
) -> i32 {
    match value {
        Some(IntOrString::Int(n)) => *n,
        Some(IntOrString::String(s)) => {
            let percent: i32 = s.trim_end_matches('%').parse().unwrap_or(default_percent);
            percent_of(percent, replicas, round_up)
        }
        None => percent_of(default_percent, replicas, round_up),
    }
}

fn percent_of(percent: i32, replicas: i32, round_up: bool) -> i32 {
    let scaled = percent * replicas;
    if round_up {
        (scaled + 99) / 100
    } else {
        scaled / 100
    }
}

fn owner_uid(pod: &Pod) -> Option<&str> {
    pod.metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true) && o.kind == "Deployment")
        .map(|o| o.uid.as_str())
}

fn ready_since(pod: &Pod) -> Option<jiff::Timestamp> {
    let c = pod
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready" && c.status == "True")?;
    Some(
        c.last_transition_time
            .as_ref()
            .map(|t| t.0)
            .unwrap_or_else(jiff::Timestamp::now),
    )
}

fn terminal(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

#[derive(Default)]
struct Expectations {
    /// Deployment uid → pods we created that the watch has not shown yet.
    creates: HashMap<String, Vec<(String, Instant)>>,
    /// Deployment uid → pods we deleted that the watch still shows.
    deletes: HashMap<String, Vec<(String, Instant)>>,
}

impl Expectations {
    fn settle(&mut self, uid: &str, pods: &[Arc<Pod>]) {
        let fresh = |t: &Instant| t.elapsed() < EXPECTATION_TTL;
        if let Some(c) = self.creates.get_mut(uid) {
            c.retain(|(name, t)| fresh(t) && !pods.iter().any(|p| p.name_any() == *name));
        }
        if let Some(d) = self.deletes.get_mut(uid) {
            d.retain(|(name, t)| {
                fresh(t)
                    && pods
                        .iter()
                        .any(|p| p.name_any() == *name && p.metadata.deletion_timestamp.is_none())
            });
        }
    }

    fn pending_creates(&self, uid: &str) -> usize {
        self.creates.get(uid).map_or(0, Vec::len)
    }

    fn deleting(&self, uid: &str, name: &str) -> bool {
        self.deletes
            .get(uid)
            .is_some_and(|d| d.iter().any(|(n, _)| n == name))
    }
}

pub(super) async fn run(client: Client, caches: Caches, notify: Arc<Notify>, resync: Duration) {
    let mut expectations = Expectations::default();
    loop {
        let deployments = caches.deployments.state();
        let pods = caches.pods.state();
        for d in &deployments {
            if let Err(e) = reconcile(&client, d, &pods, &mut expectations).await {
                tracing::warn!(deployment = %d.name_any(), error = %e, "deployment sync failed (retrying)");
            }
        }
        collect_orphans(&client, &deployments, &pods).await;
        triggered(&notify, resync).await;
    }
}

/// Pods of Deployments that no longer exist (or are being deleted) go, as
/// the garbage collector would delete them.
async fn collect_orphans(client: &Client, deployments: &[Arc<Deployment>], pods: &[Arc<Pod>]) {
    for pod in pods {
        let Some(owner) = owner_uid(pod) else {
            continue;
        };
        let alive = deployments.iter().any(|d| {
            d.metadata.uid.as_deref() == Some(owner) && d.metadata.deletion_timestamp.is_none()
        });
        if alive || pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let api: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace().unwrap_or_default());
        if let Err(e) = api.delete(&pod.name_any(), &DeleteParams::default()).await {
            tracing::debug!(pod = %pod.name_any(), error = %e, "cannot delete orphaned pod");
        }
    }
}

struct View<'a> {
    new: Vec<&'a Arc<Pod>>,
    old: Vec<&'a Arc<Pod>>,
    /// Created by us, not yet visible.
    pending: usize,
}

fn available(pod: &Pod, min_ready: i64) -> bool {
    ready_since(pod)
        .is_some_and(|t| jiff::Timestamp::now().as_second() - t.as_second() >= min_ready)
}

async fn reconcile(
    client: &Client,
    d: &Deployment,
    all_pods: &[Arc<Pod>],
    expectations: &mut Expectations,
) -> Result<(), kube::Error> {
    let (Some(uid), Some(spec)) = (d.metadata.uid.clone(), d.spec.as_ref()) else {
        return Ok(());
    };
    if d.metadata.deletion_timestamp.is_some() {
        return Ok(());
    }
    let ns = d.namespace().unwrap_or_default();
    let pods_api: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let hash = template_hash(
        &spec.template,
        d.status.as_ref().and_then(|s| s.collision_count),
    );
    let owned: Vec<Arc<Pod>> = all_pods
        .iter()
        .filter(|p| p.namespace() == Some(ns.clone()) && owner_uid(p) == Some(&uid))
        .cloned()
        .collect();
    expectations.settle(&uid, &owned);

    // Failed or completed pods are replaced.
    for p in owned
        .iter()
        .filter(|p| terminal(p) && p.metadata.deletion_timestamp.is_none())
    {
        delete_pod(&pods_api, p, &uid, expectations).await?;
    }
    let active: Vec<&Arc<Pod>> = owned
        .iter()
        .filter(|p| {
            p.metadata.deletion_timestamp.is_none()
                && !terminal(p)
                && !expectations.deleting(&uid, &p.name_any())
        })
        .collect();
    let (new, old): (Vec<&Arc<Pod>>, Vec<&Arc<Pod>>) = active
        .iter()
        .partition(|p| p.labels().get(HASH_LABEL) == Some(&hash));
    let view = View {
        new,
        old,
        pending: expectations.pending_creates(&uid),
    };
    let replicas = spec.replicas.unwrap_or(1).max(0);
    let min_ready = i64::from(spec.min_ready_seconds.unwrap_or(0));
    let recreate = spec.strategy.as_ref().and_then(|s| s.type_.as_deref()) == Some("Recreate");
    let rolling = spec
        .strategy
        .as_ref()
        .and_then(|s| s.rolling_update.as_ref());
    let max_surge = if recreate {
        0
    } else {
        resolve(
            rolling.and_then(|r| r.max_surge.as_ref()),
            25,
            replicas,
            true,
        )
    };
    let mut max_unavailable = if recreate {
        replicas
    } else {
        resolve(
            rolling.and_then(|r| r.max_unavailable.as_ref()),
            25,
            replicas,
            false,
        )
    };
    if max_surge == 0 && max_unavailable == 0 {
        max_unavailable = 1;
    }

    if spec.paused != Some(true) {
        let new_count = (view.new.len() + view.pending) as i32;
        let total = new_count + view.old.len() as i32;
        let terminating_old = owned.iter().any(|p| {
            p.metadata.deletion_timestamp.is_some() && p.labels().get(HASH_LABEL) != Some(&hash)
        });
        if recreate {
            for p in &view.old {
                delete_pod(&pods_api, p, &uid, expectations).await?;
            }
            if view.old.is_empty() && !terminating_old {
                for _ in new_count..replicas {
                    create_pod(&pods_api, d, &hash, &uid, expectations).await?;
                }
            }
        } else {
            let room = (replicas + max_surge - total).max(0);
            for _ in 0..(replicas - new_count).clamp(0, room) {
                create_pod(&pods_api, d, &hash, &uid, expectations).await?;
            }
            // Surplus new pods: not-ready first.
            let mut surplus: Vec<&&Arc<Pod>> = view.new.iter().collect();
            surplus.sort_by_key(|p| ready_since(p).is_some());
            for p in surplus
                .into_iter()
                .take((new_count - replicas).max(0) as usize)
            {
                delete_pod(&pods_api, p, &uid, expectations).await?;
            }
            if !view.old.is_empty() {
                let min_available = replicas - max_unavailable;
                let new_available =
                    view.new.iter().filter(|p| available(p, min_ready)).count() as i32;
                let new_unavailable = new_count - new_available;
                let mut budget = total - min_available - new_unavailable;
                let (healthy, unhealthy): (Vec<&&Arc<Pod>>, Vec<&&Arc<Pod>>) =
                    view.old.iter().partition(|p| available(p, min_ready));
                for p in unhealthy {
                    if budget <= 0 {
                        break;
                    }
                    delete_pod(&pods_api, p, &uid, expectations).await?;
                    budget -= 1;
                }
                let mut can = (new_available + healthy.len() as i32 - min_available).min(budget);
                for p in healthy {
                    if can <= 0 {
                        break;
                    }
                    delete_pod(&pods_api, p, &uid, expectations).await?;
                    can -= 1;
                }
            }
        }
    }
    write_status(
        client,
        d,
        &view,
        &hash,
        replicas,
        max_unavailable,
        min_ready,
    )
    .await
}

async fn create_pod(
    api: &Api<Pod>,
    d: &Deployment,
    hash: &str,
    uid: &str,
    expectations: &mut Expectations,
) -> Result<(), kube::Error> {
    let Some(spec) = d.spec.as_ref() else {
        return Ok(());
    };
    let template = &spec.template;
    let mut pod = Pod {
        metadata: template.metadata.clone().unwrap_or_default(),
        spec: template.spec.clone(),
        status: None,
    };
    let name = format!("{}-{hash}-{}", d.name_any(), random_suffix());
    pod.metadata.name = Some(name.clone());
    pod.metadata.namespace = d.namespace();
    pod.metadata
        .labels
        .get_or_insert_with(Default::default)
        .insert(HASH_LABEL.to_string(), hash.to_string());
    pod.metadata.owner_references = Some(vec![OwnerReference {
        api_version: "apps/v1".to_string(),
        kind: "Deployment".to_string(),
        name: d.name_any(),
        uid: uid.to_string(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }]);
    api.create(&PostParams::default(), &pod).await?;
    tracing::info!(deployment = %d.name_any(), pod = %name, "created pod");
    expectations
        .creates
        .entry(uid.to_string())
        .or_default()
        .push((name, Instant::now()));
    Ok(())
}

async fn delete_pod(
    api: &Api<Pod>,
    pod: &Pod,
    uid: &str,
    expectations: &mut Expectations,
) -> Result<(), kube::Error> {
    let name = pod.name_any();
    match api.delete(&name, &DeleteParams::default()).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.is_not_found() => {}
        Err(e) => return Err(e),
    }
    tracing::info!(pod = %name, "deleted pod of deployment");
    expectations
        .deletes
        .entry(uid.to_string())
        .or_default()
        .push((name, Instant::now()));
    Ok(())
}

fn condition(
    existing: Option<&DeploymentCondition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
) -> DeploymentCondition {
    let status = if status { "True" } else { "False" }.to_string();
    let now = crate::pod::status::now();
    match existing {
        Some(c) if c.status == status && c.reason.as_deref() == Some(reason) => {
            DeploymentCondition {
                message: Some(message),
                ..c.clone()
            }
        }
        Some(c) if c.status == status => DeploymentCondition {
            reason: Some(reason.to_string()),
            message: Some(message),
            last_update_time: Some(now),
            ..c.clone()
        },
        _ => DeploymentCondition {
            type_: type_.to_string(),
            status,
            reason: Some(reason.to_string()),
            message: Some(message),
            last_update_time: Some(now.clone()),
            last_transition_time: Some(now),
        },
    }
}

async fn write_status(
    client: &Client,
    d: &Deployment,
    view: &View<'_>,
    hash: &str,
    replicas: i32,
    max_unavailable: i32,
    min_ready: i64,
) -> Result<(), kube::Error> {
    let all: Vec<&&Arc<Pod>> = view.new.iter().chain(&view.old).collect();
    let ready = all.iter().filter(|p| ready_since(p).is_some()).count() as i32;
    let available_count = all.iter().filter(|p| available(p, min_ready)).count() as i32;
    let updated = view.new.len() as i32;
    let current = all.len() as i32;
    let existing = d.status.clone().unwrap_or_default();
    let find = |t: &str| existing.conditions.iter().flatten().find(|c| c.type_ == t);
    let min_available = replicas - max_unavailable;
    let available_condition = if available_count >= min_available {
        condition(
            find("Available"),
            "Available",
            true,
            "MinimumReplicasAvailable",
            "Deployment has minimum availability.".into(),
        )
    } else {
        condition(
            find("Available"),
            "Available",
            false,
            "MinimumReplicasUnavailable",
            "Deployment does not have minimum availability.".into(),
        )
    };
    let rs = format!("{}-{hash}", d.name_any());
    let complete = updated == replicas
        && available_count == replicas
        && view.old.is_empty()
        && current == replicas;
    let progressing = if complete {
        condition(
            find("Progressing"),
            "Progressing",
            true,
            "NewReplicaSetAvailable",
            format!("ReplicaSet {rs:?} has successfully progressed."),
        )
    } else {
        condition(
            find("Progressing"),
            "Progressing",
            true,
            "ReplicaSetUpdated",
            format!("ReplicaSet {rs:?} is progressing."),
        )
    };
    let status = DeploymentStatus {
        observed_generation: d.metadata.generation,
        replicas: Some(current),
        updated_replicas: Some(updated),
        ready_replicas: Some(ready),
        available_replicas: Some(available_count),
        unavailable_replicas: Some((replicas - available_count).max(0)),
        conditions: Some(vec![available_condition, progressing]),
        collision_count: existing.collision_count,
        terminating_replicas: None,
    };
    if status == existing {
        return Ok(());
    }
    let api: Api<Deployment> = Api::namespaced(client.clone(), &d.namespace().unwrap_or_default());
    api.patch_status(
        &d.name_any(),
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"status": status})),
    )
    .await
    .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_stable_and_template_sensitive() {
        let mut t = PodTemplateSpec::default();
        let a = template_hash(&t, None);
        assert_eq!(a, template_hash(&t, None));
        assert!(a.bytes().all(|b| ALPHANUMS.contains(&b)));
        t.metadata = Some(kube::api::ObjectMeta {
            labels: Some([("a".into(), "b".into())].into()),
            ..Default::default()
        });
        assert_ne!(a, template_hash(&t, None));
        assert_ne!(template_hash(&t, None), template_hash(&t, Some(1)));
    }

    #[test]
    fn resolves_surge_and_unavailable() {
        assert_eq!(resolve(None, 25, 2, true), 1);
        assert_eq!(resolve(None, 25, 2, false), 0);
        assert_eq!(
            resolve(Some(&IntOrString::String("50%".into())), 25, 3, false),
            1
        );
        assert_eq!(resolve(Some(&IntOrString::Int(2)), 25, 3, true), 2);
    }
}

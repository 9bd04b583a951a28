//! A binder standing in for a storage provisioner. The data lives in a
//! directory per claim (see [`crate::volumes`]). Two modes:
//!
//! * claim status (default): claims become Bound with their requested
//!   capacity; a raised request (volume expansion) updates `status.capacity`;
//!   no PersistentVolume objects;
//! * PersistentVolumes (`persistent_volumes`, for an API server with a
//!   PersistentVolume controller): each claim gets a PersistentVolume
//!   `pvc-<claim uid>` (hostPath = the claim's directory, its capacity, access
//!   modes and class, `claimRef`, Delete policy, annotated as provisioned by
//!   us) and its `spec.volumeName`; the PersistentVolume controller binds both.
//!   A raised request grows the volume and, once bound, the claim's
//!   `status.capacity` (no resizer runs). Volumes whose claim is gone (or
//!   Released) are deleted, as an external provisioner does.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};
use tokio::sync::Notify;

use super::{Caches, triggered};
use crate::config::KubeletConfig;
use crate::quantity;

/// `pv.kubernetes.io/provisioned-by` of our volumes: the PersistentVolume
/// controller leaves deleting them to us (an external provisioner).
pub(crate) const PROVISIONER: &str = "e2e.capstan.dev/process-kubelet";
const PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";

fn requested(pvc: &PersistentVolumeClaim) -> Option<&Quantity> {
    pvc.spec
        .as_ref()?
        .resources
        .as_ref()?
        .requests
        .as_ref()?
        .get("storage")
}

fn less(a: &Quantity, b: &Quantity) -> bool {
    quantity::parse(&a.0).unwrap_or(0.0) < quantity::parse(&b.0).unwrap_or(0.0)
}

fn access_modes(pvc: &PersistentVolumeClaim) -> Vec<String> {
    pvc.spec
        .as_ref()
        .and_then(|s| s.access_modes.clone())
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| vec!["ReadWriteOnce".to_string()])
}

fn bound(pvc: &PersistentVolumeClaim) -> bool {
    pvc.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound")
}

fn status_capacity(pvc: &PersistentVolumeClaim) -> Option<&Quantity> {
    pvc.status.as_ref()?.capacity.as_ref()?.get("storage")
}

/// The capacity part of a claim's status.
fn capacity_patch(requested: &Quantity) -> Value {
    json!({"capacity": {"storage": requested}, "allocatedResources": {"storage": requested}})
}

/// Claim status mode: the status patch `pvc` needs, if any.
fn desired_status(pvc: &PersistentVolumeClaim) -> Option<Value> {
    let requested = requested(pvc)?;
    let grown = status_capacity(pvc).is_none_or(|c| less(c, requested));
    if bound(pvc) && !grown {
        return None;
    }
    let mut status = capacity_patch(requested);
    status["phase"] = json!("Bound");
    status["accessModes"] = json!(access_modes(pvc));
    Some(json!({ "status": status }))
}

/// Name of the PersistentVolume of `pvc`, as dynamic provisioners name them.
pub(crate) fn volume_name(pvc: &PersistentVolumeClaim) -> Option<String> {
    pvc.metadata.uid.as_ref().map(|uid| format!("pvc-{uid}"))
}

/// The PersistentVolume standing in for a provisioned volume of `pvc`.
pub(crate) fn persistent_volume(
    pvc: &PersistentVolumeClaim,
    claims_dir: &Path,
) -> Option<PersistentVolume> {
    let name = volume_name(pvc)?;
    let spec = pvc.spec.as_ref()?;
    let (namespace, claim) = (pvc.namespace()?, pvc.name_any());
    let path = crate::volumes::claim_dir(claims_dir, &namespace, &claim);
    let mut pv_spec = json!({
        "capacity": {"storage": requested(pvc)?},
        "accessModes": access_modes(pvc),
        "persistentVolumeReclaimPolicy": "Delete",
        "hostPath": {"path": path.to_string_lossy(), "type": "DirectoryOrCreate"},
        "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                     "namespace": namespace, "name": claim, "uid": pvc.metadata.uid},
    });
    if let Some(class) = &spec.storage_class_name {
        pv_spec["storageClassName"] = json!(class);
    }
    if let Some(mode) = &spec.volume_mode {
        pv_spec["volumeMode"] = json!(mode);
    }
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": name, "annotations": {PROVISIONED_BY: PROVISIONER}},
        "spec": pv_spec,
    }))
    .ok()
}

/// StorageClass parameter: `tmpfs` backs each volume with a tmpfs of the
/// claim's size, so a full volume is a real `No space left on device`.
pub(crate) const BACKING_PARAMETER: &str = "e2e.capstan.dev/backing";
/// StorageClass parameter: `offline` grows the file system only when a pod
/// mounts the volume next (the claim says `FileSystemResizePending` until
/// then), as drivers without online expansion do.
pub(crate) const RESIZE_PARAMETER: &str = "e2e.capstan.dev/resize";
pub(crate) const RESIZE_PENDING: &str = "FileSystemResizePending";

/// What a claim's StorageClass asks of its volume here.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Backing {
    pub tmpfs: bool,
    pub offline: bool,
}

impl Backing {
    pub(crate) fn of(class: &StorageClass) -> Backing {
        let param = |k: &str| {
            class
                .parameters
                .as_ref()
                .and_then(|p| p.get(k))
                .map(String::as_str)
        };
        Backing {
            tmpfs: param(BACKING_PARAMETER) == Some("tmpfs"),
            offline: param(RESIZE_PARAMETER) == Some("offline"),
        }
    }
}

/// Bytes of a quantity (`64Mi`).
pub(crate) fn bytes(q: &Quantity) -> u64 {
    quantity::parse(&q.0).unwrap_or(0.0) as u64
}

/// Whether the claim waits for its file system to grow in a new pod.
pub(crate) fn resize_pending(pvc: &PersistentVolumeClaim) -> bool {
    pvc.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| {
            c.iter()
                .any(|c| c.type_ == RESIZE_PENDING && c.status == "True")
        })
}

/// A write of the PersistentVolume mode.
#[derive(Debug, Clone, PartialEq)]
enum Step {
    /// A tmpfs of this many bytes on the claim's directory.
    Format(u64),
    CreateVolume(Box<PersistentVolume>),
    /// The claim's `spec.volumeName`.
    SetVolumeName(String),
    /// The volume's `spec.capacity.storage`.
    GrowVolume(String, Quantity),
    /// The claim's `status.capacity` (and `allocatedResources`).
    ClaimCapacity(Quantity),
    /// The tmpfs grown in place to this many bytes (online expansion).
    GrowFileSystem(u64),
    /// The claim's `FileSystemResizePending` condition (offline expansion).
    ResizePending,
    /// The file system grew in a new pod: capacity, condition cleared.
    ResizeDone(Quantity),
}

/// PersistentVolume mode: what `pvc` needs, given its volume (if known).
fn plan(
    pvc: &PersistentVolumeClaim,
    volume: Option<&PersistentVolume>,
    claims_dir: &Path,
    backing: Backing,
    fs_size: Option<u64>,
) -> Vec<Step> {
    let (Some(requested), Some(ours)) = (requested(pvc), volume_name(pvc)) else {
        return Vec::new();
    };
    let volume_name = pvc
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.clone())
        .unwrap_or_default();
    if volume_name.is_empty() {
        let mut steps = Vec::new();
        if backing.tmpfs && fs_size.is_none() {
            steps.push(Step::Format(bytes(requested)));
        }
        if volume.is_none() {
            match persistent_volume(pvc, claims_dir) {
                Some(pv) => steps.push(Step::CreateVolume(Box::new(pv))),
                None => return steps,
            }
        }
        steps.push(Step::SetVolumeName(ours));
        return steps;
    }
    if volume_name != ours {
        // Bound to someone else's volume (static binding): not ours to touch.
        return Vec::new();
    }
    let mut steps = Vec::new();
    let volume_capacity = volume
        .and_then(|v| v.spec.as_ref())
        .and_then(|s| s.capacity.as_ref())
        .and_then(|c| c.get("storage"));
    if volume_capacity.is_some_and(|c| less(c, requested)) {
        steps.push(Step::GrowVolume(ours, requested.clone()));
    }
    if !bound(pvc) {
        return steps;
    }
    let claimed_less = status_capacity(pvc).is_some_and(|c| less(c, requested));
    // A tmpfs volume is judged by its file system, whatever else wrote the
    // claim's status.
    let fs_short = fs_size.is_some_and(|b| b < bytes(requested));
    match (backing.tmpfs, backing.offline) {
        (false, _) if claimed_less => steps.push(Step::ClaimCapacity(requested.clone())),
        (false, _) => {}
        (true, false) => {
            if fs_short {
                steps.push(Step::GrowFileSystem(bytes(requested)));
            }
            if claimed_less {
                steps.push(Step::ClaimCapacity(requested.clone()));
            }
        }
        // The kubelet grows it when a pod mounts the volume next.
        (true, true) if fs_short && !resize_pending(pvc) => steps.push(Step::ResizePending),
        (true, true) if !fs_short && (resize_pending(pvc) || claimed_less) => {
            steps.push(Step::ResizeDone(requested.clone()))
        }
        (true, true) => {}
    }
    steps
}

/// Our volumes whose claim is gone (or that the PersistentVolume controller
/// released): to delete.
fn orphaned<'a>(
    volumes: &'a [Arc<PersistentVolume>],
    claim_uids: &HashSet<String>,
) -> Vec<&'a PersistentVolume> {
    volumes
        .iter()
        .map(|v| v.as_ref())
        .filter(|v| v.annotations().get(PROVISIONED_BY).map(String::as_str) == Some(PROVISIONER))
        .filter(|v| v.metadata.deletion_timestamp.is_none())
        .filter(|v| {
            let released = v.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Released");
            let claim_uid = v
                .spec
                .as_ref()
                .and_then(|s| s.claim_ref.as_ref())
                .and_then(|r| r.uid.as_deref());
            released || claim_uid.is_none_or(|uid| !claim_uids.contains(uid))
        })
        .collect()
}

async fn apply(
    client: &Client,
    pvc: &PersistentVolumeClaim,
    step: Step,
    dir: &Path,
) -> Result<(), kube::Error> {
    let claims: Api<PersistentVolumeClaim> =
        Api::namespaced(client.clone(), &pvc.namespace().unwrap_or_default());
    let volumes: Api<PersistentVolume> = Api::all(client.clone());
    let params = PatchParams::default();
    let fs = |r: std::io::Result<()>| {
        r.map_err(|e| kube::Error::Service(format!("tmpfs on {}: {e}", dir.display()).into()))
    };
    match step {
        Step::Format(bytes) => fs(crate::sys::tmpfs::ensure(dir, bytes)),
        Step::GrowFileSystem(bytes) => fs(crate::sys::tmpfs::resize(dir, bytes)),
        Step::ResizePending => {
            let now = jiff::Timestamp::now();
            let patch = json!({"status": {"conditions": [{
                "type": RESIZE_PENDING, "status": "True", "lastTransitionTime": now.to_string(),
                "message": "Waiting for user to (re-)start a pod to finish file system resize of volume on node."
            }]}});
            claims
                .patch_status(&pvc.name_any(), &params, &Patch::Merge(patch))
                .await
                .map(drop)
        }
        Step::ResizeDone(capacity) => {
            let mut status = capacity_patch(&capacity);
            status["conditions"] = json!([]);
            claims
                .patch_status(
                    &pvc.name_any(),
                    &params,
                    &Patch::Merge(json!({ "status": status })),
                )
                .await
                .map(drop)
        }
        Step::CreateVolume(pv) => match volumes.create(&PostParams::default(), &pv).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.is_already_exists() => Ok(()),
            Err(e) => Err(e),
        },
        Step::SetVolumeName(name) => {
            let patch = json!({"spec": {"volumeName": name}});
            claims
                .patch(&pvc.name_any(), &params, &Patch::Merge(patch))
                .await
                .map(drop)
        }
        Step::GrowVolume(name, capacity) => {
            let patch = json!({"spec": {"capacity": {"storage": capacity}}});
            volumes
                .patch(&name, &params, &Patch::Merge(patch))
                .await
                .map(drop)
        }
        Step::ClaimCapacity(capacity) => {
            let patch = json!({ "status": capacity_patch(&capacity) });
            claims
                .patch_status(&pvc.name_any(), &params, &Patch::Merge(patch))
                .await
                .map(drop)
        }
    }
}

/// The backing a class asks for, read once per class (parameters are
/// immutable); a class not there yet is asked for again next time.
async fn backing_of(
    client: &Client,
    known: &mut std::collections::HashMap<String, Backing>,
    class: &str,
) -> Backing {
    if let Some(b) = known.get(class) {
        return *b;
    }
    match Api::<StorageClass>::all(client.clone())
        .get_opt(class)
        .await
    {
        Ok(Some(sc)) => {
            let b = Backing::of(&sc);
            known.insert(class.to_string(), b);
            b
        }
        _ => Backing::default(),
    }
}

pub(super) async fn run(
    client: Client,
    cfg: KubeletConfig,
    caches: Caches,
    notify: Arc<Notify>,
    resync: Duration,
) {
    let claims_dir = cfg.state_dir.join("claims");
    let mut classes = std::collections::HashMap::new();
    loop {
        let claims = caches.claims.state();
        for pvc in &claims {
            if pvc.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let api: Api<PersistentVolumeClaim> =
                Api::namespaced(client.clone(), &pvc.namespace().unwrap_or_default());
            if !cfg.persistent_volumes {
                let Some(patch) = desired_status(pvc) else {
                    continue;
                };
                if let Err(e) = api
                    .patch_status(
                        &pvc.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(patch),
                    )
                    .await
                {
                    tracing::warn!(claim = %pvc.name_any(), error = %e, "cannot bind claim");
                }
                continue;
            }
            let volume = volume_name(pvc).and_then(|name| {
                caches
                    .volumes
                    .get(&kube::runtime::reflector::ObjectRef::new(&name))
            });
            let backing = match pvc
                .spec
                .as_ref()
                .and_then(|s| s.storage_class_name.as_deref())
            {
                Some(class) => backing_of(&client, &mut classes, class).await,
                None => Backing::default(),
            };
            let dir = crate::volumes::claim_dir(
                &claims_dir,
                &pvc.namespace().unwrap_or_default(),
                &pvc.name_any(),
            );
            let fs_size = crate::sys::tmpfs::size(&dir);
            for step in plan(pvc, volume.as_deref(), &claims_dir, backing, fs_size) {
                let what = format!("{step:?}");
                if let Err(e) = apply(&client, pvc, step, &dir).await {
                    tracing::warn!(claim = %pvc.name_any(), error = %e, step = %what, "cannot provision claim (retrying)");
                    break;
                }
            }
        }
        if cfg.persistent_volumes {
            let uids: HashSet<String> = claims
                .iter()
                .filter_map(|c| c.metadata.uid.clone())
                .collect();
            let volumes = caches.volumes.state();
            let api: Api<PersistentVolume> = Api::all(client.clone());
            for pv in orphaned(&volumes, &uids) {
                match api.delete(&pv.name_any(), &DeleteParams::default()).await {
                    Ok(_) => {
                        tracing::info!(volume = %pv.name_any(), "deleted the volume of a deleted claim")
                    }
                    Err(kube::Error::Api(s)) if s.is_not_found() => {}
                    Err(e) => {
                        tracing::warn!(volume = %pv.name_any(), error = %e, "cannot delete volume")
                    }
                }
            }
        }
        triggered(&notify, resync).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn pvc(request: &str, spec: Value, status: Value) -> PersistentVolumeClaim {
        let mut full = json!({"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": request}}});
        if let (Some(f), Some(extra)) = (full.as_object_mut(), spec.as_object()) {
            f.extend(extra.clone());
        }
        serde_json::from_value(json!({
            "metadata": {"name": "db-1", "namespace": "ns", "uid": "c0ffee"},
            "spec": full,
            "status": status
        }))
        .unwrap()
    }

    #[test]
    fn binds_and_expands() {
        let patch = desired_status(&pvc("1Gi", json!({}), json!({}))).unwrap();
        assert_eq!(patch["status"]["phase"], "Bound");
        assert_eq!(patch["status"]["capacity"]["storage"], "1Gi");
        let bound = json!({"phase": "Bound", "capacity": {"storage": "1Gi"}});
        assert!(desired_status(&pvc("1Gi", json!({}), bound.clone())).is_none());
        assert!(desired_status(&pvc("1024Mi", json!({}), bound.clone())).is_none());
        let grown = desired_status(&pvc("2Gi", json!({}), bound)).unwrap();
        assert_eq!(grown["status"]["capacity"]["storage"], "2Gi");
    }

    #[test]
    fn volume_of_a_claim() {
        let claim = pvc(
            "1Gi",
            json!({"storageClassName": "standard", "volumeMode": "Filesystem"}),
            json!({}),
        );
        let pv = persistent_volume(&claim, &PathBuf::from("/state/claims")).unwrap();
        let pv = serde_json::to_value(pv).unwrap();
        assert_eq!(
            pv,
            json!({
                "apiVersion": "v1", "kind": "PersistentVolume",
                "metadata": {"name": "pvc-c0ffee", "annotations": {"pv.kubernetes.io/provisioned-by": "e2e.capstan.dev/process-kubelet"}},
                "spec": {
                    "capacity": {"storage": "1Gi"},
                    "accessModes": ["ReadWriteOnce"],
                    "persistentVolumeReclaimPolicy": "Delete",
                    "hostPath": {"path": "/state/claims/ns/db-1", "type": "DirectoryOrCreate"},
                    "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "namespace": "ns", "name": "db-1", "uid": "c0ffee"},
                    "storageClassName": "standard",
                    "volumeMode": "Filesystem"
                }
            })
        );
        // Without a class, the volume has none (binds to a class-less claim).
        let pv = persistent_volume(&pvc("1Gi", json!({}), json!({})), Path::new("/s")).unwrap();
        assert!(pv.spec.unwrap().storage_class_name.is_none());
    }

    #[test]
    fn plans_volume_binding_and_growth() {
        let dir = PathBuf::from("/state/claims");
        let fresh = pvc("1Gi", json!({}), json!({"phase": "Pending"}));
        let steps = plan(&fresh, None, &dir, Backing::default(), None);
        assert!(
            matches!(&steps[..], [Step::CreateVolume(_), Step::SetVolumeName(n)] if n == "pvc-c0ffee")
        );
        let pv = persistent_volume(&fresh, &dir).unwrap();
        assert_eq!(
            plan(&fresh, Some(&pv), &dir, Backing::default(), None),
            vec![Step::SetVolumeName("pvc-c0ffee".into())]
        );

        let named = json!({"volumeName": "pvc-c0ffee"});
        // Waiting for the PersistentVolume controller: nothing to do.
        let waiting = pvc("1Gi", named.clone(), json!({"phase": "Pending"}));
        assert!(plan(&waiting, Some(&pv), &dir, Backing::default(), None).is_empty());
        let bound = json!({"phase": "Bound", "capacity": {"storage": "1Gi"}});
        assert!(
            plan(
                &pvc("1Gi", named.clone(), bound.clone()),
                Some(&pv),
                &dir,
                Backing::default(),
                None
            )
            .is_empty()
        );
        // Expansion: the volume grows, then the claim's capacity.
        let grown = pvc("2Gi", named.clone(), bound);
        let two = Quantity("2Gi".into());
        assert_eq!(
            plan(&grown, Some(&pv), &dir, Backing::default(), None),
            vec![
                Step::GrowVolume("pvc-c0ffee".into(), two.clone()),
                Step::ClaimCapacity(two.clone())
            ]
        );
        let big = persistent_volume(&grown, &dir).unwrap();
        assert_eq!(
            plan(&grown, Some(&big), &dir, Backing::default(), None),
            vec![Step::ClaimCapacity(two)]
        );
        // Someone else's volume is left alone.
        let other = pvc(
            "2Gi",
            json!({"volumeName": "static-1"}),
            json!({"phase": "Bound", "capacity": {"storage": "1Gi"}}),
        );
        assert!(plan(&other, Some(&pv), &dir, Backing::default(), None).is_empty());
    }

    #[test]
    fn tmpfs_volumes_grow_online_or_in_the_next_pod() {
        let dir = PathBuf::from("/state/claims");
        let online = Backing {
            tmpfs: true,
            offline: false,
        };
        let offline = Backing {
            tmpfs: true,
            offline: true,
        };
        let fresh = pvc("64Mi", json!({}), json!({"phase": "Pending"}));
        assert!(matches!(
            &plan(&fresh, None, &dir, online, None)[..],
            [Step::Format(b), Step::CreateVolume(_), Step::SetVolumeName(_)] if *b == 64 << 20
        ));
        let named = json!({"volumeName": "pvc-c0ffee"});
        let bound = json!({"phase": "Bound", "capacity": {"storage": "64Mi"}});
        let grown = pvc("96Mi", named.clone(), bound.clone());
        let pv = persistent_volume(&grown, &dir).unwrap();
        let q = Quantity("96Mi".into());
        assert_eq!(
            plan(&grown, Some(&pv), &dir, online, Some(64 << 20)),
            vec![
                Step::GrowFileSystem(96 << 20),
                Step::ClaimCapacity(q.clone())
            ]
        );
        // Offline: the claim waits for a pod; the kubelet grows it then.
        assert_eq!(
            plan(&grown, Some(&pv), &dir, offline, Some(64 << 20)),
            vec![Step::ResizePending]
        );
        let waiting = pvc(
            "96Mi",
            named,
            json!({"phase": "Bound", "capacity": {"storage": "64Mi"},
                   "conditions": [{"type": RESIZE_PENDING, "status": "True"}]}),
        );
        assert!(plan(&waiting, Some(&pv), &dir, offline, Some(64 << 20)).is_empty());
        assert_eq!(
            plan(&waiting, Some(&pv), &dir, offline, Some(96 << 20)),
            vec![Step::ResizeDone(q)]
        );
        // Something else already wrote the new capacity: the file system
        // still decides.
        let claimed = pvc(
            "96Mi",
            json!({"volumeName": "pvc-c0ffee"}),
            json!({"phase": "Bound", "capacity": {"storage": "96Mi"}}),
        );
        assert_eq!(
            plan(&claimed, Some(&pv), &dir, online, Some(64 << 20)),
            vec![Step::GrowFileSystem(96 << 20)]
        );
        assert_eq!(
            plan(&claimed, Some(&pv), &dir, offline, Some(64 << 20)),
            vec![Step::ResizePending]
        );
    }

    #[test]
    fn deletes_volumes_of_deleted_claims() {
        let dir = PathBuf::from("/s");
        let pv = |uid: &str, phase: &str| {
            let mut claim = pvc("1Gi", json!({}), json!({}));
            claim.metadata.uid = Some(uid.to_string());
            let mut pv = persistent_volume(&claim, &dir).unwrap();
            pv.status = Some(serde_json::from_value(json!({"phase": phase})).unwrap());
            Arc::new(pv)
        };
        let mut foreign = (*pv("x", "Available")).clone();
        foreign.metadata.annotations = None;
        let volumes = vec![
            pv("live", "Bound"),
            pv("gone", "Bound"),
            pv("live2", "Released"),
            Arc::new(foreign),
        ];
        let uids: HashSet<String> = ["live", "live2", "x"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let names: Vec<String> = orphaned(&volumes, &uids)
            .iter()
            .map(|v| v.name_any())
            .collect();
        assert_eq!(names, vec!["pvc-gone", "pvc-live2"]);
    }
}

//! A binder standing in for a storage provisioner: claims become Bound with
//! their requested capacity; a raised request (volume expansion) updates
//! `status.capacity`. The data lives in a directory per claim (see
//! [`crate::volumes`]); there are no PersistentVolume objects.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use tokio::sync::Notify;

use super::{Caches, triggered};
use crate::quantity;

/// The status patch `pvc` needs, if any.
fn desired_status(pvc: &PersistentVolumeClaim) -> Option<serde_json::Value> {
    let spec = pvc.spec.as_ref()?;
    let requested = spec.resources.as_ref()?.requests.as_ref()?.get("storage")?;
    let status = pvc.status.as_ref();
    let bound = status.and_then(|s| s.phase.as_deref()) == Some("Bound");
    let capacity = status
        .and_then(|s| s.capacity.as_ref())
        .and_then(|c| c.get("storage"));
    let grown = match capacity {
        None => true,
        Some(c) => {
            quantity::parse(&requested.0).unwrap_or(0.0) > quantity::parse(&c.0).unwrap_or(0.0)
        }
    };
    if bound && !grown {
        return None;
    }
    Some(serde_json::json!({"status": {
        "phase": "Bound",
        "accessModes": spec.access_modes.clone().unwrap_or_else(|| vec!["ReadWriteOnce".to_string()]),
        "capacity": {"storage": requested},
        "allocatedResources": {"storage": requested},
    }}))
}

pub(super) async fn run(client: Client, caches: Caches, notify: Arc<Notify>, resync: Duration) {
    loop {
        for pvc in caches.claims.state() {
            if pvc.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let Some(patch) = desired_status(&pvc) else {
                continue;
            };
            let api: Api<PersistentVolumeClaim> =
                Api::namespaced(client.clone(), &pvc.namespace().unwrap_or_default());
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
        }
        triggered(&notify, resync).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pvc(request: &str, status: serde_json::Value) -> PersistentVolumeClaim {
        serde_json::from_value(json!({
            "metadata": {"name": "db-1", "namespace": "ns"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": request}}},
            "status": status
        }))
        .unwrap()
    }

    #[test]
    fn binds_and_expands() {
        let patch = desired_status(&pvc("1Gi", json!({}))).unwrap();
        assert_eq!(patch["status"]["phase"], "Bound");
        assert_eq!(patch["status"]["capacity"]["storage"], "1Gi");
        let bound = json!({"phase": "Bound", "capacity": {"storage": "1Gi"}});
        assert!(desired_status(&pvc("1Gi", bound.clone())).is_none());
        assert!(desired_status(&pvc("1024Mi", bound.clone())).is_none());
        let grown = desired_status(&pvc("2Gi", bound)).unwrap();
        assert_eq!(grown["status"]["capacity"]["storage"], "2Gi");
    }
}

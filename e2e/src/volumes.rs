//! Storage for the volume scenarios: StorageClasses whose volumes have a
//! real capacity on the local harness (a size-limited tmpfs per claim:
//! `No space left on device` is real) and grow online or only in a new pod,
//! and the volume figures a cluster's status shows.

use capstan::api::{PostgresCluster, VolumeStatus};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};

use crate::E2eError;

/// How a class's volumes grow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expansion {
    /// `allowVolumeExpansion: false`.
    None,
    /// The file system grows while mounted.
    Online,
    /// The file system grows when a pod mounts it next
    /// (`FileSystemResizePending` until then).
    Offline,
}

/// Creates (or keeps) StorageClass `name`. On a real cluster set
/// `CAPSTAN_E2E_STORAGE_CLASS_<NAME>` (upper case, `-` as `_`) to use one of
/// yours instead; it is then neither created nor changed.
pub async fn storage_class(
    client: &Client,
    name: &str,
    expansion: Expansion,
) -> Result<String, E2eError> {
    let env = format!(
        "CAPSTAN_E2E_STORAGE_CLASS_{}",
        name.to_uppercase().replace('-', "_")
    );
    if let Ok(own) = std::env::var(&env) {
        return Ok(own);
    }
    let mut parameters = serde_json::json!({"e2e.capstan.dev/backing": "tmpfs"});
    if expansion == Expansion::Offline {
        parameters["e2e.capstan.dev/resize"] = "offline".into();
    }
    let class: StorageClass = serde_json::from_value(serde_json::json!({
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {"name": name},
        "provisioner": "e2e.capstan.dev/process-kubelet",
        "allowVolumeExpansion": expansion != Expansion::None,
        "parameters": parameters,
    }))
    .map_err(|e| E2eError::Setup(e.to_string()))?;
    Api::<StorageClass>::all(client.clone())
        .patch(
            name,
            &PatchParams::apply("e2e-storage").force(),
            &Patch::Apply(&class),
        )
        .await
        .map_err(|e| E2eError::Kube(format!("apply StorageClass {name}"), e))?;
    Ok(name.to_string())
}

/// The `volume` (`data`, `wal`) of `instance` as status shows it.
pub fn volume<'a>(
    c: &'a PostgresCluster,
    instance: &str,
    volume: &str,
) -> Option<&'a VolumeStatus> {
    c.status
        .as_ref()?
        .instances
        .iter()
        .find(|i| i.name == instance)?
        .volumes
        .iter()
        .find(|v| v.volume == volume)
}

/// Percent of the file system in use, as status shows it.
pub fn used_percent(v: &VolumeStatus) -> Option<f64> {
    let (used, size) = (v.used_bytes?, v.size_bytes?);
    (size > 0).then(|| used as f64 * 100.0 / size as f64)
}

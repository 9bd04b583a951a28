//! Pod volumes as host directories, bind-mounted into the containers.
//!
//! * `emptyDir`: a directory of the pod (mode 0777), removed with the pod.
//! * `persistentVolumeClaim`: `<state>/claims/<namespace>/<claim>`, outlives the
//!   pod; removed when the claim is deleted.
//! * `secret`, `configMap`, `downwardAPI`, `projected`: files projected
//!   atomically ([`atomic`]), refreshed when the objects change. A
//!   `serviceAccountToken` source gets the configured token, or with
//!   `token_requests` the pod's own token from the [`ObjectSource`] (the
//!   API-facing side requests it); until it is there the volume is not ready.
//! * `hostPath`: the host path itself.
//!
//! fsGroup is approximated: the volume root (emptyDir, claim) gets the mapped
//! group and the setgid bit when it is created, projected files get the group
//! and group read; nothing is changed recursively.

pub mod atomic;

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{
    ConfigMap, DownwardAPIVolumeFile, KeyToPath, Secret, Volume as PodVolume, VolumeProjection,
};

use crate::downward::{DownwardError, PodFacts};
use crate::objects::ObjectSource;
use crate::tokens::{TokenKey, service_account_name};
use atomic::{FileEntry, Payload};

const DEFAULT_MODE: i32 = 0o644;

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("MountVolume.SetUp failed for volume {volume:?}: secret {name:?} not found")]
    SecretNotFound { volume: String, name: String },
    #[error("MountVolume.SetUp failed for volume {volume:?}: configmap {name:?} not found")]
    ConfigMapNotFound { volume: String, name: String },
    #[error("MountVolume.SetUp failed for volume {volume:?}: key {key:?} not found in {name:?}")]
    KeyNotFound {
        volume: String,
        name: String,
        key: String,
    },
    #[error("persistentvolumeclaim {0:?} not found")]
    ClaimNotFound(String),
    #[error(
        "MountVolume.SetUp failed for volume {volume:?}: no token of service account {service_account:?} yet (TokenRequest pending)"
    )]
    TokenPending {
        volume: String,
        service_account: String,
    },
    #[error("volume {volume:?}: {what} is not supported by the e2e kubelet")]
    Unsupported { volume: String, what: String },
    #[error("volume {volume:?}: {source}")]
    Downward {
        volume: String,
        source: DownwardError,
    },
    #[error("volume {volume:?}: hostPath {path:?} does not exist")]
    HostPathMissing { volume: String, path: String },
    #[error("volume {volume:?}: cannot set up {path}: {source}")]
    Io {
        volume: String,
        path: PathBuf,
        source: io::Error,
    },
}

/// A volume ready to be bind-mounted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    pub host_path: PathBuf,
    /// Secret, ConfigMap, downward API and projected volumes are read-only.
    pub read_only: bool,
    /// `Some((namespace, claim))` for claim volumes.
    pub claim: Option<(String, String)>,
}

/// Token and CA a pod's service account directory gets.
#[derive(Debug, Clone)]
pub struct ServiceAccountFiles {
    pub token: String,
    pub ca_crt: String,
}

pub struct VolumeInputs<'a> {
    pub facts: PodFacts<'a>,
    pub objects: &'a dyn ObjectSource,
    /// `<pod dir>/volumes`
    pub pod_volumes_dir: &'a Path,
    /// `<state>/claims`
    pub claims_dir: &'a Path,
    /// Mapped fsGroup of the pod.
    pub fs_group: Option<u32>,
    pub service_account: Option<&'a ServiceAccountFiles>,
    /// `serviceAccountToken` sources take the pod's own token from
    /// [`ObjectSource::service_account_token`].
    pub token_requests: bool,
    /// The pod's first setup (its containers have not started): offline
    /// file-system resizes happen now, as a kubelet does when it mounts.
    pub mounting: bool,
}

/// Host directory of claim `namespace/name`.
pub fn claim_dir(claims_dir: &Path, namespace: &str, name: &str) -> PathBuf {
    claims_dir.join(namespace).join(name)
}

/// Creates or refreshes every volume of the pod; idempotent.
pub fn sync(inputs: &VolumeInputs<'_>) -> Result<BTreeMap<String, Volume>, VolumeError> {
    let pod = inputs.facts.pod;
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let mut out = BTreeMap::new();
    for v in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        let name = v.name.clone();
        let io_err = |path: &Path| {
            let volume = name.clone();
            let path = path.to_path_buf();
            move |source| VolumeError::Io {
                volume,
                path,
                source,
            }
        };
        let own_dir = inputs.pod_volumes_dir.join(&v.name);
        let volume = if v.empty_dir.is_some() {
            create_shared_dir(&own_dir, inputs.fs_group).map_err(io_err(&own_dir))?;
            Volume {
                host_path: own_dir,
                read_only: false,
                claim: None,
            }
        } else if let Some(pvc) = &v.persistent_volume_claim {
            if inputs.objects.claim(&namespace, &pvc.claim_name).is_none() {
                return Err(VolumeError::ClaimNotFound(pvc.claim_name.clone()));
            }
            let dir = claim_dir(inputs.claims_dir, &namespace, &pvc.claim_name);
            create_shared_dir(&dir, inputs.fs_group).map_err(io_err(&dir))?;
            // A file system that grows only when a pod mounts it (offline
            // expansion) grows now, as the kubelet does before the
            // containers start; the claim binder then reports it.
            if inputs.mounting
                && let Some(claim) = inputs.objects.claim(&namespace, &pvc.claim_name)
                && crate::controller::claims::resize_pending(&claim)
                && let Some(want) = claim.spec.as_ref().and_then(|s| {
                    s.resources
                        .as_ref()?
                        .requests
                        .as_ref()?
                        .get("storage")
                        .cloned()
                })
                && crate::sys::tmpfs::size(&dir)
                    .is_some_and(|have| have < crate::controller::claims::bytes(&want))
            {
                crate::sys::tmpfs::resize(&dir, crate::controller::claims::bytes(&want))
                    .map_err(io_err(&dir))?;
                tracing::info!(claim = %pvc.claim_name, size = %want.0, "grew the file system as the pod mounts it");
            }
            Volume {
                host_path: dir,
                read_only: pvc.read_only == Some(true),
                claim: Some((namespace.clone(), pvc.claim_name.clone())),
            }
        } else if let Some(hp) = &v.host_path {
            let path = PathBuf::from(&hp.path);
            if !path.exists() {
                match hp.type_.as_deref() {
                    Some("DirectoryOrCreate") => {
                        fs::create_dir_all(&path).map_err(io_err(&path))?
                    }
                    Some("FileOrCreate") => {
                        fs::OpenOptions::new()
                            .create(true)
                            .append(true)
                            .open(&path)
                            .map_err(io_err(&path))?;
                    }
                    _ => {
                        return Err(VolumeError::HostPathMissing {
                            volume: name,
                            path: hp.path.clone(),
                        });
                    }
                }
            }
            Volume {
                host_path: path,
                read_only: false,
                claim: None,
            }
        } else {
            let payload = projected_payload(v, &namespace, inputs)?;
            atomic::project(&own_dir, &payload, inputs.fs_group).map_err(io_err(&own_dir))?;
            Volume {
                host_path: own_dir,
                read_only: true,
                claim: None,
            }
        };
        out.insert(v.name.clone(), volume);
    }
    Ok(out)
}

/// The kubelet's service account directory (token, ca.crt, namespace).
pub fn sync_service_account(
    dir: &Path,
    files: &ServiceAccountFiles,
    namespace: &str,
    fs_group: Option<u32>,
) -> io::Result<()> {
    let entry = |s: &str| FileEntry {
        content: s.as_bytes().to_vec(),
        mode: DEFAULT_MODE as u32,
    };
    let payload: Payload = [
        ("token".to_string(), entry(&files.token)),
        ("ca.crt".to_string(), entry(&files.ca_crt)),
        ("namespace".to_string(), entry(namespace)),
    ]
    .into();
    atomic::project(dir, &payload, fs_group).map(|_| ())
}

fn create_shared_dir(dir: &Path, fs_group: Option<u32>) -> io::Result<()> {
    if dir.exists() {
        return Ok(());
    }
    fs::create_dir_all(dir)?;
    let mode = match fs_group {
        Some(gid) => {
            atomic::chown(dir, None, Some(gid))?;
            0o2777
        }
        None => 0o777,
    };
    fs::set_permissions(dir, fs::Permissions::from_mode(mode))
}

fn mode_of(mode: Option<i32>, default: i32) -> u32 {
    (mode.unwrap_or(default) & 0o7777) as u32
}

fn projected_payload(
    v: &PodVolume,
    namespace: &str,
    inputs: &VolumeInputs<'_>,
) -> Result<Payload, VolumeError> {
    let mut payload = Payload::new();
    if let Some(s) = &v.secret {
        let default = s.default_mode.unwrap_or(DEFAULT_MODE);
        let name = s.secret_name.clone().unwrap_or_default();
        secret_files(
            &mut payload,
            &v.name,
            namespace,
            &name,
            s.items.as_deref(),
            default,
            s.optional,
            inputs,
        )?;
    } else if let Some(c) = &v.config_map {
        let default = c.default_mode.unwrap_or(DEFAULT_MODE);
        config_map_files(
            &mut payload,
            &v.name,
            namespace,
            &c.name,
            c.items.as_deref(),
            default,
            c.optional,
            inputs,
        )?;
    } else if let Some(d) = &v.downward_api {
        let default = d.default_mode.unwrap_or(DEFAULT_MODE);
        downward_files(
            &mut payload,
            &v.name,
            d.items.as_deref().unwrap_or_default(),
            default,
            inputs,
        )?;
    } else if let Some(p) = &v.projected {
        let default = p.default_mode.unwrap_or(DEFAULT_MODE);
        for source in p.sources.iter().flatten() {
            projection(&mut payload, &v.name, namespace, source, default, inputs)?;
        }
    } else {
        return Err(VolumeError::Unsupported {
            volume: v.name.clone(),
            what: volume_kind(v),
        });
    }
    Ok(payload)
}

fn projection(
    payload: &mut Payload,
    volume: &str,
    namespace: &str,
    source: &VolumeProjection,
    default: i32,
    inputs: &VolumeInputs<'_>,
) -> Result<(), VolumeError> {
    if let Some(s) = &source.secret {
        secret_files(
            payload,
            volume,
            namespace,
            &s.name,
            s.items.as_deref(),
            default,
            s.optional,
            inputs,
        )
    } else if let Some(c) = &source.config_map {
        config_map_files(
            payload,
            volume,
            namespace,
            &c.name,
            c.items.as_deref(),
            default,
            c.optional,
            inputs,
        )
    } else if let Some(d) = &source.downward_api {
        downward_files(
            payload,
            volume,
            d.items.as_deref().unwrap_or_default(),
            default,
            inputs,
        )
    } else if let Some(t) = &source.service_account_token {
        let token = if inputs.token_requests {
            let pod = inputs.facts.pod;
            let key = TokenKey::new(pod.metadata.uid.as_deref().unwrap_or_default(), t);
            inputs
                .objects
                .service_account_token(&key)
                .ok_or_else(|| VolumeError::TokenPending {
                    volume: volume.to_string(),
                    service_account: service_account_name(pod),
                })?
        } else {
            inputs
                .service_account
                .ok_or_else(|| VolumeError::Unsupported {
                    volume: volume.to_string(),
                    what: "a serviceAccountToken projection without a configured API server token"
                        .to_string(),
                })?
                .token
                .clone()
        };
        payload.insert(
            t.path.clone(),
            FileEntry {
                content: token.into_bytes(),
                mode: mode_of(None, default),
            },
        );
        Ok(())
    } else {
        Err(VolumeError::Unsupported {
            volume: volume.to_string(),
            what: "this projected source".to_string(),
        })
    }
}

fn volume_kind(v: &PodVolume) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|j| {
            j.as_object()
                .and_then(|o| o.keys().find(|k| *k != "name").cloned())
        })
        .map(|k| format!("volume type {k:?}"))
        .unwrap_or_else(|| "a volume without a source".to_string())
}

/// Files for `data`, restricted and renamed by `items` when given.
fn keyed_files(
    payload: &mut Payload,
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&[KeyToPath]>,
    default: i32,
    missing: impl Fn(&str) -> VolumeError,
    optional: bool,
) -> Result<(), VolumeError> {
    match items {
        None => {
            for (k, v) in data {
                payload.insert(
                    k.clone(),
                    FileEntry {
                        content: v.clone(),
                        mode: mode_of(None, default),
                    },
                );
            }
        }
        Some(items) => {
            for item in items {
                match data.get(&item.key) {
                    Some(v) => {
                        payload.insert(
                            item.path.clone(),
                            FileEntry {
                                content: v.clone(),
                                mode: mode_of(item.mode, default),
                            },
                        );
                    }
                    None if optional => {}
                    None => return Err(missing(&item.key)),
                }
            }
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn secret_files(
    payload: &mut Payload,
    volume: &str,
    namespace: &str,
    name: &str,
    items: Option<&[KeyToPath]>,
    default: i32,
    optional: Option<bool>,
    inputs: &VolumeInputs<'_>,
) -> Result<(), VolumeError> {
    let optional = optional == Some(true);
    let Some(secret) = inputs.objects.secret(namespace, name) else {
        return if optional {
            Ok(())
        } else {
            Err(VolumeError::SecretNotFound {
                volume: volume.to_string(),
                name: name.to_string(),
            })
        };
    };
    let data = secret_data(&secret);
    let missing = |key: &str| VolumeError::KeyNotFound {
        volume: volume.to_string(),
        name: name.to_string(),
        key: key.to_string(),
    };
    keyed_files(payload, &data, items, default, missing, optional)
}

#[allow(clippy::too_many_arguments)]
fn config_map_files(
    payload: &mut Payload,
    volume: &str,
    namespace: &str,
    name: &str,
    items: Option<&[KeyToPath]>,
    default: i32,
    optional: Option<bool>,
    inputs: &VolumeInputs<'_>,
) -> Result<(), VolumeError> {
    let optional = optional == Some(true);
    let Some(cm) = inputs.objects.config_map(namespace, name) else {
        return if optional {
            Ok(())
        } else {
            Err(VolumeError::ConfigMapNotFound {
                volume: volume.to_string(),
                name: name.to_string(),
            })
        };
    };
    let data = config_map_data(&cm);
    let missing = |key: &str| VolumeError::KeyNotFound {
        volume: volume.to_string(),
        name: name.to_string(),
        key: key.to_string(),
    };
    keyed_files(payload, &data, items, default, missing, optional)
}

fn downward_files(
    payload: &mut Payload,
    volume: &str,
    items: &[DownwardAPIVolumeFile],
    default: i32,
    inputs: &VolumeInputs<'_>,
) -> Result<(), VolumeError> {
    let err = |source| VolumeError::Downward {
        volume: volume.to_string(),
        source,
    };
    for item in items {
        let value = if let Some(f) = &item.field_ref {
            inputs.facts.field(&f.field_path).map_err(err)?
        } else if let Some(r) = &item.resource_field_ref {
            let container = r.container_name.clone().unwrap_or_default();
            inputs
                .facts
                .resource(&container, &r.resource, r.divisor.as_ref())
                .map_err(err)?
        } else {
            String::new()
        };
        payload.insert(
            item.path.clone(),
            FileEntry {
                content: value.into_bytes(),
                mode: mode_of(item.mode, default),
            },
        );
    }
    Ok(())
}

pub fn secret_data(secret: &Secret) -> BTreeMap<String, Vec<u8>> {
    let mut data: BTreeMap<String, Vec<u8>> = secret
        .string_data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
        .collect();
    for (k, v) in secret.data.iter().flatten() {
        data.insert(k.clone(), v.0.clone());
    }
    data
}

fn config_map_data(cm: &ConfigMap) -> BTreeMap<String, Vec<u8>> {
    let mut data: BTreeMap<String, Vec<u8>> = cm
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
        .collect();
    for (k, v) in cm.binary_data.iter().flatten() {
        data.insert(k.clone(), v.0.clone());
    }
    data
}

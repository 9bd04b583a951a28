//! The instance pods' side of `spec.bootstrap.restore`: the `restore`
//! block of `instance.json` (the source's stanza and repository, and where
//! recovery stops) and the Secret volume its credentials are read from,
//! under the same fixed file names as a backup repository's.

use std::path::Path;

use k8s_openapi::api::core::v1::{PersistentVolumeClaimVolumeSource, Volume, VolumeMount};

use crate::api::backup::{RestoreSpec, default_repository_path};
use crate::backup::repository::{Repository, Retention, Storage};
use crate::contract::layout::{self, RESTORE_SECRETS_DIR};
use crate::contract::restore::{RestoreSettings, RestoreTarget};

use super::backup::ObjectStore;
use super::model::Model;
use super::names;

/// Volume name of the source's credentials.
const VOLUME: &str = "restore-source";
/// Volume name of a volume source's claim.
const CLAIM_VOLUME: &str = "restore-volume";

/// The `restore` block of `instance.json`; `None` without
/// `spec.bootstrap.restore`.
pub fn settings(model: &Model) -> Option<RestoreSettings> {
    let restore = model.spec.bootstrap.restore.as_ref()?;
    let stanza = source_cluster(model, restore).to_string();
    let (storage, path) = match (&restore.source.repository.volume, source_store(restore)) {
        // The claim holds what a repository host wrote at its volume's root.
        (Some(_), _) => (Storage::Posix, layout::RESTORE_VOLUME_DIR.to_string()),
        (None, Some(store)) => (
            store.storage(Path::new(RESTORE_SECRETS_DIR)),
            store
                .path()
                .unwrap_or_else(|| default_repository_path(&model.namespace, &stanza)),
        ),
        (None, None) => return None,
    };
    Some(RestoreSettings {
        repository: Repository {
            storage,
            path,
            // Only read from: nothing is ever expired there by this cluster.
            retention: Retention::default(),
        },
        target: target(restore),
        stanza,
    })
}

/// A volume source's claim, mounted read-only where the restore reads it,
/// in the first instance only: it is the one that restores, and a
/// ReadWriteOnce claim attaches to one node.
pub fn claim(model: &Model, instance: &str) -> Option<(Volume, VolumeMount)> {
    let restore = model.spec.bootstrap.restore.as_ref()?;
    let source = restore.source.repository.volume.as_ref()?;
    if instance != names::instance(&model.name, 1) {
        return None;
    }
    let volume = Volume {
        name: CLAIM_VOLUME.into(),
        persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
            claim_name: source.claim_name.clone(),
            read_only: Some(true),
        }),
        ..Volume::default()
    };
    let mount = VolumeMount {
        name: CLAIM_VOLUME.into(),
        mount_path: layout::RESTORE_VOLUME_DIR.into(),
        read_only: Some(true),
        ..VolumeMount::default()
    };
    Some((volume, mount))
}

fn source_store(restore: &RestoreSpec) -> Option<ObjectStore<'_>> {
    let r = &restore.source.repository;
    ObjectStore::of(&r.s3, &r.azure, &r.gcs)
}

/// The cluster that wrote the backups: its name is the stanza.
fn source_cluster<'a>(model: &'a Model, restore: &'a RestoreSpec) -> &'a str {
    restore.source.cluster.as_deref().unwrap_or(&model.name)
}

/// Admission allows exactly one target field (or none).
fn target(restore: &RestoreSpec) -> RestoreTarget {
    let Some(t) = &restore.target else {
        return RestoreTarget::Latest;
    };
    if let Some(time) = &t.time {
        RestoreTarget::Time(time.clone())
    } else if let Some(lsn) = &t.lsn {
        RestoreTarget::Lsn(lsn.clone())
    } else if let Some(name) = &t.name {
        RestoreTarget::Name(name.clone())
    } else if let Some(label) = &t.backup {
        RestoreTarget::Backup(label.clone())
    } else {
        RestoreTarget::Latest
    }
}

/// The source's credentials, mounted in every instance pod (the pod spec
/// stays the same once the restore is done). Optional: a missing Secret
/// or key must not keep the pod from starting, so the instance can report
/// it (the cluster is Stalled with RestoreFailed) and retry once fixed.
pub fn volumes(model: &Model) -> Vec<(Volume, VolumeMount)> {
    model
        .spec
        .bootstrap
        .restore
        .as_ref()
        .and_then(source_store)
        .map(|store| store.volumes(VOLUME, RESTORE_SECRETS_DIR, true))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::repository::{AzureCredentials, GcsCredentials, S3Credentials, Storage};
    use crate::resources::backup::tests::s3;
    use crate::resources::model::fixtures::model;
    use serde_json::json;

    fn with_restore(restore: serde_json::Value) -> Model {
        let mut m = model();
        m.spec.bootstrap = serde_json::from_value(json!({ "restore": restore })).unwrap();
        m
    }

    #[test]
    fn a_volume_source_is_read_from_its_claim_on_the_first_instance_only() {
        let m = with_restore(
            json!({"source": {"repository": {"volume": {"claimName": "orders-repo1"}}, "cluster": "orders"}}),
        );
        let s = settings(&m).unwrap();
        assert_eq!(s.stanza, "orders");
        assert_eq!(s.repository.storage, Storage::Posix);
        assert_eq!(s.repository.path, "/var/lib/pgbackrest-source");
        let (volume, mount) = claim(&m, "db-1").unwrap();
        let source = volume.persistent_volume_claim.unwrap();
        assert_eq!(source.claim_name, "orders-repo1");
        assert_eq!(source.read_only, Some(true));
        assert_eq!(mount.read_only, Some(true));
        assert_eq!(mount.mount_path, "/var/lib/pgbackrest-source");
        assert!(claim(&m, "db-2").is_none());
        assert!(volumes(&m).is_empty(), "no credentials to mount");
        let pod = crate::resources::instance::pod(&m, "db-1", "primary");
        let spec = pod.spec.unwrap();
        assert!(
            spec.containers[0]
                .volume_mounts
                .iter()
                .flatten()
                .any(|v| v.name == "restore-volume")
        );
        assert!(
            spec.volumes
                .iter()
                .flatten()
                .any(|v| v.name == "restore-volume")
        );
    }

    #[test]
    fn no_restore_means_no_settings_and_no_volumes() {
        assert!(settings(&model()).is_none());
        assert!(volumes(&model()).is_empty());
    }

    #[test]
    fn the_source_stanza_and_path_default_to_this_cluster() {
        let m = with_restore(json!({"source": {"repository": {"s3": s3(json!({}))}}}));
        let s = settings(&m).unwrap();
        assert_eq!(s.stanza, "db");
        assert_eq!(s.repository.path, "/capstan/ns/db");
        assert_eq!(s.target, RestoreTarget::Latest);
        let Storage::S3(store) = &s.repository.storage else {
            panic!("not S3: {:?}", s.repository.storage)
        };
        assert_eq!(store.bucket, "backups");
        assert_eq!(
            store.credentials,
            S3Credentials::Files {
                access_key_id: "/etc/capstan/restore/s3-key".into(),
                secret_access_key: "/etc/capstan/restore/s3-key-secret".into(),
            }
        );
        assert_eq!(s.repository.retention, Retention::default());
    }

    #[test]
    fn another_clusters_backups_to_each_kind_of_target() {
        for (target, expected) in [
            (
                json!({"time": "2025-06-01T12:00:00Z"}),
                RestoreTarget::Time("2025-06-01T12:00:00Z".into()),
            ),
            (
                json!({"lsn": "0/3000060"}),
                RestoreTarget::Lsn("0/3000060".into()),
            ),
            (
                json!({"name": "before"}),
                RestoreTarget::Name("before".into()),
            ),
            (
                json!({"backup": "20250601-010000F"}),
                RestoreTarget::Backup("20250601-010000F".into()),
            ),
        ] {
            let m = with_restore(json!({
                "source": {"cluster": "orders", "repository": {"s3": s3(json!({}))}},
                "target": target,
            }));
            let s = settings(&m).unwrap();
            assert_eq!(s.stanza, "orders");
            assert_eq!(s.repository.path, "/capstan/ns/orders");
            assert_eq!(s.target, expected);
        }
        let m = with_restore(json!({"source": {"cluster": "orders",
            "repository": {"s3": s3(json!({"path": "/elsewhere/orders"}))}}}));
        assert_eq!(settings(&m).unwrap().repository.path, "/elsewhere/orders");
    }

    #[test]
    fn azure_and_gcs_sources_mount_their_keys_optional() {
        let m = with_restore(
            json!({"source": {"cluster": "orders", "repository": {"azure": {
            "account": "acct", "container": "pg",
            "credentials": {"secretName": "az", "key": "AZURE_STORAGE_KEY"}}}}}),
        );
        let s = settings(&m).unwrap();
        assert_eq!(s.stanza, "orders");
        assert_eq!(s.repository.path, "/capstan/ns/orders");
        let Storage::Azure(a) = &s.repository.storage else {
            panic!("not Azure: {:?}", s.repository.storage)
        };
        assert_eq!(
            a.credentials,
            AzureCredentials::SharedKey("/etc/capstan/restore/azure-key".into())
        );
        let v = volumes(&m);
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].0.secret.as_ref().unwrap().optional, Some(true));
        assert_eq!(v[0].1.mount_path, "/etc/capstan/restore");

        let m = with_restore(json!({"source": {"repository": {"gcs": {
            "bucket": "pg-backups", "path": "/elsewhere",
            "credentials": {"secretName": "gcs", "key": "key.json"}}}}}));
        let s = settings(&m).unwrap();
        assert_eq!(s.repository.path, "/elsewhere");
        let Storage::Gcs(g) = &s.repository.storage else {
            panic!("not GCS: {:?}", s.repository.storage)
        };
        assert_eq!(
            g.credentials,
            GcsCredentials::ServiceKeyFile("/etc/capstan/restore/gcs-key".into())
        );
        let v = volumes(&m);
        assert_eq!(
            v[0].0.secret.as_ref().unwrap().secret_name.as_deref(),
            Some("gcs")
        );
    }

    #[test]
    fn credentials_are_mounted_optional_in_their_own_directory() {
        let m = with_restore(json!({"source": {"repository": {"s3": s3(json!({
            "credentials": {"secretName": "s3-keys", "accessKeyIdKey": "id", "secretAccessKeyKey": "key"},
            "caSecret": {"name": "store-ca", "key": "ca.pem"}}))}}}));
        let v = volumes(&m);
        assert_eq!(v.len(), 2);
        let keys = v[0].0.secret.as_ref().unwrap();
        assert_eq!(keys.secret_name.as_deref(), Some("s3-keys"));
        assert_eq!(keys.optional, Some(true));
        assert_eq!(v[0].1.mount_path, "/etc/capstan/restore");
        assert_eq!(v[1].1.mount_path, "/etc/capstan/restore/ca.crt");
        assert_ne!(v[0].0.name, v[1].0.name);
        let Storage::S3(store) = settings(&m).unwrap().repository.storage else {
            panic!()
        };
        assert_eq!(
            store.tls.ca_file.as_deref(),
            Some(Path::new("/etc/capstan/restore/ca.crt"))
        );
    }
}

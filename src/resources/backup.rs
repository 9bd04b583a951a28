//! The instance pods' side of `spec.backup`: the pgBackRest settings the
//! instance managers get in `instance.json`, and the Secret volumes their
//! repository credentials are read from. The API names keys in the user's
//! Secrets; pods see them under fixed file names, so the settings never
//! carry a user's key names, let alone values.

use std::path::Path;

use k8s_openapi::api::core::v1::{KeyToPath, SecretVolumeSource, Volume, VolumeMount};

use crate::api::backup::{
    BackupRepository, BackupSpec, S3Repository, S3UriStyle, default_repository_path,
};
use crate::backup::repository::{
    Repository, Retention, RetentionType, S3, S3Credentials, Storage, Tls, UriStyle,
};
use crate::contract::backup::{BackupSettings, secrets_dir};

use super::model::Model;

/// File names under [`secrets_dir`].
pub mod files {
    pub const S3_KEY: &str = "s3-key";
    pub const S3_KEY_SECRET: &str = "s3-key-secret";
    pub const CA: &str = "ca.crt";
}

/// The `backup` block of `instance.json`; `None` without `spec.backup`.
/// Repositories other than S3 are refused by validation before this runs.
pub fn settings(model: &Model) -> Option<BackupSettings> {
    let spec = model.spec.backup.as_ref()?;
    Some(BackupSettings {
        stanza: model.name.clone(),
        repositories: spec
            .repositories
            .iter()
            .enumerate()
            .filter_map(|(i, r)| repository(model, r, i + 1))
            .collect(),
        archive_timeout_seconds: archive_timeout_seconds(spec),
        archive_async: spec.archive.async_,
    })
}

fn repository(model: &Model, repo: &BackupRepository, n: usize) -> Option<Repository> {
    let s3 = repo.s3.as_ref()?;
    Some(Repository {
        storage: s3_storage(s3, Path::new(&secrets_dir(n))),
        path: s3
            .path
            .clone()
            .unwrap_or_else(|| default_repository_path(&model.namespace, &model.name)),
        retention: Retention {
            full: u32::try_from(repo.retention.full).ok(),
            full_type: RetentionType::Count,
            diff: repo
                .retention
                .differential
                .and_then(|d| u32::try_from(d).ok()),
            archive: None,
            archive_type: None,
        },
    })
}

/// pgBackRest's view of an S3 repository whose credential files are
/// mounted in `dir` (by [`s3_volumes`]).
pub(super) fn s3_storage(s3: &S3Repository, dir: &Path) -> Storage {
    let (endpoint, port) = split_endpoint(&s3.endpoint);
    Storage::S3(S3 {
        endpoint,
        port,
        region: s3.region.clone(),
        bucket: s3.bucket.clone(),
        uri_style: match s3.uri_style {
            S3UriStyle::Host => UriStyle::Host,
            S3UriStyle::Path => UriStyle::Path,
        },
        tls: Tls {
            verify: s3.verify_tls,
            ca_file: s3.ca_secret.as_ref().map(|_| dir.join(files::CA)),
        },
        credentials: S3Credentials::Files {
            access_key_id: dir.join(files::S3_KEY),
            secret_access_key: dir.join(files::S3_KEY_SECRET),
        },
    })
}

/// `host:port` → (`host`, port); admission allows nothing else.
fn split_endpoint(endpoint: &str) -> (String, Option<u16>) {
    match endpoint.rsplit_once(':') {
        Some((host, port)) if port.parse::<u16>().is_ok() => (host.to_string(), port.parse().ok()),
        _ => (endpoint.to_string(), None),
    }
}

/// `10s`, `5m`, `1h` (admission checks the form and the 1 s – 1 h range).
pub fn archive_timeout_seconds(spec: &BackupSpec) -> u64 {
    let t = spec.archive.timeout.trim();
    let (number, unit) = t.split_at(t.len().saturating_sub(1));
    let n: u64 = number.parse().unwrap_or(60);
    match unit {
        "h" => n * 3600,
        "m" => n * 60,
        _ => n,
    }
}

/// One Secret volume per S3 repository, its keys under fixed file names.
pub fn volumes(model: &Model) -> Vec<(Volume, VolumeMount)> {
    let Some(spec) = model.spec.backup.as_ref() else {
        return vec![];
    };
    spec.repositories
        .iter()
        .enumerate()
        .filter_map(|(i, r)| Some((i + 1, r.s3.as_ref()?)))
        .flat_map(|(n, s3)| s3_volumes(s3, &format!("backup-repo{n}"), &secrets_dir(n), false))
        .collect()
}

/// The Secret volumes of an S3 repository: its keys in the directory `dir`
/// (volume `name`), its private CA beside them. `optional`: a missing
/// Secret or key does not keep the pod from starting; the instance
/// manager reports the missing file instead.
pub(super) fn s3_volumes(
    s3: &S3Repository,
    name: &str,
    dir: &str,
    optional: bool,
) -> Vec<(Volume, VolumeMount)> {
    let item = |key: &str, path: &str| KeyToPath {
        key: key.to_string(),
        path: path.to_string(),
        mode: None,
    };
    let volume = |name: String, secret: &str, items: Vec<KeyToPath>| Volume {
        name,
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.to_string()),
            items: Some(items),
            default_mode: Some(0o600),
            optional: Some(optional),
        }),
        ..Volume::default()
    };
    let mount = |name: &str, sub: Option<&str>| VolumeMount {
        name: name.to_string(),
        mount_path: match sub {
            Some(file) => format!("{dir}/{file}"),
            None => dir.to_string(),
        },
        sub_path: sub.map(str::to_string),
        read_only: Some(true),
        ..VolumeMount::default()
    };
    let mut out = vec![(
        volume(
            name.to_string(),
            &s3.credentials.secret_name,
            vec![
                item(&s3.credentials.access_key_id_key, files::S3_KEY),
                item(&s3.credentials.secret_access_key_key, files::S3_KEY_SECRET),
            ],
        ),
        mount(name, None),
    )];
    // A sub-path mount does not follow a rotated Secret, but a CA changes
    // rarely and the keys beside it (a directory mount) do follow.
    if let Some(ca) = &s3.ca_secret {
        let ca_name = format!("{name}-ca");
        out.push((
            volume(ca_name.clone(), &ca.name, vec![item(&ca.key, files::CA)]),
            mount(&ca_name, Some(files::CA)),
        ));
    }
    out
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::resources::model::fixtures::model;

    fn with_backup(backup: serde_json::Value) -> Model {
        let mut m = model();
        m.spec.backup = Some(serde_json::from_value(backup).unwrap());
        m
    }

    /// An S3 repository spec (`minio.store:9000`, bucket `backups`, keys in
    /// Secret `s3-keys`) with `extra` fields.
    pub(in crate::resources) fn s3(extra: serde_json::Value) -> serde_json::Value {
        let mut base = serde_json::json!({
            "endpoint": "minio.store:9000", "region": "us-east-1", "bucket": "backups",
            "uriStyle": "path", "credentials": {"secretName": "s3-keys"}
        });
        base.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        base
    }

    #[test]
    fn no_backup_spec_means_no_settings_and_no_volumes() {
        assert!(settings(&model()).is_none());
        assert!(volumes(&model()).is_empty());
    }

    #[test]
    fn an_s3_repository_maps_to_pgbackrest_with_keys_as_files() {
        let m = with_backup(serde_json::json!({
            "repositories": [{"name": "repo1", "s3": s3(serde_json::json!({})),
                              "retention": {"full": 3, "differential": 2}}],
            "archive": {"timeout": "5m", "async": true}
        }));
        let s = settings(&m).unwrap();
        assert_eq!(s.stanza, "db");
        assert_eq!(s.archive_timeout_seconds, 300);
        assert!(s.archive_async);
        let repo = &s.repositories[0];
        assert_eq!(repo.path, format!("/capstan/{}/db", m.namespace));
        assert_eq!(repo.retention.full, Some(3));
        assert_eq!(repo.retention.diff, Some(2));
        let Storage::S3(s3) = &repo.storage else {
            panic!("not S3: {:?}", repo.storage)
        };
        assert_eq!((s3.endpoint.as_str(), s3.port), ("minio.store", Some(9000)));
        assert_eq!(s3.uri_style, UriStyle::Path);
        assert!(s3.tls.verify && s3.tls.ca_file.is_none());
        assert_eq!(
            s3.credentials,
            S3Credentials::Files {
                access_key_id: "/etc/capstan/backup/repo1/s3-key".into(),
                secret_access_key: "/etc/capstan/backup/repo1/s3-key-secret".into(),
            }
        );
    }

    #[test]
    fn credentials_and_a_private_ca_are_mounted_under_fixed_names() {
        let m = with_backup(serde_json::json!({"repositories": [
            {"name": "repo1", "s3": s3(serde_json::json!({
                "path": "/shared/db",
                "credentials": {"secretName": "keys", "accessKeyIdKey": "id", "secretAccessKeyKey": "secret"},
                "caSecret": {"name": "store-ca", "key": "ca.pem"}}))}
        ]}));
        let v = volumes(&m);
        assert_eq!(v.len(), 2);
        let keys = v[0].0.secret.as_ref().unwrap();
        assert_eq!(keys.secret_name.as_deref(), Some("keys"));
        let items: Vec<(&str, &str)> = keys
            .items
            .iter()
            .flatten()
            .map(|i| (i.key.as_str(), i.path.as_str()))
            .collect();
        assert_eq!(items, [("id", "s3-key"), ("secret", "s3-key-secret")]);
        assert_eq!(v[0].1.mount_path, "/etc/capstan/backup/repo1");
        assert_eq!(v[1].1.mount_path, "/etc/capstan/backup/repo1/ca.crt");
        assert_eq!(v[1].1.sub_path.as_deref(), Some("ca.crt"));
        let s = settings(&m).unwrap();
        assert_eq!(s.repositories[0].path, "/shared/db");
        let Storage::S3(s3) = &s.repositories[0].storage else {
            panic!()
        };
        assert_eq!(
            s3.tls.ca_file.as_deref(),
            Some(std::path::Path::new("/etc/capstan/backup/repo1/ca.crt"))
        );
    }

    #[test]
    fn archive_timeouts_read_in_seconds() {
        let spec = |t: &str| -> BackupSpec {
            serde_json::from_value(serde_json::json!({
                "repositories": [{"name": "repo1", "s3": s3(serde_json::json!({}))}],
                "archive": {"timeout": t}
            }))
            .unwrap()
        };
        assert_eq!(archive_timeout_seconds(&spec("10s")), 10);
        assert_eq!(archive_timeout_seconds(&spec("2m")), 120);
        assert_eq!(archive_timeout_seconds(&spec("1h")), 3600);
    }
}

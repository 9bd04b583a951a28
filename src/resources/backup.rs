//! The instance pods' side of `spec.backup`: the pgBackRest settings the
//! instance managers get in `instance.json`, and the Secret volumes their
//! repository credentials are read from. The API names keys in the user's
//! Secrets; pods see them under fixed file names, so the settings never
//! carry a user's key names, let alone values.

use std::path::Path;

use k8s_openapi::api::core::v1::{KeyToPath, SecretVolumeSource, Volume, VolumeMount};

use crate::api::backup::{
    AzureKeyType, AzureRepository, BackupRepository, BackupSpec, BackupTarget, GcsKeyType,
    GcsRepository, S3Repository, SecretKeyRef, UriStyle as ApiUriStyle, VolumeRepository,
    default_repository_path,
};
use crate::backup::repository::{
    Azure, AzureCredentials, Gcs, GcsCredentials, RepoHost, Repository, Retention, RetentionType,
    S3, S3Credentials, Storage, Tls, UriStyle,
};
use crate::contract::backup::{BackupSettings, StandbyBackups, secrets_dir};
use crate::contract::layout;

use super::model::Model;
use super::names;

/// File names under [`secrets_dir`].
pub mod files {
    pub const S3_KEY: &str = "s3-key";
    pub const S3_KEY_SECRET: &str = "s3-key-secret";
    /// The Azure shared key or shared access signature.
    pub const AZURE_KEY: &str = "azure-key";
    /// The GCS service account key (JSON) or token.
    pub const GCS_KEY: &str = "gcs-key";
    pub const CA: &str = "ca.crt";
}

/// The `backup` block of `instance.json`; `None` without `spec.backup`.
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
        standby_backups: standby_backups(model).then(|| StandbyBackups {
            // One of the names its certificate covers (`CertKind::Backrest`).
            primary_host: format!("{}.{}.svc", names::rw_service(&model.name), model.namespace),
            primary_port: layout::BACKREST_TLS_PORT,
            port: layout::BACKREST_TLS_PORT,
            primary_pg_path: layout::PGDATA.into(),
            primary_pg_port: layout::POSTGRES_PORT,
            primary_socket_path: layout::RUN_DIR.into(),
            client_name: names::rw_service(&model.name),
        }),
    })
}

/// The volume repositories of the spec, which the repository host mounts.
pub fn volume_repositories(model: &Model) -> Vec<(&BackupRepository, &VolumeRepository)> {
    model
        .spec
        .backup
        .iter()
        .flat_map(|b| &b.repositories)
        .filter_map(|r| Some((r, r.volume.as_ref()?)))
        .collect()
}

/// Instances (and verification pods) present pgBackRest's certificate:
/// to each other for backups from a standby, to the repository host for
/// volume repositories.
pub fn backrest_tls(model: &Model) -> bool {
    standby_backups(model) || !volume_repositories(model).is_empty()
}

/// Where a volume repository is, for pgBackRest on the instances: the
/// repository host's server, and the volume's mount point there.
fn on_repo_host(model: &Model, repo: &BackupRepository) -> (Storage, String) {
    let host = format!("{}.{}.svc", names::repo_host(&model.name), model.namespace);
    (
        Storage::Host(RepoHost {
            host,
            port: layout::BACKREST_TLS_PORT,
        }),
        repo_host_path(&repo.name),
    )
}

/// The mount point (and repository path) of volume repository `name` on
/// the repository host.
pub fn repo_host_path(name: &str) -> String {
    format!("{}/{name}", layout::REPO_HOST_DIR)
}

/// Backups are taken on standbys (`target: preferReplica`): instances run
/// pgBackRest's TLS server and share its certificate.
pub fn standby_backups(model: &Model) -> bool {
    model
        .spec
        .backup
        .as_ref()
        .is_some_and(|b| b.target == BackupTarget::PreferReplica)
}

fn repository(model: &Model, repo: &BackupRepository, n: usize) -> Option<Repository> {
    let (storage, path) = match ObjectStore::of(&repo.s3, &repo.azure, &repo.gcs) {
        Some(store) => (
            store.storage(Path::new(&secrets_dir(n))),
            store
                .path()
                .unwrap_or_else(|| default_repository_path(&model.namespace, &model.name)),
        ),
        None if repo.volume.is_some() => on_repo_host(model, repo),
        None => return None,
    };
    Some(Repository {
        storage,
        path,
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

/// An object-store repository of the API, as a backup repository or a
/// restore source gives it (admission allows exactly one kind).
#[derive(Clone, Copy, Debug)]
pub(super) enum ObjectStore<'a> {
    S3(&'a S3Repository),
    Azure(&'a AzureRepository),
    Gcs(&'a GcsRepository),
}

impl<'a> ObjectStore<'a> {
    pub(super) fn of(
        s3: &'a Option<S3Repository>,
        azure: &'a Option<AzureRepository>,
        gcs: &'a Option<GcsRepository>,
    ) -> Option<Self> {
        s3.as_ref()
            .map(Self::S3)
            .or_else(|| azure.as_ref().map(Self::Azure))
            .or_else(|| gcs.as_ref().map(Self::Gcs))
    }

    /// The repository path the spec sets.
    pub(super) fn path(self) -> Option<String> {
        match self {
            Self::S3(r) => r.path.clone(),
            Self::Azure(r) => r.path.clone(),
            Self::Gcs(r) => r.path.clone(),
        }
    }

    fn ca_secret(self) -> Option<&'a SecretKeyRef> {
        match self {
            Self::S3(r) => r.ca_secret.as_ref(),
            Self::Azure(r) => r.ca_secret.as_ref(),
            Self::Gcs(r) => r.ca_secret.as_ref(),
        }
    }

    /// pgBackRest's view of the store whose credential files are mounted
    /// in `dir` (by [`ObjectStore::volumes`]).
    pub(super) fn storage(self, dir: &Path) -> Storage {
        let tls = |verify: bool| Tls {
            verify,
            ca_file: self.ca_secret().map(|_| dir.join(files::CA)),
        };
        match self {
            Self::S3(s3) => {
                let (endpoint, port) = split_endpoint(&s3.endpoint);
                Storage::S3(S3 {
                    endpoint,
                    port,
                    region: s3.region.clone(),
                    bucket: s3.bucket.clone(),
                    uri_style: uri_style(s3.uri_style),
                    tls: tls(s3.verify_tls),
                    credentials: S3Credentials::Files {
                        access_key_id: dir.join(files::S3_KEY),
                        secret_access_key: dir.join(files::S3_KEY_SECRET),
                    },
                })
            }
            Self::Azure(azure) => {
                let (endpoint, port) = match azure.endpoint.as_deref().map(split_endpoint) {
                    Some((host, port)) => (Some(host), port),
                    None => (None, None),
                };
                let key = dir.join(files::AZURE_KEY);
                Storage::Azure(Azure {
                    account: azure.account.clone(),
                    container: azure.container.clone(),
                    endpoint,
                    port,
                    uri_style: uri_style(azure.uri_style),
                    tls: tls(azure.verify_tls),
                    credentials: match azure.credentials.key_type {
                        AzureKeyType::Shared => AzureCredentials::SharedKey(key),
                        AzureKeyType::Sas => AzureCredentials::Sas(key),
                    },
                })
            }
            // pgBackRest takes a GCS endpoint's port in the endpoint itself.
            Self::Gcs(gcs) => {
                let key = dir.join(files::GCS_KEY);
                Storage::Gcs(Gcs {
                    bucket: gcs.bucket.clone(),
                    endpoint: gcs.endpoint.clone(),
                    tls: tls(gcs.verify_tls),
                    credentials: match gcs.credentials.key_type {
                        GcsKeyType::Service => GcsCredentials::ServiceKeyFile(key),
                        GcsKeyType::Token => GcsCredentials::TokenFile(key),
                    },
                })
            }
        }
    }

    /// The Secret volumes of the store: its credentials in the directory
    /// `dir` (volume `name`) under fixed file names, its private CA beside
    /// them. `optional`: a missing Secret or key does not keep the pod
    /// from starting; the instance manager reports the missing file
    /// instead.
    pub(super) fn volumes(
        self,
        name: &str,
        dir: &str,
        optional: bool,
    ) -> Vec<(Volume, VolumeMount)> {
        let item = |key: &str, path: &str| KeyToPath {
            key: key.to_string(),
            path: path.to_string(),
            mode: None,
        };
        let (secret, items) = match self {
            Self::S3(s3) => (
                &s3.credentials.secret_name,
                vec![
                    item(&s3.credentials.access_key_id_key, files::S3_KEY),
                    item(&s3.credentials.secret_access_key_key, files::S3_KEY_SECRET),
                ],
            ),
            Self::Azure(azure) => (
                &azure.credentials.secret_name,
                vec![item(&azure.credentials.key, files::AZURE_KEY)],
            ),
            Self::Gcs(gcs) => (
                &gcs.credentials.secret_name,
                vec![item(&gcs.credentials.key, files::GCS_KEY)],
            ),
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
        let mut out = vec![(volume(name.to_string(), secret, items), mount(name, None))];
        // A sub-path mount does not follow a rotated Secret, but a CA changes
        // rarely and the keys beside it (a directory mount) do follow.
        if let Some(ca) = self.ca_secret() {
            let ca_name = format!("{name}-ca");
            out.push((
                volume(ca_name.clone(), &ca.name, vec![item(&ca.key, files::CA)]),
                mount(&ca_name, Some(files::CA)),
            ));
        }
        out
    }
}

fn uri_style(style: ApiUriStyle) -> UriStyle {
    match style {
        ApiUriStyle::Host => UriStyle::Host,
        ApiUriStyle::Path => UriStyle::Path,
    }
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
    crate::api::limits::seconds(&spec.archive.timeout).unwrap_or(60)
}

/// One set of Secret volumes per object-store repository, its keys under
/// fixed file names. Optional: a missing Secret or key must not keep a
/// database pod from starting (turning backups on rolls every pod); the
/// instance manager reports the missing file and the field to fix, and
/// keeps the WAL until it can be archived.
pub fn volumes(model: &Model) -> Vec<(Volume, VolumeMount)> {
    let Some(spec) = model.spec.backup.as_ref() else {
        return vec![];
    };
    spec.repositories
        .iter()
        .enumerate()
        .filter_map(|(i, r)| Some((i + 1, ObjectStore::of(&r.s3, &r.azure, &r.gcs)?)))
        .flat_map(|(n, store)| store.volumes(&format!("backup-repo{n}"), &secrets_dir(n), true))
        .collect()
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
    fn backups_from_a_replica_give_every_instance_a_server_reached_through_rw() {
        use crate::resources::secrets::{CertIdentity, CertKind};
        let plain = with_backup(serde_json::json!({
            "repositories": [{"name": "repo1", "s3": s3(serde_json::json!({}))}]
        }));
        assert_eq!(settings(&plain).unwrap().standby_backups, None);
        assert!(!CertKind::managed(&plain).contains(&CertKind::Backrest));
        let m = with_backup(serde_json::json!({
            "repositories": [{"name": "repo1", "s3": s3(serde_json::json!({}))}],
            "target": "preferReplica"
        }));
        let ns = &m.namespace;
        assert_eq!(
            settings(&m).unwrap().standby_backups,
            Some(StandbyBackups {
                primary_host: format!("db-rw.{ns}.svc"),
                primary_port: 8432,
                port: 8432,
                primary_pg_path: "/var/lib/postgresql/data/pgdata".into(),
                primary_pg_port: 5432,
                primary_socket_path: "/var/run/postgresql".into(),
                client_name: "db-rw".into(),
            })
        );
        // Its certificate covers that name; its common name is the client's.
        assert!(CertKind::managed(&m).contains(&CertKind::Backrest));
        let CertIdentity::Peer(names) = CertKind::Backrest.identity(&m) else {
            panic!("not a peer certificate")
        };
        assert_eq!(names[0], "db-rw");
        assert!(names.contains(&format!("db-rw.{ns}.svc")));
        // Pods listen on it and mount it; -rw forwards to it.
        let pod =
            crate::resources::instance::pod(&m, "db-1", crate::resources::labels::ROLE_PRIMARY);
        let spec = pod.spec.unwrap();
        let c = &spec.containers[0];
        assert!(
            c.ports
                .as_ref()
                .unwrap()
                .iter()
                .any(|p| p.container_port == 8432)
        );
        assert!(
            c.volume_mounts
                .as_ref()
                .unwrap()
                .iter()
                .any(|v| v.mount_path == "/etc/capstan/tls/pgbackrest")
        );
        let volume = spec
            .volumes
            .unwrap()
            .into_iter()
            .find(|v| v.name == "backrest-tls")
            .unwrap();
        let sources = volume.projected.unwrap().sources.unwrap();
        assert!(
            sources
                .iter()
                .all(|s| s.secret.as_ref().unwrap().name == "db-pgbackrest-tls")
        );
        let rw = crate::resources::services::all(&m).remove(0);
        let ports = rw.spec.unwrap().ports.unwrap();
        assert_eq!(rw.metadata.name.as_deref(), Some("db-rw"));
        assert!(ports.iter().any(|p| p.port == 8432));
        let plain_rw = crate::resources::services::all(&plain).remove(0);
        assert_eq!(plain_rw.spec.unwrap().ports.unwrap().len(), 1);
    }

    #[test]
    fn a_volume_repository_is_reached_on_the_repository_host_with_the_shared_certificate() {
        use crate::resources::secrets::{CertIdentity, CertKind};
        let m = with_backup(serde_json::json!({
            "repositories": [{"name": "repo1", "s3": s3(serde_json::json!({}))},
                             {"name": "repo2", "volume": {"size": "5Gi"}}]
        }));
        let ns = &m.namespace;
        let s = settings(&m).unwrap();
        assert_eq!(s.repositories.len(), 2);
        assert_eq!(
            s.repositories[1].storage,
            Storage::Host(RepoHost {
                host: format!("db-repo-host.{ns}.svc"),
                port: 8432
            })
        );
        assert_eq!(s.repositories[1].path, "/var/lib/pgbackrest/repo2");
        // No standby server: the instances only connect to the host.
        assert_eq!(s.standby_backups, None);
        assert!(CertKind::managed(&m).contains(&CertKind::Backrest));
        let CertIdentity::Peer(names) = CertKind::Backrest.identity(&m) else {
            panic!("not a peer certificate")
        };
        assert!(
            names.contains(&format!("db-repo-host.{ns}.svc")),
            "{names:?}"
        );
        let pod =
            crate::resources::instance::pod(&m, "db-1", crate::resources::labels::ROLE_PRIMARY);
        let spec = pod.spec.unwrap();
        let c = &spec.containers[0];
        assert!(
            c.volume_mounts
                .iter()
                .flatten()
                .any(|v| v.mount_path == "/etc/capstan/tls/pgbackrest")
        );
        assert!(!c.ports.iter().flatten().any(|p| p.container_port == 8432));
        // The volume itself is only the repository host's.
        assert!(!spec.volumes.iter().flatten().any(|v| {
            v.persistent_volume_claim
                .as_ref()
                .is_some_and(|c| c.claim_name == "db-repo2")
        }));
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
    fn an_azure_repository_mounts_its_key_and_keeps_the_account_in_the_settings() {
        let m = with_backup(serde_json::json!({"repositories": [
            {"name": "repo1", "s3": s3(serde_json::json!({}))},
            {"name": "repo2", "azure": {"account": "devstoreaccount1", "container": "pg",
                "endpoint": "azurite.store:10000", "uriStyle": "path",
                "caSecret": {"name": "store-ca", "key": "ca.pem"},
                "credentials": {"secretName": "az", "key": "sas-token", "keyType": "sas"}}}
        ]}));
        let s = settings(&m).unwrap();
        assert_eq!(s.repositories.len(), 2);
        assert_eq!(s.repositories[1].path, "/capstan/ns/db");
        assert_eq!(
            s.repositories[1].storage,
            Storage::Azure(Azure {
                account: "devstoreaccount1".into(),
                container: "pg".into(),
                endpoint: Some("azurite.store".into()),
                port: Some(10000),
                uri_style: UriStyle::Path,
                tls: Tls {
                    verify: true,
                    ca_file: Some("/etc/capstan/backup/repo2/ca.crt".into()),
                },
                credentials: AzureCredentials::Sas("/etc/capstan/backup/repo2/azure-key".into()),
            })
        );
        let v = volumes(&m);
        let names: Vec<&str> = v.iter().map(|(v, _)| v.name.as_str()).collect();
        assert_eq!(names, ["backup-repo1", "backup-repo2", "backup-repo2-ca"]);
        let secret = v[1].0.secret.as_ref().unwrap();
        assert_eq!(secret.secret_name.as_deref(), Some("az"));
        assert_eq!(
            secret.optional,
            Some(true),
            "a missing Secret is reported, not a stuck pod"
        );
        let items: Vec<(&str, &str)> = secret
            .items
            .iter()
            .flatten()
            .map(|i| (i.key.as_str(), i.path.as_str()))
            .collect();
        assert_eq!(items, [("sas-token", "azure-key")]);
        assert_eq!(v[1].1.mount_path, "/etc/capstan/backup/repo2");
        assert_eq!(v[2].1.mount_path, "/etc/capstan/backup/repo2/ca.crt");
        // Azure itself: the default endpoint, a shared key.
        let m = with_backup(serde_json::json!({"repositories": [
            {"name": "repo1", "azure": {"account": "acct", "container": "pg", "path": "/x",
                "credentials": {"secretName": "az", "key": "AZURE_STORAGE_KEY"}}}]}));
        let repo = &settings(&m).unwrap().repositories[0];
        assert_eq!(repo.path, "/x");
        let Storage::Azure(a) = &repo.storage else {
            panic!("{repo:?}")
        };
        assert_eq!(
            (a.endpoint.as_deref(), a.port, a.uri_style),
            (None, None, UriStyle::Host)
        );
        assert_eq!(
            a.credentials,
            AzureCredentials::SharedKey("/etc/capstan/backup/repo1/azure-key".into())
        );
    }

    #[test]
    fn a_gcs_repository_mounts_its_key_file_where_pgbackrest_reads_it() {
        let gcs = |key_type: &str, endpoint: Option<&str>| {
            with_backup(serde_json::json!({"repositories": [
                {"name": "repo1", "gcs": {"bucket": "pg-backups", "endpoint": endpoint,
                    "verifyTls": false,
                    "credentials": {"secretName": "gcs", "key": "key.json", "keyType": key_type}}}]}))
        };
        let m = gcs("service", None);
        let Storage::Gcs(g) = &settings(&m).unwrap().repositories[0].storage else {
            panic!()
        };
        assert_eq!(g.bucket, "pg-backups");
        assert_eq!(g.endpoint, None);
        assert!(!g.tls.verify && g.tls.ca_file.is_none());
        assert_eq!(
            g.credentials,
            GcsCredentials::ServiceKeyFile("/etc/capstan/backup/repo1/gcs-key".into())
        );
        let v = volumes(&m);
        assert_eq!(v.len(), 1);
        let items: Vec<(&str, &str)> = v[0]
            .0
            .secret
            .as_ref()
            .unwrap()
            .items
            .iter()
            .flatten()
            .map(|i| (i.key.as_str(), i.path.as_str()))
            .collect();
        assert_eq!(items, [("key.json", "gcs-key")]);
        // pgBackRest takes the port in a GCS endpoint.
        let m = gcs("token", Some("gcs.store:4443"));
        let Storage::Gcs(g) = &settings(&m).unwrap().repositories[0].storage else {
            panic!()
        };
        assert_eq!(g.endpoint.as_deref(), Some("gcs.store:4443"));
        assert_eq!(
            g.credentials,
            GcsCredentials::TokenFile("/etc/capstan/backup/repo1/gcs-key".into())
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

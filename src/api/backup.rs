//! `spec.backup` and `spec.bootstrap.restore`: where pgBackRest keeps a
//! cluster's backups and WAL, when it takes them, and how a new cluster is
//! restored from them.
//!
//! Only the API lives here; the operator fills in the rest (see
//! `operator::cluster::validate`).

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::defaults;
use super::limits;
use super::rules;

/// Backups and WAL archiving with pgBackRest.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = rules::schedule_repository_exists())]
#[x_kube(validation = rules::standby_backups_need_object_stores())]
pub struct BackupSpec {
    /// Where backups and archived WAL go: one to four repositories named
    /// `repo1` to `repo4` (pgBackRest's own numbering). WAL is archived to
    /// every repository.
    #[schemars(length(min = 1, max = 4))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub repositories: Vec<BackupRepository>,

    /// When backups are taken. Each run creates a `PostgresBackup` object
    /// (`<cluster>-<schedule>-<yyyymmddhhmm>`, UTC), taken one at a time
    /// with the others; a run waits while the schedule's previous backup is
    /// unfinished, and runs missed while the operator was down become one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = limits::BACKUP_SCHEDULES_MAX))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub schedules: Vec<BackupSchedule>,

    /// Continuous WAL archiving.
    #[serde(default = "defaults::archive")]
    pub archive: ArchiveSpec,

    /// Which instance backups are read from. `primary` (default): the
    /// primary. `preferReplica`: a streaming replica (an asynchronous one
    /// first, then the least behind) reads and uploads the data files, so
    /// the primary's disks, CPU and network serve clients; pgBackRest
    /// still starts and stops the backup on the primary, through its TLS
    /// server (port 8432, reached by `<cluster>-rw`, a certificate from
    /// the cluster CA). With no streaming replica the primary takes it.
    #[serde(default = "defaults::backup_target")]
    pub target: BackupTarget,

    /// Verification of backups by restoring them.
    #[serde(default = "defaults::verify")]
    pub verify: VerifySpec,
}

/// One pgBackRest repository: exactly one of `s3`, `azure`, `gcs` or
/// `volume`, and how many backups it keeps.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = rules::exactly_one_repository_kind("spec.backup.repositories", true))]
pub struct BackupRepository {
    /// `repo1` to `repo4`: the pgBackRest repository this configures.
    #[schemars(length(min = 5, max = 5))]
    #[x_kube(validation = rules::repository_name("spec.backup.repositories[].name"))]
    pub name: String,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Repository>,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub azure: Option<AzureRepository>,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gcs: Option<GcsRepository>,

    /// A volume the operator creates (PVC `<cluster>-<name>`, ReadWriteOnce)
    /// and mounts into the cluster's repository host, a pod
    /// (`<cluster>-repo-host`) running pgBackRest's TLS server in the
    /// cluster's image; the instances archive, back up and restore through
    /// it (port 8432, a certificate from the cluster CA), so the volume
    /// follows no instance and survives failovers. Not with `target:
    /// preferReplica`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<VolumeRepository>,

    /// How many backups the repository keeps; older ones (and the WAL
    /// only they need) are expired.
    #[serde(default = "defaults::retention")]
    pub retention: RetentionSpec,
}

/// An S3-compatible object store.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct S3Repository {
    /// `host` or `host:port`, without a scheme (pgBackRest always uses
    /// HTTPS), e.g. `s3.eu-west-1.amazonaws.com` or `minio.store:9000`.
    #[schemars(length(min = 1, max = limits::HOST_MAX))]
    #[x_kube(validation = rules::endpoint("spec.backup.repositories[].s3.endpoint"))]
    pub endpoint: String,

    /// Region, e.g. `eu-west-1` (any value for stores without regions).
    #[schemars(length(min = 1, max = limits::REGION_MAX))]
    pub region: String,

    /// Bucket name.
    #[schemars(length(min = 3, max = 63), pattern(limits::BUCKET_PATTERN))]
    pub bucket: String,

    /// Path of the repository in the bucket; default
    /// `/capstan/<namespace>/<cluster>`, so clusters can share a bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = limits::REPOSITORY_PATH_MAX))]
    #[x_kube(validation = rules::repository_path())]
    pub path: Option<String>,

    /// `host` (default): `bucket.endpoint` (virtual-hosted). `path`:
    /// `endpoint/bucket`, for stores without per-bucket DNS names.
    #[serde(default)]
    pub uri_style: UriStyle,

    /// Verify the endpoint's TLS certificate (default true). Turn it off
    /// only for tests; prefer `caSecret` for a private CA.
    #[serde(default = "defaults::verify_tls")]
    pub verify_tls: bool,

    /// A private CA the endpoint's certificate is signed by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret: Option<SecretKeyRef>,

    /// The Secret holding the access key pair.
    pub credentials: S3Credentials,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum UriStyle {
    #[default]
    Host,
    Path,
}

/// S3 credentials: a Secret in the cluster's namespace. The keys are read
/// by the instance manager and handed to pgBackRest through its
/// environment, never on a command line.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct S3Credentials {
    #[schemars(length(min = 1, max = limits::OBJECT_NAME_MAX), pattern(limits::DNS_SUBDOMAIN_PATTERN))]
    pub secret_name: String,
    #[serde(default = "defaults::access_key_id_key")]
    #[schemars(length(min = 1, max = limits::SECRET_KEY_MAX), pattern(limits::SECRET_KEY_PATTERN))]
    pub access_key_id_key: String,
    #[serde(default = "defaults::secret_access_key_key")]
    #[schemars(length(min = 1, max = limits::SECRET_KEY_MAX), pattern(limits::SECRET_KEY_PATTERN))]
    pub secret_access_key_key: String,
}

/// One key of a Secret in the cluster's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    #[schemars(length(min = 1, max = limits::OBJECT_NAME_MAX), pattern(limits::DNS_SUBDOMAIN_PATTERN))]
    pub name: String,
    #[schemars(length(min = 1, max = limits::SECRET_KEY_MAX), pattern(limits::SECRET_KEY_PATTERN))]
    pub key: String,
}

/// Azure Blob Storage.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = rules::azure_path_style_needs_endpoint())]
pub struct AzureRepository {
    /// Storage account name (`devstoreaccount1` for Azurite).
    #[schemars(length(min = 3, max = 24), pattern(limits::AZURE_ACCOUNT_PATTERN))]
    pub account: String,

    /// Blob container name. The container must exist.
    #[schemars(length(min = 3, max = 63), pattern(limits::AZURE_CONTAINER_PATTERN))]
    pub container: String,

    /// The blob service endpoint, `host` or `host:port` without a scheme
    /// (pgBackRest always uses HTTPS); default `blob.core.windows.net`.
    /// With `uriStyle: host` pgBackRest connects to `<account>.<endpoint>`;
    /// with `path` to the endpoint itself, e.g. `azurite.storage.svc:10000`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = limits::HOST_MAX))]
    #[x_kube(validation = rules::endpoint("spec.backup.repositories[].azure.endpoint"))]
    pub endpoint: Option<String>,

    /// `host` (default): the account is part of the host name (Azure).
    /// `path`: the account is the first path segment, for emulators such
    /// as Azurite; needs `endpoint`.
    #[serde(default)]
    pub uri_style: UriStyle,

    /// Path of the repository in the container; default
    /// `/capstan/<namespace>/<cluster>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = limits::REPOSITORY_PATH_MAX))]
    #[x_kube(validation = rules::repository_path())]
    pub path: Option<String>,

    /// Verify the endpoint's TLS certificate (default true). Turn it off
    /// only for tests; prefer `caSecret` for a private CA.
    #[serde(default = "defaults::verify_tls")]
    pub verify_tls: bool,

    /// A private CA the endpoint's certificate is signed by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret: Option<SecretKeyRef>,

    /// The Secret key holding the shared key or the shared access
    /// signature.
    pub credentials: AzureCredentials,
}

/// Azure credentials: one key of a Secret in the cluster's namespace,
/// read by the instance manager into pgBackRest's 0600 configuration file,
/// never put on a command line.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AzureCredentials {
    #[schemars(length(min = 1, max = limits::OBJECT_NAME_MAX), pattern(limits::DNS_SUBDOMAIN_PATTERN))]
    pub secret_name: String,
    #[schemars(length(min = 1, max = limits::SECRET_KEY_MAX), pattern(limits::SECRET_KEY_PATTERN))]
    pub key: String,
    /// `shared` (default): the storage account's access key. `sas`: a
    /// shared access signature (`sv=...&sig=...`, with or without the
    /// leading `?`) allowing read, write, delete and list on the container.
    #[serde(default)]
    pub key_type: AzureKeyType,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AzureKeyType {
    #[default]
    Shared,
    Sas,
}

/// Google Cloud Storage.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GcsRepository {
    /// Bucket name. The bucket must exist.
    #[schemars(length(min = 3, max = 63), pattern(limits::BUCKET_PATTERN))]
    pub bucket: String,

    /// `host` or `host:port` without a scheme (pgBackRest always uses
    /// HTTPS); default `storage.googleapis.com`. Set it for a private
    /// endpoint or an emulator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = limits::HOST_MAX))]
    #[x_kube(validation = rules::endpoint("spec.backup.repositories[].gcs.endpoint"))]
    pub endpoint: Option<String>,

    /// Path of the repository in the bucket; default
    /// `/capstan/<namespace>/<cluster>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = limits::REPOSITORY_PATH_MAX))]
    #[x_kube(validation = rules::repository_path())]
    pub path: Option<String>,

    /// Verify the endpoint's (and the token server's) TLS certificate
    /// (default true). Turn it off only for tests; prefer `caSecret`.
    #[serde(default = "defaults::verify_tls")]
    pub verify_tls: bool,

    /// A private CA the endpoint's certificate is signed by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret: Option<SecretKeyRef>,

    /// The Secret key holding a service account key (JSON) or a token.
    pub credentials: GcsCredentials,
}

/// GCS credentials: one key of a Secret in the cluster's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GcsCredentials {
    #[schemars(length(min = 1, max = limits::OBJECT_NAME_MAX), pattern(limits::DNS_SUBDOMAIN_PATTERN))]
    pub secret_name: String,
    #[schemars(length(min = 1, max = limits::SECRET_KEY_MAX), pattern(limits::SECRET_KEY_PATTERN))]
    pub key: String,
    /// `service` (default): the JSON key file of a service account with
    /// read and write access to the bucket; pgBackRest exchanges it for
    /// access tokens at its `token_uri`. `token`: an OAuth access token,
    /// used as it is (it expires: for tests and emulators).
    #[serde(default)]
    pub key_type: GcsKeyType,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum GcsKeyType {
    #[default]
    Service,
    Token,
}

/// A PersistentVolumeClaim the operator creates for the repository.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = rules::storage_size_valid())]
#[x_kube(validation = rules::storage_size_not_shrunk())]
#[x_kube(validation = rules::storage_class_immutable())]
pub struct VolumeRepository {
    /// Volume size, e.g. `100Gi`. May grow, never shrink.
    #[schemars(schema_with = "super::schema::quantity")]
    pub size: Quantity,

    /// StorageClass of the volume; the cluster default when empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = limits::OBJECT_NAME_MAX), pattern(limits::DNS_SUBDOMAIN_PATTERN))]
    pub storage_class_name: Option<String>,
}

/// pgBackRest's `repo-retention-full` / `repo-retention-diff` (counts).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RetentionSpec {
    /// Full backups kept (at least 1; default 2). Expiring a full backup
    /// expires the differential and incremental ones based on it.
    #[serde(default = "defaults::retention_full")]
    #[x_kube(validation = rules::retention("full"))]
    pub full: i32,

    /// Differential backups kept; unset: kept as long as their full backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = rules::retention("differential"))]
    pub differential: Option<i32>,
}

/// A recurring backup.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BackupSchedule {
    /// Names the schedule, and prefixes the `PostgresBackup` objects it
    /// creates.
    #[schemars(length(min = 1, max = limits::SCHEDULE_NAME_MAX))]
    #[x_kube(validation = rules::schedule_name())]
    pub name: String,

    /// `full`, `differential` or `incremental`.
    #[serde(rename = "type")]
    pub type_: BackupType,

    /// Cron expression, five fields in UTC: minute hour day-of-month
    /// month day-of-week, e.g. `0 1 * * 0` (Sundays at 01:00).
    #[schemars(length(min = 9, max = limits::CRON_MAX))]
    #[x_kube(validation = rules::cron())]
    pub schedule: String,

    /// Repository to back up to; default the first one listed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 5, max = 5))]
    #[x_kube(validation = rules::repository_name("spec.backup.schedules[].repository"))]
    pub repository: Option<String>,
}

/// pgBackRest backup types.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum BackupType {
    /// Every file.
    #[default]
    Full,
    /// Files changed since the last full backup.
    Differential,
    /// Files changed since the last backup of any type.
    Incremental,
}

impl BackupType {
    /// pgBackRest's `--type` value.
    pub fn pgbackrest(self) -> &'static str {
        match self {
            BackupType::Full => "full",
            BackupType::Differential => "diff",
            BackupType::Incremental => "incr",
        }
    }
}

/// WAL archiving (`archive_mode = on`, `pgbackrest archive-push`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ArchiveSpec {
    /// PostgreSQL's `archive_timeout`: a WAL segment is archived at least
    /// this often when anything was written, which bounds the data a lost
    /// cluster can lose (the RPO). `10s`, `5m`, `1h` (1s to 1h; default 60s).
    #[serde(default = "defaults::archive_timeout")]
    #[schemars(length(min = 2, max = 16))]
    #[x_kube(validation = rules::archive_timeout())]
    pub timeout: String,

    /// Asynchronous `archive-push` (default true): segments are pushed in
    /// parallel in the background, so a slow store does not hold up
    /// PostgreSQL's archiver one segment at a time.
    #[serde(default = "defaults::archive_async")]
    #[serde(rename = "async")]
    pub async_: bool,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum BackupTarget {
    #[default]
    Primary,
    PreferReplica,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VerifySpec {
    /// Restore every full backup into a throwaway pod and check it
    /// (default true); the result is on its `PostgresBackup` object.
    #[serde(default = "defaults::verify_enabled")]
    pub enabled: bool,
}

/// A new cluster from a pgBackRest repository: its own (re-created after a
/// loss) or another cluster's (a clone). Recovery runs to `target`, then
/// the cluster promotes on a new timeline and archives to its own
/// `spec.backup` repositories, never into the source's.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RestoreSpec {
    /// The repository and cluster to restore from.
    pub source: RestoreSource,

    /// Where recovery stops; absent: the end of the archived WAL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<RestoreTarget>,

    /// The application database in the restored data, which the
    /// `<name>-app` Secret names (default `app`); created empty if the
    /// backup has none. Set it to the source's `initdb.database`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = limits::SQL_IDENTIFIER_MAX))]
    #[x_kube(validation = rules::sql_identifier("spec.bootstrap.restore.database"))]
    pub database: Option<String>,

    /// Its owner (default `app`): gets a new password, in the
    /// `<name>-app` Secret; created if the backup has no such role. Set it
    /// to the source's `initdb.owner`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = limits::SQL_IDENTIFIER_MAX))]
    #[x_kube(validation = rules::sql_identifier("spec.bootstrap.restore.owner"))]
    pub owner: Option<String>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RestoreSource {
    /// The repository holding the source's backups and WAL.
    pub repository: RestoreRepository,

    /// The cluster that wrote the backups: its name is the pgBackRest
    /// stanza and, when the repository sets no `path`, part of the default
    /// path `/capstan/<namespace>/<cluster>`. Default: this cluster's own
    /// name (re-creating a lost cluster). A source in another namespace
    /// needs an explicit `path`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = limits::CLUSTER_NAME_MAX))]
    #[x_kube(validation = rules::cluster_reference("spec.bootstrap.restore.source.cluster"))]
    pub cluster: Option<String>,
}

/// Exactly one of `s3`, `azure`, `gcs` or `volume`: the same settings as a
/// repository of `spec.backup` (credentials from this namespace).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = rules::exactly_one_repository_kind("spec.bootstrap.restore.source.repository", false))]
pub struct RestoreRepository {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Repository>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub azure: Option<AzureRepository>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gcs: Option<GcsRepository>,
    /// An existing claim holding a volume repository, e.g. `db-repo1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<VolumeSource>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSource {
    /// PersistentVolumeClaim in this namespace.
    #[schemars(length(min = 1, max = limits::OBJECT_NAME_MAX), pattern(limits::DNS_SUBDOMAIN_PATTERN))]
    pub claim_name: String,
}

/// Point-in-time recovery: exactly one of these.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = rules::exactly_one_restore_target())]
pub struct RestoreTarget {
    /// Recover up to this time: RFC 3339 with a zone offset, e.g.
    /// `2025-06-01T12:00:00Z`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 20, max = 40))]
    #[x_kube(validation = rules::target_time())]
    pub time: Option<String>,

    /// Recover up to this WAL position, e.g. `0/3000060`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 3, max = 17))]
    #[x_kube(validation = rules::target_lsn())]
    pub lsn: Option<String>,

    /// Recover up to a restore point made with
    /// `pg_create_restore_point('<name>')`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = limits::RESTORE_POINT_MAX))]
    #[x_kube(validation = rules::target_name())]
    pub name: Option<String>,

    /// Restore this backup (its pgBackRest label, as on a
    /// `PostgresBackup`'s `status.label`) and stop where it ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 16, max = limits::BACKUP_LABEL_MAX))]
    #[x_kube(validation = rules::target_backup())]
    pub backup: Option<String>,
}

/// Default repository path of `cluster` in `namespace`:
/// `/capstan/<namespace>/<cluster>`. Namespaced, so two clusters with the
/// same name never share an archive.
pub fn default_repository_path(namespace: &str, cluster: &str) -> String {
    format!("/capstan/{namespace}/{cluster}")
}

/// Name of the PersistentVolumeClaim of a volume repository.
pub fn volume_repository_claim(cluster: &str, repository: &str) -> String {
    format!("{cluster}-{repository}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_names_are_namespaced_and_fit() {
        assert_eq!(default_repository_path("ns", "db"), "/capstan/ns/db");
        assert_ne!(
            default_repository_path("a", "db"),
            default_repository_path("b", "db")
        );
        let claim = volume_repository_claim(&"a".repeat(limits::CLUSTER_NAME_MAX), "repo4");
        assert!(claim.len() <= 63, "{claim}");
        assert!(regex_lite_path(&default_repository_path("ns", "db")));
    }

    /// The derived path passes the rule a user-given one must pass.
    fn regex_lite_path(path: &str) -> bool {
        path.split('/').skip(1).all(|s| {
            !s.is_empty()
                && s != "."
                && s != ".."
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
        })
    }

    #[test]
    fn backup_types_map_to_pgbackrest() {
        assert_eq!(BackupType::Full.pgbackrest(), "full");
        assert_eq!(BackupType::Differential.pgbackrest(), "diff");
        assert_eq!(BackupType::Incremental.pgbackrest(), "incr");
    }
}

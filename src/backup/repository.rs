//! Where backups go: Capstan's own model of a pgBackRest repository, kept
//! apart from the API types so the CRD can change without touching the
//! code that renders `pgbackrest.conf`. Credentials are references (files
//! mounted from a Secret, or the environment), never values, so a model can
//! be logged and compared freely.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// One repository (`repoN-*` in `pgbackrest.conf`; N is its position + 1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Repository {
    pub storage: Storage,
    /// The path inside the storage (`repoN-path`), e.g. `/db/main`. Each
    /// cluster needs its own, so a clone never writes into its source's.
    pub path: String,
    pub retention: Retention,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Storage {
    /// A mounted volume (`repoN-type=posix`).
    Posix,
    /// A volume of the cluster's repository host, reached through its
    /// pgBackRest TLS server (`repoN-host-type=tls`); the path is on the
    /// host's volume.
    Host(RepoHost),
    S3(S3),
    Azure(Azure),
    Gcs(Gcs),
}

impl Storage {
    /// The kind as the API spells it (`spec.backup.repositories[].<kind>`).
    pub fn kind(&self) -> &'static str {
        match self {
            Storage::Posix | Storage::Host(_) => "volume",
            Storage::S3(_) => "s3",
            Storage::Azure(_) => "azure",
            Storage::Gcs(_) => "gcs",
        }
    }
}

/// Where the repository host's `pgbackrest server` listens. The client
/// certificate is the instance's own ([`super::config::ClientTls`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RepoHost {
    /// A name its certificate covers: the repository host's Service.
    pub host: String,
    pub port: u16,
}

/// An S3-compatible object store. pgBackRest speaks HTTPS only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct S3 {
    /// Host name, without scheme (`s3.eu-west-1.amazonaws.com`, `minio.backup`).
    pub endpoint: String,
    /// Set when the endpoint does not listen on 443.
    pub port: Option<u16>,
    pub region: String,
    pub bucket: String,
    pub uri_style: UriStyle,
    pub tls: Tls,
    pub credentials: S3Credentials,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum UriStyle {
    /// `bucket.endpoint` (AWS).
    Host,
    /// `endpoint/bucket` (most self-hosted stores).
    Path,
}

/// How the repository's TLS certificate is checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Tls {
    pub verify: bool,
    /// A CA bundle for a private CA; the system store otherwise.
    pub ca_file: Option<PathBuf>,
}

impl Default for Tls {
    fn default() -> Self {
        Self {
            verify: true,
            ca_file: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum S3Credentials {
    /// Files holding the access key id and secret key (a mounted Secret);
    /// their contents go into the 0600 configuration file.
    Files {
        access_key_id: PathBuf,
        secret_access_key: PathBuf,
    },
    /// pgBackRest reads `PGBACKREST_REPO<N>_S3_KEY` and
    /// `PGBACKREST_REPO<N>_S3_KEY_SECRET` from its environment (set on the
    /// container from a Secret).
    Environment,
    /// The instance's cloud identity (`repoN-s3-key-type=auto`).
    InstanceRole,
}

/// Azure Blob Storage (`repoN-type=azure`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Azure {
    /// Storage account name (`repoN-azure-account`); not a secret.
    pub account: String,
    pub container: String,
    /// The blob service endpoint when not `blob.core.windows.net` (Azure
    /// Government, or an emulator such as Azurite), host only.
    pub endpoint: Option<String>,
    /// Set when the endpoint does not listen on 443.
    pub port: Option<u16>,
    /// `Host`: `<account>.<endpoint>` (Azure). `Path`: `<endpoint>/<account>`
    /// (Azurite and other emulators).
    pub uri_style: UriStyle,
    pub tls: Tls,
    pub credentials: AzureCredentials,
}

/// The file (a mounted Secret key) holding the repository's key; its
/// content goes into the 0600 configuration file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum AzureCredentials {
    /// The storage account's shared key (`repoN-azure-key-type=shared`).
    SharedKey(PathBuf),
    /// A shared access signature (`repoN-azure-key-type=sas`).
    Sas(PathBuf),
}

/// Google Cloud Storage (`repoN-type=gcs`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Gcs {
    pub bucket: String,
    /// `host` or `host:port` when not `storage.googleapis.com` (pgBackRest
    /// takes the port in the endpoint for GCS, not `repoN-storage-port`).
    pub endpoint: Option<String>,
    pub tls: Tls,
    pub credentials: GcsCredentials,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum GcsCredentials {
    /// A service account key file (JSON); pgBackRest reads it itself, so
    /// only the path is in the configuration.
    ServiceKeyFile(PathBuf),
    /// A file holding an OAuth access token (`repoN-gcs-key-type=token`);
    /// its content goes into the 0600 configuration file.
    TokenFile(PathBuf),
    /// The instance's cloud identity (`repoN-gcs-key-type=auto`).
    InstanceRole,
}

/// How long backups and WAL are kept (`repoN-retention-*`); `None` leaves
/// pgBackRest's default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Retention {
    pub full: Option<u32>,
    pub full_type: RetentionType,
    pub diff: Option<u32>,
    /// How many backups' worth of WAL to keep, and which kind counts.
    pub archive: Option<u32>,
    pub archive_type: Option<super::command::BackupType>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RetentionType {
    /// Keep this many full backups.
    #[default]
    Count,
    /// Keep full backups this many days.
    Time,
}

impl RetentionType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Count => "count",
            Self::Time => "time",
        }
    }
}

impl Repository {
    /// Whether any of `repositories` is reached through a repository host
    /// (and so needs [`super::config::ClientTls`]).
    pub fn any_on_host(repositories: &[Repository]) -> bool {
        repositories
            .iter()
            .any(|r| matches!(r.storage, Storage::Host(_)))
    }

    pub fn posix(path: impl Into<String>) -> Self {
        Self {
            storage: Storage::Posix,
            path: path.into(),
            retention: Retention::default(),
        }
    }

    /// The files whose contents go into the configuration, in the order
    /// [`super::config::Secrets`] holds them.
    pub fn secret_files(&self) -> Vec<&Path> {
        match &self.storage {
            Storage::S3(S3 {
                credentials:
                    S3Credentials::Files {
                        access_key_id,
                        secret_access_key,
                    },
                ..
            }) => vec![access_key_id, secret_access_key],
            Storage::Azure(Azure {
                credentials: AzureCredentials::SharedKey(key) | AzureCredentials::Sas(key),
                ..
            }) => vec![key],
            Storage::Gcs(Gcs {
                credentials: GcsCredentials::TokenFile(token),
                ..
            }) => vec![token],
            _ => vec![],
        }
    }

    /// The GCS service account key file pgBackRest reads itself, if any.
    pub fn service_key_file(&self) -> Option<&Path> {
        match &self.storage {
            Storage::Gcs(Gcs {
                credentials: GcsCredentials::ServiceKeyFile(path),
                ..
            }) => Some(path),
            _ => None,
        }
    }
}

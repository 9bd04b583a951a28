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
    S3(S3),
    Azure(Azure),
    Gcs(Gcs),
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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Azure {
    pub container: String,
    /// Host name when not `blob.core.windows.net` (e.g. Azurite).
    pub endpoint: Option<String>,
    pub port: Option<u16>,
    /// `Path` for Azurite and other emulators.
    pub uri_style: UriStyle,
    pub tls: Tls,
    pub credentials: AzureCredentials,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum AzureCredentials {
    /// Files holding the storage account name and its shared key.
    Files { account: PathBuf, key: PathBuf },
    /// `PGBACKREST_REPO<N>_AZURE_ACCOUNT` / `_AZURE_KEY` in the environment.
    Environment,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Gcs {
    pub bucket: String,
    pub endpoint: Option<String>,
    pub tls: Tls,
    pub credentials: GcsCredentials,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum GcsCredentials {
    /// A service account key file; pgBackRest reads it itself, so only the
    /// path is in the configuration.
    ServiceKeyFile(PathBuf),
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
    pub fn posix(path: impl Into<String>) -> Self {
        Self {
            storage: Storage::Posix,
            path: path.into(),
            retention: Retention::default(),
        }
    }

    /// The files this repository's credentials are read from.
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
                credentials: AzureCredentials::Files { account, key },
                ..
            }) => vec![account, key],
            _ => vec![],
        }
    }
}

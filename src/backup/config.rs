//! `pgbackrest.conf` and the PostgreSQL settings that hand WAL to
//! pgBackRest. Rendering is pure: secrets are read from their files first
//! ([`Secrets::load`]) and only ever land in the 0600 configuration file,
//! never on a command line or in a log line.

use std::fmt::Write as _;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::repository::{
    Azure, AzureCredentials, Gcs, GcsCredentials, Repository, S3, S3Credentials, Storage, Tls,
    UriStyle,
};

/// pgBackRest numbers repositories 1..=256.
pub const MAX_REPOSITORIES: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("no backup repository is configured; add at least one")]
    NoRepository,
    #[error("{count} repositories are configured; pgBackRest supports at most {MAX_REPOSITORIES}")]
    TooManyRepositories { count: usize },
    #[error(
        "invalid stanza name {0:?}: use letters, digits, '-' and '_' (pgBackRest keys the repository by it)"
    )]
    InvalidStanza(String),
    #[error(
        "the value of {option} contains a line break or NUL, which pgbackrest.conf cannot hold"
    )]
    InvalidValue { option: String },
    #[error("repository {repo}: {problem}")]
    InvalidRepository { repo: usize, problem: String },
    #[error("cannot read the credential file {path}: {source}")]
    ReadSecret {
        path: String,
        source: std::io::Error,
    },
    #[error("the credential file {path} is empty")]
    EmptySecret { path: String },
    #[error(
        "the GCS service account key {path} {problem}; put the JSON key file Google issued for the service account (with client_email, private_key and token_uri) in the Secret"
    )]
    InvalidServiceKey { path: String, problem: String },
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

/// A credential value. Its `Debug` never shows the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Credential values read from their files, by repository index (0-based).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Secrets(Vec<Vec<Secret>>);

impl Secrets {
    /// Reads every credential file the repositories name; surrounding
    /// whitespace (a trailing newline from `echo`) is dropped.
    pub fn load(repositories: &[Repository]) -> Result<Self, ConfigError> {
        let mut all = Vec::with_capacity(repositories.len());
        for repo in repositories {
            let mut values = vec![];
            for path in repo.secret_files() {
                let text =
                    std::fs::read_to_string(path).map_err(|source| ConfigError::ReadSecret {
                        path: path.display().to_string(),
                        source,
                    })?;
                let value = text.trim();
                if value.is_empty() {
                    return Err(ConfigError::EmptySecret {
                        path: path.display().to_string(),
                    });
                }
                values.push(Secret::new(value));
            }
            if let Some(path) = repo.service_key_file() {
                check_service_key(path)?;
            }
            all.push(values);
        }
        Ok(Self(all))
    }

    /// Values given directly, in [`Repository::secret_files`] order (tests).
    pub fn from_values(values: Vec<Vec<Secret>>) -> Self {
        Self(values)
    }

    fn get(&self, repo: usize, index: usize) -> Option<&Secret> {
        self.0.get(repo)?.get(index)
    }
}

/// pgBackRest reads a GCS service key itself and fails on a bad one with
/// an internal assertion; checked here first to say what is wrong (never
/// showing the key).
fn check_service_key(path: &Path) -> Result<(), ConfigError> {
    let invalid = |problem: String| ConfigError::InvalidServiceKey {
        path: path.display().to_string(),
        problem,
    };
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadSecret {
        path: path.display().to_string(),
        source,
    })?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|_| invalid("is not JSON".to_string()))?;
    let missing: Vec<&str> = ["client_email", "private_key", "token_uri"]
        .into_iter()
        .filter(|field| !json.get(field).is_some_and(serde_json::Value::is_string))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(invalid(format!("has no {}", missing.join(", "))))
    }
}

/// The PostgreSQL side of the stanza (`pg1-*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stanza {
    pub name: String,
    pub pg_path: PathBuf,
    pub pg_port: u16,
    /// The Unix socket directory: pgBackRest connects locally.
    pub pg_socket_path: PathBuf,
    pub pg_user: String,
}

/// Everything `pgbackrest.conf` holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackrestConfig {
    pub stanza: Stanza,
    pub repositories: Vec<Repository>,
    pub log_path: PathBuf,
    pub lock_path: PathBuf,
    /// Where asynchronous archive-push/get queue WAL and status files.
    pub spool_path: PathBuf,
    pub process_max: u32,
    /// How long backup and check wait for a WAL segment to reach the
    /// repository (`archive-timeout`), not PostgreSQL's `archive_timeout`.
    pub archive_timeout: Duration,
    /// A cap on the WAL queued for archiving (`archive-push-queue-max`):
    /// past it pgBackRest drops WAL to keep the disk from filling, which
    /// breaks the PITR chain. `None` keeps every segment until archived.
    pub archive_push_queue_max: Option<String>,
    /// pgBackRest's TLS server (`pgbackrest server`), for a standby that
    /// takes a backup and needs the primary's part of it.
    pub server: Option<TlsServer>,
    /// The certificate presented to a repository host
    /// ([`Storage::Host`]); required when one is configured.
    pub client_tls: Option<ClientTls>,
}

/// `repoN-host-{cert,key,ca}-file`: this side's certificate and the CA the
/// repository host's certificate must chain to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub ca_file: PathBuf,
}

impl ClientTls {
    /// The certificate in `dir` (a mounted `kubernetes.io/tls` Secret), when
    /// a repository needs one.
    pub fn when_needed(repositories: &[Repository], dir: &Path) -> Option<Self> {
        Repository::any_on_host(repositories).then(|| Self {
            cert_file: dir.join(crate::contract::layout::files::TLS_CRT),
            key_file: dir.join(crate::contract::layout::files::TLS_KEY),
            ca_file: dir.join(crate::contract::layout::files::CA_CRT),
        })
    }
}

/// `tls-server-*`: where `pgbackrest server` listens, its certificate, the
/// CA its clients' certificates must chain to, and the one client
/// common name it serves this stanza to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsServer {
    pub address: String,
    pub port: u16,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub ca_file: PathBuf,
    pub client_name: String,
}

impl BackrestConfig {
    /// The same configuration for a clone: its own stanza, repository paths
    /// and data directory, so it never writes into its source's archive.
    pub fn for_clone(&self, stanza: &str, pg_path: &Path, repo_path: &str) -> Self {
        let mut clone = self.clone();
        clone.stanza.name = stanza.to_string();
        clone.stanza.pg_path = pg_path.to_path_buf();
        for repo in &mut clone.repositories {
            repo.path = repo_path.to_string();
        }
        clone
    }
}

fn bool_option(value: bool) -> &'static str {
    if value { "y" } else { "n" }
}

/// Stanza names become repository directory names.
pub fn validate_stanza(name: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(ConfigError::InvalidStanza(name.to_string()))
    }
}

struct Section(String);

impl Section {
    fn new(name: &str) -> Self {
        Self(format!("[{name}]\n"))
    }

    fn set(&mut self, option: &str, value: &str) -> Result<(), ConfigError> {
        if value.contains(['\n', '\r', '\0']) {
            return Err(ConfigError::InvalidValue {
                option: option.to_string(),
            });
        }
        let _ = writeln!(self.0, "{option}={value}");
        Ok(())
    }

    fn path(&mut self, option: &str, value: &Path) -> Result<(), ConfigError> {
        self.set(option, &value.display().to_string())
    }
}

fn tls(s: &mut Section, n: usize, tls: &Tls) -> Result<(), ConfigError> {
    s.set(
        &format!("repo{n}-storage-verify-tls"),
        bool_option(tls.verify),
    )?;
    if let Some(ca) = &tls.ca_file {
        s.path(&format!("repo{n}-storage-ca-file"), ca)?;
    }
    Ok(())
}

fn uri_style(style: UriStyle) -> &'static str {
    match style {
        UriStyle::Host => "host",
        UriStyle::Path => "path",
    }
}

fn secret<'a>(
    secrets: &'a Secrets,
    repo: usize,
    index: usize,
    what: &str,
) -> Result<&'a str, ConfigError> {
    secrets
        .get(repo, index)
        .map(Secret::expose)
        .ok_or_else(|| ConfigError::InvalidRepository {
            repo: repo + 1,
            problem: format!("the {what} was not loaded (Secrets::load first)"),
        })
}

fn repository(
    s: &mut Section,
    index: usize,
    repo: &Repository,
    secrets: &Secrets,
    client_tls: Option<&ClientTls>,
) -> Result<(), ConfigError> {
    let n = index + 1;
    let invalid = |problem: &str| ConfigError::InvalidRepository {
        repo: n,
        problem: problem.to_string(),
    };
    if !repo.path.starts_with('/') {
        return Err(invalid(
            "the repository path must be absolute (start with '/')",
        ));
    }
    match &repo.storage {
        Storage::Posix => s.set(&format!("repo{n}-type"), "posix")?,
        Storage::Host(host) => {
            let Some(tls) = client_tls else {
                return Err(invalid(
                    "it is on a repository host, and no client certificate is configured to reach it",
                ));
            };
            if host.host.is_empty() || host.host.contains(['/', ':', ' ']) {
                return Err(invalid(
                    "the repository host is a host name without a scheme or port",
                ));
            }
            s.set(&format!("repo{n}-host"), &host.host)?;
            s.set(&format!("repo{n}-host-type"), "tls")?;
            s.set(&format!("repo{n}-host-port"), &host.port.to_string())?;
            s.path(&format!("repo{n}-host-cert-file"), &tls.cert_file)?;
            s.path(&format!("repo{n}-host-key-file"), &tls.key_file)?;
            s.path(&format!("repo{n}-host-ca-file"), &tls.ca_file)?;
        }
        Storage::S3(S3 {
            endpoint,
            port,
            region,
            bucket,
            uri_style: style,
            tls: t,
            credentials,
        }) => {
            if endpoint.is_empty() || bucket.is_empty() || region.is_empty() {
                return Err(invalid("S3 needs an endpoint, a region and a bucket"));
            }
            if endpoint.contains("://") {
                return Err(invalid(
                    "the S3 endpoint is a host name without a scheme; pgBackRest always uses HTTPS",
                ));
            }
            s.set(&format!("repo{n}-type"), "s3")?;
            s.set(&format!("repo{n}-s3-endpoint"), endpoint)?;
            if let Some(port) = port {
                s.set(&format!("repo{n}-storage-port"), &port.to_string())?;
            }
            s.set(&format!("repo{n}-s3-region"), region)?;
            s.set(&format!("repo{n}-s3-bucket"), bucket)?;
            s.set(&format!("repo{n}-s3-uri-style"), uri_style(*style))?;
            tls(s, n, t)?;
            match credentials {
                S3Credentials::Files { .. } => {
                    s.set(&format!("repo{n}-s3-key-type"), "shared")?;
                    s.set(
                        &format!("repo{n}-s3-key"),
                        secret(secrets, index, 0, "access key id")?,
                    )?;
                    s.set(
                        &format!("repo{n}-s3-key-secret"),
                        secret(secrets, index, 1, "secret access key")?,
                    )?;
                }
                // The keys come from PGBACKREST_REPO<N>_S3_KEY[_SECRET].
                S3Credentials::Environment => s.set(&format!("repo{n}-s3-key-type"), "shared")?,
                S3Credentials::InstanceRole => s.set(&format!("repo{n}-s3-key-type"), "auto")?,
            }
        }
        Storage::Azure(Azure {
            account,
            container,
            endpoint,
            port,
            uri_style: style,
            tls: t,
            credentials,
        }) => {
            if account.is_empty() || container.is_empty() {
                return Err(invalid("Azure needs a storage account and a container"));
            }
            if endpoint.as_deref().is_some_and(|e| e.contains(['/', ':'])) {
                return Err(invalid(
                    "the Azure endpoint is a host name without a scheme or port; pgBackRest always uses HTTPS",
                ));
            }
            s.set(&format!("repo{n}-type"), "azure")?;
            s.set(&format!("repo{n}-azure-account"), account)?;
            s.set(&format!("repo{n}-azure-container"), container)?;
            if let Some(endpoint) = endpoint {
                s.set(&format!("repo{n}-azure-endpoint"), endpoint)?;
            }
            if let Some(port) = port {
                s.set(&format!("repo{n}-storage-port"), &port.to_string())?;
            }
            s.set(&format!("repo{n}-azure-uri-style"), uri_style(*style))?;
            tls(s, n, t)?;
            let (key_type, key) = match credentials {
                AzureCredentials::SharedKey(_) => {
                    ("shared", secret(secrets, index, 0, "shared key")?)
                }
                // pgBackRest parses the signature as a query string; the
                // portal shows it with a leading '?', which would end up in
                // the first parameter's name.
                AzureCredentials::Sas(_) => (
                    "sas",
                    secret(secrets, index, 0, "shared access signature")?.trim_start_matches('?'),
                ),
            };
            s.set(&format!("repo{n}-azure-key-type"), key_type)?;
            s.set(&format!("repo{n}-azure-key"), key)?;
        }
        Storage::Gcs(Gcs {
            bucket,
            endpoint,
            tls: t,
            credentials,
        }) => {
            if bucket.is_empty() {
                return Err(invalid("GCS needs a bucket"));
            }
            if endpoint.as_deref().is_some_and(|e| e.contains('/')) {
                return Err(invalid(
                    "the GCS endpoint is host or host:port without a scheme; pgBackRest always uses HTTPS",
                ));
            }
            s.set(&format!("repo{n}-type"), "gcs")?;
            s.set(&format!("repo{n}-gcs-bucket"), bucket)?;
            if let Some(endpoint) = endpoint {
                s.set(&format!("repo{n}-gcs-endpoint"), endpoint)?;
            }
            tls(s, n, t)?;
            match credentials {
                GcsCredentials::ServiceKeyFile(path) => {
                    s.set(&format!("repo{n}-gcs-key-type"), "service")?;
                    s.path(&format!("repo{n}-gcs-key"), path)?;
                }
                GcsCredentials::TokenFile(_) => {
                    s.set(&format!("repo{n}-gcs-key-type"), "token")?;
                    s.set(
                        &format!("repo{n}-gcs-key"),
                        secret(secrets, index, 0, "access token")?,
                    )?;
                }
                GcsCredentials::InstanceRole => s.set(&format!("repo{n}-gcs-key-type"), "auto")?,
            }
        }
    }
    s.set(&format!("repo{n}-path"), &repo.path)?;
    let r = &repo.retention;
    if let Some(full) = r.full {
        s.set(&format!("repo{n}-retention-full"), &full.to_string())?;
        s.set(
            &format!("repo{n}-retention-full-type"),
            r.full_type.as_str(),
        )?;
    }
    if let Some(diff) = r.diff {
        s.set(&format!("repo{n}-retention-diff"), &diff.to_string())?;
    }
    if let Some(archive) = r.archive {
        s.set(&format!("repo{n}-retention-archive"), &archive.to_string())?;
    }
    if let Some(kind) = r.archive_type {
        s.set(&format!("repo{n}-retention-archive-type"), kind.as_str())?;
    }
    Ok(())
}

/// The whole `pgbackrest.conf`.
pub fn render(config: &BackrestConfig, secrets: &Secrets) -> Result<String, ConfigError> {
    validate_stanza(&config.stanza.name)?;
    if config.repositories.is_empty() {
        return Err(ConfigError::NoRepository);
    }
    if config.repositories.len() > MAX_REPOSITORIES {
        return Err(ConfigError::TooManyRepositories {
            count: config.repositories.len(),
        });
    }
    let mut global = Section::new("global");
    global.path("log-path", &config.log_path)?;
    global.path("lock-path", &config.lock_path)?;
    global.path("spool-path", &config.spool_path)?;
    // The command's own output carries the error; the file log is for people.
    global.set("log-level-file", "info")?;
    global.set("archive-async", "y")?;
    global.set("process-max", &config.process_max.max(1).to_string())?;
    // A backup begins with a checkpoint: wait for none.
    global.set("start-fast", "y")?;
    global.set(
        "archive-timeout",
        &config.archive_timeout.as_secs().max(1).to_string(),
    )?;
    if let Some(max) = &config.archive_push_queue_max {
        global.set("archive-push-queue-max", max)?;
    }
    for (index, repo) in config.repositories.iter().enumerate() {
        repository(
            &mut global,
            index,
            repo,
            secrets,
            config.client_tls.as_ref(),
        )?;
    }
    if let Some(server) = &config.server {
        tls_server(&mut global, server, &config.stanza.name)?;
    }
    let st = &config.stanza;
    let mut stanza = Section::new(&st.name);
    stanza.path("pg1-path", &st.pg_path)?;
    stanza.set("pg1-port", &st.pg_port.to_string())?;
    stanza.path("pg1-socket-path", &st.pg_socket_path)?;
    stanza.set("pg1-user", &st.pg_user)?;
    Ok(format!(
        "# Written by Capstan; edits are overwritten. Holds credentials: keep it 0600.\n{}\n{}",
        global.0, stanza.0
    ))
}

fn tls_server(s: &mut Section, server: &TlsServer, stanza: &str) -> Result<(), ConfigError> {
    s.set("tls-server-address", &server.address)?;
    s.set("tls-server-port", &server.port.to_string())?;
    s.path("tls-server-cert-file", &server.cert_file)?;
    s.path("tls-server-key-file", &server.key_file)?;
    s.path("tls-server-ca-file", &server.ca_file)?;
    if server.client_name.is_empty() || server.client_name.contains(['=', ' ']) {
        return Err(ConfigError::InvalidValue {
            option: "tls-server-auth".into(),
        });
    }
    s.set(
        "tls-server-auth",
        &format!("{}={}", server.client_name, stanza),
    )
}

/// `pgbackrest.conf` of a repository host: only its TLS server, serving
/// `stanza`. Clients send the repository options (path, retention) with
/// each command, so the host needs none of its own.
pub fn render_repo_host(
    server: &TlsServer,
    stanza: &str,
    log_path: &Path,
    lock_path: &Path,
) -> Result<String, ConfigError> {
    validate_stanza(stanza)?;
    let mut global = Section::new("global");
    global.path("log-path", log_path)?;
    global.path("lock-path", lock_path)?;
    global.set("log-level-file", "info")?;
    tls_server(&mut global, server, stanza)?;
    Ok(format!(
        "# Written by Capstan; edits are overwritten.\n{}",
        global.0
    ))
}

/// Writes the file 0600 (it may hold keys) by renaming a temporary one, so
/// an archive-push running meanwhile reads the old or the new file, never
/// half of one. `owner` (uid, gid) when the writer is not the user
/// pgBackRest runs as.
pub fn write(path: &Path, content: &str, owner: Option<(u32, u32)>) -> Result<(), ConfigError> {
    let err = |source| ConfigError::Write {
        path: path.display().to_string(),
        source,
    };
    let tmp = path.with_extension("conf.tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(err)?;
    file.write_all(content.as_bytes()).map_err(err)?;
    file.sync_all().map_err(err)?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::fchown(&file, Some(uid), Some(gid)).map_err(err)?;
    }
    std::fs::rename(&tmp, path).map_err(err)
}

/// Quotes a word for `sh -c` (PostgreSQL runs archive and restore commands
/// through the shell).
fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/-_.=:,+@".contains(c));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// How PostgreSQL reaches pgBackRest: the binary, the configuration file
/// and the stanza.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    pub pgbackrest: PathBuf,
    pub config: PathBuf,
    pub stanza: String,
}

impl Invocation {
    fn prefix(&self) -> String {
        format!(
            "{} --config={} --stanza={}",
            shell_quote(&self.pgbackrest.display().to_string()),
            shell_quote(&self.config.display().to_string()),
            shell_quote(&self.stanza)
        )
    }

    /// `archive_command`.
    pub fn archive_command(&self) -> String {
        format!("{} archive-push %p", self.prefix())
    }

    /// `restore_command` (a replica falling behind, or a restore).
    pub fn restore_command(&self) -> String {
        format!("{} archive-get %f \"%p\"", self.prefix())
    }

    /// The postgresql.conf settings that archive WAL through pgBackRest.
    /// `archive_timeout` bounds how old the newest unarchived WAL can get
    /// on an idle primary: the RPO.
    pub fn archive_parameters(&self, archive_timeout: Duration) -> Vec<(&'static str, String)> {
        vec![
            ("archive_mode", "on".into()),
            ("archive_command", self.archive_command()),
            (
                "archive_timeout",
                format!("{}s", archive_timeout.as_secs().max(1)),
            ),
            ("restore_command", self.restore_command()),
        ]
    }
}

#[cfg(test)]
mod tests;

//! `kubectl capstan psql`: the real `psql` on a cluster, through a
//! port-forward the API server opens (`pods/portforward`), with the TLS the
//! cluster's clients use: `sslmode=verify-full` against the cluster CA and
//! the Service name the server certificate carries (`host`), while the
//! connection itself goes to the forwarded local port (`hostaddr`).
//!
//! By default to a pooler pod (where applications connect) as the app
//! user; `--replica` to a ready replica, `--primary` to the primary;
//! `--superuser` logs in as the superuser (the pooler refuses superusers, so
//! that goes to the primary unless `--replica` says otherwise). The
//! password reaches psql only through a `PGPASSFILE` (mode 0600) in a
//! private temporary directory, removed at exit with the CA file; it is
//! never on a command line, printed or logged.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::ListParams;
use tokio::net::TcpListener;
use tokio::sync::Mutex;

use super::{CliError, Connection, Session};
use crate::api::{PostgresCluster, TlsMode};
use crate::contract::layout::{self, files};
use crate::operator::cluster::operation::is_ready;
use crate::resources::{labels, names};

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// The PostgresCluster.
    pub cluster: String,
    /// Connect to a ready replica (read-only) instead of a pooler pod.
    #[arg(long, conflicts_with = "primary")]
    pub replica: bool,
    /// Connect straight to the primary instead of a pooler pod.
    #[arg(long, visible_alias = "rw")]
    pub primary: bool,
    /// Log in as the superuser (from the `<cluster>-superuser` Secret)
    /// instead of the app user; goes to the primary unless --replica.
    #[arg(long)]
    pub superuser: bool,
    /// Database (default: the app Secret's `dbname`; `postgres` with
    /// --superuser).
    #[arg(short, long)]
    pub dbname: Option<String>,
    /// The psql to run (default: `psql` from PATH).
    #[arg(long, default_value = "psql")]
    pub psql: PathBuf,
    #[command(flatten)]
    pub connection: Connection,
    /// Arguments for psql, after `--` (e.g. `-- -c 'select 1'`).
    #[arg(last = true)]
    pub psql_args: Vec<String>,
}

/// Which kind of pod psql reaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Pooler,
    Primary,
    Replica,
}

impl Target {
    pub fn from_args(args: &Args) -> Target {
        match (args.replica, args.primary, args.superuser) {
            (true, _, _) => Target::Replica,
            (false, true, _) | (false, false, true) => Target::Primary,
            (false, false, false) => Target::Pooler,
        }
    }

    /// The Service whose certificate name verify-full checks (what an
    /// application inside the cluster would connect to).
    pub fn service(self, cluster: &str) -> String {
        match self {
            Target::Pooler => names::pooler(cluster),
            Target::Primary => names::rw_service(cluster),
            Target::Replica => names::ro_service(cluster),
        }
    }

    pub fn port(self) -> u16 {
        match self {
            Target::Pooler => layout::POOLER_PORT,
            Target::Primary | Target::Replica => layout::POSTGRES_PORT,
        }
    }

    fn selector(self, cluster: &str) -> String {
        labels::to_selector(&match self {
            Target::Pooler => labels::pooler_selector(cluster),
            Target::Primary | Target::Replica => labels::instances_selector(cluster),
        })
    }
}

fn role(pod: &Pod) -> Option<&str> {
    pod.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(labels::ROLE))
        .map(String::as_str)
}

/// The pod psql goes to: the first ready one (by name) of `target`'s kind.
/// The primary is the one the status names (its role label as a fallback),
/// a replica one labelled replica that is not the status's primary.
pub fn choose_pod<'a>(
    cluster: &PostgresCluster,
    target: Target,
    pods: &'a [Pod],
) -> Result<&'a Pod, CliError> {
    let name = cluster.metadata.name.as_deref().unwrap_or_default();
    let primary = cluster
        .status
        .as_ref()
        .and_then(|s| s.current_primary.as_deref());
    let mut ready: Vec<&Pod> = pods.iter().filter(|p| is_ready(p)).collect();
    ready.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let is_primary = |p: &Pod| match primary {
        Some(primary) => p.metadata.name.as_deref() == Some(primary),
        None => role(p) == Some(labels::ROLE_PRIMARY),
    };
    let chosen = match target {
        Target::Pooler => ready.first().copied(),
        Target::Primary => ready.iter().copied().find(|p| is_primary(p)),
        Target::Replica => ready
            .iter()
            .copied()
            .find(|p| !is_primary(p) && role(p) == Some(labels::ROLE_REPLICA)),
    };
    chosen.ok_or_else(|| {
        CliError::Refused(match target {
            Target::Pooler => format!(
                "PostgresCluster {name} has no ready pooler pod; see `kubectl capstan status {name}`, or connect to PostgreSQL itself with --primary"
            ),
            Target::Primary => format!(
                "PostgresCluster {name} has no ready primary; see `kubectl capstan status {name}`"
            ),
            Target::Replica => format!(
                "PostgresCluster {name} has no ready replica (spec.instances: {}); see `kubectl capstan status {name}`, or connect to the primary with --primary",
                cluster.spec.instances
            ),
        })
    })
}

/// A libpq connection-string value, quoted.
fn quote(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// A `.pgpass` field, escaped.
fn pgpass_field(value: &str) -> String {
    value.replace('\\', "\\\\").replace(':', "\\:")
}

/// What psql connects with, the password excepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionSpec {
    /// The name verify-full checks against the server certificate.
    pub host: String,
    pub port: u16,
    pub user: String,
    pub dbname: String,
    pub sslrootcert: PathBuf,
}

impl ConnectionSpec {
    /// The libpq connection string: `host` for verify-full, `hostaddr` for
    /// the forwarded port on 127.0.0.1, no password.
    pub fn conninfo(&self) -> String {
        [
            ("host", self.host.clone()),
            ("hostaddr", "127.0.0.1".to_string()),
            ("port", self.port.to_string()),
            ("user", self.user.clone()),
            ("dbname", self.dbname.clone()),
            ("sslmode", "verify-full".to_string()),
            ("sslrootcert", self.sslrootcert.display().to_string()),
            // The forward carries TCP only; no GSSAPI attempt first.
            ("gssencmode", "disable".to_string()),
            ("application_name", "kubectl-capstan-psql".to_string()),
        ]
        .iter()
        .map(|(k, v)| format!("{k}={}", quote(v)))
        .collect::<Vec<_>>()
        .join(" ")
    }

    /// psql's arguments: the connection string, then the user's.
    pub fn psql_args(&self, extra: &[String]) -> Vec<String> {
        let mut args = vec![format!("--dbname={}", self.conninfo())];
        args.extend(extra.iter().cloned());
        args
    }
}

/// The `.pgpass` line for `user` (any host, port and database: the file
/// serves this one psql).
pub fn pgpass_line(user: &str, password: &str) -> String {
    format!("*:*:*:{}:{}\n", pgpass_field(user), pgpass_field(password))
}

/// A temporary directory (0700) with the CA and the password file (0600),
/// removed when dropped.
struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new(ca: &[u8], user: &str, password: &str) -> Result<Files, CliError> {
        let failed = |what: &str, e: std::io::Error| {
            CliError::Failed(format!(
                "cannot write {what} to a temporary directory: {e}; check $TMPDIR"
            ))
        };
        let dir = tempfile::Builder::new()
            .prefix("kubectl-capstan-psql-")
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .tempdir()
            .map_err(|e| failed("the connection files", e))?;
        let write = |name: &str, data: &[u8]| -> Result<(), std::io::Error> {
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(dir.path().join(name))?;
            file.write_all(data)
        };
        write("ca.crt", ca).map_err(|e| failed("the cluster CA", e))?;
        write("pgpass", pgpass_line(user, password).as_bytes())
            .map_err(|e| failed("the password file", e))?;
        Ok(Files { dir })
    }

    fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    fn pgpass(&self) -> PathBuf {
        self.dir.path().join("pgpass")
    }
}

/// A key of a Secret's data, as text.
fn secret_value(secret: &Secret, key: &str) -> Option<String> {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .and_then(|v| String::from_utf8(v.0.clone()).ok())
}

async fn read_secret(session: &Session, name: &str) -> Result<Secret, CliError> {
    match session.api::<Secret>().get_opt(name).await {
        Ok(Some(s)) => Ok(s),
        Ok(None) => Err(CliError::Refused(format!(
            "Secret {name} not found in namespace {}; the operator creates it with the cluster: see `kubectl capstan status`",
            session.namespace
        ))),
        Err(e) => Err(session.error(&format!("reading Secret {name}"), e)),
    }
}

/// The Secret with the CA certificate clients trust.
fn ca_secret_name(cluster: &PostgresCluster, name: &str) -> String {
    match (&cluster.spec.tls.mode, &cluster.spec.tls.provided) {
        (TlsMode::Provided, Some(p)) => p.ca_secret_name.clone(),
        _ => names::ca_secret(name),
    }
}

/// Opens port-forwards to one pod, one per connection psql makes.
struct Forwarder {
    pods: kube::Api<Pod>,
    pod: String,
    port: u16,
}

impl Forwarder {
    async fn open(&self) -> Result<kube::api::Portforwarder, CliError> {
        self.pods
            .portforward(&self.pod, &[self.port])
            .await
            .map_err(|e| {
                let refused = |message: String| {
                    CliError::Refused(format!(
                        "cannot open a port-forward to pod {} port {}: {message}; check that `kubectl port-forward pod/{} {}` works (the API server must reach the node's kubelet)",
                        self.pod, self.port, self.pod, self.port
                    ))
                };
                match e {
                    kube::Error::Api(s) if s.code == 403 => CliError::Forbidden {
                        what: format!("a port-forward to pod {}", self.pod),
                        message: s.message,
                    },
                    kube::Error::Api(s) => refused(s.message),
                    other => refused(super::chain(&other)),
                }
            })
    }
}

/// Carries one local connection over a port-forward.
async fn carry(mut local: tokio::net::TcpStream, mut forward: kube::api::Portforwarder, port: u16) {
    let Some(mut remote) = forward.take_stream(port) else {
        return;
    };
    let error = forward.take_error(port);
    if let Err(e) = tokio::io::copy_bidirectional(&mut local, &mut remote).await {
        tracing::debug!(error = %e, "port-forward connection ended");
    }
    drop(remote);
    if let Some(error) = error
        && let Ok(Some(message)) =
            tokio::time::timeout(std::time::Duration::from_millis(200), error).await
    {
        eprintln!("capstan: port-forward: {message}");
    }
    forward.abort();
}

/// Runs psql; its exit code is the verb's.
pub async fn run(args: Args) -> Result<u8, CliError> {
    // psql first: nothing else is worth doing without it.
    let psql = which(&args.psql).ok_or_else(|| {
        CliError::Refused(format!(
            "psql not found ({}); install the PostgreSQL client (e.g. `apt-get install postgresql-client`) or name it with --psql <path>",
            args.psql.display()
        ))
    })?;

    let session = Session::connect(&args.connection).await?;
    let cluster = session.cluster(&args.cluster).await?;
    let name = args.cluster.as_str();
    let target = Target::from_args(&args);

    let pods = session
        .api::<Pod>()
        .list(&ListParams::default().labels(&target.selector(name)))
        .await
        .map_err(|e| session.error("listing pods", e))?
        .items;
    let pod = choose_pod(&cluster, target, &pods)?;
    let pod_name = pod.metadata.name.clone().unwrap_or_default();

    let (user_secret, default_db) = if args.superuser {
        (names::superuser_secret(name), Some("postgres".to_string()))
    } else {
        (names::app_secret(name), None)
    };
    let credentials = read_secret(&session, &user_secret).await?;
    let missing = |key: &str| {
        CliError::Refused(format!(
            "Secret {user_secret} has no {key:?}; the operator writes it: see `kubectl capstan status {name}`"
        ))
    };
    let user =
        secret_value(&credentials, files::USERNAME).ok_or_else(|| missing(files::USERNAME))?;
    let password =
        secret_value(&credentials, files::PASSWORD).ok_or_else(|| missing(files::PASSWORD))?;
    let dbname = match (&args.dbname, default_db) {
        (Some(db), _) => db.clone(),
        (None, Some(db)) => db,
        (None, None) => secret_value(&credentials, files::DBNAME)
            .unwrap_or_else(|| cluster.spec.bootstrap.initdb_or_default().database),
    };
    let ca_name = ca_secret_name(&cluster, name);
    let ca =
        secret_value(&read_secret(&session, &ca_name).await?, files::CA_CRT).ok_or_else(|| {
            CliError::Refused(format!(
                "Secret {ca_name} has no {:?}; see `kubectl capstan status {name}`",
                files::CA_CRT
            ))
        })?;

    let forwarder = Arc::new(Forwarder {
        pods: session.api::<Pod>(),
        pod: pod_name.clone(),
        port: target.port(),
    });
    // One port-forward now: a refused one is reported before psql runs.
    let first = Arc::new(Mutex::new(Some(forwarder.open().await?)));
    let listener = TcpListener::bind(("127.0.0.1", 0))
        .await
        .map_err(|e| CliError::Failed(format!("cannot listen on 127.0.0.1: {e}")))?;
    let local_port = listener
        .local_addr()
        .map_err(|e| CliError::Failed(format!("cannot listen on 127.0.0.1: {e}")))?
        .port();
    let accept = tokio::spawn({
        let forwarder = forwarder.clone();
        async move {
            loop {
                let Ok((local, _)) = listener.accept().await else {
                    continue;
                };
                let forwarder = forwarder.clone();
                let first = first.clone();
                tokio::spawn(async move {
                    let opened = first.lock().await.take();
                    let forward = match opened {
                        Some(f) => f,
                        None => match forwarder.open().await {
                            Ok(f) => f,
                            Err(e) => {
                                eprintln!("capstan: {e}");
                                return;
                            }
                        },
                    };
                    carry(local, forward, forwarder.port).await;
                });
            }
        }
    });

    let files = Files::new(ca.as_bytes(), &user, &password)?;
    drop(password);
    let spec = ConnectionSpec {
        host: format!("{}.{}.svc", target.service(name), session.namespace),
        port: local_port,
        user,
        dbname,
        sslrootcert: files.ca(),
    };
    tracing::debug!(pod = %pod_name, host = %spec.host, "running psql");
    let status = run_psql(&psql, &spec.psql_args(&args.psql_args), &files.pgpass()).await;
    accept.abort();
    drop(files);
    let status = status?;
    Ok(exit_code(status))
}

async fn run_psql(
    psql: &Path,
    args: &[String],
    pgpass: &Path,
) -> Result<std::process::ExitStatus, CliError> {
    let mut child = tokio::process::Command::new(psql)
        .args(args)
        .env("PGPASSFILE", pgpass)
        // A password in the environment would win over the file.
        .env_remove("PGPASSWORD")
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            CliError::Refused(format!(
                "cannot run {}: {e}; name a working psql with --psql <path>",
                psql.display()
            ))
        })?;
    // Ctrl-C is psql's (it cancels the query); this process stays to
    // forward the cancel request and remove the files after.
    let wait = child.wait();
    tokio::pin!(wait);
    loop {
        tokio::select! {
            status = &mut wait => {
                return status.map_err(|e| CliError::Failed(format!("waiting for psql: {e}")));
            }
            signal = tokio::signal::ctrl_c() => {
                if signal.is_err() {
                    return (&mut wait)
                        .await
                        .map_err(|e| CliError::Failed(format!("waiting for psql: {e}")));
                }
            }
        }
    }
}

/// psql's exit code (128 + the signal that ended it, as a shell says).
fn exit_code(status: std::process::ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => u8::try_from(code).unwrap_or(1),
        (None, Some(signal)) => u8::try_from(128 + signal).unwrap_or(1),
        (None, None) => 1,
    }
}

/// `program` as PATH finds it (a path with a `/` as it is).
fn which(program: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.components().count() > 1 || program.is_absolute() {
        return executable(program).then(|| program.to_path_buf());
    }
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|dir| dir.join(program))
        .find(|p| executable(p))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::status::PostgresClusterStatus;
    use clap::Parser;
    use std::collections::BTreeMap;

    fn pod(name: &str, role: Option<&str>, ready: bool) -> Pod {
        use k8s_openapi::api::core::v1::{PodCondition, PodStatus};
        let mut p = Pod::default();
        p.metadata.name = Some(name.into());
        if let Some(role) = role {
            p.metadata.labels = Some(BTreeMap::from([(labels::ROLE.into(), role.into())]));
        }
        p.status = Some(PodStatus {
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: if ready { "True" } else { "False" }.into(),
                ..PodCondition::default()
            }]),
            ..PodStatus::default()
        });
        p
    }

    fn cluster(primary: Option<&str>) -> PostgresCluster {
        let mut c = PostgresCluster::new("db", crate::resources::model::fixtures::model().spec);
        c.status = Some(PostgresClusterStatus {
            current_primary: primary.map(Into::into),
            ..PostgresClusterStatus::default()
        });
        c
    }

    fn picked(c: &PostgresCluster, target: Target, pods: &[Pod]) -> Result<String, String> {
        choose_pod(c, target, pods)
            .map(|p| p.metadata.name.clone().unwrap_or_default())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn a_replica_is_a_ready_one_that_is_not_the_primary() {
        let c = cluster(Some("db-1"));
        let pods = [
            pod("db-1", Some("primary"), true),
            pod("db-2", Some("replica"), false),
            pod("db-3", Some("replica"), true),
        ];
        assert_eq!(picked(&c, Target::Replica, &pods).unwrap(), "db-3");
        assert_eq!(picked(&c, Target::Primary, &pods).unwrap(), "db-1");
        // A stale role label does not make the status's primary a replica.
        let pods = [pod("db-1", Some("replica"), true)];
        let e = picked(&c, Target::Replica, &pods).unwrap_err();
        assert!(
            e.starts_with("PostgresCluster db has no ready replica"),
            "{e}"
        );
        assert!(e.contains("--primary"), "{e}");
    }

    #[test]
    fn without_a_status_the_role_label_names_the_primary() {
        let c = cluster(None);
        let pods = [
            pod("db-1", Some("replica"), true),
            pod("db-2", Some("primary"), true),
        ];
        assert_eq!(picked(&c, Target::Primary, &pods).unwrap(), "db-2");
        assert_eq!(picked(&c, Target::Replica, &pods).unwrap(), "db-1");
    }

    #[test]
    fn the_first_ready_pooler_pod_is_chosen() {
        let c = cluster(Some("db-1"));
        let pods = [
            pod("db-pooler-b", None, true),
            pod("db-pooler-a", None, false),
            pod("db-pooler-c", None, true),
        ];
        assert_eq!(picked(&c, Target::Pooler, &pods).unwrap(), "db-pooler-b");
        let e = picked(&c, Target::Pooler, &[pod("db-pooler-a", None, false)]).unwrap_err();
        assert_eq!(
            e,
            "PostgresCluster db has no ready pooler pod; see `kubectl capstan status db`, or connect to PostgreSQL itself with --primary"
        );
    }

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn args(line: &[&str]) -> Args {
        Cli::try_parse_from(std::iter::once("psql").chain(line.iter().copied()))
            .unwrap()
            .args
    }

    #[test]
    fn flags_choose_the_target_and_the_rest_goes_to_psql() {
        let a = args(&["db", "-n", "prod", "--", "-c", "select 1"]);
        assert_eq!(Target::from_args(&a), Target::Pooler);
        assert_eq!(a.psql_args, vec!["-c", "select 1"]);
        assert_eq!(a.connection.namespace.as_deref(), Some("prod"));
        assert_eq!(
            Target::from_args(&args(&["db", "--replica"])),
            Target::Replica
        );
        assert_eq!(Target::from_args(&args(&["db", "--rw"])), Target::Primary);
        assert_eq!(
            Target::from_args(&args(&["db", "--superuser"])),
            Target::Primary
        );
        assert_eq!(
            Target::from_args(&args(&["db", "--superuser", "--replica"])),
            Target::Replica
        );
        assert!(Cli::try_parse_from(["psql", "db", "--replica", "--primary"]).is_err());
        assert_eq!(Target::Pooler.service("db"), "db-pooler");
        assert_eq!(Target::Replica.service("db"), "db-ro");
        assert_eq!(Target::Primary.service("db"), "db-rw");
    }

    #[test]
    fn psql_verifies_the_service_name_on_the_forwarded_port_without_a_password() {
        let spec = ConnectionSpec {
            host: "db-pooler.prod.svc".into(),
            port: 40123,
            user: "app".into(),
            dbname: "app".into(),
            sslrootcert: PathBuf::from("/tmp/x y/ca.crt"),
        };
        let args = spec.psql_args(&["-c".into(), "select 1".into()]);
        assert_eq!(
            args,
            vec![
                "--dbname=host='db-pooler.prod.svc' hostaddr='127.0.0.1' port='40123' user='app' \
                 dbname='app' sslmode='verify-full' sslrootcert='/tmp/x y/ca.crt' \
                 gssencmode='disable' application_name='kubectl-capstan-psql'"
                    .to_string(),
                "-c".into(),
                "select 1".into(),
            ]
        );
        assert!(!args.iter().any(|a| a.contains("password")));
    }

    #[test]
    fn quoting_and_pgpass_escape_what_they_must() {
        assert_eq!(quote(r"it's a\b"), r"'it\'s a\\b'");
        assert_eq!(pgpass_line("app", r"p:w\d"), "*:*:*:app:p\\:w\\\\d\n");
    }

    #[test]
    fn the_password_file_is_private_and_removed_with_the_directory() {
        use std::os::unix::fs::PermissionsExt;
        let files = Files::new(b"CA", "app", "s3cret").unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&files.pgpass()), 0o600);
        assert_eq!(mode(files.dir.path()), 0o700);
        assert_eq!(
            std::fs::read_to_string(files.pgpass()).unwrap(),
            "*:*:*:app:s3cret\n"
        );
        let dir = files.dir.path().to_path_buf();
        drop(files);
        assert!(!dir.exists());
    }

    #[test]
    fn provided_tls_trusts_the_users_ca() {
        let mut c = cluster(None);
        assert_eq!(ca_secret_name(&c, "db"), "db-ca");
        c.spec.tls.mode = TlsMode::Provided;
        c.spec.tls.provided = Some(
            serde_json::from_value(serde_json::json!({
                "caSecretName": "my-ca",
                "serverSecretName": "s",
                "replicationSecretName": "r",
                "poolerSecretName": "p",
            }))
            .unwrap(),
        );
        assert_eq!(ca_secret_name(&c, "db"), "my-ca");
    }

    #[test]
    fn which_finds_programs_on_path_and_takes_paths_as_they_are() {
        assert!(which(Path::new("sh")).is_some());
        assert!(which(Path::new("/no/such/psql")).is_none());
        assert!(which(Path::new("no-such-program-capstan")).is_none());
    }
}

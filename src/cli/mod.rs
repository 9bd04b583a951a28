//! `kubectl capstan`: the verbs people run by hand (the `capstan` binary
//! installed as `kubectl-capstan`). Every verb goes through the Kubernetes
//! API only — it reads status, sets an annotation or creates an object, and
//! the operator's pipeline does the work — so what the CLI asks for is what
//! a GitOps repository could ask for too.

pub mod backup;
pub mod psql;
pub mod restart;
pub mod status;
pub mod switchover;

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};

use crate::api::PostgresCluster;

/// How to reach the cluster, as kubectl takes it.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct Connection {
    /// Namespace of the cluster (default: the kubeconfig context's).
    #[arg(short, long)]
    pub namespace: Option<String>,
    /// The kubeconfig context to use (default: the current one).
    #[arg(long)]
    pub context: Option<String>,
    /// Path to the kubeconfig file (default: $KUBECONFIG, then ~/.kube/config,
    /// then the in-cluster service account).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(
        "cannot load the kubeconfig: {0}; check --kubeconfig, $KUBECONFIG and --context (`kubectl config get-contexts` lists them)"
    )]
    Kubeconfig(String),
    #[error(
        "cannot reach the Kubernetes API server at {server}: {message}; check that the cluster is up and that --context/--kubeconfig point at it"
    )]
    Unreachable { server: String, message: String },
    #[error(
        "PostgresCluster {name:?} not found in namespace {namespace:?}; list them with `kubectl get pgc -n {namespace}`"
    )]
    NoCluster { name: String, namespace: String },
    #[error("{what} is forbidden: {message}; ask for that permission, or use another --context")]
    Forbidden { what: String, message: String },
    #[error("{what}: {message}")]
    Api { what: String, message: String },
    /// A request the CLI refuses before asking anything of the API.
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Failed(String),
    #[error(
        "gave up waiting after {0}s; the request stands and the operator goes on with it: follow it with `kubectl capstan status`"
    )]
    Timeout(u64),
}

/// A client and the namespace to use, from the kubeconfig the flags name
/// (or the in-cluster configuration).
pub struct Session {
    pub client: Client,
    pub namespace: String,
    server: String,
}

impl Session {
    pub async fn connect(connection: &Connection) -> Result<Session, CliError> {
        let options = KubeConfigOptions {
            context: connection.context.clone(),
            ..KubeConfigOptions::default()
        };
        let config = match (&connection.kubeconfig, &connection.context) {
            (Some(path), _) => {
                let kubeconfig = Kubeconfig::read_from(path)
                    .map_err(|e| CliError::Kubeconfig(format!("{}: {e}", path.display())))?;
                Config::from_custom_kubeconfig(kubeconfig, &options)
                    .await
                    .map_err(|e| CliError::Kubeconfig(e.to_string()))?
            }
            (None, Some(_)) => Config::from_kubeconfig(&options)
                .await
                .map_err(|e| CliError::Kubeconfig(e.to_string()))?,
            (None, None) => Config::infer()
                .await
                .map_err(|e| CliError::Kubeconfig(e.to_string()))?,
        };
        let namespace = connection
            .namespace
            .clone()
            .unwrap_or_else(|| config.default_namespace.clone());
        let server = config.cluster_url.to_string();
        let client = Client::try_from(config).map_err(|e| CliError::Kubeconfig(e.to_string()))?;
        Ok(Session {
            client,
            namespace,
            server,
        })
    }

    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// What a failed call means for the user: unreachable, forbidden, or
    /// the API server's own words.
    pub fn error(&self, what: &str, e: kube::Error) -> CliError {
        match e {
            kube::Error::Api(s) if s.code == 403 => CliError::Forbidden {
                what: what.to_string(),
                message: s.message,
            },
            kube::Error::Api(s) => CliError::Api {
                what: what.to_string(),
                message: s.message,
            },
            other => CliError::Unreachable {
                server: self.server.clone(),
                message: chain(&other),
            },
        }
    }

    pub async fn cluster(&self, name: &str) -> Result<PostgresCluster, CliError> {
        match self.api::<PostgresCluster>().get_opt(name).await {
            Ok(Some(c)) => Ok(c),
            Ok(None) => Err(CliError::NoCluster {
                name: name.to_string(),
                namespace: self.namespace.clone(),
            }),
            Err(e) => Err(self.error(&format!("reading PostgresCluster {name}"), e)),
        }
    }
}

/// An error and its causes on one line (a connection refused is three
/// levels down in hyper's error).
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

/// Asks before something that stops writes; `--yes` answers for the user,
/// and without a terminal nobody can answer, so the request is refused.
pub fn confirm(question: &str, yes: bool) -> Result<(), CliError> {
    if yes {
        return Ok(());
    }
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return Err(CliError::Refused(format!(
            "{question} — not confirmed: stdin is not a terminal; add --yes to go ahead"
        )));
    }
    print!("{question} [y/N] ");
    std::io::stdout().flush().ok();
    let mut answer = String::new();
    stdin.lock().read_line(&mut answer).ok();
    if matches!(answer.trim(), "y" | "Y" | "yes") {
        Ok(())
    } else {
        Err(CliError::Refused(
            "not confirmed; nothing was changed".into(),
        ))
    }
}

/// A token that makes each request distinct (seconds since the epoch).
pub fn token() -> String {
    jiff::Timestamp::now().as_second().to_string()
}

/// Paces a loop that follows a request: the first round at once, then
/// every half second until `wait` seconds passed (then [`CliError::Timeout`]);
/// with `wait` 0 no round at all (the request stands, nobody waits).
pub struct Follow {
    wait: u64,
    deadline: std::time::Instant,
    first: bool,
}

impl Follow {
    pub fn new(wait: u64) -> Follow {
        Follow {
            wait,
            deadline: std::time::Instant::now() + std::time::Duration::from_secs(wait),
            first: true,
        }
    }

    /// Whether to look again.
    pub async fn next(&mut self) -> Result<bool, CliError> {
        if self.wait == 0 {
            return Ok(false);
        }
        if !std::mem::take(&mut self.first) {
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
        if std::time::Instant::now() < self.deadline {
            Ok(true)
        } else {
            Err(CliError::Timeout(self.wait))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_chains_keep_every_distinct_cause() {
        #[derive(Debug)]
        struct E(&'static str, Option<Box<E>>);
        impl std::fmt::Display for E {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.0)
            }
        }
        impl std::error::Error for E {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                self.1.as_deref().map(|e| e as _)
            }
        }
        let e = E(
            "client error (Connect)",
            Some(Box::new(E(
                "tcp connect error",
                Some(Box::new(E("Connection refused (os error 111)", None))),
            ))),
        );
        assert_eq!(
            chain(&e),
            "client error (Connect): tcp connect error: Connection refused (os error 111)"
        );
    }

    #[test]
    fn without_a_terminal_nothing_is_confirmed_but_yes_is() {
        assert!(confirm("restart", true).is_ok());
        // cargo test's stdin is not a terminal.
        if !std::io::stdin().is_terminal() {
            let e = confirm("restart the primary", false)
                .unwrap_err()
                .to_string();
            assert!(e.contains("--yes"), "{e}");
        }
    }
}

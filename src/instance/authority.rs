//! Who the cluster says the primary is. The manager asks before it starts
//! PostgreSQL and keeps asking while it runs: the named instance promotes
//! itself, every other one follows. An old primary that restarts after a
//! failover therefore comes back as a replica and never accepts a write.
//!
//! Fencing (a lease the primary must keep renewing) is a later addition;
//! it belongs behind this same trait, next to `target_primary`.

use std::future::Future;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use futures::StreamExt;
use kube::api::{Api, DynamicObject};
use kube::core::ApiResource;
use kube::runtime::watcher;
use tokio::sync::watch;

use crate::api::PostgresCluster;

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum AuthorityError {
    #[error("cannot read the authority file {path}: {message}")]
    File { path: String, message: String },
    #[error("cannot reach the Kubernetes API: {0}")]
    Client(String),
    #[error("no answer yet from the Kubernetes API about PostgresCluster {0}")]
    NotSynced(String),
    #[error("PostgresCluster {0} does not exist")]
    ClusterMissing(String),
}

/// The source of `targetPrimary`.
pub trait Authority: Send + Sync {
    /// The pod the cluster wants as primary (None: nobody yet).
    fn target_primary(&self)
    -> impl Future<Output = Result<Option<String>, AuthorityError>> + Send;
}

/// `--authority kube` or `--authority file:<path>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthoritySpec {
    Kube,
    File(PathBuf),
}

impl FromStr for AuthoritySpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once(':') {
            None if s == "kube" => Ok(Self::Kube),
            Some(("file", path)) if !path.is_empty() => Ok(Self::File(PathBuf::from(path))),
            _ => Err(format!(
                "invalid authority {s:?}: use `kube` or `file:<path>`"
            )),
        }
    }
}

/// The configured source.
pub enum AuthoritySource {
    Kube(KubeAuthority),
    File(FileAuthority),
}

impl AuthoritySource {
    pub async fn from_spec(
        spec: &AuthoritySpec,
        namespace: &str,
        cluster: &str,
    ) -> Result<Self, AuthorityError> {
        match spec {
            AuthoritySpec::File(path) => Ok(Self::File(FileAuthority { path: path.clone() })),
            AuthoritySpec::Kube => {
                let client = kube::Client::try_default()
                    .await
                    .map_err(|e| AuthorityError::Client(e.to_string()))?;
                Ok(Self::Kube(KubeAuthority::watch(client, namespace, cluster)))
            }
        }
    }
}

impl Authority for AuthoritySource {
    async fn target_primary(&self) -> Result<Option<String>, AuthorityError> {
        match self {
            Self::Kube(k) => k.target_primary().await,
            Self::File(f) => f.target_primary().await,
        }
    }
}

/// A file holding the target pod name (empty: nobody). Tests and local runs.
pub struct FileAuthority {
    pub path: PathBuf,
}

impl Authority for FileAuthority {
    async fn target_primary(&self) -> Result<Option<String>, AuthorityError> {
        let text =
            tokio::fs::read_to_string(&self.path)
                .await
                .map_err(|e| AuthorityError::File {
                    path: self.path.display().to_string(),
                    message: e.to_string(),
                })?;
        let name = text.trim();
        Ok((!name.is_empty()).then(|| name.to_string()))
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Seen {
    Nothing,
    Target(Option<String>),
    Deleted,
}

/// Watches the PostgresCluster and answers from the last seen object.
///
/// The object is read as untyped JSON so that a manager older or newer than
/// the operator still finds `status.targetPrimary` when the spec changed.
pub struct KubeAuthority {
    cluster: String,
    seen: watch::Receiver<Seen>,
    _task: Arc<tokio::task::JoinHandle<()>>,
}

impl KubeAuthority {
    pub fn watch(client: kube::Client, namespace: &str, cluster: &str) -> Self {
        let resource = ApiResource::erase::<PostgresCluster>(&());
        let api: Api<DynamicObject> = Api::namespaced_with(client, namespace, &resource);
        let config = watcher::Config::default().fields(&format!("metadata.name={cluster}"));
        let (tx, rx) = watch::channel(Seen::Nothing);
        let name = cluster.to_string();
        let task = tokio::spawn(async move {
            let mut events = std::pin::pin!(watcher(api, config));
            while let Some(event) = events.next().await {
                match event {
                    Ok(watcher::Event::Apply(obj) | watcher::Event::InitApply(obj)) => {
                        let _ = tx.send(Seen::Target(target_of(&obj)));
                    }
                    Ok(watcher::Event::Delete(_)) => {
                        let _ = tx.send(Seen::Deleted);
                    }
                    Ok(watcher::Event::Init | watcher::Event::InitDone) => {}
                    Err(e) => {
                        // The watcher re-lists on its own; keep the last answer.
                        tracing::warn!(cluster = %name, error = %e, "watching the PostgresCluster failed; retrying");
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    }
                }
            }
        });
        Self {
            cluster: cluster.to_string(),
            seen: rx,
            _task: Arc::new(task),
        }
    }
}

impl Drop for KubeAuthority {
    fn drop(&mut self) {
        self._task.abort();
    }
}

fn target_of(obj: &DynamicObject) -> Option<String> {
    obj.data
        .get("status")
        .and_then(|s| s.get("targetPrimary"))
        .and_then(|t| t.as_str())
        .filter(|t| !t.is_empty())
        .map(str::to_string)
}

impl Authority for KubeAuthority {
    async fn target_primary(&self) -> Result<Option<String>, AuthorityError> {
        match &*self.seen.borrow() {
            Seen::Nothing => Err(AuthorityError::NotSynced(self.cluster.clone())),
            Seen::Deleted => Err(AuthorityError::ClusterMissing(self.cluster.clone())),
            Seen::Target(t) => Ok(t.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Request, Response};
    use kube::client::Body;

    #[test]
    fn parses_specs() {
        assert_eq!("kube".parse::<AuthoritySpec>(), Ok(AuthoritySpec::Kube));
        assert_eq!(
            "file:/tmp/target".parse::<AuthoritySpec>(),
            Ok(AuthoritySpec::File("/tmp/target".into()))
        );
        assert!("file:".parse::<AuthoritySpec>().is_err());
        assert!("etcd".parse::<AuthoritySpec>().is_err());
    }

    #[tokio::test]
    async fn file_authority_trims_and_treats_empty_as_nobody() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("target");
        let auth = FileAuthority { path: path.clone() };
        assert!(matches!(
            auth.target_primary().await,
            Err(AuthorityError::File { .. })
        ));
        std::fs::write(&path, "db-2\n").unwrap();
        assert_eq!(auth.target_primary().await, Ok(Some("db-2".into())));
        std::fs::write(&path, " \n").unwrap();
        assert_eq!(auth.target_primary().await, Ok(None));
    }

    #[tokio::test]
    async fn kube_authority_reads_status_target_primary_of_its_cluster() {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = kube::Client::new(service, "ns");
        let auth = KubeAuthority::watch(client, "ns", "db");
        assert_eq!(
            auth.target_primary().await,
            Err(AuthorityError::NotSynced("db".into()))
        );

        let (request, send) = handle.next_request().await.expect("list request");
        let uri = request.uri().to_string();
        assert!(
            uri.starts_with("/apis/capstan.dev/v1alpha1/namespaces/ns/postgresclusters?"),
            "{uri}"
        );
        assert!(uri.contains("fieldSelector=metadata.name%3Ddb"), "{uri}");
        let list = serde_json::json!({
            "apiVersion": "capstan.dev/v1alpha1",
            "kind": "PostgresClusterList",
            "metadata": {"resourceVersion": "7"},
            "items": [{
                "apiVersion": "capstan.dev/v1alpha1",
                "kind": "PostgresCluster",
                "metadata": {"name": "db", "namespace": "ns", "resourceVersion": "7"},
                "spec": {"futureField": true},
                "status": {"targetPrimary": "db-2"}
            }]
        });
        send.send_response(
            Response::builder()
                .body(Body::from(serde_json::to_vec(&list).unwrap()))
                .unwrap(),
        );
        let mut seen = None;
        for _ in 0..100 {
            if let Ok(t) = auth.target_primary().await {
                seen = Some(t);
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(seen, Some(Some("db-2".to_string())));
    }
}

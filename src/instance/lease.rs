//! Where the primary Lease lives: a `coordination.k8s.io/v1` Lease in the
//! pod's namespace (`--lease kube`), or a JSON file standing in for it
//! (`--lease file:<dir>`, tests and local runs).
//!
//! Every write is conditional on the version last read (the Lease's
//! `resourceVersion`, or the file's counter under an `flock`): a write
//! based on a stale read fails with [`StoreError::Conflict`] instead of
//! overwriting someone else's renewal. There is no blind write.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// The lease changed (or appeared, or vanished) since it was read.
    #[error("the lease {0} changed since it was read")]
    Conflict(String),
    #[error("cannot reach the lease store: {0}")]
    Unavailable(String),
}

/// The lease as last read or written, with the version a write must match.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    pub version: String,
    pub spec: LeaseSpec,
    /// Kept on updates, so labels and owner references others set survive.
    pub metadata: ObjectMeta,
}

/// Conditional access to one namespace's leases.
pub trait LeaseStore: Send + Sync + 'static {
    fn read(&self, name: &str) -> impl Future<Output = Result<Option<Stored>, StoreError>> + Send;
    /// Creates the lease; [`StoreError::Conflict`] when it exists.
    fn create(
        &self,
        name: &str,
        spec: &LeaseSpec,
    ) -> impl Future<Output = Result<Stored, StoreError>> + Send;
    /// Replaces the spec if the lease is still at `previous.version`;
    /// [`StoreError::Conflict`] otherwise.
    fn replace(
        &self,
        name: &str,
        previous: &Stored,
        spec: &LeaseSpec,
    ) -> impl Future<Output = Result<Stored, StoreError>> + Send;
}

/// `--lease kube` or `--lease file:<dir>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseStoreSpec {
    Kube,
    File(PathBuf),
}

impl FromStr for LeaseStoreSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once(':') {
            None if s == "kube" => Ok(Self::Kube),
            Some(("file", dir)) if !dir.is_empty() => Ok(Self::File(PathBuf::from(dir))),
            _ => Err(format!(
                "invalid lease store {s:?}: use `kube` or `file:<dir>`"
            )),
        }
    }
}

/// The configured store.
pub enum LeaseSource {
    Kube(KubeLease),
    File(FileLease),
}

impl LeaseSource {
    pub fn new(spec: &LeaseStoreSpec, namespace: &str, identity: &str) -> Self {
        match spec {
            LeaseStoreSpec::Kube => Self::Kube(KubeLease::new(namespace)),
            LeaseStoreSpec::File(dir) => Self::File(FileLease::new(dir.clone(), identity)),
        }
    }
}

impl LeaseStore for LeaseSource {
    async fn read(&self, name: &str) -> Result<Option<Stored>, StoreError> {
        match self {
            Self::Kube(k) => k.read(name).await,
            Self::File(f) => f.read(name).await,
        }
    }

    async fn create(&self, name: &str, spec: &LeaseSpec) -> Result<Stored, StoreError> {
        match self {
            Self::Kube(k) => k.create(name, spec).await,
            Self::File(f) => f.create(name, spec).await,
        }
    }

    async fn replace(
        &self,
        name: &str,
        previous: &Stored,
        spec: &LeaseSpec,
    ) -> Result<Stored, StoreError> {
        match self {
            Self::Kube(k) => k.replace(name, previous, spec).await,
            Self::File(f) => f.replace(name, previous, spec).await,
        }
    }
}

// ---- Kubernetes ---------------------------------------------------------

/// The Lease through the Kubernetes API: `get`, `create`, and `update` with
/// `metadata.resourceVersion` set (the API server refuses it with 409 when
/// the object changed meanwhile). The client is made on first use, so a
/// cluster without fencing never needs one.
pub struct KubeLease {
    namespace: String,
    client: tokio::sync::OnceCell<kube::Client>,
}

impl KubeLease {
    pub fn new(namespace: &str) -> Self {
        Self {
            namespace: namespace.to_string(),
            client: tokio::sync::OnceCell::new(),
        }
    }

    #[cfg(test)]
    pub fn with_client(namespace: &str, client: kube::Client) -> Self {
        Self {
            namespace: namespace.to_string(),
            client: tokio::sync::OnceCell::new_with(Some(client)),
        }
    }

    async fn api(&self) -> Result<Api<Lease>, StoreError> {
        let client = self
            .client
            .get_or_try_init(kube::Client::try_default)
            .await
            .map_err(|e| StoreError::Unavailable(format!("no Kubernetes client: {e}")))?;
        Ok(Api::namespaced(client.clone(), &self.namespace))
    }

    fn stored(lease: Lease) -> Result<Stored, StoreError> {
        let version = lease.metadata.resource_version.clone().ok_or_else(|| {
            StoreError::Unavailable(
                "the API server returned a Lease without resourceVersion".into(),
            )
        })?;
        Ok(Stored {
            version,
            spec: lease.spec.unwrap_or_default(),
            metadata: lease.metadata,
        })
    }
}

fn kube_error(name: &str, e: kube::Error) -> StoreError {
    match e {
        kube::Error::Api(status)
            if status.is_conflict() || status.is_already_exists() || status.is_not_found() =>
        {
            StoreError::Conflict(name.to_string())
        }
        kube::Error::Api(status) if status.is_forbidden() => StoreError::Unavailable(format!(
            "forbidden ({}): the instance's Role needs get, create and update on leases.coordination.k8s.io",
            status.message
        )),
        other => StoreError::Unavailable(other.to_string()),
    }
}

impl LeaseStore for KubeLease {
    async fn read(&self, name: &str) -> Result<Option<Stored>, StoreError> {
        let lease =
            self.api()
                .await?
                .get_opt(name)
                .await
                .map_err(|e| match kube_error(name, e) {
                    // A 404 on get is "no lease", already handled by get_opt.
                    StoreError::Conflict(n) => {
                        StoreError::Unavailable(format!("lease {n}: conflict on read"))
                    }
                    other => other,
                })?;
        lease.map(Self::stored).transpose()
    }

    async fn create(&self, name: &str, spec: &LeaseSpec) -> Result<Stored, StoreError> {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                namespace: Some(self.namespace.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(spec.clone()),
        };
        let created = self
            .api()
            .await?
            .create(&PostParams::default(), &lease)
            .await
            .map_err(|e| kube_error(name, e))?;
        Self::stored(created)
    }

    async fn replace(
        &self,
        name: &str,
        previous: &Stored,
        spec: &LeaseSpec,
    ) -> Result<Stored, StoreError> {
        let mut metadata = previous.metadata.clone();
        metadata.resource_version = Some(previous.version.clone());
        metadata.managed_fields = None;
        let lease = Lease {
            metadata,
            spec: Some(spec.clone()),
        };
        let replaced = self
            .api()
            .await?
            .replace(name, &PostParams::default(), &lease)
            .await
            .map_err(|e| kube_error(name, e))?;
        Self::stored(replaced)
    }
}

// ---- file -----------------------------------------------------------------

/// Leases as `<dir>/<name>.json` (a Lease object whose `resourceVersion` is
/// a counter), every access under an exclusive `flock` of `<dir>/<name>.lock`,
/// every write a rename. Instances sharing the directory see one lease.
///
/// A network partition between this instance and the store is simulated by
/// a sentinel file `<dir>/<identity>.partitioned`: while it exists every
/// request of this instance fails; when it holds the word `hang`, requests
/// hang instead (a black-holed connection).
pub struct FileLease {
    dir: PathBuf,
    identity: String,
}

impl FileLease {
    pub fn new(dir: PathBuf, identity: &str) -> Self {
        Self {
            dir,
            identity: identity.to_string(),
        }
    }

    pub fn sentinel(dir: &Path, identity: &str) -> PathBuf {
        dir.join(format!("{identity}.partitioned"))
    }

    async fn reachable(&self) -> Result<(), StoreError> {
        let sentinel = Self::sentinel(&self.dir, &self.identity);
        match tokio::fs::read_to_string(&sentinel).await {
            Ok(text) if text.trim() == "hang" => std::future::pending().await,
            Ok(_) => Err(StoreError::Unavailable(format!(
                "partitioned from the lease store ({} exists)",
                sentinel.display()
            ))),
            Err(_) => Ok(()),
        }
    }

    /// Runs `f` on the current document under the lock, off the runtime.
    async fn locked<T: Send + 'static>(
        &self,
        name: &str,
        f: impl FnOnce(&Path, Option<Lease>) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.reachable().await?;
        let path = self.dir.join(format!("{name}.json"));
        let lock = self.dir.join(format!("{name}.lock"));
        tokio::task::spawn_blocking(move || {
            let io = |what: &str, e: std::io::Error| {
                StoreError::Unavailable(format!("{what} {}: {e}", path.display()))
            };
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&lock)
                .map_err(|e| io("cannot open the lock of", e))?;
            let _guard = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
                .map_err(|(_, errno)| io("cannot lock", errno.into()))?;
            let current = match std::fs::read(&path) {
                Ok(bytes) => Some(serde_json::from_slice::<Lease>(&bytes).map_err(|e| {
                    StoreError::Unavailable(format!("{} is not a Lease: {e}", path.display()))
                })?),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(io("cannot read", e)),
            };
            f(&path, current)
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("lease file task failed: {e}")))?
    }
}

fn write_lease(path: &Path, lease: &Lease) -> Result<Stored, StoreError> {
    let bytes = serde_json::to_vec_pretty(lease)
        .map_err(|e| StoreError::Unavailable(format!("cannot encode the lease: {e}")))?;
    super::config::write_atomic(path, &bytes)
        .map_err(|e| StoreError::Unavailable(format!("cannot write {}: {e}", path.display())))?;
    KubeLease::stored(lease.clone())
}

fn file_version(lease: &Lease) -> u64 {
    lease
        .metadata
        .resource_version
        .as_deref()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

impl LeaseStore for FileLease {
    async fn read(&self, name: &str) -> Result<Option<Stored>, StoreError> {
        self.locked(name, |_, current| {
            current.map(KubeLease::stored).transpose()
        })
        .await
    }

    async fn create(&self, name: &str, spec: &LeaseSpec) -> Result<Stored, StoreError> {
        let (name, spec) = (name.to_string(), spec.clone());
        self.locked(&name.clone(), move |path, current| {
            if current.is_some() {
                return Err(StoreError::Conflict(name));
            }
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(name),
                    resource_version: Some("1".into()),
                    ..ObjectMeta::default()
                },
                spec: Some(spec),
            };
            write_lease(path, &lease)
        })
        .await
    }

    async fn replace(
        &self,
        name: &str,
        previous: &Stored,
        spec: &LeaseSpec,
    ) -> Result<Stored, StoreError> {
        let (name, spec, expected) = (name.to_string(), spec.clone(), previous.version.clone());
        self.locked(&name.clone(), move |path, current| {
            let Some(mut lease) = current else {
                return Err(StoreError::Conflict(name));
            };
            if lease.metadata.resource_version.as_deref() != Some(expected.as_str()) {
                return Err(StoreError::Conflict(name));
            }
            lease.metadata.resource_version = Some((file_version(&lease) + 1).to_string());
            lease.spec = Some(spec);
            write_lease(path, &lease)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Request, Response};
    use kube::client::Body;

    fn spec(holder: &str) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(4),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn parses_specs() {
        assert_eq!("kube".parse::<LeaseStoreSpec>(), Ok(LeaseStoreSpec::Kube));
        assert_eq!(
            "file:/tmp/leases".parse::<LeaseStoreSpec>(),
            Ok(LeaseStoreSpec::File("/tmp/leases".into()))
        );
        assert!("file:".parse::<LeaseStoreSpec>().is_err());
        assert!("etcd".parse::<LeaseStoreSpec>().is_err());
    }

    #[tokio::test]
    async fn file_writes_are_conditional_on_the_version() {
        let dir = tempfile::tempdir().unwrap();
        let a = FileLease::new(dir.path().into(), "db-1");
        let b = FileLease::new(dir.path().into(), "db-2");
        assert_eq!(a.read("db-primary").await, Ok(None));
        let first = a.create("db-primary", &spec("db-1")).await.unwrap();
        assert_eq!(first.version, "1");
        assert_eq!(
            b.create("db-primary", &spec("db-2")).await,
            Err(StoreError::Conflict("db-primary".into()))
        );
        let seen_by_b = b.read("db-primary").await.unwrap().unwrap();
        let renewed = a
            .replace("db-primary", &first, &spec("db-1"))
            .await
            .unwrap();
        assert_eq!(renewed.version, "2");
        // b read version 1: its write is refused, a's renewal stands.
        assert_eq!(
            b.replace("db-primary", &seen_by_b, &spec("db-2")).await,
            Err(StoreError::Conflict("db-primary".into()))
        );
        let now = a.read("db-primary").await.unwrap().unwrap();
        assert_eq!(now.spec.holder_identity.as_deref(), Some("db-1"));
        assert_eq!(now.version, "2");
    }

    #[tokio::test]
    async fn the_partition_sentinel_cuts_one_instance_off() {
        let dir = tempfile::tempdir().unwrap();
        let a = FileLease::new(dir.path().into(), "db-1");
        let b = FileLease::new(dir.path().into(), "db-2");
        a.create("db-primary", &spec("db-1")).await.unwrap();
        std::fs::write(FileLease::sentinel(dir.path(), "db-1"), "").unwrap();
        assert!(matches!(
            a.read("db-primary").await,
            Err(StoreError::Unavailable(m)) if m.contains("partitioned")
        ));
        assert!(b.read("db-primary").await.unwrap().is_some());
        std::fs::write(FileLease::sentinel(dir.path(), "db-1"), "hang").unwrap();
        let hung =
            tokio::time::timeout(std::time::Duration::from_millis(100), a.read("db-primary")).await;
        assert!(hung.is_err(), "a hanging partition must not answer");
        std::fs::remove_file(FileLease::sentinel(dir.path(), "db-1")).unwrap();
        assert!(a.read("db-primary").await.unwrap().is_some());
    }

    #[tokio::test]
    async fn kube_replace_sends_the_resource_version_and_maps_409_to_conflict() {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let store = KubeLease::with_client("ns", kube::Client::new(service, "ns"));
        let previous = Stored {
            version: "41".into(),
            spec: spec("db-1"),
            metadata: ObjectMeta {
                name: Some("db-primary".into()),
                namespace: Some("ns".into()),
                labels: Some([("app".to_string(), "x".to_string())].into()),
                ..ObjectMeta::default()
            },
        };
        let server = tokio::spawn(async move {
            let (request, send) = handle.next_request().await.expect("a request");
            assert_eq!(request.method(), "PUT");
            assert_eq!(
                request.uri().path(),
                "/apis/coordination.k8s.io/v1/namespaces/ns/leases/db-primary"
            );
            let body = request.into_body().collect_bytes().await.unwrap();
            let sent: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(sent["metadata"]["resourceVersion"], "41");
            assert_eq!(sent["metadata"]["labels"]["app"], "x");
            assert_eq!(sent["spec"]["holderIdentity"], "db-2");
            let status = serde_json::json!({
                "kind": "Status", "apiVersion": "v1", "status": "Failure",
                "reason": "Conflict", "code": 409,
                "message": "the object has been modified"
            });
            send.send_response(
                Response::builder()
                    .status(409)
                    .body(Body::from(serde_json::to_vec(&status).unwrap()))
                    .unwrap(),
            );
        });
        let result = store.replace("db-primary", &previous, &spec("db-2")).await;
        server.await.unwrap();
        assert_eq!(result, Err(StoreError::Conflict("db-primary".into())));
    }
}

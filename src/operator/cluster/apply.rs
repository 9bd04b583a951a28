//! Apply: carry out a [`Plan`] against the API server.
//!
//! Shared children go through server-side apply with one field manager.
//! Three kinds cannot: Pods (their spec is immutable, so they are created and
//! only their role label is patched), generated Secrets (created only when
//! absent, so a stale read can never overwrite a password), and deletions.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::time::{Duration, Instant};

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;
use time::OffsetDateTime;
use tracing::{debug, info, warn};

use super::plan::{CertReason, Child, Deletion, Plan, SecretAction};
use crate::api::pgbackup::PostgresBackup;
use crate::resources::model::Model;
use crate::resources::names;
use crate::resources::secrets::{self, CertIdentity, CertKind};
use crate::tls::{self, CaSet};

/// The one field manager Capstan writes with.
pub const FIELD_MANAGER: &str = "capstan-operator";

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("Kubernetes API error on {what}: {source}")]
    Api {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("the CA Secret {0} has no usable ca.crt/ca.key; delete it to have a new CA issued")]
    BrokenCa(String),
}

impl ApplyError {
    fn api(what: impl Into<String>) -> impl FnOnce(kube::Error) -> ApplyError {
        let what = what.into();
        move |source| ApplyError::Api { what, source }
    }
}

/// What was done, for Events and logs.
#[derive(Debug, Default, PartialEq)]
pub struct Applied {
    pub created_pods: Vec<String>,
    pub deleted: Vec<Deletion>,
    pub created_secrets: Vec<String>,
    pub issued: Vec<(CertKind, CertReason)>,
    /// Steps of replacing the CA taken.
    pub ca_steps: Vec<tls::CaStep>,
    /// `PostgresBackup` objects created for due schedules.
    pub created_backups: Vec<String>,
    /// Children the API server refused for a reason a person must fix
    /// (e.g. a StorageClass that cannot expand volumes); the rest was applied.
    pub refused: Vec<String>,
}

fn is_status(err: &kube::Error, code: u16) -> bool {
    matches!(err, kube::Error::Api(s) if s.code == code)
}

/// A refusal (4xx other than conflicts and throttling) is about the object,
/// not the connection: report it and go on with the other children.
fn is_refusal(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(s) if (400..500).contains(&s.code) && s.code != 409 && s.code != 429)
}

/// Server-side apply; returns the resourceVersion the object has after it.
async fn ssa<K>(client: &Client, ns: &str, obj: &K) -> Result<Option<String>, kube::Error>
where
    K: Resource<Scope = NamespaceResourceScope> + Clone + DeserializeOwned + Serialize + Debug,
    <K as Resource>::DynamicType: Default,
{
    let name = obj.meta().name.clone().unwrap_or_default();
    Api::<K>::namespaced(client.clone(), ns)
        .patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(obj),
        )
        .await
        .map(|applied| applied.meta().resource_version.clone())
}

/// Sets a pod's role label, which the Services select on; a pod that is
/// gone needs none.
pub async fn relabel(pods: &Api<Pod>, name: &str, role: &str) -> Result<(), kube::Error> {
    let patch = serde_json::json!({"metadata": {"labels": {crate::resources::labels::ROLE: role}}});
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PatchParams::default()
    };
    match pods.patch(name, &params, &Patch::Merge(&patch)).await {
        Ok(_) => Ok(()),
        Err(e) if is_status(&e, 404) => Ok(()),
        Err(e) => Err(e),
    }
}

/// What Capstan last applied to each child. A server-side apply of the same
/// object to a child nobody wrote since (same resourceVersion) changes
/// nothing, so it is skipped: a settled cluster costs a few metadata lists
/// per reconcile instead of a write per child. After an operator restart
/// the cache is empty and everything is applied once.
#[derive(Default)]
pub struct AppliedCache {
    entries: std::sync::Mutex<std::collections::HashMap<String, (String, String, Instant)>>,
}

impl AppliedCache {
    fn entries(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, (String, String, Instant)>>
    {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn unchanged(&self, key: &str, hash: &str, observed: Option<&String>) -> bool {
        match (self.entries().get(key), observed) {
            (Some((h, rv, _)), Some(now)) => h == hash && rv == now,
            _ => false,
        }
    }

    fn record(&self, key: String, hash: String, resource_version: Option<String>) {
        match resource_version {
            Some(rv) => {
                let mut entries = self.entries();
                // Keep when it was written, not when it was last confirmed.
                let at = match entries.get(&key) {
                    Some((h, _, at)) if *h == hash => *at,
                    _ => Instant::now(),
                };
                entries.insert(key, (hash, rv, at))
            }
            None => self.entries().remove(&key),
        };
    }

    fn forget(&self, key: &str) {
        self.entries().remove(key);
    }

    /// Keeps only the entries of clusters (by uid) that still exist.
    pub fn retain_clusters(&self, live: &std::collections::HashSet<String>) {
        self.entries()
            .retain(|k, _| k.split('/').next().is_some_and(|uid| live.contains(uid)));
    }

    /// The settings ConfigMap of cluster `uid` was written with new
    /// content less than `within` ago (by this operator process).
    pub fn settings_written_within(&self, uid: &str, cluster: &str, within: Duration) -> bool {
        let key = format!("{uid}/ConfigMap/{}", names::config_map(cluster));
        self.entries()
            .get(&key)
            .is_some_and(|(_, _, at)| at.elapsed() < within)
    }

    pub fn len(&self) -> usize {
        self.entries().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn child_hash(child: &Child) -> String {
    use sha2::{Digest, Sha256};
    let json = match child {
        Child::ConfigMap(o) => serde_json::to_vec(o),
        Child::Service(o) => serde_json::to_vec(o),
        Child::ServiceAccount(o) => serde_json::to_vec(o),
        Child::Role(o) => serde_json::to_vec(o),
        Child::RoleBinding(o) => serde_json::to_vec(o),
        Child::Pvc(o) => serde_json::to_vec(o),
        Child::Deployment(o) => serde_json::to_vec(o),
        Child::Pdb(o) => serde_json::to_vec(o),
        Child::Lease(o) => serde_json::to_vec(o),
    }
    .unwrap_or_default();
    Sha256::digest(&json)
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect()
}

async fn apply_child(
    client: &Client,
    ns: &str,
    child: &Child,
) -> Result<Option<String>, kube::Error> {
    match child {
        Child::ConfigMap(o) => ssa(client, ns, o).await,
        Child::Service(o) => ssa(client, ns, o).await,
        Child::ServiceAccount(o) => ssa(client, ns, o).await,
        Child::Role(o) => ssa(client, ns, o).await,
        Child::RoleBinding(o) => ssa(client, ns, o).await,
        Child::Pvc(o) => ssa(client, ns, o).await,
        Child::Deployment(o) => ssa(client, ns, o.as_ref()).await,
        Child::Pdb(o) => ssa(client, ns, o).await,
        // Its resourceVersion moves with every renewal; only Capstan's
        // fields are compared (the controller observes the same version).
        Child::Lease(o) => {
            let name = o.metadata.name.clone().unwrap_or_default();
            Api::<Lease>::namespaced(client.clone(), ns)
                .patch(
                    &name,
                    &PatchParams::apply(FIELD_MANAGER).force(),
                    &Patch::Apply(o),
                )
                .await
                .map(|l| Some(crate::resources::lease::metadata_version(&l.metadata)))
        }
    }
}

/// `Kind/name` of a child, as [`super::observe::Observed::versions`] keys it.
fn child_key(child: &Child) -> String {
    let (kind, meta) = match child {
        Child::ConfigMap(o) => ("ConfigMap", &o.metadata),
        Child::Service(o) => ("Service", &o.metadata),
        Child::ServiceAccount(o) => ("ServiceAccount", &o.metadata),
        Child::Role(o) => ("Role", &o.metadata),
        Child::RoleBinding(o) => ("RoleBinding", &o.metadata),
        Child::Pvc(o) => ("PersistentVolumeClaim", &o.metadata),
        Child::Deployment(o) => ("Deployment", &o.metadata),
        Child::Pdb(o) => ("PodDisruptionBudget", &o.metadata),
        Child::Lease(o) => ("Lease", &o.metadata),
    };
    format!("{kind}/{}", meta.name.as_deref().unwrap_or_default())
}

pub async fn apply(
    client: &Client,
    model: &Model,
    plan: &Plan,
    versions: &BTreeMap<String, String>,
    cache: &AppliedCache,
) -> Result<Applied, ApplyError> {
    let ns = model.namespace.as_str();
    let mut applied = Applied::default();

    // Secrets first: pods cannot start without them.
    apply_secrets(client, model, &plan.secrets, &mut applied).await?;

    for child in &plan.apply {
        let name = child_key(child);
        let key = format!("{}/{name}", model.uid);
        let hash = child_hash(child);
        if cache.unchanged(&key, &hash, versions.get(&name)) {
            continue;
        }
        match apply_child(client, ns, child).await {
            Ok(rv) => cache.record(key, hash, rv),
            Err(e) if is_refusal(&e) => {
                cache.forget(&key);
                let what = name.clone();
                warn!(cluster = %model.name, object = %what, error = %e, "API server refused a child");
                applied
                    .refused
                    .push(format!("{what}: {}", refusal_message(&e)));
            }
            Err(e) => {
                cache.forget(&key);
                return Err(ApplyError::Api {
                    what: name,
                    source: e,
                });
            }
        }
    }

    let pods = Api::<Pod>::namespaced(client.clone(), ns);
    for pod in &plan.create_pods {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let params = PostParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..PostParams::default()
        };
        match pods.create(&params, pod).await {
            Ok(_) => {
                info!(cluster = %model.name, instance = %name, operation = "create-pod", "created instance pod");
                applied.created_pods.push(name);
            }
            Err(e) if is_status(&e, 409) => debug!(instance = %name, "pod already exists"),
            Err(e) => return Err(ApplyError::api(format!("Pod {name}"))(e)),
        }
    }

    for (name, role) in &plan.relabel {
        relabel(&pods, name, role)
            .await
            .map_err(ApplyError::api(format!("Pod {name}")))?;
        info!(cluster = %model.name, instance = %name, role = %role, operation = "relabel", "role label updated");
    }

    // Applying a scheduled object again (a lost status write) changes
    // nothing: its name stands for the run it answers.
    for backup in &plan.create_backups {
        let name = backup.metadata.name.clone().unwrap_or_default();
        match ssa(client, ns, backup).await {
            Ok(_) => {
                info!(cluster = %model.name, backup = %name, operation = "schedule-backup", "created a scheduled backup");
                applied.created_backups.push(name);
            }
            Err(e) if is_refusal(&e) => {
                warn!(cluster = %model.name, backup = %name, error = %e, "API server refused a scheduled backup");
                applied
                    .refused
                    .push(format!("PostgresBackup/{name}: {}", refusal_message(&e)));
            }
            Err(e) => return Err(ApplyError::api(format!("PostgresBackup {name}"))(e)),
        }
    }

    for deletion in &plan.delete {
        let result = match deletion {
            Deletion::Pod(n) => delete::<Pod>(client, ns, n).await,
            Deletion::Pvc(n) => delete::<PersistentVolumeClaim>(client, ns, n).await,
            Deletion::Pdb(n) => delete::<PodDisruptionBudget>(client, ns, n).await,
            Deletion::RepoHost(n) => match delete::<Deployment>(client, ns, n).await {
                Ok(()) => delete::<Service>(client, ns, n).await,
                Err(e) => Err(e),
            },
            Deletion::ExpiredBackup { name, .. } | Deletion::FailedBackup { name, .. } => {
                delete::<PostgresBackup>(client, ns, name).await
            }
        };
        result.map_err(ApplyError::api(format!("{deletion:?}")))?;
        info!(cluster = %model.name, operation = "delete", object = ?deletion, "deleted");
        applied.deleted.push(deletion.clone());
    }
    Ok(applied)
}

fn refusal_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => s.message.clone(),
        other => other.to_string(),
    }
}

async fn delete<K>(client: &Client, ns: &str, name: &str) -> Result<(), kube::Error>
where
    K: Resource<Scope = NamespaceResourceScope> + Clone + DeserializeOwned + Debug,
    <K as Resource>::DynamicType: Default,
{
    match Api::<K>::namespaced(client.clone(), ns)
        .delete(name, &DeleteParams::default())
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if is_status(&e, 404) => Ok(()),
        Err(e) => Err(e),
    }
}

async fn create_secret(api: &Api<Secret>, secret: &Secret) -> Result<bool, kube::Error> {
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PostParams::default()
    };
    match api.create(&params, secret).await {
        Ok(_) => Ok(true),
        Err(e) if is_status(&e, 409) => Ok(false),
        Err(e) => Err(e),
    }
}

/// The CAs created or changed in this pass, or those stored in their Secret.
async fn load_cas<'a>(
    api: &Api<Secret>,
    name: &str,
    cas: &'a mut Option<CaSet>,
) -> Result<&'a CaSet, ApplyError> {
    if cas.is_none() {
        let secret = api.get(name).await.map_err(ApplyError::api(name))?;
        *cas =
            Some(secrets::read_ca_set(&secret).ok_or_else(|| ApplyError::BrokenCa(name.into()))?);
    }
    cas.as_ref()
        .ok_or_else(|| ApplyError::BrokenCa(name.to_string()))
}

async fn apply_secrets(
    client: &Client,
    model: &Model,
    actions: &[SecretAction],
    applied: &mut Applied,
) -> Result<(), ApplyError> {
    if actions.is_empty() {
        return Ok(());
    }
    let ns = &model.namespace;
    let api = Api::<Secret>::namespaced(client.clone(), ns);
    let now = OffsetDateTime::now_utc();
    let lifetimes = tls::Lifetimes::from_spec(&model.spec.tls.certificates);
    let ca_name = names::ca_key_secret(&model.name);
    let ca_common_name = format!("{}.{} CA", model.name, model.namespace);
    let mut cas: Option<CaSet> = None;

    for action in actions {
        match action {
            SecretAction::CreatePassword(kind) => {
                let secret = secrets::password_secret(model, *kind, &secrets::generate_password());
                if create_secret(&api, &secret)
                    .await
                    .map_err(ApplyError::api(kind.name(&model.name)))?
                {
                    info!(cluster = %model.name, secret = %kind.name(&model.name), operation = "create-secret", "generated credentials");
                    applied.created_secrets.push(kind.name(&model.name));
                }
            }
            SecretAction::CreateCa => {
                let new = CaSet::new(tls::new_ca(&ca_common_name, now, lifetimes.ca)?);
                let mut created = false;
                for secret in secrets::ca_secrets(model, &new) {
                    let name = secret.metadata.name.clone().unwrap_or_default();
                    if name == ca_name {
                        created = create_secret(&api, &secret)
                            .await
                            .map_err(ApplyError::api(&name))?;
                    } else {
                        ssa(client, ns, &secret)
                            .await
                            .map_err(ApplyError::api(&name))?;
                    }
                }
                if created {
                    info!(cluster = %model.name, operation = "create-ca", "created the cluster CA");
                    applied.created_secrets.push(ca_name.clone());
                    cas = Some(new);
                }
            }
            SecretAction::PublishCa => {
                let current = load_cas(&api, &ca_name, &mut cas).await?;
                publish_cas(client, model, current).await?;
            }
            SecretAction::Ca(step) => {
                let current = load_cas(&api, &ca_name, &mut cas).await?.clone();
                let changed =
                    current.apply(*step, || tls::new_ca(&ca_common_name, now, lifetimes.ca))?;
                // `<name>-ca-key` first: it is what the next pass plans from.
                publish_cas(client, model, &changed).await?;
                info!(cluster = %model.name, step = ?step, operation = "rotate-ca", "cluster CA changed");
                applied.ca_steps.push(*step);
                cas = Some(changed);
            }
            SecretAction::CopyRolePasswords(copy) => {
                let name = names::roles_secret(&model.name);
                ssa(client, ns, copy.0.as_ref())
                    .await
                    .map_err(ApplyError::api(&name))?;
                let roles = copy.0.data.as_ref().map_or(0, BTreeMap::len);
                info!(cluster = %model.name, secret = %name, roles, operation = "copy-role-passwords", "copied the role passwords");
            }
            SecretAction::CopyProvided(kind, copy) => {
                let name = kind.secret_name(&model.name);
                ssa(client, ns, copy.0.as_ref())
                    .await
                    .map_err(ApplyError::api(&name))?;
                info!(cluster = %model.name, secret = %name, operation = "copy-certificate", "copied the provided certificate after its checks");
                applied.issued.push((*kind, CertReason::Provided));
            }
            SecretAction::IssueCert(kind, reason) => {
                let current = load_cas(&api, &ca_name, &mut cas).await?;
                let authority = &current.signing;
                let issued = match kind.identity(model) {
                    CertIdentity::Server(dns) => {
                        tls::issue_server(authority, &dns, now, lifetimes.leaf)?
                    }
                    CertIdentity::Client(cn) => {
                        tls::issue_client(authority, &cn, now, lifetimes.leaf)?
                    }
                    CertIdentity::Peer(dns) => {
                        tls::issue_peer(authority, &dns, now, lifetimes.leaf)?
                    }
                };
                let secret = secrets::cert_secret(model, *kind, &issued, current);
                let name = kind.secret_name(&model.name);
                ssa(client, ns, &secret)
                    .await
                    .map_err(ApplyError::api(&name))?;
                info!(cluster = %model.name, secret = %name, reason = ?reason, operation = "issue-certificate", "issued certificate");
                applied.issued.push((*kind, *reason));
            }
        }
    }
    Ok(())
}

/// Writes `<name>-ca-key` and, with managed TLS, `<name>-ca`, in that order.
async fn publish_cas(client: &Client, model: &Model, cas: &CaSet) -> Result<(), ApplyError> {
    for secret in secrets::ca_secrets(model, cas) {
        let name = secret.metadata.name.clone().unwrap_or_default();
        ssa(client, &model.namespace, &secret)
            .await
            .map_err(ApplyError::api(&name))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn an_apply_is_skipped_only_when_nothing_changed_on_either_side() {
        let cache = AppliedCache::default();
        let rv = |v: &str| Some(v.to_string());
        assert!(
            !cache.unchanged("u1/Service/db-rw", "h1", rv("5").as_ref()),
            "never applied"
        );
        cache.record("u1/Service/db-rw".into(), "h1".into(), rv("5"));
        assert!(cache.unchanged("u1/Service/db-rw", "h1", rv("5").as_ref()));
        assert!(
            !cache.unchanged("u1/Service/db-rw", "h2", rv("5").as_ref()),
            "the spec changed"
        );
        assert!(
            !cache.unchanged("u1/Service/db-rw", "h1", rv("6").as_ref()),
            "someone edited the child"
        );
        assert!(
            !cache.unchanged("u1/Service/db-rw", "h1", None),
            "the child was deleted"
        );
        cache.forget("u1/Service/db-rw");
        assert!(!cache.unchanged("u1/Service/db-rw", "h1", rv("5").as_ref()));
    }

    #[test]
    fn new_settings_are_followed_for_a_while_after_they_are_written() {
        let cache = AppliedCache::default();
        let within = Duration::from_secs(60);
        assert!(!cache.settings_written_within("u1", "db", within));
        cache.record(
            "u1/ConfigMap/db-config".into(),
            "h1".into(),
            Some("1".into()),
        );
        assert!(cache.settings_written_within("u1", "db", within));
        assert!(!cache.settings_written_within("u1", "db", Duration::ZERO));
        assert!(!cache.settings_written_within("u2", "db", within));
        // Re-applied unchanged (a new resourceVersion, same content): the
        // time it was written stays.
        cache.entries().get_mut("u1/ConfigMap/db-config").unwrap().2 =
            Instant::now() - Duration::from_secs(120);
        cache.record(
            "u1/ConfigMap/db-config".into(),
            "h1".into(),
            Some("2".into()),
        );
        assert!(!cache.settings_written_within("u1", "db", within));
        cache.record(
            "u1/ConfigMap/db-config".into(),
            "h2".into(),
            Some("3".into()),
        );
        assert!(cache.settings_written_within("u1", "db", within));
    }

    #[test]
    fn entries_of_deleted_clusters_are_pruned() {
        let cache = AppliedCache::default();
        cache.record("u1/Service/a".into(), "h".into(), Some("1".into()));
        cache.record("u2/Service/b".into(), "h".into(), Some("1".into()));
        cache.retain_clusters(&HashSet::from(["u2".to_string()]));
        assert_eq!(cache.len(), 1);
        assert!(cache.unchanged("u2/Service/b", "h", Some(&"1".to_string())));
    }
}

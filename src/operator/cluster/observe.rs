//! Observe: read what exists for one cluster (children from the watch
//! caches, Secrets, certificates, the primary Lease view, agent reports,
//! pending requests) into a plain value the pure steps work from.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Secret};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::Store;
use kube::{Api, Client, Resource};

use crate::api::{PostgresCluster, TlsMode};
use crate::contract::instance::InstanceReport;
use crate::contract::layout::files;
use crate::operator::cache::{self, Caches};
use crate::operator::leases::LeaseView;
use crate::resources::{labels, names, secrets};
use crate::tls::{self, Authorities, CertInfo, CertSummary};

/// What one Secret holds, without its secret values.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SecretFacts {
    /// Keys present in `data`.
    pub keys: BTreeSet<String>,
    /// The certificate in `tls.crt`, when there is one and it parses.
    pub cert: Option<CertInfo>,
    /// `tls.crt` was signed by the cluster CA currently in `<name>-ca-key`.
    pub signed_by_cluster_ca: bool,
    /// The certificate in `ca.crt`, when there is one and it parses.
    pub ca_cert: Option<CertInfo>,
    /// [`Authorities::trust_id`] of the CAs in its `ca.crt` (Capstan's
    /// own Secrets).
    pub trust: Option<String>,
}

/// Everything observed about one cluster.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Observed {
    /// Instance pods (label `capstan.dev/cluster`, component database).
    pub pods: Vec<Pod>,
    /// Pooler pods (their agents hold clients during a switchover).
    pub pooler_pods: Vec<Pod>,
    /// Verification pods (restoring a backup to check it).
    pub verify_pods: Vec<Pod>,
    /// The image-check pod (trying a new PostgreSQL image).
    pub check_pods: Vec<Pod>,
    pub pvcs: Vec<PersistentVolumeClaim>,
    pub pooler: Option<Deployment>,
    /// The repository host's Deployment (volume repositories).
    pub repo_host: Option<Deployment>,
    /// Names of the PodDisruptionBudgets that exist.
    pub pdbs: BTreeSet<String>,
    /// Secrets by name: the cluster's own and the user-provided TLS ones.
    pub secrets: BTreeMap<String, SecretFacts>,
    /// `<name>-operator-tls`: the operator's client certificate for the
    /// agents.
    pub operator_tls: Option<Secret>,
    /// The cluster's CAs, from `<name>-ca-key` (None before it exists).
    pub authorities: Option<Authorities>,
    /// Whether each StorageClass of the cluster's claims allows volume
    /// expansion (read only when a claim may grow; `""`: no class).
    pub storage_classes: BTreeMap<String, bool>,
    /// The user's Secrets `spec.tls.provided` names, by name, read in full:
    /// checked, then copied to the Secrets pods mount.
    pub provided: BTreeMap<String, Secret>,
    /// The user's Secrets `spec.roles` takes passwords from, by name.
    pub role_sources: RoleSources,
    /// [`secrets::CONTENT_ANNOTATION`] of `<name>-roles` (None: no such
    /// Secret yet).
    pub roles_digest: Option<String>,
    /// `resourceVersion` of each child applied with server-side apply, by
    /// `Kind/name`: unchanged since Capstan's last apply means no drift.
    pub versions: BTreeMap<String, String>,
    /// What each reachable instance manager reported (`GET /status`).
    pub reports: BTreeMap<String, InstanceReport>,
    /// What each reachable pooler supervisor reported (`GET /status`).
    pub pooler_reports: BTreeMap<String, crate::contract::pooler::PoolerReport>,
    /// The binary the operator runs (agents are brought to it).
    pub operator_build: Option<crate::contract::agent::AgentBuild>,
    /// The primary Lease as the operator saw it renewed (None until seen).
    pub lease: Option<LeaseView>,
    /// A pending switchover request: the `capstan.dev/switchover`
    /// annotation.
    pub switchover_request: Option<String>,
    /// This cluster's `PostgresBackup` objects, oldest first.
    pub backups: Vec<crate::api::pgbackup::PostgresBackup>,
    /// Unix seconds when observed.
    pub now: i64,
}

/// Secrets holding passwords: their names show in debug output, never
/// their data.
#[derive(Clone, Default, PartialEq)]
pub struct RoleSources(pub BTreeMap<String, Secret>);

impl std::fmt::Debug for RoleSources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.keys()).finish()
    }
}

impl Observed {
    pub fn pod(&self, name: &str) -> Option<&Pod> {
        self.pods
            .iter()
            .find(|p| p.metadata.name.as_deref() == Some(name))
    }

    pub fn has_secret(&self, name: &str) -> bool {
        self.secrets.contains_key(name)
    }
}

/// Facts about a user's Secret, read in full (provided TLS only).
pub fn secret_facts(secret: &Secret) -> SecretFacts {
    let data = secret.data.clone().unwrap_or_default();
    let keys = data.keys().cloned().collect();
    let text = |key: &str| data.get(key).and_then(|b| std::str::from_utf8(&b.0).ok());
    SecretFacts {
        keys,
        cert: text(files::TLS_CRT).and_then(|pem| tls::inspect(pem).ok()),
        signed_by_cluster_ca: false,
        ca_cert: text(files::CA_CRT).and_then(|pem| tls::inspect(pem).ok()),
        trust: None,
    }
}

/// Facts about one of the cluster's own Secrets, from its metadata alone:
/// certificates carry a [`crate::tls::CertSummary`] annotation, so the
/// operator never reads secret values to decide renewals.
fn own_secret_facts(meta: &ObjectMeta, cluster: &str, cas: Option<&Authorities>) -> SecretFacts {
    let name = meta.name.as_deref().unwrap_or_default();
    if name == names::ca_key_secret(cluster) || name == names::ca_secret(cluster) {
        let own = secrets::authorities(meta);
        return SecretFacts {
            keys: BTreeSet::new(),
            signed_by_cluster_ca: false,
            cert: None,
            ca_cert: own.as_ref().map(|a| CertInfo {
                common_name: None,
                dns_names: vec![],
                not_after: a.signing.not_after,
            }),
            trust: own.map(|a| a.trust_id()),
        };
    }
    let summary = secrets::summary(meta);
    SecretFacts {
        keys: BTreeSet::new(),
        signed_by_cluster_ca: summary
            .as_ref()
            .zip(cas)
            .is_some_and(|(s, cas)| s.issuer == cas.signing.fingerprint),
        cert: summary.as_ref().map(CertSummary::info),
        ca_cert: None,
        trust: summary.as_ref().map(|s| s.trust().to_string()),
    }
}

/// `allowVolumeExpansion` of the classes of the cluster's claims, read
/// only when one may grow (autoGrow, or a spec larger than a claim).
async fn storage_classes(
    client: &Client,
    cluster: &PostgresCluster,
    pvcs: &[PersistentVolumeClaim],
) -> Result<BTreeMap<String, bool>, kube::Error> {
    let spec = &cluster.spec;
    let specs = std::iter::once(&spec.storage).chain(spec.wal_storage.as_ref());
    let auto = specs.clone().any(|s| s.auto_grow.is_some());
    let larger = pvcs.iter().any(|c| {
        let have = crate::resources::instance::requested_storage(c)
            .and_then(|q| crate::resources::quantity::to_units(&q.0).ok());
        specs.clone().any(|s| {
            crate::resources::quantity::to_units(&s.size.0)
                .ok()
                .zip(have)
                .is_some_and(|(want, have)| want > have)
        })
    });
    let mut out = BTreeMap::new();
    if !auto && !larger {
        return Ok(out);
    }
    let api = Api::<StorageClass>::all(client.clone());
    for c in pvcs {
        let class = c
            .spec
            .as_ref()
            .and_then(|s| s.storage_class_name.clone())
            .unwrap_or_default();
        if out.contains_key(&class) {
            continue;
        }
        let allowed = if class.is_empty() {
            false
        } else {
            api.get_opt(&class)
                .await?
                .and_then(|sc| sc.allow_volume_expansion)
                .unwrap_or(false)
        };
        out.insert(class, allowed);
    }
    Ok(out)
}

/// Reads one cluster's children from the watch caches; only Secrets a
/// user provides (not Capstan's, so not cached) are read from the API.
pub async fn observe(
    client: &Client,
    caches: &Caches,
    cluster: &PostgresCluster,
    now: i64,
) -> Result<Observed, kube::Error> {
    let ns = cluster.metadata.namespace.as_deref().unwrap_or("default");
    let name = cluster.metadata.name.as_deref().unwrap_or_default();
    let children = BTreeMap::from([
        (labels::CLUSTER.to_string(), name.to_string()),
        (labels::MANAGED_BY.to_string(), labels::MANAGER.to_string()),
    ]);
    let pods = cache::select(&caches.pods, ns, &labels::instances_selector(name));
    let pooler_pods = cache::select(&caches.pods, ns, &labels::pooler_selector(name));
    let verify_pods = cache::select(&caches.pods, ns, &labels::verify_selector(name));
    let check_pods = cache::select(&caches.pods, ns, &labels::image_check_selector(name));
    let pvcs = cache::select(&caches.pvcs, ns, &labels::instances_selector(name));
    let pooler = cache::get(&caches.deployments, ns, &names::pooler(name));
    let repo_host = cache::get(&caches.deployments, ns, &names::repo_host(name));
    let backups = backups_of(&caches.backups, ns, name);

    let mut versions = BTreeMap::new();
    let pdbs = metadata(&caches.pdbs, ns, &children, &mut versions);
    metadata(&caches.config_maps, ns, &children, &mut versions);
    metadata(&caches.services, ns, &children, &mut versions);
    metadata(&caches.service_accounts, ns, &children, &mut versions);
    metadata(&caches.roles, ns, &children, &mut versions);
    metadata(&caches.role_bindings, ns, &children, &mut versions);
    for claim in &pvcs {
        record(&mut versions, "PersistentVolumeClaim", &claim.metadata);
    }
    for d in pooler.iter().chain(&repo_host) {
        record(&mut versions, "Deployment", &d.metadata);
    }
    for claim in cache::select(&caches.pvcs, ns, &labels::repo_host_selector(name)) {
        record(&mut versions, "PersistentVolumeClaim", &claim.metadata);
    }

    let own = cache::select(&caches.secrets, ns, &children);
    let authorities = own
        .iter()
        .find(|s| s.metadata.name.as_deref() == Some(names::ca_key_secret(name).as_str()))
        .and_then(|s| secrets::authorities(&s.metadata));
    let mut secrets: BTreeMap<String, SecretFacts> = own
        .iter()
        .filter_map(|s| {
            let facts = own_secret_facts(&s.metadata, name, authorities.as_ref());
            Some((s.metadata.name.clone()?, facts))
        })
        .collect();
    let roles_digest = own
        .iter()
        .find(|s| s.metadata.name.as_deref() == Some(names::roles_secret(name).as_str()))
        .and_then(|s| s.metadata.annotations.as_ref())
        .and_then(|a| a.get(secrets::CONTENT_ANNOTATION).cloned());
    let operator_tls = own
        .into_iter()
        .find(|s| s.metadata.name.as_deref() == Some(names::operator_tls_secret(name).as_str()));
    let mut provided = BTreeMap::new();
    if let (TlsMode::Provided, Some(p)) = (&cluster.spec.tls.mode, &cluster.spec.tls.provided) {
        let api = Api::<Secret>::namespaced(client.clone(), ns);
        for user_secret in [
            &p.ca_secret_name,
            &p.server_secret_name,
            &p.replication_secret_name,
            &p.pooler_secret_name,
        ] {
            if let Some(s) = api.get_opt(user_secret).await? {
                secrets.insert(user_secret.clone(), secret_facts(&s));
                provided.insert(user_secret.clone(), s);
            }
        }
    }

    let mut role_sources = BTreeMap::new();
    let named: BTreeSet<&str> = cluster
        .spec
        .roles
        .iter()
        .filter_map(|r| Some(r.password_secret.as_ref()?.name.as_str()))
        .collect();
    if !named.is_empty() {
        let api = Api::<Secret>::namespaced(client.clone(), ns);
        for user_secret in named {
            if let Some(s) = api.get_opt(user_secret).await? {
                role_sources.insert(user_secret.to_string(), s);
            }
        }
    }

    let storage_classes = storage_classes(client, cluster, &pvcs).await?;

    Ok(Observed {
        storage_classes,
        pods,
        pooler_pods,
        verify_pods,
        check_pods,
        pvcs,
        pooler,
        repo_host,
        pdbs: pdbs.into_iter().collect(),
        secrets,
        operator_tls,
        authorities,
        provided,
        role_sources: RoleSources(role_sources),
        roles_digest,
        versions,
        // Filled by the controller, which holds the agent clients and the
        // Lease monitor.
        reports: BTreeMap::new(),
        pooler_reports: BTreeMap::new(),
        operator_build: None,
        lease: None,
        switchover_request: cluster
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(labels::SWITCHOVER_ANNOTATION))
            .cloned(),
        backups,
        now,
    })
}

fn record(versions: &mut BTreeMap<String, String>, kind: &str, meta: &ObjectMeta) {
    if let (Some(name), Some(rv)) = (&meta.name, &meta.resource_version) {
        versions.insert(format!("{kind}/{name}"), rv.clone());
    }
}

/// The cached children of kind `K`, by metadata: records their
/// resourceVersions and returns their names.
fn metadata<K>(
    store: &Store<PartialObjectMeta<K>>,
    ns: &str,
    selector: &BTreeMap<String, String>,
    versions: &mut BTreeMap<String, String>,
) -> Vec<String>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    let kind = K::kind(&());
    cache::select(store, ns, selector)
        .into_iter()
        .filter_map(|o| {
            record(versions, &kind, &o.metadata);
            o.metadata.name
        })
        .collect()
}

/// The `PostgresBackup` objects naming `cluster`, oldest first (one backup
/// runs at a time, in the order they were asked for).
fn backups_of(
    store: &kube::runtime::reflector::Store<crate::api::pgbackup::PostgresBackup>,
    ns: &str,
    cluster: &str,
) -> Vec<crate::api::pgbackup::PostgresBackup> {
    let mut out: Vec<_> = store
        .state()
        .iter()
        .filter(|b| b.metadata.namespace.as_deref() == Some(ns) && b.spec.cluster == cluster)
        .map(|b| std::sync::Arc::unwrap_or_clone(b.clone()))
        .collect();
    out.sort_by(|a, b| {
        let key = |x: &crate::api::pgbackup::PostgresBackup| {
            (
                x.metadata.creation_timestamp.clone().map(|t| t.0),
                x.metadata.name.clone(),
            )
        };
        key(a).cmp(&key(b))
    });
    out
}

//! Observe: read what exists for one cluster (children by label, Secrets,
//! certificates) into a plain value the pure steps work from.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{
    ConfigMap, PersistentVolumeClaim, Pod, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::ListParams;
use kube::{Api, Client, Resource};

use crate::api::{PostgresCluster, TlsMode};
use crate::contract::instance::InstanceReport;
use crate::contract::layout::files;
use crate::resources::{labels, names, secrets};
use crate::tls::{self, CertInfo, CertSummary};

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
}

/// Everything observed about one cluster.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Observed {
    /// Instance pods (label `capstan.dev/cluster`, component database).
    pub pods: Vec<Pod>,
    pub pvcs: Vec<PersistentVolumeClaim>,
    pub pooler: Option<Deployment>,
    /// Names of the PodDisruptionBudgets that exist.
    pub pdbs: BTreeSet<String>,
    /// Secrets by name: the cluster's own and the user-provided TLS ones.
    pub secrets: BTreeMap<String, SecretFacts>,
    /// `resourceVersion` of each child applied with server-side apply, by
    /// `Kind/name`: unchanged since Capstan's last apply means no drift.
    pub versions: BTreeMap<String, String>,
    /// What each reachable instance manager reported (`GET /status`).
    pub reports: BTreeMap<String, InstanceReport>,
    /// Unix seconds when observed.
    pub now: i64,
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
    }
}

/// Facts about one of the cluster's own Secrets, from its metadata alone:
/// certificates carry a [`crate::tls::CertSummary`] annotation, so the
/// operator never reads secret values to decide renewals.
fn own_secret_facts(meta: &ObjectMeta, cluster: &str, ca_fingerprint: Option<&str>) -> SecretFacts {
    let summary = secrets::summary(meta);
    let name = meta.name.as_deref().unwrap_or_default();
    let is_ca = name == names::ca_key_secret(cluster) || name == names::ca_secret(cluster);
    let info = summary.as_ref().map(CertSummary::info);
    SecretFacts {
        keys: BTreeSet::new(),
        signed_by_cluster_ca: !is_ca
            && summary
                .as_ref()
                .zip(ca_fingerprint)
                .is_some_and(|(s, ca)| s.issuer == ca),
        cert: if is_ca { None } else { info.clone() },
        ca_cert: if is_ca { info } else { None },
    }
}

pub async fn observe(
    client: &Client,
    cluster: &PostgresCluster,
    now: i64,
) -> Result<Observed, kube::Error> {
    let ns = cluster.metadata.namespace.as_deref().unwrap_or("default");
    let name = cluster.metadata.name.as_deref().unwrap_or_default();
    let children = ListParams::default().labels(&labels::children_selector(name));
    let instances =
        ListParams::default().labels(&labels::to_selector(&labels::instances_selector(name)));

    let pods = Api::<Pod>::namespaced(client.clone(), ns)
        .list(&instances)
        .await?
        .items;
    let pvcs = Api::<PersistentVolumeClaim>::namespaced(client.clone(), ns)
        .list(&instances)
        .await?
        .items;
    let pooler = Api::<Deployment>::namespaced(client.clone(), ns)
        .get_opt(&names::pooler(name))
        .await?;
    let mut versions = BTreeMap::new();
    let pdbs = metadata::<PodDisruptionBudget>(client, ns, &children, &mut versions).await?;
    metadata::<ConfigMap>(client, ns, &children, &mut versions).await?;
    metadata::<Service>(client, ns, &children, &mut versions).await?;
    metadata::<ServiceAccount>(client, ns, &children, &mut versions).await?;
    metadata::<Role>(client, ns, &children, &mut versions).await?;
    metadata::<RoleBinding>(client, ns, &children, &mut versions).await?;
    for claim in &pvcs {
        record(&mut versions, "PersistentVolumeClaim", &claim.metadata);
    }
    if let Some(d) = &pooler {
        record(&mut versions, "Deployment", &d.metadata);
    }

    let own = Api::<Secret>::namespaced(client.clone(), ns)
        .list_metadata(&children)
        .await?
        .items;
    let ca_fingerprint = own
        .iter()
        .find(|s| s.metadata.name.as_deref() == Some(names::ca_key_secret(name).as_str()))
        .and_then(|s| secrets::summary(&s.metadata))
        .map(|s| s.issuer);
    let mut secrets: BTreeMap<String, SecretFacts> = own
        .iter()
        .filter_map(|s| {
            let facts = own_secret_facts(&s.metadata, name, ca_fingerprint.as_deref());
            Some((s.metadata.name.clone()?, facts))
        })
        .collect();
    if let (TlsMode::Provided, Some(provided)) =
        (&cluster.spec.tls.mode, &cluster.spec.tls.provided)
    {
        let api = Api::<Secret>::namespaced(client.clone(), ns);
        for user_secret in [
            &provided.ca_secret_name,
            &provided.server_secret_name,
            &provided.replication_secret_name,
            &provided.pooler_secret_name,
        ] {
            if let Some(s) = api.get_opt(user_secret).await? {
                secrets.insert(user_secret.clone(), secret_facts(&s));
            }
        }
    }

    Ok(Observed {
        pods,
        pvcs,
        pooler,
        pdbs: pdbs.into_iter().collect(),
        secrets,
        versions,
        // Filled by the controller, which holds the agent clients.
        reports: BTreeMap::new(),
        now,
    })
}

fn record(versions: &mut BTreeMap<String, String>, kind: &str, meta: &ObjectMeta) {
    if let (Some(name), Some(rv)) = (&meta.name, &meta.resource_version) {
        versions.insert(format!("{kind}/{name}"), rv.clone());
    }
}

/// Lists the children of kind `K` by metadata, recording their
/// resourceVersions; returns their names.
async fn metadata<K>(
    client: &Client,
    ns: &str,
    params: &ListParams,
    versions: &mut BTreeMap<String, String>,
) -> Result<Vec<String>, kube::Error>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let list = Api::<K>::namespaced(client.clone(), ns)
        .list_metadata(params)
        .await?;
    let kind = K::kind(&());
    Ok(list
        .items
        .into_iter()
        .filter_map(|o| {
            record(versions, &kind, &o.metadata);
            o.metadata.name
        })
        .collect())
}

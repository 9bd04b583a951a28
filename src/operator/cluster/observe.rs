//! Observe: read what exists for one cluster (children by label, Secrets,
//! certificates) into a plain value the pure steps work from.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Secret};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::ListParams;
use kube::{Api, Client};

use crate::api::{PostgresCluster, TlsMode};
use crate::contract::layout::files;
use crate::resources::{labels, names};
use crate::tls::{self, CertInfo};

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

pub fn secret_facts(secret: &Secret, ca_cert_pem: Option<&str>) -> SecretFacts {
    let data = secret.data.clone().unwrap_or_default();
    let keys = data.keys().cloned().collect();
    let cert_pem = data
        .get(files::TLS_CRT)
        .and_then(|b| String::from_utf8(b.0.clone()).ok());
    let cert = cert_pem.as_deref().and_then(|pem| tls::inspect(pem).ok());
    let signed_by_cluster_ca = match (cert_pem.as_deref(), ca_cert_pem) {
        (Some(cert), Some(ca)) => tls::signed_by(cert, ca),
        _ => false,
    };
    let ca_cert = data
        .get(files::CA_CRT)
        .and_then(|b| std::str::from_utf8(&b.0).ok())
        .and_then(|pem| tls::inspect(pem).ok());
    SecretFacts {
        keys,
        cert,
        signed_by_cluster_ca,
        ca_cert,
    }
}

/// `ca.crt` of the cluster CA Secret, if it exists.
pub fn ca_cert_pem(secrets: &[Secret], cluster: &str) -> Option<String> {
    let name = names::ca_key_secret(cluster);
    secrets
        .iter()
        .find(|s| s.metadata.name.as_deref() == Some(name.as_str()))
        .and_then(|s| s.data.as_ref()?.get(files::CA_CRT).cloned())
        .and_then(|b| String::from_utf8(b.0).ok())
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
    let pdbs = Api::<PodDisruptionBudget>::namespaced(client.clone(), ns)
        .list_metadata(&children)
        .await?
        .items
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect();

    let secrets_api = Api::<Secret>::namespaced(client.clone(), ns);
    let mut secrets = secrets_api.list(&children).await?.items;
    if let (TlsMode::Provided, Some(provided)) =
        (&cluster.spec.tls.mode, &cluster.spec.tls.provided)
    {
        for user_secret in [
            &provided.ca_secret_name,
            &provided.server_secret_name,
            &provided.replication_secret_name,
            &provided.pooler_secret_name,
        ] {
            if let Some(s) = secrets_api.get_opt(user_secret).await? {
                secrets.push(s);
            }
        }
    }
    let ca = ca_cert_pem(&secrets, name);
    let secrets = secrets
        .iter()
        .filter_map(|s| Some((s.metadata.name.clone()?, secret_facts(s, ca.as_deref()))))
        .collect();

    Ok(Observed {
        pods,
        pvcs,
        pooler,
        pdbs,
        secrets,
        now,
    })
}

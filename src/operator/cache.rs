//! Watch caches of Capstan's children: `observe` reads these instead of
//! listing every kind on every reconcile, so the API server sees one LIST
//! per kind when the operator starts and watches afterwards, however often
//! clusters reconcile.
//!
//! Full objects only where their contents are read (pods, volumes, the
//! pooler Deployment, Secrets: the operator's client certificate);
//! everything else by metadata, which is all drift detection needs.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{
    ConfigMap, PersistentVolumeClaim, Pod, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::Resource;

use crate::api::pgbackup::PostgresBackup;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, Store, store::Writer};
use kube::runtime::watcher;

type Meta<K> = PartialObjectMeta<K>;

/// Read side of the caches.
#[derive(Clone)]
pub struct Caches {
    pub pods: Store<Pod>,
    pub pvcs: Store<PersistentVolumeClaim>,
    pub deployments: Store<Deployment>,
    pub secrets: Store<Secret>,
    pub services: Store<Meta<Service>>,
    pub config_maps: Store<Meta<ConfigMap>>,
    pub service_accounts: Store<Meta<ServiceAccount>>,
    pub roles: Store<Meta<Role>>,
    pub role_bindings: Store<Meta<RoleBinding>>,
    pub pdbs: Store<Meta<PodDisruptionBudget>>,
    /// Every `PostgresBackup` (users create them without Capstan's labels).
    pub backups: Store<PostgresBackup>,
}

/// Write side: each fed by one watch (see `controller::run`), or by a test.
pub struct Writers {
    pub pods: Writer<Pod>,
    pub pvcs: Writer<PersistentVolumeClaim>,
    pub deployments: Writer<Deployment>,
    pub secrets: Writer<Secret>,
    pub services: Writer<Meta<Service>>,
    pub config_maps: Writer<Meta<ConfigMap>>,
    pub service_accounts: Writer<Meta<ServiceAccount>>,
    pub roles: Writer<Meta<Role>>,
    pub role_bindings: Writer<Meta<RoleBinding>>,
    pub pdbs: Writer<Meta<PodDisruptionBudget>>,
    pub backups: Writer<PostgresBackup>,
}

pub fn new() -> (Caches, Writers) {
    let (pods_r, pods_w) = reflector::store();
    let (pvcs_r, pvcs_w) = reflector::store();
    let (dep_r, dep_w) = reflector::store();
    let (sec_r, sec_w) = reflector::store();
    let (svc_r, svc_w) = reflector::store();
    let (cm_r, cm_w) = reflector::store();
    let (sa_r, sa_w) = reflector::store();
    let (role_r, role_w) = reflector::store();
    let (rb_r, rb_w) = reflector::store();
    let (pdb_r, pdb_w) = reflector::store();
    let (backup_r, backup_w) = reflector::store();
    (
        Caches {
            pods: pods_r,
            pvcs: pvcs_r,
            deployments: dep_r,
            secrets: sec_r,
            services: svc_r,
            config_maps: cm_r,
            service_accounts: sa_r,
            roles: role_r,
            role_bindings: rb_r,
            pdbs: pdb_r,
            backups: backup_r,
        },
        Writers {
            pods: pods_w,
            pvcs: pvcs_w,
            deployments: dep_w,
            secrets: sec_w,
            services: svc_w,
            config_maps: cm_w,
            service_accounts: sa_w,
            roles: role_w,
            role_bindings: rb_w,
            pdbs: pdb_w,
            backups: backup_w,
        },
    )
}

impl Caches {
    /// Waits until every watch has delivered its initial list: before that
    /// an empty cache would read as "nothing exists".
    pub async fn ready(&self) -> Result<(), reflector::store::WriterDropped> {
        self.pods.wait_until_ready().await?;
        self.pvcs.wait_until_ready().await?;
        self.deployments.wait_until_ready().await?;
        self.secrets.wait_until_ready().await?;
        self.services.wait_until_ready().await?;
        self.config_maps.wait_until_ready().await?;
        self.service_accounts.wait_until_ready().await?;
        self.roles.wait_until_ready().await?;
        self.role_bindings.wait_until_ready().await?;
        self.pdbs.wait_until_ready().await?;
        self.backups.wait_until_ready().await
    }
}

/// Objects of `store` in `namespace` whose labels include `selector`.
pub fn select<K>(store: &Store<K>, namespace: &str, selector: &BTreeMap<String, String>) -> Vec<K>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    let mut out: Vec<K> = store
        .state()
        .iter()
        .filter(|o| o.meta().namespace.as_deref() == Some(namespace))
        .filter(|o| {
            let labels = o.meta().labels.as_ref();
            selector
                .iter()
                .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
        })
        .map(|o| Arc::unwrap_or_clone(o.clone()))
        .collect();
    // Stable order, as a LIST returns them.
    out.sort_by(|a, b| a.meta().name.cmp(&b.meta().name));
    out
}

/// One object by namespace and name.
pub fn get<K>(store: &Store<K>, namespace: &str, name: &str) -> Option<K>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone + Default,
{
    store
        .get(&reflector::ObjectRef::new(name).within(namespace))
        .map(Arc::unwrap_or_clone)
}

impl Writers {
    /// Marks every cache as listed (empty), as the watches' first lists
    /// would: for tests and tools that feed the caches themselves.
    pub fn mark_listed(&mut self) {
        fn listed<K>(w: &mut Writer<K>)
        where
            K: Resource + Clone + 'static,
            K::DynamicType: Eq + std::hash::Hash + Clone,
        {
            w.apply_watcher_event(&watcher::Event::Init);
            w.apply_watcher_event(&watcher::Event::InitDone);
        }
        listed(&mut self.pods);
        listed(&mut self.pvcs);
        listed(&mut self.deployments);
        listed(&mut self.secrets);
        listed(&mut self.services);
        listed(&mut self.config_maps);
        listed(&mut self.service_accounts);
        listed(&mut self.roles);
        listed(&mut self.role_bindings);
        listed(&mut self.pdbs);
        listed(&mut self.backups);
    }
}

//! What the server serves: one [`ResourceDef`] per resource (built-in or
//! defined by a CRD), with the facts discovery and the write path need.

use std::sync::Arc;

use crate::crd::CrdSchemas;
use crate::status::Subject;

/// Built-in kinds that get kind-specific admission (defaults, immutable
/// fields, typed decoding).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Builtin {
    Namespace,
    Node,
    Pod,
    Service,
    Endpoints,
    Secret,
    ConfigMap,
    PersistentVolumeClaim,
    PersistentVolume,
    ServiceAccount,
    CoreEvent,
    Deployment,
    ReplicaSet,
    StatefulSet,
    Job,
    CronJob,
    PodDisruptionBudget,
    Role,
    RoleBinding,
    ClusterRole,
    ClusterRoleBinding,
    Lease,
    Event,
    EndpointSlice,
    StorageClass,
    CustomResourceDefinition,
}

/// Column of `kubectl get` output for a custom resource.
#[derive(Clone, Debug, PartialEq)]
pub struct PrinterColumn {
    pub name: String,
    pub type_: String,
    pub json_path: String,
}

#[derive(Clone, Debug)]
pub struct ResourceDef {
    /// "" for the core group.
    pub group: String,
    /// Served versions; the first is the preferred (and storage) version.
    pub versions: Vec<String>,
    pub kind: String,
    pub plural: String,
    pub singular: String,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    pub namespaced: bool,
    pub status_subresource: bool,
    /// Whether `metadata.generation` is maintained.
    pub tracks_generation: bool,
    pub builtin: Option<Builtin>,
    /// Schemas per version, for custom resources.
    pub crd: Option<Arc<CrdSchemas>>,
    pub printer_columns: Vec<PrinterColumn>,
}

impl ResourceDef {
    pub fn api_version(&self, version: &str) -> String {
        if self.group.is_empty() {
            version.to_string()
        } else {
            format!("{}/{}", self.group, version)
        }
    }

    pub fn storage_version(&self) -> &str {
        self.versions.first().map(String::as_str).unwrap_or("v1")
    }

    pub fn serves(&self, version: &str) -> bool {
        self.versions.iter().any(|v| v == version)
    }

    pub fn subject<'a>(&'a self, name: &'a str) -> Subject<'a> {
        Subject {
            group: &self.group,
            resource: &self.plural,
            name,
        }
    }
}

struct Spec {
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    plural: &'static str,
    short: &'static [&'static str],
    namespaced: bool,
    status: bool,
    generation: bool,
    all: bool,
    builtin: Builtin,
}

const fn spec(
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    plural: &'static str,
    short: &'static [&'static str],
    flags: (bool, bool, bool, bool),
    builtin: Builtin,
) -> Spec {
    let (namespaced, status, generation, all) = flags;
    Spec {
        group,
        version,
        kind,
        plural,
        short,
        namespaced,
        status,
        generation,
        all,
        builtin,
    }
}

// (namespaced, status subresource, tracks generation, in category "all")
const NS: (bool, bool, bool, bool) = (true, false, false, false);
const NS_STATUS: (bool, bool, bool, bool) = (true, true, false, false);
const NS_WORKLOAD: (bool, bool, bool, bool) = (true, true, true, true);
const CLUSTER: (bool, bool, bool, bool) = (false, false, false, false);
const CLUSTER_STATUS: (bool, bool, bool, bool) = (false, true, false, false);

const BUILTINS: &[Spec] = &[
    spec(
        "",
        "v1",
        "Namespace",
        "namespaces",
        &["ns"],
        CLUSTER_STATUS,
        Builtin::Namespace,
    ),
    spec(
        "",
        "v1",
        "Node",
        "nodes",
        &["no"],
        CLUSTER_STATUS,
        Builtin::Node,
    ),
    spec("", "v1", "Pod", "pods", &["po"], NS_WORKLOAD, Builtin::Pod),
    spec(
        "",
        "v1",
        "Service",
        "services",
        &["svc"],
        (true, true, false, true),
        Builtin::Service,
    ),
    spec(
        "",
        "v1",
        "Endpoints",
        "endpoints",
        &["ep"],
        NS,
        Builtin::Endpoints,
    ),
    spec("", "v1", "Secret", "secrets", &[], NS, Builtin::Secret),
    spec(
        "",
        "v1",
        "ConfigMap",
        "configmaps",
        &["cm"],
        NS,
        Builtin::ConfigMap,
    ),
    spec(
        "",
        "v1",
        "PersistentVolumeClaim",
        "persistentvolumeclaims",
        &["pvc"],
        NS_STATUS,
        Builtin::PersistentVolumeClaim,
    ),
    spec(
        "",
        "v1",
        "PersistentVolume",
        "persistentvolumes",
        &["pv"],
        CLUSTER_STATUS,
        Builtin::PersistentVolume,
    ),
    spec(
        "",
        "v1",
        "ServiceAccount",
        "serviceaccounts",
        &["sa"],
        NS,
        Builtin::ServiceAccount,
    ),
    spec("", "v1", "Event", "events", &["ev"], NS, Builtin::CoreEvent),
    spec(
        "apps",
        "v1",
        "Deployment",
        "deployments",
        &["deploy"],
        NS_WORKLOAD,
        Builtin::Deployment,
    ),
    spec(
        "apps",
        "v1",
        "ReplicaSet",
        "replicasets",
        &["rs"],
        NS_WORKLOAD,
        Builtin::ReplicaSet,
    ),
    spec(
        "apps",
        "v1",
        "StatefulSet",
        "statefulsets",
        &["sts"],
        NS_WORKLOAD,
        Builtin::StatefulSet,
    ),
    spec("batch", "v1", "Job", "jobs", &[], NS_WORKLOAD, Builtin::Job),
    spec(
        "batch",
        "v1",
        "CronJob",
        "cronjobs",
        &["cj"],
        NS_WORKLOAD,
        Builtin::CronJob,
    ),
    spec(
        "policy",
        "v1",
        "PodDisruptionBudget",
        "poddisruptionbudgets",
        &["pdb"],
        (true, true, true, false),
        Builtin::PodDisruptionBudget,
    ),
    spec(
        "rbac.authorization.k8s.io",
        "v1",
        "Role",
        "roles",
        &[],
        NS,
        Builtin::Role,
    ),
    spec(
        "rbac.authorization.k8s.io",
        "v1",
        "RoleBinding",
        "rolebindings",
        &[],
        NS,
        Builtin::RoleBinding,
    ),
    spec(
        "rbac.authorization.k8s.io",
        "v1",
        "ClusterRole",
        "clusterroles",
        &[],
        CLUSTER,
        Builtin::ClusterRole,
    ),
    spec(
        "rbac.authorization.k8s.io",
        "v1",
        "ClusterRoleBinding",
        "clusterrolebindings",
        &[],
        CLUSTER,
        Builtin::ClusterRoleBinding,
    ),
    spec(
        "coordination.k8s.io",
        "v1",
        "Lease",
        "leases",
        &[],
        NS,
        Builtin::Lease,
    ),
    spec(
        "events.k8s.io",
        "v1",
        "Event",
        "events",
        &["ev"],
        NS,
        Builtin::Event,
    ),
    spec(
        "discovery.k8s.io",
        "v1",
        "EndpointSlice",
        "endpointslices",
        &[],
        NS,
        Builtin::EndpointSlice,
    ),
    spec(
        "storage.k8s.io",
        "v1",
        "StorageClass",
        "storageclasses",
        &["sc"],
        CLUSTER,
        Builtin::StorageClass,
    ),
    spec(
        "apiextensions.k8s.io",
        "v1",
        "CustomResourceDefinition",
        "customresourcedefinitions",
        &["crd", "crds"],
        (false, true, true, false),
        Builtin::CustomResourceDefinition,
    ),
];

/// Every built-in resource this server serves.
pub fn builtins() -> Vec<ResourceDef> {
    BUILTINS
        .iter()
        .map(|s| ResourceDef {
            group: s.group.to_string(),
            versions: vec![s.version.to_string()],
            kind: s.kind.to_string(),
            plural: s.plural.to_string(),
            singular: s.kind.to_ascii_lowercase(),
            short_names: s.short.iter().map(|n| n.to_string()).collect(),
            categories: if s.all {
                vec!["all".to_string()]
            } else {
                vec![]
            },
            namespaced: s.namespaced,
            status_subresource: s.status,
            tracks_generation: s.generation,
            builtin: Some(s.builtin),
            crd: None,
            printer_columns: vec![],
        })
        .collect()
}

/// Verbs advertised in discovery for every resource.
pub const VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

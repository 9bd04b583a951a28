//! `PostgresCluster.status`: written only by Capstan.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PostgresClusterStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// One word summary: Creating, Ready, Degraded, Stalled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,

    /// kstatus-compatible conditions: Ready, Reconciling, Stalled, Degraded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,

    /// The instance currently serving as primary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_primary: Option<String>,

    /// The instance that should be primary. Instance managers follow this:
    /// the named one promotes, every other one follows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_primary: Option<String>,

    /// PostgreSQL major version of the data files. Set when the cluster is
    /// created; only a completed major upgrade changes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres_version: Option<i32>,

    /// Instances that are ready.
    #[serde(default)]
    pub ready_instances: i32,

    /// Every instance, primary first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub instances: Vec<InstanceStatus>,

    /// The proxy tier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<ProxyStatus>,

    /// Where clients and tools connect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoints: Option<Endpoints>,

    /// Certificates in use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsStatus>,

    /// Names of the Secrets holding credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets: Option<SecretNames>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Phase {
    /// Children are being created; not every instance is ready yet.
    Creating,
    /// Every instance and pooler replica is ready.
    Ready,
    /// Running, but something is not ready (see conditions).
    Degraded,
    /// The spec cannot be applied; see the Stalled condition for the fix.
    Stalled,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Creating => "Creating",
            Phase::Ready => "Ready",
            Phase::Degraded => "Degraded",
            Phase::Stalled => "Stalled",
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InstanceStatus {
    pub name: String,
    /// `primary` or `replica`.
    pub role: String,
    pub ready: bool,
    /// Pod phase as the kubelet reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_phase: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_ip: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProxyStatus {
    pub replicas: i32,
    pub ready_replicas: i32,
    /// Service clients connect to.
    pub service: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Endpoints {
    /// Through PgBouncer (what applications should use), `host:port`.
    pub pooler: String,
    /// The primary, directly.
    pub read_write: String,
    /// Replicas only.
    pub read_only: String,
    /// Any instance.
    pub read: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TlsStatus {
    /// Secret holding the CA certificate clients should trust (`ca.crt`).
    pub ca_secret: String,
    /// Expiry of the CA certificate (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_not_after: Option<String>,
    /// Expiry of the instances' server certificate (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_not_after: Option<String>,
    /// Expiry of the poolers' server certificate (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pooler_not_after: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretNames {
    pub superuser: String,
    pub app: String,
    pub replication: String,
    pub pooler: String,
}

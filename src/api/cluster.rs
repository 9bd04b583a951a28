//! The `PostgresCluster` custom resource (`capstan.dev/v1alpha1`).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, ResourceRequirements, Toleration, TopologySpreadConstraint,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::backup::{BackupSpec, RestoreSpec};
use super::defaults;
use super::limits;
use super::rules;
use super::status::PostgresClusterStatus;

/// A PostgreSQL cluster: one primary and streaming replicas, each on its own
/// volume, behind a PgBouncer proxy tier.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "capstan.dev",
    version = "v1alpha1",
    kind = "PostgresCluster",
    plural = "postgresclusters",
    shortname = "pgc",
    category = "capstan",
    namespaced,
    status = "PostgresClusterStatus",
    // `kubectl scale pgc/db --replicas=3` and a HorizontalPodAutoscaler set
    // spec.instances; status.selector finds the instance pods.
    scale(
        spec_replicas_path = ".spec.instances",
        status_replicas_path = ".status.readyInstances",
        label_selector_path = ".status.selector"
    ),
    derive = "PartialEq",
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Primary", type_ = "string", json_path = ".status.currentPrimary"),
    printcolumn(name = "Instances", type_ = "integer", json_path = ".spec.instances"),
    printcolumn(name = "Ready Instances", type_ = "integer", json_path = ".status.readyInstances"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = rules::cluster_name(),
    validation = rules::provided_secrets_not_capstans(),
    validation = rules::restore_not_into_source()
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = rules::wal_storage_presence_immutable())]
#[x_kube(validation = rules::bootstrap_immutable())]
#[x_kube(validation = rules::synchronous_fits_instances())]
#[x_kube(validation = rules::backup_needs_image())]
#[x_kube(validation = rules::roles_not_bootstrap())]
#[x_kube(validation = rules::bootstrap_database_kept())]
pub struct PostgresClusterSpec {
    /// Number of PostgreSQL instances (one primary plus `instances - 1`
    /// streaming replicas).
    #[serde(default = "defaults::instances")]
    #[x_kube(validation = rules::instances_range())]
    pub instances: i32,

    /// PostgreSQL version, image and settings.
    pub postgres: PostgresSpec,

    /// Volume for each instance's data directory.
    pub storage: StorageSpec,

    /// Optional separate volume for each instance's WAL (`pg_wal`). Can only
    /// be chosen when the cluster is created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wal_storage: Option<StorageSpec>,

    /// CPU and memory for each PostgreSQL container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "super::schema::resources")]
    pub resources: Option<ResourceRequirements>,

    /// Affinity rules for the instance pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,

    /// Tolerations for the instance pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,

    /// Topology spread constraints for the instance pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topology_spread_constraints: Vec<TopologySpreadConstraint>,

    /// Node selector for the instance pods.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,

    /// The PgBouncer proxy tier clients connect to.
    #[serde(default = "defaults::proxy")]
    pub proxy: ProxySpec,

    /// TLS for every connection: certificates managed by Capstan (default)
    /// or provided by you.
    #[serde(default = "defaults::tls")]
    #[x_kube(validation = rules::tls_mode_consistent())]
    pub tls: TlsSpec,

    /// How the first instance's data is created. Immutable after creation.
    #[serde(default = "defaults::bootstrap")]
    pub bootstrap: BootstrapSpec,

    /// Backups and WAL archiving with pgBackRest; none when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<BackupSpec>,

    /// Replication between the instances.
    #[serde(default)]
    pub replication: ReplicationSpec,

    /// When and how a lost primary is replaced.
    #[serde(default = "defaults::failover")]
    pub failover: FailoverSpec,

    /// How a changed instance pod spec (resources, image, scheduling) is
    /// rolled out: replicas one at a time, then the primary.
    #[serde(default)]
    pub update_strategy: UpdateStrategy,

    /// Roles kept on the primary. An entry removed from the list is left
    /// as it is; `ensure: absent` drops a role.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    #[schemars(length(max = limits::ROLES_MAX))]
    pub roles: Vec<super::roles::RoleSpec>,

    /// Databases kept on the primary. An entry removed from the list is
    /// left as it is; a database is dropped only with `ensure: absent` and
    /// `confirmDrop`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    #[schemars(length(max = limits::DATABASES_MAX))]
    pub databases: Vec<super::roles::DatabaseSpec>,
}

/// How the primary is updated once every replica runs the new pod spec.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UpdateStrategy {
    /// `Switchover` (default): an updated replica becomes the primary
    /// while the poolers hold client queries, then the old primary is
    /// re-created as a replica; clients see a short wait, no error.
    /// `Restart`: the primary's pod is re-created in place (writes stop
    /// until it is back). A single-instance cluster always restarts.
    #[serde(default)]
    pub primary_update_method: PrimaryUpdateMethod,
    /// Update the replicas, then wait: the primary is only touched after
    /// someone asks for a switchover (annotation `capstan.dev/switchover`
    /// or `kubectl capstan switchover`). Status says what it waits for.
    #[serde(default)]
    pub supervised: bool,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum PrimaryUpdateMethod {
    #[default]
    Switchover,
    Restart,
}

/// Replication between the instances.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplicationSpec {
    /// Synchronous replication: a commit returns only once enough replicas
    /// have it, so a failover loses no acknowledged transaction.
    #[serde(default)]
    pub synchronous: SynchronousSpec,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = rules::synchronous_number())]
pub struct SynchronousSpec {
    /// `off` (asynchronous), `quorum` (any `number` replicas confirm each
    /// commit) or `priority` (the first `number` replicas in instance order).
    #[serde(default)]
    pub mode: SynchronousMode,
    /// Replicas that must confirm a commit: 1 to instances - 1 when `mode`
    /// is `quorum` or `priority`; unset (0) when it is `off`.
    #[serde(default)]
    pub number: i32,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SynchronousMode {
    #[default]
    Off,
    Quorum,
    Priority,
}

/// Failure detection and promotion.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FailoverSpec {
    /// Seconds without a renewal of the primary's Lease after which another
    /// instance is promoted (2 to 60). The primary stops accepting writes
    /// after half of it, so two writable primaries never coexist.
    #[serde(default = "defaults::detection_seconds")]
    #[x_kube(validation = rules::detection_seconds())]
    pub detection_seconds: i32,
    /// A replica that received this many bytes of WAL fewer than the lost
    /// primary last reported is not promoted (it would lose those
    /// transactions) unless `allowDataLoss` is true.
    #[serde(default = "defaults::max_lag_bytes")]
    #[x_kube(validation = rules::max_lag_bytes())]
    pub max_lag_bytes: i64,
    /// Promote the best replica even when it is behind by more than
    /// `maxLagBytes` (availability over durability).
    #[serde(default)]
    pub allow_data_loss: bool,
}

/// PostgreSQL version, image and configuration.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PostgresSpec {
    /// PostgreSQL major version (14 to 18). Raising it upgrades the cluster
    /// (pg_upgrade); it may be lowered only back to the version the data
    /// is still at (`status.postgresVersion`), e.g. after a failed upgrade.
    #[x_kube(validation = rules::version_supported())]
    pub version: i32,

    /// Container image; defaults to the official `postgres:<version>-bookworm`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = limits::IMAGE_MAX))]
    pub image: Option<String>,

    /// `postgresql.conf` settings. Settings Capstan manages itself (listen
    /// address, port, TLS files, WAL and replication settings, …) are refused.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = limits::POSTGRES_PARAMETERS_MAX, "additionalProperties" = {"type": "string", "maxLength": limits::POSTGRES_PARAMETER_VALUE_MAX}))]
    #[x_kube(validation = rules::parameter_names())]
    #[x_kube(validation = rules::parameter_values_single_line())]
    #[x_kube(validation = rules::postgres_parameters_not_managed())]
    pub parameters: BTreeMap<String, String>,

    /// Extra `pg_hba.conf` lines, each a single `hostssl` rule. They are
    /// placed after Capstan's own rules (replication, pooler, superuser) and
    /// before the default `hostssl all all all scram-sha-256`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = limits::HBA_LINES_MAX), inner(length(max = limits::HBA_LINE_MAX)))]
    #[x_kube(validation = rules::hba_lines())]
    pub hba: Vec<String>,
}

/// A persistent volume for each instance.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = rules::storage_size_valid())]
#[x_kube(validation = rules::storage_size_not_shrunk())]
#[x_kube(validation = rules::storage_class_immutable())]
#[x_kube(validation = rules::auto_grow_limit_not_below_size())]
pub struct StorageSpec {
    /// Volume size, e.g. `20Gi`. May grow (when the StorageClass allows
    /// expansion), never shrink.
    #[schemars(schema_with = "super::schema::quantity")]
    pub size: Quantity,

    /// StorageClass of the volumes; the cluster default when empty.
    /// Immutable: existing volumes cannot move to another class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = limits::OBJECT_NAME_MAX), pattern(limits::DNS_SUBDOMAIN_PATTERN))]
    pub storage_class_name: Option<String>,

    /// What happens to the volumes when the cluster is deleted or scaled down.
    #[serde(default = "defaults::pvc_retention")]
    pub retention: PvcRetentionPolicy,

    /// Grow the volumes before they fill: when an instance reports its
    /// file system more than `threshold` percent full, its claim is raised
    /// by `increment`, never past `limit`. `spec` is not written: the size
    /// in use shows in `status.instances[].volumes`, and a smaller `size`
    /// later never shrinks a volume. Needs a StorageClass that allows
    /// volume expansion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_grow: Option<AutoGrowSpec>,
}

/// When and how far a volume grows by itself.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = rules::auto_grow_quantities())]
pub struct AutoGrowSpec {
    /// Percent of the file system in use that triggers growth (50 to 95,
    /// default 80).
    #[serde(default = "defaults::auto_grow_threshold")]
    #[x_kube(validation = rules::auto_grow_threshold())]
    pub threshold: i32,
    /// How much each growth adds, e.g. `5Gi`.
    #[schemars(schema_with = "super::schema::quantity")]
    pub increment: Quantity,
    /// The largest the volume may become, e.g. `100Gi`; at the limit the
    /// cluster is `Degraded` with a Warning Event.
    #[schemars(schema_with = "super::schema::quantity")]
    pub limit: Quantity,
}

/// Whether volumes outlive the instances that used them.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PvcRetentionPolicy {
    /// When the `PostgresCluster` is deleted (default `Retain`: deleting the
    /// resource by mistake never deletes the data).
    #[serde(default = "defaults::when_deleted")]
    pub when_deleted: RetentionRule,
    /// When `instances` is lowered (default `Delete`: a removed replica only
    /// held a copy).
    #[serde(default = "defaults::when_scaled")]
    pub when_scaled: RetentionRule,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum RetentionRule {
    Retain,
    Delete,
}

/// The proxy tier.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProxySpec {
    /// PgBouncer in front of the primary.
    #[serde(default = "defaults::pgbouncer")]
    pub pgbouncer: PgBouncerSpec,
}

/// PgBouncer settings.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PgBouncerSpec {
    /// Number of PgBouncer pods (1 to 32).
    #[serde(default = "defaults::pooler_replicas")]
    #[x_kube(validation = rules::pooler_replicas_range())]
    pub replicas: i32,

    /// When a server connection is returned to the pool.
    #[serde(default = "defaults::pool_mode")]
    pub pool_mode: PoolMode,

    /// `max_client_conn`: client connections each PgBouncer accepts.
    #[serde(default = "defaults::max_client_conn")]
    #[x_kube(validation = rules::pool_size("maxClientConn"))]
    pub max_client_conn: i32,

    /// `default_pool_size`: server connections per user/database pair.
    #[serde(default = "defaults::default_pool_size")]
    #[x_kube(validation = rules::pool_size("defaultPoolSize"))]
    pub default_pool_size: i32,

    /// Other `[pgbouncer]` settings. Settings Capstan manages (listen
    /// address, authentication, TLS, pool mode and sizes, …) are refused.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = limits::PGBOUNCER_PARAMETERS_MAX, "additionalProperties" = {"type": "string", "maxLength": limits::PGBOUNCER_PARAMETER_VALUE_MAX}))]
    #[x_kube(validation = rules::parameter_names())]
    #[x_kube(validation = rules::parameter_values_single_line())]
    #[x_kube(validation = rules::pgbouncer_parameters_not_managed())]
    pub parameters: BTreeMap<String, String>,

    /// Container image; defaults to a stock PgBouncer image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = limits::IMAGE_MAX))]
    pub image: Option<String>,

    /// CPU and memory for each PgBouncer container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "super::schema::resources")]
    pub resources: Option<ResourceRequirements>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PoolMode {
    Session,
    Transaction,
    Statement,
}

impl PoolMode {
    pub fn as_str(self) -> &'static str {
        match self {
            PoolMode::Session => "session",
            PoolMode::Transaction => "transaction",
            PoolMode::Statement => "statement",
        }
    }
}

/// TLS configuration.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TlsSpec {
    /// `Managed`: Capstan runs a CA for this cluster and issues every
    /// certificate. `Provided`: you supply the secrets named in `provided`.
    #[serde(default = "defaults::tls_mode")]
    pub mode: TlsMode,

    /// Secrets to use when `mode` is `Provided` (required then, and only then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provided: Option<ProvidedTls>,

    /// Lifetimes of the certificates Capstan issues (with `Provided`, the
    /// agents' and the operator's). Certificates are re-issued and
    /// reloaded with no restart; the CA is replaced with an overlap in
    /// which clients trust both.
    #[serde(default = "defaults::certificates")]
    pub certificates: CertificateLifetimes,
}

/// How long certificates live and when they are replaced. Each value is a
/// whole number of seconds (s), minutes (m) or hours (h), e.g. `8760h`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = rules::renew_before_lifetime("renewBefore", "duration"))]
#[x_kube(validation = rules::renew_before_lifetime("caRenewBefore", "caDuration"))]
#[x_kube(validation = rules::ca_overlap())]
pub struct CertificateLifetimes {
    /// Lifetime of a server or client certificate (default 8760h, a
    /// year). Never past its CA's own expiry.
    #[serde(default = "defaults::leaf_duration")]
    #[schemars(length(min = 2, max = 16))]
    #[x_kube(validation = rules::lifetime("duration"))]
    pub duration: String,

    /// A certificate is re-issued this long before it expires (default
    /// 720h, 30 days).
    #[serde(default = "defaults::leaf_renew_before")]
    #[schemars(length(min = 2, max = 16))]
    #[x_kube(validation = rules::lifetime("renewBefore"))]
    pub renew_before: String,

    /// Lifetime of the cluster CA (default 43800h, five years).
    #[serde(default = "defaults::ca_duration")]
    #[schemars(length(min = 2, max = 16))]
    #[x_kube(validation = rules::lifetime("caDuration"))]
    pub ca_duration: String,

    /// The next CA is created and trusted this long before the current
    /// one expires (default 2160h, 90 days). Certificates move to it
    /// `renewBefore` before the old CA expires, once every pod trusts it;
    /// until then clients holding only the old `ca.crt` keep verifying.
    #[serde(default = "defaults::ca_renew_before")]
    #[schemars(length(min = 2, max = 16))]
    #[x_kube(validation = rules::lifetime("caRenewBefore"))]
    pub ca_renew_before: String,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum TlsMode {
    Managed,
    Provided,
}

/// User-provided certificates. Each named Secret holds `tls.crt` and
/// `tls.key` (type `kubernetes.io/tls`); the CA Secret holds `ca.crt`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProvidedTls {
    /// Secret with `ca.crt`: the CA that signed every certificate below.
    #[schemars(length(min = 1, max = limits::OBJECT_NAME_MAX), pattern(limits::DNS_SUBDOMAIN_PATTERN))]
    pub ca_secret_name: String,
    /// Server certificate for the instances; its SANs must cover the
    /// `<name>-rw`, `<name>-ro` and `<name>-r` Services.
    #[schemars(length(min = 1, max = limits::OBJECT_NAME_MAX), pattern(limits::DNS_SUBDOMAIN_PATTERN))]
    pub server_secret_name: String,
    /// Client certificate with common name `streaming_replica`.
    #[schemars(length(min = 1, max = limits::OBJECT_NAME_MAX), pattern(limits::DNS_SUBDOMAIN_PATTERN))]
    pub replication_secret_name: String,
    /// Server certificate for the poolers; its SANs must cover the
    /// `<name>-pooler` Service.
    #[schemars(length(min = 1, max = limits::OBJECT_NAME_MAX), pattern(limits::DNS_SUBDOMAIN_PATTERN))]
    pub pooler_secret_name: String,
}

/// How the cluster's data is first created: `initdb` (the default) or
/// `restore`, not both.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = rules::bootstrap_one_method())]
pub struct BootstrapSpec {
    /// Create a new, empty cluster with `initdb`. Used, with its
    /// defaults, when neither `initdb` nor `restore` is set.
    // No schema default here: one would be filled in next to `restore`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initdb: Option<InitdbSpec>,

    /// Create the cluster from a pgBackRest backup, to the latest point or
    /// to a target (point-in-time recovery, clones).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore: Option<RestoreSpec>,
}

impl BootstrapSpec {
    /// The `initdb` settings, defaults filled in when none are given. A
    /// restored cluster has them too: its application database and owner
    /// are in the backup, named by `restore.database`/`owner`.
    pub fn initdb_or_default(&self) -> InitdbSpec {
        let mut initdb = self.initdb.clone().unwrap_or_else(defaults::initdb);
        if let Some(restore) = &self.restore {
            if let Some(database) = &restore.database {
                initdb.database = database.clone();
            }
            if let Some(owner) = &restore.owner {
                initdb.owner = owner.clone();
            }
        }
        initdb
    }
}

/// `initdb` settings and the application database.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct InitdbSpec {
    /// Application database to create.
    #[serde(default = "defaults::database")]
    #[schemars(length(max = limits::SQL_IDENTIFIER_MAX))]
    #[x_kube(validation = rules::sql_identifier("spec.bootstrap.initdb.database"))]
    pub database: String,
    /// Owner of the application database; its password is in the
    /// `<name>-app` Secret.
    #[serde(default = "defaults::owner")]
    #[schemars(length(max = limits::SQL_IDENTIFIER_MAX))]
    #[x_kube(validation = rules::sql_identifier("spec.bootstrap.initdb.owner"))]
    pub owner: String,
    /// Database encoding, e.g. `UTF8` or `LATIN1`.
    #[serde(default = "defaults::encoding")]
    #[schemars(length(min = 1, max = limits::ENCODING_MAX), pattern(limits::ENCODING_PATTERN))]
    pub encoding: String,
    /// Locale (`LC_COLLATE`, `LC_CTYPE`), e.g. `C.UTF-8` or `en_US.UTF-8`.
    #[serde(default = "defaults::locale")]
    #[schemars(length(min = 1, max = limits::LOCALE_MAX), pattern(limits::LOCALE_PATTERN))]
    pub locale: String,
    /// Page checksums (recommended; also lets `pg_rewind` work).
    #[serde(default = "defaults::data_checksums")]
    pub data_checksums: bool,
}

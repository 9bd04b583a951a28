//! Admission rules: CEL `x-kubernetes-validations` embedded in the CRD.
//!
//! The API server evaluates them, so a bad spec is refused at `kubectl apply`
//! time with the message below instead of reaching the operator. Each rule is
//! unit-tested in `tests` against the generated CRD with kube's local CEL
//! evaluator (the same rule text the API server gets).

use std::ops::RangeInclusive;

use kube::core::{Message, Reason, Rule};

use super::limits;

use crate::pooler::managed as pgbouncer_managed;
use crate::postgres::parameters as postgres_managed;

/// Child objects are named `<name>-pooler`, `<name>-rw`, … and Services must
/// be DNS-1035 labels (≤ 63 characters, starting with a letter).
pub fn cluster_name() -> Rule {
    let max = limits::CLUSTER_NAME_MAX;
    Rule::new(format!("self.metadata.name.size() <= {max} && self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')"))
        .message(Message::Message(format!("metadata.name must be at most {max} characters of lowercase letters, digits and '-', starting with a letter (it prefixes Service names such as <name>-pooler)")))
        .reason(Reason::FieldValueInvalid)
}

/// `self` within `range`, refused with "`field` must be between …".
fn within(field: &str, range: &RangeInclusive<i32>) -> Rule {
    let (min, max) = (range.start(), range.end());
    Rule::new(format!("self >= {min} && self <= {max}"))
        .message(Message::Message(format!(
            "{field} must be between {min} and {max}"
        )))
        .reason(Reason::FieldValueInvalid)
}

/// One primary plus up to eight replicas. Beyond that, cascading replication
/// or a second cluster serves better than one WAL sender fan-out.
pub fn instances_range() -> Rule {
    within("spec.instances", &limits::INSTANCES)
}

pub fn version_supported() -> Rule {
    let versions = limits::POSTGRES_VERSIONS;
    Rule::new(format!(
        "self >= {} && self <= {}",
        versions.start(),
        versions.end()
    ))
    .message(Message::Message(format!(
        "spec.postgres.version must be a supported PostgreSQL major version: {}",
        limits::spelled(&versions)
    )))
    .reason(Reason::FieldValueInvalid)
}

pub fn parameter_names() -> Rule {
    Rule::new("self.all(k, k.matches('^[A-Za-z_][A-Za-z0-9_.]*$'))")
        .message("parameter names may contain only letters, digits, '_' and '.' (e.g. work_mem, pg_stat_statements.max)")
        .reason(Reason::FieldValueInvalid)
}

/// A newline in a value would let it inject further settings into the
/// rendered configuration file.
pub fn parameter_values_single_line() -> Rule {
    Rule::new("self.all(k, !self[k].contains('\\n') && !self[k].contains('\\r'))")
        .message("parameter values must be a single line")
        .reason(Reason::FieldValueInvalid)
}

fn cel_string_list(names: &[&str]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("'{n}'")).collect();
    format!("[{}]", quoted.join(", "))
}

/// The message names the first managed key found: a `join` of every one
/// is over the API server's CEL cost budget (map keys have no length bound),
/// and the real API server then refuses the whole CRD.
fn not_managed(field: &str, names: &[&str]) -> Rule {
    let list = cel_string_list(names);
    Rule::new(format!("self.all(k, !(k.lowerAscii() in {list}))"))
        .message(Message::Expression(format!(
            "'{field}: ' + self.filter(k, k.lowerAscii() in {list})[0] + ' is managed by Capstan and may not be set; remove it'"
        )))
        .reason(Reason::FieldValueForbidden)
}

pub fn postgres_parameters_not_managed() -> Rule {
    not_managed("spec.postgres.parameters", postgres_managed::MANAGED)
}

pub fn pgbouncer_parameters_not_managed() -> Rule {
    not_managed(
        "spec.proxy.pgbouncer.parameters",
        pgbouncer_managed::MANAGED,
    )
}

/// Secrets Capstan creates for a cluster whatever its TLS mode (credentials,
/// its own CA for the agents, the agent and operator certificates). A
/// provided Secret with one of these names would be taken for Capstan's own:
/// `<name>-pooler` as a pooler certificate left the poolers without their
/// credentials, and the cluster never became Ready.
pub fn provided_secrets_not_capstans() -> Rule {
    let owned = limits::OWN_SECRET_SUFFIXES
        .iter()
        .map(|suffix| format!("self.metadata.name + '-{suffix}'"))
        .collect::<Vec<_>>()
        .join(", ");
    let free = [
        "caSecretName",
        "serverSecretName",
        "replicationSecretName",
        "poolerSecretName",
    ]
    .map(|field| format!("!(self.spec.tls.provided.{field} in [{owned}])"))
    .join(" && ");
    Rule::new(format!(
        "!has(self.spec.tls) || !has(self.spec.tls.provided) || ({free})"
    ))
    .message(Message::Message(provided_name_message()))
    .reason(Reason::FieldValueInvalid)
}

/// Why a provided Secret may not take one of Capstan's names, and the fix
/// (the CEL rule's message and the operator's, for objects admitted before
/// the rule covered the `-tls` names).
fn provided_name_message() -> String {
    format!(
        "spec.tls.provided: a Secret name is one Capstan uses for this cluster's own Secrets (<name>-{}); name your certificate Secrets differently, e.g. <name>-pooler-cert",
        limits::OWN_SECRET_SUFFIXES.join(", -")
    )
}

/// Capstan serves PostgreSQL over TLS only; extra rules may narrow or
/// widen access but never open a plain-text path.
pub fn hba_lines() -> Rule {
    Rule::new("self.all(l, l.matches('^hostssl[ \\t]') && !l.contains('\\n') && !l.contains('\\r'))")
        .message("spec.postgres.hba entries must be single-line 'hostssl ...' rules: Capstan accepts TLS connections only")
        .reason(Reason::FieldValueInvalid)
}

pub fn storage_size_valid() -> Rule {
    Rule::new(
        "isQuantity(string(self.size)) && quantity(string(self.size)).isGreaterThan(quantity('0'))",
    )
    .message("size must be a positive quantity such as 10Gi")
    .field_path(".size")
    .reason(Reason::FieldValueInvalid)
}

/// A PersistentVolumeClaim can grow but never shrink.
pub fn storage_size_not_shrunk() -> Rule {
    Rule::new("quantity(string(self.size)).compareTo(quantity(string(oldSelf.size))) >= 0")
        .message("size may not be decreased: volumes can only grow; to use smaller volumes, create a new cluster from a backup")
        .field_path(".size")
        .reason(Reason::FieldValueForbidden)
}

pub fn auto_grow_threshold() -> Rule {
    within("storage.autoGrow.threshold", &limits::AUTO_GROW_THRESHOLD)
}

/// A positive increment and a limit no smaller than the volume's size.
pub fn auto_grow_quantities() -> Rule {
    Rule::new(
        "isQuantity(string(self.increment)) && quantity(string(self.increment)).isGreaterThan(quantity('0')) && isQuantity(string(self.limit))",
    )
    .message("autoGrow.increment must be a positive quantity such as 5Gi, and autoGrow.limit a quantity such as 100Gi")
    .reason(Reason::FieldValueInvalid)
}

/// The limit of growth is at least the size asked for.
pub fn auto_grow_limit_not_below_size() -> Rule {
    Rule::new(
        "!has(self.autoGrow) || !isQuantity(string(self.size)) || !isQuantity(string(self.autoGrow.limit)) || quantity(string(self.autoGrow.limit)).compareTo(quantity(string(self.size))) >= 0",
    )
    .message("autoGrow.limit must be at least size: the volume never grows past it")
    .field_path(".autoGrow.limit")
    .reason(Reason::FieldValueInvalid)
}

/// A PersistentVolumeClaim's class is immutable.
pub fn storage_class_immutable() -> Rule {
    Rule::new("has(self.storageClassName) == has(oldSelf.storageClassName) && (!has(self.storageClassName) || self.storageClassName == oldSelf.storageClassName)")
        .message("storageClassName is immutable: existing volumes cannot move to another StorageClass")
        .field_path(".storageClassName")
        .reason(Reason::FieldValueForbidden)
}

/// Moving `pg_wal` onto or off a separate volume would need every instance
/// re-created; refuse it rather than half-apply it.
pub fn wal_storage_presence_immutable() -> Rule {
    Rule::new("has(self.walStorage) == has(oldSelf.walStorage)")
        .message("spec.walStorage can only be chosen when the cluster is created; it may be resized but not added or removed")
        .field_path(".walStorage")
        .reason(Reason::FieldValueForbidden)
}

/// The bootstrap method only matters once; changing it later would suggest
/// the data could be re-created, which Capstan never does.
pub fn bootstrap_immutable() -> Rule {
    Rule::new("has(self.bootstrap) == has(oldSelf.bootstrap) && (!has(self.bootstrap) || self.bootstrap == oldSelf.bootstrap)")
        .message("spec.bootstrap is immutable after the cluster is created")
        .field_path(".bootstrap")
        .reason(Reason::FieldValueForbidden)
}

pub fn tls_mode_consistent() -> Rule {
    Rule::new("self.mode == 'Provided' ? has(self.provided) : !has(self.provided)")
        .message("spec.tls.provided must be set when spec.tls.mode is Provided, and only then")
        .reason(Reason::FieldValueInvalid)
}

/// `number` is set exactly when the mode is not `off`: a number left with
/// `mode: off` would read as if commits were still confirmed.
pub fn synchronous_number() -> Rule {
    let min = limits::SYNCHRONOUS_NUMBER_MIN;
    Rule::new(format!(
        "self.mode == 'off' ? self.number == 0 : self.number >= {min}"
    ))
    .message(Message::Message(format!(
        "spec.replication.synchronous.number must be at least {min} when mode is quorum or priority, and unset (0) when mode is off"
    )))
    .field_path(".number")
    .reason(Reason::FieldValueInvalid)
}

/// Waiting for more replicas than exist would block every commit.
/// Stock PostgreSQL images carry no pgBackRest, so the default image
/// cannot archive, back up or restore: the image is named on purpose.
pub fn backup_needs_image() -> Rule {
    Rule::new("(!has(self.backup) && !(has(self.bootstrap) && has(self.bootstrap.restore))) || has(self.postgres.image)")
        .message("spec.backup and spec.bootstrap.restore need spec.postgres.image: an image with pgBackRest 2.55 or newer (the stock PostgreSQL images have none; images/postgres/Dockerfile builds one on the official image)")
        .field_path(".postgres.image")
        .reason(Reason::FieldValueRequired)
}

pub fn synchronous_fits_instances() -> Rule {
    Rule::new("!has(self.replication) || !has(self.replication.synchronous) || self.replication.synchronous.mode == 'off' || self.replication.synchronous.number <= self.instances - 1")
        .message("spec.replication.synchronous.number must be at most spec.instances - 1 (the number of replicas); raise instances or lower number")
        .field_path(".replication.synchronous.number")
        .reason(Reason::FieldValueInvalid)
}

pub fn max_lag_bytes() -> Rule {
    Rule::new(format!("self >= {}", limits::MAX_LAG_BYTES_MIN))
        .message("spec.failover.maxLagBytes must not be negative")
        .reason(Reason::FieldValueInvalid)
}

pub fn detection_seconds() -> Rule {
    within("spec.failover.detectionSeconds", &limits::DETECTION_SECONDS)
}

pub fn pooler_replicas_range() -> Rule {
    within("spec.proxy.pgbouncer.replicas", &limits::POOLER_REPLICAS)
}

/// `maxClientConn` and `defaultPoolSize`.
pub fn pool_size(field: &str) -> Rule {
    let min = limits::POOL_SIZE_MIN;
    Rule::new(format!("self >= {min}"))
        .message(Message::Message(format!(
            "spec.proxy.pgbouncer.{field} must be at least {min}"
        )))
        .reason(Reason::FieldValueInvalid)
}

/// Names are used unquoted in generated SQL and in connection strings;
/// keeping them to plain identifiers avoids quoting surprises for users.
pub fn sql_identifier(field: &str) -> Rule {
    let max = limits::SQL_IDENTIFIER_MAX;
    Rule::new(format!("{} && !(self in ['postgres', 'template0', 'template1', 'streaming_replica', 'capstan_pooler'])", identifier("self")))
        .message(Message::Message(format!(
            "{field} must be a lowercase SQL identifier (letters, digits, '_', at most {max}) and not a name Capstan reserves (postgres, template0, template1, streaming_replica, capstan_pooler)"
        )))
        .reason(Reason::FieldValueInvalid)
}

// --- Roles and databases -----------------------------------------------

/// `self.matches(…)` of a plain lowercase SQL identifier, on `var`.
fn identifier(var: &str) -> String {
    format!(
        "{var}.matches('^[a-z_][a-z0-9_]{{0,{}}}$')",
        limits::SQL_IDENTIFIER_MAX - 1
    )
}

/// A role Capstan may create: a plain identifier, none PostgreSQL reserves
/// (`pg_*`, `public`, …) and none Capstan manages.
pub fn role_name(field: &str) -> Rule {
    let max = limits::SQL_IDENTIFIER_MAX;
    let reserved = [limits::MANAGED_ROLES, limits::POSTGRES_RESERVED_ROLES].concat();
    Rule::new(format!(
        "{} && !self.startsWith('pg_') && !(self in {})",
        identifier("self"),
        cel_string_list(&reserved)
    ))
    .message(Message::Message(format!(
        "{field} must be a lowercase SQL identifier (letters, digits, '_', at most {max}), not start with pg_ and not be one of {}: those are reserved by PostgreSQL or managed by Capstan",
        reserved.join(", ")
    )))
    .reason(Reason::FieldValueInvalid)
}

/// Granting a role Capstan manages would hand out its privileges (the
/// superuser's, replication, the pooler's password lookup).
pub fn member_of() -> Rule {
    Rule::new(format!(
        "self.all(r, {} && !(r in {}))",
        identifier("r"),
        cel_string_list(limits::MANAGED_ROLES)
    ))
    .message(Message::Message(format!(
        "spec.roles[].inRoles must list lowercase role names, none of {}: membership in a role Capstan manages would grant its privileges",
        limits::MANAGED_ROLES.join(", ")
    )))
    .reason(Reason::FieldValueInvalid)
}

pub fn connection_limit() -> Rule {
    Rule::new("self >= -1")
        .message("spec.roles[].connectionLimit must be -1 (no limit) or more")
        .reason(Reason::FieldValueInvalid)
}

pub fn extension_names() -> Rule {
    Rule::new(format!(
        "self.all(e, e.matches({}))",
        cel_literal(limits::EXTENSION_NAME_PATTERN)
    ))
    .message("spec.databases[].extensions must list extension names (lowercase letters, digits, '_' and '-')")
    .reason(Reason::FieldValueInvalid)
}

/// Dropping a database loses its data: `ensure: absent` alone only reports
/// it; `confirmDrop` with the same name drops it.
pub fn confirm_drop_repeats_name() -> Rule {
    Rule::new("!has(self.confirmDrop) || (self.confirmDrop == self.name && has(self.ensure) && self.ensure == 'absent')")
        .message("spec.databases[].confirmDrop must repeat the database's name and goes with ensure: absent; remove it to keep the database")
        .reason(Reason::FieldValueInvalid)
}

/// The bootstrap owner is Capstan's (its password is `<name>-app`), and the
/// bootstrap database may be listed for its extensions but not dropped.
pub fn roles_not_bootstrap() -> Rule {
    Rule::new(format!(
        "!has(self.roles) || self.roles.all(r, r.name != {})",
        bootstrap_field("owner")
    ))
    .message("spec.roles may not list the bootstrap owner (spec.bootstrap.initdb.owner): Capstan manages it and its password is in the <name>-app Secret")
    .reason(Reason::FieldValueInvalid)
}

/// The bootstrap `owner` or `database` as CEL: initdb's, else a restore's,
/// else the default (see `BootstrapSpec::initdb_or_default`).
fn bootstrap_field(field: &str) -> String {
    let default = match field {
        "owner" => super::defaults::owner(),
        _ => super::defaults::database(),
    };
    format!(
        "(has(self.bootstrap) && has(self.bootstrap.initdb) ? self.bootstrap.initdb.{field} : (has(self.bootstrap) && has(self.bootstrap.restore) && has(self.bootstrap.restore.{field}) ? self.bootstrap.restore.{field} : '{default}'))"
    )
}

pub fn bootstrap_database_kept() -> Rule {
    Rule::new(format!(
        "!has(self.databases) || self.databases.all(d, d.name != {} || !has(d.ensure) || d.ensure == 'present')",
        bootstrap_field("database")
    ))
    .message("spec.databases: the bootstrap database (spec.bootstrap.initdb.database) may not be ensure: absent; delete the cluster to remove it")
    .reason(Reason::FieldValueInvalid)
}

// --- Backup and restore -------------------------------------------------

/// `pattern` as a single-quoted CEL string literal.
fn cel_literal(pattern: &str) -> String {
    format!("'{}'", pattern.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// `field` matches `pattern`, refused with `message`.
fn matching(pattern: &str, message: String) -> Rule {
    Rule::new(format!("self.matches({})", cel_literal(pattern)))
        .message(Message::Message(message))
        .reason(Reason::FieldValueInvalid)
}

/// The kinds a repository can be; each names a field of the repository.
const REPOSITORY_KINDS: [&str; 4] = ["s3", "azure", "gcs", "volume"];

/// A repository is exactly one kind: two would leave pgBackRest (and the
/// reader) guessing which one is meant. `named` repositories (the list
/// under `spec.backup`) say which entry is wrong.
pub fn exactly_one_repository_kind(field: &str, named: bool) -> Rule {
    let count = REPOSITORY_KINDS
        .map(|k| format!("(has(self.{k}) ? 1 : 0)"))
        .join(" + ");
    let fix = "set exactly one of s3, azure, gcs or volume";
    let message = if named {
        Message::Expression(format!("'{field}[' + self.name + ']: {fix}'"))
    } else {
        Message::Message(format!("{field}: {fix}"))
    };
    Rule::new(format!("{count} == 1"))
        .message(message)
        .reason(Reason::FieldValueInvalid)
}

/// `repo1`…`repo4`: pgBackRest's own numbering, so `--repo=2` in a log and
/// `repo2` in the spec are the same repository.
pub fn repository_name(field: &str) -> Rule {
    matching(
        limits::REPOSITORY_NAME_PATTERN,
        format!(
            "{field} must be repo1, repo2, repo3 or repo4 (pgBackRest numbers its repositories); rename it"
        ),
    )
}

/// pgBackRest always speaks HTTPS to object stores and takes the host
/// (and port) alone; a URL would be read as a host name.
pub fn endpoint(field: &str) -> Rule {
    matching(
        limits::ENDPOINT_PATTERN,
        format!(
            "{field} must be host or host:port without a scheme (pgBackRest always uses HTTPS), e.g. s3.eu-west-1.amazonaws.com or minio.storage.svc:9000"
        ),
    )
}

/// Path-style Azure URIs are for emulators: without an endpoint pgBackRest
/// would send `blob.core.windows.net/<account>/...`, which Azure refuses.
pub fn azure_path_style_needs_endpoint() -> Rule {
    Rule::new("!has(self.uriStyle) || self.uriStyle != 'path' || has(self.endpoint)")
        .message("azure.uriStyle path puts the account in the path, which only emulators such as Azurite accept: set azure.endpoint to the emulator's host:port, or use uriStyle host for Azure")
        .reason(Reason::FieldValueInvalid)
}

/// An absolute path of plain segments: `..` could climb into another
/// cluster's repository.
pub fn repository_path() -> Rule {
    Rule::new(format!(
        "self.matches({}) && !self.matches('(^|/)[.][.]?(/|$)')",
        cel_literal(limits::REPOSITORY_PATH_PATTERN)
    ))
    .message("repository path must be absolute, e.g. /capstan/ns/db: segments of letters, digits, '_', '.' and '-', none of them '.' or '..'")
    .reason(Reason::FieldValueInvalid)
}

/// `retention.full` and `retention.differential`: keeping no backup would
/// expire the one just taken.
pub fn retention(field: &str) -> Rule {
    within(
        &format!("spec.backup.repositories[].retention.{field}"),
        &limits::RETENTION,
    )
}

/// Every schedule names a repository that exists (the default, the first
/// repository, always does).
pub fn schedule_repository_exists() -> Rule {
    Rule::new("!has(self.schedules) || self.schedules.all(s, !has(s.repository) || self.repositories.exists(r, r.name == s.repository))")
        .message("spec.backup.schedules[].repository must name one of spec.backup.repositories; add that repository or fix the name")
        .field_path(".schedules")
        .reason(Reason::FieldValueInvalid)
}

/// A standby taking a backup reaches the primary through pgBackRest's
/// server; pgBackRest cannot reach a repository host from there too.
pub fn standby_backups_need_object_stores() -> Rule {
    Rule::new("!has(self.target) || self.target != 'preferReplica' || !self.repositories.exists(r, has(r.volume))")
        .message("spec.backup.target: preferReplica cannot be combined with a volume repository (pgBackRest cannot reach both the primary's server and the repository host from a standby); set target: primary, or use s3, azure or gcs repositories")
        .field_path(".target")
        .reason(Reason::FieldValueInvalid)
}

/// A DNS label: it prefixes the names of the `PostgresBackup` objects the
/// schedule creates.
pub fn schedule_name() -> Rule {
    matching(
        "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
        format!(
            "spec.backup.schedules[].name must be at most {} lowercase letters, digits and '-' (it prefixes PostgresBackup names)",
            limits::SCHEDULE_NAME_MAX
        ),
    )
}

/// Five cron fields. Only the shape is checked here (a field's range needs
/// a parser); the operator reports a field out of range as Stalled.
pub fn cron() -> Rule {
    matching(
        limits::CRON_PATTERN,
        "spec.backup.schedules[].schedule must be a cron expression of five fields in UTC (minute hour day-of-month month day-of-week), e.g. '0 1 * * 0'; seconds and @-macros are not accepted".into(),
    )
}

pub fn archive_timeout() -> Rule {
    let range = limits::ARCHIVE_TIMEOUT_SECONDS;
    Rule::new(format!(
        "self.matches('^[1-9][0-9]{{0,4}}(s|m|h)$') && duration(self) >= duration('{}s') && duration(self) <= duration('{}s')",
        range.start(),
        range.end()
    ))
    .message(Message::Message(format!(
        "spec.backup.archive.timeout must be a whole number of seconds (s), minutes (m) or hours (h) from {}s to {}s, e.g. 60s or 5m",
        range.start(),
        range.end()
    )))
    .reason(Reason::FieldValueInvalid)
}

/// A certificate lifetime: `s`, `m` or `h`, one minute to a hundred years
/// (CEL durations end near 290 years).
pub fn lifetime(field: &str) -> Rule {
    let range = limits::CERTIFICATE_SECONDS;
    Rule::new(format!(
        "self.matches('^[1-9][0-9]{{0,6}}(s|m|h)$') && duration(self) >= duration('{}s') && duration(self) <= duration('{}s')",
        range.start(),
        range.end()
    ))
    .message(Message::Message(format!(
        "spec.tls.certificates.{field} must be a whole number of seconds (s), minutes (m) or hours (h) from 1m to 876000h, e.g. 8760h"
    )))
    .reason(Reason::FieldValueInvalid)
}

/// Renewal must start while the certificate is still valid.
pub fn renew_before_lifetime(renew: &str, lifetime: &str) -> Rule {
    Rule::new(format!(
        "!self.{renew}.matches('^[1-9][0-9]{{0,6}}(s|m|h)$') || !self.{lifetime}.matches('^[1-9][0-9]{{0,6}}(s|m|h)$') || duration(self.{renew}) < duration(self.{lifetime})"
    ))
    .message(Message::Message(format!(
        "spec.tls.certificates.{renew} must be shorter than {lifetime}"
    )))
    .reason(Reason::FieldValueInvalid)
}

/// The next CA is trusted before certificates move to it: the overlap is
/// `caRenewBefore - renewBefore`.
pub fn ca_overlap() -> Rule {
    Rule::new(
        "!self.renewBefore.matches('^[1-9][0-9]{0,6}(s|m|h)$') || !self.caRenewBefore.matches('^[1-9][0-9]{0,6}(s|m|h)$') || duration(self.renewBefore) < duration(self.caRenewBefore)",
    )
    .message("spec.tls.certificates.caRenewBefore must be longer than renewBefore: the difference is how long clients have to trust a new CA before servers use it")
    .reason(Reason::FieldValueInvalid)
}

/// Creating a cluster from a backup and creating an empty one exclude each
/// other.
pub fn bootstrap_one_method() -> Rule {
    Rule::new("!(has(self.initdb) && has(self.restore))")
        .message("spec.bootstrap: set either initdb (a new, empty cluster) or restore (a cluster from a backup), not both")
        .reason(Reason::FieldValueInvalid)
}

pub fn exactly_one_restore_target() -> Rule {
    let count = ["time", "lsn", "name", "backup"]
        .map(|k| format!("(has(self.{k}) ? 1 : 0)"))
        .join(" + ");
    Rule::new(format!("{count} == 1"))
        .message("spec.bootstrap.restore.target: set exactly one of time, lsn, name or backup, or remove target to recover to the end of the archived WAL")
        .reason(Reason::FieldValueInvalid)
}

pub fn target_time() -> Rule {
    matching(
        limits::RFC3339_PATTERN,
        "spec.bootstrap.restore.target.time must be an RFC 3339 time with a zone offset, e.g. 2025-06-01T12:00:00Z (without one the restoring server's time zone would decide)".into(),
    )
}

pub fn target_lsn() -> Rule {
    matching(
        limits::LSN_PATTERN,
        "spec.bootstrap.restore.target.lsn must be a WAL position as PostgreSQL prints it, e.g. 0/3000060".into(),
    )
}

/// The name is written into PostgreSQL's recovery settings; a quote or a
/// newline could end the value and add settings.
pub fn target_name() -> Rule {
    matching(
        limits::RESTORE_POINT_PATTERN,
        "spec.bootstrap.restore.target.name must be a restore point name of letters, digits, spaces and '_', '-', '.', ':', '@'".into(),
    )
}

pub fn target_backup() -> Rule {
    matching(
        limits::BACKUP_LABEL_PATTERN,
        "spec.bootstrap.restore.target.backup must be a pgBackRest backup label such as 20250601-010000F or 20250601-010000F_20250602-010000I (a PostgresBackup's status.label)".into(),
    )
}

/// A `PostgresCluster` named in another field: the same shape as
/// [`cluster_name`] requires.
pub fn cluster_reference(field: &str) -> Rule {
    matching(
        "^[a-z]([-a-z0-9]*[a-z0-9])?$",
        format!(
            "{field} must name a PostgresCluster: at most {} lowercase letters, digits and '-', starting with a letter",
            limits::CLUSTER_NAME_MAX
        ),
    )
}

/// A `PostgresBackup` records one backup; changing what it asked for after
/// the fact would make its status describe something else.
pub fn backup_spec_immutable() -> Rule {
    Rule::new("self == oldSelf")
        .message("spec of a PostgresBackup is immutable: it records one backup; create another PostgresBackup instead")
        .reason(Reason::FieldValueForbidden)
}

/// A restored cluster promotes on a new timeline; archiving it into the
/// source's repository path would mix two histories in one archive (and a
/// retention run could expire the source's backups). Paths left to their
/// defaults are compared by cluster name: both sit in this namespace. An
/// explicit path equal to a default one needs the namespace, which CEL
/// does not see; the operator checks that.
pub fn restore_not_into_source() -> Rule {
    let restore = "self.spec.bootstrap.restore";
    let source = format!("{restore}.source.repository");
    let source_cluster =
        format!("(has({restore}.source.cluster) ? {restore}.source.cluster : self.metadata.name)");
    let path = |repo: &str, kind: &str, cluster: &str| {
        format!("(has({repo}.{kind}.path) ? {repo}.{kind}.path : '/capstan/~/' + {cluster})")
    };
    let same = |kind: &str, keys: &[&str]| {
        let keys: Vec<String> = keys
            .iter()
            .map(|k| format!("r.{kind}.{k} == {source}.{kind}.{k}"))
            .collect();
        format!(
            "(has(r.{kind}) && has({source}.{kind}) && {} && {} == {})",
            keys.join(" && "),
            path("r", kind, "self.metadata.name"),
            path(&source, kind, &source_cluster)
        )
    };
    let volume = format!(
        "(has(r.volume) && has({source}.volume) && {source}.volume.claimName == self.metadata.name + '-' + r.name)"
    );
    let clash = [
        same("s3", &["endpoint", "bucket"]),
        same("azure", &["account", "container"]),
        same("gcs", &["bucket"]),
        volume,
    ]
    .join(" || ");
    Rule::new(format!(
        "!has(self.spec.bootstrap) || !has({restore}) || !has(self.spec.backup) || self.spec.backup.repositories.all(r, !({clash}))"
    ))
    .message("spec.backup.repositories: a repository is the restore source's own (same store and path); a restored cluster starts a new timeline and must archive elsewhere: give it another path, or restore from source.cluster with the default paths")
    .reason(Reason::FieldValueInvalid)
}

#[cfg(test)]
mod tests;

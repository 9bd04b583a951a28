//! Every bound of the `PostgresCluster` API, defined once.
//!
//! The CRD reads them (schema `maxLength`/`maxItems`/`maxProperties` and the
//! CEL rule text in [`super::rules`], built with `format!`), and so does the
//! operator's own check of a spec (`operator::cluster::validate`), so what
//! admission refuses and what the operator refuses never disagree. Changing
//! a value here changes the CRD: regenerate it (`capstan crd`, or
//! `CAPSTAN_UPDATE_GENERATED=1 cargo test --test generated_files`).

use std::ops::RangeInclusive;

use crate::postgres::roles;

/// `metadata.name`: it prefixes child names such as `<name>-pooler-<hash>`,
/// and Services must be DNS-1035 labels (at most 63 characters).
pub const CLUSTER_NAME_MAX: usize = 50;

/// Suffixes of the Secrets Capstan writes for cluster `<name>` in every TLS
/// mode (`<name>-superuser` …): a provided certificate Secret may not take
/// one. Provided certificates are copied into the `-tls` ones, so a user's
/// Secret of that name would be overwritten by its own copy.
pub const OWN_SECRET_SUFFIXES: &[&str] = &[
    "superuser",
    "app",
    "pooler",
    "ca-key",
    "server-tls",
    "replication-tls",
    "pooler-tls",
    "agent-tls",
    "pgbackrest-tls",
    "operator-tls",
    "roles",
];

/// `spec.instances`: one primary plus up to eight replicas. Beyond that,
/// cascading replication or a second cluster serves better than one WAL
/// sender fan-out.
pub const INSTANCES: RangeInclusive<i32> = 1..=9;

/// `spec.postgres.version`: the PostgreSQL majors this Capstan runs.
pub const POSTGRES_VERSIONS: RangeInclusive<i32> = 14..=18;

/// `spec.postgres.parameters`: at most this many settings…
pub const POSTGRES_PARAMETERS_MAX: usize = 256;
/// …each value at most this long. Both bound the cost of the CEL rules that
/// iterate over the map (the API server refuses a CRD whose rules could
/// exceed its budget).
pub const POSTGRES_PARAMETER_VALUE_MAX: usize = 4096;

/// `spec.postgres.hba`: at most this many lines, each at most this long.
pub const HBA_LINES_MAX: usize = 64;
pub const HBA_LINE_MAX: usize = 512;

/// `spec.proxy.pgbouncer.replicas`.
pub const POOLER_REPLICAS: RangeInclusive<i32> = 1..=32;

/// `spec.proxy.pgbouncer.maxClientConn` and `defaultPoolSize`: at least one
/// connection.
pub const POOL_SIZE_MIN: i32 = 1;

/// `spec.proxy.pgbouncer.parameters`, like the PostgreSQL ones.
pub const PGBOUNCER_PARAMETERS_MAX: usize = 128;
pub const PGBOUNCER_PARAMETER_VALUE_MAX: usize = 1024;

/// `spec.failover.detectionSeconds`: the primary fences itself after half of
/// it, so below 2 s a renewal's own latency would fence a healthy primary;
/// above 60 s an outage lasts longer than a restart would.
pub const DETECTION_SECONDS: RangeInclusive<i32> = 2..=60;

/// `spec.failover.maxLagBytes`: a distance in bytes of WAL.
pub const MAX_LAG_BYTES_MIN: i64 = 0;

/// `spec.replication.synchronous.number` when the mode is `quorum` or
/// `priority`; at most `instances - 1` (the replicas there are).
pub const SYNCHRONOUS_NUMBER_MIN: i32 = 1;

/// `spec.bootstrap.initdb.database` and `owner`: PostgreSQL truncates
/// identifiers longer than `NAMEDATALEN - 1`.
pub const SQL_IDENTIFIER_MAX: usize = 63;

/// `spec.roles` and `spec.databases`: the instance manager applies every
/// entry on each pass, one statement at a time.
pub const ROLES_MAX: usize = 64;
pub const DATABASES_MAX: usize = 64;
/// `spec.roles[].inRoles`.
pub const ROLE_MEMBERSHIPS_MAX: usize = 32;
/// `spec.databases[].extensions`; extension names may hold `-` (`uuid-ossp`).
pub const DATABASE_EXTENSIONS_MAX: usize = 32;
pub const EXTENSION_NAME_PATTERN: &str = "^[a-z_][a-z0-9_-]{0,62}$";
/// Roles Capstan creates and manages in every cluster.
pub const MANAGED_ROLES: &[&str] = &[roles::SUPERUSER, roles::REPLICATION, roles::POOLER];
/// Role names PostgreSQL reserves (`CREATE ROLE public` fails); `pg_*` is
/// refused by prefix.
pub const POSTGRES_RESERVED_ROLES: &[&str] = &[
    "public",
    "none",
    "current_user",
    "current_role",
    "session_user",
];

/// `spec.bootstrap.initdb.encoding` (e.g. `UTF8`, `LATIN1`, `EUC_JP`).
pub const ENCODING_MAX: usize = 32;

/// `spec.bootstrap.initdb.locale` (e.g. `C.UTF-8`, `en_US.UTF-8`, `de_DE@euro`).
pub const LOCALE_MAX: usize = 64;

/// Names of Kubernetes objects a spec refers to (Secrets, StorageClasses):
/// DNS-1123 subdomains.
pub const OBJECT_NAME_MAX: usize = 253;

/// Container image references (`spec.postgres.image`,
/// `spec.proxy.pgbouncer.image`).
pub const IMAGE_MAX: usize = 512;

/// DNS-1123 subdomain: what a Secret or StorageClass name must be.
pub const DNS_SUBDOMAIN_PATTERN: &str =
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";

/// A Kubernetes quantity (`resource.Quantity`), as the API server parses it;
/// the pattern controller-gen puts on every quantity of a CRD.
pub const QUANTITY_PATTERN: &str = r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$";

/// `spec.bootstrap.initdb.encoding`: a PostgreSQL encoding name or alias.
pub const ENCODING_PATTERN: &str = r"^[A-Za-z0-9_-]+$";

/// `spec.bootstrap.initdb.locale`: an operating-system locale name.
pub const LOCALE_PATTERN: &str = r"^[A-Za-z0-9_.@-]+$";

/// `spec.backup.repositories`: pgBackRest numbers its repositories
/// `repo1`…`repo4` and supports no more than four.
pub const BACKUP_REPOSITORIES: RangeInclusive<usize> = 1..=4;

/// `spec.backup.repositories[].name`: the pgBackRest repository it
/// configures, `repo1` to `repo4`, so a name in the spec, in pgBackRest's
/// own output and in its options (`--repo=2`) is the same thing.
pub const REPOSITORY_NAME_PATTERN: &str = "^repo[1-4]$";

/// `spec.backup.schedules`: three backup types for each of four
/// repositories.
pub const BACKUP_SCHEDULES_MAX: usize = 12;

/// `spec.backup.schedules[].name`: a DNS label short enough to suffix
/// the names of the `PostgresBackup` objects a schedule creates.
pub const SCHEDULE_NAME_MAX: usize = 40;

/// `spec.backup.schedules[].schedule`: a five-field cron expression
/// (minute hour day-of-month month day-of-week). Only the shape is checked
/// at admission; the operator parses the fields.
pub const CRON_MAX: usize = 128;
pub const CRON_PATTERN: &str = "^[0-9A-Za-z*/,?-]+( +[0-9A-Za-z*/,?-]+){4}$";

/// `retention.full` and `retention.differential`: how many backups
/// pgBackRest keeps (its own bounds for `repo-retention-full`).
pub const RETENTION: RangeInclusive<i32> = 1..=9_999_999;

/// `spec.backup.archive.timeout`, in seconds: PostgreSQL's
/// `archive_timeout`, the bound on how much committed work is not yet in
/// the repository. Each forced switch archives a whole segment, so below a
/// second it would only fill the repository; above an hour it is no RPO.
pub const ARCHIVE_TIMEOUT_SECONDS: RangeInclusive<i64> = 1..=3600;

/// Percent of a file system in use at which `autoGrow` grows it.
pub const AUTO_GROW_THRESHOLD: RangeInclusive<i32> = 50..=95;

/// Certificate lifetimes and renewal margins: a minute (tests) to a
/// hundred years.
pub const CERTIFICATE_SECONDS: RangeInclusive<i64> = 60..=100 * 8760 * 3600;

/// Host names, S3 bucket and Azure account/container names, regions.
pub const HOST_MAX: usize = 253;
pub const REGION_MAX: usize = 64;
/// `host` or `host:port`, without a scheme: pgBackRest always speaks HTTPS
/// to object stores.
pub const ENDPOINT_PATTERN: &str = r"^[A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?(:[0-9]{1,5})?$";
/// S3 and GCS bucket names (3 to 63 lowercase letters, digits, '.', '-').
pub const BUCKET_PATTERN: &str = r"^[a-z0-9][-a-z0-9.]{1,61}[a-z0-9]$";
/// Azure storage account: 3 to 24 lowercase letters and digits.
pub const AZURE_ACCOUNT_PATTERN: &str = "^[a-z0-9]{3,24}$";
/// Azure blob container: 3 to 63 lowercase letters, digits and '-'.
pub const AZURE_CONTAINER_PATTERN: &str = "^[a-z0-9]([-a-z0-9]{1,61}[a-z0-9])$";

/// Repository paths: absolute, plain segments, no `.` or `..`.
pub const REPOSITORY_PATH_MAX: usize = 512;
pub const REPOSITORY_PATH_PATTERN: &str = r"^(/[A-Za-z0-9_.-]+)+$";

/// Keys inside a Secret (`[-._a-zA-Z0-9]+`, at most 253).
pub const SECRET_KEY_MAX: usize = 253;
pub const SECRET_KEY_PATTERN: &str = r"^[-._a-zA-Z0-9]+$";

/// `spec.bootstrap.restore.target.lsn`: a PostgreSQL LSN as `pg_lsn`
/// prints it.
pub const LSN_PATTERN: &str = "^[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}$";
/// `spec.bootstrap.restore.target.time`: RFC 3339 with an offset. Without
/// one PostgreSQL would read the time in the restoring server's time zone.
pub const RFC3339_PATTERN: &str = r"^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])[Tt ]([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]{1,9})?([Zz]|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$";
/// `spec.bootstrap.restore.target.backup`: a pgBackRest backup label, e.g.
/// `20250101-010000F` or `20250101-010000F_20250102-010000I`.
pub const BACKUP_LABEL_PATTERN: &str = "^[0-9]{8}-[0-9]{6}F(_[0-9]{8}-[0-9]{6}[DI])?$";
pub const BACKUP_LABEL_MAX: usize = 64;
/// `spec.bootstrap.restore.target.name`: a restore point made with
/// `pg_create_restore_point` (at most `MAXFNAMELEN - 1` bytes).
pub const RESTORE_POINT_MAX: usize = 63;
pub const RESTORE_POINT_PATTERN: &str = "^[A-Za-z0-9_.:@ -]+$";

/// `a, b, c or d` for a range, as messages spell it.
pub fn spelled(range: &RangeInclusive<i32>) -> String {
    let items: Vec<String> = range.clone().map(|v| v.to_string()).collect();
    match items.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        _ => items.join(""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_spelled_as_messages_need_them() {
        assert_eq!(spelled(&POSTGRES_VERSIONS), "14, 15, 16, 17 or 18");
        assert_eq!(spelled(&(3..=3)), "3");
    }

    #[test]
    fn bounds_are_consistent() {
        assert!(!INSTANCES.is_empty() && *INSTANCES.start() >= 1);
        // A synchronous replica needs at least two instances.
        assert!(*INSTANCES.end() > SYNCHRONOUS_NUMBER_MIN);
        assert!(*DETECTION_SECONDS.start() >= 2, "fencing needs D/2 ≥ 1 s");
        // Services are DNS-1035 labels: `<name>-pooler` must fit in 63.
        assert!(CLUSTER_NAME_MAX + "-pooler".len() <= 63);
        // A volume repository's claim is `<name>-repoN`.
        assert!(CLUSTER_NAME_MAX + "-repo4".len() <= 63);
        assert_eq!(
            *BACKUP_REPOSITORIES.end(),
            4,
            "pgBackRest has repo1 to repo4"
        );
        assert!(BACKUP_SCHEDULES_MAX >= 3 * BACKUP_REPOSITORIES.end());
    }
}

/// `90s`, `5m`, `8760h` in seconds: the duration form admission allows
/// (a whole number and one unit).
pub fn seconds(text: &str) -> Option<u64> {
    let text = text.trim();
    let unit = text.chars().last()?;
    let n: u64 = text[..text.len() - unit.len_utf8()].parse().ok()?;
    match unit {
        's' => Some(n),
        'm' => n.checked_mul(60),
        'h' => n.checked_mul(3600),
        _ => None,
    }
}

#[cfg(test)]
mod duration_tests {
    #[test]
    fn durations_read_in_seconds() {
        assert_eq!(super::seconds("90s"), Some(90));
        assert_eq!(super::seconds("5m"), Some(300));
        assert_eq!(super::seconds("8760h"), Some(8760 * 3600));
        for bad in ["", "h", "5d", "1m30s", "-5s", "5"] {
            assert_eq!(super::seconds(bad), None, "{bad}");
        }
    }
}

//! Every bound of the `PostgresCluster` API, defined once.
//!
//! The CRD reads them (schema `maxLength`/`maxItems`/`maxProperties` and the
//! CEL rule text in [`super::rules`], built with `format!`), and so does the
//! operator's own check of a spec (`operator::cluster::validate`), so what
//! admission refuses and what the operator refuses never disagree. Changing
//! a value here changes the CRD: regenerate it (`capstan crd`, or
//! `CAPSTAN_UPDATE_GENERATED=1 cargo test --test generated_files`).

use std::ops::RangeInclusive;

/// `metadata.name`: it prefixes child names such as `<name>-pooler-<hash>`,
/// and Services must be DNS-1035 labels (at most 63 characters).
pub const CLUSTER_NAME_MAX: usize = 50;

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
    }
}

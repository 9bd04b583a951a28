//! PostgreSQL settings that Capstan owns.
//!
//! The instance manager sets these itself (listen address, TLS files, WAL and
//! replication plumbing, archiving, file locations). A user value would
//! silently break replication, failover or TLS, so the API rejects them: at
//! admission through a CEL rule, and again in the operator and the instance
//! manager for objects that got past admission.

use std::collections::BTreeMap;

/// Settings a hot standby may not run below its primary (it refuses to
/// start, or pauses replay), with PostgreSQL's defaults (the same in
/// 14–18): raised, they go to the replicas first; lowered, to the primary
/// first.
pub const STANDBY_AT_LEAST_PRIMARY: &[(&str, u64)] = &[
    ("max_connections", 100),
    ("max_worker_processes", 8),
    ("max_wal_senders", 10),
    ("max_prepared_transactions", 0),
    ("max_locks_per_transaction", 64),
];

/// Senders and slots for every instance plus room for backups and
/// pg_basebackup/pg_rewind, in steps of 10: a standby must have at least the
/// primary's value, so the number should rarely move.
pub fn wal_senders(instances: usize) -> u32 {
    let needed = (instances as u32) * 2 + 2;
    needed.div_ceil(10).max(1) * 10
}

/// The settings of [`STANDBY_AT_LEAST_PRIMARY`] that the configuration for
/// `parameters` and `instances` sets lower than `running` (what a primary
/// runs). Decided from the spec rather than from the primary's own
/// `pending_restart`, which shows only once the kubelet has delivered the
/// new files there, possibly after a replica already restarted with them.
pub fn lowered_standby_settings(
    parameters: &BTreeMap<String, String>,
    instances: usize,
    running: &BTreeMap<String, u64>,
) -> Vec<&'static str> {
    STANDBY_AT_LEAST_PRIMARY
        .iter()
        .filter_map(|&(name, default)| {
            let wanted = if name == "max_wal_senders" {
                u64::from(wal_senders(instances))
            } else {
                match user_value(parameters, name) {
                    Some(v) => v.trim().trim_matches('\'').parse().ok()?,
                    None => default,
                }
            };
            (wanted < *running.get(name)?).then_some(name)
        })
        .collect()
}

/// The user's value for `name`; parameter names are case-insensitive.
fn user_value<'a>(parameters: &'a BTreeMap<String, String>, name: &str) -> Option<&'a str> {
    parameters
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Parameter names a user may not set in `spec.postgres.parameters`.
pub const MANAGED: &[&str] = &[
    "archive_command",
    "archive_library",
    "archive_mode",
    "cluster_name",
    "config_file",
    "data_directory",
    "external_pid_file",
    "hba_file",
    "hot_standby",
    "ident_file",
    "listen_addresses",
    "log_destination",
    "logging_collector",
    "port",
    "primary_conninfo",
    "primary_slot_name",
    "promote_trigger_file",
    "recovery_target",
    "recovery_target_action",
    "recovery_target_inclusive",
    "recovery_target_lsn",
    "recovery_target_name",
    "recovery_target_time",
    "recovery_target_timeline",
    "recovery_target_xid",
    "restore_command",
    "ssl",
    "ssl_ca_file",
    "ssl_cert_file",
    "ssl_crl_dir",
    "ssl_crl_file",
    "ssl_key_file",
    "ssl_passphrase_command",
    "synchronous_standby_names",
    "unix_socket_directories",
    "unix_socket_group",
    "unix_socket_permissions",
    "wal_level",
    "wal_log_hints",
];

/// Whether `name` is owned by Capstan. PostgreSQL parameter names are
/// case-insensitive, so the check is too.
pub fn is_managed(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    MANAGED.contains(&lower.as_str())
}

/// The managed names among `names`, in input order.
pub fn managed_among<'a>(names: impl IntoIterator<Item = &'a String>) -> Vec<&'a str> {
    names
        .into_iter()
        .filter(|n| is_managed(n))
        .map(String::as_str)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sender_count_grows_in_steps() {
        assert_eq!(wal_senders(0), 10);
        assert_eq!(wal_senders(3), 10);
        assert_eq!(wal_senders(4), 10);
        assert_eq!(wal_senders(5), 20);
        assert_eq!(wal_senders(20), 50);
    }

    fn running(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    fn params(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_lower_user_value_than_the_running_one_is_named() {
        let now = running(&[("max_connections", 200), ("max_wal_senders", 10)]);
        assert_eq!(
            lowered_standby_settings(&params(&[("max_connections", "150")]), 3, &now),
            ["max_connections"]
        );
        assert!(
            lowered_standby_settings(&params(&[("max_connections", "200")]), 3, &now).is_empty()
        );
        assert!(
            lowered_standby_settings(&params(&[("max_connections", "300")]), 3, &now).is_empty()
        );
        // Names are case-insensitive; quotes and blanks are not part of the value.
        assert_eq!(
            lowered_standby_settings(&params(&[("Max_Connections", " '150' ")]), 3, &now),
            ["max_connections"]
        );
    }

    #[test]
    fn a_removed_user_value_falls_back_to_the_postgres_default() {
        let now = running(&[("max_connections", 200), ("max_locks_per_transaction", 64)]);
        assert_eq!(
            lowered_standby_settings(&BTreeMap::new(), 3, &now),
            ["max_connections"]
        );
    }

    #[test]
    fn fewer_instances_lower_the_managed_wal_senders() {
        let now = running(&[("max_wal_senders", 20)]);
        assert!(lowered_standby_settings(&BTreeMap::new(), 5, &now).is_empty());
        assert_eq!(
            lowered_standby_settings(&BTreeMap::new(), 4, &now),
            ["max_wal_senders"]
        );
    }

    #[test]
    fn unknown_running_values_and_unreadable_user_values_name_nothing() {
        assert!(
            lowered_standby_settings(&params(&[("max_connections", "1")]), 3, &BTreeMap::new())
                .is_empty()
        );
        let now = running(&[("max_connections", 200)]);
        assert!(
            lowered_standby_settings(&params(&[("max_connections", "lots")]), 3, &now).is_empty()
        );
    }

    #[test]
    fn managed_names_are_lowercase_and_sorted_unique() {
        let mut sorted = MANAGED.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted, MANAGED, "keep MANAGED sorted and unique");
        assert!(
            MANAGED
                .iter()
                .all(|n| n.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
        );
    }

    #[test]
    fn check_is_case_insensitive() {
        assert!(is_managed("Port"));
        assert!(is_managed("listen_addresses"));
        assert!(!is_managed("shared_buffers"));
        assert!(!is_managed("work_mem"));
    }

    #[test]
    fn managed_among_keeps_order() {
        let names = vec!["work_mem".to_string(), "WAL_LEVEL".into(), "ssl".into()];
        assert_eq!(managed_among(&names), vec!["WAL_LEVEL", "ssl"]);
    }
}

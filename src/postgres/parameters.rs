//! PostgreSQL settings that Capstan owns.
//!
//! The instance manager sets these itself (listen address, TLS files, WAL and
//! replication plumbing, archiving, file locations). A user value would
//! silently break replication, failover or TLS, so the API rejects them: at
//! admission through a CEL rule, and again in the operator and the instance
//! manager for objects that got past admission.

/// Settings a hot standby may not run below its primary (it refuses to
/// start, or pauses replay): raised, they go to the replicas first;
/// lowered, to the primary first.
pub const STANDBY_AT_LEAST_PRIMARY: &[&str] = &[
    "max_connections",
    "max_worker_processes",
    "max_wal_senders",
    "max_prepared_transactions",
    "max_locks_per_transaction",
];

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

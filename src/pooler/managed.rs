//! PgBouncer settings that Capstan owns.
//!
//! The pooler supervisor sets these itself (listen address, authentication,
//! TLS on both sides, file locations, admin access) or takes them from their
//! own fields in `spec.proxy.pgbouncer`; a user value in `parameters` would
//! break authentication, TLS or the operator's control of the pooler.

/// PgBouncer `[pgbouncer]` settings a user may not set in
/// `spec.proxy.pgbouncer.parameters`.
pub const MANAGED: &[&str] = &[
    "admin_users",
    "auth_dbname",
    "auth_file",
    "auth_hba_file",
    "auth_query",
    "auth_type",
    "auth_user",
    "client_tls_ca_file",
    "client_tls_cert_file",
    "client_tls_key_file",
    "client_tls_sslmode",
    "conffile",
    "default_pool_size",
    "listen_addr",
    "listen_port",
    "logfile",
    "max_client_conn",
    "pidfile",
    "pool_mode",
    "server_tls_ca_file",
    "server_tls_cert_file",
    "server_tls_key_file",
    "server_tls_sslmode",
    "stats_users",
    "syslog",
    "unix_socket_dir",
    "unix_socket_group",
    "unix_socket_mode",
    "user",
];

/// Whether `name` is owned by Capstan (PgBouncer setting names are
/// case-insensitive).
pub fn is_managed(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    MANAGED.contains(&lower.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn managed_names_are_sorted_unique_lowercase() {
        let mut sorted = MANAGED.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted, MANAGED);
        assert!(
            MANAGED
                .iter()
                .all(|n| n.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
        );
    }

    #[test]
    fn check_is_case_insensitive() {
        assert!(is_managed("AUTH_TYPE"));
        assert!(!is_managed("server_idle_timeout"));
    }
}

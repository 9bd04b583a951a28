//! Names of the objects Capstan creates for a cluster. Stable, so that a
//! restarted operator finds what it made before.

pub fn instance(cluster: &str, index: u32) -> String {
    format!("{cluster}-{index}")
}

/// The index of instance `name` of `cluster` (`db-3` → 3).
pub fn instance_index(cluster: &str, name: &str) -> Option<u32> {
    let rest = name.strip_prefix(cluster)?.strip_prefix('-')?;
    if rest.starts_with('0') {
        return None;
    }
    rest.parse().ok().filter(|i| *i > 0)
}

/// The data PVC has the instance's name.
pub fn data_pvc(instance: &str) -> String {
    instance.to_string()
}

pub fn wal_pvc(instance: &str) -> String {
    format!("{instance}-wal")
}

pub fn rw_service(cluster: &str) -> String {
    format!("{cluster}-rw")
}

pub fn ro_service(cluster: &str) -> String {
    format!("{cluster}-ro")
}

pub fn r_service(cluster: &str) -> String {
    format!("{cluster}-r")
}

pub fn pooler(cluster: &str) -> String {
    format!("{cluster}-pooler")
}

/// The repository host's Deployment and Service (volume repositories).
pub fn repo_host(cluster: &str) -> String {
    format!("{cluster}-repo-host")
}

pub fn config_map(cluster: &str) -> String {
    format!("{cluster}-config")
}

pub fn superuser_secret(cluster: &str) -> String {
    format!("{cluster}-superuser")
}

/// The passwords of `spec.roles`, copied from the Secrets they name (one
/// key per role), read by the primary's instance manager.
pub fn roles_secret(cluster: &str) -> String {
    format!("{cluster}-roles")
}

pub fn app_secret(cluster: &str) -> String {
    format!("{cluster}-app")
}

pub fn pooler_secret(cluster: &str) -> String {
    format!("{cluster}-pooler")
}

/// Public CA certificate (`ca.crt`): what clients are given to trust.
pub fn ca_secret(cluster: &str) -> String {
    format!("{cluster}-ca")
}

/// The CA's private key; read only by the operator.
pub fn ca_key_secret(cluster: &str) -> String {
    format!("{cluster}-ca-key")
}

pub fn server_tls_secret(cluster: &str) -> String {
    format!("{cluster}-server-tls")
}

pub fn replication_tls_secret(cluster: &str) -> String {
    format!("{cluster}-replication-tls")
}

pub fn pooler_tls_secret(cluster: &str) -> String {
    format!("{cluster}-pooler-tls")
}

/// Server certificate of the agents' HTTPS APIs (always operator-managed,
/// also when data-plane TLS is user-provided).
pub fn agent_tls_secret(cluster: &str) -> String {
    format!("{cluster}-agent-tls")
}

/// pgBackRest's TLS certificate (backups from a replica).
pub fn backrest_tls_secret(cluster: &str) -> String {
    format!("{cluster}-pgbackrest-tls")
}

/// The operator's client certificate for the agents' command endpoints.
pub fn operator_tls_secret(cluster: &str) -> String {
    format!("{cluster}-operator-tls")
}

pub fn instance_service_account(cluster: &str) -> String {
    format!("{cluster}-instance")
}

pub fn pooler_service_account(cluster: &str) -> String {
    format!("{cluster}-pooler")
}

pub fn primary_pdb(cluster: &str) -> String {
    format!("{cluster}-primary")
}

pub fn replicas_pdb(cluster: &str) -> String {
    format!("{cluster}-replicas")
}

pub fn pooler_pdb(cluster: &str) -> String {
    format!("{cluster}-pooler")
}

/// Lease the primary's instance manager holds (DESIGN §5, fencing token).
pub fn primary_lease(cluster: &str) -> String {
    format!("{cluster}-primary")
}

/// Server name the operator expects in the agents' certificates. Agents are
/// reached by pod IP, so the name is fixed per cluster rather than per pod.
pub fn agent_server_name(cluster: &str, namespace: &str) -> String {
    format!("{cluster}-agent.{namespace}.capstan.internal")
}

/// In-cluster DNS names of a Service, shortest first.
pub fn service_dns_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        service.to_string(),
        format!("{service}.{namespace}"),
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
    ]
}

/// Physical replication slot of an instance (slot names allow `[a-z0-9_]`).
pub fn replication_slot(instance: &str) -> String {
    instance.replace('-', "_")
}

/// The pod checking a new PostgreSQL image (one at a time per cluster).
pub fn image_check_pod(cluster: &str) -> String {
    format!("{cluster}-image-check")
}

/// The verification pod of `PostgresBackup` `backup`: `<backup>-verify`,
/// shortened with a hash of the full name when that would not be a valid
/// object name (253 characters).
pub fn verify_pod(backup: &str) -> String {
    const SUFFIX: &str = "-verify";
    if backup.len() + SUFFIX.len() <= 253 {
        return format!("{backup}{SUFFIX}");
    }
    use sha2::Digest;
    let digest = sha2::Sha256::digest(backup.as_bytes());
    let hash: String = digest.iter().take(4).map(|b| format!("{b:02x}")).collect();
    let keep = &backup[..253 - SUFFIX.len() - hash.len() - 1];
    format!("{}-{hash}{SUFFIX}", keep.trim_end_matches(['-', '.']))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_index_round_trips() {
        assert_eq!(instance_index("db", &instance("db", 3)), Some(3));
        assert_eq!(instance_index("db", "db-12"), Some(12));
        assert_eq!(instance_index("db", "db-0"), None);
        assert_eq!(instance_index("db", "db-03"), None);
        assert_eq!(instance_index("db", "db-x"), None);
        assert_eq!(instance_index("db", "db-1-wal"), None);
        assert_eq!(instance_index("db", "dbx-1"), None);
        // A cluster whose name extends another's is not confused with it.
        assert_eq!(instance_index("db", "db-pooler"), None);
        assert_eq!(instance_index("db-2", "db-2-1"), Some(1));
    }

    #[test]
    fn service_names_cover_every_dns_form() {
        assert_eq!(
            service_dns_names("db-rw", "prod"),
            [
                "db-rw",
                "db-rw.prod",
                "db-rw.prod.svc",
                "db-rw.prod.svc.cluster.local"
            ]
        );
    }

    #[test]
    fn slot_names_are_valid_identifiers() {
        assert_eq!(replication_slot("orders-db-2"), "orders_db_2");
    }
}

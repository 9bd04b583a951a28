//! The configuration files the manager writes into PGDATA: user parameters
//! and hba lines from the settings, plus the settings Capstan owns (listen
//! address, TLS, replication plumbing, logging), which always win.

use std::path::Path;

use crate::backup::Invocation;
use crate::contract::settings::InstanceSettings;
use crate::postgres::conninfo::ConnInfo;
use crate::postgres::{conf, hba, roles, synchronous};

use super::inputs::Inputs;

pub const POSTGRESQL_CONF: &str = "postgresql.conf";
pub const DEFAULTS_CONF: &str = "capstan-defaults.conf";
pub const USER_CONF: &str = "capstan-user.conf";
pub const MANAGED_CONF: &str = "capstan-managed.conf";
pub const AUTO_CONF: &str = "postgresql.auto.conf";
pub const HBA_CONF: &str = "pg_hba.conf";
pub const IDENT_CONF: &str = "pg_ident.conf";
pub const STANDBY_SIGNAL: &str = "standby.signal";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid parameter: {0}")]
    Conf(#[from] conf::ConfError),
    #[error("invalid hba rule: {0}")]
    Hba(#[from] hba::HbaError),
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

/// The role the files are written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Desired {
    Primary,
    Replica,
}

/// File name → content, in writing order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered(pub Vec<(&'static str, String)>);

impl Rendered {
    /// Whether `spec.postgres.parameters` differ from the file in `pgdata`.
    pub fn user_changed(&self, pgdata: &Path) -> bool {
        let on_disk = std::fs::read_to_string(pgdata.join(USER_CONF)).ok();
        self.0
            .iter()
            .find(|(name, _)| *name == USER_CONF)
            .is_some_and(|(_, content)| on_disk.as_deref() != Some(content.as_str()))
    }

    /// The rendered `spec.postgres.parameters` file.
    pub fn user_conf(&self) -> &str {
        self.0
            .iter()
            .find(|(name, _)| *name == USER_CONF)
            .map_or("", |(_, content)| content.as_str())
    }

    /// Keeps the user parameters `pgdata` has (PostgreSQL refused the new
    /// ones); the other files are written as rendered.
    pub fn keep_user(&mut self, pgdata: &Path) {
        if let Ok(on_disk) = std::fs::read_to_string(pgdata.join(USER_CONF)) {
            for (name, content) in &mut self.0 {
                if *name == USER_CONF {
                    *content = on_disk.clone();
                }
            }
        }
    }

    #[cfg(test)]
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, c)| c.as_str())
    }
}

const HEADER: &str = "# Written by the Capstan instance manager; edits are overwritten.\n";

/// How a replica reaches the primary (`primary_conninfo`, `pg_basebackup`,
/// `pg_rewind`): the `-rw` Service, as `streaming_replica` with its client
/// certificate, verifying the server's certificate and host name.
pub fn replication_conninfo(inputs: &Inputs, settings: &InstanceSettings) -> ConnInfo {
    let tls = inputs.replication_tls();
    ConnInfo::new()
        .with("host", settings.primary_host.clone())
        .with("port", settings.primary_port.to_string())
        .with("user", roles::REPLICATION)
        .with("application_name", inputs.pod.clone())
        .with("sslmode", "verify-full")
        .with("sslcert", tls.cert.display().to_string())
        .with("sslkey", tls.key.display().to_string())
        .with("sslrootcert", tls.ca.display().to_string())
        .with("connect_timeout", "5")
}

/// The settings Capstan owns, in file order.
pub fn managed_parameters(
    inputs: &Inputs,
    settings: &InstanceSettings,
    role: Desired,
) -> Vec<(&'static str, String)> {
    let server = inputs.server_tls();
    let senders = crate::postgres::parameters::wal_senders(settings.instances.len()).to_string();
    let mut params = vec![
        ("listen_addresses", inputs.listen_address.clone()),
        ("port", inputs.postgres_port.to_string()),
        (
            "unix_socket_directories",
            inputs.run_dir.display().to_string(),
        ),
        ("cluster_name", inputs.cluster.clone()),
        ("ssl", "on".into()),
        ("ssl_cert_file", server.cert.display().to_string()),
        ("ssl_key_file", server.key.display().to_string()),
        // Verifies client certificates (streaming_replica) against the cluster CA.
        ("ssl_ca_file", server.ca.display().to_string()),
        ("wal_level", "replica".into()),
        ("hot_standby", "on".into()),
        // pg_rewind needs hint bits in WAL when checksums are off.
        ("wal_log_hints", "on".into()),
        ("max_wal_senders", senders.clone()),
        ("max_replication_slots", senders),
        // The manager captures stderr and re-emits each line tagged with the instance.
        ("log_destination", "stderr".into()),
        ("logging_collector", "off".into()),
    ];
    params.extend(archive_parameters(inputs, settings));
    params.push((
        "synchronous_standby_names",
        synchronous_standby_names(inputs, settings, role),
    ));
    // Needs a restart to change, so it stays the same in both roles.
    params.push(("recovery_target_timeline", "latest".into()));
    if role == Desired::Replica {
        params.push((
            "primary_conninfo",
            replication_conninfo(inputs, settings).to_string(),
        ));
        params.push(("primary_slot_name", inputs.slot_name()));
    }
    params
}

/// On the primary, the other instances as its synchronous standbys. A
/// replica keeps it empty: at promotion the first commit (the write that
/// proves promotion worked) must not wait for standbys that still have to
/// reconnect; the primary configuration follows right after.
fn synchronous_standby_names(
    inputs: &Inputs,
    settings: &InstanceSettings,
    role: Desired,
) -> String {
    match role {
        Desired::Primary => synchronous_standbys(inputs, settings).value,
        Desired::Replica => String::new(),
    }
}

/// `synchronous_standby_names` over the other instances, and why the number
/// was adjusted to fit them, if it was.
pub fn synchronous_standbys(
    inputs: &Inputs,
    settings: &InstanceSettings,
) -> synchronous::SynchronousStandbyNames {
    let standbys: Vec<&str> = settings
        .instances
        .iter()
        .map(String::as_str)
        .filter(|i| *i != inputs.pod)
        .collect();
    synchronous::render(&settings.synchronous, &standbys)
}

/// Defaults a user may override.
const DEFAULTS: &[(&str, &str)] = &[
    // pg_rewind reads the old primary's WAL back to the last checkpoint
    // before the fork; without archiving, only kept WAL makes that possible
    // after the old primary's own checkpoints.
    ("wal_keep_size", "512MB"),
    // Crash recovery after a kill, a clone or a rewind first flushes the
    // data directory; one syncfs() is far faster than fsync per file.
    ("recovery_init_sync_method", "syncfs"),
    // A replica notices a primary that stopped answering (frozen, cut off)
    // after this rather than the default minute, and connects again
    // through the -rw Service: to the new primary after a failover.
    ("wal_receiver_timeout", "10s"),
    // A replica whose primary restarted (a crash, a switchover) streams
    // again within a second instead of the default 5 s: with synchronous
    // replication on, commits wait for it that long.
    ("wal_retrieve_retry_interval", "1s"),
];

/// How PostgreSQL calls pgBackRest for this cluster's stanza.
pub fn backrest_invocation(inputs: &Inputs, stanza: &str) -> Invocation {
    Invocation {
        pgbackrest: inputs.pgbackrest.clone(),
        config: inputs.backrest_config(),
        stanza: stanza.to_string(),
    }
}

/// WAL archiving through pgBackRest when the settings carry a backup
/// block, on every instance: a standby ignores `archive_mode=on`, and a
/// promoted one archives on its new timeline at once (changing
/// `archive_mode` would need a restart then). `restore_command` lets a
/// standby that fell behind its slot fetch WAL from the repository. A
/// cluster without backups does not archive.
fn archive_parameters(inputs: &Inputs, settings: &InstanceSettings) -> Vec<(&'static str, String)> {
    match &settings.backup {
        Some(backup) => backrest_invocation(inputs, &backup.stanza).archive_parameters(
            std::time::Duration::from_secs(backup.archive_timeout_seconds),
        ),
        None => vec![("archive_mode", "off".into())],
    }
}

/// Every file for `role`.
pub fn render(
    inputs: &Inputs,
    settings: &InstanceSettings,
    role: Desired,
) -> Result<Rendered, ConfigError> {
    let main = format!(
        "{HEADER}# Defaults, then user parameters, then Capstan's own: the later setting\n\
         # wins, so users override defaults and managed settings always hold.\n\
         include '{DEFAULTS_CONF}'\n\
         include '{USER_CONF}'\n\
         include '{MANAGED_CONF}'\n"
    );
    let defaults = format!(
        "{HEADER}# Capstan's defaults; spec.postgres.parameters may override them.\n{}",
        conf::render(DEFAULTS.iter().copied())?
    );
    let user = format!(
        "{HEADER}# spec.postgres.parameters\n{}",
        conf::render(
            settings
                .parameters
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
        )?
    );
    let managed_params = managed_parameters(inputs, settings, role);
    let managed = format!(
        "{HEADER}# Owned by Capstan; spec.postgres.parameters may not set these.\n{}",
        conf::render(managed_params.iter().map(|(k, v)| (*k, v.as_str())))?
    );
    // ALTER SYSTEM would override the spec (and the managed settings), and
    // pg_basebackup/pg_rewind copy the primary's file: the spec is the
    // only source of settings.
    let auto = format!(
        "{HEADER}# ALTER SYSTEM is not used with Capstan: set parameters in the PostgresCluster spec.\n"
    );
    Ok(Rendered(vec![
        (DEFAULTS_CONF, defaults),
        (USER_CONF, user),
        (MANAGED_CONF, managed),
        (AUTO_CONF, auto),
        (HBA_CONF, hba::render(&settings.hba)?),
        (IDENT_CONF, HEADER.to_string()),
        (POSTGRESQL_CONF, main),
    ]))
}

/// Writes the files that differ (each atomically); true when any changed.
pub fn write(pgdata: &Path, rendered: &Rendered) -> Result<bool, ConfigError> {
    let mut changed = false;
    for (name, content) in &rendered.0 {
        let path = pgdata.join(name);
        if std::fs::read_to_string(&path).ok().as_deref() == Some(content.as_str()) {
            continue;
        }
        write_atomic(&path, content.as_bytes()).map_err(|source| ConfigError::Write {
            path: path.display().to_string(),
            source,
        })?;
        changed = true;
    }
    Ok(changed)
}

/// Asks PostgreSQL itself whether it accepts `parameters` (`postgres -C`
/// reads the configuration with them as command-line settings and exits,
/// also beside a running server): unknown names, bad values and values out
/// of range are refused in PostgreSQL's words before they reach a file a
/// restart would trip over. Values it can only judge at start (too much
/// memory) pass.
pub async fn check_parameters(
    postgres: &Path,
    pgdata: &Path,
    parameters: &std::collections::BTreeMap<String, String>,
) -> Result<(), String> {
    if parameters.is_empty() || !pgdata.join("PG_VERSION").is_file() {
        return Ok(());
    }
    let mut command = tokio::process::Command::new(postgres);
    command
        .arg("-D")
        .arg(pgdata)
        .arg("-C")
        .arg("max_connections");
    for (name, value) in parameters {
        command.arg("-c").arg(format!("{name}={value}"));
    }
    match super::process::run_tool("postgres -C", &mut command).await {
        Ok(_) => Ok(()),
        Err(super::process::ToolError::Failed { output, .. }) => Err(refusal(&output)),
        // Not a judgement on the parameters: do not block them.
        Err(e) => {
            tracing::warn!(error = %e, "cannot ask postgres about the parameters");
            Ok(())
        }
    }
}

/// PostgreSQL's `FATAL:` words out of its log lines.
fn refusal(output: &str) -> String {
    let fatal: Vec<&str> = output
        .split(" | ")
        .filter_map(|line| line.split_once("FATAL:").map(|(_, m)| m.trim()))
        .collect();
    if fatal.is_empty() {
        output.trim().to_string()
    } else {
        fatal.join("; ")
    }
}

/// Writes via a temporary file and rename: a crash leaves the old or the new
/// content, never half of it.
pub fn write_atomic(path: &Path, content: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("capstan-tmp");
    {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(content)?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

/// Creates or removes `standby.signal`.
pub fn set_standby(pgdata: &Path, standby: bool) -> Result<(), ConfigError> {
    let path = pgdata.join(STANDBY_SIGNAL);
    let result = if standby {
        write_atomic(&path, b"")
    } else {
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    };
    result.map_err(|source| ConfigError::Write {
        path: path.display().to_string(),
        source,
    })
}

pub fn is_standby(pgdata: &Path) -> bool {
    pgdata.join(STANDBY_SIGNAL).exists()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::instance::authority::AuthoritySpec;

    #[test]
    fn postgres_words_are_kept_from_its_log_lines() {
        assert_eq!(
            refusal(
                "2026-12-06 07:37:08.732 GMT [17232] FATAL:  invalid value for parameter \"work_mem\": \"x\""
            ),
            "invalid value for parameter \"work_mem\": \"x\""
        );
        assert_eq!(
            refusal(
                "2026-12-06 [1] LOG:  unrecognized configuration parameter \"a\" in file \"f\" line 1 | 2026-12-06 [1] FATAL:  configuration file \"f\" contains errors"
            ),
            "configuration file \"f\" contains errors"
        );
        assert_eq!(refusal("plain words"), "plain words");
    }
    use crate::instance::inputs::Args;
    use crate::instance::settings::tests::example;

    pub fn inputs() -> Inputs {
        Inputs::from_args(&Args {
            pod_name: "db-2".into(),
            namespace: "ns".into(),
            cluster_name: "db".into(),
            pod_ip: "10.1.2.3".into(),
            listen_address: None,
            data_dir: "/var/lib/postgresql/data/pgdata".into(),
            wal_dir: "/var/lib/postgresql/wal/pg_wal".into(),
            config_dir: "/etc/capstan/config".into(),
            secrets_dir: "/etc/capstan/secrets".into(),
            tls_dir: "/etc/capstan/tls".into(),
            run_dir: "/var/run/postgresql".into(),
            postgres_port: 5432,
            api_port: 8000,
            pg_bin_dir: None,
            old_postgres_dir: "/capstan/old-postgres".into(),
            pgbackrest: Some("/usr/bin/pgbackrest".into()),
            backrest_dir: "/var/run/postgresql/pgbackrest".into(),
            authority: AuthoritySpec::Kube,
            lease: crate::instance::lease::LeaseStoreSpec::Kube,
            shutdown_seconds: 50,
            ready_max_lag_bytes: 1,
            log_format: "text".into(),
        })
    }

    #[test]
    fn managed_settings_follow_the_pod() {
        let rendered = render(&inputs(), &example(), Desired::Primary).unwrap();
        let managed = rendered.get(MANAGED_CONF).unwrap();
        for line in [
            "listen_addresses = '10.1.2.3'",
            "port = '5432'",
            "unix_socket_directories = '/var/run/postgresql'",
            "ssl = 'on'",
            "ssl_cert_file = '/etc/capstan/tls/server/tls.crt'",
            "ssl_ca_file = '/etc/capstan/tls/server/ca.crt'",
            "wal_level = 'replica'",
            "hot_standby = 'on'",
            "wal_log_hints = 'on'",
            "max_wal_senders = '10'",
            "cluster_name = 'db'",
            "log_destination = 'stderr'",
            "archive_mode = 'off'",
        ] {
            assert!(
                managed.lines().any(|l| l == line),
                "missing {line:?} in\n{managed}"
            );
        }
        assert!(!managed.contains("primary_conninfo"));
    }

    #[test]
    fn replicas_follow_the_rw_service_through_their_slot() {
        let rendered = render(&inputs(), &example(), Desired::Replica).unwrap();
        let managed = rendered.get(MANAGED_CONF).unwrap();
        assert!(managed.contains("primary_slot_name = 'db_2'"), "{managed}");
        assert!(managed.contains("recovery_target_timeline = 'latest'"));
        let conninfo = managed
            .lines()
            .find(|l| l.starts_with("primary_conninfo"))
            .unwrap();
        // conninfo quotes are doubled inside the postgresql.conf string.
        assert!(
            conninfo.contains("host=''db-rw'' port=''5432''"),
            "{conninfo}"
        );
        assert!(conninfo.contains("user=''streaming_replica''"));
        assert!(conninfo.contains("sslmode=''verify-full''"));
        assert!(conninfo.contains("sslcert=''/etc/capstan/tls/replication/tls.crt''"));
        assert!(!conninfo.contains("password"));
    }

    #[test]
    fn managed_settings_come_after_user_settings() {
        let rendered = render(&inputs(), &example(), Desired::Primary).unwrap();
        let main = rendered.get(POSTGRESQL_CONF).unwrap();
        let defaults = main.find(DEFAULTS_CONF).unwrap();
        let user = main.find(USER_CONF).unwrap();
        let managed = main.find(MANAGED_CONF).unwrap();
        assert!(defaults < user && user < managed);
        assert!(
            rendered
                .get(DEFAULTS_CONF)
                .unwrap()
                .contains("wal_keep_size = '512MB'")
        );
        assert!(
            rendered
                .get(USER_CONF)
                .unwrap()
                .contains("work_mem = '8MB'")
        );
        // postgresql.conf is written last, once its includes exist.
        assert_eq!(rendered.0.last().unwrap().0, POSTGRESQL_CONF);
    }

    #[test]
    fn user_values_are_quoted() {
        let mut settings = example();
        settings
            .parameters
            .insert("application_name".into(), r"it's a \ test".into());
        let rendered = render(&inputs(), &settings, Desired::Primary).unwrap();
        assert!(
            rendered
                .get(USER_CONF)
                .unwrap()
                .contains(r"application_name = 'it''s a \\ test'")
        );
    }

    #[test]
    fn the_primary_names_the_other_instances_as_synchronous_standbys() {
        use crate::contract::settings::{SynchronousMode, SynchronousSettings};
        let mut settings = example();
        settings.instances = vec!["db-1".into(), "db-2".into(), "db-3".into()];
        settings.synchronous = SynchronousSettings {
            mode: SynchronousMode::Quorum,
            number: 1,
        };
        let primary = render(&inputs(), &settings, Desired::Primary).unwrap();
        let managed = primary.get(MANAGED_CONF).unwrap();
        assert!(
            managed.contains(r#"synchronous_standby_names = 'ANY 1 ("db-1", "db-3")'"#),
            "{managed}"
        );
        let replica = render(&inputs(), &settings, Desired::Replica).unwrap();
        let managed = replica.get(MANAGED_CONF).unwrap();
        assert!(
            managed.contains("synchronous_standby_names = ''"),
            "{managed}"
        );
        settings.synchronous.mode = SynchronousMode::Off;
        let primary = render(&inputs(), &settings, Desired::Primary).unwrap();
        assert!(
            primary
                .get(MANAGED_CONF)
                .unwrap()
                .contains("synchronous_standby_names = ''")
        );
    }

    #[test]
    fn backups_turn_archiving_on_through_pgbackrest_in_both_roles() {
        use crate::contract::backup::BackupSettings;
        let without = render(&inputs(), &example(), Desired::Primary).unwrap();
        let managed = without.get(MANAGED_CONF).unwrap();
        assert!(!managed.contains("archive_command"), "{managed}");
        assert!(!managed.contains("restore_command"), "{managed}");
        let mut settings = example();
        settings.backup = Some(BackupSettings {
            stanza: "db".into(),
            repositories: vec![crate::backup::Repository::posix("/backups/db")],
            archive_timeout_seconds: 300,
            archive_async: true,
            standby_backups: None,
        });
        for role in [Desired::Primary, Desired::Replica] {
            let rendered = render(&inputs(), &settings, role).unwrap();
            let managed = rendered.get(MANAGED_CONF).unwrap();
            for line in [
                "archive_mode = 'on'",
                "archive_command = '/usr/bin/pgbackrest --config=/var/run/postgresql/pgbackrest/pgbackrest.conf --stanza=db archive-push %p'",
                "restore_command = '/usr/bin/pgbackrest --config=/var/run/postgresql/pgbackrest/pgbackrest.conf --stanza=db archive-get %f \"%p\"'",
                "archive_timeout = '300s'",
            ] {
                assert!(
                    managed.lines().any(|l| l == line),
                    "missing {line:?} in\n{managed}"
                );
            }
            assert!(!managed.contains("archive_mode = 'off'"));
        }
    }

    #[test]
    fn writes_only_what_changed_and_toggles_standby() {
        let dir = tempfile::tempdir().unwrap();
        let rendered = render(&inputs(), &example(), Desired::Replica).unwrap();
        assert!(write(dir.path(), &rendered).unwrap());
        assert!(!write(dir.path(), &rendered).unwrap());
        set_standby(dir.path(), true).unwrap();
        assert!(is_standby(dir.path()));
        set_standby(dir.path(), false).unwrap();
        set_standby(dir.path(), false).unwrap();
        assert!(!is_standby(dir.path()));
    }
}

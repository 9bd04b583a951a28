//! Rendering `pgbouncer.ini` and its `auth_file` (pure).
//!
//! The operator writes [`PoolerSettings`] (pool mode, sizes, user
//! parameters); the supervisor adds what Capstan owns: where PgBouncer
//! listens, the backend (the `<name>-rw` Service), TLS on both hops and
//! `auth_query` authentication through [`roles::POOLER`]. The `auth_file`
//! holds only the pooler role's own password and the supervisor's
//! per-process admin password, never application passwords.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::contract::settings::PoolerSettings;
use crate::pooler::managed;
use crate::postgres::{pooler_auth, roles};

/// Admin console user of the supervisor; its password is generated per
/// process and only reachable through the Unix socket directory.
pub const ADMIN_USER: &str = "capstan_admin";

/// Name of the rendered configuration file in the run directory.
pub const INI_FILE: &str = "pgbouncer.ini";
/// Name of the rendered auth file in the run directory.
pub const AUTH_FILE: &str = "users.txt";

/// Settings Capstan picks but a user may override through `parameters`.
const DEFAULTS: &[(&str, &str)] = &[
    // JDBC sends it at startup; PgBouncer would refuse the connection.
    ("ignore_startup_parameters", "extra_float_digits"),
    // After a failover the first logins to the new primary can fail while
    // the Service still points at the old one, and after a crash the first
    // login meets a server still in recovery; PgBouncer's default is to
    // wait 15 s before trying again, which would be most of the outage.
    // Fractions are allowed; PgBouncer's timer makes this ~1/3 s.
    ("server_login_retry", "0.25"),
    // A frozen or partitioned primary never refuses a connection: give up
    // on it quickly (default 15 s) so queued clients reach the new one.
    ("server_connect_timeout", "3"),
];

const POOL_MODES: &[&str] = &["session", "transaction", "statement"];

/// Everything the rendering needs besides the settings document.
#[derive(Clone, Debug, PartialEq)]
pub struct Environment {
    /// Address PgBouncer listens on (the pod IP).
    pub listen_addr: String,
    pub listen_port: u16,
    /// Directory for the rendered files and PgBouncer's Unix socket.
    pub run_dir: PathBuf,
    /// Directory with `tls.crt`, `tls.key` and `ca.crt` (the cluster CA).
    pub tls_dir: PathBuf,
}

/// Credentials written to the auth file.
#[derive(Clone, PartialEq)]
pub struct Credentials {
    /// Password of [`roles::POOLER`] (from the pooler Secret).
    pub pooler_password: String,
    /// Password of [`ADMIN_USER`].
    pub admin_password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credentials { .. }")
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    #[error(
        "pooler parameters {0:?} are managed by Capstan and may not be set; remove them from spec.proxy.pgbouncer.parameters"
    )]
    Managed(Vec<String>),
    #[error(
        "pooler parameter name {0:?} is not a PgBouncer setting name (letters, digits and '_' only)"
    )]
    BadName(String),
    #[error("pooler parameter {name} has a value with a line break or a NUL byte")]
    BadValue { name: String },
    #[error("pool mode {0:?} is not one of session, transaction, statement")]
    PoolMode(String),
    #[error("{field} must be at least 1, got {value}")]
    NotPositive { field: &'static str, value: i32 },
    #[error("backend host {0:?} is empty or contains spaces, quotes or line breaks")]
    BackendHost(String),
    #[error("{what} contains a line break or a NUL byte")]
    BadCredential { what: &'static str },
}

/// The rendered files.
#[derive(Clone, PartialEq)]
pub struct Rendered {
    pub ini: String,
    pub auth_file: String,
}

impl std::fmt::Debug for Rendered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The auth file holds passwords.
        f.debug_struct("Rendered")
            .field("ini", &self.ini)
            .finish_non_exhaustive()
    }
}

/// Checks the user-controlled part of the settings.
pub fn validate(settings: &PoolerSettings) -> Result<(), ConfigError> {
    let mut managed: Vec<String> = settings
        .parameters
        .keys()
        .filter(|k| managed::is_managed(k))
        .cloned()
        .collect();
    if !managed.is_empty() {
        managed.sort();
        return Err(ConfigError::Managed(managed));
    }
    for (name, value) in &settings.parameters {
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(ConfigError::BadName(name.clone()));
        }
        if value.contains(['\n', '\r', '\0']) {
            return Err(ConfigError::BadValue { name: name.clone() });
        }
    }
    if !POOL_MODES.contains(&settings.pool_mode.as_str()) {
        return Err(ConfigError::PoolMode(settings.pool_mode.clone()));
    }
    for (field, value) in [
        ("maxClientConn", settings.max_client_conn),
        ("defaultPoolSize", settings.default_pool_size),
    ] {
        if value < 1 {
            return Err(ConfigError::NotPositive { field, value });
        }
    }
    let host = &settings.backend_host;
    if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c == '\'' || c == '"') {
        return Err(ConfigError::BackendHost(host.clone()));
    }
    Ok(())
}

/// Renders `pgbouncer.ini` and the auth file.
pub fn render(
    settings: &PoolerSettings,
    env: &Environment,
    credentials: &Credentials,
) -> Result<Rendered, ConfigError> {
    validate(settings)?;
    for (what, value) in [
        ("the pooler role's password", &credentials.pooler_password),
        ("the admin password", &credentials.admin_password),
    ] {
        if value.contains(['\n', '\r', '\0']) {
            return Err(ConfigError::BadCredential { what });
        }
    }

    let mut values: BTreeMap<String, String> = DEFAULTS
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    for (k, v) in &settings.parameters {
        values.insert(k.to_ascii_lowercase(), v.clone());
    }
    let tls = |file: &str| path_str(&env.tls_dir.join(file));
    let managed_values: Vec<(&str, String)> = vec![
        ("listen_addr", env.listen_addr.clone()),
        ("listen_port", env.listen_port.to_string()),
        ("unix_socket_dir", path_str(&env.run_dir)),
        ("pool_mode", settings.pool_mode.clone()),
        ("max_client_conn", settings.max_client_conn.to_string()),
        ("default_pool_size", settings.default_pool_size.to_string()),
        ("auth_type", "scram-sha-256".into()),
        ("auth_file", path_str(&env.run_dir.join(AUTH_FILE))),
        ("auth_user", roles::POOLER.into()),
        ("auth_query", pooler_auth::AUTH_QUERY.into()),
        ("admin_users", ADMIN_USER.into()),
        ("client_tls_sslmode", "require".into()),
        (
            "client_tls_cert_file",
            tls(crate::contract::layout::files::TLS_CRT),
        ),
        (
            "client_tls_key_file",
            tls(crate::contract::layout::files::TLS_KEY),
        ),
        ("server_tls_sslmode", "verify-full".into()),
        (
            "server_tls_ca_file",
            tls(crate::contract::layout::files::CA_CRT),
        ),
        // Logs go to the container's stderr.
        ("logfile", String::new()),
        ("syslog", "0".into()),
    ];

    let mut ini = String::new();
    ini.push_str("# Rendered by capstan pooler; changes are overwritten.\n");
    ini.push_str("[databases]\n");
    // Every database is served by the current primary.
    let _ = writeln!(
        ini,
        "* = host={} port={}",
        settings.backend_host, settings.backend_port
    );
    ini.push_str("\n[pgbouncer]\n");
    for (k, v) in &values {
        let _ = writeln!(ini, "{k} = {v}");
    }
    for (k, v) in &managed_values {
        let _ = writeln!(ini, "{k} = {v}");
    }

    let mut auth_file = String::new();
    for (user, password) in [
        (roles::POOLER, &credentials.pooler_password),
        (ADMIN_USER, &credentials.admin_password),
    ] {
        let _ = writeln!(auth_file, "{} {}", quote(user), quote(password));
    }
    Ok(Rendered { ini, auth_file })
}

/// `auth_file` quoting: double quotes around, inner quotes doubled.
fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

fn path_str(p: &Path) -> String {
    p.display().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> PoolerSettings {
        PoolerSettings {
            cluster: "db".into(),
            namespace: "ns".into(),
            backend_host: "db-rw".into(),
            backend_port: 5432,
            pool_mode: "transaction".into(),
            max_client_conn: 1000,
            default_pool_size: 20,
            parameters: BTreeMap::from([("server_idle_timeout".into(), "30".into())]),
        }
    }

    fn env() -> Environment {
        Environment {
            listen_addr: "10.0.0.7".into(),
            listen_port: 5432,
            run_dir: "/var/run/pgbouncer".into(),
            tls_dir: "/etc/capstan/tls/pooler".into(),
        }
    }

    fn creds() -> Credentials {
        Credentials {
            pooler_password: "p\"w".into(),
            admin_password: "adminpw".into(),
        }
    }

    fn lines(ini: &str) -> Vec<&str> {
        ini.lines().collect()
    }

    #[test]
    fn renders_wildcard_backend_tls_and_auth_query() {
        let r = render(&settings(), &env(), &creds()).unwrap();
        let l = lines(&r.ini);
        assert!(l.contains(&"* = host=db-rw port=5432"));
        assert!(l.contains(&"listen_addr = 10.0.0.7"));
        assert!(l.contains(&"listen_port = 5432"));
        assert!(l.contains(&"pool_mode = transaction"));
        assert!(l.contains(&"max_client_conn = 1000"));
        assert!(l.contains(&"default_pool_size = 20"));
        assert!(l.contains(&"server_idle_timeout = 30"));
        assert!(l.contains(&"auth_type = scram-sha-256"));
        assert!(l.contains(&"auth_user = capstan_pooler"));
        assert!(l.contains(&"auth_file = /var/run/pgbouncer/users.txt"));
        assert!(l.contains(&format!("auth_query = {}", pooler_auth::AUTH_QUERY).as_str()));
        assert!(l.contains(&"client_tls_sslmode = require"));
        assert!(l.contains(&"client_tls_cert_file = /etc/capstan/tls/pooler/tls.crt"));
        assert!(l.contains(&"client_tls_key_file = /etc/capstan/tls/pooler/tls.key"));
        assert!(l.contains(&"server_tls_sslmode = verify-full"));
        assert!(l.contains(&"server_tls_ca_file = /etc/capstan/tls/pooler/ca.crt"));
        assert!(l.contains(&"admin_users = capstan_admin"));
        assert!(l.contains(&"unix_socket_dir = /var/run/pgbouncer"));
        assert!(l.contains(&"ignore_startup_parameters = extra_float_digits"));
        // The databases section comes first, then one [pgbouncer] section.
        assert_eq!(r.ini.matches("[pgbouncer]").count(), 1);
        assert!(r.ini.find("[databases]").unwrap() < r.ini.find("[pgbouncer]").unwrap());
    }

    #[test]
    fn auth_file_has_only_the_pooler_and_admin_credentials() {
        let r = render(&settings(), &env(), &creds()).unwrap();
        assert_eq!(
            r.auth_file,
            "\"capstan_pooler\" \"p\"\"w\"\n\"capstan_admin\" \"adminpw\"\n"
        );
        assert!(!format!("{r:?}").contains("adminpw"));
    }

    #[test]
    fn user_may_override_defaults() {
        let mut s = settings();
        s.parameters
            .insert("ignore_startup_parameters".into(), "options".into());
        let r = render(&s, &env(), &creds()).unwrap();
        assert!(lines(&r.ini).contains(&"ignore_startup_parameters = options"));
        assert!(!r.ini.contains("extra_float_digits"));
    }

    #[test]
    fn managed_parameters_are_rejected_by_name() {
        let mut s = settings();
        s.parameters.insert("auth_type".into(), "trust".into());
        s.parameters.insert("Listen_Port".into(), "6432".into());
        let err = render(&s, &env(), &creds()).unwrap_err();
        assert_eq!(
            err,
            ConfigError::Managed(vec!["Listen_Port".into(), "auth_type".into()])
        );
        let message = err.to_string();
        assert!(message.contains("auth_type") && message.contains("Listen_Port"));
    }

    #[test]
    fn injection_through_names_or_values_is_rejected() {
        let mut s = settings();
        s.parameters
            .insert("x\n[databases]\nevil".into(), "1".into());
        assert!(matches!(validate(&s), Err(ConfigError::BadName(_))));

        let mut s = settings();
        s.parameters
            .insert("server_idle_timeout".into(), "1\nauth_type = trust".into());
        assert!(matches!(validate(&s), Err(ConfigError::BadValue { .. })));

        let mut s = settings();
        s.backend_host = "db-rw user=postgres".into();
        assert!(matches!(validate(&s), Err(ConfigError::BackendHost(_))));

        let mut c = creds();
        c.pooler_password = "a\nb".into();
        assert!(matches!(
            render(&settings(), &env(), &c),
            Err(ConfigError::BadCredential { .. })
        ));
    }

    #[test]
    fn pool_mode_and_sizes_are_checked() {
        let mut s = settings();
        s.pool_mode = "sessions".into();
        assert_eq!(validate(&s), Err(ConfigError::PoolMode("sessions".into())));
        let mut s = settings();
        s.default_pool_size = 0;
        assert!(matches!(
            validate(&s),
            Err(ConfigError::NotPositive {
                field: "defaultPoolSize",
                ..
            })
        ));
    }

    #[test]
    fn rendering_is_deterministic() {
        let a = render(&settings(), &env(), &creds()).unwrap();
        let b = render(&settings(), &env(), &creds()).unwrap();
        assert_eq!(a, b);
    }
}

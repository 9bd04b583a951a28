//! Loading and checking `instance.json` (the cluster ConfigMap). A bad
//! document is reported and not applied; PostgreSQL keeps the last good
//! configuration and the data directory is never touched.

use std::path::Path;

use crate::contract::settings::{FencingSettings, InstanceSettings};
use crate::postgres::{conf, hba, parameters};

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("cannot read settings file {path}: {message}")]
    Read { path: String, message: String },
    #[error("settings file {path} is not valid instance settings JSON: {message}")]
    Parse { path: String, message: String },
    #[error(
        "parameter(s) {0} are managed by Capstan and may not be set in spec.postgres.parameters; the configuration was not applied"
    )]
    Managed(String),
    #[error("invalid parameter: {0}; the configuration was not applied")]
    Conf(#[from] conf::ConfError),
    #[error("invalid hba rule: {0}; the configuration was not applied")]
    Hba(#[from] hba::HbaError),
    #[error("the settings are for cluster {found:?}, but this instance belongs to {expected:?}")]
    WrongCluster { expected: String, found: String },
    #[error("invalid fencing settings: {0}; the configuration was not applied")]
    Fencing(String),
}

/// Reads the document as text (compared with the last one to see changes).
pub fn read(path: &Path) -> Result<String, SettingsError> {
    std::fs::read_to_string(path).map_err(|e| SettingsError::Read {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

/// Parses and checks a settings document for `cluster`/`namespace`.
pub fn parse(
    path: &Path,
    text: &str,
    cluster: &str,
    namespace: &str,
) -> Result<InstanceSettings, SettingsError> {
    let settings: InstanceSettings =
        serde_json::from_str(text).map_err(|e| SettingsError::Parse {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
    validate(&settings, cluster, namespace)?;
    Ok(settings)
}

pub fn validate(
    settings: &InstanceSettings,
    cluster: &str,
    namespace: &str,
) -> Result<(), SettingsError> {
    if settings.cluster != cluster || settings.namespace != namespace {
        return Err(SettingsError::WrongCluster {
            expected: format!("{namespace}/{cluster}"),
            found: format!("{}/{}", settings.namespace, settings.cluster),
        });
    }
    let managed = parameters::managed_among(settings.parameters.keys());
    if !managed.is_empty() {
        return Err(SettingsError::Managed(managed.join(", ")));
    }
    for (name, value) in &settings.parameters {
        conf::validate_name(name)?;
        conf::quote_value(name, value)?;
    }
    hba::validate_user_lines(&settings.hba)?;
    if let Some(fencing) = &settings.fencing {
        validate_fencing(fencing).map_err(SettingsError::Fencing)?;
    }
    Ok(())
}

/// Longest lease duration accepted: beyond it a lost primary is replaced
/// so late that the number is surely a mistake.
const MAX_LEASE_DURATION_MS: u64 = 3_600_000;

/// The fence only works when renewals come before the fence and the fence
/// before anyone may take over; the name becomes a file name with
/// `--lease file:`, so it must be a plain Kubernetes object name.
fn validate_fencing(f: &FencingSettings) -> Result<(), String> {
    let name_ok = !f.lease_name.is_empty()
        && f.lease_name.len() <= 253
        && f.lease_name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && f.lease_name.as_bytes()[0].is_ascii_alphanumeric()
        && !f.lease_name.contains("..");
    if !name_ok {
        return Err(format!(
            "lease name {:?} is not a Kubernetes object name",
            f.lease_name
        ));
    }
    let ordered = 0 < f.renew_interval_ms
        && f.renew_interval_ms < f.fence_after_ms
        && f.fence_after_ms < f.lease_duration_ms
        && f.lease_duration_ms <= MAX_LEASE_DURATION_MS;
    if !ordered {
        return Err(format!(
            "need 0 < renewIntervalMs ({}) < fenceAfterMs ({}) < leaseDurationMs ({}) <= {MAX_LEASE_DURATION_MS}",
            f.renew_interval_ms, f.fence_after_ms, f.lease_duration_ms
        ));
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::contract::settings::InitdbSettings;

    pub fn example() -> InstanceSettings {
        InstanceSettings {
            cluster: "db".into(),
            namespace: "ns".into(),
            postgres_version: 15,
            parameters: [("work_mem".to_string(), "8MB".to_string())].into(),
            hba: vec![],
            initdb: InitdbSettings {
                database: "app".into(),
                owner: "app".into(),
                encoding: "UTF8".into(),
                locale: "C".into(),
                data_checksums: true,
            },
            primary_host: "db-rw".into(),
            primary_port: 5432,
            instances: vec!["db-1".into(), "db-2".into()],
            separate_wal: false,
            fencing: None,
            synchronous: Default::default(),
            backup: None,
            restore: None,
            major_upgrade: None,
            roles: vec![],
            databases: vec![],
        }
    }

    #[test]
    fn accepts_a_good_document() {
        assert!(validate(&example(), "db", "ns").is_ok());
    }

    #[test]
    fn names_every_managed_parameter() {
        let mut s = example();
        s.parameters.insert("Port".into(), "1".into());
        s.parameters.insert("wal_level".into(), "minimal".into());
        let err = validate(&s, "db", "ns").unwrap_err().to_string();
        assert!(err.contains("Port") && err.contains("wal_level"), "{err}");
        assert!(err.contains("not applied"), "{err}");
    }

    #[test]
    fn rejects_bad_names_hba_and_other_clusters() {
        let mut s = example();
        s.parameters.insert("a b".into(), "1".into());
        assert!(matches!(
            validate(&s, "db", "ns"),
            Err(SettingsError::Conf(_))
        ));
        let mut s = example();
        s.hba.push("include /etc/shadow".into());
        assert!(matches!(
            validate(&s, "db", "ns"),
            Err(SettingsError::Hba(_))
        ));
        assert!(matches!(
            validate(&example(), "other", "ns"),
            Err(SettingsError::WrongCluster { .. })
        ));
    }

    #[test]
    fn fencing_timings_must_be_ordered_and_the_name_plain() {
        let good = FencingSettings {
            lease_name: "db-primary".into(),
            lease_duration_ms: 4000,
            renew_interval_ms: 1000,
            fence_after_ms: 2000,
        };
        let mut s = example();
        s.fencing = Some(good.clone());
        assert!(validate(&s, "db", "ns").is_ok());
        let bad = [
            FencingSettings {
                fence_after_ms: 4000,
                ..good.clone()
            },
            FencingSettings {
                renew_interval_ms: 0,
                ..good.clone()
            },
            FencingSettings {
                renew_interval_ms: 2500,
                ..good.clone()
            },
            FencingSettings {
                lease_duration_ms: u64::MAX,
                ..good.clone()
            },
            FencingSettings {
                lease_name: "../etc/passwd".into(),
                ..good.clone()
            },
            FencingSettings {
                lease_name: String::new(),
                ..good.clone()
            },
        ];
        for fencing in bad {
            s.fencing = Some(fencing.clone());
            let err = validate(&s, "db", "ns").unwrap_err();
            assert!(
                matches!(err, SettingsError::Fencing(_)),
                "{fencing:?}: {err}"
            );
        }
    }

    #[test]
    fn parse_reports_the_file() {
        let err = parse(Path::new("/x/instance.json"), "{", "db", "ns").unwrap_err();
        assert!(err.to_string().contains("/x/instance.json"));
    }
}

//! Which cluster a data volume belongs to. The first primary (and every
//! clone) writes `capstan-identity.json` next to PGDATA, before PGDATA
//! appears; an existing data directory is only used when the file names this
//! cluster and the same system identifier as `pg_control`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::config::write_atomic;

pub const FILE: &str = "capstan-identity.json";

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Identity {
    pub namespace: String,
    pub cluster: String,
    /// `pg_control` system identifier, as text (it exceeds 2^53).
    pub system_identifier: String,
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot read {path}: {message}")]
    Read { path: String, message: String },
    #[error("cannot write {path}: {message}")]
    Write { path: String, message: String },
    #[error(
        "the data directory {data} has no Capstan identity file ({path}); refusing to use data of unknown origin (move it away to let the instance re-create it)"
    )]
    Unknown { data: String, path: String },
    #[error(
        "the data directory belongs to cluster {found}, not {expected}; refusing to start on it (data left untouched)"
    )]
    OtherCluster { expected: String, found: String },
    #[error(
        "the data directory has system identifier {found}, but this volume was created for system {expected}; refusing to start on it (data left untouched)"
    )]
    OtherSystem { expected: String, found: String },
}

pub fn path(data_volume: &Path) -> PathBuf {
    data_volume.join(FILE)
}

pub fn read(data_volume: &Path) -> Result<Option<Identity>, IdentityError> {
    let path = path(data_volume);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(IdentityError::Read {
                path: path.display().to_string(),
                message: e.to_string(),
            });
        }
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| IdentityError::Read {
            path: path.display().to_string(),
            message: e.to_string(),
        })
}

pub fn write(data_volume: &Path, identity: &Identity) -> Result<(), IdentityError> {
    let path = path(data_volume);
    let text = serde_json::to_vec_pretty(identity).map_err(|e| IdentityError::Write {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    write_atomic(&path, &text).map_err(|e| IdentityError::Write {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

/// Checks existing data (`system_identifier` from pg_control) against the
/// recorded identity.
pub fn check(
    recorded: Option<&Identity>,
    pgdata: &Path,
    data_volume: &Path,
    namespace: &str,
    cluster: &str,
    system_identifier: u64,
) -> Result<(), IdentityError> {
    let Some(recorded) = recorded else {
        return Err(IdentityError::Unknown {
            data: pgdata.display().to_string(),
            path: path(data_volume).display().to_string(),
        });
    };
    if recorded.namespace != namespace || recorded.cluster != cluster {
        return Err(IdentityError::OtherCluster {
            expected: format!("{namespace}/{cluster}"),
            found: format!("{}/{}", recorded.namespace, recorded.cluster),
        });
    }
    if recorded.system_identifier != system_identifier.to_string() {
        return Err(IdentityError::OtherSystem {
            expected: recorded.system_identifier.clone(),
            found: system_identifier.to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> Identity {
        Identity {
            namespace: "ns".into(),
            cluster: "db".into(),
            system_identifier: "7310000000000000001".into(),
        }
    }

    #[test]
    fn round_trips_and_checks() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read(dir.path()).unwrap().is_none());
        write(dir.path(), &identity()).unwrap();
        let found = read(dir.path()).unwrap();
        assert_eq!(found, Some(identity()));
        let pgdata = dir.path().join("pgdata");
        assert!(
            check(
                found.as_ref(),
                &pgdata,
                dir.path(),
                "ns",
                "db",
                7310000000000000001
            )
            .is_ok()
        );
    }

    #[test]
    fn refuses_unknown_other_cluster_and_other_system() {
        let dir = tempfile::tempdir().unwrap();
        let pgdata = dir.path().join("pgdata");
        let id = identity();
        assert!(matches!(
            check(None, &pgdata, dir.path(), "ns", "db", 1),
            Err(IdentityError::Unknown { .. })
        ));
        let err = check(
            Some(&id),
            &pgdata,
            dir.path(),
            "ns",
            "other",
            7310000000000000001,
        )
        .unwrap_err();
        assert!(matches!(err, IdentityError::OtherCluster { .. }), "{err}");
        assert!(err.to_string().contains("ns/db"));
        assert!(matches!(
            check(Some(&id), &pgdata, dir.path(), "ns", "db", 42),
            Err(IdentityError::OtherSystem { .. })
        ));
    }
}

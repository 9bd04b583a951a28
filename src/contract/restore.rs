//! What the operator and the instance managers agree on for a cluster
//! bootstrapped from a backup (`spec.bootstrap.restore`): the `restore`
//! block of `instance.json`, and what the restoring instance reports.
//! pgBackRest does the work; these only carry what to restore and how it
//! went.

use serde::{Deserialize, Serialize};

pub use crate::backup::repository::Repository;

/// `instance.json` → `restore`: present when `spec.bootstrap.restore` is
/// set. Only an instance that bootstraps the cluster (named primary, empty
/// data directory) uses it; replicas clone from the restored primary.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RestoreSettings {
    /// The source's pgBackRest stanza: the name of the cluster that wrote
    /// the backups.
    pub stanza: String,
    /// Where the source's backups and WAL are. Credentials are files under
    /// [`super::layout::RESTORE_SECRETS_DIR`], mounted from the Secret the
    /// spec names.
    pub repository: Repository,
    /// Where recovery stops.
    #[serde(default)]
    pub target: RestoreTarget,
}

/// `spec.bootstrap.restore.target`, checked at admission.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum RestoreTarget {
    /// The end of the archived WAL.
    #[default]
    Latest,
    /// RFC 3339 with a zone offset.
    Time(String),
    /// A WAL position such as `0/3000060`.
    Lsn(String),
    /// A restore point made with `pg_create_restore_point`.
    Name(String),
    /// A pgBackRest backup label: restore it and stop where it ends.
    Backup(String),
}

/// Where a restoring instance is.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestorePhase {
    /// `pgbackrest restore` copies the backup into a staging directory.
    Restoring,
    /// PostgreSQL replays WAL from the source's archive up to the target.
    Recovering,
    /// The last attempt failed; the next one starts after `retryInSeconds`.
    Waiting,
    /// Promoted on a new timeline: the cluster runs on the restored data.
    Completed,
}

/// `GET /status` → `restore`: the bootstrap from a backup on this instance.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RestoreReport {
    pub phase: RestorePhase,
    /// The source stanza.
    pub stanza: String,
    /// Attempts so far (the current one included).
    pub attempts: u32,
    /// Why the last attempt failed (pgBackRest's or PostgreSQL's own
    /// words); kept while the next attempt runs, cleared on success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_in_seconds: Option<u64>,
}

impl RestoreReport {
    /// The restore failed and has not succeeded since.
    pub fn failing(&self) -> Option<&str> {
        match self.phase {
            RestorePhase::Completed => None,
            _ => self.last_error.as_deref(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_read_as_the_operator_writes_them() {
        let t: RestoreTarget = serde_json::from_str(r#"{"time":"2026-12-04T10:00:00Z"}"#).unwrap();
        assert_eq!(t, RestoreTarget::Time("2026-12-04T10:00:00Z".into()));
        assert_eq!(
            serde_json::to_value(RestoreTarget::Latest).unwrap(),
            "latest"
        );
        assert_eq!(
            serde_json::to_value(RestoreTarget::Backup("20261204-100000F".into())).unwrap(),
            serde_json::json!({"backup": "20261204-100000F"})
        );
    }

    #[test]
    fn a_restore_fails_until_it_completes() {
        let mut r = RestoreReport {
            phase: RestorePhase::Restoring,
            stanza: "orders".into(),
            attempts: 2,
            last_error: Some("ERROR: [075]: no backup".into()),
            retry_in_seconds: None,
        };
        assert_eq!(r.failing(), Some("ERROR: [075]: no backup"));
        r.phase = RestorePhase::Completed;
        assert_eq!(r.failing(), None);
        r.phase = RestorePhase::Recovering;
        r.last_error = None;
        assert_eq!(r.failing(), None);
    }
}

//! What the operator, the instance managers and the verification pod agree
//! on for verification by restore: the sentinel row the primary writes just
//! before each backup starts, and the result the `capstan verify` container
//! leaves in its termination message for the operator to read.
//!
//! The termination message (`terminationMessagePath`, at most 4 KiB, read
//! from `status.containerStatuses[].state.terminated.message`) needs no API
//! access from the pod: no ServiceAccount token, no Role, nothing a
//! compromised restore could use.

use serde::{Deserialize, Serialize};

use crate::postgres::sql::quote_literal;

/// Database, schema and table of the sentinel rows. Capstan's own schema
/// in the `postgres` database: never a user database.
pub const SENTINEL_DATABASE: &str = "postgres";
pub const SENTINEL_SCHEMA: &str = "capstan";
pub const SENTINEL_TABLE: &str = "capstan.backup_sentinel";
/// Rows kept: the newest ones (older backups are expired long before).
pub const SENTINELS_KEPT: i64 = 100;

/// SQL the primary runs before each backup: one row per `PostgresBackup`
/// (its name), with the time it was written.
pub fn sentinel_sql(backup: &str) -> String {
    let name = quote_literal(backup);
    format!(
        "CREATE SCHEMA IF NOT EXISTS {SENTINEL_SCHEMA};
         CREATE TABLE IF NOT EXISTS {SENTINEL_TABLE} (
             backup text PRIMARY KEY,
             written_at timestamptz NOT NULL DEFAULT now());
         INSERT INTO {SENTINEL_TABLE} (backup) VALUES ({name})
             ON CONFLICT (backup) DO UPDATE SET written_at = now();
         DELETE FROM {SENTINEL_TABLE} WHERE backup NOT IN
             (SELECT backup FROM {SENTINEL_TABLE} ORDER BY written_at DESC LIMIT {SENTINELS_KEPT});"
    )
}

/// The query whose first column must be `backup` in the restored copy.
pub fn sentinel_query(backup: &str) -> String {
    format!(
        "SELECT backup FROM {SENTINEL_TABLE} WHERE backup = {}",
        quote_literal(backup)
    )
}

/// The kubelet keeps at most 4096 bytes of a termination message.
pub const MAX_MESSAGE_BYTES: usize = 4096;
/// Room left for the other fields when the error is long.
const MAX_ERROR_BYTES: usize = 2500;

/// What `capstan verify` reports (JSON in its termination message).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VerifyResult {
    pub passed: bool,
    /// The pgBackRest label restored.
    pub label: String,
    /// Seconds, to the millisecond; absent when that step did not finish.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_seconds: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery_seconds: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checks_seconds: Option<f64>,
    pub total_seconds: f64,
    /// Databases whose catalogs were read.
    #[serde(default)]
    pub databases: usize,
    /// `Passed`, `NotAvailable` (no pg_amcheck or amcheck extension) or
    /// `Failed`; absent when the checks did not run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amcheck: Option<String>,
    /// Whether the sentinel row was found; absent when not checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sentinel_found: Option<bool>,
    /// What failed, in pgBackRest's or PostgreSQL's words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl VerifyResult {
    /// JSON that fits a termination message: a long error is shortened.
    pub fn to_message(&self) -> String {
        let mut r = self.clone();
        if let Some(e) = &mut r.error {
            shorten(e, MAX_ERROR_BYTES);
        }
        let text = serde_json::to_string(&r).unwrap_or_default();
        if text.len() <= MAX_MESSAGE_BYTES {
            return text;
        }
        r.error = r.error.map(|mut e| {
            shorten(&mut e, 500);
            e
        });
        serde_json::to_string(&r).unwrap_or_default()
    }

    pub fn from_message(text: &str) -> Option<Self> {
        serde_json::from_str(text.trim()).ok()
    }
}

/// Cuts `text` to at most `max` bytes on a character boundary, marking the cut.
pub fn shorten(text: &mut String, max: usize) {
    if text.len() <= max {
        return;
    }
    let mut end = max.saturating_sub(3);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push('…');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_quoted_in_the_sentinel_sql() {
        let sql = sentinel_sql("it's");
        assert!(sql.contains("VALUES ('it''s')"), "{sql}");
        assert!(sql.contains("CREATE SCHEMA IF NOT EXISTS capstan"), "{sql}");
        assert_eq!(
            sentinel_query("db-full"),
            "SELECT backup FROM capstan.backup_sentinel WHERE backup = 'db-full'"
        );
    }

    #[test]
    fn a_result_fits_a_termination_message_and_reads_back() {
        let r = VerifyResult {
            passed: false,
            label: "20261204-100000F".into(),
            restore_seconds: Some(1.5),
            total_seconds: 2.0,
            error: Some("é".repeat(10_000)),
            ..VerifyResult::default()
        };
        let text = r.to_message();
        assert!(text.len() <= MAX_MESSAGE_BYTES, "{}", text.len());
        let back = VerifyResult::from_message(&text).unwrap();
        assert_eq!(back.label, r.label);
        assert_eq!(back.restore_seconds, Some(1.5));
        assert!(back.error.unwrap().ends_with('…'));
        assert_eq!(VerifyResult::from_message("not json"), None);
    }
}

//! What `capstan check-image` (the one process of an image-check pod)
//! leaves in its termination message: whether the PostgreSQL image the
//! spec names runs the major the cluster needs, before any instance pod is
//! given that image.

use serde::{Deserialize, Serialize};

use super::verify::{MAX_MESSAGE_BYTES, shorten};

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ImageCheckResult {
    pub passed: bool,
    /// `postgres --version` of the image, when it ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// `pgbackrest version`, when backups are configured and it ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pgbackrest: Option<String>,
    /// Why the image cannot be used, with the fix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The major upgrade rehearsed on a copy of the primary, when it passed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgrade: Option<UpgradeRehearsal>,
    /// The image passed, the upgrade rehearsed on it did not (`error`
    /// says why).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rehearsal_failed: bool,
}

/// pg_upgrade run on a copy of the primary by the check pod.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct UpgradeRehearsal {
    pub from: u32,
    /// The copy's size (data and WAL).
    pub database_bytes: u64,
    /// What `pg_upgrade --link` wrote besides the linked files: the free
    /// space the primary's data volume needs.
    pub link_bytes: u64,
    pub copy_ms: u64,
    pub pg_upgrade_ms: u64,
    /// `name version` of each extension.
    #[serde(default)]
    pub extensions: Vec<String>,
}

impl ImageCheckResult {
    pub fn to_message(&self) -> String {
        let mut r = self.clone();
        if let Some(e) = &mut r.error {
            shorten(e, MAX_MESSAGE_BYTES - 500);
        }
        serde_json::to_string(&r).unwrap_or_default()
    }

    pub fn from_message(text: &str) -> Option<Self> {
        serde_json::from_str(text.trim()).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_result_reads_back_from_its_message() {
        let r = ImageCheckResult {
            passed: false,
            version: Some("16.4".into()),
            pgbackrest: None,
            error: Some("x".repeat(10_000)),
            upgrade: None,
            rehearsal_failed: false,
        };
        let text = r.to_message();
        assert!(text.len() <= MAX_MESSAGE_BYTES);
        let back = ImageCheckResult::from_message(&text).unwrap();
        assert_eq!(back.version.as_deref(), Some("16.4"));
        assert!(!back.passed);
    }
}

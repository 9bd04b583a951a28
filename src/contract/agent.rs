//! The agent binary: what each agent says it runs, and how the operator
//! hands it a new one (`POST /binary`) when Capstan itself is upgraded.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Header of `POST /binary` naming the SHA-256 (hex) of the body.
pub const BINARY_SHA256_HEADER: &str = "x-capstan-sha256";
/// Largest binary `POST /binary` accepts.
pub const MAX_BINARY_BYTES: usize = 512 * 1024 * 1024;

/// The running agent binary (`agent` of `GET /status`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AgentBuild {
    /// Capstan's version (`CARGO_PKG_VERSION`).
    pub version: String,
    /// SHA-256 (hex) of the executable file; None while it is computed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// CPU architecture it was built for (`x86_64`, `aarch64`).
    pub arch: String,
    /// It runs from the pod's binary volume and can take a new binary in
    /// place (`POST /binary`); otherwise only a new pod updates it.
    pub replaceable: bool,
}

impl AgentBuild {
    /// The short form status shows: the first 12 hex digits.
    pub fn short(&self) -> Option<String> {
        self.sha256.as_deref().map(short_sha)
    }
}

pub fn short_sha(sha256: &str) -> String {
    sha256.chars().take(12).collect()
}

/// One mounted TLS Secret as the agent reads it now: which certificate it
/// holds and which CAs its `ca.crt` trusts (SHA-256 fingerprints, see
/// `crate::tls::fingerprint`). Tells the operator when every pod trusts a
/// new CA, so certificates may move to it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct MountedTls {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusts: Vec<String>,
    /// When the certificate expires (Unix seconds), for the expiry metric.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<i64>,
}

/// Mounted TLS Secrets by mount name (`server`, `agent`, …).
pub type TlsMounts = BTreeMap<String, MountedTls>;

//! Certificates for a cluster's TLS: an operator-run CA per cluster, server
//! certificates for instances and poolers, client certificates for
//! replication and for the operator itself (rcgen, ECDSA P-256).

use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use time::OffsetDateTime;

/// How long a new CA is valid.
pub const CA_VALIDITY: Duration = Duration::from_secs(5 * 365 * 24 * 3600);
/// How long a new leaf certificate is valid.
pub const LEAF_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// Leaf certificates are re-issued when they expire sooner than this.
pub const RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot generate a key pair: {0}")]
    Key(#[source] rcgen::Error),
    #[error("cannot issue the {what} certificate: {source}")]
    Issue {
        what: &'static str,
        #[source]
        source: rcgen::Error,
    },
    #[error(
        "the CA in Secret data is unusable ({0}); delete the CA Secret only if you also want every certificate re-issued"
    )]
    BadCa(String),
    #[error("cannot read a certificate: {0}")]
    Parse(String),
}

/// A certificate with its private key, both PEM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

/// What the operator needs to know about an existing certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    pub common_name: Option<String>,
    pub dns_names: Vec<String>,
    /// Seconds since the Unix epoch.
    pub not_after: i64,
}

impl CertInfo {
    /// RFC 3339 form of `not_after`, as reported in status.
    pub fn not_after_rfc3339(&self) -> String {
        jiff::Timestamp::from_second(self.not_after)
            .map(|t| t.to_string())
            .unwrap_or_default()
    }

    /// Whether the certificate should be re-issued at `now` (Unix seconds).
    pub fn expires_soon(&self, now: i64) -> bool {
        self.not_after - now < RENEW_BEFORE.as_secs() as i64
    }
}

fn validity(now: OffsetDateTime, lifetime: Duration) -> (OffsetDateTime, OffsetDateTime) {
    // Back-date a little: nodes' clocks are never perfectly in step.
    (now - time::Duration::minutes(5), now + lifetime)
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Capstan");
    dn.push(DnType::CommonName, common_name);
    dn
}

/// A new self-signed CA.
pub fn new_ca(common_name: &str, now: OffsetDateTime) -> Result<Issued, TlsError> {
    let key = KeyPair::generate().map_err(TlsError::Key)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = name(common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    (params.not_before, params.not_after) = validity(now, CA_VALIDITY);
    let cert = params
        .self_signed(&key)
        .map_err(|source| TlsError::Issue { what: "CA", source })?;
    Ok(Issued {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

fn issuer(ca: &Issued) -> Result<Issuer<'static, KeyPair>, TlsError> {
    let key = KeyPair::from_pem(&ca.key_pem).map_err(|e| TlsError::BadCa(e.to_string()))?;
    Issuer::from_ca_cert_pem(&ca.cert_pem, key).map_err(|e| TlsError::BadCa(e.to_string()))
}

/// A server certificate for `dns_names` (the first is also the common name).
pub fn issue_server(
    ca: &Issued,
    dns_names: &[String],
    now: OffsetDateTime,
) -> Result<Issued, TlsError> {
    let common_name = dns_names.first().map(String::as_str).unwrap_or("server");
    issue_leaf(
        ca,
        common_name,
        dns_names,
        &[ExtendedKeyUsagePurpose::ServerAuth],
        now,
        "server",
    )
}

/// A certificate that serves `dns_names` and, under the first of them as
/// its common name, also authenticates as a client: pgBackRest's TLS
/// servers and the standbys that call them share one.
pub fn issue_peer(
    ca: &Issued,
    dns_names: &[String],
    now: OffsetDateTime,
) -> Result<Issued, TlsError> {
    let common_name = dns_names.first().map(String::as_str).unwrap_or("peer");
    issue_leaf(
        ca,
        common_name,
        dns_names,
        &[
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
        now,
        "peer",
    )
}

/// A client certificate whose common name is the PostgreSQL role (or the
/// agent identity) it authenticates as.
pub fn issue_client(
    ca: &Issued,
    common_name: &str,
    now: OffsetDateTime,
) -> Result<Issued, TlsError> {
    issue_leaf(
        ca,
        common_name,
        &[],
        &[ExtendedKeyUsagePurpose::ClientAuth],
        now,
        "client",
    )
}

fn issue_leaf(
    ca: &Issued,
    common_name: &str,
    dns_names: &[String],
    usages: &[ExtendedKeyUsagePurpose],
    now: OffsetDateTime,
    what: &'static str,
) -> Result<Issued, TlsError> {
    let issuer = issuer(ca)?;
    let key = KeyPair::generate().map_err(TlsError::Key)?;
    let mut params = CertificateParams::new(dns_names.to_vec())
        .map_err(|source| TlsError::Issue { what, source })?;
    params.distinguished_name = name(common_name);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = usages.to_vec();
    params.use_authority_key_identifier_extension = true;
    (params.not_before, params.not_after) = validity(now, LEAF_VALIDITY);
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(|source| TlsError::Issue { what, source })?;
    Ok(Issued {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Reads the first certificate of a PEM bundle.
pub fn inspect(cert_pem: &str) -> Result<CertInfo, TlsError> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes())
        .map_err(|e| TlsError::Parse(e.to_string()))?;
    let cert = pem
        .parse_x509()
        .map_err(|e| TlsError::Parse(e.to_string()))?;
    let common_name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_string);
    let mut dns_names = vec![];
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(dns) = name {
                dns_names.push((*dns).to_string());
            }
        }
    }
    Ok(CertInfo {
        common_name,
        dns_names,
        not_after: cert.validity().not_after.timestamp(),
    })
}

/// Short identity of a certificate (SHA-256 of its DER, hex, 16 bytes), to
/// tell whether a leaf was issued by the current CA without reading keys.
pub fn fingerprint(cert_pem: &str) -> Option<String> {
    use sha2::{Digest, Sha256};
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()).ok()?;
    let digest = Sha256::digest(&pem.contents);
    Some(digest.iter().take(16).map(|b| format!("{b:02x}")).collect())
}

/// What the operator records about a certificate it issued, in an
/// annotation of its Secret: enough to decide renewal from metadata alone.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CertSummary {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub common_name: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_names: Vec<String>,
    pub not_after: i64,
    /// [`fingerprint`] of the issuing CA (of itself, for a CA).
    pub issuer: String,
}

impl CertSummary {
    pub fn of(cert_pem: &str, issuer_pem: &str) -> Option<CertSummary> {
        let info = inspect(cert_pem).ok()?;
        Some(CertSummary {
            common_name: info.common_name,
            dns_names: info.dns_names,
            not_after: info.not_after,
            issuer: fingerprint(issuer_pem)?,
        })
    }

    pub fn info(&self) -> CertInfo {
        CertInfo {
            common_name: self.common_name.clone(),
            dns_names: self.dns_names.clone(),
            not_after: self.not_after,
        }
    }
}

/// Whether `cert_pem` was signed by the CA certificate `ca_pem`.
pub fn signed_by(cert_pem: &str, ca_pem: &str) -> bool {
    let parse = |pem: &str| {
        x509_parser::pem::parse_x509_pem(pem.as_bytes())
            .ok()
            .map(|(_, p)| p)
    };
    let (Some(cert), Some(ca)) = (parse(cert_pem), parse(ca_pem)) else {
        return false;
    };
    let (Ok(cert), Ok(ca)) = (cert.parse_x509(), ca.parse_x509()) else {
        return false;
    };
    cert.verify_signature(Some(ca.public_key())).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap()
    }

    #[test]
    fn server_certificate_is_signed_by_the_ca_and_names_its_hosts() {
        let ca = new_ca("db-ca", now()).unwrap();
        let names = vec!["db-rw".to_string(), "db-rw.ns.svc".to_string()];
        let server = issue_server(&ca, &names, now()).unwrap();
        assert!(signed_by(&server.cert_pem, &ca.cert_pem));
        let info = inspect(&server.cert_pem).unwrap();
        assert_eq!(info.dns_names, names);
        assert_eq!(info.common_name.as_deref(), Some("db-rw"));
        assert_eq!(
            info.not_after,
            1_800_000_000 + LEAF_VALIDITY.as_secs() as i64
        );
    }

    #[test]
    fn a_certificate_from_another_ca_is_detected() {
        let ca = new_ca("db-ca", now()).unwrap();
        let other = new_ca("other-ca", now()).unwrap();
        let client = issue_client(&other, "streaming_replica", now()).unwrap();
        assert!(!signed_by(&client.cert_pem, &ca.cert_pem));
        assert!(signed_by(&client.cert_pem, &other.cert_pem));
        assert_eq!(
            inspect(&client.cert_pem).unwrap().common_name.as_deref(),
            Some("streaming_replica")
        );
    }

    #[test]
    fn renewal_starts_thirty_days_before_expiry() {
        let ca = new_ca("db-ca", now()).unwrap();
        let info = inspect(&issue_client(&ca, "x", now()).unwrap().cert_pem).unwrap();
        assert!(!info.expires_soon(1_800_000_000));
        let day = 24 * 3600;
        assert!(info.expires_soon(info.not_after - 29 * day));
        assert!(!info.expires_soon(info.not_after - 31 * day));
        assert!(info.not_after_rfc3339().starts_with("2028-"));
    }

    #[test]
    fn summaries_name_their_issuer() {
        let ca = new_ca("db-ca", now()).unwrap();
        let other = new_ca("other", now()).unwrap();
        let leaf = issue_server(&ca, &["db-rw".to_string()], now()).unwrap();
        let summary = CertSummary::of(&leaf.cert_pem, &ca.cert_pem).unwrap();
        assert_eq!(summary.issuer, fingerprint(&ca.cert_pem).unwrap());
        assert_ne!(summary.issuer, fingerprint(&other.cert_pem).unwrap());
        assert_eq!(summary.info(), inspect(&leaf.cert_pem).unwrap());
        let json = serde_json::to_string(&summary).unwrap();
        assert_eq!(serde_json::from_str::<CertSummary>(&json).unwrap(), summary);
    }

    #[test]
    fn a_broken_ca_is_an_error_not_a_panic() {
        let bad = Issued {
            cert_pem: "not a cert".into(),
            key_pem: "not a key".into(),
        };
        assert!(matches!(
            issue_client(&bad, "x", now()),
            Err(TlsError::BadCa(_))
        ));
        assert!(inspect("garbage").is_err());
    }
}

//! Certificates for a cluster's TLS: an operator-run CA per cluster, server
//! certificates for instances and poolers, client certificates for
//! replication and for the operator itself (rcgen, ECDSA P-256).

use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use time::OffsetDateTime;

mod authorities;
pub mod provided;

pub use authorities::{Authorities, CaRecord, CaSet, CaStep};

/// How long certificates live and when they are replaced
/// (`spec.tls.certificates`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lifetimes {
    pub leaf: Duration,
    pub renew_before: Duration,
    pub ca: Duration,
    pub ca_renew_before: Duration,
}

impl Lifetimes {
    /// Admission checked the form; a value that still does not read (an
    /// object stored before the rule existed) falls back to the default.
    pub fn from_spec(spec: &crate::api::CertificateLifetimes) -> Self {
        let defaults = Self::default();
        let read = |text: &str, fallback: Duration| {
            crate::api::limits::seconds(text).map_or(fallback, Duration::from_secs)
        };
        Self {
            leaf: read(&spec.duration, defaults.leaf),
            renew_before: read(&spec.renew_before, defaults.renew_before),
            ca: read(&spec.ca_duration, defaults.ca),
            ca_renew_before: read(&spec.ca_renew_before, defaults.ca_renew_before),
        }
    }
}

impl Default for Lifetimes {
    fn default() -> Self {
        let hours = |h: u64| Duration::from_secs(h * 3600);
        Self {
            leaf: hours(8760),
            renew_before: hours(720),
            ca: hours(43800),
            ca_renew_before: hours(2160),
        }
    }
}

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

    /// Whether the certificate is within `renew_before` of its expiry at
    /// `now` (Unix seconds).
    pub fn expires_within(&self, now: i64, renew_before: Duration) -> bool {
        self.not_after - now < renew_before.as_secs() as i64
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

/// A new self-signed CA valid for `lifetime`.
pub fn new_ca(
    common_name: &str,
    now: OffsetDateTime,
    lifetime: Duration,
) -> Result<Issued, TlsError> {
    let key = KeyPair::generate().map_err(TlsError::Key)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = name(common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    (params.not_before, params.not_after) = validity(now, lifetime);
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
    lifetime: Duration,
) -> Result<Issued, TlsError> {
    let common_name = dns_names.first().map(String::as_str).unwrap_or("server");
    issue_leaf(
        ca,
        common_name,
        dns_names,
        &[ExtendedKeyUsagePurpose::ServerAuth],
        (now, lifetime),
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
    lifetime: Duration,
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
        (now, lifetime),
        "peer",
    )
}

/// A client certificate whose common name is the PostgreSQL role (or the
/// agent identity) it authenticates as.
pub fn issue_client(
    ca: &Issued,
    common_name: &str,
    now: OffsetDateTime,
    lifetime: Duration,
) -> Result<Issued, TlsError> {
    issue_leaf(
        ca,
        common_name,
        &[],
        &[ExtendedKeyUsagePurpose::ClientAuth],
        (now, lifetime),
        "client",
    )
}

fn issue_leaf(
    ca: &Issued,
    common_name: &str,
    dns_names: &[String],
    usages: &[ExtendedKeyUsagePurpose],
    (now, lifetime): (OffsetDateTime, Duration),
    what: &'static str,
) -> Result<Issued, TlsError> {
    let issuer = issuer(ca)?;
    let ca_not_after = inspect(&ca.cert_pem).map_err(|e| TlsError::BadCa(e.to_string()))?;
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
    (params.not_before, params.not_after) = validity(now, lifetime);
    // A certificate never outlives its CA: clients could not verify it.
    if let Ok(ca_end) = OffsetDateTime::from_unix_timestamp(ca_not_after.not_after) {
        params.not_after = params.not_after.min(ca_end);
    }
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

/// [`fingerprint`] of every certificate of a PEM bundle.
pub fn fingerprints(bundle: &str) -> Vec<String> {
    x509_parser::pem::Pem::iter_from_buffer(bundle.as_bytes())
        .filter_map(Result::ok)
        .filter(|p| p.label == "CERTIFICATE")
        .map(|p| {
            use sha2::{Digest, Sha256};
            Sha256::digest(&p.contents)
                .iter()
                .take(16)
                .map(|b| format!("{b:02x}"))
                .collect()
        })
        .collect()
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
    /// [`Authorities::trust_id`] of the `ca.crt` written beside the
    /// certificate; absent (written before CA rotation existed) it was the
    /// issuer alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust: Option<String>,
}

impl CertSummary {
    pub fn of(cert_pem: &str, issuer_pem: &str) -> Option<CertSummary> {
        let info = inspect(cert_pem).ok()?;
        Some(CertSummary {
            common_name: info.common_name,
            dns_names: info.dns_names,
            not_after: info.not_after,
            issuer: fingerprint(issuer_pem)?,
            trust: None,
        })
    }

    /// The CAs trusted beside this certificate.
    pub fn trust(&self) -> &str {
        self.trust.as_deref().unwrap_or(&self.issuer)
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

    const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);

    fn now() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap()
    }

    #[test]
    fn server_certificate_is_signed_by_the_ca_and_names_its_hosts() {
        let ca = new_ca("db-ca", now(), YEAR * 5).unwrap();
        let names = vec!["db-rw".to_string(), "db-rw.ns.svc".to_string()];
        let server = issue_server(&ca, &names, now(), YEAR).unwrap();
        assert!(signed_by(&server.cert_pem, &ca.cert_pem));
        let info = inspect(&server.cert_pem).unwrap();
        assert_eq!(info.dns_names, names);
        assert_eq!(info.common_name.as_deref(), Some("db-rw"));
        assert_eq!(info.not_after, 1_800_000_000 + YEAR.as_secs() as i64);
    }

    #[test]
    fn a_certificate_from_another_ca_is_detected() {
        let ca = new_ca("db-ca", now(), YEAR).unwrap();
        let other = new_ca("other-ca", now(), YEAR).unwrap();
        let client = issue_client(&other, "streaming_replica", now(), YEAR).unwrap();
        assert!(!signed_by(&client.cert_pem, &ca.cert_pem));
        assert!(signed_by(&client.cert_pem, &other.cert_pem));
        assert_eq!(
            inspect(&client.cert_pem).unwrap().common_name.as_deref(),
            Some("streaming_replica")
        );
    }

    #[test]
    fn renewal_starts_renew_before_the_expiry() {
        let ca = new_ca("db-ca", now(), YEAR * 5).unwrap();
        let info = inspect(&issue_client(&ca, "x", now(), YEAR).unwrap().cert_pem).unwrap();
        let day = 24 * 3600;
        let month = Duration::from_secs(30 * day as u64);
        assert!(!info.expires_within(1_800_000_000, month));
        assert!(info.expires_within(info.not_after - 29 * day, month));
        assert!(!info.expires_within(info.not_after - 31 * day, month));
        assert!(info.not_after_rfc3339().starts_with("2028-"));
    }

    #[test]
    fn a_certificate_never_outlives_its_ca() {
        let ca = new_ca("db-ca", now(), Duration::from_secs(600)).unwrap();
        let ca_end = inspect(&ca.cert_pem).unwrap().not_after;
        let leaf = issue_server(&ca, &["db-rw".to_string()], now(), YEAR).unwrap();
        assert_eq!(inspect(&leaf.cert_pem).unwrap().not_after, ca_end);
        let short = issue_client(&ca, "x", now(), Duration::from_secs(120)).unwrap();
        assert_eq!(
            inspect(&short.cert_pem).unwrap().not_after,
            1_800_000_000 + 120
        );
    }

    #[test]
    fn lifetimes_come_from_the_spec_with_defaults_for_what_does_not_read() {
        let mut spec = crate::api::defaults::certificates();
        assert_eq!(Lifetimes::from_spec(&spec), Lifetimes::default());
        spec.duration = "3m".into();
        spec.renew_before = "90s".into();
        spec.ca_duration = "bogus".into();
        let l = Lifetimes::from_spec(&spec);
        assert_eq!(l.leaf, Duration::from_secs(180));
        assert_eq!(l.renew_before, Duration::from_secs(90));
        assert_eq!(l.ca, Lifetimes::default().ca);
    }

    #[test]
    fn summaries_name_their_issuer() {
        let ca = new_ca("db-ca", now(), YEAR).unwrap();
        let other = new_ca("other", now(), YEAR).unwrap();
        let leaf = issue_server(&ca, &["db-rw".to_string()], now(), YEAR).unwrap();
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
            issue_client(&bad, "x", now(), YEAR),
            Err(TlsError::BadCa(_))
        ));
        assert!(inspect("garbage").is_err());
    }
}

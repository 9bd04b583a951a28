//! rustls configuration of the agents' HTTPS APIs: the server side (the
//! agent certificate; client certificates verified against the cluster CA
//! but optional, so probes and Prometheus need none), the client side the
//! operator uses (its `capstan-operator` certificate), and the client side
//! an instance uses for PostgreSQL replication connections.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::contract::layout::files;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {message}")]
    Read { path: String, message: String },
    #[error("{what} holds no usable PEM certificate or key: {message}")]
    Pem { what: String, message: String },
    #[error("invalid TLS configuration: {0}")]
    Config(String),
}

/// A mounted TLS Secret: `tls.crt`, `tls.key` and the `ca.crt` that signed
/// it (or, for an API, the CA that signs its clients).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

impl TlsFiles {
    pub fn new(dir: PathBuf) -> Self {
        Self {
            cert: dir.join(files::TLS_CRT),
            key: dir.join(files::TLS_KEY),
            ca: dir.join(files::CA_CRT),
        }
    }

    pub fn all(&self) -> [&Path; 3] {
        [&self.cert, &self.key, &self.ca]
    }

    /// What the files hold now (unreadable files read as nothing).
    pub fn mounted(&self) -> crate::contract::agent::MountedTls {
        let text = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        let cert = text(&self.cert);
        crate::contract::agent::MountedTls {
            certificate: crate::tls::fingerprint(&cert),
            trusts: crate::tls::fingerprints(&text(&self.ca)),
            not_after: crate::tls::inspect(&cert).ok().map(|c| c.not_after),
        }
    }

    /// Modification times, to notice a rotated Secret (the kubelet swaps in
    /// new files, so a rotation always changes them).
    pub fn stamp(&self) -> Vec<Option<std::time::SystemTime>> {
        self.all()
            .iter()
            .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
            .collect()
    }
}

/// The TLS Secrets mounted in a pod, by mount name (those absent are
/// left out).
pub fn mounted(files: &[(&str, TlsFiles)]) -> crate::contract::agent::TlsMounts {
    files
        .iter()
        .map(|(mount, f)| (mount.to_string(), f.mounted()))
        .filter(|(_, m)| m.certificate.is_some() || !m.trusts.is_empty())
        .collect()
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::Read {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

/// Certificates of a PEM bundle.
pub fn certs_from_pem(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            what: what.into(),
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            what: what.into(),
            message: "no CERTIFICATE block".into(),
        });
    }
    Ok(certs)
}

/// The private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn key_from_pem(pem: &[u8], what: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| TlsError::Pem {
        what: what.into(),
        message: e.to_string(),
    })
}

fn roots(ca_pem: &[u8], what: &str) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certs_from_pem(ca_pem, what)? {
        roots
            .add(cert)
            .map_err(|e| TlsError::Config(format!("{what}: {e}")))?;
    }
    Ok(roots)
}

/// Server configuration of an agent API from its mounted Secret. With a
/// `ca.crt`, client certificates are verified against it but stay optional
/// (probes and Prometheus have none); handlers decide per route who may
/// call. Without one no client can prove an identity, so every guarded
/// route refuses.
pub fn server_config(tls: &TlsFiles) -> Result<ServerConfig, TlsError> {
    let chain = certs_from_pem(&read(&tls.cert)?, &tls.cert.display().to_string())?;
    let key = key_from_pem(&read(&tls.key)?, &tls.key.display().to_string())?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = if tls.ca.exists() {
        let roots = roots(&read(&tls.ca)?, &tls.ca.display().to_string())?;
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .allow_unauthenticated()
            .build()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Client configuration for calling the agents' APIs: trust `ca_pem`,
/// present `cert_pem`/`key_pem` (the operator's client certificate).
pub fn client_config(
    ca_pem: &[u8],
    cert_pem: &[u8],
    key_pem: &[u8],
) -> Result<ClientConfig, TlsError> {
    let mut config = client_with_identity(
        roots(ca_pem, "the cluster CA")?,
        certs_from_pem(cert_pem, "the client certificate")?,
        key_from_pem(key_pem, "the client key")?,
    )?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Client configuration for PostgreSQL connections with a client
/// certificate (`streaming_replica` to the primary): the server must present
/// a certificate from `ca.crt` for the host name (verify-full). No ALPN:
/// PostgreSQL refuses any protocol but its own.
pub fn postgres_client_config(tls: &TlsFiles) -> Result<ClientConfig, TlsError> {
    client_with_identity(
        roots(&read(&tls.ca)?, &tls.ca.display().to_string())?,
        certs_from_pem(&read(&tls.cert)?, &tls.cert.display().to_string())?,
        key_from_pem(&read(&tls.key)?, &tls.key.display().to_string())?,
    )
}

fn client_with_identity(
    roots: RootCertStore,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<ClientConfig, TlsError> {
    ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| TlsError::Config(e.to_string()))
}

/// Common name of a (verified) peer certificate.
pub fn common_name(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    parsed
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DnType, IsCa, Issuer, KeyPair};

    #[test]
    fn common_name_of_a_generated_certificate() {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, "test CA");
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "capstan-operator");
        let cert = params.signed_by(&key, &issuer).unwrap();
        assert_eq!(common_name(cert.der()).as_deref(), Some("capstan-operator"));
    }

    #[test]
    fn missing_files_are_named() {
        let files = TlsFiles::new("/nonexistent/tls".into());
        let err = postgres_client_config(&files).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/tls"), "{err}");
        let err = server_config(&files).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/tls"), "{err}");
    }

    #[test]
    fn empty_pem_is_a_clear_error() {
        let e = certs_from_pem(b"", "ca.crt").unwrap_err().to_string();
        assert!(e.contains("ca.crt"), "{e}");
    }
}

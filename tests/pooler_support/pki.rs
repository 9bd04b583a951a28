//! A cluster CA and the certificates the tests need, made with rcgen.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use super::write_file;

pub struct Pki {
    pub ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
    pub server_cert: String,
    pub server_key: String,
    dir: PathBuf,
}

fn leaf(cn: &str, sans: &[&str], purpose: ExtendedKeyUsagePurpose) -> (CertificateParams, KeyPair) {
    let mut params =
        CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.extended_key_usages = vec![purpose];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    (params, KeyPair::generate().unwrap())
}

impl Pki {
    /// Creates the CA and a server certificate for localhost/127.0.0.1;
    /// writes `ca.crt` into `dir`.
    pub fn new(dir: &Path) -> Self {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "capstan test CA");
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);
        let (params, key) = leaf(
            "db-rw",
            &["localhost", "127.0.0.1"],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let server = params.signed_by(&key, &issuer).unwrap();
        let pki = Self {
            ca_pem: ca_cert.pem(),
            issuer,
            server_cert: server.pem(),
            server_key: key.serialize_pem(),
            dir: dir.to_path_buf(),
        };
        write_file(&pki.ca_file(), pki.ca_pem.as_bytes(), 0o644, false);
        pki
    }

    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// PostgreSQL's server certificate files in `data_dir`.
    pub fn write_postgres_tls(&self, data_dir: &Path) {
        write_file(
            &data_dir.join("server.crt"),
            self.server_cert.as_bytes(),
            0o644,
            true,
        );
        write_file(
            &data_dir.join("server.key"),
            self.server_key.as_bytes(),
            0o600,
            true,
        );
        write_file(
            &data_dir.join("root.crt"),
            self.ca_pem.as_bytes(),
            0o644,
            true,
        );
    }

    /// A pooler TLS Secret as mounted: tls.crt, tls.key, ca.crt.
    pub fn write_pooler_tls(&self, dir: &Path) {
        let (params, key) = leaf(
            "db-pooler",
            &["localhost", "127.0.0.1"],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        write_file(&dir.join("tls.crt"), cert.pem().as_bytes(), 0o644, true);
        write_file(
            &dir.join("tls.key"),
            key.serialize_pem().as_bytes(),
            0o600,
            true,
        );
        write_file(&dir.join("ca.crt"), self.ca_pem.as_bytes(), 0o644, true);
    }

    /// A rustls client configuration with a client certificate for `cn`.
    pub fn client_config(&self, cn: &str) -> rustls::ClientConfig {
        let (params, key) = leaf(cn, &[], ExtendedKeyUsagePurpose::ClientAuth);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        capstan::agents::tls::client_config(
            self.ca_pem.as_bytes(),
            cert.pem().as_bytes(),
            key.serialize_pem().as_bytes(),
        )
        .unwrap()
    }

    /// A client configuration without a client certificate.
    pub fn anonymous_client_config(&self) -> rustls::ClientConfig {
        let mut roots = rustls::RootCertStore::empty();
        for c in capstan::agents::tls::certs_from_pem(self.ca_pem.as_bytes(), "ca").unwrap() {
            roots.add(c).unwrap();
        }
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth()
    }
}

//! Checks a user-provided certificate (`tls.mode: Provided`, e.g. one
//! cert-manager keeps) before any pod gets it, with the verifier TLS
//! clients use (rustls/webpki): it chains to the given CA, is valid now,
//! covers the names clients connect to (or carries the expected client
//! name), and matches its key.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, crypto::CryptoProvider};

/// What a provided Secret must be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expect {
    /// A server certificate for every one of these names.
    Server(Vec<String>),
    /// A client certificate with this common name.
    Client(String),
}

/// Why a provided certificate is refused: says what is wrong and how to
/// fix it, in words for a status message.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refused {
    #[error("{0} holds no PEM certificate")]
    NoCertificate(&'static str),
    #[error("tls.key holds no usable private key: {0}")]
    BadKey(String),
    #[error(
        "tls.key is not the key of the certificate in tls.crt; put the matching pair in the Secret"
    )]
    KeyMismatch,
    #[error("the certificate does not verify against the CA's ca.crt: {0}")]
    NotTrusted(String),
    #[error("the certificate does not cover {0:?}; add it to the certificate's DNS names")]
    NameNotCovered(String),
    #[error("the certificate's common name is {found:?}, not {wanted:?}")]
    WrongClient { found: String, wanted: String },
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certificates(pem: &str, what: &'static str) -> Result<Vec<CertificateDer<'static>>, Refused> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(Refused::NoCertificate(what));
    }
    Ok(certs)
}

/// Checks `cert_pem` (leaf first, then any intermediates) and `key_pem`
/// against `ca_pem` at `now` (Unix seconds).
pub fn check(
    cert_pem: &str,
    key_pem: &str,
    ca_pem: &str,
    expect: &Expect,
    now: i64,
) -> Result<(), Refused> {
    let chain = certificates(cert_pem, "tls.crt")?;
    let mut roots = RootCertStore::empty();
    for ca in certificates(ca_pem, "ca.crt")? {
        roots
            .add(ca)
            .map_err(|e| Refused::NotTrusted(format!("ca.crt: {e}")))?;
    }
    let provider = provider();
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| Refused::BadKey(e.to_string()))?;
    let signer = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| Refused::BadKey(e.to_string()))?;
    if CertifiedKey::new(chain.clone(), signer)
        .keys_match()
        .is_err()
    {
        return Err(Refused::KeyMismatch);
    }
    let time = UnixTime::since_unix_epoch(std::time::Duration::from_secs(now.max(0) as u64));
    let (leaf, intermediates) = chain
        .split_first()
        .ok_or(Refused::NoCertificate("tls.crt"))?;
    let roots = Arc::new(roots);
    match expect {
        Expect::Server(names) => {
            let verifier = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .map_err(|e| Refused::NotTrusted(e.to_string()))?;
            for name in names {
                let server = ServerName::try_from(name.clone())
                    .map_err(|e| Refused::NameNotCovered(format!("{name} ({e})")))?;
                verifier
                    .verify_server_cert(leaf, intermediates, &server, &[], time)
                    .map_err(|e| match e {
                        rustls::Error::InvalidCertificate(
                            rustls::CertificateError::NotValidForName
                            | rustls::CertificateError::NotValidForNameContext { .. },
                        ) => Refused::NameNotCovered(name.clone()),
                        other => Refused::NotTrusted(other.to_string()),
                    })?;
            }
        }
        Expect::Client(wanted) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .map_err(|e| Refused::NotTrusted(e.to_string()))?;
            verifier
                .verify_client_cert(leaf, intermediates, time)
                .map_err(|e| Refused::NotTrusted(e.to_string()))?;
            let found = super::inspect(cert_pem)
                .ok()
                .and_then(|i| i.common_name)
                .unwrap_or_default();
            if &found != wanted {
                return Err(Refused::WrongClient {
                    found,
                    wanted: wanted.clone(),
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use time::OffsetDateTime;

    use super::*;
    use crate::tls::{issue_client, issue_server, new_ca};

    const NOW: i64 = 1_800_000_000;
    const DAY: Duration = Duration::from_secs(24 * 3600);

    fn at(t: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(t).unwrap()
    }

    fn names() -> Vec<String> {
        vec!["db-rw".into(), "db-rw.ns.svc".into()]
    }

    #[test]
    fn a_good_server_and_client_certificate_pass() {
        let ca = new_ca("their CA", at(NOW), DAY * 365).unwrap();
        let server = issue_server(&ca, &names(), at(NOW), DAY * 90).unwrap();
        let expect = Expect::Server(names());
        assert_eq!(
            check(
                &server.cert_pem,
                &server.key_pem,
                &ca.cert_pem,
                &expect,
                NOW
            ),
            Ok(())
        );
        let client = issue_client(&ca, "streaming_replica", at(NOW), DAY).unwrap();
        let expect = Expect::Client("streaming_replica".into());
        assert_eq!(
            check(
                &client.cert_pem,
                &client.key_pem,
                &ca.cert_pem,
                &expect,
                NOW
            ),
            Ok(())
        );
    }

    #[test]
    fn each_problem_is_named() {
        let ca = new_ca("their CA", at(NOW), DAY * 365).unwrap();
        let other_ca = new_ca("another CA", at(NOW), DAY * 365).unwrap();
        let server = issue_server(&ca, &names(), at(NOW), DAY).unwrap();
        let other = issue_server(&ca, &names(), at(NOW), DAY).unwrap();
        let expect = Expect::Server(names());

        // Expired: checked a week later.
        let later = NOW + 7 * 24 * 3600;
        assert!(matches!(
            check(&server.cert_pem, &server.key_pem, &ca.cert_pem, &expect, later),
            Err(Refused::NotTrusted(e)) if e.contains("expired")
        ));
        // Another CA.
        assert!(matches!(
            check(
                &server.cert_pem,
                &server.key_pem,
                &other_ca.cert_pem,
                &expect,
                NOW
            ),
            Err(Refused::NotTrusted(_))
        ));
        // Not its key.
        assert_eq!(
            check(&server.cert_pem, &other.key_pem, &ca.cert_pem, &expect, NOW),
            Err(Refused::KeyMismatch)
        );
        // A name missing.
        let wider = Expect::Server(vec!["db-rw".into(), "db-ro.ns.svc".into()]);
        assert_eq!(
            check(&server.cert_pem, &server.key_pem, &ca.cert_pem, &wider, NOW),
            Err(Refused::NameNotCovered("db-ro.ns.svc".into()))
        );
        // Not a certificate at all.
        assert_eq!(
            check("nope", &server.key_pem, &ca.cert_pem, &expect, NOW),
            Err(Refused::NoCertificate("tls.crt"))
        );
        // The wrong client.
        let client = issue_client(&ca, "someone", at(NOW), DAY).unwrap();
        assert!(matches!(
            check(
                &client.cert_pem,
                &client.key_pem,
                &ca.cert_pem,
                &Expect::Client("streaming_replica".into()),
                NOW
            ),
            Err(Refused::WrongClient { .. })
        ));
    }
}

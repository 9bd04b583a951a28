//! Connecting to a cluster as its clients do: TLS with the server's name
//! verified against the cluster CA (`sslmode=verify-full`), SCRAM passwords.

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tokio_postgres::Client;
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::E2eError;

/// Where to connect and as whom.
pub struct Login<'a> {
    /// Name the server certificate must carry, e.g. `db-pooler.ns.svc`.
    pub host: &'a str,
    /// Where that name is reachable from here.
    pub addr: SocketAddr,
    pub dbname: &'a str,
    pub user: &'a str,
    pub password: &'a str,
    pub ca_pem: &'a str,
}

pub async fn connect(login: &Login<'_>) -> Result<Client, E2eError> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(login.ca_pem.as_bytes()) {
        let cert = cert.map_err(|e| E2eError::Sql(format!("bad CA certificate: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| E2eError::Sql(format!("bad CA certificate: {e}")))?;
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| E2eError::Sql(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let mut config = tokio_postgres::Config::new();
    config
        .host(login.host)
        .hostaddr(login.addr.ip())
        .port(login.addr.port())
        .dbname(login.dbname)
        .user(login.user)
        .password(login.password)
        .ssl_mode(SslMode::Require)
        .connect_timeout(std::time::Duration::from_secs(10));
    let (client, connection) = config
        .connect(MakeRustlsConnect::new(tls))
        .await
        .map_err(|e| {
            E2eError::Sql(format!(
                "connect to {} ({}) as {}: {e}",
                login.host, login.addr, login.user
            ))
        })?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

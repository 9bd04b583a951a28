//! Connecting to a cluster as its clients do: TLS with the server's name
//! verified against the cluster CA (`sslmode=verify-full`), SCRAM passwords.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tokio::net::{TcpSocket, TcpStream};
use tokio_postgres::config::SslMode;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::{Client, SimpleQueryMessage};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::E2eError;

/// Bound on establishing a connection (TCP, TLS and authentication).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

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

impl Login<'_> {
    fn config(&self) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        config
            .host(self.host)
            .hostaddr(self.addr.ip())
            .port(self.addr.port())
            .dbname(self.dbname)
            .user(self.user)
            .password(self.password)
            .ssl_mode(SslMode::Require)
            .connect_timeout(CONNECT_TIMEOUT);
        config
    }

    fn failed(&self, e: impl std::fmt::Display) -> E2eError {
        E2eError::Sql(format!(
            "connect to {} ({}) as {}: {e}",
            self.host, self.addr, self.user
        ))
    }
}

fn tls(ca_pem: &str) -> Result<MakeRustlsConnect, E2eError> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        let cert = cert.map_err(|e| E2eError::Sql(format!("bad CA certificate: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| E2eError::Sql(format!("bad CA certificate: {e}")))?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| E2eError::Sql(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

pub async fn connect(login: &Login<'_>) -> Result<Client, E2eError> {
    let (client, connection) = login
        .config()
        .connect(tls(login.ca_pem)?)
        .await
        .map_err(|e| login.failed(e))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// Like [`connect`], with the client's socket bound to `source` first: on
/// the harness, a connection from the node address reaches a partitioned
/// pod (the kubelet's own path), so a test can still talk to it.
pub async fn connect_from(login: &Login<'_>, source: IpAddr) -> Result<Client, E2eError> {
    let attempt = async {
        let socket = match source {
            IpAddr::V4(_) => TcpSocket::new_v4(),
            IpAddr::V6(_) => TcpSocket::new_v6(),
        }
        .map_err(|e| login.failed(e))?;
        socket
            .bind(SocketAddr::new(source, 0))
            .map_err(|e| login.failed(format!("bind {source}: {e}")))?;
        let stream = socket
            .connect(login.addr)
            .await
            .map_err(|e| login.failed(e))?;
        let tls =
            MakeTlsConnect::<TcpStream>::make_tls_connect(&mut tls(login.ca_pem)?, login.host)
                .map_err(|e| login.failed(e))?;
        let (client, connection) = login
            .config()
            .connect_raw(stream, tls)
            .await
            .map_err(|e| login.failed(e))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    };
    tokio::time::timeout(CONNECT_TIMEOUT, attempt)
        .await
        .map_err(|_| login.failed("timed out"))?
}

/// A TLS client configuration that trusts the CAs of `ca_pem` alone and
/// presents no certificate.
pub fn trusting(ca_pem: &str) -> Result<rustls::ClientConfig, String> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        let cert = cert.map_err(|e| e.to_string())?;
        roots.add(cert).map_err(|e| e.to_string())?;
    }
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth())
}

/// The certificate `addr` presents under the name `host` (PostgreSQL's
/// `SSLRequest`, then a TLS handshake verified against `ca_pem` alone):
/// its fingerprint (SHA-256 of the DER, first 16 bytes, hex, as Capstan's
/// status writes CA fingerprints), or why it does not verify.
pub async fn served_certificate(
    host: &str,
    addr: SocketAddr,
    ca_pem: &str,
) -> Result<String, E2eError> {
    use sha2::{Digest, Sha256};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let failed = |e: &dyn std::fmt::Display| E2eError::Sql(format!("TLS to {host} ({addr}): {e}"));
    let config = trusting(ca_pem).map_err(|e| failed(&e))?;
    let attempt = async {
        let mut stream = TcpStream::connect(addr).await.map_err(|e| failed(&e))?;
        // SSLRequest: length 8, code 80877103.
        stream
            .write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])
            .await
            .map_err(|e| failed(&e))?;
        let mut answer = [0u8; 1];
        stream
            .read_exact(&mut answer)
            .await
            .map_err(|e| failed(&e))?;
        if answer[0] != b'S' {
            return Err(failed(&"the server refused TLS"));
        }
        let name =
            rustls_pki_types::ServerName::try_from(host.to_string()).map_err(|e| failed(&e))?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, stream)
            .await
            .map_err(|e| failed(&e))?;
        let der = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .ok_or_else(|| failed(&"no certificate presented"))?;
        Ok(Sha256::digest(der.as_ref())
            .iter()
            .take(16)
            .map(|b| format!("{b:02x}"))
            .collect())
    };
    tokio::time::timeout(CONNECT_TIMEOUT, attempt)
        .await
        .map_err(|_| failed(&"timed out"))?
}

/// The first column of every row of `sql`, as text, over the simple query
/// protocol (which PgBouncer's transaction pooling always supports).
pub async fn column(client: &Client, sql: &str) -> Result<Vec<Option<String>>, E2eError> {
    let messages = client
        .simple_query(sql)
        .await
        .map_err(|e| E2eError::Sql(format!("{sql}: {e}")))?;
    Ok(messages
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(row.get(0).map(str::to_string)),
            _ => None,
        })
        .collect())
}

/// The single value `sql` returns, as text.
pub async fn value(client: &Client, sql: &str) -> Result<String, E2eError> {
    column(client, sql)
        .await?
        .into_iter()
        .next()
        .flatten()
        .ok_or_else(|| E2eError::Sql(format!("{sql}: no value")))
}

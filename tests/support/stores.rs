//! Azure and GCS emulators over TLS for the backup tests, on loopback
//! only: Azurite (npm) with its own TLS, fake-gcs-server (built from its
//! Go module) with its own TLS, and a token server standing in for
//! Google's OAuth endpoint, so pgBackRest's service-key path (a JWT signed
//! with the key, exchanged for a token) runs for real. One test CA signs
//! every certificate; pgBackRest verifies them with `repo-storage-ca-file`.
//! `.ci/install-object-stores.sh` installs both emulators; every server is
//! stopped by PID on drop.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use capstan::backup::Repository;
use capstan::backup::repository::{
    Azure, AzureCredentials, Gcs, GcsCredentials, Storage, Tls, UriStyle,
};
use hmac::{KeyInit, Mac};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::s3::missing;

/// Azurite's well-known development account and key.
pub const AZURE_ACCOUNT: &str = "devstoreaccount1";
pub const AZURE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// A tool from `env`, else the newest `<tools>/<prefix>*/<rel>`.
fn tool(env: &str, prefix: &str, rel: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(env).map(PathBuf::from) {
        return p.is_file().then_some(p);
    }
    let dir = std::fs::read_dir("/var/cache/capstan/tools").ok()?;
    dir.flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
        .map(|e| e.path().join(rel))
        .filter(|p| p.is_file())
        .max()
}

fn stop(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(c.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        let _ = c.wait();
    }
}

fn wait_port(port: u16, what: &str, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} did not listen on 127.0.0.1:{port}:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// A test CA and a server certificate for `localhost` and 127.0.0.1, as
/// PEM files in `dir` (`ca.crt` readable by everyone: pgBackRest runs as
/// postgres) and DER for the in-process token server.
pub struct TestCa {
    pub ca_file: PathBuf,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    cert_der: Vec<u8>,
    key_der: Vec<u8>,
    ca_der: Vec<u8>,
}

impl TestCa {
    pub fn new(dir: &Path) -> Self {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "capstan object store test CA");
        ca.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let ca = rcgen::CertifiedIssuer::self_signed(ca, ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "localhost");
        let cert = params.signed_by(&key, &ca).unwrap();
        let this = Self {
            ca_file: dir.join("ca.crt"),
            cert_file: dir.join("server.crt"),
            key_file: dir.join("server.key"),
            cert_der: cert.der().to_vec(),
            key_der: key.serialize_der(),
            ca_der: ca.der().to_vec(),
        };
        std::fs::write(&this.ca_file, ca.pem()).unwrap();
        std::fs::write(&this.cert_file, cert.pem()).unwrap();
        std::fs::write(&this.key_file, key.serialize_pem()).unwrap();
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&this.ca_file, std::fs::Permissions::from_mode(0o644)).unwrap();
        this
    }

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    /// One HTTP/1.1 request to `https://localhost:<port><target>`; the
    /// response's status line and body.
    pub fn https(
        &self,
        port: u16,
        method: &str,
        target: &str,
        headers: &[(String, String)],
    ) -> (String, String) {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der.clone().into()).unwrap();
        let config = rustls::ClientConfig::builder_with_provider(Self::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let conn = rustls::ClientConnection::new(Arc::new(config), "localhost".try_into().unwrap())
            .unwrap();
        let sock = TcpStream::connect(("127.0.0.1", port)).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut tls = rustls::StreamOwned::new(conn, sock);
        let mut request = format!("{method} {target} HTTP/1.1\r\nHost: localhost:{port}\r\n");
        for (k, v) in headers {
            request.push_str(&format!("{k}: {v}\r\n"));
        }
        request.push_str("Content-Length: 0\r\nConnection: close\r\n\r\n");
        tls.write_all(request.as_bytes()).unwrap();
        let mut raw = vec![];
        // A server may close without close_notify: keep what arrived.
        let _ = tls.read_to_end(&mut raw);
        let text = String::from_utf8_lossy(&raw).to_string();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head.lines().next().unwrap_or_default().to_string();
        let chunked = head.to_lowercase().contains("transfer-encoding: chunked");
        (
            status,
            if chunked {
                dechunk(body)
            } else {
                body.to_string()
            },
        )
    }
}

/// The body of a chunked HTTP/1.1 response.
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// Azurite's blob service over TLS on `127.0.0.1:<port>`, checking
/// shared-key and SAS signatures, with one container.
pub struct Azurite {
    pub dir: tempfile::TempDir,
    pub ca: TestCa,
    pub port: u16,
    pub container: String,
    child: Option<Child>,
}

impl Azurite {
    /// `None` (skip) when Azurite is not installed, outside CI.
    pub fn start(port: u16, container: &str) -> Option<Self> {
        let bin = tool(
            "CAPSTAN_AZURITE",
            "azurite-",
            "node_modules/.bin/azurite-blob",
        )
        .or_else(|| missing("azurite (CAPSTAN_AZURITE; bash .ci/install-object-stores.sh)"))?;
        let dir = tempfile::Builder::new().prefix("capaz").tempdir().unwrap();
        let ca = TestCa::new(dir.path());
        let log = dir.path().join("azurite.log");
        let child = Command::new(bin)
            .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
            .arg("--cert")
            .arg(&ca.cert_file)
            .arg("--key")
            .arg(&ca.key_file)
            .arg("--location")
            .arg(dir.path().join("data"))
            .args(["--skipApiVersionCheck", "--debug"])
            .arg(dir.path().join("debug.log"))
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(dir.path().join("azurite.err")).unwrap())
            .spawn()
            .expect("spawn azurite-blob");
        let this = Self {
            dir,
            ca,
            port,
            container: container.into(),
            child: Some(child),
        };
        wait_port(port, "azurite", &log);
        let (status, body) =
            this.request("PUT", &format!("/{container}"), &[("restype", "container")]);
        assert!(
            status.contains(" 201 "),
            "creating container {container}: {status} {body}"
        );
        Some(this)
    }

    /// A shared-key signed request (path style: the account is the first
    /// path segment). `path` starts after the account.
    pub fn request(&self, method: &str, path: &str, query: &[(&str, &str)]) -> (String, String) {
        let date = jiff::Timestamp::now()
            .strftime("%a, %d %b %Y %H:%M:%S GMT")
            .to_string();
        let version = "2021-10-04";
        let mut sorted: Vec<&(&str, &str)> = query.iter().collect();
        sorted.sort();
        let resource: String = sorted.iter().map(|(k, v)| format!("\n{k}:{v}")).collect();
        let string_to_sign = format!(
            "{method}\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:{version}\n/{AZURE_ACCOUNT}/{AZURE_ACCOUNT}{path}{resource}"
        );
        let signature = STANDARD.encode(hmac_sha256(
            &STANDARD.decode(AZURE_KEY).unwrap(),
            &string_to_sign,
        ));
        let target = format!(
            "/{AZURE_ACCOUNT}{path}?{}",
            query
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("&")
        );
        self.ca.https(
            self.port,
            method,
            &target,
            &[
                ("x-ms-date".into(), date),
                ("x-ms-version".into(), version.into()),
                (
                    "Authorization".into(),
                    format!("SharedKey {AZURE_ACCOUNT}:{signature}"),
                ),
            ],
        )
    }

    /// Blob names under `prefix` in the container.
    pub fn blobs(&self, prefix: &str) -> Vec<String> {
        let (status, body) = self.request(
            "GET",
            &format!("/{}", self.container),
            &[
                ("comp", "list"),
                ("prefix", prefix),
                ("restype", "container"),
            ],
        );
        assert!(
            status.contains(" 200 "),
            "listing {prefix}: {status} {body}"
        );
        body.split("<Name>")
            .skip(1)
            .filter_map(|part| part.split_once("</Name>").map(|(n, _)| n.to_string()))
            .collect()
    }

    /// An account SAS for the blob service (read, write, delete, list,
    /// add, create), as the portal shows it: with a leading `?`.
    pub fn account_sas(&self) -> String {
        let (sp, ss, srt, se, spr, sv) = (
            "rwdlac",
            "b",
            "sco",
            "2099-01-01T00:00:00Z",
            "https",
            "2019-12-12",
        );
        let string_to_sign = format!("{AZURE_ACCOUNT}\n{sp}\n{ss}\n{srt}\n\n{se}\n\n{spr}\n{sv}\n");
        let sig = STANDARD.encode(hmac_sha256(
            &STANDARD.decode(AZURE_KEY).unwrap(),
            &string_to_sign,
        ));
        let sig: String = sig
            .chars()
            .map(|c| match c {
                '+' => "%2B".to_string(),
                '/' => "%2F".to_string(),
                '=' => "%3D".to_string(),
                c => c.to_string(),
            })
            .collect();
        format!("?sv={sv}&ss={ss}&srt={srt}&sp={sp}&se={se}&spr={spr}&sig={sig}")
    }

    /// The repository model: `key` (a shared key or a SAS) written to a
    /// file in `secrets`, as the instance pods mount it.
    pub fn repository(&self, path: &str, secrets: &Path, key: AzureKey<'_>) -> Repository {
        std::fs::create_dir_all(secrets).unwrap();
        let file = secrets.join("azure-key");
        let credentials = match key {
            AzureKey::Shared(k) => {
                std::fs::write(&file, format!("{k}\n")).unwrap();
                AzureCredentials::SharedKey(file)
            }
            AzureKey::Sas(s) => {
                std::fs::write(&file, s).unwrap();
                AzureCredentials::Sas(file)
            }
        };
        Repository {
            storage: Storage::Azure(Azure {
                account: AZURE_ACCOUNT.into(),
                container: self.container.clone(),
                endpoint: Some("localhost".into()),
                port: Some(self.port),
                uri_style: UriStyle::Path,
                tls: Tls {
                    verify: true,
                    ca_file: Some(self.ca.ca_file.clone()),
                },
                credentials,
            }),
            path: path.into(),
            retention: Default::default(),
        }
    }

    pub fn logs(&self) -> String {
        format!(
            "--- azurite.err ---\n{}\n--- debug.log ---\n{}",
            tail(&self.dir.path().join("azurite.err")),
            tail(&self.dir.path().join("debug.log"))
        )
    }
}

pub enum AzureKey<'a> {
    Shared(&'a str),
    Sas(&'a str),
}

impl Drop for Azurite {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        stop(&mut self.child);
    }
}

fn hmac_sha256(key: &[u8], text: &str) -> Vec<u8> {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
    mac.update(text.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

/// fake-gcs-server over TLS on `127.0.0.1:<port>` with one bucket, and a
/// token server on `token_port` for service keys. fake-gcs-server does not
/// check tokens; the token server records each assertion it was given.
pub struct FakeGcs {
    pub dir: tempfile::TempDir,
    pub ca: TestCa,
    pub port: u16,
    pub bucket: String,
    pub token_port: u16,
    /// Bodies of the token requests (`grant_type=...&assertion=<JWT>`).
    pub token_requests: Arc<Mutex<Vec<String>>>,
    stopping: Arc<AtomicBool>,
    child: Option<Child>,
}

impl FakeGcs {
    /// `None` (skip) when fake-gcs-server is not built, outside CI.
    pub fn start(port: u16, token_port: u16, bucket: &str) -> Option<Self> {
        let bin = tool(
            "CAPSTAN_FAKE_GCS",
            "fake-gcs-server-",
            "bin/fake-gcs-server",
        )
        .or_else(|| {
            missing("fake-gcs-server (CAPSTAN_FAKE_GCS; bash .ci/install-object-stores.sh)")
        })?;
        let dir = tempfile::Builder::new().prefix("capgcs").tempdir().unwrap();
        let ca = TestCa::new(dir.path());
        // A directory under -data is a bucket that exists from the start.
        std::fs::create_dir_all(dir.path().join("seed").join(bucket)).unwrap();
        let log = dir.path().join("fake-gcs.log");
        let child = Command::new(bin)
            .args([
                "-scheme",
                "https",
                "-host",
                "127.0.0.1",
                "-port",
                &port.to_string(),
            ])
            .arg("-cert-location")
            .arg(&ca.cert_file)
            .arg("-private-key-location")
            .arg(&ca.key_file)
            .args(["-backend", "filesystem", "-filesystem-root"])
            .arg(dir.path().join("root"))
            .arg("-data")
            .arg(dir.path().join("seed"))
            .args(["-public-host", &format!("localhost:{port}")])
            .args(["-external-url", &format!("https://localhost:{port}")])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(dir.path().join("fake-gcs.err")).unwrap())
            .spawn()
            .expect("spawn fake-gcs-server");
        let token_requests = Arc::new(Mutex::new(vec![]));
        let stopping = Arc::new(AtomicBool::new(false));
        let this = Self {
            dir,
            ca,
            port,
            bucket: bucket.into(),
            token_port,
            token_requests: token_requests.clone(),
            stopping: stopping.clone(),
            child: Some(child),
        };
        wait_port(
            port,
            "fake-gcs-server",
            &this.dir.path().join("fake-gcs.err"),
        );
        token_server(&this.ca, token_port, token_requests, stopping);
        Some(this)
    }

    /// Object names under `prefix` in the bucket.
    pub fn objects(&self, prefix: &str) -> Vec<String> {
        let (status, body) = self.ca.https(
            self.port,
            "GET",
            &format!("/storage/v1/b/{}/o?prefix={prefix}", self.bucket),
            &[],
        );
        assert!(
            status.contains(" 200 "),
            "listing {prefix}: {status} {body}"
        );
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        json["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|o| o["name"].as_str().map(str::to_string))
            .collect()
    }

    /// A service account key file (JSON) whose `token_uri` is the token
    /// server, with an RSA key made by `openssl` (Google's keys are RSA).
    /// Returns the file's path and the key's public half (PEM).
    pub fn service_key(&self, secrets: &Path, client_email: &str) -> (PathBuf, PathBuf) {
        std::fs::create_dir_all(secrets).unwrap();
        let private = self.dir.path().join("sa.pem");
        let public = self.dir.path().join("sa.pub");
        let out = Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
            ])
            .arg(&private)
            .output()
            .expect("openssl genpkey");
        assert!(out.status.success(), "openssl genpkey: {out:?}");
        let out = Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(&private)
            .arg("-out")
            .arg(&public)
            .output()
            .unwrap();
        assert!(out.status.success(), "openssl pkey: {out:?}");
        let key = serde_json::json!({
            "type": "service_account",
            "project_id": "capstan-test",
            "private_key_id": "0",
            "private_key": std::fs::read_to_string(&private).unwrap(),
            "client_email": client_email,
            "token_uri": format!("https://localhost:{}/token", self.token_port),
        });
        let file = secrets.join("gcs-key");
        std::fs::write(&file, key.to_string()).unwrap();
        (file, public)
    }

    pub fn repository(&self, path: &str, credentials: GcsCredentials) -> Repository {
        Repository {
            storage: Storage::Gcs(Gcs {
                bucket: self.bucket.clone(),
                endpoint: Some(format!("localhost:{}", self.port)),
                tls: Tls {
                    verify: true,
                    ca_file: Some(self.ca.ca_file.clone()),
                },
                credentials,
            }),
            path: path.into(),
            retention: Default::default(),
        }
    }

    pub fn logs(&self) -> String {
        format!(
            "--- fake-gcs.err ---\n{}\n--- fake-gcs.log ---\n{}",
            tail(&self.dir.path().join("fake-gcs.err")),
            tail(&self.dir.path().join("fake-gcs.log"))
        )
    }
}

impl Drop for FakeGcs {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        self.stopping.store(true, Ordering::SeqCst);
        // Wakes the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.token_port));
        stop(&mut self.child);
    }
}

/// Google's OAuth token endpoint as pgBackRest uses it: a POST with a JWT
/// assertion answered by an access token. Serves one connection at a
/// time until `stopping`.
fn token_server(ca: &TestCa, port: u16, seen: Arc<Mutex<Vec<String>>>, stopping: Arc<AtomicBool>) {
    let config = rustls::ServerConfig::builder_with_provider(TestCa::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![ca.cert_der.clone().into()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(ca.key_der.clone().into()),
        )
        .unwrap();
    let config = Arc::new(config);
    let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port))).unwrap();
    std::thread::spawn(move || {
        for sock in listener.incoming() {
            if stopping.load(Ordering::SeqCst) {
                return;
            }
            let Ok(sock) = sock else { continue };
            let _ = sock.set_read_timeout(Some(Duration::from_secs(10)));
            let Ok(conn) = rustls::ServerConnection::new(config.clone()) else {
                continue;
            };
            let mut tls = rustls::StreamOwned::new(conn, sock);
            let Some(body) = read_request(&mut tls) else {
                continue;
            };
            seen.lock().unwrap().push(body);
            let answer =
                r#"{"access_token":"capstan-test-token","token_type":"Bearer","expires_in":3600}"#;
            let _ = write!(
                tls,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                answer.len()
            );
            tls.conn.send_close_notify();
            let _ = tls.flush();
        }
    });
}

/// The body of one HTTP/1.1 request (headers, then Content-Length bytes).
fn read_request(stream: &mut impl Read) -> Option<String> {
    let mut buf = vec![];
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).ok()? == 0 {
            return None;
        }
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).to_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).ok()?;
    Some(String::from_utf8_lossy(&body).to_string())
}

/// The claims of the JWT in a token request, and whether its RS256
/// signature verifies with `public_key` (checked by `openssl`).
pub fn jwt_claims(body: &str, public_key: &Path, scratch: &Path) -> (serde_json::Value, bool) {
    let assertion = body
        .split('&')
        .find_map(|p| p.strip_prefix("assertion="))
        .expect("an assertion");
    let parts: Vec<&str> = assertion.split('.').collect();
    assert_eq!(parts.len(), 3, "a JWT: {assertion}");
    let header: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
    assert_eq!(header["alg"], "RS256");
    let claims = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    let data = scratch.join("jwt.data");
    let sig = scratch.join("jwt.sig");
    std::fs::write(&data, format!("{}.{}", parts[0], parts[1])).unwrap();
    std::fs::write(&sig, URL_SAFE_NO_PAD.decode(parts[2]).unwrap()).unwrap();
    let verified = Command::new("openssl")
        .args(["dgst", "-sha256", "-verify"])
        .arg(public_key)
        .arg("-signature")
        .arg(&sig)
        .arg(&data)
        .output()
        .unwrap()
        .status
        .success();
    (claims, verified)
}

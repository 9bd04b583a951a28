//! fake-gcs-server over TLS, and a token server standing in for Google's
//! OAuth endpoint, so pgBackRest's service-key path (a JWT signed with the
//! key, exchanged for a token) runs for real.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use capstan::backup::Repository;
use capstan::backup::repository::{Gcs, GcsCredentials, Storage, Tls};

use super::super::s3::missing;
use super::{TestCa, stop, tail, tool, wait_port};

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

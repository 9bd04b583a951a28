//! An S3 store over TLS for backup tests: moto on plain HTTP with nginx in
//! front for TLS, because pgBackRest speaks HTTPS only and moto's own TLS
//! breaks it. Every server is stopped by PID on drop, also when a test
//! fails.
//!
//! One copy for two crates: the real-process tests (`tests/support`) and
//! the e2e scenarios (`e2e/src/backup.rs`) include this file, so it needs
//! nothing from its parent module but `tools` (tests/support/tools.rs).

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

pub const REGION: &str = "us-east-1";
pub const ACCESS_KEY: &str = "capstan-test-key";
pub const SECRET_KEY: &str = "capstan-test-secret";

/// pgBackRest from `CAPSTAN_PGBACKREST`, else the newest under
/// /var/cache/capstan/tools (.ci/install-pgbackrest.sh); not checked.
pub fn pgbackrest_path() -> Option<PathBuf> {
    std::env::var_os("CAPSTAN_PGBACKREST")
        .map(PathBuf::from)
        .or_else(|| {
            let dir = std::fs::read_dir("/var/cache/capstan/tools").ok()?;
            dir.flatten()
                .map(|e| e.path().join("bin/pgbackrest"))
                .filter(|p| p.is_file())
                .max()
        })
        .filter(|p| p.is_file())
}

/// pgBackRest 2.55+ ([`pgbackrest_path`]). `None` after saying why outside
/// CI; panics in CI.
pub fn pgbackrest() -> Option<PathBuf> {
    match pgbackrest_path() {
        Some(p) => {
            let out = Command::new(&p).arg("version").output().ok()?;
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            let version: Vec<u32> = text
                .split_whitespace()
                .nth(1)
                .unwrap_or("0")
                .split('.')
                .filter_map(|s| s.parse().ok())
                .collect();
            assert!(
                version >= vec![2, 55],
                "{} is {text:?}; the backup tests need pgBackRest >= 2.55 (bash .ci/install-pgbackrest.sh)",
                p.display()
            );
            Some(p)
        }
        None => missing(
            "pgBackRest 2.55 (CAPSTAN_PGBACKREST; install with bash .ci/install-pgbackrest.sh)",
        ),
    }
}

/// Says that `what` is missing and returns `None` (skip) outside CI;
/// panics under `CI=true`, where everything is installed.
pub fn missing<T>(what: &str) -> Option<T> {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{what} is required in CI but was not found");
    }
    eprintln!("SKIP: {what} not found");
    None
}

fn wait_port(addr: SocketAddr, limit: Duration, what: &str, log: &Path) {
    let deadline = Instant::now() + limit;
    while TcpStream::connect(addr).is_err() {
        if Instant::now() > deadline {
            panic!(
                "{what} did not listen on {addr} within {limit:?}:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
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

/// Where the store listens: nginx (TLS) on `addr:tls_port`, moto (plain
/// HTTP, reached only through nginx) on `127.0.0.1:moto_port`.
#[derive(Clone, Copy, Debug)]
pub struct Listen {
    pub addr: IpAddr,
    pub tls_port: u16,
    pub moto_port: u16,
}

impl Listen {
    /// Both on 127.0.0.1: for processes on this host.
    pub fn loopback(tls_port: u16, moto_port: u16) -> Self {
        Self {
            addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            tls_port,
            moto_port,
        }
    }
}

/// moto behind nginx: `https://<host>:<tls_port>/<bucket>`, where host is
/// `localhost` on loopback, else the listen address.
pub struct S3Stack {
    pub dir: tempfile::TempDir,
    pub addr: IpAddr,
    pub tls_port: u16,
    pub moto_port: u16,
    pub bucket: String,
    /// The test CA that signed nginx's certificate (for repo-storage-ca-file),
    /// readable by every user.
    pub ca_file: PathBuf,
    moto: Option<Child>,
    nginx: Option<Child>,
}

impl S3Stack {
    /// `None` (skip) when moto_server or nginx is absent outside CI. moto
    /// checks no credentials here.
    pub fn start(listen: Listen, bucket: &str) -> Option<Self> {
        Self::start_inner(listen, bucket, false).map(|(s, _)| s)
    }

    /// moto checking signatures against its IAM users: the bucket, a user
    /// with an S3 policy and its access key are made by the first requests
    /// (moto's INITIAL_NO_AUTH_ACTION_COUNT), then every request must be
    /// signed with that key. Returns the key (id, secret).
    pub fn start_with_auth(listen: Listen, bucket: &str) -> Option<(Self, (String, String))> {
        Self::start_inner(listen, bucket, true).map(|(s, k)| (s, k.expect("key")))
    }

    fn start_inner(
        listen: Listen,
        bucket: &str,
        auth: bool,
    ) -> Option<(Self, Option<(String, String)>)> {
        let moto_bin = super::tools::find("moto_server")?;
        let nginx_bin = ["/usr/sbin/nginx", "/usr/bin/nginx"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
            .or_else(|| missing("nginx (apt-get install nginx-light)"))?;
        let dir = tempfile::Builder::new().prefix("caps3").tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let mut stack = Self {
            addr: listen.addr,
            tls_port: listen.tls_port,
            moto_port: listen.moto_port,
            bucket: bucket.to_string(),
            ca_file: root.join("ca.crt"),
            dir,
            moto: None,
            nginx: None,
        };
        let moto_log = root.join("moto.log");
        let python = moto_bin.with_file_name("python3");
        let mut moto = Command::new(&moto_bin);
        if auth {
            moto.env("INITIAL_NO_AUTH_ACTION_COUNT", "4");
        }
        stack.moto = Some(
            moto.args(["-H", "127.0.0.1", "-p", &stack.moto_port.to_string()])
                .stdin(Stdio::null())
                .stdout(std::fs::File::create(&moto_log).unwrap())
                .stderr(std::fs::File::create(root.join("moto.err")).unwrap())
                .spawn()
                .expect("spawn moto_server"),
        );
        let moto_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, stack.moto_port));
        wait_port(moto_addr, Duration::from_secs(30), "moto", &moto_log);
        let access = if auth {
            Some(stack.bucket_user_and_key(&python, bucket))
        } else {
            stack.create_bucket(bucket);
            None
        };

        // A CA and a server certificate for localhost and the listen
        // address, made here.
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "capstan s3 test CA");
        ca.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let ca = rcgen::CertifiedIssuer::self_signed(ca, ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        if !listen.addr.is_loopback() {
            names.push(listen.addr.to_string());
        }
        let mut params = rcgen::CertificateParams::new(names).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "localhost");
        let cert = params.signed_by(&key, &ca).unwrap();
        std::fs::write(&stack.ca_file, ca.pem()).unwrap();
        std::fs::write(root.join("server.crt"), cert.pem()).unwrap();
        std::fs::write(root.join("server.key"), key.serialize_pem()).unwrap();

        let conf = format!(
            "daemon off;\n\
             worker_processes 1;\n\
             pid {root}/nginx.pid;\n\
             error_log {root}/nginx-error.log warn;\n\
             events {{ worker_connections 256; }}\n\
             http {{\n\
               access_log off;\n\
               client_body_temp_path {root}/body;\n\
               proxy_temp_path {root}/proxy;\n\
               server {{\n\
                 listen {listen} ssl;\n\
                 server_name localhost;\n\
                 ssl_certificate {root}/server.crt;\n\
                 ssl_certificate_key {root}/server.key;\n\
                 client_max_body_size 0;\n\
                 location / {{\n\
                   proxy_pass http://127.0.0.1:{moto};\n\
                   proxy_http_version 1.1;\n\
                   proxy_set_header Host $http_host;\n\
                   proxy_request_buffering off;\n\
                   proxy_buffering off;\n\
                 }}\n\
               }}\n\
             }}\n",
            root = root.display(),
            listen = SocketAddr::new(listen.addr, stack.tls_port),
            moto = stack.moto_port,
        );
        std::fs::write(root.join("nginx.conf"), conf).unwrap();
        let nginx_log = root.join("nginx-error.log");
        stack.nginx = Some(
            Command::new(nginx_bin)
                .arg("-p")
                .arg(&root)
                .arg("-e")
                .arg(&nginx_log)
                .arg("-c")
                .arg(root.join("nginx.conf"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(root.join("nginx.out")).unwrap())
                .spawn()
                .expect("spawn nginx"),
        );
        let tls_addr = SocketAddr::new(listen.addr, stack.tls_port);
        wait_port(tls_addr, Duration::from_secs(20), "nginx", &nginx_log);
        // pgBackRest reads the CA as the postgres user; a CA is no secret.
        std::fs::set_permissions(root.as_path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&stack.ca_file, std::fs::Permissions::from_mode(0o644)).unwrap();
        Some((stack, access))
    }

    /// Exactly four unauthenticated calls (the INITIAL_NO_AUTH_ACTION_COUNT
    /// budget), with boto3 from moto's virtualenv.
    fn bucket_user_and_key(&self, python: &Path, bucket: &str) -> (String, String) {
        let script = format!(
            "import boto3, json\n\
             kw = dict(endpoint_url='http://127.0.0.1:{port}', region_name='{REGION}',\n\
                       aws_access_key_id='bootstrap', aws_secret_access_key='bootstrap')\n\
             boto3.client('s3', **kw).create_bucket(Bucket='{bucket}')\n\
             iam = boto3.client('iam', **kw)\n\
             iam.create_user(UserName='backup')\n\
             iam.put_user_policy(UserName='backup', PolicyName='s3', PolicyDocument=json.dumps(\n\
                 {{'Version': '2012-10-17', 'Statement': [{{'Effect': 'Allow', 'Action': 's3:*', 'Resource': '*'}}]}}))\n\
             k = iam.create_access_key(UserName='backup')['AccessKey']\n\
             print(k['AccessKeyId']); print(k['SecretAccessKey'])\n",
            port = self.moto_port
        );
        let out = Command::new(python).arg("-c").arg(script).output().unwrap();
        assert!(out.status.success(), "moto setup: {out:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        let mut lines = text.lines();
        let id = lines.next().unwrap().to_string();
        let secret = lines.next().unwrap().to_string();
        (id, secret)
    }

    /// moto needs no signature on plain HTTP, so a bare PUT makes the bucket.
    pub fn create_bucket(&self, bucket: &str) {
        let mut s = TcpStream::connect(("127.0.0.1", self.moto_port)).unwrap();
        write!(
            s,
            "PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.moto_port
        )
        .unwrap();
        let mut response = String::new();
        s.read_to_string(&mut response).unwrap();
        assert!(
            response.starts_with("HTTP/1.1 200") || response.starts_with("HTTP/1.0 200"),
            "creating bucket {bucket}: {response}"
        );
    }

    /// Keys under `prefix` in the bucket (moto answers plain HTTP without
    /// a signature), at most the 1000 of one listing.
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.moto_port)).unwrap();
        write!(
            s,
            "GET /{}?list-type=2&prefix={prefix} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n",
            self.bucket, self.moto_port
        )
        .unwrap();
        let mut response = String::new();
        s.read_to_string(&mut response).unwrap();
        assert!(response.contains(" 200 "), "listing {prefix}: {response}");
        response
            .split("<Key>")
            .skip(1)
            .filter_map(|part| part.split_once("</Key>").map(|(key, _)| key.to_string()))
            .collect()
    }

    /// The repository model for this store, keys from files in `secrets`.
    pub fn repository(&self, path: &str, secrets: &Path) -> capstan::backup::Repository {
        self.repository_with_key(path, secrets, (ACCESS_KEY, SECRET_KEY))
    }

    /// The repository with the given key written to files in `secrets`.
    pub fn repository_with_key(
        &self,
        path: &str,
        secrets: &Path,
        (id, secret): (&str, &str),
    ) -> capstan::backup::Repository {
        use capstan::backup::repository::{S3, S3Credentials, Storage, Tls, UriStyle};
        std::fs::create_dir_all(secrets).unwrap();
        std::fs::write(secrets.join("access-key-id"), format!("{id}\n")).unwrap();
        std::fs::write(secrets.join("secret-access-key"), secret).unwrap();
        capstan::backup::Repository {
            storage: Storage::S3(S3 {
                endpoint: self.host(),
                port: Some(self.tls_port),
                region: REGION.into(),
                bucket: self.bucket.clone(),
                uri_style: UriStyle::Path,
                tls: Tls {
                    verify: true,
                    ca_file: Some(self.ca_file.clone()),
                },
                credentials: S3Credentials::Files {
                    access_key_id: secrets.join("access-key-id"),
                    secret_access_key: secrets.join("secret-access-key"),
                },
            }),
            path: path.into(),
            retention: Default::default(),
        }
    }

    /// The name clients connect to (the certificate carries it).
    pub fn host(&self) -> String {
        if self.addr.is_loopback() {
            "localhost".into()
        } else {
            self.addr.to_string()
        }
    }

    pub fn logs(&self) -> String {
        let root = self.dir.path();
        ["moto.err", "nginx-error.log"]
            .iter()
            .map(|f| {
                let text = std::fs::read_to_string(root.join(f)).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                format!(
                    "--- {f} ---\n{}",
                    lines[lines.len().saturating_sub(30)..].join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for S3Stack {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        stop(&mut self.nginx);
        stop(&mut self.moto);
    }
}

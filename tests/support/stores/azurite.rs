//! Azurite's blob service over TLS, signing requests with the shared key
//! as Azure's clients do.

use std::path::Path;
use std::process::{Child, Command, Stdio};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use capstan::backup::Repository;
use capstan::backup::repository::{Azure, AzureCredentials, Storage, Tls, UriStyle};
use hmac::{KeyInit, Mac};

use super::super::s3::missing;
use super::{TestCa, stop, tail, tool, wait_port};

/// Azurite's well-known development account and key.
pub const AZURE_ACCOUNT: &str = "devstoreaccount1";
pub const AZURE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

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
            // Azurite reports usage to Microsoft by default: tests talk to loopback only.
            .args(["--skipApiVersionCheck", "--disableTelemetry", "--debug"])
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

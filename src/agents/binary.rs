//! Upgrading an agent in place: the operator sends its own binary
//! (`POST /binary`), the agent checks it (hash, and that it runs here),
//! installs it over the one it runs from, and re-executes itself as PID 1.
//! `exec` keeps the PID, the children and every file descriptor not marked
//! close-on-exec, so the postmaster (or PgBouncer) keeps running and stays
//! this process's child: the new image adopts it from the [`Handover`] it
//! finds in its environment. Nothing here restarts a database.

use std::ffi::OsString;
use std::io::Write;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use crate::contract::agent::AgentBuild;
use crate::contract::layout;

/// Environment variable carrying the [`Handover`] across `exec`.
const HANDOVER_ENV: &str = "CAPSTAN_HANDOVER";
/// Tests run agents from elsewhere than the pod's binary volume; this names
/// the path they may replace.
const REPLACEABLE_ENV: &str = "CAPSTAN_REPLACEABLE_BINARY";

#[derive(Debug, thiserror::Error)]
pub enum BinaryError {
    #[error(
        "this agent runs from {running}, not from the pod's binary volume {expected}; only a new pod updates it"
    )]
    NotReplaceable { running: String, expected: String },
    #[error("the request has no {header} header (hex SHA-256 of the binary)")]
    NoChecksum { header: &'static str },
    #[error("the binary received has SHA-256 {got}, not {expected}: not installed")]
    Checksum { expected: String, got: String },
    #[error("the binary is larger than {max} bytes")]
    TooLarge { max: usize },
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("reading the request body: {0}")]
    Body(String),
    #[error("the new binary does not run on this machine ({0}); keeping the current one")]
    DoesNotRun(String),
    #[error("cannot hand over to the new binary: {0}")]
    Handover(String),
}

/// The path this process runs from. Once a new binary was put there (and
/// the exec did not happen), the kernel names the old file "… (deleted)":
/// the path is still the one to replace.
fn running_path() -> Option<PathBuf> {
    let path = std::env::current_exe().ok()?;
    let text = path.to_str()?;
    Some(PathBuf::from(
        text.strip_suffix(" (deleted)").unwrap_or(text),
    ))
}

fn replaceable_path() -> PathBuf {
    std::env::var_os(REPLACEABLE_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(layout::BINARY))
}

fn replaceable() -> bool {
    running_path().is_some_and(|p| p == replaceable_path())
}

static SHA256: OnceLock<String> = OnceLock::new();

/// What this agent runs; the checksum shows once [`start_hashing`] is done.
pub fn build() -> AgentBuild {
    AgentBuild {
        version: env!("CARGO_PKG_VERSION").to_string(),
        sha256: SHA256.get().cloned(),
        arch: std::env::consts::ARCH.to_string(),
        replaceable: replaceable(),
    }
}

/// Hashes the running executable in the background (or takes the checksum
/// the previous image verified before it handed over).
pub fn start_hashing(known: Option<String>) {
    if let Some(sha) = known {
        let _ = SHA256.set(sha);
        return;
    }
    std::thread::spawn(|| match file_sha256(Path::new("/proc/self/exe")) {
        Ok(sha) => {
            let _ = SHA256.set(sha);
        }
        Err(e) => tracing::warn!(error = %e, "cannot hash the running binary"),
    });
}

/// SHA-256 (hex) of a file.
pub fn file_sha256(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(hex(&hasher.finalize()));
        }
        hasher.update(&buf[..n]);
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A binary being received: written beside the running one, hashed as it
/// arrives.
pub struct Incoming {
    path: PathBuf,
    target: PathBuf,
    file: std::fs::File,
    hasher: Sha256,
    size: usize,
}

impl Incoming {
    pub fn begin() -> Result<Self, BinaryError> {
        let target = replaceable_path();
        if !replaceable() {
            return Err(BinaryError::NotReplaceable {
                running: running_path()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
                expected: target.display().to_string(),
            });
        }
        let path = target.with_extension("next");
        let write = |source| BinaryError::Write {
            path: path.display().to_string(),
            source,
        };
        let file = std::fs::File::create(&path).map_err(write)?;
        Ok(Self {
            path,
            target,
            file,
            hasher: Sha256::new(),
            size: 0,
        })
    }

    pub fn write(&mut self, chunk: &[u8]) -> Result<(), BinaryError> {
        self.size += chunk.len();
        if self.size > crate::contract::agent::MAX_BINARY_BYTES {
            return Err(BinaryError::TooLarge {
                max: crate::contract::agent::MAX_BINARY_BYTES,
            });
        }
        self.hasher.update(chunk);
        self.file
            .write_all(chunk)
            .map_err(|source| BinaryError::Write {
                path: self.path.display().to_string(),
                source,
            })
    }

    /// Checks the checksum and that the binary runs here (`--version`),
    /// then puts it in place of the running one. Returns its checksum.
    pub async fn install(self, expected: &str) -> Result<String, BinaryError> {
        let Incoming {
            path,
            target,
            file,
            hasher,
            ..
        } = self;
        let write = |source| BinaryError::Write {
            path: path.display().to_string(),
            source,
        };
        let got = hex(&hasher.finalize());
        if !got.eq_ignore_ascii_case(expected) {
            let _ = std::fs::remove_file(&path);
            return Err(BinaryError::Checksum {
                expected: expected.to_string(),
                got,
            });
        }
        file.sync_all().map_err(write)?;
        drop(file);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).map_err(write)?;
        // A binary that cannot even print its version would crash as PID 1
        // and take the container (and PostgreSQL) down with it.
        let ran = tokio::time::timeout(
            Duration::from_secs(30),
            tokio::process::Command::new(&path)
                .arg("--version")
                .kill_on_drop(true)
                .output(),
        )
        .await;
        let output = match ran {
            Ok(Ok(out)) if out.status.success() => out,
            Ok(Ok(out)) => {
                let _ = std::fs::remove_file(&path);
                return Err(BinaryError::DoesNotRun(format!(
                    "{}: {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
            Ok(Err(e)) => {
                let _ = std::fs::remove_file(&path);
                return Err(BinaryError::DoesNotRun(e.to_string()));
            }
            Err(_) => {
                let _ = std::fs::remove_file(&path);
                return Err(BinaryError::DoesNotRun("--version took over 30 s".into()));
            }
        };
        tracing::info!(
            version = %String::from_utf8_lossy(&output.stdout).trim(),
            sha256 = %got,
            "new agent binary installed"
        );
        std::fs::rename(&path, &target).map_err(write)?;
        Ok(got)
    }
}

/// Receives `POST /binary`: the body written beside the running binary,
/// checked against the header's checksum, tried, and put in its place.
/// Returns the checksum.
pub async fn receive(
    headers: &axum::http::HeaderMap,
    body: axum::body::Body,
) -> Result<String, BinaryError> {
    use http_body_util::BodyExt;
    let header = crate::contract::agent::BINARY_SHA256_HEADER;
    let expected = headers
        .get(header)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .ok_or(BinaryError::NoChecksum { header })?;
    let mut incoming = Incoming::begin()?;
    let mut body = body;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| BinaryError::Body(e.to_string()))?;
        if let Some(data) = frame.data_ref() {
            incoming.write(data)?;
        }
    }
    incoming.install(&expected).await
}

impl BinaryError {
    /// The HTTP status of `POST /binary` failing this way.
    pub fn status(&self) -> axum::http::StatusCode {
        use axum::http::StatusCode;
        match self {
            BinaryError::NotReplaceable { .. } => StatusCode::CONFLICT,
            BinaryError::NoChecksum { .. }
            | BinaryError::Checksum { .. }
            | BinaryError::TooLarge { .. }
            | BinaryError::Body(_) => StatusCode::BAD_REQUEST,
            BinaryError::DoesNotRun(_) => StatusCode::UNPROCESSABLE_ENTITY,
            BinaryError::Write { .. } | BinaryError::Handover(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }
}

/// Keeps `fd` open in the new image (clears close-on-exec).
pub fn inherit(fd: BorrowedFd<'_>) -> Result<RawFd, BinaryError> {
    use nix::fcntl::{FcntlArg, FdFlag, fcntl};
    fcntl(fd, FcntlArg::F_SETFD(FdFlag::empty()))
        .map_err(|e| BinaryError::Handover(format!("fd {}: {e}", fd.as_raw_fd())))?;
    Ok(fd.as_raw_fd())
}

/// Replaces this process with the installed binary, same arguments, the
/// handover in its environment. Returns only if `exec` failed.
pub fn exec<H: Serialize>(handover: &H) -> BinaryError {
    let json = match serde_json::to_string(handover) {
        Ok(j) => j,
        Err(e) => return BinaryError::Handover(e.to_string()),
    };
    let path = replaceable_path();
    let to_c = |s: OsString| std::ffi::CString::new(s.into_vec());
    let args: Result<Vec<_>, _> = std::env::args_os().map(to_c).collect();
    let mut env: Vec<OsString> = std::env::vars_os()
        .filter(|(k, _)| k != HANDOVER_ENV)
        .map(|(k, v)| {
            let mut kv = k;
            kv.push("=");
            kv.push(v);
            kv
        })
        .collect();
    env.push(format!("{HANDOVER_ENV}={json}").into());
    let env: Result<Vec<_>, _> = env.into_iter().map(to_c).collect();
    let (Ok(args), Ok(env), Ok(program)) = (args, env, to_c(path.clone().into_os_string())) else {
        return BinaryError::Handover("an argument or variable contains a NUL byte".into());
    };
    tracing::info!(binary = %path.display(), "re-executing as the new agent binary");
    match nix::unistd::execve(&program, &args, &env) {
        Ok(never) => match never {},
        Err(e) => BinaryError::Handover(format!("exec {}: {e}", path.display())),
    }
}

/// The handover the previous image left, if this process was started by
/// [`exec`]. Removed from the environment, so children do not see it.
pub fn take_handover<H: DeserializeOwned>() -> Option<H> {
    let text = std::env::var(HANDOVER_ENV).ok()?;
    // SAFETY: called first thing in the agent's entry point, before the
    // runtime starts any thread that could read the environment.
    unsafe { std::env::remove_var(HANDOVER_ENV) };
    match serde_json::from_str(&text) {
        Ok(h) => Some(h),
        Err(e) => {
            tracing::error!(error = %e, "the previous agent's handover is unreadable; starting afresh");
            None
        }
    }
}

/// CLOCK_MONOTONIC now, in nanoseconds: system-wide, so an instant taken
/// before `exec` means the same after it.
pub fn monotonic_ns() -> u64 {
    let now = tokio::time::Instant::now();
    let base = monotonic_base();
    base.1
        .saturating_add(now.saturating_duration_since(base.0).as_nanos() as u64)
}

/// A (Instant, CLOCK_MONOTONIC ns) pair taken together.
fn monotonic_base() -> (tokio::time::Instant, u64) {
    static BASE: OnceLock<(tokio::time::Instant, u64)> = OnceLock::new();
    *BASE.get_or_init(|| {
        let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC);
        let ns = ts.map_or(0, |t| {
            (t.tv_sec() as u64).saturating_mul(1_000_000_000) + t.tv_nsec() as u64
        });
        (tokio::time::Instant::now(), ns)
    })
}

/// The `Instant` of this process for a CLOCK_MONOTONIC reading.
pub fn instant_of(monotonic: u64) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    let elapsed = monotonic_ns().saturating_sub(monotonic);
    now.checked_sub(Duration::from_nanos(elapsed))
        .unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_readings_survive_the_round_trip() {
        let then = tokio::time::Instant::now() - Duration::from_millis(1500);
        let reading = monotonic_ns() - 1_500_000_000;
        let back = instant_of(reading);
        let diff = if back > then {
            back - then
        } else {
            then - back
        };
        assert!(diff < Duration::from_millis(50), "{diff:?}");
    }

    #[test]
    fn hashes_files() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("x");
        std::fs::write(&f, b"abc").unwrap();
        assert_eq!(
            file_sha256(&f).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn an_agent_outside_the_binary_volume_is_not_replaceable() {
        assert!(!build().replaceable);
        assert!(matches!(
            Incoming::begin(),
            Err(BinaryError::NotReplaceable { .. })
        ));
    }
}

//! Termination messages, as the kubelet keeps them: each container run gets
//! an empty file of the pod's directory bind-mounted at its
//! `terminationMessagePath`; when it exits, what it wrote there (at most
//! 4096 bytes) becomes `state.terminated.message`, or, with
//! `FallbackToLogsOnError` and a failure, the end of its log.

use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Container;

use crate::sys::spawn::Mount;

/// The kubelet's limits: 4096 bytes from the file; from the log, the last
/// 80 lines and at most 2048 bytes.
const MAX_FILE_BYTES: u64 = 4096;
const MAX_LOG_LINES: usize = 80;
const MAX_LOG_BYTES: usize = 2048;

fn file(pod_dir: &Path, container: &str) -> PathBuf {
    pod_dir.join("termination").join(container)
}

/// The empty file of a new run and its mount, when the container has a
/// `terminationMessagePath` (the API server defaults it to
/// `/dev/termination-log`).
pub(crate) fn prepare(pod_dir: &Path, spec: &Container) -> std::io::Result<Option<Mount>> {
    let Some(target) = spec
        .termination_message_path
        .as_deref()
        .filter(|p| Path::new(p).is_absolute())
    else {
        return Ok(None);
    };
    let source = file(pod_dir, &spec.name);
    if let Some(parent) = source.parent() {
        fs::create_dir_all(parent)?;
    }
    File::create(&source)?;
    // Any user the container runs as may write it.
    fs::set_permissions(&source, fs::Permissions::from_mode(0o666))?;
    Ok(Some(Mount {
        source,
        target: PathBuf::from(target),
        read_only: false,
    }))
}

/// The message of a run that ended with `exit_code`; `log` is its log file.
pub(crate) fn message(
    pod_dir: &Path,
    spec: &Container,
    exit_code: i32,
    log: &Path,
) -> Option<String> {
    spec.termination_message_path.as_ref()?;
    let mut written = Vec::new();
    if let Ok(f) = File::open(file(pod_dir, &spec.name)) {
        let _ = f.take(MAX_FILE_BYTES).read_to_end(&mut written);
    }
    let written = String::from_utf8_lossy(&written).to_string();
    if !written.is_empty() {
        return Some(written);
    }
    let fallback = spec.termination_message_policy.as_deref() == Some("FallbackToLogsOnError");
    if !fallback || exit_code == 0 {
        return None;
    }
    let text = fs::read_to_string(log).ok()?;
    let lines: Vec<&str> = text.lines().collect();
    let mut tail = lines[lines.len().saturating_sub(MAX_LOG_LINES)..].join("\n");
    if tail.len() > MAX_LOG_BYTES {
        let mut start = tail.len() - MAX_LOG_BYTES;
        while !tail.is_char_boundary(start) {
            start += 1;
        }
        tail = tail[start..].to_string();
    }
    (!tail.is_empty()).then_some(tail)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(policy: Option<&str>) -> Container {
        Container {
            name: "main".into(),
            termination_message_path: Some("/dev/termination-log".into()),
            termination_message_policy: policy.map(str::to_string),
            ..Container::default()
        }
    }

    #[test]
    fn the_file_wins_then_the_log_on_failure_only() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        fs::write(&log, "a\nb\nlast words\n").unwrap();
        let s = spec(Some("FallbackToLogsOnError"));
        let m = prepare(dir.path(), &s).unwrap().unwrap();
        assert_eq!(m.target, PathBuf::from("/dev/termination-log"));
        assert_eq!(message(dir.path(), &s, 0, &log), None);
        assert_eq!(
            message(dir.path(), &s, 1, &log).as_deref(),
            Some("a\nb\nlast words")
        );
        assert_eq!(message(dir.path(), &spec(None), 1, &log), None);
        fs::write(&m.source, "x".repeat(5000)).unwrap();
        assert_eq!(message(dir.path(), &s, 0, &log).unwrap().len(), 4096);
        // A new run starts empty.
        prepare(dir.path(), &s).unwrap();
        assert_eq!(message(dir.path(), &s, 0, &log), None);
    }
}

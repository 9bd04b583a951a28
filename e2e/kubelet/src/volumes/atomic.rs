//! Atomic projection of a set of files into a directory, as the kubelet does
//! for Secret, ConfigMap, downward API and projected volumes.
//!
//! The files live in a timestamped directory `..<ts>`; `..data` is a symlink to
//! it and each visible name is a symlink through `..data`. An update writes a
//! new timestamped directory and renames a fresh symlink over `..data`, so a
//! reader always sees one complete version.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;

use rand::Rng;

const DATA_LINK: &str = "..data";
const DATA_TMP: &str = "..data_tmp";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    pub content: Vec<u8>,
    pub mode: u32,
}

pub type Payload = BTreeMap<String, FileEntry>;

/// Writes `payload` into `dir` unless it is already there; returns whether it
/// changed anything. With `group`, files and directories get that group and
/// group read access (the kubelet's fsGroup handling of read-only volumes).
pub fn project(dir: &Path, payload: &Payload, group: Option<u32>) -> io::Result<bool> {
    fs::create_dir_all(dir)?;
    let current = fs::read_link(dir.join(DATA_LINK)).ok();
    if let Some(current) = &current
        && read_payload(&dir.join(current)).ok().as_ref() == Some(&effective(payload, group))
    {
        return Ok(false);
    }
    let stamp = jiff::Timestamp::now()
        .strftime("%Y_%m_%d_%H_%M_%S")
        .to_string();
    let version = format!("..{stamp}.{:08x}", rand::rng().random::<u32>());
    let version_dir = dir.join(&version);
    fs::create_dir(&version_dir)?;
    set_dir_group(&version_dir, group)?;
    for (path, entry) in payload {
        let file = version_dir.join(path);
        if let Some(parent) = file.parent()
            && parent != version_dir
        {
            fs::create_dir_all(parent)?;
            let mut p = parent;
            while p != version_dir {
                set_dir_group(p, group)?;
                p = p.parent().unwrap_or(&version_dir);
            }
        }
        fs::write(&file, &entry.content)?;
        if let Some(gid) = group {
            chown(&file, None, Some(gid))?;
        }
        fs::set_permissions(
            &file,
            fs::Permissions::from_mode(file_mode(entry.mode, group)),
        )?;
    }
    let tmp = dir.join(DATA_TMP);
    let _ = fs::remove_file(&tmp);
    symlink(&version, &tmp)?;
    fs::rename(&tmp, dir.join(DATA_LINK))?;

    let visible: BTreeSet<&str> = payload.keys().filter_map(|p| p.split('/').next()).collect();
    for name in &visible {
        let link = dir.join(name);
        if fs::symlink_metadata(&link).is_err() {
            let tmp = dir.join(format!("..{name}_tmp"));
            let _ = fs::remove_file(&tmp);
            symlink(Path::new(DATA_LINK).join(name), &tmp)?;
            fs::rename(&tmp, &link)?;
        }
    }
    // Only names the previous payload showed and this one does not go, as
    // the kubelet's atomic writer does: anything else in the directory (a
    // file a subPath mount of another volume sits on) is not ours.
    let before: BTreeSet<String> = current
        .as_ref()
        .and_then(|c| read_payload(&dir.join(c)).ok())
        .map(|p| {
            p.keys()
                .filter_map(|k| k.split('/').next())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    for name in before.iter().filter(|n| !visible.contains(n.as_str())) {
        let path = dir.join(name);
        if fs::symlink_metadata(&path).is_ok() {
            fs::remove_file(path)?;
        }
    }
    if let Some(old) = current
        && old.as_os_str() != version.as_str()
    {
        fs::remove_dir_all(dir.join(old))?;
    }
    Ok(true)
}

fn file_mode(mode: u32, group: Option<u32>) -> u32 {
    if group.is_some() { mode | 0o440 } else { mode }
}

fn effective(payload: &Payload, group: Option<u32>) -> Payload {
    payload
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                FileEntry {
                    content: v.content.clone(),
                    mode: file_mode(v.mode, group),
                },
            )
        })
        .collect()
}

fn read_payload(version_dir: &Path) -> io::Result<Payload> {
    let mut out = Payload::new();
    let mut stack = vec![version_dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d)? {
            let entry = entry?;
            let meta = entry.metadata()?;
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                let rel = entry
                    .path()
                    .strip_prefix(version_dir)
                    .map_err(io::Error::other)?
                    .to_string_lossy()
                    .into_owned();
                out.insert(
                    rel,
                    FileEntry {
                        content: fs::read(entry.path())?,
                        mode: meta.permissions().mode() & 0o7777,
                    },
                );
            }
        }
    }
    Ok(out)
}

fn set_dir_group(dir: &Path, group: Option<u32>) -> io::Result<()> {
    let mode = match group {
        Some(gid) => {
            chown(dir, None, Some(gid))?;
            0o2755
        }
        None => 0o755,
    };
    fs::set_permissions(dir, fs::Permissions::from_mode(mode))
}

/// `chown` that leaves unspecified ids alone.
pub fn chown(path: &Path, uid: Option<u32>, gid: Option<u32>) -> io::Result<()> {
    std::os::unix::fs::chown(path, uid, gid)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(pairs: &[(&str, &str, u32)]) -> Payload {
        pairs
            .iter()
            .map(|(k, v, m)| {
                (
                    k.to_string(),
                    FileEntry {
                        content: v.as_bytes().to_vec(),
                        mode: *m,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn projects_and_swaps() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("vol");
        assert!(
            project(
                &dir,
                &payload(&[("a", "1", 0o644), ("sub/b", "2", 0o600)]),
                None
            )
            .unwrap()
        );
        assert_eq!(fs::read_to_string(dir.join("a")).unwrap(), "1");
        assert_eq!(fs::read_to_string(dir.join("sub/b")).unwrap(), "2");
        assert_eq!(
            fs::metadata(dir.join("sub/b"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
        let first = fs::read_link(dir.join(DATA_LINK)).unwrap();
        // Same content: nothing happens.
        assert!(
            !project(
                &dir,
                &payload(&[("a", "1", 0o644), ("sub/b", "2", 0o600)]),
                None
            )
            .unwrap()
        );
        assert_eq!(fs::read_link(dir.join(DATA_LINK)).unwrap(), first);
        // New content: new version, stale names disappear, old version removed.
        assert!(project(&dir, &payload(&[("a", "3", 0o644)]), None).unwrap());
        assert_eq!(fs::read_to_string(dir.join("a")).unwrap(), "3");
        assert!(fs::symlink_metadata(dir.join("sub")).is_err());
        assert!(!dir.join(&first).exists());
        // fsGroup adds group read.
        assert!(project(&dir, &payload(&[("a", "3", 0o600)]), Some(0)).unwrap());
        assert_eq!(
            fs::metadata(dir.join("a")).unwrap().permissions().mode() & 0o777,
            0o640
        );
    }

    /// A file another volume's subPath mount sits on (a CA beside rotated
    /// keys) is not the writer's: an update leaves it.
    #[test]
    fn leaves_what_no_payload_wrote() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("vol");
        project(&dir, &payload(&[("key", "1", 0o600)]), None).unwrap();
        fs::write(dir.join("ca.crt"), "").unwrap();
        assert!(project(&dir, &payload(&[("key", "2", 0o600)]), None).unwrap());
        assert!(dir.join("ca.crt").exists());
        assert_eq!(fs::read_to_string(dir.join("key")).unwrap(), "2");
    }
}

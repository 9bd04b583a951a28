//! cgroup v2 hierarchy used to track every process of a container, including
//! daemonized ones: `<cgroup2>/capstan-e2e/<kubelet>/<pod uid>/<container>`.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{Signal, send_signal};

const TOP: &str = "capstan-e2e";
/// nftables resolves cgroup paths relative to this directory.
const NFT_CGROUP_BASE: &str = "/sys/fs/cgroup";

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error(
        "no cgroup2 hierarchy is mounted (looked in /proc/self/mountinfo); the e2e kubelet tracks container processes with cgroup v2"
    )]
    NotMounted,
    #[error(
        "cannot create cgroup {path}: {source} (the e2e kubelet must run as root with a writable cgroup2 hierarchy)"
    )]
    Create { path: PathBuf, source: io::Error },
}

#[derive(Debug, Clone)]
pub struct CgroupRoot {
    mount: PathBuf,
    /// Depth of the mount's root inside the hierarchy (0 unless in a cgroup namespace).
    root_depth: usize,
}

#[derive(Debug, Clone)]
pub struct Cgroup {
    path: PathBuf,
    level: usize,
    nft_path: Option<String>,
}

fn parse_mountinfo(text: &str) -> Option<(PathBuf, usize)> {
    text.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        if right.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        let fields: Vec<&str> = left.split_whitespace().collect();
        let root = fields.get(3)?;
        let mount = fields.get(4)?;
        let depth = Path::new(root)
            .components()
            .filter(|c| matches!(c, std::path::Component::Normal(_)))
            .count();
        Some((PathBuf::from(mount), depth))
    })
}

impl CgroupRoot {
    pub fn discover() -> Result<Self, CgroupError> {
        let text =
            fs::read_to_string("/proc/self/mountinfo").map_err(|_| CgroupError::NotMounted)?;
        let (mount, root_depth) = parse_mountinfo(&text).ok_or(CgroupError::NotMounted)?;
        Ok(CgroupRoot { mount, root_depth })
    }

    /// The cgroup of one kubelet instance, named so a later run can tell whether
    /// its creator is still alive (see [`CgroupRoot::sweep_stale`]).
    pub fn kubelet_group(&self, instance: &str) -> Result<Cgroup, CgroupError> {
        let path = self.mount.join(TOP).join(instance);
        fs::create_dir_all(&path).map_err(|source| CgroupError::Create {
            path: path.clone(),
            source,
        })?;
        Ok(self.cgroup_at(path))
    }

    fn cgroup_at(&self, path: PathBuf) -> Cgroup {
        let rel = path
            .strip_prefix(&self.mount)
            .unwrap_or(&path)
            .to_path_buf();
        let level = self.root_depth + rel.components().count();
        let nft_path = self.mount.strip_prefix(NFT_CGROUP_BASE).ok().map(|base| {
            base.join(&rel)
                .to_string_lossy()
                .trim_start_matches('/')
                .to_string()
        });
        Cgroup {
            path,
            level,
            nft_path,
        }
    }

    /// Kills and removes the groups of kubelet instances `<pid>-<n>` whose
    /// process is gone (a test process that died without cleaning up).
    pub fn sweep_stale(&self) {
        let Ok(entries) = fs::read_dir(self.mount.join(TOP)) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(pid) = name.split('-').next().and_then(|p| p.parse::<i32>().ok()) else {
                continue;
            };
            if !super::process_alive(pid) {
                let group = self.cgroup_at(entry.path());
                group.kill();
                group.remove();
            }
        }
    }
}

impl Cgroup {
    pub fn child(&self, name: &str) -> Result<Cgroup, CgroupError> {
        let path = self.path.join(name);
        match fs::create_dir(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(source) => return Err(CgroupError::Create { path, source }),
        }
        Ok(Cgroup {
            path,
            level: self.level + 1,
            nft_path: self.nft_path.as_ref().map(|p| format!("{p}/{name}")),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `cgroup.procs`, where a process writes `0` to join.
    pub fn procs_file(&self) -> PathBuf {
        self.path.join("cgroup.procs")
    }

    /// Level in the hierarchy and path for `socket cgroupv2 level N "path"`, when
    /// the hierarchy is under /sys/fs/cgroup (where nftables looks).
    pub fn nft_match(&self) -> Option<(usize, &str)> {
        self.nft_path.as_deref().map(|p| (self.level, p))
    }

    /// Every process in this group and its descendants.
    pub fn procs(&self) -> Vec<i32> {
        let mut out = Vec::new();
        let mut stack = vec![self.path.clone()];
        while let Some(dir) = stack.pop() {
            if let Ok(text) = fs::read_to_string(dir.join("cgroup.procs")) {
                out.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
            }
            if let Ok(entries) = fs::read_dir(&dir) {
                stack.extend(
                    entries
                        .flatten()
                        .filter(|e| e.path().is_dir())
                        .map(|e| e.path()),
                );
            }
        }
        out
    }

    /// Signals every process; returns how many were signalled.
    pub fn signal(&self, sig: Signal) -> usize {
        self.procs()
            .into_iter()
            .filter(|pid| send_signal(*pid, sig).is_ok())
            .count()
    }

    /// SIGKILLs everything in the group (atomically via `cgroup.kill` where the
    /// kernel has it, so forking processes cannot escape).
    pub fn kill(&self) {
        if fs::write(self.path.join("cgroup.kill"), "1").is_err() {
            for _ in 0..10 {
                if self.signal(Signal::KILL) == 0 {
                    break;
                }
            }
        }
    }

    pub fn populated(&self) -> bool {
        match fs::read_to_string(self.path.join("cgroup.events")) {
            Ok(text) => text.lines().any(|l| l.trim() == "populated 1"),
            Err(_) => !self.procs().is_empty(),
        }
    }

    /// Kills everything and waits (up to `timeout`) until the group is empty.
    pub async fn kill_and_wait(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            self.kill();
            if !self.populated() {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Removes the group and its descendants (they must be empty).
    pub fn remove(&self) {
        fn rm(dir: &Path) {
            if let Ok(entries) = fs::read_dir(dir) {
                for e in entries.flatten() {
                    if e.path().is_dir() {
                        rm(&e.path());
                    }
                }
            }
            let _ = fs::remove_dir(dir);
        }
        rm(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_in_mountinfo() {
        let text = "30 25 0:26 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids\n41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(
            parse_mountinfo(text),
            Some((PathBuf::from("/sys/fs/cgroup/unified"), 0))
        );
        let nested = "41 31 0:38 /a/b /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            parse_mountinfo(nested),
            Some((PathBuf::from("/sys/fs/cgroup"), 2))
        );
        assert_eq!(parse_mountinfo("1 2 3:4 / / rw - ext4 /dev/x rw\n"), None);
        let root = CgroupRoot {
            mount: PathBuf::from("/sys/fs/cgroup/unified"),
            root_depth: 0,
        };
        let g = root.cgroup_at(PathBuf::from("/sys/fs/cgroup/unified/capstan-e2e/1-0/pod"));
        assert_eq!(g.nft_match(), Some((3, "unified/capstan-e2e/1-0/pod")));
    }
}

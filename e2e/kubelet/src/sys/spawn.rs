//! Starting a container process: its own cgroup, session, mount and UTS
//! namespaces, volumes bind-mounted at their in-container paths, then the
//! pod's user. Exec probes and hooks join an existing container instead.
//!
//! Everything the child does between fork and exec is a raw syscall on data
//! prepared beforehand (no allocation after fork).

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;

use crate::users::Credentials;

/// A bind mount of a host file or directory at an in-container path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub source: PathBuf,
    pub target: PathBuf,
    pub read_only: bool,
}

/// Namespace handles of a running container (kept open so exec probes can
/// join it and the namespace id cannot be reused while we hold it).
#[derive(Debug)]
pub struct NsFds {
    mnt: OwnedFd,
    uts: OwnedFd,
}

pub enum Namespaces {
    /// A new container: fresh mount and UTS namespaces.
    New { mounts: Vec<Mount>, hostname: String },
    /// Exec into a running container.
    Join(Arc<NsFds>),
}

pub struct SpawnSpec {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: Option<PathBuf>,
    pub creds: Credentials,
    /// `cgroup.procs` of the group the process starts in.
    pub cgroup_procs: PathBuf,
    pub namespaces: Namespaces,
    pub stdout: Stdio,
    pub stderr: Stdio,
}

pub struct Spawned {
    pub child: tokio::process::Child,
    pub pid: i32,
    /// `None` when the process exited before its namespaces could be opened.
    pub ns: Option<Arc<NsFds>>,
}

fn cstring(p: impl AsRef<[u8]>) -> io::Result<CString> {
    CString::new(p.as_ref()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// Sorts mounts so parents come before children (a volume inside another works).
pub fn order_mounts(mounts: &mut [Mount]) {
    mounts.sort_by_key(|m| m.target.components().count());
}

/// Where, on the host, the mount point of `mounts[index]` lives once the
/// earlier mounts are in place: inside the source of the deepest earlier
/// mount that contains it, or at the same path on the host.
fn host_location(mounts: &[Mount], index: usize) -> PathBuf {
    let target = &mounts[index].target;
    for m in mounts[..index].iter().rev() {
        if let Ok(rel) = target.strip_prefix(&m.target) {
            return m.source.join(rel);
        }
    }
    target.clone()
}

/// Host path of an in-container path, given the container's mounts.
pub fn resolve_in_container(mounts: &[Mount], path: &Path) -> PathBuf {
    for m in mounts.iter().rev() {
        if let Ok(rel) = path.strip_prefix(&m.target) {
            return m.source.join(rel);
        }
    }
    path.to_path_buf()
}

/// Creates missing mount points: an empty directory (or file, for a file
/// source). Mount points outside any volume are created on the host itself.
pub fn create_mount_points(mounts: &[Mount]) -> io::Result<()> {
    for i in 0..mounts.len() {
        let at = host_location(mounts, i);
        if fs::symlink_metadata(&at).is_ok() {
            continue;
        }
        if mounts[i].source.is_dir() {
            fs::create_dir_all(&at)?;
        } else {
            if let Some(parent) = at.parent() {
                fs::create_dir_all(parent)?;
            }
            File::create(&at)?;
        }
    }
    Ok(())
}

fn open_ns(pid: i32, kind: &str) -> io::Result<OwnedFd> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(format!("/proc/{pid}/ns/{kind}"))?;
    Ok(OwnedFd::from(file))
}

struct PreparedMount {
    source: CString,
    target: CString,
    read_only: bool,
}

/// Joins the cgroup whose `cgroup.procs` is `procs` (writing 0 moves the caller).
fn join_cgroup(procs: &CString) -> io::Result<()> {
    // SAFETY: raw syscalls on a valid NUL-terminated path and a static buffer.
    unsafe {
        let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        check(fd)?;
        let rc = libc::write(fd, b"0".as_ptr().cast(), 1);
        libc::close(fd);
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

fn set_credentials(uid: u32, gid: u32, groups: &[libc::gid_t]) -> io::Result<()> {
    // SAFETY: plain syscalls; `groups` is a valid slice.
    unsafe {
        check(libc::setgroups(groups.len(), groups.as_ptr()))?;
        check(libc::setgid(gid))?;
        check(libc::setuid(uid))?;
    }
    Ok(())
}

pub fn spawn(spec: SpawnSpec) -> io::Result<Spawned> {
    let (program, args) = spec
        .argv
        .split_first()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no command specified"))?;
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(spec.stdout)
        .stderr(spec.stderr);

    let procs = cstring(spec.cgroup_procs.as_os_str().as_bytes())?;
    let cwd = spec.cwd.as_ref().map(|c| cstring(c.as_os_str().as_bytes())).transpose()?;
    let groups: Vec<libc::gid_t> = spec.creds.groups.clone();
    let (uid, gid) = (spec.creds.uid, spec.creds.gid);

    // Open mount sources before forking: once a container mounts something over
    // a directory that holds a later source, the path would no longer reach it.
    let mut source_fds: Vec<OwnedFd> = Vec::new();
    let is_new = matches!(spec.namespaces, Namespaces::New { .. });
    match spec.namespaces {
        Namespaces::New { mounts, hostname } => {
            let mut prepared = Vec::with_capacity(mounts.len());
            for m in &mounts {
                let fd = OwnedFd::from(
                    OpenOptions::new()
                        .read(true)
                        .custom_flags(libc::O_PATH | libc::O_CLOEXEC)
                        .open(&m.source)
                        .map_err(|e| io::Error::new(e.kind(), format!("mount source {}: {e}", m.source.display())))?,
                );
                prepared.push(PreparedMount {
                    source: cstring(format!("/proc/self/fd/{}", fd.as_raw_fd()))?,
                    target: cstring(m.target.as_os_str().as_bytes())?,
                    read_only: m.read_only,
                });
                source_fds.push(fd);
            }
            let hostname = hostname.into_bytes();
            let root = cstring("/")?;
            // SAFETY: the closure only issues syscalls on data owned by it.
            unsafe {
                cmd.pre_exec(move || {
                    join_cgroup(&procs)?;
                    check(libc::setsid())?;
                    check(libc::unshare(libc::CLONE_NEWNS | libc::CLONE_NEWUTS))?;
                    // Our mounts must not propagate back to the host.
                    check(libc::mount(
                        std::ptr::null(),
                        root.as_ptr(),
                        std::ptr::null(),
                        libc::MS_REC | libc::MS_SLAVE,
                        std::ptr::null(),
                    ))?;
                    for m in &prepared {
                        check(libc::mount(
                            m.source.as_ptr(),
                            m.target.as_ptr(),
                            std::ptr::null(),
                            libc::MS_BIND | libc::MS_REC,
                            std::ptr::null(),
                        ))?;
                        if m.read_only {
                            check(libc::mount(
                                std::ptr::null(),
                                m.target.as_ptr(),
                                std::ptr::null(),
                                libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
                                std::ptr::null(),
                            ))?;
                        }
                    }
                    check(libc::sethostname(hostname.as_ptr().cast(), hostname.len()))?;
                    if let Some(cwd) = &cwd {
                        check(libc::chdir(cwd.as_ptr()))?;
                    }
                    set_credentials(uid, gid, &groups)
                });
            }
        }
        Namespaces::Join(ns) => {
            let (mnt, uts) = (ns.mnt.as_raw_fd(), ns.uts.as_raw_fd());
            // SAFETY: as above; `ns` is moved into the closure, keeping the fds open.
            unsafe {
                cmd.pre_exec(move || {
                    let _keep = &ns;
                    join_cgroup(&procs)?;
                    check(libc::setsid())?;
                    check(libc::setns(mnt, libc::CLONE_NEWNS))?;
                    check(libc::setns(uts, libc::CLONE_NEWUTS))?;
                    if let Some(cwd) = &cwd {
                        check(libc::chdir(cwd.as_ptr()))?;
                    }
                    set_credentials(uid, gid, &groups)
                });
            }
        }
    }
    let child = cmd.spawn()?;
    drop(source_fds);
    let pid = child.id().map(|p| p as i32).unwrap_or(0);
    let ns = if is_new {
        match (open_ns(pid, "mnt"), open_ns(pid, "uts")) {
            (Ok(mnt), Ok(uts)) => Some(Arc::new(NsFds { mnt, uts })),
            _ => None,
        }
    } else {
        None
    };
    Ok(Spawned { child, pid, ns })
}

/// Whether `path` is absolute and free of `..` (safe to join under a volume).
pub fn is_clean_absolute(path: &Path) -> bool {
    path.is_absolute() && !path.components().any(|c| matches!(c, Component::ParentDir))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(source: &str, target: &str) -> Mount {
        Mount { source: source.into(), target: target.into(), read_only: false }
    }

    #[test]
    fn mount_points_follow_earlier_mounts() {
        let mut mounts = vec![m("/state/bin", "/usr/local/bin/capstan"), m("/state/img", "/usr/local/bin")];
        order_mounts(&mut mounts);
        assert_eq!(mounts[0].target, PathBuf::from("/usr/local/bin"));
        assert_eq!(host_location(&mounts, 0), PathBuf::from("/usr/local/bin"));
        assert_eq!(host_location(&mounts, 1), PathBuf::from("/state/img/capstan"));
        assert_eq!(resolve_in_container(&mounts, Path::new("/usr/local/bin/x")), PathBuf::from("/state/img/x"));
        assert!(is_clean_absolute(Path::new("/a/b")));
        assert!(!is_clean_absolute(Path::new("/a/../b")));
        assert!(!is_clean_absolute(Path::new("a")));
    }
}

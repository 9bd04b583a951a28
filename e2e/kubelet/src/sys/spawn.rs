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
use std::path::{Path, PathBuf};
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
    New {
        mounts: Vec<Mount>,
        hostname: String,
    },
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
    CString::new(p.as_ref())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

/// Like [`check`], but also names the failed step on the container's stderr
/// (its log), since only the errno reaches the parent. Async-signal-safe.
fn step(rc: libc::c_int, what: &[u8], path: Option<&CString>) -> io::Result<()> {
    if rc >= 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    let write = |b: &[u8]| {
        // SAFETY: writing a valid buffer to fd 2.
        unsafe { libc::write(2, b.as_ptr().cast(), b.len()) };
    };
    write(b"e2e-kubelet: ");
    write(what);
    if let Some(p) = path {
        write(b" ");
        write(p.as_bytes());
    }
    write(b" failed\n");
    Err(err)
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

/// Upper bound of mounts per container (fds are kept in a fixed array after fork).
const MAX_MOUNTS: usize = 64;

/// `/proc/self/fd/<fd>` as a C string in `buf`, without allocating.
fn fd_path(fd: libc::c_int, buf: &mut [u8; 32]) -> *const libc::c_char {
    const PREFIX: &[u8] = b"/proc/self/fd/";
    buf[..PREFIX.len()].copy_from_slice(PREFIX);
    let mut digits = [0u8; 10];
    let (mut n, mut len) = (fd.max(0) as u32, 0);
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for i in 0..len {
        buf[PREFIX.len() + i] = digits[len - 1 - i];
    }
    buf[PREFIX.len() + len] = 0;
    buf.as_ptr().cast()
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
        step(fd, b"opening", Some(procs))?;
        let rc = libc::write(fd, b"0".as_ptr().cast(), 1);
        libc::close(fd);
        step(rc as libc::c_int, b"joining cgroup", Some(procs))?;
    }
    Ok(())
}

fn set_credentials(uid: u32, gid: u32, groups: &[libc::gid_t]) -> io::Result<()> {
    // SAFETY: plain syscalls; `groups` is a valid slice.
    unsafe {
        step(
            libc::setgroups(groups.len(), groups.as_ptr()),
            b"setgroups",
            None,
        )?;
        step(libc::setgid(gid), b"setgid", None)?;
        step(libc::setuid(uid), b"setuid", None)?;
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
    let cwd = spec
        .cwd
        .as_ref()
        .map(|c| cstring(c.as_os_str().as_bytes()))
        .transpose()?;
    let groups: Vec<libc::gid_t> = spec.creds.groups.clone();
    let (uid, gid) = (spec.creds.uid, spec.creds.gid);

    let is_new = matches!(spec.namespaces, Namespaces::New { .. });
    match spec.namespaces {
        Namespaces::New { mounts, hostname } => {
            let mut prepared = Vec::with_capacity(mounts.len());
            for m in &mounts {
                prepared.push(PreparedMount {
                    source: cstring(m.source.as_os_str().as_bytes())?,
                    target: cstring(m.target.as_os_str().as_bytes())?,
                    read_only: m.read_only,
                });
            }
            let hostname = hostname.into_bytes();
            let root = cstring("/")?;
            // SAFETY: the closure only issues syscalls on data owned by it.
            unsafe {
                cmd.pre_exec(move || {
                    join_cgroup(&procs)?;
                    step(libc::setsid(), b"setsid", None)?;
                    step(
                        libc::unshare(libc::CLONE_NEWNS | libc::CLONE_NEWUTS),
                        b"unshare",
                        None,
                    )?;
                    // Our mounts must not propagate back to the host.
                    step(
                        libc::mount(
                            std::ptr::null(),
                            root.as_ptr(),
                            std::ptr::null(),
                            libc::MS_REC | libc::MS_SLAVE,
                            std::ptr::null(),
                        ),
                        b"making / a slave mount",
                        None,
                    )?;
                    // Open every source before mounting anything: a mount over a
                    // directory holding a later source would hide it. (The fds must
                    // be opened in the new namespace; bind mounts from another
                    // namespace's mounts are refused.)
                    let mut fds = [0 as libc::c_int; MAX_MOUNTS];
                    if prepared.len() > MAX_MOUNTS {
                        return Err(io::Error::from_raw_os_error(libc::E2BIG));
                    }
                    for (i, m) in prepared.iter().enumerate() {
                        fds[i] = libc::open(m.source.as_ptr(), libc::O_PATH | libc::O_CLOEXEC);
                        step(fds[i], b"opening mount source", Some(&m.source))?;
                    }
                    for (i, m) in prepared.iter().enumerate() {
                        let mut buf = [0u8; 32];
                        step(
                            libc::mount(
                                fd_path(fds[i], &mut buf),
                                m.target.as_ptr(),
                                std::ptr::null(),
                                libc::MS_BIND | libc::MS_REC,
                                std::ptr::null(),
                            ),
                            b"bind mount at",
                            Some(&m.target),
                        )?;
                        if m.read_only {
                            step(
                                libc::mount(
                                    std::ptr::null(),
                                    m.target.as_ptr(),
                                    std::ptr::null(),
                                    libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
                                    std::ptr::null(),
                                ),
                                b"read-only remount of",
                                Some(&m.target),
                            )?;
                        }
                    }
                    step(
                        libc::sethostname(hostname.as_ptr().cast(), hostname.len()),
                        b"sethostname",
                        None,
                    )?;
                    if let Some(cwd) = &cwd {
                        step(libc::chdir(cwd.as_ptr()), b"chdir to", Some(cwd))?;
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
                    step(libc::setsid(), b"setsid", None)?;
                    step(
                        libc::setns(mnt, libc::CLONE_NEWNS),
                        b"joining the mount namespace",
                        None,
                    )?;
                    step(
                        libc::setns(uts, libc::CLONE_NEWUTS),
                        b"joining the UTS namespace",
                        None,
                    )?;
                    if let Some(cwd) = &cwd {
                        step(libc::chdir(cwd.as_ptr()), b"chdir to", Some(cwd))?;
                    }
                    set_credentials(uid, gid, &groups)
                });
            }
        }
    }
    let child = cmd.spawn()?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn m(source: &str, target: &str) -> Mount {
        Mount {
            source: source.into(),
            target: target.into(),
            read_only: false,
        }
    }

    #[test]
    fn formats_fd_paths() {
        let mut buf = [0u8; 32];
        let p = fd_path(1234, &mut buf);
        // SAFETY: fd_path NUL-terminates within buf.
        assert_eq!(
            unsafe { std::ffi::CStr::from_ptr(p) }.to_str().unwrap(),
            "/proc/self/fd/1234"
        );
        let p = fd_path(0, &mut buf);
        assert_eq!(
            unsafe { std::ffi::CStr::from_ptr(p) }.to_str().unwrap(),
            "/proc/self/fd/0"
        );
    }

    #[test]
    fn mount_points_follow_earlier_mounts() {
        let mut mounts = vec![
            m("/state/bin", "/usr/local/bin/capstan"),
            m("/state/img", "/usr/local/bin"),
        ];
        order_mounts(&mut mounts);
        assert_eq!(mounts[0].target, PathBuf::from("/usr/local/bin"));
        assert_eq!(host_location(&mounts, 0), PathBuf::from("/usr/local/bin"));
        assert_eq!(
            host_location(&mounts, 1),
            PathBuf::from("/state/img/capstan")
        );
        assert_eq!(
            resolve_in_container(&mounts, Path::new("/usr/local/bin/x")),
            PathBuf::from("/state/img/x")
        );
    }
}

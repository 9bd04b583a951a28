//! Size-limited tmpfs mounts backing claims of classes that ask for real
//! capacity (`e2e.capstan.dev/backing: tmpfs`): a write past the size fails
//! with `No space left on device`, and a remount with a larger size grows
//! the file system in place, seen at once by every pod that bind-mounted
//! it.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

fn cstr(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
}

fn mount(dir: &Path, bytes: u64, remount: bool) -> io::Result<()> {
    let target = cstr(dir)?;
    let source = CString::new("tmpfs").map_err(io::Error::other)?;
    let options = CString::new(format!("size={bytes},mode=0777")).map_err(io::Error::other)?;
    let flags = if remount { libc::MS_REMOUNT } else { 0 };
    // SAFETY: every pointer is a valid NUL-terminated string owned here.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            source.as_ptr(),
            flags,
            options.as_ptr().cast(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Whether `dir` is the root of a mount (its device differs from its
/// parent's).
pub fn is_mount_point(dir: &Path) -> bool {
    let (Ok(me), Some(Ok(parent))) = (std::fs::metadata(dir), dir.parent().map(std::fs::metadata))
    else {
        return false;
    };
    me.dev() != parent.dev()
}

/// Mounts a tmpfs of `bytes` on `dir` (created if missing), unless one is
/// there already.
pub fn ensure(dir: &Path, bytes: u64) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    if is_mount_point(dir) {
        return Ok(());
    }
    mount(dir, bytes, false)
}

/// Grows (or shrinks) the tmpfs on `dir` to `bytes`, in place.
pub fn resize(dir: &Path, bytes: u64) -> io::Result<()> {
    mount(dir, bytes, true)
}

/// Size of the file system mounted on `dir`, when `dir` is a mount point.
pub fn size(dir: &Path) -> Option<u64> {
    if !is_mount_point(dir) {
        return None;
    }
    let path = cstr(dir).ok()?;
    // SAFETY: statvfs writes into the zeroed struct it is given.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some((st.f_blocks as u64).saturating_mul(st.f_frsize as u64))
}

/// Detaches whatever is mounted on `dir` (nothing mounted: not an error).
pub fn unmount(dir: &Path) -> io::Result<()> {
    if !is_mount_point(dir) {
        return Ok(());
    }
    let target = cstr(dir)?;
    // SAFETY: a valid NUL-terminated path.
    if unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

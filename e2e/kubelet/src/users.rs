//! Mapping of the pods' numeric user and group ids to users of this host.
//!
//! The real images run PostgreSQL as uid 999 and PgBouncer as uid 998; those
//! users do not exist here, and PostgreSQL refuses to run as root. So every
//! non-root id is mapped (by default to the host's `postgres` user and group);
//! root stays root.

use std::collections::BTreeMap;
use std::ffi::{CStr, CString};

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("host user {0:?} does not exist; create it or configure IdMapping explicitly")]
    NoSuchUser(String),
}

/// Credentials a container process runs with, after mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    /// Home directory of the mapped user on this host (for `HOME`).
    pub home: String,
}

#[derive(Debug, Clone)]
pub struct IdMapping {
    pub default_uid: u32,
    pub default_gid: u32,
    pub uids: BTreeMap<u32, u32>,
    pub gids: BTreeMap<u32, u32>,
}

impl IdMapping {
    /// Every non-root id maps to the host user `name` and its primary group.
    pub fn host_user(name: &str) -> Result<Self, UserError> {
        let (uid, gid, _) =
            lookup_user(name).ok_or_else(|| UserError::NoSuchUser(name.to_string()))?;
        Ok(IdMapping {
            default_uid: uid,
            default_gid: gid,
            uids: BTreeMap::new(),
            gids: BTreeMap::new(),
        })
    }

    pub fn map_uid(&self, uid: i64) -> u32 {
        match u32::try_from(uid) {
            Ok(0) => 0,
            Ok(uid) => self.uids.get(&uid).copied().unwrap_or(self.default_uid),
            Err(_) => self.default_uid,
        }
    }

    pub fn map_gid(&self, gid: i64) -> u32 {
        match u32::try_from(gid) {
            Ok(0) => 0,
            Ok(gid) => self.gids.get(&gid).copied().unwrap_or(self.default_gid),
            Err(_) => self.default_gid,
        }
    }

    /// Credentials for a container running as `run_as_user`/`run_as_group`
    /// (unset user = the image's user, root here) with the pod's `fsGroup` and
    /// `supplementalGroups` as additional groups.
    pub fn credentials(
        &self,
        run_as_user: Option<i64>,
        run_as_group: Option<i64>,
        fs_group: Option<i64>,
        supplemental: &[i64],
    ) -> Credentials {
        let uid = run_as_user.map(|u| self.map_uid(u)).unwrap_or(0);
        let gid = match run_as_group {
            Some(g) => self.map_gid(g),
            None if uid == 0 => 0,
            None => self.default_gid_for(uid),
        };
        let mut groups: Vec<u32> = fs_group
            .iter()
            .chain(supplemental)
            .map(|g| self.map_gid(*g))
            .collect();
        groups.push(gid);
        groups.sort_unstable();
        groups.dedup();
        let home = lookup_uid_home(uid).unwrap_or_else(|| "/".to_string());
        Credentials {
            uid,
            gid,
            groups,
            home,
        }
    }

    fn default_gid_for(&self, uid: u32) -> u32 {
        lookup_uid_gid(uid).unwrap_or(self.default_gid)
    }
}

fn passwd_entry<F>(lookup: F) -> Option<(u32, u32, String)>
where
    F: FnOnce(*mut libc::passwd, *mut libc::c_char, usize, *mut *mut libc::passwd) -> libc::c_int,
{
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    let rc = lookup(&mut pwd, buf.as_mut_ptr(), buf.len(), &mut result);
    if rc != 0 || result.is_null() {
        return None;
    }
    // SAFETY: getpw*_r succeeded, so pw_dir points into `buf` (or is null).
    let home = if pwd.pw_dir.is_null() {
        "/".to_string()
    } else {
        unsafe { CStr::from_ptr(pwd.pw_dir) }
            .to_string_lossy()
            .into_owned()
    };
    Some((pwd.pw_uid, pwd.pw_gid, home))
}

fn lookup_user(name: &str) -> Option<(u32, u32, String)> {
    let name = CString::new(name).ok()?;
    // SAFETY: every pointer is valid for the call; buf outlives it.
    passwd_entry(|pwd, buf, len, result| unsafe {
        libc::getpwnam_r(name.as_ptr(), pwd, buf, len, result)
    })
}

fn lookup_uid(uid: u32) -> Option<(u32, u32, String)> {
    // SAFETY: every pointer is valid for the call; buf outlives it.
    passwd_entry(|pwd, buf, len, result| unsafe { libc::getpwuid_r(uid, pwd, buf, len, result) })
}

fn lookup_uid_gid(uid: u32) -> Option<u32> {
    lookup_uid(uid).map(|(_, gid, _)| gid)
}

fn lookup_uid_home(uid: u32) -> Option<String> {
    lookup_uid(uid).map(|(_, _, home)| home)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_non_root_ids() {
        let m = IdMapping {
            default_uid: 101,
            default_gid: 104,
            uids: BTreeMap::new(),
            gids: BTreeMap::new(),
        };
        assert_eq!(m.map_uid(0), 0);
        assert_eq!(m.map_uid(999), 101);
        assert_eq!(m.map_gid(998), 104);
        let root = m.credentials(None, None, None, &[]);
        assert_eq!((root.uid, root.gid, root.groups), (0, 0, vec![0]));
        let pg = m.credentials(Some(999), Some(999), Some(999), &[]);
        assert_eq!((pg.uid, pg.gid, pg.groups), (101, 104, vec![104]));
        let root_user = lookup_user("root").unwrap();
        assert_eq!(root_user.0, 0);
    }
}

//! The start gate and the fence with real processes: a stand-in postmaster
//! and a stand-in backend working in the data directory.

use std::sync::Arc;
use std::time::Duration;

use super::super::{GateError, LeaseHandle, LeaseState};
use super::*;
use crate::contract::settings::FencingSettings;
use crate::instance::supervisor::{Mode, PostgresChild};

/// A stand-in postmaster: `postgres -D <dir>` that works in `<dir>`
/// and sleeps, killed by the guard if a test fails.
struct FakePostgres {
    bin: tempfile::TempDir,
    data: tempfile::TempDir,
    pids: Vec<u32>,
}

impl FakePostgres {
    fn new() -> Self {
        use std::os::unix::fs::PermissionsExt;
        let bin = tempfile::tempdir().unwrap();
        let script = bin.path().join("postgres");
        std::fs::write(
            &script,
            "#!/bin/sh\nulimit -c 0\ncd \"$2\" || exit 1\nexec sleep 1000\n",
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        Self {
            bin,
            data: tempfile::tempdir().unwrap(),
            pids: vec![],
        }
    }

    fn spawn(&mut self) -> Result<PostgresChild, crate::instance::supervisor::SupervisorError> {
        // A freshly written script may be "text file busy" while another
        // test thread forks: retry briefly.
        let mut attempt = 0;
        loop {
            match PostgresChild::spawn(self.bin.path(), self.data.path(), &[]) {
                Ok(child) => {
                    self.pids.push(child.signaller().pid());
                    return Ok(child);
                }
                Err(e) if attempt < 20 => {
                    attempt += 1;
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// A process working in the data directory that nobody registered,
    /// like a backend.
    fn backend(&mut self) -> std::process::Child {
        let child = std::process::Command::new("sleep")
            .arg("1000")
            .current_dir(self.data.path())
            .spawn()
            .unwrap();
        self.pids.push(child.id());
        child
    }
}

impl Drop for FakePostgres {
    fn drop(&mut self) {
        for pid in &self.pids {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(*pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

#[tokio::test]
async fn a_writable_start_needs_the_lease() {
    let mut fake = FakePostgres::new();
    let store = Memory::default();
    let dir = fake.data.path().to_path_buf();
    let handle = LeaseHandle::spawn(
        store.seen_by("db-1"),
        "db-1",
        Arc::new(LeaseState::new(dir)),
    );
    handle.configure(Some(fencing()));
    let mut spawned = false;
    let refused = handle.state.start_postgres(true, || {
        spawned = true;
        fake.spawn()
    });
    assert!(matches!(refused, Err(GateError::NotHeld)));
    assert!(!spawned, "nothing is started without the lease");
    // A replica needs no lease.
    let replica = handle.state.start_postgres(false, || fake.spawn()).unwrap();
    replica.signal(Mode::Kill);
    handle.acquire().await.unwrap();
    let mut primary = handle.state.start_postgres(true, || fake.spawn()).unwrap();
    primary.signal(Mode::Kill);
    primary.wait_exit(Duration::from_secs(10)).await.unwrap();
    handle.fence("test".into()).await;
    for _ in 0..100 {
        if handle.state.fenced() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut spawned = false;
    let refused = handle.state.start_postgres(true, || {
        spawned = true;
        fake.spawn()
    });
    assert!(matches!(refused, Err(GateError::NotHeld)), "fenced");
    assert!(!spawned);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_signals_the_postmaster_and_every_process_in_pgdata() {
    use crate::instance::lease::FileLease;
    let leases = tempfile::tempdir().unwrap();
    let mut fake = FakePostgres::new();
    let dir = fake.data.path().to_path_buf();
    let store = FileLease::new(leases.path().into(), "db-1");
    let handle = LeaseHandle::spawn(store, "db-1", Arc::new(LeaseState::new(dir)));
    handle.configure(Some(FencingSettings {
        lease_duration_ms: 1000,
        renew_interval_ms: 100,
        fence_after_ms: 500,
        ..fencing()
    }));
    handle.acquire().await.unwrap();
    let mut postmaster = handle.state.start_postgres(true, || fake.spawn()).unwrap();
    let mut backend = fake.backend();
    // Renewals through the file keep it held.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(handle.state.may_write() && !handle.state.fenced());
    assert!(postmaster.exited().is_none());

    std::fs::write(FileLease::sentinel(leases.path(), "db-1"), "").unwrap();
    let status = postmaster.wait_exit(Duration::from_secs(20)).await;
    assert_eq!(status.as_deref(), Some("killed by SIGQUIT"));
    let report = handle.state.report().unwrap();
    assert!(report.fenced && !report.held, "{report:?}");
    let mut backend_status = None;
    for _ in 0..200 {
        backend_status = backend.try_wait().unwrap();
        if backend_status.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        backend_status.and_then(|s| s.signal()),
        Some(nix::sys::signal::Signal::SIGQUIT as i32),
        "a process in PGDATA is signalled too"
    );
    // Healed, it stays fenced until the manager acquires again.
    std::fs::remove_file(FileLease::sentinel(leases.path(), "db-1")).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(handle.state.fenced());
    handle.acquire().await.unwrap();
    assert!(handle.state.may_write() && !handle.state.fenced());
}

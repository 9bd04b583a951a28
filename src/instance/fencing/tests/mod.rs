//! Tests of the keeper and the start gate, against an in-memory lease store
//! with switches for partitions.

mod gate;
mod keeper;

use std::collections::HashMap;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::LeaseSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;

use super::{LeaseHandle, LeaseState};
use crate::contract::settings::FencingSettings;
use crate::instance::lease::{LeaseStore, StoreError, Stored};

/// An in-memory store with switches for partitions (fail or hang), for
/// everyone or for one instance's view of it.
#[derive(Clone, Default)]
pub(super) struct Memory {
    inner: Arc<StdMutex<MemoryInner>>,
    who: String,
}

#[derive(Default)]
pub(super) struct MemoryInner {
    leases: HashMap<String, Stored>,
    counter: u64,
    pub(super) fail: bool,
    pub(super) hang: bool,
    pub(super) partitioned: std::collections::HashSet<String>,
    writes: u32,
}

impl Memory {
    /// The same store as instance `who` reaches it.
    pub(super) fn seen_by(&self, who: &str) -> Memory {
        Memory {
            inner: self.inner.clone(),
            who: who.into(),
        }
    }
    pub(super) fn set(&self, f: impl FnOnce(&mut MemoryInner)) {
        f(&mut self.inner.lock().unwrap());
    }
    pub(super) fn get(&self, name: &str) -> Option<Stored> {
        self.inner.lock().unwrap().leases.get(name).cloned()
    }
    pub(super) fn writes(&self) -> u32 {
        self.inner.lock().unwrap().writes
    }
    /// Another instance writes the lease.
    pub(super) fn put(&self, name: &str, spec: LeaseSpec) {
        let mut inner = self.inner.lock().unwrap();
        inner.counter += 1;
        let version = inner.counter.to_string();
        inner.leases.insert(
            name.into(),
            Stored {
                version,
                spec,
                metadata: Default::default(),
            },
        );
    }
    async fn gate(&self) -> Result<(), StoreError> {
        let (fail, hang) = {
            let inner = self.inner.lock().unwrap();
            (
                inner.fail || inner.partitioned.contains(&self.who),
                inner.hang,
            )
        };
        if hang {
            std::future::pending::<()>().await;
        }
        if fail {
            return Err(StoreError::Unavailable("partitioned".into()));
        }
        Ok(())
    }
}

impl LeaseStore for Memory {
    async fn read(&self, name: &str) -> Result<Option<Stored>, StoreError> {
        self.gate().await?;
        Ok(self.get(name))
    }
    async fn create(&self, name: &str, spec: &LeaseSpec) -> Result<Stored, StoreError> {
        self.gate().await?;
        if self.get(name).is_some() {
            return Err(StoreError::Conflict(name.into()));
        }
        self.put(name, spec.clone());
        self.set(|i| i.writes += 1);
        Ok(self.get(name).unwrap())
    }
    async fn replace(
        &self,
        name: &str,
        previous: &Stored,
        spec: &LeaseSpec,
    ) -> Result<Stored, StoreError> {
        self.gate().await?;
        match self.get(name) {
            Some(s) if s.version == previous.version => {}
            _ => return Err(StoreError::Conflict(name.into())),
        }
        self.put(name, spec.clone());
        self.set(|i| i.writes += 1);
        Ok(self.get(name).unwrap())
    }
}

pub(super) fn fencing() -> FencingSettings {
    FencingSettings {
        lease_name: "db-primary".into(),
        lease_duration_ms: 4000,
        renew_interval_ms: 1000,
        fence_after_ms: 2000,
    }
}

pub(super) fn keeper_with(store: &Memory, me: &str, settings: FencingSettings) -> LeaseHandle {
    let dir = std::env::temp_dir().join("capstan-fencing-unit-no-such-dir");
    let handle = LeaseHandle::spawn(store.seen_by(me), me, Arc::new(LeaseState::new(dir)));
    handle.configure(Some(settings));
    handle
}

pub(super) fn keeper(store: &Memory, me: &str) -> LeaseHandle {
    let dir = std::env::temp_dir().join("capstan-fencing-unit-no-such-dir");
    let handle = LeaseHandle::spawn(store.seen_by(me), me, Arc::new(LeaseState::new(dir)));
    handle.configure(Some(fencing()));
    handle
}

pub(super) async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

pub(super) fn other_holds(store: &Memory, holder: &str, renewed_ago: Duration) {
    let renewed = jiff::Timestamp::now() - jiff::SignedDuration::try_from(renewed_ago).unwrap();
    store.put(
        "db-primary",
        LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(4),
            renew_time: Some(MicroTime(renewed)),
            lease_transitions: Some(3),
            ..LeaseSpec::default()
        },
    );
}

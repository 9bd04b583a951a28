//! The keeper against the in-memory store: acquisition, renewal, takeover,
//! release and the fence bound, on tokio's paused clock.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::LeaseSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use std::sync::Arc;
use tokio::time::Instant;

use super::super::{FenceError, LeaseHandle, LeaseState};
use super::*;
use crate::contract::settings::FencingSettings;

#[tokio::test(start_paused = true)]
async fn acquires_renews_and_reports() {
    let store = Memory::default();
    let handle = keeper(&store, "db-1");
    settle().await;
    assert!(!handle.state.may_write());
    handle.acquire().await.unwrap();
    let lease = store.get("db-primary").unwrap();
    assert_eq!(lease.spec.holder_identity.as_deref(), Some("db-1"));
    assert_eq!(lease.spec.lease_duration_seconds, Some(4));
    assert_eq!(lease.spec.lease_transitions, Some(0));
    assert!(lease.spec.acquire_time.is_some());
    let first_renewal = lease.spec.renew_time.clone();
    assert!(handle.state.may_write());
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert!(store.writes() >= 4, "renewed every second");
    let lease = store.get("db-primary").unwrap();
    assert_ne!(lease.spec.renew_time, first_renewal);
    assert_eq!(lease.spec.lease_transitions, Some(0));
    let report = handle.state.report().unwrap();
    assert!(report.held && !report.fenced);
    assert_eq!(report.holder.as_deref(), Some("db-1"));
    assert!(report.renewed_ms_ago.unwrap() < 1000);
}

#[tokio::test(start_paused = true)]
async fn a_partition_fences_at_the_bound_measured_from_the_last_renewal_start() {
    let store = Memory::default();
    let handle = keeper(&store, "db-1");
    handle.acquire().await.unwrap();
    let acquired = Instant::now();
    store.set(|i| i.fail = true);
    tokio::time::sleep(Duration::from_millis(1990)).await;
    assert!(!handle.state.fenced(), "not before the bound");
    tokio::time::sleep(Duration::from_millis(20)).await;
    settle().await;
    assert!(handle.state.fenced());
    assert!(!handle.state.may_write());
    let report = handle.state.report().unwrap();
    assert!(!report.held && report.fenced);
    assert!(acquired.elapsed() <= Duration::from_millis(2010));
    // Healing alone does not unfence: the manager re-acquires.
    store.set(|i| i.fail = false);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(handle.state.fenced());
    handle.acquire().await.unwrap();
    assert!(!handle.state.fenced() && handle.state.may_write());
    assert_eq!(
        store.get("db-primary").unwrap().spec.lease_transitions,
        Some(0),
        "its own lease again: no transition"
    );
}

#[tokio::test(start_paused = true)]
async fn a_hanging_renewal_does_not_delay_the_fence() {
    let store = Memory::default();
    let handle = keeper(&store, "db-1");
    handle.acquire().await.unwrap();
    store.set(|i| i.hang = true);
    tokio::time::sleep(Duration::from_millis(2001)).await;
    settle().await;
    assert!(handle.state.fenced());
}

#[tokio::test(start_paused = true)]
async fn a_takeover_seen_at_renewal_fences_at_once() {
    let store = Memory::default();
    let handle = keeper(&store, "db-1");
    handle.acquire().await.unwrap();
    other_holds(&store, "db-2", Duration::ZERO);
    tokio::time::sleep(Duration::from_millis(1001)).await;
    settle().await;
    assert!(handle.state.fenced());
    assert_eq!(
        handle.state.report().unwrap().holder.as_deref(),
        Some("db-2")
    );
    // And it does not take the lease back while db-2 renews.
    let store2 = store.clone();
    let renewer = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            other_holds(&store2, "db-2", Duration::ZERO);
        }
    });
    let err = handle.acquire().await.unwrap_err();
    renewer.abort();
    assert!(
        matches!(err, FenceError::HeldBy { ref holder, .. } if holder == "db-2"),
        "{err}"
    );
}

#[tokio::test(start_paused = true)]
async fn an_expired_lease_is_taken_over_with_a_transition() {
    let store = Memory::default();
    other_holds(&store, "db-1", Duration::from_secs(5));
    let handle = keeper(&store, "db-2");
    let started = Instant::now();
    handle.acquire().await.unwrap();
    assert_eq!(started.elapsed(), Duration::ZERO, "no second wait");
    let lease = store.get("db-primary").unwrap();
    assert_eq!(lease.spec.holder_identity.as_deref(), Some("db-2"));
    assert_eq!(lease.spec.lease_transitions, Some(4));
}

#[tokio::test(start_paused = true)]
async fn a_silent_holder_is_taken_over_after_the_lease_duration_as_observed() {
    let store = Memory::default();
    // renewTime in the future (a clock ahead of ours): only observation helps.
    let ahead = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(60);
    store.put(
        "db-primary",
        LeaseSpec {
            holder_identity: Some("db-1".into()),
            lease_duration_seconds: Some(4),
            renew_time: Some(MicroTime(ahead)),
            ..LeaseSpec::default()
        },
    );
    let handle = keeper(&store, "db-2");
    settle().await;
    let started = Instant::now();
    handle.acquire().await.unwrap();
    assert!(started.elapsed() >= Duration::from_secs(4));
    assert_eq!(
        store
            .get("db-primary")
            .unwrap()
            .spec
            .holder_identity
            .as_deref(),
        Some("db-2")
    );
}

#[tokio::test(start_paused = true)]
async fn release_clears_only_its_own_holder() {
    let store = Memory::default();
    let handle = keeper(&store, "db-1");
    handle.acquire().await.unwrap();
    handle.release().await;
    let lease = store.get("db-primary").unwrap();
    assert_eq!(lease.spec.holder_identity, None);
    assert!(!handle.state.holding());
    // Nothing renews after a release, and nothing fences.
    let writes = store.writes();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(store.writes(), writes);
    assert!(!handle.state.fenced());
    // Someone else's lease is left alone.
    other_holds(&store, "db-2", Duration::ZERO);
    handle.release().await;
    assert_eq!(
        store
            .get("db-primary")
            .unwrap()
            .spec
            .holder_identity
            .as_deref(),
        Some("db-2")
    );
    // A free lease is taken without waiting, counted as a transition.
    let handle2 = keeper(&store, "db-3");
    let mut free = store.get("db-primary").unwrap().spec;
    free.holder_identity = None;
    store.put("db-primary", free);
    handle2.acquire().await.unwrap();
    assert_eq!(
        store.get("db-primary").unwrap().spec.lease_transitions,
        Some(4)
    );
}

#[tokio::test(start_paused = true)]
async fn without_fencing_settings_writes_are_allowed_and_nothing_is_written() {
    let store = Memory::default();
    let dir = std::env::temp_dir().join("capstan-fencing-unit-no-such-dir");
    let handle = LeaseHandle::spawn(store.clone(), "db-1", Arc::new(LeaseState::new(dir)));
    handle.acquire().await.unwrap();
    assert!(handle.state.may_write());
    assert!(handle.state.report().is_none());
    assert_eq!(store.writes(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_thawed_keeper_fences_before_it_renews() {
    let store = Memory::default();
    let handle = keeper(&store, "db-1");
    handle.acquire().await.unwrap();
    let writes = store.writes();
    // A stopped process: time passes, the runtime does not run. Advance
    // the clock without yielding to the keeper, as a thaw looks to it.
    tokio::time::advance(Duration::from_secs(10)).await;
    settle().await;
    assert!(handle.state.fenced());
    assert_eq!(store.writes(), writes, "no renewal after the bound");
}

#[tokio::test(start_paused = true)]
async fn a_renewing_holder_is_never_overwritten() {
    let store = Memory::default();
    let holder = keeper(&store, "db-1");
    holder.acquire().await.unwrap();
    let other = keeper(&store, "db-2");
    let started = Instant::now();
    let err = other.acquire().await.unwrap_err();
    assert!(
        matches!(err, FenceError::HeldBy { ref holder, .. } if holder == "db-1"),
        "{err}"
    );
    // It looked for the whole lease duration before giving up.
    assert!(started.elapsed() >= Duration::from_millis(4000));
    let lease = store.get("db-primary").unwrap();
    assert_eq!(lease.spec.holder_identity.as_deref(), Some("db-1"));
    assert_eq!(lease.spec.lease_transitions, Some(0));
    assert!(holder.state.may_write() && !holder.state.fenced());
    assert!(!other.state.holding() && !other.state.may_write());
}

#[tokio::test(start_paused = true)]
async fn a_partitioned_holder_fences_and_is_taken_over_at_once_after_the_lease_duration() {
    let short = FencingSettings {
        lease_duration_ms: 1000,
        renew_interval_ms: 250,
        fence_after_ms: 500,
        ..fencing()
    };
    let store = Memory::default();
    let old = keeper_with(&store, "db-1", short.clone());
    let new = keeper_with(&store, "db-2", short.clone());
    old.acquire().await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(old.state.may_write(), "renewals keep it held");
    store.set(|i| {
        i.partitioned.insert("db-1".into());
    });
    let cut = Instant::now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    settle().await;
    assert!(old.state.fenced() && !old.state.may_write());
    assert!(cut.elapsed() <= Duration::from_millis(500));
    // The operator waits the lease duration out on its clock; the
    // renewal time in the lease is wall-clock time, which paused tokio
    // time does not move, so let the real clock pass it.
    std::thread::sleep(Duration::from_millis(1050));
    let started = Instant::now();
    new.acquire().await.unwrap();
    assert_eq!(started.elapsed(), Duration::ZERO, "no second wait");
    let lease = store.get("db-primary").unwrap();
    assert_eq!(lease.spec.holder_identity.as_deref(), Some("db-2"));
    assert_eq!(lease.spec.lease_transitions, Some(1));
    // Healed, the old holder cannot take it back while db-2 renews.
    store.set(|i| {
        i.partitioned.clear();
    });
    let err = old.acquire().await.unwrap_err();
    assert!(matches!(err, FenceError::HeldBy { .. }), "{err}");
    assert!(old.state.fenced() && !old.state.may_write());
    assert!(new.state.may_write());
}

//! Watches every cluster's primary Lease and measures, on the operator's own
//! monotonic clock, how long it has gone without a renewal.
//!
//! The clock is the operator's, never the timestamps written in the Lease:
//! a renewal is "seen" when its watch event arrives, which is after the
//! primary sent it. So `silent_for >= leaseDuration` implies the primary's
//! last successful renewal started at least `leaseDuration` ago, and a
//! primary that fences itself `fenceAfter < leaseDuration` after its last
//! successful renewal has stopped writing by then (see
//! `resources::config::fencing`). After an operator restart every Lease
//! counts as freshly renewed: a failover can only come later, never earlier.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use tokio::sync::mpsc;

use crate::api::PostgresCluster;
use crate::resources::labels;

/// How often expiring leases are looked for: the delay a failover can add
/// to the lease duration (a scan of an in-memory map).
pub const TICK: Duration = Duration::from_millis(20);

/// A primary Lease as the operator sees it now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaseView {
    pub holder: Option<String>,
    /// Since the operator last saw the holder or renewTime change.
    pub silent_for: Duration,
    /// `leaseDurationSeconds`.
    pub duration: Duration,
    /// [`crate::resources::lease::metadata_version`] of the Lease as last seen.
    pub metadata_version: String,
}

impl LeaseView {
    pub fn expired(&self) -> bool {
        self.silent_for >= self.duration
    }

    /// How long until a held Lease expires; `None` when nobody holds it or
    /// it has expired.
    pub fn until_expiry(&self) -> Option<Duration> {
        if self.holder.is_none() || self.expired() {
            return None;
        }
        Some(self.duration - self.silent_for)
    }
}

#[derive(Debug)]
struct Tracked {
    holder: Option<String>,
    renew: Option<String>,
    changed_at: Instant,
    duration: Duration,
    metadata_version: String,
    /// A reconcile was requested ahead of the expiry (see `newly_expiring`).
    warned: bool,
    /// A reconcile was requested at the expiry.
    triggered: bool,
}

/// Keyed by (namespace, cluster).
#[derive(Default, Debug)]
pub struct LeaseMonitor {
    state: Mutex<HashMap<(String, String), Tracked>>,
}

fn key(lease: &Lease) -> Option<(String, String)> {
    let ns = lease.metadata.namespace.clone()?;
    let cluster = lease
        .metadata
        .labels
        .as_ref()?
        .get(labels::CLUSTER)?
        .clone();
    Some((ns, cluster))
}

impl LeaseMonitor {
    fn state(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Tracked>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn view(&self, namespace: &str, cluster: &str) -> Option<LeaseView> {
        let state = self.state();
        let t = state.get(&(namespace.to_string(), cluster.to_string()))?;
        Some(LeaseView {
            holder: t.holder.clone(),
            silent_for: t.changed_at.elapsed(),
            duration: t.duration,
            metadata_version: t.metadata_version.clone(),
        })
    }

    /// Records a Lease as read from a watch event, at `now`.
    pub fn observe(&self, lease: &Lease, now: Instant) {
        let Some(key) = key(lease) else { return };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.filter(|h| !h.is_empty());
        let renew = spec.renew_time.map(|t| t.0.to_string());
        let duration = Duration::from_secs(
            u64::try_from(spec.lease_duration_seconds.unwrap_or(0)).unwrap_or(0),
        );
        let metadata_version = crate::resources::lease::metadata_version(&lease.metadata);
        let mut state = self.state();
        match state.get_mut(&key) {
            Some(t) if t.holder == holder && t.renew == renew => {
                t.duration = duration;
                t.metadata_version = metadata_version;
            }
            _ => {
                state.insert(
                    key,
                    Tracked {
                        holder,
                        renew,
                        changed_at: now,
                        duration,
                        metadata_version,
                        warned: false,
                        triggered: false,
                    },
                );
            }
        }
    }

    /// Starts every silence again at `now`.
    pub fn restart_all(&self, now: Instant) {
        for t in self.state().values_mut() {
            t.changed_at = now;
            t.triggered = false;
        }
    }

    pub fn forget(&self, lease: &Lease) {
        if let Some(key) = key(lease) {
            self.state().remove(&key);
        }
    }

    /// Clusters whose held Lease has just come within `lead` of its whole
    /// duration of silence, and those whose Lease has been silent for `lead`
    /// past it; each silence is reported once for each. The early report
    /// lets a reconcile be on its way when the Lease expires (the controller
    /// holds every request back by its debounce, and the reconcile first
    /// asks the silent holder, for at most a bound: `lead` covers both, so
    /// the Lease is read just as it expires). The decision
    /// itself always looks at the Lease again, so an early reconcile that
    /// finds it unexpired does nothing; the second report is the backstop,
    /// late enough not to restart the debounce of the first.
    pub fn newly_expiring(&self, now: Instant, lead: Duration) -> Vec<(String, String)> {
        let mut out = vec![];
        for (key, t) in self.state().iter_mut() {
            if t.holder.is_none() || t.duration.is_zero() {
                continue;
            }
            let silent = now.saturating_duration_since(t.changed_at);
            let early = silent + lead >= t.duration && !t.warned;
            let expired = silent >= t.duration + lead && !t.triggered;
            t.warned |= early;
            t.triggered |= expired;
            if early || expired {
                out.push(key.clone());
            }
        }
        out
    }

    /// The holder of the cluster's Lease when it has been silent for at
    /// least half its duration, the point past which a primary that cannot
    /// renew has fenced itself.
    pub fn silent_holder(&self, namespace: &str, cluster: &str) -> Option<String> {
        let view = self.view(namespace, cluster)?;
        (view.silent_for * 2 >= view.duration)
            .then_some(view.holder)
            .flatten()
    }
}

/// Feeds `monitor` from a watch of Capstan's Leases and sends a reconcile
/// request for every cluster whose primary Lease expires.
/// `lead`: how long before an expiry to request a reconcile as well (the
/// controller's debounce plus the time a reconcile spends before it reads
/// the Lease).
pub fn spawn(
    client: Client,
    namespace: Option<String>,
    monitor: Arc<LeaseMonitor>,
    trigger: mpsc::Sender<ObjectRef<PostgresCluster>>,
    lead: Duration,
) -> tokio::task::JoinHandle<()> {
    let api: Api<Lease> = match &namespace {
        Some(ns) => Api::namespaced(client, ns),
        None => Api::all(client),
    };
    let config =
        watcher::Config::default().labels(&format!("{}={}", labels::MANAGED_BY, labels::MANAGER));
    let watching = monitor.clone();
    let watch = tokio::spawn(async move {
        let mut events = watcher(api, config).default_backoff().boxed();
        while let Some(event) = events.next().await {
            match event {
                Ok(watcher::Event::Apply(l) | watcher::Event::InitApply(l)) => {
                    watching.observe(&l, Instant::now())
                }
                Ok(watcher::Event::Delete(l)) => watching.forget(&l),
                Ok(_) => {}
                Err(e) => {
                    // Renewals may have been missed: no Lease counts as
                    // silent from before the gap (a failover can only come
                    // later, never earlier).
                    tracing::warn!(error = %e, "watching primary Leases");
                    watching.restart_all(Instant::now());
                }
            }
        }
    });
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(TICK);
        loop {
            tick.tick().await;
            for (ns, cluster) in monitor.newly_expiring(Instant::now(), lead) {
                tracing::warn!(namespace = %ns, cluster = %cluster, "primary Lease expiring");
                if trigger
                    .send(ObjectRef::new(&cluster).within(&ns))
                    .await
                    .is_err()
                {
                    watch.abort();
                    return;
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::coordination::v1::LeaseSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};

    use super::*;

    fn lease(holder: Option<&str>, renew_secs: i64) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some("db-primary".into()),
                namespace: Some("ns".into()),
                labels: Some([(labels::CLUSTER.to_string(), "db".to_string())].into()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: holder.map(str::to_string),
                lease_duration_seconds: Some(4),
                renew_time: Some(MicroTime(jiff::Timestamp::from_second(renew_secs).unwrap())),
                ..LeaseSpec::default()
            }),
        }
    }

    fn expiring(m: &LeaseMonitor, at: Duration, t0: Instant) -> usize {
        m.newly_expiring(t0 + at, Duration::from_millis(200)).len()
    }

    #[test]
    fn silence_is_measured_from_the_last_change_the_operator_saw() {
        let m = LeaseMonitor::default();
        let t0 = Instant::now();
        m.observe(&lease(Some("db-1"), 100), t0);
        // The same renewal seen again (a resync) is not a renewal.
        m.observe(&lease(Some("db-1"), 100), t0 + Duration::from_secs(2));
        assert_eq!(expiring(&m, Duration::from_millis(3700), t0), 0);
        // Once 200 ms ahead of the expiry, once 200 ms past it, then never
        // again.
        assert_eq!(
            m.newly_expiring(t0 + Duration::from_millis(3800), Duration::from_millis(200)),
            vec![("ns".into(), "db".into())]
        );
        assert_eq!(expiring(&m, Duration::from_millis(4100), t0), 0);
        assert_eq!(expiring(&m, Duration::from_millis(4200), t0), 1);
        assert_eq!(expiring(&m, Duration::from_secs(5), t0), 0, "reported once");
        // A renewal starts a new silence.
        m.observe(&lease(Some("db-1"), 101), t0 + Duration::from_secs(6));
        assert_eq!(expiring(&m, Duration::from_millis(9700), t0), 0);
        assert_eq!(expiring(&m, Duration::from_millis(9800), t0), 1);
        assert_eq!(expiring(&m, Duration::from_millis(10_200), t0), 1);
    }

    #[test]
    fn a_late_look_reports_a_silence_once() {
        let m = LeaseMonitor::default();
        let t0 = Instant::now();
        m.observe(&lease(Some("db-1"), 100), t0);
        assert_eq!(expiring(&m, Duration::from_secs(30), t0), 1);
        assert_eq!(expiring(&m, Duration::from_secs(31), t0), 0);
    }

    #[test]
    fn the_holder_counts_as_silent_from_the_fence_point() {
        let m = LeaseMonitor::default();
        let t0 = Instant::now();
        assert_eq!(m.silent_holder("ns", "db"), None);
        // Observed 1.9 s "ago": not yet half of the 4 s duration.
        m.observe(&lease(Some("db-1"), 100), t0 - Duration::from_millis(1900));
        assert_eq!(m.silent_holder("ns", "db"), None);
        m.observe(&lease(Some("db-1"), 101), t0 - Duration::from_millis(2100));
        assert_eq!(m.silent_holder("ns", "db").as_deref(), Some("db-1"));
        m.observe(&lease(None, 102), t0 - Duration::from_secs(3));
        assert_eq!(m.silent_holder("ns", "db"), None);
    }

    #[test]
    fn only_a_held_unexpired_lease_has_time_left() {
        let view = |holder: Option<&str>, silent_ms: u64| LeaseView {
            holder: holder.map(Into::into),
            silent_for: Duration::from_millis(silent_ms),
            duration: Duration::from_secs(4),
            metadata_version: String::new(),
        };
        assert_eq!(
            view(Some("db-1"), 3_700).until_expiry(),
            Some(Duration::from_millis(300))
        );
        assert_eq!(view(Some("db-1"), 4_000).until_expiry(), None, "expired");
        assert_eq!(view(None, 100).until_expiry(), None, "released");
    }

    #[test]
    fn a_released_lease_never_expires_into_a_failover() {
        let m = LeaseMonitor::default();
        let t0 = Instant::now();
        m.observe(&lease(None, 100), t0);
        assert_eq!(expiring(&m, Duration::from_secs(60), t0), 0);
        let view = m.view("ns", "db").unwrap();
        assert_eq!(view.holder, None);
        assert_eq!(view.duration, Duration::from_secs(4));
    }

    #[test]
    fn a_watch_gap_starts_every_silence_again() {
        let m = LeaseMonitor::default();
        let t0 = Instant::now();
        m.observe(&lease(Some("db-1"), 100), t0);
        m.restart_all(t0 + Duration::from_secs(3));
        assert_eq!(expiring(&m, Duration::from_millis(6700), t0), 0);
        assert_eq!(expiring(&m, Duration::from_millis(6800), t0), 1);
    }

    #[test]
    fn a_new_holder_is_a_change() {
        let m = LeaseMonitor::default();
        let t0 = Instant::now();
        m.observe(&lease(Some("db-1"), 100), t0);
        m.observe(&lease(Some("db-2"), 100), t0 + Duration::from_secs(3));
        assert_eq!(expiring(&m, Duration::from_secs(5), t0), 0);
        assert_eq!(m.view("ns", "db").unwrap().holder.as_deref(), Some("db-2"));
    }
}

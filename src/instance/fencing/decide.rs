//! The keeper's rules as pure functions of what it read and what time it
//! is: when another holder's lease may be taken, what a holder writes, when
//! the fence bound runs out. The keeper ([`super::keeper`]) only reads,
//! writes and waits around them.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::LeaseSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use tokio::time::Instant;

use crate::contract::settings::FencingSettings;

use super::super::lease::Stored;

pub(super) fn ms(d: u64) -> Duration {
    Duration::from_millis(d)
}

/// Why a lease could be taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Takeover {
    Free,
    Own,
    Expired,
    Unchanged,
}

impl Takeover {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Self::Free => "free",
            Self::Own => "own",
            Self::Expired => "expired",
            Self::Unchanged => "unchanged-for-lease-duration",
        }
    }
}

/// A version of the lease and when this keeper first saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Seen {
    pub(super) version: String,
    pub(super) since: Instant,
}

/// The moment a holder whose last successful write started at
/// `valid_from` must have fenced.
pub(super) fn fence_deadline(valid_from: Instant, fencing: &FencingSettings) -> Instant {
    valid_from + ms(fencing.fence_after_ms)
}

/// How long an acquisition keeps looking at a lease held by someone else:
/// long enough to see a holder that renews, or one that stopped (no change
/// for the whole lease duration).
pub(super) fn give_up_after(fencing: &FencingSettings) -> Duration {
    ms(fencing.lease_duration_ms + fencing.renew_interval_ms)
}

/// When to retry a renewal that failed without timing out: soon, so a
/// short hiccup costs little of the fence bound.
pub(super) fn retry_after(fencing: &FencingSettings) -> Duration {
    ms(fencing.renew_interval_ms / 4).max(ms(50))
}

/// Whether new fencing settings name another lease (or turn fencing on or
/// off): the lease held so far is then no longer renewed.
pub(super) fn renamed(old: Option<&FencingSettings>, new: Option<&FencingSettings>) -> bool {
    match (old, new) {
        (Some(old), Some(new)) => old.lease_name != new.lease_name,
        _ => true,
    }
}

/// The spec `me` writes to hold the lease, stamped `now`: the acquire time
/// and the transition count change only when the holder does.
pub(super) fn holding_spec(
    me: &str,
    fencing: &FencingSettings,
    previous: Option<&LeaseSpec>,
    now: MicroTime,
) -> LeaseSpec {
    let previous_holder = previous.and_then(|p| p.holder_identity.as_deref());
    let same_holder = previous_holder == Some(me);
    let transitions = previous.and_then(|p| p.lease_transitions).unwrap_or(0);
    LeaseSpec {
        holder_identity: Some(me.to_string()),
        lease_duration_seconds: Some(fencing.lease_duration_ms.div_ceil(1000) as i32),
        acquire_time: if same_holder {
            previous.and_then(|p| p.acquire_time.clone())
        } else {
            Some(now.clone())
        },
        renew_time: Some(now),
        lease_transitions: Some(match previous {
            None => 0,
            Some(_) if same_holder => transitions,
            Some(_) => transitions + 1,
        }),
        ..previous.cloned().unwrap_or_default()
    }
}

/// The spec that gives the lease up: no holder, stamped `now`.
pub(super) fn released_spec(current: &LeaseSpec, now: MicroTime) -> LeaseSpec {
    LeaseSpec {
        holder_identity: None,
        renew_time: Some(now),
        ..current.clone()
    }
}

/// Why `me` may take the lease, if it may: free, already its own, expired
/// by its own `renewTime + leaseDurationSeconds` on this machine's clock
/// (`wall_now`), or not changed for `lease_duration` as observed here
/// (`seen`, on the monotonic clock `now`).
pub(super) fn takeable(
    me: &str,
    stored: &Stored,
    seen: Option<&Seen>,
    fencing: &FencingSettings,
    wall_now: jiff::Timestamp,
    now: Instant,
) -> Option<Takeover> {
    let spec = &stored.spec;
    let holder = spec.holder_identity.as_deref().unwrap_or("");
    if holder.is_empty() {
        return Some(Takeover::Free);
    }
    if holder == me {
        return Some(Takeover::Own);
    }
    let expired = match (&spec.renew_time, spec.lease_duration_seconds) {
        (Some(renewed), Some(seconds)) => renewed
            .0
            .checked_add(jiff::SignedDuration::from_secs(i64::from(seconds.max(0))))
            .is_ok_and(|until| until <= wall_now),
        // Without a renewal time only observation can tell.
        _ => false,
    };
    let unchanged = seen.is_some_and(|s| {
        s.version == stored.version
            && now.saturating_duration_since(s.since) >= ms(fencing.lease_duration_ms)
    });
    if expired {
        Some(Takeover::Expired)
    } else if unchanged {
        Some(Takeover::Unchanged)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fencing() -> FencingSettings {
        FencingSettings {
            lease_name: "db-primary".into(),
            lease_duration_ms: 4000,
            renew_interval_ms: 1000,
            fence_after_ms: 2000,
        }
    }

    fn at(seconds: i64) -> jiff::Timestamp {
        jiff::Timestamp::from_second(1_700_000_000 + seconds).unwrap()
    }

    fn stored(holder: Option<&str>, renewed: Option<i64>, version: &str) -> Stored {
        Stored {
            version: version.into(),
            spec: LeaseSpec {
                holder_identity: holder.map(str::to_string),
                lease_duration_seconds: Some(4),
                renew_time: renewed.map(|s| MicroTime(at(s))),
                ..LeaseSpec::default()
            },
            metadata: Default::default(),
        }
    }

    #[test]
    fn free_own_expired_or_unchanged_leases_may_be_taken() {
        let f = fencing();
        let now = Instant::now();
        let take = |s: &Stored, seen: Option<&Seen>, wall: i64, now: Instant| {
            takeable("db-2", s, seen, &f, at(wall), now)
        };
        assert_eq!(
            take(&stored(None, None, "1"), None, 0, now),
            Some(Takeover::Free)
        );
        assert_eq!(
            take(&stored(Some(""), Some(0), "1"), None, 0, now),
            Some(Takeover::Free)
        );
        assert_eq!(
            take(&stored(Some("db-2"), Some(0), "1"), None, 0, now),
            Some(Takeover::Own)
        );
        let held = stored(Some("db-1"), Some(0), "7");
        // Renewed 3 s ago with a 4 s lease: still held.
        assert_eq!(take(&held, None, 3, now), None);
        // Renewed exactly one lease duration ago: expired.
        assert_eq!(take(&held, None, 4, now), Some(Takeover::Expired));
        // A clock behind the holder's: only observation tells.
        let seen = Seen {
            version: "7".into(),
            since: now,
        };
        assert_eq!(take(&held, Some(&seen), -10, now + ms(3999)), None);
        assert_eq!(
            take(&held, Some(&seen), -10, now + ms(4000)),
            Some(Takeover::Unchanged)
        );
        // Another version seen: the holder renewed; the wait starts over.
        let other = Seen {
            version: "6".into(),
            since: now,
        };
        assert_eq!(take(&held, Some(&other), -10, now + ms(9000)), None);
        // No renewal time and nothing observed: never.
        assert_eq!(take(&stored(Some("db-1"), None, "7"), None, 100, now), None);
    }

    #[test]
    fn a_holder_change_is_a_transition_with_a_new_acquire_time() {
        let f = fencing();
        let created = holding_spec("db-1", &f, None, MicroTime(at(0)));
        assert_eq!(created.holder_identity.as_deref(), Some("db-1"));
        assert_eq!(created.lease_duration_seconds, Some(4));
        assert_eq!(created.lease_transitions, Some(0));
        assert_eq!(created.acquire_time, Some(MicroTime(at(0))));

        let renewed = holding_spec("db-1", &f, Some(&created), MicroTime(at(1)));
        assert_eq!(renewed.lease_transitions, Some(0));
        assert_eq!(renewed.acquire_time, Some(MicroTime(at(0))));
        assert_eq!(renewed.renew_time, Some(MicroTime(at(1))));

        let taken = holding_spec("db-2", &f, Some(&renewed), MicroTime(at(9)));
        assert_eq!(taken.holder_identity.as_deref(), Some("db-2"));
        assert_eq!(taken.lease_transitions, Some(1));
        assert_eq!(taken.acquire_time, Some(MicroTime(at(9))));

        let released = released_spec(&taken, MicroTime(at(10)));
        assert_eq!(released.holder_identity, None);
        assert_eq!(released.lease_transitions, Some(1));
        assert_eq!(released.renew_time, Some(MicroTime(at(10))));
    }

    #[test]
    fn a_lease_duration_in_milliseconds_rounds_up_to_seconds() {
        let f = FencingSettings {
            lease_duration_ms: 1500,
            ..fencing()
        };
        let spec = holding_spec("db-1", &f, None, MicroTime(at(0)));
        assert_eq!(spec.lease_duration_seconds, Some(2));
    }

    #[test]
    fn bounds_follow_the_settings() {
        let f = fencing();
        let now = Instant::now();
        assert_eq!(fence_deadline(now, &f), now + ms(2000));
        assert_eq!(give_up_after(&f), ms(5000));
        assert_eq!(retry_after(&f), ms(250));
        let fast = FencingSettings {
            renew_interval_ms: 100,
            ..fencing()
        };
        assert_eq!(retry_after(&fast), ms(50));
    }

    #[test]
    fn only_another_lease_name_drops_the_held_lease() {
        let f = fencing();
        let longer = FencingSettings {
            lease_duration_ms: 8000,
            ..fencing()
        };
        let other = FencingSettings {
            lease_name: "db-other".into(),
            ..fencing()
        };
        assert!(!renamed(Some(&f), Some(&longer)));
        assert!(renamed(Some(&f), Some(&other)));
        assert!(renamed(Some(&f), None));
        assert!(renamed(None, Some(&f)));
    }
}

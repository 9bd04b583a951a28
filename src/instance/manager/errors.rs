//! The errors still standing, one per source: each is logged once when it
//! appears (or changes) and once when it is resolved, and the report shows
//! the most recent one as `lastError`.

use std::collections::BTreeMap;
use std::time::Instant;

/// Sources of errors; each is cleared when its condition goes away.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Source {
    Settings,
    Binaries,
    Authority,
    Start,
    Crash,
    Config,
    Slots,
    Passwords,
    /// `spec.roles`/`spec.databases` could not be gone over at all.
    Roles,
    Replication,
    RoleChange,
    Lease,
    /// pgBackRest missing or pgbackrest.conf not writable.
    Backup,
}

#[derive(Default)]
pub(super) struct Errors(BTreeMap<Source, (Instant, String)>);

impl Errors {
    pub(super) fn set(&mut self, source: Source, message: impl Into<String>) {
        let message = message.into();
        let repeated = self.0.get(&source).is_some_and(|(_, m)| *m == message);
        if !repeated {
            tracing::error!(source = ?source, "{message}");
            self.0.insert(source, (Instant::now(), message));
        }
    }

    pub(super) fn clear(&mut self, source: Source) {
        if self.0.remove(&source).is_some() {
            tracing::info!(source = ?source, "resolved");
        }
    }

    /// The most recent error still standing.
    pub(super) fn latest(&self) -> Option<String> {
        self.0
            .values()
            .max_by_key(|(at, _)| *at)
            .map(|(_, m)| m.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_latest_standing_error_is_reported() {
        let mut errors = Errors::default();
        assert_eq!(errors.latest(), None);
        errors.set(Source::Slots, "slots");
        std::thread::sleep(std::time::Duration::from_millis(2));
        errors.set(Source::Config, "config");
        assert_eq!(errors.latest().as_deref(), Some("config"));
        // A repeat keeps its first time; it does not become the latest.
        errors.set(Source::Slots, "slots");
        assert_eq!(errors.latest().as_deref(), Some("config"));
        errors.clear(Source::Config);
        assert_eq!(errors.latest().as_deref(), Some("slots"));
        errors.clear(Source::Slots);
        assert_eq!(errors.latest(), None);
    }
}

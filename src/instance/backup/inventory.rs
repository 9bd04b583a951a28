//! What the repositories hold, for the primary's report: `pgbackrest info`
//! after each backup (pgBackRest has just expired old ones) and every few
//! minutes, never while a backup runs (its label would be missing from a
//! listing read between its end and pgBackRest recording it). The operator
//! deletes the objects of expired backups from this, and reports the first
//! recoverability point.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::backup::info::StanzaInfo;
use crate::contract::backup::{JobPhase, RepositoryInventory};

use super::{Backups, INFO_TIMEOUT, message, rfc3339};

/// Read again this often while nothing changes.
const REFRESH_EVERY: Duration = Duration::from_secs(300);
/// After a failed read.
const RETRY_AFTER: Duration = Duration::from_secs(60);

#[derive(Debug, Default, Clone)]
pub(super) struct InventoryState {
    /// Read at or after this; None: at the next chance.
    next_at: Option<Instant>,
    running: bool,
    /// Moves when the repositories may hold something else (a backup
    /// finished, the configuration changed): a read started before is
    /// dropped.
    generation: u64,
    pub(super) repositories: Vec<RepositoryInventory>,
    pub(super) error: Option<String>,
}

impl InventoryState {
    fn due(&self, now: Instant) -> bool {
        !self.running && self.next_at.is_none_or(|t| now >= t)
    }

    /// A backup finished: read again at the next chance.
    pub(super) fn changed(&mut self) {
        self.next_at = None;
        self.generation += 1;
    }

    /// Other repositories: what was read is about the old ones.
    pub(super) fn reset(&mut self) {
        self.changed();
        self.repositories.clear();
        self.error = None;
    }

    fn finished(&mut self, now: Instant, result: Result<Vec<RepositoryInventory>, String>) {
        match result {
            Ok(repositories) => {
                self.repositories = repositories;
                self.error = None;
                self.next_at = Some(now + REFRESH_EVERY);
            }
            Err(e) => {
                self.error = Some(e);
                self.next_at = Some(now + RETRY_AFTER);
            }
        }
    }
}

/// Each repository pgBackRest could read, with the backups it lists.
pub fn inventory(info: &StanzaInfo, read_at: jiff::Timestamp) -> Vec<RepositoryInventory> {
    info.repos
        .iter()
        .filter(|r| r.readable())
        .map(|r| {
            let held: Vec<_> = info.backups.iter().filter(|b| b.repo == r.key).collect();
            RepositoryInventory {
                repository: r.key,
                read_at: rfc3339(read_at),
                labels: held.iter().map(|b| b.label.clone()).collect(),
                first_recoverability_point: held.iter().map(|b| b.stop).min().map(rfc3339),
                last_backup_at: held.iter().map(|b| b.stop).max().map(rfc3339),
            }
        })
        .collect()
}

impl Backups {
    /// The repositories changed elsewhere (a standby took a backup): the
    /// next tick reads them again.
    pub fn inventory_changed(&self) {
        self.lock().inventory.changed();
    }

    /// Starts `pgbackrest info` in the background when a read is due, the
    /// stanza exists and no backup runs (primary only).
    pub fn refresh_inventory(self: &Arc<Self>) {
        let (runner, generation) = {
            let mut inner = self.lock();
            let stanza_ready = inner.stanza.done_for == Some(inner.version);
            let backing_up = inner
                .job
                .as_ref()
                .is_some_and(|j| j.phase == JobPhase::Running);
            let Some(runner) = inner.runner.clone() else {
                return;
            };
            if !stanza_ready || backing_up || !inner.inventory.due(Instant::now()) {
                return;
            }
            inner.inventory.running = true;
            (runner, inner.inventory.generation)
        };
        let this = self.clone();
        tokio::spawn(tracing::Instrument::in_current_span(async move {
            let read_at = jiff::Timestamp::now();
            let result = runner
                .with_timeout(INFO_TIMEOUT)
                .info(None)
                .await
                .map(|info| inventory(&info, read_at))
                .map_err(|e| message(&e));
            let mut inner = this.lock();
            inner.inventory.running = false;
            if inner.inventory.generation != generation {
                return;
            }
            match &result {
                Ok(repositories) => {
                    let held: Vec<usize> = repositories.iter().map(|r| r.labels.len()).collect();
                    tracing::debug!(operation = "inventory", backups = ?held, "repositories read");
                }
                Err(e) => {
                    tracing::warn!(operation = "inventory", error = %e, "pgbackrest info failed; the repositories' backups are not reported")
                }
            }
            inner.inventory.finished(Instant::now(), result);
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::info;

    const REAL: &str = include_str!("../../../tests/fixtures/pgbackrest/info-pg17-posix.json");

    #[test]
    fn reads_each_readable_repository() {
        let mut s = info::parse(REAL).unwrap().remove(0);
        let at: jiff::Timestamp = "2026-12-04T19:14:00Z".parse().unwrap();
        let inv = inventory(&s, at);
        assert_eq!(inv.len(), 1);
        let r = &inv[0];
        assert_eq!(r.repository, 1);
        assert_eq!(r.read_at, "2026-12-04T19:14:00.000000Z");
        assert_eq!(
            r.labels,
            [
                "20261204-191306F",
                "20261204-191306F_20261204-191309I",
                "20261204-191306F_20261204-191311D",
                "20261204-191312F"
            ]
        );
        assert_eq!(
            r.first_recoverability_point.as_deref(),
            Some(rfc3339(s.first_recoverability_point().unwrap()).as_str())
        );
        assert!(r.last_backup_at > r.first_recoverability_point);
        // A second repository that could not be read is left out; one
        // without backups is there, empty.
        s.repos.push(info::RepoStatus {
            key: 2,
            code: 99,
            message: "[039]: HTTP request failed".into(),
        });
        s.repos.push(info::RepoStatus {
            key: 3,
            code: 2,
            message: "no valid backups".into(),
        });
        let inv = inventory(&s, at);
        let keys: Vec<u32> = inv.iter().map(|r| r.repository).collect();
        assert_eq!(keys, [1, 3]);
        assert!(inv[1].labels.is_empty() && inv[1].first_recoverability_point.is_none());
    }

    #[test]
    fn read_after_each_backup_and_every_few_minutes() {
        let now = Instant::now();
        let mut s = InventoryState::default();
        assert!(s.due(now), "never read");
        s.running = true;
        assert!(!s.due(now), "not twice at once");
        s.running = false;
        s.finished(now, Ok(vec![]));
        assert!(!s.due(now + Duration::from_secs(10)));
        assert!(s.due(now + REFRESH_EVERY));
        let before = s.generation;
        s.changed();
        assert!(s.due(now), "a backup finished");
        assert_ne!(s.generation, before, "a read started before is dropped");
        s.finished(now, Err("ERROR: [039]".into()));
        assert!(!s.due(now) && s.due(now + RETRY_AFTER));
        assert_eq!(s.error.as_deref(), Some("ERROR: [039]"));
        s.repositories = vec![RepositoryInventory::default()];
        s.reset();
        assert!(s.repositories.is_empty() && s.error.is_none() && s.due(now));
    }
}

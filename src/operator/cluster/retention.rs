//! Which `PostgresBackup` objects go. pgBackRest expires backups itself
//! after each backup (`repoN-retention-full` / `-diff`); the objects follow
//! what the repository holds, as the primary reads it with `pgbackrest
//! info`. Deleting an object never deletes a backup. Pure.
//!
//! - A `Completed` object whose backup its repository no longer lists is
//!   deleted, on demand or scheduled, once a listing read after the backup
//!   ended shows it gone (an older listing may simply predate it). A
//!   repository that lists no backup at all deletes nothing: pgBackRest
//!   always keeps at least one, so that is a wrong path or a wiped store,
//!   and the objects are the record of what was there.
//! - A schedule keeps its newest [`FAILED_KEPT_PER_SCHEDULE`] `Failed`
//!   objects (enough to see why, without one per night piling up).
//!   `Failed` objects a user created are left to the user.

use std::collections::BTreeMap;

use jiff::Timestamp;
use kube::ResourceExt;

use super::backup::{phase, phase_of};
use super::plan::Deletion;
use super::schedule::schedule_of;
use crate::api::pgbackup::PostgresBackup;
use crate::contract::backup::RepositoryInventory;

/// `Failed` objects kept per schedule.
pub const FAILED_KEPT_PER_SCHEDULE: usize = 3;

/// `repo2` → 2.
fn repository_number(name: &str) -> Option<u32> {
    name.strip_prefix("repo")?.parse().ok()
}

/// The backup of `b` is gone from its repository, by a listing read after
/// it ended: its label, and the repository.
pub(super) fn expired(
    b: &PostgresBackup,
    inventory: &[RepositoryInventory],
) -> Option<(String, String)> {
    let status = b.status.as_ref()?;
    let label = status.label.as_ref()?;
    let repository = status.repository.as_ref()?;
    let number = repository_number(repository)?;
    let held = inventory.iter().find(|i| i.repository == number)?;
    let stopped: Timestamp = status.stopped_at.as_deref()?.parse().ok()?;
    let read: Timestamp = held.read_at.parse().ok()?;
    let gone = read >= stopped && !held.labels.is_empty() && !held.labels.contains(label);
    gone.then(|| (label.clone(), repository.clone()))
}

pub fn prune(backups: &[PostgresBackup], inventory: &[RepositoryInventory]) -> Vec<Deletion> {
    let mut out = vec![];
    let mut failed: BTreeMap<&str, Vec<&PostgresBackup>> = BTreeMap::new();
    for b in backups {
        match phase_of(b) {
            phase::COMPLETED => {
                if let Some((label, repository)) = expired(b, inventory) {
                    out.push(Deletion::ExpiredBackup {
                        name: b.name_any(),
                        label,
                        repository,
                    });
                }
            }
            phase::FAILED => {
                if let Some(schedule) = schedule_of(b) {
                    failed.entry(schedule).or_default().push(b);
                }
            }
            _ => {}
        }
    }
    for (schedule, mut objects) in failed {
        objects.sort_by_key(|b| {
            std::cmp::Reverse((b.creation_timestamp().map(|t| t.0), b.name_any()))
        });
        out.extend(objects.into_iter().skip(FAILED_KEPT_PER_SCHEDULE).map(|b| {
            Deletion::FailedBackup {
                name: b.name_any(),
                schedule: schedule.to_string(),
            }
        }));
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn object(
        name: &str,
        schedule: Option<&str>,
        created: &str,
        status: serde_json::Value,
    ) -> PostgresBackup {
        let labels = schedule.map(|s| json!({"capstan.dev/schedule": s}));
        serde_json::from_value(json!({
            "apiVersion": "capstan.dev/v1alpha1", "kind": "PostgresBackup",
            "metadata": {"name": name, "namespace": "ns", "creationTimestamp": created,
                         "labels": labels},
            "spec": {"cluster": "db", "type": "full"},
            "status": status,
        }))
        .unwrap()
    }

    fn completed(
        name: &str,
        schedule: Option<&str>,
        label: &str,
        repo: &str,
        stopped: &str,
    ) -> PostgresBackup {
        object(
            name,
            schedule,
            stopped,
            json!({"phase": "Completed", "label": label, "repository": repo, "stoppedAt": stopped}),
        )
    }

    fn failed(name: &str, schedule: Option<&str>, created: &str) -> PostgresBackup {
        object(
            name,
            schedule,
            created,
            json!({"phase": "Failed", "message": "ERROR: [049]"}),
        )
    }

    fn held(repository: u32, read_at: &str, labels: &[&str]) -> RepositoryInventory {
        RepositoryInventory {
            repository,
            read_at: read_at.into(),
            labels: labels.iter().map(|l| l.to_string()).collect(),
            ..RepositoryInventory::default()
        }
    }

    fn names(d: &[Deletion]) -> Vec<String> {
        d.iter()
            .map(|d| match d {
                Deletion::ExpiredBackup { name, .. } | Deletion::FailedBackup { name, .. } => {
                    name.clone()
                }
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn completed_objects_go_when_their_repository_no_longer_lists_them() {
        let backups = [
            completed(
                "old",
                Some("nightly"),
                "20261201-010000F",
                "repo1",
                "2026-12-01T01:05:00Z",
            ),
            completed(
                "mine",
                None,
                "20261202-010000F",
                "repo1",
                "2026-12-02T01:05:00Z",
            ),
            completed(
                "kept",
                Some("nightly"),
                "20261203-010000F",
                "repo1",
                "2026-12-03T01:05:00Z",
            ),
            completed(
                "other",
                None,
                "20261201-020000F",
                "repo2",
                "2026-12-01T02:05:00Z",
            ),
        ];
        let inventory = [
            held(1, "2026-12-03T01:06:00Z", &["20261203-010000F"]),
            held(2, "2026-12-03T01:06:00Z", &["20261201-020000F"]),
        ];
        let out = prune(&backups, &inventory);
        // On demand or scheduled alike, once expired.
        assert_eq!(names(&out), ["old", "mine"]);
        assert_eq!(
            out[0],
            Deletion::ExpiredBackup {
                name: "old".into(),
                label: "20261201-010000F".into(),
                repository: "repo1".into()
            }
        );
    }

    #[test]
    fn nothing_goes_on_a_listing_that_cannot_tell() {
        let b = [completed(
            "b",
            None,
            "20261203-010000F",
            "repo1",
            "2026-12-03T01:05:00Z",
        )];
        // Read before the backup ended: it may not have been written yet.
        assert!(
            prune(
                &b,
                &[held(1, "2026-12-03T01:04:59Z", &["20261202-010000F"])]
            )
            .is_empty()
        );
        // A repository listing nothing: a wrong path or a wiped store.
        assert!(prune(&b, &[held(1, "2026-12-03T02:00:00Z", &[])]).is_empty());
        // Its repository was not read (unreachable, or no longer configured).
        assert!(prune(&b, &[held(2, "2026-12-03T02:00:00Z", &["x"])]).is_empty());
        assert!(prune(&b, &[]).is_empty());
        // Unreadable times decide nothing.
        let odd = [object(
            "b",
            None,
            "2026-12-03T01:00:00Z",
            json!({"phase": "Completed", "label": "20261203-010000F", "repository": "repo1", "stoppedAt": "yesterday"}),
        )];
        assert!(prune(&odd, &[held(1, "2026-12-03T02:00:00Z", &["x"])]).is_empty());
        // Not completed: no label to miss.
        let running = [object(
            "r",
            None,
            "2026-12-03T01:00:00Z",
            json!({"phase": "Running", "repository": "repo1"}),
        )];
        assert!(prune(&running, &[held(1, "2026-12-03T02:00:00Z", &["x"])]).is_empty());
    }

    #[test]
    fn a_schedule_keeps_its_newest_failed_objects_and_users_keep_theirs() {
        let mut backups: Vec<PostgresBackup> = (1..=5)
            .map(|d| {
                failed(
                    &format!("n{d}"),
                    Some("nightly"),
                    &format!("2026-12-0{d}T01:00:00Z"),
                )
            })
            .collect();
        backups.push(failed("h1", Some("hourly"), "2026-12-01T01:00:00Z"));
        for d in 1..=5 {
            backups.push(failed(
                &format!("mine{d}"),
                None,
                &format!("2026-12-0{d}T01:00:00Z"),
            ));
        }
        let out = prune(&backups, &[]);
        assert_eq!(names(&out), ["n2", "n1"]);
        assert!(
            matches!(&out[0], Deletion::FailedBackup { schedule, .. } if schedule == "nightly")
        );
    }
}

//! `status.roles` and `status.databases`: what the primary reported of each
//! entry of the spec, and an Event when one starts failing.

use crate::api::{ManagedObjectStatus, PostgresClusterSpec, PostgresClusterStatus};
use crate::contract::roles::{EntryReport, EntryState, ManagedReport};
use crate::operator::report::reason;

use super::Transition;

/// `status.roles`, `status.databases`, and a Warning for each entry that
/// started failing. `reported`: the primary's last pass.
pub(super) fn statuses(
    spec: &PostgresClusterSpec,
    reported: Option<&ManagedReport>,
    previous: Option<&PostgresClusterStatus>,
) -> (
    Vec<ManagedObjectStatus>,
    Vec<ManagedObjectStatus>,
    Vec<Transition>,
) {
    let mut events = Vec::new();
    let mut kind = |names: Vec<&str>,
                    now: Option<&[EntryReport]>,
                    before: &[ManagedObjectStatus],
                    reason: &'static str,
                    what: &str| {
        let list = entries(&names, now, before);
        events.extend(newly_failed(reason, what, &list, before));
        list
    };
    let roles = kind(
        spec.roles.iter().map(|e| e.name.as_str()).collect(),
        reported.map(|m| m.roles.as_slice()),
        previous.map_or(&[], |p| p.roles.as_slice()),
        reason::ROLE_NOT_APPLIED,
        "role",
    );
    let databases = kind(
        spec.databases.iter().map(|e| e.name.as_str()).collect(),
        reported.map(|m| m.databases.as_slice()),
        previous.map_or(&[], |p| p.databases.as_slice()),
        reason::DATABASE_NOT_APPLIED,
        "database",
    );
    (roles, databases, events)
}

/// One status per spec entry, in spec order: the primary's report when it
/// has one, else the previous status (a primary not reachable this pass),
/// else `Pending`.
fn entries(
    names: &[&str],
    reported: Option<&[EntryReport]>,
    previous: &[ManagedObjectStatus],
) -> Vec<ManagedObjectStatus> {
    names
        .iter()
        .map(|name| {
            if let Some(r) = reported.and_then(|r| r.iter().find(|e| e.name == *name)) {
                return ManagedObjectStatus {
                    name: r.name.clone(),
                    state: match r.state {
                        EntryState::Applied => "Applied",
                        EntryState::Kept => "Kept",
                        EntryState::Failed => "Failed",
                    }
                    .to_string(),
                    message: r.message.clone(),
                };
            }
            previous
                .iter()
                .find(|p| p.name == *name)
                .cloned()
                .unwrap_or_else(|| ManagedObjectStatus {
                    name: name.to_string(),
                    state: "Pending".into(),
                    message: "not applied by the primary yet".into(),
                })
        })
        .collect()
}

/// A Warning for each entry that failed now and did not fail the same way
/// before.
fn newly_failed(
    reason: &'static str,
    kind: &str,
    now: &[ManagedObjectStatus],
    previous: &[ManagedObjectStatus],
) -> Vec<Transition> {
    now.iter()
        .filter(|e| e.state == "Failed")
        .filter(|e| {
            !previous
                .iter()
                .any(|p| p.name == e.name && p.state == "Failed" && p.message == e.message)
        })
        .map(|e| Transition {
            warning: true,
            reason,
            message: format!("{kind} {}: {}", e.name, e.message),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(name: &str, state: EntryState, message: &str) -> EntryReport {
        EntryReport {
            name: name.into(),
            state,
            message: message.into(),
        }
    }

    #[test]
    fn each_spec_entry_shows_its_last_report() {
        let reported = [
            report("reporting", EntryState::Applied, "created"),
            report("etl", EntryState::Failed, "no password"),
            report("removed_from_spec", EntryState::Applied, "created"),
        ];
        let previous = [ManagedObjectStatus {
            name: "audit".into(),
            state: "Applied".into(),
            message: "unchanged".into(),
        }];
        let now = entries(&["reporting", "etl", "fresh"], Some(&reported), &previous);
        let states: Vec<_> = now
            .iter()
            .map(|e| (e.name.as_str(), e.state.as_str()))
            .collect();
        assert_eq!(
            states,
            [
                ("reporting", "Applied"),
                ("etl", "Failed"),
                ("fresh", "Pending")
            ]
        );
        // No report this pass: the previous status stands.
        let kept = entries(&["audit"], None, &previous);
        assert_eq!(kept, previous);
    }

    #[test]
    fn a_failure_is_announced_once() {
        let failed = vec![ManagedObjectStatus {
            name: "etl".into(),
            state: "Failed".into(),
            message: "no password".into(),
        }];
        let events = newly_failed("RoleNotApplied", "role", &failed, &[]);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].message, "role etl: no password");
        assert!(newly_failed("RoleNotApplied", "role", &failed, &failed).is_empty());
    }
}

//! Planned switchover requests: the `capstan.dev/switchover` annotation,
//! read as `<instance>` or `<instance>/<token>`. Each distinct value is
//! carried out once and remembered in `status.switchover.request`, so a
//! GitOps tool re-applying the same manifest never switches again.

use crate::api::SwitchoverStatus;
use crate::contract::instance::{InstanceReport, Role};

pub const PENDING: &str = "Pending";
pub const PAUSING: &str = "Pausing";
pub const PROMOTING: &str = "Promoting";
pub const RESUMING: &str = "Resuming";
pub const COMPLETED: &str = "Completed";
pub const FAILED: &str = "Failed";

pub fn is_terminal(phase: &str) -> bool {
    phase == COMPLETED || phase == FAILED
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// No request, or this one was handled.
    Nothing,
    /// Carry out a switchover from the current primary to `to`.
    Start { request: String, to: String },
    /// The target already is the primary.
    AlreadyPrimary { request: String, to: String },
    /// Refused; the message names the annotation and the fix.
    Refuse { request: String, message: String },
}

pub fn target_of(request: &str) -> &str {
    request.split_once('/').map_or(request, |(t, _)| t).trim()
}

pub struct Input<'a> {
    pub annotation: Option<&'a str>,
    pub recorded: Option<&'a SwitchoverStatus>,
    pub target_primary: &'a str,
    pub instances: &'a [String],
    pub reports: &'a std::collections::BTreeMap<String, InstanceReport>,
}

pub fn decide(input: &Input<'_>) -> Decision {
    let Some(request) = input.annotation.map(str::trim).filter(|a| !a.is_empty()) else {
        return Decision::Nothing;
    };
    let request = request.to_string();
    let to = target_of(&request).to_string();
    // Handled already (a switchover under way is the chooser's concern).
    if input.recorded.is_some_and(|r| r.request == request) {
        return Decision::Nothing;
    }
    if !input.instances.contains(&to) {
        return Decision::Refuse {
            message: format!(
                "annotation capstan.dev/switchover names {to:?}, which is not an instance of this cluster (instances: {}); set it to one of them",
                input.instances.join(", ")
            ),
            request,
        };
    }
    if to == input.target_primary {
        return Decision::AlreadyPrimary { request, to };
    }
    match input.reports.get(&to) {
        Some(r) if r.role == Role::Replica && r.ready => Decision::Start { request, to },
        Some(r) => Decision::Refuse {
            message: format!(
                "{to} is not a ready, streaming replica (role {}, ready {}{}); wait until it is, then change the annotation's token (e.g. {to}/2) to ask again",
                r.role.as_str(),
                r.ready,
                r.last_error
                    .as_deref()
                    .map(|e| format!(", last error: {e}"))
                    .unwrap_or_default()
            ),
            request,
        },
        None => Decision::Refuse {
            message: format!(
                "the instance manager of {to} does not answer; wait until the pod is ready, then change the annotation's token (e.g. {to}/2) to ask again"
            ),
            request,
        },
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn reports(ready: bool) -> BTreeMap<String, InstanceReport> {
        [(
            "db-2".to_string(),
            InstanceReport {
                name: "db-2".into(),
                role: Role::Replica,
                running: true,
                ready,
                ..InstanceReport::default()
            },
        )]
        .into()
    }

    fn decide_with(
        annotation: Option<&str>,
        recorded: Option<&SwitchoverStatus>,
        reports: &BTreeMap<String, InstanceReport>,
    ) -> Decision {
        let instances = vec!["db-1".to_string(), "db-2".to_string()];
        decide(&Input {
            annotation,
            recorded,
            target_primary: "db-1",
            instances: &instances,
            reports,
        })
    }

    fn recorded(request: &str, phase: &str) -> SwitchoverStatus {
        SwitchoverStatus {
            request: request.into(),
            phase: phase.into(),
            ..SwitchoverStatus::default()
        }
    }

    #[test]
    fn a_request_is_carried_out_once() {
        let r = reports(true);
        assert_eq!(decide_with(None, None, &r), Decision::Nothing);
        assert_eq!(
            decide_with(Some("db-2"), None, &r),
            Decision::Start {
                request: "db-2".into(),
                to: "db-2".into()
            }
        );
        let done = recorded("db-2", COMPLETED);
        assert_eq!(
            decide_with(Some("db-2"), Some(&done), &r),
            Decision::Nothing
        );
        // A new token asks again.
        assert_eq!(
            decide_with(Some("db-2/b"), Some(&done), &r),
            Decision::Start {
                request: "db-2/b".into(),
                to: "db-2".into()
            }
        );
    }

    #[test]
    fn bad_targets_are_refused_with_the_fix() {
        let r = reports(true);
        match decide_with(Some("db-9"), None, &r) {
            Decision::Refuse { message, .. } => {
                assert!(message.contains("db-1, db-2"), "{message}")
            }
            other => panic!("{other:?}"),
        }
        match decide_with(Some("db-2"), None, &reports(false)) {
            Decision::Refuse { message, .. } => assert!(message.contains("db-2/2"), "{message}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            decide_with(Some("db-1/x"), None, &r),
            Decision::AlreadyPrimary { .. }
        ));
    }
}

//! Taking a new manager binary in place: the operator installed it
//! (`POST /binary`); between two ticks, with nothing under way that `exec`
//! would orphan, the manager hands its postmaster and its primary lease
//! over to the new image and re-executes itself (see
//! [`crate::agents::binary`]). PostgreSQL keeps running throughout.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::agents::binary;
use crate::contract::settings::FencingSettings;
use crate::contract::upgrade::UpgradePhase;

use super::super::authority::Authority;
use super::super::state::CommandError;
use super::super::supervisor::Adoptable;
use super::Manager;

/// What one manager image passes to the next across `exec`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Handover {
    pub postgres: Option<Adoptable>,
    /// CLOCK_MONOTONIC (ns) at the start of the last successful renewal of
    /// the primary lease, while holding it: the new keeper's fence bound
    /// counts from there, not from its own start.
    pub lease_valid_from: Option<u64>,
    /// Checksum of the binary, verified when it was installed.
    pub sha256: Option<String>,
    /// The lease's settings, so the new keeper renews it before it has
    /// read `instance.json`.
    pub fencing: Option<FencingSettings>,
}

/// Time for the API's answer to reach the operator before `exec` closes
/// the connection.
const ANSWER_FLUSH: Duration = Duration::from_millis(300);

/// Why the manager may not re-execute now (None: it may).
fn blocker(
    busy: Option<&'static str>,
    backups: Option<String>,
    upgrade: Option<UpgradePhase>,
) -> Option<String> {
    if let Some(operation) = busy {
        return Some(format!("{operation} is under way"));
    }
    if let Some(why) = backups {
        return Some(why);
    }
    match upgrade {
        Some(UpgradePhase::Upgrading | UpgradePhase::Analyzing) => {
            Some("the major upgrade is not finished on this instance".into())
        }
        _ => None,
    }
}

impl<A: Authority> Manager<A> {
    /// Answers the API, then re-executes; returns only when that failed.
    pub(super) async fn reexec_command(
        &mut self,
        reply: tokio::sync::oneshot::Sender<Result<(), CommandError>>,
        sha256: String,
    ) {
        let why = blocker(
            self.shared.busy(),
            self.shared.backups.busy(),
            self.upgrade.report().map(|r| r.phase),
        );
        if let Some(why) = why {
            let _ = reply.send(Err(CommandError::Conflict(format!(
                "not taking the new binary now: {why}; ask again when it is done"
            ))));
            return;
        }
        let postgres = match self.postgres.as_ref().map(|p| p.handover()).transpose() {
            Ok(p) => p,
            Err(e) => {
                let _ = reply.send(Err(CommandError::Failed(e.to_string())));
                return;
            }
        };
        // Its port would still be taken in the new image.
        self.stop_backrest_server();
        let _ = reply.send(Ok(()));
        tokio::time::sleep(ANSWER_FLUSH).await;
        // Taken last: the keeper renewed meanwhile, and the new image's
        // fence bound counts from the latest renewal.
        let handover = Handover {
            postgres,
            lease_valid_from: self.shared.lease.valid_from().map(|from| {
                let age = from.elapsed().as_nanos() as u64;
                binary::monotonic_ns().saturating_sub(age)
            }),
            sha256: Some(sha256),
            fencing: self.settings.as_ref().and_then(|s| s.fencing.clone()),
        };
        tracing::info!(
            operation = "agent-upgrade",
            postgres = ?handover.postgres.as_ref().map(|p| p.pid),
            lease = handover.lease_valid_from.is_some(),
            "handing PostgreSQL over to the new manager binary"
        );
        let error = binary::exec(&handover);
        tracing::error!(operation = "agent-upgrade", error = %error, "still running the old binary");
        self.set_error(super::errors::Source::Binaries, error.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_under_way_is_orphaned() {
        assert_eq!(blocker(None, None, None), None);
        assert_eq!(blocker(None, None, Some(UpgradePhase::Completed)), None);
        assert!(
            blocker(Some("clone"), None, None)
                .unwrap()
                .contains("clone")
        );
        assert!(
            blocker(None, Some("backup b1 is running".into()), None)
                .unwrap()
                .contains("b1")
        );
        assert!(blocker(None, None, Some(UpgradePhase::Analyzing)).is_some());
    }

    #[test]
    fn the_handover_survives_the_environment() {
        let h = Handover {
            postgres: Some(Adoptable {
                pid: 42,
                log_fds: vec![7, 9],
            }),
            lease_valid_from: Some(123),
            sha256: Some("ab".into()),
            fencing: None,
        };
        let text = serde_json::to_string(&h).unwrap();
        assert_eq!(serde_json::from_str::<Handover>(&text).unwrap(), h);
    }
}

//! The manager's side of a major upgrade (`majorUpgrade` in the settings):
//! the named primary runs pg_upgrade on its stopped data directory, then
//! rebuilds planner statistics in the background; a replica whose data is
//! of the old major clones the upgraded primary again. What the operator
//! turns into status is the report. The data work is in
//! [`crate::instance::upgrade`].

use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::process::Command;

use crate::contract::settings::InstanceSettings;
use crate::contract::upgrade::{UpgradePhase, UpgradeReport};
use crate::postgres::roles;

use super::super::authority::Authority;
use super::super::binaries::Binaries;
use super::super::process;
use super::super::upgrade::UpgradeError;
use super::Manager;

/// The report, shared with the statistics task.
#[derive(Default)]
pub(super) struct UpgradeState {
    pub(super) report: Arc<Mutex<Option<UpgradeReport>>>,
}

impl UpgradeState {
    pub(super) fn report(&self) -> Option<UpgradeReport> {
        self.report.lock().map(|r| r.clone()).unwrap_or(None)
    }

    /// Refused before pg_upgrade could run (the binaries are unusable).
    pub(super) fn refuse(&self, from: u32, to: u32, message: String) {
        self.set(UpgradeReport {
            phase: UpgradePhase::Refused,
            from_version: from,
            to_version: to,
            message: Some(message),
            upgrade_ms: None,
        });
    }

    fn set(&self, report: UpgradeReport) {
        if let Ok(mut r) = self.report.lock() {
            *r = Some(report);
        }
    }
}

impl<A: Authority> Manager<A> {
    /// pg_upgrade from `from` to this pod's binaries. On a refusal the old
    /// data directory is as it was and the report says why; the operator
    /// then brings the old image back, so nothing here retries.
    pub(super) async fn major_upgrade(
        &mut self,
        settings: &InstanceSettings,
        bins: &Binaries,
        from: u32,
    ) -> Result<(), String> {
        let mut report = UpgradeReport {
            phase: UpgradePhase::Upgrading,
            from_version: from,
            to_version: bins.major,
            message: None,
            upgrade_ms: None,
        };
        let refuse = |state: &UpgradeState, mut report: UpgradeReport, message: String| {
            tracing::warn!(operation = "major-upgrade", from, to = report.to_version, error = %message, "major upgrade refused; the old data directory is unchanged");
            report.phase = UpgradePhase::Refused;
            report.message = Some(message.clone());
            state.set(report);
            message
        };
        // Refused once, refused again: the operator brings the old image back.
        if let Some(previous) = self.upgrade.report()
            && previous.phase == UpgradePhase::Refused
            && (previous.from_version, previous.to_version) == (from, bins.major)
        {
            return Err(previous.message.unwrap_or_default());
        }
        let dir = super::super::binaries::old_bin_dir(&self.inputs.old_postgres_dir, from);
        let old = match Binaries::resolve(Some(&dir), from as i32).await {
            Ok(old) => old,
            Err(e) => {
                return Err(refuse(
                    &self.upgrade,
                    report,
                    format!("the PostgreSQL {from} binaries are not usable: {e}"),
                ));
            }
        };
        self.upgrade.set(report.clone());
        self.publish();
        self.busy(Some("major-upgrade"));
        let started = Instant::now();
        let result = self.ops(settings, bins).upgrade(&old).await;
        self.busy(None);
        report.upgrade_ms = Some(started.elapsed().as_millis() as u64);
        match result {
            Ok(system_identifier) => {
                tracing::info!(
                    operation = "major-upgrade",
                    from,
                    to = bins.major,
                    system_identifier,
                    ms = report.upgrade_ms,
                    "data directory upgraded"
                );
                report.phase = UpgradePhase::Analyzing;
                self.upgrade.set(report);
                Ok(())
            }
            Err(UpgradeError::Refused { words, .. }) => Err(refuse(&self.upgrade, report, words)),
            Err(UpgradeError::Data(e)) => Err(refuse(&self.upgrade, report, e.to_string())),
        }
    }

    /// The upgraded server accepts connections: the old cluster's
    /// directories go, and planner statistics are rebuilt in stages (pg_upgrade
    /// carries none over) while clients already use it.
    pub(super) fn after_upgrade(
        &mut self,
        settings: &InstanceSettings,
        bins: &Binaries,
        from: u32,
    ) {
        if let Err(e) = self.ops(settings, bins).forget_upgrade() {
            tracing::warn!(operation = "major-upgrade", error = %e, "cannot remove the pre-upgrade data directory");
        }
        let base = UpgradeReport {
            phase: UpgradePhase::Analyzing,
            from_version: from,
            to_version: bins.major,
            message: None,
            upgrade_ms: self.upgrade.report().and_then(|r| r.upgrade_ms),
        };
        self.upgrade.set(base.clone());
        let state = self.upgrade.report.clone();
        let mut command = Command::new(bins.tool("vacuumdb"));
        command
            .arg("--all")
            .arg("--analyze-in-stages")
            .arg("--host")
            .arg(&self.inputs.run_dir)
            .arg(format!("--port={}", self.inputs.postgres_port))
            .arg(format!("--username={}", roles::SUPERUSER));
        tokio::spawn(async move {
            let result = process::run_tool("vacuumdb", &mut command).await;
            let mut report = base;
            report.phase = UpgradePhase::Completed;
            match result {
                Ok(_) => tracing::info!(operation = "major-upgrade", "planner statistics rebuilt"),
                Err(e) => {
                    tracing::warn!(operation = "major-upgrade", error = %e, "rebuilding planner statistics failed; run ANALYZE");
                    report.message = Some(format!(
                        "rebuilding planner statistics failed ({e}); run ANALYZE in each database"
                    ));
                }
            }
            if let Ok(mut r) = state.lock() {
                *r = Some(report);
            }
        });
    }
}

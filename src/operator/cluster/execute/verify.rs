//! Verification by restore: creates the throwaway pod, records on the
//! `PostgresBackup` what it reports, publishes the Event, and deletes the
//! pod once the result is recorded (never before: a restarted operator
//! reads the result from the pod that is still there).

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use serde_json::json;
use tracing::{info, warn};

use super::{Executor, now_rfc3339};
use crate::api::pgbackup::PostgresBackup;
use crate::operator::cluster::backup::phase as backup_phase;
use crate::operator::cluster::verify::{self, Decision, Outcome, Step, phase};
use crate::operator::report::reason;

impl Executor<'_> {
    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.ctx.client.clone(), &self.model.namespace)
    }

    fn observed_backup(&self, name: &str) -> Option<&PostgresBackup> {
        self.observed
            .backups
            .iter()
            .find(|b| b.metadata.name.as_deref() == Some(name))
    }

    /// Carries out the verification step and removes orphaned pods.
    pub async fn verify(&self, decision: &Decision) {
        for pod in &decision.orphans {
            self.delete_verify_pod(pod).await;
        }
        let Some(step) = &decision.step else { return };
        match step {
            Step::Start { backup, pod } => {
                let name = pod.metadata.name.clone().unwrap_or_default();
                match self.pods().create(&PostParams::default(), pod).await {
                    // Already there: a second reconcile raced this one.
                    Ok(_) => {}
                    Err(kube::Error::Api(s)) if s.code == 409 => {}
                    Err(e) => {
                        warn!(cluster = %self.model.name, backup = %backup, pod = %name, error = %e, "cannot create the verification pod");
                        return;
                    }
                }
                info!(cluster = %self.model.name, backup = %backup, pod = %name, operation = "verify", "verification pod created");
                self.record_running(backup, &name).await;
                self.event(
                    false,
                    reason::BACKUP_VERIFYING,
                    format!("verifying backup {backup}: restoring it in pod {name}"),
                )
                .await;
            }
            Step::Adopt { backup, pod } => self.record_running(backup, pod).await,
            Step::Finish {
                backup,
                pod,
                outcome,
            } => {
                self.record_outcome(backup, outcome).await;
                if let Some(pod) = pod {
                    self.delete_verify_pod(pod).await;
                }
            }
        }
    }

    async fn record_running(&self, backup: &str, pod: &str) {
        let started = self
            .observed_backup(backup)
            .and_then(|b| b.status.as_ref()?.verification.as_ref()?.started_at.clone())
            .unwrap_or_else(now_rfc3339);
        self.record(
            backup,
            json!({"verification": {
                "phase": phase::RUNNING,
                "startedAt": started,
                "pod": pod,
                "message": format!("restoring the backup in pod {pod}"),
            }}),
        )
        .await;
    }

    async fn record_outcome(&self, backup: &str, outcome: &Outcome) {
        let now = jiff::Timestamp::now();
        let previous = self
            .observed_backup(backup)
            .and_then(|b| b.status.as_ref()?.verification.clone())
            .unwrap_or_default();
        let duration = previous
            .started_at
            .as_deref()
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
            .map(|t| now.as_second() - t.as_second());
        let (passed, mut verification) = match outcome {
            Outcome::Reported(r) => (
                r.passed,
                json!({
                    "restoreSeconds": r.restore_seconds,
                    "recoverySeconds": r.recovery_seconds,
                    "checksSeconds": r.checks_seconds,
                    "amcheck": r.amcheck,
                    "sentinelFound": r.sentinel_found,
                    "message": verify::describe(r),
                }),
            ),
            Outcome::Failed(message) => (false, json!({"message": message})),
            Outcome::Expired(message) => {
                info!(cluster = %self.model.name, backup = %backup, operation = "verify", "{message}");
                let verification = json!({"phase": phase::SKIPPED, "message": message});
                self.record(
                    backup,
                    json!({"phase": backup_phase::COMPLETED, "verification": verification}),
                )
                .await;
                return;
            }
        };
        verification["phase"] = json!(if passed { phase::PASSED } else { phase::FAILED });
        verification["finishedAt"] = json!(now.to_string());
        verification["durationSeconds"] = json!(duration);
        verification["startedAt"] = json!(previous.started_at);
        verification["pod"] = json!(previous.pod);
        let message = verification["message"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        // The backup is in the repository either way; whether it restores
        // is the verification's phase (and the cluster's condition).
        self.record(
            backup,
            json!({"phase": backup_phase::COMPLETED, "verification": verification}),
        )
        .await;
        if passed {
            info!(cluster = %self.model.name, backup = %backup, operation = "verify", duration_seconds = ?duration, "backup verified by restore");
            self.event(
                false,
                reason::BACKUP_VERIFIED,
                format!("backup {backup}: {message}"),
            )
            .await;
        } else {
            warn!(cluster = %self.model.name, backup = %backup, operation = "verify", error = %message, "backup verification failed");
            self.event(
                true,
                reason::BACKUP_VERIFICATION_FAILED,
                format!("backup {backup} did not pass its verification by restore: {message}"),
            )
            .await;
        }
    }

    async fn delete_verify_pod(&self, pod: &str) {
        match self.pods().delete(pod, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => {
                warn!(cluster = %self.model.name, pod = %pod, error = %e, "cannot delete the verification pod; trying again next time")
            }
        }
    }
}

//! Report: the one status writer and the one Event publisher of the
//! operator (DESIGN §4 step 5). Event reasons are defined here, once.

use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use kube::{Api, Resource, ResourceExt};
use serde_json::json;
use tracing::warn;

use super::cluster::apply::FIELD_MANAGER;
use super::cluster::status::Transition;
use super::context::Context;
use crate::api::{PostgresCluster, PostgresClusterStatus};

/// Every Event reason the operator publishes. Warning reasons for failed
/// reconciles are the static error categories
/// ([`super::metrics::ErrorCategory::reason`]).
pub mod reason {
    pub const CLUSTER_READY: &str = "ClusterReady";
    pub const CLUSTER_NOT_READY: &str = "ClusterNotReady";
    pub const INVALID_SPEC: &str = "InvalidSpec";
    pub const CREATED_INSTANCES: &str = "CreatedInstances";
    pub const DELETED_PODS: &str = "DeletedPods";
    pub const DELETED_VOLUMES: &str = "DeletedVolumes";
    pub const CREATED_SECRETS: &str = "CreatedSecrets";
    pub const ISSUED_CERTIFICATES: &str = "IssuedCertificates";
    pub const CA_ROTATION: &str = "CaRotation";
    /// autoGrow raised a claim.
    pub const VOLUME_GROWN: &str = "VolumeGrown";
    /// A volume past its autoGrow threshold at its limit.
    pub const VOLUME_FULL: &str = "VolumeFull";
    pub const APPLY_REFUSED: &str = "ApplyRefused";
    pub const FAILOVER_STARTED: &str = "FailoverStarted";
    pub const FAILOVER_COMPLETED: &str = "FailoverCompleted";
    pub const FAILOVER_BLOCKED: &str = "FailoverBlocked";
    pub const FAILOVER_CANCELLED: &str = "FailoverCancelled";
    pub const SWITCHOVER_STARTED: &str = "SwitchoverStarted";
    pub const SWITCHOVER_COMPLETED: &str = "SwitchoverCompleted";
    pub const SWITCHOVER_FAILED: &str = "SwitchoverFailed";
    pub const SWITCHOVER_REFUSED: &str = "SwitchoverRefused";
    pub const SWITCHOVER_INTERRUPTED: &str = "SwitchoverInterrupted";
    pub const ROLLING_UPDATE: &str = "RollingUpdate";
    pub const RESTARTING_PRIMARY: &str = "RestartingPrimary";
    pub const WAITING_FOR_SWITCHOVER: &str = "WaitingForSwitchover";
    pub const BACKUP_STARTED: &str = "BackupStarted";
    pub const BACKUP_COMPLETED: &str = "BackupCompleted";
    pub const BACKUP_FAILED: &str = "BackupFailed";
    pub const BACKUP_SCHEDULED: &str = "BackupScheduled";
    pub const BACKUP_EXPIRED: &str = "BackupExpired";
    /// A backup was restored in a throwaway pod and checked.
    pub const BACKUP_VERIFIED: &str = "BackupVerified";
    /// A backup could not be restored or its copy failed a check (also the
    /// reason of the cluster's `BackupVerified` condition then).
    pub const BACKUP_VERIFICATION_FAILED: &str = "BackupVerificationFailed";
    pub const BACKUP_VERIFYING: &str = "BackupVerifying";
    pub const FAILED_BACKUPS_PRUNED: &str = "FailedBackupsPruned";
    /// The instance bootstrapping a restored cluster could not restore
    /// (also the reason of the cluster's `Stalled` condition).
    pub const RESTORE_FAILED: &str = "RestoreFailed";
    pub const WAL_ARCHIVING_FAILED: &str = "WalArchivingFailed";
    /// An entry of `spec.roles` or `spec.databases` the primary could not
    /// apply (PostgreSQL's words, or the missing password).
    pub const ROLE_NOT_APPLIED: &str = "RoleNotApplied";
    pub const DATABASE_NOT_APPLIED: &str = "DatabaseNotApplied";
    pub const WAL_ARCHIVING_RECOVERED: &str = "WalArchivingRecovered";
    pub const MAJOR_UPGRADE_STARTED: &str = "MajorUpgradeStarted";
    pub const AGENT_UPGRADED: &str = "AgentUpgraded";
    pub const IMAGE_CHECKED: &str = "ImageChecked";
    pub const IMAGE_CHECK_FAILED: &str = "ImageCheckFailed";
    pub const AGENT_UPGRADE_FAILED: &str = "AgentUpgradeFailed";
    pub const MAJOR_UPGRADE_PROGRESS: &str = "MajorUpgradeProgress";
    pub const MAJOR_UPGRADE_COMPLETED: &str = "MajorUpgradeCompleted";
    /// pg_upgrade refused, or the poolers could not be paused (also the
    /// reason of the cluster's `Stalled` condition after a refusal).
    pub const MAJOR_UPGRADE_FAILED: &str = "MajorUpgradeFailed";
}

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("the cluster changed meanwhile (conflict on resourceVersion); deciding again")]
    Conflict,
    #[error("cannot write status.{field}: {source}")]
    Write {
        field: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error(
        "cannot write status.{field}: the installed PostgresCluster CRD is older than this operator ({message}); apply the CRDs of this release first: kubectl apply --server-side -f crds/ (Helm does not upgrade the CRDs of charts/capstan/crds/)"
    )]
    StaleCrd {
        field: &'static str,
        message: String,
    },
}

fn api(ctx: &Context, cluster: &PostgresCluster) -> Api<PostgresCluster> {
    Api::namespaced(ctx.client.clone(), &cluster.namespace().unwrap_or_default())
}

fn classify(field: &'static str) -> impl FnOnce(kube::Error) -> StatusError {
    move |source| match source {
        kube::Error::Api(s) if s.code == 409 => StatusError::Conflict,
        kube::Error::Api(s) if stale_schema(&s.message) => StatusError::StaleCrd {
            field,
            message: s.message,
        },
        source => StatusError::Write { field, source },
    }
}

/// The API server's words for a field the stored schema does not declare
/// (server-side apply, and strict field validation of a patch).
fn stale_schema(message: &str) -> bool {
    message.contains("field not declared in schema") || message.contains("unknown field")
}

/// Writes the whole status (server-side apply). The resourceVersion read
/// is a precondition: a reconcile working from a stale copy must not put
/// back a targetPrimary a failover moved.
pub async fn write_status(
    ctx: &Context,
    cluster: &PostgresCluster,
    status: &PostgresClusterStatus,
) -> Result<(), StatusError> {
    let body = json!({
        "apiVersion": PostgresCluster::api_version(&()),
        "kind": PostgresCluster::kind(&()),
        "metadata": {"resourceVersion": cluster.metadata.resource_version},
        "status": status,
    });
    api(ctx, cluster)
        .patch_status(
            &cluster.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await
        .map_err(classify("status"))?;
    Ok(())
}

/// A merge patch of some status fields, valid only against
/// `resource_version`; returns the new resourceVersion. Operations record
/// each step with it, so `targetPrimary` only moves from the state the
/// decision was made on.
pub async fn patch_status_if(
    ctx: &Context,
    cluster: &PostgresCluster,
    resource_version: &str,
    status: serde_json::Value,
    field: &'static str,
) -> Result<String, StatusError> {
    let body = json!({"metadata": {"resourceVersion": resource_version}, "status": status});
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PatchParams::default()
    };
    let updated = api(ctx, cluster)
        .patch_status(&cluster.name_any(), &params, &Patch::Merge(&body))
        .await
        .map_err(classify(field))?;
    let version = updated.metadata.resource_version.unwrap_or_default();
    if let Some(uid) = cluster.metadata.uid.as_deref() {
        ctx.own_writes.wrote(uid, version.clone());
    }
    Ok(version)
}

/// A merge patch of a `PostgresBackup`'s status (only the operator writes
/// it; each backup has one writer at a time, the cluster's reconcile).
pub async fn patch_backup_status(
    ctx: &Context,
    namespace: &str,
    name: &str,
    status: serde_json::Value,
) -> Result<(), StatusError> {
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PatchParams::default()
    };
    Api::<crate::api::pgbackup::PostgresBackup>::namespaced(ctx.client.clone(), namespace)
        .patch_status(name, &params, &Patch::Merge(&json!({ "status": status })))
        .await
        .map_err(classify("backup"))?;
    Ok(())
}

/// Publishes Events; one that cannot be written never fails a reconcile.
pub async fn publish(ctx: &Context, cluster: &PostgresCluster, transitions: &[Transition]) {
    let reference = cluster.object_ref(&());
    for t in transitions {
        let event = Event {
            type_: if t.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: t.reason.to_string(),
            note: Some(t.message.chars().take(1000).collect()),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(e) = ctx.recorder.publish(&event, &reference).await {
            warn!(cluster = %cluster.name_any(), reason = %t.reason, error = %e, "cannot publish Event");
        }
    }
}

/// One Event.
pub async fn event(
    ctx: &Context,
    cluster: &PostgresCluster,
    warning: bool,
    reason: &'static str,
    message: impl Into<String>,
) {
    publish(
        ctx,
        cluster,
        &[Transition {
            warning,
            reason,
            message: message.into(),
        }],
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_field_the_installed_crd_lacks_names_the_fix() {
        let status = kube::core::Status {
            code: 500,
            message: ".status.instances[0].agentBuild: field not declared in schema".into(),
            ..kube::core::Status::default()
        };
        let e = classify("status")(kube::Error::Api(Box::new(status)));
        assert!(matches!(e, StatusError::StaleCrd { .. }), "{e}");
        assert!(
            e.to_string()
                .contains("kubectl apply --server-side -f crds/")
        );
        let other = kube::core::Status {
            code: 500,
            message: "etcdserver: request timed out".into(),
            ..kube::core::Status::default()
        };
        let e = classify("status")(kube::Error::Api(Box::new(other)));
        assert!(matches!(e, StatusError::Write { .. }), "{e}");
    }
}

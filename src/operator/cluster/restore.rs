//! A cluster bootstrapped from a backup (`spec.bootstrap.restore`): while
//! the restoring instance reports a failed attempt, the cluster is Stalled
//! with reason `RestoreFailed` and the instance's own words (pgBackRest's
//! or PostgreSQL's), and the instance retries by itself. Pure.

use std::collections::BTreeMap;

use super::status::STALLED;
use super::validate::Blocked;
use crate::api::PostgresClusterStatus;
use crate::contract::instance::InstanceReport;
use crate::operator::report::reason::RESTORE_FAILED;
use crate::resources::model::Model;

pub fn blocked(
    model: &Model,
    reports: &BTreeMap<String, InstanceReport>,
    target_primary: &str,
    previous: Option<&PostgresClusterStatus>,
) -> Option<Blocked> {
    model.spec.bootstrap.restore.as_ref()?;
    let Some(report) = reports.get(target_primary) else {
        // Unreachable for now: what was last known stands, so the
        // condition does not flap (nor repeat its Event) on a missed call.
        return previous
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == STALLED))
            .filter(|c| c.status == "True" && c.reason == RESTORE_FAILED)
            .map(|c| Blocked {
                reason: RESTORE_FAILED,
                message: c.message.clone(),
            });
    };
    let restore = report.restore.as_ref()?;
    let error = restore.failing()?;
    let retry = restore
        .retry_in_seconds
        .map(|s| format!("it retries in {s}s"))
        .unwrap_or_else(|| "it is retrying now".into());
    Some(Blocked {
        reason: RESTORE_FAILED,
        message: format!(
            "restoring {target_primary} from the backups of {} failed (attempt {}): {error}; {retry}. Fix the source repository or its credentials Secret (spec.bootstrap.restore.source); a target the backups cannot reach needs a new cluster, as spec.bootstrap is immutable. Nothing was started on a partly restored data directory",
            restore.stanza, restore.attempts
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::restore::{RestorePhase, RestoreReport};
    use crate::resources::model::fixtures::model;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

    fn restoring() -> Model {
        let mut m = model();
        m.spec.bootstrap = serde_json::from_value(serde_json::json!({"restore": {"source": {
            "cluster": "orders",
            "repository": {"s3": {"endpoint": "s3.example", "region": "r", "bucket": "bkt",
                                  "credentials": {"secretName": "keys"}}}}}}))
        .unwrap();
        m
    }

    fn reports(restore: Option<RestoreReport>) -> BTreeMap<String, InstanceReport> {
        BTreeMap::from([(
            "db-1".to_string(),
            InstanceReport {
                name: "db-1".into(),
                restore,
                ..InstanceReport::default()
            },
        )])
    }

    fn report(phase: RestorePhase, error: Option<&str>) -> RestoreReport {
        RestoreReport {
            phase,
            stanza: "orders".into(),
            attempts: 3,
            last_error: error.map(str::to_string),
            retry_in_seconds: Some(40),
        }
    }

    const PGBACKREST: &str =
        "ERROR: [075]: unable to find backup set with stop time less than '2026-12-04 10:00:00+00'";

    #[test]
    fn a_failed_attempt_stalls_the_cluster_with_the_instances_words() {
        let b = blocked(
            &restoring(),
            &reports(Some(report(RestorePhase::Waiting, Some(PGBACKREST)))),
            "db-1",
            None,
        )
        .unwrap();
        assert_eq!(b.reason, "RestoreFailed");
        assert!(b.message.contains(PGBACKREST), "{}", b.message);
        assert!(b.message.contains("orders"), "{}", b.message);
        assert!(b.message.contains("attempt 3"), "{}", b.message);
        assert!(b.message.contains("retries in 40s"), "{}", b.message);
        // The next attempt keeps the cluster Stalled until it succeeds.
        let retrying = report(RestorePhase::Restoring, Some(PGBACKREST));
        assert!(blocked(&restoring(), &reports(Some(retrying)), "db-1", None).is_some());
    }

    #[test]
    fn a_running_or_completed_restore_and_other_clusters_are_not_stalled() {
        for r in [
            None,
            Some(report(RestorePhase::Restoring, None)),
            Some(report(RestorePhase::Recovering, None)),
            Some(report(RestorePhase::Completed, Some("an old failure"))),
        ] {
            assert!(blocked(&restoring(), &reports(r), "db-1", None).is_none());
        }
        let failed = Some(report(RestorePhase::Waiting, Some(PGBACKREST)));
        assert!(blocked(&model(), &reports(failed.clone()), "db-1", None).is_none());
        assert!(
            blocked(&restoring(), &reports(failed), "db-2", None).is_none(),
            "only the instance that bootstraps the cluster restores"
        );
    }

    #[test]
    fn an_unreachable_instance_keeps_the_last_known_stall() {
        let condition = |reason: &str| PostgresClusterStatus {
            conditions: vec![Condition {
                type_: STALLED.into(),
                status: "True".into(),
                reason: reason.into(),
                message: "restoring db-1 … failed".into(),
                observed_generation: Some(1),
                last_transition_time: Time(jiff::Timestamp::UNIX_EPOCH),
            }],
            ..PostgresClusterStatus::default()
        };
        let none = BTreeMap::new();
        let kept = blocked(
            &restoring(),
            &none,
            "db-1",
            Some(&condition(RESTORE_FAILED)),
        )
        .unwrap();
        assert_eq!(kept.message, "restoring db-1 … failed");
        assert!(blocked(&restoring(), &none, "db-1", Some(&condition("InvalidSpec"))).is_none());
        assert!(blocked(&restoring(), &none, "db-1", None).is_none());
    }
}

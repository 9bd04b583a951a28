//! `kubectl capstan switchover`: asks for a planned switchover the
//! declarative way (the `capstan.dev/switchover` annotation, with a fresh
//! token so it is a new request) and follows `status.switchover` until it
//! ends.

use kube::api::{Patch, PatchParams};

use super::{CliError, Connection, Session};
use crate::api::PostgresCluster;
use crate::api::status::InstanceStatus;
use crate::operator::cluster::switchover::{FAILED, is_terminal};
use crate::resources::labels::{ROLE_PRIMARY, ROLE_REPLICA, SWITCHOVER_ANNOTATION};

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// The PostgresCluster.
    pub cluster: String,
    /// The replica that becomes the primary (default: the ready, streaming
    /// replica with the least lag).
    #[arg(long)]
    pub to: Option<String>,
    /// Seconds to wait for the outcome (0: do not wait).
    #[arg(long, default_value_t = 120)]
    pub wait: u64,
    #[command(flatten)]
    pub connection: Connection,
}

/// Whether the cluster can switch over now, and to which instance.
pub fn target(cluster: &PostgresCluster, to: Option<&str>) -> Result<String, CliError> {
    let name = cluster.metadata.name.as_deref().unwrap_or_default();
    let status = cluster.status.as_ref();
    let ready = status
        .into_iter()
        .flat_map(|s| &s.conditions)
        .find(|c| c.type_ == "Ready");
    if ready.is_none_or(|c| c.status != "True") {
        let why = ready
            .map(|c| format!("{}: {}", c.reason, c.message))
            .unwrap_or_else(|| "no status yet".into());
        return Err(CliError::Refused(format!(
            "PostgresCluster {name} is not Ready ({why}); a switchover needs every instance up: wait with `kubectl wait --for=condition=Ready pgc/{name}`"
        )));
    }
    let instances: &[InstanceStatus] = status.map(|s| s.instances.as_slice()).unwrap_or(&[]);
    let names = || {
        instances
            .iter()
            .map(|i| i.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    match to {
        Some(to) => {
            let Some(instance) = instances.iter().find(|i| i.name == to) else {
                return Err(CliError::Refused(format!(
                    "PostgresCluster {name} has no instance {to}; its instances: {}",
                    names()
                )));
            };
            if instance.role == ROLE_PRIMARY {
                return Err(CliError::Refused(format!(
                    "{to} is already the primary of {name}; pick a replica: {}",
                    names()
                )));
            }
            Ok(to.to_string())
        }
        None => instances
            .iter()
            .filter(|i| i.role == ROLE_REPLICA && i.ready)
            .min_by_key(|i| (i.lag_bytes.unwrap_or(i64::MAX), i.name.clone()))
            .map(|i| i.name.clone())
            .ok_or_else(|| {
                CliError::Refused(format!(
                    "PostgresCluster {name} has no ready replica to switch over to (instances: {})",
                    names()
                ))
            }),
    }
}

pub async fn run(args: Args) -> Result<(), CliError> {
    let session = Session::connect(&args.connection).await?;
    let cluster = session.cluster(&args.cluster).await?;
    let to = target(&cluster, args.to.as_deref())?;
    let request = format!("{to}/{}", super::token());
    let patch = serde_json::json!({"metadata": {"annotations": {SWITCHOVER_ANNOTATION: request}}});
    session
        .api::<PostgresCluster>()
        .patch(
            &args.cluster,
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .map_err(|e| session.error(&format!("annotating PostgresCluster {}", args.cluster), e))?;
    println!(
        "switchover of {} to {to} requested ({SWITCHOVER_ANNOTATION}={request})",
        args.cluster
    );
    let api = session.api::<PostgresCluster>();
    let mut last_phase = String::new();
    let mut follow = super::Follow::new(args.wait);
    while follow.next().await? {
        let Ok(cluster) = api.get(&args.cluster).await else {
            continue;
        };
        let Some(s) = cluster
            .status
            .and_then(|s| s.switchover)
            .filter(|s| s.request == request)
        else {
            continue;
        };
        if s.phase != last_phase {
            println!("{}: {}", s.phase, s.message);
            last_phase = s.phase.clone();
        }
        if is_terminal(&s.phase) {
            return if s.phase == FAILED {
                Err(CliError::Failed(format!(
                    "switchover failed: {}",
                    s.message
                )))
            } else {
                Ok(())
            };
        }
    }
    println!(
        "not waiting (--wait 0); follow it with `kubectl capstan status {}`",
        args.cluster
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::status::PostgresClusterStatus;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

    fn instance(name: &str, role: &str, ready: bool, lag: Option<i64>) -> InstanceStatus {
        InstanceStatus {
            name: name.into(),
            role: role.into(),
            ready,
            lag_bytes: lag,
            ..InstanceStatus::default()
        }
    }

    fn cluster(ready: &str, instances: Vec<InstanceStatus>) -> PostgresCluster {
        let mut c = PostgresCluster::new("db", crate::resources::model::fixtures::model().spec);
        c.status = Some(PostgresClusterStatus {
            conditions: vec![Condition {
                type_: "Ready".into(),
                status: ready.into(),
                reason: "Degraded".into(),
                message: "db-3 is not ready".into(),
                last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    jiff::Timestamp::UNIX_EPOCH,
                ),
                observed_generation: None,
            }],
            instances,
            ..PostgresClusterStatus::default()
        });
        c
    }

    fn three() -> Vec<InstanceStatus> {
        vec![
            instance("db-1", ROLE_PRIMARY, true, None),
            instance("db-2", ROLE_REPLICA, true, Some(4096)),
            instance("db-3", ROLE_REPLICA, true, Some(0)),
        ]
    }

    #[test]
    fn the_replica_with_the_least_lag_is_chosen() {
        assert_eq!(target(&cluster("True", three()), None).unwrap(), "db-3");
        let mut i = three();
        i[2].ready = false;
        assert_eq!(target(&cluster("True", i), None).unwrap(), "db-2");
    }

    #[test]
    fn a_named_replica_is_taken_as_is() {
        assert_eq!(
            target(&cluster("True", three()), Some("db-2")).unwrap(),
            "db-2"
        );
    }

    #[test]
    fn bad_requests_name_the_problem_and_the_fix() {
        let e = target(&cluster("True", three()), Some("db-9"))
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "PostgresCluster db has no instance db-9; its instances: db-1, db-2, db-3"
        );
        let e = target(&cluster("True", three()), Some("db-1"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("db-1 is already the primary of db"), "{e}");
        let e = target(&cluster("False", three()), None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("is not Ready (Degraded: db-3 is not ready)")
                && e.contains("kubectl wait --for=condition=Ready pgc/db"),
            "{e}"
        );
        let e = target(
            &cluster("True", vec![instance("db-1", ROLE_PRIMARY, true, None)]),
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("no ready replica"), "{e}");
    }
}

//! `kubectl capstan restart`: asks for instances to be restarted the way a
//! changed pod spec would be (replicas re-created one at a time, each
//! streaming before the next, the primary after a switchover) by putting
//! the `capstan.dev/restart` annotation on their pods, and follows until
//! each asked-for pod was replaced by a ready one.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, Patch, PatchParams};

use super::{CliError, Connection, Session};
use crate::api::{PostgresCluster, PrimaryUpdateMethod};
use crate::resources::labels;

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// The PostgresCluster.
    pub cluster: String,
    /// One instance to restart (default: every instance, the primary last).
    pub instance: Option<String>,
    /// Do not ask before a restart that stops writes.
    #[arg(short, long)]
    pub yes: bool,
    /// Seconds to wait for the restarted pods to be ready (0: do not wait).
    #[arg(long, default_value_t = 600)]
    pub wait: u64,
    #[command(flatten)]
    pub connection: Connection,
}

/// What a restart of `pods` (name → uid) will do, for the user.
#[derive(Debug, PartialEq)]
pub struct Plan {
    /// Pods to annotate, name → uid of the pod asked to restart.
    pub pods: BTreeMap<String, String>,
    /// Writes stop while the primary restarts in place.
    pub stops_writes: bool,
    /// The primary waits for a switchover request (supervised updates).
    pub awaits_switchover: bool,
}

/// Which pods to restart, and what that means for writes.
pub fn plan(
    cluster: &PostgresCluster,
    pods: &[Pod],
    instance: Option<&str>,
) -> Result<Plan, CliError> {
    let name = cluster.metadata.name.as_deref().unwrap_or_default();
    let named: BTreeMap<String, String> = pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| Some((p.metadata.name.clone()?, p.metadata.uid.clone()?)))
        .collect();
    if named.is_empty() {
        return Err(CliError::Refused(format!(
            "PostgresCluster {name} has no instance pod to restart yet"
        )));
    }
    let pods: BTreeMap<String, String> = match instance {
        Some(i) => match named.get(i) {
            Some(uid) => BTreeMap::from([(i.to_string(), uid.clone())]),
            None => {
                return Err(CliError::Refused(format!(
                    "PostgresCluster {name} has no instance {i}; its instances: {}",
                    named.keys().cloned().collect::<Vec<_>>().join(", ")
                )));
            }
        },
        None => named.clone(),
    };
    let primary = cluster
        .status
        .as_ref()
        .and_then(|s| s.current_primary.as_deref());
    let touches_primary = primary.is_some_and(|p| pods.contains_key(p));
    let strategy = &cluster.spec.update_strategy;
    let in_place =
        named.len() == 1 || strategy.primary_update_method == PrimaryUpdateMethod::Restart;
    Ok(Plan {
        stops_writes: touches_primary && in_place,
        awaits_switchover: touches_primary && !in_place && strategy.supervised,
        pods,
    })
}

pub async fn run(args: Args) -> Result<(), CliError> {
    let session = Session::connect(&args.connection).await?;
    let cluster = session.cluster(&args.cluster).await?;
    let pods_api = session.api::<Pod>();
    let selector = labels::to_selector(&labels::instances_selector(&args.cluster));
    let list = |what: &'static str| {
        let api = pods_api.clone();
        let selector = selector.clone();
        let session = &session;
        async move {
            api.list(&ListParams::default().labels(&selector))
                .await
                .map(|l| l.items)
                .map_err(|e| session.error(what, e))
        }
    };
    let pods = list("listing instance pods").await?;
    let plan = plan(&cluster, &pods, args.instance.as_deref())?;
    if plan.stops_writes {
        super::confirm(
            &format!(
                "restarting the primary of {} in place stops writes until it is back",
                args.cluster
            ),
            args.yes,
        )?;
    }
    let asked_at = jiff::Timestamp::now().to_string();
    let patch =
        serde_json::json!({"metadata": {"annotations": {labels::RESTART_ANNOTATION: asked_at}}});
    for pod in plan.pods.keys() {
        pods_api
            .patch(pod, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|e| session.error(&format!("annotating pod {pod}"), e))?;
    }
    println!(
        "restart of {} requested ({}={asked_at})",
        plan.pods.keys().cloned().collect::<Vec<_>>().join(", "),
        labels::RESTART_ANNOTATION
    );
    if plan.awaits_switchover {
        println!(
            "the primary waits for a switchover request (updateStrategy.supervised): `kubectl capstan switchover {}`",
            args.cluster
        );
    }
    let mut pending = plan.pods.clone();
    let mut follow = super::Follow::new(args.wait);
    while follow.next().await? {
        let now = list("listing instance pods").await?;
        pending.retain(|name, uid| {
            let replaced = now.iter().any(|p| {
                p.metadata.name.as_deref() == Some(name.as_str())
                    && p.metadata.uid.as_deref() != Some(uid.as_str())
                    && crate::operator::cluster::operation::is_ready(p)
            });
            if replaced {
                println!("{name}: restarted, ready");
            }
            !replaced
        });
        if pending.is_empty() {
            return Ok(());
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

    fn pod(name: &str) -> Pod {
        let mut p = Pod::default();
        p.metadata.name = Some(name.into());
        p.metadata.uid = Some(format!("uid-{name}"));
        p
    }

    fn cluster(pods: usize) -> (PostgresCluster, Vec<Pod>) {
        let mut c = PostgresCluster::new("db", crate::resources::model::fixtures::model().spec);
        c.status = Some(PostgresClusterStatus {
            current_primary: Some("db-1".into()),
            ..PostgresClusterStatus::default()
        });
        let pods = (1..=pods).map(|i| pod(&format!("db-{i}"))).collect();
        (c, pods)
    }

    #[test]
    fn a_replica_restarts_alone_and_writes_go_on() {
        let (c, pods) = cluster(3);
        let p = plan(&c, &pods, Some("db-2")).unwrap();
        assert_eq!(p.pods, BTreeMap::from([("db-2".into(), "uid-db-2".into())]));
        assert!(!p.stops_writes && !p.awaits_switchover);
    }

    #[test]
    fn the_whole_cluster_switches_over_unless_it_cannot() {
        let (mut c, pods) = cluster(3);
        let p = plan(&c, &pods, None).unwrap();
        assert_eq!(p.pods.len(), 3);
        assert!(!p.stops_writes);
        c.spec.update_strategy.supervised = true;
        assert!(plan(&c, &pods, None).unwrap().awaits_switchover);
        c.spec.update_strategy.primary_update_method = PrimaryUpdateMethod::Restart;
        assert!(plan(&c, &pods, Some("db-1")).unwrap().stops_writes);
        let (single, pods) = cluster(1);
        assert!(plan(&single, &pods, None).unwrap().stops_writes);
    }

    #[test]
    fn an_unknown_instance_is_named_with_the_ones_there_are() {
        let (c, pods) = cluster(2);
        let e = plan(&c, &pods, Some("db-7")).unwrap_err().to_string();
        assert_eq!(
            e,
            "PostgresCluster db has no instance db-7; its instances: db-1, db-2"
        );
    }
}

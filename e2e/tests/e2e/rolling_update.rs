//! Rolling updates under load. `pgbench -c 8` runs through `<name>-pooler`
//! while `spec.resources` changes: every instance pod is re-created,
//! replicas first, the primary moved by a switchover, and pgbench sees no
//! failed transaction and no aborted client. With
//! `updateStrategy.supervised: true` the replicas are updated and nothing
//! touches the primary until a switchover is requested.
//!
//! Runs on the harness and on a real cluster. Needs `pgbench`
//! (`$CAPSTAN_PGBENCH` or PostgreSQL 15's from Debian).

use std::time::{Duration, Instant};

use capstan::api::PostgresCluster;
use capstan_e2e::E2eError;
use capstan_e2e::ha::{self, HaCluster, SWITCHOVER_WITHIN, ha_example};
use capstan_e2e::harness::wait_for;
use capstan_e2e::load::{Pgbench, pgbench_binary};
use capstan_e2e::target::{Target, fail};

/// pgbench runs this long: the whole rollout happens inside it.
const RUN: Duration = Duration::from_secs(150);
/// The spec changes after this much load.
const CHANGE_AFTER: Duration = Duration::from_secs(5);
/// Every pod re-created and the cluster Ready again.
const ROLLOUT_WITHIN: Duration = Duration::from_secs(130);
/// The new CPU request, printed back from every re-created pod.
const CPU: &str = "150m";

/// Instance pods that run the new CPU request and are ready.
async fn updated_pods(target: &Target, ha: &HaCluster) -> Result<Vec<String>, E2eError> {
    Ok(ha
        .instance_pods(target)
        .await?
        .into_iter()
        .filter(|p| {
            let cpu = p.spec.as_ref().is_some_and(|s| {
                s.containers.iter().any(|c| {
                    c.resources
                        .as_ref()
                        .and_then(|r| r.requests.as_ref())
                        .and_then(|r| r.get("cpu"))
                        .is_some_and(|q| q.0 == CPU)
                })
            });
            let ready = p
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            cpu && ready
        })
        .filter_map(|p| p.metadata.name)
        .collect())
}

async fn change_resources(target: &Target, ha: &HaCluster) -> Result<(), E2eError> {
    let patch = serde_json::json!({"spec": {"resources": {"requests": {"cpu": CPU, "memory": "1Gi"}, "limits": {"memory": "1Gi"}}}});
    capstan_e2e::cluster::merge_patch(&target.client(), &ha.ns, &ha.name, &patch).await
}

fn operation(c: &PostgresCluster) -> Option<(String, String)> {
    let o = c.status.as_ref()?.operation.as_ref()?;
    Some((o.type_.clone(), o.message.clone()))
}

async fn scenario(target: &mut Target, ns: &str, supervised: bool) -> Result<(), E2eError> {
    let Some(pgbench) = pgbench_binary() else {
        eprintln!("skipped: pgbench not found (install postgresql-15 or set CAPSTAN_PGBENCH)");
        return Ok(());
    };
    let mut spec = ha_example("ha-cluster.yaml", ns)?;
    spec.spec.update_strategy.supervised = supervised;
    let ha = HaCluster::create(target, &spec).await?;
    let c = ha.get(target).await?;
    let old_primary = ha::current_primary(&c)
        .cloned()
        .ok_or_else(|| E2eError::Check("no current primary".into()))?;
    let before = ha.pod_uids(target).await?;
    assert_eq!(before.len(), 3, "{before:?}");

    let bench = Pgbench::new(&pgbench, &ha, &ha.pooler(target).await?)?;
    bench.init(1).await?;
    let run = bench.start(8, RUN)?;
    let started = Instant::now();
    tokio::time::sleep(CHANGE_AFTER).await;
    change_resources(target, &ha).await?;
    eprintln!(
        "[{ns}] changed spec.resources (cpu {CPU}) under pgbench -c 8; supervised: {supervised}"
    );

    if supervised {
        let waiting = wait_for(
            "the primary to wait for a switchover request",
            ROLLOUT_WITHIN,
            Duration::from_millis(500),
            || async {
                let c = ha.get(target).await.ok()?;
                let (type_, message) = operation(&c)?;
                (type_ == "RollingUpdate" && message.contains("waits for a switchover request"))
                    .then_some(message)
            },
        )
        .await?;
        eprintln!(
            "[{ns}] after {:.1}s: {waiting}",
            started.elapsed().as_secs_f64()
        );
        // Nothing touches the primary meanwhile.
        tokio::time::sleep(Duration::from_secs(10)).await;
        let now = ha.pod_uids(target).await?;
        assert_eq!(
            now.get(&old_primary),
            before.get(&old_primary),
            "the primary's pod was re-created before the switchover request"
        );
        let c = ha.get(target).await?;
        assert_eq!(ha::current_primary(&c), Some(&old_primary));
        let updated = updated_pods(target, &ha).await?;
        assert_eq!(updated.len(), 2, "both replicas updated: {updated:?}");
        let to = updated[0].clone();
        let request = format!("{to}/e2e-{}", std::process::id());
        ha.request_switchover(target, &request).await?;
        ha.wait_switchover(target, &request, SWITCHOVER_WITHIN)
            .await?;
        eprintln!(
            "[{ns}] switchover {old_primary} -> {to} at {:.1}s",
            started.elapsed().as_secs_f64()
        );
    }

    let done = wait_for(
        "every instance pod re-created and the cluster Ready",
        ROLLOUT_WITHIN,
        Duration::from_millis(500),
        || async {
            let updated = updated_pods(target, &ha).await.ok()?;
            let c = ha.get(target).await.ok()?;
            let ready = capstan_e2e::cluster::condition(&c, "Ready").as_deref() == Some("True");
            (updated.len() == 3 && ready && operation(&c).is_none()).then_some(c)
        },
    )
    .await?;
    let rolled_at = started.elapsed();
    let after = ha.pod_uids(target).await?;
    for (name, uid) in &before {
        assert_ne!(after.get(name), Some(uid), "{name} was not re-created");
    }
    let new_primary = ha::current_primary(&done).cloned().unwrap_or_default();
    assert_ne!(new_primary, old_primary, "the primary moved");
    let switchover = ha::switchover(&done)
        .cloned()
        .ok_or_else(|| E2eError::Check("no switchover recorded".into()))?;
    assert_eq!(switchover.phase, "Completed", "{switchover:?}");
    assert_eq!(switchover.from, old_primary);
    eprintln!(
        "[{ns}] rollout done at {:.1}s: {old_primary} -> {new_primary}; clients held {:?} ms",
        rolled_at.as_secs_f64(),
        switchover.client_hold_ms
    );
    assert!(
        rolled_at < RUN,
        "the rollout finished inside the pgbench run"
    );

    let report = run.finish(RUN + Duration::from_secs(60)).await?;
    eprintln!(
        "[{ns}] pgbench: {} transactions, {} failed, {} clients aborted, longest transaction {:.0} ms",
        report.processed, report.failed, report.aborted_clients, report.max_latency_ms
    );
    assert!(
        report.failed == 0 && report.aborted_clients == 0 && !report.run_aborted,
        "pgbench saw client errors across the rolling update: {:?}\n{}",
        report.errors,
        report.output
    );
    assert!(report.processed > 0, "pgbench ran: {}", report.output);
    ha.delete(target).await
}

fn run(supervised: bool) {
    capstan_e2e::scenario(move || async move {
        let mut target = Target::from_env().await.expect("e2e target");
        let kind = if supervised { "supervised" } else { "auto" };
        let ns = format!("e2e-rolling-{kind}-{}", std::process::id());
        if let Err(e) = scenario(&mut target, &ns, supervised).await {
            fail(&target, &ns, e).await;
        }
    });
}

#[test]
fn a_rolling_update_moves_the_primary_by_switchover_with_no_client_error() {
    run(false);
}

#[test]
fn a_supervised_rolling_update_waits_for_the_switchover_request() {
    run(true);
}

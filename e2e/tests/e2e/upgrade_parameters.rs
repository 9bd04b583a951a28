//! A setting that needs a restart, under load. `pgbench -c 8` runs through
//! `<name>-pooler` while `spec.postgres.parameters.shared_buffers` changes:
//! PostgreSQL reloads and reports `pending_restart`, the status shows it
//! per instance, and a rolling restart takes it (replicas re-created one at
//! a time, the primary moved by a switchover, the demoted one restarted as
//! a standby). Every instance ends on the new value, nothing pending, and
//! pgbench sees no failed transaction and no aborted client.
//!
//! `lowering_max_connections_restarts_the_primary_first`: a standby may not
//! run below its primary's `max_connections`, so lowering it restarts the
//! primary first (its pod re-created while the replicas' are untouched),
//! then the replicas; every instance ends on the new value.
//!
//! `a_value_postgres_refuses_changes_nothing`: `work_mem: lots` is refused
//! by PostgreSQL (asked by each instance manager before it writes a file):
//! the cluster is `Stalled` (`ParametersRefused`) with PostgreSQL's words,
//! no pod is re-created, every instance stays ready on its old value; a
//! valid value clears it and is applied. Then `shared_buffers: 4000000MB`
//! (valid, but more memory than any node has): the first replica restarted
//! with it cannot start, goes back to the value it ran with and says so;
//! the cluster is `Stalled` with PostgreSQL's words, no other pod is
//! re-created, and setting the value back settles it.
//!
//! Runs on the harness and on a real cluster. Needs `pgbench`
//! (`$CAPSTAN_PGBENCH` or PostgreSQL 15's from Debian).

use std::time::{Duration, Instant};

use capstan::api::PostgresCluster;
use capstan_e2e::E2eError;
use capstan_e2e::ha::{self, As, HaCluster, ha_example};
use capstan_e2e::harness::wait_for;
use capstan_e2e::load::{Pgbench, pgbench_binary};
use capstan_e2e::sql;
use capstan_e2e::target::{Target, fail};

const RUN: Duration = Duration::from_secs(150);
const CHANGE_AFTER: Duration = Duration::from_secs(5);
const ROLLOUT_WITHIN: Duration = Duration::from_secs(130);
/// The example runs 256MB.
const SHARED_BUFFERS: &str = "192MB";

async fn set_shared_buffers(target: &Target, ha: &HaCluster) -> Result<(), E2eError> {
    let patch = serde_json::json!({"spec": {"postgres": {"parameters": {"shared_buffers": SHARED_BUFFERS}}}});
    capstan_e2e::cluster::merge_patch(&target.client(), &ha.ns, &ha.name, &patch).await
}

/// `SHOW <setting>` on every instance, by name.
async fn show_everywhere(
    target: &Target,
    ha: &HaCluster,
    instances: &[String],
    setting: &str,
) -> Result<Vec<(String, String)>, E2eError> {
    let mut out = vec![];
    for name in instances {
        let admin = ha
            .connect(&ha.pod(target, name).await?, As::Superuser)
            .await?;
        out.push((
            name.clone(),
            sql::value(&admin, &format!("SHOW {setting}")).await?,
        ));
    }
    Ok(out)
}

/// Ready, no operation, no instance waiting for a restart.
fn settled(c: &PostgresCluster) -> bool {
    capstan_e2e::cluster::condition(c, "Ready").as_deref() == Some("True")
        && c.status.as_ref().is_some_and(|s| s.operation.is_none())
        && pending(c).is_empty()
}

fn pending(c: &PostgresCluster) -> Vec<String> {
    c.status
        .iter()
        .flat_map(|s| &s.instances)
        .filter(|i| i.pending_restart)
        .map(|i| i.name.clone())
        .collect()
}

async fn scenario(target: &mut Target, ns: &str) -> Result<(), E2eError> {
    let Some(pgbench) = pgbench_binary() else {
        eprintln!("skipped: pgbench not found (install postgresql-15 or set CAPSTAN_PGBENCH)");
        return Ok(());
    };
    let spec = ha_example("ha-cluster.yaml", ns)?;
    let ha = HaCluster::create(target, &spec).await?;
    let c = ha.get(target).await?;
    let old_primary = ha::current_primary(&c)
        .cloned()
        .ok_or_else(|| E2eError::Check("no current primary".into()))?;
    let instances = ha::instance_names(&c);
    assert_eq!(instances.len(), 3, "{}", ha::status_summary(&c));

    let bench = Pgbench::new(&pgbench, &ha, &ha.pooler(target).await?)?;
    bench.init(1).await?;
    let run = bench.start(8, RUN)?;
    let started = Instant::now();
    tokio::time::sleep(CHANGE_AFTER).await;
    set_shared_buffers(target, &ha).await?;
    eprintln!(
        "[{ns}] spec.postgres.parameters.shared_buffers -> {SHARED_BUFFERS} under pgbench -c 8"
    );

    // PostgreSQL says it waits for a restart; the status shows it.
    let waiting = wait_for(
        "an instance with pendingRestart in status",
        Duration::from_secs(60),
        Duration::from_millis(250),
        || async {
            let c = ha.get(target).await.ok()?;
            let p = pending(&c);
            (!p.is_empty()).then_some(p)
        },
    )
    .await?;
    eprintln!(
        "[{ns}] pendingRestart on {waiting:?} after {:.1}s",
        started.elapsed().as_secs_f64()
    );

    let done = wait_for(
        "every instance on the new shared_buffers, nothing pending, the cluster Ready",
        ROLLOUT_WITHIN,
        Duration::from_millis(500),
        || async {
            let c = ha.get(target).await.ok()?;
            if !settled(&c) {
                return None;
            }
            let values = show_everywhere(target, &ha, &instances, "shared_buffers")
                .await
                .ok()?;
            values
                .iter()
                .all(|(_, v)| v == SHARED_BUFFERS)
                .then_some((c, values))
        },
    )
    .await;
    let (c, values) = match done {
        Ok(found) => found,
        Err(e) => {
            let values = show_everywhere(target, &ha, &instances, "shared_buffers").await;
            return Err(E2eError::Check(format!(
                "{e}; shared_buffers now {values:?}"
            )));
        }
    };
    let rolled_at = started.elapsed();
    let new_primary = ha::current_primary(&c).cloned().unwrap_or_default();
    eprintln!(
        "[{ns}] restarted at {:.1}s: {values:?}; primary {old_primary} -> {new_primary}",
        rolled_at.as_secs_f64()
    );
    assert_ne!(new_primary, old_primary, "the primary moved by switchover");
    let switchover = ha::switchover(&c)
        .cloned()
        .ok_or_else(|| E2eError::Check("no switchover recorded".into()))?;
    assert_eq!(switchover.phase, "Completed", "{switchover:?}");

    let report = run.finish(RUN + Duration::from_secs(60)).await?;
    eprintln!(
        "[{ns}] pgbench: {} transactions, {} failed, {} clients aborted, longest transaction {:.0} ms; clients held {:?} ms at the switchover",
        report.processed,
        report.failed,
        report.aborted_clients,
        report.max_latency_ms,
        switchover.client_hold_ms
    );
    assert!(
        report.failed == 0 && report.aborted_clients == 0 && !report.run_aborted,
        "pgbench saw client errors across the rolling restart: {:?}\n{}",
        report.errors,
        report.output
    );
    assert!(report.processed > 0, "pgbench ran: {}", report.output);
    ha.delete(target).await
}

async fn lowered(target: &mut Target, ns: &str) -> Result<(), E2eError> {
    let spec = ha_example("ha-cluster.yaml", ns)?;
    let ha = HaCluster::create(target, &spec).await?;
    let target = &*target;
    let c = ha.get(target).await?;
    let primary = ha::current_primary(&c)
        .cloned()
        .ok_or_else(|| E2eError::Check("no current primary".into()))?;
    let instances = ha::instance_names(&c);
    let before = ha.pod_uids(target).await?;
    // The example runs 200.
    let patch =
        serde_json::json!({"spec": {"postgres": {"parameters": {"max_connections": "150"}}}});
    capstan_e2e::cluster::merge_patch(&target.client(), &ha.ns, &ha.name, &patch).await?;
    let started = Instant::now();
    let first = wait_for(
        "the first instance pod re-created",
        ROLLOUT_WITHIN,
        Duration::from_millis(100),
        || async {
            let now = ha.pod_uids(target).await.ok()?;
            let changed: Vec<String> = before
                .iter()
                .filter(|(n, uid)| now.get(n.as_str()) != Some(uid))
                .map(|(n, _)| n.clone())
                .collect();
            (!changed.is_empty()).then_some(changed)
        },
    )
    .await?;
    eprintln!(
        "[{ns}] max_connections 200 -> 150: first re-created {first:?} after {:.1}s (primary {primary})",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(first, vec![primary.clone()], "the primary goes first");
    let values = wait_for(
        "every instance on max_connections 150, nothing pending, Ready",
        ROLLOUT_WITHIN,
        Duration::from_millis(500),
        || async {
            let c = ha.get(target).await.ok()?;
            if !settled(&c) {
                return None;
            }
            let values = show_everywhere(target, &ha, &instances, "max_connections")
                .await
                .ok()?;
            values.iter().all(|(_, v)| v == "150").then_some(values)
        },
    )
    .await?;
    let c = ha.get(target).await?;
    eprintln!(
        "[{ns}] every instance on {values:?} after {:.1}s; primary {:?}",
        started.elapsed().as_secs_f64(),
        ha::current_primary(&c)
    );
    ha.delete(target).await
}

async fn refused(target: &mut Target, ns: &str) -> Result<(), E2eError> {
    let spec = ha_example("ha-cluster.yaml", ns)?;
    let ha = HaCluster::create(target, &spec).await?;
    let target = &*target;
    let uids = ha.pod_uids(target).await?;
    let stalled = |c: &PostgresCluster| {
        c.status.as_ref()?.conditions.iter().find_map(|k| {
            (k.type_ == "Stalled" && k.status == "True")
                .then(|| (k.reason.clone(), k.message.clone()))
        })
    };
    let started = Instant::now();
    let patch = serde_json::json!({"spec": {"postgres": {"parameters": {"work_mem": "lots"}}}});
    capstan_e2e::cluster::merge_patch(&target.client(), &ha.ns, &ha.name, &patch).await?;
    let (reason, message) = wait_for(
        "Stalled with ParametersRefused",
        ROLLOUT_WITHIN,
        Duration::from_millis(500),
        || async { stalled(&ha.get(target).await.ok()?) },
    )
    .await?;
    eprintln!(
        "[{ns}] refused {:.1}s after the patch: {reason}: {message}",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(reason, "ParametersRefused");
    assert!(
        message.contains("invalid value for parameter \"work_mem\": \"lots\""),
        "{message}"
    );
    let c = ha.get(target).await?;
    assert_eq!(
        c.status.as_ref().map(|s| s.ready_instances),
        Some(3),
        "{}",
        ha::status_summary(&c)
    );
    assert_eq!(ha.pod_uids(target).await?, uids, "no pod re-created");
    let primary = ha.connect(&ha.rw(target).await?, As::Superuser).await?;
    assert_eq!(sql::value(&primary, "SHOW work_mem").await?, "8MB");

    let patch = serde_json::json!({"spec": {"postgres": {"parameters": {"work_mem": "16MB"}}}});
    capstan_e2e::cluster::merge_patch(&target.client(), &ha.ns, &ha.name, &patch).await?;
    wait_for(
        "not Stalled, work_mem 16MB on the primary",
        ROLLOUT_WITHIN,
        Duration::from_millis(500),
        || async {
            let c = ha.get(target).await.ok()?;
            let primary = ha
                .connect(&ha.rw(target).await.ok()?, As::Superuser)
                .await
                .ok()?;
            let value = sql::value(&primary, "SHOW work_mem").await.ok()?;
            (stalled(&c).is_none() && value == "16MB").then_some(())
        },
    )
    .await?;
    assert_eq!(ha.pod_uids(target).await?, uids, "no pod re-created");

    // Valid for `postgres -C`, but no node has that much memory: the first
    // replica restarted with it goes back to the value it ran with, and no
    // other instance is restarted into it.
    let started = Instant::now();
    let primary_name = ha::current_primary(&ha.get(target).await?)
        .cloned()
        .unwrap_or_default();
    let patch =
        serde_json::json!({"spec": {"postgres": {"parameters": {"shared_buffers": "4000000MB"}}}});
    capstan_e2e::cluster::merge_patch(&target.client(), &ha.ns, &ha.name, &patch).await?;
    let (reason, message) = wait_for(
        "Stalled: an instance cannot start with the value",
        ROLLOUT_WITHIN,
        Duration::from_millis(500),
        || async {
            stalled(&ha.get(target).await.ok()?).filter(|(_, m)| m.contains("cannot start"))
        },
    )
    .await?;
    eprintln!(
        "[{ns}] rolled back {:.1}s after the patch: {reason}: {message}",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(reason, "ParametersRefused");
    assert!(message.contains("shared memory"), "{message}");
    wait_for(
        "every instance ready",
        ROLLOUT_WITHIN,
        Duration::from_millis(500),
        || async {
            let c = ha.get(target).await.ok()?;
            (c.status.as_ref()?.ready_instances == 3).then_some(())
        },
    )
    .await?;
    // Some seconds more: nothing else is restarted into the value.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let now = ha.pod_uids(target).await?;
    let recreated: Vec<&String> = now
        .iter()
        .filter(|(name, uid)| uids.get(*name) != Some(*uid))
        .map(|(name, _)| name)
        .collect();
    assert_eq!(recreated.len(), 1, "one pod tried it: {recreated:?}");
    assert_ne!(recreated[0], &primary_name, "a replica tried it first");
    for (name, value) in show_everywhere(
        target,
        &ha,
        &ha::instance_names(&ha.get(target).await?),
        "shared_buffers",
    )
    .await?
    {
        assert_eq!(value, "256MB", "{name} runs the value it had");
    }
    let patch =
        serde_json::json!({"spec": {"postgres": {"parameters": {"shared_buffers": "256MB"}}}});
    capstan_e2e::cluster::merge_patch(&target.client(), &ha.ns, &ha.name, &patch).await?;
    wait_for(
        "settled on 256MB, not Stalled",
        ROLLOUT_WITHIN,
        Duration::from_millis(500),
        || async {
            let c = ha.get(target).await.ok()?;
            (stalled(&c).is_none() && settled(&c)).then_some(())
        },
    )
    .await?;
    ha.delete(target).await
}

#[test]
fn a_value_postgres_refuses_changes_nothing() {
    capstan_e2e::scenario(|| async {
        let mut target = Target::from_env().await.expect("e2e target");
        let ns = format!("e2e-refused-{}", std::process::id());
        if let Err(e) = refused(&mut target, &ns).await {
            fail(&target, &ns, e).await;
        }
    });
}

#[test]
fn lowering_max_connections_restarts_the_primary_first() {
    capstan_e2e::scenario(|| async {
        let mut target = Target::from_env().await.expect("e2e target");
        let ns = format!("e2e-lowered-{}", std::process::id());
        if let Err(e) = lowered(&mut target, &ns).await {
            fail(&target, &ns, e).await;
        }
    });
}

#[test]
fn a_setting_that_needs_a_restart_rolls_with_no_client_error() {
    capstan_e2e::scenario(|| async {
        let mut target = Target::from_env().await.expect("e2e target");
        let ns = format!("e2e-parameters-{}", std::process::id());
        if let Err(e) = scenario(&mut target, &ns).await {
            fail(&target, &ns, e).await;
        }
    });
}

//! A new PostgreSQL image is tried in a throwaway pod before any instance
//! gets it, on the harness or a real cluster (`examples/ha-cluster.yaml`,
//! PostgreSQL 17):
//!
//! 1. an image of another major (`postgres:15-bookworm`) → `Stalled`
//!    (`ImageCheckFailed`) quoting the image's own version, no instance pod
//!    re-created, every instance still on its image, the check pod gone;
//! 2. a major upgrade to 18 whose image is a 17 → the same, before anything
//!    stops: no `status.upgrade`, no pod touched, writes go on;
//! 3. back to 17 with another image of 17 (`postgres:17-trixie`) → the
//!    check passes and the rolling update gives every instance the new
//!    image, with no failed write through the pooler.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use capstan::api::PostgresCluster;
use capstan::resources::labels;
use capstan_e2e::E2eError;
use capstan_e2e::ha::{self, HaCluster, ha_example};
use capstan_e2e::harness::wait_for;
use capstan_e2e::load::{Writer, WriterOptions};
use capstan_e2e::target::{Target, fail};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::ListParams;

const WITHIN: Duration = Duration::from_secs(180);
const ROLLED_WITHIN: Duration = Duration::from_secs(300);
const WRONG_MAJOR: &str = "docker.io/library/postgres:15-bookworm";
const OTHER_17: &str = "docker.io/library/postgres:17-trixie";

fn stalled(c: &PostgresCluster) -> Option<(String, String)> {
    c.status.as_ref()?.conditions.iter().find_map(|k| {
        (k.type_ == "Stalled" && k.status == "True").then(|| (k.reason.clone(), k.message.clone()))
    })
}

async fn patch(
    target: &Target,
    ha: &HaCluster,
    postgres: serde_json::Value,
) -> Result<(), E2eError> {
    let patch = serde_json::json!({"spec": {"postgres": postgres}});
    capstan_e2e::cluster::merge_patch(&target.client(), &ha.ns, &ha.name, &patch).await
}

/// Instance pod → the image of its `postgres` container.
async fn images(target: &Target, ha: &HaCluster) -> Result<BTreeMap<String, String>, E2eError> {
    Ok(ha
        .instance_pods(target)
        .await?
        .into_iter()
        .filter_map(|p| {
            let image = p
                .spec?
                .containers
                .into_iter()
                .find(|c| c.name == "postgres")?
                .image?;
            Some((p.metadata.name?, image))
        })
        .collect())
}

async fn check_pods(target: &Target, ha: &HaCluster) -> Result<usize, E2eError> {
    let api: Api<Pod> = Api::namespaced(target.client(), &ha.ns);
    let selector = labels::to_selector(&labels::image_check_selector(&ha.name));
    api.list(&ListParams::default().labels(&selector))
        .await
        .map(|l| l.items.len())
        .map_err(|e| E2eError::Kube("list image-check pods".into(), e))
}

/// Waits for `Stalled` with a message naming `about` (the check of this
/// patch, not of an earlier one), then checks that nothing moved; returns
/// the condition's message.
async fn refused(
    target: &Target,
    ha: &HaCluster,
    about: &str,
    uids: &BTreeMap<String, String>,
    running: &BTreeMap<String, String>,
) -> Result<String, E2eError> {
    let started = Instant::now();
    let (reason, message) = wait_for(
        &format!("Stalled about {about}"),
        WITHIN,
        Duration::from_millis(200),
        || async {
            stalled(&ha.get(target).await.ok()?).filter(|(_, message)| message.contains(about))
        },
    )
    .await?;
    eprintln!(
        "[{}] refused {:.1}s after the patch: {reason}: {message}",
        ha.ns,
        started.elapsed().as_secs_f64()
    );
    assert_eq!(reason, "ImageCheckFailed");
    let c = ha.get(target).await?;
    let status = c.status.clone().unwrap_or_default();
    let check = status.image_check.clone().expect("status.imageCheck");
    assert!(!check.passed, "{check:?}");
    assert!(
        status.upgrade.is_none(),
        "no upgrade started: {:?}",
        status.upgrade
    );
    assert_eq!(status.postgres_version, Some(17));
    wait_for(
        "the image-check pod deleted",
        Duration::from_secs(60),
        Duration::from_millis(500),
        || async { (check_pods(target, ha).await.ok()? == 0).then_some(()) },
    )
    .await?;
    assert_eq!(
        &ha.pod_uids(target).await?,
        uids,
        "no instance pod re-created"
    );
    assert_eq!(
        &images(target, ha).await?,
        running,
        "every instance keeps its image"
    );
    assert_eq!(status.ready_instances, 3, "{}", ha::status_summary(&c));
    Ok(message)
}

async fn scenario(target: &mut Target, ns: &str) -> Result<(), E2eError> {
    let spec = ha_example("ha-cluster.yaml", ns)?;
    assert_eq!(spec.spec.postgres.version, 17);
    let ha = HaCluster::create(target, &spec).await?;
    let target = &*target;
    let uids = ha.pod_uids(target).await?;
    let running = images(target, &ha).await?;
    assert_eq!(uids.len(), 3);

    // 1. Another major's image for the running major.
    patch(target, &ha, serde_json::json!({"image": WRONG_MAJOR})).await?;
    let message = refused(target, &ha, WRONG_MAJOR, &uids, &running).await?;
    assert!(
        message.contains("PostgreSQL 15") && message.contains(WRONG_MAJOR),
        "{message}"
    );

    // 2. A major upgrade whose image is still a 17: nothing stops.
    let writer = Writer::start(&ha, &ha.pooler(target).await?, WriterOptions::default());
    patch(
        target,
        &ha,
        serde_json::json!({"version": 18, "image": running.values().next().cloned()}),
    )
    .await?;
    let message = refused(target, &ha, "for PostgreSQL 18", &uids, &running).await?;
    assert!(
        message.contains("PostgreSQL 17") && message.contains("spec.postgres.version back to 17"),
        "{message}"
    );
    let log = writer.stop().await;
    eprintln!(
        "[{ns}] writes during the refused upgrade: {} acknowledged, {} failed",
        log.acks.len(),
        log.failures.len()
    );
    assert!(log.failures.is_empty(), "{:?}", log.failures);

    // 3. Another image of 17: checked, then rolled out with no failed write.
    let started = Instant::now();
    let writer = Writer::start(
        &ha,
        &ha.pooler(target).await?,
        WriterOptions {
            start_after: log.acks.iter().map(|a| a.n).max().unwrap_or_default(),
            ..WriterOptions::default()
        },
    );
    patch(
        target,
        &ha,
        serde_json::json!({"version": 17, "image": OTHER_17}),
    )
    .await?;
    wait_for(
        "every instance on the new image, Ready, not Stalled",
        ROLLED_WITHIN,
        Duration::from_millis(500),
        || async {
            let c = ha.get(target).await.ok()?;
            let all = images(target, &ha).await.ok()?;
            let ready = c.status.as_ref().is_some_and(|s| s.ready_instances == 3);
            (ready
                && stalled(&c).is_none()
                && all.len() == 3
                && all.values().all(|i| i == OTHER_17))
            .then_some(())
        },
    )
    .await?;
    let rolled = started.elapsed();
    let c = ha.wait_ready(target, Duration::from_secs(120)).await?;
    let check = c.status.as_ref().and_then(|s| s.image_check.clone());
    assert!(
        check
            .as_ref()
            .is_some_and(|k| k.passed && k.image == OTHER_17 && k.major == 17),
        "{check:?}"
    );
    let log = writer.stop().await;
    eprintln!(
        "[{ns}] new image of 17 checked and rolled out in {:.1}s ({}); writes: {} acknowledged, {} failed",
        rolled.as_secs_f64(),
        check.map(|k| k.message).unwrap_or_default(),
        log.acks.len(),
        log.failures.len()
    );
    assert!(log.failures.is_empty(), "{:?}", log.failures);
    ha.delete(target).await
}

#[test]
fn a_new_image_is_checked_before_any_instance_gets_it() {
    capstan_e2e::scenario(|| async {
        let mut target = Target::from_env().await.expect("e2e target");
        let ns = format!("e2e-image-check-{}", std::process::id());
        if let Err(e) = scenario(&mut target, &ns).await {
            fail(&target, &ns, e).await;
        }
    });
}

//! Certificates and the CA replaced on a running cluster, under load.
//!
//! `spec.tls.certificates` gives minutes-long lifetimes (certificates 2m,
//! renewed 1m ahead; CA 150s, its successor trusted 90s ahead). `pgbench -c 4`
//! runs through `<name>-pooler` with `sslmode=verify-full` against the
//! `ca.crt` read at the start for the whole rotation. The scenario sees,
//! from the outside:
//!
//! 1. the next CA appear in `status.tls.authorities` and in `<name>-ca`;
//! 2. the pooler and `-rw` serve new certificates, still verified by the
//!    **old** `ca.crt` alone (the overlap);
//! 3. the CA move: the served certificates now verify against the new CA
//!    and no longer against the old one alone;
//! 4. the old CA dropped from status and `<name>-ca` when it expires
//!    (with these lifetimes the next CA's own successor is trusted by
//!    then: three CAs can show at once).
//!
//! Throughout: every PostgreSQL's `pg_postmaster_start_time()` unchanged
//! (reloads, no restart), no pod re-created, replicas streaming, the
//! cluster Ready, and pgbench with 0 failed transactions and no aborted
//! client.
//!
//! Runs on the harness and on a real cluster. Needs `pgbench`
//! (`$CAPSTAN_PGBENCH` or PostgreSQL 15's from Debian).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use capstan::api::{CaStatus, PostgresCluster};
use capstan::resources::names;
use capstan_e2e::E2eError;
use capstan_e2e::ha::{self, Endpoint, HaCluster, ha_example};
use capstan_e2e::harness::wait_for;
use capstan_e2e::load::{Pgbench, pgbench_binary};
use capstan_e2e::sql;
use capstan_e2e::target::{Target, fail};

/// From the cluster's creation: next CA at 60s, the move at 90s, the old
/// CA gone at 150s; pgbench covers all of it.
const RUN: Duration = Duration::from_secs(130);
const STEP_WITHIN: Duration = Duration::from_secs(200);
const POLL: Duration = Duration::from_millis(500);

fn authorities(c: &PostgresCluster) -> Vec<CaStatus> {
    c.status
        .as_ref()
        .and_then(|s| s.tls.as_ref())
        .map(|t| t.authorities.clone())
        .unwrap_or_default()
}

fn with_role<'a>(cas: &'a [CaStatus], role: &str) -> Option<&'a CaStatus> {
    cas.iter().find(|c| c.role == role)
}

/// What each endpoint serves, verified against `ca` alone.
async fn served(
    endpoints: &[(String, Endpoint)],
    ca: &str,
) -> Result<BTreeMap<String, String>, E2eError> {
    let mut out = BTreeMap::new();
    for (what, ep) in endpoints {
        let print = sql::served_certificate(&ep.host, ep.addr, ca).await?;
        out.insert(what.clone(), print);
    }
    Ok(out)
}

/// `-rw` and every pooler pod on its own: each pooler pod reloads its
/// certificate when its own copy of the Secret changes, so a check through
/// the pooler Service would see whichever pod it reached.
async fn endpoints(target: &Target, ha: &HaCluster) -> Result<Vec<(String, Endpoint)>, E2eError> {
    let mut out = vec![("rw".to_string(), ha.rw(target).await?)];
    out.extend(ha.pooler_pod_endpoints(target).await?);
    Ok(out)
}

async fn ca_bundle(target: &Target, ha: &HaCluster) -> Result<String, E2eError> {
    capstan_e2e::cluster::secret_value(
        &target.client(),
        &ha.ns,
        &names::ca_secret(&ha.name),
        "ca.crt",
    )
    .await
}

fn certificates_in(bundle: &str) -> usize {
    bundle.matches("BEGIN CERTIFICATE").count()
}

/// One CA certificate of a bundle, by its fingerprint.
fn only(bundle: &str, fingerprint: &str) -> Option<String> {
    bundle
        .split_inclusive("-----END CERTIFICATE-----")
        .map(|pem| pem.trim().to_string())
        .find(|pem| capstan::tls::fingerprint(pem).as_deref() == Some(fingerprint))
}

async fn scenario(target: &mut Target, ns: &str) -> Result<(), E2eError> {
    let Some(pgbench) = pgbench_binary() else {
        eprintln!("skipped: pgbench not found (install postgresql-15 or set CAPSTAN_PGBENCH)");
        return Ok(());
    };
    let mut spec = ha_example("ha-cluster.yaml", ns)?;
    spec.spec.instances = 2;
    let lifetimes = &mut spec.spec.tls.certificates;
    lifetimes.duration = "2m".into();
    lifetimes.renew_before = "1m".into();
    lifetimes.ca_duration = "150s".into();
    lifetimes.ca_renew_before = "90s".into();
    let created = Instant::now();
    let mut ha = HaCluster::create(target, &spec).await?;
    let target = &*target;
    let c = ha.get(target).await?;
    let instances = ha::instance_names(&c);
    let old_ca = ha.ca.clone();
    assert_eq!(certificates_in(&old_ca), 1, "one CA at first");
    let first = authorities(&c);
    let old_print = with_role(&first, "Signing")
        .map(|c| c.fingerprint.clone())
        .ok_or_else(|| E2eError::Check(format!("no signing CA in status: {first:?}")))?;
    let pooler = ha.pooler(target).await?;
    let endpoints = endpoints(target, &ha).await?;
    let served_first = served(&endpoints, &old_ca).await?;
    let started_at = ha.start_times(target, &instances).await?;
    let pods_before = ha.pod_uids(target).await?;
    eprintln!("[{ns}] CA {old_print}; serving {served_first:?}; postmasters {started_at:?}");

    let bench = Pgbench::new(&pgbench, &ha, &pooler)?;
    bench.init(1).await?;
    let run = bench.start(4, RUN)?;

    // 1. The next CA: trusted everywhere, signing nothing yet.
    let (next_print, bundle) = wait_for(
        "a Next CA in status.tls.authorities and both CAs in <name>-ca",
        STEP_WITHIN,
        POLL,
        || async {
            let cas = authorities(&ha.get(target).await.ok()?);
            let next = with_role(&cas, "Next")?.fingerprint.clone();
            let bundle = ca_bundle(target, &ha).await.ok()?;
            (certificates_in(&bundle) == 2).then_some((next, bundle))
        },
    )
    .await?;
    eprintln!(
        "[{ns}] next CA {next_print} trusted {:.0}s after the cluster was created",
        created.elapsed().as_secs_f64()
    );
    let new_ca = only(&bundle, &next_print)
        .ok_or_else(|| E2eError::Check("the next CA is not in <name>-ca".into()))?;

    // 2. New certificates, still from the old CA: clients holding only the
    //    old ca.crt keep verifying during the overlap.
    let renewed = wait_for(
        "new certificates served by the pooler and -rw, verified by the old ca.crt alone",
        STEP_WITHIN,
        POLL,
        || async {
            let now = served(&endpoints, &old_ca).await.ok()?;
            now.iter()
                .all(|(what, print)| served_first.get(what) != Some(print))
                .then_some(now)
        },
    )
    .await?;
    let still_next = authorities(&ha.get(target).await?);
    assert!(
        with_role(&still_next, "Next").is_some(),
        "renewed certificates were checked during the overlap: {still_next:?}"
    );
    eprintln!(
        "[{ns}] renewed during the overlap at {:.0}s: {renewed:?}",
        created.elapsed().as_secs_f64()
    );

    // 3. The move: certificates from the new CA, which the old ca.crt alone
    //    no longer verifies, on -rw and on every pooler pod.
    let moved = wait_for(
        "the new CA signing; every served certificate verified by it and not by the old CA alone",
        STEP_WITHIN,
        POLL,
        || async {
            let cas = authorities(&ha.get(target).await.ok()?);
            (with_role(&cas, "Signing")?.fingerprint == next_print
                && with_role(&cas, "Previous")?.fingerprint == old_print)
                .then_some(())?;
            let now = served(&endpoints, &new_ca).await.ok()?;
            for (_, ep) in &endpoints {
                sql::served_certificate(&ep.host, ep.addr, &old_ca)
                    .await
                    .is_err()
                    .then_some(())?;
            }
            Some(now)
        },
    )
    .await?;
    eprintln!(
        "[{ns}] moved to the new CA at {:.0}s: {moved:?}",
        created.elapsed().as_secs_f64()
    );

    // 4. The old CA leaves every ca.crt once it has expired. (With these
    //    lifetimes the new CA's own successor is already on its way.)
    wait_for(
        "the first CA dropped from status and <name>-ca",
        STEP_WITHIN,
        POLL,
        || async {
            let cas = authorities(&ha.get(target).await.ok()?);
            let bundle = ca_bundle(target, &ha).await.ok()?;
            (cas.iter().all(|c| c.fingerprint != old_print)
                && only(&bundle, &old_print).is_none()
                && only(&bundle, &next_print).is_some())
            .then_some(())
        },
    )
    .await?;
    eprintln!(
        "[{ns}] old CA dropped at {:.0}s",
        created.elapsed().as_secs_f64()
    );

    let report = run.finish(RUN + Duration::from_secs(60)).await?;
    // New connections from here on verify against the current ca.crt.
    ha.ca = ca_bundle(target, &ha).await?;
    eprintln!(
        "[{ns}] pgbench through the rotation: {} transactions, {} failed, {} clients aborted, longest transaction {:.0} ms",
        report.processed, report.failed, report.aborted_clients, report.max_latency_ms
    );
    assert!(
        report.failed == 0 && report.aborted_clients == 0 && !report.run_aborted,
        "pgbench saw client errors across the rotation: {:?}\n{}",
        report.errors,
        report.output
    );
    assert!(report.processed > 0, "pgbench ran: {}", report.output);

    // Reloaded, never restarted.
    assert_eq!(ha.start_times(target, &instances).await?, started_at);
    assert_eq!(ha.pod_uids(target).await?, pods_before, "no pod re-created");
    let c = ha.get(target).await?;
    assert_eq!(
        capstan_e2e::cluster::condition(&c, "Ready").as_deref(),
        Some("True"),
        "{}",
        ha::status_summary(&c)
    );
    let primary = ha::current_primary(&c).cloned().unwrap_or_default();
    let replicas: Vec<&str> = instances
        .iter()
        .map(String::as_str)
        .filter(|n| *n != primary)
        .collect();
    ha.wait_streaming(target, &replicas, Duration::from_secs(30))
        .await?;
    ha.delete(target).await
}

#[test]
fn certificates_and_the_ca_rotate_with_no_restart_and_no_client_error() {
    capstan_e2e::scenario(|| async {
        let mut target = Target::from_env().await.expect("e2e target");
        let ns = format!("e2e-tls-rotation-{}", std::process::id());
        if let Err(e) = scenario(&mut target, &ns).await {
            fail(&target, &ns, e).await;
        }
    });
}

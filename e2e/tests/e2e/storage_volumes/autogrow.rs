//! A volume that fills grows before it is full, and stops at its limit.
//!
//! Data volumes on a class whose volumes have a real capacity (on the local
//! harness a size-limited tmpfs per claim, so a full volume is a real `No
//! space left on device`) that grows online. `storage.size: 128Mi` with
//! `autoGrow {threshold: 60, increment: 64Mi, limit: 256Mi}`. Rows are
//! written through the pooler at about 2 MB/s, every write checked. The
//! scenario sees each instance's volume pass 60% in status, its claim
//! raised by 64Mi and provided, and finally the volumes at 256Mi past 60%:
//! `Degraded` (`VolumeFull`, naming the volume and how full) with a Warning
//! Event. No write fails, `spec` is never written.
//!
//! Runs on the harness; on a real cluster with
//! `CAPSTAN_E2E_STORAGE_CLASS_E2E_GROWS` naming a class that expands online.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use capstan::api::{AutoGrowSpec, PostgresCluster};
use capstan_e2e::E2eError;
use capstan_e2e::ha::{self, As, HaCluster, ha_example};
use capstan_e2e::harness::{ensure_namespace, wait_for};
use capstan_e2e::sql;
use capstan_e2e::target::{Target, fail};
use capstan_e2e::volumes::{self, Expansion};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

const THRESHOLD: i32 = 60;
const LIMIT: &str = "256Mi";
/// 1 000 rows of 1 KiB that do not compress (`STORAGE PLAIN`).
const BATCH_ROWS: u32 = 1000;
const BATCH_EVERY: Duration = Duration::from_millis(500);
const FILL_WITHIN: Duration = Duration::from_secs(300);

fn degraded_full(c: &PostgresCluster) -> Option<String> {
    c.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "Degraded" && c.status == "True" && c.reason == "VolumeFull")
        .map(|c| c.message.clone())
}

async fn scenario(target: &mut Target, ns: &str) -> Result<(), E2eError> {
    let target = &*target;
    let client = target.client();
    ensure_namespace(&client, ns).await?;
    let class = volumes::storage_class(&client, "e2e-grows", Expansion::Online).await?;
    let mut spec = ha_example("ha-cluster.yaml", ns)?;
    spec.spec.instances = 2;
    spec.spec.proxy.pgbouncer.replicas = 1;
    spec.spec.storage.size = Quantity("128Mi".into());
    spec.spec.storage.storage_class_name = Some(class);
    spec.spec.storage.auto_grow = Some(AutoGrowSpec {
        threshold: THRESHOLD,
        increment: Quantity("64Mi".into()),
        limit: Quantity(LIMIT.into()),
    });
    let ha = HaCluster::create(target, &spec).await?;
    let c0 = ha.get(target).await?;
    let instances = ha::instance_names(&c0);
    let app = ha.connect(&ha.pooler(target).await?, As::App).await?;
    sql::value(
        &app,
        "CREATE TABLE fill (n bigint, v text); ALTER TABLE fill ALTER v SET STORAGE PLAIN; SELECT 1",
    )
    .await?;

    // On the local harness the claim's file system is right here: sampled
    // every 100 ms, it tells when it passed the threshold and when it grew.
    let sampler = target.local().map(|h| {
        let primary = ha::current_primary(&c0).cloned().unwrap_or_default();
        FsSampler::start(h.runtime().claim_dir(ns, &primary))
    });

    // Write until the volumes are at their limit and past the threshold.
    let started = Instant::now();
    let mut next = 0u64;
    let mut batches = 0u64;
    // Per instance: the size its data volume was last seen provided at.
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    let mut last_look = Instant::now();
    let message = loop {
        if started.elapsed() > FILL_WITHIN {
            return Err(E2eError::Check(format!(
                "no VolumeFull after {FILL_WITHIN:?}: {}",
                ha::status_summary(&ha.get(target).await?)
            )));
        }
        let from = next + 1;
        next += u64::from(BATCH_ROWS);
        // Every write must succeed: the volume grows before it is full.
        sql::value(
            &app,
            &format!(
                "INSERT INTO fill SELECT g, (SELECT string_agg(md5(random()::text || g || i), '') \
                 FROM generate_series(1, 32) i) FROM generate_series({from}, {next}) g RETURNING 1"
            ),
        )
        .await
        .map_err(|e| E2eError::Check(format!("write {batches} failed: {e}")))?;
        batches += 1;
        tokio::time::sleep(BATCH_EVERY).await;
        if last_look.elapsed() < Duration::from_secs(1) {
            continue;
        }
        last_look = Instant::now();
        let c = ha.get(target).await?;
        for name in &instances {
            let Some(v) = volumes::volume(&c, name, "data") else {
                continue;
            };
            if v.capacity.as_deref() != Some(v.requested.as_str()) {
                continue;
            }
            let before = seen.insert(name.clone(), v.requested.clone());
            if let Some(before) = before.filter(|b| *b != v.requested) {
                eprintln!(
                    "[{ns}] {name}: data volume {before} -> {} (provided) after {:.0} MB written",
                    v.requested,
                    next as f64 * 1.1 / 1000.0
                );
            }
        }
        if let Some(m) = degraded_full(&c) {
            break m;
        }
    };
    eprintln!(
        "[{ns}] {batches} writes of {BATCH_ROWS} rows, none failed; Degraded VolumeFull after {:.0}s: {message}",
        started.elapsed().as_secs_f64()
    );
    assert!(
        message.contains(&format!("at its autoGrow limit {LIMIT}")),
        "{message}"
    );
    let c = ha.get(target).await?;
    for name in &instances {
        let v = volumes::volume(&c, name, "data")
            .ok_or_else(|| E2eError::Check(format!("no data volume of {name} in status")))?;
        assert_eq!(v.requested, LIMIT, "{name}: {v:?}");
    }
    assert_eq!(
        c.spec.storage.size.0, "128Mi",
        "spec is the user's: never written"
    );
    if let Some(sampler) = sampler {
        for (from, to, took) in sampler.stop() {
            eprintln!(
                "[{ns}] primary's file system passed {THRESHOLD}% at {} MiB and was {} MiB {:.1}s later (statvfs every 100 ms)",
                from >> 20,
                to >> 20,
                took.as_secs_f64()
            );
        }
    }
    let events = wait_for(
        "a Warning Event VolumeFull",
        Duration::from_secs(30),
        Duration::from_millis(500),
        || async {
            let e = capstan_e2e::schedule::events(target, ns, "VolumeFull", &ha.name)
                .await
                .ok()?;
            (!e.is_empty()).then_some(e)
        },
    )
    .await?;
    assert!(events.iter().all(|(t, _)| t == "Warning"), "{events:?}");
    ha.delete(target).await
}

#[test]
fn a_filling_volume_grows_before_it_is_full_and_stops_at_its_limit() {
    capstan_e2e::scenario(|| async {
        let mut target = Target::from_env().await.expect("e2e target");
        let ns = format!("e2e-autogrow-{}", std::process::id());
        if let Err(e) = scenario(&mut target, &ns).await {
            fail(&target, &ns, e).await;
        }
    });
}

/// Samples a file system's size and use from a thread.
struct FsSampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Vec<(Instant, u64, u64)>>,
}

impl FsSampler {
    fn start(dir: std::path::PathBuf) -> FsSampler {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut samples = vec![];
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(st) = nix::sys::statvfs::statvfs(&dir) {
                    let block = st.fragment_size();
                    let size = st.blocks() * block;
                    let free = st.blocks_available() * block;
                    samples.push((Instant::now(), size, size - free));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            samples
        });
        FsSampler { stop, thread }
    }

    /// For each growth: (size before, size after, from first passing the
    /// threshold to the larger size).
    fn stop(self) -> Vec<(u64, u64, Duration)> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let samples = self.thread.join().unwrap_or_default();
        let mut out = vec![];
        let mut crossed: Option<(Instant, u64)> = None;
        for (at, size, used) in samples {
            match crossed {
                Some((when, before)) if size > before => {
                    out.push((before, size, at.duration_since(when)));
                    crossed = None;
                }
                None if used * 100 >= size * THRESHOLD as u64 => crossed = Some((at, size)),
                _ => {}
            }
        }
        out
    }
}

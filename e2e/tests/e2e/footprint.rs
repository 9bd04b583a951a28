//! Operator footprint: 100 clusters on the harness with simulated pods
//! (Running and Ready, no processes), so only the control plane is measured.
//! Prints the time until every cluster is Ready and the operator's resident
//! memory once idle. A measurement, not a pass/fail test: run it with
//! `bench/operator-footprint.sh`.

use std::time::{Duration, Instant};

use capstan::api::PostgresCluster;
use capstan_e2e::cluster::{self, condition};
use capstan_e2e::harness::{Harness, HarnessOptions, Install, ensure_namespace, wait_for};
use kube::Api;
use kube::api::ListParams;

const CLUSTERS: usize = 100;
const NAMESPACE: &str = "footprint";

fn rss_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

#[test]
#[ignore = "measurement; run bench/operator-footprint.sh"]
fn hundred_clusters_in_simulated_mode() {
    capstan_e2e::scenario(|| async {
        // The operator as a host process: simulated pods run no processes.
        let mut harness = Harness::start(HarnessOptions {
            simulated: true,
            install: Install::HostProcess,
        })
        .await
        .expect("harness");
        let client = harness.client();
        ensure_namespace(&client, NAMESPACE).await.unwrap();
        harness.start_operator().await.unwrap();
        let pid = harness.operator_pid().await.unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let rss_empty = rss_kib(pid, "VmRSS:").unwrap_or(0);

        let started = Instant::now();
        for i in 0..CLUSTERS {
            let mut c =
                cluster::load_example(&cluster::example("minimal.yaml"), NAMESPACE).unwrap();
            c.metadata.name = Some(format!("fp-{i:03}"));
            c.spec.instances = 3;
            cluster::apply(&client, &c).await.unwrap();
        }
        let created = started.elapsed();
        let api: Api<PostgresCluster> = Api::namespaced(client.clone(), NAMESPACE);
        let result = wait_for(
            "every cluster Ready",
            Duration::from_secs(900),
            Duration::from_millis(500),
            || async {
                let list = api.list(&ListParams::default()).await.ok()?;
                let ready = list
                    .items
                    .iter()
                    .filter(|c| condition(c, "Ready").as_deref() == Some("True"))
                    .count();
                (ready == CLUSTERS).then_some(ready)
            },
        )
        .await;
        let all_ready = started.elapsed();
        if let Err(e) = result {
            panic!(
                "{e}\n{}",
                harness
                    .operator_logs()
                    .lines()
                    .rev()
                    .take(40)
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        // Let the requeues and resyncs of a settled cluster set in.
        tokio::time::sleep(Duration::from_secs(30)).await;
        let rss_idle = rss_kib(pid, "VmRSS:").unwrap_or(0);
        let rss_peak = rss_kib(pid, "VmHWM:").unwrap_or(0);
        let requests = harness.control_plane().operator_requests();
        println!("clusters: {CLUSTERS} (3 instances + 2 poolers each, simulated pods)");
        println!("apply of all CRs: {:.2} s", created.as_secs_f64());
        println!("time to all Ready: {:.2} s", all_ready.as_secs_f64());
        println!(
            "operator RSS before any cluster: {:.1} MiB",
            rss_empty as f64 / 1024.0
        );
        println!(
            "operator RSS idle with {CLUSTERS} clusters: {:.1} MiB",
            rss_idle as f64 / 1024.0
        );
        println!(
            "operator peak RSS (VmHWM): {:.1} MiB",
            rss_peak as f64 / 1024.0
        );
        let mut by_verb = std::collections::BTreeMap::<&str, u64>::new();
        for (key, n) in &requests {
            *by_verb
                .entry(key.split(' ').next().unwrap_or("?"))
                .or_insert(0) += n;
        }
        println!("operator API requests by verb (audit log): {by_verb:?}");
        // An idle window long enough for every cluster's periodic resync
        // (CAPSTAN_RESYNC_SECONDS, inherited by the operator process).
        let idle = std::env::var("CAPSTAN_FOOTPRINT_IDLE_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(60);
        tokio::time::sleep(Duration::from_secs(idle)).await;
        let after = harness.control_plane().operator_requests();
        let delta: std::collections::BTreeMap<&String, u64> = after
            .iter()
            .map(|(verb, n)| (verb, n - requests.get(verb).copied().unwrap_or(0)))
            .filter(|(_, n)| *n > 0)
            .collect();
        println!(
            "operator API requests while idle for {idle} s (resync every {} s), by verb and resource: {delta:?}",
            std::env::var("CAPSTAN_RESYNC_SECONDS").unwrap_or_else(|_| "300".into())
        );
    });
}

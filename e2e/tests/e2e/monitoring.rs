//! Scenario: observability as shipped, on the local harness.
//!
//! The chart is installed with Helm, then upgraded with its PodMonitors,
//! ServiceMonitor and PrometheusRule turned on (the Prometheus Operator's
//! CRDs applied first). A real Prometheus gets the scrape configurations
//! the Prometheus Operator would generate from those objects as they are
//! in the API server (`capstan_e2e::prometheus::scrape_configs`) and the
//! PrometheusRule's rules, and scrapes every pod and the operator each
//! second.
//!
//! The rules run with every duration divided by [`SCALE`] (`for`, range
//! and subquery windows): one minute of the shipped rules is one second
//! here. Their thresholds and durations are unit-tested unscaled with
//! `promtool test rules` (tests/monitoring.rs); this scenario proves the
//! expressions, labels and scrapes work on real series.
//!
//! 1. Creating a cluster (2 instances, a pooler, archiving to S3): kstatus
//!    says `InProgress`, then `Current` once Ready; the Argo CD health
//!    script says `Progressing`, then `Healthy`.
//! 2. Every target is up, every rule evaluates without error, and nothing
//!    fires on the healthy cluster; each exporter's real `/metrics` passes
//!    `promtool check metrics`; the instance manager's log is JSON lines,
//!    PostgreSQL's own tagged with cluster and instance.
//! 3. A rolling update (resources changed): `InProgress`, then `Current`.
//! 4. A cluster whose spec cannot be applied: kstatus `Failed`, Argo CD
//!    `Degraded`, `CapstanClusterStalled` fires; deleted, it resolves.
//! 5. The repository refuses the cluster's keys: `CapstanWalArchivingFailing`
//!    fires; the right keys back, it resolves.
//! 6. With the operator stopped (`CapstanOperatorDown` fires), the primary
//!    freezes: `CapstanNoWritablePrimary` fires. The operator back, it fails
//!    over: `CapstanFailover` fires, the other two resolve; the old primary
//!    thawed rejoins, and `CapstanFailover` resolves when its window passes.
//!
//! The alert timeline (fault → firing → resolved) is printed at the end.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use capstan::api::PostgresCluster;
use capstan_e2e::argocd::argocd_health;
use capstan_e2e::backup::{self, KEYS_SECRET, Keys, PodS3};
use capstan_e2e::controlplane;
use capstan_e2e::ha::{As, HaCluster, REJOIN_WITHIN, ha_example};
use capstan_e2e::harness::{
    OPERATOR_NAMESPACE, RELEASE, apply_crd, chart_dir, ensure_namespace, wait_for,
};
use capstan_e2e::kstatus::kstatus;
use capstan_e2e::prometheus::{
    Prometheus, PrometheusConfig, prometheus_operator_crds, rule_file, scrape_configs,
};
use capstan_e2e::target::{Target, fail};
use capstan_e2e::{E2eError, cluster};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams,
};
use serde_json::Value;

const MAJOR: u32 = 17;
const NS: &str = "monitoring";
/// Every duration of the shipped rules is divided by this here.
const SCALE: u64 = 60;
const TICK: Duration = Duration::from_secs(1);
const ARCHIVE_TIMEOUT: &str = "5s";
/// The chart values this scenario turns on (scraped every second).
const VALUES: &str = "monitoring.podMonitors.enabled=true,monitoring.podMonitors.interval=1s,\
monitoring.serviceMonitor.enabled=true,monitoring.serviceMonitor.interval=1s,\
monitoring.prometheusRule.enabled=true";
/// From a fault to the alert it should raise: the scaled `for`, scrapes,
/// evaluation, and room for a slow machine.
const ALERT_WITHIN: Duration = Duration::from_secs(90);
const ROLL_WITHIN: Duration = Duration::from_secs(300);

#[test]
fn alerts_fire_and_resolve_on_real_faults_and_kstatus_follows_the_cluster() {
    capstan_e2e::scenario(|| async {
        let Some((mut target, s3)) = backup::harness_with_store(MAJOR, "capstan-e2e").await else {
            return;
        };
        if let Err(e) = scenario(&mut target, &s3).await {
            eprintln!("--- S3 store ---\n{}", s3.logs());
            fail(&target, NS, e).await;
        }
    });
}

async fn scenario(target: &mut Target, s3: &PodS3) -> Result<(), E2eError> {
    let client = target.client();
    target.start_operator().await?;
    for file in prometheus_operator_crds()? {
        apply_crd_file(&client, &file).await?;
    }
    let chart = chart_dir().display().to_string();
    target
        .harness()
        .ok_or_else(|| E2eError::Setup("the local harness".into()))?
        .helm(&[
            "upgrade",
            RELEASE,
            &chart,
            "--namespace",
            OPERATOR_NAMESPACE,
            "--reuse-values",
            "--set",
            VALUES,
        ])?;

    // 1. Creation, as GitOps health checks see it.
    ensure_namespace(&client, NS).await?;
    s3.write_secrets(target, NS, KEYS_SECRET, Keys::Right)
        .await?;
    let mut spec = ha_example("ha-cluster.yaml", NS)?;
    spec.metadata.name = Some("db".into());
    spec.spec.instances = 2;
    spec.spec.proxy.pgbouncer.replicas = 1;
    spec.spec.postgres.version = MAJOR as i32;
    spec.spec.postgres.image = Some(backup::pgbackrest_image(MAJOR));
    spec.spec.backup = Some(s3.backup_spec(KEYS_SECRET, ARCHIVE_TIMEOUT)?);
    let watch = Watch::start(target, "db");
    let ha = HaCluster::create(target, &spec).await?;
    let creation = watch.until("Current", ROLL_WITHIN).await?;
    assert_sequence(
        "creation",
        &creation,
        &[("InProgress", "Progressing"), ("Current", "Healthy")],
    );

    // 2. Prometheus on the chart's monitors and rules.
    let dir = tempfile::tempdir().map_err(|e| E2eError::Setup(e.to_string()))?;
    let prometheus = start_prometheus(target, dir.path()).await?;
    let timeline = Timeline::new();
    wait_targets(&prometheus).await?;
    // Scaled `for`s are seconds at most; give the rules a few rounds.
    tokio::time::sleep(Duration::from_secs(8)).await;
    for rule in prometheus.rules().await? {
        assert_eq!(
            rule.health, "ok",
            "{} does not evaluate: {}",
            rule.name, rule.last_error
        );
    }
    let firing: Vec<String> = prometheus
        .alerts()
        .await?
        .into_iter()
        .filter(|a| a.state == "firing")
        .map(|a| format!("{} {:?}", a.name, a.labels))
        .collect();
    assert!(
        firing.is_empty(),
        "alerts fire on a healthy cluster: {firing:#?}"
    );
    check_real_metrics(&prometheus, &ha).await?;
    check_instance_log(target, "db-1")?;

    // 3. A rolling update.
    let watch = Watch::start(target, "db");
    let api: Api<PostgresCluster> = Api::namespaced(client.clone(), NS);
    api.patch(
        "db",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"spec": {"resources": {"requests": {"cpu": "101m"}}}})),
    )
    .await
    .map_err(|e| E2eError::Kube("change spec.resources".into(), e))?;
    let rolling = watch
        .until_after("InProgress", "Current", ROLL_WITHIN)
        .await?;
    assert_sequence(
        "rolling update",
        &rolling,
        &[("InProgress", "Progressing"), ("Current", "Healthy")],
    );

    // 4. A spec that cannot be applied.
    let mut broken = ha_example("ha-cluster.yaml", NS)?;
    broken.metadata.name = Some("broken".into());
    broken.spec.instances = 1;
    broken.spec.proxy.pgbouncer.replicas = 1;
    broken.spec.tls = serde_json::from_value(serde_json::json!({
        "mode": "Provided",
        "provided": {
            "caSecretName": "absent-ca", "serverSecretName": "absent-server",
            "replicationSecretName": "absent-replication", "poolerSecretName": "absent-pooler",
        },
    }))
    .map_err(|e| E2eError::Setup(format!("spec.tls: {e}")))?;
    let watch = Watch::start(target, "broken");
    let at = Instant::now();
    cluster::apply(&client, &broken).await?;
    let stalled = watch.until("Failed", ALERT_WITHIN).await?;
    assert_sequence("stalled", &stalled, &[("Failed", "Degraded")]);
    eprintln!(
        "[{NS}] broken: {}",
        stalled
            .last()
            .map(|s| s.message.as_str())
            .unwrap_or_default()
    );
    timeline.fault(at, "cluster 'broken' applied (its Secrets do not exist)");
    let alert = wait_firing(&prometheus, "CapstanClusterStalled").await?;
    assert_eq!(
        alert.labels.get("capstan_cluster").map(String::as_str),
        Some("broken")
    );
    timeline.event("CapstanClusterStalled firing");
    api.delete("broken", &DeleteParams::default())
        .await
        .map_err(|e| E2eError::Kube("delete broken".into(), e))?;
    timeline.fault(Instant::now(), "cluster 'broken' deleted");
    wait_gone(&prometheus, "CapstanClusterStalled").await?;
    timeline.event("CapstanClusterStalled resolved");

    // 5. The repository refuses the keys.
    s3.write_secrets(target, NS, KEYS_SECRET, Keys::WrongSecret)
        .await?;
    timeline.fault(Instant::now(), "repository keys replaced by wrong ones");
    let switching = switch_wal_until(&ha, target, &prometheus, "CapstanWalArchivingFailing", true);
    let alert = switching.await?;
    assert_eq!(
        alert.labels.get("capstan_cluster").map(String::as_str),
        Some("db")
    );
    timeline.event("CapstanWalArchivingFailing firing");
    s3.write_secrets(target, NS, KEYS_SECRET, Keys::Right)
        .await?;
    timeline.fault(Instant::now(), "right repository keys back");
    switch_wal_until(
        &ha,
        target,
        &prometheus,
        "CapstanWalArchivingFailing",
        false,
    )
    .await?;
    timeline.event("CapstanWalArchivingFailing resolved");

    // 6. No operator, then a frozen primary, then the operator again.
    target.kill_operator().await?;
    timeline.fault(Instant::now(), "operator stopped");
    wait_firing(&prometheus, "CapstanOperatorDown").await?;
    timeline.event("CapstanOperatorDown firing");
    let old = ha
        .get(target)
        .await?
        .status
        .and_then(|s| s.current_primary)
        .ok_or_else(|| E2eError::Check("no current primary".into()))?;
    let runtime = target
        .harness()
        .ok_or_else(|| E2eError::Setup("the local harness".into()))?
        .runtime()
        .clone();
    runtime
        .freeze_pod(NS, &old)
        .map_err(|e| E2eError::Check(format!("freeze {old}: {e}")))?;
    timeline.fault(Instant::now(), &format!("primary {old} frozen"));
    let alert = wait_firing(&prometheus, "CapstanNoWritablePrimary").await?;
    assert_eq!(
        alert.labels.get("capstan_cluster").map(String::as_str),
        Some("db")
    );
    timeline.event("CapstanNoWritablePrimary firing");
    target.start_operator().await?;
    timeline.fault(Instant::now(), "operator started");
    let (_, failover) = ha.wait_failover(target, &old, ALERT_WITHIN).await?;
    timeline.event(&format!("failover {old} -> {} completed", failover.to));
    wait_firing(&prometheus, "CapstanFailover").await?;
    timeline.event("CapstanFailover firing");
    wait_gone(&prometheus, "CapstanNoWritablePrimary").await?;
    timeline.event("CapstanNoWritablePrimary resolved");
    wait_gone(&prometheus, "CapstanOperatorDown").await?;
    timeline.event("CapstanOperatorDown resolved");
    runtime
        .thaw_pod(NS, &old)
        .map_err(|e| E2eError::Check(format!("thaw {old}: {e}")))?;
    timeline.fault(Instant::now(), &format!("{old} thawed"));
    ha.wait_replica(target, &old, REJOIN_WITHIN).await?;
    timeline.event(&format!("{old} back as a replica"));
    wait_gone(&prometheus, "CapstanFailover").await?;
    timeline.event("CapstanFailover resolved (its 15 s window passed)");
    timeline.print();
    Ok(())
}

/// Applies a CRD file and waits until it is served.
async fn apply_crd_file(client: &kube::Client, file: &Path) -> Result<(), E2eError> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| E2eError::Setup(format!("{}: {e}", file.display())))?;
    let crd: CustomResourceDefinition = serde_saphyr::from_str(&text)
        .map_err(|e| E2eError::Setup(format!("{}: {e}", file.display())))?;
    apply_crd(client, &crd).await
}

/// The chart's monitoring objects as they are in the API server.
async fn objects(client: &kube::Client, kind: &str, plural: &str) -> Result<Vec<Value>, E2eError> {
    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("monitoring.coreos.com", "v1", kind),
        plural,
    );
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), OPERATOR_NAMESPACE, &resource);
    let list = api
        .list(&Default::default())
        .await
        .map_err(|e| E2eError::Kube(format!("list {plural}"), e))?;
    list.items
        .iter()
        .map(|o| serde_json::to_value(o).map_err(|e| E2eError::Setup(e.to_string())))
        .collect()
}

async fn start_prometheus(target: &mut Target, dir: &Path) -> Result<Prometheus, E2eError> {
    let client = target.client();
    let kubeconfig = target
        .harness()
        .ok_or_else(|| E2eError::Setup("the local harness".into()))?
        .kubeconfig()
        .to_path_buf();
    let mut config = PrometheusConfig::every(TICK);
    let pod_monitors = objects(&client, "PodMonitor", "podmonitors").await?;
    let service_monitors = objects(&client, "ServiceMonitor", "servicemonitors").await?;
    assert_eq!(pod_monitors.len(), 2, "the chart's PodMonitors");
    assert_eq!(service_monitors.len(), 1, "the chart's ServiceMonitor");
    for monitor in pod_monitors.iter().chain(&service_monitors) {
        config
            .scrape_configs
            .extend(scrape_configs(monitor, &kubeconfig)?);
    }
    let rules = objects(&client, "PrometheusRule", "prometheusrules").await?;
    let [rule] = rules.as_slice() else {
        return Err(E2eError::Check(format!(
            "{} PrometheusRules, not the chart's one",
            rules.len()
        )));
    };
    let scaled = scale_rules(&rule_file(rule)?, SCALE)?;
    let path = dir.join("rules.yaml");
    std::fs::write(&path, scaled)
        .map_err(|e| E2eError::Setup(format!("{}: {e}", path.display())))?;
    config.rule_files.push(path);
    Prometheus::start(dir, &config).await
}

/// Every instance, the pooler and the operator scraped successfully.
async fn wait_targets(prometheus: &Prometheus) -> Result<(), E2eError> {
    let want = [
        ("capstan-instance", 2),
        ("capstan-pooler", 1),
        ("capstan-operator", 1),
    ];
    wait_for(
        "every target up",
        Duration::from_secs(90),
        Duration::from_millis(500),
        || async {
            let targets = prometheus.targets().await.ok()?;
            want.iter()
                .all(|(job, n)| {
                    targets
                        .iter()
                        .filter(|t| {
                            t.labels.get("job").map(String::as_str) == Some(job) && t.health == "up"
                        })
                        .count()
                        == *n
                })
                .then_some(())
        },
    )
    .await
    .map_err(|e| E2eError::Check(format!("{e}; targets: {:?}", prometheus.log_tail(5))))
}

/// Each exporter's real `/metrics` (asked like `curl`, so in the classic
/// text format) passes `promtool check metrics`.
async fn check_real_metrics(prometheus: &Prometheus, ha: &HaCluster) -> Result<(), E2eError> {
    let promtool = controlplane::tools_dir()?.join("promtool");
    let server_name = capstan::resources::names::agent_server_name(&ha.name, &ha.ns);
    for job in ["capstan-instance", "capstan-pooler", "capstan-operator"] {
        let targets = prometheus.targets().await?;
        let url = targets
            .iter()
            .find(|t| t.labels.get("job").map(String::as_str) == Some(job))
            .map(|t| t.scrape_url.clone())
            .ok_or_else(|| E2eError::Check(format!("no {job} target")))?;
        let body = fetch(&url, &server_name, &ha.ca).await?;
        let mut child = std::process::Command::new(&promtool)
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| E2eError::Setup(format!("{}: {e}", promtool.display())))?;
        if let Some(mut stdin) = child.stdin.take() {
            use std::io::Write;
            stdin
                .write_all(body.as_bytes())
                .map_err(|e| E2eError::Setup(e.to_string()))?;
        }
        let out = child
            .wait_with_output()
            .map_err(|e| E2eError::Setup(e.to_string()))?;
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success(),
            "promtool check metrics on {url}: {said}"
        );
        eprintln!(
            "[{NS}] {url}: {} series, promtool check metrics passed",
            body.lines().filter(|l| !l.starts_with('#')).count()
        );
    }
    Ok(())
}

/// The instance manager's container log is JSON lines only, and
/// PostgreSQL's own lines in it are tagged with the cluster and instance
/// (what `kubectl logs` and log collectors get).
fn check_instance_log(target: &mut Target, pod: &str) -> Result<(), E2eError> {
    let log = target
        .harness()
        .ok_or_else(|| E2eError::Setup("the local harness".into()))?
        .runtime()
        .logs(NS, pod, "postgres", false)
        .map_err(|e| E2eError::Check(format!("log of {pod}: {e}")))?;
    let mut from_postgres = 0;
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let entry: Value = serde_json::from_str(line).map_err(|e| {
            E2eError::Check(format!(
                "{pod}'s log has a line that is not JSON ({e}): {line}"
            ))
        })?;
        assert!(entry["level"].is_string(), "no level: {line}");
        if entry["target"] == "postgres" {
            from_postgres += 1;
            assert_eq!(entry["span"]["cluster"], "db", "{line}");
            assert_eq!(entry["span"]["instance"], pod, "{line}");
        }
    }
    assert!(
        from_postgres > 0,
        "no PostgreSQL line in {pod}'s log:\n{log}"
    );
    eprintln!(
        "[{NS}] {pod}: {} log lines, all JSON; {from_postgres} from PostgreSQL, tagged with cluster and instance",
        log.lines().count()
    );
    Ok(())
}

/// `GET url` (https verified against the cluster CA under the agents'
/// name, or plain http): the body.
async fn fetch(url: &str, server_name: &str, ca: &str) -> Result<String, E2eError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let failed = |e: &dyn std::fmt::Display| E2eError::Check(format!("GET {url}: {e}"));
    let (tls, rest) = match (url.strip_prefix("https://"), url.strip_prefix("http://")) {
        (Some(rest), _) => (true, rest),
        (_, Some(rest)) => (false, rest),
        _ => return Err(failed(&"not an http(s) URL")),
    };
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let request = format!("GET /{path} HTTP/1.0\r\nHost: {host}\r\n\r\n");
    let stream = tokio::net::TcpStream::connect(host)
        .await
        .map_err(|e| failed(&e))?;
    let mut response = Vec::new();
    if tls {
        let config = capstan_e2e::sql::trusting(ca).map_err(|e| failed(&e))?;
        let name = rustls_pki_types::ServerName::try_from(server_name.to_string())
            .map_err(|e| failed(&e))?;
        let mut stream = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, stream)
            .await
            .map_err(|e| failed(&e))?;
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| failed(&e))?;
        // A server may close without close_notify after the body.
        let _ = stream.read_to_end(&mut response).await;
    } else {
        let mut stream = stream;
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| failed(&e))?;
        stream
            .read_to_end(&mut response)
            .await
            .map_err(|e| failed(&e))?;
    }
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| failed(&"no HTTP answer"))?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        return Err(failed(&head.lines().next().unwrap_or_default()));
    }
    Ok(body.to_string())
}

/// Writes a row and closes the WAL segment every two seconds (so archiving
/// is attempted) until `name` fires (`firing`) or is gone (`!firing`).
async fn switch_wal_until(
    ha: &HaCluster,
    target: &Target,
    prometheus: &Prometheus,
    name: &str,
    firing: bool,
) -> Result<capstan_e2e::prometheus::Alert, E2eError> {
    let deadline = Instant::now() + ALERT_WITHIN;
    let mut n = 0i64;
    loop {
        let alerts = prometheus.alerts().await?;
        let found = alerts.into_iter().find(|a| a.name == name);
        match (&found, firing) {
            (Some(a), true) if a.state == "firing" => return Ok(a.clone()),
            (None, false) => {
                return Ok(capstan_e2e::prometheus::Alert {
                    name: name.into(),
                    state: "resolved".into(),
                    labels: Default::default(),
                    annotations: Default::default(),
                    active_at: None,
                    value: String::new(),
                });
            }
            _ => {}
        }
        if Instant::now() > deadline {
            return Err(E2eError::Timeout(
                format!("{name} {}", if firing { "firing" } else { "resolved" }),
                ALERT_WITHIN,
            ));
        }
        n += 1;
        let attempt = async {
            let conn = ha.connect(&ha.rw(target).await?, As::Superuser).await?;
            conn.batch_execute(&format!(
                "CREATE TABLE IF NOT EXISTS monitoring_switches (n bigint); \
                 INSERT INTO monitoring_switches VALUES ({n}); SELECT pg_switch_wal();"
            ))
            .await
            .map_err(|e| E2eError::Sql(e.to_string()))
        };
        if let Err(e) = attempt.await {
            eprintln!("[{NS}] switching WAL: {e}");
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

async fn wait_firing(
    prometheus: &Prometheus,
    name: &str,
) -> Result<capstan_e2e::prometheus::Alert, E2eError> {
    prometheus.wait_alert(name, "firing", ALERT_WITHIN).await
}

/// Until `name` is neither pending nor firing.
async fn wait_gone(prometheus: &Prometheus, name: &str) -> Result<(), E2eError> {
    wait_for(
        &format!("{name} resolved"),
        ALERT_WITHIN,
        Duration::from_millis(500),
        || async {
            let alerts = prometheus.alerts().await.ok()?;
            (!alerts.iter().any(|a| a.name == name)).then_some(())
        },
    )
    .await
}

/// The rule file with every duration divided by `scale`: `for`, and the
/// range and subquery windows of expressions (`[15m]`, `[15m:]`,
/// `[15m:1m]`).
fn scale_rules(text: &str, scale: u64) -> Result<String, E2eError> {
    let mut rules: Value =
        serde_saphyr::from_str(text).map_err(|e| E2eError::Setup(format!("rule file: {e}")))?;
    let groups = rules["groups"]
        .as_array_mut()
        .ok_or_else(|| E2eError::Setup("rule file without groups".into()))?;
    for rule in groups
        .iter_mut()
        .filter_map(|g| g["rules"].as_array_mut())
        .flatten()
    {
        if let Some(d) = rule["for"].as_str() {
            rule["for"] = Value::String(scaled(d, scale)?);
        }
        if let Some(expr) = rule["expr"].as_str() {
            rule["expr"] = Value::String(scale_windows(expr, scale)?);
        }
    }
    serde_json::to_string_pretty(&rules).map_err(|e| E2eError::Setup(e.to_string()))
}

fn scale_windows(expr: &str, scale: u64) -> Result<String, E2eError> {
    let mut out = String::new();
    let mut rest = expr;
    while let Some(open) = rest.find('[') {
        let close = rest[open..]
            .find(']')
            .map(|c| open + c)
            .ok_or_else(|| E2eError::Setup(format!("unbalanced [ in {expr}")))?;
        out.push_str(&rest[..=open]);
        let parts: Vec<String> = rest[open + 1..close]
            .split(':')
            .map(|d| {
                if d.is_empty() {
                    Ok(String::new())
                } else {
                    scaled(d, scale)
                }
            })
            .collect::<Result<_, _>>()?;
        out.push_str(&parts.join(":"));
        out.push(']');
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// A Prometheus duration (`1h30m`, `5m`, `90s`, ...) divided by `scale`,
/// in milliseconds.
fn scaled(duration: &str, scale: u64) -> Result<String, E2eError> {
    let bad = || E2eError::Setup(format!("{duration:?} is not a Prometheus duration"));
    let mut ms = 0u64;
    let mut number = String::new();
    let mut chars = duration.trim().chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit = if c == 'm' && chars.peek() == Some(&'s') {
            chars.next();
            1
        } else {
            match c {
                's' => 1_000,
                'm' => 60_000,
                'h' => 3_600_000,
                'd' => 86_400_000,
                'w' => 604_800_000,
                'y' => 31_536_000_000,
                _ => return Err(bad()),
            }
        };
        ms += number.parse::<u64>().map_err(|_| bad())? * unit;
        number.clear();
    }
    if !number.is_empty() || ms == 0 {
        return Err(bad());
    }
    Ok(format!("{}ms", (ms / scale).max(1)))
}

/// What kstatus and the Argo CD health script said about a cluster, each
/// time either changed.
#[derive(Clone, Debug)]
struct Seen {
    after: Duration,
    kstatus: String,
    argocd: Option<String>,
    message: String,
}

/// Polls a cluster every 250 ms while a step runs.
struct Watch {
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Watch {
    fn start(target: &Target, name: &str) -> Watch {
        let api: Api<PostgresCluster> = Api::namespaced(target.client(), NS);
        let name = name.to_string();
        let seen = Arc::new(Mutex::new(Vec::<Seen>::new()));
        let record = seen.clone();
        let started = Instant::now();
        let task = tokio::spawn(async move {
            loop {
                if let Ok(c) = api.get(&name).await
                    && let Ok(object) = serde_json::to_value(&c)
                {
                    let judged = tokio::task::spawn_blocking(move || {
                        (kstatus(&object), argocd_health(&object))
                    })
                    .await;
                    match judged {
                        Ok((Ok(k), Ok(argo))) => {
                            let argocd = argo.map(|a| a.status.as_str().to_string());
                            let mut seen = record.lock().unwrap();
                            let changed = seen
                                .last()
                                .is_none_or(|l: &Seen| l.kstatus != k.status || l.argocd != argocd);
                            if changed {
                                eprintln!(
                                    "[{NS}] {name} +{:.1}s: kstatus {} ({}), Argo CD {}",
                                    started.elapsed().as_secs_f64(),
                                    k.status,
                                    k.message,
                                    argocd.as_deref().unwrap_or("-")
                                );
                                seen.push(Seen {
                                    after: started.elapsed(),
                                    kstatus: k.status,
                                    argocd,
                                    message: k.message,
                                });
                            }
                        }
                        other => eprintln!("[{NS}] {name}: health checks failed: {other:?}"),
                    }
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        });
        Watch { seen, task }
    }

    /// Stops once kstatus says `status`; what was seen.
    async fn until(self, status: &str, timeout: Duration) -> Result<Vec<Seen>, E2eError> {
        self.until_after(status, status, timeout).await
    }

    /// Stops once kstatus said `first` and later `then`.
    async fn until_after(
        self,
        first: &str,
        then: &str,
        timeout: Duration,
    ) -> Result<Vec<Seen>, E2eError> {
        let waited = wait_for(
            &format!("kstatus {first}, then {then}"),
            timeout,
            Duration::from_millis(250),
            || async {
                let seen = self.seen.lock().unwrap();
                let at = seen.iter().position(|s| s.kstatus == first)?;
                seen[at..].iter().any(|s| s.kstatus == then).then_some(())
            },
        )
        .await;
        self.task.abort();
        let seen = self.seen.lock().unwrap().clone();
        waited.map_err(|e| E2eError::Check(format!("{e}; seen: {seen:?}")))?;
        Ok(seen)
    }
}

/// `expected` (kstatus, Argo CD) pairs appear in this order in `seen`. The
/// Argo CD side is checked only when a Lua interpreter ran.
fn assert_sequence(step: &str, seen: &[Seen], expected: &[(&str, &str)]) {
    let mut from = 0;
    for (k, argo) in expected {
        let at = seen[from..]
            .iter()
            .position(|s| s.kstatus == *k && s.argocd.as_deref().is_none_or(|a| a == *argo))
            .unwrap_or_else(|| {
                panic!("{step}: kstatus {k} with Argo CD {argo} not seen after {from} in {seen:#?}")
            });
        from += at;
    }
    let summary: Vec<String> = seen
        .iter()
        .map(|s| {
            format!(
                "+{:.1}s {}/{}",
                s.after.as_secs_f64(),
                s.kstatus,
                s.argocd.as_deref().unwrap_or("-")
            )
        })
        .collect();
    eprintln!("[{NS}] {step}: {}", summary.join(" → "));
}

/// Faults and what followed, relative to the latest fault.
struct Timeline {
    start: Instant,
    fault: Mutex<Instant>,
    lines: Mutex<Vec<String>>,
}

impl Timeline {
    fn new() -> Timeline {
        Timeline {
            start: Instant::now(),
            fault: Mutex::new(Instant::now()),
            lines: Mutex::new(Vec::new()),
        }
    }

    fn fault(&self, at: Instant, what: &str) {
        *self.fault.lock().unwrap() = at;
        self.push(at, what, None);
    }

    fn event(&self, what: &str) {
        let fault = *self.fault.lock().unwrap();
        self.push(Instant::now(), what, Some(fault));
    }

    fn push(&self, at: Instant, what: &str, since: Option<Instant>) {
        let line = match since {
            None => format!("{:7.1}s  FAULT  {what}", (at - self.start).as_secs_f64()),
            Some(f) => format!(
                "{:7.1}s  +{:5.1}s  {what}",
                (at - self.start).as_secs_f64(),
                (at - f).as_secs_f64()
            ),
        };
        eprintln!("[{NS}] {line}");
        self.lines.lock().unwrap().push(line);
    }

    fn print(&self) {
        eprintln!(
            "[{NS}] alert timeline (rules' durations ÷{SCALE}, scrapes and evaluations every {TICK:?}):\n{}",
            self.lines.lock().unwrap().join("\n")
        );
    }
}

#[test]
fn durations_are_scaled() {
    assert_eq!(scaled("1m", 60).unwrap(), "1000ms");
    assert_eq!(scaled("1h30m", 60).unwrap(), "90000ms");
    assert_eq!(scaled("500ms", 60).unwrap(), "8ms");
    assert!(scaled("5", 60).is_err());
    assert!(scaled("5x", 60).is_err());
    assert_eq!(
        scale_windows(
            "changes(max by (a) (x)[15m:]) > 0 and rate(y[5m]) > 0 and z[1h:1m]",
            60
        )
        .unwrap(),
        "changes(max by (a) (x)[15000ms:]) > 0 and rate(y[5000ms]) > 0 and z[60000ms:1000ms]"
    );
}

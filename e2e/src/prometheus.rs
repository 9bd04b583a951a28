//! A real Prometheus server (3.16, built by `.ci/build-k8s-tools.sh` next to
//! the control plane) for monitoring scenarios, and the scrape configurations
//! the Prometheus Operator would give it for Capstan's `PodMonitor` and
//! `ServiceMonitor` objects. Test infrastructure, never part of the product.
//!
//! [`Prometheus::start`] runs `prometheus` as a child process of the test. It
//! inherits the test's network namespace ([`crate::netns`]), so it reaches
//! pod addresses and the API server as the test does; it listens on the
//! namespace's loopback only, keeps its TSDB and its log (`prometheus.log`,
//! stdout and stderr) in the directory it is given (under the harness's state
//! directory), and is killed when dropped (or when the test process dies).
//! Its HTTP API is read with [`Prometheus::alerts`], [`Prometheus::query`],
//! [`Prometheus::targets`] and [`Prometheus::rules`].
//!
//! # Scrape configurations from Prometheus Operator objects
//!
//! [`scrape_configs`] turns a `PodMonitor` or `ServiceMonitor`
//! (`monitoring.coreos.com/v1`, as JSON read from the API server) into the
//! `scrape_configs` entries the Prometheus Operator (v0.85,
//! `pkg/prometheus/promcfg.go`) generates for it, for a `Prometheus` object
//! with default settings (no scrape class, no enforced namespace label, no
//! `overrideHonorLabels`/`ignoreNamespaceSelectors`, one shard: the sharding
//! relabelings, which keep every target with one shard, are left out). One
//! scrape configuration per endpoint, named `podMonitor/<ns>/<name>/<i>` or
//! `serviceMonitor/<ns>/<name>/<i>`, discovering through
//! `kubernetes_sd_configs` (role `pod` for a PodMonitor, `endpoints` for a
//! ServiceMonitor) with the `kubeconfig_file` given (the harness's admin
//! kubeconfig, [`crate::harness::Harness::kubeconfig`]).
//!
//! Supported, converted as the Prometheus Operator does:
//! - `spec.selector`: `matchLabels` and `matchExpressions` (`In`, `NotIn`,
//!   `Exists`, `DoesNotExist`) as `keep`/`drop` relabelings on
//!   `__meta_kubernetes_{pod,service}_label_<sanitized>` and `…_labelpresent_…`;
//! - `spec.namespaceSelector`: `any: true` (every namespace) or `matchNames`;
//!   without either, the object's own namespace;
//! - `spec.jobLabel`, `spec.podTargetLabels`, and for a ServiceMonitor
//!   `spec.targetLabels`;
//! - per endpoint (`spec.podMetricsEndpoints[]` / `spec.endpoints[]`): `port`
//!   (by port name; a PodMonitor also `portNumber`), `path`, `scheme`,
//!   `interval`, `scrapeTimeout`, `honorLabels`, `filterRunning`,
//!   `tlsConfig.insecureSkipVerify`, `relabelings` and `metricRelabelings`
//!   (fields `sourceLabels`, `separator`, `targetLabel`, `regex`, `modulus`,
//!   `replacement`, `action`);
//! - the operator's standard relabelings, in its order: `job` copied to
//!   `__tmp_prometheus_job_name`, the running-pod filter, the selector, the
//!   port, then the target labels `namespace`, `container`, `pod` (and for a
//!   ServiceMonitor `node`/`pod` from the endpoint's target, `service`), the
//!   target labels asked for, `job` (`<ns>/<name>` for a PodMonitor, the
//!   Service's name for a ServiceMonitor, or `jobLabel`'s value), `endpoint`
//!   (the port name), and only then the object's own `relabelings`.
//!
//! Any other field (authentication, TLS files or secrets, `params`,
//! `targetPort`, limits, `attachMetadata`, `selectorMechanism`,
//! `scrapeClassName`, …) is refused with an error naming it, so a chart that
//! starts using one fails the scenario instead of being scraped differently
//! from how the Prometheus Operator would.
//!
//! [`rule_file`] writes a `PrometheusRule`'s groups as a Prometheus rule file
//! (dropping Thanos' `partial_response_strategy`, as the operator does for
//! Prometheus); Prometheus itself refuses any field it does not know.
//! [`prometheus_operator_crds`] lists the operator's CRD files (PodMonitor,
//! ServiceMonitor, PrometheusRule) that the tool build copied next to the
//! binaries, for applying them to the harness's API server.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::E2eError;
use crate::controlplane;

/// The Prometheus release the tools are built at (e2e/k8s-tools/go.mod).
pub const PROMETHEUS_VERSION: &str = "3.16.0";
/// The Prometheus Operator version whose CRDs the tool build copies and whose
/// config generation [`scrape_configs`] follows.
pub const PROMETHEUS_OPERATOR_VERSION: &str = "v0.85.0";

/// Ready (`/-/ready`) within this after start.
const READY_WITHIN: Duration = Duration::from_secs(60);
/// One HTTP request to Prometheus.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// A tool built by `.ci/build-k8s-tools.sh` (`$CAPSTAN_K8S_BIN/<name>`).
pub(crate) fn tool(name: &str) -> Result<PathBuf, E2eError> {
    let path = controlplane::tools_dir()?.join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(E2eError::Setup(format!(
            "{} is missing: re-run .ci/build-k8s-tools.sh and export CAPSTAN_K8S_BIN to the \
             directory it prints",
            path.display()
        )))
    }
}

/// The Prometheus Operator's CRDs (`monitoring.coreos.com_podmonitors.yaml`,
/// `…_servicemonitors.yaml`, `…_prometheusrules.yaml`, as published in
/// `example/prometheus-operator-crd/` of its module), from
/// `$CAPSTAN_K8S_BIN/crds/`: e.g. `kubectl apply --server-side -f` each.
pub fn prometheus_operator_crds() -> Result<Vec<PathBuf>, E2eError> {
    let dir = controlplane::tools_dir()?.join("crds");
    let files: Vec<PathBuf> = ["podmonitors", "servicemonitors", "prometheusrules"]
        .iter()
        .map(|plural| dir.join(format!("monitoring.coreos.com_{plural}.yaml")))
        .collect();
    if let Some(missing) = files.iter().find(|f| !f.is_file()) {
        return Err(E2eError::Setup(format!(
            "{} is missing: re-run .ci/build-k8s-tools.sh and export CAPSTAN_K8S_BIN to the \
             directory it prints",
            missing.display()
        )));
    }
    Ok(files)
}

/// What Prometheus is configured with.
#[derive(Clone, Debug)]
pub struct PrometheusConfig {
    /// `global.scrape_interval` (jobs may set their own).
    pub scrape_interval: Duration,
    /// `global.evaluation_interval` of the rule groups.
    pub evaluation_interval: Duration,
    /// `rule_files`: paths of rule files (e.g. written with [`rule_file`]).
    pub rule_files: Vec<PathBuf>,
    /// `scrape_configs`, e.g. from [`scrape_configs`].
    pub scrape_configs: Vec<Value>,
}

impl PrometheusConfig {
    /// Global intervals of `interval` (tests use 1 s), no rules, no scrapes.
    pub fn every(interval: Duration) -> PrometheusConfig {
        PrometheusConfig {
            scrape_interval: interval,
            evaluation_interval: interval,
            rule_files: Vec::new(),
            scrape_configs: Vec::new(),
        }
    }

    /// The configuration file's text (JSON, which is YAML).
    pub fn to_text(&self) -> String {
        let rule_files: Vec<String> = self
            .rule_files
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        let config = json!({
            "global": {
                "scrape_interval": duration(self.scrape_interval),
                "evaluation_interval": duration(self.evaluation_interval),
            },
            "rule_files": rule_files,
            "scrape_configs": self.scrape_configs,
        });
        // Serializing a Value cannot fail.
        serde_json::to_string_pretty(&config).unwrap_or_default()
    }
}

/// A Prometheus duration: whole seconds as `<n>s`, else milliseconds.
fn duration(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// An alert of `/api/v1/alerts`.
#[derive(Clone, Debug, PartialEq)]
pub struct Alert {
    /// `alertname`.
    pub name: String,
    /// `pending` or `firing`.
    pub state: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// `activeAt` (RFC 3339), when the alert's condition started to hold.
    pub active_at: Option<String>,
    /// The expression's value that made it active, as Prometheus prints it.
    pub value: String,
}

/// One element of an instant vector (`/api/v1/query`).
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub labels: BTreeMap<String, String>,
    /// Unix seconds.
    pub timestamp: f64,
    pub value: f64,
}

/// An active target of `/api/v1/targets`.
#[derive(Clone, Debug, PartialEq)]
pub struct ScrapeTarget {
    /// The scrape config's `job_name`.
    pub scrape_pool: String,
    pub scrape_url: String,
    /// `up`, `down` or `unknown` (not scraped yet).
    pub health: String,
    pub last_error: String,
    /// The target's labels after relabeling.
    pub labels: BTreeMap<String, String>,
}

/// A rule of `/api/v1/rules`.
#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    pub group: String,
    /// The alert's or recording rule's name.
    pub name: String,
    /// `alerting` or `recording`.
    pub kind: String,
    /// `ok`, `err` or `unknown` (not evaluated yet).
    pub health: String,
    pub last_error: String,
    /// Alerting rules: `inactive`, `pending` or `firing`.
    pub state: Option<String>,
}

/// A running Prometheus; killed (SIGKILL) when dropped.
pub struct Prometheus {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Prometheus {
    /// Writes `config` to `<dir>/prometheus.yml` and starts Prometheus with
    /// its TSDB in `<dir>/data` and its output in `<dir>/prometheus.log`,
    /// listening on a free port of the namespace's loopback, and waits until
    /// it is ready (rules loaded, config applied). A config Prometheus
    /// refuses fails here with the end of its log.
    pub async fn start(dir: &Path, config: &PrometheusConfig) -> Result<Prometheus, E2eError> {
        let program = tool("prometheus")?;
        let io = |e: std::io::Error| E2eError::Setup(format!("{}: {e}", dir.display()));
        std::fs::create_dir_all(dir.join("data")).map_err(io)?;
        let config_file = dir.join("prometheus.yml");
        std::fs::write(&config_file, config.to_text()).map_err(io)?;
        // A free port: the namespace is the test's own, nobody else binds.
        let port = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .map_err(|e| E2eError::Setup(format!("no free port for Prometheus: {e}")))?
            .port();
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let log = dir.join("prometheus.log");
        let out = std::fs::File::create(&log).map_err(io)?;
        let err = out.try_clone().map_err(io)?;
        let mut command = Command::new(&program);
        command
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            // POST /-/reload (Prometheus::reload).
            .arg("--web.enable-lifecycle")
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        controlplane::die_with_parent(&mut command);
        let child = command
            .spawn()
            .map_err(|e| E2eError::Setup(format!("cannot start {}: {e}", program.display())))?;
        let mut prometheus = Prometheus {
            child,
            addr,
            dir: dir.to_path_buf(),
        };
        prometheus.wait_ready().await?;
        Ok(prometheus)
    }

    async fn wait_ready(&mut self) -> Result<(), E2eError> {
        let deadline = tokio::time::Instant::now() + READY_WITHIN;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(E2eError::Setup(format!(
                    "prometheus exited ({status}); its log ends:\n{}",
                    self.log_tail(20)
                )));
            }
            if let Ok((200, _)) = http(self.addr, "GET", "/-/ready").await {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(E2eError::Setup(format!(
                    "prometheus not ready within {READY_WITHIN:?}; its log ends:\n{}",
                    self.log_tail(20)
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Where it listens (the test namespace's loopback).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its directory: `prometheus.yml`, `data/`, `prometheus.log`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Its stdout and stderr.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("prometheus.log")
    }

    /// The last `lines` lines of its log, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Rewrites the config file with `config` and has Prometheus apply it
    /// (`POST /-/reload`; rule files are read again too). A config it
    /// refuses is an error, and the old one stays in force.
    pub async fn reload(&self, config: &PrometheusConfig) -> Result<(), E2eError> {
        let file = self.dir.join("prometheus.yml");
        std::fs::write(&file, config.to_text())
            .map_err(|e| E2eError::Setup(format!("{}: {e}", file.display())))?;
        match http(self.addr, "POST", "/-/reload").await? {
            (200, _) => Ok(()),
            (code, body) => Err(E2eError::Check(format!(
                "prometheus refused the new config ({code}): {}",
                body.trim()
            ))),
        }
    }

    /// `GET /api/v1/<path>`: its `data` when `status` is `success`.
    async fn api(&self, path_and_query: &str) -> Result<Value, E2eError> {
        let (code, body) = http(self.addr, "GET", &format!("/api/v1/{path_and_query}")).await?;
        api_data(code, &body).map_err(|e| E2eError::Check(format!("/api/v1/{path_and_query}: {e}")))
    }

    /// Every pending or firing alert (`GET /api/v1/alerts`).
    pub async fn alerts(&self) -> Result<Vec<Alert>, E2eError> {
        parse_alerts(&self.api("alerts").await?)
    }

    /// The alert `name` once it is in `state` (`pending` or `firing`),
    /// polling every 500 ms for up to `timeout`.
    pub async fn wait_alert(
        &self,
        name: &str,
        state: &str,
        timeout: Duration,
    ) -> Result<Alert, E2eError> {
        crate::harness::wait_for(
            &format!("alert {name} {state} in Prometheus"),
            timeout,
            Duration::from_millis(500),
            || async {
                let alerts = self.alerts().await.ok()?;
                alerts
                    .into_iter()
                    .find(|a| a.name == name && a.state == state)
            },
        )
        .await
    }

    /// Evaluates `expr` now (`GET /api/v1/query`): the instant vector's
    /// samples (a scalar is one sample without labels).
    pub async fn query(&self, expr: &str) -> Result<Vec<Sample>, E2eError> {
        let data = self
            .api(&format!("query?query={}", percent_encode(expr)))
            .await?;
        parse_samples(&data).map_err(|e| E2eError::Check(format!("query {expr:?}: {e}")))
    }

    /// Active targets and their health (`GET /api/v1/targets?state=active`).
    pub async fn targets(&self) -> Result<Vec<ScrapeTarget>, E2eError> {
        parse_targets(&self.api("targets?state=active").await?)
    }

    /// Every loaded rule and its evaluation health (`GET /api/v1/rules`).
    pub async fn rules(&self) -> Result<Vec<Rule>, E2eError> {
        parse_rules(&self.api("rules").await?)
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.0 request (no body; the answer ends when the connection
/// closes, never chunked): status code and body.
async fn http(addr: SocketAddr, method: &str, target: &str) -> Result<(u16, String), E2eError> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        let request =
            format!("{method} {target} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: 0\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        Ok::<_, std::io::Error>(response)
    };
    let response = tokio::time::timeout(HTTP_TIMEOUT, exchange)
        .await
        .map_err(|_| {
            E2eError::Check(format!(
                "prometheus {method} {target}: no answer within {HTTP_TIMEOUT:?}"
            ))
        })?
        .map_err(|e| E2eError::Check(format!("prometheus {method} {target}: {e}")))?;
    parse_response(&response)
        .map_err(|e| E2eError::Check(format!("prometheus {method} {target}: {e}")))
}

/// Status code and body of a raw HTTP/1.x response.
fn parse_response(response: &[u8]) -> Result<(u16, String), String> {
    let text = String::from_utf8_lossy(response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("malformed HTTP response: {text:?}"))?;
    let status_line = head.lines().next().unwrap_or_default();
    let code = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .filter(|_| status_line.starts_with("HTTP/1."))
        .ok_or_else(|| format!("malformed status line {status_line:?}"))?;
    Ok((code, body.to_string()))
}

/// `data` of an API answer whose `status` is `success`.
fn api_data(code: u16, body: &str) -> Result<Value, String> {
    let answer: Value =
        serde_json::from_str(body).map_err(|e| format!("HTTP {code}, not JSON ({e}): {body}"))?;
    if answer["status"] == "success" {
        Ok(answer["data"].clone())
    } else {
        Err(format!(
            "HTTP {code}, {}: {}",
            answer["errorType"].as_str().unwrap_or("error"),
            answer["error"].as_str().unwrap_or(body)
        ))
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn from_value<T: for<'de> Deserialize<'de>>(what: &str, v: &Value) -> Result<T, E2eError> {
    T::deserialize(v)
        .map_err(|e| E2eError::Check(format!("unexpected {what} from Prometheus: {e}")))
}

fn parse_alerts(data: &Value) -> Result<Vec<Alert>, E2eError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Raw {
        #[serde(default)]
        labels: BTreeMap<String, String>,
        #[serde(default)]
        annotations: BTreeMap<String, String>,
        state: String,
        active_at: Option<String>,
        #[serde(default)]
        value: String,
    }
    let raw: Vec<Raw> = from_value("alerts", &data["alerts"])?;
    Ok(raw
        .into_iter()
        .map(|a| Alert {
            name: a.labels.get("alertname").cloned().unwrap_or_default(),
            state: a.state,
            labels: a.labels,
            annotations: a.annotations,
            active_at: a.active_at,
            value: a.value,
        })
        .collect())
}

/// A sample's `[<unix seconds>, "<value>"]`.
fn sample_value(v: &Value) -> Result<(f64, f64), String> {
    let ts = v[0]
        .as_f64()
        .ok_or_else(|| format!("sample without a timestamp: {v}"))?;
    let value = v[1]
        .as_str()
        .and_then(|s| s.parse::<f64>().ok())
        .ok_or_else(|| format!("sample without a value: {v}"))?;
    Ok((ts, value))
}

fn parse_samples(data: &Value) -> Result<Vec<Sample>, String> {
    match data["resultType"].as_str() {
        Some("vector") => {
            let result = data["result"]
                .as_array()
                .ok_or_else(|| format!("vector without a result: {data}"))?;
            result
                .iter()
                .map(|s| {
                    let labels: BTreeMap<String, String> =
                        serde_json::from_value(s["metric"].clone())
                            .map_err(|e| format!("sample labels: {e}"))?;
                    let (timestamp, value) = sample_value(&s["value"])?;
                    Ok(Sample {
                        labels,
                        timestamp,
                        value,
                    })
                })
                .collect()
        }
        Some("scalar") => {
            let (timestamp, value) = sample_value(&data["result"])?;
            Ok(vec![Sample {
                labels: BTreeMap::new(),
                timestamp,
                value,
            }])
        }
        other => Err(format!(
            "result type {other:?}, not an instant vector: {data}"
        )),
    }
}

fn parse_targets(data: &Value) -> Result<Vec<ScrapeTarget>, E2eError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Raw {
        scrape_pool: String,
        scrape_url: String,
        health: String,
        #[serde(default)]
        last_error: String,
        #[serde(default)]
        labels: BTreeMap<String, String>,
    }
    let raw: Vec<Raw> = from_value("targets", &data["activeTargets"])?;
    Ok(raw
        .into_iter()
        .map(|t| ScrapeTarget {
            scrape_pool: t.scrape_pool,
            scrape_url: t.scrape_url,
            health: t.health,
            last_error: t.last_error,
            labels: t.labels,
        })
        .collect())
}

fn parse_rules(data: &Value) -> Result<Vec<Rule>, E2eError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct RawRule {
        name: String,
        #[serde(rename = "type")]
        kind: String,
        #[serde(default)]
        health: String,
        #[serde(default)]
        last_error: String,
        state: Option<String>,
    }
    #[derive(Deserialize)]
    struct RawGroup {
        name: String,
        #[serde(default)]
        rules: Vec<RawRule>,
    }
    let groups: Vec<RawGroup> = from_value("rules", &data["groups"])?;
    Ok(groups
        .into_iter()
        .flat_map(|g| {
            let group = g.name;
            g.rules.into_iter().map(move |r| Rule {
                group: group.clone(),
                name: r.name,
                kind: r.kind,
                health: r.health,
                last_error: r.last_error,
                state: r.state,
            })
        })
        .collect())
}

/// The text of a Prometheus rule file holding a `PrometheusRule`'s
/// `spec.groups`, without `partial_response_strategy` (Thanos only), as the
/// Prometheus Operator writes it for Prometheus. JSON, which is YAML.
pub fn rule_file(prometheus_rule: &Value) -> Result<String, E2eError> {
    let what = object_name(prometheus_rule, "PrometheusRule")?;
    let groups = prometheus_rule["spec"]["groups"]
        .as_array()
        .ok_or_else(|| E2eError::Check(format!("{what}: spec.groups is not a list")))?;
    let groups: Vec<Value> = groups
        .iter()
        .map(|g| {
            let mut g = g.clone();
            if let Some(map) = g.as_object_mut() {
                map.remove("partial_response_strategy");
            }
            g
        })
        .collect();
    Ok(serde_json::to_string_pretty(&json!({ "groups": groups })).unwrap_or_default())
}

/// `<kind> <namespace>/<name>` of a `monitoring.coreos.com/v1` object.
fn object_name(object: &Value, kind: &str) -> Result<String, E2eError> {
    let api_version = object["apiVersion"].as_str().unwrap_or_default();
    let actual = object["kind"].as_str().unwrap_or_default();
    if api_version != "monitoring.coreos.com/v1" || actual != kind {
        return Err(E2eError::Check(format!(
            "expected a monitoring.coreos.com/v1 {kind}, got {api_version} {actual}"
        )));
    }
    let ns = object["metadata"]["namespace"].as_str().unwrap_or_default();
    let name = object["metadata"]["name"].as_str().unwrap_or_default();
    if ns.is_empty() || name.is_empty() {
        return Err(E2eError::Check(format!(
            "{kind} without metadata.namespace and metadata.name"
        )));
    }
    Ok(format!("{kind} {ns}/{name}"))
}

/// The two monitor kinds and what differs between their configurations.
#[derive(Clone, Copy, PartialEq, Eq)]
enum MonitorKind {
    Pod,
    Service,
}

impl MonitorKind {
    fn name(self) -> &'static str {
        match self {
            MonitorKind::Pod => "PodMonitor",
            MonitorKind::Service => "ServiceMonitor",
        }
    }
    /// `job_name` prefix.
    fn job_prefix(self) -> &'static str {
        match self {
            MonitorKind::Pod => "podMonitor",
            MonitorKind::Service => "serviceMonitor",
        }
    }
    /// Service discovery role.
    fn role(self) -> &'static str {
        match self {
            MonitorKind::Pod => "pod",
            MonitorKind::Service => "endpoints",
        }
    }
    /// Whose labels the selector, `jobLabel` and `targetLabels` look at.
    fn selected(self) -> &'static str {
        match self {
            MonitorKind::Pod => "pod",
            MonitorKind::Service => "service",
        }
    }
    fn endpoints_field(self) -> &'static str {
        match self {
            MonitorKind::Pod => "podMetricsEndpoints",
            MonitorKind::Service => "endpoints",
        }
    }
    fn spec_fields(self) -> &'static [&'static str] {
        match self {
            MonitorKind::Pod => &[
                "selector",
                "namespaceSelector",
                "podMetricsEndpoints",
                "jobLabel",
                "podTargetLabels",
            ],
            MonitorKind::Service => &[
                "selector",
                "namespaceSelector",
                "endpoints",
                "jobLabel",
                "targetLabels",
                "podTargetLabels",
            ],
        }
    }
    fn endpoint_fields(self) -> &'static [&'static str] {
        match self {
            MonitorKind::Pod => &[
                "port",
                "portNumber",
                "path",
                "scheme",
                "interval",
                "scrapeTimeout",
                "honorLabels",
                "filterRunning",
                "tlsConfig",
                "relabelings",
                "metricRelabelings",
            ],
            MonitorKind::Service => &[
                "port",
                "path",
                "scheme",
                "interval",
                "scrapeTimeout",
                "honorLabels",
                "filterRunning",
                "tlsConfig",
                "relabelings",
                "metricRelabelings",
            ],
        }
    }
}

/// Prometheus' label-name sanitizing (`[^a-zA-Z0-9_]` → `_`).
fn sanitize_label_name(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

fn unsupported(path: &str) -> E2eError {
    E2eError::Check(format!(
        "{path} is not supported by the e2e scrape-config conversion (e2e/src/prometheus.rs): \
         add it there, as the Prometheus Operator converts it, or leave it out of the chart"
    ))
}

/// `value` as an object whose keys are all in `allowed`.
fn fields<'a>(
    value: &'a Value,
    path: &str,
    allowed: &[&str],
) -> Result<&'a Map<String, Value>, E2eError> {
    let map = value
        .as_object()
        .ok_or_else(|| E2eError::Check(format!("{path} is not an object: {value}")))?;
    match map.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(key) => Err(unsupported(&format!("{path}.{key}"))),
        None => Ok(map),
    }
}

fn string<'a>(
    map: &'a Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<Option<&'a str>, E2eError> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(E2eError::Check(format!(
            "{path}.{key} is not a string: {other}"
        ))),
    }
}

fn boolean(map: &Map<String, Value>, key: &str, path: &str) -> Result<Option<bool>, E2eError> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(E2eError::Check(format!(
            "{path}.{key} is not a boolean: {other}"
        ))),
    }
}

fn strings(map: &Map<String, Value>, key: &str, path: &str) -> Result<Vec<String>, E2eError> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| {
                v.as_str().map(str::to_string).ok_or_else(|| {
                    E2eError::Check(format!("{path}.{key} has a non-string item: {v}"))
                })
            })
            .collect(),
        Some(other) => Err(E2eError::Check(format!(
            "{path}.{key} is not a list: {other}"
        ))),
    }
}

/// The scrape configurations the Prometheus Operator generates for a
/// `PodMonitor` or `ServiceMonitor` (see the module documentation for the
/// supported subset; anything else is an error), discovering targets with
/// the API server access of `kubeconfig`.
pub fn scrape_configs(monitor: &Value, kubeconfig: &Path) -> Result<Vec<Value>, E2eError> {
    let kind = match monitor["kind"].as_str() {
        Some("PodMonitor") => MonitorKind::Pod,
        Some("ServiceMonitor") => MonitorKind::Service,
        other => {
            return Err(E2eError::Check(format!(
                "expected a PodMonitor or ServiceMonitor, got kind {other:?}"
            )));
        }
    };
    let what = object_name(monitor, kind.name())?;
    let ns = monitor["metadata"]["namespace"]
        .as_str()
        .unwrap_or_default();
    let name = monitor["metadata"]["name"].as_str().unwrap_or_default();
    let spec = fields(
        &monitor["spec"],
        &format!("{what}: spec"),
        kind.spec_fields(),
    )?;
    let path = |p: &str| format!("{what}: spec.{p}");

    let namespaces = namespaces(
        spec.get("namespaceSelector"),
        ns,
        &path("namespaceSelector"),
    )?;
    let selector = spec
        .get("selector")
        .ok_or_else(|| E2eError::Check(format!("{what}: spec.selector is required")))?;
    let selector = selector_relabelings(selector, kind.selected(), &path("selector"))?;
    let job_label = string(spec, "jobLabel", &path(""))?;
    let target_labels = strings(spec, "targetLabels", &path(""))?;
    let pod_target_labels = strings(spec, "podTargetLabels", &path(""))?;

    let endpoints = match spec.get(kind.endpoints_field()) {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items.clone(),
        Some(other) => {
            return Err(E2eError::Check(format!(
                "{}: not a list: {other}",
                path(kind.endpoints_field())
            )));
        }
    };
    let mut configs = Vec::with_capacity(endpoints.len());
    for (i, ep) in endpoints.iter().enumerate() {
        let ep_path = path(&format!("{}[{i}]", kind.endpoints_field()));
        let ep = fields(ep, &ep_path, kind.endpoint_fields())?;

        let mut sd =
            json!({"role": kind.role(), "kubeconfig_file": kubeconfig.display().to_string()});
        if let Some(names) = &namespaces {
            sd["namespaces"] = json!({ "names": names });
        }
        let mut config = json!({
            "job_name": format!("{}/{ns}/{name}/{i}", kind.job_prefix()),
            "honor_labels": boolean(ep, "honorLabels", &ep_path)?.unwrap_or(false),
            "kubernetes_sd_configs": [sd],
        });
        for (field, key) in [
            ("interval", "scrape_interval"),
            ("scrapeTimeout", "scrape_timeout"),
            ("path", "metrics_path"),
        ] {
            if let Some(v) = string(ep, field, &ep_path)?.filter(|v| !v.is_empty()) {
                config[key] = json!(v);
            }
        }
        if let Some(scheme) = string(ep, "scheme", &ep_path)?.filter(|v| !v.is_empty()) {
            config["scheme"] = json!(scheme.to_ascii_lowercase());
        }
        if let Some(tls) = ep.get("tlsConfig") {
            let tls_path = format!("{ep_path}.tlsConfig");
            let tls = fields(tls, &tls_path, &["insecureSkipVerify"])?;
            let mut out = json!({});
            if let Some(skip) = boolean(tls, "insecureSkipVerify", &tls_path)? {
                out["insecure_skip_verify"] = json!(skip);
            }
            config["tls_config"] = out;
        }

        let port = string(ep, "port", &ep_path)?.filter(|p| !p.is_empty());
        let port_number = match ep.get("portNumber") {
            None | Some(Value::Null) => None,
            Some(v) => Some(v.as_u64().filter(|n| *n > 0).ok_or_else(|| {
                E2eError::Check(format!("{ep_path}.portNumber is not a port number: {v}"))
            })?),
        };
        let filter_running = boolean(ep, "filterRunning", &ep_path)?.unwrap_or(true);

        let mut relabel = vec![json!({
            "source_labels": ["job"],
            "target_label": "__tmp_prometheus_job_name",
        })];
        let running = json!({
            "action": "drop",
            "source_labels": ["__meta_kubernetes_pod_phase"],
            "regex": "(Failed|Succeeded)",
        });
        if kind == MonitorKind::Pod && filter_running {
            relabel.push(running.clone());
        }
        relabel.extend(selector.iter().cloned());
        match (kind, port, port_number) {
            (MonitorKind::Pod, Some(port), _) => relabel.push(json!({
                "action": "keep",
                "source_labels": ["__meta_kubernetes_pod_container_port_name"],
                "regex": port,
            })),
            (MonitorKind::Pod, None, Some(n)) => relabel.push(json!({
                "action": "keep",
                "source_labels": ["__meta_kubernetes_pod_container_port_number"],
                "regex": n,
            })),
            (MonitorKind::Service, Some(port), _) => relabel.push(json!({
                "action": "keep",
                "source_labels": ["__meta_kubernetes_endpoint_port_name"],
                "regex": port,
            })),
            _ => {}
        }
        let copy = |from: &str, to: &str| json!({"source_labels": [from], "target_label": to});
        match kind {
            MonitorKind::Pod => {
                relabel.push(copy("__meta_kubernetes_namespace", "namespace"));
                relabel.push(copy("__meta_kubernetes_pod_container_name", "container"));
                relabel.push(copy("__meta_kubernetes_pod_name", "pod"));
            }
            MonitorKind::Service => {
                let target = [
                    "__meta_kubernetes_endpoint_address_target_kind",
                    "__meta_kubernetes_endpoint_address_target_name",
                ];
                for (target_kind, label) in [("Node", "node"), ("Pod", "pod")] {
                    relabel.push(json!({
                        "source_labels": target,
                        "separator": ";",
                        "regex": format!("{target_kind};(.*)"),
                        "replacement": "${1}",
                        "target_label": label,
                    }));
                }
                relabel.push(copy("__meta_kubernetes_namespace", "namespace"));
                relabel.push(copy("__meta_kubernetes_service_name", "service"));
                relabel.push(copy("__meta_kubernetes_pod_name", "pod"));
                relabel.push(copy("__meta_kubernetes_pod_container_name", "container"));
                if filter_running {
                    relabel.push(running);
                }
                for l in &target_labels {
                    relabel.push(label_to_target("service", l));
                }
            }
        }
        for l in &pod_target_labels {
            relabel.push(label_to_target("pod", l));
        }
        relabel.push(match kind {
            MonitorKind::Pod => {
                json!({"target_label": "job", "replacement": format!("{ns}/{name}")})
            }
            MonitorKind::Service => json!({
                "source_labels": ["__meta_kubernetes_service_name"],
                "target_label": "job",
                "replacement": "${1}",
            }),
        });
        if let Some(l) = job_label.filter(|l| !l.is_empty()) {
            let mut rule = label_to_target(kind.selected(), l);
            rule["target_label"] = json!("job");
            relabel.push(rule);
        }
        if let Some(port) = port {
            relabel.push(json!({"target_label": "endpoint", "replacement": port}));
        }
        relabel.extend(relabel_configs(ep, "relabelings", &ep_path)?);
        config["relabel_configs"] = json!(relabel);
        let metric_relabel = relabel_configs(ep, "metricRelabelings", &ep_path)?;
        if !metric_relabel.is_empty() {
            config["metric_relabel_configs"] = json!(metric_relabel);
        }
        configs.push(config);
    }
    Ok(configs)
}

/// `__meta_kubernetes_<whose>_label_<l>` copied to `<l>` when set.
fn label_to_target(whose: &str, label: &str) -> Value {
    let l = sanitize_label_name(label);
    json!({
        "source_labels": [format!("__meta_kubernetes_{whose}_label_{l}")],
        "target_label": l,
        "regex": "(.+)",
        "replacement": "${1}",
    })
}

/// Namespaces to discover in: `None` for all (`any: true`).
fn namespaces(
    selector: Option<&Value>,
    own: &str,
    path: &str,
) -> Result<Option<Vec<String>>, E2eError> {
    let Some(selector) = selector.filter(|s| !s.is_null()) else {
        return Ok(Some(vec![own.to_string()]));
    };
    let map = fields(selector, path, &["any", "matchNames"])?;
    if boolean(map, "any", path)?.unwrap_or(false) {
        return Ok(None);
    }
    let names = strings(map, "matchNames", path)?;
    if names.is_empty() {
        Ok(Some(vec![own.to_string()]))
    } else {
        Ok(Some(names))
    }
}

/// `keep`/`drop` relabelings of a label selector on the labels of `whose`
/// (`pod` or `service`).
fn selector_relabelings(selector: &Value, whose: &str, path: &str) -> Result<Vec<Value>, E2eError> {
    let map = fields(selector, path, &["matchLabels", "matchExpressions"])?;
    let meta = |key: &str| {
        let k = sanitize_label_name(key);
        (
            format!("__meta_kubernetes_{whose}_label_{k}"),
            format!("__meta_kubernetes_{whose}_labelpresent_{k}"),
        )
    };
    let mut out = Vec::new();
    if let Some(labels) = map.get("matchLabels").filter(|v| !v.is_null()) {
        let labels = labels.as_object().ok_or_else(|| {
            E2eError::Check(format!("{path}.matchLabels is not an object: {labels}"))
        })?;
        let mut keys: Vec<&String> = labels.keys().collect();
        keys.sort();
        for key in keys {
            let value = labels[key.as_str()].as_str().ok_or_else(|| {
                E2eError::Check(format!("{path}.matchLabels.{key} is not a string"))
            })?;
            let (label, present) = meta(key);
            out.push(json!({
                "action": "keep",
                "source_labels": [label, present],
                "regex": format!("({value});true"),
            }));
        }
    }
    let expressions = match map.get("matchExpressions") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items.clone(),
        Some(other) => {
            return Err(E2eError::Check(format!(
                "{path}.matchExpressions is not a list: {other}"
            )));
        }
    };
    for (i, expression) in expressions.iter().enumerate() {
        let e_path = format!("{path}.matchExpressions[{i}]");
        let e = fields(expression, &e_path, &["key", "operator", "values"])?;
        let key = string(e, "key", &e_path)?
            .ok_or_else(|| E2eError::Check(format!("{e_path}.key is required")))?;
        let values = strings(e, "values", &e_path)?.join("|");
        let (label, present) = meta(key);
        out.push(match string(e, "operator", &e_path)? {
            Some("In") => json!({
                "action": "keep", "source_labels": [label, present], "regex": format!("({values});true"),
            }),
            Some("NotIn") => json!({
                "action": "drop", "source_labels": [label, present], "regex": format!("({values});true"),
            }),
            Some("Exists") => json!({"action": "keep", "source_labels": [present], "regex": "true"}),
            Some("DoesNotExist") => {
                json!({"action": "drop", "source_labels": [present], "regex": "true"})
            }
            other => {
                return Err(E2eError::Check(format!(
                    "{e_path}.operator {other:?} is not a label selector operator"
                )));
            }
        });
    }
    Ok(out)
}

/// An endpoint's `relabelings` or `metricRelabelings` (camelCase) as
/// Prometheus `relabel_configs` (the operator's `generateRelabelConfig`:
/// only the fields given, `action` lower-cased).
fn relabel_configs(
    endpoint: &Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<Vec<Value>, E2eError> {
    let items = match endpoint.get(key) {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(other) => {
            return Err(E2eError::Check(format!(
                "{path}.{key} is not a list: {other}"
            )));
        }
    };
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let r_path = format!("{path}.{key}[{i}]");
        let r = fields(
            item,
            &r_path,
            &[
                "sourceLabels",
                "separator",
                "targetLabel",
                "regex",
                "modulus",
                "replacement",
                "action",
            ],
        )?;
        let mut rule = Map::new();
        let source_labels = strings(r, "sourceLabels", &r_path)?;
        if !source_labels.is_empty() {
            rule.insert("source_labels".into(), json!(source_labels));
        }
        if let Some(separator) = string(r, "separator", &r_path)? {
            rule.insert("separator".into(), json!(separator));
        }
        if let Some(target) = string(r, "targetLabel", &r_path)?.filter(|t| !t.is_empty()) {
            rule.insert("target_label".into(), json!(target));
        }
        if let Some(regex) = string(r, "regex", &r_path)?.filter(|t| !t.is_empty()) {
            rule.insert("regex".into(), json!(regex));
        }
        match r.get("modulus") {
            None | Some(Value::Null) => {}
            Some(m) => {
                let m = m.as_u64().ok_or_else(|| {
                    E2eError::Check(format!("{r_path}.modulus is not a number: {m}"))
                })?;
                if m != 0 {
                    rule.insert("modulus".into(), json!(m));
                }
            }
        }
        if let Some(replacement) = string(r, "replacement", &r_path)? {
            rule.insert("replacement".into(), json!(replacement));
        }
        if let Some(action) = string(r, "action", &r_path)?.filter(|a| !a.is_empty()) {
            rule.insert("action".into(), json!(action.to_ascii_lowercase()));
        }
        out.push(Value::Object(rule));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KUBECONFIG: &str = "/state/controlplane/admin.kubeconfig";

    fn pod_monitor() -> Value {
        json!({
            "apiVersion": "monitoring.coreos.com/v1",
            "kind": "PodMonitor",
            "metadata": {"name": "capstan-instances", "namespace": "capstan-system"},
            "spec": {
                "namespaceSelector": {"any": true},
                "selector": {"matchLabels": {
                    "app.kubernetes.io/name": "capstan",
                    "app.kubernetes.io/component": "instance",
                }},
                "podMetricsEndpoints": [{
                    "port": "metrics",
                    "path": "/metrics",
                    "scheme": "https",
                    "interval": "1s",
                    "tlsConfig": {"insecureSkipVerify": true},
                    "relabelings": [{
                        "sourceLabels": ["__meta_kubernetes_pod_label_capstan_dev_cluster"],
                        "targetLabel": "cluster",
                        "action": "Replace",
                    }],
                }],
            },
        })
    }

    #[test]
    fn a_pod_monitor_becomes_the_operators_scrape_config() {
        let configs = scrape_configs(&pod_monitor(), Path::new(KUBECONFIG)).unwrap();
        let expected = json!([{
            "job_name": "podMonitor/capstan-system/capstan-instances/0",
            "honor_labels": false,
            "kubernetes_sd_configs": [{"role": "pod", "kubeconfig_file": KUBECONFIG}],
            "scrape_interval": "1s",
            "metrics_path": "/metrics",
            "scheme": "https",
            "tls_config": {"insecure_skip_verify": true},
            "relabel_configs": [
                {"source_labels": ["job"], "target_label": "__tmp_prometheus_job_name"},
                {"action": "drop", "source_labels": ["__meta_kubernetes_pod_phase"], "regex": "(Failed|Succeeded)"},
                {"action": "keep", "source_labels": [
                    "__meta_kubernetes_pod_label_app_kubernetes_io_component",
                    "__meta_kubernetes_pod_labelpresent_app_kubernetes_io_component"],
                 "regex": "(instance);true"},
                {"action": "keep", "source_labels": [
                    "__meta_kubernetes_pod_label_app_kubernetes_io_name",
                    "__meta_kubernetes_pod_labelpresent_app_kubernetes_io_name"],
                 "regex": "(capstan);true"},
                {"action": "keep", "source_labels": ["__meta_kubernetes_pod_container_port_name"], "regex": "metrics"},
                {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
                {"source_labels": ["__meta_kubernetes_pod_container_name"], "target_label": "container"},
                {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
                {"target_label": "job", "replacement": "capstan-system/capstan-instances"},
                {"target_label": "endpoint", "replacement": "metrics"},
                // The object's own relabelings come last, action lower-cased.
                {"source_labels": ["__meta_kubernetes_pod_label_capstan_dev_cluster"],
                 "target_label": "cluster", "action": "replace"},
            ],
        }]);
        assert_eq!(json!(configs), expected);
    }

    #[test]
    fn a_service_monitor_becomes_the_operators_scrape_config() {
        let monitor = json!({
            "apiVersion": "monitoring.coreos.com/v1",
            "kind": "ServiceMonitor",
            "metadata": {"name": "capstan-operator", "namespace": "capstan-system"},
            "spec": {
                "selector": {"matchLabels": {"app.kubernetes.io/component": "operator"}},
                "endpoints": [{"port": "http", "interval": "1s", "honorLabels": true}],
            },
        });
        let configs = scrape_configs(&monitor, Path::new(KUBECONFIG)).unwrap();
        let target = [
            "__meta_kubernetes_endpoint_address_target_kind",
            "__meta_kubernetes_endpoint_address_target_name",
        ];
        let expected = json!([{
            "job_name": "serviceMonitor/capstan-system/capstan-operator/0",
            "honor_labels": true,
            // Without a namespaceSelector: the object's own namespace.
            "kubernetes_sd_configs": [{"role": "endpoints", "kubeconfig_file": KUBECONFIG,
                                       "namespaces": {"names": ["capstan-system"]}}],
            "scrape_interval": "1s",
            "relabel_configs": [
                {"source_labels": ["job"], "target_label": "__tmp_prometheus_job_name"},
                {"action": "keep", "source_labels": [
                    "__meta_kubernetes_service_label_app_kubernetes_io_component",
                    "__meta_kubernetes_service_labelpresent_app_kubernetes_io_component"],
                 "regex": "(operator);true"},
                {"action": "keep", "source_labels": ["__meta_kubernetes_endpoint_port_name"], "regex": "http"},
                {"source_labels": target, "separator": ";", "regex": "Node;(.*)", "replacement": "${1}", "target_label": "node"},
                {"source_labels": target, "separator": ";", "regex": "Pod;(.*)", "replacement": "${1}", "target_label": "pod"},
                {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
                {"source_labels": ["__meta_kubernetes_service_name"], "target_label": "service"},
                {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
                {"source_labels": ["__meta_kubernetes_pod_container_name"], "target_label": "container"},
                {"action": "drop", "source_labels": ["__meta_kubernetes_pod_phase"], "regex": "(Failed|Succeeded)"},
                {"source_labels": ["__meta_kubernetes_service_name"], "target_label": "job", "replacement": "${1}"},
                {"target_label": "endpoint", "replacement": "http"},
            ],
        }]);
        assert_eq!(json!(configs), expected);
    }

    #[test]
    fn namespace_selectors_expressions_and_target_labels() {
        let monitor = json!({
            "apiVersion": "monitoring.coreos.com/v1",
            "kind": "PodMonitor",
            "metadata": {"name": "m", "namespace": "mon"},
            "spec": {
                "namespaceSelector": {"matchNames": ["a", "b"]},
                "selector": {"matchExpressions": [
                    {"key": "role", "operator": "In", "values": ["primary", "replica"]},
                    {"key": "skip", "operator": "DoesNotExist"},
                ]},
                "jobLabel": "app.kubernetes.io/instance",
                "podTargetLabels": ["capstan.dev/cluster"],
                "podMetricsEndpoints": [{"portNumber": 9187, "filterRunning": false,
                                         "metricRelabelings": [{"action": "labeldrop", "regex": "tmp_.*"}]}],
            },
        });
        let configs = scrape_configs(&monitor, Path::new(KUBECONFIG)).unwrap();
        let c = &configs[0];
        assert_eq!(
            c["kubernetes_sd_configs"][0]["namespaces"]["names"],
            json!(["a", "b"])
        );
        let relabel = c["relabel_configs"].as_array().unwrap();
        // No running filter, and no endpoint label without a port name.
        assert!(
            !relabel
                .iter()
                .any(|r| r["source_labels"] == json!(["__meta_kubernetes_pod_phase"]))
        );
        assert!(!relabel.iter().any(|r| r["target_label"] == "endpoint"));
        assert_eq!(
            relabel[1],
            json!({"action": "keep", "source_labels": ["__meta_kubernetes_pod_label_role",
                   "__meta_kubernetes_pod_labelpresent_role"], "regex": "(primary|replica);true"})
        );
        assert_eq!(
            relabel[2],
            json!({"action": "drop", "source_labels": ["__meta_kubernetes_pod_labelpresent_skip"], "regex": "true"})
        );
        assert_eq!(
            relabel[3],
            json!({"action": "keep", "source_labels": ["__meta_kubernetes_pod_container_port_number"], "regex": 9187})
        );
        assert!(relabel.contains(
            &json!({"source_labels": ["__meta_kubernetes_pod_label_capstan_dev_cluster"],
            "target_label": "capstan_dev_cluster", "regex": "(.+)", "replacement": "${1}"})
        ));
        // The default job, then jobLabel's value when the pod has it.
        let job: Vec<&Value> = relabel
            .iter()
            .filter(|r| r["target_label"] == "job")
            .collect();
        assert_eq!(
            job[0],
            &json!({"target_label": "job", "replacement": "mon/m"})
        );
        assert_eq!(
            job[1]["source_labels"],
            json!(["__meta_kubernetes_pod_label_app_kubernetes_io_instance"])
        );
        assert_eq!(
            c["metric_relabel_configs"],
            json!([{"action": "labeldrop", "regex": "tmp_.*"}])
        );
    }

    #[test]
    fn unsupported_fields_are_refused_by_name() {
        let mut monitor = pod_monitor();
        monitor["spec"]["podMetricsEndpoints"][0]["basicAuth"] = json!({});
        let err = scrape_configs(&monitor, Path::new(KUBECONFIG))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(
                "PodMonitor capstan-system/capstan-instances: spec.podMetricsEndpoints[0].basicAuth"
            ),
            "{err}"
        );

        let mut monitor = pod_monitor();
        monitor["spec"]["podMetricsEndpoints"][0]["tlsConfig"]["serverName"] = json!("x");
        let err = scrape_configs(&monitor, Path::new(KUBECONFIG))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("tlsConfig.serverName is not supported"),
            "{err}"
        );

        let mut monitor = pod_monitor();
        monitor["spec"]["sampleLimit"] = json!(10);
        let err = scrape_configs(&monitor, Path::new(KUBECONFIG))
            .unwrap_err()
            .to_string();
        assert!(err.contains("spec.sampleLimit is not supported"), "{err}");

        let mut monitor = pod_monitor();
        monitor["spec"]["podMetricsEndpoints"][0]["relabelings"][0]["extra"] = json!(1);
        let err = scrape_configs(&monitor, Path::new(KUBECONFIG))
            .unwrap_err()
            .to_string();
        assert!(err.contains("relabelings[0].extra"), "{err}");

        let mut monitor = pod_monitor();
        monitor["kind"] = json!("Probe");
        assert!(scrape_configs(&monitor, Path::new(KUBECONFIG)).is_err());
    }

    #[test]
    fn the_config_file_names_intervals_rules_and_scrapes() {
        let mut config = PrometheusConfig::every(Duration::from_secs(1));
        config.evaluation_interval = Duration::from_millis(500);
        config.rule_files = vec![PathBuf::from("/t/rules.yaml")];
        config.scrape_configs = scrape_configs(&pod_monitor(), Path::new(KUBECONFIG)).unwrap();
        let parsed: Value = serde_json::from_str(&config.to_text()).unwrap();
        assert_eq!(
            parsed["global"],
            json!({"scrape_interval": "1s", "evaluation_interval": "500ms"})
        );
        assert_eq!(parsed["rule_files"], json!(["/t/rules.yaml"]));
        assert_eq!(
            parsed["scrape_configs"][0]["job_name"],
            "podMonitor/capstan-system/capstan-instances/0"
        );
    }

    /// `promtool check config` accepts the generated file (when the tools
    /// are built: `CAPSTAN_K8S_BIN`).
    #[test]
    fn promtool_accepts_the_generated_config() {
        let Ok(promtool) = tool("promtool") else {
            eprintln!("SKIP: no promtool (CAPSTAN_K8S_BIN)");
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("admin.kubeconfig");
        std::fs::write(&kubeconfig, "apiVersion: v1\nkind: Config\n").unwrap();
        let rules = dir.path().join("rules.yaml");
        let rule = json!({"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule",
            "metadata": {"name": "r", "namespace": "n"},
            "spec": {"groups": [{"name": "g", "partial_response_strategy": "warn",
                "rules": [{"alert": "Up", "expr": "up == 0", "for": "1s", "labels": {"severity": "page"}}]}]}});
        std::fs::write(&rules, rule_file(&rule).unwrap()).unwrap();
        let service_monitor = json!({
            "apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor",
            "metadata": {"name": "s", "namespace": "n"},
            "spec": {"selector": {}, "namespaceSelector": {"any": true},
                     "endpoints": [{"port": "http", "relabelings": [
                        {"action": "labelmap", "regex": "__meta_kubernetes_service_label_(.+)"}]}]},
        });
        let mut config = PrometheusConfig::every(Duration::from_secs(1));
        config.rule_files = vec![rules];
        config.scrape_configs = scrape_configs(&pod_monitor(), &kubeconfig).unwrap();
        config
            .scrape_configs
            .extend(scrape_configs(&service_monitor, &kubeconfig).unwrap());
        let file = dir.path().join("prometheus.yml");
        std::fs::write(&file, config.to_text()).unwrap();
        let out = Command::new(promtool)
            .args(["check", "config"])
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn a_rule_file_keeps_groups_without_thanos_fields() {
        let rule = json!({"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule",
            "metadata": {"name": "r", "namespace": "n"},
            "spec": {"groups": [{"name": "g", "interval": "1s", "partial_response_strategy": "warn",
                                 "rules": [{"alert": "A", "expr": "vector(1)"}]}]}});
        let text: Value = serde_json::from_str(&rule_file(&rule).unwrap()).unwrap();
        assert_eq!(
            text,
            json!({"groups": [{"name": "g", "interval": "1s",
                                            "rules": [{"alert": "A", "expr": "vector(1)"}]}]})
        );
        let mut wrong = rule.clone();
        wrong["kind"] = json!("PodMonitor");
        assert!(rule_file(&wrong).is_err());
    }

    #[test]
    fn api_answers_are_parsed() {
        let alerts = json!({"alerts": [{
            "labels": {"alertname": "CapstanClusterDegraded", "namespace": "db", "severity": "warning"},
            "annotations": {"summary": "x"},
            "state": "firing", "activeAt": "2026-12-06T16:00:00.5Z", "value": "1e+00"}]});
        let parsed = parse_alerts(&alerts).unwrap();
        assert_eq!(parsed[0].name, "CapstanClusterDegraded");
        assert_eq!(parsed[0].state, "firing");
        assert_eq!(parsed[0].labels["namespace"], "db");
        assert_eq!(
            parsed[0].active_at.as_deref(),
            Some("2026-12-06T16:00:00.5Z")
        );

        let vector = json!({"resultType": "vector", "result": [
            {"metric": {"__name__": "up", "pod": "p"}, "value": [1700000000.5, "1"]},
            {"metric": {}, "value": [1700000000.5, "NaN"]}]});
        let samples = parse_samples(&vector).unwrap();
        assert_eq!(samples[0].labels["pod"], "p");
        assert_eq!(samples[0].value, 1.0);
        assert_eq!(samples[0].timestamp, 1700000000.5);
        assert!(samples[1].value.is_nan());
        let scalar = json!({"resultType": "scalar", "result": [1.0, "+Inf"]});
        assert_eq!(parse_samples(&scalar).unwrap()[0].value, f64::INFINITY);
        assert!(parse_samples(&json!({"resultType": "matrix", "result": []})).is_err());

        let targets = json!({"activeTargets": [{"scrapePool": "podMonitor/a/b/0",
            "scrapeUrl": "https://10.244.0.5:8443/metrics", "health": "down",
            "lastError": "connection refused", "labels": {"pod": "p"},
            "discoveredLabels": {}}], "droppedTargets": []});
        let t = &parse_targets(&targets).unwrap()[0];
        assert_eq!(
            (t.health.as_str(), t.last_error.as_str()),
            ("down", "connection refused")
        );

        let rules = json!({"groups": [{"name": "g", "file": "f", "rules": [
            {"name": "A", "type": "alerting", "health": "ok", "state": "firing", "query": "x"},
            {"name": "r:x", "type": "recording", "health": "err", "lastError": "bad"}]}]});
        let r = parse_rules(&rules).unwrap();
        assert_eq!(r[0].state.as_deref(), Some("firing"));
        assert_eq!(
            (r[1].kind.as_str(), r[1].last_error.as_str()),
            ("recording", "bad")
        );

        assert_eq!(
            api_data(200, r#"{"status":"success","data":[1]}"#).unwrap(),
            json!([1])
        );
        let err = api_data(
            400,
            r#"{"status":"error","errorType":"bad_data","error":"parse error"}"#,
        )
        .unwrap_err();
        assert!(err.contains("bad_data: parse error"), "{err}");
    }

    #[test]
    fn http_responses_and_query_encoding() {
        let (code, body) =
            parse_response(b"HTTP/1.0 200 OK\r\nContent-Type: x\r\n\r\n{\"a\":1}").unwrap();
        assert_eq!((code, body.as_str()), (200, "{\"a\":1}"));
        assert!(parse_response(b"garbage").is_err());
        assert_eq!(
            percent_encode(r#"sum by (pod) (rate(x{a="b c"}[1m])) > 0.5"#),
            "sum%20by%20%28pod%29%20%28rate%28x%7Ba%3D%22b%20c%22%7D%5B1m%5D%29%29%20%3E%200.5"
        );
        assert_eq!(duration(Duration::from_secs(1)), "1s");
        assert_eq!(duration(Duration::from_millis(1500)), "1500ms");
    }
}

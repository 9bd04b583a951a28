//! The shipped alert rules (charts/capstan/files/prometheus-rules.yaml):
//! promtool accepts them and their unit tests pass; every alert is tested
//! firing and silent, has a runbook entry, and names only metrics Capstan
//! exports. Every exporter's exposition passes `promtool check metrics`.
//! The chart renders the rules and monitors only when asked.

#[allow(dead_code)]
#[path = "support/tools.rs"]
mod tools;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const RULES: &str = "charts/capstan/files/prometheus-rules.yaml";
const RULE_TESTS: &str = "tests/monitoring/rules.test.yaml";
const RUNBOOK: &str = "docs/monitoring.md";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn yaml(path: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(root().join(path)).unwrap();
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Alert name -> rule.
fn alerts() -> BTreeMap<String, serde_json::Value> {
    yaml(RULES)["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap().clone())
        .map(|r| (r["alert"].as_str().unwrap().to_string(), r))
        .collect()
}

fn run(tool: &Path, args: &[&str], dir: &Path, stdin: Option<&str>) {
    let mut child = Command::new(tool)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{} {args:?} failed:\n{}{}",
        tool.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn promtool_checks_the_rules_and_runs_their_unit_tests() {
    let Some(promtool) = tools::k8s_tool("promtool") else {
        return;
    };
    run(&promtool, &["check", "rules", RULES], &root(), None);
    run(&promtool, &["test", "rules", RULE_TESTS], &root(), None);
}

#[test]
fn every_alert_is_tested_firing_and_silent() {
    let tests = yaml(RULE_TESTS);
    let mut firing = BTreeSet::new();
    let mut silent = BTreeSet::new();
    for case in tests["tests"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|t| t["alert_rule_test"].as_array().cloned().unwrap_or_default())
    {
        let name = case["alertname"].as_str().unwrap().to_string();
        let expected = case["exp_alerts"].as_array().map_or(0, Vec::len);
        if expected == 0 {
            silent.insert(name);
        } else {
            firing.insert(name);
        }
    }
    for alert in alerts().keys() {
        assert!(firing.contains(alert), "no test sees {alert} fire");
        assert!(silent.contains(alert), "no test sees {alert} stay silent");
    }
}

#[test]
fn every_alert_has_a_severity_texts_and_a_runbook_entry() {
    let runbook = std::fs::read_to_string(root().join(RUNBOOK)).unwrap();
    for (name, rule) in alerts() {
        let severity = rule["labels"]["severity"].as_str().unwrap_or_default();
        assert!(
            ["critical", "warning"].contains(&severity),
            "{name}: severity {severity:?}"
        );
        for key in ["summary", "description"] {
            assert!(
                rule["annotations"][key]
                    .as_str()
                    .is_some_and(|s| !s.is_empty()),
                "{name}: no {key}"
            );
        }
        let anchor = name.to_lowercase();
        let url = rule["annotations"]["runbook_url"]
            .as_str()
            .unwrap_or_default();
        assert!(
            url.ends_with(&format!("/{RUNBOOK}#{anchor}")),
            "{name}: runbook_url {url:?} does not point at {RUNBOOK}#{anchor}"
        );
        assert!(
            runbook.lines().any(|l| l == format!("### {name}")),
            "{RUNBOOK} has no '### {name}' entry"
        );
    }
}

/// Metric names in a PromQL expression: identifiers of Capstan's own and
/// PgBouncer's families (of the labels, only `capstan_cluster` starts so).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut word = String::new();
    for c in expr.chars().chain(std::iter::once(' ')) {
        if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
            word.push(c);
            continue;
        }
        // A label name is followed by a matcher or sits in a grouping.
        let label = matches!(c, '=' | '!') || word == "capstan_cluster";
        if !label && (word.starts_with("capstan_") || word.starts_with("pgbouncer_")) {
            names.insert(std::mem::take(&mut word));
        }
        word.clear();
    }
    names
}

#[test]
fn rules_name_only_metrics_capstan_exports() {
    let exported = capstan::monitoring::exported_metric_names();
    for (name, rule) in alerts() {
        let expr = rule["expr"].as_str().unwrap();
        let used = metric_names(expr);
        assert!(!used.is_empty() || expr.contains("up{"), "{name}: {expr}");
        for metric in used {
            assert!(
                exported.contains(&metric),
                "{name} uses {metric}, which no exporter serves"
            );
        }
    }
    assert_eq!(
        metric_names(r#"sum by (capstan_cluster) (capstan_x{capstan_cluster="a"}) / pgbouncer_y"#),
        BTreeSet::from(["capstan_x".to_string(), "pgbouncer_y".to_string()])
    );
}

#[test]
fn every_exporter_passes_promtool_check_metrics() {
    let Some(promtool) = tools::k8s_tool("promtool") else {
        return;
    };
    for (exporter, openmetrics) in capstan::monitoring::expositions() {
        let text = capstan::monitoring::to_text_format(&openmetrics);
        assert!(text.contains("# TYPE"), "{exporter}: {text}");
        run(&promtool, &["check", "metrics"], &root(), Some(&text));
    }
}

fn helm_template(helm: &Path, set: &str) -> Vec<serde_json::Value> {
    let mut args = vec![
        "template",
        "x",
        "charts/capstan",
        "--namespace",
        "capstan-system",
    ];
    if !set.is_empty() {
        args.extend(["--set", set]);
    }
    let out = Command::new(helm)
        .args(&args)
        .current_dir(root())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "helm {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .split("\n---")
        .filter_map(|doc| serde_saphyr::from_str::<serde_json::Value>(doc).ok())
        .filter(|v| v.is_object())
        .collect()
}

fn kinds(objects: &[serde_json::Value]) -> Vec<String> {
    objects
        .iter()
        .map(|o| {
            format!(
                "{}/{}",
                o["kind"].as_str().unwrap(),
                o["metadata"]["name"].as_str().unwrap()
            )
        })
        .collect()
}

#[test]
fn the_chart_renders_monitors_and_rules_only_when_asked() {
    let Some(helm) = tools::k8s_tool("helm") else {
        return;
    };
    let plain = kinds(&helm_template(&helm, ""));
    assert!(
        !plain.iter().any(|k| k.starts_with("PodMonitor")
            || k.starts_with("ServiceMonitor")
            || k.starts_with("PrometheusRule")
            || k == "Service/capstan-operator-metrics"),
        "{plain:?}"
    );
    let objects = helm_template(
        &helm,
        "monitoring.podMonitors.enabled=true,monitoring.serviceMonitor.enabled=true,monitoring.prometheusRule.enabled=true,monitoring.podMonitors.labels.release=kube-prometheus",
    );
    let all = kinds(&objects);
    for kind in [
        "PodMonitor/capstan-instances",
        "PodMonitor/capstan-poolers",
        "Service/capstan-operator-metrics",
        "ServiceMonitor/capstan-operator",
        "PrometheusRule/capstan-operator",
    ] {
        assert!(all.iter().any(|k| k == kind), "{kind} missing from {all:?}");
    }
    let rule = objects
        .iter()
        .find(|o| o["kind"] == "PrometheusRule")
        .unwrap();
    assert_eq!(rule["spec"]["groups"], yaml(RULES)["groups"]);
    let instances = objects
        .iter()
        .find(|o| o["metadata"]["name"] == "capstan-instances")
        .unwrap();
    assert_eq!(
        instances["metadata"]["labels"]["release"],
        "kube-prometheus"
    );
    assert_eq!(
        instances["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"],
        "database"
    );
    let endpoint = &instances["spec"]["podMetricsEndpoints"][0];
    assert_eq!(endpoint["port"], "agent");
    assert_eq!(endpoint["scheme"], "https");
    // The Service the ServiceMonitor selects carries its selector's labels.
    let service = objects
        .iter()
        .find(|o| o["metadata"]["name"] == "capstan-operator-metrics")
        .unwrap();
    let monitor = objects
        .iter()
        .find(|o| o["kind"] == "ServiceMonitor")
        .unwrap();
    for (k, v) in monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .unwrap()
    {
        assert_eq!(&service["metadata"]["labels"][k], v, "{k}");
    }
    // A watched namespace limits the PodMonitors to it.
    let scoped = helm_template(
        &helm,
        "monitoring.podMonitors.enabled=true,watchNamespace=apps",
    );
    let pm = scoped.iter().find(|o| o["kind"] == "PodMonitor").unwrap();
    assert_eq!(
        pm["spec"]["namespaceSelector"],
        serde_json::json!({"matchNames": ["apps"]})
    );
}

#[test]
fn the_readme_carries_the_argocd_health_check_as_tested() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let lua = std::fs::read_to_string(root().join("docs/argocd-health.lua")).unwrap();
    let indented: Vec<String> = lua
        .lines()
        .map(|l| {
            if l.trim().is_empty() {
                String::new()
            } else {
                format!("    {l}")
            }
        })
        .collect();
    assert!(
        readme.contains(&indented.join("\n")),
        "README.md's Argo CD health check differs from docs/argocd-health.lua"
    );
}

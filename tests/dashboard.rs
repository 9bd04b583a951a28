//! The Grafana dashboard the chart ships (charts/capstan/files/
//! grafana-dashboard.json): its identity and templating, every panel's
//! shape, and every PromQL expression: it names only series a Capstan
//! exporter serves (`capstan::monitoring`), with labels those series carry,
//! is well formed, and is filtered on the dashboard's namespace and cluster
//! on every selector. With helm (and promtool) from .ci/build-k8s-tools.sh,
//! the chart renders the file verbatim into a ConfigMap and Prometheus parses
//! every expression.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};

const DASHBOARD: &str = "charts/capstan/files/grafana-dashboard.json";
const TEMPLATE: &str = "charts/capstan/templates/grafana-dashboard.yaml";
const DATASOURCE_UID: &str = "${datasource}";
const NAMESPACE_QUERY: &str = "label_values(capstan_postgres_up, namespace)";
const CLUSTER_QUERY: &str =
    r#"label_values(capstan_postgres_up{namespace="$namespace"}, capstan_cluster)"#;

/// Labels every scraped series carries besides its own: the PodMonitors'
/// and the ServiceMonitor's target labels (`capstan_cluster` from the pod's
/// cluster label; the operator's per-cluster series bring their own
/// `namespace` and `capstan_cluster`).
const TARGET_LABELS: &[&str] = &[
    "namespace",
    "capstan_cluster",
    "pod",
    "container",
    "endpoint",
    "instance",
    "job",
    "service",
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn dashboard() -> Value {
    serde_json::from_str(&read(DASHBOARD)).unwrap_or_else(|e| panic!("{DASHBOARD}: {e}"))
}

/// Every panel, rows' nested panels (a collapsed row holds its own) included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in dashboard["panels"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
    {
        out.push(p);
        if let Some(nested) = p["panels"].as_array() {
            out.extend(nested);
        }
    }
    out
}

fn is_row(panel: &Value) -> bool {
    panel["type"] == "row"
}

fn describe(panel: &Value) -> String {
    format!(
        "panel {} {:?}",
        panel["id"],
        panel["title"].as_str().unwrap_or("")
    )
}

fn variable<'a>(dashboard: &'a Value, name: &str) -> &'a Value {
    dashboard["templating"]["list"]
        .as_array()
        .and_then(|l| l.iter().find(|v| v["name"] == name))
        .unwrap_or_else(|| panic!("no template variable {name}"))
}

/// A query variable's PromQL: a plain string (older Grafana) or the
/// Prometheus query editor's object.
fn variable_query(var: &Value) -> &str {
    var["query"]
        .as_str()
        .or_else(|| var["query"]["query"].as_str())
        .unwrap_or_else(|| panic!("variable {} has no query", var["name"]))
}

// ------------------------------------------------------------------ PromQL

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    /// A Grafana variable: `$name` or `${name}` (as its name).
    Var(String),
    Num,
    Open(char),
    Close(char),
    Comma,
    Op(String),
}

fn lex(expr: &str) -> Result<Vec<Tok>, String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '"' || c == '\'' || c == '`' {
            let start = i;
            let mut text = String::new();
            i += 1;
            loop {
                match chars.get(i) {
                    None => return Err(format!("unterminated string from column {start}")),
                    Some('\\') if c != '`' => {
                        text.extend(chars.get(i + 1));
                        i += 2;
                    }
                    Some(&d) if d == c => {
                        i += 1;
                        break;
                    }
                    Some(&d) => {
                        text.push(d);
                        i += 1;
                    }
                }
            }
            out.push(Tok::Str(text));
        } else if c == '$' {
            i += 1;
            let name: String = if chars.get(i) == Some(&'{') {
                let close = chars[i..]
                    .iter()
                    .position(|&d| d == '}')
                    .ok_or_else(|| format!("unterminated ${{ at column {}", i - 1))?;
                let name = chars[i + 1..i + close].iter().collect();
                i += close + 1;
                name
            } else {
                let n: String = chars[i..].iter().take_while(|&&d| word(d)).collect();
                i += n.len();
                n
            };
            if name.is_empty() {
                return Err(format!("a lone $ at column {}", i - 1));
            }
            out.push(Tok::Var(name));
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            while i < chars.len() && (word(chars[i]) || chars[i] == '.') {
                i += 1;
            }
            out.push(Tok::Num);
        } else if word(c) {
            let n: String = chars[i..].iter().take_while(|&&d| word(d)).collect();
            i += n.len();
            out.push(Tok::Ident(n));
        } else if "([{".contains(c) {
            out.push(Tok::Open(c));
            i += 1;
        } else if ")]}".contains(c) {
            out.push(Tok::Close(c));
            i += 1;
        } else if c == ',' {
            out.push(Tok::Comma);
            i += 1;
        } else if "=!~<>+-*/%^@".contains(c) {
            let op: String = chars[i..]
                .iter()
                .take_while(|&&d| "=!~<>".contains(d))
                .collect();
            let op = if op.is_empty() { c.to_string() } else { op };
            i += op.chars().count();
            out.push(Tok::Op(op));
        } else {
            return Err(format!("unexpected {c:?} at column {i}"));
        }
    }
    Ok(out)
}

/// A series selector of a Capstan metric: `name{label op "value", ...}`.
#[derive(Debug)]
struct Selector {
    metric: String,
    matchers: Vec<(String, String, String)>,
}

#[derive(Debug, Default)]
struct Analysis {
    selectors: Vec<Selector>,
    /// Labels of `by`/`without`/`on`/`ignoring`/`group_left`/`group_right`.
    grouping: Vec<String>,
    problems: Vec<String>,
}

fn is_capstan_metric(name: &str) -> bool {
    name.starts_with("capstan_") || name.starts_with("pgbouncer_")
}

const GROUPING: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

fn analyse(expr: &str) -> Analysis {
    let mut a = Analysis::default();
    let toks = match lex(expr) {
        Ok(t) => t,
        Err(e) => {
            a.problems.push(e);
            return a;
        }
    };
    // Balanced delimiters.
    let mut stack = Vec::new();
    for t in &toks {
        match t {
            Tok::Open(c) => stack.push(*c),
            Tok::Close(c) => {
                let want = match c {
                    ')' => '(',
                    ']' => '[',
                    _ => '{',
                };
                if stack.pop() != Some(want) {
                    a.problems.push(format!("unbalanced {c:?}"));
                    return a;
                }
            }
            _ => {}
        }
    }
    if let Some(open) = stack.last() {
        a.problems.push(format!("unclosed {open:?}"));
        return a;
    }
    let mut i = 0;
    while i < toks.len() {
        match &toks[i] {
            Tok::Ident(word)
                if GROUPING.contains(&word.as_str())
                    && toks.get(i + 1) == Some(&Tok::Open('(')) =>
            {
                i += 2;
                while let Some(t) = toks.get(i) {
                    i += 1;
                    match t {
                        Tok::Ident(l) => a.grouping.push(l.clone()),
                        Tok::Comma => {}
                        Tok::Close(')') => break,
                        other => a
                            .problems
                            .push(format!("{other:?} in the labels of {word}")),
                    }
                }
            }
            Tok::Open('{') => {
                a.problems
                    .push("a selector without a metric name".to_string());
                i += 1;
                while toks.get(i).is_some_and(|t| *t != Tok::Close('}')) {
                    i += 1;
                }
            }
            Tok::Ident(name) if is_capstan_metric(name) => {
                if toks.get(i + 1) == Some(&Tok::Open('(')) {
                    a.problems.push(format!("{name} called as a function"));
                }
                let mut selector = Selector {
                    metric: name.clone(),
                    matchers: Vec::new(),
                };
                i += 1;
                if toks.get(i) == Some(&Tok::Open('{')) {
                    i += 1;
                    loop {
                        match (toks.get(i), toks.get(i + 1), toks.get(i + 2)) {
                            (Some(Tok::Close('}')), _, _) => {
                                i += 1;
                                break;
                            }
                            (Some(Tok::Comma), _, _) => i += 1,
                            (Some(Tok::Ident(l)), Some(Tok::Op(op)), Some(value))
                                if ["=", "!=", "=~", "!~"].contains(&op.as_str()) =>
                            {
                                let value = match value {
                                    Tok::Str(v) => v.clone(),
                                    other => {
                                        a.problems.push(format!(
                                            "{name}: {l}{op} takes a quoted value, not {other:?}"
                                        ));
                                        String::new()
                                    }
                                };
                                selector.matchers.push((l.clone(), op.clone(), value));
                                i += 3;
                            }
                            (t, _, _) => {
                                a.problems
                                    .push(format!("{name}: unexpected {t:?} in its matchers"));
                                while toks.get(i).is_some_and(|t| *t != Tok::Close('}')) {
                                    i += 1;
                                }
                            }
                        }
                    }
                }
                a.selectors.push(selector);
            }
            // Another metric's selector: its label names are no metrics.
            Tok::Ident(_) if toks.get(i + 1) == Some(&Tok::Open('{')) => {
                i += 2;
                while toks.get(i).is_some_and(|t| *t != Tok::Close('}')) {
                    i += 1;
                }
            }
            _ => i += 1,
        }
    }
    a
}

/// Whether the matchers select the dashboard's `$namespace` and `$cluster`.
fn missing_filters(selector: &Selector) -> Vec<&'static str> {
    let has = |label: &str, var: &str| {
        selector.matchers.iter().any(|(l, op, v)| {
            l == label
                && (op == "=" || op == "=~")
                && (*v == format!("${var}") || *v == format!("${{{var}}}"))
        })
    };
    let mut missing = Vec::new();
    if !has("namespace", "namespace") {
        missing.push(r#"namespace="$namespace""#);
    }
    if !has("capstan_cluster", "cluster") {
        missing.push(r#"capstan_cluster="$cluster""#);
    }
    missing
}

/// What the exporters serve: each series name with the labels its samples
/// carry. The instance and pooler catalogs hold a made-up figure for every
/// family; the operator's per-cluster families need a cluster in its cache
/// and its error family an error.
struct Catalog {
    names: BTreeSet<String>,
    labels: BTreeMap<String, BTreeSet<String>>,
}

fn catalog() -> Catalog {
    let operator = capstan::operator::metrics::Metrics::default();
    operator.reconciles.inc();
    operator.error(capstan::operator::metrics::ErrorCategory::Apply);
    operator.duration.observe(0.1);
    let (store, mut writer) = kube::runtime::reflector::store::<capstan::api::PostgresCluster>();
    let cluster: capstan::api::PostgresCluster = serde_json::from_value(json!({
        "apiVersion": "capstan.dev/v1alpha1",
        "kind": "PostgresCluster",
        "metadata": {"name": "db", "namespace": "apps"},
        "spec": {"instances": 1, "postgres": {"version": 17}, "storage": {"size": "1Gi"}},
        "status": {"conditions": [{
            "type": "Ready", "status": "True", "reason": "Ready",
            "message": "m", "lastTransitionTime": "2026-01-01T00:00:00Z"
        }]},
    }))
    .expect("a PostgresCluster for the operator's cache");
    writer.apply_watcher_event(&kube::runtime::watcher::Event::Apply(cluster));
    operator.watch_clusters(store);
    operator.failover("apps", "db");
    let operator = operator.encode().expect("operator exposition");

    let mut labels: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let texts = capstan::monitoring::expositions();
    for text in texts
        .iter()
        .map(|(_, t)| t.as_str())
        .chain([operator.as_str()])
    {
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            let set = labels.entry(line[..end].to_string()).or_default();
            if line[end..].starts_with('{') {
                let body = &line[end + 1..line.rfind('}').expect("closing brace")];
                for pair in body.split(',') {
                    if let Some((l, _)) = pair.split_once('=') {
                        set.insert(l.trim().to_string());
                    }
                }
            }
        }
    }
    Catalog {
        names: capstan::monitoring::exported_metric_names(),
        labels,
    }
}

/// Every problem with one target expression (and its legend).
fn check_expr(expr: &str, legend: &str, catalog: &Catalog) -> Vec<String> {
    let a = analyse(expr);
    let mut problems = a.problems.clone();
    if a.selectors.is_empty() && a.problems.is_empty() {
        problems.push("names no capstan_ or pgbouncer_ metric".into());
    }
    let mut known: BTreeSet<&str> = TARGET_LABELS.iter().copied().collect();
    for s in &a.selectors {
        if !catalog.names.contains(&s.metric) {
            problems.push(format!(
                "{} is not a metric Capstan exports (capstan::monitoring::exported_metric_names)",
                s.metric
            ));
            continue;
        }
        let own = catalog.labels.get(&s.metric);
        known.extend(own.iter().flat_map(|l| l.iter().map(String::as_str)));
        let missing = missing_filters(s);
        if !missing.is_empty() {
            problems.push(format!("{} lacks {}", s.metric, missing.join(" and ")));
        }
        for (l, _, _) in &s.matchers {
            if !TARGET_LABELS.contains(&l.as_str()) && !own.is_some_and(|o| o.contains(l)) {
                problems.push(format!("{} has no label {l}", s.metric));
            }
        }
    }
    for l in &a.grouping {
        if !known.contains(l.as_str()) {
            problems.push(format!("groups by {l}, a label none of its series carries"));
        }
    }
    let mut rest = legend;
    while let Some(start) = rest.find("{{") {
        let Some(len) = rest[start..].find("}}") else {
            problems.push(format!("unclosed {{{{ in legend {legend:?}"));
            break;
        };
        let label = rest[start + 2..start + len].trim();
        if !known.contains(label) {
            problems.push(format!(
                "legend {legend:?} names {label}, a label none of its series carries"
            ));
        }
        rest = &rest[start + len + 2..];
    }
    problems
}

/// Every problem with the dashboard's expressions, per panel and target.
fn check_expressions(dashboard: &Value, catalog: &Catalog) -> Vec<String> {
    let mut problems = Vec::new();
    for panel in panels(dashboard).into_iter().filter(|p| !is_row(p)) {
        for t in panel["targets"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[])
        {
            let expr = t["expr"].as_str().unwrap_or("");
            let legend = t["legendFormat"].as_str().unwrap_or("");
            for p in check_expr(expr, legend, catalog) {
                problems.push(format!(
                    "{} target {}: {p}\n    {expr}",
                    describe(panel),
                    t["refId"]
                ));
            }
        }
    }
    problems
}

// -------------------------------------------------------------------- tests

#[test]
fn dashboard_has_its_identity_and_templating() {
    let d = dashboard();
    assert_eq!(d["uid"], "capstan-cluster");
    assert_eq!(d["title"], "Capstan / PostgreSQL cluster");
    assert!(
        d["schemaVersion"].as_u64().is_some_and(|v| v >= 39),
        "schemaVersion {}",
        d["schemaVersion"]
    );
    let ds = variable(&d, "datasource");
    assert_eq!(ds["type"], "datasource");
    assert_eq!(ds["query"], "prometheus");
    for (name, query) in [("namespace", NAMESPACE_QUERY), ("cluster", CLUSTER_QUERY)] {
        let var = variable(&d, name);
        assert_eq!(var["type"], "query", "{name}");
        assert_eq!(var["datasource"]["uid"], DATASOURCE_UID, "{name}");
        assert_eq!(var["datasource"]["type"], "prometheus", "{name}");
        assert_eq!(variable_query(var), query, "{name}");
        if let Some(definition) = var["definition"].as_str() {
            assert_eq!(definition, query, "{name}: definition and query differ");
        }
    }
    // The cluster variable is read after the namespace one it depends on.
    let order: Vec<&str> = d["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    let at = |n: &str| order.iter().position(|o| *o == n).unwrap();
    assert!(
        at("datasource") < at("namespace") && at("namespace") < at("cluster"),
        "{order:?}"
    );
    // The variables' own queries name exported series too.
    let names = capstan::monitoring::exported_metric_names();
    for query in [NAMESPACE_QUERY, CLUSTER_QUERY] {
        let a = analyse(query);
        assert!(a.problems.is_empty(), "{query}: {:?}", a.problems);
        assert!(names.contains(&a.selectors[0].metric), "{query}");
    }
}

#[test]
fn every_panel_has_an_id_a_title_a_datasource_and_targets() {
    let d = dashboard();
    let all = panels(&d);
    let mut ids = BTreeSet::new();
    let mut cells: BTreeMap<(u64, u64), String> = BTreeMap::new();
    let mut content = 0;
    for p in &all {
        let id = p["id"]
            .as_u64()
            .unwrap_or_else(|| panic!("{} has no numeric id", describe(p)));
        assert!(ids.insert(id), "panel id {id} is used twice");
        assert!(
            p["title"].as_str().is_some_and(|t| !t.trim().is_empty()),
            "{} has no title",
            describe(p)
        );
        // On the 24-column grid, without overlaps.
        let g = &p["gridPos"];
        let [x, y, w, h] = ["x", "y", "w", "h"].map(|k| {
            g[k].as_u64()
                .unwrap_or_else(|| panic!("{} has no gridPos.{k}", describe(p)))
        });
        assert!(
            w > 0 && h > 0 && x + w <= 24,
            "{} lies off the grid",
            describe(p)
        );
        for cx in x..x + w {
            for cy in y..y + h {
                if let Some(other) = cells.insert((cx, cy), describe(p)) {
                    panic!("{} overlaps {other}", describe(p));
                }
            }
        }
        if is_row(p) {
            continue;
        }
        content += 1;
        assert_eq!(p["datasource"]["uid"], DATASOURCE_UID, "{}", describe(p));
        assert_eq!(p["datasource"]["type"], "prometheus", "{}", describe(p));
        let targets = p["targets"].as_array().map(Vec::as_slice).unwrap_or(&[]);
        assert!(!targets.is_empty(), "{} has no target", describe(p));
        let mut refs = BTreeSet::new();
        for t in targets {
            assert!(
                t["expr"].as_str().is_some_and(|e| !e.trim().is_empty()),
                "{}: a target without expr",
                describe(p)
            );
            assert!(
                t["refId"]
                    .as_str()
                    .is_some_and(|r| refs.insert(r.to_string())),
                "{}: refIds must be present and unique",
                describe(p)
            );
            if !t["datasource"].is_null() {
                assert_eq!(t["datasource"]["uid"], DATASOURCE_UID, "{}", describe(p));
            }
        }
    }
    // Readable: one screen per topic, not a wall.
    assert!((20..=28).contains(&content), "{content} panels");
}

#[test]
fn expressions_name_exported_metrics_with_their_labels_filtered_on_the_cluster() {
    let d = dashboard();
    let catalog = catalog();
    let problems = check_expressions(&d, &catalog);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // The topics the dashboard is for are all on it.
    let used: BTreeSet<String> = panels(&d)
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .flat_map(|t| analyse(t["expr"].as_str().unwrap_or("")).selectors)
        .map(|s| s.metric)
        .collect();
    for metric in [
        "capstan_postgres_role",
        "capstan_postgres_up",
        "capstan_postgres_timeline",
        "capstan_replication_lag_bytes",
        "capstan_replication_lag_seconds",
        "capstan_replication_synchronous_standbys",
        "capstan_replication_synchronous_required",
        "pgbouncer_stats_sql_transactions_pooled_total",
        "capstan_postgres_connections",
        "pgbouncer_pools_client_active_connections",
        "pgbouncer_pools_client_waiting_connections",
        "pgbouncer_used_clients",
        "pgbouncer_config_max_client_connections",
        "pgbouncer_pools_client_maxwait_seconds",
        "pgbouncer_stats_avg_wait_seconds",
        "capstan_pooler_paused",
        "capstan_wal_position_bytes",
        "capstan_wal_archived",
        "capstan_wal_archive_failing",
        "capstan_wal_last_archived_age_seconds",
        "capstan_volume_available_bytes",
        "capstan_volume_size_bytes",
        "capstan_backup_last_successful_age_seconds",
        "capstan_backup_last_result",
        "capstan_backup_running",
        "capstan_backup_repository_backups",
        "capstan_tls_certificate_expiry_timestamp_seconds",
        "capstan_operator_cluster_condition",
        "capstan_operator_failovers_total",
        "capstan_database_size_bytes",
        "capstan_postgres_xid_age",
        "capstan_postgres_pending_restart",
    ] {
        assert!(used.contains(metric), "no panel shows {metric}");
    }
}

/// The checks above fail on what they are for: a metric that does not
/// exist, a missing filter, a label the series lacks, unbalanced brackets.
#[test]
fn expression_checks_catch_broken_panels() {
    let catalog = catalog();
    let mut d = dashboard();
    let target = d["panels"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|p| p["title"] == "Transaction ID age")
        .expect("the Transaction ID age panel")
        .pointer_mut("/targets/0/expr")
        .unwrap();
    let expr = target.as_str().unwrap().to_string();
    assert!(expr.contains("capstan_postgres_xid_age{"), "{expr}");
    *target =
        Value::String(expr.replace("capstan_postgres_xid_age{", "capstan_postgres_xid_ages{"));
    let problems = check_expressions(&d, &catalog);
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert!(
        problems[0].contains("capstan_postgres_xid_ages is not a metric Capstan exports"),
        "{problems:#?}"
    );

    let f = r#"namespace="$namespace", capstan_cluster="$cluster""#;
    let ok = |e: &str| check_expr(e, "", &catalog);
    assert_eq!(
        ok(&format!(
            r#"sum by (pod, state) (capstan_postgres_connections{{{f}}})"#
        )),
        Vec::<String>::new()
    );
    assert_eq!(
        ok(r#"capstan_postgres_up{namespace=~"${namespace}", capstan_cluster=~"${cluster}"}"#),
        Vec::<String>::new()
    );
    for (expr, want) in [
        (
            r#"capstan_postgres_up{namespace="$namespace"}"#.to_string(),
            "lacks capstan_cluster",
        ),
        ("max(pgbouncer_up)".into(), "lacks namespace"),
        (
            r#"capstan_postgres_up{namespace="x", capstan_cluster="$cluster"}"#.into(),
            "lacks namespace",
        ),
        (format!("max(capstan_postgres_up{{{f}}}"), "unclosed '('"),
        (
            format!("rate(capstan_wal_archived{{{f}}}[5m)"),
            "unbalanced ')'",
        ),
        (
            format!(r#"capstan_postgres_role{{{f}, rol="primary"}}"#),
            "has no label rol",
        ),
        (
            format!("sum by (datname) (capstan_postgres_up{{{f}}})"),
            "groups by datname",
        ),
        ("up".into(), "names no capstan_"),
        (
            format!(r#"capstan_postgres_up{{{f}, pod="a}}"#),
            "unterminated string",
        ),
    ] {
        let problems = ok(&expr);
        assert!(
            problems.iter().any(|p| p.contains(want)),
            "{expr}: want {want:?}, got {problems:?}"
        );
    }
    let problems = check_expr(
        &format!("max by (pod) (capstan_postgres_up{{{f}}})"),
        "{{pod}} {{ podd }}",
        &catalog,
    );
    assert!(
        problems.iter().any(|p| p.contains("names podd")),
        "{problems:?}"
    );
}

// ---------------------------------------------------- helm and promtool

/// A tool .ci/build-k8s-tools.sh builds: in `$CAPSTAN_K8S_BIN`, or any
/// build under /var/cache/capstan/k8s-tools. Absent: a skip, except in CI.
fn k8s_tool(name: &str) -> Option<PathBuf> {
    let mut candidates = Vec::new();
    if let Some(dir) = std::env::var_os("CAPSTAN_K8S_BIN") {
        candidates.push(PathBuf::from(dir).join(name));
    }
    let mut builds: Vec<PathBuf> = std::fs::read_dir("/var/cache/capstan/k8s-tools")
        .map(|d| {
            d.flatten()
                .map(|e| e.path().join("bin").join(name))
                .collect()
        })
        .unwrap_or_default();
    builds.sort();
    candidates.extend(builds.into_iter().rev());
    if let Some(found) = candidates.into_iter().find(|p| p.is_file()) {
        return Some(found);
    }
    if std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false") {
        panic!(
            "{name} is required in CI: build it with .ci/build-k8s-tools.sh and export CAPSTAN_K8S_BIN"
        );
    }
    eprintln!(
        "SKIP: no {name} in $CAPSTAN_K8S_BIN or /var/cache/capstan/k8s-tools/*/bin \
         (build it with .ci/build-k8s-tools.sh)"
    );
    None
}

/// `helm template` of the chart, as its YAML documents.
fn helm_template(helm: &Path, args: &[&str]) -> Vec<Value> {
    let home = tempfile::tempdir().unwrap();
    let out = Command::new(helm)
        .args(["template", "x"])
        .arg(root().join("charts/capstan"))
        .args(args)
        .env("HELM_CACHE_HOME", home.path().join("cache"))
        .env("HELM_CONFIG_HOME", home.path().join("config"))
        .env("HELM_DATA_HOME", home.path().join("data"))
        .output()
        .expect("run helm");
    let stdout = String::from_utf8(out.stdout).expect("helm prints UTF-8");
    assert!(
        out.status.success(),
        "helm template {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_saphyr::from_multiple::<Value>(&stdout)
        .unwrap_or_else(|e| panic!("helm's output does not parse: {e}\n{stdout}"))
        .into_iter()
        .filter(|d| !d.is_null())
        .collect()
}

fn dashboard_config_maps(docs: &[Value]) -> Vec<&Value> {
    docs.iter()
        .filter(|d| {
            d["kind"] == "ConfigMap" && d["metadata"]["name"] == "capstan-operator-dashboard"
        })
        .collect()
}

#[test]
fn template_takes_the_file_verbatim() {
    let template = read(TEMPLATE);
    assert!(template.contains(r#".Files.Get "files/grafana-dashboard.json""#));
    // tpl would render Grafana's own {{...}} legends as Helm templates.
    assert!(
        !template.contains("tpl "),
        "{TEMPLATE} must not pass the dashboard through tpl"
    );
}

#[test]
fn chart_renders_the_dashboard_config_map() {
    let Some(helm) = k8s_tool("helm") else {
        return;
    };
    let file = read(DASHBOARD);

    let docs = helm_template(
        &helm,
        &[
            "--namespace",
            "capstan-system",
            "--set",
            "monitoring.grafanaDashboard.enabled=true",
        ],
    );
    let maps = dashboard_config_maps(&docs);
    assert_eq!(maps.len(), 1, "{docs:#?}");
    let cm = maps[0];
    assert_eq!(cm["apiVersion"], "v1");
    assert_eq!(cm["metadata"]["namespace"], "capstan-system");
    let data = cm["data"].as_object().unwrap();
    assert_eq!(data.keys().collect::<Vec<_>>(), ["capstan-cluster.json"]);
    let rendered = data["capstan-cluster.json"].as_str().unwrap();
    assert!(
        rendered == file,
        "the ConfigMap's dashboard differs from {DASHBOARD}"
    );
    let labels = &cm["metadata"]["labels"];
    assert_eq!(labels["grafana_dashboard"], "1");
    assert_eq!(labels["app.kubernetes.io/name"], "capstan");
    assert_eq!(labels["app.kubernetes.io/instance"], "x");
    assert_eq!(labels["app.kubernetes.io/managed-by"], "Helm");
    assert!(
        labels["helm.sh/chart"]
            .as_str()
            .is_some_and(|c| c.starts_with("capstan-"))
    );
    assert!(cm["metadata"]["annotations"].is_null(), "{cm:#}");

    let docs = helm_template(
        &helm,
        &[
            "--namespace",
            "capstan-system",
            "--set",
            "monitoring.grafanaDashboard.enabled=true",
            "--set",
            "monitoring.grafanaDashboard.namespace=grafana",
            "--set",
            "monitoring.grafanaDashboard.label=dashboards",
            "--set-string",
            "monitoring.grafanaDashboard.labelValue=true",
            "--set",
            "monitoring.grafanaDashboard.annotations.grafana_folder=Databases",
        ],
    );
    let maps = dashboard_config_maps(&docs);
    assert_eq!(maps.len(), 1, "{docs:#?}");
    let meta = &maps[0]["metadata"];
    assert_eq!(meta["namespace"], "grafana");
    assert_eq!(meta["labels"]["dashboards"], "true");
    assert!(meta["labels"]["grafana_dashboard"].is_null());
    assert_eq!(meta["annotations"], json!({"grafana_folder": "Databases"}));
    assert!(maps[0]["data"]["capstan-cluster.json"] == file.as_str());

    let docs = helm_template(&helm, &[]);
    assert!(!docs.is_empty());
    assert!(dashboard_config_maps(&docs).is_empty(), "{docs:#?}");
    assert!(
        !docs.iter().any(|d| d["kind"] == "ConfigMap"),
        "a ConfigMap without monitoring.grafanaDashboard.enabled: {docs:#?}"
    );
}

/// Prometheus' own parser accepts every expression, with Grafana's
/// variables replaced as Grafana would before sending the query.
#[test]
fn promtool_parses_every_expression() {
    let Some(promtool) = k8s_tool("promtool") else {
        return;
    };
    let d = dashboard();
    let mut rules = Vec::new();
    for p in panels(&d).into_iter().filter(|p| !is_row(p)) {
        for t in p["targets"].as_array().unwrap() {
            let expr = t["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", "2m")
                .replace("$__range", "6h")
                .replace("$__interval", "30s")
                .replace("${namespace}", "apps")
                .replace("$namespace", "apps")
                .replace("${cluster}", "db")
                .replace("$cluster", "db");
            assert!(!expr.contains('$'), "a variable left in {expr}");
            rules.push(json!({
                "record": format!("dashboard:panel_{}_{}", p["id"], t["refId"].as_str().unwrap()),
                "expr": expr,
            }));
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dashboard-rules.yaml");
    // JSON is YAML.
    std::fs::write(
        &file,
        json!({"groups": [{"name": "dashboard", "rules": rules}]}).to_string(),
    )
    .unwrap();
    let out = Command::new(&promtool)
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .expect("run promtool");
    assert!(
        out.status.success(),
        "promtool check rules: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

//! The Helm chart (charts/capstan) explains itself and installs what it says:
//! - every value of values.yaml is typed and described in values.schema.json
//!   and listed with its default in the chart's README; the templates read
//!   no value values.yaml lacks;
//! - `helm lint --strict` passes; bad values are refused by `helm install`
//!   and `helm template`, naming the value;
//! - the CRDs are templates (installed and upgraded with the release), kept
//!   on uninstall, left out with `crds.install=false`, and equal to the ones
//!   the code generates;
//! - `watchNamespace` gives cluster-wide or namespaced RBAC, and the
//!   operator the Deployment configures watches accordingly;
//! - the notes say what was installed and how to create a first cluster.
//!
//! Needs helm (.ci/build-k8s-tools.sh; `$CAPSTAN_K8S_BIN`) for everything
//! but the schema and README checks. Nothing here contacts a cluster:
//! `helm install --dry-run=client` renders manifests and notes offline.

#[allow(dead_code)]
#[path = "support/tools.rs"]
mod tools;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Command, Output};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::Value;

const CHART: &str = "charts/capstan";
const VALUES: &str = "charts/capstan/values.yaml";
const SCHEMA: &str = "charts/capstan/values.schema.json";
const README: &str = "charts/capstan/README.md";
const NAMESPACE: &str = "capstan-system";
const OPERATOR: &str = "capstan-operator";
/// The annotation that keeps a resource on `helm uninstall`.
const KEEP: &str = "helm.sh/resource-policy";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn values() -> Value {
    serde_saphyr::from_str(&read(VALUES)).unwrap_or_else(|e| panic!("{VALUES}: {e}"))
}

fn schema() -> Value {
    serde_json::from_str(&read(SCHEMA)).unwrap_or_else(|e| panic!("{SCHEMA}: {e}"))
}

// ------------------------------------------------------ values and schema

/// A schema node with its `$ref` (to `#/definitions/...`) merged in; the
/// node's own keywords (its description) win.
fn resolve(schema: &Value, node: &Value) -> Value {
    let Some(reference) = node["$ref"].as_str() else {
        return node.clone();
    };
    let name = reference
        .strip_prefix("#/definitions/")
        .unwrap_or_else(|| panic!("{SCHEMA}: unexpected $ref {reference}"));
    let target = &schema["definitions"][name];
    assert!(target.is_object(), "{SCHEMA}: no definition {name}");
    let mut merged = resolve(schema, target);
    for (k, v) in node.as_object().unwrap() {
        if k != "$ref" {
            merged[k] = v.clone();
        }
    }
    merged
}

/// Maps whose keys are the user's (labels, annotations) or Kubernetes
/// shapes the chart passes through: typed, but not closed.
fn open_map(key: &str) -> bool {
    ["resources", "podAnnotations", "nodeSelector", "affinity"].contains(&key)
        || key.ends_with(".labels")
        || key.ends_with(".annotations")
}

/// Every key of values.yaml as the README lists it (dotted, down to the
/// values of objects the chart owns), with its default, checking on the way
/// that the schema has it, describes it, gives it a type, and closes every
/// object the chart owns (`additionalProperties: false`).
fn documented_keys(schema: &Value) -> BTreeMap<String, Value> {
    fn walk(
        schema: &Value,
        node: &Value,
        values: &Value,
        prefix: &str,
        out: &mut BTreeMap<String, Value>,
    ) {
        let properties = node["properties"]
            .as_object()
            .unwrap_or_else(|| panic!("{SCHEMA}: {prefix:?} has no properties"));
        for (key, value) in values.as_object().unwrap() {
            let path = if prefix.is_empty() {
                key.clone()
            } else {
                format!("{prefix}.{key}")
            };
            let raw = properties
                .get(key)
                .unwrap_or_else(|| panic!("{VALUES}: `{path}` is not in {SCHEMA}"));
            assert!(
                raw["description"].as_str().is_some_and(|d| !d.is_empty()),
                "{SCHEMA}: `{path}` has no description"
            );
            let property = resolve(schema, raw);
            assert!(
                property["type"].is_string(),
                "{SCHEMA}: `{path}` has no type"
            );
            if value.is_object() && !open_map(&path) {
                assert_eq!(
                    property["additionalProperties"],
                    Value::Bool(false),
                    "{SCHEMA}: `{path}` is the chart's own object: a misspelt key must be refused"
                );
                walk(schema, &property, value, &path, out);
            } else {
                out.insert(path, value.clone());
            }
        }
        // And nothing in the schema that values.yaml lacks (`global` is
        // Helm's, for parent charts).
        for key in properties.keys() {
            assert!(
                values.get(key).is_some() || (prefix.is_empty() && key == "global"),
                "{SCHEMA}: `{prefix}.{key}` is not in {VALUES}"
            );
        }
    }
    assert_eq!(
        schema["$schema"], "http://json-schema.org/draft-07/schema#",
        "{SCHEMA}: Helm validates draft-07"
    );
    assert_eq!(
        schema["additionalProperties"],
        Value::Bool(false),
        "{SCHEMA}: a misspelt top-level key must be refused"
    );
    let mut out = BTreeMap::new();
    walk(schema, schema, &values(), "", &mut out);
    out
}

/// The README's value table: key -> (default, description).
fn readme_table() -> BTreeMap<String, (String, String)> {
    let text = read(README);
    let section = text
        .split_once("\n## Values\n")
        .unwrap_or_else(|| panic!("{README} has no `## Values` section"))
        .1;
    let section = section.split("\n## ").next().unwrap_or_default();
    let mut rows = BTreeMap::new();
    for line in section.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.trim_matches('|').split(" | ").map(str::trim).collect();
        assert_eq!(
            cells.len(),
            3,
            "{README}: not `| key | default | description |`: {line}"
        );
        let key = cells[0].trim_matches('`').to_string();
        let default = cells[1].trim_matches('`').to_string();
        let previous = rows.insert(key.clone(), (default, cells[2].to_string()));
        assert!(previous.is_none(), "{README}: `{key}` is listed twice");
    }
    rows
}

#[test]
fn every_value_is_typed_described_and_in_the_readme_with_its_default() {
    let keys = documented_keys(&schema());
    assert!(keys.contains_key("crds.install") && keys.contains_key("replicas"));
    let table = readme_table();
    for (key, default) in &keys {
        let (listed, description) = table
            .get(key)
            .unwrap_or_else(|| panic!("{README}: the values table has no row for `{key}`"));
        let listed: Value = serde_json::from_str(listed)
            .unwrap_or_else(|e| panic!("{README}: `{key}`'s default `{listed}` is not JSON: {e}"));
        assert_eq!(
            &listed, default,
            "{README}: `{key}`'s default differs from {VALUES}"
        );
        assert!(
            !description.is_empty(),
            "{README}: `{key}` has no description"
        );
    }
    let stale: Vec<_> = table.keys().filter(|k| !keys.contains_key(*k)).collect();
    assert!(
        stale.is_empty(),
        "{README} lists keys {VALUES} lacks: {stale:?}"
    );
}

/// Every `.Values.a.b` the templates read is a key of values.yaml (a typo
/// would read nil and render silently wrong).
#[test]
fn templates_read_only_values_that_exist() {
    let values = values();
    let pattern = regex::Regex::new(r"\.Values((?:\.[A-Za-z_][A-Za-z0-9_]*)+)").unwrap();
    let mut files = Vec::new();
    let mut dirs = vec![root().join(CHART).join("templates")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                files.push(path);
            }
        }
    }
    let mut seen = BTreeSet::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for found in pattern.captures_iter(&text) {
            let path = found[1].trim_start_matches('.').to_string();
            let mut node = &values;
            for part in path.split('.') {
                node = node.get(part).unwrap_or_else(|| {
                    panic!(
                        "{} reads .Values.{path}, which {VALUES} lacks",
                        file.display()
                    )
                });
            }
            seen.insert(path);
        }
    }
    for used in ["crds.install", "watchNamespace", "replicas", "monitoring"] {
        assert!(
            seen.contains(used),
            "no template reads .Values.{used}: {seen:?}"
        );
    }
}

// ------------------------------------------------------------------ helm

/// helm with a private home, and no cluster: `KUBECONFIG` names a file
/// that does not exist, so anything that would contact one fails.
struct Helm {
    bin: PathBuf,
    home: tempfile::TempDir,
}

/// What `helm install --dry-run=client` renders.
struct Rendered {
    objects: Vec<Value>,
    notes: String,
}

impl Rendered {
    fn of_kind(&self, kind: &str) -> Vec<&Value> {
        self.objects.iter().filter(|o| o["kind"] == kind).collect()
    }

    fn find(&self, kind: &str, name: &str) -> Option<&Value> {
        self.objects
            .iter()
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
    }

    fn operator(&self) -> &Value {
        self.find("Deployment", OPERATOR)
            .unwrap_or_else(|| panic!("no Deployment {OPERATOR}"))
    }
}

impl Helm {
    fn find() -> Option<Helm> {
        Some(Helm {
            bin: tools::k8s_tool("helm")?,
            home: tempfile::tempdir().unwrap(),
        })
    }

    fn run(&self, args: &[&str]) -> Output {
        let home = self.home.path();
        Command::new(&self.bin)
            .args(args)
            .current_dir(root())
            .env("HELM_CACHE_HOME", home.join("cache"))
            .env("HELM_CONFIG_HOME", home.join("config"))
            .env("HELM_DATA_HOME", home.join("data"))
            .env("KUBECONFIG", home.join("no-cluster"))
            .output()
            .unwrap_or_else(|e| panic!("{}: {e}", self.bin.display()))
    }

    fn install_args<'a>(set: &[&'a str]) -> Vec<&'a str> {
        let mut args = vec![
            "install",
            "capstan",
            CHART,
            "--namespace",
            NAMESPACE,
            "--dry-run=client",
            "--output",
            "json",
        ];
        for s in set {
            args.extend(["--set", s]);
        }
        args
    }

    /// `helm install --dry-run=client` with `--set` of each of `set`.
    fn install(&self, set: &[&str]) -> Rendered {
        let args = Self::install_args(set);
        let out = self.run(&args);
        assert!(
            out.status.success(),
            "helm {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let release: Value = serde_json::from_slice(&out.stdout).unwrap();
        let manifest = release["manifest"].as_str().unwrap();
        let objects = serde_saphyr::from_multiple::<Value>(manifest)
            .unwrap_or_else(|e| panic!("the manifest does not parse: {e}\n{manifest}"))
            .into_iter()
            .filter(|d| d.is_object())
            .collect();
        Rendered {
            objects,
            notes: release["info"]["notes"].as_str().unwrap().to_string(),
        }
    }

    /// What `helm install --dry-run=client` and `helm template` print when
    /// they refuse `--set <set>` (both must).
    fn refused(&self, set: &str) -> [String; 2] {
        let mut messages = Vec::new();
        for args in [
            Self::install_args(&[set]),
            vec!["template", "capstan", CHART, "--set", set],
        ] {
            let out = self.run(&args);
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            assert!(
                !out.status.success(),
                "helm {args:?} accepted {set}:\n{}",
                String::from_utf8_lossy(&out.stdout)
            );
            messages.push(stderr);
        }
        messages.try_into().unwrap()
    }
}

#[test]
fn helm_lint_strict_passes() {
    let Some(helm) = Helm::find() else {
        return;
    };
    for set in [
        "",
        "watchNamespace=apps,crds.install=false",
        "monitoring.podMonitors.enabled=true,monitoring.serviceMonitor.enabled=true,\
         monitoring.prometheusRule.enabled=true,monitoring.grafanaDashboard.enabled=true",
    ] {
        let mut args = vec!["lint", "--strict", CHART];
        if !set.is_empty() {
            args.extend(["--set", set]);
        }
        let out = helm.run(&args);
        assert!(
            out.status.success(),
            "helm {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Each bad value fails `helm install` and `helm template` with Helm's
/// schema message naming it (path and reason).
#[test]
fn bad_values_are_refused_naming_them() {
    let Some(helm) = Helm::find() else {
        return;
    };
    let cases: &[(&str, &str)] = &[
        ("replicas=0", "- at '/replicas': minimum: got 0, want 1"),
        ("replicas=1.5", "- at '/replicas': got string, want integer"),
        (
            "logFormat=xml",
            "- at '/logFormat': value must be one of 'json', 'text'",
        ),
        (
            "metrics.port=x",
            "- at '/metrics/port': got string, want integer",
        ),
        (
            "metrics.port=70000",
            "- at '/metrics/port': maximum: got 70,000, want 65,535",
        ),
        (
            "monitoring.podMonitors.enabeld=true",
            "- at '/monitoring/podMonitors': additional properties 'enabeld' not allowed",
        ),
        (
            "replicaz=2",
            "- at '': additional properties 'replicaz' not allowed",
        ),
        (
            "image.pullPolicy=Sometimes",
            "- at '/image/pullPolicy': value must be one of 'Always', 'IfNotPresent', 'Never'",
        ),
        (
            "watchNamespace=Apps",
            "- at '/watchNamespace': 'Apps' does not match pattern",
        ),
        (
            "watchNamespace=apps_1",
            "- at '/watchNamespace': 'apps_1' does not match pattern",
        ),
        (
            "monitoring.podMonitors.interval=thirty",
            "- at '/monitoring/podMonitors/interval': 'thirty' does not match pattern",
        ),
        (
            "monitoring.serviceMonitor.interval=30",
            "- at '/monitoring/serviceMonitor/interval': got number, want string",
        ),
        (
            "crds.install=yes",
            "- at '/crds/install': got string, want boolean",
        ),
        (
            "leaderElection.enabled=on",
            "- at '/leaderElection/enabled': got string, want boolean",
        ),
        ("logLevel=", "- at '/logLevel': minLength: got 0, want 1"),
        (
            "monitoring.grafanaDashboard.labelValue=1",
            "- at '/monitoring/grafanaDashboard/labelValue': got number, want string",
        ),
        (
            "podAnnotations.a=1",
            "- at '/podAnnotations/a': got number, want string",
        ),
    ];
    for (set, expected) in cases {
        let [install, template] = helm.refused(set);
        for (command, message) in [("install", &install), ("template", &template)] {
            assert!(
                message.contains("values don't meet the specifications of the schema(s)")
                    && message.contains(expected),
                "helm {command} --set {set}: expected {expected:?} in:\n{message}"
            );
        }
        assert!(
            install.contains("INSTALLATION FAILED"),
            "--set {set}: helm install's message:\n{install}"
        );
    }
    // The defaults and the documented alternatives pass.
    helm.install(&[]);
    helm.install(&[
        "watchNamespace=apps,image.repository=localhost:5000/capstan,image.tag=dev",
        "monitoring.podMonitors.interval=1m30s,logLevel=capstan=debug\\,kube=info",
    ]);
}

/// The CRDs rendered with the defaults, keyed by name, each checked to
/// carry the keep annotation and otherwise equal the one the code builds.
#[test]
fn crds_are_rendered_kept_and_equal_to_the_generated_ones() {
    let Some(helm) = Helm::find() else {
        return;
    };
    let rendered = helm.install(&[]);
    let crds = rendered.of_kind("CustomResourceDefinition");
    let expected = capstan::api::crd::all();
    assert_eq!(crds.len(), expected.len(), "{crds:#?}");
    for crd in &expected {
        let name = crd.metadata.name.as_deref().unwrap();
        let mut found = rendered
            .find("CustomResourceDefinition", name)
            .unwrap_or_else(|| panic!("CRD {name} not rendered"))
            .clone();
        let kept = found["metadata"]["annotations"]
            .as_object_mut()
            .and_then(|a| a.remove(KEEP));
        assert_eq!(
            kept,
            Some(Value::from("keep")),
            "CRD {name} lacks {KEEP}: keep (helm uninstall would delete every cluster)"
        );
        if found["metadata"]["annotations"]
            .as_object()
            .is_some_and(|a| a.is_empty())
        {
            found["metadata"]
                .as_object_mut()
                .unwrap()
                .remove("annotations");
        }
        let found: CustomResourceDefinition = serde_json::from_value(found).unwrap();
        assert!(
            serde_json::to_value(&found).unwrap() == serde_json::to_value(crd).unwrap(),
            "the chart's CRD {name} differs from `capstan crd`: run \
             `CAPSTAN_UPDATE_GENERATED=1 cargo test --test generated_files`"
        );
    }
    // Helm applies the manifest in this order (its install order by kind):
    // an upgrade brings the new CRDs before the operator that needs them.
    let position = |kind: &str| {
        rendered
            .objects
            .iter()
            .position(|o| o["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind} rendered"))
    };
    let last_crd = rendered
        .objects
        .iter()
        .rposition(|o| o["kind"] == "CustomResourceDefinition")
        .unwrap();
    assert!(
        last_crd < position("ClusterRole") && last_crd < position("Deployment"),
        "CRDs are not rendered before the operator's RBAC and Deployment"
    );
    assert!(
        rendered.notes.contains(
            "postgresclusters.capstan.dev and postgresbackups.capstan.dev, installed and upgraded"
        ),
        "{}",
        rendered.notes
    );

    let without = helm.install(&["crds.install=false"]);
    assert!(
        without.of_kind("CustomResourceDefinition").is_empty(),
        "crds.install=false rendered CRDs"
    );
    without.operator();
    assert!(
        without
            .notes
            .contains("not installed by this release (crds.install=false)"),
        "{}",
        without.notes
    );
}

/// The operator's own argument parser, fed the Deployment's environment as
/// clap would read it: the namespace it then watches.
fn watched_namespace(deployment: &Value) -> Option<String> {
    use clap::{CommandFactory, Parser};
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: capstan::operator::Args,
    }
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["args"], serde_json::json!(["operator"]));
    let command = Cli::command();
    let mut argv = vec!["capstan".to_string()];
    for env in container["env"].as_array().unwrap() {
        let (Some(name), Some(value)) = (env["name"].as_str(), env["value"].as_str()) else {
            continue;
        };
        if let Some(arg) = command
            .get_arguments()
            .find(|a| a.get_env().is_some_and(|e| e == name))
        {
            argv.push(format!("--{}={value}", arg.get_long().unwrap()));
        }
    }
    let cli = Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
    cli.args.watch_namespace().map(str::to_string)
}

fn env_of(deployment: &Value, name: &str) -> Option<String> {
    deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
        .map(|e| e["value"].as_str().unwrap_or_default().to_string())
}

#[test]
fn watch_namespace_sets_the_rbac_and_what_the_operator_watches() {
    let Some(helm) = Helm::find() else {
        return;
    };
    // "": every namespace, cluster-wide RBAC.
    let all = helm.install(&[]);
    let role = all.find("ClusterRole", OPERATOR).expect("ClusterRole");
    let binding = all
        .find("ClusterRoleBinding", OPERATOR)
        .expect("ClusterRoleBinding");
    assert!(role["metadata"]["namespace"].is_null());
    assert_eq!(binding["roleRef"]["kind"], "ClusterRole");
    assert_eq!(binding["subjects"][0]["namespace"], NAMESPACE);
    assert!(all.find("Role", OPERATOR).is_none());
    assert!(all.find("RoleBinding", OPERATOR).is_none());
    assert_eq!(env_of(all.operator(), "CAPSTAN_WATCH_NAMESPACE"), None);
    assert_eq!(watched_namespace(all.operator()), None);
    assert!(
        all.notes.contains("PostgresClusters in all namespaces"),
        "{}",
        all.notes
    );

    // A namespace: Role and RoleBinding there, the operator watches it.
    let apps = helm.install(&["watchNamespace=apps"]);
    assert!(apps.find("ClusterRole", OPERATOR).is_none());
    assert!(apps.find("ClusterRoleBinding", OPERATOR).is_none());
    // Cluster-wide, only what a Role cannot grant: reading StorageClasses.
    let classes = format!("{OPERATOR}-storageclasses");
    assert_eq!(apps.of_kind("ClusterRole").len(), 1);
    let class_role = apps
        .find("ClusterRole", &classes)
        .expect("storageclasses ClusterRole");
    assert_eq!(
        class_role["rules"],
        serde_json::json!([{"apiGroups": ["storage.k8s.io"], "resources": ["storageclasses"], "verbs": ["get"]}])
    );
    let class_binding = apps
        .find("ClusterRoleBinding", &classes)
        .expect("storageclasses ClusterRoleBinding");
    assert_eq!(class_binding["subjects"][0]["namespace"], NAMESPACE);
    assert!(
        all.find("ClusterRole", &classes).is_none(),
        "the ClusterRole has them already"
    );
    let role = apps.find("Role", OPERATOR).expect("Role");
    let binding = apps.find("RoleBinding", OPERATOR).expect("RoleBinding");
    assert_eq!(role["metadata"]["namespace"], "apps");
    assert_eq!(binding["metadata"]["namespace"], "apps");
    assert_eq!(binding["roleRef"]["kind"], "Role");
    assert_eq!(binding["subjects"][0]["namespace"], NAMESPACE);
    assert_eq!(
        role["rules"],
        all.find("ClusterRole", OPERATOR).unwrap()["rules"]
    );
    assert_eq!(
        env_of(apps.operator(), "CAPSTAN_WATCH_NAMESPACE").as_deref(),
        Some("apps")
    );
    assert_eq!(watched_namespace(apps.operator()).as_deref(), Some("apps"));
    assert!(
        apps.notes
            .contains("PostgresClusters in namespace apps only"),
        "{}",
        apps.notes
    );
    // Leader election stays in the release namespace either way.
    for rendered in [&all, &apps] {
        let lease_role = rendered
            .find("Role", &format!("{OPERATOR}-leader-election"))
            .expect("leader election Role");
        assert_eq!(lease_role["metadata"]["namespace"], NAMESPACE);
    }
}

/// The notes' heredoc: the YAML between `<<EOF` and a line `EOF`.
fn first_cluster(notes: &str) -> (String, &str) {
    let (before, after) = notes
        .split_once(" -f - <<EOF\n")
        .unwrap_or_else(|| panic!("no `kubectl apply -f - <<EOF` in the notes:\n{notes}"));
    let command = before.lines().last().unwrap().to_string();
    let (yaml, _) = after
        .split_once("\nEOF\n")
        .unwrap_or_else(|| panic!("the heredoc has no `EOF` line at column 0:\n{notes}"));
    (command, yaml)
}

#[test]
fn notes_say_what_was_installed_and_how_to_create_a_first_cluster() {
    let Some(helm) = Helm::find() else {
        return;
    };
    let rendered = helm.install(&[]);
    let notes = &rendered.notes;
    for expected in [
        &format!("Deployment {OPERATOR} in namespace {NAMESPACE}"),
        "ghcr.io/capstan-dev/capstan:",
        "PostgresClusters in all namespaces",
        "postgresclusters.capstan.dev and postgresbackups.capstan.dev, installed and upgraded",
        "`helm uninstall` keeps them",
        "Monitoring: none",
        &format!("kubectl -n {NAMESPACE} rollout status deployment/{OPERATOR}"),
        "kubectl get pgc -n default -w",
        "https://github.com/capstan-dev/capstan",
        "charts/capstan/README.md",
    ] {
        assert!(
            notes.contains(expected),
            "the notes lack {expected:?}:\n{notes}"
        );
    }
    // The first cluster is examples/minimal.yaml, applied where the
    // operator watches.
    let (command, yaml) = first_cluster(notes);
    assert_eq!(command, "kubectl apply -n default");
    let cluster: Value = serde_saphyr::from_str(yaml).unwrap();
    let example: Value = serde_saphyr::from_str(&read("examples/minimal.yaml")).unwrap();
    assert_eq!(
        cluster, example,
        "the notes' cluster differs from examples/minimal.yaml"
    );
    let name = example["metadata"]["name"].as_str().unwrap();
    for secret in [
        format!("{name}-app"),
        format!("{name}-ca"),
        format!("{name}-pooler"),
    ] {
        assert!(notes.contains(&secret), "the notes lack {secret}:\n{notes}");
    }

    let scoped = helm.install(&["watchNamespace=apps,crds.install=false"]);
    let (command, _) = first_cluster(&scoped.notes);
    assert_eq!(command, "kubectl apply -n apps");
    assert!(
        scoped.notes.contains("kubectl get pgc -n apps -w"),
        "{}",
        scoped.notes
    );
    assert!(
        scoped
            .notes
            .contains("kubectl apply --server-side -f crds/"),
        "{}",
        scoped.notes
    );

    let monitored = helm.install(&[
        "monitoring.podMonitors.enabled=true,monitoring.serviceMonitor.enabled=true",
        "monitoring.prometheusRule.enabled=true,monitoring.grafanaDashboard.enabled=true",
    ]);
    for (kind, name) in [
        ("PodMonitor", "capstan-instances"),
        ("PodMonitor", "capstan-poolers"),
        ("ServiceMonitor", OPERATOR),
        ("PrometheusRule", OPERATOR),
        ("ConfigMap", "capstan-operator-dashboard"),
    ] {
        assert!(
            monitored.find(kind, name).is_some(),
            "{kind}/{name} not rendered"
        );
        assert!(
            monitored.notes.contains(name),
            "the notes do not name {kind} {name}:\n{}",
            monitored.notes
        );
    }
}

//! What can be checked of the packaging without helm or a cluster: the
//! chart's metadata and values parse, the chart and the kustomize manifests
//! carry the same RBAC rules, those rules cover everything the operator does
//! (including what it grants to instance pods), and versions agree.
//! (`kubectl kustomize config/` and kubernetes-validate run in .ci/run;
//! what helm renders, the values schema and the chart's README:
//! tests/chart.rs.)

use std::collections::BTreeSet;
use std::path::PathBuf;

use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule};
use serde_json::Value;

fn read(path: &str) -> String {
    std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn yaml(path: &str) -> Value {
    serde_saphyr::from_str(&read(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// (group, resource, verb) triples a set of rules grants.
fn grants(rules: &[PolicyRule]) -> BTreeSet<(String, String, String)> {
    let mut out = BTreeSet::new();
    for rule in rules {
        for group in rule.api_groups.clone().unwrap_or_default() {
            for resource in rule.resources.clone().unwrap_or_default() {
                for verb in &rule.verbs {
                    out.insert((group.clone(), resource.clone(), verb.clone()));
                }
            }
        }
    }
    out
}

fn triples(list: &[(&str, &str, &[&str])]) -> BTreeSet<(String, String, String)> {
    list.iter()
        .flat_map(|(g, r, verbs)| {
            verbs
                .iter()
                .map(move |v| (g.to_string(), r.to_string(), v.to_string()))
        })
        .collect()
}

fn chart_rules() -> Vec<PolicyRule> {
    serde_saphyr::from_str(&read("charts/capstan/files/operator-rules.yaml")).unwrap()
}

#[test]
fn chart_and_kustomize_grant_the_same_rules() {
    let role: ClusterRole = serde_saphyr::from_str(&read("config/rbac/cluster_role.yaml")).unwrap();
    assert_eq!(role.rules.unwrap(), chart_rules());
    assert!(
        read("charts/capstan/templates/rbac.yaml")
            .contains(r#".Files.Get "files/operator-rules.yaml""#)
    );
}

#[test]
fn rules_cover_what_the_operator_does() {
    let granted = grants(&chart_rules());
    let crud: &[&str] = &["get", "list", "watch", "create", "patch", "delete"];
    let needed = triples(&[
        ("capstan.dev", "postgresclusters", &["get", "list", "watch"]),
        ("capstan.dev", "postgresclusters/status", &["patch"]),
        ("capstan.dev", "postgresbackups", crud),
        ("capstan.dev", "postgresbackups/status", &["get", "patch"]),
        ("", "pods", crud),
        ("", "persistentvolumeclaims", crud),
        ("", "services", crud),
        ("", "configmaps", crud),
        ("", "secrets", crud),
        ("", "serviceaccounts", crud),
        ("apps", "deployments", crud),
        ("policy", "poddisruptionbudgets", crud),
        ("rbac.authorization.k8s.io", "roles", crud),
        ("rbac.authorization.k8s.io", "rolebindings", crud),
        ("events.k8s.io", "events", &["create", "patch"]),
    ]);
    let missing: Vec<_> = needed.difference(&granted).collect();
    assert!(missing.is_empty(), "operator rules miss {missing:?}");
}

/// Kubernetes refuses to let the operator create a Role granting more than
/// it holds itself (privilege escalation check).
#[test]
fn operator_holds_everything_it_grants_to_instance_pods() {
    let granted = grants(&chart_rules());
    let spec: capstan::api::PostgresClusterSpec = serde_json::from_value(
        serde_json::json!({"postgres": {"version": 17}, "storage": {"size": "1Gi"}}),
    )
    .unwrap();
    let model = capstan::resources::model::Model {
        name: "db".into(),
        namespace: "ns".into(),
        uid: "u".into(),
        spec,
        images: capstan::resources::model::Images {
            operator: "o".into(),
            pooler_agent: "o".into(),
            postgres: "p".into(),
            pgbouncer: "b".into(),
        },
        postgres_version: 17,
        upgrade: None,
        image_check: None,
    };
    let instance_rules = capstan::resources::rbac::instance_role(&model)
        .rules
        .unwrap();
    let missing: Vec<_> = grants(&instance_rules)
        .difference(&granted)
        .cloned()
        .collect();
    assert!(
        missing.is_empty(),
        "instance Role grants {missing:?} the operator does not hold"
    );
}

#[test]
fn chart_metadata_and_values_parse_and_match_the_crate() {
    let chart = yaml("charts/capstan/Chart.yaml");
    assert_eq!(chart["apiVersion"], "v2");
    assert_eq!(chart["appVersion"], env!("CARGO_PKG_VERSION"));
    let values = yaml("charts/capstan/values.yaml");
    assert_eq!(values["image"]["repository"], "ghcr.io/capstan-dev/capstan");
    assert_eq!(values["replicas"], 1);
    assert_eq!(values["leaderElection"]["enabled"], true);
    // Every value the templates read exists, and every value is in the
    // schema and the chart's README: tests/chart.rs.
    assert_eq!(
        values["crds"]["install"], true,
        "the chart installs the CRDs by default"
    );
}

#[test]
fn kustomize_manifests_use_the_crate_version_and_list_every_crd() {
    let deployment = read("config/manager/deployment.yaml");
    let image = format!("ghcr.io/capstan-dev/capstan:{}", env!("CARGO_PKG_VERSION"));
    assert_eq!(
        deployment.matches(&image).count(),
        2,
        "image and CAPSTAN_IMAGE must both be {image}"
    );
    let crds = yaml("crds/kustomization.yaml");
    let listed: Vec<String> = crds["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let generated: Vec<String> = capstan::api::crd::all()
        .iter()
        .map(capstan::api::crd::file_name)
        .collect();
    assert_eq!(listed, generated);
}

#[test]
fn image_puts_the_binary_where_pods_expect_it() {
    let dockerfile = read("Dockerfile");
    assert!(
        dockerfile.contains(capstan::contract::layout::IMAGE_BINARY),
        "Dockerfile must install the binary at {}",
        capstan::contract::layout::IMAGE_BINARY
    );
    assert!(
        dockerfile.contains("USER 65532"),
        "the image runs as non-root"
    );
}

//! The manifests users apply are valid for Kubernetes: `capstan render` of
//! every example passes `kubernetes-validate --strict` (built-in kinds), the
//! example custom resources pass the CRD's structural schema, and the
//! kustomize tree renders and validates.

#[allow(dead_code)]
#[path = "support/tools.rs"]
mod tools;

use std::path::{Path, PathBuf};
use std::process::Command;

/// Oldest Kubernetes the operator supports (k8s-openapi feature v1_33).
const KUBERNETES_VERSION: &str = "1.33.0";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn examples() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn kubernetes_validate(validator: &Path, file: &Path) -> (bool, String) {
    run(Command::new(validator)
        .args(["--strict", "--quiet", "-k", KUBERNETES_VERSION])
        .arg(file))
}

#[test]
fn rendered_examples_pass_kubernetes_validate_strict() {
    let Some(validator) = tools::find("kubernetes-validate") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    for example in examples() {
        let out = dir.path().join(example.file_name().unwrap());
        let (ok, text) = run(Command::new(env!("CARGO_BIN_EXE_capstan"))
            .arg("render")
            .arg("-f")
            .arg(&example));
        assert!(ok, "capstan render -f {}: {text}", example.display());
        std::fs::write(&out, &text).unwrap();
        let (ok, report) = kubernetes_validate(&validator, &out);
        let errors: Vec<&str> = report.lines().filter(|l| !l.starts_with("WARN")).collect();
        assert!(ok && errors.is_empty(), "{}: {report}", example.display());
    }
}

/// The validator itself must reject a bad object, or the test above proves nothing.
#[test]
fn kubernetes_validate_rejects_unknown_fields() {
    let Some(validator) = tools::find("kubernetes-validate") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "apiVersion: v1\nkind: Service\nmetadata:\n  name: x\nspec:\n  bogus: 1\n  ports: [{port: 5432}]\n").unwrap();
    let (ok, report) = kubernetes_validate(&validator, &bad);
    assert!(!ok, "unknown field accepted: {report}");
}

#[test]
fn example_custom_resources_match_the_crd_schema() {
    let Some(python) = tools::find("python3") else {
        return;
    };
    let script = root().join(".ci/validate-crs.py");
    let (ok, report) = run(Command::new(&python)
        .arg(&script)
        .arg(root().join("crds"))
        .args(examples()));
    assert!(ok, "{report}");
    // Every custom resource in the examples (PostgresCluster, PostgresBackup)
    // was checked.
    let custom_resources = examples()
        .iter()
        .map(|f| {
            std::fs::read_to_string(f)
                .unwrap()
                .lines()
                .filter(|l| l.starts_with("apiVersion: capstan.dev/"))
                .count()
        })
        .sum::<usize>();
    assert!(
        custom_resources > examples().len(),
        "the PostgresBackup example"
    );
    assert_eq!(
        report.lines().filter(|l| l.starts_with("OK")).count(),
        custom_resources,
        "{report}"
    );

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "apiVersion: capstan.dev/v1alpha1\nkind: PostgresCluster\nmetadata: {name: x}\nspec:\n  postgres: {version: 17, versoin: 18}\n  storage: {size: 1Gi}\n").unwrap();
    let (ok, report) = run(Command::new(&python)
        .arg(&script)
        .arg(root().join("crds"))
        .arg(&bad));
    assert!(
        !ok && report.contains("versoin"),
        "a misspelt field must be refused: {report}"
    );
}

#[test]
fn kustomize_tree_renders_and_validates() {
    let Some(kubectl) = tools::find("kubectl") else {
        return;
    };
    let (ok, text) = run(Command::new(kubectl)
        .arg("kustomize")
        .arg(root().join("config")));
    assert!(ok, "kubectl kustomize config/: {text}");
    for kind in [
        "Namespace",
        "CustomResourceDefinition",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Deployment",
    ] {
        assert!(
            text.contains(&format!("kind: {kind}\n")),
            "config/ lacks a {kind}"
        );
    }
    let Some(validator) = tools::find("kubernetes-validate") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("config.yaml");
    std::fs::write(&out, &text).unwrap();
    let (ok, report) = kubernetes_validate(&validator, &out);
    assert!(ok, "{report}");
}

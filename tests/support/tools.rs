//! Finding the external tools a test needs. A test skips only when a tool
//! is truly absent, and says so; under CI (`CI=true`) a missing tool fails
//! the test instead, because CI installs everything.

use std::path::PathBuf;

/// The Python virtualenv .ci/run creates (kubernetes-validate, jsonschema).
pub fn venv() -> PathBuf {
    PathBuf::from(std::env::var("CAPSTAN_VENV").unwrap_or_else(|_| "/opt/capstan-venv".into()))
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// `name` from the venv or PATH. `None` (after printing why) when absent
/// outside CI; panics when absent in CI.
pub fn find(name: &str) -> Option<PathBuf> {
    let candidate = venv().join("bin").join(name);
    let found = if candidate.is_file() {
        Some(candidate)
    } else {
        on_path(name)
    };
    if found.is_none() {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!(
                "{name} is required in CI but was not found (venv {} or PATH); .ci/run installs it",
                venv().display()
            );
        }
        eprintln!(
            "SKIP: {name} not found in {} or PATH; run .ci/run to install it",
            venv().display()
        );
    }
    found
}

/// A tool of the Go tool build (.ci/build-k8s-tools.sh: promtool, helm,
/// prometheus, ...) from `$CAPSTAN_K8S_BIN`, else PATH. `None` (after
/// printing why) when absent outside CI; panics when absent in CI.
pub fn k8s_tool(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("CAPSTAN_K8S_BIN")
        .map(|d| PathBuf::from(d).join(name))
        .filter(|p| p.is_file())
        .or_else(|| on_path(name));
    if found.is_none() {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!(
                "{name} is required in CI but was not found in $CAPSTAN_K8S_BIN or PATH; .ci/run builds it"
            );
        }
        eprintln!(
            "SKIP: {name} not found in $CAPSTAN_K8S_BIN or PATH; set CAPSTAN_K8S_BIN=$(bash .ci/build-k8s-tools.sh | tail -n1)"
        );
    }
    found
}

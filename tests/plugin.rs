//! `kubectl capstan` without a cluster: the krew manifest template
//! (`.krew.yaml`), rendered as the krew release bot renders it, is a krew
//! `Plugin` installing the `capstan` binary for each platform; the binary
//! called as `kubectl-capstan` speaks as `kubectl capstan` and fails with
//! one line naming the problem. (Against the API server: e2e `plugin`.)

use serde_json::Value;

/// What the release bot does: `{{ .TagName }}` → the tag; each
/// `{{addURIAndSha "<uri>" .TagName }}` → `uri:` and `sha256:` lines.
fn render(template: &str, tag: &str) -> String {
    let mut out = String::new();
    for line in template.lines() {
        let line = line.replace("{{ .TagName }}", tag);
        match line.trim_start().strip_prefix("{{addURIAndSha \"") {
            Some(rest) => {
                let indent = &line[..line.len() - line.trim_start().len()];
                let uri = rest.split('"').next().expect("a quoted URI");
                out.push_str(&format!(
                    "{indent}uri: {uri}\n{indent}sha256: {}\n",
                    "ab".repeat(32)
                ));
            }
            None => {
                out.push_str(&line);
                out.push('\n');
            }
        }
    }
    out
}

#[test]
fn the_krew_manifest_installs_capstan_as_kubectl_capstan() {
    let template =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/.krew.yaml")).unwrap();
    let rendered = render(&template, "v0.1.0");
    assert!(!rendered.contains("{{"), "left unrendered:\n{rendered}");
    let m: Value = serde_saphyr::from_str(&rendered).unwrap();
    assert_eq!(
        m["apiVersion"],
        "krew.googlecontainertools.github.com/v1alpha2"
    );
    assert_eq!(m["kind"], "Plugin");
    // krew names the link kubectl-<metadata.name>.
    assert_eq!(m["metadata"]["name"], "capstan");
    assert_eq!(m["spec"]["version"], "v0.1.0");
    assert!(m["spec"]["shortDescription"].as_str().unwrap().len() < 80);
    let platforms = m["spec"]["platforms"].as_array().unwrap();
    let mut arches = Vec::new();
    for p in platforms {
        let labels = &p["selector"]["matchLabels"];
        assert_eq!(labels["os"], "linux");
        let arch = labels["arch"].as_str().unwrap();
        arches.push(arch.to_string());
        assert_eq!(p["bin"], "capstan");
        assert_eq!(
            p["uri"],
            format!(
                "https://github.com/capstan-dev/capstan/releases/download/v0.1.0/capstan-v0.1.0-linux-{arch}.tar.gz"
            )
        );
        assert_eq!(p["sha256"].as_str().unwrap().len(), 64);
        assert!(
            p["files"]
                .as_array()
                .unwrap()
                .iter()
                .any(|f| f["from"] == "capstan")
        );
    }
    assert_eq!(arches, ["amd64", "arm64"]);
}

#[test]
fn the_plugin_verbs_are_in_the_binary() {
    // The verbs the manifest's description promises are subcommands.
    let template =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/.krew.yaml")).unwrap();
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_capstan"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for verb in ["status", "switchover", "restart", "backup", "psql"] {
        assert!(
            template.contains(&format!("`{verb}`")),
            "description lacks {verb}"
        );
        assert!(
            help.contains(&format!("  {verb} ")),
            "capstan --help lacks {verb}:\n{help}"
        );
    }
}

/// `kubectl-capstan <args>`: the binary through a link of that name.
fn as_plugin(args: &[&str]) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("kubectl-capstan");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_capstan"), &link).unwrap();
    std::process::Command::new(&link)
        .args(args)
        .env_remove("KUBECONFIG")
        .env("HOME", dir.path())
        .output()
        .unwrap()
}

#[test]
fn as_a_kubectl_plugin_usage_says_kubectl_capstan() {
    let out = as_plugin(&["status"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("Usage: kubectl capstan status"), "{stderr}");
}

#[test]
fn a_missing_kubeconfig_is_one_line_naming_it() {
    let out = as_plugin(&["status", "db", "--kubeconfig", "/nonexistent/kubeconfig"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("capstan: cannot load the kubeconfig: /nonexistent/kubeconfig")
            && stderr.contains("--kubeconfig"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn psql_that_is_not_there_is_one_line_before_any_cluster_is_asked() {
    let out = as_plugin(&[
        "psql",
        "db",
        "--psql",
        "/nonexistent/psql",
        "--",
        "-c",
        "select 1",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("capstan: psql not found (/nonexistent/psql)")
            && stderr.contains("--psql <path>"),
        "{stderr}"
    );
}

//! Capstan installed the ways users install it, on the real control plane,
//! under its own RBAC:
//! - `helm install` with default values; the examples applied with
//!   `kubectl apply --server-side` reach `Ready` (`kubectl wait` works); a
//!   second identical apply changes nothing and nobody but kubectl owns a
//!   field of `spec`; `helm upgrade` to a changed value rolls the operator and
//!   touches no database pod; `helm uninstall` removes the operator and
//!   leaves the clusters running;
//! - `kubectl apply --server-side -k config/`: a cluster reaches `Ready`.
//!
//! Local harness only (it installs and removes Capstan itself).

use std::collections::BTreeMap;
use std::time::Duration;

use capstan_e2e::harness::{
    Harness, HarnessOptions, Install, OPERATOR_NAMESPACE, RELEASE, ensure_namespace, wait_for,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::{Api, Client};

/// The examples and their cluster names (`ha-cluster.yaml` runs in
/// `tests/lifecycle.rs`); `provided-tls.yaml` gets its certificates first
/// ([`provide_certificates`]).
const EXAMPLES: &[(&str, &str)] = &[
    ("minimal.yaml", "minimal"),
    ("ha-sync.yaml", "ledger"),
    ("provided-tls.yaml", "billing"),
];
/// Namespace of examples that name none.
const NS: &str = "e2e-install";

fn example_path(file: &str) -> String {
    capstan_e2e::cluster::example(file).display().to_string()
}

/// `kubectl apply --server-side` of an example, in its namespace.
fn apply_example(harness: &Harness, file: &str) -> Result<String, capstan_e2e::E2eError> {
    let ns = namespace_of(file);
    harness.kubectl(&[
        "apply",
        "--server-side",
        "-n",
        &ns,
        "-f",
        &example_path(file),
    ])
}

/// Namespace an example's object lives in.
fn namespace_of(file: &str) -> String {
    let text = std::fs::read_to_string(capstan_e2e::cluster::example(file)).unwrap_or_default();
    let doc: serde_json::Value = serde_saphyr::from_str(&text).unwrap_or_default();
    doc["metadata"]["namespace"]
        .as_str()
        .unwrap_or(NS)
        .to_string()
}

/// UIDs of the database and pooler pods of `namespace`.
async fn pod_uids(client: &Client, namespace: &str) -> BTreeMap<String, String> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    pods.list(&ListParams::default())
        .await
        .map(|l| {
            l.items
                .into_iter()
                .filter_map(|p| Some((p.metadata.name?, p.metadata.uid?)))
                .collect()
        })
        .unwrap_or_default()
}

/// The Secrets `examples/provided-tls.yaml` names, as a user's own PKI (say
/// cert-manager) would make them.
async fn provide_certificates(client: &Client, namespace: &str) {
    let provided = capstan::api::ProvidedTls {
        ca_secret_name: "billing-ca".into(),
        server_secret_name: "billing-server".into(),
        replication_secret_name: "billing-replication".into(),
        pooler_secret_name: "billing-pooler-tls".into(),
    };
    let year = std::time::Duration::from_secs(365 * 24 * 3600);
    let pki = capstan_e2e::pki::UserPki::new("billing", namespace, year).unwrap();
    capstan_e2e::pki::apply(client, &pki.secrets(&provided).unwrap())
        .await
        .unwrap();
}

async fn operator_ready_with(client: &Client, expect_env: (&str, &str)) -> bool {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), OPERATOR_NAMESPACE);
    let Ok(Some(d)) = deployments.get_opt("capstan-operator").await else {
        return false;
    };
    let has_env = d
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|s| s.containers.first())
        .and_then(|c| c.env.as_ref())
        .is_some_and(|env| {
            env.iter()
                .any(|e| e.name == expect_env.0 && e.value.as_deref() == Some(expect_env.1))
        });
    let status = d.status.unwrap_or_default();
    let generation = d.metadata.generation.unwrap_or_default();
    has_env
        && status.observed_generation == Some(generation)
        && status.updated_replicas == Some(1)
        && status.ready_replicas == Some(1)
        && status.replicas == Some(1)
}

#[test]
fn helm_install_examples_upgrade_and_uninstall() {
    capstan_e2e::scenario(|| async {
        let mut harness = Harness::start(HarnessOptions::default())
            .await
            .expect("harness");
        let client = harness.client();
        // The chart says which Kubernetes versions it supports.
        let chart = capstan_e2e::harness::chart_dir().display().to_string();
        let old = harness.helm(&["template", "x", &chart, "--kube-version", "1.29.0"]);
        assert!(
            matches!(&old, Err(e) if e.to_string().contains("kubeVersion")),
            "the chart installs on Kubernetes 1.29: {old:?}"
        );
        harness.start_operator().await.expect("helm install");
        let status = harness
            .helm(&["status", RELEASE, "-n", OPERATOR_NAMESPACE])
            .unwrap();
        assert!(status.contains("STATUS: deployed"), "{status}");

        for (file, name) in EXAMPLES {
            let ns = namespace_of(file);
            ensure_namespace(&client, &ns).await.unwrap();
            if *name == "billing" {
                provide_certificates(&client, &ns).await;
            }
            let out = apply_example(&harness, file).unwrap_or_else(|e| panic!("{e}"));
            assert!(out.contains("serverside-applied"), "{out}");
        }
        for (file, name) in EXAMPLES {
            let ns = namespace_of(file);
            let waited = harness.kubectl(&[
                "wait",
                "-n",
                &ns,
                &format!("postgrescluster/{name}"),
                "--for=condition=Ready",
                "--timeout=240s",
            ]);
            if let Err(e) = waited {
                panic!(
                    "{e}\n{}\n--- operator ---\n{}",
                    harness.diagnostics(&ns).await,
                    harness.operator_logs()
                );
            }
        }

        // GitOps: the same apply again is a no-op, and the operator owns no
        // field of spec (it writes status only).
        for (file, name) in EXAMPLES {
            let ns = namespace_of(file);
            let api: Api<capstan::api::PostgresCluster> = Api::namespaced(client.clone(), &ns);
            let before = api.get(name).await.unwrap();
            apply_example(&harness, file).unwrap();
            let after = api.get(name).await.unwrap();
            assert_eq!(
                before.metadata.generation, after.metadata.generation,
                "{file}: a second identical apply changed spec"
            );
            for entry in after.metadata.managed_fields.iter().flatten() {
                let manager = entry.manager.as_deref().unwrap_or_default();
                if manager != "kubectl" {
                    assert_eq!(
                        entry.subresource.as_deref(),
                        Some("status"),
                        "{file}: {manager} owns fields outside status: {entry:?}"
                    );
                }
            }
        }

        // helm upgrade to a changed value: the operator rolls, no database
        // or pooler pod is touched.
        let before: Vec<_> = {
            let mut all = Vec::new();
            for (file, _) in EXAMPLES {
                all.push(pod_uids(&client, &namespace_of(file)).await);
            }
            all
        };
        let chart = capstan_e2e::harness::chart_dir().display().to_string();
        harness
            .helm(&[
                "upgrade",
                RELEASE,
                &chart,
                "-n",
                OPERATOR_NAMESPACE,
                "--reuse-values",
                "--set",
                "logLevel=debug",
            ])
            .unwrap();
        wait_for(
            "the upgraded operator Deployment rolled out",
            Duration::from_secs(120),
            Duration::from_millis(250),
            || async {
                operator_ready_with(&client, ("RUST_LOG", "debug"))
                    .await
                    .then_some(())
            },
        )
        .await
        .unwrap();
        // Give the new operator time to reconcile every cluster once.
        tokio::time::sleep(Duration::from_secs(5)).await;
        for (i, (file, name)) in EXAMPLES.iter().enumerate() {
            let ns = namespace_of(file);
            assert_eq!(
                before[i],
                pod_uids(&client, &ns).await,
                "helm upgrade re-created pods of {name}"
            );
            harness
                .kubectl(&[
                    "wait",
                    "-n",
                    &ns,
                    &format!("pgc/{name}"),
                    "--for=condition=Ready",
                ])
                .unwrap();
        }

        // helm uninstall: the operator goes, the databases stay.
        harness
            .helm(&["uninstall", RELEASE, "-n", OPERATOR_NAMESPACE, "--wait"])
            .unwrap();
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), OPERATOR_NAMESPACE);
        wait_for(
            "the operator Deployment removed",
            Duration::from_secs(60),
            Duration::from_millis(250),
            || async {
                deployments
                    .get_opt("capstan-operator")
                    .await
                    .ok()?
                    .is_none()
                    .then_some(())
            },
        )
        .await
        .unwrap();
        for (i, (file, name)) in EXAMPLES.iter().enumerate() {
            assert_eq!(
                before[i],
                pod_uids(&client, &namespace_of(file)).await,
                "helm uninstall touched the pods of {name}"
            );
        }
    });
}

#[test]
fn kustomize_install_runs_a_cluster() {
    capstan_e2e::scenario(|| async {
        let mut harness = Harness::start(HarnessOptions {
            simulated: false,
            install: Install::Kustomize,
        })
        .await
        .expect("harness");
        harness
            .start_operator()
            .await
            .expect("kubectl apply -k config/");
        let ns = "e2e-kustomize";
        ensure_namespace(&harness.client(), ns).await.unwrap();
        harness
            .kubectl(&[
                "apply",
                "--server-side",
                "-n",
                ns,
                "-f",
                &example_path("minimal.yaml"),
            ])
            .unwrap();
        if let Err(e) = harness.kubectl(&[
            "wait",
            "-n",
            ns,
            "pgc/minimal",
            "--for=condition=Ready",
            "--timeout=180s",
        ]) {
            panic!(
                "{e}\n{}\n--- operator ---\n{}",
                harness.diagnostics(ns).await,
                harness.operator_logs()
            );
        }
    });
}

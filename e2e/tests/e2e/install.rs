//! Capstan installed the ways users install it, on the real control plane,
//! under its own RBAC:
//! - `helm install` with a bad value is refused by the chart's schema,
//!   naming the value, and installs nothing;
//! - `helm install` with default values installs the CRDs (kept on
//!   uninstall); the examples applied with `kubectl apply --server-side`
//!   reach `Ready` (`kubectl wait` works); a second identical apply changes
//!   nothing and nobody but kubectl owns a field of `spec`;
//! - the CRD in the cluster changed to an older shape (a property and an
//!   annotation of an older chart, applied as Helm applies) is brought back
//!   to the chart's by `helm upgrade`, which also changes a value: the
//!   operator rolls and no database pod is touched; a CRD someone else
//!   edited stops `helm upgrade` with a conflict naming that field manager,
//!   and `--force-conflicts` takes it back;
//! - `helm uninstall` removes the operator and leaves the CRDs, the
//!   `PostgresCluster`s and their pods; CRDs without Helm's ownership
//!   metadata are refused by `helm install` and adopted with
//!   `--take-ownership`;
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
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
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
        pooler_secret_name: "billing-pooler-cert".into(),
    };
    let year = std::time::Duration::from_secs(365 * 24 * 3600);
    let pki = capstan_e2e::pki::UserPki::new("billing", namespace, year).unwrap();
    capstan_e2e::pki::apply(client, &pki.secrets(&provided).unwrap())
        .await
        .unwrap();
}

/// The PostgresCluster CRD, and the annotation that keeps it on uninstall.
const CLUSTER_CRD: &str = "postgresclusters.capstan.dev";
const KEEP: &str = "helm.sh/resource-policy";
/// What the "older chart" adds to the CRD's annotations.
const OLDER_ANNOTATION: &str = "capstan.dev/e2e-older-chart";

/// The releases in the operator's namespace, in any state a failed
/// install could leave (Helm 4 lists only deployed ones by default).
fn releases(harness: &Harness) -> String {
    harness
        .helm(&[
            "list",
            "--short",
            "--deployed",
            "--failed",
            "--pending",
            "-n",
            OPERATOR_NAMESPACE,
        ])
        .unwrap()
}

/// `helm install` with `--set <set>`: refused, naming the value; no release,
/// no CRD and no operator Deployment exist afterwards.
async fn refused_install(harness: &Harness, set: &str, expected: &str) {
    let chart = capstan_e2e::harness::chart_dir().display().to_string();
    let out = harness.helm(&[
        "install",
        RELEASE,
        &chart,
        "--namespace",
        OPERATOR_NAMESPACE,
        "--create-namespace",
        "--set",
        set,
    ]);
    let message = match out {
        Ok(out) => panic!("helm install --set {set} succeeded: {out}"),
        Err(e) => e.to_string(),
    };
    assert!(
        message.contains("values don't meet the specifications of the schema(s)")
            && message.contains(expected),
        "helm install --set {set}: expected {expected:?} in {message}"
    );
    let releases = releases(harness);
    assert!(
        releases.trim().is_empty(),
        "--set {set} left a release: {releases}"
    );
    let crds: Api<CustomResourceDefinition> = Api::all(harness.client());
    assert!(
        crds.get_opt(CLUSTER_CRD).await.unwrap().is_none(),
        "--set {set} installed the CRD"
    );
    let deployments: Api<Deployment> = Api::namespaced(harness.client(), OPERATOR_NAMESPACE);
    assert!(
        deployments
            .get_opt("capstan-operator")
            .await
            .unwrap()
            .is_none(),
        "--set {set} installed the operator"
    );
}

/// Name of the field manager that applied `crd` (Helm's, server-side).
fn applier(crd: &CustomResourceDefinition) -> String {
    crd.metadata
        .managed_fields
        .iter()
        .flatten()
        .find(|m| m.operation.as_deref() == Some("Apply"))
        .and_then(|m| m.manager.clone())
        .unwrap_or_else(|| {
            panic!(
                "nobody applied {CLUSTER_CRD}: {:?}",
                crd.metadata.managed_fields
            )
        })
}

/// Top-level `spec` properties of the served PostgresCluster schema.
fn spec_properties(crd: &CustomResourceDefinition) -> Vec<String> {
    crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .and_then(|s| s.properties.as_ref())
        .and_then(|p| p.get("spec"))
        .and_then(|s| s.properties.as_ref())
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default()
}

/// `crd` without the top-level `spec` property `property`.
fn without_property(crd: &CustomResourceDefinition, property: &str) -> CustomResourceDefinition {
    let mut older = crd.clone();
    let removed = older.spec.versions[0]
        .schema
        .as_mut()
        .and_then(|s| s.open_api_v3_schema.as_mut())
        .and_then(|s| s.properties.as_mut())
        .and_then(|p| p.get_mut("spec"))
        .and_then(|s| s.properties.as_mut())
        .and_then(|p| p.remove(property));
    assert!(removed.is_some(), "{CLUSTER_CRD} has no spec.{property}");
    older
}

/// Puts the served PostgresCluster CRD back to an older shape, as an older
/// chart would have applied it (Helm's own field manager, server-side:
/// without `spec.topologySpreadConstraints`, with an annotation the chart
/// does not have).
async fn make_crd_older(client: &Client) {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let served = api.get(CLUSTER_CRD).await.unwrap();
    let manager = applier(&served);
    let generated = capstan::api::crd::all()
        .into_iter()
        .find(|c| c.metadata.name.as_deref() == Some(CLUSTER_CRD))
        .unwrap();
    let mut older = without_property(&generated, "topologySpreadConstraints");
    // Helm's own labels and annotations (ownership, keep), as it applied them.
    older.metadata.labels = served.metadata.labels.clone();
    older.metadata.annotations = served.metadata.annotations.clone();
    older
        .metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(OLDER_ANNOTATION.into(), "true".into());
    api.patch(
        CLUSTER_CRD,
        &PatchParams::apply(&manager).force(),
        &Patch::Apply(&older),
    )
    .await
    .unwrap();
    let now = api.get(CLUSTER_CRD).await.unwrap();
    let properties = spec_properties(&now);
    assert!(
        !properties.contains(&"topologySpreadConstraints".to_string()),
        "the older CRD still has spec.topologySpreadConstraints"
    );
    assert!(
        now.metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(OLDER_ANNOTATION))
    );
}

/// Someone else edits the CRD (a plain update, as `kubectl replace` does:
/// without `spec.tolerations`), so another field manager owns its schema.
async fn edit_crd_by_hand(client: &Client) {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut edited = without_property(&api.get(CLUSTER_CRD).await.unwrap(), "tolerations");
    edited.metadata.managed_fields = None;
    let replace = PostParams {
        field_manager: Some("e2e-replace".into()),
        ..PostParams::default()
    };
    api.replace(CLUSTER_CRD, &replace, &edited).await.unwrap();
}

/// The served PostgresCluster CRD is the chart's: the schema `capstan crd`
/// generates, the keep annotation, no annotation of the older chart.
async fn crd_is_the_charts(client: &Client) -> Result<(), String> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let served = api.get(CLUSTER_CRD).await.map_err(|e| e.to_string())?;
    let generated = capstan::api::crd::all()
        .into_iter()
        .find(|c| c.metadata.name.as_deref() == Some(CLUSTER_CRD))
        .unwrap();
    let annotations = served.metadata.annotations.clone().unwrap_or_default();
    if annotations.get(KEEP).map(String::as_str) != Some("keep") {
        return Err(format!("no {KEEP}: keep in {annotations:?}"));
    }
    if annotations.contains_key(OLDER_ANNOTATION) {
        return Err(format!("still annotated {OLDER_ANNOTATION}"));
    }
    for (served, generated) in served.spec.versions.iter().zip(&generated.spec.versions) {
        let served_schema = serde_json::to_value(&served.schema).unwrap();
        let generated_schema = serde_json::to_value(&generated.schema).unwrap();
        if served_schema != generated_schema {
            return Err(format!(
                "version {}: the served schema differs from `capstan crd`; spec properties served: {:?}",
                served.name,
                spec_properties(&api.get(CLUSTER_CRD).await.map_err(|e| e.to_string())?)
            ));
        }
    }
    Ok(())
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
        // Bad values: refused by the chart's schema, naming the value, and
        // nothing installed.
        refused_install(
            &harness,
            "replicas=0",
            "at '/replicas': minimum: got 0, want 1",
        )
        .await;
        refused_install(
            &harness,
            "monitoring.podMonitors.enabeld=true",
            "at '/monitoring/podMonitors': additional properties 'enabeld' not allowed",
        )
        .await;
        harness.start_operator().await.expect("helm install");
        let status = harness
            .helm(&["status", RELEASE, "-n", OPERATOR_NAMESPACE])
            .unwrap();
        assert!(status.contains("STATUS: deployed"), "{status}");
        // The notes say what was installed and how to start.
        for expected in [
            "Deployment capstan-operator in namespace capstan-system",
            "PostgresClusters in all namespaces",
            "postgresclusters.capstan.dev and postgresbackups.capstan.dev, installed and upgraded",
            "kubectl get pgc -n default -w",
        ] {
            assert!(
                status.contains(expected),
                "helm status lacks {expected:?}: {status}"
            );
        }
        crd_is_the_charts(&client).await.unwrap();

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

        // The CRD drifts to an older shape; helm upgrade (to a changed
        // value: the operator rolls, no database or pooler pod is touched)
        // brings it back to the chart's.
        make_crd_older(&client).await;
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
        if let Err(e) = crd_is_the_charts(&client).await {
            panic!("helm upgrade left the CRD as it was: {e}");
        }
        // A CRD someone else edited: Helm's server-side apply stops with
        // the conflict, naming the other manager; --force-conflicts takes
        // the fields back.
        edit_crd_by_hand(&client).await;
        let upgrade = [
            "upgrade",
            RELEASE,
            &chart,
            "-n",
            OPERATOR_NAMESPACE,
            "--reuse-values",
        ];
        let conflict = harness.helm(&upgrade);
        assert!(
            matches!(&conflict, Err(e) if e.to_string().contains("conflict with \"e2e-replace\"")),
            "helm upgrade over a hand-edited CRD: {conflict:?}"
        );
        let mut forced = upgrade.to_vec();
        forced.push("--force-conflicts");
        harness.helm(&forced).unwrap();
        if let Err(e) = crd_is_the_charts(&client).await {
            panic!("helm upgrade --force-conflicts left the hand-edited CRD: {e}");
        }
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
        // The CRDs and the clusters stay (deleting a CRD deletes every
        // object of it).
        let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
        for crd in capstan::api::crd::all() {
            let name = crd.metadata.name.unwrap_or_default();
            assert!(
                crds.get_opt(&name).await.unwrap().is_some(),
                "helm uninstall deleted CRD {name}"
            );
        }
        crd_is_the_charts(&client).await.unwrap();
        for (file, name) in EXAMPLES {
            let api: Api<capstan::api::PostgresCluster> =
                Api::namespaced(client.clone(), &namespace_of(file));
            assert!(
                api.get_opt(name).await.unwrap().is_some(),
                "helm uninstall deleted PostgresCluster {name}"
            );
        }

        // CRDs Helm did not create (kubectl apply of crds/, or a chart that
        // kept them in crds/) carry none of its ownership metadata: helm
        // install refuses to take them over, --take-ownership adopts them.
        let foreign = serde_json::json!({"metadata": {
            "labels": {"app.kubernetes.io/managed-by": null},
            "annotations": {
                "meta.helm.sh/release-name": null,
                "meta.helm.sh/release-namespace": null,
            },
        }});
        for crd in capstan::api::crd::all() {
            let name = crd.metadata.name.unwrap_or_default();
            crds.patch(&name, &PatchParams::default(), &Patch::Merge(&foreign))
                .await
                .unwrap();
        }
        let install = [
            "install",
            RELEASE,
            &chart,
            "--namespace",
            OPERATOR_NAMESPACE,
        ];
        let refused = harness.helm(&install);
        assert!(
            matches!(&refused, Err(e) if e.to_string().contains("invalid ownership metadata")),
            "helm install took over CRDs it did not create: {refused:?}"
        );
        let releases = releases(&harness);
        assert!(
            releases.trim().is_empty(),
            "a refused install left {releases}"
        );
        let mut adopt = install.to_vec();
        adopt.push("--take-ownership");
        harness.helm(&adopt).unwrap();
        for crd in capstan::api::crd::all() {
            let name = crd.metadata.name.unwrap_or_default();
            let adopted = crds.get(&name).await.unwrap();
            assert_eq!(
                adopted
                    .metadata
                    .annotations
                    .unwrap_or_default()
                    .get("meta.helm.sh/release-name")
                    .map(String::as_str),
                Some(RELEASE),
                "--take-ownership did not adopt {name}"
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

/// `watchNamespace` set: the operator, under a Role in that namespace (and
/// a ClusterRole for StorageClasses only), runs a cluster there and grows
/// its volumes; a cluster in another namespace is left alone.
#[test]
fn a_namespaced_install_runs_only_its_namespace() {
    capstan_e2e::scenario(|| async {
        let mut harness = Harness::start(HarnessOptions::default())
            .await
            .expect("harness");
        let (watched, other) = ("e2e-watched", "e2e-unwatched");
        let client = harness.client();
        // The watched namespace exists before the chart puts its Role there.
        for ns in [watched, other] {
            ensure_namespace(&client, ns).await.unwrap();
        }
        harness.set_helm_values(&[&format!("watchNamespace={watched}")]);
        harness.start_operator().await.expect("helm install");
        let class = capstan_e2e::volumes::storage_class(
            &client,
            "e2e-namespaced",
            capstan_e2e::volumes::Expansion::Online,
        )
        .await
        .unwrap();
        for ns in [watched, other] {
            let mut cluster = capstan_e2e::cluster::load_example(
                &capstan_e2e::cluster::example("minimal.yaml"),
                ns,
            )
            .unwrap();
            cluster.spec.storage.size =
                k8s_openapi::apimachinery::pkg::api::resource::Quantity("128Mi".into());
            cluster.spec.storage.storage_class_name = Some(class.clone());
            capstan_e2e::cluster::apply(&client, &cluster)
                .await
                .unwrap();
        }
        if let Err(e) = harness.kubectl(&[
            "wait",
            "-n",
            watched,
            "pgc/minimal",
            "--for=condition=Ready",
            "--timeout=180s",
        ]) {
            panic!(
                "{e}\n{}\n--- operator ---\n{}",
                harness.diagnostics(watched).await,
                harness.operator_logs()
            );
        }
        // A larger size: the class is read (cluster-scoped) and the claim grows.
        let patch = serde_json::json!({"spec": {"storage": {"size": "192Mi"}}});
        capstan_e2e::cluster::merge_patch(&client, watched, "minimal", &patch)
            .await
            .unwrap();
        let grown = wait_for(
            "the watched cluster's volume at 192Mi",
            Duration::from_secs(120),
            Duration::from_millis(500),
            || async {
                let c = capstan_e2e::cluster::get(&client, watched, "minimal")
                    .await
                    .ok()?;
                let v = capstan_e2e::volumes::volume(&c, "minimal-1", "data")?;
                (v.capacity.as_deref() == Some("192Mi")).then_some(())
            },
        )
        .await;
        if let Err(e) = grown {
            let c = capstan_e2e::cluster::get(&client, watched, "minimal").await;
            panic!(
                "{e}: {:?}\n--- operator ---\n{}",
                c.map(|c| c.status),
                harness.operator_logs()
            );
        }
        // The other namespace: no status, no pod, nothing created.
        let untouched = capstan_e2e::cluster::get(&client, other, "minimal")
            .await
            .unwrap();
        assert!(
            untouched.status.is_none(),
            "a cluster outside watchNamespace got a status: {:?}",
            untouched.status
        );
        let pods: Api<Pod> = Api::namespaced(client.clone(), other);
        assert!(
            pods.list(&ListParams::default())
                .await
                .unwrap()
                .items
                .is_empty()
        );
        let log = harness.operator_logs();
        assert!(
            !log.contains("forbidden"),
            "the operator was refused something:\n{log}"
        );
    });
}

//! Every file in examples/ is a valid PostgresCluster: it passes the CRD's
//! CEL rules (with schema defaults, as the API server applies them) and the
//! operator's own validation, and `capstan render` produces its children.
//! (The structural schema check and kubernetes-validate of the rendered
//! objects run in .ci/run, with the Python tools.)

use std::path::PathBuf;

use kube::CustomResourceExt;
use kube::core::cel::Validator;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

use capstan::api::{PostgresBackup, PostgresCluster};

fn examples() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 3, "expected the examples, found {files:?}");
    files
}

fn schema(crd: CustomResourceDefinition) -> serde_json::Value {
    serde_json::to_value(
        crd.spec.versions[0]
            .schema
            .as_ref()
            .unwrap()
            .open_api_v3_schema
            .as_ref()
            .unwrap(),
    )
    .unwrap()
}

#[test]
fn examples_pass_the_cel_rules() {
    let cluster_schema = schema(PostgresCluster::crd());
    let backup_schema = schema(PostgresBackup::crd());
    let (mut clusters, mut backups) = (0, 0);
    for file in examples() {
        let text = std::fs::read_to_string(&file).unwrap();
        let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&text).unwrap();
        for doc in docs {
            let schema = match doc["kind"].as_str() {
                Some("PostgresCluster") => &cluster_schema,
                Some("PostgresBackup") => &backup_schema,
                _ => continue,
            };
            if let Err(errors) = Validator::new().validate(schema, &doc, None) {
                panic!("{}: {errors:?}", file.display());
            }
            if doc["kind"] == "PostgresCluster" {
                let cluster: PostgresCluster = serde_json::from_value(doc).unwrap();
                assert!(cluster.metadata.name.is_some());
                clusters += 1;
            } else {
                let backup: PostgresBackup = serde_json::from_value(doc).unwrap();
                assert!(backup.metadata.name.is_some());
                backups += 1;
            }
        }
    }
    assert!(
        clusters >= 3 && backups >= 1,
        "{clusters} clusters, {backups} backups"
    );
}

#[test]
fn examples_render() {
    for file in examples() {
        let out =
            capstan::render::render_file(&file, "capstan:test").unwrap_or_else(|e| panic!("{e}"));
        assert!(out.contains("kind: Deployment"), "{}", file.display());
        assert!(out.contains("kind: Pod"), "{}", file.display());
    }
}

//! The CRD's rules as the real kube-apiserver enforces them: every example
//! is accepted, and a table of invalid specs (on create, and on update for
//! the rules that compare with the stored object) is refused with a message
//! that names the field. Local harness only: the CRD is what is tested, and
//! a real cluster has its own copy installed.

use capstan::api::PostgresCluster;
use capstan_e2e::cluster::{example, load_example};
use capstan_e2e::harness::{Harness, HarnessOptions, Install, ensure_namespace};
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::{Value, json};

const NS: &str = "e2e-admission";

/// `examples/minimal.yaml` as JSON, with `pointer` set to `value`.
fn minimal_with(pointer: &str, value: Value) -> Value {
    let cluster = load_example(&example("minimal.yaml"), NS).expect("example");
    let mut obj = serde_json::to_value(&cluster).unwrap();
    set(&mut obj, pointer, value);
    obj
}

fn set(obj: &mut Value, pointer: &str, value: Value) {
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    let mut at = obj;
    for part in parent.split('/').filter(|p| !p.is_empty()) {
        if at.get(part).is_none() {
            at[part] = json!({});
        }
        at = &mut at[part];
    }
    at[key] = value;
}

/// Server-side apply as `kubectl apply --server-side` does.
async fn apply(api: &Api<PostgresCluster>, obj: &Value) -> Result<(), String> {
    let name = obj["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    api.patch(&name, &PatchParams::apply("kubectl"), &Patch::Apply(obj))
        .await
        .map(|_| ())
        .map_err(|e| match e {
            kube::Error::Api(s) => format!("{} {}", s.code, s.message),
            other => other.to_string(),
        })
}

#[test]
fn the_real_api_server_enforces_the_crd_rules() {
    capstan_e2e::scenario(|| async {
        let harness = Harness::start(HarnessOptions {
            simulated: true,
            install: Install::HostProcess,
        })
        .await
        .expect("harness");
        let client = harness.client();
        ensure_namespace(&client, NS).await.unwrap();
        let api: Api<PostgresCluster> = Api::namespaced(client.clone(), NS);

        // Every example passes admission (and prints no warning-worthy field).
        for file in [
            "minimal.yaml",
            "ha-cluster.yaml",
            "ha-sync.yaml",
            "provided-tls.yaml",
        ] {
            let cluster = load_example(&example(file), NS).expect("example");
            let obj = serde_json::to_value(&cluster).unwrap();
            apply(&api, &obj)
                .await
                .unwrap_or_else(|e| panic!("{file} refused: {e}"));
        }

        let create: Vec<(&str, Value, &str)> = vec![
            (
                "/metadata/name",
                json!("a".repeat(51)),
                "metadata.name must be at most 50",
            ),
            ("/metadata/name", json!("db.prod"), "metadata.name must be"),
            (
                "/spec/instances",
                json!(0),
                "spec.instances must be between 1 and 9",
            ),
            (
                "/spec/instances",
                json!(10),
                "spec.instances must be between 1 and 9",
            ),
            (
                "/spec/postgres/version",
                json!(13),
                "spec.postgres.version must be a supported",
            ),
            (
                "/spec/postgres/parameters",
                json!({"port": "6000"}),
                "spec.postgres.parameters: port is managed by Capstan",
            ),
            (
                "/spec/postgres/parameters",
                json!({"work mem": "8MB"}),
                "parameter names may contain only",
            ),
            (
                "/spec/postgres/parameters",
                json!({"work_mem": "8MB\nport = 1"}),
                "single line",
            ),
            (
                "/spec/proxy/pgbouncer/parameters",
                json!({"auth_type": "trust"}),
                "spec.proxy.pgbouncer.parameters: auth_type is managed by Capstan",
            ),
            (
                "/spec/postgres/hba",
                json!(["host all all 0.0.0.0/0 trust"]),
                "spec.postgres.hba entries must be single-line 'hostssl",
            ),
            (
                "/spec/storage/size",
                json!("0"),
                "size must be a positive quantity",
            ),
            ("/spec/storage/size", json!("lots"), "spec.storage.size"),
            (
                "/spec/proxy/pgbouncer/replicas",
                json!(0),
                "spec.proxy.pgbouncer.replicas must be between 1 and 32",
            ),
            (
                "/spec/failover/detectionSeconds",
                json!(1),
                "spec.failover.detectionSeconds must be between 2 and 60",
            ),
            (
                "/spec/replication/synchronous",
                json!({"mode": "quorum", "number": 1}),
                "spec.replication.synchronous.number must be at most spec.instances - 1",
            ),
            (
                "/spec/bootstrap/initdb/database",
                json!("template1"),
                "spec.bootstrap.initdb.database must be a lowercase SQL identifier",
            ),
            (
                "/spec/bootstrap/initdb/owner",
                json!("Owner"),
                "spec.bootstrap.initdb.owner must be a lowercase SQL identifier",
            ),
            (
                "/spec/tls",
                json!({"mode": "Provided"}),
                "spec.tls.provided must be set when spec.tls.mode is Provided",
            ),
            (
                "/spec/tls",
                json!({"mode": "Provided", "provided": {
                    "caSecretName": "my-ca",
                    "serverSecretName": "my-server",
                    "replicationSecretName": "my-replication",
                    "poolerSecretName": "NAME-pooler",
                }}),
                "spec.tls.provided: a Secret name is one Capstan uses",
            ),
        ];
        let mut failures = Vec::new();
        for (i, (pointer, value, expected)) in create.iter().enumerate() {
            let mut obj = minimal_with(pointer, value.clone());
            if *pointer != "/metadata/name" {
                obj["metadata"]["name"] = json!(format!("bad-{i}"));
            }
            // NAME stands for the object's own name.
            let text = serde_json::to_string(&obj)
                .unwrap()
                .replace("NAME-", &format!("bad-{i}-"));
            let obj: Value = serde_json::from_str(&text).unwrap();
            match apply(&api, &obj).await {
                Err(e) if e.starts_with("422") && e.contains(expected) => {}
                other => failures.push(format!(
                    "{pointer} = {value}: {other:?}, expected {expected:?}"
                )),
            }
        }

        // Rules comparing with the stored object: a valid cluster first.
        let base = {
            let mut obj = minimal_with("/spec/instances", json!(1));
            obj["metadata"]["name"] = json!("updates");
            obj
        };
        apply(&api, &base).await.expect("valid cluster");
        let update: Vec<(&str, Value, &str)> = vec![
            (
                "/spec/postgres/version",
                json!(16),
                "spec.postgres.version may not be lowered",
            ),
            (
                "/spec/storage/size",
                json!("512Mi"),
                "size may not be decreased",
            ),
            (
                "/spec/storage/storageClassName",
                json!("other"),
                "storageClassName is immutable",
            ),
            (
                "/spec/walStorage",
                json!({"size": "1Gi"}),
                "spec.walStorage can only be chosen",
            ),
            (
                "/spec/bootstrap/initdb/database",
                json!("other"),
                "spec.bootstrap is immutable",
            ),
        ];
        for (pointer, value, expected) in &update {
            let mut obj = base.clone();
            set(&mut obj, pointer, value.clone());
            match apply(&api, &obj).await {
                Err(e) if e.starts_with("422") && e.contains(expected) => {}
                other => failures.push(format!(
                    "update {pointer} = {value}: {other:?}, expected {expected:?}"
                )),
            }
        }
        // Raising what may rise is accepted.
        let mut grown = base.clone();
        set(&mut grown, "/spec/storage/size", json!("2Gi"));
        set(&mut grown, "/spec/postgres/version", json!(18));
        if let Err(e) = apply(&api, &grown).await {
            failures.push(format!("growing storage and raising the version: {e}"));
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    });
}

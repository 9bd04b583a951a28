//! The CRD's rules as the real kube-apiserver enforces them: every example
//! is accepted, and a table of invalid specs (on create, and on update for
//! the rules that compare with the stored object) is refused with a message
//! that names the field. Local harness only: the CRD is what is tested, and
//! a real cluster has its own copy installed.

use capstan::api::{PostgresCluster, scale_selector};
use capstan_e2e::cluster::{example, load_example};
use capstan_e2e::harness::{Harness, HarnessOptions, Install, ensure_namespace};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
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
            (
                "/spec/tls",
                json!({"mode": "Provided", "provided": {
                    "caSecretName": "My_CA",
                    "serverSecretName": "my-server",
                    "replicationSecretName": "my-replication",
                    "poolerSecretName": "my-pooler",
                }}),
                "spec.tls.provided.caSecretName",
            ),
            (
                "/spec/resources",
                json!({"limits": {"cpu": "2 cores"}}),
                "spec.resources.limits.cpu",
            ),
            (
                "/spec/proxy/pgbouncer/resources",
                json!({"requests": {"memory": "lots"}}),
                "spec.proxy.pgbouncer.resources.requests.memory",
            ),
            (
                "/spec/storage/storageClassName",
                json!("Fast_SSD"),
                "spec.storage.storageClassName",
            ),
            (
                "/spec/bootstrap/initdb/encoding",
                json!("UTF8 --no-sync"),
                "spec.bootstrap.initdb.encoding",
            ),
            (
                "/spec/bootstrap/initdb/locale",
                json!("en_US.UTF-8; x"),
                "spec.bootstrap.initdb.locale",
            ),
            (
                "/spec/replication/synchronous",
                json!({"mode": "off", "number": 1}),
                "unset (0) when mode is off",
            ),
            (
                "/spec/failover/maxLagBytes",
                json!(-1),
                "spec.failover.maxLagBytes must not be negative",
            ),
            (
                "/spec/proxy/pgbouncer/maxClientConn",
                json!(0),
                "spec.proxy.pgbouncer.maxClientConn must be at least 1",
            ),
            (
                "/spec/proxy/pgbouncer/defaultPoolSize",
                json!(0),
                "spec.proxy.pgbouncer.defaultPoolSize must be at least 1",
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
        // Lowering the version back is the operator's to judge (it knows
        // the data's version): admission lets it through.
        set(&mut grown, "/spec/postgres/version", json!(17));
        if let Err(e) = apply(&api, &grown).await {
            failures.push(format!("lowering the version back: {e}"));
        }

        failures.extend(scale_subresource(&api, "updates").await);
        failures.extend(status_schema(&api, "updates").await);
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    });
}

/// `kubectl scale` goes through the `/scale` subresource: it sets
/// `spec.instances`, and the CRD's rules still apply to what it writes.
async fn scale_subresource(api: &Api<PostgresCluster>, name: &str) -> Vec<String> {
    let mut failures = Vec::new();
    let scale_to = |replicas: i32| Patch::Merge(json!({"spec": {"replicas": replicas}}));
    let pp = PatchParams::default();
    match api.patch_scale(name, &pp, &scale_to(3)).await {
        Ok(_) => match api.get(name).await {
            Ok(c) if c.spec.instances == 3 => {}
            Ok(c) => failures.push(format!(
                "scale to 3: spec.instances is {}",
                c.spec.instances
            )),
            Err(e) => failures.push(format!("scale to 3: get: {e}")),
        },
        Err(e) => failures.push(format!("scale to 3: {e}")),
    }
    match api.patch_scale(name, &pp, &scale_to(10)).await {
        Err(kube::Error::Api(s))
            if s.code == 422 && s.message.contains("spec.instances must be between 1 and 9") => {}
        other => failures.push(format!(
            "scale to 10: {other:?}, expected 422 spec.instances must be between 1 and 9"
        )),
    }
    failures
}

/// The status schema: the scale selector is served from `status.selector`,
/// roles are an enum, conditions a list-map keyed by `type`.
async fn status_schema(api: &Api<PostgresCluster>, name: &str) -> Vec<String> {
    let mut failures = Vec::new();
    let write = |status: Value| async move {
        let mut cluster = api.get(name).await.map_err(|e| e.to_string())?;
        let mut obj = serde_json::to_value(&cluster).unwrap();
        obj["status"] = status;
        cluster = serde_json::from_value(obj).unwrap();
        api.replace_status(name, &PostParams::default(), &cluster)
            .await
            .map(|_| ())
            .map_err(|e| match e {
                kube::Error::Api(s) => format!("{} {}", s.code, s.message),
                other => other.to_string(),
            })
    };
    let condition = |type_: &str| {
        json!({
            "type": type_, "status": "True", "reason": "Test", "message": "",
            "lastTransitionTime": "2025-01-01T00:00:00Z",
        })
    };
    let selector = scale_selector(name);
    let good = json!({
        "readyInstances": 1,
        "selector": selector,
        "conditions": [condition("Ready"), condition("Degraded")],
        "instances": [{"name": format!("{name}-1"), "role": "primary", "ready": true}],
    });
    match write(good.clone()).await {
        Ok(()) => match api.get_scale(name).await {
            Ok(scale) => {
                let status = scale.status.unwrap_or_default();
                if status.selector.as_deref() != Some(selector.as_str()) || status.replicas != 1 {
                    failures.push(format!(
                        "/scale status: {status:?}, expected selector {selector:?} and 1 replica"
                    ));
                }
            }
            Err(e) => failures.push(format!("get /scale: {e}")),
        },
        Err(e) => failures.push(format!("a valid status was refused: {e}")),
    }
    let mut bad_role = good.clone();
    bad_role["instances"][0]["role"] = json!("leader");
    let mut duplicate = good.clone();
    duplicate["conditions"] = json!([condition("Ready"), condition("Ready")]);
    let mut bad_phase = good;
    bad_phase["failover"] = json!({
        "phase": "Exploded", "from": "a", "message": "", "startedAt": "2025-01-01T00:00:00Z",
    });
    for (what, status, expected) in [
        ("role leader", bad_role, "status.instances[0].role"),
        ("two Ready conditions", duplicate, "status.conditions[1]"),
        (
            "failover phase Exploded",
            bad_phase,
            "status.failover.phase",
        ),
    ] {
        match write(status).await {
            Err(e) if e.starts_with("422") && e.contains(expected) => {}
            other => failures.push(format!(
                "status with {what}: {other:?}, expected {expected:?}"
            )),
        }
    }
    failures
}

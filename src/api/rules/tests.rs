//! Each rule is evaluated by kube's local CEL engine against the schema in
//! the generated CRD, after schema defaults, as the API server does.

use kube::CustomResourceExt;
use kube::core::cel::Validator;
use serde_json::{Value, json};

use crate::api::PostgresCluster;

mod backup;
mod roles;
mod stores;

fn schema() -> Value {
    schema_of::<PostgresCluster>()
}

/// The openAPIV3Schema of `K`'s generated CRD, as the API server sees it.
fn schema_of<K: CustomResourceExt>() -> Value {
    let crd = K::crd();
    let schema = crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .expect("schema");
    serde_json::to_value(schema).expect("json")
}

fn cluster(spec: Value) -> Value {
    json!({
        "apiVersion": "capstan.dev/v1alpha1",
        "kind": "PostgresCluster",
        "metadata": {"name": "db", "namespace": "ns"},
        "spec": spec,
    })
}

fn minimal() -> Value {
    cluster(json!({"postgres": {"version": 17}, "storage": {"size": "1Gi"}}))
}

fn with(mut obj: Value, pointer: &str, value: Value) -> Value {
    let (parent, key) = pointer.rsplit_once('/').expect("pointer");
    let mut node = &mut obj;
    for part in parent.split('/').filter(|p| !p.is_empty()) {
        if node.get(part).is_none() {
            node[part] = json!({});
        }
        node = node.get_mut(part).expect("path");
    }
    node[key] = value;
    obj
}

fn without(mut obj: Value, pointer: &str) -> Value {
    let (parent, key) = pointer.rsplit_once('/').expect("pointer");
    if let Some(Value::Object(map)) = obj.pointer_mut(parent) {
        map.remove(key);
    }
    obj
}

fn errors(obj: &Value, old: Option<&Value>) -> Vec<String> {
    match Validator::new().validate(&schema(), obj, old) {
        Ok(()) => vec![],
        Err(errs) => errs
            .into_vec()
            .into_iter()
            .map(|e| format!("{}: {}", e.field_path, e.message))
            .collect(),
    }
}

#[track_caller]
fn assert_ok(obj: &Value, old: Option<&Value>) {
    let errs = errors(obj, old);
    assert!(errs.is_empty(), "expected no errors, got {errs:?}");
}

#[track_caller]
fn assert_refused(obj: &Value, old: Option<&Value>, needle: &str) {
    let errs = errors(obj, old);
    assert!(
        errs.iter().any(|e| e.contains(needle)),
        "expected an error containing {needle:?}, got {errs:?}"
    );
}

#[test]
fn minimal_cluster_is_accepted() {
    assert_ok(&minimal(), None);
    assert_ok(&minimal(), Some(&minimal()));
}

#[test]
fn cluster_name_must_fit_child_names() {
    assert_refused(
        &with(minimal(), "/metadata/name", json!("a".repeat(51))),
        None,
        "at most 50 characters",
    );
    assert_refused(
        &with(minimal(), "/metadata/name", json!("1db")),
        None,
        "starting with a letter",
    );
    assert_refused(
        &with(minimal(), "/metadata/name", json!("db.prod")),
        None,
        "starting with a letter",
    );
    assert_ok(
        &with(minimal(), "/metadata/name", json!("a".repeat(50))),
        None,
    );
    assert_ok(
        &with(minimal(), "/metadata/name", json!("orders-db-2")),
        None,
    );
}

/// The rules read their bounds from `limits`: the edges are accepted,
/// one past them refused.
#[test]
fn numeric_rules_follow_the_limits_module() {
    use crate::api::limits;
    let cases = [
        ("/spec/instances", limits::INSTANCES, "spec.instances"),
        (
            "/spec/postgres/version",
            limits::POSTGRES_VERSIONS,
            "spec.postgres.version",
        ),
        (
            "/spec/proxy/pgbouncer/replicas",
            limits::POOLER_REPLICAS,
            "spec.proxy.pgbouncer.replicas",
        ),
        (
            "/spec/failover/detectionSeconds",
            limits::DETECTION_SECONDS,
            "spec.failover.detectionSeconds",
        ),
    ];
    for (pointer, range, field) in cases {
        for ok in [*range.start(), *range.end()] {
            assert_ok(&with(minimal(), pointer, json!(ok)), None);
        }
        for bad in [range.start() - 1, range.end() + 1] {
            assert_refused(&with(minimal(), pointer, json!(bad)), None, field);
        }
    }
    let name = "a".repeat(limits::CLUSTER_NAME_MAX);
    assert_ok(&with(minimal(), "/metadata/name", json!(name)), None);
    let identifier = "a".repeat(limits::SQL_IDENTIFIER_MAX);
    assert_ok(
        &with(
            minimal(),
            "/spec/bootstrap/initdb/database",
            json!(identifier),
        ),
        None,
    );
    assert_refused(
        &with(
            minimal(),
            "/spec/bootstrap/initdb/database",
            json!(format!("{identifier}a")),
        ),
        None,
        "initdb.database must be",
    );
}

#[test]
fn instances_between_one_and_nine() {
    for n in [0, -1, 10] {
        assert_refused(
            &with(minimal(), "/spec/instances", json!(n)),
            None,
            "spec.instances must be between 1 and 9",
        );
    }
    for n in [1, 3, 9] {
        assert_ok(&with(minimal(), "/spec/instances", json!(n)), None);
    }
}

#[test]
fn version_must_be_supported() {
    for v in [13, 19, 0] {
        assert_refused(
            &with(minimal(), "/spec/postgres/version", json!(v)),
            None,
            "supported PostgreSQL major",
        );
    }
    for v in 14..=18 {
        assert_ok(&with(minimal(), "/spec/postgres/version", json!(v)), None);
    }
}

#[test]
fn version_may_move_either_way_at_admission() {
    // The operator decides against status.postgresVersion, which CEL on
    // the spec cannot see: lowering back after a failed upgrade is allowed.
    let v16 = with(minimal(), "/spec/postgres/version", json!(16));
    let v17 = with(minimal(), "/spec/postgres/version", json!(17));
    assert_ok(&v17, Some(&v16));
    assert_ok(&v16, Some(&v17));
}

#[test]
fn managed_postgres_parameters_are_refused_by_name() {
    let obj = with(
        minimal(),
        "/spec/postgres/parameters",
        json!({"work_mem": "8MB", "Port": "6000", "wal_level": "minimal"}),
    );
    // CEL iterates map keys in no fixed order: either one is named.
    let errs = errors(&obj, None);
    assert!(
        errs.iter().any(
            |e| e.contains("spec.postgres.parameters: Port is managed by Capstan")
                || e.contains("spec.postgres.parameters: wal_level is managed by Capstan")
        ),
        "{errs:?}"
    );
    assert_ok(
        &with(
            minimal(),
            "/spec/postgres/parameters",
            json!({"work_mem": "8MB", "pg_stat_statements.max": "5000"}),
        ),
        None,
    );
}

#[test]
fn parameter_names_and_values_are_checked() {
    assert_refused(
        &with(
            minimal(),
            "/spec/postgres/parameters",
            json!({"work mem": "8MB"}),
        ),
        None,
        "parameter names may contain only",
    );
    assert_refused(
        &with(
            minimal(),
            "/spec/postgres/parameters",
            json!({"work_mem": "8MB\nport = 1"}),
        ),
        None,
        "single line",
    );
    assert_refused(
        &with(
            minimal(),
            "/spec/proxy/pgbouncer/parameters",
            json!({"x": "1\r2"}),
        ),
        None,
        "single line",
    );
}

#[test]
fn managed_pgbouncer_parameters_are_refused_by_name() {
    let obj = with(
        minimal(),
        "/spec/proxy/pgbouncer/parameters",
        json!({"auth_type": "trust", "server_idle_timeout": "60"}),
    );
    assert_refused(
        &obj,
        None,
        "spec.proxy.pgbouncer.parameters: auth_type is managed by Capstan",
    );
    assert_ok(
        &with(
            minimal(),
            "/spec/proxy/pgbouncer/parameters",
            json!({"server_idle_timeout": "60"}),
        ),
        None,
    );
}

#[test]
fn hba_lines_must_be_hostssl() {
    assert_ok(
        &with(
            minimal(),
            "/spec/postgres/hba",
            json!(["hostssl app app 10.0.0.0/8 scram-sha-256"]),
        ),
        None,
    );
    assert_refused(
        &with(
            minimal(),
            "/spec/postgres/hba",
            json!(["host all all 0.0.0.0/0 trust"]),
        ),
        None,
        "hostssl",
    );
    assert_refused(
        &with(
            minimal(),
            "/spec/postgres/hba",
            json!(["hostssl all all all scram-sha-256\nhost all all all trust"]),
        ),
        None,
        "hostssl",
    );
}

#[test]
fn storage_size_must_be_a_positive_quantity() {
    assert_refused(
        &with(minimal(), "/spec/storage/size", json!("lots")),
        None,
        "positive quantity",
    );
    assert_refused(
        &with(minimal(), "/spec/storage/size", json!("0")),
        None,
        "positive quantity",
    );
    assert_refused(
        &with(minimal(), "/spec/walStorage", json!({"size": "-1Gi"})),
        None,
        "positive quantity",
    );
    assert_ok(&with(minimal(), "/spec/storage/size", json!("500Mi")), None);
}

#[test]
fn storage_may_grow_but_not_shrink() {
    let small = with(minimal(), "/spec/storage/size", json!("1Gi"));
    let big = with(minimal(), "/spec/storage/size", json!("1536Mi"));
    assert_ok(&big, Some(&small));
    assert_refused(&small, Some(&big), "may not be decreased");
    // The same amount written another way is not a shrink.
    assert_ok(
        &with(minimal(), "/spec/storage/size", json!("1024Mi")),
        Some(&small),
    );
    let wal_small = with(minimal(), "/spec/walStorage", json!({"size": "2Gi"}));
    let wal_smaller = with(minimal(), "/spec/walStorage", json!({"size": "1Gi"}));
    assert_refused(&wal_smaller, Some(&wal_small), "may not be decreased");
}

#[test]
fn storage_class_is_immutable() {
    let fast = with(minimal(), "/spec/storage/storageClassName", json!("fast"));
    let slow = with(minimal(), "/spec/storage/storageClassName", json!("slow"));
    assert_ok(&fast, Some(&fast));
    assert_refused(&slow, Some(&fast), "storageClassName is immutable");
    assert_refused(&minimal(), Some(&fast), "storageClassName is immutable");
    assert_refused(&fast, Some(&minimal()), "storageClassName is immutable");
}

#[test]
fn wal_storage_cannot_be_added_or_removed() {
    let with_wal = with(minimal(), "/spec/walStorage", json!({"size": "1Gi"}));
    assert_ok(&with_wal, None);
    assert_refused(
        &with_wal,
        Some(&minimal()),
        "only be chosen when the cluster is created",
    );
    assert_refused(
        &minimal(),
        Some(&with_wal),
        "only be chosen when the cluster is created",
    );
    let grown = with(minimal(), "/spec/walStorage", json!({"size": "2Gi"}));
    assert_ok(&grown, Some(&with_wal));
}

#[test]
fn bootstrap_is_immutable() {
    let other = with(
        minimal(),
        "/spec/bootstrap/initdb/database",
        json!("orders"),
    );
    assert_ok(&other, None);
    assert_ok(&other, Some(&other));
    assert_refused(&other, Some(&minimal()), "spec.bootstrap is immutable");
    // Spelling out the defaults is not a change.
    let explicit = with(minimal(), "/spec/bootstrap/initdb/database", json!("app"));
    assert_ok(&explicit, Some(&minimal()));
}

#[test]
fn provided_secrets_may_not_take_the_names_of_capstans_own() {
    let name = minimal()["metadata"]["name"].as_str().unwrap().to_string();
    for own in [
        "pooler",
        "superuser",
        "app",
        "ca-key",
        "agent-tls",
        "operator-tls",
        "server-tls",
        "replication-tls",
        "pooler-tls",
        "pgbackrest-tls",
    ] {
        let provided = json!({
            "caSecretName": "my-ca",
            "serverSecretName": "my-server",
            "replicationSecretName": "my-replication",
            "poolerSecretName": format!("{name}-{own}"),
        });
        assert_refused(
            &with(
                minimal(),
                "/spec/tls",
                json!({"mode": "Provided", "provided": provided}),
            ),
            None,
            "one Capstan uses for this cluster's own Secrets",
        );
    }
    // `<name>-ca` is Capstan's in Managed mode only: free in Provided mode.
    let provided = json!({
        "caSecretName": format!("{name}-ca"),
        "serverSecretName": format!("{name}-server-cert"),
        "replicationSecretName": format!("{name}-replication-cert"),
        "poolerSecretName": format!("{name}-pooler-cert"),
    });
    assert_ok(
        &with(
            minimal(),
            "/spec/tls",
            json!({"mode": "Provided", "provided": provided}),
        ),
        None,
    );
}

#[test]
fn tls_mode_and_provided_secrets_agree() {
    let provided = json!({"caSecretName": "ca", "serverSecretName": "srv", "replicationSecretName": "repl", "poolerSecretName": "pool"});
    assert_refused(
        &with(minimal(), "/spec/tls", json!({"mode": "Provided"})),
        None,
        "spec.tls.provided must be set",
    );
    assert_refused(
        &with(
            minimal(),
            "/spec/tls",
            json!({"mode": "Managed", "provided": provided.clone()}),
        ),
        None,
        "spec.tls.provided must be set",
    );
    assert_refused(
        &with(
            minimal(),
            "/spec/tls",
            json!({"provided": provided.clone()}),
        ),
        None,
        "spec.tls.provided must be set",
    );
    assert_ok(
        &with(
            minimal(),
            "/spec/tls",
            json!({"mode": "Provided", "provided": provided}),
        ),
        None,
    );
}

#[test]
fn pooler_sizes_are_bounded() {
    assert_refused(
        &with(minimal(), "/spec/proxy/pgbouncer/replicas", json!(0)),
        None,
        "replicas must be between 1 and 32",
    );
    assert_refused(
        &with(minimal(), "/spec/proxy/pgbouncer/replicas", json!(33)),
        None,
        "replicas must be between 1 and 32",
    );
    assert_refused(
        &with(minimal(), "/spec/proxy/pgbouncer/maxClientConn", json!(0)),
        None,
        "maxClientConn must be at least 1",
    );
    assert_refused(
        &with(minimal(), "/spec/proxy/pgbouncer/defaultPoolSize", json!(0)),
        None,
        "defaultPoolSize must be at least 1",
    );
}

#[test]
fn database_and_owner_are_plain_identifiers() {
    assert_refused(
        &with(minimal(), "/spec/bootstrap/initdb/owner", json!("postgres")),
        None,
        "initdb.owner must be",
    );
    assert_refused(
        &with(minimal(), "/spec/bootstrap/initdb/database", json!("My-DB")),
        None,
        "initdb.database must be",
    );
    assert_refused(
        &with(
            minimal(),
            "/spec/bootstrap/initdb/database",
            json!("a".repeat(64)),
        ),
        None,
        "initdb.database must be",
    );
    assert_ok(
        &with(
            minimal(),
            "/spec/bootstrap/initdb/owner",
            json!("orders_owner"),
        ),
        None,
    );
}

#[test]
fn synchronous_replication_needs_enough_replicas() {
    let sync = |mode: &str, number: i32, instances: i32| {
        with(
            with(minimal(), "/spec/instances", json!(instances)),
            "/spec/replication/synchronous",
            json!({"mode": mode, "number": number}),
        )
    };
    assert_ok(&sync("quorum", 1, 3), None);
    assert_ok(&sync("priority", 2, 3), None);
    assert_ok(&sync("off", 0, 1), None);
    assert_refused(&sync("quorum", 0, 3), None, "number must be at least 1");
    // A number left with mode off would read as if commits were confirmed.
    assert_refused(&sync("off", 1, 3), None, "unset (0) when mode is off");
    assert_refused(&sync("quorum", 3, 3), None, "at most spec.instances - 1");
    assert_refused(&sync("priority", 1, 1), None, "at most spec.instances - 1");
    // Scaling down below what synchronous replication needs is refused too.
    assert_refused(
        &sync("quorum", 2, 2),
        Some(&sync("quorum", 2, 3)),
        "at most spec.instances - 1",
    );
}

#[test]
fn failover_bounds() {
    assert_ok(
        &with(minimal(), "/spec/failover/detectionSeconds", json!(2)),
        None,
    );
    assert_refused(
        &with(minimal(), "/spec/failover/detectionSeconds", json!(1)),
        None,
        "between 2 and 60",
    );
    assert_refused(
        &with(minimal(), "/spec/failover/detectionSeconds", json!(61)),
        None,
        "between 2 and 60",
    );
    assert_refused(
        &with(minimal(), "/spec/failover/maxLagBytes", json!(-1)),
        None,
        "must not be negative",
    );
}

#[test]
fn optional_fields_can_be_absent() {
    assert_ok(&without(minimal(), "/spec/postgres/parameters"), None);
}

/// The API server estimates each rule's worst-case cost from the schema
/// bounds and refuses the CRD when a rule over an unbounded list or map
/// could exceed its budget. Every rule that iterates must therefore sit
/// on a node with maxItems/maxProperties and bounded string elements.
#[test]
fn every_iterating_rule_has_bounded_input() {
    let schema = schema();
    let mut nodes = vec![];
    collect_rule_nodes(&schema, &mut nodes);
    assert!(
        nodes.len() >= 15,
        "expected every rule in the CRD, found {}",
        nodes.len()
    );
    let iterating = ["all(", "exists(", "filter(", "map(", "exists_one("];
    let mut checked = 0;
    let iterated =
        regex::Regex::new(r"self((?:\.[A-Za-z_]+)+)\.(?:all|exists|exists_one|filter|map)\(")
            .expect("regex");
    for (node, rule) in nodes {
        if !iterating.iter().any(|f| rule.contains(f)) {
            continue;
        }
        checked += 1;
        // A rule on a struct iterates over lists inside it (`self.a.b.all(`):
        // each of those must be bounded.
        let targets: Vec<&Value> = if node["type"] == "object" && node.get("properties").is_some() {
            let found: Vec<&Value> = iterated
                .captures_iter(&rule)
                .map(|c| {
                    c[1].split('.').skip(1).fold(node, |at, name| {
                        assert!(!at["properties"][name].is_null(), "{rule}: no {name}");
                        &at["properties"][name]
                    })
                })
                .collect();
            assert!(!found.is_empty(), "{rule}: iterates over what?");
            found
        } else {
            vec![node]
        };
        for node in targets {
            let (bound, element) = match node["type"].as_str() {
                Some("array") => (node.get("maxItems"), &node["items"]),
                Some("object") => (node.get("maxProperties"), &node["additionalProperties"]),
                other => panic!("{rule}: iterates over a {other:?}"),
            };
            assert!(
                bound.and_then(Value::as_u64).is_some(),
                "{rule}: no maxItems/maxProperties on its node"
            );
            if element["type"] == "string" {
                assert!(
                    element["maxLength"].as_u64().is_some(),
                    "{rule}: elements have no maxLength"
                );
            }
        }
    }
    assert!(
        checked >= 4,
        "expected the parameter and hba rules, checked {checked}"
    );
}

fn collect_rule_nodes<'a>(node: &'a Value, out: &mut Vec<(&'a Value, String)>) {
    match node {
        Value::Object(map) => {
            if let Some(Value::Array(rules)) = map.get("x-kubernetes-validations") {
                out.extend(
                    rules
                        .iter()
                        .filter_map(|r| r["rule"].as_str().map(|s| (node, s.to_string()))),
                );
            }
            map.values().for_each(|v| collect_rule_nodes(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| collect_rule_nodes(v, out)),
        _ => {}
    }
}

#[test]
fn certificate_lifetimes_are_bounded_and_renew_in_order() {
    let certs = |c: Value| with(minimal(), "/spec/tls/certificates", c);
    let minutes =
        json!({"duration": "3m", "renewBefore": "1m", "caDuration": "10m", "caRenewBefore": "6m"});
    assert_ok(&certs(minutes.clone()), None);
    assert_ok(&certs(json!({"duration": "2160h"})), None);
    for (field, bad) in [
        ("duration", "30s"),
        ("duration", "1d"),
        ("renewBefore", "1h30m"),
        ("caDuration", "876001h"),
        ("caRenewBefore", "-5m"),
    ] {
        let mut c = minutes.clone();
        c[field] = json!(bad);
        assert_refused(
            &certs(c),
            None,
            &format!("spec.tls.certificates.{field} must be a whole number"),
        );
    }
    let mut c = minutes.clone();
    c["renewBefore"] = json!("3m");
    assert_refused(
        &certs(c),
        None,
        "spec.tls.certificates.renewBefore must be shorter than duration",
    );
    let mut c = minutes.clone();
    c["caRenewBefore"] = json!("600s");
    assert_refused(
        &certs(c),
        None,
        "spec.tls.certificates.caRenewBefore must be shorter than caDuration",
    );
    let mut c = minutes;
    c["caRenewBefore"] = json!("60s");
    assert_refused(
        &certs(c),
        None,
        "caRenewBefore must be longer than renewBefore",
    );
}

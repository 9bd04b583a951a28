//! The controller against kube's `tower-test` API double: every request the
//! reconciler sends is recorded and answered by a scripted server, and the
//! tests check the exact sequence and the bodies.

mod controller_support;

use std::pin::pin;
use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use kube::Client;
use kube::client::Body;
use kube::runtime::controller::Action;
use serde_json::{Value, json};
use tower_test::mock;

use capstan::api::PostgresCluster;
use capstan::operator::context::Context;
use capstan::operator::controller::{error_policy, reconcile};
use controller_support::{Api, Call, Tripwire, cluster, context, json_response, not_found, seed};

fn valid_spec() -> Value {
    json!({"instances": 3, "postgres": {"version": 17}, "storage": {"size": "1Gi"}})
}

/// Runs one reconcile of `object` against the API double, the watch
/// caches listed and empty.
async fn run(
    object: Value,
) -> (
    Result<Action, capstan::operator::error::Error>,
    Vec<Call>,
    Arc<Context>,
) {
    let api = Api::new(object.clone(), Arc::new(Tripwire::default()));
    let (client, server) = api.serve();
    let ctx = context(client, None);
    let _writers = seed(&ctx, &[], &[]);
    let cluster: PostgresCluster = serde_json::from_value(object).unwrap();
    let result = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        reconcile(Arc::new(cluster), ctx.clone()),
    )
    .await
    .expect("reconcile finished");
    server.abort();
    (result, api.calls(), ctx)
}

/// Observe reads the watch caches: no request at all.
const OBSERVE: [&str; 0] = [];

#[tokio::test]
async fn a_new_cluster_first_records_its_primary() {
    let (result, calls, _) = run(cluster(valid_spec(), None)).await;
    let action = result.unwrap();
    let lines: Vec<String> = calls.iter().map(Call::line).collect();
    let mut expected: Vec<String> = OBSERVE.iter().map(|s| s.to_string()).collect();
    expected
        .push("PATCH /apis/capstan.dev/v1alpha1/namespaces/ns/postgresclusters/db/status".into());
    assert_eq!(lines, expected);
    let status = &calls[OBSERVE.len()].body["status"];
    assert_eq!(status["targetPrimary"], "db-1");
    assert_eq!(status["postgresVersion"], 17);
    // No child exists before the primary is recorded.
    assert!(!calls.iter().any(|c| c.method == Method::POST));
    assert_eq!(action, Action::requeue(std::time::Duration::ZERO));
}

#[tokio::test]
async fn first_full_reconcile_creates_children_with_server_side_apply() {
    let status = json!({"targetPrimary": "db-1", "postgresVersion": 17});
    let (result, calls, _) = run(cluster(valid_spec(), Some(status))).await;
    result.unwrap();
    let lines: Vec<String> = calls.iter().map(Call::line).collect();
    let ns = "/api/v1/namespaces/ns";
    let mut expected: Vec<String> = OBSERVE.iter().map(|s| s.to_string()).collect();
    expected.extend(
        [
            // Generated secrets are created (never applied over an existing one).
            format!("POST {ns}/secrets"),
            format!("POST {ns}/secrets"),
            format!("POST {ns}/secrets"),
            format!("POST {ns}/secrets"),
            format!("PATCH {ns}/secrets/db-ca"),
            format!("PATCH {ns}/secrets/db-server-tls"),
            format!("PATCH {ns}/secrets/db-replication-tls"),
            format!("PATCH {ns}/secrets/db-pooler-tls"),
            format!("PATCH {ns}/secrets/db-agent-tls"),
            format!("PATCH {ns}/secrets/db-operator-tls"),
            format!("PATCH {ns}/configmaps/db-config"),
            format!("PATCH {ns}/services/db-rw"),
            format!("PATCH {ns}/services/db-ro"),
            format!("PATCH {ns}/services/db-r"),
            format!("PATCH {ns}/services/db-pooler"),
            format!("PATCH {ns}/serviceaccounts/db-instance"),
            format!("PATCH {ns}/serviceaccounts/db-pooler"),
            "PATCH /apis/coordination.k8s.io/v1/namespaces/ns/leases/db-primary".into(),
            "PATCH /apis/rbac.authorization.k8s.io/v1/namespaces/ns/roles/db-instance".into(),
            "PATCH /apis/rbac.authorization.k8s.io/v1/namespaces/ns/rolebindings/db-instance"
                .into(),
            format!("PATCH {ns}/persistentvolumeclaims/db-1"),
            format!("PATCH {ns}/persistentvolumeclaims/db-2"),
            format!("PATCH {ns}/persistentvolumeclaims/db-3"),
            "PATCH /apis/apps/v1/namespaces/ns/deployments/db-pooler".into(),
            "PATCH /apis/policy/v1/namespaces/ns/poddisruptionbudgets/db-primary".into(),
            "PATCH /apis/policy/v1/namespaces/ns/poddisruptionbudgets/db-replicas".into(),
            "PATCH /apis/policy/v1/namespaces/ns/poddisruptionbudgets/db-pooler".into(),
            // Only the primary first: replicas clone it once it is ready.
            format!("POST {ns}/pods"),
            "PATCH /apis/capstan.dev/v1alpha1/namespaces/ns/postgresclusters/db/status".into(),
        ]
        .into_iter(),
    );
    let events_start = expected.len();
    assert_eq!(
        lines[..events_start.min(lines.len())],
        expected[..],
        "full sequence: {lines:#?}"
    );
    // Then Events, one per thing done.
    assert!(
        lines[events_start..]
            .iter()
            .all(|l| l == "POST /apis/events.k8s.io/v1/namespaces/ns/events"),
        "{lines:#?}"
    );
    let reasons: Vec<&str> = calls[events_start..]
        .iter()
        .filter_map(|c| c.body["reason"].as_str())
        .collect();
    assert_eq!(
        reasons,
        ["CreatedInstances", "CreatedSecrets", "IssuedCertificates"]
    );
    let issued = calls[events_start + 2].body["note"].as_str().unwrap();
    assert!(
        issued.contains("Server certificate (Missing)") && issued.contains("Operator certificate"),
        "{issued}"
    );

    for call in calls.iter().filter(|c| c.method == Method::PATCH) {
        assert_eq!(
            call.content_type,
            "application/apply-patch+yaml",
            "{}",
            call.line()
        );
        assert!(
            call.query.contains("fieldManager=capstan-operator"),
            "{}: {}",
            call.line(),
            call.query
        );
        assert!(call.query.contains("force=true"), "{}", call.line());
    }
    for call in calls
        .iter()
        .filter(|c| c.path.contains("/persistentvolumeclaims/") || c.path.contains("/services/"))
    {
        let owner = &call.body["metadata"]["ownerReferences"];
        if call.path.contains("/services/") {
            assert_eq!(owner[0]["uid"], "uid-7", "{}", call.line());
            assert_eq!(owner[0]["controller"], true);
        } else {
            assert!(
                owner.is_null(),
                "volumes are retained by default: {}",
                call.line()
            );
        }
    }
    let pod = calls
        .iter()
        .find(|c| c.method == Method::POST && c.path.ends_with("/pods"))
        .unwrap();
    assert_eq!(pod.body["metadata"]["name"], "db-1");
    assert_eq!(
        pod.body["metadata"]["labels"]["capstan.dev/role"],
        "primary"
    );
    let passwords: Vec<&Value> = calls
        .iter()
        .filter(|c| c.method == Method::POST && c.path.ends_with("/secrets"))
        .map(|c| &c.body["stringData"]["password"])
        .filter(|p| p.is_string())
        .collect();
    assert_eq!(passwords.len(), 3);
    assert!(passwords.iter().all(|p| p.as_str().unwrap().len() == 32));
}

#[tokio::test]
async fn status_patch_carries_observed_generation_and_conditions() {
    let status = json!({"targetPrimary": "db-1", "postgresVersion": 17});
    let (_, calls, _) = run(cluster(valid_spec(), Some(status))).await;
    let patch = calls.iter().find(|c| c.path.ends_with("/status")).unwrap();
    let status = &patch.body["status"];
    assert_eq!(status["observedGeneration"], 3);
    assert_eq!(status["phase"], "Creating");
    let conditions = status["conditions"].as_array().unwrap();
    let find = |t: &str| conditions.iter().find(|c| c["type"] == t).unwrap();
    assert_eq!(find("Ready")["status"], "False");
    assert_eq!(find("Reconciling")["status"], "True");
    assert_eq!(find("Reconciling")["reason"], "CreatingInstances");
    assert_eq!(find("Stalled")["status"], "False");
    assert!(conditions.iter().all(|c| c["observedGeneration"] == 3));
    assert_eq!(patch.body["apiVersion"], "capstan.dev/v1alpha1");
    assert_eq!(patch.body["kind"], "PostgresCluster");
    // Optimistic: a reconcile working from a stale copy must get a conflict
    // rather than put back a targetPrimary that a failover moved.
    assert_eq!(patch.body["metadata"]["resourceVersion"], "10");
}

#[tokio::test]
async fn a_missing_provided_secret_is_stalled_and_looked_at_again() {
    // GitOps tools apply in no fixed order: the Secret may come later, and
    // creating it is no spec change.
    let spec = json!({"instances": 1, "postgres": {"version": 17}, "storage": {"size": "1Gi"},
        "tls": {"mode": "Provided", "provided": {"caSecretName": "my-ca", "serverSecretName": "my-server",
        "replicationSecretName": "my-replication", "poolerSecretName": "my-pooler"}}});
    let (result, calls, _ctx) = run(cluster(spec, None)).await;
    assert_eq!(
        result.unwrap(),
        Action::requeue(std::time::Duration::from_secs(10))
    );
    let status = &calls
        .iter()
        .find(|c| c.path.ends_with("/postgresclusters/db/status"))
        .expect("a status write")
        .body["status"];
    assert_eq!(status["phase"], "Stalled");
    let message = status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Stalled")
        .unwrap()["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(message.contains("\"my-ca\" does not exist"), "{message}");
}

#[tokio::test]
async fn an_invalid_spec_is_stalled_with_an_event_and_no_retry_storm() {
    // A managed parameter that an API server without CEL let through.
    let spec = json!({"instances": 3, "postgres": {"version": 17, "parameters": {"port": "6543"}}, "storage": {"size": "1Gi"}});
    let (result, calls, ctx) = run(cluster(spec, None)).await;
    assert_eq!(
        result.unwrap(),
        Action::await_change(),
        "only a spec change can fix it"
    );
    let lines: Vec<String> = calls.iter().map(Call::line).collect();
    let mut expected: Vec<String> = OBSERVE.iter().map(|s| s.to_string()).collect();
    expected
        .push("PATCH /apis/capstan.dev/v1alpha1/namespaces/ns/postgresclusters/db/status".into());
    expected.push("POST /apis/events.k8s.io/v1/namespaces/ns/events".into());
    assert_eq!(lines, expected, "nothing is created or deleted");
    let status = &calls[OBSERVE.len()].body["status"];
    assert_eq!(status["phase"], "Stalled");
    let stalled = status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Stalled")
        .unwrap();
    assert_eq!(stalled["status"], "True");
    assert_eq!(stalled["reason"], "InvalidSpec");
    let message = stalled["message"].as_str().unwrap();
    assert!(
        message.starts_with("spec.postgres.parameters: port is managed by Capstan"),
        "{message}"
    );
    let event = &calls[OBSERVE.len() + 1].body;
    assert_eq!(event["type"], "Warning");
    assert_eq!(event["reason"], "InvalidSpec");
    assert_eq!(event["regarding"]["name"], "db");
    assert!(
        ctx.metrics
            .encode()
            .unwrap()
            .contains("capstan_operator_reconcile_errors_total{category=\"InvalidSpec\"} 1")
    );
}

#[tokio::test]
async fn api_errors_back_off_exponentially() {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    // Every request fails like an overloaded API server.
    let server = tokio::spawn(async move {
        let mut handle = pin!(handle);
        while let Some((_, send)) = handle.next_request().await {
            send.send_response(json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "ServiceUnavailable", "code": 503, "message": "try later"}),
            ));
        }
    });
    let ctx = context(Client::new(service, "default"), None);
    let _writers = seed(&ctx, &[], &[]);
    let cluster =
        Arc::new(serde_json::from_value::<PostgresCluster>(cluster(valid_spec(), None)).unwrap());
    let mut waits = vec![];
    for _ in 0..3 {
        let err = reconcile(cluster.clone(), ctx.clone()).await.unwrap_err();
        assert!(err.to_string().contains("cannot write status"), "{err}");
        waits.push(error_policy(cluster.clone(), &err, ctx.clone()));
    }
    server.abort();
    let secs = |s: u64| Action::requeue(std::time::Duration::from_secs(s));
    assert_eq!(waits, vec![secs(2), secs(4), secs(8)]);
    assert!(
        ctx.metrics
            .encode()
            .unwrap()
            .contains("category=\"Status\"} 3")
    );
}

#[tokio::test]
async fn startup_fails_clearly_without_the_crd() {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let server = tokio::spawn(async move {
        let mut handle = pin!(handle);
        let (request, send) = handle.next_request().await.unwrap();
        assert_eq!(
            request.uri().path(),
            "/apis/capstan.dev/v1alpha1/postgresclusters"
        );
        send.send_response(not_found("postgresclusters"));
    });
    let err = capstan::operator::check_crd(&Client::new(service, "default"), None)
        .await
        .unwrap_err();
    server.await.unwrap();
    let message = err.to_string();
    assert!(
        message.contains("CRD (postgresclusters.capstan.dev) is not installed"),
        "{message}"
    );
    assert!(
        message.contains("kubectl apply --server-side -f crds/"),
        "{message}"
    );
}

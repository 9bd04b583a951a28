//! Custom resources: the real PostgresCluster CRD (schema defaults,
//! pruning, OpenAPI validation, CEL rules and transition rules, status
//! subresource, generation), and CRDs created through the API.

mod common;

use capstan::api::PostgresCluster;
use capstan_e2e_apiserver::Config;
use common::{api_error, eventually, namespace, start, start_with};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::discovery::Discovery;
use kube::{Client, CustomResourceExt};
use serde_json::{Value, json};

async fn start_capstan() -> (capstan_e2e_apiserver::ApiServer, Client) {
    let (server, client) = start_with(Config {
        crds: vec![PostgresCluster::crd()],
        ..Config::default()
    })
    .await;
    namespace(&client, "ns").await;
    (server, client)
}

fn clusters(client: &Client) -> Api<DynamicObject> {
    Api::namespaced_with(
        client.clone(),
        "ns",
        &ApiResource::erase::<PostgresCluster>(&()),
    )
}

fn cluster(name: &str, spec: Value) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "capstan.dev/v1alpha1", "kind": "PostgresCluster",
        "metadata": {"name": name}, "spec": spec
    }))
    .unwrap()
}

fn minimal() -> Value {
    json!({"postgres": {"version": 17}, "storage": {"size": "1Gi"}})
}

/// "field: message" of every cause of a 422.
fn causes(err: &kube::core::Status) -> Vec<String> {
    assert_eq!((err.code, err.reason.as_str()), (422, "Invalid"), "{err:?}");
    err.details
        .as_ref()
        .map(|d| {
            d.causes
                .iter()
                .map(|c| format!("{}: {}", c.field, c.message))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn defaults_pruning_and_status() {
    let (_server, client) = start_capstan().await;
    let api = clusters(&client);
    let mut spec = minimal();
    spec["bogus"] = json!(true);
    spec["postgres"]["alsoBogus"] = json!(1);
    let mut obj = cluster("db", spec);
    obj.data["status"] = json!({"phase": "Ready"});
    let created = api.create(&PostParams::default(), &obj).await.unwrap();
    let spec = &created.data["spec"];
    assert_eq!(spec["instances"], 1, "schema default");
    assert_eq!(spec["proxy"]["pgbouncer"]["replicas"], 2);
    assert_eq!(spec["tls"]["mode"], "Managed");
    assert!(spec.get("bogus").is_none(), "unknown fields are pruned");
    assert!(spec["postgres"].get("alsoBogus").is_none());
    assert!(
        created.data.get("status").is_none(),
        "status is not set on create"
    );
    assert_eq!(created.metadata.generation, Some(1));

    // The typed client reads it back.
    let typed: Api<PostgresCluster> = Api::namespaced(client.clone(), "ns");
    let db = typed.get("db").await.unwrap();
    assert_eq!(db.spec.instances, 1);

    // Status only through the subresource; generation only on spec changes.
    let status = api
        .patch_status(
            "db",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Creating", "observedGeneration": 1}})),
        )
        .await
        .unwrap();
    assert_eq!(status.data["status"]["phase"], "Creating");
    assert_eq!(status.metadata.generation, Some(1));
    let main = api
        .patch(
            "db",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"instances": 3}, "status": {"phase": "Ready"}})),
        )
        .await
        .unwrap();
    assert_eq!(main.data["status"]["phase"], "Creating");
    assert_eq!(main.data["spec"]["instances"], 3);
    assert_eq!(main.metadata.generation, Some(2));
    let typed_status = typed.get_status("db").await.unwrap();
    assert_eq!(typed_status.status.unwrap().observed_generation, Some(1));

    // Strategic merge patches are not supported for custom resources.
    let err = api_error(
        api.patch(
            "db",
            &PatchParams::default(),
            &Patch::Strategic(json!({"spec": {"instances": 2}})),
        )
        .await,
    );
    assert_eq!(err.code, 415);
}

#[tokio::test]
async fn openapi_validation() {
    let (_server, client) = start_capstan().await;
    let api = clusters(&client);
    let mut bad_type = minimal();
    bad_type["instances"] = json!("three");
    let err = api_error(
        api.create(&PostParams::default(), &cluster("a", bad_type))
            .await,
    );
    let found = causes(&err);
    assert!(found.iter().any(|c| c.starts_with("spec.instances: Invalid value: \"string\": spec.instances in body must be of type integer")), "{found:?}");
    assert!(
        err.message
            .starts_with("PostgresCluster.capstan.dev \"a\" is invalid: "),
        "{}",
        err.message
    );

    let err = api_error(
        api.create(
            &PostParams::default(),
            &cluster("b", json!({"storage": {"size": "1Gi"}})),
        )
        .await,
    );
    assert!(
        causes(&err).contains(&"spec.postgres: Required value".to_string()),
        "{:?}",
        causes(&err)
    );

    let mut bad_enum = minimal();
    bad_enum["tls"] = json!({"mode": "Sometimes"});
    let err = api_error(
        api.create(&PostParams::default(), &cluster("c", bad_enum))
            .await,
    );
    assert!(
        causes(&err)
            .iter()
            .any(|c| c.starts_with("spec.tls.mode: Unsupported value: \"Sometimes\"")),
        "{:?}",
        causes(&err)
    );

    let mut too_many = minimal();
    too_many["postgres"]["hba"] = json!(vec!["hostssl all all all scram-sha-256"; 65]);
    let err = api_error(
        api.create(&PostParams::default(), &cluster("d", too_many))
            .await,
    );
    assert!(
        causes(&err)
            .iter()
            .any(|c| c.starts_with("spec.postgres.hba: Too many: 65")),
        "{:?}",
        causes(&err)
    );
}

#[tokio::test]
async fn cel_rules_and_transition_rules() {
    let (_server, client) = start_capstan().await;
    let api = clusters(&client);
    let mut ten = minimal();
    ten["instances"] = json!(10);
    let err = api_error(
        api.create(&PostParams::default(), &cluster("db", ten))
            .await,
    );
    assert!(
        causes(&err).contains(
            &"spec.instances: Invalid value: \"integer\": spec.instances must be between 1 and 9"
                .to_string()
        ),
        "{:?}",
        causes(&err)
    );
    let mut managed = minimal();
    managed["postgres"]["parameters"] = json!({"port": "6000", "work_mem": "8MB"});
    let err = api_error(
        api.create(&PostParams::default(), &cluster("db", managed))
            .await,
    );
    assert!(
        causes(&err)
            .iter()
            .any(|c| c.contains("port is managed by Capstan")),
        "{:?}",
        causes(&err)
    );
    let err = api_error(
        api.create(
            &PostParams::default(),
            &cluster("x".repeat(51).as_str(), minimal()),
        )
        .await,
    );
    assert!(
        causes(&err)
            .iter()
            .any(|c| c.contains("at most 50 characters")),
        "{:?}",
        causes(&err)
    );

    let mut spec = minimal();
    spec["storage"]["size"] = json!("2Gi");
    api.create(&PostParams::default(), &cluster("db", spec))
        .await
        .unwrap();

    // Transition rules compare with the stored object.
    let shrink = Patch::Merge(json!({"spec": {"storage": {"size": "1Gi"}}}));
    let err = api_error(api.patch("db", &PatchParams::default(), &shrink).await);
    assert!(
        causes(&err)
            .iter()
            .any(|c| c.starts_with("spec.storage.size: Forbidden: size may not be decreased")),
        "{:?}",
        causes(&err)
    );
    let downgrade = Patch::Merge(json!({"spec": {"postgres": {"version": 16}}}));
    let err = api_error(api.patch("db", &PatchParams::default(), &downgrade).await);
    assert!(
        causes(&err)
            .iter()
            .any(|c| c.contains("may not be lowered")),
        "{:?}",
        causes(&err)
    );
    let immutable =
        Patch::Merge(json!({"spec": {"bootstrap": {"initdb": {"database": "orders"}}}}));
    let err = api_error(api.patch("db", &PatchParams::default(), &immutable).await);
    assert!(
        causes(&err)
            .iter()
            .any(|c| c.contains("spec.bootstrap is immutable")),
        "{:?}",
        causes(&err)
    );

    let grow =
        Patch::Merge(json!({"spec": {"storage": {"size": "3Gi"}, "postgres": {"version": 18}}}));
    let grown = api
        .patch("db", &PatchParams::default(), &grow)
        .await
        .unwrap();
    assert_eq!(grown.data["spec"]["storage"]["size"], "3Gi");

    // Server-side apply goes through the same admission.
    let apply = |size: &str| {
        json!({"apiVersion": "capstan.dev/v1alpha1", "kind": "PostgresCluster", "metadata": {"name": "db"},
               "spec": {"postgres": {"version": 18}, "storage": {"size": size}}})
    };
    let err = api_error(
        api.patch(
            "db",
            &PatchParams::apply("gitops").force(),
            &Patch::Apply(apply("1Gi")),
        )
        .await,
    );
    assert!(
        causes(&err)
            .iter()
            .any(|c| c.contains("may not be decreased")),
        "{:?}",
        causes(&err)
    );
    api.patch(
        "db",
        &PatchParams::apply("gitops").force(),
        &Patch::Apply(apply("4Gi")),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn crds_created_through_the_api_are_served() {
    let (_server, client) = start().await;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd: CustomResourceDefinition = serde_json::from_value(json!({
        "metadata": {"name": "widgets.example.com"},
        "spec": {
            "group": "example.com",
            "names": {"kind": "Widget", "plural": "widgets", "singular": "widget", "shortNames": ["wd"]},
            "scope": "Cluster",
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                    "spec": {"type": "object", "properties": {
                        "size": {"type": "integer", "default": 3, "minimum": 1},
                        "extra": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}
                    }}
                }}}
            }]
        }
    }))
    .unwrap();
    let created = crds.create(&PostParams::default(), &crd).await.unwrap();
    let conditions = created.status.unwrap().conditions.unwrap();
    assert!(
        conditions
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True")
    );

    let discovery = Discovery::new(client.clone()).run().await.unwrap();
    let (ar, caps) = discovery
        .groups()
        .flat_map(|g| g.recommended_resources())
        .find(|(ar, _)| ar.kind == "Widget")
        .expect("Widget discovered");
    assert_eq!(caps.scope, kube::discovery::Scope::Cluster);
    let widgets: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
    let w: DynamicObject =
        serde_json::from_value(json!({"apiVersion": "example.com/v1", "kind": "Widget",
        "metadata": {"name": "w1"}, "spec": {"extra": {"anything": [1, 2]}, "unknown": 1}}))
        .unwrap();
    let w = widgets.create(&PostParams::default(), &w).await.unwrap();
    assert_eq!(
        w.data["spec"],
        json!({"size": 3, "extra": {"anything": [1, 2]}})
    );
    let err = api_error(
        widgets
            .patch(
                "w1",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"size": 0}})),
            )
            .await,
    );
    assert!(
        causes(&err)
            .iter()
            .any(|c| c.contains("should be greater than or equal to 1")),
        "{:?}",
        causes(&err)
    );

    // A CRD whose rules do not compile is refused.
    let mut broken = crd.clone();
    broken.metadata.name = Some("gadgets.example.com".into());
    broken.spec.names.plural = "gadgets".into();
    broken.spec.names.kind = "Gadget".into();
    broken.spec.names.short_names = None;
    let schema = broken.spec.versions[0]
        .schema
        .as_mut()
        .unwrap()
        .open_api_v3_schema
        .as_mut()
        .unwrap();
    schema.x_kubernetes_validations = Some(vec![
        serde_json::from_value(json!({"rule": "self.spec.size >"})).unwrap(),
    ]);
    let err = api_error(crds.create(&PostParams::default(), &broken).await);
    assert_eq!(err.code, 422);

    crds.delete("widgets.example.com", &DeleteParams::default())
        .await
        .unwrap();
    eventually("widgets to stop being served", || {
        let widgets = widgets.clone();
        async move { matches!(widgets.list(&Default::default()).await, Err(kube::Error::Api(s)) if s.code == 404).then_some(()) }
    })
    .await;
}

#[tokio::test]
async fn strict_field_validation_refuses_unknown_fields() {
    let (_server, client) = start_capstan().await;
    let api = clusters(&client);
    api.create(&PostParams::default(), &cluster("db", minimal()))
        .await
        .unwrap();
    let strict = PatchParams {
        field_validation: Some(kube::api::ValidationDirective::Strict),
        ..PatchParams::default()
    };
    let typo = Patch::Merge(json!({"spec": {"instancez": 3}}));
    let err = api_error(api.patch("db", &strict, &typo).await);
    assert_eq!(err.code, 400);
    assert!(
        err.message.contains("unknown field \"spec.instancez\""),
        "{}",
        err.message
    );
    // Without strict validation the field is dropped.
    let pruned = api
        .patch("db", &PatchParams::default(), &typo)
        .await
        .unwrap();
    assert!(pruned.data["spec"].get("instancez").is_none());

    let cms: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(client.clone(), "ns");
    let cm: k8s_openapi::api::core::v1::ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "c"}})).unwrap();
    cms.create(&PostParams::default(), &cm).await.unwrap();
    cms.patch(
        "c",
        &strict,
        &Patch::Merge(json!({"metadata": {"labels": {"a": "b"}}, "data": {"k": "v"}})),
    )
    .await
    .expect("known fields pass strict validation");
    let err = api_error(
        cms.patch("c", &strict, &Patch::Merge(json!({"dta": {"k": "v"}})))
            .await,
    );
    assert!(
        err.message.contains("unknown field \"dta\""),
        "{}",
        err.message
    );
}

#[tokio::test]
async fn crds_load_from_manifest_files() {
    let dir = tempfile::tempdir().unwrap();
    for crd in capstan::api::crd::all() {
        let path = dir.path().join(capstan::api::crd::file_name(&crd));
        std::fs::write(path, capstan::api::crd::to_yaml(&crd).unwrap()).unwrap();
    }
    std::fs::write(dir.path().join("README.md"), "not a manifest").unwrap();
    let (_server, client) = start_with(Config {
        crd_paths: vec![dir.path().to_path_buf()],
        ..Config::default()
    })
    .await;
    let typed: Api<PostgresCluster> = Api::namespaced(client.clone(), "default");
    assert!(
        typed
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );

    let bad = dir.path().join("broken.yaml");
    std::fs::write(&bad, "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata: {name: x}\nspec: {}\n").unwrap();
    let err = capstan_e2e_apiserver::ApiServer::start(Config {
        crd_paths: vec![bad],
        ..Config::default()
    })
    .await
    .err()
    .expect("an invalid CRD stops the start");
    assert!(err.to_string().contains("CRD x was refused"), "{err}");
}

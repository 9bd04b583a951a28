//! Server-side apply through kube's client: create, update, removal of
//! fields a manager stopped applying, two managers, conflicts and force,
//! status apply, no-op applies.

mod common;

use common::{api_error, start};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

fn ssa(manager: &str) -> PatchParams {
    PatchParams::apply(manager)
}

#[tokio::test]
async fn apply_creates_updates_and_prunes_its_own_fields() {
    let (_server, client) = start().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let config = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "settings", "labels": {"app": "db", "tier": "storage"}},
        "data": {"a": "1", "b": "2"}
    });
    let created = cms
        .patch("settings", &ssa("capstan"), &Patch::Apply(&config))
        .await
        .unwrap();
    assert_eq!(created.data.as_ref().unwrap().len(), 2);
    let managed = created.metadata.managed_fields.as_ref().unwrap();
    assert_eq!(managed.len(), 1);
    assert_eq!(managed[0].manager.as_deref(), Some("capstan"));
    assert_eq!(managed[0].operation.as_deref(), Some("Apply"));
    let fields = &managed[0].fields_v1.as_ref().unwrap().0;
    assert_eq!(fields["f:data"]["f:a"], json!({}));
    assert_eq!(fields["f:metadata"]["f:labels"]["f:tier"], json!({}));

    // Re-applying the same configuration is a no-op.
    let again = cms
        .patch("settings", &ssa("capstan"), &Patch::Apply(&config))
        .await
        .unwrap();
    assert_eq!(
        again.metadata.resource_version,
        created.metadata.resource_version
    );

    // Someone else adds a field with a merge patch; the applier's next
    // apply leaves it alone, but drops what the applier stopped applying.
    cms.patch(
        "settings",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"manual": "x"}})),
    )
    .await
    .unwrap();
    let smaller = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "settings", "labels": {"app": "db"}},
        "data": {"a": "10"}
    });
    let updated = cms
        .patch("settings", &ssa("capstan"), &Patch::Apply(&smaller))
        .await
        .unwrap();
    let data = updated.data.unwrap();
    assert_eq!(data.get("a").map(String::as_str), Some("10"));
    assert!(
        !data.contains_key("b"),
        "b was applied before and no longer is"
    );
    assert_eq!(data.get("manual").map(String::as_str), Some("x"));
    let labels = updated.metadata.labels.unwrap();
    assert!(!labels.contains_key("tier"));
    assert_eq!(labels["app"], "db");
}

#[tokio::test]
async fn two_managers_share_and_conflict() {
    let (_server, client) = start().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let first = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "shared"}, "data": {"owned": "1", "common": "same"}});
    cms.patch("shared", &ssa("operator"), &Patch::Apply(&first))
        .await
        .unwrap();

    let second = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "shared"}, "data": {"common": "same", "mine": "2"}});
    let both = cms
        .patch("shared", &ssa("user"), &Patch::Apply(&second))
        .await
        .unwrap();
    assert_eq!(both.metadata.managed_fields.unwrap().len(), 2);

    let conflicting = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "shared"}, "data": {"owned": "changed"}});
    let err = api_error(
        cms.patch("shared", &ssa("user"), &Patch::Apply(&conflicting))
            .await,
    );
    assert_eq!((err.code, err.reason.as_str()), (409, "Conflict"));
    assert!(
        err.message.contains("conflict with \"operator\""),
        "{}",
        err.message
    );
    let causes = err.details.unwrap().causes;
    assert_eq!(causes[0].field, ".data.owned");

    // The operator stops applying `common`: the user still owns it, so it stays.
    let operator_only = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "shared"}, "data": {"owned": "1"}});
    let kept = cms
        .patch("shared", &ssa("operator"), &Patch::Apply(&operator_only))
        .await
        .unwrap();
    assert_eq!(kept.data.as_ref().unwrap()["common"], "same");

    // Forcing takes the field over; the operator's next apply without it
    // no longer removes it.
    let forced = cms
        .patch("shared", &ssa("user").force(), &Patch::Apply(&conflicting))
        .await
        .unwrap();
    assert_eq!(forced.data.as_ref().unwrap()["owned"], "changed");
    let operator_none = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "shared"}, "data": {}});
    let after = cms
        .patch("shared", &ssa("operator"), &Patch::Apply(&operator_none))
        .await
        .unwrap();
    assert_eq!(after.data.as_ref().unwrap()["owned"], "changed");

    let missing_manager = api_error(
        cms.patch("shared", &PatchParams::default(), &Patch::Apply(&first))
            .await,
    );
    assert_eq!(missing_manager.code, 422);
}

#[tokio::test]
async fn apply_merges_lists_by_key_and_keeps_server_defaults() {
    let (_server, client) = start().await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let config = |image: &str, sidecar: bool| {
        let mut containers = vec![
            json!({"name": "pgbouncer", "image": image, "env": [{"name": "A", "value": "1"}]}),
        ];
        if sidecar {
            containers.push(json!({"name": "exporter", "image": "exporter:1"}));
        }
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "db-pooler", "labels": {"app": "pooler"}},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "pooler"}},
                     "template": {"metadata": {"labels": {"app": "pooler"}}, "spec": {"containers": containers}}}
        })
    };
    let d = deployments
        .patch(
            "db-pooler",
            &ssa("capstan").force(),
            &Patch::Apply(config("pgbouncer:1", true)),
        )
        .await
        .unwrap();
    assert_eq!(d.metadata.generation, Some(1));
    let spec = d.spec.unwrap();
    assert_eq!(
        spec.revision_history_limit,
        Some(10),
        "server defaults apply"
    );
    assert_eq!(spec.template.spec.as_ref().unwrap().containers.len(), 2);
    assert_eq!(
        spec.template.spec.as_ref().unwrap().containers[0]
            .termination_message_path
            .as_deref(),
        Some("/dev/termination-log")
    );

    let d = deployments
        .patch(
            "db-pooler",
            &ssa("capstan").force(),
            &Patch::Apply(config("pgbouncer:2", false)),
        )
        .await
        .unwrap();
    assert_eq!(d.metadata.generation, Some(2));
    let pod_spec = d.spec.unwrap().template.spec.unwrap();
    assert_eq!(
        pod_spec.containers.len(),
        1,
        "the container the manager stopped applying is removed"
    );
    assert_eq!(pod_spec.containers[0].image.as_deref(), Some("pgbouncer:2"));
    assert_eq!(
        pod_spec.containers[0].termination_message_path.as_deref(),
        Some("/dev/termination-log")
    );

    // Status applies go to the status subresource with their own entry.
    let status = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "db-pooler"}, "status": {"readyReplicas": 2}});
    let d = deployments
        .patch_status("db-pooler", &ssa("capstan"), &Patch::Apply(&status))
        .await
        .unwrap();
    assert_eq!(d.status.unwrap().ready_replicas, Some(2));
    let entries = d.metadata.managed_fields.unwrap();
    assert!(
        entries
            .iter()
            .any(|e| e.subresource.as_deref() == Some("status"))
    );
    assert_eq!(d.metadata.generation, Some(2));

    // Services keep their allocated ClusterIP across applies.
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "db-rw"},
        "spec": {"selector": {"role": "primary"}, "ports": [{"name": "pg", "port": 5432}]}});
    let first = services
        .patch("db-rw", &ssa("capstan"), &Patch::Apply(&svc))
        .await
        .unwrap();
    let ip = first.spec.unwrap().cluster_ip;
    let second = services
        .patch("db-rw", &ssa("capstan"), &Patch::Apply(&svc))
        .await
        .unwrap();
    assert_eq!(second.spec.unwrap().cluster_ip, ip);
    assert_eq!(
        second.metadata.resource_version,
        first.metadata.resource_version
    );
}

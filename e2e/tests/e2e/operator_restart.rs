//! Scenario 2: the operator is killed while it is creating a cluster and
//! started again; the cluster still converges and serves writes.

use std::time::Duration;

use capstan::api::PostgresCluster;
use capstan_e2e::E2eError;
use capstan_e2e::cluster::{self, example};
use capstan_e2e::harness::{ensure_namespace, wait_for};
use capstan_e2e::sql::{self, Login};
use capstan_e2e::target::{Target, fail};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;

async fn scenario(target: &mut Target, ns: &str) -> Result<(), E2eError> {
    let client = target.client();
    ensure_namespace(&client, ns).await?;
    let mut cluster: PostgresCluster = cluster::load_example(&example("ha-cluster.yaml"), ns)?;
    // Volumes go with the cluster here, so cleanup is one delete.
    cluster.spec.storage.retention.when_deleted = capstan::api::RetentionRule::Delete;
    let name = cluster.metadata.name.clone().unwrap_or_default();
    cluster::apply(&client, &cluster).await?;

    // Kill it as soon as the primary pod exists: mid-creation.
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let primary = format!("{name}-1");
    wait_for(
        "the primary pod to be created",
        Duration::from_secs(60),
        Duration::from_millis(100),
        || async { pods.get_opt(&primary).await.ok().flatten() },
    )
    .await?;
    target.kill_operator().await?;
    eprintln!("operator killed with the primary pod created and no replica yet");
    // Nothing moves while it is down: no replica appears.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let replica = pods
        .get_opt(&format!("{name}-2"))
        .await
        .map_err(|e| E2eError::Kube("get replica".into(), e))?;
    assert!(
        replica.is_none() || target.harness().is_none(),
        "no operator, no new replica"
    );
    target.start_operator().await?;

    let ready = cluster::wait_ready(&client, ns, &name, Duration::from_secs(240)).await?;
    assert_eq!(ready.status.as_ref().map(|s| s.ready_instances), Some(3));

    let ca = cluster::secret_value(&client, ns, &format!("{name}-ca"), "ca.crt").await?;
    let user = cluster::secret_value(&client, ns, &format!("{name}-app"), "username").await?;
    let password = cluster::secret_value(&client, ns, &format!("{name}-app"), "password").await?;
    let dbname = cluster::secret_value(&client, ns, &format!("{name}-app"), "dbname").await?;
    let host = format!("{name}-pooler.{ns}.svc");
    let addr = target
        .service_addr(ns, &format!("{name}-pooler"), 5432)
        .await?;
    let conn = sql::connect(&Login {
        host: &host,
        addr,
        dbname: &dbname,
        user: &user,
        password: &password,
        ca_pem: &ca,
    })
    .await?;
    conn.batch_execute("CREATE TABLE after_restart (x int); INSERT INTO after_restart VALUES (1);")
        .await
        .map_err(|e| E2eError::Sql(e.to_string()))?;

    cluster::delete(&client, ns, &name).await?;
    wait_for(
        "cluster objects gone",
        Duration::from_secs(120),
        Duration::from_millis(500),
        || async {
            let children = cluster::children(&client, ns, &name).await.ok()?;
            let volumes = cluster::volumes(&client, ns, &name).await.ok()?;
            (children.is_empty() && volumes.is_empty()).then_some(())
        },
    )
    .await?;
    Ok(())
}

#[test]
fn cluster_converges_after_the_operator_is_killed_mid_creation() {
    capstan_e2e::scenario(|| async {
        let mut target = Target::from_env().await.expect("e2e target");
        let ns = format!("e2e-restart-{}", std::process::id());
        if let Err(e) = scenario(&mut target, &ns).await {
            fail(&target, &ns, e).await;
        }
    });
}

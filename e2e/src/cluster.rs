//! Scenario steps on a `PostgresCluster`, through the Kubernetes API only.

use std::path::Path;
use std::time::Duration;

use capstan::api::PostgresCluster;
use capstan::resources::labels;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{
    ConfigMap, PersistentVolumeClaim, Pod, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, Client, Resource};

use crate::E2eError;
use crate::harness::wait_for;

/// Field manager the scenarios apply with (a user's, not the operator's).
pub const FIELD_MANAGER: &str = "capstan-e2e";

/// The `PostgresCluster` in an example file, moved to `namespace`.
pub fn load_example(path: &Path, namespace: &str) -> Result<PostgresCluster, E2eError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| E2eError::Setup(format!("{}: {e}", path.display())))?;
    let mut cluster: PostgresCluster = serde_saphyr::from_str(&text)
        .map_err(|e| E2eError::Setup(format!("{}: {e}", path.display())))?;
    cluster.metadata.namespace = Some(namespace.to_string());
    Ok(cluster)
}

pub fn example(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("examples")
        .join(name)
}

pub async fn apply(client: &Client, cluster: &PostgresCluster) -> Result<(), E2eError> {
    let ns = cluster.metadata.namespace.clone().unwrap_or_default();
    let name = cluster.metadata.name.clone().unwrap_or_default();
    let api: Api<PostgresCluster> = Api::namespaced(client.clone(), &ns);
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER),
        &Patch::Apply(cluster),
    )
    .await
    .map_err(|e| E2eError::Kube(format!("apply PostgresCluster {ns}/{name}"), e))?;
    Ok(())
}

/// A JSON merge patch of a cluster's spec, as a user's `kubectl patch`.
pub async fn merge_patch(
    client: &Client,
    ns: &str,
    name: &str,
    patch: &serde_json::Value,
) -> Result<(), E2eError> {
    let api: Api<PostgresCluster> = Api::namespaced(client.clone(), ns);
    api.patch(
        name,
        &PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..PatchParams::default()
        },
        &Patch::Merge(patch),
    )
    .await
    .map_err(|e| E2eError::Kube(format!("patch {ns}/{name}"), e))?;
    Ok(())
}

pub async fn get(client: &Client, ns: &str, name: &str) -> Result<PostgresCluster, E2eError> {
    Api::<PostgresCluster>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .map_err(|e| E2eError::Kube(format!("get PostgresCluster {ns}/{name}"), e))
}

pub fn condition(cluster: &PostgresCluster, type_: &str) -> Option<String> {
    cluster
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.status.clone())
}

/// Waits until the cluster reports `Ready=True` for its current generation.
pub async fn wait_ready(
    client: &Client,
    ns: &str,
    name: &str,
    timeout: Duration,
) -> Result<PostgresCluster, E2eError> {
    wait_for(
        &format!("PostgresCluster {ns}/{name} Ready"),
        timeout,
        Duration::from_millis(500),
        || async {
            let c = get(client, ns, name).await.ok()?;
            let current = c.status.as_ref()?.observed_generation == c.metadata.generation;
            (current && condition(&c, "Ready").as_deref() == Some("True")).then_some(c)
        },
    )
    .await
}

pub async fn secret_value(
    client: &Client,
    ns: &str,
    secret: &str,
    key: &str,
) -> Result<String, E2eError> {
    let s = Api::<Secret>::namespaced(client.clone(), ns)
        .get(secret)
        .await
        .map_err(|e| E2eError::Kube(format!("get Secret {ns}/{secret}"), e))?;
    let bytes = s
        .data
        .and_then(|d| d.get(key).cloned())
        .ok_or_else(|| E2eError::Check(format!("Secret {secret} has no key {key}")))?;
    String::from_utf8(bytes.0)
        .map_err(|_| E2eError::Check(format!("Secret {secret}/{key} is not text")))
}

pub async fn delete(client: &Client, ns: &str, name: &str) -> Result<(), E2eError> {
    match Api::<PostgresCluster>::namespaced(client.clone(), ns)
        .delete(name, &DeleteParams::background())
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(E2eError::Kube(
            format!("delete PostgresCluster {ns}/{name}"),
            e,
        )),
    }
}

async fn names<K>(client: &Client, ns: &str, selector: &str) -> Result<Vec<String>, E2eError>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let list = Api::<K>::namespaced(client.clone(), ns)
        .list_metadata(&ListParams::default().labels(selector))
        .await
        .map_err(|e| E2eError::Kube(format!("list {}", K::kind(&())), e))?;
    Ok(list
        .items
        .into_iter()
        .map(|o| format!("{}/{}", K::kind(&()), o.metadata.name.unwrap_or_default()))
        .collect())
}

/// Every object labelled as a child of `cluster`, except volumes.
pub async fn children(client: &Client, ns: &str, cluster: &str) -> Result<Vec<String>, E2eError> {
    let sel = format!("{}={cluster}", labels::CLUSTER);
    let mut all = names::<Pod>(client, ns, &sel).await?;
    all.extend(names::<Service>(client, ns, &sel).await?);
    all.extend(names::<Deployment>(client, ns, &sel).await?);
    all.extend(names::<ConfigMap>(client, ns, &sel).await?);
    all.extend(names::<Secret>(client, ns, &sel).await?);
    all.extend(names::<ServiceAccount>(client, ns, &sel).await?);
    all.extend(names::<Role>(client, ns, &sel).await?);
    all.extend(names::<RoleBinding>(client, ns, &sel).await?);
    all.extend(names::<PodDisruptionBudget>(client, ns, &sel).await?);
    Ok(all)
}

pub async fn volumes(client: &Client, ns: &str, cluster: &str) -> Result<Vec<String>, E2eError> {
    names::<PersistentVolumeClaim>(client, ns, &format!("{}={cluster}", labels::CLUSTER)).await
}

pub async fn delete_volumes(client: &Client, ns: &str, cluster: &str) -> Result<(), E2eError> {
    Api::<PersistentVolumeClaim>::namespaced(client.clone(), ns)
        .delete_collection(
            &DeleteParams::default(),
            &ListParams::default().labels(&format!("{}={cluster}", labels::CLUSTER)),
        )
        .await
        .map_err(|e| E2eError::Kube("delete volumes".into(), e))?;
    Ok(())
}

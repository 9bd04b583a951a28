//! The repository host of a cluster with volume repositories: Deployment
//! and Service `<name>-repo-host`, and one PVC `<name>-<repoN>` per volume
//! repository. The pod runs `capstan repo-host` (pgBackRest's TLS server)
//! in the cluster's PostgreSQL image, which carries pgBackRest; instances
//! reach it through the Service with the cluster's pgBackRest certificate.

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, PersistentVolumeClaim, PersistentVolumeClaimVolumeSource, PodSpec,
    PodTemplateSpec, Probe, Service, ServicePort, ServiceSpec, TCPSocketAction, Volume,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::backup::{repo_host_path, volume_repositories};
use super::instance::{
    agent_env, backrest_tls_volume, claim, copy_binary_container, empty_dir, mount,
    postgres_pod_security, restricted_security_context,
};
use super::labels;
use super::model::Model;
use super::names;
use crate::api::backup::volume_repository_claim;
use crate::contract::layout;

/// The PVCs of the volume repositories. Kept when the cluster is deleted
/// if its storage says so, like the instances' volumes.
pub fn pvcs(model: &Model) -> Vec<PersistentVolumeClaim> {
    volume_repositories(model)
        .into_iter()
        .map(|(repo, volume)| {
            let mut labels = labels::common(&model.name, labels::COMPONENT_REPOSITORY);
            labels.insert("capstan.dev/repository".into(), repo.name.clone());
            claim(
                model,
                volume_repository_claim(&model.name, &repo.name),
                labels,
                &volume.size,
                volume.storage_class_name.clone(),
            )
        })
        .collect()
}

/// `<name>-repo-host`: one pod (Recreate: the volumes are ReadWriteOnce).
pub fn deployment(model: &Model) -> Deployment {
    let cluster = &model.name;
    let selector = labels::repo_host_selector(cluster);
    let mut pod_labels = labels::common(cluster, labels::COMPONENT_REPOSITORY);
    pod_labels.extend(selector.clone());
    let repositories = volume_repositories(model);
    let mut mounts = vec![
        mount("bin", layout::BIN_DIR, true),
        mount("run", layout::REPO_HOST_RUN_DIR, false),
        mount("tmp", layout::TMP_DIR, false),
        mount("backrest-tls", layout::BACKREST_TLS_DIR, true),
    ];
    let mut volumes = vec![
        empty_dir("bin", false),
        empty_dir("run", false),
        empty_dir("tmp", false),
        backrest_tls_volume(model),
    ];
    for (repo, _) in &repositories {
        let name = format!("repository-{}", repo.name);
        mounts.push(mount(&name, &repo_host_path(&repo.name), false));
        volumes.push(Volume {
            name,
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: volume_repository_claim(cluster, &repo.name),
                read_only: None,
            }),
            ..Volume::default()
        });
    }
    let tcp = |period: i32, failures: i32| Probe {
        tcp_socket: Some(TCPSocketAction {
            port: IntOrString::Int(i32::from(layout::BACKREST_TLS_PORT)),
            host: None,
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        ..Probe::default()
    };
    let container = Container {
        name: "pgbackrest".into(),
        image: Some(model.images.postgres.clone()),
        command: Some(vec![layout::BINARY.into(), "repo-host".into()]),
        env: Some(agent_env(cluster, layout::POOLER_SHUTDOWN_SECONDS)),
        ports: Some(vec![ContainerPort {
            name: Some("pgbackrest".into()),
            container_port: i32::from(layout::BACKREST_TLS_PORT),
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        }]),
        readiness_probe: Some(tcp(2, 3)),
        liveness_probe: Some(tcp(10, 6)),
        security_context: Some(restricted_security_context()),
        volume_mounts: Some(mounts),
        ..Container::default()
    };
    let spec = PodSpec {
        // The repository host never talks to the Kubernetes API.
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        termination_grace_period_seconds: Some(layout::POOLER_GRACE_SECONDS),
        security_context: Some(postgres_pod_security()),
        init_containers: Some(vec![copy_binary_container(&model.images.operator)]),
        containers: vec![container],
        volumes: Some(volumes),
        tolerations: (!model.spec.tolerations.is_empty()).then(|| model.spec.tolerations.clone()),
        node_selector: (!model.spec.node_selector.is_empty())
            .then(|| model.spec.node_selector.clone()),
        ..PodSpec::default()
    };
    Deployment {
        metadata: model.child_meta(
            names::repo_host(cluster),
            labels::common(cluster, labels::COMPONENT_REPOSITORY),
        ),
        spec: Some(DeploymentSpec {
            replicas: Some(1),
            selector: LabelSelector {
                match_labels: Some(selector),
                match_expressions: None,
            },
            // Never two pods on one ReadWriteOnce volume.
            strategy: Some(DeploymentStrategy {
                type_: Some("Recreate".into()),
                rolling_update: None,
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    ..ObjectMeta::default()
                }),
                spec: Some(spec),
            },
            ..DeploymentSpec::default()
        }),
        status: None,
    }
}

/// `<name>-repo-host`: the name the instances' pgBackRest connects to and
/// the certificate covers.
pub fn service(model: &Model) -> Service {
    let cluster = &model.name;
    let port = i32::from(layout::BACKREST_TLS_PORT);
    Service {
        metadata: model.child_meta(
            names::repo_host(cluster),
            labels::common(cluster, labels::COMPONENT_REPOSITORY),
        ),
        spec: Some(ServiceSpec {
            selector: Some(labels::repo_host_selector(cluster)),
            ports: Some(vec![ServicePort {
                name: Some("pgbackrest".into()),
                port,
                target_port: Some(IntOrString::Int(port)),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::model::fixtures::model;

    fn with_volume() -> Model {
        let mut m = model();
        m.spec.backup = Some(
            serde_json::from_value(serde_json::json!({
                "repositories": [{"name": "repo1", "volume": {"size": "20Gi", "storageClassName": "fast"}}]
            }))
            .unwrap(),
        );
        m
    }

    #[test]
    fn each_volume_repository_is_a_claim_mounted_where_the_instances_look() {
        let m = with_volume();
        let claims = pvcs(&m);
        assert_eq!(claims.len(), 1);
        assert_eq!(claims[0].metadata.name.as_deref(), Some("db-repo1"));
        let spec = claims[0].spec.as_ref().unwrap();
        assert_eq!(spec.storage_class_name.as_deref(), Some("fast"));
        assert_eq!(
            spec.access_modes.as_deref(),
            Some(&["ReadWriteOnce".to_string()][..])
        );

        let d = deployment(&m);
        let spec = d.spec.unwrap();
        assert_eq!(spec.replicas, Some(1));
        assert_eq!(spec.strategy.unwrap().type_.as_deref(), Some("Recreate"));
        let pod = spec.template.spec.unwrap();
        let c = &pod.containers[0];
        assert_eq!(c.command.as_ref().unwrap()[1], "repo-host");
        let mounted: Vec<_> = c.volume_mounts.iter().flatten().collect();
        let repo = mounted
            .iter()
            .find(|m| m.name == "repository-repo1")
            .unwrap();
        // The instances' settings name this path (`repoN-path`).
        let settings = crate::resources::backup::settings(&m).unwrap();
        assert_eq!(repo.mount_path, settings.repositories[0].path);
        let volumes: Vec<_> = pod.volumes.unwrap().into_iter().map(|v| v.name).collect();
        for m in mounted {
            assert!(volumes.contains(&m.name), "{}", m.name);
        }
    }

    #[test]
    fn the_service_selects_only_the_repository_host() {
        let m = with_volume();
        let s = service(&m);
        let selector = s.spec.unwrap().selector.unwrap();
        let pod_labels = deployment(&m)
            .spec
            .unwrap()
            .template
            .metadata
            .unwrap()
            .labels
            .unwrap();
        assert!(selector.iter().all(|(k, v)| pod_labels.get(k) == Some(v)));
        assert_ne!(
            selector.get(labels::COMPONENT),
            Some(&labels::COMPONENT_DATABASE.to_string())
        );
    }

    #[test]
    fn no_volume_repository_no_host() {
        assert!(pvcs(&model()).is_empty());
    }
}

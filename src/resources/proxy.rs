//! The proxy tier: Deployment `<name>-pooler` running PgBouncer under the
//! `capstan pooler` supervisor.

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, PodSecurityContext, PodSpec, PodTemplateSpec, Probe, SeccompProfile,
    TCPSocketAction,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::instance::{
    agent_env, agent_probe, config_volume, copy_binary_container, empty_dir, mount,
    restricted_security_context, secret_path, secret_volume, spread_across_nodes, tls_path,
};
use super::labels;
use super::model::Model;
use super::names;
use super::secrets::{tls_sources, tls_volume};
use crate::contract::layout::{self, files, mounts};

pub fn deployment(model: &Model) -> Deployment {
    let cluster = &model.name;
    let pgb = &model.spec.proxy.pgbouncer;
    let mut pod_labels = labels::common(cluster, labels::COMPONENT_POOLER);
    pod_labels.extend(labels::pooler_selector(cluster));
    let tls = tls_sources(model);
    let agent_tls = names::agent_tls_secret(cluster);
    let container = Container {
        name: "pgbouncer".into(),
        image: Some(model.images.pgbouncer.clone()),
        command: Some(vec![layout::BINARY.into(), "pooler".into()]),
        env: Some(agent_env(cluster, layout::POOLER_SHUTDOWN_SECONDS)),
        ports: Some(vec![
            ContainerPort {
                name: Some("pgbouncer".into()),
                container_port: i32::from(layout::POOLER_PORT),
                protocol: Some("TCP".into()),
                ..ContainerPort::default()
            },
            ContainerPort {
                name: Some("agent".into()),
                container_port: i32::from(layout::AGENT_PORT),
                protocol: Some("TCP".into()),
                ..ContainerPort::default()
            },
        ]),
        readiness_probe: Some(agent_probe("/readyz", 2, 3)),
        // The supervisor restarts a crashed PgBouncer itself; liveness only
        // catches a wedged supervisor.
        liveness_probe: Some(Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::Int(i32::from(layout::AGENT_PORT)),
                host: None,
            }),
            period_seconds: Some(10),
            failure_threshold: Some(6),
            ..Probe::default()
        }),
        resources: pgb.resources.clone(),
        security_context: Some(restricted_security_context()),
        volume_mounts: Some(vec![
            mount("bin", layout::BIN_DIR, false),
            mount("run", layout::POOLER_RUN_DIR, false),
            mount("tmp", layout::TMP_DIR, false),
            mount("config", layout::CONFIG_DIR, true),
            mount("pooler-auth", &secret_path(mounts::POOLER), true),
            mount("pooler-tls", &tls_path(mounts::POOLER_TLS), true),
            mount("agent-tls", &tls_path(mounts::AGENT_TLS), true),
        ]),
        ..Container::default()
    };
    let spec = PodSpec {
        service_account_name: Some(names::pooler_service_account(cluster)),
        // The pooler never talks to the Kubernetes API.
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        termination_grace_period_seconds: Some(layout::POOLER_GRACE_SECONDS),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(layout::POOLER_UID),
            run_as_group: Some(layout::POOLER_UID),
            fs_group: Some(layout::POOLER_UID),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                localhost_profile: None,
            }),
            ..PodSecurityContext::default()
        }),
        // The image the Deployment has: a new one would roll the poolers
        // (and drop their clients) while their agents take it in place.
        init_containers: Some(vec![copy_binary_container(&model.images.pooler_agent)]),
        containers: vec![container],
        volumes: Some(vec![
            empty_dir("bin", false),
            empty_dir("run", false),
            empty_dir("tmp", false),
            config_volume(model, files::POOLER_SETTINGS),
            secret_volume("pooler-auth", &names::pooler_secret(cluster)),
            tls_volume("pooler-tls", &tls.pooler, tls.ca_for(&tls.pooler)),
            tls_volume("agent-tls", &agent_tls, &agent_tls),
        ]),
        affinity: Some(spread_across_nodes(labels::pooler_selector(cluster))),
        tolerations: (!model.spec.tolerations.is_empty()).then(|| model.spec.tolerations.clone()),
        node_selector: (!model.spec.node_selector.is_empty())
            .then(|| model.spec.node_selector.clone()),
        ..PodSpec::default()
    };
    Deployment {
        metadata: model.child_meta(
            names::pooler(cluster),
            labels::common(cluster, labels::COMPONENT_POOLER),
        ),
        spec: Some(DeploymentSpec {
            replicas: Some(pgb.replicas),
            selector: LabelSelector {
                match_labels: Some(labels::pooler_selector(cluster)),
                match_expressions: None,
            },
            // Never take capacity away during a rollout: a new pooler pod
            // must be ready before an old one stops.
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::Int(1)),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::model::fixtures::model;

    #[test]
    fn deployment_runs_the_supervisor_with_the_spec_replicas() {
        let mut m = model();
        m.spec.proxy.pgbouncer.replicas = 3;
        let d = deployment(&m);
        let spec = d.spec.unwrap();
        assert_eq!(spec.replicas, Some(3));
        let selector = spec.selector.match_labels.unwrap();
        let template_labels = spec.template.metadata.unwrap().labels.unwrap();
        assert!(
            selector
                .iter()
                .all(|(k, v)| template_labels.get(k) == Some(v)),
            "selector must match the template"
        );
        let pod = spec.template.spec.unwrap();
        assert_eq!(pod.containers[0].command.as_ref().unwrap()[1], "pooler");
        assert_eq!(pod.automount_service_account_token, Some(false));
        let volumes: Vec<_> = pod.volumes.unwrap().into_iter().map(|v| v.name).collect();
        for m in pod.containers[0].volume_mounts.as_ref().unwrap() {
            assert!(volumes.contains(&m.name), "{}", m.name);
        }
    }
}

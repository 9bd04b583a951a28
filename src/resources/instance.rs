//! The Pod and PersistentVolumeClaims of one PostgreSQL instance.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource,
    EnvVar, EnvVarSource, HTTPGetAction, KeyToPath, ObjectFieldSelector, PersistentVolumeClaim,
    PersistentVolumeClaimSpec, PersistentVolumeClaimVolumeSource, Pod, PodAffinityTerm,
    PodAntiAffinity, PodSecurityContext, PodSpec, Probe, SeccompProfile, SecretVolumeSource,
    SecurityContext, Volume, VolumeMount, VolumeResourceRequirements, WeightedPodAffinityTerm,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use sha2::{Digest, Sha256};

use super::labels;
use super::model::Model;
use super::names;
use crate::api::{RetentionRule, StorageSpec};
use crate::contract::layout::{self, env, files, mounts};

/// Annotation with a hash of the pod spec Capstan built; a different hash
/// means the pod must be re-created to pick up a change.
pub const SPEC_HASH_ANNOTATION: &str = "capstan.dev/spec-hash";

/// The PVCs of an instance: data, and WAL when configured.
pub fn pvcs(model: &Model, instance: &str) -> Vec<PersistentVolumeClaim> {
    let mut out = vec![pvc(
        model,
        instance,
        names::data_pvc(instance),
        &model.spec.storage,
        "data",
    )];
    if let Some(wal) = &model.spec.wal_storage {
        out.push(pvc(model, instance, names::wal_pvc(instance), wal, "wal"));
    }
    out
}

fn pvc(
    model: &Model,
    instance: &str,
    name: String,
    storage: &StorageSpec,
    volume: &str,
) -> PersistentVolumeClaim {
    let mut labels = labels::instance(&model.name, instance);
    labels.insert("capstan.dev/volume".into(), volume.into());
    claim(
        model,
        name,
        labels,
        &storage.size,
        storage.storage_class_name.clone(),
    )
}

/// A ReadWriteOnce claim of the cluster. Without an owner reference the
/// garbage collector leaves the volume when the cluster is deleted: that
/// is what `storage.retention.whenDeleted: Retain` means.
pub fn claim(
    model: &Model,
    name: String,
    labels: BTreeMap<String, String>,
    size: &Quantity,
    class: Option<String>,
) -> PersistentVolumeClaim {
    let mut meta = model.child_meta(name, labels);
    if model.spec.storage.retention.when_deleted == RetentionRule::Retain {
        meta.owner_references = None;
    }
    PersistentVolumeClaim {
        metadata: meta,
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: class,
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([("storage".to_string(), size.clone())])),
                limits: None,
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        status: None,
    }
}

/// The Pod of instance `instance`, labelled with `role`.
pub fn pod(model: &Model, instance: &str, role: &str) -> Pod {
    let spec = pod_spec(model, instance);
    let hash = spec_hash(&spec);
    let mut labels = labels::instance(&model.name, instance);
    labels.insert(labels::ROLE.into(), role.into());
    let mut meta = model.child_meta(instance.to_string(), labels);
    meta.annotations = Some(BTreeMap::from([(SPEC_HASH_ANNOTATION.to_string(), hash)]));
    Pod {
        metadata: meta,
        spec: Some(spec),
        status: None,
    }
}

/// Hash of everything in a pod spec that needs a re-created pod to change.
/// The image the agent binary comes from is not part of it: a running
/// agent takes a new binary in place (`POST /binary`), so upgrading Capstan
/// re-creates no database pod.
pub fn spec_hash(spec: &PodSpec) -> String {
    let mut spec = spec.clone();
    for init in spec.init_containers.iter_mut().flatten() {
        if init.name == BINARY_CONTAINER {
            init.image = None;
        }
    }
    let json = serde_json::to_vec(&spec).unwrap_or_default();
    let digest = Sha256::digest(&json);
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

fn pod_spec(model: &Model, instance: &str) -> PodSpec {
    let spec = &model.spec;
    PodSpec {
        service_account_name: Some(names::instance_service_account(&model.name)),
        // The instance manager reads its cluster's status (who is primary).
        automount_service_account_token: Some(true),
        enable_service_links: Some(false),
        hostname: Some(instance.to_string()),
        termination_grace_period_seconds: Some(layout::INSTANCE_GRACE_SECONDS),
        security_context: Some(postgres_pod_security()),
        init_containers: Some(vec![copy_binary_container(&model.images.operator)]),
        containers: vec![postgres_container(model, instance)],
        volumes: Some(volumes(model, instance)),
        affinity: Some(
            spec.affinity
                .clone()
                .unwrap_or_else(|| spread_across_nodes(labels::instances_selector(&model.name))),
        ),
        tolerations: (!spec.tolerations.is_empty()).then(|| spec.tolerations.clone()),
        topology_spread_constraints: (!spec.topology_spread_constraints.is_empty())
            .then(|| spec.topology_spread_constraints.clone()),
        node_selector: (!spec.node_selector.is_empty()).then(|| spec.node_selector.clone()),
        ..PodSpec::default()
    }
}

/// Without user affinity, prefer one pod of `selector` per node: losing a
/// node then costs one instance (or pooler), not the cluster.
pub fn spread_across_nodes(selector: BTreeMap<String, String>) -> Affinity {
    Affinity {
        pod_anti_affinity: Some(PodAntiAffinity {
            preferred_during_scheduling_ignored_during_execution: Some(vec![
                WeightedPodAffinityTerm {
                    weight: 100,
                    pod_affinity_term: PodAffinityTerm {
                        label_selector: Some(LabelSelector {
                            match_labels: Some(selector),
                            match_expressions: None,
                        }),
                        topology_key: "kubernetes.io/hostname".into(),
                        ..PodAffinityTerm::default()
                    },
                },
            ]),
            required_during_scheduling_ignored_during_execution: None,
        }),
        ..Affinity::default()
    }
}

/// Hardened container security context shared by every Capstan container.
pub fn restricted_security_context() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        privileged: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            add: None,
        }),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            localhost_profile: None,
        }),
        ..SecurityContext::default()
    }
}

/// Name of the init container that copies the agent binary.
pub const BINARY_CONTAINER: &str = "capstan-bin";

/// Init container copying the `capstan` binary into the shared emptyDir
/// (writable: the agent replaces it when Capstan is upgraded).
pub fn copy_binary_container(operator_image: &str) -> Container {
    Container {
        name: BINARY_CONTAINER.into(),
        image: Some(operator_image.to_string()),
        command: Some(vec![
            layout::IMAGE_BINARY.into(),
            "copy-binary".into(),
            layout::BINARY.into(),
        ]),
        volume_mounts: Some(vec![mount("bin", layout::BIN_DIR, false)]),
        security_context: Some(restricted_security_context()),
        ..Container::default()
    }
}

/// The postgres user, owning its volumes (instances, the repository host).
pub fn postgres_pod_security() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(layout::POSTGRES_UID),
        run_as_group: Some(layout::POSTGRES_UID),
        fs_group: Some(layout::POSTGRES_UID),
        fs_group_change_policy: Some("OnRootMismatch".into()),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            localhost_profile: None,
        }),
        ..PodSecurityContext::default()
    }
}

/// Downward-API and fixed environment common to the agents.
pub fn agent_env(cluster: &str, shutdown_seconds: i64) -> Vec<EnvVar> {
    let field = |name: &str, path: &str| EnvVar {
        name: name.to_string(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.to_string(),
                api_version: None,
            }),
            ..EnvVarSource::default()
        }),
        value: None,
    };
    let value = |name: &str, value: String| EnvVar {
        name: name.to_string(),
        value: Some(value),
        value_from: None,
    };
    vec![
        field(env::POD_NAME, "metadata.name"),
        field(env::POD_NAMESPACE, "metadata.namespace"),
        field(env::POD_IP, "status.podIP"),
        value(env::CLUSTER_NAME, cluster.to_string()),
        value(env::SHUTDOWN_SECONDS, shutdown_seconds.to_string()),
        value(env::LOG_FORMAT, "json".into()),
    ]
}

/// HTTPS GET probe on the agent API.
pub fn agent_probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_string()),
            port: IntOrString::Int(i32::from(layout::AGENT_PORT)),
            scheme: Some("HTTPS".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(3),
        failure_threshold: Some(failures),
        ..Probe::default()
    }
}

fn postgres_container(model: &Model, instance: &str) -> Container {
    let mut mounts = vec![
        mount("data", layout::DATA_MOUNT, false),
        mount("bin", layout::BIN_DIR, false),
        mount("run", layout::RUN_DIR, false),
        mount("tmp", layout::TMP_DIR, false),
        mount("shm", "/dev/shm", false),
        mount("config", layout::CONFIG_DIR, true),
        mount("superuser", &secret_path(mounts::SUPERUSER), true),
        mount("app", &secret_path(mounts::APP), true),
        mount("pooler-auth", &secret_path(mounts::POOLER), true),
        mount("server-tls", &tls_path(mounts::SERVER_TLS), true),
        mount("replication-tls", &tls_path(mounts::REPLICATION_TLS), true),
        mount("agent-tls", &tls_path(mounts::AGENT_TLS), true),
    ];
    if model.spec.wal_storage.is_some() {
        mounts.push(mount("wal", layout::WAL_MOUNT, false));
    }
    let standby_backups = super::backup::standby_backups(model);
    if super::backup::backrest_tls(model) {
        mounts.push(mount("backrest-tls", &tls_path(mounts::BACKREST_TLS), true));
    }
    mounts.extend(super::backup::volumes(model).into_iter().map(|(_, m)| m));
    mounts.extend(super::restore::volumes(model).into_iter().map(|(_, m)| m));
    mounts.extend(super::restore::claim(model, instance).map(|(_, m)| m));
    let environment = agent_env(&model.name, layout::INSTANCE_SHUTDOWN_SECONDS);
    let mut ports = vec![
        port("postgresql", layout::POSTGRES_PORT),
        port("agent", layout::AGENT_PORT),
    ];
    if standby_backups {
        ports.push(port("pgbackrest", layout::BACKREST_TLS_PORT));
    }
    Container {
        name: "postgres".into(),
        image: Some(model.images.postgres.clone()),
        command: Some(vec![layout::BINARY.into(), "instance".into()]),
        env: Some(environment),
        ports: Some(ports),
        // Cloning or restoring a large database can take a long time; the
        // startup probe allows up to an hour before liveness takes over.
        startup_probe: Some(agent_probe("/healthz", 10, 360)),
        liveness_probe: Some(agent_probe("/healthz", 10, 6)),
        readiness_probe: Some(agent_probe("/readyz", 2, 3)),
        resources: model.spec.resources.clone(),
        security_context: Some(restricted_security_context()),
        volume_mounts: Some(mounts),
        ..Container::default()
    }
}

fn port(name: &str, number: u16) -> ContainerPort {
    ContainerPort {
        name: Some(name.into()),
        container_port: i32::from(number),
        protocol: Some("TCP".into()),
        ..ContainerPort::default()
    }
}

pub fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: read_only.then_some(true),
        ..VolumeMount::default()
    }
}

pub fn secret_path(sub: &str) -> String {
    format!("{}/{sub}", layout::SECRETS_DIR)
}

pub fn tls_path(sub: &str) -> String {
    format!("{}/{sub}", layout::TLS_DIR)
}

pub fn empty_dir(name: &str, memory: bool) -> Volume {
    Volume {
        name: name.into(),
        empty_dir: Some(EmptyDirVolumeSource {
            medium: memory.then(|| "Memory".to_string()),
            size_limit: None,
        }),
        ..Volume::default()
    }
}

/// Secret volume, readable only by the pod's user (keys must be 0600 for
/// PostgreSQL and PgBouncer to accept them).
pub fn secret_volume(name: &str, secret: &str) -> Volume {
    Volume {
        name: name.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.into()),
            default_mode: Some(0o600),
            optional: Some(false),
            items: None,
        }),
        ..Volume::default()
    }
}

pub fn config_volume(model: &Model, key: &str) -> Volume {
    Volume {
        name: "config".into(),
        config_map: Some(ConfigMapVolumeSource {
            name: names::config_map(&model.name),
            items: Some(vec![KeyToPath {
                key: key.into(),
                path: key.into(),
                mode: None,
            }]),
            default_mode: Some(0o644),
            optional: Some(false),
        }),
        ..Volume::default()
    }
}

fn pvc_volume(name: &str, claim: String) -> Volume {
    Volume {
        name: name.into(),
        persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
            claim_name: claim,
            read_only: None,
        }),
        ..Volume::default()
    }
}

fn volumes(model: &Model, instance: &str) -> Vec<Volume> {
    let cluster = &model.name;
    let tls = super::secrets::tls_sources(model);
    let agent_tls = names::agent_tls_secret(cluster);
    let mut volumes = vec![
        pvc_volume("data", names::data_pvc(instance)),
        empty_dir("bin", false),
        empty_dir("run", false),
        empty_dir("tmp", false),
        empty_dir("shm", true),
        config_volume(model, files::INSTANCE_SETTINGS),
        secret_volume("superuser", &names::superuser_secret(cluster)),
        secret_volume("app", &names::app_secret(cluster)),
        secret_volume("pooler-auth", &names::pooler_secret(cluster)),
        super::secrets::tls_volume("server-tls", &tls.server, tls.ca_for(&tls.server)),
        super::secrets::tls_volume(
            "replication-tls",
            &tls.replication,
            tls.ca_for(&tls.replication),
        ),
        // The agent certificate's own Secret carries the control-plane CA.
        super::secrets::tls_volume("agent-tls", &agent_tls, &agent_tls),
    ];
    if model.spec.wal_storage.is_some() {
        volumes.push(pvc_volume("wal", names::wal_pvc(instance)));
    }
    if super::backup::backrest_tls(model) {
        volumes.push(backrest_tls_volume(model));
    }
    volumes.extend(super::backup::volumes(model).into_iter().map(|(v, _)| v));
    volumes.extend(super::restore::volumes(model).into_iter().map(|(v, _)| v));
    volumes.extend(super::restore::claim(model, instance).map(|(v, _)| v));
    volumes
}

/// pgBackRest's certificate, issued by the operator's CA in either TLS
/// mode, like the agent's.
pub fn backrest_tls_volume(model: &Model) -> Volume {
    let backrest = names::backrest_tls_secret(&model.name);
    super::secrets::tls_volume("backrest-tls", &backrest, &backrest)
}

/// Storage requested by a PVC, as written.
pub fn requested_storage(pvc: &PersistentVolumeClaim) -> Option<&Quantity> {
    pvc.spec
        .as_ref()?
        .resources
        .as_ref()?
        .requests
        .as_ref()?
        .get("storage")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::model::fixtures::model;

    fn container(pod: &Pod) -> &Container {
        &pod.spec.as_ref().unwrap().containers[0]
    }

    #[test]
    fn pod_has_stable_name_labels_and_owner() {
        let pod = pod(&model(), "db-2", labels::ROLE_REPLICA);
        let meta = &pod.metadata;
        assert_eq!(meta.name.as_deref(), Some("db-2"));
        let labels = meta.labels.as_ref().unwrap();
        assert_eq!(labels[labels::CLUSTER], "db");
        assert_eq!(labels[labels::INSTANCE], "db-2");
        assert_eq!(labels[labels::ROLE], "replica");
        let owner = &meta.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
            ("PostgresCluster", "uid-1", Some(true))
        );
    }

    #[test]
    fn init_container_copies_the_binary_the_agent_runs() {
        let pod = pod(&model(), "db-1", labels::ROLE_PRIMARY);
        let spec = pod.spec.as_ref().unwrap();
        let init = &spec.init_containers.as_ref().unwrap()[0];
        assert_eq!(init.image.as_deref(), Some("capstan:test"));
        let init_cmd = init.command.as_ref().unwrap();
        assert_eq!(init_cmd[1], "copy-binary");
        assert_eq!(init_cmd[2], layout::BINARY);
        assert_eq!(container(&pod).command.as_ref().unwrap()[0], layout::BINARY);
        // Both see the same emptyDir.
        let bin_mount = |c: &Container| {
            c.volume_mounts
                .as_ref()
                .unwrap()
                .iter()
                .any(|m| m.name == "bin" && m.mount_path == layout::BIN_DIR)
        };
        assert!(bin_mount(init) && bin_mount(container(&pod)));
    }

    #[test]
    fn pod_is_locked_down() {
        let pod = pod(&model(), "db-1", labels::ROLE_PRIMARY);
        let spec = pod.spec.as_ref().unwrap();
        let psc = spec.security_context.as_ref().unwrap();
        assert_eq!(psc.run_as_non_root, Some(true));
        assert_eq!(
            psc.seccomp_profile.as_ref().unwrap().type_,
            "RuntimeDefault"
        );
        for c in spec
            .containers
            .iter()
            .chain(spec.init_containers.as_ref().unwrap())
        {
            let sc = c.security_context.as_ref().unwrap();
            assert_eq!(sc.read_only_root_filesystem, Some(true), "{}", c.name);
            assert_eq!(sc.allow_privilege_escalation, Some(false), "{}", c.name);
            assert_eq!(
                sc.capabilities.as_ref().unwrap().drop.as_deref(),
                Some(&["ALL".to_string()][..])
            );
        }
    }

    #[test]
    fn probes_use_the_agent_https_port() {
        let pod = pod(&model(), "db-1", labels::ROLE_PRIMARY);
        let c = container(&pod);
        for (probe, path) in [
            (&c.liveness_probe, "/healthz"),
            (&c.readiness_probe, "/readyz"),
            (&c.startup_probe, "/healthz"),
        ] {
            let get = probe.as_ref().unwrap().http_get.as_ref().unwrap();
            assert_eq!(get.path.as_deref(), Some(path));
            assert_eq!(get.scheme.as_deref(), Some("HTTPS"));
            assert_eq!(get.port, IntOrString::Int(8000));
        }
    }

    #[test]
    fn every_mount_has_a_volume() {
        let mut m = model();
        m.spec.wal_storage = Some(m.spec.storage.clone());
        let pod = pod(&m, "db-1", labels::ROLE_PRIMARY);
        let spec = pod.spec.as_ref().unwrap();
        let volumes: Vec<_> = spec
            .volumes
            .as_ref()
            .unwrap()
            .iter()
            .map(|v| v.name.as_str())
            .collect();
        for c in spec
            .containers
            .iter()
            .chain(spec.init_containers.as_ref().unwrap())
        {
            for mount in c.volume_mounts.as_ref().unwrap() {
                assert!(
                    volumes.contains(&mount.name.as_str()),
                    "{} has no volume",
                    mount.name
                );
            }
        }
        assert!(volumes.contains(&"wal"));
    }

    #[test]
    fn pvcs_follow_storage_and_retention() {
        let mut m = model();
        let claims = pvcs(&m, "db-1");
        assert_eq!(claims.len(), 1);
        assert_eq!(requested_storage(&claims[0]).unwrap().0, "10Gi");
        // Default: retained when the cluster is deleted, so no owner.
        assert!(claims[0].metadata.owner_references.is_none());
        m.spec.storage.retention.when_deleted = RetentionRule::Delete;
        m.spec.wal_storage = Some(StorageSpec {
            size: Quantity("2Gi".into()),
            storage_class_name: Some("fast".into()),
            retention: m.spec.storage.retention.clone(),
            auto_grow: None,
        });
        let claims = pvcs(&m, "db-1");
        assert_eq!(claims.len(), 2);
        assert!(claims[0].metadata.owner_references.is_some());
        assert_eq!(claims[1].metadata.name.as_deref(), Some("db-1-wal"));
        assert_eq!(
            claims[1]
                .spec
                .as_ref()
                .unwrap()
                .storage_class_name
                .as_deref(),
            Some("fast")
        );
    }

    #[test]
    fn spec_hash_changes_with_the_image_but_not_the_role() {
        let m = model();
        let a = pod(&m, "db-1", labels::ROLE_PRIMARY);
        let b = pod(&m, "db-1", labels::ROLE_REPLICA);
        let hash = |p: &Pod| p.metadata.annotations.as_ref().unwrap()[SPEC_HASH_ANNOTATION].clone();
        assert_eq!(hash(&a), hash(&b));
        let mut m2 = model();
        m2.images.postgres = "postgres:17.9".into();
        assert_ne!(hash(&a), hash(&pod(&m2, "db-1", labels::ROLE_PRIMARY)));
    }

    #[test]
    fn user_scheduling_is_passed_through() {
        let mut m = model();
        m.spec.node_selector = BTreeMap::from([("disk".into(), "ssd".into())]);
        let pod = pod(&m, "db-1", labels::ROLE_PRIMARY);
        let spec = pod.spec.unwrap();
        assert_eq!(spec.node_selector.unwrap()["disk"], "ssd");
        // Default anti-affinity spreads instances across nodes.
        assert!(spec.affinity.unwrap().pod_anti_affinity.is_some());
    }
}

//! The throwaway pod that proves a backup restorable: `capstan verify` on
//! the instances' image (it needs PostgreSQL and pgBackRest), with the
//! cluster's ConfigMap and repository credentials mounted as the instances
//! get them, and a scratch `emptyDir` the copy is restored into.
//!
//! Owned by its `PostgresBackup` (deleting the object deletes the pod),
//! `restartPolicy: Never` (a failed restore is a result, not something to
//! retry), no ServiceAccount token (it needs no API access: its result is
//! its termination message), and an `activeDeadlineSeconds` so the kubelet
//! stops a wedged one even when the operator is down.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Container, EmptyDirVolumeSource, EnvVar, Pod, PodSecurityContext, PodSpec, SeccompProfile,
    Volume,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

use super::instance::{
    config_volume, copy_binary_container, empty_dir, mount, restricted_security_context,
};
use super::labels;
use super::model::Model;
use super::names;
use crate::contract::layout::{self, env, files};

/// The kubelet stops a verification running longer than this.
pub const DEADLINE_SECONDS: i64 = 6 * 3600;

/// What one verification restores.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// The `PostgresBackup` object.
    pub backup: String,
    pub backup_uid: String,
    /// pgBackRest label.
    pub label: String,
    /// 1-based repository number.
    pub repository: u32,
    /// Bytes of the database backed up, when known: bounds the scratch volume.
    pub size: Option<i64>,
}

/// The scratch volume's `sizeLimit`: the database, a quarter more for the
/// WAL replayed and the server's files, and 1 GiB.
pub fn scratch_limit(size: Option<i64>) -> Option<Quantity> {
    const MIB: i64 = 1024 * 1024;
    let size = size.filter(|s| *s >= 0)?;
    let mib = (size.saturating_add(size / 4) + MIB - 1) / MIB + 1024;
    Some(Quantity(format!("{mib}Mi")))
}

pub fn pod(model: &Model, request: &Request) -> Pod {
    let name = names::verify_pod(&request.backup);
    let mut meta = model.child_meta(name, labels::common(&model.name, labels::COMPONENT_VERIFY));
    meta.annotations = Some(BTreeMap::from([(
        labels::BACKUP_ANNOTATION.to_string(),
        request.backup.clone(),
    )]));
    meta.owner_references = Some(vec![OwnerReference {
        api_version: "capstan.dev/v1alpha1".into(),
        kind: "PostgresBackup".into(),
        name: request.backup.clone(),
        uid: request.backup_uid.clone(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }]);
    let mut command = vec![
        layout::BINARY.to_string(),
        "verify".into(),
        "--label".into(),
        request.label.clone(),
        "--repository".into(),
        request.repository.to_string(),
        "--sentinel".into(),
        request.backup.clone(),
    ];
    command.extend(["--scratch".to_string(), layout::VERIFY_SCRATCH.to_string()]);
    let mut mounts = vec![
        mount("bin", layout::BIN_DIR, true),
        mount("run", layout::RUN_DIR, false),
        mount("tmp", layout::TMP_DIR, false),
        mount("shm", "/dev/shm", false),
        mount("config", layout::CONFIG_DIR, true),
        mount("scratch", layout::VERIFY_MOUNT, false),
    ];
    let credentials = super::backup::volumes(model);
    mounts.extend(credentials.iter().map(|(_, m)| m.clone()));
    let mut volumes = vec![
        empty_dir("bin", false),
        empty_dir("run", false),
        empty_dir("tmp", false),
        empty_dir("shm", true),
        config_volume(model, files::INSTANCE_SETTINGS),
        Volume {
            name: "scratch".into(),
            empty_dir: Some(EmptyDirVolumeSource {
                medium: None,
                size_limit: scratch_limit(request.size),
            }),
            ..Volume::default()
        },
    ];
    volumes.extend(credentials.into_iter().map(|(v, _)| v));
    // A volume repository is read through the repository host.
    if !super::backup::volume_repositories(model).is_empty() {
        mounts.push(mount("backrest-tls", layout::BACKREST_TLS_DIR, true));
        volumes.push(super::instance::backrest_tls_volume(model));
    }
    let spec = &model.spec;
    let container = Container {
        name: "verify".into(),
        image: Some(model.images.postgres.clone()),
        command: Some(command),
        env: Some(vec![EnvVar {
            name: env::LOG_FORMAT.into(),
            value: Some("json".into()),
            value_from: None,
        }]),
        // The server restored needs what an instance needs.
        resources: spec.resources.clone(),
        security_context: Some(restricted_security_context()),
        termination_message_path: Some(layout::TERMINATION_LOG.into()),
        // A crash before the result is written still says something.
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        volume_mounts: Some(mounts),
        ..Container::default()
    };
    Pod {
        metadata: meta,
        spec: Some(PodSpec {
            restart_policy: Some("Never".into()),
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            active_deadline_seconds: Some(DEADLINE_SECONDS),
            termination_grace_period_seconds: Some(30),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(layout::POSTGRES_UID),
                run_as_group: Some(layout::POSTGRES_UID),
                fs_group: Some(layout::POSTGRES_UID),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".into(),
                    localhost_profile: None,
                }),
                ..PodSecurityContext::default()
            }),
            init_containers: Some(vec![copy_binary_container(&model.images.operator)]),
            containers: vec![container],
            volumes: Some(volumes),
            // Where instances may run, so may their copy.
            tolerations: (!spec.tolerations.is_empty()).then(|| spec.tolerations.clone()),
            node_selector: (!spec.node_selector.is_empty()).then(|| spec.node_selector.clone()),
            ..PodSpec::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::model::fixtures::model;

    fn request() -> Request {
        Request {
            backup: "db-full".into(),
            backup_uid: "uid-b".into(),
            label: "20261204-100000F".into(),
            repository: 1,
            size: Some(2 * 1024 * 1024 * 1024),
        }
    }

    fn with_s3() -> Model {
        let mut m = model();
        m.spec.backup = Some(
            serde_json::from_value(serde_json::json!({"repositories": [{"name": "repo1",
                "s3": crate::resources::backup::tests::s3(serde_json::json!({}))}]}))
            .unwrap(),
        );
        m
    }

    #[test]
    fn the_pod_is_owned_by_its_backup_and_runs_once() {
        let p = pod(&with_s3(), &request());
        assert_eq!(p.metadata.name.as_deref(), Some("db-full-verify"));
        let owner = &p.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
            ("PostgresBackup", "uid-b", Some(true))
        );
        let labels = p.metadata.labels.as_ref().unwrap();
        assert_eq!(labels[labels::CLUSTER], "db");
        assert_eq!(labels[labels::COMPONENT], labels::COMPONENT_VERIFY);
        assert_eq!(
            p.metadata.annotations.as_ref().unwrap()[labels::BACKUP_ANNOTATION],
            "db-full"
        );
        let spec = p.spec.as_ref().unwrap();
        assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
        assert_eq!(spec.automount_service_account_token, Some(false));
        assert_eq!(spec.active_deadline_seconds, Some(DEADLINE_SECONDS));
        let c = &spec.containers[0];
        assert_eq!(c.image.as_deref(), Some("postgres:17"));
        let cmd = c.command.as_ref().unwrap().join(" ");
        assert_eq!(
            cmd,
            "/capstan/bin/capstan verify --label 20261204-100000F --repository 1 --sentinel db-full --scratch /var/lib/postgresql/verify/restore"
        );
        assert_eq!(
            c.termination_message_policy.as_deref(),
            Some("FallbackToLogsOnError")
        );
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
    }

    #[test]
    fn credentials_and_scratch_are_mounted() {
        let p = pod(&with_s3(), &request());
        let spec = p.spec.as_ref().unwrap();
        let mounts: Vec<&str> = spec.containers[0]
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| m.mount_path.as_str())
            .collect();
        assert!(mounts.contains(&"/etc/capstan/backup/repo1"), "{mounts:?}");
        assert!(mounts.contains(&layout::VERIFY_MOUNT), "{mounts:?}");
        assert!(mounts.contains(&layout::CONFIG_DIR), "{mounts:?}");
        let scratch = spec
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == "scratch")
            .unwrap();
        assert_eq!(
            scratch.empty_dir.as_ref().unwrap().size_limit,
            Some(Quantity("3584Mi".into()))
        );
        // No password or TLS Secret: the copy needs none.
        assert!(spec.volumes.iter().flatten().all(|v| {
            v.secret
                .as_ref()
                .is_none_or(|s| s.secret_name.as_deref() == Some("s3-keys"))
        }),);
    }

    #[test]
    fn the_scratch_limit_follows_the_size() {
        assert_eq!(scratch_limit(None), None);
        assert_eq!(scratch_limit(Some(0)), Some(Quantity("1024Mi".into())));
        assert_eq!(scratch_limit(Some(1)), Some(Quantity("1025Mi".into())));
    }

    #[test]
    fn long_backup_names_make_valid_pod_names() {
        let long = "b".repeat(253);
        let name = names::verify_pod(&long);
        assert!(name.len() <= 253 && name.ends_with("-verify"), "{name}");
        assert_ne!(names::verify_pod(&"c".repeat(253)), name);
    }
}

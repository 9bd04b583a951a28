//! The throwaway pod that tries a PostgreSQL image before any instance
//! gets it: `capstan check-image` on that image (see
//! [`crate::image_check`]). A wrong image then costs a Stalled condition
//! with the reason, not an instance that cannot start, nor a primary
//! stopped for a major upgrade. It also pulls the image onto a node where
//! instances run, ahead of the rolling update. For a major upgrade it
//! rehearses the upgrade on a copy of the running primary (see
//! [`crate::instance::upgrade_check`]).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, EnvVar, Pod, PodSpec};

use super::instance::{
    self, copy_binary_container, empty_dir, mount, postgres_pod_security,
    restricted_security_context,
};
use super::model::{ImageCandidate, Model};
use super::{labels, names, secrets, upgrade};
use crate::contract::layout::{self, env, files, mounts};

/// The kubelet stops a check running longer than this (a pull that never
/// ends is reported by the operator sooner, from the pod's status).
pub const DEADLINE_SECONDS: i64 = 900;
/// A rehearsal copies the whole database first.
pub const REHEARSAL_DEADLINE_SECONDS: i64 = 6 * 3600;

pub fn pod(model: &Model, candidate: &ImageCandidate) -> Pod {
    let mut meta = model.child_meta(
        names::image_check_pod(&model.name),
        labels::common(&model.name, labels::COMPONENT_IMAGE_CHECK),
    );
    meta.annotations = Some(BTreeMap::from([
        (
            labels::IMAGE_ANNOTATION.to_string(),
            candidate.image.clone(),
        ),
        (
            labels::MAJOR_ANNOTATION.to_string(),
            candidate.major.to_string(),
        ),
    ]));
    let mut command = vec![
        layout::BINARY.to_string(),
        "check-image".into(),
        "--major".into(),
        candidate.major.to_string(),
    ];
    if model.spec.backup.is_some() {
        command.push("--pgbackrest".into());
    }
    let mut volume_mounts = vec![
        mount("bin", layout::BIN_DIR, true),
        mount("tmp", layout::TMP_DIR, false),
    ];
    let mut volumes = vec![empty_dir("bin", false), empty_dir("tmp", false)];
    let mut init_containers = vec![copy_binary_container(&model.images.operator)];
    let mut deadline = DEADLINE_SECONDS;
    if let Some(from) = &candidate.upgrade_from {
        // The rehearsal: the old binaries (as the upgrade pod has them), the
        // settings naming the primary, the certificate a replica copies it
        // with, and room for the copy.
        command.extend(["--upgrade-from".into(), from.major.to_string()]);
        meta.annotations.get_or_insert_with(BTreeMap::new).insert(
            labels::UPGRADE_FROM_ANNOTATION.to_string(),
            from.major.to_string(),
        );
        init_containers.push(upgrade::copy_container(from.major, &from.old_image));
        let tls = secrets::tls_sources(model);
        volume_mounts.extend([
            mount(upgrade::VOLUME, layout::OLD_POSTGRES_DIR, true),
            mount("config", layout::CONFIG_DIR, true),
            mount(
                "replication-tls",
                &instance::tls_path(mounts::REPLICATION_TLS),
                true,
            ),
            mount("scratch", layout::UPGRADE_CHECK_SCRATCH, false),
        ]);
        volumes.extend([
            empty_dir(upgrade::VOLUME, false),
            instance::config_volume(model, files::INSTANCE_SETTINGS),
            secrets::tls_volume(
                "replication-tls",
                &tls.replication,
                tls.ca_for(&tls.replication),
            ),
            empty_dir("scratch", false),
        ]);
        deadline = REHEARSAL_DEADLINE_SECONDS;
    }
    let spec = &model.spec;
    let container = Container {
        name: "check".into(),
        image: Some(candidate.image.clone()),
        command: Some(command),
        env: Some(vec![EnvVar {
            name: env::LOG_FORMAT.into(),
            value: Some("json".into()),
            value_from: None,
        }]),
        security_context: Some(restricted_security_context()),
        termination_message_path: Some(layout::TERMINATION_LOG.into()),
        // A crash before the result is written still says something.
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        volume_mounts: Some(volume_mounts),
        ..Container::default()
    };
    Pod {
        metadata: meta,
        spec: Some(PodSpec {
            restart_policy: Some("Never".into()),
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            active_deadline_seconds: Some(deadline),
            termination_grace_period_seconds: Some(5),
            security_context: Some(postgres_pod_security()),
            init_containers: Some(init_containers),
            containers: vec![container],
            volumes: Some(volumes),
            // Where instances may run, so may the check (and the pull).
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

    #[test]
    fn the_pod_runs_the_check_once_on_the_new_image() {
        let candidate = ImageCandidate {
            image: "postgres:17.2".into(),
            major: 17,
            upgrade_from: None,
        };
        let p = pod(&model(), &candidate);
        assert_eq!(p.metadata.name.as_deref(), Some("db-image-check"));
        let annotations = p.metadata.annotations.as_ref().unwrap();
        assert_eq!(annotations[labels::IMAGE_ANNOTATION], "postgres:17.2");
        assert_eq!(annotations[labels::MAJOR_ANNOTATION], "17");
        let spec = p.spec.unwrap();
        assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
        let c = &spec.containers[0];
        assert_eq!(c.image.as_deref(), Some("postgres:17.2"));
        assert_eq!(
            c.command.as_ref().unwrap()[1..],
            ["check-image", "--major", "17"]
        );
        assert_eq!(
            spec.init_containers.unwrap()[0].image.as_deref(),
            Some("capstan:test")
        );
    }

    #[test]
    fn with_backups_the_image_needs_pgbackrest() {
        let mut m = model();
        m.spec.backup = Some(
            serde_json::from_value(serde_json::json!({"repositories": [{"name": "repo1",
                "s3": crate::resources::backup::tests::s3(serde_json::json!({}))}]}))
            .unwrap(),
        );
        let candidate = ImageCandidate {
            image: "localhost/postgres-pgbackrest:17".into(),
            major: 17,
            upgrade_from: None,
        };
        let p = pod(&m, &candidate);
        let command = p.spec.unwrap().containers[0].command.clone().unwrap();
        assert!(command.contains(&"--pgbackrest".to_string()), "{command:?}");
    }

    #[test]
    fn a_major_upgrade_is_rehearsed_with_the_old_binaries_and_the_replication_certificate() {
        let candidate = ImageCandidate {
            image: "postgres:18".into(),
            major: 18,
            upgrade_from: Some(crate::resources::model::UpgradeFrom {
                major: 17,
                old_image: "postgres:17".into(),
            }),
        };
        let p = pod(&model(), &candidate);
        assert_eq!(
            p.metadata.annotations.as_ref().unwrap()[labels::UPGRADE_FROM_ANNOTATION],
            "17"
        );
        let spec = p.spec.unwrap();
        assert_eq!(
            spec.active_deadline_seconds,
            Some(REHEARSAL_DEADLINE_SECONDS)
        );
        let c = &spec.containers[0];
        assert_eq!(
            c.command.as_ref().unwrap()[1..],
            ["check-image", "--major", "18", "--upgrade-from", "17"]
        );
        let inits = spec.init_containers.unwrap();
        assert_eq!(inits[1].name, upgrade::COPY_CONTAINER);
        assert_eq!(inits[1].image.as_deref(), Some("postgres:17"));
        let mounted: Vec<&str> = c
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| m.mount_path.as_str())
            .collect();
        for path in [
            layout::OLD_POSTGRES_DIR,
            layout::CONFIG_DIR,
            layout::UPGRADE_CHECK_SCRATCH,
            "/etc/capstan/tls/replication",
        ] {
            assert!(mounted.contains(&path), "{path} in {mounted:?}");
        }
        let volumes = spec.volumes.unwrap();
        let tls = volumes
            .iter()
            .find(|v| v.name == "replication-tls")
            .unwrap();
        assert!(tls.projected.is_some() || tls.secret.is_some(), "{tls:?}");
    }
}

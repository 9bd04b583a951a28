//! The throwaway pod that tries a PostgreSQL image before any instance
//! gets it: `capstan check-image` on that image (see
//! [`crate::image_check`]). A wrong image then costs a Stalled condition
//! with the reason, not an instance that cannot start, nor a primary
//! stopped for a major upgrade. It also pulls the image onto a node where
//! instances run, ahead of the rolling update.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, EnvVar, Pod, PodSpec};

use super::instance::{
    copy_binary_container, empty_dir, mount, postgres_pod_security, restricted_security_context,
};
use super::labels;
use super::model::{ImageCandidate, Model};
use super::names;
use crate::contract::layout::{self, env};

/// The kubelet stops a check running longer than this (a pull that never
/// ends is reported by the operator sooner, from the pod's status).
pub const DEADLINE_SECONDS: i64 = 900;

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
        volume_mounts: Some(vec![
            mount("bin", layout::BIN_DIR, true),
            mount("tmp", layout::TMP_DIR, false),
        ]),
        ..Container::default()
    };
    Pod {
        metadata: meta,
        spec: Some(PodSpec {
            restart_policy: Some("Never".into()),
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            active_deadline_seconds: Some(DEADLINE_SECONDS),
            termination_grace_period_seconds: Some(5),
            security_context: Some(postgres_pod_security()),
            init_containers: Some(vec![copy_binary_container(&model.images.operator)]),
            containers: vec![container],
            volumes: Some(vec![empty_dir("bin", false), empty_dir("tmp", false)]),
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
        };
        let p = pod(&m, &candidate);
        let command = p.spec.unwrap().containers[0].command.clone().unwrap();
        assert!(command.contains(&"--pgbackrest".to_string()), "{command:?}");
    }
}

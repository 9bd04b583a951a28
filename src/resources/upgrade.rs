//! The upgrading primary's pod: the new major's image, plus an init
//! container of the old image that copies that major's installation into
//! an emptyDir, so pg_upgrade has both sets of binaries (DESIGN §5).

use k8s_openapi::api::core::v1::{Container, Pod};

use super::instance::{self, empty_dir, mount, restricted_security_context};
use super::labels;
use super::model::{MajorUpgrade, Model};
use crate::contract::layout;

/// The init container that copies the old major's binaries.
pub const COPY_CONTAINER: &str = "old-postgres";
/// The emptyDir it copies them into.
pub const VOLUME: &str = "old-postgres";

/// Whether `pod` is an upgrading primary's (it carries the old binaries).
pub fn is_upgrade_pod(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.init_containers.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.name == COPY_CONTAINER))
}

/// The primary's pod during the upgrade.
pub fn pod(model: &Model, upgrade: &MajorUpgrade, instance: &str) -> Pod {
    let mut new = model.clone();
    new.images.postgres = upgrade.image.clone();
    new.postgres_version = upgrade.to;
    let mut pod = instance::pod(&new, instance, labels::ROLE_PRIMARY);
    if let Some(spec) = pod.spec.as_mut() {
        spec.init_containers
            .get_or_insert_with(Vec::new)
            .push(copy_container(upgrade.from, &upgrade.old_image));
        spec.volumes
            .get_or_insert_with(Vec::new)
            .push(empty_dir(VOLUME, false));
        for c in spec.containers.iter_mut().filter(|c| c.name == "postgres") {
            c.volume_mounts.get_or_insert_with(Vec::new).push(mount(
                VOLUME,
                layout::OLD_POSTGRES_DIR,
                true,
            ));
        }
        let hash = instance::spec_hash(spec);
        if let Some(a) = pod.metadata.annotations.as_mut() {
            a.insert(instance::SPEC_HASH_ANNOTATION.to_string(), hash);
        }
    }
    pod
}

/// Copies `/usr/lib/postgresql/<old>` (and Debian's separate
/// `/usr/share/postgresql/<old>`) keeping the paths, so the copied
/// binaries find their libraries and share files where they expect them
/// relative to themselves.
pub fn copy_container(major: i32, old_image: &str) -> Container {
    let into = layout::OLD_POSTGRES_DIR;
    let script = format!(
        "set -eu\n\
         rm -rf {into}/usr\n\
         mkdir -p {into}/usr/lib/postgresql {into}/usr/share/postgresql\n\
         cp -a /usr/lib/postgresql/{major} {into}/usr/lib/postgresql/\n\
         if [ -d /usr/share/postgresql/{major} ]; then cp -a /usr/share/postgresql/{major} {into}/usr/share/postgresql/; fi\n"
    );
    Container {
        name: COPY_CONTAINER.into(),
        image: Some(old_image.to_string()),
        command: Some(vec!["/bin/sh".into(), "-c".into(), script]),
        volume_mounts: Some(vec![mount(VOLUME, into, false)]),
        security_context: Some(restricted_security_context()),
        ..Container::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::model::UpgradeStage;

    fn upgrade() -> MajorUpgrade {
        MajorUpgrade {
            from: 17,
            to: 18,
            image: "postgres:18-bookworm".into(),
            old_image: "postgres:17-bookworm".into(),
            stage: UpgradeStage::PrimaryStopped,
            generation: 1,
        }
    }

    #[test]
    fn runs_the_new_image_with_the_old_binaries_beside_it() {
        let model = crate::resources::model::fixtures::model();
        let pod = pod(&model, &upgrade(), "db-1");
        assert!(is_upgrade_pod(&pod));
        let spec = pod.spec.as_ref().unwrap();
        let postgres = spec
            .containers
            .iter()
            .find(|c| c.name == "postgres")
            .unwrap();
        assert_eq!(postgres.image.as_deref(), Some("postgres:18-bookworm"));
        assert!(
            postgres
                .volume_mounts
                .as_ref()
                .unwrap()
                .iter()
                .any(|m| m.mount_path == layout::OLD_POSTGRES_DIR && m.read_only == Some(true))
        );
        let inits = spec.init_containers.as_ref().unwrap();
        // The capstan binary first (the copy needs nothing of it, but the
        // order is the pod's usual one).
        assert_eq!(inits[0].name, "capstan-bin");
        let copy = &inits[1];
        assert_eq!(copy.image.as_deref(), Some("postgres:17-bookworm"));
        let script = &copy.command.as_ref().unwrap()[2];
        assert!(
            script
                .contains("cp -a /usr/lib/postgresql/17 /capstan/old-postgres/usr/lib/postgresql/")
        );
        assert!(script.contains("/usr/share/postgresql/17"));
        // Its own hash: the pod differs from the usual one.
        let usual = instance::pod(&model, "db-1", labels::ROLE_PRIMARY);
        assert_ne!(
            pod.metadata.annotations.as_ref().unwrap()[instance::SPEC_HASH_ANNOTATION],
            usual.metadata.annotations.as_ref().unwrap()[instance::SPEC_HASH_ANNOTATION]
        );
        assert!(!is_upgrade_pod(&usual));
    }
}

use super::*;
use crate::api::{MajorUpgradeStatus, PostgresClusterStatus, ProvidedTls};
use crate::operator::cluster::observe::SecretFacts;
use crate::resources::model::UpgradeStage;
use serde_json::json;

fn cluster(spec: serde_json::Value) -> PostgresCluster {
    serde_json::from_value(json!({
        "apiVersion": "capstan.dev/v1alpha1",
        "kind": "PostgresCluster",
        "metadata": {"name": "db", "namespace": "ns", "uid": "u1"},
        "spec": spec,
    }))
    .unwrap()
}

fn base() -> serde_json::Value {
    json!({"postgres": {"version": 17}, "storage": {"size": "1Gi"}})
}

fn check(c: &PostgresCluster) -> Result<Validated, SpecError> {
    validate(c, &Observed::default(), "capstan:1")
}

#[test]
fn defaults_fill_the_model() {
    let v = check(&cluster(base())).unwrap();
    assert!(v.blocked.is_none());
    let m = v.model;
    assert_eq!(m.spec.instances, 1);
    assert_eq!(m.images.postgres, "docker.io/library/postgres:17-bookworm");
    assert_eq!(m.images.pgbouncer, defaults::PGBOUNCER_IMAGE);
    assert_eq!(m.images.operator, "capstan:1");
    assert_eq!(m.spec.proxy.pgbouncer.replicas, 2);
    assert_eq!(m.postgres_version, 17);
}

#[test]
fn managed_parameters_that_slipped_past_admission_are_named() {
    let mut c = cluster(base());
    c.spec
        .postgres
        .parameters
        .insert("listen_addresses".into(), "*".into());
    let err = check(&c).unwrap_err();
    assert_eq!(err.field, "spec.postgres.parameters");
    assert!(err.message.contains("listen_addresses"), "{err}");
    let mut c = cluster(base());
    c.spec
        .proxy
        .pgbouncer
        .parameters
        .insert("auth_type".into(), "trust".into());
    assert!(
        check(&c)
            .unwrap_err()
            .to_string()
            .contains("auth_type is managed by Capstan")
    );
}

#[test]
fn out_of_range_values_are_refused() {
    let mut c = cluster(base());
    c.spec.instances = 12;
    assert_eq!(check(&c).unwrap_err().field, "spec.instances");
    let mut c = cluster(base());
    c.spec.postgres.version = 12;
    assert_eq!(check(&c).unwrap_err().field, "spec.postgres.version");
    let mut c = cluster(base());
    c.spec.storage.size.0 = "lots".into();
    assert_eq!(check(&c).unwrap_err().field, "spec.storage.size");
    let mut c = cluster(base());
    c.spec.postgres.hba.push("host all all all trust".into());
    assert_eq!(check(&c).unwrap_err().field, "spec.postgres.hba");
    let mut c = cluster(base());
    c.metadata.name = Some("Db".into());
    assert_eq!(check(&c).unwrap_err().field, "metadata.name");
    let mut c = cluster(base());
    c.metadata.name = Some("a".repeat(limits::CLUSTER_NAME_MAX + 1));
    assert_eq!(check(&c).unwrap_err().field, "metadata.name");
    let mut c = cluster(base());
    c.spec.proxy.pgbouncer.replicas = limits::POOLER_REPLICAS.end() + 1;
    assert_eq!(
        check(&c).unwrap_err().field,
        "spec.proxy.pgbouncer.replicas"
    );
    let mut c = cluster(base());
    c.spec.failover.detection_seconds = limits::DETECTION_SECONDS.start() - 1;
    assert_eq!(
        check(&c).unwrap_err().field,
        "spec.failover.detectionSeconds"
    );
    let mut c = cluster(base());
    c.spec.failover.max_lag_bytes = -1;
    assert_eq!(check(&c).unwrap_err().field, "spec.failover.maxLagBytes");
    // The bounds themselves are accepted.
    let mut c = cluster(base());
    c.spec.instances = *limits::INSTANCES.end();
    c.spec.failover.detection_seconds = *limits::DETECTION_SECONDS.end();
    c.metadata.name = Some("a".repeat(limits::CLUSTER_NAME_MAX));
    assert!(check(&c).is_ok());
}

#[test]
fn provided_tls_needs_existing_secrets_with_the_right_keys() {
    let mut c = cluster(base());
    c.spec.tls.mode = TlsMode::Provided;
    assert_eq!(check(&c).unwrap_err().field, "spec.tls.provided");
    c.spec.tls.provided = Some(ProvidedTls {
        ca_secret_name: "ca".into(),
        server_secret_name: "srv".into(),
        replication_secret_name: "repl".into(),
        pooler_secret_name: "pool".into(),
    });
    let err = check(&c).unwrap_err();
    assert_eq!(err.field, "spec.tls.provided.caSecretName");
    assert!(err.message.contains("does not exist"));
    // Creating the Secret fixes it without a spec change.
    assert!(err.awaits_object);
    let mut observed = Observed::default();
    let facts = |keys: &[&str]| SecretFacts {
        keys: keys.iter().map(|k| k.to_string()).collect(),
        ..SecretFacts::default()
    };
    observed.secrets.insert("ca".into(), facts(&["ca.crt"]));
    observed.secrets.insert("srv".into(), facts(&["tls.crt"]));
    observed
        .secrets
        .insert("repl".into(), facts(&["tls.crt", "tls.key"]));
    observed
        .secrets
        .insert("pool".into(), facts(&["tls.crt", "tls.key"]));
    let err = validate(&c, &observed, "x").unwrap_err();
    assert_eq!(err.field, "spec.tls.provided.serverSecretName");
    assert!(err.message.contains("tls.key"));
    observed
        .secrets
        .insert("srv".into(), facts(&["tls.crt", "tls.key"]));
    assert!(validate(&c, &observed, "x").is_ok());
}

#[test]
fn a_provided_secret_named_like_capstans_copy_is_refused_with_a_new_name() {
    // Admitted before the CEL rule covered the `-tls` names: the copy would
    // overwrite the user's Secret with itself, again and again.
    let mut c = cluster(base());
    let name = c.metadata.name.clone().unwrap();
    c.spec.tls.mode = TlsMode::Provided;
    c.spec.tls.provided = Some(ProvidedTls {
        ca_secret_name: format!("{name}-ca"),
        server_secret_name: "srv".into(),
        replication_secret_name: "repl".into(),
        pooler_secret_name: format!("{name}-pooler-tls"),
    });
    let err = validate(&c, &Observed::default(), "x").unwrap_err();
    assert_eq!(err.field, "spec.tls.provided.poolerSecretName");
    assert!(!err.awaits_object);
    assert!(
        err.message.contains(&format!(
            "is \"{name}-pooler-tls\", a Secret Capstan writes"
        )) && err.message.contains(&format!("e.g. {name}-pooler-cert")),
        "{}",
        err.message
    );
}

fn s3_repository() -> serde_json::Value {
    json!({"name": "repo1", "s3": {"endpoint": "s3.amazonaws.com", "region": "eu-west-1",
        "bucket": "backups", "credentials": {"secretName": "s3"}}})
}

#[test]
fn s3_backups_from_the_primary_are_modelled() {
    let mut spec = base();
    spec["backup"] = json!({"repositories": [s3_repository()],
        "schedules": [{"name": "nightly", "type": "full", "schedule": "0 1 * * SUN"}]});
    let v = check(&cluster(spec)).unwrap();
    assert!(v.blocked.is_none(), "{:?}", v.blocked);
    assert_eq!(v.model.spec.backup.unwrap().schedules.len(), 1);
}

#[test]
fn backups_this_build_cannot_take_wait_and_render_nothing() {
    for (backup, field) in [
        (
            json!({"repositories": [s3_repository(), {"name": "repo2", "volume": {"size": "1Gi"}}],
                   "target": "preferReplica"}),
            "spec.backup.repositories[repo2]: a volume repository cannot be combined with spec.backup.target: preferReplica",
        ),
        (
            json!({"repositories": [s3_repository()],
                   "schedules": [{"name": "nightly", "type": "full", "schedule": "0 1 * * *"},
                                 {"name": "often", "type": "incremental", "schedule": "61 * * * *"}]}),
            "spec.backup.schedules[often].schedule \"61 * * * *\" is not a cron expression",
        ),
    ] {
        let mut spec = base();
        spec["backup"] = backup;
        let v = check(&cluster(spec)).unwrap();
        let blocked = v.blocked.unwrap();
        assert_eq!(blocked.reason, BACKUP_UNSUPPORTED);
        assert!(blocked.message.contains(field), "{}", blocked.message);
        // The rest of the cluster is still modelled (and reconciled),
        // without any of spec.backup.
        assert!(v.model.spec.backup.is_none());
        assert_eq!(v.model.spec.instances, 1);
    }
}

#[test]
fn s3_and_volume_restores_are_modelled() {
    let mut spec = base();
    spec["bootstrap"] =
        json!({"restore": {"source": {"repository": {"s3": s3_repository()["s3"]}}}});
    let c = cluster(spec);
    assert!(c.spec.bootstrap.initdb.is_none());
    let v = check(&c).unwrap();
    assert!(v.blocked.is_none(), "{:?}", v.blocked);
    assert!(v.model.spec.bootstrap.restore.is_some());

    let mut spec = base();
    spec["bootstrap"] = json!({"restore": {"source": {"repository":
        {"volume": {"claimName": "orders-repo1"}}}}});
    let v = check(&cluster(spec)).unwrap();
    assert!(v.blocked.is_none(), "{:?}", v.blocked);
    let restore = crate::resources::restore::settings(&v.model).unwrap();
    assert_eq!(
        restore.repository.path,
        crate::contract::layout::RESTORE_VOLUME_DIR
    );
}

#[test]
fn a_raised_major_is_an_upgrade_that_keeps_the_running_version_until_the_primary_stops() {
    let mut c = cluster(base());
    c.metadata.generation = Some(4);
    c.status = Some(PostgresClusterStatus {
        postgres_version: Some(16),
        // The upgrade passed its rehearsal (see the test below).
        image_check: Some(crate::api::ImageCheckStatus {
            upgrade_from: Some(16),
            ..passed("docker.io/library/postgres:17-bookworm", 17)
        }),
        ..PostgresClusterStatus::default()
    });
    let v = check(&c).unwrap();
    assert!(v.blocked.is_none(), "{:?}", v.blocked);
    assert_eq!(
        v.model.images.postgres,
        "docker.io/library/postgres:16-bookworm"
    );
    assert_eq!(v.model.postgres_version, 16);
    let up = v.model.upgrade.clone().unwrap();
    assert_eq!((up.from, up.to), (16, 17));
    assert_eq!(up.image, "docker.io/library/postgres:17-bookworm");
    assert_eq!(up.old_image, "docker.io/library/postgres:16-bookworm");
    assert_eq!(up.stage, UpgradeStage::Preparing);

    // Recorded, with the old primary stopped: the next stage.
    let record = MajorUpgradeStatus {
        phase: "Upgrading".into(),
        from_version: 16,
        to_version: 17,
        image: up.image.clone(),
        old_image: "registry.example/pg:16".into(),
        generation: 4,
        primary_stopped_at: Some("2026-12-06T00:00:00Z".into()),
        ..MajorUpgradeStatus::default()
    };
    c.status.as_mut().unwrap().upgrade = Some(record.clone());
    let v = check(&c).unwrap();
    let up = v.model.upgrade.clone().unwrap();
    assert_eq!(up.stage, UpgradeStage::PrimaryStopped);
    assert_eq!(up.old_image, "registry.example/pg:16", "the recorded one");

    // Lowered (or the image changed) once the primary was stopped: the
    // upgrade finishes, and the cluster says so.
    c.spec.postgres.version = 16;
    let v = check(&c).unwrap();
    let blocked = v.blocked.clone().unwrap();
    assert_eq!(blocked.reason, "MajorUpgradeInProgress");
    assert!(
        blocked
            .message
            .contains("set spec.postgres.version back to 17")
    );
    let up = v.model.upgrade.unwrap();
    assert_eq!((up.to, up.stage), (17, UpgradeStage::PrimaryStopped));
    c.spec.postgres.version = 17;

    // Failed for this spec: Stalled on the old major, and the way back.
    c.status.as_mut().unwrap().upgrade = Some(MajorUpgradeStatus {
        phase: "Failed".into(),
        message: "Checking for presence of required libraries fatal".into(),
        ..record.clone()
    });
    let v = check(&c).unwrap();
    let blocked = v.blocked.unwrap();
    assert_eq!(blocked.reason, "MajorUpgradeFailed");
    assert!(
        blocked.message.contains("required libraries"),
        "{}",
        blocked.message
    );
    assert!(
        blocked
            .message
            .contains("set spec.postgres.version back to 16")
    );
    assert!(v.model.upgrade.is_none());
    assert_eq!(v.model.postgres_version, 16);
    // A changed spec tries again.
    c.metadata.generation = Some(5);
    assert!(check(&c).unwrap().model.upgrade.is_some());
    // Lowered back: the cluster simply runs 16.
    c.spec.postgres.version = 16;
    let v = check(&c).unwrap();
    assert!(v.blocked.is_none() && v.model.upgrade.is_none());
    // Lowered below the data version: refused, naming the way back.
    c.spec.postgres.version = 15;
    let e = check(&c).unwrap_err();
    assert_eq!(e.field, "spec.postgres.version");
    assert!(e.message.contains("set it back to 16"), "{}", e.message);
}

fn passed(image: &str, major: i32) -> crate::api::ImageCheckStatus {
    crate::api::ImageCheckStatus {
        image: image.into(),
        major,
        passed: true,
        message: format!("PostgreSQL {major}.1"),
        generation: 1,
        checked_at: "2026-12-06T00:00:00Z".into(),
        upgrade_from: None,
        link_bytes: None,
        rehearsal_failed: false,
    }
}

/// Instance pods running `image`, as the watch cache has them.
fn running(image: &str) -> Observed {
    let model = check(&cluster(base())).unwrap().model;
    let mut pod = crate::resources::instance::pod(&model, "db-1", "primary");
    for c in &mut pod.spec.as_mut().unwrap().containers {
        if c.name == "postgres" {
            c.image = Some(image.into());
        }
    }
    Observed {
        pods: vec![pod],
        ..Observed::default()
    }
}

#[test]
fn a_new_image_is_tried_before_any_instance_gets_it() {
    let mut spec = base();
    spec["postgres"]["image"] = json!("registry.example/pg:17.9");
    let mut c = cluster(spec);
    c.metadata.generation = Some(3);
    c.status = Some(PostgresClusterStatus {
        postgres_version: Some(17),
        ..PostgresClusterStatus::default()
    });
    let observed = running("registry.example/pg:17.8");
    let v = validate(&c, &observed, "capstan:1").unwrap();
    // Not yet tried: the instances keep theirs, a check is asked for.
    assert_eq!(v.model.images.postgres, "registry.example/pg:17.8");
    assert_eq!(
        v.model.image_check,
        Some(ImageCandidate {
            image: "registry.example/pg:17.9".into(),
            major: 17,
            upgrade_from: None,
        })
    );
    assert!(v.blocked.is_none());

    // Failed for this generation: Stalled, nothing changes, the way back named.
    let mut failed = passed("registry.example/pg:17.9", 17);
    failed.passed = false;
    failed.generation = 3;
    failed.message = "the binaries in /usr/lib/postgresql/16/bin are PostgreSQL 16".into();
    c.status.as_mut().unwrap().image_check = Some(failed.clone());
    let v = validate(&c, &observed, "capstan:1").unwrap();
    let blocked = v.blocked.unwrap();
    assert_eq!(blocked.reason, "ImageCheckFailed");
    assert!(
        blocked.message.contains("PostgreSQL 16"),
        "{}",
        blocked.message
    );
    assert!(
        blocked.message.contains("registry.example/pg:17.8"),
        "names what runs: {}",
        blocked.message
    );
    assert_eq!(v.model.images.postgres, "registry.example/pg:17.8");
    assert_eq!(v.model.image_check, None, "not tried again for this spec");
    // Any change of the spec tries again.
    c.metadata.generation = Some(4);
    let v = validate(&c, &observed, "capstan:1").unwrap();
    assert!(v.blocked.is_none() && v.model.image_check.is_some());

    // Passed: the rolling update may give it to the instances.
    c.status.as_mut().unwrap().image_check = Some(passed("registry.example/pg:17.9", 17));
    let v = validate(&c, &observed, "capstan:1").unwrap();
    assert_eq!(v.model.images.postgres, "registry.example/pg:17.9");
    assert_eq!(v.model.image_check, None);
    // The same image as running: nothing to try.
    let same = validate(&c, &running("registry.example/pg:17.9"), "capstan:1").unwrap();
    assert_eq!(same.model.image_check, None);
}

#[test]
fn a_major_upgrade_starts_only_after_its_rehearsal_passed_and_with_room_for_it() {
    let mut c = cluster(base());
    c.metadata.generation = Some(2);
    c.status = Some(PostgresClusterStatus {
        postgres_version: Some(16),
        ..PostgresClusterStatus::default()
    });
    let mut observed = running("docker.io/library/postgres:16-bookworm");
    let v = validate(&c, &observed, "capstan:1").unwrap();
    assert_eq!(v.model.upgrade, None, "no upgrade before the check");
    assert_eq!(v.model.postgres_version, 16);
    assert_eq!(
        v.model.image_check,
        Some(ImageCandidate {
            image: "docker.io/library/postgres:17-bookworm".into(),
            major: 17,
            upgrade_from: Some(UpgradeFrom {
                major: 16,
                old_image: "docker.io/library/postgres:16-bookworm".into(),
            }),
        })
    );
    // A passed check of the image alone (no rehearsal) does not count.
    c.status.as_mut().unwrap().image_check =
        Some(passed("docker.io/library/postgres:17-bookworm", 17));
    let v = validate(&c, &observed, "capstan:1").unwrap();
    assert!(v.model.upgrade.is_none() && v.model.image_check.is_some());

    let rehearsed = |passed_: bool| crate::api::ImageCheckStatus {
        passed: passed_,
        generation: 2,
        upgrade_from: Some(16),
        link_bytes: passed_.then_some(600 * 1024 * 1024),
        rehearsal_failed: !passed_,
        message: if passed_ {
            "PostgreSQL 17.1".into()
        } else {
            "pg_upgrade from PostgreSQL 16 to 17 refused: Checking for presence of required libraries fatal".into()
        },
        ..passed("docker.io/library/postgres:17-bookworm", 17)
    };
    c.status.as_mut().unwrap().image_check = Some(rehearsed(false));
    let v = validate(&c, &observed, "capstan:1").unwrap();
    let blocked = v.blocked.unwrap();
    assert_eq!(blocked.reason, "UpgradeCheckFailed");
    for words in [
        "tried on a copy of the primary",
        "required libraries",
        "spec.postgres.version back to 16",
    ] {
        assert!(
            blocked.message.contains(words),
            "{words}: {}",
            blocked.message
        );
    }
    assert_eq!(v.model.upgrade, None);
    assert_eq!(
        v.model.images.postgres,
        "docker.io/library/postgres:16-bookworm"
    );

    c.status.as_mut().unwrap().image_check = Some(rehearsed(true));
    // The primary's volume has 700 MiB free: --link needs 600 MiB, a
    // quarter more and the margin.
    let mut report = crate::contract::instance::InstanceReport {
        role: crate::contract::instance::Role::Primary,
        data_volume: Some(VolumeUsage {
            size_bytes: 10 << 30,
            available_bytes: 700 << 20,
        }),
        ..Default::default()
    };
    observed.reports.insert("db-1".into(), report.clone());
    let v = validate(&c, &observed, "capstan:1").unwrap();
    let blocked = v.blocked.unwrap();
    assert_eq!(blocked.reason, "UpgradeNeedsSpace");
    assert!(
        blocked
            .message
            .contains("1006 MiB free on the data volume of the primary db-1")
            && blocked.message.contains("700 MiB of 10240 MiB are free")
            && blocked.message.contains("spec.storage.size"),
        "{}",
        blocked.message
    );
    assert_eq!(v.model.upgrade, None);
    report.data_volume = Some(VolumeUsage {
        size_bytes: 20 << 30,
        available_bytes: 10 << 30,
    });
    observed.reports.insert("db-1".into(), report);
    let v = validate(&c, &observed, "capstan:1").unwrap();
    assert!(v.blocked.is_none());
    let up = v.model.upgrade.unwrap();
    assert_eq!(
        (up.from, up.to, up.stage),
        (16, 17, UpgradeStage::Preparing)
    );
}

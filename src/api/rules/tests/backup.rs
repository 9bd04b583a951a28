//! `spec.backup`, `spec.bootstrap.restore` and `PostgresBackup`, through the
//! same local CEL evaluation as the other rules.

use super::*;

use crate::api::PostgresBackup;

fn s3(bucket: &str) -> Value {
    json!({
        "endpoint": "s3.eu-west-1.amazonaws.com",
        "region": "eu-west-1",
        "bucket": bucket,
        "credentials": {"secretName": "s3-creds"},
    })
}

pub(super) fn repository(name: &str, kind: &str, settings: Value) -> Value {
    json!({"name": name, kind: settings})
}

/// The default image has no pgBackRest.
fn with_backrest_image(cluster: Value) -> Value {
    with(
        cluster,
        "/spec/postgres/image",
        json!("localhost/postgres-pgbackrest:17"),
    )
}

/// A cluster backing up to one S3 repository.
fn backed_up() -> Value {
    with(
        with_backrest_image(minimal()),
        "/spec/backup",
        json!({"repositories": [repository("repo1", "s3", s3("backups"))]}),
    )
}

pub(super) fn with_backup(pointer: &str, value: Value) -> Value {
    with(backed_up(), &format!("/spec/backup{pointer}"), value)
}

fn schedule(name: &str, cron: &str) -> Value {
    json!({"name": name, "type": "full", "schedule": cron})
}

pub(super) fn restoring(repository: Value) -> Value {
    with(
        with_backrest_image(minimal()),
        "/spec/bootstrap",
        json!({"restore": {"source": {"repository": repository}}}),
    )
}

fn with_target(target: Value) -> Value {
    with(
        restoring(json!({"s3": s3("backups")})),
        "/spec/bootstrap/restore/target",
        target,
    )
}

#[test]
fn backups_and_restores_name_an_image_with_pgbackrest() {
    let needle = "spec.backup and spec.bootstrap.restore need spec.postgres.image";
    let mut no_image = backed_up();
    no_image["spec"]["postgres"]
        .as_object_mut()
        .unwrap()
        .remove("image");
    assert_refused(&no_image, None, needle);
    let mut restore_no_image = restoring(json!({"s3": s3("backups")}));
    restore_no_image["spec"]["postgres"]
        .as_object_mut()
        .unwrap()
        .remove("image");
    assert_refused(&restore_no_image, None, needle);
    assert_ok(&backed_up(), None);
    assert_ok(&minimal(), None);
}

#[test]
fn a_complete_backup_spec_is_accepted() {
    assert_ok(&backed_up(), None);
    let full = with(
        with_backrest_image(minimal()),
        "/spec/backup",
        json!({
            "repositories": [
                {"name": "repo1", "s3": {
                    "endpoint": "minio.storage.svc:9000", "region": "us-east-1",
                    "bucket": "pg.backups", "path": "/prod/db", "uriStyle": "path",
                    "verifyTls": true, "caSecret": {"name": "minio-ca", "key": "ca.crt"},
                    "credentials": {"secretName": "s3", "accessKeyIdKey": "id", "secretAccessKeyKey": "key"}},
                 "retention": {"full": 4, "differential": 7}},
                {"name": "repo2", "azure": {"account": "acct1", "container": "pg-backups",
                    "credentials": {"secretName": "azure", "key": "AZURE_STORAGE_KEY"}}},
                {"name": "repo3", "gcs": {"bucket": "pg-backups",
                    "credentials": {"secretName": "gcs", "key": "key.json"}}},
                {"name": "repo4", "volume": {"size": "100Gi"}},
            ],
            "schedules": [
                {"name": "weekly-full", "type": "full", "schedule": "0 1 * * 0"},
                {"name": "daily", "type": "differential", "schedule": "0 1 * * 1-6", "repository": "repo2"},
                {"name": "hourly", "type": "incremental", "schedule": "*/15 * * * *", "repository": "repo4"},
            ],
            "archive": {"timeout": "5m", "async": false},
            "target": "primary",
            "verify": {"enabled": false},
        }),
    );
    assert_ok(&full, None);
    assert_ok(&full, Some(&full));
    // Adding backups to a running cluster is allowed.
    assert_ok(&full, Some(&minimal()));
}

#[test]
fn a_repository_is_exactly_one_kind() {
    assert_refused(
        &with_backup("/repositories", json!([{"name": "repo1"}])),
        None,
        "spec.backup.repositories[repo1]: set exactly one of s3, azure, gcs or volume",
    );
    assert_refused(
        &with_backup(
            "/repositories",
            json!([{"name": "repo2", "s3": s3("backups"), "volume": {"size": "1Gi"}}]),
        ),
        None,
        "spec.backup.repositories[repo2]: set exactly one",
    );
    assert_ok(
        &with_backup(
            "/repositories",
            json!([{"name": "repo1", "volume": {"size": "1Gi"}}]),
        ),
        None,
    );
}

#[test]
fn repositories_are_named_as_pgbackrest_numbers_them() {
    for bad in ["repo0", "repo5", "backup", "Repo1", "repo12"] {
        assert_refused(
            &with_backup(
                "/repositories",
                json!([repository(bad, "s3", s3("backups"))]),
            ),
            None,
            "spec.backup.repositories[].name must be repo1, repo2, repo3 or repo4",
        );
    }
    assert_refused(
        &with_backup(
            "/schedules",
            json!([{"name": "n", "type": "full", "schedule": "0 1 * * *", "repository": "s3"}]),
        ),
        None,
        "spec.backup.schedules[].repository must be repo1",
    );
}

#[test]
fn a_schedule_names_an_existing_repository() {
    let to = |repo: &str| {
        with_backup(
            "/schedules",
            json!([{"name": "nightly", "type": "full", "schedule": "0 1 * * *", "repository": repo}]),
        )
    };
    assert_ok(&to("repo1"), None);
    assert_refused(
        &to("repo2"),
        None,
        "spec.backup.schedules[].repository must name one of spec.backup.repositories",
    );
    // Without a repository the first one is used: always there.
    assert_ok(
        &with_backup("/schedules", json!([schedule("nightly", "0 1 * * *")])),
        None,
    );
}

#[test]
fn schedules_are_five_field_cron_expressions() {
    for good in [
        "0 1 * * 0",
        "*/15 * * * *",
        "30 2 1,15 * MON-FRI",
        "0 0 ? * SUN",
    ] {
        assert_ok(
            &with_backup("/schedules", json!([schedule("s", good)])),
            None,
        );
    }
    for bad in [
        "0 1 * *",
        "0 0 1 * * *",
        "@daily",
        "0 1 * * 0; rm",
        "0\t1 * * 0 ",
        "every day",
    ] {
        assert_refused(
            &with_backup("/schedules", json!([schedule("s", bad)])),
            None,
            "schedule must be a cron expression of five fields",
        );
    }
    assert_refused(
        &with_backup("/schedules", json!([schedule("Nightly_Full", "0 1 * * 0")])),
        None,
        "spec.backup.schedules[].name must be",
    );
}

#[test]
fn archive_timeout_is_a_bounded_duration() {
    for good in ["1s", "60s", "5m", "60m", "1h", "3600s"] {
        assert_ok(&with_backup("/archive/timeout", json!(good)), None);
    }
    for bad in [
        "0s", "3601s", "2h", "61m", "60", "1d", "1m30s", "-5s", "05m",
    ] {
        assert_refused(
            &with_backup("/archive/timeout", json!(bad)),
            None,
            "spec.backup.archive.timeout must be",
        );
    }
}

#[test]
fn retention_keeps_at_least_one_backup() {
    let keep = |retention: Value| {
        with_backup(
            "/repositories",
            json!([{"name": "repo1", "s3": s3("backups"), "retention": retention}]),
        )
    };
    assert_ok(&keep(json!({"full": 1})), None);
    assert_ok(&keep(json!({"full": 1, "differential": 1})), None);
    assert_refused(
        &keep(json!({"full": 0})),
        None,
        "retention.full must be between 1 and 9999999",
    );
    assert_refused(
        &keep(json!({"full": 2, "differential": 0})),
        None,
        "retention.differential must be between 1",
    );
}

#[test]
fn object_store_endpoints_and_paths_are_checked() {
    let s3_with = |key: &str, value: &str| {
        let mut settings = s3("backups");
        settings[key] = json!(value);
        with_backup(
            "/repositories",
            json!([repository("repo1", "s3", settings)]),
        )
    };
    for good in [
        "s3.amazonaws.com",
        "minio:9000",
        "10.0.0.5:443",
        "localhost",
    ] {
        assert_ok(&s3_with("endpoint", good), None);
    }
    for bad in [
        "https://s3.amazonaws.com",
        "s3.amazonaws.com/bucket",
        "minio:port",
        "-minio",
    ] {
        assert_refused(
            &s3_with("endpoint", bad),
            None,
            "s3.endpoint must be host or host:port without a scheme",
        );
    }
    for good in ["/a", "/capstan/ns/db", "/v1.2/x_y-z"] {
        assert_ok(&s3_with("path", good), None);
    }
    for bad in ["a/b", "/a/../b", "/..", "/a/./b", "/a//b", "/a/", "/a b"] {
        assert_refused(
            &s3_with("path", bad),
            None,
            "repository path must be absolute",
        );
    }
    let azure = json!({"account": "acct", "container": "c1x", "endpoint": "http://azurite:10000",
        "credentials": {"secretName": "az", "key": "k"}});
    assert_refused(
        &with_backup(
            "/repositories",
            json!([repository("repo1", "azure", azure)]),
        ),
        None,
        "azure.endpoint must be host or host:port",
    );
    let gcs = json!({"bucket": "pg-backups", "endpoint": "https://gcs.local:4443",
        "credentials": {"secretName": "g", "key": "k"}});
    assert_refused(
        &with_backup("/repositories", json!([repository("repo1", "gcs", gcs)])),
        None,
        "gcs.endpoint must be host or host:port",
    );
}

#[test]
fn a_volume_repository_grows_but_never_shrinks() {
    let volume = |size: &str| {
        with_backup(
            "/repositories",
            json!([repository("repo1", "volume", json!({"size": size}))]),
        )
    };
    assert_refused(&volume("0"), None, "size must be a positive quantity");
    assert_ok(&volume("2Gi"), Some(&volume("1Gi")));
    assert_refused(&volume("1Gi"), Some(&volume("2Gi")), "may not be decreased");
}

#[test]
fn backups_from_a_replica_need_object_stores() {
    let cluster = |target: &str, kind: &str, settings: Value| {
        with(
            with_backup(
                "/repositories",
                json!([repository("repo1", kind, settings)]),
            ),
            "/spec/backup/target",
            json!(target),
        )
    };
    let volume = json!({"size": "10Gi"});
    assert_ok(&cluster("primary", "volume", volume.clone()), None);
    assert_ok(&cluster("preferReplica", "s3", s3("backups")), None);
    assert_refused(
        &cluster("preferReplica", "volume", volume),
        None,
        "spec.backup.target: preferReplica cannot be combined with a volume repository",
    );
}

#[test]
fn restore_is_an_alternative_to_initdb() {
    let restore = restoring(json!({"s3": s3("backups")}));
    assert_ok(&restore, None);
    let both = with(
        restore.clone(),
        "/spec/bootstrap/initdb",
        json!({"database": "app"}),
    );
    assert_refused(
        &both,
        None,
        "spec.bootstrap: set either initdb (a new, empty cluster) or restore",
    );
    // Bootstrap stays immutable: restore cannot be added or dropped later.
    assert_refused(&restore, Some(&minimal()), "spec.bootstrap is immutable");
    assert_refused(&minimal(), Some(&restore), "spec.bootstrap is immutable");
    assert_ok(&restore, Some(&restore));
    // The application database and owner in the restored data.
    let named = |db: &str| {
        with(
            restore.clone(),
            "/spec/bootstrap/restore/database",
            json!(db),
        )
    };
    assert_ok(
        &with(
            named("orders"),
            "/spec/bootstrap/restore/owner",
            json!("orders"),
        ),
        None,
    );
    assert_refused(
        &named("template1"),
        None,
        "spec.bootstrap.restore.database must be a lowercase SQL identifier",
    );
    let c: crate::api::PostgresCluster = serde_json::from_value(with(
        named("orders"),
        "/spec/bootstrap/restore/owner",
        json!("shop"),
    ))
    .unwrap();
    let initdb = c.spec.bootstrap.initdb_or_default();
    assert_eq!(
        (initdb.database.as_str(), initdb.owner.as_str()),
        ("orders", "shop")
    );
}

#[test]
fn a_restore_source_is_exactly_one_kind_of_repository() {
    assert_refused(
        &restoring(json!({})),
        None,
        "spec.bootstrap.restore.source.repository: set exactly one of s3, azure, gcs or volume",
    );
    assert_refused(
        &restoring(json!({"s3": s3("a-bucket"), "volume": {"claimName": "db-repo1"}})),
        None,
        "source.repository: set exactly one",
    );
    assert_ok(
        &restoring(json!({"volume": {"claimName": "old-repo1"}})),
        None,
    );
    assert_refused(
        &with(
            restoring(json!({"s3": s3("backups")})),
            "/spec/bootstrap/restore/source/cluster",
            json!("Old_DB"),
        ),
        None,
        "spec.bootstrap.restore.source.cluster must name a PostgresCluster",
    );
}

#[test]
fn a_restore_target_is_exactly_one_point() {
    assert_ok(&with_target(json!({"time": "2025-06-01T12:00:00Z"})), None);
    assert_ok(
        &with_target(json!({"time": "2025-06-01T12:00:00.123+02:00"})),
        None,
    );
    assert_ok(&with_target(json!({"lsn": "0/3000060"})), None);
    assert_ok(&with_target(json!({"lsn": "1A/FF000000"})), None);
    assert_ok(&with_target(json!({"name": "before-migration 42"})), None);
    assert_ok(&with_target(json!({"backup": "20250601-010000F"})), None);
    assert_ok(
        &with_target(json!({"backup": "20250601-010000F_20250602-010000I"})),
        None,
    );
    let one = "set exactly one of time, lsn, name or backup";
    assert_refused(&with_target(json!({})), None, one);
    assert_refused(
        &with_target(json!({"time": "2025-06-01T12:00:00Z", "lsn": "0/3000060"})),
        None,
        one,
    );
    for bad in [
        "2025-06-01 12:00:00",
        "2025-06-01",
        "2025-13-01T12:00:00Z",
        "yesterday",
        "2025-06-01T25:00:00Z",
    ] {
        assert_refused(
            &with_target(json!({"time": bad})),
            None,
            "target.time must be an RFC 3339 time",
        );
    }
    for bad in ["03000060", "0/", "G/1", "0/3000060/1"] {
        assert_refused(
            &with_target(json!({"lsn": bad})),
            None,
            "target.lsn must be a WAL position",
        );
    }
    for bad in ["x'; restore_command='sh", "a\nb"] {
        assert_refused(
            &with_target(json!({"name": bad})),
            None,
            "target.name must be a restore point name",
        );
    }
    for bad in [
        "latest",
        "20250601-010000",
        "20250601-010000F_20250602-010000F",
    ] {
        assert_refused(
            &with_target(json!({"backup": bad})),
            None,
            "target.backup must be a pgBackRest backup label",
        );
    }
}

#[test]
fn a_restored_cluster_never_archives_into_its_source() {
    let own = |source: Value, repository: Value| {
        with(
            restoring(source),
            "/spec/backup",
            json!({"repositories": [repository]}),
        )
    };
    let refused = "a repository is the restore source's own";
    // Same store, default paths, same cluster name (the default source).
    assert_refused(
        &own(
            json!({"s3": s3("backups")}),
            repository("repo1", "s3", s3("backups")),
        ),
        None,
        refused,
    );
    // Another source cluster: its default path differs.
    let clone = with(
        own(
            json!({"s3": s3("backups")}),
            repository("repo1", "s3", s3("backups")),
        ),
        "/spec/bootstrap/restore/source/cluster",
        json!("old"),
    );
    assert_ok(&clone, None);
    // The same explicit path is the same place, whatever the cluster names.
    let mut at = s3("backups");
    at["path"] = json!("/shared/db");
    let same_path = with(
        own(
            json!({"s3": at.clone()}),
            repository("repo1", "s3", at.clone()),
        ),
        "/spec/bootstrap/restore/source/cluster",
        json!("old"),
    );
    assert_refused(&same_path, None, refused);
    // Another bucket is another place.
    assert_ok(
        &own(
            json!({"s3": s3("backups")}),
            repository("repo1", "s3", s3("other")),
        ),
        None,
    );
    // A volume repository's claim is <cluster>-<repository>.
    assert_refused(
        &own(
            json!({"volume": {"claimName": "db-repo1"}}),
            repository("repo1", "volume", json!({"size": "1Gi"})),
        ),
        None,
        refused,
    );
    assert_ok(
        &own(
            json!({"volume": {"claimName": "db-repo1"}}),
            repository("repo2", "volume", json!({"size": "1Gi"})),
        ),
        None,
    );
    let gcs = json!({"bucket": "pg-backups", "credentials": {"secretName": "g", "key": "k"}});
    assert_refused(
        &own(json!({"gcs": gcs.clone()}), repository("repo3", "gcs", gcs)),
        None,
        refused,
    );
}

// --- PostgresBackup --------------------------------------------------------

fn backup_object(spec: Value) -> Value {
    json!({
        "apiVersion": "capstan.dev/v1alpha1",
        "kind": "PostgresBackup",
        "metadata": {"name": "db-manual", "namespace": "ns"},
        "spec": spec,
    })
}

fn backup_errors(obj: &Value, old: Option<&Value>) -> Vec<String> {
    match Validator::new().validate(&schema_of::<PostgresBackup>(), obj, old) {
        Ok(()) => vec![],
        Err(errs) => errs
            .into_vec()
            .into_iter()
            .map(|e| format!("{}: {}", e.field_path, e.message))
            .collect(),
    }
}

#[test]
fn a_postgres_backup_names_a_cluster_and_a_repository() {
    let ok = backup_object(json!({"cluster": "db"}));
    assert_eq!(backup_errors(&ok, None), Vec::<String>::new());
    let typed = backup_object(
        json!({"cluster": "db", "type": "incremental", "repository": "repo2", "verify": false}),
    );
    assert_eq!(backup_errors(&typed, None), Vec::<String>::new());
    let errs = backup_errors(&backup_object(json!({"cluster": "DB"})), None);
    assert!(
        errs.iter()
            .any(|e| e.contains("spec.cluster must name a PostgresCluster")),
        "{errs:?}"
    );
    let errs = backup_errors(
        &backup_object(json!({"cluster": "db", "repository": "repo9"})),
        None,
    );
    assert!(
        errs.iter()
            .any(|e| e.contains("spec.repository must be repo1")),
        "{errs:?}"
    );
}

#[test]
fn a_postgres_backup_spec_is_immutable() {
    let old = backup_object(json!({"cluster": "db", "type": "full"}));
    assert_eq!(backup_errors(&old, Some(&old)), Vec::<String>::new());
    // Spelling out the default type is no change.
    let defaulted = backup_object(json!({"cluster": "db"}));
    assert_eq!(backup_errors(&defaulted, Some(&old)), Vec::<String>::new());
    for changed in [
        json!({"cluster": "other", "type": "full"}),
        json!({"cluster": "db", "type": "differential"}),
        json!({"cluster": "db", "type": "full", "verify": false}),
    ] {
        let errs = backup_errors(&backup_object(changed), Some(&old));
        assert!(
            errs.iter()
                .any(|e| e.contains("spec of a PostgresBackup is immutable")),
            "{errs:?}"
        );
    }
}

//! Schema-only refinements of the CRD: what the API server can check about a
//! field beyond its Rust type (quantity syntax inside Kubernetes types,
//! enumerations of string fields the operator fills). Used through
//! `#[schemars(schema_with = ...)]`; the Rust types stay as they are.

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde_json::Value;

use super::limits;

/// Adds [`limits::QUANTITY_PATTERN`] to every quantity (an
/// `x-kubernetes-int-or-string` node) inside `schema`, so `cpu: lots` is
/// refused at admission instead of when the operator creates the pod.
fn with_quantity_pattern(schema: Schema) -> Schema {
    fn walk(node: &mut Value) {
        match node {
            Value::Object(map) => {
                if map.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true)) {
                    map.insert("pattern".into(), limits::QUANTITY_PATTERN.into());
                }
                map.values_mut().for_each(walk);
            }
            Value::Array(items) => items.iter_mut().for_each(walk),
            _ => {}
        }
    }
    let mut value = schema.to_value();
    walk(&mut value);
    Schema::try_from(value).expect("a schema stays an object or a bool")
}

/// A `Quantity` that must be well-formed.
pub fn quantity(generator: &mut SchemaGenerator) -> Schema {
    with_quantity_pattern(generator.subschema_for::<Quantity>())
}

/// CPU and memory whose `limits` and `requests` must be well-formed
/// quantities.
pub fn resources(generator: &mut SchemaGenerator) -> Schema {
    with_quantity_pattern(generator.subschema_for::<Option<ResourceRequirements>>())
}

/// A string field whose schema lists the values it may hold.
fn string_enum(values: &[&str]) -> Schema {
    let mut schema = String::json_schema(&mut SchemaGenerator::default());
    schema.insert("enum".into(), values.to_vec().into());
    schema
}

/// `status.instances[].role`.
pub fn instance_role(_: &mut SchemaGenerator) -> Schema {
    string_enum(super::status::INSTANCE_ROLES)
}

/// `status.failover.phase`.
pub fn failover_phase(_: &mut SchemaGenerator) -> Schema {
    string_enum(super::status::FAILOVER_PHASES)
}

/// `status.switchover.phase`.
pub fn switchover_phase(_: &mut SchemaGenerator) -> Schema {
    string_enum(super::status::SWITCHOVER_PHASES)
}

/// `status.upgrade.phase`.
pub fn upgrade_phase(_: &mut SchemaGenerator) -> Schema {
    string_enum(super::status::UPGRADE_PHASES)
}

/// `PostgresBackup` `status.phase`.
pub fn backup_phase(_: &mut SchemaGenerator) -> Schema {
    string_enum(super::pgbackup::BACKUP_PHASES)
}

/// `PostgresBackup` `status.verification.phase`.
pub fn verification_phase(_: &mut SchemaGenerator) -> Schema {
    string_enum(super::pgbackup::VERIFICATION_PHASES)
}

#[cfg(test)]
mod tests {
    //! What the API server checks from the schema alone (patterns, enums,
    //! bounds, list types), read from the generated CRD.

    use kube::CustomResourceExt;
    use serde_json::{Value, json};

    use crate::api::{PostgresCluster, limits};

    fn crd() -> Value {
        serde_json::to_value(PostgresCluster::crd()).expect("json")
    }

    fn schema() -> Value {
        crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
    }

    /// The schema node of a field, by its path of property names.
    fn node(path: &str) -> Value {
        let mut at = schema();
        for part in path.split('.') {
            at = match part {
                "[]" => at["items"].clone(),
                "{}" => at["additionalProperties"].clone(),
                name => at["properties"][name].clone(),
            };
            assert!(!at.is_null(), "{path}: no {part}");
        }
        at
    }

    #[track_caller]
    fn pattern_of(path: &str) -> regex::Regex {
        let pattern = node(path)["pattern"]
            .as_str()
            .unwrap_or_else(|| panic!("{path}: no pattern"))
            .to_string();
        regex::Regex::new(&pattern).expect("pattern")
    }

    #[track_caller]
    fn assert_pattern(path: &str, accepted: &[&str], refused: &[&str]) {
        let re = pattern_of(path);
        for value in accepted {
            assert!(re.is_match(value), "{path}: {value:?} should be accepted");
        }
        for value in refused {
            assert!(!re.is_match(value), "{path}: {value:?} should be refused");
        }
    }

    #[test]
    fn quantities_must_be_well_formed() {
        let good = ["10Gi", "1536Mi", "500m", "2", "1.5", "1e3", "0.5Gi"];
        let bad = ["lots", "10 Gi", "1GB", "Gi", "1.5.2", ""];
        for path in [
            "spec.storage.size",
            "spec.walStorage.size",
            "spec.resources.limits.{}",
            "spec.resources.requests.{}",
            "spec.proxy.pgbouncer.resources.limits.{}",
            "spec.proxy.pgbouncer.resources.requests.{}",
        ] {
            assert_pattern(path, &good, &bad);
            assert_eq!(node(path)["x-kubernetes-int-or-string"], json!(true));
        }
    }

    #[test]
    fn object_names_are_dns_subdomains() {
        for path in [
            "spec.storage.storageClassName",
            "spec.walStorage.storageClassName",
            "spec.tls.provided.caSecretName",
            "spec.tls.provided.serverSecretName",
            "spec.tls.provided.replicationSecretName",
            "spec.tls.provided.poolerSecretName",
        ] {
            assert_pattern(
                path,
                &["fast", "my-ca", "gp3.csi.aws", "db-pooler-tls"],
                &["My_CA", "-ca", "ca-", "ca secret", "a..b"],
            );
            assert_eq!(node(path)["maxLength"], json!(limits::OBJECT_NAME_MAX));
            assert_eq!(node(path)["minLength"], json!(1));
        }
    }

    #[test]
    fn encoding_and_locale_are_plain_names() {
        assert_pattern(
            "spec.bootstrap.initdb.encoding",
            &["UTF8", "UTF-8", "LATIN1", "EUC_JP", "SQL_ASCII"],
            &["UTF8 --no-sync", "UTF8;", "", "utf8\n"],
        );
        assert_pattern(
            "spec.bootstrap.initdb.locale",
            &["C", "C.UTF-8", "en_US.UTF-8", "de_DE@euro", "POSIX"],
            &["en_US.UTF-8 --foo", "C/../x", ""],
        );
        assert_eq!(
            node("spec.bootstrap.initdb.encoding")["maxLength"],
            json!(limits::ENCODING_MAX)
        );
        assert_eq!(
            node("spec.bootstrap.initdb.locale")["maxLength"],
            json!(limits::LOCALE_MAX)
        );
    }

    #[test]
    fn bounds_come_from_the_limits_module() {
        let cases = [
            (
                "spec.postgres.parameters",
                "maxProperties",
                limits::POSTGRES_PARAMETERS_MAX,
            ),
            (
                "spec.postgres.parameters.{}",
                "maxLength",
                limits::POSTGRES_PARAMETER_VALUE_MAX,
            ),
            ("spec.postgres.hba", "maxItems", limits::HBA_LINES_MAX),
            ("spec.postgres.hba.[]", "maxLength", limits::HBA_LINE_MAX),
            (
                "spec.proxy.pgbouncer.parameters",
                "maxProperties",
                limits::PGBOUNCER_PARAMETERS_MAX,
            ),
            (
                "spec.proxy.pgbouncer.parameters.{}",
                "maxLength",
                limits::PGBOUNCER_PARAMETER_VALUE_MAX,
            ),
            (
                "spec.bootstrap.initdb.database",
                "maxLength",
                limits::SQL_IDENTIFIER_MAX,
            ),
            (
                "spec.bootstrap.initdb.owner",
                "maxLength",
                limits::SQL_IDENTIFIER_MAX,
            ),
            ("spec.postgres.image", "maxLength", limits::IMAGE_MAX),
            ("spec.proxy.pgbouncer.image", "maxLength", limits::IMAGE_MAX),
        ];
        for (path, key, value) in cases {
            assert_eq!(node(path)[key], json!(value), "{path}.{key}");
        }
    }

    /// Descriptions spell some bounds out for `kubectl explain`; they must
    /// say what the rules enforce.
    #[test]
    fn descriptions_state_the_bounds_the_rules_enforce() {
        for (path, range) in [
            ("spec.postgres.version", limits::POSTGRES_VERSIONS),
            ("spec.proxy.pgbouncer.replicas", limits::POOLER_REPLICAS),
            ("spec.failover.detectionSeconds", limits::DETECTION_SECONDS),
        ] {
            let text = format!("({} to {})", range.start(), range.end());
            let description = node(path)["description"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            assert!(
                description.contains(&text),
                "{path}: {description:?} lacks {text}"
            );
        }
    }

    #[test]
    fn status_enums_list_what_the_operator_writes() {
        assert_eq!(
            node("status.phase")["enum"],
            json!(["Creating", "Ready", "Degraded", "Stalled"])
        );
        assert_eq!(
            node("status.instances.[].role")["enum"],
            json!(["primary", "replica"])
        );
        assert_eq!(
            node("status.failover.phase")["enum"],
            json!(super::super::status::FAILOVER_PHASES)
        );
        assert_eq!(
            node("status.switchover.phase")["enum"],
            json!(super::super::status::SWITCHOVER_PHASES)
        );
        for path in [
            "status.instances.[].role",
            "status.failover.phase",
            "status.switchover.phase",
        ] {
            assert_eq!(node(path)["type"], json!("string"), "{path}");
        }
    }

    #[test]
    fn conditions_are_a_list_map_keyed_by_type() {
        let conditions = node("status.conditions");
        assert_eq!(conditions["x-kubernetes-list-type"], json!("map"));
        assert_eq!(conditions["x-kubernetes-list-map-keys"], json!(["type"]));
        // A list-map key must be required (or defaulted) in every item.
        let required = conditions["items"]["required"]
            .as_array()
            .expect("required");
        assert!(required.contains(&json!("type")));
    }

    #[test]
    fn backup_lists_are_bounded_list_maps_keyed_by_name() {
        for (path, max) in [
            (
                "spec.backup.repositories",
                *limits::BACKUP_REPOSITORIES.end(),
            ),
            ("spec.backup.schedules", limits::BACKUP_SCHEDULES_MAX),
        ] {
            let list = node(path);
            assert_eq!(list["x-kubernetes-list-type"], json!("map"), "{path}");
            assert_eq!(
                list["x-kubernetes-list-map-keys"],
                json!(["name"]),
                "{path}"
            );
            assert_eq!(list["maxItems"], json!(max), "{path}");
            let required = list["items"]["required"].as_array().expect("required");
            assert!(required.contains(&json!("name")), "{path}");
        }
        assert_eq!(node("spec.backup.repositories")["minItems"], json!(1));
        // Absent by default: a cluster without backups stays as it was.
        assert!(node("spec.backup").get("default").is_none());
        assert!(node("spec.bootstrap.restore").get("default").is_none());
        // A default on initdb would be filled in next to restore.
        assert!(node("spec.bootstrap.initdb").get("default").is_none());
        assert!(node("spec.bootstrap")["default"]["initdb"].is_object());
    }

    #[test]
    fn backup_names_and_buckets_follow_the_stores_rules() {
        assert_pattern(
            "spec.backup.repositories.[].s3.bucket",
            &["backups", "pg.backups-1", "abc"],
            &["Backups", "ab", "-backups", "backups-", "my_bucket"],
        );
        assert_pattern(
            "spec.backup.repositories.[].azure.account",
            &["acct1", "abc"],
            &["Acct", "ab", "my-account"],
        );
        for path in [
            "spec.backup.repositories.[].s3.credentials.accessKeyIdKey",
            "spec.backup.repositories.[].s3.caSecret.key",
            "spec.backup.repositories.[].gcs.credentials.key",
        ] {
            assert_pattern(
                path,
                &["AWS_ACCESS_KEY_ID", "ca.crt", "key-1"],
                &["a b", "a/b", ""],
            );
        }
        assert_pattern(
            "spec.bootstrap.restore.source.repository.volume.claimName",
            &["db-repo1"],
            &["DB", "db_repo1"],
        );
        assert_eq!(
            node("spec.backup.repositories.[].s3.credentials.secretAccessKeyKey")["default"],
            json!("AWS_SECRET_ACCESS_KEY")
        );
        assert_eq!(node("spec.backup.archive.timeout")["default"], json!("60s"));
        assert_eq!(node("spec.backup.target")["default"], json!("primary"));
        assert_eq!(
            node("spec.backup.verify")["default"],
            json!({"enabled": true})
        );
        assert_eq!(
            node("spec.backup.repositories.[].s3.uriStyle")["enum"],
            json!(["host", "path"])
        );
    }

    #[test]
    fn azure_and_gcs_repositories_have_their_own_key_types() {
        for kind in [
            "spec.backup.repositories.[]",
            "spec.bootstrap.restore.source.repository",
        ] {
            let azure = |f: &str| node(&format!("{kind}.azure.{f}"));
            let gcs = |f: &str| node(&format!("{kind}.gcs.{f}"));
            assert_eq!(azure("uriStyle")["enum"], json!(["host", "path"]));
            assert_eq!(
                azure("credentials.keyType")["enum"],
                json!(["shared", "sas"])
            );
            assert_eq!(
                gcs("credentials.keyType")["enum"],
                json!(["service", "token"])
            );
            assert_eq!(azure("verifyTls")["default"], json!(true));
            assert_eq!(gcs("verifyTls")["default"], json!(true));
            for node in [azure("credentials"), gcs("credentials")] {
                assert_eq!(node["required"], json!(["key", "secretName"]), "{kind}");
            }
        }
    }

    fn backup_crd() -> Value {
        serde_json::to_value(crate::api::PostgresBackup::crd()).expect("json")
    }

    #[test]
    fn postgres_backup_is_a_namespaced_kind_with_printer_columns() {
        let cluster_crd = crd();
        let crd = backup_crd();
        assert_eq!(
            crd["metadata"]["name"],
            json!("postgresbackups.capstan.dev")
        );
        assert_eq!(crd["spec"]["group"], cluster_crd["spec"]["group"]);
        assert_eq!(crd["spec"]["scope"], json!("Namespaced"));
        assert_eq!(crd["spec"]["names"]["shortNames"], json!(["pgbackup"]));
        let version = &crd["spec"]["versions"][0];
        assert_eq!(version["name"], cluster_crd["spec"]["versions"][0]["name"]);
        assert!(version["subresources"]["status"].is_object());
        let columns: Vec<&str> = version["additionalPrinterColumns"]
            .as_array()
            .expect("columns")
            .iter()
            .filter_map(|c| c["name"].as_str())
            .collect();
        assert_eq!(
            columns,
            ["Cluster", "Type", "Phase", "Label", "Verified", "Age"]
        );
        let status = &version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"];
        assert_eq!(
            status["phase"]["enum"],
            json!(["Pending", "Running", "Verifying", "Completed", "Failed"])
        );
        assert_eq!(
            status["verification"]["properties"]["phase"]["enum"],
            json!(super::super::pgbackup::VERIFICATION_PHASES)
        );
        assert_eq!(
            status["conditions"]["x-kubernetes-list-map-keys"],
            json!(["type"])
        );
        // Every printer column points at a field that exists.
        let root = &version["schema"]["openAPIV3Schema"];
        for column in version["additionalPrinterColumns"].as_array().unwrap() {
            let path = column["jsonPath"].as_str().unwrap().trim_start_matches('.');
            if path.starts_with("metadata") {
                continue;
            }
            let field = path
                .split('.')
                .fold(root, |at, name| &at["properties"][name]);
            assert!(field.is_object(), "{path}");
        }
    }

    /// `kubectl scale` and a HorizontalPodAutoscaler use the scale
    /// subresource: the paths must name fields of the right type.
    #[test]
    fn scale_subresource_points_at_existing_fields() {
        let crd = crd();
        let scale = &crd["spec"]["versions"][0]["subresources"]["scale"];
        assert_eq!(scale["specReplicasPath"], json!(".spec.instances"));
        assert_eq!(scale["statusReplicasPath"], json!(".status.readyInstances"));
        assert_eq!(scale["labelSelectorPath"], json!(".status.selector"));
        for (key, kind) in [
            ("specReplicasPath", "integer"),
            ("statusReplicasPath", "integer"),
            ("labelSelectorPath", "string"),
        ] {
            let path = scale[key].as_str().unwrap().trim_start_matches('.');
            assert_eq!(node(path)["type"], json!(kind), "{key}: {path}");
        }
        assert_eq!(node("spec.instances")["format"], json!("int32"));
        assert!(crd["spec"]["versions"][0]["subresources"]["status"].is_object());
    }
}

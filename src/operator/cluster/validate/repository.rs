//! Checks of `spec.backup` repositories and the restore source that CEL
//! cannot make (or that an API server without CEL let through), each
//! naming the field and the fix.

use crate::api::backup::{
    AzureRepository, BackupRepository, BackupSpec, BackupTarget, GcsRepository, RestoreSpec,
    S3Repository, UriStyle, default_repository_path, volume_repository_claim,
};

use super::{SpecError, invalid};

/// Why `backup` cannot be carried out by this build, naming the fix. The
/// cluster is Stalled with it and nothing of `spec.backup` is rendered.
pub(super) fn unsupported_backup(backup: &BackupSpec) -> Option<String> {
    const UNTIL: &str = "No backups are taken and WAL is not archived until then";
    for r in &backup.repositories {
        // CEL refuses this at admission (`rules::standby_backups_need_object_stores`).
        if r.volume.is_some() && backup.target == BackupTarget::PreferReplica {
            return Some(format!(
                "spec.backup.repositories[{}]: a volume repository cannot be combined with spec.backup.target: preferReplica (a standby taking a backup reaches the primary through pgBackRest's server, and pgBackRest cannot also reach a repository host from there); set target: primary, or use s3, azure or gcs repositories. {UNTIL}",
                r.name
            ));
        }
        if let Some(problem) = r.azure.as_ref().and_then(azure_problem) {
            return Some(format!(
                "spec.backup.repositories[{}].{problem}. {UNTIL}",
                r.name
            ));
        }
    }
    if let Some(message) = crate::operator::cluster::schedule::invalid(&backup.schedules) {
        return Some(format!("{message}. {UNTIL}"));
    }
    None
}

/// CEL refuses this at admission (`rules::azure_path_style_needs_endpoint`).
fn azure_problem(azure: &AzureRepository) -> Option<String> {
    (azure.uri_style == UriStyle::Path && azure.endpoint.is_none()).then(|| {
        "azure.uriStyle: path puts the account in the path, which only emulators such as Azurite accept; set azure.endpoint to the emulator's host:port, or use uriStyle host for Azure".to_string()
    })
}

/// Why `bootstrap.restore` cannot be carried out, naming the field and the
/// fix. Nothing is created meanwhile, so the cluster never starts empty.
pub(super) fn unsupported_restore(
    restore: &RestoreSpec,
    backup: Option<&BackupSpec>,
    namespace: &str,
    name: &str,
) -> Option<SpecError> {
    let r = &restore.source.repository;
    let field = "spec.bootstrap.restore.source.repository";
    match (&r.s3, &r.azure, &r.gcs, &r.volume) {
        (Some(_), None, None, None) | (None, None, Some(_), None) => {}
        (None, Some(azure), None, None) => {
            if let Some(problem) = azure_problem(azure) {
                return Some(invalid(&format!("{field}.azure.uriStyle"), problem));
            }
        }
        (None, None, None, Some(source)) => {
            // Its own volume repository on that claim would archive into it.
            let clash = backup?.repositories.iter().find(|b| {
                b.volume.is_some() && volume_repository_claim(name, &b.name) == source.claim_name
            })?;
            return Some(into_source(clash));
        }
        _ => {
            return Some(invalid(
                field,
                "set exactly one of s3, azure, gcs or volume",
            ));
        }
    }
    let source_cluster = restore.source.cluster.as_deref().unwrap_or(name);
    let source = Location::of(&r.s3, &r.azure, &r.gcs, namespace, source_cluster)?;
    let clash = backup?.repositories.iter().find(|b| {
        Location::of(&b.s3, &b.azure, &b.gcs, namespace, name).as_ref() == Some(&source)
    })?;
    Some(into_source(clash))
}

/// A restored cluster starts a new timeline; archiving it into the
/// source's repository would mix two histories in one archive. CEL checks
/// this for default paths; an explicit path equal to a default one needs
/// the namespace, which only the operator sees.
fn into_source(repo: &BackupRepository) -> SpecError {
    invalid(
        &format!("spec.backup.repositories[{}]", repo.name),
        "is the restore source's own repository (same store and path); a restored cluster starts a new timeline and must archive elsewhere: give it another path",
    )
}

/// Where a repository's files are: the store and the path in it.
#[derive(Debug, PartialEq, Eq)]
enum Location<'a> {
    S3 {
        endpoint: &'a str,
        bucket: &'a str,
        path: String,
    },
    Azure {
        endpoint: Option<&'a str>,
        account: &'a str,
        container: &'a str,
        path: String,
    },
    Gcs {
        endpoint: Option<&'a str>,
        bucket: &'a str,
        path: String,
    },
}

impl<'a> Location<'a> {
    fn of(
        s3: &'a Option<S3Repository>,
        azure: &'a Option<AzureRepository>,
        gcs: &'a Option<GcsRepository>,
        namespace: &str,
        cluster: &str,
    ) -> Option<Self> {
        let path = |p: &Option<String>| {
            p.clone()
                .unwrap_or_else(|| default_repository_path(namespace, cluster))
        };
        if let Some(s) = s3 {
            return Some(Self::S3 {
                endpoint: &s.endpoint,
                bucket: &s.bucket,
                path: path(&s.path),
            });
        }
        if let Some(a) = azure {
            return Some(Self::Azure {
                endpoint: a.endpoint.as_deref(),
                account: &a.account,
                container: &a.container,
                path: path(&a.path),
            });
        }
        gcs.as_ref().map(|g| Self::Gcs {
            endpoint: g.endpoint.as_deref(),
            bucket: &g.bucket,
            path: path(&g.path),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn backup(repositories: serde_json::Value) -> BackupSpec {
        serde_json::from_value(json!({ "repositories": repositories })).unwrap()
    }

    fn restore(repository: serde_json::Value, cluster: Option<&str>) -> RestoreSpec {
        serde_json::from_value(json!({"source": {"repository": repository, "cluster": cluster}}))
            .unwrap()
    }

    fn azure(extra: serde_json::Value) -> serde_json::Value {
        let mut a = json!({"account": "devstoreaccount1", "container": "pg",
            "credentials": {"secretName": "az", "key": "k"}});
        a.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        a
    }

    fn gcs(path: Option<&str>) -> serde_json::Value {
        json!({"bucket": "pg-backups", "path": path,
            "credentials": {"secretName": "gcs", "key": "key.json"}})
    }

    #[test]
    fn azure_and_gcs_repositories_are_supported() {
        let b = backup(json!([{"name": "repo1", "azure": azure(json!({}))},
                               {"name": "repo2", "gcs": gcs(None)}]));
        assert_eq!(unsupported_backup(&b), None);
        for source in [
            json!({"azure": azure(json!({}))}),
            json!({"gcs": gcs(None)}),
        ] {
            assert_eq!(
                unsupported_restore(&restore(source, Some("orders")), None, "ns", "db"),
                None
            );
        }
    }

    #[test]
    fn a_path_style_azure_repository_needs_an_endpoint() {
        let b = backup(json!([{"name": "repo1", "azure": azure(json!({"uriStyle": "path"}))}]));
        let message = unsupported_backup(&b).unwrap();
        assert!(
            message.starts_with("spec.backup.repositories[repo1].azure.uriStyle: path"),
            "{message}"
        );
        assert!(message.contains("set azure.endpoint"), "{message}");
        let r = restore(json!({"azure": azure(json!({"uriStyle": "path"}))}), None);
        let err = unsupported_restore(&r, None, "ns", "db").unwrap();
        assert_eq!(
            err.field,
            "spec.bootstrap.restore.source.repository.azure.uriStyle"
        );
        let ok = backup(json!([{"name": "repo1", "azure":
            azure(json!({"uriStyle": "path", "endpoint": "azurite:10000"}))}]));
        assert_eq!(unsupported_backup(&ok), None);
    }

    #[test]
    fn volumes_are_taken_but_not_from_a_replica() {
        let mut on_replica = backup(json!([{"name": "repo1", "gcs": gcs(None)}]));
        on_replica.target = crate::api::backup::BackupTarget::PreferReplica;
        assert_eq!(unsupported_backup(&on_replica), None);
        let mut b = backup(json!([{"name": "repo2", "volume": {"size": "1Gi"}}]));
        assert_eq!(unsupported_backup(&b), None);
        b.target = crate::api::backup::BackupTarget::PreferReplica;
        let message = unsupported_backup(&b).unwrap();
        assert!(
            message.contains("repositories[repo2]: a volume repository cannot be combined with spec.backup.target: preferReplica"),
            "{message}"
        );
        let r = restore(json!({"volume": {"claimName": "orders-repo1"}}), None);
        assert_eq!(unsupported_restore(&r, None, "ns", "db"), None);
        // Re-created on its retained volume: it must archive to another one.
        let own = backup(json!([{"name": "repo1", "volume": {"size": "1Gi"}}]));
        let err = unsupported_restore(&r, Some(&own), "ns", "orders").unwrap();
        assert_eq!(err.field, "spec.backup.repositories[repo1]");
        assert_eq!(unsupported_restore(&r, Some(&own), "ns", "db"), None);
    }

    #[test]
    fn archiving_into_the_sources_own_path_is_refused() {
        // The source's default path written out: CEL cannot see the namespace.
        let own = backup(json!([{"name": "repo1", "gcs": gcs(Some("/capstan/ns/orders"))}]));
        let r = restore(json!({"gcs": gcs(None)}), Some("orders"));
        let err = unsupported_restore(&r, Some(&own), "ns", "db").unwrap();
        assert_eq!(err.field, "spec.backup.repositories[repo1]");
        assert!(err.message.contains("another path"), "{err}");
        // Its own default path differs from the source's.
        let mine = backup(json!([{"name": "repo1", "gcs": gcs(None)}]));
        assert_eq!(unsupported_restore(&r, Some(&mine), "ns", "db"), None);
        // Another namespace's default path is another place.
        assert_eq!(unsupported_restore(&r, Some(&own), "other", "db"), None);
        // The same path in another container is another place.
        let az = |container: &str| json!({"azure": azure(json!({"container": container, "path": "/x"}))});
        let other = backup(json!([{"name": "repo1", "azure": az("pg2")["azure"]}]));
        assert_eq!(
            unsupported_restore(&restore(az("pg"), None), Some(&other), "ns", "db"),
            None
        );
        let same = backup(json!([{"name": "repo1", "azure": az("pg")["azure"]}]));
        assert!(unsupported_restore(&restore(az("pg"), None), Some(&same), "ns", "db").is_some());
    }
}

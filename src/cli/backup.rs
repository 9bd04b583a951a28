//! `kubectl capstan backup`: creates a `PostgresBackup` (what a user would
//! `kubectl apply`) and follows it until it is taken and, when it is
//! verified, until the verification ends.

use kube::api::PostParams;

use super::{CliError, Connection, Session};
use crate::api::PostgresCluster;
use crate::api::backup::BackupType;
use crate::api::pgbackup::{PostgresBackup, PostgresBackupSpec};
use crate::resources::labels;

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// The PostgresCluster.
    pub cluster: String,
    /// `full`, `differential` or `incremental`.
    #[arg(long = "type", value_enum, default_value_t = Kind::Full)]
    pub kind: Kind,
    /// Repository (`repo1`…`repo4`; default the first one listed).
    #[arg(long)]
    pub repository: Option<String>,
    /// Verify the backup by restoring it (default: the cluster's setting).
    #[arg(long, conflicts_with = "no_verify")]
    pub verify: bool,
    /// Do not verify the backup.
    #[arg(long)]
    pub no_verify: bool,
    /// Name of the PostgresBackup (default `<cluster>-<UTC time>`).
    #[arg(long)]
    pub name: Option<String>,
    /// Seconds to wait for the outcome (0: do not wait).
    #[arg(long, default_value_t = 1800)]
    pub wait: u64,
    #[command(flatten)]
    pub connection: Connection,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq)]
pub enum Kind {
    Full,
    Differential,
    Incremental,
}

/// The `PostgresBackup` to create, or why not.
pub fn backup(
    cluster: &PostgresCluster,
    args: &Args,
    now: jiff::Timestamp,
) -> Result<PostgresBackup, CliError> {
    let name = cluster.metadata.name.clone().unwrap_or_default();
    let Some(spec) = cluster.spec.backup.as_ref() else {
        return Err(CliError::Refused(format!(
            "PostgresCluster {name} has no spec.backup; add a repository there first (README: Backups)"
        )));
    };
    if let Some(repo) = &args.repository
        && !spec.repositories.iter().any(|r| &r.name == repo)
    {
        return Err(CliError::Refused(format!(
            "PostgresCluster {name} has no repository {repo}; its repositories: {}",
            spec.repositories
                .iter()
                .map(|r| r.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let object_name = args.name.clone().unwrap_or_else(|| {
        let time = now.strftime("%Y%m%d%H%M%S").to_string();
        // Object names are at most 253 characters; cluster names far less.
        format!("{name}-{time}")
    });
    let mut object = PostgresBackup::new(
        &object_name,
        PostgresBackupSpec {
            cluster: name.clone(),
            type_: match args.kind {
                Kind::Full => BackupType::Full,
                Kind::Differential => BackupType::Differential,
                Kind::Incremental => BackupType::Incremental,
            },
            repository: args.repository.clone(),
            verify: match (args.verify, args.no_verify) {
                (true, _) => Some(true),
                (_, true) => Some(false),
                _ => None,
            },
        },
    );
    object.metadata.labels = Some([(labels::CLUSTER.to_string(), name)].into());
    Ok(object)
}

pub async fn run(args: Args) -> Result<(), CliError> {
    let session = Session::connect(&args.connection).await?;
    let cluster = session.cluster(&args.cluster).await?;
    let object = backup(&cluster, &args, jiff::Timestamp::now())?;
    let name = object.metadata.name.clone().unwrap_or_default();
    let api = session.api::<PostgresBackup>();
    api.create(&PostParams::default(), &object)
        .await
        .map_err(|e| session.error(&format!("creating PostgresBackup {name}"), e))?;
    println!("PostgresBackup {name} created");
    let mut last = String::new();
    let mut follow = super::Follow::new(args.wait);
    while follow.next().await? {
        let Ok(b) = api.get(&name).await else {
            continue;
        };
        let status = b.status.unwrap_or_default();
        let phase = status.phase.clone().unwrap_or_else(|| "Pending".into());
        let verification = status.verification.as_ref().map(|v| v.phase.clone());
        let now = format!("{phase} {}", verification.clone().unwrap_or_default());
        if now != last {
            let mut line = phase.clone();
            if let Some(label) = &status.label {
                line.push_str(&format!(", label {label}"));
            }
            if let Some(v) = &verification {
                line.push_str(&format!(", verification {v}"));
            }
            if let Some(m) = status.message.as_deref().filter(|m| !m.is_empty()) {
                line.push_str(&format!(": {m}"));
            }
            println!("{line}");
            last = now;
        }
        match (phase.as_str(), verification.as_deref()) {
            ("Failed", _) => {
                return Err(CliError::Failed(format!(
                    "backup {name} failed: {}",
                    status.message.unwrap_or_default()
                )));
            }
            ("Completed", Some("Failed")) => {
                return Err(CliError::Failed(format!(
                    "backup {name} was taken but did not restore: see `kubectl describe pgbackup {name}`"
                )));
            }
            ("Completed", None | Some("Passed" | "Skipped")) => return Ok(()),
            _ => {}
        }
    }
    println!("not waiting (--wait 0); follow it with `kubectl get pgbackup {name} -w`");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn args(argv: &[&str]) -> Args {
        Cli::parse_from(std::iter::once("backup").chain(argv.iter().copied())).args
    }

    fn cluster(backup: bool) -> PostgresCluster {
        let mut spec = crate::resources::model::fixtures::model().spec;
        if backup {
            spec.backup = serde_json::from_value(serde_json::json!({
                "repositories": [{"name": "repo1", "volume": {"size": "1Gi"}}],
            }))
            .unwrap();
        }
        PostgresCluster::new("db", spec)
    }

    #[test]
    fn the_backup_object_says_what_was_asked() {
        let now: jiff::Timestamp = "2026-12-06T17:05:09Z".parse().unwrap();
        let b = backup(
            &cluster(true),
            &args(&["db", "--type", "incremental", "--no-verify"]),
            now,
        )
        .unwrap();
        assert_eq!(b.metadata.name.as_deref(), Some("db-20261206170509"));
        assert_eq!(b.spec.cluster, "db");
        assert_eq!(b.spec.type_, BackupType::Incremental);
        assert_eq!(b.spec.verify, Some(false));
        assert_eq!(b.spec.repository, None);
        assert_eq!(b.metadata.labels.unwrap()[labels::CLUSTER], "db");
        let b = backup(
            &cluster(true),
            &args(&["db", "--name", "before-migration"]),
            now,
        )
        .unwrap();
        assert_eq!(b.metadata.name.as_deref(), Some("before-migration"));
        assert_eq!((b.spec.type_, b.spec.verify), (BackupType::Full, None));
    }

    #[test]
    fn a_cluster_without_backups_or_that_repository_is_refused() {
        let now = jiff::Timestamp::UNIX_EPOCH;
        let e = backup(&cluster(false), &args(&["db"]), now)
            .unwrap_err()
            .to_string();
        assert!(e.contains("has no spec.backup"), "{e}");
        let e = backup(&cluster(true), &args(&["db", "--repository", "repo2"]), now)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "PostgresCluster db has no repository repo2; its repositories: repo1"
        );
    }
}

//! `capstan check-image`: the one process of an image-check pod, run on a
//! PostgreSQL image before any instance pod gets it (a minor update, or
//! the target of a major upgrade). It checks that the image's `postgres`
//! is the major the cluster needs and, with backups, that it has a usable
//! pgBackRest; the result goes to the termination message. Exits non-zero
//! when the image cannot be used. For a major upgrade it also rehearses the
//! upgrade on a copy of the running primary
//! ([`crate::instance::upgrade_check`]).

use std::path::PathBuf;

use crate::contract::image_check::{ImageCheckResult, UpgradeRehearsal};
use crate::contract::layout;
use crate::contract::settings::InstanceSettings;
use crate::instance::binaries::{self, Binaries};
use crate::instance::upgrade_check::Rehearsal;

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// The PostgreSQL major the image must run.
    #[arg(long)]
    pub major: i32,
    /// Backups are configured: pgBackRest must be there too.
    #[arg(long)]
    pub pgbackrest: bool,
    /// Directory of the PostgreSQL binaries [default: `postgres` on PATH,
    /// else /usr/lib/postgresql/<major>/bin].
    #[arg(long, env = "CAPSTAN_PG_BIN_DIR")]
    pub pg_bin_dir: Option<PathBuf>,
    /// Where the result goes (the container's `terminationMessagePath`).
    #[arg(long, default_value = layout::TERMINATION_LOG)]
    pub termination_log: PathBuf,
    /// A major upgrade from this major: rehearse it (pg_upgrade --check and
    /// --link) on a copy of the running primary.
    #[arg(long)]
    pub upgrade_from: Option<u32>,
    /// The old major's installation, copied from its image.
    #[arg(long, env = "CAPSTAN_OLD_POSTGRES_DIR", default_value = layout::OLD_POSTGRES_DIR)]
    pub old_postgres_dir: PathBuf,
    /// Directory of the mounted ConfigMap (holds `instance.json`: how to
    /// reach the primary).
    #[arg(long, env = "CAPSTAN_CONFIG_DIR", default_value = layout::CONFIG_DIR)]
    pub config_dir: PathBuf,
    /// Holds `replication/`, the certificate the copy is taken with.
    #[arg(long, env = "CAPSTAN_TLS_DIR", default_value = layout::TLS_DIR)]
    pub tls_dir: PathBuf,
    /// Where the copy is made (emptied first).
    #[arg(long, default_value = layout::UPGRADE_CHECK_SCRATCH)]
    pub scratch: PathBuf,
    /// Port of the copy's private servers (Unix socket in the scratch only).
    #[arg(long, default_value_t = layout::POSTGRES_PORT)]
    pub port: u16,
}

pub fn run(args: Args) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    let result = runtime.block_on(check(&args));
    let message = result.to_message();
    if let Err(e) = std::fs::write(&args.termination_log, &message) {
        tracing::warn!(path = %args.termination_log.display(), error = %e, "cannot write the termination message; the operator falls back to the log");
    }
    println!("{message}");
    match result.error {
        None => Ok(()),
        Some(e) => Err(e),
    }
}

pub async fn check(args: &Args) -> ImageCheckResult {
    let bins = match Binaries::resolve(args.pg_bin_dir.as_deref(), args.major).await {
        Ok(b) => b,
        Err(e) => {
            return ImageCheckResult {
                passed: false,
                error: Some(e.to_string()),
                ..ImageCheckResult::default()
            };
        }
    };
    let mut result = ImageCheckResult {
        passed: true,
        version: Some(bins.version.clone()),
        ..ImageCheckResult::default()
    };
    if args.pgbackrest {
        let path = binaries::pgbackrest_path(None, Some(&bins.dir));
        match binaries::check_pgbackrest(&path).await {
            Ok(v) => result.pgbackrest = Some(v),
            Err(e) => {
                result.passed = false;
                result.error = Some(e.to_string());
                return result;
            }
        }
    }
    if let Some(from) = args.upgrade_from {
        match rehearse(args, bins, from).await {
            Ok(r) => result.upgrade = Some(r),
            Err(e) => {
                result.passed = false;
                result.rehearsal_failed = true;
                result.error = Some(e);
            }
        }
    }
    result
}

/// pg_upgrade from `from` to `new`, on a copy of the running primary.
async fn rehearse(args: &Args, new: Binaries, from: u32) -> Result<UpgradeRehearsal, String> {
    let dir = binaries::old_bin_dir(&args.old_postgres_dir, from);
    let old = Binaries::resolve(Some(&dir), i32::try_from(from).unwrap_or(i32::MAX))
        .await
        .map_err(|e| {
            format!("the PostgreSQL {from} binaries copied from the running image: {e}")
        })?;
    let path = args.config_dir.join(layout::files::INSTANCE_SETTINGS);
    let settings: InstanceSettings = std::fs::read_to_string(&path)
        .map_err(|e| e.to_string())
        .and_then(|text| serde_json::from_str(&text).map_err(|e| e.to_string()))
        .map_err(|e| {
            format!(
                "cannot read {}: {e}; the pod mounts the cluster's ConfigMap there",
                path.display()
            )
        })?;
    let rehearsal = Rehearsal {
        settings,
        old,
        new,
        scratch: args.scratch.clone(),
        tls_dir: args.tls_dir.clone(),
        config_dir: args.config_dir.clone(),
        port: args.port,
    };
    tracing::info!(
        from,
        to = rehearsal.new.major,
        "rehearsing the major upgrade on a copy of the primary"
    );
    let done = rehearsal.run().await.map_err(|e| e.to_string())?;
    tracing::info!(
        from,
        to = rehearsal.new.major,
        link_bytes = done.link_bytes,
        "the upgrade rehearsal passed"
    );
    let ms = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    Ok(UpgradeRehearsal {
        from,
        database_bytes: done.database_bytes,
        link_bytes: done.link_bytes,
        copy_ms: ms(done.copy),
        pg_upgrade_ms: ms(done.pg_upgrade),
        extensions: done.extensions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(dir: &std::path::Path, major: i32) -> Args {
        Args {
            major,
            pgbackrest: false,
            pg_bin_dir: Some(dir.to_path_buf()),
            termination_log: dir.join("termination-log"),
            upgrade_from: None,
            old_postgres_dir: dir.join("old"),
            config_dir: dir.join("config"),
            tls_dir: dir.join("tls"),
            scratch: dir.join("scratch"),
            port: 5432,
        }
    }

    /// A `postgres` that prints the version it is told to.
    fn fake_postgres(version: &str) -> tempfile::TempDir {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("postgres");
        std::fs::write(
            &bin,
            format!("#!/bin/sh\necho 'postgres (PostgreSQL) {version}'\n"),
        )
        .unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        dir
    }

    #[tokio::test]
    async fn an_image_of_another_major_is_refused_with_the_fix() {
        let dir = fake_postgres("16.4 (Debian 16.4-1)");
        let r = check(&args(dir.path(), 17)).await;
        assert!(!r.passed);
        let e = r.error.unwrap();
        assert!(e.contains("PostgreSQL 16") && e.contains("17"), "{e}");
        let ok = check(&args(dir.path(), 16)).await;
        assert!(ok.passed, "{ok:?}");
        assert_eq!(ok.version.as_deref(), Some("16.4"));
    }

    #[tokio::test]
    async fn backups_need_a_recent_pgbackrest_in_the_image() {
        use std::os::unix::fs::PermissionsExt;
        let dir = fake_postgres("17.2");
        let mut a = args(dir.path(), 17);
        a.pgbackrest = true;
        let beside = dir.path().join("pgbackrest");
        for (version, passes) in [("2.45", false), ("2.55.1", true)] {
            std::fs::write(&beside, format!("#!/bin/sh\necho 'pgBackRest {version}'\n")).unwrap();
            std::fs::set_permissions(&beside, std::fs::Permissions::from_mode(0o755)).unwrap();
            let r = check(&a).await;
            assert_eq!(r.passed, passes, "{version}: {r:?}");
            if !passes {
                assert!(r.error.unwrap().contains("too old"));
            }
        }
    }

    #[tokio::test]
    async fn no_postgres_at_all_says_where_it_looked() {
        let dir = tempfile::tempdir().unwrap();
        let r = check(&args(dir.path(), 17)).await;
        assert!(!r.passed);
        assert!(r.error.unwrap().contains("does not exist"));
    }
}

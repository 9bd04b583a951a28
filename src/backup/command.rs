//! The pgBackRest commands Capstan runs, as argument vectors. Pure: no
//! argument ever carries a credential (pgBackRest refuses keys on the
//! command line anyway), so an argv can be logged as is.

use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum BackupType {
    Full,
    Diff,
    Incr,
}

impl BackupType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Full => "full",
            Self::Diff => "diff",
            Self::Incr => "incr",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "full" => Some(Self::Full),
            "diff" => Some(Self::Diff),
            "incr" => Some(Self::Incr),
            _ => None,
        }
    }
}

/// Where recovery stops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestoreTarget {
    /// The end of the archived WAL (`--type=default`).
    Latest,
    /// The end of the backup being restored: consistency (`--type=immediate`).
    EndOfBackup,
    /// A point in time (`--type=time`); commits at or before it are kept.
    Time(jiff::Timestamp),
    /// A WAL location such as `0/3000050` (`--type=lsn`).
    Lsn(String),
    /// A restore point made with `pg_create_restore_point` (`--type=name`).
    Name(String),
}

/// What a restored server does when it reaches the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetAction {
    Promote,
    Pause,
    Shutdown,
}

/// A restore into `pg_path` (an empty directory, or with `delta`, an old copy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restore {
    pub pg_path: PathBuf,
    /// A backup label (`--set`); the newest suitable backup otherwise.
    pub set: Option<String>,
    pub repo: Option<u32>,
    pub target: RestoreTarget,
    pub target_action: TargetAction,
    /// `Some("current")` keeps recovery on the backup's timeline: needed on
    /// PostgreSQL 12+ when a later timeline in the archive (a failover after
    /// the target) would otherwise be followed.
    pub target_timeline: Option<String>,
    /// Sets `archive_mode=off` in the restored copy (verification, and a
    /// clone before its own stanza exists), so it never archives into the
    /// source's repository.
    pub archive_off: bool,
    pub delta: bool,
}

impl Restore {
    pub fn new(pg_path: impl Into<PathBuf>, target: RestoreTarget) -> Self {
        Self {
            pg_path: pg_path.into(),
            set: None,
            repo: None,
            target,
            target_action: TargetAction::Promote,
            target_timeline: None,
            archive_off: false,
            delta: false,
        }
    }
}

/// A backup taken on a standby (`--backup-standby`): the primary is
/// `pg2`, reached through its pgBackRest TLS server; its data directory,
/// port and socket are where the standby has its own (same pod layout).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Standby {
    pub primary_host: String,
    pub port: u16,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub ca_file: PathBuf,
    pub pg_path: PathBuf,
    pub pg_port: u16,
    pub pg_socket_path: PathBuf,
    pub pg_user: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operation {
    StanzaCreate,
    /// After a major upgrade: the stanza takes the new version and system.
    StanzaUpgrade,
    Check,
    Backup {
        kind: BackupType,
        repo: Option<u32>,
        standby: Option<Standby>,
    },
    /// `info --output=json`, optionally for one backup (`--set`).
    Info {
        repo: Option<u32>,
        set: Option<String>,
    },
    /// Expires by the configured retention, or one backup with `set`.
    Expire {
        repo: Option<u32>,
        set: Option<String>,
    },
    Restore(Restore),
}

impl Operation {
    /// The pgBackRest command name (for logs and errors).
    pub fn name(&self) -> &'static str {
        match self {
            Self::StanzaCreate => "stanza-create",
            Self::StanzaUpgrade => "stanza-upgrade",
            Self::Check => "check",
            Self::Backup { .. } => "backup",
            Self::Info { .. } => "info",
            Self::Expire { .. } => "expire",
            Self::Restore(_) => "restore",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error(
        "a restore to the latest point cannot take a target action (pgBackRest refuses --target-action with --type=default); use the end of a backup, a time, an LSN or a name"
    )]
    ActionWithoutTarget,
    #[error(
        "a restore to the end of a backup stops on that backup's timeline; pgBackRest refuses --target-timeline with --type=immediate"
    )]
    TimelineWithImmediate,
    #[error("the restore target {0:?} is empty")]
    EmptyTarget(&'static str),
    #[error("the LSN {0:?} is not of the form 0/3000050")]
    BadLsn(String),
    #[error("the backup label {0:?} is not a pgBackRest label such as 20261204-191306F")]
    BadLabel(String),
}

/// `--type=time` value: PostgreSQL's timestamptz syntax in UTC, which
/// pgBackRest also parses to pick the backup to start from.
pub fn format_target_time(at: jiff::Timestamp) -> String {
    at.strftime("%Y-%m-%d %H:%M:%S%.6f+00").to_string()
}

fn valid_lsn(lsn: &str) -> bool {
    let Some((hi, lo)) = lsn.split_once('/') else {
        return false;
    };
    let hex = |s: &str| !s.is_empty() && s.len() <= 8 && s.chars().all(|c| c.is_ascii_hexdigit());
    hex(hi) && hex(lo)
}

/// Labels look like `20261204-191306F` or `20261204-191306F_20261204-191309I`.
pub fn valid_label(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= 64
        && label
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// The argv after the pgBackRest binary: `--config` and `--stanza` first,
/// then the command, then its options.
pub fn argv(
    config: &std::path::Path,
    stanza: &str,
    op: &Operation,
) -> Result<Vec<String>, CommandError> {
    let mut args = vec![
        format!("--config={}", config.display()),
        format!("--stanza={stanza}"),
    ];
    let repo = |args: &mut Vec<String>, repo: &Option<u32>| {
        if let Some(n) = repo {
            args.push(format!("--repo={n}"));
        }
    };
    let set = |args: &mut Vec<String>, set: &Option<String>| -> Result<(), CommandError> {
        if let Some(label) = set {
            if !valid_label(label) {
                return Err(CommandError::BadLabel(label.clone()));
            }
            args.push(format!("--set={label}"));
        }
        Ok(())
    };
    match op {
        Operation::StanzaCreate | Operation::StanzaUpgrade | Operation::Check => {
            args.push(op.name().into())
        }
        Operation::Backup {
            kind,
            repo: r,
            standby,
        } => {
            args.push("backup".into());
            args.push(format!("--type={}", kind.as_str()));
            repo(&mut args, r);
            if let Some(s) = standby {
                // pg1 (the config's) is this standby; pg2 the primary.
                args.extend([
                    "--backup-standby=y".to_string(),
                    format!("--pg2-host={}", s.primary_host),
                    "--pg2-host-type=tls".to_string(),
                    format!("--pg2-host-port={}", s.port),
                    format!("--pg2-host-cert-file={}", s.cert_file.display()),
                    format!("--pg2-host-key-file={}", s.key_file.display()),
                    format!("--pg2-host-ca-file={}", s.ca_file.display()),
                    format!("--pg2-path={}", s.pg_path.display()),
                    format!("--pg2-port={}", s.pg_port),
                    format!("--pg2-socket-path={}", s.pg_socket_path.display()),
                    format!("--pg2-user={}", s.pg_user),
                ]);
            }
        }
        Operation::Info { repo: r, set: s } => {
            args.push("info".into());
            args.push("--output=json".into());
            repo(&mut args, r);
            set(&mut args, s)?;
        }
        Operation::Expire { repo: r, set: s } => {
            args.push("expire".into());
            repo(&mut args, r);
            set(&mut args, s)?;
        }
        Operation::Restore(restore) => {
            args.push("restore".into());
            args.push(format!("--pg1-path={}", restore.pg_path.display()));
            repo(&mut args, &restore.repo);
            set(&mut args, &restore.set)?;
            let (kind, target) = match &restore.target {
                RestoreTarget::Latest => ("default", None),
                RestoreTarget::EndOfBackup => ("immediate", None),
                RestoreTarget::Time(at) => ("time", Some(format_target_time(*at))),
                RestoreTarget::Lsn(lsn) => {
                    if !valid_lsn(lsn) {
                        return Err(CommandError::BadLsn(lsn.clone()));
                    }
                    ("lsn", Some(lsn.clone()))
                }
                RestoreTarget::Name(name) => {
                    if name.is_empty() {
                        return Err(CommandError::EmptyTarget("name"));
                    }
                    ("name", Some(name.clone()))
                }
            };
            args.push(format!("--type={kind}"));
            if let Some(target) = target {
                args.push(format!("--target={target}"));
            }
            match (&restore.target, restore.target_action) {
                // Recovery runs to the end of WAL and promotes by itself.
                (RestoreTarget::Latest, TargetAction::Promote) => {}
                (RestoreTarget::Latest, _) => return Err(CommandError::ActionWithoutTarget),
                (_, action) => args.push(format!(
                    "--target-action={}",
                    match action {
                        TargetAction::Promote => "promote",
                        TargetAction::Pause => "pause",
                        TargetAction::Shutdown => "shutdown",
                    }
                )),
            }
            if let Some(timeline) = &restore.target_timeline {
                if restore.target == RestoreTarget::EndOfBackup {
                    return Err(CommandError::TimelineWithImmediate);
                }
                args.push(format!("--target-timeline={timeline}"));
            }
            if restore.archive_off {
                args.push("--archive-mode=off".into());
            }
            if restore.delta {
                args.push("--delta".into());
            }
        }
    }
    Ok(args)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn run(op: Operation) -> Result<Vec<String>, CommandError> {
        argv(Path::new("/etc/pgbackrest.conf"), "db", &op)
    }

    fn tail(op: Operation) -> String {
        run(op).unwrap()[2..].join(" ")
    }

    #[test]
    fn every_command_names_config_and_stanza_first() {
        let args = run(Operation::Check).unwrap();
        assert_eq!(
            args,
            ["--config=/etc/pgbackrest.conf", "--stanza=db", "check"]
        );
        assert_eq!(tail(Operation::StanzaCreate), "stanza-create");
        assert_eq!(tail(Operation::StanzaUpgrade), "stanza-upgrade");
    }

    #[test]
    fn backup_info_and_expire_options() {
        assert_eq!(
            tail(Operation::Backup {
                kind: BackupType::Incr,
                repo: Some(2),
                standby: None,
            }),
            "backup --type=incr --repo=2"
        );
        let standby = Standby {
            primary_host: "db-rw.ns.svc".into(),
            port: 8432,
            cert_file: "/tls/tls.crt".into(),
            key_file: "/tls/tls.key".into(),
            ca_file: "/tls/ca.crt".into(),
            pg_path: "/data/pgdata".into(),
            pg_port: 5432,
            pg_socket_path: "/run".into(),
            pg_user: "postgres".into(),
        };
        assert_eq!(
            tail(Operation::Backup {
                kind: BackupType::Full,
                repo: Some(1),
                standby: Some(standby),
            }),
            "backup --type=full --repo=1 --backup-standby=y --pg2-host=db-rw.ns.svc \
             --pg2-host-type=tls --pg2-host-port=8432 --pg2-host-cert-file=/tls/tls.crt \
             --pg2-host-key-file=/tls/tls.key --pg2-host-ca-file=/tls/ca.crt \
             --pg2-path=/data/pgdata --pg2-port=5432 --pg2-socket-path=/run --pg2-user=postgres"
        );
        assert_eq!(
            tail(Operation::Info {
                repo: None,
                set: Some("20261204-191306F".into())
            }),
            "info --output=json --set=20261204-191306F"
        );
        assert_eq!(
            tail(Operation::Expire {
                repo: Some(1),
                set: None
            }),
            "expire --repo=1"
        );
        assert!(matches!(
            run(Operation::Expire {
                repo: None,
                set: Some("x --repo1-path=/".into())
            }),
            Err(CommandError::BadLabel(_))
        ));
    }

    #[test]
    fn restore_targets() {
        let at: jiff::Timestamp = "2026-12-04T19:13:06.123456Z".parse().unwrap();
        let cases = [
            (RestoreTarget::Latest, "--type=default"),
            (
                RestoreTarget::EndOfBackup,
                "--type=immediate --target-action=promote",
            ),
            (
                RestoreTarget::Time(at),
                "--type=time --target=2026-12-04 19:13:06.123456+00 --target-action=promote",
            ),
            (
                RestoreTarget::Lsn("0/3000050".into()),
                "--type=lsn --target=0/3000050 --target-action=promote",
            ),
            (
                RestoreTarget::Name("before-upgrade".into()),
                "--type=name --target=before-upgrade --target-action=promote",
            ),
        ];
        for (target, expected) in cases {
            let got = tail(Operation::Restore(Restore::new("/scratch/pgdata", target)));
            assert_eq!(
                got,
                format!("restore --pg1-path=/scratch/pgdata {expected}")
            );
        }
    }

    #[test]
    fn restore_of_one_backup_for_verification() {
        let mut r = Restore::new("/scratch/pgdata", RestoreTarget::EndOfBackup);
        r.set = Some("20261204-191306F_20261204-191309I".into());
        r.repo = Some(1);
        r.archive_off = true;
        r.delta = true;
        assert_eq!(
            tail(Operation::Restore(r.clone())),
            "restore --pg1-path=/scratch/pgdata --repo=1 --set=20261204-191306F_20261204-191309I \
             --type=immediate --target-action=promote --archive-mode=off --delta"
        );
        r.target_timeline = Some("current".into());
        assert_eq!(
            run(Operation::Restore(r)),
            Err(CommandError::TimelineWithImmediate)
        );
        let mut t = Restore::new("/d", RestoreTarget::Lsn("0/3000050".into()));
        t.target_timeline = Some("current".into());
        assert!(
            tail(Operation::Restore(t))
                .ends_with("--target-action=promote --target-timeline=current")
        );
    }

    #[test]
    fn restore_refuses_what_pgbackrest_would() {
        let mut latest = Restore::new("/d", RestoreTarget::Latest);
        latest.target_action = TargetAction::Pause;
        assert_eq!(
            run(Operation::Restore(latest)),
            Err(CommandError::ActionWithoutTarget)
        );
        for lsn in ["3000050", "0/", "0/xyz", "0/3000050; rm"] {
            assert!(matches!(
                run(Operation::Restore(Restore::new(
                    "/d",
                    RestoreTarget::Lsn(lsn.into())
                ))),
                Err(CommandError::BadLsn(_))
            ));
        }
        assert!(
            run(Operation::Restore(Restore::new(
                "/d",
                RestoreTarget::Name(String::new())
            )))
            .is_err()
        );
    }
}

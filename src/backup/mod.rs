//! Backups with pgBackRest, the parts the instance manager runs: the
//! repository model, `pgbackrest.conf` and the archive settings, command
//! lines, `info` parsing, a runner that reports pgBackRest's own error, and
//! verification by restore. Everything but the runner and verification is
//! pure; the API types map onto [`repository`] in the operator.

pub mod command;
pub mod config;
pub mod info;
pub mod repository;
pub mod runner;
pub mod server;
pub mod verify;

pub use command::{BackupType, Operation, Restore, RestoreTarget, Standby, TargetAction};
pub use config::{BackrestConfig, Invocation, Secret, Secrets, Stanza, TlsServer};
pub use info::{Backup, StanzaInfo};
pub use repository::{Repository, Retention, Storage};
pub use runner::{RunError, Runner};
pub use verify::{Sentinel, Verification, VerifyError, VerifyReport, verify_by_restore};

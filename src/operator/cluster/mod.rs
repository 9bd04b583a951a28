//! The `PostgresCluster` reconcile pipeline (DESIGN §4):
//! observe → validate → plan → apply → report.

pub mod agent_upgrade;
pub mod apply;
pub mod backup;
pub mod certificates;
pub mod execute;
pub mod failover;
pub mod image_check;
pub mod observe;
pub mod operation;
pub mod plan;
pub mod restore;
pub mod retention;
pub mod schedule;
pub mod status;
pub mod storage;
pub mod switchover;
pub mod upgrade;
pub mod validate;
pub mod verify;

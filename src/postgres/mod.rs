//! PostgreSQL facts shared by the operator and the instance manager.

pub mod conf;
pub mod conninfo;
pub mod controldata;
pub mod hba;
pub mod lsn;
pub mod parameters;
pub mod pooler_auth;
pub mod roles;
pub mod sql;
pub mod synchronous;

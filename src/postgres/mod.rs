//! PostgreSQL facts shared by the operator and the instance manager.

pub mod lsn;
pub mod parameters;
pub mod pooler_auth;
pub mod roles;

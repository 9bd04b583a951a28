//! Capstan: a Kubernetes operator for PostgreSQL behind PgBouncer.

pub mod api;
pub mod contract;
pub mod instance;
pub mod pooler;
pub mod postgres;

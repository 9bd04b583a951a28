//! Capstan: a Kubernetes operator for PostgreSQL behind PgBouncer.

pub mod agents;
pub mod api;
pub mod backup;
pub mod cli;
pub mod contract;
pub mod image_check;
pub mod instance;
pub mod monitoring;
pub mod operator;
pub mod pooler;
pub mod postgres;
pub mod render;
pub mod repo_host;
pub mod resources;
pub mod tls;
pub mod verify;

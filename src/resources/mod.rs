//! Pure builders of every child object of a `PostgresCluster`.

pub mod backup;
pub mod config;
pub mod image_check;
pub mod instance;
pub mod labels;
pub mod lease;
pub mod model;
pub mod names;
pub mod pdb;
pub mod proxy;
pub mod quantity;
pub mod rbac;
pub mod repo_host;
pub mod restore;
pub mod secrets;
pub mod services;
pub mod upgrade;
pub mod verify;

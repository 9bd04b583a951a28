//! The Capstan API (`capstan.dev/v1alpha1`): `PostgresCluster` and
//! `PostgresBackup`.

pub mod backup;
pub mod cluster;
pub mod crd;
pub mod defaults;
pub mod limits;
pub mod pgbackup;
pub mod roles;
pub mod rules;
pub mod schema;
pub mod status;

pub use backup::*;
pub use cluster::*;
pub use pgbackup::*;
pub use roles::*;
pub use status::*;

//! The Capstan API: `PostgresCluster` (`capstan.dev/v1alpha1`).

pub mod cluster;
pub mod crd;
pub mod defaults;
pub mod limits;
pub mod rules;
pub mod schema;
pub mod status;

pub use cluster::*;
pub use status::*;

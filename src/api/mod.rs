//! The Capstan API: `PostgresCluster` (`capstan.dev/v1alpha1`).

pub mod cluster;
pub mod crd;
pub mod defaults;
pub mod rules;
pub mod status;

pub use cluster::*;
pub use status::*;

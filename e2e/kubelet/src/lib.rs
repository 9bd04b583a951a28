//! Process kubelet and Service proxy for the e2e harness (test infrastructure,
//! never part of the product).

pub mod config;
mod controller;
pub mod dns;
pub mod downward;
pub mod endpoints;
pub mod env;
pub mod images;
pub mod ipam;
pub mod objects;
mod pod;
pub mod portforward;
pub mod probe;
pub mod proxy;
pub mod quantity;
pub mod runtime;
pub mod sys;
pub mod tokens;
pub mod users;
pub mod volumes;

pub use config::{
    ApiServerAccess, Controllers, KubeletConfig, NodeSettings, RestartBackoff, SIMULATED_ANNOTATION,
};
pub use controller::{Kubelet, KubeletError, run};
pub use dns::{DnsTable, Resolver};
pub use images::{ImageKind, ImageTable};
pub use ipam::Cidr;
pub use objects::{MemoryObjects, ObjectSource};
pub use portforward::KubeletServing;
pub use proxy::{ProxyUpdate, ServiceProxy};
pub use runtime::{FaultError, PodEvent, Runtime, RuntimeHandle};
pub use sys::Signal;
pub use users::IdMapping;

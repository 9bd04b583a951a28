//! Process kubelet and Service proxy for the e2e harness (test infrastructure,
//! never part of the product).

pub mod config;
pub mod downward;
pub mod env;
pub mod images;
pub mod ipam;
pub mod objects;
pub mod probe;
pub mod quantity;
pub mod sys;
pub mod users;
pub mod volumes;

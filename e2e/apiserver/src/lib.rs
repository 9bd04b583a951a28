//! Emulated Kubernetes API server for Capstan's e2e harness (test
//! infrastructure only, never part of the product).
//!
//! An HTTPS server speaking the Kubernetes REST API well enough for the
//! unchanged kube client, kube-runtime controllers and `kubectl`: built-in
//! and CRD-defined resources, list/watch with resourceVersions, optimistic
//! concurrency, patches and server-side apply, status subresources,
//! finalizers, garbage collection, CRD schema validation and CEL rules.
//! Start it with [`ApiServer::start`]. What is faithful and what is
//! approximated is listed in the crate's README.md.

mod api;
mod apply;
mod builtin;
mod crd;
mod delete;
mod discovery;
mod disruption;
mod endpoints;
mod fields;
mod gc;
mod meta;
mod patch;
mod pki;
mod protobuf;
mod resources;
mod routes;
mod selectors;
mod server;
mod status;
mod store;
mod table;
mod watch;
mod write;

pub use api::RequestCounts;
pub use server::{ApiServer, ClientError, Config, StartError};

//! What the operator and the in-pod agents (instance manager, pooler
//! supervisor) agree on: where files are mounted, ports, environment
//! variables, the settings documents in the cluster ConfigMap, and the JSON of
//! the agents' HTTPS APIs. Both sides import these, so a change shows up as a
//! compile error on the other side instead of a broken pod.

pub mod agent;
pub mod backup;
pub mod image_check;
pub mod instance;
pub mod layout;
pub mod pooler;
pub mod restore;
pub mod roles;
pub mod settings;
pub mod upgrade;
pub mod verify;

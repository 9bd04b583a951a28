//! Certificates on a running cluster: Capstan's own replaced (leaves and
//! the CA), and the user's own (`tls.mode: Provided`). One test binary, so
//! the scenarios run side by side.

#[path = "tls_certificates/provided.rs"]
mod provided;
#[path = "tls_certificates/rotation.rs"]
mod rotation;

//! Certificates on a running cluster: Capstan's own replaced (leaves and
//! the CA), and the user's own (`tls.mode: Provided`).

mod provided;
mod rotation;

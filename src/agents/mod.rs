//! What the operator and the agents share for the agents' HTTPS APIs: the
//! rustls configurations (server side in the pods, client side in the
//! operator) and the generic client.

pub mod client;
pub mod instance;
pub mod tls;

//! What the operator and the two agents (instance manager, pooler
//! supervisor) share: the rustls configurations (server side in the pods,
//! client side in the operator), the agents' HTTPS serving and middleware,
//! their PID 1 duties, and the generic client.

pub mod binary;
pub mod client;
pub mod instance;
pub mod pid1;
pub mod server;
pub mod tls;

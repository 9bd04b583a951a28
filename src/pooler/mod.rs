//! The proxy tier: PgBouncer settings.

pub mod managed;

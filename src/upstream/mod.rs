//! Upstreams: targets, their health, our own connection pool, and balancing.

pub mod health;

//! Accepting client connections and serving HTTP/1.1 on them; closing them gracefully.

pub mod drain;
pub mod h1;
pub mod listener;
pub mod redirect;
pub mod tls;
pub mod workers;

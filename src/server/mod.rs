//! Accepting client connections and serving HTTP/1.1 on them; closing them gracefully.

pub mod drain;
pub mod idle;
pub mod listener;

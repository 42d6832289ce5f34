//! Accepting client connections and serving HTTP/1.1 on them.

pub mod listener;

//! What gatewise tells operators: the access log and the admin listener.

pub mod access_log;
pub mod admin;

//! What gatewise tells operators: the access log, the metrics and the admin listener.

pub mod access_line;
pub mod access_log;
pub mod admin;
pub mod metrics;
pub mod status;

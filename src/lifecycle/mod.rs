//! The process's life with its service manager: systemd readiness notifications.

pub mod systemd;

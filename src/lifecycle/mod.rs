//! The process's life with its service manager and its successor: systemd readiness
//! notifications, and handing the listening sockets to a new binary.

pub mod systemd;
pub mod upgrade;

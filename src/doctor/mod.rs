//! Diagnosing other people's proxies: `gatewise explain` (log files → causes and fixes).

pub mod explain;

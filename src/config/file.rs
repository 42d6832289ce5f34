//! The raw TOML shape of a config file (serde, unknown fields refused).

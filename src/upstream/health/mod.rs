//! Target health: the pure state machine, active checks and passive ejection.

pub mod active;
pub mod passive;
pub mod pool_rules;
pub mod state;

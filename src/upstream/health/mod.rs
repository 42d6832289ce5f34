//! Target health: the pure state machine, active checks and passive ejection.

pub mod state;

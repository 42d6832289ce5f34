//! Target health: the pure state machine, active checks and passive ejection.
//!
//! - [`state`]: one [`state::TargetHealth`] per target turns observations (active check
//!   results, traffic outcomes, discovery, time) into a [`state::State`] and returns each
//!   [`state::Transition`] once for the caller to log and count.
//! - [`active`]: [`active::probe`] one target, [`active::run_checks`] every target on an
//!   interval; its report feeds `TargetHealth::active_check`.
//! - [`passive`]: which attempt outcomes feed `TargetHealth::traffic`, and as what.
//! - [`pool_rules`]: how many targets may be ejected, and when the pool panics.

pub mod active;
pub mod passive;
pub mod pool_rules;
pub mod state;

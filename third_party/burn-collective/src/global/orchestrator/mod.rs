pub(crate) mod base;
pub(crate) mod state;

pub use base::{replay_requests, sample_requests, start_global_orchestrator};

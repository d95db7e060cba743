//! agent-budget (skeleton; see README).
pub mod pbstruct;
pub mod sse;
pub mod usage;

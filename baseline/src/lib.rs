//! # agent-budget-baseline
//!
//! Reads agent-budget's attribution log (one JSON record per call) in one streaming pass
//! and derives, per agent, its tasks, tokens and cost per task and per day, the
//! 90th-percentile daily cost and a recommended daily budget; optionally what the same
//! traffic would cost on another model, priced with the filter's own price table.

pub mod chart;
pub mod cli;
pub mod input;
pub mod record;
pub mod report;
pub mod reprice;
pub mod stats;

//! # agent-budget as a proxy-wasm filter
//!
//! Adapts Envoy's callbacks to the host-free core (`agent-budget-core`) and applies what it
//! decides; builds `agent_budget.wasm`. Only a wasm32 build talks to a proxy-wasm host
//! (`proxy`); what the callbacks do (`adapter`) and the parsing of the host's wire formats
//! (`wire`) build natively too, so they are tested against fake hosts.

pub mod adapter;
#[cfg(target_arch = "wasm32")]
mod proxy;
pub mod wire;

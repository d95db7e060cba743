//! # agent-budget as a proxy-wasm filter
//!
//! Adapts Envoy's callbacks to the host-free core (`agent-budget-core`) and applies what it
//! decides; builds `agent_budget.wasm`. Only a wasm32 build talks to a proxy-wasm host: the
//! pure parsing of the host's wire formats lives apart so it is tested natively too.

#[cfg(target_arch = "wasm32")]
mod proxy;
pub mod wire;

//! # agent-budget as a proxy-wasm filter
//!
//! Binds the adapter's seams (`agent-budget-adapter`) to the proxy-wasm ABI and forwards
//! Envoy's callbacks to it; builds `agent_budget.wasm`. Only a wasm32 build talks to a
//! proxy-wasm host (`proxy`); what the callbacks do and the wire formats live in the adapter
//! crate, tested natively against fake hosts.

#[cfg(target_arch = "wasm32")]
mod proxy;

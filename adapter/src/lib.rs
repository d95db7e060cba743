//! # agent-budget's Envoy callbacks, host-independent
//!
//! What each of Envoy's callbacks does (`adapter`) over the core crate, and the parsing of
//! the proxy-wasm ABI's header-map wire format (`wire`). The proxy-wasm build (the root
//! crate's `src/proxy.rs`) and the native dynamic module (`native/`) bind the adapter's seams
//! to their ABIs; natively the tests bind them to fakes.

pub mod adapter;
pub mod wire;

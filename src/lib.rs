//! # agent-budget
//!
//! Per-agent LLM budgets enforced inside Envoy. This proxy-wasm HTTP filter names the agent
//! of each call from a header, checks its daily and monthly budgets in a ledger kept in
//! proxy-wasm shared data (one per Envoy, shared by all workers), stops calls whose budget
//! is used up with a provider-shaped 429, and meters each response (JSON, or SSE streams
//! passed through chunk by chunk) from the usage the provider reports, priced in integer
//! micro-USD. Per-agent figures leave as Envoy stats.
//!
//! Layout: everything but [`proxy`] is plain Rust over the [`host::Host`] trait and is
//! unit-tested natively; [`proxy`] is the only module that talks to the proxy-wasm ABI.

pub mod alerts;
pub mod booking;
pub mod config;
pub mod degrade;
pub mod filter;
pub mod host;
pub mod identity;
pub mod ledger;
pub mod metrics;
pub mod pbstruct;
pub mod period;
pub mod policy;
pub mod pricing;
pub mod providers;
#[cfg(all(target_arch = "wasm32", not(test)))]
pub mod proxy;
pub mod root;
pub mod sse;
pub mod usage;

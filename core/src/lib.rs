//! # agent-budget core
//!
//! Per-agent LLM budgets, independent of any proxy. This crate names the agent of each call,
//! checks its daily and monthly budgets in a ledger kept in the host's shared store, decides
//! whether the call is stopped, degraded to a cheaper model or let through with an alert,
//! and meters each response (JSON, or SSE streams passed through chunk by chunk) from the
//! usage the provider reports, priced in integer micro-USD.
//!
//! It sees its host only through the [`host::Host`] trait; a host crate (the proxy-wasm
//! filter in the repository root) reads Envoy's callbacks into plain values, calls
//! [`filter::Call`] and applies what comes back. This crate has no proxy-wasm dependency,
//! so nothing here can reach the host any other way.

pub mod alerts;
pub mod anomaly;
pub mod attribution;
pub mod booking;
pub mod config;
pub mod degrade;
pub mod filter;
pub mod fleet;
pub mod history;
pub mod host;
pub mod identity;
pub mod ledger;
pub mod metrics;
pub mod pbstruct;
pub mod period;
pub mod policy;
pub mod pricing;
pub mod providers;
pub mod replies;
pub mod root;
pub mod sse;
pub mod status;
pub mod stripper;
pub mod top;
pub mod usage;

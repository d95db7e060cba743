//! # agent-budget as an Envoy dynamic module
//!
//! The same configuration, metering, policies, headers, replies, alerts and attribution as
//! the proxy-wasm build, as a shared library Envoy loads with its `dynamic_modules` HTTP
//! filter (ABI v0.2.0): the adapter crate's callbacks, bound to the dynamic-module ABI.
//!
//! - `ffi`: the ABI's declarations, safe wrappers and the exported hooks (all the `unsafe`).
//! - `module`: configurations, per-worker state, streams and the main-thread tick.
//! - `host`: the adapter's seams (`Host`, `Abi`) for one hook.
//! - `jwt_guard`: `identity.source: jwt` through `jwt_authn`'s claim headers, and the
//!   guard filter that makes them trustworthy.
//! - `store`: the process-wide shared data the ledger keeps budgets in.
//! - `metrics`: the core's metrics as Envoy stats with labels.
//! - `logger`: `log` records into Envoy's log.

mod ffi;
mod host;
mod jwt_guard;
mod logger;
mod metrics;
mod module;
mod store;

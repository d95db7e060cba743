//! The adapter's two seams (the core's `Host` and the adapter's `Abi`) over Envoy's
//! dynamic-module ABI, for one hook: on a stream (a worker thread, with its filter) or on the
//! main thread (configuration, tick and callout replies, without one).
//!
//! What the ABI has no call for is kept here: shared data is the process-wide [`Store`],
//! metrics wait in the configuration's registry for the tick, and a local reply is sent
//! when the adapter is done with the hook (Envoy runs the stream's response hooks within
//! the send, and they must find the stream free).

use crate::ffi::{Filter, Headers};
use crate::jwt_guard;
use crate::module::{Shared, Worker};
use crate::store::Store;
use agent_budget_adapter::adapter::{Abi, Buffer, Map};
use agent_budget_core::config::JWT_AUTHN_NAMESPACE;
use agent_budget_core::host::{Host, HostError, MetricKind, Versioned};
use std::cell::RefCell;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// proxy-wasm's statuses, which the core and its metrics labels already know.
const NOT_FOUND: HostError = HostError::Status(1);
const BAD_ARGUMENT: HostError = HostError::Status(2);
const INTERNAL_FAILURE: HostError = HostError::Status(10);
const UNIMPLEMENTED: HostError = HostError::Status(12);

/// The filter-state key of the attribution record: the wasm build's, so one access-log
/// format (`%FILTER_STATE(wasm.agent_budget:PLAIN)%`, envoy/access-log.yaml) serves both.
const ATTRIBUTION_KEY: &str = "wasm.agent_budget";

/// A local reply the adapter asked for, sent after the hook's adapter call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u32,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

pub struct NativeHost<'a> {
    shared: &'a Shared,
    /// The stream of the hook; None on the main thread.
    filter: Option<Filter>,
    /// On the main thread, the worker being ticked (its webhook replies come back to it).
    worker: Option<&'a Arc<Worker>>,
    /// The `:status` of the callout reply being handled.
    callout_status: Option<u32>,
    /// The body of the callout reply being handled (a fleet sync's totals).
    callout_body: &'a [u8],
    reply: RefCell<Option<Reply>>,
    request_body: RefCell<Option<Vec<u8>>>,
}

impl<'a> NativeHost<'a> {
    pub fn stream(shared: &'a Shared, filter: Filter) -> NativeHost<'a> {
        NativeHost {
            shared,
            filter: Some(filter),
            worker: None,
            callout_status: None,
            callout_body: &[],
            reply: RefCell::new(None),
            request_body: RefCell::new(None),
        }
    }

    /// On the main thread: configuring (no worker) or ticking `worker`.
    pub fn main(shared: &'a Shared, worker: Option<&'a Arc<Worker>>) -> NativeHost<'a> {
        NativeHost {
            shared,
            filter: None,
            worker,
            callout_status: None,
            callout_body: &[],
            reply: RefCell::new(None),
            request_body: RefCell::new(None),
        }
    }

    /// On the main thread, answering a callout whose reply had `status` (0: none) and `body`.
    pub fn callout_reply(
        shared: &'a Shared,
        worker: &'a Arc<Worker>,
        status: u32,
        body: &'a [u8],
    ) -> NativeHost<'a> {
        NativeHost {
            callout_status: Some(status),
            callout_body: body,
            ..NativeHost::main(shared, Some(worker))
        }
    }

    /// The local reply the adapter asked for, if any (taken: it is sent once).
    pub fn take_reply(&self) -> Option<Reply> {
        self.reply.borrow_mut().take()
    }

    fn filter(&self) -> Result<Filter, HostError> {
        self.filter.ok_or(UNIMPLEMENTED)
    }

    /// A verified claim: the value of the header jwt_authn wrote it to, trusted only when
    /// the guard removed the client's own claim headers first. Two values (two providers
    /// writing one header) name no one.
    fn jwt_claim(&self, claim: &str) -> Result<Option<Vec<u8>>, HostError> {
        let filter = self.filter()?;
        if !jwt_guard::guarded(filter) {
            self.shared.say_unguarded();
            return Ok(None);
        }
        let header = jwt_guard::claim_header(claim);
        let mut values = Vec::new();
        filter.visit_headers(Headers::Request, &mut |name, value| {
            if name == header {
                values.push(value.as_bytes().to_vec());
            }
        });
        Ok(match values.len() {
            1 => values.pop(),
            _ => None,
        })
    }

    fn request_body_slice(&self, start: usize, max_size: usize) -> Result<Vec<u8>, HostError> {
        let filter = self.filter()?;
        let mut cached = self.request_body.borrow_mut();
        if cached.is_none() {
            *cached = Some(filter.request_body().ok_or(INTERNAL_FAILURE)?);
        }
        let body = cached.as_deref().unwrap_or_default();
        Ok(body
            .get(start.min(body.len())..)
            .unwrap_or_default()
            .iter()
            .take(max_size)
            .copied()
            .collect())
    }
}

fn headers_of(map: Map) -> Option<Headers> {
    match map {
        Map::RequestHeaders => Some(Headers::Request),
        Map::ResponseHeaders => Some(Headers::Response),
        Map::CallResponseHeaders => None,
    }
}

impl Host for NativeHost<'_> {
    fn now_unix_nanos(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| {
                u64::try_from(since.as_nanos()).unwrap_or(u64::MAX)
            })
    }

    fn shared_get(&self, key: &str) -> Result<Option<Versioned>, HostError> {
        Store::global().get(key)
    }

    fn shared_set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), HostError> {
        Store::global().set(key, value, cas)
    }

    /// Only the tick sends webhooks, and it runs on the main thread, where the ABI's
    /// configuration-level callout is.
    fn dispatch_http(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        timeout_ms: u32,
    ) -> Result<u32, HostError> {
        let (None, Some(worker)) = (self.filter, self.worker) else {
            return Err(UNIMPLEMENTED);
        };
        self.shared
            .callout(worker, cluster, headers, body, timeout_ms)
            .ok_or(INTERNAL_FAILURE)
    }

    fn define_metric(&self, kind: MetricKind, name: &str) -> Result<u32, HostError> {
        self.shared.metrics.define(kind, name)
    }

    fn increment_metric(&self, id: u32, delta: i64) -> Result<(), HostError> {
        self.shared.metrics.increment(id, delta)
    }

    fn record_metric(&self, id: u32, value: u64) -> Result<(), HostError> {
        self.shared.metrics.record(id, value)
    }
}

impl Abi for NativeHost<'_> {
    /// Envoy's header array, visited in place. A callout reply's map is its one `:status`
    /// (the ABI's callout hook hands over nothing else).
    fn visit_headers(&self, map: Map, visit: &mut dyn FnMut(&str, &str)) -> Result<(), HostError> {
        let Some(headers) = headers_of(map) else {
            let status = self.callout_status.ok_or(NOT_FOUND)?.to_string();
            visit(":status", &status);
            return Ok(());
        };
        if self.filter()?.visit_headers(headers, visit) {
            Ok(())
        } else {
            Err(NOT_FOUND)
        }
    }

    fn set_header(&self, map: Map, name: &str, value: &str) -> Result<(), HostError> {
        let headers = headers_of(map).ok_or(BAD_ARGUMENT)?;
        if self.filter()?.set_header(headers, name, Some(value)) {
            Ok(())
        } else {
            Err(INTERNAL_FAILURE)
        }
    }

    fn remove_header(&self, map: Map, name: &str) -> Result<(), HostError> {
        let headers = headers_of(map).ok_or(BAD_ARGUMENT)?;
        if self.filter()?.set_header(headers, name, None) {
            Ok(())
        } else {
            Err(INTERNAL_FAILURE)
        }
    }

    fn get_buffer(
        &self,
        buffer: Buffer,
        start: usize,
        max_size: usize,
    ) -> Result<Vec<u8>, HostError> {
        match buffer {
            Buffer::PluginConfiguration => Ok(self
                .shared
                .configuration
                .get(start.min(self.shared.configuration.len())..)
                .unwrap_or_default()
                .iter()
                .take(max_size)
                .copied()
                .collect()),
            Buffer::RequestBody => self.request_body_slice(start, max_size),
            Buffer::ResponseBody => {
                let chunk = self.filter()?.response_chunk().ok_or(INTERNAL_FAILURE)?;
                Ok(chunk.into_iter().skip(start).take(max_size).collect())
            }
            Buffer::CallResponseBody => {
                self.callout_status.ok_or(NOT_FOUND)?;
                Ok(self
                    .callout_body
                    .iter()
                    .skip(start)
                    .take(max_size)
                    .copied()
                    .collect())
            }
        }
    }

    /// The adapter only ever replaces a whole body (or chunk): `start` 0 and `size` all of it.
    fn set_buffer(
        &self,
        buffer: Buffer,
        start: usize,
        _size: usize,
        bytes: &[u8],
    ) -> Result<(), HostError> {
        if start != 0 {
            return Err(BAD_ARGUMENT);
        }
        let filter = self.filter()?;
        let replaced = match buffer {
            Buffer::RequestBody => {
                *self.request_body.borrow_mut() = None;
                filter.replace_request_body(bytes)
            }
            Buffer::ResponseBody => filter.replace_response_chunk(bytes),
            Buffer::PluginConfiguration | Buffer::CallResponseBody => return Err(BAD_ARGUMENT),
        };
        if replaced {
            Ok(())
        } else {
            Err(INTERNAL_FAILURE)
        }
    }

    /// The properties the adapter reads. A JWT claim (`identity.source: jwt`) is read from
    /// the header jwt_authn wrote it to, not from its nested metadata, which the ABI's
    /// metadata calls do not reach (see jwt_guard).
    fn get_property(&self, path: &[&str]) -> Result<Option<Vec<u8>>, HostError> {
        match path {
            ["metadata", "filter_metadata", namespace, _payload, claim]
                if *namespace == JWT_AUTHN_NAMESPACE =>
            {
                self.jwt_claim(claim)
            }
            ["plugin_root_id"] => Ok(Some(self.shared.filter_name.as_bytes().to_vec())),
            ["xds", "route_name"] => Ok(self.filter()?.route_name()),
            ["xds", "cluster_name"] => Ok(self.filter()?.cluster_name()),
            ["response", "code_details"] => Ok(self.filter()?.response_code_details()),
            _ => Ok(None),
        }
    }

    fn set_property(&self, path: &[&str], value: &[u8]) -> Result<(), HostError> {
        match path {
            // The adapter names the record as proxy-wasm properties do (Envoy adds `wasm.`).
            ["agent_budget"] => {
                if self.filter()?.set_filter_state(ATTRIBUTION_KEY, value) {
                    Ok(())
                } else {
                    Err(INTERNAL_FAILURE)
                }
            }
            _ => Err(BAD_ARGUMENT),
        }
    }

    fn send_local_reply(
        &self,
        status: u32,
        headers: &[(String, String)],
        body: &[u8],
    ) -> Result<(), HostError> {
        self.filter()?;
        *self.reply.borrow_mut() = Some(Reply {
            status,
            headers: headers.to_vec(),
            body: body.to_vec(),
        });
        Ok(())
    }

    /// The tick is the configuration's: its timer posts it to the main thread every period
    /// the adapter asks for (`TICK_MILLIS`, or `fleet.sync_millis`).
    fn set_tick_period(&self, millis: u32) -> Result<(), HostError> {
        if millis == 0 {
            return Err(BAD_ARGUMENT);
        }
        if self.shared.ticking() {
            self.shared.set_tick_millis(millis);
            Ok(())
        } else {
            Err(INTERNAL_FAILURE)
        }
    }
}

//! Envoy's dynamic-module ABI (v0.2.0, `source/extensions/dynamic_modules/abi.h`): the
//! callbacks this module calls, safe wrappers over them, and the event hooks Envoy calls.
//! Every `unsafe` of the crate is in this module.
//!
//! Pointers Envoy hands to a hook stay valid for that hook (a filter's until its destroy
//! hook, a configuration's until its destroy hook); the wrappers take them as [`Filter`] and
//! [`ConfigHandle`], which only this module builds, from the hook's arguments. Each hook
//! catches panics (`guard`): a panic never unwinds into Envoy; it is logged and the call
//! fails as `crate::module` says.

use std::ffi::{c_char, c_void};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// The ABI version this module is built against; Envoy refuses a module whose version it
/// does not know, and logs `Dynamic module ABI version v0.2.0 matched.` on a match.
const ABI_VERSION: &[u8] = b"v0.2.0\0";

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct EnvoyBuffer {
    ptr: *const u8,
    length: usize,
}

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ModuleBuffer {
    ptr: *const u8,
    length: usize,
}

impl ModuleBuffer {
    fn of(bytes: &[u8]) -> ModuleBuffer {
        ModuleBuffer {
            ptr: bytes.as_ptr(),
            length: bytes.len(),
        }
    }

    /// No value: `http_set_header` removes the header.
    const NONE: ModuleBuffer = ModuleBuffer {
        ptr: std::ptr::null(),
        length: 0,
    };
}

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ModuleHttpHeader {
    key_ptr: *const u8,
    key_length: usize,
    value_ptr: *const u8,
    value_length: usize,
}

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct EnvoyHttpHeader {
    key_ptr: *const u8,
    key_length: usize,
    value_ptr: *const u8,
    value_length: usize,
}

const EMPTY_HEADER: EnvoyHttpHeader = EnvoyHttpHeader {
    key_ptr: std::ptr::null(),
    key_length: 0,
    value_ptr: std::ptr::null(),
    value_length: 0,
};

const EMPTY_BUFFER: EnvoyBuffer = EnvoyBuffer {
    ptr: std::ptr::null(),
    length: 0,
};

// envoy_dynamic_module_type_http_header_type
const HEADER_REQUEST: u32 = 0;
const HEADER_RESPONSE: u32 = 2;
// envoy_dynamic_module_type_http_body_type
const BODY_RECEIVED_REQUEST: u32 = 0;
const BODY_BUFFERED_REQUEST: u32 = 1;
const BODY_RECEIVED_RESPONSE: u32 = 2;
// envoy_dynamic_module_type_attribute_id
const ATTRIBUTE_RESPONSE_CODE_DETAILS: u32 = 16;
const ATTRIBUTE_XDS_ROUTE_NAME: u32 = 61;
// envoy_dynamic_module_type_metrics_result / http_callout_init_result / http_callout_result
const METRICS_SUCCESS: u32 = 0;
const CALLOUT_INIT_SUCCESS: u32 = 0;
const CALLOUT_SUCCESS: u32 = 0;
// envoy_dynamic_module_type_log_level
const LOG_DEBUG: u32 = 1;
const LOG_INFO: u32 = 2;
const LOG_WARN: u32 = 3;
const LOG_ERROR: u32 = 4;
const LOG_CRITICAL: u32 = 5;
// The hooks' statuses: FilterHeadersStatus, FilterDataStatus, FilterTrailersStatus.
const HEADERS_CONTINUE: u32 = 0;
const HEADERS_STOP_ITERATION: u32 = 1;
const BODY_CONTINUE: u32 = 0;
const BODY_STOP_AND_BUFFER: u32 = 1;
const TRAILERS_CONTINUE: u32 = 0;
const LOCAL_REPLY_CONTINUE: u32 = 0;

extern "C" {
    fn envoy_dynamic_module_callback_log(level: u32, message: ModuleBuffer);
    fn envoy_dynamic_module_callback_log_enabled(level: u32) -> bool;

    fn envoy_dynamic_module_callback_http_get_headers_size(
        filter: *mut c_void,
        header_type: u32,
    ) -> usize;
    fn envoy_dynamic_module_callback_http_get_headers(
        filter: *mut c_void,
        header_type: u32,
        result: *mut EnvoyHttpHeader,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_set_header(
        filter: *mut c_void,
        header_type: u32,
        key: ModuleBuffer,
        value: ModuleBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_send_response(
        filter: *mut c_void,
        status_code: u32,
        headers: *mut ModuleHttpHeader,
        headers_size: usize,
        body: ModuleBuffer,
        details: ModuleBuffer,
    );

    fn envoy_dynamic_module_callback_http_get_body_chunks_size(
        filter: *mut c_void,
        body_type: u32,
    ) -> usize;
    fn envoy_dynamic_module_callback_http_get_body_chunks(
        filter: *mut c_void,
        body_type: u32,
        result: *mut EnvoyBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_append_body(
        filter: *mut c_void,
        body_type: u32,
        data: ModuleBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_drain_body(
        filter: *mut c_void,
        body_type: u32,
        number_of_bytes: usize,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_get_body_size(
        filter: *mut c_void,
        body_type: u32,
    ) -> usize;
    fn envoy_dynamic_module_callback_http_received_buffered_request_body(
        filter: *mut c_void,
    ) -> bool;

    fn envoy_dynamic_module_callback_http_set_filter_state_bytes(
        filter: *mut c_void,
        key: ModuleBuffer,
        value: ModuleBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_get_filter_state_bytes(
        filter: *mut c_void,
        key: ModuleBuffer,
        result: *mut EnvoyBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_filter_get_attribute_string(
        filter: *mut c_void,
        attribute_id: u32,
        result: *mut EnvoyBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_get_cluster_name(
        filter: *mut c_void,
        result: *mut EnvoyBuffer,
    ) -> bool;

    fn envoy_dynamic_module_callback_http_filter_config_define_counter(
        config: *mut c_void,
        name: ModuleBuffer,
        label_names: *mut ModuleBuffer,
        label_names_length: usize,
        counter_id: *mut usize,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_define_gauge(
        config: *mut c_void,
        name: ModuleBuffer,
        label_names: *mut ModuleBuffer,
        label_names_length: usize,
        gauge_id: *mut usize,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_increment_counter(
        config: *mut c_void,
        id: usize,
        label_values: *mut ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_set_gauge(
        config: *mut c_void,
        id: usize,
        label_values: *mut ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> u32;

    fn envoy_dynamic_module_callback_http_filter_config_scheduler_new(
        config: *mut c_void,
    ) -> *mut c_void;
    fn envoy_dynamic_module_callback_http_filter_config_scheduler_commit(
        scheduler: *mut c_void,
        event_id: u64,
    );
    fn envoy_dynamic_module_callback_http_filter_config_scheduler_delete(scheduler: *mut c_void);
    fn envoy_dynamic_module_callback_http_filter_config_http_callout(
        config: *mut c_void,
        callout_id_out: *mut u64,
        cluster_name: ModuleBuffer,
        headers: *mut ModuleHttpHeader,
        headers_size: usize,
        body: ModuleBuffer,
        timeout_milliseconds: u64,
    ) -> u32;
}

/// Envoy's side of one HTTP filter (one stream), valid from its `http_filter_new` until its
/// destroy hook; only built from a hook's argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Filter(*mut c_void);

/// Envoy's side of one filter configuration, valid from its `config_new` until its destroy
/// hook (Envoy destroys a configuration only after every filter it made).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfigHandle(*mut c_void);

// SAFETY: the configuration object is Envoy's and outlives every use of the handle (see
// above). The handle crosses threads but is only used on Envoy's main thread: config_new,
// the scheduled hook (metrics, callouts) and the callout hook run there.
unsafe impl Send for ConfigHandle {}
// SAFETY: as for Send; the handle itself is a plain address.
unsafe impl Sync for ConfigHandle {}

/// A scheduler posting events to a configuration's hook on Envoy's main thread.
#[derive(Debug)]
pub struct Scheduler(*mut c_void);

// SAFETY: Envoy documents the configuration scheduler as usable from any thread.
unsafe impl Send for Scheduler {}
// SAFETY: commit only reads the pointer; Envoy serializes the posting.
unsafe impl Sync for Scheduler {}

impl Scheduler {
    pub fn new(config: ConfigHandle) -> Option<Scheduler> {
        // SAFETY: `config` is a live configuration (see ConfigHandle).
        let scheduler =
            unsafe { envoy_dynamic_module_callback_http_filter_config_scheduler_new(config.0) };
        (!scheduler.is_null()).then_some(Scheduler(scheduler))
    }

    /// Runs the configuration's `scheduled` hook on the main thread with `event_id`.
    pub fn commit(&self, event_id: u64) {
        // SAFETY: the scheduler is live until dropped.
        unsafe {
            envoy_dynamic_module_callback_http_filter_config_scheduler_commit(self.0, event_id)
        }
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        // SAFETY: created by scheduler_new and deleted once, here.
        unsafe { envoy_dynamic_module_callback_http_filter_config_scheduler_delete(self.0) }
    }
}

/// Envoy's log levels as this module uses them.
#[derive(Debug, Clone, Copy)]
pub enum Level {
    Debug,
    Info,
    Warn,
    Error,
    Critical,
}

fn level(level: Level) -> u32 {
    match level {
        Level::Debug => LOG_DEBUG,
        Level::Info => LOG_INFO,
        Level::Warn => LOG_WARN,
        Level::Error => LOG_ERROR,
        Level::Critical => LOG_CRITICAL,
    }
}

pub fn log_enabled(at: Level) -> bool {
    // SAFETY: a plain value; callable from any thread.
    unsafe { envoy_dynamic_module_callback_log_enabled(level(at)) }
}

/// Writes to Envoy's log under `[dynamic_modules]`.
pub fn log(at: Level, message: &str) {
    // SAFETY: the message is a live slice for the duration of the call.
    unsafe { envoy_dynamic_module_callback_log(level(at), ModuleBuffer::of(message.as_bytes())) }
}

/// A stream's header map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Headers {
    Request,
    Response,
}

fn header_type(headers: Headers) -> u32 {
    match headers {
        Headers::Request => HEADER_REQUEST,
        Headers::Response => HEADER_RESPONSE,
    }
}

/// Envoy's bytes borrowed for the current hook.
///
/// # Safety
/// `ptr` must be null or point to `length` readable bytes that stay valid and unchanged for
/// `'a` (Envoy guarantees it until the hook returns or the map or body is changed).
unsafe fn envoy_bytes<'a>(ptr: *const u8, length: usize) -> &'a [u8] {
    if ptr.is_null() || length == 0 {
        return &[];
    }
    // SAFETY: guaranteed by the caller.
    unsafe { std::slice::from_raw_parts(ptr, length) }
}

impl Filter {
    /// Calls `visit` with each `(name, value)` pair of a map, in Envoy's order, borrowed
    /// from Envoy for the call (no copy); a pair that is not UTF-8 is skipped, as the
    /// adapter's wire parser skips it. False, having visited nothing, if the map is not
    /// available (e.g. response headers before the response). `visit` must not change the
    /// map: the pairs point into it.
    pub fn visit_headers(self, headers: Headers, visit: &mut dyn FnMut(&str, &str)) -> bool {
        let kind = header_type(headers);
        // SAFETY: the filter is live for this hook.
        let count = unsafe { envoy_dynamic_module_callback_http_get_headers_size(self.0, kind) };
        // Envoy fills an array of the pairs' addresses: one allocation per map, none per pair.
        let mut entries = vec![EMPTY_HEADER; count];
        // SAFETY: `entries` holds `count` entries, the size Envoy just gave for this map.
        if count > 0
            && !unsafe {
                envoy_dynamic_module_callback_http_get_headers(self.0, kind, entries.as_mut_ptr())
            }
        {
            return false;
        }
        for entry in &entries {
            // SAFETY: Envoy filled each entry with pointers into the map, valid until the
            // hook returns or the map changes; nothing changes it while this runs (`visit`
            // must not, and the borrows end with each visit).
            let (name, value) = unsafe {
                (
                    envoy_bytes(entry.key_ptr, entry.key_length),
                    envoy_bytes(entry.value_ptr, entry.value_length),
                )
            };
            if let (Ok(name), Ok(value)) = (std::str::from_utf8(name), std::str::from_utf8(value)) {
                visit(name, value);
            }
        }
        true
    }

    /// Sets a header (replacing its values); `None` removes it.
    pub fn set_header(self, headers: Headers, name: &str, value: Option<&str>) -> bool {
        let value = value.map_or(ModuleBuffer::NONE, |v| ModuleBuffer::of(v.as_bytes()));
        // SAFETY: live filter; name and value are live slices for the call.
        unsafe {
            envoy_dynamic_module_callback_http_set_header(
                self.0,
                header_type(headers),
                ModuleBuffer::of(name.as_bytes()),
                value,
            )
        }
    }

    /// Answers the stream with a local reply.
    pub fn send_response(self, status: u32, headers: &[(String, String)], body: &[u8]) {
        let mut vector: Vec<ModuleHttpHeader> = headers
            .iter()
            .map(|(name, value)| ModuleHttpHeader {
                key_ptr: name.as_ptr(),
                key_length: name.len(),
                value_ptr: value.as_ptr(),
                value_length: value.len(),
            })
            .collect();
        // SAFETY: live filter; `vector` and the strings it points into outlive the call.
        unsafe {
            envoy_dynamic_module_callback_http_send_response(
                self.0,
                status,
                vector.as_mut_ptr(),
                vector.len(),
                ModuleBuffer::of(body),
                ModuleBuffer::of(b"agent_budget"),
            )
        }
    }

    fn chunks(self, body_type: u32, out: &mut Vec<u8>) -> bool {
        // SAFETY: live filter.
        let count =
            unsafe { envoy_dynamic_module_callback_http_get_body_chunks_size(self.0, body_type) };
        if count == 0 {
            return true;
        }
        let mut chunks = vec![EMPTY_BUFFER; count];
        // SAFETY: `chunks` holds the `count` entries Envoy asked for.
        if !unsafe {
            envoy_dynamic_module_callback_http_get_body_chunks(
                self.0,
                body_type,
                chunks.as_mut_ptr(),
            )
        } {
            return false;
        }
        for chunk in &chunks {
            // SAFETY: Envoy's slices of the body, valid until the hook returns.
            out.extend_from_slice(unsafe { envoy_bytes(chunk.ptr, chunk.length) });
        }
        true
    }

    fn received_is_buffered(self) -> bool {
        // SAFETY: live filter.
        unsafe { envoy_dynamic_module_callback_http_received_buffered_request_body(self.0) }
    }

    fn body_size(self, body_type: u32) -> usize {
        // SAFETY: live filter.
        unsafe { envoy_dynamic_module_callback_http_get_body_size(self.0, body_type) }
    }

    /// The size of [`Filter::request_body`], without copying it.
    pub fn request_body_size(self) -> usize {
        let buffered = if self.received_is_buffered() {
            0
        } else {
            self.body_size(BODY_BUFFERED_REQUEST)
        };
        buffered.saturating_add(self.body_size(BODY_RECEIVED_REQUEST))
    }

    pub fn response_chunk_size(self) -> usize {
        self.body_size(BODY_RECEIVED_RESPONSE)
    }

    /// The request body so far: what Envoy buffered for this filter, then the chunk of the
    /// current hook (unless that chunk is the buffer itself). None: unreadable.
    pub fn request_body(self) -> Option<Vec<u8>> {
        let mut body = Vec::new();
        let buffered = self.received_is_buffered() || self.chunks(BODY_BUFFERED_REQUEST, &mut body);
        let received = self.chunks(BODY_RECEIVED_REQUEST, &mut body);
        (buffered && received).then_some(body)
    }

    /// The response chunk of the current hook. None: unreadable.
    pub fn response_chunk(self) -> Option<Vec<u8>> {
        let mut chunk = Vec::new();
        self.chunks(BODY_RECEIVED_RESPONSE, &mut chunk)
            .then_some(chunk)
    }

    /// Replaces the whole request body so far (buffered and current chunk) with `bytes`:
    /// both are emptied and `bytes` goes on as the current chunk. A body part that is empty
    /// (or is the other) is left alone: draining one Envoy does not hold fails.
    pub fn replace_request_body(self, bytes: &[u8]) -> bool {
        let buffered = !self.received_is_buffered() && self.body_size(BODY_BUFFERED_REQUEST) > 0;
        let received = self.body_size(BODY_RECEIVED_REQUEST) > 0;
        // SAFETY: live filter; draining more than a body holds drains it all.
        let drained = unsafe {
            (!buffered
                || envoy_dynamic_module_callback_http_drain_body(
                    self.0,
                    BODY_BUFFERED_REQUEST,
                    usize::MAX,
                ))
                && (!received
                    || envoy_dynamic_module_callback_http_drain_body(
                        self.0,
                        BODY_RECEIVED_REQUEST,
                        usize::MAX,
                    ))
        };
        // SAFETY: live filter; `bytes` is live for the call.
        drained
            && unsafe {
                envoy_dynamic_module_callback_http_append_body(
                    self.0,
                    BODY_RECEIVED_REQUEST,
                    ModuleBuffer::of(bytes),
                )
            }
    }

    /// Replaces the response chunk of the current hook with `bytes`.
    pub fn replace_response_chunk(self, bytes: &[u8]) -> bool {
        let received = self.body_size(BODY_RECEIVED_RESPONSE) > 0;
        // SAFETY: live filter; `bytes` is live for the call.
        unsafe {
            (!received
                || envoy_dynamic_module_callback_http_drain_body(
                    self.0,
                    BODY_RECEIVED_RESPONSE,
                    usize::MAX,
                ))
                && envoy_dynamic_module_callback_http_append_body(
                    self.0,
                    BODY_RECEIVED_RESPONSE,
                    ModuleBuffer::of(bytes),
                )
        }
    }

    pub fn set_filter_state(self, key: &str, value: &[u8]) -> bool {
        // SAFETY: live filter; key and value are live for the call.
        unsafe {
            envoy_dynamic_module_callback_http_set_filter_state_bytes(
                self.0,
                ModuleBuffer::of(key.as_bytes()),
                ModuleBuffer::of(value),
            )
        }
    }

    /// Whether a filter of this stream set the filter-state key (as bytes).
    pub fn has_filter_state(self, key: &str) -> bool {
        let mut result = EMPTY_BUFFER;
        // SAFETY: live filter; `key` is live for the call and `result` a valid out-pointer
        // (its value, Envoy's, is not used).
        unsafe {
            envoy_dynamic_module_callback_http_get_filter_state_bytes(
                self.0,
                ModuleBuffer::of(key.as_bytes()),
                &mut result,
            )
        }
    }

    fn attribute(self, id: u32) -> Option<Vec<u8>> {
        let mut result = EMPTY_BUFFER;
        // SAFETY: live filter; `result` is a valid out-pointer.
        let found = unsafe {
            envoy_dynamic_module_callback_http_filter_get_attribute_string(self.0, id, &mut result)
        };
        // SAFETY: on success Envoy points `result` at the value, valid for this hook.
        found.then(|| unsafe { envoy_bytes(result.ptr, result.length) }.to_vec())
    }

    pub fn response_code_details(self) -> Option<Vec<u8>> {
        self.attribute(ATTRIBUTE_RESPONSE_CODE_DETAILS)
    }

    pub fn route_name(self) -> Option<Vec<u8>> {
        self.attribute(ATTRIBUTE_XDS_ROUTE_NAME)
    }

    pub fn cluster_name(self) -> Option<Vec<u8>> {
        let mut result = EMPTY_BUFFER;
        // SAFETY: live filter; `result` is a valid out-pointer.
        let found =
            unsafe { envoy_dynamic_module_callback_http_get_cluster_name(self.0, &mut result) };
        // SAFETY: on success Envoy points `result` at the name, valid for this hook.
        found.then(|| unsafe { envoy_bytes(result.ptr, result.length) }.to_vec())
    }
}

/// The kind of a metric family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    Counter,
    Gauge,
}

impl ConfigHandle {
    /// Defines a metric family with label names; its id for [`ConfigHandle::increment_counter`]
    /// or [`ConfigHandle::set_gauge`].
    pub fn define(self, kind: Family, name: &str, labels: &[&str]) -> Option<usize> {
        let mut labels: Vec<ModuleBuffer> = labels
            .iter()
            .map(|l| ModuleBuffer::of(l.as_bytes()))
            .collect();
        let mut id: usize = 0;
        let name = ModuleBuffer::of(name.as_bytes());
        // SAFETY: live configuration; the buffers and `id` are live for the call.
        let result = unsafe {
            match kind {
                Family::Counter => envoy_dynamic_module_callback_http_filter_config_define_counter(
                    self.0,
                    name,
                    labels.as_mut_ptr(),
                    labels.len(),
                    &mut id,
                ),
                Family::Gauge => envoy_dynamic_module_callback_http_filter_config_define_gauge(
                    self.0,
                    name,
                    labels.as_mut_ptr(),
                    labels.len(),
                    &mut id,
                ),
            }
        };
        (result == METRICS_SUCCESS).then_some(id)
    }

    /// Adds `value` to a counter `define` made, with one value per label name.
    pub fn increment_counter(self, id: usize, labels: &[&str], value: u64) -> bool {
        let mut labels: Vec<ModuleBuffer> = labels
            .iter()
            .map(|l| ModuleBuffer::of(l.as_bytes()))
            .collect();
        // SAFETY: live configuration; the label buffers point into `labels`' strings.
        unsafe {
            envoy_dynamic_module_callback_http_filter_config_increment_counter(
                self.0,
                id,
                labels.as_mut_ptr(),
                labels.len(),
                value,
            ) == METRICS_SUCCESS
        }
    }

    pub fn set_gauge(self, id: usize, labels: &[&str], value: u64) -> bool {
        let mut labels: Vec<ModuleBuffer> = labels
            .iter()
            .map(|l| ModuleBuffer::of(l.as_bytes()))
            .collect();
        // SAFETY: as in increment_counter.
        unsafe {
            envoy_dynamic_module_callback_http_filter_config_set_gauge(
                self.0,
                id,
                labels.as_mut_ptr(),
                labels.len(),
                value,
            ) == METRICS_SUCCESS
        }
    }

    /// Starts an HTTP call from the main thread; its reply comes to
    /// `on_http_filter_config_http_callout_done` with the returned id.
    pub fn http_callout(
        self,
        cluster: &str,
        headers: &[(String, String)],
        body: &[u8],
        timeout_ms: u64,
    ) -> Option<u64> {
        let mut vector: Vec<ModuleHttpHeader> = headers
            .iter()
            .map(|(name, value)| ModuleHttpHeader {
                key_ptr: name.as_ptr(),
                key_length: name.len(),
                value_ptr: value.as_ptr(),
                value_length: value.len(),
            })
            .collect();
        let mut id: u64 = 0;
        // SAFETY: live configuration, on the main thread (only the scheduled hook calls
        // this); every buffer outlives the call.
        let result = unsafe {
            envoy_dynamic_module_callback_http_filter_config_http_callout(
                self.0,
                &mut id,
                ModuleBuffer::of(cluster.as_bytes()),
                vector.as_mut_ptr(),
                vector.len(),
                ModuleBuffer::of(body),
                timeout_ms,
            )
        };
        (result == CALLOUT_INIT_SUCCESS).then_some(id)
    }
}

/// A value holding `Rc`s (a worker's `Root`, the calls it made), kept behind a mutex that a
/// worker thread and the main thread's tick both take: every use of the value and of every
/// `Rc` reachable from it happens with that mutex held, one thread at a time.
#[derive(Debug)]
pub struct Pinned<T>(pub T);

// SAFETY: see the type's doc: the Rc counts inside are never touched by two threads at
// once, since each access holds the one mutex the value lives in (crate::module::Worker).
unsafe impl<T> Send for Pinned<T> {}

/// Runs a hook's body, turning a panic into `failed` (the panic hook has logged it).
fn guard<T>(failed: T, body: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(body)).unwrap_or(failed)
}

/// Envoy's bytes as a slice for the hook.
///
/// # Safety
/// As [`envoy_bytes`].
unsafe fn buffer<'a>(buffer: EnvoyBuffer) -> &'a [u8] {
    // SAFETY: guaranteed by the caller.
    unsafe { envoy_bytes(buffer.ptr, buffer.length) }
}

/// The in-module object behind a filter pointer Envoy gives back.
///
/// # Safety
/// `ptr` must be a pointer `on_http_filter_new` returned and the destroy hook has not freed.
unsafe fn filter_state<'a>(ptr: *const c_void) -> Option<&'a crate::module::Stream> {
    // SAFETY: guaranteed by the caller; Stream is only shared (&), its state is in cells.
    unsafe { ptr.cast::<crate::module::Stream>().as_ref() }
}

/// # Safety
/// `ptr` must be a pointer `on_http_filter_config_new` returned and not yet destroyed.
unsafe fn config_state<'a>(ptr: *const c_void) -> Option<&'a crate::module::Configured> {
    // SAFETY: guaranteed by the caller.
    unsafe { ptr.cast::<crate::module::Configured>().as_ref() }
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_program_init() -> *const c_char {
    guard(std::ptr::null(), || {
        crate::module::init();
        ABI_VERSION.as_ptr().cast()
    })
}

/// # Safety
/// Called by Envoy on the main thread with a live configuration object and buffers.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_new(
    config_envoy: *mut c_void,
    name: EnvoyBuffer,
    config: EnvoyBuffer,
) -> *const c_void {
    guard(std::ptr::null(), || {
        // SAFETY: Envoy's buffers, valid for this hook.
        let (name, config) = unsafe { (buffer(name), buffer(config)) };
        match crate::module::new_config(ConfigHandle(config_envoy), name, config) {
            Some(configured) => Box::into_raw(Box::new(configured)).cast_const().cast(),
            None => std::ptr::null(),
        }
    })
}

/// # Safety
/// `config` is a pointer `on_http_filter_config_new` returned; Envoy destroys it once.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_destroy(config: *const c_void) {
    guard((), || {
        if !config.is_null() {
            // SAFETY: made by Box::into_raw in config_new and freed only here.
            let configured =
                unsafe { Box::from_raw(config.cast_mut().cast::<crate::module::Configured>()) };
            crate::module::destroy_config(*configured);
        }
    })
}

/// Per-route configuration is not supported: refusing it rejects the route's config.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_per_route_config_new(
    _name: EnvoyBuffer,
    _config: EnvoyBuffer,
) -> *const c_void {
    guard(std::ptr::null(), || {
        log(Level::Error, "agent-budget has no per-route configuration");
        std::ptr::null()
    })
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_per_route_config_destroy(
    _config: *const c_void,
) {
}

/// # Safety
/// `config` is live (config_new's pointer); `filter` is the new stream's filter object.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_new(
    config: *const c_void,
    filter: *mut c_void,
) -> *const c_void {
    guard(std::ptr::null(), || {
        // SAFETY: see the function's contract.
        let Some(configured) = (unsafe { config_state(config) }) else {
            return std::ptr::null();
        };
        match crate::module::new_stream(configured, Filter(filter)) {
            Some(stream) => Box::into_raw(Box::new(stream)).cast_const().cast(),
            None => std::ptr::null(),
        }
    })
}

/// Runs `body` with the stream of a hook; `failed` if it panicked (after failing the call).
///
/// # Safety
/// `stream` is a live pointer from `on_http_filter_new`.
unsafe fn with_stream<T: Copy>(
    filter: *mut c_void,
    stream: *const c_void,
    failed: T,
    body: impl FnOnce(&crate::module::Stream, Filter) -> T,
) -> T {
    // SAFETY: guaranteed by the caller.
    let Some(state) = (unsafe { filter_state(stream) }) else {
        return failed;
    };
    let filter = Filter(filter);
    match catch_unwind(AssertUnwindSafe(|| body(state, filter))) {
        Ok(value) => value,
        Err(_) => {
            guard((), || state.panicked(filter));
            failed
        }
    }
}

fn headers_status(pause: bool) -> u32 {
    if pause {
        HEADERS_STOP_ITERATION
    } else {
        HEADERS_CONTINUE
    }
}

fn body_status(pause: bool) -> u32 {
    if pause {
        BODY_STOP_AND_BUFFER
    } else {
        BODY_CONTINUE
    }
}

/// # Safety
/// Envoy's live filter and the module's stream pointer.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_headers(
    filter: *mut c_void,
    stream: *const c_void,
    end_of_stream: bool,
) -> u32 {
    // A panic stops the call (the stream got a 500 from `panicked`).
    // SAFETY: see the function's contract.
    unsafe {
        with_stream(filter, stream, HEADERS_STOP_ITERATION, |s, f| {
            headers_status(s.on_request_headers(f, end_of_stream))
        })
    }
}

/// # Safety
/// As request_headers.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_body(
    filter: *mut c_void,
    stream: *const c_void,
    end_of_stream: bool,
) -> u32 {
    // SAFETY: see the function's contract.
    unsafe {
        with_stream(filter, stream, BODY_STOP_AND_BUFFER, |s, f| {
            body_status(s.on_request_body(f, end_of_stream))
        })
    }
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_trailers(
    _filter: *mut c_void,
    _stream: *const c_void,
) -> u32 {
    TRAILERS_CONTINUE
}

/// # Safety
/// As request_headers.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_response_headers(
    filter: *mut c_void,
    stream: *const c_void,
    end_of_stream: bool,
) -> u32 {
    // Past the request the provider's answer is passed on: a panic cannot un-send it.
    // SAFETY: see the function's contract.
    unsafe {
        with_stream(filter, stream, HEADERS_CONTINUE, |s, f| {
            s.on_response_headers(f, end_of_stream);
            HEADERS_CONTINUE
        })
    }
}

/// # Safety
/// As request_headers.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_response_body(
    filter: *mut c_void,
    stream: *const c_void,
    end_of_stream: bool,
) -> u32 {
    // SAFETY: see the function's contract.
    unsafe {
        with_stream(filter, stream, BODY_CONTINUE, |s, f| {
            s.on_response_body(f, end_of_stream);
            BODY_CONTINUE
        })
    }
}

/// # Safety
/// As request_headers.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_response_trailers(
    filter: *mut c_void,
    stream: *const c_void,
) -> u32 {
    // SAFETY: see the function's contract.
    unsafe {
        with_stream(filter, stream, TRAILERS_CONTINUE, |s, f| {
            s.on_response_trailers(f);
            TRAILERS_CONTINUE
        })
    }
}

/// # Safety
/// As request_headers.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_stream_complete(
    filter: *mut c_void,
    stream: *const c_void,
) {
    // SAFETY: see the function's contract.
    unsafe { with_stream(filter, stream, (), |s, f| s.on_complete(f)) }
}

/// # Safety
/// `stream` is a pointer `on_http_filter_new` returned; Envoy destroys it once.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_destroy(stream: *const c_void) {
    guard((), || {
        if !stream.is_null() {
            // SAFETY: made by Box::into_raw in filter_new and freed only here.
            drop(unsafe { Box::from_raw(stream.cast_mut().cast::<crate::module::Stream>()) });
        }
    })
}

/// The status of a callout's reply: its `:status`, or 0 if it failed.
///
/// # Safety
/// `headers` is null or points to `count` headers valid for the hook.
unsafe fn reply_status(result: u32, headers: *const EnvoyHttpHeader, count: usize) -> u32 {
    if result != CALLOUT_SUCCESS || headers.is_null() {
        return 0;
    }
    // SAFETY: guaranteed by the caller.
    let headers = unsafe { std::slice::from_raw_parts(headers, count) };
    headers
        .iter()
        .find_map(|header| {
            // SAFETY: Envoy's header bytes, valid for the hook.
            let (name, value) = unsafe {
                (
                    envoy_bytes(header.key_ptr, header.key_length),
                    envoy_bytes(header.value_ptr, header.value_length),
                )
            };
            (name == b":status")
                .then(|| std::str::from_utf8(value).ok()?.parse().ok())
                .flatten()
        })
        .unwrap_or(0)
}

/// A callout reply's body, its chunks copied in order (empty for a failed callout).
///
/// # Safety
/// A non-null `chunks` must point at `count` buffers Envoy holds for the hook.
unsafe fn reply_body(result: u32, chunks: *const EnvoyBuffer, count: usize) -> Vec<u8> {
    if result != CALLOUT_SUCCESS || chunks.is_null() {
        return Vec::new();
    }
    // SAFETY: guaranteed by the caller.
    let chunks = unsafe { std::slice::from_raw_parts(chunks, count) };
    let mut body = Vec::new();
    for chunk in chunks {
        // SAFETY: Envoy's body bytes, valid for the hook.
        body.extend_from_slice(unsafe { envoy_bytes(chunk.ptr, chunk.length) });
    }
    body
}

/// # Safety
/// Called by Envoy on the main thread with the configuration's pointers and the reply's
/// headers, valid for the hook.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_http_callout_done(
    _config_envoy: *mut c_void,
    config: *const c_void,
    callout_id: u64,
    result: u32,
    headers: *const EnvoyHttpHeader,
    headers_size: usize,
    body_chunks: *const EnvoyBuffer,
    body_chunks_size: usize,
) {
    guard((), || {
        // SAFETY: see the function's contract.
        let status = unsafe { reply_status(result, headers, headers_size) };
        // SAFETY: see the function's contract (the chunks are valid for the hook).
        let body = unsafe { reply_body(result, body_chunks, body_chunks_size) };
        // SAFETY: the configuration is live while Envoy runs its hooks.
        if let Some(configured) = unsafe { config_state(config) } {
            configured.on_callout_done(callout_id, status, body);
        }
    })
}

/// # Safety
/// Called by Envoy on the main thread with the configuration's pointers.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_scheduled(
    _config_envoy: *mut c_void,
    config: *const c_void,
    _event_id: u64,
) {
    guard((), || {
        // SAFETY: the configuration is live while Envoy runs its hooks.
        if let Some(configured) = unsafe { config_state(config) } {
            configured.on_scheduled();
        }
    })
}

/// Envoy's local reply, sent by this or another filter: nothing to change.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_local_reply(
    _filter: *mut c_void,
    _stream: *const c_void,
    _response_code: u32,
    _details: EnvoyBuffer,
    _reset_imminent: bool,
) -> u32 {
    LOCAL_REPLY_CONTINUE
}

// Hooks of ABI features this module does not use (per-stream callouts and streams, the
// per-stream scheduler, watermarks, configuration-level streams): Envoy resolves them all,
// so they exist, and do nothing.

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_callout_done(
    _filter: *mut c_void,
    _stream: *const c_void,
    _callout_id: u64,
    _result: u32,
    _headers: *const EnvoyHttpHeader,
    _headers_size: usize,
    _body_chunks: *const EnvoyBuffer,
    _body_chunks_size: usize,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_headers(
    _filter: *mut c_void,
    _stream: *const c_void,
    _stream_id: u64,
    _headers: *const EnvoyHttpHeader,
    _headers_size: usize,
    _end_stream: bool,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_data(
    _filter: *mut c_void,
    _stream: *const c_void,
    _stream_id: u64,
    _data: *const EnvoyBuffer,
    _data_count: usize,
    _end_stream: bool,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_trailers(
    _filter: *mut c_void,
    _stream: *const c_void,
    _stream_id: u64,
    _trailers: *const EnvoyHttpHeader,
    _trailers_size: usize,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_complete(
    _filter: *mut c_void,
    _stream: *const c_void,
    _stream_id: u64,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_reset(
    _filter: *mut c_void,
    _stream: *const c_void,
    _stream_id: u64,
    _reason: u32,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_scheduled(
    _filter: *mut c_void,
    _stream: *const c_void,
    _event_id: u64,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark(
    _filter: *mut c_void,
    _stream: *const c_void,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark(
    _filter: *mut c_void,
    _stream: *const c_void,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_headers(
    _config_envoy: *mut c_void,
    _config: *const c_void,
    _stream_id: u64,
    _headers: *const EnvoyHttpHeader,
    _headers_size: usize,
    _end_stream: bool,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_data(
    _config_envoy: *mut c_void,
    _config: *const c_void,
    _stream_id: u64,
    _data: *const EnvoyBuffer,
    _data_count: usize,
    _end_stream: bool,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_trailers(
    _config_envoy: *mut c_void,
    _config: *const c_void,
    _stream_id: u64,
    _trailers: *const EnvoyHttpHeader,
    _trailers_size: usize,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_complete(
    _config_envoy: *mut c_void,
    _config: *const c_void,
    _stream_id: u64,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_reset(
    _config_envoy: *mut c_void,
    _config: *const c_void,
    _stream_id: u64,
    _reason: u32,
) {
}

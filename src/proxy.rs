//! The proxy-wasm host: binds the adapter's two seams (the core's `Host` and the adapter's
//! `Abi`) to Envoy's ABI and forwards the SDK's callbacks to `crate::adapter`.
//!
//! Every host call goes through a raw ABI call whose every status maps to a [`HostError`]:
//! the SDK's own wrappers panic on unexpected statuses, and a panic aborts the VM for every
//! call on the worker. The one SDK wrapper left is `dispatch_http_call`: it registers the
//! callout token that routes the reply to the root context, and it panics only on statuses
//! Envoy never returns for that call. A panic hook, installed at VM start, logs at critical
//! level with the agent of the call being processed before the VM dies.

use agent_budget_adapter::adapter::{self, Abi, Buffer, Flow, GatewayCall, Map, Root, StatusCall};
use agent_budget_core::host::{Host, HostError, MetricKind, Versioned};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType, MetricType, Status};
use std::time::Duration;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    // After set_log_level, which installs the SDK's own hook (that one unwraps its log call).
    std::panic::set_hook(Box::new(|info| raw::log_critical(&adapter::panic_report(info, "the VM stops"))));
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(AgentBudgetRoot(Root::default())) });
}}

mod abi {
    #[link(wasm_import_module = "env")]
    extern "C" {
        pub fn proxy_get_shared_data(
            key_data: *const u8,
            key_size: usize,
            return_value_data: *mut *mut u8,
            return_value_size: *mut usize,
            return_cas: *mut u32,
        ) -> u32;
        pub fn proxy_set_shared_data(
            key_data: *const u8,
            key_size: usize,
            value_data: *const u8,
            value_size: usize,
            cas: u32,
        ) -> u32;
        pub fn proxy_define_metric(
            metric_type: u32,
            name_data: *const u8,
            name_size: usize,
            return_id: *mut u32,
        ) -> u32;
        pub fn proxy_increment_metric(metric_id: u32, offset: i64) -> u32;
        pub fn proxy_record_metric(metric_id: u32, value: u64) -> u32;
        pub fn proxy_get_current_time_nanoseconds(return_time: *mut u64) -> u32;
        pub fn proxy_get_header_map_pairs(
            map_type: u32,
            return_map_data: *mut *mut u8,
            return_map_size: *mut usize,
        ) -> u32;
        pub fn proxy_replace_header_map_value(
            map_type: u32,
            key_data: *const u8,
            key_size: usize,
            value_data: *const u8,
            value_size: usize,
        ) -> u32;
        pub fn proxy_remove_header_map_value(
            map_type: u32,
            key_data: *const u8,
            key_size: usize,
        ) -> u32;
        pub fn proxy_get_buffer_bytes(
            buffer_type: u32,
            start: usize,
            max_size: usize,
            return_buffer_data: *mut *mut u8,
            return_buffer_size: *mut usize,
        ) -> u32;
        pub fn proxy_set_buffer_bytes(
            buffer_type: u32,
            start: usize,
            size: usize,
            buffer_data: *const u8,
            buffer_size: usize,
        ) -> u32;
        pub fn proxy_get_property(
            path_data: *const u8,
            path_size: usize,
            return_value_data: *mut *mut u8,
            return_value_size: *mut usize,
        ) -> u32;
        pub fn proxy_set_property(
            path_data: *const u8,
            path_size: usize,
            value_data: *const u8,
            value_size: usize,
        ) -> u32;
        pub fn proxy_send_local_response(
            status_code: u32,
            status_code_details_data: *const u8,
            status_code_details_size: usize,
            body_data: *const u8,
            body_size: usize,
            headers_data: *const u8,
            headers_size: usize,
            grpc_status: i32,
        ) -> u32;
        pub fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
        pub fn proxy_log(level: u32, message_data: *const u8, message_size: usize) -> u32;
    }
}

/// The SDK-free wrappers of the header, body, property, reply and timer calls: each returns
/// the host's status as a [`HostError`] and never panics.
mod raw {
    use super::{abi, check, take_host_buffer, STATUS_NOT_FOUND, STATUS_OK};
    use agent_budget_adapter::wire;
    use agent_budget_core::host::HostError;
    use proxy_wasm::types::{BufferType, MapType};

    /// A buffer's bytes from `start`, at most `max_size` (none: empty).
    pub fn get_buffer(
        buffer: BufferType,
        start: usize,
        max_size: usize,
    ) -> Result<Vec<u8>, HostError> {
        let mut data: *mut u8 = std::ptr::null_mut();
        let mut size: usize = 0;
        // SAFETY: out-pointers are valid; on OK the host hands over a buffer it allocated
        // with this module's allocator, which we take ownership of.
        let status = unsafe {
            abi::proxy_get_buffer_bytes(buffer as u32, start, max_size, &mut data, &mut size)
        };
        match status {
            // SAFETY: on OK the host allocated `data` for us (see above).
            STATUS_OK => Ok(unsafe { take_host_buffer(data, size) }),
            STATUS_NOT_FOUND => Ok(Vec::new()),
            other => Err(HostError::Status(other)),
        }
    }

    /// Replaces `size` bytes of a buffer from `start` with `bytes`.
    pub fn set_buffer(
        buffer: BufferType,
        start: usize,
        size: usize,
        bytes: &[u8],
    ) -> Result<(), HostError> {
        // SAFETY: `bytes` is a live slice for the duration of the call.
        check(unsafe {
            abi::proxy_set_buffer_bytes(buffer as u32, start, size, bytes.as_ptr(), bytes.len())
        })
    }

    /// Sets a header (replacing any value it had).
    pub fn set_header(map: MapType, name: &str, value: &str) -> Result<(), HostError> {
        // SAFETY: name and value are live slices for the duration of the call.
        check(unsafe {
            abi::proxy_replace_header_map_value(
                map as u32,
                name.as_ptr(),
                name.len(),
                value.as_ptr(),
                value.len(),
            )
        })
    }

    pub fn remove_header(map: MapType, name: &str) -> Result<(), HostError> {
        // SAFETY: name is a live slice for the duration of the call.
        check(unsafe { abi::proxy_remove_header_map_value(map as u32, name.as_ptr(), name.len()) })
    }

    /// A property's bytes (None: not set).
    pub fn get_property(path: &[&str]) -> Result<Option<Vec<u8>>, HostError> {
        let path = wire::property_path(path);
        let mut data: *mut u8 = std::ptr::null_mut();
        let mut size: usize = 0;
        // SAFETY: as in get_buffer.
        let status =
            unsafe { abi::proxy_get_property(path.as_ptr(), path.len(), &mut data, &mut size) };
        match status {
            // SAFETY: on OK the host allocated `data` for us.
            STATUS_OK => Ok(Some(unsafe { take_host_buffer(data, size) })),
            STATUS_NOT_FOUND => Ok(None),
            other => Err(HostError::Status(other)),
        }
    }

    pub fn set_property(path: &[&str], value: &[u8]) -> Result<(), HostError> {
        let path = wire::property_path(path);
        // SAFETY: path and value are live slices for the duration of the call.
        check(unsafe {
            abi::proxy_set_property(path.as_ptr(), path.len(), value.as_ptr(), value.len())
        })
    }

    /// Answers the request with a local reply instead of the upstream's.
    pub fn send_local_reply(
        status: u32,
        headers: &[(String, String)],
        body: &[u8],
    ) -> Result<(), HostError> {
        // A header map too large for the ABI's u32 lengths: the host's "bad argument".
        let headers = wire::serialize(headers.iter().map(|(n, v)| (n.as_str(), v.as_str())))
            .ok_or(HostError::Status(
                proxy_wasm::types::Status::BadArgument as u32,
            ))?;
        // SAFETY: body and headers are live slices for the duration of the call; no details.
        check(unsafe {
            abi::proxy_send_local_response(
                status,
                std::ptr::null(),
                0,
                body.as_ptr(),
                body.len(),
                headers.as_ptr(),
                headers.len(),
                -1,
            )
        })
    }

    pub fn set_tick_period(millis: u32) -> Result<(), HostError> {
        // SAFETY: plain value.
        check(unsafe { abi::proxy_set_tick_period_milliseconds(millis) })
    }

    /// Logs at critical level; the status is ignored (the panic hook has no one to tell).
    pub fn log_critical(message: &str) {
        const CRITICAL: u32 = proxy_wasm::types::LogLevel::Critical as u32;
        // SAFETY: message is a live slice for the duration of the call.
        let _ = unsafe { abi::proxy_log(CRITICAL, message.as_ptr(), message.len()) };
    }
}

const STATUS_OK: u32 = Status::Ok as u32;
const STATUS_NOT_FOUND: u32 = Status::NotFound as u32;
const STATUS_CAS_MISMATCH: u32 = Status::CasMismatch as u32;

fn check(status: u32) -> Result<(), HostError> {
    match status {
        STATUS_OK => Ok(()),
        STATUS_CAS_MISMATCH => Err(HostError::CasMismatch),
        other => Err(HostError::Status(other)),
    }
}

/// The real host.
pub struct ProxyHost;

impl Host for ProxyHost {
    fn now_unix_nanos(&self) -> u64 {
        let mut nanos: u64 = 0;
        // SAFETY: the host writes one u64 through a valid pointer.
        let status = unsafe { abi::proxy_get_current_time_nanoseconds(&mut nanos) };
        if status == STATUS_OK {
            nanos
        } else {
            0
        }
    }

    fn shared_get(&self, key: &str) -> Result<Option<Versioned>, HostError> {
        let mut data: *mut u8 = std::ptr::null_mut();
        let mut size: usize = 0;
        let mut cas: u32 = 0;
        // SAFETY: out-pointers are valid; on OK the host hands over a buffer it allocated
        // with this module's allocator (proxy_on_memory_allocate), which we take ownership of.
        let status = unsafe {
            abi::proxy_get_shared_data(key.as_ptr(), key.len(), &mut data, &mut size, &mut cas)
        };
        match status {
            STATUS_OK => {
                // SAFETY: on OK the host allocated `data` for us (see above).
                let value = unsafe { take_host_buffer(data, size) };
                Ok(Some(Versioned { value, cas }))
            }
            STATUS_NOT_FOUND => Ok(None),
            other => Err(HostError::Status(other)),
        }
    }

    fn shared_set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), HostError> {
        // SAFETY: pointers and lengths describe live slices for the duration of the call.
        check(unsafe {
            abi::proxy_set_shared_data(key.as_ptr(), key.len(), value.as_ptr(), value.len(), cas)
        })
    }

    fn dispatch_http(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        timeout_ms: u32,
    ) -> Result<u32, HostError> {
        // The SDK wrapper registers the callout so the reply reaches this root context.
        hostcalls::dispatch_http_call(
            cluster,
            headers.to_vec(),
            Some(body),
            Vec::new(),
            Duration::from_millis(u64::from(timeout_ms)),
        )
        .map_err(|status| HostError::Status(status as u32))
    }

    fn define_metric(&self, kind: MetricKind, name: &str) -> Result<u32, HostError> {
        let kind = match kind {
            MetricKind::Counter => MetricType::Counter,
            MetricKind::Gauge => MetricType::Gauge,
        } as u32;
        let mut id: u32 = 0;
        // SAFETY: name is a live slice; id is a valid out-pointer.
        check(unsafe { abi::proxy_define_metric(kind, name.as_ptr(), name.len(), &mut id) })?;
        Ok(id)
    }

    fn increment_metric(&self, id: u32, delta: i64) -> Result<(), HostError> {
        // SAFETY: plain values.
        check(unsafe { abi::proxy_increment_metric(id, delta) })
    }

    fn record_metric(&self, id: u32, value: u64) -> Result<(), HostError> {
        // SAFETY: plain values.
        check(unsafe { abi::proxy_record_metric(id, value) })
    }
}

/// A whole header map in the ABI's serialized form, read with one host call and parsed in
/// place ([`wire::pairs`]): the SDK's reader allocates two strings per header.
fn header_map(map: MapType) -> Result<Vec<u8>, HostError> {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    // SAFETY: out-pointers are valid; on OK the host hands over a buffer it allocated with
    // this module's allocator (proxy_on_memory_allocate), which we take ownership of.
    check(unsafe { abi::proxy_get_header_map_pairs(map as u32, &mut data, &mut size) })?;
    // SAFETY: on OK the host allocated `data` for us (see above).
    Ok(unsafe { take_host_buffer(data, size) })
}

/// Takes ownership of a buffer the host returned (null: nothing returned).
///
/// # Safety
/// A non-null `data` must be a `size`-byte allocation the host made with this module's
/// allocator (proxy_on_memory_allocate) and handed over; nothing else may free it.
unsafe fn take_host_buffer(data: *mut u8, size: usize) -> Vec<u8> {
    if data.is_null() {
        return Vec::new();
    }
    // SAFETY: guaranteed by the caller; size is the allocation's length.
    unsafe { Vec::from_raw_parts(data, size, size) }
}

fn map_type(map: Map) -> MapType {
    match map {
        Map::RequestHeaders => MapType::HttpRequestHeaders,
        Map::ResponseHeaders => MapType::HttpResponseHeaders,
        Map::CallResponseHeaders => MapType::HttpCallResponseHeaders,
    }
}

fn buffer_type(buffer: Buffer) -> BufferType {
    match buffer {
        Buffer::RequestBody => BufferType::HttpRequestBody,
        Buffer::ResponseBody => BufferType::HttpResponseBody,
        Buffer::PluginConfiguration => BufferType::PluginConfiguration,
        Buffer::CallResponseBody => BufferType::HttpCallResponseBody,
    }
}

fn action(flow: Flow) -> Action {
    match flow {
        Flow::Continue => Action::Continue,
        Flow::Pause => Action::Pause,
    }
}

impl Abi for ProxyHost {
    fn visit_headers(&self, map: Map, visit: &mut dyn FnMut(&str, &str)) -> Result<(), HostError> {
        agent_budget_adapter::wire::visit_pairs(&header_map(map_type(map))?, visit);
        Ok(())
    }

    fn set_header(&self, map: Map, name: &str, value: &str) -> Result<(), HostError> {
        raw::set_header(map_type(map), name, value)
    }

    fn remove_header(&self, map: Map, name: &str) -> Result<(), HostError> {
        raw::remove_header(map_type(map), name)
    }

    fn get_buffer(
        &self,
        buffer: Buffer,
        start: usize,
        max_size: usize,
    ) -> Result<Vec<u8>, HostError> {
        raw::get_buffer(buffer_type(buffer), start, max_size)
    }

    fn set_buffer(
        &self,
        buffer: Buffer,
        start: usize,
        size: usize,
        bytes: &[u8],
    ) -> Result<(), HostError> {
        raw::set_buffer(buffer_type(buffer), start, size, bytes)
    }

    fn get_property(&self, path: &[&str]) -> Result<Option<Vec<u8>>, HostError> {
        raw::get_property(path)
    }

    fn set_property(&self, path: &[&str], value: &[u8]) -> Result<(), HostError> {
        raw::set_property(path, value)
    }

    fn send_local_reply(
        &self,
        status: u32,
        headers: &[(String, String)],
        body: &[u8],
    ) -> Result<(), HostError> {
        raw::send_local_reply(status, headers, body)
    }

    fn set_tick_period(&self, millis: u32) -> Result<(), HostError> {
        raw::set_tick_period(millis)
    }
}

/// The SDK's root context: one plugin instance on one worker.
struct AgentBudgetRoot(Root);

impl Context for AgentBudgetRoot {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        _num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        self.0
            .on_http_call_response(&ProxyHost, token_id, body_size);
    }
}

impl RootContext for AgentBudgetRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        self.0.on_configure(&ProxyHost)
    }

    fn on_tick(&mut self) {
        self.0.on_tick(&ProxyHost);
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        self.0.new_http_call(
            |call| -> Box<dyn HttpContext> { Box::new(AgentBudgetHttp(call)) },
            |call| -> Box<dyn HttpContext> { Box::new(StatusHttp(call)) },
        )
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct StatusHttp(StatusCall);

impl Context for StatusHttp {}

impl HttpContext for StatusHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        action(self.0.on_request_headers(&ProxyHost))
    }
}

struct AgentBudgetHttp(GatewayCall);

impl Context for AgentBudgetHttp {}

impl HttpContext for AgentBudgetHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        action(self.0.on_request_headers(&ProxyHost, end_of_stream))
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        action(self.0.on_request_body(&ProxyHost, body_size, end_of_stream))
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        action(self.0.on_response_headers(&ProxyHost, end_of_stream))
    }

    fn on_http_response_trailers(&mut self, _num_trailers: usize) -> Action {
        action(self.0.on_response_trailers(&ProxyHost))
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        action(
            self.0
                .on_response_body(&ProxyHost, body_size, end_of_stream),
        )
    }

    fn on_log(&mut self) {
        self.0.on_log(&ProxyHost);
    }
}

//! The proxy-wasm host: Envoy's callbacks in, the core's decisions out.
//!
//! Every host call goes through a raw ABI call whose every status maps to a [`HostError`]:
//! the SDK's own wrappers panic on unexpected statuses, and a panic aborts the VM for every
//! call on the worker. A failed call is counted in `agent_budget_host_errors{reason}` (named
//! by the call) and logged once per worker; the filter then goes on as the call's failure
//! mode says (README "Failure semantics"). The one SDK wrapper left is `dispatch_http_call`:
//! it registers the callout token that routes the reply to the root context, and it panics
//! only on statuses Envoy never returns for that call. A panic hook, installed at VM start,
//! logs at critical level with the agent of the call being processed before the VM dies.

use crate::wire;
use agent_budget_core::config::{Config, IdentitySource};
use agent_budget_core::filter::{
    Call, ChunkOutcome, EndCause, HeadAction, HeaderEdits, LocalReply, RequestHead, ResponseHead,
};
use agent_budget_core::host::{Host, HostError, MetricKind, Versioned};
use agent_budget_core::root::Worker;
use agent_budget_core::status::{self, StatusRequest};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType, MetricType, Status};
use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    // After set_log_level, which installs the SDK's own hook (that one unwraps its log call).
    std::panic::set_hook(Box::new(log_panic));
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(AgentBudgetRoot { worker: None, role: Role::Gateway }) });
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
    use crate::wire;
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

thread_local! {
    /// The agent header of the call whose callback is running, for the panic hook (a wasm VM
    /// is one thread and runs one callback at a time). Metadata only, never a body.
    static CURRENT_AGENT: RefCell<Option<Rc<str>>> = const { RefCell::new(None) };
}

/// The longest agent id the panic hook writes, in characters: enough to name it.
const PANIC_AGENT_CHARS: usize = 64;

/// Names the call being processed, for the panic hook.
fn set_current_agent(agent: Option<&Rc<str>>) {
    CURRENT_AGENT.with(|current| *current.borrow_mut() = agent.cloned());
}

/// The panic hook: logs the panic at critical level with the agent of the call being
/// processed (escaped and cut short: it is what the client sent) before the VM aborts.
fn log_panic(info: &std::panic::PanicHookInfo<'_>) {
    let agent = CURRENT_AGENT.with(|current| {
        current.try_borrow().ok().and_then(|agent| {
            agent
                .as_deref()
                .map(|a| a.chars().take(PANIC_AGENT_CHARS).collect::<String>())
        })
    });
    let agent = match agent {
        Some(agent) => format!("{agent:?}"),
        None => "none".to_string(),
    };
    raw::log_critical(&format!(
        "agent-budget panicked, the VM stops (call agent {agent}): {info}"
    ));
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

/// The plugin `root_id` of the status page; any other root id meters calls.
const STATUS_ROOT_ID: &str = "agent_budget_status";

/// What a plugin instance does, by its `root_id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Meters and enforces the calls passing through.
    Gateway,
    /// Serves the status page from the shared data the gateway writes (same `vm_id`); meters
    /// and counts nothing, and so needs no tick.
    Status,
}

struct AgentBudgetRoot {
    worker: Option<Rc<Worker>>,
    role: Role,
}

impl Context for AgentBudgetRoot {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        _num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        let Some(worker) = &self.worker else {
            return;
        };
        // A reply whose headers cannot be read counts as a failed delivery (status 0).
        let headers = match header_map(MapType::HttpCallResponseHeaders) {
            Ok(headers) => headers,
            Err(error) => {
                worker.host_error("get_header_map", &error);
                Vec::new()
            }
        };
        let status = wire::pairs(&headers)
            .find(|(name, _)| *name == ":status")
            .and_then(|(_, value)| value.parse().ok())
            .unwrap_or(0);
        // An unreadable body reads as empty: a sync counts it as a bad reply.
        let body = if body_size == 0 {
            Vec::new()
        } else {
            raw::get_buffer(BufferType::HttpCallResponseBody, 0, body_size).unwrap_or_else(
                |error| {
                    worker.host_error("get_buffer", &error);
                    Vec::new()
                },
            )
        };
        worker.on_http_reply(&ProxyHost, token_id, status, &body);
    }
}

impl RootContext for AgentBudgetRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        set_current_agent(None);
        let bytes = match raw::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX) {
            Ok(bytes) => bytes,
            Err(error) => {
                log::error!("cannot read plugin configuration: {error}");
                return false;
            }
        };
        // Unreadable, the root id is not the status page's: the plugin meters.
        if property(&["plugin_root_id"]).ok().flatten().as_deref() == Some(STATUS_ROOT_ID) {
            self.role = Role::Status;
        }
        match Config::from_bytes(&bytes) {
            Ok(config) if self.role == Role::Status => {
                let agents = config.agents.len();
                self.worker = Some(Rc::new(Worker::new(config)));
                log::info!("status page configured for {agents} agent budgets");
                true
            }
            Ok(mut config) => {
                let agents = config.agents.len();
                if let Some(fleet) = config.fleet.as_mut() {
                    // The node id names the gateway in Redis unless the config does.
                    if fleet.gateway_id.is_none() {
                        // Envoy serves the node id as `xds.node.id` to plugins.
                        let node = property(&["xds", "node", "id"]);
                        fleet.gateway_id = node
                            .ok()
                            .flatten()
                            .map(|id| gateway_id_from(&id))
                            .filter(|id| !id.is_empty());
                    }
                }
                let worker = Rc::new(Worker::new(config));
                // Creates this and next period's ledger keys now: the first configure runs on
                // Envoy's main thread before any worker can charge.
                worker.tick(&ProxyHost);
                // Without a tick nothing is ever flushed, retried or delivered: refuse the
                // configuration (Envoy then applies the plugin's fail_open).
                if let Err(error) = raw::set_tick_period(worker.tick_millis()) {
                    worker.host_error("set_tick_period", &error);
                    log::error!("cannot start the tick: {error}");
                    return false;
                }
                self.worker = Some(worker);
                log::info!("configured {agents} agent budgets");
                true
            }
            Err(error) => {
                log::error!("{error}");
                false
            }
        }
    }

    fn on_tick(&mut self) {
        set_current_agent(None);
        if let Some(worker) = &self.worker {
            worker.tick(&ProxyHost);
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        let worker = Rc::clone(self.worker.as_ref()?);
        if self.role == Role::Status {
            return Some(Box::new(StatusHttp { worker }));
        }
        Some(Box::new(AgentBudgetHttp {
            call: Call::new(Rc::clone(&worker)),
            worker,
            attribution_exported: false,
            request_body: RequestBody::NotWanted,
            agent: None,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct AgentBudgetHttp {
    call: Call,
    attribution_exported: bool,
    request_body: RequestBody,
    /// The agent header as sent, for the panic hook.
    agent: Option<Rc<str>>,
    /// The call's worker, also held by `call`: borrowed beside it to count host errors.
    worker: Rc<Worker>,
}

/// Whether the core still waits for the request body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RequestBody {
    NotWanted,
    /// Wanted whole; its declared length, if any, says when it is whole before Envoy says so.
    Wanted {
        declared: Option<u64>,
    },
    Read,
}

/// Applies the core's header edits. A failed edit is counted and the rest still applied:
/// the edits are budget headers and rewrites the call is served without if need be.
fn apply(worker: &Worker, map: MapType, edits: &HeaderEdits) {
    for (name, value) in &edits.set {
        if let Err(error) = raw::set_header(map, name, value) {
            worker.host_error("set_header", &error);
        }
    }
    for name in &edits.remove {
        if let Err(error) = raw::remove_header(map, name) {
            worker.host_error("remove_header", &error);
        }
    }
}

/// Sends a local reply (a refusal or the status page). If the host refuses it the call is
/// still not forwarded: the caller pauses it, so a refused call fails closed (Envoy ends it
/// on its timeout or the client's) rather than spending unmetered.
fn send_reply(worker: &Worker, reply: &LocalReply) {
    if let Err(error) = raw::send_local_reply(reply.status, &reply.headers, &reply.body) {
        worker.host_error("send_local_reply", &error);
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

/// A header map, or (counted) an empty one if the host cannot give it: an empty request map
/// is a call with no identity, which gets the configured unidentified outcome.
fn header_map_or_empty(worker: &Worker, map: MapType) -> Vec<u8> {
    header_map(map).unwrap_or_else(|error| {
        worker.host_error("get_header_map", &error);
        Vec::new()
    })
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

/// A node id as a Redis field name: characters outside the config's gateway-id set become
/// `_` (a Kubernetes node id such as `sidecar~10.0.0.1~pod.ns~ns.svc.cluster.local` stays
/// recognisable).
fn gateway_id_from(node_id: &str) -> String {
    node_id
        .chars()
        .take(128)
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.:".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn property(path: &[&str]) -> Result<Option<String>, HostError> {
    Ok(raw::get_property(path)?.and_then(|bytes| String::from_utf8(bytes).ok()))
}

/// A property read on a call's path: a host failure is counted and reads as unset.
fn property_or_none(worker: &Worker, path: &[&str]) -> Option<String> {
    property(path).unwrap_or_else(|error| {
        worker.host_error("get_property", &error);
        None
    })
}

/// A request on the ops listener: `/budgets` and `/budgets.json` are answered here, anything
/// else goes on to the route.
struct StatusHttp {
    worker: Rc<Worker>,
}

impl Context for StatusHttp {}

impl HttpContext for StatusHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let headers = header_map_or_empty(&self.worker, MapType::HttpRequestHeaders);
        let mut request = StatusRequest::default();
        for (name, value) in wire::pairs(&headers) {
            match name {
                ":path" => request.path = value,
                ":method" => request.method = value,
                "authorization" => request.authorization = Some(value),
                _ => {}
            }
        }
        match status::respond(&ProxyHost, &self.worker, &request) {
            Some(reply) => {
                send_reply(&self.worker, &reply);
                Action::Pause
            }
            None => Action::Continue,
        }
    }
}

impl AgentBudgetHttp {
    /// Publishes the attribution record as one filter-state value (the members of a JSON
    /// object), readable in access logs as `%FILTER_STATE(wasm.agent_budget:PLAIN)%` (see
    /// envoy/access-log.yaml): one host call per call.
    fn export_attribution(&mut self) {
        if self.attribution_exported {
            return;
        }
        let Some(record) = &self.call.attribution else {
            return;
        };
        self.attribution_exported = true;
        if let Err(error) = raw::set_property(&["agent_budget"], record.members().as_bytes()) {
            self.worker.host_error("set_property", &error);
        }
    }
}

impl Context for AgentBudgetHttp {}

impl HttpContext for AgentBudgetHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        set_current_agent(None);
        let worker = Rc::clone(&self.worker);
        let config = &worker.config;
        let (route_name, cluster_name) = if config.overrides_need_route() {
            (
                property_or_none(&worker, &["xds", "route_name"]),
                property_or_none(&worker, &["xds", "cluster_name"]),
            )
        } else {
            (None, None)
        };
        // One host call for the whole map: each single-header read is a host call plus an
        // allocation callback, and host crossings are most of the filter's cost.
        let mut head = RequestHead {
            has_body: !end_of_stream,
            route_name,
            cluster_name,
            ..RequestHead::default()
        };
        let keys_name_agent = matches!(config.identity, IdentitySource::ApiKey(_));
        let headers = header_map_or_empty(&worker, MapType::HttpRequestHeaders);
        for (name, value) in wire::pairs(&headers) {
            if name == ":path" {
                head.path = value.to_string();
            } else if keys_name_agent && name == "authorization" {
                head.credentials.authorization = Some(value.to_string());
            } else if keys_name_agent && name == "x-api-key" {
                head.credentials.x_api_key = Some(value.to_string());
            } else if keys_name_agent && name == "x-goog-api-key" {
                head.credentials.x_goog_api_key = Some(value.to_string());
            } else if name == "content-length" {
                head.content_length = value.trim().parse().ok();
            } else if name == "accept-encoding" {
                head.accept_encoding = !value.trim().eq_ignore_ascii_case("identity");
            } else if name == config.agent_header {
                let agent: Rc<str> = Rc::from(value);
                set_current_agent(Some(&agent));
                self.agent = Some(agent);
                head.agent = Some(value.to_string());
            } else if name == config.task_header {
                head.task = Some(value.to_string());
            } else if name == config.user_header {
                head.user = Some(value.to_string());
            }
        }
        let declared = head.content_length;
        let outcome = self.call.on_request_headers(&ProxyHost, head);
        apply(&worker, MapType::HttpRequestHeaders, &outcome.edits);
        match outcome.action {
            // Envoy turns a paused request-headers callback into StopAllIteration, which also
            // withholds the body callbacks, so headers continue and the body is held instead
            // (see on_http_request_body).
            HeadAction::Continue => Action::Continue,
            HeadAction::WaitForBody => {
                self.request_body = RequestBody::Wanted { declared };
                Action::Continue
            }
            // With the plugin's allow_on_headers_stop_iteration this is StopIteration: the
            // body callbacks still come, and the headers wait for the body step.
            HeadAction::HoldForBody => {
                self.request_body = RequestBody::Wanted { declared };
                Action::Pause
            }
            HeadAction::Reply(reply) => {
                send_reply(&worker, &reply);
                self.export_attribution();
                Action::Pause
            }
        }
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let RequestBody::Wanted { declared } = self.request_body else {
            return Action::Continue;
        };
        set_current_agent(self.agent.as_ref());
        let worker = Rc::clone(&self.worker);
        // A body whose declared length has arrived is whole even before Envoy's end of
        // stream (which often comes as a separate empty call): reading it now spares Envoy
        // buffering it.
        let whole = end_of_stream || declared == Some(body_size as u64);
        if !whole {
            // Envoy buffers until the end of the body; the whole request is needed to read
            // (and perhaps rewrite) it.
            return Action::Pause;
        }
        self.request_body = RequestBody::Read;
        // An unreadable body reads as empty: the core finds no model in it and treats the
        // call as it treats any unreadable request.
        let body =
            raw::get_buffer(BufferType::HttpRequestBody, 0, body_size).unwrap_or_else(|error| {
                worker.host_error("get_buffer", &error);
                Vec::new()
            });
        let outcome = self.call.on_request_body(&ProxyHost, &body);
        if let Some(reply) = outcome.reply {
            // The call's worst case does not fit its budget: refuse it now. Unless the
            // headers were held, they went upstream already; Envoy resets that request,
            // which never got its body.
            send_reply(&worker, &reply);
            self.export_attribution();
            return Action::Pause;
        }
        if let Some(replacement) = outcome.body {
            // Not rewritten, the request goes as the client sent it (no degraded model, no
            // usage option): the call is still booked and its usage read if there is any.
            if let Err(error) =
                raw::set_buffer(BufferType::HttpRequestBody, 0, body_size, &replacement)
            {
                worker.host_error("set_buffer", &error);
            }
        }
        apply(&worker, MapType::HttpRequestHeaders, &outcome.headers);
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        set_current_agent(self.agent.as_ref());
        let worker = Rc::clone(&self.worker);
        let mut head = ResponseHead {
            end_of_stream,
            ..ResponseHead::default()
        };
        let headers = header_map_or_empty(&worker, MapType::HttpResponseHeaders);
        for (name, value) in wire::pairs(&headers) {
            match name {
                ":status" => head.status = value.parse().unwrap_or(0),
                "content-type" => head.content_type = Some(value.to_string()),
                "content-encoding" => head.content_encoding = Some(value.to_string()),
                _ => {}
            }
        }
        apply(
            &worker,
            MapType::HttpResponseHeaders,
            &self.call.on_response_headers(&head),
        );
        if end_of_stream {
            self.call.on_response_complete(&ProxyHost);
            self.export_attribution();
        }
        Action::Continue
    }

    fn on_http_response_trailers(&mut self, _num_trailers: usize) -> Action {
        // Trailers end the response: the last body chunk did not say end_of_stream.
        set_current_agent(self.agent.as_ref());
        self.call.on_response_complete(&ProxyHost);
        self.export_attribution();
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        set_current_agent(self.agent.as_ref());
        // Envoy often ends a body with an empty call: nothing to read then. An unreadable
        // chunk reads as empty: its usage is missed and the call settles as unmetered.
        let chunk = if body_size == 0 {
            Vec::new()
        } else {
            raw::get_buffer(BufferType::HttpResponseBody, 0, body_size).unwrap_or_else(|error| {
                self.worker.host_error("get_buffer", &error);
                Vec::new()
            })
        };
        match self
            .call
            .on_response_body(&ProxyHost, &chunk, end_of_stream)
        {
            ChunkOutcome::Pass => {}
            ChunkOutcome::Replace(bytes) => {
                // Not replaced, the client gets the chunk as the provider sent it.
                if let Err(error) =
                    raw::set_buffer(BufferType::HttpResponseBody, 0, body_size, &bytes)
                {
                    self.worker.host_error("set_buffer", &error);
                }
            }
        }
        if end_of_stream {
            self.export_attribution();
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        if !self.call.is_open() {
            return;
        }
        // Envoy's response code details say who ended a response that did not complete,
        // e.g. `downstream_remote_disconnect` or `upstream_reset_after_response_started{...}`.
        set_current_agent(self.agent.as_ref());
        let details =
            property_or_none(&self.worker, &["response", "code_details"]).unwrap_or_default();
        let cause = if details.contains("downstream") {
            EndCause::ClientAborted
        } else if details.contains("upstream") {
            EndCause::UpstreamAborted
        } else {
            EndCause::Normal
        };
        self.call.on_done(&ProxyHost, cause);
        self.export_attribution();
    }
}

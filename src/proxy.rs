//! The proxy-wasm host: Envoy's callbacks in, the core's decisions out.
//!
//! Shared data, metrics and the clock go through raw ABI calls whose every status maps to a
//! [`HostError`]: the SDK's own wrappers panic on unexpected statuses, and a panic aborts
//! the VM. Header and body access uses the SDK's `hostcalls`.

use crate::wire;
use agent_budget_core::config::{Config, IdentitySource};
use agent_budget_core::filter::{
    Call, ChunkOutcome, EndCause, HeadAction, HeaderEdits, LocalReply, RequestHead, ResponseHead,
};
use agent_budget_core::host::{Host, HostError, MetricKind, Versioned};
use agent_budget_core::root::{Worker, TICK_MILLIS};
use agent_budget_core::status::{self, StatusRequest};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType, MetricType, Status};
use std::rc::Rc;
use std::time::Duration;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
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
        _body_size: usize,
        _num_trailers: usize,
    ) {
        let status = hostcalls::get_map_value(MapType::HttpCallResponseHeaders, ":status")
            .ok()
            .flatten()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        if let Some(worker) = &self.worker {
            worker.on_alert_reply(&ProxyHost, token_id, status);
        }
    }
}

impl RootContext for AgentBudgetRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = match hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX) {
            Ok(Some(bytes)) => bytes,
            Ok(None) => Vec::new(),
            Err(status) => {
                log::error!("cannot read plugin configuration: {status:?}");
                return false;
            }
        };
        if property(&["plugin_root_id"]).as_deref() == Some(STATUS_ROOT_ID) {
            self.role = Role::Status;
        }
        match Config::from_bytes(&bytes) {
            Ok(config) if self.role == Role::Status => {
                let agents = config.agents.len();
                self.worker = Some(Rc::new(Worker::new(config)));
                log::info!("status page configured for {agents} agent budgets");
                true
            }
            Ok(config) => {
                let agents = config.agents.len();
                let worker = Rc::new(Worker::new(config));
                // Creates this and next period's ledger keys now: the first configure runs on
                // Envoy's main thread before any worker can charge.
                worker.tick(&ProxyHost);
                self.worker = Some(worker);
                let _ = hostcalls::set_tick_period(Duration::from_millis(TICK_MILLIS));
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
            call: Call::new(worker),
            attribution_exported: false,
            request_body: RequestBody::NotWanted,
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

fn apply(map: MapType, edits: &HeaderEdits) {
    for (name, value) in &edits.set {
        let _ = hostcalls::set_map_value(map, name, Some(value));
    }
    for name in &edits.remove {
        let _ = hostcalls::set_map_value(map, name, None);
    }
}

fn send_reply(reply: &LocalReply) {
    let headers: Vec<(&str, &str)> = reply
        .headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    if let Err(status) = hostcalls::send_http_response(reply.status, headers, Some(&reply.body)) {
        log::error!("cannot send local reply: {status:?}");
    }
}

/// A whole header map in the ABI's serialized form, read with one host call and parsed in
/// place ([`wire::pairs`]): the SDK's reader allocates two strings per header.
fn header_map(map: MapType) -> Vec<u8> {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    // SAFETY: out-pointers are valid; on OK the host hands over a buffer it allocated with
    // this module's allocator (proxy_on_memory_allocate), which we take ownership of.
    let status = unsafe { abi::proxy_get_header_map_pairs(map as u32, &mut data, &mut size) };
    if status != STATUS_OK {
        return Vec::new();
    }
    // SAFETY: on OK the host allocated `data` for us (see above).
    unsafe { take_host_buffer(data, size) }
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

fn property(path: &[&str]) -> Option<String> {
    let bytes = hostcalls::get_property(path.to_vec()).ok().flatten()?;
    String::from_utf8(bytes).ok()
}

/// A request on the ops listener: `/budgets` and `/budgets.json` are answered here, anything
/// else goes on to the route.
struct StatusHttp {
    worker: Rc<Worker>,
}

impl Context for StatusHttp {}

impl HttpContext for StatusHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let headers = header_map(MapType::HttpRequestHeaders);
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
                send_reply(&reply);
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
        let _ = hostcalls::set_property(vec!["agent_budget"], Some(record.members().as_bytes()));
    }
}

impl Context for AgentBudgetHttp {}

impl HttpContext for AgentBudgetHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let config = &self.call.worker().config;
        let (route_name, cluster_name) = if config.overrides_need_route() {
            (
                property(&["xds", "route_name"]),
                property(&["xds", "cluster_name"]),
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
        let headers = header_map(MapType::HttpRequestHeaders);
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
                head.agent = Some(value.to_string());
            } else if name == config.task_header {
                head.task = Some(value.to_string());
            } else if name == config.user_header {
                head.user = Some(value.to_string());
            }
        }
        let declared = head.content_length;
        let outcome = self.call.on_request_headers(&ProxyHost, head);
        apply(MapType::HttpRequestHeaders, &outcome.edits);
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
                send_reply(&reply);
                self.export_attribution();
                Action::Pause
            }
        }
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let RequestBody::Wanted { declared } = self.request_body else {
            return Action::Continue;
        };
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
        let body = hostcalls::get_buffer(BufferType::HttpRequestBody, 0, body_size)
            .ok()
            .flatten()
            .unwrap_or_default();
        let outcome = self.call.on_request_body(&ProxyHost, &body);
        if let Some(reply) = outcome.reply {
            // The call's worst case does not fit its budget: refuse it now. Unless the
            // headers were held, they went upstream already; Envoy resets that request,
            // which never got its body.
            send_reply(&reply);
            self.export_attribution();
            return Action::Pause;
        }
        if let Some(replacement) = outcome.body {
            if let Err(status) =
                hostcalls::set_buffer(BufferType::HttpRequestBody, 0, body_size, &replacement)
            {
                log::error!("cannot rewrite request body: {status:?}");
            }
        }
        apply(MapType::HttpRequestHeaders, &outcome.headers);
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let mut head = ResponseHead {
            end_of_stream,
            ..ResponseHead::default()
        };
        let headers = header_map(MapType::HttpResponseHeaders);
        for (name, value) in wire::pairs(&headers) {
            match name {
                ":status" => head.status = value.parse().unwrap_or(0),
                "content-type" => head.content_type = Some(value.to_string()),
                "content-encoding" => head.content_encoding = Some(value.to_string()),
                _ => {}
            }
        }
        apply(
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
        self.call.on_response_complete(&ProxyHost);
        self.export_attribution();
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        // Envoy often ends a body with an empty call: nothing to read then.
        let chunk = if body_size == 0 {
            Vec::new()
        } else {
            hostcalls::get_buffer(BufferType::HttpResponseBody, 0, body_size)
                .ok()
                .flatten()
                .unwrap_or_default()
        };
        match self
            .call
            .on_response_body(&ProxyHost, &chunk, end_of_stream)
        {
            ChunkOutcome::Pass => {}
            ChunkOutcome::Replace(bytes) => {
                if let Err(status) =
                    hostcalls::set_buffer(BufferType::HttpResponseBody, 0, body_size, &bytes)
                {
                    log::error!("cannot rewrite response chunk: {status:?}");
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
        let details = property(&["response", "code_details"]).unwrap_or_default();
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

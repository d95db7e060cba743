//! Envoy's callbacks as plain methods over two seams: the core's [`Host`] (clock, shared
//! data, metrics, callouts) and [`Abi`] (headers, bodies, properties, replies, the timer).
//! The root crate's `src/proxy.rs` binds both to the proxy-wasm ABI and `native/` to Envoy's
//! dynamic-module ABI; each only forwards its callbacks here. The tests bind them to fakes
//! that fail each host call in turn (src/adapter/tests.rs), so every failure path below runs
//! in a test.
//!
//! A failed host call is counted in `agent_budget_host_errors{reason}` (named by the call)
//! and logged once per worker; the call then goes on as its failure mode says (README
//! "Failure semantics"): an unreadable request map is a call with no identity, an unreadable
//! body reads as empty, an edit that cannot be made leaves the call as it was, and a reply
//! that cannot be sent still keeps the call from the provider.

use agent_budget_core::config::{
    Config, IdentitySource, JWT_AUTHN_NAMESPACE, JWT_CLAIM_HEADER_PREFIX,
};
use agent_budget_core::filter::{
    Call, ChunkOutcome, EndCause, HeadAction, HeaderEdits, LocalReply, RequestHead, ResponseHead,
};
use agent_budget_core::fleet;
use agent_budget_core::host::{Host, HostError};
use agent_budget_core::root::Worker;
use agent_budget_core::status::{self, StatusRequest};
use std::cell::RefCell;
use std::rc::Rc;

/// A header map of the stream (or of a callout's reply).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Map {
    RequestHeaders,
    ResponseHeaders,
    CallResponseHeaders,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Buffer {
    RequestBody,
    ResponseBody,
    PluginConfiguration,
    CallResponseBody,
}

/// What Envoy does with the stream after a callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Pause,
}

/// The host calls of the HTTP and root callbacks beside the core's [`Host`]; each returns
/// the host's status as a [`HostError`] and never panics.
pub trait Abi {
    /// Calls `visit` with each `(name, value)` pair of a header map, in the map's order; a
    /// pair that is not UTF-8 is skipped, and an error visits none. The adapter reads maps
    /// only through this: proxy-wasm hands out the serialized form ([`wire::visit_pairs`]),
    /// a host holding the pairs itself visits them in place.
    fn visit_headers(&self, map: Map, visit: &mut dyn FnMut(&str, &str)) -> Result<(), HostError>;
    /// Sets a header, replacing any value it had.
    fn set_header(&self, map: Map, name: &str, value: &str) -> Result<(), HostError>;
    fn remove_header(&self, map: Map, name: &str) -> Result<(), HostError>;
    /// A buffer's bytes from `start`, at most `max_size` (none: empty).
    fn get_buffer(
        &self,
        buffer: Buffer,
        start: usize,
        max_size: usize,
    ) -> Result<Vec<u8>, HostError>;
    /// Replaces `size` bytes of a buffer from `start` with `bytes`.
    fn set_buffer(
        &self,
        buffer: Buffer,
        start: usize,
        size: usize,
        bytes: &[u8],
    ) -> Result<(), HostError>;
    /// A property's bytes (None: not set).
    fn get_property(&self, path: &[&str]) -> Result<Option<Vec<u8>>, HostError>;
    fn set_property(&self, path: &[&str], value: &[u8]) -> Result<(), HostError>;
    /// Answers the request with a local reply instead of the upstream's.
    fn send_local_reply(
        &self,
        status: u32,
        headers: &[(String, String)],
        body: &[u8],
    ) -> Result<(), HostError>;
    fn set_tick_period(&self, millis: u32) -> Result<(), HostError>;
}

thread_local! {
    /// The agent of the call whose callback is running, for the panic hook (a wasm VM is one
    /// thread and runs one callback at a time). Metadata only, never a body.
    static CURRENT_AGENT: RefCell<Option<Rc<str>>> = const { RefCell::new(None) };
}

/// The longest agent id the panic report writes, in characters: enough to name it.
const PANIC_AGENT_CHARS: usize = 64;

/// Names the call being processed, for the panic hook.
fn set_current_agent(agent: Option<&Rc<str>>) {
    CURRENT_AGENT.with(|current| {
        if let Ok(mut current) = current.try_borrow_mut() {
            *current = agent.cloned();
        }
    });
}

/// What the panic hook logs at critical level: the panic, what follows from it (`outcome`:
/// the host's, e.g. the wasm VM stops) and the agent of the call being processed (escaped and
/// cut short: it is what the client sent).
pub fn panic_report(info: &std::panic::PanicHookInfo<'_>, outcome: &str) -> String {
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
    format!("agent-budget panicked, {outcome} (call agent {agent}): {info}")
}

/// The plugin `root_id` of the status page; any other root id meters calls.
pub const STATUS_ROOT_ID: &str = "agent_budget_status";

/// What a plugin instance does, by its `root_id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Meters and enforces the calls passing through.
    Gateway,
    /// Serves the status page from the shared data the gateway writes (same `vm_id`); meters
    /// and counts nothing, and so needs no tick.
    Status,
}

/// One plugin instance on one worker: its configuration and per-worker state.
pub struct Root {
    worker: Option<Rc<Worker>>,
    role: Role,
}

impl Default for Root {
    fn default() -> Root {
        Root {
            worker: None,
            role: Role::Gateway,
        }
    }
}

impl Root {
    /// Reads and applies the plugin configuration; false refuses it (Envoy then keeps the
    /// last good one, or does not start).
    pub fn on_configure<H: Host + Abi>(&mut self, host: &H) -> bool {
        set_current_agent(None);
        let bytes = match host.get_buffer(Buffer::PluginConfiguration, 0, usize::MAX) {
            Ok(bytes) => bytes,
            Err(error) => {
                log::error!("cannot read plugin configuration: {error}");
                return false;
            }
        };
        // Unreadable, the root id is not the status page's: the plugin meters.
        if property(host, &["plugin_root_id"])
            .ok()
            .flatten()
            .as_deref()
            == Some(STATUS_ROOT_ID)
        {
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
                    // Envoy serves the node id as `xds.node.id`; it names the gateway in Redis
                    // unless the config does. Unreadable, the sync names it by process only.
                    if fleet.gateway_id.is_none() {
                        fleet.gateway_id = property(host, &["xds", "node", "id"])
                            .ok()
                            .flatten()
                            .and_then(|node| fleet::gateway_id_from_node(&node));
                    }
                }
                let worker = Rc::new(Worker::new(config));
                // Creates this and next period's ledger keys now: the first configure runs on
                // Envoy's main thread before any worker can charge.
                worker.tick(host);
                // Without a tick nothing is ever flushed, retried or delivered: refuse the
                // configuration (Envoy then applies the plugin's fail_open).
                if let Err(error) = host.set_tick_period(worker.tick_millis()) {
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

    /// The accepted configuration, if any.
    pub fn config(&self) -> Option<&Config> {
        self.worker.as_ref().map(|worker| &worker.config)
    }

    pub fn on_tick(&self, host: &dyn Host) {
        set_current_agent(None);
        if let Some(worker) = &self.worker {
            worker.tick(host);
        }
    }

    /// A callout's reply: a fleet sync or an alert delivery. A reply whose headers cannot be
    /// read counts as failed (status 0); an unreadable body reads as empty, which a sync
    /// counts as a bad reply.
    pub fn on_http_call_response<H: Host + Abi>(&self, host: &H, token: u32, body_size: usize) {
        let Some(worker) = &self.worker else {
            return;
        };
        // The first `:status` decides; one that is not a number is no status.
        let mut status: Option<Option<u32>> = None;
        read_headers(
            host,
            worker,
            Map::CallResponseHeaders,
            &mut |name, value| {
                if status.is_none() && name == ":status" {
                    status = Some(value.parse().ok());
                }
            },
        );
        let status = status.flatten().unwrap_or(0);
        let body = if body_size == 0 {
            Vec::new()
        } else {
            host.get_buffer(Buffer::CallResponseBody, 0, body_size)
                .unwrap_or_else(|error| {
                    worker.host_error("get_buffer", &error);
                    Vec::new()
                })
        };
        worker.on_http_reply(host, token, status, &body);
    }

    /// The context of a new request, made into the host's own context type by `gateway` or
    /// `status` (by the plugin's role); none before a configuration was accepted.
    pub fn new_http_call<T>(
        &self,
        gateway: impl FnOnce(GatewayCall) -> T,
        status: impl FnOnce(StatusCall) -> T,
    ) -> Option<T> {
        let worker = Rc::clone(self.worker.as_ref()?);
        Some(match self.role {
            Role::Status => status(StatusCall { worker }),
            Role::Gateway => gateway(GatewayCall {
                call: Call::new(Rc::clone(&worker)),
                worker,
                attribution_exported: false,
                request_body: RequestBody::NotWanted,
                agent: None,
            }),
        })
    }
}

/// Applies the core's header edits. A failed edit is counted and the rest still applied:
/// the edits are budget headers and rewrites the call is served without if need be.
fn apply(host: &dyn Abi, worker: &Worker, map: Map, edits: &HeaderEdits) {
    for (name, value) in &edits.set {
        if let Err(error) = host.set_header(map, name, value) {
            worker.host_error("set_header", &error);
        }
    }
    for name in &edits.remove {
        if let Err(error) = host.remove_header(map, name) {
            worker.host_error("remove_header", &error);
        }
    }
}

/// Sends a local reply (a refusal or the status page). If the host refuses it the call is
/// still not forwarded: the caller pauses it, so a refused call fails closed (Envoy ends it
/// on its timeout or the client's) rather than spending unmetered.
fn send_reply(host: &dyn Abi, worker: &Worker, reply: &LocalReply) {
    if let Err(error) = host.send_local_reply(reply.status, &reply.headers, &reply.body) {
        worker.host_error("send_local_reply", &error);
    }
}

/// Visits a header map's pairs; false (counted) if the host cannot give the map, which then
/// reads as empty: an empty request map is a call with no identity, which gets the
/// configured unidentified outcome.
fn read_headers(
    host: &dyn Abi,
    worker: &Worker,
    map: Map,
    visit: &mut dyn FnMut(&str, &str),
) -> bool {
    match host.visit_headers(map, visit) {
        Ok(()) => true,
        Err(error) => {
            worker.host_error("get_header_map", &error);
            false
        }
    }
}

fn property(host: &dyn Abi, path: &[&str]) -> Result<Option<String>, HostError> {
    Ok(host
        .get_property(path)?
        .and_then(|bytes| String::from_utf8(bytes).ok()))
}

/// A property read on a call's path: a host failure is counted and reads as unset.
fn property_or_none(host: &dyn Abi, worker: &Worker, path: &[&str]) -> Option<String> {
    property(host, path).unwrap_or_else(|error| {
        worker.host_error("get_property", &error);
        None
    })
}

/// A string claim of the verified JWT: one property read, since Envoy resolves the path into
/// `jwt_authn`'s dynamic metadata and hands back the claim's string itself.
fn jwt_claim(host: &dyn Abi, worker: &Worker, payload: &str, claim: &str) -> Option<String> {
    property_or_none(
        host,
        worker,
        &[
            "metadata",
            "filter_metadata",
            JWT_AUTHN_NAMESPACE,
            payload,
            claim,
        ],
    )
}

/// A header's value, joined to any earlier field line of the same name as HTTP combines them
/// (RFC 9110 §5.3): two agent headers make one id with a comma, which no agent id may
/// hold, so a call naming two agents is refused instead of charged to either.
fn repeated(earlier: Option<String>, value: &str) -> String {
    match earlier {
        Some(mut joined) => {
            joined.push(',');
            joined.push_str(value);
            joined
        }
        None => value.to_string(),
    }
}

/// A request on the ops listener: `/budgets` and `/budgets.json` are answered here, anything
/// else goes on to the route.
pub struct StatusCall {
    worker: Rc<Worker>,
}

impl StatusCall {
    pub fn on_request_headers<H: Host + Abi>(&mut self, host: &H) -> Flow {
        // Copied out of the map: the pairs are only lent for the visit. The status page is
        // an operator's page, not the metered path.
        let (mut path, mut method, mut authorization) = (String::new(), String::new(), None);
        read_headers(
            host,
            &self.worker,
            Map::RequestHeaders,
            &mut |name, value| match name {
                ":path" => value.clone_into(&mut path),
                ":method" => value.clone_into(&mut method),
                "authorization" => authorization = Some(value.to_string()),
                _ => {}
            },
        );
        let request = StatusRequest {
            method: &method,
            path: &path,
            authorization: authorization.as_deref(),
        };
        match status::respond(host, &self.worker, &request) {
            Some(reply) => {
                send_reply(host, &self.worker, &reply);
                Flow::Pause
            }
            None => Flow::Continue,
        }
    }
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

/// A metered call on the gateway listener.
pub struct GatewayCall {
    call: Call,
    attribution_exported: bool,
    request_body: RequestBody,
    /// The agent as identified, for the panic hook.
    agent: Option<Rc<str>>,
    /// The call's worker, also held by `call`: borrowed beside it to count host errors.
    worker: Rc<Worker>,
}

impl GatewayCall {
    /// Publishes the attribution record as one filter-state value (the members of a JSON
    /// object), readable in access logs as `%FILTER_STATE(wasm.agent_budget:PLAIN)%` (see
    /// envoy/access-log.yaml): one host call per call.
    fn export_attribution(&mut self, host: &dyn Abi) {
        if self.attribution_exported {
            return;
        }
        let Some(record) = &self.call.attribution else {
            return;
        };
        self.attribution_exported = true;
        if let Err(error) = host.set_property(&["agent_budget"], record.members().as_bytes()) {
            self.worker.host_error("set_property", &error);
        }
    }

    pub fn on_request_headers<H: Host + Abi>(&mut self, host: &H, end_of_stream: bool) -> Flow {
        set_current_agent(None);
        let worker = Rc::clone(&self.worker);
        let config = &worker.config;
        let (route_name, cluster_name) = if config.overrides_need_route() {
            (
                property_or_none(host, &worker, &["xds", "route_name"]),
                property_or_none(host, &worker, &["xds", "cluster_name"]),
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
        let claims_name_agent = matches!(config.identity, IdentitySource::Jwt(_));
        let mut claim_headers: Vec<String> = Vec::new();
        // An unreadable request map is a call with no identity whatever the identity source
        // (no path, no model: nothing to meter it by), so it gets the unidentified outcome.
        let readable = read_headers(host, &worker, Map::RequestHeaders, &mut |name, value| {
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
                let agent = repeated(head.agent.take(), value);
                let named: Rc<str> = Rc::from(agent.as_str());
                set_current_agent(Some(&named));
                self.agent = Some(named);
                head.agent = Some(agent);
            } else if name == config.task_header {
                head.task = Some(repeated(head.task.take(), value));
            } else if name == config.user_header {
                head.user = Some(repeated(head.user.take(), value));
            } else if claims_name_agent
                && name.starts_with(JWT_CLAIM_HEADER_PREFIX)
                && !claim_headers.iter().any(|seen| seen == name)
            {
                claim_headers.push(name.to_string());
            }
        });
        if let (IdentitySource::Jwt(claims), true) = (&config.identity, readable) {
            let payload = claims.payload.as_str();
            head.claims.agent = jwt_claim(host, &worker, payload, &claims.agent);
            head.claims.task = claims
                .task
                .as_deref()
                .and_then(|claim| jwt_claim(host, &worker, payload, claim));
            head.claims.user = claims
                .user
                .as_deref()
                .and_then(|claim| jwt_claim(host, &worker, payload, claim));
            let agent = head.claims.agent.as_deref().map(Rc::from);
            set_current_agent(agent.as_ref());
            self.agent = agent;
        }
        let declared = head.content_length;
        let outcome = self.call.on_request_headers(host, head);
        apply(host, &worker, Map::RequestHeaders, &outcome.edits);
        // Claim headers carry claims to this filter (see JWT_CLAIM_HEADER_PREFIX), read above.
        for name in &claim_headers {
            if let Err(error) = host.remove_header(Map::RequestHeaders, name) {
                worker.host_error("remove_header", &error);
            }
        }
        match outcome.action {
            // Envoy turns a paused request-headers callback into StopAllIteration, which also
            // withholds the body callbacks, so headers continue and the body is held instead
            // (see on_request_body).
            HeadAction::Continue => Flow::Continue,
            HeadAction::WaitForBody => {
                self.request_body = RequestBody::Wanted { declared };
                Flow::Continue
            }
            // With the plugin's allow_on_headers_stop_iteration this is StopIteration: the
            // body callbacks still come, and the headers wait for the body step.
            HeadAction::HoldForBody => {
                self.request_body = RequestBody::Wanted { declared };
                Flow::Pause
            }
            HeadAction::Reply(reply) => {
                send_reply(host, &worker, &reply);
                self.export_attribution(host);
                Flow::Pause
            }
        }
    }

    pub fn on_request_body<H: Host + Abi>(
        &mut self,
        host: &H,
        body_size: usize,
        end_of_stream: bool,
    ) -> Flow {
        let RequestBody::Wanted { declared } = self.request_body else {
            return Flow::Continue;
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
            return Flow::Pause;
        }
        self.request_body = RequestBody::Read;
        // An unreadable body reads as empty: the core finds no model in it and treats the
        // call as it treats any unreadable request.
        let body = host
            .get_buffer(Buffer::RequestBody, 0, body_size)
            .unwrap_or_else(|error| {
                worker.host_error("get_buffer", &error);
                Vec::new()
            });
        let outcome = self.call.on_request_body(host, &body);
        if let Some(reply) = outcome.reply {
            // The call's worst case does not fit its budget: refuse it now. Unless the
            // headers were held, they went upstream already; Envoy resets that request,
            // which never got its body.
            send_reply(host, &worker, &reply);
            self.export_attribution(host);
            return Flow::Pause;
        }
        if let Some(replacement) = outcome.body {
            // Not rewritten, the request goes as the client sent it (no degraded model, no
            // usage option): the call is still booked and its usage read if there is any.
            if let Err(error) = host.set_buffer(Buffer::RequestBody, 0, body_size, &replacement) {
                worker.host_error("set_buffer", &error);
            }
        }
        apply(host, &worker, Map::RequestHeaders, &outcome.headers);
        Flow::Continue
    }

    pub fn on_response_headers<H: Host + Abi>(&mut self, host: &H, end_of_stream: bool) -> Flow {
        set_current_agent(self.agent.as_ref());
        let worker = Rc::clone(&self.worker);
        let mut head = ResponseHead {
            end_of_stream,
            ..ResponseHead::default()
        };
        read_headers(
            host,
            &worker,
            Map::ResponseHeaders,
            &mut |name, value| match name {
                ":status" => head.status = value.parse().unwrap_or(0),
                "content-type" => head.content_type = Some(value.to_string()),
                "content-encoding" => head.content_encoding = Some(value.to_string()),
                _ => {}
            },
        );
        apply(
            host,
            &worker,
            Map::ResponseHeaders,
            &self.call.on_response_headers(&head),
        );
        if end_of_stream {
            self.call.on_response_complete(host);
            self.export_attribution(host);
        }
        Flow::Continue
    }

    /// Trailers end the response: the last body chunk did not say end_of_stream.
    pub fn on_response_trailers<H: Host + Abi>(&mut self, host: &H) -> Flow {
        set_current_agent(self.agent.as_ref());
        self.call.on_response_complete(host);
        self.export_attribution(host);
        Flow::Continue
    }

    pub fn on_response_body<H: Host + Abi>(
        &mut self,
        host: &H,
        body_size: usize,
        end_of_stream: bool,
    ) -> Flow {
        set_current_agent(self.agent.as_ref());
        // Envoy often ends a body with an empty call: nothing to read then. An unreadable
        // chunk reads as empty: its usage is missed and the call settles as unmetered.
        let chunk = if body_size == 0 {
            Vec::new()
        } else {
            host.get_buffer(Buffer::ResponseBody, 0, body_size)
                .unwrap_or_else(|error| {
                    self.worker.host_error("get_buffer", &error);
                    Vec::new()
                })
        };
        match self.call.on_response_body(host, &chunk, end_of_stream) {
            ChunkOutcome::Pass => {}
            ChunkOutcome::Replace(bytes) => {
                // Not replaced, the client gets the chunk as the provider sent it.
                if let Err(error) = host.set_buffer(Buffer::ResponseBody, 0, body_size, &bytes) {
                    self.worker.host_error("set_buffer", &error);
                }
            }
        }
        if end_of_stream {
            self.export_attribution(host);
        }
        Flow::Continue
    }

    /// Envoy is done with the call: settles it if the response did not end.
    pub fn on_log<H: Host + Abi>(&mut self, host: &H) {
        if !self.call.is_open() {
            return;
        }
        // Envoy's response code details say who ended a response that did not complete,
        // e.g. `downstream_remote_disconnect` or `upstream_reset_after_response_started{...}`.
        set_current_agent(self.agent.as_ref());
        let details =
            property_or_none(host, &self.worker, &["response", "code_details"]).unwrap_or_default();
        let cause = if details.contains("downstream") {
            EndCause::ClientAborted
        } else if details.contains("upstream") {
            EndCause::UpstreamAborted
        } else {
            EndCause::Normal
        };
        self.call.on_done(host, cause);
        self.export_attribution(host);
    }
}

#[cfg(test)]
mod tests;

//! What the hooks do, over the adapter: one configuration per filter config Envoy loads,
//! one adapter `Root` (a core `Worker`) per configuration and worker thread, as the wasm
//! build has one per VM, and one adapter call per stream.
//!
//! The tick runs on Envoy's main thread: a timer thread per configuration posts it through
//! the ABI's configuration scheduler every tick period (`TICK_MILLIS`, or fleet mode's
//! `sync_millis`), and it ticks each worker's `Root`
//! in turn (alerts leave through the ABI's configuration-level callouts, which only the main
//! thread may make; counts reach Envoy's stats). A worker's `Root` and every call it made
//! are behind that worker's mutex ([`Pinned`]): the worker thread holds it for a hook, the
//! main thread for a tick, so the `Rc`s inside are never used by two threads at once.

use crate::ffi::{self, ConfigHandle, Filter, Pinned, Scheduler};
use crate::host::NativeHost;
use crate::jwt_guard;
use crate::metrics::Registry;
use agent_budget_adapter::adapter::{Flow, GatewayCall, Root, StatusCall, STATUS_ROOT_ID};
use agent_budget_core::config::IdentitySource;
use agent_budget_core::root::TICK_MILLIS;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

/// What a call that panicked gets while its request is still ours to answer.
const PANIC_STATUS: u32 = 500;
const PANIC_BODY: &[u8] = b"agent-budget: internal error\n";

/// Sets up logging and the panic report; called once, when Envoy loads the module.
pub fn init() {
    crate::logger::install();
    std::panic::set_hook(Box::new(|info| {
        ffi::log(
            ffi::Level::Critical,
            &agent_budget_adapter::adapter::panic_report(info, "the call fails"),
        );
    }));
}

/// A thread's worker of a configuration, with the configuration (gone: it was destroyed).
type ThreadWorker = (Weak<Shared>, Arc<Worker>);

thread_local! {
    /// This thread's worker of each configuration, by configuration id.
    static WORKERS: RefCell<HashMap<u64, ThreadWorker>> = RefCell::new(HashMap::new());
    /// Set while this thread runs adapter code with a worker's mutex held: a hook Envoy
    /// runs from inside one of its calls then leaves the stream alone instead of waiting on
    /// a mutex this thread holds.
    static BUSY: Cell<bool> = const { Cell::new(false) };
}

/// Runs `body` marked busy (see BUSY); None if this thread already is.
fn exclusively<T>(body: impl FnOnce() -> T) -> Option<T> {
    if BUSY.with(Cell::get) {
        return None;
    }
    BUSY.with(|busy| busy.set(true));
    struct Clear;
    impl Drop for Clear {
        fn drop(&mut self) {
            BUSY.with(|busy| busy.set(false));
        }
    }
    let _clear = Clear;
    Some(body())
}

/// One worker thread's state for one configuration.
pub struct Worker {
    root: Mutex<Pinned<Root>>,
}

impl Worker {
    /// The worker's `Root`, locked. A panic while it was held poisons the mutex; the state
    /// is still consistent (cells restore their borrows as a panic unwinds), so it is used on.
    fn lock(&self) -> MutexGuard<'_, Pinned<Root>> {
        self.root
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// What every thread shares of one configuration.
pub struct Shared {
    id: u64,
    handle: ConfigHandle,
    /// The configuration as Envoy gave it (`filter_config`): what the adapter reads as the
    /// plugin configuration.
    pub configuration: Vec<u8>,
    /// The filter's name; `agent_budget_status` serves the status page, as the wasm
    /// build's root id does.
    pub filter_name: String,
    pub metrics: Registry,
    scheduler: Mutex<Option<Scheduler>>,
    workers: Mutex<Vec<Arc<Worker>>>,
    /// Webhook calls in flight: Envoy's callout id → the worker that sent it, its token.
    callouts: Mutex<HashMap<u64, (Weak<Worker>, u32)>>,
    /// Replies (callout id, status, body) that came while a tick held a worker; handled
    /// right after it.
    replies: Mutex<Vec<(u64, u32, Vec<u8>)>>,
    next_token: AtomicU32,
    /// The timer's period, as the adapter set it.
    tick_millis: AtomicU64,
    /// A call came with JWT claims but no guard ran: said once, in the log.
    unguarded_said: AtomicBool,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared {
    /// Whether the tick's timer runs (set_tick_period's answer).
    pub fn ticking(&self) -> bool {
        lock(&self.scheduler).is_some()
    }

    /// Says, once per configuration, why JWT claims are not read on a route without the guard.
    pub fn say_unguarded(&self) {
        if !self.unguarded_said.swap(true, Ordering::Relaxed) {
            log::error!(
                "identity.source: jwt: no {} filter ran before jwt_authn on this route, so its \
                 claim headers could be a client's and name no agent (each such call has no \
                 verified agent); add the guard before jwt_authn (README, Identity)",
                jwt_guard::GUARD_FILTER
            );
        }
    }

    pub fn set_tick_millis(&self, millis: u32) {
        self.tick_millis.store(u64::from(millis), Ordering::Relaxed);
    }

    fn tick_period(&self) -> Duration {
        Duration::from_millis(self.tick_millis.load(Ordering::Relaxed))
    }

    /// Posts a tick to the main thread; false once the configuration is gone.
    fn post_tick(&self) -> bool {
        match lock(&self.scheduler).as_ref() {
            Some(scheduler) => {
                scheduler.commit(0);
                true
            }
            None => false,
        }
    }

    /// Sends a webhook call for `worker` (main thread, during its tick); the token the
    /// reply will be handed to the worker with.
    pub fn callout(
        &self,
        worker: &Arc<Worker>,
        cluster: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        timeout_ms: u32,
    ) -> Option<u32> {
        let headers: Vec<(String, String)> = headers
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect();
        let id = self
            .handle
            .http_callout(cluster, &headers, body, u64::from(timeout_ms))?;
        let token = self
            .next_token
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_add(1);
        lock(&self.callouts).insert(id, (Arc::downgrade(worker), token));
        Some(token)
    }

    fn tick(&self) {
        let workers = lock(&self.workers).clone();
        for worker in &workers {
            let host = NativeHost::main(self, Some(worker));
            exclusively(|| worker.lock().0.on_tick(&host));
        }
        self.handle_replies();
        self.metrics.flush(self.handle);
    }

    fn handle_replies(&self) {
        let replies = std::mem::take(&mut *lock(&self.replies));
        for (id, status, body) in replies {
            let Some((worker, token)) = lock(&self.callouts).remove(&id) else {
                continue;
            };
            let Some(worker) = worker.upgrade() else {
                continue;
            };
            let host = NativeHost::callout_reply(self, &worker, status, &body);
            exclusively(|| {
                worker
                    .lock()
                    .0
                    .on_http_call_response(&host, token, body.len())
            });
        }
    }
}

/// The module's side of one filter config (what `on_http_filter_config_new` returns): the
/// budget filter (or its status page), or the JWT claim guard, which keeps no state.
pub enum Configured {
    Budget(Arc<Shared>),
    JwtGuard,
}

impl Configured {
    pub fn on_scheduled(&self) {
        if let Configured::Budget(shared) = self {
            shared.tick();
        }
    }

    pub fn on_callout_done(&self, callout_id: u64, status: u32, body: Vec<u8>) {
        let Configured::Budget(shared) = self else {
            return;
        };
        lock(&shared.replies).push((callout_id, status, body));
        // Within a tick (a callout failing as it is made) the tick handles it after.
        if !BUSY.with(Cell::get) {
            shared.handle_replies();
        }
    }
}

/// A filter config: refused (None, Envoy rejects the config) if the configuration is.
pub fn new_config(handle: ConfigHandle, name: &[u8], configuration: &[u8]) -> Option<Configured> {
    static NEXT_ID: AtomicU64 = AtomicU64::new(1);
    let Ok(filter_name) = std::str::from_utf8(name) else {
        log::error!("the filter name is not UTF-8");
        return None;
    };
    if filter_name == jwt_guard::GUARD_FILTER {
        if !jwt_guard::guard_config_is_empty(configuration) {
            log::error!("{filter_name} takes no filter_config");
            return None;
        }
        return Some(Configured::JwtGuard);
    }
    let status_page = filter_name == STATUS_ROOT_ID;
    // The status page reads what the gateway writes and needs no tick.
    let scheduler = if status_page {
        None
    } else {
        let Some(scheduler) = Scheduler::new(handle) else {
            log::error!("cannot start the tick: Envoy gave no scheduler");
            return None;
        };
        Some(scheduler)
    };
    let shared = Arc::new(Shared {
        id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
        handle,
        configuration: configuration.to_vec(),
        filter_name: filter_name.to_string(),
        metrics: Registry::default(),
        scheduler: Mutex::new(scheduler),
        workers: Mutex::new(Vec::new()),
        callouts: Mutex::new(HashMap::new()),
        replies: Mutex::new(Vec::new()),
        next_token: AtomicU32::new(0),
        tick_millis: AtomicU64::new(TICK_MILLIS),
        unguarded_said: AtomicBool::new(false),
    });
    shared.metrics.declare(handle);
    // Checks the configuration as every worker will read it, and prepares the ledger's
    // keys before any worker charges them.
    let mut root = Root::default();
    if !root.on_configure(&NativeHost::main(&shared, None)) {
        return None;
    }
    // The claims arrive as headers named after them (see jwt_guard): a claim no header can
    // be named after is refused here rather than every call reading as unidentified.
    if let Some(IdentitySource::Jwt(claims)) = root.config().map(|config| &config.identity) {
        let named = [
            ("identity.agent_claim", Some(&claims.agent)),
            ("identity.task_claim", claims.task.as_ref()),
            ("identity.user_claim", claims.user.as_ref()),
        ];
        for (field, claim) in named {
            if let Some(claim) = claim.filter(|claim| !jwt_guard::claim_fits_a_header(claim)) {
                log::error!(
                    "invalid configuration: field `{field}`: the native build reads claims from \
                     the headers jwt_authn writes ({}<claim>), and {claim:?} cannot be part of \
                     a header name; use a claim of letters, digits, `.`, `_` and `-`",
                    jwt_guard::CLAIM_HEADER_PREFIX
                );
                return None;
            }
        }
    }
    // The configuration's own worker ticks from the start, as a wasm VM's root does: fleet
    // mode loads the fleet's spend before the first call, whichever thread serves it.
    if !status_page {
        lock(&shared.workers).push(Arc::new(Worker {
            root: Mutex::new(Pinned(root)),
        }));
    }
    if !status_page && !start_timer(&shared) {
        log::error!("cannot start the tick: no timer thread");
        return None;
    }
    Some(Configured::Budget(shared))
}

/// Posts a tick every tick period until the configuration is destroyed.
fn start_timer(shared: &Arc<Shared>) -> bool {
    let shared = Arc::downgrade(shared);
    std::thread::Builder::new()
        .name("agent-budget-tick".to_string())
        .spawn(move || {
            let mut period = Duration::from_millis(TICK_MILLIS);
            loop {
                std::thread::sleep(period);
                let Some(shared) = shared.upgrade() else {
                    break;
                };
                if !shared.post_tick() {
                    break;
                }
                period = shared.tick_period();
            }
        })
        .is_ok()
}

/// Envoy is done with a filter config (after every stream it made).
pub fn destroy_config(configured: Configured) {
    let Configured::Budget(shared) = configured else {
        return;
    };
    // Dropped here, on the main thread: the timer thread stops at its next wake-up.
    lock(&shared.scheduler).take();
    lock(&shared.workers).clear();
    lock(&shared.callouts).clear();
}

/// This thread's worker for a configuration, configured on first use (None: refused).
fn worker_for(shared: &Arc<Shared>, filter: Filter) -> Option<Arc<Worker>> {
    WORKERS.with(|workers| {
        let mut workers = workers.borrow_mut();
        if let Some((_, worker)) = workers.get(&shared.id) {
            return Some(Arc::clone(worker));
        }
        // A new configuration on this thread: forget the workers of destroyed ones.
        workers.retain(|_, (config, _)| config.strong_count() > 0);
        let mut root = Root::default();
        let configured =
            exclusively(|| root.on_configure(&NativeHost::stream(shared, filter))).unwrap_or(false);
        if !configured {
            return None;
        }
        let worker = Arc::new(Worker {
            root: Mutex::new(Pinned(root)),
        });
        lock(&shared.workers).push(Arc::clone(&worker));
        workers.insert(shared.id, (Arc::downgrade(shared), Arc::clone(&worker)));
        Some(worker)
    })
}

enum Call {
    /// Boxed: the gateway call is far the larger.
    Gateway(Box<GatewayCall>),
    Status(StatusCall),
}

/// The module's side of one stream (what `on_http_filter_new` returns).
pub enum Stream {
    Budget(BudgetStream),
    JwtGuard,
}

/// A stream of the budget filter or its status page.
pub struct BudgetStream {
    shared: Arc<Shared>,
    worker: Arc<Worker>,
    /// Only used with the worker's mutex held (see the module doc). None after a panic.
    call: RefCell<Option<Call>>,
    /// The response has started: a failure can no longer answer the request.
    responding: Cell<bool>,
}

/// A new stream's state; None (Envoy closes the stream) if no worker could be configured.
pub fn new_stream(configured: &Configured, filter: Filter) -> Option<Stream> {
    let shared = match configured {
        Configured::Budget(shared) => Arc::clone(shared),
        Configured::JwtGuard => return Some(Stream::JwtGuard),
    };
    let worker = worker_for(&shared, filter)?;
    let call = exclusively(|| {
        let root = worker.lock();
        root.0
            .new_http_call(|call| Call::Gateway(Box::new(call)), Call::Status)
    })??;
    Some(Stream::Budget(BudgetStream {
        shared,
        worker,
        call: RefCell::new(Some(call)),
        responding: Cell::new(false),
    }))
}

/// Each hook, for the kind of stream it is (the guard has only a request-headers step).
impl Stream {
    pub fn on_request_headers(&self, filter: Filter, end_of_stream: bool) -> bool {
        match self {
            Stream::Budget(stream) => stream.on_request_headers(filter, end_of_stream),
            Stream::JwtGuard => {
                jwt_guard::on_request_headers(filter);
                false
            }
        }
    }

    pub fn on_request_body(&self, filter: Filter, end_of_stream: bool) -> bool {
        match self {
            Stream::Budget(stream) => stream.on_request_body(filter, end_of_stream),
            Stream::JwtGuard => false,
        }
    }

    pub fn on_response_headers(&self, filter: Filter, end_of_stream: bool) {
        if let Stream::Budget(stream) = self {
            stream.on_response_headers(filter, end_of_stream);
        }
    }

    pub fn on_response_body(&self, filter: Filter, end_of_stream: bool) {
        if let Stream::Budget(stream) = self {
            stream.on_response_body(filter, end_of_stream);
        }
    }

    pub fn on_response_trailers(&self, filter: Filter) {
        if let Stream::Budget(stream) = self {
            stream.on_response_trailers(filter);
        }
    }

    pub fn on_complete(&self, filter: Filter) {
        if let Stream::Budget(stream) = self {
            stream.on_complete(filter);
        }
    }

    /// A hook panicked: the budget stream fails its call; a guard that may not have removed
    /// the client's claim headers refuses the request (they must never reach jwt_authn's
    /// readers unguarded; no mark was set, so the budget filter would not trust them anyway).
    pub fn panicked(&self, filter: Filter) {
        match self {
            Stream::Budget(stream) => stream.panicked(filter),
            Stream::JwtGuard => refuse_after_panic(filter),
        }
    }
}

fn refuse_after_panic(filter: Filter) {
    let headers = [("content-type".to_string(), "text/plain".to_string())];
    filter.send_response(PANIC_STATUS, &headers, PANIC_BODY);
}

impl BudgetStream {
    /// Runs `body` on the call with the worker's mutex held; None if the call is gone (a
    /// panic) or this thread is already inside the stream.
    fn with_call<T>(&self, body: impl FnOnce(&mut Call) -> T) -> Option<T> {
        exclusively(|| {
            let _root = self.worker.lock();
            let mut call = self.call.try_borrow_mut().ok()?;
            Some(body(call.as_mut()?))
        })?
    }

    /// Sends the local reply the adapter asked for, now that the stream is free.
    fn send_reply(&self, host: &NativeHost<'_>, filter: Filter) {
        if let Some(reply) = host.take_reply() {
            filter.send_response(reply.status, &reply.headers, &reply.body);
        }
    }

    pub fn on_request_headers(&self, filter: Filter, end_of_stream: bool) -> bool {
        let host = NativeHost::stream(&self.shared, filter);
        let flow = self.with_call(|call| match call {
            Call::Gateway(call) => call.on_request_headers(&host, end_of_stream),
            Call::Status(call) => call.on_request_headers(&host),
        });
        self.send_reply(&host, filter);
        flow == Some(Flow::Pause)
    }

    pub fn on_request_body(&self, filter: Filter, end_of_stream: bool) -> bool {
        let host = NativeHost::stream(&self.shared, filter);
        let flow = self.with_call(|call| match call {
            Call::Gateway(call) => {
                call.on_request_body(&host, filter.request_body_size(), end_of_stream)
            }
            Call::Status(_) => Flow::Continue,
        });
        self.send_reply(&host, filter);
        flow == Some(Flow::Pause)
    }

    pub fn on_response_headers(&self, filter: Filter, end_of_stream: bool) {
        self.responding.set(true);
        let host = NativeHost::stream(&self.shared, filter);
        self.with_call(|call| {
            if let Call::Gateway(call) = call {
                call.on_response_headers(&host, end_of_stream);
            }
        });
    }

    pub fn on_response_body(&self, filter: Filter, end_of_stream: bool) {
        let host = NativeHost::stream(&self.shared, filter);
        self.with_call(|call| {
            if let Call::Gateway(call) = call {
                call.on_response_body(&host, filter.response_chunk_size(), end_of_stream);
            }
        });
    }

    pub fn on_response_trailers(&self, filter: Filter) {
        let host = NativeHost::stream(&self.shared, filter);
        self.with_call(|call| {
            if let Call::Gateway(call) = call {
                call.on_response_trailers(&host);
            }
        });
    }

    /// The stream is over (before Envoy writes its access log).
    pub fn on_complete(&self, filter: Filter) {
        let host = NativeHost::stream(&self.shared, filter);
        self.with_call(|call| {
            if let Call::Gateway(call) = call {
                call.on_log(&host);
            }
        });
    }

    /// A hook of this stream panicked: the call is dropped (nothing more is metered for it)
    /// and, while the request is still ours to answer, refused rather than forwarded
    /// unmetered.
    pub fn panicked(&self, filter: Filter) {
        exclusively(|| {
            let _root = self.worker.lock();
            if let Ok(mut call) = self.call.try_borrow_mut() {
                call.take();
            }
        });
        if !self.responding.get() {
            refuse_after_panic(filter);
        }
    }
}

impl Drop for BudgetStream {
    fn drop(&mut self) {
        // The call's Rcs are the worker's: released with its mutex held.
        let _root = self.worker.lock();
        self.call.get_mut().take();
    }
}

//! One call through the filter, as a state machine over the HTTP callbacks.
//!
//! The proxy-wasm adapter (the root crate) reads headers and bodies from Envoy, hands them
//! to [`Call`] as plain values and applies what comes back (header edits, a body
//! replacement, a local reply). Nothing here touches the host except through [`Host`].
//!
//! A call moves through stages, each holding what is known by then: received; then refused
//! (the filter replied), passed (forwarded unmetered) or forwarded (who pays, its API,
//! booking, degrade state and response meter); then done. This module only sequences the
//! steps: the decisions are [`policy`]'s, the replies [`replies`]'s, the record
//! [`crate::attribution`]'s and the cutting of usage chunks [`crate::stripper`]'s.

use crate::alerts::{Alert, Trigger};
use crate::attribution::{self, Attribution, Format, Outcome};
use crate::booking::{Booking, Settled, Trouble};
use crate::config::{
    AgentBudget, BudgetHeaders, Config, IdentitySource, LedgerUnavailable, LimitAction,
};
use crate::degrade::{self, Rewrite};
use crate::host::Host;
use crate::identity::{api_key_agent, identify, Credentials, Identity, TokenClaims};
use crate::ledger::{Account, AccountKey, Ledger, LedgerError};
use crate::metrics::{AgentCounter, AgentId, CallOutcome, Counter, ModelCounter, ReasonCounter};
use crate::period::Period;
use crate::policy::{self, Crossing, Decision, Line, Misfit, Scope, StopReason};
use crate::providers::{
    string_values_len, Api, Detected, EventFate, Metered, ModelIn, Progress, StreamMeter, Unmetered,
};
pub use crate::replies::LocalReply;
use crate::replies::{self, WorstCase};
use crate::root::Worker;
use crate::sse::{SseEvent, SseParser};
pub use crate::stripper::ChunkOutcome;
use crate::stripper::{UsageStripper, MAX_EVENT_BYTES};
use std::rc::Rc;

/// What the adapter read from the request headers.
#[derive(Debug, Clone, Default)]
pub struct RequestHead {
    pub path: String,
    pub agent: Option<String>,
    pub task: Option<String>,
    pub user: Option<String>,
    /// The client accepts a compressed response (the filter then asks for identity).
    pub accept_encoding: bool,
    /// False when the headers ended the request (no body follows).
    pub has_body: bool,
    /// The request's declared body size, if any (for degrading a model named in the path).
    pub content_length: Option<u64>,
    /// Envoy's route and cluster names, read only when `api_overrides` match on them.
    pub route_name: Option<String>,
    pub cluster_name: Option<String>,
    /// Read only when the API key names the agent (`identity.source: api_key`).
    pub credentials: Credentials,
    /// Read only when a verified JWT names the agent (`identity.source: jwt`).
    pub claims: TokenClaims,
}

/// How Envoy finished with a call whose response had not ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndCause {
    /// The response completed (or never started) normally.
    Normal,
    /// The client went away before the response ended: the provider still bills what it
    /// generated, so the call is charged an estimate.
    ClientAborted,
    /// The upstream cut the response short: counted as unmetered (`incomplete`).
    UpstreamAborted,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeadAction {
    Continue,
    /// Forward the headers, hold the body until it is complete, then call
    /// [`Call::on_request_body`].
    WaitForBody,
    /// Hold the headers as well as the body until the body is complete, then call
    /// [`Call::on_request_body`] and apply its header edits (`hold_request_headers`).
    HoldForBody,
    Reply(LocalReply),
}

/// Header edits for the adapter to apply: set (or replace) these, remove those.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderEdits {
    pub set: Vec<(String, String)>,
    pub remove: Vec<String>,
}

/// Result of the request-headers step: the action and the header edits to apply first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeadOutcome {
    pub action: HeadAction,
    pub edits: HeaderEdits,
}

/// Result of the request-body step.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BodyOutcome {
    /// Send this body upstream instead of the client's.
    pub body: Option<Vec<u8>>,
    /// Refuse the call with this reply after all (its worst case does not fit the budget).
    pub reply: Option<LocalReply>,
    /// Request-header edits to apply before the held headers leave (after
    /// [`HeadAction::HoldForBody`] only).
    pub headers: HeaderEdits,
}

/// What the adapter read from the response headers.
#[derive(Debug, Clone, Default)]
pub struct ResponseHead {
    pub status: u32,
    pub content_type: Option<String>,
    pub content_encoding: Option<String>,
    pub end_of_stream: bool,
}

/// Where a call is, and what it knows there.
// A call lives inside the adapter's boxed HTTP context already: boxing the forwarded
// stage would only add an allocation per call.
#[allow(clippy::large_enum_variant)]
enum Stage {
    /// Created: the request headers come next.
    Received,
    /// The filter answered the call itself: unattributed, or refused by its budget.
    Refused,
    /// Forwarded unmetered, as no API format matches its path: its response only gets the
    /// budget headers (those the option shows).
    Passed {
        budget_headers: Vec<(String, String)>,
    },
    /// Forwarded and metered, until its response ends.
    Forwarded(Forwarded),
    /// Settled: charged, or counted unmetered.
    Done,
}

/// Who a call is charged to, and when it came.
struct Caller {
    identity: Identity,
    /// The budget's metric id.
    agent: Option<AgentId>,
    /// When the call started: the one clock read of the call (periods, resets, alerts).
    now: i64,
}

/// What a forwarded, metered call knows.
struct Forwarded {
    caller: Caller,
    api: Api,
    /// The path is an Azure OpenAI deployment's.
    azure: bool,
    /// Where the call names its model: how, and whether, degrade can change it.
    model_in: ModelIn,
    /// The model the request names: an Azure deployment's configured model, else the
    /// request body's `model`, else the model or deployment the path names.
    requested_model: Option<String>,
    /// Request size, for the worst case and for the input of an abandoned call.
    request_bytes: u64,
    /// The ledger accounts this call is checked against and charged to.
    booking: Booking,
    degrade: Degrade,
    /// A budget of the agent was used up when the call came (`alert` lets it through).
    past_limit: bool,
    /// Its charge booked spend past an `alert` budget's limit.
    overage: bool,
    /// The tightest agent line's `x-agent-budget-*` headers, unless the option hides them.
    budget_headers: Vec<(String, String)>,
    /// The filter asked for a usage report the client did not: it is cut from the stream.
    strip_usage: bool,
    response: Response,
}

/// How far `degrade` went with a call.
enum Degrade {
    /// Not called for: the budget has room, or its action is another.
    Off,
    /// Degrading, the model unchanged: the body is still to come, the agent's map has no
    /// cheaper model for it, or its model cannot change (an Azure deployment).
    On,
    /// The model was swapped: the call asked for `from` and is served `to`.
    Swapped { from: String, to: String },
}

impl Degrade {
    fn is_on(&self) -> bool {
        !matches!(self, Degrade::Off)
    }
}

/// What the response is metered from.
enum Response {
    /// Its headers have not come yet.
    Pending,
    /// Its headers came; its first body bytes will say how it is framed. The content type is
    /// only the provider's word (and mislabelled bodies happen): a JSON body opens with `{`
    /// or `[` (a Gemini stream without `alt=sse` is one JSON array), an SSE stream with a
    /// field name and a colon; bytes that are neither go by the label. `kept` holds the first
    /// few bytes (after leading whitespace) while they could still open either framing.
    Sniffing {
        api: Api,
        strip_usage: bool,
        labelled_stream: bool,
        kept: Vec<u8>,
    },
    /// A JSON body, kept until it ends.
    Json(Vec<u8>),
    /// A JSON body past `max_response_body_bytes`: no longer kept.
    JsonTooLarge,
    /// An SSE stream, metered event by event.
    Stream(Box<StreamState>),
    /// A response that cannot be metered, and why.
    Unmetered(Unmetered),
}

struct StreamState {
    parser: SseParser,
    meter: StreamMeter,
    stripper: Option<UsageStripper>,
    /// Stream offset just past the last complete event.
    boundary: u64,
    /// The events of the current chunk (kept for its allocation).
    events: Vec<SseEvent>,
}

/// Why a call is refused: the line that stopped it, and its worst case when that is what
/// did not fit.
/// What a charge rests on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Basis {
    /// The provider's usage report.
    Reported,
    /// An estimate: the client left before the report.
    Estimated,
    /// An estimate: the provider cut the stream before its report.
    Truncated,
}

struct Stop {
    line: Box<Line>,
    reason: StopReason,
    worst_case: Option<WorstCase>,
}

pub struct Call {
    worker: Rc<Worker>,
    stage: Stage,
    /// The last attribution record, for the adapter's access-log properties.
    pub attribution: Option<Attribution>,
}

impl Call {
    pub fn new(worker: Rc<Worker>) -> Call {
        Call {
            worker,
            stage: Stage::Received,
            attribution: None,
        }
    }

    pub fn worker(&self) -> &Worker {
        &self.worker
    }

    /// True while the call still waits to be settled (or to publish its attribution).
    pub fn is_open(&self) -> bool {
        matches!(self.stage, Stage::Passed { .. } | Stage::Forwarded(_))
    }

    pub fn on_request_headers(&mut self, host: &dyn Host, head: RequestHead) -> HeadOutcome {
        let worker = Rc::clone(&self.worker);
        let config = &worker.config;
        // In the verified modes a header that names who pays is the client's claim, not the
        // identity: it must not reach the provider (or anything after this filter) as if it were.
        let (agent, task, user, replaced_headers) = match &config.identity {
            IdentitySource::Header => (
                head.agent.as_deref(),
                head.task.as_deref(),
                head.user.as_deref(),
                Vec::new(),
            ),
            IdentitySource::ApiKey(keys) => (
                api_key_agent(keys, &head.credentials),
                head.task.as_deref(),
                head.user.as_deref(),
                vec![(&config.agent_header, head.agent.is_some())],
            ),
            IdentitySource::Jwt(claims) => (
                head.claims.agent.as_deref(),
                if claims.task.is_some() {
                    head.claims.task.as_deref()
                } else {
                    head.task.as_deref()
                },
                if claims.user.is_some() {
                    head.claims.user.as_deref()
                } else {
                    head.user.as_deref()
                },
                vec![
                    (&config.agent_header, head.agent.is_some()),
                    (
                        &config.task_header,
                        claims.task.is_some() && head.task.is_some(),
                    ),
                    (
                        &config.user_header,
                        claims.user.is_some() && head.user.is_some(),
                    ),
                ],
            ),
        };
        let mut outcome = self.decide_request_headers(host, &head, agent, task, user);
        if !matches!(outcome.action, HeadAction::Reply(_)) {
            for (name, present) in replaced_headers {
                if present {
                    outcome.edits.remove.push(name.clone());
                }
            }
        }
        outcome
    }

    fn decide_request_headers(
        &mut self,
        host: &dyn Host,
        head: &RequestHead,
        agent: Option<&str>,
        task: Option<&str>,
        user: Option<&str>,
    ) -> HeadOutcome {
        let worker = Rc::clone(&self.worker);
        let config = &worker.config;
        let detected = config.detect_api(
            &head.path,
            head.route_name.as_deref(),
            head.cluster_name.as_deref(),
        );
        let api = detected.as_ref().map(|d| d.api);
        let model_in = detected.as_ref().map_or(ModelIn::Body, Detected::model_in);
        let azure = detected
            .as_ref()
            .is_some_and(|d| d.azure_deployment.is_some());
        let requested_model = detected.and_then(|d| path_model(config, d));
        // A call the filter does not meter is refused in the OpenAI shape.
        let reply_api = api.unwrap_or(Api::OpenAiChat);
        let identity = match identify(config, agent, task, user) {
            Ok(identity) => identity,
            Err(unattributed) => {
                worker.metrics.count(
                    Counter::Reason(ReasonCounter::Unattributed, unattributed.reason()),
                    1,
                );
                self.stage = Stage::Refused;
                let reply = match config.identity {
                    IdentitySource::Header => {
                        replies::unattributed(reply_api, &unattributed, &config.agent_header)
                    }
                    IdentitySource::ApiKey(_) => replies::no_agent_key(reply_api),
                    IdentitySource::Jwt(_) => replies::no_verified_agent(reply_api, &unattributed),
                };
                return reply_only(reply);
            }
        };
        let now = host.now_unix_secs();
        worker.serving();
        let caller = Caller {
            agent: worker.metrics.agents().id(&identity.budget),
            identity,
            now,
        };
        caller.count(&worker, AgentCounter::Requests, 1);

        let Some(budget) = config.budget(&caller.identity.budget) else {
            // identify() only returns configured budgets.
            self.stage = Stage::Passed {
                budget_headers: Vec::new(),
            };
            return forward(HeadAction::Continue, HeaderEdits::default());
        };
        let mut trouble = Trouble::default();
        let periods = worker.current_periods(now);
        let (booking, lines) =
            Booking::open(host, &caller.identity, budget, &periods, &mut trouble);
        // Only a host failure: a corrupt value is data trouble, counted, and fails open.
        let unreadable = trouble
            .errors
            .iter()
            .any(|error| matches!(error, LedgerError::Host { .. }));
        worker.report(trouble);
        let unchecked = unreadable
            && budget.action == LimitAction::Stop
            && config.ledger_unavailable == LedgerUnavailable::Refuse;
        if unchecked || worker.refuses_unsynced(host, budget.action) {
            // The limit cannot be checked (or, in fleet mode, not yet against the fleet's
            // spend): a `stop` agent spends nothing unchecked.
            caller.count(&worker, AgentCounter::Rejected, 1);
            self.stage = Stage::Refused;
            return reply_only(replies::budget_unavailable(
                reply_api,
                &caller.identity.budget,
            ));
        }
        let past_limit = policy::past_limit(&lines);
        // Built while the lines are at hand, unless no call can show them.
        let budget_headers = if policy::shows_budget_headers(config.budget_headers, true) {
            policy::headline(&lines)
                .map(|line| policy::budget_headers(line, now))
                .unwrap_or_default()
        } else {
            Vec::new()
        };

        let degrade_due = match policy::decide(budget, &lines) {
            Decision::Stop { line, reason } => {
                let stop = Stop {
                    line: Box::new(line),
                    reason,
                    worst_case: None,
                };
                let format = Format {
                    api: reply_api,
                    azure,
                };
                let reply = self.refuse(host, caller, format, requested_model, booking, stop);
                return reply_only(reply);
            }
            Decision::Degrade => true,
            Decision::Allow => false,
        };
        let Some(api) = api else {
            // No format the filter meters: the limit shows only in the budget headers.
            let budget_headers = if policy::shows_budget_headers(config.budget_headers, past_limit)
            {
                budget_headers
            } else {
                Vec::new()
            };
            let agent = caller.agent;
            let record = Attribution::new(
                caller.identity,
                None,
                requested_model,
                None,
                CallOutcome::Unmetered,
                Outcome::Passed,
            );
            self.attribute(agent, record);
            self.stage = Stage::Passed { budget_headers };
            return forward(HeadAction::Continue, HeaderEdits::default());
        };
        let mut call = Forwarded {
            caller,
            api,
            azure,
            model_in,
            requested_model,
            request_bytes: 0,
            booking,
            degrade: Degrade::Off,
            past_limit,
            overage: false,
            budget_headers,
            strip_usage: false,
            response: Response::Pending,
        };
        let mut edits = HeaderEdits::default();
        if degrade_due {
            // Degrading starts with this call: its budget is used up.
            if let Some(line) = lines
                .iter()
                .find(|l| l.scope == Scope::Agent && l.exhausted())
            {
                call.caller
                    .limit_took_effect(host, &worker, budget, line, Trigger::Reached);
            }
            call.degrade_path(&head.path, budget, &mut edits);
        } else if policy::checks_worst_case_at_headers(budget.action, model_in, config.reservations)
        {
            // A model in the path can only change now, before the headers leave: degrade now
            // if the call's worst case (its declared size, the default output limit) would
            // not fit, as the body step does for a model in the body.
            call.request_bytes = head.content_length.unwrap_or(0);
            let estimate = call.worst_case(config, config.default_max_output_tokens);
            if !policy::fits_agent_lines(&lines, estimate) {
                if let Some(line) = lines
                    .iter()
                    .find(|l| l.scope == Scope::Agent && !l.fits(estimate, 0))
                {
                    let trigger = Trigger::WorstCase {
                        worst_case_micro_usd: estimate,
                        remaining_micro_usd: line.remaining(),
                    };
                    call.caller
                        .limit_took_effect(host, &worker, budget, line, trigger);
                }
                call.degrade_path(&head.path, budget, &mut edits);
            }
        }
        self.stage = Stage::Forwarded(call);

        // The filter must read what it meters: ask for an uncompressed response (Envoy can
        // still compress toward the client after this filter). Without the header a
        // provider answers uncompressed anyway.
        if head.accept_encoding {
            edits
                .set
                .push(("accept-encoding".to_string(), "identity".to_string()));
        }
        if !head.has_body {
            return forward(HeadAction::Continue, edits);
        }
        if config.hold_request_headers {
            // The body step sets the length of a body it rewrites.
            return forward(HeadAction::HoldForBody, edits);
        }
        // The headers leave before the body is read: when the body may be rewritten, its
        // length cannot be declared in advance, so Envoy sends it chunked.
        if policy::body_may_change(api, budget.action) {
            edits.remove.push("content-length".to_string());
        }
        forward(HeadAction::WaitForBody, edits)
    }

    /// The complete request body (only after [`HeadAction::WaitForBody`]): learns the model
    /// and limits, applies `degrade`, reserves the call's worst-case cost, and says whether
    /// the body changes or the call is refused after all.
    pub fn on_request_body(&mut self, host: &dyn Host, body: &[u8]) -> BodyOutcome {
        let worker = Rc::clone(&self.worker);
        let Stage::Forwarded(call) = &mut self.stage else {
            return BodyOutcome::default();
        };
        let stop = match call.read_body(&worker, host, body) {
            Ok(mut outcome) => {
                if let (Some(replacement), true) =
                    (&outcome.body, worker.config.hold_request_headers)
                {
                    outcome
                        .headers
                        .set
                        .push(("content-length".to_string(), replacement.len().to_string()));
                }
                return outcome;
            }
            Err(stop) => stop,
        };
        let Stage::Forwarded(call) = std::mem::replace(&mut self.stage, Stage::Refused) else {
            return BodyOutcome::default();
        };
        let model = call.model().map(str::to_string);
        let format = call.format();
        let reply = self.refuse(host, call.caller, format, model, call.booking, stop);
        BodyOutcome {
            body: None,
            reply: Some(reply),
            headers: HeaderEdits::default(),
        }
    }

    /// Refuses the call for its budget: counts it, logs it, attributes it, returns its
    /// reservations and builds the 429.
    fn refuse(
        &mut self,
        host: &dyn Host,
        caller: Caller,
        format: Format,
        model: Option<String>,
        mut booking: Booking,
        stop: Stop,
    ) -> LocalReply {
        let worker = Rc::clone(&self.worker);
        let api = format.api;
        let Stop {
            line,
            reason,
            worst_case,
        } = stop;
        caller.count(&worker, AgentCounter::Rejected, 1);
        log::info!(
            "stopped agent={} budget={} scope={} period={} reason={:?} committed_micro_usd={} limit_micro_usd={}",
            caller.identity.agent,
            caller.identity.budget,
            line.scope.describe(),
            line.period.kind.name(),
            reason,
            line.committed(),
            line.limit
        );
        if line.scope == Scope::Agent {
            // The limit takes effect now, whether spend reached it (or a reload lowered the
            // budget below it) or this call no longer fits what is left.
            if let Some(budget) = worker.config.budget(&caller.identity.budget) {
                let trigger = match &worst_case {
                    Some(wc) => Trigger::WorstCase {
                        worst_case_micro_usd: wc.micro_usd,
                        remaining_micro_usd: line.remaining(),
                    },
                    None => Trigger::Reached,
                };
                let took_effect = policy::crossing_of(reason).map(|c| (c, trigger));
                caller.raise_levels(
                    host,
                    &worker,
                    budget,
                    &line.period,
                    line.state.spent,
                    took_effect,
                );
            }
        }
        // A refused call is one the limit acted on.
        let with_headers = policy::shows_budget_headers(worker.config.budget_headers, true);
        let reply = replies::budget_exceeded(
            api,
            &caller.identity.budget,
            &line,
            reason,
            worst_case,
            caller.now,
            with_headers,
        );
        let agent = caller.agent;
        let record = Attribution::new(
            caller.identity,
            Some(format),
            model,
            None,
            CallOutcome::Stopped,
            Outcome::Stopped {
                status: reply.status,
            },
        );
        self.attribute(agent, record);
        let mut trouble = Trouble::default();
        booking.release(host, &mut trouble);
        worker.report(trouble);
        self.stage = Stage::Refused;
        reply
    }

    pub fn on_response_headers(&mut self, head: &ResponseHead) -> HeaderEdits {
        let option = self.worker.config.budget_headers;
        match &mut self.stage {
            Stage::Passed { budget_headers } => HeaderEdits {
                set: std::mem::take(budget_headers),
                remove: Vec::new(),
            },
            Stage::Forwarded(call) => call.on_response_headers(option, head),
            Stage::Received | Stage::Refused | Stage::Done => HeaderEdits::default(),
        }
    }

    pub fn on_response_body(
        &mut self,
        host: &dyn Host,
        chunk: &[u8],
        end_of_stream: bool,
    ) -> ChunkOutcome {
        let limit = self.worker.config.max_response_body_bytes as usize;
        let outcome = match &mut self.stage {
            Stage::Forwarded(call) => call.response.feed(chunk, end_of_stream, limit),
            Stage::Passed { .. } => ChunkOutcome::Pass,
            Stage::Received | Stage::Refused | Stage::Done => return ChunkOutcome::Pass,
        };
        if end_of_stream {
            self.finish(host, EndCause::Normal);
        }
        outcome
    }

    /// The response ended without (more) body: headers only, or trailers after the body.
    pub fn on_response_complete(&mut self, host: &dyn Host) {
        self.finish(host, EndCause::Normal);
    }

    /// Envoy is done with the call (`on_log`): settle anything not yet settled.
    pub fn on_done(&mut self, host: &dyn Host, cause: EndCause) {
        // Reaching here unsettled means the response did not end; with no better word from
        // Envoy, assume the upstream cut it (no estimate is charged).
        let cause = if cause == EndCause::Normal {
            EndCause::UpstreamAborted
        } else {
            cause
        };
        self.finish(host, cause);
    }

    fn finish(&mut self, host: &dyn Host, cause: EndCause) {
        match std::mem::replace(&mut self.stage, Stage::Done) {
            Stage::Forwarded(call) => self.settle(host, call, cause),
            Stage::Passed { .. } => {}
            // Nothing to settle: the call was never forwarded, or is settled already.
            stage @ (Stage::Received | Stage::Refused | Stage::Done) => self.stage = stage,
        }
    }

    /// Charges the call what its response reported (or an estimate, if the client left),
    /// or counts it unmetered, and attributes it.
    fn settle(&mut self, host: &dyn Host, mut call: Forwarded, cause: EndCause) {
        let worker = Rc::clone(&self.worker);
        let response = std::mem::replace(&mut call.response, Response::Pending);
        let model = call.model().map(str::to_string);
        let outcome = match response.end(call.api, cause, call.request_bytes) {
            Ok((metered, basis)) => {
                if basis == Basis::Truncated {
                    // Charged, and still counted as a response that did not complete.
                    worker.metrics.count(
                        Counter::Reason(ReasonCounter::Unmetered, Unmetered::Incomplete.reason()),
                        1,
                    );
                }
                call.charge(host, &worker, metered, basis != Basis::Reported)
            }
            Err(reason) => {
                worker.metrics.count(
                    Counter::Reason(ReasonCounter::Unmetered, reason.reason()),
                    1,
                );
                call.caller.count(&worker, AgentCounter::Unmetered, 1);
                let mut trouble = Trouble::default();
                call.booking.release(host, &mut trouble);
                worker.report(trouble);
                Outcome::Unmetered(reason)
            }
        };
        let model = match &outcome {
            Outcome::Charged { metered, .. } => metered.model.clone().or(model),
            Outcome::Unmetered(_) | Outcome::Passed | Outcome::Stopped { .. } => model,
        };
        let action = match &outcome {
            Outcome::Charged { .. } => call.charged_action(&worker.config),
            Outcome::Unmetered(_) | Outcome::Passed => CallOutcome::Unmetered,
            Outcome::Stopped { .. } => CallOutcome::Stopped,
        };
        let format = call.format();
        let degraded_from = match call.degrade {
            Degrade::Swapped { from, .. } => Some(from),
            Degrade::Off | Degrade::On => None,
        };
        let agent = call.caller.agent;
        let attribution = Attribution::new(
            call.caller.identity,
            Some(format),
            model,
            degraded_from,
            action,
            outcome,
        );
        attribution.log();
        self.attribute(agent, attribution);
    }

    /// Keeps the call's record for the access log and counts it: its outcome once, and a
    /// charge's cost and tokens under its served model's price-table family.
    fn attribute(&mut self, agent: Option<AgentId>, record: Attribution) {
        if let Some(agent) = agent {
            let metrics = &self.worker.metrics;
            metrics.count(Counter::Calls(agent, record.action), 1);
            if let Outcome::Charged {
                metered,
                micro_usd,
                priced_as,
                ..
            } = &record.outcome
            {
                let model = metrics.model(priced_as.as_deref());
                let usage = &metered.usage;
                for (counter, delta) in [
                    (ModelCounter::CostMicroUsd, *micro_usd),
                    (ModelCounter::InputTokens, usage.total_input()),
                    (ModelCounter::OutputTokens, usage.output),
                ] {
                    metrics.count(Counter::Model(counter, agent, model), delta);
                }
            }
        }
        self.attribution = Some(record);
    }
}

impl Forwarded {
    fn format(&self) -> Format {
        Format {
            api: self.api,
            azure: self.azure,
        }
    }

    /// What the filter did with this call, once charged: degraded, overage (an `alert`
    /// budget let it through past its limit: it came past it, or its charge crossed it), or
    /// allowed.
    fn charged_action(&self, config: &Config) -> CallOutcome {
        let alert = config
            .budget(&self.caller.identity.budget)
            .is_some_and(|b| b.action == LimitAction::Alert);
        let degraded = matches!(self.degrade, Degrade::Swapped { .. });
        attribution::charged_action(degraded, self.overage || (self.past_limit && alert))
    }

    /// The model to price the call by when the response names none: the cheaper one if
    /// degraded, else the one requested.
    fn model(&self) -> Option<&str> {
        match &self.degrade {
            Degrade::Swapped { to, .. } => Some(to),
            Degrade::Off | Degrade::On => self.requested_model.as_deref(),
        }
    }

    /// Reads the request body (its model, output limit and any rewrite), degrades it when
    /// due and reserves its worst case; the body to send, or why the call is refused.
    fn read_body(
        &mut self,
        worker: &Worker,
        host: &dyn Host,
        body: &[u8],
    ) -> Result<BodyOutcome, Stop> {
        let config = &worker.config;
        let prepared = self.api.prepare_request(body);
        self.request_bytes = body.len() as u64;
        let azure_mapped = self.requested_model.is_some()
            && config
                .azure_deployments
                .values()
                .any(|m| Some(m) == self.requested_model.as_ref());
        if !azure_mapped {
            self.requested_model = prepared.model.or(self.requested_model.take());
        }
        self.strip_usage = prepared.strip_usage_from_client;
        let mut outcome = BodyOutcome {
            body: prepared.rewritten,
            reply: None,
            headers: HeaderEdits::default(),
        };
        let Some(budget) = config.budget(&self.caller.identity.budget) else {
            return Ok(outcome);
        };
        if matches!(self.degrade, Degrade::On) {
            self.degrade_body(body, budget, &mut outcome);
        }
        if !config.reservations {
            return Ok(outcome);
        }
        let max_output = prepared
            .max_output_tokens
            .unwrap_or(config.default_max_output_tokens);
        let allowance = policy::reservation_allowance(budget, self.degrade.is_on());
        let Err(line) = self.reserve(worker, host, max_output, allowance) else {
            return Ok(outcome);
        };
        // The call's worst case does not fit what is left: the agent's limit action applies.
        let misfit = policy::misfit(
            &line.scope,
            budget.action,
            self.degrade.is_on(),
            self.model_in,
        );
        let reason = match misfit {
            Misfit::Degrade => {
                // Degrading starts with this call, before spend reaches the budget.
                let trigger = Trigger::WorstCase {
                    worst_case_micro_usd: self.worst_case(config, max_output),
                    remaining_micro_usd: line.remaining(),
                };
                self.caller
                    .limit_took_effect(host, worker, budget, &line, trigger);
                self.degrade = Degrade::On;
                self.degrade_body(body, budget, &mut outcome);
                let allowance = policy::reservation_allowance(budget, true);
                match self.reserve(worker, host, max_output, allowance) {
                    Ok(()) => return Ok(outcome),
                    Err(_) => StopReason::DegradeExhausted,
                }
            }
            Misfit::Stop(reason) => reason,
        };
        Err(Stop {
            line,
            reason,
            worst_case: Some(WorstCase {
                micro_usd: self.worst_case(config, max_output),
                max_output_tokens: max_output,
            }),
        })
    }

    /// Reserves the call's worst case, `allowance` past the agent's limits; the line it does
    /// not fit, if any.
    fn reserve(
        &mut self,
        worker: &Worker,
        host: &dyn Host,
        max_output_tokens: u64,
        allowance: u64,
    ) -> Result<(), Box<Line>> {
        let estimate = self.worst_case(&worker.config, max_output_tokens);
        let mut trouble = Trouble::default();
        let reserved = self
            .booking
            .reserve(host, estimate, allowance, &mut trouble);
        worker.report(trouble);
        reserved
    }

    /// The most this call can cost, at its model's price.
    fn worst_case(&self, config: &Config, max_output_tokens: u64) -> u64 {
        let price = self
            .model()
            .and_then(|model| config.prices.resolve(model))
            .map(|resolved| *resolved.price)
            .unwrap_or(config.fallback_price);
        policy::worst_case(&price, self.request_bytes, max_output_tokens)
    }

    /// Degrades the call from its headers: a model named in the path can only change before
    /// the headers leave; a model in the body is rewritten when the body arrives.
    fn degrade_path(&mut self, path: &str, budget: &AgentBudget, edits: &mut HeaderEdits) {
        self.degrade = Degrade::On;
        if self.model_in != ModelIn::Path {
            return;
        }
        let rewrite = budget
            .degrade_to
            .as_ref()
            .and_then(|map| degrade::rewrite_path(self.api, path, map));
        if let Some((from, to, new_path)) = rewrite {
            edits.set.push((":path".to_string(), new_path));
            self.degrade = Degrade::Swapped { from, to };
        }
    }

    /// Rewrites the request body's model to the agent's cheaper one (when it has a mapping
    /// for it), on top of any rewrite already made.
    fn degrade_body(&mut self, original: &[u8], budget: &AgentBudget, outcome: &mut BodyOutcome) {
        if self.model_in != ModelIn::Body {
            return;
        }
        let Some(map) = &budget.degrade_to else {
            return;
        };
        let current = outcome.body.as_deref().unwrap_or(original);
        if let Rewrite::Body { from, to, body } = degrade::rewrite_body(self.api, current, map) {
            self.degrade = Degrade::Swapped { from, to };
            outcome.body = Some(body);
        }
    }

    /// The budget headers (those the option shows), and how the response will be metered.
    fn on_response_headers(&mut self, option: BudgetHeaders, head: &ResponseHead) -> HeaderEdits {
        let mut edits = HeaderEdits::default();
        let degraded = matches!(self.degrade, Degrade::Swapped { .. });
        if policy::shows_budget_headers(option, degraded || self.past_limit) {
            edits.set = std::mem::take(&mut self.budget_headers);
            if let Degrade::Swapped { from, to } = &self.degrade {
                edits
                    .set
                    .push(("x-agent-budget-degraded-from".to_string(), from.clone()));
                edits
                    .set
                    .push(("x-agent-budget-degraded-to".to_string(), to.clone()));
            }
        }
        let encoded = head
            .content_encoding
            .as_deref()
            .map(str::trim)
            .is_some_and(|e| !e.is_empty() && !e.eq_ignore_ascii_case("identity"));
        self.response = if head.status >= 400 {
            Response::Unmetered(Unmetered::UpstreamError)
        } else if encoded {
            Response::Unmetered(Unmetered::Compressed)
        } else {
            if self.strip_usage {
                // Bytes may be removed from a stream, so any declared length could be wrong.
                edits.remove.push("content-length".to_string());
            }
            const EVENT_STREAM: &str = "text/event-stream";
            let labelled_stream = head.content_type.as_deref().is_some_and(|t| {
                t.trim_start()
                    .get(..EVENT_STREAM.len())
                    .is_some_and(|prefix| prefix.eq_ignore_ascii_case(EVENT_STREAM))
            });
            Response::Sniffing {
                api: self.api,
                strip_usage: self.strip_usage,
                labelled_stream,
                kept: Vec::new(),
            }
        };
        edits
    }

    fn charge(
        &mut self,
        host: &dyn Host,
        worker: &Worker,
        metered: Metered,
        estimated: bool,
    ) -> Outcome {
        let config = &worker.config;
        // The model that served the call wins over the one requested.
        let model = metered.model.as_deref().or(self.model()).unwrap_or("");
        let (price, priced_as) = match config.prices.resolve(model) {
            Some(resolved) => (*resolved.price, Some(resolved.family.to_string())),
            None => {
                worker.metrics.count(Counter::UnpricedCalls, 1);
                if worker.first_unpriced(model) {
                    log::warn!("model `{model}` has no price; charging the fallback price (add it under `pricing`)");
                }
                (config.fallback_price, None)
            }
        };
        let micro_usd = price.cost_micro_usd(&metered.usage);
        let usage = metered.usage;
        let caller = &self.caller;
        caller.count(worker, AgentCounter::InputTokens, usage.input);
        caller.count(worker, AgentCounter::CachedInputTokens, usage.cache_read);
        caller.count(
            worker,
            AgentCounter::CacheWriteTokens,
            usage.cache_write_5m.saturating_add(usage.cache_write_1h),
        );
        caller.count(worker, AgentCounter::OutputTokens, usage.output);
        caller.count(worker, AgentCounter::ReasoningTokens, usage.reasoning);
        caller.count(worker, AgentCounter::CostMicroUsd, micro_usd);

        let mut trouble = Trouble::default();
        let settled = self.booking.settle(host, micro_usd, &mut trouble);
        worker.report(trouble);
        let identity = &self.caller.identity;
        let [today, _] = worker.current_periods(self.caller.now);
        worker.top.add(
            &identity.budget,
            &today,
            identity.task.as_deref(),
            identity.user.as_deref(),
            micro_usd,
        );
        worker.record_spend(&self.caller.identity.budget, self.caller.now, micro_usd);
        if let Some(budget) = config.budget(&self.caller.identity.budget) {
            self.overage = self.caller.after_settle(host, worker, budget, &settled);
        }
        if matches!(self.degrade, Degrade::Swapped { .. }) {
            self.caller.count(worker, AgentCounter::DegradedRequests, 1);
        }
        if estimated {
            self.caller
                .count(worker, AgentCounter::EstimatedRequests, 1);
        }
        Outcome::Charged {
            metered,
            micro_usd,
            priced_as,
            estimated,
        }
    }
}

impl Response {
    /// Takes in one chunk of the body; what to forward of it.
    fn feed(&mut self, chunk: &[u8], end_of_stream: bool, limit: usize) -> ChunkOutcome {
        if let Response::Sniffing {
            api,
            strip_usage,
            labelled_stream,
            kept,
        } = self
        {
            // Only a stream the filter may cut needs its first bytes held back: its usage
            // stripper forwards whole events. Otherwise bytes pass at once and are kept to
            // be parsed once the framing is known.
            let held = *strip_usage && !kept.is_empty();
            // The usual case, decided by the first chunk alone, copies nothing.
            let alone = if kept.is_empty() {
                sniff_framing(without_leading_whitespace(chunk), *labelled_stream)
            } else {
                None
            };
            if alone.is_none() {
                kept.extend_from_slice(chunk);
            }
            let framing = match alone
                .or_else(|| sniff_framing(without_leading_whitespace(kept), *labelled_stream))
            {
                Some(framing) => framing,
                None if !end_of_stream && kept.len() <= MAX_SNIFF_BYTES => {
                    return if *strip_usage && !chunk.is_empty() {
                        ChunkOutcome::Replace(Vec::new())
                    } else {
                        ChunkOutcome::Pass
                    };
                }
                None if *labelled_stream => Framing::Stream,
                None => Framing::Json,
            };
            let kept = std::mem::take(kept);
            let body = if alone.is_some() { chunk } else { &kept };
            let outcome = match framing {
                Framing::Json => {
                    *self = Response::Json(Vec::new());
                    self.feed(body, end_of_stream, limit)
                }
                Framing::Stream => {
                    let mut stream = StreamState {
                        parser: SseParser::new(MAX_EVENT_BYTES),
                        meter: api.stream_meter(),
                        stripper: strip_usage.then(UsageStripper::default),
                        boundary: 0,
                        events: Vec::new(),
                    };
                    let outcome = stream.feed(body, end_of_stream);
                    *self = Response::Stream(Box::new(stream));
                    outcome
                }
            };
            return match outcome {
                ChunkOutcome::Pass if held => ChunkOutcome::Replace(body.to_vec()),
                outcome => outcome,
            };
        }
        match self {
            Response::Json(body) => {
                if body.len().saturating_add(chunk.len()) > limit {
                    *self = Response::JsonTooLarge;
                } else {
                    body.extend_from_slice(chunk);
                }
                ChunkOutcome::Pass
            }
            Response::Stream(stream) => stream.feed(chunk, end_of_stream),
            Response::Pending
            | Response::Sniffing { .. }
            | Response::JsonTooLarge
            | Response::Unmetered(_) => ChunkOutcome::Pass,
        }
    }

    /// What the response, ended by `cause`, lets the call be charged: the usage it reported,
    /// an estimate (`true`) if the client left first, or why it cannot be charged.
    fn end(
        self,
        api: Api,
        cause: EndCause,
        request_bytes: u64,
    ) -> Result<(Metered, Basis), Unmetered> {
        let abandoned = |progress| {
            Ok((
                policy::abandoned_usage(progress, request_bytes),
                Basis::Estimated,
            ))
        };
        match (self, cause) {
            (Response::Unmetered(reason), _) => Err(reason),
            (Response::Stream(state), cause) => match (state.meter.finish(), cause) {
                (Ok(metered), _) => Ok((metered, Basis::Reported)),
                (Err(Unmetered::NoUsage | Unmetered::Incomplete), EndCause::ClientAborted) => {
                    abandoned(state.meter.progress())
                }
                // The provider bills what it generated before it cut the stream: what it
                // reported, plus the output streamed so far.
                (Err(Unmetered::NoUsage | Unmetered::Incomplete), EndCause::UpstreamAborted) => {
                    let usage = policy::abandoned_usage(state.meter.progress(), request_bytes);
                    Ok((usage, Basis::Truncated))
                }
                (Err(reason), _) => Err(reason),
            },
            (
                Response::Pending | Response::Sniffing { .. } | Response::JsonTooLarge,
                EndCause::ClientAborted,
            ) => abandoned(Progress::default()),
            (Response::Json(body), EndCause::ClientAborted) => {
                let text_bytes = ["content", "text", "arguments"]
                    .iter()
                    .map(|key| string_values_len(&body, key))
                    .sum();
                abandoned(Progress {
                    text_bytes,
                    ..Progress::default()
                })
            }
            (Response::Pending, _) => Err(Unmetered::Incomplete),
            (
                Response::Json(_) | Response::Sniffing { .. } | Response::JsonTooLarge,
                EndCause::UpstreamAborted,
            ) => Err(Unmetered::Incomplete),
            (Response::JsonTooLarge, EndCause::Normal) => Err(Unmetered::TooLarge),
            (Response::Sniffing { .. }, EndCause::Normal) => Err(Unmetered::NoUsage),
            (Response::Json(body), EndCause::Normal) if body.is_empty() => Err(Unmetered::NoUsage),
            (Response::Json(body), EndCause::Normal) => {
                api.usage_from_body(&body).map(|m| (m, Basis::Reported))
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Json,
    Stream,
}

fn without_leading_whitespace(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|byte| !byte.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    bytes.get(start..).unwrap_or_default()
}

/// Undecided leading bytes held back before the label decides (blank lines, in practice).
const MAX_SNIFF_BYTES: usize = 4096;

/// How a response body is framed, from its first bytes (leading whitespace skipped): `None`
/// while they could still open either (nothing yet, or the start of an SSE field name).
fn sniff_framing(start: &[u8], labelled_stream: bool) -> Option<Framing> {
    const SSE_FIELDS: [&[u8]; 5] = [b"data:", b"event:", b"id:", b"retry:", b":"];
    match start.first()? {
        b'{' | b'[' => return Some(Framing::Json),
        _ => {}
    }
    if SSE_FIELDS.iter().any(|field| start.starts_with(field)) {
        return Some(Framing::Stream);
    }
    if SSE_FIELDS.iter().any(|field| field.starts_with(start)) {
        return None;
    }
    Some(if labelled_stream {
        Framing::Stream
    } else {
        Framing::Json
    })
}

impl StreamState {
    /// Meters the events the chunk completes; what to forward of it (the usage report the
    /// client did not ask for removed).
    fn feed(&mut self, chunk: &[u8], end_of_stream: bool) -> ChunkOutcome {
        let chunk_start = self.parser.offset();
        self.parser.feed(chunk, &mut self.events);
        if end_of_stream {
            self.events.extend(self.parser.finish());
        }
        let mut drops = Vec::new();
        for event in self.events.drain(..) {
            self.boundary = event.end;
            if self.meter.on_event(&event) == EventFate::UsageOnly {
                drops.push((event.start, event.end));
            }
        }
        match &mut self.stripper {
            Some(stripper) => {
                stripper.process(chunk, chunk_start, self.boundary, &drops, end_of_stream)
            }
            None => ChunkOutcome::Pass,
        }
    }
}

impl Caller {
    /// Counts toward one of the caller's agent counters (nothing for an unknown agent).
    fn count(&self, worker: &Worker, counter: AgentCounter, delta: u64) {
        if let Some(agent) = self.agent {
            worker.metrics.count(Counter::Agent(counter, agent), delta);
        }
    }

    /// What a settled charge set off: threshold crossings (each alerted once per agent and
    /// period across all workers) and, for `alert`, the overage; true if it booked any.
    fn after_settle(
        &self,
        host: &dyn Host,
        worker: &Worker,
        budget: &AgentBudget,
        settled: &[Settled],
    ) -> bool {
        let ledger = Ledger::new(host);
        let mut booked = false;
        for entry in settled.iter().filter(|s| s.scope == Scope::Agent) {
            let kind = entry.period.kind;
            let Some(limit) = budget.limit(kind) else {
                continue;
            };
            self.raise_levels(host, worker, budget, &entry.period, entry.after.spent, None);
            if budget.action == LimitAction::Alert {
                let overage = policy::overage(limit, entry.before.spent, entry.after.spent);
                if overage > 0 {
                    booked = true;
                    let account = AccountKey::Overage(self.identity.budget.clone());
                    if let Err(error) = ledger.add_spend(&entry.period, &account, overage) {
                        worker.ledger_error(&error);
                    }
                    if let Some(agent) = self.agent {
                        worker.metrics.count(Counter::Overage(agent, kind), overage);
                    }
                }
            }
        }
        booked
    }

    /// Raises the alerts for every level `spent` has reached on the agent's period, each
    /// once: the worker whose CAS first sets the level's flag in the shared ledger raises it.
    /// The agent's limit action (degrading) applies from this call on `line`: its alert goes
    /// out now if it has not yet this period.
    fn limit_took_effect(
        &self,
        host: &dyn Host,
        worker: &Worker,
        budget: &AgentBudget,
        line: &Line,
        trigger: Trigger,
    ) {
        let took_effect = Some((Crossing::Limit, trigger));
        self.raise_levels(
            host,
            worker,
            budget,
            &line.period,
            line.state.spent,
            took_effect,
        );
    }

    /// `took_effect` is a limit action that applied before spend reached its mark (a call
    /// refused or degraded because it no longer fits): its alert goes out now, once, under
    /// the same flag as when spend reaches the mark.
    fn raise_levels(
        &self,
        host: &dyn Host,
        worker: &Worker,
        budget: &AgentBudget,
        period: &Period,
        spent: u64,
        took_effect: Option<(Crossing, Trigger)>,
    ) {
        let Some(limit) = budget.limit(period.kind) else {
            return;
        };
        let ledger = Ledger::new(host);
        let mut levels: Vec<(Crossing, u64, Trigger)> =
            policy::levels_reached(budget, period.kind, spent)
                .into_iter()
                .map(|(crossing, mark)| (crossing, mark, Trigger::Reached))
                .collect();
        if let Some((crossing, trigger)) = took_effect {
            if !levels.iter().any(|(c, _, _)| *c == crossing) {
                if let Some(mark) = policy::mark(budget, period.kind, crossing) {
                    levels.push((crossing, mark, trigger));
                }
            }
        }
        for (crossing, mark, trigger) in levels {
            let flag = AccountKey::Alerted {
                budget: self.identity.budget.clone(),
                level: crossing.name(),
                mark,
            };
            if worker.knows_flag(&flag, period) {
                continue;
            }
            match ledger.try_update(period, &flag, |a| {
                (a.spent == 0).then_some(Account { spent: 1, ..a })
            }) {
                Ok(Some(_)) => {
                    let (kind, threshold_ppm) = policy::alert_kind(crossing, budget);
                    worker.raise_alert(Alert {
                        kind,
                        agent: self.identity.budget.clone(),
                        period: period.kind,
                        period_id: period.id.to_string(),
                        spend_micro_usd: spent,
                        budget_micro_usd: limit,
                        threshold: threshold_ppm as f64 / 1e6,
                        action: budget.action.name().to_string(),
                        at_unix_secs: self.now,
                        period_end_unix_secs: period.end,
                        trigger,
                    });
                }
                Ok(None) => {}
                Err(error) => {
                    worker.ledger_error(&error);
                    continue;
                }
            }
            worker.remember_flag(flag, period);
        }
    }
}

/// The model a request's path names: an Azure deployment's configured model (else the
/// deployment's name), or a model in the path.
fn path_model(config: &Config, detected: Detected) -> Option<String> {
    match detected.azure_deployment {
        Some(deployment) => Some(
            config
                .azure_deployments
                .get(&deployment)
                .cloned()
                .unwrap_or(deployment),
        ),
        None => detected.path_model,
    }
}

fn forward(action: HeadAction, edits: HeaderEdits) -> HeadOutcome {
    HeadOutcome { action, edits }
}

fn reply_only(reply: LocalReply) -> HeadOutcome {
    forward(HeadAction::Reply(reply), HeaderEdits::default())
}

#[cfg(test)]
mod tests;

//! One call through the filter, as a state machine over the HTTP callbacks.
//!
//! The proxy-wasm adapter (`proxy.rs`) reads headers and bodies from Envoy, hands them to
//! [`Call`] as plain values and applies what comes back (header edits, a body replacement,
//! a local reply). Nothing here touches the host except through [`Host`].

use crate::alerts::Alert;
pub use crate::attribution::{Attribution, Outcome};
use crate::booking::{Booking, Settled, Trouble};
use crate::config::{AgentBudget, LimitAction};
use crate::degrade::{self, Rewrite};
use crate::host::Host;
use crate::identity::{identify, Identity};
use crate::ledger::{Account, AccountKey, Ledger};
use crate::metrics::{AgentCounter, AgentId, Counter, ReasonCounter};
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
}

/// What the adapter read from the response headers.
#[derive(Debug, Clone, Default)]
pub struct ResponseHead {
    pub status: u32,
    pub content_type: Option<String>,
    pub content_encoding: Option<String>,
    pub end_of_stream: bool,
}

enum ResponseMode {
    /// Waiting for response headers.
    Pending,
    Json {
        body: Vec<u8>,
        overflowed: bool,
    },
    Stream(Box<StreamState>),
    Unmetered(Unmetered),
}

struct StreamState {
    parser: SseParser,
    meter: StreamMeter,
    stripper: Option<UsageStripper>,
    /// Stream offset just past the last complete event.
    boundary: u64,
}

enum Stage {
    Request,
    Forwarded,
    /// The filter answered the call itself.
    Replied,
    Done,
}

pub struct Call {
    worker: Rc<Worker>,
    stage: Stage,
    api: Option<Api>,
    identity: Option<Identity>,
    /// The agent budget's metric id, once identified.
    agent: Option<AgentId>,
    /// When the call started: the one clock read of the call (periods, resets, alerts).
    now: i64,
    /// The model to price by when the response names none: an Azure deployment's configured
    /// model, else the request body's `model`, else the model or deployment the path names.
    requested_model: Option<String>,
    /// Request body size, for estimating input tokens of an interrupted call.
    request_bytes: u64,
    strip_usage: bool,
    budget_headers: Vec<(String, String)>,
    /// A budget of the agent was used up when the call came (`alert` lets it through).
    past_limit: bool,
    /// The ledger accounts this call is checked against and charged to.
    booking: Booking,
    /// `degrade` applies to this call (its budget is used up).
    degrading: bool,
    /// The model rewrite made: (requested, served instead).
    degraded: Option<(String, String)>,
    /// Where the call names its model: how, and whether, degrade can change it.
    model_in: ModelIn,
    response: ResponseMode,
    events: Vec<SseEvent>,
    /// The last attribution record, for the adapter's access-log properties.
    pub attribution: Option<Attribution>,
}

impl Call {
    pub fn new(worker: Rc<Worker>) -> Call {
        Call {
            worker,
            stage: Stage::Request,
            api: None,
            identity: None,
            agent: None,
            now: 0,
            requested_model: None,
            request_bytes: 0,
            strip_usage: false,
            budget_headers: Vec::new(),
            past_limit: false,
            booking: Booking::default(),
            degrading: false,
            degraded: None,
            model_in: ModelIn::Body,
            response: ResponseMode::Pending,
            events: Vec::new(),
            attribution: None,
        }
    }

    pub fn worker(&self) -> &Worker {
        &self.worker
    }

    /// True while the call still waits to be settled (or to publish its attribution).
    pub fn is_open(&self) -> bool {
        matches!(self.stage, Stage::Forwarded)
    }

    pub fn on_request_headers(&mut self, host: &dyn Host, head: RequestHead) -> HeadOutcome {
        let worker = Rc::clone(&self.worker);
        let config = &worker.config;
        let detected = config.detect_api(
            &head.path,
            head.route_name.as_deref(),
            head.cluster_name.as_deref(),
        );
        self.api = detected.as_ref().map(|d| d.api);
        self.model_in = detected.as_ref().map_or(ModelIn::Body, Detected::model_in);
        self.requested_model = detected.and_then(|d| match d.azure_deployment {
            Some(deployment) => Some(
                config
                    .azure_deployments
                    .get(&deployment)
                    .cloned()
                    .unwrap_or(deployment),
            ),
            None => d.path_model,
        });
        let error_api = self.api.unwrap_or(Api::OpenAiChat);
        let identity = match identify(
            config,
            head.agent.as_deref(),
            head.task.as_deref(),
            head.user.as_deref(),
        ) {
            Ok(identity) => identity,
            Err(unattributed) => {
                worker.metrics.count(
                    Counter::Reason(ReasonCounter::Unattributed, unattributed.reason()),
                    1,
                );
                self.stage = Stage::Replied;
                return reply_only(replies::unattributed(
                    error_api,
                    &unattributed,
                    &config.agent_header,
                ));
            }
        };
        let now = host.now_unix_secs();
        self.now = now;
        worker.serving();
        self.agent = worker.metrics.agents().id(&identity.budget);
        self.count(AgentCounter::Requests, 1);

        let Some(budget) = config.budget(&identity.budget) else {
            // identify() only returns configured budgets.
            self.stage = Stage::Forwarded;
            return HeadOutcome {
                action: HeadAction::Continue,
                edits: HeaderEdits::default(),
            };
        };
        let mut trouble = Trouble::default();
        let periods = worker.current_periods(now);
        let (booking, lines) = Booking::open(host, &identity, budget, &periods, &mut trouble);
        worker.report(trouble);
        self.booking = booking;
        self.past_limit = policy::past_limit(&lines);
        // Built while the lines are at hand, unless no call can show them.
        if policy::shows_budget_headers(config.budget_headers, true) {
            self.budget_headers = policy::headline(&lines)
                .map(|line| policy::budget_headers(line, now))
                .unwrap_or_default();
        }

        let mut edits = HeaderEdits::default();
        match policy::decide(budget, &lines) {
            Decision::Stop { line, reason } => {
                let reply = self.stop(host, error_api, identity, &line, reason, None, now);
                return reply_only(reply);
            }
            Decision::Degrade => self.degrade_path(&head.path, budget, &mut edits),
            Decision::Allow => {
                // A model in the path can only change now, before the headers leave: degrade
                // now if the call's worst case (its declared size, the default output limit)
                // would not fit, as the body step does for a model in the body.
                if policy::checks_worst_case_at_headers(
                    budget.action,
                    self.model_in,
                    config.reservations,
                ) {
                    self.request_bytes = head.content_length.unwrap_or(0);
                    let estimate = self.worst_case(config.default_max_output_tokens);
                    if !policy::fits_agent_lines(&lines, estimate) {
                        self.degrade_path(&head.path, budget, &mut edits);
                    }
                }
            }
        }

        self.identity = Some(identity);
        self.stage = Stage::Forwarded;
        let mut outcome = HeadOutcome {
            action: HeadAction::Continue,
            edits,
        };
        if self.api.is_some() {
            // The filter must read what it meters: ask for an uncompressed response (Envoy can
            // still compress toward the client after this filter). Without the header a
            // provider answers uncompressed anyway.
            if head.accept_encoding {
                outcome
                    .edits
                    .set
                    .push(("accept-encoding".to_string(), "identity".to_string()));
            }
            if head.has_body {
                outcome.action = HeadAction::WaitForBody;
                // The headers leave before the body is read: when the body may be rewritten
                // (OpenAI streams get include_usage, degrade swaps the model), its length
                // cannot be declared in advance, so Envoy sends it chunked.
                if self
                    .api
                    .is_some_and(|api| policy::body_may_change(api, budget.action))
                {
                    outcome.edits.remove.push("content-length".to_string());
                }
            }
        }
        outcome
    }

    /// The complete request body (only after [`HeadAction::WaitForBody`]): learns the model
    /// and limits, applies `degrade`, reserves the call's worst-case cost, and says whether
    /// the body changes or the call is refused after all.
    pub fn on_request_body(&mut self, host: &dyn Host, body: &[u8]) -> BodyOutcome {
        let Some(api) = self.api else {
            return BodyOutcome::default();
        };
        if !matches!(self.stage, Stage::Forwarded) {
            return BodyOutcome::default();
        }
        let worker = Rc::clone(&self.worker);
        let config = &worker.config;
        let prepared = api.prepare_request(body);
        self.request_bytes = body.len() as u64;
        let azure_mapped = self.requested_model.is_some()
            && config
                .azure_deployments
                .values()
                .any(|m| Some(m) == self.requested_model.as_ref());
        if !azure_mapped && self.degraded.is_none() {
            self.requested_model = prepared.model.or(self.requested_model.take());
        }
        self.strip_usage = prepared.strip_usage_from_client;
        let mut outcome = BodyOutcome {
            body: prepared.rewritten,
            reply: None,
        };
        let Some(budget) = self
            .identity
            .as_ref()
            .and_then(|i| config.budget(&i.budget))
        else {
            return outcome;
        };
        if self.degrading && self.degraded.is_none() {
            self.degrade_body(api, body, budget, &mut outcome);
        }
        if !config.reservations {
            return outcome;
        }
        let max_output = prepared
            .max_output_tokens
            .unwrap_or(config.default_max_output_tokens);
        let allowance = policy::reservation_allowance(budget, self.degrading);
        let estimate = self.worst_case(max_output);
        let mut trouble = Trouble::default();
        let reserved = self
            .booking
            .reserve(host, estimate, allowance, &mut trouble);
        worker.report(trouble);
        let Err(line) = reserved else {
            return outcome;
        };
        // The call's worst case does not fit what is left: the agent's limit action applies.
        let reason = match policy::misfit(&line.scope, budget.action, self.degrading, self.model_in)
        {
            Misfit::Degrade => {
                self.degrading = true;
                self.degrade_body(api, body, budget, &mut outcome);
                let allowance = policy::reservation_allowance(budget, true);
                let estimate = self.worst_case(max_output);
                let mut trouble = Trouble::default();
                let reserved = self
                    .booking
                    .reserve(host, estimate, allowance, &mut trouble);
                worker.report(trouble);
                match reserved {
                    Ok(()) => return outcome,
                    Err(_) => StopReason::DegradeExhausted,
                }
            }
            Misfit::Stop(reason) => reason,
        };
        let Some(identity) = self.identity.take() else {
            return outcome;
        };
        let now = self.now;
        let estimate = self.worst_case(max_output);
        outcome.reply = Some(self.stop(
            host,
            api,
            identity,
            &line,
            reason,
            Some(WorstCase {
                micro_usd: estimate,
                max_output_tokens: max_output,
            }),
            now,
        ));
        outcome.body = None;
        outcome
    }

    /// Degrades the call from its headers: a model named in the path can only change before
    /// the headers leave; a model in the body is rewritten when the body arrives.
    fn degrade_path(&mut self, path: &str, budget: &AgentBudget, edits: &mut HeaderEdits) {
        self.degrading = true;
        if self.model_in != ModelIn::Path {
            return;
        }
        let rewrite = budget
            .degrade_to
            .as_ref()
            .zip(self.api)
            .and_then(|(map, api)| degrade::rewrite_path(api, path, map));
        if let Some((from, to, new_path)) = rewrite {
            edits.set.push((":path".to_string(), new_path));
            self.requested_model = Some(to.clone());
            self.degraded = Some((from, to));
        }
    }

    /// Rewrites the request body's model to the agent's cheaper one (when it has a mapping
    /// for it), on top of any rewrite already made.
    fn degrade_body(
        &mut self,
        api: Api,
        original: &[u8],
        budget: &AgentBudget,
        outcome: &mut BodyOutcome,
    ) {
        if self.model_in != ModelIn::Body {
            return;
        }
        let Some(map) = &budget.degrade_to else {
            return;
        };
        let current = outcome.body.as_deref().unwrap_or(original);
        if let Rewrite::Body { from, to, body } = degrade::rewrite_body(api, current, map) {
            self.requested_model = Some(to.clone());
            self.degraded = Some((from, to));
            outcome.body = Some(body);
        }
    }

    /// The most this call can cost: its input (request bytes at a conservative 3 bytes a
    /// token, all uncached) and its maximum output, at the requested model's price.
    fn worst_case(&self, max_output_tokens: u64) -> u64 {
        let config = &self.worker.config;
        let price = self
            .requested_model
            .as_deref()
            .and_then(|model| config.prices.resolve(model))
            .map(|resolved| *resolved.price)
            .unwrap_or(config.fallback_price);
        policy::worst_case(&price, self.request_bytes, max_output_tokens)
    }

    /// Refuses the call: counts it, logs it, attributes it and builds the 429. `worst_case`
    /// is set when the call was refused because it would not fit.
    #[allow(clippy::too_many_arguments)] // one call site each; a struct would only rename them
    fn stop(
        &mut self,
        host: &dyn Host,
        api: Api,
        identity: Identity,
        line: &Line,
        reason: StopReason,
        worst_case: Option<WorstCase>,
        now: i64,
    ) -> LocalReply {
        self.count(AgentCounter::Rejected, 1);
        log::info!(
            "stopped agent={} budget={} scope={} period={} reason={:?} committed_micro_usd={} limit_micro_usd={}",
            identity.agent,
            identity.budget,
            line.scope.describe(),
            line.period.kind.name(),
            reason,
            line.committed(),
            line.limit
        );
        if line.scope == Scope::Agent {
            // A budget lowered below today's spend (by a reload) is only noticed here.
            if let Some(budget) = self.worker.config.budget(&identity.budget) {
                raise_levels(
                    host,
                    &self.worker,
                    &identity,
                    budget,
                    &line.period,
                    line.state.spent,
                    now,
                );
            }
        }
        let headers = policy::shows_budget_headers(self.worker.config.budget_headers, true);
        let reply = replies::budget_exceeded(
            api,
            &identity.budget,
            line,
            reason,
            worst_case,
            now,
            headers,
        );
        self.attribution = Some(Attribution::new(
            identity,
            api,
            self.requested_model.clone(),
            None,
            Outcome::Stopped {
                status: reply.status,
            },
        ));
        let mut trouble = Trouble::default();
        self.booking.release(host, &mut trouble);
        self.worker.report(trouble);
        self.stage = Stage::Replied;
        reply
    }

    pub fn on_response_headers(&mut self, head: &ResponseHead) -> HeaderEdits {
        if !matches!(self.stage, Stage::Forwarded) {
            return HeaderEdits::default();
        }
        let limit_acted = self.degraded.is_some() || self.past_limit;
        let mut edits = HeaderEdits::default();
        let with_headers =
            policy::shows_budget_headers(self.worker.config.budget_headers, limit_acted);
        if with_headers {
            edits.set = std::mem::take(&mut self.budget_headers);
        }
        if let (true, Some((from, to))) = (with_headers, &self.degraded) {
            edits
                .set
                .push(("x-agent-budget-degraded-from".to_string(), from.clone()));
            edits
                .set
                .push(("x-agent-budget-degraded-to".to_string(), to.clone()));
        }
        let Some(api) = self.api else {
            return edits;
        };
        let encoded = head
            .content_encoding
            .as_deref()
            .map(str::trim)
            .is_some_and(|e| !e.is_empty() && !e.eq_ignore_ascii_case("identity"));
        const EVENT_STREAM: &str = "text/event-stream";
        let is_stream = head.content_type.as_deref().is_some_and(|t| {
            t.trim_start()
                .get(..EVENT_STREAM.len())
                .is_some_and(|prefix| prefix.eq_ignore_ascii_case(EVENT_STREAM))
        });
        self.response = if head.status >= 400 {
            ResponseMode::Unmetered(Unmetered::UpstreamError)
        } else if encoded {
            ResponseMode::Unmetered(Unmetered::Compressed)
        } else if is_stream {
            let stripper = self.strip_usage.then(UsageStripper::default);
            if stripper.is_some() {
                // Bytes are removed from the stream, so any declared length would be wrong.
                edits.remove.push("content-length".to_string());
            }
            ResponseMode::Stream(Box::new(StreamState {
                parser: SseParser::new(MAX_EVENT_BYTES),
                meter: api.stream_meter(),
                stripper,
                boundary: 0,
            }))
        } else {
            ResponseMode::Json {
                body: Vec::new(),
                overflowed: false,
            }
        };
        edits
    }

    pub fn on_response_body(
        &mut self,
        host: &dyn Host,
        chunk: &[u8],
        end_of_stream: bool,
    ) -> ChunkOutcome {
        if !matches!(self.stage, Stage::Forwarded) {
            return ChunkOutcome::Pass;
        }
        let limit = self.worker.config.max_response_body_bytes as usize;
        let outcome = match &mut self.response {
            ResponseMode::Json { body, overflowed } => {
                if !*overflowed {
                    if body.len().saturating_add(chunk.len()) > limit {
                        *overflowed = true;
                        *body = Vec::new();
                    } else {
                        body.extend_from_slice(chunk);
                    }
                }
                ChunkOutcome::Pass
            }
            ResponseMode::Stream(state) => {
                let StreamState {
                    parser,
                    meter,
                    stripper,
                    boundary,
                } = state.as_mut();
                let chunk_start = parser.offset();
                parser.feed(chunk, &mut self.events);
                if end_of_stream {
                    self.events.extend(parser.finish());
                }
                let mut drops = Vec::new();
                for event in self.events.drain(..) {
                    *boundary = event.end;
                    if meter.on_event(&event) == EventFate::UsageOnly {
                        drops.push((event.start, event.end));
                    }
                }
                match stripper {
                    Some(stripper) => {
                        stripper.process(chunk, chunk_start, *boundary, &drops, end_of_stream)
                    }
                    None => ChunkOutcome::Pass,
                }
            }
            ResponseMode::Pending | ResponseMode::Unmetered(_) => ChunkOutcome::Pass,
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
        if !matches!(self.stage, Stage::Forwarded) {
            return;
        }
        self.stage = Stage::Done;
        let Some(identity) = self.identity.take() else {
            return;
        };
        let Some(api) = self.api else {
            return;
        };
        let response = std::mem::replace(&mut self.response, ResponseMode::Pending);
        let result = match (response, cause) {
            (ResponseMode::Unmetered(reason), _) => Err(reason),
            (ResponseMode::Stream(state), cause) => match (state.meter.finish(), cause) {
                (Ok(metered), _) => Ok((metered, false)),
                (Err(Unmetered::NoUsage | Unmetered::Incomplete), EndCause::ClientAborted) => Ok((
                    policy::abandoned_usage(state.meter.progress(), self.request_bytes),
                    true,
                )),
                (Err(Unmetered::NoUsage), EndCause::UpstreamAborted) => Err(Unmetered::Incomplete),
                (Err(reason), _) => Err(reason),
            },
            (ResponseMode::Pending, EndCause::ClientAborted) => Ok((
                policy::abandoned_usage(Progress::default(), self.request_bytes),
                true,
            )),
            (ResponseMode::Json { body, .. }, EndCause::ClientAborted) => {
                let text_bytes = ["content", "text", "arguments"]
                    .iter()
                    .map(|key| string_values_len(&body, key))
                    .sum();
                Ok((
                    policy::abandoned_usage(
                        Progress {
                            text_bytes,
                            ..Progress::default()
                        },
                        self.request_bytes,
                    ),
                    true,
                ))
            }
            (ResponseMode::Pending, _) => Err(Unmetered::Incomplete),
            (ResponseMode::Json { .. }, EndCause::UpstreamAborted) => Err(Unmetered::Incomplete),
            (
                ResponseMode::Json {
                    overflowed: true, ..
                },
                EndCause::Normal,
            ) => Err(Unmetered::TooLarge),
            (ResponseMode::Json { body, .. }, EndCause::Normal) if body.is_empty() => {
                Err(Unmetered::NoUsage)
            }
            (ResponseMode::Json { body, .. }, EndCause::Normal) => {
                api.usage_from_body(&body).map(|m| (m, false))
            }
        };
        let model = self.requested_model.clone();
        let outcome = match result {
            Ok((metered, estimated)) => self.charge(host, &identity, metered, estimated),
            Err(reason) => {
                self.worker.metrics.count(
                    Counter::Reason(ReasonCounter::Unmetered, reason.reason()),
                    1,
                );
                self.count(AgentCounter::Unmetered, 1);
                let mut trouble = Trouble::default();
                self.booking.release(host, &mut trouble);
                self.worker.report(trouble);
                Outcome::Unmetered(reason)
            }
        };
        let model = match &outcome {
            Outcome::Charged { metered, .. } => metered.model.clone().or(model),
            Outcome::Unmetered(_) | Outcome::Stopped { .. } => model,
        };
        let degraded_from = self.degraded.as_ref().map(|(from, _)| from.clone());
        let attribution = Attribution::new(identity, api, model, degraded_from, outcome);
        attribution.log();
        self.attribution = Some(attribution);
    }

    fn charge(
        &mut self,
        host: &dyn Host,
        identity: &Identity,
        metered: Metered,
        estimated: bool,
    ) -> Outcome {
        let worker = Rc::clone(&self.worker);
        let worker = &worker;
        let config = &worker.config;
        // The model that served the call wins over the one requested.
        let model = metered
            .model
            .as_deref()
            .or(self.requested_model.as_deref())
            .unwrap_or("");
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
        self.count(AgentCounter::InputTokens, usage.input);
        self.count(AgentCounter::CachedInputTokens, usage.cache_read);
        self.count(
            AgentCounter::CacheWriteTokens,
            usage.cache_write_5m.saturating_add(usage.cache_write_1h),
        );
        self.count(AgentCounter::OutputTokens, usage.output);
        self.count(AgentCounter::ReasoningTokens, usage.reasoning);
        self.count(AgentCounter::CostMicroUsd, micro_usd);

        let mut trouble = Trouble::default();
        let settled = self.booking.settle(host, micro_usd, &mut trouble);
        worker.report(trouble);
        if let Some(agent_budget) = config.budget(&identity.budget) {
            self.after_settle(host, identity, agent_budget, &settled);
        }
        if self.degraded.is_some() {
            self.count(AgentCounter::DegradedRequests, 1);
        }
        if estimated {
            self.count(AgentCounter::EstimatedRequests, 1);
        }
        Outcome::Charged {
            metered,
            micro_usd,
            priced_as,
            estimated,
        }
    }

    /// Counts toward one of the call's agent counters (nothing for an unknown agent).
    fn count(&self, counter: AgentCounter, delta: u64) {
        if let Some(agent) = self.agent {
            self.worker
                .metrics
                .count(Counter::Agent(counter, agent), delta);
        }
    }

    /// What a settled charge set off: threshold crossings (each alerted once per agent and
    /// period across all workers) and, for `alert`, the overage.
    fn after_settle(
        &self,
        host: &dyn Host,
        identity: &Identity,
        budget: &AgentBudget,
        settled: &[Settled],
    ) {
        let worker = &self.worker;
        let ledger = Ledger::new(host);
        for entry in settled.iter().filter(|s| s.scope == Scope::Agent) {
            let kind = entry.period.kind;
            let Some(limit) = budget.limit(kind) else {
                continue;
            };
            raise_levels(
                host,
                worker,
                identity,
                budget,
                &entry.period,
                entry.after.spent,
                self.now,
            );
            if budget.action == LimitAction::Alert {
                let overage = policy::overage(limit, entry.before.spent, entry.after.spent);
                if overage > 0 {
                    let account = AccountKey::Overage(identity.budget.clone());
                    if let Err(error) = ledger.add_spend(&entry.period, &account, overage) {
                        worker.ledger_error(&error);
                    }
                    if let Some(agent) = self.agent {
                        worker.metrics.count(Counter::Overage(agent, kind), overage);
                    }
                }
            }
        }
    }
}

fn reply_only(reply: LocalReply) -> HeadOutcome {
    HeadOutcome {
        action: HeadAction::Reply(reply),
        edits: HeaderEdits::default(),
    }
}

/// Raises the alerts for every level `spent` has reached on an agent's period, each once:
/// the worker whose CAS first sets the level's flag in the shared ledger raises it.
fn raise_levels(
    host: &dyn Host,
    worker: &Worker,
    identity: &Identity,
    budget: &AgentBudget,
    period: &Period,
    spent: u64,
    now: i64,
) {
    let Some(limit) = budget.limit(period.kind) else {
        return;
    };
    let ledger = Ledger::new(host);
    for (crossing, mark) in policy::levels_reached(budget, period.kind, spent) {
        let flag = AccountKey::Alerted {
            budget: identity.budget.clone(),
            level: crossing.name(),
            mark,
        };
        if worker.knows_flag(&flag, period) {
            continue;
        }
        match ledger.try_update(period, &flag, |a| {
            (a.spent == 0).then_some(Account { spent: 1, ..a })
        }) {
            Ok(Some(_)) => worker.raise_alert(alert_for(
                crossing, identity, budget, period, spent, limit, now,
            )),
            Ok(None) => {}
            Err(error) => {
                worker.ledger_error(&error);
                continue;
            }
        }
        worker.remember_flag(flag, period);
    }
}

fn alert_for(
    crossing: Crossing,
    identity: &Identity,
    budget: &AgentBudget,
    period: &Period,
    spent: u64,
    limit: u64,
    now: i64,
) -> Alert {
    let (kind, threshold_ppm) = policy::alert_kind(crossing, budget);
    Alert {
        kind,
        agent: identity.budget.clone(),
        period: period.kind,
        period_id: period.id.to_string(),
        spend_micro_usd: spent,
        budget_micro_usd: limit,
        threshold: threshold_ppm as f64 / 1e6,
        action: budget.action.name().to_string(),
        at_unix_secs: now,
        period_end_unix_secs: period.end,
    }
}

#[cfg(test)]
mod tests;

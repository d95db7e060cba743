//! Drives [`Call`] through the HTTP callbacks in the order the proxy-wasm adapter does,
//! against [`FakeHost`]: request headers, the held request body, response headers, each
//! response chunk, then `on_done` (Envoy's `on_log`, which always runs).

use super::*;
use crate::config::Config;
use crate::host::fake::FakeHost;
use crate::ledger::{AccountKey, Ledger, MAX_CAS_ATTEMPTS};
use crate::usage::Usage;
use serde_json::Value;

/// 2026-11-28T21:06:40Z.
const NOW: i64 = 1_795_900_000;
/// Seconds from `NOW` to 2026-11-29T00:00:00Z (86 400 − 76 000).
const TO_MIDNIGHT: u64 = 10_400;
/// Seconds from `NOW` to 2026-12-01T00:00:00Z: to midnight, then the 29th and the 30th.
const TO_MONTH_END: u64 = TO_MIDNIGHT + 2 * 86_400;

const CHAT_PATH: &str = "/v1/chat/completions";
const MESSAGES_PATH: &str = "/v1/messages";

const OPENAI_CHAT: &[u8] = include_bytes!("../../../tests/fixtures/openai/chat.json");
const OPENAI_STREAM: &[u8] = include_bytes!("../../../tests/fixtures/openai/chat_stream_usage.sse");
const OPENAI_STREAM_NO_USAGE: &[u8] =
    include_bytes!("../../../tests/fixtures/openai/chat_stream_no_usage.sse");
const ANTHROPIC_MESSAGE: &[u8] = include_bytes!("../../../tests/fixtures/anthropic/messages.json");
const ANTHROPIC_STREAM: &[u8] =
    include_bytes!("../../../tests/fixtures/anthropic/messages_stream.sse");

const OPENAI_REQUEST: &[u8] = br#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#;
const OPENAI_STREAM_REQUEST: &[u8] =
    br#"{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
const OPENAI_STREAM_REQUEST_USAGE_OFF: &[u8] = br#"{"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":false},"messages":[]}"#;
const OPENAI_STREAM_REQUEST_WITH_USAGE: &[u8] = br#"{"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":true},"messages":[]}"#;
const ANTHROPIC_REQUEST: &[u8] = br#"{"model":"claude-sonnet-4-5","max_tokens":100,"messages":[]}"#;
const ANTHROPIC_STREAM_REQUEST: &[u8] =
    br#"{"model":"claude-3-5-sonnet-20241022","max_tokens":100,"stream":true,"messages":[]}"#;

const CONFIG: &str = r#"{"agents":{"bot":{"daily_usd":10,"monthly_usd":100}}}"#;

/// chat.json: 1019 prompt tokens of which 512 cached, 310 output, at gpt-4o prices:
/// 507 × $2.50/M = 1267.5 µ$, 512 × $1.25/M = 640 µ$, 310 × $10/M = 3100 µ$; 5007.5 µ$ is
/// rounded up once to 5008.
const CHAT_COST: u64 = 5008;
/// chat_stream_usage.sse: 21 input and 9 output tokens of gpt-4o-mini ($0.15/M in, $0.60/M
/// out): 3.15 + 5.4 = 8.55 µ$, rounded up to 9.
const STREAM_COST: u64 = 9;

// ---------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------

/// A worker for `config`. Reservations are off unless the config says otherwise: most
/// tests here are about metering and the stop decision on settled spend; the reservation
/// tests turn them on.
fn setup(config: &str) -> (FakeHost, Rc<Worker>) {
    let host = FakeHost::new().at_unix_secs(NOW);
    let mut value: Value = serde_json::from_str(config).unwrap();
    if value.get("reservations").is_none() {
        value["reservations"] = Value::Bool(false);
    }
    let worker = Rc::new(Worker::new(
        Config::from_bytes(value.to_string().as_bytes()).unwrap(),
    ));
    // What on_configure does before any call.
    worker.tick(&host);
    (host, worker)
}

/// One call as the client and the provider play it.
#[derive(Debug, Clone)]
struct Exchange<'a> {
    path: &'a str,
    agent: Option<&'a str>,
    task: Option<&'a str>,
    user: Option<&'a str>,
    /// Empty: the request headers end the stream.
    request: &'a [u8],
    /// False: Envoy never calls the response callbacks (upstream reset, client gone).
    respond: bool,
    status: u32,
    content_type: &'a str,
    content_encoding: Option<&'a str>,
    chunks: Vec<&'a [u8]>,
    /// The response ends (end_of_stream on the last chunk, or on the headers without
    /// chunks). False: the stream is cut and only `on_done` follows.
    ended: bool,
    /// What Envoy reports at `on_log` about a response that did not end.
    cause: EndCause,
}

impl<'a> Exchange<'a> {
    fn json(path: &'a str, agent: &'a str, request: &'a [u8], body: &'a [u8]) -> Self {
        Exchange {
            path,
            agent: Some(agent),
            task: None,
            user: None,
            request,
            respond: true,
            status: 200,
            content_type: "application/json",
            content_encoding: None,
            chunks: vec![body],
            ended: true,
            cause: EndCause::Normal,
        }
    }

    fn openai(agent: &'a str, body: &'a [u8]) -> Self {
        Exchange::json(CHAT_PATH, agent, OPENAI_REQUEST, body)
    }

    fn anthropic(agent: &'a str, body: &'a [u8]) -> Self {
        Exchange::json(MESSAGES_PATH, agent, ANTHROPIC_REQUEST, body)
    }

    fn sse(path: &'a str, agent: &'a str, request: &'a [u8], chunks: Vec<&'a [u8]>) -> Self {
        Exchange {
            content_type: "text/event-stream; charset=utf-8",
            chunks,
            ..Exchange::json(path, agent, request, b"")
        }
    }
}

struct Ran {
    call: Call,
    head: HeadOutcome,
    rewritten: Option<Vec<u8>>,
    /// A refusal at the body step (the worst case did not fit).
    body_reply: Option<LocalReply>,
    edits: HeaderEdits,
    outcomes: Vec<ChunkOutcome>,
    /// What the client received: each chunk, or its replacement.
    client: Vec<u8>,
}

fn run_call(host: &FakeHost, worker: &Rc<Worker>, exchange: &Exchange<'_>) -> Ran {
    let mut call = Call::new(Rc::clone(worker));
    let head = call.on_request_headers(
        host,
        RequestHead {
            path: exchange.path.to_string(),
            agent: exchange.agent.map(str::to_string),
            task: exchange.task.map(str::to_string),
            user: exchange.user.map(str::to_string),
            // As the SDKs send it (gzip, br...).
            accept_encoding: true,
            has_body: !exchange.request.is_empty(),
            ..RequestHead::default()
        },
    );
    let body = match head.action {
        HeadAction::WaitForBody | HeadAction::HoldForBody => {
            call.on_request_body(host, exchange.request)
        }
        HeadAction::Continue | HeadAction::Reply(_) => BodyOutcome::default(),
    };
    let rewritten = body.body;
    let body_reply = body.reply;
    let mut edits = HeaderEdits::default();
    let mut outcomes = Vec::new();
    let mut client = Vec::new();
    if exchange.respond {
        let headers_end = exchange.ended && exchange.chunks.is_empty();
        edits = call.on_response_headers(&ResponseHead {
            status: exchange.status,
            content_type: Some(exchange.content_type.to_string()),
            content_encoding: exchange.content_encoding.map(str::to_string),
            end_of_stream: headers_end,
        });
        if headers_end {
            call.on_response_complete(host);
        }
        let last = exchange.chunks.len().saturating_sub(1);
        for (index, chunk) in exchange.chunks.iter().enumerate() {
            let outcome = call.on_response_body(host, chunk, exchange.ended && index == last);
            match &outcome {
                ChunkOutcome::Pass => client.extend_from_slice(chunk),
                ChunkOutcome::Replace(bytes) => client.extend_from_slice(bytes),
            }
            outcomes.push(outcome);
        }
    }
    call.on_done(host, exchange.cause);
    Ran {
        call,
        head,
        rewritten,
        body_reply,
        edits,
        outcomes,
        client,
    }
}

/// Ledger spend of a budget in the current (daily, monthly) periods.
fn spent(host: &FakeHost, worker: &Worker, budget: &str) -> (u64, u64) {
    let [day, month] = worker.current_periods(now(host));
    let ledger = Ledger::new(host);
    (
        ledger.read(&day, &account_of(budget)).unwrap().spent,
        ledger.read(&month, &account_of(budget)).unwrap().spent,
    )
}

/// Puts spend straight into the ledger, as other workers' calls would have.
fn seed(host: &FakeHost, worker: &Worker, budget: &str, daily: u64, monthly: u64) {
    let [day, month] = worker.current_periods(now(host));
    let ledger = Ledger::new(host);
    ledger.add_spend(&day, &account_of(budget), daily).unwrap();
    ledger
        .add_spend(&month, &account_of(budget), monthly)
        .unwrap();
}

fn now(host: &FakeHost) -> i64 {
    (host as &dyn Host).now_unix_secs()
}

/// A metric as Envoy would show it after the next tick (counts leave on ticks).
fn metric(host: &FakeHost, worker: &Worker, name: &str) -> i64 {
    worker.metrics.flush(host);
    host.metric(name).unwrap_or(0)
}

fn account_of(budget: &str) -> AccountKey {
    AccountKey::Agent(budget.to_string())
}

fn header<'h>(headers: &'h [(String, String)], name: &str) -> Option<&'h str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|(n, v)| ((*n).to_string(), (*v).to_string()))
        .collect()
}

fn reply_of(head: &HeadOutcome) -> &LocalReply {
    match &head.action {
        HeadAction::Reply(reply) => reply,
        other => panic!("expected a local reply, got {other:?}"),
    }
}

fn json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap()
}

fn charged(call: &Call) -> (u64, Option<String>) {
    match &call.attribution.as_ref().expect("attribution").outcome {
        Outcome::Charged {
            micro_usd,
            priced_as,
            ..
        } => (*micro_usd, priced_as.clone()),
        other => panic!("expected a charge, got {other:?}"),
    }
}

/// The stream minus the one event block holding `"choices":[]` (the usage-only chunk) and
/// its terminating blank line (`separator`).
fn without_usage_block(stream: &[u8], separator: &[u8]) -> Vec<u8> {
    let needle = b"\"choices\":[]";
    let at = stream
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap();
    let start = stream[..at]
        .windows(separator.len())
        .rposition(|w| w == separator)
        .map_or(0, |p| p + separator.len());
    let end = at
        + stream[at..]
            .windows(separator.len())
            .position(|w| w == separator)
            .unwrap()
        + separator.len();
    let mut out = stream[..start].to_vec();
    out.extend_from_slice(&stream[end..]);
    assert_eq!(out.len() + (end - start), stream.len());
    out
}

/// The ways a body can be cut into chunks, all of which must give the same result.
fn splits(body: &[u8]) -> Vec<(String, Vec<&[u8]>)> {
    let mut all = Vec::new();
    for cut in 0..=body.len() {
        let (head, tail) = body.split_at(cut);
        all.push((format!("split at {cut}"), vec![head, tail]));
    }
    all.push(("byte by byte".to_string(), body.chunks(1).collect()));
    all.push((
        "whole, then an empty last chunk".to_string(),
        vec![body, b""],
    ));
    all
}

// ---------------------------------------------------------------------------------------
// 1. OpenAI, non-streaming
// ---------------------------------------------------------------------------------------

#[test]
fn openai_json_call_is_charged_at_list_price() {
    let (host, worker) = setup(CONFIG);
    let want_cost = (507 * 2_500_000_u64 + 512 * 1_250_000 + 310 * 10_000_000).div_ceil(1_000_000);
    assert_eq!(want_cost, CHAT_COST);

    let exchange = Exchange {
        task: Some("t-1"),
        user: Some("u-1"),
        ..Exchange::openai("bot", OPENAI_CHAT)
    };
    let ran = run_call(&host, &worker, &exchange);

    assert_eq!(
        ran.head,
        HeadOutcome {
            action: HeadAction::WaitForBody,
            edits: HeaderEdits {
                set: pairs(&[("accept-encoding", "identity")]),
                remove: vec!["content-length".to_string()],
            },
        }
    );
    assert_eq!(
        ran.rewritten, None,
        "non-streaming requests are not touched"
    );
    assert_eq!(ran.edits.remove, Vec::<String>::new());
    assert_eq!(ran.outcomes, vec![ChunkOutcome::Pass]);
    assert_eq!(ran.client, OPENAI_CHAT);

    // Spend by task and user stays in the worker until the tick merges it.
    let [today, _] = worker.current_periods(now(&host));
    let top_of = || crate::top::read(&host, "bot", &today).unwrap();
    assert_eq!((top_of().tasks, top_of().users), (vec![], vec![]));
    // Counts and gauges leave on the tick.
    worker.tick(&host);
    assert_eq!(top_of().tasks, vec![("t-1".to_string(), CHAT_COST)]);
    assert_eq!(top_of().users, vec![("u-1".to_string(), CHAT_COST)]);
    let expected_metrics = [
        ("agent_budget_requests.agent.bot", 1),
        ("agent_budget_input_tokens.agent.bot", 507),
        ("agent_budget_cached_input_tokens.agent.bot", 512),
        ("agent_budget_output_tokens.agent.bot", 310),
        ("agent_budget_reasoning_tokens.agent.bot", 128),
        ("agent_budget_cost_micro_usd.agent.bot", 5008),
        ("agent_budget_spend_micro_usd.agent.bot.period.daily", 5008),
        (
            "agent_budget_spend_micro_usd.agent.bot.period.monthly",
            5008,
        ),
        ("agent_budget_rejected.agent.bot", 0),
        ("agent_budget_unmetered_requests.agent.bot", 0),
        ("agent_budget_unpriced_calls", 0),
    ];
    for (name, want) in expected_metrics {
        assert_eq!(metric(&host, &worker, name), want, "{name}");
    }
    assert_eq!(spent(&host, &worker, "bot"), (CHAT_COST, CHAT_COST));

    assert_eq!(
        ran.call.attribution,
        Some(Attribution {
            agent: "bot".to_string(),
            budget: "bot".to_string(),
            task: Some("t-1".to_string()),
            user: Some("u-1".to_string()),
            api: "openai_chat",
            operation: Some("chat"),
            provider: Some("openai"),
            model: "gpt-4o-2024-08-06".to_string(),
            degraded_from: None,
            action: CallOutcome::Allowed,
            outcome: Outcome::Charged {
                estimated: false,
                metered: Metered {
                    usage: Usage {
                        input: 507,
                        cache_read: 512,
                        output: 310,
                        reasoning: 128,
                        ..Usage::default()
                    },
                    model: Some("gpt-4o-2024-08-06".to_string()),
                },
                micro_usd: CHAT_COST,
                priced_as: Some("gpt-4o".to_string()),
            },
        })
    );

    // A second call adds up, and on_done after the end of the body never charges twice.
    let again = run_call(&host, &worker, &Exchange::openai("bot", OPENAI_CHAT));
    assert_eq!(charged(&again.call).0, CHAT_COST);
    assert_eq!(spent(&host, &worker, "bot"), (2 * CHAT_COST, 2 * CHAT_COST));
    assert_eq!(metric(&host, &worker, "agent_budget_requests.agent.bot"), 2);
    assert_eq!(
        metric(&host, &worker, "agent_budget_cost_micro_usd.agent.bot"),
        10_016
    );
}

#[test]
fn json_body_in_many_chunks_meters_the_same() {
    for (name, chunks) in splits(OPENAI_CHAT) {
        let (host, worker) = setup(CONFIG);
        let ran = run_call(
            &host,
            &worker,
            &Exchange {
                chunks,
                ..Exchange::openai("bot", OPENAI_CHAT)
            },
        );
        assert_eq!(charged(&ran.call).0, CHAT_COST, "{name}");
        assert!(
            ran.outcomes.iter().all(|o| *o == ChunkOutcome::Pass),
            "{name}"
        );
        assert_eq!(ran.client, OPENAI_CHAT, "{name}");
    }
}

// ---------------------------------------------------------------------------------------
// 2. Anthropic
// ---------------------------------------------------------------------------------------

#[test]
fn anthropic_json_prices_each_cache_tier() {
    let (host, worker) = setup(CONFIG);
    let ran = run_call(
        &host,
        &worker,
        &Exchange::anthropic("bot", ANTHROPIC_MESSAGE),
    );

    // claude-sonnet-4-5 at $3/M input, $15/M output; cache writes at 1.25× (5 min) and 2×
    // (1 h) input, cache reads at 0.1× input.
    let input = 3_000_000_u64;
    let want = (2095 * input
        + 51 * input * 5 / 4
        + 2000 * input * 2
        + 4000 * input / 10
        + 503 * 15_000_000)
        .div_ceil(1_000_000);
    // 6285 + 191.25 + 12000 + 1200 + 7545 = 27221.25 µ$.
    assert_eq!(want, 27_222);
    assert_eq!(
        charged(&ran.call),
        (want, Some("claude-sonnet-4-5".to_string()))
    );
    assert_eq!(spent(&host, &worker, "bot"), (want, want));

    let attribution = ran.call.attribution.as_ref().unwrap();
    assert_eq!(attribution.api, "anthropic_messages");
    assert_eq!(attribution.model, "claude-sonnet-4-5-20250929");
    for (name, want) in [
        ("agent_budget_input_tokens.agent.bot", 2095),
        ("agent_budget_cached_input_tokens.agent.bot", 4000),
        ("agent_budget_cache_write_tokens.agent.bot", 2051),
        ("agent_budget_output_tokens.agent.bot", 503),
        ("agent_budget_cost_micro_usd.agent.bot", 27_222),
    ] {
        assert_eq!(metric(&host, &worker, name), want, "{name}");
    }
    assert_eq!(ran.client, ANTHROPIC_MESSAGE);
    assert_eq!(ran.rewritten, None);
}

#[test]
fn anthropic_stream_charges_the_final_output_once_at_every_split() {
    // message_start: 25 input, 100 cache reads; message_delta output 7 then 15 (cumulative).
    // claude-3-5-sonnet: 25 × $3/M + 100 × $0.30/M + 15 × $15/M = 75 + 30 + 225 µ$.
    let want = (25 * 3_000_000_u64 + 100 * 300_000 + 15 * 15_000_000).div_ceil(1_000_000);
    assert_eq!(want, 330);
    for (name, chunks) in splits(ANTHROPIC_STREAM) {
        let (host, worker) = setup(CONFIG);
        let ran = run_call(
            &host,
            &worker,
            &Exchange::sse(MESSAGES_PATH, "bot", ANTHROPIC_STREAM_REQUEST, chunks),
        );
        assert_eq!(
            charged(&ran.call),
            (want, Some("claude-3-5-sonnet".to_string())),
            "{name}"
        );
        assert_eq!(spent(&host, &worker, "bot"), (want, want), "{name}");
        assert_eq!(
            metric(&host, &worker, "agent_budget_output_tokens.agent.bot"),
            15,
            "{name}"
        );
        assert_eq!(
            metric(&host, &worker, "agent_budget_input_tokens.agent.bot"),
            25
        );
        assert_eq!(
            metric(&host, &worker, "agent_budget_cached_input_tokens.agent.bot"),
            100
        );
        // Anthropic streams always carry usage: nothing is asked for, nothing is removed.
        assert_eq!(ran.rewritten, None, "{name}");
        assert!(ran.edits.remove.is_empty(), "{name}");
        assert!(
            ran.outcomes.iter().all(|o| *o == ChunkOutcome::Pass),
            "{name}"
        );
        assert_eq!(ran.client, ANTHROPIC_STREAM, "{name}");
        assert_eq!(
            ran.call.attribution.as_ref().unwrap().model,
            "claude-3-5-sonnet-20241022"
        );
    }
}

// ---------------------------------------------------------------------------------------
// 3. OpenAI streaming: the usage chunk the filter asked for is removed
// ---------------------------------------------------------------------------------------

fn assert_stripped_stream(request: &[u8], stream: &[u8], expected: &[u8]) {
    for (name, chunks) in splits(stream) {
        let (host, worker) = setup(CONFIG);
        let ran = run_call(
            &host,
            &worker,
            &Exchange::sse(CHAT_PATH, "bot", request, chunks),
        );
        let sent = json(ran.rewritten.as_deref().expect("request rewritten"));
        assert_eq!(sent["stream_options"]["include_usage"], true, "{name}");
        assert_eq!(sent["model"], "gpt-4o-mini");
        assert_eq!(
            ran.edits.remove,
            vec!["content-length".to_string()],
            "{name}"
        );
        assert_eq!(
            String::from_utf8_lossy(&ran.client),
            String::from_utf8_lossy(expected),
            "{name}"
        );
        assert_eq!(
            charged(&ran.call),
            (STREAM_COST, Some("gpt-4o-mini".to_string())),
            "{name}"
        );
        assert_eq!(
            spent(&host, &worker, "bot"),
            (STREAM_COST, STREAM_COST),
            "{name}"
        );
    }
}

#[test]
fn openai_stream_strips_the_usage_it_asked_for_at_every_split() {
    let expected = without_usage_block(OPENAI_STREAM, b"\n\n");
    // The helper removed exactly one event: 6 blocks become 5, [DONE] still last.
    assert_eq!(expected.windows(6).filter(|w| w == b"data: ").count(), 5);
    assert!(expected.ends_with(b"data: [DONE]\n\n"));
    assert!(!expected.windows(12).any(|w| w == b"\"choices\":[]"));
    for request in [OPENAI_STREAM_REQUEST, OPENAI_STREAM_REQUEST_USAGE_OFF] {
        assert_stripped_stream(request, OPENAI_STREAM, &expected);
    }
}

#[test]
fn openai_stream_strips_with_crlf_line_endings_at_every_split() {
    // CRLF puts the parser's held-back CR (a chunk ending between CR and LF) on the path.
    let mut crlf = Vec::new();
    for &byte in OPENAI_STREAM {
        if byte == b'\n' {
            crlf.extend_from_slice(b"\r\n");
        } else {
            crlf.push(byte);
        }
    }
    let expected = without_usage_block(&crlf, b"\r\n\r\n");
    assert_stripped_stream(OPENAI_STREAM_REQUEST, &crlf, &expected);
}

#[test]
fn openai_stream_strips_a_last_usage_event_without_its_blank_line() {
    // Some servers end the stream with the usage chunk, no `[DONE]`, no final blank line.
    let usage_at = OPENAI_STREAM
        .windows(12)
        .position(|w| w == b"\"choices\":[]")
        .unwrap();
    let block_start = OPENAI_STREAM[..usage_at]
        .windows(2)
        .rposition(|w| w == b"\n\n")
        .unwrap()
        + 2;
    let done = OPENAI_STREAM
        .windows(12)
        .position(|w| w == b"data: [DONE]")
        .unwrap();
    let stream = &OPENAI_STREAM[..done - 2];
    assert!(stream.ends_with(b"}}"));
    assert_stripped_stream(OPENAI_STREAM_REQUEST, stream, &OPENAI_STREAM[..block_start]);
}

#[test]
fn openai_stream_with_client_usage_passes_untouched() {
    for (name, chunks) in splits(OPENAI_STREAM) {
        let (host, worker) = setup(CONFIG);
        let ran = run_call(
            &host,
            &worker,
            &Exchange::sse(CHAT_PATH, "bot", OPENAI_STREAM_REQUEST_WITH_USAGE, chunks),
        );
        assert_eq!(ran.rewritten, None, "{name}");
        assert!(ran.edits.remove.is_empty(), "{name}");
        assert!(
            ran.outcomes.iter().all(|o| *o == ChunkOutcome::Pass),
            "{name}"
        );
        assert_eq!(ran.client, OPENAI_STREAM, "{name}");
        assert_eq!(charged(&ran.call).0, STREAM_COST, "{name}");
        assert_eq!(spent(&host, &worker, "bot"), (STREAM_COST, STREAM_COST));
    }
}

// ---------------------------------------------------------------------------------------
// 4. Budget stop
// ---------------------------------------------------------------------------------------

#[test]
fn stops_once_the_daily_budget_is_spent_and_resumes_after_midnight() {
    // $0.01 a day: two chat.json calls (5008 µ$ each) use it up.
    let (host, worker) = setup(r#"{"agents":{"tight":{"daily_usd":0.01,"monthly_usd":100}}}"#);
    let stopped_response = Exchange {
        status: 429,
        ..Exchange::openai("tight", br#"{"error":{}}"#)
    };

    for (call, spent_before) in [(1, 0), (2, CHAT_COST)] {
        assert_eq!(
            spent(&host, &worker, "tight").0,
            spent_before,
            "call {call}"
        );
        let ran = run_call(&host, &worker, &Exchange::openai("tight", OPENAI_CHAT));
        assert_eq!(ran.head.action, HeadAction::WaitForBody, "call {call}");
        assert_eq!(charged(&ran.call).0, CHAT_COST, "call {call}");
    }
    assert_eq!(spent(&host, &worker, "tight"), (10_016, 10_016));

    // OpenAI shape.
    let ran = run_call(&host, &worker, &stopped_response);
    let reply = reply_of(&ran.head);
    assert_eq!(reply.status, 429);
    assert_eq!(
        reply.headers,
        pairs(&[
            ("x-agent-budget-period", "daily"),
            ("x-agent-budget-limit-usd", "0.010000"),
            ("x-agent-budget-remaining-usd", "0.000000"),
            ("x-agent-budget-reset", "10400"),
            ("retry-after", "10400"),
            ("content-type", "application/json"),
            ("x-should-retry", "false"),
        ])
    );
    assert_eq!(
        header(&reply.headers, "retry-after"),
        Some(TO_MIDNIGHT.to_string().as_str())
    );
    let body = json(&reply.body);
    assert_eq!(body["error"]["type"], "budget_exceeded");
    assert_eq!(body["error"]["code"], "budget_exceeded");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("`tight`") && message.contains("daily"),
        "{message}"
    );
    assert!(message.contains("2026-11-29T00:00:00Z"), "{message}");
    assert!(ran.head.edits == HeaderEdits::default());
    assert_eq!(ran.rewritten, None);
    assert_eq!(ran.edits, HeaderEdits::default());
    assert_eq!(
        ran.call.attribution.map(|a| a.outcome),
        Some(Outcome::Stopped { status: 429 })
    );

    // Anthropic shape.
    let ran = run_call(
        &host,
        &worker,
        &Exchange::anthropic("tight", ANTHROPIC_MESSAGE),
    );
    let reply = reply_of(&ran.head);
    assert_eq!(reply.status, 429);
    assert_eq!(header(&reply.headers, "retry-after"), Some("10400"));
    assert_eq!(header(&reply.headers, "x-should-retry"), Some("false"));
    let body = json(&reply.body);
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "rate_limit_error");

    assert_eq!(
        metric(&host, &worker, "agent_budget_rejected.agent.tight"),
        2
    );
    assert_eq!(
        metric(&host, &worker, "agent_budget_requests.agent.tight"),
        4
    );
    assert_eq!(
        spent(&host, &worker, "tight"),
        (10_016, 10_016),
        "stops charge nothing"
    );

    // One second before midnight: still stopped, retry in 1 s.
    host.set_unix_secs(NOW + TO_MIDNIGHT as i64 - 1);
    worker.tick(&host);
    let ran = run_call(&host, &worker, &stopped_response);
    assert_eq!(
        header(&reply_of(&ran.head).headers, "retry-after"),
        Some("1")
    );

    // Midnight: a new day, the same month.
    host.set_unix_secs(NOW + TO_MIDNIGHT as i64);
    worker.tick(&host);
    let ran = run_call(&host, &worker, &Exchange::openai("tight", OPENAI_CHAT));
    assert_eq!(ran.head.action, HeadAction::WaitForBody);
    assert_eq!(
        header(&ran.edits.set, "x-agent-budget-remaining-usd"),
        Some("0.010000")
    );
    assert_eq!(
        header(&ran.edits.set, "x-agent-budget-reset"),
        Some("86400")
    );
    assert_eq!(charged(&ran.call).0, CHAT_COST);
    assert_eq!(spent(&host, &worker, "tight"), (CHAT_COST, 3 * CHAT_COST));
    assert_eq!(
        metric(&host, &worker, "agent_budget_rejected.agent.tight"),
        3
    );
}

#[test]
fn stops_once_the_monthly_budget_is_spent_until_the_first_of_next_month() {
    let (host, worker) = setup(r#"{"agents":{"monthly":{"monthly_usd":0.01}}}"#);
    for _ in 0..2 {
        let ran = run_call(&host, &worker, &Exchange::openai("monthly", OPENAI_CHAT));
        assert_eq!(charged(&ran.call).0, CHAT_COST);
    }
    for path in [CHAT_PATH, MESSAGES_PATH] {
        let ran = run_call(
            &host,
            &worker,
            &Exchange::json(path, "monthly", OPENAI_REQUEST, OPENAI_CHAT),
        );
        let reply = reply_of(&ran.head);
        assert_eq!(reply.status, 429, "{path}");
        assert_eq!(
            header(&reply.headers, "retry-after"),
            Some(TO_MONTH_END.to_string().as_str()),
            "{path}"
        );
        assert_eq!(header(&reply.headers, "retry-after"), Some("183200"));
        assert_eq!(
            header(&reply.headers, "x-agent-budget-period"),
            Some("monthly")
        );
        assert_eq!(
            header(&reply.headers, "x-agent-budget-reset"),
            Some("183200")
        );
        assert_eq!(
            header(&reply.headers, "x-agent-budget-remaining-usd"),
            Some("0.000000")
        );
    }
    assert_eq!(
        metric(&host, &worker, "agent_budget_rejected.agent.monthly"),
        2
    );

    // A new day does not help a monthly budget; a new month does.
    host.set_unix_secs(NOW + TO_MIDNIGHT as i64);
    worker.tick(&host);
    let ran = run_call(&host, &worker, &Exchange::openai("monthly", OPENAI_CHAT));
    assert_eq!(
        header(&reply_of(&ran.head).headers, "retry-after"),
        Some("172800")
    );
    host.set_unix_secs(NOW + TO_MONTH_END as i64);
    worker.tick(&host);
    let ran = run_call(&host, &worker, &Exchange::openai("monthly", OPENAI_CHAT));
    assert_eq!(charged(&ran.call).0, CHAT_COST);
}

/// The period a call was stopped for and the seconds it must wait, or None if allowed.
type Stopped = Option<(&'static str, u64)>;

#[test]
fn stop_decision_at_the_limit_not_before() {
    // bot: $1 a day, $10 a month. (daily spent, monthly spent) -> stopped period and wait.
    #[rustfmt::skip]
    let cases: [(u64, u64, Stopped); 7] = [
        (0,         0,          None),
        (999_999,   999_999,    None),
        (1_000_000, 1_000_000,  Some(("daily", TO_MIDNIGHT))),
        (1_500_000, 1_500_000,  Some(("daily", TO_MIDNIGHT))),
        (0,         9_999_999,  None),
        (0,         10_000_000, Some(("monthly", TO_MONTH_END))),
        // Both used up: the client must wait for the later reset.
        (1_000_000, 10_000_000, Some(("monthly", TO_MONTH_END))),
    ];
    for (daily, monthly, want) in cases {
        let (host, worker) = setup(r#"{"agents":{"bot":{"daily_usd":1,"monthly_usd":10}}}"#);
        seed(&host, &worker, "bot", daily, monthly);
        let ran = run_call(&host, &worker, &Exchange::openai("bot", OPENAI_CHAT));
        let case = format!("daily {daily} monthly {monthly}");
        match want {
            None => {
                assert_eq!(ran.head.action, HeadAction::WaitForBody, "{case}");
                assert_eq!(charged(&ran.call).0, CHAT_COST, "{case}");
                assert_eq!(
                    metric(&host, &worker, "agent_budget_rejected.agent.bot"),
                    0,
                    "{case}"
                );
            }
            Some((period, wait)) => {
                let reply = reply_of(&ran.head);
                assert_eq!(reply.status, 429, "{case}");
                assert_eq!(
                    header(&reply.headers, "x-agent-budget-period"),
                    Some(period)
                );
                let wait = wait.to_string();
                assert_eq!(header(&reply.headers, "retry-after"), Some(wait.as_str()));
                assert_eq!(
                    header(&reply.headers, "x-agent-budget-reset"),
                    Some(wait.as_str())
                );
                assert_eq!(
                    header(&reply.headers, "x-agent-budget-remaining-usd"),
                    Some("0.000000"),
                    "{case}"
                );
                assert_eq!(
                    metric(&host, &worker, "agent_budget_rejected.agent.bot"),
                    1,
                    "{case}"
                );
                assert_eq!(spent(&host, &worker, "bot"), (daily, monthly), "{case}");
            }
        }
        assert_eq!(
            metric(&host, &worker, "agent_budget_requests.agent.bot"),
            1,
            "{case}"
        );
        // After the tick, the gauge shows what the ledger holds.
        worker.tick(&host);
        let gauge = metric(
            &host,
            &worker,
            "agent_budget_spend_micro_usd.agent.bot.period.daily",
        );
        assert_eq!(
            gauge,
            i64::try_from(spent(&host, &worker, "bot").0).unwrap()
        );
    }
}

#[test]
fn stop_headers_describe_the_exhausted_period_on_the_last_day_of_a_month() {
    let (host, worker) = setup(r#"{"agents":{"bot":{"daily_usd":1,"monthly_usd":10}}}"#);
    // 2026-11-30T12:00:00Z: today and this month both end at 2026-12-01T00:00:00Z.
    let last_day_noon = NOW + TO_MIDNIGHT as i64 + 86_400 + 43_200;
    host.set_unix_secs(last_day_noon);
    worker.tick(&host);
    let [day, month] = worker.current_periods(last_day_noon);
    assert_eq!(day.end, month.end);
    seed(&host, &worker, "bot", 1_000_000, 10_000_000);
    let ran = run_call(&host, &worker, &Exchange::openai("bot", OPENAI_CHAT));
    let reply = reply_of(&ran.head);
    assert_eq!(reply.status, 429);
    let message = json(&reply.body)["error"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        message.contains("monthly budget of $10.000000"),
        "{message}"
    );
    assert_eq!(header(&reply.headers, "retry-after"), Some("43200"));
    assert_eq!(
        header(&reply.headers, "x-agent-budget-period"),
        Some("monthly")
    );
    assert_eq!(
        header(&reply.headers, "x-agent-budget-limit-usd"),
        Some("10.000000"),
        "the limit must be the one of the period the headers name"
    );
}

// ---------------------------------------------------------------------------------------
// 5. Budget headers on allowed calls
// ---------------------------------------------------------------------------------------

#[test]
fn allowed_responses_carry_the_tightest_budget() {
    let config = r#"{"agents":{
        "roomy":{"daily_usd":10,"monthly_usd":100},
        "month_tight":{"daily_usd":10,"monthly_usd":1},
        "daily_only":{"daily_usd":2},
        "monthly_only":{"monthly_usd":3}}}"#;
    // (agent, seeded daily, seeded monthly, period, limit, remaining, reset)
    #[rustfmt::skip]
    let cases = [
        ("roomy",        0,         0,          "daily",   "10.000000",  "10.000000", TO_MIDNIGHT),
        ("roomy",        2_500_000, 2_500_000,  "daily",   "10.000000",  "7.500000",  TO_MIDNIGHT),
        ("roomy",        0,         95_000_000, "monthly", "100.000000", "5.000000",  TO_MONTH_END),
        ("month_tight",  0,         250_000,    "monthly", "1.000000",   "0.750000",  TO_MONTH_END),
        ("daily_only",   0,         5_000_000,  "daily",   "2.000000",   "2.000000",  TO_MIDNIGHT),
        ("monthly_only", 1_000_000, 0,          "monthly", "3.000000",   "3.000000",  TO_MONTH_END),
        ("monthly_only", 0,         2_999_999,  "monthly", "3.000000",   "0.000001",  TO_MONTH_END),
    ];
    for (agent, daily, monthly, period, limit, remaining, reset) in cases {
        let (host, worker) = setup(config);
        seed(&host, &worker, agent, daily, monthly);
        let ran = run_call(&host, &worker, &Exchange::openai(agent, OPENAI_CHAT));
        let reset = reset.to_string();
        assert_eq!(
            ran.edits.set,
            pairs(&[
                ("x-agent-budget-period", period),
                ("x-agent-budget-limit-usd", limit),
                ("x-agent-budget-remaining-usd", remaining),
                ("x-agent-budget-reset", reset.as_str()),
            ]),
            "{agent} {daily} {monthly}"
        );
        // Headers describe the budget before this call's own charge.
        assert_eq!(charged(&ran.call).0, CHAT_COST);
    }
}

#[test]
fn budget_headers_also_go_on_unmetered_and_streamed_responses() {
    let (host, worker) = setup(CONFIG);
    let want = pairs(&[
        ("x-agent-budget-period", "daily"),
        ("x-agent-budget-limit-usd", "10.000000"),
        ("x-agent-budget-remaining-usd", "10.000000"),
        ("x-agent-budget-reset", "10400"),
    ]);
    let error = Exchange {
        status: 500,
        ..Exchange::openai("bot", b"{}")
    };
    assert_eq!(run_call(&host, &worker, &error).edits.set, want);
    let stream = Exchange::sse(CHAT_PATH, "bot", OPENAI_STREAM_REQUEST, vec![OPENAI_STREAM]);
    let ran = run_call(&host, &worker, &stream);
    assert_eq!(ran.edits.set, want);
    assert_eq!(ran.edits.remove, vec!["content-length".to_string()]);
}

// ---------------------------------------------------------------------------------------
// 6. Unattributed calls
// ---------------------------------------------------------------------------------------

#[test]
fn unattributed_calls_are_rejected_in_the_provider_shape() {
    // (path, agent header, status, reason, error type, OpenAI error code)
    #[rustfmt::skip]
    let cases = [
        (CHAT_PATH,     None,             400, "missing", "invalid_request_error", Some("agent_not_identified")),
        (CHAT_PATH,     Some(""),         400, "missing", "invalid_request_error", Some("agent_not_identified")),
        (CHAT_PATH,     Some("  "),       400, "missing", "invalid_request_error", Some("agent_not_identified")),
        (CHAT_PATH,     Some("stranger"), 403, "unknown", "permission_denied",     Some("agent_unknown")),
        (CHAT_PATH,     Some("bad id!"),  400, "invalid", "invalid_request_error", Some("agent_not_identified")),
        (MESSAGES_PATH, None,             400, "missing", "invalid_request_error", None),
        (MESSAGES_PATH, Some("stranger"), 403, "unknown", "permission_error",      None),
        (MESSAGES_PATH, Some("bad id!"),  400, "invalid", "invalid_request_error", None),
        // Not an LLM path: still refused, in the OpenAI shape.
        ("/v1/models",  Some("stranger"), 403, "unknown", "permission_denied",     Some("agent_unknown")),
    ];
    for (path, agent, status, reason, error_type, openai_code) in cases {
        let (host, worker) = setup(CONFIG);
        let case = format!("{path} {agent:?}");
        let exchange = Exchange {
            agent,
            ..Exchange::json(path, "unused", OPENAI_REQUEST, OPENAI_CHAT)
        };
        let ran = run_call(&host, &worker, &exchange);
        let reply = reply_of(&ran.head);
        assert_eq!(reply.status, status, "{case}");
        assert_eq!(
            reply.headers,
            pairs(&[
                ("content-type", "application/json"),
                ("x-should-retry", "false")
            ]),
            "{case}"
        );
        let body = json(&reply.body);
        match openai_code {
            Some(code) => {
                assert_eq!(body["error"]["type"], error_type, "{case}");
                assert_eq!(body["error"]["code"], code, "{case}");
            }
            None => {
                assert_eq!(body["type"], "error", "{case}");
                assert_eq!(body["error"]["type"], error_type, "{case}");
            }
        }
        let message = body["error"]["message"].as_str().unwrap();
        match reason {
            "unknown" => assert!(message.contains("`stranger`"), "{message}"),
            _ => assert!(message.contains("`x-agent-id`"), "{message}"),
        }
        let counter = format!("agent_budget_unattributed.reason.{reason}");
        assert_eq!(metric(&host, &worker, &counter), 1, "{case}");
        assert!(
            !host
                .metric_names()
                .iter()
                .any(|n| n.starts_with("agent_budget_requests.")),
            "{case}: no budget was attributed"
        );
        assert_eq!(ran.edits, HeaderEdits::default(), "{case}");
        assert_eq!(ran.call.attribution, None, "{case}");
        assert_eq!(spent(&host, &worker, "bot"), (0, 0), "{case}");
    }
}

#[test]
fn unattributed_calls_are_charged_to_default_when_configured() {
    let config = r#"{"missing_agent":"default","unknown_agent":"default",
        "agents":{"bot":{"daily_usd":10},"default":{"daily_usd":1}}}"#;
    // (agent header, attributed agent)
    let cases = [
        (None, "-"),
        (Some(""), "-"),
        (Some("stranger"), "stranger"),
        (Some("bad id!"), "bad_id!"),
    ];
    for (agent, attributed) in cases {
        let (host, worker) = setup(config);
        let exchange = Exchange {
            agent,
            ..Exchange::openai("unused", OPENAI_CHAT)
        };
        let ran = run_call(&host, &worker, &exchange);
        assert_eq!(ran.head.action, HeadAction::WaitForBody, "{agent:?}");
        let attribution = ran.call.attribution.as_ref().unwrap();
        assert_eq!(attribution.agent, attributed, "{agent:?}");
        assert_eq!(attribution.budget, "default", "{agent:?}");
        assert_eq!(charged(&ran.call).0, CHAT_COST, "{agent:?}");
        assert_eq!(spent(&host, &worker, "default"), (CHAT_COST, CHAT_COST));
        assert_eq!(spent(&host, &worker, "bot"), (0, 0));
        assert_eq!(
            metric(&host, &worker, "agent_budget_requests.agent.default"),
            1
        );
        assert_eq!(
            metric(&host, &worker, "agent_budget_cost_micro_usd.agent.default"),
            5008
        );
        assert_eq!(
            header(&ran.edits.set, "x-agent-budget-limit-usd"),
            Some("1.000000")
        );
        assert!(
            !host
                .metric_names()
                .iter()
                .any(|n| n.starts_with("agent_budget_unattributed")),
            "{agent:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// 7. Unmetered outcomes
// ---------------------------------------------------------------------------------------

#[test]
fn unmetered_outcomes_are_counted_and_never_charged() {
    let config =
        r#"{"agents":{"bot":{"daily_usd":10,"monthly_usd":100}},"max_response_body_bytes":1024}"#;
    let mut too_large = OPENAI_CHAT.to_vec();
    too_large.resize(1025, b' ');
    let (too_large_head, too_large_tail) = too_large.split_at(600);
    let anthropic_before_delta = &ANTHROPIC_STREAM[..ANTHROPIC_STREAM
        .windows(20)
        .position(|w| w == b"event: message_delta")
        .unwrap()];

    let cases: Vec<(&str, Exchange<'_>, Unmetered)> = vec![
        (
            "500 error",
            Exchange {
                status: 500,
                ..Exchange::openai("bot", br#"{"error":{"message":"boom"}}"#)
            },
            Unmetered::UpstreamError,
        ),
        (
            "429 with a usage-looking body",
            Exchange {
                status: 429,
                ..Exchange::openai("bot", OPENAI_CHAT)
            },
            Unmetered::UpstreamError,
        ),
        (
            "500 stream",
            Exchange {
                status: 503,
                ..Exchange::sse(CHAT_PATH, "bot", OPENAI_STREAM_REQUEST, vec![OPENAI_STREAM])
            },
            Unmetered::UpstreamError,
        ),
        (
            "500 without a body",
            Exchange {
                status: 500,
                chunks: Vec::new(),
                ..Exchange::openai("bot", b"")
            },
            Unmetered::UpstreamError,
        ),
        (
            "gzip",
            Exchange {
                content_encoding: Some("gzip"),
                ..Exchange::openai("bot", OPENAI_CHAT)
            },
            Unmetered::Compressed,
        ),
        (
            "br stream",
            Exchange {
                content_encoding: Some("br"),
                ..Exchange::sse(
                    MESSAGES_PATH,
                    "bot",
                    ANTHROPIC_STREAM_REQUEST,
                    vec![ANTHROPIC_STREAM],
                )
            },
            Unmetered::Compressed,
        ),
        (
            "body over max_response_body_bytes",
            Exchange {
                chunks: vec![too_large_head, too_large_tail],
                ..Exchange::openai("bot", b"")
            },
            Unmetered::TooLarge,
        ),
        (
            "malformed JSON",
            Exchange::openai("bot", br#"{"usage":"#),
            Unmetered::Malformed,
        ),
        (
            "malformed Anthropic JSON",
            Exchange::anthropic("bot", b"not json"),
            Unmetered::Malformed,
        ),
        (
            "JSON without usage",
            Exchange::openai("bot", br#"{"id":"x","model":"gpt-4o","choices":[]}"#),
            Unmetered::NoUsage,
        ),
        (
            "stream that ignored include_usage",
            Exchange::sse(
                CHAT_PATH,
                "bot",
                OPENAI_STREAM_REQUEST_WITH_USAGE,
                vec![OPENAI_STREAM_NO_USAGE],
            ),
            Unmetered::NoUsage,
        ),
        (
            "Anthropic stream ended before message_delta",
            Exchange::sse(
                MESSAGES_PATH,
                "bot",
                ANTHROPIC_STREAM_REQUEST,
                vec![anthropic_before_delta],
            ),
            Unmetered::Incomplete,
        ),
        (
            "JSON body that never ended",
            Exchange {
                ended: false,
                ..Exchange::openai("bot", OPENAI_CHAT)
            },
            Unmetered::Incomplete,
        ),
        (
            "no response at all",
            Exchange {
                respond: false,
                ..Exchange::openai("bot", OPENAI_CHAT)
            },
            Unmetered::Incomplete,
        ),
    ];
    for (name, exchange, reason) in cases {
        let (host, worker) = setup(config);
        let ran = run_call(&host, &worker, &exchange);
        let attribution = ran.call.attribution.as_ref().expect(name);
        assert_eq!(attribution.outcome, Outcome::Unmetered(reason), "{name}");
        assert_eq!(attribution.budget, "bot", "{name}");
        let counter = format!("agent_budget_unmetered.reason.{}", reason.reason());
        assert_eq!(metric(&host, &worker, &counter), 1, "{name}");
        assert_eq!(
            host.metric_names()
                .iter()
                .filter(|n| n.starts_with("agent_budget_unmetered.reason."))
                .count(),
            1,
            "{name}: one reason only"
        );
        assert_eq!(
            metric(&host, &worker, "agent_budget_unmetered_requests.agent.bot"),
            1,
            "{name}"
        );
        assert_eq!(
            metric(&host, &worker, "agent_budget_cost_micro_usd.agent.bot"),
            0,
            "{name}"
        );
        assert_eq!(
            metric(&host, &worker, "agent_budget_requests.agent.bot"),
            1,
            "{name}"
        );
        assert_eq!(spent(&host, &worker, "bot"), (0, 0), "{name}");
        // Whatever reached the client reached it unchanged.
        let sent: Vec<u8> = exchange.chunks.concat();
        if exchange.respond {
            assert_eq!(ran.client, sent, "{name}");
        }
    }
}

#[test]
fn max_response_body_bytes_is_inclusive() {
    let config = r#"{"agents":{"bot":{"daily_usd":10}},"max_response_body_bytes":1024}"#;
    for (size, metered) in [(1023, true), (1024, true), (1025, false)] {
        let mut body = OPENAI_CHAT.to_vec();
        body.resize(size, b'\n');
        for (name, chunks) in [
            ("whole", vec![&body[..]]),
            ("halves", body.chunks(size / 2 + 1).collect()),
            ("bytes", body.chunks(1).collect()),
        ] {
            let (host, worker) = setup(config);
            let ran = run_call(
                &host,
                &worker,
                &Exchange {
                    chunks,
                    ..Exchange::openai("bot", b"")
                },
            );
            let outcome = &ran.call.attribution.as_ref().unwrap().outcome;
            if metered {
                assert_eq!(charged(&ran.call).0, CHAT_COST, "{size} {name}");
            } else {
                assert_eq!(
                    *outcome,
                    Outcome::Unmetered(Unmetered::TooLarge),
                    "{size} {name}"
                );
            }
            assert_eq!(ran.client, body, "{size} {name}");
        }
    }
}

#[test]
fn identity_encoding_is_metered() {
    for encoding in ["identity", "IDENTITY", " ", ""] {
        let (host, worker) = setup(CONFIG);
        let exchange = Exchange {
            content_encoding: Some(encoding),
            ..Exchange::openai("bot", OPENAI_CHAT)
        };
        let ran = run_call(&host, &worker, &exchange);
        assert_eq!(charged(&ran.call).0, CHAT_COST, "{encoding:?}");
    }
}

// ---------------------------------------------------------------------------------------
// 8. Pricing of unknown models
// ---------------------------------------------------------------------------------------

/// (config, requested model, served model, cost µ$, priced as, unpriced calls, logged model)
type PriceCase = (
    &'static str,
    Option<&'static str>,
    Option<&'static str>,
    u64,
    Option<&'static str>,
    i64,
    &'static str,
);

#[test]
fn unknown_models_pay_the_fallback_and_the_served_model_wins() {
    let custom = r#"{"agents":{"bot":{"daily_usd":10}},
        "fallback_price":{"input":1,"output":2},
        "pricing":{"my-tuned":{"input":0.5,"output":1}}}"#;
    // Every response: 1000 prompt tokens, 500 completion tokens.
    #[rustfmt::skip]
    let cases: [PriceCase; 8] = [
        // gpt-4o-mini: 1000 × $0.15/M + 500 × $0.60/M = 150 + 300.
        (custom, Some("gpt-4o"),   Some("gpt-4o-mini-2024-07-18"), 450,    Some("gpt-4o-mini"), 0, "gpt-4o-mini-2024-07-18"),
        // gpt-4o: 1000 × $2.50/M + 500 × $10/M.
        (custom, Some("gpt-4o"),   None,                           7500,   Some("gpt-4o"),      0, "gpt-4o"),
        // Configured fallback, $1/M in and $2/M out: 1000 + 1000.
        (custom, Some("my-llama"), Some("my-llama-70b"),           2000,   None,                1, "my-llama-70b"),
        // The served model wins even when it is the unknown one.
        (custom, Some("gpt-4o"),   Some("my-llama"),               2000,   None,                1, "my-llama"),
        (custom, None,             None,                           2000,   None,                1, "-"),
        // Configured family price: 1000 × $0.50/M + 500 × $1/M.
        (custom, Some("my-tuned"), Some("my-tuned-7b"),            1000,   Some("my-tuned"),    0, "my-tuned-7b"),
        // Built-in fallback, opus-class $15/M in and $75/M out: 15 000 + 37 500.
        (CONFIG, Some("my-llama"), None,                           52_500, None,                1, "my-llama"),
        (CONFIG, Some("my-llama"), Some("gpt-4o"),                 7500,   Some("gpt-4o"),      0, "gpt-4o"),
    ];
    for (config, requested, served, cost, priced_as, unpriced, logged) in cases {
        let (host, worker) = setup(config);
        let request = match requested {
            Some(model) => format!(r#"{{"model":"{model}","messages":[]}}"#),
            None => r#"{"messages":[]}"#.to_string(),
        };
        let body = match served {
            Some(model) => format!(
                r#"{{"model":"{model}","usage":{{"prompt_tokens":1000,"completion_tokens":500}}}}"#
            ),
            None => r#"{"usage":{"prompt_tokens":1000,"completion_tokens":500}}"#.to_string(),
        };
        let case = format!("{requested:?} served {served:?}");
        let ran = run_call(
            &host,
            &worker,
            &Exchange::json(CHAT_PATH, "bot", request.as_bytes(), body.as_bytes()),
        );
        assert_eq!(
            charged(&ran.call),
            (cost, priced_as.map(str::to_string)),
            "{case}"
        );
        assert_eq!(
            metric(&host, &worker, "agent_budget_unpriced_calls"),
            unpriced,
            "{case}"
        );
        assert_eq!(
            ran.call.attribution.as_ref().unwrap().model,
            logged,
            "{case}"
        );
        assert_eq!(spent(&host, &worker, "bot").0, cost, "{case}");
    }
}

#[test]
fn unpriced_calls_count_every_call() {
    let (host, worker) = setup(CONFIG);
    let body = br#"{"model":"mystery","usage":{"prompt_tokens":1,"completion_tokens":1}}"#;
    for _ in 0..3 {
        run_call(&host, &worker, &Exchange::openai("bot", body));
    }
    assert_eq!(metric(&host, &worker, "agent_budget_unpriced_calls"), 3);
    // 15 + 75 = 90 µ$ per call at the built-in fallback.
    assert_eq!(spent(&host, &worker, "bot").0, 270);
}

// ---------------------------------------------------------------------------------------
// 9. Local replies
// ---------------------------------------------------------------------------------------

#[test]
fn response_callbacks_after_a_local_reply_do_nothing() {
    let (host, worker) = setup(r#"{"agents":{"bot":{"daily_usd":0.000001}}}"#);
    seed(&host, &worker, "bot", 1, 1);
    // (agent, why the filter replied)
    for (agent, status) in [(Some("bot"), 429), (Some("stranger"), 403), (None, 400)] {
        let mut call = Call::new(Rc::clone(&worker));
        let head = call.on_request_headers(
            &host,
            RequestHead {
                path: CHAT_PATH.to_string(),
                agent: agent.map(str::to_string),
                has_body: true,
                ..RequestHead::default()
            },
        );
        assert_eq!(reply_of(&head).status, status);
        // Envoy runs the encoder callbacks on the filter's own reply.
        for content_type in ["application/json", "text/event-stream"] {
            let edits = call.on_response_headers(&ResponseHead {
                status,
                content_type: Some(content_type.to_string()),
                content_encoding: None,
                end_of_stream: false,
            });
            assert_eq!(edits, HeaderEdits::default(), "{agent:?}");
        }
        for (chunk, end) in [(&OPENAI_CHAT[..10], false), (&OPENAI_CHAT[10..], true)] {
            assert_eq!(call.on_response_body(&host, chunk, end), ChunkOutcome::Pass);
        }
        call.on_response_complete(&host);
        call.on_done(&host, EndCause::Normal);
        // Only a budget stop is attributed (to the access log); nothing is charged.
        let want = (status == 429).then_some(Outcome::Stopped { status: 429 });
        assert_eq!(call.attribution.map(|a| a.outcome), want, "{agent:?}");
    }
    assert_eq!(spent(&host, &worker, "bot"), (1, 1));
    assert!(!host
        .metric_names()
        .iter()
        .any(|n| n.starts_with("agent_budget_unmetered")
            || n.starts_with("agent_budget_cost_micro_usd")));
}

#[test]
fn paths_the_filter_does_not_meter_only_get_budget_headers() {
    let (host, worker) = setup(CONFIG);
    let exchange = Exchange::json("/v1/models", "bot", b"", br#"{"data":[]}"#);
    let ran = run_call(&host, &worker, &exchange);
    assert_eq!(
        ran.head,
        HeadOutcome {
            action: HeadAction::Continue,
            edits: HeaderEdits {
                set: Vec::new(),
                remove: Vec::new(),
            },
        }
    );
    assert_eq!(
        header(&ran.edits.set, "x-agent-budget-period"),
        Some("daily")
    );
    assert_eq!(ran.outcomes, vec![ChunkOutcome::Pass]);
    // Attributed and forwarded, but not metered: its record says why.
    let attribution = ran.call.attribution.as_ref().unwrap();
    assert_eq!(
        (attribution.api, attribution.action, &attribution.outcome),
        ("-", CallOutcome::Unmetered, &Outcome::Passed)
    );
    assert_eq!(metric(&host, &worker, "agent_budget_requests.agent.bot"), 1);
    assert_eq!(
        metric(
            &host,
            &worker,
            "agent_budget_calls.agent.bot.outcome.unmetered"
        ),
        1
    );
    assert_eq!(spent(&host, &worker, "bot"), (0, 0));
}

#[test]
fn metered_call_without_request_body_is_forwarded_at_once() {
    let (host, worker) = setup(CONFIG);
    let exchange = Exchange {
        request: b"",
        ..Exchange::openai("bot", OPENAI_CHAT)
    };
    let ran = run_call(&host, &worker, &exchange);
    assert_eq!(
        ran.head,
        HeadOutcome {
            action: HeadAction::Continue,
            edits: HeaderEdits {
                set: pairs(&[("accept-encoding", "identity")]),
                remove: Vec::new(),
            },
        }
    );
    // No requested model: the served one prices the call.
    assert_eq!(charged(&ran.call), (CHAT_COST, Some("gpt-4o".to_string())));
}

// ---------------------------------------------------------------------------------------
// 10. Ledger trouble
// ---------------------------------------------------------------------------------------

#[test]
fn contended_charges_are_deferred_and_retried_on_tick() {
    // (forced CAS failures, periods deferred, daily/monthly spend before the retry)
    // (forced CAS failures, periods deferred, contended updates, daily/monthly spend before
    // the retry). The agent's day and month move in one update.
    let cases = [
        // One short of the settlement's attempts: it lands.
        (MAX_CAS_ATTEMPTS - 1, 0, 0, (CHAT_COST, CHAT_COST)),
        // Enough to defeat it: both periods wait for the tick.
        (MAX_CAS_ATTEMPTS, 2, 1, (0, 0)),
    ];
    for (failures, deferred, contended, before) in cases {
        let (host, worker) = setup(CONFIG);
        host.fail_next_cas_writes(failures);
        let ran = run_call(&host, &worker, &Exchange::openai("bot", OPENAI_CHAT));
        assert_eq!(charged(&ran.call).0, CHAT_COST, "{failures}: still charged");
        assert_eq!(worker.pending_len(), deferred, "{failures}");
        assert_eq!(
            metric(
                &host,
                &worker,
                "agent_budget_ledger_errors.reason.contended"
            ),
            contended,
            "{failures}"
        );
        assert_eq!(spent(&host, &worker, "bot"), before, "{failures}");

        host.fail_next_cas_writes(0);
        worker.tick(&host);
        assert_eq!(worker.pending_len(), 0, "{failures}");
        assert_eq!(
            spent(&host, &worker, "bot"),
            (CHAT_COST, CHAT_COST),
            "{failures}"
        );
        assert_eq!(
            metric(
                &host,
                &worker,
                "agent_budget_spend_micro_usd.agent.bot.period.daily"
            ),
            5008
        );
    }
}

#[test]
fn corrupt_ledger_fails_open() {
    let (host, worker) = setup(CONFIG);
    let [day, _] = worker.current_periods(NOW);
    let key = Ledger::shard_key(crate::ledger::shard_of(&account_of("bot").name()));
    host.shared_set(&key, b"not a ledger blob", 0).unwrap();
    let _ = day;
    let ran = run_call(&host, &worker, &Exchange::openai("bot", OPENAI_CHAT));
    assert_eq!(ran.head.action, HeadAction::WaitForBody, "allowed");
    // No period could be read: nothing to describe in budget headers.
    assert_eq!(header(&ran.edits.set, "x-agent-budget-period"), None);
    assert_eq!(charged(&ran.call).0, CHAT_COST);
    assert!(metric(&host, &worker, "agent_budget_ledger_errors.reason.corrupt") >= 2);
    assert_eq!(
        worker.pending_len(),
        2,
        "the day's and the month's charges wait for a readable ledger"
    );
    host.shared_set(&key, b"L2", 0).unwrap();
    worker.tick(&host);
    assert_eq!(worker.pending_len(), 0);
    assert_eq!(spent(&host, &worker, "bot"), (CHAT_COST, CHAT_COST));
}

#[test]
fn charging_a_shard_no_tick_created_is_reported() {
    // A worker that never ticked: the ledger's shards do not exist yet.
    let host = FakeHost::new().at_unix_secs(NOW);
    let config =
        Config::from_bytes(br#"{"agents":{"bot":{"daily_usd":1}},"reservations":false}"#).unwrap();
    let worker = Rc::new(Worker::new(config));
    let ran = run_call(&host, &worker, &Exchange::openai("bot", OPENAI_CHAT));
    assert_eq!(charged(&ran.call).0, CHAT_COST);
    assert_eq!(
        metric(
            &host,
            &worker,
            "agent_budget_ledger_errors.reason.late_create"
        ),
        1
    );
    assert_eq!(spent(&host, &worker, "bot").0, CHAT_COST);
}

// ---------------------------------------------------------------------------------------
// Model resolution from the path: Azure deployments and Gemini
// ---------------------------------------------------------------------------------------

#[test]
fn azure_deployment_and_path_models_price_calls_without_a_model() {
    let (host, worker) =
        setup(r#"{"agents":{"bot":{"daily_usd":100}},"azure_deployments":{"prod-4o":"gpt-4o"}}"#);
    // Neither the request nor the response names a model.
    let body = br#"{"usage":{"prompt_tokens":1000,"completion_tokens":0}}"#;
    let cases: [(&str, &[u8], u64); 4] = [
        // Configured deployment -> gpt-4o ($2.50/M).
        (
            "/openai/deployments/prod-4o/chat/completions?api-version=2024-10-21",
            b"{}",
            2_500,
        ),
        // The configured mapping wins over a model in the body.
        (
            "/openai/deployments/prod-4o/chat/completions",
            br#"{"model":"gpt-4o-mini"}"#,
            2_500,
        ),
        // Unmapped deployment named like a model -> that model (gpt-4o-mini, $0.15/M).
        (
            "/openai/deployments/gpt-4o-mini/chat/completions",
            b"{}",
            150,
        ),
        // Unknown deployment name -> fallback price ($15/M).
        (
            "/openai/deployments/mystery/chat/completions",
            b"{}",
            15_000,
        ),
    ];
    for (path, request, want) in cases {
        let ran = run_call(&host, &worker, &Exchange::json(path, "bot", request, body));
        assert_eq!(charged(&ran.call).0, want, "{path}");
        let provider = ran.call.attribution.as_ref().and_then(|a| a.provider);
        assert_eq!(provider, Some("azure.ai.openai"), "{path}");
    }
    let ran = run_call(&host, &worker, &Exchange::openai("bot", OPENAI_CHAT));
    let provider = ran.call.attribution.as_ref().and_then(|a| a.provider);
    assert_eq!(provider, Some("openai"));
}

#[test]
fn a_cut_stream_is_charged_an_estimate_whoever_cut_it() {
    let (host, worker) = setup(CONFIG);
    let request =
        br#"{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"hello there"}]}"#;
    let chunk: &[u8] =
        b"data: {\"model\":\"gpt-4o\",\"choices\":[{\"delta\":{\"content\":\"abcdefgh\"}}]}\n\n";
    for cause in [EndCause::ClientAborted, EndCause::UpstreamAborted] {
        let exchange = Exchange {
            ended: false,
            cause,
            ..Exchange::sse(CHAT_PATH, "bot", request, vec![chunk, chunk])
        };
        let ran = run_call(&host, &worker, &exchange);
        // Input: the request bytes / 4; output: 16 bytes of text / 4.
        let input = (request.len() as u64).div_ceil(4);
        match ran.call.attribution.unwrap().outcome {
            Outcome::Charged {
                metered, estimated, ..
            } => {
                assert!(estimated, "{cause:?}");
                assert_eq!((metered.usage.input, metered.usage.output), (input, 4));
            }
            other => panic!("{cause:?}: {other:?}"),
        }
    }
    assert_eq!(
        metric(&host, &worker, "agent_budget_estimated_requests.agent.bot"),
        2
    );
    // The provider's cut still counts as a response that did not complete.
    assert_eq!(
        metric(&host, &worker, "agent_budget_unmetered.reason.incomplete"),
        1
    );
    assert_eq!(
        metric(&host, &worker, "agent_budget_unmetered_requests.agent.bot"),
        0
    );
}

#[test]
fn a_stream_the_provider_cut_is_charged_what_it_had_reported() {
    // Anthropic reports the input in message_start: that is charged exactly, plus the text
    // streamed so far (12 bytes: 3 tokens) as output.
    let (host, worker) = setup(CONFIG);
    let start: &[u8] = b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"claude-sonnet-4-5\",\"usage\":{\"input_tokens\":1000,\"output_tokens\":1}}}\n\n";
    let delta: &[u8] = b"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"type\":\"text_delta\",\"text\":\"hello world!\"}}\n\n";
    let exchange = Exchange {
        ended: false,
        cause: EndCause::UpstreamAborted,
        ..Exchange::sse(
            MESSAGES_PATH,
            "bot",
            ANTHROPIC_STREAM_REQUEST,
            vec![start, delta],
        )
    };
    let ran = run_call(&host, &worker, &exchange);
    match ran.call.attribution.unwrap().outcome {
        Outcome::Charged {
            metered, estimated, ..
        } => {
            assert!(estimated);
            assert_eq!((metered.usage.input, metered.usage.output), (1000, 3));
        }
        other => panic!("{other:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// Reservations: a call whose worst case does not fit is refused before it costs anything
// ---------------------------------------------------------------------------------------

#[test]
fn reservations_refuse_a_call_whose_worst_case_does_not_fit() {
    // $0.01 a day; gpt-4o output is $10/M, so 1000 max output tokens alone is $0.01.
    let (host, worker) = setup(r#"{"agents":{"bot":{"daily_usd":0.01}},"reservations":true}"#);
    let fits = br#"{"model":"gpt-4o","max_tokens":100,"messages":[]}"#;
    let too_big = br#"{"model":"gpt-4o","max_tokens":1000,"messages":[]}"#;
    let ran = run_call(
        &host,
        &worker,
        &Exchange::json(CHAT_PATH, "bot", too_big, OPENAI_CHAT),
    );
    let reply = ran.body_reply.expect("refused at the body step");
    assert_eq!(reply.status, 429);
    let message = json(&reply.body)["error"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(message.contains("may cost up to $0.010"), "{message}");
    assert!(message.contains("1000 output tokens"), "{message}");
    assert_eq!(
        ran.call.attribution.map(|a| a.outcome),
        Some(Outcome::Stopped { status: 429 })
    );
    assert_eq!(
        spent(&host, &worker, "bot"),
        (0, 0),
        "nothing charged, nothing held"
    );

    // A call that fits is reserved, then settled to its real cost; nothing stays reserved.
    let ran = run_call(
        &host,
        &worker,
        &Exchange::json(CHAT_PATH, "bot", fits, OPENAI_CHAT),
    );
    assert!(ran.body_reply.is_none());
    assert_eq!(charged(&ran.call).0, CHAT_COST);
    let [day, _] = worker.current_periods(NOW);
    let account = Ledger::new(&host).read(&day, &account_of("bot")).unwrap();
    assert_eq!((account.spent, account.reserved), (CHAT_COST, 0));
}

#[test]
fn reservations_are_held_while_calls_are_in_flight() {
    let (host, worker) = setup(r#"{"agents":{"bot":{"daily_usd":0.01}},"reservations":true}"#);
    let request: &[u8] = br#"{"model":"gpt-4o","max_tokens":400,"messages":[]}"#;
    // Two calls in flight at once: each holds ~$0.004; a third does not fit.
    let mut in_flight = Vec::new();
    for _ in 0..2 {
        let mut call = Call::new(Rc::clone(&worker));
        let head = call.on_request_headers(
            &host,
            RequestHead {
                path: CHAT_PATH.into(),
                agent: Some("bot".into()),
                has_body: true,
                ..RequestHead::default()
            },
        );
        assert_eq!(head.action, HeadAction::WaitForBody);
        assert_eq!(call.on_request_body(&host, request).reply, None);
        in_flight.push(call);
    }
    let third = run_call(
        &host,
        &worker,
        &Exchange::json(CHAT_PATH, "bot", request, OPENAI_CHAT),
    );
    assert_eq!(third.body_reply.map(|r| r.status), Some(429));
    // The two finish with an upstream error: their reservations return, nothing is spent.
    for mut call in in_flight {
        call.on_response_headers(&ResponseHead {
            status: 500,
            ..ResponseHead::default()
        });
        call.on_response_body(&host, b"{}", true);
    }
    let [day, _] = worker.current_periods(NOW);
    let account = Ledger::new(&host).read(&day, &account_of("bot")).unwrap();
    assert_eq!((account.spent, account.reserved), (0, 0));
    let again = run_call(
        &host,
        &worker,
        &Exchange::json(CHAT_PATH, "bot", request, OPENAI_CHAT),
    );
    assert!(again.body_reply.is_none());
}

#[test]
fn degrade_when_the_worst_case_does_not_fit_charges_the_cheaper_call() {
    let (host, worker) = setup(
        r#"{"agents":{"bot":{"daily_usd":0.02,"action":"degrade","degrade_to":{"gpt-4o*":"gpt-4o-mini"}}},"reservations":true}"#,
    );
    seed(&host, &worker, "bot", 15_000, 15_000);
    // gpt-4o with 1000 max output tokens may cost $0.01: more than the $0.005 left.
    let request = br#"{"model":"gpt-4o","max_tokens":1000,"messages":[]}"#;
    let response =
        br#"{"model":"gpt-4o-mini","usage":{"prompt_tokens":1000,"completion_tokens":100}}"#;
    let ran = run_call(
        &host,
        &worker,
        &Exchange::json(CHAT_PATH, "bot", request, response),
    );
    assert!(ran.body_reply.is_none(), "degraded, not refused");
    let sent = json(ran.rewritten.as_deref().expect("model rewritten"));
    assert_eq!(sent["model"], "gpt-4o-mini");
    assert_eq!(
        header(&ran.edits.set, "x-agent-budget-degraded-to"),
        Some("gpt-4o-mini")
    );
    // 1000 x $0.15/M + 100 x $0.60/M = 150 + 60 micro-USD, booked in the ledger.
    assert_eq!(charged(&ran.call).0, 210);
    assert_eq!(spent(&host, &worker, "bot"), (15_210, 15_210));
    let [day, _] = worker.current_periods(NOW);
    assert_eq!(
        Ledger::new(&host)
            .read(&day, &account_of("bot"))
            .unwrap()
            .reserved,
        0
    );
    assert_eq!(
        metric(&host, &worker, "agent_budget_degraded_requests.agent.bot"),
        1
    );
}

// ---------------------------------------------------------------------------------------
// Host calls the filter asks for
// ---------------------------------------------------------------------------------------

#[test]
fn accept_encoding_is_touched_only_when_the_client_sent_one() {
    let (host, worker) = setup(CONFIG);
    for accept_encoding in [false, true] {
        let mut call = Call::new(Rc::clone(&worker));
        let head = call.on_request_headers(
            &host,
            RequestHead {
                path: "/v1/messages".to_string(),
                agent: Some("bot".to_string()),
                accept_encoding,
                has_body: true,
                ..RequestHead::default()
            },
        );
        let touched = head
            .edits
            .set
            .iter()
            .any(|(name, value)| name == "accept-encoding" && value == "identity");
        assert_eq!(touched, accept_encoding);
    }
}

#[test]
fn budget_headers_follow_the_option() {
    // (option, agent's daily budget, its action, budget headers expected)
    let cases = [
        ("all", 10.0, "stop", true),
        ("on_limit", 10.0, "stop", false),
        ("none", 10.0, "stop", false),
        // Past the budget, `alert` lets the call through: on_limit shows why.
        ("on_limit", 0.001, "alert", true),
        ("none", 0.001, "alert", false),
    ];
    for (option, daily, action, expected) in cases {
        let config = format!(
            r#"{{"agents":{{"bot":{{"daily_usd":{daily},"action":"{action}"}}}},"budget_headers":"{option}"}}"#
        );
        let (host, worker) = setup(&config);
        seed(&host, &worker, "bot", 1_000, 1_000);
        let ran = run_call(&host, &worker, &Exchange::openai("bot", OPENAI_CHAT));
        assert_eq!(
            header(&ran.edits.set, "x-agent-budget-remaining-usd").is_some(),
            expected,
            "{option} {action}"
        );
    }
    // A refused call carries them unless they are off; retry-after always.
    for (option, expected) in [("on_limit", true), ("none", false)] {
        let config =
            format!(r#"{{"agents":{{"bot":{{"daily_usd":0.001}}}},"budget_headers":"{option}"}}"#);
        let (host, worker) = setup(&config);
        seed(&host, &worker, "bot", 1_000, 1_000);
        let ran = run_call(&host, &worker, &Exchange::openai("bot", OPENAI_CHAT));
        let reply = reply_of(&ran.head);
        assert_eq!(reply.status, 429);
        assert_eq!(
            header(&reply.headers, "x-agent-budget-remaining-usd").is_some(),
            expected,
            "{option}"
        );
        assert!(header(&reply.headers, "retry-after").is_some());
    }
}

#[test]
fn a_call_reads_the_clock_once() {
    struct Clocked {
        inner: FakeHost,
        reads: std::cell::Cell<u32>,
    }
    impl Host for Clocked {
        fn now_unix_nanos(&self) -> u64 {
            self.reads.set(self.reads.get() + 1);
            self.inner.now_unix_nanos()
        }
        fn shared_get(
            &self,
            key: &str,
        ) -> Result<Option<crate::host::Versioned>, crate::host::HostError> {
            self.inner.shared_get(key)
        }
        fn shared_set(
            &self,
            key: &str,
            value: &[u8],
            cas: u32,
        ) -> Result<(), crate::host::HostError> {
            self.inner.shared_set(key, value, cas)
        }
        fn dispatch_http(
            &self,
            cluster: &str,
            headers: &[(&str, &str)],
            body: &[u8],
            timeout_ms: u32,
        ) -> Result<u32, crate::host::HostError> {
            self.inner.dispatch_http(cluster, headers, body, timeout_ms)
        }
        fn define_metric(
            &self,
            kind: crate::host::MetricKind,
            name: &str,
        ) -> Result<u32, crate::host::HostError> {
            self.inner.define_metric(kind, name)
        }
        fn increment_metric(&self, id: u32, delta: i64) -> Result<(), crate::host::HostError> {
            self.inner.increment_metric(id, delta)
        }
        fn record_metric(&self, id: u32, value: u64) -> Result<(), crate::host::HostError> {
            self.inner.record_metric(id, value)
        }
    }
    let (inner, worker) = setup(r#"{"agents":{"bot":{"daily_usd":10}},"reservations":true}"#);
    let host = Clocked {
        inner,
        reads: std::cell::Cell::new(0),
    };
    let mut call = Call::new(Rc::clone(&worker));
    let head = call.on_request_headers(
        &host,
        RequestHead {
            path: "/v1/chat/completions".to_string(),
            agent: Some("bot".to_string()),
            has_body: true,
            ..RequestHead::default()
        },
    );
    assert_eq!(head.action, HeadAction::WaitForBody);
    call.on_request_body(&host, br#"{"model":"gpt-4o","messages":[]}"#);
    call.on_response_headers(&ResponseHead {
        status: 200,
        content_type: Some("application/json".to_string()),
        ..ResponseHead::default()
    });
    call.on_response_body(&host, OPENAI_CHAT, true);
    assert_eq!(charged(&call).0, CHAT_COST);
    assert_eq!(host.reads.get(), 1);
}

// ---------------------------------------------------------------------------------------
// The limit alert goes out when the limit first takes effect
// ---------------------------------------------------------------------------------------

#[test]
fn the_limit_alert_goes_out_when_a_call_first_no_longer_fits() {
    // (config, seeded daily spend, request, alert expected, refused)
    let stop = r#"{"agents":{"bot":{"daily_usd":0.01}},"reservations":true}"#;
    let degrade = r#"{"agents":{"bot":{"daily_usd":0.02,"action":"degrade","degrade_to":{"gpt-4o*":"gpt-4o-mini"}}},"reservations":true}"#;
    let fits_later: &[u8] = br#"{"model":"gpt-4o","max_tokens":400,"messages":[]}"#;
    let never_fits: &[u8] = br#"{"model":"gpt-4o","max_tokens":5000,"messages":[]}"#;
    let cases = [
        // 70 % spent, a $0.004 worst case: refused before the budget is reached.
        (stop, 7_000, fits_later, "limit_stop", true),
        // Nothing spent, but the call could cost more than the whole budget.
        (stop, 0, never_fits, "limit_stop", true),
        // Degrading starts because the worst case does not fit the $0.005 left.
        (
            degrade,
            15_000,
            br#"{"model":"gpt-4o","max_tokens":1000,"messages":[]}"#.as_slice(),
            "limit_degrade",
            false,
        ),
    ];
    for (config, seeded, request, kind, refused) in cases {
        let (host, worker) = setup(config);
        seed(&host, &worker, "bot", seeded, seeded);
        let name = format!("agent_budget_alerts.agent.bot.reason.{kind}");
        for _ in 0..2 {
            let ran = run_call(
                &host,
                &worker,
                &Exchange::json(CHAT_PATH, "bot", request, OPENAI_CHAT),
            );
            assert_eq!(ran.body_reply.is_some(), refused, "{kind} {seeded}");
        }
        // Once per period, however many calls it turns away.
        assert_eq!(metric(&host, &worker, &name), 1, "{kind} {seeded}");
    }
}

#[test]
fn a_call_larger_than_the_whole_budget_is_told_it_can_never_fit() {
    let (host, worker) = setup(r#"{"agents":{"bot":{"daily_usd":0.01}},"reservations":true}"#);
    let request = br#"{"model":"gpt-4o","max_tokens":5000,"messages":[]}"#;
    let ran = run_call(
        &host,
        &worker,
        &Exchange::json(CHAT_PATH, "bot", request, OPENAI_CHAT),
    );
    let reply = ran.body_reply.expect("refused");
    let message = json(&reply.body)["error"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        message.contains("no call of this size can ever fit"),
        "{message}"
    );
    assert!(message.contains("max_tokens"), "{message}");
}

// ---------------------------------------------------------------------------------------
// Held request headers (hold_request_headers)
// ---------------------------------------------------------------------------------------

#[test]
fn held_headers_keep_content_length_and_declare_a_rewritten_body() {
    const HELD: &str = r#"{"hold_request_headers":true,"agents":{"bot":{"daily_usd":10}}}"#;
    let cases: [(&str, &[u8], bool); 3] = [
        ("non-streaming: untouched", OPENAI_REQUEST, false),
        (
            "stream without usage: stream_options added",
            OPENAI_STREAM_REQUEST,
            true,
        ),
        ("anthropic", ANTHROPIC_REQUEST, false),
    ];
    for (case, request, rewritten) in cases {
        let (host, worker) = setup(HELD);
        let path = if request == ANTHROPIC_REQUEST {
            MESSAGES_PATH
        } else {
            CHAT_PATH
        };
        let mut call = Call::new(Rc::clone(&worker));
        let head = call.on_request_headers(
            &host,
            RequestHead {
                path: path.to_string(),
                agent: Some("bot".to_string()),
                content_length: Some(request.len() as u64),
                has_body: true,
                ..RequestHead::default()
            },
        );
        assert_eq!(head.action, HeadAction::HoldForBody, "{case}");
        assert!(head.edits.remove.is_empty(), "{case}: {:?}", head.edits);
        let body = call.on_request_body(&host, request);
        assert_eq!(body.reply, None, "{case}");
        match (&body.body, rewritten) {
            (Some(sent), true) => assert_eq!(
                body.headers.set,
                pairs(&[("content-length", &sent.len().to_string())]),
                "{case}"
            ),
            (None, false) => assert_eq!(body.headers, HeaderEdits::default(), "{case}"),
            (sent, _) => panic!("{case}: unexpected rewrite {sent:?}"),
        }
    }
}

#[test]
fn every_attributed_call_has_exactly_one_outcome() {
    let (host, worker) = setup(
        r#"{"agents":{
            "ok":{"daily_usd":10},
            "stopper":{"daily_usd":0.000001},
            "alerting":{"daily_usd":0.000001,"action":"alert"},
            "cheap":{"daily_usd":0.000001,"action":"degrade","degrade_usd":10,
                     "degrade_to":{"gpt-4o*":"gpt-4o-mini"}}}}"#,
    );
    let failed = Exchange {
        status: 500,
        ..Exchange::openai("ok", br#"{"error":{}}"#)
    };
    // (call, its action): each agent's first call uses up its tiny budget.
    let cases = [
        (Exchange::openai("ok", OPENAI_CHAT), CallOutcome::Allowed),
        (failed, CallOutcome::Unmetered),
        (
            Exchange::openai("stopper", OPENAI_CHAT),
            CallOutcome::Allowed,
        ),
        (
            Exchange::openai("stopper", OPENAI_CHAT),
            CallOutcome::Stopped,
        ),
        (
            Exchange::openai("alerting", OPENAI_CHAT),
            CallOutcome::Overage,
        ),
        (
            Exchange::openai("alerting", OPENAI_CHAT),
            CallOutcome::Overage,
        ),
        (Exchange::openai("cheap", OPENAI_CHAT), CallOutcome::Allowed),
        (
            Exchange::openai("cheap", OPENAI_CHAT),
            CallOutcome::Degraded,
        ),
    ];
    for (index, (exchange, want)) in cases.iter().enumerate() {
        let ran = run_call(&host, &worker, exchange);
        let attribution = ran.call.attribution.as_ref().expect("attributed");
        assert_eq!(attribution.action, *want, "call {index}");
    }
    let counts = [
        ("ok", "allowed", 1),
        ("ok", "unmetered", 1),
        ("stopper", "allowed", 1),
        ("stopper", "stopped", 1),
        ("alerting", "overage", 2),
        ("cheap", "allowed", 1),
        ("cheap", "degraded", 1),
    ];
    for (agent, outcome, want) in counts {
        let name = format!("agent_budget_calls.agent.{agent}.outcome.{outcome}");
        assert_eq!(metric(&host, &worker, &name), want, "{name}");
    }
    let calls: i64 = host
        .metric_names()
        .iter()
        .filter(|n| n.starts_with("agent_budget_calls."))
        .map(|n| host.metric(n).unwrap_or(0))
        .sum();
    assert_eq!(calls, cases.len() as i64, "one outcome per call");
    // The served model (the response's gpt-4o-2024-08-06) counts under its family.
    let per_model = [
        ("cost_micro_usd", CHAT_COST as i64),
        ("input_tokens", 507 + 512),
        ("output_tokens", 310),
    ];
    for (stem, want) in per_model {
        let name = format!("agent_budget_model_{stem}.agent.ok.model.gpt-4o");
        assert_eq!(metric(&host, &worker, &name), want, "{name}");
    }
}

#[test]
fn a_charged_call_reaches_the_spend_history_on_the_tick() {
    let (host, worker) = setup(CONFIG);
    let key = crate::history::key(&worker.config.anomaly, "bot");
    let history = |host: &FakeHost| crate::history::load(host, &key).unwrap().unwrap().history;
    run_call(&host, &worker, &Exchange::openai("bot", OPENAI_CHAT));
    assert!(
        history(&host).buckets.is_empty(),
        "the call itself writes no history"
    );
    worker.tick(&host);
    let bucket = crate::history::bucket_of(&worker.config.anomaly, NOW);
    assert_eq!(
        history(&host).buckets,
        std::collections::BTreeMap::from([(bucket, CHAT_COST)])
    );
}

/// Shared data failing (the ledger unreadable and unwritable): a `stop` agent's call is
/// refused with a retryable 503 unless `ledger_unavailable: allow`; agents whose action lets
/// calls through go on. A forwarded call's charge is kept and lands once shared data works.
#[test]
fn an_unreadable_ledger_refuses_stop_agents_unless_allowed() {
    let cases = [
        // (config, refused)
        (CONFIG, true),
        (
            r#"{"agents":{"bot":{"daily_usd":10,"monthly_usd":100}},"ledger_unavailable":"refuse"}"#,
            true,
        ),
        (
            r#"{"agents":{"bot":{"daily_usd":10,"monthly_usd":100}},"ledger_unavailable":"allow"}"#,
            false,
        ),
        (
            r#"{"agents":{"bot":{"daily_usd":10,"monthly_usd":100,"action":"alert"}}}"#,
            false,
        ),
    ];
    for (config, refused) in cases {
        let (host, worker) = setup(config);
        host.fail_shared_data(Some(2));
        let ran = run_call(&host, &worker, &Exchange::openai("bot", OPENAI_CHAT));
        assert_eq!(
            matches!(ran.head.action, HeadAction::Reply(_)),
            refused,
            "{config}"
        );
        assert!(
            metric(&host, &worker, "agent_budget_ledger_errors.reason.host") >= 1,
            "{config}"
        );
        host.fail_shared_data(None);
        worker.tick(&host);
        if refused {
            let reply = reply_of(&ran.head);
            assert_eq!(reply.status, 503, "{config}");
            assert_eq!(header(&reply.headers, "x-should-retry"), Some("true"));
            assert_eq!(header(&reply.headers, "retry-after"), Some("1"));
            assert_eq!(json(&reply.body)["error"]["code"], "budget_unavailable");
            assert_eq!(metric(&host, &worker, "agent_budget_rejected.agent.bot"), 1);
            assert_eq!(spent(&host, &worker, "bot"), (0, 0), "{config}");
        } else {
            // Booked on the retry: nothing spent unmetered.
            assert_eq!(
                spent(&host, &worker, "bot"),
                (CHAT_COST, CHAT_COST),
                "{config}"
            );
        }
    }
}

#[test]
fn the_api_key_names_the_agent_and_the_agent_header_is_removed() {
    // sha256("sk-alpha")
    let (host, worker) = setup(
        r#"{"identity":{"source":"api_key","api_keys":{"2179e632e89277f18aa600491b68ad55121fd6caa045e047fdeb426088a5a5f1":"alpha"}},
            "agents":{"alpha":{"daily_usd":1},"beta":{"daily_usd":1}}}"#,
    );
    let bearer = |key: &str| crate::identity::Credentials {
        authorization: Some(format!("Bearer {key}")),
        ..Default::default()
    };
    // (credentials, agent header, refused with, agent header removed)
    let cases = [
        (bearer("sk-alpha"), Some("beta"), None, true),
        (bearer("sk-alpha"), None, None, false),
        (bearer("sk-beta"), Some("beta"), Some(401), false),
        (Default::default(), Some("alpha"), Some(401), false),
    ];
    for (credentials, agent, refused, removed) in cases {
        let mut call = Call::new(Rc::clone(&worker));
        let head = call.on_request_headers(
            &host,
            RequestHead {
                path: CHAT_PATH.to_string(),
                agent: agent.map(str::to_string),
                has_body: true,
                credentials,
                ..RequestHead::default()
            },
        );
        match refused {
            Some(status) => assert_eq!(reply_of(&head).status, status, "{agent:?}"),
            None => assert!(!matches!(head.action, HeadAction::Reply(_)), "{agent:?}"),
        }
        assert_eq!(
            head.edits.remove.contains(&"x-agent-id".to_string()),
            removed,
            "{agent:?}"
        );
    }
    // The header mode leaves the agent header alone.
    let (host, worker) = setup(r#"{"agents":{"beta":{"daily_usd":1}}}"#);
    let mut call = Call::new(Rc::clone(&worker));
    let head = call.on_request_headers(
        &host,
        RequestHead {
            path: CHAT_PATH.to_string(),
            agent: Some("beta".to_string()),
            has_body: true,
            credentials: bearer("sk-alpha"),
            ..RequestHead::default()
        },
    );
    assert!(!head.edits.remove.contains(&"x-agent-id".to_string()));
}

#[test]
fn a_verified_token_names_the_agent_and_the_headers_it_replaces_are_removed() {
    let (host, worker) = setup(
        r#"{"identity":{"source":"jwt","task_claim":"task"},
            "agents":{"alpha":{"daily_usd":1},"beta":{"daily_usd":1}}}"#,
    );
    let claims = |agent: Option<&str>, task: Option<&str>| crate::identity::TokenClaims {
        agent: agent.map(str::to_string),
        task: task.map(str::to_string),
        user: None,
    };
    // (claims, agent header, task header, refused with, headers removed, task charged)
    let cases = [
        (
            claims(Some("alpha"), Some("t1")),
            Some("beta"),
            Some("forged"),
            None,
            vec!["x-agent-id", "x-task-id"],
            Some("t1"),
        ),
        (
            claims(Some("alpha"), None),
            None,
            Some("forged"),
            None,
            vec!["x-task-id"],
            None,
        ),
        (claims(Some("alpha"), None), None, None, None, vec![], None),
        (
            claims(Some("ghost"), None),
            Some("alpha"),
            None,
            Some(403),
            vec![],
            None,
        ),
        (
            claims(None, None),
            Some("alpha"),
            None,
            Some(401),
            vec![],
            None,
        ),
        (
            claims(Some("no spaces"), None),
            Some("alpha"),
            None,
            Some(401),
            vec![],
            None,
        ),
    ];
    for (claims, agent, task, refused, removed, charged_task) in cases {
        let mut call = Call::new(Rc::clone(&worker));
        let head = call.on_request_headers(
            &host,
            RequestHead {
                path: CHAT_PATH.to_string(),
                agent: agent.map(str::to_string),
                task: task.map(str::to_string),
                // The user comes from its header: no user claim is configured.
                user: Some("u1".to_string()),
                has_body: true,
                claims,
                ..RequestHead::default()
            },
        );
        match refused {
            Some(status) => assert_eq!(reply_of(&head).status, status, "{agent:?}"),
            None => {
                assert!(!matches!(head.action, HeadAction::Reply(_)), "{agent:?}");
                call.on_request_body(&host, br#"{"model":"gpt-4o","max_tokens":10}"#);
                call.on_done(&host, EndCause::Normal);
                let record = call.attribution.as_ref().unwrap();
                assert_eq!(record.task.as_deref(), charged_task, "{agent:?}");
                assert_eq!(record.user.as_deref(), Some("u1"), "{agent:?}");
            }
        }
        let identity_headers: Vec<&str> = head
            .edits
            .remove
            .iter()
            .map(String::as_str)
            .filter(|name| name.starts_with("x-"))
            .collect();
        assert_eq!(identity_headers, removed, "{agent:?}");
    }
}

#[test]
fn framing_comes_from_the_first_bytes_and_the_label_only_breaks_ties() {
    use Framing::{Json, Stream};
    // (first bytes after leading whitespace, labelled a stream, framing)
    let cases: [(&[u8], bool, Option<Framing>); 14] = [
        (b"", false, None),
        (b"{\"id\":1}", true, Some(Json)),
        (b"[{\"candidates\":[]}", true, Some(Json)),
        (b"data: {}", false, Some(Stream)),
        (b"event: message_start", false, Some(Stream)),
        (b": keep-alive", false, Some(Stream)),
        (b"id:7", false, Some(Stream)),
        (b"retry: 10", false, Some(Stream)),
        // Could still become a field name: wait for more bytes.
        (b"d", false, None),
        (b"eve", true, None),
        (b"retr", false, None),
        // Neither: the label decides.
        (b"not json", false, Some(Json)),
        (b"not json", true, Some(Stream)),
        (b"dots", false, Some(Json)),
    ];
    for (start, labelled_stream, want) in cases {
        assert_eq!(
            sniff_framing(start, labelled_stream),
            want,
            "{:?} labelled_stream={labelled_stream}",
            String::from_utf8_lossy(start)
        );
    }
}

#[test]
fn a_mislabelled_body_is_metered_by_its_framing_at_every_split() {
    let stripped_stream = without_usage_block(OPENAI_STREAM, b"\n\n");
    let with_leading_blank_lines = [b"\r\n\n".as_slice(), OPENAI_STREAM].concat();
    // (label, request, response, what the client gets, charged)
    type Case<'a> = (&'a str, &'a [u8], &'a [u8], &'a [u8], u64);
    let cases: [Case; 5] = [
        // A stream labelled JSON: still metered, and the usage report the filter asked for
        // is still cut from what the client gets.
        (
            "application/json",
            OPENAI_STREAM_REQUEST,
            OPENAI_STREAM,
            &stripped_stream,
            STREAM_COST,
        ),
        (
            "text/plain",
            OPENAI_STREAM_REQUEST,
            OPENAI_STREAM,
            &stripped_stream,
            STREAM_COST,
        ),
        (
            "",
            OPENAI_STREAM_REQUEST_WITH_USAGE,
            &with_leading_blank_lines,
            &with_leading_blank_lines,
            STREAM_COST,
        ),
        // A JSON body labelled a stream: still metered, passed as it is.
        (
            "text/event-stream",
            OPENAI_REQUEST,
            OPENAI_CHAT,
            OPENAI_CHAT,
            CHAT_COST,
        ),
        (
            "application/json",
            OPENAI_REQUEST,
            OPENAI_CHAT,
            OPENAI_CHAT,
            CHAT_COST,
        ),
    ];
    for (label, request, response, client, cost) in cases {
        for (name, chunks) in splits(response) {
            let (host, worker) = setup(CONFIG);
            let exchange = Exchange {
                content_type: label,
                chunks,
                ..Exchange::json(CHAT_PATH, "bot", request, b"")
            };
            let ran = run_call(&host, &worker, &exchange);
            assert_eq!(
                String::from_utf8_lossy(&ran.client),
                String::from_utf8_lossy(client),
                "{label} {name}"
            );
            assert_eq!(charged(&ran.call).0, cost, "{label} {name}");
        }
    }
}

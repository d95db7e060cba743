//! Micro-benchmarks of the filter's pure code (the crate is an rlib too), natively.
//!
//! Run by `scripts/bench` (with short warm-up / measurement times), or by hand:
//! `cargo bench --bench micro -- --warm-up-time 1 --measurement-time 2`.
//! Native x86-64 figures: inside Envoy the same code runs as wasm in V8, typically some
//! tens of percent slower, plus the cost of each host call.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use agent_budget_core::config::Config;
use agent_budget_core::filter::{Call, EndCause, HeadAction, RequestHead, ResponseHead};
use agent_budget_core::host::fake::FakeHost;
use agent_budget_core::ledger::{Account, AccountKey, Ledger};
use agent_budget_core::period::{Period, PeriodKind, TimeZone};
use agent_budget_core::pricing::PriceTable;
use agent_budget_core::providers::Api;
use agent_budget_core::root::Worker;
use agent_budget_core::sse::SseParser;
use agent_budget_core::stripper::MAX_EVENT_BYTES;
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::rc::Rc;

const OPENAI_STREAM: &[u8] = include_bytes!("../../tests/fixtures/openai/chat_stream_usage.sse");
const OPENAI_JSON: &[u8] = include_bytes!("../../tests/fixtures/openai/chat.json");
const ANTHROPIC_JSON: &[u8] = include_bytes!("../../tests/fixtures/anthropic/messages.json");

/// The OpenAI stream fixture repeated to about 256 KiB (a long completion's worth).
fn long_stream() -> Vec<u8> {
    let copies = (256 * 1024) / OPENAI_STREAM.len() + 1;
    OPENAI_STREAM.repeat(copies)
}

fn sse(c: &mut Criterion) {
    let stream = long_stream();
    let mut group = c.benchmark_group("sse");
    group.throughput(Throughput::Bytes(stream.len() as u64));
    // 256 B is about one chat chunk event per read (how Envoy usually hands a streamed body
    // over); 16 KiB is a bulk read.
    for chunk in [256usize, 16 * 1024] {
        group.bench_with_input(BenchmarkId::new("parse", chunk), &chunk, |b, &chunk| {
            let mut out = Vec::with_capacity(64);
            b.iter(|| {
                let mut parser = SseParser::new(MAX_EVENT_BYTES);
                let mut events = 0usize;
                for piece in stream.chunks(chunk) {
                    parser.feed(black_box(piece), &mut out);
                    events += out.len();
                    out.clear();
                }
                black_box(events)
            });
        });
        // What the filter does per response chunk: parse, then hand every event to the
        // OpenAI stream meter (JSON-decodes each data payload looking for usage).
        group.bench_with_input(
            BenchmarkId::new("parse_and_meter", chunk),
            &chunk,
            |b, &chunk| {
                let mut out = Vec::with_capacity(64);
                b.iter(|| {
                    let mut parser = SseParser::new(MAX_EVENT_BYTES);
                    let mut meter = Api::OpenAiChat.stream_meter();
                    for piece in stream.chunks(chunk) {
                        parser.feed(black_box(piece), &mut out);
                        for event in &out {
                            black_box(meter.on_event(event));
                        }
                        out.clear();
                    }
                    black_box(meter.finish().is_ok())
                });
            },
        );
    }
    group.finish();
}

fn usage(c: &mut Criterion) {
    let mut group = c.benchmark_group("usage_from_body");
    group.throughput(Throughput::Bytes(OPENAI_JSON.len() as u64));
    group.bench_function("openai_chat", |b| {
        b.iter(|| {
            Api::OpenAiChat
                .usage_from_body(black_box(OPENAI_JSON))
                .is_ok()
        })
    });
    group.throughput(Throughput::Bytes(ANTHROPIC_JSON.len() as u64));
    group.bench_function("anthropic_messages", |b| {
        b.iter(|| {
            Api::AnthropicMessages
                .usage_from_body(black_box(ANTHROPIC_JSON))
                .is_ok()
        })
    });
    group.finish();
}

fn pricing(c: &mut Criterion) {
    let table = PriceTable::builtin();
    let mut group = c.benchmark_group("pricing");
    group.bench_function("resolve_dated_model", |b| {
        b.iter(|| table.resolve(black_box("gpt-4o-2024-08-06")).is_some())
    });
    group.finish();
}

fn ledger(c: &mut Criterion) {
    let host = FakeHost::new().at_unix_secs(1_795_900_000);
    let ledger = Ledger::new(&host);
    let day = Period::containing(PeriodKind::Daily, TimeZone::UTC, 1_795_900_000);
    let month = Period::containing(PeriodKind::Monthly, TimeZone::UTC, 1_795_900_000);
    ledger.ensure_shards().unwrap();
    // A few other accounts in the shards, as in a gateway with several agents.
    for i in 0..32 {
        let name = AccountKey::Agent(format!("agent-{i}"));
        ledger.add_spend(&day, &name, 1).unwrap();
        ledger.add_spend(&month, &name, 1).unwrap();
    }
    let bot = AccountKey::Agent("research-bot".to_string());
    let mut group = c.benchmark_group("ledger");
    group.bench_function("add_spend", |b| {
        b.iter(|| {
            ledger
                .add_spend(black_box(&day), black_box(&bot), 155)
                .unwrap()
        })
    });
    // One call's booking: the day and the month in one update.
    group.bench_function("charge_day_and_month", |b| {
        b.iter(|| {
            ledger
                .update_periods(black_box(&bot), &[&day, &month], None, |before| {
                    Some(
                        before
                            .iter()
                            .map(|a| Account {
                                spent: a.spent + 155,
                                ..*a
                            })
                            .collect(),
                    )
                })
                .unwrap()
        })
    });
    group.finish();
}

/// The shipped plugin configuration (envoy/agent-budget.yaml) plus the benchmark's agent,
/// as scripts/bench configures Envoy.
const CONFIG: &str = r#"{"agent_header":"x-agent-id","task_header":"x-task-id",
"user_header":"x-user-id","time_zone":"UTC","missing_agent":"reject","unknown_agent":"default",
"agents":{"research-bot":{"daily_usd":5,"monthly_usd":100,"action":"stop"},
"support-bot":{"daily_usd":2,"action":"stop"},"nightly-batch":{"daily_usd":0.05,"action":"stop"},
"default":{"daily_usd":0.5,"action":"stop"},
"bench-agent":{"daily_usd":1000000,"monthly_usd":10000000}},
"pricing":{"mock-model":{"input":1.0,"output":2.0}}}"#;

const NOW: i64 = 1_795_900_000;

/// Request and response bodies shaped like scripts/bench's load (the mock provider's answer
/// to max_tokens 300: ~1.7 KB).
fn openai_exchange() -> (Vec<u8>, Vec<u8>) {
    let request = br#"{"model":"gpt-4o","max_tokens":300,"temperature":0.2,"messages":[{"role":"system","content":"You are a meticulous research assistant. Answer with short, sourced paragraphs; say when you are unsure; never invent citations. You are a meticulous research assistant. Answer with short, sourced paragraphs; say when you are unsure; never invent citations. You are a meticulous research assistant. Answer with short, sourced paragraphs; say when you are unsure; never invent citations. "},{"role":"user","content":"Summarise the trade-offs between optimistic and pessimistic concurrency control for a shared counter updated by many workers, in three bullet points."}]}"#.to_vec();
    let response = format!(
        r#"{{"id":"chatcmpl-mock-1","object":"chat.completion","created":1795902443,"model":"gpt-4o","choices":[{{"index":0,"message":{{"role":"assistant","content":"{}","refusal":null}},"logprobs":null,"finish_reason":"stop"}}],"usage":{{"prompt_tokens":160,"completion_tokens":300,"total_tokens":460,"prompt_tokens_details":{{"cached_tokens":0,"audio_tokens":0}},"completion_tokens_details":{{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}}}},"system_fingerprint":"fp_mock"}}"#,
        "tok ".repeat(300).trim_end()
    );
    (request, response.into_bytes())
}

/// A 500-chunk OpenAI stream with the usage chunk (what the provider sends once the filter
/// added `stream_options.include_usage`), one event per chunk.
fn openai_stream_events(chunks: usize) -> Vec<Vec<u8>> {
    let head = r#"data: {"id":"chatcmpl-mock-2","object":"chat.completion.chunk","created":1795902443,"model":"gpt-4o","system_fingerprint":"fp_mock","choices":["#;
    let mut events = vec![format!(
        r#"{head}{{"index":0,"delta":{{"role":"assistant","content":""}},"logprobs":null,"finish_reason":null}}],"usage":null}}"#
    )];
    for _ in 0..chunks {
        events.push(format!(
            r#"{head}{{"index":0,"delta":{{"content":"tok "}},"logprobs":null,"finish_reason":null}}],"usage":null}}"#
        ));
    }
    events.push(format!(
        r#"{head}{{"index":0,"delta":{{}},"logprobs":null,"finish_reason":"stop"}}],"usage":null}}"#
    ));
    events.push(format!(
        r#"{head}],"usage":{{"prompt_tokens":160,"completion_tokens":{chunks},"total_tokens":{}}}}}"#,
        160 + chunks
    ));
    events.push("data: [DONE]".to_string());
    events
        .into_iter()
        .map(|e| format!("{e}\n\n").into_bytes())
        .collect()
}

fn run_call(
    host: &FakeHost,
    worker: &Rc<Worker>,
    path: &str,
    request: &[u8],
    content_type: &str,
    chunks: &[Vec<u8>],
) -> usize {
    let mut call = Call::new(Rc::clone(worker));
    let head = call.on_request_headers(
        host,
        RequestHead {
            path: path.to_string(),
            agent: Some("bench-agent".to_string()),
            task: Some("bench-task".to_string()),
            user: Some("bench-user".to_string()),
            has_body: true,
            ..RequestHead::default()
        },
    );
    let mut touched = head.edits.set.len();
    if matches!(
        head.action,
        HeadAction::WaitForBody | HeadAction::HoldForBody
    ) {
        let body = call.on_request_body(host, request);
        touched += body.body.map_or(0, |b| b.len());
    }
    let edits = call.on_response_headers(&ResponseHead {
        status: 200,
        content_type: Some(content_type.to_string()),
        content_encoding: None,
        end_of_stream: false,
    });
    touched += edits.set.len();
    let last = chunks.len().saturating_sub(1);
    for (index, chunk) in chunks.iter().enumerate() {
        black_box(call.on_response_body(host, chunk, index == last));
    }
    call.on_done(host, EndCause::Normal);
    touched
}

/// One whole call through the filter's state machine (`filter::Call`, as the proxy-wasm
/// adapter drives it) against the in-memory host: the per-request Rust work, without Envoy and V8.
fn call(c: &mut Criterion) {
    let host = FakeHost::new().at_unix_secs(NOW);
    let worker = Rc::new(Worker::new(Config::from_bytes(CONFIG.as_bytes()).unwrap()));
    worker.tick(&host);
    let (request, response) = openai_exchange();
    let json_chunks = vec![response];
    let mut stream_request: serde_json::Value = serde_json::from_slice(&request).unwrap();
    stream_request["stream"] = serde_json::Value::Bool(true);
    let stream_request = serde_json::to_vec(&stream_request).unwrap();
    let events = openai_stream_events(500);
    let mut group = c.benchmark_group("call");
    group.bench_function("openai_json", |b| {
        b.iter(|| {
            run_call(
                &host,
                &worker,
                "/v1/chat/completions",
                &request,
                "application/json",
                &json_chunks,
            )
        })
    });
    group.throughput(Throughput::Bytes(
        events.iter().map(|e| e.len() as u64).sum::<u64>(),
    ));
    group.bench_function("openai_stream_500_chunks", |b| {
        b.iter(|| {
            run_call(
                &host,
                &worker,
                "/v1/chat/completions",
                &stream_request,
                "text/event-stream",
                &events,
            )
        })
    });
    group.finish();
}

criterion_group!(benches, sse, usage, pricing, ledger, call);
criterion_main!(benches);

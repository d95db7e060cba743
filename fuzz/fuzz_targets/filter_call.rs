//! A whole call through `filter::Call` over the in-memory host, as the proxy-wasm adapter
//! drives it: request headers, the request body, response headers, each response chunk,
//! `on_done`, then a worker tick. The response is fed once whole and once in fuzzer-chosen
//! chunks, each on a fresh host: what the client receives, the attribution record, every
//! shared-data value and every metric must be the same. A response the filter did not ask
//! to change (no usage report it added) reaches the client byte for byte, and a reported
//! charge never exceeds the numbers the response holds.
//!
//! Input: call flags (path, agent, content type, status), config flags (tight agent's action,
//! reservations, held headers, its day spent, stream cut, body cap, budget headers), shape
//! (and, bit 3, whether the client or the upstream ended a cut call), seed, then the request body, NUL, the response.
#![no_main]

use agent_budget_core::attribution::{Attribution, Outcome};
use agent_budget_core::config::Config;
use agent_budget_core::filter::{
    BodyOutcome, Call, ChunkOutcome, EndCause, HeadAction, HeadOutcome, RequestHead, ResponseHead,
};
use agent_budget_core::host::fake::FakeHost;
use agent_budget_core::ledger::{AccountKey, Ledger};
use agent_budget_core::root::Worker;
use fuzz_support::{check_usage, chunks, digit_sum};
use libfuzzer_sys::fuzz_target;
use std::rc::Rc;

/// What the filter writes into a request when it asks a stream for its usage report.
const INCLUDE_USAGE: &[u8] = br#""include_usage":true"#;

/// 2026-11-28T21:06:40Z.
const NOW: i64 = 1_795_900_000;

const PATHS: [&str; 8] = [
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/responses",
    "/v1/embeddings",
    "/v1/messages",
    "/v1beta/models/gemini-2.5-pro:generateContent",
    "/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse",
    "/v1/models",
];

#[derive(Debug, PartialEq)]
struct Played {
    head: HeadOutcome,
    body: BodyOutcome,
    client: Vec<u8>,
    attribution: Option<Attribution>,
    shared: Vec<(String, Option<Vec<u8>>)>,
    metrics: Vec<(String, Option<i64>)>,
}

fn config(flags: u8) -> Config {
    let action = ["stop", "degrade", "alert", "stop"][usize::from(flags & 3)];
    let text = format!(
        r#"{{"agents":{{
            "bot":{{"daily_usd":10,"monthly_usd":100}},
            "tight":{{"daily_usd":0.0001,"action":"{action}"{degrade}}}
          }},
          "reservations":{reservations},
          "hold_request_headers":{hold},
          "max_response_body_bytes":{max_body},
          "budget_headers":"{headers}"}}"#,
        degrade = if action == "degrade" {
            r#","degrade_to":{"gpt-4o*":"gpt-4o-mini","claude-*":"claude-haiku-4-5","gemini-*":"gemini-2.5-flash"}"#
        } else {
            ""
        },
        reservations = flags & 4 != 0,
        hold = flags & 8 != 0,
        max_body = if flags & 64 != 0 { 1024 } else { 1 << 20 },
        headers = if flags & 128 != 0 { "on_limit" } else { "all" },
    );
    Config::from_bytes(text.as_bytes()).unwrap_or_else(|e| panic!("fixed config refused: {e}"))
}

fn play(flags: [u8; 3], request: &[u8], pieces: &[&[u8]]) -> Played {
    let [call_flags, config_flags, shape] = flags;
    let host = FakeHost::new().at_unix_secs(NOW);
    let worker = Rc::new(Worker::new(config(config_flags)));
    worker.tick(&host);
    // `tight` has spent its day when the 4th config bit says so: stop, degrade, alert.
    if config_flags & 16 != 0 {
        let [day, _] = worker.current_periods(NOW);
        let _ = Ledger::new(&host).add_spend(&day, &AccountKey::Agent("tight".into()), 100);
    }
    let agent = match (call_flags >> 3) & 3 {
        0 => Some("bot"),
        1 => Some("tight"),
        2 => Some("nobody"),
        _ => None,
    };
    let (content_type, content_encoding) = match (call_flags >> 5) & 3 {
        0 => (Some("application/json"), None),
        1 => (Some("text/event-stream; charset=utf-8"), None),
        2 => (None, None),
        _ => (Some("application/json"), Some("gzip")),
    };
    let ended = config_flags & 32 == 0;
    let status = if call_flags & 128 != 0 { 500 } else { 200 };

    let mut call = Call::new(Rc::clone(&worker));
    let head = call.on_request_headers(
        &host,
        RequestHead {
            path: PATHS[usize::from(call_flags & 7)].to_string(),
            agent: agent.map(str::to_string),
            task: Some("task-1".into()),
            user: None,
            accept_encoding: true,
            has_body: !request.is_empty(),
            content_length: Some(request.len() as u64),
            route_name: None,
            cluster_name: None,
            credentials: Default::default(),
            claims: Default::default(),
        },
    );
    let body = match head.action {
        HeadAction::WaitForBody | HeadAction::HoldForBody => call.on_request_body(&host, request),
        HeadAction::Continue | HeadAction::Reply(_) => BodyOutcome::default(),
    };
    let mut client = Vec::new();
    let refused = matches!(head.action, HeadAction::Reply(_)) || body.reply.is_some();
    if !refused {
        let headers_end = ended && pieces.is_empty();
        call.on_response_headers(&ResponseHead {
            status,
            content_type: content_type.map(str::to_string),
            content_encoding: content_encoding.map(str::to_string),
            end_of_stream: headers_end,
        });
        if headers_end {
            call.on_response_complete(&host);
        }
        let last = pieces.len().saturating_sub(1);
        for (index, piece) in pieces.iter().enumerate() {
            match call.on_response_body(&host, piece, ended && index == last) {
                ChunkOutcome::Pass => client.extend_from_slice(piece),
                ChunkOutcome::Replace(bytes) => client.extend_from_slice(&bytes),
            }
        }
    }
    let cause = if shape & 8 != 0 {
        EndCause::ClientAborted
    } else {
        EndCause::UpstreamAborted
    };
    call.on_done(&host, cause);
    worker.tick(&host);
    worker.metrics.flush(&host);
    let shared = host
        .shared_keys()
        .into_iter()
        .map(|key| {
            let value = host.raw_shared(&key);
            (key, value)
        })
        .collect();
    let metrics = host
        .metric_names()
        .into_iter()
        .map(|name| {
            let value = host.metric(&name);
            (name, value)
        })
        .collect();
    Played {
        head,
        body,
        client,
        attribution: call.attribution.take(),
        shared,
        metrics,
    }
}

fuzz_target!(|data: &[u8]| {
    let [call_flags, config_flags, shape, seed, rest @ ..] = data else {
        return;
    };
    let (request, response) = match rest.iter().position(|&b| b == 0) {
        Some(at) => (&rest[..at], &rest[at + 1..]),
        None => (rest, &[][..]),
    };
    let flags = [*call_flags, *config_flags, *shape];
    let whole = play(flags, request, &[response]);
    let split = play(flags, request, &chunks(response, *shape, *seed));
    assert_eq!(
        whole, split,
        "the call played differently with the response split"
    );

    let refused = matches!(whole.head.action, HeadAction::Reply(_)) || whole.body.reply.is_some();
    // Read from the bytes sent upstream, not by parsing them: a body with invalid UTF-8 in
    // a string is not JSON to serde_json, yet gets the option (the provider judges it).
    let usage_added = whole.body.body.as_deref().is_some_and(|sent| {
        sent.windows(INCLUDE_USAGE.len())
            .any(|window| window == INCLUDE_USAGE)
    });
    if !refused && !usage_added {
        assert_eq!(whole.client, response, "the client got a changed response");
    }
    if let Some(Attribution {
        outcome:
            Outcome::Charged {
                metered,
                estimated: false,
                ..
            },
        ..
    }) = &whole.attribution
    {
        check_usage(&metered.usage, digit_sum(response));
    }
});

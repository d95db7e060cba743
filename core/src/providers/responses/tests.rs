use super::*;
use crate::providers::{assert_split_invariant, Api};

/// Expected usage and model, or why there are none.
type Expected = Result<(Usage, Option<&'static str>), Unmetered>;

const BODY: &[u8] = include_bytes!("../../../../tests/fixtures/openai/responses.json");
const STREAM: &[u8] = include_bytes!("../../../../tests/fixtures/openai/responses_stream.sse");

fn stream_usage() -> Usage {
    Usage {
        input: 2117 - 1920,
        cache_read: 1920,
        output: 342,
        reasoning: 256,
        ..Usage::default()
    }
}

/// The fixture cut just before the first event of the given type.
fn cut_before(kind: &str) -> &'static [u8] {
    let needle = format!("event: {kind}\n");
    let at = STREAM
        .windows(needle.len())
        .position(|w| w == needle.as_bytes())
        .unwrap();
    &STREAM[..at]
}

fn progress_of(stream: &[u8]) -> Progress {
    crate::providers::progress_of(Api::OpenAiResponses, stream)
}

#[test]
fn meters_non_streaming_body() {
    let metered = usage_from_body(BODY).unwrap();
    assert_eq!(metered.model.as_deref(), Some("gpt-4o-2024-08-06"));
    assert_eq!(
        metered.usage,
        Usage {
            input: 1843 - 1536,
            cache_read: 1536,
            output: 38,
            ..Usage::default()
        }
    );
    assert_eq!(Api::OpenAiResponses.usage_from_body(BODY), Ok(metered));
}

#[test]
fn body_failures_have_reasons() {
    let cases: [(&[u8], Result<Usage, Unmetered>); 12] = [
        (b"", Err(Unmetered::Malformed)),
        (&BODY[..BODY.len() / 2], Err(Unmetered::Malformed)),
        (b"\xff\xfe", Err(Unmetered::Malformed)),
        (b"[1,2]", Err(Unmetered::Malformed)),
        (b"{\"usage\":{\"input_tokens\":-1}}", Err(Unmetered::Malformed)),
        (b"{\"usage\":{\"input_tokens\":1.5}}", Err(Unmetered::Malformed)),
        (b"{\"id\":\"resp_1\",\"object\":\"response\"}", Err(Unmetered::NoUsage)),
        // A background response still queued reports no usage yet.
        (
            br#"{"id":"resp_1","object":"response","status":"queued","background":true,"usage":null}"#,
            Err(Unmetered::NoUsage),
        ),
        // Cached tokens beyond the input (a broken server) never underflow.
        (
            br#"{"usage":{"input_tokens":5,"input_tokens_details":{"cached_tokens":9},"output_tokens":1}}"#,
            Ok(Usage { cache_read: 5, output: 1, ..Usage::default() }),
        ),
        // Nulls where objects are documented are tolerated.
        (
            br#"{"usage":{"input_tokens":5,"output_tokens":2,"input_tokens_details":null,"output_tokens_details":null}}"#,
            Ok(Usage { input: 5, output: 2, ..Usage::default() }),
        ),
        (
            br#"{"usage":{"input_tokens":5,"output_tokens":2,"output_tokens_details":{"reasoning_tokens":2}}}"#,
            Ok(Usage { input: 5, output: 2, reasoning: 2, ..Usage::default() }),
        ),
        (
            br#"{"usage":{"input_tokens":18446744073709551615,"input_tokens_details":{"cached_tokens":1}}}"#,
            Ok(Usage { input: u64::MAX - 1, cache_read: 1, ..Usage::default() }),
        ),
    ];
    for (body, want) in cases {
        assert_eq!(
            usage_from_body(body).map(|m| m.usage),
            want,
            "{}",
            String::from_utf8_lossy(body)
        );
    }
}

#[test]
fn meters_completed_stream_at_every_split() {
    let (metered, fates) = assert_split_invariant(Api::OpenAiResponses, STREAM);
    let metered = metered.unwrap();
    assert_eq!(metered.model.as_deref(), Some("o4-mini-2025-04-16"));
    assert_eq!(metered.usage, stream_usage());
    assert_eq!(fates.len(), 19);
    assert!(fates.iter().all(|f| *f == EventFate::Forward));
}

#[test]
fn stream_variants() {
    let created = "event: response.created\ndata: {\"type\":\"response.created\",\"sequence_number\":0,\"response\":{\"id\":\"resp_1\",\"object\":\"response\",\"status\":\"in_progress\",\"model\":\"gpt-4.1-2025-04-14\",\"output\":[],\"usage\":null}}\n\n";
    let usage = r#"{"input_tokens":40,"input_tokens_details":{"cached_tokens":0},"output_tokens":16,"output_tokens_details":{"reasoning_tokens":0},"total_tokens":56}"#;
    let plain = Usage {
        input: 40,
        output: 16,
        ..Usage::default()
    };
    let cases: Vec<(&str, String, Expected)> = vec![
        (
            "incomplete (max_output_tokens) still carries usage",
            format!("{created}event: response.incomplete\ndata: {{\"type\":\"response.incomplete\",\"sequence_number\":5,\"response\":{{\"id\":\"resp_1\",\"object\":\"response\",\"status\":\"incomplete\",\"incomplete_details\":{{\"reason\":\"max_output_tokens\"}},\"model\":\"gpt-4.1-2025-04-14\",\"usage\":{usage}}}}}\n\n"),
            Ok((plain, Some("gpt-4.1-2025-04-14"))),
        ),
        (
            "failed with usage",
            format!("{created}event: response.failed\ndata: {{\"type\":\"response.failed\",\"sequence_number\":3,\"response\":{{\"id\":\"resp_1\",\"status\":\"failed\",\"error\":{{\"code\":\"server_error\",\"message\":\"boom\"}},\"model\":\"gpt-4.1-2025-04-14\",\"usage\":{usage}}}}}\n\n"),
            Ok((plain, Some("gpt-4.1-2025-04-14"))),
        ),
        (
            "failed with null usage",
            format!("{created}event: response.failed\ndata: {{\"type\":\"response.failed\",\"sequence_number\":3,\"response\":{{\"id\":\"resp_1\",\"status\":\"failed\",\"error\":{{\"code\":\"server_error\",\"message\":\"boom\"}},\"model\":\"gpt-4.1-2025-04-14\",\"usage\":null}}}}\n\n"),
            Err(Unmetered::NoUsage),
        ),
        (
            "terminal without a model keeps the opening one",
            format!("{created}event: response.completed\ndata: {{\"type\":\"response.completed\",\"response\":{{\"usage\":{usage}}}}}\n\n"),
            Ok((plain, Some("gpt-4.1-2025-04-14"))),
        ),
        (
            "no event lines: type sniffed from the JSON",
            format!("data: {{\"type\":\"response.output_text.delta\",\"delta\":\"response.completed\"}}\n\ndata: {{\"type\":\"response.completed\",\"response\":{{\"model\":\"m\",\"usage\":{usage}}}}}\n\n"),
            Ok((plain, Some("m"))),
        ),
        (
            "no event lines and type last",
            format!("data: {{\"response\":{{\"model\":\"m\",\"text\":{{\"format\":{{\"type\":\"text\"}}}},\"usage\":{usage}}},\"type\":\"response.completed\"}}\n\n"),
            Ok((plain, Some("m"))),
        ),
        (
            "a usage object in a non-terminal event is not a report",
            format!("data: {{\"item\":{{\"type\":\"message\"}},\"usage\":{usage},\"type\":\"response.output_item.done\"}}\n\n"),
            Err(Unmetered::NoUsage),
        ),
        (
            "CRLF line endings",
            format!("{created}event: response.completed\r\ndata: {{\"type\":\"response.completed\",\"response\":{{\"model\":\"m\",\"usage\":{usage}}}}}\r\n\r\n"),
            Ok((plain, Some("m"))),
        ),
        (
            "malformed terminal event",
            format!("{created}event: response.completed\ndata: {{\"type\":\"response.completed\",\"response\":{{\"usage\":{{\n\n"),
            Err(Unmetered::Malformed),
        ),
        (
            "malformed deltas are never parsed",
            format!("{created}event: response.output_text.delta\ndata: {{not json \"usage\":{{\n\nevent: response.completed\ndata: {{\"type\":\"response.completed\",\"response\":{{\"model\":\"m\",\"usage\":{usage}}}}}\n\n"),
            Ok((plain, Some("m"))),
        ),
        (
            "malformed opening event still meters the end",
            format!("event: response.created\ndata: {{oops\n\nevent: response.completed\ndata: {{\"type\":\"response.completed\",\"response\":{{\"model\":\"m\",\"usage\":{usage}}}}}\n\n"),
            Ok((plain, Some("m"))),
        ),
        (
            "terminal with a usage of the wrong shape",
            "event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"usage\":{\"input_tokens\":\"many\"}}}\n\n".to_string(),
            Err(Unmetered::Malformed),
        ),
        ("only the opening event", created.to_string(), Err(Unmetered::Incomplete)),
        ("error event only", "event: error\ndata: {\"type\":\"error\",\"code\":\"ERR_SOMETHING\",\"message\":\"Something went wrong\",\"param\":null,\"sequence_number\":1}\n\n".to_string(), Err(Unmetered::NoUsage)),
        ("empty", String::new(), Err(Unmetered::NoUsage)),
        ("garbage", "\u{0}\u{1}data\n\n\n:::\r\r".to_string(), Err(Unmetered::NoUsage)),
    ];
    for (name, stream, want) in cases {
        let (metered, fates) = assert_split_invariant(Api::OpenAiResponses, stream.as_bytes());
        let got = metered.map(|m| (m.usage, m.model));
        let want = want.map(|(usage, model)| (usage, model.map(str::to_string)));
        assert_eq!(got, want, "{name}");
        assert!(fates.iter().all(|f| *f == EventFate::Forward), "{name}");
    }
}

#[test]
fn truncated_streams_are_incomplete() {
    let cases: [(&[u8], Unmetered); 5] = [
        (cut_before("response.completed"), Unmetered::Incomplete),
        (&STREAM[..STREAM.len() / 2], Unmetered::Incomplete),
        // The opening event named, its data cut short.
        (&STREAM[..40], Unmetered::Incomplete),
        // Not even the opening event's name is complete.
        (&STREAM[..10], Unmetered::NoUsage),
        // The terminal event cut inside its data: what is flushed at end of stream is not
        // valid JSON.
        (&STREAM[..STREAM.len() - 3], Unmetered::Malformed),
    ];
    for (stream, want) in cases {
        let (metered, _) = assert_split_invariant(Api::OpenAiResponses, stream);
        assert_eq!(metered, Err(want), "cut at {}", stream.len());
    }
}

#[test]
fn progress_counts_deltas_and_the_opening_model() {
    // Raw (JSON-escaped) lengths of the `delta` strings, as streamed.
    let summary = ("**Converting units**".len()
        + "\\n\\nThe user wants 5 km in miles; 1 mile is 1.609344 km.".len())
        as u64;
    let answer = ("5 km".len()
        + " is about 3.11 miles".len()
        + " (5 / 1.609344 = 3.1069).".len()
        + " Quote: \\\"usage\\\": {\\\"total\\\": 1} is just text.".len()) as u64;
    let cases: [(&str, u64); 5] = [
        ("response.in_progress", 0),
        ("response.reasoning_summary_text.done", summary),
        ("response.output_text.delta", summary),
        ("response.output_text.done", summary + answer),
        ("response.completed", summary + answer),
    ];
    for (kind, text_bytes) in cases {
        assert_eq!(
            progress_of(cut_before(kind)),
            Progress {
                reported: Usage::default(),
                input_reported: false,
                model: Some("o4-mini-2025-04-16".to_string()),
                text_bytes,
            },
            "cut before {kind}"
        );
    }
    // Nothing before the opening event.
    assert_eq!(progress_of(&STREAM[..40]), Progress::default());
    // Tool-call arguments and refusals are generated text too; other deltas' `delta` is not.
    let tool = b"event: response.function_call_arguments.delta\ndata: {\"type\":\"response.function_call_arguments.delta\",\"sequence_number\":4,\"item_id\":\"fc_1\",\"output_index\":0,\"delta\":\"{\\\"city\\\":\"}\n\nevent: response.refusal.delta\ndata: {\"type\":\"response.refusal.delta\",\"delta\":\"No.\"}\n\nevent: response.audio.delta\ndata: {\"type\":\"response.audio.delta\",\"delta\":\"AAAAAAAA\"}\n\n";
    let progress = progress_of(tool);
    assert_eq!(
        (progress.text_bytes, progress.model),
        ("{\\\"city\\\":".len() as u64 + 3, None)
    );
}

#[test]
fn request_facts_without_rewrite() {
    let cases: [(&[u8], PreparedRequest); 5] = [
        (
            br#"{"model":"gpt-4.1","input":"hi","stream":true}"#,
            PreparedRequest { model: Some("gpt-4.1".into()), stream: true, ..PreparedRequest::default() },
        ),
        (
            br#"{"model":"o4-mini","input":[{"role":"user","content":"hi"}],"reasoning":{"effort":"high"}}"#,
            PreparedRequest { model: Some("o4-mini".into()), ..PreparedRequest::default() },
        ),
        (br#"{"input":"hi","stream":false}"#, PreparedRequest::default()),
        (br#"{"model":"m","stream":"yes"}"#, PreparedRequest::default()),
        (b"\xff{", PreparedRequest::default()),
    ];
    for (body, want) in cases {
        assert_eq!(
            prepare_request(body),
            want,
            "{}",
            String::from_utf8_lossy(body)
        );
        assert_eq!(Api::OpenAiResponses.prepare_request(body), want);
    }
}

#[test]
fn error_shape_matches_the_sdk() {
    for kind in [
        ErrorKind::BudgetExceeded,
        ErrorKind::InvalidRequest,
        ErrorKind::PermissionDenied,
    ] {
        assert_eq!(
            error_body(kind, "over"),
            super::super::openai::error_body(kind, "over")
        );
        let body: serde_json::Value = serde_json::from_slice(&error_body(kind, "over")).unwrap();
        assert_eq!(body["error"]["message"], "over");
    }
}

#[test]
fn oversized_terminal_event_is_too_large() {
    let event = |kind: &str, data: &str, truncated: bool| crate::sse::SseEvent {
        event: Some(kind.to_string()),
        data: data.as_bytes().to_vec(),
        start: 0,
        end: 0,
        truncated,
    };
    // What the parser keeps of a `response.completed` whose output outgrew its cap.
    let cut = event(
        "response.completed",
        r#"{"type":"response.completed","response":{"model":"gpt-image-1","output":[{"type":"image_generation_call","result":"iVBORw0KGgo"#,
        true,
    );
    let opening = event(
        "response.queued",
        r#"{"type":"response.queued","response":{"model":"gpt-5","status":"queued","usage":null}}"#,
        false,
    );
    let mut meter = StreamMeter::default();
    meter.on_event(&opening);
    assert_eq!(
        (meter.finish(), meter.progress().model.as_deref()),
        (Err(Unmetered::Incomplete), Some("gpt-5"))
    );
    meter.on_event(&cut);
    assert_eq!(meter.finish(), Err(Unmetered::TooLarge));
    // A usage report that did fit still wins.
    let whole = event(
        "response.completed",
        r#"{"type":"response.completed","response":{"model":"gpt-5","usage":{"input_tokens":3,"output_tokens":1}}}"#,
        false,
    );
    meter.on_event(&whole);
    assert_eq!(meter.finish().map(|m| m.usage.total_input()), Ok(3));
}

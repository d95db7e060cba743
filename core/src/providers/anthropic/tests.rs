use super::*;
use crate::providers::{assert_split_invariant, Api};

const MESSAGE: &[u8] = include_bytes!("../../../../tests/fixtures/anthropic/messages.json");
const STREAM: &[u8] = include_bytes!("../../../../tests/fixtures/anthropic/messages_stream.sse");

#[test]
fn meters_non_streaming_body_with_cache_tiers() {
    let metered = usage_from_body(MESSAGE).unwrap();
    assert_eq!(metered.model.as_deref(), Some("claude-sonnet-4-5-20250929"));
    assert_eq!(
        metered.usage,
        Usage {
            input: 2095,
            cache_read: 4000,
            cache_write_5m: 51,
            cache_write_1h: 2000,
            output: 503,
            reasoning: 0
        }
    );
    // Without the split, all cache writes are 5-minute writes.
    let unsplit = usage_from_body(
        br#"{"usage":{"input_tokens":3,"cache_creation_input_tokens":7,"output_tokens":1}}"#,
    )
    .unwrap();
    assert_eq!(
        unsplit.usage,
        Usage {
            input: 3,
            cache_write_5m: 7,
            output: 1,
            ..Usage::default()
        }
    );
}

#[test]
fn meters_stream_final_delta_once_at_every_split() {
    let (metered, fates) = assert_split_invariant(Api::AnthropicMessages, STREAM);
    let metered = metered.unwrap();
    assert_eq!(metered.model.as_deref(), Some("claude-3-5-sonnet-20241022"));
    // Output is the last cumulative figure (15), not 1 + 7 + 15.
    assert_eq!(
        metered.usage,
        Usage {
            input: 25,
            cache_read: 100,
            output: 15,
            ..Usage::default()
        }
    );
    assert!(fates.iter().all(|f| *f == EventFate::Forward));
}

#[test]
fn delta_may_update_input_classes() {
    let stream = b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"claude-haiku-4-5\",\"usage\":{\"input_tokens\":10,\"output_tokens\":1}}}\n\nevent: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"input_tokens\":12,\"cache_read_input_tokens\":3,\"output_tokens\":40}}\n\n";
    let (metered, _) = assert_split_invariant(Api::AnthropicMessages, stream);
    assert_eq!(
        metered.unwrap().usage,
        Usage {
            input: 12,
            cache_read: 3,
            output: 40,
            ..Usage::default()
        }
    );
}

#[test]
fn events_without_event_lines_are_recognised() {
    let stream = b"data: {\"type\":\"message_start\",\"message\":{\"model\":\"m\",\"usage\":{\"input_tokens\":4}}}\n\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":2}}\n\n";
    let (metered, _) = assert_split_invariant(Api::AnthropicMessages, stream);
    assert_eq!(
        metered.unwrap().usage,
        Usage {
            input: 4,
            output: 2,
            ..Usage::default()
        }
    );
}

#[test]
fn interrupted_streams_are_incomplete_with_partial_usage() {
    let cut = STREAM
        .windows(19)
        .position(|w| w == b"event: message_delt")
        .unwrap();
    let (metered, _) = assert_split_invariant(Api::AnthropicMessages, &STREAM[..cut]);
    assert_eq!(metered, Err(Unmetered::Incomplete));
    let progress = crate::providers::progress_of(Api::AnthropicMessages, &STREAM[..cut]);
    assert_eq!(
        (progress.reported.input, progress.input_reported),
        (25, true)
    );
    assert_eq!(progress.text_bytes, "Hello!".len() as u64);
    assert_eq!(
        assert_split_invariant(Api::AnthropicMessages, b"event: ping\ndata: {}\n\n").0,
        Err(Unmetered::NoUsage)
    );
    assert_eq!(
        assert_split_invariant(
            Api::AnthropicMessages,
            b"event: message_start\ndata: {oops\n\n"
        )
        .0,
        Err(Unmetered::Malformed)
    );
}

#[test]
fn request_facts_and_error_shape() {
    let prepared = prepare_request(
        br#"{"model":"claude-sonnet-4-5","max_tokens":100,"stream":true,"messages":[]}"#,
    );
    assert_eq!(
        (
            prepared.model.as_deref(),
            prepared.stream,
            prepared.rewritten
        ),
        (Some("claude-sonnet-4-5"), true, None)
    );
    assert_eq!(prepare_request(b"nope"), PreparedRequest::default());
    let body: serde_json::Value =
        serde_json::from_slice(&error_body(ErrorKind::BudgetExceeded, "over")).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"type": "error", "error": {"type": "rate_limit_error", "message": "over"}})
    );
}

use super::*;
use crate::providers::{assert_split_invariant, Api};

const CHAT: &[u8] = include_bytes!("../../../../tests/fixtures/openai/chat.json");
const STREAM_USAGE: &[u8] =
    include_bytes!("../../../../tests/fixtures/openai/chat_stream_usage.sse");
const STREAM_NO_USAGE: &[u8] =
    include_bytes!("../../../../tests/fixtures/openai/chat_stream_no_usage.sse");

#[test]
fn meters_non_streaming_body() {
    let metered = usage_from_body(CHAT).unwrap();
    assert_eq!(metered.model.as_deref(), Some("gpt-4o-2024-08-06"));
    assert_eq!(
        metered.usage,
        Usage {
            input: 1019 - 512,
            cache_read: 512,
            output: 310,
            reasoning: 128,
            ..Usage::default()
        }
    );
}

#[test]
fn body_failures_have_reasons() {
    let cases: [(&[u8], Unmetered); 6] = [
        (b"", Unmetered::Malformed),
        (b"{\"usage\":", Unmetered::Malformed),
        (b"\xff\xfe", Unmetered::Malformed),
        (b"{\"id\":\"x\"}", Unmetered::NoUsage),
        (b"{\"usage\":null}", Unmetered::NoUsage),
        (b"{\"usage\":{\"prompt_tokens\":-1}}", Unmetered::Malformed),
    ];
    for (body, want) in cases {
        assert_eq!(
            usage_from_body(body),
            Err(want),
            "{}",
            String::from_utf8_lossy(body)
        );
    }
    // Cached tokens beyond the prompt (a broken server) never underflow.
    let odd = usage_from_body(
        br#"{"usage":{"prompt_tokens":5,"prompt_tokens_details":{"cached_tokens":9}}}"#,
    )
    .unwrap();
    assert_eq!((odd.usage.input, odd.usage.cache_read), (0, 5));
    // Nulls where objects are documented are tolerated.
    let nulls = usage_from_body(br#"{"usage":{"prompt_tokens":5,"completion_tokens":2,"prompt_tokens_details":null,"completion_tokens_details":null}}"#).unwrap();
    assert_eq!(
        nulls.usage,
        Usage {
            input: 5,
            output: 2,
            ..Usage::default()
        }
    );
}

#[test]
fn meters_stream_usage_chunk_at_every_split() {
    let (metered, fates) = assert_split_invariant(Api::OpenAiChat, STREAM_USAGE);
    let metered = metered.unwrap();
    assert_eq!(metered.model.as_deref(), Some("gpt-4o-mini-2024-07-18"));
    assert_eq!(
        metered.usage,
        Usage {
            input: 21,
            output: 9,
            ..Usage::default()
        }
    );
    // Only the usage-only chunk (5th event) is marked; [DONE] and content pass.
    assert_eq!(fates.len(), 6);
    assert_eq!(
        fates.iter().filter(|f| **f == EventFate::UsageOnly).count(),
        1
    );
    assert_eq!(fates[4], EventFate::UsageOnly);
}

#[test]
fn stream_without_usage_is_unmetered() {
    let (metered, fates) = assert_split_invariant(Api::OpenAiChat, STREAM_NO_USAGE);
    assert_eq!(metered, Err(Unmetered::NoUsage));
    assert!(fates.iter().all(|f| *f == EventFate::Forward));
    let truncated = &STREAM_USAGE[..STREAM_USAGE.len() / 2];
    assert_eq!(
        assert_split_invariant(Api::OpenAiChat, truncated).0,
        Err(Unmetered::NoUsage)
    );
}

#[test]
fn adds_include_usage_only_when_streaming_without_it() {
    let plain = prepare_request(br#"{"model":"gpt-4o","messages":[]}"#);
    assert_eq!(
        (
            plain.model.as_deref(),
            plain.stream,
            plain.rewritten.is_none()
        ),
        (Some("gpt-4o"), false, true)
    );

    let stream = prepare_request(br#"{"model":"gpt-4o","stream":true,"temperature":0.7,"messages":[{"role":"user","content":"hi"}]}"#);
    assert!(stream.strip_usage_from_client);
    let body: serde_json::Value =
        serde_json::from_slice(stream.rewritten.as_deref().unwrap()).unwrap();
    assert_eq!(body["stream_options"]["include_usage"], true);
    assert_eq!(body["temperature"], 0.7);
    assert_eq!(body["messages"][0]["content"], "hi");
    // Field order is kept, so the provider sees the client's request plus one option.
    let text = String::from_utf8(stream.rewritten.unwrap()).unwrap();
    assert!(
        text.starts_with(r#"{"model":"gpt-4o","stream":true,"temperature":0.7"#),
        "{text}"
    );

    let other_options = prepare_request(
        br#"{"model":"m","stream":true,"stream_options":{"include_obfuscation":false}}"#,
    );
    let body: serde_json::Value =
        serde_json::from_slice(other_options.rewritten.as_deref().unwrap()).unwrap();
    assert_eq!(
        body["stream_options"],
        serde_json::json!({"include_obfuscation": false, "include_usage": true})
    );

    let asked =
        prepare_request(br#"{"model":"m","stream":true,"stream_options":{"include_usage":true}}"#);
    assert!(asked.rewritten.is_none() && !asked.strip_usage_from_client && asked.stream);

    for garbage in [&b""[..], b"[1,2]", b"{\"stream\":", b"\xff"] {
        assert_eq!(prepare_request(garbage), PreparedRequest::default());
    }
}

#[test]
fn the_usage_option_is_added_without_respelling_the_clients_bytes() {
    // Found by fuzzing (fuzz/corpus/prepare_request/crash-number-respelled): the body used to
    // be parsed and printed again, which turned an integer past u64 into a different float.
    let cases: [(&[u8], &[u8]); 7] = [
        (
            br#"{"model":"m", "stream":true,"seed":184467440730209056625,"messages":[{"content":"caf\u00e9"}]}"#,
            br#"{"model":"m", "stream":true,"seed":184467440730209056625,"messages":[{"content":"caf\u00e9"}],"stream_options":{"include_usage":true}}"#,
        ),
        (
            br#"{ "stream" : true }"#,
            br#"{ "stream" : true ,"stream_options":{"include_usage":true}}"#,
        ),
        (
            br#"{"stream":true,"stream_options":null}"#,
            br#"{"stream":true,"stream_options":{"include_usage":true}}"#,
        ),
        (
            br#"{"stream":true,"stream_options":{ "include_usage" : false, "x":1 }}"#,
            br#"{"stream":true,"stream_options":{ "include_usage" : true, "x":1 }}"#,
        ),
        (
            br#"{"stream":true,"stream_options":{ }}"#,
            br#"{"stream":true,"stream_options":{ "include_usage":true}}"#,
        ),
        (
            br#"{"stream":true,"stream_options":{"x":0.30000000000000004} , "n":2 }"#,
            br#"{"stream":true,"stream_options":{"x":0.30000000000000004,"include_usage":true} , "n":2 }"#,
        ),
        (
            br#"{"stream":true,"stream_\u006fptions":{"include_usage":null}}"#,
            br#"{"stream":true,"stream_\u006fptions":{"include_usage":true}}"#,
        ),
    ];
    for (body, want) in cases {
        let prepared = prepare_request(body);
        assert!(prepared.strip_usage_from_client);
        assert_eq!(
            String::from_utf8_lossy(prepared.rewritten.as_deref().unwrap()),
            String::from_utf8_lossy(want)
        );
    }
    // Invalid UTF-8 inside a string the typed read skips: the option is added all the same,
    // so the stream is still metered (the provider judges the body).
    let prepared = prepare_request(b"{\"stream\":true,\"messages\":[\"\x98\"]}");
    assert_eq!(
        prepared.rewritten.as_deref(),
        Some(&b"{\"stream\":true,\"messages\":[\"\x98\"],\"stream_options\":{\"include_usage\":true}}"[..])
    );
    // The fuzzer's input itself: every number reads back as the client sent it.
    let found = include_bytes!("../../../../fuzz/corpus/prepare_request/crash-number-respelled");
    let body = &found[1..];
    let sent = prepare_request(body).rewritten.unwrap();
    let mut original: serde_json::Value = serde_json::from_slice(body).unwrap();
    let mut sent: serde_json::Value = serde_json::from_slice(&sent).unwrap();
    assert_eq!(sent["stream_options"]["include_usage"], true);
    sent.as_object_mut().unwrap().remove("stream_options");
    original.as_object_mut().unwrap().remove("stream_options");
    assert_eq!(sent, original);
}

#[test]
fn error_shape_matches_the_sdk() {
    let body: serde_json::Value =
        serde_json::from_slice(&error_body(ErrorKind::BudgetExceeded, "over")).unwrap();
    assert_eq!(body["error"]["message"], "over");
    assert_eq!(body["error"]["type"], "budget_exceeded");
    assert_eq!(body["error"]["code"], "budget_exceeded");
    assert!(body["error"]["param"].is_null());
}

const COMPLETIONS: &[u8] = include_bytes!("../../../../tests/fixtures/openai/completions.json");
const COMPLETIONS_STREAM: &[u8] =
    include_bytes!("../../../../tests/fixtures/openai/completions_stream.sse");

#[test]
fn meters_legacy_completions_like_chat() {
    let metered = usage_from_body(COMPLETIONS).unwrap();
    assert_eq!(metered.model.as_deref(), Some("gpt-3.5-turbo-instruct"));
    assert_eq!(
        metered.usage,
        Usage {
            input: 5,
            output: 7,
            ..Usage::default()
        }
    );

    let (metered, fates) = assert_split_invariant(Api::OpenAiCompletions, COMPLETIONS_STREAM);
    assert_eq!(
        metered.unwrap().usage,
        Usage {
            input: 5,
            output: 4,
            ..Usage::default()
        }
    );
    assert_eq!(
        fates.iter().filter(|f| **f == EventFate::UsageOnly).count(),
        1
    );

    // Cut before its usage chunk: nothing reported.
    let (cut, _) = assert_split_invariant(Api::OpenAiCompletions, &COMPLETIONS_STREAM[..300]);
    assert_eq!(cut, Err(Unmetered::NoUsage));
    let prepared = prepare_request(
        br#"{"model":"gpt-3.5-turbo-instruct","prompt":"x","stream":true,"max_tokens":7}"#,
    );
    assert!(prepared.strip_usage_from_client);
    assert_eq!(prepared.max_output_tokens, Some(7));
}

use super::*;

#[test]
fn detects_api_from_path() {
    let cases = [
        ("/v1/chat/completions", Some(Api::OpenAiChat), None, None),
        ("/v1/chat/completions?x=1", Some(Api::OpenAiChat), None, None),
        (
            "/openai/deployments/gpt4o-prod/chat/completions?api-version=2024-10-21",
            Some(Api::OpenAiChat),
            None,
            Some("gpt4o-prod"),
        ),
        ("/api/openai/v1/chat/completions/", Some(Api::OpenAiChat), None, None),
        ("/v1/completions", Some(Api::OpenAiCompletions), None, None),
        ("/v1/responses", Some(Api::OpenAiResponses), None, None),
        ("/openai/deployments/emb/embeddings", Some(Api::OpenAiEmbeddings), None, Some("emb")),
        ("/v1/messages", Some(Api::AnthropicMessages), None, None),
        ("/anthropic/v1/messages?beta=true", Some(Api::AnthropicMessages), None, None),
        (
            "/v1beta/models/gemini-2.5-flash:generateContent",
            Some(Api::Gemini),
            Some("gemini-2.5-flash"),
            None,
        ),
        (
            "/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse",
            Some(Api::Gemini),
            Some("gemini-2.5-pro"),
            None,
        ),
        (
            "/v1/projects/p/locations/us-central1/publishers/google/models/gemini-2.0-flash:generateContent",
            Some(Api::Gemini),
            Some("gemini-2.0-flash"),
            None,
        ),
        ("/v1beta/models/gemini-2.5-flash:countTokens", None, None, None),
        ("/v1/messages/count_tokens", None, None, None),
        ("/v1/models", None, None, None),
        ("", None, None, None),
    ];
    for (path, api, model, deployment) in cases {
        let detected = Api::detect(path);
        assert_eq!(detected.as_ref().map(|d| d.api), api, "{path}");
        assert_eq!(
            detected.as_ref().and_then(|d| d.path_model.as_deref()),
            model,
            "{path}"
        );
        assert_eq!(
            detected
                .as_ref()
                .and_then(|d| d.azure_deployment.as_deref()),
            deployment,
            "{path}"
        );
    }
}

#[test]
fn azure_deployments_fix_the_model() {
    let cases = [
        (
            "/openai/deployments/gpt4o-prod/chat/completions?api-version=2024-10-21",
            Some("gpt4o-prod"),
        ),
        ("/openai/deployments/emb/embeddings", Some("emb")),
        ("/azure/openai/deployments/x/responses", Some("x")),
        ("/openai/deployments/x", Some("x")),
        ("/openai/openai/deployments/x/chat/completions", Some("x")),
        (
            "//openai/deployments/first/openai/deployments/second",
            Some("first"),
        ),
        ("/openai/deployments", None),
        ("/v1/chat/completions", None),
        ("/openai/v1/chat/completions?api-version=preview", None),
        ("/v1/chat/completions?next=/openai/deployments/x/", None),
        ("/openai/deployments//chat/completions", None),
        ("/v1/messages", None),
        ("/v1beta/models/gemini-2.5-pro:generateContent", None),
        ("/llm/internal/anything", None),
        ("", None),
    ];
    for (path, deployment) in cases {
        assert_eq!(azure_deployment(path), deployment, "{path}");
        // Same reading of the path as detection.
        if let Some(detected) = Api::detect(path) {
            assert_eq!(detected.azure_deployment.as_deref(), deployment, "{path}");
            let want = match (detected.api, deployment) {
                (Api::Gemini, _) => ModelIn::Path,
                (_, Some(_)) => ModelIn::Deployment,
                (_, None) => ModelIn::Body,
            };
            assert_eq!(detected.model_in(), want, "{path}");
        }
    }
}

#[test]
fn capabilities() {
    let cases = [
        (Api::OpenAiChat, ModelIn::Body, true),
        (Api::OpenAiCompletions, ModelIn::Body, true),
        (Api::OpenAiResponses, ModelIn::Body, false),
        (Api::OpenAiEmbeddings, ModelIn::Body, false),
        (Api::AnthropicMessages, ModelIn::Body, false),
        (Api::Gemini, ModelIn::Path, false),
    ];
    let gemini_path = "/v1beta/models/gemini-2.5-pro:generateContent";
    for (api, model_in, rewrites_request) in cases {
        assert_eq!(api.model_in(), model_in, "{api:?}");
        assert_eq!(api.rewrites_request(), rewrites_request, "{api:?}");
        let stream = api.prepare_request(br#"{"model":"m","stream":true}"#);
        assert_eq!(stream.rewritten.is_some(), rewrites_request, "{api:?}");
        // Only a format whose model is in the path finds it there.
        assert_eq!(
            api.path_model_span(gemini_path).is_some(),
            model_in == ModelIn::Path,
            "{api:?}"
        );
    }
}

#[test]
fn config_names_are_the_metric_names() {
    for api in Api::ALL {
        let parsed: Api = serde_json::from_value(serde_json::Value::from(api.name())).unwrap();
        assert_eq!(parsed, api);
    }
}

#[test]
fn measures_string_values_without_parsing() {
    let cases: [(&[u8], &str, u64); 6] = [
        (br#"{"delta":{"content":"Hello"}}"#, "content", 5),
        (br#"{"delta":{"content":"a\"b"}}"#, "content", 4),
        (br#"{"content":null,"x":{"content" : "abc"}}"#, "content", 3),
        (br#"{"text":"x","text":"yz"}"#, "text", 3),
        (br#"{"text":"unterminated"#, "text", 0),
        (b"", "text", 0),
    ];
    for (data, key, want) in cases {
        assert_eq!(
            string_values_len(data, key),
            want,
            "{}",
            String::from_utf8_lossy(data)
        );
    }
}

#[test]
fn finds_usage_objects_only() {
    let cases: [(&[u8], bool); 7] = [
        (br#"{"usage":{"prompt_tokens":1}}"#, true),
        (br#"{"usage" : 	{"a":1}}"#, true),
        (br#"{"usage":null}"#, false),
        (br#"{"x":"\"usage\":{"}"#, false),
        (br#"{"content":"usage","usage":null}"#, false),
        (br#"{"a":"\"usage\"","usage":{}}"#, true),
        (b"", false),
    ];
    for (data, want) in cases {
        assert_eq!(
            has_usage_object(data),
            want,
            "{}",
            String::from_utf8_lossy(data)
        );
    }
}

#[test]
fn finds_usage_reports_that_cannot_be_read() {
    let cases: [(&[u8], bool); 7] = [
        (br#"{"usage":{"prompt_tokens":1}}"#, false),
        (br#"{"usage":null}"#, false),
        (br#"{"usage":"corrupt"}"#, true),
        (br#"{"usage": 17}"#, true),
        (br#"{"usage":[1,2]}"#, true),
        (br#"{"x":"\"usage\":5"}"#, false),
        (b"", false),
    ];
    for (data, want) in cases {
        assert_eq!(
            has_corrupt_usage(data),
            want,
            "{}",
            String::from_utf8_lossy(data)
        );
    }
}

#[test]
fn a_corrupt_usage_chunk_is_malformed_not_missing() {
    let mut meter = Api::OpenAiChat.stream_meter();
    let events = [
        br#"{"model":"gpt-4o","choices":[{"delta":{"content":"hi"}}],"usage":null}"#.as_slice(),
        br#"{"model":"gpt-4o","choices":[],"usage":"corrupt"}"#.as_slice(),
    ];
    for data in events {
        meter.on_event(&crate::sse::SseEvent {
            event: None,
            data: data.to_vec(),
            start: 0,
            end: 0,
            truncated: false,
        });
    }
    assert_eq!(meter.finish(), Err(Unmetered::Malformed));
}

// ---- property tests: damaged fixtures, random chunk splits ---------------------------------

#[cfg(not(target_arch = "wasm32"))]
mod properties {
    use super::*;
    use crate::sse::tests::properties::cut;
    use proptest::collection::vec;
    use proptest::prelude::*;

    const FIXTURES: &[(Api, &[u8])] = &[
        (
            Api::OpenAiChat,
            include_bytes!("../../../tests/fixtures/openai/chat.json"),
        ),
        (
            Api::OpenAiChat,
            include_bytes!("../../../tests/fixtures/openai/chat_stream_usage.sse"),
        ),
        (
            Api::OpenAiCompletions,
            include_bytes!("../../../tests/fixtures/openai/completions.json"),
        ),
        (
            Api::OpenAiCompletions,
            include_bytes!("../../../tests/fixtures/openai/completions_stream.sse"),
        ),
        (
            Api::OpenAiResponses,
            include_bytes!("../../../tests/fixtures/openai/responses.json"),
        ),
        (
            Api::OpenAiResponses,
            include_bytes!("../../../tests/fixtures/openai/responses_stream.sse"),
        ),
        (
            Api::OpenAiEmbeddings,
            include_bytes!("../../../tests/fixtures/openai/embeddings.json"),
        ),
        (
            Api::AnthropicMessages,
            include_bytes!("../../../tests/fixtures/anthropic/messages.json"),
        ),
        (
            Api::AnthropicMessages,
            include_bytes!("../../../tests/fixtures/anthropic/messages_stream.sse"),
        ),
        (
            Api::Gemini,
            include_bytes!("../../../tests/fixtures/gemini/generate_content.json"),
        ),
        (
            Api::Gemini,
            include_bytes!("../../../tests/fixtures/gemini/stream_generate_content.sse"),
        ),
        (
            Api::Gemini,
            include_bytes!("../../../tests/fixtures/gemini/stream_generate_content_array.json"),
        ),
    ];

    const REQUESTS: &[&[u8]] = &[
        br#"{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"hi"}]}"#,
        br#"{"model":"gpt-4o","stream":true,"stream_options":{"include_usage":false,"x":1},"max_tokens":9}"#,
        br#"{"model":"claude-sonnet-4-5","max_tokens":100,"stream":true,"messages":[]}"#,
        br#"{"contents":[],"generationConfig":{"maxOutputTokens":32}}"#,
    ];

    /// A fixture as sent, or damaged the way a network or a buggy server damages bodies:
    /// cut short, a few bytes inserted, one byte overwritten.
    fn damaged(base: &'static [u8]) -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            Just(base.to_vec()),
            any::<prop::sample::Index>().prop_map(move |at| base
                .get(..at.index(base.len() + 1))
                .unwrap_or(base)
                .to_vec()),
            (any::<prop::sample::Index>(), vec(any::<u8>(), 1..4)).prop_map(
                move |(at, inserted)| {
                    let mut bytes = base.to_vec();
                    let at = at.index(bytes.len() + 1);
                    bytes.splice(at..at, inserted);
                    bytes
                }
            ),
            (any::<prop::sample::Index>(), any::<u8>()).prop_map(move |(at, byte)| {
                let mut bytes = base.to_vec();
                if let Some(slot) = bytes.get_mut(at.index(base.len().max(1))) {
                    *slot = byte;
                }
                bytes
            }),
        ]
    }

    fn fixture() -> impl Strategy<Value = (Api, Vec<u8>)> {
        prop::sample::select(FIXTURES).prop_flat_map(|(api, base)| (Just(api), damaged(base)))
    }

    /// The sum of the digit runs in `bytes`: no count read from them can exceed it.
    fn digit_sum(bytes: &[u8]) -> u64 {
        let (total, run) = bytes.iter().fold((0u64, 0u64), |(total, run), &b| {
            if b.is_ascii_digit() {
                (
                    total,
                    run.saturating_mul(10).saturating_add(u64::from(b - b'0')),
                )
            } else {
                (total.saturating_add(run), 0)
            }
        });
        total.saturating_add(run)
    }

    fn billed(usage: &Usage) -> u64 {
        usage.total_input().saturating_add(usage.output)
    }

    proptest! {
        #[test]
        fn usage_never_exceeds_the_numbers_sent_and_streams_meter_the_same_however_cut(
            (api, bytes) in fixture(),
            sizes in vec(1usize..64, 1..6),
        ) {
            let bound = digit_sum(&bytes);
            if let Ok(metered) = api.usage_from_body(&bytes) {
                prop_assert!(billed(&metered.usage) <= bound);
            }
            let whole = meter_chunks(api, &[&bytes]);
            prop_assert_eq!(&meter_chunks(api, &cut(&bytes, &sizes)), &whole);
            if let Ok(metered) = &whole.0 {
                prop_assert!(billed(&metered.usage) <= bound);
            }
        }

        #[test]
        fn a_rewritten_request_keeps_every_other_key_and_reads_back_the_same(
            api in prop::sample::select(&Api::ALL[..]),
            body in prop::sample::select(REQUESTS).prop_flat_map(damaged),
        ) {
            let prepared = api.prepare_request(&body);
            prop_assert_eq!(prepared.rewritten.is_some(), prepared.strip_usage_from_client);
            if let Some(sent) = &prepared.rewritten {
                prop_assert!(api.rewrites_request() && prepared.stream);
                // A body that is JSON stays JSON (one whose ignored strings are not UTF-8 is
                // not, and is forwarded with the option all the same).
                if let Ok(mut original) = serde_json::from_slice::<serde_json::Value>(&body) {
                    let mut sent_value: serde_json::Value = serde_json::from_slice(sent).unwrap();
                    prop_assert_eq!(
                        sent_value.pointer("/stream_options/include_usage"),
                        Some(&serde_json::Value::Bool(true))
                    );
                    original.as_object_mut().unwrap().remove("stream_options");
                    sent_value.as_object_mut().unwrap().remove("stream_options");
                    prop_assert_eq!(original, sent_value);
                }
                let again = api.prepare_request(sent);
                prop_assert_eq!(
                    (again.model, again.stream, again.max_output_tokens, again.rewritten),
                    (prepared.model, prepared.stream, prepared.max_output_tokens, None)
                );
            }
        }
    }
}

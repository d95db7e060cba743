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
    let all = [
        Api::OpenAiChat,
        Api::OpenAiCompletions,
        Api::OpenAiResponses,
        Api::OpenAiEmbeddings,
        Api::AnthropicMessages,
        Api::Gemini,
    ];
    for api in all {
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

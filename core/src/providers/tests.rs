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

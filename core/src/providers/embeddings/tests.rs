use super::*;
use crate::providers::Api;

const BODY: &[u8] = include_bytes!("../../../../tests/fixtures/openai/embeddings.json");

#[test]
fn meters_prompt_tokens_as_input() {
    let metered = usage_from_body(BODY).unwrap();
    assert_eq!(
        metered,
        Metered {
            usage: Usage {
                input: 8,
                ..Usage::default()
            },
            model: Some("text-embedding-3-small".to_string()),
        }
    );
    assert_eq!(Api::OpenAiEmbeddings.usage_from_body(BODY), Ok(metered));
}

#[test]
fn body_cases() {
    let cases: [(&[u8], Result<u64, Unmetered>); 10] = [
        (b"", Err(Unmetered::Malformed)),
        (&BODY[..BODY.len() / 2], Err(Unmetered::Malformed)),
        (b"\xff\xfe", Err(Unmetered::Malformed)),
        (b"[{\"usage\":{\"prompt_tokens\":1}}]", Err(Unmetered::Malformed)),
        (b"{\"usage\":{\"prompt_tokens\":-8}}", Err(Unmetered::Malformed)),
        (b"{\"usage\":{\"prompt_tokens\":\"8\"}}", Err(Unmetered::Malformed)),
        (b"{\"object\":\"list\",\"data\":[]}", Err(Unmetered::NoUsage)),
        (b"{\"object\":\"list\",\"data\":[],\"usage\":null}", Err(Unmetered::NoUsage)),
        // Compatible servers may leave fields out; `total_tokens` is never charged.
        (b"{\"usage\":{\"total_tokens\":8}}", Ok(0)),
        (b"{\"model\":\"bge-m3\",\"usage\":{\"prompt_tokens\":512,\"total_tokens\":512,\"completion_tokens\":0}}", Ok(512)),
    ];
    for (body, want) in cases {
        assert_eq!(
            usage_from_body(body).map(|m| m.usage),
            want.map(|input| Usage {
                input,
                ..Usage::default()
            }),
            "{}",
            String::from_utf8_lossy(body)
        );
    }
}

#[test]
fn request_facts() {
    let cases: [(&[u8], Option<&str>); 4] = [
        (br#"{"model":"text-embedding-3-large","input":["a","b"],"dimensions":256,"encoding_format":"float"}"#, Some("text-embedding-3-large")),
        (br#"{"input":"a"}"#, None),
        (br#"{"model":7}"#, None),
        (b"\xff", None),
    ];
    for (body, model) in cases {
        let prepared = prepare_request(body);
        assert_eq!(
            prepared,
            PreparedRequest {
                model: model.map(str::to_string),
                ..PreparedRequest::default()
            }
        );
        assert_eq!(Api::OpenAiEmbeddings.prepare_request(body), prepared);
    }
}

#[test]
fn a_stream_is_read_as_openai_and_errors_are_openai_shaped() {
    let (metered, _) = crate::providers::meter_chunks(
        Api::OpenAiEmbeddings,
        &[b"data: {\"model\":\"bge-m3\",\"usage\":{\"prompt_tokens\":3}}\n\ndata: [DONE]\n\n"],
    );
    assert_eq!(
        metered.map(|m| m.usage.input),
        Ok(3),
        "an OpenAI-shaped usage chunk"
    );
    assert_eq!(
        Api::OpenAiEmbeddings.error_body(ErrorKind::PermissionDenied, "who?"),
        error_body(ErrorKind::PermissionDenied, "who?")
    );
    let body: serde_json::Value =
        serde_json::from_slice(&error_body(ErrorKind::PermissionDenied, "who?")).unwrap();
    assert_eq!(body["error"]["message"], "who?");
    assert_eq!(body["error"]["type"], "permission_denied");
}

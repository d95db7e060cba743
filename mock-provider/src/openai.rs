//! OpenAI Chat Completions, shaped like the real API so the filter's parser
//! is exercised on realistic bytes.

use std::borrow::Cow;

use bytes::Bytes;
use hyper::StatusCode;
use serde::de::IgnoredAny;
use serde::Deserialize;

use crate::body::{Reply, SseScript};
use crate::call::Call;
use crate::json::{mock_text, JsonBuf};
use crate::knobs::Knobs;
use crate::stats::Usage;

/// Borrowed from the request body unless it contains escapes, so parsing
/// the model name does not allocate.
#[derive(Deserialize)]
#[serde(transparent)]
pub struct Name<'a>(#[serde(borrow)] pub Cow<'a, str>);

#[derive(Deserialize)]
pub struct StreamOptions {
    include_usage: Option<bool>,
}

/// Whether a streamed OpenAI response carries usage: only when the client
/// asked for `stream_options.include_usage`.
pub fn include_usage(o: Option<StreamOptions>) -> bool {
    o.and_then(|o| o.include_usage).unwrap_or(false)
}

#[derive(Deserialize)]
struct ChatRequest<'a> {
    #[serde(borrow)]
    model: Option<Name<'a>>,
    // Required and must be an array; the contents are never looked at
    // (a Vec of a zero-sized type does not allocate).
    #[allow(dead_code)]
    messages: Vec<IgnoredAny>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
    max_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
}

/// The figures one response reports, clamped so the subsets hold: OpenAI's
/// input includes the cached tokens and its output the reasoning tokens.
pub fn usage_for(k: &Knobs, input: u64, output: u64) -> Usage {
    Usage {
        input_tokens: input,
        output_tokens: output,
        cached_tokens: k.cached_tokens.min(input),
        cache_write_tokens: 0,
        reasoning_tokens: k.reasoning_tokens.min(output),
    }
}

pub fn respond(k: &Knobs, body: &[u8], call: &Call) -> Result<Reply, String> {
    let req: ChatRequest =
        serde_json::from_slice(body).map_err(|e| format!("invalid request body: {e}"))?;
    let model = call.model(k.model, req.model.as_ref().map(|m| m.0.as_ref()));
    let output = k.output_tokens(req.max_completion_tokens.or(req.max_tokens));
    let usage = usage_for(k, k.input_tokens(body.len()), output);
    let (id, created) = (call.id, call.created);

    if req.stream == Some(true) {
        let usage = (include_usage(req.stream_options) && !k.no_usage).then_some(usage);
        let script = stream_script(id, created, model, usage.as_ref(), k.content_chunks(output));
        return Ok(Reply::Sse {
            script,
            usage,
            json: false,
        });
    }
    let usage = (!k.no_usage).then_some(usage);
    Ok(Reply::Json {
        status: StatusCode::OK,
        body: completion_json(id, created, model, usage.as_ref(), mock_text(output)),
        usage,
    })
}

fn write_usage(out: &mut JsonBuf, u: &Usage) {
    out.raw("{\"prompt_tokens\":")
        .num(u.input_tokens)
        .raw(",\"completion_tokens\":")
        .num(u.output_tokens)
        .raw(",\"total_tokens\":")
        .num(u.input_tokens.saturating_add(u.output_tokens))
        .raw(",\"prompt_tokens_details\":{\"cached_tokens\":")
        .num(u.cached_tokens)
        .raw(",\"audio_tokens\":0},\"completion_tokens_details\":{\"reasoning_tokens\":")
        .num(u.reasoning_tokens)
        .raw(",\"audio_tokens\":0,\"accepted_prediction_tokens\":0,\"rejected_prediction_tokens\":0}}");
}

pub fn completion_json(
    id: u64,
    created: u64,
    model: &str,
    usage: Option<&Usage>,
    text: &str,
) -> Vec<u8> {
    let mut out = JsonBuf::with_capacity(640 + model.len() + text.len());
    out.raw("{\"id\":\"chatcmpl-mock-")
        .num(id)
        .raw("\",\"object\":\"chat.completion\",\"created\":")
        .num(created)
        .raw(",\"model\":")
        .str(model)
        .raw(",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":")
        .str(text)
        .raw(",\"refusal\":null},\"logprobs\":null,\"finish_reason\":\"stop\"}]");
    if let Some(u) = usage {
        out.raw(",\"usage\":");
        write_usage(&mut out, u);
    }
    out.raw(",\"system_fingerprint\":\"fp_mock\"}");
    out.into_vec()
}

/// How the OpenAI-style streams (chat and legacy completions) frame a chunk: the shared
/// head `prefix`, the chunk's own fields, then `suffix`, which carries `"usage":null` on every
/// chunk when the client asked for usage, as the real API does.
pub fn chunk_framer(
    prefix: &[u8],
    with_usage: bool,
) -> (impl Fn(&str, &[u8]) -> Bytes + '_, &'static [u8]) {
    let suffix: &'static [u8] = if with_usage {
        b",\"usage\":null}\n\n"
    } else {
        b"}\n\n"
    };
    let event = move |middle: &str, suffix: &[u8]| {
        let mut e = Vec::with_capacity(prefix.len() + middle.len() + suffix.len());
        e.extend_from_slice(prefix);
        e.extend_from_slice(middle.as_bytes());
        e.extend_from_slice(suffix);
        Bytes::from(e)
    };
    (event, suffix)
}

/// The chunk sequence of a streamed completion. `usage` is `Some` exactly
/// when the client asked for `include_usage` (and the mock is not told to
/// withhold it): then every chunk carries `"usage":null` and a final
/// `choices: []` chunk carries the figures, as the real API does.
pub fn stream_script(
    id: u64,
    created: u64,
    model: &str,
    usage: Option<&Usage>,
    content_chunks: u64,
) -> SseScript {
    let mut prefix = JsonBuf::with_capacity(160 + model.len());
    prefix
        .raw("data: {\"id\":\"chatcmpl-mock-")
        .num(id)
        .raw("\",\"object\":\"chat.completion.chunk\",\"created\":")
        .num(created)
        .raw(",\"model\":")
        .str(model)
        .raw(",\"system_fingerprint\":\"fp_mock\",");
    let prefix = prefix.into_vec();
    let (event, suffix) = chunk_framer(&prefix, usage.is_some());

    let mut s = SseScript::default();
    s.push(event(
        "\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"logprobs\":null,\"finish_reason\":null}]",
        suffix,
    ));
    s.push_repeated(
        event(
            "\"choices\":[{\"index\":0,\"delta\":{\"content\":\"tok \"},\"logprobs\":null,\"finish_reason\":null}]",
            suffix,
        ),
        content_chunks,
    );
    s.push(event(
        "\"choices\":[{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":\"stop\"}]",
        suffix,
    ));
    if let Some(u) = usage {
        let mut tail = JsonBuf::with_capacity(320);
        tail.raw(",\"usage\":");
        write_usage(&mut tail, u);
        tail.raw("}\n\n");
        s.push(event("\"choices\":[]", &tail.into_vec()));
    }
    s.push(Bytes::from_static(b"data: [DONE]\n\n"));
    s
}

pub fn error_json(kind: &str, message: &str) -> Vec<u8> {
    let mut out = JsonBuf::with_capacity(96 + message.len());
    out.raw("{\"error\":{\"message\":")
        .str(message)
        .raw(",\"type\":")
        .str(kind)
        .raw(",\"param\":null,\"code\":null}}");
    out.into_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::{HeaderMap, HeaderValue};
    use serde_json::{json, Value};

    fn knobs(h: &HeaderMap) -> Knobs<'_> {
        Knobs::from_headers(h).unwrap()
    }

    fn respond(k: &Knobs, body: &[u8], id: u64, created: u64) -> Result<Reply, String> {
        super::respond(
            k,
            body,
            &Call {
                id,
                created,
                path_model: None,
            },
        )
    }

    fn data_json(ev: &Bytes) -> Value {
        let s = std::str::from_utf8(ev).unwrap();
        let payload = s
            .strip_prefix("data: ")
            .unwrap()
            .strip_suffix("\n\n")
            .unwrap();
        serde_json::from_str(payload).unwrap()
    }

    #[test]
    fn non_streaming_shape_and_clamping() {
        let mut h = HeaderMap::new();
        h.insert("x-mock-input-tokens", HeaderValue::from_static("10"));
        h.insert("x-mock-cached-tokens", HeaderValue::from_static("50"));
        h.insert("x-mock-reasoning-tokens", HeaderValue::from_static("2"));
        let body =
            br#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"max_tokens":3}"#;
        let Reply::Json {
            status,
            body,
            usage,
        } = respond(&knobs(&h), body, 7, 1000).unwrap()
        else {
            panic!("expected json");
        };
        assert_eq!(status, StatusCode::OK);
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["id"], "chatcmpl-mock-7");
        assert_eq!(v["model"], "gpt-4o");
        assert_eq!(v["choices"][0]["message"]["content"], "tok tok tok");
        assert_eq!(v["choices"][0]["message"]["refusal"], Value::Null);
        assert_eq!(
            v["usage"],
            json!({"prompt_tokens":10,"completion_tokens":3,"total_tokens":13,
                   "prompt_tokens_details":{"cached_tokens":10,"audio_tokens":0},
                   "completion_tokens_details":{"reasoning_tokens":2,"audio_tokens":0,
                       "accepted_prediction_tokens":0,"rejected_prediction_tokens":0}})
        );
        assert_eq!(v["system_fingerprint"], "fp_mock");
        let u = usage.unwrap();
        assert_eq!(
            (
                u.input_tokens,
                u.output_tokens,
                u.cached_tokens,
                u.reasoning_tokens
            ),
            (10, 3, 10, 2)
        );
    }

    #[test]
    fn defaults_from_body() {
        let h = HeaderMap::new();
        let body = br#"{"messages":[],"max_completion_tokens":100000,"max_tokens":5}"#;
        let Reply::Json {
            body: out, usage, ..
        } = respond(&knobs(&h), body, 1, 1).unwrap()
        else {
            panic!("expected json");
        };
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["model"], "mock-model");
        let u = usage.unwrap();
        assert_eq!(u.output_tokens, 4096);
        assert_eq!(u.input_tokens, (body.len() / 4) as u64);
    }

    #[test]
    fn stream_with_include_usage_ends_with_usage_chunk_and_done() {
        let mut h = HeaderMap::new();
        h.insert("x-mock-output-tokens", HeaderValue::from_static("4"));
        h.insert("x-mock-input-tokens", HeaderValue::from_static("9"));
        let body =
            br#"{"model":"m","messages":[],"stream":true,"stream_options":{"include_usage":true}}"#;
        let Reply::Sse { script, usage, .. } = respond(&knobs(&h), body, 3, 5).unwrap() else {
            panic!("expected sse");
        };
        assert_eq!(usage.unwrap().output_tokens, 4);
        let events = script.events();
        // first + 4 content + finish + usage + [DONE]
        assert_eq!(events.len(), 8);
        assert_eq!(events.last().unwrap(), "data: [DONE]\n\n");
        let first = data_json(&events[0]);
        assert_eq!(first["object"], "chat.completion.chunk");
        assert_eq!(
            first["choices"][0]["delta"],
            json!({"role":"assistant","content":""})
        );
        assert_eq!(first["usage"], Value::Null);
        assert!(first.as_object().unwrap().contains_key("usage"));
        for ev in &events[1..5] {
            assert_eq!(data_json(ev)["choices"][0]["delta"]["content"], "tok ");
        }
        let fin = data_json(&events[5]);
        assert_eq!(fin["choices"][0]["finish_reason"], "stop");
        assert_eq!(fin["choices"][0]["delta"], json!({}));
        let u = data_json(&events[6]);
        assert_eq!(u["choices"], json!([]));
        assert_eq!(u["usage"]["prompt_tokens"], 9);
        assert_eq!(u["usage"]["completion_tokens"], 4);
        assert_eq!(u["usage"]["total_tokens"], 13);
    }

    #[test]
    fn stream_without_include_usage_has_no_usage_at_all() {
        let mut h = HeaderMap::new();
        h.insert("x-mock-chunks", HeaderValue::from_static("2"));
        let body = br#"{"model":"m","messages":[],"stream":true}"#;
        let Reply::Sse { script, usage, .. } = respond(&knobs(&h), body, 3, 5).unwrap() else {
            panic!("expected sse");
        };
        assert!(usage.is_none());
        let events = script.events();
        assert_eq!(events.len(), 5);
        for ev in &events[..4] {
            assert!(!data_json(ev).as_object().unwrap().contains_key("usage"));
        }
    }

    #[test]
    fn azure_deployment_is_the_default_model() {
        let h = HeaderMap::new();
        let call = Call {
            id: 1,
            created: 1,
            path_model: Some("my-deployment"),
        };
        let Reply::Json { body, .. } =
            super::respond(&knobs(&h), br#"{"messages":[]}"#, &call).unwrap()
        else {
            panic!("expected json");
        };
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["model"], "my-deployment");
        let Reply::Json { body, .. } =
            super::respond(&knobs(&h), br#"{"model":"gpt-4o","messages":[]}"#, &call).unwrap()
        else {
            panic!("expected json");
        };
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["model"], "gpt-4o");
    }

    #[test]
    fn no_usage_knob_and_bad_bodies() {
        let mut h = HeaderMap::new();
        h.insert("x-mock-no-usage", HeaderValue::from_static("1"));
        let Reply::Json { body, usage, .. } =
            respond(&knobs(&h), br#"{"model":"m","messages":[]}"#, 1, 1).unwrap()
        else {
            panic!("expected json");
        };
        assert!(usage.is_none());
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert!(v.get("usage").is_none());

        let h = HeaderMap::new();
        for bad in [
            &b"{"[..],
            b"[]",
            b"{\"model\":\"m\"}",
            b"{\"messages\":{}}",
            b"{\"messages\":[],\"stream\":\"yes\"}",
            b"{\"messages\":[],\"max_tokens\":-1}",
        ] {
            assert!(respond(&knobs(&h), bad, 1, 1).is_err());
        }
    }
}

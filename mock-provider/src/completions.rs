//! OpenAI legacy Completions (`POST …/completions`, `"object":"text_completion"`).
//! Its usage has no cached or reasoning details, so those knobs do not apply.

use bytes::Bytes;
use hyper::StatusCode;
use serde::de::IgnoredAny;
use serde::Deserialize;

use crate::body::{Reply, SseScript};
use crate::call::Call;
use crate::json::{mock_text, JsonBuf};
use crate::knobs::Knobs;
use crate::openai::{include_usage, Name, StreamOptions};
use crate::stats::Usage;

#[derive(Deserialize)]
struct CompletionRequest<'a> {
    #[serde(borrow)]
    model: Option<Name<'a>>,
    // Required (a string, token array or list of either); never looked at.
    #[allow(dead_code)]
    prompt: IgnoredAny,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
    max_tokens: Option<u64>,
}

pub fn respond(k: &Knobs, body: &[u8], call: &Call) -> Result<Reply, String> {
    let req: CompletionRequest =
        serde_json::from_slice(body).map_err(|e| format!("invalid request body: {e}"))?;
    let model = call.model(k.model, req.model.as_ref().map(|m| m.0.as_ref()));
    let output = k.output_tokens(req.max_tokens);
    let usage = Usage {
        input_tokens: k.input_tokens(body.len()),
        output_tokens: output,
        ..Usage::default()
    };
    if req.stream == Some(true) {
        let usage = (include_usage(req.stream_options) && !k.no_usage).then_some(usage);
        let script = stream_script(call, model, usage.as_ref(), k.content_chunks(output));
        return Ok(Reply::Sse {
            script,
            usage,
            json: false,
        });
    }
    let usage = (!k.no_usage).then_some(usage);
    Ok(Reply::Json {
        status: StatusCode::OK,
        body: completion_json(call, model, usage.as_ref(), mock_text(output)),
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
        .raw("}");
}

fn write_head(out: &mut JsonBuf, call: &Call, model: &str) {
    out.raw("{\"id\":\"cmpl-mock-")
        .num(call.id)
        .raw("\",\"object\":\"text_completion\",\"created\":")
        .num(call.created)
        .raw(",\"model\":")
        .str(model);
}

pub fn completion_json(call: &Call, model: &str, usage: Option<&Usage>, text: &str) -> Vec<u8> {
    let mut out = JsonBuf::with_capacity(320 + model.len() + text.len());
    write_head(&mut out, call, model);
    out.raw(",\"choices\":[{\"text\":")
        .str(text)
        .raw(",\"index\":0,\"logprobs\":null,\"finish_reason\":\"stop\"}]");
    if let Some(u) = usage {
        out.raw(",\"usage\":");
        write_usage(&mut out, u);
    }
    out.raw("}");
    out.into_vec()
}

/// K `"tok "` chunks, a `finish_reason: "stop"` chunk, then (only with
/// `include_usage`) a `choices: []` chunk with the usage, and `[DONE]`. As in
/// Chat Completions, every chunk carries `"usage":null` when usage is included.
pub fn stream_script(
    call: &Call,
    model: &str,
    usage: Option<&Usage>,
    content_chunks: u64,
) -> SseScript {
    let mut prefix = JsonBuf::with_capacity(128 + model.len());
    prefix.raw("data: ");
    write_head(&mut prefix, call, model);
    let prefix = prefix.into_vec();
    let (event, suffix) = crate::openai::chunk_framer(&prefix, usage.is_some());

    let mut s = SseScript::default();
    s.push_repeated(
        event(
            ",\"choices\":[{\"text\":\"tok \",\"index\":0,\"logprobs\":null,\"finish_reason\":null}]",
            suffix,
        ),
        content_chunks,
    );
    s.push(event(
        ",\"choices\":[{\"text\":\"\",\"index\":0,\"logprobs\":null,\"finish_reason\":\"stop\"}]",
        suffix,
    ));
    if let Some(u) = usage {
        let mut tail = JsonBuf::with_capacity(96);
        tail.raw(",\"usage\":");
        write_usage(&mut tail, u);
        tail.raw("}\n\n");
        s.push(event(",\"choices\":[]", &tail.into_vec()));
    }
    s.push(Bytes::from_static(b"data: [DONE]\n\n"));
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::knobs::tests::headers;
    use serde_json::{json, Value};

    const CALL: Call = Call {
        id: 9,
        created: 77,
        path_model: None,
    };

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
    fn non_streaming_shape() {
        let h = headers(&[
            ("x-mock-input-tokens", "12"),
            ("x-mock-cached-tokens", "5"),
            ("x-mock-reasoning-tokens", "1"),
        ]);
        let k = Knobs::from_headers(&h).unwrap();
        let body = br#"{"model":"gpt-3.5-turbo-instruct","prompt":"Say hi","max_tokens":3}"#;
        let Reply::Json {
            status,
            body,
            usage,
        } = respond(&k, body, &CALL).unwrap()
        else {
            panic!("expected json");
        };
        assert_eq!(status, StatusCode::OK);
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            v,
            json!({"id":"cmpl-mock-9","object":"text_completion","created":77,
                   "model":"gpt-3.5-turbo-instruct",
                   "choices":[{"text":"tok tok tok","index":0,"logprobs":null,"finish_reason":"stop"}],
                   "usage":{"prompt_tokens":12,"completion_tokens":3,"total_tokens":15}})
        );
        // Cached and reasoning figures are not part of this format's usage.
        assert_eq!(
            usage.unwrap(),
            Usage {
                input_tokens: 12,
                output_tokens: 3,
                ..Usage::default()
            }
        );
    }

    #[test]
    fn stream_with_and_without_include_usage() {
        let h = headers(&[("x-mock-output-tokens", "3"), ("x-mock-input-tokens", "4")]);
        let k = Knobs::from_headers(&h).unwrap();
        let body = br#"{"model":"m","prompt":["a","b"],"stream":true,"stream_options":{"include_usage":true}}"#;
        let Reply::Sse {
            script,
            usage,
            json,
        } = respond(&k, body, &CALL).unwrap()
        else {
            panic!("expected sse");
        };
        assert!(!json);
        assert_eq!(usage.unwrap().output_tokens, 3);
        let events = script.events();
        // 3 content + finish + usage + [DONE]
        assert_eq!(events.len(), 6);
        for ev in &events[..3] {
            let v = data_json(ev);
            assert_eq!(v["object"], "text_completion");
            assert_eq!(v["id"], "cmpl-mock-9");
            assert_eq!(
                v["choices"],
                json!([{"text":"tok ","index":0,"logprobs":null,"finish_reason":null}])
            );
            assert_eq!(v["usage"], Value::Null);
        }
        assert_eq!(data_json(&events[3])["choices"][0]["finish_reason"], "stop");
        let u = data_json(&events[4]);
        assert_eq!(u["choices"], json!([]));
        assert_eq!(
            u["usage"],
            json!({"prompt_tokens":4,"completion_tokens":3,"total_tokens":7})
        );
        assert_eq!(events[5], "data: [DONE]\n\n");

        let body = br#"{"prompt":"x","stream":true}"#;
        let Reply::Sse { script, usage, .. } = respond(&k, body, &CALL).unwrap() else {
            panic!("expected sse");
        };
        assert!(usage.is_none());
        let events = script.events();
        assert_eq!(events.len(), 5);
        for ev in &events[..4] {
            let v = data_json(ev);
            assert!(v.get("usage").is_none());
            assert_eq!(v["model"], "mock-model");
        }
    }

    #[test]
    fn defaults_no_usage_and_bad_bodies() {
        let k = Knobs::default();
        let call = Call {
            path_model: Some("dep"),
            ..CALL
        };
        let Reply::Json { body, usage, .. } =
            respond(&k, br#"{"prompt":"hello","max_tokens":100000}"#, &call).unwrap()
        else {
            panic!("expected json");
        };
        assert_eq!(usage.unwrap().output_tokens, 4096);
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["model"], "dep");

        let h = headers(&[("x-mock-no-usage", "1")]);
        let k = Knobs::from_headers(&h).unwrap();
        let Reply::Json { body, usage, .. } = respond(&k, br#"{"prompt":"x"}"#, &CALL).unwrap()
        else {
            panic!("expected json");
        };
        assert!(usage.is_none());
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert!(v.get("usage").is_none());

        for bad in [
            &b"{"[..],
            b"{\"model\":\"m\"}",
            b"{\"prompt\":\"x\",\"max_tokens\":-1}",
            b"{\"prompt\":\"x\",\"stream\":1}",
        ] {
            assert!(respond(&k, bad, &CALL).is_err());
        }
    }
}

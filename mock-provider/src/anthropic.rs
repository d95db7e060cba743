//! Anthropic Messages, following the documented event sequence exactly,
//! because the filter reads usage from two places (message_start and the
//! cumulative message_delta).

use bytes::Bytes;
use hyper::StatusCode;
use serde::de::IgnoredAny;
use serde::Deserialize;

use crate::body::{Reply, SseScript};
use crate::json::{mock_text, JsonBuf};
use crate::knobs::Knobs;
use crate::openai::Name;
use crate::stats::Usage;

#[derive(Deserialize)]
struct MessagesRequest<'a> {
    #[serde(borrow)]
    model: Option<Name<'a>>,
    #[allow(dead_code)]
    messages: Vec<IgnoredAny>,
    // Required, as the real API requires it.
    max_tokens: u64,
    stream: Option<bool>,
}

pub fn respond(k: &Knobs, body: &[u8], id: u64) -> Result<Reply, String> {
    let req: MessagesRequest =
        serde_json::from_slice(body).map_err(|e| format!("invalid request body: {e}"))?;
    let model = k
        .model
        .or(req.model.as_ref().map(|m| m.0.as_ref()))
        .unwrap_or("mock-model");
    let output = k.output_tokens(Some(req.max_tokens));
    // Cache reads and writes are separate from input_tokens here, so no clamp.
    let usage = (!k.no_usage).then_some(Usage {
        input_tokens: k.input_tokens(body.len()),
        output_tokens: output,
        cached_tokens: k.cached_tokens,
        cache_write_tokens: k.cache_write_tokens,
        reasoning_tokens: 0,
    });
    if req.stream == Some(true) {
        let script = stream_script(id, model, usage.as_ref(), k.content_chunks(output));
        return Ok(Reply::Sse {
            script,
            usage,
            json: false,
        });
    }
    Ok(Reply::Json {
        status: StatusCode::OK,
        body: message_json(id, model, usage.as_ref(), mock_text(output)),
        usage,
    })
}

fn write_usage(out: &mut JsonBuf, u: &Usage, output_tokens: u64) {
    out.raw("{\"input_tokens\":")
        .num(u.input_tokens)
        .raw(",\"cache_creation_input_tokens\":")
        .num(u.cache_write_tokens)
        .raw(",\"cache_read_input_tokens\":")
        .num(u.cached_tokens)
        .raw(",\"output_tokens\":")
        .num(output_tokens)
        .raw("}");
}

fn write_message_head(out: &mut JsonBuf, id: u64, model: &str) {
    out.raw("{\"id\":\"msg_mock")
        .num(id)
        .raw("\",\"type\":\"message\",\"role\":\"assistant\",\"model\":")
        .str(model);
}

pub fn message_json(id: u64, model: &str, usage: Option<&Usage>, text: &str) -> Vec<u8> {
    let mut out = JsonBuf::with_capacity(384 + model.len() + text.len());
    write_message_head(&mut out, id, model);
    out.raw(",\"content\":[{\"type\":\"text\",\"text\":")
        .str(text)
        .raw("}],\"stop_reason\":\"end_turn\",\"stop_sequence\":null");
    if let Some(u) = usage {
        out.raw(",\"usage\":");
        write_usage(&mut out, u, u.output_tokens);
    }
    out.raw("}");
    out.into_vec()
}

fn event(name: &str, data: &str) -> Bytes {
    let mut e = JsonBuf::with_capacity(16 + name.len() + data.len());
    e.raw("event: ")
        .raw(name)
        .raw("\ndata: ")
        .raw(data)
        .raw("\n\n");
    e.into_bytes()
}

/// message_start reports input and cache figures with `output_tokens: 1`,
/// message_delta the cumulative final output, as the real API does.
pub fn stream_script(
    id: u64,
    model: &str,
    usage: Option<&Usage>,
    content_chunks: u64,
) -> SseScript {
    let mut start = JsonBuf::with_capacity(320 + model.len());
    start.raw("event: message_start\ndata: {\"type\":\"message_start\",\"message\":");
    write_message_head(&mut start, id, model);
    start.raw(",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null");
    if let Some(u) = usage {
        start.raw(",\"usage\":");
        write_usage(&mut start, u, 1);
    }
    start.raw("}}\n\n");

    let mut delta = JsonBuf::with_capacity(160);
    delta.raw("event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null}");
    if let Some(u) = usage {
        delta
            .raw(",\"usage\":{\"output_tokens\":")
            .num(u.output_tokens)
            .raw("}");
    }
    delta.raw("}\n\n");

    let mut s = SseScript::default();
    s.push(start.into_bytes());
    s.push(event(
        "content_block_start",
        r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
    ));
    s.push(event("ping", r#"{"type": "ping"}"#));
    s.push_repeated(
        event(
            "content_block_delta",
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"tok "}}"#,
        ),
        content_chunks,
    );
    s.push(event(
        "content_block_stop",
        r#"{"type":"content_block_stop","index":0}"#,
    ));
    s.push(delta.into_bytes());
    s.push(event("message_stop", r#"{"type":"message_stop"}"#));
    s
}

pub fn error_json(kind: &str, message: &str) -> Vec<u8> {
    let mut out = JsonBuf::with_capacity(80 + message.len());
    out.raw("{\"type\":\"error\",\"error\":{\"type\":")
        .str(kind)
        .raw(",\"message\":")
        .str(message)
        .raw("}}");
    out.into_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::knobs::tests::headers;
    use serde_json::{json, Value};

    fn parse_event(ev: &Bytes) -> (String, Value) {
        let s = std::str::from_utf8(ev).unwrap();
        let s = s.strip_suffix("\n\n").unwrap();
        let (name, data) = s.split_once('\n').unwrap();
        let name = name.strip_prefix("event: ").unwrap().to_owned();
        let data = data.strip_prefix("data: ").unwrap();
        (name, serde_json::from_str(data).unwrap())
    }

    #[test]
    fn non_streaming_usage_is_separate_from_input() {
        let h = headers(&[
            ("x-mock-input-tokens", "10"),
            ("x-mock-cached-tokens", "50"),
            ("x-mock-cache-write-tokens", "7"),
            ("x-mock-reasoning-tokens", "9"),
        ]);
        let k = Knobs::from_headers(&h).unwrap();
        let body = br#"{"model":"claude-x","messages":[],"max_tokens":2}"#;
        let Reply::Json { body, usage, .. } = respond(&k, body, 4).unwrap() else {
            panic!("expected json");
        };
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["id"], "msg_mock4");
        assert_eq!(v["type"], "message");
        assert_eq!(v["content"], json!([{"type":"text","text":"tok tok"}]));
        assert_eq!(v["stop_reason"], "end_turn");
        assert_eq!(
            v["usage"],
            json!({"input_tokens":10,"cache_creation_input_tokens":7,"cache_read_input_tokens":50,"output_tokens":2})
        );
        let u = usage.unwrap();
        assert_eq!(
            (u.cached_tokens, u.cache_write_tokens, u.reasoning_tokens),
            (50, 7, 0)
        );
    }

    #[test]
    fn stream_event_order() {
        let h = headers(&[("x-mock-input-tokens", "11"), ("x-mock-output-tokens", "3")]);
        let k = Knobs::from_headers(&h).unwrap();
        let body = br#"{"model":"claude-x","messages":[],"max_tokens":100,"stream":true}"#;
        let Reply::Sse { script, usage, .. } = respond(&k, body, 4).unwrap() else {
            panic!("expected sse");
        };
        assert_eq!(usage.unwrap().output_tokens, 3);
        let events: Vec<_> = script.events().iter().map(parse_event).collect();
        let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "message_start",
                "content_block_start",
                "ping",
                "content_block_delta",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        for (name, data) in &events {
            assert_eq!(data["type"], name.as_str());
        }
        let start = &events[0].1["message"];
        assert_eq!(start["id"], "msg_mock4");
        assert_eq!(start["content"], json!([]));
        assert_eq!(start["usage"]["input_tokens"], 11);
        assert_eq!(start["usage"]["output_tokens"], 1);
        assert_eq!(
            events[3].1["delta"],
            json!({"type":"text_delta","text":"tok "})
        );
        assert_eq!(events[7].1["usage"], json!({"output_tokens":3}));
        assert_eq!(events[7].1["delta"]["stop_reason"], "end_turn");
    }

    #[test]
    fn no_usage_stream_and_required_fields() {
        let h = headers(&[("x-mock-no-usage", "1")]);
        let k = Knobs::from_headers(&h).unwrap();
        let body = br#"{"model":"c","messages":[],"max_tokens":1,"stream":true}"#;
        let Reply::Sse { script, usage, .. } = respond(&k, body, 1).unwrap() else {
            panic!("expected sse");
        };
        assert!(usage.is_none());
        let events: Vec<_> = script.events().iter().map(parse_event).collect();
        assert!(events[0].1["message"].get("usage").is_none());
        assert!(events[events.len() - 2].1.get("usage").is_none());

        let k = Knobs::default();
        assert!(respond(&k, br#"{"model":"c","messages":[]}"#, 1).is_err());
        assert!(respond(&k, br#"{"model":"c","max_tokens":1}"#, 1).is_err());
        assert!(respond(&k, b"not json", 1).is_err());
    }
}

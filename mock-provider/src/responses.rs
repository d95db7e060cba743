//! OpenAI Responses (`POST …/responses`): a `response` object, or the
//! documented semantic event stream ending in `response.completed`, which is
//! the only event that carries usage.

use bytes::Bytes;
use hyper::StatusCode;
use serde::de::IgnoredAny;
use serde::Deserialize;

use crate::body::{Reply, SseScript};
use crate::call::Call;
use crate::json::{mock_text, streamed_text, JsonBuf};
use crate::knobs::Knobs;
use crate::openai::{usage_for, Name};
use crate::stats::Usage;

#[derive(Deserialize)]
struct ResponsesRequest<'a> {
    #[serde(borrow)]
    model: Option<Name<'a>>,
    // Required (a string or a list of input items); never looked at.
    #[allow(dead_code)]
    input: IgnoredAny,
    max_output_tokens: Option<u64>,
    stream: Option<bool>,
}

pub fn respond(k: &Knobs, body: &[u8], call: &Call) -> Result<Reply, String> {
    let req: ResponsesRequest =
        serde_json::from_slice(body).map_err(|e| format!("invalid request body: {e}"))?;
    let model = call.model(k.model, req.model.as_ref().map(|m| m.0.as_ref()));
    let output = k.output_tokens(req.max_output_tokens);
    // Same clamping as Chat Completions: input includes cached tokens,
    // output includes reasoning tokens.
    let usage = (!k.no_usage).then(|| usage_for(k, k.input_tokens(body.len()), output));
    let r = Resp {
        call,
        model,
        max_output_tokens: req.max_output_tokens,
    };
    if req.stream == Some(true) {
        let script = r.stream_script(usage.as_ref(), k.content_chunks(output));
        return Ok(Reply::Sse {
            script,
            usage,
            json: false,
        });
    }
    let mut out = JsonBuf::with_capacity(1024 + model.len() + mock_text(output).len());
    r.write_response(&mut out, Some(mock_text(output)), usage.as_ref());
    Ok(Reply::Json {
        status: StatusCode::OK,
        body: out.into_vec(),
        usage,
    })
}

fn write_usage(out: &mut JsonBuf, u: &Usage) {
    out.raw("{\"input_tokens\":")
        .num(u.input_tokens)
        .raw(",\"input_tokens_details\":{\"cached_tokens\":")
        .num(u.cached_tokens)
        .raw("},\"output_tokens\":")
        .num(u.output_tokens)
        .raw(",\"output_tokens_details\":{\"reasoning_tokens\":")
        .num(u.reasoning_tokens)
        .raw("},\"total_tokens\":")
        .num(u.input_tokens.saturating_add(u.output_tokens))
        .raw("}");
}

/// The parts of one response every event repeats.
struct Resp<'a> {
    call: &'a Call<'a>,
    model: &'a str,
    max_output_tokens: Option<u64>,
}

impl Resp<'_> {
    fn write_msg_id(&self, out: &mut JsonBuf) {
        out.raw("\"msg_mock").num(self.call.id).raw("\"");
    }

    /// An `output_text` content part.
    fn write_part(out: &mut JsonBuf, text: &str) {
        out.raw("{\"type\":\"output_text\",\"annotations\":[],\"logprobs\":[],\"text\":")
            .str(text)
            .raw("}");
    }

    /// The assistant message item: in progress with no content, or completed.
    fn write_item(&self, out: &mut JsonBuf, text: Option<&str>) {
        out.raw("{\"id\":");
        self.write_msg_id(out);
        match text {
            None => {
                out.raw(",\"type\":\"message\",\"status\":\"in_progress\",\"content\":[");
            }
            Some(t) => {
                out.raw(",\"type\":\"message\",\"status\":\"completed\",\"content\":[");
                Self::write_part(out, t);
            }
        }
        out.raw("],\"role\":\"assistant\"}");
    }

    /// The `response` object: completed with its message when `text` is
    /// given, else in progress with no output. Usage only when completed.
    fn write_response(&self, out: &mut JsonBuf, text: Option<&str>, usage: Option<&Usage>) {
        out.raw("{\"id\":\"resp_mock")
            .num(self.call.id)
            .raw("\",\"object\":\"response\",\"created_at\":")
            .num(self.call.created)
            .raw(",\"status\":")
            .raw(if text.is_some() {
                "\"completed\""
            } else {
                "\"in_progress\""
            })
            .raw(",\"error\":null,\"incomplete_details\":null,\"instructions\":null,\"max_output_tokens\":");
        match self.max_output_tokens {
            Some(n) => out.num(n),
            None => out.raw("null"),
        };
        out.raw(",\"model\":").str(self.model).raw(",\"output\":[");
        if text.is_some() {
            self.write_item(out, text);
        }
        out.raw(
            "],\"parallel_tool_calls\":true,\"previous_response_id\":null,\
             \"reasoning\":{\"effort\":null,\"summary\":null},\"store\":true,\"temperature\":1.0,\
             \"text\":{\"format\":{\"type\":\"text\"}},\"tool_choice\":\"auto\",\"tools\":[],\
             \"top_p\":1.0,\"truncation\":\"disabled\",\"usage\":",
        );
        match (text, usage) {
            (Some(_), Some(u)) => write_usage(out, u),
            _ => {
                out.raw("null");
            }
        }
        out.raw(",\"user\":null,\"metadata\":{}}");
    }

    /// Appends `event: {kind}\ndata: {"type":"{kind}","sequence_number":N,`
    /// (the caller writes the rest of the object and calls `end_event`).
    fn start_event(out: &mut JsonBuf, kind: &str, seq: u64) {
        out.raw("event: ")
            .raw(kind)
            .raw("\ndata: {\"type\":\"")
            .raw(kind)
            .raw("\",\"sequence_number\":")
            .num(seq)
            .raw(",");
    }

    /// Closes the event and records where it ends.
    fn end_event(out: &mut JsonBuf, ends: &mut Vec<usize>) {
        out.raw("}\n\n");
        ends.push(out.len());
    }

    /// `"item_id":"msg_…","output_index":0,"content_index":0`
    fn write_text_location(&self, out: &mut JsonBuf) {
        out.raw("\"item_id\":");
        self.write_msg_id(out);
        out.raw(",\"output_index\":0,\"content_index\":0");
    }

    /// The documented event sequence for one text message, numbered from 0.
    /// The K deltas differ only by their sequence number, so they are
    /// generated as the stream is sent rather than built up front.
    fn stream_script(&self, usage: Option<&Usage>, deltas: u64) -> SseScript {
        let text = streamed_text(deltas);
        let mut s = SseScript::default();

        let mut ends = Vec::with_capacity(4);
        let mut head = JsonBuf::with_capacity(2048 + 2 * self.model.len());
        for (seq, kind) in [(0, "response.created"), (1, "response.in_progress")] {
            Self::start_event(&mut head, kind, seq);
            head.raw("\"response\":");
            self.write_response(&mut head, None, None);
            Self::end_event(&mut head, &mut ends);
        }
        Self::start_event(&mut head, "response.output_item.added", 2);
        head.raw("\"output_index\":0,\"item\":");
        self.write_item(&mut head, None);
        Self::end_event(&mut head, &mut ends);
        Self::start_event(&mut head, "response.content_part.added", 3);
        self.write_text_location(&mut head);
        head.raw(",\"part\":");
        Self::write_part(&mut head, "");
        Self::end_event(&mut head, &mut ends);
        // One buffer for the four opening events, each handed out as a slice.
        push_slices(&mut s, head.into_bytes(), &mut ends);

        let mut before = JsonBuf::with_capacity(128);
        before.raw("event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"sequence_number\":");
        let mut after = JsonBuf::with_capacity(128);
        after.raw(",");
        self.write_text_location(&mut after);
        after.raw(",\"delta\":\"tok \",\"logprobs\":[]}\n\n");
        let (before, after) = (before.into_vec(), after.into_vec());
        s.push_generated(
            deltas,
            Box::new(move |i, out| {
                out.bytes(&before).num(i.saturating_add(4)).bytes(&after);
            }),
        );

        let seq = deltas.saturating_add(4);
        let mut tail = JsonBuf::with_capacity(2048 + 3 * text.len() + self.model.len());
        Self::start_event(&mut tail, "response.output_text.done", seq);
        self.write_text_location(&mut tail);
        tail.raw(",\"text\":").str(text).raw(",\"logprobs\":[]");
        Self::end_event(&mut tail, &mut ends);
        Self::start_event(
            &mut tail,
            "response.content_part.done",
            seq.saturating_add(1),
        );
        self.write_text_location(&mut tail);
        tail.raw(",\"part\":");
        Self::write_part(&mut tail, text);
        Self::end_event(&mut tail, &mut ends);
        Self::start_event(
            &mut tail,
            "response.output_item.done",
            seq.saturating_add(2),
        );
        tail.raw("\"output_index\":0,\"item\":");
        self.write_item(&mut tail, Some(text));
        Self::end_event(&mut tail, &mut ends);
        Self::start_event(&mut tail, "response.completed", seq.saturating_add(3));
        tail.raw("\"response\":");
        self.write_response(&mut tail, Some(text), usage);
        Self::end_event(&mut tail, &mut ends);
        push_slices(&mut s, tail.into_bytes(), &mut ends);
        s
    }
}

/// Pushes the events of `buf` (ending at `ends`) as slices of the one buffer.
fn push_slices(s: &mut SseScript, buf: Bytes, ends: &mut Vec<usize>) {
    let mut at = 0;
    for &end in ends.iter() {
        s.push(buf.slice(at..end));
        at = end;
    }
    ends.clear();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::knobs::tests::headers;
    use serde_json::{json, Value};

    const CALL: Call = Call {
        id: 5,
        created: 1700,
        path_model: None,
    };

    fn parse_event(ev: &Bytes) -> (String, Value) {
        let s = std::str::from_utf8(ev).unwrap();
        let s = s.strip_suffix("\n\n").unwrap();
        let (name, data) = s.split_once('\n').unwrap();
        let name = name.strip_prefix("event: ").unwrap().to_owned();
        let data = data.strip_prefix("data: ").unwrap();
        (name, serde_json::from_str(data).unwrap())
    }

    #[test]
    fn non_streaming_response_object() {
        let h = headers(&[
            ("x-mock-input-tokens", "100"),
            ("x-mock-cached-tokens", "40"),
            ("x-mock-reasoning-tokens", "2"),
        ]);
        let k = Knobs::from_headers(&h).unwrap();
        let body = br#"{"model":"gpt-5","input":"hi","max_output_tokens":3}"#;
        let Reply::Json { body, usage, .. } = respond(&k, body, &CALL).unwrap() else {
            panic!("expected json");
        };
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["id"], "resp_mock5");
        assert_eq!(v["object"], "response");
        assert_eq!(v["created_at"], 1700);
        assert_eq!(v["status"], "completed");
        assert_eq!(v["model"], "gpt-5");
        assert_eq!(v["max_output_tokens"], 3);
        assert_eq!(
            v["output"],
            json!([{"id":"msg_mock5","type":"message","status":"completed","role":"assistant",
                    "content":[{"type":"output_text","annotations":[],"logprobs":[],"text":"tok tok tok"}]}])
        );
        assert_eq!(
            v["usage"],
            json!({"input_tokens":100,"input_tokens_details":{"cached_tokens":40},
                   "output_tokens":3,"output_tokens_details":{"reasoning_tokens":2},
                   "total_tokens":103})
        );
        let u = usage.unwrap();
        assert_eq!(
            (
                u.input_tokens,
                u.output_tokens,
                u.cached_tokens,
                u.reasoning_tokens
            ),
            (100, 3, 40, 2)
        );
    }

    #[test]
    fn stream_event_sequence() {
        let h = headers(&[
            ("x-mock-input-tokens", "10"),
            ("x-mock-output-tokens", "7"),
            ("x-mock-chunks", "3"),
            ("x-mock-cached-tokens", "99"),
            ("x-mock-reasoning-tokens", "4"),
        ]);
        let k = Knobs::from_headers(&h).unwrap();
        let body = br#"{"input":[{"role":"user","content":"x"}],"stream":true}"#;
        let Reply::Sse {
            script,
            usage,
            json,
        } = respond(&k, body, &CALL).unwrap()
        else {
            panic!("expected sse");
        };
        assert!(!json);
        let u = usage.unwrap();
        assert_eq!((u.cached_tokens, u.reasoning_tokens), (10, 4));
        let events: Vec<_> = script.events().iter().map(parse_event).collect();
        let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.completed",
            ]
        );
        for (i, (name, data)) in events.iter().enumerate() {
            assert_eq!(data["type"], name.as_str());
            assert_eq!(data["sequence_number"], i as u64);
        }
        let created = &events[0].1["response"];
        assert_eq!(created["status"], "in_progress");
        assert_eq!(created["output"], json!([]));
        assert_eq!(created["usage"], Value::Null);
        assert_eq!(created["model"], "mock-model");
        assert_eq!(
            events[2].1["item"],
            json!({"id":"msg_mock5","type":"message","status":"in_progress","content":[],"role":"assistant"})
        );
        assert_eq!(events[3].1["part"]["text"], "");
        for (_, d) in &events[4..7] {
            assert_eq!(d["delta"], "tok ");
            assert_eq!(d["item_id"], "msg_mock5");
            assert_eq!(
                (d["output_index"].as_u64(), d["content_index"].as_u64()),
                (Some(0), Some(0))
            );
        }
        assert_eq!(events[7].1["text"], "tok tok tok ");
        assert_eq!(events[8].1["part"]["text"], "tok tok tok ");
        assert_eq!(events[9].1["item"]["status"], "completed");
        let done = &events[10].1["response"];
        assert_eq!(done["status"], "completed");
        assert_eq!(done["output"][0]["content"][0]["text"], "tok tok tok ");
        assert_eq!(
            done["usage"],
            json!({"input_tokens":10,"input_tokens_details":{"cached_tokens":10},
                   "output_tokens":7,"output_tokens_details":{"reasoning_tokens":4},
                   "total_tokens":17})
        );
    }

    #[test]
    fn many_deltas_keep_counting_and_no_usage_is_null() {
        let h = headers(&[("x-mock-chunks", "1000"), ("x-mock-no-usage", "1")]);
        let k = Knobs::from_headers(&h).unwrap();
        let Reply::Sse { script, usage, .. } =
            respond(&k, br#"{"input":"x","stream":true}"#, &CALL).unwrap()
        else {
            panic!("expected sse");
        };
        assert!(usage.is_none());
        let events: Vec<_> = script.events().iter().map(parse_event).collect();
        assert_eq!(events.len(), 1008);
        for (i, (_, d)) in events.iter().enumerate() {
            assert_eq!(d["sequence_number"], i as u64);
        }
        let done = &events[1007].1["response"];
        assert_eq!(done["status"], "completed");
        assert_eq!(done["usage"], Value::Null);
    }

    #[test]
    fn defaults_and_bad_bodies() {
        let k = Knobs::default();
        let Reply::Json { usage, body, .. } =
            respond(&k, br#"{"input":"x","max_output_tokens":9999}"#, &CALL).unwrap()
        else {
            panic!("expected json");
        };
        assert_eq!(usage.unwrap().output_tokens, 4096);
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["max_output_tokens"], 9999);
        let Reply::Json { usage, .. } = respond(&k, br#"{"input":"x"}"#, &CALL).unwrap() else {
            panic!("expected json");
        };
        assert_eq!(usage.unwrap().output_tokens, 16);
        for bad in [
            &b"nope"[..],
            b"{\"model\":\"m\"}",
            b"{\"input\":\"x\",\"max_output_tokens\":\"5\"}",
        ] {
            assert!(respond(&k, bad, &CALL).is_err());
        }
    }
}

//! Google Gemini `generateContent` / `streamGenerateContent` (Gemini API and
//! Vertex AI paths).
//!
//! Knob mapping: `promptTokenCount` = input (it INCLUDES the cached tokens, as
//! OpenAI's prompt_tokens does), `cachedContentTokenCount` = cached (clamped to
//! ≤ input), `thoughtsTokenCount` = reasoning (clamped to ≤ output) and
//! `candidatesTokenCount` = output − thoughts, so candidates + thoughts is the
//! output figure. Zero cached/thoughts counts are omitted, as Google does.

use hyper::StatusCode;
use serde::de::IgnoredAny;
use serde::Deserialize;

use crate::body::{Reply, SseScript};
use crate::call::Call;
use crate::json::{mock_text, JsonBuf};
use crate::knobs::Knobs;
use crate::stats::Usage;

/// How the response is delivered, from the method and the `alt` parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `:generateContent`: one JSON response.
    Unary,
    /// `:streamGenerateContent?alt=sse`: `data: {…}\r\n\r\n` events.
    Sse,
    /// `:streamGenerateContent` without `alt=sse`: one JSON array of the
    /// same chunks, sent as they are produced.
    JsonArray,
}

#[derive(Deserialize)]
struct GenerationConfig {
    // The API accepts both the JSON (camelCase) and proto (snake_case) names.
    #[serde(rename = "maxOutputTokens", alias = "max_output_tokens")]
    max_output_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct GenerateRequest {
    // Required and must be an array; the contents are never looked at.
    #[allow(dead_code)]
    contents: Vec<IgnoredAny>,
    #[serde(rename = "generationConfig", alias = "generation_config")]
    generation_config: Option<GenerationConfig>,
}

/// The figures one response reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Counts {
    prompt: u64,
    cached: u64,
    candidates: u64,
    thoughts: u64,
}

impl Counts {
    fn usage(self) -> Usage {
        Usage {
            input_tokens: self.prompt,
            output_tokens: self.candidates.saturating_add(self.thoughts),
            cached_tokens: self.cached,
            cache_write_tokens: 0,
            reasoning_tokens: self.thoughts,
        }
    }

    /// `"usageMetadata":{…}` with `candidates` as the candidates count so
    /// far (a stream reports it cumulatively).
    fn write(self, out: &mut JsonBuf, candidates: u64) {
        out.raw(",\"usageMetadata\":{\"promptTokenCount\":")
            .num(self.prompt)
            .raw(",\"candidatesTokenCount\":")
            .num(candidates)
            .raw(",\"totalTokenCount\":")
            .num(
                self.prompt
                    .saturating_add(candidates)
                    .saturating_add(self.thoughts),
            );
        if self.cached > 0 {
            out.raw(",\"cachedContentTokenCount\":").num(self.cached);
        }
        if self.thoughts > 0 {
            out.raw(",\"thoughtsTokenCount\":").num(self.thoughts);
        }
        out.raw("}");
    }
}

pub fn respond(k: &Knobs, body: &[u8], call: &Call, mode: Mode) -> Result<Reply, String> {
    let req: GenerateRequest =
        serde_json::from_slice(body).map_err(|e| format!("invalid request body: {e}"))?;
    // The model comes from the URL; Gemini request bodies do not name it.
    let model = call.model(k.model, None);
    let output = k.output_tokens(req.generation_config.and_then(|g| g.max_output_tokens));
    let prompt = k.input_tokens(body.len());
    let thoughts = k.reasoning_tokens.min(output);
    let counts = (!k.no_usage).then_some(Counts {
        prompt,
        cached: k.cached_tokens.min(prompt),
        candidates: output.saturating_sub(thoughts),
        thoughts,
    });
    let usage = counts.map(Counts::usage);

    // `"modelVersion":…,"responseId":…}` closes every response and chunk.
    let mut tail = JsonBuf::with_capacity(48 + model.len());
    tail.raw(",\"modelVersion\":")
        .str(model)
        .raw(",\"responseId\":\"mock")
        .num(call.id)
        .raw("\"}");
    let tail = tail.into_vec();

    if mode == Mode::Unary {
        let text = mock_text(output.saturating_sub(thoughts));
        let mut out = JsonBuf::with_capacity(256 + text.len() + tail.len());
        out.raw("{\"candidates\":[{\"content\":{\"parts\":[{\"text\":")
            .str(text)
            .raw("}],\"role\":\"model\"},\"finishReason\":\"STOP\",\"index\":0}]");
        if let Some(c) = counts {
            c.write(&mut out, c.candidates);
        }
        out.bytes(&tail);
        return Ok(Reply::Json {
            status: StatusCode::OK,
            body: out.into_vec(),
            usage,
        });
    }

    let chunks = k.content_chunks(output);
    Ok(Reply::Sse {
        script: stream_script(chunks, counts, tail, mode == Mode::Sse),
        usage,
        json: mode == Mode::JsonArray,
    })
}

/// K chunks of one `"tok "` text part each (an explicit `x-mock-chunks: 0`
/// sends a single chunk with empty text). Each carries the usage so far:
/// candidatesTokenCount grows to its final value on the last chunk, which
/// also carries `finishReason: "STOP"`. The chunks differ, so they are
/// generated as the stream is sent.
fn stream_script(chunks: u64, counts: Option<Counts>, tail: Vec<u8>, sse: bool) -> SseScript {
    let n = chunks.max(1);
    let text = if chunks == 0 { "" } else { "tok " };
    let mut s = SseScript::default();
    s.push_generated(
        n,
        Box::new(move |i, out| {
            let last = i.saturating_add(1) >= n;
            out.raw(match (sse, i) {
                (true, _) => "data: ",
                (false, 0) => "[",
                (false, _) => ",\r\n",
            })
            .raw("{\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"")
            .raw(text)
            .raw("\"}],\"role\":\"model\"}");
            if last {
                out.raw(",\"finishReason\":\"STOP\"");
            }
            out.raw(",\"index\":0}]");
            if let Some(c) = counts {
                // candidates × (i+1) / n, exact on the last chunk.
                let so_far =
                    u128::from(c.candidates) * u128::from(i.saturating_add(1)) / u128::from(n);
                c.write(out, u64::try_from(so_far).unwrap_or(c.candidates));
            }
            out.bytes(&tail).raw(match (sse, last) {
                (true, _) => "\r\n\r\n",
                (false, true) => "]",
                (false, false) => "",
            });
        }),
    );
    s
}

/// The `google.rpc.Status` name Google pairs with an HTTP status.
fn status_name(code: u16) -> &'static str {
    match code {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        409 => "ABORTED",
        413 => "INVALID_ARGUMENT",
        429 => "RESOURCE_EXHAUSTED",
        499 => "CANCELLED",
        500 => "INTERNAL",
        501 => "UNIMPLEMENTED",
        503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        _ => "UNKNOWN",
    }
}

/// `{"error":{"code":N,"message":…,"status":"…"}}`
pub fn error_json(status: StatusCode, message: &str) -> Vec<u8> {
    let code = status.as_u16();
    let mut out = JsonBuf::with_capacity(80 + message.len());
    out.raw("{\"error\":{\"code\":")
        .num(u64::from(code))
        .raw(",\"message\":")
        .str(message)
        .raw(",\"status\":\"")
        .raw(status_name(code))
        .raw("\"}}");
    out.into_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::knobs::tests::headers;
    use bytes::Bytes;
    use serde_json::{json, Value};

    const CALL: Call = Call {
        id: 3,
        created: 0,
        path_model: Some("gemini-2.5-flash"),
    };
    const BODY: &[u8] = br#"{"contents":[{"role":"user","parts":[{"text":"hi"}]}]}"#;

    fn sse_json(ev: &Bytes) -> Value {
        let s = std::str::from_utf8(ev).unwrap();
        let payload = s
            .strip_prefix("data: ")
            .unwrap()
            .strip_suffix("\r\n\r\n")
            .unwrap();
        serde_json::from_str(payload).unwrap()
    }

    #[test]
    fn unary_shape_and_knob_mapping() {
        let h = headers(&[
            ("x-mock-input-tokens", "100"),
            ("x-mock-cached-tokens", "30"),
            ("x-mock-output-tokens", "10"),
            ("x-mock-reasoning-tokens", "4"),
            ("x-mock-cache-write-tokens", "9"),
        ]);
        let k = Knobs::from_headers(&h).unwrap();
        let Reply::Json { body, usage, .. } = respond(&k, BODY, &CALL, Mode::Unary).unwrap() else {
            panic!("expected json");
        };
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            v,
            json!({"candidates":[{"content":{"parts":[{"text":"tok tok tok tok tok tok"}],"role":"model"},
                                  "finishReason":"STOP","index":0}],
                   "usageMetadata":{"promptTokenCount":100,"candidatesTokenCount":6,"totalTokenCount":110,
                                    "cachedContentTokenCount":30,"thoughtsTokenCount":4},
                   "modelVersion":"gemini-2.5-flash","responseId":"mock3"})
        );
        assert_eq!(
            usage.unwrap(),
            Usage {
                input_tokens: 100,
                output_tokens: 10,
                cached_tokens: 30,
                cache_write_tokens: 0,
                reasoning_tokens: 4,
            }
        );
    }

    #[test]
    fn zero_counts_are_omitted_and_clamps_hold() {
        let h = headers(&[
            ("x-mock-input-tokens", "5"),
            ("x-mock-cached-tokens", "50"),
            ("x-mock-reasoning-tokens", "99"),
            ("x-mock-model", "other"),
        ]);
        let k = Knobs::from_headers(&h).unwrap();
        let body = br#"{"contents":[],"generationConfig":{"maxOutputTokens":3}}"#;
        let Reply::Json { body, usage, .. } = respond(&k, body, &CALL, Mode::Unary).unwrap() else {
            panic!("expected json");
        };
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            v["usageMetadata"],
            json!({"promptTokenCount":5,"candidatesTokenCount":0,"totalTokenCount":8,
                   "cachedContentTokenCount":5,"thoughtsTokenCount":3})
        );
        assert_eq!(v["modelVersion"], "other");
        let u = usage.unwrap();
        assert_eq!(
            (u.output_tokens, u.reasoning_tokens, u.cached_tokens),
            (3, 3, 5)
        );

        let k = Knobs::default();
        let body = br#"{"contents":[],"generation_config":{"max_output_tokens":2}}"#;
        let Reply::Json { body, usage, .. } = respond(&k, body, &CALL, Mode::Unary).unwrap() else {
            panic!("expected json");
        };
        let v: Value = serde_json::from_slice(&body).unwrap();
        let meta = v["usageMetadata"].as_object().unwrap();
        assert!(!meta.contains_key("cachedContentTokenCount"));
        assert!(!meta.contains_key("thoughtsTokenCount"));
        assert_eq!(usage.unwrap().output_tokens, 2);
    }

    #[test]
    fn sse_chunks_report_cumulative_usage() {
        let h = headers(&[
            ("x-mock-input-tokens", "20"),
            ("x-mock-output-tokens", "12"),
            ("x-mock-reasoning-tokens", "2"),
            ("x-mock-chunks", "4"),
        ]);
        let k = Knobs::from_headers(&h).unwrap();
        let Reply::Sse {
            script,
            usage,
            json,
        } = respond(&k, BODY, &CALL, Mode::Sse).unwrap()
        else {
            panic!("expected stream");
        };
        assert!(!json);
        assert_eq!(usage.unwrap().output_tokens, 12);
        let events: Vec<Value> = script.events().iter().map(sse_json).collect();
        assert_eq!(events.len(), 4);
        let mut last = 0;
        for (i, e) in events.iter().enumerate() {
            let c = &e["candidates"][0];
            assert_eq!(
                c["content"],
                json!({"parts":[{"text":"tok "}],"role":"model"})
            );
            assert_eq!(c.get("finishReason").is_some(), i == 3);
            let m = &e["usageMetadata"];
            assert_eq!(m["promptTokenCount"], 20);
            assert_eq!(m["thoughtsTokenCount"], 2);
            let cand = m["candidatesTokenCount"].as_u64().unwrap();
            assert!(cand >= last);
            last = cand;
            assert_eq!(m["totalTokenCount"].as_u64().unwrap(), 20 + 2 + cand);
            assert_eq!(e["modelVersion"], "gemini-2.5-flash");
            assert_eq!(e["responseId"], "mock3");
        }
        assert_eq!(last, 10);
        assert_eq!(events[3]["candidates"][0]["finishReason"], "STOP");
    }

    #[test]
    fn json_array_stream_is_one_valid_array() {
        let h = headers(&[("x-mock-output-tokens", "5"), ("x-mock-input-tokens", "7")]);
        let k = Knobs::from_headers(&h).unwrap();
        let Reply::Sse { script, json, .. } = respond(&k, BODY, &CALL, Mode::JsonArray).unwrap()
        else {
            panic!("expected stream");
        };
        assert!(json);
        let events = script.events();
        assert_eq!(events.len(), 5);
        assert!(events[0].starts_with(b"[{"));
        assert!(events[1].starts_with(b",\r\n{"));
        assert!(events[4].ends_with(b"}]"));
        let all: Vec<u8> = events.concat();
        let v: Value = serde_json::from_slice(&all).unwrap();
        let arr = v.as_array().unwrap();
        assert_eq!(arr.len(), 5);
        for (i, e) in arr.iter().enumerate() {
            assert_eq!(e["usageMetadata"]["candidatesTokenCount"], i as u64 + 1);
        }
        assert_eq!(arr[4]["usageMetadata"]["totalTokenCount"], 12);
    }

    #[test]
    fn zero_chunks_and_no_usage() {
        let h = headers(&[("x-mock-chunks", "0"), ("x-mock-no-usage", "1")]);
        let k = Knobs::from_headers(&h).unwrap();
        let Reply::Sse { script, usage, .. } = respond(&k, BODY, &CALL, Mode::Sse).unwrap() else {
            panic!("expected stream");
        };
        assert!(usage.is_none());
        let events = script.events();
        assert_eq!(events.len(), 1);
        let e = sse_json(&events[0]);
        assert_eq!(e["candidates"][0]["content"]["parts"][0]["text"], "");
        assert_eq!(e["candidates"][0]["finishReason"], "STOP");
        assert!(e.get("usageMetadata").is_none());
    }

    #[test]
    fn errors_and_bad_bodies() {
        let v: Value =
            serde_json::from_slice(&error_json(StatusCode::TOO_MANY_REQUESTS, "slow \"down\""))
                .unwrap();
        assert_eq!(
            v,
            json!({"error":{"code":429,"message":"slow \"down\"","status":"RESOURCE_EXHAUSTED"}})
        );
        let v: Value =
            serde_json::from_slice(&error_json(StatusCode::from_u16(599).unwrap(), "x")).unwrap();
        assert_eq!(v["error"]["status"], "UNKNOWN");

        let k = Knobs::default();
        for bad in [
            &b"{"[..],
            b"{}",
            b"{\"contents\":{}}",
            b"{\"contents\":[],\"generationConfig\":{\"maxOutputTokens\":-1}}",
        ] {
            assert!(respond(&k, bad, &CALL, Mode::Unary).is_err());
        }
    }
}

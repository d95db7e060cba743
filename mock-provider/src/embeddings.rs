//! OpenAI Embeddings (`POST …/embeddings`): one fixed 8-dimension vector per
//! input, usage `{prompt_tokens, total_tokens}` and no output tokens.

use std::fmt;

use hyper::StatusCode;
use serde::de::{Error as _, IgnoredAny, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};

use crate::body::Reply;
use crate::call::Call;
use crate::json::JsonBuf;
use crate::knobs::Knobs;
use crate::openai::Name;
use crate::stats::Usage;

/// The real API's limit on inputs per request; also bounds the response size.
pub const MAX_INPUTS: u64 = 2048;

/// Every embedding the mock returns, as JSON floats ...
const VECTOR: &str = "[0.125,-0.25,0.5,-0.0625,0.375,-0.75,0.03125,0.875]";
/// ... and as `encoding_format: "base64"` (the same 8 little-endian f32s).
const VECTOR_BASE64: &str = "\"AAAAPgAAgL4AAAA/AACAvQAAwD4AAEC/AAAAPQAAYD8=\"";

/// How many embeddings `input` asks for: 1 for a string or one token array,
/// N for an array of N strings or N token arrays. Nothing is allocated.
struct InputCount(u64);

/// One element of an `input` array: is it a token (number)?
struct IsToken(bool);

impl<'de> Deserialize<'de> for IsToken {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = IsToken;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string, a token or an array of tokens")
            }
            fn visit_u64<E>(self, _: u64) -> Result<IsToken, E> {
                Ok(IsToken(true))
            }
            fn visit_i64<E>(self, _: i64) -> Result<IsToken, E> {
                Ok(IsToken(true))
            }
            fn visit_str<E>(self, _: &str) -> Result<IsToken, E> {
                Ok(IsToken(false))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<IsToken, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(IsToken(false))
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for InputCount {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = InputCount;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or a non-empty array")
            }
            fn visit_str<E>(self, _: &str) -> Result<InputCount, E> {
                Ok(InputCount(1))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<InputCount, A::Error> {
                let (mut n, mut tokens) = (0u64, false);
                while let Some(IsToken(t)) = seq.next_element()? {
                    tokens |= t;
                    n = n.saturating_add(1);
                }
                match (n, tokens) {
                    (0, _) => Err(A::Error::invalid_length(0, &self)),
                    (_, true) => Ok(InputCount(1)),
                    (n, false) => Ok(InputCount(n)),
                }
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Deserialize)]
struct EmbeddingsRequest<'a> {
    #[serde(borrow)]
    model: Option<Name<'a>>,
    input: InputCount,
    #[serde(borrow)]
    encoding_format: Option<Name<'a>>,
}

pub fn respond(k: &Knobs, body: &[u8], call: &Call) -> Result<Reply, String> {
    let req: EmbeddingsRequest =
        serde_json::from_slice(body).map_err(|e| format!("invalid request body: {e}"))?;
    let n = req.input.0;
    if n > MAX_INPUTS {
        return Err(format!(
            "invalid request body: input has {n} items, at most {MAX_INPUTS} are allowed"
        ));
    }
    let vector = match req.encoding_format.as_ref().map(|f| f.0.as_ref()) {
        None | Some("float") => VECTOR,
        Some("base64") => VECTOR_BASE64,
        Some(other) => {
            return Err(format!(
                "invalid request body: encoding_format must be float or base64, got {other:?}"
            ))
        }
    };
    let model = call.model(k.model, req.model.as_ref().map(|m| m.0.as_ref()));
    let usage = (!k.no_usage).then(|| Usage {
        input_tokens: k.input_tokens(body.len()),
        ..Usage::default()
    });
    Ok(Reply::Json {
        status: StatusCode::OK,
        body: embeddings_json(n, vector, model, usage.as_ref()),
        usage,
    })
}

fn embeddings_json(n: u64, vector: &str, model: &str, usage: Option<&Usage>) -> Vec<u8> {
    let per_item = 48 + vector.len();
    let items = usize::try_from(n).unwrap_or(0);
    let mut out = JsonBuf::with_capacity(128 + model.len() + items.saturating_mul(per_item));
    out.raw("{\"object\":\"list\",\"data\":[");
    for i in 0..n {
        if i > 0 {
            out.raw(",");
        }
        out.raw("{\"object\":\"embedding\",\"index\":")
            .num(i)
            .raw(",\"embedding\":")
            .raw(vector)
            .raw("}");
    }
    out.raw("],\"model\":").str(model);
    if let Some(u) = usage {
        out.raw(",\"usage\":{\"prompt_tokens\":")
            .num(u.input_tokens)
            .raw(",\"total_tokens\":")
            .num(u.input_tokens)
            .raw("}");
    }
    out.raw("}");
    out.into_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::{HeaderMap, HeaderValue};
    use serde_json::{json, Value};

    const CALL: Call = Call {
        id: 1,
        created: 1,
        path_model: None,
    };

    fn run(k: &Knobs, body: &[u8]) -> (Value, Option<Usage>) {
        let Reply::Json { body, usage, .. } = respond(k, body, &CALL).unwrap() else {
            panic!("expected json");
        };
        (serde_json::from_slice(&body).unwrap(), usage)
    }

    #[test]
    fn shape_and_usage() {
        let mut h = HeaderMap::new();
        h.insert("x-mock-input-tokens", HeaderValue::from_static("8"));
        h.insert("x-mock-output-tokens", HeaderValue::from_static("50"));
        h.insert("x-mock-cached-tokens", HeaderValue::from_static("3"));
        let k = Knobs::from_headers(&h).unwrap();
        let (v, usage) = run(&k, br#"{"model":"text-embedding-3-small","input":"hello"}"#);
        assert_eq!(
            v,
            json!({"object":"list",
                   "data":[{"object":"embedding","index":0,
                            "embedding":[0.125,-0.25,0.5,-0.0625,0.375,-0.75,0.03125,0.875]}],
                   "model":"text-embedding-3-small",
                   "usage":{"prompt_tokens":8,"total_tokens":8}})
        );
        // Only input is reported: no output, cached or reasoning figures.
        assert_eq!(
            usage.unwrap(),
            Usage {
                input_tokens: 8,
                ..Usage::default()
            }
        );
    }

    #[test]
    fn one_embedding_per_input() {
        let k = Knobs::default();
        for (input, n) in [
            (r#""a""#, 1),
            (r#"["a","b","c"]"#, 3),
            (r#"[1,2,3]"#, 1),
            (r#"[[1,2],[3],[4,5,6]]"#, 3),
        ] {
            let body = format!(r#"{{"input":{input}}}"#);
            let (v, _) = run(&k, body.as_bytes());
            let data = v["data"].as_array().unwrap();
            assert_eq!(data.len(), n, "{input}");
            for (i, d) in data.iter().enumerate() {
                assert_eq!(d["index"], i);
            }
            assert_eq!(v["model"], "mock-model");
        }
    }

    #[test]
    fn base64_encoding_is_the_same_vector() {
        let k = Knobs::default();
        let (v, _) = run(&k, br#"{"input":"a","encoding_format":"base64"}"#);
        let b64 = v["data"][0]["embedding"].as_str().unwrap();
        // Decode by hand: 4 base64 chars carry 3 bytes.
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut bits = Vec::new();
        for c in b64.bytes().filter(|&c| c != b'=') {
            let x = alphabet.iter().position(|&a| a == c).unwrap() as u32;
            bits.push(x);
        }
        let mut bytes = Vec::new();
        for q in bits.chunks(4) {
            let mut acc = 0u32;
            for (i, &x) in q.iter().enumerate() {
                acc |= x << (18 - 6 * i);
            }
            for i in 0..q.len() - 1 {
                bytes.push((acc >> (16 - 8 * i)) as u8);
            }
        }
        let floats: Vec<f32> = bytes
            .chunks(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        let expected: Vec<f32> = serde_json::from_str(VECTOR).unwrap();
        assert_eq!(floats, expected);
    }

    #[test]
    fn no_usage_and_bad_bodies() {
        let mut h = HeaderMap::new();
        h.insert("x-mock-no-usage", HeaderValue::from_static("1"));
        let k = Knobs::from_headers(&h).unwrap();
        let (v, usage) = run(&k, br#"{"input":"a"}"#);
        assert!(usage.is_none());
        assert!(v.get("usage").is_none());

        let k = Knobs::default();
        let too_many = format!(r#"{{"input":[{}]}}"#, vec![r#""x""#; 2049].join(","));
        for bad in [
            &b"{"[..],
            b"{}",
            b"{\"input\":[]}",
            b"{\"input\":5}",
            b"{\"input\":null}",
            b"{\"input\":[{}]}",
            b"{\"input\":\"a\",\"encoding_format\":\"hex\"}",
            too_many.as_bytes(),
        ] {
            assert!(
                respond(&k, bad, &CALL).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}

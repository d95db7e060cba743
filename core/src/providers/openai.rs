//! OpenAI Chat Completions (and OpenAI-compatible servers).
//!
//! Usage: `usage.prompt_tokens` (cached ones included, listed again in
//! `prompt_tokens_details.cached_tokens`), `usage.completion_tokens` (reasoning included,
//! listed in `completion_tokens_details.reasoning_tokens`). Streams report usage only when
//! the request sets `stream_options.include_usage`, in one extra chunk with `choices: []`
//! before `data: [DONE]`; the filter sets it when the client did not, and then removes that
//! chunk from what the client sees. The other chunks of such a stream carry
//! `"usage": null`, which every client library reads exactly as an absent field, so they are
//! passed through untouched rather than rewritten.

use super::{
    has_usage_object, string_values_len, Capabilities, ErrorKind, EventFate, Metered, ModelIn,
    PreparedRequest, Progress, Unmetered,
};
use crate::degrade;
use crate::sse::SseEvent;
use crate::usage::Usage;
use serde::Deserialize;
use serde_json::{Map, Value};

/// The model is the body's; streams get `include_usage` when the client did not ask for it.
pub(crate) const CAPABILITIES: Capabilities = Capabilities {
    model_in: ModelIn::Body,
    rewrites_request: true,
};

#[derive(Debug, Deserialize)]
struct Response {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Debug, Deserialize)]
struct StreamChunk {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    usage: Option<WireUsage>,
    #[serde(default)]
    choices: Option<Vec<serde::de::IgnoredAny>>,
}

#[derive(Debug, Deserialize)]
struct WireUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
    #[serde(default)]
    prompt_tokens_details: Option<PromptDetails>,
    #[serde(default)]
    completion_tokens_details: Option<CompletionDetails>,
}

#[derive(Debug, Deserialize)]
struct PromptDetails {
    #[serde(default)]
    cached_tokens: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct CompletionDetails {
    #[serde(default)]
    reasoning_tokens: Option<u64>,
}

impl WireUsage {
    fn to_usage(&self) -> Usage {
        let cached = self
            .prompt_tokens_details
            .as_ref()
            .and_then(|d| d.cached_tokens)
            .unwrap_or(0)
            .min(self.prompt_tokens);
        Usage {
            input: self.prompt_tokens - cached,
            cache_read: cached,
            output: self.completion_tokens,
            reasoning: self
                .completion_tokens_details
                .as_ref()
                .and_then(|d| d.reasoning_tokens)
                .unwrap_or(0),
            ..Usage::default()
        }
    }
}

#[derive(Debug, Deserialize)]
struct RequestFields {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    /// Chat: `max_completion_tokens` (current) or `max_tokens` (older); completions: `max_tokens`.
    #[serde(default)]
    max_completion_tokens: Option<u64>,
    #[serde(default)]
    max_tokens: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

pub fn prepare_request(body: &[u8]) -> PreparedRequest {
    // The typed read skips everything else (messages) without building it; only a stream
    // that needs `include_usage` is parsed into a tree and written back.
    let Ok(fields) = serde_json::from_slice::<RequestFields>(body) else {
        // Not ours to judge: the provider answers malformed requests itself.
        return PreparedRequest::default();
    };
    let stream = fields.stream.unwrap_or(false);
    let mut prepared = PreparedRequest {
        model: fields.model,
        stream,
        max_output_tokens: fields.max_completion_tokens.or(fields.max_tokens),
        ..PreparedRequest::default()
    };
    let asked = fields
        .stream_options
        .and_then(|o| o.include_usage)
        .unwrap_or(false);
    if !stream || asked {
        return prepared;
    }
    // Only the option's bytes change: a re-serialized body would respell the client's
    // numbers (a float parsed and printed again can move by one ulp, an integer past u64
    // turns into a float), which the provider would then read differently.
    if let Some(body) = with_usage_report(body) {
        prepared.rewritten = Some(body);
        prepared.strip_usage_from_client = true;
        return prepared;
    }
    // Unreachable for JSON serde_json accepted, but never leave the report unasked:
    // re-serialize (key order kept, formatting normalized).
    let Ok(Value::Object(mut request)) = serde_json::from_slice::<Value>(body) else {
        return prepared;
    };
    let options = request
        .entry("stream_options")
        .or_insert_with(|| Value::Object(Map::new()));
    if !options.is_object() {
        *options = Value::Object(Map::new());
    }
    if let Value::Object(options) = options {
        options.insert("include_usage".to_string(), Value::Bool(true));
    }
    if let Ok(body) = serde_json::to_vec(&request) {
        prepared.rewritten = Some(body);
        prepared.strip_usage_from_client = true;
    }
    prepared
}

/// `body` (a JSON object serde_json accepted, with at most one `stream_options`, an object
/// or null) with `stream_options.include_usage` set to true, every other byte as sent. A new
/// member goes last, where the client's own members stay ahead of it.
fn with_usage_report(body: &[u8]) -> Option<Vec<u8>> {
    const REPORT: &[u8] = br#"{"include_usage":true}"#;
    let request = degrade::members(body, "stream_options")?;
    match request.values.as_slice() {
        [] => Some(append_member(
            body,
            request.close,
            br#""stream_options":"#,
            REPORT,
        )),
        [span] => {
            let options = body.get(span.clone())?;
            let mut out = body.get(..span.start)?.to_vec();
            if options.first() == Some(&b'{') {
                let inner = degrade::members(options, "include_usage")?;
                let mut rest = 0;
                for value in &inner.values {
                    out.extend_from_slice(options.get(rest..value.start)?);
                    out.extend_from_slice(b"true");
                    rest = value.end;
                }
                if inner.values.is_empty() {
                    out.extend_from_slice(&append_member(
                        options,
                        inner.close,
                        br#""include_usage":"#,
                        b"true",
                    ));
                } else {
                    out.extend_from_slice(options.get(rest..)?);
                }
            } else {
                // `null`: the option object replaces it.
                out.extend_from_slice(REPORT);
            }
            out.extend_from_slice(body.get(span.end..)?);
            Some(out)
        }
        // Typed parsing refuses a repeated field, so such a body is never rewritten.
        _ => None,
    }
}

/// The JSON object in `object`, whose closing brace is at `close`, with `"key":value` added
/// as its last member.
fn append_member(object: &[u8], close: usize, key: &[u8], value: &[u8]) -> Vec<u8> {
    let (head, tail) = object.split_at(close.min(object.len()));
    let empty = head.trim_ascii_end().ends_with(b"{");
    let mut out = Vec::with_capacity(object.len() + key.len() + value.len() + 1);
    out.extend_from_slice(head);
    if !empty {
        out.push(b',');
    }
    out.extend_from_slice(key);
    out.extend_from_slice(value);
    out.extend_from_slice(tail);
    out
}

pub fn usage_from_body(body: &[u8]) -> Result<Metered, Unmetered> {
    let response: Response = serde_json::from_slice(body).map_err(|_| Unmetered::Malformed)?;
    let usage = response.usage.ok_or(Unmetered::NoUsage)?;
    Ok(Metered {
        usage: usage.to_usage(),
        model: response.model,
    })
}

#[derive(Debug, Clone, Default)]
pub struct StreamMeter {
    metered: Option<Metered>,
    malformed: bool,
    model: Option<String>,
    text_bytes: u64,
}

#[derive(Debug, Deserialize)]
struct ChunkModel {
    #[serde(default)]
    model: Option<String>,
}

/// Keys whose string values are generated text in chat (`content`, `refusal`, tool-call
/// `arguments`, compatible servers' `reasoning_content`) and legacy completion (`text`) chunks.
const TEXT_KEYS: [&str; 5] = [
    "content",
    "refusal",
    "arguments",
    "reasoning_content",
    "text",
];

impl StreamMeter {
    pub fn on_event(&mut self, event: &SseEvent) -> EventFate {
        if !has_usage_object(&event.data) {
            if super::has_corrupt_usage(&event.data) {
                self.malformed = true;
            }
            if self.model.is_none() && event.data.first() == Some(&b'{') {
                // Once per stream: the model, for pricing a stream that never reports usage.
                self.model = serde_json::from_slice::<ChunkModel>(&event.data)
                    .ok()
                    .and_then(|c| c.model);
            }
            let text: u64 = TEXT_KEYS
                .iter()
                .map(|key| string_values_len(&event.data, key))
                .sum();
            self.text_bytes = self.text_bytes.saturating_add(text);
            return EventFate::Forward;
        }
        match serde_json::from_slice::<StreamChunk>(&event.data) {
            Ok(StreamChunk {
                model,
                usage: Some(usage),
                choices,
            }) => {
                self.metered = Some(Metered {
                    usage: usage.to_usage(),
                    model,
                });
                if choices.is_none_or(|c| c.is_empty()) {
                    EventFate::UsageOnly
                } else {
                    EventFate::Forward
                }
            }
            Ok(_) => EventFate::Forward,
            Err(_) => {
                self.malformed = true;
                EventFate::Forward
            }
        }
    }

    pub fn finish(&self) -> Result<Metered, Unmetered> {
        match &self.metered {
            Some(metered) => Ok(metered.clone()),
            None if self.malformed => Err(Unmetered::Malformed),
            None => Err(Unmetered::NoUsage),
        }
    }

    /// OpenAI reports nothing before the final usage chunk: input must be estimated.
    pub fn progress(&self) -> Progress {
        Progress {
            reported: Usage::default(),
            input_reported: false,
            model: self.model.clone(),
            text_bytes: self.text_bytes,
        }
    }
}

pub fn error_body(kind: ErrorKind, message: &str) -> Vec<u8> {
    let (kind, code) = match kind {
        ErrorKind::BudgetExceeded => ("budget_exceeded", "budget_exceeded"),
        ErrorKind::InvalidRequest => ("invalid_request_error", "agent_not_identified"),
        ErrorKind::PermissionDenied => ("permission_denied", "agent_unknown"),
        ErrorKind::Unavailable => ("service_unavailable", "budget_unavailable"),
    };
    let body = serde_json::json!({
        "error": {"message": message, "type": kind, "param": null, "code": code}
    });
    serde_json::to_vec(&body).unwrap_or_default()
}

#[cfg(test)]
mod tests;

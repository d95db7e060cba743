//! OpenAI Responses (`/v1/responses`).
//!
//! Usage: `usage.input_tokens` (cached ones included, listed again in
//! `input_tokens_details.cached_tokens`), `usage.output_tokens` (reasoning included, listed in
//! `output_tokens_details.reasoning_tokens`). Streams are typed SSE events (`event: <type>`
//! plus a JSON `data` whose `type` repeats it) and always end with one terminal event,
//! `response.completed`, `response.incomplete` or `response.failed`, whose `response` object
//! carries the final `usage` (possibly `null` for a failure): no request rewrite is needed.
//! Only the terminal events (and `response.created`, once, for the model) are parsed; text
//! deltas are measured without parsing.

use super::{
    has_usage_object, string_values_len, Capabilities, ErrorKind, EventFate, Metered, ModelIn,
    PreparedRequest, Progress, Unmetered,
};
use crate::sse::SseEvent;
use crate::usage::Usage;
use serde::Deserialize;

/// The model is the body's; every stream reports its usage unasked.
pub(crate) const CAPABILITIES: Capabilities = Capabilities {
    model_in: ModelIn::Body,
    rewrites_request: false,
};

#[derive(Debug, Deserialize)]
struct Response {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Debug, Deserialize)]
struct WireUsage {
    #[serde(default)]
    input_tokens: u64,
    #[serde(default)]
    output_tokens: u64,
    #[serde(default)]
    input_tokens_details: Option<InputDetails>,
    #[serde(default)]
    output_tokens_details: Option<OutputDetails>,
}

#[derive(Debug, Deserialize)]
struct InputDetails {
    #[serde(default)]
    cached_tokens: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct OutputDetails {
    #[serde(default)]
    reasoning_tokens: Option<u64>,
}

impl WireUsage {
    fn to_usage(&self) -> Usage {
        let cached = self
            .input_tokens_details
            .as_ref()
            .and_then(|d| d.cached_tokens)
            .unwrap_or(0)
            .min(self.input_tokens);
        Usage {
            input: self.input_tokens.saturating_sub(cached),
            cache_read: cached,
            output: self.output_tokens,
            reasoning: self
                .output_tokens_details
                .as_ref()
                .and_then(|d| d.reasoning_tokens)
                .unwrap_or(0),
            ..Usage::default()
        }
    }
}

/// The model and stream flag; the body is never rewritten, since every stream ends with a
/// usage report anyway.
pub fn prepare_request(body: &[u8]) -> PreparedRequest {
    super::common_request(body)
}

pub fn usage_from_body(body: &[u8]) -> Result<Metered, Unmetered> {
    let response: Response = serde_json::from_slice(body).map_err(|_| Unmetered::Malformed)?;
    let usage = response.usage.ok_or(Unmetered::NoUsage)?;
    Ok(Metered {
        usage: usage.to_usage(),
        model: response.model,
    })
}

/// A lifecycle event (`response.created`, `response.completed`...): its `response` object.
#[derive(Debug, Deserialize)]
struct Lifecycle {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    response: Option<Response>,
}

/// Events that end a stream; each carries the final response object, usage included.
const TERMINAL: [&str; 3] = [
    "response.completed",
    "response.incomplete",
    "response.failed",
];

/// Events that open a stream, carrying the response object (model included, usage null);
/// `response.queued` opens a background response's stream.
const OPENING: [&str; 3] = [
    "response.created",
    "response.queued",
    "response.in_progress",
];

/// Events whose `delta` string is generated text: answer, reasoning (summary or raw),
/// refusal, tool-call arguments.
const TEXT_DELTAS: [&str; 5] = [
    "response.output_text.delta",
    "response.reasoning_summary_text.delta",
    "response.reasoning_text.delta",
    "response.refusal.delta",
    "response.function_call_arguments.delta",
];

#[derive(Debug, Clone, Default)]
pub struct StreamMeter {
    metered: Option<Metered>,
    model: Option<String>,
    /// A lifecycle event was seen: the stream is a Responses stream that should end with a
    /// terminal event.
    started: bool,
    /// A terminal event was seen (with or without usage).
    ended: bool,
    malformed: bool,
    /// A terminal event outgrew the SSE parser's cap: its usage, near the end of the
    /// response object (after the whole output), was cut off.
    too_large: bool,
    text_bytes: u64,
}

impl StreamMeter {
    pub fn on_event(&mut self, event: &SseEvent) -> EventFate {
        let named = event.event.as_deref().filter(|name| !name.is_empty());
        // Servers that omit `event:` lines still name the type in the JSON.
        let kind = named.or_else(|| sniff_type(&event.data));
        match kind {
            Some(kind) if TEXT_DELTAS.contains(&kind) => {
                let text = string_values_len(&event.data, "delta");
                self.text_bytes = self.text_bytes.saturating_add(text);
            }
            Some(kind) if TERMINAL.contains(&kind) => {
                if event.truncated {
                    self.started = true;
                    self.ended = true;
                    self.too_large = true;
                } else {
                    self.on_terminal(serde_json::from_slice::<Lifecycle>(&event.data).ok());
                }
            }
            Some(kind) if OPENING.contains(&kind) => {
                self.started = true;
                if self.model.is_none() {
                    // Once per stream: the model, for pricing a stream cut before the end.
                    // A malformed opening event is no reason to give up on the final usage.
                    self.model = serde_json::from_slice::<Lifecycle>(&event.data)
                        .ok()
                        .and_then(|l| l.response)
                        .and_then(|r| r.model);
                }
            }
            // No `event:` line, and the first `type` key was a nested one: only a usage
            // report matters, so parse the event if it holds one.
            _ if named.is_none() && has_usage_object(&event.data) => {
                match serde_json::from_slice::<Lifecycle>(&event.data) {
                    Ok(lifecycle) => {
                        if lifecycle
                            .kind
                            .as_deref()
                            .is_some_and(|kind| TERMINAL.contains(&kind))
                        {
                            self.on_terminal(Some(lifecycle));
                        }
                    }
                    Err(_) => self.malformed = true,
                }
            }
            _ => {}
        }
        EventFate::Forward
    }

    /// A terminal event, parsed (`None` if it was not valid JSON).
    fn on_terminal(&mut self, lifecycle: Option<Lifecycle>) {
        self.started = true;
        self.ended = true;
        let Some(lifecycle) = lifecycle else {
            self.malformed = true;
            return;
        };
        let Some(response) = lifecycle.response else {
            return;
        };
        let model = response.model.or_else(|| self.model.clone());
        if let Some(usage) = response.usage {
            self.metered = Some(Metered {
                usage: usage.to_usage(),
                model: model.clone(),
            });
        }
        self.model = model;
    }

    pub fn finish(&self) -> Result<Metered, Unmetered> {
        match &self.metered {
            Some(metered) => Ok(metered.clone()),
            None if self.too_large => Err(Unmetered::TooLarge),
            None if self.malformed => Err(Unmetered::Malformed),
            // A terminal event came, with `"usage": null`.
            None if self.ended => Err(Unmetered::NoUsage),
            // The stream began but its terminal event never came.
            None if self.started => Err(Unmetered::Incomplete),
            None => Err(Unmetered::NoUsage),
        }
    }

    /// Responses reports nothing before the terminal event: input must be estimated.
    pub fn progress(&self) -> Progress {
        Progress {
            reported: Usage::default(),
            input_reported: false,
            model: self.model.clone(),
            text_bytes: self.text_bytes,
        }
    }
}

/// The string value of the first `"type"` key in `data`, without parsing. OpenAI writes the
/// event's own `type` first; a server that does not is handled by the caller's fallback.
fn sniff_type(data: &[u8]) -> Option<&str> {
    const KEY: &[u8] = b"\"type\"";
    let at = data.windows(KEY.len()).position(|w| w == KEY)?;
    let after = data.get(at.saturating_add(KEY.len())..)?;
    let mut rest = after
        .iter()
        .enumerate()
        .skip_while(|(_, b)| b.is_ascii_whitespace());
    if rest.next().map(|(_, b)| *b) != Some(b':') {
        return None;
    }
    let mut rest = rest.skip_while(|(_, b)| b.is_ascii_whitespace());
    let (open, quote) = rest.next()?;
    if *quote != b'"' {
        return None;
    }
    let start = open.saturating_add(1);
    let len = after
        .get(start..)?
        .iter()
        .position(|b| *b == b'"' || *b == b'\\')?;
    std::str::from_utf8(after.get(start..start.saturating_add(len))?).ok()
}

pub fn error_body(kind: ErrorKind, message: &str) -> Vec<u8> {
    super::openai::error_body(kind, message)
}

#[cfg(test)]
mod tests;

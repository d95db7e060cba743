//! Google Gemini `generateContent` / `streamGenerateContent` (Gemini API and Vertex AI).
//!
//! Usage: `usageMetadata.promptTokenCount` includes `cachedContentTokenCount`;
//! `toolUsePromptTokenCount` (tool results fed back to the model) is input counted apart;
//! `candidatesTokenCount` excludes `thoughtsTokenCount`, and thoughts are billed as output.
//! The model that answered is `modelVersion`. Requests name the model in the path and
//! streaming in the method, so the body tells nothing.
//!
//! `streamGenerateContent?alt=sse` sends one `GenerateContentResponse` per SSE event;
//! without `alt=sse` the same objects come as one JSON array (read as a body). Several of
//! them may carry `usageMetadata`, each cumulative: the last report wins. Vertex AI sends
//! `usageMetadata` holding only `trafficType` on its intermediate chunks: without a token
//! count it is no report.

use super::{
    string_values_len, Capabilities, ErrorKind, EventFate, Metered, ModelIn, PreparedRequest,
    Progress, Unmetered,
};
use crate::sse::SseEvent;
use crate::usage::Usage;
use serde::Deserialize;
use std::ops::Range;

/// The model is in the path (see [`path_model_span`]); the body is never rewritten.
pub(crate) const CAPABILITIES: Capabilities = Capabilities {
    model_in: ModelIn::Path,
    rewrites_request: false,
};

/// The byte range of the model segment of a `.../models/{model}:generateContent` or
/// `:streamGenerateContent` path (Gemini API
/// `/v1beta/models/{model}:generateContent`, Vertex
/// `/v1/projects/{p}/locations/{l}/publishers/google/models/{model}:streamGenerateContent`),
/// query string and fragment ignored. None for tuned models and Vertex endpoints, which name
/// no base model.
pub fn path_model_span(path: &str) -> Option<Range<usize>> {
    let route = path.split(['?', '#']).next()?.trim_end_matches('/');
    let (resource, method) = route.rsplit_once(':')?;
    if method != "generateContent" && method != "streamGenerateContent" {
        return None;
    }
    let (parent, model) = resource.rsplit_once('/')?;
    if model.is_empty() || !(parent == "models" || parent.ends_with("/models")) {
        return None;
    }
    Some(parent.len() + 1..resource.len())
}

/// One `GenerateContentResponse`; candidates are not read.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Chunk {
    #[serde(default)]
    usage_metadata: Option<WireUsage>,
    #[serde(default)]
    model_version: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireUsage {
    #[serde(default)]
    prompt_token_count: Option<u64>,
    #[serde(default)]
    cached_content_token_count: Option<u64>,
    #[serde(default)]
    tool_use_prompt_token_count: Option<u64>,
    #[serde(default)]
    candidates_token_count: Option<u64>,
    #[serde(default)]
    thoughts_token_count: Option<u64>,
    #[serde(default)]
    total_token_count: Option<u64>,
}

impl WireUsage {
    /// True if it holds a token count (protobuf JSON omits zero counts, and Vertex sends
    /// count-less `usageMetadata` on intermediate stream chunks).
    fn is_report(&self) -> bool {
        [
            self.prompt_token_count,
            self.cached_content_token_count,
            self.tool_use_prompt_token_count,
            self.candidates_token_count,
            self.thoughts_token_count,
            self.total_token_count,
        ]
        .iter()
        .any(Option::is_some)
    }

    fn to_usage(&self) -> Usage {
        let prompt = self.prompt_token_count.unwrap_or(0);
        let cached = self.cached_content_token_count.unwrap_or(0).min(prompt);
        let thoughts = self.thoughts_token_count.unwrap_or(0);
        Usage {
            input: prompt
                .saturating_sub(cached)
                .saturating_add(self.tool_use_prompt_token_count.unwrap_or(0)),
            cache_read: cached,
            output: self
                .candidates_token_count
                .unwrap_or(0)
                .saturating_add(thoughts),
            reasoning: thoughts,
            ..Usage::default()
        }
    }
}

/// Nothing to learn or change: the filter takes the model from the path, and whether the
/// call streams from the method.
#[derive(Debug, Deserialize)]
struct RequestFields {
    #[serde(default, rename = "generationConfig")]
    generation_config: Option<GenerationConfig>,
}

#[derive(Debug, Deserialize)]
struct GenerationConfig {
    #[serde(default, rename = "maxOutputTokens")]
    max_output_tokens: Option<u64>,
}

/// The model is in the path and streaming in the method, so the body only gives the
/// output limit (for reservations).
pub fn prepare_request(body: &[u8]) -> PreparedRequest {
    let max_output_tokens = serde_json::from_slice::<RequestFields>(body)
        .ok()
        .and_then(|fields| fields.generation_config)
        .and_then(|config| config.max_output_tokens);
    PreparedRequest {
        max_output_tokens,
        ..PreparedRequest::default()
    }
}

/// A `GenerateContentResponse`, or a JSON array of them (`streamGenerateContent` without
/// `alt=sse`): the last one holding a usage report is the final count.
pub fn usage_from_body(body: &[u8]) -> Result<Metered, Unmetered> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    let chunks = if first == Some(&b'[') {
        serde_json::from_slice::<Vec<Chunk>>(body).map_err(|_| Unmetered::Malformed)?
    } else {
        vec![serde_json::from_slice::<Chunk>(body).map_err(|_| Unmetered::Malformed)?]
    };
    let mut model = None;
    let mut usage = None;
    for chunk in chunks {
        model = chunk.model_version.or(model);
        usage = chunk.usage_metadata.filter(WireUsage::is_report).or(usage);
    }
    let usage = usage.ok_or(Unmetered::NoUsage)?;
    Ok(Metered {
        usage: usage.to_usage(),
        model,
    })
}

#[derive(Debug, Clone, Default)]
pub struct StreamMeter {
    usage: Option<WireUsage>,
    model: Option<String>,
    malformed: bool,
    /// A chunk outgrew the SSE parser's cap (inline image data, say): a report after the
    /// cut was lost.
    too_large: bool,
    text_bytes: u64,
    /// A chunk carried a `finishReason`: the stream ended as Gemini ends it, so the last
    /// report is final rather than a running figure.
    finished: bool,
}

impl StreamMeter {
    pub fn on_event(&mut self, event: &SseEvent) -> EventFate {
        self.text_bytes = self
            .text_bytes
            .saturating_add(string_values_len(&event.data, "text"));
        if event.truncated {
            self.too_large = true;
        } else if super::contains(&event.data, b"\"usageMetadata\"") {
            match serde_json::from_slice::<Chunk>(&event.data) {
                Ok(chunk) => {
                    // Gemini's last chunk carries both the finish reason and the final report.
                    self.finished |= super::contains(&event.data, b"\"finishReason\"");
                    self.model = chunk.model_version.or(self.model.take());
                    if let Some(usage) = chunk.usage_metadata.filter(WireUsage::is_report) {
                        self.usage = Some(usage);
                    }
                }
                Err(_) => self.malformed = true,
            }
        } else if self.model.is_none() && super::contains(&event.data, b"\"modelVersion\"") {
            // Until found: the model, for pricing a stream that never reports usage.
            self.model = serde_json::from_slice::<Chunk>(&event.data)
                .ok()
                .and_then(|c| c.model_version);
        }
        EventFate::Forward
    }

    /// The last cumulative report, once the final chunk (with a `finishReason`) came; a
    /// stream cut before it is `Incomplete` (its running report is only the basis of an
    /// estimate, see `progress`).
    pub fn finish(&self) -> Result<Metered, Unmetered> {
        match &self.usage {
            Some(_) if !self.finished => Err(Unmetered::Incomplete),
            Some(usage) => Ok(Metered {
                usage: usage.to_usage(),
                model: self.model.clone(),
            }),
            None if self.too_large => Err(Unmetered::TooLarge),
            None if self.malformed => Err(Unmetered::Malformed),
            None => Err(Unmetered::NoUsage),
        }
    }

    /// The last report so far (Gemini API chunks each carry the prompt count) and the text
    /// streamed so far.
    pub fn progress(&self) -> Progress {
        Progress {
            reported: self
                .usage
                .as_ref()
                .map(WireUsage::to_usage)
                .unwrap_or_default(),
            input_reported: self.usage.is_some(),
            model: self.model.clone(),
            text_bytes: self.text_bytes,
        }
    }
}

/// Google's error shape (`google.rpc.Status` as JSON), as the Gemini SDKs parse it.
pub fn error_body(kind: ErrorKind, message: &str) -> Vec<u8> {
    let status = match kind {
        ErrorKind::BudgetExceeded => "RESOURCE_EXHAUSTED",
        ErrorKind::InvalidRequest => "INVALID_ARGUMENT",
        ErrorKind::PermissionDenied => "PERMISSION_DENIED",
        ErrorKind::Unavailable => "UNAVAILABLE",
    };
    let body = serde_json::json!({
        "error": {"code": kind.status(), "message": message, "status": status}
    });
    serde_json::to_vec(&body).unwrap_or_default()
}

#[cfg(test)]
mod tests;

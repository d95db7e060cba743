//! Anthropic Messages.
//!
//! Usage: `input_tokens` excludes the cache classes, which come separately as
//! `cache_creation_input_tokens` (split by TTL in `cache_creation.ephemeral_5m_input_tokens`
//! / `ephemeral_1h_input_tokens` when present) and `cache_read_input_tokens`. Streams give
//! input usage in `message_start` and cumulative figures in `message_delta`: the last
//! `message_delta` is the final count, charged once.

use super::{
    string_values_len, Capabilities, ErrorKind, EventFate, Metered, ModelIn, PreparedRequest,
    Progress, Unmetered,
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

#[derive(Debug, Default, Clone, Deserialize)]
struct WireUsage {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
    #[serde(default)]
    cache_creation: Option<CacheCreation>,
}

#[derive(Debug, Default, Clone, Deserialize)]
struct CacheCreation {
    #[serde(default)]
    ephemeral_5m_input_tokens: u64,
    #[serde(default)]
    ephemeral_1h_input_tokens: u64,
}

impl WireUsage {
    /// Later cumulative reports override the fields they carry.
    fn merge(&mut self, later: WireUsage) {
        let WireUsage {
            input_tokens,
            output_tokens,
            cache_creation_input_tokens,
            cache_read_input_tokens,
            cache_creation,
        } = later;
        self.input_tokens = input_tokens.or(self.input_tokens);
        self.output_tokens = output_tokens.or(self.output_tokens);
        self.cache_creation_input_tokens =
            cache_creation_input_tokens.or(self.cache_creation_input_tokens);
        self.cache_read_input_tokens = cache_read_input_tokens.or(self.cache_read_input_tokens);
        self.cache_creation = cache_creation.or(self.cache_creation.take());
    }

    fn to_usage(&self) -> Usage {
        let written = self.cache_creation_input_tokens.unwrap_or(0);
        let (write_5m, write_1h) = match &self.cache_creation {
            Some(split) => (
                split.ephemeral_5m_input_tokens,
                split.ephemeral_1h_input_tokens,
            ),
            None => (written, 0),
        };
        Usage {
            input: self.input_tokens.unwrap_or(0),
            cache_read: self.cache_read_input_tokens.unwrap_or(0),
            cache_write_5m: write_5m,
            cache_write_1h: write_1h,
            output: self.output_tokens.unwrap_or(0),
            reasoning: 0,
        }
    }
}

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

#[derive(Debug, Deserialize)]
struct MessageStart {
    message: StartMessage,
}

#[derive(Debug, Deserialize)]
struct StartMessage {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Debug, Deserialize)]
struct MessageDelta {
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Debug, Clone, Default)]
pub struct StreamMeter {
    model: Option<String>,
    usage: Option<WireUsage>,
    saw_delta: bool,
    malformed: bool,
    text_bytes: u64,
}

/// Keys of generated text in `content_block_delta` events: text, thinking, tool input.
const TEXT_KEYS: [&str; 3] = ["text", "thinking", "partial_json"];

impl StreamMeter {
    pub fn on_event(&mut self, event: &SseEvent) -> EventFate {
        let kind = match event.event.as_deref() {
            Some(name) => name,
            // Events without an `event:` line still name their type in the JSON.
            None if super::contains(&event.data, b"\"message_start\"") => "message_start",
            None if super::contains(&event.data, b"\"message_delta\"") => "message_delta",
            None if super::contains(&event.data, b"\"content_block_delta\"") => {
                "content_block_delta"
            }
            None => return EventFate::Forward,
        };
        match kind {
            "message_start" => match serde_json::from_slice::<MessageStart>(&event.data) {
                Ok(start) => {
                    self.model = start.message.model.or(self.model.take());
                    if let Some(usage) = start.message.usage {
                        self.usage
                            .get_or_insert_with(WireUsage::default)
                            .merge(usage);
                    }
                }
                Err(_) => self.malformed = true,
            },
            "message_delta" => match serde_json::from_slice::<MessageDelta>(&event.data) {
                Ok(delta) => {
                    self.saw_delta = true;
                    if let Some(usage) = delta.usage {
                        self.usage
                            .get_or_insert_with(WireUsage::default)
                            .merge(usage);
                    }
                }
                Err(_) => self.malformed = true,
            },
            "content_block_delta" => {
                let text: u64 = TEXT_KEYS
                    .iter()
                    .map(|key| string_values_len(&event.data, key))
                    .sum();
                self.text_bytes = self.text_bytes.saturating_add(text);
            }
            _ => {}
        }
        EventFate::Forward
    }

    pub fn finish(&self) -> Result<Metered, Unmetered> {
        match &self.usage {
            Some(usage) if self.saw_delta => Ok(Metered {
                usage: usage.to_usage(),
                model: self.model.clone(),
            }),
            _ if self.malformed => Err(Unmetered::Malformed),
            Some(_) => Err(Unmetered::Incomplete),
            None => Err(Unmetered::NoUsage),
        }
    }

    /// Input from `message_start` (exact) and the text streamed so far.
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

pub fn error_body(kind: ErrorKind, message: &str) -> Vec<u8> {
    let kind = match kind {
        ErrorKind::BudgetExceeded => "rate_limit_error",
        ErrorKind::InvalidRequest => "invalid_request_error",
        ErrorKind::PermissionDenied => "permission_error",
        ErrorKind::Unavailable => "api_error",
    };
    let body = serde_json::json!({"type": "error", "error": {"type": kind, "message": message}});
    serde_json::to_vec(&body).unwrap_or_default()
}

#[cfg(test)]
mod tests;

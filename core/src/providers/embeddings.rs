//! OpenAI Embeddings (`/v1/embeddings`).
//!
//! Usage: `usage.prompt_tokens`, all of it uncached input (`total_tokens` repeats it; there
//! is no output). Embeddings never stream: the dispatch sends a stream, should one come, to
//! the chat meter, which reads an OpenAI-shaped usage chunk.

use super::{Capabilities, ErrorKind, Metered, ModelIn, PreparedRequest, Unmetered};
use crate::usage::Usage;
use serde::Deserialize;

/// The model is the body's; nothing streams, so nothing needs asking for.
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
    prompt_tokens: u64,
}

/// The model; embeddings requests have no stream flag and need no rewrite.
pub fn prepare_request(body: &[u8]) -> PreparedRequest {
    super::common_request(body)
}

pub fn usage_from_body(body: &[u8]) -> Result<Metered, Unmetered> {
    let response: Response = serde_json::from_slice(body).map_err(|_| Unmetered::Malformed)?;
    let usage = response.usage.ok_or(Unmetered::NoUsage)?;
    Ok(Metered {
        usage: Usage {
            input: usage.prompt_tokens,
            ..Usage::default()
        },
        model: response.model,
    })
}

pub fn error_body(kind: ErrorKind, message: &str) -> Vec<u8> {
    super::openai::error_body(kind, message)
}

#[cfg(test)]
mod tests;

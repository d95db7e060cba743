//! LLM API formats: how to recognise a call, what to change in its request, where its
//! usage is in the response (JSON body or SSE stream), and its error shape.
//! One file per API format; this module only dispatches.

pub mod anthropic;
pub mod openai;

use crate::sse::SseEvent;
use crate::usage::Usage;

/// The API formats the filter meters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// OpenAI Chat Completions and every server that copies it (Azure, vLLM, Ollama, Groq...).
    OpenAiChat,
    /// Anthropic Messages.
    AnthropicMessages,
}

impl Api {
    /// Recognises the API from the request path (query string ignored).
    pub fn detect(path: &str) -> Option<Api> {
        let path = path
            .split(['?', '#'])
            .next()
            .unwrap_or(path)
            .trim_end_matches('/');
        if path.ends_with("/chat/completions") {
            Some(Api::OpenAiChat)
        } else if path.ends_with("/v1/messages") || path == "/messages" {
            Some(Api::AnthropicMessages)
        } else {
            None
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Api::OpenAiChat => "openai_chat",
            Api::AnthropicMessages => "anthropic_messages",
        }
    }

    /// Inspects (and if needed rewrites) the request body.
    pub fn prepare_request(self, body: &[u8]) -> PreparedRequest {
        match self {
            Api::OpenAiChat => openai::prepare_request(body),
            Api::AnthropicMessages => anthropic::prepare_request(body),
        }
    }

    /// Usage from a complete non-streaming response body.
    pub fn usage_from_body(self, body: &[u8]) -> Result<Metered, Unmetered> {
        match self {
            Api::OpenAiChat => openai::usage_from_body(body),
            Api::AnthropicMessages => anthropic::usage_from_body(body),
        }
    }

    pub fn stream_meter(self) -> StreamMeter {
        match self {
            Api::OpenAiChat => StreamMeter::OpenAi(openai::StreamMeter::default()),
            Api::AnthropicMessages => StreamMeter::Anthropic(anthropic::StreamMeter::default()),
        }
    }

    /// An error body in this API's own shape, so official SDKs raise their usual errors.
    pub fn error_body(self, kind: ErrorKind, message: &str) -> Vec<u8> {
        match self {
            Api::OpenAiChat => openai::error_body(kind, message),
            Api::AnthropicMessages => anthropic::error_body(kind, message),
        }
    }
}

/// What the filter learned from (and did to) a request body.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PreparedRequest {
    pub model: Option<String>,
    pub stream: bool,
    /// The body to send upstream instead of the original, if it had to change.
    pub rewritten: Option<Vec<u8>>,
    /// The filter asked the provider for a usage report the client did not ask for, so
    /// that report must be removed from what the client sees.
    pub strip_usage_from_client: bool,
}

/// The usage a response reported and the model that served it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metered {
    pub usage: Usage,
    pub model: Option<String>,
}

/// Why a response that reached the client could not be charged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unmetered {
    /// The response carried no usage report.
    NoUsage,
    /// The body or an event was not the JSON the format documents.
    Malformed,
    /// The JSON body was larger than `max_response_body_bytes`.
    TooLarge,
    /// The body was compressed (`content-encoding`), so it could not be read.
    Compressed,
    /// The provider answered with an error status and no usage.
    UpstreamError,
    /// The stream ended (or the client left) before the usage report.
    Incomplete,
}

impl Unmetered {
    pub fn reason(self) -> &'static str {
        match self {
            Unmetered::NoUsage => "no_usage",
            Unmetered::Malformed => "malformed",
            Unmetered::TooLarge => "too_large",
            Unmetered::Compressed => "compressed",
            Unmetered::UpstreamError => "upstream_error",
            Unmetered::Incomplete => "incomplete",
        }
    }
}

/// What to do with one SSE event on its way to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventFate {
    Forward,
    /// The event is the usage report the filter asked for on the client's behalf.
    UsageOnly,
}

/// Incremental usage extraction from a stream, one event at a time.
#[derive(Debug, Clone)]
pub enum StreamMeter {
    OpenAi(openai::StreamMeter),
    Anthropic(anthropic::StreamMeter),
}

impl StreamMeter {
    pub fn on_event(&mut self, event: &SseEvent) -> EventFate {
        match self {
            StreamMeter::OpenAi(meter) => meter.on_event(event),
            StreamMeter::Anthropic(meter) => meter.on_event(event),
        }
    }

    /// The usage once the stream ended.
    pub fn finish(&self) -> Result<Metered, Unmetered> {
        match self {
            StreamMeter::OpenAi(meter) => meter.finish(),
            StreamMeter::Anthropic(meter) => meter.finish(),
        }
    }
}

/// Errors the filter itself answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// 429: a budget is used up.
    BudgetExceeded,
    /// 400: the request cannot be attributed (missing or malformed agent header).
    InvalidRequest,
    /// 403: the agent has no budget here.
    PermissionDenied,
}

impl ErrorKind {
    pub fn status(self) -> u32 {
        match self {
            ErrorKind::BudgetExceeded => 429,
            ErrorKind::InvalidRequest => 400,
            ErrorKind::PermissionDenied => 403,
        }
    }
}

/// Finds `"usage"` used as a key with an object value, without parsing the event: most
/// stream events carry no usage (or `"usage":null`) and need no JSON parse at all.
pub(crate) fn has_usage_object(data: &[u8]) -> bool {
    const KEY: &[u8] = b"\"usage\"";
    let mut rest = data;
    while let Some(at) = rest.windows(KEY.len()).position(|w| w == KEY) {
        let after = rest.get(at + KEY.len()..).unwrap_or_default();
        let mut value = after.iter().skip_while(|b| b.is_ascii_whitespace());
        if value.next() == Some(&b':') && value.find(|b| !b.is_ascii_whitespace()) == Some(&b'{') {
            return true;
        }
        rest = after;
    }
    false
}

/// Test support: runs a stream through the SSE parser in the given chunks.
#[cfg(test)]
pub(crate) fn meter_chunks(
    api: Api,
    chunks: &[&[u8]],
) -> (Result<Metered, Unmetered>, Vec<EventFate>) {
    let mut parser = crate::sse::SseParser::new(1 << 20);
    let mut meter = api.stream_meter();
    let mut fates = Vec::new();
    let mut events = Vec::new();
    for chunk in chunks {
        parser.feed(chunk, &mut events);
        fates.extend(events.drain(..).map(|event| meter.on_event(&event)));
    }
    if let Some(event) = parser.finish() {
        fates.push(meter.on_event(&event));
    }
    (meter.finish(), fates)
}

/// Test support: the same stream split at every byte offset must meter identically.
#[cfg(test)]
pub(crate) fn assert_split_invariant(
    api: Api,
    stream: &[u8],
) -> (Result<Metered, Unmetered>, Vec<EventFate>) {
    let whole = meter_chunks(api, &[stream]);
    for cut in 0..=stream.len() {
        let (head, tail) = stream.split_at(cut);
        assert_eq!(meter_chunks(api, &[head, tail]), whole, "split at {cut}");
    }
    let bytes: Vec<&[u8]> = stream.chunks(1).collect();
    assert_eq!(meter_chunks(api, &bytes), whole, "byte by byte");
    whole
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_api_from_path() {
        let cases = [
            ("/v1/chat/completions", Some(Api::OpenAiChat)),
            ("/v1/chat/completions?x=1", Some(Api::OpenAiChat)),
            (
                "/openai/deployments/gpt4o/chat/completions?api-version=2024-10-21",
                Some(Api::OpenAiChat),
            ),
            ("/api/openai/v1/chat/completions/", Some(Api::OpenAiChat)),
            ("/v1/messages", Some(Api::AnthropicMessages)),
            (
                "/anthropic/v1/messages?beta=true",
                Some(Api::AnthropicMessages),
            ),
            ("/v1/messages/count_tokens", None),
            ("/v1/models", None),
            ("", None),
        ];
        for (path, want) in cases {
            assert_eq!(Api::detect(path), want, "{path}");
        }
    }

    #[test]
    fn finds_usage_objects_only() {
        let cases: [(&[u8], bool); 7] = [
            (br#"{"usage":{"prompt_tokens":1}}"#, true),
            (br#"{"usage" : 	{"a":1}}"#, true),
            (br#"{"usage":null}"#, false),
            (br#"{"x":"\"usage\":{"}"#, false),
            (br#"{"content":"usage","usage":null}"#, false),
            (br#"{"a":"\"usage\"","usage":{}}"#, true),
            (b"", false),
        ];
        for (data, want) in cases {
            assert_eq!(
                has_usage_object(data),
                want,
                "{}",
                String::from_utf8_lossy(data)
            );
        }
    }
}

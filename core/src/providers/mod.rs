//! LLM API formats: how to recognise a call, what to change in its request, where its
//! usage is in the response (JSON body or SSE stream), and its error shape.
//! One file per API format, each declaring its capabilities (`CAPABILITIES`); this module
//! only dispatches, so the rest of the filter asks what a call allows, never which format
//! it is.

pub mod anthropic;
pub mod embeddings;
pub mod gemini;
pub mod openai;
pub mod responses;

use crate::sse::SseEvent;
use crate::usage::Usage;
use serde::Deserialize;
use std::ops::Range;

/// The API formats the filter meters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Api {
    /// OpenAI Chat Completions and every server that copies it (Azure, vLLM, Ollama, Groq...).
    #[serde(rename = "openai_chat")]
    OpenAiChat,
    /// OpenAI legacy Completions (`/v1/completions`): the chat usage format.
    #[serde(rename = "openai_completions")]
    OpenAiCompletions,
    /// OpenAI Responses (`/v1/responses`).
    #[serde(rename = "openai_responses")]
    OpenAiResponses,
    /// OpenAI Embeddings (`/v1/embeddings`).
    #[serde(rename = "openai_embeddings")]
    OpenAiEmbeddings,
    /// Anthropic Messages.
    AnthropicMessages,
    /// Google Gemini `generateContent` / `streamGenerateContent` (AI Studio and Vertex paths).
    Gemini,
}

/// Where a request names its model, and so how `degrade` can change it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelIn {
    /// The body's top-level `model`: degrade rewrites the body once it has arrived.
    Body,
    /// The path (Gemini): degrade rewrites the path, so only before the headers leave.
    Path,
    /// An Azure OpenAI deployment in the path fixes the model and a body `model` is ignored,
    /// so the call cannot be degraded. A property of the call's path ([`Detected::model_in`]),
    /// never of a format.
    Deployment,
}

/// What a format lets the filter do with its calls; each format's module declares its own.
/// Error shape and stream framing are the format's too: [`Api::error_body`],
/// [`Api::stream_meter`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Capabilities {
    /// Where requests name the model: [`ModelIn::Body`] or [`ModelIn::Path`].
    pub(crate) model_in: ModelIn,
    /// [`Api::prepare_request`] may rewrite the body (to ask a stream for its usage report),
    /// so the body's length is not known when the headers leave.
    pub(crate) rewrites_request: bool,
}

/// An API recognised from a request path, with the model the path names, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detected {
    pub api: Api,
    /// Gemini names the model in the path; Azure names a deployment.
    pub path_model: Option<String>,
    /// An Azure OpenAI deployment name (`/openai/deployments/{name}/...`).
    pub azure_deployment: Option<String>,
}

impl Detected {
    /// Where this call names its model: where its format does, unless an Azure deployment in
    /// the path fixes the model.
    pub fn model_in(&self) -> ModelIn {
        match self.api.model_in() {
            ModelIn::Body if self.azure_deployment.is_some() => ModelIn::Deployment,
            other => other,
        }
    }
}

/// The Azure OpenAI deployment a path names (`/openai/deployments/{name}/...`, query string
/// ignored), whatever API the rest of the path is.
pub fn azure_deployment(path: &str) -> Option<&str> {
    const MARKER: &str = "/openai/deployments/";
    let path = path.split(['?', '#']).next().unwrap_or(path);
    // Looked for at each `/` rather than with a substring searcher, whose set-up alone costs
    // more than the whole scan of a usual path.
    let at = path
        .match_indices('/')
        .map(|(at, _)| at)
        .find(|&at| path.get(at..).is_some_and(|rest| rest.starts_with(MARKER)))?;
    let rest = path.get(at + MARKER.len()..)?;
    rest.split('/').next().filter(|name| !name.is_empty())
}

impl Api {
    /// Every format the filter meters.
    pub const ALL: [Api; 6] = [
        Api::OpenAiChat,
        Api::OpenAiCompletions,
        Api::OpenAiResponses,
        Api::OpenAiEmbeddings,
        Api::AnthropicMessages,
        Api::Gemini,
    ];

    /// Recognises the API from the request path (query string ignored).
    pub fn detect(path: &str) -> Option<Detected> {
        let azure_deployment = azure_deployment(path).map(str::to_string);
        let path = path
            .split(['?', '#'])
            .next()
            .unwrap_or(path)
            .trim_end_matches('/');
        let detected = |api| Detected {
            api,
            path_model: None,
            azure_deployment: azure_deployment.clone(),
        };
        if path.ends_with("/chat/completions") {
            Some(detected(Api::OpenAiChat))
        } else if path.ends_with("/completions") {
            Some(detected(Api::OpenAiCompletions))
        } else if path.ends_with("/responses") {
            Some(detected(Api::OpenAiResponses))
        } else if path.ends_with("/embeddings") {
            Some(detected(Api::OpenAiEmbeddings))
        } else if path.ends_with("/v1/messages") || path == "/messages" {
            Some(detected(Api::AnthropicMessages))
        } else if let Some((head, method)) = path.rsplit_once(':') {
            if method != "generateContent" && method != "streamGenerateContent" {
                return None;
            }
            let model = head
                .rsplit('/')
                .next()
                .filter(|m| !m.is_empty())
                .map(str::to_string);
            Some(Detected {
                api: Api::Gemini,
                path_model: model,
                azure_deployment: None,
            })
        } else {
            None
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Api::OpenAiChat => "openai_chat",
            Api::OpenAiCompletions => "openai_completions",
            Api::OpenAiResponses => "openai_responses",
            Api::OpenAiEmbeddings => "openai_embeddings",
            Api::AnthropicMessages => "anthropic_messages",
            Api::Gemini => "gemini",
        }
    }

    fn capabilities(self) -> Capabilities {
        match self {
            Api::OpenAiChat | Api::OpenAiCompletions => openai::CAPABILITIES,
            Api::OpenAiResponses => responses::CAPABILITIES,
            Api::OpenAiEmbeddings => embeddings::CAPABILITIES,
            Api::AnthropicMessages => anthropic::CAPABILITIES,
            Api::Gemini => gemini::CAPABILITIES,
        }
    }

    /// Where this format's requests name the model ([`ModelIn::Body`] or [`ModelIn::Path`]).
    pub fn model_in(self) -> ModelIn {
        self.capabilities().model_in
    }

    /// Whether [`Api::prepare_request`] may rewrite the body, so its length cannot be
    /// declared before it is read.
    pub fn rewrites_request(self) -> bool {
        self.capabilities().rewrites_request
    }

    /// The byte range of the model in a request path, for a format whose model is in the
    /// path ([`ModelIn::Path`]) and a path that names one the format lets be replaced.
    pub fn path_model_span(self, path: &str) -> Option<Range<usize>> {
        match self {
            Api::Gemini => gemini::path_model_span(path),
            Api::OpenAiChat
            | Api::OpenAiCompletions
            | Api::OpenAiResponses
            | Api::OpenAiEmbeddings
            | Api::AnthropicMessages => None,
        }
    }

    /// Inspects (and if needed rewrites) the request body.
    pub fn prepare_request(self, body: &[u8]) -> PreparedRequest {
        match self {
            Api::OpenAiChat | Api::OpenAiCompletions => openai::prepare_request(body),
            Api::OpenAiResponses => responses::prepare_request(body),
            Api::OpenAiEmbeddings => embeddings::prepare_request(body),
            Api::AnthropicMessages => anthropic::prepare_request(body),
            Api::Gemini => gemini::prepare_request(body),
        }
    }

    /// Usage from a complete non-streaming response body.
    pub fn usage_from_body(self, body: &[u8]) -> Result<Metered, Unmetered> {
        match self {
            Api::OpenAiChat | Api::OpenAiCompletions => openai::usage_from_body(body),
            Api::OpenAiResponses => responses::usage_from_body(body),
            Api::OpenAiEmbeddings => embeddings::usage_from_body(body),
            Api::AnthropicMessages => anthropic::usage_from_body(body),
            Api::Gemini => gemini::usage_from_body(body),
        }
    }

    pub fn stream_meter(self) -> StreamMeter {
        match self {
            // Embeddings never stream; the chat meter reads an OpenAI-shaped stream if one comes.
            Api::OpenAiChat | Api::OpenAiCompletions | Api::OpenAiEmbeddings => {
                StreamMeter::OpenAi(openai::StreamMeter::default())
            }
            Api::OpenAiResponses => StreamMeter::Responses(responses::StreamMeter::default()),
            Api::AnthropicMessages => StreamMeter::Anthropic(anthropic::StreamMeter::default()),
            Api::Gemini => StreamMeter::Gemini(gemini::StreamMeter::default()),
        }
    }

    /// An error body in this API's own shape, so official SDKs raise their usual errors.
    pub fn error_body(self, kind: ErrorKind, message: &str) -> Vec<u8> {
        match self {
            Api::OpenAiChat | Api::OpenAiCompletions => openai::error_body(kind, message),
            Api::OpenAiResponses => responses::error_body(kind, message),
            Api::OpenAiEmbeddings => embeddings::error_body(kind, message),
            Api::AnthropicMessages => anthropic::error_body(kind, message),
            Api::Gemini => gemini::error_body(kind, message),
        }
    }
}

/// What the filter learned from (and did to) a request body.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PreparedRequest {
    pub model: Option<String>,
    pub stream: bool,
    /// The most output tokens the request allows (`max_tokens`, `max_completion_tokens`,
    /// `max_output_tokens`, `generationConfig.maxOutputTokens`), for reservations.
    pub max_output_tokens: Option<u64>,
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
    Responses(responses::StreamMeter),
    Anthropic(anthropic::StreamMeter),
    Gemini(gemini::StreamMeter),
}

impl StreamMeter {
    pub fn on_event(&mut self, event: &SseEvent) -> EventFate {
        match self {
            StreamMeter::OpenAi(meter) => meter.on_event(event),
            StreamMeter::Responses(meter) => meter.on_event(event),
            StreamMeter::Anthropic(meter) => meter.on_event(event),
            StreamMeter::Gemini(meter) => meter.on_event(event),
        }
    }

    /// The usage once the stream ended.
    pub fn finish(&self) -> Result<Metered, Unmetered> {
        match self {
            StreamMeter::OpenAi(meter) => meter.finish(),
            StreamMeter::Responses(meter) => meter.finish(),
            StreamMeter::Anthropic(meter) => meter.finish(),
            StreamMeter::Gemini(meter) => meter.finish(),
        }
    }

    /// What the stream had reported and delivered so far, for a stream cut short.
    pub fn progress(&self) -> Progress {
        match self {
            StreamMeter::OpenAi(meter) => meter.progress(),
            StreamMeter::Responses(meter) => meter.progress(),
            StreamMeter::Anthropic(meter) => meter.progress(),
            StreamMeter::Gemini(meter) => meter.progress(),
        }
    }
}

/// A stream's state when it stopped early (the client left): the basis of an estimate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    /// Usage the provider had already reported (zero where it had not).
    pub reported: Usage,
    /// True if `reported` holds the provider's own input figures (Anthropic `message_start`,
    /// Gemini per-chunk `usageMetadata`); false means input must be estimated.
    pub input_reported: bool,
    pub model: Option<String>,
    /// Bytes of generated text (content, reasoning, tool-call arguments) streamed so far.
    pub text_bytes: u64,
}

/// The request fields every non-rewriting format shares: `model`, `stream` and the output
/// limit (`max_tokens` in Anthropic Messages, `max_output_tokens` in Responses). A body
/// that is not such an object gives the defaults: the provider judges malformed requests.
pub(crate) fn common_request(body: &[u8]) -> PreparedRequest {
    #[derive(Deserialize)]
    struct Fields {
        #[serde(default)]
        model: Option<String>,
        #[serde(default)]
        stream: Option<bool>,
        #[serde(default, alias = "max_output_tokens")]
        max_tokens: Option<u64>,
    }
    match serde_json::from_slice::<Fields>(body) {
        Ok(fields) => PreparedRequest {
            model: fields.model,
            stream: fields.stream.unwrap_or(false),
            max_output_tokens: fields.max_tokens,
            ..PreparedRequest::default()
        },
        Err(_) => PreparedRequest::default(),
    }
}

pub(crate) fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Sums the raw lengths of the JSON string values that follow `"key":` in `data`, without
/// parsing: how much generated text an event carries, for estimating output tokens.
pub(crate) fn string_values_len(data: &[u8], key: &str) -> u64 {
    let needle = format!("\"{key}\"");
    let needle = needle.as_bytes();
    let mut total = 0u64;
    let mut rest = data;
    while let Some(at) = rest.windows(needle.len()).position(|w| w == needle) {
        let after = rest.get(at + needle.len()..).unwrap_or_default();
        let mut bytes = after
            .iter()
            .enumerate()
            .skip_while(|(_, b)| b.is_ascii_whitespace());
        if bytes.next().map(|(_, b)| *b) != Some(b':') {
            rest = after;
            continue;
        }
        let mut bytes = bytes.skip_while(|(_, b)| b.is_ascii_whitespace());
        let Some((open, b'"')) = bytes.next().map(|(i, b)| (i, *b)) else {
            rest = after;
            continue;
        };
        let mut escaped = false;
        let mut close = None;
        for (i, b) in after.iter().enumerate().skip(open + 1) {
            match (escaped, *b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => {
                    close = Some(i);
                    break;
                }
                _ => {}
            }
        }
        let Some(close) = close else {
            break;
        };
        total = total.saturating_add((close - open - 1) as u64);
        rest = after.get(close + 1..).unwrap_or_default();
    }
    total
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
    /// 503: the budget cannot be read now (shared data failing); retrying later may help.
    Unavailable,
}

impl ErrorKind {
    pub fn status(self) -> u32 {
        match self {
            ErrorKind::BudgetExceeded => 429,
            ErrorKind::InvalidRequest => 400,
            ErrorKind::PermissionDenied => 403,
            ErrorKind::Unavailable => 503,
        }
    }
}

/// Finds `"usage"` used as a key with an object value, without parsing the event: most
/// stream events carry no usage (or `"usage":null`) and need no JSON parse at all.
pub(crate) fn has_usage_object(data: &[u8]) -> bool {
    usage_values(data).any(|first| first == b'{')
}

/// Whether a `"usage"` key holds something that is neither an object nor `null`: a usage
/// report the provider sent but that cannot be read (counted as malformed, not missing).
pub(crate) fn has_corrupt_usage(data: &[u8]) -> bool {
    usage_values(data).any(|first| first != b'{' && first != b'n')
}

/// The first byte of the value of each `"usage":` key in `data`.
fn usage_values(data: &[u8]) -> impl Iterator<Item = u8> + '_ {
    const KEY: &[u8] = b"\"usage\"";
    let mut rest = data;
    std::iter::from_fn(move || loop {
        let at = rest.windows(KEY.len()).position(|w| w == KEY)?;
        let after = rest.get(at + KEY.len()..).unwrap_or_default();
        rest = after;
        let mut value = after.iter().skip_while(|b| b.is_ascii_whitespace());
        if value.next() == Some(&b':') {
            if let Some(first) = value.find(|b| !b.is_ascii_whitespace()) {
                return Some(*first);
            }
        }
    })
}

/// Test support: what a meter reports of a stream cut at the end of `stream`.
#[cfg(test)]
pub(crate) fn progress_of(api: Api, stream: &[u8]) -> Progress {
    let mut parser = crate::sse::SseParser::new(1 << 20);
    let mut events = Vec::new();
    parser.feed(stream, &mut events);
    let mut meter = api.stream_meter();
    for event in &events {
        meter.on_event(event);
    }
    meter.progress()
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
mod tests;

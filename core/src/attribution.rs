//! The attribution record of a finished call: metadata only, never prompt or completion
//! text. It leaves as one log line and as one filter-state value for access logs.

use crate::identity::Identity;
use crate::metrics::CallOutcome;
use crate::providers::{Api, Metered, Unmetered};
use serde::Serialize;

/// A finished call's attribution record (metadata only, never prompt or completion text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attribution {
    pub agent: String,
    pub budget: String,
    pub task: Option<String>,
    pub user: Option<String>,
    /// The API format (`-` when no format matched the path).
    pub api: &'static str,
    /// OpenTelemetry GenAI `gen_ai.operation.name` and `gen_ai.provider.name` of the format.
    pub operation: Option<&'static str>,
    pub provider: Option<&'static str>,
    /// The model that served the call (the provider's word, else the one sent), or was
    /// asked for when it never reached the provider; `-` if none is known.
    pub model: String,
    /// The model the agent asked for, when `degrade` served a cheaper one.
    pub degraded_from: Option<String>,
    /// What the filter did: the `agent_budget_calls` outcome.
    pub action: CallOutcome,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Charged {
        metered: Metered,
        micro_usd: u64,
        priced_as: Option<String>,
        /// The usage is an estimate (the client left before the provider reported usage).
        estimated: bool,
    },
    Unmetered(Unmetered),
    /// Forwarded unmetered: no API format matches the call's path.
    Passed,
    /// The filter refused the call (budget used up) with this status.
    Stopped {
        status: u32,
    },
}

/// Why a call the filter did not meter went unmetered, as the record's `unmetered_reason`.
pub const UNKNOWN_API: &str = "unknown_api";

/// The action of a charged call: degraded when served by the cheaper model, overage when an
/// `alert` budget let it through past its limit (it came past it or crossed it), else allowed.
pub fn charged_action(degraded: bool, past_alert_limit: bool) -> CallOutcome {
    if degraded {
        CallOutcome::Degraded
    } else if past_alert_limit {
        CallOutcome::Overage
    } else {
        CallOutcome::Allowed
    }
}

/// `gen_ai.operation.name` (OpenTelemetry GenAI semantic conventions) of a format.
pub fn operation_name(api: Api) -> &'static str {
    match api {
        Api::OpenAiChat | Api::OpenAiResponses | Api::AnthropicMessages => "chat",
        Api::OpenAiCompletions => "text_completion",
        Api::OpenAiEmbeddings => "embeddings",
        Api::Gemini => "generate_content",
    }
}

/// The API format a call was metered as, and whether its path is an Azure OpenAI
/// deployment's (the same format, another provider).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Format {
    pub api: Api,
    pub azure: bool,
}

/// `gen_ai.provider.name` (OpenTelemetry GenAI semantic conventions) of a format.
pub fn provider_name(format: Format) -> &'static str {
    match format.api {
        Api::OpenAiChat | Api::OpenAiCompletions | Api::OpenAiResponses | Api::OpenAiEmbeddings
            if format.azure =>
        {
            "azure.ai.openai"
        }
        Api::OpenAiChat | Api::OpenAiCompletions | Api::OpenAiResponses | Api::OpenAiEmbeddings => {
            "openai"
        }
        Api::AnthropicMessages => "anthropic",
        Api::Gemini => "gcp.gemini",
    }
}

/// The access-log form of a record: the members of one flat JSON object (see
/// [`Attribution::members`]). Keys are OpenTelemetry GenAI names where they exist.
#[derive(Serialize)]
struct Record<'a> {
    agent: &'a str,
    budget: &'a str,
    task: &'a str,
    user: &'a str,
    api: &'a str,
    #[serde(
        rename = "gen_ai.operation.name",
        skip_serializing_if = "Option::is_none"
    )]
    operation: Option<&'a str>,
    #[serde(
        rename = "gen_ai.provider.name",
        skip_serializing_if = "Option::is_none"
    )]
    provider: Option<&'a str>,
    #[serde(
        rename = "gen_ai.request.model",
        skip_serializing_if = "Option::is_none"
    )]
    request_model: Option<&'a str>,
    #[serde(
        rename = "gen_ai.response.model",
        skip_serializing_if = "Option::is_none"
    )]
    response_model: Option<&'a str>,
    /// All input tokens, cached and cache-write included (as GenAI counts them).
    #[serde(
        rename = "gen_ai.usage.input_tokens",
        skip_serializing_if = "Option::is_none"
    )]
    input_tokens: Option<u64>,
    #[serde(
        rename = "gen_ai.usage.output_tokens",
        skip_serializing_if = "Option::is_none"
    )]
    output_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cache_read_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cache_write_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_tokens: Option<u64>,
    cost_micro_usd: u64,
    action: &'a str,
    estimated: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    unmetered_reason: Option<&'a str>,
}

impl Attribution {
    /// The record of `identity`'s call in `format` (None: no format matched): `model` is the
    /// one that served it (or was asked for), `-` if none is known.
    pub fn new(
        identity: Identity,
        format: Option<Format>,
        model: Option<String>,
        degraded_from: Option<String>,
        action: CallOutcome,
        outcome: Outcome,
    ) -> Attribution {
        Attribution {
            agent: identity.agent,
            budget: identity.budget,
            task: identity.task,
            user: identity.user,
            api: format.map_or("-", |f| f.api.name()),
            operation: format.map(|f| operation_name(f.api)),
            provider: format.map(provider_name),
            model: model.unwrap_or_else(|| "-".to_string()),
            degraded_from,
            action,
            outcome,
        }
    }

    /// The record as one JSON object.
    pub fn record(&self) -> String {
        let model = (self.model != "-").then_some(self.model.as_str());
        let mut record = Record {
            agent: &self.agent,
            budget: &self.budget,
            task: self.task.as_deref().unwrap_or("-"),
            user: self.user.as_deref().unwrap_or("-"),
            api: self.api,
            operation: self.operation,
            provider: self.provider,
            request_model: self.degraded_from.as_deref().or(model),
            response_model: None,
            input_tokens: None,
            output_tokens: None,
            cache_read_tokens: None,
            cache_write_tokens: None,
            reasoning_tokens: None,
            cost_micro_usd: 0,
            action: self.action.name(),
            estimated: false,
            unmetered_reason: None,
        };
        match &self.outcome {
            Outcome::Charged {
                metered,
                micro_usd,
                estimated,
                ..
            } => {
                let usage = &metered.usage;
                record.response_model = model;
                record.input_tokens = Some(usage.total_input());
                record.output_tokens = Some(usage.output);
                record.cache_read_tokens = Some(usage.cache_read);
                record.cache_write_tokens =
                    Some(usage.cache_write_5m.saturating_add(usage.cache_write_1h));
                record.reasoning_tokens = Some(usage.reasoning);
                record.cost_micro_usd = *micro_usd;
                record.estimated = *estimated;
            }
            Outcome::Unmetered(reason) => record.unmetered_reason = Some(reason.reason()),
            Outcome::Passed => record.unmetered_reason = Some(UNKNOWN_API),
            Outcome::Stopped { .. } => {}
        }
        // Serializing plain strings and numbers cannot fail; a record with only the action
        // is the harmless answer if it ever did.
        serde_json::to_string(&record)
            .unwrap_or_else(|_| format!("{{\"action\":\"{}\"}}", self.action.name()))
    }

    /// The record's members without the enclosing braces, published by the host as the
    /// `agent_budget` filter state: the shipped access-log format
    /// (`envoy/access-log.yaml`) writes `{<Envoy's timing and status>,<these>}`, one flat
    /// object per line, with `%FILTER_STATE(wasm.agent_budget:PLAIN)%`.
    pub fn members(&self) -> String {
        let mut record = self.record();
        // The object always has members (agent first): drop its `{` and `}`.
        record.pop();
        if !record.is_empty() {
            record.remove(0);
        }
        record
    }

    /// Writes the record to the proxy's log.
    pub fn log(&self) {
        log_attribution(self);
    }
}

fn log_attribution(record: &Attribution) {
    let task = record.task.as_deref().unwrap_or("-");
    let user = record.user.as_deref().unwrap_or("-");
    match &record.outcome {
        Outcome::Charged {
            metered,
            micro_usd,
            priced_as,
            estimated,
        } => {
            let u = &metered.usage;
            log::debug!(
                "call agent={} budget={} task={} user={} api={} model={} priced_as={} input={} cached_input={} cache_write={} output={} reasoning={} cost_micro_usd={} estimated={} action={}",
                record.agent,
                record.budget,
                task,
                user,
                record.api,
                record.model,
                priced_as.as_deref().unwrap_or("fallback"),
                u.input,
                u.cache_read,
                u.cache_write_5m.saturating_add(u.cache_write_1h),
                u.output,
                u.reasoning,
                micro_usd,
                estimated,
                record.action.name()
            );
        }
        Outcome::Stopped { .. } | Outcome::Passed => {}
        Outcome::Unmetered(reason) => {
            log::warn!(
                "unmetered agent={} budget={} task={} user={} api={} model={} reason={}",
                record.agent,
                record.budget,
                task,
                user,
                record.api,
                record.model,
                reason.reason()
            );
        }
    }
}

#[cfg(test)]
mod tests;

//! The attribution record of a finished call: metadata only, never prompt or completion
//! text. It leaves as one log line and as one filter-state value for access logs.

use crate::identity::Identity;
use crate::providers::{Api, Metered, Unmetered};
use serde::Serialize;

/// A finished call's attribution record (metadata only, never prompt or completion text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attribution {
    pub agent: String,
    pub budget: String,
    pub task: Option<String>,
    pub user: Option<String>,
    pub api: &'static str,
    pub model: String,
    /// The model the agent asked for, when `degrade` served a cheaper one.
    pub degraded_from: Option<String>,
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
    /// The filter refused the call (budget used up) with this status.
    Stopped {
        status: u32,
    },
}

/// The access-log form of a record: one JSON object (see [`Attribution::record`]).
#[derive(Serialize)]
struct Record<'a> {
    agent: &'a str,
    budget: &'a str,
    task: &'a str,
    user: &'a str,
    api: &'a str,
    model: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    input_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    output_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cost_micro_usd: Option<u64>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    estimated: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    unmetered: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stopped: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    degraded_from: Option<&'a str>,
}

impl Attribution {
    /// The record of `identity`'s call to `api`: `model` is the one that served it (or was
    /// asked for), `-` if none is known.
    pub fn new(
        identity: Identity,
        api: Api,
        model: Option<String>,
        degraded_from: Option<String>,
        outcome: Outcome,
    ) -> Attribution {
        Attribution {
            agent: identity.agent,
            budget: identity.budget,
            task: identity.task,
            user: identity.user,
            api: api.name(),
            model: model.unwrap_or_else(|| "-".to_string()),
            degraded_from,
            outcome,
        }
    }

    /// The record as one JSON object, published by the host as the `agent_budget` filter
    /// state (`%FILTER_STATE(wasm.agent_budget:PLAIN)%` in an access-log format).
    pub fn record(&self) -> String {
        let mut record = Record {
            agent: &self.agent,
            budget: &self.budget,
            task: self.task.as_deref().unwrap_or("-"),
            user: self.user.as_deref().unwrap_or("-"),
            api: self.api,
            model: &self.model,
            input_tokens: None,
            output_tokens: None,
            cost_micro_usd: None,
            estimated: false,
            unmetered: None,
            stopped: None,
            degraded_from: self.degraded_from.as_deref(),
        };
        match &self.outcome {
            Outcome::Charged {
                metered,
                micro_usd,
                estimated,
                ..
            } => {
                record.input_tokens = Some(metered.usage.total_input());
                record.output_tokens = Some(metered.usage.output);
                record.cost_micro_usd = Some(*micro_usd);
                record.estimated = *estimated;
            }
            Outcome::Unmetered(reason) => record.unmetered = Some(reason.reason()),
            Outcome::Stopped { status } => record.stopped = Some(*status),
        }
        // Serializing plain strings and numbers cannot fail; an empty object is the
        // harmless answer if it ever did.
        serde_json::to_string(&record).unwrap_or_else(|_| "{}".to_string())
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
                "call agent={} budget={} task={} user={} api={} model={} priced_as={} input={} cached_input={} cache_write={} output={} reasoning={} cost_micro_usd={} estimated={}",
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
                estimated
            );
        }
        Outcome::Stopped { .. } => {}
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

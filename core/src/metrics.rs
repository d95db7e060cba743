//! Envoy stats emitted by the filter.
//!
//! Labels travel inside the stat name (`agent_budget_requests.agent.research-bot`) and the
//! `stats_tags` rules in `envoy/stats-tags.yaml` turn those segments into Prometheus labels,
//! giving `agent_budget_requests{agent="research-bot"}`. Label values are configured agent
//! names, reasons and periods only, so cardinality is bounded by the configuration.
//! Each name is defined once per worker and its id cached; a refused definition degrades
//! to a no-op instead of failing the call.

use crate::host::{Host, MetricKind};
use crate::period::PeriodKind;
use std::cell::RefCell;
use std::collections::HashMap;

/// Per-agent counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentCounter {
    /// Calls attributed to the agent's budget (rejected ones included).
    Requests,
    /// Calls refused because a budget was used up.
    Rejected,
    /// Uncached input tokens.
    InputTokens,
    /// Input tokens read from the provider's prompt cache.
    CachedInputTokens,
    /// Input tokens written to the provider's prompt cache.
    CacheWriteTokens,
    /// Output tokens (reasoning included).
    OutputTokens,
    /// Reasoning / thinking tokens (already in output).
    ReasoningTokens,
    /// Money charged.
    CostMicroUsd,
    /// Calls that reached the provider but could not be metered.
    Unmetered,
    /// Calls charged an estimate because the client left before the usage report.
    EstimatedRequests,
    /// Calls served by the cheaper model of `degrade`.
    DegradedRequests,
}

impl AgentCounter {
    pub const ALL: [AgentCounter; 11] = [
        AgentCounter::Requests,
        AgentCounter::Rejected,
        AgentCounter::InputTokens,
        AgentCounter::CachedInputTokens,
        AgentCounter::CacheWriteTokens,
        AgentCounter::OutputTokens,
        AgentCounter::ReasoningTokens,
        AgentCounter::CostMicroUsd,
        AgentCounter::Unmetered,
        AgentCounter::EstimatedRequests,
        AgentCounter::DegradedRequests,
    ];

    fn stem(self) -> &'static str {
        match self {
            AgentCounter::Requests => "agent_budget_requests",
            AgentCounter::Rejected => "agent_budget_rejected",
            AgentCounter::InputTokens => "agent_budget_input_tokens",
            AgentCounter::CachedInputTokens => "agent_budget_cached_input_tokens",
            AgentCounter::CacheWriteTokens => "agent_budget_cache_write_tokens",
            AgentCounter::OutputTokens => "agent_budget_output_tokens",
            AgentCounter::ReasoningTokens => "agent_budget_reasoning_tokens",
            AgentCounter::CostMicroUsd => "agent_budget_cost_micro_usd",
            AgentCounter::Unmetered => "agent_budget_unmetered_requests",
            AgentCounter::EstimatedRequests => "agent_budget_estimated_requests",
            AgentCounter::DegradedRequests => "agent_budget_degraded_requests",
        }
    }
}

/// Per-agent, per-period gauges: the live view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentGauge {
    /// Spend so far in the current period, from the shared ledger.
    SpendMicroUsd,
    /// The period's budget.
    LimitMicroUsd,
}

impl AgentGauge {
    fn stem(self) -> &'static str {
        match self {
            AgentGauge::SpendMicroUsd => "agent_budget_spend_micro_usd",
            AgentGauge::LimitMicroUsd => "agent_budget_limit_micro_usd",
        }
    }
}

/// Gateway-wide counters with a reason label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReasonCounter {
    /// Calls that could not be metered, by reason (`no_usage`, `malformed`, ...).
    Unmetered,
    /// Calls refused because no budget could be attributed (`missing`, `unknown`, `invalid`).
    Unattributed,
    /// Ledger trouble (`contended`, `corrupt`, `host`, `late_create`).
    LedgerErrors,
    /// Alert webhook deliveries (`delivered`, `failed`, `given_up`, `dropped`).
    AlertDeliveries,
}

impl ReasonCounter {
    fn stem(self) -> &'static str {
        match self {
            ReasonCounter::Unmetered => "agent_budget_unmetered",
            ReasonCounter::Unattributed => "agent_budget_unattributed",
            ReasonCounter::LedgerErrors => "agent_budget_ledger_errors",
            ReasonCounter::AlertDeliveries => "agent_budget_alert_deliveries",
        }
    }
}

/// Calls charged at the fallback price because their model has no price.
pub const UNPRICED_CALLS: &str = "agent_budget_unpriced_calls";
/// `alert` action: spend past the budget, per agent and period (counter).
pub const OVERAGE: &str = "agent_budget_overage_micro_usd";
/// Alerts raised, per agent and kind (`soft`, `limit_stop`, `limit_alert`...).
pub const ALERTS: &str = "agent_budget_alerts";

/// `{stem}.agent.{budget}.period.{period}` for per-period counters.
pub fn agent_period_name(stem: &str, budget: &str, period: PeriodKind) -> String {
    format!("{stem}.agent.{budget}.period.{}", period.name())
}

/// `{stem}.agent.{budget}.reason.{reason}`.
pub fn agent_reason_name(stem: &str, budget: &str, reason: &str) -> String {
    format!("{stem}.agent.{budget}.reason.{reason}")
}

pub fn agent_counter_name(counter: AgentCounter, budget: &str) -> String {
    format!("{}.agent.{budget}", counter.stem())
}

pub fn agent_gauge_name(gauge: AgentGauge, budget: &str, period: PeriodKind) -> String {
    agent_period_name(gauge.stem(), budget, period)
}

pub fn reason_counter_name(counter: ReasonCounter, reason: &str) -> String {
    format!("{}.reason.{reason}", counter.stem())
}

/// Metric ids of one worker, defined on first use.
#[derive(Debug, Default)]
pub struct Metrics {
    ids: RefCell<HashMap<String, Option<u32>>>,
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics::default()
    }

    fn id(&self, host: &dyn Host, kind: MetricKind, name: String) -> Option<u32> {
        if let Some(id) = self.ids.borrow().get(&name) {
            return *id;
        }
        let id = match host.define_metric(kind, &name) {
            Ok(id) => Some(id),
            Err(error) => {
                log::warn!("metric {name} unavailable: {error}");
                None
            }
        };
        self.ids.borrow_mut().insert(name, id);
        id
    }

    pub fn add(&self, host: &dyn Host, name: String, delta: u64) {
        if delta == 0 && self.ids.borrow().contains_key(&name) {
            return;
        }
        if let Some(id) = self.id(host, MetricKind::Counter, name) {
            let _ = host.increment_metric(id, i64::try_from(delta).unwrap_or(i64::MAX));
        }
    }

    pub fn set(&self, host: &dyn Host, name: String, value: u64) {
        if let Some(id) = self.id(host, MetricKind::Gauge, name) {
            let _ = host.record_metric(id, value);
        }
    }

    pub fn agent(&self, host: &dyn Host, counter: AgentCounter, budget: &str, delta: u64) {
        self.add(host, agent_counter_name(counter, budget), delta);
    }

    pub fn gauge(
        &self,
        host: &dyn Host,
        gauge: AgentGauge,
        budget: &str,
        period: PeriodKind,
        value: u64,
    ) {
        self.set(host, agent_gauge_name(gauge, budget, period), value);
    }

    pub fn reason(&self, host: &dyn Host, counter: ReasonCounter, reason: &str) {
        self.add(host, reason_counter_name(counter, reason), 1);
    }
}

#[cfg(test)]
mod tests;

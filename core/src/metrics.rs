//! Envoy stats emitted by the filter.
//!
//! Labels travel inside the stat name (`agent_budget_requests.agent.research-bot`) and the
//! `stats_tags` rules in `envoy/stats-tags.yaml` turn those segments into Prometheus labels,
//! giving `agent_budget_requests{agent="research-bot"}`. Label values are configured agent
//! names (the first `max_tracked_agents`, the rest folded into `other`), reasons, periods,
//! outcomes and price-table model families (else `other`), so cardinality is bounded by the
//! configuration.
//! Metrics are typed ([`Counter`], [`Gauge`]); each name is built and defined once per
//! worker and its id cached; a refused definition degrades to a no-op instead of failing
//! the call. Counts accumulate per worker and reach Envoy on the tick.

use crate::host::{Host, MetricKind};
use crate::period::PeriodKind;
use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// FNV-1a for the metric maps: their keys are a few small integers and static strings, for
/// which std's DoS-resistant SipHash costs more than the lookup it guards (no key comes
/// from a client: agent ids are configured names' indexes).
#[derive(Debug, Clone, Copy)]
pub struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 ^= u64::from(*byte);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<Fnv>>;

/// Per-agent counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AgentGauge {
    /// Spend so far in the current period, from the shared ledger.
    SpendMicroUsd,
    /// The period's budget.
    LimitMicroUsd,
    /// What is left of the period's budget (0 once used up).
    RemainingMicroUsd,
    /// Spend so far plus the burn rate until the period ends.
    ProjectedSpendMicroUsd,
}

impl AgentGauge {
    fn stem(self) -> &'static str {
        match self {
            AgentGauge::SpendMicroUsd => "agent_budget_spend_micro_usd",
            AgentGauge::LimitMicroUsd => "agent_budget_limit_micro_usd",
            AgentGauge::RemainingMicroUsd => "agent_budget_remaining_micro_usd",
            AgentGauge::ProjectedSpendMicroUsd => "agent_budget_projected_spend_micro_usd",
        }
    }
}

/// Per-agent gauges of the spend history (no period).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RateGauge {
    /// Spend over the current window, per hour.
    BurnMicroUsdPerHour,
    /// The agent's usual hourly burn (0 while it has none).
    BaselineMicroUsdPerHour,
}

impl RateGauge {
    fn stem(self) -> &'static str {
        match self {
            RateGauge::BurnMicroUsdPerHour => "agent_budget_burn_rate_micro_usd_per_hour",
            RateGauge::BaselineMicroUsdPerHour => "agent_budget_baseline_micro_usd_per_hour",
        }
    }
}

/// How a call attributed to an agent budget ended: exactly one per call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CallOutcome {
    /// Charged, within the budget.
    Allowed,
    /// Charged, served by the cheaper model of `degrade`.
    Degraded,
    /// Refused by the filter: a budget was used up (or the call's worst case did not fit).
    Stopped,
    /// Charged under the `alert` action, past the budget (it came past it or crossed it).
    Overage,
    /// Reached the provider but could not be metered (or no API format matched its path).
    Unmetered,
}

impl CallOutcome {
    pub fn name(self) -> &'static str {
        match self {
            CallOutcome::Allowed => "allowed",
            CallOutcome::Degraded => "degraded",
            CallOutcome::Stopped => "stopped",
            CallOutcome::Overage => "overage",
            CallOutcome::Unmetered => "unmetered",
        }
    }
}

/// Per-agent, per-served-model counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ModelCounter {
    CostMicroUsd,
    /// All input tokens, cached and cache-write included.
    InputTokens,
    /// Output tokens (reasoning included).
    OutputTokens,
}

impl ModelCounter {
    fn stem(self) -> &'static str {
        match self {
            ModelCounter::CostMicroUsd => "agent_budget_model_cost_micro_usd",
            ModelCounter::InputTokens => "agent_budget_model_input_tokens",
            ModelCounter::OutputTokens => "agent_budget_model_output_tokens",
        }
    }
}

/// Gateway-wide counters with a reason label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReasonCounter {
    /// Calls that could not be metered, by reason (`no_usage`, `malformed`, ...).
    Unmetered,
    /// Calls refused because no budget could be attributed (`missing`, `unknown`, `invalid`).
    Unattributed,
    /// Ledger trouble (`contended`, `corrupt`, `host`, `late_create`).
    LedgerErrors,
    /// Alert webhook deliveries (`delivered`, `failed`, `given_up`, `dropped`).
    AlertDeliveries,
    /// Host calls of the adapter that failed, by call (`get_buffer`, `set_header`, ...).
    HostErrors,
    /// Fleet-mode syncs with Redis that failed (`timeout`, `status`, `redis`, ...).
    FleetSyncErrors,
}

impl ReasonCounter {
    fn stem(self) -> &'static str {
        match self {
            ReasonCounter::Unmetered => "agent_budget_unmetered",
            ReasonCounter::Unattributed => "agent_budget_unattributed",
            ReasonCounter::LedgerErrors => "agent_budget_ledger_errors",
            ReasonCounter::AlertDeliveries => "agent_budget_alert_deliveries",
            ReasonCounter::HostErrors => "agent_budget_host_errors",
            ReasonCounter::FleetSyncErrors => "agent_budget_fleet_sync_errors",
        }
    }
}

/// A configured agent budget, by its position among the configured names (or the `other`
/// series it folds into): metric keys carry this instead of the name, so counting on the
/// hot path neither formats nor copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AgentId(u32);

/// A served model's price-table family (or `other`), interned per worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ModelId(u32);

/// The series that agents past `max_tracked_agents` and unpriced models report under.
pub const OTHER: &str = "other";
const OTHER_ID: u32 = u32::MAX;

/// A counter, typed: its name is built only when it is first defined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Counter {
    Agent(AgentCounter, AgentId),
    /// `alert` action: spend past the budget, per agent and period (micro-USD).
    Overage(AgentId, PeriodKind),
    /// Alerts raised, per agent and kind (`soft`, `limit_stop`, `limit_alert`...).
    Alerts(AgentId, &'static str),
    Reason(ReasonCounter, &'static str),
    /// Calls charged at the fallback price because their model has no price.
    UnpricedCalls,
    /// Calls attributed to an agent budget, by how they ended.
    Calls(AgentId, CallOutcome),
    /// Charged calls' cost and tokens per agent and served model.
    Model(ModelCounter, AgentId, ModelId),
}

/// A gauge, typed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Gauge {
    Agent(AgentGauge, AgentId, PeriodKind),
    /// Agent budgets past `max_tracked_agents`, reporting under `agent="other"`.
    FoldedAgents,
    Rate(RateGauge, AgentId),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Metric {
    Counter(Counter),
    Gauge(Gauge),
}

/// A metric family: its kind, stem and label names, in the order the name carries them.
pub type Family = (MetricKind, &'static str, &'static [&'static str]);

/// Every family the core emits, for hosts whose stats take labels and must be declared
/// before use (the native dynamic module declares them when a configuration loads).
/// `every_metric_name_is_in_a_family` keeps it in step with the names.
pub fn families() -> Vec<Family> {
    use AgentCounter as A;
    use MetricKind::{Counter as C, Gauge as G};
    const AGENT: &[&str] = &["agent"];
    const AGENT_PERIOD: &[&str] = &["agent", "period"];
    let mut families: Vec<Family> = [
        A::Requests,
        A::Rejected,
        A::InputTokens,
        A::CachedInputTokens,
        A::CacheWriteTokens,
        A::OutputTokens,
        A::ReasoningTokens,
        A::CostMicroUsd,
        A::Unmetered,
        A::EstimatedRequests,
        A::DegradedRequests,
    ]
    .into_iter()
    .map(|counter| (C, counter.stem(), AGENT))
    .collect();
    families.extend([
        (C, "agent_budget_overage_micro_usd", AGENT_PERIOD),
        (C, "agent_budget_alerts", &["agent", "reason"][..]),
        (C, "agent_budget_unpriced_calls", &[][..]),
        (C, "agent_budget_calls", &["agent", "outcome"][..]),
        (G, "agent_budget_folded_agents", &[][..]),
    ]);
    families.extend(
        [
            ReasonCounter::Unmetered,
            ReasonCounter::Unattributed,
            ReasonCounter::LedgerErrors,
            ReasonCounter::AlertDeliveries,
            ReasonCounter::HostErrors,
            ReasonCounter::FleetSyncErrors,
        ]
        .into_iter()
        .map(|counter| (C, counter.stem(), &["reason"][..])),
    );
    families.extend(
        [
            ModelCounter::CostMicroUsd,
            ModelCounter::InputTokens,
            ModelCounter::OutputTokens,
        ]
        .into_iter()
        .map(|counter| (C, counter.stem(), &["agent", "model"][..])),
    );
    families.extend(
        [
            AgentGauge::SpendMicroUsd,
            AgentGauge::LimitMicroUsd,
            AgentGauge::RemainingMicroUsd,
            AgentGauge::ProjectedSpendMicroUsd,
        ]
        .into_iter()
        .map(|gauge| (G, gauge.stem(), AGENT_PERIOD)),
    );
    families.extend(
        [
            RateGauge::BurnMicroUsdPerHour,
            RateGauge::BaselineMicroUsdPerHour,
        ]
        .into_iter()
        .map(|gauge| (G, gauge.stem(), AGENT)),
    );
    families
}

/// `{stem}.agent.{budget}.period.{period}` for per-period metrics.
fn agent_period_name(stem: &str, budget: &str, period: PeriodKind) -> String {
    format!("{stem}.agent.{budget}.period.{}", period.name())
}

/// The agent budgets' ids, and the names they stand for.
#[derive(Debug, Default)]
pub struct Agents {
    names: Vec<String>,
    /// The first this many names have series of their own; the rest fold into `other`.
    tracked: usize,
}

impl Agents {
    /// `names` in the configuration's (sorted) order; the first `max_tracked` are tracked.
    pub fn new(names: impl IntoIterator<Item = String>, max_tracked: usize) -> Agents {
        let names: Vec<String> = names.into_iter().collect();
        let tracked = names.len().min(max_tracked);
        Agents { names, tracked }
    }

    /// The id a configured budget counts under: its own, or `other` if it is folded.
    pub fn id(&self, name: &str) -> Option<AgentId> {
        let index = self.names.binary_search_by(|n| n.as_str().cmp(name)).ok()?;
        if index >= self.tracked {
            return Some(AgentId(OTHER_ID));
        }
        u32::try_from(index).ok().map(AgentId)
    }

    /// The budget's own id, `None` when it reports under `other`: per-agent gauges are
    /// set only for budgets with series of their own, since folded ones would overwrite
    /// each other.
    pub fn own_id(&self, name: &str) -> Option<AgentId> {
        self.id(name).filter(|id| id.0 != OTHER_ID)
    }

    pub fn name(&self, id: AgentId) -> &str {
        if id.0 == OTHER_ID {
            return OTHER;
        }
        self.names
            .get(id.0 as usize)
            .map(String::as_str)
            .unwrap_or("unknown")
    }

    /// The tracked budgets' ids, in the configuration's order (folded ones have no gauges).
    pub fn ids(&self) -> impl Iterator<Item = AgentId> + '_ {
        (0..self.tracked).filter_map(|i| u32::try_from(i).ok().map(AgentId))
    }

    /// How many budgets report under `other`.
    pub fn folded(&self) -> usize {
        self.names.len() - self.tracked
    }
}

/// Price-table families seen as served models, interned: a metric key carries the index.
#[derive(Debug, Default)]
struct Models {
    names: Vec<String>,
    ids: FastMap<String, ModelId>,
}

impl Models {
    fn id(&mut self, family: Option<&str>) -> ModelId {
        let Some(family) = family else {
            return ModelId(OTHER_ID);
        };
        if let Some(id) = self.ids.get(family) {
            return *id;
        }
        let Ok(index) = u32::try_from(self.names.len()) else {
            return ModelId(OTHER_ID);
        };
        let id = ModelId(index);
        self.names.push(sanitize(family));
        self.ids.insert(family.to_string(), id);
        id
    }

    fn name(&self, id: ModelId) -> &str {
        self.names
            .get(id.0 as usize)
            .map(String::as_str)
            .unwrap_or(OTHER)
    }
}

/// A model family as one stat-name segment: anything but `[A-Za-z0-9_-]` (a dot would split
/// the segment) becomes `_`.
pub fn sanitize(family: &str) -> String {
    let cleaned: String = family
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if cleaned.is_empty() {
        OTHER.to_string()
    } else {
        cleaned
    }
}

impl Metric {
    fn kind(self) -> MetricKind {
        match self {
            Metric::Counter(_) => MetricKind::Counter,
            Metric::Gauge(_) => MetricKind::Gauge,
        }
    }

    /// The stat name, labels as segments (see the module doc).
    fn name(self, agents: &Agents, models: &Models) -> String {
        match self {
            Metric::Counter(Counter::Agent(counter, agent)) => {
                format!("{}.agent.{}", counter.stem(), agents.name(agent))
            }
            Metric::Counter(Counter::Overage(agent, period)) => {
                agent_period_name("agent_budget_overage_micro_usd", agents.name(agent), period)
            }
            Metric::Counter(Counter::Alerts(agent, kind)) => format!(
                "agent_budget_alerts.agent.{}.reason.{kind}",
                agents.name(agent)
            ),
            Metric::Counter(Counter::Reason(counter, reason)) => {
                format!("{}.reason.{reason}", counter.stem())
            }
            Metric::Counter(Counter::UnpricedCalls) => "agent_budget_unpriced_calls".to_string(),
            Metric::Counter(Counter::Calls(agent, outcome)) => format!(
                "agent_budget_calls.agent.{}.outcome.{}",
                agents.name(agent),
                outcome.name()
            ),
            Metric::Counter(Counter::Model(counter, agent, model)) => format!(
                "{}.agent.{}.model.{}",
                counter.stem(),
                agents.name(agent),
                models.name(model)
            ),
            Metric::Gauge(Gauge::Agent(gauge, agent, period)) => {
                agent_period_name(gauge.stem(), agents.name(agent), period)
            }
            Metric::Gauge(Gauge::FoldedAgents) => "agent_budget_folded_agents".to_string(),
            Metric::Gauge(Gauge::Rate(gauge, agent)) => {
                format!("{}.agent.{}", gauge.stem(), agents.name(agent))
            }
        }
    }
}

/// One worker's metrics: counts add up in memory and leave on [`Metrics::flush`] (the tick),
/// one host call per metric that moved, instead of one per count on the hot path. Ids are
/// defined on first use and cached.
#[derive(Debug, Default)]
pub struct Metrics {
    agents: Agents,
    models: RefCell<Models>,
    pending: RefCell<FastMap<Counter, u64>>,
    ids: RefCell<FastMap<Metric, Option<u32>>>,
}

impl Metrics {
    pub fn new(agents: Agents) -> Metrics {
        Metrics {
            agents,
            ..Metrics::default()
        }
    }

    pub fn agents(&self) -> &Agents {
        &self.agents
    }

    /// The id a served model counts under: its price-table family, or `other` (None).
    pub fn model(&self, family: Option<&str>) -> ModelId {
        self.models.borrow_mut().id(family)
    }

    /// Counts `delta` now; it reaches the host at the next flush.
    pub fn count(&self, counter: Counter, delta: u64) {
        if delta == 0 {
            return;
        }
        let mut pending = self.pending.borrow_mut();
        let slot = pending.entry(counter).or_insert(0);
        *slot = slot.saturating_add(delta);
    }

    /// Hands every pending count to the host.
    pub fn flush(&self, host: &dyn Host) {
        let pending: Vec<(Counter, u64)> = self.pending.borrow_mut().drain().collect();
        for (counter, delta) in pending {
            if let Some(id) = self.id(host, Metric::Counter(counter)) {
                let _ = host.increment_metric(id, i64::try_from(delta).unwrap_or(i64::MAX));
            }
        }
    }

    pub fn set(&self, host: &dyn Host, gauge: Gauge, value: u64) {
        if let Some(id) = self.id(host, Metric::Gauge(gauge)) {
            let _ = host.record_metric(id, value);
        }
    }

    fn id(&self, host: &dyn Host, metric: Metric) -> Option<u32> {
        if let Some(id) = self.ids.borrow().get(&metric) {
            return *id;
        }
        let name = metric.name(&self.agents, &self.models.borrow());
        let id = match host.define_metric(metric.kind(), &name) {
            Ok(id) => Some(id),
            Err(error) => {
                log::warn!("metric {name} unavailable: {error}");
                None
            }
        };
        self.ids.borrow_mut().insert(metric, id);
        id
    }
}

#[cfg(test)]
mod tests;

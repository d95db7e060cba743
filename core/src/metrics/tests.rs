use super::*;
use crate::host::fake::FakeHost;

fn metrics() -> Metrics {
    Metrics::new(Agents::new(["alpha".to_string(), "bot".to_string()], 500))
}

#[test]
fn names_carry_labels_as_segments() {
    let metrics = metrics();
    let bot = metrics.agents().id("bot").unwrap();
    let cases = [
        (
            Metric::Counter(Counter::Agent(AgentCounter::Requests, bot)),
            "agent_budget_requests.agent.bot",
        ),
        (
            Metric::Gauge(Gauge::Agent(
                AgentGauge::SpendMicroUsd,
                bot,
                PeriodKind::Monthly,
            )),
            "agent_budget_spend_micro_usd.agent.bot.period.monthly",
        ),
        (
            Metric::Counter(Counter::Reason(ReasonCounter::Unmetered, "no_usage")),
            "agent_budget_unmetered.reason.no_usage",
        ),
        (
            Metric::Counter(Counter::Overage(bot, PeriodKind::Daily)),
            "agent_budget_overage_micro_usd.agent.bot.period.daily",
        ),
        (
            Metric::Counter(Counter::Alerts(bot, "soft")),
            "agent_budget_alerts.agent.bot.reason.soft",
        ),
        (
            Metric::Counter(Counter::UnpricedCalls),
            "agent_budget_unpriced_calls",
        ),
        (
            Metric::Counter(Counter::Calls(bot, CallOutcome::Overage)),
            "agent_budget_calls.agent.bot.outcome.overage",
        ),
        (
            Metric::Counter(Counter::Model(
                ModelCounter::InputTokens,
                bot,
                metrics.model(Some("gpt-4.1")),
            )),
            "agent_budget_model_input_tokens.agent.bot.model.gpt-4_1",
        ),
        (
            Metric::Counter(Counter::Model(
                ModelCounter::CostMicroUsd,
                bot,
                metrics.model(None),
            )),
            "agent_budget_model_cost_micro_usd.agent.bot.model.other",
        ),
        (
            Metric::Gauge(Gauge::FoldedAgents),
            "agent_budget_folded_agents",
        ),
    ];
    for (metric, name) in cases {
        assert_eq!(
            metric.name(metrics.agents(), &metrics.models.borrow()),
            name
        );
    }
}

#[test]
fn agent_ids_follow_the_configured_names() {
    let metrics = metrics();
    let agents = metrics.agents();
    assert_eq!(agents.name(agents.id("alpha").unwrap()), "alpha");
    assert_eq!(agents.name(agents.id("bot").unwrap()), "bot");
    assert_eq!(agents.id("nobody"), None);
    assert_eq!(agents.ids().count(), 2);
}

#[test]
fn counts_reach_the_host_on_flush_with_one_definition_each() {
    let host = FakeHost::new();
    let metrics = metrics();
    let bot = metrics.agents().id("bot").unwrap();
    let input = Counter::Agent(AgentCounter::InputTokens, bot);
    metrics.count(input, 5);
    metrics.count(input, 7);
    assert_eq!(host.metric("agent_budget_input_tokens.agent.bot"), None);
    metrics.flush(&host);
    assert_eq!(host.metric("agent_budget_input_tokens.agent.bot"), Some(12));
    metrics.count(input, 1);
    metrics.flush(&host);
    metrics.flush(&host);
    assert_eq!(host.metric("agent_budget_input_tokens.agent.bot"), Some(13));
    let spend = Gauge::Agent(AgentGauge::SpendMicroUsd, bot, PeriodKind::Daily);
    metrics.set(&host, spend, 9);
    metrics.set(&host, spend, 3);
    assert_eq!(
        host.metric("agent_budget_spend_micro_usd.agent.bot.period.daily"),
        Some(3)
    );
    assert_eq!(host.metric_names().len(), 2);
}

#[test]
fn every_outcome_has_its_label() {
    let names = [
        CallOutcome::Allowed,
        CallOutcome::Degraded,
        CallOutcome::Stopped,
        CallOutcome::Overage,
        CallOutcome::Unmetered,
    ]
    .map(CallOutcome::name);
    assert_eq!(
        names,
        ["allowed", "degraded", "stopped", "overage", "unmetered"]
    );
}

#[test]
fn model_families_become_one_stat_name_segment() {
    let cases = [
        ("gpt-4o-mini", "gpt-4o-mini"),
        ("gpt-4.1", "gpt-4_1"),
        ("claude-3.5-sonnet", "claude-3_5-sonnet"),
        ("llama3:70b/instruct", "llama3_70b_instruct"),
        ("Mixed_Case-9", "Mixed_Case-9"),
        ("", "other"),
    ];
    for (family, segment) in cases {
        assert_eq!(sanitize(family), segment, "{family}");
    }
}

#[test]
fn a_family_is_interned_once() {
    let metrics = metrics();
    let first = metrics.model(Some("gpt-4o"));
    assert_eq!(metrics.model(Some("gpt-4o")), first);
    assert_ne!(metrics.model(Some("gpt-4o-mini")), first);
    assert_eq!(metrics.model(None), metrics.model(None));
    assert_eq!(metrics.models.borrow().names.len(), 2);
}

#[test]
fn agents_past_the_limit_fold_into_other() {
    let names = ["a", "b", "c", "d"].map(String::from);
    let agents = Agents::new(names.clone(), 2);
    let ids: Vec<&str> = names
        .iter()
        .map(|n| agents.name(agents.id(n).unwrap()))
        .collect();
    assert_eq!(ids, ["a", "b", "other", "other"]);
    assert_eq!(agents.id("c"), agents.id("d"));
    assert_eq!(agents.ids().count(), 2, "folded agents get no gauges");
    assert_eq!(agents.folded(), 2);
    assert_eq!(agents.id("nobody"), None);

    let all = Agents::new(names, 500);
    assert_eq!(all.folded(), 0);
    assert_eq!(all.name(all.id("d").unwrap()), "d");
}

#[test]
fn folded_agents_count_into_one_series() {
    let host = FakeHost::new();
    let metrics = Metrics::new(Agents::new(["a", "b", "c"].map(String::from), 1));
    for name in ["a", "b", "c"] {
        let agent = metrics.agents().id(name).unwrap();
        metrics.count(Counter::Calls(agent, CallOutcome::Allowed), 1);
    }
    metrics.set(&host, Gauge::FoldedAgents, metrics.agents().folded() as u64);
    metrics.flush(&host);
    assert_eq!(
        host.metric("agent_budget_calls.agent.a.outcome.allowed"),
        Some(1)
    );
    assert_eq!(
        host.metric("agent_budget_calls.agent.other.outcome.allowed"),
        Some(2)
    );
    assert_eq!(host.metric("agent_budget_folded_agents"), Some(2));
}

/// Every name the core builds splits into a family of [`families`] (stem, then label
/// names). The matches below are exhaustive: a new variant does not compile until it is
/// listed here, and so checked.
#[test]
fn every_metric_name_is_in_a_family() {
    use AgentCounter as A;
    fn agent_counter(counter: A) {
        match counter {
            A::Requests
            | A::Rejected
            | A::InputTokens
            | A::CachedInputTokens
            | A::CacheWriteTokens
            | A::OutputTokens
            | A::ReasoningTokens
            | A::CostMicroUsd
            | A::Unmetered
            | A::EstimatedRequests
            | A::DegradedRequests => {}
        }
    }
    fn counter(counter: Counter) {
        match counter {
            Counter::Agent(..)
            | Counter::Overage(..)
            | Counter::Alerts(..)
            | Counter::Reason(..)
            | Counter::UnpricedCalls
            | Counter::Calls(..)
            | Counter::Model(..) => {}
        }
    }
    fn gauge(gauge: Gauge) {
        match gauge {
            Gauge::Agent(..) | Gauge::FoldedAgents | Gauge::Rate(..) => {}
        }
    }
    fn reason(counter: ReasonCounter) {
        match counter {
            ReasonCounter::Unmetered
            | ReasonCounter::Unattributed
            | ReasonCounter::LedgerErrors
            | ReasonCounter::AlertDeliveries
            | ReasonCounter::HostErrors
            | ReasonCounter::FleetSyncErrors => {}
        }
    }
    fn model(counter: ModelCounter) {
        match counter {
            ModelCounter::CostMicroUsd | ModelCounter::InputTokens | ModelCounter::OutputTokens => {
            }
        }
    }
    fn agent_gauge(gauge: AgentGauge) {
        match gauge {
            AgentGauge::SpendMicroUsd
            | AgentGauge::LimitMicroUsd
            | AgentGauge::RemainingMicroUsd
            | AgentGauge::ProjectedSpendMicroUsd => {}
        }
    }
    fn rate(gauge: RateGauge) {
        match gauge {
            RateGauge::BurnMicroUsdPerHour | RateGauge::BaselineMicroUsdPerHour => {}
        }
    }
    let metrics = metrics();
    let bot = metrics.agents().id("bot").unwrap();
    let model_id = metrics.model(Some("gpt-4o"));
    let agent_counters = [
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
    ];
    let reasons = [
        ReasonCounter::Unmetered,
        ReasonCounter::Unattributed,
        ReasonCounter::LedgerErrors,
        ReasonCounter::AlertDeliveries,
        ReasonCounter::HostErrors,
        ReasonCounter::FleetSyncErrors,
    ];
    let models = [
        ModelCounter::CostMicroUsd,
        ModelCounter::InputTokens,
        ModelCounter::OutputTokens,
    ];
    let agent_gauges = [
        AgentGauge::SpendMicroUsd,
        AgentGauge::LimitMicroUsd,
        AgentGauge::RemainingMicroUsd,
        AgentGauge::ProjectedSpendMicroUsd,
    ];
    let rates = [
        RateGauge::BurnMicroUsdPerHour,
        RateGauge::BaselineMicroUsdPerHour,
    ];
    let mut all: Vec<Metric> = Vec::new();
    all.extend(agent_counters.map(|c| Metric::Counter(Counter::Agent(c, bot))));
    all.push(Metric::Counter(Counter::Overage(bot, PeriodKind::Daily)));
    all.push(Metric::Counter(Counter::Alerts(bot, "soft")));
    all.extend(reasons.map(|r| Metric::Counter(Counter::Reason(r, "x"))));
    all.push(Metric::Counter(Counter::UnpricedCalls));
    all.push(Metric::Counter(Counter::Calls(bot, CallOutcome::Allowed)));
    all.extend(models.map(|m| Metric::Counter(Counter::Model(m, bot, model_id))));
    all.extend(agent_gauges.map(|g| Metric::Gauge(Gauge::Agent(g, bot, PeriodKind::Monthly))));
    all.push(Metric::Gauge(Gauge::FoldedAgents));
    all.extend(rates.map(|g| Metric::Gauge(Gauge::Rate(g, bot))));
    // Every variant above was listed (the calls only compile with the matches complete).
    agent_counters.into_iter().for_each(agent_counter);
    reasons.into_iter().for_each(reason);
    models.into_iter().for_each(model);
    agent_gauges.into_iter().for_each(agent_gauge);
    rates.into_iter().for_each(rate);
    let families = families();
    for metric in all {
        match metric {
            Metric::Counter(c) => counter(c),
            Metric::Gauge(g) => gauge(g),
        }
        let name = metric.name(metrics.agents(), &metrics.models.borrow());
        let mut segments = name.split('.');
        let stem = segments.next().unwrap();
        let labels: Vec<&str> = segments.step_by(2).collect();
        assert!(
            families.iter().any(|(kind, s, l)| *kind == metric.kind()
                && *s == stem
                && *l == labels.as_slice()),
            "{name} has no family"
        );
    }
    let mut stems: Vec<_> = families.iter().map(|(_, stem, _)| *stem).collect();
    stems.sort_unstable();
    stems.dedup();
    assert_eq!(stems.len(), families.len(), "a family listed twice");
}

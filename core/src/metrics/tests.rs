use super::*;
use crate::host::fake::FakeHost;

fn metrics() -> Metrics {
    Metrics::new(Agents::new(["alpha".to_string(), "bot".to_string()]))
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
    ];
    for (metric, name) in cases {
        assert_eq!(metric.name(metrics.agents()), name);
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

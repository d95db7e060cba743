use super::*;
use crate::host::fake::FakeHost;

#[test]
fn names_carry_labels_as_segments() {
    assert_eq!(
        agent_counter_name(AgentCounter::Requests, "bot"),
        "agent_budget_requests.agent.bot"
    );
    assert_eq!(
        agent_gauge_name(AgentGauge::SpendMicroUsd, "bot", PeriodKind::Monthly),
        "agent_budget_spend_micro_usd.agent.bot.period.monthly"
    );
    assert_eq!(
        reason_counter_name(ReasonCounter::Unmetered, "no_usage"),
        "agent_budget_unmetered.reason.no_usage"
    );
}

#[test]
fn defines_each_metric_once() {
    let host = FakeHost::new();
    let metrics = Metrics::new();
    metrics.agent(&host, AgentCounter::InputTokens, "bot", 5);
    metrics.agent(&host, AgentCounter::InputTokens, "bot", 7);
    metrics.gauge(
        &host,
        AgentGauge::SpendMicroUsd,
        "bot",
        PeriodKind::Daily,
        9,
    );
    metrics.gauge(
        &host,
        AgentGauge::SpendMicroUsd,
        "bot",
        PeriodKind::Daily,
        3,
    );
    assert_eq!(host.metric("agent_budget_input_tokens.agent.bot"), Some(12));
    assert_eq!(
        host.metric("agent_budget_spend_micro_usd.agent.bot.period.daily"),
        Some(3)
    );
    assert_eq!(host.metric_names().len(), 2);
}

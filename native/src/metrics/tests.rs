use super::*;

#[test]
fn core_names_split_into_family_and_labels() {
    let cases: [(&str, &str, &[&str], &[&str]); 5] = [
        (
            "agent_budget_unpriced_calls",
            "agent_budget_unpriced_calls",
            &[],
            &[],
        ),
        (
            "agent_budget_requests.agent.bot-1",
            "agent_budget_requests",
            &["agent"],
            &["bot-1"],
        ),
        (
            "agent_budget_calls.agent.a.outcome.allowed",
            "agent_budget_calls",
            &["agent", "outcome"],
            &["a", "allowed"],
        ),
        (
            "agent_budget_host_errors.reason.get_buffer",
            "agent_budget_host_errors",
            &["reason"],
            &["get_buffer"],
        ),
        // Segments that do not pair up: one family, no labels, nothing lost.
        ("odd.agent", "odd.agent", &[], &[]),
    ];
    for (name, family, labels, values) in cases {
        let (got_family, got_labels, got_values) = split(name);
        assert_eq!(got_family, family, "{name}");
        assert_eq!(got_labels, labels, "{name}");
        assert_eq!(got_values, values, "{name}");
    }
}

#[test]
fn workers_share_ids_and_changes_add_up_until_the_flush() {
    let registry = Registry::default();
    let a = registry
        .define(MetricKind::Counter, "agent_budget_requests.agent.a")
        .unwrap();
    let again = registry
        .define(MetricKind::Counter, "agent_budget_requests.agent.a")
        .unwrap();
    let gauge = registry
        .define(
            MetricKind::Gauge,
            "agent_budget_spend_micro_usd.agent.a.period.day",
        )
        .unwrap();
    assert_eq!(a, again);
    assert_ne!(a, gauge);
    registry.increment(a, 2).unwrap();
    registry.increment(again, 3).unwrap();
    registry.record(gauge, 7).unwrap();
    registry.record(gauge, 5).unwrap();
    assert_eq!(
        registry.pending(),
        vec![
            ("agent_budget_requests.agent.a".to_string(), Change::Add(5)),
            (
                "agent_budget_spend_micro_usd.agent.a.period.day".to_string(),
                Change::Set(5)
            ),
        ]
    );
}

#[test]
fn unknown_ids_and_negative_counts_are_refused() {
    let registry = Registry::default();
    let id = registry.define(MetricKind::Counter, "c").unwrap();
    assert_eq!(registry.increment(id + 1, 1), Err(HostError::Status(1)));
    assert_eq!(registry.record(id + 1, 1), Err(HostError::Status(1)));
    assert_eq!(registry.increment(id, -1), Err(HostError::Status(2)));
    assert!(registry.pending().is_empty());
}

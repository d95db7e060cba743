use super::*;
use crate::host::fake::FakeHost;

const NOW: i64 = 1_795_900_000; // 2026-11-28T...

fn worker() -> Worker {
    Worker::new(
        Config::from_bytes(br#"{"agents":{"bot":{"daily_usd":1,"monthly_usd":10}}}"#).unwrap(),
    )
}

fn bot() -> AccountKey {
    AccountKey::Agent("bot".into())
}

#[test]
fn first_tick_creates_the_ledger_and_publishes_limits_and_spend() {
    let host = FakeHost::new().at_unix_secs(NOW);
    let worker = worker();
    worker.tick(&host);
    let keys = host.shared_keys();
    assert_eq!(
        keys.iter()
            .filter(|k| k.starts_with("agent_budget/v2/"))
            .count(),
        crate::ledger::SHARDS as usize
    );
    assert_eq!(
        host.metric("agent_budget_limit_micro_usd.agent.bot.period.daily"),
        Some(1_000_000)
    );
    assert_eq!(
        host.metric("agent_budget_spend_micro_usd.agent.bot.period.monthly"),
        Some(0)
    );
}

#[test]
fn rollover_drops_days_before_yesterday() {
    let host = FakeHost::new().at_unix_secs(NOW);
    let worker = worker();
    worker.tick(&host);
    let ledger = Ledger::new(&host);
    let today = Period::containing(PeriodKind::Daily, worker.config.time_zone, NOW);
    ledger.add_spend(&today, &bot(), 5).unwrap();
    host.set_unix_secs(NOW + 86_400);
    worker.tick(&host);
    assert_eq!(
        ledger.read(&today, &bot()).unwrap().spent,
        5,
        "yesterday is kept"
    );
    host.set_unix_secs(NOW + 2 * 86_400);
    worker.tick(&host);
    assert_eq!(ledger.read(&today, &bot()).unwrap().spent, 0, "released");
}

#[test]
fn periods_are_cached_until_the_day_ends() {
    let worker = worker();
    let today = worker.current_periods(NOW);
    assert_eq!(worker.current_periods(NOW + 1), today);
    let tomorrow = worker.current_periods(today[0].end);
    assert_ne!(tomorrow[0], today[0]);
    assert_eq!(tomorrow[0].start, today[0].end);
}

#[test]
fn counts_wait_for_the_tick() {
    let host = FakeHost::new().at_unix_secs(NOW);
    let worker = worker();
    let bot = worker.metrics.agents().id("bot").unwrap();
    worker.metrics.count(
        crate::metrics::Counter::Agent(crate::metrics::AgentCounter::Requests, bot),
        3,
    );
    assert_eq!(host.metric("agent_budget_requests.agent.bot"), None);
    worker.tick(&host);
    assert_eq!(host.metric("agent_budget_requests.agent.bot"), Some(3));
}

#[test]
fn pending_charges_are_retried_on_tick() {
    let host = FakeHost::new().at_unix_secs(NOW);
    let worker = worker();
    worker.tick(&host);
    let today = Period::containing(PeriodKind::Daily, worker.config.time_zone, NOW);
    worker.defer(PendingCharge {
        key: bot(),
        period: today.clone(),
        micro_usd: 42,
        release: 0,
    });
    assert_eq!(worker.pending_len(), 1);
    worker.tick(&host);
    assert_eq!(worker.pending_len(), 0);
    assert_eq!(Ledger::new(&host).read(&today, &bot()).unwrap().spent, 42);
    assert_eq!(
        host.metric("agent_budget_spend_micro_usd.agent.bot.period.daily"),
        Some(42)
    );
}

#[test]
fn alerts_are_delivered_retried_and_counted() {
    let host = FakeHost::new().at_unix_secs(NOW);
    let config =
        br#"{"agents":{"bot":{"daily_usd":1}},"alerts":{"cluster":"hooks","format":"json"}}"#;
    let worker = Worker::new(Config::from_bytes(config).unwrap());
    worker.tick(&host);
    let alert = Alert {
        kind: crate::alerts::AlertKind::Soft,
        agent: "bot".into(),
        period: PeriodKind::Daily,
        period_id: "2026-11-28".into(),
        spend_micro_usd: 800_000,
        budget_micro_usd: 1_000_000,
        threshold: 0.8,
        action: "stop".into(),
        at_unix_secs: NOW,
        period_end_unix_secs: NOW + 3_600,
        trigger: crate::alerts::Trigger::Reached,
    };
    worker.raise_alert(alert.clone());
    worker.raise_alert(alert); // the same crossing again: queued once
    worker.metrics.flush(&host);
    assert_eq!(
        host.metric("agent_budget_alerts.agent.bot.reason.soft"),
        Some(2)
    );
    worker.tick(&host);
    let sent = host.dispatched();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].cluster, "hooks");
    assert!(sent[0]
        .headers
        .contains(&(":path".to_string(), "/".to_string())));
    let body: serde_json::Value = serde_json::from_slice(&sent[0].body).unwrap();
    assert_eq!(body["agent"], "bot");
    // The receiver fails: retried after the backoff, not before.
    worker.on_alert_reply(&host, sent[0].token, 500);
    assert_eq!(
        host.metric("agent_budget_alert_deliveries.reason.failed"),
        Some(1)
    );
    worker.tick(&host);
    assert_eq!(host.dispatched().len(), 1, "backing off");
    host.set_unix_secs(NOW + 2);
    worker.tick(&host);
    let sent = host.dispatched();
    assert_eq!(sent.len(), 2);
    worker.on_alert_reply(&host, sent[1].token, 200);
    assert_eq!(
        host.metric("agent_budget_alert_deliveries.reason.delivered"),
        Some(1)
    );
    host.set_unix_secs(NOW + 120);
    worker.tick(&host);
    assert_eq!(host.dispatched().len(), 2, "never sent again");
}

#[test]
fn folded_agents_are_counted_and_get_no_gauges() {
    let host = FakeHost::new().at_unix_secs(NOW);
    let worker = Worker::new(
        Config::from_bytes(
            br#"{"max_tracked_agents":2,"agents":{"a":{"daily_usd":1},"b":{"daily_usd":1},"c":{"daily_usd":1}}}"#,
        )
        .unwrap(),
    );
    worker.tick(&host);
    assert_eq!(host.metric("agent_budget_folded_agents"), Some(1));
    for (agent, gauge) in [("a", Some(1_000_000)), ("b", Some(1_000_000)), ("c", None)] {
        let name = format!("agent_budget_limit_micro_usd.agent.{agent}.period.daily");
        assert_eq!(host.metric(&name), gauge, "{name}");
    }
    assert!(host
        .metric_names()
        .iter()
        .all(|n| !n.contains(".agent.other.")));
}

#[test]
fn host_errors_are_counted_per_call_on_the_tick() {
    let host = FakeHost::new().at_unix_secs(NOW);
    let worker = worker();
    for (call, times) in [
        ("get_buffer", 2),
        ("set_header", 1),
        ("send_local_reply", 3),
    ] {
        for _ in 0..times {
            worker.host_error(call, &HostError::Status(2));
        }
    }
    assert_eq!(
        host.metric("agent_budget_host_errors.reason.get_buffer"),
        None
    );
    worker.tick(&host);
    assert_eq!(
        host.metric("agent_budget_host_errors.reason.get_buffer"),
        Some(2)
    );
    assert_eq!(
        host.metric("agent_budget_host_errors.reason.set_header"),
        Some(1)
    );
    assert_eq!(
        host.metric("agent_budget_host_errors.reason.send_local_reply"),
        Some(3)
    );
    assert_eq!(
        host.metric("agent_budget_host_errors.reason.get_property"),
        None
    );
}

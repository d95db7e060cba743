use super::*;
use crate::period::{days_from_civil, Period, TimeZone};
use std::collections::BTreeSet;

const NOW: i64 = 1_795_900_000; // 2026-11-28T...Z

fn alert(kind: AlertKind, agent: &str, period: PeriodKind) -> Alert {
    let p = Period::containing(period, TimeZone::UTC, NOW);
    let (spend, threshold) = match kind {
        AlertKind::Soft => (8_000_000, 0.8),
        _ => (10_250_000, 1.0),
    };
    let action = match kind {
        AlertKind::LimitDegrade | AlertKind::DegradeExhausted => "degrade",
        AlertKind::LimitAlert => "alert",
        _ => "stop",
    };
    Alert {
        kind,
        agent: agent.to_string(),
        period,
        period_id: p.id.to_string(),
        spend_micro_usd: spend,
        budget_micro_usd: 10_000_000,
        threshold,
        action: action.to_string(),
        at_unix_secs: NOW,
        period_end_unix_secs: p.end,
        trigger: Trigger::Reached,
    }
}

fn soft(agent: &str) -> Alert {
    alert(AlertKind::Soft, agent, PeriodKind::Daily)
}

/// The request bodies an outbox sends first for `alerts`, in order.
fn first_bodies(format: PayloadFormat, alerts: &[Alert]) -> Vec<Vec<u8>> {
    let mut outbox = Outbox::new(format, 5, alerts.len().max(1));
    for alert in alerts {
        assert!(outbox.push(alert.clone()));
    }
    outbox.due(NOW).into_iter().map(|d| d.body).collect()
}

/// Parses `YYYY-MM-DDTHH:MM:SSZ` (what `format_utc` writes: RFC 3339 in UTC) to Unix secs.
fn parse_rfc3339(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    if b.len() != 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
        || b[19] != b'Z'
    {
        return None;
    }
    let num = |range: std::ops::Range<usize>| text.get(range)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, s) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    Some(days_from_civil(y, mo as u32, d as u32) * 86_400 + h * 3600 + mi * 60 + s)
}

fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[test]
fn kinds_have_severity_priority_and_names() {
    let cases = [
        (
            AlertKind::Soft,
            "soft",
            "warning",
            "P3",
            "AgentBudgetThreshold",
        ),
        (
            AlertKind::LimitStop,
            "limit_stop",
            "critical",
            "P2",
            "AgentBudgetExhausted",
        ),
        (
            AlertKind::LimitDegrade,
            "limit_degrade",
            "critical",
            "P2",
            "AgentBudgetExhausted",
        ),
        (
            AlertKind::LimitAlert,
            "limit_alert",
            "critical",
            "P1",
            "AgentBudgetExhausted",
        ),
        (
            AlertKind::DegradeExhausted,
            "degrade_exhausted",
            "critical",
            "P2",
            "AgentBudgetDegradeExhausted",
        ),
        (
            AlertKind::Anomaly,
            "anomaly",
            "warning",
            "P2",
            "AgentBudgetAnomaly",
        ),
        (
            AlertKind::Projection,
            "projection",
            "warning",
            "P3",
            "AgentBudgetProjectedOverrun",
        ),
    ];
    assert_eq!(cases.len(), AlertKind::ALL.len());
    for (kind, name, severity, priority, alertname) in cases {
        assert_eq!(
            (
                kind.name(),
                kind.severity(),
                kind.priority(),
                kind.alertname()
            ),
            (name, severity, priority, alertname),
            "{kind:?}"
        );
    }
}

#[test]
fn dedup_key_identifies_the_crossing_only() {
    let base = soft("bot");
    assert_eq!(base.dedup_key(), "soft/daily/2026-11-28/bot");

    // Same crossing seen later with more spend, by another worker: same key.
    let mut later = base.clone();
    later.spend_micro_usd += 1;
    later.at_unix_secs += 30;
    later.threshold = 0.9;
    assert_eq!(later.dedup_key(), base.dedup_key());

    // Each identifying field changes the key.
    let mut variants = vec![base.clone()];
    for kind in AlertKind::ALL {
        variants.push(Alert {
            kind,
            ..base.clone()
        });
    }
    variants.push(alert(AlertKind::Soft, "bot", PeriodKind::Monthly));
    variants.push(Alert {
        period_id: "2026-11-29".into(),
        ..base.clone()
    });
    for agent in ["bot2", "bot/x", "x/bot", "daily/2026-11-28/bot", ""] {
        variants.push(soft(agent));
    }
    let keys: BTreeSet<String> = variants.iter().map(Alert::dedup_key).collect();
    // `base` and `kind: Soft` are the same crossing.
    assert_eq!(keys.len(), variants.len() - 1);
}

#[test]
fn percentages_are_integer_and_rounded_down() {
    let cases = [
        (0, 10_000_000, Some(0)),
        (7_999_999, 10_000_000, Some(79)),
        (8_000_000, 10_000_000, Some(80)),
        (10_000_000, 10_000_000, Some(100)),
        (25_000_001, 10_000_000, Some(250)),
        (1, 3, Some(33)),
        (u64::MAX, 1, Some(u64::MAX)),
        (u64::MAX, u64::MAX, Some(100)),
        (5, 0, None),
    ];
    for (spend, budget, want) in cases {
        assert_eq!(percent(spend, budget), want, "{spend}/{budget}");
    }
    let thresholds = [
        (0.8, "80%"),
        (1.0, "100%"),
        (0.825, "82.5%"),
        (0.3333, "33.33%"),
        (0.07, "7%"),
    ];
    for (threshold, want) in thresholds {
        assert_eq!(threshold_percent(threshold), want, "{threshold}");
    }
}

#[test]
fn alertmanager_body_is_a_postable_alerts_array() {
    let cases = [
        (
            AlertKind::Soft,
            PeriodKind::Daily,
            "AgentBudgetThreshold",
            "warning",
            "P3",
            "stop",
            "bot reached 80% of its daily budget",
            "$8.000000 of $10.000000 (80%)",
            "2026-11-29T00:00:00Z",
        ),
        (
            AlertKind::LimitStop,
            PeriodKind::Monthly,
            "AgentBudgetExhausted",
            "critical",
            "P2",
            "stop",
            "bot used up its monthly budget: calls are stopped",
            "$10.250000 of $10.000000 (102%)",
            "2026-12-01T00:00:00Z",
        ),
        (
            AlertKind::LimitAlert,
            PeriodKind::Daily,
            "AgentBudgetExhausted",
            "critical",
            "P1",
            "alert",
            "bot used up its daily budget: calls continue and spend keeps growing",
            "$10.250000 of $10.000000 (102%)",
            "2026-11-29T00:00:00Z",
        ),
        (
            AlertKind::DegradeExhausted,
            PeriodKind::Daily,
            "AgentBudgetDegradeExhausted",
            "critical",
            "P2",
            "degrade",
            "bot used up its daily degrade allowance: calls are stopped",
            "$10.250000 of $10.000000 (102%)",
            "2026-11-29T00:00:00Z",
        ),
    ];
    for (kind, period, alertname, severity, priority, action, summary, figures, ends) in cases {
        let a = alert(kind, "bot", period);
        let bodies = first_bodies(PayloadFormat::Alertmanager, std::slice::from_ref(&a));
        assert_eq!(bodies.len(), 1);
        let parsed: Value = serde_json::from_slice(&bodies[0]).unwrap();
        let items = parsed.as_array().expect("array");
        assert_eq!(items.len(), 1);
        let item = items[0].as_object().unwrap();
        let keys: Vec<&str> = item.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "labels",
                "annotations",
                "startsAt",
                "endsAt",
                "generatorURL"
            ]
        );
        for map in ["labels", "annotations"] {
            let map = item[map].as_object().unwrap();
            for (name, value) in map {
                assert!(is_label_name(name), "{name}");
                assert!(value.is_string(), "{name} = {value}");
                assert!(!value.as_str().unwrap().is_empty(), "{name}");
            }
        }
        let label = |name: &str| item["labels"][name].as_str().unwrap().to_string();
        assert_eq!(label("alertname"), alertname, "{kind:?}");
        assert_eq!(label("agent"), "bot");
        assert_eq!(label("period"), period.name());
        assert_eq!(label("severity"), severity);
        assert_eq!(label("priority"), priority);
        assert_eq!(label("action"), action);
        let annotation = |name: &str| item["annotations"][name].as_str().unwrap().to_string();
        assert_eq!(annotation("summary"), summary);
        let description = annotation("description");
        assert!(description.contains(figures), "{description}");
        assert!(
            description.contains(&format!("resets at {ends}")),
            "{description}"
        );
        assert_eq!(
            parse_rfc3339(item["startsAt"].as_str().unwrap()),
            Some(NOW),
            "{kind:?}"
        );
        assert_eq!(item["endsAt"], ends);
        assert_eq!(
            parse_rfc3339(ends),
            Some(a.period_end_unix_secs),
            "endsAt is the reset"
        );
        assert_eq!(item["generatorURL"], "");
    }
}

#[test]
fn alertmanager_batches_and_clamps_late_alerts() {
    let alerts: Vec<Alert> = (0..MAX_BATCH + 3)
        .map(|i| soft(&format!("bot-{i}")))
        .collect();
    let bodies = first_bodies(PayloadFormat::Alertmanager, &alerts);
    let lens: Vec<usize> = bodies
        .iter()
        .map(|body| {
            serde_json::from_slice::<Value>(body)
                .unwrap()
                .as_array()
                .unwrap()
                .len()
        })
        .collect();
    assert_eq!(lens, [MAX_BATCH, 3]);
    assert!(first_bodies(PayloadFormat::Alertmanager, &[]).is_empty());

    // Seen after its period ended: must not end before it starts (Alertmanager would 400).
    let mut late = soft("bot");
    late.at_unix_secs = late.period_end_unix_secs + 120;
    let body: Value = serde_json::from_slice(&alertmanager_body([&late])).unwrap();
    assert_eq!(body[0]["startsAt"], body[0]["endsAt"]);
    // The description still names the real reset.
    assert!(body[0]["annotations"]["description"]
        .as_str()
        .unwrap()
        .contains("resets at 2026-11-29T00:00:00Z"));
}

#[test]
fn json_body_is_one_flat_object_per_alert() {
    let cases = [
        (
            AlertKind::Soft,
            "[P3 warning] bot reached 80% of its daily budget (2026-11-28): spend $8.000000 \
             of $10.000000 (80%), resets at 2026-11-29T00:00:00Z",
            "8.000000",
            80,
            0.8,
        ),
        (
            AlertKind::LimitDegrade,
            "[P2 critical] bot used up its daily budget (2026-11-28): calls continue degraded; \
             spend $10.250000 of $10.000000 (102%), resets at 2026-11-29T00:00:00Z",
            "10.250000",
            102,
            1.0,
        ),
    ];
    for (kind, text, spend, pct, threshold) in cases {
        let a = alert(kind, "bot", PeriodKind::Daily);
        let bodies = first_bodies(PayloadFormat::Json, &[a.clone(), soft("other")]);
        assert_eq!(bodies.len(), 2, "one body per alert");
        let v: Value = serde_json::from_slice(&bodies[0]).unwrap();
        assert!(v.is_object());
        assert_eq!(v["text"], text);
        assert!(!v["text"].as_str().unwrap().contains('\n'));
        assert_eq!(v["agent"], "bot");
        assert_eq!(v["period"], "daily");
        assert_eq!(v["period_id"], "2026-11-28");
        assert_eq!(v["kind"], kind.name());
        assert_eq!(v["severity"], kind.severity());
        assert_eq!(v["priority"], kind.priority());
        assert_eq!(v["spend_usd"], spend);
        assert_eq!(v["budget_usd"], "10.000000");
        assert_eq!(v["percent"], pct);
        assert_eq!(v["threshold"], threshold);
        assert_eq!(v["action"], a.action.as_str());
        assert_eq!(parse_rfc3339(v["time"].as_str().unwrap()), Some(NOW));
        assert_eq!(v["resets_at"], "2026-11-29T00:00:00Z");
        let other: Value = serde_json::from_slice(&bodies[1]).unwrap();
        assert_eq!(other["agent"], "other");
    }
    let mut free = soft("bot");
    free.budget_micro_usd = 0;
    let v: Value = serde_json::from_slice(&json_body(&free)).unwrap();
    assert!(v["percent"].is_null());
    assert!(v["text"].as_str().unwrap().contains("(no budget)"));
}

#[test]
fn log_line_is_key_value() {
    let cases = [
        (
            "bot",
            "agent_budget_alert kind=soft severity=warning priority=P3 agent=bot period=daily \
             period_id=2026-11-28 spend_usd=8.000000 budget_usd=10.000000 percent=80 \
             threshold=0.8 action=stop at=2026-11-28T21:06:40Z resets_at=2026-11-29T00:00:00Z",
        ),
        (
            "my bot=\"x\"",
            "agent_budget_alert kind=soft severity=warning priority=P3 agent=\"my bot=\\\"x\\\"\" \
             period=daily period_id=2026-11-28 spend_usd=8.000000 budget_usd=10.000000 \
             percent=80 threshold=0.8 action=stop at=2026-11-28T21:06:40Z \
             resets_at=2026-11-29T00:00:00Z",
        ),
        ("", "agent=\"\""),
    ];
    for (agent, want) in cases {
        let line = log_line(&soft(agent));
        assert!(line.contains(want), "{line}");
        assert!(!line.contains('\n'));
    }
}

#[test]
fn backoff_doubles_and_caps() {
    let cases = [
        (0, 1),
        (1, 1),
        (2, 2),
        (3, 4),
        (4, 8),
        (6, 32),
        (7, 60),
        (40, 60),
        (u32::MAX, 60),
    ];
    for (failures, want) in cases {
        assert_eq!(backoff_secs(failures), want, "{failures}");
    }
}

/// A scripted step against the outbox with a manual clock.
enum Step {
    /// Call `due` at this time and expect the keys of each delivery (in order).
    Due(i64, &'static [&'static [&'static str]]),
    /// Report the outcome of the n-th delivery handed out so far (0-based).
    Sent(usize, bool, i64, bool),
    /// Push an alert for this agent; expect whether it was queued.
    Push(&'static str, bool),
}

fn run(name: &str, outbox: &mut Outbox, steps: &[Step]) -> Vec<Delivery> {
    let mut handed = Vec::new();
    for (i, step) in steps.iter().enumerate() {
        match step {
            Step::Due(now, want) => {
                let got = outbox.due(*now);
                let keys: Vec<Vec<String>> = got.iter().map(|d| d.alerts.clone()).collect();
                let want: Vec<Vec<String>> = want
                    .iter()
                    .map(|d| d.iter().map(|a| soft(a).dedup_key()).collect())
                    .collect();
                assert_eq!(keys, want, "{name} step {i}: due({now})");
                handed.extend(got);
            }
            Step::Sent(n, ok, now, want) => {
                let id = handed[*n].id;
                assert_eq!(outbox.sent(id, *ok, *now), *want, "{name} step {i}: sent");
            }
            Step::Push(agent, want) => {
                assert_eq!(outbox.push(soft(agent)), *want, "{name} step {i}: push");
            }
        }
    }
    handed
}

struct ScheduleCase {
    name: &'static str,
    max_attempts: u32,
    steps: Vec<Step>,
    /// delivered, failed attempts, given up, dropped.
    counters: [u64; 4],
    /// Alerts still queued at the end.
    left: usize,
}

#[test]
fn retry_schedule_with_a_manual_clock() {
    use Step::*;
    let t = NOW;
    let cases = [
        ScheduleCase {
            name: "new alerts go out at once, success removes them",
            max_attempts: 5,
            steps: vec![
                Push("a", true),
                Push("b", true),
                Due(t, &[&["a", "b"]]),
                Due(t + 1, &[]),
                Sent(0, true, t + 1, true),
                Due(t + 100, &[]),
            ],
            counters: [2, 0, 0, 0],
            left: 0,
        },
        ScheduleCase {
            name: "failures back off 1, 2, 4, 8 s, then give up after 5 attempts",
            max_attempts: 5,
            steps: vec![
                Push("a", true),
                Due(t, &[&["a"]]),
                Sent(0, false, t, true),
                Due(t, &[]),
                Due(t + 1, &[&["a"]]),
                Sent(1, false, t + 1, true),
                Due(t + 2, &[]),
                Due(t + 3, &[&["a"]]),
                Sent(2, false, t + 3, true),
                Due(t + 6, &[]),
                Due(t + 7, &[&["a"]]),
                Sent(3, false, t + 7, true),
                Due(t + 14, &[]),
                Due(t + 15, &[&["a"]]),
                Sent(4, false, t + 15, true),
                Due(t + 1000, &[]),
            ],
            counters: [0, 5, 1, 0],
            left: 0,
        },
        ScheduleCase {
            name: "an attempt awaiting its reply is not sent again",
            max_attempts: 5,
            steps: vec![
                Push("a", true),
                Due(t, &[&["a"]]),
                Push("b", true),
                Due(t + 1, &[&["b"]]),
                Due(t + 5, &[]),
                Sent(1, true, t + 5, true),
                Sent(0, true, t + 5, true),
            ],
            counters: [2, 0, 0, 0],
            left: 0,
        },
        ScheduleCase {
            name: "no reply within the timeout counts as a failure",
            max_attempts: 5,
            steps: vec![
                Push("a", true),
                Due(t, &[&["a"]]),
                Due(t + REPLY_TIMEOUT_SECS - 1, &[]),
                // Times out at t+10 and backs off 1 s.
                Due(t + REPLY_TIMEOUT_SECS, &[]),
                Due(t + REPLY_TIMEOUT_SECS + 1, &[&["a"]]),
                // The first attempt's failure arrives late: already counted, ignored.
                Sent(0, false, t + 12, false),
                Sent(1, true, t + 12, true),
            ],
            counters: [1, 1, 0, 0],
            left: 0,
        },
        ScheduleCase {
            name: "a late success after the timeout removes the alert: never sent again",
            max_attempts: 5,
            steps: vec![
                Push("a", true),
                Due(t, &[&["a"]]),
                Due(t + REPLY_TIMEOUT_SECS, &[]),
                Sent(0, true, t + REPLY_TIMEOUT_SECS, true),
                Due(t + 100, &[]),
            ],
            counters: [1, 1, 0, 0],
            left: 0,
        },
        ScheduleCase {
            name: "a late success while the retry is in flight wins; the retry's reply is moot",
            max_attempts: 5,
            steps: vec![
                Push("a", true),
                Due(t, &[&["a"]]),
                Due(t + REPLY_TIMEOUT_SECS, &[]),
                Due(t + REPLY_TIMEOUT_SECS + 1, &[&["a"]]),
                Sent(0, true, t + 12, true),
                Sent(1, false, t + 13, false),
                Due(t + 100, &[]),
            ],
            counters: [1, 1, 0, 0],
            left: 0,
        },
        ScheduleCase {
            name: "timeouts also give up after max attempts",
            max_attempts: 2,
            steps: vec![
                Push("a", true),
                Due(t, &[&["a"]]),
                Due(t + 10, &[]),
                Due(t + 11, &[&["a"]]),
                Due(t + 21, &[]),
                Due(t + 1000, &[]),
                Sent(1, true, t + 1000, false),
            ],
            counters: [0, 2, 1, 0],
            left: 0,
        },
        ScheduleCase {
            name: "a batch fails together and retries together; newcomers join",
            max_attempts: 5,
            steps: vec![
                Push("a", true),
                Push("b", true),
                Due(t, &[&["a", "b"]]),
                Push("c", true),
                Sent(0, false, t, true),
                Due(t + 1, &[&["a", "b", "c"]]),
                Sent(1, true, t + 1, true),
            ],
            counters: [3, 1, 0, 0],
            left: 0,
        },
        ScheduleCase {
            name: "pushing a key again is refused, even after delivery or give-up",
            max_attempts: 1,
            steps: vec![
                Push("a", true),
                Push("a", false),
                Push("b", true),
                Due(t, &[&["a", "b"]]),
                Sent(0, true, t, true),
                Push("a", false),
                Push("b", false),
                Push("c", true),
                Due(t, &[&["c"]]),
                Sent(1, false, t, true),
                Push("c", false),
                Due(t + 100, &[]),
            ],
            counters: [2, 1, 1, 0],
            left: 0,
        },
        ScheduleCase {
            name: "unknown ids are ignored",
            max_attempts: 5,
            steps: vec![Push("a", true), Due(t, &[&["a"]])],
            counters: [0, 0, 0, 0],
            left: 1,
        },
    ];
    for case in cases {
        let ScheduleCase {
            name,
            max_attempts,
            steps,
            counters: [delivered, failed, given_up, dropped],
            left,
        } = case;
        let mut outbox = Outbox::new(PayloadFormat::Alertmanager, max_attempts, 100);
        let handed = run(name, &mut outbox, &steps);
        assert!(!outbox.sent(9_999, true, t), "{name}");
        assert!(!outbox.sent(9_999, false, t), "{name}");
        assert_eq!(
            [
                outbox.delivered(),
                outbox.failed_attempts(),
                outbox.given_up(),
                outbox.dropped()
            ],
            [delivered, failed, given_up, dropped],
            "{name}: counters"
        );
        assert_eq!(outbox.len(), left, "{name}: left");
        // Ids are unique across deliveries.
        let ids: BTreeSet<u64> = handed.iter().map(|d| d.id).collect();
        assert_eq!(ids.len(), handed.len(), "{name}: ids");
    }
}

#[test]
fn json_outbox_sends_one_alert_per_request() {
    let mut outbox = Outbox::new(PayloadFormat::Json, 5, 10);
    for agent in ["a", "b", "c"] {
        assert!(outbox.push(soft(agent)));
    }
    let due = outbox.due(NOW);
    assert_eq!(due.len(), 3);
    for (delivery, agent) in due.iter().zip(["a", "b", "c"]) {
        assert_eq!(delivery.alerts, [soft(agent).dedup_key()]);
        assert_eq!(delivery.body, json_body(&soft(agent)));
    }
    assert_eq!(outbox.in_flight(), 3);
    assert!(outbox.sent(due[1].id, false, NOW));
    assert_eq!(outbox.in_flight(), 2);
    // Retried after the first backoff, not before.
    assert!(outbox.due(NOW).is_empty());
    let again = outbox.due(NOW + 1);
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].alerts, [soft("b").dedup_key()]);
    assert_eq!(outbox.failed_attempts(), 1);
}

#[test]
fn alertmanager_outbox_bodies_are_batches_in_order() {
    let alerts: Vec<Alert> = (0..MAX_BATCH + 1)
        .map(|i| soft(&format!("bot-{i}")))
        .collect();
    let want: Vec<Vec<u8>> = alerts.chunks(MAX_BATCH).map(alertmanager_body).collect();
    assert_eq!(first_bodies(PayloadFormat::Alertmanager, &alerts), want);
}

#[test]
fn queue_bound_drops_the_oldest_not_in_flight() {
    let mut outbox = Outbox::new(PayloadFormat::Json, 5, 3);
    for agent in ["a", "b"] {
        outbox.push(soft(agent));
    }
    let first = outbox.due(NOW);
    assert_eq!(first.len(), 2);
    outbox.push(soft("c"));
    // Full: a and b await replies, so c (oldest not in flight) goes.
    outbox.push(soft("d"));
    assert_eq!(outbox.dropped(), 1);
    assert_eq!(outbox.len(), 3);
    let keys: Vec<Vec<String>> = outbox.due(NOW).into_iter().map(|d| d.alerts).collect();
    assert_eq!(keys, [[soft("d").dedup_key()]]);
    // All in flight: the oldest of all goes, and its late reply means nothing.
    outbox.push(soft("e"));
    assert_eq!(outbox.dropped(), 2);
    assert!(!outbox.sent(first[0].id, true, NOW));
    assert!(outbox.sent(first[1].id, true, NOW));
    assert_eq!(outbox.delivered(), 1);
    // A dropped key stays seen.
    assert!(!outbox.push(soft("c")));

    let mut tiny = Outbox::new(PayloadFormat::Json, 0, 0);
    assert!(tiny.push(soft("x")));
    assert!(tiny.push(soft("y")));
    assert_eq!((tiny.len(), tiny.dropped()), (1, 1));
    let d = tiny.due(NOW);
    assert!(tiny.sent(d[0].id, false, NOW));
    assert_eq!(tiny.given_up(), 1, "max_attempts 0 means 1");
}

#[test]
fn seen_keys_are_forgotten_only_when_stale_alerts_are_refused() {
    let mut outbox = Outbox::new(PayloadFormat::Json, 5, 10);
    let a = soft("a");
    let end = a.period_end_unix_secs;
    assert!(outbox.push(a.clone()));
    let d = outbox.due(NOW);
    assert!(outbox.sent(d[0].id, true, NOW));
    // Still remembered just before the horizon...
    outbox.due(end + SEEN_GRACE_SECS - 1);
    assert!(!outbox.push(a.clone()));
    // ...and after it, forgotten but refused as stale all the same.
    outbox.due(end + SEEN_GRACE_SECS);
    assert!(outbox.seen.is_empty());
    assert!(!outbox.push(a));
    // The next day's crossing is a new alert.
    let mut tomorrow = soft("a");
    tomorrow.period_id = "2026-11-29".into();
    tomorrow.period_end_unix_secs = end + 86_400;
    assert!(outbox.push(tomorrow));
}

/// Random failures, timeouts and late replies: a key is never in two concurrent requests,
/// never sent after a success, and every alert ends delivered or given up.
#[test]
fn a_key_is_never_sent_twice_concurrently_or_after_success() {
    let mut totals = [0u64; 4];
    for seed in 1..=50u64 {
        let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let mut next = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        let mut outbox = Outbox::new(PayloadFormat::Alertmanager, 4, 1000);
        let mut outstanding: Vec<Delivery> = Vec::new();
        let mut delivered_keys: BTreeSet<String> = BTreeSet::new();
        let mut now = NOW;
        for round in 0..200 {
            if round < 40 && next(2) == 0 {
                let agent = format!("bot-{}", next(30));
                outbox.push(soft(&agent));
                outbox.push(soft(&agent));
            }
            now += 1 + i64::try_from(next(4)).unwrap();
            let in_flight_keys: BTreeSet<String> = {
                let mut keys = BTreeSet::new();
                for entry in &outbox.queue {
                    if entry.in_flight.is_some() {
                        keys.insert(entry.key.clone());
                    }
                }
                keys
            };
            for delivery in outbox.due(now) {
                for key in &delivery.alerts {
                    assert!(!delivered_keys.contains(key), "seed {seed}: {key} resent");
                    assert!(
                        !in_flight_keys.contains(key),
                        "seed {seed}: {key} in two requests at once"
                    );
                }
                outstanding.push(delivery);
            }
            // Reply to some outstanding requests, possibly late, possibly twice.
            let mut i = 0;
            while i < outstanding.len() {
                match next(6) {
                    0 | 1 => {
                        // Whatever the outbox thinks, these keys reached the endpoint.
                        let d = outstanding.remove(i);
                        outbox.sent(d.id, true, now);
                        delivered_keys.extend(d.alerts.iter().cloned());
                    }
                    2 => {
                        let d = outstanding.remove(i);
                        outbox.sent(d.id, false, now);
                    }
                    3 => {
                        // Lost reply.
                        outstanding.remove(i);
                    }
                    _ => i += 1,
                }
            }
        }
        // Drain: no new alerts, no replies; everything times out and is given up.
        for _ in 0..20 {
            now += BACKOFF_CAP_SECS + REPLY_TIMEOUT_SECS;
            outbox.due(now);
        }
        assert!(outbox.is_empty(), "seed {seed}");
        assert_eq!(
            outbox.delivered() + outbox.given_up(),
            outbox.seen.len() as u64,
            "seed {seed}: every pushed key delivered or given up"
        );
        for (total, count) in totals.iter_mut().zip([
            outbox.delivered(),
            outbox.failed_attempts(),
            outbox.given_up(),
            outbox.dropped(),
        ]) {
            *total += count;
        }
    }
    let [delivered, failed, given_up, dropped] = totals;
    assert!(
        delivered > 100 && failed > 100 && given_up > 10,
        "{totals:?}"
    );
    assert_eq!(dropped, 0);
}

#[test]
fn a_limit_set_off_by_a_call_that_does_not_fit_says_so_with_its_figures() {
    let mut limit = alert(AlertKind::LimitStop, "bot", PeriodKind::Daily);
    limit.spend_micro_usd = 3_360_000;
    limit.trigger = Trigger::WorstCase {
        worst_case_micro_usd: 700_000,
        remaining_micro_usd: 640_000,
    };
    let text = limit.text();
    assert!(
        text.contains("can no longer fit a call in its daily budget"),
        "{text}"
    );
    assert!(
        text.contains("a call's worst case of $0.700000 no longer fits the $0.640000 left"),
        "{text}"
    );
    let am: serde_json::Value = serde_json::from_slice(&alertmanager_body([&limit])).unwrap();
    assert_eq!(am[0]["annotations"]["trigger"], "worst_case");
    let json: serde_json::Value = serde_json::from_slice(&json_body(&limit)).unwrap();
    assert_eq!(json["trigger"], "worst_case");
    assert_eq!(json["worst_case_usd"], "0.700000");
    let reached = alert(AlertKind::LimitStop, "bot", PeriodKind::Daily);
    assert!(reached.text().contains("used up its daily budget"));
    let json: serde_json::Value = serde_json::from_slice(&json_body(&reached)).unwrap();
    assert_eq!(json["trigger"], "budget_reached");
}

fn anomaly(episode_since: i64) -> Alert {
    let mut a = alert(AlertKind::Anomaly, "bot", PeriodKind::Daily);
    a.spend_micro_usd = 2_500_000;
    a.threshold = 3.0;
    a.trigger = Trigger::Anomaly {
        burn_micro_usd_per_hour: 400_000,
        baseline_micro_usd_per_hour: 100_000,
        multiple_milli: 3_000,
        episode_since,
    };
    a
}

fn projection() -> Alert {
    let mut a = alert(AlertKind::Projection, "bot", PeriodKind::Daily);
    a.spend_micro_usd = 2_000_000;
    a.trigger = Trigger::Projection {
        projected_micro_usd: 12_500_000,
        burn_micro_usd_per_hour: 1_000_000,
    };
    a
}

#[test]
fn anomaly_and_projection_alerts_carry_their_figures() {
    let a = anomaly(NOW);
    assert_eq!(
        a.text(),
        "[P2 warning] bot is spending faster than usual (2026-11-28): burning $0.400000/h, \
         4.0x its baseline of $0.100000/h (alert at 3x); spend $2.500000 of $10.000000 (25%), \
         resets at 2026-11-29T00:00:00Z"
    );
    let body: Value = serde_json::from_slice(&alertmanager_body(std::slice::from_ref(&a))).unwrap();
    let annotations = &body[0]["annotations"];
    for (name, want) in [
        ("burn_rate_usd_per_hour", "0.400000"),
        ("baseline_usd_per_hour", "0.100000"),
        ("multiple", "3x"),
        ("ratio", "4.0x"),
        ("spend_usd", "2.500000"),
        ("budget_usd", "10.000000"),
        ("trigger", "burn_rate"),
    ] {
        assert_eq!(annotations[name], want, "{name}");
    }
    assert_eq!(body[0]["labels"]["alertname"], "AgentBudgetAnomaly");
    assert!(!annotations["description"]
        .as_str()
        .unwrap()
        .contains("Threshold"));
    let json: Value = serde_json::from_slice(&json_body(&a)).unwrap();
    assert_eq!(json["kind"], "anomaly");
    assert_eq!(json["burn_rate_usd_per_hour"], "0.400000");
    assert_eq!(json["baseline_usd_per_hour"], "0.100000");
    assert_eq!(json["multiple"], "3x");
    assert_eq!(json["threshold"], 3.0);
    assert!(log_line(&a).ends_with("multiple=3x ratio=4.0x episode_since=2026-11-28T21:06:40Z"));

    let p = projection();
    assert_eq!(p.summary(), "bot is on course to overrun its daily budget");
    assert!(p.text().contains(
        "projected $12.500000 by the reset at $1.000000/h; spend $2.000000 of $10.000000 (20%)"
    ));
    let json: Value = serde_json::from_slice(&json_body(&p)).unwrap();
    assert_eq!(json["kind"], "projection");
    assert_eq!(json["projected_usd"], "12.500000");
    assert_eq!(json["burn_rate_usd_per_hour"], "1.000000");
    assert_eq!(json.get("multiple"), None);
}

#[test]
fn each_anomaly_episode_is_an_alert_of_its_own() {
    let first = anomaly(NOW);
    let mut seen_later = first.clone();
    seen_later.at_unix_secs += 60;
    assert_eq!(first.dedup_key(), seen_later.dedup_key());
    let second = anomaly(NOW + 7_200);
    assert_ne!(first.dedup_key(), second.dedup_key());
    let mut outbox = Outbox::new(PayloadFormat::Json, 3, 10);
    assert!(outbox.push(first));
    assert!(!outbox.push(seen_later));
    assert!(outbox.push(second));
    assert_eq!(outbox.len(), 2);
}

#[test]
fn multiples_and_ratios_read_as_people_write_them() {
    for (milli, want) in [
        (3_000, "3x"),
        (2_500, "2.5x"),
        (1_250, "1.25x"),
        (10_001, "10.001x"),
    ] {
        assert_eq!(multiple_text(milli), want);
    }
    for (burn, baseline, want) in [(400, 100, "4.0x"), (299, 100, "2.9x"), (1, 0, "-")] {
        assert_eq!(ratio_text(burn, baseline), want);
    }
}

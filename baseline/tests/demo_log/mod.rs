//! The demo attribution log of known figures: three of the shipped config's agents over
//! November 2026 (the figures are spelled out in tests/end_to_end.rs). Shared by the
//! end-to-end test and `cargo run -p agent-budget-baseline --example demo-log`.

fn record(
    time: &str,
    agent: &str,
    task: &str,
    tokens: (u64, u64, u64, u64),
    cost: Option<u64>,
    action: &str,
) -> String {
    let (input, cache_read, cache_write, output) = tokens;
    let mut value = serde_json::json!({
        "time": time,
        "agent": agent,
        "budget": agent,
        "task": task,
        "user": "-",
        "api": "anthropic_messages",
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "anthropic",
        "gen_ai.request.model": "claude-sonnet-4-5",
        "gen_ai.response.model": "claude-sonnet-4-5-20250929",
        "action": action,
        "estimated": false,
        "http.response.status_code": 200,
        "latency_ms": 812.5,
        "ttft_ms": null,
    });
    if let (Some(cost), Some(map)) = (cost, value.as_object_mut()) {
        map.insert("gen_ai.usage.input_tokens".into(), input.into());
        map.insert("gen_ai.usage.output_tokens".into(), output.into());
        map.insert("cache_read_tokens".into(), cache_read.into());
        map.insert("cache_write_tokens".into(), cache_write.into());
        map.insert("reasoning_tokens".into(), 0.into());
        map.insert("cost_micro_usd".into(), cost.into());
    }
    value.to_string()
}

pub fn generated_log() -> String {
    let mut lines = vec![
        "not json at all".to_string(),
        "[1, 2]".to_string(),
        r#"{"foo": 1}"#.to_string(),
        r#"{"agent": "research-bot", "time": "yesterday"}"#.to_string(),
        String::new(),
    ];
    for d in 1..=30u64 {
        for k in 1..=5 {
            for call in 0..2 {
                // One call of day 5 in another offset (00:30 UTC) and some with fractions.
                let time = if d == 5 && k == 1 && call == 0 {
                    "2026-11-05T01:30:00+01:00".to_string()
                } else {
                    format!("2026-11-{d:02}T{:02}:15:00.250Z", 8 + k)
                };
                lines.push(record(
                    &time,
                    "research-bot",
                    &format!("r-{d}-{k}"),
                    (1000, 200, 0, 500),
                    Some(d * 10_000),
                    "allowed",
                ));
            }
        }
        if d % 2 == 0 {
            let time = format!("2026-11-{d:02}T12:00:00Z");
            for k in 1..=3 {
                for _ in 0..2 {
                    lines.push(record(
                        &time,
                        "support-bot",
                        &format!("s-{k}"),
                        (2000, 0, 500, 300),
                        Some(150_000),
                        "allowed",
                    ));
                }
            }
            lines.push(record(
                &time,
                "support-bot",
                "-",
                (400, 0, 0, 100),
                Some(100_000),
                "allowed",
            ));
        }
        if d == 30 {
            for _ in 0..2 {
                lines.push(record(
                    "2026-11-30T23:59:59Z",
                    "support-bot",
                    "s-1",
                    (0, 0, 0, 0),
                    None,
                    "stopped",
                ));
            }
        }
        if d <= 10 {
            for _ in 0..3 {
                lines.push(record(
                    &format!("2026-11-{d:02}T02:00:00Z"),
                    "nightly-batch",
                    &format!("n-{d}"),
                    (10_000, 0, 0, 2000),
                    Some(50_000),
                    "allowed",
                ));
            }
        }
    }
    lines.join("\n") + "\n"
}

use super::*;
use crate::usage::Usage;

fn record(outcome: Outcome) -> serde_json::Value {
    let attribution = Attribution {
        agent: "bot".into(),
        budget: "bot".into(),
        task: Some("t\"1".into()),
        user: None,
        api: "openai_chat",
        model: "gpt-4o".into(),
        degraded_from: None,
        outcome,
    };
    serde_json::from_str(&attribution.record()).unwrap()
}

#[test]
fn one_json_object_per_outcome() {
    let charged = record(Outcome::Charged {
        metered: Metered {
            usage: Usage {
                input: 10,
                output: 5,
                ..Usage::default()
            },
            model: None,
        },
        micro_usd: 42,
        priced_as: None,
        estimated: true,
    });
    assert_eq!(charged["agent"], "bot");
    assert_eq!(charged["task"], "t\"1", "escaped, not broken");
    assert_eq!(charged["user"], "-");
    assert_eq!(charged["input_tokens"], 10);
    assert_eq!(charged["output_tokens"], 5);
    assert_eq!(charged["cost_micro_usd"], 42);
    assert_eq!(charged["estimated"], true);
    assert!(charged.get("stopped").is_none());

    let stopped = record(Outcome::Stopped { status: 429 });
    assert_eq!(stopped["stopped"], 429);
    assert!(stopped.get("cost_micro_usd").is_none());
    assert!(stopped.get("estimated").is_none());

    let unmetered = record(Outcome::Unmetered(Unmetered::NoUsage));
    assert_eq!(unmetered["unmetered"], "no_usage");
}

use super::*;
use crate::usage::Usage;
use serde_json::{json, Value};

fn attribution(action: CallOutcome, outcome: Outcome) -> Attribution {
    Attribution {
        agent: "bot".into(),
        budget: "bot".into(),
        task: Some("t\"1".into()),
        user: None,
        api: "openai_chat",
        operation: Some("chat"),
        provider: Some("openai"),
        model: "gpt-4o-mini".into(),
        degraded_from: None,
        action,
        outcome,
    }
}

fn record(attribution: &Attribution) -> Value {
    serde_json::from_str(&attribution.record()).unwrap()
}

fn charged(estimated: bool) -> Outcome {
    Outcome::Charged {
        metered: Metered {
            usage: Usage {
                input: 10,
                cache_read: 20,
                cache_write_5m: 3,
                cache_write_1h: 4,
                output: 5,
                reasoning: 2,
            },
            model: Some("gpt-4o-mini".into()),
        },
        micro_usd: 42,
        priced_as: Some("gpt-4o-mini".into()),
        estimated,
    }
}

/// The keys of the contract every record carries, whatever the outcome.
const ALWAYS: [&str; 9] = [
    "agent",
    "budget",
    "task",
    "user",
    "api",
    "cost_micro_usd",
    "action",
    "estimated",
    "gen_ai.request.model",
];

#[test]
fn records_carry_the_contract_keys_per_outcome() {
    let tokens = [
        "gen_ai.usage.input_tokens",
        "gen_ai.usage.output_tokens",
        "cache_read_tokens",
        "cache_write_tokens",
        "reasoning_tokens",
        "gen_ai.response.model",
    ];
    let cases = [
        (CallOutcome::Allowed, charged(false), true, None),
        (CallOutcome::Overage, charged(true), true, None),
        (
            CallOutcome::Unmetered,
            Outcome::Unmetered(Unmetered::NoUsage),
            false,
            Some("no_usage"),
        ),
        (
            CallOutcome::Unmetered,
            Outcome::Passed,
            false,
            Some(UNKNOWN_API),
        ),
        (
            CallOutcome::Stopped,
            Outcome::Stopped { status: 429 },
            false,
            None,
        ),
    ];
    for (action, outcome, has_tokens, unmetered_reason) in cases {
        let value = record(&attribution(action, outcome));
        for key in ALWAYS {
            assert!(value.get(key).is_some(), "{action:?}: {key} in {value}");
        }
        assert_eq!(value["action"], action.name(), "{value}");
        for key in tokens {
            assert_eq!(value.get(key).is_some(), has_tokens, "{action:?}: {key}");
        }
        assert_eq!(
            value.get("unmetered_reason").and_then(Value::as_str),
            unmetered_reason,
            "{value}"
        );
    }
}

#[test]
fn a_charged_record_has_every_token_class_and_the_cost() {
    let mut attribution = attribution(CallOutcome::Degraded, charged(true));
    attribution.degraded_from = Some("gpt-4o".into());
    let value = record(&attribution);
    let want = json!({
        "agent": "bot",
        "budget": "bot",
        "task": "t\"1",
        "user": "-",
        "api": "openai_chat",
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-4o",
        "gen_ai.response.model": "gpt-4o-mini",
        "gen_ai.usage.input_tokens": 37,
        "gen_ai.usage.output_tokens": 5,
        "cache_read_tokens": 20,
        "cache_write_tokens": 7,
        "reasoning_tokens": 2,
        "cost_micro_usd": 42,
        "action": "degraded",
        "estimated": true,
    });
    assert_eq!(value, want);
}

#[test]
fn a_stopped_record_costs_nothing_and_names_the_requested_model() {
    let value = record(&attribution(
        CallOutcome::Stopped,
        Outcome::Stopped { status: 429 },
    ));
    assert_eq!(value["cost_micro_usd"], 0);
    assert_eq!(value["estimated"], false);
    assert_eq!(value["gen_ai.request.model"], "gpt-4o-mini");
    assert!(value.get("gen_ai.response.model").is_none());
}

#[test]
fn an_unknown_model_is_left_out() {
    let mut attribution = attribution(CallOutcome::Unmetered, Outcome::Passed);
    attribution.model = "-".into();
    let value = record(&attribution);
    assert!(value.get("gen_ai.request.model").is_none(), "{value}");
}

#[test]
fn members_fill_one_flat_object_after_envoys_own() {
    let attribution = attribution(CallOutcome::Allowed, charged(false));
    let members = attribution.members();
    assert!(members.starts_with("\"agent\":\"bot\""), "{members}");
    let line = format!("{{\"time\":\"2026-01-01T00:00:00.000Z\",\"ttft_ms\":null,{members}}}");
    let value: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(value["time"], "2026-01-01T00:00:00.000Z");
    assert_eq!(value["cost_micro_usd"], 42);
    assert!(
        value.as_object().unwrap().values().all(|v| !v.is_object()),
        "flat"
    );
}

#[test]
fn charged_calls_are_classified() {
    let cases = [
        (false, false, CallOutcome::Allowed),
        (true, false, CallOutcome::Degraded),
        (false, true, CallOutcome::Overage),
        (true, true, CallOutcome::Degraded),
    ];
    for (degraded, past_alert_limit, want) in cases {
        assert_eq!(
            charged_action(degraded, past_alert_limit),
            want,
            "{degraded} {past_alert_limit}"
        );
    }
}

#[test]
fn formats_map_to_genai_names() {
    let cases = [
        (Api::OpenAiChat, "chat", "openai"),
        (Api::OpenAiCompletions, "text_completion", "openai"),
        (Api::OpenAiResponses, "chat", "openai"),
        (Api::OpenAiEmbeddings, "embeddings", "openai"),
        (Api::AnthropicMessages, "chat", "anthropic"),
        (Api::Gemini, "generate_content", "gcp.gemini"),
    ];
    for (api, operation, provider) in cases {
        let format = Format { api, azure: false };
        assert_eq!(
            (operation_name(api), provider_name(format)),
            (operation, provider)
        );
    }
    let azure = |api| provider_name(Format { api, azure: true });
    assert_eq!(azure(Api::OpenAiChat), "azure.ai.openai");
    assert_eq!(azure(Api::OpenAiEmbeddings), "azure.ai.openai");
}

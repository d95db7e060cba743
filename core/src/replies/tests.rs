use super::*;
use crate::ledger::Account;
use crate::period::{Period, PeriodKind, TimeZone};
use crate::policy::Scope;
use serde_json::Value;

/// 2026-11-28T21:06:40Z: 10 400 s before the day ends.
const NOW: i64 = 1_795_900_000;

fn daily(scope: Scope, limit: u64, spent: u64, reserved: u64) -> Line {
    Line {
        scope,
        period: Period::containing(PeriodKind::Daily, TimeZone::UTC, NOW),
        limit,
        state: Account {
            spent,
            reserved,
            own: spent,
        },
    }
}

fn header<'h>(reply: &'h LocalReply, name: &str) -> Option<&'h str> {
    reply
        .headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

fn message(reply: &LocalReply) -> String {
    let body: Value = serde_json::from_slice(&reply.body).unwrap();
    body["error"]["message"].as_str().unwrap().to_string()
}

#[test]
fn unattributed_replies_say_what_is_missing() {
    // (why, status, in the message)
    let cases = [
        (Unattributed::Missing, 400, "Missing `x-agent-id` header"),
        (Unattributed::Invalid, 400, AGENT_ID_RULE),
        (
            Unattributed::Unknown("stranger".to_string()),
            403,
            "Agent `stranger` has no budget",
        ),
    ];
    for (why, status, text) in cases {
        let reply = unattributed(Api::OpenAiChat, &why, "x-agent-id");
        assert_eq!(reply.status, status, "{why:?}");
        assert!(
            message(&reply).contains(text),
            "{why:?}: {}",
            message(&reply)
        );
        assert_eq!(
            reply.headers,
            vec![
                ("content-type".to_string(), "application/json".to_string()),
                ("x-should-retry".to_string(), "false".to_string()),
            ],
            "{why:?}"
        );
    }
}

#[test]
fn budget_exceeded_replies_say_what_is_used_up_and_when_it_resets() {
    let agent = daily(Scope::Agent, 1_000_000, 1_000_000, 0);
    let task = daily(Scope::Task("t-1".to_string()), 500_000, 400_000, 100_000);
    let fits_not = WorstCase {
        micro_usd: 300_000,
        max_output_tokens: 4096,
    };
    // (line, reason, worst case, in the message)
    let cases = [
        (
            &agent,
            StopReason::Budget,
            None,
            "Agent `bot` has used its daily budget of $1.000000 (committed $1.000000).",
        ),
        (
            &agent,
            StopReason::DegradeExhausted,
            None,
            "and the spend allowed after degrading to a cheaper model",
        ),
        (
            &task,
            StopReason::Cap,
            None,
            "its daily cap for task `t-1` of $0.500000 (committed $0.500000)",
        ),
        (
            &task,
            StopReason::Cap,
            Some(fits_not),
            "this call may cost up to $0.300000 (its input plus up to 4096 output tokens), \
             more than is left of its daily cap for task `t-1` of $0.500000 ($0.000000 left)",
        ),
    ];
    for (line, reason, worst_case, text) in cases {
        let reply = budget_exceeded(Api::OpenAiChat, "bot", line, reason, worst_case, NOW, true);
        assert_eq!(reply.status, 429);
        let message = message(&reply);
        assert!(message.contains(text), "{reason:?}: {message}");
        assert!(
            message.ends_with("It resets at 2026-11-29T00:00:00Z (in 10400 s)."),
            "{message}"
        );
        assert_eq!(header(&reply, "retry-after"), Some("10400"));
        assert_eq!(header(&reply, "x-should-retry"), Some("false"));
    }
}

#[test]
fn budget_headers_on_a_refusal_describe_the_stopping_line() {
    let line = daily(Scope::Agent, 1_000_000, 1_200_000, 0);
    for with_budget_headers in [true, false] {
        let reply = budget_exceeded(
            Api::AnthropicMessages,
            "bot",
            &line,
            StopReason::Budget,
            None,
            NOW,
            with_budget_headers,
        );
        let shown = with_budget_headers.then_some("0.000000");
        assert_eq!(header(&reply, "x-agent-budget-remaining-usd"), shown);
        assert_eq!(
            header(&reply, "x-agent-budget-period"),
            with_budget_headers.then_some("daily")
        );
        assert_eq!(header(&reply, "retry-after"), Some("10400"));
    }
}

//! The replies the filter sends instead of forwarding a call: to a call it cannot attribute
//! to a budget, and to a call its budget refuses. Each is in the error shape of the call's
//! API, so the official SDKs raise their usual errors, and says that retrying cannot help.

use crate::config::AGENT_ID_RULE;
use crate::identity::Unattributed;
use crate::period::format_utc;
use crate::policy::{self, Line, StopReason};
use crate::pricing::format_usd;
use crate::providers::{Api, ErrorKind};

/// A response the filter sends instead of forwarding the call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReply {
    pub status: u32,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// The most a refused call could have cost, when it was refused because that would not fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorstCase {
    pub micro_usd: u64,
    pub max_output_tokens: u64,
}

/// The refusal of a call charged to no budget: 400 when its agent header (`agent_header`) is
/// missing or malformed, 403 when the agent it names has no budget here.
pub fn unattributed(api: Api, why: &Unattributed, agent_header: &str) -> LocalReply {
    let (kind, message) = match why {
        Unattributed::Missing => (
            ErrorKind::InvalidRequest,
            format!(
                "Missing `{agent_header}` header: every call through this gateway must name its agent."
            ),
        ),
        Unattributed::Invalid => (
            ErrorKind::InvalidRequest,
            format!("Invalid `{agent_header}` header: {AGENT_ID_RULE}."),
        ),
        Unattributed::Unknown(agent) => (
            ErrorKind::PermissionDenied,
            format!("Agent `{agent}` has no budget configured at this gateway."),
        ),
    };
    error(api, kind, &message, Vec::new())
}

/// The 401 of a call without the API key of a configured agent (`identity.source: api_key`).
/// The key is not echoed.
pub fn no_agent_key(api: Api) -> LocalReply {
    let mut reply = error(
        api,
        ErrorKind::InvalidRequest,
        "No API key of a configured agent: at this gateway the API key names the agent.",
        Vec::new(),
    );
    reply.status = 401;
    reply
}

/// The reply to a call whose verified JWT does not name a configured agent
/// (`identity.source: jwt`): 401 without a usable agent claim, 403 for an agent with no budget.
pub fn no_verified_agent(api: Api, why: &Unattributed) -> LocalReply {
    match why {
        Unattributed::Missing | Unattributed::Invalid => {
            let message = if matches!(why, Unattributed::Missing) {
                "No verified token naming an agent: at this gateway a verified JWT names the agent."
                    .to_string()
            } else {
                format!(
                    "The verified token's agent claim is not a valid agent id: {AGENT_ID_RULE}."
                )
            };
            let mut reply = error(api, ErrorKind::InvalidRequest, &message, Vec::new());
            reply.status = 401;
            reply
        }
        Unattributed::Unknown(_) => unattributed(api, why, ""),
    }
}

/// The 429 of a call `line` refuses for `budget`: what was used up and when it resets, and
/// the call's worst case if that is what did not fit. `with_budget_headers` adds the
/// `x-agent-budget-*` headers of the line; `retry-after` is always there.
pub fn budget_exceeded(
    api: Api,
    budget: &str,
    line: &Line,
    reason: StopReason,
    worst_case: Option<WorstCase>,
    now: i64,
    with_budget_headers: bool,
) -> LocalReply {
    let wait = line.period.seconds_until_reset(now);
    let what = match reason {
        StopReason::Budget => format!(
            "its {} budget of ${}",
            line.period.kind.name(),
            format_usd(line.limit)
        ),
        StopReason::DegradeExhausted => format!(
            "its {} budget of ${} and the spend allowed after degrading to a cheaper model",
            line.period.kind.name(),
            format_usd(line.limit)
        ),
        StopReason::Cap => format!(
            "its daily {} of ${}",
            line.scope.describe(),
            format_usd(line.limit)
        ),
    };
    let resets = format!(
        "It resets at {} (in {wait} s).",
        format_utc(line.period.end)
    );
    let message = match worst_case {
        None => format!(
            "Agent `{budget}` has used {what} (committed ${}). {resets}",
            format_usd(line.committed())
        ),
        // Waiting cannot help a call larger than the whole budget: say so.
        Some(WorstCase {
            micro_usd,
            max_output_tokens,
        }) if micro_usd > line.limit => format!(
            "Agent `{budget}`: this call may cost up to ${} (its input plus up to {max_output_tokens} output tokens), \
             more than the whole of {what}: no call of this size can ever fit. Lower `max_tokens` (or the input). {resets}",
            format_usd(micro_usd)
        ),
        Some(WorstCase {
            micro_usd,
            max_output_tokens,
        }) => format!(
            "Agent `{budget}`: this call may cost up to ${} (its input plus up to {max_output_tokens} output tokens), \
             more than is left of {what} (${} left). Ask for fewer output tokens, or wait. {resets}",
            format_usd(micro_usd),
            format_usd(line.remaining())
        ),
    };
    // The headers describe the line that stopped the call, consistently with the message.
    let mut headers = if with_budget_headers {
        policy::budget_headers(line, now)
    } else {
        Vec::new()
    };
    headers.push(("retry-after".to_string(), wait.to_string()));
    error(api, ErrorKind::BudgetExceeded, &message, headers)
}

/// The 503 of a `stop` agent's call whose budget cannot be read (see `ledger_unavailable`):
/// unlike a used-up budget, this passes, so clients may retry after a second.
pub fn budget_unavailable(api: Api, budget: &str) -> LocalReply {
    let message = format!(
        "The budget of agent `{budget}` cannot be checked right now; the call was not forwarded. Retry shortly."
    );
    let mut reply = error(api, ErrorKind::Unavailable, &message, Vec::new());
    for (name, value) in &mut reply.headers {
        if name == "x-should-retry" {
            *value = "true".to_string();
        }
    }
    reply
        .headers
        .push(("retry-after".to_string(), "1".to_string()));
    reply
}

fn error(
    api: Api,
    kind: ErrorKind,
    message: &str,
    mut headers: Vec<(String, String)>,
) -> LocalReply {
    headers.push(("content-type".to_string(), "application/json".to_string()));
    // Retrying cannot help: the official SDKs honour this and do not loop.
    headers.push(("x-should-retry".to_string(), "false".to_string()));
    LocalReply {
        status: kind.status(),
        headers,
        body: api.error_body(kind, message),
    }
}

#[cfg(test)]
mod tests;

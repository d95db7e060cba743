//! Budget decisions for one call: pure arithmetic over what the ledger says, and the rules
//! the filter follows with it (what a call reserves, when it degrades, which headers it
//! gets, what it is charged when its usage is unknown, which alert a crossing raises).
//!
//! A call is checked against *lines*: the agent's daily and monthly budgets and, when
//! configured, the daily caps of its task and of its user. Each line's ledger account holds
//! `spent` (settled) and `reserved` (worst-case cost of calls in flight).

use crate::alerts::AlertKind;
use crate::config::{AgentBudget, BudgetHeaders, LimitAction};
use crate::ledger::Account;
use crate::period::{Period, PeriodKind};
use crate::pricing::{format_usd, Price};
use crate::providers::{Api, Metered, ModelIn, Progress};
use crate::usage::Usage;

/// A common rough figure for English text and JSON in current tokenizers.
const BYTES_PER_TOKEN: u64 = 4;
/// Fewer bytes per token than any common text needs: the worst case for reservations.
const WORST_CASE_BYTES_PER_TOKEN: u64 = 3;

/// What a line caps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    Agent,
    Task(String),
    User(String),
}

impl Scope {
    pub fn describe(&self) -> String {
        match self {
            Scope::Agent => "budget".to_string(),
            Scope::Task(task) => format!("cap for task `{task}`"),
            Scope::User(user) => format!("cap for user `{user}`"),
        }
    }
}

/// One budget line as of now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub scope: Scope,
    pub period: Period,
    pub limit: u64,
    pub state: Account,
}

impl Line {
    /// Spend plus what calls in flight may still spend.
    pub fn committed(&self) -> u64 {
        self.state.spent.saturating_add(self.state.reserved)
    }

    pub fn remaining(&self) -> u64 {
        self.limit.saturating_sub(self.committed())
    }

    pub fn exhausted(&self) -> bool {
        self.committed() >= self.limit
    }

    /// Whether `estimate` more still fits under the limit plus `allowance`.
    pub fn fits(&self, estimate: u64, allowance: u64) -> bool {
        self.committed().saturating_add(estimate) <= self.limit.saturating_add(allowance)
    }
}

/// Why a call is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The agent's budget is used up and its action is `stop`.
    Budget,
    /// `degrade`: the allowance after degrading is used up too.
    DegradeExhausted,
    /// A task or user cap is reached (always stops, whatever the agent's action).
    Cap,
}

/// What to do with a call before it reaches the provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// Forward it with the cheaper model.
    Degrade,
    Stop {
        line: Line,
        reason: StopReason,
    },
}

/// The decision given each line's committed spend, before the call's own cost is known.
pub fn decide(budget: &AgentBudget, lines: &[Line]) -> Decision {
    if let Some(cap) = lines
        .iter()
        .find(|l| l.scope != Scope::Agent && l.exhausted())
    {
        return Decision::Stop {
            line: cap.clone(),
            reason: StopReason::Cap,
        };
    }
    // When several periods are used up, a stopped call may resume only when all have reset.
    let exhausted = lines
        .iter()
        .filter(|l| l.scope == Scope::Agent && l.exhausted())
        .max_by_key(|l| l.period.end);
    let Some(line) = exhausted else {
        return Decision::Allow;
    };
    match budget.action {
        LimitAction::Stop => Decision::Stop {
            line: line.clone(),
            reason: StopReason::Budget,
        },
        LimitAction::Alert => Decision::Allow,
        LimitAction::Degrade => {
            let allowance = budget.degrade_allowance.unwrap_or(u64::MAX);
            let past_allowance = lines
                .iter()
                .filter(|l| l.scope == Scope::Agent && !l.fits(0, allowance.saturating_sub(1)))
                .max_by_key(|l| l.period.end);
            match past_allowance {
                Some(line) => Decision::Stop {
                    line: line.clone(),
                    reason: StopReason::DegradeExhausted,
                },
                None => Decision::Degrade,
            }
        }
    }
}

/// Whether a budget of the agent was used up when the call came (`alert` lets such a call
/// through).
pub fn past_limit(lines: &[Line]) -> bool {
    lines
        .iter()
        .any(|l| l.scope == Scope::Agent && l.exhausted())
}

/// Whether a call the budget allows still has its worst case checked at its headers: a model
/// in the path can only be degraded before the headers leave, so with reservations on, a
/// call that would not fit degrades then, as one with its model in the body does at the body.
pub fn checks_worst_case_at_headers(
    action: LimitAction,
    model_in: ModelIn,
    reservations: bool,
) -> bool {
    model_in == ModelIn::Path && action == LimitAction::Degrade && reservations
}

/// Whether `estimate` more fits every agent line, without allowance.
pub fn fits_agent_lines(lines: &[Line], estimate: u64) -> bool {
    lines
        .iter()
        .filter(|l| l.scope == Scope::Agent)
        .all(|l| l.fits(estimate, 0))
}

/// Whether a metered call's body may change on its way upstream (its format asks a stream
/// for a usage report, or `degrade` may swap the model): its length then cannot be declared
/// when the headers leave.
pub fn body_may_change(api: Api, action: LimitAction) -> bool {
    api.rewrites_request() || action == LimitAction::Degrade
}

/// How far past the agent's limits a call's reservation may go: `alert` never refuses a
/// call, `degrade` allows its allowance (unbounded if unset) once the call is degrading,
/// otherwise nothing.
pub fn reservation_allowance(budget: &AgentBudget, degrading: bool) -> u64 {
    match budget.action {
        LimitAction::Alert => u64::MAX,
        LimitAction::Degrade if degrading => budget.degrade_allowance.unwrap_or(u64::MAX),
        LimitAction::Degrade | LimitAction::Stop => 0,
    }
}

/// What becomes of a call whose worst case does not fit a line when its body is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Misfit {
    /// Degrade it now and reserve again, with the degrade allowance.
    Degrade,
    /// Refuse it.
    Stop(StopReason),
}

/// The fate of a call whose worst case did not fit a line of `scope`, given the agent's
/// action, whether the call is degrading already and where it names its model.
pub fn misfit(scope: &Scope, action: LimitAction, degrading: bool, model_in: ModelIn) -> Misfit {
    match (scope, action) {
        (Scope::Task(_) | Scope::User(_), _) => Misfit::Stop(StopReason::Cap),
        (Scope::Agent, LimitAction::Degrade) if degrading => {
            Misfit::Stop(StopReason::DegradeExhausted)
        }
        // A model in the path could only change before the headers left.
        (Scope::Agent, LimitAction::Degrade) if model_in != ModelIn::Path => Misfit::Degrade,
        (Scope::Agent, _) => Misfit::Stop(StopReason::Budget),
    }
}

/// The most a call can cost at `price`: its input (`request_bytes` at a conservative
/// 3 bytes a token, all uncached) and `max_output_tokens` of output.
pub fn worst_case(price: &Price, request_bytes: u64, max_output_tokens: u64) -> u64 {
    let usage = Usage {
        input: request_bytes.div_ceil(WORST_CASE_BYTES_PER_TOKEN),
        output: max_output_tokens,
        ..Usage::default()
    };
    price.cost_micro_usd(&usage)
}

/// The usage charged for a call the client abandoned mid-response: the input the provider
/// had reported, else the request size at ~4 bytes a token; the output reported or
/// streamed so far at ~4 bytes a token, whichever is larger.
pub fn abandoned_usage(progress: Progress, request_bytes: u64) -> Metered {
    let mut usage = progress.reported;
    if !progress.input_reported {
        usage.input = request_bytes.div_ceil(BYTES_PER_TOKEN);
    }
    usage.output = usage
        .output
        .max(progress.text_bytes.div_ceil(BYTES_PER_TOKEN));
    Metered {
        usage,
        model: progress.model,
    }
}

/// Whether a call gets the `x-agent-budget-*` headers: under `on_limit` only a call the
/// limit acted on (refused, degraded, or let through past its budget).
pub fn shows_budget_headers(option: BudgetHeaders, limit_acted: bool) -> bool {
    match option {
        BudgetHeaders::All => true,
        BudgetHeaders::OnLimit => limit_acted,
        BudgetHeaders::None => false,
    }
}

/// The agent line that constrains the agent most (least remaining), for the budget headers.
pub fn headline(lines: &[Line]) -> Option<&Line> {
    lines
        .iter()
        .filter(|l| l.scope == Scope::Agent)
        .min_by_key(|l| (l.remaining(), std::cmp::Reverse(l.period.end)))
}

/// `x-agent-budget-*` response headers describing `line` as of `now`.
pub fn budget_headers(line: &Line, now: i64) -> Vec<(String, String)> {
    vec![
        (
            "x-agent-budget-period".to_string(),
            line.period.kind.name().to_string(),
        ),
        (
            "x-agent-budget-limit-usd".to_string(),
            format_usd(line.limit),
        ),
        (
            "x-agent-budget-remaining-usd".to_string(),
            format_usd(line.remaining()),
        ),
        (
            "x-agent-budget-reset".to_string(),
            line.period.seconds_until_reset(now).to_string(),
        ),
    ]
}

/// A threshold crossing found when a charge settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Crossing {
    /// Spend reached the soft threshold (default 80 %).
    Soft,
    /// Spend reached the budget.
    Limit,
    /// `degrade`: spend reached budget + allowance.
    DegradeExhausted,
}

impl Crossing {
    /// The level's name in the ledger's alert flags.
    pub fn name(self) -> &'static str {
        match self {
            Crossing::Soft => "soft",
            Crossing::Limit => "limit",
            Crossing::DegradeExhausted => "degrade_exhausted",
        }
    }
}

/// The alert a crossing raises for `budget`, with the share of the budget it marks (ppm).
pub fn alert_kind(crossing: Crossing, budget: &AgentBudget) -> (AlertKind, u64) {
    match crossing {
        Crossing::Soft => (AlertKind::Soft, budget.soft_threshold_ppm),
        Crossing::Limit => (
            match budget.action {
                LimitAction::Stop => AlertKind::LimitStop,
                LimitAction::Degrade => AlertKind::LimitDegrade,
                LimitAction::Alert => AlertKind::LimitAlert,
            },
            1_000_000,
        ),
        Crossing::DegradeExhausted => (AlertKind::DegradeExhausted, 1_000_000),
    }
}

/// The alert levels `spent` has reached on an agent line, lowest first, each with its mark
/// in micro-USD. Alerts are keyed by level and mark, so each fires once per period however
/// often it is seen, and again only if a reload moves its mark.
pub fn levels_reached(budget: &AgentBudget, kind: PeriodKind, spent: u64) -> Vec<(Crossing, u64)> {
    [Crossing::Soft, Crossing::Limit, Crossing::DegradeExhausted]
        .into_iter()
        .filter_map(|crossing| Some((crossing, mark(budget, kind, crossing)?)))
        .filter(|(_, mark)| spent >= *mark)
        .collect()
}

/// The spend at which `crossing` fires on the agent's `kind` period, if it has one.
pub fn mark(budget: &AgentBudget, kind: PeriodKind, crossing: Crossing) -> Option<u64> {
    let limit = budget.limit(kind)?;
    match crossing {
        Crossing::Soft => {
            u64::try_from(u128::from(limit) * u128::from(budget.soft_threshold_ppm) / 1_000_000)
                .ok()
        }
        Crossing::Limit => Some(limit),
        Crossing::DegradeExhausted => match (budget.action, budget.degrade_allowance) {
            (LimitAction::Degrade, Some(allowance)) => Some(limit.saturating_add(allowance)),
            _ => None,
        },
    }
}

/// The crossing whose alert a refusal for `reason` means: the limit action (or the end of
/// the degrade allowance) took effect. Task and user caps are not the agent's limit.
pub fn crossing_of(reason: StopReason) -> Option<Crossing> {
    match reason {
        StopReason::Budget => Some(Crossing::Limit),
        StopReason::DegradeExhausted => Some(Crossing::DegradeExhausted),
        StopReason::Cap => None,
    }
}

/// Spend beyond the budget that this charge added (the `alert` action's overage).
pub fn overage(limit: u64, before: u64, after: u64) -> u64 {
    after.saturating_sub(before.max(limit))
}

#[cfg(test)]
mod tests;

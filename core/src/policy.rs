//! Budget decisions for one call: pure arithmetic over what the ledger says.
//!
//! A call is checked against *lines*: the agent's daily and monthly budgets and, when
//! configured, the daily caps of its task and of its user. Each line's ledger account holds
//! `spent` (settled) and `reserved` (worst-case cost of calls in flight).

use crate::config::{AgentBudget, LimitAction};
use crate::ledger::Account;
use crate::period::{Period, PeriodKind};
use crate::pricing::format_usd;

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

/// The alert levels `spent` has reached on an agent line, lowest first, each with its mark
/// in micro-USD. Alerts are keyed by level and mark, so each fires once per period however
/// often it is seen, and again only if a reload moves its mark.
pub fn levels_reached(budget: &AgentBudget, kind: PeriodKind, spent: u64) -> Vec<(Crossing, u64)> {
    let Some(limit) = budget.limit(kind) else {
        return Vec::new();
    };
    let soft = u64::try_from(u128::from(limit) * u128::from(budget.soft_threshold_ppm) / 1_000_000)
        .unwrap_or(limit);
    let mut marks = vec![(Crossing::Soft, soft), (Crossing::Limit, limit)];
    if budget.action == LimitAction::Degrade {
        if let Some(allowance) = budget.degrade_allowance {
            marks.push((Crossing::DegradeExhausted, limit.saturating_add(allowance)));
        }
    }
    marks.retain(|(_, mark)| spent >= *mark);
    marks
}

/// Spend beyond the budget that this charge added (the `alert` action's overage).
pub fn overage(limit: u64, before: u64, after: u64) -> u64 {
    after.saturating_sub(before.max(limit))
}

#[cfg(test)]
mod tests;

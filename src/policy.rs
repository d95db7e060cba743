//! The budget decision for one call: pure arithmetic over what the ledger says.

use crate::config::{AgentBudget, LimitAction};
use crate::period::{Period, PeriodKind};
use crate::pricing::format_usd;

/// One period's budget as of now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeriodStatus {
    pub kind: PeriodKind,
    pub limit: u64,
    pub spent: u64,
    pub period: Period,
}

impl PeriodStatus {
    pub fn remaining(&self) -> u64 {
        self.limit.saturating_sub(self.spent)
    }

    pub fn exhausted(&self) -> bool {
        self.spent >= self.limit
    }
}

/// What to do with a call before it reaches the provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// The agent's action at the limit is `stop` and `exhausted` is used up.
    Stop {
        exhausted: PeriodStatus,
    },
}

/// The configured limits of `budget` paired with the spend read for each period.
pub fn statuses(budget: &AgentBudget, spent: &[(Period, u64)]) -> Vec<PeriodStatus> {
    spent
        .iter()
        .filter_map(|(period, spent)| {
            let limit = match period.kind {
                PeriodKind::Daily => budget.daily?,
                PeriodKind::Monthly => budget.monthly?,
            };
            Some(PeriodStatus {
                kind: period.kind,
                limit,
                spent: *spent,
                period: period.clone(),
            })
        })
        .collect()
}

pub fn decide(budget: &AgentBudget, statuses: &[PeriodStatus]) -> Decision {
    // When several periods are used up, the call may resume only when all have reset.
    let exhausted = statuses
        .iter()
        .filter(|s| s.exhausted())
        .max_by_key(|s| s.period.end);
    match (exhausted, budget.action) {
        (None, _) => Decision::Allow,
        (Some(status), LimitAction::Stop) => Decision::Stop {
            exhausted: status.clone(),
        },
    }
}

/// The period that constrains the agent most (least remaining), for the budget headers.
pub fn headline(statuses: &[PeriodStatus]) -> Option<&PeriodStatus> {
    statuses
        .iter()
        .min_by_key(|s| (s.remaining(), std::cmp::Reverse(s.period.end)))
}

/// `x-agent-budget-*` response headers describing `status` as of `now`.
pub fn budget_headers(status: &PeriodStatus, now: i64) -> Vec<(String, String)> {
    vec![
        (
            "x-agent-budget-period".to_string(),
            status.kind.name().to_string(),
        ),
        (
            "x-agent-budget-limit-usd".to_string(),
            format_usd(status.limit),
        ),
        (
            "x-agent-budget-remaining-usd".to_string(),
            format_usd(status.remaining()),
        ),
        (
            "x-agent-budget-reset".to_string(),
            status.period.seconds_until_reset(now).to_string(),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::period::TimeZone;

    const NOW: i64 = 1_795_900_000;

    fn periods() -> (Period, Period) {
        (
            Period::containing(PeriodKind::Daily, TimeZone::UTC, NOW),
            Period::containing(PeriodKind::Monthly, TimeZone::UTC, NOW),
        )
    }

    fn budget(daily: Option<u64>, monthly: Option<u64>) -> AgentBudget {
        AgentBudget {
            daily,
            monthly,
            action: LimitAction::Stop,
        }
    }

    #[test]
    fn stops_at_the_limit_not_before() {
        let (day, month) = periods();
        let cases = [
            (budget(Some(100), None), 99, 0, None),
            (budget(Some(100), None), 100, 0, Some(PeriodKind::Daily)),
            (budget(Some(100), None), 150, 0, Some(PeriodKind::Daily)),
            (budget(None, Some(1000)), 5000, 999, None),
            (budget(None, Some(1000)), 0, 1000, Some(PeriodKind::Monthly)),
            // Both used up: the later reset (the month) is what the client must wait for.
            (
                budget(Some(100), Some(1000)),
                100,
                1000,
                Some(PeriodKind::Monthly),
            ),
            (
                budget(Some(100), Some(1000)),
                100,
                10,
                Some(PeriodKind::Daily),
            ),
            (budget(Some(0), None), 0, 0, Some(PeriodKind::Daily)),
        ];
        for (budget, day_spent, month_spent, want) in cases {
            let s = statuses(
                &budget,
                &[(day.clone(), day_spent), (month.clone(), month_spent)],
            );
            let got = match decide(&budget, &s) {
                Decision::Allow => None,
                Decision::Stop { exhausted } => Some(exhausted.kind),
            };
            assert_eq!(got, want, "{budget:?} {day_spent} {month_spent}");
        }
    }

    #[test]
    fn headline_is_the_tightest_period() {
        let (day, month) = periods();
        let b = budget(Some(100), Some(1000));
        let s = statuses(&b, &[(day.clone(), 10), (month.clone(), 950)]);
        assert_eq!(headline(&s).map(|s| s.kind), Some(PeriodKind::Monthly));
        let s = statuses(&b, &[(day, 90), (month, 100)]);
        let top = headline(&s).unwrap();
        assert_eq!(top.kind, PeriodKind::Daily);
        let headers = budget_headers(top, NOW);
        assert_eq!(headers[0], ("x-agent-budget-period".into(), "daily".into()));
        assert_eq!(headers[1].1, "0.000100");
        assert_eq!(headers[2].1, "0.000010");
        assert_eq!(headers[3].1, (top.period.end - NOW).to_string());
    }
}

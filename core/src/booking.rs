//! A call's bookings in the ledger: the budget lines it is checked against, the worst-case
//! cost it reserves on them before it is forwarded, and the settlement of the metered cost.
//!
//! Reserving before forwarding is what bounds overspend under concurrency: calls racing the
//! last dollar each need room for their own worst case, so together they can never commit
//! more than the budget (plus, at most, one estimate that undershot the truth).

use crate::config::AgentBudget;
use crate::host::Host;
use crate::identity::Identity;
use crate::ledger::{Account, Ledger, LedgerError, Updated};
use crate::period::Period;
use crate::policy::{Line, Scope};
use crate::root::{account_of, PendingCharge, Worker};

/// One ledger account the call is charged to.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    scope: Scope,
    period: Period,
    account: String,
    /// The budget on this account, if any (the agent's monthly spend is tracked even when it
    /// has only a daily budget).
    limit: Option<u64>,
    /// What this call holds reserved on the account.
    reserved: u64,
}

/// The result of settling one target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settled {
    pub scope: Scope,
    pub period: Period,
    pub before: Account,
    pub after: Account,
}

#[derive(Debug, Default)]
pub struct Booking {
    targets: Vec<Target>,
}

/// Ledger account of a task cap (per agent budget) and of a user cap.
pub fn task_account(budget: &str, task: &str) -> String {
    format!("task:{budget}/{task}")
}

pub fn user_account(budget: &str, user: &str) -> String {
    format!("user:{budget}/{user}")
}

impl Booking {
    /// Reads every account the call will be charged to; returns the booking and the lines
    /// that carry a limit (for the policy). A ledger read error is logged and counted and the
    /// line is left out of the decision (one bad key must not stop every agent), but the
    /// account is still charged: a charge that fails waits for a readable ledger.
    pub fn open(
        host: &dyn Host,
        worker: &Worker,
        identity: &Identity,
        budget: &AgentBudget,
        now: i64,
    ) -> (Booking, Vec<Line>) {
        let [day, month] = worker.current_periods(now);
        let mut targets = Vec::new();
        for period in [day.clone(), month] {
            let limit = budget.limit(period.kind);
            targets.push(Target {
                scope: Scope::Agent,
                period,
                account: account_of(&identity.budget),
                limit,
                reserved: 0,
            });
        }
        if let (Some(cap), Some(task)) = (budget.task_daily, &identity.task) {
            targets.push(Target {
                scope: Scope::Task(task.clone()),
                period: day.clone(),
                account: task_account(&identity.budget, task),
                limit: Some(cap),
                reserved: 0,
            });
        }
        if let (Some(cap), Some(user)) = (budget.user_daily, &identity.user) {
            targets.push(Target {
                scope: Scope::User(user.clone()),
                period: day,
                account: user_account(&identity.budget, user),
                limit: Some(cap),
                reserved: 0,
            });
        }
        let ledger = Ledger::new(host);
        let mut lines = Vec::new();
        // Only limited accounts are read: the others are charged but decide nothing.
        for target in &targets {
            let Some(limit) = target.limit else {
                continue;
            };
            match ledger.read(&target.period, &target.account) {
                Ok(state) => lines.push(Line {
                    scope: target.scope.clone(),
                    period: target.period.clone(),
                    account: target.account.clone(),
                    limit,
                    state,
                }),
                Err(error) => worker.ledger_error(host, &error),
            }
        }
        (Booking { targets }, lines)
    }

    /// Reserves `estimate` on every limited account, atomically per account; the agent's
    /// accounts may go `agent_allowance` past their limit. On the first account where it does
    /// not fit, releases what was reserved and returns that account's line.
    pub fn reserve(
        &mut self,
        host: &dyn Host,
        worker: &Worker,
        estimate: u64,
        agent_allowance: u64,
    ) -> Result<(), Box<Line>> {
        let ledger = Ledger::new(host);
        for index in 0..self.targets.len() {
            let Some(target) = self.targets.get(index) else {
                break;
            };
            let Some(limit) = target.limit else {
                continue;
            };
            let allowance = if target.scope == Scope::Agent {
                agent_allowance
            } else {
                0
            };
            let result = ledger.try_update(&target.period, &target.account, |a| {
                let line_fits = a.spent.saturating_add(a.reserved).saturating_add(estimate)
                    <= limit.saturating_add(allowance);
                line_fits.then(|| Account {
                    reserved: a.reserved.saturating_add(estimate),
                    ..a
                })
            });
            match result {
                Ok(Some(_)) => {
                    if let Some(target) = self.targets.get_mut(index) {
                        target.reserved = estimate;
                    }
                }
                Ok(None) => {
                    let line = Line {
                        scope: target.scope.clone(),
                        period: target.period.clone(),
                        account: target.account.clone(),
                        limit,
                        state: ledger
                            .read(&target.period, &target.account)
                            .unwrap_or_default(),
                    };
                    self.release(host, worker);
                    return Err(Box::new(line));
                }
                // A ledger failure must not block traffic: proceed without this reservation.
                Err(error) => worker.ledger_error(host, &error),
            }
        }
        Ok(())
    }

    /// Returns the reservations held (the call failed before costing anything, or is about
    /// to reserve again); the accounts stay booked for a later settlement.
    pub fn release(&mut self, host: &dyn Host, worker: &Worker) {
        let ledger = Ledger::new(host);
        for target in self.targets.iter_mut().filter(|t| t.reserved > 0) {
            let reserved = std::mem::take(&mut target.reserved);
            let result = ledger.update(&target.period, &target.account, |a| Account {
                reserved: a.reserved.saturating_sub(reserved),
                ..a
            });
            if let Err(error) = result {
                worker.ledger_error(host, &error);
                worker.defer(PendingCharge {
                    period: target.period.clone(),
                    account: target.account.clone(),
                    micro_usd: 0,
                    release: reserved,
                });
            }
        }
    }

    /// Books `micro_usd` on every account and returns the reservations; reports each
    /// account's spend before and after for crossing detection. A charge the ledger cannot
    /// take now is kept by the worker and retried on ticks.
    pub fn settle(&mut self, host: &dyn Host, worker: &Worker, micro_usd: u64) -> Vec<Settled> {
        let ledger = Ledger::new(host);
        let mut settled = Vec::new();
        for target in std::mem::take(&mut self.targets) {
            if micro_usd == 0 && target.reserved == 0 {
                continue;
            }
            let reserved = target.reserved;
            let result = ledger.update(&target.period, &target.account, |a| Account {
                spent: a.spent.saturating_add(micro_usd),
                reserved: a.reserved.saturating_sub(reserved),
            });
            match result {
                Ok(Updated {
                    before,
                    account,
                    created_shard,
                }) => {
                    if created_shard {
                        worker.ledger_error(
                            host,
                            &LedgerError::LateCreate {
                                period: target.period.id.clone(),
                            },
                        );
                    }
                    settled.push(Settled {
                        scope: target.scope,
                        period: target.period,
                        before,
                        after: account,
                    });
                }
                Err(error) => {
                    worker.ledger_error(host, &error);
                    worker.defer(PendingCharge {
                        period: target.period,
                        account: target.account,
                        micro_usd,
                        release: reserved,
                    });
                }
            }
        }
        settled
    }
}

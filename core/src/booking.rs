//! A call's bookings in the ledger: the budget lines it is checked against, the worst-case
//! cost it reserves on them before it is forwarded, and the settlement of the metered cost.
//!
//! Reserving before forwarding is what bounds overspend under concurrency: calls racing the
//! last dollar each need room for their own worst case, so together they can never commit
//! more than the budget (plus, at most, one estimate that undershot the truth).
//!
//! A call books on up to three accounts: the agent's (its day and its month, one ledger
//! entry set, so one read and one write move both), and the daily caps of its task and of
//! its user when configured. The read made to decide the call is kept and reused by the
//! reservation's write.

use crate::config::AgentBudget;
use crate::host::Host;
use crate::identity::Identity;
use crate::ledger::{Account, AccountKey, Ledger, LedgerError, Snapshot};
use crate::period::Period;
use crate::policy::{Line, Scope};

/// One period of an account the call is charged to.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Slot {
    period: Period,
    /// The budget on this period, if any (the agent's monthly spend is tracked even when it
    /// has only a daily budget).
    limit: Option<u64>,
    /// What this call holds reserved here.
    reserved: u64,
}

/// One ledger account the call is charged to, with its periods.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    scope: Scope,
    key: AccountKey,
    /// `key`'s ledger name, built once.
    name: String,
    slots: Vec<Slot>,
    /// The read made to decide the call, for the reservation's first write.
    snapshot: Option<Snapshot>,
}

impl Target {
    fn limited(&self) -> bool {
        self.slots.iter().any(|s| s.limit.is_some())
    }

    /// Hands back what the call holds reserved on each period, leaving nothing held.
    fn take_reserved(&mut self) -> Vec<u64> {
        self.slots
            .iter_mut()
            .map(|s| std::mem::take(&mut s.reserved))
            .collect()
    }

    fn line(&self, slot: &Slot, limit: u64, state: Account) -> Line {
        Line {
            scope: self.scope.clone(),
            period: slot.period.clone(),
            limit,
            state,
        }
    }
}

/// The result of settling one period of one account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settled {
    pub scope: Scope,
    pub period: Period,
    pub before: Account,
    pub after: Account,
}

/// A charge the ledger refused for now (contention, host error), retried on ticks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingCharge {
    pub key: AccountKey,
    pub period: Period,
    pub micro_usd: u64,
    /// Reservation to return along with the charge.
    pub release: u64,
}

/// What a booking step could not do: counted and logged by the caller, and the charges to
/// retry later.
#[derive(Debug, Default)]
pub struct Trouble {
    pub errors: Vec<LedgerError>,
    pub deferred: Vec<PendingCharge>,
}

#[derive(Debug, Default)]
pub struct Booking {
    targets: Vec<Target>,
}

impl Booking {
    /// Reads every limited account the call will be charged to (one read per account);
    /// returns the booking and the lines (for the policy). A ledger read error is reported
    /// and the line left out of the decision (one bad key must not stop every agent), but
    /// the account is still charged: a charge that fails waits for a readable ledger.
    pub fn open(
        host: &dyn Host,
        identity: &Identity,
        budget: &AgentBudget,
        periods: &[Period; 2],
        trouble: &mut Trouble,
    ) -> (Booking, Vec<Line>) {
        let [day, month] = periods;
        let mut targets = vec![Target {
            scope: Scope::Agent,
            key: AccountKey::Agent(identity.budget.clone()),
            name: String::new(),
            slots: [day, month]
                .into_iter()
                .map(|period| Slot {
                    period: period.clone(),
                    limit: budget.limit(period.kind),
                    reserved: 0,
                })
                .collect(),
            snapshot: None,
        }];
        let caps = [
            (budget.task_daily, &identity.task, true),
            (budget.user_daily, &identity.user, false),
        ];
        for (cap, id, is_task) in caps {
            let (Some(cap), Some(id)) = (cap, id) else {
                continue;
            };
            let (scope, key) = if is_task {
                (
                    Scope::Task(id.clone()),
                    AccountKey::Task {
                        budget: identity.budget.clone(),
                        task: id.clone(),
                    },
                )
            } else {
                (
                    Scope::User(id.clone()),
                    AccountKey::User {
                        budget: identity.budget.clone(),
                        user: id.clone(),
                    },
                )
            };
            targets.push(Target {
                scope,
                key,
                name: String::new(),
                slots: vec![Slot {
                    period: day.clone(),
                    limit: Some(cap),
                    reserved: 0,
                }],
                snapshot: None,
            });
        }
        for target in &mut targets {
            target.name = target.key.name();
        }
        let ledger = Ledger::new(host);
        let mut lines = Vec::new();
        // Only limited accounts are read: the others are charged but decide nothing.
        for target in targets.iter_mut().filter(|t| t.limited()) {
            match ledger.snapshot_named(target.name.clone()) {
                Ok(snapshot) => {
                    for slot in &target.slots {
                        if let Some(limit) = slot.limit {
                            lines.push(target.line(slot, limit, snapshot.account(&slot.period)));
                        }
                    }
                    target.snapshot = Some(snapshot);
                }
                Err(error) => trouble.errors.push(error),
            }
        }
        (Booking { targets }, lines)
    }

    /// Reserves `estimate` on every limited period, atomically per account; the agent's
    /// periods may go `agent_allowance` past their limit. On the first line where it does
    /// not fit, releases what was reserved and returns that line.
    pub fn reserve(
        &mut self,
        host: &dyn Host,
        estimate: u64,
        agent_allowance: u64,
        trouble: &mut Trouble,
    ) -> Result<(), Box<Line>> {
        let ledger = Ledger::new(host);
        let mut misfit = None;
        for target in self.targets.iter_mut().filter(|t| t.limited()) {
            let allowance = if target.scope == Scope::Agent {
                agent_allowance
            } else {
                0
            };
            let periods: Vec<&Period> = target.slots.iter().map(|s| &s.period).collect();
            let limits: Vec<Option<u64>> = target.slots.iter().map(|s| s.limit).collect();
            let result =
                ledger.update_named(&target.name, &periods, target.snapshot.take(), |before| {
                    let fits = before.iter().zip(&limits).all(|(a, limit)| match limit {
                        Some(limit) => {
                            a.spent.saturating_add(a.reserved).saturating_add(estimate)
                                <= limit.saturating_add(allowance)
                        }
                        None => true,
                    });
                    fits.then(|| {
                        before
                            .iter()
                            .zip(&limits)
                            .map(|(a, limit)| match limit {
                                Some(_) => Account {
                                    reserved: a.reserved.saturating_add(estimate),
                                    ..*a
                                },
                                None => *a,
                            })
                            .collect()
                    })
                });
            match result {
                Ok(Some(_)) => {
                    for slot in target.slots.iter_mut().filter(|s| s.limit.is_some()) {
                        slot.reserved = estimate;
                    }
                }
                Ok(None) => {
                    misfit = misfit_line(&ledger, target, estimate, allowance);
                    if misfit.is_some() {
                        break;
                    }
                }
                // A ledger failure must not block traffic: proceed without this reservation.
                Err(error) => trouble.errors.push(error),
            }
        }
        match misfit {
            Some(line) => {
                self.release(host, trouble);
                Err(Box::new(line))
            }
            None => Ok(()),
        }
    }

    /// Returns the reservations held (the call failed before costing anything, or is about
    /// to reserve again); the accounts stay booked for a later settlement.
    pub fn release(&mut self, host: &dyn Host, trouble: &mut Trouble) {
        let ledger = Ledger::new(host);
        for target in &mut self.targets {
            let held = target.take_reserved();
            if held.iter().all(|r| *r == 0) {
                continue;
            }
            book(&ledger, target, 0, &held, trouble);
        }
    }

    /// Books `micro_usd` on every period and returns the reservations; reports each period's
    /// spend before and after for crossing detection. A charge the ledger cannot take now is
    /// handed back in `trouble` to be retried on ticks.
    pub fn settle(
        &mut self,
        host: &dyn Host,
        micro_usd: u64,
        trouble: &mut Trouble,
    ) -> Vec<Settled> {
        let ledger = Ledger::new(host);
        let mut settled = Vec::new();
        for mut target in std::mem::take(&mut self.targets) {
            let held = target.take_reserved();
            if micro_usd == 0 && held.iter().all(|r| *r == 0) {
                continue;
            }
            if let Some((before, after)) = book(&ledger, &target, micro_usd, &held, trouble) {
                for ((slot, before), after) in target.slots.iter().zip(before).zip(after) {
                    settled.push(Settled {
                        scope: target.scope.clone(),
                        period: slot.period.clone(),
                        before,
                        after,
                    });
                }
            }
        }
        settled
    }
}

/// Adds `micro_usd` to every period of the target and returns `held` reservations, in one
/// write; on failure reports it and defers the charge.
fn book(
    ledger: &Ledger,
    target: &Target,
    micro_usd: u64,
    held: &[u64],
    trouble: &mut Trouble,
) -> Option<(Vec<Account>, Vec<Account>)> {
    let periods: Vec<&Period> = target.slots.iter().map(|s| &s.period).collect();
    let result = ledger.update_named(&target.name, &periods, None, |before| {
        Some(
            before
                .iter()
                .zip(held)
                .map(|(a, held)| Account {
                    reserved: a.reserved.saturating_sub(*held),
                    ..a.charged(micro_usd)
                })
                .collect(),
        )
    });
    match result {
        Ok(Some(updated)) => {
            if updated.created_shard {
                trouble.errors.push(LedgerError::LateCreate {
                    key: Ledger::shard_key(crate::ledger::shard_of(&target.name)),
                });
            }
            Some((updated.before, updated.after))
        }
        Ok(None) => None,
        Err(error) => {
            trouble.errors.push(error);
            for (slot, held) in target.slots.iter().zip(held) {
                trouble.deferred.push(PendingCharge {
                    key: target.key.clone(),
                    period: slot.period.clone(),
                    micro_usd,
                    release: *held,
                });
            }
            None
        }
    }
}

/// The line a reservation did not fit: the target's limited period with the least room.
fn misfit_line(ledger: &Ledger, target: &Target, estimate: u64, allowance: u64) -> Option<Line> {
    let snapshot = ledger.snapshot_named(target.name.clone()).ok();
    target
        .slots
        .iter()
        .filter_map(|slot| {
            let state = snapshot
                .as_ref()
                .map(|s| s.account(&slot.period))
                .unwrap_or_default();
            slot.limit.map(|limit| target.line(slot, limit, state))
        })
        .min_by_key(|line| (line.fits(estimate, allowance), line.remaining()))
}

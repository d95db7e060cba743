//! Anomaly and projection alerts, and the rate gauges, drawn from the shared spend history
//! on the tick (never per call).
//!
//! - **Anomaly**: the burn rate reached `multiple` times the agent's baseline. Once per
//!   episode across all workers: an episode starts when the burn reaches the multiple and
//!   ends when it falls back below; its start is kept in the agent's history key and
//!   written with the version that was read, so of the workers that see the start only the
//!   one whose write lands raises the alert. (Ledger alert flags live per period, which
//!   would raise an episode again when it runs past midnight.) No baseline, no anomaly:
//!   see `history` for the short-history rule.
//! - **Projection**: spend so far plus the burn rate until the period ends passes the
//!   period's budget, once per agent and period (a ledger alert flag, like soft alerts).
//!   Only once the history covers a whole `current` window, since the burn rate counts the
//!   whole window; and not once the budget is used up, which the limit alerts already say.

use crate::alerts::{Alert, AlertKind, Trigger};
use crate::config::{AgentBudget, AnomalyConfig};
use crate::history::{self, Rates, Stored};
use crate::host::Host;
use crate::ledger::{Account, AccountKey, Ledger, Snapshot};
use crate::metrics::{AgentGauge, Gauge, RateGauge};
use crate::period::{Period, PeriodKind};
use crate::root::Worker;

/// Seconds between reviews: a small fraction of a bucket, between 1 and 10 s.
pub fn review_interval_secs(settings: &AnomalyConfig) -> i64 {
    (settings.bucket_secs / 360).clamp(1, 10)
}

/// Publishes each agent's rate gauges and raises the anomaly and projection alerts due.
pub fn review(worker: &Worker, host: &dyn Host, now: i64, current: &[Period; 2]) {
    let settings = &worker.config.anomaly;
    let ledger = Ledger::new(host);
    // In fleet mode, no alert decision before the fleet's history is loaded.
    let decides = worker.fleet_ready(host);
    // Every budget is reviewed for alerts; only those with series of their own get gauges.
    for (name, budget) in &worker.config.agents {
        let agent = worker.metrics.agents().own_id(name);
        let key = history::key(settings, name);
        let stored = match history::load(host, &key) {
            Ok(Some(stored)) => stored,
            Ok(None) => continue,
            Err(error) => {
                worker.ledger_error(&error);
                continue;
            }
        };
        let seen = history::with_fleet(host, &worker.config, name, &stored.history);
        let rates = history::rates_of(&seen, settings, now);
        let burn = rates.burn_micro_usd_per_hour;
        let rate_gauges = [
            (RateGauge::BurnMicroUsdPerHour, burn),
            (
                RateGauge::BaselineMicroUsdPerHour,
                rates.baseline_micro_usd_per_hour.unwrap_or(0),
            ),
        ];
        if let Some(agent) = agent {
            for (gauge, value) in rate_gauges {
                worker.metrics.set(host, Gauge::Rate(gauge, agent), value);
            }
        }
        let snapshot = match ledger.snapshot(&AccountKey::Agent(name.clone())) {
            Ok(snapshot) => snapshot,
            Err(error) => {
                worker.ledger_error(&error);
                continue;
            }
        };
        let agent_view = AgentView {
            worker,
            host,
            name,
            budget,
            now,
        };
        for period in current {
            let spent = snapshot.account(period).spent;
            let projected = history::projected_micro_usd(spent, burn, now, period);
            if let Some(agent) = agent {
                let gauge = Gauge::Agent(AgentGauge::ProjectedSpendMicroUsd, agent, period.kind);
                worker.metrics.set(host, gauge, projected);
            }
            let watched_long_enough = now.saturating_sub(seen.began) >= settings.current_secs;
            if settings.projection && watched_long_enough && decides {
                agent_view.check_projection(period, spent, projected, burn);
            }
        }
        if settings.enabled && decides {
            agent_view.check_anomaly(&key, &stored, rates, &snapshot, current);
        }
    }
}

/// One agent under review.
struct AgentView<'a> {
    worker: &'a Worker,
    host: &'a dyn Host,
    name: &'a str,
    budget: &'a AgentBudget,
    now: i64,
}

impl AgentView<'_> {
    fn check_projection(&self, period: &Period, spent: u64, projected: u64, burn: u64) {
        let Some(limit) = self.budget.limit(period.kind) else {
            return;
        };
        if spent >= limit || projected <= limit {
            return;
        }
        let flag = AccountKey::Alerted {
            budget: self.name.to_string(),
            level: AlertKind::Projection.name(),
            mark: limit,
        };
        if self.worker.knows_flag(&flag, period) {
            return;
        }
        let ledger = Ledger::new(self.host);
        match ledger.try_update(period, &flag, |a| {
            (a.spent == 0).then_some(Account { spent: 1, ..a })
        }) {
            Ok(Some(_)) => self.raise(
                AlertKind::Projection,
                period,
                spent,
                limit,
                1.0,
                Trigger::Projection {
                    projected_micro_usd: projected,
                    burn_micro_usd_per_hour: burn,
                },
            ),
            Ok(None) => {}
            Err(error) => {
                self.worker.ledger_error(&error);
                return;
            }
        }
        self.worker.remember_flag(flag, period);
    }

    fn check_anomaly(
        &self,
        key: &str,
        stored: &Stored,
        rates: Rates,
        snapshot: &Snapshot,
        current: &[Period; 2],
    ) {
        let settings = &self.worker.config.anomaly;
        let burn = rates.burn_micro_usd_per_hour;
        let baseline = rates.baseline_micro_usd_per_hour.unwrap_or(0);
        let in_episode = stored.history.episode_since != 0;
        // An episode starts at the multiple and ends only once the burn is back below
        // halfway to it (2x for 3x): a burn hovering at the threshold is one episode, not
        // an alert each time it wavers across.
        let threshold_milli = if in_episode {
            1_000 + settings.multiple_milli.saturating_sub(1_000) / 2
        } else {
            settings.multiple_milli
        };
        let anomalous = baseline > 0
            && u128::from(burn) * 1_000 >= u128::from(threshold_milli) * u128::from(baseline);
        if anomalous == in_episode {
            return;
        }
        let since = if anomalous { self.now } else { 0 };
        match history::set_episode(self.host, key, stored, since) {
            Ok(true) if anomalous => {
                // The alert speaks of the agent's daily budget, or its monthly one.
                let kind = match self.budget.daily {
                    Some(_) => PeriodKind::Daily,
                    None => PeriodKind::Monthly,
                };
                let Some(period) = current.iter().find(|p| p.kind == kind) else {
                    return;
                };
                let limit = self.budget.limit(kind).unwrap_or(0);
                self.raise(
                    AlertKind::Anomaly,
                    period,
                    snapshot.account(period).spent,
                    limit,
                    settings.multiple_milli as f64 / 1_000.0,
                    Trigger::Anomaly {
                        burn_micro_usd_per_hour: burn,
                        baseline_micro_usd_per_hour: baseline,
                        multiple_milli: settings.multiple_milli,
                        episode_since: self.now,
                    },
                );
            }
            Ok(true) => log::info!(
                "agent {}: anomaly episode since {} ended (burn {burn} micro-USD/h, baseline {baseline})",
                self.name,
                stored.history.episode_since
            ),
            // Another worker moved the episode first; the next review sees its write.
            Ok(false) => {}
            Err(error) => self.worker.ledger_error(&error),
        }
    }

    fn raise(
        &self,
        kind: AlertKind,
        period: &Period,
        spent: u64,
        limit: u64,
        threshold: f64,
        trigger: Trigger,
    ) {
        self.worker.raise_alert(Alert {
            kind,
            agent: self.name.to_string(),
            period: period.kind,
            period_id: period.id.to_string(),
            spend_micro_usd: spent,
            budget_micro_usd: limit,
            threshold,
            action: self.budget.action.name().to_string(),
            at_unix_secs: self.now,
            period_end_unix_secs: period.end,
            trigger,
        });
    }
}

#[cfg(test)]
mod tests;

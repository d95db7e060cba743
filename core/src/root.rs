//! Per-worker state behind the root context: the configuration, metric ids, charges the
//! ledger could not take yet, and the periodic upkeep run on ticks.

use crate::alerts::{self, Alert, Outbox, PayloadFormat};
use crate::config::{AlertFormat, Config};
use crate::host::Host;
use crate::ledger::{Ledger, LedgerError};
use crate::metrics::{self, AgentGauge, Metrics, ReasonCounter};
use crate::period::{Period, PeriodKind};
use std::cell::RefCell;
use std::collections::BTreeSet;

/// How often the root context runs [`Worker::tick`]: alerts go out within a second.
pub const TICK_MILLIS: u64 = 1_000;
/// Ticks between refreshes of the live-view gauges from the ledger.
const GAUGE_REFRESH_TICKS: u64 = 5;
/// Alerts queued per worker before the oldest are dropped (and counted).
const MAX_QUEUED_ALERTS: usize = 1_000;
/// Pending charges kept per worker before the oldest are dropped (and logged).
const MAX_PENDING: usize = 10_000;

/// A charge the ledger refused for now (contention, host error), retried on ticks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingCharge {
    pub period: Period,
    pub account: String,
    pub micro_usd: u64,
    /// Reservation to return along with the charge.
    pub release: u64,
}

pub struct Worker {
    pub config: Config,
    pub metrics: Metrics,
    pending: RefCell<Vec<PendingCharge>>,
    unpriced_logged: RefCell<BTreeSet<String>>,
    /// Ids of the current periods the last upkeep prepared, to act on rollovers only.
    prepared: RefCell<Vec<String>>,
    ticks: std::cell::Cell<u64>,
    /// Alerts this worker raised and still has to deliver (None: no `alerts` configured).
    outbox: RefCell<Option<Outbox>>,
    /// Webhook calls awaiting a reply: dispatch token → outbox delivery id.
    in_flight: RefCell<std::collections::HashMap<u32, u64>>,
    delivery_counts: std::cell::Cell<[u64; 4]>,
}

/// The ledger account of a budget.
pub fn account_of(budget: &str) -> String {
    format!("agent:{budget}")
}

impl Worker {
    pub fn new(config: Config) -> Worker {
        let outbox = config.alerts.as_ref().map(|alerts| {
            let format = match alerts.format {
                AlertFormat::Alertmanager => PayloadFormat::Alertmanager,
                AlertFormat::Json => PayloadFormat::Json,
            };
            Outbox::new(format, alerts.max_attempts, MAX_QUEUED_ALERTS)
        });
        Worker {
            config,
            metrics: Metrics::new(),
            pending: RefCell::new(Vec::new()),
            unpriced_logged: RefCell::new(BTreeSet::new()),
            prepared: RefCell::new(Vec::new()),
            ticks: std::cell::Cell::new(0),
            outbox: RefCell::new(outbox),
            in_flight: RefCell::new(std::collections::HashMap::new()),
            delivery_counts: std::cell::Cell::new([0; 4]),
        }
    }

    pub fn current_periods(&self, now: i64) -> [Period; 2] {
        PeriodKind::ALL.map(|kind| Period::containing(kind, self.config.time_zone, now))
    }

    /// Start-up and tick upkeep: makes sure the current and next periods' ledger keys exist
    /// before anyone charges them, frees the period before the previous one, retries pending
    /// charges, and refreshes the live-view gauges.
    pub fn tick(&self, host: &dyn Host) {
        let now = host.now_unix_secs();
        let current = self.current_periods(now);
        let ids: Vec<String> = current.iter().map(|p| p.id.clone()).collect();
        if *self.prepared.borrow() != ids {
            let ledger = Ledger::new(host);
            let mut ok = true;
            for period in &current {
                let previous =
                    Period::containing(period.kind, self.config.time_zone, period.start - 1);
                let before_previous =
                    Period::containing(period.kind, self.config.time_zone, previous.start - 1);
                for result in [
                    ledger.ensure_period(period).map(|_| ()),
                    ledger
                        .ensure_period(&period.next(self.config.time_zone))
                        .map(|_| ()),
                    ledger.release_period(&before_previous),
                ] {
                    if let Err(error) = result {
                        ok = false;
                        self.ledger_error(host, &error);
                    }
                }
            }
            if ok {
                *self.prepared.borrow_mut() = ids;
            }
        }
        let retried = self.retry_pending(host);
        let ticks = self.ticks.get();
        self.ticks.set(ticks.wrapping_add(1));
        if retried || ticks % GAUGE_REFRESH_TICKS == 0 {
            self.refresh_gauges(host, &current, ticks == 0);
        }
        self.deliver_alerts(host, now);
    }

    /// Logs, counts and queues an alert this worker won the right to raise.
    pub fn raise_alert(&self, host: &dyn Host, alert: Alert) {
        log::warn!("{}", alerts::log_line(&alert));
        let name = metrics::agent_reason_name(metrics::ALERTS, &alert.agent, alert.kind.name());
        self.metrics.add(host, name, 1);
        if let Some(outbox) = self.outbox.borrow_mut().as_mut() {
            outbox.push(alert);
        }
        // A full queue drops its oldest alert.
        self.sync_delivery_metrics(host);
    }

    fn deliver_alerts(&self, host: &dyn Host, now: i64) {
        let Some(settings) = &self.config.alerts else {
            return;
        };
        let due = match self.outbox.borrow_mut().as_mut() {
            Some(outbox) => outbox.due(now),
            None => return,
        };
        // `due` times out unanswered attempts and gives up on exhausted alerts.
        self.sync_delivery_metrics(host);
        for delivery in due {
            let headers = [
                (":method", "POST"),
                (":path", settings.path.as_str()),
                (":authority", settings.authority.as_str()),
                ("content-type", "application/json"),
                ("user-agent", "agent-budget"),
            ];
            match host.dispatch_http(
                &settings.cluster,
                &headers,
                &delivery.body,
                settings.timeout_ms,
            ) {
                Ok(token) => {
                    self.in_flight.borrow_mut().insert(token, delivery.id);
                }
                Err(error) => {
                    log::warn!(
                        "alert webhook to cluster {} not sent: {error}",
                        settings.cluster
                    );
                    self.record_delivery(host, delivery.id, false, now);
                }
            }
        }
    }

    /// The reply to a webhook call (`status` 0: no reply, e.g. a timeout or reset).
    pub fn on_alert_reply(&self, host: &dyn Host, token: u32, status: u32) {
        let Some(id) = self.in_flight.borrow_mut().remove(&token) else {
            return;
        };
        let ok = (200..300).contains(&status);
        if !ok {
            log::warn!("alert webhook answered {status}; will retry");
        }
        self.record_delivery(host, id, ok, host.now_unix_secs());
    }

    fn record_delivery(&self, host: &dyn Host, id: u64, ok: bool, now: i64) {
        if let Some(outbox) = self.outbox.borrow_mut().as_mut() {
            outbox.sent(id, ok, now);
        }
        self.sync_delivery_metrics(host);
    }

    /// Moves the outbox's running totals into the delivery counters.
    fn sync_delivery_metrics(&self, host: &dyn Host) {
        let counts = {
            let outbox = self.outbox.borrow();
            let Some(outbox) = outbox.as_ref() else {
                return;
            };
            [
                outbox.delivered(),
                outbox.failed_attempts(),
                outbox.given_up(),
                outbox.dropped(),
            ]
        };
        let previous = self.delivery_counts.replace(counts);
        for ((reason, now_count), before) in ["delivered", "failed", "given_up", "dropped"]
            .iter()
            .zip(counts)
            .zip(previous)
        {
            let delta = now_count.saturating_sub(before);
            if delta > 0 {
                self.metrics.add(
                    host,
                    metrics::reason_counter_name(ReasonCounter::AlertDeliveries, reason),
                    delta,
                );
            }
        }
    }

    fn refresh_gauges(&self, host: &dyn Host, current: &[Period; 2], with_limits: bool) {
        let ledger = Ledger::new(host);
        for (name, budget) in &self.config.agents {
            for period in current {
                // Limits are published at configure time and by each call, not here: a
                // draining listener's old plugin keeps ticking for minutes after a reload.
                if with_limits {
                    if let Some(limit) = budget.limit(period.kind) {
                        self.metrics.gauge(
                            host,
                            AgentGauge::LimitMicroUsd,
                            name,
                            period.kind,
                            limit,
                        );
                    }
                }
                if let Ok(account) = ledger.read(period, &account_of(name)) {
                    self.metrics.gauge(
                        host,
                        AgentGauge::SpendMicroUsd,
                        name,
                        period.kind,
                        account.spent,
                    );
                }
            }
        }
    }

    /// Retries deferred charges; true if there were any.
    fn retry_pending(&self, host: &dyn Host) -> bool {
        let pending = std::mem::take(&mut *self.pending.borrow_mut());
        if pending.is_empty() {
            return false;
        }
        let ledger = Ledger::new(host);
        let mut still = Vec::new();
        for charge in pending {
            let result = ledger.update(&charge.period, &charge.account, |a| {
                crate::ledger::Account {
                    spent: a.spent.saturating_add(charge.micro_usd),
                    reserved: a.reserved.saturating_sub(charge.release),
                }
            });
            if result.is_err() {
                still.push(charge);
            }
        }
        if !still.is_empty() {
            log::warn!("{} charges still pending after retry", still.len());
        }
        self.pending.borrow_mut().extend(still);
        true
    }

    /// Keeps a charge the ledger could not take now; it is retried on the next tick.
    pub fn defer(&self, charge: PendingCharge) {
        let mut pending = self.pending.borrow_mut();
        if pending.len() >= MAX_PENDING {
            let dropped = pending.remove(0);
            log::error!(
                "pending-charge queue full, dropping {} micro-USD for {} in {}",
                dropped.micro_usd,
                dropped.account,
                dropped.period.id
            );
        }
        pending.push(charge);
    }

    pub fn pending_len(&self) -> usize {
        self.pending.borrow().len()
    }

    pub fn ledger_error(&self, host: &dyn Host, error: &LedgerError) {
        let reason = match error {
            LedgerError::Contended { .. } => "contended",
            LedgerError::Corrupt { .. } => "corrupt",
            LedgerError::Host { .. } => "host",
            LedgerError::NameTooLong => "name_too_long",
            LedgerError::LateCreate { .. } => "late_create",
        };
        self.metrics
            .reason(host, ReasonCounter::LedgerErrors, reason);
        log::error!("ledger: {error}");
    }

    /// True the first time a model is seen without a price on this worker.
    pub fn first_unpriced(&self, model: &str) -> bool {
        self.unpriced_logged.borrow_mut().insert(model.to_string())
    }
}

#[cfg(test)]
mod tests;

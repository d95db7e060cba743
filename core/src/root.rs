//! Per-worker state behind the root context: the configuration, metric ids, charges the
//! ledger could not take yet, and the periodic upkeep run on ticks.

use crate::alerts::{self, Alert, Outbox, PayloadFormat};
use crate::anomaly;
use crate::booking::{PendingCharge, Trouble};
use crate::config::{AlertFormat, Config, LimitAction, Unsynced};
use crate::fleet::{Claimed, Fleet, Reply};
use crate::history;
use crate::host::{Host, HostError};
use crate::ledger::{Account, AccountKey, Ledger, LedgerError};
use crate::metrics::{AgentGauge, Agents, Counter, Gauge, Metrics, ReasonCounter};
use crate::period::{Period, PeriodKind};
use crate::top;
use std::cell::{Cell, RefCell};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::rc::Rc;

/// How often the root context runs [`Worker::tick`]: alerts go out and counters reach
/// Envoy within a second.
pub const TICK_MILLIS: u64 = 1_000;
/// Ticks between refreshes of the live-view gauges from the ledger while no call comes.
const GAUGE_REFRESH_TICKS: u64 = 5;
/// Alerts queued per worker before the oldest are dropped (and counted).
const MAX_QUEUED_ALERTS: usize = 1_000;
/// Pending charges kept per worker before the oldest are dropped (and logged).
const MAX_PENDING: usize = 10_000;
/// Alert flags remembered per worker before the memory starts over (it is only a cache).
const MAX_KNOWN_FLAGS: usize = 10_000;

pub struct Worker {
    pub config: Config,
    pub metrics: Metrics,
    pending: RefCell<Vec<PendingCharge>>,
    unpriced_logged: RefCell<BTreeSet<String>>,
    /// Host calls that failed on this worker at least once (each is logged only the first
    /// time: a failing call on the hot path must not flood the log).
    host_errors_logged: RefCell<BTreeSet<&'static str>>,
    /// The current day and month, recomputed only when the day ends.
    periods: RefCell<Option<[Period; 2]>>,
    /// Ids of the current periods the last upkeep prepared, to act on rollovers only.
    prepared: RefCell<Vec<Rc<str>>>,
    ticks: Cell<u64>,
    /// A call started since the last tick: the live-view gauges are due.
    served: Cell<bool>,
    /// Alert flags this worker knows are set in the ledger (flag, period end): skips the
    /// ledger read for levels long reached.
    known_flags: RefCell<HashSet<(AccountKey, i64)>>,
    /// Alerts this worker raised and still has to deliver (None: no `alerts` configured).
    outbox: RefCell<Option<Outbox>>,
    /// Webhook calls awaiting a reply: dispatch token → outbox delivery id.
    in_flight: RefCell<HashMap<u32, u64>>,
    delivery_counts: Cell<[u64; 4]>,
    /// Today's spend by task and user, merged into shared data on the tick.
    pub top: top::Accumulator,
    /// Spend charged since the last merge into the shared history.
    history: history::Accumulator,
    /// When the rates were last reviewed (see `anomaly::review`).
    last_review: Cell<Option<i64>>,
    /// Fleet mode's sync state (None: embedded mode).
    fleet: Option<Fleet>,
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
        let agents = Agents::new(
            config.agents.keys().cloned(),
            config.max_tracked_agents as usize,
        );
        Worker {
            metrics: Metrics::new(agents),
            pending: RefCell::new(Vec::new()),
            unpriced_logged: RefCell::new(BTreeSet::new()),
            host_errors_logged: RefCell::new(BTreeSet::new()),
            periods: RefCell::new(None),
            prepared: RefCell::new(Vec::new()),
            ticks: Cell::new(0),
            served: Cell::new(false),
            known_flags: RefCell::new(HashSet::new()),
            outbox: RefCell::new(outbox),
            in_flight: RefCell::new(HashMap::new()),
            delivery_counts: Cell::new([0; 4]),
            top: top::Accumulator::new(),
            history: history::Accumulator::default(),
            last_review: Cell::new(None),
            fleet: config.fleet.clone().map(Fleet::new),
            config,
        }
    }

    /// How often the host should run [`Worker::tick`]: fleet mode syncs on the tick.
    pub fn tick_millis(&self) -> u32 {
        self.config
            .fleet
            .as_ref()
            .map_or(TICK_MILLIS as u32, |f| f.sync_millis)
    }

    /// True if a call of an agent with `action` must be refused because fleet mode has not
    /// loaded the fleet's spend yet (`fleet.unsynced: refuse`, `stop` agents only).
    pub fn refuses_unsynced(&self, host: &dyn Host, action: LimitAction) -> bool {
        let Some(fleet) = &self.fleet else {
            return false;
        };
        action == LimitAction::Stop
            && fleet.settings().unsynced == Unsynced::Refuse
            && !fleet.ready(host)
    }

    /// True unless fleet mode has not loaded the fleet's spend and history yet.
    pub fn fleet_ready(&self, host: &dyn Host) -> bool {
        self.fleet.as_ref().is_none_or(|fleet| fleet.ready(host))
    }

    /// Fleet sync calls awaiting a reply.
    pub fn fleet_in_flight(&self) -> usize {
        self.fleet.as_ref().map_or(0, Fleet::in_flight)
    }

    /// The reply to a call this worker dispatched (`status` 0: no reply, e.g. a reset):
    /// a fleet sync or an alert delivery.
    pub fn on_http_reply(&self, host: &dyn Host, token: u32, status: u32, body: &[u8]) {
        if let Some(fleet) = &self.fleet {
            match fleet.on_reply(host, &self.metrics, &self.config, token, status, body) {
                Reply::NotFleet => {}
                Reply::Synced => {
                    self.metrics.flush(host);
                    return;
                }
                Reply::Claim(claimed) => {
                    self.settle_claim(claimed);
                    self.deliver_alerts(host, host.now_unix_secs());
                    self.metrics.flush(host);
                    return;
                }
            }
        }
        self.on_alert_reply(host, token, status);
    }

    /// The day and month containing `now`, cached until the day ends.
    pub fn current_periods(&self, now: i64) -> [Period; 2] {
        let mut cached = self.periods.borrow_mut();
        if let Some(periods) = cached.as_ref() {
            if periods.iter().all(|p| p.start <= now && now < p.end) {
                return periods.clone();
            }
        }
        let periods =
            PeriodKind::ALL.map(|kind| Period::containing(kind, self.config.time_zone, now));
        *cached = Some(periods.clone());
        periods
    }

    /// Notes that a call started: the gauges refresh on the next tick.
    pub fn serving(&self) {
        self.served.set(true);
    }

    /// Start-up and tick upkeep: makes sure the ledger's keys exist before anyone charges
    /// them and drops finished periods on a rollover, retries pending charges, hands the
    /// counts to the host, refreshes the live-view gauges and delivers alerts.
    pub fn tick(&self, host: &dyn Host) {
        let now = host.now_unix_secs();
        let current = self.current_periods(now);
        let ids: Vec<Rc<str>> = current.iter().map(|p| Rc::clone(&p.id)).collect();
        if *self.prepared.borrow() != ids {
            let ledger = Ledger::new(host);
            let prepared = ledger
                .ensure_shards()
                .and_then(|_| top::ensure_keys(host, self.config.agents.keys()))
                .and_then(|_| ledger.prune(&current))
                .and_then(|_| history::ensure(host, &self.config, now).map(|_| ()))
                .and_then(|_| match &self.fleet {
                    Some(fleet) => fleet.prepare(host, host.now_unix_nanos()).map_err(|error| {
                        LedgerError::Host {
                            key: crate::fleet::FIELD_KEY.to_string(),
                            error,
                        }
                    }),
                    None => Ok(()),
                });
            match prepared {
                Ok(()) => *self.prepared.borrow_mut() = ids,
                Err(error) => self.ledger_error(&error),
            }
            self.known_flags.borrow_mut().clear();
        }
        let retried = self.retry_pending(host);
        for error in self.top.publish(host) {
            self.ledger_error(&error);
        }
        self.merge_history(host, now);
        let ticks = self.ticks.get();
        // Not on the configure-time run: calls go out from ticks.
        if let (Some(fleet), true) = (&self.fleet, ticks > 0) {
            fleet.sync(host, &self.metrics, &self.config, &current);
        }
        self.ticks.set(ticks.wrapping_add(1));
        let served = self.served.replace(false);
        if retried || served || ticks % GAUGE_REFRESH_TICKS == 0 {
            // Limits are published at configure time and by plugins that serve calls, not
            // by every tick: a draining listener's old plugin keeps ticking for minutes
            // after a reload.
            self.refresh_gauges(host, &current, ticks == 0 || served);
        }
        let interval = anomaly::review_interval_secs(&self.config.anomaly);
        if self
            .last_review
            .get()
            .is_none_or(|last| now.saturating_sub(last) >= interval)
        {
            self.last_review.set(Some(now));
            anomaly::review(self, host, now, &current);
        }
        if let Some(fleet) = &self.fleet {
            for claimed in fleet.tick_claims(host, &self.metrics) {
                self.settle_claim(claimed);
            }
        }
        self.deliver_alerts(host, now);
        self.metrics.flush(host);
    }

    /// Notes a charged call's cost for the spend history (memory only: the tick merges it).
    /// Only configured budgets have a history.
    pub fn record_spend(&self, budget: &str, now: i64, micro_usd: u64) {
        if self.config.budget(budget).is_some() {
            let bucket = history::bucket_of(&self.config.anomaly, now);
            self.history.add(budget, bucket, micro_usd);
        }
    }

    /// Merges the spend accumulated since the last tick into the shared history; what a
    /// merge cannot write now is kept for the next tick.
    fn merge_history(&self, host: &dyn Host, now: i64) {
        if self.history.is_empty() {
            return;
        }
        let settings = &self.config.anomaly;
        let oldest = history::oldest_needed(settings, now);
        for (budget, deltas) in self.history.take() {
            let key = history::key(settings, &budget);
            match history::merge(host, &key, &deltas, oldest, now) {
                Ok(()) => {}
                // Written, but unchecked: counted, not retried.
                Err(error @ LedgerError::LateCreate { .. }) => self.ledger_error(&error),
                Err(error) => {
                    self.ledger_error(&error);
                    let kept: Vec<(i64, u64)> =
                        deltas.into_iter().filter(|(b, _)| *b >= oldest).collect();
                    self.history.restore(&budget, &kept);
                }
            }
        }
    }

    /// Counts and logs what a booking step could not do, and keeps its charges for retry.
    pub fn report(&self, trouble: Trouble) {
        for error in &trouble.errors {
            self.ledger_error(error);
        }
        for charge in trouble.deferred {
            self.defer(charge);
        }
    }

    /// True if this worker already knows the alert flag is set in `period`.
    pub fn knows_flag(&self, flag: &AccountKey, period: &Period) -> bool {
        self.known_flags
            .borrow()
            .contains(&(flag.clone(), period.end))
    }

    pub fn remember_flag(&self, flag: AccountKey, period: &Period) {
        let mut known = self.known_flags.borrow_mut();
        if known.len() >= MAX_KNOWN_FLAGS {
            known.clear();
        }
        known.insert((flag, period.end));
    }

    /// Takes an alert this worker won the right to raise: in fleet mode with a webhook, it
    /// is claimed for the fleet first (on the tick); otherwise delivered.
    pub fn raise_alert(&self, alert: Alert) {
        if let (Some(fleet), true) = (&self.fleet, self.outbox.borrow().is_some()) {
            let expire_at = crate::fleet::claim_expiry(&self.config, &alert);
            fleet.queue_claim(alert, expire_at);
            return;
        }
        self.accept_alert(alert);
    }

    /// Delivers a claimed alert unless another gateway claimed it first.
    fn settle_claim(&self, claimed: Claimed) {
        match claimed {
            Claimed::Won(alert) => self.accept_alert(alert),
            Claimed::Unknown(alert) => {
                log::warn!(
                    "fleet: cannot claim the {} alert of agent {} in Redis; delivering it anyway",
                    alert.kind.name(),
                    alert.agent
                );
                self.accept_alert(alert);
            }
            Claimed::Lost(alert) => {
                log::info!(
                    "fleet: the {} alert of agent {} in {} was raised by another gateway",
                    alert.kind.name(),
                    alert.agent,
                    alert.period_id
                );
                self.metrics.count(
                    Counter::Reason(ReasonCounter::AlertDeliveries, "claimed_elsewhere"),
                    1,
                );
            }
        }
    }

    /// Logs, counts and queues an alert for delivery.
    fn accept_alert(&self, alert: Alert) {
        log::warn!("{}", alerts::log_line(&alert));
        if let Some(agent) = self.metrics.agents().id(&alert.agent) {
            self.metrics
                .count(Counter::Alerts(agent, alert.kind.name()), 1);
        }
        if let Some(outbox) = self.outbox.borrow_mut().as_mut() {
            outbox.push(alert);
        }
        // A full queue drops its oldest alert.
        self.sync_delivery_metrics();
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
        self.sync_delivery_metrics();
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
                    self.record_delivery(delivery.id, false, now);
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
        self.record_delivery(id, ok, host.now_unix_secs());
        self.metrics.flush(host);
    }

    fn record_delivery(&self, id: u64, ok: bool, now: i64) {
        if let Some(outbox) = self.outbox.borrow_mut().as_mut() {
            outbox.sent(id, ok, now);
        }
        self.sync_delivery_metrics();
    }

    /// Moves the outbox's running totals into the delivery counters.
    fn sync_delivery_metrics(&self) {
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
            .into_iter()
            .zip(counts)
            .zip(previous)
        {
            self.metrics.count(
                Counter::Reason(ReasonCounter::AlertDeliveries, reason),
                now_count.saturating_sub(before),
            );
        }
    }

    /// Publishes spend per agent and period from the ledger (one read per agent), and the
    /// limits when `with_limits`.
    fn refresh_gauges(&self, host: &dyn Host, current: &[Period; 2], with_limits: bool) {
        if with_limits {
            let folded = self.metrics.agents().folded() as u64;
            self.metrics.set(host, Gauge::FoldedAgents, folded);
        }
        let ledger = Ledger::new(host);
        for (agent, (name, budget)) in self.metrics.agents().ids().zip(&self.config.agents) {
            let snapshot = ledger.snapshot(&AccountKey::Agent(name.clone()));
            for period in current {
                if with_limits {
                    if let Some(limit) = budget.limit(period.kind) {
                        let gauge = Gauge::Agent(AgentGauge::LimitMicroUsd, agent, period.kind);
                        self.metrics.set(host, gauge, limit);
                    }
                }
                if let Ok(snapshot) = &snapshot {
                    let spent = snapshot.account(period).spent;
                    let gauge = Gauge::Agent(AgentGauge::SpendMicroUsd, agent, period.kind);
                    self.metrics.set(host, gauge, spent);
                    if let Some(limit) = budget.limit(period.kind) {
                        let gauge = Gauge::Agent(AgentGauge::RemainingMicroUsd, agent, period.kind);
                        self.metrics.set(host, gauge, limit.saturating_sub(spent));
                    }
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
            let result = ledger.update(&charge.period, &charge.key, |a| Account {
                reserved: a.reserved.saturating_sub(charge.release),
                ..a.charged(charge.micro_usd)
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
                dropped.key.name(),
                dropped.period.id
            );
        }
        pending.push(charge);
    }

    pub fn pending_len(&self) -> usize {
        self.pending.borrow().len()
    }

    pub fn ledger_error(&self, error: &LedgerError) {
        self.metrics.count(
            Counter::Reason(ReasonCounter::LedgerErrors, error.reason()),
            1,
        );
        log::error!("ledger: {error}");
    }

    /// Counts a host call the adapter could not make (`call` names it, e.g. `get_buffer`),
    /// logging it the first time on this worker. The caller goes on as its failure mode says.
    pub fn host_error(&self, call: &'static str, error: &HostError) {
        self.metrics
            .count(Counter::Reason(ReasonCounter::HostErrors, call), 1);
        if self.host_errors_logged.borrow_mut().insert(call) {
            log::error!("host call {call} failed: {error} (logged once per worker)");
        }
    }

    /// True the first time a model is seen without a price on this worker.
    pub fn first_unpriced(&self, model: &str) -> bool {
        self.unpriced_logged.borrow_mut().insert(model.to_string())
    }
}

#[cfg(test)]
mod tests;

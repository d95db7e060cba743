//! Fleet mode: the gateways of a fleet share each agent's spend through Redis, reached over
//! HTTP through webdis (proxy-wasm can only call out over HTTP).
//!
//! ## Local first
//! Calls never wait on Redis: each gateway decides on its own ledger, whose entries hold the
//! spend that counts (`spent`) and this gateway's share of it (`own`). On every tick one
//! worker per Envoy (the holder of a shared-data lease) sends, per agent budget, one EVAL
//! that pushes this gateway's own spend of each of the agent's accounts and returns the
//! fleet's totals; the others' share (total minus ours) is folded into `spent`.
//!
//! ## Exactly once by absolute values
//! Each account-period is a Redis hash, `{prefix}:{<budget>}:<account>:<period>` (the hash
//! tag is the budget, so one script touches one Redis Cluster slot); each gateway owns one
//! field and sets it to its cumulative own spend, never lowering it. A retried, duplicated
//! or reordered push re-sets the same absolute value, so no delta is ever applied twice and
//! none is lost while Redis is unreachable: the next push carries the larger total.
//!
//! ## One field per gateway process
//! The field is `<gateway id>@<start>-<random>`, fixed when the Envoy process first configures the
//! filter (kept across plugin reloads, which keep shared data). A restarted gateway starts
//! its own count at zero in a new field, and the old field keeps counting in the total, so
//! a restart neither loses nor re-counts spend, whatever it charged before its first pull.
//! Before that first pull, `fleet.unsynced` says what `stop` agents get.
//!
//! ## Alerts and the anomaly history
//! An alert is claimed in Redis (`SETNX` in a script) before delivery: only the first
//! gateway delivers, and a claim Redis cannot answer delivers anyway. The spend history is
//! pushed per bucket with the same absolute scheme (one hash per budget, a field per
//! bucket and gateway); the others' share is kept beside the local history (see
//! `history::with_fleet`), and the load is complete only once the window is in.

use crate::alerts::{Alert, AlertKind};
use crate::config::{Config, FleetConfig};
use crate::history::{self, History};
use crate::host::{Host, HostError};
use crate::ledger::{Account, Ledger, LedgerError};
use crate::metrics::{Counter, Metrics, ReasonCounter};
use crate::period::Period;
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::BuildHasher;

/// Which worker of this Envoy syncs: token (u64) and expiry (Unix nanos, u64).
pub const LEASE_KEY: &str = "agent_budget/fleet/lease";
/// This Envoy process's Redis field name.
pub const FIELD_KEY: &str = "agent_budget/fleet/field";
/// Set once every configured agent's spend has been loaded from Redis.
pub const READY_KEY: &str = "agent_budget/fleet/ready";
/// Sync intervals a lease outlives its last renewal: a stalled worker hands over quickly.
const LEASE_INTERVALS: u64 = 3;
/// Redis keys outlive their period by this much, so a late gateway still finds yesterday.
const KEY_MARGIN_SECS: i64 = 7 * 86_400;
/// Accounts per EVAL: bounds the request size for agents with many tasks and users.
const MAX_ITEMS_PER_CALL: usize = 100;
/// Timeouts after which an unanswered request is forgotten (the host always answers, this
/// only guards against a lost callback).
const FORGET_AFTER_TIMEOUTS: u64 = 10;

/// For each key: raise this gateway's field to the pushed value if it is lower, keep the key
/// until its period is long over, and return the key's total and this gateway's field.
/// Flat pairs, because webdis drops nested arrays.
pub const SCRIPT: &str = "local out = {} \
for i, key in ipairs(KEYS) do \
local own = tonumber(ARGV[2 * i]) \
local mine = tonumber(redis.call('HGET', key, ARGV[1]) or '0') \
if own > mine then redis.call('HSET', key, ARGV[1], ARGV[2 * i]) mine = own end \
redis.call('EXPIREAT', key, ARGV[2 * i + 1]) \
local total = 0 \
for _, v in ipairs(redis.call('HVALS', key)) do total = total + tonumber(v) end \
out[2 * i - 1] = total \
out[2 * i] = mine \
end \
return out";

/// Claims an alert for the whole fleet: true for the first gateway to ask (and for that
/// gateway again, so a retried claim still wins), false for the others. The key expires
/// once the alert could not be raised again anyway.
pub const CLAIM_SCRIPT: &str = "if redis.call('SETNX', KEYS[1], ARGV[1]) == 1 then \
redis.call('EXPIREAT', KEYS[1], ARGV[2]) return 1 end \
if redis.call('GET', KEYS[1]) == ARGV[1] then return 1 end \
return 0";

/// Pushes this gateway's spend per history bucket (`<bucket>|<field>` fields, raised, never
/// lowered), keeps the earliest start of any gateway's history in `began`, drops buckets
/// before ARGV[5], and returns `began` then (bucket, total, this gateway's) for every
/// bucket from ARGV[4] on.
pub const HISTORY_SCRIPT: &str = "local key = KEYS[1] local field = ARGV[1] \
for i = 6, #ARGV, 2 do \
local f = ARGV[i] .. '|' .. field \
local mine = tonumber(redis.call('HGET', key, f) or '0') \
if tonumber(ARGV[i + 1]) > mine then redis.call('HSET', key, f, ARGV[i + 1]) end \
end \
redis.call('HSETNX', key, 'began', ARGV[3]) \
local began = tonumber(redis.call('HGET', key, 'began')) \
if tonumber(ARGV[3]) < began then redis.call('HSET', key, 'began', ARGV[3]) began = tonumber(ARGV[3]) end \
local from = tonumber(ARGV[4]) local oldest = tonumber(ARGV[5]) \
local sums = {} local mine = {} \
local all = redis.call('HGETALL', key) \
for j = 1, #all, 2 do \
local f = all[j] local sep = string.find(f, '|', 1, true) \
if sep then \
local b = tonumber(string.sub(f, 1, sep - 1)) \
if b < oldest then redis.call('HDEL', key, f) \
elseif b >= from then \
local v = tonumber(all[j + 1]) sums[b] = (sums[b] or 0) + v \
if string.sub(f, sep + 1) == field then mine[b] = v end \
end end end \
redis.call('EXPIREAT', key, ARGV[2]) \
local out = {began} \
for b, v in pairs(sums) do out[#out + 1] = b out[#out + 1] = v out[#out + 1] = mine[b] or 0 end \
return out";

/// A history sync in flight: the budget and the buckets it pushed.
#[derive(Debug)]
struct HistoryCall {
    budget: String,
    pushed: Vec<(i64, u64)>,
    sent_nanos: u64,
}

/// What became of an alert's claim, for the worker to deliver or drop it.
#[derive(Debug)]
pub enum Claimed {
    /// This gateway won the claim: it delivers.
    Won(Alert),
    /// Another gateway holds the claim: dropped, counted.
    Lost(Alert),
    /// Redis could not say: delivered anyway (a duplicate beats a lost alert).
    Unknown(Alert),
}

/// What a reply to a call of this worker was.
#[derive(Debug)]
pub enum Reply {
    /// Not a fleet call.
    NotFleet,
    /// A spend sync, applied or counted as failed.
    Synced,
    /// An alert claim's outcome.
    Claim(Claimed),
}

/// One account-period in a sync call.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Item {
    /// The ledger entry name (`agent:bot`, `task:bot/t1`...).
    name: String,
    period: Period,
    own: u64,
}

#[derive(Debug)]
struct InFlight {
    budget: String,
    items: Vec<Item>,
    sent_nanos: u64,
}

/// Why a sync failed: the `reason` of `agent_budget_fleet_sync_errors`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncError {
    /// The host refused to send the call (unknown cluster?).
    Dispatch,
    /// No reply (reset) or a gateway timeout.
    Timeout,
    /// webdis answered with another non-2xx status (503: Redis unreachable).
    Status,
    /// Redis refused the script.
    Redis,
    /// The reply is not the script's result.
    BadReply,
    /// The totals could not be written to the local ledger.
    Ledger,
}

impl SyncError {
    pub fn reason(self) -> &'static str {
        match self {
            SyncError::Dispatch => "dispatch",
            SyncError::Timeout => "timeout",
            SyncError::Status => "status",
            SyncError::Redis => "redis",
            SyncError::BadReply => "bad_reply",
            SyncError::Ledger => "ledger",
        }
    }
}

/// Per-worker fleet state.
pub struct Fleet {
    settings: FleetConfig,
    /// Tells this worker's lease from the others'.
    lease_token: u64,
    in_flight: RefCell<HashMap<u32, InFlight>>,
    /// Budgets whose totals this worker applied since it started: the load is complete
    /// once every configured budget is in.
    loaded: RefCell<HashSet<String>>,
    loaded_accounts: Cell<u64>,
    loaded_micro_usd: Cell<u64>,
    /// Cached once READY_KEY is seen.
    ready: Cell<bool>,
    /// Failed syncs in a row: the first is logged, and the recovery.
    failing: Cell<u64>,
    /// Alerts raised since the last tick, to claim on the tick (replies reach the root).
    to_claim: RefCell<Vec<(Alert, i64)>>,
    /// Claims awaiting a reply: token → the alert.
    claims: RefCell<HashMap<u32, (Alert, u64)>>,
    /// History syncs awaiting a reply.
    history_calls: RefCell<HashMap<u32, HistoryCall>>,
    /// Per budget, the bucket values Redis acknowledged: only changes are pushed.
    history_pushed: RefCell<HashMap<String, BTreeMap<i64, u64>>>,
    /// Budgets whose whole window of fleet history this worker loaded.
    history_loaded: RefCell<HashSet<String>>,
}

impl Fleet {
    pub fn new(settings: FleetConfig) -> Fleet {
        Fleet {
            settings,
            lease_token: std::collections::hash_map::RandomState::new().hash_one(0u8),
            in_flight: RefCell::new(HashMap::new()),
            loaded: RefCell::new(HashSet::new()),
            loaded_accounts: Cell::new(0),
            loaded_micro_usd: Cell::new(0),
            ready: Cell::new(false),
            failing: Cell::new(0),
            to_claim: RefCell::new(Vec::new()),
            claims: RefCell::new(HashMap::new()),
            history_calls: RefCell::new(HashMap::new()),
            history_pushed: RefCell::new(HashMap::new()),
            history_loaded: RefCell::new(HashSet::new()),
        }
    }

    /// Queues an alert to claim on the next tick; `expire_at` (Unix seconds) is when the
    /// claim may go, because the alert could not come again before.
    pub fn queue_claim(&self, alert: Alert, expire_at: i64) {
        self.to_claim.borrow_mut().push((alert, expire_at));
    }

    /// Sends the queued claims (any worker: the claim's winner delivers from its own
    /// outbox). A claim that cannot be sent is delivered anyway.
    pub fn send_claims(&self, host: &dyn Host, metrics: &Metrics) -> Vec<Claimed> {
        let queued = std::mem::take(&mut *self.to_claim.borrow_mut());
        if queued.is_empty() {
            return Vec::new();
        }
        let field = match host.shared_get(FIELD_KEY) {
            Ok(Some(stored)) => String::from_utf8(stored.value).unwrap_or_default(),
            _ => String::new(),
        };
        let now_nanos = host.now_unix_nanos();
        let mut undecided = Vec::new();
        for (alert, expire_at) in queued {
            if field.is_empty() {
                undecided.push(Claimed::Unknown(alert));
                continue;
            }
            let key = claim_key(&self.settings.key_prefix, &alert);
            let body = format!(
                "EVAL/{}/1/{}/{}/{expire_at}",
                encode(CLAIM_SCRIPT),
                encode(&key),
                encode(&field)
            );
            match self.dispatch(host, &body) {
                Ok(token) => {
                    self.claims.borrow_mut().insert(token, (alert, now_nanos));
                }
                Err(()) => {
                    self.failed(metrics, SyncError::Dispatch);
                    undecided.push(Claimed::Unknown(alert));
                }
            }
        }
        undecided
    }

    /// Claims unanswered for long: delivered anyway.
    fn forget_lost_claims(&self, now_nanos: u64) -> Vec<Claimed> {
        let limit = self.forget_after_nanos();
        let mut lost = Vec::new();
        self.claims.borrow_mut().retain(|_, (alert, sent)| {
            let keep = now_nanos.saturating_sub(*sent) < limit;
            if !keep {
                lost.push(Claimed::Unknown(alert.clone()));
            }
            keep
        });
        lost
    }

    /// Claims given up on this tick (delivered anyway) and the ones sent now that failed.
    pub fn tick_claims(&self, host: &dyn Host, metrics: &Metrics) -> Vec<Claimed> {
        let mut out = self.forget_lost_claims(host.now_unix_nanos());
        out.extend(self.send_claims(host, metrics));
        out
    }

    fn forget_after_nanos(&self) -> u64 {
        u64::from(self.settings.timeout_millis)
            .saturating_mul(1_000_000)
            .saturating_mul(FORGET_AFTER_TIMEOUTS)
    }

    fn dispatch(&self, host: &dyn Host, body: &str) -> Result<u32, ()> {
        let headers = [
            (":method", "POST"),
            (":path", "/"),
            (":authority", self.settings.cluster.as_str()),
            ("content-type", "text/plain"),
            ("user-agent", "agent-budget"),
        ];
        host.dispatch_http(
            &self.settings.cluster,
            &headers,
            body.as_bytes(),
            self.settings.timeout_millis,
        )
        .map_err(|error| {
            log::debug!("fleet: call to {} not sent: {error}", self.settings.cluster);
        })
    }

    pub fn settings(&self) -> &FleetConfig {
        &self.settings
    }

    /// Fixes this Envoy process's field name, unless a previous configure did.
    pub fn prepare(&self, host: &dyn Host, now_nanos: u64) -> Result<(), HostError> {
        if host.shared_get(FIELD_KEY)?.is_none() {
            let id = self.settings.gateway_id.as_deref().unwrap_or("gateway");
            // The random part keeps two processes apart that share a gateway id and a start.
            let field = format!("{id}@{now_nanos:x}-{:08x}", self.lease_token as u32);
            host.shared_set(FIELD_KEY, field.as_bytes(), 0)?;
            log::info!("fleet: this gateway counts its spend in Redis field {field}");
        }
        Ok(())
    }

    /// True once this gateway has loaded the fleet's spend (always true after that, for
    /// the life of the Envoy process).
    pub fn ready(&self, host: &dyn Host) -> bool {
        if self.ready.get() {
            return true;
        }
        let ready = matches!(host.shared_get(READY_KEY), Ok(Some(_)));
        self.ready.set(ready);
        ready
    }

    /// Takes or renews the lease; true if this worker syncs this tick.
    fn lead(&self, host: &dyn Host, now_nanos: u64) -> bool {
        let (cas, held_by_other) = match host.shared_get(LEASE_KEY) {
            Ok(Some(stored)) => {
                let field = |at: usize| {
                    stored
                        .value
                        .get(at..at + 8)
                        .and_then(|b| b.first_chunk::<8>())
                        .map(|b| u64::from_le_bytes(*b))
                        .unwrap_or(0)
                };
                let other = field(0) != self.lease_token && field(8) > now_nanos;
                (stored.cas, other)
            }
            Ok(None) => (0, false),
            Err(_) => return false,
        };
        if held_by_other {
            return false;
        }
        let interval = u64::from(self.settings.sync_millis) * 1_000_000;
        let expires = now_nanos.saturating_add(interval.saturating_mul(LEASE_INTERVALS));
        let mut value = self.lease_token.to_le_bytes().to_vec();
        value.extend_from_slice(&expires.to_le_bytes());
        host.shared_set(LEASE_KEY, &value, cas).is_ok()
    }

    /// The tick's sync: if this worker holds the lease, one call per configured budget
    /// that has none in flight, pushing its accounts in `current` and pulling their totals.
    pub fn sync(&self, host: &dyn Host, metrics: &Metrics, config: &Config, current: &[Period]) {
        let now_nanos = host.now_unix_nanos();
        self.forget_lost(now_nanos);
        if !self.lead(host, now_nanos) {
            return;
        }
        let field = match host.shared_get(FIELD_KEY) {
            Ok(Some(stored)) => String::from_utf8(stored.value).unwrap_or_default(),
            _ => String::new(),
        };
        if field.is_empty() {
            // prepare() failed; it runs again on the next period change or configure.
            self.failed(metrics, SyncError::Ledger);
            return;
        }
        let periods: Vec<&Period> = current.iter().collect();
        let entries = match Ledger::new(host).entries_in(&periods) {
            Ok(entries) => entries,
            Err(error) => {
                log::warn!("fleet: cannot read the local ledger: {error}");
                self.failed(metrics, SyncError::Ledger);
                return;
            }
        };
        let mut by_budget = items_by_budget(config, current, entries);
        let busy = budgets_waiting(&self.in_flight, |f| &f.budget);
        for budget in config.agents.keys().filter(|b| !busy.contains(*b)) {
            let items = by_budget.remove(budget.as_str()).unwrap_or_default();
            for chunk in items.chunks(MAX_ITEMS_PER_CALL) {
                self.send(host, metrics, budget, &field, chunk.to_vec(), now_nanos);
            }
        }
        let busy = budgets_waiting(&self.history_calls, |c| &c.budget);
        for budget in config.agents.keys().filter(|b| !busy.contains(*b)) {
            self.send_history(host, metrics, config, budget, &field, now_nanos);
        }
    }

    /// Pushes the buckets of `budget`'s local history that changed since Redis last
    /// acknowledged them, and pulls the fleet's totals: of the whole window on the first
    /// call, of the last two buckets after that.
    fn send_history(
        &self,
        host: &dyn Host,
        metrics: &Metrics,
        config: &Config,
        budget: &str,
        field: &str,
        now_nanos: u64,
    ) {
        let settings = &config.anomaly;
        let now = i64::try_from(now_nanos / 1_000_000_000).unwrap_or(i64::MAX);
        let oldest = history::oldest_needed(settings, now);
        let own = match history::load(host, &history::key(settings, budget)) {
            Ok(Some(stored)) => stored.history,
            Ok(None) => History::new(now),
            Err(error) => {
                log::warn!("fleet: cannot read the local history: {error}");
                self.failed(metrics, SyncError::Ledger);
                return;
            }
        };
        let pushed = {
            let acknowledged = self.history_pushed.borrow();
            let acknowledged = acknowledged.get(budget);
            own.buckets
                .range(oldest..)
                .filter(|(b, v)| acknowledged.and_then(|a| a.get(*b)) != Some(*v))
                .map(|(b, v)| (*b, *v))
                .collect::<Vec<_>>()
        };
        let from = if self.history_loaded.borrow().contains(budget) {
            history::bucket_of(settings, now) - 1
        } else {
            oldest
        };
        let expire_at = now
            .saturating_add(settings.window_secs)
            .saturating_add(settings.current_secs)
            .saturating_add(settings.bucket_secs);
        let key = history_redis_key(&self.settings.key_prefix, budget, settings.bucket_secs);
        let mut body = format!(
            "EVAL/{}/1/{}/{}/{expire_at}/{}/{from}/{oldest}",
            encode(HISTORY_SCRIPT),
            encode(&key),
            encode(field),
            own.began
        );
        for (bucket, micro_usd) in &pushed {
            body.push_str(&format!("/{bucket}/{micro_usd}"));
        }
        match self.dispatch(host, &body) {
            Ok(token) => {
                self.history_calls.borrow_mut().insert(
                    token,
                    HistoryCall {
                        budget: budget.to_string(),
                        pushed,
                        sent_nanos: now_nanos,
                    },
                );
            }
            Err(()) => self.failed(metrics, SyncError::Dispatch),
        }
    }

    /// Stores the others' share of each pulled bucket in the fleet history of the budget.
    fn on_history_reply(
        &self,
        host: &dyn Host,
        metrics: &Metrics,
        config: &Config,
        call: HistoryCall,
        status: u32,
        body: &[u8],
    ) {
        let reply = read_reply(status, body, parse_history);
        let (began, buckets) = match reply {
            Ok(reply) => reply,
            Err(error) => {
                self.failed(metrics, error);
                return;
            }
        };
        let settings = &config.anomaly;
        let now = host.now_unix_secs();
        let key = history::fleet_key(settings, &call.budget);
        let others: Vec<(i64, u64)> = buckets
            .iter()
            .map(|&(bucket, total, mine)| (bucket, total.saturating_sub(mine)))
            .collect();
        if let Err(error) = history::raise_to(
            host,
            &key,
            began,
            &others,
            history::oldest_needed(settings, now),
        ) {
            log::warn!("fleet: cannot store the fleet history: {error}");
            self.failed(metrics, SyncError::Ledger);
            return;
        }
        let mut acknowledged = self.history_pushed.borrow_mut();
        let acknowledged = acknowledged.entry(call.budget.clone()).or_default();
        acknowledged.extend(call.pushed);
        let oldest = history::oldest_needed(settings, now);
        acknowledged.retain(|b, _| *b >= oldest);
        self.history_loaded.borrow_mut().insert(call.budget.clone());
        self.note_loaded(host, config, None);
    }

    fn send(
        &self,
        host: &dyn Host,
        metrics: &Metrics,
        budget: &str,
        field: &str,
        items: Vec<Item>,
        now_nanos: u64,
    ) {
        let body = command(&self.settings.key_prefix, budget, field, &items);
        match self.dispatch(host, &body) {
            Ok(token) => {
                self.in_flight.borrow_mut().insert(
                    token,
                    InFlight {
                        budget: budget.to_string(),
                        items,
                        sent_nanos: now_nanos,
                    },
                );
            }
            Err(()) => self.failed(metrics, SyncError::Dispatch),
        }
    }

    fn forget_lost(&self, now_nanos: u64) {
        let limit = self.forget_after_nanos();
        self.in_flight
            .borrow_mut()
            .retain(|_, f| now_nanos.saturating_sub(f.sent_nanos) < limit);
        self.history_calls
            .borrow_mut()
            .retain(|_, c| now_nanos.saturating_sub(c.sent_nanos) < limit);
    }

    /// A reply to a dispatch of this worker. `status` 0: no reply (reset).
    pub fn on_reply(
        &self,
        host: &dyn Host,
        metrics: &Metrics,
        config: &Config,
        token: u32,
        status: u32,
        body: &[u8],
    ) -> Reply {
        let claim = self.claims.borrow_mut().remove(&token);
        if let Some((alert, _)) = claim {
            let won = read_reply(status, body, parse_claim);
            return Reply::Claim(match won {
                Ok(true) => Claimed::Won(alert),
                Ok(false) => Claimed::Lost(alert),
                Err(error) => {
                    self.failed(metrics, error);
                    Claimed::Unknown(alert)
                }
            });
        }
        if self.on_sync_reply(host, metrics, config, token, status, body) {
            Reply::Synced
        } else {
            Reply::NotFleet
        }
    }

    /// A reply to a spend sync: false if `token` is not one of this worker's.
    fn on_sync_reply(
        &self,
        host: &dyn Host,
        metrics: &Metrics,
        config: &Config,
        token: u32,
        status: u32,
        body: &[u8],
    ) -> bool {
        let history_call = self.history_calls.borrow_mut().remove(&token);
        if let Some(call) = history_call {
            self.on_history_reply(host, metrics, config, call, status, body);
            return true;
        }
        let Some(call) = self.in_flight.borrow_mut().remove(&token) else {
            return false;
        };
        let totals = read_reply(status, body, |body| parse_reply(body, call.items.len()));
        let totals = match totals {
            Ok(totals) => totals,
            Err(error) => {
                self.failed(metrics, error);
                return true;
            }
        };
        let ledger = Ledger::new(host);
        let first_load = !self.ready.get() && !self.loaded.borrow().contains(&call.budget);
        for (item, (total, mine)) in call.items.iter().zip(totals) {
            if let Err(error) = fold_in(&ledger, item, total, mine) {
                log::warn!(
                    "fleet: cannot store the fleet total of {}: {error}",
                    item.name
                );
                self.failed(metrics, SyncError::Ledger);
                return true;
            }
            if first_load && total > 0 {
                self.loaded_accounts.set(self.loaded_accounts.get() + 1);
                if item.period.kind == crate::period::PeriodKind::Daily {
                    self.loaded_micro_usd
                        .set(self.loaded_micro_usd.get().saturating_add(total));
                }
            }
        }
        let failed = self.failing.replace(0);
        if failed > 0 {
            log::info!("fleet: sync with Redis restored after {failed} failed calls");
        }
        self.note_loaded(host, config, Some(call.budget));
        true
    }

    /// Marks the load complete once every configured budget's totals and history are in.
    fn note_loaded(&self, host: &dyn Host, config: &Config, budget: Option<String>) {
        if self.ready.get() {
            return;
        }
        let mut loaded = self.loaded.borrow_mut();
        loaded.extend(budget);
        let history = self.history_loaded.borrow();
        if !config
            .agents
            .keys()
            .all(|b| loaded.contains(b) && history.contains(b))
        {
            return;
        }
        if self.ready(host) {
            return;
        }
        match host.shared_set(READY_KEY, b"1", 0) {
            Ok(()) => {
                self.ready.set(true);
                log::info!(
                    "fleet: loaded {} accounts from Redis, ${:.6} spent today across the fleet; enforcing",
                    self.loaded_accounts.get(),
                    self.loaded_micro_usd.get() as f64 / 1e6
                );
            }
            Err(error) => log::warn!("fleet: cannot mark the load complete: {error}"),
        }
    }

    fn failed(&self, metrics: &Metrics, error: SyncError) {
        metrics.count(
            Counter::Reason(ReasonCounter::FleetSyncErrors, error.reason()),
            1,
        );
        if self.failing.replace(self.failing.get() + 1) == 0 {
            log::warn!(
                "fleet: sync with Redis failed ({}); enforcing on local spend until it is back",
                error.reason()
            );
        }
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.borrow().len() + self.history_calls.borrow().len()
    }
}

/// The accounts of each configured budget to sync: its agent account in every current
/// period (pulled even when this gateway spent nothing, for the others' spend), and every
/// task and user account this gateway has an entry for.
fn items_by_budget<'c>(
    config: &'c Config,
    current: &[Period],
    entries: Vec<(String, usize, Account)>,
) -> BTreeMap<&'c str, Vec<Item>> {
    let mut by_budget: BTreeMap<&str, Vec<Item>> = BTreeMap::new();
    let mut own: HashMap<(String, usize), u64> = HashMap::new();
    for (name, index, account) in entries {
        own.insert((name, index), account.own);
    }
    for budget in config.agents.keys() {
        let agent = format!("agent:{budget}");
        let mut items: Vec<Item> = current
            .iter()
            .enumerate()
            .map(|(index, period)| Item {
                own: own.get(&(agent.clone(), index)).copied().unwrap_or(0),
                name: agent.clone(),
                period: period.clone(),
            })
            .collect();
        let task = format!("task:{budget}/");
        let user = format!("user:{budget}/");
        for ((name, index), own) in &own {
            if name.starts_with(&task) || name.starts_with(&user) {
                if let Some(period) = current.get(*index) {
                    items.push(Item {
                        name: name.clone(),
                        period: period.clone(),
                        own: *own,
                    });
                }
            }
        }
        // Stable order: the same accounts go in the same call, tick after tick.
        items.sort_by(|a, b| (&a.name, a.period.end).cmp(&(&b.name, b.period.end)));
        by_budget.insert(budget.as_str(), items);
    }
    by_budget
}

/// The Redis key of an account-period.
/// The agent budgets with a call of this kind still awaiting its reply or its timeout: the
/// tick sends them nothing new until then.
fn budgets_waiting<T>(
    calls: &RefCell<HashMap<u32, T>>,
    budget: impl Fn(&T) -> &String,
) -> HashSet<String> {
    calls.borrow().values().map(|c| budget(c).clone()).collect()
}

/// A node id as this gateway's name in Redis when the config names none: characters outside
/// `fleet.gateway_id`'s set become `_`, so an Istio node id such as
/// `sidecar~10.0.0.1~pod.ns~ns.svc.cluster.local` stays recognisable. None if empty.
pub fn gateway_id_from_node(node_id: &str) -> Option<String> {
    let id: String = node_id
        .chars()
        .take(128)
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.:".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    (!id.is_empty()).then_some(id)
}

pub fn redis_key(prefix: &str, budget: &str, name: &str, period: &Period) -> String {
    format!("{prefix}:{{{budget}}}:{name}:{}", period.id)
}

/// The webdis request body: `EVAL/<script>/<n>/<keys...>/<field>/<own>/<expire at>...`,
/// every argument percent-encoded (webdis splits on `/` and reads `.` as a format suffix).
fn command(prefix: &str, budget: &str, field: &str, items: &[Item]) -> String {
    let mut body = format!("EVAL/{}/{}", encode(SCRIPT), items.len());
    for item in items {
        body.push('/');
        body.push_str(&encode(&redis_key(
            prefix,
            budget,
            &item.name,
            &item.period,
        )));
    }
    body.push('/');
    body.push_str(&encode(field));
    for item in items {
        let expire_at = item.period.end.saturating_add(KEY_MARGIN_SECS);
        body.push_str(&format!("/{}/{expire_at}", item.own));
    }
    body
}

fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_' {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The Redis key claiming an alert for the fleet: one per agent, kind, crossed fraction
/// and period (an anomaly: one per agent, see [`claim_expiry`]).
pub fn claim_key(prefix: &str, alert: &Alert) -> String {
    let agent = &alert.agent;
    match alert.kind {
        AlertKind::Anomaly => format!("{prefix}:{{{agent}}}:alert:anomaly"),
        kind => format!(
            "{prefix}:{{{agent}}}:alert:{}:{}:{}",
            kind.name(),
            (alert.threshold * 1e6).round() as u64,
            alert.period_id
        ),
    }
}

/// When an alert's claim may expire (Unix seconds): once its period is long over; for an
/// anomaly, whose episodes know no period, after the burn-rate window, so one episode
/// seen by several gateways is one alert and a new one later alerts again.
pub fn claim_expiry(config: &Config, alert: &Alert) -> i64 {
    match alert.kind {
        AlertKind::Anomaly => alert
            .at_unix_secs
            .saturating_add(config.anomaly.current_secs),
        _ => alert.period_end_unix_secs.saturating_add(KEY_MARGIN_SECS),
    }
}

/// The Redis hash of a budget's spend history (the bucket length is part of it, as in the
/// local key).
pub fn history_redis_key(prefix: &str, budget: &str, bucket_secs: i64) -> String {
    format!("{prefix}:{{{budget}}}:history:{bucket_secs}")
}

/// A history reply: the fleet history's start, and (bucket, total, this gateway's) per bucket.
type HistoryReply = (i64, Vec<(i64, u64, u64)>);

/// `{"EVAL": [began, bucket, total, mine, ...]}`.
/// A webdis reply read by `parse` when it succeeded; status 0 (no reply) or 504 is a timeout,
/// any other non-2xx a bad status.
fn read_reply<T>(
    status: u32,
    body: &[u8],
    parse: impl FnOnce(&[u8]) -> Result<T, SyncError>,
) -> Result<T, SyncError> {
    match status {
        200..=299 => parse(body),
        0 | 504 => Err(SyncError::Timeout),
        _ => Err(SyncError::Status),
    }
}

fn parse_history(body: &[u8]) -> Result<HistoryReply, SyncError> {
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|_| SyncError::BadReply)?;
    let list = value
        .get("EVAL")
        .and_then(|v| v.as_array())
        .ok_or(SyncError::BadReply)?;
    if list.first().and_then(|v| v.as_bool()) == Some(false) {
        return Err(SyncError::Redis);
    }
    let (began, rest) = list.split_first().ok_or(SyncError::BadReply)?;
    let began = began.as_i64().ok_or(SyncError::BadReply)?;
    if rest.len() % 3 != 0 {
        return Err(SyncError::BadReply);
    }
    rest.chunks_exact(3)
        .map(|triple| match triple {
            [bucket, total, mine] => bucket
                .as_i64()
                .zip(total.as_u64())
                .zip(mine.as_u64())
                .map(|((b, t), m)| (b, t, m))
                .ok_or(SyncError::BadReply),
            _ => Err(SyncError::BadReply),
        })
        .collect::<Result<Vec<_>, _>>()
        .map(|buckets| (began, buckets))
}

/// `{"EVAL": 1}`: won, `{"EVAL": 0}`: lost.
fn parse_claim(body: &[u8]) -> Result<bool, SyncError> {
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|_| SyncError::BadReply)?;
    let reply = value.get("EVAL").ok_or(SyncError::BadReply)?;
    if reply
        .as_array()
        .and_then(|l| l.first())
        .and_then(|v| v.as_bool())
        == Some(false)
    {
        return Err(SyncError::Redis);
    }
    match reply.as_u64() {
        Some(1) => Ok(true),
        Some(0) => Ok(false),
        _ => Err(SyncError::BadReply),
    }
}

/// `{"EVAL": [total, mine, ...]}` with one pair per item.
fn parse_reply(body: &[u8], items: usize) -> Result<Vec<(u64, u64)>, SyncError> {
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|_| SyncError::BadReply)?;
    let list = value
        .get("EVAL")
        .and_then(|v| v.as_array())
        .ok_or(SyncError::BadReply)?;
    // webdis reports a Redis error as [false, "ERR ..."].
    if list.first().and_then(|v| v.as_bool()) == Some(false) {
        return Err(SyncError::Redis);
    }
    let numbers: Option<Vec<u64>> = list.iter().map(|v| v.as_u64()).collect();
    let numbers = numbers.ok_or(SyncError::BadReply)?;
    if numbers.len() != items * 2 {
        return Err(SyncError::BadReply);
    }
    Ok(numbers
        .chunks_exact(2)
        .filter_map(|pair| pair.first().copied().zip(pair.get(1).copied()))
        .collect())
}

/// Folds a pulled total into the local entry: the others' spend is the total less this
/// gateway's field, and only ever grows (a reply older than one already applied, or a
/// Redis that lost data, must not lower what this gateway enforces on).
fn fold_in(ledger: &Ledger, item: &Item, total: u64, mine: u64) -> Result<(), LedgerError> {
    let others = total.saturating_sub(mine);
    ledger.update_named(&item.name, &[&item.period], None, |before| {
        let a = before.first().copied().unwrap_or_default();
        let spent = a.spent.max(a.own.saturating_add(others));
        (spent != a.spent).then(|| vec![Account { spent, ..a }])
    })?;
    Ok(())
}

#[cfg(test)]
mod tests;

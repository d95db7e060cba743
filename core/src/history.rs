//! Per-agent spend history in time buckets, kept in the host's shared store so every worker
//! (and the status page) sees one history, and the rates drawn from it: the burn rate, the
//! baseline and the projected end-of-period spend.
//!
//! ## Where the figures come from
//! A call's cost is added, on the hot path, to the worker's in-memory [`Accumulator`] only
//! (no host call). On each tick the worker merges what it accumulated into the agent's
//! shared key with a bounded CAS loop; a merge that loses every attempt keeps its deltas for
//! the next tick, so none is lost. Each agent has one key,
//! `agent_budget/history/v1/{bucket_secs}/{agent}`, created at configure time (on the main
//! thread, before workers charge anything) because Envoy ignores the cas of a write to a key
//! that does not exist yet: a first write racing another would lose an increment. The bucket
//! length is part of the key, so a reload with another bucket starts a history of its own
//! instead of misreading the old one (and a draining plugin with the old one does not fight
//! over it).
//!
//! ## Rates
//! - **Burn rate**: spend over the last `current` seconds, per hour. The bucket in progress
//!   counts whole and the oldest bucket of the window counts for the part of it still inside
//!   the window, so a steady spend gives a steady rate across bucket boundaries.
//! - **Baseline**: the mean hourly spend of the buckets of the `window` before the current
//!   one in which the agent spent anything. A mean of the active buckets, not of all of
//!   them, so an agent that works office hours is compared with its working hours and not
//!   with a day average diluted by idle nights; not a median, which is zero for any agent
//!   idle more than half the time. A past spike raises the mean, which can only hide an
//!   alert, never raise a false one. No baseline (so no anomaly alert) until the history is
//!   `min_history` old, or while the window holds no spend.
//! - **Projection**: spend so far in the period plus the burn rate until the period ends.
//!
//! ## Encoding
//! `H1`, the time the history began (i64 LE), the start of the current anomaly episode (i64
//! LE, 0 for none), then per bucket holding spend, ascending: the bucket number's distance
//! from the previous one and the micro-USD, both LEB128 varints (a few bytes per bucket).

use crate::config::{AnomalyConfig, Config};
use crate::host::{Host, HostError, Versioned};
use crate::ledger::LedgerError;
use crate::period::Period;
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};

const KEY_PREFIX: &str = "agent_budget/history/v1";
const MAGIC: &[u8; 2] = b"H1";
/// CAS attempts per key and tick before the deltas wait for the next tick.
pub const MERGE_ATTEMPTS: u32 = 8;
const SECS_PER_HOUR: u128 = 3_600;

/// An agent's rates at one moment, in micro-USD per hour.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rates {
    pub burn_micro_usd_per_hour: u64,
    /// `None` while the history is shorter than `min_history` or the window holds no spend.
    pub baseline_micro_usd_per_hour: Option<u64>,
}

/// One agent's history as stored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct History {
    /// Unix seconds at which the history began (the key was created).
    pub began: i64,
    /// Start of the anomaly episode in progress (Unix seconds), 0 for none.
    pub episode_since: i64,
    /// Bucket number (Unix seconds / bucket length) → micro-USD spent in it.
    pub buckets: BTreeMap<i64, u64>,
}

impl History {
    pub fn new(began: i64) -> History {
        History {
            began,
            ..History::default()
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(18 + self.buckets.len() * 4);
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&self.began.to_le_bytes());
        bytes.extend_from_slice(&self.episode_since.to_le_bytes());
        let mut previous = 0i64;
        for (&bucket, &micro_usd) in &self.buckets {
            // Buckets before 1970 cannot be written: skip rather than wrap.
            let Ok(gap) = u64::try_from(bucket - previous) else {
                continue;
            };
            put_varint(&mut bytes, gap);
            put_varint(&mut bytes, micro_usd);
            previous = bucket;
        }
        bytes
    }

    /// `None` if the bytes are not a whole history.
    pub fn decode(bytes: &[u8]) -> Option<History> {
        let rest = bytes.strip_prefix(MAGIC)?;
        let began = i64::from_le_bytes(*rest.first_chunk::<8>()?);
        let rest = rest.get(8..)?;
        let episode_since = i64::from_le_bytes(*rest.first_chunk::<8>()?);
        let mut rest = rest.get(8..)?;
        let mut buckets = BTreeMap::new();
        let mut bucket = 0i64;
        while !rest.is_empty() {
            let gap = take_varint(&mut rest)?;
            let micro_usd = take_varint(&mut rest)?;
            bucket = bucket.checked_add(i64::try_from(gap).ok()?)?;
            buckets.insert(bucket, micro_usd);
        }
        Some(History {
            began,
            episode_since,
            buckets,
        })
    }

    /// Adds `micro_usd` to `bucket`.
    pub fn add(&mut self, bucket: i64, micro_usd: u64) {
        let slot = self.buckets.entry(bucket).or_insert(0);
        *slot = slot.saturating_add(micro_usd);
    }

    /// Drops buckets before `oldest`.
    pub fn prune(&mut self, oldest: i64) {
        self.buckets = self.buckets.split_off(&oldest);
    }

    fn spent_in(&self, bucket: i64) -> u64 {
        self.buckets.get(&bucket).copied().unwrap_or(0)
    }
}

fn put_varint(bytes: &mut Vec<u8>, mut value: u64) {
    loop {
        let low = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            bytes.push(low);
            return;
        }
        bytes.push(low | 0x80);
    }
}

fn take_varint(rest: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, tail) = rest.split_first()?;
        *rest = tail;
        value |= u64::from(byte & 0x7f).checked_shl(shift)?;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// The shared-data key of an agent's history.
pub fn key(settings: &AnomalyConfig, budget: &str) -> String {
    format!("{KEY_PREFIX}/{}/{budget}", settings.bucket_secs)
}

/// The shared-data key of the rest of the fleet's history of an agent (fleet mode): per
/// bucket, the spend of the other gateways as Redis last reported it.
pub fn fleet_key(settings: &AnomalyConfig, budget: &str) -> String {
    format!("{}/fleet", key(settings, budget))
}

/// Raises the buckets of the history at `key` to `values` (never lowers one: an older reply
/// must not undo a newer one), its start to `began` if earlier, and drops buckets before
/// `oldest`, in a bounded CAS loop.
pub fn raise_to(
    host: &dyn Host,
    key: &str,
    began: i64,
    values: &[(i64, u64)],
    oldest: i64,
) -> Result<(), LedgerError> {
    update(host, key, began, oldest, |history| {
        history.began = history.began.min(began);
        for &(bucket, micro_usd) in values {
            let slot = history.buckets.entry(bucket).or_insert(0);
            *slot = (*slot).max(micro_usd);
        }
    })
    .map(|_created| ())
}

/// The history the rates read: this gateway's, plus in fleet mode the other gateways'
/// spend per bucket and the fleet history's earlier start.
pub fn with_fleet(host: &dyn Host, config: &Config, budget: &str, own: &History) -> History {
    let mut history = own.clone();
    if config.fleet.is_none() {
        return history;
    }
    if let Ok(Some(fleet)) = load(host, &fleet_key(&config.anomaly, budget)) {
        history.began = history.began.min(fleet.history.began);
        for (bucket, micro_usd) in fleet.history.buckets {
            history.add(bucket, micro_usd);
        }
    }
    history
}

/// The bucket holding `unix_secs`.
pub fn bucket_of(settings: &AnomalyConfig, unix_secs: i64) -> i64 {
    unix_secs.div_euclid(settings.bucket_secs)
}

/// The oldest bucket the rates at `now` still read: the window before the current one.
pub fn oldest_needed(settings: &AnomalyConfig, now: i64) -> i64 {
    let span = (settings.window_secs + settings.current_secs) / settings.bucket_secs;
    bucket_of(settings, now) - span
}

/// A history read with its version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub history: History,
    pub cas: u32,
}

/// Reads an agent's history; `Ok(None)` if it has none.
pub fn load(host: &dyn Host, key: &str) -> Result<Option<Stored>, LedgerError> {
    let found = host.shared_get(key).map_err(|error| LedgerError::Host {
        key: key.to_string(),
        error,
    })?;
    let Some(Versioned { value, cas }) = found else {
        return Ok(None);
    };
    let history = History::decode(&value).ok_or_else(|| LedgerError::Corrupt {
        key: key.to_string(),
    })?;
    Ok(Some(Stored { history, cas }))
}

fn store(host: &dyn Host, key: &str, history: &History, cas: u32) -> Result<(), LedgerError> {
    host.shared_set(key, &history.encode(), cas)
        .map_err(|error| LedgerError::Host {
            key: key.to_string(),
            error,
        })
}

/// Creates the missing history keys of the configured agents, each begun at `now`. Safe to
/// race at configure time: nobody merges into a key before it exists, and an empty history
/// over an empty one loses nothing. Returns how many keys this call created.
pub fn ensure(host: &dyn Host, config: &Config, now: i64) -> Result<u32, LedgerError> {
    let mut created = 0;
    for budget in config.agents.keys() {
        let key = key(&config.anomaly, budget);
        if load(host, &key)?.is_none() {
            store(host, &key, &History::new(now), 0)?;
            created += 1;
        }
    }
    Ok(created)
}

/// Adds `deltas` (bucket, micro-USD) to the history at `key` and drops buckets before
/// `oldest`, in a bounded CAS loop. A missing key is created on the spot with the deltas
/// (an unchecked write), reported as [`LedgerError::LateCreate`] after the write, so the
/// caller counts it but does not keep the deltas. Any other error means nothing was written.
pub fn merge(
    host: &dyn Host,
    key: &str,
    deltas: &[(i64, u64)],
    oldest: i64,
    now: i64,
) -> Result<(), LedgerError> {
    let created = update(host, key, now, oldest, |history| {
        for &(bucket, micro_usd) in deltas {
            if bucket >= oldest {
                history.add(bucket, micro_usd);
            }
        }
    })?;
    if created {
        return Err(LedgerError::LateCreate {
            key: key.to_string(),
        });
    }
    Ok(())
}

/// Applies `edit` to the history at `key` (a new one begun at `began` if there is none) and
/// drops buckets before `oldest`, in a bounded CAS loop. `Ok(true)` if the write created the
/// key (an unchecked write: shared data takes a missing key whatever the cas).
fn update(
    host: &dyn Host,
    key: &str,
    began: i64,
    oldest: i64,
    edit: impl Fn(&mut History),
) -> Result<bool, LedgerError> {
    for _ in 0..MERGE_ATTEMPTS {
        let (mut history, cas) = match load(host, key)? {
            Some(Stored { history, cas }) => (history, cas),
            None => (History::new(began), 0),
        };
        edit(&mut history);
        history.prune(oldest);
        match store(host, key, &history, cas) {
            Ok(()) => return Ok(cas == 0),
            Err(LedgerError::Host {
                error: HostError::CasMismatch,
                ..
            }) => continue,
            Err(other) => return Err(other),
        }
    }
    Err(LedgerError::Contended {
        key: key.to_string(),
    })
}

/// Writes `history` (as read at `cas`) with the anomaly episode set to `since` (0: ended).
/// `Ok(true)` if this write won, `Ok(false)` if another writer got there first.
pub fn set_episode(
    host: &dyn Host,
    key: &str,
    stored: &Stored,
    since: i64,
) -> Result<bool, LedgerError> {
    let mut history = stored.history.clone();
    history.episode_since = since;
    match store(host, key, &history, stored.cas) {
        Ok(()) => Ok(true),
        Err(LedgerError::Host {
            error: HostError::CasMismatch,
            ..
        }) => Ok(false),
        Err(other) => Err(other),
    }
}

/// The rates of `budget_name` at `now` from the shared history (what the workers merged by
/// their last tick); zero burn and no baseline for an agent without history.
pub fn rates(
    host: &dyn Host,
    config: &Config,
    budget_name: &str,
    now: i64,
) -> Result<Rates, LedgerError> {
    let settings = &config.anomaly;
    Ok(match load(host, &key(settings, budget_name))? {
        Some(stored) => rates_of(
            &with_fleet(host, config, budget_name, &stored.history),
            settings,
            now,
        ),
        None => Rates::default(),
    })
}

/// The rates a history gives at `now` (see the module doc).
pub fn rates_of(history: &History, settings: &AnomalyConfig, now: i64) -> Rates {
    let bucket_secs = settings.bucket_secs;
    let in_progress = bucket_of(settings, now);
    let current_buckets = settings.current_secs / bucket_secs;
    let oldest_current = in_progress - current_buckets;
    let elapsed = now - in_progress * bucket_secs;

    // The oldest bucket counts for the part of it still inside the window.
    let mut current_spend: u128 = history
        .buckets
        .range(oldest_current + 1..=in_progress)
        .map(|(_, &micro_usd)| u128::from(micro_usd))
        .sum();
    let still_inside = u128::try_from(bucket_secs - elapsed).unwrap_or(0);
    current_spend += u128::from(history.spent_in(oldest_current)) * still_inside
        / u128::from(bucket_secs.unsigned_abs());
    let burn = current_spend * SECS_PER_HOUR / u128::from(settings.current_secs.unsigned_abs());

    let baseline = if now.saturating_sub(history.began) < settings.min_history_secs {
        None
    } else {
        let window_buckets = settings.window_secs / bucket_secs;
        let first = (oldest_current - window_buckets).max(bucket_of(settings, history.began));
        let (active, total) = history
            .buckets
            .range(first..oldest_current)
            .filter(|(_, &micro_usd)| micro_usd > 0)
            .fold((0u128, 0u128), |(count, sum), (_, &micro_usd)| {
                (count + 1, sum + u128::from(micro_usd))
            });
        (active > 0).then(|| {
            let per_hour =
                total * SECS_PER_HOUR / (active * u128::from(bucket_secs.unsigned_abs()));
            saturate(per_hour)
        })
    };
    Rates {
        burn_micro_usd_per_hour: saturate(burn),
        baseline_micro_usd_per_hour: baseline,
    }
}

/// Spend at the end of `period` if the agent keeps burning `burn_per_hour` from `now`.
pub fn projected_micro_usd(spent: u64, burn_per_hour: u64, now: i64, period: &Period) -> u64 {
    let left_secs = u128::try_from(period.end.saturating_sub(now)).unwrap_or(0);
    let more = u128::from(burn_per_hour) * left_secs / SECS_PER_HOUR;
    saturate(u128::from(spent) + more)
}

fn saturate(value: u128) -> u64 {
    u64::try_from(value).unwrap_or(u64::MAX)
}

/// Spend this worker charged since its last merge, per agent budget and bucket: the hot
/// path adds here (no host call), the tick merges it into the shared history. Keyed by the
/// budget's name, so it does not depend on how metrics label agents.
#[derive(Debug, Default)]
pub struct Accumulator {
    deltas: RefCell<HashMap<String, BTreeMap<i64, u64>>>,
}

impl Accumulator {
    pub fn add(&self, budget: &str, bucket: i64, micro_usd: u64) {
        if micro_usd == 0 {
            return;
        }
        let mut deltas = self.deltas.borrow_mut();
        // Allocates the name once per agent between merges, not per call.
        let buckets = match deltas.get_mut(budget) {
            Some(buckets) => buckets,
            None => deltas.entry(budget.to_string()).or_default(),
        };
        let slot = buckets.entry(bucket).or_insert(0);
        *slot = slot.saturating_add(micro_usd);
    }

    pub fn is_empty(&self) -> bool {
        self.deltas.borrow().is_empty()
    }

    /// Everything accumulated, per budget, leaving the accumulator empty.
    pub fn take(&self) -> Vec<(String, Vec<(i64, u64)>)> {
        let mut taken: Vec<(String, Vec<(i64, u64)>)> =
            std::mem::take(&mut *self.deltas.borrow_mut())
                .into_iter()
                .map(|(budget, buckets)| (budget, buckets.into_iter().collect()))
                .collect();
        taken.sort();
        taken
    }

    /// Puts back deltas a merge could not write, for the next tick.
    pub fn restore(&self, budget: &str, deltas: &[(i64, u64)]) {
        for &(bucket, micro_usd) in deltas {
            self.add(budget, bucket, micro_usd);
        }
    }
}

#[cfg(test)]
mod tests;

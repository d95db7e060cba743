//! Spend counters in the host's shared store (proxy-wasm shared data), shared by every worker
//! of one Envoy.
//!
//! ## Why fixed shard keys, with every period of an account in one entry set
//! Envoy's `set_shared_data` ignores the cas when the key does not exist yet, so two workers
//! that both find a key missing both "create" it and one increment is lost. Counters
//! therefore never live in keys that the hot path creates: the ledger is a fixed set of
//! [`SHARDS`] keys, `agent_budget/v2/{shard}`, created empty at configure time (on the main
//! thread, before workers exist). An account is a set of entries inside the shard blob its
//! name hashes to, one entry per period (a day, a month), updated with bounded CAS loops on
//! a key that already exists, so every update is checked. Because an agent's daily and
//! monthly entries sit in the same blob, one read and one write move both: a call's
//! reservation and its settlement are one CAS each, not one per period. A write also drops
//! the entries of periods before the previous one of the kinds it writes, so the store stays
//! bounded without a sweep on the hot path. If the hot path ever finds a shard missing
//! (another plugin deleted it), it creates it and reports it, since that write is unchecked.

use crate::host::{Host, HostError, Versioned};
use crate::period::{Period, PeriodKind};
use std::fmt;

/// Shard keys: spreads CAS contention between accounts.
pub const SHARDS: u32 = 32;
/// CAS attempts before an update gives up (the caller keeps the charge and retries later).
pub const MAX_CAS_ATTEMPTS: u32 = 64;
const KEY_PREFIX: &str = "agent_budget/v2";
const BLOB_MAGIC: &[u8; 2] = b"L3";
/// The entry format before `own` (spent and reserved only): read, and rewritten as L3.
const BLOB_MAGIC_V2: &[u8; 2] = b"L2";
/// spent (8) + reserved (8) + own (8).
const COUNTER_BYTES: usize = 24;
/// kind (1) + period end (8) + name length (1) + counters.
const ENTRY_FIXED_BYTES: usize = 1 + 8 + 1 + COUNTER_BYTES;

/// One account's counters within a period, in micro-USD.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Account {
    /// Spend that counts against the account: this gateway's own plus, in fleet mode, the
    /// other gateways' as last pulled (see `fleet`).
    pub spent: u64,
    pub reserved: u64,
    /// This gateway's own share of `spent`: what fleet mode pushes. Equal to `spent` in
    /// embedded mode.
    pub own: u64,
}

impl Account {
    /// The account after this gateway charged `micro_usd` to it.
    pub fn charged(self, micro_usd: u64) -> Account {
        Account {
            spent: self.spent.saturating_add(micro_usd),
            own: self.own.saturating_add(micro_usd),
            ..self
        }
    }
}

/// Who or what a ledger account counts for. The only way to name an account, so every
/// module spells the same account the same way.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AccountKey {
    /// An agent budget's spend.
    Agent(String),
    /// A task's spend under an agent budget (for `task_daily_usd`).
    Task { budget: String, task: String },
    /// A user's spend under an agent budget (for `user_daily_usd`).
    User { budget: String, user: String },
    /// `alert` action: spend past the budget.
    Overage(String),
    /// Set once the alert of `level` at `mark` micro-USD was raised for the budget.
    Alerted {
        budget: String,
        level: &'static str,
        mark: u64,
    },
}

impl AccountKey {
    /// The entry name in the shard blob (and what the shard is hashed from).
    pub fn name(&self) -> String {
        match self {
            AccountKey::Agent(budget) => format!("agent:{budget}"),
            AccountKey::Task { budget, task } => format!("task:{budget}/{task}"),
            AccountKey::User { budget, user } => format!("user:{budget}/{user}"),
            AccountKey::Overage(budget) => format!("overage:{budget}"),
            AccountKey::Alerted {
                budget,
                level,
                mark,
            } => format!("alerted:{budget}:{level}:{mark}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LedgerError {
    /// Every CAS attempt lost to another writer.
    Contended {
        key: String,
    },
    /// The stored value is not a ledger blob (another plugin wrote the key?).
    Corrupt {
        key: String,
    },
    Host {
        key: String,
        error: HostError,
    },
    /// Account names are at most 255 bytes.
    NameTooLong,
    /// A shard was missing and created on the hot path (an unchecked write).
    LateCreate {
        key: String,
    },
}

impl LedgerError {
    /// The `reason` label of the ledger-error counter.
    pub fn reason(&self) -> &'static str {
        match self {
            LedgerError::Contended { .. } => "contended",
            LedgerError::Corrupt { .. } => "corrupt",
            LedgerError::Host { .. } => "host",
            LedgerError::NameTooLong => "name_too_long",
            LedgerError::LateCreate { .. } => "late_create",
        }
    }
}

impl fmt::Display for LedgerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LedgerError::Contended { key } => {
                write!(
                    f,
                    "{key}: still contended after {MAX_CAS_ATTEMPTS} CAS attempts"
                )
            }
            LedgerError::Corrupt { key } => write!(f, "{key}: stored value is not a ledger blob"),
            LedgerError::Host { key, error } => write!(f, "{key}: {error}"),
            LedgerError::NameTooLong => f.write_str("account name longer than 255 bytes"),
            LedgerError::LateCreate { key } => {
                write!(f, "{key} was missing and created on the hot path")
            }
        }
    }
}

/// An account's shard as read at one moment: the state to decide on, and the version a
/// later write can be checked against without reading it again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    name: String,
    blob: Blob,
    /// 0 when the shard did not exist.
    cas: u32,
}

impl Snapshot {
    /// The account in `period` as of this snapshot.
    pub fn account(&self, period: &Period) -> Account {
        self.blob.get(&self.name, period)
    }
}

/// The result of an update: the account in each period before and after it, and whether
/// the shard had to be created on the spot (an unchecked write: see the module doc).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Updated {
    pub before: Vec<Account>,
    pub after: Vec<Account>,
    pub created_shard: bool,
}

pub struct Ledger<'h> {
    host: &'h dyn Host,
}

impl<'h> Ledger<'h> {
    pub fn new(host: &'h dyn Host) -> Ledger<'h> {
        Ledger { host }
    }

    pub fn shard_key(shard: u32) -> String {
        format!("{KEY_PREFIX}/{shard:02}")
    }

    fn key_for(name: &str) -> String {
        Ledger::shard_key(shard_of(name))
    }

    /// Creates the missing shard keys, empty. Safe to race: nobody adds to a shard before it
    /// exists, and empty over empty loses nothing. Returns how many keys this call created.
    pub fn ensure_shards(&self) -> Result<u32, LedgerError> {
        let mut created = 0;
        for shard in 0..SHARDS {
            let key = Ledger::shard_key(shard);
            if self.get(&key)?.is_none() {
                self.set(&key, BLOB_MAGIC, 0)?;
                created += 1;
            }
        }
        Ok(created)
    }

    /// Drops entries of periods before the previous one of `current`'s kinds from every
    /// shard: keeps shared data bounded for accounts that are no longer written.
    pub fn prune(&self, current: &[Period]) -> Result<(), LedgerError> {
        for shard in 0..SHARDS {
            let key = Ledger::shard_key(shard);
            let Some(stored) = self.get(&key)? else {
                continue;
            };
            let mut blob =
                Blob::decode(stored.value).ok_or(LedgerError::Corrupt { key: key.clone() })?;
            let current: Vec<&Period> = current.iter().collect();
            if blob.prune(&current) {
                // A lost race only means the next prune retries it.
                let _ = self.set(&key, &blob.bytes, stored.cas);
            }
        }
        Ok(())
    }

    /// Every entry of `periods` in every shard, as (name, index into `periods`, account):
    /// what fleet mode pushes. Reads each shard once.
    pub fn entries_in(
        &self,
        periods: &[&Period],
    ) -> Result<Vec<(String, usize, Account)>, LedgerError> {
        let mut found = Vec::new();
        for shard in 0..SHARDS {
            let key = Ledger::shard_key(shard);
            let Some(stored) = self.get(&key)? else {
                continue;
            };
            let blob = Blob::decode(stored.value).ok_or(LedgerError::Corrupt { key })?;
            for slot in blob.slots() {
                let Some(index) = periods
                    .iter()
                    .position(|p| kind_byte(p.kind) == slot.kind && p.end == slot.end)
                else {
                    continue;
                };
                let name = blob
                    .bytes
                    .get(slot.name.0..slot.name.1)
                    .and_then(|n| std::str::from_utf8(n).ok())
                    .unwrap_or_default();
                let account = Account {
                    spent: blob.read_u64(slot.counters),
                    reserved: blob.read_u64(slot.counters + 8),
                    own: blob.read_u64(slot.counters + 16),
                };
                found.push((name.to_string(), index, account));
            }
        }
        Ok(found)
    }

    /// Reads the account's shard once.
    pub fn snapshot(&self, account: &AccountKey) -> Result<Snapshot, LedgerError> {
        self.snapshot_named(account.name())
    }

    /// [`Ledger::snapshot`] for an account whose name the caller already built.
    pub fn snapshot_named(&self, name: String) -> Result<Snapshot, LedgerError> {
        let key = Ledger::key_for(&name);
        self.load(&key, name)
    }

    fn load(&self, key: &str, name: String) -> Result<Snapshot, LedgerError> {
        match self.get(key)? {
            None => Ok(Snapshot {
                name,
                blob: Blob::default(),
                cas: 0,
            }),
            Some(stored) => {
                let blob = Blob::decode(stored.value).ok_or_else(|| LedgerError::Corrupt {
                    key: key.to_string(),
                })?;
                Ok(Snapshot {
                    name,
                    blob,
                    cas: stored.cas,
                })
            }
        }
    }

    pub fn read(&self, period: &Period, account: &AccountKey) -> Result<Account, LedgerError> {
        Ok(self.snapshot(account)?.account(period))
    }

    /// Applies `change` to the account's entries in `periods` atomically (bounded CAS loop).
    /// `change` sees the entries in the order of `periods` and may refuse (None) after seeing
    /// them: `Ok(None)` means it refused and nothing was written. `start`, a snapshot read
    /// earlier, saves the first read; a stale one costs one CAS miss and a fresh read.
    pub fn update_periods(
        &self,
        account: &AccountKey,
        periods: &[&Period],
        start: Option<Snapshot>,
        change: impl Fn(&[Account]) -> Option<Vec<Account>>,
    ) -> Result<Option<Updated>, LedgerError> {
        self.update_named(&account.name(), periods, start, change)
    }

    /// [`Ledger::update_periods`] for an account whose name the caller already built.
    pub fn update_named(
        &self,
        name: &str,
        periods: &[&Period],
        start: Option<Snapshot>,
        change: impl Fn(&[Account]) -> Option<Vec<Account>>,
    ) -> Result<Option<Updated>, LedgerError> {
        if name.len() > usize::from(u8::MAX) {
            return Err(LedgerError::NameTooLong);
        }
        let key = Ledger::key_for(name);
        let mut next = start;
        for _ in 0..MAX_CAS_ATTEMPTS {
            let snapshot = match next.take() {
                Some(snapshot) => snapshot,
                None => self.load(&key, name.to_string())?,
            };
            let before: Vec<Account> = periods.iter().map(|p| snapshot.account(p)).collect();
            let Some(after) = change(&before) else {
                return Ok(None);
            };
            let Snapshot { mut blob, cas, .. } = snapshot;
            for (period, account) in periods.iter().zip(&after) {
                blob.put(name, period, *account);
            }
            blob.prune(periods);
            match self.set(&key, &blob.bytes, cas) {
                Ok(()) => {
                    return Ok(Some(Updated {
                        before,
                        after,
                        created_shard: cas == 0,
                    }));
                }
                Err(LedgerError::Host {
                    error: HostError::CasMismatch,
                    ..
                }) => continue,
                Err(other) => return Err(other),
            }
        }
        Err(LedgerError::Contended { key })
    }

    /// [`Ledger::update_periods`] for one period.
    pub fn try_update(
        &self,
        period: &Period,
        account: &AccountKey,
        change: impl Fn(Account) -> Option<Account>,
    ) -> Result<Option<Updated>, LedgerError> {
        self.update_periods(account, &[period], None, |before| {
            let first = before.first().copied().unwrap_or_default();
            change(first).map(|after| vec![after])
        })
    }

    /// Applies a change that never refuses to one period.
    pub fn update(
        &self,
        period: &Period,
        account: &AccountKey,
        change: impl Fn(Account) -> Account,
    ) -> Result<Updated, LedgerError> {
        self.try_update(period, account, |a| Some(change(a)))?
            .ok_or_else(|| LedgerError::Contended {
                key: Ledger::key_for(&account.name()),
            })
    }

    /// Adds `micro_usd` to the account's spend in `period`.
    pub fn add_spend(
        &self,
        period: &Period,
        account: &AccountKey,
        micro_usd: u64,
    ) -> Result<Updated, LedgerError> {
        self.update(period, account, |a| a.charged(micro_usd))
    }

    fn get(&self, key: &str) -> Result<Option<Versioned>, LedgerError> {
        self.host
            .shared_get(key)
            .map_err(|error| LedgerError::Host {
                key: key.to_string(),
                error,
            })
    }

    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), LedgerError> {
        self.host
            .shared_set(key, value, cas)
            .map_err(|error| LedgerError::Host {
                key: key.to_string(),
                error,
            })
    }
}

/// FNV-1a: stable across workers and builds (std's hasher is randomly seeded).
pub fn shard_of(name: &str) -> u32 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in name.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (hash % u64::from(SHARDS)) as u32
}

fn kind_byte(kind: PeriodKind) -> u8 {
    match kind {
        PeriodKind::Daily => b'd',
        PeriodKind::Monthly => b'm',
    }
}

/// A shard's entries, kept in their stored form and edited in place: `L3` then, per entry,
/// kind (`d`/`m`), period end (i64), name length (u8), name, spent, reserved and own (u64),
/// all little-endian. A period is named by its kind and its end, which is unique per kind.
/// Reading and updating an entry allocate nothing; the bytes are what is written back.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Blob {
    bytes: Vec<u8>,
}

impl Default for Blob {
    fn default() -> Blob {
        Blob {
            bytes: BLOB_MAGIC.to_vec(),
        }
    }
}

/// Where one entry sits in a blob.
#[derive(Debug, Clone, Copy)]
struct Slot {
    kind: u8,
    end: i64,
    name: (usize, usize),
    /// Offset of `spent`; `reserved` and `own` follow.
    counters: usize,
    /// Offset just past the entry.
    next: usize,
}

impl Blob {
    /// Takes a stored value after checking every entry is whole and names are UTF-8.
    fn decode(bytes: Vec<u8>) -> Option<Blob> {
        let blob = if bytes.starts_with(BLOB_MAGIC_V2) {
            Blob::upgrade_v2(&bytes)?
        } else {
            Blob { bytes }
        };
        blob.bytes.starts_with(BLOB_MAGIC).then_some(())?;
        let mut at = BLOB_MAGIC.len();
        while at < blob.bytes.len() {
            let slot = blob.slot(at)?;
            std::str::from_utf8(blob.bytes.get(slot.name.0..slot.name.1)?).ok()?;
            at = slot.next;
        }
        Some(blob)
    }

    /// An L2 blob (left by the previous release in this Envoy's shared data) as L3: what
    /// was spent here is this gateway's own.
    fn upgrade_v2(bytes: &[u8]) -> Option<Blob> {
        let mut upgraded = BLOB_MAGIC.to_vec();
        let mut at = BLOB_MAGIC_V2.len();
        while at < bytes.len() {
            let name_len = usize::from(*bytes.get(at + 9)?);
            let counters = at + 10 + name_len;
            upgraded.extend_from_slice(bytes.get(at..counters + 16)?);
            upgraded.extend_from_slice(bytes.get(counters..counters + 8)?);
            at = counters + 16;
        }
        Some(Blob { bytes: upgraded })
    }

    fn slot(&self, at: usize) -> Option<Slot> {
        let kind = *self.bytes.get(at)?;
        let end = i64::from_le_bytes(*self.bytes.get(at + 1..at + 9)?.first_chunk::<8>()?);
        let name_len = usize::from(*self.bytes.get(at + 9)?);
        let name = (at + 10, at + 10 + name_len);
        let counters = name.1;
        let next = counters + COUNTER_BYTES;
        (next <= self.bytes.len()).then_some(Slot {
            kind,
            end,
            name,
            counters,
            next,
        })
    }

    fn slots(&self) -> impl Iterator<Item = Slot> + '_ {
        let mut at = BLOB_MAGIC.len();
        std::iter::from_fn(move || {
            let slot = self.slot(at)?;
            at = slot.next;
            Some(slot)
        })
    }

    fn find(&self, name: &str, period: &Period) -> Option<Slot> {
        let kind = kind_byte(period.kind);
        self.slots().find(|s| {
            s.kind == kind
                && s.end == period.end
                && self.bytes.get(s.name.0..s.name.1) == Some(name.as_bytes())
        })
    }

    fn read_u64(&self, at: usize) -> u64 {
        self.bytes
            .get(at..at + 8)
            .and_then(|b| b.first_chunk::<8>())
            .map(|b| u64::from_le_bytes(*b))
            .unwrap_or(0)
    }

    fn get(&self, name: &str, period: &Period) -> Account {
        self.find(name, period)
            .map(|s| Account {
                spent: self.read_u64(s.counters),
                reserved: self.read_u64(s.counters + 8),
                own: self.read_u64(s.counters + 16),
            })
            .unwrap_or_default()
    }

    fn put(&mut self, name: &str, period: &Period, account: Account) {
        let mut counters = [0u8; COUNTER_BYTES];
        for (target, value) in
            counters
                .chunks_exact_mut(8)
                .zip([account.spent, account.reserved, account.own])
        {
            target.copy_from_slice(&value.to_le_bytes());
        }
        if let Some(slot) = self.find(name, period) {
            if let Some(target) = self.bytes.get_mut(slot.counters..slot.next) {
                target.copy_from_slice(&counters);
            }
            return;
        }
        self.bytes.reserve(ENTRY_FIXED_BYTES + name.len());
        self.bytes.push(kind_byte(period.kind));
        self.bytes.extend_from_slice(&period.end.to_le_bytes());
        // Names are checked to fit a u8 before they are put.
        self.bytes.push(u8::try_from(name.len()).unwrap_or(u8::MAX));
        self.bytes.extend_from_slice(name.as_bytes());
        self.bytes.extend_from_slice(&counters);
    }

    /// Drops entries of each of `current`'s kinds that ended before that period started
    /// (older than the previous period, whose end is the current start). True if any went.
    fn prune(&mut self, current: &[&Period]) -> bool {
        let stale = |slot: &Slot| {
            current
                .iter()
                .any(|p| kind_byte(p.kind) == slot.kind && slot.end < p.start)
        };
        if !self.slots().any(|s| stale(&s)) {
            return false;
        }
        let mut kept = BLOB_MAGIC.to_vec();
        for slot in self.slots().filter(|s| !stale(s)) {
            let start = slot.name.0 - 10;
            kept.extend_from_slice(self.bytes.get(start..slot.next).unwrap_or_default());
        }
        self.bytes = kept;
        true
    }
}

#[cfg(test)]
mod tests;

//! Spend counters in proxy-wasm shared data, shared by every worker of one Envoy.
//!
//! ## Why sharded period blobs
//! Envoy's `set_shared_data` ignores the cas when the key does not exist yet, so two workers
//! that both find a key missing both "create" it and one increment is lost. Counters
//! therefore never live in keys that the hot path creates: each period (a day or a month)
//! has a fixed set of [`SHARDS`] keys, `agent_budget/v1/{d|m}/{period}/{shard}`, created empty
//! before the period starts (at configure time, on the main thread before workers exist,
//! and on ticks for the next period). An account (an agent's budget) is an entry inside the
//! shard blob its name hashes to, added and updated with bounded CAS loops on a key that
//! already exists, so every update is checked. If the hot path ever finds a shard missing
//! (the clock jumped past every tick), it creates it and reports it, since that one write
//! cannot be checked.

use crate::host::{Host, HostError, Versioned};
use crate::period::Period;
use std::fmt;

/// Shard keys per period: spreads CAS contention between accounts.
pub const SHARDS: u32 = 16;
/// CAS attempts before an update gives up (the caller keeps the charge and retries later).
pub const MAX_CAS_ATTEMPTS: u32 = 64;
const KEY_PREFIX: &str = "agent_budget/v1";
const BLOB_MAGIC: &[u8; 2] = b"L1";
const ENTRY_FIXED_BYTES: usize = 1 + 8 + 8;

/// One account's counters within a period, in micro-USD.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Account {
    pub spent: u64,
    pub reserved: u64,
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
    /// A period's shards were missing and created on the hot path (an unchecked write).
    LateCreate {
        period: String,
    },
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
            LedgerError::LateCreate { period } => {
                write!(
                    f,
                    "period {period} was created on the hot path (no tick prepared it)"
                )
            }
        }
    }
}

/// The result of an update: the account after it, and whether the shard had to be created
/// on the spot (an unchecked write: see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Updated {
    /// The account as the winning CAS found it, and as it left it.
    pub before: Account,
    pub account: Account,
    pub created_shard: bool,
}

pub struct Ledger<'h> {
    host: &'h dyn Host,
}

impl<'h> Ledger<'h> {
    pub fn new(host: &'h dyn Host) -> Ledger<'h> {
        Ledger { host }
    }

    pub fn shard_key(period: &Period, shard: u32) -> String {
        let kind = match period.kind {
            crate::period::PeriodKind::Daily => 'd',
            crate::period::PeriodKind::Monthly => 'm',
        };
        format!("{KEY_PREFIX}/{kind}/{}/{shard:02}", period.id)
    }

    fn key_for(period: &Period, account: &str) -> String {
        Ledger::shard_key(period, shard_of(account))
    }

    /// Creates the period's missing shard keys, empty. Safe to race: nobody adds to a
    /// period's shards before they exist, and empty over empty loses nothing.
    /// Returns how many keys this call created.
    pub fn ensure_period(&self, period: &Period) -> Result<u32, LedgerError> {
        let mut created = 0;
        for shard in 0..SHARDS {
            let key = Ledger::shard_key(period, shard);
            let existing = self.get(&key)?;
            if existing.is_none() {
                self.set(&key, BLOB_MAGIC, 0)?;
                created += 1;
            }
        }
        Ok(created)
    }

    /// Empties a finished period's shards so shared data does not grow forever.
    pub fn release_period(&self, period: &Period) -> Result<(), LedgerError> {
        for shard in 0..SHARDS {
            let key = Ledger::shard_key(period, shard);
            if let Some(current) = self.get(&key)? {
                if current.value.len() > BLOB_MAGIC.len() {
                    // A lost race here only means the next release retries it.
                    let _ = self.set(&key, BLOB_MAGIC, current.cas);
                }
            }
        }
        Ok(())
    }

    pub fn read(&self, period: &Period, account: &str) -> Result<Account, LedgerError> {
        let key = Ledger::key_for(period, account);
        match self.get(&key)? {
            None => Ok(Account::default()),
            Some(current) => {
                let blob = Blob::decode(&current.value).ok_or(LedgerError::Corrupt { key })?;
                Ok(blob.get(account))
            }
        }
    }

    /// Applies `change` to the account atomically (bounded CAS loop); returns the new state.
    pub fn update(
        &self,
        period: &Period,
        account: &str,
        change: impl Fn(Account) -> Account,
    ) -> Result<Updated, LedgerError> {
        // A change that never refuses always yields an update; None cannot come back.
        self.try_update(period, account, |a| Some(change(a)))?
            .ok_or_else(|| LedgerError::Contended {
                key: Ledger::key_for(period, account),
            })
    }

    /// Like [`Ledger::update`], but `change` may refuse (None) after seeing the current
    /// state, atomically: `Ok(None)` means it refused and nothing was written.
    pub fn try_update(
        &self,
        period: &Period,
        account: &str,
        change: impl Fn(Account) -> Option<Account>,
    ) -> Result<Option<Updated>, LedgerError> {
        if account.len() > usize::from(u8::MAX) {
            return Err(LedgerError::NameTooLong);
        }
        let key = Ledger::key_for(period, account);
        for _ in 0..MAX_CAS_ATTEMPTS {
            let (mut blob, cas) = match self.get(&key)? {
                Some(current) => {
                    let blob = Blob::decode(&current.value)
                        .ok_or_else(|| LedgerError::Corrupt { key: key.clone() })?;
                    (blob, current.cas)
                }
                None => (Blob::default(), 0),
            };
            let before = blob.get(account);
            let Some(after) = change(before) else {
                return Ok(None);
            };
            blob.put(account, after);
            match self.set(&key, &blob.encode(), cas) {
                Ok(()) => {
                    return Ok(Some(Updated {
                        before,
                        account: after,
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

    /// Adds `micro_usd` to the account's spend.
    pub fn add_spend(
        &self,
        period: &Period,
        account: &str,
        micro_usd: u64,
    ) -> Result<Updated, LedgerError> {
        self.update(period, account, |a| Account {
            spent: a.spent.saturating_add(micro_usd),
            ..a
        })
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
pub fn shard_of(account: &str) -> u32 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in account.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (hash % u64::from(SHARDS)) as u32
}

/// A shard's entries: `L1` then, per account, name length (u8), name, spent and reserved
/// (u64 little-endian).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Blob {
    entries: Vec<(String, Account)>,
}

impl Blob {
    fn decode(bytes: &[u8]) -> Option<Blob> {
        let mut rest = bytes.strip_prefix(BLOB_MAGIC.as_slice())?;
        let mut entries = Vec::new();
        while let Some((&name_len, tail)) = rest.split_first() {
            let name_len = usize::from(name_len);
            if tail.len() < name_len + ENTRY_FIXED_BYTES - 1 {
                return None;
            }
            let (name, tail) = tail.split_at(name_len);
            let (spent, tail) = tail.split_at(8);
            let (reserved, tail) = tail.split_at(8);
            let name = String::from_utf8(name.to_vec()).ok()?;
            let account = Account {
                spent: u64::from_le_bytes(spent.try_into().ok()?),
                reserved: u64::from_le_bytes(reserved.try_into().ok()?),
            };
            entries.push((name, account));
            rest = tail;
        }
        Some(Blob { entries })
    }

    fn encode(&self) -> Vec<u8> {
        let size = BLOB_MAGIC.len()
            + self
                .entries
                .iter()
                .map(|(name, _)| name.len() + ENTRY_FIXED_BYTES)
                .sum::<usize>();
        let mut out = Vec::with_capacity(size);
        out.extend_from_slice(BLOB_MAGIC);
        for (name, account) in &self.entries {
            // Names are checked to fit a u8 before they are put.
            out.push(u8::try_from(name.len()).unwrap_or(u8::MAX));
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(&account.spent.to_le_bytes());
            out.extend_from_slice(&account.reserved.to_le_bytes());
        }
        out
    }

    fn get(&self, name: &str) -> Account {
        self.entries
            .iter()
            .find(|(entry, _)| entry == name)
            .map(|(_, account)| *account)
            .unwrap_or_default()
    }

    fn put(&mut self, name: &str, account: Account) {
        match self.entries.iter_mut().find(|(entry, _)| entry == name) {
            Some((_, slot)) => *slot = account,
            None => self.entries.push((name.to_string(), account)),
        }
    }
}

#[cfg(test)]
mod tests;

//! Today's spend by task and by user for each agent budget: the status page's "top tasks"
//! and "top users".
//!
//! The hot path only adds to per-worker memory ([`Accumulator::add`], no host call); each
//! worker's tick merges what it gathered into one shared-data key per agent budget
//! ([`Accumulator::publish`]), with a checked (CAS) write. A delta stays in the worker's
//! memory until a merge takes it, so contention only delays it to a later tick. The stored
//! lists are bounded: the [`TOP_K`] largest per agent, day and kind; merging drops the
//! smallest, so a name that drops out and comes back restarts from what it spent since
//! (the figures are exact for names that stay in the top K).
//!
//! Keys are created empty at configure time (on Envoy's main thread, before workers
//! exist), as the ledger's shards are: Envoy's `set_shared_data` ignores the cas of a key
//! that does not exist, so a key created while workers merge could overwrite a merge.

use crate::host::{Host, HostError};
use crate::ledger::LedgerError;
use crate::period::Period;
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::collections::HashMap;

/// Names kept per agent, day and kind in shared data.
pub const TOP_K: usize = 20;
/// Names gathered per agent and kind by one worker between two ticks before the smallest are
/// dropped (bounds memory when a client invents a task id per call).
const MAX_LOCAL_NAMES: usize = 1_000;
/// CAS attempts per key and tick; what is left waits for the next tick.
const MAX_CAS_ATTEMPTS: u32 = 8;
const KEY_PREFIX: &str = "agent_budget/top/v1/";

/// One agent budget's stored top lists for one day, largest first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DayTop {
    /// End of the day the lists are for (Unix seconds); 0 for an empty, never-used key.
    pub day_end: i64,
    pub tasks: Vec<(String, u64)>,
    pub users: Vec<(String, u64)>,
}

/// What one worker gathered for one agent budget since its last merge.
#[derive(Debug, Default)]
struct Gathered {
    day_end: i64,
    tasks: HashMap<String, u64>,
    users: HashMap<String, u64>,
}

impl Gathered {
    fn is_empty(&self) -> bool {
        self.tasks.is_empty() && self.users.is_empty()
    }
}

/// A worker's spend by task and user not yet merged into shared data.
#[derive(Debug, Default)]
pub struct Accumulator {
    gathered: RefCell<HashMap<String, Gathered>>,
}

pub fn key(budget: &str) -> String {
    format!("{KEY_PREFIX}{budget}")
}

/// Creates the missing keys of `budgets`, empty (see the module doc for why at configure
/// time). Returns how many it created.
pub fn ensure_keys<'a>(
    host: &dyn Host,
    budgets: impl IntoIterator<Item = &'a String>,
) -> Result<u32, LedgerError> {
    let mut created = 0;
    for budget in budgets {
        let key = key(budget);
        if get(host, &key)?.is_none() {
            set(host, &key, &encode(&DayTop::default()), 0)?;
            created += 1;
        }
    }
    Ok(created)
}

/// The budget's top lists for `day`: empty if nothing was merged for that day yet.
pub fn read(host: &dyn Host, budget: &str, day: &Period) -> Result<DayTop, LedgerError> {
    let key = key(budget);
    let stored = match get(host, &key)? {
        Some((bytes, _)) => decode(&key, &bytes)?,
        None => DayTop::default(),
    };
    if stored.day_end == day.end {
        Ok(stored)
    } else {
        Ok(DayTop {
            day_end: day.end,
            ..DayTop::default()
        })
    }
}

impl Accumulator {
    pub fn new() -> Accumulator {
        Accumulator::default()
    }

    /// Notes a settled charge (per-worker memory only). A day that ended drops what was
    /// gathered for it: only today's lists are shown.
    pub fn add(
        &self,
        budget: &str,
        day: &Period,
        task: Option<&str>,
        user: Option<&str>,
        micro_usd: u64,
    ) {
        if micro_usd == 0 || (task.is_none() && user.is_none()) {
            return;
        }
        let mut gathered = self.gathered.borrow_mut();
        let entry = match gathered.get_mut(budget) {
            Some(entry) => entry,
            None => gathered.entry(budget.to_string()).or_default(),
        };
        if entry.day_end != day.end {
            if entry.day_end > day.end {
                return;
            }
            *entry = Gathered {
                day_end: day.end,
                ..Gathered::default()
            };
        }
        if let Some(task) = task {
            add_to(&mut entry.tasks, task, micro_usd);
        }
        if let Some(user) = user {
            add_to(&mut entry.users, user, micro_usd);
        }
    }

    /// True if nothing waits to be merged.
    pub fn is_empty(&self) -> bool {
        self.gathered.borrow().values().all(Gathered::is_empty)
    }

    /// Merges what this worker gathered into shared data, one checked write per agent
    /// budget; what a write could not place (contention, host error) stays for the next
    /// tick. Returns the errors to count.
    pub fn publish(&self, host: &dyn Host) -> Vec<LedgerError> {
        let mut errors = Vec::new();
        let mut gathered = self.gathered.borrow_mut();
        gathered.retain(|budget, pending| {
            if pending.is_empty() {
                return false;
            }
            match merge_into_store(host, budget, pending) {
                Ok(()) => false,
                Err(error) => {
                    errors.push(error);
                    true
                }
            }
        });
        errors
    }
}

fn add_to(map: &mut HashMap<String, u64>, name: &str, micro_usd: u64) {
    if let Some(total) = map.get_mut(name) {
        *total = total.saturating_add(micro_usd);
        return;
    }
    if map.len() >= MAX_LOCAL_NAMES {
        let smallest = map
            .iter()
            .min_by_key(|(_, total)| **total)
            .map(|(name, total)| (name.clone(), *total));
        match smallest {
            Some((_, total)) if total >= micro_usd => return,
            Some((name, _)) => {
                map.remove(&name);
            }
            None => {}
        }
    }
    map.insert(name.to_string(), micro_usd);
}

fn merge_into_store(host: &dyn Host, budget: &str, pending: &Gathered) -> Result<(), LedgerError> {
    let key = key(budget);
    for _ in 0..MAX_CAS_ATTEMPTS {
        let Some((bytes, cas)) = get(host, &key)? else {
            // Another plugin deleted it: create it empty (unchecked, so it holds nothing
            // anyone could lose) and merge on the next tick with a checked write.
            set(host, &key, &encode(&DayTop::default()), 0)?;
            return Err(LedgerError::LateCreate { key });
        };
        // A value that is not ours is replaced, still under its cas.
        let mut stored = decode(&key, &bytes).unwrap_or_default();
        if !merge(&mut stored, pending) {
            return Ok(());
        }
        match host.shared_set(&key, &encode(&stored), cas) {
            Ok(()) => return Ok(()),
            Err(HostError::CasMismatch) => continue,
            Err(error) => return Err(LedgerError::Host { key, error }),
        }
    }
    Err(LedgerError::Contended { key })
}

/// Adds `pending` to `stored`, starting the lists over on a newer day and keeping the
/// [`TOP_K`] largest of each kind. False if `pending` is for a day that has ended there
/// (nothing to write).
fn merge(stored: &mut DayTop, pending: &Gathered) -> bool {
    if pending.day_end < stored.day_end {
        return false;
    }
    if pending.day_end > stored.day_end {
        *stored = DayTop {
            day_end: pending.day_end,
            ..DayTop::default()
        };
    }
    merge_list(&mut stored.tasks, &pending.tasks);
    merge_list(&mut stored.users, &pending.users);
    true
}

pub(crate) fn merge_list(list: &mut Vec<(String, u64)>, deltas: &HashMap<String, u64>) {
    for (name, delta) in deltas {
        match list.iter_mut().find(|(known, _)| known == name) {
            Some((_, total)) => *total = total.saturating_add(*delta),
            None => list.push((name.clone(), *delta)),
        }
    }
    // Largest first; ties by name, so every worker keeps the same K.
    list.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    list.truncate(TOP_K);
}

fn encode(top: &DayTop) -> Vec<u8> {
    // Serializing plain strings and integers cannot fail.
    serde_json::to_vec(top).unwrap_or_default()
}

fn decode(key: &str, bytes: &[u8]) -> Result<DayTop, LedgerError> {
    serde_json::from_slice(bytes).map_err(|_| LedgerError::Corrupt {
        key: key.to_string(),
    })
}

fn get(host: &dyn Host, key: &str) -> Result<Option<(Vec<u8>, u32)>, LedgerError> {
    host.shared_get(key)
        .map(|found| found.map(|v| (v.value, v.cas)))
        .map_err(|error| LedgerError::Host {
            key: key.to_string(),
            error,
        })
}

fn set(host: &dyn Host, key: &str, value: &[u8], cas: u32) -> Result<(), LedgerError> {
    host.shared_set(key, value, cas)
        .map_err(|error| LedgerError::Host {
            key: key.to_string(),
            error,
        })
}

#[cfg(test)]
mod tests;

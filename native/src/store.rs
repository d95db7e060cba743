//! The process-wide shared data behind the core's `Host::shared_get` / `shared_set`: one map
//! for every worker thread and configuration of the process, as proxy-wasm's shared data is
//! for one `vm_id`, so the core's ledger works unchanged. Sharded by key so workers charging
//! different agents rarely wait on each other; each write checks the version (cas) it was
//! given under its shard's lock, so no update is lost.

use agent_budget_core::host::{HostError, Versioned};
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};

const SHARDS: usize = 16;

pub struct Store {
    shards: [Mutex<HashMap<String, Versioned>>; SHARDS],
    hasher: RandomState,
    /// The last version handed out: versions only need to differ between writes of a key.
    last_cas: AtomicU32,
}

/// The host status of a poisoned shard (a thread panicked while holding it): proxy-wasm's
/// `InternalFailure`, which the core counts as an unreadable ledger.
pub const POISONED: HostError = HostError::Status(10);

impl Default for Store {
    fn default() -> Store {
        Store {
            shards: std::array::from_fn(|_| Mutex::new(HashMap::new())),
            hasher: RandomState::new(),
            last_cas: AtomicU32::new(0),
        }
    }
}

impl Store {
    /// The process's store.
    pub fn global() -> &'static Store {
        static STORE: OnceLock<Store> = OnceLock::new();
        STORE.get_or_init(Store::default)
    }

    fn shard(&self, key: &str) -> Result<&Mutex<HashMap<String, Versioned>>, HostError> {
        let index = (self.hasher.hash_one(key) % SHARDS as u64) as usize;
        // Always found: the index is below SHARDS.
        self.shards.get(index).ok_or(POISONED)
    }

    fn next_cas(&self) -> u32 {
        loop {
            let cas = self
                .last_cas
                .fetch_add(1, Ordering::Relaxed)
                .wrapping_add(1);
            // 0 means "unconditional" to writers, so no value carries it.
            if cas != 0 {
                return cas;
            }
        }
    }

    pub fn get(&self, key: &str) -> Result<Option<Versioned>, HostError> {
        let shard = self.shard(key)?.lock().map_err(|_| POISONED)?;
        Ok(shard.get(key).cloned())
    }

    /// Writes `key`. `cas` 0, or a key that does not exist yet, writes unconditionally (as
    /// Envoy's shared data does); otherwise the key's version must still be `cas`.
    pub fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), HostError> {
        let mut shard = self.shard(key)?.lock().map_err(|_| POISONED)?;
        if let Some(existing) = shard.get(key) {
            if cas != 0 && cas != existing.cas {
                return Err(HostError::CasMismatch);
            }
        }
        let cas = self.next_cas();
        shard.insert(
            key.to_string(),
            Versioned {
                value: value.to_vec(),
                cas,
            },
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests;

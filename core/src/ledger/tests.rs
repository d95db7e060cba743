use super::*;
use crate::host::fake::FakeHost;
use crate::period::{PeriodKind, TimeZone};

const NOW: i64 = 1_795_900_000; // 2026-11-28

fn day() -> Period {
    Period::containing(PeriodKind::Daily, TimeZone::UTC, NOW)
}

#[test]
fn blob_round_trips_and_rejects_garbage() {
    let mut blob = Blob::default();
    blob.put(
        "agent:a",
        Account {
            spent: 5,
            reserved: 7,
        },
    );
    blob.put(
        "agent:bb",
        Account {
            spent: u64::MAX,
            reserved: 0,
        },
    );
    blob.put(
        "agent:a",
        Account {
            spent: 6,
            reserved: 0,
        },
    );
    let bytes = blob.encode();
    assert_eq!(Blob::decode(&bytes), Some(blob.clone()));
    assert_eq!(Blob::decode(b"L1"), Some(Blob::default()));
    assert_eq!(Blob::decode(b""), None);
    assert_eq!(Blob::decode(b"XX"), None);
    // Every truncation of a valid blob is rejected or a valid shorter blob, never a panic.
    for cut in 0..bytes.len() {
        let _ = Blob::decode(&bytes[..cut]);
    }
    assert!(Blob::decode(&bytes[..bytes.len() - 1]).is_none());
}

#[test]
fn ensure_creates_every_shard_once() {
    let host = FakeHost::new();
    let ledger = Ledger::new(&host);
    assert_eq!(ledger.ensure_period(&day()).unwrap(), SHARDS);
    assert_eq!(ledger.ensure_period(&day()).unwrap(), 0);
    assert_eq!(host.shared_keys().len(), SHARDS as usize);
    assert!(host.shared_keys()[0].starts_with("agent_budget/v1/d/2026-11-28/"));
}

#[test]
fn adds_accumulate_per_account_and_period() {
    let host = FakeHost::new();
    let ledger = Ledger::new(&host);
    let month = Period::containing(PeriodKind::Monthly, TimeZone::UTC, NOW);
    ledger.ensure_period(&day()).unwrap();
    ledger.ensure_period(&month).unwrap();
    for _ in 0..10 {
        let updated = ledger.add_spend(&day(), "agent:a", 3).unwrap();
        assert!(!updated.created_shard);
    }
    ledger.add_spend(&month, "agent:a", 100).unwrap();
    ledger.add_spend(&day(), "agent:b", 1).unwrap();
    assert_eq!(ledger.read(&day(), "agent:a").unwrap().spent, 30);
    assert_eq!(ledger.read(&month, "agent:a").unwrap().spent, 100);
    assert_eq!(ledger.read(&day(), "agent:b").unwrap().spent, 1);
    assert_eq!(
        ledger.read(&day(), "agent:nobody").unwrap(),
        Account::default()
    );
}

#[test]
fn missing_shard_is_created_and_reported() {
    let host = FakeHost::new();
    let ledger = Ledger::new(&host);
    let updated = ledger.add_spend(&day(), "agent:a", 9).unwrap();
    assert!(updated.created_shard);
    assert_eq!(ledger.read(&day(), "agent:a").unwrap().spent, 9);
}

#[test]
fn cas_conflicts_retry_then_give_up() {
    let host = FakeHost::new();
    let ledger = Ledger::new(&host);
    ledger.ensure_period(&day()).unwrap();
    host.fail_next_cas_writes(MAX_CAS_ATTEMPTS - 1);
    assert_eq!(
        ledger
            .add_spend(&day(), "agent:a", 4)
            .unwrap()
            .account
            .spent,
        4
    );
    host.fail_next_cas_writes(MAX_CAS_ATTEMPTS);
    assert!(matches!(
        ledger.add_spend(&day(), "agent:a", 4),
        Err(LedgerError::Contended { .. })
    ));
    assert_eq!(ledger.read(&day(), "agent:a").unwrap().spent, 4);
}

#[test]
fn interleaved_writers_lose_nothing() {
    // Two "workers" read the same version; the second write must fail its cas and retry.
    let host = FakeHost::new();
    let ledger = Ledger::new(&host);
    ledger.ensure_period(&day()).unwrap();
    let key = Ledger::shard_key(&day(), shard_of("agent:a"));
    let stale = host.shared_get(&key).unwrap().unwrap();
    ledger.add_spend(&day(), "agent:a", 10).unwrap();
    assert_eq!(
        host.shared_set(&key, &stale.value, stale.cas),
        Err(HostError::CasMismatch)
    );
    ledger.add_spend(&day(), "agent:a", 5).unwrap();
    assert_eq!(ledger.read(&day(), "agent:a").unwrap().spent, 15);
}

#[test]
fn corrupt_values_are_errors_not_resets() {
    let host = FakeHost::new();
    let ledger = Ledger::new(&host);
    let key = Ledger::shard_key(&day(), shard_of("agent:a"));
    host.shared_set(&key, b"garbage", 0).unwrap();
    assert!(matches!(
        ledger.read(&day(), "agent:a"),
        Err(LedgerError::Corrupt { .. })
    ));
    assert!(matches!(
        ledger.add_spend(&day(), "agent:a", 1),
        Err(LedgerError::Corrupt { .. })
    ));
    assert_eq!(host.raw_shared(&key).unwrap(), b"garbage");
}

#[test]
fn release_empties_old_periods() {
    let host = FakeHost::new();
    let ledger = Ledger::new(&host);
    ledger.ensure_period(&day()).unwrap();
    ledger.add_spend(&day(), "agent:a", 10).unwrap();
    ledger.release_period(&day()).unwrap();
    assert_eq!(ledger.read(&day(), "agent:a").unwrap().spent, 0);
}

#[test]
fn shards_spread_accounts() {
    let mut used = std::collections::BTreeSet::new();
    for i in 0..200 {
        used.insert(shard_of(&format!("agent:bot-{i}")));
    }
    assert_eq!(used.len(), SHARDS as usize);
    assert!(ledger_name_limit_is_enforced());
}

fn ledger_name_limit_is_enforced() -> bool {
    let host = FakeHost::new();
    let ledger = Ledger::new(&host);
    matches!(
        ledger.add_spend(&day(), &"x".repeat(256), 1),
        Err(LedgerError::NameTooLong)
    )
}

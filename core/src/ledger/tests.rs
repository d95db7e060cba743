use super::*;
use crate::host::fake::FakeHost;
use crate::period::{PeriodKind, TimeZone};

const NOW: i64 = 1_795_900_000; // 2026-11-28

fn day() -> Period {
    Period::containing(PeriodKind::Daily, TimeZone::UTC, NOW)
}

fn month() -> Period {
    Period::containing(PeriodKind::Monthly, TimeZone::UTC, NOW)
}

fn agent(name: &str) -> AccountKey {
    AccountKey::Agent(name.to_string())
}

fn spent(ledger: &Ledger, period: &Period, name: &str) -> u64 {
    ledger.read(period, &agent(name)).unwrap().spent
}

#[test]
fn account_keys_spell_each_account_once() {
    let cases = [
        (agent("bot"), "agent:bot"),
        (
            AccountKey::Task {
                budget: "bot".into(),
                task: "t1".into(),
            },
            "task:bot/t1",
        ),
        (
            AccountKey::User {
                budget: "bot".into(),
                user: "u1".into(),
            },
            "user:bot/u1",
        ),
        (AccountKey::Overage("bot".into()), "overage:bot"),
        (
            AccountKey::Alerted {
                budget: "bot".into(),
                level: "soft",
                mark: 80,
            },
            "alerted:bot:soft:80",
        ),
    ];
    for (key, name) in cases {
        assert_eq!(key.name(), name);
    }
}

#[test]
fn blob_edits_in_place_round_trips_and_rejects_garbage() {
    let mut blob = Blob::default();
    let a = Account {
        spent: 5,
        reserved: 7,
        own: 3,
    };
    blob.put("agent:a", &day(), a);
    blob.put(
        "agent:bb",
        &month(),
        Account {
            spent: u64::MAX,
            reserved: 0,
            own: u64::MAX,
        },
    );
    assert_eq!(blob.get("agent:a", &day()), a);
    let six = Account {
        spent: 6,
        reserved: 0,
        own: 6,
    };
    blob.put("agent:a", &day(), six);
    assert_eq!(blob.slots().count(), 2);
    assert_eq!(blob.get("agent:a", &day()), six);
    assert_eq!(blob.get("agent:a", &month()), Account::default());
    let bytes = blob.bytes.clone();
    assert_eq!(Blob::decode(bytes.clone()), Some(blob.clone()));
    assert_eq!(Blob::decode(b"L3".to_vec()), Some(Blob::default()));
    assert_eq!(Blob::decode(Vec::new()), None);
    assert_eq!(Blob::decode(b"L1".to_vec()), None);
    // Every truncation of a valid blob is rejected or a valid shorter blob, never a panic.
    for cut in 0..bytes.len() {
        let _ = Blob::decode(bytes[..cut].to_vec());
    }
    assert!(Blob::decode(bytes[..bytes.len() - 1].to_vec()).is_none());
    // A name that is not UTF-8 is corruption.
    let mut bad = bytes.clone();
    bad[12] = 0xff;
    assert!(Blob::decode(bad).is_none());
}

#[test]
fn ensure_creates_every_shard_once() {
    let host = FakeHost::new();
    let ledger = Ledger::new(&host);
    assert_eq!(ledger.ensure_shards().unwrap(), SHARDS);
    assert_eq!(ledger.ensure_shards().unwrap(), 0);
    assert_eq!(host.shared_keys().len(), SHARDS as usize);
    assert!(host.shared_keys()[0].starts_with("agent_budget/v2/"));
}

#[test]
fn adds_accumulate_per_account_and_period() {
    let host = FakeHost::new();
    let ledger = Ledger::new(&host);
    ledger.ensure_shards().unwrap();
    for _ in 0..10 {
        let updated = ledger.add_spend(&day(), &agent("a"), 3).unwrap();
        assert!(!updated.created_shard);
    }
    ledger.add_spend(&month(), &agent("a"), 100).unwrap();
    ledger.add_spend(&day(), &agent("b"), 1).unwrap();
    assert_eq!(spent(&ledger, &day(), "a"), 30);
    assert_eq!(spent(&ledger, &month(), "a"), 100);
    assert_eq!(spent(&ledger, &day(), "b"), 1);
    assert_eq!(
        ledger.read(&day(), &agent("nobody")).unwrap(),
        Account::default()
    );
}

#[test]
fn one_update_moves_every_period_of_an_account_with_one_write() {
    let host = FakeHost::new();
    let ledger = Ledger::new(&host);
    ledger.ensure_shards().unwrap();
    let snapshot = ledger.snapshot(&agent("a")).unwrap();
    let updated = ledger
        .update_periods(&agent("a"), &[&day(), &month()], Some(snapshot), |before| {
            Some(
                before
                    .iter()
                    .map(|a| Account {
                        spent: a.spent + 7,
                        ..*a
                    })
                    .collect(),
            )
        })
        .unwrap()
        .unwrap();
    assert_eq!(updated.after.len(), 2);
    assert_eq!(spent(&ledger, &day(), "a"), 7);
    assert_eq!(spent(&ledger, &month(), "a"), 7);
}

#[test]
fn a_stale_snapshot_costs_a_retry_not_an_update() {
    let host = FakeHost::new();
    let ledger = Ledger::new(&host);
    ledger.ensure_shards().unwrap();
    let stale = ledger.snapshot(&agent("a")).unwrap();
    ledger.add_spend(&day(), &agent("a"), 10).unwrap();
    ledger
        .update_periods(&agent("a"), &[&day()], Some(stale), |before| {
            Some(vec![Account {
                spent: before[0].spent + 5,
                ..before[0]
            }])
        })
        .unwrap()
        .unwrap();
    assert_eq!(spent(&ledger, &day(), "a"), 15);
}

#[test]
fn a_refused_change_writes_nothing() {
    let host = FakeHost::new();
    let ledger = Ledger::new(&host);
    ledger.ensure_shards().unwrap();
    let result = ledger.try_update(&day(), &agent("a"), |_| None).unwrap();
    assert!(result.is_none());
    assert_eq!(
        host.raw_shared(&Ledger::shard_key(shard_of("agent:a")))
            .unwrap(),
        b"L3"
    );
}

#[test]
fn missing_shard_is_created_and_reported() {
    let host = FakeHost::new();
    let ledger = Ledger::new(&host);
    let updated = ledger.add_spend(&day(), &agent("a"), 9).unwrap();
    assert!(updated.created_shard);
    assert_eq!(spent(&ledger, &day(), "a"), 9);
}

#[test]
fn cas_conflicts_retry_then_give_up() {
    let host = FakeHost::new();
    let ledger = Ledger::new(&host);
    ledger.ensure_shards().unwrap();
    host.fail_next_cas_writes(MAX_CAS_ATTEMPTS - 1);
    let updated = ledger.add_spend(&day(), &agent("a"), 4).unwrap();
    assert_eq!(updated.after[0].spent, 4);
    host.fail_next_cas_writes(MAX_CAS_ATTEMPTS);
    assert!(matches!(
        ledger.add_spend(&day(), &agent("a"), 4),
        Err(LedgerError::Contended { .. })
    ));
    assert_eq!(spent(&ledger, &day(), "a"), 4);
}

#[test]
fn interleaved_writers_lose_nothing() {
    // Two "workers" read the same version; the second write must fail its cas and retry.
    let host = FakeHost::new();
    let ledger = Ledger::new(&host);
    ledger.ensure_shards().unwrap();
    let key = Ledger::shard_key(shard_of("agent:a"));
    let stale = host.shared_get(&key).unwrap().unwrap();
    ledger.add_spend(&day(), &agent("a"), 10).unwrap();
    assert_eq!(
        host.shared_set(&key, &stale.value, stale.cas),
        Err(HostError::CasMismatch)
    );
    ledger.add_spend(&day(), &agent("a"), 5).unwrap();
    assert_eq!(spent(&ledger, &day(), "a"), 15);
}

#[test]
fn corrupt_values_are_errors_not_resets() {
    let host = FakeHost::new();
    let ledger = Ledger::new(&host);
    let key = Ledger::shard_key(shard_of("agent:a"));
    host.shared_set(&key, b"garbage", 0).unwrap();
    assert!(matches!(
        ledger.read(&day(), &agent("a")),
        Err(LedgerError::Corrupt { .. })
    ));
    assert!(matches!(
        ledger.add_spend(&day(), &agent("a"), 1),
        Err(LedgerError::Corrupt { .. })
    ));
    assert_eq!(host.raw_shared(&key).unwrap(), b"garbage");
}

#[test]
fn writes_and_prune_drop_periods_before_the_previous_one() {
    let host = FakeHost::new();
    let ledger = Ledger::new(&host);
    ledger.ensure_shards().unwrap();
    let days: Vec<Period> = (0..3)
        .map(|n| Period::containing(PeriodKind::Daily, TimeZone::UTC, NOW + n * 86_400))
        .collect();
    ledger.add_spend(&days[0], &agent("a"), 1).unwrap();
    ledger.add_spend(&days[1], &agent("a"), 2).unwrap();
    // The previous day is kept (calls that began before midnight settle there).
    assert_eq!(spent(&ledger, &days[0], "a"), 1);
    ledger.add_spend(&days[2], &agent("a"), 3).unwrap();
    assert_eq!(spent(&ledger, &days[0], "a"), 0);
    assert_eq!(spent(&ledger, &days[1], "a"), 2);
    // An account nobody writes any more goes on the tick's prune.
    ledger.add_spend(&days[0], &agent("idle"), 5).unwrap();
    ledger.prune(&[days[2].clone()]).unwrap();
    assert_eq!(spent(&ledger, &days[0], "idle"), 0);
    assert_eq!(spent(&ledger, &days[2], "a"), 3);
}

#[test]
fn shards_spread_accounts() {
    let mut used = std::collections::BTreeSet::new();
    for i in 0..400 {
        used.insert(shard_of(&format!("agent:bot-{i}")));
    }
    assert_eq!(used.len(), SHARDS as usize);
}

#[test]
fn ledger_name_limit_is_enforced() {
    let host = FakeHost::new();
    let ledger = Ledger::new(&host);
    assert!(matches!(
        ledger.add_spend(&day(), &agent(&"x".repeat(250)), 1),
        Err(LedgerError::NameTooLong)
    ));
}

#[test]
fn an_l2_blob_from_the_previous_release_reads_as_own_spend() {
    let mut v2 = b"L2".to_vec();
    v2.push(b'd');
    v2.extend_from_slice(&day().end.to_le_bytes());
    v2.push(7);
    v2.extend_from_slice(b"agent:a");
    v2.extend_from_slice(&40u64.to_le_bytes());
    v2.extend_from_slice(&9u64.to_le_bytes());
    let blob = Blob::decode(v2.clone()).unwrap();
    assert_eq!(
        blob.get("agent:a", &day()),
        Account {
            spent: 40,
            reserved: 9,
            own: 40,
        }
    );
    assert!(blob.bytes.starts_with(b"L3"));
    // A truncated L2 entry is corruption, as in L3.
    assert!(Blob::decode(v2[..v2.len() - 1].to_vec()).is_none());
}

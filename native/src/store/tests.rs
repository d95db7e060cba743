use super::*;
use std::sync::Arc;

#[test]
fn writes_follow_envoy_shared_data_semantics() {
    struct Case {
        name: &'static str,
        /// Values written (unconditionally) before the checked write.
        before: &'static [&'static [u8]],
        cas: Cas,
        expect: Result<(), HostError>,
        value_after: Option<&'static [u8]>,
    }
    enum Cas {
        Unconditional,
        Current,
        Stale,
    }
    let cases = [
        Case {
            name: "a missing key is written whatever the cas",
            before: &[],
            cas: Cas::Stale,
            expect: Ok(()),
            value_after: Some(b"new"),
        },
        Case {
            name: "cas 0 overwrites",
            before: &[b"old"],
            cas: Cas::Unconditional,
            expect: Ok(()),
            value_after: Some(b"new"),
        },
        Case {
            name: "the current version overwrites",
            before: &[b"old"],
            cas: Cas::Current,
            expect: Ok(()),
            value_after: Some(b"new"),
        },
        Case {
            name: "a stale version is refused and changes nothing",
            before: &[b"old", b"older"],
            cas: Cas::Stale,
            expect: Err(HostError::CasMismatch),
            value_after: Some(b"older"),
        },
    ];
    for case in cases {
        let store = Store::default();
        let mut versions = Vec::new();
        for value in case.before {
            store.set("k", value, 0).unwrap();
            versions.push(store.get("k").unwrap().unwrap().cas);
        }
        let cas = match case.cas {
            Cas::Unconditional => 0,
            Cas::Current => versions.last().copied().unwrap_or(1),
            Cas::Stale => versions.first().copied().unwrap_or(1),
        };
        assert_eq!(store.set("k", b"new", cas), case.expect, "{}", case.name);
        let after = store.get("k").unwrap().map(|v| v.value);
        assert_eq!(after.as_deref(), case.value_after, "{}", case.name);
    }
}

#[test]
fn every_write_gets_a_new_nonzero_version() {
    let store = Store::default();
    store.last_cas.store(u32::MAX - 1, Ordering::Relaxed);
    let mut seen = Vec::new();
    for _ in 0..4 {
        store.set("k", b"v", 0).unwrap();
        seen.push(store.get("k").unwrap().unwrap().cas);
    }
    assert!(!seen.contains(&0), "{seen:?}");
    seen.dedup();
    assert_eq!(seen.len(), 4, "{seen:?}");
}

/// Threads adding to one counter with read, cas-write, retry (as the ledger does) lose no
/// increment.
#[test]
fn concurrent_cas_increments_lose_no_update() {
    const THREADS: u64 = 4;
    const ADDS: u64 = 2_000;
    let store = Arc::new(Store::default());
    store.set("n", &0u64.to_le_bytes(), 0).unwrap();
    let workers: Vec<_> = (0..THREADS)
        .map(|_| {
            let store = Arc::clone(&store);
            std::thread::spawn(move || {
                for _ in 0..ADDS {
                    loop {
                        let read = store.get("n").unwrap().unwrap();
                        let n = u64::from_le_bytes(read.value.as_slice().try_into().unwrap());
                        match store.set("n", &(n + 1).to_le_bytes(), read.cas) {
                            Ok(()) => break,
                            Err(HostError::CasMismatch) => continue,
                            Err(other) => panic!("{other}"),
                        }
                    }
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().unwrap();
    }
    let read = store.get("n").unwrap().unwrap();
    let n = u64::from_le_bytes(read.value.as_slice().try_into().unwrap());
    assert_eq!(n, THREADS * ADDS);
}

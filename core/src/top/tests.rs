use super::*;
use crate::host::fake::FakeHost;
use crate::period::{Period, PeriodKind, TimeZone};

const NOW: i64 = 1_764_676_800; // 2025-12-02T12:00:00Z

fn today() -> Period {
    Period::containing(PeriodKind::Daily, TimeZone::UTC, NOW)
}

fn tomorrow() -> Period {
    today().next(TimeZone::UTC)
}

fn host_with_keys(budgets: &[&str]) -> FakeHost {
    let host = FakeHost::new().at_unix_secs(NOW);
    let names: Vec<String> = budgets.iter().map(|b| b.to_string()).collect();
    assert_eq!(ensure_keys(&host, &names).unwrap(), budgets.len() as u32);
    // A second configure creates nothing (and so cannot overwrite a merge).
    assert_eq!(ensure_keys(&host, &names).unwrap(), 0);
    host
}

fn pairs(entries: &[(&str, u64)]) -> Vec<(String, u64)> {
    entries.iter().map(|(n, v)| (n.to_string(), *v)).collect()
}

#[test]
fn gathers_per_worker_and_merges_on_publish() {
    let host = host_with_keys(&["bot"]);
    let worker = Accumulator::new();
    worker.add("bot", &today(), Some("t1"), Some("alice"), 300);
    worker.add("bot", &today(), Some("t2"), Some("alice"), 500);
    worker.add("bot", &today(), Some("t1"), None, 100);
    worker.add("bot", &today(), None, None, 1_000); // neither: nothing to rank
    worker.add("bot", &today(), Some("t3"), None, 0); // free calls are not ranked
                                                      // Nothing reaches shared data before the tick.
    assert_eq!(read(&host, "bot", &today()).unwrap().tasks, vec![]);
    assert!(!worker.is_empty());
    assert_eq!(worker.publish(&host), vec![]);
    assert!(worker.is_empty());
    let top = read(&host, "bot", &today()).unwrap();
    assert_eq!(top.tasks, pairs(&[("t2", 500), ("t1", 400)]));
    assert_eq!(top.users, pairs(&[("alice", 800)]));
}

#[test]
fn two_workers_over_one_store_add_up() {
    let host = host_with_keys(&["bot", "other"]);
    let (a, b) = (Accumulator::new(), Accumulator::new());
    a.add("bot", &today(), Some("t1"), Some("u1"), 1_000);
    b.add("bot", &today(), Some("t1"), Some("u2"), 2_500);
    b.add("other", &today(), Some("x"), None, 7);
    assert_eq!(a.publish(&host), vec![]);
    assert_eq!(b.publish(&host), vec![]);
    a.add("bot", &today(), Some("t2"), Some("u1"), 4_000);
    assert_eq!(a.publish(&host), vec![]);
    let top = read(&host, "bot", &today()).unwrap();
    assert_eq!(top.tasks, pairs(&[("t2", 4_000), ("t1", 3_500)]));
    assert_eq!(top.users, pairs(&[("u1", 5_000), ("u2", 2_500)]));
    assert_eq!(
        read(&host, "other", &today()).unwrap().tasks,
        pairs(&[("x", 7)])
    );
}

#[test]
fn keeps_the_k_largest_and_evicts_the_smallest() {
    let host = host_with_keys(&["bot"]);
    let worker = Accumulator::new();
    for i in 0..TOP_K as u64 + 5 {
        worker.add("bot", &today(), Some(&format!("t{i:02}")), None, 100 + i);
    }
    assert_eq!(worker.publish(&host), vec![]);
    let tasks = read(&host, "bot", &today()).unwrap().tasks;
    assert_eq!(tasks.len(), TOP_K);
    assert_eq!(tasks.first(), Some(&("t24".to_string(), 124)));
    assert_eq!(tasks.last(), Some(&("t05".to_string(), 105)));
    // A newcomer larger than the smallest kept pushes it out; one smaller does not get in.
    worker.add("bot", &today(), Some("big"), None, 110);
    worker.add("bot", &today(), Some("tiny"), None, 1);
    assert_eq!(worker.publish(&host), vec![]);
    let tasks = read(&host, "bot", &today()).unwrap().tasks;
    assert_eq!(tasks.len(), TOP_K);
    assert!(tasks.contains(&("big".to_string(), 110)));
    assert!(!tasks.iter().any(|(n, _)| n == "t05" || n == "tiny"));
}

#[test]
fn contention_keeps_the_delta_for_the_next_tick() {
    let host = host_with_keys(&["bot"]);
    let worker = Accumulator::new();
    worker.add("bot", &today(), Some("t1"), Some("u1"), 900);
    host.fail_next_cas_writes(MAX_CAS_ATTEMPTS);
    let errors = worker.publish(&host);
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].reason(), "contended");
    assert_eq!(read(&host, "bot", &today()).unwrap().tasks, vec![]);
    // More arrives before the next tick; both go in then, nothing lost.
    worker.add("bot", &today(), Some("t1"), None, 100);
    assert_eq!(worker.publish(&host), vec![]);
    let top = read(&host, "bot", &today()).unwrap();
    assert_eq!(top.tasks, pairs(&[("t1", 1_000)]));
    assert_eq!(top.users, pairs(&[("u1", 900)]));
}

#[test]
fn a_missing_key_is_created_empty_and_merged_later_with_a_checked_write() {
    let host = FakeHost::new().at_unix_secs(NOW);
    let worker = Accumulator::new();
    worker.add("bot", &today(), Some("t1"), None, 50);
    let errors = worker.publish(&host);
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].reason(), "late_create");
    assert_eq!(read(&host, "bot", &today()).unwrap().tasks, vec![]);
    assert_eq!(worker.publish(&host), vec![]);
    assert_eq!(
        read(&host, "bot", &today()).unwrap().tasks,
        pairs(&[("t1", 50)])
    );
}

#[test]
fn a_new_day_starts_the_lists_over() {
    let host = host_with_keys(&["bot"]);
    let worker = Accumulator::new();
    worker.add("bot", &today(), Some("yesterday-task"), None, 5_000);
    assert_eq!(worker.publish(&host), vec![]);
    // Shown only for its own day.
    assert_eq!(read(&host, "bot", &tomorrow()).unwrap().tasks, vec![]);
    // A late worker's figures for a day that has ended in the store are dropped.
    let late = Accumulator::new();
    worker.add("bot", &tomorrow(), Some("new-task"), None, 10);
    assert_eq!(worker.publish(&host), vec![]);
    late.add("bot", &today(), Some("yesterday-task"), None, 1);
    assert_eq!(late.publish(&host), vec![]);
    assert!(late.is_empty());
    assert_eq!(
        read(&host, "bot", &tomorrow()).unwrap().tasks,
        pairs(&[("new-task", 10)])
    );
    // Within one worker, a charge for the new day drops what was gathered for the old one.
    let rolling = Accumulator::new();
    rolling.add("bot", &today(), Some("old"), None, 3);
    rolling.add("bot", &tomorrow(), Some("new-task"), None, 2);
    rolling.add("bot", &today(), Some("old"), None, 3);
    assert_eq!(rolling.publish(&host), vec![]);
    assert_eq!(
        read(&host, "bot", &tomorrow()).unwrap().tasks,
        pairs(&[("new-task", 12)])
    );
}

#[test]
fn a_foreign_value_is_reported_on_read_and_replaced_on_merge() {
    let host = host_with_keys(&["bot"]);
    host.shared_set(&key("bot"), b"not json", 0).unwrap();
    assert_eq!(
        read(&host, "bot", &today()).unwrap_err().reason(),
        "corrupt"
    );
    let worker = Accumulator::new();
    worker.add("bot", &today(), None, Some("u"), 4);
    assert_eq!(worker.publish(&host), vec![]);
    assert_eq!(
        read(&host, "bot", &today()).unwrap().users,
        pairs(&[("u", 4)])
    );
}

#[test]
fn local_memory_is_bounded() {
    let worker = Accumulator::new();
    for i in 0..MAX_LOCAL_NAMES as u64 + 10 {
        worker.add("bot", &today(), Some(&format!("t{i}")), None, 1 + i);
    }
    let gathered = worker.gathered.borrow();
    let tasks = &gathered.get("bot").unwrap().tasks;
    assert_eq!(tasks.len(), MAX_LOCAL_NAMES);
    // The smallest went; the largest stayed.
    assert!(!tasks.contains_key("t0"));
    assert!(tasks.contains_key(&format!("t{}", MAX_LOCAL_NAMES + 9)));
}

/// A host on which another worker's merge lands between this worker's read and its write,
/// once: the write's CAS then fails for real.
struct Racing<'a> {
    inner: &'a FakeHost,
    rival: &'a Accumulator,
    raced: std::cell::Cell<bool>,
}

impl Host for Racing<'_> {
    fn now_unix_nanos(&self) -> u64 {
        self.inner.now_unix_nanos()
    }
    fn shared_get(&self, key: &str) -> Result<Option<crate::host::Versioned>, HostError> {
        self.inner.shared_get(key)
    }
    fn shared_set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), HostError> {
        if !self.raced.replace(true) {
            assert_eq!(self.rival.publish(self.inner), vec![]);
        }
        self.inner.shared_set(key, value, cas)
    }
    fn dispatch_http(
        &self,
        _: &str,
        _: &[(&str, &str)],
        _: &[u8],
        _: u32,
    ) -> Result<u32, HostError> {
        Err(HostError::Status(1))
    }
    fn define_metric(&self, _: crate::host::MetricKind, _: &str) -> Result<u32, HostError> {
        Err(HostError::Status(1))
    }
    fn increment_metric(&self, _: u32, _: i64) -> Result<(), HostError> {
        Err(HostError::Status(1))
    }
    fn record_metric(&self, _: u32, _: u64) -> Result<(), HostError> {
        Err(HostError::Status(1))
    }
}

#[test]
fn a_merge_that_loses_the_race_reads_again_and_loses_nothing() {
    let host = host_with_keys(&["bot"]);
    let (mine, rival) = (Accumulator::new(), Accumulator::new());
    mine.add("bot", &today(), Some("t1"), Some("u1"), 10);
    rival.add("bot", &today(), Some("t1"), Some("u2"), 32);
    let racing = Racing {
        inner: &host,
        rival: &rival,
        raced: std::cell::Cell::new(false),
    };
    assert_eq!(mine.publish(&racing), vec![]);
    assert!(racing.raced.get() && mine.is_empty() && rival.is_empty());
    let top = read(&host, "bot", &today()).unwrap();
    assert_eq!(top.tasks, pairs(&[("t1", 42)]));
    assert_eq!(top.users, pairs(&[("u2", 32), ("u1", 10)]));
}

use super::*;
use crate::host::fake::FakeHost;
use crate::period::{PeriodKind, TimeZone};
use crate::root::Worker;

/// 2026-11-28T00:00:00Z.
const DAY_START: i64 = 1_795_824_000;
const HOUR: i64 = 3_600;

fn config(anomaly: &str) -> Config {
    let text = format!(
        r#"{{"agents":{{"bot":{{"daily_usd":1000}},"other":{{"daily_usd":1}}}}{anomaly}}}"#
    );
    Config::from_bytes(text.as_bytes()).unwrap()
}

fn hourly() -> AnomalyConfig {
    AnomalyConfig::default()
}

fn history_at(host: &FakeHost, config: &Config, budget: &str) -> History {
    load(host, &key(&config.anomaly, budget))
        .unwrap()
        .unwrap()
        .history
}

#[test]
fn encoding_round_trips_and_rejects_damage() {
    let mut history = History::new(DAY_START);
    history.episode_since = DAY_START + 5;
    for (bucket, micro_usd) in [
        (498_840, 1),
        (498_841, 300_000),
        (498_900, u64::MAX),
        (0, 7),
    ] {
        history.add(bucket, micro_usd);
    }
    let bytes = history.encode();
    assert_eq!(History::decode(&bytes), Some(history.clone()));
    // 18 header bytes, then a few bytes per bucket.
    assert!(bytes.len() <= 18 + 4 * 6 + 10, "{} bytes", bytes.len());
    assert_eq!(
        History::decode(&History::new(9).encode()),
        Some(History::new(9))
    );
    for cut in 0..bytes.len() {
        let truncated = bytes.get(..cut).unwrap();
        // Cutting between two whole buckets leaves a shorter, valid history.
        if let Some(shorter) = History::decode(truncated) {
            assert!(
                shorter.buckets.len() < history.buckets.len(),
                "cut at {cut}"
            );
        }
    }
    assert_eq!(History::decode(b"L2\0\0"), None);
    let mut bad = bytes.clone();
    bad.push(0x80);
    assert_eq!(History::decode(&bad), None);
}

#[test]
fn burn_rate_is_steady_across_bucket_boundaries() {
    let settings = hourly();
    let mut history = History::new(DAY_START - 30 * 86_400);
    // $1 per hour, spread evenly: 1 micro-USD every 3.6 s.
    for hour in 0..48 {
        history.add(bucket_of(&settings, DAY_START) + hour, 1_000_000);
    }
    for offset in [0, 1, 900, 1_800, 3_599] {
        let now = DAY_START + 40 * HOUR + offset;
        // The bucket in progress holds only its elapsed part.
        let mut partial = history.clone();
        partial
            .buckets
            .insert(bucket_of(&settings, now), offset as u64 * 1_000_000 / 3_600);
        let rates = rates_of(&partial, &settings, now);
        let burn = rates.burn_micro_usd_per_hour;
        assert!((999_000..=1_000_000).contains(&burn), "{offset}: {burn}");
        assert_eq!(rates.baseline_micro_usd_per_hour, Some(1_000_000));
    }
}

#[test]
fn baseline_is_the_mean_of_active_buckets_before_the_current_window() {
    let settings = hourly();
    let now = DAY_START + 20 * 86_400;
    let n = bucket_of(&settings, now);
    let mut history = History::new(now - 20 * 86_400);
    // Office hours: 8 active hours a day at $2/h, idle nights.
    for day in 1..14 {
        for hour in 9..17 {
            history.add(n - day * 24 + hour - 24, 2_000_000);
        }
    }
    // The current hour is not part of the baseline.
    history.add(n, 50_000_000);
    history.add(n - 1, 10_000_000);
    // Beyond the window: ignored.
    history.add(n - 16 * 24, 99_000_000);
    let rates = rates_of(&history, &settings, now);
    assert_eq!(rates.baseline_micro_usd_per_hour, Some(2_000_000));
    // At the start of bucket n, bucket n-1 still counts whole.
    assert_eq!(rates.burn_micro_usd_per_hour, 60_000_000);
}

#[test]
fn no_baseline_until_min_history_nor_without_spend() {
    let settings = hourly();
    let mut history = History::new(DAY_START);
    // $1 in each hour before the one starting now.
    for hour in 0..25 {
        history.add(bucket_of(&settings, DAY_START) + hour, 1_000_000);
    }
    let mut history_day_one = history.clone();
    history_day_one
        .buckets
        .retain(|b, _| *b < bucket_of(&settings, DAY_START) + 23);
    let day_one = rates_of(&history_day_one, &settings, DAY_START + 23 * HOUR);
    assert_eq!(day_one.baseline_micro_usd_per_hour, None);
    assert_eq!(day_one.burn_micro_usd_per_hour, 1_000_000);
    let day_two = rates_of(&history, &settings, DAY_START + 25 * HOUR);
    assert_eq!(day_two.baseline_micro_usd_per_hour, Some(1_000_000));
    let idle = History::new(DAY_START);
    assert_eq!(
        rates_of(&idle, &settings, DAY_START + 3 * 86_400),
        Rates {
            burn_micro_usd_per_hour: 0,
            baseline_micro_usd_per_hour: None
        }
    );
}

#[test]
fn projection_adds_the_burn_until_the_period_ends() {
    let day = Period::containing(PeriodKind::Daily, TimeZone::UTC, DAY_START);
    let month = Period::containing(PeriodKind::Monthly, TimeZone::UTC, DAY_START);
    let cases = [
        (0, 1_000_000, DAY_START, &day, 24_000_000),
        (
            5_000_000,
            1_000_000,
            DAY_START + 18 * HOUR,
            &day,
            11_000_000,
        ),
        (5, 1_000_000, DAY_START + 86_400 - 1, &day, 5 + 277),
        (7, 1_000_000, DAY_START + 86_400, &day, 7),
        (0, 0, DAY_START, &day, 0),
        // 2026-11-28 to 2026-12-01: 3 days left.
        (1_000_000, 1_000_000, DAY_START, &month, 73_000_000),
        (u64::MAX, u64::MAX, DAY_START, &month, u64::MAX),
    ];
    for (spent, burn, now, period, want) in cases {
        assert_eq!(
            projected_micro_usd(spent, burn, now, period),
            want,
            "{spent} {burn} {now}"
        );
    }
}

#[test]
fn calls_reach_the_shared_history_on_the_tick_only() {
    let host = FakeHost::new().at_unix_secs(DAY_START);
    let worker = Worker::new(config(""));
    worker.tick(&host);
    assert_eq!(
        history_at(&host, &worker.config, "bot"),
        History::new(DAY_START)
    );
    worker.record_spend("bot", DAY_START + 10, 1_500);
    worker.record_spend("bot", DAY_START + 20, 500);
    worker.record_spend("nobody", DAY_START + 20, 99);
    assert!(history_at(&host, &worker.config, "bot").buckets.is_empty());
    host.set_unix_secs(DAY_START + 21);
    worker.tick(&host);
    let bucket = bucket_of(&worker.config.anomaly, DAY_START);
    let merged = history_at(&host, &worker.config, "bot");
    assert_eq!(merged.buckets, BTreeMap::from([(bucket, 2_000)]));
    assert!(history_at(&host, &worker.config, "other")
        .buckets
        .is_empty());
    // An unconfigured name gets no key.
    assert!(!host.shared_keys().iter().any(|k| k.ends_with("/nobody")));
    let now_rates = rates(&host, &worker.config, "bot", DAY_START + 21).unwrap();
    assert_eq!(now_rates.burn_micro_usd_per_hour, 2_000);
    assert_eq!(
        rates(&host, &worker.config, "nobody", DAY_START).unwrap(),
        Rates::default()
    );
}

#[test]
fn workers_sharing_one_host_merge_exactly() {
    let host = FakeHost::new().at_unix_secs(DAY_START);
    let config = config(r#","anomaly":{"bucket":"1m","current":"5m","window":"1h"}"#);
    let workers = [Worker::new(config.clone()), Worker::new(config.clone())];
    for worker in &workers {
        worker.tick(&host);
    }
    let mut want: BTreeMap<i64, u64> = BTreeMap::new();
    for second in 0..600 {
        let now = DAY_START + second;
        host.set_unix_secs(now);
        let micro_usd = 1_000 + second as u64;
        let worker = &workers[(second % 2) as usize];
        worker.record_spend("bot", now, micro_usd);
        *want.entry(bucket_of(&config.anomaly, now)).or_default() += micro_usd;
        // The workers tick at different moments, each merging its own share.
        if second % 3 == 0 {
            workers[0].tick(&host);
        }
        if second % 5 == 0 {
            workers[1].tick(&host);
        }
    }
    for worker in &workers {
        worker.tick(&host);
    }
    let merged = history_at(&host, &config, "bot");
    assert_eq!(merged.buckets, want);
    assert_eq!(merged.began, DAY_START);
}

#[test]
fn a_contended_merge_keeps_its_deltas_for_the_next_tick() {
    let host = FakeHost::new().at_unix_secs(DAY_START);
    let worker = Worker::new(config(""));
    worker.tick(&host);
    worker.record_spend("bot", DAY_START, 700);
    host.fail_next_cas_writes(MERGE_ATTEMPTS);
    worker.tick(&host);
    assert!(history_at(&host, &worker.config, "bot").buckets.is_empty());
    assert_eq!(
        host.metric("agent_budget_ledger_errors.reason.contended"),
        Some(1)
    );
    worker.record_spend("bot", DAY_START + 1, 300);
    host.set_unix_secs(DAY_START + 1);
    worker.tick(&host);
    let bucket = bucket_of(&worker.config.anomaly, DAY_START);
    assert_eq!(
        history_at(&host, &worker.config, "bot").buckets,
        BTreeMap::from([(bucket, 1_000)])
    );
}

#[test]
fn a_missing_key_is_created_with_the_delta_and_counted() {
    let host = FakeHost::new().at_unix_secs(DAY_START);
    let settings = hourly();
    let key = key(&settings, "bot");
    let result = merge(
        &host,
        &key,
        &[(bucket_of(&settings, DAY_START), 5)],
        0,
        DAY_START,
    );
    assert_eq!(result, Err(LedgerError::LateCreate { key: key.clone() }));
    let stored = load(&host, &key).unwrap().unwrap();
    assert_eq!(stored.history.buckets.values().sum::<u64>(), 5);
    assert_eq!(
        merge(
            &host,
            &key,
            &[(bucket_of(&settings, DAY_START), 5)],
            0,
            DAY_START
        ),
        Ok(())
    );
    host.shared_set(&key, b"not a history", 0).unwrap();
    assert_eq!(load(&host, &key), Err(LedgerError::Corrupt { key }));
}

#[test]
fn ensure_creates_each_agent_key_once_per_bucket_length() {
    let host = FakeHost::new().at_unix_secs(DAY_START);
    let hourly = config("");
    assert_eq!(ensure(&host, &hourly, DAY_START), Ok(2));
    assert_eq!(ensure(&host, &hourly, DAY_START + 5), Ok(0));
    assert_eq!(history_at(&host, &hourly, "bot").began, DAY_START);
    let minutes = config(r#","anomaly":{"bucket":"1m","current":"5m","window":"1h"}"#);
    assert_eq!(ensure(&host, &minutes, DAY_START + 5), Ok(2));
    let keys = host.shared_keys();
    assert!(keys.contains(&"agent_budget/history/v1/3600/bot".to_string()));
    assert!(keys.contains(&"agent_budget/history/v1/60/bot".to_string()));
}

#[test]
fn buckets_older_than_the_window_are_pruned() {
    let host = FakeHost::new().at_unix_secs(DAY_START);
    let config =
        config(r#","anomaly":{"bucket":"1m","current":"5m","window":"30m","min_history":"10m"}"#);
    let worker = Worker::new(config.clone());
    worker.tick(&host);
    for minute in 0..120 {
        let now = DAY_START + minute * 60;
        host.set_unix_secs(now);
        worker.record_spend("bot", now, 100);
        worker.tick(&host);
    }
    let now = DAY_START + 119 * 60;
    let kept = history_at(&host, &config, "bot");
    // The 30 minutes of the window, the 5 current ones, and the one partly in both.
    assert_eq!(kept.buckets.len(), 36);
    assert_eq!(
        kept.buckets.keys().next(),
        Some(&oldest_needed(&config.anomaly, now))
    );
    let rates = rates_of(&kept, &config.anomaly, now);
    assert_eq!(rates.baseline_micro_usd_per_hour, Some(6_000));
}

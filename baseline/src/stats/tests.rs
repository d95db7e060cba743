use super::*;
use std::borrow::Cow;

#[test]
fn percentile_is_nearest_rank() {
    let cases: [(&[u64], u64, Option<u64>); 12] = [
        (&[], 90, None),
        (&[7], 90, Some(7)),
        (&[7], 0, Some(7)),
        // ceil(0.9 x 10) = 9th smallest.
        (&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 90, Some(9)),
        // Order of the input does not matter.
        (&[10, 9, 8, 7, 6, 5, 4, 3, 2, 1], 90, Some(9)),
        // ceil(0.9 x 11) = ceil(9.9) = 10th smallest.
        (&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], 90, Some(10)),
        // ceil(0.9 x 30) = 27th.
        (&(1..=30).collect::<Vec<u64>>(), 90, Some(27)),
        // ceil(0.9 x 29) = ceil(26.1) = 27th: 14 zero days, 15 days of 5.
        (
            &[[0u64; 14].as_slice(), [5u64; 15].as_slice()].concat(),
            90,
            Some(5),
        ),
        // Mostly zero days: p90 is zero.
        (&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 100], 90, Some(0)),
        (&[3, 1, 2], 50, Some(2)),
        (&[3, 1, 2], 100, Some(3)),
        (&[3, 1, 2], 1, Some(1)),
    ];
    for (values, percent, want) in cases {
        assert_eq!(
            percentile_nearest_rank(values, percent),
            want,
            "p{percent} of {values:?}"
        );
    }
}

#[test]
fn recommendation_is_one_and_a_half_p90_rounded_up_to_a_cent() {
    let cases = [
        (0, 0),
        (1, 10_000),            // $0.0000015 -> $0.01
        (6_666, 10_000),        // 9_999 micro -> $0.01
        (6_667, 20_000),        // 10_000.5 micro -> $0.02 (never below 1.5x)
        (2_700_000, 4_050_000), // $2.70 -> $4.05 exactly
        (1_000_000, 1_500_000), // $1.00 -> $1.50
        (1_000_001, 1_510_000), // a micro over -> the next cent
        (333_333, 500_000),     // 499_999.5 -> $0.50
        (u64::MAX, u64::MAX),   // saturates, no overflow
    ];
    for (p90, want) in cases {
        assert_eq!(recommended_daily_micro_usd(p90), want, "p90 {p90}");
    }
}

#[test]
fn thresholds_refuse_under_20_and_mark_under_100_provisional() {
    let cases = [
        (0, 1_000_000, None),
        (19, 1_000_000, None),
        (20, 1_000_000, Some(Recommendation::Provisional(1_500_000))),
        (99, 1_000_000, Some(Recommendation::Provisional(1_500_000))),
        (100, 1_000_000, Some(Recommendation::Firm(1_500_000))),
        (5_000, 2_700_000, Some(Recommendation::Firm(4_050_000))),
        // Enough tasks but p90 is zero: no zero budget.
        (500, 0, None),
    ];
    for (tasks, p90, want) in cases {
        let got = recommend(tasks, p90);
        match want {
            Some(want) => assert_eq!(got, want, "{tasks} tasks"),
            None => assert!(
                matches!(got, Recommendation::Refused(_)),
                "{tasks} tasks: {got:?}"
            ),
        }
    }
    assert_eq!(
        recommend(19, 1),
        Recommendation::Refused("19 tasks, fewer than 20".to_string())
    );
    assert_eq!(
        recommend(500, 0),
        Recommendation::Refused("no spend on 90% of days (p90 is $0)".to_string())
    );
}

#[test]
fn ratios_round_half_up() {
    let cases = [
        (0, 0, 0),
        (5, 0, 0),
        (1, 2, 1),
        (1, 3, 0),
        (2, 3, 1),
        (15_000_000, 29, 517_241),
        (7, 7, 1),
    ];
    for (n, d, want) in cases {
        assert_eq!(ratio_rounded(n, d), want, "{n}/{d}");
    }
}

fn call<'a>(agent: &'a str, unix_secs: i64, task: Option<&'a str>, cost: u64) -> Call<'a> {
    Call {
        agent: Cow::Borrowed(agent),
        unix_secs,
        task: task.map(Cow::Borrowed),
        stopped: false,
        input_tokens: 100,
        output_tokens: 10,
        cache_read_tokens: 0,
        cache_write_tokens: 0,
        cost_micro_usd: cost,
    }
}

const DAY: i64 = 86_400;
/// 2026-11-01T00:00:00Z.
const NOV_1: i64 = 1_793_491_200;

#[test]
fn tasks_are_distinct_per_day_and_untasked_calls_count_alone() {
    let mut aggregator = Aggregator::new(TimeZone::UTC);
    let calls = [
        call("a", NOV_1 + 10, Some("t1"), 1),
        call("a", NOV_1 + 20, Some("t1"), 1), // same task, same day
        call("a", NOV_1 + 30, Some("t2"), 1),
        call("a", NOV_1 + 40, None, 1), // each untasked call is a task
        call("a", NOV_1 + 50, None, 1),
        call("a", NOV_1 + DAY + 5, Some("t1"), 1), // t1 again the next day: counts again
        call("b", NOV_1 + 60, Some("t1"), 1),      // another agent's t1
    ];
    for c in &calls {
        aggregator.add(c, 0);
    }
    let summaries = aggregator.summaries();
    let tasks: Vec<(&str, u64, u64, u64)> = summaries
        .iter()
        .map(|s| (s.agent.as_str(), s.tasks, s.calls, s.days))
        .collect();
    assert_eq!(tasks, [("a", 5, 6, 2), ("b", 1, 1, 1)]);
}

#[test]
fn every_day_of_the_span_counts_zero_days_included() {
    let mut aggregator = Aggregator::new(TimeZone::UTC);
    aggregator.add(&call("a", NOV_1, Some("x"), 300), 0);
    aggregator.add(&call("a", NOV_1 + 3 * DAY, Some("y"), 500), 0);
    let summaries = aggregator.summaries();
    let a = &summaries[0];
    let first_day = NOV_1 / DAY;
    assert_eq!(
        a.daily_micro_usd,
        [
            (first_day, 300),
            (first_day + 1, 0),
            (first_day + 2, 0),
            (first_day + 3, 500)
        ]
    );
    assert_eq!(a.days, 4);
    assert_eq!(a.cost_per_day_micro_usd(), 200);
    // nearest rank: ceil(0.9 x 4) = 4th smallest.
    assert_eq!(a.p90_daily_micro_usd, 500);
    assert_eq!(a.tasks_per_day_hundredths(), 50);
}

#[test]
fn days_follow_the_time_zone() {
    // 23:30 UTC on Nov 1 and 00:30 UTC on Nov 2: two days in UTC, one at -05:00.
    let calls = [
        call("a", NOV_1 + DAY - 1800, Some("t"), 1),
        call("a", NOV_1 + DAY + 1800, Some("t"), 1),
    ];
    for (zone, days, tasks) in [("UTC", 2, 2), ("-05:00", 1, 1), ("+01:00", 1, 1)] {
        let mut aggregator = Aggregator::new(TimeZone::parse(zone).unwrap());
        for c in &calls {
            aggregator.add(c, 0);
        }
        let summaries = aggregator.summaries();
        assert_eq!(
            (summaries[0].days, summaries[0].tasks),
            (days, tasks),
            "{zone}"
        );
    }
}

#[test]
fn totals_and_comparison_add_up() {
    let mut aggregator = Aggregator::new(TimeZone::UTC);
    let mut stopped = call("a", NOV_1, Some("t"), 0);
    stopped.stopped = true;
    aggregator.add(&call("a", NOV_1, Some("t"), 1_000), 400);
    aggregator.add(&call("a", NOV_1, Some("u"), 3_000), 600);
    aggregator.add(&stopped, 0);
    let summaries = aggregator.summaries();
    let a = &summaries[0];
    assert_eq!(
        (
            a.calls,
            a.stopped_calls,
            a.tasks,
            a.cost_micro_usd,
            a.compare_micro_usd
        ),
        (3, 1, 2, 4_000, 1_000)
    );
    assert_eq!(a.saving_micro_usd(), 3_000);
    assert_eq!(a.input_tokens_per_task(), 150);
    assert_eq!(a.output_tokens_per_task(), 15);
    assert_eq!(a.cost_per_task_micro_usd(), 2_000);
    assert!(!aggregator.is_empty());
    assert!(Aggregator::new(TimeZone::UTC).is_empty());
}

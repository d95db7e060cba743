use super::*;
use crate::stats::Recommendation;

fn summary(agent: &str, daily: Vec<(i64, u64)>) -> Summary {
    Summary {
        agent: agent.to_string(),
        days: daily.len() as u64,
        daily_micro_usd: daily,
        calls: 1,
        stopped_calls: 0,
        tasks: 1,
        input_tokens: 0,
        output_tokens: 0,
        cost_micro_usd: 0,
        compare_micro_usd: 0,
        p90_daily_micro_usd: 0,
        recommendation: Recommendation::Refused("1 tasks".into()),
    }
}

#[test]
fn nice_ceilings_are_round() {
    let cases = [
        (0, 10_000),
        (10_000, 10_000),
        (10_001, 20_000),
        (3_000_000, 5_000_000),
        (5_000_001, 10_000_000),
        (u64::MAX, u64::MAX),
    ];
    for (value, want) in cases {
        assert_eq!(nice_ceiling(value), want, "{value}");
    }
}

#[test]
fn one_series_per_agent_scaled_to_the_plot() {
    // 2026-11-01 is day 20758.
    let text = svg(
        &[
            summary("a<b", vec![(20_758, 0), (20_759, 1_000_000)]),
            summary("c", vec![(20_759, 500_000)]),
        ],
        "t & t",
    );
    assert!(text.contains(r#"data-agent="a&lt;b""#), "{text}");
    assert!(text.contains(">t &amp; t</text>"), "{text}");
    // Day 20758 at the left edge and $0 on the x axis; day 20759 at the right edge and
    // $1.00 (the nice ceiling) at the top.
    assert!(text.contains(r#"points="90.0,420.0 740.0,50.0""#), "{text}");
    // A one-day series also gets a dot, since a one-point polyline is invisible.
    assert!(text.contains(r#"points="740.0,235.0""#), "{text}");
    assert_eq!(text.matches("<circle").count(), 1);
    assert!(text.contains(">2026-11-01</text>") && text.contains(">$1.00</text>"));
    assert_eq!(text.matches(r#"class="series""#).count(), 2);
    // Ticks of whole cents read as cents; sub-cent ticks keep four decimals.
    let cents = svg(&[summary("a", vec![(0, 30_000)])], "t");
    assert!(
        cents.contains(">$0.05</text>") && cents.contains(">$0.01</text>"),
        "{cents}"
    );
    let small = svg(&[summary("a", vec![(0, 3_000)])], "t");
    assert!(
        small.contains(">$0.0020</text>") && small.contains(">$0.0100</text>"),
        "{small}"
    );
}

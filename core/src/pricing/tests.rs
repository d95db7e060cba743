use super::*;

#[test]
fn resolves_dated_and_prefixed_names() {
    let table = PriceTable::builtin();
    let cases = [
        ("gpt-4o", Some("gpt-4o")),
        ("gpt-4o-2024-08-06", Some("gpt-4o")),
        ("gpt-4o-mini-2024-07-18", Some("gpt-4o-mini")),
        ("GPT-4o-mini", Some("gpt-4o-mini")),
        ("openai/gpt-4.1-mini", Some("gpt-4.1-mini")),
        ("claude-3-5-sonnet-20241022", Some("claude-3-5-sonnet")),
        ("claude-sonnet-4-5-20250929", Some("claude-sonnet-4-5")),
        ("claude-3-5-sonnet-latest", Some("claude-3-5-sonnet")),
        (
            "anthropic.claude-3-5-sonnet-20241022-v2:0",
            Some("claude-3-5-sonnet"),
        ),
        ("claude-3-5-sonnet-v2@20241022", Some("claude-3-5-sonnet")),
        ("models/gemini-2.5-flash", Some("gemini-2.5-flash")),
        ("gemini-2.5-flash-lite", Some("gemini-2.5-flash-lite")),
        ("claude-opus-4-1-20250805", Some("claude-opus-4-1")),
        ("o3-mini-2025-01-31", Some("o3-mini")),
        ("my-local-llama", None),
        ("", None),
        ("-", None),
    ];
    for (model, want) in cases {
        assert_eq!(table.resolve(model).map(|r| r.family), want, "{model}");
    }
}

#[test]
fn overrides_win_and_normalize() {
    let mut table = PriceTable::builtin();
    table.set("GPT-4o", Price::new(1, 2, None));
    table.set("my-llama", Price::new(3, 4, None));
    assert_eq!(
        table.resolve("gpt-4o-2024-08-06").map(|r| r.price.input),
        Some(1)
    );
    assert_eq!(
        table.resolve("my-llama-70b").map(|r| r.price.output),
        Some(4)
    );
}

#[test]
fn costs_are_exact_and_rounded_up_once() {
    let gpt4o = PriceTable::builtin()
        .resolve("gpt-4o")
        .unwrap()
        .price
        .to_owned();
    // 1000 uncached in at $2.50/M = 2500 µ$, 200 cached at $1.25/M = 250 µ$, 500 out at $10/M = 5000 µ$.
    let usage = Usage {
        input: 1000,
        cache_read: 200,
        output: 500,
        ..Usage::default()
    };
    assert_eq!(gpt4o.cost_micro_usd(&usage), 7750);
    // One token of gpt-4o-mini input is 0.15 µ$: rounds up to 1, never to 0.
    let mini = PriceTable::builtin()
        .resolve("gpt-4o-mini")
        .unwrap()
        .price
        .to_owned();
    assert_eq!(
        mini.cost_micro_usd(&Usage {
            input: 1,
            ..Usage::default()
        }),
        1
    );
    assert_eq!(mini.cost_micro_usd(&Usage::default()), 0);
    // Anthropic cache classes: writes 1.25× and 2×, reads 0.1× of $3/M.
    let sonnet = PriceTable::builtin()
        .resolve("claude-sonnet-4-5")
        .unwrap()
        .price
        .to_owned();
    let usage = Usage {
        input: 100,
        cache_write_5m: 1000,
        cache_write_1h: 1000,
        cache_read: 10_000,
        output: 100,
        reasoning: 50,
    };
    // 300 + 3750 + 6000 + 3000 + 1500
    assert_eq!(sonnet.cost_micro_usd(&usage), 14_550);
    // Saturates instead of wrapping.
    let huge = Usage {
        output: u64::MAX,
        ..Usage::default()
    };
    assert_eq!(
        Price::new(u64::MAX, u64::MAX, None).cost_micro_usd(&huge),
        u64::MAX
    );
}

#[test]
fn usd_conversions() {
    assert_eq!(usd_to_micro(0.1), Some(100_000));
    assert_eq!(usd_to_micro(2.5), Some(2_500_000));
    assert_eq!(usd_to_micro(0.075), Some(75_000));
    assert_eq!(usd_to_micro(-1.0), None);
    assert_eq!(usd_to_micro(f64::NAN), None);
    assert_eq!(usd_to_micro(f64::INFINITY), None);
    assert_eq!(format_usd(5_000_000), "5.000000");
    assert_eq!(format_usd(1_234_567), "1.234567");
    assert_eq!(format_usd(7), "0.000007");
    assert_eq!(format_usd(0), "0.000000");
    assert_eq!(format_usd(1_000_000), "1.000000");
    assert_eq!(format_usd(u64::MAX), "18446744073709.551615");
    for micro_usd in [9, 10, 999_999, 10_000_001, 123_456_789_012] {
        let want = format!("{}.{:06}", micro_usd / 1_000_000, micro_usd % 1_000_000);
        assert_eq!(format_usd(micro_usd), want);
    }
}

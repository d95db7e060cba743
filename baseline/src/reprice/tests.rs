use super::*;
use std::borrow::Cow;

fn call(input: u64, cache_read: u64, cache_write: u64, output: u64) -> Call<'static> {
    Call {
        agent: Cow::Borrowed("a"),
        unix_secs: 0,
        task: None,
        stopped: false,
        input_tokens: input,
        output_tokens: output,
        cache_read_tokens: cache_read,
        cache_write_tokens: cache_write,
        cost_micro_usd: 0,
    }
}

#[test]
fn reprices_each_token_class_like_the_filter() {
    let prices = Prices::default();
    let cases = [
        // claude-haiku-4-5: $1 input, $0.10 cache read, $1.25 cache write, $5 output.
        ("claude-haiku-4-5", call(1000, 200, 0, 500), 800 + 20 + 2500),
        (
            "claude-haiku-4-5",
            call(2000, 0, 500, 300),
            1500 + 625 + 1500,
        ),
        ("claude-haiku-4-5-20251001", call(1000, 0, 0, 0), 1000),
        // gpt-4o-mini: $0.15 input, $0.075 cached, $0.60 output; rounded up per call.
        ("gpt-4o-mini", call(1000, 0, 0, 1000), 150 + 600),
        ("gpt-4o-mini", call(1, 0, 0, 0), 1),
        ("openai/gpt-4o-mini", call(10_000, 10_000, 0, 0), 750),
        // Inconsistent counts (more cached than input) never underflow.
        ("gpt-4o-mini", call(100, 1000, 0, 0), 75),
        ("gpt-4o-mini", call(0, 0, 0, 0), 0),
    ];
    for (model, tokens, want) in cases {
        let model = prices.compare_model(model).unwrap();
        assert_eq!(
            model.cost_micro_usd(&tokens),
            want,
            "{} {tokens:?}",
            model.name
        );
    }
}

#[test]
fn repricing_matches_the_core_price_exactly() {
    let prices = Prices::default();
    let model = prices.compare_model("claude-sonnet-4-5").unwrap();
    let usage = Usage {
        input: 700,
        cache_read: 200,
        cache_write_5m: 100,
        cache_write_1h: 0,
        output: 333,
        reasoning: 0,
    };
    assert_eq!(model.family, "claude-sonnet-4-5");
    assert_eq!(
        model.cost_micro_usd(&call(1000, 200, 100, 333)),
        model.price.cost_micro_usd(&usage)
    );
}

#[test]
fn unknown_models_are_refused_with_close_matches() {
    let prices = Prices::default();
    let cases = [
        ("gpt-4o-mni", "close matches: gpt-4o-mini, "),
        ("claude-haiku", "close matches: claude-haiku-4-5, claude-3-haiku"),
        ("sonnet", "close matches: claude-3-5-sonnet, claude-3-7-sonnet, claude-sonnet-4, claude-sonnet-4-5"),
        ("gemini-2.5-flesh", "close matches: gemini-2.5-flash"),
        // Nothing near: every priced name is listed.
        ("zzz", "priced models: claude-3-5-haiku, "),
        ("", "priced models: "),
    ];
    for (name, want) in cases {
        let error = prices.compare_model(name).unwrap_err();
        assert!(
            error.contains(&format!("no price for model `{name}`")),
            "{error}"
        );
        assert!(error.contains(want), "{name}: {error}");
    }
}

#[test]
fn pricing_file_is_parsed_by_the_filter_parser() {
    let prices = Prices::with_pricing_json(
        r#"{"pricing": {"house-llm": {"input": 2, "output": "4", "cached_input": 0.5}, "gpt-4o-mini": {"input": 1, "output": 1}}}"#,
    )
    .unwrap();
    let house = prices.compare_model("house-llm").unwrap();
    assert_eq!(
        (
            house.price.input,
            house.price.output,
            house.price.cache_read
        ),
        (2_000_000, 4_000_000, 500_000)
    );
    // Configuration wins over the built-in table.
    assert_eq!(
        prices.compare_model("gpt-4o-mini").unwrap().price.input,
        1_000_000
    );
    // A configured name is suggested too.
    assert!(prices
        .compare_model("house-lm")
        .unwrap_err()
        .contains("close matches: house-llm"));

    let cases = [
        ("not json", "not JSON"),
        (r#"{"agents": {}}"#, "no `pricing` section"),
        (r#"{"pricing": [1]}"#, "`pricing` is not a map"),
        (
            r#"{"pricing": {"m": {"input": -1, "output": 1}}}"#,
            "field `pricing.m.input`",
        ),
        (r#"{"pricing": {"m": {"input": 1}}}"#, "field `pricing.m`"),
        (
            r#"{"pricing": {"m": {"input": 1, "output": 1, "bogus": 1}}}"#,
            "bogus",
        ),
    ];
    for (text, want) in cases {
        let error = Prices::with_pricing_json(text).unwrap_err();
        assert!(error.contains(want), "{text}: {error}");
    }
}

#[test]
fn edit_distances() {
    let cases = [
        ("", "", 0),
        ("a", "", 1),
        ("", "ab", 2),
        ("gpt-4o-mni", "gpt-4o-mini", 1),
        ("kitten", "sitting", 3),
    ];
    for (a, b, want) in cases {
        assert_eq!(edit_distance(a, b), want, "{a} {b}");
    }
}
